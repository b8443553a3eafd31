// Sequenced admin commands in a shard (the record: Sources/Wire/AdminRecord.swift). The
// control thread hands one over through the mailbox; the shard gives it the next sequence,
// journals it (record type 2: the engine time, then the admin record) and applies it with
// `processAdmin`, the code recovery replays it with. An admin command that does not apply
// (an epoch that does not rise, a thaw of a symbol that is not frozen) is journaled all the
// same and refused the same way on replay: the outcome is part of the state's history.

import CCRC32C
import OrderBook
import SharedMemory
import Wire

/// What an admin command did.
public enum AdminOutcome: Equatable, Sendable {
    case applied(sequence: UInt64)
    /// Journaled under `sequence` (nil: not journaled, the journal refused it) and not applied.
    case refused(sequence: UInt64?, String)
}

/// One admin command on its way through a shard, and its outcome.
final class AdminRequest: @unchecked Sendable {
    let command: AdminCommand
    /// An `ingressFloor` raised by the shard to the symbol's own position there if that is
    /// higher (or, where the shard may not know it, to its position): a floor from another
    /// shard's hold that must not let in what this shard took already.
    var clampFloor = false
    private let lock = Lock()
    private var result: AdminOutcome?
    let done = Semaphore()
    init(_ command: AdminCommand, clampFloor: Bool = false) {
        self.command = command
        self.clampFloor = clampFloor
    }
    func finish(_ outcome: AdminOutcome) {
        lock.locked { result = outcome }
        done.signal()
    }
    var outcome: AdminOutcome? { lock.locked { result } }
}

/// What a shard's admin commands have set, as the control thread sees it.
/// A symbol moving between engines, as a shard's journal says: the route epoch it moves at, the
/// other engine, and which way.
public struct ShardTransfer: Equatable, Sendable {
    public var epoch: UInt64
    public var instance: String
    public var outbound: Bool
}

public struct ShardAdminState: Equatable, Sendable {
    public var epoch: UInt64
    /// The last journaled position of each ingress source and partition ("topic#partition").
    public var positions: [String: UInt64]
    /// Symbol ids frozen, and symbol ids of the instance this shard does not own.
    public var frozen: Set<UInt32>
    public var notOwned: Set<UInt32>
    /// Of the frozen ones: exported (moving away), and imported (moving in, not thawed yet).
    public var exported: Set<UInt32> = []
    public var imported: Set<UInt32> = []
    /// Of those, the ones moving to or from another engine (a transfer: the route decides).
    public var transfers: [UInt32: ShardTransfer] = [:]
    /// Per ingress source ("topic#partition", "client:STREAM#0"), the session last bound to it;
    /// and how many sources the shard knows (at most `IngressPositions.capacity`).
    public var sourceSessions: [String: UInt32] = [:]
    public var sourceCount = 0
    /// The symbols the shard knows: the config's and the listings it has applied.
    public var symbolCount = 0
    /// Where a restart reads each source from, minus one (IngressPositions.resumePositions).
    public var resume: [String: UInt64] = [:]
    /// The floors of the symbols of `transfers` (source → last applied offset of the symbol):
    /// where the partition is read again from once the move is settled here (IngressRewinds).
    public var transferFloors: [UInt32: [String: UInt64]] = [:]
    /// The floors of symbols this shard does not own (as `transferFloors`): a move that ended
    /// here before its import (a crash, or an abandoned move) after the shard held commands of
    /// the symbol, unjournaled, from those offsets on.
    public var strayFloors: [UInt32: [String: UInt64]] = [:]

    public init(epoch: UInt64, positions: [String: UInt64], frozen: Set<UInt32>, notOwned: Set<UInt32>,
                exported: Set<UInt32> = [], imported: Set<UInt32> = []) {
        self.epoch = epoch
        self.positions = positions
        self.frozen = frozen
        self.notOwned = notOwned
        self.exported = exported
        self.imported = imported
    }

    /// The symbols this shard owns (frozen or not), of `all`.
    public func owned(of all: [UInt32]) -> Set<UInt32> { Set(all).subtracting(notOwned) }
}

