// A lease a plugin offers (cb_lease_ops in crossbook_plugin.h), seen by the engine's LeaseKeeper
// (Replication/Lease.swift). Opened when the plugins are loaded, before the engine recovers and
// whatever its role: a standby starts no other plugin before it is promoted, yet takes the lease.

import CPluginABI
import CSync
import Glibc

final class PluginLease: @unchecked Sendable {
    let plugin: LoadedPlugin
    private let ops: cb_lease_ops
    private var context: UnsafeMutableRawPointer?
    /// The ABI promises one call at a time per lease.
    private let lock = Lock()

    enum Outcome: Equatable {
        case held(epoch: UInt64)
        /// Another holder has it (acquire), or it is gone or another's (renew).
        case lost(String)
        /// Nothing known: unreachable, no answer in time, an answer that is not one.
        case unknown(String)
    }

    /// Opens `plugin`'s lease; throws with the reason when it offers none or will not open.
    init(plugin: LoadedPlugin) throws(EngineError) {
        self.plugin = plugin
        guard let raw = plugin.descriptor.lease else {
            throw EngineError("lease_plugin \(plugin.name) \(plugin.version) offers no lease (cb_plugin.lease): name one that does, e.g. redis-routing")
        }
        let size = Int(UnsafeRawPointer(raw).load(as: UInt32.self))
        let minimum = MemoryLayout<cb_lease_ops>.offset(of: \cb_lease_ops.close)! + MemoryLayout<UnsafeRawPointer>.size
        guard size >= minimum else {
            throw EngineError("plugin \(plugin.name): its cb_lease_ops is \(size) bytes, at least \(minimum) expected (set size = sizeof(cb_lease_ops))")
        }
        var ops = cb_lease_ops()
        withUnsafeMutableBytes(of: &ops) { out in
            out.copyMemory(from: UnsafeRawBufferPointer(start: UnsafeRawPointer(raw), count: min(size, out.count)))
        }
        guard let open = ops.open, ops.acquire != nil, ops.renew != nil, ops.close != nil else {
            throw EngineError("plugin \(plugin.name): its cb_lease_ops lacks open, acquire, renew or close")
        }
        self.ops = ops
        var error = [CChar](repeating: 0, count: 256)
        var context: UnsafeMutableRawPointer?
        let rc = open(PluginHost.api, plugin.handle, &context, &error, error.count)
        guard rc == CB_OK.rawValue else {
            throw EngineError("plugin \(plugin.name): the lease will not open: \(statusName(rc)): \(messageText(error))")
        }
        self.context = context
    }

    var name: String { plugin.name }

    func acquire(key: String, holder: String, ttlMilliseconds: Int) -> Outcome {
        lock.locked {
            guard let context else { return .unknown("the lease is closed") }
            var error = [CChar](repeating: 0, count: 256)
            var epoch: UInt64 = 0
            let rc = ops.acquire!(context, key, holder, UInt32(ttlMilliseconds), &epoch, &error, error.count)
            return outcome(rc, error, epoch: epoch)
        }
    }

    func renew(key: String, holder: String, ttlMilliseconds: Int) -> Outcome {
        lock.locked {
            guard let context else { return .unknown("the lease is closed") }
            var error = [CChar](repeating: 0, count: 256)
            let rc = ops.renew!(context, key, holder, UInt32(ttlMilliseconds), &error, error.count)
            return outcome(rc, error, epoch: 0)
        }
    }

    private func outcome(_ rc: Int32, _ error: [CChar], epoch: UInt64) -> Outcome {
        switch rc {
        case CB_OK.rawValue: return .held(epoch: epoch)
        case CB_ERR_FAILED.rawValue: return .lost(messageText(error))
        default: return .unknown("\(statusName(rc)): \(messageText(error))")
        }
    }

    func close() {
        lock.locked {
            guard let context else { return }
            ops.close!(context)
            self.context = nil
        }
    }

    deinit { close() }
}
