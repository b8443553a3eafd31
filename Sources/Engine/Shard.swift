// A shard: one thread, pinned to one core, owning the books of its symbols. It polls the
// command rings of its sessions, sequences each command, matches it, and writes execution
// reports into the report ring of each order's owner. Nothing on its loop locks, allocates or
// makes a syscall per command; it sleeps on its doorbell only when it has been idle a while.

import CShims
import Foundation
import Glibc
import Journal
import OrderBook
import SharedMemory
import Wire

/// The engine's order id: the session in the top 16 bits, the client's id below. A client can
/// name only its own orders, and a report finds its owner with a shift.
@inline(__always)
func engineOrderId(_ session: UInt32, _ clientId: OrderId) -> OrderId { OrderId(session) << 48 | clientId }

@inline(__always)
func owner(_ engineId: OrderId) -> Int { Int(engineId >> 48) }

@inline(__always)
func clientOrderId(_ engineId: OrderId) -> OrderId { engineId & (1 << 48 - 1) }

/// The largest order id a client may use (48 bits).
public let maxClientOrderId: OrderId = 1 << 48 - 1

/// When a command's reports and market data may leave the shard.
public enum Durability: String, Sendable, CaseIterable {
    /// Only once the command is on disk (fdatasync): nothing acknowledged is ever lost.
    case sync
    /// At once; the journal is written behind.
    case async
    /// No journal.
    case none
}

/// A report or market event waiting for its command to be durable (sync mode).
struct Outgoing {
    var sequence: UInt64
    /// A session's index in `inbound`, or -1 for the event ring.
    var target: Int
    /// The session the report is for: a slot of `inbound` is reused once its session is gone,
    /// and a report staged for the old one must not reach the new one.
    var session: UInt32 = 0
    var record: (UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64)
}

/// One session as a shard sees it: its command ring in, its report ring out.
struct Inbound {
    var commands: RingConsumer
    var reports: RingProducer
    let session: UInt32
    /// False once the client is gone or was detached for lagging.
    var active: Bool
}

/// What the control thread tells a shard, through its mailbox.
enum ShardMessage {
    case attach(session: UInt32, commands: RingConsumer, reports: RingProducer)
    case detach(session: UInt32)
    /// Which sessions own resting orders now (for reusing session ids).
    case restingOwners(RestingOwnersQuery)
}

/// The control thread's question to a shard and its answer.
final class RestingOwnersQuery: @unchecked Sendable {
    private let lock = Lock()
    private var answer = Set<UInt32>()
    let done = Semaphore()
    func reply(_ owners: Set<UInt32>) {
        lock.locked { answer = owners }
        done.signal()
    }
    var owners: Set<UInt32> { lock.locked { answer } }
}

/// The counts a shard keeps in private memory for the control thread's log lines.
enum ShardTally {
    static let lagDetaches = 0
    static let eventDetaches = 1
    static let ringFaults = 2
    static let count = 3
}

/// Turns book events into reports to the owners of the orders.
struct ReportSink: BookEventSink {
    let inbound: UnsafeMutablePointer<Inbound>
    /// Session id → index in `inbound`, or -1.
    let sessionIndex: UnsafeMutablePointer<Int32>
    let counters: ShardCounters
    let lagTimeoutNanoseconds: UInt64
    /// The shard's event ring (market data), one producer: this shard.
    let events: UnsafeMutablePointer<EventProducer>
    /// The shard's stop flag: every wait on a client or consumer gives up when it is set.
    let stopFlag: UnsafeMutablePointer<UInt32>
    /// The shard's own count of the events the control thread logs (ShardTally), in private
    /// memory: the counters region is output only, other processes can write it.
    let tally: UnsafeMutablePointer<UInt64>
    var published = 0
    /// Replaying the journal at start: the books change, nothing is sent.
    var replaying = false
    /// Sync mode: everything waits here until the journal's durable watermark covers it.
    var hold = false
    let staging: UnsafeMutablePointer<Outgoing>
    let stagingCapacity: Int
    var stagedHead = 0
    var stagedTail = 0
    /// Sync mode: the journal whose durable watermark releases what is staged.
    var journal: JournalWriter?
    var symbolId: UInt32 = 0
    var sequence: UInt64 = 0
    var clientTime: UInt64 = 0
    /// Decided at sequencing, once per batch: part of what a journal record will carry.
    var engineTime: UInt64 = 0
    var issuer: Int = 0
    /// The counters of the symbol of the command at hand (SymbolCounters words), or a scratch
    /// block for a command with no symbol.
    var symbolWords: UnsafeMutablePointer<UInt64>

