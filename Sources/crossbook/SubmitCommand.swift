// `crossbook submit`: one command into a running engine, and the reports it causes.
import ArgumentParser
import Foundation
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
            Exit status: 0 when every command was taken, 2 when one was rejected, 3 when one got
            no answer within --wait, 1 for any other failure (no engine, a bad command).
            """)

    @Argument(help: "One or more commands ('-': one per line from standard input, read once connected).")
    var commands: [String]

    @OptionGroup var target: InstanceOptions

    @Option(help: "Seconds to wait for reports after the last one (0 to 3600).")
    var wait: Double = 0.5

    @Option(help: "Attach as this stream (exactly-once resend): the commands carry offsets from where the engine is in it (printed), or from --offset.")
    var stream: String?

    @Option(help: "With --stream: the first command's offset (the next follow); default: the engine's position.")
    var offset: UInt64?

    func validate() throws {
        if offset != nil && stream == nil { throw ValidationError("--offset needs --stream") }
        if let offset, offset > UInt64(Int64.max) { throw ValidationError("--offset must be at most 2^63 - 1") }
        guard wait.isFinite, wait >= 0, wait <= 3600 else {
            throw ValidationError("--wait must be between 0 and 3600 seconds, got \(wait)")
        }
    }

    static func parse(_ lines: [String]) throws -> [TextCommand] {
        var parsed: [TextCommand] = []
        for (i, text) in lines.enumerated() {
            do {
                guard let command = try TextCodec.parse(Substring(text)) else { continue }
                parsed.append(command)
            } catch {
                throw CLIError("command \(i + 1): \(error.message)")
            }
        }
        return parsed
    }

    func run() throws {
        let fromInput = commands == ["-"]
        var parsed = fromInput ? [] : try Self.parse(commands)
        let client: CrossbookClient
        do { client = try CrossbookClient(instance: target.instance, directory: target.directory, stream: stream) } catch { throw CLIError("\(error)") }
        defer { client.close() }
        // A stream: where the engine is in it (per shard), and the offsets this run sends at.
        var nextOffset = offset ?? client.resumeOffsets.max() ?? 0
        if let stream {
            Swift.print("STREAM \(stream) session \(client.sessionId) resume \(client.resumeOffsets.map(String.init).joined(separator: ","))")
        }
        if fromInput {
            // Read once connected: the session is open before the first command arrives.
            var lines: [String] = []
            while let line = readLine() { lines.append(line) }
            parsed = try Self.parse(lines)
        }
        guard !parsed.isEmpty else { throw CLIError("no command given\(fromInput ? " on standard input" : "")") }
        let names = Dictionary(uniqueKeysWithValues: client.symbols.values.map { ($0.spec.id, $0.spec.name) })
        // Each command's answer (ACK, CXL, RPL or REJ for its order id): the exit status says
        // whether every command was taken.
        final class Answers {
            var answered: [UInt64: Int] = [:]
            var rejected = 0
        }
        let answers = Answers()
        let print = { (r: ReportRecord.Report) in
            Swift.print(reportLine(r, symbol: names[r.symbolId] ?? "#\(r.symbolId)"))
            let key = UInt64(r.symbolId) << 48 | (UInt64(bitPattern: Int64(r.orderId)) & 0xFFFF_FFFF_FFFF)
            switch r.kind {
            case .accepted, .replaced: answers.answered[key, default: 0] += 1
            case .cancelled where r.code == CancelReason.user.rawValue: answers.answered[key, default: 0] += 1
            case .rejected:
                answers.answered[key, default: 0] += 1
                answers.rejected += 1
            default: break
            }
        }
        // Every symbol is checked before anything is sent.
        var resolved: [(BookCommand, SymbolInfo)] = []
        for command in parsed {
            do { resolved.append((command.command, try client.symbol(command.symbol))) } catch { throw CLIError("\(error)") }
        }
        for (command, symbol) in resolved {
            // A full ring: wait for the engine, but not past --wait without progress.
            var since = Date()
            while !client.submit(command, symbol: symbol, clientSequence: stream == nil ? 0 : nextOffset) {
                var got = 0
                do { got = try client.poll(print) } catch { throw CLIError("\(error)") }
                if got > 0 { since = Date() }
                if Date().timeIntervalSince(since) > max(wait, 0.1) {
                    throw failure("the engine took no command for \(wait) s (its ring stays full)", status: 3)
                }
                usleep(100)
            }
            nextOffset &+= 1
        }
        do {
            while try client.waitForReports(timeout: wait, print) > 0 {}
        } catch {
            throw CLIError("\(error)")
        }
        var expected: [UInt64: Int] = [:]
        for (command, symbol) in resolved {
            let id: OrderId
            switch command {
            case .new(let o): id = o.orderId
            case .cancel(let c): id = c.orderId
            case .replace(let r): id = r.orderId
            }
            expected[UInt64(symbol.spec.id) << 48 | (UInt64(bitPattern: Int64(id)) & 0xFFFF_FFFF_FFFF), default: 0] += 1
        }
        let unanswered = expected.filter { answers.answered[$0.key, default: 0] < $0.value }.map(\.value).reduce(0, +)
        if unanswered > 0 {
            throw failure("\(unanswered) of \(resolved.count) command(s) got no answer within \(wait) s", status: 3)
        }
        if answers.rejected > 0 {
            throw failure("\(answers.rejected) of \(resolved.count) command(s) rejected", status: 2)
        }
    }
}
