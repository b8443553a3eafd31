// The order book of one symbol: price-time priority, preallocated, no allocation per command.
//
// Memory, all allocated once in `init` and touched there (no page faults later):
// - orders: a pool of 32-byte nodes addressed by UInt32 handles (0 is "none"); each price level
//   is an intrusive doubly linked FIFO through the nodes; free nodes form a free list.
// - ids: an open-addressing table (linear probing, backward-shift deletion, no tombstones) of
//   8-byte slots: the order's handle and its home slot, so that probing past other ids and
//   deleting never read their nodes. At most 2/3 full; consecutive ids share cache lines.
//
// The rules and the pointers never change after `init`: they live in `BookStore`, a `let`,
// so that read-only helpers called from mutating methods need no defensive copy of the book.
// - levels: a pool of 32-byte levels, and per side a sorted ladder of (key, handle) with the best
//   level at the end: the touch is found, added and removed in O(1); a level d places away from
//   the touch costs O(d) to add or remove and O(log n) to find.
//
// The three pools (nodes, id table, levels) are a `BookPools`: a book made with a capacity has
// pools of its own; the books of a shard can share one (`init(spec:pools:levels:)`), so that
// thousands of mostly quiet symbols cost a few hundred bytes each instead of their own
// preallocated pools. A shared id table tells books apart by the id's home slot (the book's
// index is hashed in) and by the level an order rests on (each level carries its book's index).
// The ladders are the book's own: at full size for a book with pools of its own, and growing by
// doubling (up to the book's level limit) for one that shares.

import CPrefetch

/// One resting order: 32 bytes, so that a node never straddles two cache lines and two share
/// one. Handles instead of pointers keep it small; side and self-trade mode ride in the top
/// bits of the level handle (level capacity is below 2^28).
@frozen @usableFromInline
struct OrderNode {
    @usableFromInline var id: OrderId
    @usableFromInline var open: Quantity
    @usableFromInline var account: AccountId
    /// Next in the level's FIFO, or the next free node when on the free list.
    @usableFromInline var next: UInt32
    @usableFromInline var prev: UInt32
    /// level handle (bits 0-27) | side (bit 28) | self-trade prevention (bits 29-31).
    @usableFromInline var packed: UInt32

    @inlinable
    init() {
        id = 0
        open = 0
        account = 0
        next = 0
        prev = 0
        packed = 0
    }

    @inlinable
    var level: UInt32 {
        @inline(__always) get { packed & 0x0FFF_FFFF }
        @inline(__always) set { packed = packed & 0xF000_0000 | newValue }
    }

    @inlinable
    var side: Side {
        @inline(__always) get { packed & 0x1000_0000 == 0 ? .buy : .sell }
        @inline(__always) set { packed = packed & ~0x1000_0000 | (newValue == .buy ? 0 : 0x1000_0000) }
    }

    @inlinable
    var selfTradePrevention: SelfTradePrevention {
        @inline(__always) get { SelfTradePrevention(rawValue: UInt8(packed >> 29)) ?? .none }
        @inline(__always) set { packed = packed & 0x1FFF_FFFF | UInt32(newValue.rawValue) << 29 }
    }
}

/// One price level: its FIFO and its L2 aggregate. 32 bytes.
@frozen @usableFromInline
struct PriceLevel {
    @usableFromInline var price: Price
    @usableFromInline var total: Quantity
    @usableFromInline var head: UInt32
    /// The last order, or the next free level when on the free list.
    @usableFromInline var tail: UInt32
    @usableFromInline var count: UInt32
    /// The index of the book the level belongs to (books sharing pools tell their orders apart
    /// by it). Fills the 4 bytes that were padding.
    @usableFromInline var book: UInt32

    @inlinable
    init() {
        price = 0
        total = 0
        head = 0
        tail = 0
        count = 0
        book = 0
    }
}

/// How much a book preallocates.
public struct BookCapacity: Sendable, Equatable {
    /// The most orders that can rest at once.
    public var orders: Int
    /// The most price levels, both sides together.
    public var levels: Int

    public init(orders: Int, levels: Int) {
        self.orders = orders
        self.levels = levels
    }

    public static let small = BookCapacity(orders: 1 << 16, levels: 1 << 12)

    /// The memory one book of this capacity allocates (and touches) when it is created.
    public var bookBytes: Int {
        PoolMemory.bytes(orders: orders, levels: levels) + 2 * levels * (MemoryLayout<Int64>.stride + MemoryLayout<UInt32>.stride)
    }

    /// Checks that a book of this capacity can hold this symbol; every problem is named.
    public func validate(for spec: SymbolSpec) throws(BookConfigError) {
        // Handles are 28 bits: the order node packs side and STP mode above the level handle.
        guard orders >= 1, orders < 1 << 28 else {
            throw .capacity("orders must be between 1 and \(1 << 28 - 1), got \(orders)")
        }
        guard levels >= 2, levels < 1 << 28 else {
            throw .capacity("levels must be between 2 and \(1 << 28 - 1), got \(levels)")
        }
        // Level totals are sums of open quantities: they must not overflow.
        guard spec.maxOrderQuantity <= Int64.max / Int64(orders) else {
            throw .capacity("symbol \(spec.name): maximum order quantity \(spec.maxOrderQuantity) × \(orders) orders overflows 64 bits")
        }
    }
}

/// A resting order as the queries report it.
public struct RestingOrder: Sendable, Equatable {
    public var orderId: OrderId
    public var account: AccountId
    public var side: Side
    public var price: Price
    public var open: Quantity

    public init(orderId: OrderId, account: AccountId, side: Side, price: Price, open: Quantity) {
        self.orderId = orderId
        self.account = account
        self.side = side
        self.price = price
        self.open = open
    }
}

/// One L2 level as the queries report it.
public struct DepthLevel: Sendable, Equatable {
    public var price: Price
    public var quantity: Quantity
    public var orders: Int

