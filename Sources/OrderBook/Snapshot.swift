// A book's state as bytes, and back: for snapshots (recovery starts from one, then replays the
// journal after it) and, later, for moving a hot symbol between shards. Pure bytes, no I/O.
//
// Layout (little-endian):
//   0   magic "CBBOOK01" (u64), version (u32), symbol id (u32), order count (u64),
//       bid levels (u32), ask levels (u32)
//   32  per resting order, best price first then time priority, bids then asks, 32 bytes:
//       order id (i64), price (i64), open quantity (i64), account (u32), side (u8),
//       self-trade prevention (u8), 2 reserved
//   end checksum of everything before it (u64): version 2, FNV-1a 64 over 8-byte words (the
//       layout is a whole number of words); version 1 (still read), FNV-1a 64 byte by byte, 8
//       times slower (it was most of the time a snapshot took). The snapshot file that holds
//       these bytes adds its own CRC32C; this one catches a wrong buffer in memory.

public enum BookSnapshotError: Error, Equatable, CustomStringConvertible {
    case badHeader(String)
    case checksum
    case invalidOrder(index: Int, String)
    case capacity(String)

    public var description: String {
        switch self {
        case .badHeader(let why): "book snapshot: \(why)"
        case .checksum: "book snapshot: checksum mismatch"
        case .invalidOrder(let i, let why): "book snapshot: order #\(i): \(why)"
        case .capacity(let why): "book snapshot: \(why)"
        }
    }
}

public enum BookSnapshotLayout {
    /// "CBBOOK01" as it lies in memory.
    public static let magic: UInt64 = UInt64(littleEndian: 0x3130_4B4F_4F42_4243)
    /// The version written; 1 and 2 are read.
    public static let version: UInt32 = 2
    public static let headerSize = 32
    public static let orderSize = 32

    public static func size(orders: Int) -> Int { headerSize + orders * orderSize + 8 }

    /// The same snapshot with every order id passed through `transform` (its place in the
    /// snapshot, its id; and the checksum made again, version 2); nil when the bytes are not a
    /// whole snapshot of this layout, or two orders would get the same id.
    public static func rewritingOrderIds(_ bytes: [UInt8], _ transform: (Int, OrderId) -> OrderId) -> [UInt8]? {
        guard bytes.count >= size(orders: 0) else { return nil }
        var out = bytes
        let ok = out.withUnsafeMutableBytes { p -> Bool in
            guard p.loadUnaligned(as: UInt64.self) == magic else { return false }
            let count = Int(UInt64(littleEndian: p.loadUnaligned(fromByteOffset: 16, as: UInt64.self)))
            guard count < 1 << 28, bytes.count == size(orders: count) else { return false }
            let version = UInt32(littleEndian: p.loadUnaligned(fromByteOffset: 8, as: UInt32.self))
            let end = headerSize + count * orderSize
            guard (version == 1 || version == 2),
                  UInt64(littleEndian: p.loadUnaligned(fromByteOffset: end, as: UInt64.self)) == checksum(UnsafeRawBufferPointer(rebasing: p[0..<end]), version: version) else { return false }
            var seen = Set<OrderId>(minimumCapacity: count)
            for i in 0..<count {
                let at = headerSize + i * orderSize
                let id = transform(i, OrderId(littleEndian: p.loadUnaligned(fromByteOffset: at, as: OrderId.self)))
                guard seen.insert(id).inserted else { return false }
                p.storeBytes(of: id.littleEndian, toByteOffset: at, as: OrderId.self)
            }
            p.storeBytes(of: Self.version.littleEndian, toByteOffset: 8, as: UInt32.self)
            p.storeBytes(of: checksum(UnsafeRawBufferPointer(rebasing: p[0..<end]), version: Self.version).littleEndian, toByteOffset: end, as: UInt64.self)
            return true
        }
        return ok ? out : nil
    }

    /// The trailing checksum of a snapshot of `version` over `bytes` (everything before it).
    public static func checksum(_ bytes: UnsafeRawBufferPointer, version: UInt32) -> UInt64 {
        version == 1 ? fnv1a(bytes) : fnv1aWords(bytes)
    }
}

/// FNV-1a 64 over little-endian 8-byte words, then any bytes left.
func fnv1aWords(_ bytes: UnsafeRawBufferPointer) -> UInt64 {
    var hash: UInt64 = 0xCBF2_9CE4_8422_2325
    var i = 0
    while i + 8 <= bytes.count {
        hash = (hash ^ UInt64(littleEndian: bytes.loadUnaligned(fromByteOffset: i, as: UInt64.self))) &* 0x0000_0100_0000_01B3
        i += 8
    }
    while i < bytes.count {
        hash = (hash ^ UInt64(bytes[i])) &* 0x0000_0100_0000_01B3
        i += 1
    }
    return hash
}

