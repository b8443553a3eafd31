// A client's handshake file (`<client>.session`): the client creates it; the engine answers in it.

import CPluginABI
import CSync
import Glibc

/// A client's handshake file: the client creates it; the engine answers in it.
///   0 magic (u64), 8 state (u32: 0 pending, 1 accepted, 2 refused), 12 session id (u32),
///   16 client pid (i32), 20 refusal reason (u32)
/// A client with a stream (a named, resumable order flow: exactly-once resend after a restart
/// or a failover) writes the longer form (`streamSize` bytes), which adds:
///   24 stream name length (u32, 1...64), 32 the name (64 bytes: A-Z a-z 0-9 . _ -),
///   96 position count (u32, the engine's shard count), 128 + 8 s: per shard s the next offset
///   it expects of the stream (u64: the last applied + 1; 0 while none)
/// The client may rewrite any byte at any time: the engine copies the name out once and checks
/// it; a client that spoils its own answer spoils only its own session.
public final class SessionFile: @unchecked Sendable {
    public enum State: UInt32, Sendable {
        case pending = 0
        case accepted = 1
        case refused = 2
    }

    public let file: MappedFile
    public static let plainSize = 64
    public static let streamSize = 1024
    public static let maxStreamName = 64
    /// The most shards whose positions the longer form holds.
    public static let maxPositions = (streamSize - 128) / 8

    /// `stream`: the name of this client's stream (checked by the caller: `isValidStream`).
    public static func create(path: String, mode: mode_t, stream: String? = nil) throws(SharedMemoryError) -> SessionFile {
        let file = try MappedFile.create(path: path, size: stream == nil ? plainSize : streamSize, mode: mode)
        file.base.storeBytes(of: getpid().littleEndian, toByteOffset: 16, as: Int32.self)
        if let stream {
            let bytes = Array(stream.utf8.prefix(maxStreamName))
            file.base.storeBytes(of: UInt32(bytes.count).littleEndian, toByteOffset: 24, as: UInt32.self)
            for (i, byte) in bytes.enumerated() { file.base.storeBytes(of: byte, toByteOffset: 32 + i, as: UInt8.self) }
        }
        cb_store_release_u64(file.base.assumingMemoryBound(to: UInt64.self), InstanceLayout.sessionMagic.littleEndian)
        return SessionFile(file: file)
    }

    public static func attach(path: String) throws(SharedMemoryError) -> SessionFile {
        let file = try MappedFile.open(path: path, minimumSize: plainSize)
        guard file.size == plainSize || file.size == streamSize,
              UInt64(littleEndian: cb_load_acquire_u64(file.base.assumingMemoryBound(to: UInt64.self)))
                == InstanceLayout.sessionMagic
        else { throw .badHeader(path: path, "not a session file") }
        return SessionFile(file: file)
    }

    private init(file: MappedFile) { self.file = file }

    var stateWord: UnsafeMutablePointer<UInt32> { (file.base + 8).assumingMemoryBound(to: UInt32.self) }

    public var state: State { State(rawValue: cb_load_acquire_u32(stateWord)) ?? .refused }
    public var sessionId: UInt32 { file.base.load(fromByteOffset: 12, as: UInt32.self) }
    public var clientPid: Int32 { Int32(littleEndian: file.base.load(fromByteOffset: 16, as: Int32.self)) }
    public var refusal: UInt32 { file.base.load(fromByteOffset: 20, as: UInt32.self) }

    /// A valid stream name: 1 to 64 of A-Z a-z 0-9 . _ -
    public static func isValidStream(_ name: String) -> Bool {
        !name.isEmpty && name.utf8.count <= maxStreamName && name.utf8.allSatisfy {
            ($0 >= 0x30 && $0 <= 0x39) || ($0 >= 0x41 && $0 <= 0x5A) || ($0 >= 0x61 && $0 <= 0x7A) || $0 == 0x2E || $0 == 0x5F || $0 == 0x2D
        }
    }

    /// What the client says of its stream, copied out once: nil (no stream: the short form),
    /// the name, or why it is not one (the engine refuses the client).
    public func stream() -> Result<String?, SharedMemoryError> {
        guard file.size == Self.streamSize else { return .success(nil) }
        let length = Int(UInt32(littleEndian: file.base.loadUnaligned(fromByteOffset: 24, as: UInt32.self)))
        guard length >= 1, length <= Self.maxStreamName else {
            return .failure(.badHeader(path: "session file", "stream name length \(length), not 1...\(Self.maxStreamName)"))
        }
        var bytes = [UInt8](repeating: 0, count: length)
        for i in 0..<length { bytes[i] = file.base.load(fromByteOffset: 32 + i, as: UInt8.self) }
        let name = String(decoding: bytes, as: UTF8.self)
        guard Array(name.utf8) == bytes, Self.isValidStream(name) else {
            return .failure(.badHeader(path: "session file", "a stream name must be 1 to 64 of A-Z a-z 0-9 . _ -"))
        }
        return .success(name)
    }

    /// Engine side, before the answer: per shard the next offset it expects of the stream.
    public func writePositions(_ next: [UInt64]) {
        guard file.size == Self.streamSize, next.count <= Self.maxPositions else { return }
        file.base.storeBytes(of: UInt32(next.count).littleEndian, toByteOffset: 96, as: UInt32.self)
        for (s, offset) in next.enumerated() { file.base.storeBytes(of: offset.littleEndian, toByteOffset: 128 + 8 * s, as: UInt64.self) }
    }

    /// Client side, after the answer: the positions the engine wrote (nil: none, or not as many
    /// as `shards`).
    public func positions(shards: Int) -> [UInt64]? {
        guard file.size == Self.streamSize, shards <= Self.maxPositions,
              Int(UInt32(littleEndian: file.base.loadUnaligned(fromByteOffset: 96, as: UInt32.self))) == shards else { return nil }
        return (0..<shards).map { UInt64(littleEndian: file.base.loadUnaligned(fromByteOffset: 128 + 8 * $0, as: UInt64.self)) }
    }

    /// Engine side: answers and wakes the client.
    public func answer(_ state: State, sessionId: UInt32, refusal: UInt32 = 0) {
        file.base.storeBytes(of: sessionId, toByteOffset: 12, as: UInt32.self)
        file.base.storeBytes(of: refusal, toByteOffset: 20, as: UInt32.self)
        // Release: the session id is visible before the state that says to read it.
        cb_store_release_u32(stateWord, state.rawValue)
        _ = cb_futex_wake(stateWord, Int32.max)
    }

    /// Client side: waits for the answer up to `timeoutNanoseconds`.
    public func awaitAnswer(timeoutNanoseconds: Int64) -> State {
        let deadline = Int64(monotonicNanoseconds()) + timeoutNanoseconds
        while true {
            let s = cb_load_acquire_u32(stateWord)
            if s != State.pending.rawValue { return State(rawValue: s) ?? .refused }
            let left = deadline - Int64(monotonicNanoseconds())
            if left <= 0 { return .pending }
            _ = cb_futex_wait(stateWord, s, min(left, 50_000_000))
        }
    }
}
