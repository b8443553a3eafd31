// Durability: nothing acknowledged is lost, whatever moment the engine is killed at; a restart
// rebuilds exactly the state an independent replay of the journal builds.
import CrossbookClient
import Engine
import Foundation
import Glibc
import Journal
import OrderBook
import SharedMemory
import Testing
import TestSupport
import Wire

/// The embedded default's symbols, as `crossbook run` without a config has them.
let defaultSymbols = ["BTC-USD", "ETH-USD", "SOL-USD", "XRP-USD"]

func durableEngine(_ dir: String, data: String, instance: String = "d", durability: Durability = .sync,
                   cleanStale: Bool = false, symbols: [String] = ["BTC-USD"],
                   capacity: BookCapacity = BookCapacity(orders: 1 << 16, levels: 1 << 12),
                   snapshotEvery: UInt64 = 0, segmentSize: Int = 1 << 20, log: LogLines? = nil,
                   wait: WaitStrategy = WaitStrategy(spins: 1000, yields: 10, park: true, parkTimeoutNanoseconds: 50_000_000),
                   pools: BookCapacity? = nil) throws -> Engine {
    var settings = EngineSettings(
        instance: instance, directory: dir, shards: [ShardSettings(core: nil, pools: pools)],
        symbols: symbols.enumerated().map { (spec: SymbolSpec(name: $1, id: UInt32($0 + 1)), shard: 0) },
        capacity: capacity,
        wait: wait, cleanStale: cleanStale)
    settings.durability = durability
    settings.dataDirectory = data
    settings.journalSegmentSize = segmentSize
    settings.snapshotEvery = snapshotEvery
    // Snapshots are kept by the default store, plugins/snapshot-file, built beside this test.
    settings.plugins = PluginSettings(directory: PluginSettings.executableDirectory, load: [PluginSpec(name: "snapshot-file")])
    let engine = Engine(settings: settings, log: { log?.append($0) })
    for line in try engine.start() { log?.append(line) }
    return engine
}

/// The (session, client order id) of every new order in the journal (sequenced at or after
/// `since`, an engine time: session ids are reused across restarts once their orders are gone).
func journaledOrders(_ data: String, since: UInt64 = 0) throws -> Set<Int64> {
    var out = Set<Int64>()
    _ = try JournalReader.scan(directory: data, shard: 0, repair: false) { type, _, payload in
        guard type == 1, payload.count == 80,
              UInt64(littleEndian: payload.loadUnaligned(fromByteOffset: 72, as: UInt64.self)) >= since,
              let decoded = try? CommandRecord.decode(payload.baseAddress!), case .new(let order) = decoded.command else { return }
        let session = Int64(UInt32(littleEndian: payload.loadUnaligned(fromByteOffset: 64, as: UInt32.self)))
        out.insert(session << 48 | order.orderId)
    }
    return out
}

func copyDirectory(_ from: String, _ to: String, snapshots: Bool = false) {
    mkdir(to, 0o700)
    // Journal segments only: the copy is replayed from the beginning, without snapshots (with
    // `snapshots`, the snapshot files too: a pruned journal needs them).
    for name in (try? FileManager.default.contentsOfDirectory(atPath: from)) ?? []
    where name.hasPrefix("journal-") || (snapshots && name.hasPrefix("snapshot-")) {
        try? FileManager.default.copyItem(atPath: from + "/" + name, toPath: to + "/" + name)
    }
}


