// The plugin host: loads the plugins the configuration names (dlopen, RTLD_NOW | RTLD_LOCAL),
// checks them before anything runs (permissions, entry point, ABI version, descriptor size),
// hands each the host table of crossbook_plugin.h, asks them for their health, and stops them
// in the reverse order. Plugins reach the shards only through rings: a producer is a session
// like any other process's, a subscription a consumer of an event ring.

import CPluginABI
import CSync
import Glibc
import Journal
import OrderBook
import SharedMemory

/// Where the host meets the engine: what a plugin may ask of it.
struct PluginEnvironment: @unchecked Sendable {
    let instance: String
    let directory: String
    let engineFile: EngineFile
    let symbols: [(spec: SymbolSpec, shard: Int)]
    /// Where each symbol lives now (a symbol can move between shards): `symbols`' shard is the
    /// config's placement only.
    let routes: RouteTable
    let log: @Sendable (String) -> Void
    /// Index into `symbols` by name: an ingress plugin looks a symbol up per order it reads.
    let symbolIndex: [String: Int]
    /// Sessions of the engine's own, for producers (Engine.openLocalSession / closeLocalSession);
    /// with a source, bound to that ingress partition.
    let openSession: @Sendable (IngressSource?) throws(EngineError) -> LocalSession
    let closeSession: @Sendable (LocalSession) -> Void
    /// A shard's last journaled offset of an ingress partition ("topic#partition"), if any.
    let position: @Sendable (Int, String) -> UInt64?
    /// A shard's private drop-copy ring (nil: off).
    let executionRing: @Sendable (Int) -> EventRing?
    /// A shard's output above a sequence, regenerated from its journal (Engine.regenerate).
    let regenerate: @Sendable (Int, UInt64) throws(EngineError) -> (market: [UInt8], executions: [UInt8], through: UInt64)
    /// Moves a symbol (by id) to a shard (Engine.migrate): nil when it trades there, else why not.
    let migrate: @Sendable (UInt32, Int) -> String?
    /// A router saw a symbol's route MIGRATING to this engine (name, epoch, shard): the engine
    /// takes it in on a thread of its own (Engine.offerTransfer); false: it takes no moves.
    let transferOffered: @Sendable (String, UInt64, Int) -> Bool
    /// Every symbol of the instance, those listed at run time too (nil: `symbols` only).
    let table: InstanceSymbols?
    /// What the ingress plugins read again when a symbol arrives from another engine, and the
    /// symbols another engine takes the ingress of (IngressRewinds.swift).
    let rewinds: IngressRewinds
    /// A source producer's watermark (session, shard, offset) to that shard's mailbox: false when
    /// it is full (ShardMessage.ingressWatermark).
    let watermark: @Sendable (UInt32, Int, UInt64) -> Bool

    init(instance: String, directory: String, engineFile: EngineFile, symbols: [(spec: SymbolSpec, shard: Int)],
         routes: RouteTable? = nil, log: @escaping @Sendable (String) -> Void,
         openSession: @escaping @Sendable (IngressSource?) throws(EngineError) -> LocalSession,
         closeSession: @escaping @Sendable (LocalSession) -> Void,
         position: @escaping @Sendable (Int, String) -> UInt64? = { _, _ in nil },
         executionRing: @escaping @Sendable (Int) -> EventRing? = { _ in nil },
         regenerate: @escaping @Sendable (Int, UInt64) throws(EngineError) -> (market: [UInt8], executions: [UInt8], through: UInt64)
            = { _, _ throws(EngineError) in throw EngineError("no journal") },
         migrate: @escaping @Sendable (UInt32, Int) -> String? = { _, _ in "this engine cannot move symbols" },
         transferOffered: @escaping @Sendable (String, UInt64, Int) -> Bool = { _, _, _ in false },
         table: InstanceSymbols? = nil, rewinds: IngressRewinds = IngressRewinds(),
         watermark: @escaping @Sendable (UInt32, Int, UInt64) -> Bool = { _, _, _ in false }) {
        self.rewinds = rewinds
        self.watermark = watermark
        self.migrate = migrate
        self.transferOffered = transferOffered
        self.table = table
        self.openSession = openSession
        self.closeSession = closeSession
        self.position = position
        self.executionRing = executionRing
        self.regenerate = regenerate
        self.instance = instance
        self.directory = directory
        self.engineFile = engineFile
        self.symbols = symbols
        self.routes = routes ?? RouteTable(symbols: symbols.map { (id: $0.spec.id, shard: $0.shard) }, engineFile: nil)
        self.log = log
        symbolIndex = Dictionary(symbols.enumerated().map { ($1.spec.name, $0) }, uniquingKeysWith: { first, _ in first })
    }
}

