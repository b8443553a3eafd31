// The replication protocol between a primary and its standbys, over TCP. Every message is a
// frame: body length (u32, at most `maxBody`), kind (u16), reserved (u16, 0), body; integers
// little-endian. A malformed frame from either side ends the connection with a reason; it never
// traps the engine.
//
//   standby → primary
//     1 hello: magic "CBREPL01" (u64), version (u16), shards (u16), epoch (u64),
//              configuration hash (u64), per shard: last sequence (u64), its record's CRC (u32),
//              then, from a standby with a secret ([replication] secret_file), its nonce (32 bytes)
//              and the key ids (8 bytes each, ReplicationAuth.keyId) of its secrets, one or two
//              (secret_file, then previous_secret_file during a rotation)
//    14 proof: after a primary's proof (below): 32 zero bytes, then the standby's tag (32 bytes)
//
//   Authentication (ReplicationAuth.swift), when both engines have the pair's secret: the
//   primary answers the hello with a proof, nonce (32 bytes) and tag (32), the standby answers
//   with its proof; each tag is HMAC-SHA256 under the secret of a role's label, both nonces and
//   the hello. From then on every frame, either way, is sealed with AES-256-GCM under the
//   session's key (HMAC-SHA256 of the secret, a label and both nonces): its body is encrypted,
//   its 8-byte header stays readable and is authenticated with it, and 16 bytes of tag follow
//   (not counted in its length). The nonce is the direction (u8: 0 primary → standby, 1 the
//   other way), 3 zero bytes and the frame's number in that direction (u64). A frame that does
//   not open ends the connection.
//     7 ack:   shard (u16), 6 reserved bytes, durable sequence (u64)
//   primary → standby
//     2 welcome: epoch (u64), mode (u8: 0 sync, 1 async), then the primary's instance name
//                (the rest of the body: 1 to 127 bytes of printable ASCII, no space)
//     3 refuse:  UTF-8 reason
//     4 records: shard (u16), 6 reserved, the primary's durable sequence (u64), records as they
//                lie in the journal (Journal/JournalTail.swift), each carrying its own CRC32C
//     5 digest:  shard (u16), 6 reserved, sequence (u64), state digest at it (u64)
//     8 handover: epoch (u64): a planned switchover: the primary takes no more orders and the
//                standby holds everything; it promotes itself under this epoch
//     6 heartbeat: epoch (u64), engaged (u64: 1 once sync is engaged, ReplicationServer.swift),
//                  per shard the durable sequence (u64)
//     9 seed:    shard (u16), 6 reserved, sequence (u64), total (u64), offset (u64), bytes: a part
//                of a shard's seed, sent in place of a welcome when the records after the
//                standby's position are gone from the primary's journal (pruned after a
//                snapshot). A seed is the record at `sequence` as it lies in the journal, then
//                the primary's snapshot at that sequence without its binding
//                (Replication/StandbySeed.swift); parts follow each other, `total` bytes in all
//    10 seeded:  (empty) every seed was sent: the standby installs them and starts again
//    11 diverged: shard (u16), 6 reserved, the standby's last sequence (u64): in place of a
//                welcome, the standby's journal is not a prefix of this one at that shard; the
//                primary now answers probes (at most `maxProbes(shards:)`), to find the common prefix
//    13 probed:  shard (u16), present (u8), 5 reserved, sequence (u64), its record's CRC (u32),
//                4 reserved: the answer to a probe (present 0: this journal does not hold it)
//   standby → primary, after a diverged
//    12 probe:   shard (u16), 6 reserved, sequence (u64)

import CAuth
import Glibc
import SharedMemory

public enum ReplicationMode: String, Sendable, CaseIterable {
    /// Output is released once a standby has the command durable too.
    case sync
    /// Local durability only; the standby's lag is counted.
    case async
}

