// The engine process: its instance directory and control file, its shards, and a control
// thread that lets clients in (handshake by inotify), notices clients that die and shards that
// detach a lagging client, and says so in the log. Start, serve, stop: draining every ring and
// removing every file.

import CSync
import Foundation
import Glibc
import Journal
import OrderBook
import SharedMemory
import SystemPackage
import Wire

public struct ShardSettings: Sendable, Equatable {
    /// The core to pin to; nil leaves the thread to the scheduler (a test machine).
    public var core: Int?
    /// Pools shared by the shard's books (`[[shards]] orders`, `levels`): resting orders and
    /// price levels for all its symbols together; each book then holds at most [book] levels a
    /// side. nil: each book has pools of its own, sized by [book].
    public var pools: BookCapacity?
    public init(core: Int?, pools: BookCapacity? = nil) {
        self.core = core
        self.pools = pools
    }
}

public struct EngineSettings: Sendable {
    public var instance: String
    /// The instance directory; default /dev/shm/crossbook-<uid>/<instance>.
    public var directory: String
    /// Files are 0600; with a group, 0660 and owned by that group.
    public var group: gid_t?
    public var shards: [ShardSettings]
    /// Each symbol and the shard that owns it.
    public var symbols: [(spec: SymbolSpec, shard: Int)]
    public var capacity: BookCapacity
    public var wait: WaitStrategy
    /// How long a shard waits on a client whose report ring is full before detaching it.
    public var lagTimeoutNanoseconds: UInt64
    /// Remove the leftovers of a dead engine of the same instance instead of refusing to start.
    public var cleanStale: Bool
    /// Slots of each shard's event ring (a power of two).
    public var eventRingCapacity: Int = 1 << 16
    /// sync: reports only once durable; async: journal written behind; none: no journal.
    public var durability: Durability = .none
    /// Where the journals live (one set of segments per shard).
    public var dataDirectory: String = "./data"
    public var journalSegmentSize: Int = 64 << 20
    /// Remove journal segments older than every kept snapshot after each snapshot ([engine] prune_journal).
    public var pruneJournal = false
    /// Journal segments made ahead of time, written with zeros (JournalConfig.prezero).
    public var journalPrezero = false
    /// A snapshot every this many commands per shard (0: never); the newest `snapshotsKept` stay.
    public var snapshotEvery: UInt64 = 0
    /// Move a symbol off a shard that stays busy (Rebalance.swift); nil: off.
    public var autoRebalance: AutoRebalance?
    /// A move to another engine not claimed by the target within this many seconds is taken
    /// back by the source (`[engine] transfer_timeout_s`, Engine+Transfer.swift).
    public var transferTimeout: Double = 10
    public var snapshotsKept: Int = 3
    /// Recover and stop there: no lock, no repair of a torn tail, no journal writing (offline
    /// replay). With `describeBooks`, the recovered L2 books come back as lines from `start`.
    public var readOnly = false
    public var describeBooks = false
    /// The private drop-copy stream of every execution report (per shard, in this process only),
    /// for egress plugins; on by itself when a loaded plugin is of kind egress.
    public var dropCopy = false
    /// Regeneration (with `readOnly`): recover only this shard, from a snapshot at or below
    /// `regenerateAfter`, collecting the output of the commands above it.
    var regenerateShard: Int?
    var regenerateAfter: UInt64 = 0
    /// The plugins to load, in order (nil: none). A snapshot-store plugin among them keeps the
    /// shards' snapshots; without one there are none.
    public var plugins: PluginSettings?
    /// The cores the journal's kernel workers (io_uring's io-wq: the writes and fdatasyncs) run
    /// on. nil or empty: not bound, the kernel's default, which is the submitting shard's own
    /// affinity (its writes and syncs then preempt the pinned shard). Not bound by default: on a
    /// host whose other cores are busy (2 vCPUs, a load generator spinning on core 0) a worker
    /// bound there waits for a scheduler slice per fdatasync (bench/README.md, D1: ack p50 0.3
    /// ms unbound, 9 ms bound); give it cores nothing spins on.
    public var ioCores: [Int]?
    /// Hot standby (Engine+Replication.swift); nil: this engine replicates nothing.
    public var replication: ReplicationSettings?
    /// Room for this many symbols, the config's included: the rest are listed while the engine
    /// runs (`crossbook symbol add`). nil: the config's and 256 more.
    public var maxSymbols: Int?
    /// The highest session id handed out (ids are 16 bits: 65,535). Lower only to test what
    /// happens when they run out.
    public var sessionIdLimit: UInt32 = 65_535

    public static func defaultDirectory(_ instance: String) -> String { InstanceLayout.defaultDirectory(instance) }

    public init(instance: String = "default", directory: String? = nil, group: gid_t? = nil,
                shards: [ShardSettings] = [ShardSettings(core: nil)], symbols: [(spec: SymbolSpec, shard: Int)] = [],
                capacity: BookCapacity = .small, wait: WaitStrategy = WaitStrategy(),
                lagTimeoutNanoseconds: UInt64 = 1_000_000_000, cleanStale: Bool = false) {
        self.instance = instance
        self.directory = directory ?? Self.defaultDirectory(instance)
        self.group = group
        self.shards = shards
        self.symbols = symbols
        self.capacity = capacity
        self.wait = wait
        self.lagTimeoutNanoseconds = lagTimeoutNanoseconds
        self.cleanStale = cleanStale
    }

    var fileMode: mode_t { group == nil ? 0o600 : 0o660 }
}

/// Why the engine refused or failed, keeping the cause from the layer below.
public enum EngineError: Error, CustomStringConvertible {
    /// A setting, the host or the engine's state says no, for a reason an operator can act on.
    case refused(String)
    /// A symbol or its book's capacity is not valid.
    case bookConfig(BookConfigError)
    /// A file of the instance in shared memory (control file, doorbells, rings, event rings).
    case sharedMemory(SharedMemoryError)
    /// The journal, a snapshot, or the data directory's files.
    case journal(JournalError)
    /// A plugin did not load, start or answer.
    case plugin(PluginError)
    /// A system call of the engine's own (the data directory, CONFIGURATION, the instance
    /// directory).
    case system(SystemCallError)
    /// A shard did not start (its placement, its books, its recovery).
    case shardStart(shard: Int, String)

    init(_ reason: String) { self = .refused(reason) }

    public var description: String {
        switch self {
        case .refused(let why): why
        case .bookConfig(let error): "\(error)"
        case .sharedMemory(let error): error.description
        case .journal(let error): error.description
        case .plugin(let error): "\(error)"
        case .system(let error): error.description
        case .shardStart(_, let why): why
        }
    }
}

public final class Engine: @unchecked Sendable {
    public let settings: EngineSettings
    private(set) var engineFile: EngineFile?
    private(set) var shards: [Shard] = []
    /// Per shard, its drop-copy ring (nil: off).
    private(set) var executionRings: [EventRing?] = []
    let injectedSnapshots: SnapshotStore?
    /// Numbers the regenerations of the whole process (several engines may run in one), so that
    /// no two side engines share a directory.
    private nonisolated(unsafe) static var regenerations = 0
    /// The instance directories the engines of this process run in.
    private nonisolated(unsafe) static var liveDirectories: Set<String> = []
    private static let regenerationLock = Lock()

