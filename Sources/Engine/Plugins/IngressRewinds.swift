// Ingress that follows a symbol from one engine to another (the host's side; the plugin's side is
// the kafka-ingress plugin, the shard's is Ingress.swift).
//
// Engines that share an orders topic each read all of its partitions and take the messages of
// their own symbols. When a symbol moves from engine A to engine B, the partition itself is the
// queue of what waits for the move: A's shard drops, unsequenced, every message of the symbol
// after its positions at the freeze (they are B's), B's plugin skipped them while the symbol was
// elsewhere, and once B owns it, B reads its partitions again from those positions (the floors
// its import journaled). If the move is undone, A does the same from its own floors.
//
// The order of things is what makes it exactly once: the rewind is registered (and the
// generation bumped) before the symbol turns this engine's in the plugin's eyes, and the
// plugin checks the generation after it saw the symbol turn this engine's, before it submits:
// so no newer message of the symbol reaches its shard ahead of the older ones the rewind brings
// back (its floor would then pass them).

final class IngressRewinds: @unchecked Sendable {
    private let lock = Lock()
    private var generation: UInt64 = 0
    /// "topic#partition" → the first offset to read again.
    private var pending: [String: UInt64] = [:]
    /// Symbols another engine takes the ingress of (moving out, or in and not settled here).
    private var away: Set<UInt32> = []
    /// Per pending rewind, the symbols it reads again for.
    private var covers: [String: Set<UInt32>] = [:]
    /// Told when a plugin took a rewind: the source key, the offset the plugin had read through,
    /// the symbols it was for (their shards' floors go once past it: Ingress.swift). Set once,
    /// before plugins run.
    var onTaken: ((String, UInt64, Set<UInt32>) -> Void)?

    /// Another engine takes `symbol`'s ingress messages from now on (a move away was exported,
    /// or one in is under way and not settled here).
    func leave(_ symbol: UInt32) { _ = lock.locked { away.insert(symbol) } }

    /// `symbol` is this engine's again and its sources are read again from `floors` (source →
    /// the last offset of it applied; UInt64.max: none, read from 0): the rewinds first, then
    /// the symbol. `undone`: a move away from here was undone: this engine's shards dropped some
    /// of its messages that the plugin did not skip itself, so the plugin reads again from the
    /// floors (it is told the symbol `Self.anySymbol`).
    func gain(_ symbol: UInt32, floors: [String: UInt64], undone: Bool = false) {
        lock.locked {
            for (key, last) in floors {
                let from = last &+ 1
                pending[key] = min(pending[key] ?? from, from)
                covers[key, default: []].insert(symbol)
                if undone { covers[key, default: []].insert(Self.anySymbol) }
            }
            if !floors.isEmpty { generation &+= 1 }
            away.remove(symbol)
        }
    }

    /// The move away was settled elsewhere: the route says where it is (nothing to keep here).
    func forget(_ symbol: UInt32) { _ = lock.locked { away.remove(symbol) } }

    func isAway(_ symbol: UInt32) -> Bool { lock.locked { away.contains(symbol) } }

    var currentGeneration: UInt64 { lock.locked { generation } }

    /// A symbol id no symbol has (CB_SYMBOL_ANY): the plugin reads again from the floor.
    static let anySymbol = UInt32.max

    /// The rewind of a source partition, handed out once, and the symbols it is for; `reached`:
    /// the last offset the plugin had read of it (UInt64.max: none).
    func take(_ key: String, reached: UInt64) -> (from: UInt64, symbols: [UInt32])? {
        let taken = lock.locked { () -> (UInt64, Set<UInt32>)? in
            guard let from = pending.removeValue(forKey: key) else { return nil }
            return (from, covers.removeValue(forKey: key) ?? [])
        }
        guard let (from, symbols) = taken else { return nil }
        // Read again through `reached` at most (from `from`): nothing of these symbols waits
        // below it once a command above it is applied.
        if reached != UInt64.max { onTaken?(key, reached, symbols.subtracting([Self.anySymbol])) }
        return (from, symbols.sorted())
    }
}
