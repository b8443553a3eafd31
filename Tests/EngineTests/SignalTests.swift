// Signals to `crossbook run`: the ones that would kill it without draining are logged and
// ignored; SIGTERM stops it, during a long recovery too.
import CrossbookClient
import Engine
import Foundation
import Glibc
import OrderBook
import SharedMemory
import Testing
import TestSupport

/// `crossbook run` with its stderr collected line by line as it comes.
final class EngineProcess {
    let process = Process()
    let log = LogLines()
    private let pipe = Pipe()
    private let reader: Thread

    /// `environment`: added to this process's.
    init(_ arguments: [String], environment: [String: String] = [:]) throws {
        process.executableURL = crossbookBinary()
        process.arguments = ["run"] + arguments
        if !environment.isEmpty { process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 } }
        process.standardError = pipe
        process.standardOutput = FileHandle.nullDevice
        try process.run()
        let log = log
        reader = readLines(pipe.fileHandleForReading) { log.append($0) }
    }

    /// `crossbook run` without plugins or journal, started and serving (the caller stops it).
    static func serving(_ instance: String, _ dir: String) throws -> EngineProcess {
        let engine = try EngineProcess(["--instance", instance, "--directory", dir, "--no-pin", "--no-plugins", "--durability", "none"])
        #expect(waitFor(10) { (try? EngineFile.attach(directory: dir))?.isServing ?? false }, "engine \(instance) serving")
        return engine
    }

    /// SIGTERM, and the wait for the exit.
    func stop() {
        signal(SIGTERM)
        _ = waitForExit(20)
    }

    func signal(_ sig: Int32) { kill(process.processIdentifier, sig) }

    /// Waits for the process to end (up to `seconds`); its exit status, or nil if it did not end.
    func waitForExit(_ seconds: Double) -> Int32? {
        guard waitFor(seconds, { !process.isRunning }) else { return nil }
        process.waitUntilExit()
        return process.terminationStatus
    }
}

@Suite("Signals", .serialized)
struct SignalTests {
    @Test("SIGHUP, SIGUSR1 and SIGUSR2 are logged and ignored; SIGTERM then drains and stops")
    func ignoredSignals() throws {
        let dir = testDirectory()
        let engine = try EngineProcess.serving("sig", dir)
        for sig in [SIGHUP, SIGUSR1, SIGUSR2] {
            engine.signal(sig)
            usleep(100_000)
        }
        #expect(engine.process.isRunning)
        #expect((try? EngineFile.attach(directory: dir))?.isServing ?? false)
        engine.signal(SIGTERM)
        #expect(engine.waitForExit(10) == 0)
        #expect(engine.log.contains("SIGHUP: ignored"), "\(engine.log.all)")
        #expect(engine.log.contains("SIGUSR1: ignored") && engine.log.contains("SIGUSR2: ignored"))
        #expect(access(dir, F_OK) != 0, "the instance directory is removed")
    }

    @Test("SIGTERM during a long recovery stops it between batches, without waiting for the rest")
    func stopDuringRecovery() throws {
        let dir = testDirectory()
        let data = NSTemporaryDirectory() + "crossbook-sigrec-\(UUID().uuidString.prefix(8))"
        defer { removeTree(data) }
        // A journal of 3,000,000 orders.
        let first = try EngineProcess(["--instance", "sigr", "--directory", dir, "--no-pin", "--no-plugins",
                                       "--durability", "async", "--data-dir", data])
        #expect(waitFor(10) { (try? EngineFile.attach(directory: dir))?.isServing ?? false })
        let load = Process()
        load.executableURL = crossbookBinary()
        load.arguments = ["load", "--instance", "sigr", "--directory", dir, "--rate", "0", "--orders", "3000000",
                          "--duration", "120", "--quiet"]
        load.standardOutput = FileHandle.nullDevice
        try load.run()
        load.waitUntilExit()
        first.signal(SIGTERM)
        #expect(first.waitForExit(30) == 0)
        // Again: a stop as soon as recovery begins.
        let second = try EngineProcess(["--instance", "sigr", "--directory", dir, "--no-pin", "--no-plugins",
                                        "--durability", "async", "--data-dir", data])
        #expect(waitFor(30) { second.log.contains("shard 0: recovering from") }, "\(second.log.all)")
        second.signal(SIGTERM)
        #expect(second.waitForExit(30) == 0)
        #expect(second.log.contains("recovery stopped at sequence"), "\(second.log.all)")
        #expect(!second.log.contains("recovered "), "the recovery ran to its end: \(second.log.all)")
        #expect(access(dir, F_OK) != 0, "the instance directory is removed")
    }
}