/// Per book, in one byte the shard checks per command: 0 takes commands.
enum BookFlag {
    static let frozen: UInt8 = 1
    static let notOwned: UInt8 = 2
    /// Exported since it was frozen: it may be dropped.
    static let exported: UInt8 = 4
    /// Imported and not thawed yet: the shard it came from may still have to drop it.
    static let imported: UInt8 = 8
    /// The slot holds no book (always with notOwned; notOwned without it: an empty book made for
    /// a symbol on its way in, Migration.swift).
    static let absent: UInt8 = 16
}

/// The journal record type of an admin command.
let adminRecordType: UInt16 = 2

extension ShardState {
    /// Runs an admin command from the control thread: sequence, journal, apply.
    mutating func runAdmin(_ request: AdminRequest) {
        var command = request.command
        // An export carries the book as it is now: the shard fills it in.
        if case .exportBook(let id, _) = command, let b = book(of: id), hasBook(b) {
            command = .exportBook(symbolId: id, book: books[b].snapshot())
        }
        if request.clampFloor, case .ingressFloor(let id, let source, let partition, let offset) = command {
            // Nothing to do where the symbol takes that offset already (or the shard never read
            // the source): `.applied(0)`, nothing journaled.
            guard let slot = ingress.knownSlot(sourceKey(source, partition)),
                  offset < ingress.floor(of: id, slot: Int(slot)) ?? ingress.next[Int(slot)] else {
                return request.finish(.applied(sequence: 0))
            }
            let own = ingress.ownNext(id, slot: Int(slot)) ?? (ingress.symbolsComplete ? 0 : ingress.next[Int(slot)])
            command = .ingressFloor(symbolId: id, source: source, partition: partition, offset: max(offset, own))
        }
        request.finish(runAdmin(command))
    }

    /// Sequences, journals and applies an admin command of the shard's own or the control thread's.
    mutating func runAdmin(_ command: AdminCommand) -> AdminOutcome {
        sequencer.beginBatch()
        let context = sequencer.next(session: 0)
        let (record, book) = AdminRecord.encodeSplit(command)
        guard journalAdmin(record, then: book ?? [], context) else {
            return .refused(sequence: nil, "the journal refuses writes now (see the engine's log)")
        }
        let refusal = processAdmin(command, context)
        return refusal.map { .refused(sequence: context.sequence, $0) } ?? .applied(sequence: context.sequence)
    }

    /// A session attaches (`source`: bound to that ingress partition) or goes (nil): the binding
    /// is journaled before any command of the session, and a stale binding of a reused session
    /// id is undone first. False when the journal refuses: the session must not be served, or
    /// its commands would be applied without their positions.
    mutating func bindSession(_ session: UInt32, to source: IngressSource?) -> Bool {
        let current = ingress.ofSession[Int(session)]
        if let source, current >= 0, ingress.keys[Int(current)] == source.key { return true }
        if current >= 0, case .refused(nil, _) = runAdmin(.unbindSource(session: session)) { return false }
        guard let source else { return true }
        // Refused: the journal would not take it, or the shard has too many sources.
        if case .refused = runAdmin(.bindSource(session: session, source: source.name, partition: source.partition)) { return false }
        return true
    }

    /// A plugin's watermark (ShardMessage.ingressWatermark): journaled as the source's position
    /// (admin `ingressPosition`) when the session is bound to a plugin's source, every command it
    /// submitted here was taken (its ring is empty: the watermark was sent after them), and the
    /// offset is ahead of the shard's position. Otherwise nothing (the plugin sends another).
    mutating func watermark(session: UInt32, offset: UInt64) {
        guard session < 1 << 16, offset <= UInt64(Int64.max) else { return }
        let slot = ingress.ofSession[Int(session)]
        guard slot >= 0, ingress.plugin[Int(slot)], offset >= ingress.next[Int(slot)] else { return }
        let i = Int(sessions.slots.index[Int(session)])
        guard i >= 0, sessions.inbound[i].active, ((try? sessions.inbound[i].commands.poll()) ?? 1) == 0 else {
            counters.ingress.add(IngressCounters.watermarksDeferred)
            return
        }
        guard let (source, partition) = splitSourceKey(ingress.keys[Int(slot)]) else { return }
        if case .applied = runAdmin(.ingressPosition(source: source, partition: partition, offset: offset)) {
            counters.ingress.add(IngressCounters.watermarks)
        }
    }

