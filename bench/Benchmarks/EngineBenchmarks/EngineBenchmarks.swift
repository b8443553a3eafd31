// The engine in this process, its shard on its own thread (core 1), a client on this thread
// (core 0): 1,000,000 W1-mix orders through the rings, flow-controlled, every report read.
// The malloc counter sees every thread of the process — client, shard and control thread —
// so 0 mallocs here means 0 allocations per order on the shard thread in steady state.

import Benchmark
import CSync
import CrossbookClient
import Engine
import Glibc
import OrderBook
import SharedMemory
import Wire
import Workloads

let orders = 1_000_000

/// The W1 mix as commands, prepared before the clock starts. Cancels name an earlier order of
/// this run (the client cannot know which are still live without waiting for reports).
func prepare() -> [BookCommand] {
    var rng = SplitMix64(seed: 42)
    var out: [BookCommand] = []
    out.reserveCapacity(orders)
    var id: OrderId = 0
    for _ in 0..<orders {
        let a = rng.next(), b = rng.next(), c = rng.next(), d = rng.next()
        let t = a % 100
        if t < 70 {
            id += 1
            out.append(.new(NewOrder(orderId: id, side: b & 1 == 1 ? .buy : .sell, price: 9950 + Price(c % 101),
                                     quantity: 1 + Quantity(d % 100))))
        } else if t < 90 && id > 0 {
            out.append(.cancel(CancelOrder(orderId: id - OrderId(b % UInt64(min(id, 16))))))
        } else {
            id += 1
            out.append(.new(NewOrder(orderId: id, side: b & 1 == 1 ? .buy : .sell, type: .market, price: 0,
                                     quantity: 1 + Quantity(d % 100), timeInForce: .ioc)))
        }
    }
    return out
}

let commands = prepare()

let benchmarks: @Sendable () -> Void = {
    Benchmark(
        "E2E in-process: 1M orders client → shard → reports",
        configuration: .init(metrics: [.wallClock, .throughput, .mallocCountTotal], timeUnits: .nanoseconds,
                             warmupIterations: 1, scalingFactor: .mega, maxDuration: .seconds(30), maxIterations: 6)
    ) { benchmark in
        let dir = "/dev/shm/crossbook-bench-e2e-\(getpid())"
        let engine = Engine(settings: EngineSettings(
            instance: "bench", directory: dir, shards: [ShardSettings(core: 1)],
            symbols: [(spec: SymbolSpec(name: "W1", id: 1), shard: 0)],
            capacity: BookCapacity(orders: 1 << 16, levels: 1 << 12),
            wait: WaitStrategy(spins: 1_000_000, yields: 1000, park: true)), log: { _ in })
        _ = try engine.start()
        defer { engine.stop() }
        _ = cb_pin_current_thread(0)
        let client = try CrossbookClient(instance: "bench", directory: dir, ringCapacity: 1 << 16)
        defer { client.close() }
        let symbol = try client.symbol("W1")
        var reports = 0
        var acks = 0
        // Everything the measured loop needs is made above: it allocates nothing itself.
        benchmark.startMeasurement()
        commands.withUnsafeBufferPointer { all in
            var sent = 0
            while sent < all.count {
                if client.submit(all[sent], symbol: symbol, clientTime: 1) {
                    sent += 1
                } else {
                    _ = try? client.poll { r in
                        reports += 1
                        if r.clientTime != 0 { acks += 1 }
                    }
                }
            }
            while acks < all.count {
                _ = try? client.poll { r in
                    reports += 1
                    if r.clientTime != 0 { acks += 1 }
                }
            }
        }
        benchmark.stopMeasurement()
        blackHole(reports)
    }
}