    public init(price: Price, quantity: Quantity, orders: Int) {
        self.price = price
        self.quantity = quantity
        self.orders = orders
    }
}

/// One slot of the id table: 0 is empty.
@frozen @usableFromInline
struct IdSlot {
    @usableFromInline var handle: UInt32
    /// The slot this entry hashes to (its probe run starts there).
    @usableFromInline var home: UInt32

    @inlinable
    init(handle: UInt32, home: UInt32) {
        self.handle = handle
        self.home = home
    }
}

/// How the pools are used now. A book with pools of its own keeps this in its own fields; books
/// that share pools copy it in from here when a command starts and back when it ends (one
/// shard's thread only), so that the hot path is the same for both.
@frozen @usableFromInline
struct PoolState {
    @usableFromInline var cursor = PoolCursor()
    @usableFromInline var liveOrders: Int = 0
    @usableFromInline var liveLevels: Int = 0
    /// Books using the pools now.
    @usableFromInline var books: Int = 0
    /// The index the next book gets (hashed into its ids' homes, written on its levels).
    @usableFromInline var nextBook: UInt32 = 0

    @inlinable
    init() {}
}

/// Where the pools' next node and level come from: the heads of their free lists, and the
/// first handles never used yet (handles below them are live or on a free list).
@frozen @usableFromInline
struct PoolCursor {
    @usableFromInline var orderHighWater: UInt32 = 1
    @usableFromInline var freeOrders: UInt32 = 0
    @usableFromInline var levelHighWater: UInt32 = 1
    @usableFromInline var freeLevels: UInt32 = 0

    @inlinable
    init() {}
}

/// The memory of a set of pools: order nodes, the id table, levels. Copying it copies pointers.
@frozen @usableFromInline
struct PoolMemory {
    @usableFromInline let nodes: UnsafeMutablePointer<OrderNode>
    @usableFromInline let orderCapacity: UInt32
    @usableFromInline let slots: UnsafeMutablePointer<IdSlot>
    @usableFromInline let slotMask: Int
    @usableFromInline let slotShift: UInt64
    @usableFromInline let levels: UnsafeMutablePointer<PriceLevel>
    @usableFromInline let levelCapacity: UInt32
    @usableFromInline let state: UnsafeMutablePointer<PoolState>

    /// Checks the sizes; every problem is named.
    static func validate(orders: Int, levels: Int) throws(BookConfigError) {
        // Handles are 28 bits: the order node packs side and STP mode above the level handle.
        guard orders >= 1, orders < 1 << 28 else {
            throw .capacity("orders must be between 1 and \(1 << 28 - 1), got \(orders)")
        }
        guard levels >= 2, levels < 1 << 28 else {
            throw .capacity("levels must be between 2 and \(1 << 28 - 1), got \(levels)")
        }
    }

    static func idTableBits(orders: Int) -> Int {
        var bits = 4  // at least two lines of 8 slots
        while (1 << bits) < orders + orders / 2 { bits += 1 }
        return bits
    }

    /// The bytes pools of these sizes allocate (and touch) when they are made.
    static func bytes(orders: Int, levels: Int) -> Int {
        (orders + 1) * MemoryLayout<OrderNode>.stride + (1 << idTableBits(orders: orders)) * MemoryLayout<IdSlot>.stride
            + (levels + 1) * MemoryLayout<PriceLevel>.stride + MemoryLayout<PoolState>.stride
    }

    init(orders: Int, levels levelCount: Int) throws(BookConfigError) {
        try Self.validate(orders: orders, levels: levelCount)
        // Everything is initialized here, so its pages are touched now and not on the hot path.
        orderCapacity = UInt32(orders)
        nodes = .allocate(capacity: orders + 1)
        nodes.initialize(repeating: OrderNode(), count: orders + 1)
        let bits = Self.idTableBits(orders: orders)
        // Aligned so that each block of 8 slots is exactly one cache line.
        slots = UnsafeMutableRawPointer.allocate(byteCount: (1 << bits) * MemoryLayout<IdSlot>.stride, alignment: 64)
            .bindMemory(to: IdSlot.self, capacity: 1 << bits)
        slots.initialize(repeating: IdSlot(handle: 0, home: 0), count: 1 << bits)
        slotMask = (1 << bits) - 1
        slotShift = UInt64(64 - bits)
        levelCapacity = UInt32(levelCount)
        levels = .allocate(capacity: levelCount + 1)
        levels.initialize(repeating: PriceLevel(), count: levelCount + 1)
        state = .allocate(capacity: 1)
        state.initialize(to: PoolState())
    }

    func deallocate() {
        nodes.deallocate()
        slots.deallocate()
        levels.deallocate()
        state.deallocate()
    }

    var bytes: Int { Self.bytes(orders: Int(orderCapacity), levels: Int(levelCapacity)) }
}

/// Pools shared by the books of one shard: one order pool, one id table and one level pool,
/// sized for all of them together (`[shard] orders`, `levels`). A book made on them costs its
/// struct and its ladders (a few hundred bytes while quiet). Single-threaded, like the books.
/// Each book holds a reference, so the pools outlive their books; a book that goes returns its
/// orders and levels to them.
public final class BookPools: @unchecked Sendable {
    @usableFromInline let memory: PoolMemory

    /// Pools for `orders` resting orders and `levels` price levels in all.
    public init(orders: Int, levels: Int) throws(BookConfigError) {
        memory = try PoolMemory(orders: orders, levels: levels)
    }

    deinit {
        precondition(memory.state.pointee.books == 0, "book pools freed while \(memory.state.pointee.books) books use them")
        memory.deallocate()
    }

    /// The bytes pools of these sizes allocate when they are made.
    public static func bytes(orders: Int, levels: Int) -> Int { PoolMemory.bytes(orders: orders, levels: levels) }