extension PluginEnvironment {
    /// The symbols a plugin may see now (listings grow it).
    var symbolCount: Int { max(symbols.count, table?.publishedCount ?? 0) }
}

final class PluginHost: @unchecked Sendable {
    let settings: PluginSettings
    let environment: PluginEnvironment
    private(set) var loaded: [LoadedPlugin] = []
    /// In start order: stopped in the reverse.
    private var started: [LoadedPlugin] = []
    private let lock = Lock()
    /// Start, stop and health of one plugin never overlap (health runs on the control thread).
    private let lifecycle = Lock()
    private(set) var snapshotStore: PluginSnapshotStore?
    /// The router (a CB_KIND_ROUTING plugin's), and the lock its calls hold: a plugin's stop
    /// waits for a call in progress and no call starts after it.
    private var router: (table: cb_router, plugin: LoadedPlugin)?
    /// The help the plugins gave their counters, by counter name (under `lock`).
    private var helpTexts: [String: String] = [:]
    private let routerLock = Lock()

    init(settings: PluginSettings, environment: PluginEnvironment) {
        self.settings = settings
        self.environment = environment
    }

    /// Loads and checks every plugin; throws the first failure of a plugin that is not optional.
    func loadAll(extraConfig: [String: String]) throws(PluginError) {
        for spec in settings.load {
            do {
                let plugin = try load(spec, extraConfig: extraConfig)
                plugin.slot = loaded.count
                loaded.append(plugin)
                publish(plugin)
            } catch {
                if spec.optional {
                    environment.log("\(error) (optional: skipped)")
                    continue
                }
                throw error
            }
        }
    }

    /// A key the host gives every plugin not started yet (a promotion: `engine.predecessor`).
    func setHostConfig(_ key: String, _ value: String) {
        for plugin in loaded where plugin.state == .loaded { plugin.setHostConfig(key, value) }
    }

    /// Starts the plugins of (or not of) the snapshot-store kind, in configuration order.
    func startAll(snapshotStores: Bool, allowed: Bool = true) throws(PluginError) {
        for plugin in loaded where plugin.isSnapshotStore == snapshotStores && plugin.state == .loaded {
            guard allowed else { continue }
            do {
                try lifecycle.locked { () throws(PluginError) in try start(plugin) }
            } catch {
                plugin.state = .failed
                plugin.healthMessage = error.detail
                publish(plugin)
                if plugin.spec.optional {
                    environment.log("\(error) (optional: skipped)")
                    continue
                }
                throw error
            }
        }
    }

    /// Stops the plugins of (or not of) the snapshot-store kind, newest first.
    func stopAll(snapshotStores: Bool) {
        lifecycle.locked { stopAllLocked(snapshotStores: snapshotStores) }
    }

    private func stopAllLocked(snapshotStores: Bool) {
        for plugin in started.reversed() where plugin.isSnapshotStore == snapshotStores && plugin.state == .running {
            unregisterRouter(of: plugin)
            plugin.descriptor.stop?(plugin.instance)
            plugin.closeAll()
            plugin.state = .stopped
            publish(plugin)
            environment.log("plugin \(plugin.name): stopped")
        }
    }