        mutating func on(_ event: BookEvent) {
        switch event {
        case .accepted(let id, let side, let price, let quantity):
            send(owner(id), .init(kind: .accepted, side: side, symbolId: symbolId, engineSequence: sequence,
                                  orderId: clientOrderId(id), price: price, quantity: quantity, open: quantity,
                                  engineTime: engineTime, clientTime: clientTime))
        case .rejected(let id, let reason):
            if !replaying {
                counters.add(.rejects)
                counters.addReject(reason.rawValue)
                symbolWords[SymbolCounters.rejects] &+= 1
            }
            send(issuer, .init(kind: .rejected, code: reason.rawValue, symbolId: symbolId, engineSequence: sequence,
                               orderId: clientOrderId(id), engineTime: engineTime, clientTime: clientTime))
        case .trade(let maker, let taker, let takerSide, let price, let quantity, let makerOpen, let takerOpen):
            if !replaying {
                counters.add(.trades)
                symbolWords[SymbolCounters.trades] &+= 1
                symbolWords[SymbolCounters.tradedQuantity] &+= UInt64(truncatingIfNeeded: quantity)
            }
            publish(.init(kind: .trade, side: takerSide, symbolId: symbolId, engineSequence: sequence, price: price,
                          quantity: quantity, engineTime: engineTime))
            send(owner(maker), .init(kind: .trade, side: takerSide.opposite, code: 1, symbolId: symbolId,
                                     engineSequence: sequence, orderId: clientOrderId(maker), price: price,
                                     quantity: quantity, open: makerOpen, engineTime: engineTime))
            send(owner(taker), .init(kind: .trade, side: takerSide, code: 0, symbolId: symbolId,
                                     engineSequence: sequence, orderId: clientOrderId(taker), price: price,
                                     quantity: quantity, open: takerOpen, engineTime: engineTime))
        case .cancelled(let id, let quantity, let open, let reason):
            send(owner(id), .init(kind: .cancelled, code: reason.rawValue, symbolId: symbolId, engineSequence: sequence,
                                  orderId: clientOrderId(id), quantity: quantity, open: open,
                                  engineTime: engineTime, clientTime: reason == .user ? clientTime : 0))
        case .replaced(let id, let price, let quantity, let kept):
            send(owner(id), .init(kind: .replaced, code: kept ? 1 : 0, symbolId: symbolId, engineSequence: sequence,
                                  orderId: clientOrderId(id), price: price, quantity: quantity, open: quantity,
                                  engineTime: engineTime, clientTime: clientTime))
        case .level(let side, let price, let quantity, let orders):
            publish(.init(kind: .level, side: side, symbolId: symbolId, engineSequence: sequence, price: price,
                          quantity: quantity, orders: Int64(orders), engineTime: engineTime))
        }
    }

    /// Writes a market data event. A full ring waits for the slowest consumer (back-pressure);
    /// past the lag timeout, consumers that may be detached (or are gone) are detached.
    mutating func publish(_ event: MarketEventRecord.Event) {
        if replaying { return }
        if hold {
            var out = Outgoing(sequence: sequence, target: -1, record: (0, 0, 0, 0, 0, 0, 0, 0))
            withUnsafeMutableBytes(of: &out.record) { MarketEventRecord.encode(event, to: $0.baseAddress!) }
            stage(out)
            return
        }
        writeEvent(event)
    }

    mutating func writeEvent(_ event: MarketEventRecord.Event) {
        MarketEventRecord.encode(event, to: eventSlot())
        events.pointee.publish()
        published += 1
    }

    /// Claims a slot in the event ring: a full ring waits for the slowest consumer; past the lag
    /// timeout, consumers that may be detached (or are gone) are detached.
    func eventSlot() -> UnsafeMutableRawPointer {
        if !events.pointee.claim() {
            counters.add(.eventWaits)
            var start = monotonicNanoseconds()
            while !events.pointee.claim() {
                cb_cpu_relax()
                if cb_load_acquire_u32(stopFlag) != 0 {
                    // Stopping: a consumer that holds the shard back is not waited for any more.
                    let n = UInt64(events.pointee.detachLaggards(force: true))
                    counters.add(.eventDetaches, n)
                    _ = cb_fetch_add_u64_relaxed(tally + ShardTally.eventDetaches, n)
                    continue
                }
                if monotonicNanoseconds() &- start > lagTimeoutNanoseconds {
                    let n = events.pointee.detachLaggards()
                    counters.add(.eventDetaches, UInt64(n))
                    _ = cb_fetch_add_u64_relaxed(tally + ShardTally.eventDetaches, UInt64(n))
                    start = monotonicNanoseconds()
                }
            }
        }
        return events.pointee.slot()
    }

    /// Writes a report to a session. A full ring is back-pressure: wait for the client, up to
    /// the lag timeout; then the client is declared lagging and detached (counted; the
    /// control thread logs it). Reports to a session that is gone are dropped.
        mutating func send(_ sessionId: Int, _ report: ReportRecord.Report) {
        if replaying { return }
        let index = Int(sessionIndex[sessionId])
        guard index >= 0, inbound[index].active else { return }
        if hold {
            var out = Outgoing(sequence: sequence, target: index, session: inbound[index].session, record: (0, 0, 0, 0, 0, 0, 0, 0))
            withUnsafeMutableBytes(of: &out.record) { ReportRecord.encode(report, to: $0.baseAddress!) }
            stage(out)
            return
        }
        write(index, report)
    }

    /// Queues an outgoing record until its command is durable.
    mutating func stage(_ out: Outgoing) {
        // Full: wait on the disk (the batch holding this command is submitted by poll).
        while stagedHead - stagedTail == stagingCapacity {
            guard let journal else { break }
            release(upTo: journal.poll())
            if journal.failure != nil { break }  // nothing will be durable: drop the oldest
            if stagedHead - stagedTail == stagingCapacity { cb_cpu_relax() }
        }
        if stagedHead - stagedTail == stagingCapacity { stagedTail += 1 }
        staging[stagedHead % stagingCapacity] = out
        stagedHead += 1
    }

