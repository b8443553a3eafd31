// Moving a symbol between the shards of this engine while it trades (the steps and why they
// are safe: Shard/Migration.swift), and putting every symbol where the journals say after a
// restart (`reconcileOwners`).

import Foundation
import Glibc
import OrderBook
import SharedMemory

/// What one migration did and how long the symbol did not trade.
public struct MigrationReport: Sendable, Equatable, CustomStringConvertible {
    public var symbol: String
    public var fromShard: Int
    public var toShard: Int
    /// Resting orders moved, and commands that reached the target before the book and waited.
    public var orders: Int
    public var held: Int
    /// The source's export sequence and the target's thaw sequence.
    public var exportSequence: UInt64
    public var thawSequence: UInt64
    /// From the source taking the book's bytes (no command of the symbol is applied after) to the
    /// target trading it (held commands applied).
    public var pauseNanoseconds: UInt64
    /// From the export journaled to it on disk (nothing may depend on it before; the restore
    /// runs meanwhile).
    public var durableWaitNanoseconds: UInt64
    /// Where the pause went, nanoseconds by phase: snapshot (the book's bytes, taken by the
    /// control thread), export (journaled by the source), restore (into the target's book, by
    /// the control thread, while the export goes to disk), durable (waiting for the disk beyond
    /// the restore), import (journaled by the target), held (the commands that waited),
    /// handoff (the rest: mailboxes, waking the shards).
    public var phases: [String: UInt64] = [:]

    public var description: String {
        let parts = ["snapshot", "export", "restore", "durable", "import", "held", "handoff"].compactMap { key in phases[key].map { "\(key) \(String(format: "%.3f", Double($0) / 1e6))" } }
        return "migrated \(symbol) shard \(fromShard) -> \(toShard): \(orders) resting orders, \(held) held commands, pause \(String(format: "%.3f", Double(pauseNanoseconds) / 1e6)) ms (\(parts.joined(separator: ", ")) ms), export at sequence \(exportSequence) of shard \(fromShard), thaw at \(thawSequence) of shard \(toShard)"
    }
}

/// The engine's count of migrations, for `crossbook stat` and the metrics.
public struct MigrationHistory: Sendable, Equatable {
    public var inProgress = 0
    public var done = 0
    public var failed = 0
    public var lastPauseNanoseconds: UInt64 = 0
    public var maxPauseNanoseconds: UInt64 = 0
    public var totalPauseNanoseconds: UInt64 = 0
}

extension Engine {
    /// The shard that owns `symbol` now (nil: not a symbol of this instance, or not running).
    public func owner(of symbol: String) -> Int? {
        guard let spec = symbolTable?.spec(named: symbol) else { return nil }
        return routes?.shard(of: spec.id)
    }

    public var migrations: MigrationHistory { migrationLock.locked { migrationHistory } }

