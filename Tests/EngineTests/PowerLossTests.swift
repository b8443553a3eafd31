// Power loss, not just kill -9: the data directory sits on crossbook-powercut (tools/powercut), a
// FUSE layer that holds every unsynced write in memory and drops it at a simulated power cut
// (torn mode: some pages of the unsynced data land, some do not; dir-entries mode: a new name is
// durable only once its directory is fsync'ed). It can also make fsync or directory fsync fail.
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

/// One mount of crossbook-powercut over a backing directory.
final class PowerCutLayer {
    let backing: String, mountPoint: String, faults: String
    let process = Process()
    let log = Pipe()

    /// The layer's binary, built beside the crossbook executable by the Makefile.
    static var binary: URL { crossbookBinary().deletingLastPathComponent().appendingPathComponent("crossbook-powercut") }

    init(backing: String, mountPoint: String, torn: Bool = false, dirEntries: Bool = true, seed: UInt64 = 1) throws {
        self.backing = backing
        self.mountPoint = mountPoint
        faults = backing + ".faults"
        mkdir(backing, 0o700)
        mkdir(mountPoint, 0o700)
        FileManager.default.createFile(atPath: faults, contents: Data())
        process.executableURL = Self.binary
        process.arguments = (torn ? ["--torn"] : []) + (dirEntries ? ["--dir-entries"] : [])
            + ["--faults", faults, "--seed", String(seed), backing, mountPoint]
        process.standardError = log
        try process.run()
        guard waitFor(5, { Self.isMounted(mountPoint) }) else {
            process.terminate()
            throw PowerCutError(description: "crossbook-powercut did not mount \(mountPoint) (needs /dev/fuse and root)")
        }
    }

    static func isMounted(_ path: String) -> Bool {
        ((try? String(contentsOfFile: "/proc/mounts", encoding: .utf8)) ?? "").split(separator: "\n")
            .contains { $0.split(separator: " ").dropFirst().first.map(String.init) == path }
    }

    /// Faults to inject from now on: "fsync", "fsyncdir", or none.
    func inject(_ faultNames: [String]) {
        try? faultNames.joined(separator: "\n").write(toFile: faults, atomically: true, encoding: .utf8)
    }

    /// The power goes: everything unsynced is lost (or torn), and the layer answers EIO from now on.
    func cut() { kill(process.processIdentifier, SIGUSR1) }

