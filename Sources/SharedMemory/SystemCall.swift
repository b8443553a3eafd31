// The one way the engine's own code makes a system call that can fail: EINTR is retried, and a
// failure comes back typed (swift-system's `Errno`) with the call and the path it was about.
// Each layer's error keeps this as its cause (SharedMemoryError.system, JournalError.system).

import Glibc
import SystemPackage

/// A failed system call: which, on what, and why.
public struct SystemCallError: Error, Equatable, Sendable, CustomStringConvertible {
    public let call: String
    public let path: String
    public let errno: Errno

    public init(_ call: String, _ path: String, _ errno: Errno) {
        self.call = call
        self.path = path
        self.errno = errno
    }

    /// From a raw errno value (as a C function or an io_uring completion gives it).
    public init(_ call: String, _ path: String, errno raw: Int32) {
        self.init(call, path, Errno(rawValue: raw))
    }

    public var description: String {
        "\(call)(\(path)) failed: \(String(cString: strerror(errno.rawValue))) (errno \(errno.rawValue))"
    }
}

public enum SystemCall {
    /// Runs a call that returns -1 and sets errno on failure (open, fstat, ftruncate, fsync,
    /// unlink, rename ...), again while it is interrupted; its result, or why it failed.
    @inline(__always) @discardableResult
    public static func run(_ call: String, _ path: String, _ body: () -> Int32) throws(SystemCallError) -> Int32 {
        while true {
            let rc = body()
            if rc >= 0 { return rc }
            let e = Glibc.errno
            if e != EINTR { throw SystemCallError(call, path, errno: e) }
        }
    }

    /// The same for calls that return a byte count (read, write, pread, pwrite).
    @inline(__always) @discardableResult
    public static func run(_ call: String, _ path: String, _ body: () -> Int) throws(SystemCallError) -> Int {
        while true {
            let rc = body()
            if rc >= 0 { return rc }
            let e = Glibc.errno
            if e != EINTR { throw SystemCallError(call, path, errno: e) }
        }
    }

    /// For calls that return the error number itself (posix_fallocate, pthread_*): 0 or why.
    @inline(__always)
    public static func check(_ call: String, _ path: String, _ body: () -> Int32) throws(SystemCallError) {
        while true {
            let rc = body()
            if rc == 0 { return }
            if rc != EINTR { throw SystemCallError(call, path, errno: rc) }
        }
    }
}
