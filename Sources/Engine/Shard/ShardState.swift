// A shard's state as one value with mutating methods: its books, its sessions, its sequencer,
// its journal feed and its output gate. It lives on the shard's thread (a local of `Shard.run`)
// and is touched by nothing else, so exclusivity is a compile-time matter: no class, no
// captured variables on the order path.
//
// One command's way, live or replayed (the same code for both, so that a replay rebuilds
// exactly what the live engine built): the sequencer gives it a context (sequence, session,
// engine time), the feed journals it (live only), `process` decodes, checks and applies it,
// and its events go with that context to the output gate.

import CPrefetch
import CSync
import Glibc
import Journal
import OrderBook
import SharedMemory
import Wire

struct ShardState: ~Copyable {
    let index: Int
    /// Every symbol of the instance, in the same order in every shard: a symbol can move to any
    /// shard (Migration.swift). `owned`: the shard's own at its first start (the config's
    /// placement); the journal says where each is now. It grows by the listings the shard
    /// applies (AdminCommand.listSymbol, its own journal's or snapshot's), up to `room` slots.
    var symbols: [(spec: SymbolSpec, capacity: BookCapacity)]
    var owned: [Bool]
    /// Slots allocated (the instance's room for symbols) and the instance's table of them
    /// (nil: no listings, as in tests of a bare shard).
    let room: Int
    let directory: InstanceSymbols?
    /// Where a listed symbol's counters are (the control file's block of its slot).
    let countersOf: ((Int) -> SymbolCounters)?
    /// A listed symbol's book capacity ([book]).
    let listingCapacity: BookCapacity
    /// The config's symbols: the first slots.
    let configuredCount: Int
    /// One slot per symbol, in `symbols` order; `bookIndex` maps a symbol id to its slot, or -1.
    /// A slot holds a book only while the shard owns the symbol (or is taking it in): flag
    /// `BookFlag.absent` otherwise, and the slot's memory is not an OrderBook.
    let books: UnsafeMutablePointer<OrderBook>
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
    /// Whether some book of the shard is deep enough for the batch path to prefetch for
    /// (OrderBook.prefetches): looked at again every `deepCheckEvery` commands, so that a shard
    /// of shallow books pays one branch per batch for it.
    var anyDeepBook = false
    var deepCheckCountdown = 0
    static let deepCheckEvery = 4096
    /// Books on shared pools (`[[shards]] orders`, `levels`), many of them or holding many
    /// orders: the batch path prefetches across books (`prefetchAcross`), since each command
    /// may reach a book that no command touched for thousands of commands. Decided with
    /// `anyDeepBook`, from the pools' counts (one look, not one per book).
    var crossBook = false
    /// From this many books on a shard's shared pools, their structs, ladders and best levels
    /// (~250 bytes a book) no longer all stay in the core's caches between two commands of one
    /// book. Measured at 10,000 books (bench/README.md, S1 through the engine), not tuned.
    static let crossBookBooks = 512
    private(set) var largestBatch = 0
    /// The highest session id the journal (or the snapshot under it) holds.
    var maxRecoveredSession: UInt32 = 0
    /// What sequenced admin commands set (Admin.swift): the epoch, the ingress positions and
    /// bindings (Ingress.swift), and per book its flags (BookFlag; 0: takes commands).
    var epoch: UInt64 = 0
    var ingress = IngressPositions()
    let bookFlags: UnsafeMutablePointer<UInt8>
    /// Symbols on their way to this shard (Migration.swift): their commands wait in `held`, in
    /// arrival order, unsequenced, until the book arrives. `holding` counts such symbols: the
    /// order path looks at a command's symbol before journaling it only while it is not 0.
    var holding = 0
    let incoming: UnsafeMutablePointer<UInt8>
    var held: [HeldCommand] = []
    /// The (symbol id << 32 | source slot) pairs whose hold floor is journaled in the holds under
    /// way (Migration.swift `hold`): cleared as a symbol's hold ends.
    var holdFloors: Set<UInt64> = []
    /// The import under way was restored into its book by the control thread (Migration.swift):
    /// live, the import record is journaled and the book not restored twice.
    var prebuiltImport: UInt32?
    /// Imports arriving in parts (AdminCommand.importPart), by symbol id, until the last part.
    var importParts: [UInt32: [UInt8]] = [:]
    /// Symbols moving to or from another engine (Admin.swift's transferOut / transferIn).
    var transfers: [UInt32: ShardTransfer] = [:]
    /// Symbols this shard gave to another engine (dropped after a transferOut): their ingress
    /// commands are the new owner's (IngressCounters.elsewhere).
    var given: Set<UInt32> = []
    /// A planned switchover (Engine+Replication.swift): while this reads 1, no command is taken.
    var ingressPause: UnsafeMutablePointer<UInt32>?
    /// The replication threads sleeping until this journal moves (JournalWakers), told when its
    /// written or durable sequence does; the last values told.
    var wakers: UnsafeMutablePointer<cb_wakers>?
    var toldWritten: UInt64 = 0
    var toldDurable: UInt64 = 0
    /// A standby's promotion, asked and not yet done (Shard.loop).
    var promotion: AdminRequest?
    /// Symbol id → owner shard (RouteTable), read to name the owner in a `symbol_moved` reject.
    let routes: RouteTable?
    /// The pools the books share ([[shards]] orders, levels), or nil: each book its own.
    let pools: BookPools?