    private static func isLive(_ directory: String) -> Bool {
        regenerationLock.locked { liveDirectories.contains(directory) }
    }
    private var control: Thread?
    private let controlStop = UnsafeMutablePointer<UInt32>.allocate(capacity: 1)
    /// A stop asked for while `start` runs (a signal during a long recovery): shards stop
    /// recovering between batches and `start` throws.
    private let abortStart = UnsafeMutablePointer<UInt32>.allocate(capacity: 1)
    private let controlDone = Semaphore()
    private var watch: Int32 = -1
    private var dataLock: Int32 = -1
    /// The checked instance directory (InstanceDirectory.prepare), until stop.
    private var instanceDirectory: Int32 = -1
    private var sessions: [UInt32: ClientSession] = [:]
    /// Sessions whose client is gone. Their mappings stay until the engine stops: a shard may
    /// still be reading a ring when the control thread learns the client died.
    private var retired: [ClientSession] = []
    /// Session ids are handed out from 1, skipping `reservedSessions` (the ids that own resting
    /// orders recovered from the journal). When they run out, the shards say which ids own
    /// resting orders now, and every id that owns none and has no attached session is handed
    /// out again (`reclaimSessionIds`): an order id carries its session id, so an id must never
    /// come back while an order of its old owner rests.
    private var nextSession: UInt32 = 1
    private var reservedSessions = Set<UInt32>()
    /// Per ingress source ("topic#partition"), the session id its producer had before the
    /// restart: given to its next producer when free (its orders rest under that id).
    var sourceSessionIds: [String: UInt32] = [:]
    /// Reclaimed ids, the lowest last.
    private var freeSessionIds: [UInt32] = []
    /// Every attached session id, of clients and of the engine's own (plugin) sessions. The
    /// id bookkeeping is taken by the control thread (clients) and by plugin threads (their
    /// producers): under `idLock`.
    private var attachedIds = Set<UInt32>()
    let idLock = Lock()
    /// Tests: client names whose announcement the control loop sees once more, as it would see
    /// an inotify event delivered after the directory scan took the hello (`accept`).
    private var lateAnnouncements: [String] = []

    /// Tests: makes the control loop handle `client`'s announcement again (a late inotify event).
    func announceAgain(_ client: String) { idLock.locked { lateAnnouncements.append(client) } }
    /// The engine's own sessions (plugin producers), by id; their rings stay mapped until stop.
    private var localSessions: [UInt32: LocalSession] = [:]
    private var retiredLocal: [LocalSession] = []
    let log: @Sendable (String) -> Void
    private(set) var pluginHost: PluginHost?
    /// Where each symbol lives now (Routes.swift): the config's placement, then what the
    /// journals say, then each migration.
    private(set) var routes: RouteTable?
    /// The instance's symbols, the config's and those listed since (InstanceSymbols.swift).
    private(set) var symbolTable: InstanceSymbols?
    /// One publisher of listings at a time (a listing, the start).
    let publishLock = Lock()
    /// The operator's socket (ControlSocket.swift).
    private var controlSocket: ControlSocket?
    /// Hot standby (Engine+Replication.swift): the role, the server or client, the inboxes.
    var replication: ReplicationRuntime?
    /// Called (on the control socket's thread) once a planned switchover handed over: the
    /// process should stop this engine and follow the new primary (RunCommand does).
    /// Also called when a standby was seeded from the primary's snapshots and must start again.
    public var onSwitchover: (@Sendable () -> Void)?
    /// What the ingress plugins read again when a symbol arrives from another engine, and the
    /// symbols another engine takes the ingress of (IngressRewinds.swift, Engine+Transfer.swift).
    let ingressRewinds = IngressRewinds()
    /// One migration at a time (Engine+Migration.swift), and what the past ones measured.
    let migrationSerial = Lock()
    let migrationLock = Lock()
    /// Moves between engines under way (Engine+Transfer.swift): when the source first saw each
    /// undecided one, and whether the control thread settles them.
    let transferLock = Lock()
    var transferSeen: [UInt32: UInt64] = [:]
    var transfersPending = false
    /// Moves offered by the router ("SYMBOL epoch"), each taken up once; the moves taken in
    /// ("SYMBOL epoch" → report), so that asking again answers the same.
    var transfersOffered: Set<String> = []
    var transfersTaken: [String: TransferInReport] = [:]
    /// Empty books made for moves offered to this engine ("SYMBOL epoch"), for whoever takes the
    /// move in (the offer's worker, or `crossbook migrate --to-instance` asking again).
    var transferBooks: [String: PremadeBook] = [:]
    var migrationHistory = MigrationHistory()

    final class ClientSession {
        let name: String
        let pid: Int32
        let sessionFile: SessionFile
        let rings: [Ring]
        /// The client's stream (exactly-once resend), if it named one.
        let stream: IngressSource?
        init(name: String, pid: Int32, sessionFile: SessionFile, rings: [Ring], stream: IngressSource? = nil) {
            self.name = name
            self.pid = pid
            self.sessionFile = sessionFile
            self.rings = rings
            self.stream = stream
        }
    }

    public init(settings: EngineSettings, log: @escaping @Sendable (String) -> Void = { print($0) }) {
        self.settings = settings
        self.log = log
        injectedSnapshots = nil
        controlStop.initialize(to: 0)
        abortStart.initialize(to: 0)
    }

    /// A read-only engine over another's data directory, with that engine's snapshot store.
    init(settings: EngineSettings, snapshots: SnapshotStore?) {
        self.settings = settings
        self.log = { _ in }
        injectedSnapshots = snapshots
        controlStop.initialize(to: 0)
        abortStart.initialize(to: 0)
    }

    deinit {
        controlStop.deallocate()
        abortStart.deallocate()
    }

    /// What a configuration allocates at start: every book, every shard's event ring and, with
    /// a journal, its two batch buffers.
    public static func memoryNeeded(_ s: EngineSettings) -> (total: Int, description: String) {
        // Shards with shared pools: the pools, and per symbol its book and first ladders.
        let pooled = s.shards.enumerated().filter { $0.element.pools != nil }
        let pooledSymbols = s.symbols.filter { $0.shard < s.shards.count && s.shards[$0.shard].pools != nil }.count
        let pools = pooled.reduce(0) { $0 + BookPools.bytes(orders: $1.element.pools!.orders, levels: $1.element.pools!.levels) }
            + pooledSymbols * OrderBook.sharingBookBytes
        let books = (s.symbols.count - pooledSymbols) * s.capacity.bookBytes
        let rings = s.shards.count * s.eventRingCapacity * 64
        let journals = s.durability == .none ? 0 : s.shards.count * 2 * (4 << 20)
        // Every shard has a slot for every symbol the instance has room for (listings too).
        let room = min(max(s.maxSymbols ?? (s.symbols.count + InstanceSymbols.defaultHeadroom), s.symbols.count), InstanceLayout.maxSymbols)
        let slots = s.shards.count * room * (MemoryLayout<OrderBook>.stride + 10)
        let total = books + pools + rings + journals + slots
        let own = "\(s.symbols.count - pooledSymbols) books of \(s.capacity.bookBytes >> 10) KiB (\(s.capacity.orders) orders, \(s.capacity.levels) levels)"
        let shared = pooled.isEmpty ? "" : ", shared pools of \(pooled.count) shard(s) with \(pooledSymbols) symbols \(pools >> 20) MiB"
        return (total, "\(total >> 20) MiB: \(own)\(shared), event rings \(rings >> 20) MiB, journal buffers \(journals >> 20) MiB, slots for \(room) symbols \(slots >> 10) KiB")
    }

    /// MemAvailable from /proc/meminfo, in bytes (nil where it cannot be read).
    public static func memoryAvailable() -> Int? {
        guard let text = try? String(contentsOfFile: "/proc/meminfo", encoding: .utf8) else { return nil }
        for line in text.split(separator: "\n") where line.hasPrefix("MemAvailable:") {
            let fields = line.split(separator: " ")
            if fields.count >= 2, let kib = Int(fields[1]) { return kib << 10 }
        }
        return nil
    }

    /// From any thread, while `start` runs: stop recovering and make `start` throw (the files
    /// are removed as after any failed start). After `start` returned, `stop` is what stops.
    public func abortStarting() { cb_store_release_u32(abortStart, 1) }

    /// Whether `abortStarting` was called.
    public var startAborted: Bool { cb_load_acquire_u32(abortStart) != 0 }