    /// Sends everything staged whose command is durable.
    mutating func release(upTo durable: UInt64) {
        while stagedTail < stagedHead {
            let out = staging[stagedTail % stagingCapacity]
            if out.sequence > durable { break }
            stagedTail += 1
            // The record was encoded when staged: copy its 64 bytes, do not decode and encode again.
            var record = out.record
            withUnsafeBytes(of: &record) { raw in
                if out.target < 0 {
                    eventSlot().copyMemory(from: raw.baseAddress!, byteCount: 64)
                    events.pointee.publish()
                    published += 1
                } else if inbound[out.target].session == out.session, let slot = reportSlot(out.target) {
                    slot.copyMemory(from: raw.baseAddress!, byteCount: 64)
                    inbound[out.target].reports.publish(1)
                }
            }
        }
    }

    func write(_ index: Int, _ report: ReportRecord.Report) {
        guard let slot = reportSlot(index) else { return }
        ReportRecord.encode(report, to: slot)
        inbound[index].reports.publish(1)
    }

    /// Claims a slot in a session's report ring; a full ring is back-pressure up to the lag
    /// timeout, then the session is detached (nil).
    func reportSlot(_ index: Int) -> UnsafeMutableRawPointer? {
        guard inbound[index].active else { return nil }
        counters.add(.events)
        if inbound[index].reports.claim(1) == 0 {
            let start = monotonicNanoseconds()
            while inbound[index].reports.claim(1) == 0 {
                cb_cpu_relax()
                if monotonicNanoseconds() &- start > lagTimeoutNanoseconds || cb_load_acquire_u32(stopFlag) != 0 {
                    inbound[index].active = false
                    inbound[index].reports.markClosed(.lagging)
                    counters.add(.lagDetaches)
                    _ = cb_fetch_add_u64_relaxed(tally + ShardTally.lagDetaches, 1)
                    return nil
                }
            }
        }
        return inbound[index].reports.slot(0)
    }
}


/// One shard's state; it lives on, and is touched only by, its own thread (the mailbox and
/// the stop flag are the exceptions, each with its own synchronization).
final class Shard: @unchecked Sendable {
    let index: Int
    let core: Int?
    let symbols: [(spec: SymbolSpec, capacity: BookCapacity)]
    /// Each symbol's counters in the control file (same order as `symbols`).
    let symbolCounters: [SymbolCounters]
    let doorbell: Doorbell
    let counters: ShardCounters
    let mailbox: Mailbox<ShardMessage>
    let wait: WaitStrategy
    let lagTimeoutNanoseconds: UInt64
    let eventRing: EventRing
    let durability: Durability
    let journalConfig: JournalConfig?
    /// Take a snapshot every this many commands (0: never), into this store.
    let snapshotEvery: UInt64
    let snapshots: SnapshotStore?
    let readOnly: Bool
    let describeBooks: Bool
    /// After start: what recovery found (log lines), and the highest session id in the journal.
    private(set) var recoveryLog: [String] = []
    private(set) var maxRecoveredSession: UInt32 = 0
    /// After start: the sessions that own resting orders (from before the restart).
    private(set) var restingOwners = Set<UInt32>()
    private(set) var recoveredDigest: UInt64 = 0
    /// The state digest when the shard stopped (after draining).
    private(set) var finalDigest: UInt64 = 0
    /// Set by the engine to stop; the shard drains what is published, then exits.
    private let stopFlag: UnsafeMutablePointer<UInt32>
    private(set) var placement = ""
    private(set) var startError: String?
    private var thread: pthread_t?
    let started = Semaphore()

    static let maxSessions = 1024
    /// Why the journal is failing now (nil: it works), for the control thread's log. Written
    /// by the shard only when the failure starts, changes or ends: never on the order path.
    private var journalProblem: String?
    private let journalProblemLock = Lock()
    var journalFailure: String? { journalProblemLock.locked { journalProblem } }
    private func setJournalFailure(_ text: String?) {
        journalProblemLock.locked { if journalProblem != text { journalProblem = text } }
    }
    /// Set by the engine when a stop comes during start: recovery stops between batches.
    private let abortStart: UnsafeMutablePointer<UInt32>?
    /// Counts the control thread logs (ShardTally), kept in private memory.
    private let tally: UnsafeMutablePointer<UInt64>

    init(index: Int, core: Int?, symbols: [(spec: SymbolSpec, capacity: BookCapacity)], symbolSlots: [Int],
         engineFile: EngineFile, doorbells: DoorbellFile,
         eventRing: EventRing, wait: WaitStrategy, lagTimeoutNanoseconds: UInt64,
         durability: Durability = .none, journalConfig: JournalConfig? = nil,
         snapshotEvery: UInt64 = 0, snapshots: SnapshotStore? = nil, readOnly: Bool = false,
         describeBooks: Bool = false, abortStart: UnsafeMutablePointer<UInt32>? = nil) {
        self.abortStart = abortStart
        self.readOnly = readOnly
        self.describeBooks = describeBooks
        self.eventRing = eventRing
        self.snapshotEvery = durability == .none ? 0 : snapshotEvery
        self.snapshots = durability == .none ? nil : snapshots
        self.durability = durability
        self.journalConfig = durability == .none ? nil : journalConfig
        self.index = index
        self.core = core
        self.symbols = symbols
        precondition(symbolSlots.count == symbols.count, "one control-file slot per symbol")
        symbolCounters = symbolSlots.map { engineFile.symbolCounters($0) }
        doorbell = doorbells.doorbell(index)
        counters = engineFile.counters(index)
        mailbox = Mailbox(capacity: 256)
        self.wait = wait
        self.lagTimeoutNanoseconds = lagTimeoutNanoseconds
        stopFlag = .allocate(capacity: 1)
        stopFlag.initialize(to: 0)
        tally = .allocate(capacity: ShardTally.count)
        tally.initialize(repeating: 0, count: ShardTally.count)
    }