    public var allocatedBytes: Int { memory.bytes }
    public var orderCapacity: Int { Int(memory.orderCapacity) }
    public var levelCapacity: Int { Int(memory.levelCapacity) }
    /// Resting orders of all its books now.
    public var liveOrders: Int { memory.state.pointee.liveOrders }
    /// Price levels of all its books now.
    public var liveLevels: Int { memory.state.pointee.liveLevels }
    /// Books made on the pools and not freed yet.
    public var books: Int { memory.state.pointee.books }

    /// The node the next resting order on these pools takes (the free list's head, or the
    /// first never used): for a batch across books.
    @inlinable @inline(__always)
    public func prefetchNextNode() {
        let free = memory.state.pointee.cursor.freeOrders
        let h = free != 0 ? free : memory.state.pointee.cursor.orderHighWater
        if h <= memory.orderCapacity { cb_prefetch_write(memory.nodes + Int(h)) }
    }
}

/// What a book fixes at `init`: its rules and its memory. Copying it copies pointers only.
/// Kept small (120 bytes, fields ordered to pack): its methods may get a copy of it.
@frozen @usableFromInline
struct BookStore {
    @usableFromInline let symbolId: UInt32
    /// The book's index in its pools (0 for a book with pools of its own).
    @usableFromInline let book: UInt32
    @usableFromInline let tickSize: Price
    @usableFromInline let lotSize: Quantity
    @usableFromInline let minPrice: Price
    @usableFromInline let maxPrice: Price
    @usableFromInline let maxQuantity: Quantity

    @usableFromInline let nodes: UnsafeMutablePointer<OrderNode>
    @usableFromInline let slots: UnsafeMutablePointer<IdSlot>
    @usableFromInline let levels: UnsafeMutablePointer<PriceLevel>
    @usableFromInline let pool: UnsafeMutablePointer<PoolState>
    @usableFromInline let slotMask: Int
    @usableFromInline let slotShift: UInt64
    /// The book's index spread by an odd constant, added to each id's block before it is
    /// hashed (0 for the first book: a book with pools of its own hashes as before pools were
    /// shared). Kept, not computed: a multiply on every hash's path measured 5–10% of W1.
    @usableFromInline let salt: UInt64
    @usableFromInline let orderCapacity: UInt32
    @usableFromInline let levelCapacity: UInt32
    /// The most price levels the book may hold on one side.
    @usableFromInline let levelLimit: UInt32
    /// Pools of its own: freed with the book, and no order of another book in its id table.
    @usableFromInline let ownsPools: Bool

    init(spec: SymbolSpec, memory: PoolMemory, levelLimit: Int, ownsPools: Bool) throws(BookConfigError) {
        try spec.validate()
        // Level totals are sums of open quantities: they must not overflow.
        guard spec.maxOrderQuantity <= Int64.max / Int64(memory.orderCapacity) else {
            throw .capacity("symbol \(spec.name): maximum order quantity \(spec.maxOrderQuantity) × \(memory.orderCapacity) orders overflows 64 bits")
        }
        guard levelLimit >= 1, levelLimit <= Int(memory.levelCapacity) else {
            throw .capacity("symbol \(spec.name): a book's levels must be between 1 and its pools' \(memory.levelCapacity), got \(levelLimit)")
        }
        guard memory.state.pointee.nextBook < UInt32.max else { throw .capacity("too many books made on these pools") }
        symbolId = spec.id
        tickSize = spec.tickSize
        lotSize = spec.lotSize
        minPrice = spec.minPrice
        maxPrice = spec.maxPrice
        maxQuantity = spec.maxOrderQuantity
        nodes = memory.nodes
        orderCapacity = memory.orderCapacity
        slots = memory.slots
        slotMask = memory.slotMask
        slotShift = memory.slotShift
        levels = memory.levels
        levelCapacity = memory.levelCapacity
        pool = memory.state
        book = memory.state.pointee.nextBook
        salt = UInt64(book) &* 0xD6E8_FEB8_6659_FD93
        self.levelLimit = UInt32(levelLimit)
        self.ownsPools = ownsPools
        memory.state.pointee.nextBook += 1
        memory.state.pointee.books += 1
    }

    // MARK: Validation

    @inlinable
    func validateQuantity(_ quantity: Quantity) -> RejectReason? {
        if quantity <= 0 { return quantity == 0 ? .quantityZero : .quantityNegative }
        // A lot (or tick) of 1, the common case, takes no division (tens of cycles).
        if lotSize != 1 && quantity % lotSize != 0 { return .quantityOffLot }
        if quantity > maxQuantity { return .quantityAboveMaximum }
        return nil
    }

    @inlinable
    func validatePrice(_ price: Price) -> RejectReason? {
        if tickSize != 1 && price % tickSize != 0 { return .priceOffTick }
        if price < minPrice || price > maxPrice { return .priceOutsideBand }
        return nil
    }

    @inlinable
    func validateNew(_ order: NewOrder) -> RejectReason? {
        if let reason = validateQuantity(order.quantity) { return reason }
        if order.type == .limit {
            if let reason = validatePrice(order.price) { return reason }
        } else if order.timeInForce != .ioc && order.timeInForce != .fok {
            return .marketOrderTimeInForce
        }
        if lookup(order.orderId) != 0 { return .duplicateOrderId }
        return nil
    }

    // MARK: Ladders

    @inlinable @inline(__always)
    func key(_ side: Side, _ price: Price) -> Int64 { side == .buy ? price : -price }

    @inlinable @inline(__always)
    func emitLevel<S: BookEventSink>(_ side: Side, _ lv: UInt32, _ sink: inout S) {
        let level = levels[Int(lv)]
        sink.on(.level(side: side, price: level.price, quantity: level.total, orders: Int32(level.count)))
    }

    // MARK: Order id table