    /// Journals an admin record under its context (live only). False when the journal refuses.
    /// The record is the engine time, `record`, then `more` (a book: copied once, into the batch).
    private mutating func journalAdmin(_ record: [UInt8], then more: [UInt8], _ context: CommandContext) -> Bool {
        guard feed.journal != nil else { return true }
        var payload = [UInt8]()
        payload.reserveCapacity(8 + record.count)
        withUnsafeBytes(of: context.engineTime.littleEndian) { payload.append(contentsOf: $0) }
        payload.append(contentsOf: record)
        return payload.withUnsafeBytes { raw in more.withUnsafeBytes { rest in
            while true {
                switch feed.append(type: adminRecordType, raw, then: rest, context) {
                case .appended: return true
                case .full:
                    let durable = feed.poll()
                    if output.pointee.hold { output.pointee.release(upTo: durable) }
                    if feed.failed { return false }
                case .refused: return false
                }
            }
        } }
    }

    /// Applies an admin command, live or replayed: nil, or why it does not apply.
    mutating func processAdmin(_ command: AdminCommand, _ context: CommandContext) -> String? {
        sequencer.commit(context)
        switch command {
        case .epoch(let epoch):
            guard epoch > self.epoch else { return "epoch \(epoch) is not above the shard's epoch \(self.epoch)" }
            self.epoch = epoch
        case .ingressPosition(let source, let partition, let offset):
            let key = sourceKey(source, partition)
            if let last = ingress.last(key), offset <= last { return "\(key) offset \(offset) is not after \(last)" }
            guard offset <= UInt64(Int64.max) else { return "\(key) offset \(offset) is not a Kafka offset" }
            guard let slot = ingress.slot(key) else { return "more than \(IngressPositions.capacity) ingress sources" }
            ingress.next[Int(slot)] = offset + 1
        case .bindSource(let session, let source, let partition):
            guard session < 1 << 16 else { return "session \(session) is not a session id" }
            guard let slot = ingress.slot(sourceKey(source, partition)) else {
                return "more than \(IngressPositions.capacity) ingress sources"
            }
            ingress.bind(session, to: slot)
        case .ingressFloor(let id, let source, let partition, let offset):
            guard book(of: id) != nil else { return "symbol \(id) is not a symbol of this instance" }
            guard offset <= UInt64(Int64.max) + 1 else { return "offset \(offset) is not a Kafka offset" }
            guard let slot = ingress.slot(sourceKey(source, partition)) else { return "more than \(IngressPositions.capacity) ingress sources" }
            ingress.setFloor(id, slot: slot, offset)
        case .unbindSource(let session):
            guard session < 1 << 16, ingress.ofSession[Int(session)] >= 0 else { return "session \(session) is not bound" }
            ingress.ofSession[Int(session)] = -1
        case .freeze(let id):
            guard let b = book(of: id) else { return "symbol \(id) has no book in this shard" }
            guard bookFlags[b] & BookFlag.notOwned == 0 else { return "symbol \(id) is not owned by this shard" }
            guard bookFlags[b] & BookFlag.frozen == 0 else { return "symbol \(id) is frozen already" }
            bookFlags[b] |= BookFlag.frozen
        case .thaw(let id):
            guard let b = book(of: id), bookFlags[b] & BookFlag.notOwned == 0, bookFlags[b] & BookFlag.frozen != 0 else {
                return "symbol \(id) is not a frozen symbol of this shard"
            }
            bookFlags[b] &= ~(BookFlag.frozen | BookFlag.exported | BookFlag.imported)
            transfers[id] = nil
        case .exportBook(let id, let bytes):
            // An export freezes the symbol (if an operator had not): one record, so that no crash
            // leaves a migration's freeze without its export.
            guard let b = book(of: id), bookFlags[b] & BookFlag.notOwned == 0 else {
                return "symbol \(id) is not owned by this shard"
            }
            guard bookFlags[b] & BookFlag.imported == 0 else { return "symbol \(id) was imported and not thawed yet" }
            // Live, the bytes were taken from this book a moment ago; on replay they must match it
            // (the same bytes, or, written in an older snapshot format, the same book).
            guard bytes == books[b].snapshot() || sameBook(b, bytes) else { return "symbol \(id): the exported book differs from this shard's" }
            bookFlags[b] |= BookFlag.frozen | BookFlag.exported
        case .transferOut(let id, let length, let crc, let epoch, let instance):
            if let why = markExported(id, length: length, crc: crc) { return why }
            transfers[id] = ShardTransfer(epoch: epoch, instance: instance, outbound: true)
        case .transferIn(let id, let epoch, let instance):
            guard let b = book(of: id) else { return "symbol \(id) is not a symbol of this instance" }
            guard bookFlags[b] & BookFlag.notOwned != 0 else { return "symbol \(id) is owned by this shard already" }
            transfers[id] = ShardTransfer(epoch: epoch, instance: instance, outbound: false)
            given.remove(id)
        case .exportSealed(let id, let length, let crc):
            if let why = markExported(id, length: length, crc: crc) { return why }
        case .importPart(let id, let total, let offset, let part):
            guard book(of: id) != nil else { return "symbol \(id) is not a symbol of this instance" }
            var buffer = importParts[id] ?? []
            // A part that does not continue the book (or starts a new one) starts over.
            if offset == 0 { buffer = [] }
            guard buffer.count == Int(offset) else {
                importParts[id] = nil
                return "symbol \(id): import part at \(offset), \(buffer.count) bytes came before it"
            }
            buffer.append(contentsOf: part)
            guard buffer.count == Int(total) else {
                importParts[id] = buffer
                return nil
            }
            importParts[id] = nil
            return processAdmin(.importBook(symbolId: id, book: buffer), context)
        case .importBook(let id, let bytes):
            guard let b = book(of: id) else { return "symbol \(id) is not a symbol of this instance" }
            guard bookFlags[b] & BookFlag.notOwned != 0 else { return "symbol \(id) is owned by this shard already" }
            if prebuiltImport == id && hasBook(b) {
                // Live: the control thread restored these bytes into this book a moment ago.
            } else {
                if let failure = makeBook(b) { return "symbol \(id): \(failure)" }
                do { try books[b].restore(from: bytes) } catch {
                    releaseBook(b)
                    return "symbol \(id): the imported book does not restore: \(error)"
                }
            }
            bookFlags[b] = BookFlag.frozen | BookFlag.imported
        case .drop(let id):
            // An exported book, or one imported from another engine that lost the route to the
            // source (the move was abandoned there).
            guard let b = book(of: id), bookFlags[b] & BookFlag.notOwned == 0,
                  bookFlags[b] & BookFlag.exported != 0 || (bookFlags[b] & BookFlag.imported != 0 && transfers[id]?.outbound == false) else {
                return "symbol \(id) is not an exported symbol of this shard: freeze and export it before dropping it"
            }
            releaseBook(b)
            if transfers[id]?.outbound == true { given.insert(id) }
            transfers[id] = nil
            ingress.dropFloors(id)
        case .listSymbol(let listing):
            if let why = adoptListing(listing) { return why }
            let b = Int(listing.slot)
            routes?.register(listing.id, slot: b)
            // The home shard owns it from here: an empty book.
            if Int(listing.home) == index {
                if let failure = makeBook(b) {
                    return "symbol \(listing.name): \(failure)"
                }
                routes?.set(listing.id, shard: index)
            }
        }
        return nil
    }

