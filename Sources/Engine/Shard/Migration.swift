// Moving a symbol's book from one shard to another while it trades (the engine's side:
// Engine+Migration.swift). Every step that changes state is a sequenced admin command, so a
// replay rebuilds it and a crash at any step leaves one owner (Engine.reconcileOwners):
//
//  1. The target expects the symbol (`expect`, not journaled) and makes its empty book: from
//     now on the symbol's commands that reach the target wait there, unsequenced, in arrival
//     order (`held`). The route switches to the target, so producers send there.
//  2. The source applies what was published to it before the switch, then holds the symbol's
//     commands too (`holdOutgoing`): the pause starts. The control thread reads the book's
//     bytes (nothing on the shard touches a book whose commands it holds; the shard goes on
//     with its other symbols), and the source journals the export at its sequence S
//     (`exportSealed`: the bytes' length and CRC32C, and the symbol frozen, in one record, so
//     no crash leaves a freeze without its export). What it held is then sequenced: rejected,
//     `symbol_frozen` (and later `symbol_moved`, naming the owner).
//  3. The control thread restores the bytes into the target's empty book (nothing on the
//     target touches a book it does not own) while S goes to disk; once it is there, the target
//     journals the import (the bytes, in parts), the source's ingress positions as the
//     symbol's floors and the thaw, then sequences the held commands in the order they
//     arrived: the symbol trades again.
//  4. Once the import is on disk, the source journals the drop and gives the memory back.
//
// If the target cannot take it, the held commands are sequenced anyway (each rejected,
// `symbol_moved`, naming the source), the route goes back and the source thaws.

import Glibc
import OrderBook
import SharedMemory
import Wire

/// A command waiting for its symbol's book to arrive (the 64-byte record and its session).
struct HeldCommand {
    var words: (UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64)
    var session: UInt32
    var slot: Int32
}

/// An empty book made off the shard's thread: allocating and touching a book of its capacity
/// takes milliseconds, which a shard's other symbols would wait for. The shard that expects the
/// symbol moves it into its slot (`take`); one nobody took is freed with this.
final class PremadeBook: @unchecked Sendable {
    private let pointer: UnsafeMutablePointer<OrderBook>
    private let lock = Lock()
    private var taken = false

    init(spec: SymbolSpec, capacity: BookCapacity) throws(BookConfigError) {
        let book = try OrderBook(spec: spec, capacity: capacity)
        pointer = .allocate(capacity: 1)
        pointer.initialize(to: book)
    }

    /// Moves the book into `slot` (uninitialized memory): false if it was taken already or is
    /// another symbol's.
    func take(into slot: UnsafeMutablePointer<OrderBook>, symbolId: UInt32) -> Bool {
        lock.locked {
            guard !taken, pointer.pointee.symbolId == symbolId else { return false }
            taken = true
            slot.moveInitialize(from: pointer, count: 1)
            return true
        }
    }

    var isTaken: Bool { lock.locked { taken } }

    deinit {
        if !taken { pointer.deinitialize(count: 1) }
        pointer.deallocate()
    }
}

/// The control thread's half of one step of a migration, and the shard's answer.
final class MigrationStep: @unchecked Sendable {
    let symbolId: UInt32
    /// `.migrateIn`: the exported book.
    let book: [UInt8]
    private let lock = Lock()
    private var answer: MigrationAnswer?
    let done = Semaphore()
    let positions: [String: UInt64]
    /// `.migrateIn`: the control thread restored the book into the target's empty book already.
    var prebuilt = false
    /// A move between engines (`sealExport` journals a transferOut; `importTransfer` a
    /// transferIn): the route epoch and the other engine.
    var transfer: ShardTransfer?
    /// `.expect`: the empty book, made by the control thread (PremadeBook), for the shard to take
    /// in place of making one on its own thread.
    var premade: PremadeBook?
    init(symbolId: UInt32, book: [UInt8] = [], positions: [String: UInt64] = [:]) {
        self.symbolId = symbolId
        self.book = book
        self.positions = positions
    }
    func finish(_ result: MigrationAnswer) {
        lock.locked { answer = result }
        done.signal()
    }
    var result: MigrationAnswer? { lock.locked { answer } }
}

