// `crossbook workload w1|w2`: runs a benchmark workload once and prints its totals and rate,
// so that anyone can check the engine did the published work (bench/README.md has the table).
// `crossbook workload s1`: benchmark S1, many symbols on one shard's shared pools.
// `crossbook workload restore`: the two parts of a move between shards that grow with the book
// (M1): its snapshot and its restore into an empty book, per resting order.
import ArgumentParser
import Foundation
import OrderBook
import Workloads

struct WorkloadCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "workload",
        abstract: "Run benchmark workload W1, W2 or S1 and print its totals and ops/s.",
        discussion: """
            S1: many symbols on one shard's shared pools. Prints the memory of a quiet symbol \
            and of 1M resting orders spread over the symbols, then W1 on one book and W1's mix \
            spread over the symbols (uniform, and Zipf with --zipf), interleaved --repeat times, \
            with the ratios to one book in the same run.
            """)

    @Argument(help: "w1, w2, s1 or restore")
    var name: String

    @Option(help: "S1: symbols on the shard.")
    var symbols: Int = 10_000

    @Option(help: "S1: the Zipf exponent of the skewed run.")
    var zipf: Double = 1.1

    @Option(help: "Book capacity in resting orders (default: the workload's own, 65,536 for W1, 262,144 for W2); for S1's throughput runs, the shared pools' orders and levels (default 1,048,576).")
    var orders: Int?

    @Option(help: "Times to run it (a fresh book each time).")
    var `repeat`: Int = 1

    @Option(help: "Ops per batch through the book's batch path (prefetching the orders ahead); 1: one at a time. The totals are the same for every batch size.")
    var batch: Int = 1

    @Option(help: ArgumentHelp("With --batch: how many ops ahead each prefetch stage runs (default: the book's).", visibility: .hidden))
    var prefetchDistance: Int?

    func validate() throws {
        guard batch >= 1, batch <= WorkloadRunner.maxBatch else { throw ValidationError("--batch must be 1...\(WorkloadRunner.maxBatch)") }
    }

    func run() throws {
        let workload: Workload
        switch name.lowercased() {
        case "w1": workload = .w1()
        case "w2": workload = .w2()
        case "s1": return try runS1()
        case "restore": return try runRestore()
        default: throw ValidationError("unknown workload '\(name)': expected w1, w2, s1 or restore")
        }
        for run in 1...max(1, `repeat`) {
            var capacity = workload.capacity
            if let orders { capacity.orders = orders }
            var runner = try WorkloadRunner(workload: workload, capacity: capacity)
            runner.warmUp(workload)
            let start = DispatchTime.now().uptimeNanoseconds
            workload.ops.withUnsafeBufferPointer {
                runner.run($0, idBase: workload.warmup.count, batch: batch, distance: prefetchDistance ?? OrderBook.prefetchDistance)
            }
            let elapsed = DispatchTime.now().uptimeNanoseconds - start
            let rate = Double(workload.ops.count) / (Double(elapsed) / 1e9)
            if run == 1 { print("\(workload.name) totals: \(runner.totals)\(batch > 1 ? " (batch \(batch))" : "")") }
            print("\(workload.name) run \(run): \(workload.ops.count) ops in \(elapsed / 1_000_000) ms, "
                  + "\(String(format: "%.2f", rate / 1e6))M ops/s, \(elapsed / UInt64(workload.ops.count)) ns/op")
        }
    }

    /// A book of `restingOrders` (default 10,000) orders at 1,000 prices a side, ids spread as
    /// an engine's are (not in price order), in a book of the engine's default capacity (65,536,
    /// or twice the orders): its snapshot, then its restore into an empty book made before the
    /// clock starts, and its clone (clone(of:): the book's memory copied) into another; best and
    /// median of --repeat runs (default 20), ns per order.
    func runRestore() throws {
        let resting = orders ?? 10_000
        guard resting >= 1, resting <= 1 << 22 else { throw ValidationError("--orders must be 1...\(1 << 22)") }
        let spec = SymbolSpec(name: "HOT-USD", id: 1)
        var capacityOrders = 65_536
        while capacityOrders < 2 * resting { capacityOrders *= 2 }
        let capacity = BookCapacity(orders: capacityOrders, levels: 4096)
        var source = try OrderBook(spec: spec, capacity: capacity)
        var sink = DiscardingSink()
        var random = SplitMix64(seed: 11)
        for k in 0..<resting {
            let buy = k % 2 == 0
            let off = Price(1 + random.next() % 1000)
            // Ids as a shard gives them out across sessions: distinct, in no order the book keeps.
            let id = OrderId(bitPattern: (UInt64(k) &* 0x9E37_79B9_7F4A_7C15) >> 20) | 1 << 43
            source.submit(NewOrder(orderId: id, side: buy ? .buy : .sell, price: buy ? 100_000 - off : 100_000 + off,
                                   quantity: Quantity(1 + random.next() % 100)), to: &sink)
        }
        guard source.restingOrderCount == resting else { throw CLIError("restore: \(source.restingOrderCount) orders rest, expected \(resting)") }
        var snapshots: [UInt64] = [], restores: [UInt64] = [], clones: [UInt64] = [], makes: [UInt64] = [], frees: [UInt64] = []
        var bytes: [UInt8] = []
        for _ in 0..<max(1, `repeat` == 1 ? 20 : `repeat`) {
            var target = try OrderBook(spec: spec, capacity: capacity)
            let t0 = DispatchTime.now().uptimeNanoseconds
            bytes = source.snapshot()
            let t1 = DispatchTime.now().uptimeNanoseconds
            try target.restore(from: bytes)
            let t2 = DispatchTime.now().uptimeNanoseconds
            guard target.snapshot() == bytes else { throw CLIError("restore: the restored book's snapshot differs") }
            let m0 = DispatchTime.now().uptimeNanoseconds
            var copy = try OrderBook(spec: spec, capacity: capacity)
            makes.append(DispatchTime.now().uptimeNanoseconds - m0)
            let t3 = DispatchTime.now().uptimeNanoseconds
            copy.clone(of: source)
            let t4 = DispatchTime.now().uptimeNanoseconds
            guard copy.snapshot() == bytes else { throw CLIError("restore: the cloned book's snapshot differs") }
            let f0 = DispatchTime.now().uptimeNanoseconds
            _ = consume copy
            frees.append(DispatchTime.now().uptimeNanoseconds - f0)
            snapshots.append(t1 - t0)
            restores.append(t2 - t1)
            clones.append(t4 - t3)
        }
        func line(_ what: String, _ values: [UInt64]) -> String {
            let sorted = values.sorted()
            let per = { (v: UInt64) in String(format: "%.1f", Double(v) / Double(resting)) }
            return "\(what) best \(String(format: "%.3f", Double(sorted[0]) / 1e6)) ms (\(per(sorted[0])) ns/order), median \(String(format: "%.3f", Double(sorted[sorted.count / 2]) / 1e6)) ms (\(per(sorted[sorted.count / 2])) ns/order)"
        }
        print("restore: \(resting) resting orders, \(bytes.count) bytes, book capacity \(capacityOrders), \(snapshots.count) runs")
        print("restore: " + line("snapshot", snapshots))
        print("restore: " + line("restore", restores))
        print("restore: " + line("clone (memory copied from the book)", clones))
        print("restore: an empty book of this capacity made in best \(String(format: "%.3f", Double(makes.min()!) / 1e6)) ms, median \(String(format: "%.3f", Double(makes.sorted()[makes.count / 2]) / 1e6)) ms; one given back in best \(String(format: "%.3f", Double(frees.min()!) / 1e6)) ms, median \(String(format: "%.3f", Double(frees.sorted()[frees.count / 2]) / 1e6)) ms")
    }

    /// Resident memory of this process now (bytes).
    func residentBytes() -> Int {
        guard let text = try? String(contentsOfFile: "/proc/self/statm", encoding: .utf8),
              let pages = text.split(separator: " ").dropFirst().first.flatMap({ Int($0) }) else { return 0 }
        return pages * Int(sysconf(Int32(_SC_PAGESIZE)))
    }

    func runS1() throws {
        guard symbols >= 1, symbols <= 1 << 20 else { throw ValidationError("--symbols must be 1...\(1 << 20)") }
        let mib = { (bytes: Int) in String(format: "%.1f MiB", Double(bytes) / 1_048_576) }
        // Memory: a quiet symbol, then 1M resting orders spread over all of them (100 a symbol
        // at 10 prices a side when there are 10,000).
        do {
            let quiet = try MultiSymbolRunner(symbols: symbols, orders: 1 << 10, levels: 1 << 10, levelsPerBook: 1 << 10, maxOrderId: 0)
            print("S1 memory: a quiet symbol on shared pools: \(quiet.booksBytes / symbols) bytes (its book and ladders)")
        }
        let resting = 1_000_000
        let before = residentBytes()
        do {
            var full = try MultiSymbolRunner(symbols: symbols, orders: resting, levels: min(1 << 27, 20 * symbols), levelsPerBook: 64, maxOrderId: resting)
            for i in 0..<resting {
                let symbol = i % symbols, k = i / symbols
                let buy = k % 2 == 0
                full.rest(NewOrder(orderId: OrderId(i + 1), side: buy ? .buy : .sell,
                                   price: buy ? 9990 - Price(k / 2 % 10) : 10010 + Price(k / 2 % 10), quantity: 1), symbol: symbol)
            }
            let grown = residentBytes() - before
            let t = full.totals
            print("S1 memory: \(t.rested) resting orders over \(symbols) symbols (\(t.bidLevels + t.askLevels) levels): pools \(mib(full.pools.allocatedBytes)) + books \(mib(full.booksBytes)) = \(mib(full.pools.allocatedBytes + full.booksBytes)); resident memory grew \(mib(grown))")
        }
        // Throughput: W1 on one book, then W1's mix over the symbols, uniform and Zipf.
        let w1 = Workload.w1()
        let uniform = Workload.symbolDraws(count: w1.ops.count, symbols: symbols, zipf: 0)
        let skewed = Workload.symbolDraws(count: w1.ops.count, symbols: symbols, zipf: zipf)
        let hottest = skewed.reduce(into: [UInt32: Int]()) { $0[$1, default: 0] += 1 }.values.max() ?? 0
        print("S1: \(w1.ops.count) ops of W1's mix; Zipf s = \(zipf): the hottest symbol gets \(String(format: "%.1f", 100 * Double(hottest) / Double(w1.ops.count)))% of them")
        func time(_ body: () -> Void) -> Double {
            let start = DispatchTime.now().uptimeNanoseconds
            body()
            return Double(w1.ops.count) / (Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9)
        }
        for run in 1...max(1, `repeat`) {
            var single = try WorkloadRunner(workload: w1)
            let one = w1.ops.withUnsafeBufferPointer { ops in time { single.run(ops, idBase: 0) } }
            var rates: [Double] = []
            var totals: [WorkloadTotals] = []
            // Uniform and Zipf, each one op at a time and prefetching across books.
            for draws in [uniform, skewed] {
                for ahead in [0, prefetchDistance ?? 4] {
                    var many = try MultiSymbolRunner(symbols: symbols, orders: orders ?? 1 << 20, levels: orders ?? 1 << 20, levelsPerBook: 4096, maxOrderId: w1.ops.count)
                    rates.append(w1.ops.withUnsafeBufferPointer { ops in
                        draws.withUnsafeBufferPointer { d in time { many.run(ops, symbols: d, idBase: 0, distance: ahead) } }
                    })
                    totals.append(many.totals)
                }
            }
            if run == 1 {
                print("S1 totals, one book: \(single.totals)")
                print("S1 totals, uniform: \(totals[0])")
                print("S1 totals, Zipf: \(totals[2])")
                if totals[1] != totals[0] || totals[3] != totals[2] { throw CLIError("S1: the prefetching runs' totals differ from one at a time") }
            }
            print(String(format: "S1 run %d: one book %.2fM ops/s; %d symbols uniform %.2fM ops/s (%.2f×), prefetching %.2fM (%.2f×); Zipf %.2fM ops/s (%.2f×), prefetching %.2fM (%.2f×)",
                         run, one / 1e6, symbols, rates[0] / 1e6, rates[0] / one, rates[1] / 1e6, rates[1] / one,
                         rates[2] / 1e6, rates[2] / one, rates[3] / 1e6, rates[3] / one))
        }
    }
}