    /// An export by length and CRC32C (`exportSealed`, `transferOut`): the symbol frozen and
    /// exported, or why not.
    private mutating func markExported(_ id: UInt32, length: UInt32, crc: UInt32) -> String? {
        guard let b = book(of: id), bookFlags[b] & BookFlag.notOwned == 0 else {
            return "symbol \(id) is not owned by this shard"
        }
        guard bookFlags[b] & BookFlag.imported == 0 else { return "symbol \(id) was imported and not thawed yet" }
        // Replayed, the rebuilt book must be the one exported. Live, the bytes were taken from
        // this book on this thread a moment ago (Migration.swift): not taken twice.
        if output.pointee.replaying {
            let bytes = books[b].snapshot()
            guard bytes.count == Int(length), bookCRC(bytes) == crc else {
                return "symbol \(id): the exported book differs from this shard's"
            }
        }
        bookFlags[b] |= BookFlag.frozen | BookFlag.exported
        return nil
    }

    /// The shard's next slot becomes `listing`'s symbol (the instance's table adopts it, or has
    /// it already and it is the same), absent from this shard. Nil, or why not.
    mutating func adoptListing(_ listing: AdminCommand.Listing) -> String? {
        guard let directory else { return "this shard takes no listings" }
        let slot = Int(listing.slot)
        guard slot == symbols.count else {
            return slot < symbols.count ? "slot \(slot) is listed already (\(symbols[slot].spec.name))"
                : "listing of slot \(slot) before slot \(symbols.count)"
        }
        guard slot < room else { return "no room for symbol \(listing.name): [engine] max_symbols = \(room)" }
        guard Int(listing.id) <= maxSymbolId, bookIndex[Int(listing.id)] < 0 else {
            return "symbol id \(listing.id) is in use or outside this instance's ids"
        }
        if let why = directory.adopt(listing) { return why }
        symbols.append((spec: InstanceSymbols.spec(of: listing), capacity: listingCapacity))
        owned.append(false)
        bookIndex[Int(listing.id)] = Int32(slot)
        bookFlags[slot] = BookFlag.absent | BookFlag.notOwned
        incoming[slot] = 0
        if let countersOf { symbolWords[slot] = countersOf(slot).words }
        return nil
    }

