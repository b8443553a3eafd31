// A plugin's subscription: a consumer of one shard's event ring.

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

    init(consumer: EventConsumer) { self.consumer = consumer }

    var handle: OpaquePointer { OpaquePointer(Unmanaged.passUnretained(self).toOpaque()) }

    static func from(_ p: OpaquePointer) -> PluginSubscription {
        Unmanaged<PluginSubscription>.fromOpaque(UnsafeRawPointer(p)).takeUnretainedValue()
    }

    func poll(_ out: UnsafeMutableRawPointer, capacity: Int) -> Int32 {
        if closed { return CB_ERR_CLOSED.rawValue }
        do {
            let n = min(try consumer.poll(), capacity)
            for k in 0..<n { (out + k * 64).copyMemory(from: consumer.slot(k), byteCount: 64) }
            if n > 0 { consumer.release(n) }
            return Int32(n)
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
