// Exactly-once ingress in the engine (no broker here; the Kafka plugin's tests are in
// KafkaTests): a session bound to a source partition journals its binding, each command's
// offset travels in the journaled record, a command at an offset applied already is dropped
// unsequenced (a plugin's source; a client's stream gets a reject: StreamTests), and positions,
// floors and bindings survive restarts and snapshots.
import CrossbookClient
@testable import Engine
import Foundation
import Glibc
import Journal
import OrderBook
import SharedMemory
import Testing
import TestSupport
import Wire

/// Submits a new buy order from `session` at `offset` and returns its first report.
func submitAt(_ session: LocalSession, offset: UInt64, orderId: OrderId, price: Int64 = 100, symbolId: UInt32 = 1,
              timeout: Double = 5) throws -> ReportRecord.Report? {
    var record = [UInt8](repeating: 0, count: 64)
    let order = NewOrder(orderId: orderId, side: .buy, price: price, quantity: 1)
    record.withUnsafeMutableBytes {
        CommandRecord.encode(.init(symbolId: symbolId, command: .new(order), clientSequence: offset), to: $0.baseAddress!)
    }
    let deadline = Date().addingTimeInterval(timeout)
    while !record.withUnsafeBytes({ session.submit($0.baseAddress!, shard: 0) }) {
        guard Date() < deadline else { return nil }
        usleep(100)
    }
    var out = [UInt8](repeating: 0, count: 64)
    while Date() < deadline {
        let n = try out.withUnsafeMutableBytes { try session.poll(into: $0.baseAddress!, capacity: 1) }
        if n == 1 { return out.withUnsafeBytes { try? ReportRecord.decode($0.baseAddress!) } }
        usleep(100)
    }
    return nil
}

/// A replay of a plugin's source: no report comes (dropped unsequenced), and the shard counts it.
func expectReplayDropped(_ engine: Engine, shard: Int = 0, _ submit: () throws -> ReportRecord.Report?,
                         sourceLocation: SourceLocation = #_sourceLocation) rethrows {
    let before = engine.engineFile?.ingress(shard).read(IngressCounters.replays) ?? 0
    let report = try submit()
    #expect(report == nil, "a replay was answered: \(String(describing: report))", sourceLocation: sourceLocation)
    #expect((engine.engineFile?.ingress(shard).read(IngressCounters.replays) ?? 0) == before + 1, sourceLocation: sourceLocation)
}

