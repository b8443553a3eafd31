// The configuration file (TOML): the symbol directory and the book capacity.
//
//   [engine]              # crossbook run only
//   instance = "default"  # shared memory in /dev/shm/crossbook-<uid>/<instance> unless directory = ...
//   group = "traders"     # optional: files 0660 for this group instead of 0600
//   lag_timeout_ms = 1000 # a client that reads no reports this long is detached
//   data_dir = "./data"   # journals (one set of segments per shard)
//   durability = "sync"   # sync (reports only once on disk), async, none
//   io_cores = [2, 3]     # where the journal's kernel workers run: cores no shard uses and
//                         # nothing spins on (default: not bound, on the shard's own core)
//   rebalance_busy_percent = 80  # automatic rebalance (off without it): a shard busy above
//   rebalance_after_s = 10       # this share of its time for this long moves one symbol off
//   rebalance_cooldown_s = 60    # it (crossbook rebalance's plan), then waits this long
//   transfer_timeout_s = 10      # a move to another engine its target has not claimed by then
//                                # is taken back by the source (Engine+Transfer.swift)
//   completion_wait_us = 200 # a shard waiting only for its journal batch: 0 spins, N sleeps in
//                          # the kernel up to N µs a time (the I/O worker may need the core)
//   completion_wakes_on_doorbell = false # with a kernel wait, a producer's ring wakes the
//                          # shard too (a futex wait in the journal's io_uring, kernel 6.7+)
//   shard_idle = "park"    # "spin": a shard with nothing to do never sleeps (pinned shards
//                          # with cores of their own: no wake-up on the next order)
//   journal_segment_mb = 64  # the size of each journal segment file
//   journal_prezero = false  # true: each next segment is written with zeros and synced ahead
//                            # of time by a thread of its own, so each fdatasync converts no
//                            # blocks (p99 14-22% lower on ext4 here; 64 MiB written a segment)
//   max_symbols = 1024     # room for symbols: the config's and those listed while it runs
//                          # (crossbook symbol add); default the config's and 256 more
//   prune_journal = false    # true: after each snapshot, remove the segments older than every
//                            # kept snapshot (a standby that needs them is seeded from a snapshot)
//
//   [[shards]]            # one per shard, in order; core omitted: not pinned
//   core = 1
//   orders = 1048576      # optional, with levels: one pool of resting orders and one of price
//   levels = 262144       # levels shared by the shard's books (thousands of mostly quiet
//                         # symbols); each book then holds at most [book] levels a side
//
//   [book]
//   orders = 65536        # resting orders a symbol can hold
//   levels = 4096         # price levels a symbol can hold, both sides
//
//   [[symbols]]
//   name = "BTC-USD"
//   tick_size = 1         # optional, default 1
//   lot_size = 1          # optional, default 1
//   min_price = 1         # optional: the price band
//   max_price = 10000000
//   max_order_quantity = 1000000
//   shard = 0             # crossbook run only: which shard owns it (default 0)
//
//   [replication]         # crossbook run only: hot standby (README, "Hot standby")
//   role = "primary"      # or "standby" (crossbook run --standby)
//   listen = "10.0.0.1:7400"   # where this engine serves standbys (as primary, or once promoted)
//   peer = "10.0.0.2:7400"     # the other engine's: the primary a standby follows
//   mode = "sync"         # sync: output once a standby has it durable too; async: lag counted
//   failover_after_ms = 500    # a standby promotes itself when an engaged primary is silent this long
//   digest_every_ms = 1000     # the primary's state digests, compared by the standby
//   lease = "crossbook-main"   # leadership as a lease (fencing): its key, taken through lease_plugin
//   lease_plugin = "redis-routing"  # default; its config names Redis (redis, user, password_file)
//   lease_ttl_ms = 2000        # a primary that cannot renew stops acknowledging before it expires
//   sync_standbys = 1          # sync: standbys that must confirm each record (2 standbys: 2 for RPO 0)
//   secret_file = "/etc/crossbook/replication.key"  # the pair's secret (32+ bytes, mode 600, same on
//                              # both): each proves it to the other, every frame is encrypted (AES-256-GCM);
//                              # read at each handshake: replace it to rotate, no restart
//   previous_secret_file = "/etc/crossbook/replication.key.old"  # while rotating: still accepted
//                              # (a path that does not exist: none)
//
//   [plugins]             # crossbook run only; without this section: the default plugins
//   dir = "/opt/crossbook/plugins"  # default: the directory of the crossbook executable
//   [[plugins.load]]      # one per plugin, started in this order, stopped in the reverse
//   name = "metrics-prometheus"
//   file = "libcrossbook-metrics-prometheus.so"  # default libcrossbook-<name>.so
//   optional = true       # if it cannot load or start: log and go on (default false)
//   config = { listen = "127.0.0.1:9464" }       # the plugin's own section