func fnv1a(_ bytes: UnsafeRawBufferPointer) -> UInt64 {
    var hash: UInt64 = 0xCBF2_9CE4_8422_2325
    for b in bytes { hash = (hash ^ UInt64(b)) &* 0x0000_0100_0000_01B3 }
    return hash
}

extension OrderBook {
    /// The book's resting orders, in priority order, as bytes.
    public func snapshot() -> [UInt8] {
        let count = liveOrders
        var out = [UInt8](repeating: 0, count: BookSnapshotLayout.size(orders: count))
        out.withUnsafeMutableBytes { raw in
            let p = raw.baseAddress!
            p.storeBytes(of: BookSnapshotLayout.magic, toByteOffset: 0, as: UInt64.self)
            p.storeBytes(of: BookSnapshotLayout.version.littleEndian, toByteOffset: 8, as: UInt32.self)
            p.storeBytes(of: store.symbolId.littleEndian, toByteOffset: 12, as: UInt32.self)
            p.storeBytes(of: UInt64(count).littleEndian, toByteOffset: 16, as: UInt64.self)
            p.storeBytes(of: UInt32(bidLevels).littleEndian, toByteOffset: 24, as: UInt32.self)
            p.storeBytes(of: UInt32(askLevels).littleEndian, toByteOffset: 28, as: UInt32.self)
            var offset = BookSnapshotLayout.headerSize
            for side in Side.allCases {
                var i = ladderCount(side) - 1
                while i >= 0 {
                    let lv = Int(ladderHandles[ladderBase(side) + i])
                    let price = levels[lv].price
                    var h = levels[lv].head
                    while h != 0 {
                        let node = nodes[Int(h)]
                        p.storeBytes(of: node.id.littleEndian, toByteOffset: offset, as: Int64.self)
                        p.storeBytes(of: price.littleEndian, toByteOffset: offset + 8, as: Int64.self)
                        p.storeBytes(of: node.open.littleEndian, toByteOffset: offset + 16, as: Int64.self)
                        p.storeBytes(of: node.account.littleEndian, toByteOffset: offset + 24, as: UInt32.self)
                        p.storeBytes(of: side.rawValue, toByteOffset: offset + 28, as: UInt8.self)
                        p.storeBytes(of: node.selfTradePrevention.rawValue, toByteOffset: offset + 29, as: UInt8.self)
                        offset += BookSnapshotLayout.orderSize
                        h = node.next
                    }
                    i -= 1
                }
            }
            let sum = BookSnapshotLayout.checksum(UnsafeRawBufferPointer(start: p, count: offset), version: BookSnapshotLayout.version)
            p.storeBytes(of: sum.littleEndian, toByteOffset: offset, as: UInt64.self)
        }
        return out
    }

    /// A book holding exactly the orders of a snapshot, in the same priority.
    public static func restoring(spec: SymbolSpec, capacity: BookCapacity, from bytes: [UInt8]) throws(BookSnapshotError) -> OrderBook {
        var book: OrderBook
        do {
            book = try OrderBook(spec: spec, capacity: capacity)
        } catch {
            throw .capacity("\(error)")
        }
        try book.restore(from: bytes)
        return book
    }

    /// A book with pools of its own sized for a snapshot's orders (at most `levels` a side):
    /// for comparing a book on shared pools, which may hold more than a per-book capacity.
    public static func restoring(spec: SymbolSpec, levels: Int, from bytes: [UInt8]) throws(BookSnapshotError) -> OrderBook {
        guard bytes.count >= BookSnapshotLayout.headerSize + 8 else { throw .badHeader("\(bytes.count) bytes is too short") }
        let count = bytes.withUnsafeBytes { UInt64(littleEndian: $0.loadUnaligned(fromByteOffset: 16, as: UInt64.self)) }
        // The bytes must hold that many orders before anything is allocated for them.
        guard count < 1 << 28, bytes.count == BookSnapshotLayout.size(orders: Int(count)) else {
            throw .capacity("\(count) orders do not fit the \(bytes.count) bytes")
        }
        return try restoring(spec: spec, capacity: BookCapacity(orders: max(1, Int(count)), levels: max(2, 2 * levels)), from: bytes)
    }

