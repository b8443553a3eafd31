// A single-producer single-consumer ring of 64-byte slots in a shared-memory file.
//
// Layout (little-endian; each group on its own 128-byte block, so that the producer's and the
// consumer's cursors never share a cache line or an adjacent-line prefetch pair):
//
//   0    magic "CBRING01" (u64), layout version (u32), slot size (u32), capacity (u64),
//        creator pid (i32), flags (u32: bit 0 = the consumer may park on the futex),
//   32   closed (u32): 0, or why the engine stopped serving this ring's session (RingClosed);
//        written by the engine into a client's report ring, read by the client
//   128  producer cursor (u64): sequence of the next slot to publish
//   256  consumer cursor (u64): sequence of the next slot to read
//   384  wake sequence (u32, the futex word), consumer parked (u32)
//   512  slots: capacity × 64 bytes; slot of sequence s is at (s & (capacity - 1))
//
// Slots [consumer, producer) are readable; the producer may write [producer, consumer +
// capacity). Cursors only grow (64-bit: they never wrap in practice). No compare-and-swap:
// each cursor has one writer. Nothing read from the file is trusted: the header is checked
// on attach, and a cursor that moves impossibly is reported as a fault, never followed.

import CSync
import Glibc

public enum RingLayout {
    public static let magic: UInt64 = 0x3130_474E_4952_4243  // "CBRING01"
    public static let version: UInt32 = 1
    public static let slotSize = 64
    public static let headerSize = 512
    public static let maxCapacity = 1 << 28
    static let producerOffset = 128
    static let consumerOffset = 256
    static let wakeOffset = 384
    static let parkedOffset = 388
    public static let flagConsumerMayPark: UInt32 = 1
    static let closedOffset = 32

    public static func fileSize(capacity: Int) -> Int { headerSize + capacity * slotSize }
}

/// Why the engine stopped serving a session, as it writes it into the session's report ring.
public enum RingClosed: UInt32, Sendable, CustomStringConvertible {
    /// The client read no reports for longer than the lag timeout.
    case lagging = 1
    /// The client's command ring had an impossible cursor.
    case ringFault = 2
    /// The shard could not journal the session's ingress binding (disk full, I/O error).
    case journalRefused = 3

    public var description: String {
        switch self {
        case .journalRefused: "the shard's journal refused the session's ingress binding (see the engine's log)"
        case .lagging: "the client read no reports for longer than the engine's lag timeout and was detached"
        case .ringFault: "the client's command ring had an impossible cursor and was detached"
        }
    }
}

/// A ring's cursor moved in a way a correct producer or consumer never moves it.
public enum RingFault: Error, Equatable, CustomStringConvertible {
    case cursorWentBack(was: UInt64, now: UInt64)
    case cursorBeyondCapacity(readable: UInt64, capacity: UInt64)

    public var description: String {
        switch self {
        case .cursorWentBack(let was, let now): "the producer cursor went back from \(was) to \(now)"
        case .cursorBeyondCapacity(let readable, let capacity):
            "the producer cursor claims \(readable) readable slots in a ring of \(capacity)"
        }
    }
}

/// An attached ring: owns the mapping; hands out the producer and consumer views.
public final class Ring {
    public let file: MappedFile
    public let capacity: Int
    public let creatorPid: Int32
    public let consumerMayPark: Bool

    /// Creates a ring file. Capacity must be a power of two. If the file exists, says whether
    /// its creator is alive (`inUse`) or gone (`stale`), and leaves it alone.
    public static func create(path: String, capacity: Int, mode: mode_t = 0o600,
                              consumerMayPark: Bool = true) throws(SharedMemoryError) -> Ring {
        guard capacity >= 2, capacity <= RingLayout.maxCapacity, capacity & (capacity - 1) == 0 else {
            throw .badHeader(path: path, "capacity \(capacity) is not a power of two in 2...\(RingLayout.maxCapacity)")
        }
        let file: MappedFile
        do {
            file = try MappedFile.create(path: path, size: RingLayout.fileSize(capacity: capacity), mode: mode)
        } catch .system(let failure) where failure.errno == .fileExists {
            throw existing(path: failure.path, call: failure.call)
        }
        return initialized(file, capacity: capacity, consumerMayPark: consumerMayPark)
    }

