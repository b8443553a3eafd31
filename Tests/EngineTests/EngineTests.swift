// The engine with real clients: reports to the right owner, rejects for bad input, and the
// failures an operator will cause (kill -9 on either side, a second engine, leftovers).
import CrossbookClient
@testable import Engine
import Foundation
import Glibc
import OrderBook
import SharedMemory
import Testing
import TestSupport
import Wire


func startEngine(_ dir: String, instance: String = "t", shards: Int = 1, log: LogLines = LogLines(),
                 eventRingCapacity: Int = 1 << 16) throws -> Engine {
    let symbols = ["AAA", "BBB", "CCC"].enumerated().map { (spec: SymbolSpec(name: $1, id: UInt32($0 + 1)), shard: $0 % shards) }
    var settings = EngineSettings(
        instance: instance, directory: dir, shards: Array(repeating: ShardSettings(core: nil), count: shards),
        symbols: symbols, capacity: BookCapacity(orders: 4096, levels: 256),
        wait: WaitStrategy(spins: 1000, yields: 10, park: true, parkTimeoutNanoseconds: 50_000_000),
        lagTimeoutNanoseconds: 200_000_000)
    settings.eventRingCapacity = eventRingCapacity
    let engine = Engine(settings: settings, log: { log.append($0) })
    _ = try engine.start()
    return engine
}

func events(_ consumer: EventConsumer, _ count: Int, timeout: Double = 5) throws -> [MarketEventRecord.Event] {
    var out: [MarketEventRecord.Event] = []
    let deadline = Date().addingTimeInterval(timeout)
    while out.count < count && Date() < deadline {
        let n = try consumer.wait(timeoutNanoseconds: 20_000_000)
        for k in 0..<n { if let e = MarketEventRecord.decode(consumer.slot(k)) { out.append(e) } }
        consumer.release(n)
    }
    return out
}

/// Collects reports until `count` arrived or `timeout` passed.
func collect(_ client: CrossbookClient, _ count: Int, timeout: Double = 5) throws -> [ReportRecord.Report] {
    var out: [ReportRecord.Report] = []
    let deadline = Date().addingTimeInterval(timeout)
    while out.count < count && Date() < deadline {
        try client.waitForReports(timeout: 0.05) { out.append($0) }
    }
    return out
}

/// One shard, one symbol, a small book, a short park: what most engine tests start.
func oneShardSettings(_ instance: String, _ dir: String, symbol: String = "BTC-USD", orders: Int = 1 << 12, levels: Int = 1 << 8,
                      lagTimeoutNanoseconds: UInt64 = 1_000_000_000) -> EngineSettings {
    EngineSettings(instance: instance, directory: dir, shards: [ShardSettings(core: nil)],
                   symbols: [(spec: SymbolSpec(name: symbol, id: 1), shard: 0)],
                   capacity: BookCapacity(orders: orders, levels: levels),
                   wait: WaitStrategy(spins: 100, yields: 10, park: true, parkTimeoutNanoseconds: 10_000_000),
                   lagTimeoutNanoseconds: lagTimeoutNanoseconds)
}

func crossbookBinary() -> URL {
    URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath().deletingLastPathComponent()
        .appendingPathComponent("crossbook")
}


