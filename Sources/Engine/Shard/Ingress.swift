// Ingress positions: how far a shard has applied each source partition (a Kafka topic's
// partition), the ground of exactly-once ingress.
//
// A session bound to a source (a plugin's producer opened with `producer_open_source`) sends
// each command with its offset in the record's client sequence field. The binding is a
// sequenced admin command (`bindSource`, journaled before any command of the session), so a
// replay binds the same session at the same point; the offset travels inside the journaled
// command record itself, so a command and its position are durable together or not at all.
// The shard keeps, per source, the next offset it expects; a command at an offset below it is
// a replay of the source. Live, a replay is dropped before it is sequenced (not journaled, no
// report: its outcome was given the first time; IngressCounters.replays); in a journal written
// before that, it is a reject (`duplicate_ingress`) and replays as one. Positions survive in
// snapshots (the admin trailer) with the bindings of the sessions attached at that point.
//
// A symbol that arrived (from another shard, or from another engine) has its own position per
// source, its *floor*: the next offset of that symbol the shard takes. Exact, both ways: a
// symbol from another engine arrives behind the shard's own position (the partition is read
// again from its floor, `IngressRewinds`), one from a shard that had read further arrives
// ahead of it. A floor moves with each command of its symbol and goes once the symbol has
// caught up with the shard (its command is the newest of that source here), or, for the other
// sources, once a command of the symbol comes from one source (a symbol's orders come from one
// partition). A shard's resume point in a source (what the ingress plugin reads from after a
// restart) is the lowest of its position and its floors there.
//
// A floor of a quiet symbol would stay, and every restart would read its partition again from
// it: a floor also goes once the partition has been read again past everything its symbol could
// still have waiting (its *mark*: the plugin's read position when it took the symbol's rewind, or
// the shard's position at a restart) — once a command of that source above the mark is applied,
// every message up to it was submitted, in order, before, and the shard's position is the
// symbol's. Marks are not journaled: a floor kept is never wrong (it is the symbol's exact
// position), only slower to restart from, and a journaled command is accepted by either rule.

import OrderBook

/// A source partition's name in positions: "topic#partition".
func sourceKey(_ source: String, _ partition: UInt32) -> String { "\(source)#\(partition)" }

/// The source and partition of a key `sourceKey` made (nil: not one).
func splitSourceKey(_ key: String) -> (source: String, partition: UInt32)? {
    guard let hash = key.lastIndex(of: "#"), let partition = UInt32(key[key.index(after: hash)...]) else { return nil }
    return (String(key[..<hash]), partition)
}

struct IngressPositions: ~Copyable {
    /// At most this many source partitions per shard.
    static let capacity = 4096
    private(set) var keys: [String] = []
    private var slots: [String: Int32] = [:]
    /// Per slot, the next offset the shard expects: the last applied + 1; 0 while none.
    let next: UnsafeMutablePointer<UInt64>
    /// Session id → the slot of its source, or -1 (not bound).
    let ofSession: UnsafeMutablePointer<Int32>
    /// Per slot: a plugin's source (a Kafka partition), whose replays and other engines'
    /// commands are dropped unsequenced; not a client's stream ("client:..."), whose resent
    /// commands are answered (rejected, duplicate_ingress: the client waits for an answer).
    let plugin: UnsafeMutablePointer<Bool>
    /// Per slot, the session last bound to it (0: none). Its orders carry that session id: a
    /// restart gives the source's new producer the same id when it is free, so that a cancel
    /// read after the restart finds the order placed before it (Engine.openLocalSession).
    private(set) var lastSession: [UInt32] = []
    /// Per symbol that moved here and source slot (symbol id << 32 | slot): the next offset of
    /// that symbol the shard takes (admin `ingressFloor`, then each of its commands).
    private(set) var floors: [UInt64: UInt64] = [:]
    /// The symbols with floors: the first command of one source drops their floors on the others.
    private var floored: Set<UInt32> = []
    /// Per floor (same key): it goes once a command of its source above this offset is applied
    /// (and the floor is not ahead of the shard's position then). Not journaled.
    private var marks: [UInt64: UInt64] = [:]
    /// Per slot, the lowest mark of its floors (UInt64.max: none): the one compare per command.
    let lowestMark: UnsafeMutablePointer<UInt64>
    /// Per book (the shard's symbol slot): the source slot of its symbol's last command taken
    /// (-1: none) and that command's offset + 1: the symbol's exact position where it has no
    /// floor (a symbol's orders come from one partition). What a move between shards hands the
    /// target, rather than the shard's position, which its other symbols move on past commands
    /// of this one that went to the target meanwhile (`exactPositions`).
    private(set) var symbolSlot: UnsafeMutablePointer<Int32>?
    private(set) var symbolNext: UnsafeMutablePointer<UInt64>?
    private var bookIndex: UnsafeMutablePointer<Int32>?
    private var maxSymbolId = -1
    private var room = 0
    /// The per-symbol positions cover the shard's whole history: false after a snapshot written
    /// before them (a symbol with none may then have had commands: the shard's position stands
    /// in for its own).
    var symbolsComplete = true

