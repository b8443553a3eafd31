// The files of one engine instance, in its own directory (default /dev/shm/crossbook-<uid>/<name>):
//
//   engine                 the control file: header, then per shard its counters. Written by
//                          the engine only: read-only to everyone (mode 0400, 0440 with a group),
//                          written through the descriptor that created it; clients map it read-only
//   doorbells              per shard a wake word and a parked flag: the one file every client
//                          writes (see Doorbell.swift)
//   symbols                text: one line per symbol: name id shard tick lot min max maxqty
//   events.<shard>         the shard's event ring: market data for any number of consumers
//   <client>.session       a client's handshake state (64 bytes)
//   <client>.cmd.<shard>   the client's command ring to that shard (client produces)
//   <client>.rep.<shard>   that shard's report ring to the client (shard produces)
//   <client>.hello         written last, by rename: "my rings are ready"
//
// Engine control file layout (little-endian), version 3:
//   0    magic "CBENGIN1" (u64), version (u32), shard count (u32), engine pid (i32),
//        state (u32: 1 starting, 2 running, 3 stopping, 4 stopped), start time ns (u64),
//        32 symbol count (u32)
//   64 + 2048 × s   shard s: 64 bytes reserved (the doorbell until version 2),
//        at +64 the counters (24 u64 slots: the 23 ShardCounter words, one spare), at +256 rejects
//        by reason (u64 × 24),
//        at +448 batch sizes (u64 × 8: batches of 1, 2–3, 4–7, … 128–256 commands),
//        at +512 match latency per batch and at +704 fdatasync latency (histograms of
//        CB_HISTOGRAM_WORDS u64, see cb_sync.h), at +896 the shard thread's kernel id (i32),
//        at +1024 commands per group commit (a count histogram: bucket i holds n <= 2^i).
//   then 64 × symbol: name (24 bytes, NUL-padded), id (u32), shard (u32), commands, trades,
//        rejects, traded quantity (u64 each, written by the owning shard).
//   then 256 × plugin slot (16): name (48), version (16), kinds (u32), state (u32), health (u32),
//        4 reserved, updated ns (u64), 8 reserved, message (160).
//   then 128 × plugin counter (64): name (80), plugin slot (u32), type (u32: 0 counter, 1 gauge),
//        in use (u32), 4 reserved, value (u64 at +96), 24 reserved.
//
// Counters have one writer (the shard), written with plain stores; readers load them relaxed
// and may see a value one update old, never a torn one (aligned 64-bit). Plugin slots have one
// writer, the engine's control thread; plugin counters one writer, their plugin.

import CPluginABI
import CSync
import Glibc

public enum InstanceLayout {
    public static let engineMagic: UInt64 = 0x3149_4E47_4E45_4243  // "CBENGIN1"
    public static let sessionMagic: UInt64 = 0x3153_5345_5353_4243  // "CBSESS1" + "1"
    public static let doorbellsMagic: UInt64 = 0x3142_524F_4F44_4243  // "CBDOORB1"
    public static let version: UInt32 = 3
    public static let headerSize = 64
    public static let shardBlockSize = 2048
    public static let countersOffset = 64
    public static let rejectsOffset = 256
    /// Reject reasons by raw value (the last slot also takes any value beyond it).
    public static let rejectSlots = 24
    public static let batchesOffset = 448
    public static let batchBuckets = 8
    public static let matchLatencyOffset = 512
    public static let syncLatencyOffset = 704
    public static let threadIdOffset = 896
    public static let journalBatchOffset = 1024
    public static let histogramWords = Int(CB_HISTOGRAM_WORDS)
    public static let histogramBuckets = Int(CB_HISTOGRAM_BUCKETS)
    public static let maxShards = 64
    public static let symbolBlockSize = 64
    public static let maxSymbols = 1 << 16
    public static let pluginSlots = 16
    public static let pluginSlotSize = 256
    public static let pluginCounterSlots = 64
    public static let pluginCounterSize = 128

    public static func symbolsOffset(shards: Int) -> Int { headerSize + shards * shardBlockSize }
    public static func pluginsOffset(shards: Int, symbols: Int) -> Int {
        symbolsOffset(shards: shards) + symbols * symbolBlockSize
    }
    public static func pluginCountersOffset(shards: Int, symbols: Int) -> Int {
        pluginsOffset(shards: shards, symbols: symbols) + pluginSlots * pluginSlotSize
    }
    public static func engineFileSize(shards: Int, symbols: Int) -> Int {
        pluginCountersOffset(shards: shards, symbols: symbols) + pluginCounterSlots * pluginCounterSize
    }

