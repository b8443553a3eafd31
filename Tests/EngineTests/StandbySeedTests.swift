// A standby catching up from a snapshot when the primary's journal no longer holds the records it
// needs ([engine] prune_journal): seeded from the primary's snapshot, it starts again and follows.
// And a primary that sends hostile seeds: nothing is staged, nothing restarts.
import CCRC32C
import Foundation
import Glibc
@testable import Engine
import CrossbookClient
import Journal
import OrderBook
import SharedMemory
import Testing
import TestSupport

extension FailoverTests {
    /// A primary and a standby that keep their snapshots (plugin snapshot-file) and prune their
    /// journals of 1 MiB segments.
    static func pruningPair(_ name: String, mode: String) -> (PairNode, PairNode) {
        let pa = freeLoopbackPort(), pb = freeLoopbackPort()
        let plugins = """

            [plugins]
            dir = "\(PluginSettings.executableDirectory)"
            [[plugins.load]]
            name = "snapshot-file"
            """
        let engine = "journal_segment_mb = 1\nprune_journal = true"
        return (PairNode(name: name + "-a", listen: pa, peer: pb, mode: mode, failoverAfterMs: nil, extra: plugins, engineExtra: engine),
                PairNode(name: name + "-b", listen: pb, peer: pa, mode: mode, failoverAfterMs: nil, extra: plugins, engineExtra: engine))
    }

    /// Starts `a` as the primary (a snapshot every 2,000 commands) and sends it 40,000 orders:
    /// 1 MiB segments hold about 9,000 records, so it prunes its first segments. Returns the
    /// snapshot options, for its standby.
    static func startPrunedPrimary(_ a: PairNode) throws -> [String] {
        let snapshots = ["--snapshot-every", "2000"]
        try a.start(standby: false, plugins: true, arguments: snapshots)
        #expect(waitFor(10) { a.isPrimary }, "\(a.log.all.suffix(5))")
        try sendAcknowledged(a, from: 1, count: 40_000)
        #expect(waitFor(10) { (JournalReader.firstKept(directory: a.data, shard: 0) ?? 1) > 1 }, "\(a.log.all.suffix(5))")
        #expect(a.log.contains("removed"), "\(a.log.all.suffix(5))")
        return snapshots
    }

