// Moving a symbol to another engine while it trades (`crossbook migrate SYMBOL --to-instance
// NAME`, issue 11 item 4). The two engines share a router (redis-routing) and a snapshot store
// that keeps blobs (snapshot-redis). The route in Redis is the commit point: whichever engine
// wins the compare-and-set on its epoch owns the symbol.
//
//  1. Source, `transferOut`: the route becomes MIGRATING to the target (epoch E). The source holds
//     the symbol's commands, takes the book's bytes and journals `transferOut` (frozen, exported,
//     naming E and the target) at its sequence S; the commands it held are rejected
//     (`symbol_frozen`: the producer sends them to the owner once the route names it). Once S is
//     on disk, the book (with the symbol's rules and the source's ingress positions) goes to the
//     store as the blob `transfer:<SYMBOL>:<E>`.
//  2. Target, `transferIn`: lists the symbol if it does not know it (owned by no shard of its own:
//     home "away"), holds its commands, journals `transferIn` and the import; once that is on
//     disk it claims the route (MIGRATING at E → ACTIVE here, E + 1). Won: it thaws and trades.
//  3. Source, `transferFinish` (or its control thread within a second): the route names the
//     target: it journals the drop and deletes the blob.
//
// Either engine killed at any step: its journal says a transfer is under way (transferOut
// without a drop or thaw; transferIn without a thaw or drop), and its control thread settles it
// from the route once its router answers (`settleTransfers`): the route names the target → the
// source drops, the target thaws; the route still MIGRATING at E → the target claims it (it has
// the book on disk), the source claims it back after `transferTimeout` with no claim (and thaws);
// the route names the source again → the target drops its copy. Two claims from the same epoch
// cannot both win, so exactly one engine owns the symbol. Until settled, the symbol is frozen on
// both (commands rejected with a reason, nothing lost). Redis must keep what it acknowledged
// (`appendonly yes`, `appendfsync always`): a route that goes back in time can give the symbol to
// both.

import CCRC32C
import Foundation
import Glibc
import OrderBook
import SharedMemory
import Wire

/// The book, its rules and where the source's ingress was, as the store carries them between
/// engines. Little-endian: magic "CBX2", epoch (u64), frozen at (u64: CLOCK_REALTIME ns on the
/// source when it held the symbol's commands; 0 unknown), symbol id (u32), tick, lot, min price, max
/// price, max quantity (i64 each), name length (u16), name, source instance length (u16),
/// instance, position count (u32), per position its key length (u16), key, last offset (u64),
/// owner count (u32), per owner its session id (u32, rising) and source key (length u16, key),
/// book length (u32), book (the source's order ids), CRC32C of everything before (u32).
///
/// The owners are the source's sessions bound to ingress sources (Kafka partitions) and to
/// streams (a shared-memory client's named order flow, "client:UID:NAME"): an order one of them
/// placed belongs, on the target, to the target's session of the same partition or stream (its
/// client cancels it there by the same order id; a stream that never attached to the target gets
/// its session there before the import: `streamSessions`); any other order becomes foreign
/// (`foreignOrderId`). The target makes the ids (`arrivingBook`).
struct TransferBlob: Equatable {
    static let magic: UInt32 = 0x3258_4243  // "CBX2"
    static let firstMagic: UInt32 = 0x3158_4243  // "CBX1": ids made foreign by the source; no owners
    var spec: SymbolSpec
    var epoch: UInt64
    var source: String
    var positions: [String: UInt64]
    var owners: [UInt32: String] = [:]
    /// CLOCK_REALTIME nanoseconds on the source when the symbol stopped trading there (the pause
    /// the target reports runs from it: between two hosts, their clocks' difference is in it).
    var frozenWall: UInt64 = 0
    var book: [UInt8]

    static func key(symbol: String, epoch: UInt64) -> String { "transfer:\(symbol):\(epoch)" }

    func encode() -> [UInt8] {
        var out: [UInt8] = []
        func put<T: FixedWidthInteger>(_ v: T) { withUnsafeBytes(of: v.littleEndian) { out.append(contentsOf: $0) } }
        func put(_ s: String) {
            let b = Array(s.utf8)
            put(UInt16(b.count))
            out.append(contentsOf: b)
        }
        put(Self.magic)
        put(epoch)
        put(frozenWall)
        put(spec.id)
        for v in [spec.tickSize, spec.lotSize, spec.minPrice, spec.maxPrice, spec.maxOrderQuantity] { put(v) }
        put(spec.name)
        put(source)
        put(UInt32(positions.count))
        for (k, v) in positions.sorted(by: { $0.key < $1.key }) {
            put(k)
            put(v)
        }
        put(UInt32(owners.count))
        for (session, key) in owners.sorted(by: { $0.key < $1.key }) {
            put(session)
            put(key)
        }
        put(UInt32(book.count))
        out.append(contentsOf: book)
        put(out.withUnsafeBytes { cb_crc32c(0, $0.baseAddress, $0.count) })
        return out
    }