    /// Creates the instance and starts the shards; returns one placement line per shard.
    public func start() throws -> [String] {
        let s = settings
        guard !s.instance.isEmpty, s.instance.utf8.allSatisfy({ isNameByte($0) }) else {
            throw EngineError("instance name '\(s.instance)' must be letters, digits, '.', '_' or '-'")
        }
        guard !s.shards.isEmpty, s.shards.count <= InstanceLayout.maxShards else {
            throw EngineError("between 1 and \(InstanceLayout.maxShards) shards, got \(s.shards.count)")
        }
        let cpus = Int(sysconf(Int32(_SC_NPROCESSORS_ONLN)))
        var seenCores = Set<Int>()
        for (i, shard) in s.shards.enumerated() {
            if let core = shard.core {
                guard core >= 0, core < cpus else { throw EngineError("shard \(i): core \(core) does not exist (this host has \(cpus))") }
                guard seenCores.insert(core).inserted else { throw EngineError("shard \(i): core \(core) is given to two shards") }
            }
        }
        try checkReplication(s)
        for (i, shard) in s.shards.enumerated() {
            guard let pools = shard.pools else { continue }
            do {
                try pools.validate(for: SymbolSpec(name: "shard \(i) pools", id: 0))
                // Any symbol can move to any shard: each must fit these pools.
                for (spec, _) in s.symbols { try pools.validate(for: spec) }
            } catch {
                throw EngineError("shard \(i): pools: \(error)")
            }
            guard s.capacity.levels <= pools.levels else {
                throw EngineError("shard \(i): pools of \(pools.levels) levels, fewer than a book's [book] levels \(s.capacity.levels)")
            }
        }
        let ioCores = s.ioCores ?? []
        for core in ioCores where core < 0 || core >= cpus {
            throw EngineError("io_cores: core \(core) does not exist (this host has \(cpus))")
        }
        for core in ioCores where seenCores.contains(core) {
            throw EngineError("io_cores: core \(core) is a shard's: the journal's workers would preempt it")
        }
        var seenNames = Set<String>(), seenIds = Set<UInt32>()
        for (spec, shard) in s.symbols {
            guard shard >= 0, shard < s.shards.count else {
                throw EngineError("symbol \(spec.name): shard \(shard) does not exist (\(s.shards.count) shards)")
            }
            guard seenNames.insert(spec.name).inserted else { throw EngineError("symbol \(spec.name) is declared twice") }
            guard seenIds.insert(spec.id).inserted else { throw EngineError("symbol id \(spec.id) is used twice") }
            guard spec.id < 1 << 20 else { throw EngineError("symbol \(spec.name): id \(spec.id) above 2^20") }
            // Clients find a symbol by the name in the control file, which holds 23 bytes.
            guard spec.name.utf8.count <= InstanceLayout.symbolNameBytes else {
                throw EngineError("symbol \(spec.name): a name of \(spec.name.utf8.count) bytes; an engine's symbols have at most \(InstanceLayout.symbolNameBytes)")
            }
            do {
                try spec.validate()
                try s.capacity.validate(for: spec)
            } catch { throw EngineError.bookConfig(error) }
        }

        // The memory the books and rings need is taken at start: refuse a configuration the host
        // cannot give it rather than abort in an allocation (or meet the OOM killer) later.
        let memory = Self.memoryNeeded(s)
        let available = Self.memoryAvailable()
        log("memory: \(memory.description)\(available.map { "; \($0 >> 20) MiB available" } ?? "")")
        if let available, memory.total > available {
            throw EngineError("this configuration needs \(memory.total >> 20) MiB (\(memory.description)) and the host has \(available >> 20) MiB available: lower [book] orders or levels, or the number of symbols")
        }

        if let room = s.maxSymbols, room < s.symbols.count || room > InstanceLayout.maxSymbols {
            throw EngineError("max_symbols \(room): between the config's \(s.symbols.count) symbols and \(InstanceLayout.maxSymbols)")
        }
        let table = InstanceSymbols(config: s.symbols, capacity: s.maxSymbols, shards: s.shards.count)
        symbolTable = table
        instanceDirectory = try InstanceDirectory.prepare(s.directory, group: s.group)
        let controlSymbols = s.symbols.map { (name: $0.spec.name, id: $0.spec.id, shard: $0.shard) }
        let file: EngineFile
        do throws(SharedMemoryError) {
            do throws(SharedMemoryError) {
                file = try EngineFile.create(directory: s.directory, shards: s.shards.count, symbols: controlSymbols,
                                             symbolCapacity: table.capacity, mode: s.fileMode)
            } catch .inUse(let path, let pid) where pid == getpid() && !Self.isLive(s.directory) {
                // "Alive" because the kernel gave the dead creator's pid to this process, which
                // runs no engine there: a leftover like any other.
                throw SharedMemoryError.stale(path: path, creatorPid: pid)
            }
        } catch .inUse(_, let pid) {
            throw EngineError("instance '\(s.instance)' is already running (engine pid \(pid), \(s.directory))")
        } catch .stale(_, let pid) {
            // Provably dead: its creator is gone, and its data directory's lock is free (nothing
            // of it holds the journal). Then the leftovers go by themselves (a restart under
            // systemd must not need an operator); otherwise only with --clean-stale.
            let lockFree = s.durability == .none || s.readOnly || Self.dataLockFree(s.dataDirectory)
            guard s.cleanStale || lockFree else {
                throw EngineError("instance '\(s.instance)' has leftovers of an engine that is gone (pid \(pid)) in \(s.directory), but its data directory \(s.dataDirectory) is locked by another process; start with --clean-stale to remove them anyway")
            }
            log("removing leftovers of engine pid \(pid) in \(s.directory)\(s.cleanStale ? "" : " (it is gone and its data directory is free)")")
            InstanceDirectory.removeFiles(instanceDirectory)
            do {
                file = try EngineFile.create(directory: s.directory, shards: s.shards.count, symbols: controlSymbols,
                                             symbolCapacity: table.capacity, mode: s.fileMode)
            } catch { throw EngineError.sharedMemory(error) }
        } catch {
            throw EngineError.sharedMemory(error)
        }
        engineFile = file
        Self.regenerationLock.locked { _ = Self.liveDirectories.insert(s.directory) }
        let routes = RouteTable(symbols: s.symbols.map { (id: $0.spec.id, shard: $0.shard) }, idLimit: table.idLimit, engineFile: file)
        self.routes = routes
        if let group = s.group { chown(InstanceLayout.enginePath(s.directory), uid_t.max, group) }
        let doorbells: DoorbellFile
        do { doorbells = try DoorbellFile.create(directory: s.directory, shards: s.shards.count, mode: s.fileMode) } catch {
            stop()
            throw EngineError.sharedMemory(error)
        }
        if let group = s.group { chown(InstanceLayout.doorbellsPath(s.directory), uid_t.max, group) }

        try writeFile(InstanceLayout.symbolsPath(s.directory), table.symbolsFileText(shardOf: { _ in nil }))

        // A rewind the ingress took: the floors it reads again for go once it is past them.
        ingressRewinds.onTaken = { [weak self] key, reached, symbols in
            guard let self, let routes = self.routes else { return }
            var byShard: [Int: [(UInt32, String, UInt64)]] = [:]
            for symbol in symbols {
                if let shard = routes.shard(of: symbol) { byShard[shard, default: []].append((symbol, key, reached)) }
            }
            for (shard, marks) in byShard where shard < self.shards.count { _ = self.shards[shard].send(.ingressMarks(marks)) }
        }

        // Plugins: every one checked and loaded before anything else happens.
        if let pluginSettings = s.plugins, !pluginSettings.load.isEmpty {
            let host = PluginHost(settings: pluginSettings, environment: PluginEnvironment(
                instance: s.instance, directory: s.directory, engineFile: file, symbols: s.symbols, routes: routes, log: log,
                openSession: { [weak self] (source: IngressSource?) throws(EngineError) -> LocalSession in
                    guard let self else { throw EngineError("the engine is gone") }
                    return try self.openLocalSession(source: source)
                },
                closeSession: { [weak self] session in self?.closeLocalSession(session) },
                position: { [weak self] shard, key in self?.adminState(shard: shard)?.resume[key] },
                executionRing: { [weak self] shard in
                    guard let self, shard >= 0, shard < self.executionRings.count else { return nil }
                    return self.executionRings[shard]
                },
                regenerate: { [weak self] (shard: Int, after: UInt64) throws(EngineError) in
                    guard let self else { throw EngineError("the engine is gone") }
                    return try self.regenerate(shard: shard, after: after)
                },
                migrate: { [weak self] id, shard in
                    guard let self else { return "the engine is gone" }
                    guard let spec = self.symbolTable?.spec(ofId: id) else { return "no symbol with id \(id)" }
                    do { _ = try self.migrate(symbol: spec.name, toShard: shard) } catch { return "\(error)" }
                    return nil
                }, transferOffered: { [weak self] name, epoch, shard in self?.offerTransfer(symbol: name, epoch: epoch, shard: shard) ?? false },
                table: table, rewinds: ingressRewinds,
                watermark: { [weak self] session, shard, offset in
                    guard let self, shard >= 0, shard < self.shards.count else { return false }
                    return self.shards[shard].send(.ingressWatermark(session: session, offset: offset))
                }))
            pluginHost = host
            var hostConfig = ["engine.instance": s.instance, "engine.directory": s.directory,
                              "engine.data_dir": s.dataDirectory, "engine.durability": s.durability.rawValue,
                              "engine.snapshots_kept": String(s.snapshotsKept)]
            // A data directory that followed a primary of another name: the routes that name it
            // are this engine's whenever it is the primary (promoted, or started as the primary
            // again before its plugin had taken them all over).
            if s.replication != nil, let predecessor = Self.primaryInstance(dataDirectory: s.dataDirectory), predecessor != s.instance {
                hostConfig["engine.predecessor"] = predecessor
            }
            do {
                try host.loadAll(extraConfig: hostConfig)
            } catch {
                stop()
                throw EngineError.plugin(error)
            }
        }

        if s.durability != .none && !s.readOnly {
            do { try makeDataDirectory(s.dataDirectory) } catch {
                stop()
                throw error
            }
            // One engine per data directory, whatever its instance name.
            dataLock = open(s.dataDirectory + "/LOCK", O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
            if dataLock < 0 || flock(dataLock, LOCK_EX | LOCK_NB) != 0 {
                let why = dataLock < 0 ? String(cString: strerror(errno)) : "another engine is using it"
                if dataLock >= 0 { close(dataLock) }
                dataLock = -1
                stop()
                throw EngineError("data directory \(s.dataDirectory): \(why)")
            }
        }
        if s.durability != .none {
            // A journal replays exactly only under the configuration that wrote it.
            do { try checkConfiguration(s) } catch {
                stop()
                throw error
            }
        }
        do { try checkPeerIsNotPrimary(s) } catch {
            stop()
            throw error
        }
        let replicationRuntime: ReplicationRuntime?
        do { replicationRuntime = s.readOnly ? nil : try prepareReplication(s) } catch {
            stop()
            throw error
        }
        replication = replicationRuntime
        let standby = replicationRuntime?.role == .standby
        // Snapshot stores start before recovery: it reads their snapshots. Without a journal
        // there are no snapshots: they stay loaded, not started.
        if s.durability == .none, let host = pluginHost, host.loaded.contains(where: \.isSnapshotStore) {
            log("durability none: no snapshots, the snapshot-store plugin is not started")
        }
        do { try pluginHost?.startAll(snapshotStores: true, allowed: s.durability != .none) } catch {
            stop()
            throw EngineError.plugin(error)
        }
        let snapshots: SnapshotStore? = pluginHost?.snapshotStore ?? injectedSnapshots
        let dropCopy = s.dropCopy || (pluginHost?.loaded.contains(where: \.isEgress) ?? false)
        if snapshots == nil && s.durability != .none && s.snapshotEvery > 0 && !s.readOnly {
            log("no snapshot-store plugin loaded: no snapshots are taken; a restart replays the whole journal")
        }
        var placement: [String] = []
        func journalConfig(_ shard: Int) -> JournalConfig {
            var config = JournalConfig(directory: s.dataDirectory, shard: shard, segmentSize: s.journalSegmentSize)
            config.ioCores = ioCores.map { Int32($0) }
            config.prune = s.pruneJournal
            config.prezero = s.journalPrezero
            return config
        }
        if standby && s.durability != .none {
            do { placement.append(contentsOf: try installStagedSeeds(store: snapshots, journalConfig: journalConfig)) } catch {
                stop()
                throw error
            }
        }
        if s.durability != .none {
            placement.append(ioCores.isEmpty
                ? "journal I/O workers: not bound (on the submitting shard's core; [engine] io_cores moves them)"
                : "journal I/O workers: cores \(ioCores.map(String.init).joined(separator: ","))")
        }
        for (i, shardSettings) in s.shards.enumerated() {
            // Every shard has a slot for every symbol (one can move in); books for its own.
            let all = s.symbols.map { (spec: $0.spec, capacity: s.capacity) }
            let mine = s.symbols.map { $0.shard == i }
            let events: EventRing
            do {
                events = try EventRing.create(path: InstanceLayout.eventRingPath(s.directory, shard: i),
                                              capacity: s.eventRingCapacity, mode: s.fileMode)
            } catch {
                stop()
                throw EngineError.sharedMemory(error)
            }
            // The drop copies: a ring no other process can open (its file is gone at once).
            var executions: EventRing?
            if dropCopy && !s.readOnly {
                let path = s.directory + "/executions.\(i)"
                do {
                    executions = try EventRing.create(path: path, capacity: s.eventRingCapacity, mode: 0o600)
                    unlink(path)
                } catch {
                    unlink(path)
                    stop()
                    throw EngineError.sharedMemory(error)
                }
            }
            executionRings.append(executions)
            let slots = Array(s.symbols.indices)
            // A regeneration recovers its one shard; the others stay empty.
            let skipped = s.regenerateShard.map { $0 != i } ?? false
            let shard = Shard(index: i, core: shardSettings.core, pools: shardSettings.pools, symbols: all, owned: mine, routes: routes,
                              symbolSlots: slots, directory: table, listingCapacity: s.capacity, engineFile: file,
                              doorbells: doorbells,
                              eventRing: events,
                              wait: s.wait, lagTimeoutNanoseconds: s.lagTimeoutNanoseconds,
                              durability: skipped ? .none : s.durability,
                              journalConfig: journalConfig(i),
                              snapshotEvery: s.readOnly ? 0 : s.snapshotEvery,
                              snapshots: snapshots,
                              readOnly: s.readOnly, describeBooks: s.describeBooks, abortStart: abortStart,
                              executionRing: executions,
                              regenerateAfter: s.regenerateShard == i ? s.regenerateAfter : nil,
                              replica: standby ? replicationRuntime?.inboxes[i] : nil,
                              replicatedCap: replicationRuntime?.gateCap.map { $0 + i },
                              leaseUntil: replicationRuntime?.lease?.until,
                              ingressPause: replicationRuntime?.paused, wakers: replicationRuntime?.wakers, log: log)
            if s.durability != .none && !startAborted { log("shard \(i): recovering from \(s.dataDirectory)") }
            shard.start()
            shard.started.wait()
            shards.append(shard)
            if let error = shard.startError {
                stop()
                throw EngineError.shardStart(shard: i, error)
            }
            placement.append(shard.placement)
            placement.append(contentsOf: shard.recoveryLog)
            // Sessions of before the restart that own resting orders keep their ids: a new client
            // with one of them could cancel those orders. Every other id is free again.
            reservedSessions.formUnion(shard.restingOwners)
            // An ingress source's session keeps its id for the source's next producer.
            for (key, session) in shard.sourceSessions {
                reservedSessions.insert(session)
                sourceSessionIds[key] = session
            }
            recoveredDigests.append(shard.recoveredDigest)
        }
        if s.durability != .none {
            placement.append("durability \(s.durability.rawValue): journals in \(s.dataDirectory)")
            // Where each symbol is after the journals (migrations), finishing or undoing a
            // migration a crash interrupted.
            // A standby's journals hold the primary's records only: it reconciles when promoted.
            if s.regenerateShard == nil && !standby {
                do {
                    placement.append(contentsOf: try completeListings(readOnly: s.readOnly))
                    placement.append(contentsOf: try reconcileOwners(readOnly: s.readOnly))
                } catch {
                    stop()
                    throw error
                }
            }
        }
        // The symbols listed at run time that the journals brought back, for clients.
        publishListings()
        // The watch exists before anyone can see the engine running, so no announcement is missed.
        watch = inotify_init1(Int32(IN_CLOEXEC | IN_NONBLOCK))
        if watch < 0 || inotify_add_watch(watch, s.directory, UInt32(IN_MOVED_TO)) < 0 {
            log("inotify on \(s.directory) failed (\(String(cString: strerror(errno)))); clients are found by scanning")
        }
        startControl()
        if !s.readOnly && s.regenerateShard == nil {
            do {
                controlSocket = try ControlSocket(directory: s.directory, group: s.group, mode: s.fileMode) { [weak self] line in
                    self?.controlRequest(line) ?? ["error the engine is stopping"]
                }
            } catch {
                stop()
                throw error
            }
        }
        file.state = .running
        do { try startReplication() } catch {
            stop()
            throw error
        }
        if standby {
            placement.append("standby: following \(s.replication?.peer ?? "?"); takes no orders until promoted; plugins start then")
            return placement
        }
        // The other plugins once the engine serves: they may open producers and subscriptions.
        do { try pluginHost?.startAll(snapshotStores: false, allowed: !s.readOnly) } catch {
            stop()
            throw EngineError.plugin(error)
        }
        return placement
    }

    /// Each shard's state digest after recovery (start), and when it stopped (stop).
    public private(set) var recoveredDigests: [UInt64] = []
    public private(set) var finalDigests: [UInt64] = []

    /// A session of the engine's own, for a plugin's producer: rings in this process's memory,
    /// handed to every shard through its mailbox. No files, no handshake, no control thread: the
    /// engine is not a client of itself.
    /// `source`: the session's commands come from that ingress partition, each with its offset in
    /// the client sequence field (Shard/Ingress.swift).
    func openLocalSession(ringCapacity: Int = 4096, source: IngressSource? = nil) throws(EngineError) -> LocalSession {
        guard let file = engineFile, file.state == .running else { throw EngineError("the engine is not running") }
        let (taken, full) = idLock.locked { () -> (UInt32?, Bool) in
            if attachedIds.count >= Shard.maxSessions { return (nil, true) }
            return (takeSessionId(for: source?.key), false)
        }
        guard let id = taken else {
            throw EngineError(full ? "\(Shard.maxSessions) sessions are attached, the most an engine serves at once"
                                   : "no session id free: each of the \(settings.sessionIdLimit) is attached or owns resting orders")
        }
        var commands: [Ring] = [], reports: [Ring] = []
        do {
            for s in shards.indices {
                commands.append(try Ring.inProcess(capacity: ringCapacity, consumerMayPark: false, label: "session \(id) commands to shard \(s)"))
                reports.append(try Ring.inProcess(capacity: ringCapacity, consumerMayPark: true, label: "session \(id) reports from shard \(s)"))
            }
        } catch {
            idLock.locked { freeSessionIds.append(id) }
            throw EngineError("session \(id): \(error)")
        }
        let session = LocalSession(id: id, source: source, commands: commands, reports: reports, doorbells: shards.map(\.doorbell),
                                   running: { [weak self] in self?.engineFile?.state == .running })
        idLock.locked {
            attachedIds.insert(id)
            localSessions[id] = session
        }
        for (s, shard) in shards.enumerated() {
            guard shard.send(.attach(session: id, commands: commands[s].consumer(), reports: reports[s].producer(), source: source)) else {
                closeLocalSession(session)
                throw EngineError("shard \(s) is busy")
            }
        }
        log("session \(id): a plugin producer attached (in process)\(source.map { ", reading \($0.key)" } ?? "")")
        return session
    }

    /// Detaches an engine session; its rings stay mapped until stop (a shard may be reading one).
    func closeLocalSession(_ session: LocalSession) {
        session.close()
        for shard in shards { _ = shard.send(.detach(session: session.id)) }
        idLock.locked {
            if localSessions.removeValue(forKey: session.id) != nil { retiredLocal.append(session) }
            attachedIds.remove(session.id)
            // The source's next producer (in this run) takes the id back.
            if let key = session.source?.key { sourceSessionIds[key] = session.id }
        }
    }

    /// Runs a sequenced admin command (AdminRecord.swift) on a shard: it gets the shard's next
    /// sequence, is journaled and applied like an order, and replays like one. Returns once it
    /// is applied and, with a journal, durable; `.refused` says why it did not apply.
    public func admin(shard: Int, _ command: AdminCommand, timeout: Double = 5) -> AdminOutcome {
        admin(shards: [shard], command, timeout: timeout)[0]
    }

    /// An `ingressFloor` the shard raises to the symbol's own position there (AdminRequest.clampFloor).
    func clampedFloor(shard: Int, _ command: AdminCommand, timeout: Double = 5) -> AdminOutcome {
        admin(shards: [shard], command, timeout: timeout, clampFloor: true)[0]
    }

    /// `admin` on several shards at once: each gets the command, then each is waited for (its
    /// outcome, then its journal), so their writes and fdatasyncs overlap. Outcomes in the
    /// order of `shards`.
    public func admin(shards indices: [Int], _ command: AdminCommand, timeout: Double = 5) -> [AdminOutcome] {
        admin(shards: indices, command, timeout: timeout, clampFloor: false)
    }

    private func admin(shards indices: [Int], _ command: AdminCommand, timeout: Double, clampFloor: Bool) -> [AdminOutcome] {
        // A standby's journal holds its primary's records and nothing of its own.
        if role == .standby, !(replication?.lock.locked { replication!.promoting } ?? false) {
            return indices.map { _ in .refused(sequence: nil, "this engine is a standby: admin commands go to the primary") }
        }
        let deadline = monotonicNanoseconds() + UInt64(timeout * 1e9)
        let requests: [AdminRequest?] = indices.map { shard in
            guard shard >= 0, shard < shards.count else { return nil }
            let request = AdminRequest(command, clampFloor: clampFloor)
            return shards[shard].send(.admin(request)) ? request : nil
        }
        var outcomes: [AdminOutcome] = []
        for (shard, request) in zip(indices, requests) {
            guard shard >= 0, shard < shards.count else {
                outcomes.append(.refused(sequence: nil, "no shard \(shard)"))
                continue
            }
            let left = Double(deadline &- min(deadline, monotonicNanoseconds())) / 1e9
            guard let request, request.done.wait(seconds: left), let outcome = request.outcome else {
                outcomes.append(.refused(sequence: nil, "shard \(shard) did not answer within \(timeout) s"))
                continue
            }
            outcomes.append(outcome)
        }
        guard settings.durability != .none else { return outcomes }
        for (k, shard) in indices.enumerated() {
            guard case .applied(let sequence) = outcomes[k] else { continue }
            while shards[shard].tallied(ShardTally.durable) < sequence {
                guard monotonicNanoseconds() < deadline else {
                    outcomes[k] = .refused(sequence: sequence, "applied, but not durable within \(timeout) s")
                    break
                }
                // A shard with nothing else to do may be parked: woken, it reaps its journal's
                // completion (else the answer waits for its park timeout, ~100 ms).
                shards[shard].nudge()
                usleep(100)
            }
        }
        return outcomes
    }

    /// Whether no process holds the data directory's lock (true when there is no lock file).
    public static func dataLockFree(_ directory: String) -> Bool {
        let fd = open(directory + "/LOCK", O_RDWR | O_CLOEXEC)
        guard fd >= 0 else { return true }
        defer { close(fd) }
        guard flock(fd, LOCK_EX | LOCK_NB) == 0 else { return false }
        flock(fd, LOCK_UN)
        return true
    }

    /// What a shard's admin commands have set (nil: the shard did not answer in time).
    /// The output of `shard`'s commands above `after`, rebuilt from its journal by a read-only
    /// replay beside the running engine (from a snapshot at or below `after`): the market events
    /// and drop copies those commands made, as 64-byte records, and the last sequence the replay
    /// reached. For an egress resuming after a crash: what it had not published yet.
    func regenerate(shard: Int, after: UInt64) throws(EngineError) -> (market: [UInt8], executions: [UInt8], through: UInt64) {
        guard settings.durability != .none else { throw EngineError("durability none: no journal to regenerate from") }
        let n = Self.regenerationLock.locked { () -> Int in
            Self.regenerations += 1
            return Self.regenerations
        }
        let name = "regen-\(getpid())-\(n)"
        let directory = "/dev/shm/crossbook-\(name)"
        // The name is this process's pid and a number only this process hands out, so a
        // directory of that name is the leftover of an engine killed during a regeneration whose
        // pid the kernel has given to this process (pid_max is 32768 on small hosts): remove it,
        // with the leftovers of every other dead one.
        InstanceDirectory.removeDeadRegenerations(own: directory)
        var side = settings
        side.instance = name
        side.directory = directory
        side.group = nil
        side.readOnly = true
        side.cleanStale = true
        side.plugins = nil
        side.dropCopy = false
        side.shards = settings.shards.map { _ in ShardSettings(core: nil) }
        side.regenerateShard = shard
        side.regenerateAfter = after
        let engine = Engine(settings: side, snapshots: pluginHost?.snapshotStore)
        defer { engine.stop() }
        do { _ = try engine.start() } catch let error as EngineError { throw error } catch {
            throw EngineError("regeneration of shard \(shard): \(error)")
        }
        guard shard < engine.shards.count, let collected = engine.shards[shard].collected else {
            throw EngineError("shard \(shard): nothing was regenerated")
        }
        return (collected.market, collected.executions, engine.shards[shard].recoveredLast)
    }

    public func adminState(shard: Int, timeout: Double = 2) -> ShardAdminState? {
        guard shard >= 0, shard < shards.count else { return nil }
        let query = AdminStateQuery()
        guard shards[shard].send(.adminState(query)), query.done.wait(seconds: timeout) else { return nil }
        return query.state
    }

    /// Stops: no new sessions, every shard drains its rings, every file is removed.
    public func stop() {
        guard let file = engineFile else {
            if instanceDirectory >= 0 { close(instanceDirectory) }
            instanceDirectory = -1
            return
        }
        // Ingress first: what the plugins submitted is drained with the rest.
        pluginHost?.stopAll(snapshotStores: false)
        if let runtime = replication {
            runtime.client?.stop()
            runtime.server?.stop()
            runtime.lease?.stop()
        }
        file.state = .stopping
        controlSocket?.stop()
        controlSocket = nil
        cb_store_release_u32(controlStop, 1)
        if control != nil { controlDone.wait() }
        control = nil
        for shard in shards { shard.stop() }
        for shard in shards { shard.join() }
        finalDigests = shards.map(\.finalDigest)
        pluginHost?.stopAll(snapshotStores: true)
        pluginHost = nil
        file.state = .stopped
        for shard in shards.indices {
            let c = file.counters(shard)
            log("shard \(shard): \(c.read(.commands)) commands, \(c.read(.trades)) trades, \(c.read(.rejects)) rejects, \(c.read(.sessions)) sessions; stopped at state digest \(String(finalDigests[shard], radix: 16))")
        }
        shards = []
        sessions = [:]
        idLock.locked {
            for session in localSessions.values { session.close() }
            localSessions = [:]
            retiredLocal = []
            attachedIds = []
        }
        retired = []
        if instanceDirectory >= 0 {
            InstanceDirectory.remove(instanceDirectory, path: settings.directory)
            close(instanceDirectory)
            instanceDirectory = -1
        }
        engineFile = nil
        Self.regenerationLock.locked { _ = Self.liveDirectories.remove(settings.directory) }
        if dataLock >= 0 {
            close(dataLock)
            dataLock = -1
        }
    }

    // MARK: - Control thread

    private func startControl() {
        let thread = Thread { [self] in
            controlLoop()
            controlDone.signal()
        }
        thread.name = "crossbook-control"
        control = thread
        thread.start()
    }

    private func controlLoop() {
        let dir = settings.directory
        let fd = watch
        defer {
            if fd >= 0 { close(fd) }
            watch = -1
        }
        var buffer = [UInt8](repeating: 0, count: 64 * 1024)
        var lastLag = [UInt64](repeating: 0, count: shards.count)
        var lastFaults = [UInt64](repeating: 0, count: shards.count)
        var lastJournalFailure = [String?](repeating: nil, count: shards.count)
        var lastOrphanSweep: UInt64 = 0
        var lastEventDetaches = [UInt64](repeating: 0, count: shards.count)
        var lastHealth: UInt64 = 0
        var rebalancer = settings.autoRebalance.map { AutoRebalancer(policy: $0) }
        var lastRebalanceTick: UInt64 = 0
        var lastTransferTick: UInt64 = 0
        while cb_load_acquire_u32(controlStop) == 0 {
            if rebalancer != nil, monotonicNanoseconds() &- lastRebalanceTick >= 1_000_000_000 {
                lastRebalanceTick = monotonicNanoseconds()
                autoRebalanceTick(&rebalancer!)
            }
            publishReplicationCounters()
            if hasPendingTransfers, monotonicNanoseconds() &- lastTransferTick >= 1_000_000_000 {
                lastTransferTick = monotonicNanoseconds()
                settleTransfers()
            }
            if let host = pluginHost, monotonicNanoseconds() &- lastHealth >= 1_000_000_000 {
                host.pollHealth()
                lastHealth = monotonicNanoseconds()
            }
            var pfd = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            _ = poll(&pfd, 1, 100)
            if fd >= 0 {
                while true {
                    let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
                    if n <= 0 { break }
                    var offset = 0
                    while offset + 16 <= n {
                        let length = buffer.withUnsafeBytes { Int($0.load(fromByteOffset: offset + 12, as: UInt32.self)) }
                        let nameBytes = buffer[(offset + 16)..<min(n, offset + 16 + length)].prefix { $0 != 0 }
                        let name = String(decoding: nameBytes, as: UTF8.self)
                        if name.hasSuffix(".hello") { accept(String(name.dropLast(6))) }
                        offset += 16 + length
                    }
                }
            }
            // A safety net under inotify (an overflowed queue, a watch that failed): look for
            // announcements still lying there.
            // Raw bytes, no String per file: this loop allocates nothing in steady state.
            scanForAnnouncements(dir)
            for client in idLock.locked({ () -> [String] in defer { lateAnnouncements = [] }; return lateAnnouncements }) { accept(client) }
            // Clients that truncated a ring or session file under the engine: the mapping faulted
            // (its SIGBUS was caught and it reads zeros now); detach them.
            for (id, session) in sessions where session.rings.contains(where: { $0.file.faulted }) || session.sessionFile.file.faulted {
                detach(id, session, removeFiles: false, "shrank a file the engine had mapped; detached, its orders stay")
            }
            if monotonicNanoseconds() &- lastOrphanSweep > 1_000_000_000 {
                lastOrphanSweep = monotonicNanoseconds()
                removeOrphanedClientFiles()
                // Clients that closed (their session file is gone) while their process lives on:
                // detached, so that their shard slots and the session count are free again.
                for (id, session) in sessions
                where faccessat(instanceDirectory, session.name + ".session", F_OK, AT_SYMLINK_NOFOLLOW) != 0 && errno == ENOENT {
                    detach(id, session, removeFiles: true, "closed; its rings are closed, its orders stay")
                }
            }
            // Clients that died: their orders stay; their rings are no longer read.
            for (id, session) in sessions where !processIsAlive(session.pid) {
                detach(id, session, removeFiles: true, "is gone; its rings are closed, its orders stay")
            }
            if engineFile != nil {
                for s in shards.indices {
                    // The shard's private counts: never what another process could have written.
                    let lag = shards[s].tallied(ShardTally.lagDetaches)
                    if lag != lastLag[s] {
                        log("shard \(s): \(lag - lastLag[s]) client(s) lagged past \(settings.lagTimeoutNanoseconds / 1_000_000) ms and were detached")
                        lastLag[s] = lag
                    }
                    let eventDetaches = shards[s].tallied(ShardTally.eventDetaches)
                    if eventDetaches != lastEventDetaches[s] {
                        log("shard \(s): \(eventDetaches - lastEventDetaches[s]) event-ring consumer(s) lagged past \(settings.lagTimeoutNanoseconds / 1_000_000) ms (or were gone) and were detached")
                        lastEventDetaches[s] = eventDetaches
                    }
                    let journalFailure = shards[s].journalFailure
                    if journalFailure != lastJournalFailure[s] {
                        if let journalFailure {
                            log("shard \(s): the journal is failing, no command is taken or acknowledged until it works again (retried every 100 ms): \(journalFailure)")
                        } else {
                            log("shard \(s): the journal works again; taking commands")
                        }
                        lastJournalFailure[s] = journalFailure
                    }
                    let faults = shards[s].tallied(ShardTally.ringFaults)
                    if faults != lastFaults[s] {
                        log("shard \(s): \(faults - lastFaults[s]) command ring(s) had an impossible cursor and were detached")
                        lastFaults[s] = faults
                    }
                }
            }
        }
    }

    private func scanForAnnouncements(_ dir: String) {
        guard let handle = opendir(dir) else { return }
        defer { closedir(handle) }
        let suffix: [UInt8] = Array(".hello".utf8)
        while let entry = readdir(handle) {
            let name: String? = withUnsafeBytes(of: &entry.pointee.d_name) { raw in
                let bytes = raw.bindMemory(to: UInt8.self)
                guard let end = bytes.firstIndex(of: 0), end > suffix.count else { return nil }
                for k in 0..<suffix.count where bytes[end - suffix.count + k] != suffix[k] { return nil }
                return String(decoding: bytes[0..<(end - suffix.count)], as: UTF8.self)
            }
            if let name { accept(name) }
        }
    }

    /// A client's announcement (`<client>.hello`), seen by inotify or by the directory scan under
    /// it. The one call that removes the announcement takes the client; any other returns: a
    /// hello renamed in between a loop's inotify read and its scan is seen by both, and a second
    /// attach of the same rings made two sessions read one command ring (every order applied
    /// twice, under two session ids) and write one report ring (its cursor went back).
    func accept(_ client: String) {
        let dir = settings.directory
        guard unlink(InstanceLayout.helloPath(dir, client)) == 0 else { return }
        guard !sessions.values.contains(where: { $0.name == client }) else {
            log("client \(client): announced again while attached; ignored")
            return
        }
        guard !client.isEmpty, client.utf8.count <= 64, client.utf8.allSatisfy({ isNameByte($0) }) else {
            log("refused a client with the name '\(client)'")
            return
        }
        let sessionFile: SessionFile
        do {
            sessionFile = try SessionFile.attach(path: InstanceLayout.sessionPath(dir, client))
        } catch {
            log("client \(client): \(error)")
            return
        }
        func refuse(_ why: String, code: UInt32) {
            log("client \(client) (pid \(sessionFile.clientPid)) refused: \(why)")
            sessionFile.answer(.refused, sessionId: 0, refusal: code)
        }
        if role == .standby {
            return refuse("this engine is a standby: it takes no orders until promoted (connect to the primary)", code: 5)
        }
        // Each shard serves at most Shard.maxSessions sessions at once: refuse the next one
        // clearly rather than attach a session no shard reads.
        guard idLock.locked({ attachedIds.count }) < Shard.maxSessions else {
            return refuse("\(Shard.maxSessions) sessions are attached, the most an engine serves at once", code: 4)
        }
        var rings: [Ring] = []
        for s in shards.indices {
            do {
                rings.append(try Ring.attach(path: InstanceLayout.commandRingPath(dir, client, shard: s)))
                rings.append(try Ring.attach(path: InstanceLayout.reportRingPath(dir, client, shard: s)))
            } catch {
                return refuse("\(error)", code: 2)
            }
        }
        // A stream: a named order flow that resumes where the journals say (exactly-once resend
        // after a restart or a failover), with the session id it had (its resting orders).
        var stream: IngressSource?
        switch sessionFile.stream() {
        case .success(let name?):
            guard shards.count <= SessionFile.maxPositions else {
                return refuse("streams need at most \(SessionFile.maxPositions) shards", code: 6)
            }
            // Each user's streams are their own: the name is qualified by the session file's
            // owner (the user who made it), so that two users' "desk-1" never meet.
            let source = IngressSource(name: Self.streamPrefix + "\(sessionFile.file.owner):" + name, partition: 0)
            if let (other, holder) = sessions.first(where: { $0.value.stream == source }) {
                // The stream's last client died (or closed) and the engine has not noticed yet.
                if !processIsAlive(holder.pid) {
                    detach(other, holder, removeFiles: true, "is gone (its stream \(name) attaches again)")
                } else {
                    return refuse("stream \(name) is attached by session \(other) (pid \(holder.pid))", code: 6)
                }
            }
            stream = source
        case .success(nil):
            break
        case .failure(let why):
            return refuse("\(why)", code: 6)
        }
        var positions: [UInt64] = []
        if let stream {
            // Where each shard is in the stream (after the detach of its last client: mailboxes
            // are in order), and room for one more source.
            for s in shards.indices {
                guard let state = adminState(shard: s, timeout: 5) else { return refuse("shard \(s) is busy", code: 3) }
                if state.positions[stream.key] == nil && state.sourceSessions[stream.key] == nil
                    && state.sourceCount >= IngressPositions.capacity {
                    return refuse("shard \(s) knows \(IngressPositions.capacity) ingress sources, the most it holds: no new stream", code: 6)
                }
                positions.append(state.positions[stream.key].map { $0 &+ 1 } ?? 0)
            }
        }
        guard let id = idLock.locked({ takeSessionId(for: stream?.key) }) else {
            return refuse("no session id free: each of the \(settings.sessionIdLimit) is attached or owns resting orders", code: 1)
        }
        for (s, shard) in shards.enumerated() {
            let message = ShardMessage.attach(session: id, commands: rings[2 * s].consumer(),
                                              reports: rings[2 * s + 1].producer(), source: stream)
            guard shard.send(message) else { return refuse("shard \(s) is busy", code: 3) }
        }
        sessions[id] = ClientSession(name: client, pid: sessionFile.clientPid, sessionFile: sessionFile, rings: rings, stream: stream)
        idLock.locked { _ = attachedIds.insert(id) }
        if stream != nil { sessionFile.writePositions(positions) }
        sessionFile.answer(.accepted, sessionId: id)
        log("session \(id): client \(client) (pid \(sessionFile.clientPid)) attached\(stream.map { ", stream \($0.name.dropFirst(Self.streamPrefix.count)) (user:name) resumes at \(positions.map(String.init).joined(separator: ","))" } ?? "")")
    }

    /// Streams are ingress sources named "client:UID:NAME" (partition 0; UID: the user who made
    /// the session file); a Kafka topic's name cannot hold a colon.
    static let streamPrefix = "client:"

    /// Control thread: a client session ends (closed, gone, or a file of it shrunk). Every shard
    /// stops reading it; its mappings stay until stop (a shard may be mid-read); its id is free
    /// for reclaiming once no order of it rests.
    private func detach(_ id: UInt32, _ session: ClientSession, removeFiles: Bool, _ why: String) {
        for shard in shards { _ = shard.send(.detach(session: id)) }
        if removeFiles { removeClientFiles(session.name) }
        retired.append(session)
        sessions[id] = nil
        idLock.locked {
            _ = attachedIds.remove(id)
            // The stream's next client (in this run) takes the id back.
            if let key = session.stream?.key { sourceSessionIds[key] = id }
        }
        log("session \(id): client \(session.name) (pid \(session.pid)) \(why)")
    }

    /// A promoted standby: what the shards applied since its start (the primary's sessions that
    /// own resting orders, its sources' and streams' sessions) keeps those ids from new clients.
    /// A shard that does not answer: every id is held until the shards say which own orders.
    func reserveSessions() {
        var owners = Set<UInt32>(), sources: [String: UInt32] = [:]
        var answered = true
        for (s, shard) in shards.enumerated() {
            let query = RestingOwnersQuery()
            guard shard.send(.restingOwners(query)), query.done.wait(seconds: 10), let state = adminState(shard: s, timeout: 10) else {
                answered = false
                break
            }
            owners.formUnion(query.owners)
            sources.merge(state.sourceSessions) { a, _ in a }
        }
        let limit = min(settings.sessionIdLimit, 65_535)
        idLock.locked {
            if answered {
                reservedSessions.formUnion(owners)
                reservedSessions.formUnion(sources.values)
                for (key, session) in sources where sourceSessionIds[key] == nil { sourceSessionIds[key] = session }
            } else {
                nextSession = limit + 1
                freeSessionIds = []
            }
        }
        log(answered ? "session ids: \(owners.count) kept for their resting orders, \(sources.count) for their sources and streams"
                     : "session ids: a shard did not say which sessions own resting orders: none handed out until it does")
    }

    /// Under `idLock`: the id the source or stream `key` had, when free; else a new one.
    private func takeSessionId(for key: String?) -> UInt32? {
        if let key, let id = sourceSessionIds.removeValue(forKey: key), !attachedIds.contains(id) {
            freeSessionIds.removeAll { $0 == id }
            return id
        }
        return takeSessionId()
    }

    /// Under `idLock`.
    func takeSessionId() -> UInt32? {
        let limit = min(settings.sessionIdLimit, 65_535)
        while nextSession <= limit && reservedSessions.contains(nextSession) { nextSession += 1 }
        if nextSession <= limit {
            defer { nextSession += 1 }
            return nextSession
        }
        if freeSessionIds.isEmpty { reclaimSessionIds(limit: limit) }
        return freeSessionIds.popLast()
    }

    /// Asks every shard which sessions own resting orders (after the detaches already sent to
    /// it: its mailbox is in order) and frees every other id with no attached session.
    private func reclaimSessionIds(limit: UInt32) {
        var owners = Set<UInt32>()
        for (s, shard) in shards.enumerated() {
            let query = RestingOwnersQuery()
            guard shard.send(.restingOwners(query)), query.done.wait(seconds: 2) else {
                log("session ids: shard \(s) did not say which sessions own resting orders (busy); none reclaimed now")
                return
            }
            owners.formUnion(query.owners)
        }
        // An id a source or stream had stays its own (its next producer takes it back).
        let kept = Set(sourceSessionIds.values)
        freeSessionIds = (1...limit).reversed().filter { !attachedIds.contains($0) && !owners.contains($0) && !kept.contains($0) }
        reservedSessions = []
        log("session ids: all \(limit) handed out in this run; \(freeSessionIds.count) reclaimed (no attached session, no resting order); \(owners.count) kept for their resting orders")
    }

    /// Files of clients that died before their attach completed (or were never announced):
    /// named c<pid>-<n>.<kind>, their process gone, no session of that name. Removed through the
    /// checked instance directory.
    private func removeOrphanedClientFiles() {
        guard instanceDirectory >= 0 else { return }
        let copy = openat(instanceDirectory, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC)  // not dup: its offset is shared
        guard copy >= 0, let dir = fdopendir(copy) else {
            if copy >= 0 { close(copy) }
            return
        }
        var orphans: [String] = []
        let live = Set(sessions.values.map(\.name))
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: &entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            guard name.hasPrefix("c"), let dot = name.firstIndex(of: "."), let dash = name.firstIndex(of: "-"), dash < dot,
                  let pid = Int32(name[name.index(after: name.startIndex)..<dash]), Int(name[name.index(after: dash)..<dot]) != nil
            else { continue }
            let client = String(name[..<dot])
            if !live.contains(client) && !processIsAlive(pid) { orphans.append(name) }
        }
        closedir(dir)
        for name in orphans { unlinkat(instanceDirectory, name, 0) }
        if !orphans.isEmpty { log("removed \(orphans.count) file(s) of clients that died before their attach completed") }
    }

