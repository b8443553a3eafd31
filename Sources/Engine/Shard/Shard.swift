// A shard: one thread, pinned to one core, owning the books of its symbols. It polls the
// command rings of its sessions, sequences each command, journals it, matches it, and writes
// execution reports into the report ring of each order's owner. Nothing on its loop locks,
// allocates or makes a syscall per command; it sleeps on its doorbell only when it has been
// idle a while.
//
// This file is the thread and its loop (waiting, journal failures, snapshot timing); the state
// the loop drives is `ShardState` (ShardState.swift), recovery is Recovery.swift, the output
// gate OutputGate.swift, the sequencer Sequencer.swift.

import CNuma
import CSync
import Foundation
import Glibc
import Journal
import OrderBook
import SharedMemory
import Wire

/// When a command's reports and market data may leave the shard.
public enum Durability: String, Sendable, CaseIterable {
    /// Only once the command is on disk (fdatasync): nothing acknowledged is ever lost.
    case sync
    /// At once; the journal is written behind.
    case async
    /// No journal.
    case none
}

/// The counts a shard keeps in private memory for the control thread's log lines.
enum ShardTally {
    static let lagDetaches = 0
    static let eventDetaches = 1
    static let ringFaults = 2
    /// The highest sequence on disk (for the control thread: the counters region is output only).
    static let durable = 3
    /// The highest sequence written to the journal's file, maybe not yet on disk (replication
    /// sends it ahead of the fdatasync).
    static let written = 4
    static let count = 5
}

/// A shard's thread, its settings, and what it tells the engine. Its state lives on its thread
/// (`ShardState`, a local of `run`); the mailbox and the stop flag are the exceptions, each
/// with its own synchronization.
final class Shard: @unchecked Sendable {
    let index: Int
    let core: Int?
    /// Every symbol of the instance (a symbol can move here), and which are the shard's at its
    /// first start.
    let symbols: [(spec: SymbolSpec, capacity: BookCapacity)]
    /// Pools its books share (nil: each book its own).
    let pools: BookCapacity?
    let owned: [Bool]
    let routes: RouteTable?
    /// Each symbol's counters in the control file (same order as `symbols`).
    let symbolCounters: [SymbolCounters]
    /// The instance's symbols (listings at run time), and a listed slot's counters.
    let directory: InstanceSymbols?
    let listingCapacity: BookCapacity?
    let countersOf: (Int) -> SymbolCounters
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
    /// The private drop-copy ring (nil: off).
    let executionRing: EventRing?
    /// Regeneration (a read-only replay): collect the output of the commands above this.
    private let regenerateAfter: UInt64?
    /// A standby's shard: it applies what this inbox brings (Replica.swift) until promoted.
    let replica: ReplicaInbox?
    /// The replication threads that sleep until this shard's journal moves (kept alive here:
    /// the shard's thread tells them until it ends).
    let wakers: JournalWakers?
    /// Sync replication and leadership limit what the output gate releases (OutputGate.swift).
    private let replicatedCap: UnsafeMutablePointer<UInt64>?
    private let leaseUntil: UnsafeMutablePointer<UInt64>?
    private let ingressPause: UnsafeMutablePointer<UInt32>?
    /// What the regeneration collected, and the last sequence the replay reached.
    private(set) var collected: OutputCollector?
    private(set) var recoveredLast: UInt64 = 0
    /// After recovery: each ingress source's last bound session (Ingress.swift).
    private(set) var sourceSessions: [String: UInt32] = [:]
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

    /// The engine's log (the snapshot writer says why a snapshot was not stored).
    private let log: @Sendable (String) -> Void

