// Ingress positions: how far a shard has applied each source partition (a Kafka topic's
// partition), the ground of exactly-once ingress.
//
// A session bound to a source (a plugin's producer opened with `producer_open_source`) sends
// each command with its offset in the record's client sequence field. The binding is a
// sequenced admin command (`bindSource`, journaled before any command of the session), so a
// replay binds the same session at the same point; the offset travels inside the journaled
// command record itself, so a command and its position are durable together or not at all.
// The shard keeps, per source, the next offset it expects; a command at an offset below it is
// a replay of the source and is rejected (`duplicate_ingress`), journaled like any command,
// so that the replay of the journal rejects it too. Positions survive in snapshots (the admin
// trailer) with the bindings of the sessions attached at that point.

import OrderBook

/// A source partition's name in positions: "topic#partition".
func sourceKey(_ source: String, _ partition: UInt32) -> String { "\(source)#\(partition)" }

struct IngressPositions: ~Copyable {
    /// At most this many source partitions per shard.
    static let capacity = 4096
    private(set) var keys: [String] = []
    private var slots: [String: Int32] = [:]
    /// Per slot, the next offset the shard expects: the last applied + 1; 0 while none.
    let next: UnsafeMutablePointer<UInt64>
    /// Session id → the slot of its source, or -1 (not bound).
    let ofSession: UnsafeMutablePointer<Int32>
    /// Per slot, the session last bound to it (0: none). Its orders carry that session id: a
    /// restart gives the source's new producer the same id when it is free, so that a cancel
    /// read after the restart finds the order placed before it (Engine.openLocalSession).
    private(set) var lastSession: [UInt32] = []
    /// Per symbol that moved here and source slot (symbol id << 32 | slot): the offset below
    /// which its commands were applied by the shard it came from (admin `ingressFloor`).
    var floors: [UInt64: UInt64] = [:]

    init() {
        next = cacheAligned(UInt64.self, count: Self.capacity)
        next.initialize(repeating: 0, count: Self.capacity)
        ofSession = cacheAligned(Int32.self, count: 1 << 16)
        ofSession.initialize(repeating: -1, count: 1 << 16)
    }

    deinit {
        next.deallocate()
        ofSession.deallocate()
    }

    /// The slot of `key`, created if new; nil when the table is full.
    mutating func slot(_ key: String) -> Int32? {
        if let slot = slots[key] { return slot }
        guard keys.count < Self.capacity else { return nil }
        let slot = Int32(keys.count)
        keys.append(key)
        lastSession.append(0)
        slots[key] = slot
        next[Int(slot)] = 0
        return slot
    }

    /// The last applied offset of `key`, if any.
    func last(_ key: String) -> UInt64? {
        guard let slot = slots[key], next[Int(slot)] > 0 else { return nil }
        return next[Int(slot)] - 1
    }

    /// Every source partition with a position: key → last applied offset.
    var positions: [String: UInt64] {
        var out: [String: UInt64] = [:]
        for (i, key) in keys.enumerated() where next[i] > 0 { out[key] = next[i] - 1 }
        return out
    }

    /// Bound sessions: session id → key.
    var bindings: [(session: UInt32, key: String)] {
        var out: [(UInt32, String)] = []
        for session in 0..<(1 << 16) where ofSession[session] >= 0 { out.append((UInt32(session), keys[Int(ofSession[session])])) }
        return out
    }

    /// Binds `session` to `slot` (a bind record, live or replayed).
    mutating func bind(_ session: UInt32, to slot: Int32) {
        ofSession[Int(session)] = slot
        lastSession[Int(slot)] = session
    }

    /// Source key → the session last bound to it.
    var sourceSessions: [String: UInt32] {
        var out: [String: UInt32] = [:]
        for (i, key) in keys.enumerated() where lastSession[i] != 0 { out[key] = lastSession[i] }
        return out
    }

    /// Restores a slot's last session (a snapshot).
    mutating func setLastSession(_ session: UInt32, slot: Int32) { lastSession[Int(slot)] = session }

    /// The sessions of an earlier run are gone: none is bound any more (positions stay).
    func clearBindings() { ofSession.update(repeating: -1, count: 1 << 16) }

    mutating func reset() {
        keys = []
        lastSession = []
        slots = [:]
        next.update(repeating: 0, count: Self.capacity)
        floors = [:]
        clearBindings()
    }

    /// The hot-path check of one command from a bound session: nil when it is new (the position
    /// moves to it), or why it is rejected.
    @inline(__always)
    func admit(_ record: UnsafeRawPointer, source: Int32) -> RejectReason? {
        let offset = UInt64(littleEndian: record.loadUnaligned(fromByteOffset: 48, as: UInt64.self))
        // A Kafka offset is a non-negative 64-bit integer.
        guard offset <= UInt64(Int64.max) else { return .malformedCommand }
        let slot = Int(source)
        guard offset >= next[slot] else { return .duplicateIngress }
        // A symbol that moved here: below the position its old shard had, a replay.
        if !floors.isEmpty {
            let symbol = UInt64(UInt32(littleEndian: record.loadUnaligned(fromByteOffset: 8, as: UInt32.self)))
            if let floor = floors[symbol << 32 | UInt64(UInt32(bitPattern: source))], offset < floor { return .duplicateIngress }
        }
        next[slot] = offset &+ 1
        return nil
    }
}

/// What an ingress session says it reads: a source (topic) and a partition.
public struct IngressSource: Sendable, Equatable, Hashable {
    public let name: String
    public let partition: UInt32
    public init(name: String, partition: UInt32) {
        self.name = name
        self.partition = partition
    }
    var key: String { sourceKey(name, partition) }
}