    private func removeClientFiles(_ client: String) {
        let dir = settings.directory
        unlink(InstanceLayout.sessionPath(dir, client))
        unlink(InstanceLayout.helloPath(dir, client))
        for s in shards.indices {
            unlink(InstanceLayout.commandRingPath(dir, client, shard: s))
            unlink(InstanceLayout.reportRingPath(dir, client, shard: s))
        }
    }

    // MARK: - Files

    /// What decides how journaled commands replay: shards, each symbol's rules and shard, book
    /// capacity. One line each, in a file beside the journals.
    static func configurationText(_ s: EngineSettings) -> String {
        var lines = ["crossbook journal configuration v1", "shards \(s.shards.count)",
                     "capacity orders \(s.capacity.orders) levels \(s.capacity.levels)"]
        // Shared pools change which orders a full shard rejects (absent: as before they existed).
        for (i, shard) in s.shards.enumerated() {
            if let pools = shard.pools { lines.append("shard \(i) pools orders \(pools.orders) levels \(pools.levels)") }
        }
        for (spec, shard) in s.symbols.sorted(by: { $0.spec.id < $1.spec.id }) {
            lines.append("symbol \(spec.name) id \(spec.id) shard \(shard) tick \(spec.tickSize) lot \(spec.lotSize) band \(spec.minPrice)...\(spec.maxPrice) max \(spec.maxOrderQuantity)")
        }
        return lines.joined(separator: "\n") + "\n"
    }

