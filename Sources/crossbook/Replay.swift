// `crossbook replay <file>`: runs a text order log through the books and prints every event,
// the trades only, and/or the final book of each symbol.
import ArgumentParser
import CrossbookConfig
import Engine
import Foundation
import Glibc
import OrderBook
import Wire

struct Replay: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Replay a text order log through the books and print the events.",
        discussion: """
            Input, one command a line (# starts a comment):
              N,<symbol>,<order_id>,<account>,<B|S>,<LMT|MKT>,<price>,<qty>,<GTC|IOC|FOK|POST>[,<stp>]
              C,<symbol>,<order_id>
              R,<symbol>,<order_id>,<new_price>,<new_open_qty>
            Output, one event a line:
              ACK,<symbol>,<id>,<B|S>,<price>,<qty>          accepted (price 0: market)
              REJ,<symbol>,<id>,<reason>                     rejected
              T,<symbol>,<maker_id>,<taker_id>,<price>,<qty> trade
              CXL,<symbol>,<id>,<qty>,<open>,<reason>        quantity cancelled, open left
              RPL,<symbol>,<id>,<price>,<qty>,<kept|lost>    replaced (time priority kept or lost)
              L2,<symbol>,<B|S>,<price>,<qty>,<orders>       a price level changed
            """)

    @Argument(help: "The order log; - reads standard input. Not with --journal.")
    var file: String?

    @Option(help: "Rebuild the books from an engine's data directory (journals and snapshots) instead, and print each shard's state digest; the config must be the one the engine ran with.")
    var journal: String?

    @Option(help: "A TOML file declaring symbols and book capacity. Undeclared symbols get tick 1 and lot 1.")
    var config: String?

    @Flag(help: "Print only trades.")
    var tradesOnly = false

    @Flag(help: "Print the final L2 book of each symbol.")
    var book = false

    @Flag(help: "Stop at the first malformed line.")
    var strict = false

    @Flag(help: "Reject orders for symbols the config does not declare, instead of creating them.")
    var declaredSymbolsOnly = false

    @Option(help: "Self-trade prevention for orders that do not name one: none, cancel-newest, cancel-oldest, cancel-both, decrement.")
    var stp: String = "none"

    @Flag(help: "Print each symbol's state digest at the end.")
    var digest = false

    func run() throws {
        if let journal {
            guard file == nil else { throw ValidationError("give an order log or --journal, not both") }
            return try replayJournal(journal)
        }
        guard let file else { throw ValidationError("give an order log (or - for standard input), or --journal DIR") }
        var config = EngineConfig()
        if let path = self.config {
            guard let text = try? String(contentsOfFile: path, encoding: .utf8) else {
                throw CLIError("cannot read the config file \(path)")
            }
            do {
                config = try EngineConfig(toml: text, source: path)
            } catch {
                throw CLIError("\(error)")
            }
        }
        guard let defaultSTP = TextCodec.selfTradePrevention(named: Substring(stp)) else {
            throw ValidationError("--stp must be none, cancel-newest, cancel-oldest, cancel-both or decrement")
        }
        let input: String
        if file == "-" {
            input = String(decoding: FileHandle.standardInput.readDataToEndOfFile(), as: UTF8.self)
        } else {
            guard let data = FileManager.default.contents(atPath: file) else {
                throw CLIError("cannot read the order log \(file)")
            }
            input = String(decoding: data, as: UTF8.self)
        }

        let out = OutputBuffer()
        var books = BookSet(config: config)
        var malformed = 0
        var lineNumber = 0
        for line in input.split(separator: "\n", omittingEmptySubsequences: false) {
            lineNumber += 1
            let parsed: TextCommand?
            do {
                parsed = try TextCodec.parse(line, defaultSelfTradePrevention: defaultSTP)
            } catch {
                malformed += 1
                out.flush()
                FileHandle.standardError.write(Data("\(file):\(lineNumber): \(error.message)\n".utf8))
                if strict { throw ExitCode(1) }
                continue
            }
            guard let command = parsed else { continue }
            guard let entry = try books.entry(command.symbol, create: !declaredSymbolsOnly) else {
                if !tradesOnly {
                    out.write(TextCodec.format(.rejected(orderId: command.command.orderId, reason: .unknownSymbol),
                                               symbol: command.symbol))
                }
                continue
            }
            // The engine's rule for client order ids (its session bits sit above them): the same
            // reject here, so that a replay and the engine agree on every line.
            let id = command.command.orderId
            guard id >= 0, id <= (1 << 48) - 1 else {
                if !tradesOnly {
                    out.write(TextCodec.format(.rejected(orderId: id, reason: .orderIdOutOfRange), symbol: command.symbol))
                }
                continue
            }
            var sink = LineSink(symbol: command.symbol, out: out, tradesOnly: tradesOnly)
            entry.book.apply(command.command, to: &sink)
        }
        for entry in books.inOrder {
            if book { printBook(entry, out) }
            if digest { out.write("DIGEST,\(entry.name),\(String(entry.book.digest, radix: 16))") }
        }
        out.flush()
        if malformed > 0 {
            FileHandle.standardError.write(Data("\(malformed) malformed line(s) skipped\n".utf8))
            throw ExitCode(1)
        }
    }

    /// The engine's own recovery, read-only, on a data directory: the same code that a restart
    /// runs, so its digest is the one the engine printed when it restarted from this journal.
    /// A replay killed before it stopped leaves its instance directory: remove those of replays
    /// whose process is gone (ours only, never through a link).
    private func removeDeadReplays() {
        guard let names = try? FileManager.default.contentsOfDirectory(atPath: "/dev/shm") else { return }
        for name in names where name.hasPrefix("crossbook-replay-") {
            guard let pid = Int32(name.dropFirst("crossbook-replay-".count)), pid != getpid(), kill(pid, 0) != 0, errno == ESRCH
            else { continue }
            let path = "/dev/shm/" + name
            var info = stat()
            guard lstat(path, &info) == 0, info.st_mode & S_IFMT == S_IFDIR, info.st_uid == getuid() else { continue }
            removeContents(of: path)
            rmdir(path)
        }
    }

    private func replayJournal(_ data: String) throws {
        removeDeadReplays()
        var settings = try EngineConfig.load(config).engineSettings(
            instance: "replay-\(getpid())", directory: "/dev/shm/crossbook-replay-\(getpid())", pin: false,
            cleanStale: true, dataDirectory: data, durability: "async")
        settings.readOnly = true
        settings.describeBooks = book
        let engine = Engine(settings: settings, log: { logLine($0) })
        let lines: [String]
        do { lines = try engine.start() } catch { throw CLIError("\(error)") }
        defer { engine.stop() }
        for line in lines {
            if line.hasPrefix("BOOK,") || line.hasPrefix("ASK,") || line.hasPrefix("BID,") {
                print(line)
            } else {
                logLine(line)
            }
        }
        for (shard, digest) in engine.recoveredDigests.enumerated() { print("DIGEST,shard \(shard),\(String(digest, radix: 16))") }
    }

    private func printBook(_ entry: BookSet.Entry, _ out: OutputBuffer) {
        let bids = entry.book.depth(.buy)
        let asks = entry.book.depth(.sell)
        out.write("BOOK,\(entry.name),bids=\(bids.count),asks=\(asks.count)")
        for level in asks.reversed() { out.write("ASK,\(entry.name),\(level.price),\(level.quantity),\(level.orders)") }
        for level in bids { out.write("BID,\(entry.name),\(level.price),\(level.quantity),\(level.orders)") }
    }
}