import CSync
import Engine
import Glibc
import OrderBook
import TOMLKit

public struct ConfigError: Error, CustomStringConvertible {
    public var description: String
}

public struct EngineConfig {
    public var symbols = SymbolDirectory()
    public var capacity = BookCapacity.small
    /// [engine]
    public var instance = "default"
    public var directory: String?
    public var group: String?
    public var lagTimeoutMilliseconds = 1000
    public var dataDirectory: String?
    public var durability: String?
    /// [engine] io_cores (nil: not bound).
    public var ioCores: [Int]?
    /// [engine] rebalance_*: the automatic rebalance (nil: off).
    public var autoRebalance: AutoRebalance?
    /// [engine] completion_wait_us: how a shard waits for its journal batch (0: spinning).
    public var completionWaitMicroseconds: Int?
    /// [engine] transfer_timeout_s: a move to another engine not claimed by then is taken back.
    public var transferTimeoutSeconds: Int?
    /// [engine] completion_wakes_on_doorbell: a shard sleeping for its journal also wakes on a
    /// producer's doorbell (a futex wait in the journal's io_uring). nil: the default.
    public var completionWakesOnDoorbell: Bool?
    /// [engine] shard_idle: "park" (default: a shard with nothing to do spins a while, then
    /// sleeps until a producer rings) or "spin" (it never sleeps: for shards pinned to cores of
    /// their own, where a wake-up costs more than the core).
    public var shardIdleSpins = false
    /// [engine] journal_segment_mb: the size of each journal segment file (nil: 64 MiB).
    public var journalSegmentMegabytes: Int?
    /// [engine] max_symbols: room for symbols, the config's and those listed at run time.
    public var maxSymbols: Int?
    /// [engine] prune_journal: remove segments older than every kept snapshot (default false).
    public var pruneJournal = false
    /// [engine] journal_prezero: make each next segment ahead of time, zeros written and synced
    /// (default false: fallocate at rollover).
    public var journalPrezero = false
    /// [[shards]]: the core of each shard (nil: not pinned).
    public var shardCores: [Int?] = []
    /// [[shards]] orders, levels: the pools each shard's books share (nil: a book's own).
    public var shardPools: [BookCapacity?] = []
    /// The shard of each declared symbol, by name (default 0).
    public var symbolShards: [String: Int] = [:]
    /// [replication]: nil without the section.
    public var replication: ReplicationSettings?
    /// [plugins]: nil without the section (the defaults load).
    public var pluginDirectory: String?
    public var plugins: [PluginSpec]?

    public init() {}

