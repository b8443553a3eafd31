// The instance's symbols, by slot: the config's first, then those listed while the engine runs
// (`crossbook symbol add`, Engine.listSymbol). A listing is an admin command
// (AdminCommand.listSymbol) that every shard journals, in slot order; whichever shard applies a
// listing first (live, or replaying its journal or snapshot at start, or a standby replaying
// its primary's records) adopts it here, the others check that theirs is the same. So every
// shard's journal names every symbol it may see, and a restart rebuilds this table from them
// (no file of its own to lose or disagree with).
//
// Room is fixed at start ([engine] max_symbols): every shard has a slot for every symbol (one
// may move to any shard), allocated once; listing past the room is refused with a reason.
// Written under a lock, off the order path (the shards read their own copies).

import Glibc
import OrderBook
import SharedMemory
import Wire

final class InstanceSymbols: @unchecked Sendable {
    struct Entry: Equatable {
        var spec: SymbolSpec
        /// The shard that owned it first (its config shard, or the listing's home).
        var home: Int
    }

    /// Slots for this many symbols, config's included.
    let capacity: Int
    /// The config's symbols: slots 0 ..< configured.
    let configured: Int
    /// Symbol ids are below this (each shard's id → slot index has this many entries).
    let idLimit: UInt32
    private let lock = Lock()
    private var entries: [Entry]
    private var byName: [String: Int] = [:]
    private var byId: [UInt32: Int] = [:]
    /// Slots the control file and the instance's `symbols` file show (clients find them there).
    private var published: Int

    /// The headroom for listings when [engine] max_symbols is not set.
    static let defaultHeadroom = 256

    /// The instance's shards (a listing's home is one of them).
    let shards: Int

    init(config: [(spec: SymbolSpec, shard: Int)], capacity: Int?, shards: Int) {
        self.shards = shards
        configured = config.count
        self.capacity = min(max(capacity ?? (config.count + Self.defaultHeadroom), config.count), InstanceLayout.maxSymbols)
        let maxId = Int(config.map(\.spec.id).max() ?? 0)
        idLimit = UInt32(min(maxId + 1 + (self.capacity - config.count), Int(UInt32.max)))
        entries = config.map { Entry(spec: $0.spec, home: $0.shard) }
        published = config.count
        for (i, e) in entries.enumerated() {
            byName[e.spec.name] = byName[e.spec.name] ?? i
            byId[e.spec.id] = byId[e.spec.id] ?? i
        }
    }

    var count: Int { lock.locked { entries.count } }
    var all: [Entry] { lock.locked { entries } }
    func entry(_ slot: Int) -> Entry? { lock.locked { slot >= 0 && slot < entries.count ? entries[slot] : nil } }
    func slot(named name: String) -> Int? { lock.locked { byName[name] } }
    func slot(ofId id: UInt32) -> Int? { lock.locked { byId[id] } }
    func spec(named name: String) -> SymbolSpec? { lock.locked { byName[name].map { entries[$0].spec } } }
    func spec(ofId id: UInt32) -> SymbolSpec? { lock.locked { byId[id].map { entries[$0].spec } } }

    /// What clients and plugins may see: the published symbols only.
    var publishedCount: Int { lock.locked { published } }
    func published(named name: String) -> Entry? { lock.locked { byName[name].flatMap { $0 < published ? entries[$0] : nil } } }
    func published(id: UInt32) -> Entry? { lock.locked { byId[id].flatMap { $0 < published ? entries[$0] : nil } } }
    func published(at slot: Int) -> Entry? { lock.locked { slot >= 0 && slot < published ? entries[slot] : nil } }

    /// A new listing's record, for the next slot, or why not (nothing is changed here: the
    /// shards adopt it when they apply it). `id` nil: the lowest free id above every symbol's.
    func prepare(name: String, id: UInt32?, home: Int, rules: SymbolSpec, book: BookCapacity,
                 pools: [BookCapacity?]) throws(EngineError) -> AdminCommand.Listing {
        try lock.locked { () throws(EngineError) -> AdminCommand.Listing in
            guard entries.count < capacity else {
                throw EngineError("no room for another symbol: the instance has \(entries.count) of [engine] max_symbols = \(capacity) (raise it and restart)")
            }
            guard byName[name] == nil else { throw EngineError("symbol \(name) exists already (id \(entries[byName[name]!].spec.id))") }
            guard name.utf8.count <= InstanceLayout.symbolNameBytes, SymbolSpec.isValidName(name) else {
                throw EngineError("symbol name \(name.debugDescription): 1 to \(InstanceLayout.symbolNameBytes) letters, digits, '-', '_', '.', '/' or ':'")
            }
            guard home == Self.away || (home >= 0 && home < shards) else { throw EngineError("no shard \(home) (\(shards) shards)") }
            let chosen: UInt32
            if let id {
                guard id >= 1, id < idLimit else { throw EngineError("symbol id \(id) outside 1 ..< \(idLimit) (the ids this instance has room for)") }
                guard byId[id] == nil else { throw EngineError("symbol id \(id) is \(entries[byId[id]!].spec.name)'s") }
                chosen = id
            } else {
                var next = (entries.map(\.spec.id).max() ?? 0) + 1
                while byId[next] != nil { next += 1 }
                if next >= idLimit {
                    next = 1
                    while byId[next] != nil { next += 1 }
                }
                guard next < idLimit else { throw EngineError("no free symbol id below \(idLimit)") }
                chosen = next
            }
            var spec = rules
            spec.name = name
            spec.id = chosen
            do throws(BookConfigError) {
                try spec.validate()
                try book.validate(for: spec)
                // Any symbol can move to any shard: it must fit every shard's pools.
                for pool in pools { if let pool { try pool.validate(for: spec) } }
            } catch { throw EngineError.bookConfig(error) }
            return Self.listing(of: spec, slot: entries.count, home: home)
        }
    }

