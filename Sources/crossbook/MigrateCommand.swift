// `crossbook migrate` and `crossbook route`: moving a symbol between a running engine's shards,
// and where each symbol lives now (through the engine's control socket).
import ArgumentParser
import Glibc
import Engine
import OrderBook
import SharedMemory

struct MigrateCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "migrate",
        abstract: "Move a symbol's book to another shard of the running engine while it trades.",
        discussion: "Prints the migration's report: resting orders moved, commands that waited, and the pause (from the export to the target trading it). Exit status 1 if the migration was refused or abandoned (the symbol then stays where it was, trading).")

    @OptionGroup var target: InstanceOptions

    @Argument(help: "The symbol, e.g. BTC-USD.")
    var symbol: String

    @Option(name: .customLong("to-shard"), help: "The shard to move it to (with --to-instance: that engine's shard, default 0).")
    var toShard: Int?

    @Option(name: .customLong("to-instance"), help: "Move it to another engine on this host (both load redis-routing and snapshot-redis on the same Redis).")
    var toInstance: String?

    @Option(name: .customLong("to-directory"), help: "With --to-instance: that engine's instance directory, if not the default.")
    var toDirectory: String?

    func run() throws {
        guard SymbolSpec.isValidName(symbol) else { throw CLIError("'\(symbol)' is not a symbol name") }
        if let toInstance {
            return try TransferCommand(symbol: symbol, from: target, to: toInstance, toDirectory: toDirectory, toShard: toShard ?? 0).run()
        }
        guard let toShard else { throw CLIError("--to-shard or --to-instance") }
        let answer: [String]
        do { answer = try Engine.ask(directory: target.resolvedDirectory, "migrate \(symbol) \(toShard)") } catch {
            throw CLIError("engine '\(target.instance)': \(error)")
        }
        guard answer.first == "ok" else { throw CLIError(answer.first.map { String($0.dropFirst(6)) } ?? "no answer") }
        for line in answer.dropFirst() { print(line) }
    }
}

struct RouteCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "route",
        abstract: "Where symbols live now: `route list`, or `route get SYMBOL`.")

    @OptionGroup var target: InstanceOptions

    @Argument(help: "list, or get.")
    var action: String

    @Argument(help: "The symbol (get).")
    var symbol: String?

    func validate() throws {
        guard action == "list" || (action == "get" && symbol != nil) else {
            throw ValidationError("usage: crossbook route list | crossbook route get SYMBOL")
        }
    }

    func run() throws {
        let answer: [String]
        do { answer = try Engine.ask(directory: target.resolvedDirectory, "routes") } catch {
            throw CLIError("engine '\(target.instance)': \(error)")
        }
        guard answer.first == "ok" else { throw CLIError(answer.first ?? "no answer") }
        // Lines: NAME ID SHARD.
        let routes = answer.dropFirst().map { $0.split(separator: " ").map(String.init) }.filter { $0.count == 3 }
        if action == "get" {
            guard let route = routes.first(where: { $0[0] == symbol }) else { throw CLIError("no symbol \(symbol ?? "") in engine '\(target.instance)'") }
            print("\(route[0]) shard \(route[2])")
        } else {
            for route in routes { print("\(route[0]) id \(route[1]) shard \(route[2])") }
        }
    }
}

/// `crossbook migrate SYMBOL --to-instance NAME`: the move between two engines on this host,
/// through both control sockets (Engine+Transfer.swift has the steps and what a crash does).
struct TransferCommand {
    var symbol: String
    var from: InstanceOptions
    var to: String
    var toDirectory: String?
    var toShard: Int

    func run() throws {
        let source = from.resolvedDirectory, target = toDirectory ?? InstanceLayout.defaultDirectory(to)
        func ask(_ directory: String, _ name: String, _ request: String) throws -> [String] {
            let answer: [String]
            do { answer = try Engine.ask(directory: directory, request) } catch { throw CLIError("engine '\(name)': \(error)") }
            guard answer.first == "ok" else { throw CLIError("engine '\(name)': " + (answer.first.map { String($0.dropFirst(6)) } ?? "no answer")) }
            return answer
        }
        func fields(_ line: String) -> [String: String] {
            let w = line.split(separator: " ").map(String.init)
            return Dictionary(stride(from: 0, to: w.count - 1, by: 2).map { (w[$0], w[$0 + 1]) }, uniquingKeysWith: { a, _ in a })
        }
        let out = fields(try ask(source, from.instance, "transfer-out \(symbol) \(to) \(toShard)").dropFirst().first ?? "")
        guard let epoch = out["epoch"], let frozen = UInt64(out["frozen_at"] ?? "") else { throw CLIError("engine '\(from.instance)': a bad answer") }
        print("\(symbol): \(from.instance) shard \(out["shard"] ?? "?") exported \(out["orders"] ?? "?") resting orders (\(out["bytes"] ?? "?") bytes) at route epoch \(epoch)")
        // The target on this host: asked directly. Elsewhere (no control socket here): its router
        // saw the route and takes the book in by itself; the source waits for the route.
        guard access(target + "/control.sock", F_OK) == 0 else {
            let waited = try ask(source, from.instance, "transfer-wait \(symbol) \(epoch)")
            let decided = fields(waited.dropFirst().first ?? "")
            for line in waited.dropFirst(2) { print(line) }
            guard decided["instance"] == to, let at = UInt64(decided["decided_at"] ?? "") else {
                throw CLIError("\(symbol) did not move: the route names \(decided["instance"] ?? "?") (epoch \(decided["epoch"] ?? "?"))")
            }
            print("moved \(symbol) from \(from.instance) to \(to) shard \(decided["shard"] ?? "?"): the route named it \(String(format: "%.3f", Double(at &- frozen) / 1e6)) ms after the symbol froze (as the source saw it)")
            return
        }
        let into = fields(try ask(target, to, "transfer-in \(symbol) \(epoch) \(toShard)").dropFirst().first ?? "")
        guard let trading = UInt64(into["trading_at"] ?? "") else { throw CLIError("engine '\(to)': a bad answer") }
        // The source drops its frozen copy now (its control thread would within a second).
        let settled = try ask(source, from.instance, "transfer-settle")
        for line in settled.dropFirst() { print(line) }
        let phases = ["load", "list", "queue", "expect", "ids", "import", "durable", "claim", "held"].compactMap { k in into[k].flatMap(Double.init).map { "\(k) \(String(format: "%.3f", $0 / 1e6))" } }
        print("moved \(symbol) from \(from.instance) to \(to) shard \(toShard): \(into["held"] ?? "0") held commands, pause \(String(format: "%.3f", Double(trading &- frozen) / 1e6)) ms (on the target: \(phases.joined(separator: ", ")) ms)")
    }
}
