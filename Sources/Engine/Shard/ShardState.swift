// A shard's state as one value with mutating methods: its books, its sessions, its sequencer,
// its journal feed and its output gate. It lives on the shard's thread (a local of `Shard.run`)
// and is touched by nothing else, so exclusivity is a compile-time matter: no class, no
// captured variables on the order path.
//
// One command's way, live or replayed (the same code for both, so that a replay rebuilds
// exactly what the live engine built): the sequencer gives it a context (sequence, session,
// engine time), the feed journals it (live only), `process` decodes, checks and applies it,
// and its events go with that context to the output gate.

import CSync
import Glibc
import Journal
import OrderBook
import SharedMemory
import Wire

struct ShardState: ~Copyable {
    let index: Int
    let symbols: [(spec: SymbolSpec, capacity: BookCapacity)]
    /// Books, in `symbols` order; `bookIndex` maps a symbol id to its book, or -1.
    let books: UnsafeMutablePointer<OrderBook>
    private(set) var created = 0
    let bookIndex: UnsafeMutablePointer<Int32>
    let maxSymbolId: Int
    var sessions: SessionTable
    var sequencer = Sequencer()
    var feed = JournalFeed()
    /// Behind a pointer of its own: the book's events reach it through a `CommandSink`.
    let output: UnsafeMutablePointer<OutputGate>
    let counters: ShardCounters
    let tally: UnsafeMutablePointer<UInt64>
    /// Per book, its SymbolCounters words; `noSymbol` for a command with none.
    let symbolWords: UnsafeMutablePointer<UnsafeMutablePointer<UInt64>>
    let noSymbol: UnsafeMutablePointer<UInt64>
    let maxBatch = 256
    private(set) var largestBatch = 0
    /// The highest session id the journal (or the snapshot under it) holds.
    var maxRecoveredSession: UInt32 = 0
    /// What sequenced admin commands set (Admin.swift): the epoch, the ingress positions and
    /// bindings (Ingress.swift), and per book its flags (BookFlag; 0: takes commands).
    var epoch: UInt64 = 0
    var ingress = IngressPositions()
    let bookFlags: UnsafeMutablePointer<UInt8>

    /// Allocates the books (on the calling thread's NUMA node: call it from the pinned shard).
    init(index: Int, symbols: [(spec: SymbolSpec, capacity: BookCapacity)], symbolCounters: [SymbolCounters],
         maxSessions: Int, counters: ShardCounters, eventRing: EventRing, lagTimeoutNanoseconds: UInt64,
         stopFlag: UnsafeMutablePointer<UInt32>, tally: UnsafeMutablePointer<UInt64>,
         executionRing: EventRing? = nil) throws(EngineError) {
        self.index = index
        self.symbols = symbols
        self.counters = counters
        self.tally = tally
        maxSymbolId = Int(symbols.map(\.spec.id).max() ?? 0)
        bookIndex = cacheAligned(Int32.self, count: maxSymbolId + 1)
        bookIndex.initialize(repeating: -1, count: maxSymbolId + 1)
        books = cacheAligned(OrderBook.self, count: max(symbols.count, 1))
        bookFlags = cacheAligned(UInt8.self, count: max(symbols.count, 1))
        bookFlags.initialize(repeating: 0, count: max(symbols.count, 1))
        sessions = SessionTable(capacity: maxSessions)
        output = cacheAligned(OutputGate.self, count: 1)
        output.initialize(to: OutputGate(sessions: sessions.slots, counters: counters,
                                         lagTimeoutNanoseconds: lagTimeoutNanoseconds, eventRing: eventRing,
                                         stopFlag: stopFlag, tally: tally, executionRing: executionRing))
        noSymbol = cacheAligned(UInt64.self, count: 4)
        noSymbol.initialize(repeating: 0, count: 4)
        symbolWords = cacheAligned(UnsafeMutablePointer<UInt64>.self, count: max(1, symbols.count))
        for i in symbols.indices { (symbolWords + i).initialize(to: symbolCounters[i].words) }
        if let failure = createBooks() { throw failure }
    }

