// Leadership as a lease in Redis, with a fencing epoch: the third party the two-node rule does
// without (Engine+Replication.swift, README "Hot standby and failover").
//
//   key <lease>        = the holder (instance, pid, random), PX ttl: who may acknowledge
//   key <lease>:epoch  = a counter, incremented by each new holder: the fencing token, journaled
//                        by the holder in every shard (an epoch admin record)
//
// Both changes are one Lua script each (atomic in Redis): two engines racing for the lease
// cannot both get it, and each new holder gets a higher epoch.
//
// The timing rule. A holder renews every ttl/3. A renewal sent at monotonic time t that
// succeeds extends the key to at least t + ttl in Redis's clock (Redis sets the expiry when it
// runs the script, after t). The holder releases output (OutputGate.leaseUntil) only before
// t + ttl − margin, margin = max(ttl/10, 50 ms) for the two clocks' rates: it stops
// acknowledging before the key can expire, and so before anyone else can acquire it. A holder
// whose renewal finds the key gone or someone else's is deposed: it never acknowledges again
// (restart it as a standby).

import CSync
import Foundation
import Glibc
import SharedMemory

/// A RESP2 value (what Redis answers).
enum RespValue: Equatable {
    case simple(String)
    case error(String)
    case integer(Int64)
    case bulk([UInt8]?)
    case array([RespValue]?)
}

/// One blocking connection to Redis, enough for EVAL: commands out, one reply in. Every reply
/// is bounded (a hostile or broken server cannot make it allocate without limit or hang: 2 s).
final class RedisConnection {
    private let connection: ReplicationConnection
    private var buffer: [UInt8] = []

    init(host: String, port: UInt16) throws(ReplicationError) {
        let address = try ReplicationAddress("\(host):\(port)")
        connection = try ReplicationConnection.connect(to: address, timeoutMilliseconds: 1000)
    }

    func command(_ parts: [String]) throws(ReplicationError) -> RespValue {
        var out = "*\(parts.count)\r\n"
        for p in parts { out += "$\(p.utf8.count)\r\n\(p)\r\n" }
        let bytes = Array(out.utf8)
        var sent = 0
        while sent < bytes.count {
            let n = bytes.withUnsafeBytes { Glibc.send(connection.fd, $0.baseAddress! + sent, bytes.count - sent, Int32(MSG_NOSIGNAL)) }
            if n <= 0 { throw .closed("redis: send: \(String(cString: strerror(errno)))") }
            sent += n
        }
        let deadline = monotonicNanoseconds() + 2_000_000_000
        while true {
            var at = 0
            if let value = try parse(&at) {
                buffer.removeFirst(at)
                return value
            }
            guard monotonicNanoseconds() < deadline else { throw .closed("redis: no answer in 2 s") }
            var p = pollfd(fd: connection.fd, events: Int16(POLLIN), revents: 0)
            guard poll(&p, 1, 100) >= 0 else { throw .system("poll: \(String(cString: strerror(errno)))") }
            if p.revents == 0 { continue }
            var chunk = [UInt8](repeating: 0, count: 4096)
            let n = chunk.withUnsafeMutableBytes { recv(connection.fd, $0.baseAddress!, $0.count, 0) }
            if n <= 0 { throw .closed("redis closed the connection") }
            buffer.append(contentsOf: chunk[0..<n])
            guard buffer.count < 1 << 20 else { throw .protocol("redis: a reply above 1 MiB") }
        }
    }

    /// One value from `buffer` at `at`, or nil when more bytes are needed.
    private func parse(_ at: inout Int) throws(ReplicationError) -> RespValue? {
        guard at < buffer.count else { return nil }
        guard let end = (at..<max(at, buffer.count - 1)).first(where: { buffer[$0] == 13 && buffer[$0 + 1] == 10 }) else { return nil }
        let type = buffer[at]
        let line = String(decoding: buffer[(at + 1)..<end], as: UTF8.self)
        var next = end + 2
        switch type {
        case UInt8(ascii: "+"): at = next; return .simple(line)
        case UInt8(ascii: "-"): at = next; return .error(line)
        case UInt8(ascii: ":"):
            guard let v = Int64(line) else { throw .protocol("redis: integer '\(line)'") }
            at = next
            return .integer(v)
        case UInt8(ascii: "$"):
            guard let n = Int(line), n >= -1, n < 1 << 20 else { throw .protocol("redis: bulk length '\(line)'") }
            if n == -1 { at = next; return .bulk(nil) }
            guard buffer.count >= next + n + 2 else { return nil }
            let value = Array(buffer[next..<(next + n)])
            at = next + n + 2
            return .bulk(value)
        case UInt8(ascii: "*"):
            guard let n = Int(line), n >= -1, n < 1024 else { throw .protocol("redis: array length '\(line)'") }
            if n == -1 { at = next; return .array(nil) }
            var items: [RespValue] = []
            for _ in 0..<n {
                guard let item = try parse(&next) else { return nil }
                items.append(item)
            }
            at = next
            return .array(items)
        default:
            throw .protocol("redis: reply type byte \(type)")
        }
    }
}

