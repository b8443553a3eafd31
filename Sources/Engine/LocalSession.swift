// A session of the engine's own: a plugin's producer. Its rings are in this process's memory and
// go to the shards through their mailboxes, like a client's rings after its handshake, but with
// no files, no handshake and no control thread in between.

import Glibc
import SharedMemory

final class LocalSession: @unchecked Sendable {
    let id: UInt32
    /// The ingress partition its commands come from, if bound.
    let source: IngressSource?
    /// Kept for the mappings: the shards hold views into them.
    private let rings: [Ring]
    private var io: SessionRings
    private let running: @Sendable () -> Bool
    /// One caller at a time, as with a client: the plugin's producer handle is not shared
    /// between its threads (plugins/README.md).
    private(set) var closed = false

    init(id: UInt32, source: IngressSource? = nil, commands: [Ring], reports: [Ring], doorbells: [Doorbell],
         running: @escaping @Sendable () -> Bool) {
        self.id = id
        self.source = source
        rings = commands + reports
        io = SessionRings(commands: commands.map { $0.producer() }, reports: reports.map { $0.consumer() }, doorbells: doorbells)
        self.running = running
    }

    func close() { closed = true }

    var isOpen: Bool { !closed && running() }

    /// Puts one 64-byte command record in `shard`'s ring. False when that ring is full, or the
    /// shard detached this session.
    func submit(_ record: UnsafeRawPointer, shard: Int) -> Bool { io.submitRecord(record, shard: shard) }

    /// Copies up to `capacity` waiting 64-byte report records to `out`; returns how many.
    func poll(into out: UnsafeMutableRawPointer, capacity: Int) throws(RingFault) -> Int {
        try io.pollRecords(into: out, capacity: capacity)
    }
}
