// The Kafka ingress plugin against a real Kafka-protocol broker (Tansu, from the kit `make test`
// prepares in .build/kafka: scripts/kafka-kit.sh), with the librdkafka 2.16 of that kit through
// LD_LIBRARY_PATH. Engines run as separate processes: the kill -9 test kills them.
import Engine
import Foundation
import Glibc
import Journal
import OrderBook
import SharedMemory
import Testing
import TestSupport
import Wire

struct KitMissing: Error, CustomStringConvertible {
    let description: String
}

/// The Kafka kit beside the build: the broker binary and librdkafka 2.16.
enum KafkaKit {
    static var root: URL { crossbookBinary().deletingLastPathComponent().appendingPathComponent("../../kafka").standardized }
    static var tansu: String { root.appendingPathComponent("bin/tansu").path }
    static var environment: [String: String] { ["LD_LIBRARY_PATH": root.appendingPathComponent("lib").path] }
    static var tool: URL { crossbookBinary().deletingLastPathComponent().appendingPathComponent("crossbook-kafka") }

    static func require() throws {
        guard FileManager.default.isExecutableFile(atPath: tansu), FileManager.default.fileExists(atPath: tool.path) else {
            throw KitMissing(description: "no Kafka kit at \(root.path) or no crossbook-kafka: run `make test` (or `make kafka-kit c-plugins OUT=.build/release`)")
        }
    }

    /// Runs crossbook-kafka; its exit status and standard output.
    @discardableResult
    static func run(_ arguments: [String], stdin: String? = nil) throws -> (status: Int32, out: String, err: String) {
        let process = Process()
        process.executableURL = tool
        process.arguments = arguments
        process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
        let out = Pipe(), err = Pipe(), input = Pipe()
        process.standardOutput = out
        process.standardError = err
        process.standardInput = input
        try process.run()
        let writer = Thread {
            if let stdin { input.fileHandleForWriting.write(Data(stdin.utf8)) }
            try? input.fileHandleForWriting.close()
        }
        writer.start()
        let errors = LockedData()
        let errReader = Thread { errors.set(err.fileHandleForReading.readDataToEndOfFile()) }
        errReader.start()
        let output = out.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        _ = waitFor(5) { errors.isSet }
        return (process.terminationStatus, String(decoding: output, as: UTF8.self), String(decoding: errors.value, as: UTF8.self))
    }
}

final class LockedData: @unchecked Sendable {
    private let lock = NSLock()
    private var data = Data()
    private var done = false
    func set(_ d: Data) { lock.lock(); data = d; done = true; lock.unlock() }
    var value: Data { lock.lock(); defer { lock.unlock() }; return data }
    var isSet: Bool { lock.lock(); defer { lock.unlock() }; return done }
}

/// A free TCP port on 127.0.0.1 (bound and released: the broker takes it a moment later).
func freeLoopbackPort() -> Int {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    defer { close(fd) }
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    address.sin_port = 0
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    _ = withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) } }
    _ = withUnsafeMutablePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) } }
    return Int(UInt16(bigEndian: address.sin_port))
}


/// A Tansu broker (memory storage) on a free loopback port, stopped by `stop` or at deinit.
final class KafkaBroker {
    private let server: LoopbackServer
    var port: Int { server.port }
    var address: String { server.address }

    init() throws {
        try KafkaKit.require()
        let port = freeLoopbackPort()
        server = try LoopbackServer("tansu", port: port, command:
            "'\(KafkaKit.tansu)' broker --listener-url tcp://127.0.0.1:\(port) --advertised-listener-url tcp://127.0.0.1:\(port)")
    }

    func start() throws { try server.start() }
    func stop() { server.stop() }

    func createTopic(_ name: String, partitions: Int) throws {
        let result = try KafkaKit.run(["create", address, name, "\(partitions)"])
        guard result.status == 0 else { throw KitMissing(description: "create topic \(name): \(result.err)") }
    }
}

/// `crossbook-kafka orders`: `lines` (CSV orders) to topic "orders" (2 partitions) as JSON
/// messages; the caller waits for it to exit.
func startOrderProducer(_ broker: KafkaBroker, lines: ArraySlice<String>) throws -> Process {
    let producer = Process()
    producer.executableURL = KafkaKit.tool
    producer.arguments = ["orders", broker.address, "orders", "2"]
    producer.environment = ProcessInfo.processInfo.environment.merging(KafkaKit.environment) { $1 }
    let input = Pipe()
    producer.standardInput = input
    producer.standardError = FileHandle.nullDevice
    try producer.run()
    input.fileHandleForWriting.write(Data((lines.joined(separator: "\n") + "\n").utf8))
    try? input.fileHandleForWriting.close()
    return producer
}

/// One consumed message: partition, offset, key, headers, value (as crossbook-kafka prints them).
struct ConsumedMessage {
    let partition: Int
    let offset: Int
    let key: String
    let headers: String
    let value: String

    static func parse(_ output: String) -> [ConsumedMessage] {
        output.split(separator: "\n").compactMap { line in
            let f = line.split(separator: "\t", maxSplits: 4, omittingEmptySubsequences: false).map(String.init)
            guard f.count == 5, let p = Int(f[0]), let o = Int(f[1]) else { return nil }
            return ConsumedMessage(partition: p, offset: o, key: f[2], headers: f[3], value: f[4])
        }
    }
}

