// Signals to `crossbook run`: the ones that would kill it without draining are logged and
// ignored; SIGTERM stops it, during a long recovery too.
import Foundation
import Glibc
import SharedMemory
import Testing
import TestSupport

/// `crossbook run` with its stderr collected line by line as it comes.
final class EngineProcess {
    let process = Process()
    let log = LogLines()
    private let pipe = Pipe()
    private let reader: Thread

    init(_ arguments: [String]) throws {
        process.executableURL = crossbookBinary()
        process.arguments = ["run"] + arguments
        process.standardError = pipe
        process.standardOutput = FileHandle.nullDevice
        let handle = pipe.fileHandleForReading, log = log
        reader = Thread {
            var pending = ""
            while true {
                let data = handle.availableData
                if data.isEmpty { break }
                pending += String(decoding: data, as: UTF8.self)
                while let newline = pending.firstIndex(of: "\n") {
                    log.append(String(pending[..<newline]))
                    pending = String(pending[pending.index(after: newline)...])
                }
            }
        }
        try process.run()
        reader.start()
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
        let engine = try EngineProcess(["--instance", "sig", "--directory", dir, "--no-pin", "--no-plugins", "--durability", "none"])
        #expect(waitFor(10) { (try? EngineFile.attach(directory: dir))?.isServing ?? false })
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
