// A shard's output: execution reports to the owners of orders, market data to the shard's
// event ring, and the gate that holds both until the command they come from is durable (sync
// mode). It knows nothing of sequencing or of the journal's writing: each event comes with the
// context of its command, and the gate is told how far the journal is durable (`release`). The
// one thing it asks of the journal is to wait for the disk when its staging area is full.

import CSync
import Journal
import OrderBook
import SharedMemory
import Wire

/// A report or market event waiting for its command to be durable (sync mode).
struct Outgoing {
    var sequence: UInt64
    /// A session's index in the session table, -1 for the event ring, -2 for the drop-copy ring.
    var target: Int
    /// The session the report is for: a slot of the session table is reused once its session is
    /// gone, and a report staged for the old one must not reach the new one.
    var session: UInt32 = 0
    var record: (UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64)
}

/// What every event of one command is sent with: its sequence, its session, the engine time of
/// its batch, its symbol and the client's time.
struct EventContext {
    let command: CommandContext
    var symbolId: UInt32 = 0
    var clientTime: UInt64 = 0
    /// The counters of the command's symbol (SymbolCounters words), or a scratch block for a
    /// command with no symbol.
    var symbolWords: UnsafeMutablePointer<UInt64>
    /// The command's order (engine id) and its account, and the resting order the book named
    /// last with its account (BookEventSink.account): the accounts of drop copies.
    var orderId: OrderId = -1
    var account: UInt32 = 0
    var otherId: OrderId = -1
    var otherAccount: UInt32 = 0

    @inline(__always)
    func account(of id: OrderId) -> UInt32 { id == orderId ? account : id == otherId ? otherAccount : 0 }
}

/// The book's events of one command, with that command's context, into the output gate.
struct CommandSink: BookEventSink {
    let output: UnsafeMutablePointer<OutputGate>
    var context: EventContext

    @inline(__always)
    mutating func on(_ event: BookEvent) {
        // Replaying with nothing to collect: not even a call (recovery replays millions).
        if output.pointee.silent { return }
        output.pointee.on(event, context)
    }

    @inline(__always)
    mutating func account(_ account: AccountId, of orderId: OrderId) {
        if orderId == context.orderId {
            context.account = account
        } else {
            context.otherId = orderId
            context.otherAccount = account
        }
    }
}

/// What a regeneration collects (a read-only replay for an egress that resumes after a crash):
/// the 64-byte records the shard would have written, market events and drop copies.
final class OutputCollector: @unchecked Sendable {
    var market: [UInt8] = []
    var executions: [UInt8] = []
}

/// The drop-copy record: a report as its owner gets it, with the owner's session (u32) and the
/// order's account (u32) in place of the client time (bytes 56-63).
enum DropCopy {
    static let sessionOffset = 56
}

/// Reports, market data, and the durability gate of one shard.
struct OutputGate {
    let sessions: SessionSlots
    let counters: ShardCounters
    let lagTimeoutNanoseconds: UInt64
    /// The shard's event ring (market data), one producer: this shard.
    let events: UnsafeMutablePointer<EventProducer>
    /// The shard's stop flag: every wait on a client or consumer gives up when it is set.
    let stopFlag: UnsafeMutablePointer<UInt32>
    /// The shard's own count of the events the control thread logs (ShardTally), in private
    /// memory: the counters region is output only.
    let tally: UnsafeMutablePointer<UInt64>
    /// Market events written since the consumers were last woken.
    var published = 0
    /// Replaying the journal at start: the books change, nothing is sent, nothing counted.
    var replaying = false {
        didSet { silent = replaying && collector == nil }
    }
    /// Replaying with no collector: the book's events are not even looked at.
    private(set) var silent = false
    /// Sync mode: everything waits in `staging` until the journal's durable watermark covers it.
    var hold = false
    let staging: UnsafeMutablePointer<Outgoing>
    let stagingCapacity: Int
    var stagedHead = 0
    var stagedTail = 0
    /// Sync mode: the journal to wait on when `staging` is full.
    var disk: JournalWriter?
    /// Sync replication (Replication/): nothing above what a standby has confirmed durable is
    /// released. nil: local durability is enough.
    var replicatedCap: UnsafeMutablePointer<UInt64>?
    /// Leadership (Replication/Lease.swift): nothing is released at or after this monotonic
    /// time, the end of the lease as this engine must assume it. nil: no lease.
    var leaseUntil: UnsafeMutablePointer<UInt64>?
    /// The private drop-copy ring (nil: no egress asked for it): every execution report, whoever
    /// it is for, even a session that is gone. In this process's memory only.
    let executions: UnsafeMutablePointer<EventProducer>?
    var executionsPublished = 0
    /// Regeneration: while replaying, the records of commands above `collectAfter` are collected.
    var collector: OutputCollector? {
        didSet { silent = replaying && collector == nil }
    }
    var collectAfter: UInt64 = .max