    /// Where an instance's files live unless configured otherwise.
    /// Each user has their own parent: /dev/shm is everyone's, and one user's engine must not
    /// decide where another user's instances live.
    public static func defaultDirectory(_ instance: String) -> String { "/dev/shm/crossbook-\(getuid())/\(instance)" }

    public static func enginePath(_ dir: String) -> String { dir + "/engine" }
    public static func doorbellsPath(_ dir: String) -> String { dir + "/doorbells" }
    public static func symbolsPath(_ dir: String) -> String { dir + "/symbols" }
    public static func eventRingPath(_ dir: String, shard: Int) -> String { dir + "/events.\(shard)" }
    public static func sessionPath(_ dir: String, _ client: String) -> String { dir + "/\(client).session" }
    public static func helloPath(_ dir: String, _ client: String) -> String { dir + "/\(client).hello" }
    public static func commandRingPath(_ dir: String, _ client: String, shard: Int) -> String {
        dir + "/\(client).cmd.\(shard)"
    }
    public static func reportRingPath(_ dir: String, _ client: String, shard: Int) -> String {
        dir + "/\(client).rep.\(shard)"
    }
}

public enum EngineState: UInt32, Sendable {
    case starting = 1
    case running = 2
    case stopping = 3
    case stopped = 4
}

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

/// What the control file says of one plugin (written by the engine's control thread).
public struct PluginStatus: Sendable, Equatable {
    public enum State: UInt32, Sendable {
        case empty = 0, loaded = 1, running = 2, stopped = 3, failed = 4
    }
    public var name: String
    public var version: String
    public var kinds: UInt32
    public var state: State
    /// CB_HEALTH_*: 0 ok, 1 degraded, 2 failed.
    public var health: UInt32
    public var message: String
    public var updatedNanoseconds: UInt64

    public init(name: String, version: String, kinds: UInt32, state: State, health: UInt32, message: String,
                updatedNanoseconds: UInt64) {
        self.name = name
        self.version = version
        self.kinds = kinds
        self.state = state
        self.health = health
        self.message = message
        self.updatedNanoseconds = updatedNanoseconds
    }

    public var healthName: String { health == 0 ? "ok" : health == 1 ? "degraded" : "failed" }
    public var kindNames: [String] { Self.kindNames(kinds) }

    /// The names of the CB_KIND_* bits set in `kinds`.
    public static func kindNames(_ kinds: UInt32) -> [String] {
        [(1, "ingress"), (2, "egress"), (4, "routing"), (8, "snapshot-store"), (16, "metrics")]
            .filter { kinds & UInt32($0.0) != 0 }.map(\.1)
    }
}

/// A plugin's own counter as read from the control file.
public struct PluginCounterValue: Sendable, Equatable {
    public var name: String
    public var plugin: Int
    public var isGauge: Bool
    public var value: UInt64
}

func storeText(_ text: String, at base: UnsafeMutableRawPointer, capacity: Int) {
    let bytes = Array(text.utf8.prefix(capacity - 1))
    base.initializeMemory(as: UInt8.self, repeating: 0, count: capacity)
    bytes.withUnsafeBytes { base.copyMemory(from: $0.baseAddress!, byteCount: bytes.count) }
}

func loadText(_ base: UnsafeRawPointer, capacity: Int) -> String {
    let bytes = UnsafeRawBufferPointer(start: base, count: capacity)
    return String(decoding: bytes.prefix { $0 != 0 }, as: UTF8.self)
}

/// The engine control file.
public final class EngineFile: @unchecked Sendable {
    public let file: MappedFile
    public let shardCount: Int

