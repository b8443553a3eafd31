// A shard's event ring: one producer (the shard), up to 16 consumers (market data, egress,
// audit), each with its own cursor. The producer never overwrites an event a consumer has not
// read: a slow consumer holds it back (back-pressure), unless it attached saying it may be
// detached when it lags; a consumer whose process is gone is always detached.
//
// Layout (little-endian):
//   0     magic "CBEVENT1" (u64), version (u32), slot size (u32), capacity (u64), creator pid
//         (i32), consumer slots (u32)
//   128   producer cursor (u64): sequence of the next event to publish
//   256 + 128 × i   consumer i: cursor (u64), state (u32: 0 free, 1 active, 2 detached),
//         pid (i32), flags (u32: bit 0 = may be detached when lagging), wake word (u32),
//         parked (u32)
//   4096  slots: capacity × 64 bytes
// Attaching a consumer takes a free block with one compare-and-swap (not on any hot path).

import CSync
import Glibc

public enum EventRingLayout {
    public static let magic: UInt64 = 0x3154_4E45_5645_4243  // "CBEVENT1"
    public static let version: UInt32 = 1
    public static let consumers = 16
    public static let slotsOffset = 4096
    static let producerOffset = 128
    static func consumerOffset(_ i: Int) -> Int { 256 + 128 * i }
    public static func fileSize(capacity: Int) -> Int { slotsOffset + capacity * RingLayout.slotSize }
}

public enum EventConsumerError: Error, Equatable, CustomStringConvertible {
    case full
    case detached
    case fault(RingFault)

    public var description: String {
        switch self {
        case .full: "all \(EventRingLayout.consumers) consumer slots of the event ring are taken"
        case .detached: "this consumer fell behind (or was declared gone) and was detached by the engine"
        case .fault(let f): "\(f)"
        }
    }
}

/// One consumer block, read and written through raw pointers.
@frozen
public struct EventConsumerBlock: @unchecked Sendable {
    @usableFromInline let base: UnsafeMutableRawPointer
    @inlinable init(_ base: UnsafeMutableRawPointer) { self.base = base }
    @inlinable var cursor: UnsafeMutablePointer<UInt64> { base.assumingMemoryBound(to: UInt64.self) }
    @inlinable var state: UnsafeMutablePointer<UInt32> { (base + 8).assumingMemoryBound(to: UInt32.self) }
    @inlinable var pid: UnsafeMutablePointer<Int32> { (base + 12).assumingMemoryBound(to: Int32.self) }
    @inlinable var flags: UnsafeMutablePointer<UInt32> { (base + 16).assumingMemoryBound(to: UInt32.self) }
    @inlinable var wake: UnsafeMutablePointer<UInt32> { (base + 20).assumingMemoryBound(to: UInt32.self) }
    @inlinable var parked: UnsafeMutablePointer<UInt32> { (base + 24).assumingMemoryBound(to: UInt32.self) }
}

public final class EventRing: @unchecked Sendable {
    public let file: MappedFile
    public let capacity: Int

    public static func create(path: String, capacity: Int, mode: mode_t) throws(SharedMemoryError) -> EventRing {
        guard capacity >= 2, capacity <= RingLayout.maxCapacity, capacity & (capacity - 1) == 0 else {
            throw .badHeader(path: path, "capacity \(capacity) is not a power of two in 2...\(RingLayout.maxCapacity)")
        }
        let file = try MappedFile.create(path: path, size: EventRingLayout.fileSize(capacity: capacity), mode: mode)
        let b = file.base
        b.storeBytes(of: EventRingLayout.version.littleEndian, toByteOffset: 8, as: UInt32.self)
        b.storeBytes(of: UInt32(RingLayout.slotSize).littleEndian, toByteOffset: 12, as: UInt32.self)
        b.storeBytes(of: UInt64(capacity).littleEndian, toByteOffset: 16, as: UInt64.self)
        b.storeBytes(of: getpid().littleEndian, toByteOffset: 24, as: Int32.self)
        b.storeBytes(of: UInt32(EventRingLayout.consumers).littleEndian, toByteOffset: 28, as: UInt32.self)
        cb_store_release_u64(b.assumingMemoryBound(to: UInt64.self), EventRingLayout.magic.littleEndian)
        return EventRing(file: file, capacity: capacity)
    }