enum ReplicationMessage: Equatable {
    struct ShardPosition: Equatable {
        var last: UInt64
        var crc: UInt32
    }
    case hello(epoch: UInt64, configuration: UInt64, shards: [ShardPosition], nonce: [UInt8]? = nil, keyIds: [[UInt8]] = [])
    case proof(nonce: [UInt8], tag: [UInt8])
    case welcome(epoch: UInt64, mode: ReplicationMode, instance: String)
    case refuse(String)
    case records(shard: Int, durable: UInt64, bytes: [UInt8])
    case digest(shard: Int, sequence: UInt64, digest: UInt64)
    case heartbeat(epoch: UInt64, engaged: Bool, durable: [UInt64])
    case ack(shard: Int, durable: UInt64)
    case handover(epoch: UInt64)
    case seed(shard: Int, sequence: UInt64, total: UInt64, offset: UInt64, bytes: [UInt8])
    case seeded
    case diverged(shard: Int, last: UInt64)
    case probe(shard: Int, sequence: UInt64)
    case probed(shard: Int, sequence: UInt64, crc: UInt32?)

    /// Probes a primary answers on one connection after a diverged: a bisection over 64-bit
    /// sequences needs at most 64 a shard, and one more to check its last record. Each probe
    /// walks a segment's batches, so a hostile peer gets no more than that.
    static func maxProbes(shards: Int) -> Int { 65 * shards }

    static let magic: UInt64 = 0x3130_4C50_4552_4243  // "CBREPL01"
    /// 2: the welcome names the primary's instance. 3: authentication (a nonce in the hello, proofs).
    /// 4: authenticated frames are encrypted (AES-256-GCM), not only tagged (HMAC).
    static let version: UInt16 = 4
    static let maxBody = 8 << 20
    static let maxShards = 1024

    func encode() -> [UInt8] {
        var body: [UInt8] = []
        func put<T: FixedWidthInteger>(_ v: T) { withUnsafeBytes(of: v.littleEndian) { body.append(contentsOf: $0) } }
        let kind: UInt16
        switch self {
        case .hello(let epoch, let configuration, let shards, let nonce, let keyIds):
            kind = 1
            put(Self.magic); put(Self.version); put(UInt16(shards.count)); put(epoch); put(configuration)
            for s in shards { put(s.last); put(s.crc) }
            if let nonce {
                body.append(contentsOf: nonce.prefix(32))
                for id in keyIds.prefix(2) { body.append(contentsOf: id.prefix(ReplicationAuth.keyIdSize)) }
            }
        case .proof(let nonce, let tag):
            kind = 14
            body.append(contentsOf: nonce.prefix(32)); body.append(contentsOf: tag.prefix(32))
        case .welcome(let epoch, let mode, let instance):
            kind = 2
            put(epoch); put(UInt8(mode == .sync ? 0 : 1))
            body.append(contentsOf: Array(instance.utf8.prefix(127)))
        case .refuse(let why):
            kind = 3
            body.append(contentsOf: Array(why.utf8.prefix(4096)))
        case .records(let shard, let durable, let bytes):
            kind = 4
            put(UInt16(shard)); put(UInt16(0)); put(UInt32(0)); put(durable)
            body.append(contentsOf: bytes)
        case .digest(let shard, let sequence, let digest):
            kind = 5
            put(UInt16(shard)); put(UInt16(0)); put(UInt32(0)); put(sequence); put(digest)
        case .heartbeat(let epoch, let engaged, let durable):
            kind = 6
            put(epoch); put(UInt64(engaged ? 1 : 0))
            for d in durable { put(d) }
        case .ack(let shard, let durable):
            kind = 7
            put(UInt16(shard)); put(UInt16(0)); put(UInt32(0)); put(durable)
        case .handover(let epoch):
            kind = 8
            put(epoch)
        case .seed(let shard, let sequence, let total, let offset, let bytes):
            kind = 9
            put(UInt16(shard)); put(UInt16(0)); put(UInt32(0)); put(sequence); put(total); put(offset)
            body.append(contentsOf: bytes)
        case .seeded:
            kind = 10
        case .diverged(let shard, let last):
            kind = 11
            put(UInt16(shard)); put(UInt16(0)); put(UInt32(0)); put(last)
        case .probe(let shard, let sequence):
            kind = 12
            put(UInt16(shard)); put(UInt16(0)); put(UInt32(0)); put(sequence)
        case .probed(let shard, let sequence, let crc):
            kind = 13
            put(UInt16(shard)); put(UInt8(crc == nil ? 0 : 1)); put(UInt8(0)); put(UInt32(0)); put(sequence)
            put(crc ?? 0); put(UInt32(0))
        }
        var frame: [UInt8] = []
        frame.reserveCapacity(8 + body.count)
        withUnsafeBytes(of: UInt32(body.count).littleEndian) { frame.append(contentsOf: $0) }
        withUnsafeBytes(of: kind.littleEndian) { frame.append(contentsOf: $0) }
        frame.append(contentsOf: [0, 0])
        frame.append(contentsOf: body)
        return frame
    }