    /// Allocates the books (on the calling thread's NUMA node: call it from the pinned shard).
    init(index: Int, symbols: [(spec: SymbolSpec, capacity: BookCapacity)], pools: BookCapacity? = nil, owned: [Bool]? = nil,
         routes: RouteTable? = nil, symbolCounters: [SymbolCounters],
         directory: InstanceSymbols? = nil, countersOf: ((Int) -> SymbolCounters)? = nil, listingCapacity: BookCapacity? = nil,
         maxSessions: Int, counters: ShardCounters, eventRing: EventRing, lagTimeoutNanoseconds: UInt64,
         stopFlag: UnsafeMutablePointer<UInt32>, tally: UnsafeMutablePointer<UInt64>,
         executionRing: EventRing? = nil) throws(EngineError) {
        // Sizes checked at start (Engine.validate): a failure here is memory.
        self.pools = pools.flatMap { try? BookPools(orders: $0.orders, levels: $0.levels) }
        self.index = index
        self.symbols = symbols
        self.owned = owned ?? symbols.map { _ in true }
        self.routes = routes
        self.counters = counters
        self.tally = tally
        self.directory = directory
        self.countersOf = countersOf
        self.listingCapacity = listingCapacity ?? symbols.first?.capacity ?? .small
        let room = max(directory?.capacity ?? symbols.count, symbols.count, 1)
        self.room = room
        configuredCount = symbols.count
        maxSymbolId = max(Int(symbols.map(\.spec.id).max() ?? 0), Int(directory?.idLimit ?? 1) - 1)
        bookIndex = cacheAligned(Int32.self, count: maxSymbolId + 1)
        bookIndex.initialize(repeating: -1, count: maxSymbolId + 1)
        books = cacheAligned(OrderBook.self, count: room)
        bookFlags = cacheAligned(UInt8.self, count: room)
        bookFlags.initialize(repeating: 0, count: room)
        incoming = cacheAligned(UInt8.self, count: room)
        incoming.initialize(repeating: 0, count: room)
        sessions = SessionTable(capacity: maxSessions)
        output = cacheAligned(OutputGate.self, count: 1)
        output.initialize(to: OutputGate(sessions: sessions.slots, counters: counters,
                                         lagTimeoutNanoseconds: lagTimeoutNanoseconds, eventRing: eventRing,
                                         stopFlag: stopFlag, tally: tally, executionRing: executionRing,
                                         routes: routes))
        noSymbol = cacheAligned(UInt64.self, count: 4)
        noSymbol.initialize(repeating: 0, count: 4)
        symbolWords = cacheAligned(UnsafeMutablePointer<UInt64>.self, count: room)
        for i in symbols.indices { (symbolWords + i).initialize(to: symbolCounters[i].words) }
        for i in symbols.count..<room { (symbolWords + i).initialize(to: noSymbol) }
        if let pools, self.pools == nil {
            throw EngineError("shard \(index): pools of \(pools.orders) orders and \(pools.levels) levels cannot be made")
        }
        ingress.attach(bookIndex: bookIndex, maxSymbolId: maxSymbolId, room: room)
        if let failure = createBooks() { throw failure }
    }