    /// Moves `symbol`'s book to shard `target` while it trades; returns once the target trades
    /// it and the source has dropped it. Throws (with the symbol still on its source, trading)
    /// when a step is refused or does not finish within `timeout` seconds.
    public func migrate(symbol name: String, toShard target: Int, timeout: Double = 5) throws(EngineError) -> MigrationReport {
        guard let routes else { throw EngineError("the engine is not running") }
        guard let spec = symbolTable?.spec(named: name) else {
            throw EngineError("no symbol \(name) in this instance")
        }
        guard target >= 0, target < shards.count else { throw EngineError("no shard \(target) (\(shards.count) shards)") }
        // One at a time: a second waits for the first.
        migrationLock.locked { migrationHistory.inProgress += 1 }
        defer { migrationLock.locked { migrationHistory.inProgress -= 1 } }
        return try migrationSerial.locked { () throws(EngineError) -> MigrationReport in
            let source = routes.shard(of: spec.id)
            let counted = [source, target].compactMap { $0 }.filter { $0 >= 0 && $0 < shards.count }.compactMap { engineFile?.migrations($0) }
            for c in counted { c.set(MigrationCounters.inProgress, 1) }
            defer { for c in counted { c.set(MigrationCounters.inProgress, 0) } }
            // The router (Redis) first: it marks the route as migrating, or refuses (it is
            // unreachable, or a tool changed the route meanwhile); afterwards it is told where
            // the symbol trades, whatever happened.
            if let source, source != target, let why = pluginHost?.routeBegin(symbolId: spec.id, from: source, to: target) {
                migrationLock.locked { migrationHistory.failed += 1 }
                if source >= 0, source < shards.count { engineFile?.migrations(source).add(MigrationCounters.failed) }
                throw EngineError("migration of \(name) refused: \(why)")
            }
            defer {
                if let source, source != target, let now = routes.shard(of: spec.id) {
                    pluginHost?.routeEnd(symbolId: spec.id, shard: now)
                }
            }
            do throws(EngineError) {
                let report = try runMigration(spec, target: target, routes: routes, timeout: timeout)
                if let file = engineFile {
                    let micros = report.pauseNanoseconds / 1000
                    file.migrations(report.fromShard).add(MigrationCounters.outOf)
                    file.migrations(report.toShard).add(MigrationCounters.into)
                    for c in [file.migrations(report.fromShard), file.migrations(report.toShard)] {
                        c.set(MigrationCounters.lastPauseMicros, micros)
                        c.set(MigrationCounters.maxPauseMicros, max(c.read(MigrationCounters.maxPauseMicros), micros))
                    }
                }
                migrationLock.locked {
                    migrationHistory.done += 1
                    migrationHistory.lastPauseNanoseconds = report.pauseNanoseconds
                    migrationHistory.maxPauseNanoseconds = max(migrationHistory.maxPauseNanoseconds, report.pauseNanoseconds)
                    migrationHistory.totalPauseNanoseconds &+= report.pauseNanoseconds
                }
                return report
            } catch {
                migrationLock.locked { migrationHistory.failed += 1 }
                if let source, source >= 0, source < shards.count { engineFile?.migrations(source).add(MigrationCounters.failed) }
                throw error
            }
        }
    }

    /// An empty book of `spec` for `shard` to take at `expect`, made on this thread; nil where
    /// the shard's books share its pools (a sharing book is small, made by the shard).
    func premadeBook(_ spec: SymbolSpec, shard: Int) -> PremadeBook? {
        guard shard >= 0, shard < settings.shards.count, settings.shards[shard].pools == nil else { return nil }
        return try? PremadeBook(spec: spec, capacity: settings.capacity)
    }

    func step(_ shard: Int, _ message: (MigrationStep) -> ShardMessage, _ step: MigrationStep,
                      timeout: Double) -> MigrationAnswer? {
        guard shards[shard].send(message(step)), step.done.wait(seconds: timeout) else { return nil }
        return step.result
    }

    /// Waits for `shard`'s journal to hold `sequence` (true at once without a journal).
    func awaitDurable(_ shard: Int, _ sequence: UInt64, timeout: Double) -> Bool {
        guard settings.durability != .none else { return true }
        let deadline = monotonicNanoseconds() + UInt64(timeout * 1e9)
        while shards[shard].tallied(ShardTally.durable) < sequence {
            if monotonicNanoseconds() >= deadline { return false }
            shards[shard].nudge()
            usleep(20)
        }
        return true
    }