    deinit {
        stopFlag.deallocate()
        tally.deallocate()
    }

    /// One of the shard's own counts (ShardTally), for the control thread.
    func tallied(_ index: Int) -> UInt64 { cb_load_relaxed_u64(tally + index) }

    func start() {
        let box = Unmanaged.passRetained(self)
        var tid = pthread_t()
        let rc = pthread_create(&tid, nil, { raw in
            let shard = Unmanaged<Shard>.fromOpaque(raw!).takeRetainedValue()
            shard.run()
            return nil
        }, box.toOpaque())
        if rc != 0 {
            box.release()
            startError = "shard \(index): pthread_create failed: errno \(rc)"
            started.signal()
        } else {
            thread = tid
        }
    }

    func stop() {
        cb_store_release_u32(stopFlag, 1)
        doorbell.wakeNow()
    }

    func join() {
        if let thread { pthread_join(thread, nil) }
        thread = nil
    }

    func send(_ message: ShardMessage) -> Bool {
        guard mailbox.push(message) else { return false }
        doorbell.wakeNow()
        return true
    }

    private func run() {
        counters.threadId = cb_thread_id()
        // Placement first: the books are allocated after, on this core's NUMA node.
        var where_ = "shard \(index):"
        if let core {
            let rc = cb_pin_current_thread(Int32(core))
            if rc != 0 {
                startError = "shard \(index): cannot pin to core \(core): \(String(cString: strerror(rc)))"
                started.signal()
                return
            }
            let node = cb_numa_node_of_cpu(Int32(core))
            if node >= 0 { cb_numa_prefer_node(node) }
            where_ += " core \(core), NUMA node \(node >= 0 ? String(node) : "n/a")"
        } else {
            where_ += " not pinned (running on cpu \(cb_current_cpu()))"
        }
        // Books, indexed by symbol id through a dense table.
        let maxId = Int(symbols.map(\.spec.id).max() ?? 0)
        let bookIndex = UnsafeMutablePointer<Int32>.allocate(capacity: maxId + 1)
        bookIndex.initialize(repeating: -1, count: maxId + 1)
        let books = UnsafeMutablePointer<OrderBook>.allocate(capacity: max(symbols.count, 1))
        var created = 0
        func createBooks() {
            for (i, entry) in symbols.enumerated() {
                do {
                    (books + i).initialize(to: try OrderBook(spec: entry.spec, capacity: entry.capacity))
                    bookIndex[Int(entry.spec.id)] = Int32(i)
                    created += 1
                } catch {
                    startError = "shard \(index): symbol \(entry.spec.name): \(error)"
                    break
                }
            }
        }
        createBooks()
        defer {
            for i in 0..<created { (books + i).deinitialize(count: 1) }
            books.deallocate()
            bookIndex.deallocate()
        }
        placement = where_ + ", symbols " + symbols.map(\.spec.name).joined(separator: " ")
        if startError != nil {
            started.signal()
            return
        }

        let inbound = UnsafeMutablePointer<Inbound>.allocate(capacity: Self.maxSessions)
        defer { inbound.deallocate() }
        var inboundCount = 0
        let sessionIndex = UnsafeMutablePointer<Int32>.allocate(capacity: 1 << 16)
        sessionIndex.initialize(repeating: -1, count: 1 << 16)
        defer { sessionIndex.deallocate() }
        let events = UnsafeMutablePointer<EventProducer>.allocate(capacity: 1)
        events.initialize(to: eventRing.producer())
        defer {
            events.deinitialize(count: 1)
            events.deallocate()
        }
        let stagingCapacity = 1 << 16
        let staging = UnsafeMutablePointer<Outgoing>.allocate(capacity: stagingCapacity)
        defer { staging.deallocate() }
        let noSymbol = UnsafeMutablePointer<UInt64>.allocate(capacity: 4)
        noSymbol.initialize(repeating: 0, count: 4)
        defer { noSymbol.deallocate() }
        let symbolWords = UnsafeMutablePointer<UnsafeMutablePointer<UInt64>>.allocate(capacity: max(1, symbols.count))
        for i in symbols.indices { (symbolWords + i).initialize(to: symbolCounters[i].words) }
        defer { symbolWords.deallocate() }
        var sink = ReportSink(inbound: inbound, sessionIndex: sessionIndex, counters: counters,
                              lagTimeoutNanoseconds: lagTimeoutNanoseconds, events: events, stopFlag: stopFlag, tally: tally,
                              staging: staging, stagingCapacity: stagingCapacity, symbolWords: noSymbol)
        var sequence: UInt64 = 0
        var idle = 0
        let maxBatch = 256
        var largestBatch = 0
        var journal: JournalWriter?

        func drainMailbox() {
            while let message = mailbox.pop() {
                switch message {
                case .attach(let session, let commands, let reports):
                    // A new slot, or the slot of a session that is gone (the engine never has more
                    // than maxSessions attached at once: it refuses the next client clearly).
                    // An id handed out again: whatever slot still has it never reads again.
                    let previous = Int(sessionIndex[Int(session)])
                    if previous >= 0 { inbound[previous].active = false }
                    var slot = inboundCount
                    if inboundCount == Self.maxSessions {
                        guard let free = (0..<inboundCount).first(where: { !inbound[$0].active }) else { continue }
                        slot = free
                        // Only if the old session's id still points here (the id may have moved on).
                        let old = Int(inbound[slot].session)
                        if sessionIndex[old] == Int32(slot) { sessionIndex[old] = -1 }
                        inbound[slot] = Inbound(commands: commands, reports: reports, session: session, active: true)
                    } else {
                        (inbound + inboundCount).initialize(to: Inbound(commands: commands, reports: reports,
                                                                         session: session, active: true))
                        inboundCount += 1
                    }
                    sessionIndex[Int(session)] = Int32(slot)
                    counters.add(.sessions)
                case .detach(let session):
                    let i = Int(sessionIndex[Int(session)])
                    if i >= 0 { inbound[i].active = false }
                case .restingOwners(let query):
                    var owners = Set<UInt32>()
                    for b in 0..<created {
                        for side in [Side.buy, .sell] {
                            for order in books[b].orders(side) { owners.insert(UInt32(truncatingIfNeeded: order.orderId >> 48)) }
                        }
                    }
                    query.reply(owners)
                }
            }
        }

        /// One command, live or replayed: decode, check, sequence, match. The same code path for
        /// both, so that a replay rebuilds exactly what the live engine built.
        func process(_ record: UnsafeRawPointer, _ session: UInt32) {
            sequence &+= 1
            sink.sequence = sequence
            sink.issuer = Int(session)
            sink.symbolWords = noSymbol
            if !sink.replaying { counters.add(.commands) }
            let decoded: CommandRecord.Decoded
            do {
                decoded = try CommandRecord.decode(record)
            } catch {
                if !sink.replaying { counters.add(.malformed) }
                sink.symbolId = 0
                sink.clientTime = 0
                let id = CommandRecord.orderId(record)
                sink.on(.rejected(orderId: engineOrderId(session, id & maxClientOrderId), reason: .malformedCommand))
                return
            }
            sink.symbolId = decoded.symbolId
            sink.clientTime = decoded.clientTime
            var command = decoded.command
            let clientId = command.orderId
            guard clientId >= 0, clientId <= maxClientOrderId else {
                sink.on(.rejected(orderId: engineOrderId(session, clientId & maxClientOrderId), reason: .orderIdOutOfRange))
                return
            }
            let symbol = Int(decoded.symbolId)
            let b = symbol <= maxId ? Int(bookIndex[symbol]) : -1
            guard b >= 0 else {
                sink.on(.rejected(orderId: engineOrderId(session, clientId), reason: .unknownSymbol))
                return
            }
            command.orderId = engineOrderId(session, clientId)
            sink.symbolWords = symbolWords[b]
            if !sink.replaying { symbolWords[b][SymbolCounters.commands] &+= 1 }
            books[b].apply(command, to: &sink)
        }

        // The journal record of a command: the 64 bytes as received, the session, the engine time.
        let scratch = UnsafeMutableRawPointer.allocate(byteCount: 80, alignment: 8)
        defer { scratch.deallocate() }

        /// Journals the command about to get the next sequence. False when the journal cannot take
        /// it (disk full, I/O error): the command stays in its ring, untouched.
        func journalAppend(_ record: UnsafeRawPointer, _ session: UInt32) -> Bool {
            guard let journal else { return true }
            if journal.failure != nil { return false }
            scratch.copyMemory(from: record, byteCount: 64)
            scratch.storeBytes(of: session.littleEndian, toByteOffset: 64, as: UInt32.self)
            scratch.storeBytes(of: UInt32(0), toByteOffset: 68, as: UInt32.self)
            scratch.storeBytes(of: sink.engineTime.littleEndian, toByteOffset: 72, as: UInt64.self)
            do {
                // A full buffer is back-pressure from the disk: wait for the batch in flight.
                while try !journal.append(type: 1, sequence: sequence &+ 1,
                                          payload: UnsafeRawBufferPointer(start: scratch, count: 80)) {
                    let durable = journal.poll()
                    if sink.hold { sink.release(upTo: durable) }
                    if journal.failure != nil { return false }
                }
                return true
            } catch {
                // A failed rollover (the writer counts it) or a record too large to journal.
                counters.set(.journalFailures, journal.failureCount)
                return false
            }
        }

        /// One pass over every session's ring; returns how many commands it handled.
        func pass() -> Int {
            var work = 0
            var backlog = 0
            for i in 0..<inboundCount where inbound[i].active {
                let available: Int
                do {
                    available = try inbound[i].commands.poll()
                } catch {
                    inbound[i].active = false
                    inbound[i].reports.markClosed(.ringFault)
                    counters.add(.ringFaults)
                    _ = cb_fetch_add_u64_relaxed(tally + ShardTally.ringFaults, 1)
                    continue
                }
                if available == 0 { continue }
                backlog += available
                let n = min(available, maxBatch)
                let batchStart = monotonicNanoseconds()
                sink.engineTime = realtimeNanoseconds()
                let session = inbound[i].session
                var done = 0
                while done < n {
                    guard journalAppend(inbound[i].commands.slot(done), session) else { break }
                    process(inbound[i].commands.slot(done), session)
                    done += 1
                }
                inbound[i].commands.release(done)
                work += done
                if done == 0 { continue }
                cb_histogram_record(counters.matchLatency, monotonicNanoseconds() &- batchStart)
                counters.add(.batches)
                counters.addBatch(done)
                if done > largestBatch {
                    largestBatch = done
                    counters.set(.largestBatch, UInt64(done))
                }
                if done < n { break }  // the journal refused: stop taking commands
            }
            counters.set(.backlog, UInt64(backlog))
            if let journal {
                let durable = journal.poll()
                if sink.hold { sink.release(upTo: durable) }
                counters.set(.durableSequence, durable)
                counters.set(.journalFailures, journal.failureCount)
                counters.set(.journalBatches, journal.durableBatches)
                counters.set(.journalBytes, journal.durableBytes)
            }
            if sink.published > 0 {
                events.pointee.wakeConsumers()
                sink.published = 0
            }
            return work
        }

        func allEmpty() -> Bool {
            if !mailbox.isEmpty || cb_load_acquire_u32(stopFlag) != 0 { return false }
            // Output waiting for the disk: io_uring completions ring no doorbell, so keep polling.
            if sink.stagedHead != sink.stagedTail { return false }
            for i in 0..<inboundCount where inbound[i].active {
                if ((try? inbound[i].commands.poll()) ?? 0) > 0 { return false }
            }
            return true
        }

        var lastSnapshot: UInt64 = 0
        var pendingSnapshot: (sequence: UInt64, body: [UInt8])?
        let writer = snapshots.map { SnapshotWriter(store: $0, shard: index, counters: counters) }
        defer { writer?.finish() }

        /// A snapshot body: its binding to the journal (SnapshotBinding: magic, the journal's id,
        /// the sequence, the CRC32C of the journal's record at that sequence), the highest session
        /// id (u32), the book count (u32), then per book its symbol id (u32), length (u32) and
        /// OrderBook.snapshot() bytes.
        func snapshotBody() -> [UInt8] {
            var body = SnapshotBinding(journalId: journal?.journalId ?? 0, sequence: sequence,
                                       recordCRC: journal?.lastRecordCRC ?? 0).bytes
            var highest = maxRecoveredSession
            for i in 0..<inboundCount { highest = max(highest, inbound[i].session) }
            withUnsafeBytes(of: highest.littleEndian) { body.append(contentsOf: $0) }
            withUnsafeBytes(of: UInt32(created).littleEndian) { body.append(contentsOf: $0) }
            for b in 0..<created {
                let bytes = books[b].snapshot()
                withUnsafeBytes(of: books[b].symbolId.littleEndian) { body.append(contentsOf: $0) }
                withUnsafeBytes(of: UInt32(bytes.count).littleEndian) { body.append(contentsOf: $0) }
                body.append(contentsOf: bytes)
            }
            return body
        }

        func restoreBooks(_ body: [UInt8]) throws {
            guard body.count >= 8 else { throw EngineError("snapshot body too short") }
            let count = body.withUnsafeBytes { Int(UInt32(littleEndian: $0.loadUnaligned(fromByteOffset: 4, as: UInt32.self))) }
            guard count == created else { throw EngineError("snapshot of \(count) books, this shard has \(created)") }
            var offset = 8
            for _ in 0..<count {
                guard offset + 8 <= body.count else { throw EngineError("snapshot body truncated") }
                let (symbol, length) = body.withUnsafeBytes {
                    (UInt32(littleEndian: $0.loadUnaligned(fromByteOffset: offset, as: UInt32.self)),
                     Int(UInt32(littleEndian: $0.loadUnaligned(fromByteOffset: offset + 4, as: UInt32.self))))
                }
                offset += 8
                guard offset + length <= body.count, Int(symbol) <= maxId, bookIndex[Int(symbol)] >= 0 else {
                    throw EngineError("snapshot names symbol \(symbol), which this shard does not own")
                }
                try books[Int(bookIndex[Int(symbol)])].restore(from: Array(body[offset..<(offset + length)]))
                offset += length
            }
        }

        // Recovery: every journaled command again, through the same code path, sending nothing.
        if let config = journalConfig {
            let recoveryStart = monotonicNanoseconds()
            sink.replaying = true
            var maxSession: UInt32 = 0
            // The newest snapshot that loads and restores whole; an older one if it does not.
            var base: UInt64 = 0
            if let store = snapshots {
                for candidate in store.list(shard: index) {
                    do {
                        let (at, stored) = try store.load(shard: index, name: candidate.name)
                        // Only a snapshot of this journal, at a sequence it holds, with the same record there.
                        let body = try SnapshotBinding.check(stored, at: at, directory: config.directory, shard: index)
                        try restoreBooks(body)
                        base = at
                        maxSession = body.withUnsafeBytes { UInt32(littleEndian: $0.loadUnaligned(as: UInt32.self)) }
                        recoveryLog.append("shard \(index): loaded snapshot \(candidate.name) (sequence \(at))")
                        break
                    } catch {
                        recoveryLog.append("shard \(index): snapshot \(candidate.name) unusable (\(error)); trying an older one")
                        for b in 0..<created { (books + b).deinitialize(count: 1) }
                        created = 0
                        createBooks()
                    }
                }
            }
            lastSnapshot = base
            let scanned: JournalScan
            var replayed = 0
            do {
                let abort = abortStart, stop = stopFlag
                scanned = try JournalReader.scan(directory: config.directory, shard: index, repair: !readOnly, after: base,
                                                 interrupted: { cb_load_acquire_u32(stop) != 0 || abort.map { cb_load_acquire_u32($0) != 0 } ?? false }) { type, seq, payload in
                    replayed += 1
                    guard type == 1, payload.count == 80 else { return }
                    let session = UInt32(littleEndian: payload.loadUnaligned(fromByteOffset: 64, as: UInt32.self))
                    maxSession = max(maxSession, session)
                    sink.engineTime = UInt64(littleEndian: payload.loadUnaligned(fromByteOffset: 72, as: UInt64.self))
                    sequence = seq &- 1
                    process(payload.baseAddress!, session)
                }
            } catch .interrupted(let at) {
                startError = "shard \(index): recovery stopped at sequence \(at): the engine was asked to stop"
                started.signal()
                return
            } catch {
                startError = "shard \(index): recovery failed: \(error)"
                started.signal()
                return
            }
            sink.replaying = false
            sequence = max(scanned.lastSequence, base)
            maxRecoveredSession = maxSession
            // Whose orders rest in the books: their session ids are not handed out again.
            for b in 0..<created {
                for side in [Side.buy, .sell] {
                    for order in books[b].orders(side) { restingOwners.insert(UInt32(truncatingIfNeeded: order.orderId >> 48)) }
                }
            }
            if let torn = scanned.truncated {
                recoveryLog.append("shard \(index): cut a torn last batch (never acknowledged) at \(torn.path) offset \(torn.offset)\(readOnly ? " (read-only: left on disk)" : "; everything after it zeroed")")
            }
            if let unfinished = scanned.unfinishedSegment {
                recoveryLog.append("shard \(index): \(readOnly ? "ignored" : "removed") \(unfinished), a segment whose creation never completed (it held no record)")
            }
            var digest: UInt64 = 0xCBF2_9CE4_8422_2325
            for b in 0..<created { digest = (digest ^ books[b].digest) &* 0x0000_0100_0000_01B3 }
            recoveredDigest = digest
            let seconds = Double(monotonicNanoseconds() - recoveryStart) / 1e9
            let rate = 0
            let replayRate = seconds > 0 ? Int(Double(replayed) / seconds) : 0
            _ = rate
            recoveryLog.append("shard \(index): recovered \(base > 0 ? "from the snapshot at \(base) and " : "")\(replayed) journaled commands (up to sequence \(sequence)) in \(Int(seconds * 1000)) ms (\(replayRate) records/s), state digest \(String(digest, radix: 16))")
            if describeBooks {
                for b in 0..<created {
                    let name = symbols[b].spec.name
                    let bids = books[b].depth(.buy), asks = books[b].depth(.sell)
                    recoveryLog.append("BOOK,\(name),bids=\(bids.count),asks=\(asks.count)")
                    for level in asks.reversed() { recoveryLog.append("ASK,\(name),\(level.price),\(level.quantity),\(level.orders)") }
                    for level in bids { recoveryLog.append("BID,\(name),\(level.price),\(level.quantity),\(level.orders)") }
                }
            }
            if readOnly {
                started.signal()
                return
            }
            do {
                journal = try JournalWriter(config: config, lastSequence: sequence,
                                            resume: scanned.resume)
            } catch {
                startError = "shard \(index): cannot open the journal: \(error)"
                started.signal()
                return
            }
            journal?.syncHistogram = counters.syncLatency
            journal?.batchHistogram = counters.journalBatchCommands
            sink.hold = durability == .sync
            sink.journal = journal
        }
        started.signal()

        var nextJournalRetry: UInt64 = 0
        var lastReportedFailure: JournalError?
        while cb_load_acquire_u32(stopFlag) == 0 {
            if !mailbox.isEmpty { drainMailbox() }
            if let journal, journal.failure != nil {
                // The disk refused: take no command until what failed has been done again and
                // worked (the failure stays set while a retry is in flight); try every 100 ms.
                counters.set(.journalFailed, 1)
                if let failure = journal.failure, lastReportedFailure != failure {
                    lastReportedFailure = failure
                    setJournalFailure("\(failure)")
                }
                let now = monotonicNanoseconds()
                if now >= nextJournalRetry {
                    journal.retry()
                    nextJournalRetry = now + 100_000_000
                } else {
                    journal.poll()  // completions of a retry in flight; submits nothing while failing
                }
                counters.set(.journalFailures, journal.failureCount)
                if journal.failure != nil {
                    // Not the doorbell: clients ringing it must not turn the retries into a spin.
                    // Short sleeps, so that a stop is seen within 10 ms.
                    var pause = timespec(tv_sec: 0, tv_nsec: Int(min(10_000_000, nextJournalRetry &- monotonicNanoseconds())))
                    if pause.tv_nsec > 0 { nanosleep(&pause, nil) }
                    continue
                }
            } else if journal != nil {
                counters.set(.journalFailed, 0)
                if lastReportedFailure != nil {
                    lastReportedFailure = nil
                    setJournalFailure(nil)
                }
            }
            if snapshotEvery > 0 && pendingSnapshot == nil && sequence &- lastSnapshot >= snapshotEvery {
                // The shard pauses for the copy only; the writing happens on another thread.
                let t0 = monotonicNanoseconds()
                pendingSnapshot = (sequence, snapshotBody())
                counters.set(.snapshotPauseMicros, (monotonicNanoseconds() - t0) / 1000)
                lastSnapshot = sequence
            }
            // A snapshot goes to disk only once the journal holds everything before it.
            if let pending = pendingSnapshot, let journal, journal.durable >= pending.sequence {
                writer?.submit(sequence: pending.sequence, body: pending.body)
                pendingSnapshot = nil
            }
            if pass() > 0 {
                idle = 0
                continue
            }
            idle += 1
            if sink.stagedHead != sink.stagedTail {
                // Staged output: poll the journal's completions rather than sleep.
                idle = min(idle, wait.spins)
            }
            if idle < wait.spins {
                cb_cpu_relax()
            } else if idle < wait.spins + wait.yields {
                sched_yield()
            } else if wait.park {
                counters.add(.parks)
                doorbell.park(timeoutNanoseconds: wait.parkTimeoutNanoseconds, stillIdle: allEmpty)
                idle = 0
            }
        }
        // Stop: take in the last sessions and handle everything already published.
        drainMailbox()
        while pass() > 0 {}
        if let journal {
            try? journal.flush()
            if sink.hold { sink.release(upTo: journal.durable) }
        }
        var digest: UInt64 = 0xCBF2_9CE4_8422_2325
        for b in 0..<created { digest = (digest ^ books[b].digest) &* 0x0000_0100_0000_01B3 }
        finalDigest = digest
    }
}