    /// A ring between two threads of this process (the engine and a plugin): the same layout in
    /// anonymous shared memory, no file.
    public static func inProcess(capacity: Int, consumerMayPark: Bool = true, label: String) throws(SharedMemoryError) -> Ring {
        guard capacity >= 2, capacity <= RingLayout.maxCapacity, capacity & (capacity - 1) == 0 else {
            throw .badHeader(path: label, "capacity \(capacity) is not a power of two in 2...\(RingLayout.maxCapacity)")
        }
        let file = try MappedFile.anonymous(size: RingLayout.fileSize(capacity: capacity), label: label)
        return initialized(file, capacity: capacity, consumerMayPark: consumerMayPark)
    }

    private static func initialized(_ file: MappedFile, capacity: Int, consumerMayPark: Bool) -> Ring {
        let base = file.base
        base.storeBytes(of: RingLayout.version.littleEndian, toByteOffset: 8, as: UInt32.self)
        base.storeBytes(of: UInt32(RingLayout.slotSize).littleEndian, toByteOffset: 12, as: UInt32.self)
        base.storeBytes(of: UInt64(capacity).littleEndian, toByteOffset: 16, as: UInt64.self)
        base.storeBytes(of: getpid().littleEndian, toByteOffset: 24, as: Int32.self)
        base.storeBytes(of: (consumerMayPark ? RingLayout.flagConsumerMayPark : 0).littleEndian, toByteOffset: 28,
                        as: UInt32.self)
        // The magic last, with release: whoever sees it sees a whole header.
        cb_store_release_u64((base + 0).assumingMemoryBound(to: UInt64.self), RingLayout.magic.littleEndian)
        return Ring(file: file, capacity: capacity, creatorPid: getpid(), consumerMayPark: consumerMayPark)
    }

    /// Attaches to an existing ring file, checking every header field against the file.
    public static func attach(path: String) throws(SharedMemoryError) -> Ring {
        let file = try MappedFile.open(path: path, minimumSize: RingLayout.headerSize)
        let base = file.base
        let magic = UInt64(littleEndian: cb_load_acquire_u64((base + 0).assumingMemoryBound(to: UInt64.self)))
        guard magic == RingLayout.magic else {
            throw .badHeader(path: path, "magic 0x\(String(magic, radix: 16)) is not a ring's")
        }
        let version = UInt32(littleEndian: base.load(fromByteOffset: 8, as: UInt32.self))
        guard version == RingLayout.version else {
            throw .badHeader(path: path, "layout version \(version), this build reads \(RingLayout.version)")
        }
        let slotSize = UInt32(littleEndian: base.load(fromByteOffset: 12, as: UInt32.self))
        guard slotSize == RingLayout.slotSize else {
            throw .badHeader(path: path, "slot size \(slotSize), expected \(RingLayout.slotSize)")
        }
        let rawCapacity = UInt64(littleEndian: base.load(fromByteOffset: 16, as: UInt64.self))
        guard rawCapacity >= 2, rawCapacity <= UInt64(RingLayout.maxCapacity), rawCapacity & (rawCapacity - 1) == 0 else {
            throw .badHeader(path: path, "capacity \(rawCapacity) is not a power of two in 2...\(RingLayout.maxCapacity)")
        }
        let capacity = Int(rawCapacity)
        guard file.size == RingLayout.fileSize(capacity: capacity) else {
            throw .badHeader(path: path, "the file has \(file.size) bytes; capacity \(capacity) needs \(RingLayout.fileSize(capacity: capacity))")
        }
        let flags = UInt32(littleEndian: base.load(fromByteOffset: 28, as: UInt32.self))
        guard flags & ~RingLayout.flagConsumerMayPark == 0 else {
            throw .badHeader(path: path, "unknown flags 0x\(String(flags, radix: 16))")
        }
        let pid = Int32(littleEndian: base.load(fromByteOffset: 24, as: Int32.self))
        return Ring(file: file, capacity: capacity, creatorPid: pid,
                    consumerMayPark: flags & RingLayout.flagConsumerMayPark != 0)
    }

