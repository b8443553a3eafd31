// The Kafka ingress across moves between engines: two engines (processes) read the same orders
// topic, each takes its own symbols' messages, and a symbol that moves from one to the other is
// read by the new owner from where the old one stopped (the partition is the queue of what waits
// for the move). A real broker (Tansu), a real redis-server, `crossbook run` processes.
import Engine
import Foundation
import Glibc
import Journal
import OrderBook
import SharedMemory
import Testing
import TestSupport
import Wire

@Suite("Kafka ingress follows a symbol between engines", .serialized)
struct KafkaTransferTests {
    static func config(_ instance: String, redis: RedisServer, prefix: String, broker: KafkaBroker,
                       symbols: [(String, Int, Int)]) -> String {
        let path = NSTemporaryDirectory() + "crossbook-kx-\(instance)-\(UUID().uuidString.prefix(8)).toml"
        var text = """
        [engine]
        instance = "\(instance)"
        durability = "sync"
        transfer_timeout_s = 2
        lag_timeout_ms = 5000
        [[shards]]
        [[shards]]
        [book]
        orders = 16384
        levels = 1024

        """
        for (name, id, shard) in symbols { text += "[[symbols]]\nname = \"\(name)\"\nid = \(id)\nshard = \(shard)\n" }
        // No move is taken through the router here: the test moves, or leaves a move undone.
        text += """
        [plugins]
        [[plugins.load]]
        name = "snapshot-redis"
        config = { redis = "\(redis.address)", prefix = "\(prefix)", timeout_ms = "500" }
        [[plugins.load]]
        name = "redis-routing"
        config = { redis = "\(redis.address)", prefix = "\(prefix)", heartbeat_ms = "200", resync_ms = "300", timeout_ms = "500", accept_transfers = "no" }
        [[plugins.load]]
        name = "kafka-ingress"
        config = { brokers = "\(broker.address)", topic = "orders", partitions = "0-1", format = "json" }
        """
        FileManager.default.createFile(atPath: path, contents: Data(text.utf8))
        return path
    }

    /// Order lines: HOT-USD new orders only (a moved order cannot be cancelled by its client on
    /// the other engine: README), limit around 100 and some market; ETH-USD and SOL-USD with
    /// cancels and replaces (they do not move).
    static func orderLog(count: Int, seed: UInt64) -> [String] {
        var rng = SplitMix(seed: seed)
        var lines: [String] = []
        var live: [(String, Int)] = []
        for id in 1...count {
            let roll = rng.next() % 100
            let side = rng.next() % 2 == 0 ? "B" : "S"
            if roll < 45 {
                if roll < 5 {
                    lines.append("N,HOT-USD,\(id),\(1 + id % 5),\(side),MKT,0,\(1 + rng.next() % 3),IOC")
                } else {
                    lines.append("N,HOT-USD,\(id),\(1 + id % 5),\(side),LMT,\(95 + rng.next() % 11),\(1 + rng.next() % 5),GTC")
                }
                continue
            }
            let symbol = roll < 75 ? "ETH-USD" : "SOL-USD"
            if roll % 10 == 0, !live.isEmpty {
                let (s, old) = live.remove(at: Int(rng.next() % UInt64(live.count)))
                lines.append("C,\(s),\(old)")
                continue
            }
            lines.append("N,\(symbol),\(id),\(1 + id % 5),\(side),LMT,\(95 + rng.next() % 11),\(1 + rng.next() % 5),GTC")
            live.append((symbol, id))
        }
        return lines
    }

    /// Which shard of the engine of `dir` owns `symbol` ("-": none), from its control socket.
    static func owner(_ dir: String, _ symbol: String) -> String? { TransferKillTests.owner(dir, symbol) }

