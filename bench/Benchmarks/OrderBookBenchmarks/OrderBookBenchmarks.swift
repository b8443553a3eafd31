// The order book under workloads W1 and W2 (bench/README.md): throughput, allocations per op,
// per-op latency percentiles, and memory per resting order as malloc sees it.
//
// Each iteration builds a fresh book and runs the whole workload; only the ops are measured
// (setup and warm-up happen before startMeasurement). With scalingFactor .mega, `--scale`
// output reads per op.

import Benchmark
import Glibc
import OrderBook
import Workloads

let w1 = Workload.w1()
let w2 = Workload.w2()

/// W1's published totals for seed 42: a run that does other work fails instead of reporting.
func checkW1(_ benchmark: Benchmark, _ t: WorkloadTotals) {
    let published = [700_531, 505_555, 197_966, 1_513, 99_990, 4_239_664, 576_601, 15_270_994, 3]
    let got = [t.limits, t.rested, t.cancels, t.cancelNoOps, t.marketOrders, Int(t.marketFilledQuantity),
               t.fills, Int(t.tradedQuantity), t.finalLive]
    if got != published { benchmark.error("W1 totals differ from the published ones: \(t)") }
}

let latencyMetrics: [BenchmarkMetric] = [
    .custom("op p50 (ns)", useScalingFactor: false),
    .custom("op p99 (ns)", useScalingFactor: false),
    .custom("op p99.9 (ns)", useScalingFactor: false),
    .custom("clock pair p50 (ns)", useScalingFactor: false),
]

@inline(__always)
func nanoseconds() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return UInt64(ts.tv_sec) &* 1_000_000_000 &+ UInt64(ts.tv_nsec)
}

/// Runs ops one at a time with a clock read around each, and reports p50/p99/p99.9 of the
/// per-op time as custom metrics. The clock's own cost is reported beside them.
func latencyRun(_ benchmark: Benchmark, _ workload: Workload, warm: Bool) throws {
    var runner = try WorkloadRunner(workload: workload)
    if warm { runner.warmUp(workload) }
    let n = workload.ops.count
    let samples = UnsafeMutablePointer<UInt32>.allocate(capacity: n)
    defer { samples.deallocate() }
    samples.initialize(repeating: 0, count: n)
    let idBase = workload.warmup.count
    benchmark.startMeasurement()
    workload.ops.withUnsafeBufferPointer { ops in
        for k in 0..<n {
            let t0 = nanoseconds()
            runner.step(ops[k], OrderId(idBase + k + 1))
            let t1 = nanoseconds()
            samples[k] = UInt32(truncatingIfNeeded: min(t1 &- t0, UInt64(UInt32.max)))
        }
    }
    benchmark.stopMeasurement()
    // The cost of the two clock reads alone, measured the same way.
    var overhead = [UInt32](repeating: 0, count: 100_000)
    for k in overhead.indices {
        let t0 = nanoseconds()
        let t1 = nanoseconds()
        overhead[k] = UInt32(t1 &- t0)
    }
    overhead.sort()
    var sorted = UnsafeMutableBufferPointer(start: samples, count: n)
    sorted.sort()
    func at(_ q: Double) -> Int { Int(sorted[min(n - 1, Int(Double(n) * q))]) }
    benchmark.measurement(.custom("op p50 (ns)", useScalingFactor: false), at(0.50))
    benchmark.measurement(.custom("op p99 (ns)", useScalingFactor: false), at(0.99))
    benchmark.measurement(.custom("op p99.9 (ns)", useScalingFactor: false), at(0.999))
    benchmark.measurement(.custom("clock pair p50 (ns)", useScalingFactor: false), Int(overhead[overhead.count / 2]))
}