struct MigrationAnswer: Sendable {
    /// Why the step did not happen (nil: it did).
    var refusal: String?
    /// The journaled sequence of the step's last admin command (export, thaw).
    var sequence: UInt64 = 0
    /// Monotonic nanoseconds when the step took effect (export: frozen; thaw: trading again,
    /// after the held commands were sequenced).
    var at: UInt64 = 0
    /// The source's ingress positions at the export ("topic#partition" → last applied offset):
    /// the target journals them as floors of the symbol (exactly-once ingress across a move).
    var positions: [String: UInt64] = [:]
    /// Resting orders in the book moved, and commands that waited for it.
    var orders = 0
    var held = 0
    /// Where the time went, nanoseconds: source: the book's bytes, the export journaled;
    /// target: the import (journal + restore), the held commands.
    var phases: [String: UInt64] = [:]
    /// The symbol's book in the shard's memory (`hold` on the source, `expect` on the target),
    /// for the control thread to read (frozen: the shard does not touch it while it holds the
    /// symbol's commands) or to fill (not owned yet: nothing on the shard touches it).
    var bookAddress: BookAddress?
    /// A move to another engine's export: the shard's sessions of ingress sources and streams
    /// then ("client:UID:NAME#0" → session), the owners of the book's orders (TransferBlob).
    var sourceSessions: [String: UInt32]?
}

/// A book of a shard, lent to the control thread during a migration step.
struct BookAddress: @unchecked Sendable {
    let pointer: UnsafeMutablePointer<OrderBook>
}

extension ShardState {
    /// Holds the command if its symbol is on its way here. Only called while `holding != 0`.
    @inline(never)
    mutating func hold(_ record: UnsafeRawPointer, session: UInt32) -> Bool {
        let symbol = Int(UInt32(littleEndian: record.loadUnaligned(fromByteOffset: 8, as: UInt32.self)))
        guard symbol <= maxSymbolId else { return false }
        let b = bookIndex[symbol]
        guard b >= 0, incoming[Int(b)] != 0, held.count < Self.maxHeld else { return false }
        // The first command held of a partition: its offset becomes the symbol's floor here,
        // journaled before the shard's own position can pass it with its other symbols' commands
        // (the held ones are not journaled: after a crash the partition is read again from it).
        let source = ingress.ofSession[Int(session)]
        if source >= 0 && ingress.plugin[Int(source)] {
            let key = UInt64(symbol) << 32 | UInt64(UInt32(bitPattern: source))
            if !holdFloors.contains(key) {
                let offset = UInt64(littleEndian: record.loadUnaligned(fromByteOffset: 48, as: UInt64.self))
                guard offset <= UInt64(Int64.max) else { return false }  // malformed: sequenced, rejected
                let floor = max(offset, ingress.ownNext(UInt32(symbol), slot: Int(source)) ?? 0)
                guard let (name, partition) = splitSourceKey(ingress.keys[Int(source)]) else { return false }
                if case .refused(nil, _) = runAdmin(.ingressFloor(symbolId: UInt32(symbol), source: name, partition: partition, offset: floor)) {
                    return false  // the journal refuses: the command stays in its ring
                }
                holdFloors.insert(key)
            }
        }
        let r = (record.loadUnaligned(as: UInt64.self), record.loadUnaligned(fromByteOffset: 8, as: UInt64.self),
                 record.loadUnaligned(fromByteOffset: 16, as: UInt64.self), record.loadUnaligned(fromByteOffset: 24, as: UInt64.self),
                 record.loadUnaligned(fromByteOffset: 32, as: UInt64.self), record.loadUnaligned(fromByteOffset: 40, as: UInt64.self),
                 record.loadUnaligned(fromByteOffset: 48, as: UInt64.self), record.loadUnaligned(fromByteOffset: 56, as: UInt64.self))
        held.append(HeldCommand(words: r, session: session, slot: b))
        return true
    }

