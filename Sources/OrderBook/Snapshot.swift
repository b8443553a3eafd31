// A book's state as bytes, and back: for snapshots (recovery starts from one, then replays the
// journal after it) and, later, for moving a hot symbol between shards. Pure bytes, no I/O.
//
// Layout (little-endian):
//   0   magic "CBBOOK01" (u64), version (u32), symbol id (u32), order count (u64),
//       bid levels (u32), ask levels (u32)
//   32  per resting order, best price first then time priority, bids then asks, 32 bytes:
//       order id (i64), price (i64), open quantity (i64), account (u32), side (u8),
//       self-trade prevention (u8), 2 reserved
//   end checksum of everything before it (u64): version 3, FNV-1a 64 over 8-byte words in four
//       lanes (word i into lane i % 4; the lanes then hashed in order, lane 0 first), four
//       independent multiply chains instead of one; version 2 (still read), FNV-1a 64 over the
//       words in one chain (a fifth of a 10,000-order restore, waiting on the multiplies);
//       version 1 (still read), FNV-1a 64 byte by byte. The snapshot file that holds
//       these bytes adds its own CRC32C; this one catches a wrong buffer in memory.

public enum BookSnapshotError: Error, Equatable, CustomStringConvertible {
    case badHeader(String)
    case checksum
    case invalidOrder(index: Int, String)
    case capacity(String)
    /// Two orders would rest under one id (`rewritingOrderIds`).
    case duplicateOrderId(OrderId)