    /// Asks each running plugin for its health (control thread, about once a second).
    func pollHealth() {
        // Never wait: a plugin's start or stop may take long, and the control thread, which
        // calls this, must go on serving clients meanwhile. Busy now: ask next time.
        lifecycle.ifFree { pollHealthLocked() }
    }

    private func pollHealthLocked() {
        for plugin in loaded where plugin.state == .running {
            guard let health = plugin.descriptor.health else {
                plugin.health = 0
                plugin.healthMessage = ""
                publish(plugin)
                continue
            }
            var message = [CChar](repeating: 0, count: 160)
            let rc = health(plugin.instance, &message, message.count)
            let text = messageText(message)
            let value = UInt32(max(0, min(2, Int(rc))))
            if value != plugin.health || text != plugin.healthMessage {
                if value != 0 || plugin.health != 0 {
                    environment.log("plugin \(plugin.name): health \(["ok", "degraded", "failed"][Int(value)])\(text.isEmpty ? "" : ": " + text)")
                }
            }
            plugin.health = value
            plugin.healthMessage = text
            publish(plugin)
        }
    }

    private func publish(_ plugin: LoadedPlugin) {
        guard plugin.slot >= 0, plugin.slot < InstanceLayout.pluginSlots else { return }
        environment.engineFile.setPluginStatus(plugin.slot, PluginStatus(
            name: plugin.name, version: plugin.version, kinds: plugin.descriptor.kinds, state: plugin.state,
            health: plugin.health, message: plugin.healthMessage, updatedNanoseconds: realtimeNanoseconds()))
    }

    // MARK: Loading

