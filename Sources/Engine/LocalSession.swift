// A session of the engine's own: a plugin's producer. Its rings are in this process's memory and
// go to the shards through their mailboxes, like a client's rings after its handshake, but with
// no files, no handshake and no control thread in between.

import Glibc
import SharedMemory
import Wire

final class LocalSession: @unchecked Sendable {
    let id: UInt32
    /// Kept for the mappings: the shards hold views into them.
    private let rings: [Ring]
    private var commands: [RingProducer]
    private var reports: [RingConsumer]
    private let doorbells: [Doorbell]
    private let running: @Sendable () -> Bool
    /// One caller at a time, as with a client: the plugin's producer handle is not shared
    /// between its threads (plugins/README.md).
    private(set) var closed = false

    init(id: UInt32, commands: [Ring], reports: [Ring], doorbells: [Doorbell], running: @escaping @Sendable () -> Bool) {
        self.id = id
        rings = commands + reports
        self.commands = commands.map { $0.producer() }
        self.reports = reports.map { $0.consumer() }
        self.doorbells = doorbells
        self.running = running
    }

    func close() { closed = true }

    var isOpen: Bool { !closed && running() }

    /// Puts one 64-byte command record in `shard`'s ring. False when that ring is full, or the
    /// shard detached this session. The shard checks every field.
    func submit(_ record: UnsafeRawPointer, shard: Int) -> Bool {
        guard shard >= 0, shard < commands.count, reports[shard].closed == nil, commands[shard].claim(1) == 1 else { return false }
        commands[shard].slot(0).copyMemory(from: record, byteCount: CommandRecord.size)
        commands[shard].publish(1)
        doorbells[shard].ring()
        return true
    }

    /// Copies up to `capacity` waiting 64-byte report records to `out`; returns how many.
    func poll(into out: UnsafeMutableRawPointer, capacity: Int) throws(RingFault) -> Int {
        var total = 0
        for s in reports.indices where total < capacity {
            let n = try reports[s].poll()
            let take = min(n, capacity - total)
            for k in 0..<take { (out + (total + k) * 64).copyMemory(from: reports[s].slot(k), byteCount: 64) }
            if take > 0 { reports[s].release(take) }
            total += take
        }
        return total
    }
}