@Suite("Engine", .serialized)
struct EngineTests {
    @Test("a client's orders match and each owner gets its own reports")
    func twoClients() throws {
        let dir = testDirectory()
        let engine = try startEngine(dir, shards: 2)
        defer { engine.stop() }
        let maker = try CrossbookClient(instance: "t", directory: dir)
        let taker = try CrossbookClient(instance: "t", directory: dir)
        let aaa = try maker.symbol("AAA")
        #expect(maker.submit(.new(NewOrder(orderId: 1, account: 1, side: .sell, price: 100, quantity: 5)), symbol: aaa, clientTime: 77))
        let ack = try collect(maker, 1)
        #expect(ack.first?.kind == .accepted && ack.first?.orderId == 1 && ack.first?.clientTime == 77)
        #expect(abs(Double(ack.first?.engineTime ?? 0) / 1e9 - Date().timeIntervalSince1970) < 60)
        // Same client order id from another session: a different order.
        #expect(taker.submit(.new(NewOrder(orderId: 1, account: 2, side: .buy, price: 100, quantity: 3)), symbol: aaa))
        let takerReports = try collect(taker, 2)
        #expect(takerReports.map(\.kind) == [.accepted, .trade])
        #expect(takerReports.last.map { ($0.orderId, $0.quantity, $0.open, $0.code) } ?? (0, 0, 0, 9) == (1, 3, 0, 0))
        let makerReports = try collect(maker, 1)
        #expect(makerReports.first.map { ($0.kind, $0.orderId, $0.quantity, $0.open, $0.code) } ?? (.rejected, 0, 0, 0, 9)
                == (.trade, 1, 3, 2, 1))
        // A client cannot cancel another's order: its id names its own (unknown) order.
        #expect(taker.submit(.cancel(CancelOrder(orderId: 1)), symbol: aaa))
        #expect(try collect(taker, 1).first?.rejectReason == .unknownOrderId)
        #expect(maker.submit(.cancel(CancelOrder(orderId: 1)), symbol: aaa, clientTime: 5))
        let cancelled = try collect(maker, 1).first
        #expect(cancelled?.kind == .cancelled && cancelled?.quantity == 2 && cancelled?.clientTime == 5)
        // The other shard works too.
        let bbb = try maker.symbol("BBB")
        #expect(bbb.shard == 1)
        #expect(maker.submit(.new(NewOrder(orderId: 9, side: .buy, price: 10, quantity: 1)), symbol: bbb))
        #expect(try collect(maker, 1).first?.kind == .accepted)
        // The counters, as `crossbook stat` reads them from outside.
        let file = try EngineFile.attach(directory: dir)
        let c0 = file.counters(0)
        #expect(c0.read(.commands) == 4 && c0.read(.trades) == 1 && c0.read(.rejects) == 1)
        #expect(c0.rejects(RejectReason.unknownOrderId.rawValue) == 1)
        #expect((0..<InstanceLayout.batchBuckets).map { c0.batches(bucket: $0) }.reduce(0, +) == c0.read(.batches))
        #expect(file.counters(1).read(.commands) == 1)
    }

    @Test("a client announced twice (its hello seen by the directory scan, then by a late inotify event; or a hello written again while attached) is attached once: each order is applied once and answered once")
    func announcedTwice() throws {
        let dir = testDirectory()
        let log = LogLines()
        let engine = try startEngine(dir, log: log)
        defer { engine.stop() }
        let client = try CrossbookClient(instance: "t", directory: dir)
        let aaa = try client.symbol("AAA")
        // The late event: the hello is gone (the first accept removed it).
        engine.announceAgain(client.name)
        // A hello written again by someone while the client is attached.
        #expect(FileManager.default.createFile(atPath: InstanceLayout.helloPath(dir, client.name), contents: Data()))
        #expect(waitFor(5) { log.contains("client \(client.name): announced again while attached; ignored") }, "\(log.all.suffix(5))")
        engine.announceAgain(client.name)
        usleep(300_000)  // the control loop runs every 100 ms at most
        #expect(log.all.filter { $0.contains("client \(client.name) (pid") && $0.contains("attached") }.count == 1, "\(log.all)")
        // One order: accepted once; a sell against it trades once, for its quantity.
        #expect(client.submit(.new(NewOrder(orderId: 1, side: .buy, price: 100, quantity: 5)), symbol: aaa))
        #expect(client.submit(.new(NewOrder(orderId: 2, side: .sell, price: 100, quantity: 9)), symbol: aaa))
        let reports = try collect(client, 10, timeout: 1)
        #expect(reports.filter { $0.kind == .accepted }.map(\.orderId) == [1, 2], "\(reports)")
        #expect(reports.filter { $0.kind == .trade }.map { ($0.orderId, $0.quantity) }.elementsEqual([(1, 5), (2, 5)]) { $0 == $1 }, "\(reports)")
        #expect(reports.count == 4, "\(reports)")
    }

    @Test("unknown symbols, out-of-range ids and random bytes are rejected; the engine goes on")
    func badInput() throws {
        let dir = testDirectory()
        let engine = try startEngine(dir)
        defer { engine.stop() }
        let client = try CrossbookClient(instance: "t", directory: dir)
        let aaa = try client.symbol("AAA")
        var bogus = aaa
        bogus.spec.id = 999
        #expect(client.submit(.new(NewOrder(orderId: 1, side: .buy, price: 10, quantity: 1)), symbol: bogus))
        #expect(client.submit(.new(NewOrder(orderId: 1 << 50, side: .buy, price: 10, quantity: 1)), symbol: aaa))
        #expect(client.submit(.new(NewOrder(orderId: -3, side: .buy, price: 10, quantity: 1)), symbol: aaa))
        let reasons = try collect(client, 3).map(\.rejectReason)
        #expect(reasons == [.unknownSymbol, .orderIdOutOfRange, .orderIdOutOfRange])
        let control = try EngineFile.attach(directory: dir)
        let counters = control.counters(0)
        #expect(counters.rejects(RejectReason.orderIdOutOfRange.rawValue) == 2)
        #expect(counters.rejects(RejectReason.unknownSymbol.rawValue) == 1)

        // Random bytes straight into the client's command ring. From here on this test is the
        // ring's only producer (the client's own view would be behind and look corrupt).
        let ring = try Ring.attach(path: InstanceLayout.commandRingPath(dir, client.name, shard: 0))
        var producer = ring.producer()
        var rng: UInt64 = 12345
        let garbage = 500
        var written = 0
        while written < garbage {
            let n = producer.claim(garbage - written)
            for k in 0..<n {
                for w in 0..<8 {
                    rng = rng &* 6364136223846793005 &+ 1442695040888963407
                    producer.slot(k).storeBytes(of: rng, toByteOffset: w * 8, as: UInt64.self)
                }
            }
            producer.publish(n)
            written += n
            _ = try client.poll { _ in }
        }
        let deadline = Date().addingTimeInterval(5)
        var malformed = 0
        while malformed < garbage && Date() < deadline {
            try client.waitForReports(timeout: 0.05) { if $0.rejectReason == .malformedCommand { malformed += 1 } }
        }
        #expect(malformed == garbage)
        // Still serving, through the same producer.
        #expect(producer.claim(1) == 1)
        CommandRecord.encode(CommandRecord.Decoded(symbolId: aaa.spec.id, command: .new(NewOrder(
            orderId: 2, side: .buy, price: 10, quantity: 1))), to: producer.slot(0))
        producer.publish(1)
        #expect(try collect(client, 1).first?.kind == .accepted)
    }

    @Test("a second engine with the same instance refuses to start")
    func secondEngine() throws {
        let dir = testDirectory()
        let engine = try startEngine(dir)
        defer { engine.stop() }
        #expect {
            _ = try startEngine(dir)
        } throws: { "\($0)".contains("already running") }
    }

    @Test("files are 0600 and removed at stop")
    func filesAndCleanup() throws {
        let dir = testDirectory()
        let engine = try startEngine(dir)
        let client = try CrossbookClient(instance: "t", directory: dir)
        var info = stat()
        for path in [InstanceLayout.doorbellsPath(dir), InstanceLayout.symbolsPath(dir),
                     InstanceLayout.commandRingPath(dir, client.name, shard: 0)] {
            #expect(stat(path, &info) == 0)
            #expect(info.st_mode & 0o777 == 0o600, "\(path)")
        }
        // The control file: nobody writes it but the engine, through the descriptor it made it with.
        #expect(stat(InstanceLayout.enginePath(dir), &info) == 0 && info.st_mode & 0o777 == 0o400)
        #expect(stat(dir, &info) == 0 && info.st_mode & 0o777 == 0o700)
        engine.stop()
        #expect(access(dir, F_OK) != 0, "the instance directory is gone")
    }

    @Test("a producer killed mid-stream: the engine reports it and serves the next client")
    func producerKilled() throws {
        let dir = testDirectory()
        let log = LogLines()
        let engine = try startEngine(dir, log: log)
        defer { engine.stop() }
        let load = Process()
        load.executableURL = crossbookBinary()
        load.arguments = ["load", "--instance", "t", "--directory", dir, "--rate", "0", "--duration", "30", "--quiet",
                          "--ring-capacity", "1024"]
        load.standardOutput = FileHandle.nullDevice
        try load.run()
        #expect(waitFor(10) { log.contains("attached") })
        usleep(300_000)  // mid-stream
        kill(load.processIdentifier, SIGKILL)
        load.waitUntilExit()
        #expect(waitFor(5) { log.contains("is gone") }, "\(log.all)")
        let client = try CrossbookClient(instance: "t", directory: dir)
        let aaa = try client.symbol("AAA")
        #expect(client.submit(.new(NewOrder(orderId: 1, side: .buy, price: 1, quantity: 1)), symbol: aaa))
        #expect(try collect(client, 1).first?.kind == .accepted)
    }

    @Test("crossbook load --first-symbol i drives the engine's (i+1)-th symbol only (bench/scale.sh: one load process per shard); past the last symbol it says so")
    func loadFirstSymbol() throws {
        let dir = testDirectory()
        let engine = try startEngine(dir, shards: 3)
        defer { engine.stop() }
        func load(_ first: Int) throws -> (Int32, String) {
            let p = Process(), out = Pipe()
            p.executableURL = crossbookBinary()
            p.arguments = ["load", "--instance", "t", "--directory", dir, "--rate", "0", "--orders", "2000", "--quiet",
                           "--first-symbol", String(first)]
            p.standardOutput = out
            p.standardError = out
            try p.run()
            let text = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            p.waitUntilExit()
            return (p.terminationStatus, text)
        }
        let (rc, text) = try load(1)
        #expect(rc == 0 && text.contains("2000 acknowledged"), "\(text)")
        let file = try EngineFile.attach(directory: dir)
        let commands = (0..<file.symbolCount).map { (file.symbol($0).name, file.symbolCounters($0).read(SymbolCounters.commands)) }
        #expect(commands.first { $0.0 == "BBB" }?.1 == 2000, "\(commands)")
        #expect(commands.filter { $0.0 != "BBB" }.allSatisfy { $0.1 == 0 }, "\(commands)")
        let (rc2, text2) = try load(3)
        #expect(rc2 != 0 && text2.contains("none after skipping 3"), "\(text2)")
    }

    @Test("the engine killed: the client gets a clear error, not a hang; the leftovers are found and cleaned")
    func engineKilled() throws {
        let dir = testDirectory()
        let engine = Process()
        engine.executableURL = crossbookBinary()
        engine.arguments = ["run", "--instance", "k", "--directory", dir, "--no-pin", "--durability", "none"]
        engine.standardError = FileHandle.nullDevice
        try engine.run()
        #expect(waitFor(10) { (try? EngineFile.attach(directory: dir))?.state == .running })
        let client = try CrossbookClient(instance: "k", directory: dir)
        kill(engine.processIdentifier, SIGKILL)
        engine.waitUntilExit()
        let started = Date()
        #expect(throws: ClientError.self) {
            while Date().timeIntervalSince(started) < 10 { try client.waitForReports(timeout: 0.1) { _ in } }
        }
        #expect(Date().timeIntervalSince(started) < 5)
        #expect(throws: ClientError.self) { _ = try CrossbookClient(instance: "k", directory: dir) }
        // A new engine finds the leftovers. Its data directory locked by another process (the
        // dead engine's creator may have a child holding the journal): it refuses, unless told
        // to clean them. Provably dead (the lock free): it removes them by itself, and says so.
        let data = NSTemporaryDirectory() + "crossbook-killed-\(UUID().uuidString.prefix(8))"
        defer { removeTree(data) }
        mkdir(data, 0o700)
        let holder = open(data + "/LOCK", O_RDWR | O_CREAT, 0o600)
        #expect(flock(holder, LOCK_EX | LOCK_NB) == 0)
        let symbols = [(spec: SymbolSpec(name: "AAA", id: 1), shard: 0)]
        var settings = EngineSettings(instance: "k", directory: dir, symbols: symbols)
        settings.durability = .sync
        settings.dataDirectory = data
        #expect {
            _ = try Engine(settings: settings, log: { _ in }).start()
        } throws: { "\($0)".contains("--clean-stale") && "\($0)".contains("locked by another process") }
        close(holder)
        let lines = LogLines()
        let again = Engine(settings: settings, log: { lines.append($0) })
        _ = try again.start()
        #expect(lines.contains("removing leftovers of engine pid \(engine.processIdentifier) in \(dir) (it is gone and its data directory is free)"), "\(lines.all)")
        again.stop()
    }

    @Test("a symbol name longer than the control file holds (23 bytes) is refused at start, not cut")
    func longSymbolName() throws {
        let long = String(repeating: "X", count: 24)
        #expect(SymbolSpec.isValidName(long))
        #expect {
            _ = try Engine(settings: EngineSettings(instance: "n", directory: testDirectory(), symbols: [(spec: SymbolSpec(name: long, id: 1), shard: 0)]),
                           log: { _ in }).start()
        } throws: { "\($0)".contains("a name of 24 bytes") }
    }

    @Test("leftovers whose dead creator's pid the kernel gave to this process are leftovers, not a running engine; a regeneration's leftovers are swept")
    func recycledPid() throws {
        // pid_max is 32768 on small hosts: an engine killed -9 leaves a control file naming a
        // pid that a later process, this one here, can get.
        let dir = testDirectory()
        #expect(mkdir(dir, 0o700) == 0)
        do { _ = try EngineFile.create(directory: dir, shards: 1, mode: 0o400) }  // "our" pid, never removed
        let symbols = [(spec: SymbolSpec(name: "AAA", id: 1), shard: 0)]
        let lines = LogLines()
        let engine = Engine(settings: EngineSettings(instance: "r", directory: dir, symbols: symbols),
                            log: { lines.append($0) })
        _ = try engine.start()
        #expect(lines.contains("removing leftovers of engine pid \(getpid())"), "\(lines.all)")
        // While it runs, a second engine on the same directory in this process is refused.
        #expect {
            _ = try Engine(settings: EngineSettings(instance: "r", directory: dir, symbols: symbols, cleanStale: true),
                           log: { _ in }).start()
        } throws: { "\($0)".contains("already running") }
        engine.stop()

        // Side directories of regenerations: a dead engine's, and one named for this process
        // (a recycled pid) go; a live engine's stays.
        let dead = Process()
        dead.executableURL = URL(fileURLWithPath: "/bin/true")
        try dead.run()
        dead.waitUntilExit()
        let deadDir = "/dev/shm/crossbook-regen-\(dead.processIdentifier)-1"
        let ownDir = "/dev/shm/crossbook-regen-\(getpid())-999999"
        let liveDir = "/dev/shm/crossbook-regen-1-424242"
        for path in [deadDir, ownDir, liveDir] {
            #expect(mkdir(path, 0o700) == 0)
            #expect(FileManager.default.createFile(atPath: path + "/events.0", contents: Data([1, 2, 3])))
        }
        defer { for path in [deadDir, ownDir, liveDir] { try? FileManager.default.removeItem(atPath: path) } }
        InstanceDirectory.removeDeadRegenerations(own: ownDir)
        #expect(!FileManager.default.fileExists(atPath: deadDir))
        #expect(!FileManager.default.fileExists(atPath: ownDir))
        #expect(FileManager.default.fileExists(atPath: liveDir + "/events.0"))
    }
}