    /// Refuses a data directory whose journals another configuration wrote; records this one in
    /// a new directory.
    private func checkConfiguration(_ s: EngineSettings) throws {
        let path = s.dataDirectory + "/CONFIGURATION"
        let mine = Self.configurationText(s)
        if let theirs = try? String(contentsOfFile: path, encoding: .utf8) {
            guard theirs == mine else {
                let differing = zip(theirs.split(separator: "\n"), mine.split(separator: "\n")).first { $0 != $1 }
                let detail = differing.map { "journal: '\($0.0)', now: '\($0.1)'" } ?? "a different number of symbols"
                throw EngineError("the journals in \(s.dataDirectory) were written under another configuration (\(detail)); replaying them under this one would not rebuild the same books. Start with the configuration in \(path), or with another data directory")
            }
            return
        }
        guard !s.readOnly else { return }
        // No record yet: journals without one are from before this check; say so, then record.
        if !JournalReader.segments(directory: s.dataDirectory, shard: 0).isEmpty {
            log("\(s.dataDirectory) has journals but no CONFIGURATION: assuming they were written under this configuration")
        }
        try writeDurably(path, mine)
    }

    /// Writes a file so that a power cut leaves either no file or the whole of it: a temporary
    /// file, fsync'ed, renamed into place, and the directory fsync'ed. Every step is checked.
    private func writeDurably(_ path: String, _ text: String) throws {
        let directory = (path as NSString).deletingLastPathComponent
        let temporary = path + ".tmp"
        let bytes = Array(text.utf8)
        do throws(SystemCallError) {
            let fd = try SystemCall.run("open", temporary) { open(temporary, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0o600) }
            defer { close(fd) }
            var done = 0
            while done < bytes.count {
                let n = try SystemCall.run("write", temporary) { bytes.withUnsafeBytes { write(fd, $0.baseAddress! + done, bytes.count - done) } }
                guard n > 0 else { throw SystemCallError("write (no progress)", temporary, .ioError) }
                done += n
            }
            try SystemCall.run("fsync", temporary) { fsync(fd) }
            try SystemCall.run("rename", path) { rename(temporary, path) }
        } catch {
            unlink(temporary)
            throw EngineError.system(error)
        }
        try syncDirectory(directory)
    }