    /// Creates it (the instance must not be running). A leftover of a dead engine is reported
    /// as `stale`; a running engine as `inUse`. `mode` says who may read it; nobody may write it
    /// (0400, or 0440 for a group): the engine writes through the descriptor that created it,
    /// so no other process of another user can change what clients are told, or shrink it
    /// under the engine.
    public static func create(directory: String, shards: Int, symbols: [(name: String, id: UInt32, shard: Int)] = [],
                              mode: mode_t) throws(SharedMemoryError) -> EngineFile {
        let path = InstanceLayout.enginePath(directory)
        guard shards >= 1, shards <= InstanceLayout.maxShards else {
            throw .badHeader(path: path, "shard count \(shards) outside 1...\(InstanceLayout.maxShards)")
        }
        guard symbols.count <= InstanceLayout.maxSymbols else {
            throw .badHeader(path: path, "\(symbols.count) symbols, at most \(InstanceLayout.maxSymbols)")
        }
        let file: MappedFile
        do {
            file = try MappedFile.create(path: path, size: InstanceLayout.engineFileSize(shards: shards, symbols: symbols.count),
                                         mode: mode & 0o444)
        } catch .system(let failure) where failure.errno == .fileExists {
            let pid = Self.peekPid(path)
            throw processIsAlive(pid) ? .inUse(path: path, creatorPid: pid) : .stale(path: path, creatorPid: pid)
        }
        let base = file.base
        base.storeBytes(of: InstanceLayout.version.littleEndian, toByteOffset: 8, as: UInt32.self)
        base.storeBytes(of: UInt32(shards).littleEndian, toByteOffset: 12, as: UInt32.self)
        base.storeBytes(of: getpid().littleEndian, toByteOffset: 16, as: Int32.self)
        base.storeBytes(of: EngineState.starting.rawValue.littleEndian, toByteOffset: 20, as: UInt32.self)
        base.storeBytes(of: realtimeNanoseconds().littleEndian, toByteOffset: 24, as: UInt64.self)
        base.storeBytes(of: UInt32(symbols.count).littleEndian, toByteOffset: 32, as: UInt32.self)
        let symbolBase = base + InstanceLayout.symbolsOffset(shards: shards)
        for (i, symbol) in symbols.enumerated() {
            let block = symbolBase + i * InstanceLayout.symbolBlockSize
            storeText(symbol.name, at: block, capacity: 24)
            block.storeBytes(of: symbol.id.littleEndian, toByteOffset: 24, as: UInt32.self)
            block.storeBytes(of: UInt32(symbol.shard).littleEndian, toByteOffset: 28, as: UInt32.self)
        }
        cb_store_release_u64(base.assumingMemoryBound(to: UInt64.self), InstanceLayout.engineMagic.littleEndian)
        return EngineFile(file: file, shards: shards, symbols: symbols.count)
    }

    /// Attaches to a running (or dead) engine's control file, checking its header. The mapping
    /// is read-only: a client reads the engine's state, never writes it.
    public static func attach(directory: String) throws(SharedMemoryError) -> EngineFile {
        let path = InstanceLayout.enginePath(directory)
        let file = try MappedFile.open(path: path, minimumSize: InstanceLayout.headerSize, writable: false)
        let base = file.base
        let magic = UInt64(littleEndian: cb_load_acquire_u64(base.assumingMemoryBound(to: UInt64.self)))
        guard magic == InstanceLayout.engineMagic else { throw .badHeader(path: path, "not an engine control file") }
        let version = UInt32(littleEndian: base.load(fromByteOffset: 8, as: UInt32.self))
        guard version == InstanceLayout.version else {
            throw .badHeader(path: path, "version \(version), this build reads \(InstanceLayout.version)")
        }
        let shards = Int(UInt32(littleEndian: base.load(fromByteOffset: 12, as: UInt32.self)))
        let symbols = Int(UInt32(littleEndian: base.load(fromByteOffset: 32, as: UInt32.self)))
        guard shards >= 1, shards <= InstanceLayout.maxShards, symbols <= InstanceLayout.maxSymbols,
              file.size == InstanceLayout.engineFileSize(shards: shards, symbols: symbols) else {
            throw .badHeader(path: path, "shard count \(shards) and symbol count \(symbols) do not match the file size \(file.size)")
        }
        return EngineFile(file: file, shards: shards, symbols: symbols)
    }

    private init(file: MappedFile, shards: Int, symbols: Int) {
        self.file = file
        shardCount = shards
        symbolCount = symbols
    }

    public let symbolCount: Int

    func symbolBlock(_ i: Int) -> UnsafeMutableRawPointer {
        file.base + InstanceLayout.symbolsOffset(shards: shardCount) + i * InstanceLayout.symbolBlockSize
    }

    /// Symbol i of the control file (config order): name, id, owning shard.
    public func symbol(_ i: Int) -> (name: String, id: UInt32, shard: Int) {
        let block = symbolBlock(i)
        return (loadText(block, capacity: 24), UInt32(littleEndian: block.load(fromByteOffset: 24, as: UInt32.self)),
                Int(UInt32(littleEndian: block.load(fromByteOffset: 28, as: UInt32.self))))
    }