@Suite("Market-data consumers", .serialized)
struct ConsumerTests {
    @Test("a consumer that stops reading holds the shard, and SIGTERM still stops the engine")
    func stopWhileHeld() throws {
        let dir = testDirectory()
        let engine = try EngineProcess.serving("held", dir)
        let ring = try EventRing.attach(path: InstanceLayout.eventRingPath(dir, shard: 0))
        let consumer = try ring.consumer(mayDetach: false)  // attached, never reads
        let client = try CrossbookClient(instance: "held", directory: dir)
        let btc = try client.symbol("BTC-USD")
        // Crossing orders: a trade and level changes each, far more events than the ring holds.
        let control = try EngineFile.attach(directory: dir)
        var sent = 0
        let deadline = Date().addingTimeInterval(10)
        while sent < 60_000 && Date() < deadline && control.counters(0).read(.eventWaits) == 0 {
            let id = OrderId(sent + 1)
            if client.submit(.new(NewOrder(orderId: id, side: id % 2 == 0 ? .buy : .sell, price: 1000, quantity: 1)), symbol: btc) {
                sent += 1
            } else {
                _ = try? client.poll { _ in }
            }
        }
        #expect(waitFor(5) { control.counters(0).read(.eventWaits) > 0 }, "the consumer never held the shard")
        engine.signal(SIGTERM)
        #expect(engine.waitForExit(20) == 0, "the engine did not stop while a consumer held it: \(engine.log.all)")
        if engine.process.isRunning { engine.signal(SIGKILL) }
        _ = consumer
        client.close()
    }

    @Test("consumers killed while attached are reclaimed: the 17th and later readers still attach")
    func deadConsumersReclaimed() throws {
        let dir = testDirectory()
        let engine = try EngineProcess.serving("reclaim", dir)
        defer { engine.stop() }
        let ring = try EventRing.attach(path: InstanceLayout.eventRingPath(dir, shard: 0))
        for round in 0..<20 {
            let md = Process()
            md.executableURL = crossbookBinary()
            md.arguments = ["md", "--instance", "reclaim", "--directory", dir]
            md.standardOutput = FileHandle.nullDevice
            md.standardError = FileHandle.nullDevice
            try md.run()
            let pid = md.processIdentifier
            #expect(waitFor(10) { ring.consumerLags().contains { $0.pid == pid } }, "round \(round): md never attached")
            kill(pid, SIGKILL)
            md.waitUntilExit()
        }
        #expect(throws: Never.self) { _ = try ring.consumer(mayDetach: true) }
    }
}

@Suite("Instance directory", .serialized)
struct InstanceDirectoryTests {
    func settings(_ dir: String, group: gid_t? = nil) -> EngineSettings {
        EngineSettings(instance: "plant", directory: dir, group: group, shards: [ShardSettings(core: nil)],
                       symbols: [(spec: SymbolSpec(name: "BTC-USD", id: 1), shard: 0)],
                       capacity: BookCapacity(orders: 1 << 10, levels: 1 << 8),
                       wait: WaitStrategy(spins: 100, yields: 10, park: true, parkTimeoutNanoseconds: 10_000_000))
    }

    @Test("a planted symbolic link, a directory of another user, or a non-sticky world-writable parent is refused, and nothing in it is touched")
    func planted() throws {
        let tag = UUID().uuidString.prefix(8)
        // A link in /dev/shm to a directory with files that are not the engine's.
        let victim = NSTemporaryDirectory() + "crossbook-victim-\(tag)"
        mkdir(victim, 0o755)
        defer { removeTree(victim) }
        FileManager.default.createFile(atPath: victim + "/keep", contents: Data("x".utf8))
        let link = "/dev/shm/crossbook-link-\(tag)"
        #expect(symlink(victim, link) == 0)
        defer { unlink(link) }
        for dir in [link, link + "/inst"] {
            let engine = Engine(settings: settings(dir), log: { _ in })
            #expect { _ = try engine.start() } throws: { "\($0)".contains("symbolic link") }
        }
        #expect(access(victim + "/keep", F_OK) == 0)
        #expect(((try? FileManager.default.contentsOfDirectory(atPath: victim)) ?? []) == ["keep"])
        if geteuid() == 0 {
            // A directory someone else made in /dev/shm.
            let theirs = "/dev/shm/crossbook-theirs-\(tag)"
            mkdir(theirs, 0o777)
            chown(theirs, 12345, 12345)
            defer { rmdir(theirs) }
            let engine = Engine(settings: settings(theirs + "/inst"), log: { _ in })
            #expect { _ = try engine.start() } throws: { "\($0)".contains("belongs to uid 12345") }
        }
        // A parent anyone can write to, without the sticky bit.
        let open = NSTemporaryDirectory() + "crossbook-open-\(tag)"
        mkdir(open, 0o777)
        chmod(open, 0o777)
        defer { removeTree(open) }
        let engine = Engine(settings: settings(open + "/inst"), log: { _ in })
        #expect { _ = try engine.start() } throws: { "\($0)".contains("writable by others") }
        #expect(access(open + "/inst", F_OK) != 0)
    }