@Suite("Durability", .serialized)
struct DurabilityTests {
    @Test("sync: acknowledged orders are journaled; a restart rebuilds the same state")
    func restart() throws {
        let dir = testDirectory(), data = NSTemporaryDirectory() + "crossbook-data-\(UUID().uuidString.prefix(8))"
        defer { removeTree(data) }
        let first = try durableEngine(dir, data: data)
        var info = stat()
        #expect(stat(data + "/CONFIGURATION", &info) == 0 && info.st_mode & 0o777 == 0o600, "CONFIGURATION is readable by others")
        let client = try CrossbookClient(instance: "d", directory: dir)
        let btc = try client.symbol("BTC-USD")
        for id in 1...2000 {
            let side: Side = id % 2 == 0 ? .buy : .sell
            while !client.submit(.new(NewOrder(orderId: OrderId(id), side: side, price: 100 + Price(id % 7) - 3,
                                               quantity: 1 + Quantity(id % 5))), symbol: btc) {
                _ = try client.poll { _ in }
            }
        }
        var acked = Set<Int64>()
        let deadline = Date().addingTimeInterval(10)
        while acked.count < 2000 && Date() < deadline {
            try client.waitForReports(timeout: 0.05) { if $0.kind == .accepted { acked.insert(Int64(client.sessionId) << 48 | $0.orderId) } }
        }
        #expect(acked.count == 2000)
        #expect(acked.isSubset(of: try journaledOrders(data)))
        client.close()
        first.stop()
        let second = try durableEngine(dir, data: data)
        defer { second.stop() }
        #expect(second.recoveredDigests == first.finalDigests)
        #expect(first.finalDigests != [0])
    }