    private func load(_ spec: PluginSpec, extraConfig: [String: String]) throws(PluginError) -> LoadedPlugin {
        func fail(_ cause: PluginError.Cause, _ detail: String) -> PluginError {
            PluginError(plugin: spec.name, cause: cause, detail: detail)
        }
        let directory = settings.directory
        let path = spec.fileName.hasPrefix("/") ? spec.fileName : directory + "/" + spec.fileName
        guard !spec.fileName.contains("/") || spec.fileName.hasPrefix("/") else {
            throw fail(.missingFile, "file '\(spec.fileName)' must be a name in the plugin directory \(directory)")
        }
        // The file is opened once, without following a link, from a checked directory, and the
        // open descriptor is what is checked and loaded: nothing can swap it between the check
        // and the load.
        let folder = String(path[..<path.lastIndex(of: "/")!])
        let fileName = String(path[path.index(after: path.lastIndex(of: "/")!)...])
        let dirFd = open(folder.isEmpty ? "/" : folder, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard dirFd >= 0 else {
            throw fail(.missingFile, "plugin directory \(folder): \(String(cString: strerror(errno)))")
        }
        defer { close(dirFd) }
        var info = stat()
        guard fstat(dirFd, &info) == 0 else {
            throw fail(.missingFile, "plugin directory \(folder): \(String(cString: strerror(errno)))")
        }
        if let why = Self.unsafe(info, what: "plugin directory \(folder)") { throw fail(.unsafePermissions, why) }
        let fd = openat(dirFd, fileName, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK)
        guard fd >= 0 else {
            if errno == ELOOP { throw fail(.unsafePermissions, "\(path) is a symbolic link: give the file itself") }
            throw fail(.missingFile, "\(path): \(String(cString: strerror(errno)))")
        }
        guard fstat(fd, &info) == 0 else {
            close(fd)
            throw fail(.missingFile, "\(path): \(String(cString: strerror(errno)))")
        }
        guard info.st_mode & S_IFMT == S_IFREG else { close(fd); throw fail(.missingFile, "\(path) is not a regular file") }
        if let why = Self.unsafe(info, what: path) { close(fd); throw fail(.unsafePermissions, why) }

        _ = dlerror()
        guard let handle = dlopen("/proc/self/fd/\(fd)", RTLD_NOW | RTLD_LOCAL) else {
            let why = (dlerror().map { String(cString: $0) } ?? "dlopen failed").replacingOccurrences(of: "/proc/self/fd/\(fd)", with: path)
            close(fd)
            throw fail(.cannotLoad, why)
        }
        // The descriptor stays open, like the library (never dlclosed): glibc knows a library by
        // the name it was opened under, and a reused /proc/self/fd/N would be taken for the
        // library loaded under that name before.
        // Never dlclosed: a Swift plugin's metadata, or a thread a plugin failed to join, would
        // point into unmapped code.
        guard let symbol = dlsym(handle, CB_PLUGIN_ENTRY) else {
            throw fail(.missingEntryPoint, "\(path) exports no \(CB_PLUGIN_ENTRY) (declare it with CB_PLUGIN_EXPORT, or @_cdecl(\"\(CB_PLUGIN_ENTRY)\") in Swift)")
        }
        let entry = unsafeBitCast(symbol, to: cb_plugin_entry_fn.self)
        guard let raw = entry() else { throw fail(.badDescriptor, "\(CB_PLUGIN_ENTRY) returned NULL") }
        let size = Int(UnsafeRawPointer(raw).load(as: UInt32.self))
        let abi = UnsafeRawPointer(raw).load(fromByteOffset: 4, as: UInt32.self)
        guard abi == CB_PLUGIN_ABI_VERSION else {
            throw fail(.abiMismatch, "built for plugin ABI v\(abi); this engine speaks v\(CB_PLUGIN_ABI_VERSION) (rebuild it against this engine's crossbook_plugin.h)")
        }
        let minimum = MemoryLayout<cb_plugin>.offset(of: \cb_plugin.health)! + MemoryLayout<UnsafeRawPointer>.size
        guard size >= minimum else {
            throw fail(.abiMismatch, "descriptor of \(size) bytes; a v1 descriptor has at least \(minimum) (set size = sizeof(cb_plugin))")
        }
        // Read what the plugin knows, no more; fields it does not know stay zero.
        var descriptor = cb_plugin()
        withUnsafeMutableBytes(of: &descriptor) { out in
            out.copyMemory(from: UnsafeRawBufferPointer(start: UnsafeRawPointer(raw), count: min(size, out.count)))
        }
        guard let namePointer = descriptor.name else { throw fail(.badDescriptor, "the descriptor has no name") }
        let name = String(cString: namePointer)
        guard name == spec.name else {
            throw fail(.badDescriptor, "\(path) is plugin '\(name)', the configuration asks for '\(spec.name)'")
        }
        guard descriptor.start != nil, descriptor.stop != nil else {
            throw fail(.badDescriptor, "the descriptor has no start or no stop function")
        }
        guard descriptor.kinds != 0, descriptor.kinds & ~UInt32(0x1F) == 0 else {
            throw fail(.badDescriptor, "kinds 0x\(String(descriptor.kinds, radix: 16)): give CB_KIND_* bits, at least one")
        }
        let version = descriptor.version.map { String(cString: $0) } ?? "?"
        var config = extraConfig
        for (k, v) in spec.config { config[k] = v }
        return LoadedPlugin(spec: spec, path: path, name: name, version: version, descriptor: descriptor, config: config,
                            host: self)
    }

    /// Why a file or directory may not be trusted: writable by everyone or by a group, or owned
    /// by someone who is neither this user nor root.
    static func unsafe(_ info: stat, what: String) -> String? {
        if info.st_mode & S_IWOTH != 0 {
            return "\(what) is writable by every user (mode \(String(info.st_mode & 0o7777, radix: 8))): chmod o-w it"
        }
        if info.st_mode & S_IWGRP != 0 {
            return "\(what) is writable by its group (mode \(String(info.st_mode & 0o7777, radix: 8))): chmod g-w it"
        }
        if info.st_uid != geteuid() && info.st_uid != 0 {
            return "\(what) is owned by uid \(info.st_uid), not by this user (uid \(geteuid())) or root"
        }
        return nil
    }

    private func start(_ plugin: LoadedPlugin) throws(PluginError) {
        var error = [CChar](repeating: 0, count: 256)
        var instance: UnsafeMutableRawPointer?
        plugin.starting = true
        let rc = plugin.descriptor.start!(PluginHost.api, plugin.handle, &instance, &error, error.count)
        plugin.starting = false
        guard rc == 0 else {
            unregisterRouter(of: plugin)
            plugin.closeAll()
            let why = messageText(error)
            throw PluginError(plugin: plugin.name, cause: .startFailed,
                              detail: "\(statusName(rc))\(why.isEmpty ? "" : ": " + why)")
        }
        plugin.instance = instance
        plugin.state = .running
        lock.locked { started.append(plugin) }
        publish(plugin)
        environment.log("plugin \(plugin.name) \(plugin.version) (\(PluginStatus.kindNames(plugin.descriptor.kinds).joined(separator: ", "))): started from \(plugin.path)")
    }

    func registerSnapshotStore(_ store: cb_snapshot_store, plugin: LoadedPlugin) -> Int32 {
        guard plugin.isSnapshotStore else { return CB_ERR_UNSUPPORTED.rawValue }
        return lock.locked {
            guard snapshotStore == nil else { return CB_ERR_LIMIT.rawValue }
            snapshotStore = PluginSnapshotStore(store: store, plugin: plugin.name)
            return CB_OK.rawValue
        }
    }

    // MARK: Router

    func registerRouter(_ table: cb_router, plugin: LoadedPlugin) -> Int32 {
        guard plugin.descriptor.kinds & UInt32(CB_KIND_ROUTING) != 0 else { return CB_ERR_UNSUPPORTED.rawValue }
        return routerLock.locked {
            guard router == nil else { return CB_ERR_LIMIT.rawValue }
            router = (table, plugin)
            environment.log("plugin \(plugin.name): routes this engine's symbols")
            return CB_OK.rawValue
        }
    }

    private func unregisterRouter(of plugin: LoadedPlugin) {
        routerLock.locked { if router?.plugin === plugin { router = nil } }
    }

    var hasRouter: Bool { routerLock.locked { router != nil } }

    /// Asks the router before a move: nil lets it go on (also with no router), else why not.
    func routeBegin(symbolId: UInt32, from: Int, to: Int) -> String? {
        routerLock.locked { () -> String? in
            guard let router, let begin = router.table.route_begin else { return nil }
            var error = [CChar](repeating: 0, count: 256)
            let rc = begin(router.table.context, symbolId, UInt32(from), UInt32(to), &error, error.count)
            guard rc != CB_OK.rawValue else { return nil }
            let why = messageText(error)
            return "router \(router.plugin.name) refused: \(why.isEmpty ? statusName(rc) : why)"
        }
    }

    /// Tells the router where the symbol trades after a move (or a refused one).
    func routeEnd(symbolId: UInt32, shard: Int) {
        routerLock.locked {
            guard let router, let end = router.table.route_end else { return }
            end(router.table.context, symbolId, UInt32(shard))
        }
    }

    /// The router moves symbols between engines (its struct has the transfer functions).
    var routesTransfers: Bool {
        routerLock.locked { router.map { $0.table.transfer_begin != nil && $0.table.transfer_claim != nil && $0.table.route_read != nil } ?? false }
    }

    /// The route of `symbol` becomes MIGRATING to `instance`: its epoch, or why not.
    func transferBegin(symbol: String, shard: Int, to instance: String, toShard: Int) -> Result<UInt64, EngineError> {
        routerLock.locked { () -> Result<UInt64, EngineError> in
            guard let router, let begin = router.table.transfer_begin else { return .failure(EngineError("no router that moves symbols between engines (load redis-routing)")) }
            var error = [CChar](repeating: 0, count: 256)
            var epoch: UInt64 = 0
            let rc = begin(router.table.context, symbol, UInt32(shard), instance, UInt32(max(0, toShard)), &epoch, &error, error.count)
            guard rc == CB_OK.rawValue else {
                let why = messageText(error)
                return .failure(EngineError("router \(router.plugin.name) refused: \(why.isEmpty ? statusName(rc) : why)"))
            }
            return .success(epoch)
        }
    }

    enum ClaimOutcome: Equatable { case won, lost(String), unreachable(String) }

    /// The route of `symbol`, MIGRATING at `epoch`, becomes ACTIVE on this engine's `shard`.
    func transferClaim(symbol: String, epoch: UInt64, shard: Int) -> ClaimOutcome {
        routerLock.locked { () -> ClaimOutcome in
            guard let router, let claim = router.table.transfer_claim else { return .unreachable("no router that moves symbols between engines") }
            var error = [CChar](repeating: 0, count: 256)
            let rc = claim(router.table.context, symbol, epoch, UInt32(shard), &error, error.count)
            if rc == CB_OK.rawValue { return .won }
            let why = messageText(error)
            return rc == CB_ERR_FAILED.rawValue ? .lost(why) : .unreachable(why.isEmpty ? statusName(rc) : why)
        }
    }

    struct RouteNow: Equatable {
        var instance: String
        var to: String
        var shard: Int
        var migrating: Bool
        var epoch: UInt64
        var toShard: Int = 0
    }

    /// The route of `symbol` now: nil inside .success when there is none.
    func routeRead(symbol: String) -> Result<RouteNow?, EngineError> {
        routerLock.locked { () -> Result<RouteNow?, EngineError> in
            guard let router, let read = router.table.route_read else { return .failure(EngineError("no router that moves symbols between engines")) }
            var error = [CChar](repeating: 0, count: 256)
            var out = cb_route()
            let rc = read(router.table.context, symbol, &out, &error, error.count)
            if rc == CB_ERR_NOT_FOUND.rawValue { return .success(nil) }
            guard rc == CB_OK.rawValue else {
                let why = messageText(error)
                return .failure(EngineError("router \(router.plugin.name): \(why.isEmpty ? statusName(rc) : why)"))
            }
            let instance = withUnsafeBytes(of: out.instance) { String(decoding: $0.prefix(while: { $0 != 0 }), as: UTF8.self) }
            let to = withUnsafeBytes(of: out.to) { String(decoding: $0.prefix(while: { $0 != 0 }), as: UTF8.self) }
            return .success(RouteNow(instance: instance, to: to, shard: Int(out.shard), migrating: out.migrating != 0, epoch: out.epoch, toShard: Int(out.to_shard)))
        }
    }

    // MARK: Counters

    var counterHelp: [String: String] { lock.locked { helpTexts } }

    func rememberHelp(_ name: String, _ help: String) {
        let line = String(help.prefix(200).map { $0 == "\n" || $0 == "\r" ? " " : $0 })
        lock.locked { if helpTexts[name] == nil || helpTexts[name]!.isEmpty { helpTexts[name] = line } }
    }

    /// Why a plugin counter's family cannot be registered, or nil.
    func familyClash(_ family: String, name: String, isGauge: Bool) -> String? {
        var engine = EngineMetrics.collect(environment.engineFile, ownCounters: false)
        engine.addProcess(version: crossbookVersion)
        if engine.families.contains(where: { $0.name == family }) {
            return "it would be exported as \(family), one of the engine's own families"
        }
        for other in environment.engineFile.pluginCounters() where other.isGauge != isGauge {
            let otherBase = EngineMetrics.splitCounterName(other.name).base
            if EngineMetrics.pluginFamily(otherBase, isGauge: other.isGauge) == family || otherBase == name {
                return "\(family) is another plugin's \(other.isGauge ? "gauge" : "counter") '\(other.name)' already"
            }
        }
        return nil
    }
}
