// The book's batch path (OrderBook/Batch.swift) against one command at a time: the same events
// and the same book, for random command streams cut into random batches; and the workloads'
// batched mode gives the published totals for every batch size.

import OrderBook
import Testing
import Workloads

@Suite("The book's batch path")
struct BookBatchTests {
    @Test("apply(batch:) emits exactly the events of apply one by one and leaves the same book", arguments: [
        (UInt64(11), BookCapacity(orders: 4096, levels: 256)),
        (UInt64(12), BookCapacity(orders: 24, levels: 6)),
    ])
    func sameEvents(seed: UInt64, capacity: BookCapacity) throws {
        var single = try OrderBook(spec: DifferentialTests.spec, capacity: capacity)
        var batched = try OrderBook(spec: DifferentialTests.spec, capacity: capacity)
        var generator = CommandGenerator(seed: seed, spec: DifferentialTests.spec)
        var rng = SplitMix64(seed: seed ^ 0xBA7C)
        var applied = 0
        while applied < 200_000 {
            // Batch sizes from 1 to 100: shorter and longer than the prefetch pipeline.
            let size = 1 + Int(rng.next() % 100)
            var commands: [BookCommand] = []
            for _ in 0..<size { commands.append(generator.next()) }
            var one = EventRecorder(), many = EventRecorder()
            for command in commands { single.apply(command, to: &one) }
            // Threshold 0: prefetch however shallow the book (the test books are small).
            commands.withUnsafeBufferPointer { batched.apply(batch: $0, to: &many, threshold: 0) }
            guard one.events == many.events else {
                Issue.record("seed \(seed), batch of \(size) after \(applied) commands: the events differ")
                return
            }
            generator.observe(one.events, book: single)
            applied += size
        }
        #expect(single.snapshot() == batched.snapshot())
        #expect(batched.consistencyError() == nil)
        #expect(single.restingOrderCount > 0)
    }

    @Test("W1 and W2 in batches of 1, 16 and 64 (and other prefetch distances) give the same totals and the same book", arguments: ["W1", "W2"])
    func workloadsBatched(name: String) throws {
        let workload = name == "W1" ? Workload.w1(count: 200_000) : Workload.w2(warmupCount: 20_000, count: 200_000)
        var results: [(WorkloadTotals, [UInt8])] = []
        for (batch, distance, threshold) in [(1, 3, 0), (16, 3, 0), (64, 3, 0), (64, 1, 0), (7, 8, 0), (16, 3, OrderBook.prefetchThreshold)] {
            var runner = try WorkloadRunner(workload: workload)
            runner.warmUp(workload)
            workload.ops.withUnsafeBufferPointer { runner.run($0, idBase: workload.warmup.count, batch: batch, distance: distance, threshold: threshold) }
            #expect(runner.book.consistencyError() == nil)
            results.append((runner.totals, runner.book.snapshot()))
        }
        for r in results.dropFirst() {
            #expect(r.0 == results[0].0)
            #expect(r.1 == results[0].1)
        }
    }
}