    /// Book `b` holds what `bytes` (a snapshot of any format this build reads) describe.
    func sameBook(_ b: Int, _ bytes: [UInt8]) -> Bool {
        // On shared pools a book may hold more orders than [book] orders: sized by the snapshot.
        let restored = pools == nil ? try? OrderBook.restoring(spec: symbols[b].spec, capacity: symbols[b].capacity, from: bytes)
            : try? OrderBook.restoring(spec: symbols[b].spec, levels: symbols[b].capacity.levels, from: bytes)
        guard let other = restored else { return false }
        return other.digest == books[b].digest
    }

    func bookCRC(_ bytes: [UInt8]) -> UInt32 { bytes.withUnsafeBytes { cb_crc32c(0, $0.baseAddress, $0.count) } }

    func book(of symbolId: UInt32) -> Int? {
        let id = Int(symbolId)
        guard id <= maxSymbolId, bookIndex[id] >= 0 else { return nil }
        return Int(bookIndex[id])
    }

    var adminState: ShardAdminState {
        var state = ShardAdminState(epoch: epoch, positions: ingress.positions, frozen: [], notOwned: [])
        state.sourceSessions = ingress.sourceSessions
        state.sourceCount = ingress.keys.count
        state.symbolCount = symbols.count
        state.resume = ingress.resumePositions
        for (b, entry) in symbols.enumerated() {
            let id = entry.spec.id, flags = bookFlags[b]
            if flags & BookFlag.frozen != 0 { state.frozen.insert(id) }
            if flags & BookFlag.notOwned != 0 { state.notOwned.insert(id) }
            if flags & BookFlag.exported != 0 { state.exported.insert(id) }
            if flags & BookFlag.imported != 0 { state.imported.insert(id) }
            if let t = transfers[id], flags & BookFlag.notOwned == 0, flags & (t.outbound ? BookFlag.exported : BookFlag.imported) != 0 {
                state.transfers[id] = t
                state.transferFloors[id] = ingress.floors(of: id)
            }
        }
        for id in ingress.flooredSymbols where state.notOwned.contains(id) { state.strayFloors[id] = ingress.floors(of: id) }
        return state
    }

    // MARK: - In snapshots