    /// Decodes one frame's body of `kind`, or says why it is not a message of this protocol.
    static func decode(kind: UInt16, _ body: UnsafeRawBufferPointer) throws(ReplicationError) -> ReplicationMessage {
        var at = 0
        func get<T: FixedWidthInteger>(_: T.Type) throws(ReplicationError) -> T {
            guard at + MemoryLayout<T>.size <= body.count else { throw .protocol("message kind \(kind) is short (\(body.count) bytes)") }
            defer { at += MemoryLayout<T>.size }
            return T(littleEndian: body.loadUnaligned(fromByteOffset: at, as: T.self))
        }
        func end() throws(ReplicationError) {
            guard at == body.count else { throw .protocol("message kind \(kind) has \(body.count - at) bytes too many") }
        }
        switch kind {
        case 1:
            guard try get(UInt64.self) == magic else { throw .protocol("not a Crossbook replication hello") }
            let version = try get(UInt16.self)
            guard version == Self.version else { throw .protocol("replication protocol version \(version); this engine speaks \(Self.version)") }
            let count = Int(try get(UInt16.self))
            guard count >= 1, count <= maxShards else { throw .protocol("hello for \(count) shards") }
            let epoch = try get(UInt64.self), configuration = try get(UInt64.self)
            var shards: [ShardPosition] = []
            for _ in 0..<count { shards.append(ShardPosition(last: try get(UInt64.self), crc: try get(UInt32.self))) }
            var nonce: [UInt8]?
            var keyIds: [[UInt8]] = []
            let rest = body.count - at
            if rest > 0 {
                // A nonce, then the standby's secrets' key ids (one, or two during a rotation).
                let ids = (rest - 32) / ReplicationAuth.keyIdSize
                guard rest > 32, (rest - 32) % ReplicationAuth.keyIdSize == 0, (1...2).contains(ids) else {
                    throw .protocol("a hello whose authentication part is \(rest) bytes (a nonce of 32 and one or two key ids of \(ReplicationAuth.keyIdSize))")
                }
                nonce = Array(body[at..<(at + 32)])
                at += 32
                for _ in 0..<ids {
                    keyIds.append(Array(body[at..<(at + ReplicationAuth.keyIdSize)]))
                    at += ReplicationAuth.keyIdSize
                }
            }
            try end()
            return .hello(epoch: epoch, configuration: configuration, shards: shards, nonce: nonce, keyIds: keyIds)
        case 14:
            guard body.count == 64 else { throw .protocol("a proof of \(body.count) bytes, not 64") }
            return .proof(nonce: Array(body[0..<32]), tag: Array(body[32..<64]))
        case 2:
            let epoch = try get(UInt64.self)
            let mode = try get(UInt8.self)
            guard mode <= 1 else { throw .protocol("replication mode \(mode)") }
            let name = body[at...]
            guard (1...127).contains(name.count), name.allSatisfy({ $0 > 0x20 && $0 < 0x7F }) else {
                throw .protocol("welcome names no instance (or not one of 1 to 127 printable bytes)")
            }
            return .welcome(epoch: epoch, mode: mode == 0 ? .sync : .async, instance: String(decoding: name, as: UTF8.self))
        case 3:
            return .refuse(String(decoding: body, as: UTF8.self))
        case 4:
            let shard = Int(try get(UInt16.self))
            _ = try get(UInt16.self); _ = try get(UInt32.self)
            let durable = try get(UInt64.self)
            return .records(shard: shard, durable: durable, bytes: Array(body[at...]))
        case 5:
            let shard = Int(try get(UInt16.self))
            _ = try get(UInt16.self); _ = try get(UInt32.self)
            let sequence = try get(UInt64.self), digest = try get(UInt64.self)
            try end()
            return .digest(shard: shard, sequence: sequence, digest: digest)
        case 6:
            let epoch = try get(UInt64.self)
            let engaged = try get(UInt64.self)
            guard engaged <= 1 else { throw .protocol("heartbeat engaged flag \(engaged)") }
            guard (body.count - at) % 8 == 0, (body.count - at) / 8 <= maxShards else { throw .protocol("heartbeat of \(body.count) bytes") }
            var durable: [UInt64] = []
            while at < body.count { durable.append(try get(UInt64.self)) }
            return .heartbeat(epoch: epoch, engaged: engaged == 1, durable: durable)
        case 7:
            let shard = Int(try get(UInt16.self))
            _ = try get(UInt16.self); _ = try get(UInt32.self)
            let durable = try get(UInt64.self)
            try end()
            return .ack(shard: shard, durable: durable)
        case 8:
            let epoch = try get(UInt64.self)
            try end()
            return .handover(epoch: epoch)
        case 9:
            let shard = Int(try get(UInt16.self))
            _ = try get(UInt16.self); _ = try get(UInt32.self)
            let sequence = try get(UInt64.self), total = try get(UInt64.self), offset = try get(UInt64.self)
            return .seed(shard: shard, sequence: sequence, total: total, offset: offset, bytes: Array(body[at...]))
        case 10:
            try end()
            return .seeded
        case 11, 12:
            let shard = Int(try get(UInt16.self))
            _ = try get(UInt16.self); _ = try get(UInt32.self)
            let sequence = try get(UInt64.self)
            try end()
            return kind == 11 ? .diverged(shard: shard, last: sequence) : .probe(shard: shard, sequence: sequence)
        case 13:
            let shard = Int(try get(UInt16.self))
            let present = try get(UInt8.self)
            guard present <= 1 else { throw .protocol("probed present flag \(present)") }
            _ = try get(UInt8.self); _ = try get(UInt32.self)
            let sequence = try get(UInt64.self), crc = try get(UInt32.self)
            _ = try get(UInt32.self)
            try end()
            return .probed(shard: shard, sequence: sequence, crc: present == 1 ? crc : nil)
        default:
            throw .protocol("unknown message kind \(kind)")
        }
    }
}

