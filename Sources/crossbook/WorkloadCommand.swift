// `crossbook workload w1|w2`: runs a benchmark workload once and prints its totals and rate,
// so that anyone can check the engine did the published work (bench/README.md has the table).
import ArgumentParser
import Foundation
import OrderBook
import Workloads

struct WorkloadCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "workload",
        abstract: "Run benchmark workload W1 or W2 and print its totals and ops/s.")

    @Argument(help: "w1 or w2")
    var name: String

    @Option(help: "Book capacity in resting orders (default: the workload's own, 65,536 for W1, 262,144 for W2).")
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
        default: throw ValidationError("unknown workload '\(name)': expected w1 or w2")
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
}
