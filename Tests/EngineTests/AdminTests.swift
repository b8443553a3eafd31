// Sequenced admin commands: sequenced and journaled like orders, applied through one code path
// live and on replay, kept in snapshots.
import CrossbookClient
import Engine
import Foundation
import Glibc
import Journal
import OrderBook
import SharedMemory
import Testing
import TestSupport
import Wire

@Suite("Admin commands", .serialized)
struct AdminCommandTests {
    /// Submits one order and returns its first report (accepted or rejected).
    func firstReport(_ client: CrossbookClient, _ order: NewOrder, symbol: String = "BTC-USD") throws -> ReportRecord.Report? {
        let info = try client.symbol(symbol)
        guard client.submit(.new(order), symbol: info) else { return nil }
        var first: ReportRecord.Report?
        _ = try client.waitForReports(timeout: 5) { if first == nil { first = $0 } }
        return first
    }

    @Test("the record format: every kind round-trips; garbage is refused with a reason, never trapped on")
    func recordFormat() throws {
        let all: [AdminCommand] = [.epoch(7), .ingressPosition(source: "orders", partition: 3, offset: 1 << 40),
                                   .freeze(symbolId: 1), .thaw(symbolId: 1), .exportBook(symbolId: 2, book: [1, 2, 3]),
                                   .importBook(symbolId: 2, book: []), .drop(symbolId: 9),
                                   .bindSource(session: 4, source: "orders", partition: 1), .unbindSource(session: 4),
                                   .exportSealed(symbolId: 3, length: 96, crc: 0xDEAD_BEEF),
                                   .importPart(symbolId: 3, total: 10, offset: 4, part: [1, 2, 3]),
                                   .ingressFloor(symbolId: 3, source: "orders", partition: 2, offset: 1 << 33),
                                   .listSymbol(AdminCommand.Listing(slot: 5, home: 1, name: "ETH-USD", id: 6, tickSize: 5, lotSize: 2,
                                                                    minPrice: 10, maxPrice: 1 << 40, maxOrderQuantity: -1)),
                                   .transferOut(symbolId: 4, length: 120, crc: 0xFEED, epoch: 1 << 35, instance: "east-2"),
                                   .transferIn(symbolId: 4, epoch: 17, instance: "west")]
        #expect(Set(all.map(\.kind)) == Set(AdminCommand.Kind.allCases), "every kind is in the round trip")
        // A part outside its book is refused.
        var outside = AdminRecord.encode(.importPart(symbolId: 3, total: 10, offset: 8, part: [1, 2]))
        outside[16] = 9  // offset 9 + 2 bytes > 10
        #expect(throws: AdminRecord.Malformed.self) { try outside.withUnsafeBytes { try AdminRecord.decode($0) } }
        for command in all {
            let bytes = AdminRecord.encode(command)
            #expect(try bytes.withUnsafeBytes { try AdminRecord.decode($0) } == command)
            // Every shorter prefix and every one-byte change decodes to an error or some command: no trap.
            for cut in 0..<bytes.count { _ = try? bytes.prefix(cut).withUnsafeBytes { try AdminRecord.decode($0) } }
            for i in bytes.indices {
                var bad = bytes
                bad[i] ^= 0xFF
                _ = try? bad.withUnsafeBytes { try AdminRecord.decode($0) }
            }
        }
        #expect(throws: AdminRecord.Malformed.self) { try [UInt8](repeating: 0, count: 8).withUnsafeBytes { try AdminRecord.decode($0) } }
        #expect(throws: AdminRecord.Malformed.self) { try [1, 0, 99, 0, 0, 0, 0, 0].withUnsafeBytes { try AdminRecord.decode($0) } }
    }

