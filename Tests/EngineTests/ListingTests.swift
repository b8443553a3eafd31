// Listing a symbol while the engine runs (Engine+Listing.swift): a client attached before the
// listing trades it, the listing is refused with a reason when it cannot be, and restarts (from
// a snapshot and the journal, and from the journal alone) bring the symbol and its book back. A
// listing that reached some shards' journals and not others (a crash mid-listing) is finished
// at the next start.
import CrossbookClient
import Engine
import Foundation
import Glibc
import OrderBook
import SharedMemory
import Testing
import TestSupport
import Wire

@Suite("Listing symbols at run time")
struct ListingTests {
    /// Two shards, AAA on 0 and BBB on 1, room for `room` symbols.
    func listingEngine(_ dir: String, data: String, room: Int? = 4, snapshotEvery: UInt64 = 0, log: LogLines? = nil) throws -> Engine {
        var settings = EngineSettings(
            instance: "ls", directory: dir, shards: [ShardSettings(core: nil), ShardSettings(core: nil)],
            symbols: [(spec: SymbolSpec(name: "AAA", id: 1), shard: 0), (spec: SymbolSpec(name: "BBB", id: 2), shard: 1)],
            capacity: BookCapacity(orders: 1 << 10, levels: 1 << 8),
            wait: WaitStrategy(spins: 1000, yields: 10, park: true, parkTimeoutNanoseconds: 50_000_000))
        settings.durability = .sync
        settings.dataDirectory = data
        settings.journalSegmentSize = 1 << 20
        settings.snapshotEvery = snapshotEvery
        settings.maxSymbols = room
        settings.plugins = PluginSettings(directory: PluginSettings.executableDirectory, load: [PluginSpec(name: "snapshot-file")])
        let engine = Engine(settings: settings, log: { log?.append($0) })
        for line in try engine.start() { log?.append(line) }
        return engine
    }

    /// The answer to order `id` (accepted or rejected); the trades seen meanwhile are counted.
    func answer(_ client: CrossbookClient, _ id: OrderId, trades: UnsafeMutablePointer<Int>? = nil) throws -> ReportRecord.Report? {
        var found: ReportRecord.Report?
        let deadline = Date().addingTimeInterval(5)
        while found == nil && Date() < deadline {
            try client.waitForReports(timeout: 0.05) {
                if $0.kind == .trade { trades?.pointee += 1 }
                if $0.orderId == id && ($0.kind == .accepted || $0.kind == .rejected) { found = $0 }
            }
        }
        return found
    }

