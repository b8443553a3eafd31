// Listing a symbol while the engine runs (Engine+Listing.swift): a client attached before the
// listing trades it, the listing is refused with a reason when it cannot be, and restarts (from
// a snapshot and the journal, and from the journal alone) bring the symbol and its book back. A
// listing that reached some shards' journals and not others (a crash mid-listing) is finished
// at the next start.
import CrossbookClient
@testable import Engine
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

    @Test("[engine] max_symbols: checked in the config (1 to 65536) and at start (not below the config's symbols)")
    func roomConfig() throws {
        let config = NSTemporaryDirectory() + "crossbook-room-\(UUID().uuidString.prefix(8)).toml"
        defer { unlink(config) }
        for (value, reason) in [("0", "max_symbols must be between 1 and 65536"), ("70000", "max_symbols must be between 1 and 65536"),
                                ("\"many\"", "max_symbols")] {
            try "[engine]\nmax_symbols = \(value)\n[[symbols]]\nname = \"BTC-USD\"\n".write(toFile: config, atomically: true, encoding: .utf8)
            let result = try MigrationTests().crossbook(["run", "--config", config, "--check-config"])
            #expect(result.status != 0 && result.output.contains(reason), "\(value): \(result)")
        }
        let dir = testDirectory(), data = NSTemporaryDirectory() + "crossbook-room-\(UUID().uuidString.prefix(8))"
        defer { removeTree(data) }
        #expect {
            _ = try listingEngine(dir, data: data, room: 1)
        } throws: { "\($0)".contains("max_symbols 1: between the config's 2 symbols") }
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

    @Test("a listing reaches the hot standby through the journal: after kill -9 of the primary the promoted standby trades the listed symbol with its book, and its state equals an offline replay of its journal")
    func listingAcrossFailover() throws {
        let pa = freeLoopbackPort(), pb = freeLoopbackPort()
        let a = PairNode(name: "hl-a", listen: pa, peer: pb), b = PairNode(name: "hl-b", listen: pb, peer: pa)
        defer { a.terminate(); b.terminate(); a.remove(); b.remove() }
        try a.start(standby: false)
        #expect(waitFor(10) { a.isPrimary })
        try b.start(standby: true)
        #expect(waitFor(10) { a.engagedWithStandby }, "\(a.status())")
        let added = try MigrationTests().crossbook(["symbol", "add", "SOL-USD", "--directory", a.dir, "--tick", "2", "--max-price", "100000"])
        #expect(added.status == 0 && added.output.contains("listed SOL-USD id 3 on shard 0"), "\(added)")
        let listed = try MigrationTests().crossbook(["symbol", "list", "--directory", a.dir])
        #expect(listed.output.contains("SOL-USD id 3 shard 0 tick 2 lot 1 band 1...100000"), "\(listed)")
        // A standby lists nothing itself.
        let onStandby = try MigrationTests().crossbook(["symbol", "add", "XRP-USD", "--directory", b.dir])
        #expect(onStandby.status != 0 && onStandby.output.contains("standby"), "\(onStandby)")
        let client = try CrossbookClient(instance: "hl-a", directory: a.dir)
        let sol = try client.symbol("SOL-USD")
        var acked = 0
        for id in 1...200 {
            while !client.submit(.new(NewOrder(orderId: OrderId(id), side: .buy, price: 1000 + 2 * Price(id % 10), quantity: 1)), symbol: sol) {
                _ = try client.poll { if $0.kind == .accepted { acked += 1 } }
            }
        }
        #expect(waitFor(10) {
            _ = try? client.poll { if $0.kind == .accepted { acked += 1 } }
            return acked == 200
        }, "acknowledged \(acked) of 200")
        client.close()
        a.kill9()
        #expect(waitFor(10) { b.isPrimary }, "\(b.status())")
        let after = try CrossbookClient(instance: "hl-b", directory: b.dir)
        let moved = try after.symbol("SOL-USD")
        #expect(moved.spec.tickSize == 2 && moved.spec.id == 3)
        // The 200 resting bids are there: a sell of 200 at the lowest fills them all.
        #expect(after.submit(.new(NewOrder(orderId: 1, side: .sell, price: 1000, quantity: 200)), symbol: moved))
        var filled: Quantity = 0
        #expect(waitFor(5) {
            _ = try? after.poll { if $0.kind == .trade && $0.orderId == 1 { filled += $0.quantity } }
            return filled == 200
        }, "filled \(filled) of 200")
        after.close()
        b.terminate()
        let replayed = try offlineDigest(b.data, tag: "listing")
        let stopped = b.log.all.first { $0.contains("stopped at state digest") } ?? ""
        #expect(replayed != nil && stopped.hasSuffix(String(replayed ?? 0, radix: 16)), "\(stopped)")
    }

    static let killCycles = Int(ProcessInfo.processInfo.environment["CROSSBOOK_LISTING_KILL_CYCLES"] ?? "") ?? 4

    @Test("kill -9 at a random moment of back-to-back listings under load (orders on the listed symbols too), then recovery: every acknowledged listing is there on its home shard, every listed symbol has one owner, each book equals a one-book replay of the journals, no acknowledged order is lost")
    func killDuringListings() throws {
        let dir = testDirectory(), data = NSTemporaryDirectory() + "crossbook-listk-\(UUID().uuidString.prefix(8))"
        let config = data + ".toml"
        defer {
            removeTree(data)
            removeTree(config)
        }
        try """
        [engine]
        durability = "sync"
        max_symbols = 1024
        [[shards]]
        [[shards]]
        [book]
        orders = 1024
        levels = 256
        [[symbols]]
        name = "AAA"
        id = 1
        shard = 0
        [[symbols]]
        name = "BBB"
        id = 2
        shard = 1
        """.write(toFile: config, atomically: true, encoding: .utf8)
        var rng: UInt64 = 0x115
        var summary: [String] = []
        var acknowledgedListings: [(name: String, home: Int)] = []
        for cycle in 0..<Self.killCycles {
            let engine = try startEngineProcess(config: config, instance: "lk", directory: dir, data: data, cycle: cycle)
            // Listings back to back on a thread of their own until the engine is gone (or 6 a cycle).
            let answers = LogLines()
            let lister = DispatchSemaphore(value: 0)
            Thread {
                for k in 0..<6 {
                    let name = "L\(cycle)-\(k)"
                    guard let answer = try? Engine.ask(directory: dir, "list \(name) \(k % 2) tick \(1 + k % 3)", timeout: 10) else { break }
                    answers.append("\(name) \(k % 2) \(answer.first ?? "")")
                    usleep(20_000)
                }
                lister.signal()
            }.start()
            let client = try CrossbookClient(instance: "lk", directory: dir, ringCapacity: 1 << 14)
            let session = Int64(client.sessionId)
            var acked = Set<Int64>()
            func take(_ r: ReportRecord.Report) {
                if r.kind == .accepted || r.kind == .rejected { acked.insert(session << 48 | r.orderId) }
            }
            rng = rng &* 6364136223846793005 &+ 1442695040888963407
            let killAt = Date().addingTimeInterval(0.05 + Double((rng >> 33) % 200) / 1000)
            var id = OrderId(cycle) * 10_000_000
            var names = ["AAA", "BBB"] + acknowledgedListings.map(\.name)
            while Date() < killAt {
                id += 1
                rng = rng &* 6364136223846793005 &+ 1442695040888963407
                let r = rng >> 33
                // The symbols listed so far this cycle join the flow as soon as the client finds them.
                if id % 16 == 0 {
                    for line in answers.all where line.hasSuffix(" ok") {
                        let name = String(line.split(separator: " ")[0])
                        if !names.contains(name), (try? client.symbol(name)) != nil { names.append(name) }
                    }
                }
                let name = names[Int(r % UInt64(names.count))]
                guard let info = try? client.symbol(name) else { continue }
                let tick = info.spec.tickSize
                let order = NewOrder(orderId: id, side: r & 1 == 0 ? .buy : .sell, price: tick * (95 + Price((r >> 4) % 11)), quantity: 1 + Quantity((r >> 8) % 5))
                while !client.submit(.new(order), symbol: info) {
                    _ = try? client.poll(take)
                    if Date() >= killAt { break }
                }
                if id % 32 == 0 {
                    _ = try? client.poll(take)
                    usleep(300)
                }
            }
            kill(engine.processIdentifier, SIGKILL)
            engine.waitUntilExit()
            _ = try? client.poll(take)
            client.close()
            lister.wait()
            for line in answers.all where line.hasSuffix(" ok") {
                let f = line.split(separator: " ")
                acknowledgedListings.append((String(f[0]), Int(f[1]) ?? -1))
            }
            // Each answer is the listing done, or none (the engine was killed): never a refusal.
            #expect(answers.all.allSatisfy { $0.hasSuffix(" ok") || $0.split(separator: " ").count == 2 }, "cycle \(cycle): \(answers.all)")

            // Recovery of a copy, in this process.
            let copy = data + "-copy"
            removeTree(copy)
            copyDirectory(data, copy)
            var settings = EngineSettings(instance: "lko\(cycle)", directory: testDirectory(), shards: [ShardSettings(core: nil), ShardSettings(core: nil)],
                                          symbols: [(spec: SymbolSpec(name: "AAA", id: 1), shard: 0), (spec: SymbolSpec(name: "BBB", id: 2), shard: 1)],
                                          capacity: BookCapacity(orders: 1024, levels: 256))
            settings.durability = .sync
            settings.dataDirectory = copy
            settings.maxSymbols = 1024
            let log = LogLines()
            let offline = Engine(settings: settings, log: { log.append($0) })
            _ = try offline.start()
            let table = try #require(offline.symbolTable).all
            // Every acknowledged listing is there, owned by its home shard (nothing moved them).
            for (name, home) in acknowledgedListings {
                #expect(offline.owner(of: name) == home, "cycle \(cycle): acknowledged listing \(name) on shard \(String(describing: offline.owner(of: name)))")
            }
            offline.stop()
            let recovered = offline.finalDigests
            // Each shard's books against one-book replays of the journals, in slot order.
            var expected: [[UInt64]] = [[], []]
            var journaled = Set<Int64>()
            for entry in table {
                let chain = try SymbolChain(data: copy, shards: 2, symbolId: entry.spec.id, initialOwner: entry.home)
                #expect(chain.owner == entry.home)
                expected[entry.home].append(try chain.replay(spec: entry.spec, capacity: BookCapacity(orders: 1024, levels: 256)).digest)
                for applied in chain.commands where applied.record[1] == 1 {
                    journaled.insert(Int64(applied.session) << 48 | applied.record.withUnsafeBytes { CommandRecord.orderId($0.baseAddress!) })
                }
            }
            func fold(_ books: [UInt64]) -> UInt64 { books.reduce(0xCBF2_9CE4_8422_2325) { ($0 ^ $1) &* 0x0000_0100_0000_01B3 } }
            #expect(recovered == expected.map(fold), "cycle \(cycle): recovered books differ from the replay of the journals")
            #expect(acked.isSubset(of: journaled), "cycle \(cycle): \(acked.subtracting(journaled).count) acknowledged orders not in the journals")
            summary.append("cycle \(cycle): \(answers.all.filter { $0.hasSuffix(" ok") }.count) listings acknowledged, \(table.count - 2) listed in all, \(acked.count) orders acknowledged" +
                           log.all.filter { $0.contains("listed on shard") }.map { "; " + $0 }.joined())
            removeTree(copy)
        }
        print(summary.joined(separator: "\n"))
    }
}