public enum ReplicationError: Error, Equatable, CustomStringConvertible {
    case `protocol`(String)
    case closed(String)
    case refused(String)
    case system(String)
    public var description: String {
        switch self {
        case .protocol(let why): "replication protocol error: \(why)"
        case .closed(let why): "connection closed: \(why)"
        case .refused(let why): "refused: \(why)"
        case .system(let why): why
        }
    }
}

/// A TCP address "host:port" (IPv4 dotted quad, or "localhost").
struct ReplicationAddress: Equatable, CustomStringConvertible {
    var host: String
    var port: UInt16

    init(_ text: String) throws(ReplicationError) {
        guard let colon = text.lastIndex(of: ":"), let port = UInt16(text[text.index(after: colon)...]), port > 0 else {
            throw .system("address '\(text)' is not host:port")
        }
        var host = String(text[..<colon])
        if host == "localhost" { host = "127.0.0.1" }
        var probe = in_addr()
        guard inet_pton(AF_INET, host, &probe) == 1 else { throw .system("address '\(text)': the host must be an IPv4 address") }
        self.host = host
        self.port = port
    }

    var description: String { "\(host):\(port)" }

    var sockaddr: sockaddr_in {
        var a = sockaddr_in()
        a.sin_family = sa_family_t(AF_INET)
        a.sin_port = port.bigEndian
        inet_pton(AF_INET, host, &a.sin_addr)
        return a
    }
}