@Suite("Exactly-once ingress positions", .serialized)
struct IngressPositionTests {
    @Test("a bound session's offsets become the shard's position; an offset applied already is dropped unsequenced (counted), live and after a restart; the binding is journaled and undone")
    func positionsAndDuplicates() throws {
        let dir = testDirectory(), data = NSTemporaryDirectory() + "crossbook-ingress-\(UUID().uuidString.prefix(8))"
        defer { removeTree(data) }
        let engine = try durableEngine(dir, data: data, instance: "ing")
        let session = try engine.openLocalSession(source: IngressSource(name: "orders", partition: 3))
        for (k, offset) in [10, 11, 12].enumerated() {
            let report = try #require(try submitAt(session, offset: UInt64(offset), orderId: OrderId(k + 1)))
            #expect(report.kind == .accepted)
        }
        try expectReplayDropped(engine) { try submitAt(session, offset: 11, orderId: 9, timeout: 0.3) }
        // A gap is not a duplicate (messages for other shards, dead letters): taken.
        #expect(try submitAt(session, offset: 20, orderId: 10)?.kind == .accepted)
        #expect(engine.adminState(shard: 0)?.positions == ["orders#3": 20])
        // An unbound session (a shared-memory client) is not checked: its client sequence is its own.
        let client = try CrossbookClient(instance: "ing", directory: dir)
        let btc = try client.symbol("BTC-USD")
        #expect(client.submit(.new(NewOrder(orderId: 1, side: .sell, price: 200, quantity: 1)), symbol: btc, clientSequence: 3))
        var kinds: [ReportRecord.Kind] = []
        _ = try client.waitForReports(timeout: 5) { kinds.append($0.kind) }
        #expect(kinds == [.accepted])
        client.close()
        engine.stop()   // the bound session is still open: as after a crash, nothing undid its binding
        let final = engine.finalDigests

        let restarted = try durableEngine(dir, data: data, instance: "ing")
        #expect(restarted.recoveredDigests == final)
        #expect(restarted.adminState(shard: 0)?.positions == ["orders#3": 20])
        let again = try restarted.openLocalSession(source: IngressSource(name: "orders", partition: 3))
        // The source's producer gets its session id back: its orders rest under that id, and a
        // cancel read after the restart must find the order placed before it.
        #expect(again.id == session.id)
        try expectReplayDropped(restarted) { try submitAt(again, offset: 20, orderId: 11, timeout: 0.3) }
        #expect(try submitAt(again, offset: 21, orderId: 12)?.kind == .accepted)
        var cancel = [UInt8](repeating: 0, count: 64)
        cancel.withUnsafeMutableBytes {
            CommandRecord.encode(.init(symbolId: 1, command: .cancel(CancelOrder(orderId: 1)), clientSequence: 22), to: $0.baseAddress!)
        }
        #expect(cancel.withUnsafeBytes { again.submit($0.baseAddress!, shard: 0) })
        var reply: ReportRecord.Report?
        #expect(waitFor(5) {
            var out = [UInt8](repeating: 0, count: 64)
            guard let n = try? out.withUnsafeMutableBytes({ try again.poll(into: $0.baseAddress!, capacity: 1) }), n == 1 else { return false }
            reply = out.withUnsafeBytes { try? ReportRecord.decode($0.baseAddress!) }
            return true
        })
        #expect(reply?.kind == .cancelled && reply?.orderId == 1, "the order of before the restart: \(String(describing: reply))")
        #expect(restarted.adminState(shard: 0)?.positions == ["orders#3": 22])
        restarted.closeLocalSession(again)
        restarted.stop()

        // The journal shows each binding, and the restart undoing the one left by the first run.
        let dump = try runCrossbookCapturing(["journal", "dump", data])
        #expect(dump.contains("admin bind session \(session.id) to source orders#3"))
        #expect(dump.contains("admin unbind session \(session.id)"))
        #expect(dump.contains("admin unbind session \(again.id)"))
        // And a third start replays all of it to the same books and positions.
        let third = try durableEngine(dir, data: data, instance: "ing")
        #expect(third.recoveredDigests == restarted.finalDigests)
        #expect(third.adminState(shard: 0)?.positions == ["orders#3": 22])
        third.stop()
    }

    @Test("a snapshot taken while a bound session sends keeps its binding: the commands after the snapshot move the position on replay")
    func bindingInSnapshot() throws {
        let dir = testDirectory(), data = NSTemporaryDirectory() + "crossbook-ingress-\(UUID().uuidString.prefix(8))"
        defer { removeTree(data) }
        let log = LogLines()
        let engine = try durableEngine(dir, data: data, instance: "ings", snapshotEvery: 20)
        let session = try engine.openLocalSession(source: IngressSource(name: "t", partition: 0))
        for offset in 0..<50 {
            #expect(try submitAt(session, offset: UInt64(offset), orderId: OrderId(offset + 1), price: 100 + Int64(offset % 5))?.kind == .accepted)
        }
        usleep(300_000)  // the snapshot writer
        engine.stop()
        let restarted = try durableEngine(dir, data: data, instance: "ings", snapshotEvery: 20, log: log)
        defer { restarted.stop() }
        #expect(log.contains("loaded snapshot"), "\(log.all)")
        #expect(restarted.recoveredDigests == engine.finalDigests)
        #expect(restarted.adminState(shard: 0)?.positions == ["t#0": 49])
    }

    @Test("the bind and unbind records round-trip and refuse garbage with a reason")
    func recordFormat() throws {
        for command in [AdminCommand.bindSource(session: 7, source: "orders", partition: 2), .unbindSource(session: 7)] {
            let bytes = AdminRecord.encode(command)
            #expect(try bytes.withUnsafeBytes { try AdminRecord.decode($0) } == command)
            for cut in 0..<bytes.count {
                #expect(throws: AdminRecord.Malformed.self) { try bytes.prefix(cut).withUnsafeBytes { try AdminRecord.decode($0) } }
            }
        }
        // A source that is not UTF-8.
        var bad = AdminRecord.encode(.bindSource(session: 1, source: "ab", partition: 0))
        bad[bad.count - 1] = 0xFF
        #expect(throws: AdminRecord.Malformed.self) { try bad.withUnsafeBytes { try AdminRecord.decode($0) } }
    }

    /// Submits a new order of `symbolId` from `session` at `offset` to `shard`; its first report.
    func submitTo(_ session: LocalSession, shard: Int, symbolId: UInt32, offset: UInt64, orderId: OrderId,
                  timeout: Double = 5) throws -> ReportRecord.Report? {
        var record = [UInt8](repeating: 0, count: 64)
        record.withUnsafeMutableBytes {
            CommandRecord.encode(.init(symbolId: symbolId, command: .new(NewOrder(orderId: orderId, side: .buy, price: 100, quantity: 1)),
                                       clientSequence: offset), to: $0.baseAddress!)
        }
        guard record.withUnsafeBytes({ session.submit($0.baseAddress!, shard: shard) }) else { return nil }
        var out = [UInt8](repeating: 0, count: 64)
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            let n = try out.withUnsafeMutableBytes { try session.poll(into: $0.baseAddress!, capacity: 1) }
            if n == 1 { return out.withUnsafeBytes { try? ReportRecord.decode($0.baseAddress!) } }
            usleep(100)
        }
        return nil
    }

    @Test("a symbol that moves to another shard takes its old shard's ingress position along: a replay of its commands is dropped there, though the new shard's own position is lower; after a restart too")
    func positionsMoveWithTheSymbol() throws {
        let dir = testDirectory(), data = NSTemporaryDirectory() + "crossbook-ingmig-\(UUID().uuidString.prefix(8))"
        defer { removeTree(data) }
        let engine = try migrationEngine(dir, data: data, instance: "ingm")
        let session = try engine.openLocalSession(source: IngressSource(name: "orders", partition: 0))
        // HOT-USD (shard 0) up to offset 10, ETH-USD (shard 1) up to 5.
        #expect(try submitTo(session, shard: 0, symbolId: 1, offset: 10, orderId: 1)?.kind == .accepted)
        #expect(try submitTo(session, shard: 1, symbolId: 2, offset: 5, orderId: 2)?.kind == .accepted)
        _ = try engine.migrate(symbol: "HOT-USD", toShard: 1)
        // Shard 1's own position is 5: offset 8 of HOT-USD would pass its check, but shard 0
        // applied it.
        try expectReplayDropped(engine, shard: 1) { try submitTo(session, shard: 1, symbolId: 1, offset: 8, orderId: 3, timeout: 0.3) }
        // ETH-USD is not held back by HOT-USD's floor.
        #expect(try submitTo(session, shard: 1, symbolId: 2, offset: 7, orderId: 4)?.kind == .accepted)
        #expect(try submitTo(session, shard: 1, symbolId: 1, offset: 11, orderId: 5)?.kind == .accepted)
        engine.closeLocalSession(session)
        engine.stop()
        let final = engine.finalDigests

        let restarted = try migrationEngine(dir, data: data, instance: "ingm")
        defer { restarted.stop() }
        #expect(restarted.recoveredDigests == final)
        #expect(restarted.owner(of: "HOT-USD") == 1)
        let again = try restarted.openLocalSession(source: IngressSource(name: "orders", partition: 0))
        try expectReplayDropped(restarted, shard: 1) { try submitTo(again, shard: 1, symbolId: 1, offset: 9, orderId: 6, timeout: 0.3) }
        #expect(try submitTo(again, shard: 1, symbolId: 1, offset: 12, orderId: 7)?.kind == .accepted)
    }
}