    @Test("epoch, ingress position, freeze/thaw, export/drop/import: sequenced between orders, journaled, and replayed to the same books and admin state")
    func sequencedAndReplayed() throws {
        let dir = testDirectory(), data = NSTemporaryDirectory() + "crossbook-admin-\(UUID().uuidString.prefix(8))"
        defer { removeTree(data) }
        let engine = try durableEngine(dir, data: data, instance: "adm")
        let client = try CrossbookClient(instance: "adm", directory: dir)
        let first = try #require(try firstReport(client, NewOrder(orderId: 1, side: .buy, price: 100, quantity: 5)))
        #expect(first.kind == .accepted)

        guard case .applied(let epochSequence) = engine.admin(shard: 0, .epoch(3)) else { Issue.record("epoch refused"); return }
        #expect(epochSequence == first.engineSequence + 1, "the admin command takes the next sequence")
        // An epoch that does not rise is journaled and refused, on replay too.
        guard case .refused(let again?, let why) = engine.admin(shard: 0, .epoch(2)) else { Issue.record("epoch 2 applied"); return }
        #expect(again == epochSequence + 1 && why.contains("not above"))
        #expect(engine.admin(shard: 0, .ingressPosition(source: "orders", partition: 0, offset: 41)) == .applied(sequence: again + 1))

        // Frozen: the symbol's orders are rejected with their reason; thawed, they are taken.
        #expect(engine.admin(shard: 0, .freeze(symbolId: 1)) == .applied(sequence: again + 2))
        let frozen = try #require(try firstReport(client, NewOrder(orderId: 2, side: .sell, price: 101, quantity: 1)))
        #expect(frozen.kind == .rejected && frozen.code == RejectReason.symbolFrozen.rawValue)
        #expect(frozen.engineSequence == again + 3)

        // Export (the shard fills in the book), drop: the symbol is no longer this shard's.
        guard case .applied = engine.admin(shard: 0, .exportBook(symbolId: 1, book: [])) else { Issue.record("export refused"); return }
        guard case .applied = engine.admin(shard: 0, .drop(symbolId: 1)) else { Issue.record("drop refused"); return }
        let gone = try #require(try firstReport(client, NewOrder(orderId: 3, side: .sell, price: 101, quantity: 1)))
        #expect(gone.kind == .rejected && gone.code == RejectReason.symbolMoved.rawValue)
        let state = try #require(engine.adminState(shard: 0))
        #expect(state.epoch == 3 && state.positions == ["orders#0": 41] && state.notOwned == [1])

        // Import the exported book back (from the journal, as another shard would), then thaw.
        var exported: [UInt8] = []
        _ = try JournalReader.scan(directory: data, shard: 0, repair: false) { type, _, payload in
            guard type == 2, case .exportBook(_, let book)? = try? AdminRecord.decode(UnsafeRawBufferPointer(rebasing: payload[8...])) else { return }
            exported = book
        }
        #expect(!exported.isEmpty)
        guard case .applied = engine.admin(shard: 0, .importBook(symbolId: 1, book: exported)) else { Issue.record("import refused"); return }
        guard case .applied = engine.admin(shard: 0, .thaw(symbolId: 1)) else { Issue.record("thaw refused"); return }
        // The resting bid of order 1 came back with the book: a sell at 100 trades with it.
        let trade = try #require(try firstReport(client, NewOrder(orderId: 4, side: .sell, price: 100, quantity: 2)))
        #expect(trade.kind == .accepted)
        client.close()
        engine.stop()
        let final = engine.finalDigests

        // The dump shows them decoded.
        let dump = try runCrossbookCapturing(["journal", "dump", data])
        #expect(dump.contains("admin epoch 3") && dump.contains("admin ingress-position orders#0 offset 41") && dump.contains("admin import symbol 1"))

        // A restart replays orders and admin commands alike, to the same books and state.
        let again2 = try durableEngine(dir, data: data, instance: "adm")
        #expect(again2.recoveredDigests == final)
        let replayed = try #require(again2.adminState(shard: 0))
        var expected = ShardAdminState(epoch: 3, positions: ["orders#0": 41], frozen: [], notOwned: [])
        expected.symbolCount = 1
        expected.sourceCount = 1
        expected.resume = ["orders#0": 41]
        #expect(replayed == expected)
        again2.stop()
    }