    static let adminTrailerTag: UInt32 = 0x3144_4D41  // "AMD1" little-endian: admin state, version 1
    static let adminTrailerTag2: UInt32 = 0x3244_4D41  // "AMD2": version 2, with the ingress bindings
    static let adminTrailerTag3: UInt32 = 0x3344_4D41  // "AMD3": version 3, flags per symbol of the instance
    static let adminTrailerTag4: UInt32 = 0x3444_4D41  // "AMD4": version 3 after the symbols listed at run time
    static let transferTag: UInt32 = 0x3152_4658  // "XFR1": moves between engines under way, after the floors
    static let symbolPositionsTag: UInt32 = 0x314D_5953  // "SYM1": each symbol's own ingress position, last

    /// The admin state after the books in a snapshot body: tag, epoch (u64), the flags (version 3:
    /// a count (u32), per symbol of the instance its id (u32) and flags (u8); before: per book of
    /// the shard's first-start symbols, in order, its flags (u8)), then
    /// - version 1: the position count (u32), per position its key length (u16), key, offset (u64);
    /// - version 2: the source count (u32), per source its key length (u16), key, next offset
    ///   (u64: the last applied + 1, 0 none), last bound session (u32); the binding count (u32),
    ///   per binding its session (u32) and source index (u32).
    func adminTrailer() -> [UInt8] {
        var out: [UInt8] = []
        func put<T: FixedWidthInteger>(_ value: T) { withUnsafeBytes(of: value.littleEndian) { out.append(contentsOf: $0) } }
        func put(_ key: String) {
            let bytes = Array(key.utf8)
            put(UInt16(bytes.count))
            out.append(contentsOf: bytes)
        }
        // Version 4 (only with listings): the listing count (u32), per listing its admin record's
        // length (u32) and the record (AdminCommand.listSymbol); then version 3 from its epoch.
        if symbols.count > configuredCount {
            put(Self.adminTrailerTag4)
            put(UInt32(symbols.count - configuredCount))
            for b in configuredCount..<symbols.count {
                let record = AdminRecord.encode(.listSymbol(listing(b)))
                put(UInt32(record.count))
                out.append(contentsOf: record)
            }
        } else {
            put(Self.adminTrailerTag3)
        }
        put(epoch)
        put(UInt32(symbols.count))
        for (b, entry) in symbols.enumerated() {
            put(entry.spec.id)
            out.append(bookFlags[b])
        }
        let keys = ingress.keys, sessions = ingress.lastSession
        put(UInt32(keys.count))
        for (i, key) in keys.enumerated() {
            put(key)
            put(ingress.next[i])
            put(sessions[i])
        }
        var bindings: [(UInt32, UInt32)] = []
        for session in 0..<(1 << 16) where ingress.ofSession[session] >= 0 {
            bindings.append((UInt32(session), UInt32(ingress.ofSession[session])))
        }
        put(UInt32(bindings.count))
        for (session, slot) in bindings {
            put(session)
            put(slot)
        }
        // Version 3: the ingress floors (count u32; per floor symbol id u32, source index u32,
        // offset u64).
        let floors = ingress.floors.sorted { $0.key < $1.key }
        put(UInt32(floors.count))
        for (key, offset) in floors {
            put(UInt32(truncatingIfNeeded: key >> 32))
            put(UInt32(truncatingIfNeeded: key))
            put(offset)
        }
        // Only with a move between engines under way: tag "XFR1", the count (u32), per transfer
        // the symbol id (u32), route epoch (u64), outbound (u8), instance length (u16), instance.
        let pending = adminState.transfers.sorted { $0.key < $1.key }
        if !pending.isEmpty {
            put(Self.transferTag)
            put(UInt32(pending.count))
            for (id, t) in pending {
                put(id)
                put(t.epoch)
                out.append(t.outbound ? 1 : 0)
                put(t.instance)
            }
        }
        // Always (its absence says a snapshot before them: IngressPositions.symbolsComplete):
        // tag "SYM1", complete (u8: 1 when they cover the shard's whole history), the count
        // (u32), per symbol with an own position its id (u32), source index (u32), next offset (u64).
        let own = ingress.symbolPositions
        put(Self.symbolPositionsTag)
        out.append(ingress.symbolsComplete ? 1 : 0)
        put(UInt32(own.count))
        for (b, slot, next) in own {
            put(symbols[b].spec.id)
            put(UInt32(bitPattern: slot))
            put(next)
        }
        return out
    }

