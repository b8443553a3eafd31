// `crossbook run`: the engine process. `crossbook stat`: its counters, live, from outside.
import ArgumentParser
import CrossbookConfig
import Engine
import Foundation
import Glibc
import Logging
import OrderBook
import SharedMemory

/// The symbols of the embedded default configuration.
let defaultSymbols = ["BTC-USD", "ETH-USD", "SOL-USD", "XRP-USD"]

/// The plugins of the embedded default configuration (and of a config without [plugins]): the
/// file snapshot store, and Prometheus metrics on 127.0.0.1:9464 (optional: a second engine on
/// the same host finds the port taken, logs it and runs without).
let defaultPlugins = [
    PluginSpec(name: "snapshot-file"),
    PluginSpec(name: "metrics-prometheus", optional: true, config: ["listen": "127.0.0.1:9464"]),
]

extension EngineConfig {
    /// Engine settings from this config; without [[shards]], one shard pinned to the last CPU.
    func engineSettings(instance override: String?, directory overrideDirectory: String?, pin: Bool,
                        cleanStale: Bool, dataDirectory overrideData: String? = nil,
                        durability overrideDurability: String? = nil) throws -> EngineSettings {
        let name = override ?? instance
        var cores = shardCores
        if cores.isEmpty {
            let cpus = Int(sysconf(Int32(_SC_NPROCESSORS_ONLN)))
            cores = [max(0, cpus - 1)]
        }
        if !pin { cores = cores.map { _ in nil } }
        var specs = symbols.symbols
        if specs.isEmpty {
            specs = defaultSymbols.enumerated().map { SymbolSpec(name: $1, id: UInt32($0 + 1)) }
        }
        var gid: gid_t?
        if let group {
            guard let entry = getgrnam(group) else { throw CLIError("group '\(group)' does not exist") }
            gid = entry.pointee.gr_gid
        }
        var settings = EngineSettings(
            instance: name, directory: overrideDirectory ?? directory, group: gid,
            shards: cores.enumerated().map { ShardSettings(core: $1, pools: $0 < shardPools.count ? shardPools[$0] : nil) },
            symbols: specs.map { (spec: $0, shard: symbolShards[$0.name] ?? 0) },
            capacity: capacity, lagTimeoutNanoseconds: UInt64(lagTimeoutMilliseconds) * 1_000_000,
            cleanStale: cleanStale)
        let mode = overrideDurability ?? durability ?? "sync"
        guard let chosen = Durability(rawValue: mode) else { throw CLIError("durability must be sync, async or none, not '\(mode)'") }
        settings.durability = chosen
        settings.dataDirectory = overrideData ?? dataDirectory ?? "./data"
        settings.ioCores = ioCores
        settings.autoRebalance = autoRebalance
        settings.transferTimeout = Double(transferTimeoutSeconds ?? 10)
        // Sleeping in the kernel for the journal's completion beat spinning for it in D1 here
        // (bench/README.md, "Waiting for the disk"): the default.
        settings.wait.completionWaitNanoseconds = UInt64(completionWaitMicroseconds ?? 200) * 1000
        settings.wait.completionWakesOnDoorbell = completionWakesOnDoorbell ?? false
        if shardIdleSpins {
            settings.wait.spins = .max
            settings.wait.yields = 0
            settings.wait.park = false
        }
        if let mb = journalSegmentMegabytes { settings.journalSegmentSize = mb << 20 }
        settings.maxSymbols = maxSymbols
        settings.pruneJournal = pruneJournal
        settings.journalPrezero = journalPrezero
        settings.plugins = PluginSettings(directory: pluginDirectory ?? PluginSettings.defaultDirectory,
                                          load: plugins ?? defaultPlugins)
        settings.replication = replication
        return settings
    }

    static func load(_ path: String?) throws -> EngineConfig {
        guard let path else {
            var config = EngineConfig()
            config.capacity = BookCapacity(orders: 1 << 18, levels: 1 << 14)
            return config
        }
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else {
            throw CLIError("cannot read the config file \(path)")
        }
        do { return try EngineConfig(toml: text, source: path) } catch { throw CLIError("\(error)") }
    }
}