    /// Unmounts (after a cut: the machine coming back, with what reached the disk) and waits.
    @discardableResult
    func unmount() -> String {
        for _ in 0..<100 {
            let u = Process()
            u.executableURL = URL(fileURLWithPath: "/bin/fusermount3")
            u.arguments = ["-u", mountPoint]
            u.standardError = FileHandle.nullDevice
            try? u.run()
            u.waitUntilExit()
            if u.terminationStatus == 0 || !Self.isMounted(mountPoint) { break }
            usleep(50_000)
        }
        process.waitUntilExit()
        return String(decoding: log.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
    }
}

struct PowerCutError: Error, CustomStringConvertible { var description: String }

/// A journaled command, as the power-loss checks compare them.
struct JournaledCommand: Equatable {
    var sequence: UInt64, session: UInt32, kind: UInt8, orderId: OrderId
    /// The engine time of its sequencing.
    var time: UInt64
}

/// Every command record of shard 0's journal, read-only (a torn tail is left out, as recovery cuts it).
func journalCommands(_ data: String) throws -> [JournaledCommand] {
    var out: [JournaledCommand] = []
    _ = try JournalReader.scan(directory: data, shard: 0, repair: false) { type, sequence, payload in
        guard type == 1, payload.count == 80, let decoded = try? CommandRecord.decode(payload.baseAddress!) else { return }
        let session = UInt32(littleEndian: payload.loadUnaligned(fromByteOffset: 64, as: UInt32.self))
        let kind: UInt8 = switch decoded.command { case .new: 1; case .cancel: 2; case .replace: 3 }
        let time = UInt64(littleEndian: payload.loadUnaligned(fromByteOffset: 72, as: UInt64.self))
        out.append(JournaledCommand(sequence: sequence, session: session, kind: kind, orderId: decoded.command.orderId, time: time))
    }
    return out
}

/// The digest of an independent replay of the journal segments alone (no snapshots).
func replayDigest(_ data: String) throws -> UInt64? {
    let copy = data + "-replay"
    removeTree(copy)
    mkdir(copy, 0o700)
    defer { removeTree(copy) }
    for name in (try? FileManager.default.contentsOfDirectory(atPath: data)) ?? []
    where name.hasPrefix("journal-") || name == "CONFIGURATION" {
        try FileManager.default.copyItem(atPath: data + "/" + name, toPath: copy + "/" + name)
    }
    let replay = Process()
    replay.executableURL = crossbookBinary()
    replay.arguments = ["replay", "--journal", copy]
    let out = Pipe()
    replay.standardOutput = out
    replay.standardError = FileHandle.nullDevice
    try replay.run()
    let text = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
    replay.waitUntilExit()
    guard let line = text.split(separator: "\n").first(where: { $0.hasPrefix("DIGEST,shard 0,") }) else { return nil }
    return UInt64(line.split(separator: ",").last ?? "", radix: 16)
}

/// What one series of power cuts saw.
struct PowerCutTally {
    var cuts = 0, ackedOrders = 0, ackedCancels = 0, lostOrders = 0, lostCancels = 0, duplicated = 0, stale = 0,
        digestMismatches = 0, refusedStarts = 0
    var problems: [String] = []
}

/// Runs `cuts` power cuts under load on `crossbook run` (a separate process) with the given
/// durability, and checks after each: every acknowledged order and cancel is in the journal
/// exactly once; the journal before the cut is a prefix of the journal after (nothing stale
/// comes back, nothing earlier changes); the restarted engine's digest equals an independent replay.
func powerCutSeries(cuts: Int, durability: String, seed: UInt64, stopAtFirstLoss: Bool = false) throws -> PowerCutTally {
    let root = NSTemporaryDirectory() + "crossbook-powerloss-\(UUID().uuidString.prefix(8))"
    mkdir(root, 0o700)
    let backing = root + "/disk", mountPoint = root + "/mnt", dir = testDirectory()
    defer { removeTree(root); removeTree(dir) }
    var tally = PowerCutTally()
    var previous: [JournaledCommand] = []
    var expectedDigest: UInt64?
    var rng = seed
    for cycle in 0...cuts {
        rng = rng &* 6364136223846793005 &+ 1442695040888963407
        let torn = cycle % 2 == 1
        let layer = try PowerCutLayer(backing: backing, mountPoint: mountPoint, torn: torn, seed: rng >> 20)
        let cycleStart = realtimeNanoseconds()
        let engine = Process()
        engine.executableURL = crossbookBinary()
        engine.arguments = ["run", "--instance", "pl", "--directory", dir, "--data-dir", mountPoint + "/data", "--no-pin",
                            "--clean-stale", "--snapshot-every", "5000", "--durability", durability]
        let err = Pipe()
        engine.standardError = err
        try engine.run()
        guard waitFor(15, { (try? EngineFile.attach(directory: dir))?.isServing ?? false }) else {
            kill(engine.processIdentifier, SIGKILL)
            engine.waitUntilExit()
            layer.unmount()
            let log = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            tally.refusedStarts += 1
            tally.problems.append("cycle \(cycle): the engine did not start after the cut: \(log.suffix(600))")
            return tally
        }
        if cycle == cuts {
            // The last start only checks the recovery of the last cut; then a clean stop.
            kill(engine.processIdentifier, SIGTERM)
            engine.waitUntilExit()
            layer.unmount()
        } else {
            let client = try CrossbookClient(instance: "pl", directory: dir)
            let btc = try client.symbol("BTC-USD")
            var ackedNew = Set<Int64>(), ackedCancel = Set<Int64>()
            let session = Int64(client.sessionId)
            func take(_ r: ReportRecord.Report) {
                if r.kind == .accepted { ackedNew.insert(session << 48 | r.orderId) }
                if r.kind == .cancelled && r.code == CancelReason.user.rawValue { ackedCancel.insert(session << 48 | r.orderId) }
            }
            // Cut at a random moment 0.1-0.6 s after the first acknowledgement, at most 8 s in.
            let runFor = 0.1 + Double((rng >> 33) % 500) / 1000
            let hardStop = Date().addingTimeInterval(8)
            var stopAt = hardStop
            var id: OrderId = 0
            /// The next command, if the ring takes it (a full ring is the engine's back-pressure).
            func send() {
                let next = id + 1
                let command: BookCommand = next % 5 == 0
                    ? .cancel(CancelOrder(orderId: next - 3))
                    : .new(NewOrder(orderId: next, side: next % 2 == 0 ? .buy : .sell, price: 9990 + Price(next % 23), quantity: 1 + Quantity(next % 3)))
                if client.submit(command, symbol: btc) { id = next }
            }
            while Date() < stopAt && Date() < hardStop {
                if stopAt == hardStop && !ackedNew.isEmpty { stopAt = Date().addingTimeInterval(runFor) }
                send()
                do { _ = try client.poll(take) } catch { break }
            }
            // The power goes while the load is still flowing; the engine goes down with it a
            // moment later. Acknowledgements that reach the client until then count.
            layer.cut()
            let cutAt = Date()
            while Date().timeIntervalSince(cutAt) < 0.05 {
                send()
                do { _ = try client.poll(take) } catch { break }
            }
            kill(engine.processIdentifier, SIGKILL)
            engine.waitUntilExit()
            _ = try? client.poll(take)
            client.close()
            let cutLog = layer.unmount()
            if ProcessInfo.processInfo.environment["CROSSBOOK_POWERCUT_DEBUG"] != nil { print("cycle \(cycle) acked \(ackedNew.count) engine status \(engine.terminationStatus) \(engine.terminationReason == .uncaughtSignal): \(cutLog)") }
            tally.cuts += 1
            tally.ackedOrders += ackedNew.count
            tally.ackedCancels += ackedCancel.count
            // What survived, as recovery will read it.
            let now: [JournaledCommand]
            do { now = try journalCommands(backing + "/data") } catch {
                tally.problems.append("cycle \(cycle) (torn \(torn)): the journal cannot be read after the cut: \(error) [\(cutLog)]")
                tally.refusedStarts += 1
                return tally
            }
            // This run's records: those after the journal as the previous cut left it (a session
            // id can be reused across restarts, so older records are not counted for this run).
            let added = now.count >= previous.count ? Array(now.dropFirst(previous.count)) : now
            var newCount: [Int64: Int] = [:], cancelCount: [Int64: Int] = [:]
            for c in added where Int64(c.session) == session {
                if c.kind == 1 { newCount[session << 48 | c.orderId, default: 0] += 1 }
                if c.kind == 2 { cancelCount[session << 48 | c.orderId, default: 0] += 1 }
            }
            let lostNew = ackedNew.filter { newCount[$0] == nil }.count
            let lostCancel = ackedCancel.filter { cancelCount[$0] == nil }.count
            tally.lostOrders += lostNew
            tally.lostCancels += lostCancel
            tally.duplicated += newCount.values.filter { $0 > 1 }.count + cancelCount.values.filter { $0 > 1 }.count
            // Nothing before this run changed; everything after it is this run's.
            if now.count < previous.count || Array(now.prefix(previous.count)) != previous {
                tally.problems.append("cycle \(cycle): the journal before this run changed (\(previous.count) records before, \(now.count) now)")
            }
            // Records of an earlier run coming back would carry its session or its older engine time.
            let strangers = added.filter { Int64($0.session) != session || $0.time < cycleStart }.count
            tally.stale += strangers
            if lostNew + lostCancel > 0 {
                tally.problems.append("cycle \(cycle) (torn \(torn)): \(lostNew) of \(ackedNew.count) acknowledged orders and \(lostCancel) of \(ackedCancel.count) cancels lost")
                if stopAtFirstLoss { return tally }
            }
            previous = now
        }
        // The restart after the previous cut must have recovered what an independent replay builds.
        let log = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        if let expectedDigest {
            let line = log.split(separator: "\n").first { $0.contains("state digest") } ?? ""
            if UInt64(line.split(separator: " ").last.map(String.init) ?? "", radix: 16) != expectedDigest {
                tally.digestMismatches += 1
                tally.problems.append("cycle \(cycle): restart digest \(line) != replay \(String(expectedDigest, radix: 16))")
            }
        }
        if cycle < cuts && cycle % 10 == 9 {
            // A fresh journal every 10 cuts: each check reads and replays the whole journal, and
            // a long soak would make that quadratic.
            removeTree(backing + "/data")
            previous = []
            expectedDigest = nil
        } else if cycle < cuts {
            expectedDigest = try replayDigest(backing + "/data")
            // Every other cut, the operator's tool cuts the torn tail before the engine does.
            if cycle % 4 == 1 {
                let truncate = Process()
                truncate.executableURL = crossbookBinary()
                truncate.arguments = ["journal", "truncate", backing + "/data"]
                truncate.standardOutput = FileHandle.nullDevice
                let terr = Pipe()
                truncate.standardError = terr
                try truncate.run()
                truncate.waitUntilExit()
                if truncate.terminationStatus != 0 {
                    tally.problems.append("cycle \(cycle): journal truncate refused: \(String(decoding: terr.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self))")
                }
            }
        }
    }
    return tally
}

@Suite("Durability: power loss", .serialized)
struct PowerLossTests {
    /// 6 cuts in `make test`; `make soak` sets CROSSBOOK_POWER_CUTS=50 (a fresh journal every 10).
    static let cutCount = Int(ProcessInfo.processInfo.environment["CROSSBOOK_POWER_CUTS"] ?? "") ?? 6

