// The fixed, seeded benchmark workloads W1 and W2 (bench/README.md gives their definition):
// SplitMix64 draws, ops prepared before the clock starts, and a runner that drives an
// OrderBook and keeps the totals that prove two engines did the same work.

import CPrefetch
import OrderBook

/// SplitMix64, exactly as the workload definition gives it.
@frozen
public struct SplitMix64 {
    public var state: UInt64

    @inlinable
    public init(seed: UInt64) { state = seed }

    @inlinable
    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

/// One prepared operation. Cancels and replaces name a position in the live list (`pick`),
/// because which order that is depends on what happened before.
@frozen
public struct WorkloadOp: Sendable {
    @frozen
    public enum Kind: UInt8 {
        case limit
        case market
        case cancel
        case replace
    }

    public var kind: Kind
    public var side: Side
    public var price: Price
    public var quantity: Quantity
    /// Cancel and replace: live[pick % live.count].
    public var pick: UInt64
    /// Replace: the c draw (even: halve the quantity in place; odd: move the price away).
    public var modifier: UInt64

    @inlinable
    public init(kind: Kind, side: Side, price: Price, quantity: Quantity, pick: UInt64 = 0, modifier: UInt64 = 0) {
        self.kind = kind
        self.side = side
        self.price = price
        self.quantity = quantity
        self.pick = pick
        self.modifier = modifier
    }
}

/// A workload: warm-up orders (not timed) and the timed ops.
public struct Workload: Sendable {
    public var name: String
    public var warmup: [NewOrder]
    public var ops: [WorkloadOp]

    /// W1 — mixed, shallow book: 70% GTC limits, 20% cancels, 10% market orders.
    public static func w1(seed: UInt64 = 42, count: Int = 1_000_000) -> Workload {
        var rng = SplitMix64(seed: seed)
        var ops: [WorkloadOp] = []
        ops.reserveCapacity(count)
        for _ in 0..<count {
            let a = rng.next(), b = rng.next(), c = rng.next(), d = rng.next()
            let t = a % 100
            if t < 70 {
                ops.append(WorkloadOp(kind: .limit, side: b & 1 == 1 ? .buy : .sell,
                                      price: 9950 + Price(c % 101), quantity: 1 + Quantity(d % 100)))
            } else if t < 90 {
                ops.append(WorkloadOp(kind: .cancel, side: .buy, price: 0, quantity: 0, pick: b))
            } else {
                ops.append(WorkloadOp(kind: .market, side: b & 1 == 1 ? .buy : .sell, price: 0,
                                      quantity: 1 + Quantity(d % 100)))
            }
        }
        return Workload(name: "W1", warmup: [], ops: ops)
    }

    /// W2 — deep book: 100,000 warm-up orders, then 55% limits that never cross, 30% cancels,
    /// 10% replaces, 5% market orders.
    public static func w2(seed: UInt64 = 7, warmupCount: Int = 100_000, count: Int = 1_000_000) -> Workload {
        var rng = SplitMix64(seed: seed)
        var warmup: [NewOrder] = []
        warmup.reserveCapacity(warmupCount)
        for k in 0..<warmupCount {
            let a = rng.next(), b = rng.next()
            _ = rng.next()
            _ = rng.next()
            let buy = k % 2 == 0
            let off = 1 + Price(a % 500)
            warmup.append(NewOrder(orderId: OrderId(k + 1), side: buy ? .buy : .sell,
                                   price: buy ? 100_000 - off : 100_000 + off, quantity: 1 + Quantity(b % 100)))
        }
        var ops: [WorkloadOp] = []
        ops.reserveCapacity(count)
        for _ in 0..<count {
            let a = rng.next(), b = rng.next(), c = rng.next(), d = rng.next()
            let t = a % 100
            if t < 55 {
                let buy = b & 1 == 1
                let off = 1 + Price(c % 500)
                ops.append(WorkloadOp(kind: .limit, side: buy ? .buy : .sell,
                                      price: buy ? 100_000 - off : 100_000 + off, quantity: 1 + Quantity(d % 100)))
            } else if t < 85 {
                ops.append(WorkloadOp(kind: .cancel, side: .buy, price: 0, quantity: 0, pick: b))
            } else if t < 95 {
                ops.append(WorkloadOp(kind: .replace, side: .buy, price: 0, quantity: 0, pick: b, modifier: c))
            } else {
                ops.append(WorkloadOp(kind: .market, side: b & 1 == 1 ? .buy : .sell, price: 0,
                                      quantity: 1 + Quantity(d % 500)))
            }
        }
        return Workload(name: "W2", warmup: warmup, ops: ops)
    }