    init() {
        next = cacheAligned(UInt64.self, count: Self.capacity)
        next.initialize(repeating: 0, count: Self.capacity)
        ofSession = cacheAligned(Int32.self, count: 1 << 16)
        ofSession.initialize(repeating: -1, count: 1 << 16)
        plugin = cacheAligned(Bool.self, count: Self.capacity)
        plugin.initialize(repeating: false, count: Self.capacity)
        lowestMark = cacheAligned(UInt64.self, count: Self.capacity)
        lowestMark.initialize(repeating: UInt64.max, count: Self.capacity)
    }

    /// The shard's symbol slots (ShardState.bookIndex, read only here), for the per-symbol positions.
    mutating func attach(bookIndex: UnsafeMutablePointer<Int32>, maxSymbolId: Int, room: Int) {
        self.bookIndex = bookIndex
        self.maxSymbolId = maxSymbolId
        self.room = room
        let slots = cacheAligned(Int32.self, count: room)
        slots.initialize(repeating: -1, count: room)
        let nexts = cacheAligned(UInt64.self, count: room)
        nexts.initialize(repeating: 0, count: room)
        symbolSlot = slots
        symbolNext = nexts
    }

    @inline(__always)
    private func book(_ symbol: UInt32) -> Int {
        guard let bookIndex, Int(symbol) <= maxSymbolId else { return -1 }
        return Int(bookIndex[Int(symbol)])
    }

    /// A command of `symbol` from `slot` at `offset` was taken: its own position.
    @inline(__always)
    private func noteTaken(_ symbol: UInt32, _ slot: Int, _ offset: UInt64) {
        let b = book(symbol)
        guard b >= 0, let symbolSlot, let symbolNext else { return }
        symbolSlot[b] = Int32(slot)
        symbolNext[b] = offset &+ 1
    }

    /// `symbol`'s own next offset in `slot`, where known: its floor, or after its last command
    /// from there. nil: it took nothing from there (or, `symbolsComplete` false, maybe before a
    /// snapshot).
    func ownNext(_ symbol: UInt32, slot: Int) -> UInt64? {
        if let floor = floors[UInt64(symbol) << 32 | UInt64(slot)] { return floor }
        let b = book(symbol)
        guard b >= 0, let symbolSlot, let symbolNext, symbolSlot[b] == Int32(slot) else { return nil }
        return symbolNext[b]
    }

    /// A symbol's positions as exactly as the shard knows them, per source: its floor − 1, or
    /// its last command's offset there; none where it took nothing from that source (UInt64.max
    /// for a floor of 0). Only where the shard may not know (`symbolsComplete` false), the
    /// shard's position stands in (it is above every command of the symbol it took).
    func exactPositions(of symbol: UInt32) -> [String: UInt64] {
        var out: [String: UInt64] = [:]
        for (i, key) in keys.enumerated() {
            if let own = ownNext(symbol, slot: i) {
                out[key] = own &- 1
            } else if !symbolsComplete, next[i] > 0 {
                out[key] = next[i] - 1
            }
        }
        return out
    }

    /// Every symbol's own position (book slot → source slot, next offset), for a snapshot.
    var symbolPositions: [(book: Int, slot: Int32, next: UInt64)] {
        guard let symbolSlot, let symbolNext else { return [] }
        return (0..<room).compactMap { symbolSlot[$0] >= 0 ? ($0, symbolSlot[$0], symbolNext[$0]) : nil }
    }

    /// Restores one symbol's own position (a snapshot).
    mutating func setSymbolPosition(book b: Int, slot: Int32, next: UInt64) {
        guard b >= 0, b < room, let symbolSlot, let symbolNext else { return }
        symbolSlot[b] = slot
        symbolNext[b] = next
    }

    /// The symbol left the shard: its own position goes with its floors.
    private mutating func forgetSymbol(_ symbol: UInt32) {
        let b = book(symbol)
        guard b >= 0, let symbolSlot, let symbolNext else { return }
        symbolSlot[b] = -1
        symbolNext[b] = 0
    }