    /// The home slot of an id (of this book: its index is hashed in). Ids are hashed in blocks of 8, one 64-byte line of slots: the
    /// block (id >> 3) picks the line by Fibonacci hashing, and id & 7 the slot in it. Clients
    /// number their orders consecutively, so a new id nearly always lands on the line the last
    /// one did, in cache; ids in no such order still spread evenly over the table.
    @inlinable @inline(__always)
    func home(_ id: OrderId) -> Int {
        let block = ((UInt64(bitPattern: id >> 3) &+ salt) &* 0x9E37_79B9_7F4A_7C15) >> slotShift
        return Int(truncatingIfNeeded: block) & ~7 | Int(truncatingIfNeeded: id) & 7
    }

    /// The handle of the live order with this id, or 0. In shared pools an order of another
    /// book can have the same id and home: its level names the other book.
    @inlinable
    func lookup(_ id: OrderId) -> UInt32 {
        let h0 = home(id)
        var i = h0
        if ownsPools {
            while true {
                let slot = slots[i]
                if slot.handle == 0 { return 0 }
                if Int(slot.home) == h0 && nodes[Int(slot.handle)].id == id { return slot.handle }
                i = (i + 1) & slotMask
            }
        }
        while true {
            let slot = slots[i]
            if slot.handle == 0 { return 0 }
            if Int(slot.home) == h0 && nodes[Int(slot.handle)].id == id
                && levels[Int(nodes[Int(slot.handle)].level)].book == book
            {
                return slot.handle
            }
            i = (i + 1) & slotMask
        }
    }

    @inlinable
    func insertId(_ h: UInt32) {
        let h0 = home(nodes[Int(h)].id)
        var i = h0
        while slots[i].handle != 0 { i = (i + 1) & slotMask }
        slots[i] = IdSlot(handle: h, home: UInt32(h0))
    }

    /// Removes a handle, shifting later entries of its probe run back (no tombstones).
    @inlinable
    func removeId(_ h: UInt32) {
        var i = home(nodes[Int(h)].id)
        while slots[i].handle != h { i = (i + 1) & slotMask }
        var j = i
        while true {
            j = (j + 1) & slotMask
            let entry = slots[j]
            if entry.handle == 0 { break }
            let k = Int(entry.home)
            // Move the entry back into the hole at i unless its home lies cyclically in (i, j].
            let inRange = i <= j ? (i < k && k <= j) : (i < k || k <= j)
            if !inRange {
                slots[i] = entry
                i = j
            }
        }
        slots[i] = IdSlot(handle: 0, home: 0)
    }
}

@frozen
public struct OrderBook: ~Copyable {
    @usableFromInline let store: BookStore
    /// The pools' allocation state: this book's own, or a copy of the shared pools' while a
    /// command runs (`enterPools`, `leavePools`).
    @usableFromInline var cursor = PoolCursor()
    /// Resting orders of this book (its pools may hold other books' too).
    @usableFromInline var liveOrders: Int = 0
    @usableFromInline var bidLevels: Int = 0
    @usableFromInline var askLevels: Int = 0
    /// Ladders: side s uses keys[base(s) ..< base(s) + count], ascending, best last; the bids'
    /// base is 0, the asks' is `ladderCapacity`. The key of a price is the price for bids and
    /// its negation for asks.
    @usableFromInline var ladderKeys: UnsafeMutablePointer<Int64>
    @usableFromInline var ladderHandles: UnsafeMutablePointer<UInt32>
    /// Levels each side's ladder holds now: the level limit for a book with pools of its own;
    /// growing by doubling up to it for one that shares.
    @usableFromInline var ladderCapacity: Int
    /// Shared pools, retained so that they outlive the book (released in deinit). A raw
    /// pointer, not a reference: a class field would make the book a non-trivial type, and
    /// the compiler then copies its store for each call of the store's methods (measured: W1
    /// 0.84× with the field).
    let sharedPools: UnsafeMutableRawPointer?

    /// The first capacity of a sharing book's ladders, per side.
    public static let initialLadderCapacity = 8

    /// What a book on shared pools allocates when it is made (its struct, its first ladders).
    public static var sharingBookBytes: Int {
        MemoryLayout<OrderBook>.stride + 2 * initialLadderCapacity * (MemoryLayout<Int64>.stride + MemoryLayout<UInt32>.stride)
    }

    /// A book with pools of its own, all allocated (and touched) now.
    public init(spec: SymbolSpec, capacity: BookCapacity) throws(BookConfigError) {
        try capacity.validate(for: spec)
        let memory = try PoolMemory(orders: capacity.orders, levels: capacity.levels)
        do {
            store = try BookStore(spec: spec, memory: memory, levelLimit: capacity.levels, ownsPools: true)
        } catch {
            memory.deallocate()
            throw error
        }
        sharedPools = nil
        ladderCapacity = capacity.levels
        ladderKeys = .allocate(capacity: 2 * capacity.levels)
        ladderKeys.initialize(repeating: 0, count: 2 * capacity.levels)
        ladderHandles = .allocate(capacity: 2 * capacity.levels)
        ladderHandles.initialize(repeating: 0, count: 2 * capacity.levels)
    }

    /// A book on a shard's shared pools, holding at most `levels` price levels a side (and
    /// what the pools have free). Its ladders start small and grow as it gets levels.
    public init(spec: SymbolSpec, pools: BookPools, levels: Int) throws(BookConfigError) {
        store = try BookStore(spec: spec, memory: pools.memory, levelLimit: levels, ownsPools: false)
        sharedPools = Unmanaged.passRetained(pools).toOpaque()
        ladderCapacity = min(Self.initialLadderCapacity, levels)
        ladderKeys = .allocate(capacity: 2 * ladderCapacity)
        ladderKeys.initialize(repeating: 0, count: 2 * ladderCapacity)
        ladderHandles = .allocate(capacity: 2 * ladderCapacity)
        ladderHandles.initialize(repeating: 0, count: 2 * ladderCapacity)
    }