@Suite("Event ring", .serialized)
struct EventRingTests {
    @Test("a subscriber sees the L2 changes and trades of the shard, in order")
    func marketData() throws {
        let dir = testDirectory()
        let engine = try startEngine(dir)
        defer { engine.stop() }
        let ring = try EventRing.attach(path: InstanceLayout.eventRingPath(dir, shard: 0))
        let consumer = try ring.consumer(mayDetach: false)
        let client = try CrossbookClient(instance: "t", directory: dir)
        let aaa = try client.symbol("AAA")
        client.submit(.new(NewOrder(orderId: 1, side: .sell, price: 100, quantity: 5)), symbol: aaa)
        client.submit(.new(NewOrder(orderId: 2, side: .buy, price: 100, quantity: 2)), symbol: aaa)
        let seen = try events(consumer, 3)
        #expect(seen.map { [$0.kind.rawValue, UInt8($0.quantity)] } == [[2, 5], [1, 2], [2, 3]])
        #expect(seen[1].side == .buy && seen[1].price == 100)
        #expect(seen[2].orders == 1)
        #expect(seen.map(\.engineSequence) == [1, 2, 2])
        // Stamped at sequencing with the wall clock.
        let now = UInt64(Date().timeIntervalSince1970 * 1e9)
        #expect(seen.allSatisfy { $0.engineTime > now - 60_000_000_000 && $0.engineTime <= now + 1_000_000_000 })
    }