    /// A shard applies `listing` (live or replayed): the table takes it if it is the next slot,
    /// or checks it is the one it has. Nil, or why the shard must refuse it.
    func adopt(_ listing: AdminCommand.Listing) -> String? {
        let spec = Self.spec(of: listing)
        return lock.locked { () -> String? in
            let slot = Int(listing.slot)
            if slot < entries.count {
                let mine = entries[slot]
                return mine.spec == spec && mine.home == Self.home(of: listing) ? nil
                    : "slot \(slot) is \(mine.spec.name) (id \(mine.spec.id)) here, the listing says \(spec.name) (id \(spec.id))"
            }
            guard slot == entries.count else { return "listing of slot \(slot) before slot \(entries.count)" }
            guard slot < capacity else { return "no room for symbol \(spec.name): [engine] max_symbols = \(capacity)" }
            guard listing.home == UInt32.max || Int(listing.home) < shards else { return "no shard \(listing.home)" }
            guard listing.id >= 1, listing.id < idLimit else { return "symbol id \(listing.id) outside 1 ..< \(idLimit)" }
            guard byName[spec.name] == nil, byId[spec.id] == nil else { return "symbol \(spec.name) (id \(spec.id)) exists already" }
            guard spec.name.utf8.count <= InstanceLayout.symbolNameBytes, (try? spec.validate()) != nil else {
                return "symbol \(spec.name.debugDescription): its rules are not valid"
            }
            entries.append(Entry(spec: spec, home: Self.home(of: listing)))
            byName[spec.name] = slot
            byId[spec.id] = slot
            return nil
        }
    }

    /// The record that lists `spec` in `slot`, owned first by shard `home` (`spec(of:)`'s inverse).
    /// A listing's home that is no shard: the symbol trades on another engine and arrives by a
    /// transfer (`Engine.transferIn`); record value UInt32.max.
    static let away = -1

    static func home(of listing: AdminCommand.Listing) -> Int {
        listing.home == UInt32.max ? away : Int(listing.home)
    }

    static func listing(of spec: SymbolSpec, slot: Int, home: Int) -> AdminCommand.Listing {
        AdminCommand.Listing(slot: UInt32(slot), home: home == away ? UInt32.max : UInt32(home), name: spec.name, id: spec.id, tickSize: spec.tickSize,
                             lotSize: spec.lotSize, minPrice: spec.minPrice, maxPrice: spec.maxPrice,
                             maxOrderQuantity: spec.maxOrderQuantity)
    }

    static func spec(of l: AdminCommand.Listing) -> SymbolSpec {
        SymbolSpec(name: l.name, id: l.id, tickSize: l.tickSize, lotSize: l.lotSize, minPrice: l.minPrice,
                   maxPrice: l.maxPrice, maxOrderQuantity: l.maxOrderQuantity)
    }

    /// The slots adopted but not shown to clients yet, marked shown: the caller publishes them
    /// (control file, `symbols` file) in order, under `publishing`.
    func unpublished() -> [(slot: Int, entry: Entry)] {
        lock.locked {
            defer { published = entries.count }
            return (published..<entries.count).map { ($0, entries[$0]) }
        }
    }

    /// The `symbols` file's text (clients and tools read it): one line per symbol, by slot.
    func symbolsFileText(shardOf: (UInt32) -> Int?) -> String {
        lock.locked {
            entries[0..<published].map { e in
                let s = e.spec
                return "\(s.name) \(s.id) \(shardOf(s.id) ?? max(e.home, 0)) \(s.tickSize) \(s.lotSize) \(s.minPrice) \(s.maxPrice) \(s.maxOrderQuantity)\n"
            }.joined()
        }
    }
}