    private func runMigration(_ spec: SymbolSpec, target: Int, routes: RouteTable, timeout: Double) throws(EngineError) -> MigrationReport {
        let id = spec.id, name = spec.name
        guard let source = routes.shard(of: id) else { throw EngineError("symbol \(name) has no owner") }
        guard source != target else { throw EngineError("\(name) is on shard \(target) already") }
        log("migration of \(name): shard \(source) -> \(target): the target holds its commands")
        // 1. The target holds the symbol's commands; producers send there from now on. Its empty
        //    book is made here, not on its thread (its other symbols would wait for it).
        let expecting = MigrationStep(symbolId: id)
        expecting.premade = premadeBook(spec, shard: target)
        guard let expected = step(target, { .expect($0) }, expecting, timeout: timeout) else {
            throw EngineError("migration of \(name): shard \(target) did not answer within \(timeout) s")
        }
        if let refusal = expected.refusal { throw EngineError("migration of \(name): \(refusal)") }
        routes.set(id, shard: target)

        // Undo: the route back, the held commands sequenced (on the target: rejected,
        // symbol_moved, naming the source; on the source: applied, if it never froze), the
        // source trading again.
        func abandon(_ why: String, thawSource: Bool) -> EngineError {
            routes.set(id, shard: source)
            _ = step(target, { .migrateIn($0, abandon: true) }, MigrationStep(symbolId: id), timeout: timeout)
            _ = step(source, { .migrateIn($0, abandon: true) }, MigrationStep(symbolId: id), timeout: timeout)
            if thawSource { _ = admin(shard: source, .thaw(symbolId: id), timeout: timeout) }
            log("migration of \(name) abandoned: \(why); it stays on shard \(source)")
            return EngineError("migration of \(name) abandoned: \(why); it stays on shard \(source)")
        }
        guard let targetBook = expected.bookAddress else { throw abandon("shard \(target) lent no book", thawSource: false) }

        // 2. The source holds the symbol's commands (the pause starts); this thread takes the
        //    book's bytes while the source goes on with its other symbols; the source journals
        //    the export (freezes the symbol) at its sequence S.
        guard let held = step(source, { .holdOutgoing($0) }, MigrationStep(symbolId: id), timeout: timeout) else {
            throw abandon("shard \(source) did not answer within \(timeout) s", thawSource: true)
        }
        if let refusal = held.refusal { throw abandon(refusal, thawSource: false) }
        guard let sourceBook = held.bookAddress else { throw abandon("shard \(source) lent no book", thawSource: false) }
        let pauseStart = held.at
        let bytes = sourceBook.pointer.pointee.snapshot()
        let snapshotted = monotonicNanoseconds()
        guard let out = step(source, { .sealExport($0) }, MigrationStep(symbolId: id, book: bytes), timeout: timeout) else {
            // The source may still export later: it will be undone at the next start if so.
            throw abandon("shard \(source) did not answer within \(timeout) s", thawSource: true)
        }
        if let refusal = out.refusal { throw abandon(refusal, thawSource: false) }
        log("migration of \(name): shard \(source) exported \(held.orders) resting orders at sequence \(out.sequence)")

        // 3. This thread makes the target's empty book the source's (the target goes on with
        //    its other symbols: nothing there touches a book it does not own) while the export
        //    goes to disk: a copy of the book's memory where both have pools of their own and
        //    alike (OrderBook.clone(of:): 5 ns an order where a restore from the bytes takes 25),
        //    else a restore from the bytes. Once the export is on disk (the target's import must
        //    never be durable without it), the target journals the import (the bytes: a replay
        //    restores them) and the thaw, then applies what it held.
        // A target whose books share pools restores on its own thread, in the import: the
        // pools' free lists are the shard thread's alone.
        let restoresHere = settings.shards[target].pools == nil
        if restoresHere {
            if targetBook.pointer.pointee.canClone(sourceBook.pointer.pointee) {
                targetBook.pointer.pointee.clone(of: sourceBook.pointer.pointee)
            } else {
                do { try targetBook.pointer.pointee.restore(from: bytes) } catch {
                    throw abandon("the book does not restore on shard \(target): \(error)", thawSource: true)
                }
            }
        }
        let restored = monotonicNanoseconds()
        guard awaitDurable(source, out.sequence, timeout: timeout) else {
            throw abandon("shard \(source)'s export at sequence \(out.sequence) was not durable within \(timeout) s", thawSource: true)
        }
        let durableAt = monotonicNanoseconds()
        let arriving = MigrationStep(symbolId: id, book: bytes, positions: out.positions)
        arriving.prebuilt = restoresHere
        guard let into = step(target, { .migrateIn($0, abandon: false) }, arriving, timeout: timeout) else {
            // Unknown whether the target imported: leave the route there and let the next start
            // decide from the journals (reconcileOwners); say so.
            log("migration of \(name): shard \(target) did not answer the import within \(timeout) s; the journals decide at the next start")
            throw EngineError("migration of \(name): shard \(target) did not answer the import within \(timeout) s")
        }
        if let refusal = into.refusal {
            routes.set(id, shard: source)
            _ = admin(shard: source, .thaw(symbolId: id), timeout: timeout)
            log("migration of \(name) abandoned: \(refusal); it stays on shard \(source)")
            throw EngineError("migration of \(name) abandoned: shard \(target) refused the import: \(refusal)")
        }
        log("migration of \(name): shard \(target) imported and trades it (\(into.held) held commands applied) at sequence \(into.sequence)")

        // 4. The source drops the book, once the import is on disk (a crash must never find
        //    the drop without the import).
        guard awaitDurable(target, into.sequence, timeout: timeout) else {
            throw EngineError("migration of \(name): shard \(target)'s import was not durable within \(timeout) s; the source keeps its frozen copy until the next start")
        }
        switch admin(shard: source, .drop(symbolId: id), timeout: timeout) {
        case .applied: break
        case .refused(_, let why):
            throw EngineError("migration of \(name): shard \(source) did not drop its copy: \(why) (the next start drops it)")
        }
        let pause = into.at &- pauseStart
        var phases = into.phases
        phases["snapshot"] = snapshotted &- pauseStart
        phases["export"] = out.phases["export"] ?? 0
        phases["restore"] = restored &- out.at
        // The wait for the disk beyond the restore (they overlap).
        phases["durable"] = durableAt &- restored
        phases["handoff"] = pause &- (phases["snapshot"]! &+ phases["export"]! &+ phases["restore"]! &+ phases["durable"]!
                                      &+ (phases["import"] ?? 0) &+ (phases["held"] ?? 0))
        let report = MigrationReport(symbol: name, fromShard: source, toShard: target, orders: held.orders, held: into.held + out.held,
                                     exportSequence: out.sequence, thawSequence: into.sequence,
                                     pauseNanoseconds: pause, durableWaitNanoseconds: durableAt &- out.at,
                                     phases: phases)
        log(report.description)
        return report
    }

