// S1 — thousands of symbols on one shard (issue 14): W1's mix spread over N symbols whose books
// share one set of pools (BookPools), each op's symbol drawn uniformly or by Zipf's law. Limits
// and market orders go to the op's symbol; a cancel names a random live order of any symbol
// (the order's own book takes it), as W1's names a random live order of its one book.

import CPrefetch
import Foundation
import OrderBook

extension Workload {
    /// The symbol (0 ..< symbols) of each of `count` ops: uniform (s = 0), else Zipf with
    /// exponent s (symbol k drawn with weight 1 / (k + 1)^s).
    public static func symbolDraws(count: Int, symbols: Int, zipf s: Double, seed: UInt64 = 1101) -> [UInt32] {
        var rng = SplitMix64(seed: seed)
        let n = max(1, symbols)
        guard s > 0 else { return (0..<count).map { _ in UInt32(rng.next() % UInt64(n)) } }
        var cdf = [Double](repeating: 0, count: n)
        var sum = 0.0
        for k in 0..<n {
            sum += 1 / pow(Double(k + 1), s)
            cdf[k] = sum
        }
        return (0..<count).map { _ in
            let u = Double(rng.next() >> 11) / Double(1 << 53) * sum
            var lo = 0, hi = n - 1
            while lo < hi {
                let mid = (lo + hi) / 2
                if cdf[mid] < u { lo = mid + 1 } else { hi = mid }
            }
            return UInt32(lo)
        }
    }
}

/// Drives a workload through N books on shared pools. The timed loop allocates nothing but a
/// book's ladders when they first grow (a few times per book).
public struct MultiSymbolRunner: ~Copyable {
    public let pools: BookPools
    public let books: UnsafeMutablePointer<OrderBook>
    public let count: Int
    @usableFromInline var sink: TotalsSink
    /// Per order id: the book it went to.
    @usableFromInline let symbolOf: UnsafeMutablePointer<UInt32>

    /// `orders`, `levels`: the shared pools' sizes; `levelsPerBook`: each book's level limit a side.
    public init(symbols: Int, orders: Int, levels: Int, levelsPerBook: Int, maxOrderId: Int) throws(BookConfigError) {
        let pools = try BookPools(orders: orders, levels: levels)
        let books = UnsafeMutablePointer<OrderBook>.allocate(capacity: symbols)
        for k in 0..<symbols {
            do {
                (books + k).initialize(to: try OrderBook(spec: SymbolSpec(name: "S\(k)", id: UInt32(k + 1)), pools: pools, levels: levelsPerBook))
            } catch {
                books.deinitialize(count: k)
                books.deallocate()
                throw error
            }
        }
        self.pools = pools
        self.books = books
        count = symbols
        sink = TotalsSink(maxOrderId: maxOrderId)
        symbolOf = .allocate(capacity: maxOrderId + 1)
        symbolOf.initialize(repeating: 0, count: maxOrderId + 1)
    }

    deinit {
        books.deinitialize(count: count)
        books.deallocate()
        sink.deallocate()
        symbolOf.deallocate()
    }

    public var totals: WorkloadTotals {
        var t = sink.totals
        t.finalLive = sink.liveCount
        for k in 0..<count {
            t.bidLevels += books[k].levelCount(.buy)
            t.askLevels += books[k].levelCount(.sell)
        }
        return t
    }

    /// Bytes the books hold beyond the pools (their structs and ladders).
    public var booksBytes: Int { (0..<count).reduce(0) { $0 + books[$1].allocatedBytes } }

    /// Rests `order` in book `symbol` (not timed, not counted).
    public mutating func rest(_ order: NewOrder, symbol: Int) {
        sink.begin(order.orderId, isMarket: false, quantity: order.quantity)
        symbolOf[Int(order.orderId)] = UInt32(symbol)
        books[symbol].submit(order, to: &sink)
        sink.end(rests: true)
    }

    /// Runs ops; op k carries order id idBase + k + 1 and goes to symbols[k].
    @inlinable
    public mutating func run(_ ops: UnsafeBufferPointer<WorkloadOp>, symbols: UnsafeBufferPointer<UInt32>, idBase: Int) {
        var id = OrderId(idBase)
        for k in 0..<ops.count {
            id += 1
            step(ops[k], Int(symbols[k]), id)
        }
    }

