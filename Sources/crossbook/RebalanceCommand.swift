// `crossbook rebalance`: measures each symbol's command rate from the running engine's control
// file, proposes moves that level the shards (Rebalance.plan), and with --apply makes them
// (through the control socket, one migration at a time).
import ArgumentParser
import Engine
import Foundation
import Glibc
import SharedMemory

struct RebalanceCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "rebalance",
        abstract: "Propose (--dry-run, the default) or make (--apply) symbol moves that level the shards' load.",
        discussion: "A symbol's load is its command rate over --interval seconds (the control file's per-symbol counters); a shard's is the sum of its symbols'. Moves are proposed while one lowers the busiest shard's load by at least --min-gain. Not automatic: run it from cron or a supervisor with a cool-down of your choosing.")

    @OptionGroup var target: InstanceOptions

    @Option(help: "Seconds to measure the rates over (0.1 to 3600).")
    var interval: Double = 1

    @Option(help: "The least fraction of the busiest shard's load a move must take off it (0 to 1).")
    var minGain: Double = 0.1

    @Option(help: "Moves at most.")
    var maxMoves: Int = 4

    @Flag(help: "Make the moves (default: only print them).")
    var apply = false

    @Flag(help: "Only print the moves (the default).")
    var dryRun = false

    func validate() throws {
        guard interval.isFinite, interval >= 0.1, interval <= 3600 else { throw ValidationError("--interval between 0.1 and 3600") }
        guard minGain.isFinite, minGain >= 0, minGain <= 1 else { throw ValidationError("--min-gain between 0 and 1") }
        guard maxMoves >= 1, maxMoves <= 64 else { throw ValidationError("--max-moves between 1 and 64") }
        guard !(apply && dryRun) else { throw ValidationError("--apply or --dry-run, not both") }
    }

    func run() throws {
        let directory = target.resolvedDirectory
        let file: EngineFile
        do { file = try EngineFile.attach(directory: directory) } catch {
            throw CLIError("engine '\(target.instance)' is not running: \(error)")
        }
        guard processIsAlive(file.enginePid) else { throw CLIError("engine '\(target.instance)' (pid \(file.enginePid)) is gone") }
        let names = (0..<file.symbolCount).map { file.symbol($0).name }
        let before = (0..<file.symbolCount).map { file.symbolCounters($0).read(SymbolCounters.commands) }
        usleep(UInt32(interval * 1e6))
        let after = (0..<file.symbolCount).map { file.symbolCounters($0).read(SymbolCounters.commands) }
        let routes = try ask("routes")
        var shardOf: [String: Int] = [:]
        for line in routes.dropFirst() {
            let f = line.split(separator: " ")
            if f.count == 3, let shard = Int(f[2]) { shardOf[String(f[0])] = shard }
        }
        var symbols: [(name: String, shard: Int, load: Double)] = []
        for (i, name) in names.enumerated() {
            guard let shard = shardOf[name] else { continue }
            symbols.append((name, shard, Double(after[i] &- before[i]) / interval))
        }
        var loads = [Double](repeating: 0, count: file.shardCount)
        for s in symbols where s.shard < loads.count { loads[s.shard] += s.load }
        print("loads over \(interval) s: " + loads.enumerated().map { "shard \($0.offset) \(Int($0.element.rounded())) commands/s" }.joined(separator: ", "))
        let moves = Rebalance.plan(symbols: symbols, shards: file.shardCount, minimumGain: minGain, maxMoves: maxMoves)
        if moves.isEmpty {
            print("no move: the shards are level enough (no move takes \(Int(minGain * 100))% off the busiest)")
            return
        }
        for move in moves { print((apply ? "" : "would ") + move.description) }
        guard apply else { return }
        for move in moves {
            let answer = try ask("migrate \(move.symbol) \(move.to)")
            guard answer.first == "ok" else { throw CLIError("\(move.symbol): \(answer.first.map { String($0.dropFirst(6)) } ?? "no answer")") }
            if answer.count > 1 { print(answer[1]) }
        }
    }

    private func ask(_ request: String) throws -> [String] {
        do { return try Engine.ask(directory: target.resolvedDirectory, request) } catch {
            throw CLIError("engine '\(target.instance)': \(error)")
        }
    }
}