struct RunCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "run",
        abstract: "Run the engine: shards pinned to cores, orders from other processes through shared memory.",
        discussion: """
            Without --config: instance 'default', one shard pinned to the last CPU, symbols \
            \(defaultSymbols.joined(separator: ", ")) (tick 1, lot 1), 262,144 orders and 16,384 levels \
            per symbol, durability sync with journals in ./data, plugins snapshot-file and metrics-prometheus \
            (http://127.0.0.1:9464/metrics) from the executable's directory. At start each shard replays its \
            journal. SIGINT or SIGTERM drains every ring, stops, and removes the shared-memory files.
            """)

    @Option(help: "A TOML config ([engine], [[shards]], [book], [[symbols]], [plugins]).")
    var config: String?

    @Option(help: "Instance name (overrides CROSSBOOK_INSTANCE, which overrides the config).")
    var instance: String?

    @Option(help: "Directory for the shared-memory files (default /dev/shm/crossbook-<uid>/<instance>).")
    var directory: String?

    @Flag(help: "Remove the leftovers of a dead engine of this instance instead of refusing to start.")
    var cleanStale = false

    @Flag(help: "Do not pin shard threads (for machines where the cores are not yours).")
    var noPin = false

    @Option(help: "Where the journals live (default ./data, or [engine] data_dir).")
    var dataDir: String?

    @Option(help: "sync (reports only once the command is on disk; the default), async, or none.")
    var durability: String?

    @Option(help: "A snapshot of each shard every this many commands (0: never; default 1,000,000).")
    var snapshotEvery: UInt64 = 1_000_000

    @Flag(help: "Check the configuration and print what it needs (shards, symbols, memory), then exit without starting.")
    var checkConfig = false

    @Flag(help: "Load no plugin (no snapshots, no metrics endpoint).")
    var noPlugins = false

    @Option(help: "Where the plugin files are (overrides [plugins] dir).")
    var pluginDir: String?

    @Option(help: "The least severe log messages written: debug, info, warning or error.")
    var logLevel: String = "info"

    @Option(help: "Log lines as text or json (one object a line: time, level, message, instance).")
    var logFormat: String = "text"

    func validate() throws {
        guard Logger.Level(rawValue: logLevel) != nil, ["debug", "info", "warning", "error"].contains(logLevel) else {
            throw ValidationError("--log-level must be debug, info, warning or error, got '\(logLevel)'")
        }
        guard LogFormat(rawValue: logFormat) != nil else {
            throw ValidationError("--log-format must be text or json, got '\(logFormat)'")
        }
    }

    @Flag(help: "Run as a hot standby: follow the primary ([replication] peer, or --peer), take no orders until promoted.")
    var standby = false

    @Option(help: "The other engine's replication address host:port (overrides [replication] peer).")
    var peer: String?

    @Option(name: .customLong("replication-listen"), help: "Where this engine serves standbys, host:port (overrides [replication] listen).")
    var replicationListen: String?

    @Flag(help: "With --standby: move the data directory aside (to <dir>.diverged-<time>) and start from an empty journal, for an old primary whose journal the new primary refuses.")
    var rebuild = false

    func run() throws {
        var settings = try EngineConfig.load(config).engineSettings(
            instance: instance ?? environmentInstance, directory: directory, pin: !noPin, cleanStale: cleanStale, dataDirectory: dataDir,
            durability: durability)
        bootstrapLog(level: Logger.Level(rawValue: logLevel) ?? .info, format: LogFormat(rawValue: logFormat) ?? .text,
                     instance: settings.instance)
        settings.snapshotEvery = snapshotEvery
        if standby || peer != nil || replicationListen != nil {
            var r = settings.replication ?? ReplicationSettings()
            if standby { r.role = .standby }
            if let peer { r.peer = peer }
            if let replicationListen { r.listen = replicationListen }
            settings.replication = r
        }
        if rebuild {
            guard settings.replication?.role == .standby else { throw CLIError("--rebuild is for a standby (--standby)") }
            var info = stat()
            if stat(settings.dataDirectory, &info) == 0 {
                guard Engine.dataLockFree(settings.dataDirectory) else {
                    throw CLIError("--rebuild: \(settings.dataDirectory) is in use by a running engine")
                }
                let aside = settings.dataDirectory + ".diverged-\(Int(Date().timeIntervalSince1970))"
                guard rename(settings.dataDirectory, aside) == 0 else {
                    throw CLIError("--rebuild: cannot move \(settings.dataDirectory) to \(aside): \(String(cString: strerror(errno)))")
                }
                logLine("--rebuild: moved \(settings.dataDirectory) to \(aside); starting from an empty journal")
            }
        }
        if noPlugins { settings.plugins = nil }
        if let pluginDir { settings.plugins?.directory = pluginDir }
        if checkConfig {
            let memory = Engine.memoryNeeded(settings)
            let available = Engine.memoryAvailable()
            print("instance \(settings.instance): \(settings.shards.count) shard(s), \(settings.symbols.count) symbol(s), durability \(settings.durability.rawValue)")
            print("memory: \(memory.description)")
            if let available {
                print("available: \(available >> 20) MiB")
                if memory.total > available { throw CLIError("this configuration needs more memory than the host has available") }
            }
            return
        }
        // Signals go to one watcher thread's sigwait, never to a shard thread: block them before
        // any thread starts. A shell starts background jobs with SIGINT ignored, and an ignored
        // signal never reaches sigwait: restore the default first (blocked, it kills nothing).
        // SIGHUP, SIGUSR1 and SIGUSR2 would kill the engine without draining: they are logged
        // and ignored. SIGPIPE (a log reader gone) is ignored.
        let watched = [SIGINT, SIGTERM, SIGHUP, SIGUSR1, SIGUSR2]
        var signals = sigset_t()
        sigemptyset(&signals)
        for sig in watched {
            signal(sig, SIG_DFL)
            sigaddset(&signals, sig)
        }
        signal(SIGPIPE, SIG_IGN)
        pthread_sigmask(SIG_BLOCK, &signals, nil)

        let stopRequested = DispatchSemaphore(value: 0)
        let engine = Engine(settings: settings, log: { line in logLine(line) })
        // A planned switchover handed over to the standby: stop (once the answer is sent), then
        // start again as the new primary's standby.
        engine.onSwitchover = {
            Thread {
                usleep(200_000)
                stopRequested.signal()
            }.start()
        }
        // A stop may come at any moment, during a long recovery too: the watcher aborts the start.
        let watchedSet = signals
        let watcher = Thread {
            var set = watchedSet
            while true {
                var received: Int32 = 0
                guard sigwait(&set, &received) == 0 else { continue }
                if received == SIGINT || received == SIGTERM {
                    logLine("\(received == SIGINT ? "SIGINT" : "SIGTERM"): draining the rings and stopping")
                    engine.abortStarting()
                    stopRequested.signal()
                    return
                }
                logLine("\(signalName(received)): ignored (SIGINT or SIGTERM stops the engine)")
            }
        }
        watcher.name = "crossbook-signals"
        watcher.start()
        let placement: [String]
        do { placement = try engine.start() } catch {
            if engine.startAborted {
                logLine("stopped before serving: \(error)")
                return
            }
            throw CLIError("\(error)")
        }
        for line in placement { logLine(line) }
        logLine("engine '\(settings.instance)' running, pid \(getpid()), files in \(settings.directory); SIGINT or SIGTERM stops it")
        notifySystemd("READY=1\nSTATUS=engine '\(settings.instance)' serving\nMAINPID=\(getpid())")
        stopRequested.wait()
        notifySystemd("STOPPING=1\nSTATUS=draining the rings")
        engine.stop()
        logLine("stopped; shared-memory files removed")
        if engine.switchedOver || engine.restartsToInstall {
            // Follow the new primary (or install the primary's seeds, which the start does):
            // this process again, as the standby (same pid for systemd).
            var arguments = CommandLine.arguments.filter { $0 != "--rebuild" }
            if !arguments.contains("--standby") { arguments.append("--standby") }
            logLine("\(engine.switchedOver ? "switched over" : "seeded from the primary's snapshots or cut back to its journal"): starting again as the standby (\(arguments.dropFirst().joined(separator: " ")))")
            let argv = arguments.map { strdup($0) } + [nil]
            execv("/proc/self/exe", argv)
            throw CLIError("cannot start again as the standby: execv: \(String(cString: strerror(errno)))")
        }
    }
}

func signalName(_ sig: Int32) -> String {
    switch sig {
    case SIGHUP: "SIGHUP"
    case SIGUSR1: "SIGUSR1"
    case SIGUSR2: "SIGUSR2"
    default: "signal \(sig)"
    }
}