    /// After recovery: each symbol's owner from the shards' admin states, finishing a migration
    /// whose import is on disk (the target thaws, the source drops) and undoing one whose
    /// import is not (the source thaws). Sets the routes. Throws when the journals disagree in
    /// a way no migration explains (the config's placement changed under a journal).
    func reconcileOwners(readOnly: Bool) throws(EngineError) -> [String] {
        guard !readOnly, let routes else { return [] }
        var states: [ShardAdminState] = []
        for i in shards.indices {
            guard let state = adminState(shard: i, timeout: 10) else { throw EngineError("shard \(i) did not answer after recovery") }
            states.append(state)
        }
        var log: [String] = []
        for entry in symbolTable?.all ?? [] {
            let spec = entry.spec, id = spec.id
            let owners = shards.indices.filter { !states[$0].notOwned.contains(id) }
            var owner: Int
            switch owners.count {
            case 0:
                // It trades on another engine (moved there, or listed here to arrive from one).
                routes.set(id, shard: -1)
                continue
            case 1:
                owner = owners[0]
                if let t = states[owner].transfers[id] {
                    // Moving to or from another engine: the route decides, once the router runs.
                    // Its ingress is not taken here meanwhile (IngressRewinds).
                    ingressRewinds.leave(id)
                    noteTransfers()
                    log.append("\(spec.name): a move \(t.outbound ? "to" : "from") instance \(t.instance) at route epoch \(t.epoch) is under way: frozen on shard \(owner) until the route settles it")
                } else if states[owner].imported.contains(id) || states[owner].exported.contains(id) {
                    // Imported and not thawed (the source's drop is on disk), or exported and
                    // never imported: either way it trades here.
                    guard case .applied = admin(shard: owner, .thaw(symbolId: id)) else {
                        throw EngineError("\(spec.name): shard \(owner) cannot thaw it after an interrupted migration")
                    }
                    log.append("\(spec.name): an interrupted migration \(states[owner].imported.contains(id) ? "finished" : "undone"): shard \(owner) thawed it")
                }
            case 2:
                let exporting = owners.filter { states[$0].exported.contains(id) }
                guard exporting.count == 1, let source = exporting.first, let target = owners.first(where: { $0 != source }),
                      !states[target].exported.contains(id) else {
                    throw EngineError("symbol \(spec.name) is owned by shards \(owners[0]) and \(owners[1]) and no interrupted migration explains it (was its shard changed in the config under an existing journal?)")
                }
                // The import is on disk (it needs the export on disk first): finish it.
                if states[target].imported.contains(id), case .refused(_, let why) = admin(shard: target, .thaw(symbolId: id)) {
                    throw EngineError("\(spec.name): shard \(target) cannot thaw it after an interrupted migration: \(why)")
                }
                if case .refused(_, let why) = admin(shard: source, .drop(symbolId: id)) {
                    throw EngineError("\(spec.name): shard \(source) cannot drop it after an interrupted migration: \(why)")
                }
                log.append("\(spec.name): an interrupted migration from shard \(source) finished: shard \(target) owns it")
                owner = target
            default:
                throw EngineError("symbol \(spec.name) is owned by \(owners.isEmpty ? "no shard" : "shards \(owners.map(String.init).joined(separator: ", "))") after recovery: the journals disagree")
            }
            if states[owner].transfers[id] == nil {
                // A shard that held commands of the symbol for a move that ended there before
                // the import (a crash; an abandoned move) journaled their first offset as a floor:
                // the owner reads the partition again from there, once (it takes only what it
                // had not taken: the floor is raised to its own position there).
                for other in shards.indices where other != owner {
                    for (key, last) in (states[other].strayFloors[id] ?? [:]) {
                        guard let (source, partition) = splitSourceKey(key) else { continue }
                        let floor = last &+ 1
                        switch clampedFloor(shard: owner, .ingressFloor(symbolId: id, source: source, partition: partition, offset: floor)) {
                        case .applied(0): break  // the owner takes them already
                        case .applied:
                            log.append("\(spec.name): shard \(other) held its commands of \(key) from offset \(floor) for a move that did not finish: shard \(owner) reads them again from there")
                        case .refused(_, let why):
                            throw EngineError("\(spec.name): shard \(owner) cannot take the floor \(floor) of \(key) that shard \(other) held it from: \(why)")
                        }
                    }
                }
            }
            if owner != routes.shard(of: id) { log.append("\(spec.name): on shard \(owner) (moved there by a migration)") }
            routes.set(id, shard: owner)
        }
        return log
    }
}