    /// To name the owner shard of a symbol in a `symbol_moved` reject.
    let routes: RouteTable?

    init(sessions: SessionSlots, counters: ShardCounters, lagTimeoutNanoseconds: UInt64, eventRing: EventRing,
         stopFlag: UnsafeMutablePointer<UInt32>, tally: UnsafeMutablePointer<UInt64>, executionRing: EventRing? = nil,
         routes: RouteTable? = nil, stagingCapacity: Int = 1 << 16) {
        self.routes = routes
        self.sessions = sessions
        self.counters = counters
        self.lagTimeoutNanoseconds = lagTimeoutNanoseconds
        events = cacheAligned(EventProducer.self, count: 1)
        events.initialize(to: eventRing.producer())
        if let executionRing {
            let producer = cacheAligned(EventProducer.self, count: 1)
            producer.initialize(to: executionRing.producer())
            executions = producer
        } else {
            executions = nil
        }
        self.stopFlag = stopFlag
        self.tally = tally
        self.stagingCapacity = stagingCapacity
        staging = cacheAligned(Outgoing.self, count: stagingCapacity)
    }

    /// Frees what `init` allocated (the owner calls it once, when the shard ends).
    func deallocate() {
        events.deinitialize(count: 1)
        events.deallocate()
        if let executions {
            executions.deinitialize(count: 1)
            executions.deallocate()
        }
        staging.deallocate()
    }

    var hasStaged: Bool { stagedHead != stagedTail }

    mutating func on(_ event: BookEvent, _ c: EventContext) {
        // Replaying: nothing is sent and nothing counted, so nothing to build (unless collected).
        if replaying {
            guard collector != nil, c.command.sequence > collectAfter else { return }
        }
        let sequence = c.command.sequence, engineTime = c.command.engineTime, symbolId = c.symbolId
        switch event {
        case .accepted(let id, let side, let price, let quantity):
            report(owner(id), sequence, .init(kind: .accepted, side: side, symbolId: symbolId, engineSequence: sequence,
                                            orderId: clientOrderId(id), price: price, quantity: quantity, open: quantity,
                                            engineTime: engineTime, clientTime: c.clientTime), account: c.account(of: id))
        case .rejected(let id, let reason):
            if !replaying {
                counters.add(.rejects)
                counters.addReject(reason.rawValue)
                c.symbolWords[SymbolCounters.rejects] &+= 1
            }
            // symbol_moved: the owner shard now in the price field (-1: unknown).
            let owner: Int64 = reason == .symbolMoved ? Int64(routes?.shard(of: symbolId) ?? -1) : 0
            report(Int(c.command.session), sequence,
                 .init(kind: .rejected, code: reason.rawValue, symbolId: symbolId, engineSequence: sequence,
                       orderId: clientOrderId(id), price: owner, engineTime: engineTime, clientTime: c.clientTime),
                 account: c.account(of: id))
        case .trade(let maker, let taker, let takerSide, let price, let quantity, let makerOpen, let takerOpen):
            if !replaying {
                counters.add(.trades)
                c.symbolWords[SymbolCounters.trades] &+= 1
                c.symbolWords[SymbolCounters.tradedQuantity] &+= UInt64(truncatingIfNeeded: quantity)
            }
            publish(sequence, .init(kind: .trade, side: takerSide, symbolId: symbolId, engineSequence: sequence, price: price,
                                    quantity: quantity, engineTime: engineTime))
            report(owner(maker), sequence, .init(kind: .trade, side: takerSide.opposite, code: 1, symbolId: symbolId,
                                               engineSequence: sequence, orderId: clientOrderId(maker), price: price,
                                               quantity: quantity, open: makerOpen, engineTime: engineTime), account: c.account(of: maker))
            report(owner(taker), sequence, .init(kind: .trade, side: takerSide, code: 0, symbolId: symbolId,
                                               engineSequence: sequence, orderId: clientOrderId(taker), price: price,
                                               quantity: quantity, open: takerOpen, engineTime: engineTime), account: c.account(of: taker))
        case .cancelled(let id, let quantity, let open, let reason):
            report(owner(id), sequence, .init(kind: .cancelled, code: reason.rawValue, symbolId: symbolId, engineSequence: sequence,
                                            orderId: clientOrderId(id), quantity: quantity, open: open,
                                            engineTime: engineTime, clientTime: reason == .user ? c.clientTime : 0), account: c.account(of: id))
        case .replaced(let id, let price, let quantity, let kept):
            report(owner(id), sequence, .init(kind: .replaced, code: kept ? 1 : 0, symbolId: symbolId, engineSequence: sequence,
                                            orderId: clientOrderId(id), price: price, quantity: quantity, open: quantity,
                                            engineTime: engineTime, clientTime: c.clientTime), account: c.account(of: id))
        case .level(let side, let price, let quantity, let orders):
            publish(sequence, .init(kind: .level, side: side, symbolId: symbolId, engineSequence: sequence, price: price,
                                    quantity: quantity, orders: Int64(orders), engineTime: engineTime))
        }
    }