/// The lease's place in Redis, from `redis://HOST:PORT/KEY`.
struct LeaseLocation: Equatable {
    var host: String
    var port: UInt16
    var key: String

    init(_ url: String) throws(ReplicationError) {
        guard url.hasPrefix("redis://") else { throw .system("lease '\(url)': expected redis://HOST:PORT/KEY") }
        let rest = url.dropFirst("redis://".count)
        guard let slash = rest.firstIndex(of: "/") else { throw .system("lease '\(url)': no key (redis://HOST:PORT/KEY)") }
        let address = try ReplicationAddress(String(rest[..<slash]))
        let key = String(rest[rest.index(after: slash)...])
        guard !key.isEmpty, key.utf8.count <= 200, key.utf8.allSatisfy({ $0 > 32 && $0 < 127 }) else {
            throw .system("lease '\(url)': the key must be 1 to 200 printable characters")
        }
        host = address.host
        port = address.port
        self.key = key
    }
}

/// Redis AUTH: an ACL user (optional) and the password, read from a file that others cannot
/// read (its first line, 1 to 511 bytes).
struct RedisCredentials: Equatable {
    var user: String?
    var password: String

    /// nil without a password file; throws with the reason when the file will not do.
    init?(user: String?, passwordFile: String?) throws(ReplicationError) {
        guard let passwordFile else {
            if let user { throw .system("lease_user = '\(user)' needs lease_password_file") }
            return nil
        }
        if let user, user.isEmpty || user.utf8.count > 127 || !user.utf8.allSatisfy({ $0 > 32 && $0 < 127 }) {
            throw .system("lease_user: 1 to 127 printable characters without spaces")
        }
        let fd = open(passwordFile, O_RDONLY | O_CLOEXEC | O_NOFOLLOW)
        guard fd >= 0 else { throw .system("lease_password_file '\(passwordFile)': \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        var info = stat()
        guard fstat(fd, &info) == 0, info.st_mode & S_IFMT == S_IFREG, info.st_mode & S_IROTH == 0 else {
            throw .system("lease_password_file '\(passwordFile)': not a regular file, or readable by others (chmod o-r)")
        }
        var bytes = [UInt8](repeating: 0, count: 600)
        let n = bytes.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        guard n > 0 else { throw .system("lease_password_file '\(passwordFile)': empty or unreadable") }
        let line = bytes[0..<n].prefix { $0 != 10 && $0 != 13 }
        guard !line.isEmpty, line.count < 512, line.count < n || n < bytes.count else {
            throw .system("lease_password_file '\(passwordFile)': its first line must be a password of 1 to 511 bytes")
        }
        self.user = user
        password = String(decoding: line, as: UTF8.self)
    }
}

/// The lease as one engine sees it: acquire (standby at promotion, primary at start), then a
/// thread that renews it and moves the output gates' deadline.
final class LeaseKeeper: @unchecked Sendable {
    static let acquireScript = """
        local cur = redis.call('GET', KEYS[1])
        if cur == ARGV[1] then
          redis.call('PEXPIRE', KEYS[1], ARGV[2])
          return tonumber(redis.call('GET', KEYS[2]) or '0')
        end
        if cur then return -1 end
        redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
        return redis.call('INCR', KEYS[2])
        """
    static let renewScript = """
        if redis.call('GET', KEYS[1]) == ARGV[1] then
          redis.call('PEXPIRE', KEYS[1], ARGV[2])
          return 1
        end
        return 0
        """

    let location: LeaseLocation
    let ttlMilliseconds: Int
    let holder: String
    /// Where the output gates read the deadline (monotonic ns): nothing is released at or after it.
    let until: UnsafeMutablePointer<UInt64>
    private let log: @Sendable (String) -> Void
    private let lock = Lock()
    private var redis: RedisConnection?
    private var stopping = false
    private var deposed = false
    private let finished = Semaphore()
    private var running = false

    private let credentials: RedisCredentials?

    init(location: LeaseLocation, ttlMilliseconds: Int, instance: String, credentials: RedisCredentials? = nil,
         log: @escaping @Sendable (String) -> Void) {
        self.location = location
        self.credentials = credentials
        self.ttlMilliseconds = ttlMilliseconds
        holder = "\(instance)/\(getpid())/\(UInt64.random(in: 1...UInt64.max))"
        self.log = log
        until = cacheAligned(UInt64.self, count: 1)
        until.initialize(to: 0)  // nothing released before the lease is held
    }

    deinit { until.deallocate() }

    var marginNanoseconds: UInt64 { UInt64(max(ttlMilliseconds / 10, 50)) * 1_000_000 }
    var isDeposed: Bool { lock.locked { deposed } }

    private func call(_ script: String) throws(ReplicationError) -> RespValue {
        if redis == nil {
            let connection = try RedisConnection(host: location.host, port: location.port)
            if let credentials {
                let answer = try connection.command(["AUTH"] + (credentials.user.map { [$0] } ?? []) + [credentials.password])
                if case .error(let why) = answer { throw .refused("redis AUTH: \(why)") }
                guard case .simple = answer else { throw .protocol("redis AUTH: unexpected answer") }
            }
            redis = connection
        }
        do {
            return try redis!.command(["EVAL", script, "2", location.key, location.key + ":epoch", holder, String(ttlMilliseconds)])
        } catch {
            redis = nil  // reconnect next time
            throw error
        }
    }

    /// Takes the lease if it is free (or already this holder's): its epoch, or nil when another
    /// engine holds it. Sets the gates' deadline on success.
    func acquire() throws(ReplicationError) -> UInt64? {
        let t0 = monotonicNanoseconds()
        let answer = try call(Self.acquireScript)
        switch answer {
        case .integer(let epoch) where epoch > 0:
            cb_store_release_u64(until, t0 + UInt64(ttlMilliseconds) * 1_000_000 - marginNanoseconds)
            return UInt64(epoch)
        case .integer(-1):
            return nil
        case .error(let why):
            throw .refused("redis: \(why)")
        default:
            throw .protocol("redis: unexpected answer \(answer) to the lease script")
        }
    }

    /// Renews every ttl/3 until stopped or deposed.
    func start() {
        running = true
        let thread = Thread { [weak self] in
            self?.renewLoop()
            self?.finished.signal()
        }
        thread.name = "cb-lease"
        thread.start()
    }

    func stop() {
        lock.locked { stopping = true }
        if running { _ = finished.wait(seconds: 5) }
        running = false
    }

    private func renewLoop() {
        _ = cb_set_timer_slack_ns(1)
        let period = UInt64(ttlMilliseconds) * 1_000_000 / 3
        var failing = false
        while !lock.locked({ stopping }) {
            let t0 = monotonicNanoseconds()
            do {
                let answer = try call(Self.renewScript)
                guard case .integer(1) = answer else {
                    cb_store_release_u64(until, 0)
                    lock.locked { deposed = true }
                    return log("lease \(location.key): lost (the key is gone or another engine's): this engine no longer acknowledges anything; restart it as a standby")
                }
                cb_store_release_u64(until, t0 + UInt64(ttlMilliseconds) * 1_000_000 - marginNanoseconds)
                if failing { log("lease \(location.key): renewed again") }
                failing = false
            } catch {
                if !failing {
                    log("lease \(location.key): cannot renew (\(error)); acknowledgements stop in \((cb_load_acquire_u64(until) &- min(cb_load_acquire_u64(until), monotonicNanoseconds())) / 1_000_000) ms unless a renewal succeeds")
                }
                failing = true
            }
            let elapsed = monotonicNanoseconds() - t0
            if elapsed < period {
                var pause = timespec(tv_sec: Int((period - elapsed) / 1_000_000_000), tv_nsec: Int((period - elapsed) % 1_000_000_000))
                // Wake early if stopping: sleep in slices of at most 50 ms.
                while pause.tv_sec > 0 || pause.tv_nsec > 0, !lock.locked({ stopping }) {
                    let slice = min(Int(pause.tv_sec) * 1_000_000_000 + pause.tv_nsec, 50_000_000)
                    var s = timespec(tv_sec: 0, tv_nsec: slice)
                    nanosleep(&s, nil)
                    let left = Int(pause.tv_sec) * 1_000_000_000 + pause.tv_nsec - slice
                    pause = timespec(tv_sec: left / 1_000_000_000, tv_nsec: left % 1_000_000_000)
                }
            }
        }
    }
}