    public static func attach(path: String) throws(SharedMemoryError) -> EventRing {
        let file = try MappedFile.open(path: path, minimumSize: EventRingLayout.slotsOffset)
        let b = file.base
        guard UInt64(littleEndian: cb_load_acquire_u64(b.assumingMemoryBound(to: UInt64.self))) == EventRingLayout.magic else {
            throw .badHeader(path: path, "not an event ring")
        }
        guard UInt32(littleEndian: b.load(fromByteOffset: 8, as: UInt32.self)) == EventRingLayout.version,
              UInt32(littleEndian: b.load(fromByteOffset: 12, as: UInt32.self)) == UInt32(RingLayout.slotSize),
              UInt32(littleEndian: b.load(fromByteOffset: 28, as: UInt32.self)) == UInt32(EventRingLayout.consumers)
        else { throw .badHeader(path: path, "version, slot size or consumer count differs from this build's") }
        let capacity = UInt64(littleEndian: b.load(fromByteOffset: 16, as: UInt64.self))
        guard capacity >= 2, capacity <= UInt64(RingLayout.maxCapacity), capacity & (capacity - 1) == 0,
              file.size == EventRingLayout.fileSize(capacity: Int(capacity))
        else { throw .badHeader(path: path, "capacity \(capacity) does not fit the file") }
        return EventRing(file: file, capacity: Int(capacity))
    }

    private init(file: MappedFile, capacity: Int) {
        self.file = file
        self.capacity = capacity
    }

    func block(_ i: Int) -> EventConsumerBlock { EventConsumerBlock(file.base + EventRingLayout.consumerOffset(i)) }

    public func producer() -> EventProducer { EventProducer(ring: self) }

    /// Each attached consumer's lag (events published and not yet read by it), for operators.
    public func consumerLags() -> [(index: Int, pid: Int32, lag: UInt64, mayDetach: Bool)] {
        let head = cb_load_acquire_u64((file.base + EventRingLayout.producerOffset).assumingMemoryBound(to: UInt64.self))
        var out: [(index: Int, pid: Int32, lag: UInt64, mayDetach: Bool)] = []
        for i in 0..<EventRingLayout.consumers {
            let b = block(i)
            guard cb_load_acquire_u32(b.state) == 1 else { continue }
            out.append((i, b.pid.pointee, head &- cb_load_acquire_u64(b.cursor), b.flags.pointee & 1 != 0))
        }
        return out
    }

    /// Takes a free consumer slot; reading starts at the newest event. `mayDetach`: the engine
    /// may detach this consumer when it lags, instead of waiting for it.
    public func consumer(mayDetach: Bool) throws(EventConsumerError) -> EventConsumer {
        for i in 0..<EventRingLayout.consumers {
            let b = block(i)
            // A free slot, or one whose consumer process is gone (detached, or still attached:
            // a reader killed while attached is reclaimed here, not only when it fills the ring).
            let state = cb_load_acquire_u32(b.state)
            if (state == 1 || state == 2) && processIsAlive(b.pid.pointee) { continue }
            guard state != 3, cb_cas_u32(b.state, state, 3) != 0 else { continue }  // 3: being set up
            b.pid.pointee = getpid()
            b.flags.pointee = mayDetach ? 1 : 0
            cb_store_release_u64(b.cursor, cb_load_acquire_u64((file.base + EventRingLayout.producerOffset).assumingMemoryBound(to: UInt64.self)))
            // Active last: the producer gates on this cursor from now on.
            cb_store_seq_cst_u32(b.state, 1)
            return EventConsumer(ring: self, index: i)
        }
        throw .full
    }
}

/// The shard's side. Not thread-safe: one producer.
public struct EventProducer: @unchecked Sendable {
    let ring: EventRing
    let slots: UnsafeMutableRawPointer
    let cursor: UnsafeMutablePointer<UInt64>
    /// The first consumer block; block i is 128 × i bytes further (no array: no ARC on the shard).
    let firstBlock: UnsafeMutableRawPointer
    let mask: UInt64
    let capacity: UInt64
    var head: UInt64
    var cachedMinimum: UInt64

    init(ring: EventRing) {
        self.ring = ring
        slots = ring.file.base + EventRingLayout.slotsOffset
        cursor = (ring.file.base + EventRingLayout.producerOffset).assumingMemoryBound(to: UInt64.self)
        firstBlock = ring.file.base + EventRingLayout.consumerOffset(0)
        mask = UInt64(ring.capacity - 1)
        capacity = UInt64(ring.capacity)
        head = cb_load_acquire_u64(cursor)
        cachedMinimum = head
    }

    /// The slowest active consumer's cursor, or our head when none is attached.
    mutating func minimum() -> UInt64 {
        var m = head
        for i in 0..<EventRingLayout.consumers {
            let b = block(i)
            guard cb_load_acquire_u32(b.state) == 1 else { continue }
            // Acquire pairs with the consumer's release of its cursor: it is done with the slots below.
            let c = cb_load_acquire_u64(b.cursor)
            // A cursor ahead of ours or more than a ring behind is not a reader's: detach it.
            if c > head || head &- c > capacity {
                cb_store_release_u32(b.state, 2)
                continue
            }
            m = min(m, c)
        }
        return m
    }