    /// A report to its owner, and its drop copy when an egress asked for them.
    @inline(__always)
    mutating func report(_ ownerSession: Int, _ sequence: UInt64, _ report: ReportRecord.Report, account: UInt32) {
        if executions != nil || replaying { dropCopy(ownerSession, sequence, report, account: account) }
        send(ownerSession, sequence, report)
    }

    /// Writes a report's drop copy (DropCopy), stages it (sync mode) or collects it (regeneration).
    mutating func dropCopy(_ ownerSession: Int, _ sequence: UInt64, _ report: ReportRecord.Report, account: UInt32) {
        var out = Outgoing(sequence: sequence, target: -2, record: (0, 0, 0, 0, 0, 0, 0, 0))
        withUnsafeMutableBytes(of: &out.record) {
            ReportRecord.encode(report, to: $0.baseAddress!)
            $0.storeBytes(of: UInt32(truncatingIfNeeded: ownerSession).littleEndian, toByteOffset: DropCopy.sessionOffset, as: UInt32.self)
            $0.storeBytes(of: account.littleEndian, toByteOffset: DropCopy.sessionOffset + 4, as: UInt32.self)
        }
        if replaying {
            withUnsafeBytes(of: &out.record) { collector?.executions.append(contentsOf: $0) }
            return
        }
        guard let executions else { return }
        if hold { return stage(out) }
        withUnsafeBytes(of: &out.record) { claim(executions).copyMemory(from: $0.baseAddress!, byteCount: 64) }
        executions.pointee.publish()
        executionsPublished += 1
    }

    /// Writes a market data event, or stages it (sync mode).
    mutating func publish(_ sequence: UInt64, _ event: MarketEventRecord.Event) {
        if replaying {
            var record: (UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64) = (0, 0, 0, 0, 0, 0, 0, 0)
            withUnsafeMutableBytes(of: &record) { MarketEventRecord.encode(event, to: $0.baseAddress!) }
            withUnsafeBytes(of: &record) { collector?.market.append(contentsOf: $0) }
            return
        }
        if hold {
            var out = Outgoing(sequence: sequence, target: -1, record: (0, 0, 0, 0, 0, 0, 0, 0))
            withUnsafeMutableBytes(of: &out.record) { MarketEventRecord.encode(event, to: $0.baseAddress!) }
            stage(out)
            return
        }
        MarketEventRecord.encode(event, to: eventSlot())
        events.pointee.publish()
        published += 1
    }

    /// Claims a slot in the event ring: a full ring waits for the slowest consumer; past the lag
    /// timeout, consumers that may be detached (or are gone) are detached; on stop, all of them.
    @inline(__always)
    func eventSlot() -> UnsafeMutableRawPointer { claim(events) }