    /// The largest order id the workload uses (ids are 1...warmup + ops).
    public var maxOrderId: Int { warmup.count + ops.count }

    /// The book capacity a user would configure for this workload: room for its peak of
    /// resting orders with margin (W1 keeps about ten resting, W2 about 100,000).
    public var capacity: BookCapacity {
        warmup.isEmpty ? BookCapacity(orders: 1 << 16, levels: 1 << 12) : BookCapacity(orders: 1 << 18, levels: 1 << 14)
    }
}

/// The totals a run prints; equal totals mean two engines did the same work.
public struct WorkloadTotals: Equatable, Sendable, CustomStringConvertible {
    public var limits = 0
    public var rested = 0
    /// Cancels that removed an order (no-ops, on an empty live list, are counted apart).
    public var cancels = 0
    public var cancelNoOps = 0
    public var replaces = 0
    public var replaceNoOps = 0
    public var marketOrders = 0
    public var marketFilledQuantity: Int64 = 0
    public var fills = 0
    public var tradedQuantity: Int64 = 0
    public var rejects = 0
    public var finalLive = 0
    public var bidLevels = 0
    public var askLevels = 0

    public init() {}

    public var description: String {
        "limits \(limits); rested \(rested); cancels \(cancels); cancel no-ops \(cancelNoOps); "
            + "replaces \(replaces); replace no-ops \(replaceNoOps); market orders \(marketOrders); "
            + "market filled quantity \(marketFilledQuantity); fills \(fills); traded quantity \(tradedQuantity); "
            + "rejects \(rejects); final live \(finalLive); bid levels \(bidLevels); ask levels \(askLevels)"
    }
}

/// Drives a workload through a book. All state lives in preallocated buffers, so the timed
/// loop allocates nothing: the live list and each id's position in it. A replace reads the
/// order's side, price and open quantity from the book.
public struct WorkloadRunner: ~Copyable {
    public var book: OrderBook
    @usableFromInline var sink: TotalsSink
    /// The batch path's guesses (run(_:idBase:batch:)): per op of a batch, the live count's
    /// expected change before it.
    @usableFromInline let delta: UnsafeMutablePointer<Int>
    /// Per op of a batch, the order it is guessed to name (0: none).
    @usableFromInline let targets: UnsafeMutablePointer<OrderId>

    public init(workload: Workload, capacity: BookCapacity? = nil) throws(BookConfigError) {
        let spec = SymbolSpec(name: workload.name, id: 1)
        book = try OrderBook(spec: spec, capacity: capacity ?? workload.capacity)
        sink = TotalsSink(maxOrderId: workload.maxOrderId)
        delta = .allocate(capacity: Self.maxBatch)
        delta.initialize(repeating: 0, count: Self.maxBatch)
        targets = .allocate(capacity: Self.maxBatch)
        targets.initialize(repeating: 0, count: Self.maxBatch)
    }

    deinit {
        sink.deallocate()
        delta.deallocate()
        targets.deallocate()
    }

    public var totals: WorkloadTotals {
        var t = sink.totals
        t.finalLive = sink.liveCount
        t.bidLevels = book.levelCount(.buy)
        t.askLevels = book.levelCount(.sell)
        return t
    }

    /// Rests the warm-up orders (not part of the timed work).
    public mutating func warmUp(_ workload: Workload) {
        for order in workload.warmup {
            sink.begin(order.orderId, isMarket: false, quantity: order.quantity)
            book.submit(order, to: &sink)
            sink.end(rests: true)
        }
        sink.totals = WorkloadTotals()
    }

    /// Runs ops[range]; op k carries order id warmup + k + 1.
    @inlinable
    public mutating func run(_ ops: UnsafeBufferPointer<WorkloadOp>, idBase: Int) {
        var id = OrderId(idBase)
        for op in ops {
            id += 1
            step(op, id)
        }
    }

    /// The largest batch `run(_:idBase:batch:)` takes.
    public static let maxBatch = 4096