    /// Slot `b`'s listing, as the record that listed it.
    func listing(_ b: Int) -> AdminCommand.Listing {
        InstanceSymbols.listing(of: symbols[b].spec, slot: b, home: directory?.entry(b)?.home ?? index)
    }

    /// The listings of a version 4 admin state starting at `at` (after its tag) in `body`.
    static func listings(_ body: [UInt8], from start: Int) throws(EngineError) -> (listings: [AdminCommand.Listing], end: Int) {
        var at = start
        func u32() throws(EngineError) -> Int {
            guard at + 4 <= body.count else { throw EngineError("snapshot admin state truncated") }
            defer { at += 4 }
            return body.withUnsafeBytes { Int(UInt32(littleEndian: $0.loadUnaligned(fromByteOffset: at, as: UInt32.self))) }
        }
        let count = try u32()
        guard count <= InstanceLayout.maxSymbols else { throw EngineError("snapshot: \(count) listed symbols") }
        var out: [AdminCommand.Listing] = []
        for _ in 0..<count {
            let length = try u32()
            guard length <= body.count - at else { throw EngineError("snapshot admin state truncated") }
            let command: AdminCommand
            do {
                command = try body[at..<(at + length)].withUnsafeBytes { raw throws(AdminRecord.Malformed) in try AdminRecord.decode(raw) }
            } catch { throw EngineError("snapshot: a listed symbol: \(error)") }
            guard case .listSymbol(let listing) = command else { throw EngineError("snapshot: a record other than a listing among the listed symbols") }
            out.append(listing)
            at += length
        }
        return (out, at)
    }

    static func skipListings(_ body: [UInt8], from start: Int) throws(EngineError) -> Int {
        try listings(body, from: start).end
    }