    @Test("a consumer that may be detached is detached when it lags; the engine goes on")
    func lagging() throws {
        let dir = testDirectory()
        let log = LogLines()
        let engine = try startEngine(dir, log: log, eventRingCapacity: 64)
        defer { engine.stop() }
        let ring = try EventRing.attach(path: InstanceLayout.eventRingPath(dir, shard: 0))
        let sleeper = try ring.consumer(mayDetach: true)
        let client = try CrossbookClient(instance: "t", directory: dir)
        let aaa = try client.symbol("AAA")
        for id in 1...200 {
            while !client.submit(.new(NewOrder(orderId: OrderId(id), side: .buy, price: Price(id), quantity: 1)), symbol: aaa) {
                _ = try client.poll { _ in }
            }
        }
        var acks = 0
        let deadline = Date().addingTimeInterval(10)
        while acks < 200 && Date() < deadline { try client.waitForReports(timeout: 0.05) { if $0.kind == .accepted { acks += 1 } } }
        #expect(acks == 200)
        #expect(throws: EventConsumerError.detached) { _ = try sleeper.poll() }
        #expect(waitFor(5) { log.contains("event-ring consumer(s) lagged") })
    }

    @Test("a consumer that asks for back-pressure holds the shard back and loses nothing")
    func backPressure() throws {
        let dir = testDirectory()
        let engine = try startEngine(dir, eventRingCapacity: 64)
        defer { engine.stop() }
        let ring = try EventRing.attach(path: InstanceLayout.eventRingPath(dir, shard: 0))
        let slow = try ring.consumer(mayDetach: false)
        let client = try CrossbookClient(instance: "t", directory: dir)
        let aaa = try client.symbol("AAA")
        for id in 1...200 {
            while !client.submit(.new(NewOrder(orderId: OrderId(id), side: .buy, price: Price(id), quantity: 1)), symbol: aaa) {
                _ = try client.poll { _ in }
            }
        }
        // The shard stops at a full ring: well under 200 acknowledgements while nobody reads.
        usleep(500_000)
        var acks = 0
        _ = try client.poll { if $0.kind == .accepted { acks += 1 } }
        #expect(acks < 200)
        // Reading releases it; every level event arrives, in sequence order, none lost.
        let seen = try events(slow, 200, timeout: 10)
        #expect(seen.count == 200)
        #expect(seen.map(\.price) == (1...200).map { Price($0) })
        let deadline = Date().addingTimeInterval(10)
        while acks < 200 && Date() < deadline { try client.waitForReports(timeout: 0.05) { if $0.kind == .accepted { acks += 1 } } }
        #expect(acks == 200)
    }
}