    @Test("sync with the shard sleeping for its journal, spinning, woken by the doorbell too (completion_wakes_on_doorbell), and never parking (shard_idle spin): every order acknowledged one at a time is journaled, the engine stops, and a restart rebuilds the same state")
    func completionWaits() throws {
        for (name, waitNs, bell, parks) in [("spin", UInt64(0), false, true), ("kernel wait", UInt64(200_000), false, true),
                                            ("doorbell too", UInt64(200_000), true, true), ("shard_idle spin", UInt64(200_000), false, false)] {
            let dir = testDirectory(), data = NSTemporaryDirectory() + "crossbook-data-\(UUID().uuidString.prefix(8))"
            defer { removeTree(data) }
            var wait = WaitStrategy(spins: 1000, yields: 10, park: true, parkTimeoutNanoseconds: 50_000_000, completionWaitNanoseconds: waitNs)
            wait.completionWakesOnDoorbell = bell
            if !parks {
                // [engine] shard_idle = "spin": the shard never sleeps, never yields.
                wait.spins = .max
                wait.yields = 0
                wait.park = false
            }
            let first = try durableEngine(dir, data: data, wait: wait)
            let client = try CrossbookClient(instance: "d", directory: dir)
            let btc = try client.symbol("BTC-USD")
            var acked = Set<Int64>()
            // One at a time, and in bursts: commands arrive while the shard waits for the disk.
            for id in 1...1500 {
                #expect(client.submit(.new(NewOrder(orderId: OrderId(id), side: id % 2 == 0 ? .buy : .sell, price: 100 + Price(id % 7) - 3,
                                                    quantity: 1 + Quantity(id % 5))), symbol: btc))
                if id > 1000 && id % 50 != 0 { continue }
                let deadline = Date().addingTimeInterval(5)
                while acked.count < id && Date() < deadline {
                    try client.waitForReports(timeout: 0.05) { if $0.kind == .accepted { acked.insert(Int64(client.sessionId) << 48 | $0.orderId) } }
                }
            }
            #expect(acked.count == 1500, "\(name): \(acked.count) acknowledged")
            #expect(acked.isSubset(of: try journaledOrders(data)), "\(name)")
            client.close()
            first.stop()
            let second = try durableEngine(dir, data: data)
            #expect(second.recoveredDigests == first.finalDigests, "\(name)")
            second.stop()
        }
    }

    @Test("snapshots: a restart loads the newest and replays the rest; a corrupt one falls back to an older")
    func snapshots() throws {
        let dir = testDirectory(), data = NSTemporaryDirectory() + "crossbook-data-\(UUID().uuidString.prefix(8))"
        defer { removeTree(data) }
        let first = try durableEngine(dir, data: data, snapshotEvery: 500)
        let client = try CrossbookClient(instance: "d", directory: dir)
        let btc = try client.symbol("BTC-USD")
        var acks = 0
        for id in 1...3000 {
            let side: Side = id % 2 == 0 ? .buy : .sell
            while !client.submit(.new(NewOrder(orderId: OrderId(id), side: side, price: 100 + Price(id % 9) - 4,
                                               quantity: 1 + Quantity(id % 3))), symbol: btc) {
                _ = try client.poll { if $0.kind == .accepted { acks += 1 } }
            }
        }
        let deadline = Date().addingTimeInterval(10)
        while acks < 3000 && Date() < deadline { try client.waitForReports(timeout: 0.05) { if $0.kind == .accepted { acks += 1 } } }
        client.close()
        first.stop()
        let kept = ((try? FileManager.default.contentsOfDirectory(atPath: data)) ?? [])
            .filter { $0.hasPrefix("snapshot-0-") && $0.hasSuffix(".snap") }.sorted(by: >).map { (name: $0, x: 0) }
        // One snapshot may be pending at a time (it waits for the journal), so a burst takes fewer
        // than one per 500 commands; the newest three at most are kept.
        #expect(kept.count >= 2 && kept.count <= 3, "\(kept.map(\.name))")
        let log = LogLines()
        let second = try durableEngine(dir, data: data, log: log)
        #expect(second.recoveredDigests == first.finalDigests)
        second.stop()
        #expect(log.contains("loaded snapshot \(kept[0].name)"))
        // Corrupt the newest: the restart says so, takes the one before, and ends in the same state.
        let fd = open(data + "/" + kept[0].name, O_RDWR)
        var byte: UInt8 = 0xFF
        _ = pwrite(fd, &byte, 1, 40)
        close(fd)
        let fallbackLog = LogLines()
        let third = try durableEngine(dir, data: data, log: fallbackLog)
        defer { third.stop() }
        #expect(third.recoveredDigests == first.finalDigests)
        #expect(fallbackLog.contains("\(kept[0].name) unusable"))
        #expect(fallbackLog.contains("loaded snapshot \(kept[1].name)"))
    }

    /// Sends orders 1...count to a fresh engine on `data` and waits for their acknowledgements.
    func fill(_ data: String, instance: String, count: Int, snapshotEvery: UInt64 = 0, segmentSize: Int = 1 << 20,
              priceShift: Price = 0) throws -> [UInt64] {
        let dir = testDirectory()
        let engine = try durableEngine(dir, data: data, instance: instance, snapshotEvery: snapshotEvery, segmentSize: segmentSize)
        let client = try CrossbookClient(instance: instance, directory: dir)
        let btc = try client.symbol("BTC-USD")
        var acks = 0
        for id in 1...count {
            let side: Side = id % 2 == 0 ? .buy : .sell
            while !client.submit(.new(NewOrder(orderId: OrderId(id), side: side, price: 100 + priceShift + Price(id % 9) - 4,
                                               quantity: 1 + Quantity(id % 3))), symbol: btc) {
                _ = try client.poll { if $0.kind == .accepted { acks += 1 } }
            }
        }
        let deadline = Date().addingTimeInterval(10)
        while acks < count && Date() < deadline { try client.waitForReports(timeout: 0.05) { if $0.kind == .accepted { acks += 1 } } }
        client.close()
        engine.stop()
        return engine.finalDigests
    }

    func snapshotNames(_ data: String) -> [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: data)) ?? [])
            .filter { $0.hasPrefix("snapshot-0-") && $0.hasSuffix(".snap") }.sorted(by: >)
    }

    @Test("a snapshot from another data directory is refused: the restart falls back and rebuilds the right books")
    func foreignSnapshot() throws {
        let a = NSTemporaryDirectory() + "crossbook-data-\(UUID().uuidString.prefix(8))"
        let b = NSTemporaryDirectory() + "crossbook-data-\(UUID().uuidString.prefix(8))"
        defer { removeTree(a); removeTree(b) }
        let digestA = try fill(a, instance: "fa", count: 3000, snapshotEvery: 500)
        _ = try fill(b, instance: "fb", count: 3000, snapshotEvery: 500, priceShift: 3)
        // B's newest snapshot, under a name that sorts before all of A's.
        let theirs = snapshotNames(b)[0]
        let planted = "snapshot-0-09999999999999999999.snap"
        #expect(snapshotNames(a)[0] < planted)
        try FileManager.default.copyItem(atPath: b + "/" + theirs, toPath: a + "/" + planted)
        let log = LogLines()
        let again = try durableEngine(testDirectory(), data: a, instance: "fa2", log: log)
        defer { again.stop() }
        #expect(again.recoveredDigests == digestA)
        #expect(log.contains("\(planted) unusable"), "\(log.all)")
        #expect(log.contains("another journal"), "\(log.all)")
    }

    @Test("a snapshot whose sequence was changed is refused")
    func resequencedSnapshot() throws {
        let data = NSTemporaryDirectory() + "crossbook-data-\(UUID().uuidString.prefix(8))"
        defer { removeTree(data) }
        let digest = try fill(data, instance: "rs", count: 3000, snapshotEvery: 500)
        let newest = snapshotNames(data)[0]
        // The snapshot file's header says which sequence its books are after: move it 100 on.
        let fd = open(data + "/" + newest, O_RDWR)
        var at: UInt64 = 0
        _ = pread(fd, &at, 8, 16)
        at += 100
        _ = pwrite(fd, &at, 8, 16)
        close(fd)
        let log = LogLines()
        let again = try durableEngine(testDirectory(), data: data, instance: "rs2", log: log)
        defer { again.stop() }
        #expect(again.recoveredDigests == digest)
        #expect(log.contains("\(newest) unusable"), "\(log.all)")
    }

    @Test("a journal whose first segment is gone refuses to start, and journal verify fails")
    func missingFirstSegment() throws {
        let data = NSTemporaryDirectory() + "crossbook-data-\(UUID().uuidString.prefix(8))"
        defer { removeTree(data) }
        _ = try fill(data, instance: "ms", count: 3000, segmentSize: 64 << 10)
        let segments = JournalReader.segments(directory: data, shard: 0)
        #expect(segments.count > 2)
        unlink(segments[0])
        #expect {
            _ = try durableEngine(testDirectory(), data: data, instance: "ms2")
        } throws: { "\($0)".contains("segments before it are missing") }
        #expect(throws: JournalError.self) {
            _ = try JournalReader.scan(directory: data, shard: 0, repair: false) { _, _, _ in }
        }
    }

    @Test("after a restart, session ids whose orders are all gone are handed out again; ids that own resting orders are not")
    func sessionIdsReused() throws {
        let data = NSTemporaryDirectory() + "crossbook-data-\(UUID().uuidString.prefix(8))"
        defer { removeTree(data) }
        let dir = testDirectory()
        let first = try durableEngine(dir, data: data, instance: "sr")
        let a = try CrossbookClient(instance: "sr", directory: dir)
        let b = try CrossbookClient(instance: "sr", directory: dir)
        #expect(a.sessionId == 1 && b.sessionId == 2)
        let btc = try a.symbol("BTC-USD")
        // a's order goes away (cancelled); b's rests.
        #expect(a.submit(.new(NewOrder(orderId: 7, side: .buy, price: 100, quantity: 1)), symbol: btc))
        #expect(a.submit(.cancel(CancelOrder(orderId: 7)), symbol: btc))
        #expect(b.submit(.new(NewOrder(orderId: 7, side: .buy, price: 99, quantity: 1)), symbol: btc))
        var seen = 0
        let deadline = Date().addingTimeInterval(5)
        while seen < 3 && Date() < deadline {
            seen += try a.waitForReports(timeout: 0.05) { _ in } + b.waitForReports(timeout: 0.05) { _ in }
        }
        a.close()
        b.close()
        first.stop()
        let second = try durableEngine(dir, data: data, instance: "sr")
        defer { second.stop() }
        let c = try CrossbookClient(instance: "sr", directory: dir)
        let d = try CrossbookClient(instance: "sr", directory: dir)
        defer { c.close(); d.close() }
        #expect(c.sessionId == 1, "a's id is free again: \(c.sessionId)")
        #expect(d.sessionId == 3, "b's id owns a resting order: \(d.sessionId)")
        // c, with a's old id, cannot touch b's order.
        #expect(c.submit(.cancel(CancelOrder(orderId: 7)), symbol: btc))
        var rejected = false
        _ = try c.waitForReports(timeout: 2) { if $0.kind == .rejected { rejected = true } }
        #expect(rejected)
    }

    @Test("journals written under one configuration are refused under another")
    func configurationMismatch() throws {
        let data = NSTemporaryDirectory() + "crossbook-data-\(UUID().uuidString.prefix(8))"
        defer { removeTree(data) }
        let first = try durableEngine(testDirectory(), data: data, instance: "c1")
        first.stop()
        #expect(throws: (any Error).self) {
            _ = try durableEngine(testDirectory(), data: data, instance: "c2",
                                  capacity: BookCapacity(orders: 1 << 10, levels: 1 << 8))
        }
        do {
            _ = try durableEngine(testDirectory(), data: data, instance: "c3", symbols: ["BTC-USD", "ETH-USD"])
            Issue.record("a different symbol list was accepted")
        } catch {
            #expect("\(error)".contains("another configuration"), "\(error)")
        }
        // The same configuration starts.
        let again = try durableEngine(testDirectory(), data: data, instance: "c4")
        again.stop()
    }

    @Test("a second engine on the same data directory is refused")
    func dataLock() throws {
        let data = NSTemporaryDirectory() + "crossbook-data-\(UUID().uuidString.prefix(8))"
        defer { removeTree(data) }
        let one = try durableEngine(testDirectory(), data: data, instance: "l1")
        defer { one.stop() }
        #expect { _ = try durableEngine(testDirectory(), data: data, instance: "l2") } throws: {
            "\($0)".contains("another engine is using it")
        }
    }

    /// 20 cycles in `make test`; `make soak` sets CROSSBOOK_KILL_CYCLES=1000.
    static let killCycleCount = Int(ProcessInfo.processInfo.environment["CROSSBOOK_KILL_CYCLES"] ?? "") ?? 20

    @Test("kill -9 at random moments under load, 20 times (make soak: 1,000), and 6 times with journal_prezero on 1 MiB segments (made ahead, renamed in at rollover): every acknowledged order survives, the restart equals an offline replay", arguments: [false, true])
    func killCycles(prezero: Bool) throws {
        let dir = testDirectory(), data = NSTemporaryDirectory() + "crossbook-data-\(UUID().uuidString.prefix(8))"
        defer { removeTree(data) }
        let config = NSTemporaryDirectory() + "crossbook-prezero-\(UUID().uuidString.prefix(8)).toml"
        try "[engine]\njournal_prezero = true\njournal_segment_mb = 1\n".write(toFile: config, atomically: true, encoding: .utf8)
        defer { unlink(config) }
        let cycles = prezero ? min(6, Self.killCycleCount) : Self.killCycleCount
        var rng = UInt64(2026)
        var totalAcked = 0
        // A long soak starts a fresh journal every 100 cycles and replays offline every 10th
        // (the offline replay reads the whole journal: checking every cycle would be quadratic).
        let compareEvery = cycles > 20 ? 10 : 1
        for cycle in 0..<cycles {
            if cycle > 0 && cycle % 100 == 0 { removeTree(data) }
            // What an independent replay of the journal as it lies now builds.
            var expected: UInt64?
            if cycle % 100 != 0 && cycle % compareEvery == 0 {
                let copy = data + "-copy"
                removeTree(copy)
                copyDirectory(data, copy)
                // The same symbols and capacities as `crossbook run` without a config: a replay is
                // exact only under the configuration that wrote the journal.
                let offline = try durableEngine(testDirectory(), data: copy, instance: "off\(cycle)", durability: .async,
                                                symbols: defaultSymbols, capacity: BookCapacity(orders: 1 << 18, levels: 1 << 14))
                expected = offline.recoveredDigests.first
                offline.stop()
                removeTree(copy)
            }
            let cycleStart = realtimeNanoseconds()
            let engine = Process()
            engine.executableURL = crossbookBinary()
            engine.arguments = ["run", "--instance", "kc", "--directory", dir, "--data-dir", data, "--no-pin", "--clean-stale",
                                "--snapshot-every", "3000"] + (prezero ? ["--config", config] : [])
            let err = Pipe()
            engine.standardError = err
            try engine.run()
            #expect(waitFor(10) { (try? EngineFile.attach(directory: dir))?.isServing ?? false }, "cycle \(cycle): engine up")
            let client = try CrossbookClient(instance: "kc", directory: dir)
            let btc = try client.symbol("BTC-USD")
            var acked = Set<Int64>()
            rng = rng &* 6364136223846793005 &+ 1442695040888963407
            // Kill at a random moment 0.05-0.3 s after the first acknowledgement (a loaded machine
            // may take a while to sync the first batch), at most 5 s in.
            let runFor = 0.05 + Double((rng >> 33) % 250) / 1000
            let hardStop = Date().addingTimeInterval(5)
            var stopAt = hardStop
            var id: OrderId = 0
            var killed = false
            while Date() < stopAt && Date() < hardStop {
                if stopAt == hardStop && !acked.isEmpty { stopAt = Date().addingTimeInterval(runFor) }
                if id >= 20_000 {
                    _ = try? client.poll { if $0.kind == .accepted { acked.insert(Int64(client.sessionId) << 48 | $0.orderId) } }
                    continue
                }
                id += 1
                let side: Side = id % 2 == 0 ? .buy : .sell
                _ = client.submit(.new(NewOrder(orderId: id, side: side, price: 9990 + Price(id % 21), quantity: 1)), symbol: btc)
                do {
                    _ = try client.poll { if $0.kind == .accepted { acked.insert(Int64(client.sessionId) << 48 | $0.orderId) } }
                } catch {
                    killed = true
                    break
                }
            }
            kill(engine.processIdentifier, SIGKILL)
            engine.waitUntilExit()
            _ = killed
            // Acknowledgements that were in the report ring when the engine died count too.
            _ = try? client.poll { if $0.kind == .accepted { acked.insert(Int64(client.sessionId) << 48 | $0.orderId) } }
            client.close()
            let log = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            if let expected {
                let line = log.split(separator: "\n").first { $0.contains("state digest") } ?? ""
                let hex = line.split(separator: " ").last.map(String.init) ?? ""
                #expect(UInt64(hex, radix: 16) == expected, "cycle \(cycle): \(line)")
            }
            let journaled = try journaledOrders(data, since: cycleStart)
            let lost = acked.subtracting(journaled)
            #expect(lost.count == 0, "cycle \(cycle): \(lost.count) of \(acked.count) acknowledged orders are not in the journal")
            #expect(!acked.isEmpty, "cycle \(cycle): no acknowledgement within 5 s")
            totalAcked += acked.count
        }
        #expect(totalAcked > 0)
        removeTree(dir)
    }
}

