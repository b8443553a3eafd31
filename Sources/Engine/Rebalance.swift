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

/// The automatic rebalance (`[engine] rebalance_*`): a shard busy above `busyPercent` of its
/// time (the time it spends on batches of commands, from its match-latency histogram) for
/// `afterSeconds` gets one symbol moved off it (`Rebalance.plan` over the last second's command
/// rates), then nothing moves for `cooldownSeconds`.
public struct AutoRebalance: Sendable, Equatable {
    public var busyPercent: Double
    public var afterSeconds: Double
    public var cooldownSeconds: Double
    public init(busyPercent: Double, afterSeconds: Double, cooldownSeconds: Double) {
        self.busyPercent = busyPercent
        self.afterSeconds = afterSeconds
        self.cooldownSeconds = cooldownSeconds
    }
}

/// The control thread's bookkeeping for the automatic rebalance, ticked once a second.
struct AutoRebalancer {
    let policy: AutoRebalance
    private var lastBusy: [UInt64] = []
    private var lastCommands: [UInt64] = []
    private var lastTick: UInt64 = 0
    private var busySince: [UInt64?] = []
    private var lastMove: UInt64 = 0

    init(policy: AutoRebalance) { self.policy = policy }

    /// Each shard's busy nanoseconds so far and each symbol's commands so far (control-file
    /// order), now; returns the move to make, if one is due.
    mutating func tick(now: UInt64, busy: [UInt64], commands: [UInt64], names: [String], shardOf: (String) -> Int?,
                       shards: Int) -> (move: RebalanceMove, busyPercent: Double, shard: Int)? {
        defer {
            lastBusy = busy
            lastCommands = commands
            lastTick = now
        }
        guard lastTick != 0, lastBusy.count == busy.count, lastCommands.count == commands.count, now > lastTick else {
            busySince = [UInt64?](repeating: nil, count: busy.count)
            return nil
        }
        let elapsed = Double(now - lastTick)
        var hottest: (shard: Int, percent: Double)?
        for s in busy.indices {
            let percent = 100 * Double(busy[s] &- lastBusy[s]) / elapsed
            if percent >= policy.busyPercent {
                if busySince[s] == nil { busySince[s] = lastTick }
                if Double(now - busySince[s]!) >= policy.afterSeconds * 1e9, hottest == nil || percent > hottest!.percent {
                    hottest = (s, percent)
                }
            } else {
                busySince[s] = nil
            }
        }
        guard let hot = hottest, lastMove == 0 || Double(now - lastMove) >= policy.cooldownSeconds * 1e9 else { return nil }
        var symbols: [(name: String, shard: Int, load: Double)] = []
        for (i, name) in names.enumerated() {
            guard let shard = shardOf(name) else { continue }
            symbols.append((name, shard, Double(commands[i] &- lastCommands[i]) * 1e9 / elapsed))
        }
        // One move, off the busy shard.
        guard let move = Rebalance.plan(symbols: symbols, shards: shards, minimumGain: 0.05, maxMoves: 1).first, move.from == hot.shard else {
            return nil
        }
        lastMove = now
        busySince[hot.shard] = nil
        return (move, hot.percent, hot.shard)
    }
}
