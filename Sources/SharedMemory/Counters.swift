// The counters a shard publishes in the control file: one writer (the shard), plain stores;
// readers load them relaxed (layout: InstanceLayout.swift).

import CPluginABI
import CSync
import Glibc

/// The counters each shard publishes. Raw values are word indexes in the counter block.
public enum ShardCounter: Int, CaseIterable, Sendable {
    case commands = 0
    case events = 1
    case trades = 2
    case rejects = 3
    case batches = 4
    case largestBatch = 5
    case sessions = 6
    case ringFaults = 7
    case lagDetaches = 8
    case parks = 9
    case backlog = 10
    case malformed = 11
    /// Event-ring consumers detached for lagging (or for being gone).
    case eventDetaches = 12
    /// Times the shard waited on a full event ring (back-pressure from a consumer).
    case eventWaits = 13
    /// Times the journal refused a command (disk full, I/O error).
    case journalFailures = 14
    /// 1 while the journal refuses: the shard takes no command (a gauge).
    case journalFailed = 15
    /// Journal batches made durable, and their bytes.
    case journalBatches = 16
    case journalBytes = 17
    /// The highest sequence on disk.
    case durableSequence = 18
    case snapshots = 19
    case lastSnapshotSequence = 20
    case snapshotPauseMicros = 21
    case snapshotFailures = 22
    /// Journal segments removed after a snapshot ([engine] prune_journal).
    case journalSegmentsPruned = 23

    public var name: String {
        switch self {
        case .commands: "commands"
        case .events: "events"
        case .trades: "trades"
        case .rejects: "rejects"
        case .batches: "batches"
        case .largestBatch: "largest_batch"
        case .sessions: "sessions"
        case .ringFaults: "ring_faults"
        case .lagDetaches: "lag_detaches"
        case .parks: "parks"
        case .backlog: "ring_backlog"
        case .malformed: "malformed"
        case .eventDetaches: "event_consumer_detaches"
        case .eventWaits: "event_ring_waits"
        case .journalFailures: "journal_failures"
        case .journalFailed: "journal_failed"
        case .journalBatches: "journal_batches"
        case .journalBytes: "journal_bytes"
        case .durableSequence: "durable_sequence"
        case .snapshots: "snapshots"
        case .lastSnapshotSequence: "last_snapshot_sequence"
        case .snapshotPauseMicros: "snapshot_pause_us"
        case .snapshotFailures: "snapshot_failures"
        case .journalSegmentsPruned: "journal_segments_pruned"
        }
    }
}

/// A shard's counters in the control file: one writer, plain stores.
@frozen
public struct ShardCounters: @unchecked Sendable {
    @usableFromInline let words: UnsafeMutablePointer<UInt64>
    @usableFromInline let rejects: UnsafeMutablePointer<UInt64>
    @usableFromInline let batchSizes: UnsafeMutablePointer<UInt64>
    /// Match latency per batch: from taking a batch off a ring to its last report written.
    public let matchLatency: UnsafeMutablePointer<UInt64>
    /// fdatasync latency: from a journal batch's submission to its completion.
    public let syncLatency: UnsafeMutablePointer<UInt64>
    /// Commands per group commit (a count histogram).
    public let journalBatchCommands: UnsafeMutablePointer<UInt64>
    let threadIdWord: UnsafeMutablePointer<Int32>
    /// Keeps the mapping alive as long as this view exists.
    let owner: AnyObject

    init(_ block: UnsafeMutableRawPointer, owner: AnyObject) {
        self.owner = owner
        words = (block + InstanceLayout.countersOffset).assumingMemoryBound(to: UInt64.self)
        rejects = (block + InstanceLayout.rejectsOffset).assumingMemoryBound(to: UInt64.self)
        batchSizes = (block + InstanceLayout.batchesOffset).assumingMemoryBound(to: UInt64.self)
        matchLatency = (block + InstanceLayout.matchLatencyOffset).assumingMemoryBound(to: UInt64.self)
        syncLatency = (block + InstanceLayout.syncLatencyOffset).assumingMemoryBound(to: UInt64.self)
        threadIdWord = (block + InstanceLayout.threadIdOffset).assumingMemoryBound(to: Int32.self)
        journalBatchCommands = (block + InstanceLayout.journalBatchOffset).assumingMemoryBound(to: UInt64.self)
    }

    /// The shard thread's kernel id (0 before it runs): its CPU time is in /proc.
    public var threadId: Int32 {
        get { Int32(bitPattern: cb_load_acquire_u32(UnsafeMutableRawPointer(threadIdWord).assumingMemoryBound(to: UInt32.self))) }
        nonmutating set { cb_store_release_u32(UnsafeMutableRawPointer(threadIdWord).assumingMemoryBound(to: UInt32.self), UInt32(bitPattern: newValue)) }
    }

    /// A histogram read now: cumulative counts at 256 ns << i, the count above, sum (ns), count.
    public static func readHistogram(_ words: UnsafeMutablePointer<UInt64>) -> LatencyHistogram {
        var cumulative: [UInt64] = []
        var running: UInt64 = 0
        for i in 0..<InstanceLayout.histogramBuckets {
            running &+= cb_load_relaxed_u64(words + i)
            cumulative.append(running)
        }
        let sum = cb_load_relaxed_u64(words + InstanceLayout.histogramBuckets + 1)
        let count = cb_load_relaxed_u64(words + InstanceLayout.histogramBuckets + 2)
        // The writer adds bucket, sum, count in turn: a reader between them sees a count one
        // short of the buckets. Prometheus wants +Inf (= count) >= every bucket.
        return LatencyHistogram(cumulative: cumulative, sum: sum, count: max(count, running))
    }