    /// Fills an empty book from a snapshot. Every field is checked: a snapshot from elsewhere is
    /// input like any other.
    public mutating func restore(from bytes: [UInt8]) throws(BookSnapshotError) {
        guard liveOrders == 0 else { throw .capacity("restore needs an empty book") }
        let before = enterPools()
        defer { leavePools(before) }
        // What the pools have free (shared pools: the other books hold the rest; an empty book
        // with pools of its own has them all).
        let spec = (id: store.symbolId, orders: Int(store.orderCapacity) - (store.ownsPools ? 0 : store.pool.pointee.liveOrders),
                    levels: Int(store.levelCapacity) - (store.ownsPools ? 0 : store.pool.pointee.liveLevels))
        guard bytes.count >= BookSnapshotLayout.headerSize + 8 else { throw .badHeader("\(bytes.count) bytes is too short") }
        var failure: BookSnapshotError?
        bytes.withUnsafeBytes { raw in
            let p = raw.baseAddress!
            let load64 = { (o: Int) in UInt64(littleEndian: p.loadUnaligned(fromByteOffset: o, as: UInt64.self)) }
            let load32 = { (o: Int) in UInt32(littleEndian: p.loadUnaligned(fromByteOffset: o, as: UInt32.self)) }
            guard p.loadUnaligned(as: UInt64.self) == BookSnapshotLayout.magic else { failure = .badHeader("wrong magic"); return }
            let version = load32(8)
            guard version == 1 || version == BookSnapshotLayout.version else { failure = .badHeader("version \(version)"); return }
            guard load32(12) == spec.id else { failure = .badHeader("symbol id \(load32(12)), expected \(spec.id)"); return }
            let count = load64(16)
            guard count <= UInt64(spec.orders), bytes.count == BookSnapshotLayout.size(orders: Int(count)) else {
                failure = .capacity("\(count) orders do not fit the capacity \(spec.orders) or the \(bytes.count) bytes")
                return
            }
            let end = BookSnapshotLayout.headerSize + Int(count) * BookSnapshotLayout.orderSize
            guard BookSnapshotLayout.checksum(UnsafeRawBufferPointer(start: p, count: end), version: version) == load64(end) else {
                failure = .checksum
                return
            }
            // Pass 1, nothing changed yet: every order checked, and the levels found (runs of one
            // price). Priority order: bids by falling price, then asks by rising price, each
            // level whole.
            var previous: (side: Side, price: Price)?
            var runs: [(start: Int, end: Int, side: Side, price: Price)] = []
            for i in 0..<Int(count) {
                let o = BookSnapshotLayout.headerSize + i * BookSnapshotLayout.orderSize
                let price = Int64(bitPattern: load64(o + 8))
                let open = Int64(bitPattern: load64(o + 16))
                guard let side = Side(rawValue: p.load(fromByteOffset: o + 28, as: UInt8.self)),
                      SelfTradePrevention(rawValue: p.load(fromByteOffset: o + 29, as: UInt8.self)) != nil,
                      p.loadUnaligned(fromByteOffset: o + 30, as: UInt16.self) == 0
                else { failure = .invalidOrder(index: i, "bad side, mode or reserved bytes"); return }
                if let reason = store.validateQuantity(open) ?? store.validatePrice(price) {
                    failure = .invalidOrder(index: i, reason.name)
                    return
                }
                if let prev = previous {
                    let ordered = prev.side == side ? (side == .buy ? price <= prev.price : price >= prev.price)
                        : (prev.side == .buy && side == .sell)
                    guard ordered else { failure = .invalidOrder(index: i, "out of priority order"); return }
                }
                previous = (side, price)
                if let last = runs.last, last.side == side, last.price == price {
                    runs[runs.count - 1].end = i + 1
                } else {
                    runs.append((i, i + 1, side, price))
                }
            }
            guard runs.count <= spec.levels else { failure = .capacity("more price levels than the capacity \(spec.levels)"); return }
            for side in Side.allCases where runs.lazy.filter({ $0.side == side }).count > Int(store.levelLimit) {
                failure = .capacity("more \(side) price levels than the book's limit \(store.levelLimit)")
                return
            }
            // Pass 2: the levels from the worst price in, so that each new level goes at the end
            // of its ladder (the best price is kept last): a book of n levels restores in O(n),
            // not O(n^2) moves. Orders within a level in their order: their priority.
            for side in [Side.buy, .sell] {
                for run in runs.reversed() where run.side == side {
                    for i in run.start..<run.end {
                        let o = BookSnapshotLayout.headerSize + i * BookSnapshotLayout.orderSize
                        let id = Int64(bitPattern: load64(o))
                        guard store.lookup(id) == 0 else { failure = .invalidOrder(index: i, "duplicate order id \(id)"); return }
                        let h = allocateOrder()
                        nodes[Int(h)].id = id
                        nodes[Int(h)].open = Int64(bitPattern: load64(o + 16))
                        nodes[Int(h)].account = load32(o + 24)
                        nodes[Int(h)].side = side
                        nodes[Int(h)].selfTradePrevention = SelfTradePrevention(rawValue: p.load(fromByteOffset: o + 29, as: UInt8.self))!
                        store.insertId(h)
                        var ignore = DiscardingSink()
                        rest(h, run.price, &ignore)
                    }
                }
            }
            if let bid = bestBid, let ask = bestAsk, bid.price >= ask.price {
                failure = .invalidOrder(index: Int(count) - 1, "the book would be crossed")
            }
        }
        if let failure { throw failure }
    }
}
