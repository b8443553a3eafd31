// The crossbook tool as a user runs it: a real process, real files, exit codes and output.
import Foundation
import Glibc
import Journal
import SharedMemory
import Testing

struct RunResult {
    var status: Int32
    var stdout: String
    var stderr: String
}

/// The crossbook binary built next to this test bundle.
func crossbookBinary() -> URL {
    let exe = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath()
    return exe.deletingLastPathComponent().appendingPathComponent("crossbook")
}

func runCrossbook(_ arguments: [String], stdin: String? = nil, environment: [String: String] = [:]) throws -> RunResult {
    let process = Process()
    process.executableURL = crossbookBinary()
    process.arguments = arguments
    if !environment.isEmpty { process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 } }
    let out = Pipe(), err = Pipe(), input = Pipe()
    process.standardOutput = out
    process.standardError = err
    process.standardInput = input
    try process.run()
    if let stdin { input.fileHandleForWriting.write(Data(stdin.utf8)) }
    try input.fileHandleForWriting.close()
    let o = out.fileHandleForReading.readDataToEndOfFile()
    let e = err.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    return RunResult(status: process.terminationStatus, stdout: String(decoding: o, as: UTF8.self),
                     stderr: String(decoding: e, as: UTF8.self))
}

func temporaryFile(_ contents: String, suffix: String = ".csv") throws -> String {
    let path = NSTemporaryDirectory() + "crossbook-test-\(UUID().uuidString)\(suffix)"
    try contents.write(toFile: path, atomically: true, encoding: .utf8)
    return path
}

/// The repository's sample log, found from this source file.
let samplePath = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
    .deletingLastPathComponent().appendingPathComponent("samples/orders.csv").path

