// The shard's batch path: for a deep book (OrderBook.prefetchThreshold resting orders or more)
// the shard prefetches the orders of the commands ahead in each ring batch. Recovery applies
// the same journal one command at a time without it: the live state and the replayed state
// must be the same.
import CrossbookClient
@testable import Engine
import Foundation
import Glibc
import OrderBook
import Testing
import TestSupport
import Wire
import Workloads

/// Sends commands into a client's rings without waiting for each answer, so that the shard
/// takes them in batches: a full ring is flushed and its reports read; every `every` commands
/// too. Counts what it sent and the reports it read.
struct BatchSender {
    let client: CrossbookClient
    let every: Int
    var sent = 0, reports = 0

    mutating func send(_ command: BookCommand, _ symbol: SymbolInfo) throws {
        while !client.submit(command, symbol: symbol, flush: false) {
            client.flush()
            reports += try client.poll { _ in }
        }
        sent += 1
        if sent % every == 0 {
            client.flush()
            reports += try client.poll { _ in }
        }
    }

    /// Flushes, then reads reports until each command has one (or `timeout` seconds passed).
    mutating func finish(timeout: Double = 20) -> Bool {
        client.flush()
        return waitFor(timeout) { reports += (try? client.poll { _ in }) ?? 0; return reports >= sent }
    }
}

@Suite("The shard's batch path", .serialized)
struct ShardBatchTests {
    @Test("a deep book (20,000 resting orders) under random cancels, replaces, new and market orders in ring batches: the live state equals a replay of the journal")
    func deepBookDigest() throws {
        let dir = testDirectory(), data = NSTemporaryDirectory() + "crossbook-batch-\(UUID().uuidString.prefix(8))"
        defer { removeTree(data) }
        let engine = try durableEngine(dir, data: data, instance: "bp", durability: .async)
        let client = try CrossbookClient(instance: "bp", directory: dir)
        let btc = try client.symbol("BTC-USD")
        var live: [OrderId] = []
        var sender = BatchSender(client: client, every: 64)
        func send(_ command: BookCommand) throws { try sender.send(command, btc) }
        var rng = SplitMix64(seed: 99)
        var nextId: OrderId = 1
        for _ in 0..<20_000 {
            let buy = rng.next() & 1 == 0
            let off = 1 + Price(rng.next() % 400)
            try send(.new(NewOrder(orderId: nextId, side: buy ? .buy : .sell, price: buy ? 1000 - off : 1000 + off, quantity: 1 + Quantity(rng.next() % 9))))
            live.append(nextId)
            nextId += 1
        }
        for _ in 0..<40_000 {
            let roll = rng.next() % 100
            if roll < 40, !live.isEmpty {
                let i = Int(rng.next() % UInt64(live.count))
                try send(.cancel(CancelOrder(orderId: live[i])))
                live.swapAt(i, live.count - 1)
                live.removeLast()
            } else if roll < 60, !live.isEmpty {
                let id = live[Int(rng.next() % UInt64(live.count))]
                let buy = rng.next() & 1 == 0
                let off = 1 + Price(rng.next() % 400)
                // A replace may name an order a market order took: rejected, the same way live and replayed.
                try send(.replace(ReplaceOrder(orderId: id, price: buy ? 1000 - off : 1000 + off, quantity: 1 + Quantity(rng.next() % 9))))
            } else if roll < 95 {
                let buy = rng.next() & 1 == 0
                let off = 1 + Price(rng.next() % 400)
                try send(.new(NewOrder(orderId: nextId, side: buy ? .buy : .sell, price: buy ? 1000 - off : 1000 + off, quantity: 1 + Quantity(rng.next() % 9))))
                live.append(nextId)
                nextId += 1
            } else {
                try send(.new(NewOrder(orderId: nextId, side: rng.next() & 1 == 0 ? .buy : .sell, type: .market, price: 0,
                                       quantity: 1 + Quantity(rng.next() % 20), timeInForce: .ioc)))
                nextId += 1
            }
        }
        // Everything answered (each command at least one report).
        let answered = sender.finish()
        #expect(answered, "\(sender.reports) reports for \(sender.sent) commands")
        client.close()
        engine.stop()
        let live1 = engine.finalDigests
        let replayed = try durableEngine(dir, data: data, instance: "bp", durability: .async)
        #expect(replayed.recoveredDigests == live1)
        replayed.stop()
    }

    @Test("600 symbols on a shard's shared pools (the shard prefetches across books: each command's book, its id slot and ladder tops, its order or best levels, the order's neighbours) under W1's mix spread over them in ring batches: the live state equals a replay of the journal")
    func acrossBooksDigest() throws {
        let dir = testDirectory(), data = NSTemporaryDirectory() + "crossbook-across-\(UUID().uuidString.prefix(8))"
        defer { removeTree(data) }
        let names = (0..<600).map { "S\($0)-USD" }
        let pools = BookCapacity(orders: 1 << 16, levels: 1 << 14)
        let engine = try durableEngine(dir, data: data, instance: "xb", durability: .async, symbols: names,
                                       capacity: BookCapacity(orders: 64, levels: 64), pools: pools)
        let client = try CrossbookClient(instance: "xb", directory: dir)
        let symbols = try names.map { try client.symbol($0) }
        var sender = BatchSender(client: client, every: 128)
        func send(_ command: BookCommand, _ s: Int) throws { try sender.send(command, symbols[s]) }
        // W1's mix (bench/README.md), each op on a symbol drawn uniformly; a cancel names an
        // order the client placed (it may have traded away: rejected alike live and replayed).
        var rng = SplitMix64(seed: 600)
        var placed: [(id: OrderId, symbol: Int)] = []
        var nextId: OrderId = 1
        for _ in 0..<40_000 {
            let (a, b, c, d) = (rng.next(), rng.next(), rng.next(), rng.next())
            let s = Int(rng.next() % UInt64(names.count))
            let t = a % 100
            if t < 70 {
                try send(.new(NewOrder(orderId: nextId, side: b & 1 == 1 ? .buy : .sell, price: 9950 + Price(c % 101), quantity: 1 + Quantity(d % 100))), s)
                placed.append((nextId, s))
                nextId += 1
            } else if t < 90, !placed.isEmpty {
                let i = Int(b % UInt64(placed.count))
                try send(.cancel(CancelOrder(orderId: placed[i].id)), placed[i].symbol)
                placed.swapAt(i, placed.count - 1)
                placed.removeLast()
            } else {
                try send(.new(NewOrder(orderId: nextId, side: b & 1 == 1 ? .buy : .sell, type: .market, price: 0,
                                       quantity: 1 + Quantity(d % 100), timeInForce: .ioc)), s)
                nextId += 1
            }
        }
        let answered = sender.finish()
        #expect(answered, "\(sender.reports) reports for \(sender.sent) commands")
        client.close()
        engine.stop()
        let live = engine.finalDigests
        let replayed = try durableEngine(dir, data: data, instance: "xb", durability: .async, symbols: names,
                                         capacity: BookCapacity(orders: 64, levels: 64), pools: pools)
        #expect(replayed.recoveredDigests == live)
        replayed.stop()
    }
}