    /// Commands held at most, over all symbols moving in: past it, a command is sequenced at once
    /// (and rejected, `symbol_moved`), so a flood cannot take the shard's memory.
    static var maxHeld: Int { 1 << 20 }

    /// Step 1, on the target: hold the symbol's commands from now on.
    mutating func expect(_ step: MigrationStep) {
        guard let b = book(of: step.symbolId) else { return step.finish(MigrationAnswer(refusal: "symbol \(step.symbolId) is not one of this instance")) }
        guard bookFlags[b] & BookFlag.notOwned != 0 else {
            return step.finish(MigrationAnswer(refusal: "shard \(index) owns symbol \(step.symbolId) already"))
        }
        if incoming[b] == 0 {
            incoming[b] = 1
            holding += 1
        }
        // The empty book now, before the pause: allocating (and touching) a book of its capacity
        // takes milliseconds, done by the control thread where it can (PremadeBook). It stays not
        // owned (commands rejected) until the import.
        if !hasBook(b) {
            if pools == nil, let premade = step.premade, premade.take(into: books + b, symbolId: step.symbolId) {
                bookFlags[b] = BookFlag.notOwned
            } else {
                if let failure = makeBook(b) { return step.finish(MigrationAnswer(refusal: "\(failure)")) }
                bookFlags[b] = BookFlag.notOwned
            }
        }
        var answer = MigrationAnswer(at: monotonicNanoseconds())
        answer.bookAddress = BookAddress(pointer: books + b)
        step.finish(answer)
    }

    /// Step 2a, on the source: the symbol's commands are held from now on (not applied, not
    /// rejected: nothing is journaled for them yet), so that the control thread can read its
    /// book while the shard goes on with its other symbols.
    mutating func holdOutgoing(_ step: MigrationStep) {
        let id = step.symbolId
        guard let b = book(of: id), isOwned(b) else {
            return step.finish(MigrationAnswer(refusal: "shard \(index) does not own symbol \(id)"))
        }
        guard bookFlags[b] & BookFlag.frozen == 0 else {
            return step.finish(MigrationAnswer(refusal: "symbol \(id) is frozen on shard \(index) (an operator's freeze, or a migration under way): thaw it first"))
        }
        // What producers published here before the route switched is applied first: only a
        // producer that read the route before the switch and wrote after it waits (and is then
        // rejected, symbol_frozen).
        for _ in 0..<16 {
            if pass() == 0 { break }
        }
        if incoming[b] == 0 {
            incoming[b] = 1
            holding += 1
        }
        var answer = MigrationAnswer(at: monotonicNanoseconds(), orders: books[b].restingOrderCount)
        answer.bookAddress = BookAddress(pointer: books + b)
        // The symbol's own positions now: each of its commands not applied yet is after them
        // (those held from here on too, though the shard's positions move on with its other
        // symbols). For another engine, every source this shard reads (none applied: from 0).
        answer.positions = ingress.positions(of: id, unread: step.transfer != nil)
        step.finish(answer)
    }