@Suite("Durability: full disk", .serialized)
struct FullDiskEngineTests {
    @Test("a full disk: the shard stops acknowledging, says so, corrupts nothing, and resumes when space returns")
    func fullDisk() throws {
        let root = NSTemporaryDirectory() + "crossbook-fulldisk-\(UUID().uuidString.prefix(8))"
        mkdir(root, 0o700)
        defer { rmdir(root) }
        try withTmpfs(size: "1m", at: root) {
            // Half the file system is taken by a file that will go away later.
            let filler = root + "/filler"
            let fd = open(filler, O_WRONLY | O_CREAT, 0o600)
            #expect(posix_fallocate(fd, 0, 512 << 10) == 0)
            close(fd)
            let data = root + "/data"
            let dir = testDirectory()
            var settings = EngineSettings(instance: "fd", directory: dir, shards: [ShardSettings(core: nil)],
                                          symbols: [(spec: SymbolSpec(name: "BTC-USD", id: 1), shard: 0)],
                                          capacity: BookCapacity(orders: 1 << 16, levels: 1 << 12),
                                          wait: WaitStrategy(spins: 1000, yields: 10, park: true, parkTimeoutNanoseconds: 20_000_000))
            settings.durability = .sync
            settings.dataDirectory = data
            settings.journalSegmentSize = 128 << 10
            let log = LogLines()
            let engine = Engine(settings: settings, log: { log.append($0) })
            _ = try engine.start()
            defer { engine.stop() }
            let client = try CrossbookClient(instance: "fd", directory: dir)
            let btc = try client.symbol("BTC-USD")
            var acked = Set<Int64>()
            var id: OrderId = 0
            var sending = true
            func pump(_ seconds: Double) throws {
                let until = Date().addingTimeInterval(seconds)
                while Date() < until {
                    if sending && id - OrderId(acked.count) < 500 {
                        id += 1
                        _ = client.submit(.new(NewOrder(orderId: id, side: id % 2 == 0 ? .buy : .sell, price: 1000 + Price(id % 50),
                                                        quantity: 1)), symbol: btc)
                    }
                    _ = try client.poll { if $0.kind == .accepted { acked.insert($0.orderId) } }
                }
            }
            // Fill the disk: acknowledgements stop, the shard says it is refusing.
            let control = try EngineFile.attach(directory: dir)
            var refusing = false
            for _ in 0..<100 where !refusing {
                try pump(0.1)
                refusing = control.counters(0).read(.journalFailed) == 1
            }
            #expect(refusing, "the journal never filled the disk")
            // Reports of commands made durable before the disk filled may still be in the ring.
            usleep(100_000)
            _ = try client.poll { if $0.kind == .accepted { acked.insert($0.orderId) } }
            let ackedWhenFull = acked.count
            try pump(0.5)
            #expect(acked.count == ackedWhenFull, "nothing is acknowledged while the disk is full")
            #expect(control.counters(0).read(.journalFailures) > 0)
            // A listing is refused with the reason, and leaves nothing behind.
            #expect {
                _ = try engine.listSymbol("NEW-USD", shard: 0, timeout: 2)
            } throws: { "\($0)".contains("refused by shard 0") && "\($0)".contains("journal") }
            #expect(throws: ClientError.self) { _ = try client.symbol("NEW-USD") }
            // Space returns: the shard takes the waiting commands, and everything sent is acknowledged
            // (nothing new is sent, or the disk would fill again).
            sending = false
            unlink(filler)
            let deadline = Date().addingTimeInterval(10)
            while acked.count < Int(id) && Date() < deadline { try pump(0.05) }
            #expect(acked.count == Int(id), "\(acked.count) of \(id) acknowledged after space returned")
            #expect(control.counters(0).read(.journalFailed) == 0)
            // With space again, the listing goes through.
            let listed = try engine.listSymbol("NEW-USD", shard: 0)
            #expect(listed.slot == 1 && (try? client.symbol("NEW-USD")) != nil)
            // The operator is told, once when it starts failing and once when it works again.
            #expect(waitFor(3) { log.contains("the journal works again") }, "\(log.all)")
            #expect(log.all.filter { $0.contains("the journal is failing") && $0.contains("no space left") }.count == 1, "\(log.all)")
            client.close()
            // The journal is whole: every acknowledged order is in it, in sequence.
            var journaled = Set<Int64>()
            _ = try JournalReader.scan(directory: data, shard: 0, repair: false) { _, _, payload in
                if let d = try? CommandRecord.decode(payload.baseAddress!), case .new(let o) = d.command { journaled.insert(o.orderId) }
            }
            #expect(acked.isSubset(of: journaled))
        }
    }
}

