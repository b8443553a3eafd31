// How the control thread talks to a shard: a bounded single-producer single-consumer queue of
// messages, and the semaphores it waits on for an answer.

import CSync
import Glibc
import SharedMemory

/// What the control thread tells a shard, through its mailbox.
enum ShardMessage {
    /// `source`: the session's commands come from that ingress partition (Ingress.swift).
    case attach(session: UInt32, commands: RingConsumer, reports: RingProducer, source: IngressSource?)
    case detach(session: UInt32)
    /// Which sessions own resting orders now (for reusing session ids).
    case restingOwners(RestingOwnersQuery)
    /// A sequenced admin command (Admin.swift).
    case admin(AdminRequest)
    /// What the admin commands have set.
    case adminState(AdminStateQuery)
    /// A symbol moving here, moving away, arriving (Migration.swift); `abandon`: it will not come.
    case expect(MigrationStep)
    case migrateIn(MigrationStep, abandon: Bool)
    case holdOutgoing(MigrationStep)
    case sealExport(MigrationStep)
    /// A symbol arriving from another engine (Transfer.swift): imported, still held; then thawed
    /// (the route won) or dropped (lost).
    case importTransfer(MigrationStep)
    case finishTransfer(MigrationStep, won: Bool)
    /// Floors of symbols that arrived, whose partitions the ingress plugin read again through an
    /// offset (IngressRewinds): (symbol id, "topic#partition", offset). Not journaled.
    case ingressMarks([(UInt32, String, UInt64)])
    /// A plugin read its source partition through `offset` and submitted (through `session`) every
    /// message of it this shard's symbols had up to there: the shard takes `offset` as its
    /// position there, journaled, if it took everything that session submitted to it (its ring is
    /// empty) and is behind (Ingress.swift, watermarks).
    case ingressWatermark(session: UInt32, offset: UInt64)
    /// The primary's replication: the state digest now, at the sequence applied now.
    case digest(DigestQuery)
    /// A standby becomes the primary: it applies everything it received, then journals the
    /// request's epoch command (Replica.swift).
    case promote(AdminRequest)
}

/// A shard's state digest and the sequence it is at, for the replication sender.
final class DigestQuery: @unchecked Sendable {
    private let lock = Lock()
    private var answer: (sequence: UInt64, digest: UInt64)?
    let done = Semaphore()
    func reply(_ sequence: UInt64, _ digest: UInt64) {
        lock.locked { answer = (sequence, digest) }
        done.signal()
    }
    var value: (sequence: UInt64, digest: UInt64)? { lock.locked { answer } }
}

/// The control thread's question for a shard's admin state, and its answer.
final class AdminStateQuery: @unchecked Sendable {
    private let lock = Lock()
    private var answer: ShardAdminState?
    let done = Semaphore()
    func reply(_ state: ShardAdminState) {
        lock.locked { answer = state }
        done.signal()
    }
    var state: ShardAdminState? { lock.locked { answer } }
}

/// The control thread's question to a shard and its answer.
final class RestingOwnersQuery: @unchecked Sendable {
    private let lock = Lock()
    private var answer = Set<UInt32>()
    let done = Semaphore()
    func reply(_ owners: Set<UInt32>) {
        lock.locked { answer = owners }
        done.signal()
    }
    var owners: Set<UInt32> { lock.locked { answer } }
}

/// A bounded single-producer single-consumer queue between two threads of this process.
final class Mailbox<T>: @unchecked Sendable {
    private let slots: UnsafeMutablePointer<T?>
    private let capacity: UInt64
    private let head: UnsafeMutablePointer<UInt64>  // written by the producer
    private let tail: UnsafeMutablePointer<UInt64>  // written by the consumer

    init(capacity: Int) {
        self.capacity = UInt64(capacity)
        slots = .allocate(capacity: capacity)
        slots.initialize(repeating: nil, count: capacity)
        head = cacheAligned(UInt64.self, count: 1)
        head.initialize(to: 0)
        tail = cacheAligned(UInt64.self, count: 1)
        tail.initialize(to: 0)
    }

    deinit {
        slots.deinitialize(count: Int(capacity))
        slots.deallocate()
        head.deallocate()
        tail.deallocate()
    }

    func push(_ value: T) -> Bool {
        let h = head.pointee
        // Acquire: the consumer has finished with the slot it released.
        guard h &- cb_load_acquire_u64(tail) < capacity else { return false }
        slots[Int(h % capacity)] = value
        // Release: the value is written before the consumer can see the new head.
        cb_store_release_u64(head, h &+ 1)
        return true
    }

    func pop() -> T? {
        let t = tail.pointee
        // Acquire pairs with push's release.
        guard t != cb_load_acquire_u64(head) else { return nil }
        let value = slots[Int(t % capacity)]
        slots[Int(t % capacity)] = nil
        cb_store_release_u64(tail, t &+ 1)
        return value
    }

    var isEmpty: Bool { cb_load_acquire_u64(head) == tail.pointee }
}

/// A counting semaphore for start-up handshakes between threads (not on any hot path).
final class Semaphore: @unchecked Sendable {
    private var value = sem_t()

    init() { sem_init(&value, 0, 0) }
    deinit { sem_destroy(&value) }

    func signal() { sem_post(&value) }

    func wait() {
        while sem_wait(&value) != 0 && errno == EINTR {}
    }

    /// False when `seconds` passed first.
    func wait(seconds: Double) -> Bool {
        var deadline = timespec()
        clock_gettime(CLOCK_REALTIME, &deadline)
        let nanos = Int(deadline.tv_nsec) + Int(seconds * 1e9)
        deadline.tv_sec += nanos / 1_000_000_000
        deadline.tv_nsec = nanos % 1_000_000_000
        while true {
            if sem_timedwait(&value, &deadline) == 0 { return true }
            if errno != EINTR { return false }
        }
    }
}

