// `crossbook stat`: a running engine's counters, read from its control file (like aeron-stat):
// redrawn in place on a terminal, one frame per interval; `--count 1` prints one frame and
// exits; `--json` prints one JSON object per frame; `--symbols` adds a line per symbol.
import ArgumentParser
import Engine
import Foundation
import Glibc
import OrderBook
import SharedMemory

struct StatCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "stat",
        abstract: "Show a running engine's counters, live, without touching its shards (like aeron-stat).",
        discussion: """
            Rates are over the interval; latency percentiles (match per batch, group commit) are of
            the observations in the interval, as upper bounds of their power-of-two buckets.
            On a terminal the frame is redrawn in place (--scroll: one after another). Exit status:
            0 after --count frames or when the engine stops, 1 when it is not running or dies.
            The instance may come from CROSSBOOK_INSTANCE.
            """)

    @OptionGroup var target: InstanceOptions

    @Option(help: "Seconds between frames (0.01 to 3600).")
    var interval: Double = 1

    @Option(help: "Frames to print (0: until the engine stops or Ctrl-C).")
    var count: Int = 0

    @Flag(help: "One JSON object per frame (one line each).")
    var json = false

    @Flag(help: "A line per symbol: its shard, rates and totals.")
    var symbols = false

    @Flag(help: "Print frames one after another instead of redrawing in place.")
    var scroll = false

    func validate() throws {
        guard interval.isFinite, interval >= 0.01, interval <= 3600 else {
            throw ValidationError("--interval must be between 0.01 and 3600 seconds, got \(interval)")
        }
        guard count >= 0 else { throw ValidationError("--count must be 0 or more, got \(count)") }
    }

    struct Sample {
        var shards: [[UInt64]]
        var match: [LatencyHistogram]
        var sync: [LatencyHistogram]
        var symbols: [[UInt64]]
        /// When it was read (CLOCK_MONOTONIC): a shard's busy share is over the time that passed.
        var at: UInt64
    }

    /// A shard's busy time between two readings: the time it spent on batches of commands (the
    /// match histogram's sum, as the automatic rebalance reads it), as a share of the time that
    /// passed, and per command. The time it spends on an empty ring is not busy; what it does
    /// for a batch (journal, book, reports) is.
    static func busy(_ match: LatencyHistogram, commands: UInt64, elapsed: UInt64) -> (percent: Double, nanosPerCommand: Double?) {
        (elapsed > 0 ? 100 * Double(match.sum) / Double(elapsed) : 0, commands > 0 ? Double(match.sum) / Double(commands) : nil)
    }

    static func sample(_ file: EngineFile) -> Sample {
        Sample(shards: (0..<file.shardCount).map { s in ShardCounter.allCases.map { file.counters(s).read($0) } },
               match: (0..<file.shardCount).map { ShardCounters.readHistogram(file.counters($0).matchLatency) },
               sync: (0..<file.shardCount).map { ShardCounters.readHistogram(file.counters($0).syncLatency) },
               symbols: (0..<file.symbolCount).map { i in
                   let c = file.symbolCounters(i)
                   return [c.read(SymbolCounters.commands), c.read(SymbolCounters.trades), c.read(SymbolCounters.rejects),
                           c.read(SymbolCounters.tradedQuantity)]
               },
               at: monotonicNanoseconds())
    }

    /// The observations between two readings of a histogram.
    static func delta(_ now: LatencyHistogram, _ before: LatencyHistogram) -> LatencyHistogram {
        LatencyHistogram(cumulative: zip(now.cumulative, before.cumulative).map { $0 &- $1 }, sum: now.sum &- before.sum,
                         count: now.count &- before.count)
    }

    static func micros(_ ns: UInt64?) -> Double? { ns.map { Double($0) / 1000 } }

    func run() throws {
        let instance = target.instance
        let file: EngineFile
        do { file = try EngineFile.attach(directory: target.resolvedDirectory) } catch {
            throw CLIError("engine '\(instance)' is not running: \(error)")
        }
        guard processIsAlive(file.enginePid) else {
            throw CLIError("engine '\(instance)' (pid \(file.enginePid)) is gone; its files are leftovers (crossbook run --clean-stale removes them)")
        }
        let redraw = !json && !scroll && isatty(1) != 0
        var last = Self.sample(file)
        var printed = 0
        if !json && !redraw { print("engine '\(instance)' pid \(file.enginePid), \(file.shardCount) shard(s), state \(file.state)") }
        while count == 0 || printed < count {
            var pause = timespec(tv_sec: Int(interval), tv_nsec: Int((interval - interval.rounded(.down)) * 1e9))
            var left = timespec()
            while nanosleep(&pause, &left) != 0 && errno == EINTR { pause = left }
            guard processIsAlive(file.enginePid) else {
                throw CLIError("engine '\(instance)' (pid \(file.enginePid)) is gone")
            }
            guard file.state == .running else {
                print("engine '\(instance)' is \(file.state)")
                return
            }
            let now = Self.sample(file)
            if json {
                print(jsonFrame(file, now, last))
            } else {
                let frame = textFrame(file, now, last)
                if redraw {
                    // Home, the frame, then clear what a longer frame before left below it.
                    print("\u{1B}[H\u{1B}[2J" + frame, terminator: "")
                } else {
                    print(frame, terminator: "")
                }
            }
            fflush(nil)
            last = now
            printed += 1
        }
    }

    func textFrame(_ file: EngineFile, _ now: Sample, _ last: Sample) -> String {
        var out = ""
        func line(_ text: String) { out += text + "\n" }
        if !scroll && isatty(1) != 0 && !json {
            line("engine '\(target.instance)' pid \(file.enginePid), \(file.shardCount) shard(s), state \(file.state), every \(interval) s")
        }
        for s in 0..<file.shardCount {
            let n = now.shards[s], l = last.shards[s]
            func rate(_ k: ShardCounter) -> Double { Double(n[k.rawValue] &- l[k.rawValue]) / interval }
            let c = file.counters(s)
            var rejects: [String] = []
            for reason in RejectReason.allCases where c.rejects(reason.rawValue) > 0 {
                rejects.append("\(reason.name)=\(c.rejects(reason.rawValue))")
            }
            line(String(format: "shard %d: %.0f cmd/s %.0f trades/s %.0f rejects/s | total %llu commands, %llu trades, %llu rejects, backlog %llu, largest batch %llu, sessions %llu, parks %llu, lagging detached %llu, ring faults %llu, malformed %llu",
                        s, rate(.commands), rate(.trades), rate(.rejects), n[ShardCounter.commands.rawValue], n[ShardCounter.trades.rawValue],
                        n[ShardCounter.rejects.rawValue], n[ShardCounter.backlog.rawValue], n[ShardCounter.largestBatch.rawValue],
                        n[ShardCounter.sessions.rawValue], n[ShardCounter.parks.rawValue], n[ShardCounter.lagDetaches.rawValue],
                        n[ShardCounter.ringFaults.rawValue], n[ShardCounter.malformed.rawValue])
                 + (rejects.isEmpty ? "" : " | " + rejects.joined(separator: " ")))
            let match = Self.delta(now.match[s], last.match[s]), sync = Self.delta(now.sync[s], last.sync[s])
            func pct(_ h: LatencyHistogram) -> String {
                guard h.count > 0 else { return "none" }
                return [0.5, 0.99, 0.999].map { q in
                    Self.micros(h.quantileBound(q)).map { String(format: "p%@ <=%.1fus", q == 0.5 ? "50" : (q == 0.99 ? "99" : "99.9"), $0) } ?? "beyond the last bucket"
                }.joined(separator: " ") + " (\(h.count))"
            }
            let busy = Self.busy(match, commands: n[ShardCounter.commands.rawValue] &- l[ShardCounter.commands.rawValue], elapsed: now.at &- last.at)
            line("  latency match per batch \(pct(match)) | group commit \(pct(sync)) | busy \(String(format: "%.1f", busy.percent))%\(busy.nanosPerCommand.map { String(format: " (%.0f ns a command)", $0) } ?? "")")
            var buckets: [String] = []
            for b in 0..<InstanceLayout.batchBuckets where c.batches(bucket: b) > 0 {
                let low = 1 << b
                let label = b == InstanceLayout.batchBuckets - 1 ? "\(low)+" : (low == 1 ? "1" : "\(low)-\(2 * low - 1)")
                buckets.append("\(label):\(c.batches(bucket: b))")
            }
            if !buckets.isEmpty { line("  batch sizes " + buckets.joined(separator: " ")) }
            if n[ShardCounter.journalBatches.rawValue] > 0 {
                if n[ShardCounter.snapshots.rawValue] > 0 || n[ShardCounter.snapshotFailures.rawValue] > 0 {
                    line("  snapshots=\(n[ShardCounter.snapshots.rawValue]) last_snapshot_sequence=\(n[ShardCounter.lastSnapshotSequence.rawValue]) last_pause_us=\(n[ShardCounter.snapshotPauseMicros.rawValue]) snapshot_failures=\(n[ShardCounter.snapshotFailures.rawValue]) journal_segments_pruned=\(n[ShardCounter.journalSegmentsPruned.rawValue])")
                }
                line("  journal journal_batches=\(n[ShardCounter.journalBatches.rawValue]) journal_bytes=\(n[ShardCounter.journalBytes.rawValue]) durable_sequence=\(n[ShardCounter.durableSequence.rawValue]) journal_failures=\(n[ShardCounter.journalFailures.rawValue])\(n[ShardCounter.journalFailed.rawValue] != 0 ? " JOURNAL REFUSING (disk full or failing): not taking commands" : "")")
            }
            let r = file.replication(s)
            if r.read(ReplicationCounters.role) != 0 {
                let standby = r.read(ReplicationCounters.role) == 2
                line("  replication \(standby ? "standby" : "primary") epoch=\(r.read(ReplicationCounters.epoch)) \(standby ? "following" : "standbys")=\(r.read(ReplicationCounters.connected)) sync_engaged=\(r.read(ReplicationCounters.engaged)) lag_records=\(r.read(ReplicationCounters.lag))\(standby ? " digests_matched=\(r.read(ReplicationCounters.digestsMatched))" : "")\(r.read(ReplicationCounters.alarm) != 0 ? " ALARM (crossbook replication says why)" : "")")
            }
            let m = file.migrations(s)
            if m.read(MigrationCounters.into) + m.read(MigrationCounters.outOf) + m.read(MigrationCounters.failed) + m.read(MigrationCounters.inProgress) > 0 {
                line("  migrations in=\(m.read(MigrationCounters.into)) out=\(m.read(MigrationCounters.outOf)) failed=\(m.read(MigrationCounters.failed)) last_pause_us=\(m.read(MigrationCounters.lastPauseMicros)) max_pause_us=\(m.read(MigrationCounters.maxPauseMicros))\(m.read(MigrationCounters.inProgress) != 0 ? " MOVING" : "")")
            }
            let ingress = file.ingress(s)
            if ingress.read(IngressCounters.replays) + ingress.read(IngressCounters.elsewhere) > 0 {
                line("  ingress dropped unsequenced: replays=\(ingress.read(IngressCounters.replays)) elsewhere=\(ingress.read(IngressCounters.elsewhere))")
            }
            if ingress.read(IngressCounters.watermarks) + ingress.read(IngressCounters.watermarksDeferred) > 0 {
                line("  ingress watermarks journaled=\(ingress.read(IngressCounters.watermarks)) deferred=\(ingress.read(IngressCounters.watermarksDeferred))")
            }
            if let ring = try? EventRing.attach(path: InstanceLayout.eventRingPath(target.resolvedDirectory, shard: s)) {
                for consumer in ring.consumerLags() {
                    line("  event consumer \(consumer.index) (pid \(consumer.pid)\(consumer.mayDetach ? ", may detach" : "")): lag \(consumer.lag) events")
                }
            }
        }
        if symbols {
            for i in 0..<file.symbolCount {
                let info = file.symbol(i), n = now.symbols[i], l = last.symbols[i]
                line(String(format: "symbol %@ (id %u) shard %d: %.0f cmd/s %.0f trades/s %.0f rejects/s | total %llu commands, %llu trades, %llu rejects, %llu lots traded",
                            info.name, info.id, info.shard, Double(n[0] &- l[0]) / interval, Double(n[1] &- l[1]) / interval,
                            Double(n[2] &- l[2]) / interval, n[0], n[1], n[2], n[3]))
            }
        }
        let counters = file.pluginCounters()
        for (i, plugin) in file.pluginStatuses().enumerated() {
            let own = counters.filter { $0.plugin == i }.map { "\($0.name)=\($0.value)" }
            line("plugin \(plugin.name) \(plugin.version) [\(plugin.kindNames.joined(separator: ","))]: \(plugin.state) health \(plugin.healthName)\(plugin.message.isEmpty ? "" : " (\(plugin.message))")\(own.isEmpty ? "" : " | " + own.joined(separator: " "))")
        }
        return out
    }

    func jsonFrame(_ file: EngineFile, _ now: Sample, _ last: Sample) -> String {
        func histogram(_ h: LatencyHistogram) -> [String: Any] {
            var out: [String: Any] = ["count": h.count]
            for (key, q) in [("p50_us", 0.5), ("p99_us", 0.99), ("p999_us", 0.999)] {
                if let v = Self.micros(h.quantileBound(q)) { out[key] = v }
            }
            return out
        }
        var shards: [[String: Any]] = []
        for s in 0..<file.shardCount {
            let n = now.shards[s], l = last.shards[s]
            var totals: [String: Any] = [:]
            for k in ShardCounter.allCases { totals["\(k)"] = n[k.rawValue] }
            var rejects: [String: Any] = [:]
            let c = file.counters(s)
            for reason in RejectReason.allCases where c.rejects(reason.rawValue) > 0 { rejects[reason.name] = c.rejects(reason.rawValue) }
            let m = file.migrations(s)
            let r = file.replication(s)
            let match = Self.delta(now.match[s], last.match[s])
            let busy = Self.busy(match, commands: n[0] &- l[0], elapsed: now.at &- last.at)
            shards.append([
                "shard": s,
                "rates": ["commands": Double(n[0] &- l[0]) / interval,
                          "trades": Double(n[ShardCounter.trades.rawValue] &- l[ShardCounter.trades.rawValue]) / interval,
                          "rejects": Double(n[ShardCounter.rejects.rawValue] &- l[ShardCounter.rejects.rawValue]) / interval],
                "totals": totals,
                "rejects_by_reason": rejects,
                "match_latency": histogram(match),
                "busy_percent": busy.percent,
                "busy_ns_per_command": busy.nanosPerCommand ?? 0,
                "group_commit_latency": histogram(Self.delta(now.sync[s], last.sync[s])),
                "migrations": ["in": m.read(MigrationCounters.into), "out": m.read(MigrationCounters.outOf),
                               "failed": m.read(MigrationCounters.failed), "in_progress": m.read(MigrationCounters.inProgress),
                               "last_pause_us": m.read(MigrationCounters.lastPauseMicros)],
                "ingress_dropped": ["replays": file.ingress(s).read(IngressCounters.replays),
                                    "elsewhere": file.ingress(s).read(IngressCounters.elsewhere)],
                "ingress_watermarks": file.ingress(s).read(IngressCounters.watermarks),
                "replication": ["role": ["none", "primary", "standby"][Int(min(2, r.read(ReplicationCounters.role)))],
                                "epoch": r.read(ReplicationCounters.epoch), "sync_engaged": r.read(ReplicationCounters.engaged),
                                "lag_records": r.read(ReplicationCounters.lag), "connected": r.read(ReplicationCounters.connected),
                                "digests_matched": r.read(ReplicationCounters.digestsMatched), "alarm": r.read(ReplicationCounters.alarm),
                                "promotions": r.read(ReplicationCounters.promotions)],
            ])
        }
        let symbolList: [[String: Any]] = (0..<file.symbolCount).map { i in
            let info = file.symbol(i), n = now.symbols[i], l = last.symbols[i]
            return ["name": info.name, "id": info.id, "shard": info.shard,
                    "rates": ["commands": Double(n[0] &- l[0]) / interval, "trades": Double(n[1] &- l[1]) / interval,
                              "rejects": Double(n[2] &- l[2]) / interval],
                    "totals": ["commands": n[0], "trades": n[1], "rejects": n[2], "traded_quantity": n[3]]]
        }
        let counters = file.pluginCounters()
        let plugins: [[String: Any]] = file.pluginStatuses().enumerated().map { i, p in
            var own: [String: Any] = [:]
            for c in counters where c.plugin == i { own[c.name] = c.value }
            return ["name": p.name, "version": p.version, "state": "\(p.state)", "health": p.healthName, "message": p.message,
                    "counters": own]
        }
        let frame: [String: Any] = [
            "instance": target.instance, "pid": file.enginePid, "state": "\(file.state)", "interval_s": interval,
            "time": Date().timeIntervalSince1970, "shards": shards, "symbols": symbolList, "plugins": plugins,
        ]
        guard let data = try? JSONSerialization.data(withJSONObject: frame, options: [.sortedKeys]) else { return "{}" }
        return String(decoding: data, as: UTF8.self)
    }
}
