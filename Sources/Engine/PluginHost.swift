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

/// One plugin the configuration names.
public struct PluginSpec: Sendable, Equatable {
    public var name: String
    /// The file in the plugin directory; default `libcrossbook-<name>.so`.
    public var file: String?
    /// A plugin that cannot load is logged and skipped instead of stopping the start.
    public var optional: Bool
    /// The plugin's config section, values as text.
    public var config: [String: String]

    public init(name: String, file: String? = nil, optional: Bool = false, config: [String: String] = [:]) {
        self.name = name
        self.file = file
        self.optional = optional
        self.config = config
    }

    public var fileName: String { file ?? "libcrossbook-\(name).so" }
}

public struct PluginSettings: Sendable, Equatable {
    /// Where the plugin files are ([plugins] dir).
    public var directory: String
    public var load: [PluginSpec]

    public init(directory: String, load: [PluginSpec]) {
        self.directory = directory
        self.load = load
    }

    /// The directory of the running executable: where `swift build` and `make` put the plugins.
    public static var executableDirectory: String {
        var buffer = [CChar](repeating: 0, count: 4096)
        let n = readlink("/proc/self/exe", &buffer, buffer.count - 1)
        guard n > 0 else { return "." }
        let path = String(decoding: buffer[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
        guard let slash = path.lastIndex(of: "/") else { return "." }
        return String(path[..<slash])
    }
}

/// Why a plugin did not load or start: which plugin, what is wrong.
public struct PluginError: Error, CustomStringConvertible, Equatable {
    public enum Cause: String, Sendable {
        case missingFile = "missing file"
        case unsafePermissions = "unsafe permissions"
        case cannotLoad = "cannot load"
        case missingEntryPoint = "missing entry point"
        case abiMismatch = "ABI mismatch"
        case badDescriptor = "bad descriptor"
        case startFailed = "start failed"
    }

    public var plugin: String
    public var cause: Cause
    public var detail: String
    public var description: String { "plugin \(plugin): \(cause.rawValue): \(detail)" }
}

/// Where the host meets the engine: what a plugin may ask of it.
struct PluginEnvironment: @unchecked Sendable {
    let instance: String
    let directory: String
    let engineFile: EngineFile
    let symbols: [(spec: SymbolSpec, shard: Int)]
    let log: @Sendable (String) -> Void
    /// Index into `symbols` by name: an ingress plugin looks a symbol up per order it reads.
    let symbolIndex: [String: Int]
    /// Sessions of the engine's own, for producers (Engine.openLocalSession / closeLocalSession).
    let openSession: @Sendable () throws(EngineError) -> LocalSession
    let closeSession: @Sendable (LocalSession) -> Void

    init(instance: String, directory: String, engineFile: EngineFile, symbols: [(spec: SymbolSpec, shard: Int)],
         log: @escaping @Sendable (String) -> Void,
         openSession: @escaping @Sendable () throws(EngineError) -> LocalSession,
         closeSession: @escaping @Sendable (LocalSession) -> Void) {
        self.openSession = openSession
        self.closeSession = closeSession
        self.instance = instance
        self.directory = directory
        self.engineFile = engineFile
        self.symbols = symbols
        self.log = log
        symbolIndex = Dictionary(symbols.enumerated().map { ($1.spec.name, $0) }, uniquingKeysWith: { first, _ in first })
    }
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

    // MARK: The host table

    /// The table every plugin gets; built once, never freed.
    nonisolated(unsafe) static let api: UnsafeMutablePointer<cb_host_api> = {
        let table = UnsafeMutablePointer<cb_host_api>.allocate(capacity: 1)
        table.initialize(to: cb_host_api())
        table.pointee.size = UInt32(MemoryLayout<cb_host_api>.size)
        table.pointee.abi_version = CB_PLUGIN_ABI_VERSION
        table.pointee.host_version = UnsafePointer(strdup("crossbook 0.5"))
        table.pointee.log = { host, level, message in
            guard let plugin = LoadedPlugin.from(host), let message else { return }
            let tag = ["debug", "info", "warning", "error"][Int(max(0, min(3, level)))]
            plugin.host?.environment.log("plugin \(plugin.name) [\(tag)]: \(String(cString: message))")
        }
        table.pointee.config_get = { host, key in
            guard let plugin = LoadedPlugin.from(host), let key else { return nil }
            return plugin.configValue(String(cString: key))
        }
        table.pointee.symbol_lookup = { host, name, out in
            guard let plugin = LoadedPlugin.from(host), let name, let out, out.pointee.size >= 16 else {
                return CB_ERR_INVALID.rawValue
            }
            return plugin.lookup(String(cString: name), into: out)
        }
        table.pointee.shard_count = { host in
            UInt32(LoadedPlugin.from(host)?.host?.environment.engineFile.shardCount ?? 0)
        }
        table.pointee.producer_open = { host, out in
            guard let plugin = LoadedPlugin.from(host), let out else { return CB_ERR_INVALID.rawValue }
            return plugin.openProducer(out)
        }
        table.pointee.producer_submit = { producer, command in
            guard let producer, let command else { return CB_ERR_INVALID.rawValue }
            return PluginProducer.from(producer).submit(UnsafeRawPointer(command))
        }
        table.pointee.producer_poll = { producer, out, capacity in
            guard let producer, let out, capacity >= 0 else { return CB_ERR_INVALID.rawValue }
            return PluginProducer.from(producer).poll(UnsafeMutableRawPointer(out), capacity: Int(capacity))
        }
        table.pointee.producer_close = { producer in
            guard let producer else { return }
            PluginProducer.from(producer).close()
        }
        table.pointee.subscribe = { host, shard, out in
            guard let plugin = LoadedPlugin.from(host), let out else { return CB_ERR_INVALID.rawValue }
            return plugin.subscribe(shard: Int(shard), out)
        }
        table.pointee.subscription_poll = { subscription, out, capacity in
            guard let subscription, let out, capacity >= 0 else { return CB_ERR_INVALID.rawValue }
            return PluginSubscription.from(subscription).poll(UnsafeMutableRawPointer(out), capacity: Int(capacity))
        }
        table.pointee.subscription_close = { subscription in
            guard let subscription else { return }
            PluginSubscription.from(subscription).close()
        }
        table.pointee.metrics_read = { host, visit, context in
            guard let plugin = LoadedPlugin.from(host), let visit, let environment = plugin.host?.environment else {
                return CB_ERR_INVALID.rawValue
            }
            EngineMetrics.collect(environment.engineFile).visit(visit, context)
            return CB_OK.rawValue
        }
        table.pointee.counter_register = { host, name, help, type, slot in
            guard let plugin = LoadedPlugin.from(host), let name, let slot, type <= 1 else { return CB_ERR_INVALID.rawValue }
            let text = String(cString: name)
            guard !text.isEmpty, text.utf8.count < 80,
                  text.utf8.allSatisfy({ ($0 >= 97 && $0 <= 122) || ($0 >= 48 && $0 <= 57) || $0 == 95 }) else {
                plugin.host?.environment.log("plugin \(plugin.name): counter name '\(text)' refused: [a-z0-9_], under 80 bytes")
                return CB_ERR_INVALID.rawValue
            }
            guard let word = plugin.host?.environment.engineFile.claimPluginCounter(name: text, plugin: plugin.slot,
                                                                                     isGauge: type == 1) else {
                return CB_ERR_LIMIT.rawValue
            }
            slot.pointee = word
            return CB_OK.rawValue
        }
        table.pointee.snapshot_store_register = { host, store in
            guard let plugin = LoadedPlugin.from(host), let store, store.pointee.size >= UInt32(MemoryLayout<cb_snapshot_store>.size),
                  store.pointee.save != nil, store.pointee.list != nil, store.pointee.load != nil else {
                return CB_ERR_INVALID.rawValue
            }
            return plugin.host?.registerSnapshotStore(store.pointee, plugin: plugin) ?? CB_ERR_INVALID.rawValue
        }
        table.pointee.monotonic_ns = { _ in monotonicNanoseconds() }
        return table
    }()
}

/// The text a plugin wrote into a message buffer (NUL-terminated, or the whole buffer).
func messageText(_ buffer: [CChar]) -> String {
    String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
}

func statusName(_ rc: Int32) -> String {
    switch rc {
    case CB_OK.rawValue: "CB_OK"
    case CB_ERR_INVALID.rawValue: "CB_ERR_INVALID"
    case CB_ERR_UNKNOWN_SYMBOL.rawValue: "CB_ERR_UNKNOWN_SYMBOL"
    case CB_ERR_FULL.rawValue: "CB_ERR_FULL"
    case CB_ERR_CLOSED.rawValue: "CB_ERR_CLOSED"
    case CB_ERR_NOT_FOUND.rawValue: "CB_ERR_NOT_FOUND"
    case CB_ERR_LIMIT.rawValue: "CB_ERR_LIMIT"
    case CB_ERR_IO.rawValue: "CB_ERR_IO"
    case CB_ERR_UNSUPPORTED.rawValue: "CB_ERR_UNSUPPORTED"
    case CB_ERR_FAILED.rawValue: "CB_ERR_FAILED"
    default: "status \(rc)"
    }
}

/// One plugin, loaded. Its address is the `cb_host *` the plugin gets.
final class LoadedPlugin: @unchecked Sendable {
    let spec: PluginSpec
    let path: String
    let name: String
    let version: String
    let descriptor: cb_plugin
    weak var host: PluginHost?
    var slot = -1
    var state: PluginStatus.State = .loaded
    var health: UInt32 = 0
    var healthMessage = ""
    var instance: UnsafeMutableRawPointer?
    var starting = false
    /// Config values as C strings, alive as long as the plugin (the engine's lifetime).
    private var config: [String: UnsafeMutablePointer<CChar>] = [:]
    private var symbolNames: [String: UnsafeMutablePointer<CChar>] = [:]
    private var producers: [PluginProducer] = []
    private var subscriptions: [PluginSubscription] = []
    private let lock = Lock()

    init(spec: PluginSpec, path: String, name: String, version: String, descriptor: cb_plugin,
         config: [String: String], host: PluginHost) {
        self.spec = spec
        self.path = path
        self.name = name
        self.version = version
        self.descriptor = descriptor
        self.host = host
        for (k, v) in config { self.config[k] = strdup(v) }
    }

    var isSnapshotStore: Bool { descriptor.kinds & UInt32(CB_KIND_SNAPSHOT_STORE) != 0 }

    var handle: OpaquePointer { OpaquePointer(Unmanaged.passUnretained(self).toOpaque()) }

    static func from(_ host: OpaquePointer?) -> LoadedPlugin? {
        guard let host else { return nil }
        return Unmanaged<LoadedPlugin>.fromOpaque(UnsafeRawPointer(host)).takeUnretainedValue()
    }

    func configValue(_ key: String) -> UnsafePointer<CChar>? { config[key].map { UnsafePointer($0) } }

    func lookup(_ symbol: String, into out: UnsafeMutablePointer<cb_symbol>) -> Int32 {
        guard let environment = host?.environment,
              let entry = environment.symbolIndex[symbol].map({ environment.symbols[$0] }) else {
            return CB_ERR_UNKNOWN_SYMBOL.rawValue
        }
        let name = lock.locked {
            if let known = symbolNames[symbol] { return known }
            let copy = strdup(symbol)!
            symbolNames[symbol] = copy
            return copy
        }
        var value = cb_symbol()
        value.size = UInt32(MemoryLayout<cb_symbol>.size)
        value.id = entry.spec.id
        value.shard = UInt32(entry.shard)
        value.name = UnsafePointer(name)
        value.tick_size = entry.spec.tickSize
        value.lot_size = entry.spec.lotSize
        value.min_price = entry.spec.minPrice
        value.max_price = entry.spec.maxPrice
        value.max_order_quantity = entry.spec.maxOrderQuantity
        // Write no more than the caller's struct holds.
        let count = min(Int(out.pointee.size), MemoryLayout<cb_symbol>.size)
        withUnsafeBytes(of: &value) { UnsafeMutableRawPointer(out).copyMemory(from: $0.baseAddress!, byteCount: count) }
        out.pointee.size = UInt32(count)
        return CB_OK.rawValue
    }

    func openProducer(_ out: UnsafeMutablePointer<OpaquePointer?>) -> Int32 {
        guard let environment = host?.environment else { return CB_ERR_CLOSED.rawValue }
        guard !isSnapshotStore else {
            environment.log("plugin \(name): a snapshot store starts before the engine serves: it cannot open producers")
            return CB_ERR_UNSUPPORTED.rawValue
        }
        do {
            let session = try environment.openSession()
            let producer = PluginProducer(session: session, symbols: environment.symbols, close: environment.closeSession)
            lock.locked { producers.append(producer) }
            out.pointee = producer.handle
            return CB_OK.rawValue
        } catch {
            environment.log("plugin \(name): cannot open a producer: \(error)")
            return CB_ERR_CLOSED.rawValue
        }
    }

    func subscribe(shard: Int, _ out: UnsafeMutablePointer<OpaquePointer?>) -> Int32 {
        guard let environment = host?.environment else { return CB_ERR_CLOSED.rawValue }
        guard shard >= 0, shard < environment.engineFile.shardCount else { return CB_ERR_INVALID.rawValue }
        do {
            let ring = try EventRing.attach(path: InstanceLayout.eventRingPath(environment.directory, shard: shard))
            let consumer = try ring.consumer(mayDetach: true)
            let subscription = PluginSubscription(consumer: consumer)
            lock.locked { subscriptions.append(subscription) }
            out.pointee = subscription.handle
            return CB_OK.rawValue
        } catch EventConsumerError.full {
            return CB_ERR_LIMIT.rawValue
        } catch {
            environment.log("plugin \(name): cannot subscribe to shard \(shard): \(error)")
            return CB_ERR_IO.rawValue
        }
    }

    /// After stop: whatever the plugin left open is closed.
    func closeAll() {
        let (p, s) = lock.locked { (producers, subscriptions) }
        for producer in p { producer.close() }
        for subscription in s { subscription.close() }
    }
}

/// A plugin's producer: a session of the engine's own (LocalSession), with rings to every shard.
final class PluginProducer: @unchecked Sendable {
    let session: LocalSession
    /// Symbol id → shard, dense.
    let shardOf: [Int32]
    private let closeSession: @Sendable (LocalSession) -> Void

    init(session: LocalSession, symbols: [(spec: SymbolSpec, shard: Int)], close: @escaping @Sendable (LocalSession) -> Void) {
        self.session = session
        closeSession = close
        let maxId = Int(symbols.map(\.spec.id).max() ?? 0)
        var table = [Int32](repeating: -1, count: maxId + 1)
        for (spec, shard) in symbols { table[Int(spec.id)] = Int32(shard) }
        shardOf = table
    }

    var handle: OpaquePointer { OpaquePointer(Unmanaged.passUnretained(self).toOpaque()) }

    static func from(_ p: OpaquePointer) -> PluginProducer {
        Unmanaged<PluginProducer>.fromOpaque(UnsafeRawPointer(p)).takeUnretainedValue()
    }

    func submit(_ record: UnsafeRawPointer) -> Int32 {
        guard session.isOpen else { return CB_ERR_CLOSED.rawValue }
        let symbol = Int(UInt32(littleEndian: record.loadUnaligned(fromByteOffset: 8, as: UInt32.self)))
        guard symbol < shardOf.count, shardOf[symbol] >= 0 else { return CB_ERR_UNKNOWN_SYMBOL.rawValue }
        return session.submit(record, shard: Int(shardOf[symbol])) ? CB_OK.rawValue : CB_ERR_FULL.rawValue
    }

    func poll(_ out: UnsafeMutableRawPointer, capacity: Int) -> Int32 {
        if session.closed { return CB_ERR_CLOSED.rawValue }
        do {
            return Int32(try session.poll(into: out, capacity: min(capacity, Int(Int32.max))))
        } catch {
            return CB_ERR_CLOSED.rawValue
        }
    }

    func close() {
        guard !session.closed else { return }
        closeSession(session)
    }
}

/// A plugin's consumer of one shard's event ring.
final class PluginSubscription: @unchecked Sendable {
    let consumer: EventConsumer
    var closed = false

    init(consumer: EventConsumer) { self.consumer = consumer }

    var handle: OpaquePointer { OpaquePointer(Unmanaged.passUnretained(self).toOpaque()) }

    static func from(_ p: OpaquePointer) -> PluginSubscription {
        Unmanaged<PluginSubscription>.fromOpaque(UnsafeRawPointer(p)).takeUnretainedValue()
    }

    func poll(_ out: UnsafeMutableRawPointer, capacity: Int) -> Int32 {
        if closed { return CB_ERR_CLOSED.rawValue }
        do {
            let n = min(try consumer.poll(), capacity)
            for k in 0..<n { (out + k * 64).copyMemory(from: consumer.slot(k), byteCount: 64) }
            if n > 0 { consumer.release(n) }
            return Int32(n)
        } catch {
            return CB_ERR_CLOSED.rawValue
        }
    }

    func close() {
        guard !closed else { return }
        closed = true
        consumer.close()
    }
}

/// A snapshot store a plugin registered, seen by the engine as any SnapshotStore.
final class PluginSnapshotStore: SnapshotStore, @unchecked Sendable {
    let store: cb_snapshot_store
    let plugin: String

    init(store: cb_snapshot_store, plugin: String) {
        self.store = store
        self.plugin = plugin
    }

    func save(shard: Int, sequence: UInt64, body: [UInt8]) throws(JournalError) {
        var error = [CChar](repeating: 0, count: 256)
        let rc = body.withUnsafeBufferPointer { b in
            store.save(store.context, UInt32(shard), sequence, b.baseAddress, b.count, &error, error.count)
        }
        guard rc == 0 else {
            throw .snapshotStore(plugin: plugin, status: statusName(rc), message: messageText(error))
        }
    }

    final class Box<T> {
        var value: T
        init(_ value: T) { self.value = value }
    }

    func list(shard: Int) -> [(sequence: UInt64, name: String)] {
        let found = Box<[(sequence: UInt64, name: String)]>([])
        let context = Unmanaged.passUnretained(found).toOpaque()
        _ = store.list(store.context, UInt32(shard), { context, sequence, name in
            guard let context, let name else { return }
            let box = Unmanaged<Box<[(sequence: UInt64, name: String)]>>.fromOpaque(context).takeUnretainedValue()
            box.value.append((sequence, String(cString: name)))
        }, context)
        return found.value.sorted { $0.sequence > $1.sequence }
    }

    func load(shard: Int, name: String) throws(JournalError) -> (sequence: UInt64, body: [UInt8]) {
        let body = Box<[UInt8]>([])
        var sequence: UInt64 = 0
        var error = [CChar](repeating: 0, count: 256)
        let context = Unmanaged.passUnretained(body).toOpaque()
        let rc = store.load(store.context, UInt32(shard), name, &sequence, { context, bytes, length in
            guard let context else { return }
            let box = Unmanaged<Box<[UInt8]>>.fromOpaque(context).takeUnretainedValue()
            box.value = length > 0 && bytes != nil ? Array(UnsafeBufferPointer(start: bytes, count: length)) : []
        }, context, &error, error.count)
        guard rc == 0 else {
            throw .badSegment(path: name, "plugin \(plugin): \(statusName(rc)): \(messageText(error))")
        }
        return (sequence, body.value)
    }
}