    @Test("each user has their own parent directory by default")
    func perUserDefault() {
        #expect(InstanceLayout.defaultDirectory("x") == "/dev/shm/crossbook-\(getuid())/x")
    }

    @Test("group = ...: the instance directory and its files belong to the group, and a member who is another user attaches and trades")
    func groupMember() throws {
        guard geteuid() == 0, access("/usr/bin/setpriv", X_OK) == 0 else { return }  // needs root to act as another user
        let dir = testDirectory()
        let group: gid_t = 12345
        let engine = Engine(settings: settings(dir, group: group), log: { _ in })
        _ = try engine.start()
        defer { engine.stop() }
        var info = stat()
        #expect(stat(dir, &info) == 0 && info.st_gid == group && info.st_mode & 0o7777 == 0o2770)
        for file in [InstanceLayout.doorbellsPath(dir), InstanceLayout.symbolsPath(dir), InstanceLayout.eventRingPath(dir, shard: 0)] {
            #expect(stat(file, &info) == 0 && info.st_gid == group && info.st_mode & 0o777 == 0o660, "\(file)")
        }
        #expect(stat(InstanceLayout.enginePath(dir), &info) == 0 && info.st_gid == group && info.st_mode & 0o777 == 0o440)
        // A member reads the control file but cannot write it (nor shrink it under the engine).
        for (flags, allowed) in [("os.O_RDONLY", true), ("os.O_RDWR", false)] {
            let probe = Process()
            probe.executableURL = URL(fileURLWithPath: "/usr/bin/setpriv")
            probe.arguments = ["--reuid=12346", "--regid=\(group)", "--clear-groups", "/usr/bin/python3", "-c",
                               "import os, sys; os.open(sys.argv[1], \(flags))", InstanceLayout.enginePath(dir)]
            probe.standardError = Pipe()
            try probe.run()
            probe.waitUntilExit()
            #expect((probe.terminationStatus == 0) == allowed, "a member opening the control file with \(flags)")
        }
        let member = Process()
        member.executableURL = URL(fileURLWithPath: "/usr/bin/setpriv")
        member.arguments = ["--reuid=12346", "--regid=\(group)", "--clear-groups", crossbookBinary().path,
                            "submit", "--instance", "plant", "--directory", dir, "--wait", "1", "N,BTC-USD,1,1,B,LMT,100,1,GTC"]
        let out = Pipe(), err = Pipe()
        member.standardOutput = out
        member.standardError = err
        try member.run()
        member.waitUntilExit()
        let printed = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        let complaint = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        #expect(member.terminationStatus == 0 && printed.contains("ACK"), "\(printed) \(complaint)")
        // Streams are per user: the member's "desk-1" is not this user's "desk-1".
        let mine = try CrossbookClient(instance: "plant", directory: dir, stream: "desk-1")
        let btc = try mine.symbol("BTC-USD")
        #expect(mine.submit(.new(NewOrder(orderId: 5, side: .buy, price: 100, quantity: 1)), symbol: btc, clientSequence: 7))
        _ = try mine.waitForReports(timeout: 5) { _ in }
        let theirs = Process()
        theirs.executableURL = URL(fileURLWithPath: "/usr/bin/setpriv")
        theirs.arguments = ["--reuid=12346", "--regid=\(group)", "--clear-groups", crossbookBinary().path,
                            "submit", "--instance", "plant", "--directory", dir, "--wait", "1", "--stream", "desk-1", "N,BTC-USD,2,1,B,LMT,100,1,GTC"]
        let theirOut = Pipe()
        theirs.standardOutput = theirOut
        theirs.standardError = Pipe()
        try theirs.run()
        theirs.waitUntilExit()
        let theirPrinted = String(decoding: theirOut.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        // A stream of its own: nothing of it taken yet, another session, and its order taken.
        #expect(theirs.terminationStatus == 0 && theirPrinted.contains("resume 0") && theirPrinted.contains("ACK")
                && !theirPrinted.contains("session \(mine.sessionId) "), "\(theirPrinted)")
        #expect(engine.adminState(shard: 0)?.positions["client:\(geteuid()):desk-1#0"] == 7)
        #expect(engine.adminState(shard: 0)?.positions["client:12346:desk-1#0"] == 0)
        mine.close()
    }
}

