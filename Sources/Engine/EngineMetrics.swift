// The engine's metrics as read from its control file (the counters region), named and labelled
// the Prometheus way. The host hands them to metrics plugins (metrics_read); nothing here
// touches a shard: every value is a relaxed load of a word a shard or the control thread wrote.

import CPluginABI
import CSync
import Glibc
import OrderBook
import SharedMemory

public struct MetricSample: Sendable {
    public var labels: String
    public var value: Double
    public var histogram: (bounds: [Double], cumulative: [UInt64], sum: Double, count: UInt64)?
}

public struct MetricFamily: Sendable {
    public enum Kind: UInt32, Sendable {
        case counter = 0, gauge = 1, histogram = 2
    }

    public var name: String
    public var help: String
    public var kind: Kind
    public var samples: [MetricSample] = []
}

public struct EngineMetrics: Sendable {
    public var families: [MetricFamily] = []

    /// Everything the control file holds now; `pluginHelp` (by counter name) is the help the
    /// plugins gave their own counters, `ownCounters` false leaves those out.
    public static func collect(_ file: EngineFile, pluginHelp: [String: String] = [:], ownCounters: Bool = true) -> EngineMetrics {
        var m = EngineMetrics()
        let state = file.state
        m.gauge("crossbook_engine_running", "1 while the engine serves (state running and its process alive)",
                [("", file.isServing ? 1 : 0)])
        m.gauge("crossbook_engine_state", "Engine state: 1 starting, 2 running, 3 stopping, 4 stopped",
                [("", Double(state.rawValue))])
        m.gauge("crossbook_shards", "Shards in this engine", [("", Double(file.shardCount))])

        let shards = 0..<file.shardCount
        let shardLabel = { (s: Int) in "shard=\"\(s)\"" }
        func perShard(_ counter: ShardCounter, _ name: String, _ help: String, gauge: Bool = false) {
            let samples = shards.map { (shardLabel($0), Double(file.counters($0).read(counter))) }
            if gauge { m.gauge(name, help, samples) } else { m.counter(name, help, samples) }
        }
        perShard(.commands, "crossbook_shard_commands_total", "Commands sequenced by the shard")
        perShard(.trades, "crossbook_shard_trades_total", "Trades matched by the shard")
        perShard(.rejects, "crossbook_shard_rejects_total", "Commands rejected by the shard (all reasons)")
        perShard(.events, "crossbook_shard_reports_total", "Execution reports written to sessions")
        perShard(.malformed, "crossbook_shard_malformed_total", "Command records that failed to decode")
        perShard(.batches, "crossbook_shard_batches_total", "Batches of commands taken off the rings")
        perShard(.largestBatch, "crossbook_shard_largest_batch", "Largest batch taken so far", gauge: true)
        perShard(.backlog, "crossbook_shard_ring_backlog",
                 "Commands waiting in the shard's command rings at its last pass (ring depth)", gauge: true)
        perShard(.sessions, "crossbook_shard_sessions_total", "Sessions attached to the shard")
        perShard(.ringFaults, "crossbook_shard_ring_faults_total", "Command rings detached for an impossible cursor")
        perShard(.lagDetaches, "crossbook_shard_lag_detaches_total", "Sessions detached for not reading their reports")
        perShard(.parks, "crossbook_shard_parks_total", "Times the shard slept on its doorbell")
        perShard(.eventDetaches, "crossbook_shard_event_consumer_detaches_total", "Event-ring consumers detached")
        perShard(.eventWaits, "crossbook_shard_event_ring_waits_total", "Times the shard waited on a full event ring")
        perShard(.journalFailures, "crossbook_journal_failures_total", "Failed journal attempts: writes, fdatasyncs, segment creations and directory syncs")
        perShard(.journalFailed, "crossbook_journal_failed",
                 "1 while the journal refuses (disk full or failing): the shard takes no command", gauge: true)
        perShard(.journalBatches, "crossbook_journal_batches_total", "Group commits made durable")
        perShard(.journalBytes, "crossbook_journal_bytes_total", "Bytes made durable")
        perShard(.durableSequence, "crossbook_journal_durable_sequence", "Highest sequence on disk", gauge: true)
        func migrations(_ word: Int, _ name: String, _ help: String, gauge: Bool = false, scale: Double = 1) {
            let samples = shards.map { (shardLabel($0), Double(file.migrations($0).read(word)) * scale) }
            if gauge { m.gauge(name, help, samples) } else { m.counter(name, help, samples) }
        }
        m.counter("crossbook_ingress_replays_dropped_total",
                  "Ingress (Kafka) commands at or below their symbol's position, dropped unsequenced: applied already",
                  shards.map { (shardLabel($0), Double(file.ingress($0).read(IngressCounters.replays))) })
        m.counter("crossbook_ingress_elsewhere_dropped_total",
                  "Ingress (Kafka) commands for a symbol given to another engine, dropped unsequenced: its new owner reads them",
                  shards.map { (shardLabel($0), Double(file.ingress($0).read(IngressCounters.elsewhere))) })
        m.counter("crossbook_ingress_watermarks_total",
                  "Ingress plugins' watermarks journaled as the shard's position in a partition (restarts read from there)",
                  shards.map { (shardLabel($0), Double(file.ingress($0).read(IngressCounters.watermarks))) })
        migrations(MigrationCounters.into, "crossbook_migrations_in_total", "Symbols moved to this shard")
        migrations(MigrationCounters.outOf, "crossbook_migrations_out_total", "Symbols moved off this shard")
        migrations(MigrationCounters.failed, "crossbook_migrations_failed_total", "Moves off this shard refused or abandoned")
        migrations(MigrationCounters.inProgress, "crossbook_migration_in_progress", "1 while a symbol moves to or off this shard", gauge: true)
        migrations(MigrationCounters.lastPauseMicros, "crossbook_migration_last_pause_seconds",
                   "The pause of the last move to or off this shard (the symbol not trading)", gauge: true, scale: 1e-6)
        migrations(MigrationCounters.maxPauseMicros, "crossbook_migration_max_pause_seconds",
                   "The longest pause of a move to or off this shard since the engine started", gauge: true, scale: 1e-6)
        // Hot standby (Engine+Replication.swift); role 0: no replication.
        if shards.contains(where: { file.replication($0).read(ReplicationCounters.role) != 0 }) {
            func replication(_ word: Int, _ name: String, _ help: String, gauge: Bool = true) {
                let samples = shards.map { (shardLabel($0), Double(file.replication($0).read(word))) }
                if gauge { m.gauge(name, help, samples) } else { m.counter(name, help, samples) }
            }
            replication(ReplicationCounters.role, "crossbook_replication_role", "1 primary, 2 standby")
            replication(ReplicationCounters.epoch, "crossbook_replication_epoch", "The leadership epoch (journaled at each promotion)")
            replication(ReplicationCounters.engaged, "crossbook_replication_sync_engaged",
                        "1 once sync replication is engaged: output waits for a standby's confirmation")
            replication(ReplicationCounters.lag, "crossbook_replication_lag_records",
                        "Primary: records durable here that no standby confirmed; standby: records the primary has that are not applied here")
            replication(ReplicationCounters.connected, "crossbook_replication_connected",
                        "Primary: standbys connected; standby: 1 while it follows its primary")
            replication(ReplicationCounters.digestsMatched, "crossbook_replication_digests_matched_total",
                        "State digests compared with the primary's and found equal", gauge: false)
            replication(ReplicationCounters.alarm, "crossbook_replication_alarm",
                        "1 once a standby stopped applying (digest mismatch, gap, a record that does not apply)")
            replication(ReplicationCounters.promotions, "crossbook_replication_promotions_total",
                        "Times this engine was promoted from standby to primary", gauge: false)
        }
        perShard(.snapshots, "crossbook_snapshots_total", "Snapshots stored")
        perShard(.snapshotFailures, "crossbook_snapshot_failures_total", "Snapshots that failed to store")
        perShard(.journalSegmentsPruned, "crossbook_journal_segments_pruned_total", "Journal segments removed after a snapshot")
        perShard(.lastSnapshotSequence, "crossbook_snapshot_last_sequence", "Sequence of the last snapshot stored",
                 gauge: true)
        m.gauge("crossbook_snapshot_pause_seconds", "The shard's pause for its last snapshot copy",
                shards.map { (shardLabel($0), Double(file.counters($0).read(.snapshotPauseMicros)) / 1e6) })

        var rejects = MetricFamily(name: "crossbook_shard_rejects_by_reason_total",
                                   help: "Rejects by reason (the RejectReason names)", kind: .counter)
        for s in shards {
            for reason in RejectReason.allCases {
                rejects.samples.append(MetricSample(labels: "shard=\"\(s)\",reason=\"\(reason.name)\"",
                                                    value: Double(file.counters(s).rejects(reason.rawValue))))
            }
        }
        m.families.append(rejects)

        // Batch sizes: bucket b holds batches of 2^b ... 2^(b+1)-1 commands (the last: 128 and up).
        var batchSizes = MetricFamily(name: "crossbook_shard_batch_size",
                                      help: "Commands per batch taken off a ring", kind: .histogram)
        for s in shards {
            var cumulative: [UInt64] = []
            var running: UInt64 = 0
            var bounds: [Double] = []
            for b in 0..<InstanceLayout.batchBuckets {
                running &+= file.counters(s).batches(bucket: b)
                if b < InstanceLayout.batchBuckets - 1 {
                    cumulative.append(running)
                    bounds.append(Double((1 << (b + 1)) - 1))
                }
            }
            let commands = Double(file.counters(s).read(.commands))
            batchSizes.samples.append(MetricSample(labels: shardLabel(s), value: 0,
                                                   histogram: (bounds, cumulative, commands, running)))
        }
        m.families.append(batchSizes)

        func latency(_ name: String, _ help: String, _ words: (ShardCounters) -> UnsafeMutablePointer<UInt64>) {
            var family = MetricFamily(name: name, help: help, kind: .histogram)
            let bounds = (0..<InstanceLayout.histogramBuckets).map { Double(LatencyHistogram.boundNanoseconds($0)) / 1e9 }
            for s in shards {
                let h = ShardCounters.readHistogram(words(file.counters(s)))
                family.samples.append(MetricSample(labels: shardLabel(s), value: 0,
                                                   histogram: (bounds, h.cumulative, Double(h.sum) / 1e9, h.count)))
            }
            m.families.append(family)
        }
        latency("crossbook_match_batch_seconds",
                "Matching time per batch: from taking a batch off a ring to its last report written or staged",
                { $0.matchLatency })
        latency("crossbook_journal_sync_seconds",
                "Group commit latency: io_uring write + fdatasync, from submission to completion", { $0.syncLatency })

        var journalBatch = MetricFamily(name: "crossbook_journal_batch_commands",
                                        help: "Commands per group commit (one io_uring write + fdatasync)", kind: .histogram)
        for s in shards {
            let h = ShardCounters.readHistogram(file.counters(s).journalBatchCommands)
            journalBatch.samples.append(MetricSample(
                labels: shardLabel(s), value: 0,
                histogram: ((0..<InstanceLayout.histogramBuckets).map { Double(1 << $0) }, h.cumulative,
                            Double(h.sum), h.count)))
        }
        m.families.append(journalBatch)

        let pid = file.enginePid
        m.counter("crossbook_shard_cpu_seconds_total", "CPU time of the shard thread",
                  shards.compactMap { s in
                      let tid = file.counters(s).threadId
                      let ns = cb_thread_cpu_ns(pid, tid)
                      return ns >= 0 ? (shardLabel(s), Double(ns) / 1e9) : nil
                  })

        let symbols = (0..<file.symbolCount).map { (file.symbol($0), file.symbolCounters($0)) }
        func perSymbol(_ word: Int, _ name: String, _ help: String) {
            m.counter(name, help, symbols.map { symbol, counters in
                ("shard=\"\(symbol.shard)\",symbol=\"\(escape(symbol.name))\"", Double(counters.read(word)))
            })
        }
        perSymbol(SymbolCounters.commands, "crossbook_symbol_commands_total", "Commands for the symbol")
        perSymbol(SymbolCounters.trades, "crossbook_symbol_trades_total", "Trades in the symbol")
        perSymbol(SymbolCounters.rejects, "crossbook_symbol_rejects_total", "Rejected commands for the symbol")
        perSymbol(SymbolCounters.tradedQuantity, "crossbook_symbol_traded_quantity_total", "Lots traded in the symbol")

        let plugins = file.pluginStatuses()
        m.gauge("crossbook_plugin_running", "1 while the plugin runs",
                plugins.map { ("plugin=\"\(escape($0.name))\"", $0.state == .running ? 1 : 0) })
        m.gauge("crossbook_plugin_health", "The plugin's health: 0 ok, 1 degraded, 2 failed",
                plugins.map { ("plugin=\"\(escape($0.name))\"", Double($0.health)) })
        // The plugins' own counters, one family per name.
        guard ownCounters else { return m }
        let own = file.pluginCounters()
        let names = plugins.map(\.name)
        // A counter's name may carry labels: base{key="value",...}; one family per base.
        for base in Set(own.map { Self.splitCounterName($0.name).base }).sorted() {
            let values = own.filter { Self.splitCounterName($0.name).base == base }
            let family = Self.pluginFamily(base, isGauge: values[0].isGauge)
            let samples = values.filter { $0.isGauge == values[0].isGauge }.map { v in
                let labels = Self.splitCounterName(v.name).labels
                return ("plugin=\"\(escape(v.plugin < names.count ? names[v.plugin] : "slot\(v.plugin)"))\"" + (labels.isEmpty ? "" : "," + labels),
                        Double(v.value))
            }
            let help = pluginHelp[base].flatMap { $0.isEmpty ? nil : $0 } ?? (values[0].isGauge ? "A plugin's own gauge" : "A plugin's own counter")
            if values[0].isGauge { m.gauge(family, help, samples) }
            else { m.counter(family, help, samples) }
        }
        return m
    }