    public func symbolCounters(_ i: Int) -> SymbolCounters {
        SymbolCounters(words: (symbolBlock(i) + 32).assumingMemoryBound(to: UInt64.self))
    }

    func pluginSlot(_ i: Int) -> UnsafeMutableRawPointer {
        file.base + InstanceLayout.pluginsOffset(shards: shardCount, symbols: symbolCount) + i * InstanceLayout.pluginSlotSize
    }

    /// Engine side (control thread): publishes what it knows of plugin slot i.
    public func setPluginStatus(_ i: Int, _ status: PluginStatus) {
        let slot = pluginSlot(i)
        storeText(status.name, at: slot, capacity: 48)
        storeText(status.version, at: slot + 48, capacity: 16)
        slot.storeBytes(of: status.kinds.littleEndian, toByteOffset: 64, as: UInt32.self)
        slot.storeBytes(of: status.health.littleEndian, toByteOffset: 72, as: UInt32.self)
        slot.storeBytes(of: status.updatedNanoseconds.littleEndian, toByteOffset: 80, as: UInt64.self)
        storeText(status.message, at: slot + 96, capacity: 160)
        // Release: a reader that sees the state sees the fields written before it.
        cb_store_release_u32((slot + 68).assumingMemoryBound(to: UInt32.self), status.state.rawValue.littleEndian)
    }

    /// The plugins the engine knows of, in load order.
    public func pluginStatuses() -> [PluginStatus] {
        (0..<InstanceLayout.pluginSlots).compactMap { i in
            let slot = pluginSlot(i)
            let raw = UInt32(littleEndian: cb_load_acquire_u32((slot + 68).assumingMemoryBound(to: UInt32.self)))
            guard let state = PluginStatus.State(rawValue: raw), state != .empty else { return nil }
            return PluginStatus(name: loadText(slot, capacity: 48), version: loadText(slot + 48, capacity: 16),
                                kinds: UInt32(littleEndian: slot.load(fromByteOffset: 64, as: UInt32.self)), state: state,
                                health: UInt32(littleEndian: slot.load(fromByteOffset: 72, as: UInt32.self)),
                                message: loadText(slot + 96, capacity: 160),
                                updatedNanoseconds: UInt64(littleEndian: slot.load(fromByteOffset: 80, as: UInt64.self)))
        }
    }

    func pluginCounterSlot(_ i: Int) -> UnsafeMutableRawPointer {
        file.base + InstanceLayout.pluginCountersOffset(shards: shardCount, symbols: symbolCount)
            + i * InstanceLayout.pluginCounterSize
    }

    /// Engine side: takes a free counter slot for plugin `plugin`; returns its value word.
    public func claimPluginCounter(name: String, plugin: Int, isGauge: Bool) -> UnsafeMutablePointer<UInt64>? {
        for i in 0..<InstanceLayout.pluginCounterSlots {
            let slot = pluginCounterSlot(i)
            let inUse = (slot + 88).assumingMemoryBound(to: UInt32.self)
            guard cb_load_acquire_u32(inUse) == 0 else { continue }
            storeText(name, at: slot, capacity: 80)
            slot.storeBytes(of: UInt32(plugin).littleEndian, toByteOffset: 80, as: UInt32.self)
            slot.storeBytes(of: UInt32(isGauge ? 1 : 0).littleEndian, toByteOffset: 84, as: UInt32.self)
            slot.storeBytes(of: UInt64(0), toByteOffset: 96, as: UInt64.self)
            // Release: the name and owner are visible before the slot reads as taken.
            cb_store_release_u32(inUse, 1)
            return (slot + 96).assumingMemoryBound(to: UInt64.self)
        }
        return nil
    }

    public func pluginCounters() -> [PluginCounterValue] {
        (0..<InstanceLayout.pluginCounterSlots).compactMap { i in
            let slot = pluginCounterSlot(i)
            guard cb_load_acquire_u32((slot + 88).assumingMemoryBound(to: UInt32.self)) != 0 else { return nil }
            return PluginCounterValue(name: loadText(slot, capacity: 80),
                                      plugin: Int(UInt32(littleEndian: slot.load(fromByteOffset: 80, as: UInt32.self))),
                                      isGauge: slot.load(fromByteOffset: 84, as: UInt32.self) != 0,
                                      value: cb_load_relaxed_u64((slot + 96).assumingMemoryBound(to: UInt64.self)))
        }
    }