    @Test("two engines share an orders topic; a symbol moves between them five times while orders arrive (one move undone by its timeout): every message applied exactly once across both engines, the symbol's in partition order through the moves, its trades those of a one-book replay of its messages")
    func partitionFollowsTheSymbol() throws {
        let redis = try RedisServer()
        let broker = try KafkaBroker()
        defer { broker.stop() }
        try broker.createTopic("orders", partitions: 2)
        try broker.createTopic("orders.dead-letter", partitions: 1)
        let prefix = "kx\(UInt32.random(in: 0...UInt32.max)):"
        let dirs = [testDirectory(), testDirectory()]
        let data = ["a", "b"].map { NSTemporaryDirectory() + "crossbook-kx\($0)-\(UUID().uuidString.prefix(8))" }
        let configs = [
            Self.config("kxa", redis: redis, prefix: prefix, broker: broker, symbols: [("HOT-USD", 1, 0), ("ETH-USD", 2, 1)]),
            Self.config("kxb", redis: redis, prefix: prefix, broker: broker, symbols: [("SOL-USD", 3, 0)]),
        ]
        defer { for k in 0..<2 { removeTree(data[k]); unlink(configs[k]) } }
        let instances = ["kxa", "kxb"]
        let engines = try (0..<2).map { k in
            try EngineProcess(["--config", configs[k], "--instance", instances[k], "--directory", dirs[k], "--data-dir", data[k],
                               "--no-pin", "--clean-stale"], environment: KafkaKit.environment)
        }
        defer { for e in engines where e.process.isRunning { e.stop() } }
        for k in 0..<2 {
            #expect(waitFor(20) { (try? EngineFile.attach(directory: dirs[k]))?.isServing ?? false }, "\(instances[k]): \(engines[k].log.all.suffix(10))")
        }
        // Each engine lists the other's symbols as away: their messages are skipped, not
        // dead-lettered, and they can move here.
        for (k, name, id) in [(0, "SOL-USD", 3), (1, "HOT-USD", 1), (1, "ETH-USD", 2)] {
            let listed = try runTool(crossbookBinary().path, ["symbol", "add", name, "--away", "--id", "\(id)", "--directory", dirs[k]])
            #expect(listed.status == 0, "\(listed.out)")
        }
        #expect(waitFor(10) { routes(redis, prefix: prefix)["HOT-USD"]?.instance == "kxa" && routes(redis, prefix: prefix)["SOL-USD"]?.instance == "kxb" })

        // Orders arrive in chunks while HOT-USD moves.
        let log = Self.orderLog(count: 4000, seed: 7)
        let chunks = 16
        let produced = DispatchSemaphore(value: 0)
        let failures = LogLines()
        let brokerAddress = broker.address
        Thread {
            for c in 0..<chunks {
                let part = log[(c * log.count / chunks)..<((c + 1) * log.count / chunks)]
                if let r = try? KafkaKit.run(["orders", brokerAddress, "orders", "2"], stdin: part.joined(separator: "\n")), r.status != 0 {
                    failures.append(r.err)
                }
                usleep(150_000)
            }
            produced.signal()
        }.start()

        func migrate(_ from: Int, _ to: Int, shard: Int) -> Bool {
            for _ in 0..<20 {
                if let r = try? runTool(crossbookBinary().path, ["migrate", "HOT-USD", "--instance", instances[from], "--directory", dirs[from],
                                                                 "--to-instance", instances[to], "--to-directory", dirs[to], "--to-shard", "\(shard)"]),
                   r.status == 0 { return true }
                usleep(100_000)
            }
            return false
        }
        usleep(400_000)
        #expect(migrate(0, 1, shard: 1), "move 1: kxa → kxb")
        usleep(300_000)
        #expect(migrate(1, 0, shard: 0), "move 2: kxb → kxa")
        usleep(300_000)
        #expect(migrate(0, 1, shard: 1), "move 3: kxa → kxb")
        usleep(200_000)
        // Move 4 is begun and never taken (kxa takes no move from its router, and nobody asks it):
        // kxb claims the route back after its 2 s timeout and reads again what it left to kxa.
        let begun = try Engine.ask(directory: dirs[1], "transfer-out HOT-USD kxa 0", timeout: 10)
        #expect(begun.first == "ok", "\(begun)")
        #expect(waitFor(15) { Self.owner(dirs[1], "HOT-USD") == "1" && routes(redis, prefix: prefix)["HOT-USD"]?.status == "ACTIVE" },
                "move 4 undone: \(engines[1].log.all.suffix(10))")
        usleep(200_000)
        #expect(migrate(1, 0, shard: 0), "move 5: kxb → kxa")
        #expect(produced.wait(timeout: .now() + 60) == .success)
        #expect(failures.all.isEmpty, "\(failures.all)")

        // Every message of the topic, as the broker holds it.
        let consumed = try KafkaKit.run(["consume", broker.address, "orders", "2", "2000", "\(log.count)"])
        let messages = ConsumedMessage.parse(consumed.out)
        #expect(messages.count == log.count, "\(messages.count) of \(log.count) messages in the topic")
        var expected: [String: Set<Int>] = [:]
        var hotPartition = -1
        for m in messages {
            expected["orders#\(m.partition)", default: []].insert(m.offset)
            if m.key == "HOT-USD" { hotPartition = m.partition }
        }
        // Both engines quiet and every message journaled by one of them.
        var union: [String: [Int]] = [:]
        let settled = waitFor(60) {
            union = [:]
            for k in 0..<2 {
                guard let j = try? JournaledIngress(data: data[k], shards: 2) else { return false }
                for (key, offsets) in j.offsets { union[key, default: []] += offsets }
            }
            return union.mapValues { Set($0) } == expected
        }
        #expect(settled, "journaled: \(union.mapValues(\.count)), expected \(expected.mapValues(\.count)); \(engines[0].log.all.suffix(8)) \(engines[1].log.all.suffix(8))")
        func missing() -> String {
            expected.map { key, want in
                let have = Set(union[key] ?? [])
                return "\(key): \(want.subtracting(have).sorted().prefix(10)) missing, \(have.subtracting(want).sorted().prefix(10)) not in the topic"
            }.joined(separator: "; ")
        }
        usleep(500_000)
        for e in engines { e.stop() }

