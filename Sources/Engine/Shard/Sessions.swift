// The sessions a shard serves: per session its command ring in and its report ring out, and
// the map from session id (16 bits) to its slot.

import SharedMemory

/// One session as a shard sees it.
struct Inbound {
    var commands: RingConsumer
    var reports: RingProducer
    let session: UInt32
    /// False once the client is gone or was detached for lagging.
    var active: Bool
}

/// The session table's memory: slots, and session id → slot (or -1). Shared by the shard's
/// parts that read it (the output gate writes reports through it); changed only by `SessionTable`.
struct SessionSlots {
    let inbound: UnsafeMutablePointer<Inbound>
    let index: UnsafeMutablePointer<Int32>
}

/// The sessions attached to a shard: at most `capacity` at once; the slot of a session that is
/// gone is reused.
struct SessionTable {
    let slots: SessionSlots
    let capacity: Int
    /// Slots in use (active or not): the shard polls `0..<count`.
    private(set) var count = 0

    init(capacity: Int) {
        self.capacity = capacity
        let index = cacheAligned(Int32.self, count: 1 << 16)
        index.initialize(repeating: -1, count: 1 << 16)
        slots = SessionSlots(inbound: cacheAligned(Inbound.self, count: capacity), index: index)
    }

    func deallocate() {
        slots.inbound.deinitialize(count: count)
        slots.inbound.deallocate()
        slots.index.deallocate()
    }

    var inbound: UnsafeMutablePointer<Inbound> { slots.inbound }

    /// Attaches a session in a new slot, or in the slot of a session that is gone. False when
    /// every slot is taken by an active session (the engine refuses clients before that).
    mutating func attach(session: UInt32, commands: RingConsumer, reports: RingProducer) -> Bool {
        let index = slots.index, inbound = slots.inbound
        // An id handed out again: whatever slot still has it never reads again.
        let previous = Int(index[Int(session)])
        if previous >= 0 { inbound[previous].active = false }
        var slot = count
        if count == capacity {
            guard let free = (0..<count).first(where: { !inbound[$0].active }) else { return false }
            slot = free
            // Only if the old session's id still points here (the id may have moved on).
            let old = Int(inbound[slot].session)
            if index[old] == Int32(slot) { index[old] = -1 }
            inbound[slot] = Inbound(commands: commands, reports: reports, session: session, active: true)
        } else {
            (inbound + count).initialize(to: Inbound(commands: commands, reports: reports, session: session, active: true))
            count += 1
        }
        index[Int(session)] = Int32(slot)
        return true
    }

    func detach(session: UInt32) {
        let i = Int(slots.index[Int(session)])
        if i >= 0 { slots.inbound[i].active = false }
    }

    /// The highest session id attached since start.
    var highestSession: UInt32 {
        var highest: UInt32 = 0
        for i in 0..<count { highest = max(highest, slots.inbound[i].session) }
        return highest
    }
}
