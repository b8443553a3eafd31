// Which symbols to move so that the shards carry a similar load (`crossbook rebalance`). The
// load of a symbol is its command rate, measured from the control file's per-symbol counters
// over an interval; a shard's load is the sum of its symbols'. The plan is greedy: move, from
// the busiest shard to the least busy, the symbol that lowers the busier of the two the most,
// while that lowers the busiest shard's load by at least `minimumGain` (a fraction); at most
// `maxMoves` moves. A pure function: the tool measures, plans, prints and (with --apply) asks
// the engine to migrate.

public struct RebalanceMove: Sendable, Equatable, CustomStringConvertible {
    public var symbol: String
    public var from: Int
    public var to: Int
    /// The symbol's load, and the two shards' loads before and after the move.
    public var load: Double
    public var before: (from: Double, to: Double)
    public var after: (from: Double, to: Double)

    public static func == (a: Self, b: Self) -> Bool { a.symbol == b.symbol && a.from == b.from && a.to == b.to }

    public var description: String {
        "move \(symbol) (\(Int(load.rounded())) commands/s) from shard \(from) to shard \(to): shard \(from) \(Int(before.from.rounded())) -> \(Int(after.from.rounded())), shard \(to) \(Int(before.to.rounded())) -> \(Int(after.to.rounded())) commands/s"
    }
}

public enum Rebalance {
    /// `symbols`: each symbol's name, shard and load; `shards`: how many. Returns the moves in
    /// the order to make them.
    public static func plan(symbols: [(name: String, shard: Int, load: Double)], shards: Int,
                            minimumGain: Double = 0.1, maxMoves: Int = 4) -> [RebalanceMove] {
        guard shards > 1 else { return [] }
        var placement = symbols
        var moves: [RebalanceMove] = []
        while moves.count < maxMoves {
            var loads = [Double](repeating: 0, count: shards)
            for s in placement where s.shard >= 0 && s.shard < shards { loads[s.shard] += s.load }
            guard let busiest = loads.indices.max(by: { loads[$0] < loads[$1] }),
                  let idlest = loads.indices.min(by: { loads[$0] < loads[$1] }), busiest != idlest, loads[busiest] > 0 else { break }
            // The candidate that leaves the busier of the two shards lowest.
            var best: (index: Int, peak: Double)?
            for (i, s) in placement.enumerated() where s.shard == busiest && s.load > 0 {
                let peak = max(loads[busiest] - s.load, loads[idlest] + s.load)
                if best == nil || peak < best!.peak { best = (i, peak) }
            }
            guard let choice = best, choice.peak <= loads[busiest] * (1 - minimumGain) else { break }
            let s = placement[choice.index]
            moves.append(RebalanceMove(symbol: s.name, from: busiest, to: idlest, load: s.load,
                                       before: (loads[busiest], loads[idlest]),
                                       after: (loads[busiest] - s.load, loads[idlest] + s.load)))
            placement[choice.index].shard = idlest
        }
        return moves
    }
}