    mutating func restoreAdminTrailer(_ bytes: ArraySlice<UInt8>) throws(EngineError) {
        let body = Array(bytes)
        var at = 0
        func get<T: FixedWidthInteger>(_: T.Type) throws(EngineError) -> T {
            guard at + MemoryLayout<T>.size <= body.count else { throw EngineError("snapshot admin state truncated") }
            let v = body.withUnsafeBytes { T(littleEndian: $0.loadUnaligned(fromByteOffset: at, as: T.self)) }
            at += MemoryLayout<T>.size
            return v
        }
        func key() throws(EngineError) -> String {
            let n = Int(try get(UInt16.self))
            guard at + n <= body.count else { throw EngineError("snapshot admin state truncated") }
            defer { at += n }
            return String(decoding: body[at..<(at + n)], as: UTF8.self)
        }
        var tag = try get(UInt32.self)
        if tag == Self.adminTrailerTag4 {
            // The listings were adopted before the books (restoreBooks): skipped here.
            at = try Self.skipListings(body, from: at)
            tag = Self.adminTrailerTag3
        }
        guard tag == Self.adminTrailerTag || tag == Self.adminTrailerTag2 || tag == Self.adminTrailerTag3 else {
            throw EngineError("snapshot: unknown data after the books")
        }
        epoch = try get(UInt64.self)
        var flags = [UInt8](repeating: BookFlag.absent | BookFlag.notOwned, count: symbols.count)
        if tag == Self.adminTrailerTag3 {
            let count = Int(try get(UInt32.self))
            guard count <= symbols.count else { throw EngineError("snapshot: flags of \(count) symbols, the instance has \(symbols.count)") }
            for _ in 0..<count {
                let id = try get(UInt32.self)
                guard let b = book(of: id) else { throw EngineError("snapshot: flags of symbol \(id), not one of this instance") }
                flags[b] = try get(UInt8.self)
            }
        } else {
            // Written when a shard had books only for its own symbols, in order.
            for b in symbols.indices where owned[b] { flags[b] = try get(UInt8.self) & ~BookFlag.absent }
        }
        // The books restored are the ones the snapshot had; the flags must agree with them. A
        // symbol not owned has no book (an old snapshot's dropped symbol kept an empty one).
        for b in symbols.indices {
            if flags[b] & BookFlag.notOwned != 0 {
                releaseBook(b)
            } else {
                guard flags[b] & BookFlag.absent == 0, hasBook(b) else {
                    throw EngineError("snapshot: symbol \(symbols[b].spec.name) is owned and has no book")
                }
                bookFlags[b] = flags[b]
            }
        }
        ingress.reset()
        func slot(_ key: String) throws(EngineError) -> Int {
            guard let slot = ingress.slot(key) else { throw EngineError("snapshot: more than \(IngressPositions.capacity) ingress sources") }
            return Int(slot)
        }
        if tag == Self.adminTrailerTag {
            for _ in 0..<(try get(UInt32.self)) {
                let name = try key()
                let offset = try get(UInt64.self)
                guard offset <= UInt64(Int64.max) else { throw EngineError("snapshot: ingress offset \(offset) of \(name)") }
                ingress.next[try slot(name)] = offset + 1
            }
        } else {
            for _ in 0..<(try get(UInt32.self)) {
                let name = try key()
                let next = try get(UInt64.self)
                let session = try get(UInt32.self)
                guard next <= UInt64(Int64.max) + 1, session < 1 << 16 else { throw EngineError("snapshot: ingress source \(name)") }
                let index = try slot(name)
                ingress.next[index] = next
                ingress.setLastSession(session, slot: Int32(index))
            }
            for _ in 0..<(try get(UInt32.self)) {
                let session = try get(UInt32.self)
                let index = try get(UInt32.self)
                guard session < 1 << 16, index < ingress.keys.count else { throw EngineError("snapshot: ingress binding of session \(session)") }
                ingress.bind(session, to: Int32(index))
            }
            if tag == Self.adminTrailerTag3 {
                for _ in 0..<(try get(UInt32.self)) {
                    let symbol = try get(UInt32.self), index = try get(UInt32.self), offset = try get(UInt64.self)
                    guard book(of: symbol) != nil, index < ingress.keys.count else { throw EngineError("snapshot: ingress floor of symbol \(symbol)") }
                    ingress.setFloor(symbol, slot: Int32(index), offset)
                }
            }
        }
        transfers = [:]
        ingress.symbolsComplete = false
        // Optional sections, each under its tag, in this order.
        var tagged = at + 4 <= body.count ? try get(UInt32.self) : nil
        if tagged == Self.transferTag {
            for _ in 0..<(try get(UInt32.self)) {
                let id = try get(UInt32.self), epoch = try get(UInt64.self), outbound = try get(UInt8.self)
                let instance = try key()
                guard let b = book(of: id), outbound <= 1, !instance.isEmpty,
                      bookFlags[b] & (outbound == 1 ? BookFlag.exported : BookFlag.imported) != 0 else {
                    throw EngineError("snapshot: a transfer of symbol \(id) that its flags do not show")
                }
                transfers[id] = ShardTransfer(epoch: epoch, instance: instance, outbound: outbound == 1)
            }
            tagged = at + 4 <= body.count ? try get(UInt32.self) : nil
        }
        if tagged == Self.symbolPositionsTag {
            let complete = try get(UInt8.self)
            guard complete <= 1 else { throw EngineError("snapshot: symbol positions flag \(complete)") }
            for _ in 0..<(try get(UInt32.self)) {
                let id = try get(UInt32.self), slot = try get(UInt32.self), next = try get(UInt64.self)
                guard let b = book(of: id), slot < ingress.keys.count, next <= UInt64(Int64.max) + 1 else {
                    throw EngineError("snapshot: an ingress position of symbol \(id)")
                }
                ingress.setSymbolPosition(book: b, slot: Int32(slot), next: next)
            }
            ingress.symbolsComplete = complete == 1
        } else if tagged != nil {
            at -= 4
        }
        guard at == body.count else { throw EngineError("snapshot: \(body.count - at) stray bytes after the admin state") }
    }
}