/// The engine's config for these tests: 2 shards, 4 symbols, the ingress on `topic`.
func kafkaEngineConfig(instance: String, broker: KafkaBroker, topic: String, partitions: String = "0-1",
                       format: String = "json", extra: String = "", egress: Bool = false) -> String {
    """
    [engine]
    instance = "\(instance)"
    lag_timeout_ms = 5000
    [[shards]]
    [[shards]]
    [book]
    orders = 65536
    levels = 4096
    [[symbols]]
    name = "BTC-USD"
    shard = 0
    [[symbols]]
    name = "ETH-USD"
    shard = 1
    [[symbols]]
    name = "SOL-USD"
    shard = 0
    [[symbols]]
    name = "XRP-USD"
    shard = 1
    [plugins]
    [[plugins.load]]
    name = "snapshot-file"
    \(egress ? "[[plugins.load]]\nname = \"kafka-egress\"\nconfig = { brokers = \"\(broker.address)\" }\n" : "")[[plugins.load]]
    name = "kafka-ingress"
    config = { brokers = "\(broker.address)", topic = "\(topic)", partitions = "\(partitions)", format = "\(format)"\(extra) }
    """
}

/// A random order log in the replay text format over the four symbols: limit orders around 100
/// (many trade), some cancels and replaces of earlier ids, some market orders.
func randomOrderLog(count: Int, seed: UInt64, firstId: Int = 1) -> [String] {
    var rng = SplitMix(seed: seed)
    let symbols = ["BTC-USD", "ETH-USD", "SOL-USD", "XRP-USD"]
    var lines: [String] = []
    var live: [(String, Int)] = []
    for k in 0..<count {
        let id = firstId + k
        let roll = rng.next() % 100
        if roll < 8, !live.isEmpty {
            let (symbol, old) = live.remove(at: Int(rng.next() % UInt64(live.count)))
            lines.append("C,\(symbol),\(old)")
            continue
        }
        if roll < 12, !live.isEmpty {
            let (symbol, old) = live[Int(rng.next() % UInt64(live.count))]
            lines.append("R,\(symbol),\(old),\(95 + rng.next() % 11),\(1 + rng.next() % 5)")
            continue
        }
        let symbol = symbols[Int(rng.next() % 4)]
        let side = rng.next() % 2 == 0 ? "B" : "S"
        if roll < 15 {
            lines.append("N,\(symbol),\(id),\(1 + id % 5),\(side),MKT,0,\(1 + rng.next() % 4),IOC")
        } else {
            lines.append("N,\(symbol),\(id),\(1 + id % 5),\(side),LMT,\(95 + rng.next() % 11),\(1 + rng.next() % 5),GTC")
            live.append((symbol, id))
        }
    }
    return lines
}

struct SplitMix {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

/// Every command the journals of `data` hold from a bound (ingress) session: per source
/// partition key, the offsets in journal order, per shard; and the decoded commands by key+offset.
struct JournaledIngress {
    var offsets: [String: [Int]] = [:]
    var perShard: [Int: [String: [Int]]] = [:]
    var commands: [String: CommandRecord.Decoded] = [:]
    var duplicatesRejectedOnReplay = 0