@Suite("Ingress floors: a symbol's own position in a partition", .serialized)
struct IngressFloorTests {
    @Test("a floor below the shard's position (a symbol back from another engine): its commands from there are taken once, the others' replays dropped; it goes once the symbol caught up; the resume point follows it; a restart replays all of it")
    func floorBehindTheShard() throws {
        let dir = testDirectory(), data = NSTemporaryDirectory() + "crossbook-floor-\(UUID().uuidString.prefix(8))"
        defer { removeTree(data) }
        let engine = try durableEngine(dir, data: data, instance: "flo")
        let session = try engine.openLocalSession(source: IngressSource(name: "orders", partition: 0))
        // BTC-USD (id 1) up to offset 10; then an order at 20 moves the shard's position on.
        #expect(try submitAt(session, offset: 10, orderId: 1)?.kind == .accepted)
        #expect(try submitAt(session, offset: 20, orderId: 2)?.kind == .accepted)
        // BTC-USD's own position is 14 (as when it arrives from an engine that stopped there):
        // its messages 15 … 20 are to be read again here, 15 first.
        guard case .applied = engine.admin(shard: 0, .ingressFloor(symbolId: 1, source: "orders", partition: 0, offset: 15)) else {
            Issue.record("the floor was refused")
            return
        }
        #expect(engine.adminState(shard: 0)?.resume == ["orders#0": 14])
        try expectReplayDropped(engine) { try submitAt(session, offset: 12, orderId: 3, timeout: 0.3) }
        #expect(try submitAt(session, offset: 16, orderId: 4)?.kind == .accepted)  // below the shard's 20: its own
        try expectReplayDropped(engine) { try submitAt(session, offset: 16, orderId: 5, timeout: 0.3) }
        #expect(try submitAt(session, offset: 18, orderId: 6)?.kind == .accepted)
        #expect(engine.adminState(shard: 0)?.resume == ["orders#0": 18])
        #expect(engine.adminState(shard: 0)?.positions == ["orders#0": 20])
        // Caught up: its command is the newest of the partition here; the floor goes.
        #expect(try submitAt(session, offset: 25, orderId: 7)?.kind == .accepted)
        #expect(engine.adminState(shard: 0)?.resume == ["orders#0": 25])
        try expectReplayDropped(engine) { try submitAt(session, offset: 19, orderId: 8, timeout: 0.3) }
        engine.stop()
        let final = engine.finalDigests

        let restarted = try durableEngine(dir, data: data, instance: "flo")
        defer { restarted.stop() }
        #expect(restarted.recoveredDigests == final)
        #expect(restarted.adminState(shard: 0)?.resume == ["orders#0": 25])
        #expect(restarted.adminState(shard: 0)?.positions == ["orders#0": 25])
    }
}