    @Test("a journaled admin record this build cannot read (a newer kind) stops the start with its sequence and reason, not a guess")
    func unknownKindRefused() throws {
        let dir = testDirectory(), data = NSTemporaryDirectory() + "crossbook-admin-\(UUID().uuidString.prefix(8))"
        defer { removeTree(data) }
        let engine = try durableEngine(dir, data: data, instance: "admk")
        #expect(engine.admin(shard: 0, .epoch(1)) == .applied(sequence: 1))
        engine.stop()
        // Another build appends an admin record of kind 99 after it.
        let scan = try JournalReader.scan(directory: data, shard: 0, repair: false) { _, _, _ in }
        let writer = try JournalWriter(config: JournalConfig(directory: data, shard: 0, segmentSize: 1 << 20),
                                       lastSequence: scan.lastSequence, resume: scan.resume)
        let record: [UInt8] = [0, 0, 0, 0, 0, 0, 0, 0] + [1, 0, 99, 0, 0, 0, 0, 0]
        _ = try record.withUnsafeBytes { try writer.append(type: 2, sequence: 2, payload: $0) }
        try writer.flush()
        #expect { _ = try durableEngine(dir, data: data, instance: "admk") } throws: {
            "\($0)".contains("sequence 2") && "\($0)".contains("unknown admin command kind 99")
        }
    }

    @Test("admin state is kept in snapshots: a restart from a snapshot has the same epoch, positions and frozen symbols")
    func inSnapshots() throws {
        let dir = testDirectory(), data = NSTemporaryDirectory() + "crossbook-admin-\(UUID().uuidString.prefix(8))"
        defer { removeTree(data) }
        let log = LogLines()
        let engine = try durableEngine(dir, data: data, instance: "adms", symbols: ["BTC-USD", "ETH-USD"], snapshotEvery: 50)
        #expect(engine.admin(shard: 0, .epoch(9)) == .applied(sequence: 1))
        #expect(engine.admin(shard: 0, .ingressPosition(source: "t", partition: 2, offset: 5)) == .applied(sequence: 2))
        #expect(engine.admin(shard: 0, .freeze(symbolId: 2)) == .applied(sequence: 3))
        let client = try CrossbookClient(instance: "adms", directory: dir)
        let btc = try client.symbol("BTC-USD")
        for id in 1...200 { while !client.submit(.new(NewOrder(orderId: OrderId(id), side: .buy, price: 100, quantity: 1)), symbol: btc) { _ = try client.poll { _ in } } }
        var seen = 0
        let deadline = Date().addingTimeInterval(10)
        while seen < 200 && Date() < deadline { seen += try client.poll { _ in } }
        usleep(300_000)  // the snapshot writer
        client.close()
        engine.stop()
        let restarted = try durableEngine(dir, data: data, instance: "adms", symbols: ["BTC-USD", "ETH-USD"], snapshotEvery: 50, log: log)
        defer { restarted.stop() }
        #expect(log.contains("loaded snapshot"), "\(log.all)")
        var expected = ShardAdminState(epoch: 9, positions: ["t#2": 5], frozen: [2], notOwned: [])
        expected.symbolCount = 2
        expected.sourceCount = 1
        expected.resume = ["t#2": 5]
        #expect(restarted.adminState(shard: 0) == expected)
        #expect(restarted.recoveredDigests == engine.finalDigests)
    }
}

/// Runs the crossbook binary built beside the tests; its standard output.
func runCrossbookCapturing(_ arguments: [String], stdin: String? = nil) throws -> String {
    let process = Process()
    process.executableURL = crossbookBinary()
    process.arguments = arguments
    let out = Pipe(), input = Pipe()
    process.standardOutput = out
    process.standardError = FileHandle.nullDevice
    process.standardInput = stdin == nil ? FileHandle.nullDevice : input
    try process.run()
    if let stdin {
        Thread {
            input.fileHandleForWriting.write(Data(stdin.utf8))
            try? input.fileHandleForWriting.close()
        }.start()
    }
    let data = out.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    return String(decoding: data, as: UTF8.self)
}

@Suite("Engine errors keep their cause")
struct EngineErrorTests {
    @Test("a bad symbol is a book-config error; a data directory under a file is the mkdir's errno, typed")
    func typedCauses() throws {
        var settings = oneShardSettings("errs", testDirectory())
        settings.symbols = [(spec: SymbolSpec(name: "BTC-USD", id: 1, tickSize: 0), shard: 0)]
        #expect { _ = try Engine(settings: settings, log: { _ in }).start() } throws: { error in
            guard case EngineError.bookConfig = error else { return false }
            return true
        }
        let file = NSTemporaryDirectory() + "crossbook-notadir-\(getpid())"
        FileManager.default.createFile(atPath: file, contents: Data("x".utf8))
        defer { unlink(file) }
        var durable = oneShardSettings("errs2", testDirectory())
        durable.durability = .sync
        durable.dataDirectory = file + "/data"
        #expect { _ = try Engine(settings: durable, log: { _ in }).start() } throws: { error in
            guard case EngineError.system(let failure) = error else { return false }
            return failure.errno == .notDirectory && failure.path == file + "/data"
        }
    }
}
