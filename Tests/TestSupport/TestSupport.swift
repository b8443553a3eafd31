// What several test targets need: log capture, waiting on a condition, scratch directories,
// and a small real file system (tmpfs) to fill up.
import Foundation
import Glibc

/// A fresh instance directory in /dev/shm (the engine creates it).
public func testDirectory(_ prefix: String = "crossbook-test") -> String {
    "/dev/shm/\(prefix)-\(UUID().uuidString.prefix(8))"
}

public func removeTree(_ path: String) { try? FileManager.default.removeItem(atPath: path) }

/// Log lines from an engine, thread-safe.
public final class LogLines: @unchecked Sendable {
    private var lines: [String] = []
    private let lock = NSLock()
    public init() {}
    public func append(_ line: String) { lock.lock(); lines.append(line); lock.unlock() }
    public var all: [String] { lock.lock(); defer { lock.unlock() }; return lines }
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