        // Exactly once: each offset journaled once over both engines (after the stops too).
        union = [:]
        var journaled: [JournaledIngress] = []
        for k in 0..<2 {
            let j = try JournaledIngress(data: data[k], shards: 2)
            journaled.append(j)
            for (key, offsets) in j.offsets { union[key, default: []] += offsets }
        }
        for (key, offsets) in union {
            let twice = Dictionary(grouping: offsets, by: { $0 }).filter { $0.value.count > 1 }.keys.sorted()
            #expect(twice.isEmpty, "\(key): offsets journaled more than once: \(twice.prefix(10))")
        }
        #expect(union.mapValues { Set($0) } == expected, "\(missing())")
        // Each journaled command is its message (the same symbol, order id, price, quantity).
        var mismatched = 0
        for m in messages {
            let key = "orders#\(m.partition)@\(m.offset)"
            guard let decoded = journaled[0].commands[key] ?? journaled[1].commands[key] else { continue }
            let symbol = m.key == "HOT-USD" ? 1 : m.key == "ETH-USD" ? 2 : 3
            if decoded.symbolId != UInt32(symbol) { mismatched += 1 }
        }
        #expect(mismatched == 0)

        // HOT-USD through its moves: one chain over both journals, its commands in partition
        // order, each of its messages once; its trades those of a one-book replay of its
        // messages; the book where it ended is the chain's.
        let chain = try CrossChain(data: data, shards: 2, symbolId: 1, initialOwner: (0, 0))
        #expect(chain.hops == 4 && chain.owner.engine == 0 && chain.owner.shard == 0, "\(chain.hops) hops, owner \(chain.owner)")
        var hotOffsets: [Int] = []
        for step in chain.steps {
            guard case .command(_, _, let record) = step else { continue }
            hotOffsets.append(Int(record.withUnsafeBytes { UInt64(littleEndian: $0.loadUnaligned(fromByteOffset: 48, as: UInt64.self)) }))
        }
        let hotMessages = messages.filter { $0.key == "HOT-USD" }.map(\.offset)
        let inOrder = hotOffsets == hotMessages
        #expect(inOrder, "HOT-USD: \(hotOffsets.count) commands in the chain, \(hotMessages.count) messages; first difference at \(zip(hotOffsets, hotMessages).enumerated().first { $1.0 != $1.1 }.map { "\($0.offset)" } ?? "the end")")
        let spec = SymbolSpec(name: "HOT-USD", id: 1)
        let (events, _) = try chain.replay(spec: spec, capacity: BookCapacity(orders: 1 << 14, levels: 1 << 10))
        var trades: [String] = []
        for (_, event) in events {
            if case .trade(_, _, _, let price, let quantity, _, _) = event { trades.append("\(price),\(quantity)") }
        }
        let hotLines = log.filter { $0.hasPrefix("N,HOT-USD,") }
        let reference = try runCrossbookCapturing(["replay", "--trades-only", "-"], stdin: hotLines.joined(separator: "\n") + "\n")
        let want = reference.split(separator: "\n").filter { $0.hasPrefix("T,") }.map { line -> String in
            let f = line.split(separator: ",")
            return "\(f[4]),\(f[5])"
        }
        #expect(trades.count > 100, "\(trades.count) trades")
        let sameTrades = trades == want
        #expect(sameTrades, "HOT-USD: \(trades.count) trades through the moves, \(want.count) in the one-book replay; first difference at \(zip(trades, want).enumerated().first { $1.0 != $1.1 }.map { "\($0.offset)" } ?? "the end")")
        let rewound = engines.map { $0.log.all.filter { $0.contains("reading again from offset") }.count }
        #expect(rewound[0] > 0 && rewound[1] > 0, "rewinds logged: \(rewound)")
        print("kafka transfer checker: \(messages.count) messages (HOT-USD \(hotMessages.count) on partition \(hotPartition)), \(trades.count) HOT-USD trades through \(chain.hops) hops, rewinds \(rewound)")
    }
}
