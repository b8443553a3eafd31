// A plugin's subscription: a consumer of one shard's event ring (market data, or the private
// drop copies), optionally behind a backlog regenerated from the journal.

import CPluginABI
import CSync
import Glibc
import Journal
import OrderBook
import SharedMemory

/// A plugin's consumer of one shard's event ring.
final class PluginSubscription: @unchecked Sendable {
    let consumer: EventConsumer
    var closed = false
    /// Records regenerated from the journal (64 bytes each), served before the live ring; live
    /// records at or below `skipThrough` (in the backlog already, or before it) are skipped.
    private var backlog: [UInt8]
    private var served = 0
    private let skipThrough: UInt64

    init(consumer: EventConsumer, backlog: [UInt8] = [], skipThrough: UInt64 = 0) {
        self.consumer = consumer
        self.backlog = backlog
        self.skipThrough = skipThrough
    }

    var handle: OpaquePointer { OpaquePointer(Unmanaged.passUnretained(self).toOpaque()) }

    static func from(_ p: OpaquePointer) -> PluginSubscription {
        Unmanaged<PluginSubscription>.fromOpaque(UnsafeRawPointer(p)).takeUnretainedValue()
    }

    func poll(_ out: UnsafeMutableRawPointer, capacity: Int) -> Int32 {
        if closed { return CB_ERR_CLOSED.rawValue }
        if served < backlog.count {
            let n = min(capacity, (backlog.count - served) / 64)
            backlog.withUnsafeBytes { out.copyMemory(from: $0.baseAddress! + served, byteCount: n * 64) }
            served += n * 64
            if served == backlog.count { backlog = [] ; served = 0 }
            return Int32(n)
        }
        do {
            let available = try consumer.poll()
            var written = 0, taken = 0
            while taken < available && written < capacity {
                let slot = consumer.slot(taken)
                taken += 1
                let sequence = UInt64(littleEndian: slot.loadUnaligned(fromByteOffset: 8, as: UInt64.self))
                if sequence <= skipThrough { continue }
                (out + written * 64).copyMemory(from: slot, byteCount: 64)
                written += 1
            }
            if taken > 0 { consumer.release(taken) }
            return Int32(written)
        } catch {
            return CB_ERR_CLOSED.rawValue
        }
    }

    func close() {
        guard !closed else { return }
        closed = true
        consumer.close()
    }
}
