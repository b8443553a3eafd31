// The engine's operator socket: `control.sock` in the instance directory, for commands that
// change the running engine (`crossbook migrate`) or ask it what only it knows (`crossbook
// route list`, migrations). One request per connection: a line of text, answered with lines,
// the first "ok" or "error <why>", then the connection closes.
//
// Who may use it: the socket is 0600 (0660 with a group) in a directory only the engine's user
// (and group) can reach; and the kernel's SO_PEERCRED says who connected: the engine's own
// user, root, or (with a group) a member of it. Anyone else is answered "error" and nothing
// runs. A request is at most 512 bytes, read within 2 s; garbage gets "error" with what was
// wrong.
//
// Each connection is read on a thread of its own (at most `maxConnections` at once; one more is
// answered "error busy" at once), so that a connection that says nothing holds only itself;
// the requests themselves run one at a time, in the order their lines arrived (a migration and
// a promotion never run together).

import CSync
import Foundation
import Glibc
import SharedMemory

/// struct ucred of <sys/socket.h>.
struct PeerCredentials {
    var pid: Int32 = 0
    var uid: UInt32 = 0
    var gid: UInt32 = 0
}

final class ControlSocket: @unchecked Sendable {
    let path: String
    private let fd: Int32
    private let stopFlag = UnsafeMutablePointer<UInt32>.allocate(capacity: 1)
    private let done = Semaphore()
    private let group: gid_t?
    private let handle: @Sendable (String) -> [String]

    static let maxRequest = 512
    static let maxConnections = 16
    /// Connections being read or answered now; and the requests' turn.
    private let lock = Lock()
    private var open = 0
    private let allClosed = Semaphore()
    private let turn = Lock()