/// A bounded single-producer single-consumer queue between two threads of this process.
final class Mailbox<T>: @unchecked Sendable {
    private let slots: UnsafeMutablePointer<T?>
    private let capacity: UInt64
    private let head: UnsafeMutablePointer<UInt64>  // written by the producer
    private let tail: UnsafeMutablePointer<UInt64>  // written by the consumer

    init(capacity: Int) {
        self.capacity = UInt64(capacity)
        slots = .allocate(capacity: capacity)
        slots.initialize(repeating: nil, count: capacity)
        head = .allocate(capacity: 1)
        head.initialize(to: 0)
        tail = .allocate(capacity: 1)
        tail.initialize(to: 0)
    }

    deinit {
        slots.deinitialize(count: Int(capacity))
        slots.deallocate()
        head.deallocate()
        tail.deallocate()
    }

    func push(_ value: T) -> Bool {
        let h = head.pointee
        // Acquire: the consumer has finished with the slot it released.
        guard h &- cb_load_acquire_u64(tail) < capacity else { return false }
        slots[Int(h % capacity)] = value
        // Release: the value is written before the consumer can see the new head.
        cb_store_release_u64(head, h &+ 1)
        return true
    }

    func pop() -> T? {
        let t = tail.pointee
        // Acquire pairs with push's release.
        guard t != cb_load_acquire_u64(head) else { return nil }
        let value = slots[Int(t % capacity)]
        slots[Int(t % capacity)] = nil
        cb_store_release_u64(tail, t &+ 1)
        return value
    }