@Suite("Engine: names")
struct EngineNameTests {
    @Test("a symbol name with a space or a newline is refused at start, and nothing is created", arguments: ["BTC USD", "BTC\nUSD", "", String(repeating: "X", count: 33)])
    func badSymbolName(name: String) throws {
        let dir = testDirectory()
        let settings = oneShardSettings("names", dir, symbol: name, orders: 1 << 10, levels: 1 << 8)
        let engine = Engine(settings: settings, log: { _ in })
        #expect { _ = try engine.start() } throws: { "\($0)".contains("symbol") }
        #expect(access(dir, F_OK) != 0)
    }
}

@Suite("Engine: detached clients")
struct DetachedClientTests {
    @Test("a client detached for lagging is told: poll throws the reason, submit takes nothing more")
    func lagDetachIsTold() throws {
        let dir = testDirectory()
        let settings = oneShardSettings("lagtold", dir, orders: 1 << 12, levels: 1 << 8, lagTimeoutNanoseconds: 100_000_000)
        let engine = Engine(settings: settings, log: { _ in })
        _ = try engine.start()
        defer { engine.stop() }
        let client = try CrossbookClient(instance: "lagtold", directory: dir, ringCapacity: 64)
        defer { client.close() }
        let btc = try client.symbol("BTC-USD")
        // 200 resting orders, one acknowledgement each, and nobody reading them: the report ring
        // (64 slots) fills, and after 100 ms the shard detaches the session.
        let control = try EngineFile.attach(directory: dir)
        var sent = 0
        let deadline = Date().addingTimeInterval(5)
        while sent < 200 && Date() < deadline && control.counters(0).read(.lagDetaches) == 0 {
            if client.submit(.new(NewOrder(orderId: OrderId(sent + 1), side: .buy, price: 100, quantity: 1)), symbol: btc) { sent += 1 }
        }
        #expect(waitFor(5) { control.counters(0).read(.lagDetaches) == 1 })
        var told: ClientError?
        var reports = 0
        for _ in 0..<100 where told == nil {
            do { reports += try client.poll { _ in } } catch { told = error }
        }
        #expect(told == .detached(shard: 0, .lagging), "\(String(describing: told))")
        #expect(reports == 64, "the reports written before the detach are handed over first")
        #expect(!client.submit(.new(NewOrder(orderId: 1000, side: .buy, price: 100, quantity: 1)), symbol: btc))
    }
}