    init(index: Int, core: Int?, pools: BookCapacity? = nil, symbols: [(spec: SymbolSpec, capacity: BookCapacity)], owned: [Bool]? = nil,
         routes: RouteTable? = nil, symbolSlots: [Int], directory: InstanceSymbols? = nil, listingCapacity: BookCapacity? = nil,
         engineFile: EngineFile, doorbells: DoorbellFile,
         eventRing: EventRing, wait: WaitStrategy, lagTimeoutNanoseconds: UInt64,
         durability: Durability = .none, journalConfig: JournalConfig? = nil,
         snapshotEvery: UInt64 = 0, snapshots: SnapshotStore? = nil, readOnly: Bool = false,
         describeBooks: Bool = false, abortStart: UnsafeMutablePointer<UInt32>? = nil,
         executionRing: EventRing? = nil, regenerateAfter: UInt64? = nil,
         replica: ReplicaInbox? = nil, replicatedCap: UnsafeMutablePointer<UInt64>? = nil,
         leaseUntil: UnsafeMutablePointer<UInt64>? = nil, ingressPause: UnsafeMutablePointer<UInt32>? = nil,
         wakers: JournalWakers? = nil,
         log: @escaping @Sendable (String) -> Void = { _ in }) {
        self.log = log
        self.wakers = wakers
        self.ingressPause = ingressPause
        self.replica = replica
        self.replicatedCap = replicatedCap
        self.leaseUntil = leaseUntil
        self.executionRing = executionRing
        self.regenerateAfter = regenerateAfter
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
        self.pools = pools
        self.owned = owned ?? symbols.map { _ in true }
        self.routes = routes
        precondition(symbolSlots.count == symbols.count, "one control-file slot per symbol")
        symbolCounters = symbolSlots.map { engineFile.symbolCounters($0) }
        self.directory = directory
        self.listingCapacity = listingCapacity
        countersOf = { [engineFile] slot in engineFile.symbolCounters(slot) }
        doorbell = doorbells.doorbell(index)
        counters = engineFile.counters(index)
        mailbox = Mailbox(capacity: 256)
        self.wait = wait
        self.lagTimeoutNanoseconds = lagTimeoutNanoseconds
        stopFlag = cacheAligned(UInt32.self, count: 1)
        stopFlag.initialize(to: 0)
        tally = cacheAligned(UInt64.self, count: ShardTally.count)
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

    /// Wakes the shard if it sleeps (it polls its journal's completions when awake).
    func nudge() { doorbell.wakeNow() }

    /// Wakes the shard if it parked (after publishing what it waits for: a fence, a load, and a
    /// futex wake only if it sleeps).
    func ring() { doorbell.ring() }

    func join() {
        if let thread { pthread_join(thread, nil) }
        thread = nil
    }

    /// The mailbox has one consumer (the shard) and one producer at a time: the control thread,
    /// or a caller of `Engine.admin`.
    private let sendLock = Lock()

    func send(_ message: ShardMessage) -> Bool {
        guard sendLock.locked({ mailbox.push(message) }) else { return false }
        doorbell.wakeNow()
        return true
    }

    private func failStart(_ why: String) {
        startError = why
        started.signal()
    }

    /// The shard's symbols for its start line: the first 16 names, then how many in all (a
    /// shard of 10,000 symbols printed a 130 KB line).
    private var firstSymbols: String {
        let names = symbols.indices.filter { owned[$0] }.map { symbols[$0].spec.name }
        guard names.count > 16 else { return names.joined(separator: " ") }
        return names.prefix(16).joined(separator: " ") + " … (\(names.count) in all)"
    }

    private func run() {
        counters.threadId = cb_thread_id()
        _ = cb_set_timer_slack_ns(1)  // its short sleeps (completion wait, a standby's confirmation) wake on time
        // Placement first: the books are allocated after, on this core's NUMA node.
        var where_ = "shard \(index):"
        if let core {
            let rc = cb_pin_current_thread(Int32(core))
            if rc != 0 { return failStart("shard \(index): cannot pin to core \(core): \(String(cString: strerror(rc)))") }
            let node = cb_numa_node_of_cpu(Int32(core))
            if node >= 0 { cb_numa_prefer_node(node) }
            where_ += " core \(core), NUMA node \(node >= 0 ? String(node) : "n/a")"
        } else {
            where_ += " not pinned (running on cpu \(cb_current_cpu()))"
        }
        if let pools { where_ += ", pools of \(pools.orders) orders and \(pools.levels) levels shared by its books" }
        var state: ShardState
        do {
            state = try ShardState(index: index, symbols: symbols, pools: pools, owned: owned, routes: routes, symbolCounters: symbolCounters,
                                   directory: directory, countersOf: countersOf, listingCapacity: listingCapacity, maxSessions: Self.maxSessions,
                                   counters: counters, eventRing: eventRing, lagTimeoutNanoseconds: lagTimeoutNanoseconds,
                                   stopFlag: stopFlag, tally: tally, executionRing: executionRing)
        } catch {
            placement = where_ + ", symbols " + firstSymbols
            return failStart(error.description)
        }
        placement = where_ + ", symbols " + firstSymbols

        if let config = journalConfig {
            let abort = abortStart, stop = stopFlag
            let outcome: RecoveryOutcome
            do {
                if let after = regenerateAfter {
                    let collector = OutputCollector()
                    state.output.pointee.collector = collector
                    state.output.pointee.collectAfter = after
                    collected = collector
                }
                outcome = try state.recover(config: config, snapshots: snapshots, readOnly: readOnly, describeBooks: describeBooks,
                                            snapshotAtOrBefore: regenerateAfter ?? .max) {
                    cb_load_acquire_u32(stop) != 0 || abort.map { cb_load_acquire_u32($0) != 0 } ?? false
                }
            } catch {
                switch error {
                case .interrupted(let at):
                    return failStart("shard \(index): recovery stopped at sequence \(at): the engine was asked to stop")
                case .failed(let why):
                    return failStart(why)
                }
            }
            recoveryLog = outcome.log
            restingOwners = outcome.restingOwners
            // The ingress reads each source again from its lowest floor: the floors go once it
            // is past where this shard stopped (those of symbols moving stay: Ingress.swift).
            state.ingress.markAll(keeping: Set(state.transfers.keys))
            recoveredLast = state.sequencer.last
            state.output.pointee.collector = nil
            sourceSessions = state.ingress.sourceSessions
            recoveredDigest = outcome.digest
            maxRecoveredSession = state.maxRecoveredSession
            if readOnly { return started.signal() }
            let writer: JournalWriter
            do { writer = try JournalWriter(config: config, lastSequence: state.sequencer.last, resume: outcome.resume) } catch {
                return failStart("shard \(index): cannot open the journal: \(error)")
            }
            writer.syncHistogram = counters.syncLatency
            writer.batchHistogram = counters.journalBatchCommands
            state.feed.open(writer)
            state.output.pointee.hold = durability == .sync
            state.output.pointee.disk = writer
            state.output.pointee.replicatedCap = replicatedCap
            state.output.pointee.leaseUntil = leaseUntil
            state.ingressPause = ingressPause
            state.wakers = wakers?.raw
            if replica != nil {
                // A standby's journal holds the primary's records only: nothing of its own.
                state.output.pointee.replaying = true
            } else if let why = Self.unbindSources(&state) {
                return failStart("shard \(index): \(why)")
            }
        }
        started.signal()
        loop(&state)
        finalDigest = state.digest
    }

    /// The sessions of the run the journal comes from are gone: undo their ingress bindings in
    /// the journal too, or a later replay would bind this run's sessions of the same id.
    private static func unbindSources(_ state: inout ShardState) -> String? {
        for (session, _) in state.ingress.bindings {
            if case .refused(nil, let why) = state.runAdmin(.unbindSource(session: session)) {
                return "cannot journal the end of session \(session)'s ingress binding: \(why)"
            }
        }
        return nil
    }

    /// A standby's promotion: everything received is applied and journaled, then the epoch;
    /// from here the shard takes orders.
    private func promote(_ state: inout ShardState, _ request: AdminRequest, _ cursor: ReplicaCursor) {
        guard let inbox = replica else { return request.finish(.refused(sequence: nil, "not a standby")) }
        var spins = 0
        while !cursor.stopped && !(cursor.item >= cursor.items.count && inbox.isEmpty) {
            if state.applyReplica(inbox, cursor) == 0 {
                state.feed.poll()
                spins += 1
                if spins > 1_000_000 { break }  // a journal that takes nothing: promote what is applied
                cb_cpu_relax()
            }
        }
        if let why = inbox.alarm { return request.finish(.refused(sequence: nil, "the standby stopped applying: \(why)")) }
        state.output.pointee.replaying = false
        let outcome = state.runAdmin(request.command)
        if case .applied = outcome, let why = Self.unbindSources(&state) {
            return request.finish(.refused(sequence: nil, why))
        }
        request.finish(outcome)
    }

    /// Until stop: messages, journal failures, snapshots, passes over the rings, and waiting.
    private func loop(_ state: inout ShardState) {
        // A standby applies its inbox until promoted; `standby` is false from then on.
        var standby = replica != nil
        let cursor = ReplicaCursor()
        let pruneDirectory = journalConfig.flatMap { $0.prune && !readOnly ? $0.directory : nil }
        let writer = snapshots.map { SnapshotWriter(store: $0, shard: index, counters: counters, pruneDirectory: pruneDirectory,
                                                    cpus: journalConfig?.ioCores ?? [], log: log) }
        defer { writer?.finish() }
        var lastSnapshot = state.sequencer.last
        var pendingSnapshot: (sequence: UInt64, body: [UInt8])?
        var idle = 0
        var nextJournalRetry: UInt64 = 0
        var lastReportedFailure: JournalError?
        while cb_load_acquire_u32(stopFlag) == 0 {
            if !mailbox.isEmpty {
                state.drain(mailbox)
                if let request = state.promotion {
                    state.promotion = nil
                    if standby {
                        promote(&state, request, cursor)
                        if case .applied = request.outcome { standby = false }
                    } else {
                        request.finish(.refused(sequence: nil, "shard \(index) is not a standby"))
                    }
                }
            }
            if let journal = state.feed.journal, journal.failing {
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
                if journal.failing {
                    // Not the doorbell: clients ringing it must not turn the retries into a spin.
                    // Short sleeps, so that a stop is seen within 10 ms.
                    var pause = timespec(tv_sec: 0, tv_nsec: Int(min(10_000_000, nextJournalRetry &- monotonicNanoseconds())))
                    if pause.tv_nsec > 0 { nanosleep(&pause, nil) }
                    continue
                }
            } else if state.feed.journal != nil {
                counters.set(.journalFailed, 0)
                if lastReportedFailure != nil {
                    lastReportedFailure = nil
                    setJournalFailure(nil)
                }
            }
            let sequence = state.sequencer.last
            if snapshotEvery > 0 && pendingSnapshot == nil && sequence &- lastSnapshot >= snapshotEvery {
                // The shard pauses for the copy only; the writing happens on another thread.
                let t0 = monotonicNanoseconds()
                pendingSnapshot = (sequence, state.snapshotBody())
                counters.set(.snapshotPauseMicros, (monotonicNanoseconds() - t0) / 1000)
                lastSnapshot = sequence
            }
            // A snapshot goes to disk only once the journal holds everything before it.
            if let pending = pendingSnapshot, let journal = state.feed.journal, journal.durable >= pending.sequence {
                writer?.submit(sequence: pending.sequence, body: pending.body)
                pendingSnapshot = nil
            }
            var work = state.pass()
            if standby, let inbox = replica { work += state.applyReplica(inbox, cursor) }
            if work > 0 {
                idle = 0
                continue
            }
            idle += 1
            if state.output.pointee.hasStaged {
                // Staged output: poll the journal's completions rather than sleep.
                idle = min(idle, wait.spins)
            }
            if idle < wait.spins {
                if wait.completionWaitNanoseconds > 0, state.output.pointee.hasStaged || standby, let journal = state.feed.journal,
                   journal.hasInFlight {
                    // Only the disk to wait for: sleep in the kernel until it answers (and, with
                    // a doorbell wait queued on the same ring, until a producer rings).
                    if wait.completionWakesOnDoorbell && !standby && journal.doorbellWaitWorks {
                        let sequence = doorbell.beginPark()
                        if state.noCommands(mailbox: mailbox, stopFlag: stopFlag),
                           journal.armDoorbell(doorbell.wakeWord, expected: sequence) {
                            journal.waitForCompletion(timeoutNanoseconds: wait.completionWaitNanoseconds)
                        }
                        doorbell.endPark()
                    } else {
                        journal.waitForCompletion(timeoutNanoseconds: wait.completionWaitNanoseconds)
                    }
                } else if wait.completionWaitNanoseconds > 0, let cap = replicatedCap, state.output.pointee.hasStaged,
                          let journal = state.feed.journal, journal.durable > cb_load_acquire_u64(cap) {
                    // Only the standby's confirmation to wait for: sleep (the core goes to the
                    // threads that carry it, on a small host) until the sender raises the cap
                    // and rings, or a command comes.
                    let mailbox = self.mailbox, stop = stopFlag
                    doorbell.park(timeoutNanoseconds: Int64(wait.completionWaitNanoseconds)) {
                        state.noCommands(mailbox: mailbox, stopFlag: stop) && journal.durable > cb_load_acquire_u64(cap)
                    }
                } else {
                    cb_cpu_relax()
                }
            } else if idle < wait.spins + wait.yields {
                sched_yield()
            } else if wait.park {
                counters.add(.parks)
                let mailbox = self.mailbox, stop = stopFlag
                let inbox = standby && !cursor.stopped ? replica : nil
                doorbell.park(timeoutNanoseconds: wait.parkTimeoutNanoseconds) {
                    // A standby acknowledges what is durable: it sleeps only once all of it is.
                    state.isIdle(mailbox: mailbox, stopFlag: stop) && (inbox.map { inbox in
                        inbox.isEmpty && (state.feed.journal.map { $0.durable >= state.sequencer.last } ?? true)
                    } ?? true)
                }
                idle = 0
            }
        }
        // Stop: take in the last sessions and handle everything already published.
        state.drain(mailbox)
        while state.pass() > 0 {}
        if let journal = state.feed.journal {
            try? journal.flush()
            if state.output.pointee.hold { state.output.pointee.release(upTo: journal.durable) }
        }
    }
}
