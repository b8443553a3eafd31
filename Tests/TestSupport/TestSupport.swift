// What several test targets need: log capture, waiting on a condition, scratch directories,
// and a small real file system (tmpfs) to fill up.
import Foundation
import Glibc

/// A fresh instance directory in /dev/shm (the engine creates it). What is left in it when the
/// test process exits (an engine killed -9 by a test and not restarted, a failed test) is
/// removed then, unless an engine process still runs there: tmpfs holds it in memory, and many
/// runs' leftovers would eat the memory the engine checks for at start.
public func testDirectory(_ prefix: String = "crossbook-test") -> String {
    let path = "/dev/shm/\(prefix)-\(UUID().uuidString.prefix(8))"
    handedOut.lock.lock()
    if !handedOut.registered {
        handedOut.registered = true
        atexit { removeLeftoverTestDirectories() }
    }
    handedOut.paths.append(path)
    handedOut.lock.unlock()
    return path
}

private final class HandedOut: @unchecked Sendable {
    let lock = NSLock()
    var paths: [String] = []
    var registered = false
}

private let handedOut = HandedOut()

private func removeLeftoverTestDirectories() {
    handedOut.lock.lock()
    let paths = handedOut.paths
    handedOut.lock.unlock()
    for path in paths {
        // The control file's creator pid is at byte 16.
        if let handle = FileHandle(forReadingAtPath: path + "/engine") {
            let header = handle.readData(ofLength: 20)
            try? handle.close()
            if header.count == 20 {
                let pid = header.withUnsafeBytes { Int32(littleEndian: $0.loadUnaligned(fromByteOffset: 16, as: Int32.self)) }
                if pid > 0, pid != getpid(), kill(pid, 0) == 0 { continue }
            }
        }
        try? FileManager.default.removeItem(atPath: path)
    }
}

public func removeTree(_ path: String) { try? FileManager.default.removeItem(atPath: path) }

/// Log lines from an engine, thread-safe.
public final class LogLines: @unchecked Sendable {
    private var lines: [String] = []
    private let lock = NSLock()
    public init() {}
    public func append(_ line: String) { lock.lock(); lines.append(line); lock.unlock() }
    public var all: [String] { lock.lock(); defer { lock.unlock() }; return lines }
    public func clear() { lock.lock(); lines.removeAll(); lock.unlock() }
    public func contains(_ text: String) -> Bool { all.contains { $0.contains(text) } }
    public func index(of text: String) -> Int? { all.firstIndex { $0.contains(text) } }
}

/// Polls `condition` every 10 ms for up to `seconds`.
public func waitFor(_ seconds: Double, _ condition: () -> Bool) -> Bool {
    let deadline = Date().addingTimeInterval(seconds)
    while Date() < deadline {
        if condition() { return true }
        usleep(10_000)
    }
    return condition()
}

public struct MountError: Error, CustomStringConvertible {
    public var description: String { "mounting a tmpfs needs root (CI and make test run as root)" }
}

/// Mounts a tmpfs of `size` (e.g. "1m") at `mountPoint` for the duration of `body`.
public func withTmpfs<T>(size: String, at mountPoint: String, _ body: () throws -> T) throws -> T {
    func run(_ program: String, _ arguments: [String]) throws -> Int32 {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: program)
        process.arguments = arguments
        try process.run()
        process.waitUntilExit()
        return process.terminationStatus
    }
    guard try run("/bin/mount", ["-t", "tmpfs", "-o", "size=\(size)", "tmpfs", mountPoint]) == 0 else { throw MountError() }
    defer { _ = try? run("/bin/umount", [mountPoint]) }
    return try body()
}

/// Reads `handle` line by line on a thread of its own until its end, handing each line over.
@discardableResult
public func readLines(_ handle: FileHandle, _ line: @escaping @Sendable (String) -> Void) -> Thread {
    let thread = Thread {
        var pending = ""
        while true {
            let data = handle.availableData
            if data.isEmpty { break }
            pending += String(decoding: data, as: UTF8.self)
            while let newline = pending.firstIndex(of: "\n") {
                line(String(pending[..<newline]))
                pending = String(pending[pending.index(after: newline)...])
            }
        }
    }
    thread.start()
    return thread
}

/// A server the tests start (a Kafka broker, redis-server, Prometheus) on a loopback port, under a
/// shell that also ends it when the test process ends, however that ends: nothing is left
/// behind. `stop` kills it; `start` brings it up again on the same port.
public final class LoopbackServer {
    public let port: Int
    private let command: String
    private let name: String
    private var process: Process?
    private var pidFile: String { NSTemporaryDirectory() + "crossbook-\(name)-\(getpid())-\(port).pid" }

    /// `command`: a shell command line that runs the server in the foreground on `port`.
    public init(_ name: String, port: Int, command: String) throws {
        self.name = name
        self.port = port
        self.command = command
        try start()
    }

    deinit { stop() }

    public var address: String { "127.0.0.1:\(port)" }

    public func start() throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/bin/sh")
        unlink(pidFile)
        process.arguments = ["-c", "\(command) & b=$!; echo $b > '\(pidFile)'; while kill -0 \(getpid()) 2>/dev/null && kill -0 $b 2>/dev/null; do sleep 0.2; done; kill -9 $b 2>/dev/null; wait $b"]
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
        self.process = process
        guard waitFor(30, { loopbackAccepts(port) }) else {
            throw ServerError(description: "\(name) did not listen on \(port) in 30 s")
        }
    }

    public func stop() {
        guard let process else { return }
        _ = waitFor(5) { FileManager.default.fileExists(atPath: pidFile) }
        if let text = try? String(contentsOfFile: pidFile, encoding: .utf8), let pid = Int32(text.trimmingCharacters(in: .whitespacesAndNewlines)) {
            kill(pid, SIGKILL)
        }
        unlink(pidFile)
        process.waitUntilExit()  // the shell reaps the server and ends
        self.process = nil
        _ = waitFor(5) { !loopbackAccepts(port) }
    }
}

public struct ServerError: Error, CustomStringConvertible {
    public var description: String
}

/// Whether something accepts TCP connections on 127.0.0.1:`port`.
public func loopbackAccepts(_ port: Int) -> Bool {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    defer { close(fd) }
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    address.sin_port = UInt16(port).bigEndian
    return withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
    } == 0
}