    deinit {
        for i in 0..<created { (books + i).deinitialize(count: 1) }
        books.deallocate()
        bookFlags.deallocate()
        bookIndex.deallocate()
        sessions.deallocate()
        output.pointee.deallocate()
        output.deinitialize(count: 1)
        output.deallocate()
        feed.deallocate()
        noSymbol.deallocate()
        symbolWords.deallocate()
    }

    private mutating func createBooks() -> EngineError? {
        for (i, entry) in symbols.enumerated() {
            do {
                (books + i).initialize(to: try OrderBook(spec: entry.spec, capacity: entry.capacity))
                bookIndex[Int(entry.spec.id)] = Int32(i)
                created += 1
            } catch {
                return EngineError("shard \(index): symbol \(entry.spec.name): \(error)")
            }
        }
        return nil
    }

    /// Empty books again (a snapshot that failed to restore half way).
    mutating func resetBooks() throws(EngineError) {
        for b in 0..<created { (books + b).deinitialize(count: 1) }
        created = 0
        bookFlags.update(repeating: 0, count: max(symbols.count, 1))
        epoch = 0
        ingress.reset()
        if let failure = createBooks() { throw failure }
    }

    /// Book `b` empty again (a dropped symbol).
    func emptyBook(_ b: Int) throws(EngineError) {
        let fresh: OrderBook
        do { fresh = try OrderBook(spec: symbols[b].spec, capacity: symbols[b].capacity) } catch {
            throw EngineError("symbol \(symbols[b].spec.name): \(error)")
        }
        books[b] = fresh
    }

    /// The state digest: every book's, combined in order (FNV-1a style).
    var digest: UInt64 {
        var digest: UInt64 = 0xCBF2_9CE4_8422_2325
        for b in 0..<created { digest = (digest ^ books[b].digest) &* 0x0000_0100_0000_01B3 }
        return digest
    }

    /// The sessions that own resting orders now (an order id carries its session).
    var restingOwners: Set<UInt32> {
        var owners = Set<UInt32>()
        for b in 0..<created {
            for side in [Side.buy, .sell] {
                for order in books[b].orders(side) { owners.insert(UInt32(truncatingIfNeeded: order.orderId >> 48)) }
            }
        }
        return owners
    }

    // MARK: - Commands

    /// One command, live or replayed: decode, check, apply. Its events go to the output gate
    /// with `context`.
    @inline(__always)
    mutating func process(_ record: UnsafeRawPointer, _ context: CommandContext) {
        sequencer.commit(context)
        let session = context.session
        let replaying = output.pointee.replaying
        if !replaying { counters.add(.commands) }
        var event = EventContext(command: context, symbolWords: noSymbol)
        let source = ingress.ofSession[Int(session)]
        if source >= 0, let reason = ingress.admit(record, source: source) {
            let id = CommandRecord.orderId(record)
            output.pointee.on(.rejected(orderId: engineOrderId(session, id & maxClientOrderId), reason: reason), event)
            return
        }
        let decoded: CommandRecord.Decoded
        do {
            decoded = try CommandRecord.decode(record)
        } catch {
            if !replaying { counters.add(.malformed) }
            let id = CommandRecord.orderId(record)
            output.pointee.on(.rejected(orderId: engineOrderId(session, id & maxClientOrderId), reason: .malformedCommand), event)
            return
        }
        event.symbolId = decoded.symbolId
        event.clientTime = decoded.clientTime
        var command = decoded.command
        let clientId = command.orderId
        guard clientId >= 0, clientId <= maxClientOrderId else {
            output.pointee.on(.rejected(orderId: engineOrderId(session, clientId & maxClientOrderId), reason: .orderIdOutOfRange), event)
            return
        }
        let symbol = Int(decoded.symbolId)
        let b = symbol <= maxSymbolId ? Int(bookIndex[symbol]) : -1
        guard b >= 0 else {
            output.pointee.on(.rejected(orderId: engineOrderId(session, clientId), reason: .unknownSymbol), event)
            return
        }
        command.orderId = engineOrderId(session, clientId)
        event.orderId = command.orderId
        event.symbolWords = symbolWords[b]
        if bookFlags[b] != 0 {
            // Frozen (moving away), or not this shard's any more.
            let reason: RejectReason = bookFlags[b] & BookFlag.notOwned != 0 ? .unknownSymbol : .symbolFrozen
            output.pointee.on(.rejected(orderId: command.orderId, reason: reason), event)
            return
        }
        if !replaying { symbolWords[b][SymbolCounters.commands] &+= 1 }
        var sink = CommandSink(output: output, context: event)
        books[b].apply(command, to: &sink)
    }

