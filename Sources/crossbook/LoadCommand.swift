// `crossbook load`: drives the W1 mix into a running engine from this process, open-loop at a
// fixed rate or flat out, and prints once a second the rate and the submit→ack latency
// percentiles, then a summary. Latency counts from each op's scheduled send time, so time spent
// queued behind a full ring is counted, not hidden (no coordinated omission).
import ArgumentParser
import CrossbookClient
import Foundation
import Glibc
import Histogram
import SharedMemory
import OrderBook
import Wire
import Workloads

nonisolated(unsafe) var loadInterrupted: Int32 = 0

struct LoadCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "load",
        abstract: "Drive the W1 order mix into a running engine; print rate and submit→ack latency.")

    @OptionGroup var target: InstanceOptions

    @Option(help: "Orders per second; 0 sends flat out.")
    var rate: Double = 100_000

    @Option(help: "Seconds to run (0: until Ctrl-C).")
    var duration: Double = 10

    @Option(help: "Stop after sending this many orders (0: no limit).")
    var orders: Int = 0

    @Option(help: "How many of the engine's symbols to spread the orders over.")
    var symbols: Int = 1

    @Option(help: "Skip this many of the engine's symbols (by id) first: load processes started with 0, 1, 2, ... and --symbols 1 each drive another symbol (another shard, if each has its own).")
    var firstSymbol: Int = 0

    @Option(help: "Draw each order's symbol by Zipf's law with this exponent (symbol k of the chosen ones with weight 1 / (k + 1)^s; S1's skewed case is 1.1); 0: the symbols in turn.")
    var zipf: Double = 0

    @Option(help: "Seed of the W1 draws.")
    var seed: UInt64 = 42

    @Option(help: "Report-ring and command-ring capacity (slots).")
    var ringCapacity: Int = 65536

    @Flag(help: "Print only the summary.")
    var quiet = false

    func run() throws {
        // The options as plain values: an @Option read in the loop is a generic property
        // wrapper's getter, a metadata lookup each time (a third of this process's time).
        let rate = self.rate, duration = self.duration, orders = self.orders, quiet = self.quiet
        let client: CrossbookClient
        do { client = try CrossbookClient(instance: target.instance, directory: target.directory, ringCapacity: ringCapacity) } catch {
            throw CLIError("\(error)")
        }
        defer { client.close() }
        guard firstSymbol >= 0 else { throw CLIError("--first-symbol must be 0 or more") }
        let chosen = client.symbols.values.sorted { $0.spec.id < $1.spec.id }.dropFirst(firstSymbol).prefix(max(1, symbols))
        guard !chosen.isEmpty else {
            throw CLIError("engine '\(target.instance)' has \(client.symbols.count) symbol(s): none after skipping \(firstSymbol)")
        }
        let targets = Array(chosen)
        guard zipf >= 0, zipf.isFinite else { throw CLIError("--zipf must be 0 or more") }
        // Zipf: a table of draws made before the clock starts, used round and round.
        let draws = zipf > 0 ? Workload.symbolDraws(count: 1 << 20, symbols: targets.count, zipf: zipf) : []
        signal(SIGINT) { _ in loadInterrupted = 1 }

        var state = LoadState(targets: targets)
        var rng = SplitMix64(seed: seed)
        var nextId: OrderId = 1
        let interval = rate > 0 ? 1e9 / rate : 0
        let start = monotonicNanoseconds()
        var scheduled = Double(start)
        let end = duration > 0 ? start + UInt64(duration * 1e9) : UInt64.max
        var nextPrint = start + 1_000_000_000
        var pending: Pending?
        var op = 0
        if !quiet {
            print("load: W1 mix into '\(target.instance)', \(rate > 0 ? "\(Int(rate)) orders/s" : "flat out"), \(targets.count) symbol(s)\(zipf > 0 ? " drawn by Zipf's law, s = \(zipf)" : "")")
        }
        while loadInterrupted == 0 {
            var now = monotonicNanoseconds()
            if now >= end || (orders > 0 && state.sent >= orders) { break }
            // Send what is due (flat out: whatever the ring takes).
            var budget = 256
            while budget > 0 && (orders == 0 || state.sent < orders) {
                if pending == nil {
                    if rate > 0 && scheduled > Double(now) { break }
                    let s = draws.isEmpty ? op % targets.count : Int(draws[op & (draws.count - 1)])
                    op += 1
                    let a = rng.next(), b = rng.next(), c = rng.next(), d = rng.next()
                    let t = a % 100
                    let stamp = rate > 0 ? UInt64(scheduled) : now
                    scheduled += interval
                    let command: BookCommand
                    if t < 70 {
                        command = .new(NewOrder(orderId: nextId, side: b & 1 == 1 ? .buy : .sell,
                                                price: 9950 + Price(c % 101), quantity: 1 + Quantity(d % 100)))
                        nextId += 1
                        state.position.append(-1)
                    } else if t < 90 {
                        guard !state.live[s].isEmpty else { continue }
                        command = .cancel(CancelOrder(orderId: state.live[s][Int(b % UInt64(state.live[s].count))]))
                    } else {
                        command = .new(NewOrder(orderId: nextId, side: b & 1 == 1 ? .buy : .sell, type: .market,
                                                price: 0, quantity: 1 + Quantity(d % 100), timeInForce: .ioc))
                        nextId += 1
                        state.position.append(-1)
                    }
                    pending = Pending(command: command, symbol: targets[s], stamp: stamp)
                }
                guard let p = pending else { break }
                if client.submit(p.command, symbol: p.symbol, clientTime: p.stamp, flush: false) {
                    pending = nil
                    state.sent += 1
                    state.windowSent += 1
                    budget -= 1
                } else {
                    state.fullRing += 1
                    break
                }
            }
            client.flush()
            do {
                now = monotonicNanoseconds()
                try client.poll { state.handle($0, now: now) }
            } catch {
                throw CLIError("\(error)")
            }
            if now >= nextPrint {
                do { try client.checkEngine() } catch { throw CLIError("\(error)") }
                if !quiet {
                    print(String(format: "%5.0fs  sent %9d/s  acked %9d/s  p50 %8.1f µs  p99 %8.1f µs  p99.9 %8.1f µs  max %8.1f µs",
                                 Double(now - start) / 1e9, state.windowSent, state.windowAcked,
                                 Double(state.window.valueAtPercentile(50)) / 1e3, Double(state.window.valueAtPercentile(99)) / 1e3,
                                 Double(state.window.valueAtPercentile(99.9)) / 1e3, Double(state.window.max) / 1e3))
                }
                state.rollOver()
                nextPrint += 1_000_000_000
            }
        }
        // Collect the last acknowledgements.
        let drainUntil = monotonicNanoseconds() + 10_000_000_000
        while state.acked < state.sent && monotonicNanoseconds() < drainUntil {
            do { try client.poll { state.handle($0, now: monotonicNanoseconds()) } } catch { break }
        }
        state.rollOver()
        let seconds = Double(monotonicNanoseconds() - start) / 1e9
        print(String(format: "summary: %d orders sent in %.1f s (%.0f/s), %d acknowledged, %d fills, %d rejects, ring full %d times",
                     state.sent, seconds, Double(state.sent) / seconds, state.acked, state.fills, state.rejects, state.fullRing))
        print(String(format: "submit→ack latency: p50 %.1f µs, p99 %.1f µs, p99.9 %.1f µs, max %.1f µs",
                     Double(state.total.valueAtPercentile(50)) / 1e3, Double(state.total.valueAtPercentile(99)) / 1e3,
                     Double(state.total.valueAtPercentile(99.9)) / 1e3, Double(state.total.max) / 1e3))
    }
}