    static func peekPid(_ path: String) -> Int32 {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return 0 }
        defer { close(fd) }
        var pid: Int32 = 0
        return pread(fd, &pid, 4, 16) == 4 ? Int32(littleEndian: pid) : 0
    }

    public var enginePid: Int32 { Int32(littleEndian: file.base.load(fromByteOffset: 16, as: Int32.self)) }

    public var state: EngineState {
        get {
            EngineState(rawValue: UInt32(littleEndian: cb_load_acquire_u32((file.base + 20).assumingMemoryBound(to: UInt32.self))))
                ?? .stopped
        }
        set { cb_store_release_u32((file.base + 20).assumingMemoryBound(to: UInt32.self), newValue.rawValue.littleEndian) }
    }

    /// Alive and running.
    public var isServing: Bool { state == .running && processIsAlive(enginePid) }

    func shardBlock(_ s: Int) -> UnsafeMutableRawPointer {
        file.base + InstanceLayout.headerSize + s * InstanceLayout.shardBlockSize
    }

    public func counters(_ shard: Int) -> ShardCounters { ShardCounters(shardBlock(shard), owner: file) }
}

/// A client's handshake file: the client creates it; the engine answers in it.
///   0 magic (u64), 8 state (u32: 0 pending, 1 accepted, 2 refused), 12 session id (u32),
///   16 client pid (i32), 20 refusal reason (u32)
public final class SessionFile: @unchecked Sendable {
    public enum State: UInt32, Sendable {
        case pending = 0
        case accepted = 1
        case refused = 2
    }

    public let file: MappedFile

    public static func create(path: String, mode: mode_t) throws(SharedMemoryError) -> SessionFile {
        let file = try MappedFile.create(path: path, size: 64, mode: mode)
        file.base.storeBytes(of: getpid().littleEndian, toByteOffset: 16, as: Int32.self)
        cb_store_release_u64(file.base.assumingMemoryBound(to: UInt64.self), InstanceLayout.sessionMagic.littleEndian)
        return SessionFile(file: file)
    }

    public static func attach(path: String) throws(SharedMemoryError) -> SessionFile {
        let file = try MappedFile.open(path: path, minimumSize: 64)
        guard file.size == 64,
              UInt64(littleEndian: cb_load_acquire_u64(file.base.assumingMemoryBound(to: UInt64.self)))
                == InstanceLayout.sessionMagic
        else { throw .badHeader(path: path, "not a session file") }
        return SessionFile(file: file)
    }

    private init(file: MappedFile) { self.file = file }

    var stateWord: UnsafeMutablePointer<UInt32> { (file.base + 8).assumingMemoryBound(to: UInt32.self) }

    public var state: State { State(rawValue: cb_load_acquire_u32(stateWord)) ?? .refused }
    public var sessionId: UInt32 { file.base.load(fromByteOffset: 12, as: UInt32.self) }
    public var clientPid: Int32 { Int32(littleEndian: file.base.load(fromByteOffset: 16, as: Int32.self)) }
    public var refusal: UInt32 { file.base.load(fromByteOffset: 20, as: UInt32.self) }

    /// Engine side: answers and wakes the client.
    public func answer(_ state: State, sessionId: UInt32, refusal: UInt32 = 0) {
        file.base.storeBytes(of: sessionId, toByteOffset: 12, as: UInt32.self)
        file.base.storeBytes(of: refusal, toByteOffset: 20, as: UInt32.self)
        // Release: the session id is visible before the state that says to read it.
        cb_store_release_u32(stateWord, state.rawValue)
        _ = cb_futex_wake(stateWord, Int32.max)
    }

    /// Client side: waits for the answer up to `timeoutNanoseconds`.
    public func awaitAnswer(timeoutNanoseconds: Int64) -> State {
        let deadline = Int64(monotonicNanoseconds()) + timeoutNanoseconds
        while true {
            let s = cb_load_acquire_u32(stateWord)
            if s != State.pending.rawValue { return State(rawValue: s) ?? .refused }
            let left = deadline - Int64(monotonicNanoseconds())
            if left <= 0 { return .pending }
            _ = cb_futex_wait(stateWord, s, min(left, 50_000_000))
        }
    }
}