/// The books of a replay, created on first use, in the order they were first named.
struct BookSet {
    final class Entry {
        let name: String
        var book: OrderBook
        init(name: String, book: consuming OrderBook) {
            self.name = name
            self.book = book
        }
    }

    private let config: EngineConfig
    private var byName: [String: Entry] = [:]
    private(set) var inOrder: [Entry] = []
    private var nextId: UInt32

    init(config: EngineConfig) {
        self.config = config
        nextId = (config.symbols.symbols.map(\.id).max() ?? 0) + 1
    }

    mutating func entry(_ name: String, create: Bool) throws -> Entry? {
        if let entry = byName[name] { return entry }
        var spec: SymbolSpec
        if let declared = config.symbols.spec(named: name) {
            spec = declared
        } else {
            guard create else { return nil }
            spec = SymbolSpec(name: name, id: nextId)
            nextId += 1
        }
        let entry = Entry(name: name, book: try OrderBook(spec: spec, capacity: config.capacity))
        byName[name] = entry
        inOrder.append(entry)
        return entry
    }
}

/// Buffered standard output: one write per 64 KiB, not per line.
final class OutputBuffer {
    private var buffer: [UInt8] = []

    init() { buffer.reserveCapacity(1 << 16) }

    func write(_ line: String) {
        buffer.append(contentsOf: line.utf8)
        buffer.append(10)
        if buffer.count >= 1 << 16 { flush() }
    }

    func flush() {
        guard !buffer.isEmpty else { return }
        buffer.withUnsafeBufferPointer { bytes in
            var done = 0
            while done < bytes.count {
                let n = Glibc.write(1, bytes.baseAddress! + done, bytes.count - done)
                if n < 0 && errno == EINTR { continue }
                if n <= 0 { return }  // stdout closed (a pipe whose reader left): nothing more to say
                done += n
            }
        }
        buffer.removeAll(keepingCapacity: true)
    }
}

struct LineSink: BookEventSink {
    let symbol: String
    let out: OutputBuffer
    let tradesOnly: Bool

    mutating func on(_ event: BookEvent) {
        if tradesOnly, case .trade = event {} else if tradesOnly { return }
        out.write(TextCodec.format(event, symbol: symbol))
    }
}
