// A shard whose books share pools ([[shards]] orders, levels): the pools' limits reject with a
// reason whatever symbol filled them; a restart from the journal, and one from a snapshot,
// rebuild the same books; the configuration is checked and recorded beside the journals.
import CrossbookClient
import Engine
import Foundation
import Glibc
import OrderBook
import SharedMemory
import Testing
import TestSupport
import Wire

@Suite("Shared pools in the engine")
struct SharedPoolsEngineTests {
    /// Three symbols on one shard whose books share `pools`; [book] 4 orders and 4 levels.
    func pooledEngine(_ dir: String, data: String, pools: BookCapacity, snapshotEvery: UInt64 = 0, log: LogLines? = nil) throws -> Engine {
        try durableEngine(dir, data: data, instance: "sp", symbols: ["AAA", "BBB", "CCC"], capacity: BookCapacity(orders: 4, levels: 4),
                          snapshotEvery: snapshotEvery, log: log, pools: pools)
    }

    /// The answer to order `id`: accepted or rejected (`cancelled`: its cancellation).
    func answer(_ client: CrossbookClient, _ id: OrderId, cancelled: Bool = false) throws -> ReportRecord.Report? {
        var found: ReportRecord.Report?
        let deadline = Date().addingTimeInterval(5)
        while found == nil && Date() < deadline {
            try client.waitForReports(timeout: 0.05) {
                if $0.orderId == id && (cancelled ? $0.kind == .cancelled : $0.kind == .accepted || $0.kind == .rejected) { found = $0 }
            }
        }
        return found
    }

    @Test("three symbols on a shard's pools of 10 orders: one symbol can hold more than [book] orders; the eleventh resting order, in any symbol, is rejected (order pool exhausted); a cancel frees a node for another symbol; restarts from the journal and from a snapshot rebuild the same books")
    func poolsInTheEngine() throws {
        let dir = testDirectory(), data = NSTemporaryDirectory() + "crossbook-pools-\(UUID().uuidString.prefix(8))"
        defer { removeTree(data) }
        let log = LogLines()
        let first = try pooledEngine(dir, data: data, pools: BookCapacity(orders: 10, levels: 16), snapshotEvery: 7, log: log)
        #expect(log.contains("pools of 10 orders and 16 levels shared by its books"), "\(log.all)")
        let client = try CrossbookClient(instance: "sp", directory: dir)
        let names = ["AAA", "BBB", "CCC"]
        let symbols = try names.map { try client.symbol($0) }
        var id: OrderId = 0
        func rest(_ s: Int, price: Price) throws -> ReportRecord.Report? {
            id += 1
            #expect(client.submit(.new(NewOrder(orderId: id, side: .buy, price: price, quantity: 1)), symbol: symbols[s]))
            return try answer(client, id)
        }
        // AAA takes 6 resting orders (more than [book] orders = 4) at 3 levels; BBB 4.
        for k in 0..<6 { #expect(try rest(0, price: 100 + Price(k % 3))?.kind == .accepted) }
        for k in 0..<4 { #expect(try rest(1, price: 200 + Price(k % 2))?.kind == .accepted) }
        // The pools are full: CCC's first order is refused, with its reason.
        let refused = try rest(2, price: 300)
        #expect(refused?.kind == .rejected && refused?.code == RejectReason.orderPoolExhausted.rawValue, "\(String(describing: refused))")
        // A fifth level a side for AAA ([book] levels = 4): refused too.
        let aaaFirst: OrderId = 1
        #expect(client.submit(.cancel(CancelOrder(orderId: aaaFirst)), symbol: symbols[0]))
        #expect(try answer(client, aaaFirst, cancelled: true)?.kind == .cancelled)
        #expect(try rest(0, price: 110)?.kind == .accepted)  // a 4th level (node freed by the cancel)
        #expect(client.submit(.cancel(CancelOrder(orderId: 2)), symbol: symbols[0]))
        #expect(try answer(client, 2, cancelled: true)?.kind == .cancelled)
        let fifth = try rest(0, price: 111)
        #expect(fifth?.kind == .rejected && fifth?.code == RejectReason.levelPoolExhausted.rawValue, "\(String(describing: fifth))")
        // A node freed in AAA rests CCC's order.
        #expect(try rest(2, price: 300)?.kind == .accepted)
        client.close()
        first.stop()
        let final = first.finalDigests
        // From a snapshot and the journal after it.
        let fromSnapshot = LogLines()
        let second = try pooledEngine(dir, data: data, pools: BookCapacity(orders: 10, levels: 16), log: fromSnapshot)
        #expect(second.recoveredDigests == final)
        second.stop()
        #expect(fromSnapshot.contains("loaded snapshot"), "\(fromSnapshot.all.suffix(8))")
        // From the journal alone.
        for name in (try? FileManager.default.contentsOfDirectory(atPath: data)) ?? [] where name.hasPrefix("snapshot-") { unlink(data + "/" + name) }
        let third = try pooledEngine(dir, data: data, pools: BookCapacity(orders: 10, levels: 16))
        #expect(third.recoveredDigests == final)
        third.stop()
        // Other pools would rebuild other books: the data directory says which it was written with.
        #expect(throws: (any Error).self) { _ = try pooledEngine(dir, data: data, pools: BookCapacity(orders: 11, levels: 16)) }
        let recorded = try String(contentsOfFile: data + "/CONFIGURATION", encoding: .utf8)
        #expect(recorded.contains("shard 0 pools orders 10 levels 16"))
    }

    @Test("[[shards]] orders and levels: checked with the place and the cause")
    func poolsConfig() throws {
        let config = NSTemporaryDirectory() + "crossbook-pools-\(UUID().uuidString.prefix(8)).toml"
        defer { unlink(config) }
        for (text, reason) in [("orders = 100", "orders and levels go together"),
                               ("orders = 0\nlevels = 10", "orders must be between 1 and"),
                               ("orders = 100\nlevels = 1", "levels must be between 2 and"),
                               ("orders = 100\nlevels = \"many\"", "levels"),
                               ("pool = 3", "unknown key 'pool' (expected core, orders, levels)"),
                               ("orders = 100\nlevels = 100", "fewer than a book's [book] levels 4096")] {
            try "[[shards]]\n\(text)\n[book]\nlevels = 4096\n[[symbols]]\nname = \"BTC-USD\"\n".write(toFile: config, atomically: true, encoding: .utf8)
            let result = try MigrationTests().crossbook(["run", "--config", config, "--check-config"])
            #expect(result.status != 0 && result.output.contains(reason), "\(text): \(result)")
        }
        try "[[shards]]\norders = 1048576\nlevels = 262144\n[book]\nlevels = 4096\n[[symbols]]\nname = \"BTC-USD\"\n".write(toFile: config, atomically: true, encoding: .utf8)
        let ok = try MigrationTests().crossbook(["run", "--config", config, "--check-config"])
        #expect(ok.status == 0 && ok.output.contains("shared pools of 1 shard(s) with 1 symbols"), "\(ok)")
    }
}