    /// Runs ops as `run` does (the same totals), prefetching across books in three stages:
    /// `distance` × 3 ops ahead the op's book (its fields) or, for a cancel, the live list's
    /// entry; × 2 the new order's id slot and the ladders' tops, or the cancelled order's
    /// book index; × 1 the best levels and the next free node, or the cancelled order's book.
    /// Which order a cancel names is a guess made from the live list now (the ops between
    /// change it): a wrong guess costs a wasted hint, never a different result.
    @inlinable
    public mutating func run(_ ops: UnsafeBufferPointer<WorkloadOp>, symbols: UnsafeBufferPointer<UInt32>, idBase: Int, distance: Int) {
        guard distance > 0 else { return run(ops, symbols: symbols, idBase: idBase) }
        let d = distance
        let n = ops.count
        var id = OrderId(idBase)
        for k in 0..<n {
            if k + 3 * d < n { stageOne(ops[k + 3 * d], Int(symbols[k + 3 * d])) }
            if k + 2 * d < n { stageTwo(ops[k + 2 * d], Int(symbols[k + 2 * d]), id: id + OrderId(2 * d + 1)) }
            if k + d < n { stageThree(ops[k + d], Int(symbols[k + d])) }
            id += 1
            step(ops[k], Int(symbols[k]), id)
        }
    }

    @inlinable @inline(__always)
    func prefetchBook(_ symbol: Int) {
        let p = UnsafeRawPointer(books + symbol)
        for line in stride(from: 0, to: MemoryLayout<OrderBook>.stride, by: 64) { cb_prefetch_write(p + line) }
    }

    @inlinable @inline(__always)
    func guessCancel(_ op: WorkloadOp) -> OrderId? {
        guard sink.liveCount > 0 else { return nil }
        return sink.live[Int(op.pick % UInt64(sink.liveCount))]
    }

    @inlinable @inline(__always)
    func stageOne(_ op: WorkloadOp, _ symbol: Int) {
        if op.kind == .cancel {
            if sink.liveCount > 0 { cb_prefetch_write(sink.live + Int(op.pick % UInt64(sink.liveCount))) }
        } else {
            prefetchBook(symbol)
        }
    }

    @inlinable @inline(__always)
    func stageTwo(_ op: WorkloadOp, _ symbol: Int, id: OrderId) {
        switch op.kind {
        case .limit:
            books[symbol].prefetchSlot(of: id)
            books[symbol].prefetchTops()
        case .market:
            books[symbol].prefetchTops()
        case .cancel, .replace:
            if let target = guessCancel(op) { cb_prefetch_write(symbolOf + Int(target)) }
        }
    }

    @inlinable @inline(__always)
    func stageThree(_ op: WorkloadOp, _ symbol: Int) {
        switch op.kind {
        case .limit:
            books[symbol].prefetchBestLevels()
            pools.prefetchNextNode()
        case .market:
            books[symbol].prefetchBestLevels()
        case .cancel, .replace:
            if let target = guessCancel(op) { prefetchBook(Int(symbolOf[Int(target)])) }
        }
    }

    @inlinable @inline(__always)
    mutating func step(_ op: WorkloadOp, _ symbol: Int, _ id: OrderId) {
        switch op.kind {
        case .limit:
            sink.totals.limits += 1
            sink.begin(id, isMarket: false, quantity: op.quantity)
            symbolOf[Int(id)] = UInt32(symbol)
            books[symbol].submit(NewOrder(orderId: id, side: op.side, price: op.price, quantity: op.quantity), to: &sink)
            sink.end(rests: true)
        case .market:
            sink.totals.marketOrders += 1
            sink.begin(id, isMarket: true, quantity: op.quantity)
            books[symbol].submit(NewOrder(orderId: id, side: op.side, type: .market, price: 0, quantity: op.quantity,
                                          timeInForce: .ioc), to: &sink)
            sink.end(rests: false)
        case .cancel, .replace:
            // W1 has no replaces; a replace is counted as a cancel's no-op here.
            guard op.kind == .cancel, sink.liveCount > 0 else {
                if op.kind == .cancel { sink.totals.cancelNoOps += 1 } else { sink.totals.replaceNoOps += 1 }
                return
            }
            sink.totals.cancels += 1
            let target = sink.live[Int(op.pick % UInt64(sink.liveCount))]
            books[Int(symbolOf[Int(target)])].cancel(CancelOrder(orderId: target), to: &sink)
        }
    }
}