    @inline(__always)
    func block(_ i: Int) -> EventConsumerBlock {
        EventConsumerBlock(firstBlock + (EventRingLayout.consumerOffset(i) - EventRingLayout.consumerOffset(0)))
    }

    /// Claims one slot; false while the slowest consumer holds the ring full.
    public mutating func claim() -> Bool {
        if head &- cachedMinimum < capacity { return true }
        cachedMinimum = minimum()
        return head &- cachedMinimum < capacity
    }

    public func slot() -> UnsafeMutableRawPointer { slots + Int(head & mask) &* RingLayout.slotSize }

    /// Publishes the claimed slot and wakes consumers that sleep.
    public mutating func publish() {
        head &+= 1
        // Release publishes the event written before it; pairs with the consumers' acquire.
        cb_store_release_u64(cursor, head)
    }

    /// Wakes parked consumers (call once per batch, not per event).
    public func wakeConsumers() {
        cb_fence_seq_cst()
        for i in 0..<EventRingLayout.consumers {
            let b = block(i)
            guard cb_load_acquire_u32(b.parked) != 0 else { continue }
            _ = cb_fetch_add_u32(b.wake, 1)
            _ = cb_futex_wake(b.wake, 1)
        }
    }

    /// While the ring is full: detaches the consumers holding it that may be detached or whose
    /// process is gone (`force`: any consumer holding it, when the engine stops); returns how
    /// many it detached (0: a consumer that asked for back-pressure is holding it, and the
    /// producer must wait).
    public mutating func detachLaggards(force: Bool = false) -> Int {
        let m = minimum()
        var detached = 0
        for i in 0..<EventRingLayout.consumers {
            let b = block(i)
            guard cb_load_acquire_u32(b.state) == 1 && cb_load_acquire_u64(b.cursor) == m else { continue }
            if force || b.flags.pointee & 1 != 0 || !processIsAlive(b.pid.pointee) {
                cb_store_release_u32(b.state, 2)
                _ = cb_fetch_add_u32(b.wake, 1)
                _ = cb_futex_wake(b.wake, 1)
                detached += 1
            }
        }
        cachedMinimum = minimum()
        return detached
    }
}

/// A consumer's side. Not thread-safe: one thread per consumer.
public final class EventConsumer: @unchecked Sendable {
    let ring: EventRing
    let block: EventConsumerBlock
    let producerCursor: UnsafeMutablePointer<UInt64>
    let slots: UnsafeMutableRawPointer
    let mask: UInt64
    let capacity: UInt64
    var tail: UInt64
    public let index: Int

    init(ring: EventRing, index: Int) {
        self.ring = ring
        self.index = index
        block = ring.block(index)
        producerCursor = (ring.file.base + EventRingLayout.producerOffset).assumingMemoryBound(to: UInt64.self)
        slots = ring.file.base + EventRingLayout.slotsOffset
        mask = UInt64(ring.capacity - 1)
        capacity = UInt64(ring.capacity)
        tail = cb_load_acquire_u64(block.cursor)
    }

    deinit { close() }

    /// Gives the slot back (the engine stops waiting for this consumer).
    public func close() {
        if cb_load_acquire_u32(block.state) == 1 { cb_store_release_u32(block.state, 0) }
    }

    /// Events readable now. Throws once the engine has detached this consumer.
    public func poll() throws(EventConsumerError) -> Int {
        guard cb_load_acquire_u32(block.state) == 1 else { throw .detached }
        let head = cb_load_acquire_u64(producerCursor)
        if head < tail { throw .fault(.cursorWentBack(was: tail, now: head)) }
        if head &- tail > capacity { throw .fault(.cursorBeyondCapacity(readable: head &- tail, capacity: capacity)) }
        return Int(head &- tail)
    }

    public func slot(_ k: Int) -> UnsafeRawPointer {
        UnsafeRawPointer(slots + Int((tail &+ UInt64(k)) & mask) &* RingLayout.slotSize)
    }

    public func release(_ n: Int) {
        tail &+= UInt64(n)
        // Release: our reads of these slots are done before the producer may reuse them.
        cb_store_release_u64(block.cursor, tail)
    }

    /// Sleeps until events come (or `timeoutNanoseconds` passes); returns how many are readable.
    public func wait(timeoutNanoseconds: Int64) throws(EventConsumerError) -> Int {
        var n = try poll()
        if n > 0 { return n }
        for _ in 0..<2000 {
            cb_cpu_relax()
            n = try poll()
            if n > 0 { return n }
        }
        let sequence = cb_load_acquire_u32(block.wake)
        cb_store_seq_cst_u32(block.parked, 1)
        cb_fence_seq_cst()
        n = try poll()
        if n == 0 { _ = cb_futex_wait(block.wake, sequence, timeoutNanoseconds) }
        cb_store_release_u32(block.parked, 0)
        return try poll()
    }
}