extension Engine {
    /// One request of the control socket (ControlSocket.swift): its answer's lines.
    func controlRequest(_ line: String) -> [String] {
        let words = line.split(separator: " ").map(String.init)
        switch words.first {
        case "transfer-out":
            guard words.count == 3 || words.count == 4, let shard = words.count == 4 ? Int(words[3]) : 0 else {
                return ["error usage: transfer-out SYMBOL INSTANCE [SHARD]"]
            }
            do {
                let r = try transferOut(symbol: words[1], to: words[2], shard: shard)
                return ["ok", "epoch \(r.epoch) shard \(r.shard) orders \(r.orders) bytes \(r.bookBytes) frozen_at \(r.frozenAt) sequence \(r.exportSequence)"]
            } catch { return ["error \(error)"] }
        case "transfer-in":
            guard words.count == 4, let epoch = UInt64(words[2]), let shard = Int(words[3]) else { return ["error usage: transfer-in SYMBOL EPOCH SHARD"] }
            do {
                let r = try transferIn(symbol: words[1], epoch: epoch, shard: shard)
                let phases = ["load", "list", "queue", "expect", "ids", "import", "durable", "claim", "held"].map { "\($0) \(r.phases[$0] ?? 0)" }.joined(separator: " ")
                return ["ok", "shard \(r.shard) held \(r.held) listed \(r.listed ? 1 : 0) trading_at \(r.tradingAt) sequence \(r.importSequence) \(phases)"]
            } catch { return ["error \(error)"] }
        case "transfer-settle":
            return ["ok"] + settleTransfers()
        case "transfer-wait":
            guard words.count == 3, let epoch = UInt64(words[2]) else { return ["error usage: transfer-wait SYMBOL EPOCH"] }
            do {
                let (route, at) = try awaitTransfer(symbol: words[1], epoch: epoch)
                return ["ok", "instance \(route.instance) shard \(route.shard) epoch \(route.epoch) decided_at \(at)"] + settleTransfers()
            } catch { return ["error \(error)"] }
        case "migrate":
            guard words.count == 3, let shard = Int(words[2]) else { return ["error usage: migrate SYMBOL SHARD"] }
            do {
                let report = try migrate(symbol: words[1], toShard: shard)
                return ["ok", report.description, "pause_ns \(report.pauseNanoseconds)"]
            } catch {
                return ["error \(error)"]
            }
        case "routes":
            guard words.count == 1, let routes else { return ["error usage: routes"] }
            return ["ok"] + (symbolTable?.all ?? []).map { "\($0.spec.name) \($0.spec.id) \(routes.shard(of: $0.spec.id).map(String.init) ?? "-")" }
        case "list":
            // list NAME SHARD [id N] [tick N] [lot N] [min N] [max N] [maxqty N]
            let usage = ["error usage: list SYMBOL SHARD [id N] [tick N] [lot N] [min N] [max N] [maxqty N]"]
            guard words.count >= 3, words.count % 2 == 1, let shard = Int(words[2]) else { return usage }
            var rules = SymbolSpec(name: words[1], id: 0)
            var id: UInt32?
            var seen = Set<String>()
            for k in stride(from: 3, to: words.count, by: 2) {
                let key = words[k]
                guard seen.insert(key).inserted else { return ["error \(key) given twice"] }
                guard let value = Int64(words[k + 1]) else { return ["error \(key): \(words[k + 1].prefix(40)) is not an integer"] }
                switch key {
                case "id":
                    guard value >= 1, value <= Int64(UInt32.max) else { return ["error id \(value): between 1 and \(UInt32.max)"] }
                    id = UInt32(value)
                case "tick": rules.tickSize = value
                case "lot": rules.lotSize = value
                case "min": rules.minPrice = value
                case "max": rules.maxPrice = value
                case "maxqty": rules.maxOrderQuantity = value
                default: return usage
                }
            }
            do {
                let report = try listSymbol(words[1], shard: shard, id: id, rules: rules)
                return ["ok", report.description, "id \(report.spec.id)"]
            } catch {
                return ["error \(error)"]
            }
        case "symbols":
            guard words.count == 1, let table = symbolTable, let routes else { return ["error usage: symbols"] }
            return ["ok"] + (0..<table.publishedCount).compactMap { table.published(at: $0) }.map { e in
                let s = e.spec
                return "\(s.name) \(s.id) \(routes.shard(of: s.id).map(String.init) ?? "-") \(s.tickSize) \(s.lotSize) \(s.minPrice) \(s.maxPrice) \(s.maxOrderQuantity)"
            }
        case "migrations":
            let m = migrations
            return ["ok", "in_progress \(m.inProgress) done \(m.done) failed \(m.failed) last_pause_ns \(m.lastPauseNanoseconds) max_pause_ns \(m.maxPauseNanoseconds) total_pause_ns \(m.totalPauseNanoseconds)"]
        case "replication":
            return ["ok"] + replicationStatus()
        case "promote":
            guard words.count <= 2 else { return ["error usage: promote [EPOCH]"] }
            let epoch = words.count == 2 ? UInt64(words[1]) : nil
            if words.count == 2 && epoch == nil { return ["error usage: promote [EPOCH]"] }
            do { return ["ok", try promote(epoch: epoch)] } catch { return ["error \(error)"] }
        case "switchover":
            do {
                let text = try switchover()
                // The run command stops this engine and starts it again as the standby.
                onSwitchover?()
                return ["ok", text]
            } catch { return ["error \(error)"] }
        default:
            return ["error unknown request (migrate SYMBOL SHARD | routes | list SYMBOL SHARD [...] | symbols | migrations | replication | promote [EPOCH] | switchover)"]
        }
    }