extension IngressFloorTests {
    @Test("a quiet symbol's floor does not stay: it goes once a command above the offset its partition was read again through is applied (the plugin's mark), and after a restart once one above where the shard stopped is; the resume point moves up with it")
    func quietFloorsGo() throws {
        let dir = testDirectory(), data = NSTemporaryDirectory() + "crossbook-floorq-\(UUID().uuidString.prefix(8))"
        defer { removeTree(data) }
        let engine = try durableEngine(dir, data: data, instance: "floq", symbols: ["BTC-USD", "ETH-USD"])
        let session = try engine.openLocalSession(source: IngressSource(name: "orders", partition: 0))
        #expect(try submitAt(session, offset: 20, orderId: 1)?.kind == .accepted)
        // ETH-USD (id 2) arrives behind, at 15; it gets no message.
        guard case .applied = engine.admin(shard: 0, .ingressFloor(symbolId: 2, source: "orders", partition: 0, offset: 15)) else {
            Issue.record("the floor was refused")
            return
        }
        #expect(engine.adminState(shard: 0)?.resume == ["orders#0": 14])
        // The plugin read the partition again through 22 for it: a BTC-USD command at 21 is
        // not past that, one at 23 is.
        #expect(engine.shards[0].send(.ingressMarks([(2, "orders#0", 22)])))
        #expect(try submitAt(session, offset: 21, orderId: 2)?.kind == .accepted)
        #expect(engine.adminState(shard: 0)?.resume == ["orders#0": 14])
        #expect(try submitAt(session, offset: 23, orderId: 3)?.kind == .accepted)
        #expect(engine.adminState(shard: 0)?.resume == ["orders#0": 23])
        // An ETH-USD message below the shard's position is a replay now.
        try expectReplayDropped(engine) { try submitAt(session, offset: 16, orderId: 4, symbolId: 2, timeout: 0.3) }

        // Again at 18, and a restart: the replay brings the floor back (journaled), the restart
        // marks it at the shard's position (23): it goes with the first command above.
        guard case .applied = engine.admin(shard: 0, .ingressFloor(symbolId: 2, source: "orders", partition: 0, offset: 18)) else {
            Issue.record("the floor was refused")
            return
        }
        engine.closeLocalSession(session)
        engine.stop()
        let restarted = try durableEngine(dir, data: data, instance: "floq", symbols: ["BTC-USD", "ETH-USD"])
        defer { restarted.stop() }
        #expect(restarted.adminState(shard: 0)?.resume == ["orders#0": 17])
        let again = try restarted.openLocalSession(source: IngressSource(name: "orders", partition: 0))
        #expect(try submitAt(again, offset: 19, orderId: 5, symbolId: 2)?.kind == .accepted)  // ETH-USD's own, below 23
        #expect(restarted.adminState(shard: 0)?.resume == ["orders#0": 19])
        #expect(try submitAt(again, offset: 24, orderId: 6)?.kind == .accepted)
        #expect(restarted.adminState(shard: 0)?.resume == ["orders#0": 24])
    }
}