    init(data: String, shards: Int) throws {
        for shard in 0..<shards {
            var bound: [UInt32: String] = [:]
            _ = try JournalReader.scan(directory: data, shard: shard, repair: false) { type, _, payload in
                if type == 2, payload.count > 8,
                   let admin = try? AdminRecord.decode(UnsafeRawBufferPointer(rebasing: payload[8...])) {
                    switch admin {
                    case .bindSource(let session, let source, let partition): bound[session] = "\(source)#\(partition)"
                    case .unbindSource(let session): bound[session] = nil
                    default: break
                    }
                    return
                }
                guard type == 1, payload.count == 80 else { return }
                let session = UInt32(littleEndian: payload.loadUnaligned(fromByteOffset: 64, as: UInt32.self))
                guard let key = bound[session] else { return }
                let offset = Int(UInt64(littleEndian: payload.loadUnaligned(fromByteOffset: 48, as: UInt64.self)))
                offsets[key, default: []].append(offset)
                perShard[shard, default: [:]][key, default: []].append(offset)
                if let decoded = try? CommandRecord.decode(payload.baseAddress!) { commands["\(key)@\(offset)"] = decoded }
            }
        }
    }
}

/// The books the journals of `data` rebuild (`crossbook replay --journal`) equal an independent
/// replay of `lines` as they were written (each symbol in order), and are not empty.
func expectBooksEqualReplay(data: String, replayConfig: String, lines: [String],
                            sourceLocation: SourceLocation = #_sourceLocation) throws {
    let fromJournal = try runCrossbookCapturing(["replay", "--journal", data, "--config", replayConfig, "--book"])
    let independent = try runCrossbookCapturing(["replay", "-", "--config", replayConfig, "--book"],
                                                stdin: lines.joined(separator: "\n") + "\n")
    func book(_ text: String) -> [String] {
        text.split(separator: "\n").filter { $0.hasPrefix("ASK,") || $0.hasPrefix("BID,") || $0.hasPrefix("BOOK,") }.map(String.init).sorted()
    }
    #expect(!book(fromJournal).isEmpty, sourceLocation: sourceLocation)
    #expect(book(fromJournal) == book(independent), sourceLocation: sourceLocation)
}

@Suite("Kafka ingress and egress", .serialized)
struct KafkaIngressTests {
    @Test("orders from a topic (JSON, two partitions over two shards) make the same trades as crossbook replay of the same orders")
    func sameTradesAsReplay() throws {
        let broker = try KafkaBroker()
        defer { broker.stop() }
        try broker.createTopic("orders", partitions: 2)
        try broker.createTopic("orders.dead-letter", partitions: 1)
        let dir = testDirectory(), data = NSTemporaryDirectory() + "crossbook-kafka-\(UUID().uuidString.prefix(8))"
        defer { removeTree(data) }
        let config = data + ".toml"
        defer { unlink(config) }
        try kafkaEngineConfig(instance: "kfa", broker: broker, topic: "orders").write(toFile: config, atomically: true, encoding: .utf8)
        let log = randomOrderLog(count: 3000, seed: 42)
        let expected = try runCrossbookCapturing(["replay", "--trades-only", "-"], stdin: log.joined(separator: "\n") + "\n")
        // T,<symbol>,<maker>,<taker>,<price>,<qty> → per symbol, "price,qty" in order.
        var want: [String: [String]] = [:]
        for line in expected.split(separator: "\n") where line.hasPrefix("T,") {
            let f = line.split(separator: ",")
            want[String(f[1]), default: []].append("\(f[4]),\(f[5])")
        }
        let tradeCount = want.values.map(\.count).reduce(0, +)
        #expect(tradeCount > 300, "the log trades: \(tradeCount)")

        let engine = try EngineProcess(["--config", config, "--directory", dir, "--no-pin", "--data-dir", data, "--clean-stale"],
                                       environment: KafkaKit.environment)
        defer { engine.stop() }
        #expect(waitFor(20) { (try? EngineFile.attach(directory: dir))?.isServing ?? false }, "\(engine.log.all)")
        let md = MarketDataReader(directory: dir)
        defer { md.stop() }
        usleep(500_000)  // md attached to both event rings
        let produced = try KafkaKit.run(["orders", broker.address, "orders", "2"], stdin: log.joined(separator: "\n"))
        #expect(produced.status == 0, "\(produced.err)")
        #expect(waitFor(30) { md.trades.values.map(\.count).reduce(0, +) >= tradeCount }, "trades seen: \(md.trades.values.map(\.count).reduce(0, +)) of \(tradeCount); \(engine.log.all.suffix(20))")
        usleep(200_000)
        #expect(md.trades == want)
    }
}

extension KafkaIngressTests {
    @Test("a symbol listed while the engine consumes: its orders from the topic are taken (before the listing they were dead-lettered as unknown), and its fills reach the fills topic under its name")
    func listedSymbolThroughKafka() throws {
        let broker = try KafkaBroker()
        defer { broker.stop() }
        try broker.createTopic("orders", partitions: 2)
        try broker.createTopic("orders.dead-letter", partitions: 1)
        for topic in ["fills", "exec-reports", "depth"] { try broker.createTopic(topic, partitions: 2) }
        let dir = testDirectory(), data = NSTemporaryDirectory() + "crossbook-kafkal-\(UUID().uuidString.prefix(8))"
        defer { removeTree(data) }
        let config = data + ".toml"
        defer { unlink(config) }
        try kafkaEngineConfig(instance: "kfl", broker: broker, topic: "orders", egress: true).write(toFile: config, atomically: true, encoding: .utf8)
        let engine = try EngineProcess(["--config", config, "--directory", dir, "--no-pin", "--data-dir", data, "--clean-stale"],
                                       environment: KafkaKit.environment)
        defer { engine.stop() }
        #expect(waitFor(20) { (try? EngineFile.attach(directory: dir))?.isServing ?? false }, "\(engine.log.all)")
        // Before the listing: unknown, dead-lettered.
        #expect(try KafkaKit.run(["orders", broker.address, "orders", "2"], stdin: "N,ADA-USD,1,1,B,LMT,100,2,GTC\n").status == 0)
        #expect(waitFor(20) {
            ConsumedMessage.parse((try? KafkaKit.run(["consume", broker.address, "orders.dead-letter", "1", "1000"]).out) ?? "").contains { $0.value.contains("ADA-USD") }
        })
        let added = try MigrationTests().crossbook(["symbol", "add", "ADA-USD", "--shard", "1", "--directory", dir])
        #expect(added.status == 0, "\(added)")
        let lines = ["N,ADA-USD,2,1,B,LMT,100,2,GTC", "N,ADA-USD,3,2,S,LMT,99,3,GTC", "N,ADA-USD,4,3,B,LMT,101,1,GTC"]
        #expect(try KafkaKit.run(["orders", broker.address, "orders", "2"], stdin: lines.joined(separator: "\n") + "\n").status == 0)
        var fills: [ConsumedMessage] = []
        #expect(waitFor(30) {
            fills = ConsumedMessage.parse((try? KafkaKit.run(["consume", broker.address, "fills", "2", "1500"]).out) ?? "").filter { $0.key == "ADA-USD" }
            return fills.count >= 2
        }, "\(engine.log.all.suffix(10))")
        // Bid 2 @ 100, then a sell of 3 @ 99 takes it (2 @ 100) and rests 1; the bid of 1 @ 101 takes that (1 @ 99).
        #expect(fills.map(\.value).map { $0.split(separator: ",").suffix(2).joined(separator: ",") } == ["100,2", "99,1"], "\(fills.map(\.value))")
        let letters = ConsumedMessage.parse(try KafkaKit.run(["consume", broker.address, "orders.dead-letter", "1", "1000"]).out)
        #expect(letters.filter { $0.value.contains("ADA-USD") }.count == 1, "\(letters.map(\.value))")
    }

    static let killCycleCount = Int(ProcessInfo.processInfo.environment["CROSSBOOK_KAFKA_KILL_CYCLES"] ?? "") ?? 20

    /// The engine's config without the ingress: what `crossbook replay --journal` rebuilds with.
    static func replayConfig(_ full: String) -> String {
        full.components(separatedBy: "[[plugins.load]]\nname = \"kafka-")[0]
    }

    @Test("kill -9 at random moments while a producer writes, 20 times (make soak: more): every valid message journaled exactly once, in order, the books equal an independent replay, garbage dead-lettered; the fills, exec-reports and depth topics hold each trade, report and level change of that replay exactly once, in order")
    func killCycles() throws {
        let broker = try KafkaBroker()
        defer { broker.stop() }
        try broker.createTopic("orders", partitions: 2)
        try broker.createTopic("orders.dead-letter", partitions: 1)
        for topic in ["fills", "exec-reports", "depth"] { try broker.createTopic(topic, partitions: 2) }
        let dir = testDirectory(), data = NSTemporaryDirectory() + "crossbook-kafka9-\(UUID().uuidString.prefix(8))"
        defer { removeTree(data) }
        let config = data + ".toml", replayConfig = data + "-replay.toml"
        defer { unlink(config); unlink(replayConfig) }
        let text = kafkaEngineConfig(instance: "kf9", broker: broker, topic: "orders", egress: true)
        try text.write(toFile: config, atomically: true, encoding: .utf8)
        try Self.replayConfig(text).write(toFile: replayConfig, atomically: true, encoding: .utf8)

        // The orders, with garbage among them: lines that are not orders, an unknown symbol.
        let cycles = Self.killCycleCount
        var rng = SplitMix(seed: 9)
        var lines: [String] = []
        for (k, line) in randomOrderLog(count: 400 * cycles, seed: 99).enumerated() {
            lines.append(line)
            if rng.next() % 40 == 0 { lines.append(k % 2 == 0 ? "X,BTC-USD,garbage \(k)" : "N,DOGE-USD,\(k),7,B,LMT,100,1,GTC") }
        }
        let chunk = (lines.count + cycles - 1) / cycles
        let arguments = ["--config", config, "--directory", dir, "--no-pin", "--data-dir", data, "--clean-stale", "--snapshot-every", "700"]
        for cycle in 0..<cycles {
            let engine = try EngineProcess(arguments, environment: KafkaKit.environment)
            #expect(waitFor(20) { (try? EngineFile.attach(directory: dir))?.isServing ?? false }, "cycle \(cycle): \(engine.log.all.suffix(10))")
            let part = lines[min(lines.count, cycle * chunk)..<min(lines.count, (cycle + 1) * chunk)]
            let producer = try startOrderProducer(broker, lines: part)
            usleep(UInt32(30_000 + rng.next() % 300_000))
            engine.signal(SIGKILL)
            _ = engine.waitForExit(10)
            producer.waitUntilExit()
            #expect(producer.terminationStatus == 0)
        }

        // What the topic holds: valid orders (JSON objects of known symbols) and garbage.
        let consumed = ConsumedMessage.parse(try KafkaKit.run(["consume", broker.address, "orders", "2", "3000"]).out)
        let invalid = consumed.filter { !$0.value.hasPrefix("{") || $0.value.contains("DOGE-USD") }
        let valid = consumed.filter { $0.value.hasPrefix("{") && !$0.value.contains("DOGE-USD") }
        #expect(consumed.count == lines.count, "the topic holds every line once")

        // A last start reads the rest; then every valid message is in a journal.
        let last = try EngineProcess(arguments, environment: KafkaKit.environment)
        #expect(waitFor(20) { (try? EngineFile.attach(directory: dir))?.isServing ?? false })
        #expect(waitFor(60) {
            ((try? JournaledIngress(data: data, shards: 2))?.offsets.values.map(\.count).reduce(0, +) ?? 0) >= valid.count
        }, "\(last.log.all.suffix(20))")
        // The trades of an independent replay of the valid orders, per symbol in order; the
        // fills topic must come to hold exactly those (the egress publishes what it had not).
        let validLines = lines.filter { !$0.hasPrefix("X,") && !$0.contains("DOGE-USD") }
        let replayed = try runCrossbookCapturing(["replay", "--trades-only", "-", "--config", replayConfig],
                                                 stdin: validLines.joined(separator: "\n") + "\n")
        var wantFills: [String: [String]] = [:]
        for line in replayed.split(separator: "\n") where line.hasPrefix("T,") { wantFills[String(line.split(separator: ",")[1]), default: []].append(String(line)) }
        let tradeCount = wantFills.values.map(\.count).reduce(0, +)
        var fills: [ConsumedMessage] = []
        #expect(waitFor(60) {
            fills = ConsumedMessage.parse((try? KafkaKit.run(["consume", broker.address, "fills", "2", "1500"]).out) ?? "")
            return fills.count >= tradeCount
        }, "fills \(fills.count) of \(tradeCount); \(last.log.all.filter { $0.contains("egress") }.suffix(10))")
        usleep(300_000)
        last.stop()
        fills = ConsumedMessage.parse(try KafkaKit.run(["consume", broker.address, "fills", "2", "1500"]).out)
        var gotFills: [String: [String]] = [:]
        for fill in fills.sorted(by: { ($0.partition, $0.offset) < ($1.partition, $1.offset) }) {
            gotFills[fill.key, default: []].append(fill.value)
        }
        #expect(tradeCount > 100)
        #expect(gotFills == wantFills, "fills: \(fills.count), trades of the replay: \(tradeCount)")
        // Exec reports and depth: as many as the replay's reports and level changes (a trade is
        // two reports: the maker's and the taker's), each once, rising per partition and shard.
        let events = try runCrossbookCapturing(["replay", "-", "--config", replayConfig], stdin: validLines.joined(separator: "\n") + "\n")
        let eventLines = events.split(separator: "\n")
        let wantReports = eventLines.filter { $0.hasPrefix("ACK,") || $0.hasPrefix("REJ,") || $0.hasPrefix("CXL,") || $0.hasPrefix("RPL,") }.count
            + 2 * eventLines.filter { $0.hasPrefix("T,") }.count
        let wantLevels = eventLines.filter { $0.hasPrefix("L2,") }.count
        let reports = ConsumedMessage.parse(try KafkaKit.run(["consume", broker.address, "exec-reports", "2", "1500"]).out)
        let levels = ConsumedMessage.parse(try KafkaKit.run(["consume", broker.address, "depth", "2", "1500"]).out)
        #expect(reports.count == wantReports, "exec reports \(reports.count), the replay's reports \(wantReports)")
        #expect(levels.count == wantLevels, "depth \(levels.count), the replay's level changes \(wantLevels)")
        // Exec reports are keyed by the order's account, and carry it.
        var accountOf: [String: String] = [:]
        for line in validLines where line.hasPrefix("N,") {
            let f = line.split(separator: ",")
            accountOf["\(f[1])/\(f[2])"] = String(f[3])
        }
        var wrongAccounts = 0
        for report in reports {
            // EXEC,<type>,<symbol>,<account>,<session>,<order id>,...
            let f = report.value.split(separator: ",")
            guard f.count >= 6, f[1] != "rejected" else { continue }
            if accountOf["\(f[2])/\(f[5])"] != String(f[3]) || report.key != String(f[3]) { wrongAccounts += 1 }
        }
        #expect(wrongAccounts == 0, "exec reports with another account than their order's")
        for (topic, messages) in [("fills", fills), ("exec-reports", reports), ("depth", levels)] {
            // Each message once: (shard, sequence, index) unique, rising per partition and shard.
            var seen = Set<String>()
            var lastOf: [String: (UInt64, UInt64)] = [:]
            var problems = 0
            for message in messages.sorted(by: { ($0.partition, $0.offset) < ($1.partition, $1.offset) }) {
                let h = Dictionary(message.headers.split(separator: ";").compactMap { kv -> (String, String)? in
                    let parts = kv.split(separator: "=", maxSplits: 1)
                    return parts.count == 2 ? (String(parts[0]), String(parts[1])) : nil
                }, uniquingKeysWith: { a, _ in a })
                let shard = h["crossbook.shard"] ?? "?", sequence = UInt64(h["crossbook.sequence"] ?? "") ?? 0
                let index = UInt64(h["crossbook.index"] ?? "") ?? 0
                if !seen.insert("\(shard)/\(sequence)/\(index)").inserted { problems += 1 }
                let key = "\(message.partition)/\(shard)"
                if let previous = lastOf[key], (sequence, index) <= previous { problems += 1 }
                lastOf[key] = (sequence, index)
            }
            #expect(problems == 0, "\(topic): \(problems) messages twice or out of order")
        }
        #expect(last.log.contains("resuming at offset"))

        // Exactly once: per partition, the journaled offsets are the valid ones, each once.
        let journaled = try JournaledIngress(data: data, shards: 2)
        for partition in 0..<2 {
            let want = valid.filter { $0.partition == partition }.map(\.offset).sorted()
            let got = (journaled.offsets["orders#\(partition)"] ?? []).sorted()
            #expect(got == want, "partition \(partition): \(got.count) journaled, \(want.count) valid; duplicates \(got.count - Set(got).count)")
        }
        // In order: each shard journaled each partition's offsets ascending.
        for (shard, keys) in journaled.perShard {
            for (key, offsets) in keys { #expect(offsets == offsets.sorted(), "shard \(shard) \(key) out of order") }
        }
        // The journaled command is the message: its order id and symbol.
        let ids = ["BTC-USD": UInt32(1), "ETH-USD": 2, "SOL-USD": 3, "XRP-USD": 4]
        var mismatches = 0
        for message in valid {
            guard let object = try? JSONSerialization.jsonObject(with: Data(message.value.utf8)) as? [String: Any],
                  let decoded = journaled.commands["orders#\(message.partition)@\(message.offset)"] else { mismatches += 1; continue }
            let id: OrderId = switch decoded.command {
            case .new(let o): o.orderId
            case .cancel(let c): c.orderId
            case .replace(let r): r.orderId
            }
            if decoded.symbolId != ids[object["symbol"] as? String ?? ""] || id != (object["order_id"] as? Int).map(OrderId.init) { mismatches += 1 }
        }
        #expect(mismatches == 0)

        // The books: the engine's journal rebuilt by `crossbook replay --journal`, and an
        // independent replay of the valid orders as they were written (each symbol in order).
        try expectBooksEqualReplay(data: data, replayConfig: replayConfig, lines: validLines)

        // Every garbage message is in the dead-letter topic with its reason (at least once: one
        // dead-lettered before a kill is read and dead-lettered again after the restart).
        let letters = ConsumedMessage.parse(try KafkaKit.run(["consume", broker.address, "orders.dead-letter", "1", "2000"]).out)
        let lettered = Set(letters.compactMap { letter -> String? in
            let headers = letter.headers.split(separator: ";")
            let source = headers.first { $0.hasPrefix("crossbook.source=") }?.dropFirst("crossbook.source=".count)
            let offset = headers.first { $0.hasPrefix("crossbook.offset=") }?.dropFirst("crossbook.offset=".count)
            return source.flatMap { s in offset.map { "\(s)@\($0)" } }
        })
        #expect(Set(invalid.map { "orders#\($0.partition)@\($0.offset)" }) == lettered)
        #expect(letters.allSatisfy { $0.headers.contains("crossbook.reason=") })
    }

    @Test("garbage (random bytes, bad JSON, unknown symbols, a huge message, a bad binary record) goes to the dead-letter topic with its reason and consumption goes on; a broker that goes away makes the health degraded, and it recovers by itself")
    func garbageAndBrokerLoss() throws {
        let broker = try KafkaBroker()
        defer { broker.stop() }
        try broker.createTopic("bin", partitions: 1)
        try broker.createTopic("bin.dead-letter", partitions: 1)
        let dir = testDirectory(), data = NSTemporaryDirectory() + "crossbook-kafkag-\(UUID().uuidString.prefix(8))"
        defer { removeTree(data) }
        let config = data + ".toml"
        defer { unlink(config) }
        try kafkaEngineConfig(instance: "kfg", broker: broker, topic: "bin", partitions: "0", format: "binary")
            .write(toFile: config, atomically: true, encoding: .utf8)
        let engine = try EngineProcess(["--config", config, "--directory", dir, "--no-pin", "--data-dir", data, "--clean-stale"],
                                       environment: KafkaKit.environment)
        defer { engine.stop() }
        #expect(waitFor(20) { (try? EngineFile.attach(directory: dir))?.isServing ?? false })

        func record(symbol: UInt32, id: OrderId, side: Side, price: Int64) -> String {
            var bytes = [UInt8](repeating: 0, count: 64)
            bytes.withUnsafeMutableBytes {
                CommandRecord.encode(.init(symbolId: symbol, command: .new(NewOrder(orderId: id, side: side, price: price, quantity: 1))), to: $0.baseAddress!)
            }
            return "hex:" + bytes.map { String(format: "%02x", $0) }.joined()
        }
        var rng = SplitMix(seed: 5)
        // 64 random bytes that name symbol 1: the ingress passes them on, the shard rejects them.
        var noise = (0..<64).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
        noise[0] = 9  // not record version 1
        noise.replaceSubrange(8..<12, with: [1, 0, 0, 0])
        let randomBytes = "hex:" + noise.map { String(format: "%02x", $0) }.joined()
        let huge = "hex:" + String(repeating: "ab", count: 200_000)
        let messages = [
            record(symbol: 1, id: 1, side: .buy, price: 100),        // 0 valid
            randomBytes,                                             // 1 64 random bytes: the shard rejects it (malformed)
            "hex:00ff",                                              // 2 not 64 bytes: dead letter
            record(symbol: 77, id: 2, side: .buy, price: 100),       // 3 unknown symbol id: dead letter
            huge,                                                    // 4 200 kB: dead letter
            "{\"symbol\":\"BTC-USD\"}",                              // 5 JSON on a binary topic: dead letter
            record(symbol: 1, id: 3, side: .sell, price: 100),       // 6 valid: trades with 0
        ]
        let input = messages.enumerated().map { "0\t\($0.offset)\t\($0.element)" }.joined(separator: "\n") + "\n"
        #expect(try KafkaKit.run(["produce", broker.address, "bin"], stdin: input).status == 0)
        let letters = { ConsumedMessage.parse((try? KafkaKit.run(["consume", broker.address, "bin.dead-letter", "1", "1500"]).out) ?? "") }
        var seen: [ConsumedMessage] = []
        #expect(waitFor(20) { seen = letters(); return seen.count >= 4 })
        let reasons = Dictionary(seen.map { ($0.key, $0.headers) }, uniquingKeysWith: { a, _ in a })
        #expect(reasons["2"]?.contains("a binary record of 2 bytes, not 64") == true, "\(reasons)")
        #expect(reasons["3"]?.contains("unknown symbol id 77") == true, "\(reasons)")
        #expect(reasons["4"]?.contains("a binary record of 200000 bytes") == true, "\(reasons)")
        #expect(reasons["5"]?.contains("not 64") == true, "\(reasons)")
        #expect(reasons["1"] == nil, "64 random bytes reach the shard, which rejects them with a reason")
        #expect(waitFor(10) {
            let stat = (try? runCrossbookCapturing(["stat", "--directory", dir, "--count", "1"])) ?? ""
            return stat.contains("kafka_ingress_submitted=3") && stat.contains("kafka_ingress_rejected=1") && stat.contains("1 trades")
        }, "\(engine.log.all.suffix(10))")

        // The broker goes away: the health says so, with librdkafka's reason.
        broker.stop()
        let health = { (try? runCrossbookCapturing(["stat", "--directory", dir, "--count", "1"])) ?? "" }
        #expect(waitFor(30) { health().contains("kafka-ingress 1.0.0 [ingress]: running health degraded") }, "\(health())")
        // It comes back (a memory broker, empty): healthy again by itself, and it reads what comes.
        try broker.start()
        try broker.createTopic("bin", partitions: 1)
        try broker.createTopic("bin.dead-letter", partitions: 1)
        #expect(waitFor(30) { health().contains("kafka-ingress 1.0.0 [ingress]: running health ok") }, "\(health())")
        #expect(engine.process.isRunning)
    }
}