    /// Sends `count` orders from `id` on, and waits until every one is acknowledged.
    static func sendAcknowledged(_ node: PairNode, from id: Int64, count: Int) throws {
        let client = try CrossbookClient(instance: node.name, directory: node.dir)
        defer { client.close() }
        let btc = try client.symbol("BTC-USD"), eth = try client.symbol("ETH-USD")
        var acked = 0
        for n in id..<(id + Int64(count)) {
            let order = NewOrder(orderId: n, side: n % 2 == 0 ? .buy : .sell, price: 990 + Price(n % 21), quantity: 1 + Quantity(n % 3))
            while !client.submit(.new(order), symbol: n % 3 == 0 ? eth : btc) {
                _ = try client.poll { if $0.kind == .accepted { acked += 1 } }
            }
            if n % 64 == 0 { _ = try client.poll { if $0.kind == .accepted { acked += 1 } } }
        }
        #expect(waitFor(20) {
            _ = try? client.poll { if $0.kind == .accepted { acked += 1 } }
            return acked == count
        }, "acknowledged \(acked) of \(count)")
    }

    @Test("a standby whose records the primary pruned (a new one, and one that fell behind) is seeded from the primary's snapshot, starts again, follows with equal digests; its old segments are kept aside; an offline replay of either gives the same state")
    func seededStandby() throws {
        let (a, b) = Self.pruningPair("hp", mode: "async")
        defer { a.terminate(); b.terminate(); a.remove(); b.remove() }
        let snapshots = try Self.startPrunedPrimary(a)
        let serving = { a.status().contains { $0.hasPrefix("serving") && $0.contains(" standbys 1 ") } }
        // A new standby: its empty journal is not a prefix the primary still holds.
        try b.start(standby: true, plugins: true, arguments: snapshots)
        #expect(waitFor(20) { serving() }, "\(b.log.all.suffix(8))")
        #expect(b.log.contains("seeded from the primary's snapshots"), "\(b.log.all.joined(separator: "\n"))\n----\n\(a.log.all.joined(separator: "\n"))")
        #expect(b.log.contains("seeded from the primary's snapshot at sequence"), "\(b.log.all.suffix(8))")
        #expect(a.log.contains("sent it the snapshots of shard(s) 0 at"))
        try Self.sendAcknowledged(a, from: 40_001, count: 3_000)
        let caughtUp = { b.status().contains { $0.contains("lag 0 ") && !$0.contains("digests_matched 0") } }
        #expect(waitFor(15) { caughtUp() }, "\(b.status())")
        // The standby stops; the primary takes 40,000 more and prunes past it.
        b.terminate()
        let behind = try JournalReader.scan(directory: b.data, shard: 0, repair: false,
                                            after: (JournalReader.firstKept(directory: b.data, shard: 0) ?? 1) - 1) { _, _, _ in }.lastSequence
        try Self.sendAcknowledged(a, from: 43_001, count: 40_000)
        #expect(waitFor(10) { (JournalReader.firstKept(directory: a.data, shard: 0) ?? 1) > behind + 1 },
                "primary starts at \(JournalReader.firstKept(directory: a.data, shard: 0) ?? 0), standby at \(behind)")
        b.log.clear()
        try b.start(standby: true, plugins: true, arguments: snapshots)
        #expect(waitFor(20) { b.log.contains("seeded from the primary's snapshot at sequence") && serving() }, "\(b.log.all.suffix(8))")
        // Records after the seed apply on top of it, digests compared along the way.
        try Self.sendAcknowledged(a, from: 83_001, count: 3_000)
        #expect(waitFor(15) { caughtUp() }, "\(b.status())")
        #expect(!b.status().joined().contains("ALARM"))
        // Its replaced segments are kept aside, not lost.
        let parent = (b.data as NSString).deletingLastPathComponent
        let aside = try FileManager.default.contentsOfDirectory(atPath: parent)
            .filter { $0.hasPrefix((b.data as NSString).lastPathComponent + ".replaced-") }
        #expect(aside.count >= 1 && aside.allSatisfy {
            ((try? FileManager.default.contentsOfDirectory(atPath: parent + "/" + $0)) ?? []).contains { $0.hasSuffix(".seg") }
        }, "\(aside)")
        a.terminate()
        b.terminate()
        // Each data directory alone (snapshot and journal) rebuilds the same state.
        let da = try offlineDigest(a.data, tag: "pa", snapshots: true), db = try offlineDigest(b.data, tag: "pb", snapshots: true)
        #expect(da != nil && da == db)
    }

    @Test("a primary that sends hostile seeds (an unknown shard, a huge total, parts out of order, a damaged record, a record of another sequence, seeded without a seed), or a good one to a standby without a snapshot store: nothing is staged, the standby does not restart and stays a standby (the last raises an alarm and refuses promotion)")
    func hostileSeeds() throws {
        let command = [UInt8](repeating: 0, count: 80)
        let good = rawRecord(type: 1, sequence: 50, payload: command)
        func payload(_ record: [UInt8], body: [UInt8] = [1, 2, 3, 4, 5, 6, 7, 8]) -> [UInt8] {
            withUnsafeBytes(of: UInt32(record.count).littleEndian) { Array($0) } + record + body
        }
        var damaged = good
        damaged[30] ^= 1
        let scenarios: [(String, [ReplicationMessage])] = [
            ("unknown shard", [.seed(shard: 7, sequence: 50, total: UInt64(payload(good).count), offset: 0, bytes: payload(good)), .seeded]),
            ("huge total", [.seed(shard: 0, sequence: 50, total: 1 << 40, offset: 0, bytes: payload(good)), .seeded]),
            ("out of order", [.seed(shard: 0, sequence: 50, total: UInt64(payload(good).count), offset: 8, bytes: Array(payload(good)[8...])), .seeded]),
            ("cut short", [.seed(shard: 0, sequence: 50, total: UInt64(payload(good).count) + 10, offset: 0, bytes: payload(good)), .seeded]),
            ("damaged record", [.seed(shard: 0, sequence: 50, total: UInt64(payload(damaged).count), offset: 0, bytes: payload(damaged)), .seeded]),
            ("another sequence", [.seed(shard: 0, sequence: 49, total: UInt64(payload(good).count), offset: 0, bytes: payload(good)), .seeded]),
            ("record longer than the seed", [.seed(shard: 0, sequence: 50, total: 12, offset: 0, bytes: [200, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8]), .seeded]),
            ("nothing", [.seeded]),
            // Well formed, but this standby has no snapshot store to install it into.
            ("no snapshot store", [.seed(shard: 0, sequence: 50, total: UInt64(payload(good).count), offset: 0, bytes: payload(good)), .seeded]),
        ]
        for (name, messages) in scenarios {
            let data = NSTemporaryDirectory() + "crossbook-ha-hseed-\(UUID().uuidString.prefix(8))"
            defer { removeTree(data) }
            let fake = try FakePrimary("hseed", data: data)
            defer { fake.stop() }
            guard fake.start(), let connection = fake.connection else { Issue.record("\(name): no hello"); continue }
            let (engine, log) = (fake.engine, fake.log)
            for m in messages { try connection.send(m) }
            #expect(waitFor(5) { log.contains("seeding from the primary's snapshots failed") }, "\(name): \(log.all.suffix(3))")
            #expect(access(StandbySeed.stagedPath(data, shard: 0), F_OK) != 0, "\(name): a seed was staged")
            #expect(!engine.restartsToInstall && engine.role == .standby, "\(name)")
            if name == "no snapshot store" {
                // It cannot follow: an alarm, and no promotion this far behind.
                #expect(waitFor(5) { engine.replicationStatus().joined().contains("ALARM") && log.contains("no snapshot-store plugin") },
                        "\(engine.replicationStatus())")
                #expect(throws: EngineError.self) { try engine.promote() }
            }
            connection.shutdownNow()
        }
    }

    @Test("a staged seed that is damaged on disk stops the standby's start with the file named; a good one without a snapshot store is refused with the reason")
    func damagedStagedSeed() throws {
        let data = NSTemporaryDirectory() + "crossbook-ha-sseed-\(UUID().uuidString.prefix(8))"
        mkdir(data, 0o700)
        defer { removeTree(data) }
        let seed = StandbySeed(shard: 0, sequence: 50, record: rawRecord(type: 1, sequence: 50, payload: [UInt8](repeating: 0, count: 80)),
                               body: [0, 0, 0, 0, 0, 0, 0, 0])
        try seed.stage(in: data)
        #expect(try StandbySeed.staged(in: data, shard: 0) == seed)
        // No snapshot store (replicatedEngine loads no plugin): refused, the seed left staged.
        #expect { _ = try replicatedEngine("sseed", data: data, role: .standby, listen: nil, peer: freeLoopbackPort()) } throws: {
            "\($0)".contains("no snapshot-store plugin is loaded")
        }
        #expect(access(StandbySeed.stagedPath(data, shard: 0), F_OK) == 0)
        // One flipped byte: named, never installed.
        let path = StandbySeed.stagedPath(data, shard: 0)
        var bytes = [UInt8](FileManager.default.contents(atPath: path)!)
        bytes[bytes.count - 3] ^= 0x40
        FileManager.default.createFile(atPath: path, contents: Data(bytes))
        #expect { _ = try StandbySeed.staged(in: data, shard: 0) } throws: { "\($0)".contains("CRC does not hold") }
        // Cut short.
        FileManager.default.createFile(atPath: path, contents: Data(bytes.prefix(30)))
        #expect { _ = try StandbySeed.staged(in: data, shard: 0) } throws: { "\($0)".contains(path) }
    }

    @Test("[engine] journal_segment_mb, prune_journal, journal_prezero, shard_idle, completion_wakes_on_doorbell: out of range or of the wrong type, refused with the reason; in range, accepted")
    func pruneConfig() throws {
        let config = NSTemporaryDirectory() + "crossbook-prune-\(UUID().uuidString.prefix(8)).toml"
        defer { unlink(config) }
        for (text, reason) in [("journal_segment_mb = 0", "journal_segment_mb must be between 1 and 4096"),
                               ("journal_segment_mb = 5000", "journal_segment_mb must be between 1 and 4096"),
                               ("journal_segment_mb = \"big\"", "journal_segment_mb"),
                               ("prune_journal = 1", "prune_journal must be true or false"),
                               ("journal_prezero = \"yes\"", "journal_prezero must be true or false"),
                               ("shard_idle = \"busy\"", "shard_idle must be \"park\" or \"spin\""),
                               ("completion_wakes_on_doorbell = \"yes\"", "completion_wakes_on_doorbell must be true or false")] {
            try "[engine]\n\(text)\n[[symbols]]\nname = \"BTC-USD\"\n".write(toFile: config, atomically: true, encoding: .utf8)
            let result = try MigrationTests().crossbook(["run", "--config", config, "--check-config"])
            #expect(result.status != 0 && result.output.contains(reason), "\(text): \(result)")
        }
        try "[engine]\njournal_segment_mb = 1\nprune_journal = true\njournal_prezero = true\nshard_idle = \"spin\"\ncompletion_wakes_on_doorbell = true\n[[symbols]]\nname = \"BTC-USD\"\n".write(toFile: config, atomically: true, encoding: .utf8)
        #expect(try MigrationTests().crossbook(["run", "--config", config, "--check-config"]).status == 0)
    }

    @Test("a crash at any point of a seed's install (before it, after the old segments moved and the new journal started, after the snapshot stored): the next start installs it again and recovers at the seed's sequence; the replaced segments are kept aside")
    func seedInstallCrashes() throws {
        let data = NSTemporaryDirectory() + "crossbook-ha-iseed-\(UUID().uuidString.prefix(8))"
        mkdir(data, 0o700)
        defer {
            removeTree(data)
            let parent = (data as NSString).deletingLastPathComponent
            for aside in (try? FileManager.default.contentsOfDirectory(atPath: parent)) ?? []
            where aside.hasPrefix((data as NSString).lastPathComponent + ".replaced-") { removeTree(parent + "/" + aside) }
        }
        // The standby's own journal before the seed: records 1...10 of a kind the engine skips.
        let writer = try JournalWriter(config: JournalConfig(directory: data, shard: 0, segmentSize: 1 << 20), lastSequence: 0)
        for n in UInt64(1)...10 { _ = try [UInt8](repeating: 7, count: 16).withUnsafeBytes { try writer.append(type: 99, sequence: n, payload: $0) } }
        try writer.flush()
        // An empty book set at sequence 50: highest session 0, no book.
        let seed = StandbySeed(shard: 0, sequence: 50, record: rawRecord(type: 99, sequence: 50, payload: [UInt8](repeating: 3, count: 16)),
                               body: [UInt8](repeating: 0, count: 8))
        func start() throws -> (Engine, LogLines) {
            let log = LogLines()
            var settings = EngineSettings(
                instance: "iseed", directory: testDirectory(), shards: [ShardSettings(core: nil)],
                symbols: [(spec: SymbolSpec(name: "BTC-USD", id: 1), shard: 0)],
                capacity: BookCapacity(orders: 1 << 12, levels: 1 << 8),
                wait: WaitStrategy(spins: 1000, yields: 10, park: true, parkTimeoutNanoseconds: 20_000_000))
            settings.durability = .sync
            settings.dataDirectory = data
            settings.plugins = PluginSettings(directory: PluginSettings.executableDirectory, load: [PluginSpec(name: "snapshot-file")])
            settings.replication = ReplicationSettings(role: .standby, peer: "127.0.0.1:\(freeLoopbackPort())")
            let engine = Engine(settings: settings, log: { log.append($0) })
            for line in try engine.start() { log.append(line) }
            return (engine, log)
        }
        func snapshots() -> [String] { ((try? FileManager.default.contentsOfDirectory(atPath: data)) ?? []).filter { $0.hasPrefix("snapshot-") } }
        // 1. Staged, nothing installed yet (a crash right after staging).
        try seed.stage(in: data)
        var (engine, log) = try start()
        #expect(log.contains("seeded from the primary's snapshot at sequence 50"), "\(log.all.suffix(5))")
        #expect(engine.replicationStatus().contains { $0.hasPrefix("shard 0 applied 50 ") }, "\(engine.replicationStatus())")
        #expect(access(StandbySeed.stagedPath(data, shard: 0), F_OK) != 0)
        engine.stop()
        #expect(JournalReader.firstKept(directory: data, shard: 0) == 50)
        // 2. The new journal started, the snapshot not stored (a crash between them).
        for name in snapshots() { unlink(data + "/" + name) }
        try seed.stage(in: data)
        (engine, log) = try start()
        #expect(log.contains("seeded from the primary's snapshot at sequence 50"), "\(log.all.suffix(5))")
        #expect(engine.replicationStatus().contains { $0.hasPrefix("shard 0 applied 50 ") }, "\(engine.replicationStatus())")
        engine.stop()
        // 3. The snapshot stored, the staged file not yet removed (a crash just before).
        try seed.stage(in: data)
        (engine, log) = try start()
        #expect(engine.replicationStatus().contains { $0.hasPrefix("shard 0 applied 50 ") }, "\(engine.replicationStatus())")
        engine.stop()
        // And without a seed, a plain restart recovers there too.
        (engine, log) = try start()
        #expect(!log.contains("seeded from"))
        #expect(engine.replicationStatus().contains { $0.hasPrefix("shard 0 applied 50 ") }, "\(engine.replicationStatus())")
        engine.stop()
        // The standby's own first records were moved aside, not lost.
        let parent = (data as NSString).deletingLastPathComponent
        let aside = ((try? FileManager.default.contentsOfDirectory(atPath: parent)) ?? [])
            .filter { $0.hasPrefix((data as NSString).lastPathComponent + ".replaced-") }
        let moved = aside.flatMap { dir in ((try? FileManager.default.contentsOfDirectory(atPath: parent + "/" + dir)) ?? []).map { parent + "/" + dir + "/" + $0 } }
        #expect(moved.contains { $0.hasSuffix(JournalLayout.segmentName(shard: 0, firstSequence: 1)) }, "\(moved)")
    }

    @Test("an old primary with records the new primary never had comes back as its standby without a rebuild: it finds the common prefix by probing, cuts its journal back to it (the cut records copied aside), starts again and converges to the new primary's state")
    func oldPrimaryCutBack() throws {
        let pa = freeLoopbackPort(), pb = freeLoopbackPort()
        let a = PairNode(name: "hc-a", listen: pa, peer: pb, mode: "async", failoverAfterMs: nil)
        let b = PairNode(name: "hc-b", listen: pb, peer: pa, mode: "async", failoverAfterMs: nil)
        defer { a.terminate(); b.terminate(); a.remove(); b.remove() }
        try a.start(standby: false)
        #expect(waitFor(10) { a.isPrimary })
        try b.start(standby: true)
        #expect(waitFor(10) { a.status().contains { $0.hasPrefix("serving") && $0.contains(" standbys 1 ") } })
        try Self.sendAcknowledged(a, from: 1, count: 5_000)
        #expect(waitFor(15) { b.status().contains { $0.contains("lag 0 ") } }, "\(b.status())")
        // The standby goes; the primary (async) takes 3,000 more alone, then dies.
        b.terminate()
        try Self.sendAcknowledged(a, from: 5_001, count: 3_000)
        a.kill9()
        // The standby comes back and is promoted by the operator; it takes orders of its own.
        try b.start(standby: true)
        #expect(waitFor(10) { !b.status().isEmpty })
        let answer = try Engine.ask(directory: b.dir, "promote", timeout: 10)
        #expect(answer.first == "ok", "\(answer)")
        #expect(waitFor(10) { b.isPrimary })
        try Self.sendAcknowledged(b, from: 100_001, count: 2_000)
        // The old primary, as the standby, with its own journal: 3,000 records past the common prefix.
        let common = try JournalReader.scan(directory: b.data, shard: 0, repair: false) { _, _, _ in }.lastSequence - 2_001
        try a.start(standby: true)
        #expect(waitFor(20) { b.status().contains { $0.hasPrefix("serving") && $0.contains(" standbys 1 ") } }, "\(a.log.all.suffix(6))")
        #expect(a.log.contains("cutting it back after shard 0: \(common) (3000 records)"), "\(a.log.all.suffix(8))")
        #expect(a.log.contains("journal cut back after sequence \(common)"), "\(a.log.all.suffix(8))")
        #expect(b.log.contains("its journal has diverged from this primary's"))
        try Self.sendAcknowledged(b, from: 102_001, count: 1_000)
        #expect(waitFor(15) { a.status().contains { $0.contains("lag 0 ") && !$0.contains("digests_matched 0") } }, "\(a.status())")
        #expect(!a.status().joined().contains("ALARM"))
        a.terminate()
        b.terminate()
        // The same journal (the new primary's) in both, the same state rebuilt from either.
        let ca = try journaledClientIds(a.data), cb = try journaledClientIds(b.data)
        #expect(ca == cb && ca.count == 8_000, "\(ca.count) / \(cb.count)")
        #expect(ca[5_001] == nil && ca[100_001] == 1)
        let da = try offlineDigest(a.data, tag: "ca"), db = try offlineDigest(b.data, tag: "cb")
        #expect(da != nil && da == db)
        // The 3,000 records cut are kept aside, not lost.
        let parent = (a.data as NSString).deletingLastPathComponent
        let aside = try FileManager.default.contentsOfDirectory(atPath: parent)
            .filter { $0.hasPrefix((a.data as NSString).lastPathComponent + ".diverged-") }
        var kept = Set<Int64>()
        for dir in aside {
            let copy = parent + "/" + dir
            for (id, _) in (try? journaledClientIds(copy)) ?? [:] { kept.insert(id) }
        }
        #expect((5_001...8_000).allSatisfy { kept.contains($0) }, "aside: \(aside), \(kept.count) orders")
    }

    @Test("a primary that says diverged and then answers probes wrongly (another sequence, another shard, a welcome, silence): the standby cuts nothing and stays a standby")
    func hostileProbeAnswers() throws {
        for scenario in ["other sequence", "other shard", "welcome", "silence"] {
            let data = NSTemporaryDirectory() + "crossbook-ha-hprobe-\(UUID().uuidString.prefix(8))"
            mkdir(data, 0o700)
            defer { removeTree(data) }
            // The standby's journal: records 1...10 of a kind the engine skips.
            let writer = try JournalWriter(config: JournalConfig(directory: data, shard: 0, segmentSize: 1 << 20), lastSequence: 0)
            for n in UInt64(1)...10 { _ = try [UInt8](repeating: 7, count: 16).withUnsafeBytes { try writer.append(type: 99, sequence: n, payload: $0) } }
            try writer.flush()
            let fake = try FakePrimary("hprobe", data: data)
            defer { fake.stop() }
            guard fake.start(), let connection = fake.connection, case .hello(_, _, let shards, _, _)? = fake.hello, shards.first?.last == 10 else {
                Issue.record("\(scenario): \(String(describing: fake.hello))"); continue
            }
            let (engine, log) = (fake.engine, fake.log)
            try connection.send(.diverged(shard: 0, last: 10))
            var probe: ReplicationMessage?
            _ = waitFor(3) { probe = try? connection.receive(timeoutMilliseconds: 50); return probe != nil }
            guard case .probe(0, let sequence)? = probe else { Issue.record("\(scenario): no probe: \(String(describing: probe))"); continue }
            switch scenario {
            case "other sequence": try connection.send(.probed(shard: 0, sequence: sequence + 1, crc: nil))
            case "other shard": try connection.send(.probed(shard: 3, sequence: sequence, crc: nil))
            case "welcome": try connection.send(.welcome(epoch: 0, mode: .async, instance: "fake-primary"))
            default: break
            }
            #expect(waitFor(8) { log.contains("the common prefix was not found") }, "\(scenario): \(log.all.suffix(3))")
            #expect(access(JournalCut.stagedPath(data, shard: 0), F_OK) != 0, "\(scenario): a cut was staged")
            #expect(!engine.restartsToInstall && engine.role == .standby)
            #expect(JournalReader.segments(directory: data, shard: 0).count == 1)
            connection.shutdownNow()
        }
    }

    @Test("sync mode: a primary running alone prunes; a new standby is seeded from its snapshot, starts again, catches up and engages sync; orders acknowledged then (each durable on both) leave the standby at lag 0 with equal digests, live and offline")
    func seededStandbySync() throws {
        let (a, b) = Self.pruningPair("hq", mode: "sync")
        defer { a.terminate(); b.terminate(); a.remove(); b.remove() }
        let snapshots = try Self.startPrunedPrimary(a)
        try b.start(standby: true, plugins: true, arguments: snapshots)
        #expect(waitFor(20) { a.engagedWithStandby }, "\(a.status()) \(b.log.all.suffix(6))")
        #expect(b.log.contains("seeded from the primary's snapshot at sequence"), "\(b.log.all.suffix(8))")
        // Engaged: each order acknowledged now is durable on the standby too.
        try Self.sendAcknowledged(a, from: 40_001, count: 5_000)
        #expect(waitFor(15) { b.status().contains { $0.contains("lag 0 ") && !$0.contains("digests_matched 0") } }, "\(b.status())")
        #expect(!b.status().joined().contains("ALARM"))
        a.terminate()
        b.terminate()
        let da = try offlineDigest(a.data, tag: "qa", snapshots: true), db = try offlineDigest(b.data, tag: "qb", snapshots: true)
        #expect(da != nil && da == db)
    }

    @Test("a full disk when a cut or a seed is staged: nothing half-written stays, the standby raises an alarm instead of restarting, and it cannot be promoted")
    func stagingOnAFullDisk() throws {
        let mount = NSTemporaryDirectory() + "crossbook-fullstage-\(UUID().uuidString.prefix(8))"
        mkdir(mount, 0o700)
        defer { rmdir(mount) }
        try withTmpfs(size: "80m", at: mount) {
            let data = mount + "/data"
            mkdir(data, 0o700)
            let writer = try JournalWriter(config: JournalConfig(directory: data, shard: 0, segmentSize: 1 << 20), lastSequence: 0)
            for n in UInt64(1)...10 { _ = try [UInt8](repeating: 7, count: 16).withUnsafeBytes { try writer.append(type: 99, sequence: n, payload: $0) } }
            try writer.flush()
            let fake = try FakePrimary("fullstage", data: data)
            defer { fake.stop() }
            // The rest of the file system filled, as another process could.
            let filler = open(mount + "/filler", O_WRONLY | O_CREAT, 0o600)
            let block = [UInt8](repeating: 1, count: 1 << 16)
            while write(filler, block, block.count) > 0 {}
            close(filler)
            // A seed cannot be staged: a clear error, no temporary file left.
            let seed = StandbySeed(shard: 0, sequence: 50, record: rawRecord(type: 99, sequence: 50, payload: [UInt8](repeating: 3, count: 16)),
                                   body: [UInt8](repeating: 0, count: 1 << 20))
            #expect(throws: EngineError.self) { try seed.stage(in: data) }
            #expect(access(StandbySeed.stagedPath(data, shard: 0), F_OK) != 0 && access(StandbySeed.stagedPath(data, shard: 0) + ".tmp", F_OK) != 0)
            // A primary that says the journal diverged at its first record: the cut cannot be staged.
            guard fake.start(), let connection = fake.connection else { Issue.record("no hello"); return }
            try connection.send(.diverged(shard: 0, last: 10))
            _ = waitFor(5) {
                guard let m = try? connection.receive(timeoutMilliseconds: 50), case .probe(let s, let q) = m else { return false }
                try? connection.send(.probed(shard: s, sequence: q, crc: nil))
                return false
            }
            #expect(fake.log.contains("cutting the journal back failed"), "\(fake.log.all.suffix(3))")
            #expect(fake.engine.replicationStatus().joined().contains("ALARM"), "\(fake.engine.replicationStatus())")
            #expect(access(JournalCut.stagedPath(data, shard: 0), F_OK) != 0 && access(JournalCut.stagedPath(data, shard: 0) + ".tmp", F_OK) != 0)
            #expect(!fake.engine.restartsToInstall && fake.engine.role == .standby)
            #expect(throws: EngineError.self) { try fake.engine.promote() }
            // Its journal is untouched.
            #expect(try JournalReader.scan(directory: data, shard: 0, repair: false) { _, _, _ in }.lastSequence == 10)
        }
    }
}