@Suite("Ingress during a move between shards", .serialized)
struct IngressHoldTests {
    /// Two shards: HOT-USD (1) and BTC-USD (3) on shard 0, ETH-USD (2) on shard 1.
    static func engine(_ dir: String, data: String, snapshotEvery: UInt64 = 0, log: LogLines? = nil) throws -> Engine {
        var settings = EngineSettings(
            instance: "inh", directory: dir, shards: [ShardSettings(core: nil), ShardSettings(core: nil)],
            symbols: [(spec: SymbolSpec(name: "HOT-USD", id: 1), shard: 0), (spec: SymbolSpec(name: "ETH-USD", id: 2), shard: 1),
                      (spec: SymbolSpec(name: "BTC-USD", id: 3), shard: 0)],
            capacity: BookCapacity(orders: 1 << 12, levels: 1 << 8),
            wait: WaitStrategy(spins: 1000, yields: 10, park: true, parkTimeoutNanoseconds: 50_000_000))
        settings.durability = .sync
        settings.dataDirectory = data
        settings.snapshotEvery = snapshotEvery
        if snapshotEvery > 0 {
            settings.plugins = PluginSettings(directory: PluginSettings.executableDirectory, load: [PluginSpec(name: "snapshot-file")])
        }
        let engine = Engine(settings: settings, log: { log?.append($0) })
        for line in try engine.start() { log?.append(line) }
        return engine
    }

    static func submit(_ session: LocalSession, shard: Int, symbolId: UInt32, offset: UInt64, orderId: OrderId) {
        var record = [UInt8](repeating: 0, count: 64)
        record.withUnsafeMutableBytes {
            CommandRecord.encode(.init(symbolId: symbolId, command: .new(NewOrder(orderId: orderId, side: .buy, price: 100, quantity: 1)),
                                       clientSequence: offset), to: $0.baseAddress!)
        }
        while !record.withUnsafeBytes({ session.submit($0.baseAddress!, shard: shard) }) { usleep(100) }
    }

    /// Reports until `count` came or 3 s passed: order id (client's) → kind and reason.
    static func reports(_ session: LocalSession, count: Int, seconds: Double = 3) throws -> [OrderId: String] {
        var out: [OrderId: String] = [:]
        var record = [UInt8](repeating: 0, count: 64)
        let deadline = Date().addingTimeInterval(seconds)
        while out.count < count, Date() < deadline {
            let n = try record.withUnsafeMutableBytes { try session.poll(into: $0.baseAddress!, capacity: 1) }
            if n == 1, let r = record.withUnsafeBytes({ try? ReportRecord.decode($0.baseAddress!) }) {
                out[r.orderId & maxClientOrderId] = r.kind == .rejected ? "rejected \(r.code)" : "\(r.kind)"
            } else {
                usleep(200)
            }
        }
        return out
    }