    @Test("power cuts under load, sync (clean and torn): every acknowledged order and cancel is journaled once, nothing stale returns, restart == replay")
    func syncCuts() throws {
        let tally = try powerCutSeries(cuts: Self.cutCount, durability: "sync", seed: 2026)
        #expect(tally.problems.isEmpty, "\(tally.problems)")
        #expect(tally.cuts == Self.cutCount && tally.refusedStarts == 0)
        #expect(tally.lostOrders == 0 && tally.lostCancels == 0 && tally.duplicated == 0 && tally.stale == 0)
        #expect(tally.ackedOrders > 0 && tally.ackedCancels > 0, "no load: \(tally)")
        print("power cuts (sync): \(tally.cuts) cuts, \(tally.ackedOrders) acknowledged orders, \(tally.ackedCancels) cancels, \(tally.lostOrders + tally.lostCancels) lost")
    }

    @Test("the same cuts find the losses of async durability (the check can fail)")
    func asyncLoses() throws {
        let tally = try powerCutSeries(cuts: 8, durability: "async", seed: 7, stopAtFirstLoss: true)
        #expect(tally.lostOrders + tally.lostCancels > 0, "async durability lost nothing in \(tally.cuts) cuts: \(tally)")
        #expect(tally.duplicated == 0 && tally.stale == 0 && tally.digestMismatches == 0, "\(tally.problems)")
        print("power cuts (async): \(tally.lostOrders) acknowledged orders and \(tally.lostCancels) cancels lost in \(tally.cuts) cut(s)")
    }
}

@Suite("Durability: failing disk", .serialized)
struct FailingDiskTests {
    func engine(_ dir: String, data: String, segment: Int) throws -> Engine {
        var settings = EngineSettings(instance: "fdisk", directory: dir, shards: [ShardSettings(core: nil)],
                                      symbols: [(spec: SymbolSpec(name: "BTC-USD", id: 1), shard: 0)],
                                      capacity: BookCapacity(orders: 1 << 16, levels: 1 << 12),
                                      wait: WaitStrategy(spins: 1000, yields: 10, park: true, parkTimeoutNanoseconds: 20_000_000))
        settings.durability = .sync
        settings.dataDirectory = data
        settings.journalSegmentSize = segment
        let engine = Engine(settings: settings, log: { _ in })
        _ = try engine.start()
        return engine
    }

