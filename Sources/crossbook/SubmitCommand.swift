// `crossbook submit`: one command into a running engine, and the reports it causes.
import ArgumentParser
import CrossbookClient
import OrderBook
import Wire

func reportLine(_ r: ReportRecord.Report, symbol: String) -> String {
    switch r.kind {
    case .accepted: "ACK,\(symbol),\(r.orderId),\(r.side.letter),\(r.price),\(r.quantity)"
    case .rejected: "REJ,\(symbol),\(r.orderId),\(r.rejectReason?.name ?? "code_\(r.code)")"
    case .trade: "FILL,\(symbol),\(r.orderId),\(r.price),\(r.quantity),\(r.open),\(r.code == 1 ? "maker" : "taker")"
    case .cancelled: "CXL,\(symbol),\(r.orderId),\(r.quantity),\(r.open),\(r.cancelReason?.name ?? "code_\(r.code)")"
    case .replaced: "RPL,\(symbol),\(r.orderId),\(r.price),\(r.quantity),\(r.code == 1 ? "kept" : "lost")"
    }
}

struct SubmitCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "submit",
        abstract: "Send commands to a running engine and print the reports they cause.",
        discussion: """
            Commands in the replay format (see `crossbook replay --help`), e.g.
              crossbook submit 'N,BTC-USD,1,7,B,LMT,10000,5,GTC'
            Reports: ACK, REJ (reason), FILL (price, qty, open, maker|taker), CXL, RPL.
            """)

    @Argument(help: "One or more commands.")
    var commands: [String]

    @OptionGroup var target: InstanceOptions

    @Option(help: "Seconds to wait for reports after the last one (0 to 3600).")
    var wait: Double = 0.5

    func validate() throws {
        guard wait.isFinite, wait >= 0, wait <= 3600 else {
            throw ValidationError("--wait must be between 0 and 3600 seconds, got \(wait)")
        }
    }

    func run() throws {
        var parsed: [TextCommand] = []
        for (i, text) in commands.enumerated() {
            do {
                guard let command = try TextCodec.parse(Substring(text)) else { continue }
                parsed.append(command)
            } catch {
                throw CLIError("command \(i + 1): \(error.message)")
            }
        }
        let client: CrossbookClient
        do { client = try CrossbookClient(instance: target.instance, directory: target.directory) } catch { throw CLIError("\(error)") }
        defer { client.close() }
        let names = Dictionary(uniqueKeysWithValues: client.symbols.values.map { ($0.spec.id, $0.spec.name) })
        let print = { (r: ReportRecord.Report) in Swift.print(reportLine(r, symbol: names[r.symbolId] ?? "#\(r.symbolId)")) }
        // Every symbol is checked before anything is sent.
        var resolved: [(BookCommand, SymbolInfo)] = []
        for command in parsed {
            do { resolved.append((command.command, try client.symbol(command.symbol))) } catch { throw CLIError("\(error)") }
        }
        for (command, symbol) in resolved {
            while !client.submit(command, symbol: symbol) {
                do { try client.poll(print) } catch { throw CLIError("\(error)") }
            }
        }
        do {
            while try client.waitForReports(timeout: wait, print) > 0 {}
        } catch {
            throw CLIError("\(error)")
        }
    }
}