    /// The steps of Engine.runMigration, HOT-USD shard 0 → 1, with the partition's next messages
    /// between them as a Kafka ingress would submit them: `held` (HOT-USD, order id 2) after the
    /// route switched (to shard 1, held), `other` (BTC-USD, order id 3) to shard 0, applied there.
    static func moveHot(_ engine: Engine, _ session: LocalSession, held: UInt64, other: UInt64) -> Bool {
        guard let expected = engine.step(1, { .expect($0) }, MigrationStep(symbolId: 1), timeout: 5), expected.refusal == nil else { return false }
        engine.routes!.set(1, shard: 1)
        submit(session, shard: 1, symbolId: 1, offset: held, orderId: 2)
        submit(session, shard: 0, symbolId: 3, offset: other, orderId: 3)
        guard (try? reports(session, count: 1)[3]) == "accepted" else { return false }
        guard let hold = engine.step(0, { .holdOutgoing($0) }, MigrationStep(symbolId: 1), timeout: 5), let book = hold.bookAddress else { return false }
        let bytes = book.pointer.pointee.snapshot()
        guard let out = engine.step(0, { .sealExport($0) }, MigrationStep(symbolId: 1, book: bytes), timeout: 5), out.refusal == nil,
              engine.awaitDurable(0, out.sequence, timeout: 5) else { return false }
        let arriving = MigrationStep(symbolId: 1, book: bytes, positions: out.positions)
        guard let into = engine.step(1, { .migrateIn($0, abandon: false) }, arriving, timeout: 5), into.refusal == nil,
              engine.awaitDurable(1, into.sequence, timeout: 5) else { return false }
        guard case .applied = engine.admin(shard: 0, .drop(symbolId: 1)) else { return false }
        return true
    }

    @Test("a Kafka-fed symbol that moves between shards while the partition goes on: its commands the target held are applied there, though the source's position passed them with another symbol's")
    func heldBelowTheSourcePosition() throws {
        let dir = testDirectory(), data = NSTemporaryDirectory() + "crossbook-inh-\(UUID().uuidString.prefix(8))"
        defer { removeTree(data) }
        let engine = try Self.engine(dir, data: data)
        defer { engine.stop() }
        let session = try engine.openLocalSession(source: IngressSource(name: "orders", partition: 0))
        Self.submit(session, shard: 0, symbolId: 1, offset: 10, orderId: 1)
        #expect(try Self.reports(session, count: 1)[1] == "accepted")
        #expect(Self.moveHot(engine, session, held: 11, other: 12))
        // The held command: applied on shard 1, not a replay.
        #expect(try Self.reports(session, count: 1)[2] == "accepted", "HOT-USD at offset 11")
        // A replay of HOT-USD's offset 10 (applied on shard 0) is dropped on shard 1; 13 is taken.
        let replays = engine.engineFile?.ingress(1).read(IngressCounters.replays) ?? 0
        Self.submit(session, shard: 1, symbolId: 1, offset: 10, orderId: 4)
        #expect(try Self.reports(session, count: 1, seconds: 0.3).isEmpty)
        #expect(engine.engineFile?.ingress(1).read(IngressCounters.replays) == replays + 1)
        Self.submit(session, shard: 1, symbolId: 1, offset: 13, orderId: 5)
        #expect(try Self.reports(session, count: 1)[5] == "accepted")
    }

    @Test("each symbol's own position survives a snapshot: after a restart from one, the move between shards still applies the held command")
    func ownPositionsInSnapshots() throws {
        let dir = testDirectory(), data = NSTemporaryDirectory() + "crossbook-inh-\(UUID().uuidString.prefix(8))"
        defer { removeTree(data) }
        let engine = try Self.engine(dir, data: data, snapshotEvery: 4)
        let session = try engine.openLocalSession(source: IngressSource(name: "orders", partition: 0))
        Self.submit(session, shard: 0, symbolId: 1, offset: 10, orderId: 1)
        #expect(try Self.reports(session, count: 1)[1] == "accepted")
        for k in 0..<6 { Self.submit(session, shard: 0, symbolId: 3, offset: 11 + UInt64(k), orderId: OrderId(100 + k)) }
        #expect(try Self.reports(session, count: 6).count == 6)
        usleep(300_000)  // the snapshot writer
        engine.closeLocalSession(session)
        engine.stop()

        let log = LogLines()
        let restarted = try Self.engine(testDirectory(), data: data, snapshotEvery: 4, log: log)
        defer { restarted.stop() }
        #expect(log.contains("shard 0: loaded snapshot"), "\(log.all)")
        let again = try restarted.openLocalSession(source: IngressSource(name: "orders", partition: 0))
        #expect(Self.moveHot(restarted, again, held: 20, other: 21))
        #expect(try Self.reports(again, count: 1)[2] == "accepted", "HOT-USD at offset 20, held on shard 1")
    }