    deinit {
        for b in symbols.indices where hasBook(b) { (books + b).deinitialize(count: 1) }
        books.deallocate()
        bookFlags.deallocate()
        incoming.deallocate()
        bookIndex.deallocate()
        sessions.deallocate()
        output.pointee.deallocate()
        output.deinitialize(count: 1)
        output.deallocate()
        feed.deallocate()
        noSymbol.deallocate()
        symbolWords.deallocate()
    }

    /// Slot `b` holds a book.
    @inline(__always)
    func hasBook(_ b: Int) -> Bool { bookFlags[b] & BookFlag.absent == 0 }

    /// Slot `b` holds a book the shard owns (not one made for a symbol on its way in).
    func isOwned(_ b: Int) -> Bool { bookFlags[b] & (BookFlag.absent | BookFlag.notOwned) == 0 }

    /// The books of the symbols the shard owns at its first start; the other slots absent.
    private mutating func createBooks() -> EngineError? {
        for (i, entry) in symbols.enumerated() {
            bookIndex[Int(entry.spec.id)] = Int32(i)
            bookFlags[i] = BookFlag.absent | BookFlag.notOwned
            if owned[i], let failure = makeBook(i) { return failure }
        }
        return nil
    }

    /// A fresh, empty book in the absent slot `b` (owned: flags 0). Allocates: at start, or for
    /// a symbol moving in (off the order path).
    mutating func makeBook(_ b: Int) -> EngineError? {
        guard !hasBook(b) else { return nil }
        do {
            if let pools {
                (books + b).initialize(to: try OrderBook(spec: symbols[b].spec, pools: pools, levels: symbols[b].capacity.levels))
            } else {
                (books + b).initialize(to: try OrderBook(spec: symbols[b].spec, capacity: symbols[b].capacity))
            }
        } catch {
            return EngineError("shard \(index): symbol \(symbols[b].spec.name): \(error)")
        }
        bookFlags[b] = 0
        return nil
    }

    /// Slot `b` gives its book back (a symbol that moved away): absent, not owned.
    mutating func releaseBook(_ b: Int) {
        if hasBook(b) { (books + b).deinitialize(count: 1) }
        bookFlags[b] = BookFlag.absent | BookFlag.notOwned
    }

    /// Empty books again, as at the first start (a snapshot that failed to restore half way).
    mutating func resetBooks() throws(EngineError) {
        for b in symbols.indices { releaseBook(b) }
        // Listings adopted from the snapshot are applied again from the journal.
        while symbols.count > configuredCount {
            let last = symbols.removeLast()
            owned.removeLast()
            bookIndex[Int(last.spec.id)] = -1
            symbolWords[symbols.count] = noSymbol
        }
        epoch = 0
        ingress.reset()
        if let failure = createBooks() { throw failure }
    }

    /// The state digest: every book's, combined in order (FNV-1a style).
    var digest: UInt64 {
        var digest: UInt64 = 0xCBF2_9CE4_8422_2325
        for b in symbols.indices where isOwned(b) { digest = (digest ^ books[b].digest) &* 0x0000_0100_0000_01B3 }
        return digest
    }

    /// The sessions that own resting orders now (an order id carries its session).
    var restingOwners: Set<UInt32> {
        var owners = Set<UInt32>()
        for b in symbols.indices where isOwned(b) {
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
            // Frozen (moving away), or not this shard's (moved away, or not arrived).
            let reason: RejectReason = bookFlags[b] & BookFlag.notOwned != 0 ? .symbolMoved : .symbolFrozen
            output.pointee.on(.rejected(orderId: command.orderId, reason: reason), event)
            return
        }
        if !replaying { symbolWords[b][SymbolCounters.commands] &+= 1 }
        var sink = CommandSink(output: output, context: event)
        books[b].apply(command, to: &sink)
    }