    /// Runs ops[range] as the book's batch path does (OrderBook.apply(batch:)): in batches of
    /// `batch` ops, prefetching the lines of the orders the ops ahead will cancel or replace
    /// while the current one runs. Which order an op names is known only when it runs (a
    /// position in the live list, which the ops before it change): the prefetch guesses it
    /// from the live list now and the ops between (a limit adds one, a cancel removes one; a
    /// market order's fills are not foreseen); a wrong guess costs a wasted hint, never a
    /// different result. The totals equal `run`'s.
    @inlinable
    public mutating func run(_ ops: UnsafeBufferPointer<WorkloadOp>, idBase: Int, batch: Int,
                             distance: Int = OrderBook.prefetchDistance, threshold: Int = OrderBook.prefetchThreshold) {
        guard batch > 1 else { return run(ops, idBase: idBase) }
        let size = min(batch, Self.maxBatch)
        let d = max(1, distance)
        var id = OrderId(idBase)
        var start = 0
        while start < ops.count {
            let end = min(start + size, ops.count)
            // A shallow book is in the caches: one at a time, as the book's batch path does.
            guard book.prefetches(threshold: threshold) else {
                for k in start..<end {
                    id += 1
                    step(ops[k], id)
                }
                start = end
                continue
            }
            // delta[k - start]: the live count's change the ops start..<k are expected to make.
            var sum = 0
            for k in start..<end {
                delta[k - start] = sum
                switch ops[k].kind {
                case .limit: sum += 1
                case .cancel: sum -= 1
                case .market, .replace: break
                }
            }
            // Each op's guess is made once, at its first stage, and followed by the next two.
            for k in start..<min(end, start + 4 * d) { stageZero(ops, k, now: start, start) }
            for k in start..<min(end, start + 3 * d) { stageOne(ops, k, now: start, start, id: id + OrderId(k - start + 1)) }
            for k in start..<min(end, start + 2 * d) { stageTwo(k - start) }
            for k in start..<min(end, start + d) { book.prefetchNeighbours(of: targets[k - start]) }
            for k in start..<end {
                if k + 4 * d < end { stageZero(ops, k + 4 * d, now: k, start) }
                if k + 3 * d < end { stageOne(ops, k + 3 * d, now: k, start, id: id + OrderId(3 * d + 1)) }
                if k + 2 * d < end { stageTwo(k + 2 * d - start) }
                if k + d < end { book.prefetchNeighbours(of: targets[k + d - start]) }
                id += 1
                step(ops[k], id)
            }
            start = end
        }
    }

    /// Stage 0 (the harness's own): the live list's entry a cancel or replace will read.
    @inlinable @inline(__always)
    func stageZero(_ ops: UnsafeBufferPointer<WorkloadOp>, _ k: Int, now: Int, _ start: Int) {
        let op = ops[k]
        guard op.kind == .cancel || op.kind == .replace else { return }
        let count = sink.liveCount + delta[k - start] - delta[now - start]
        if count > 0 { cb_prefetch_write(sink.live + Int(op.pick % UInt64(count))) }
    }

    /// Stage 2: the order's node (the book), and its entry in the harness's id → position map.
    @inlinable @inline(__always)
    func stageTwo(_ i: Int) {
        let target = targets[i]
        guard target != 0 else { return }
        book.prefetchOrder(of: target)
        cb_prefetch_write(sink.position + Int(target))
    }

    /// The first stage for op `k` (`id`: the order id it would carry as a new order): a
    /// limit's id slot (a new order's id is looked up for duplicates), or the guess of the
    /// order a cancel or replace will name and its id slot.
    @inlinable @inline(__always)
    func stageOne(_ ops: UnsafeBufferPointer<WorkloadOp>, _ k: Int, now: Int, _ start: Int, id: OrderId) {
        if ops[k].kind == .limit {
            targets[k - start] = 0
            book.prefetchSlot(of: id)
        } else {
            guess(ops, k, now: now, start)
            book.prefetchSlot(of: targets[k - start])
        }
    }

    /// Guesses the order op `k` will name, before op `now` runs (`start`: the batch's first
    /// op), into targets[k - start] (0: none).
    @inlinable @inline(__always)
    func guess(_ ops: UnsafeBufferPointer<WorkloadOp>, _ k: Int, now: Int, _ start: Int) {
        let op = ops[k]
        targets[k - start] = 0
        guard op.kind == .cancel || op.kind == .replace else { return }
        let count = sink.liveCount + delta[k - start] - delta[now - start]
        guard count > 0 else { return }
        let i = Int(op.pick % UInt64(count))
        if i < sink.liveCount { targets[k - start] = sink.live[i] }
    }

