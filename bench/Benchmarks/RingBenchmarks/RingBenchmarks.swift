// R1 and R2 (bench/README.md): Crossbook's shared-memory ring against its floors, in the same
// run: a cache-line ping-pong (the hardware limit) and the same ring algorithm in C at -O3.
// Producer on core 1, consumer on core 0 (this machine has two).

import Benchmark
import CSync
import Foundation
import Glibc
import RingFloor
import SharedMemory

let r1Messages = 50_000_000
let r2Trips = 1_000_000
let capacity = 65_536
let producerCore: Int32 = 1
let consumerCore: Int32 = 0

func ringPath(_ tag: String) -> String { "/dev/shm/crossbook-bench-\(getpid())-\(tag)" }

/// Runs `body` on a new thread pinned to `core`; returns a join function.
func spawn(core: Int32, _ body: @escaping @Sendable () -> Void) -> () -> Void {
    final class Box: @unchecked Sendable { let body: @Sendable () -> Void; let core: Int32
        init(_ b: @escaping @Sendable () -> Void, _ c: Int32) { body = b; core = c } }
    let box = Unmanaged.passRetained(Box(body, core))
    var tid = pthread_t()
    pthread_create(&tid, nil, { raw in
        let box = Unmanaged<Box>.fromOpaque(raw!).takeRetainedValue()
        _ = cb_pin_current_thread(box.core)
        box.body()
        return nil
    }, box.toOpaque())
    return { pthread_join(tid, nil) }
}

@inline(__always)
func nanos() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return UInt64(ts.tv_sec) &* 1_000_000_000 &+ UInt64(ts.tv_nsec)
}

/// Fills a slot as the C floor's `write_msg` does once clang has vectorized it: one 64-byte
/// vector store (aligned 16-byte stores), so that R1 compares the rings, not two ways of
/// filling a slot.
@inline(__always)
func writeMessage(_ p: UnsafeMutableRawPointer, _ v: UInt64) {
    let value = SIMD8<UInt64>(repeating: v) &+ SIMD8<UInt64>(0, 1, 2, 3, 4, 5, 6, 7)
    p.storeBytes(of: value, as: SIMD8<UInt64>.self)
}

/// R1 through SharedMemory.Ring: ns per message.
func swiftRingThroughput(_ r1Messages: Int) throws -> Double {
    let path = ringPath("r1")
    defer { unlink(path) }
    let ring = try Ring.create(path: path, capacity: capacity, consumerMayPark: false)
    final class Shared: @unchecked Sendable { let ring: Ring; init(_ r: Ring) { ring = r } }
    let shared = Shared(ring)
    _ = cb_pin_current_thread(consumerCore)
    let start = nanos()
    let join = spawn(core: producerCore) {
        var producer = shared.ring.producer()
        var sent = 0
        while sent < r1Messages {
            let n = producer.claim(min(64, r1Messages - sent))
            if n == 0 { cb_cpu_relax(); continue }
            for k in 0..<n { writeMessage(producer.slot(k), UInt64(sent + k)) }
            producer.publish(n)
            sent += n
        }
    }
    var consumer = ring.consumer()
    var got = 0
    var bad = 0
    while got < r1Messages {
        let n = try consumer.poll()
        if n == 0 { cb_cpu_relax(); continue }
        for k in 0..<n where consumer.slot(k).load(as: UInt64.self) != UInt64(got + k) { bad += 1 }
        consumer.release(n)
        got += n
    }
    let end = nanos()
    join()
    precondition(bad == 0, "R1: \(bad) messages out of order")
    return Double(end - start) / Double(r1Messages)
}

/// R2 through two SharedMemory.Rings: per-trip round-trip times.
func swiftRingPingPong(_ rtt: UnsafeMutablePointer<UInt32>) throws {
    let there = ringPath("r2a"), back = ringPath("r2b")
    defer { unlink(there); unlink(back) }
    let a = try Ring.create(path: there, capacity: capacity, consumerMayPark: false)
    let b = try Ring.create(path: back, capacity: capacity, consumerMayPark: false)
    final class Shared: @unchecked Sendable { let a: Ring, b: Ring; init(_ a: Ring, _ b: Ring) { self.a = a; self.b = b } }
    let shared = Shared(a, b)
    let join = spawn(core: producerCore) {
        var inbound = shared.a.consumer()
        var outbound = shared.b.producer()
        for _ in 0..<r2Trips {
            while (try? inbound.poll()) == 0 { cb_cpu_relax() }
            let v = inbound.slot(0).load(as: UInt64.self)
            inbound.release(1)
            while outbound.claim(1) == 0 { cb_cpu_relax() }
            writeMessage(outbound.slot(0), v)
            outbound.publish(1)
        }
    }
    _ = cb_pin_current_thread(consumerCore)
    var outbound = a.producer()
    var inbound = b.consumer()
    for k in 0..<r2Trips {
        let t0 = nanos()
        while outbound.claim(1) == 0 { cb_cpu_relax() }
        writeMessage(outbound.slot(0), UInt64(k))
        outbound.publish(1)
        while try inbound.poll() == 0 { cb_cpu_relax() }
        inbound.release(1)
        rtt[k] = UInt32(truncatingIfNeeded: nanos() - t0)
    }
    join()
}