/// One replication connection: whole frames out, frames in as they complete.
final class ReplicationConnection: @unchecked Sendable {
    let fd: Int32
    private var buffer: [UInt8] = []
    private var start = 0
    let peer: String
    /// Where recv(2) reads to (one allocation per connection, not one per read).
    private let chunk = UnsafeMutableRawBufferPointer.allocate(byteCount: 256 << 10, alignment: 64)
    /// Once authenticated (ReplicationAuth.swift): AES-256-GCM under the session's key, this
    /// side's direction (0: primary → standby, 1: standby → primary), and the frames numbered
    /// each way (direction and number are each frame's nonce: never used twice under one key).
    private var aead: OpaquePointer?
    private var direction: UInt8 = 0
    private var framesSent: UInt64 = 0
    private var framesReceived: UInt64 = 0

    init(fd: Int32, peer: String) {
        self.fd = fd
        self.peer = peer
        var one: Int32 = 1
        setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
        // A peer that stops reading cannot hold a sender forever.
        var timeout = timeval(tv_sec: 5, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
    }

    deinit {
        close(fd)
        chunk.deallocate()
        if let aead { cb_aead_free(aead) }
    }

    /// From the next frame on, each way: every frame's body sent encrypted and tagged under
    /// `key` (32 bytes), every frame received opened and checked.
    func authenticate(key: [UInt8], primary: Bool) {
        precondition(key.count == 32)
        guard let made = key.withUnsafeBufferPointer({ cb_aead_new($0.baseAddress) }) else {
            fatalError("libcrypto cannot make an AES-256-GCM key")
        }
        if let aead { cb_aead_free(aead) }
        aead = made
        direction = primary ? 0 : 1
    }

    /// A frame's nonce: its direction (u8), 3 zero bytes, its number in that direction (u64).
    private static func withNonce<T>(direction: UInt8, number: UInt64, _ body: (UnsafePointer<UInt8>) -> T) -> T {
        var nonce = [UInt8](repeating: 0, count: 12)
        nonce[0] = direction
        withUnsafeBytes(of: number.littleEndian) { for i in 0..<8 { nonce[4 + i] = $0[i] } }
        return nonce.withUnsafeBufferPointer { body($0.baseAddress!) }
    }

    /// Ends the connection now (another thread blocked on it returns).
    func shutdownNow() { shutdown(fd, Int32(SHUT_RDWR)) }

    static func connect(to address: ReplicationAddress, timeoutMilliseconds: Int32) throws(ReplicationError) -> ReplicationConnection {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0)
        guard fd >= 0 else { throw .system("socket: \(String(cString: strerror(errno)))") }
        var a = address.sockaddr
        let rc = withUnsafePointer(to: &a) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        if rc != 0 && errno != EINPROGRESS {
            let why = String(cString: strerror(errno))
            close(fd)
            throw .system("connect to \(address): \(why)")
        }
        var p = pollfd(fd: fd, events: Int16(POLLOUT), revents: 0)
        var error: Int32 = 0
        var length = socklen_t(MemoryLayout<Int32>.size)
        if poll(&p, 1, timeoutMilliseconds) != 1 || getsockopt(fd, SOL_SOCKET, SO_ERROR, &error, &length) != 0 || error != 0 {
            close(fd)
            throw .system("connect to \(address): \(error != 0 ? String(cString: strerror(error)) : "timed out")")
        }
        let flags = fcntl(fd, F_GETFL)
        _ = fcntl(fd, F_SETFL, flags & ~O_NONBLOCK)
        return ReplicationConnection(fd: fd, peer: address.description)
    }

    func send(_ message: ReplicationMessage) throws(ReplicationError) {
        var frame = message.encode()
        if let aead {
            // The header (length, kind) stays readable, and is covered by the tag.
            var tag = [UInt8](repeating: 0, count: ReplicationAuth.tagSize)
            let rc = Self.withNonce(direction: direction, number: framesSent) { nonce in
                frame.withUnsafeMutableBytes { raw in
                    tag.withUnsafeMutableBufferPointer {
                        cb_aead_seal(aead, nonce, raw.baseAddress!, 8, raw.baseAddress!.assumingMemoryBound(to: UInt8.self) + 8, raw.count - 8, $0.baseAddress!)
                    }
                }
            }
            guard rc == 0 else { throw .system("libcrypto failed to encrypt a frame") }
            frame += tag
            framesSent += 1
        }
        var sent = 0
        while sent < frame.count {
            let n = frame.withUnsafeBytes { raw in Glibc.send(fd, raw.baseAddress! + sent, raw.count - sent, Int32(MSG_NOSIGNAL)) }
            if n < 0 {
                if errno == EINTR { continue }
                throw .closed("send to \(peer): \(errno == EAGAIN ? "the peer reads nothing (5 s)" : String(cString: strerror(errno)))")
            }
            sent += n
        }
    }

