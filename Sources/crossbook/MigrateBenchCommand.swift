// `crossbook migrate-bench`: benchmark M1, the time a symbol does not trade while it moves
// between shards. An engine in this process (two shards, a journal), the hot symbol's book
// filled to N resting orders, a load thread sending orders to both symbols at a fixed rate
// (every order to the hot symbol rests and is cancelled again, so the book stays near N), and
// the hot symbol moved back and forth. Per book size: the pause (the source's export to the
// target trading it: MigrationReport), of it the wait for the export to be durable, and the
// other symbol's submit→ack latency while the hot one moves (it must not pause).
import ArgumentParser
import CrossbookClient
import Engine
import Foundation
import Glibc
import Histogram
import OrderBook
import SharedMemory
import Wire

struct MigrateBenchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "migrate-bench",
        abstract: "Benchmark M1: the pause of a symbol moving between shards, for books of several sizes, under load.")

    @Option(help: "Resting orders in the hot symbol's book, comma-separated sizes.")
    var books: String = "1000,10000,100000"

    @Option(help: "Migrations per book size.")
    var moves: Int = 40

    @Option(help: "Orders per second from the load thread (half to each symbol; 0: no load).")
    var rate: Int = 20_000

    @Option(help: "sync (reports once on disk) or async.")
    var durability: String = "sync"

    @Option(help: "Where the journals go (a fresh directory under it per book size).")
    var dataDir: String = NSTemporaryDirectory()

    @Option(help: "Cores for shard 0 and shard 1, e.g. 0,1 (default: not pinned).")
    var cores: String?

    @Option(help: "A shard waiting only for its journal sleeps in the kernel up to this long (µs; 0: spins), as [engine] completion_wait_us.")
    var completionWaitUs: Int = 200

    @Option(help: "Move between two engines in this process (instance → instance) through this Redis (host:port), which both use for routes (redis-routing) and the book (snapshot-redis); without it, between the shards of one engine.")
    var redis: String?

    func run() throws {
        let sizes = books.split(separator: ",").compactMap { Int($0) }
        guard !sizes.isEmpty, sizes.allSatisfy({ $0 > 0 && $0 <= 1 << 20 }), moves > 0, rate >= 0 else {
            throw ValidationError("--books: sizes 1 ... 1048576; --moves > 0; --rate >= 0")
        }
        guard let mode = Durability(rawValue: durability), mode != .none else { throw ValidationError("--durability sync or async") }
        let pins = cores.map { $0.split(separator: ",").map { Int($0) } } ?? [nil, nil]
        guard pins.count == 2 else { throw ValidationError("--cores: two cores, e.g. 0,1") }
        print("M1 (\(ProcessInfo.processInfo.activeProcessorCount) CPUs, \(hostCPU()), \(isoNow())): \(moves) moves per size, load \(rate) orders/s, durability \(durability), shards on \(cores ?? "unpinned cores"), completion wait \(completionWaitUs) µs")
        for size in sizes {
            if let redis { try benchBetweenEngines(size: size, durability: mode, pins: pins, redis: redis) } else {
                try bench(size: size, durability: mode, pins: pins)
            }
        }
    }

    private func bench(size: Int, durability: Durability, pins: [Int?]) throws {
        let instance = "m1-\(getpid())-\(size)"
        let data = dataDir + "/crossbook-m1-\(getpid())-\(size)"
        defer { removeContents(of: data); rmdir(data) }
        var settings = EngineSettings(
            instance: instance, directory: nil,
            shards: pins.map { ShardSettings(core: $0 ?? nil) },
            symbols: [(spec: SymbolSpec(name: "HOT-USD", id: 1, minPrice: 1, maxPrice: 10_000_000), shard: 0),
                      (spec: SymbolSpec(name: "ETH-USD", id: 2, minPrice: 1, maxPrice: 10_000_000), shard: 1)],
            capacity: BookCapacity(orders: max(1 << 16, size * 2 + 65536), levels: 1 << 16),
            wait: WaitStrategy(completionWaitNanoseconds: UInt64(max(0, completionWaitUs)) * 1000), cleanStale: true)
        settings.durability = durability
        settings.dataDirectory = data
        settings.snapshotEvery = 0
        let engine = Engine(settings: settings, log: { _ in })
        _ = try engine.start()
        defer { engine.stop() }

        let (hot, eth) = try Self.fillHotBook(instance: instance, size: size)

        // The load: the hot symbol's orders rest and are cancelled again (the book stays near
        // `size`); the other symbol's each timed from submit to its acknowledgement.
        let load = LoadThread(instance: instance, hot: hot, eth: eth, rate: rate)
        let thread = Thread { load.run() }
        thread.start()
        usleep(200_000)

        var pauses: [UInt64] = [], durableWaits: [UInt64] = [], held: [Int] = [], orders: [Int] = []
        var failures: [String] = []
        var phases: [String: [UInt64]] = [:]
        for move in 0..<moves {
            do {
                let report = try engine.migrate(symbol: "HOT-USD", toShard: move % 2 == 0 ? 1 : 0, timeout: 30)
                pauses.append(report.pauseNanoseconds)
                durableWaits.append(report.durableWaitNanoseconds)
                held.append(report.held)
                orders.append(report.orders)
                for (key, value) in report.phases { phases[key, default: []].append(value) }
            } catch {
                failures.append("\(error)")
            }
            usleep(20_000)
        }
        load.stop()
        while !load.finished { usleep(1000) }
        let sortedHeld = held.sorted(), sortedOrders = orders.sorted()
        print("book \(size) (moved \(sortedOrders.first ?? 0)...\(sortedOrders.last ?? 0) orders): pause p50 \(ms(at(pauses, 0.5))) ms, p90 \(ms(at(pauses, 0.9))) ms, p99 \(ms(at(pauses, 0.99))) ms, max \(ms(pauses.max() ?? 0)) ms over \(pauses.count) moves; of it waiting for the export to be durable p50 \(ms(at(durableWaits, 0.5))) ms; held commands per move p50 \(sortedHeld.isEmpty ? 0 : sortedHeld[sortedHeld.count / 2]); \(load.summary)")
        let order = ["snapshot", "export", "restore", "durable", "import", "held", "handoff"]
        print("  pause by phase, p50 (p99) ms: " + order.compactMap { key in phases[key].map { "\(key) \(ms(at($0, 0.5))) (\(ms(at($0, 0.99))))" } }.joined(separator: ", "))
        if !failures.isEmpty { print("  \(failures.count) migrations failed: \(Set(failures).joined(separator: " | "))") }
    }
}