    deinit {
        symbolSlot?.deallocate()
        symbolNext?.deallocate()
        next.deallocate()
        ofSession.deallocate()
        plugin.deallocate()
        lowestMark.deallocate()
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
        plugin[Int(slot)] = !key.hasPrefix("client:")
        return slot
    }

    /// The slot of `key` if the shard knows it.
    func knownSlot(_ key: String) -> Int32? { slots[key] }

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

    /// Where a restart reads each source from, minus one: the lowest of the position and the
    /// floors there (a symbol behind the shard). A floor of 0 (nothing applied): no entry.
    var resumePositions: [String: UInt64] {
        var lowest = Array(UnsafeBufferPointer(start: next, count: keys.count))
        for (key, floor) in floors {
            let slot = Int(UInt32(truncatingIfNeeded: key))
            if slot < lowest.count { lowest[slot] = min(lowest[slot], floor) }
        }
        var out: [String: UInt64] = [:]
        for (i, key) in keys.enumerated() where lowest[i] > 0 { out[key] = lowest[i] - 1 }
        return out
    }

    /// A symbol's own positions: per source, the last offset of it the shard applied (its floor
    /// - 1 where it has one, else the shard's position). Where it goes next, these are its floors.
    /// `unread`: also the sources with none applied, as UInt64.max (a floor of 0).
    func positions(of symbol: UInt32, unread: Bool) -> [String: UInt64] {
        var out: [String: UInt64] = [:]
        for (i, key) in keys.enumerated() {
            let n = floors[UInt64(symbol) << 32 | UInt64(i)] ?? next[i]
            if n > 0 { out[key] = n - 1 } else if unread { out[key] = UInt64.max }
        }
        return out
    }

    /// `symbol`'s floor in `slot`, if it has one.
    func floor(of symbol: UInt32, slot: Int) -> UInt64? { floors[UInt64(symbol) << 32 | UInt64(slot)] }

    /// The symbols with a floor somewhere.
    var flooredSymbols: Set<UInt32> { Set(floors.keys.map { UInt32(truncatingIfNeeded: $0 >> 32) }) }

    /// The floors of `symbol` (source key → last applied offset; UInt64.max: none, a floor of
    /// 0): where the partition is read again from when it arrives behind.
    func floors(of symbol: UInt32) -> [String: UInt64] {
        var out: [String: UInt64] = [:]
        for (key, floor) in floors where key >> 32 == UInt64(symbol) {
            out[keys[Int(UInt32(truncatingIfNeeded: key))]] = floor &- 1
        }
        return out
    }

    /// Sets a floor (admin `ingressFloor`, a snapshot): the higher of the two where there is one.
    mutating func setFloor(_ symbol: UInt32, slot: Int32, _ offset: UInt64) {
        let key = UInt64(symbol) << 32 | UInt64(UInt32(bitPattern: slot))
        floors[key] = max(floors[key] ?? 0, offset)
        floored.insert(symbol)
        if marks.removeValue(forKey: key) != nil { remark(Int(UInt32(bitPattern: slot))) }
    }

    /// The partition of `key`'s floor has been read again through `through` (IngressRewinds),
    /// or will be from a restart: the floor goes once a command above that is applied.
    mutating func mark(_ symbol: UInt32, slot: Int32, through: UInt64) {
        let key = UInt64(symbol) << 32 | UInt64(UInt32(bitPattern: slot))
        guard let floor = floors[key] else { return }
        marks[key] = max(through, floor)
        remark(Int(slot))
    }

    /// A restart: the plugin reads each source again from the lowest floor, in order, past the
    /// shard's position: every floor (but those of `keep`: symbols moving) goes once a command
    /// above that position is applied.
    mutating func markAll(keeping keep: Set<UInt32>) {
        for (key, floor) in floors where !keep.contains(UInt32(truncatingIfNeeded: key >> 32)) {
            let slot = Int(UInt32(truncatingIfNeeded: key))
            marks[key] = max(next[slot] &- 1, floor)
        }
        for slot in 0..<keys.count { remark(slot) }
    }

    private func remark(_ slot: Int) {
        var lowest = UInt64.max
        for (key, mark) in marks where Int(UInt32(truncatingIfNeeded: key)) == slot { lowest = min(lowest, mark) }
        lowestMark[slot] = lowest
    }