    /// The Unix socket address of `path` (nil: too long for one).
    static func address(_ path: String) -> sockaddr_un? {
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        guard bytes.count < MemoryLayout.size(ofValue: address.sun_path) else { return nil }
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            raw.copyBytes(from: bytes)
            raw[bytes.count] = 0
        }
        return address
    }

    init(directory: String, group: gid_t?, mode: mode_t, handle: @escaping @Sendable (String) -> [String]) throws(EngineError) {
        path = directory + "/control.sock"
        self.group = group
        self.handle = handle
        stopFlag.initialize(to: 0)
        guard var address = Self.address(path) else {
            stopFlag.deallocate()
            throw EngineError("control socket path \(path) is too long for a Unix socket")
        }
        let s = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard s >= 0 else {
            stopFlag.deallocate()
            throw EngineError("control socket: socket: \(String(cString: strerror(errno)))")
        }
        unlink(path)  // a leftover of a dead engine (the instance is ours: EngineFile.create said so)
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(s, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard bound == 0, chmod(path, mode) == 0, listen(s, 8) == 0 else {
            let why = String(cString: strerror(errno))
            close(s)
            unlink(path)
            stopFlag.deallocate()
            throw EngineError("control socket \(path): \(why)")
        }
        if let group { chown(path, uid_t.max, group) }
        fd = s
        let thread = Thread { [self] in
            serve()
            done.signal()
        }
        thread.name = "crossbook-ctl"
        thread.start()
    }

    func stop() {
        cb_store_release_u32(stopFlag, 1)
        done.wait()
        // The connections in flight finish (each within 2 s of reading, then its request).
        while lock.locked({ open }) > 0 { _ = allClosed.wait(seconds: 0.1) }
        close(fd)
        unlink(path)
        stopFlag.deallocate()
    }

    private func serve() {
        while cb_load_acquire_u32(stopFlag) == 0 {
            var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            guard poll(&p, 1, 100) > 0 else { continue }
            let c = accept(fd, nil, nil)
            guard c >= 0 else { continue }
            _ = fcntl(c, F_SETFD, FD_CLOEXEC)
            let admitted: Bool = lock.locked {
                guard open < Self.maxConnections else { return false }
                open += 1
                return true
            }
            guard admitted else {
                var timeout = timeval(tv_sec: 0, tv_usec: 100_000)
                setsockopt(c, SOL_SOCKET, SO_SNDTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
                reply(c, ["error busy: \(Self.maxConnections) connections are being served; try again"])
                close(c)
                continue
            }
            let thread = Thread { [self] in
                answer(c)
                close(c)
                lock.locked { open -= 1 }
                allClosed.signal()
            }
            thread.name = "crossbook-ctl-conn"
            thread.start()
        }
    }

    /// May this peer run commands?
    private func allowed(_ c: Int32) -> Bool {
        // struct ucred (pid, uid, gid): Glibc hides it without _GNU_SOURCE.
        var cred = PeerCredentials()
        var length = socklen_t(MemoryLayout<PeerCredentials>.size)
        guard getsockopt(c, SOL_SOCKET, SO_PEERCRED, &cred, &length) == 0, length == 12 else { return false }
        if cred.uid == 0 || cred.uid == geteuid() { return true }
        guard let group else { return false }
        if cred.gid == group { return true }
        // A supplementary group of the peer's: /proc says (the peer is alive: it is connected).
        guard let status = try? String(contentsOfFile: "/proc/\(cred.pid)/status", encoding: .utf8),
              let line = status.split(separator: "\n").first(where: { $0.hasPrefix("Groups:") }) else { return false }
        return line.split(separator: "\t").last?.split(separator: " ").contains { gid_t($0) == group } ?? false
    }

    private func answer(_ c: Int32) {
        var timeout = timeval(tv_sec: 2, tv_usec: 0)
        setsockopt(c, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(c, SOL_SOCKET, SO_SNDTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        guard allowed(c) else { return reply(c, ["error not allowed: the engine's user, root or its group only"]) }
        var request: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 256)
        while request.count <= Self.maxRequest, !request.contains(10) {
            let n = buffer.withUnsafeMutableBytes { recv(c, $0.baseAddress, $0.count, 0) }
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { break }
            request.append(contentsOf: buffer[0..<n])
        }
        guard let end = request.firstIndex(of: 10), end <= Self.maxRequest else {
            return reply(c, [request.count > Self.maxRequest ? "error request longer than \(Self.maxRequest) bytes" : "error no request line (a line of text ending in a newline, within 2 s)"])
        }
        guard let line = String(validating: request[..<end], as: UTF8.self),
              line.utf8.allSatisfy({ $0 >= 32 && $0 < 127 }) else {
            return reply(c, ["error the request is not printable ASCII"])
        }
        let lines = turn.locked { handle(line) }
        reply(c, lines)
    }

    private func reply(_ c: Int32, _ lines: [String]) {
        let text = Array(lines.joined(separator: "\n").utf8) + [10]
        var sent = 0
        while sent < text.count {
            let n = text[sent...].withUnsafeBytes { send(c, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { return }
            sent += n
        }
    }

    /// A client's side: sends `request`, returns the answer's lines (throws when there is no
    /// engine to ask). `timeout`: seconds to wait for the answer.
    static func ask(directory: String, _ request: String, timeout: Int = 30) throws(EngineError) -> [String] {
        let path = directory + "/control.sock"
        guard var address = address(path) else { throw EngineError("path \(path) too long") }
        let s = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard s >= 0 else { throw EngineError("socket: \(String(cString: strerror(errno)))") }
        defer { close(s) }
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(s, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard connected == 0 else { throw EngineError("no engine answers at \(path): \(String(cString: strerror(errno)))") }
        var wait = timeval(tv_sec: timeout, tv_usec: 0)
        setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &wait, socklen_t(MemoryLayout<timeval>.size))
        let text = Array((request + "\n").utf8)
        guard text.withUnsafeBytes({ send(s, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }) == text.count else {
            throw EngineError("cannot send to \(path): \(String(cString: strerror(errno)))")
        }
        var answer: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        while answer.count < 1 << 22 {
            let n = buffer.withUnsafeMutableBytes { recv(s, $0.baseAddress, $0.count, 0) }
            if n < 0 && errno == EINTR { continue }
            if n < 0 { throw EngineError("no answer from the engine within \(timeout) s") }
            if n == 0 { break }
            answer.append(contentsOf: buffer[0..<n])
        }
        return String(decoding: answer, as: UTF8.self).split(separator: "\n", omittingEmptySubsequences: false)
            .map(String.init).filter { !$0.isEmpty }
    }
}