@discardableResult
func percentiles(_ benchmark: Benchmark, _ prefix: String, _ rtt: UnsafeMutablePointer<UInt32>) -> Int {
    var buffer = UnsafeMutableBufferPointer(start: rtt, count: r2Trips)
    buffer.sort()
    func at(_ q: Double) -> Int { Int(buffer[min(r2Trips - 1, Int(Double(r2Trips) * q))]) }
    benchmark.measurement(.custom("\(prefix) p50 (ns)", useScalingFactor: false), at(0.5))
    benchmark.measurement(.custom("\(prefix) p99 (ns)", useScalingFactor: false), at(0.99))
    benchmark.measurement(.custom("\(prefix) p99.9 (ns)", useScalingFactor: false), at(0.999))
    return at(0.5)
}

let benchmarks: @Sendable () -> Void = {
    let r1Metrics: [BenchmarkMetric] = [
        .custom("crossbook ns/msg", useScalingFactor: false),
        .custom("C ring ns/msg", useScalingFactor: false),
        .custom("C/crossbook speed ×1000", polarity: .prefersLarger, useScalingFactor: false),
    ]
    Benchmark("R1 ring throughput (50M × 64 B, 65,536 slots, core 1 → core 0)",
              configuration: .init(metrics: r1Metrics, warmupIterations: 0, maxDuration: .seconds(60), maxIterations: 4)) { benchmark in
        // Side by side, finely: 50M messages each, in 10 alternating chunks of 5M (C, Swift,
        // C, Swift, ...), so that both see the same machine; the ratio is the median of the
        // ten adjacent pairs'.
        let chunks = 10
        var cTotal = 0.0, swiftTotal = 0.0
        var ratios: [Double] = []
        for _ in 0..<chunks {
            let c = floor_ring_throughput(producerCore, consumerCore, r1Messages / chunks, Int32(capacity))
            let swift = try swiftRingThroughput(r1Messages / chunks)
            cTotal += c
            swiftTotal += swift
            ratios.append(c / swift)
        }
        ratios.sort()
        let ratio = (ratios[chunks / 2 - 1] + ratios[chunks / 2]) / 2
        let c = cTotal / Double(chunks), swift = swiftTotal / Double(chunks)
        benchmark.measurement(.custom("crossbook ns/msg", useScalingFactor: false), Int(swift.rounded()))
        benchmark.measurement(.custom("C ring ns/msg", useScalingFactor: false), Int(c.rounded()))
        benchmark.measurement(.custom("C/crossbook speed ×1000", polarity: .prefersLarger, useScalingFactor: false),
                              Int((ratio * 1000).rounded()))
        print(String(format: "R1: crossbook %.2f ns/msg, C ring %.2f ns/msg; crossbook speed / C speed per pair: min %.2f, median %.2f, max %.2f",
                     swift, c, ratios.first!, ratio, ratios.last!))
    }

    var r2Metrics: [BenchmarkMetric] = []
    for prefix in ["cache line", "C ring", "crossbook"] {
        for q in ["p50", "p99", "p99.9"] { r2Metrics.append(.custom("\(prefix) \(q) (ns)", useScalingFactor: false)) }
    }
    Benchmark("R2 ring ping-pong RTT (1M round trips, core 0 ↔ core 1)",
              configuration: .init(metrics: r2Metrics, warmupIterations: 0, maxDuration: .seconds(60), maxIterations: 8)) { benchmark in
        let rtt = UnsafeMutablePointer<UInt32>.allocate(capacity: r2Trips)
        defer { rtt.deallocate() }
        _ = floor_cacheline_pingpong(consumerCore, producerCore, Int32(r2Trips), rtt)
        let line = percentiles(benchmark, "cache line", rtt)
        _ = floor_ring_pingpong(consumerCore, producerCore, Int32(r2Trips), Int32(capacity), rtt)
        let c = percentiles(benchmark, "C ring", rtt)
        try swiftRingPingPong(rtt)
        let swift = percentiles(benchmark, "crossbook", rtt)
        print(String(format: "R2 p50: cache line %d ns, C ring %d ns, crossbook %d ns; crossbook / cache line = %.2f, crossbook / C ring = %.2f",
                     line, c, swift, Double(swift) / Double(line), Double(swift) / Double(c)))
    }
}