    /// Anything but a blob this build wrote is refused, with the reason.
    static func decode(_ bytes: [UInt8]) throws(EngineError) -> TransferBlob {
        guard bytes.count >= 8 else { throw EngineError("transfer blob of \(bytes.count) bytes") }
        let crc = bytes.withUnsafeBytes { UInt32(littleEndian: $0.loadUnaligned(fromByteOffset: bytes.count - 4, as: UInt32.self)) }
        guard crc == bytes.withUnsafeBytes({ cb_crc32c(0, $0.baseAddress, bytes.count - 4) }) else {
            throw EngineError("transfer blob damaged (CRC32C)")
        }
        var at = 0
        let end = bytes.count - 4
        func get<T: FixedWidthInteger>(_: T.Type) throws(EngineError) -> T {
            guard at + MemoryLayout<T>.size <= end else { throw EngineError("transfer blob truncated") }
            defer { at += MemoryLayout<T>.size }
            return bytes.withUnsafeBytes { T(littleEndian: $0.loadUnaligned(fromByteOffset: at, as: T.self)) }
        }
        func text() throws(EngineError) -> String {
            let n = Int(try get(UInt16.self))
            guard at + n <= end, let s = String(validating: bytes[at..<(at + n)], as: UTF8.self) else { throw EngineError("transfer blob: a bad name") }
            at += n
            return s
        }
        let tag = try get(UInt32.self)
        guard tag != firstMagic else { throw EngineError("a transfer blob of an earlier build (CBX1): finish the move with the build that began it") }
        guard tag == magic else { throw EngineError("not a transfer blob (magic)") }
        let epoch = try get(UInt64.self)
        let frozenWall = try get(UInt64.self)
        var spec = SymbolSpec(name: "", id: try get(UInt32.self))
        spec.tickSize = try get(Int64.self)
        spec.lotSize = try get(Int64.self)
        spec.minPrice = try get(Int64.self)
        spec.maxPrice = try get(Int64.self)
        spec.maxOrderQuantity = try get(Int64.self)
        spec.name = try text()
        guard SymbolSpec.isValidName(spec.name) else { throw EngineError("transfer blob: symbol name \(spec.name) is not valid") }
        let source = try text()
        var positions: [String: UInt64] = [:]
        let count = try get(UInt32.self)
        guard count <= 4096 else { throw EngineError("transfer blob: \(count) positions") }
        var previous: String?
        for _ in 0..<count {
            let k = try text()
            // As encode writes them: in order, each once.
            guard previous.map({ $0 < k }) ?? true else { throw EngineError("transfer blob: positions out of order") }
            previous = k
            positions[k] = try get(UInt64.self)
        }
        var owners: [UInt32: String] = [:]
        let owning = try get(UInt32.self)
        guard owning <= 4096 else { throw EngineError("transfer blob: \(owning) owners") }
        var last: UInt32 = 0
        for _ in 0..<owning {
            let session = try get(UInt32.self)
            guard session > last, session < 1 << 16 else { throw EngineError("transfer blob: owner session \(session) out of order or range") }
            last = session
            owners[session] = try text()
        }
        let length = Int(try get(UInt32.self))
        guard length == end - at else { throw EngineError("transfer blob: book of \(length) bytes, \(end - at) left") }
        return TransferBlob(spec: spec, epoch: epoch, source: source, positions: positions, owners: owners, frozenWall: frozenWall,
                            book: Array(bytes[at..<end]))
    }

    /// The book as the target takes it in: an order of an owner (a session of an ingress
    /// source) belongs to `sessions[its source]` (the target's session of that source), with its
    /// client's order id; every other becomes foreign. Throws when the book is not a whole book
    /// snapshot, or when two orders would have one id.
    func arrivingBook(sessions: [String: UInt32]) throws(BookSnapshotError) -> [UInt8] {
        // The source's owner session → this engine's session of the same source, once.
        var mapped: [UInt32: UInt32] = [:]
        for (session, key) in owners { if let mine = sessions[key], mine != 0 { mapped[session] = mine } }
        return try BookSnapshotLayout.rewritingOrderIds(book) { place, id in
            if !mapped.isEmpty, let mine = mapped[UInt32(owner(id))] {
                return engineOrderId(mine, id & maxClientOrderId)
            }
            return foreignOrderId(id, epoch: epoch, place: place)
        }
    }
}

