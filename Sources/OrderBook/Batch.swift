// The book, batch-aware: a deep book's cancel or replace is bound by memory latency (the id
// table's line, then the order's node, then its FIFO neighbours and its level: each a miss
// that depends on the one before). Given a batch, the book asks for the lines of the commands
// ahead while it applies the current one (software pipelining in three stages), so that
// several misses are in flight at once instead of one after another.
//
// Prefetches are hints: they change no state and no result. `apply(batch:)` emits exactly the
// events that `apply` one command at a time emits (tested against it: BookBatchTests).

import CPrefetch

extension OrderBook {
    /// How far ahead each stage runs, in commands: the id table's line 3 × this ahead, the
    /// node 2 ×, its neighbours and level 1 ×.
    public static let prefetchDistance = 3

    /// Below this many resting orders a book's nodes and id table stay in the core's caches
    /// (16,384 orders: 512 KiB of nodes, 256 KiB of id slots): prefetching would only cost.
    public static let prefetchThreshold = 16_384

    /// Whether the batch path prefetches for this book now (it is deep enough to miss), with
    /// `threshold` resting orders or more.
    @inlinable @inline(__always)
    public func prefetches(threshold: Int = prefetchThreshold) -> Bool { liveOrders >= threshold }

    /// Stage 1 for the order `id` names: the id table's line where its probe starts.
    @inlinable @inline(__always)
    public func prefetchSlot(of id: OrderId) {
        if id != 0 { cb_prefetch_write(store.slots + store.home(id)) }
    }

    /// Stage 2: the node of the order at `id`'s home slot (its slot's line should be in cache
    /// by now; an order further along its probe run, or another order's node, is only a
    /// wasted hint).
    @inlinable @inline(__always)
    public func prefetchOrder(of id: OrderId) {
        guard id != 0 else { return }
        let handle = store.slots[store.home(id)].handle
        if handle != 0 { cb_prefetch_write(store.nodes + Int(handle)) }
    }

    /// Stage 3: what a cancel or replace of `id` touches besides its node: its neighbours in
    /// the level's FIFO and the level.
    @inlinable @inline(__always)
    public func prefetchNeighbours(of id: OrderId) {
        guard id != 0 else { return }
        let handle = store.slots[store.home(id)].handle
        guard handle != 0 else { return }
        let node = store.nodes[Int(handle)]
        guard node.id == id else { return }
        cb_prefetch_write(store.nodes + Int(node.next))
        cb_prefetch_write(store.nodes + Int(node.prev))
        cb_prefetch_write(store.levels + Int(node.level))
    }

    /// Across books (many symbols on shared pools, whose books are not in the caches): the
    /// top of each side's ladder, which a new or market order reads first (a taker checks the
    /// opposite side's best, a resting order finds its level near its own side's top). The
    /// book's own fields should be in cache (prefetched a stage before).
    @inlinable @inline(__always)
    public func prefetchTops() {
        if bidLevels > 0 {
            cb_prefetch_write(ladderHandles + (bidLevels - 1))
            cb_prefetch_write(ladderKeys + (bidLevels - 1))
        }
        if askLevels > 0 {
            cb_prefetch_write(ladderHandles + (ladderCapacity + askLevels - 1))
            cb_prefetch_write(ladderKeys + (ladderCapacity + askLevels - 1))
        }
    }

    /// The best level of each side (a stage after `prefetchTops`).
    @inlinable @inline(__always)
    public func prefetchBestLevels() {
        if bidLevels > 0 { cb_prefetch_write(store.levels + Int(ladderHandles[bidLevels - 1])) }
        if askLevels > 0 { cb_prefetch_write(store.levels + Int(ladderHandles[ladderCapacity + askLevels - 1])) }
    }

    /// The order a command looks up (cancel, replace), if any.
    @inlinable @inline(__always)
    static func target(_ command: BookCommand) -> OrderId? {
        switch command {
        case .cancel(let c): c.orderId
        case .replace(let r): r.orderId
        case .new: nil
        }
    }

    /// Stage 1 for a command: a new order's id slot (its id is looked up for duplicates), or
    /// the slot of the order a cancel or replace names.
    @inlinable @inline(__always)
    func prefetchFirst(_ command: BookCommand) {
        switch command {
        case .new(let o): prefetchSlot(of: o.orderId)
        case .cancel(let c): prefetchSlot(of: c.orderId)
        case .replace(let r): prefetchSlot(of: r.orderId)
        }
    }

    /// Applies `commands` in order, as `apply` one by one would (the same events, the same
    /// book), prefetching the lines of the commands ahead of the current one.
    /// `threshold`: prefetch only for a book with at least that many resting orders.
    @inlinable
    public mutating func apply<S: BookEventSink>(batch commands: UnsafeBufferPointer<BookCommand>, to sink: inout S,
                                                 threshold: Int = prefetchThreshold) {
        let n = commands.count
        let before = enterPools()
        defer { leavePools(before) }
        guard prefetches(threshold: threshold) else {
            for command in commands { applyInPools(command, to: &sink) }
            return
        }
        let d = Self.prefetchDistance
        // The pipeline's start: the first commands' stages, as far as their distances allow.
        for k in 0..<min(n, 3 * d) { prefetchFirst(commands[k]) }
        for k in 0..<min(n, 2 * d) { if let id = Self.target(commands[k]) { prefetchOrder(of: id) } }
        for k in 0..<min(n, d) { if let id = Self.target(commands[k]) { prefetchNeighbours(of: id) } }
        for k in 0..<n {
            if k + 3 * d < n { prefetchFirst(commands[k + 3 * d]) }
            if k + 2 * d < n, let id = Self.target(commands[k + 2 * d]) { prefetchOrder(of: id) }
            if k + d < n, let id = Self.target(commands[k + d]) { prefetchNeighbours(of: id) }
            applyInPools(commands[k], to: &sink)
        }
    }
}