    /// The next whole message, waiting up to `timeoutMilliseconds` for bytes; nil if none came.
    func receive(timeoutMilliseconds: Int32) throws(ReplicationError) -> ReplicationMessage? {
        if let message = try parse() { return message }
        var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        let ready = poll(&p, 1, timeoutMilliseconds)
        if ready < 0 && errno != EINTR { throw .system("poll: \(String(cString: strerror(errno)))") }
        if ready <= 0 { return nil }
        let n = recv(fd, chunk.baseAddress!, chunk.count, 0)
        if n == 0 { throw .closed("\(peer) closed the connection") }
        if n < 0 {
            if errno == EINTR || errno == EAGAIN { return nil }
            throw .closed("receive from \(peer): \(String(cString: strerror(errno)))")
        }
        if start > 0 && start == buffer.count {
            buffer.removeAll(keepingCapacity: true)
            start = 0
        } else if start > 1 << 20 {
            buffer.removeFirst(start)
            start = 0
        }
        buffer.append(contentsOf: UnsafeRawBufferPointer(rebasing: chunk[0..<n]))
        return try parse()
    }

    private func parse() throws(ReplicationError) -> ReplicationMessage? {
        guard buffer.count - start >= 8 else { return nil }
        let (length, kind, reserved): (Int, UInt16, UInt16) = buffer.withUnsafeBytes { raw in
            (Int(UInt32(littleEndian: raw.loadUnaligned(fromByteOffset: start, as: UInt32.self))),
             UInt16(littleEndian: raw.loadUnaligned(fromByteOffset: start + 4, as: UInt16.self)),
             UInt16(littleEndian: raw.loadUnaligned(fromByteOffset: start + 6, as: UInt16.self)))
        }
        guard length <= ReplicationMessage.maxBody, reserved == 0 else {
            throw .protocol("a frame of \(length) bytes (at most \(ReplicationMessage.maxBody)), reserved \(reserved)")
        }
        let tagged = aead != nil ? ReplicationAuth.tagSize : 0
        guard buffer.count - start >= 8 + length + tagged else { return nil }
        if let aead {
            // Opened in place, once: a frame whose tag fails is used in no part.
            let rc = Self.withNonce(direction: 1 - direction, number: framesReceived) { nonce in
                buffer.withUnsafeMutableBytes { raw in
                    let frame = raw.baseAddress!.assumingMemoryBound(to: UInt8.self) + start
                    return cb_aead_open(aead, nonce, frame, 8, frame + 8, length, frame + 8 + length)
                }
            }
            guard rc == 0 else {
                throw rc < 0 ? .system("libcrypto failed to decrypt a frame")
                    : .protocol("frame \(framesReceived) from \(peer) does not authenticate (altered, replayed or injected on the way, or the peer does not hold this engine's secret)")
            }
            framesReceived += 1
        }
        let decoded: Result<ReplicationMessage, ReplicationError> = buffer.withUnsafeBytes { raw in
            do throws(ReplicationError) {
                return .success(try ReplicationMessage.decode(kind: kind, UnsafeRawBufferPointer(rebasing: raw[(start + 8)..<(start + 8 + length)])))
            } catch { return .failure(error) }
        }
        let message = try decoded.get()
        start += 8 + length + tagged
        return message
    }
}

/// A 64-bit FNV-1a hash (of the configuration text both ends must share).
func fnv1a(_ text: String) -> UInt64 {
    var h: UInt64 = 0xCBF2_9CE4_8422_2325
    for b in text.utf8 { h = (h ^ UInt64(b)) &* 0x0000_0100_0000_01B3 }
    return h
}