/// The load of M1: its own client, orders at a fixed rate, alternating symbols.
final class LoadThread: @unchecked Sendable {
    private let instance: String
    private let hot: SymbolInfo, eth: SymbolInfo
    private let rate: Int
    private let stopLock = NSLock()
    private var stopping = false
    private(set) var finished = false
    private(set) var summary = ""

    init(instance: String, hot: SymbolInfo, eth: SymbolInfo, rate: Int) {
        self.instance = instance
        self.hot = hot
        self.eth = eth
        self.rate = rate
    }

    func stop() { stopLock.lock(); stopping = true; stopLock.unlock() }
    private var isStopping: Bool { stopLock.lock(); defer { stopLock.unlock() }; return stopping }

    func run() {
        defer { stopLock.lock(); finished = true; stopLock.unlock() }
        guard rate > 0, let client = try? CrossbookClient(instance: instance, ringCapacity: 1 << 16) else {
            summary = "no load"
            return
        }
        defer { client.close() }
        var ethLatency = Histogram<UInt64>(highestTrackableValue: 60_000_000_000, numberOfSignificantValueDigits: .three)
        var hotLatency = Histogram<UInt64>(highestTrackableValue: 60_000_000_000, numberOfSignificantValueDigits: .three)
        var sentAt: [OrderId: UInt64] = [:]
        var rejected = 0, sent = 0
        let interval = UInt64(1_000_000_000 / rate)
        var next = monotonicNanoseconds()
        var id: OrderId = 0
        var restingHot: [OrderId] = []
        func take(_ r: ReportRecord.Report) {
            if r.kind == .rejected { rejected += 1 }
            guard r.kind == .accepted || r.kind == .rejected, let t0 = sentAt.removeValue(forKey: r.orderId) else { return }
            let latency = monotonicNanoseconds() &- t0
            if r.symbolId == 2 { _ = ethLatency.record(latency) } else { _ = hotLatency.record(latency) }
        }
        while !isStopping {
            let now = monotonicNanoseconds()
            if now < next {
                _ = try? client.poll(take)
                continue
            }
            next &+= interval
            id += 1
            sent += 1
            let toHot = id % 2 == 0
            let command: BookCommand
            if toHot && restingHot.count > 100 {
                // Keep the hot book's size: cancel one of ours.
                command = .cancel(CancelOrder(orderId: restingHot.removeFirst()))
            } else {
                let buy = id % 4 < 2
                let price: Price = toHot ? (buy ? 4_900_000 - Price(id % 100) : 5_100_000 + Price(id % 100)) : (buy ? 999 : 1001)
                command = .new(NewOrder(orderId: id, side: buy ? .buy : .sell, price: price, quantity: 1))
                if toHot { restingHot.append(id) }
                sentAt[id] = now
            }
            while !client.submit(command, symbol: toHot ? hot : eth) { _ = try? client.poll(take) }
        }
        let deadline = monotonicNanoseconds() + 2_000_000_000
        while !sentAt.isEmpty && monotonicNanoseconds() < deadline { _ = try? client.waitForReports(timeout: 0.05, take) }
        func us(_ h: Histogram<UInt64>, _ p: Double) -> String { String(format: "%.0f", Double(h.valueAtPercentile(p)) / 1e3) }
        summary = "load \(sent) commands: the other symbol's ack p50 \(us(ethLatency, 50)) µs, p99 \(us(ethLatency, 99)) µs, max \(String(format: "%.0f", Double(ethLatency.max) / 1e3)) µs; the hot symbol's ack p99 \(us(hotLatency, 99)) µs, max \(String(format: "%.0f", Double(hotLatency.max) / 1e3)) µs; \(rejected) rejected"
    }
}