    /// Asks the engine of instance directory `directory` (ControlSocket.swift).
    public static func ask(directory: String, _ request: String, timeout: Int = 30) throws(EngineError) -> [String] {
        try ControlSocket.ask(directory: directory, request, timeout: timeout)
    }
}

extension Engine {
    /// One second of the automatic rebalance (the control thread): a move, when due, runs on a
    /// thread of its own (the control thread keeps serving clients meanwhile).
    func autoRebalanceTick(_ rebalancer: inout AutoRebalancer) {
        guard let file = engineFile, let routes else { return }
        let busy = shards.indices.map { ShardCounters.readHistogram(file.counters($0).matchLatency).sum }
        let commands = (0..<file.symbolCount).map { file.symbolCounters($0).read(SymbolCounters.commands) }
        let names = (0..<file.symbolCount).map { file.symbol($0).name }
        let ids = Dictionary((symbolTable?.all ?? []).map { ($0.spec.name, $0.spec.id) }, uniquingKeysWith: { a, _ in a })
        guard migrations.inProgress == 0,
              let due = rebalancer.tick(now: monotonicNanoseconds(), busy: busy, commands: commands, names: names,
                                        shardOf: { ids[$0].flatMap { routes.shard(of: $0) } }, shards: shards.count) else { return }
        log("automatic rebalance: shard \(due.shard) busy \(Int(due.busyPercent))% for \(Int(rebalancer.policy.afterSeconds)) s: \(due.move)")
        let move = due.move
        Thread { [weak self] in
            guard let self else { return }
            do { _ = try self.migrate(symbol: move.symbol, toShard: move.to) } catch {
                self.log("automatic rebalance: \(error)")
            }
        }.start()
    }
}