    @Test("a directory fsync that fails at segment rollover stops acknowledgements; a power cut then loses nothing acknowledged")
    func dirFsyncFailure() throws {
        let root = NSTemporaryDirectory() + "crossbook-dirsync-\(UUID().uuidString.prefix(8))"
        mkdir(root, 0o700)
        defer { removeTree(root) }
        let layer = try PowerCutLayer(backing: root + "/disk", mountPoint: root + "/mnt", dirEntries: true)
        let dir = testDirectory()
        let engine = try engine(dir, data: root + "/mnt/data", segment: 64 << 10)
        let client = try CrossbookClient(instance: "fdisk", directory: dir)
        let btc = try client.symbol("BTC-USD")
        var acked = Set<OrderId>()
        var id: OrderId = 0
        func pump(_ seconds: Double) {
            let until = Date().addingTimeInterval(seconds)
            while Date() < until {
                if id - OrderId(acked.count) < 300 {
                    let next = id + 1
                    if client.submit(.new(NewOrder(orderId: next, side: next % 2 == 0 ? .buy : .sell, price: 1000 + Price(next % 40), quantity: 1)), symbol: btc) { id = next }
                }
                _ = try? client.poll { if $0.kind == .accepted { acked.insert($0.orderId) } }
            }
        }
        pump(0.3)
        #expect(!acked.isEmpty)
        // From now on no directory fsync works: the next segment's name can never become durable.
        layer.inject(["fsyncdir"])
        let control = try EngineFile.attach(directory: dir)
        var refusing = false
        for _ in 0..<100 where !refusing {
            pump(0.1)
            refusing = control.counters(0).read(.journalFailed) == 1
        }
        #expect(refusing, "the shard never refused (no rollover, or the failed directory fsync was ignored)")
        pump(0.5)
        #expect(control.counters(0).read(.journalFailures) > 0)
        layer.cut()
        client.close()
        engine.stop()
        layer.unmount()
        removeTree(dir)
        let journaled = Set(try journalCommands(root + "/disk/data").filter { $0.kind == 1 }.map(\.orderId))
        let lost = acked.subtracting(journaled)
        #expect(lost.isEmpty, "\(lost.count) of \(acked.count) acknowledged orders lost with the segment whose name never became durable")
    }