    /// Claims a slot in an event ring (market data or drop copies), as `eventSlot` says.
    func claim(_ events: UnsafeMutablePointer<EventProducer>) -> UnsafeMutableRawPointer {
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

    /// Writes a report to a session, or stages it (sync mode). Reports to a session that is gone
    /// are dropped.
    mutating func send(_ sessionId: Int, _ sequence: UInt64, _ report: ReportRecord.Report) {
        if replaying { return }
        let index = Int(sessions.index[sessionId])
        guard index >= 0, sessions.inbound[index].active else { return }
        if hold {
            var out = Outgoing(sequence: sequence, target: index, session: sessions.inbound[index].session,
                               record: (0, 0, 0, 0, 0, 0, 0, 0))
            withUnsafeMutableBytes(of: &out.record) { ReportRecord.encode(report, to: $0.baseAddress!) }
            stage(out)
            return
        }
        guard let slot = reportSlot(index) else { return }
        ReportRecord.encode(report, to: slot)
        sessions.inbound[index].reports.publish(1)
    }

    /// Queues an outgoing record until its command is durable. Full: wait for the disk (the batch
    /// holding the oldest staged command is in flight or submitted by poll).
    mutating func stage(_ out: Outgoing) {
        while stagedHead - stagedTail == stagingCapacity {
            guard let disk else { break }
            release(upTo: disk.poll())
            if disk.failing || cb_load_acquire_u32(stopFlag) != 0 { break }  // nothing will be durable: drop the oldest
            if stagedHead - stagedTail == stagingCapacity { cb_cpu_relax() }
        }
        if stagedHead - stagedTail == stagingCapacity { stagedTail += 1 }
        staging[stagedHead % stagingCapacity] = out
        stagedHead += 1
    }

    /// Half the staging area waits: stop taking commands until it drains.
    var backlogged: Bool { stagedHead - stagedTail > stagingCapacity / 2 }

    /// The lease's deadline has passed (in doubt, or lost for good): nothing is released, and
    /// the shard takes no command either (fencing stops intake, not only acknowledgements:
    /// nothing is journaled here that the next primary does not have).
    var leaseExpired: Bool {
        guard let leaseUntil else { return false }
        return monotonicNanoseconds() >= cb_load_acquire_u64(leaseUntil)
    }

    /// Sends everything staged whose command is durable.
    mutating func release(upTo durable: UInt64) {
        guard stagedTail < stagedHead else { return }
        var durable = durable
        if let replicatedCap { durable = min(durable, cb_load_acquire_u64(replicatedCap)) }
        if let leaseUntil, monotonicNanoseconds() >= cb_load_acquire_u64(leaseUntil) { return }
        while stagedTail < stagedHead {
            let out = staging[stagedTail % stagingCapacity]
            if out.sequence > durable { break }
            stagedTail += 1
            // The record was encoded when staged: copy its 64 bytes, do not decode and encode again.
            var record = out.record
            withUnsafeBytes(of: &record) { raw in
                if out.target == -1 {
                    eventSlot().copyMemory(from: raw.baseAddress!, byteCount: 64)
                    events.pointee.publish()
                    published += 1
                } else if out.target == -2, let executions {
                    claim(executions).copyMemory(from: raw.baseAddress!, byteCount: 64)
                    executions.pointee.publish()
                    executionsPublished += 1
                } else if out.target >= 0, sessions.inbound[out.target].session == out.session, let slot = reportSlot(out.target) {
                    slot.copyMemory(from: raw.baseAddress!, byteCount: 64)
                    sessions.inbound[out.target].reports.publish(1)
                }
            }
        }
    }

    /// Wakes the event ring's consumers if anything was published since the last time.
    mutating func wakeConsumers() {
        if published > 0 {
            events.pointee.wakeConsumers()
            published = 0
        }
        if executionsPublished > 0, let executions {
            executions.pointee.wakeConsumers()
            executionsPublished = 0
        }
    }

    /// Claims a slot in a session's report ring; a full ring is back-pressure up to the lag
    /// timeout, then the session is detached (nil).
    func reportSlot(_ index: Int) -> UnsafeMutableRawPointer? {
        let inbound = sessions.inbound
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