    deinit {
        if store.ownsPools {
            store.nodes.deallocate()
            store.slots.deallocate()
            store.levels.deallocate()
            store.pool.deallocate()
        } else {
            // Its orders and levels go back to the shared pools' free lists.
            let pool = store.pool
            for (base, count) in [(0, bidLevels), (ladderCapacity, askLevels)] {
                for i in 0..<count {
                    let lv = ladderHandles[base + i]
                    var h = store.levels[Int(lv)].head
                    while h != 0 {
                        let next = store.nodes[Int(h)].next
                        store.removeId(h)
                        store.nodes[Int(h)].next = pool.pointee.cursor.freeOrders
                        pool.pointee.cursor.freeOrders = h
                        h = next
                    }
                    store.levels[Int(lv)].tail = pool.pointee.cursor.freeLevels
                    pool.pointee.cursor.freeLevels = lv
                }
            }
            pool.pointee.liveOrders -= liveOrders
            pool.pointee.liveLevels -= bidLevels + askLevels
            pool.pointee.books -= 1
        }
        if let sharedPools { Unmanaged<BookPools>.fromOpaque(sharedPools).release() }
        ladderKeys.deallocate()
        ladderHandles.deallocate()
    }

    public var symbolId: UInt32 { store.symbolId }

    /// Bytes this book allocated, for capacity planning: with pools of its own, the pools too.
    public var allocatedBytes: Int {
        (store.ownsPools ? PoolMemory.bytes(orders: Int(store.orderCapacity), levels: Int(store.levelCapacity)) : 0)
            + MemoryLayout<OrderBook>.stride
            + 2 * ladderCapacity * (MemoryLayout<Int64>.stride + MemoryLayout<UInt32>.stride)
    }

    /// A sharing book takes the pools' allocation state into its own fields before a command
    /// (returns what it held then, for `leavePools`); a book with pools of its own has it there.
    @inlinable @inline(__always)
    mutating func enterPools() -> (orders: Int, levels: Int) {
        guard !store.ownsPools else { return (0, 0) }
        return enterSharedPools()
    }

    /// `enterPools` of a book known to share its pools.
    @inlinable @inline(__always)
    mutating func enterSharedPools() -> (orders: Int, levels: Int) {
        let state = store.pool
        cursor = state.pointee.cursor
        return (liveOrders, bidLevels + askLevels)
    }

    /// Gives the allocation state back to the shared pools after a command.
    @inlinable @inline(__always)
    mutating func leavePools(_ before: (orders: Int, levels: Int)) {
        guard !store.ownsPools else { return }
        leaveSharedPools(before)
    }

    /// `leavePools` of a book known to share its pools.
    @inlinable @inline(__always)
    mutating func leaveSharedPools(_ before: (orders: Int, levels: Int)) {
        let state = store.pool
        state.pointee.cursor = cursor
        state.pointee.liveOrders += liveOrders - before.orders
        state.pointee.liveLevels += bidLevels + askLevels - before.levels
    }

    // Shorthands for the hot path.
    @usableFromInline var nodes: UnsafeMutablePointer<OrderNode> {
        @inline(__always) get { store.nodes }
    }
    @usableFromInline var levels: UnsafeMutablePointer<PriceLevel> {
        @inline(__always) get { store.levels }
    }

    // MARK: - Commands

    /// A new limit or market order: validation, then matching, then the remainder rests
    /// (GTC, post-only) or is cancelled (IOC, market).
    @inlinable
    public mutating func submit<S: BookEventSink>(_ order: NewOrder, to sink: inout S) {
        // A book with pools of its own (the common case) pays one branch.
        guard !store.ownsPools else { return submitInPools(order, to: &sink) }
        let before = enterSharedPools()
        submitInPools(order, to: &sink)
        leaveSharedPools(before)
    }

    @inlinable
    mutating func submitInPools<S: BookEventSink>(_ order: NewOrder, to sink: inout S) {
        sink.account(order.account, of: order.orderId)
        if let reason = store.validateNew(order) {
            sink.on(.rejected(orderId: order.orderId, reason: reason))
            return
        }
        let isMarket = order.type == .market
        let rests = !isMarket && (order.timeInForce == .gtc || order.timeInForce == .postOnly)
        if rests {
            // Capacity is checked up front, so that an accepted order never fails halfway.
            if cursor.freeOrders == 0 && cursor.orderHighWater > store.orderCapacity {
                sink.on(.rejected(orderId: order.orderId, reason: .orderPoolExhausted))
                return
            }
            if (cursor.freeLevels == 0 && cursor.levelHighWater > store.levelCapacity || ladderCount(order.side) >= Int(store.levelLimit))
                && !findLevel(order.side, order.price).found
            {
                sink.on(.rejected(orderId: order.orderId, reason: .levelPoolExhausted))
                return
            }
        }
        let limit: Price = isMarket ? (order.side == .buy ? Price.max : Price.min) : order.price
        if order.timeInForce == .postOnly && crosses(order.side, limit) {
            sink.on(.rejected(orderId: order.orderId, reason: .postOnlyWouldTake))
            return
        }
        if order.timeInForce == .fok
            && !fillable(order.side, limit, order.quantity, order.account, order.selfTradePrevention)
        {
            sink.on(.rejected(orderId: order.orderId, reason: .fokNotFillable))
            return
        }

        sink.on(.accepted(orderId: order.orderId, side: order.side, price: isMarket ? 0 : order.price,
                          quantity: order.quantity))
        var remaining = order.quantity
        if crosses(order.side, limit) {
            match(order.orderId, order.account, order.side, limit, &remaining, order.selfTradePrevention, &sink)
        }
        guard remaining > 0 else { return }
        if rests {
            let h = allocateOrder()
            nodes[Int(h)].id = order.orderId
            nodes[Int(h)].open = remaining
            nodes[Int(h)].account = order.account
            nodes[Int(h)].side = order.side
            nodes[Int(h)].selfTradePrevention = order.selfTradePrevention
            store.insertId(h)
            rest(h, order.price, &sink)
        } else {
            sink.on(.cancelled(orderId: order.orderId, quantity: remaining, open: 0, reason: .iocRemainder))
        }
    }

