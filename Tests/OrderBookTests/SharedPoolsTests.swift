// Books sharing a shard's pools (one order pool, one id table, one level pool) against books
// with pools of their own: the same events and the same books, for interleaved random command
// streams whose order ids collide across the books; the pools' limits reject cleanly; a book
// that goes returns its orders and levels, and the others are untouched.

import OrderBook
import Testing
import Workloads

@Suite("Books on shared pools")
struct SharedPoolsTests {
    static func spec(_ k: Int) -> SymbolSpec {
        SymbolSpec(name: "DIFF\(k)", id: UInt32(k + 1), tickSize: 5, lotSize: 2, minPrice: 5 * 190,
                   maxPrice: 5 * 210, maxOrderQuantity: 60)
    }

    @Test("six books on shared pools emit exactly the events of six books with pools of their own, one command at a time and in batches, with the same order ids in every book", arguments: [UInt64(21), 22])
    func sameEventsAsOwnPools(seed: UInt64) throws {
        let n = 6
        let capacity = BookCapacity(orders: 4096, levels: 256)
        let pools = try BookPools(orders: n * 4096, levels: n * 256)
        let own = UnsafeMutablePointer<OrderBook>.allocate(capacity: n)
        let shared = UnsafeMutablePointer<OrderBook>.allocate(capacity: n)
        var generators: [CommandGenerator] = []
        for k in 0..<n {
            (own + k).initialize(to: try OrderBook(spec: Self.spec(k), capacity: capacity))
            (shared + k).initialize(to: try OrderBook(spec: Self.spec(k), pools: pools, levels: 256))
            // The same seed for pairs of books: the same ids, prices and accounts in both.
            generators.append(CommandGenerator(seed: seed &+ UInt64(k / 2), spec: Self.spec(k)))
        }
        defer {
            own.deinitialize(count: n)
            own.deallocate()
            shared.deinitialize(count: n)
            shared.deallocate()
        }
        #expect(pools.books == n)
        var rng = SplitMix64(seed: seed ^ 0x5EED)
        var applied = 0
        while applied < 150_000 {
            let k = Int(rng.next() % UInt64(n))
            let size = 1 + Int(rng.next() % 40)
            var commands: [BookCommand] = []
            for _ in 0..<size { commands.append(generators[k].next()) }
            var one = EventRecorder(), other = EventRecorder()
            for command in commands { own[k].apply(command, to: &one) }
            if rng.next() % 2 == 0 {
                for command in commands { shared[k].apply(command, to: &other) }
            } else {
                commands.withUnsafeBufferPointer { shared[k].apply(batch: $0, to: &other, threshold: 0) }
            }
            guard one.events == other.events else {
                Issue.record("seed \(seed), book \(k), after \(applied) commands: the events differ")
                return
            }
            generators[k].observe(one.events, book: own[k])
            applied += size
            if applied % 10_000 < size {
                for j in 0..<n { #expect(shared[j].consistencyError() == nil, "book \(j) after \(applied)") }
            }
        }
        var resting = 0
        for k in 0..<n {
            #expect(own[k].snapshot() == shared[k].snapshot())
            #expect(shared[k].consistencyError() == nil)
            resting += shared[k].restingOrderCount
        }
        #expect(resting > 0 && pools.liveOrders == resting)
    }

    @Test("the pools' limits: an order that finds every node taken (by another book) is rejected, and rests once one is free; a side past the book's level limit is rejected; a book that goes returns its orders and levels and the others still find theirs")
    func limitsAndRelease() throws {
        let pools = try BookPools(orders: 8, levels: 6)
        var a = try OrderBook(spec: Self.spec(0), pools: pools, levels: 2)
        var events = EventRecorder()
        // Book a takes 6 nodes at 2 bid levels (its limit).
        for i in 0..<6 {
            a.apply(.new(NewOrder(orderId: OrderId(i + 1), side: .buy, price: 5 * 195 + 5 * Price(i % 2), quantity: 2)), to: &events)
        }
        a.apply(.new(NewOrder(orderId: 7, side: .buy, price: 5 * 190, quantity: 2)), to: &events)
        #expect(events.events.last == .rejected(orderId: 7, reason: .levelPoolExhausted))
        var b = try OrderBook(spec: Self.spec(1), pools: pools, levels: 6)
        events = EventRecorder()
        // Book b: the same ids as book a's, 2 nodes left in the pools.
        b.apply(.new(NewOrder(orderId: 1, side: .sell, price: 5 * 200, quantity: 2)), to: &events)
        b.apply(.new(NewOrder(orderId: 2, side: .sell, price: 5 * 201, quantity: 2)), to: &events)
        b.apply(.new(NewOrder(orderId: 3, side: .sell, price: 5 * 202, quantity: 2)), to: &events)
        #expect(events.events.last == .rejected(orderId: 3, reason: .orderPoolExhausted))
        #expect(pools.liveOrders == 8 && pools.liveLevels == 4)
        // A cancel in b finds b's order 1, not a's.
        events = EventRecorder()
        b.apply(.cancel(CancelOrder(orderId: 1)), to: &events)
        #expect(events.events.first == .cancelled(orderId: 1, quantity: 2, open: 0, reason: .user))
        #expect(a.restingOrderCount == 6 && b.restingOrderCount == 1)
        b.apply(.new(NewOrder(orderId: 3, side: .sell, price: 5 * 202, quantity: 2)), to: &events)
        #expect(events.events.last == .level(side: .sell, price: 5 * 202, quantity: 2, orders: 1))
        #expect(a.consistencyError() == nil && b.consistencyError() == nil)
        // Book a goes: its 6 orders and 2 levels return; b keeps its 2 orders and finds them.
        _ = consume a
        #expect(pools.books == 1 && pools.liveOrders == 2 && pools.liveLevels == 2)
        #expect(b.consistencyError() == nil)
        events = EventRecorder()
        b.apply(.cancel(CancelOrder(orderId: 2)), to: &events)
        #expect(events.events.first == .cancelled(orderId: 2, quantity: 2, open: 0, reason: .user))
        // A new book on the freed nodes, with ids a had.
        var c = try OrderBook(spec: Self.spec(2), pools: pools, levels: 6)
        events = EventRecorder()
        for i in 0..<7 {
            c.apply(.new(NewOrder(orderId: OrderId(i + 1), side: .buy, price: 5 * 190 + 5 * Price(i % 5), quantity: 2)), to: &events)
        }
        #expect(c.restingOrderCount == 7 && c.consistencyError() == nil && b.consistencyError() == nil)
        #expect(pools.liveOrders == 8)
    }

    @Test("a snapshot restores into a book on shared pools (its ladders grow to the levels it needs); one that does not fit what the pools have free is refused and gives back what it took; a header claiming more orders than its bytes hold is refused before any allocation")
    func snapshotIntoSharedPools() throws {
        let spec = SymbolSpec(name: "DEEP", id: 9, tickSize: 1, lotSize: 1, minPrice: 1, maxPrice: 1_000_000, maxOrderQuantity: 100)
        var source = try OrderBook(spec: spec, capacity: BookCapacity(orders: 4096, levels: 1024))
        var sink = DiscardingSink()
        for i in 0..<3000 {
            let buy = i % 2 == 0
            source.apply(.new(NewOrder(orderId: OrderId(i + 1), side: buy ? .buy : .sell,
                                       price: buy ? 5000 - Price(i % 400) : 6000 + Price(i % 400), quantity: 1 + Quantity(i % 7))), to: &sink)
        }
        let bytes = source.snapshot()
        let pools = try BookPools(orders: 4000, levels: 900)
        var restored = try OrderBook(spec: spec, pools: pools, levels: 512)
        try restored.restore(from: bytes)
        #expect(restored.snapshot() == bytes)
        #expect(restored.consistencyError() == nil)
        #expect(pools.liveOrders == 3000 && pools.liveLevels == 400)
        // A second copy needs 3000 more nodes; the pools have 1000.
        var second = try OrderBook(spec: spec, pools: pools, levels: 512)
        #expect(throws: BookSnapshotError.self) { try second.restore(from: bytes) }
        #expect(second.restingOrderCount == 0 && pools.liveOrders == 3000)
        // A book whose level limit is below the snapshot's levels a side: refused.
        let roomy = try BookPools(orders: 4000, levels: 900)
        var narrow = try OrderBook(spec: spec, pools: roomy, levels: 150)
        #expect(throws: BookSnapshotError.self) { try narrow.restore(from: bytes) }
        #expect(roomy.liveOrders == 0 && roomy.liveLevels == 0)
        // A copy sized by the snapshot (to compare a book on shared pools): the bytes must hold
        // the orders the header claims before anything is allocated for them.
        #expect(try OrderBook.restoring(spec: spec, levels: 512, from: bytes).snapshot() == bytes)
        var forged = bytes
        forged.withUnsafeMutableBytes { $0.storeBytes(of: UInt64(1 << 27).littleEndian, toByteOffset: 16, as: UInt64.self) }
        #expect(throws: BookSnapshotError.self) { _ = try OrderBook.restoring(spec: spec, levels: 512, from: forged) }
    }

    @Test("a quiet book on shared pools costs at most 4 KiB, and pools sized for 1M resting orders fit in 128 MiB (S1's memory targets)")
    func memory() throws {
        let pools = try BookPools(orders: 10_000, levels: 1000)
        let book = try OrderBook(spec: Self.spec(0), pools: pools, levels: 1000)
        #expect(book.allocatedBytes <= 4096, "\(book.allocatedBytes) bytes")
        #expect(BookPools.bytes(orders: 1 << 20, levels: 1 << 18) <= 128 << 20, "\(BookPools.bytes(orders: 1 << 20, levels: 1 << 18)) bytes")
    }
}