@Suite("Files a client can shrink", .serialized)
struct ShrunkFileTests {
    @Test("a client that truncates its rings and session file while attached is detached; the engine lives on and serves others")
    func truncatedRings() throws {
        let dir = testDirectory()
        let engine = try EngineProcess.serving("trunc", dir)
        defer { engine.stop() }
        // The hostile client: attached, orders acknowledged, then it truncates its files. (It
        // does not touch its own rings again: in its process they would raise SIGBUS too.)
        let hostile = try CrossbookClient(instance: "trunc", directory: dir)
        let sym = try hostile.symbol("BTC-USD")
        for id in 1...5 { _ = hostile.submit(.new(NewOrder(orderId: OrderId(id), side: .buy, price: 100, quantity: 1)), symbol: sym) }
        var acks = 0
        let until = Date().addingTimeInterval(5)
        while acks < 5 && Date() < until { acks += try hostile.waitForReports(timeout: 0.1) { _ in } }
        let prefix = hostile.name + "."
        let files = ((try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []).filter { $0.hasPrefix(prefix) }
        #expect(files.count >= 3, "\(files)")
        for name in files { truncate(dir + "/" + name, 0) }
        // Another client's order wakes the shard, which reads every session's ring: the hostile
        // one's pages are gone under it. The engine lives, detaches it, and serves the other.
        let client = try CrossbookClient(instance: "trunc", directory: dir)
        defer { client.close() }
        let btc = try client.symbol("BTC-USD")
        #expect(client.submit(.new(NewOrder(orderId: 1, side: .buy, price: 100, quantity: 1)), symbol: btc))
        var acked = false
        _ = try client.waitForReports(timeout: 5) { if $0.kind == .accepted { acked = true } }
        #expect(acked)
        #expect(waitFor(5) { engine.log.contains("shrank a file the engine had mapped") }, "\(engine.log.all)")
        #expect(engine.process.isRunning, "the engine died: \(engine.log.all)")
        withExtendedLifetime(hostile) {}
    }

    @Test("a full /dev/shm is a clear error when a client attaches, not a bus error later")
    func fullShm() throws {
        let root = NSTemporaryDirectory() + "crossbook-fullshm-\(UUID().uuidString.prefix(8))"
        mkdir(root, 0o700)
        defer { rmdir(root) }
        try withTmpfs(size: "2m", at: root) {
            let dir = root + "/inst"
            var settings = oneShardSettings("fullshm", dir, orders: 1 << 10, levels: 1 << 8)
            settings.eventRingCapacity = 1024
            let engine = Engine(settings: settings, log: { _ in })
            _ = try engine.start()
            defer { engine.stop() }
            // 2 rings of 65536 slots (4 MiB each) do not fit in what is left of 2 MiB.
            #expect {
                _ = try CrossbookClient(instance: "fullshm", directory: dir, ringCapacity: 65536)
            } throws: { "\($0)".contains("No space left") }
            // A client that fits is served.
            let client = try CrossbookClient(instance: "fullshm", directory: dir, ringCapacity: 256)
            defer { client.close() }
            let btc = try client.symbol("BTC-USD")
            #expect(client.submit(.new(NewOrder(orderId: 1, side: .buy, price: 100, quantity: 1)), symbol: btc))
            var acked = false
            _ = try client.waitForReports(timeout: 5) { if $0.kind == .accepted { acked = true } }
            #expect(acked)
        }
    }
}

@Suite("Leftovers of clients")
struct OrphanFileTests {
    @Test("files of a client that died before its attach completed are removed; a live process's are kept")
    func orphans() throws {
        let dir = testDirectory()
        let settings = oneShardSettings("orphans", dir, orders: 1 << 10, levels: 1 << 8)
        let log = LogLines()
        let engine = Engine(settings: settings, log: { log.append($0) })
        _ = try engine.start()
        defer { engine.stop() }
        let dead = Process()
        dead.executableURL = URL(fileURLWithPath: "/bin/true")
        try dead.run()
        dead.waitUntilExit()
        let gone = "c\(dead.processIdentifier)-1", alive = "c\(getpid())-99"
        // What a client leaves when it dies between creating its rings and the engine's answer.
        for name in [gone + ".cmd.0", gone + ".rep.0", gone + ".session", alive + ".cmd.0", alive + ".session"] {
            FileManager.default.createFile(atPath: dir + "/" + name, contents: Data(count: 512))
        }
        #expect(waitFor(5) { [".cmd.0", ".rep.0", ".session"].allSatisfy { access(dir + "/" + gone + $0, F_OK) != 0 } })
        #expect(access(dir + "/" + alive + ".cmd.0", F_OK) == 0 && access(dir + "/" + alive + ".session", F_OK) == 0)
        #expect(log.contains("file(s) of clients that died before their attach completed"), "\(log.all)")
        unlink(dir + "/" + alive + ".cmd.0")
        unlink(dir + "/" + alive + ".session")
    }
}