    @inlinable
    public mutating func cancel<S: BookEventSink>(_ command: CancelOrder, to sink: inout S) {
        // A book with pools of its own (the common case) pays one branch.
        guard !store.ownsPools else { return cancelInPools(command, to: &sink) }
        let before = enterSharedPools()
        cancelInPools(command, to: &sink)
        leaveSharedPools(before)
    }

    @inlinable
    mutating func cancelInPools<S: BookEventSink>(_ command: CancelOrder, to sink: inout S) {
        let h = store.lookup(command.orderId)
        guard h != 0 else {
            sink.on(.rejected(orderId: command.orderId, reason: .unknownOrderId))
            return
        }
        let open = nodes[Int(h)].open
        sink.account(nodes[Int(h)].account, of: command.orderId)
        sink.on(.cancelled(orderId: command.orderId, quantity: open, open: 0, reason: .user))
        let lv = nodes[Int(h)].level
        let side = nodes[Int(h)].side
        unlink(h)
        store.removeId(h)
        freeOrder(h)
        leaveLevel(side, lv, &sink)
    }

    @inlinable
    public mutating func replace<S: BookEventSink>(_ command: ReplaceOrder, to sink: inout S) {
        // A book with pools of its own (the common case) pays one branch.
        guard !store.ownsPools else { return replaceInPools(command, to: &sink) }
        let before = enterSharedPools()
        replaceInPools(command, to: &sink)
        leaveSharedPools(before)
    }

    @inlinable
    mutating func replaceInPools<S: BookEventSink>(_ command: ReplaceOrder, to sink: inout S) {
        let h = store.lookup(command.orderId)
        guard h != 0 else {
            sink.on(.rejected(orderId: command.orderId, reason: .unknownOrderId))
            return
        }
        sink.account(nodes[Int(h)].account, of: command.orderId)
        if let reason = store.validateQuantity(command.quantity) ?? store.validatePrice(command.price) {
            sink.on(.rejected(orderId: command.orderId, reason: reason))
            return
        }
        let side = nodes[Int(h)].side
        let lv = nodes[Int(h)].level
        let oldPrice = levels[Int(lv)].price
        let oldOpen = nodes[Int(h)].open
        if command.price == oldPrice {
            if command.quantity <= oldOpen {
                // Keeps its place in the queue.
                sink.on(.replaced(orderId: command.orderId, price: oldPrice, quantity: command.quantity,
                                  keptPriority: true))
                if command.quantity != oldOpen {
                    nodes[Int(h)].open = command.quantity
                    levels[Int(lv)].total -= oldOpen - command.quantity
                    store.emitLevel(side, lv, &sink)
                }
            } else {
                // More quantity at the same price goes to the back of the queue; a resting
                // price never crosses, so there is nothing to match.
                sink.on(.replaced(orderId: command.orderId, price: oldPrice, quantity: command.quantity,
                                  keptPriority: false))
                unlink(h)
                nodes[Int(h)].open = command.quantity
                link(h, lv)
                store.emitLevel(side, lv, &sink)
            }
            return
        }
        if (cursor.freeLevels == 0 && cursor.levelHighWater > store.levelCapacity || ladderCount(side) >= Int(store.levelLimit))
            && !findLevel(side, command.price).found
        {
            sink.on(.rejected(orderId: command.orderId, reason: .levelPoolExhausted))
            return
        }
        sink.on(.replaced(orderId: command.orderId, price: command.price, quantity: command.quantity,
                          keptPriority: false))
        unlink(h)
        leaveLevel(side, lv, &sink)
        // Now it is a new GTC order with the same id, node and account.
        var remaining = command.quantity
        if crosses(side, command.price) {
            match(command.orderId, nodes[Int(h)].account, side, command.price, &remaining,
                  nodes[Int(h)].selfTradePrevention, &sink)
        }
        if remaining > 0 {
            nodes[Int(h)].open = remaining
            rest(h, command.price, &sink)
        } else {
            store.removeId(h)
            freeOrder(h)
        }
    }

    @inlinable
    public mutating func apply<S: BookEventSink>(_ command: BookCommand, to sink: inout S) {
        // A book with pools of its own (the common case) pays one branch.
        guard !store.ownsPools else { return applyInPools(command, to: &sink) }
        let before = enterSharedPools()
        applyInPools(command, to: &sink)
        leaveSharedPools(before)
    }

    /// A command, with the pools' state already in this book's fields.
    @inlinable
    mutating func applyInPools<S: BookEventSink>(_ command: BookCommand, to sink: inout S) {
        switch command {
        case .new(let order): submitInPools(order, to: &sink)
        case .cancel(let cancel): cancelInPools(cancel, to: &sink)
        case .replace(let replace): replaceInPools(replace, to: &sink)
        }
    }

    // MARK: - Matching

    /// Whether a taker on `side` with this limit would trade with the best opposite level.
    @inlinable @inline(__always)
    func crosses(_ side: Side, _ limit: Price) -> Bool {
        let opposite = side.opposite
        let n = ladderCount(opposite)
        guard n > 0 else { return false }
        let best = levels[Int(ladderHandles[ladderBase(opposite) + n - 1])].price
        return side == .buy ? best <= limit : best >= limit
    }