func hostCPU() -> String {
    (try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8))?.split(separator: "\n")
        .first { $0.hasPrefix("model name") }?.split(separator: ":").last?.trimmingCharacters(in: .whitespaces) ?? "unknown CPU"
}

func isoNow() -> String {
    let formatter = ISO8601DateFormatter()
    formatter.formatOptions = [.withInternetDateTime]
    return formatter.string(from: Date())
}

private func ms(_ ns: UInt64) -> String { String(format: "%.3f", Double(ns) / 1e6) }

/// The `q` quantile of `values` (0 when none).
private func at(_ values: [UInt64], _ q: Double) -> UInt64 {
    guard !values.isEmpty else { return 0 }
    let sorted = values.sorted()
    return sorted[min(sorted.count - 1, Int((Double(sorted.count) * q).rounded(.up)) - 1)]
}

extension MigrateBenchCommand {
    /// The hot book: `size` resting orders, bids under 5,000,000 and asks above, none crossing.
    static func fillHotBook(instance: String, size: Int) throws -> (hot: SymbolInfo, eth: SymbolInfo) {
        let filler = try CrossbookClient(instance: instance, ringCapacity: 1 << 16)
        defer { filler.close() }
        let hot = try filler.symbol("HOT-USD"), eth = try filler.symbol("ETH-USD")
        var acked = 0
        for k in 0..<size {
            let buy = k % 2 == 0
            let price: Price = buy ? 5_000_000 - 1 - Price(k % 20_000) : 5_000_000 + 1 + Price(k % 20_000)
            while !filler.submit(.new(NewOrder(orderId: OrderId(k + 1), side: buy ? .buy : .sell, price: price, quantity: 1)),
                                 symbol: hot, flush: k % 256 == 255) {
                filler.flush()
                acked += try filler.poll { _ in }
            }
        }
        filler.flush()
        while acked < size { acked += try filler.waitForReports(timeout: 1) { _ in } }
        return (hot, eth)
    }

