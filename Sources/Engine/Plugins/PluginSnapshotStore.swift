// A snapshot store a plugin registered (cb_snapshot_store), seen by the engine as a SnapshotStore.

import CPluginABI
import CSync
import Glibc
import Journal
import OrderBook
import SharedMemory

/// A snapshot store a plugin registered, seen by the engine as any SnapshotStore.
final class PluginSnapshotStore: SnapshotStore, @unchecked Sendable {
    let store: cb_snapshot_store
    let plugin: String
    /// The ABI promises a store one thread at a time per shard (crossbook_plugin.h). A shard's
    /// snapshot writer and the replication thread seeding a standby both use a shard's
    /// snapshots: one lock per shard keeps the promise.
    private let shardLocks = (0..<InstanceLayout.maxShards).map { _ in Lock() }

    private func locked<T>(_ shard: Int, _ body: () throws(JournalError) -> T) throws(JournalError) -> T {
        guard shard >= 0, shard < shardLocks.count else { return try body() }
        return try shardLocks[shard].locked { () throws(JournalError) -> T in try body() }
    }

    init(store: cb_snapshot_store, plugin: String) {
        self.store = store
        self.plugin = plugin
    }

    func save(shard: Int, sequence: UInt64, body: [UInt8]) throws(JournalError) {
        var error = [CChar](repeating: 0, count: 256)
        let rc = try locked(shard) { () throws(JournalError) -> Int32 in
            body.withUnsafeBufferPointer { b in
                store.save(store.context, UInt32(shard), sequence, b.baseAddress, b.count, &error, error.count)
            }
        }
        guard rc == 0 else {
            throw .snapshotStore(plugin: plugin, status: statusName(rc), message: messageText(error))
        }
    }

    final class Box<T> {
        var value: T
        init(_ value: T) { self.value = value }
    }

    func list(shard: Int) -> [(sequence: UInt64, name: String)] {
        let found = Box<[(sequence: UInt64, name: String)]>([])
        let context = Unmanaged.passUnretained(found).toOpaque()
        _ = try? locked(shard) { () throws(JournalError) -> Int32 in
            store.list(store.context, UInt32(shard), { context, sequence, name in
                guard let context, let name else { return }
                let box = Unmanaged<Box<[(sequence: UInt64, name: String)]>>.fromOpaque(context).takeUnretainedValue()
                box.value.append((sequence, String(cString: name)))
            }, context)
        }
        return found.value.sorted { $0.sequence > $1.sequence }
    }

    func load(shard: Int, name: String) throws(JournalError) -> (sequence: UInt64, body: [UInt8]) {
        let body = Box<[UInt8]>([])
        var sequence: UInt64 = 0
        var error = [CChar](repeating: 0, count: 256)
        let context = Unmanaged.passUnretained(body).toOpaque()
        let rc = try locked(shard) { () throws(JournalError) -> Int32 in
            store.load(store.context, UInt32(shard), name, &sequence, { context, bytes, length in
                guard let context else { return }
                let box = Unmanaged<Box<[UInt8]>>.fromOpaque(context).takeUnretainedValue()
                box.value = length > 0 && bytes != nil ? Array(UnsafeBufferPointer(start: bytes, count: length)) : []
            }, context, &error, error.count)
        }
        guard rc == 0 else {
            throw .badSegment(path: name, "plugin \(plugin): \(statusName(rc)): \(messageText(error))")
        }
        return (sequence, body.value)
    }
}

extension PluginSnapshotStore {
    /// The store keeps named blobs another engine can read (moving a book between engines).
    var hasBlobs: Bool { store.blob_save != nil && store.blob_load != nil && store.blob_delete != nil }

    func saveBlob(_ key: String, _ body: [UInt8]) -> String? {
        guard let save = store.blob_save else { return "snapshot store \(plugin) keeps no blobs" }
        var error = [CChar](repeating: 0, count: 256)
        let rc = body.withUnsafeBufferPointer { b in save(store.context, key, b.baseAddress, b.count, &error, error.count) }
        return rc == 0 ? nil : "snapshot store \(plugin): \(statusName(rc)): \(messageText(error))"
    }

    /// The blob (nil with why: none, or the store failed).
    func loadBlob(_ key: String) -> Result<[UInt8], EngineError> {
        guard let load = store.blob_load else { return .failure(EngineError("snapshot store \(plugin) keeps no blobs")) }
        let body = Box<[UInt8]>([])
        var error = [CChar](repeating: 0, count: 256)
        let context = Unmanaged.passUnretained(body).toOpaque()
        let rc = load(store.context, key, { context, bytes, length in
            guard let context else { return }
            let box = Unmanaged<Box<[UInt8]>>.fromOpaque(context).takeUnretainedValue()
            box.value = length > 0 && bytes != nil ? Array(UnsafeBufferPointer(start: bytes, count: length)) : []
        }, context, &error, error.count)
        guard rc == 0 else {
            return .failure(EngineError("snapshot store \(plugin): \(key): \(statusName(rc))\(error[0] == 0 ? "" : ": " + messageText(error))"))
        }
        return .success(body.value)
    }

    func deleteBlob(_ key: String) {
        guard let delete = store.blob_delete else { return }
        _ = delete(store.context, key)
    }
}