    @inlinable @inline(__always)
    public mutating func step(_ op: WorkloadOp, _ id: OrderId) {
        switch op.kind {
        case .limit:
            sink.totals.limits += 1
            sink.begin(id, isMarket: false, quantity: op.quantity)
            book.submit(NewOrder(orderId: id, side: op.side, price: op.price, quantity: op.quantity), to: &sink)
            sink.end(rests: true)
        case .market:
            sink.totals.marketOrders += 1
            sink.begin(id, isMarket: true, quantity: op.quantity)
            book.submit(NewOrder(orderId: id, side: op.side, type: .market, price: 0, quantity: op.quantity,
                                 timeInForce: .ioc), to: &sink)
            sink.end(rests: false)
        case .cancel:
            guard sink.liveCount > 0 else {
                sink.totals.cancelNoOps += 1
                return
            }
            sink.totals.cancels += 1
            let target = sink.live[Int(op.pick % UInt64(sink.liveCount))]
            book.cancel(CancelOrder(orderId: target), to: &sink)
        case .replace:
            guard sink.liveCount > 0 else {
                sink.totals.replaceNoOps += 1
                return
            }
            sink.totals.replaces += 1
            let target = sink.live[Int(op.pick % UInt64(sink.liveCount))]
            // The book knows the order; asking it brings in the lines the replace then uses.
            guard let order = book.order(target) else {
                sink.totals.replaceNoOps += 1
                return
            }
            var price = order.price
            var quantity = order.open
            if op.modifier & 1 == 0 {
                quantity = max(1, order.open / 2)
            } else {
                let move = 1 + Price((op.modifier >> 1) % 5)
                price = order.side == .buy ? price - move : price + move
            }
            sink.beginReplace(target, quantity: quantity)
            book.replace(ReplaceOrder(orderId: target, price: price, quantity: quantity), to: &sink)
        }
    }
}

/// Follows the book's events to keep the totals and the live list.
@frozen @usableFromInline
struct TotalsSink: BookEventSink {
    @usableFromInline var totals = WorkloadTotals()
    @usableFromInline let live: UnsafeMutablePointer<OrderId>
    @usableFromInline var liveCount = 0
    /// Per order id: its index in `live`, or -1 when it is not live.
    @usableFromInline let position: UnsafeMutablePointer<Int32>
    @usableFromInline var takerId: OrderId = 0
    @usableFromInline var takerOpen: Quantity = 0
    @usableFromInline var takerIsMarket = false
    @usableFromInline var takerRejected = false

    init(maxOrderId: Int) {
        let n = maxOrderId + 1
        live = .allocate(capacity: n)
        live.initialize(repeating: 0, count: n)
        position = .allocate(capacity: n)
        position.initialize(repeating: -1, count: n)
    }

    /// Frees the buffers; the runner that owns this sink calls it once, in its deinit.
    func deallocate() {
        live.deallocate()
        position.deallocate()
    }

    @inlinable @inline(__always)
    mutating func begin(_ id: OrderId, isMarket: Bool, quantity: Quantity) {
        takerId = id
        takerOpen = quantity
        takerIsMarket = isMarket
        takerRejected = false
    }

    @inlinable @inline(__always)
    mutating func beginReplace(_ id: OrderId, quantity: Quantity) {
        takerId = id
        takerOpen = quantity
        takerIsMarket = false
        takerRejected = false
    }

    @inlinable @inline(__always)
    mutating func end(rests: Bool) {
        if rests && !takerRejected && takerOpen > 0 {
            totals.rested += 1
            position[Int(takerId)] = Int32(liveCount)
            live[liveCount] = takerId
            liveCount += 1
        }
    }

    @inlinable @inline(__always)
    mutating func removeLive(_ id: OrderId) {
        let i = Int(position[Int(id)])
        guard i >= 0 else { return }
        liveCount -= 1
        let last = live[liveCount]
        live[i] = last
        position[Int(last)] = Int32(i)
        position[Int(id)] = -1
    }

    @inlinable @inline(__always)
    mutating func on(_ event: BookEvent) {
        switch event {
        case .trade(let makerId, _, _, _, let quantity, let makerOpen, let takerOpenAfter):
            totals.fills += 1
            totals.tradedQuantity += quantity
            if takerIsMarket { totals.marketFilledQuantity += quantity }
            takerOpen = takerOpenAfter
            if makerOpen == 0 { removeLive(makerId) }
            // A replaced order that crossed and filled completely leaves the book too.
            if takerOpenAfter == 0 && position[Int(takerId)] >= 0 { removeLive(takerId) }
        case .cancelled(let id, _, let openAfter, _):
            if openAfter == 0 { removeLive(id) }
        case .rejected:
            totals.rejects += 1
            takerRejected = true
        case .accepted, .replaced, .level:
            break
        }
    }
}
