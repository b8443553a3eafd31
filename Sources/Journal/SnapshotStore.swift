// Where shard snapshots live: a small interface, so that a plugin owns it. The default store,
// files beside the journal, is plugins/snapshot-file (the engine reaches it through the plugin
// ABI: Sources/Engine/Plugins/PluginSnapshotStore.swift).

public protocol SnapshotStore: AnyObject, Sendable {
    /// Stores a shard's snapshot taken at `sequence`.
    func save(shard: Int, sequence: UInt64, body: [UInt8]) throws(JournalError)
    /// A shard's snapshots, newest first, as (sequence, name) to try in turn.
    func list(shard: Int) -> [(sequence: UInt64, name: String)]
    /// One snapshot's body, checked (whole, not damaged).
    func load(shard: Int, name: String) throws(JournalError) -> (sequence: UInt64, body: [UInt8])
}