    /// Step 2b, on the source: the export of the bytes the control thread took, journaled
    /// (the symbol frozen from here on); the commands held meanwhile are sequenced (rejected).
    mutating func sealExport(_ step: MigrationStep) {
        let id = step.symbolId
        guard let b = book(of: id) else { return step.finish(MigrationAnswer(refusal: "symbol \(id) is not one of this instance")) }
        let t0 = monotonicNanoseconds()
        var answer = MigrationAnswer()
        let length = UInt32(step.book.count), crc = bookCRC(step.book)
        let record: AdminCommand = step.transfer.map { .transferOut(symbolId: id, length: length, crc: crc, epoch: $0.epoch, instance: $0.instance) }
            ?? .exportSealed(symbolId: id, length: length, crc: crc)
        switch runAdmin(record) {
        case .applied(let sequence):
            answer.sequence = sequence
            if step.transfer != nil {
                // Its commands from here on are the other engine's (dropped here, IngressCounters
                // .elsewhere); its positions at the hold become its floors here too, so that if
                // the move is undone it is read again from them (IngressRewinds).
                answer.positions = step.positions
                answer.sequence = journalFloors(id, step.positions) ?? sequence
                answer.sourceSessions = ingress.sourceSessions
            } else {
                // Its own positions (not the shard's: its commands that went to the target
                // meanwhile are below those), journaled as its floors here too: if the move is
                // undone by a crash, the partition is read again from them (the target's held
                // commands were not journaled).
                answer.positions = ingress.exactPositions(of: id)
                answer.sequence = journalFloors(id, answer.positions) ?? sequence
            }
        case .refused(_, let why):
            answer.refusal = why
        }
        if incoming[b] != 0 {
            incoming[b] = 0
            holding -= 1
        }
        holdFloors = holdFloors.filter { $0 >> 32 != UInt64(id) }
        answer.at = monotonicNanoseconds()
        answer.phases["export"] = answer.at - t0
        answer.held = releaseHeld(slot: Int32(b))
        step.finish(answer)
    }

    /// Step 3, on the target: import, thaw, then the held commands in arrival order. With an
    /// empty book (`abandon`), nothing is imported: the held commands are sequenced and rejected.
    mutating func migrateIn(_ step: MigrationStep, abandon: Bool = false) {
        let id = step.symbolId
        guard let b = book(of: id) else { return step.finish(MigrationAnswer(refusal: "symbol \(id) is not one of this instance")) }
        var answer = MigrationAnswer()
        let t0 = monotonicNanoseconds()
        if !abandon {
            defer { answer.phases["import"] = monotonicNanoseconds() - t0 }
            prebuiltImport = step.prebuilt ? id : nil
            defer { prebuiltImport = nil }
            switch importBook(id, step.book) {
            case .applied:
                _ = journalFloors(id, step.positions)
                switch runAdmin(.thaw(symbolId: id)) {
                case .applied(let sequence): answer.sequence = sequence
                case .refused(_, let why): answer.refusal = why
                }
            case .refused(_, let why):
                answer.refusal = why
            }
        }
        stopHolding(b, answer, step)
    }

    /// A symbol from another engine, on the target (after `expect`): the transferIn, the import
    /// (in parts) and the source's positions as floors, journaled; its commands stay held (the
    /// route decides next: `finishTransfer`).
    mutating func importTransfer(_ step: MigrationStep) {
        let id = step.symbolId
        guard let transfer = step.transfer else { return step.finish(MigrationAnswer(refusal: "not a transfer")) }
        let t0 = monotonicNanoseconds()
        var answer = MigrationAnswer()
        switch runAdmin(.transferIn(symbolId: id, epoch: transfer.epoch, instance: transfer.instance)) {
        case .refused(_, let why): answer.refusal = why
        case .applied:
            switch importBook(id, step.book) {
            case .refused(_, let why): answer.refusal = why
            case .applied(let sequence):
                answer.sequence = journalFloors(id, step.positions) ?? sequence
            }
        }
        answer.at = monotonicNanoseconds()
        answer.phases["import"] = answer.at - t0
        step.finish(answer)
    }