    @Test("a failing fdatasync: the shard stops taking commands, parks between retries, counts it; once the disk works, the batch is written again and everything is acknowledged")
    func fsyncFailure() throws {
        let root = NSTemporaryDirectory() + "crossbook-fsyncfail-\(UUID().uuidString.prefix(8))"
        mkdir(root, 0o700)
        defer { removeTree(root) }
        let layer = try PowerCutLayer(backing: root + "/disk", mountPoint: root + "/mnt", dirEntries: false)
        let dir = testDirectory()
        let engine = try engine(dir, data: root + "/mnt/data", segment: 1 << 20)
        let client = try CrossbookClient(instance: "fdisk", directory: dir)
        let btc = try client.symbol("BTC-USD")
        var acked = Set<OrderId>()
        var id: OrderId = 0
        var sending = true
        func pump(_ seconds: Double) {
            let until = Date().addingTimeInterval(seconds)
            while Date() < until {
                // Bounded by the command ring alone: a shard that takes commands shows it.
                if sending {
                    let next = id + 1
                    if client.submit(.new(NewOrder(orderId: next, side: next % 2 == 0 ? .buy : .sell, price: 1000 + Price(next % 40), quantity: 1)), symbol: btc) { id = next }
                }
                _ = try? client.poll { if $0.kind == .accepted { acked.insert($0.orderId) } }
            }
        }
        pump(0.3)
        let control = try EngineFile.attach(directory: dir)
        layer.inject(["fsync"])
        var refusing = false
        for _ in 0..<50 where !refusing {
            pump(0.1)
            refusing = control.counters(0).read(.journalFailed) == 1
        }
        #expect(refusing, "the shard never said the journal is failing")
        let ackedWhenFailing = acked.count
        let taken = control.counters(0).read(.durableSequence)
        let commandsBefore = control.counters(0).read(.commands)
        let failuresBefore = control.counters(0).read(.journalFailures)
        pump(1.0)
        let commandsAfter = control.counters(0).read(.commands)
        let failuresAfter = control.counters(0).read(.journalFailures)
        #expect(acked.count == ackedWhenFailing, "acknowledged while fdatasync fails")
        #expect(commandsAfter == commandsBefore, "the shard took \(commandsAfter - commandsBefore) commands while its journal was failing")
        #expect(failuresAfter > failuresBefore && failuresAfter - failuresBefore <= 30,
                "failed attempts in 1 s: \(failuresAfter - failuresBefore) (the shard should retry about every 100 ms)")
        #expect(control.counters(0).read(.durableSequence) == taken)
        // The disk works again: the batch whose pages were dropped is written again; everything sent is acknowledged.
        layer.inject([])
        sending = false
        let deadline = Date().addingTimeInterval(10)
        while acked.count < Int(id) && Date() < deadline { pump(0.05) }
        #expect(acked.count == Int(id), "\(acked.count) of \(id) acknowledged after the disk recovered")
        #expect(control.counters(0).read(.journalFailed) == 0)
        // A power cut now loses nothing that was acknowledged.
        layer.cut()
        client.close()
        engine.stop()
        layer.unmount()
        removeTree(dir)
        let journaled = Set(try journalCommands(root + "/disk/data").filter { $0.kind == 1 }.map(\.orderId))
        #expect(acked.subtracting(journaled).isEmpty, "\(acked.subtracting(journaled).count) acknowledged orders lost")
    }
}