    /// A plugin counter's name: its base and its labels (`base{k="v",...}`: the text inside the
    /// braces, "" without).
    public static func splitCounterName(_ name: String) -> (base: String, labels: String) {
        guard let open = name.firstIndex(of: "{"), name.hasSuffix("}") else { return (name, "") }
        return (String(name[..<open]), String(name[name.index(after: open)..<name.index(before: name.endIndex)]))
    }

    /// Whether a plugin counter's name is well formed: a base of [a-z0-9_], then optionally
    /// {key="value",...} with keys [a-z_][a-z0-9_]* (not "plugin") and values without ", \ or
    /// control characters; under 80 bytes in all.
    public static func validCounterName(_ name: String) -> Bool {
        guard !name.isEmpty, name.utf8.count < 80 else { return false }
        let (base, labels) = splitCounterName(name)
        guard !base.isEmpty, base.utf8.allSatisfy({ ($0 >= 97 && $0 <= 122) || ($0 >= 48 && $0 <= 57) || $0 == 95 }) else { return false }
        if base.count == name.count { return true }
        guard !labels.isEmpty else { return false }
        var rest = Substring(labels)
        while !rest.isEmpty {
            guard let eq = rest.firstIndex(of: "=") else { return false }
            let key = rest[..<eq]
            guard let first = key.utf8.first, (first >= 97 && first <= 122) || first == 95, key != "plugin",
                  key.utf8.allSatisfy({ ($0 >= 97 && $0 <= 122) || ($0 >= 48 && $0 <= 57) || $0 == 95 }) else { return false }
            rest = rest[rest.index(after: eq)...]
            guard rest.first == "\"" else { return false }
            rest = rest.dropFirst()
            guard let close = rest.firstIndex(of: "\"") else { return false }
            guard rest[..<close].utf8.allSatisfy({ $0 >= 32 && $0 != 92 && $0 != 127 }) else { return false }
            rest = rest[rest.index(after: close)...]
            if rest.first == "," { rest = rest.dropFirst(); guard !rest.isEmpty else { return false } } else if !rest.isEmpty { return false }
        }
        return true
    }