/// `crossbook md` of an instance, its trades per symbol ("price,qty" in order).
final class MarketDataReader: @unchecked Sendable {
    private let process = Process()
    private let lock = NSLock()
    private var seen: [String: [String]] = [:]

    init(directory: String) {
        process.executableURL = crossbookBinary()
        process.arguments = ["md", "--directory", directory]
        let out = Pipe()
        process.standardOutput = out
        process.standardError = FileHandle.nullDevice
        try? process.run()
        readLines(out.fileHandleForReading) { [weak self] line in
            // TRADE,<symbol>,<taker side>,<price>,<qty>,<sequence>
            guard line.hasPrefix("TRADE,") else { return }
            let f = line.split(separator: ",")
            if f.count >= 5 { self?.add(String(f[1]), "\(f[3]),\(f[4])") }
        }
    }

    private func add(_ symbol: String, _ trade: String) {
        lock.lock()
        seen[symbol, default: []].append(trade)
        lock.unlock()
    }

    var trades: [String: [String]] { lock.lock(); defer { lock.unlock() }; return seen }

    func stop() {
        if process.isRunning { process.terminate() }
        if !waitFor(5, { !process.isRunning }) { kill(process.processIdentifier, SIGKILL) }
        process.waitUntilExit()
    }
}

extension KafkaIngressTests {
    @Test("a Kafka-fed symbol moved between the shards again and again while the engine takes a producer's orders: every message journaled exactly once, each partition's in order per shard, the books equal an independent replay")
    func migrationsUnderKafkaLoad() throws {
        let broker = try KafkaBroker()
        defer { broker.stop() }
        try broker.createTopic("orders", partitions: 2)
        try broker.createTopic("orders.dead-letter", partitions: 1)
        let dir = testDirectory(), data = NSTemporaryDirectory() + "crossbook-kafkamig-\(UUID().uuidString.prefix(8))"
        defer { removeTree(data) }
        let config = data + ".toml", replayConfig = data + "-replay.toml"
        defer { unlink(config); unlink(replayConfig) }
        let text = kafkaEngineConfig(instance: "kfm", broker: broker, topic: "orders")
        try text.write(toFile: config, atomically: true, encoding: .utf8)
        try Self.replayConfig(text).write(toFile: replayConfig, atomically: true, encoding: .utf8)
        // A process (the Kafka plugins need the kit's librdkafka); moved through its control
        // socket, a few milliseconds a move.
        let engine = try EngineProcess(["--config", config, "--directory", dir, "--no-pin", "--data-dir", data, "--clean-stale"],
                                       environment: KafkaKit.environment)
        #expect(waitFor(20) { (try? EngineFile.attach(directory: dir))?.isServing ?? false }, "\(engine.log.all.suffix(10))")
        let file = try EngineFile.attach(directory: dir)
        @Sendable func taken() -> UInt64 { (0..<2).map { file.counters($0).read(.commands) }.reduce(0, +) }
        let lines = randomOrderLog(count: 6000, seed: 61)
        // BTC-USD moves back and forth all along, while 60 producers one after the other write
        // 100 orders each.
        final class Moves: @unchecked Sendable {
            let lock = NSLock()
            var stop = false, moves = 0, held = 0, during = 0, failures: [String] = []
        }
        let tally = Moves()
        let finished = DispatchSemaphore(value: 0)
        let mover = Thread {
            defer { finished.signal() }
            while !tally.lock.withLock({ tally.stop }) {
                let t0 = taken()
                let to = (tally.lock.withLock { tally.moves } + 1) % 2
                let answer = (try? Engine.ask(directory: dir, "migrate BTC-USD \(to)", timeout: 10)) ?? ["no answer"]
                if answer.first == "ok", answer.count > 1 {
                    let held = answer[1].range(of: #"\d+ held"#, options: .regularExpression).map { Int(answer[1][$0].split(separator: " ")[0]) ?? 0 } ?? 0
                    tally.lock.withLock {
                        tally.held += held
                        if taken() > t0 { tally.during += 1 }
                        tally.moves += 1
                    }
                } else {
                    tally.lock.withLock { tally.failures.append(answer.joined(separator: " ")) }
                }
                usleep(500)
            }
        }
        mover.start()
        for chunk in stride(from: 0, to: lines.count, by: 100).map({ lines[$0..<min(lines.count, $0 + 100)] }) {
            let producer = try startOrderProducer(broker, lines: chunk)
            producer.waitUntilExit()
            #expect(producer.terminationStatus == 0)
        }
        let consumed = ConsumedMessage.parse(try KafkaKit.run(["consume", broker.address, "orders", "2", "3000"]).out)
        #expect(consumed.count == lines.count)
        #expect(waitFor(30) { taken() >= UInt64(consumed.count) }, "\(taken()) commands taken")
        tally.lock.withLock { tally.stop = true }
        #expect(finished.wait(timeout: .now() + 20) == .success)
        usleep(200_000)
        engine.stop()
        let (moves, held, during) = tally.lock.withLock { (tally.moves, tally.held, tally.during) }
        #expect(tally.failures.isEmpty, "\(tally.failures.prefix(3))")
        #expect(during >= 20 && held > 0, "\(moves) moves, \(during) while orders were taken, \(held) commands held")
        let journaled = try JournaledIngress(data: data, shards: 2)
        for partition in 0..<2 {
            let want = consumed.filter { $0.partition == partition }.map(\.offset).sorted()
            let got = (journaled.offsets["orders#\(partition)"] ?? []).sorted()
            #expect(got == want, "partition \(partition): \(got.count) journaled, \(want.count) in the topic; missing \(Set(want).subtracting(got).sorted().prefix(10)), duplicates \(got.count - Set(got).count); \(held) commands held over \(moves) moves")
        }
        // In order per symbol on each shard (a shard's own symbols go on while the commands of
        // one arriving wait for its book: the partition's offsets interleave across symbols).
        for (shard, keys) in journaled.perShard {
            for (key, offsets) in keys {
                var bySymbol: [UInt32: [Int]] = [:]
                for offset in offsets { bySymbol[journaled.commands["\(key)@\(offset)"]?.symbolId ?? 0, default: []].append(offset) }
                for (symbol, mine) in bySymbol { #expect(mine == mine.sorted(), "shard \(shard) \(key) symbol \(symbol) out of order") }
            }
        }
        try expectBooksEqualReplay(data: data, replayConfig: replayConfig, lines: lines)
        print("migrationsUnderKafkaLoad: \(moves) moves (\(during) while orders were taken), \(held) commands held")
    }
}

extension KafkaIngressTests {
    @Test("watermarks: a shard that gets nothing of a partition for a while is told how far it was read and journals that as its position; a restart reads the partition from its end, not from that shard's last command (watermark_ms = 0: from there, as before)", arguments: [true, false])
    func watermarksMoveQuietShards(on: Bool) throws {
        let broker = try KafkaBroker()
        defer { broker.stop() }
        try broker.createTopic("orders", partitions: 2)
        try broker.createTopic("orders.dead-letter", partitions: 1)
        let dir = testDirectory(), data = NSTemporaryDirectory() + "crossbook-kafkawm-\(UUID().uuidString.prefix(8))"
        defer { removeTree(data) }
        let config = data + ".toml"
        defer { unlink(config) }
        try kafkaEngineConfig(instance: "kfw", broker: broker, topic: "orders", extra: on ? "" : ", watermark_ms = \"0\"")
            .write(toFile: config, atomically: true, encoding: .utf8)
        let arguments = ["--config", config, "--directory", dir, "--no-pin", "--data-dir", data, "--clean-stale"]
        // Shard 1's symbols (ETH-USD, XRP-USD) get one order each, then only shard 0's (BTC-USD,
        // SOL-USD) come, 600 of them.
        var lines = ["N,ETH-USD,1,1,B,LMT,100,1,GTC", "N,XRP-USD,2,1,B,LMT,100,1,GTC"]
        for k in 0..<600 { lines.append("N,\(k % 2 == 0 ? "BTC-USD" : "SOL-USD"),\(10 + k),1,\(k % 3 == 0 ? "S" : "B"),LMT,\(98 + k % 5),1,GTC") }
        let engine = try EngineProcess(arguments, environment: KafkaKit.environment)
        #expect(waitFor(20) { (try? EngineFile.attach(directory: dir))?.isServing ?? false }, "\(engine.log.all.suffix(10))")
        let producer = try startOrderProducer(broker, lines: lines[...])
        producer.waitUntilExit()
        let consumed = ConsumedMessage.parse(try KafkaKit.run(["consume", broker.address, "orders", "2", "3000"]).out)
        #expect(consumed.count == lines.count)
        #expect(waitFor(30) {
            ((try? JournaledIngress(data: data, shards: 2))?.offsets.values.map(\.count).reduce(0, +) ?? 0) >= lines.count
        })
        usleep(2_500_000)  // two watermark rounds (1 s each)
        let stat = try runCrossbookCapturing(["stat", "--directory", dir, "--count", "1", "--interval", "0.2"])
        engine.stop()
        if on { #expect(stat.contains("ingress watermarks journaled="), "\(stat)") }
        // The restart: each partition resumes at its end (watermarks), or at shard 1's one order.
        let again = try EngineProcess(arguments, environment: KafkaKit.environment)
        #expect(waitFor(20) { again.log.all.filter { $0.contains("resuming at offset") }.count >= 2 }, "\(again.log.all.suffix(10))")
        again.stop()
        for partition in 0..<2 {
            let messages = consumed.filter { $0.partition == partition }
            guard let end = messages.map(\.offset).max().map({ $0 + 1 }) else { continue }
            let shardOne = messages.filter { $0.value.contains("ETH-USD") || $0.value.contains("XRP-USD") }.map(\.offset).max()
            let want = on || shardOne == nil ? end : shardOne! + 1
            #expect(again.log.contains("orders#\(partition): resuming at offset \(want);"),
                    "partition \(partition): \(again.log.all.filter { $0.contains("resuming") })")
        }
        // Nothing lost or doubled: every message journaled once.
        let journaled = try JournaledIngress(data: data, shards: 2)
        for partition in 0..<2 {
            let want = consumed.filter { $0.partition == partition }.map(\.offset).sorted()
            #expect((journaled.offsets["orders#\(partition)"] ?? []).sorted() == want)
        }
    }
}