    private init(file: MappedFile, capacity: Int, creatorPid: Int32, consumerMayPark: Bool) {
        self.file = file
        self.capacity = capacity
        self.creatorPid = creatorPid
        self.consumerMayPark = consumerMayPark
    }

    private static func existing(path: String, call: String) -> SharedMemoryError {
        // Read only the creator pid; the rest of a foreign file is not our business here.
        let fd = Glibc.open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return .system(SystemCallError(call, path, errno: EEXIST)) }
        defer { close(fd) }
        var pid: Int32 = 0
        guard pread(fd, &pid, 4, 24) == 4 else { return .stale(path: path, creatorPid: 0) }
        let creator = Int32(littleEndian: pid)
        return processIsAlive(creator) ? .inUse(path: path, creatorPid: creator) : .stale(path: path, creatorPid: creator)
    }

    /// The producer's view. One producer per ring: the caller guarantees it.
    public func producer() -> RingProducer { RingProducer(base: file.base, capacity: capacity, mayPark: consumerMayPark) }

    /// The consumer's view. One consumer per ring.
    public func consumer() -> RingConsumer { RingConsumer(base: file.base, capacity: capacity) }

    /// Whether the process that created the ring is still alive.
    public var creatorIsAlive: Bool { processIsAlive(creatorPid) }

    /// Both cursors as they are now (for operators' tools: they may be anything).
    public var cursors: (producer: UInt64, consumer: UInt64) {
        let p = RingPointers(base: file.base, capacity: capacity)
        return (cb_load_acquire_u64(p.producerCursor), cb_load_acquire_u64(p.consumerCursor))
    }
}

/// Where the shared parts of a ring are, for both views.
@frozen @usableFromInline
struct RingPointers {
    @usableFromInline let slots: UnsafeMutableRawPointer
    @usableFromInline let producerCursor: UnsafeMutablePointer<UInt64>
    @usableFromInline let consumerCursor: UnsafeMutablePointer<UInt64>
    @usableFromInline let wakeSequence: UnsafeMutablePointer<UInt32>
    @usableFromInline let parked: UnsafeMutablePointer<UInt32>
    @usableFromInline let mask: UInt64
    @usableFromInline let capacity: UInt64

    init(base: UnsafeMutableRawPointer, capacity: Int) {
        slots = base + RingLayout.headerSize
        producerCursor = (base + RingLayout.producerOffset).assumingMemoryBound(to: UInt64.self)
        consumerCursor = (base + RingLayout.consumerOffset).assumingMemoryBound(to: UInt64.self)
        wakeSequence = (base + RingLayout.wakeOffset).assumingMemoryBound(to: UInt32.self)
        parked = (base + RingLayout.parkedOffset).assumingMemoryBound(to: UInt32.self)
        mask = UInt64(capacity - 1)
        self.capacity = UInt64(capacity)
    }

    @inlinable @inline(__always)
    func slot(_ sequence: UInt64) -> UnsafeMutableRawPointer {
        slots + Int(sequence & mask) &* RingLayout.slotSize
    }
}

/// Writes slots. Not thread-safe: one producer thread per ring. Holds raw pointers into the
/// mapping: the `Ring` must outlive it.
@frozen
public struct RingProducer {
    @usableFromInline let ring: RingPointers
    @usableFromInline let mayPark: Bool

    /// Tells the consumer why the engine stopped serving it (the engine writes this into a
    /// client's report ring when it detaches the session). Release: after every report before it.
    public func markClosed(_ reason: RingClosed) {
        let word = (ring.slots - RingLayout.headerSize + RingLayout.closedOffset).assumingMemoryBound(to: UInt32.self)
        cb_store_release_u32(word, reason.rawValue)
    }
    /// The next sequence to publish (our own cursor; nobody else writes it).
    @usableFromInline var head: UInt64
    /// The consumer's cursor as last read: refreshed only when the ring looks full.
    @usableFromInline var cachedConsumer: UInt64