    /// The route decided a symbol arriving from another engine: won, it trades here (thaw) and
    /// the commands held meanwhile are applied in arrival order; lost (or not imported), the
    /// imported book goes (drop) and they are rejected (`symbol_moved`).
    mutating func finishTransfer(_ step: MigrationStep, won: Bool) {
        let id = step.symbolId
        guard let b = book(of: id) else { return step.finish(MigrationAnswer(refusal: "symbol \(id) is not one of this instance")) }
        var answer = MigrationAnswer()
        let imported = bookFlags[b] & BookFlag.imported != 0 && bookFlags[b] & BookFlag.notOwned == 0
        if imported {
            switch runAdmin(won ? .thaw(symbolId: id) : .drop(symbolId: id)) {
            case .applied(let sequence): answer.sequence = sequence
            case .refused(_, let why): answer.refusal = why
            }
        } else if won {
            answer.refusal = "symbol \(id) was not imported on shard \(index)"
        }
        stopHolding(b, answer, step)
    }

    /// The source's ingress positions ("topic#partition" → last applied offset) journaled as the
    /// symbol's floors: its commands below them are replays here. The last one's sequence.
    private mutating func journalFloors(_ id: UInt32, _ positions: [String: UInt64]) -> UInt64? {
        var last: UInt64?
        for (key, offset) in positions.sorted(by: { $0.key < $1.key }) {
            guard let (source, partition) = splitSourceKey(key) else { continue }
            // UInt64.max: none applied (a floor of 0).
            if case .applied(let s) = runAdmin(.ingressFloor(symbolId: id, source: source, partition: partition, offset: offset &+ 1)) {
                last = s
            }
        }
        return last
    }

    /// The end of a move into slot `b`: its commands are no longer held; a book not imported (the
    /// one made at `expect`) goes; the held commands are sequenced in arrival order (applied, or
    /// rejected where the symbol is not owned); the answer goes back.
    private mutating func stopHolding(_ b: Int, _ answer: MigrationAnswer, _ step: MigrationStep) {
        var answer = answer
        if incoming[b] != 0 {
            incoming[b] = 0
            holding -= 1
        }
        let id = UInt64(symbols[b].spec.id)
        holdFloors = holdFloors.filter { $0 >> 32 != id }
        if bookFlags[b] & BookFlag.notOwned != 0 { releaseBook(b) }
        let t1 = monotonicNanoseconds()
        answer.held = releaseHeld(slot: Int32(b))
        answer.at = monotonicNanoseconds()
        answer.phases["held"] = answer.at - t1
        step.finish(answer)
    }

    /// Journals and applies an import, in parts of at most `importPartSize` bytes (a journal
    /// record must fit in one batch buffer); the last part's outcome.
    mutating func importBook(_ id: UInt32, _ book: [UInt8]) -> AdminOutcome {
        guard book.count > Self.importPartSize else { return runAdmin(.importBook(symbolId: id, book: book)) }
        var offset = 0
        while true {
            let end = min(offset + Self.importPartSize, book.count)
            let outcome = runAdmin(.importPart(symbolId: id, total: UInt32(book.count), offset: UInt32(offset), part: Array(book[offset..<end])))
            offset = end
            if case .refused = outcome { return outcome }
            if offset == book.count { return outcome }
        }
    }

    /// Under the journal's 1 MiB record limit with the headers around it.
    static var importPartSize: Int { 1 << 19 }

    /// Sequences, journals and applies the held commands of slot `slot`, in arrival order; the
    /// others stay held. Returns how many. A command the journal refuses is rejected by nobody:
    /// it is lost unacknowledged, as a command in a ring is when the engine dies.
    private mutating func releaseHeld(slot: Int32) -> Int {
        guard !held.isEmpty else { return 0 }
        var kept: [HeldCommand] = []
        var released = 0
        sequencer.beginBatch()
        for var command in held {
            guard command.slot == slot else {
                kept.append(command)
                continue
            }
            released += 1
            let session = command.session
            withUnsafeBytes(of: &command.words) { raw in
                let record = raw.baseAddress!
                let source = ingress.ofSession[Int(session)]
                if source >= 0 && ingress.plugin[Int(source)] && dropsIngress(record, source: source) { return }
                let context = sequencer.next(session: session)
                if journal(record, context) { process(record, context) }
            }
        }
        held = kept
        return released
    }
}
