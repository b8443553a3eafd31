// `crossbook symbol add|list`: listing a symbol on the running engine, no restart (through the
// engine's control socket; the steps: Sources/Engine/Engine+Listing.swift).
import ArgumentParser
import Engine
import OrderBook

struct SymbolCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "symbol",
        abstract: "List a new symbol on the running engine (`symbol add`), or show its symbols (`symbol list`).",
        discussion: """
            `crossbook symbol add ETH-USD --shard 1 --tick 5 --max-price 100000000` journals the listing on every shard, \
            makes the book on the shard given, and returns once clients can trade it. It survives restarts (the journals \
            and snapshots hold it). Room for listings: [engine] max_symbols (default: the config's symbols and 256 more). \
            Exit status 1 with the reason when it is refused (a name or id in use, bad rules, no room).
            """)

    @OptionGroup var target: InstanceOptions

    @Argument(help: "add, or list.")
    var action: String

    @Argument(help: "The symbol (add): 1 to 23 letters, digits, '-', '_', '.', '/' or ':'.")
    var symbol: String?

    @Option(help: "The shard that owns it (add).")
    var shard: Int = 0

    @Flag(help: "Listed here, owned by another engine (add): engines that share an orders topic each list the others' symbols so, to skip their messages (not dead letters); such a symbol can move here (crossbook migrate --to-instance).")
    var away = false

    @Option(help: "Its engine id (default: one above the highest in use).")
    var id: UInt32?

    @Option(help: "Prices are multiples of this.")
    var tick: Int64 = 1

    @Option(help: "Quantities are multiples of this.")
    var lot: Int64 = 1

    @Option(help: "The price band's lowest price.")
    var minPrice: Int64 = 1

    @Option(help: "The price band's highest price.")
    var maxPrice: Int64 = SymbolSpec.defaultMaxPrice

    @Option(help: "The largest order quantity.")
    var maxOrderQuantity: Int64 = SymbolSpec.defaultMaxOrderQuantity

    func validate() throws {
        guard action == "list" || (action == "add" && symbol != nil) else {
            throw ValidationError("usage: crossbook symbol add SYMBOL [--shard N] [...] | crossbook symbol list")
        }
        if let symbol, !SymbolSpec.isValidName(symbol) { throw ValidationError("'\(symbol)' is not a symbol name") }
    }

    func run() throws {
        let request = action == "list" ? "symbols"
            : "list \(symbol!) \(away ? -1 : shard)\(id.map { " id \($0)" } ?? "") tick \(tick) lot \(lot) min \(minPrice) max \(maxPrice) maxqty \(maxOrderQuantity)"
        let answer: [String]
        do { answer = try Engine.ask(directory: target.resolvedDirectory, request) } catch {
            throw CLIError("engine '\(target.instance)': \(error)")
        }
        guard answer.first == "ok" else { throw CLIError(answer.first.map { String($0.dropFirst(6)) } ?? "no answer") }
        if action == "list" {
            // NAME ID SHARD TICK LOT MIN MAX MAXQTY
            for line in answer.dropFirst() {
                let f = line.split(separator: " ")
                guard f.count == 8 else { continue }
                print("\(f[0]) id \(f[1]) shard \(f[2]) tick \(f[3]) lot \(f[4]) band \(f[5])...\(f[6]) max \(f[7])")
            }
        } else {
            for line in answer.dropFirst() where !line.hasPrefix("id ") { print(line) }
        }
    }
}
