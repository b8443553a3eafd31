// A client's handshake file (`<client>.session`): the client creates it; the engine answers in it.

import CPluginABI
import CSync
import Glibc

/// A client's handshake file: the client creates it; the engine answers in it.
///   0 magic (u64), 8 state (u32: 0 pending, 1 accepted, 2 refused), 12 session id (u32),
///   16 client pid (i32), 20 refusal reason (u32)
public final class SessionFile: @unchecked Sendable {
    public enum State: UInt32, Sendable {
        case pending = 0
        case accepted = 1
        case refused = 2
    }

    public let file: MappedFile

    public static func create(path: String, mode: mode_t) throws(SharedMemoryError) -> SessionFile {
        let file = try MappedFile.create(path: path, size: 64, mode: mode)
        file.base.storeBytes(of: getpid().littleEndian, toByteOffset: 16, as: Int32.self)
        cb_store_release_u64(file.base.assumingMemoryBound(to: UInt64.self), InstanceLayout.sessionMagic.littleEndian)
        return SessionFile(file: file)
    }

    public static func attach(path: String) throws(SharedMemoryError) -> SessionFile {
        let file = try MappedFile.open(path: path, minimumSize: 64)
        guard file.size == 64,
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