    public var description: String {
        switch self {
        case .duplicateOrderId(let id): "book snapshot: two orders would have the id \(id)"
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
    /// The version written; 1, 2 and 3 are read.
    public static let version: UInt32 = 3
    static func isKnown(_ version: UInt32) -> Bool { version >= 1 && version <= 3 }
    public static let headerSize = 32
    public static let orderSize = 32

    public static func size(orders: Int) -> Int { headerSize + orders * orderSize + 8 }

    /// The same snapshot with every order id passed through `transform` (its place in the
    /// snapshot, its id; and the checksum made again, in the version written now). Throws when
    /// the bytes are not a whole snapshot of this layout (any bytes: a move's book comes from a
    /// store other processes can write), or when two orders would get the same id.
    public static func rewritingOrderIds(_ bytes: [UInt8], _ transform: (Int, OrderId) -> OrderId) throws(BookSnapshotError) -> [UInt8] {
        guard bytes.count >= size(orders: 0) else { throw .badHeader("\(bytes.count) bytes, less than an empty book's \(size(orders: 0))") }
        var out = bytes
        let failure = out.withUnsafeMutableBytes { p -> BookSnapshotError? in
            guard p.loadUnaligned(as: UInt64.self) == magic else { return .badHeader("not a book snapshot (magic)") }
            // Checked as a UInt64 first: a count above Int.max would trap in the conversion.
            let stored = UInt64(littleEndian: p.loadUnaligned(fromByteOffset: 16, as: UInt64.self))
            guard stored < 1 << 28, bytes.count == size(orders: Int(stored)) else {
                return .badHeader("\(stored) orders in \(bytes.count) bytes")
            }
            let count = Int(stored)
            let version = UInt32(littleEndian: p.loadUnaligned(fromByteOffset: 8, as: UInt32.self))
            let end = headerSize + count * orderSize
            guard isKnown(version) else { return .badHeader("version \(version)") }
            guard UInt64(littleEndian: p.loadUnaligned(fromByteOffset: end, as: UInt64.self)) == checksum(UnsafeRawBufferPointer(rebasing: p[0..<end]), version: version) else {
                return .checksum
            }
            // Two orders with one id: found by sorting the new ids (a tenth of a hash set's time).
            var ids = [OrderId]()
            ids.reserveCapacity(count)
            for i in 0..<count {
                let at = headerSize + i * orderSize
                let old = OrderId(littleEndian: p.loadUnaligned(fromByteOffset: at, as: OrderId.self))
                // As a restore refuses it (restore(from:)): `transform` is given positive ids only.
                guard old >= 1 else { return .invalidOrder(index: i, "order id \(old), below 1") }
                let id = transform(i, old)
                ids.append(id)
                p.storeBytes(of: id.littleEndian, toByteOffset: at, as: OrderId.self)
            }
            ids.sort()
            for i in ids.indices.dropFirst() where ids[i] == ids[i - 1] { return .duplicateOrderId(ids[i]) }
            p.storeBytes(of: Self.version.littleEndian, toByteOffset: 8, as: UInt32.self)
            p.storeBytes(of: checksum(UnsafeRawBufferPointer(rebasing: p[0..<end]), version: Self.version).littleEndian, toByteOffset: end, as: UInt64.self)
            return nil
        }
        if let failure { throw failure }
        return out
    }

    /// The trailing checksum of a snapshot of `version` over `bytes` (everything before it).
    public static func checksum(_ bytes: UnsafeRawBufferPointer, version: UInt32) -> UInt64 {
        switch version {
        case 1: fnv1a(bytes)
        case 2: fnv1aWords(bytes)
        default: fnv1aLanes(bytes)
        }
    }
}

/// FNV-1a 64 over little-endian 8-byte words in four lanes (word i into lane i % 4), the bytes
/// after the last whole group of four words into lane 0; then the four lanes' values hashed
/// in order. Four multiply chains the CPU runs side by side.
func fnv1aLanes(_ bytes: UnsafeRawBufferPointer) -> UInt64 {
    let prime: UInt64 = 0x0000_0100_0000_01B3
    var a: UInt64 = 0xCBF2_9CE4_8422_2325, b = a, c = a, d = a
    var i = 0
    while i + 32 <= bytes.count {
        a = (a ^ UInt64(littleEndian: bytes.loadUnaligned(fromByteOffset: i, as: UInt64.self))) &* prime
        b = (b ^ UInt64(littleEndian: bytes.loadUnaligned(fromByteOffset: i + 8, as: UInt64.self))) &* prime
        c = (c ^ UInt64(littleEndian: bytes.loadUnaligned(fromByteOffset: i + 16, as: UInt64.self))) &* prime
        d = (d ^ UInt64(littleEndian: bytes.loadUnaligned(fromByteOffset: i + 24, as: UInt64.self))) &* prime
        i += 32
    }
    while i < bytes.count {
        a = (a ^ UInt64(bytes[i])) &* prime
        i += 1
    }
    var hash: UInt64 = 0xCBF2_9CE4_8422_2325
    hash = (hash ^ a) &* prime
    hash = (hash ^ b) &* prime
    hash = (hash ^ c) &* prime
    return (hash ^ d) &* prime
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
            guard BookSnapshotLayout.isKnown(version) else { failure = .badHeader("version \(version)"); return }
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
                // Order ids are positive (the engine's carry the owner's session in their top
                // bits: a negative one would name no session, or the wrong one).
                let id = Int64(bitPattern: load64(o))
                guard id >= 1 else { failure = .invalidOrder(index: i, "order id \(id), below 1"); return }
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
            // not O(n^2) moves. Orders within a level in their order: their priority; each level
            // found once, at its first order. The id table's line of the order `ahead` places
            // later is prefetched: its probe is a cache miss otherwise (most of a restore's time).
            let ahead = 16
            var sequence = [Int32]()
            sequence.reserveCapacity(Int(count))
            for side in [Side.buy, .sell] {
                for run in runs.reversed() where run.side == side {
                    for i in run.start..<run.end { sequence.append(Int32(i)) }
                }
            }
            for k in 0..<min(ahead, sequence.count) {
                prefetchSlot(of: Int64(bitPattern: load64(BookSnapshotLayout.headerSize + Int(sequence[k]) * BookSnapshotLayout.orderSize)))
            }
            var k = 0
            for side in [Side.buy, .sell] {
                for run in runs.reversed() where run.side == side {
                    var lv: UInt32 = 0
                    for i in run.start..<run.end {
                        if k + ahead < sequence.count {
                            prefetchSlot(of: Int64(bitPattern: load64(BookSnapshotLayout.headerSize + Int(sequence[k + ahead]) * BookSnapshotLayout.orderSize)))
                        }
                        k += 1
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
                        if lv == 0 {
                            var ignore = DiscardingSink()
                            rest(h, run.price, &ignore)
                            lv = nodes[Int(h)].level
                        } else {
                            link(h, lv)
                        }
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

extension OrderBook {
    /// Whether `clone(of: source)` can make this book a copy of `source`: both with pools of
    /// their own, of the same sizes and rules, and this one never used (as made).
    public func canClone(_ source: borrowing OrderBook) -> Bool {
        let a = store, b = source.store
        return a.ownsPools && b.ownsPools && a.symbolId == b.symbolId && a.book == b.book && a.salt == b.salt
            && a.orderCapacity == b.orderCapacity && a.levelCapacity == b.levelCapacity && a.levelLimit == b.levelLimit
            && a.slotMask == b.slotMask && a.slotShift == b.slotShift && ladderCapacity == source.ladderCapacity
            && a.tickSize == b.tickSize && a.lotSize == b.lotSize && a.minPrice == b.minPrice && a.maxPrice == b.maxPrice
            && a.maxQuantity == b.maxQuantity
            && liveOrders == 0 && bidLevels == 0 && askLevels == 0
            && cursor.orderHighWater == 1 && cursor.levelHighWater == 1 && cursor.freeOrders == 0 && cursor.freeLevels == 0
    }

    /// Makes this book (`canClone(source)`) a copy of `source` by copying its memory: the nodes
    /// and levels used so far, the whole id table, the ladders and the free lists. The same
    /// orders in the same priority, so the same matching from here as `restore(from:
    /// source.snapshot())` gives (equal digests, equal snapshots), with memory copies instead of
    /// an id-table insert per order: a move between shards of one engine takes the book this way
    /// (its bytes are still journaled, and a replay restores them). `source` is only read.
    public mutating func clone(of source: borrowing OrderBook) {
        precondition(canClone(source), "clone(of:) needs a book made alike and never used")
        let from = source.store
        let usedNodes = Int(source.cursor.orderHighWater), usedLevels = Int(source.cursor.levelHighWater)
        store.nodes.update(from: from.nodes, count: usedNodes)
        store.slots.update(from: from.slots, count: store.slotMask + 1)
        store.levels.update(from: from.levels, count: usedLevels)
        ladderKeys.update(from: source.ladderKeys, count: source.bidLevels)
        ladderHandles.update(from: source.ladderHandles, count: source.bidLevels)
        (ladderKeys + ladderCapacity).update(from: source.ladderKeys + ladderCapacity, count: source.askLevels)
        (ladderHandles + ladderCapacity).update(from: source.ladderHandles + ladderCapacity, count: source.askLevels)
        store.pool.pointee = from.pool.pointee
        cursor = source.cursor
        liveOrders = source.liveOrders
        bidLevels = source.bidLevels
        askLevels = source.askLevels
    }
}
