// The benchmark workloads do the published work: W1 reproduces its totals exactly.
import OrderBook
import Testing
import Workloads

@Suite("Benchmark workloads")
struct WorkloadTests {
    @Test("SplitMix64 gives the reference sequence")
    func splitMix() {
        var rng = SplitMix64(seed: 1234567)
        // Reference values of SplitMix64 for seed 1234567.
        #expect(rng.next() == 6457827717110365317)
        #expect(rng.next() == 3203168211198807973)
    }

    @Test("W1 reproduces the published totals for seed 42")
    func w1Totals() throws {
        let workload = Workload.w1()
        var runner = try WorkloadRunner(workload: workload)
        workload.ops.withUnsafeBufferPointer { runner.run($0, idBase: 0) }
        let t = runner.totals
        #expect(t.limits == 700_531)
        #expect(t.rested == 505_555)
        #expect(t.cancels == 197_966)
        #expect(t.cancelNoOps == 1_513)
        #expect(t.marketOrders == 99_990)
        #expect(t.marketFilledQuantity == 4_239_664)
        #expect(t.fills == 576_601)
        #expect(t.tradedQuantity == 15_270_994)
        #expect(t.finalLive == 3)
        #expect(t.rejects == 0)
        #expect(runner.book.restingOrderCount == 3)
        #expect(runner.book.consistencyError() == nil)
    }

    @Test("W2 keeps a deep book consistent and its live list equal to the book")
    func w2() throws {
        let workload = Workload.w2()
        var runner = try WorkloadRunner(workload: workload)
        runner.warmUp(workload)
        #expect(runner.book.restingOrderCount == 100_000)
        workload.ops.withUnsafeBufferPointer { runner.run($0, idBase: workload.warmup.count) }
        let t = runner.totals
        #expect(t.rejects == 0)
        #expect(t.limits + t.cancels + t.cancelNoOps + t.replaces + t.replaceNoOps + t.marketOrders == 1_000_000)
        #expect(t.finalLive == runner.book.restingOrderCount)
        // Limits never cross: bids stay below 100,000 and asks above, hundreds of levels deep.
        #expect(t.bidLevels > 200 && t.askLevels > 200)
        #expect(runner.book.bestBid!.price < 100_000 && runner.book.bestAsk!.price > 100_000)
        #expect(t.fills > 0 && t.tradedQuantity == t.marketFilledQuantity)
        #expect(runner.book.consistencyError() == nil)
    }
}