    public init(toml text: String, source: String) throws {
        try Self.checkTableHeaders(text, source: source)
        guard Self.parsesWithoutCrashing(text) else {
            throw ConfigError(description: "\(source): the TOML parser cannot read this file (it stopped on it): check its syntax")
        }
        let table: TOMLTable
        do {
            table = try TOMLTable(string: text)
        } catch let error as TOMLParseError {
            throw ConfigError(description: "\(source):\(error.source.begin.line): \(error.description)")
        }
        for key in table.keys where !["book", "symbols", "engine", "shards", "plugins", "replication"].contains(key) {
            throw ConfigError(description: "\(source): unknown section '\(key)' (expected [engine], [[shards]], [book], [[symbols]], [replication] or [plugins])")
        }
        if let section = table["plugins"] {
            guard let section = section.table else { throw ConfigError(description: "\(source): [plugins] must be a table") }
            for key in section.keys where key != "dir" && key != "load" {
                throw ConfigError(description: "\(source): [plugins]: unknown key '\(key)' (expected dir, load)")
            }
            if let v = section["dir"] {
                guard let dir = v.string else { throw ConfigError(description: "\(source): [plugins]: dir must be a string") }
                pluginDirectory = dir
            }
            var specs: [PluginSpec] = []
            if let list = section["load"] {
                guard let list = list.array else {
                    throw ConfigError(description: "\(source): plugins.load must be an array of tables ([[plugins.load]])")
                }
                for (index, item) in list.enumerated() {
                    let place = "[[plugins.load]] #\(index + 1)"
                    guard let entry = item.table else { throw ConfigError(description: "\(source): \(place) must be a table") }
                    for key in entry.keys where !["name", "file", "optional", "config"].contains(key) {
                        throw ConfigError(description: "\(source): \(place): unknown key '\(key)' (expected name, file, optional, config)")
                    }
                    guard let name = entry["name"]?.string, !name.isEmpty,
                          name.utf8.allSatisfy({ ($0 >= 97 && $0 <= 122) || ($0 >= 48 && $0 <= 57) || $0 == 45 || $0 == 95 })
                    else {
                        throw ConfigError(description: "\(source): \(place): name (a string of a-z, 0-9, '-', '_') is required")
                    }
                    guard !specs.contains(where: { $0.name == name }) else {
                        throw ConfigError(description: "\(source): \(place): plugin \(name) is named twice")
                    }
                    var spec = PluginSpec(name: name)
                    if let v = entry["file"] {
                        guard let file = v.string, !file.isEmpty else {
                            throw ConfigError(description: "\(source): \(place): file must be a string")
                        }
                        spec.file = file
                    }
                    if let v = entry["optional"] {
                        guard let optional = v.bool else { throw ConfigError(description: "\(source): \(place): optional must be true or false") }
                        spec.optional = optional
                    }
                    if let v = entry["config"] {
                        guard let config = v.table else {
                            throw ConfigError(description: "\(source): \(place): config must be a table, e.g. config = { path = \"orders.csv\" }")
                        }
                        for key in config.keys {
                            let value = config[key]!
                            if let text = value.string { spec.config[key] = text }
                            else if let int = value.int { spec.config[key] = String(int) }
                            else if let bool = value.bool { spec.config[key] = String(bool) }
                            else if let double = value.double { spec.config[key] = String(double) }
                            else if let array = value.array {
                                // An array of scalars comes back from config_get as one text,
                                // its items joined by commas: ["a", "b"] is "a,b", [1, 2] is "1,2".
                                var items: [String] = []
                                for item in array {
                                    if let text = item.string { items.append(text) }
                                    else if let int = item.int { items.append(String(int)) }
                                    else if let bool = item.bool { items.append(String(bool)) }
                                    else if let double = item.double { items.append(String(double)) }
                                    else {
                                        throw ConfigError(description: "\(source): \(place): config.\(key): an array of strings, numbers or booleans (nothing nested)")
                                    }
                                }
                                spec.config[key] = items.joined(separator: ",")
                            } else {
                                throw ConfigError(description: "\(source): \(place): config.\(key): give a string, number, boolean or an array of them")
                            }
                        }
                    }
                    specs.append(spec)
                }
            }
            plugins = specs
        }
        if let section = table["replication"] {
            guard let section = section.table else { throw ConfigError(description: "\(source): [replication] must be a table") }
            let keys = ["role", "listen", "peer", "mode", "failover_after_ms", "digest_every_ms", "lease", "lease_plugin", "lease_ttl_ms", "sync_standbys", "secret_file", "previous_secret_file"]
            for key in ["lease_user", "lease_password_file"] where section[key] != nil {
                throw ConfigError(description: "\(source): [replication]: \(key) is gone: the lease is taken through a plugin, whose config has the Redis AUTH (redis-routing: user, password_file)")
            }
            for key in section.keys where !keys.contains(key) {
                throw ConfigError(description: "\(source): [replication]: unknown key '\(key)' (expected \(keys.joined(separator: ", ")))")
            }
            var r = ReplicationSettings()
            if let v = section["role"] {
                guard let text = v.string, let role = ReplicationSettings.Role(rawValue: text) else {
                    throw ConfigError(description: "\(source): [replication]: role must be \"primary\" or \"standby\"")
                }
                r.role = role
            }
            if let v = section["mode"] {
                guard let text = v.string, let mode = ReplicationMode(rawValue: text) else {
                    throw ConfigError(description: "\(source): [replication]: mode must be \"sync\" or \"async\"")
                }
                r.mode = mode
            }
            for key in ["listen", "peer"] {
                guard let v = section[key] else { continue }
                guard let text = v.string, let colon = text.lastIndex(of: ":"), let port = Int(text[text.index(after: colon)...]),
                      port > 0, port < 65536 else {
                    throw ConfigError(description: "\(source): [replication]: \(key) must be \"host:port\"")
                }
                if key == "listen" { r.listen = text } else { r.peer = text }
            }
            if let ms = try Self.int(section, "failover_after_ms", in: "[replication]", source: source) {
                guard ms >= 100, ms <= 600_000 else {
                    throw ConfigError(description: "\(source): [replication]: failover_after_ms must be between 100 and 600000, got \(ms)")
                }
                r.failoverAfterMilliseconds = ms
            }
            if let ms = try Self.int(section, "digest_every_ms", in: "[replication]", source: source) {
                guard ms >= 0, ms <= 3_600_000 else {
                    throw ConfigError(description: "\(source): [replication]: digest_every_ms must be between 0 (never) and 3600000, got \(ms)")
                }
                r.digestEveryMilliseconds = ms
            }
            if let v = section["lease"] {
                guard let text = v.string else {
                    throw ConfigError(description: "\(source): [replication]: lease must be a string, the lease's key")
                }
                if text.hasPrefix("redis://") {
                    throw ConfigError(description: "\(source): [replication]: lease = \"\(text)\": the lease is taken through a plugin now: give the key alone (lease = \"crossbook-main\"); the Redis address, user and password_file go in redis-routing's config (lease_plugin = \"redis-routing\", the default)")
                }
                guard !text.isEmpty, text.utf8.count <= 200, text.utf8.allSatisfy({ $0 > 32 && $0 < 127 }) else {
                    throw ConfigError(description: "\(source): [replication]: lease: the key must be 1 to 200 printable characters without spaces")
                }
                r.lease = text
            }
            /// A key whose value must be a non-empty string (`what` says what it names).
            func text(_ key: String, _ what: String) throws(ConfigError) -> String? {
                guard let v = section[key] else { return nil }
                guard let text = v.string, !text.isEmpty else {
                    throw ConfigError(description: "\(source): [replication]: \(key) must be \(what)")
                }
                return text
            }
            if let name = try text("lease_plugin", "a plugin's name") { r.leasePlugin = name }
            if let ms = try Self.int(section, "lease_ttl_ms", in: "[replication]", source: source) {
                guard ms >= 200, ms <= 60_000 else {
                    throw ConfigError(description: "\(source): [replication]: lease_ttl_ms must be between 200 and 60000, got \(ms)")
                }
                r.leaseTtlMilliseconds = ms
            }
            if let n = try Self.int(section, "sync_standbys", in: "[replication]", source: source) {
                guard n >= 1, n <= 8 else {
                    throw ConfigError(description: "\(source): [replication]: sync_standbys must be between 1 and 8, got \(n)")
                }
                r.syncStandbys = n
            }
            r.secretFile = try text("secret_file", "a file's path (the pair's secret, mode 600)")
            r.previousSecretFile = try text("previous_secret_file", "a file's path (the secret being replaced, mode 600)")
            replication = r
        }
        if let engine = table["engine"] {
            guard let engine = engine.table else { throw ConfigError(description: "\(source): [engine] must be a table") }
            let engineKeys = ["instance", "directory", "group", "lag_timeout_ms", "data_dir", "durability", "io_cores",
                              "rebalance_busy_percent", "rebalance_after_s", "rebalance_cooldown_s", "completion_wait_us",
                              "journal_segment_mb", "journal_prezero", "prune_journal", "completion_wakes_on_doorbell", "shard_idle", "max_symbols",
                              "transfer_timeout_s"]
            for key in engine.keys where !engineKeys.contains(key) {
                throw ConfigError(description: "\(source): [engine]: unknown key '\(key)' (expected \(engineKeys.joined(separator: ", ")))")
            }
            let busy = try Self.int(engine, "rebalance_busy_percent", in: "[engine]", source: source)
            let after = try Self.int(engine, "rebalance_after_s", in: "[engine]", source: source)
            if let t = try Self.int(engine, "transfer_timeout_s", in: "[engine]", source: source) {
                guard t >= 1, t <= 3600 else {
                    throw ConfigError(description: "\(source): [engine]: transfer_timeout_s must be 1 to 3600, got \(t)")
                }
                transferTimeoutSeconds = t
            }
            if let wait = try Self.int(engine, "completion_wait_us", in: "[engine]", source: source) {
                guard wait >= 0, wait <= 10_000 else {
                    throw ConfigError(description: "\(source): [engine]: completion_wait_us must be 0 (spin) to 10000, got \(wait)")
                }
                completionWaitMicroseconds = wait
            }
            if let mb = try Self.int(engine, "journal_segment_mb", in: "[engine]", source: source) {
                guard mb >= 1, mb <= 4096 else {
                    throw ConfigError(description: "\(source): [engine]: journal_segment_mb must be between 1 and 4096, got \(mb)")
                }
                journalSegmentMegabytes = mb
            }
            if let n = try Self.int(engine, "max_symbols", in: "[engine]", source: source) {
                guard n >= 1, n <= 65536 else {
                    throw ConfigError(description: "\(source): [engine]: max_symbols must be between 1 and 65536, got \(n)")
                }
                maxSymbols = n
            }
            if let v = engine["shard_idle"] {
                guard let mode = v.string, ["park", "spin"].contains(mode) else {
                    throw ConfigError(description: "\(source): [engine]: shard_idle must be \"park\" or \"spin\"")
                }
                shardIdleSpins = mode == "spin"
            }
            if let v = engine["completion_wakes_on_doorbell"] {
                guard let flag = v.bool else { throw ConfigError(description: "\(source): [engine]: completion_wakes_on_doorbell must be true or false") }
                completionWakesOnDoorbell = flag
            }
            if let v = engine["prune_journal"] {
                guard let flag = v.bool else { throw ConfigError(description: "\(source): [engine]: prune_journal must be true or false") }
                pruneJournal = flag
            }
            if let v = engine["journal_prezero"] {
                guard let flag = v.bool else { throw ConfigError(description: "\(source): [engine]: journal_prezero must be true or false") }
                journalPrezero = flag
            }
            let cooldown = try Self.int(engine, "rebalance_cooldown_s", in: "[engine]", source: source)
            if let busy {
                guard busy >= 1, busy <= 100 else { throw ConfigError(description: "\(source): [engine]: rebalance_busy_percent must be between 1 and 100, got \(busy)") }
                guard (after ?? 10) >= 1, (after ?? 10) <= 3600 else { throw ConfigError(description: "\(source): [engine]: rebalance_after_s must be between 1 and 3600") }
                guard (cooldown ?? 60) >= 0, (cooldown ?? 60) <= 86400 else { throw ConfigError(description: "\(source): [engine]: rebalance_cooldown_s must be between 0 and 86400") }
                autoRebalance = AutoRebalance(busyPercent: Double(busy), afterSeconds: Double(after ?? 10), cooldownSeconds: Double(cooldown ?? 60))
            } else if after != nil || cooldown != nil {
                throw ConfigError(description: "\(source): [engine]: rebalance_after_s and rebalance_cooldown_s need rebalance_busy_percent (the automatic rebalance is off without it)")
            }
            if let v = engine["io_cores"] {
                guard let list = v.array else { throw ConfigError(description: "\(source): [engine]: io_cores must be an array of core numbers") }
                var cores: [Int] = []
                for item in list {
                    guard let core = item.int, core >= 0, core <= 65535 else {
                        throw ConfigError(description: "\(source): [engine]: io_cores must hold core numbers between 0 and 65535")
                    }
                    cores.append(core)
                }
                guard cores.count <= 1024, Set(cores).count == cores.count else {
                    throw ConfigError(description: "\(source): [engine]: io_cores names a core twice (or more than 1024 cores)")
                }
                ioCores = cores
            }
            if let v = engine["data_dir"] {
                guard let dir = v.string else { throw ConfigError(description: "\(source): [engine]: data_dir must be a string") }
                dataDirectory = dir
            }
            if let v = engine["durability"] {
                guard let mode = v.string, ["sync", "async", "none"].contains(mode) else {
                    throw ConfigError(description: "\(source): [engine]: durability must be \"sync\", \"async\" or \"none\"")
                }
                durability = mode
            }
            if let v = engine["instance"] {
                guard let name = v.string else { throw ConfigError(description: "\(source): [engine]: instance must be a string") }
                instance = name
            }
            if let v = engine["directory"] {
                guard let dir = v.string else { throw ConfigError(description: "\(source): [engine]: directory must be a string") }
                directory = dir
            }
            if let v = engine["group"] {
                guard let g = v.string else { throw ConfigError(description: "\(source): [engine]: group must be a string") }
                group = g
            }
            lagTimeoutMilliseconds = try Self.int(engine, "lag_timeout_ms", in: "[engine]", source: source) ?? lagTimeoutMilliseconds
            guard lagTimeoutMilliseconds >= 1, lagTimeoutMilliseconds <= 3_600_000 else {
                throw ConfigError(description: "\(source): [engine]: lag_timeout_ms must be between 1 and 3600000 (an hour), got \(lagTimeoutMilliseconds)")
            }
        }
        if let list = table["shards"] {
            guard let list = list.array else { throw ConfigError(description: "\(source): shards must be an array of tables ([[shards]])") }
            for (index, item) in list.enumerated() {
                guard let entry = item.table else { throw ConfigError(description: "\(source): [[shards]] #\(index + 1) must be a table") }
                for key in entry.keys where !["core", "orders", "levels"].contains(key) {
                    throw ConfigError(description: "\(source): [[shards]] #\(index + 1): unknown key '\(key)' (expected core, orders, levels)")
                }
                let core = try Self.int(entry, "core", in: "[[shards]] #\(index + 1)", source: source)
                if let core, core < 0 || core > 65535 {
                    throw ConfigError(description: "\(source): [[shards]] #\(index + 1): core must be between 0 and 65535, got \(core)")
                }
                shardCores.append(core)
                let orders = try Self.int(entry, "orders", in: "[[shards]] #\(index + 1)", source: source)
                let levels = try Self.int(entry, "levels", in: "[[shards]] #\(index + 1)", source: source)
                switch (orders, levels) {
                case (nil, nil):
                    shardPools.append(nil)
                case let (orders?, levels?):
                    guard orders >= 1, orders < 1 << 28 else {
                        throw ConfigError(description: "\(source): [[shards]] #\(index + 1): orders must be between 1 and \(1 << 28 - 1), got \(orders)")
                    }
                    guard levels >= 2, levels < 1 << 28 else {
                        throw ConfigError(description: "\(source): [[shards]] #\(index + 1): levels must be between 2 and \(1 << 28 - 1), got \(levels)")
                    }
                    shardPools.append(BookCapacity(orders: orders, levels: levels))
                default:
                    throw ConfigError(description: "\(source): [[shards]] #\(index + 1): orders and levels go together (the shard's shared pools)")
                }
            }
        }
        if let book = table["book"] {
            guard let book = book.table else { throw ConfigError(description: "\(source): [book] must be a table") }
            for key in book.keys where key != "orders" && key != "levels" {
                throw ConfigError(description: "\(source): [book]: unknown key '\(key)' (expected orders, levels)")
            }
            capacity.orders = try Self.int(book, "orders", in: "[book]", source: source) ?? capacity.orders
            capacity.levels = try Self.int(book, "levels", in: "[book]", source: source) ?? capacity.levels
        }
        for (index, pools) in shardPools.enumerated() {
            if let pools, pools.levels < capacity.levels {
                throw ConfigError(description: "\(source): [[shards]] #\(index + 1): pools of \(pools.levels) levels, fewer than a book's [book] levels \(capacity.levels)")
            }
        }
        if let list = table["symbols"] {
            guard let list = list.array else {
                throw ConfigError(description: "\(source): symbols must be an array of tables ([[symbols]])")
            }
            let known: Set = ["name", "id", "tick_size", "lot_size", "min_price", "max_price", "max_order_quantity", "shard"]
            for (index, item) in list.enumerated() {
                let place = "[[symbols]] #\(index + 1)"
                guard let entry = item.table else { throw ConfigError(description: "\(source): \(place) must be a table") }
                for key in entry.keys where !known.contains(key) {
                    throw ConfigError(description: "\(source): \(place): unknown key '\(key)'")
                }
                guard let name = entry["name"]?.string else {
                    throw ConfigError(description: "\(source): \(place): name (a string) is required")
                }
                guard SymbolSpec.isValidName(name) else {
                    throw ConfigError(description: "\(source): \(place): name \(name.debugDescription): a name is 1 to 32 letters, digits, '-', '_', '.', '/' or ':'")
                }
                var spec = SymbolSpec(name: name, id: UInt32(index + 1))
                if let id = try Self.int(entry, "id", in: place, source: source) {
                    guard id > 0, id <= Int(UInt32.max) else {
                        throw ConfigError(description: "\(source): \(place): id must be between 1 and \(UInt32.max)")
                    }
                    spec.id = UInt32(id)
                }
                spec.tickSize = try Self.int(entry, "tick_size", in: place, source: source).map(Int64.init) ?? spec.tickSize
                spec.lotSize = try Self.int(entry, "lot_size", in: place, source: source).map(Int64.init) ?? spec.lotSize
                spec.minPrice = try Self.int(entry, "min_price", in: place, source: source).map(Int64.init) ?? spec.minPrice
                spec.maxPrice = try Self.int(entry, "max_price", in: place, source: source).map(Int64.init) ?? spec.maxPrice
                spec.maxOrderQuantity = try Self.int(entry, "max_order_quantity", in: place, source: source)
                    .map(Int64.init) ?? spec.maxOrderQuantity
                if let shard = try Self.int(entry, "shard", in: place, source: source) {
                    guard shard >= 0, shard < 1024 else {
                        throw ConfigError(description: "\(source): \(place): shard must be between 0 and 1023, got \(shard)")
                    }
                    symbolShards[name] = shard
                }
                do {
                    try symbols.add(spec)
                } catch {
                    throw ConfigError(description: "\(source): \(place): \(error)")
                }
            }
        }
        // Every book must be possible before any order arrives: declared symbols and the
        // defaults that undeclared ones get.
        do {
            for spec in symbols.symbols + [SymbolSpec(name: "(undeclared)", id: 0)] {
                try capacity.validate(for: spec)
            }
        } catch {
            throw ConfigError(description: "\(source): \(error)")
        }
    }