    /// Whether a FOK order would fill completely: the same walk as `match`, without changes.
    @inlinable
    func fillable(_ side: Side, _ limit: Price, _ quantity: Quantity, _ account: AccountId,
                  _ stp: SelfTradePrevention) -> Bool {
        let opposite = side.opposite
        let base = ladderBase(opposite)
        var need = quantity
        var i = ladderCount(opposite) - 1
        while i >= 0 {
            let lv = Int(ladderHandles[base + i])
            let price = levels[lv].price
            if side == .buy ? price > limit : price < limit { return false }
            if stp == .none {
                need -= levels[lv].total
                if need <= 0 { return true }
            } else {
                var h = levels[lv].head
                while h != 0 {
                    if nodes[Int(h)].account == account {
                        // cancel-oldest removes the resting order and goes on; every other mode
                        // stops the taker (or takes quantity from it without a trade).
                        if stp != .cancelOldest { return false }
                    } else {
                        need -= nodes[Int(h)].open
                        if need <= 0 { return true }
                    }
                    h = nodes[Int(h)].next
                }
            }
            i -= 1
        }
        return false
    }

    /// Trades the taker against the opposite side in price-time order, within `limit`.
    @inlinable
    mutating func match<S: BookEventSink>(
        _ takerId: OrderId, _ account: AccountId, _ side: Side, _ limit: Price,
        _ remaining: inout Quantity, _ stp: SelfTradePrevention, _ sink: inout S
    ) {
        let opposite = side.opposite
        // Matching only removes levels: the ladder does not move while it runs.
        let handles = ladderHandles + ladderBase(opposite)
        while remaining > 0 {
            let n = ladderCount(opposite)
            guard n > 0 else { return }
            let lv = handles[n - 1]
            let price = levels[Int(lv)].price
            if side == .buy ? price > limit : price < limit { return }
            var touched = false
            var stop = false
            var h = levels[Int(lv)].head
            while h != 0 && remaining > 0 {
                let next = nodes[Int(h)].next
                let makerId = nodes[Int(h)].id
                sink.account(nodes[Int(h)].account, of: makerId)
                if stp != .none && nodes[Int(h)].account == account {
                    switch stp {
                    case .cancelNewest:
                        sink.on(.cancelled(orderId: takerId, quantity: remaining, open: 0, reason: .selfTrade))
                        remaining = 0
                        stop = true
                    case .cancelOldest:
                        sink.on(.cancelled(orderId: makerId, quantity: nodes[Int(h)].open, open: 0,
                                           reason: .selfTrade))
                        removeMaker(h, lv)
                        touched = true
                    case .cancelBoth:
                        sink.on(.cancelled(orderId: makerId, quantity: nodes[Int(h)].open, open: 0,
                                           reason: .selfTrade))
                        removeMaker(h, lv)
                        sink.on(.cancelled(orderId: takerId, quantity: remaining, open: 0, reason: .selfTrade))
                        remaining = 0
                        touched = true
                        stop = true
                    case .decrement:
                        let d = min(remaining, nodes[Int(h)].open)
                        let makerOpen = nodes[Int(h)].open - d
                        remaining -= d
                        sink.on(.cancelled(orderId: makerId, quantity: d, open: makerOpen, reason: .selfTrade))
                        sink.on(.cancelled(orderId: takerId, quantity: d, open: remaining, reason: .selfTrade))
                        if makerOpen == 0 {
                            removeMaker(h, lv)
                        } else {
                            nodes[Int(h)].open = makerOpen
                            levels[Int(lv)].total -= d
                        }
                        touched = true
                    case .none:
                        break
                    }
                    if stop { break }
                    h = next
                    continue
                }
                let fill = min(remaining, nodes[Int(h)].open)
                let makerOpen = nodes[Int(h)].open - fill
                remaining -= fill
                touched = true
                sink.on(.trade(makerId: makerId, takerId: takerId, takerSide: side, price: price,
                               quantity: fill, makerOpen: makerOpen, takerOpen: remaining))
                if makerOpen == 0 {
                    removeMaker(h, lv)
                } else {
                    nodes[Int(h)].open = makerOpen
                    levels[Int(lv)].total -= fill
                }
                h = next
            }
            if touched { store.emitLevel(opposite, lv, &sink) }
            if levels[Int(lv)].count == 0 {
                // The best level: the last of its ladder, removed in O(1).
                setLadderCount(opposite, n - 1)
                freeLevel(lv)
            } else {
                return
            }
            if stop { return }
        }
    }

    /// Takes a fully filled or STP-cancelled maker out of its level and the book.
    @inlinable @inline(__always)
    mutating func removeMaker(_ h: UInt32, _ lv: UInt32) {
        unlink(h)
        store.removeId(h)
        freeOrder(h)
    }

    /// Appends an order (id already in the table) at the back of the level at `price`.
    @inlinable
    mutating func rest<S: BookEventSink>(_ h: UInt32, _ price: Price, _ sink: inout S) {
        let side = nodes[Int(h)].side
        let (found, position) = findLevel(side, price)
        let lv: UInt32
        if found {
            lv = ladderHandles[ladderBase(side) + position]
        } else {
            lv = allocateLevel()
            levels[Int(lv)].price = price
            insertLadder(side, position, store.key(side, price), lv)
        }
        link(h, lv)
        store.emitLevel(side, lv, &sink)
    }

    /// After an order left level `lv`: report it, and drop the level if it is empty.
    @inlinable
    mutating func leaveLevel<S: BookEventSink>(_ side: Side, _ lv: UInt32, _ sink: inout S) {
        store.emitLevel(side, lv, &sink)
        if levels[Int(lv)].count == 0 {
            let (found, position) = findLevel(side, levels[Int(lv)].price)
            precondition(found, "a level of the book is missing from its ladder")
            removeLadder(side, position)
            freeLevel(lv)
        }
    }

    // MARK: - FIFO of a level

    @inlinable @inline(__always)
    mutating func link(_ h: UInt32, _ lv: UInt32) {
        let tail = levels[Int(lv)].tail
        nodes[Int(h)].level = lv
        nodes[Int(h)].prev = tail
        nodes[Int(h)].next = 0
        if tail != 0 { nodes[Int(tail)].next = h } else { levels[Int(lv)].head = h }
        levels[Int(lv)].tail = h
        levels[Int(lv)].count += 1
        levels[Int(lv)].total += nodes[Int(h)].open
    }