    init(base: UnsafeMutableRawPointer, capacity: Int, mayPark: Bool) {
        ring = RingPointers(base: base, capacity: capacity)
        self.mayPark = mayPark
        // Resume where the ring is (a producer that re-attaches after a restart).
        head = cb_load_acquire_u64(ring.producerCursor)
        cachedConsumer = cb_load_acquire_u64(ring.consumerCursor)
    }

    /// Claims up to `count` free slots and returns how many it got (0: the ring is full).
    /// Write them with `slot(_:)`, then `publish(_:)`.
    @inlinable
    public mutating func claim(_ count: Int) -> Int {
        var free = ring.capacity &- (head &- cachedConsumer)
        if free < UInt64(count) {
            // Acquire pairs with the consumer's release in `release(_:)`: the slots it freed
            // are no longer being read when we overwrite them.
            cachedConsumer = cb_load_acquire_u64(ring.consumerCursor)
            free = ring.capacity &- (head &- cachedConsumer)
            // A consumer cursor ahead of ours is corrupt: claim nothing rather than overwrite.
            if free > ring.capacity { return 0 }
        }
        return Int(min(free, UInt64(count)))
    }

    /// The k-th claimed slot (k < what `claim` returned).
    @inlinable @inline(__always)
    public func slot(_ k: Int) -> UnsafeMutableRawPointer {
        ring.slot(head &+ UInt64(k))
    }

    /// Makes the first `count` claimed slots visible to the consumer, and wakes it if parked.
    @inlinable
    public mutating func publish(_ count: Int) {
        head &+= UInt64(count)
        // Release publishes the slot contents written before it; pairs with the consumer's
        // acquire load in `poll()`.
        cb_store_release_u64(ring.producerCursor, head)
        if mayPark {
            // Store(cursor) then load(parked), against the consumer's store(parked) then
            // load(cursor): the full fence makes sure one of the two sees the other.
            cb_fence_seq_cst()
            if cb_load_acquire_u32(ring.parked) != 0 {
                _ = cb_fetch_add_u32(ring.wakeSequence, 1)
                _ = cb_futex_wake(ring.wakeSequence, 1)
            }
        }
    }

    /// Copies one 64-byte record in and publishes it; false when the ring is full.
    @inlinable
    public mutating func tryWrite(_ record: UnsafeRawPointer) -> Bool {
        guard claim(1) == 1 else { return false }
        slot(0).copyMemory(from: record, byteCount: RingLayout.slotSize)
        publish(1)
        return true
    }

    /// Slots published and not yet read, as the producer last saw them.
    public var backlog: Int { Int(head &- cb_load_acquire_u64(ring.consumerCursor)) }
}

/// How a consumer waits for data: spin, then yield, then sleep on the futex. Never sleeps on
/// a timer.
@frozen
public struct WaitStrategy: Sendable {
    public var spins: Int
    public var yields: Int
    /// Park on the futex after spinning and yielding (needs a ring created with
    /// consumerMayPark). The timeout only bounds how long a parked consumer goes without
    /// checking for a dead producer; data wakes it at once.
    public var park: Bool
    public var parkTimeoutNanoseconds: Int64
    /// A shard whose only work is output waiting for its journal batch: 0 spins for the
    /// completion (on the core the kernel worker doing the write may need); above 0 sleeps in the
    /// kernel (io_uring_wait_cqe_timeout) up to this long per wait, so the worker can run there.
    /// A command arriving meanwhile waits at most this long, unless `completionWakesOnDoorbell`.
    public var completionWaitNanoseconds: UInt64
    /// With a kernel wait: also queue a futex wait on the shard's doorbell in the journal's
    /// io_uring (IORING_OP_FUTEX_WAIT, kernel 6.7+), so a producer's ring wakes the shard at once
    /// instead of after the completion or the timeout. Falls back to the plain wait where the
    /// kernel refuses it.
    public var completionWakesOnDoorbell = false