    /// toml++ (inside TOMLKit, the only TOML library here) stops the process with an assertion
    /// instead of an error on some malformed files (fuzz/fuzz-config found several: `[[[a]]`,
    /// `A =[[}`). A configuration is anyone's typo away from that, so the file is parsed once in
    /// a forked child first: if the child dies, the file is refused with an error, and the engine
    /// lives. (Loaded before any thread starts: the child only parses and leaves with _exit.)
    static func parsesWithoutCrashing(_ text: String) -> Bool {
        let pid = fork()
        if pid == 0 {
            // The parent's files stay the parent's: a lock held through an inherited descriptor
            // would outlive the parent's close of it while this child parses.
            cb_close_from(3)
            let null = open("/dev/null", O_WRONLY)
            if null >= 0 { dup2(null, 2) }  // the assertion's message is not the operator's error
            _ = try? TOMLTable(string: text)
            _exit(0)
        }
        guard pid > 0 else { return true }  // no fork: parse in this process, as before
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        return status & 0x7F == 0 && (status >> 8) & 0xFF == 0
    }

    /// The TOML parser inside TOMLKit (toml++) stops the process with an assertion, instead of
    /// reporting an error, on a table header whose key does not start with a key character
    /// (`[[[a]]`, `[[ [a]]`, `[.a]`; found by fuzz/fuzz-config). Such headers are refused here
    /// first, with the line. Lines inside multi-line strings are skipped.
    static func checkTableHeaders(_ text: String, source: String) throws {
        func isKeyStart(_ c: UInt8) -> Bool {
            (c >= 48 && c <= 57) || (c >= 65 && c <= 90) || (c >= 97 && c <= 122) || c == 45 || c == 95 || c == 34 || c == 39
        }
        func isTripleQuote(_ b: [UInt8], _ i: Int, _ q: UInt8) -> Bool {
            i + 2 < b.count && b[i] == q && b[i + 1] == q && b[i + 2] == q
        }
        var open: UInt8? = nil  // the quote of a multi-line string that is open
        for (index, line) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let b = Array(line.utf8)
            // A byte-order mark opens the file for the parser, not a line of code.
            var i = index == 0 && b.starts(with: [0xEF, 0xBB, 0xBF]) ? 3 : 0
            var code = false
            while i < b.count {
                if let q = open {
                    if isTripleQuote(b, i, q) { open = nil; i += 3 } else { i += 1 }
                    continue
                }
                let c = b[i]
                if c == 35 { break }  // '#': a comment
                if c == 34 || c == 39 {
                    if isTripleQuote(b, i, c) { open = c; i += 3; code = true; continue }
                    // A one-line string: skip to its end.
                    var j = i + 1
                    while j < b.count && b[j] != c { j += (c == 34 && b[j] == 92) ? 2 : 1 }
                    i = j + 1
                    code = true
                    continue
                }
                if c == 91 && !code {  // '[' first on the line: a table header
                    var j = i + 1
                    if j < b.count && b[j] == 91 { j += 1 }
                    while j < b.count && (b[j] == 32 || b[j] == 9) { j += 1 }
                    guard j < b.count, isKeyStart(b[j]) else {
                        throw ConfigError(description: "\(source):\(index + 1): a table header must start with a key (a name, or a quoted string)")
                    }
                }
                if c != 32 && c != 9 { code = true }
                i += 1
            }
        }
    }

    private static func int(_ table: TOMLTable, _ key: String, in place: String, source: String) throws -> Int? {
        guard let value = table[key] else { return nil }
        guard let int = value.int else {
            throw ConfigError(description: "\(source): \(place): \(key) must be an integer, got \(value)")
        }
        return int
    }
}