struct Pending {
    var command: BookCommand
    var symbol: SymbolInfo
    var stamp: UInt64
}

/// The load generator's bookkeeping: W1's live lists, latency histograms and counts. A struct
/// with mutating methods (not captured locals), so that access is checked at compile time.
struct LoadState {
    /// Per symbol: live resting order ids (W1's list). Ids are issued in sequence across all
    /// symbols, so each id's index in its list is a flat array indexed by id (-1: not live).
    var live: [[OrderId]]
    var position: [Int32] = [-1]
    var symbolIndex: [Int]
    var window = Histogram<UInt64>(highestTrackableValue: 60_000_000_000, numberOfSignificantValueDigits: .three)
    var total = Histogram<UInt64>(highestTrackableValue: 60_000_000_000, numberOfSignificantValueDigits: .three)
    var sent = 0, acked = 0, fills = 0, rejects = 0, fullRing = 0
    var windowSent = 0, windowAcked = 0

    init(targets: [SymbolInfo]) {
        live = [[OrderId]](repeating: [], count: targets.count)
        position.reserveCapacity(1 << 20)
        symbolIndex = [Int](repeating: -1, count: Int(targets.map(\.spec.id).max()!) + 1)
        for (i, t) in targets.enumerated() { symbolIndex[Int(t.spec.id)] = i }
    }

    mutating func rollOver() {
        total.add(window)
        window.reset()
        windowSent = 0
        windowAcked = 0
    }

    mutating func removeLive(_ s: Int, _ id: OrderId) {
        guard id > 0, Int(id) < position.count else { return }
        let i = Int(position[Int(id)])
        guard i >= 0 else { return }
        position[Int(id)] = -1
        let last = live[s].removeLast()
        if i < live[s].count {
            live[s][i] = last
            position[Int(last)] = Int32(i)
        }
    }

    /// Into this second's histogram only; `rollOver` adds it to the total once a second.
    mutating func record(_ latency: UInt64) {
        _ = window.record(latency)
        acked += 1
        windowAcked += 1
    }

    mutating func handle(_ r: ReportRecord.Report, now: UInt64) {
        guard Int(r.symbolId) < symbolIndex.count, case let s = symbolIndex[Int(r.symbolId)], s >= 0 else { return }
        switch r.kind {
        case .accepted, .rejected, .replaced:
            if r.kind == .rejected { rejects += 1 }
            if r.kind == .accepted && r.open > 0 && r.price != 0 && r.orderId > 0 && Int(r.orderId) < position.count {
                position[Int(r.orderId)] = Int32(live[s].count)
                live[s].append(r.orderId)
            }
            if r.clientTime != 0 { record(now &- r.clientTime) }
        case .cancelled:
            if r.open == 0 { removeLive(s, r.orderId) }
            if r.cancelReason == .user && r.clientTime != 0 { record(now &- r.clientTime) }
        case .trade:
            fills += 1
            if r.open == 0 { removeLive(s, r.orderId) }
        }
    }
}