@Suite("crossbook replay")
struct ReplayCLITests {
    @Test("the sample log prints its trades, in order, and the final book")
    func sample() throws {
        let result = try runCrossbook(["replay", samplePath, "--trades-only", "--book"])
        #expect(result.status == 0, "\(result.stderr)")
        #expect(result.stdout == """
            T,BTC-USD,1,6,10010,5
            T,BTC-USD,2,6,10010,3
            T,BTC-USD,3,6,10020,2
            T,BTC-USD,4,10,9990,6
            T,BTC-USD,5,10,9980,1
            T,BTC-USD,5,11,9980,1
            T,BTC-USD,3,14,10020,2
            T,ETH-USD,1,2,2500,4
            BOOK,BTC-USD,bids=1,asks=1
            ASK,BTC-USD,10040,2,1
            BID,BTC-USD,9975,4,1
            BOOK,ETH-USD,bids=1,asks=0
            BID,ETH-USD,2500,6,1

            """)
    }

    @Test("a malformed line is reported with its line number and the rest goes on")
    func malformedGoesOn() throws {
        let path = try temporaryFile("N,A,1,1,B,LMT,10,5,GTC\nN,A,2,1,S,LMT,ten,5,GTC\nN,A,3,2,S,LMT,10,5,GTC\n")
        let result = try runCrossbook(["replay", path, "--trades-only"])
        #expect(result.status == 1)
        #expect(result.stderr.contains("\(path):2: price must be a 64-bit integer, got 'ten'"))
        #expect(result.stdout == "T,A,1,3,10,5\n")
    }

    @Test("--strict stops at the first malformed line")
    func strictStops() throws {
        let path = try temporaryFile("N,A,1,1,B,LMT,10,5,GTC\nbogus\nN,A,3,2,S,LMT,10,5,GTC\n")
        let result = try runCrossbook(["replay", path, "--trades-only", "--strict"])
        #expect(result.status == 1)
        #expect(result.stderr.contains(":2: unknown command 'bogus'"))
        #expect(result.stdout.isEmpty)
    }

    @Test("a config declares tick, lot and band; other symbols get tick 1 and lot 1")
    func config() throws {
        let config = try temporaryFile("""
            [book]
            orders = 128
            levels = 16

            [[symbols]]
            name = "BTC-USD"
            tick_size = 5
            lot_size = 2
            min_price = 100
            max_price = 200
            max_order_quantity = 10
            """, suffix: ".toml")
        let log = try temporaryFile("""
            N,BTC-USD,1,1,B,LMT,101,2,GTC
            N,BTC-USD,2,1,B,LMT,100,3,GTC
            N,BTC-USD,3,1,B,LMT,205,2,GTC
            N,BTC-USD,4,1,B,LMT,100,12,GTC
            N,BTC-USD,5,1,B,LMT,100,2,GTC
            N,OTHER,1,1,B,LMT,101,3,GTC
            """)
        let result = try runCrossbook(["replay", log, "--config", config])
        #expect(result.status == 0, "\(result.stderr)")
        let lines = result.stdout.split(separator: "\n")
        #expect(lines.contains("REJ,BTC-USD,1,price_off_tick"))
        #expect(lines.contains("REJ,BTC-USD,2,quantity_off_lot"))
        #expect(lines.contains("REJ,BTC-USD,3,price_outside_band"))
        #expect(lines.contains("REJ,BTC-USD,4,quantity_above_maximum"))
        #expect(lines.contains("ACK,BTC-USD,5,B,100,2"))
        #expect(lines.contains("ACK,OTHER,1,B,101,3"))
    }

    @Test("a bad config is refused with its file, place and cause", arguments: [
        ("[[symbols]]\nname = \"X\"\ntick_size = 0\n", "tick size must be positive"),
        ("[[symbols]]\nname = \"X\"\ntick = 5\n", "unknown key 'tick'"),
        ("[book]\norders = \"many\"\n", "orders must be an integer"),
        ("[[symbols]]\nname = \"X\"\n[[symbols]]\nname = \"X\"\n", "declared twice"),
        ("[book\n", ".toml:"),
        ("[book]\norders = 0\n", "orders must be between 1 and"),
        ("[book]\norders = 100000000\n[[symbols]]\nname = \"X\"\nmax_order_quantity = 100000000000\n", "overflows 64 bits"),
        ("[engine]\nlag_timeout_ms = 20000000000000\n", "lag_timeout_ms must be between 1 and 3600000"),
        ("[[symbols]]\nname = \"BTC USD\"\n", "a name is 1 to 32"),
        ("[[symbols]]\nname = \"BTC\\nUSD\"\n", "a name is 1 to 32"),
        ("[[shards]]\ncore = -3\n", "core must be between 0 and 65535"),
        ("[[symbols]]\nname = \"X\"\nshard = 99999999999\n", "shard must be between 0 and 1023"),
        ("[replication]\nsync_standbys = 0\n", "sync_standbys must be between 1 and 8, got 0"),
        ("[replication]\nsync_standbys = 9\n", "sync_standbys must be between 1 and 8, got 9"),
        ("[replication]\nlease = \"redis://127.0.0.1:6379/main\"\n", "the lease is taken through a plugin now"),
        ("[replication]\nlease = \"a b\"\n", "the key must be 1 to 200 printable characters"),
        ("[replication]\nlease = \"main\"\nlease_password_file = \"/etc/p\"\n", "lease_password_file is gone"),
        // toml++ asserted (abort) on these, found by fuzz/fuzz-config.
        ("[[[a]]\n", ".toml:1: a table header must start with a key"),
        ("[.a]\n", ".toml:1: a table header must start with a key"),
        ("A =[[}}\n", "the TOML parser cannot read this file"),
    ])
    func badConfig(text: String, mention: String) throws {
        let config = try temporaryFile(text, suffix: ".toml")
        let result = try runCrossbook(["replay", samplePath, "--config", config])
        #expect(result.status != 0)
        #expect(result.stderr.contains(mention), "\(result.stderr)")
        #expect(!result.stderr.contains("Usage:"), "a runtime error is not a usage error")
        #expect(result.stdout.isEmpty)
    }

    @Test("run --check-config prints the memory a configuration needs; one the host cannot give is refused before anything is created")
    func memoryCheck() throws {
        let fits = try runCrossbook(["run", "--check-config"])
        #expect(fits.status == 0 && fits.stdout.contains("memory: ") && fits.stdout.contains("available: "), "\(fits.stdout)\(fits.stderr)")
        let huge = try temporaryFile("[book]\norders = 268435455\n", suffix: ".toml")
        let check = try runCrossbook(["run", "--check-config", "--config", huge])
        #expect(check.status != 0 && check.stderr.contains("more memory than the host has"), "\(check.stderr)")
        var many = ""
        for i in 0..<20_000 { many += "[[symbols]]\nname = \"S\(i)\"\n" }
        let manyFile = try temporaryFile(many, suffix: ".toml")
        let manyCheck = try runCrossbook(["run", "--check-config", "--config", manyFile])
        #expect(manyCheck.status != 0, "20,000 symbols at the default capacity: \(manyCheck.stdout)")
        let dir = "/dev/shm/crossbook-mem-\(getpid())"
        let start = try runCrossbook(["run", "--config", huge, "--instance", "memx", "--directory", dir, "--no-plugins",
                                      "--durability", "none", "--no-pin"])
        #expect(start.status != 0 && start.stderr.contains("MiB available"), "\(start.stderr)")
        #expect(access(dir, F_OK) != 0, "nothing is created for a configuration that is refused")
    }

    @Test("--declared-symbols-only rejects an unknown symbol with a reason")
    func unknownSymbol() throws {
        let result = try runCrossbook(["replay", "-", "--declared-symbols-only"], stdin: "N,NOPE,1,1,B,LMT,10,5,GTC\n")
        #expect(result.status == 0)
        #expect(result.stdout == "REJ,NOPE,1,unknown_symbol\n")
    }

    @Test("a missing order log is one clear error")
    func missingFile() throws {
        let result = try runCrossbook(["replay", "/nonexistent/orders.csv"])
        #expect(result.status != 0)
        #expect(result.stderr.contains("cannot read the order log /nonexistent/orders.csv"))
    }

    @Test("crossbook host reports io_uring and NUMA")
    func host() throws {
        let result = try runCrossbook(["host"])
        #expect(result.status == 0)
        #expect(result.stdout.contains("io_uring:"))
        #expect(result.stdout.contains("numa:"))
    }
}

@Suite("tuning/check")
struct TuningCheckTests {
    @Test("runs on this host and reports each check and a count of warnings")
    func runsHere() throws {
        let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().appendingPathComponent("tuning/check")
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/bin/bash")
        process.arguments = [script.path, "0"]
        let out = Pipe()
        process.standardOutput = out
        try process.run()
        let text = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        let warnings = Int(text.split(separator: "\n").last?.split(separator: " ").first ?? "") ?? -1
        // Exit status 1 when something needs a look, 0 when nothing does.
        #expect(warnings >= 0 && process.terminationStatus == (warnings == 0 ? 0 : 1), "\(warnings) warnings, status \(process.terminationStatus)")
        #expect(text.contains("isolcpus"))
        #expect(text.contains("transparent huge pages"))
        #expect(text.contains("clocksource"))
        let last = text.split(separator: "\n").last.map(String.init) ?? ""
        #expect(last.hasSuffix("warning(s)"), "\(last)")
    }
}

@Suite("crossbook journal")
struct JournalCLITests {
    @Test("verify counts a good journal, and names the file, offset and sequence of a corrupt record")
    func verify() throws {
        let dir = NSTemporaryDirectory() + "crossbook-cli-journal-\(UUID().uuidString.prefix(8))"
        mkdir(dir, 0o700)
        defer {
            for f in (try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? [] { unlink(dir + "/" + f) }
            rmdir(dir)
        }
        let writer = try JournalWriter(config: JournalConfig(directory: dir, shard: 0, segmentSize: 1 << 20,
                                                             bufferSize: 1 << 16), lastSequence: 0)
        let bytes = [UInt8](repeating: 0xAB, count: 40)
        // Two batches: 1...50, then 51...60 (damage in the last batch alone would be a torn tail).
        for s in 1...60 as ClosedRange<UInt64> {
            _ = try bytes.withUnsafeBytes { try writer.append(type: 1, sequence: s, payload: $0) }
            if s == 50 { try writer.flush() }
        }
        try writer.flush()
        let good = try runCrossbook(["journal", "verify", dir])
        #expect(good.status == 0)
        #expect(good.stdout.contains("60 records, sequences 1...60"))
        // Flip a byte in record 3 (after the 56-byte batch header, each record is 64 bytes here:
        // 24 of header, 40 of payload).
        let path = JournalReader.segments(directory: dir, shard: 0)[0]
        let fd = open(path, O_RDWR)
        var byte: UInt8 = 0x00
        _ = pwrite(fd, &byte, 1, off_t(64 + 56 + 2 * 64 + 30))
        close(fd)
        let bad = try runCrossbook(["journal", "verify", dir])
        #expect(bad.status != 0)
        #expect(bad.stderr.contains("\(path): corrupt record at offset 248 (sequence 3): CRC mismatch"), "\(bad.stderr)")
    }
}

@Suite("crossbook replay --journal")
struct JournalReplayCLITests {
    /// Starts `crossbook run` on a data directory and waits until it serves.
    func startEngine(_ instance: String, _ shm: String, _ data: String) throws -> (Process, Pipe) {
        let engine = Process()
        engine.executableURL = crossbookBinary()
        engine.arguments = ["run", "--instance", instance, "--directory", shm, "--data-dir", data, "--no-pin", "--clean-stale"]
        let err = Pipe()
        engine.standardError = err
        try engine.run()
        let deadline = Date().addingTimeInterval(10)
        while Date() < deadline {
            if let r = try? runCrossbook(["stat", "--instance", instance, "--directory", shm, "--count", "1", "--interval", "0.01"]),
               // This engine's pid: the files of the one killed before still say "running".
               r.stdout.contains("pid \(engine.processIdentifier),"), r.stdout.contains("state running") { break }
            usleep(20_000)
        }
        return (engine, err)
    }

    @Test("rebuilds the books a killed engine journaled, with the digest the restarted engine prints")
    func journalReplay() throws {
        let tag = UUID().uuidString.prefix(8)
        let shm = "/dev/shm/crossbook-cli-\(tag)", data = NSTemporaryDirectory() + "crossbook-cli-data-\(tag)"
        defer { try? FileManager.default.removeItem(atPath: data) }
        let (engine, _) = try startEngine("cj\(tag)", shm, data)
        let submitted = try runCrossbook(["submit", "--instance", "cj\(tag)", "--directory", shm,
                                          "N,BTC-USD,1,7,S,LMT,10000,5,GTC", "N,BTC-USD,2,8,B,LMT,9990,3,GTC",
                                          "N,ETH-USD,3,8,B,LMT,2000,1,GTC"])
        #expect(submitted.stdout.contains("ACK,ETH-USD,3,B,2000,1"), "\(submitted.stdout) \(submitted.stderr)")
        kill(engine.processIdentifier, SIGKILL)
        engine.waitUntilExit()
        let replay = try runCrossbook(["replay", "--journal", data, "--book"])
        #expect(replay.status == 0, "\(replay.stderr)")
        #expect(replay.stdout.contains("ASK,BTC-USD,10000,5,1\nBID,BTC-USD,9990,3,1\n"))
        #expect(replay.stdout.contains("BID,ETH-USD,2000,1,1"))
        let digest = replay.stdout.split(separator: "\n").first { $0.hasPrefix("DIGEST,shard 0,") }?.split(separator: ",").last
        #expect(digest != nil)
        // The engine restarted on the same journal logs the same digest.
        let (again, err) = try startEngine("cj\(tag)", shm, data)
        kill(again.processIdentifier, SIGINT)
        again.waitUntilExit()
        let log = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        #expect(log.contains("state digest \(digest ?? "?")"), "\(log)")
    }
}

@Suite("Tools on hostile input")
struct ToolInputTests {
    @Test("ring inspect names corrupt cursors instead of crashing; ring produce refuses a corrupt ring and gives up on a full one")
    func corruptRing() throws {
        let path = "/dev/shm/crossbook-ringtool-\(getpid())"
        defer { unlink(path) }
        _ = try Ring.create(path: path, capacity: 64)
        let fd = open(path, O_RDWR)
        var cursor = UInt64.max
        #expect(pwrite(fd, &cursor, 8, 128) == 8)  // the producer cursor
        close(fd)
        let inspect = try runCrossbook(["ring", "inspect", path])
        #expect(inspect.status == 1 && inspect.stdout.contains("CORRUPT"), "\(inspect.stdout)\(inspect.stderr)")
        #expect(inspect.stdout.contains("producer cursor \(UInt64.max)"))
        let produce = try runCrossbook(["ring", "produce", path, "--count", "10"])
        #expect(produce.status != 0 && produce.stderr.contains("corrupt cursors"), "\(produce.stderr)")
        // A sound ring that nobody reads: full after 64, then a clear error, not a hang.
        unlink(path)
        _ = try Ring.create(path: path, capacity: 64)
        let full = try runCrossbook(["ring", "produce", path, "--count", "100", "--timeout", "0.3"])
        #expect(full.status != 0 && full.stderr.contains("no room") && full.stderr.contains("64 of 100 written"), "\(full.stderr)")
    }

    @Test("numbers a tool cannot use are refused before anything runs", arguments: [
        ["stat", "--interval", "5000"], ["stat", "--interval", "0"], ["stat", "--interval", "nan"], ["stat", "--count=-1"],
        ["submit", "--wait", "nan", "N,BTC-USD,1,1,B,LMT,10,5,GTC"], ["submit", "--wait=-1", "N,BTC-USD,1,1,B,LMT,10,5,GTC"],
    ])
    func badNumbers(arguments: [String]) throws {
        let result = try runCrossbook(arguments + ["--instance", "nosuch-\(getpid())"])
        #expect(result.status == 64, "\(arguments): \(result.status) \(result.stderr)")
        #expect(result.stderr.contains("must be"), "\(result.stderr)")
    }

    @Test("replay rejects the order ids the engine rejects")
    func orderIdRange() throws {
        let result = try runCrossbook(["replay", "-"], stdin: "N,BTC,-1,1,B,LMT,10,5,GTC\nN,BTC,281474976710656,1,B,LMT,10,5,GTC\nN,BTC,281474976710655,1,B,LMT,10,5,GTC\n")
        #expect(result.stdout.contains("REJ,BTC,-1,order_id_out_of_range"))
        #expect(result.stdout.contains("REJ,BTC,281474976710656,order_id_out_of_range"))
        #expect(result.stdout.contains("ACK,BTC,281474976710655"))
    }

    @Test("a killed replay --journal's instance directory is removed by the next replay")
    func replayLeftovers() throws {
        let dead = Process()
        dead.executableURL = URL(fileURLWithPath: "/bin/true")
        try dead.run()
        dead.waitUntilExit()
        let leftover = "/dev/shm/crossbook-replay-\(dead.processIdentifier)"
        mkdir(leftover, 0o700)
        FileManager.default.createFile(atPath: leftover + "/control", contents: Data([1, 2, 3]))
        let data = NSTemporaryDirectory() + "crossbook-emptydata-\(getpid())"
        mkdir(data, 0o700)
        defer { rmdir(data) }
        _ = try runCrossbook(["replay", "--journal", data])
        #expect(access(leftover, F_OK) != 0, "the dead replay's directory is still there")
    }
}

@Suite("A CLI that tells the truth", .serialized)
struct TruthfulCLITests {
    @Test("exit status: journal tools on a missing directory, stat on no engine or a dead one, submit rejected (2) or unanswered (3); --version on every command; the instance from CROSSBOOK_INSTANCE; stat --json, --symbols and percentiles; journal dump filtered by sequence and time")
    func exitCodesAndViews() throws {
        let missing = NSTemporaryDirectory() + "crossbook-none-\(UUID().uuidString.prefix(8))"
        for verb in ["verify", "dump", "truncate"] {
            let r = try runCrossbook(["journal", verb, missing])
            #expect(r.status == 1 && r.stderr.contains("No such file"), "journal \(verb): \(r.status) \(r.stderr)")
        }
        let empty = NSTemporaryDirectory() + "crossbook-empty-\(UUID().uuidString.prefix(8))"
        mkdir(empty, 0o700)
        defer { rmdir(empty) }
        let none = try runCrossbook(["journal", "verify", empty])
        #expect(none.status == 1 && none.stderr.contains("no journal segment of shard 0"), "\(none.stderr)")
        let version = try runCrossbook(["--version"]).stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(version.split(separator: ".").count == 3 && version.split(separator: ".").allSatisfy { Int($0) != nil }, "\(version)")
        for command in [["run", "--version"], ["stat", "--version"], ["journal", "dump", "--version"], ["submit", "--version"]] {
            let v = try runCrossbook(command)
            #expect(v.status == 0 && v.stdout.trimmingCharacters(in: .whitespacesAndNewlines) == version, "\(command): \(v.stdout)")
        }
        // What make install turns into shell completions and man pages.
        for shell in ["bash", "zsh", "fish"] {
            let completion = try runCrossbook(["--generate-completion-script", shell])
            #expect(completion.status == 0 && completion.stdout.contains("journal") && completion.stdout.contains("log-format"), "\(shell)")
        }
        let dump = try runCrossbook(["--experimental-dump-help"])
        #expect(dump.status == 0 && (try? JSONSerialization.jsonObject(with: Data(dump.stdout.utf8))) != nil)
        let gone = try runCrossbook(["stat", "--count", "1"], environment: ["CROSSBOOK_INSTANCE": "nobody-\(UUID().uuidString.prefix(6))"])
        #expect(gone.status == 1 && gone.stderr.contains("nobody-"), "\(gone.stderr)")

        // A live engine, named only through the environment.
        let tag = String(UUID().uuidString.prefix(8))
        let instance = "truth\(tag)", data = NSTemporaryDirectory() + "crossbook-truth-\(tag)"
        defer { try? FileManager.default.removeItem(atPath: data) }
        let env = ["CROSSBOOK_INSTANCE": instance]
        let engine = Process()
        engine.executableURL = crossbookBinary()
        engine.arguments = ["run", "--data-dir", data, "--no-pin", "--clean-stale", "--no-plugins"]
        engine.environment = ProcessInfo.processInfo.environment.merging(env) { $1 }
        engine.standardError = FileHandle.nullDevice
        try engine.run()
        defer {
            kill(engine.processIdentifier, SIGCONT)
            kill(engine.processIdentifier, SIGINT)
            engine.waitUntilExit()
        }
        var up = false
        for _ in 0..<200 where !up {
            up = (try? runCrossbook(["stat", "--count", "1", "--interval", "0.01"], environment: env))?.stdout.contains("state running") ?? false
            if !up { usleep(50_000) }
        }
        #expect(up)
        let taken = try runCrossbook(["submit", "N,BTC-USD,1,7,S,LMT,10000,5,GTC", "N,BTC-USD,2,8,B,LMT,10000,2,GTC"], environment: env)
        #expect(taken.status == 0 && taken.stdout.contains("FILL,BTC-USD,2,10000,2,0,taker"), "\(taken)")
        let rejected = try runCrossbook(["submit", "N,BTC-USD,3,7,S,LMT,10000,0,GTC"], environment: env)
        #expect(rejected.status == 2 && rejected.stdout.contains("REJ,BTC-USD,3,quantity_zero"), "\(rejected)")
        #expect(rejected.stderr.contains("1 of 1 command(s) rejected"))
        // Order ids are the session's: a cancel from another session is for an order it does not have.
        let foreign = try runCrossbook(["submit", "C,BTC-USD,1"], environment: env)
        #expect(foreign.status == 2 && foreign.stdout.contains("REJ,BTC-USD,1,unknown_order_id"), "\(foreign)")
        let cancel = try runCrossbook(["submit", "N,BTC-USD,5,7,S,LMT,10100,3,GTC", "C,BTC-USD,5"], environment: env)
        #expect(cancel.status == 0 && cancel.stdout.contains("CXL,BTC-USD,5,3"), "\(cancel)")

        // stat: JSON, the symbols, the latency percentiles of the interval.
        let json = try runCrossbook(["stat", "--count", "1", "--interval", "0.2", "--json"], environment: env)
        #expect(json.status == 0)
        let frame = try JSONSerialization.jsonObject(with: Data(json.stdout.utf8)) as? [String: Any]
        #expect(frame?["instance"] as? String == instance)
        let shards = frame?["shards"] as? [[String: Any]] ?? []
        #expect(((shards.first?["totals"] as? [String: Any])?["commands"] as? Int) == 6)
        // Nothing arrived in the interval: the shard was not busy, and has no time per command.
        #expect(shards.first?["busy_percent"] as? Double == 0 && shards.first?["busy_ns_per_command"] as? Double == 0, "\(json.stdout)")
        let symbols = frame?["symbols"] as? [[String: Any]] ?? []
        #expect(symbols.contains { $0["name"] as? String == "BTC-USD" && (($0["totals"] as? [String: Any])?["trades"] as? Int) == 1 })
        let text = try runCrossbook(["stat", "--count", "1", "--interval", "0.05", "--symbols"], environment: env)
        #expect(text.stdout.contains("symbol BTC-USD (id 1) shard 0:") && text.stdout.contains("latency match per batch")
                && text.stdout.contains("| busy 0.0%\n"), "\(text.stdout)")

        // No answer: connected, then the engine stopped (SIGSTOP), then the command (from
        // standard input, read once connected) waits in its ring.
        let sessionsBefore = (try? EngineFile.attach(directory: InstanceLayout.defaultDirectory(instance)))?.counters(0).read(.sessions) ?? 0
        let late = Process()
        late.executableURL = crossbookBinary()
        late.arguments = ["submit", "--wait", "0.3", "-"]
        late.environment = ProcessInfo.processInfo.environment.merging(env) { $1 }
        let lateIn = Pipe(), lateErr = Pipe(), lateOut = Pipe()
        late.standardInput = lateIn
        late.standardError = lateErr
        late.standardOutput = lateOut
        try late.run()
        var connected = false
        for _ in 0..<200 where !connected {
            connected = ((try? EngineFile.attach(directory: InstanceLayout.defaultDirectory(instance)))?.counters(0).read(.sessions) ?? 0) > sessionsBefore
            if !connected { usleep(20_000) }
        }
        #expect(connected)
        kill(engine.processIdentifier, SIGSTOP)
        // kill() returns before every thread has stopped (under load a shard thread runs on for a
        // while): wait until each of the engine's threads says T (stopped).
        func allStopped(_ pid: Int32) -> Bool {
            guard let tasks = try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/task"), !tasks.isEmpty else { return false }
            return tasks.allSatisfy { tid in
                guard let stat = try? String(contentsOfFile: "/proc/\(pid)/task/\(tid)/stat", encoding: .utf8),
                      let close = stat.lastIndex(of: ")") else { return false }
                return stat[stat.index(after: close)...].trimmingCharacters(in: .whitespaces).hasPrefix("T")
            }
        }
        var stopped = false
        for _ in 0..<1000 where !stopped {
            stopped = allStopped(engine.processIdentifier)
            if !stopped { usleep(10_000) }
        }
        #expect(stopped)
        lateIn.fileHandleForWriting.write(Data("N,BTC-USD,9,7,S,LMT,10000,1,GTC\n".utf8))
        try lateIn.fileHandleForWriting.close()
        late.waitUntilExit()
        let lateText = String(decoding: lateErr.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        let lateReports = String(decoding: lateOut.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        #expect(late.terminationStatus == 3 && lateText.contains("got no answer"), "\(late.terminationStatus) \(lateText) | \(lateReports)")
        let frozen = try runCrossbook(["stat", "--count", "1", "--interval", "0.05"], environment: env)
        #expect(frozen.status == 0, "a stopped (not dead) engine is still there")
        kill(engine.processIdentifier, SIGCONT)

        // journal dump: records decoded, filtered by sequence and by engine time.
        usleep(300_000)
        let all = try runCrossbook(["journal", "dump", data])
        #expect(all.status == 0 && all.stdout.contains("N,#1,1,7,S,LMT,10000,5,GTC"), "\(all.stdout)")
        let second = try runCrossbook(["journal", "dump", data, "--from", "2", "--to", "2"])
        #expect(second.stdout.split(separator: "\n").count == 1 && second.stdout.hasPrefix("2 type 1"), "\(second.stdout)")
        let future = try runCrossbook(["journal", "dump", data, "--since", "2400-01-01T00:00:00Z"])
        #expect(future.status == 0 && future.stdout.isEmpty)
        let past = try runCrossbook(["journal", "dump", data, "--since", "2000-01-01T00:00:00Z", "--until", "2400-01-01T00:00:00.5Z"])
        #expect(past.stdout.split(separator: "\n").count == all.stdout.split(separator: "\n").count)
        for bad in ["yesterday", "2999-01-01T00:00:00Z"] {
            let badTime = try runCrossbook(["journal", "dump", data, "--since", bad])
            #expect(badTime.status != 0 && badTime.stderr.contains("ISO 8601"), "\(bad): \(badTime.stderr)")
        }
    }

    @Test("journal verify, dump and truncate on a journal whose first segments were removed after a snapshot: they read from its first kept record and say where it starts")
    func prunedJournalTools() throws {
        let dir = NSTemporaryDirectory() + "crossbook-pruned-\(UUID().uuidString.prefix(8))"
        mkdir(dir, 0o700)
        defer {
            for name in (try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? [] { unlink(dir + "/" + name) }
            rmdir(dir)
        }
        let writer = try JournalWriter(config: JournalConfig(directory: dir, shard: 0, segmentSize: 64 << 10, bufferSize: 16 << 10),
                                       lastSequence: 0)
        let bytes = [UInt8](repeating: 0xAB, count: 40)
        for s in 1...3000 as ClosedRange<UInt64> {
            while try !bytes.withUnsafeBytes({ try writer.append(type: 1, sequence: s, payload: $0) }) { writer.poll() }
            if s % 100 == 0 { try writer.flush() }
        }
        try writer.flush()
        let files = JournalReader.segments(directory: dir, shard: 0)
        #expect(files.count >= 3)
        let first = try #require(JournalReader.firstSequence(of: files[2]))
        _ = try JournalReader.prune(directory: dir, shard: 0, below: first)
        let verify = try runCrossbook(["journal", "verify", dir])
        #expect(verify.status == 0, "\(verify.stderr)")
        #expect(verify.stdout.contains("sequences \(first)...3000") && verify.stdout.contains("it starts at \(first)"), "\(verify.stdout)")
        let dump = try runCrossbook(["journal", "dump", dir, "--from", "2991"])
        #expect(dump.status == 0 && dump.stdout.split(separator: "\n").count == 10, "\(dump.stdout) \(dump.stderr)")
        let truncate = try runCrossbook(["journal", "truncate", dir])
        #expect(truncate.status == 0 && truncate.stdout.contains("nothing to cut; the journal ends at sequence 3000"), "\(truncate.stdout) \(truncate.stderr)")
    }
}