    /// Counts a batch of `size` (≥ 1) commands in its power-of-two bucket.
    @inlinable @inline(__always)
    public func addBatch(_ size: Int) {
        let bucket = min(InstanceLayout.batchBuckets - 1, Int.bitWidth - 1 - size.leadingZeroBitCount)
        batchSizes[bucket] &+= 1
    }

    public func batches(bucket: Int) -> UInt64 { cb_load_relaxed_u64(batchSizes + bucket) }

    @inlinable @inline(__always)
    public func add(_ counter: ShardCounter, _ n: UInt64 = 1) { words[counter.rawValue] &+= n }

    @inlinable @inline(__always)
    public func set(_ counter: ShardCounter, _ value: UInt64) { words[counter.rawValue] = value }

    @inlinable @inline(__always)
    public func addReject(_ code: UInt8) { rejects[min(Int(code), InstanceLayout.rejectSlots - 1)] &+= 1 }

    public func read(_ counter: ShardCounter) -> UInt64 { cb_load_relaxed_u64(words + counter.rawValue) }

    /// The shard's ingress drops (IngressCounters), in the same block.
    public var ingress: IngressCounters {
        IngressCounters(words: words + (InstanceLayout.ingressOffset - InstanceLayout.countersOffset) / 8)
    }

    public func rejects(_ code: UInt8) -> UInt64 {
        cb_load_relaxed_u64(rejects + min(Int(code), InstanceLayout.rejectSlots - 1))
    }
}

/// A latency histogram as read: bucket i holds the observations <= `bound(i)`.
public struct LatencyHistogram: Sendable, Equatable {
    public var cumulative: [UInt64]
    /// Nanoseconds for a latency histogram; the total counted for a count histogram.
    public var sum: UInt64
    public var count: UInt64
    public static func boundNanoseconds(_ i: Int) -> UInt64 { 256 << UInt64(i) }

    public init(cumulative: [UInt64], sum: UInt64, count: UInt64) {
        self.cumulative = cumulative
        self.sum = sum
        self.count = count
    }

    /// The smallest bound under which at least `fraction` of the observations fall (an upper
    /// estimate); nil when empty or beyond the last bound.
    public func quantileBound(_ fraction: Double) -> UInt64? {
        guard count > 0 else { return nil }
        let target = UInt64((Double(count) * fraction).rounded(.up))
        for (i, c) in cumulative.enumerated() where c >= target { return Self.boundNanoseconds(i) }
        return nil
    }
}

/// The counters of one symbol; one writer: the shard that owns the symbol.
@frozen
public struct SymbolCounters: @unchecked Sendable {
    public static let commands = 0, trades = 1, rejects = 2, tradedQuantity = 3
    public let words: UnsafeMutablePointer<UInt64>
    public init(words: UnsafeMutablePointer<UInt64>) { self.words = words }
    public func read(_ word: Int) -> UInt64 { cb_load_relaxed_u64(words + word) }
}

/// A shard's migrations in the control file (written by the thread that runs a migration: one
/// at a time per engine; read by `crossbook stat` and the metrics).
public struct MigrationCounters: @unchecked Sendable {
    public static let into = 0, outOf = 1, lastPauseMicros = 2, maxPauseMicros = 3, inProgress = 4, failed = 5
    public let words: UnsafeMutablePointer<UInt64>
    public init(words: UnsafeMutablePointer<UInt64>) { self.words = words }
    public func read(_ word: Int) -> UInt64 { cb_load_relaxed_u64(words + word) }
    public func add(_ word: Int, _ n: UInt64 = 1) { cb_store_release_u64(words + word, read(word) &+ n) }
    public func set(_ word: Int, _ value: UInt64) { cb_store_release_u64(words + word, value) }
}

/// Commands of ingress sources (Kafka partitions) a shard dropped before sequencing them: not
/// journaled, no report (one writer, the shard). `replays`: at or below the symbol's position in
/// its partition, applied already (a restart or a rewind reads a partition again). `elsewhere`:
/// for a symbol this engine gave to another engine (frozen for the move, or gone): the new
/// owner reads them from the partition.
public struct IngressCounters: @unchecked Sendable {
    /// replays, elsewhere: commands dropped unsequenced; watermarks: a plugin's watermarks
    /// journaled as positions; watermarksDeferred: not taken (commands of the session still in
    /// its ring).
    public static let replays = 0, elsewhere = 1, watermarks = 2, watermarksDeferred = 3
    public let words: UnsafeMutablePointer<UInt64>
    public init(words: UnsafeMutablePointer<UInt64>) { self.words = words }
    public func read(_ word: Int) -> UInt64 { cb_load_relaxed_u64(words + word) }
    @inline(__always) public func add(_ word: Int) { cb_store_release_u64(words + word, read(word) &+ 1) }
}

/// A shard's replication in the control file (written by the engine's control thread every
/// 100 ms; read by `crossbook stat` and the metrics). The role and epoch are the engine's.
public struct ReplicationCounters: @unchecked Sendable {
    /// role: 0 no replication, 1 primary, 2 standby. engaged: 1 once sync is engaged (primary)
    /// or the primary says so (standby). lag: records durable on the primary and not yet
    /// confirmed by a standby (primary) or not yet applied here (standby). alarm: 1 once a
    /// standby stopped applying (digest mismatch, gap). connected: standbys connected (primary)
    /// or 1 while following (standby).
    public static let role = 0, epoch = 1, engaged = 2, lag = 3, digestsMatched = 4, alarm = 5, connected = 6, promotions = 7
    public let words: UnsafeMutablePointer<UInt64>
    public init(words: UnsafeMutablePointer<UInt64>) { self.words = words }
    public func read(_ word: Int) -> UInt64 { cb_load_relaxed_u64(words + word) }
    public func set(_ word: Int, _ value: UInt64) { cb_store_release_u64(words + word, value) }
}