/// Resident set size from /proc/self/statm (second field, in pages).
func residentBytes() -> Int {
    guard let file = fopen("/proc/self/statm", "r") else { return 0 }
    defer { fclose(file) }
    var size = 0, resident = 0
    guard withUnsafeMutablePointer(to: &size, { s in
        withUnsafeMutablePointer(to: &resident, { r in readTwo(file, s, r) })
    }) else { return 0 }
    return resident * Int(sysconf(Int32(_SC_PAGESIZE)))
}

private func readTwo(_ file: UnsafeMutablePointer<FILE>, _ a: UnsafeMutablePointer<Int>, _ b: UnsafeMutablePointer<Int>) -> Bool {
    var line = [CChar](repeating: 0, count: 256)
    guard fgets(&line, 256, file) != nil else { return false }
    let fields = String(cString: line).split(separator: " ")
    guard fields.count >= 2, let x = Int(fields[0]), let y = Int(fields[1]) else { return false }
    a.pointee = x
    b.pointee = y
    return true
}

let benchmarks: @Sendable () -> Void = {
    let throughput = Benchmark.Configuration(
        metrics: [.wallClock, .throughput, .mallocCountTotal],
        timeUnits: .nanoseconds,
        warmupIterations: 1,
        scalingFactor: .mega,
        maxDuration: .seconds(20),
        maxIterations: 12
    )

    // W1 and W2 one op at a time (batch 1), and through the book's batch path
    // (OrderBook/Batch.swift): the same ops in batches of 16, the orders ahead prefetched; the
    // same totals (checked for W1), 0 allocations per op.
    for (name, batch) in [("W1 mixed shallow book (1M ops, L2 maintained)", 1), ("W1 mixed shallow book, batches of 16", 16)] {
        Benchmark(name, configuration: throughput) { benchmark in
            var runner = try WorkloadRunner(workload: w1)
            benchmark.startMeasurement()
            w1.ops.withUnsafeBufferPointer { runner.run($0, idBase: 0, batch: batch) }
            benchmark.stopMeasurement()
            checkW1(benchmark, runner.totals)
        }
    }
    for (name, batch) in [("W2 deep book (100k warm-up, 1M ops)", 1), ("W2 deep book, batches of 16", 16)] {
        Benchmark(name, configuration: throughput) { benchmark in
            var runner = try WorkloadRunner(workload: w2)
            runner.warmUp(w2)
            benchmark.startMeasurement()
            w2.ops.withUnsafeBufferPointer { runner.run($0, idBase: w2.warmup.count, batch: batch) }
            benchmark.stopMeasurement()
            if runner.totals.rejects != 0 { benchmark.error("W2 had rejects: \(runner.totals)") }
        }
    }

    let latency = Benchmark.Configuration(
        metrics: [.mallocCountTotal] + latencyMetrics,
        timeUnits: .nanoseconds,
        warmupIterations: 1,
        scalingFactor: .mega,
        maxDuration: .seconds(20),
        maxIterations: 5
    )

    Benchmark("W1 per-op latency", configuration: latency) { benchmark in
        try latencyRun(benchmark, w1, warm: false)
    }

    Benchmark("W2 per-op latency", configuration: latency) { benchmark in
        try latencyRun(benchmark, w2, warm: true)
    }

    // Memory per resting order, as the kernel accounts it: the growth of resident memory when a
    // book of 2^20 orders is created (it touches all it allocates), divided by 2^20. The level
    // pool (4,096 levels) is included.
    Benchmark(
        "Memory per resting order (bytes, 2^20-order book)",
        configuration: .init(metrics: [.custom("bytes per order", useScalingFactor: false)],
                             warmupIterations: 0, maxIterations: 3)
    ) { benchmark in
        let before = residentBytes()
        let book = try OrderBook(spec: SymbolSpec(name: "M", id: 1),
                                 capacity: BookCapacity(orders: 1 << 20, levels: 1 << 12))
        let after = residentBytes()
        benchmark.measurement(.custom("bytes per order", useScalingFactor: false), (after - before) >> 20)
        _ = book.restingOrderCount
    }
}
