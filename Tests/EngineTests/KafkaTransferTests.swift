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
    /// TransferKillTests' engine with kafka-ingress on `orders`; no move is taken through the
    /// router (the test moves, or leaves a move undone).
    static func config(_ instance: String, redis: RedisServer, prefix: String, broker: KafkaBroker,
                       symbols: [(String, Int, Int)]) -> String {
        TransferKillTests.config(instance, redis: redis, prefix: prefix, symbols: symbols, routing: ", accept_transfers = \"no\"",
                                 plugins: """
                                 [[plugins.load]]
                                 name = "kafka-ingress"
                                 config = { brokers = "\(broker.address)", topic = "orders", partitions = "0-1", format = "json" }
                                 """)
    }

    /// Order lines: HOT-USD (the symbol that moves) with cancels and replaces of its earlier
    /// orders (those that moved with it are cancelled on the other engine by the same order id),
    /// limit around 100 and some market; ETH-USD and SOL-USD with cancels.
    static func orderLog(count: Int, seed: UInt64) -> [String] {
        var rng = SplitMix(seed: seed)
        var lines: [String] = []
        var live: [(String, Int)] = []
        var hot: [Int] = []
        for id in 1...count {
            let roll = rng.next() % 100
            let side = rng.next() % 2 == 0 ? "B" : "S"
            if roll < 45 {
                if roll < 6, !hot.isEmpty {
                    lines.append("C,HOT-USD,\(hot.remove(at: Int(rng.next() % UInt64(hot.count))))")
                } else if roll < 9, !hot.isEmpty {
                    lines.append("R,HOT-USD,\(hot[Int(rng.next() % UInt64(hot.count))]),\(95 + rng.next() % 11),\(1 + rng.next() % 5)")
                } else if roll < 12 {
                    lines.append("N,HOT-USD,\(id),\(1 + id % 5),\(side),MKT,0,\(1 + rng.next() % 3),IOC")
                } else {
                    lines.append("N,HOT-USD,\(id),\(1 + id % 5),\(side),LMT,\(95 + rng.next() % 11),\(1 + rng.next() % 5),GTC")
                    hot.append(id)
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

    /// Two engines (kxa: HOT-USD on shard 0, ETH-USD on shard 1; kxb: SOL-USD on shard 0) on one
    /// orders topic, Redis routing, each listing the other's symbols away; orders produced in
    /// chunks on a thread of its own; the checks over both journals.
    final class Rig {
        let redis: RedisServer
        let broker: KafkaBroker
        let prefix = "kx\(UInt32.random(in: 0...UInt32.max)):"
        let dirs = [testDirectory(), testDirectory()]
        let data = ["a", "b"].map { NSTemporaryDirectory() + "crossbook-kx\($0)-\(UUID().uuidString.prefix(8))" }
        let instances = ["kxa", "kxb"]
        let configs: [String]
        var engines: [EngineProcess] = []
        let log: [String]
        let produced = DispatchSemaphore(value: 0)
        let failures = LogLines()

        init(orders: Int, seed: UInt64) throws {
            redis = try RedisServer()
            broker = try KafkaBroker()
            try broker.createTopic("orders", partitions: 2)
            try broker.createTopic("orders.dead-letter", partitions: 1)
            configs = [
                KafkaTransferTests.config("kxa", redis: redis, prefix: prefix, broker: broker, symbols: [("HOT-USD", 1, 0), ("ETH-USD", 2, 1)]),
                KafkaTransferTests.config("kxb", redis: redis, prefix: prefix, broker: broker, symbols: [("SOL-USD", 3, 0)]),
            ]
            log = KafkaTransferTests.orderLog(count: orders, seed: seed)
        }

        deinit {
            for e in engines where e.process.isRunning { e.signal(SIGKILL); _ = e.waitForExit(10) }
            broker.stop()
            for k in 0..<2 { removeTree(data[k]); unlink(configs[k]) }
        }

        /// Starts engine `k` (in place of a dead one), serving; `crash`: CROSSBOOK_TRANSFER_CRASH.
        func start(_ k: Int, crash: String? = nil) throws {
            var environment = KafkaKit.environment
            if let crash { environment["CROSSBOOK_TRANSFER_CRASH"] = crash }
            let e = try EngineProcess(["--config", configs[k], "--instance", instances[k], "--directory", dirs[k], "--data-dir", data[k],
                                       "--no-pin", "--clean-stale"], environment: environment)
            if k < engines.count { engines[k] = e } else { engines.append(e) }
            #expect(waitFor(20) { (try? EngineFile.attach(directory: self.dirs[k]))?.isServing ?? false }, "\(instances[k]): \(e.log.all.suffix(10))")
        }

        /// Both engines up, the other's symbols listed away on each (their messages skipped, not
        /// dead-lettered; they can move here).
        func up(crash: [String?] = [nil, nil]) throws {
            for k in 0..<2 { try start(k, crash: crash[k]) }
            for (k, name, id) in [(0, "SOL-USD", 3), (1, "HOT-USD", 1), (1, "ETH-USD", 2)] {
                let listed = try runTool(crossbookBinary().path, ["symbol", "add", name, "--away", "--id", "\(id)", "--directory", dirs[k]])
                #expect(listed.status == 0, "\(listed.out)")
            }
            #expect(waitFor(10) { routes(self.redis, prefix: self.prefix)["HOT-USD"]?.instance == "kxa" && routes(self.redis, prefix: self.prefix)["SOL-USD"]?.instance == "kxb" })
        }

        /// The order log into the topic in `chunks`, `pause` apart, on a thread of its own.
        func produce(chunks: Int, pause: useconds_t) {
            let address = broker.address, log = log, failures = failures, produced = produced
            Thread {
                for c in 0..<chunks {
                    let part = log[(c * log.count / chunks)..<((c + 1) * log.count / chunks)]
                    if let r = try? KafkaKit.run(["orders", address, "orders", "2"], stdin: part.joined(separator: "\n")), r.status != 0 {
                        failures.append(r.err)
                    }
                    usleep(pause)
                }
                produced.signal()
            }.start()
        }

        /// `crossbook migrate HOT-USD` from engine `from` to `to` (retried while the engines settle).
        func migrate(_ from: Int, _ to: Int, shard: Int, tries: Int = 20) -> Bool {
            for _ in 0..<tries {
                if let r = try? runTool(crossbookBinary().path, ["migrate", "HOT-USD", "--instance", instances[from], "--directory", dirs[from],
                                                                 "--to-instance", instances[to], "--to-directory", dirs[to], "--to-shard", "\(shard)"]),
                   r.status == 0 { return true }
                usleep(100_000)
            }
            return false
        }

        /// Once the whole log is in the topic and each of its messages journaled by one engine:
        /// the engines stop, and the checks run over their journals. `hops`: the moves that
        /// finished; `owner`: the engine and shard HOT-USD ends on.
        func check(hops: Int, owner: (engine: Int, shard: Int), rewinds: Bool) throws {
            #expect(produced.wait(timeout: .now() + 60) == .success)
            #expect(failures.all.isEmpty, "\(failures.all)")
            // Every message of the topic, as the broker holds it.
            let consumed = try KafkaKit.run(["consume", broker.address, "orders", "2", "2000", "\(log.count)"])
            let messages = ConsumedMessage.parse(consumed.out)
            #expect(messages.count == log.count, "\(messages.count) of \(log.count) messages in the topic")
            var expected: [String: Set<Int>] = [:]
            for m in messages { expected["orders#\(m.partition)", default: []].insert(m.offset) }
            var union: [String: [Int]] = [:]
            func missing() -> String {
                expected.map { key, want in
                    let have = Set(union[key] ?? [])
                    return "\(key): \(want.subtracting(have).sorted().prefix(10)) missing, \(have.subtracting(want).sorted().prefix(10)) not in the topic"
                }.joined(separator: "; ")
            }
            // Both engines done and every message journaled by one of them.
            let settled = waitFor(60) {
                union = [:]
                for k in 0..<2 {
                    guard let j = try? JournaledIngress(data: self.data[k], shards: 2) else { return false }
                    for (key, offsets) in j.offsets { union[key, default: []] += offsets }
                }
                return union.mapValues { Set($0) } == expected
            }
            #expect(settled, "\(missing()); \(engines[0].log.all.suffix(8)) \(engines[1].log.all.suffix(8))")
            usleep(500_000)
            for e in engines { e.stop() }

            // Exactly once: each offset journaled once over both engines.
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
            let all = union.mapValues { Set($0) } == expected
            #expect(all, "\(missing())")
            // Each journaled command is its message's symbol.
            var mismatched = 0
            for m in messages {
                let key = "orders#\(m.partition)@\(m.offset)"
                guard let decoded = journaled[0].commands[key] ?? journaled[1].commands[key] else { continue }
                if decoded.symbolId != (m.key == "HOT-USD" ? 1 : m.key == "ETH-USD" ? 2 : 3) { mismatched += 1 }
            }
            #expect(mismatched == 0)

            // HOT-USD through its moves: one chain over both journals, its commands in partition
            // order, each of its messages once; its trades those of a one-book replay of its
            // messages.
            let chain = try CrossChain(data: data, shards: 2, symbolId: 1, initialOwner: (0, 0))
            #expect(chain.hops == hops && chain.owner.engine == owner.engine && chain.owner.shard == owner.shard,
                    "\(chain.hops) hops, owner \(chain.owner)")
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
            let hotLines = log.filter { $0.split(separator: ",").dropFirst().first == "HOT-USD" }
            let reference = try runCrossbookCapturing(["replay", "--trades-only", "-"], stdin: hotLines.joined(separator: "\n") + "\n")
            let want = reference.split(separator: "\n").filter { $0.hasPrefix("T,") }.map { line -> String in
                let f = line.split(separator: ",")
                return "\(f[4]),\(f[5])"
            }
            #expect(trades.count > 100, "\(trades.count) trades")
            let sameTrades = trades == want
            #expect(sameTrades, "HOT-USD: \(trades.count) trades through the moves, \(want.count) in the one-book replay; first difference at \(zip(trades, want).enumerated().first { $1.0 != $1.1 }.map { "\($0.offset)" } ?? "the end")")
            let rewound = engines.map { $0.log.all.filter { $0.contains("reading again from offset") }.count }
            if rewinds { #expect(rewound.reduce(0, +) > 0, "rewinds logged: \(rewound)") }
            print("kafka transfer checker: \(messages.count) messages (HOT-USD \(hotMessages.count)), \(trades.count) HOT-USD trades through \(chain.hops) hops, rewinds logged \(rewound)")
        }
    }

    @Test("two engines share an orders topic; a symbol moves between them five times while orders arrive (one move undone by its timeout): every message applied exactly once across both engines, the symbol's in partition order through the moves, its trades those of a one-book replay of its messages")
    func partitionFollowsTheSymbol() throws {
        let rig = try Rig(orders: 4000, seed: 7)
        try rig.up()
        rig.produce(chunks: 16, pause: 150_000)
        usleep(400_000)
        #expect(rig.migrate(0, 1, shard: 1), "move 1: kxa → kxb")
        usleep(300_000)
        #expect(rig.migrate(1, 0, shard: 0), "move 2: kxb → kxa")
        usleep(300_000)
        #expect(rig.migrate(0, 1, shard: 1), "move 3: kxa → kxb")
        usleep(200_000)
        // Move 4 is begun and never taken (kxa takes no move from its router, and nobody asks it):
        // kxb claims the route back after its 2 s timeout and reads again what it left to kxa.
        let begun = try Engine.ask(directory: rig.dirs[1], "transfer-out HOT-USD kxa 0", timeout: 10)
        #expect(begun.first == "ok", "\(begun)")
        #expect(waitFor(15) { Self.owner(rig.dirs[1], "HOT-USD") == "1" && routes(rig.redis, prefix: rig.prefix)["HOT-USD"]?.status == "ACTIVE" },
                "move 4 undone: \(rig.engines[1].log.all.suffix(10))")
        usleep(200_000)
        #expect(rig.migrate(1, 0, shard: 0), "move 5: kxb → kxa")
        try rig.check(hops: 4, owner: (0, 0), rewinds: true)
        let rewound = rig.engines.map { $0.log.all.filter { $0.contains("reading again from offset") }.count }
        #expect(rewound[0] > 0 && rewound[1] > 0, "each engine read again: \(rewound)")
    }

    @Test("kill -9 of the source after its export, of the target after its import and after its claim, while orders arrive: after the restart the move settles, and every message is applied exactly once across both engines, the symbol's in partition order, its trades those of a one-book replay", arguments: ["after-export", "after-import", "after-claim"])
    func killDuringMove(point: String) throws {
        let rig = try Rig(orders: 3000, seed: point == "after-export" ? 11 : point == "after-import" ? 12 : 13)
        let sourceDies = point == "after-export"
        try rig.up(crash: sourceDies ? [point, nil] : [nil, point])
        rig.produce(chunks: 12, pause: 200_000)
        usleep(500_000)
        #expect(!rig.migrate(0, 1, shard: 1, tries: 1), "the move cannot finish: an engine dies")
        let dead = sourceDies ? 0 : 1
        #expect(rig.engines[dead].waitForExit(10) != nil, "engine \(rig.instances[dead]) killed at \(point)")
        try rig.start(dead)
        // Settled by the route within the engines' control loops (the source's timeout is 2 s):
        // the target has the book in every case here (the source exported it to the store
        // before it died), and takes it (after-export: the target's CLI never asked; the source
        // takes it back after its timeout) — either way one engine owns it.
        var owners: (String?, String?) = (nil, nil)
        #expect(waitFor(20) {
            owners = (Self.owner(rig.dirs[0], "HOT-USD"), Self.owner(rig.dirs[1], "HOT-USD"))
            return (owners.0 == "-") != (owners.1 == "-") && owners.0 != nil && owners.1 != nil
                && routes(rig.redis, prefix: rig.prefix)["HOT-USD"]?.status == "ACTIVE"
        }, "\(point): owners \(String(describing: owners))")
        let onA = owners.0 != "-"
        try rig.check(hops: onA ? 0 : 1, owner: onA ? (0, 0) : (1, 1), rewinds: false)
    }
}