    public init(spins: Int = 10_000, yields: Int = 100, park: Bool = true, parkTimeoutNanoseconds: Int64 = 100_000_000,
                completionWaitNanoseconds: UInt64 = 0) {
        self.spins = spins
        self.yields = yields
        self.park = park
        self.parkTimeoutNanoseconds = parkTimeoutNanoseconds
        self.completionWaitNanoseconds = completionWaitNanoseconds
    }

    public static let busySpin = WaitStrategy(spins: .max, yields: 0, park: false)
}

/// Reads slots. Not thread-safe: one consumer thread per ring.
@frozen
public struct RingConsumer {
    @usableFromInline let ring: RingPointers

    /// Why the producer closed this ring, if it did (an unknown value reads as a ring fault).
    public var closed: RingClosed? {
        let word = (ring.slots - RingLayout.headerSize + RingLayout.closedOffset).assumingMemoryBound(to: UInt32.self)
        let value = cb_load_acquire_u32(word)
        return value == 0 ? nil : RingClosed(rawValue: value) ?? .ringFault
    }
    /// The next sequence to read (our own cursor).
    @usableFromInline var tail: UInt64
    /// The producer's cursor as last read.
    @usableFromInline var cachedProducer: UInt64

    init(base: UnsafeMutableRawPointer, capacity: Int) {
        ring = RingPointers(base: base, capacity: capacity)
        tail = cb_load_acquire_u64(ring.consumerCursor)
        cachedProducer = tail
    }

    /// How many slots are readable now (0: empty). Throws if the producer cursor moved in a
    /// way no correct producer moves it; the caller should detach the ring and report it.
    @inlinable
    public mutating func poll() throws(RingFault) -> Int {
        if cachedProducer == tail {
            // Acquire pairs with the producer's release in `publish(_:)`: the slots below the
            // cursor we read are fully written.
            let now = cb_load_acquire_u64(ring.producerCursor)
            if now < cachedProducer { throw .cursorWentBack(was: cachedProducer, now: now) }
            cachedProducer = now
        }
        let readable = cachedProducer &- tail
        if readable > ring.capacity { throw .cursorBeyondCapacity(readable: readable, capacity: ring.capacity) }
        return Int(readable)
    }

    /// The k-th readable slot (k < what `poll` returned).
    @inlinable @inline(__always)
    public func slot(_ k: Int) -> UnsafeRawPointer {
        UnsafeRawPointer(ring.slot(tail &+ UInt64(k)))
    }

    /// Gives the first `count` readable slots back to the producer.
    @inlinable
    public mutating func release(_ count: Int) {
        tail &+= UInt64(count)
        // Release: our reads of those slots happen before the producer may reuse them; pairs
        // with the producer's acquire load in `claim(_:)`.
        cb_store_release_u64(ring.consumerCursor, tail)
    }

    /// Waits until something is readable, as the strategy says, and returns how much.
    /// Returns 0 after a park that timed out, so that the caller can check on the producer.
    @inlinable
    public mutating func wait(_ strategy: WaitStrategy) throws(RingFault) -> Int {
        var n = try poll()
        if n > 0 { return n }
        var spins = 0
        while spins < strategy.spins {
            cb_cpu_relax()
            n = try poll()
            if n > 0 { return n }
            spins += 1
        }
        for _ in 0..<strategy.yields {
            sched_yield()
            n = try poll()
            if n > 0 { return n }
        }
        guard strategy.park else { return 0 }
        let sequence = cb_load_acquire_u32(ring.wakeSequence)
        cb_store_seq_cst_u32(ring.parked, 1)
        // Store(parked) then load(cursor): see `publish`. If data came meanwhile, don't sleep.
        cb_fence_seq_cst()
        n = try poll()
        if n == 0 {
            _ = cb_futex_wait(ring.wakeSequence, sequence, strategy.parkTimeoutNanoseconds)
            n = try poll()
        }
        cb_store_release_u32(ring.parked, 0)
        return n
    }

    /// Slots readable, without changing anything.
    public var backlog: Int { Int(cb_load_acquire_u64(ring.producerCursor) &- tail) }
}