/// What the source did: the route epoch the move is at, the book it sent.
public struct TransferOutReport: Sendable {
    public var symbol: String
    public var shard: Int
    public var epoch: UInt64
    public var orders: Int
    public var bookBytes: Int
    /// Monotonic nanoseconds (CLOCK_MONOTONIC: comparable between engines on one host) when
    /// the symbol stopped trading here.
    public var frozenAt: UInt64
    public var exportSequence: UInt64
    /// Where the time from the hold to the blob in the store went (nanoseconds): "snapshot" (the
    /// book's bytes), "export" (the shard journals it), "durable" (the wait for its fdatasync),
    /// "owners" (the shard's sessions), "encode" (the blob's bytes), "store" (the blob saved).
    public var phases: [String: UInt64] = [:]
}

/// What the target did: when it traded the symbol, how many commands had waited.
public struct TransferInReport: Sendable {
    public var symbol: String
    public var shard: Int
    public var epoch: UInt64
    public var held: Int
    public var listed: Bool
    /// Monotonic nanoseconds when the symbol trades here.
    public var tradingAt: UInt64
    public var importSequence: UInt64
    public var phases: [String: UInt64]
}

extension Engine {
    /// The moving book's streams (owners named "client:UID:NAME") that have no session on
    /// `shard` here: each gets one now, the id its next client of that stream will be given
    /// (`sourceSessionIds`), journaled on the shard as a binding and its end (`bindSource`,
    /// `unbindSource`) before the import, so that a restart keeps the id for the stream and for
    /// its resting orders. Adds them to `known`.
    func streamSessions(for blob: TransferBlob, shard: Int, known: inout [String: UInt32], timeout: Double) throws(EngineError) {
        let new = Set(blob.owners.values).filter { $0.hasPrefix(Self.streamPrefix) && known[$0] == nil }
        // Each takes a session id here: a blob (from the store: input like any other) cannot
        // spend them all.
        guard new.count <= Self.maxNewStreamsPerMove else {
            throw EngineError("the book names \(new.count) streams new to this engine (at most \(Self.maxNewStreamsPerMove) a move)")
        }
        for key in new.sorted() {
            guard let (name, partition) = splitSourceKey(key) else { throw EngineError("an owner named \(key) is not a stream's") }
            guard let id = idLock.locked({ () -> UInt32? in
                if let id = sourceSessionIds[key] { return id }
                guard let id = takeSessionId() else { return nil }
                sourceSessionIds[key] = id
                return id
            }) else {
                throw EngineError("no session id free for stream \(name.dropFirst(Self.streamPrefix.count)), whose orders move here")
            }
            for command in [AdminCommand.bindSource(session: id, source: name, partition: partition), .unbindSource(session: id)] {
                guard case .applied = admin(shard: shard, command, timeout: timeout) else {
                    throw EngineError("shard \(shard) did not journal session \(id) for stream \(name.dropFirst(Self.streamPrefix.count))")
                }
            }
            known[key] = id
            log("stream \(name.dropFirst(Self.streamPrefix.count)) (user:name): session \(id) here for its orders that move with \(blob.spec.name)")
        }
    }

    static let maxNewStreamsPerMove = 256

    /// How long a source waits for the target's claim before it claims the route back.
    var transferTimeoutNanoseconds: UInt64 { UInt64(max(settings.transferTimeout, 1) * 1e9) }

    private func transferPrerequisites() throws(EngineError) -> (PluginHost, PluginSnapshotStore) {
        guard routes != nil, symbolTable != nil else { throw EngineError("the engine is not running") }
        guard role != .standby else { throw EngineError("this engine is a standby") }
        guard !settings.readOnly, settings.durability != .none else { throw EngineError("moves between engines need a journal (durability sync or async)") }
        guard let host = pluginHost, host.routesTransfers else {
            throw EngineError("no router that moves symbols between engines: load the redis-routing plugin")
        }
        guard let store = host.snapshotStore, store.hasBlobs else {
            throw EngineError("no snapshot store that keeps blobs for another engine: load the snapshot-redis plugin")
        }
        return (host, store)
    }