    var isEmpty: Bool { cb_load_acquire_u64(head) == tail.pointee }
}

/// A counting semaphore for start-up handshakes between threads (not on any hot path).
final class Semaphore: @unchecked Sendable {
    private var value = sem_t()

    init() { sem_init(&value, 0, 0) }
    deinit { sem_destroy(&value) }

    func signal() { sem_post(&value) }

    func wait() {
        while sem_wait(&value) != 0 && errno == EINTR {}
    }

    /// False when `seconds` passed first.
    func wait(seconds: Double) -> Bool {
        var deadline = timespec()
        clock_gettime(CLOCK_REALTIME, &deadline)
        let nanos = Int(deadline.tv_nsec) + Int(seconds * 1e9)
        deadline.tv_sec += nanos / 1_000_000_000
        deadline.tv_nsec = nanos % 1_000_000_000
        while true {
            if sem_timedwait(&value, &deadline) == 0 { return true }
            if errno != EINTR { return false }
        }
    }
}

/// Writes a shard's snapshots on a thread of its own: the shard hands over bytes and goes on.
final class SnapshotWriter: @unchecked Sendable {
    let store: SnapshotStore
    let shard: Int
    let counters: ShardCounters
    private var queue: [(UInt64, [UInt8])] = []
    private var done = false
    private let lock = Lock()
    private let wake = Semaphore()
    private let finished = Semaphore()

    init(store: SnapshotStore, shard: Int, counters: ShardCounters) {
        self.store = store
        self.shard = shard
        self.counters = counters
        let thread = Thread { [self] in run() }
        thread.name = "crossbook-snapshots-\(shard)"
        thread.start()
    }

    func submit(sequence: UInt64, body: [UInt8]) {
        lock.locked { queue.append((sequence, body)) }
        wake.signal()
    }

    /// Writes what is queued, then stops.
    func finish() {
        lock.locked { done = true }
        wake.signal()
        finished.wait()
    }

    private func run() {
        while true {
            wake.wait()
            while let (sequence, body) = lock.locked({ queue.isEmpty ? nil : queue.removeFirst() }) {
                do {
                    try store.save(shard: shard, sequence: sequence, body: body)
                    counters.add(.snapshots)
                    counters.set(.lastSnapshotSequence, sequence)
                } catch {
                    counters.add(.snapshotFailures)
                }
            }
            if lock.locked({ done }) { break }
        }
        finished.signal()
    }
}