    /// Instance → instance: engines A (HOT-USD on shard 0, ETH-USD on shard 1) and B (SOL-USD),
    /// HOT-USD moved A → B shard 1 → A shard 0 → … through `redis`. The pause: from the source
    /// holding the symbol's commands to the target trading it (CLOCK_MONOTONIC of this host).
    /// The load goes to A: ETH-USD's acknowledgements must not pause; HOT-USD's commands are
    /// rejected while it is on B (counted).
    private func benchBetweenEngines(size: Int, durability: Durability, pins: [Int?], redis: String) throws {
        let tag = "\(getpid())-\(size)"
        let prefix = "m1-\(tag):"
        func engine(_ instance: String, _ symbols: [(spec: SymbolSpec, shard: Int)]) throws -> (Engine, String) {
            let data = dataDir + "/crossbook-m1-\(instance)"
            var settings = EngineSettings(
                instance: instance, directory: nil, shards: pins.map { ShardSettings(core: $0 ?? nil) }, symbols: symbols,
                capacity: BookCapacity(orders: max(1 << 16, size * 2 + 65536), levels: 1 << 16),
                wait: WaitStrategy(completionWaitNanoseconds: UInt64(max(0, completionWaitUs)) * 1000), cleanStale: true)
            settings.durability = durability
            settings.dataDirectory = data
            settings.snapshotEvery = 0
            settings.plugins = PluginSettings(directory: PluginSettings.executableDirectory, load: [
                PluginSpec(name: "snapshot-redis", config: ["redis": redis, "prefix": prefix, "timeout_ms": "5000"]),
                PluginSpec(name: "redis-routing", config: ["redis": redis, "prefix": prefix, "timeout_ms": "5000"]),
            ])
            let engine = Engine(settings: settings, log: { _ in })
            _ = try engine.start()
            return (engine, data)
        }
        let range = (minPrice: Price(1), maxPrice: Price(10_000_000))
        let (a, dataA) = try engine("m1a-\(tag)", [(spec: SymbolSpec(name: "HOT-USD", id: 1, minPrice: range.minPrice, maxPrice: range.maxPrice), shard: 0),
                                                  (spec: SymbolSpec(name: "ETH-USD", id: 2, minPrice: range.minPrice, maxPrice: range.maxPrice), shard: 1)])
        defer { a.stop(); removeContents(of: dataA); rmdir(dataA) }
        let (b, dataB) = try engine("m1b-\(tag)", [(spec: SymbolSpec(name: "SOL-USD", id: 3, minPrice: range.minPrice, maxPrice: range.maxPrice), shard: 0)])
        defer { b.stop(); removeContents(of: dataB); rmdir(dataB) }

        let (hot, eth) = try Self.fillHotBook(instance: "m1a-\(tag)", size: size)
        let load = LoadThread(instance: "m1a-\(tag)", hot: hot, eth: eth, rate: rate)
        let thread = Thread { load.run() }
        thread.start()
        usleep(200_000)

        var pauses: [UInt64] = [], orders: [Int] = [], failures: [String] = []
        var phases: [String: [UInt64]] = [:]
        for move in 0..<moves {
            let (source, target, name, shard) = move % 2 == 0 ? (a, b, "m1b-\(tag)", 1) : (b, a, "m1a-\(tag)", 0)
            do {
                // The routers connect to Redis a moment after the start.
                var out: TransferOutReport?
                var lastError: Error?
                for _ in 0..<50 where out == nil {
                    do { out = try source.transferOut(symbol: "HOT-USD", to: name, timeout: 30) } catch {
                        lastError = error
                        usleep(100_000)
                    }
                }
                guard let out else { throw lastError ?? CLIError("no answer") }
                let t0 = monotonicNanoseconds()
                let into = try target.transferIn(symbol: "HOT-USD", epoch: out.epoch, shard: shard, timeout: 30)
                phases["request", default: []].append(t0 &- out.frozenAt)
                for (key, value) in out.phases { phases["out." + key, default: []].append(value) }
                source.settleTransfers()
                pauses.append(into.tradingAt &- out.frozenAt)
                orders.append(out.orders)
                for (key, value) in into.phases where key != "start" { phases[key, default: []].append(value) }
                // From the blob in the store (the source's export) to the start of the attempt
                // that took it in: the target's wait for it (the router's offer polls for it).
                if let start = into.phases["start"] { phases["wait", default: []].append(start > t0 ? start - t0 : 0) }
            } catch {
                failures.append("\(error)")
            }
            usleep(20_000)
        }
        load.stop()
        while !load.finished { usleep(1000) }
        let sortedOrders = orders.sorted()
        print("instance → instance, book \(size) (moved \(sortedOrders.first ?? 0)...\(sortedOrders.last ?? 0) orders): pause p50 \(ms(at(pauses, 0.5))) ms, p90 \(ms(at(pauses, 0.9))) ms, p99 \(ms(at(pauses, 0.99))) ms, max \(ms(pauses.max() ?? 0)) ms over \(pauses.count) moves; \(load.summary)")
        let order = ["request", "out.snapshot", "out.export", "out.durable", "out.owners", "out.encode", "out.store", "wait", "load", "list", "queue", "premade", "expect", "ids", "import", "durable", "claim", "held"]
        print("  pause by phase, p50 (p99) ms: " + order.compactMap { key in phases[key].map { "\(key) \(ms(at($0, 0.5))) (\(ms(at($0, 0.99))))" } }.joined(separator: ", "))
        if !failures.isEmpty { print("  \(failures.count) moves failed: \(Set(failures).joined(separator: " | "))") }
    }
}
