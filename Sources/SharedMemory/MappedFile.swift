// Files mapped shared between processes: created exclusively with an exact mode, or opened and
// checked. System failures come back as typed errors naming the call, the path and errno.

import CSync
import Glibc

public enum SharedMemoryError: Error, Equatable, CustomStringConvertible {
    /// A system call failed: which, on what, and its errno.
    case system(SystemCallError)
    /// The file exists and the process that created it is alive.
    case inUse(path: String, creatorPid: Int32)
    /// The file exists but the process that created it is gone: a leftover of a dead process.
    case stale(path: String, creatorPid: Int32)
    /// The file is not what it claims to be (wrong magic, version, sizes): never trusted.
    case badHeader(path: String, String)

    public var description: String {
        switch self {
        case .system(let failure):
            failure.description
        case .inUse(let path, let pid):
            "\(path) is in use by a live process (pid \(pid))"
        case .stale(let path, let pid):
            "\(path) is a leftover of process \(pid), which is gone; remove it to start"
        case .badHeader(let path, let why):
            "\(path) is not a valid Crossbook region: \(why)"
        }
    }
}

/// Whether a process exists and is not a zombie (it may belong to another user: EPERM still
/// means alive). A killed process whose parent has not reaped it yet is dead for us: in a
/// container whose PID 1 does not reap, it may stay a zombie for good.
public func processIsAlive(_ pid: Int32) -> Bool {
    guard pid > 0 else { return false }
    guard kill(pid, 0) == 0 || errno == EPERM else { return false }
    // /proc/<pid>/stat: "pid (comm) S ..." — the state letter follows the last ')'.
    guard let file = fopen("/proc/\(pid)/stat", "r") else { return true }
    defer { fclose(file) }
    var buffer = [CChar](repeating: 0, count: 512)
    guard fgets(&buffer, Int32(buffer.count), file) != nil else { return true }
    let line = String(cString: buffer)
    guard let close = line.lastIndex(of: ")") else { return true }
    let state = line[line.index(after: close)...].drop { $0 == " " }.first
    return state != "Z" && state != "X"
}

/// A file mapped MAP_SHARED. Owns the mapping; unmaps it when released.
public final class MappedFile {
    public let path: String
    public let base: UnsafeMutableRawPointer
    public let size: Int
    /// The file's owner when it was opened (`open(path:)`: whoever created it; the mappings this
    /// process makes: its own user).
    public let owner: uid_t

    /// The SIGBUS guard of a mapping of a file someone else made (and could shrink), or -1.
    private let guardSlot: Int32

    private init(path: String, base: UnsafeMutableRawPointer, size: Int, guarded: Bool, owner: uid_t = geteuid()) {
        self.owner = owner
        self.path = path
        self.base = base
        self.size = size
        guardSlot = guarded ? cb_guard_add(base, size) : -1
    }

    deinit {
        cb_guard_remove(guardSlot)
        munmap(base, size)
    }

    /// The file was shrunk under this mapping and a page past its end was touched: the mapping
    /// now reads zeros (its SIGBUS was caught). Only for guarded mappings.
    public var faulted: Bool { cb_guard_faulted(guardSlot) != 0 }

    /// Creates the file (it must not exist) with exactly `mode`, sized and zero-filled.
    /// `guarded`: the mode lets another process write, and so shrink, the file: guard the
    /// mapping against SIGBUS as `open` does.
    public static func create(path: String, size: Int, mode: mode_t, guarded: Bool = false) throws(SharedMemoryError) -> MappedFile {
        let fd: Int32
        do { fd = try SystemCall.run("open", path) { Glibc.open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, mode) } } catch {
            throw .system(error)
        }
        defer { close(fd) }
        do {
            // The umask must not decide who may read order flow.
            try SystemCall.run("fchmod", path) { fchmod(fd, mode) }
            try SystemCall.run("ftruncate", path) { ftruncate(fd, off_t(size)) }
            // Reserve the space now: on a full /dev/shm a sparse file would map fine and raise
            // SIGBUS at its first touch, in whichever process touches it.
            try SystemCall.check("fallocate", path) { posix_fallocate(fd, 0, off_t(size)) }
        } catch {
            unlink(path)
            throw .system(error)
        }
        return try map(fd: fd, path: path, size: size, unlinkOnFailure: true, guarded: guarded, writable: true)
    }

    /// Memory of this process only, shared between its threads (rings between the engine and
    /// its plugins): no file, nothing another process can see, write or shrink.
    public static func anonymous(size: Int, label: String) throws(SharedMemoryError) -> MappedFile {
        let p = mmap(nil, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS | MAP_POPULATE, -1, 0)
        guard let p, p != MAP_FAILED else { throw .system(SystemCallError("mmap", label, errno: errno)) }
        return MappedFile(path: label, base: p, size: size, guarded: false)
    }

    /// Opens an existing file and maps all of it. `minimumSize` guards the caller's header read.
    /// `writable: false` maps it read-only: a store through `base` then faults in this process.
    public static func open(path: String, minimumSize: Int, writable: Bool = true) throws(SharedMemoryError) -> MappedFile {
        let fd: Int32
        var info = stat()
        do {
            fd = try SystemCall.run("open", path) { Glibc.open(path, (writable ? O_RDWR : O_RDONLY) | O_CLOEXEC) }
        } catch {
            throw .system(error)
        }
        defer { close(fd) }
        do { try SystemCall.run("fstat", path) { fstat(fd, &info) } } catch { throw .system(error) }
        guard info.st_size >= minimumSize else {
            throw .badHeader(path: path, "the file has \(info.st_size) bytes, fewer than a header")
        }
        // Another process made this file and can shrink it: guard the mapping against SIGBUS.
        return try map(fd: fd, path: path, size: Int(info.st_size), unlinkOnFailure: false, guarded: true,
                       writable: writable, owner: info.st_uid)
    }

    private static func map(fd: Int32, path: String, size: Int, unlinkOnFailure: Bool,
                            guarded: Bool, writable: Bool, owner: uid_t = geteuid()) throws(SharedMemoryError) -> MappedFile {
        // MAP_POPULATE: every page is faulted in now, not on a shard's hot path later.
        let p = mmap(nil, size, writable ? PROT_READ | PROT_WRITE : PROT_READ, MAP_SHARED | MAP_POPULATE, fd, 0)
        guard let p, p != MAP_FAILED else {
            let e = errno
            if unlinkOnFailure { unlink(path) }
            throw .system(SystemCallError("mmap", path, errno: e))
        }
        return MappedFile(path: path, base: p, size: size, guarded: guarded, owner: owner)
    }
}