    /// The family a plugin's own counter is exported as.
    public static func pluginFamily(_ name: String, isGauge: Bool) -> String {
        "crossbook_plugin_" + name + (isGauge ? "" : "_total")
    }

    /// This process: the build, and CPU, memory and descriptors as Prometheus' own clients name
    /// them (the engine's process: only where the host serves metrics in process).
    public mutating func addProcess(version: String) {
        gauge("crossbook_build_info", "The engine's build: always 1, the version in labels",
              [("version=\"\(escape(version))\",plugin_abi=\"\(CB_PLUGIN_ABI_VERSION)\"", 1)])
        var usage = rusage()
        getrusage(RUSAGE_SELF.rawValue, &usage)
        let cpu = Double(usage.ru_utime.tv_sec) + Double(usage.ru_utime.tv_usec) / 1e6
            + Double(usage.ru_stime.tv_sec) + Double(usage.ru_stime.tv_usec) / 1e6
        counter("process_cpu_seconds_total", "User and system CPU time of the engine's process, seconds", [("", cpu)])
        let page = Double(sysconf(Int32(_SC_PAGESIZE)))
        var resident = 0.0, virtualBytes = 0.0
        let statm = Self.firstLine("/proc/self/statm").split(separator: " ")
        if statm.count >= 2, let size = Double(statm[0]), let rss = Double(statm[1]) {
            virtualBytes = size * page
            resident = rss * page
        }
        gauge("process_resident_memory_bytes", "Resident memory of the engine's process, bytes", [("", resident)])
        gauge("process_virtual_memory_bytes", "Virtual memory of the engine's process, bytes", [("", virtualBytes)])
        var open = 0
        if let dir = opendir("/proc/self/fd") {
            while readdir(dir) != nil { open += 1 }
            closedir(dir)
            open = max(0, open - 3)  // ".", ".." and the listing's own descriptor
        }
        gauge("process_open_fds", "Open file descriptors of the engine's process", [("", Double(open))])
        var limit = rlimit()
        getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit)
        gauge("process_max_fds", "The engine process's limit of open file descriptors", [("", Double(limit.rlim_cur))])
        gauge("process_start_time_seconds", "When the engine's process started, seconds since the epoch",
              [("", Self.processStart)])
    }

    /// The process's start, from /proc: its start in clock ticks after boot plus the boot time.
    static let processStart: Double = {
        var bootTime = 0.0
        if let f = fopen("/proc/stat", "r") {
            var line = [CChar](repeating: 0, count: 256)
            while fgets(&line, 256, f) != nil {
                let text = String(cString: line)
                if text.hasPrefix("btime ") { bootTime = Double(text.dropFirst(6).filter { $0 != "\n" && $0 != " " }) ?? 0 }
            }
            fclose(f)
        }
        let text = firstLine("/proc/self/stat")
        guard let close = text.lastIndex(of: ")") else { return 0 }
        // After the command: the state is field 3, the start time field 22.
        let fields = text[text.index(after: close)...].split(separator: " ")
        guard fields.count > 19, let ticks = Double(fields[19]) else { return 0 }
        return bootTime + ticks / Double(sysconf(Int32(_SC_CLK_TCK)))
    }()

    static func firstLine(_ path: String) -> String {
        guard let f = fopen(path, "r") else { return "" }
        defer { fclose(f) }
        var line = [CChar](repeating: 0, count: 1024)
        guard fgets(&line, 1024, f) != nil else { return "" }
        return String(cString: line).filter { $0 != "\n" }
    }

    mutating func counter(_ name: String, _ help: String, _ samples: [(String, Double)]) {
        families.append(MetricFamily(name: name, help: help, kind: .counter,
                                     samples: samples.map { MetricSample(labels: $0.0, value: $0.1) }))
    }

    mutating func gauge(_ name: String, _ help: String, _ samples: [(String, Double)]) {
        families.append(MetricFamily(name: name, help: help, kind: .gauge,
                                     samples: samples.map { MetricSample(labels: $0.0, value: $0.1) }))
    }

    /// Hands every sample to a plugin's visitor, family by family.
    func visit(_ visitor: cb_metric_visitor, _ context: UnsafeMutableRawPointer?) {
        for family in families {
            for (i, sample) in family.samples.enumerated() {
                family.name.withCString { name in
                    (i == 0 ? family.help : "").withCString { help in
                        sample.labels.withCString { labels in
                            var metric = cb_metric()
                            metric.size = UInt32(MemoryLayout<cb_metric>.size)
                            metric.type = family.kind.rawValue
                            metric.name = name
                            metric.help = help
                            metric.labels = labels
                            metric.value = sample.value
                            if let h = sample.histogram {
                                h.bounds.withUnsafeBufferPointer { bounds in
                                    h.cumulative.withUnsafeBufferPointer { counts in
                                        metric.bucket_count = UInt32(bounds.count)
                                        metric.bucket_bounds = bounds.baseAddress
                                        metric.bucket_counts = counts.baseAddress
                                        metric.sum = h.sum
                                        metric.count = h.count
                                        visitor(context, &metric)
                                    }
                                }
                            } else {
                                visitor(context, &metric)
                            }
                        }
                    }
                }
            }
        }
    }
}

/// A label value as the Prometheus text format wants it.
func escape(_ value: String) -> String {
    var out = ""
    for c in value {
        switch c {
        case "\\": out += "\\\\"
        case "\"": out += "\\\""
        case "\n": out += "\\n"
        default: out.append(c)
        }
    }
    return out
}
