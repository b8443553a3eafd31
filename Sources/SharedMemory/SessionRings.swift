// One session's rings to and from every shard, with the shards' doorbells: what a producer
// holds, whether a client process (CrossbookClient) or a session of the engine's own (a
// plugin's producer, Engine/LocalSession.swift).

/// A session's command rings (it produces), report rings (it consumes) and doorbells, by shard.
@frozen
public struct SessionRings {
    public var commands: [RingProducer]
    public var reports: [RingConsumer]
    public let doorbells: [Doorbell]

    public init(commands: [RingProducer], reports: [RingConsumer], doorbells: [Doorbell]) {
        self.commands = commands
        self.reports = reports
        self.doorbells = doorbells
    }

    /// Puts one 64-byte command record, encoded by the caller, in `shard`'s ring and rings its
    /// doorbell. False when that ring is full or the shard detached this session. The shard
    /// checks every field.
    @inlinable
    public mutating func submitRecord(_ record: UnsafeRawPointer, shard: Int) -> Bool {
        guard shard >= 0, shard < commands.count, reports[shard].closed == nil, commands[shard].claim(1) == 1 else { return false }
        commands[shard].slot(0).copyMemory(from: record, byteCount: RingLayout.slotSize)
        commands[shard].publish(1)
        doorbells[shard].ring()
        return true
    }

    /// Copies up to `capacity` waiting 64-byte report records to `out`, shard by shard; returns
    /// how many.
    public mutating func pollRecords(into out: UnsafeMutableRawPointer, capacity: Int) throws(RingFault) -> Int {
        var total = 0
        for s in reports.indices where total < capacity {
            let n = try reports[s].poll()
            let take = min(n, capacity - total)
            for k in 0..<take { (out + (total + k) * RingLayout.slotSize).copyMemory(from: reports[s].slot(k), byteCount: RingLayout.slotSize) }
            if take > 0 { reports[s].release(take) }
            total += take
        }
        return total
    }
}
