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
// Engine control file layout (little-endian), version 5:
//   0    magic "CBENGIN1" (u64), version (u32), shard count (u32), engine pid (i32),
//        state (u32: 1 starting, 2 running, 3 stopping, 4 stopped), start time ns (u64),
//        32 symbol count (u32: the symbols published so far; it grows, release-stored after the
//        new symbol's block, as symbols are listed at run time), 36 symbol capacity (u32: the
//        blocks the file has room for; fixed)
//   64 + 2048 × s   shard s: 64 bytes reserved (the doorbell until version 2),
//        at +64 the counters (24 u64 slots: the 24 ShardCounter words), at +256 rejects
//        by reason (u64 × 24),
//        at +448 batch sizes (u64 × 8: batches of 1, 2–3, 4–7, … 128–256 commands),
//        at +512 match latency per batch and at +704 fdatasync latency (histograms of
//        CB_HISTOGRAM_WORDS u64, see cb_sync.h), at +896 the shard thread's kernel id (i32),
//        at +1024 commands per group commit (a count histogram: bucket i holds n <= 2^i),
//        at +1280 ingress commands dropped before sequencing, and watermarks (u64 × 4: IngressCounters),
//        at +1536 the shard's migrations (u64 × 8, written by whichever thread runs the
//        migration, one at a time: MigrationCounters), at +1600 its replication (u64 × 8,
//        written by the control thread: ReplicationCounters).
//   then 128 × symbol capacity: name (24 bytes, NUL-padded), id (u32), shard (u32: the route, which
//        every producer reads on every submit), 32 reserved; at +64, a line of its own, commands,
//        trades, rejects, traded quantity (u64 each, written by the owning shard on every command).
//        Until version 4 the counters shared the route's line (64-byte blocks): each command the
//        shard counted took the line from every core that was reading the route.
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
    public static let version: UInt32 = 5
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
    public static let ingressOffset = 1280
    public static let migrationsOffset = 1536
    public static let replicationOffset = 1600
    public static let histogramWords = Int(CB_HISTOGRAM_WORDS)
    public static let histogramBuckets = Int(CB_HISTOGRAM_BUCKETS)
    public static let maxShards = 64
    public static let symbolBlockSize = 128
    /// Where a symbol's counters start in its block: a cache line apart from its route.
    public static let symbolCountersOffset = 64
    public static let maxSymbols = 1 << 16
    public static let pluginSlots = 16
    public static let pluginSlotSize = 256
    public static let pluginCounterSlots = 64
    /// The longest symbol name the control file holds (24 bytes with its NUL).
    public static let symbolNameBytes = 23
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