/// Whether a page is mapped writable in this process (/proc/self/maps).
enum EngineFileProbe {
    static func writable(_ address: UnsafeMutableRawPointer) -> Bool {
        // Line by line: /proc files have no size for a whole-file read to go by.
        guard let maps = fopen("/proc/self/maps", "r") else { return true }
        defer { fclose(maps) }
        let a = UInt(bitPattern: address)
        var line = [CChar](repeating: 0, count: 4096)
        while fgets(&line, Int32(line.count), maps) != nil {
            let f = String(cString: line).split(separator: " ")
            let range = f[0].split(separator: "-")
            guard f.count > 1, range.count == 2, let lo = UInt(range[0], radix: 16), let hi = UInt(range[1], radix: 16) else { continue }
            if a >= lo && a < hi { return f[1].hasPrefix("rw") }
        }
        return true
    }
}

@Suite("Engine: the control file is output only")
struct ControlFileTests {
    @Test("counters another process writes into the control file do not reach the engine's own bookkeeping")
    func hostileCounters() throws {
        let dir = testDirectory()
        let settings = oneShardSettings("ctlfile", dir, orders: 1 << 12, levels: 1 << 8)
        let log = LogLines()
        let engine = Engine(settings: settings, log: { log.append($0) })
        _ = try engine.start()
        // A client maps the control file read-only.
        let control = try EngineFile.attach(directory: dir)
        #expect(!EngineFileProbe.writable(control.file.base))
        // Only a process that may open the file for writing can write it: root, or the engine's
        // user after a chmod. Such a process writes the counters the control thread logs from.
        let path = InstanceLayout.enginePath(dir)
        let canWrite = open(path, O_RDWR | O_CLOEXEC)
        if canWrite >= 0 { close(canWrite) }
        guard geteuid() == 0 || canWrite >= 0 else {
            #expect(canWrite < 0 && errno == EACCES, "0400: not even the engine's user opens it for writing")
            engine.stop()
            return
        }
        let writable = try MappedFile.open(path: path, minimumSize: InstanceLayout.headerSize)
        let counters = (writable.base + InstanceLayout.headerSize + InstanceLayout.countersOffset)
            .assumingMemoryBound(to: UInt64.self)
        counters[ShardCounter.lagDetaches.rawValue] = UInt64.max
        counters[ShardCounter.eventDetaches.rawValue] = 12345
        counters[ShardCounter.ringFaults.rawValue] = 1
        usleep(1_500_000)  // the control thread looks once a second
        counters[ShardCounter.lagDetaches.rawValue] = 0  // lower than before: a subtraction would trap
        usleep(1_500_000)
        #expect(!log.contains("lagged past"), "\(log.all)")
        #expect(!log.contains("impossible cursor"), "\(log.all)")
        // And the engine still serves and stops cleanly.
        let client = try CrossbookClient(instance: "ctlfile", directory: dir)
        let btc = try client.symbol("BTC-USD")
        #expect(client.submit(.new(NewOrder(orderId: 1, side: .buy, price: 100, quantity: 1)), symbol: btc))
        var acked = false
        _ = try client.waitForReports(timeout: 2) { if $0.kind == .accepted { acked = true } }
        #expect(acked)
        client.close()
        engine.stop()
    }
}

