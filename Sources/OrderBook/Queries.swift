// Read-only views of the book: best prices, L2 depth, L3 orders, the state digest, and a full
// consistency check of the internal structures. None of these is on the match path.

extension OrderBook {
    /// Orders resting now.
    public var restingOrderCount: Int { liveOrders }

    public func levelCount(_ side: Side) -> Int { ladderCount(side) }

    /// The best level of a side, if any.
    public func best(_ side: Side) -> DepthLevel? {
        let n = ladderCount(side)
        guard n > 0 else { return nil }
        let level = levels[Int(ladderHandles[ladderBase(side) + n - 1])]
        return DepthLevel(price: level.price, quantity: level.total, orders: Int(level.count))
    }

    public var bestBid: DepthLevel? { best(.buy) }
    public var bestAsk: DepthLevel? { best(.sell) }

    /// L2: the top `limit` levels of a side, best first.
    public func depth(_ side: Side, limit: Int = .max) -> [DepthLevel] {
        var out: [DepthLevel] = []
        var i = ladderCount(side) - 1
        while i >= 0 && out.count < limit {
            let level = levels[Int(ladderHandles[ladderBase(side) + i])]
            out.append(DepthLevel(price: level.price, quantity: level.total, orders: Int(level.count)))
            i -= 1
        }
        return out
    }

    /// L3: the resting orders of a side in priority order (best price first, then time).
    public func orders(_ side: Side) -> [RestingOrder] {
        var out: [RestingOrder] = []
        var i = ladderCount(side) - 1
        while i >= 0 {
            let lv = Int(ladderHandles[ladderBase(side) + i])
            var h = levels[lv].head
            while h != 0 {
                let node = nodes[Int(h)]
                out.append(RestingOrder(orderId: node.id, account: node.account, side: side,
                                        price: levels[lv].price, open: node.open))
                h = node.next
            }
            i -= 1
        }
        return out
    }

    /// The live order with this id, if it rests.
    public func order(_ id: OrderId) -> RestingOrder? {
        let h = store.lookup(id)
        guard h != 0 else { return nil }
        let node = nodes[Int(h)]
        return RestingOrder(orderId: node.id, account: node.account, side: node.side,
                            price: levels[Int(node.level)].price, open: node.open)
    }

    /// A hash of everything that decides future matching: every resting order in priority order
    /// with its price, id, account, open quantity and self-trade mode. Equal books, equal digests.
    public var digest: UInt64 {
        var hash: UInt64 = 0xCBF2_9CE4_8422_2325
        func mix(_ value: UInt64) {
            var v = value
            for _ in 0..<8 {
                hash = (hash ^ (v & 0xFF)) &* 0x0000_0100_0000_01B3
                v >>= 8
            }
        }
        mix(UInt64(symbolId))
        for side in Side.allCases {
            mix(UInt64(side.rawValue) | 0xA5A5_0000)
            var i = ladderCount(side) - 1
            while i >= 0 {
                let lv = Int(ladderHandles[ladderBase(side) + i])
                mix(UInt64(bitPattern: levels[lv].price))
                var h = levels[lv].head
                while h != 0 {
                    let node = nodes[Int(h)]
                    mix(UInt64(bitPattern: node.id))
                    mix(UInt64(node.account))
                    mix(UInt64(bitPattern: node.open))
                    mix(UInt64(node.selfTradePrevention.rawValue))
                    h = node.next
                }
                i -= 1
            }
        }
        return hash
    }

    /// Checks every internal invariant; returns the first broken one. For tests and for
    /// operators' offline checks (it walks the whole book).
    public func consistencyError() -> String? {
        var seen = 0
        var levelsSeen = 0
        for side in Side.allCases {
            let base = ladderBase(side)
            var previousKey = Int64.min
            for i in 0..<ladderCount(side) {
                let k = ladderKeys[base + i]
                if i > 0 && k <= previousKey { return "\(side) ladder not strictly ascending at \(i)" }
                previousKey = k
                let lv = ladderHandles[base + i]
                let level = levels[Int(lv)]
                if store.key(side, level.price) != k { return "\(side) ladder key \(k) ≠ level price \(level.price)" }
                if level.count == 0 { return "empty level \(level.price) left in the \(side) ladder" }
                var count: UInt32 = 0
                var total: Quantity = 0
                var prev: UInt32 = 0
                var h = level.head
                while h != 0 {
                    let node = nodes[Int(h)]
                    if node.prev != prev { return "order \(node.id): broken back link" }
                    if node.level != lv { return "order \(node.id): wrong level" }
                    if node.side != side { return "order \(node.id): wrong side" }
                    if node.open <= 0 { return "order \(node.id): open quantity \(node.open) rests" }
                    if store.lookup(node.id) != h { return "order \(node.id): not found by id" }
                    count += 1
                    total += node.open
                    prev = h
                    h = node.next
                    if count > store.orderCapacity { return "cycle in level \(level.price)" }
                }
                if prev != level.tail { return "level \(level.price): wrong tail" }
                if count != level.count { return "level \(level.price): count \(level.count), walked \(count)" }
                if total != level.total { return "level \(level.price): total \(level.total), walked \(total)" }
                seen += Int(count)
                levelsSeen += 1
            }
        }
        if let bid = bestBid, let ask = bestAsk, bid.price >= ask.price {
            return "book crossed at rest: bid \(bid.price) ≥ ask \(ask.price)"
        }
        if seen != liveOrders { return "\(liveOrders) live orders counted, \(seen) in levels" }
        var inTable = 0
        for i in 0...store.slotMask where store.slots[i].handle != 0 {
            let slot = store.slots[i]
            // Shared pools: the table holds the other books' orders too (their levels say whose).
            guard store.ownsPools || levels[Int(nodes[Int(slot.handle)].level)].book == store.book else { continue }
            if Int(slot.home) != store.home(nodes[Int(slot.handle)].id) { return "id table slot \(i): wrong home" }
            inTable += 1
        }
        if inTable != liveOrders { return "\(inTable) ids in the table, \(liveOrders) live orders" }
        for side in Side.allCases {
            for i in 0..<ladderCount(side) where levels[Int(ladderHandles[ladderBase(side) + i])].book != store.book {
                return "\(side) level \(i) is marked as another book's"
            }
        }
        return nil
    }
}
