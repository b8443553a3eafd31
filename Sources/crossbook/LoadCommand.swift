// `crossbook load`: drives the W1 mix into a running engine from this process, open-loop at a
// fixed rate or flat out, and prints once a second the rate and the submit→ack latency
// percentiles, then a summary. Latency counts from each op's scheduled send time, so time spent
// queued behind a full ring is counted, not hidden (no coordinated omission).
import ArgumentParser
import CrossbookClient
import Foundation
import Glibc
import Histogram
import OrderBook
import Wire
import Workloads

nonisolated(unsafe) var loadInterrupted: Int32 = 0

struct LoadCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "load",
        abstract: "Drive the W1 order mix into a running engine; print rate and submit→ack latency.")

    @Option(help: "Instance name.")
    var instance: String = "default"

    @Option(help: "Directory of the instance (default /dev/shm/crossbook/<instance>).")
    var directory: String?

    @Option(help: "Orders per second; 0 sends flat out.")
    var rate: Double = 100_000

    @Option(help: "Seconds to run (0: until Ctrl-C).")
    var duration: Double = 10

    @Option(help: "How many of the engine's symbols to spread the orders over.")
    var symbols: Int = 1

    @Option(help: "Seed of the W1 draws.")
    var seed: UInt64 = 42

    @Option(help: "Report-ring and command-ring capacity (slots).")
    var ringCapacity: Int = 65536

    @Flag(help: "Print only the summary.")
    var quiet = false

    func run() throws {
        let client: CrossbookClient
        do { client = try CrossbookClient(instance: instance, directory: directory, ringCapacity: ringCapacity) } catch {
            throw CLIError("\(error)")
        }
        defer { client.close() }
        let chosen = client.symbols.values.sorted { $0.spec.id < $1.spec.id }.prefix(max(1, symbols))
        guard !chosen.isEmpty else { throw CLIError("engine '\(instance)' has no symbols") }
        let targets = Array(chosen)
        signal(SIGINT) { _ in loadInterrupted = 1 }

        // Per symbol: live resting order ids (W1's list), and each id's index in it.
        var live = [[OrderId]](repeating: [], count: targets.count)
        var position = [Int: Int]()  // key: symbol index << 48 | id
        let symbolIndex = Dictionary(uniqueKeysWithValues: targets.enumerated().map { ($1.spec.id, $0) })
        func removeLive(_ s: Int, _ id: OrderId) {
            guard let i = position.removeValue(forKey: s << 48 | Int(id)) else { return }
            let last = live[s].removeLast()
            if i < live[s].count {
                live[s][i] = last
                position[s << 48 | Int(last)] = i
            }
        }

        var window = Histogram<UInt64>(highestTrackableValue: 60_000_000_000, numberOfSignificantValueDigits: .three)
        var total = Histogram<UInt64>(highestTrackableValue: 60_000_000_000, numberOfSignificantValueDigits: .three)
        var sent = 0, acked = 0, fills = 0, rejects = 0, fullRing = 0
        var windowSent = 0, windowAcked = 0

        func handle(_ r: ReportRecord.Report, now: UInt64) {
            guard let s = symbolIndex[r.symbolId] else { return }
            switch r.kind {
            case .accepted, .rejected, .replaced:
                if r.kind == .rejected { rejects += 1 }
                if r.kind == .accepted && r.open > 0 && r.price != 0 {
                    position[s << 48 | Int(r.orderId)] = live[s].count
                    live[s].append(r.orderId)
                }
                if r.clientTime != 0 {
                    let latency = now &- r.clientTime
                    _ = window.record(latency)
                    _ = total.record(latency)
                    acked += 1
                    windowAcked += 1
                }
            case .cancelled:
                if r.open == 0 { removeLive(s, r.orderId) }
                if r.cancelReason == .user && r.clientTime != 0 {
                    let latency = now &- r.clientTime
                    _ = window.record(latency)
                    _ = total.record(latency)
                    acked += 1
                    windowAcked += 1
                }
            case .trade:
                fills += 1
                if r.open == 0 { removeLive(s, r.orderId) }
            }
        }

        var rng = SplitMix64(seed: seed)
        var nextId: OrderId = 1
        let interval = rate > 0 ? 1e9 / rate : 0
        let start = nanoseconds()
        var scheduled = Double(start)
        let end = duration > 0 ? start + UInt64(duration * 1e9) : UInt64.max
        var nextPrint = start + 1_000_000_000
        var pending: (BookCommand, SymbolInfo, UInt64)?
        var op = 0
        if !quiet {
            print("load: W1 mix into '\(instance)', \(rate > 0 ? "\(Int(rate)) orders/s" : "flat out"), \(targets.count) symbol(s)")
        }
        while loadInterrupted == 0 {
            var now = nanoseconds()
            if now >= end { break }
            // Send what is due (flat out: whatever the ring takes).
            var budget = 256
            while budget > 0 {
                if pending == nil {
                    if rate > 0 && scheduled > Double(now) { break }
                    let s = op % targets.count
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
                    } else if t < 90 {
                        guard !live[s].isEmpty else { continue }
                        command = .cancel(CancelOrder(orderId: live[s][Int(b % UInt64(live[s].count))]))
                    } else {
                        command = .new(NewOrder(orderId: nextId, side: b & 1 == 1 ? .buy : .sell, type: .market,
                                                price: 0, quantity: 1 + Quantity(d % 100), timeInForce: .ioc))
                        nextId += 1
                    }
                    pending = (command, targets[s], stamp)
                }
                guard let (command, symbol, stamp) = pending else { break }
                if client.submit(command, symbol: symbol, clientTime: stamp) {
                    pending = nil
                    sent += 1
                    windowSent += 1
                    budget -= 1
                } else {
                    fullRing += 1
                    break
                }
            }
            do {
                now = nanoseconds()
                try client.poll { handle($0, now: now) }
            } catch {
                throw CLIError("\(error)")
            }
            if now >= nextPrint {
                do { try client.checkEngine() } catch { throw CLIError("\(error)") }
                if !quiet {
                    print(String(format: "%5.0fs  sent %9d/s  acked %9d/s  p50 %8.1f µs  p99 %8.1f µs  p99.9 %8.1f µs  max %8.1f µs",
                                 Double(now - start) / 1e9, windowSent, windowAcked,
                                 Double(window.valueAtPercentile(50)) / 1e3, Double(window.valueAtPercentile(99)) / 1e3,
                                 Double(window.valueAtPercentile(99.9)) / 1e3, Double(window.max) / 1e3))
                }
                window.reset()
                windowSent = 0
                windowAcked = 0
                nextPrint += 1_000_000_000
            }
        }
        // Collect the last acknowledgements.
        let drainUntil = nanoseconds() + 2_000_000_000
        while acked < sent && nanoseconds() < drainUntil {
            do { try client.poll { handle($0, now: nanoseconds()) } } catch { break }
        }
        let seconds = Double(nanoseconds() - start) / 1e9
        print(String(format: "summary: %d orders sent in %.1f s (%.0f/s), %d acknowledged, %d fills, %d rejects, ring full %d times",
                     sent, seconds, Double(sent) / seconds, acked, fills, rejects, fullRing))
        print(String(format: "submit→ack latency: p50 %.1f µs, p99 %.1f µs, p99.9 %.1f µs, max %.1f µs",
                     Double(total.valueAtPercentile(50)) / 1e3, Double(total.valueAtPercentile(99)) / 1e3,
                     Double(total.valueAtPercentile(99.9)) / 1e3, Double(total.max) / 1e3))
    }
}

func nanoseconds() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return UInt64(ts.tv_sec) &* 1_000_000_000 &+ UInt64(ts.tv_nsec)
}