    @Test("a symbol listed while clients trade: a client attached before finds it, its rules hold, it trades, moves, and comes back after restarts from a snapshot and from the journal alone; refusals name their reason")
    func listAtRunTime() throws {
        let dir = testDirectory(), data = NSTemporaryDirectory() + "crossbook-list-\(UUID().uuidString.prefix(8))"
        defer { removeTree(data) }
        let log = LogLines()
        let engine = try listingEngine(dir, data: data, snapshotEvery: 5, log: log)
        let client = try CrossbookClient(instance: "ls", directory: dir)
        #expect(throws: ClientError.self) { _ = try client.symbol("ETH-USD") }
        let aaa = try client.symbol("AAA")
        var id: OrderId = 0
        let trades = UnsafeMutablePointer<Int>.allocate(capacity: 1)
        trades.initialize(to: 0)
        defer { trades.deallocate() }
        func send(_ symbol: SymbolInfo, _ side: Side, _ price: Price, _ quantity: Quantity = 1) throws -> ReportRecord.Report? {
            id += 1
            #expect(client.submit(.new(NewOrder(orderId: id, side: side, price: price, quantity: quantity)), symbol: symbol))
            return try answer(client, id, trades: trades)
        }
        #expect(try send(aaa, .buy, 100)?.kind == .accepted)

        var rules = SymbolSpec(name: "", id: 0)
        rules.tickSize = 5
        rules.maxPrice = 1_000_000
        let report = try engine.listSymbol("ETH-USD", shard: 1, rules: rules)
        #expect(report.spec.id == 3 && report.slot == 2 && report.sequences.count == 2, "\(report)")
        #expect(log.contains("listed ETH-USD id 3 on shard 1"), "\(log.all.suffix(5))")
        // The client attached before the listing finds it, with its rules and its shard.
        let eth = try client.symbol("ETH-USD")
        #expect(eth.spec.tickSize == 5 && eth.spec.maxPrice == 1_000_000 && client.shard(of: eth) == 1, "\(eth)")
        #expect(engine.owner(of: "ETH-USD") == 1)
        // Its rules hold: a price off the tick, or above the band, is rejected with its reason.
        let offTick = try send(eth, .buy, 101)
        #expect(offTick?.kind == .rejected && offTick?.code == RejectReason.priceOffTick.rawValue, "\(String(describing: offTick))")
        let aboveBand = try send(eth, .buy, 1_000_005)
        #expect(aboveBand?.kind == .rejected && aboveBand?.code == RejectReason.priceOutsideBand.rawValue, "\(String(describing: aboveBand))")
        // It trades.
        for k in 0..<4 { #expect(try send(eth, .buy, 1000 - 5 * Price(k), 2)?.kind == .accepted) }
        #expect(try send(eth, .sell, 995, 3)?.kind == .accepted)
        try client.waitForReports(timeout: 0.3) { if $0.kind == .trade { trades.pointee += 1 } }
        // A sell of 3 against bids of 2 at 1000 and 2 at 995: two trades, each reported to both sides.
        #expect(trades.pointee == 4, "trade reports seen: \(trades.pointee)")

        // Refusals, each with its reason; none changes anything.
        func refused(_ line: String) throws -> String {
            let answer = try Engine.ask(directory: dir, line)
            #expect(answer.first?.hasPrefix("error") == true, "\(line): \(answer)")
            return answer.first ?? ""
        }
        #expect(try refused("list ETH-USD 0").contains("exists already"))
        #expect(try refused("list SOL-USD 7").contains("no shard 7"))
        #expect(try refused("list SOL-USD 0 id 1").contains("AAA"))
        #expect(try refused("list SOL-USD 0 tick 0").contains("tick size must be positive"))
        #expect(try refused("list SOL-USD 0 min 10 max 5").contains("below its minimum"))
        #expect(try refused("list BAD! 0").contains("name"))
        #expect(try refused("list ABCDEFGHIJKLMNOPQRSTUVWXYZ 0").contains("name"))
        #expect(try refused("list SOL-USD 0 tick").contains("usage"))
        #expect(try refused("list SOL-USD 0 tick 5 tick 5").contains("twice"))
        #expect(try refused("list SOL-USD 0 tick x").contains("not an integer"))
        #expect(try refused("list SOL-USD 0 id 99999999").contains("outside"))
        // Room for 4: one more fits, the fifth is refused.
        _ = try engine.listSymbol("SOL-USD", shard: 0)
        #expect(try refused("list XRP-USD 0").contains("no room for another symbol"))
        let listed = try Engine.ask(directory: dir, "symbols")
        #expect(listed.count == 5 && listed.last?.hasPrefix("SOL-USD 4 0 ") == true, "\(listed)")

        // It moves between shards like any symbol.
        _ = try engine.migrate(symbol: "ETH-USD", toShard: 0)
        #expect(engine.owner(of: "ETH-USD") == 0)
        #expect(try send(try client.symbol("ETH-USD"), .buy, 990)?.kind == .accepted)
        client.close()
        engine.stop()
        let final = engine.finalDigests

        // From the newest snapshot (it holds the listings) and the journal after it.
        let fromSnapshot = LogLines()
        let second = try listingEngine(dir, data: data, log: fromSnapshot)
        #expect(second.recoveredDigests == final)
        #expect(fromSnapshot.contains("loaded snapshot") && !fromSnapshot.contains("unusable"), "\(fromSnapshot.all.suffix(8))")
        #expect(second.owner(of: "ETH-USD") == 0 && second.owner(of: "SOL-USD") == 0)
        let again = try CrossbookClient(instance: "ls", directory: dir)
        #expect(try again.symbol("ETH-USD").spec.tickSize == 5)
        again.close()
        second.stop()
        // From the journals alone.
        for name in (try? FileManager.default.contentsOfDirectory(atPath: data)) ?? [] where name.hasPrefix("snapshot-") { unlink(data + "/" + name) }
        let third = try listingEngine(dir, data: data)
        #expect(third.recoveredDigests == final)
        #expect(third.owner(of: "ETH-USD") == 0)
        third.stop()
        // Less room than the journals' listings: refused at start, with the reason.
        #expect(throws: (any Error).self) { _ = try listingEngine(dir, data: data, room: 3) }
    }

    @Test("a listing on one shard's journal only (a crash mid-listing) is finished at the next start: every shard takes it, its home shard owns it")
    func interruptedListing() throws {
        let dir = testDirectory(), data = NSTemporaryDirectory() + "crossbook-list-\(UUID().uuidString.prefix(8))"
        defer { removeTree(data) }
        let first = try listingEngine(dir, data: data)
        // What a crash after shard 0's record and before shard 1's leaves: only shard 0 has it.
        let listing = AdminCommand.Listing(slot: 2, home: 1, name: "HALF", id: 4, tickSize: 1, lotSize: 1, minPrice: 1,
                                           maxPrice: 1000, maxOrderQuantity: 100)
        guard case .applied = first.admin(shard: 0, .listSymbol(listing)) else { Issue.record("shard 0 refused the listing"); return }
        // Not published: no client sees a symbol that not every shard has.
        let before = try CrossbookClient(instance: "ls", directory: dir)
        #expect(throws: ClientError.self) { _ = try before.symbol("HALF") }
        before.close()
        first.stop()
        let log = LogLines()
        let second = try listingEngine(dir, data: data, log: log)
        #expect(log.contains("HALF: listed on shard 1 too"), "\(log.all.suffix(10))")
        #expect(second.owner(of: "HALF") == 1)
        let client = try CrossbookClient(instance: "ls", directory: dir)
        let half = try client.symbol("HALF")
        #expect(half.spec.maxPrice == 1000 && half.spec.id == 4)
        #expect(client.submit(.new(NewOrder(orderId: 1, side: .buy, price: 10, quantity: 1)), symbol: half))
        #expect(try answer(client, 1)?.kind == .accepted)
        client.close()
        second.stop()
        // And the start after that finds it whole.
        let third = try listingEngine(dir, data: data)
        #expect(third.recoveredDigests == second.finalDigests && third.owner(of: "HALF") == 1)
        third.stop()
    }
}