@Suite("Engine: the doorbells file, the one file every client writes")
struct DoorbellFileTests {
    @Test("a client that shrinks the doorbells file under the engine: no SIGBUS, the attached client is still served, the engine stops cleanly")
    func shrunkDoorbells() throws {
        let dir = testDirectory()
        let settings = oneShardSettings("bells", dir, orders: 1 << 12, levels: 1 << 8)
        let engine = Engine(settings: settings, log: { _ in })
        _ = try engine.start()
        let client = try CrossbookClient(instance: "bells", directory: dir)
        let btc = try client.symbol("BTC-USD")
        #expect(truncate(InstanceLayout.doorbellsPath(dir), 0) == 0)
        usleep(300_000)  // the shard parks (and touches its doorbell) while idle
        for i in 1...3 {
            #expect(client.submit(.new(NewOrder(orderId: OrderId(i), side: .buy, price: 100, quantity: 1)), symbol: btc))
            var acked = false
            _ = try client.waitForReports(timeout: 2) { if $0.kind == .accepted { acked = true } }
            #expect(acked, "order \(i) acknowledged after the shrink")
        }
        // A new client is told what is wrong, not crashed.
        #expect { _ = try CrossbookClient(instance: "bells", directory: dir, timeout: 1) } throws: {
            "\($0)".contains("doorbells")
        }
        client.close()
        engine.stop()
    }
}