    private func syncDirectory(_ directory: String) throws {
        do { try JournalReader.syncDirectory(directory.isEmpty ? "." : directory) } catch { throw EngineError.journal(error) }
    }

    private func makeDataDirectory(_ path: String) throws {
        let parent = (path as NSString).deletingLastPathComponent
        if !parent.isEmpty && parent != path && access(parent, F_OK) != 0 { try makeDataDirectory(parent) }
        do {
            try SystemCall.run("mkdir (the data directory)", path) { mkdir(path, 0o700) }
            // A new directory's name is durable only once its parent is synced.
            try syncDirectory(parent.isEmpty ? "." : parent)
        } catch let failure as SystemCallError where failure.errno == .fileExists {
            return
        } catch let failure as SystemCallError {
            throw EngineError.system(failure)
        }
    }

    func writeFile(_ path: String, _ text: String) throws {
        let bytes = Array(text.utf8)
        do throws(SystemCallError) {
            let fd = try SystemCall.run("open", path) { open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, settings.fileMode) }
            defer { close(fd) }
            try SystemCall.run("fchmod", path) { fchmod(fd, settings.fileMode) }
            let n = try SystemCall.run("write", path) { write(fd, bytes, bytes.count) }
            guard n == bytes.count else { throw SystemCallError("write (short: \(n) of \(bytes.count) bytes)", path, .ioError) }
        } catch {
            throw EngineError.system(error)
        }
    }
}

func isNameByte(_ b: UInt8) -> Bool {
    (b >= 48 && b <= 57) || (b >= 65 && b <= 90) || (b >= 97 && b <= 122) || b == 45 || b == 46 || b == 95
}

/// Removes the files of an instance directory (not subdirectories: there are none).
public func removeContents(of directory: String) {
    guard let names = try? FileManager.default.contentsOfDirectory(atPath: directory) else { return }
    for name in names { unlink(directory + "/" + name) }
}
