// Listing a symbol while the engine runs (`crossbook symbol add`): no restart for a new pair.
//
// The steps (one listing at a time, and never during a migration):
//   1. The instance's table (InstanceSymbols) checks the name, the id and the rules, and gives
//      the listing the next slot; nothing changes yet.
//   2. Every shard journals the listing (AdminCommand.listSymbol) and applies it, all at once:
//      the slot is its from now on; the home shard makes the empty book and owns it. Each is
//      waited for until it is on disk.
//   3. Only then is it published (the control file's symbol block, then its count; the
//      instance's `symbols` file, by rename; the plugins' symbol table): clients and plugins
//      find it, and its first order reaches a shard that has journaled it.
// A crash between 2 and 3 leaves some shards with the listing on disk and others without: at
// the next start every shard that lacks it journals it then (`completeListings`), so the home
// shard owns it; the listing the operator never saw acknowledged is there, empty. A listing no
// shard journaled is gone, as if never asked.

import Foundation
import Glibc
import OrderBook
import SharedMemory
import Wire

/// What a listing did.
public struct ListingReport: Sendable, Equatable, CustomStringConvertible {
    public var spec: SymbolSpec
    public var shard: Int
    public var slot: Int
    /// Each shard's sequence of the listing record.
    public var sequences: [UInt64]
    public var nanoseconds: UInt64

    public var description: String {
        "listed \(spec.name) id \(spec.id) on shard \(shard) (slot \(slot); tick \(spec.tickSize) lot \(spec.lotSize) band \(spec.minPrice)...\(spec.maxPrice) max \(spec.maxOrderQuantity)) in \(String(format: "%.3f", Double(nanoseconds) / 1e6)) ms"
    }
}

extension Engine {
    /// Lists symbol `name` on shard `shard` with `rules` (its tick, lot, band and maximum
    /// quantity; name and id are set here), `id` nil: one is chosen. Returns once every shard has
    /// it on disk and clients can find it; throws, naming why, when it is refused.
    public func listSymbol(_ name: String, shard: Int, id: UInt32? = nil, rules: SymbolSpec = SymbolSpec(name: "", id: 0),
                           timeout: Double = 5) throws(EngineError) -> ListingReport {
        guard let table = symbolTable, routes != nil, engineFile != nil else { throw EngineError("the engine is not running") }
        guard role != .standby else { throw EngineError("this engine is a standby: list symbols on the primary") }
        guard !settings.readOnly else { throw EngineError("a read-only engine lists nothing") }
        return try migrationSerial.locked { () throws(EngineError) -> ListingReport in
            let started = monotonicNanoseconds()
            // A listing a failure left half done (some shards have it) is finished first.
            for line in try completeListings(readOnly: false, timeout: timeout) { log(line) }
            let listing = try table.prepare(name: name, id: id, home: shard, rules: rules, book: settings.capacity,
                                            pools: settings.shards.map(\.pools))
            // Its book is allocated now, on the home shard: refused rather than met by the OOM killer.
            let bytes = shard == InstanceSymbols.away || settings.shards[shard].pools != nil ? OrderBook.sharingBookBytes : settings.capacity.bookBytes
            if let available = Self.memoryAvailable(), bytes > available {
                throw EngineError("listing of \(name): its book needs \(bytes >> 20) MiB and the host has \(available >> 20) MiB available")
            }
            // Every shard at once (each journals it in its own slot order: listings are one at a time).
            var sequences: [UInt64] = []
            let outcomes = admin(shards: Array(shards.indices), .listSymbol(listing), timeout: timeout)
            for (i, outcome) in outcomes.enumerated() {
                switch outcome {
                case .applied(let sequence):
                    sequences.append(sequence)
                case .refused(_, let why):
                    log("listing of \(name): shard \(i) refused it: \(why) (the shards that have it keep it: the next listing or start finishes it)")
                    throw EngineError("listing of \(name) refused by shard \(i): \(why)")
                }
            }
            publishListings()
            let report = ListingReport(spec: InstanceSymbols.spec(of: listing), shard: shard, slot: Int(listing.slot),
                                       sequences: sequences, nanoseconds: monotonicNanoseconds() &- started)
            log(report.description)
            return report
        }
    }

    /// Journals, on every shard that lacks them, the listings another shard has (a listing a
    /// crash or a refusal left half done). Lines for the log.
    func completeListings(readOnly: Bool, timeout: Double = 10) throws(EngineError) -> [String] {
        guard !readOnly, let table = symbolTable else { return [] }
        var lines: [String] = []
        let all = table.all
        for i in shards.indices {
            guard let state = adminState(shard: i, timeout: timeout) else { throw EngineError("shard \(i) did not answer") }
            guard state.symbolCount < all.count else { continue }
            for slot in state.symbolCount..<all.count {
                let spec = all[slot].spec
                let listing = InstanceSymbols.listing(of: spec, slot: slot, home: all[slot].home)
                if case .refused(_, let why) = admin(shard: i, .listSymbol(listing), timeout: timeout) {
                    throw EngineError("shard \(i) cannot take the listing of \(spec.name) that other shards have: \(why)")
                }
                lines.append("\(spec.name): listed on shard \(i) too (a listing interrupted before every shard had it)")
            }
        }
        return lines
    }

    /// Shows clients and plugins the symbols the shards have adopted since the last call: each
    /// one's control-file block, then the `symbols` file again (written aside and renamed: a
    /// reader sees the old list or the new one).
    func publishListings() {
        guard let table = symbolTable, let file = engineFile, let routes else { return }
        publishLock.locked {
            let fresh = table.unpublished()
            guard !fresh.isEmpty else { return }
            for (slot, e) in fresh {
                file.publishSymbol(slot, name: e.spec.name, id: e.spec.id, shard: routes.shard(of: e.spec.id) ?? -1)
            }
            let path = InstanceLayout.symbolsPath(settings.directory)
            let text = table.symbolsFileText(shardOf: { routes.shard(of: $0) })
            do {
                try writeFile(path + ".new", text)
                guard rename(path + ".new", path) == 0 else { throw EngineError("rename \(path): \(String(cString: strerror(errno)))") }
            } catch {
                log("the symbols file was not rewritten (\(error)); clients attaching now do not see \(fresh.map(\.entry.spec.name).joined(separator: " "))")
            }
            // A symbol listed away (it arrives from another engine) has no route of this engine yet.
            for (_, e) in fresh {
                if let shard = routes.shard(of: e.spec.id) { pluginHost?.routeEnd(symbolId: e.spec.id, shard: shard) }
            }
        }
    }
}
