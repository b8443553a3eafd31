// `crossbook migrate` and `crossbook route`: moving a symbol between a running engine's shards,
// and where each symbol lives now (through the engine's control socket).
import ArgumentParser
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

    @Option(name: .customLong("to-shard"), help: "The shard to move it to.")
    var toShard: Int

    func run() throws {
        guard SymbolSpec.isValidName(symbol) else { throw CLIError("'\(symbol)' is not a symbol name") }
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