    /// A command of `slot` at `offset` was applied, above the slot's lowest mark: the floors
    /// whose marks it passed go, unless ahead of the shard's position (then at their floor).
    @inline(never)
    private mutating func passMarks(_ slot: Int, _ offset: UInt64) {
        for (key, mark) in marks where Int(UInt32(truncatingIfNeeded: key)) == slot && offset > mark {
            guard let floor = floors[key] else {
                marks[key] = nil
                continue
            }
            if floor > next[slot] {
                marks[key] = floor
                continue
            }
            floors[key] = nil
            marks[key] = nil
            let symbol = key >> 32
            // Nothing of it was waiting below the mark: its own position stays its floor.
            let b = book(UInt32(truncatingIfNeeded: symbol))
            if b >= 0, let symbolSlot, let symbolNext, symbolSlot[b] < 0 || symbolSlot[b] == Int32(slot) {
                symbolNext[b] = symbolSlot[b] == Int32(slot) ? max(symbolNext[b], floor) : floor
                symbolSlot[b] = Int32(slot)
            }
            if !floors.keys.contains(where: { $0 >> 32 == symbol }) { floored.remove(UInt32(truncatingIfNeeded: symbol)) }
        }
        remark(slot)
    }

    /// The symbol left the shard: its floors and its own position go.
    mutating func dropFloors(_ symbol: UInt32) {
        forgetSymbol(symbol)
        guard !floors.isEmpty else { return }
        floors = floors.filter { $0.key >> 32 != UInt64(symbol) }
        floored.remove(symbol)
        if !marks.isEmpty {
            marks = marks.filter { $0.key >> 32 != UInt64(symbol) }
            for slot in 0..<keys.count { remark(slot) }
        }
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
        floored = []
        marks = [:]
        lowestMark.update(repeating: UInt64.max, count: Self.capacity)
        symbolSlot?.update(repeating: -1, count: room)
        symbolNext?.update(repeating: 0, count: room)
        symbolsComplete = true
        clearBindings()
    }

    /// Live, before a command is sequenced: true when it is a replay of its source (applied
    /// already: dropped, not journaled). A malformed offset is not (it is rejected as such).
    @inline(__always)
    func isReplay(_ record: UnsafeRawPointer, source: Int32) -> Bool {
        let offset = UInt64(littleEndian: record.loadUnaligned(fromByteOffset: 48, as: UInt64.self))
        guard offset <= UInt64(Int64.max) else { return false }
        if !floors.isEmpty {
            let symbol = UInt64(UInt32(littleEndian: record.loadUnaligned(fromByteOffset: 8, as: UInt32.self)))
            if let floor = floors[symbol << 32 | UInt64(UInt32(bitPattern: source))] { return offset < floor }
        }
        return offset < next[Int(source)]
    }

    /// The check of one command from a bound session, live or replayed: nil when it is new (the
    /// positions move to it), or why it is rejected.
    @inline(__always)
    mutating func admit(_ record: UnsafeRawPointer, source: Int32) -> RejectReason? {
        let offset = UInt64(littleEndian: record.loadUnaligned(fromByteOffset: 48, as: UInt64.self))
        // A Kafka offset is a non-negative 64-bit integer.
        guard offset <= UInt64(Int64.max) else { return .malformedCommand }
        let slot = Int(source)
        if !floors.isEmpty {
            let symbol = UInt32(littleEndian: record.loadUnaligned(fromByteOffset: 8, as: UInt32.self))
            let key = UInt64(symbol) << 32 | UInt64(UInt32(bitPattern: source))
            if floored.contains(symbol) {
                let floor = floors[key]
                if let floor, offset < floor { return .duplicateIngress }
                // Its orders come from this source: its floors on the others go.
                floors = floors.filter { $0.key >> 32 != UInt64(symbol) || $0.key == key }
                if floor != nil {
                    // A symbol that arrived: its own position decides, behind or ahead of the shard's.
                    if offset >= next[slot] {
                        floors[key] = nil  // caught up: the shard's position is its own from here
                        next[slot] = offset &+ 1
                        floored.remove(symbol)
                        if marks.removeValue(forKey: key) != nil { remark(slot) }
                    } else {
                        floors[key] = offset &+ 1
                    }
                    noteTaken(symbol, slot, offset)
                    if offset > lowestMark[slot] { passMarks(slot, offset) }
                    return nil
                }
                floored.remove(symbol)
            }
        }
        guard offset >= next[slot] else { return .duplicateIngress }
        next[slot] = offset &+ 1
        noteTaken(UInt32(littleEndian: record.loadUnaligned(fromByteOffset: 8, as: UInt32.self)), slot, offset)
        if offset > lowestMark[slot] { passMarks(slot, offset) }
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