    /// Journals a live command under its context. False when the journal cannot take it (disk
    /// full, I/O error): the command stays in its ring, untouched, and is not sequenced.
    @inline(__always)
    mutating func journal(_ record: UnsafeRawPointer, _ context: CommandContext) -> Bool {
        while true {
            switch feed.append(record, context) {
            case .appended:
                return true
            case .full:
                // Back-pressure from the disk: wait for the batch in flight.
                let durable = feed.poll()
                if output.pointee.hold { output.pointee.release(upTo: durable) }
                if feed.failed { return false }
            case .refused:
                if let journal = feed.journal { counters.set(.journalFailures, journal.failureCount) }
                return false
            }
        }
    }

    /// One pass over every session's ring; returns how many commands it handled.
    mutating func pass() -> Int {
        var work = 0
        var backlog = 0
        let inbound = sessions.inbound
        for i in 0..<sessions.count where inbound[i].active {
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
            sequencer.beginBatch()
            let session = inbound[i].session
            var done = 0
            while done < n {
                let record = UnsafeRawPointer(inbound[i].commands.slot(done))
                let context = sequencer.next(session: session)
                guard journal(record, context) else { break }
                process(record, context)
                done += 1
            }
            inbound[i].commands.release(done)
            work += done
            if done == 0 { continue }
            endOfBatch(commands: done, startedAt: batchStart)
            if done < n { break }  // the journal refused: stop taking commands
        }
        counters.set(.backlog, UInt64(backlog))
        if let journal = feed.journal {
            let durable = journal.poll()
            if output.pointee.hold { output.pointee.release(upTo: durable) }
            counters.set(.durableSequence, durable)
            cb_store_release_u64(tally + ShardTally.durable, durable)
            counters.set(.journalFailures, journal.failureCount)
            counters.set(.journalBatches, journal.durableBatches)
            counters.set(.journalBytes, journal.durableBytes)
        }
        output.pointee.wakeConsumers()
        return work
    }

    /// The end of a batch of commands from one ring: what is counted per batch.
    @inline(__always)
    private mutating func endOfBatch(commands done: Int, startedAt: UInt64) {
        cb_histogram_record(counters.matchLatency, monotonicNanoseconds() &- startedAt)
        counters.add(.batches)
        counters.addBatch(done)
        if done > largestBatch {
            largestBatch = done
            counters.set(.largestBatch, UInt64(done))
        }
    }

    /// Nothing to do: no message, no stop, nothing staged, every ring empty.
    func isIdle(mailbox: Mailbox<ShardMessage>, stopFlag: UnsafeMutablePointer<UInt32>) -> Bool {
        if !mailbox.isEmpty || cb_load_acquire_u32(stopFlag) != 0 { return false }
        // Output waiting for the disk: io_uring completions ring no doorbell, so keep polling.
        if output.pointee.hasStaged { return false }
        let inbound = sessions.inbound
        for i in 0..<sessions.count where inbound[i].active {
            if ((try? inbound[i].commands.poll()) ?? 0) > 0 { return false }
        }
        return true
    }

    // MARK: - Messages from the control thread

    mutating func drain(_ mailbox: Mailbox<ShardMessage>) {
        while let message = mailbox.pop() {
            switch message {
            case .attach(let session, let commands, let reports, let source):
                // The engine never has more than the table's capacity attached at once: it refuses
                // the next client clearly.
                guard sessions.attach(session: session, commands: commands, reports: reports) else { continue }
                counters.add(.sessions)
                if !bindSession(session, to: source) {
                    sessions.detach(session: session)
                    reports.markClosed(.journalRefused)
                }
            case .detach(let session):
                sessions.detach(session: session)
                _ = bindSession(session, to: nil)
            case .restingOwners(let query):
                query.reply(restingOwners)
            case .admin(let request):
                runAdmin(request)
            case .adminState(let query):
                query.reply(adminState)
            }
        }
    }
}