    @Test("a crash while the target holds a Kafka-fed symbol's commands, after the source's position passed them: the restart reads the partition again from the first held one, and the source (which keeps the symbol) takes it once")
    func crashWhileHeld() throws {
        let dir = testDirectory(), data = NSTemporaryDirectory() + "crossbook-inh-\(UUID().uuidString.prefix(8))"
        let image = data + "-crash"
        defer { removeTree(data); removeTree(image) }
        let engine = try Self.engine(dir, data: data)
        let session = try engine.openLocalSession(source: IngressSource(name: "orders", partition: 0))
        Self.submit(session, shard: 0, symbolId: 1, offset: 10, orderId: 1)
        #expect(try Self.reports(session, count: 1)[1] == "accepted")
        guard let expected = engine.step(1, { .expect($0) }, MigrationStep(symbolId: 1), timeout: 5), expected.refusal == nil else {
            Issue.record("expect refused")
            return
        }
        engine.routes!.set(1, shard: 1)
        Self.submit(session, shard: 1, symbolId: 1, offset: 11, orderId: 2)  // held on shard 1
        Self.submit(session, shard: 0, symbolId: 3, offset: 12, orderId: 3)
        #expect(try Self.reports(session, count: 1)[3] == "accepted")
        // Shard 1 journaled the held command's offset as HOT-USD's floor, before anything else.
        let deadline = Date().addingTimeInterval(5)
        while engine.adminState(shard: 1)?.strayFloors[1] != ["orders#0": 10], Date() < deadline { usleep(1000) }
        #expect(engine.adminState(shard: 1)?.strayFloors[1] == ["orders#0": 10])
        usleep(100_000)
        for shard in 0..<2 { engine.shards[shard].nudge() }
        usleep(100_000)
        // The crash: what is on disk now, as kill -9 would leave it (sync durability).
        #expect(try runTool("/bin/cp", ["-a", data, image]).status == 0)
        engine.stop()

        let log = LogLines()
        var settings = engine.settings
        settings.dataDirectory = image
        settings.directory = testDirectory()
        let restarted = Engine(settings: settings, log: { log.append($0) })
        for line in try restarted.start() { log.append(line) }
        defer { restarted.stop() }
        #expect(restarted.owner(of: "HOT-USD") == 0, "the move never imported: the source keeps it")
        #expect(log.contains("reads them again from there"), "\(log.all.suffix(5))")
        // Read again from offset 11: HOT-USD's 11 is taken once on shard 0; 10 and BTC-USD's 12
        // are replays.
        #expect(restarted.adminState(shard: 0)?.resume["orders#0"] == 10)
        let again = try restarted.openLocalSession(source: IngressSource(name: "orders", partition: 0))
        Self.submit(again, shard: 0, symbolId: 1, offset: 11, orderId: 2)
        #expect(try Self.reports(again, count: 1)[2] == "accepted", "HOT-USD at offset 11, held when the engine died")
        let replays = restarted.engineFile?.ingress(0).read(IngressCounters.replays) ?? 0
        Self.submit(again, shard: 0, symbolId: 1, offset: 10, orderId: 6)
        Self.submit(again, shard: 0, symbolId: 3, offset: 12, orderId: 7)
        #expect(try Self.reports(again, count: 1, seconds: 0.3).isEmpty)
        #expect(restarted.engineFile?.ingress(0).read(IngressCounters.replays) == replays + 2)
    }
}