@Suite("Journal I/O workers off the shard's core", .serialized)
struct JournalWorkerPlacementTests {
    /// The CPUs each io_uring worker thread of the shard thread `shardTid` may run on (/proc/self
    /// task; a worker is named iou-wrk-<the submitting thread's id>: other tests' engines run in
    /// this process at the same time).
    func ioWorkerCPUs(of shardTid: Int32) -> [String] {
        let tasks = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/task")) ?? []
        return tasks.compactMap { tid in
            guard let comm = try? String(contentsOfFile: "/proc/self/task/\(tid)/comm", encoding: .utf8),
                  comm.trimmingCharacters(in: .whitespacesAndNewlines) == "iou-wrk-\(shardTid)" else { return nil }
            guard let status = try? String(contentsOfFile: "/proc/self/task/\(tid)/status", encoding: .utf8) else { return nil }
            return status.split(separator: "\n").first { $0.hasPrefix("Cpus_allowed_list:") }
                .map { $0.split(separator: "\t").last.map(String.init) ?? "" }
        }
    }

    @Test("a shard pinned to core 1: io_cores = [0] runs its journal's kernel workers (and the thread that makes its next segment, journal_prezero) on core 0; unbound (the default) the workers inherit the shard's core, that thread runs anywhere; a shard's core is refused")
    func workersOffTheShardCore() throws {
        let cpus = Int(sysconf(Int32(_SC_NPROCESSORS_ONLN)))
        guard cpus >= 2 else { return }  // one core: nowhere else to put them
        func settings(_ dir: String, _ data: String, _ ioCores: [Int]?) -> EngineSettings {
            var settings = EngineSettings(instance: "iowq", directory: dir, shards: [ShardSettings(core: 1)],
                                          symbols: [(spec: SymbolSpec(name: "BTC-USD", id: 1), shard: 0)],
                                          capacity: BookCapacity(orders: 1 << 12, levels: 1 << 8),
                                          wait: WaitStrategy(spins: 1000, yields: 10, park: true, parkTimeoutNanoseconds: 20_000_000))
            settings.durability = .sync
            settings.dataDirectory = data
            settings.ioCores = ioCores
            settings.journalPrezero = true
            return settings
        }
        #expect { _ = try Engine(settings: settings(testDirectory(), NSTemporaryDirectory() + "crossbook-iowq-x", [1]), log: { _ in }).start() } throws: {
            "\($0)".contains("core 1 is a shard's")
        }
        for ioCores in [[0], nil] as [[Int]?] {
            let dir = testDirectory(), data = NSTemporaryDirectory() + "crossbook-iowq-\(UUID().uuidString.prefix(8))"
            defer { removeTree(data) }
            let engine = Engine(settings: settings(dir, data, ioCores), log: { _ in })
            let placement = try engine.start()
            #expect(placement.contains { ioCores == nil ? $0.contains("not bound") : $0.contains("journal I/O workers: cores 0") },
                    "\(placement)")
            // The thread that makes the next segment (started by the pinned shard's thread; it
            // takes 2 s or more to write 64 MiB at its pace, so it runs now).
            // It names itself once on its CPUs: looked for until it has (a busy host starts it late).
            var spares: [String] = []
            _ = waitFor(10) {
                spares = ((try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/task")) ?? []).compactMap { tid -> String? in
                    let comm = (try? String(contentsOfFile: "/proc/self/task/\(tid)/comm", encoding: .utf8)) ?? ""
                    guard comm.hasPrefix("journal-spare") else { return nil }
                    let status = (try? String(contentsOfFile: "/proc/self/task/\(tid)/status", encoding: .utf8)) ?? ""
                    return status.split(separator: "\n").first { $0.hasPrefix("Cpus_allowed_list:") }.map { String($0.split(separator: "\t").last ?? "") }
                }
                return !spares.isEmpty
            }
            let client = try CrossbookClient(instance: "iowq", directory: dir)
            let btc = try client.symbol("BTC-USD")
            for id in 1...200 {
                while !client.submit(.new(NewOrder(orderId: OrderId(id), side: .buy, price: 100, quantity: 1)), symbol: btc) {
                    _ = try client.poll { _ in }
                }
                if id % 20 == 0 { _ = try client.waitForReports(timeout: 2) { _ in } }  // one fdatasync per round trip
            }
            let shardTid = try EngineFile.attach(directory: dir).counters(0).threadId
            let workers = ioWorkerCPUs(of: shardTid)
            client.close()
            engine.stop()
            #expect(!workers.isEmpty, "the syncs ran on io_uring workers")
            if ioCores == nil {
                #expect(workers.contains { cpuList($0) == [1] }, "unbound workers inherit the shard's core: \(workers)")
                #expect(spares.count == 1 && spares.allSatisfy { cpuList($0) == Array(0..<cpus) }, "\(spares)")
            } else {
                #expect(workers.allSatisfy { cpuList($0) == [0] }, "\(workers)")
                #expect(spares.count == 1 && spares.allSatisfy { cpuList($0) == [0] }, "\(spares)")
            }
        }
    }
}

/// "0,2-3" → [0, 2, 3].
func cpuList(_ text: String) -> [Int] {
    text.trimmingCharacters(in: .whitespacesAndNewlines).split(separator: ",").flatMap { part -> [Int] in
        let bounds = part.split(separator: "-").compactMap { Int($0) }
        return bounds.count == 2 ? Array(bounds[0]...bounds[1]) : bounds
    }
}
