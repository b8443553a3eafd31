// The doorbells file: the only part of an instance's public state that every client writes.
//
// Layout (little-endian): 0 magic "CBDOORB1" (u64), 8 shard count (u32); then 64 × shard s at
// 64 + 64 × s: the wake word (u32) and the parked flag (u32), on their own cache line.
//
// What a client can do with it, and no more: wake a shard early, or fail to wake it (a shard
// parks with a timeout, so a lost ring costs latency, never progress), or shrink the file (the
// engine's mapping is guarded against SIGBUS: a shrunk file reads zeros there and every park
// times out). The engine keeps nothing here it would trust: its state and counters are in the
// control file, which no client can write.

import CSync
import Glibc

/// A shard's wake-up: producers ring it after publishing if the shard said it would sleep.
@frozen
public struct Doorbell: @unchecked Sendable {
    @usableFromInline let wake: UnsafeMutablePointer<UInt32>
    @usableFromInline let parked: UnsafeMutablePointer<UInt32>
    /// Keeps the mapping alive as long as this view exists.
    @usableFromInline let owner: AnyObject

    @inlinable
    init(_ base: UnsafeMutableRawPointer, owner: AnyObject) {
        wake = base.assumingMemoryBound(to: UInt32.self)
        parked = (base + 4).assumingMemoryBound(to: UInt32.self)
        self.owner = owner
    }

    /// Producer side, after publishing: store(cursor) → fence → load(parked), against the
    /// shard's store(parked) → fence → load(cursors) in `park`.
    @inlinable
    public func ring() {
        cb_fence_seq_cst()
        if cb_load_acquire_u32(parked) != 0 {
            _ = cb_fetch_add_u32(wake, 1)
            _ = cb_futex_wake(wake, 1)
        }
    }

    /// Shard side: sleeps unless `stillIdle` (run after announcing the park) finds work.
    @inlinable
    public func park(timeoutNanoseconds: Int64, stillIdle: () -> Bool) {
        let sequence = cb_load_acquire_u32(wake)
        cb_store_seq_cst_u32(parked, 1)
        cb_fence_seq_cst()
        if stillIdle() { _ = cb_futex_wait(wake, sequence, timeoutNanoseconds) }
        cb_store_release_u32(parked, 0)
    }

    /// Shard side, for a sleep elsewhere (a doorbell wait queued on the journal's io_uring, so
    /// that a completion or a ring wakes it): announces the park and returns the wake word's
    /// value to wait on; the caller checks for work after, then sleeps, then calls `endPark`.
    @inlinable
    public func beginPark() -> UInt32 {
        let sequence = cb_load_acquire_u32(wake)
        cb_store_seq_cst_u32(parked, 1)
        cb_fence_seq_cst()
        return sequence
    }

    @inlinable
    public func endPark() { cb_store_release_u32(parked, 0) }

    /// The word producers increment and FUTEX_WAKE (a shared futex).
    public var wakeWord: UnsafeMutablePointer<UInt32> { wake }

    /// Wakes the shard whatever it is doing (stop, new session).
    public func wakeNow() {
        _ = cb_fetch_add_u32(wake, 1)
        _ = cb_futex_wake(wake, 1)
    }
}


/// The doorbells of every shard of an instance.
public final class DoorbellFile: @unchecked Sendable {
    public let file: MappedFile
    public let shardCount: Int

    static func size(shards: Int) -> Int { 64 + 64 * shards }

    /// Engine side: creates it with `mode` (clients must be able to write it).
    public static func create(directory: String, shards: Int, mode: mode_t) throws(SharedMemoryError) -> DoorbellFile {
        let path = InstanceLayout.doorbellsPath(directory)
        guard shards >= 1, shards <= InstanceLayout.maxShards else {
            throw .badHeader(path: path, "shard count \(shards) outside 1...\(InstanceLayout.maxShards)")
        }
        let file = try MappedFile.create(path: path, size: size(shards: shards), mode: mode, guarded: true)
        file.base.storeBytes(of: UInt32(shards).littleEndian, toByteOffset: 8, as: UInt32.self)
        cb_store_release_u64(file.base.assumingMemoryBound(to: UInt64.self), InstanceLayout.doorbellsMagic.littleEndian)
        return DoorbellFile(file: file, shards: shards)
    }

    /// Client side: attaches to the doorbells of an engine with `shards` shards.
    public static func attach(directory: String, shards: Int) throws(SharedMemoryError) -> DoorbellFile {
        let path = InstanceLayout.doorbellsPath(directory)
        let file = try MappedFile.open(path: path, minimumSize: 64)
        let magic = UInt64(littleEndian: cb_load_acquire_u64(file.base.assumingMemoryBound(to: UInt64.self)))
        let count = Int(UInt32(littleEndian: file.base.load(fromByteOffset: 8, as: UInt32.self)))
        guard magic == InstanceLayout.doorbellsMagic, count == shards, file.size == size(shards: shards) else {
            throw .badHeader(path: path, "not the doorbells of an engine with \(shards) shard(s)")
        }
        return DoorbellFile(file: file, shards: shards)
    }

    private init(file: MappedFile, shards: Int) {
        self.file = file
        shardCount = shards
    }

    public func doorbell(_ shard: Int) -> Doorbell { Doorbell(file.base + 64 + 64 * shard, owner: file) }

    /// The file was shrunk under the engine's mapping (its doorbells now only time out).
    public var faulted: Bool { file.faulted }
}
