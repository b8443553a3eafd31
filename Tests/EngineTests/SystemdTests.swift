// Running under systemd: the unit file verifies, readiness and stopping go to NOTIFY_SOCKET, a
// restart after kill -9 cleans the dead engine's leftovers by itself, logs as JSON and by level.
import Engine
import Foundation
import Glibc
import SharedMemory
import Testing
import TestSupport

let repositoryDirectory = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
    .deletingLastPathComponent().path

/// A datagram socket bound at a fresh path, as systemd's NOTIFY_SOCKET is.
final class NotifySocket {
    let path: String
    let fd: Int32

    init() {
        path = NSTemporaryDirectory() + "crossbook-notify-\(UUID().uuidString.prefix(8)).sock"
        fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue), 0)
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { out in
            for (i, byte) in path.utf8.enumerated() { out[i] = byte }
        }
        _ = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
    }

    deinit {
        close(fd)
        unlink(path)
    }

    /// The next datagram within `seconds`, or nil.
    func receive(within seconds: Double) -> String? {
        var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        guard poll(&p, 1, Int32(seconds * 1000)) > 0 else { return nil }
        var buffer = [UInt8](repeating: 0, count: 4096)
        let n = recv(fd, &buffer, buffer.count, 0)
        return n > 0 ? String(decoding: buffer[0..<n], as: UTF8.self) : nil
    }
}

@Suite("Runs under systemd", .serialized)
struct SystemdTests {
    @Test("the unit file verifies (systemd-analyze); READY=1 with MAINPID once the engine serves, STOPPING=1 at SIGTERM; a restart after kill -9 cleans the leftovers by itself; JSON logs; --log-level warning keeps info out")
    func notifyRestartAndLogs() throws {
        // The unit, pointed at this build.
        let unit = NSTemporaryDirectory() + "crossbook-\(UUID().uuidString.prefix(8)).service"
        defer { unlink(unit) }
        let text = try String(contentsOfFile: repositoryDirectory + "/packaging/crossbook.service", encoding: .utf8)
            .replacingOccurrences(of: "/usr/local/bin/crossbook", with: crossbookBinary().path)
        try text.write(toFile: unit, atomically: true, encoding: .utf8)
        #expect(text.contains("Type=notify") && text.contains("Restart=on-failure"))
        let verify = Process()
        verify.executableURL = URL(fileURLWithPath: "/usr/bin/systemd-analyze")
        verify.arguments = ["verify", unit]
        let verifyOut = Pipe()
        verify.standardOutput = verifyOut
        verify.standardError = verifyOut
        try verify.run()
        let verifyText = String(decoding: verifyOut.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        verify.waitUntilExit()
        #expect(verify.terminationStatus == 0, "\(verifyText)")
        // The example config is complete enough to check.
        let check = Process()
        check.executableURL = crossbookBinary()
        check.arguments = ["run", "--config", repositoryDirectory + "/packaging/crossbook.toml", "--check-config"]
        check.standardOutput = FileHandle.nullDevice
        try check.run()
        check.waitUntilExit()
        #expect(check.terminationStatus == 0)

        let notify = NotifySocket()
        let dir = testDirectory(), data = NSTemporaryDirectory() + "crossbook-sd-\(UUID().uuidString.prefix(8))"
        defer { removeTree(data) }
        let arguments = ["--instance", "sd", "--directory", dir, "--data-dir", data, "--no-pin", "--no-plugins", "--log-format", "json"]
        let first = try EngineProcess(arguments, environment: ["NOTIFY_SOCKET": notify.path])
        let ready = notify.receive(within: 15) ?? ""
        #expect(ready.contains("READY=1") && ready.contains("MAINPID=\(first.process.processIdentifier)"), "\(ready)")
        #expect((try? EngineFile.attach(directory: dir))?.isServing == true, "ready means serving")
        // JSON lines: time, level, message, instance.
        #expect(waitFor(5) { first.log.contains("running, pid") })
        for line in first.log.all {
            let object = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any]
            #expect(object?["level"] as? String != nil && object?["message"] as? String != nil && object?["instance"] as? String == "sd"
                    && object?["time"] as? String != nil, "not a JSON log line: \(line)")
        }

        // kill -9, as a crash under systemd; the restart (no --clean-stale) cleans up by itself.
        first.signal(SIGKILL)
        _ = first.waitForExit(10)
        // stat on the dead engine's leftovers: exit 1, saying so.
        let stat = Process()
        stat.executableURL = crossbookBinary()
        stat.arguments = ["stat", "--directory", dir, "--count", "1"]
        let statErr = Pipe()
        stat.standardError = statErr
        stat.standardOutput = FileHandle.nullDevice
        try stat.run()
        let statText = String(decoding: statErr.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        stat.waitUntilExit()
        #expect(stat.terminationStatus == 1 && statText.contains("is gone"), "\(stat.terminationStatus) \(statText)")
        let second = try EngineProcess(["--instance", "sd", "--directory", dir, "--data-dir", data, "--no-pin", "--no-plugins"],
                                       environment: ["NOTIFY_SOCKET": notify.path])
        let again = notify.receive(within: 15) ?? ""
        #expect(again.contains("READY=1"), "\(again) \(second.log.all)")
        #expect(second.log.contains("removing leftovers of engine pid \(first.process.processIdentifier)"), "\(second.log.all)")
        second.signal(SIGTERM)
        let stopping = notify.receive(within: 10) ?? ""
        #expect(stopping.contains("STOPPING=1"), "\(stopping)")
        #expect(second.waitForExit(20) == 0)

        // Warnings and errors only: the info lines stay out.
        let quiet = try EngineProcess(["--instance", "sdq", "--directory", testDirectory(), "--no-pin", "--no-plugins",
                                       "--durability", "none", "--log-level", "warning"],
                                      environment: ["NOTIFY_SOCKET": notify.path])
        #expect(notify.receive(within: 15)?.contains("READY=1") == true)
        quiet.signal(SIGHUP)  // logged as ignored, at info: not shown
        usleep(200_000)
        quiet.stop()
        #expect(!quiet.log.contains("running, pid") && !quiet.log.contains("SIGHUP"), "\(quiet.log.all)")
        let refused = try EngineProcess(["--log-level", "loud"])
        #expect(refused.waitForExit(10) != 0)
    }
}
