// A plugin's producer: a session of the engine's own with rings to every shard.

import CPluginABI
import CSync
import Glibc
import Journal
import OrderBook
import SharedMemory

/// A plugin's producer: a session of the engine's own (LocalSession), with rings to every shard.
final class PluginProducer: @unchecked Sendable {
    let session: LocalSession
    /// Symbol id → shard now (it follows migrations).
    let routes: RouteTable
    private let closeSession: @Sendable (LocalSession) -> Void
    /// A source's producer: its watermarks to a shard (nil: not a source's).
    private let watermarkTo: (@Sendable (UInt32, Int, UInt64) -> Bool)?

    init(session: LocalSession, routes: RouteTable, close: @escaping @Sendable (LocalSession) -> Void,
         watermark: (@Sendable (UInt32, Int, UInt64) -> Bool)? = nil) {
        self.session = session
        self.routes = routes
        closeSession = close
        watermarkTo = watermark
    }

    func watermark(shard: Int, offset: UInt64) -> Int32 {
        guard let watermarkTo, offset <= UInt64(Int64.max) else { return CB_ERR_INVALID.rawValue }
        guard session.isOpen else { return CB_ERR_CLOSED.rawValue }
        return watermarkTo(session.id, shard, offset) ? CB_OK.rawValue : CB_ERR_FULL.rawValue
    }

    var handle: OpaquePointer { OpaquePointer(Unmanaged.passUnretained(self).toOpaque()) }

    static func from(_ p: OpaquePointer) -> PluginProducer {
        Unmanaged<PluginProducer>.fromOpaque(UnsafeRawPointer(p)).takeUnretainedValue()
    }

    func submit(_ record: UnsafeRawPointer) -> Int32 {
        guard session.isOpen else { return CB_ERR_CLOSED.rawValue }
        let symbol = UInt32(littleEndian: record.loadUnaligned(fromByteOffset: 8, as: UInt32.self))
        guard let shard = routes.shard(of: symbol) else { return CB_ERR_UNKNOWN_SYMBOL.rawValue }
        return session.submit(record, shard: shard) ? CB_OK.rawValue : CB_ERR_FULL.rawValue
    }

    func poll(_ out: UnsafeMutableRawPointer, capacity: Int) -> Int32 {
        if session.closed { return CB_ERR_CLOSED.rawValue }
        do {
            return Int32(try session.poll(into: out, capacity: min(capacity, Int(Int32.max))))
        } catch {
            return CB_ERR_CLOSED.rawValue
        }
    }

    func close() {
        guard !session.closed else { return }
        closeSession(session)
    }
}