    @inlinable @inline(__always)
    mutating func unlink(_ h: UInt32) {
        let lv = Int(nodes[Int(h)].level)
        let prev = nodes[Int(h)].prev
        let next = nodes[Int(h)].next
        if prev != 0 { nodes[Int(prev)].next = next } else { levels[lv].head = next }
        if next != 0 { nodes[Int(next)].prev = prev } else { levels[lv].tail = prev }
        levels[lv].count -= 1
        levels[lv].total -= nodes[Int(h)].open
    }

    // MARK: - Pools

    @inlinable @inline(__always)
    mutating func allocateOrder() -> UInt32 {
        liveOrders += 1
        if cursor.freeOrders != 0 {
            let h = cursor.freeOrders
            cursor.freeOrders = nodes[Int(h)].next
            return h
        }
        let h = cursor.orderHighWater
        cursor.orderHighWater += 1
        return h
    }

    @inlinable @inline(__always)
    mutating func freeOrder(_ h: UInt32) {
        liveOrders -= 1
        nodes[Int(h)].next = cursor.freeOrders
        cursor.freeOrders = h
    }

    @inlinable @inline(__always)
    mutating func allocateLevel() -> UInt32 {
        let lv: UInt32
        if cursor.freeLevels != 0 {
            lv = cursor.freeLevels
            cursor.freeLevels = levels[Int(lv)].tail
            levels[Int(lv)] = PriceLevel()
        } else {
            lv = cursor.levelHighWater
            cursor.levelHighWater += 1
        }
        levels[Int(lv)].book = store.book
        return lv
    }

    @inlinable @inline(__always)
    mutating func freeLevel(_ lv: UInt32) {
        levels[Int(lv)].tail = cursor.freeLevels
        cursor.freeLevels = lv
    }

    // MARK: - Ladders

    @inlinable @inline(__always)
    func ladderCount(_ side: Side) -> Int { side == .buy ? bidLevels : askLevels }

    @inlinable @inline(__always)
    mutating func setLadderCount(_ side: Side, _ n: Int) {
        if side == .buy { bidLevels = n } else { askLevels = n }
    }

    @inlinable @inline(__always)
    func ladderBase(_ side: Side) -> Int { side == .buy ? 0 : ladderCapacity }

    /// Where `price` is, or would go, in a side's ladder.
    @inlinable @inline(__always)
    func findLevel(_ side: Side, _ price: Price) -> (found: Bool, position: Int) {
        Self.findLevel(store.key(side, price), in: ladderKeys + ladderBase(side), count: ladderCount(side))
    }

    /// Where key `k` is, or would go, in an ascending ladder of `count` keys. Scans the few
    /// levels at the touch first (where nearly all activity is), then bisects. Static, on plain
    /// values: a method of the book would get a copy of the book on some call paths.
    @inlinable
    static func findLevel(_ k: Int64, in keys: UnsafeMutablePointer<Int64>, count: Int) -> (found: Bool, position: Int) {
        var i = count - 1
        var steps = 0
        while i >= 0 && steps < 4 {
            let ki = keys[i]
            if ki == k { return (true, i) }
            if ki < k { return (false, i + 1) }
            i -= 1
            steps += 1
        }
        if i < 0 { return (false, 0) }
        var lo = 0
        var hi = i + 1
        while lo < hi {
            let mid = (lo + hi) >> 1
            if keys[mid] < k { lo = mid + 1 } else { hi = mid }
        }
        return (lo <= i && keys[lo] == k, lo)
    }

    /// Doubles both ladders (up to the book's level limit): a sharing book's only allocation
    /// after it is made, at most log2(limit / 8) times a side's ladder fills.
    @usableFromInline
    mutating func growLadders() {
        let capacity = min(2 * ladderCapacity, Int(store.levelLimit))
        precondition(capacity > ladderCapacity, "a ladder grown past the book's level limit")
        let keys = UnsafeMutablePointer<Int64>.allocate(capacity: 2 * capacity)
        keys.initialize(repeating: 0, count: 2 * capacity)
        let handles = UnsafeMutablePointer<UInt32>.allocate(capacity: 2 * capacity)
        handles.initialize(repeating: 0, count: 2 * capacity)
        keys.update(from: ladderKeys, count: bidLevels)
        handles.update(from: ladderHandles, count: bidLevels)
        (keys + capacity).update(from: ladderKeys + ladderCapacity, count: askLevels)
        (handles + capacity).update(from: ladderHandles + ladderCapacity, count: askLevels)
        ladderKeys.deallocate()
        ladderHandles.deallocate()
        ladderKeys = keys
        ladderHandles = handles
        ladderCapacity = capacity
    }

    @inlinable
    mutating func insertLadder(_ side: Side, _ position: Int, _ k: Int64, _ lv: UInt32) {
        let n = ladderCount(side)
        if n == ladderCapacity { growLadders() }
        let base = ladderBase(side)
        let moving = n - position
        let keys = ladderKeys + base
        let handles = ladderHandles + base
        if moving > 0 {
            (keys + position + 1).moveInitialize(from: keys + position, count: moving)
            (handles + position + 1).moveInitialize(from: handles + position, count: moving)
        }
        keys[position] = k
        handles[position] = lv
        setLadderCount(side, n + 1)
    }

    @inlinable
    mutating func removeLadder(_ side: Side, _ position: Int) {
        let base = ladderBase(side)
        let n = ladderCount(side)
        let moving = n - position - 1
        let keys = ladderKeys + base
        let handles = ladderHandles + base
        if moving > 0 {
            (keys + position).moveInitialize(from: keys + position + 1, count: moving)
            (handles + position).moveInitialize(from: handles + position + 1, count: moving)
        }
        setLadderCount(side, n - 1)
    }
}