@Suite("Engine: many sessions", .serialized)
struct ManySessionsTests {
    @Test("session ids run out within one run: ids with no attached session and no resting order are handed out again; an id whose orders rest is not; truly full is refused clearly")
    func sessionIdsReused() throws {
        let dir = testDirectory()
        var settings = oneShardSettings("ids", dir, orders: 1 << 12, levels: 1 << 8)
        settings.sessionIdLimit = 5
        let log = LogLines()
        let engine = Engine(settings: settings, log: { log.append($0) })
        _ = try engine.start()
        defer { engine.stop() }
        func accepted(_ client: CrossbookClient, _ order: NewOrder) throws -> Bool {
            let btc = try client.symbol("BTC-USD")
            guard client.submit(.new(order), symbol: btc) else { return false }
            var acked = false
            _ = try client.waitForReports(timeout: 2) { if $0.kind == .accepted { acked = true } }
            return acked
        }
        // Session 1 leaves a resting bid and goes; 2...5 come and go with nothing resting.
        let resting = try CrossbookClient(instance: "ids", directory: dir)
        #expect(resting.sessionId == 1)
        #expect(try accepted(resting, NewOrder(orderId: 7, side: .buy, price: 100, quantity: 1)))
        resting.close()
        for expected in UInt32(2)...5 {
            let c = try CrossbookClient(instance: "ids", directory: dir)
            #expect(c.sessionId == expected)
            c.close()
        }
        usleep(1_500_000)  // the engine notices closed clients within a second
        // Ids 2...5 come back, lowest first; 1 does not while its order rests.
        var held: [CrossbookClient] = []
        for expected in UInt32(2)...5 {
            let c = try CrossbookClient(instance: "ids", directory: dir)
            #expect(c.sessionId == expected, "reclaimed id")
            held.append(c)
        }
        #expect(log.contains("4 reclaimed"), "\(log.all)")
        // Every id is attached or owns a resting order: refused, with the reason in the log.
        #expect { _ = try CrossbookClient(instance: "ids", directory: dir, timeout: 2) } throws: { "\($0)".contains("refused") }
        #expect(log.contains("no session id free"), "\(log.all)")
        // Session 2 takes session 1's resting bid; 1 then owns nothing and comes back.
        #expect(try accepted(held[0], NewOrder(orderId: 1, side: .sell, price: 100, quantity: 1)))
        held[1].close()
        usleep(1_500_000)
        let next = try CrossbookClient(instance: "ids", directory: dir)
        #expect(next.sessionId == 1, "the id whose order is gone")
        // The new owner of id 1 is served, and its order ids do not collide with the old ones.
        #expect(try accepted(next, NewOrder(orderId: 7, side: .buy, price: 90, quantity: 1)))
        next.close()
        for c in held { c.close() }
    }

    @Test("sessions come and go past 1,024 in one engine's life: each new client is served (slots of closed ones are reused)")
    func pastTheSlotCount() throws {
        let dir = testDirectory()
        let settings = oneShardSettings("many", dir, orders: 1 << 12, levels: 1 << 8)
        let engine = Engine(settings: settings, log: { _ in })
        _ = try engine.start()
        defer { engine.stop() }
        let control = try EngineFile.attach(directory: dir)
        var served = 0
        var round = 0
        // Rounds of 300 clients at once, closed together: 1,500 sessions in all.
        while round < 5 {
            var clients: [CrossbookClient] = []
            for _ in 0..<300 { clients.append(try CrossbookClient(instance: "many", directory: dir, ringCapacity: 64)) }
            for (i, client) in clients.enumerated() {
                let btc = try client.symbol("BTC-USD")
                #expect(client.submit(.new(NewOrder(orderId: OrderId(i + 1), side: .buy, price: 100, quantity: 1)), symbol: btc))
                var acked = false
                _ = try client.waitForReports(timeout: 5) { if $0.kind == .accepted { acked = true } }
                if acked { served += 1 }
            }
            for client in clients { client.close() }
            // The engine notices the closes within a second.
            #expect(waitFor(5) { control.counters(0).read(.sessions) >= UInt64(300 * (round + 1)) })
            usleep(1_200_000)
            round += 1
        }
        #expect(served == 1500, "\(served) of 1500 clients got an acknowledgement")
    }
}