    /// Step 1, on the source. Returns once the book is frozen here, on disk, and in the store.
    public func transferOut(symbol name: String, to instance: String, shard targetShard: Int = 0, timeout: Double = 5) throws(EngineError) -> TransferOutReport {
        let (host, store) = try transferPrerequisites()
        guard let routes, let spec = symbolTable?.spec(named: name) else { throw EngineError("no symbol \(name) in this instance") }
        guard instance != settings.instance else { throw EngineError("\(name): the target is this instance") }
        guard !instance.isEmpty, instance.utf8.count <= 64, instance.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || "-_.".contains($0)) }) else {
            throw EngineError("instance name '\(instance)': 1 to 64 letters, digits, '-', '_', '.'")
        }
        return try migrationSerial.locked { () throws(EngineError) -> TransferOutReport in
            guard let source = routes.shard(of: spec.id) else { throw EngineError("\(name) does not trade on this engine") }
            let epoch: UInt64
            switch host.transferBegin(symbol: name, shard: source, to: instance, toShard: targetShard) {
            case .success(let e): epoch = e
            case .failure(let why): throw EngineError("move of \(name) to \(instance) refused: \(why)")
            }
            log("move of \(name) to instance \(instance): route MIGRATING at epoch \(epoch); shard \(source) holds its commands")
            var positions: [String: UInt64] = [:]
            // Undo before anything left this engine: the route back (if it can be), the symbol trading.
            func abandon(_ why: String, thaw: Bool) -> EngineError {
                engineFile?.migrations(source).add(MigrationCounters.failed)
                migrationLock.locked { migrationHistory.failed += 1 }
                switch host.transferClaim(symbol: name, epoch: epoch, shard: source) {
                case .won:
                    if thaw, case .applied = admin(shard: source, .thaw(symbolId: spec.id), timeout: timeout) {
                        // Its ingress messages after the hold were left to the target: read again.
                        ingressRewinds.gain(spec.id, floors: positions, undone: true)
                    }
                    log("move of \(name) to \(instance) abandoned: \(why); it trades on shard \(source)")
                    return EngineError("move of \(name) to \(instance) abandoned: \(why)")
                case .lost(let other), .unreachable(let other):
                    noteTransfers()
                    log("move of \(name) to \(instance) failed: \(why); the route could not be taken back (\(other)): frozen until the route decides")
                    return EngineError("move of \(name) to \(instance) failed: \(why); frozen until the route decides (\(other))")
                }
            }
            let hold = MigrationStep(symbolId: spec.id)
            hold.transfer = ShardTransfer(epoch: epoch, instance: instance, outbound: true)
            guard let held = step(source, { .holdOutgoing($0) }, hold, timeout: timeout) else {
                throw abandon("shard \(source) did not answer", thaw: false)
            }
            let frozenWall = realtimeNanoseconds()
            if let refusal = held.refusal { throw abandon(refusal, thaw: false) }
            guard let book = held.bookAddress else { throw abandon("shard \(source) lent no book", thaw: false) }
            let bytes = book.pointer.pointee.snapshot()
            let snapshotted = monotonicNanoseconds()
            // The symbol's ingress positions at the hold: the target reads its partitions from them.
            positions = held.positions
            let seal = MigrationStep(symbolId: spec.id, book: bytes, positions: positions)
            seal.transfer = ShardTransfer(epoch: epoch, instance: instance, outbound: true)
            guard let out = step(source, { .sealExport($0) }, seal, timeout: timeout) else {
                noteTransfers()
                throw EngineError("move of \(name): shard \(source) did not answer the export; the route decides")
            }
            if let refusal = out.refusal { throw abandon(refusal, thaw: false) }
            // Its ingress messages are the target's from here (or this engine's again, read anew,
            // if the move is undone).
            ingressRewinds.leave(spec.id)
            let exported = monotonicNanoseconds()
            guard awaitDurable(source, out.sequence, timeout: timeout) else { throw abandon("the export was not durable within \(timeout) s", thaw: true) }
            let durable = monotonicNanoseconds()
            // Its orders' sessions are this engine's: on the target, an ingress source's or a
            // stream's orders go to its session of the same source or stream, the others to no
            // session (arrivingBook).
            var owners: [UInt32: String] = [:]
            // As the shard had them when it sealed the export (no round trip to it here).
            for (key, session) in out.sourceSessions ?? adminState(shard: source, timeout: timeout)?.sourceSessions ?? [:] where session != 0 {
                owners[session] = key
            }
            let ownersAt = monotonicNanoseconds()
            let blob = TransferBlob(spec: spec, epoch: epoch, source: settings.instance, positions: out.positions, owners: owners,
                                    frozenWall: frozenWall, book: bytes)
            let encoded = blob.encode()
            let encodedAt = monotonicNanoseconds()
            if let why = store.saveBlob(TransferBlob.key(symbol: name, epoch: epoch), encoded) {
                throw abandon(why, thaw: true)
            }
            noteTransfers()
            crashPoint("after-export")
            let stored = monotonicNanoseconds()
            let report = TransferOutReport(symbol: name, shard: source, epoch: epoch, orders: held.orders, bookBytes: bytes.count,
                                           frozenAt: held.at, exportSequence: out.sequence,
                                           phases: ["snapshot": snapshotted &- held.at, "export": exported &- snapshotted, "durable": durable &- exported,
                                                    "owners": ownersAt &- durable, "encode": encodedAt &- ownersAt, "store": stored &- encodedAt])
            log("move of \(name) to \(instance): shard \(source) exported \(held.orders) resting orders (\(bytes.count) bytes) at sequence \(out.sequence); waiting for \(instance) to claim epoch \(epoch)")
            return report
        }
    }

    /// Step 2, on the target. Returns once the symbol trades on `target` here (or throws: the
    /// route went elsewhere, or is undecided: then settled later).
    public func transferIn(symbol name: String, epoch: UInt64, shard target: Int, timeout: Double = 5) throws(EngineError) -> TransferInReport {
        let (host, store) = try transferPrerequisites()
        guard target >= 0, target < shards.count else { throw EngineError("no shard \(target) (\(shards.count) shards)") }
        let t0 = monotonicNanoseconds()
        let blob: TransferBlob
        switch store.loadBlob(TransferBlob.key(symbol: name, epoch: epoch)) {
        case .failure(let why): throw EngineError("move of \(name) at epoch \(epoch): \(why)")
        case .success(let bytes): blob = try TransferBlob.decode(bytes)
        }
        guard blob.spec.name == name, blob.epoch == epoch else {
            throw EngineError("the transfer blob of \(name) at epoch \(epoch) carries \(blob.spec.name) at epoch \(blob.epoch)")
        }
        guard blob.source != settings.instance else { throw EngineError("\(name) at epoch \(epoch) comes from this instance") }
        let loaded = monotonicNanoseconds()
        var listed = false
        if symbolTable?.spec(named: name) == nil {
            // Listed here first, owned by no shard (two takers of one move: one lists it).
            do {
                _ = try listSymbol(name, shard: InstanceSymbols.away, id: blob.spec.id, rules: blob.spec, timeout: timeout)
                listed = true
            } catch {
                guard symbolTable?.spec(named: name) != nil else { throw error }
            }
        }
        if let known = symbolTable?.spec(named: name), known != blob.spec {
            throw EngineError("\(name) has other rules or another id here (id \(known.id), tick \(known.tickSize), lot \(known.lotSize)) than on \(blob.source) (id \(blob.spec.id), tick \(blob.spec.tickSize), lot \(blob.spec.lotSize))")
        }
        let listedAt = monotonicNanoseconds()
        guard let routes else { throw EngineError("the engine is not running") }
        return try migrationSerial.locked { () throws(EngineError) -> TransferInReport in
            // Taken in already (the router offered it, and someone asks again): the same answer.
            if let done = transferLock.locked({ transfersTaken["\(name) \(epoch)"] }) { return done }
            let queuedAt = monotonicNanoseconds()
            if let owner = routes.shard(of: blob.spec.id) { throw EngineError("\(name) trades on shard \(owner) of this instance already") }
            // Its empty book: made when the move was offered (while the source exported), or now,
            // on this thread rather than the shard's.
            let expecting = MigrationStep(symbolId: blob.spec.id)
            let offered = transferLock.locked { transferBooks.removeValue(forKey: "\(name) \(epoch)") }
            expecting.premade = offered.flatMap { $0.isTaken ? nil : $0 }
            if expecting.premade == nil { expecting.premade = premadeBook(blob.spec, shard: target) }
            let premadeAt = monotonicNanoseconds()
            guard let expected = step(target, { .expect($0) }, expecting, timeout: timeout) else {
                throw EngineError("move of \(name): shard \(target) did not answer")
            }
            if let refusal = expected.refusal { throw EngineError("move of \(name): \(refusal)") }
            let expectedAt = monotonicNanoseconds()
            func giveUp(_ why: String) -> EngineError {
                _ = step(target, { .finishTransfer($0, won: false) }, MigrationStep(symbolId: blob.spec.id), timeout: timeout)
                engineFile?.migrations(target).add(MigrationCounters.failed)
                log("move of \(name) from \(blob.source) not taken: \(why)")
                return EngineError("move of \(name) from \(blob.source) not taken: \(why)")
            }
            // Its orders' ids here: an ingress source's or a stream's go to this shard's session
            // of that source or stream (a stream new here gets one now).
            // (A book whose orders have no owners to map needs no round trip to the shard.)
            var sessions = blob.owners.isEmpty ? [:] : adminState(shard: target, timeout: timeout)?.sourceSessions ?? [:]
            do { try streamSessions(for: blob, shard: target, known: &sessions, timeout: timeout) } catch { throw giveUp("\(error)") }
            let book: [UInt8]
            do { book = try blob.arrivingBook(sessions: sessions) } catch {
                if case BookSnapshotError.duplicateOrderId = error {
                    throw giveUp("two resting orders would have the same id here (an order that moved 65,536 moves ago still rests)")
                }
                throw giveUp("the blob's book: \(error)")
            }
            let arriving = MigrationStep(symbolId: blob.spec.id, book: book, positions: blob.positions)
            arriving.transfer = ShardTransfer(epoch: epoch, instance: blob.source, outbound: false)
            let idsAt = monotonicNanoseconds()
            guard let imported = step(target, { .importTransfer($0) }, arriving, timeout: timeout) else {
                noteTransfers()
                throw EngineError("move of \(name): shard \(target) did not answer the import; the route decides")
            }
            if let refusal = imported.refusal { throw giveUp(refusal) }
            guard awaitDurable(target, imported.sequence, timeout: timeout) else {
                noteTransfers()
                throw EngineError("move of \(name): the import was not durable within \(timeout) s; the route decides")
            }
            let onDisk = monotonicNanoseconds()
            crashPoint("after-import")
            switch host.transferClaim(symbol: name, epoch: epoch, shard: target) {
            case .won: break
            case .lost(let why): throw giveUp("the route went elsewhere: \(why)")
            case .unreachable(let why):
                noteTransfers()
                throw EngineError("move of \(name): the route could not be claimed (\(why)); frozen here until it can")
            }
            let claimed = monotonicNanoseconds()
            crashPoint("after-claim")
            // Its partitions are read again from where the source stopped before it turns this
            // engine's (IngressRewinds: the rewind first); meanwhile its commands are held here.
            ingressRewinds.gain(blob.spec.id, floors: blob.positions)
            routes.set(blob.spec.id, shard: target)
            guard let done = step(target, { .finishTransfer($0, won: true) }, MigrationStep(symbolId: blob.spec.id), timeout: timeout) else {
                noteTransfers()
                throw EngineError("move of \(name): shard \(target) did not answer the thaw; it thaws at the next settlement")
            }
            if let refusal = done.refusal { throw EngineError("move of \(name): \(refusal)") }
            host.routeEnd(symbolId: blob.spec.id, shard: target)
            let phases = ["start": t0, "load": loaded &- t0, "list": listedAt &- loaded, "queue": queuedAt &- listedAt,
                          "premade": premadeAt &- queuedAt, "expect": expectedAt &- premadeAt,
                          "ids": idsAt &- expectedAt, "import": imported.phases["import"] ?? 0,
                          "durable": onDisk &- imported.at, "claim": claimed &- onDisk, "held": done.phases["held"] ?? 0]
            let report = TransferInReport(symbol: name, shard: target, epoch: epoch, held: done.held, listed: listed, tradingAt: done.at,
                                          importSequence: imported.sequence, phases: phases)
            log("move of \(name) from \(blob.source): trades on shard \(target) from epoch \(epoch + 1) (\(done.held) held commands applied)")
            transferLock.locked { transfersTaken["\(name) \(epoch)"] = report }
            // In `crossbook stat` and the metrics as a move into the shard, with its pause: from the
            // source's hold (its wall clock, in the blob) to trading here (this host's): between
            // two hosts their clocks' difference is in it.
            engineFile?.migrations(target).add(MigrationCounters.into)
            let now = realtimeNanoseconds()
            if blob.frozenWall > 0, now > blob.frozenWall {
                let pause = now - blob.frozenWall
                if let c = engineFile?.migrations(target) {
                    c.set(MigrationCounters.lastPauseMicros, pause / 1000)
                    c.set(MigrationCounters.maxPauseMicros, max(c.read(MigrationCounters.maxPauseMicros), pause / 1000))
                }
                migrationLock.locked {
                    migrationHistory.lastPauseNanoseconds = pause
                    migrationHistory.maxPauseNanoseconds = max(migrationHistory.maxPauseNanoseconds, pause)
                    migrationHistory.totalPauseNanoseconds &+= pause
                }
            }
            return report
        }
    }

    /// Step 3 on the source, and every second on both while a transfer is under way: each
    /// transfer the shards' journals show, settled by the route. Lines for the log (nothing
    /// when none, or when the router does not answer: it is asked again).
    @discardableResult
    public func settleTransfers(timeout: Double = 5) -> [String] {
        guard let host = pluginHost, host.routesTransfers, let routes, let table = symbolTable, role != .standby else { return [] }
        var lines: [String] = []
        var pending = false
        migrationSerial.locked {
            for i in shards.indices {
                guard let state = adminState(shard: i, timeout: timeout) else { pending = true; continue }
                for (id, t) in state.transfers.sorted(by: { $0.key < $1.key }) {
                    guard let name = table.spec(ofId: id)?.name else { continue }
                    pending = true
                    let route: PluginHost.RouteNow?
                    switch host.routeRead(symbol: name) {
                    case .failure: continue
                    case .success(let r): route = r
                    }
                    let undecided = route.map { $0.migrating && $0.epoch == t.epoch } ?? false
                    if t.outbound {
                        if undecided {
                            let seen = transferLock.locked { () -> UInt64 in
                                if let first = transferSeen[id] { return first }
                                transferSeen[id] = monotonicNanoseconds()
                                return transferSeen[id]!
                            }
                            guard monotonicNanoseconds() &- seen >= transferTimeoutNanoseconds else { continue }
                            guard case .won = host.transferClaim(symbol: name, epoch: t.epoch, shard: i) else { continue }
                            lines.append("\(name): \(t.instance) did not claim epoch \(t.epoch) in time: the route is back here")
                        }
                        // The route names this engine (taken back), or none: trade here again.
                        // It names another engine: that one has it.
                        if undecided || route == nil || route?.instance == settings.instance {
                            if case .applied = admin(shard: i, .thaw(symbolId: id), timeout: timeout) {
                                ingressRewinds.gain(id, floors: state.transferFloors[id] ?? [:], undone: true)
                                host.routeEnd(symbolId: id, shard: i)
                                lines.append("\(name): the move to \(t.instance) was undone: trades on shard \(i)")
                            }
                        } else if case .applied = admin(shard: i, .drop(symbolId: id), timeout: timeout) {
                            routes.set(id, shard: -1)
                            ingressRewinds.forget(id)
                            engineFile?.migrations(i).add(MigrationCounters.outOf)
                            migrationLock.locked { migrationHistory.done += 1 }
                            host.snapshotStore?.deleteBlob(TransferBlob.key(symbol: name, epoch: t.epoch))
                            lines.append("\(name): moved to \(route!.instance) (epoch \(route!.epoch)): dropped here")
                        }
                        transferLock.locked { transferSeen[id] = nil }
                    } else {
                        var won = route.map { !$0.migrating && $0.instance == settings.instance && $0.epoch == t.epoch + 1 && $0.shard == i } ?? false
                        if undecided {
                            switch host.transferClaim(symbol: name, epoch: t.epoch, shard: i) {
                            case .won: won = true
                            case .lost: break
                            case .unreachable: continue
                            }
                        }
                        // Not held here after a restart: thawed first, then its partitions are
                        // read again (IngressRewinds), then it turns this engine's.
                        if let answer = step(i, { .finishTransfer($0, won: won) }, MigrationStep(symbolId: id), timeout: timeout), answer.refusal == nil {
                            if won {
                                ingressRewinds.gain(id, floors: state.transferFloors[id] ?? [:])
                                routes.set(id, shard: i)
                                host.routeEnd(symbolId: id, shard: i)
                            } else {
                                ingressRewinds.forget(id)
                            }
                            lines.append(won ? "\(name): the move from \(t.instance) at epoch \(t.epoch) finished: trades on shard \(i)"
                                             : "\(name): the move from \(t.instance) at epoch \(t.epoch) went elsewhere: dropped here")
                        }
                    }
                }
            }
        }
        if !pending { transferLock.locked { transfersPending = false } }
        for line in lines { log(line) }
        return lines
    }

    /// A router saw `symbol`'s route MIGRATING to this engine at `epoch` (for `shard`): taken in
    /// on a thread of its own (once per symbol and epoch). This is how a move between engines on
    /// different hosts completes: the source's `crossbook migrate --to-instance` never reaches
    /// the target itself.
    func offerTransfer(symbol name: String, epoch: UInt64, shard: Int) -> Bool {
        guard role != .standby, !settings.readOnly, settings.durability != .none else { return false }
        let fresh = transferLock.locked { () -> Bool in
            guard !transfersOffered.contains("\(name) \(epoch)") else { return false }
            transfersOffered.insert("\(name) \(epoch)")
            return true
        }
        guard fresh else { return true }
        let worker = Thread { [weak self] in
            guard let self else { return }
            // The route turns MIGRATING before the source has the book on its disk and in the
            // store: until the blob is there (and while the route still waits at this epoch),
            // ask again.
            let deadline = monotonicNanoseconds() &+ self.transferTimeoutNanoseconds
            // Its empty book now, while the source exports (a symbol known here: its rules).
            if let spec = self.symbolTable?.spec(named: name), let book = self.premadeBook(spec, shard: shard) {
                self.transferLock.locked { self.transferBooks["\(name) \(epoch)"] = book }
            }
            // One nobody took (the move went elsewhere) is freed when this worker ends.
            defer { _ = self.transferLock.locked { self.transferBooks.removeValue(forKey: "\(name) \(epoch)") } }
            var polls = 0
            while true {
                do {
                    let report = try self.transferIn(symbol: name, epoch: epoch, shard: shard)
                    self.log("move of \(name) at epoch \(epoch), offered by the router: taken in on shard \(report.shard)")
                    return
                } catch {
                    let waiting: Bool
                    if case .success(let route?) = self.pluginHost?.routeRead(symbol: name) { waiting = route.migrating && route.epoch == epoch } else { waiting = false }
                    guard "\(error)".contains("does not exist"), waiting, monotonicNanoseconds() < deadline else {
                        self.log("move of \(name) at epoch \(epoch), offered by the router: \(error)")
                        return
                    }
                    // Every 0.25 ms for the first 10 ms (a blob is there a few ms after the
                    // route turned), then every 1 ms.
                    polls += 1
                    usleep(polls < 40 ? 250 : 1000)
                }
            }
        }
        worker.name = "transfer-in"
        worker.start()
        return true
    }

    /// The source waits for the route of a move it began at `epoch` to be decided (the target
    /// claimed it, or this engine took it back after `transfer_timeout_s`): the route then, and
    /// when this engine saw it (monotonic nanoseconds; polled every 0.2 ms).
    func awaitTransfer(symbol name: String, epoch: UInt64) throws(EngineError) -> (PluginHost.RouteNow, UInt64) {
        guard let host = pluginHost, host.routesTransfers else { throw EngineError("no router that moves symbols between engines") }
        let deadline = monotonicNanoseconds() &+ transferTimeoutNanoseconds &+ 5_000_000_000
        var lastSettle = monotonicNanoseconds()
        while monotonicNanoseconds() < deadline {
            if case .success(let route?) = host.routeRead(symbol: name), !(route.migrating && route.epoch == epoch) {
                return (route, monotonicNanoseconds())
            }
            // Past the timeout, this engine takes the route back (settleTransfers).
            if monotonicNanoseconds() &- lastSettle > 500_000_000 {
                settleTransfers()
                lastSettle = monotonicNanoseconds()
            }
            usleep(200)
        }
        throw EngineError("the route of \(name) is still MIGRATING at epoch \(epoch)")
    }

    /// A transfer is under way: the control thread settles it every second until none is.
    func noteTransfers() { transferLock.locked { transfersPending = true } }
    var hasPendingTransfers: Bool { transferLock.locked { transfersPending } }

    /// Tests kill the engine at a step of a move (`CROSSBOOK_TRANSFER_CRASH=after-export`,
    /// `after-import` or `after-claim`): SIGKILL, as kill -9 would.
    func crashPoint(_ name: String) {
        guard let wanted = ProcessInfo.processInfo.environment["CROSSBOOK_TRANSFER_CRASH"], wanted == name else { return }
        log("CROSSBOOK_TRANSFER_CRASH=\(name): killing this process")
        kill(getpid(), SIGKILL)
    }
}