    /// Live, before sequencing a command of an ingress source (a Kafka partition): true when it
    /// is dropped, unjournaled and unanswered. A replay of the source (at or below its symbol's
    /// position: applied already), or a command for a symbol this shard gave to another engine
    /// (frozen for the move, or gone): that engine reads it from the partition (the partition is
    /// the queue of the commands that wait for a move). Counted in IngressCounters.
    @inline(never)
    mutating func dropsIngress(_ record: UnsafeRawPointer, source: Int32) -> Bool {
        if ingress.isReplay(record, source: source) {
            counters.ingress.add(IngressCounters.replays)
            return true
        }
        let id = UInt32(littleEndian: record.loadUnaligned(fromByteOffset: 8, as: UInt32.self))
        guard let b = book(of: id), bookFlags[b] != 0 else { return false }
        let elsewhere = transfers[id] != nil
            || (bookFlags[b] & BookFlag.notOwned != 0 && (given.contains(id) || routes?.shard(of: id) == nil))
        if elsewhere { counters.ingress.add(IngressCounters.elsewhere) }
        return elsewhere
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
        // Output held back (a standby that does not confirm): take no more commands than the
        // staging area can answer for; the rings fill, the clients wait. Past the lease's
        // deadline (in doubt or lost), take none.
        let accepting = !output.pointee.backlogged && (ingressPause.map { cb_load_acquire_u32($0) == 0 } ?? true)
            && !output.pointee.leaseExpired
        for i in 0..<(accepting ? sessions.count : 0) where inbound[i].active {
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
            // The book's batch path: the lines of the commands ahead are asked for while the
            // current one runs (OrderBook/Batch.swift; hints only).
            deepCheckCountdown -= n
            if deepCheckCountdown <= 0 {
                deepCheckCountdown = Self.deepCheckEvery
                if let pools {
                    // Every book of the shard is on them: their counts decide, without reading
                    // each book's line (10,000 of them every 4,096 commands).
                    crossBook = pools.books >= Self.crossBookBooks || pools.liveOrders >= OrderBook.prefetchThreshold
                    anyDeepBook = crossBook
                } else {
                    // Books that take commands only (one being restored by the control thread in a
                    // migration is not read).
                    anyDeepBook = symbols.indices.contains { bookFlags[$0] == 0 && books[$0].prefetches() }
                }
            }
            // With no deep book the distance is 0: no stage runs.
            let d = anyDeepBook ? OrderBook.prefetchDistance : 0
            // Three stages for a deep book; four across books (the book itself comes first).
            let stages = crossBook ? 4 : 3
            if d > 0 {
                for stage in 1...stages {
                    for k in 0..<min(n, (stages + 1 - stage) * d) { prefetch(stage, inbound[i].commands.slot(k), session: session) }
                }
            }
            var done = 0
            while done < n {
                if d > 0 {
                    for stage in 1...stages where done + (stages + 1 - stage) * d < n {
                        prefetch(stage, inbound[i].commands.slot(done + (stages + 1 - stage) * d), session: session)
                    }
                }
                let record = UnsafeRawPointer(inbound[i].commands.slot(done))
                // A symbol on its way here: its commands wait for its book, unsequenced.
                if holding != 0 && hold(record, session: session) {
                    done += 1
                    continue
                }
                // An ingress source's command applied already, or another engine's: not sequenced.
                let source = ingress.ofSession[Int(session)]
                if source >= 0 && ingress.plugin[Int(source)] && dropsIngress(record, source: source) {
                    done += 1
                    continue
                }
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
            let written = journal.written
            cb_store_release_u64(tally + ShardTally.durable, durable)
            cb_store_release_u64(tally + ShardTally.written, written)
            if let wakers, durable != toldDurable || written != toldWritten {
                toldDurable = durable
                toldWritten = written
                cb_wakers_notify(wakers)
            }
            counters.set(.journalFailures, journal.failureCount)
            counters.set(.journalBatches, journal.durableBatches)
            counters.set(.journalBytes, journal.durableBytes)
        }
        output.pointee.wakeConsumers()
        return work
    }

    /// Stage `stage` (1 the id slot, 2 the order's node, 3 its neighbours and level) of the
    /// prefetch for the command in `record`, from `session`. A hint: the record may be anything
    /// (another process wrote it); only what `process` will check anyway is read, and a book
    /// that does not take commands now is left alone.
    @inline(__always)
    func prefetch(_ stage: Int, _ record: UnsafeRawPointer, session: UInt32) {
        if crossBook { return prefetchAcross(stage, record, session: session) }
        // A new order's id is only looked up (it is not there, normally): its slot is all.
        if stage > 1 && record.load(fromByteOffset: 1, as: UInt8.self) == CommandRecord.Kind.new.rawValue { return }
        let symbol = Int(UInt32(littleEndian: record.loadUnaligned(fromByteOffset: 8, as: UInt32.self)))
        guard symbol <= maxSymbolId else { return }
        let b = Int(bookIndex[symbol])
        guard b >= 0, bookFlags[b] == 0, books[b].prefetches() else { return }
        let id = engineOrderId(session, CommandRecord.orderId(record) & maxClientOrderId)
        switch stage {
        case 1: books[b].prefetchSlot(of: id)
        case 2: books[b].prefetchOrder(of: id)
        default: books[b].prefetchNeighbours(of: id)
        }
    }

    /// Stage `stage` of the prefetch across books on shared pools, four stages where a deep book
    /// has three (the book itself is not in cache): 1 the book's struct; 2 the id table's line of
    /// the order the command names (a new order's id is looked up for duplicates) and, for a new
    /// order, the tops of its ladders; 3 the named order's node, or for a new order the best level
    /// of each side and the node it would rest in; 4 the named order's FIFO neighbours and level.
    /// Each stage reads only lines the one before asked for. S1's prefetching runner
    /// (Workloads/S1.swift) gives the same hints, but it has to guess a cancel's order; here the
    /// command names it.
    @inline(__always)
    func prefetchAcross(_ stage: Int, _ record: UnsafeRawPointer, session: UInt32) {
        let symbol = Int(UInt32(littleEndian: record.loadUnaligned(fromByteOffset: 8, as: UInt32.self)))
        guard symbol <= maxSymbolId else { return }
        let b = Int(bookIndex[symbol])
        guard b >= 0, bookFlags[b] == 0 else { return }
        if stage == 1 {
            let p = UnsafeRawPointer(books + b)
            for line in stride(from: 0, to: MemoryLayout<OrderBook>.stride, by: 64) { cb_prefetch_write(p + line) }
            return
        }
        let isNew = record.load(fromByteOffset: 1, as: UInt8.self) == CommandRecord.Kind.new.rawValue
        let id = engineOrderId(session, CommandRecord.orderId(record) & maxClientOrderId)
        switch stage {
        case 2:
            books[b].prefetchSlot(of: id)
            if isNew { books[b].prefetchTops() }
        case 3:
            if isNew {
                books[b].prefetchBestLevels()
                pools?.prefetchNextNode()
            } else {
                books[b].prefetchOrder(of: id)
            }
        default:
            if !isNew { books[b].prefetchNeighbours(of: id) }
        }
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
    /// No command in any ring, no message, no stop: only output (if any) waits.
    func noCommands(mailbox: Mailbox<ShardMessage>, stopFlag: UnsafeMutablePointer<UInt32>) -> Bool {
        if !mailbox.isEmpty || cb_load_acquire_u32(stopFlag) != 0 { return false }
        let inbound = sessions.inbound
        for i in 0..<sessions.count where inbound[i].active {
            if ((try? inbound[i].commands.poll()) ?? 0) > 0 { return false }
        }
        return true
    }

    func isIdle(mailbox: Mailbox<ShardMessage>, stopFlag: UnsafeMutablePointer<UInt32>) -> Bool {
        // Output waiting for the disk: io_uring completions ring no doorbell, so keep polling.
        !output.pointee.hasStaged && noCommands(mailbox: mailbox, stopFlag: stopFlag)
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
            case .ingressMarks(let marks):
                for (symbol, key, through) in marks {
                    if let slot = ingress.knownSlot(key) { ingress.mark(symbol, slot: slot, through: through) }
                }
            case .ingressWatermark(let session, let offset):
                watermark(session: session, offset: offset)
            case .expect(let step):
                expect(step)
            case .holdOutgoing(let step):
                holdOutgoing(step)
            case .sealExport(let step):
                sealExport(step)
            case .migrateIn(let step, let abandon):
                migrateIn(step, abandon: abandon)
            case .importTransfer(let step):
                importTransfer(step)
            case .finishTransfer(let step, let won):
                finishTransfer(step, won: won)
            case .digest(let query):
                query.reply(sequencer.last, digest)
            case .promote(let request):
                promotion = request  // the loop finishes the replica's records first
            }
        }
    }
}
