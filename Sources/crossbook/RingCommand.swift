// `crossbook ring`: look into a ring file, or feed one from this process (a diagnostic
// producer: operators check a shared-memory setup with it, tests use it as a real second
// process).
import ArgumentParser
import Glibc
import OrderBook
import SharedMemory
import Wire

struct RingCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ring",
        abstract: "Inspect a shared-memory ring, or produce test records into one.",
        subcommands: [Inspect.self, Produce.self])

    struct Inspect: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Print a ring's header and cursors.")

        @Argument(help: "The ring file.")
        var path: String

        func run() throws {
            let ring: Ring
            do { ring = try Ring.attach(path: path) } catch { throw CLIError("\(error)") }
            let consumer = ring.consumer()
            print("ring \(path): capacity \(ring.capacity) slots of \(RingLayout.slotSize) bytes")
            print("creator pid \(ring.creatorPid) (\(ring.creatorIsAlive ? "alive" : "gone"))")
            print("backlog \(consumer.backlog) slots; consumer may park: \(ring.consumerMayPark)")
        }
    }

    struct Produce: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Write cancel records for order ids 1...count (client sequence = id) into a ring.")

        @Argument(help: "The ring file (it must exist).")
        var path: String

        @Option(help: "How many records.")
        var count: Int = 1000

        @Option(help: "Records claimed and published together.")
        var batch: Int = 16

        @Option(help: "Symbol id written into each record.")
        var symbol: UInt32 = 1

        func run() throws {
            let ring: Ring
            do { ring = try Ring.attach(path: path) } catch { throw CLIError("\(error)") }
            var producer = ring.producer()
            var next = 1
            while next <= count {
                let n = producer.claim(min(batch, count - next + 1))
                if n == 0 {
                    sched_yield()  // full: let the consumer run
                    continue
                }
                for k in 0..<n {
                    let id = Int64(next + k)
                    CommandRecord.encode(
                        CommandRecord.Decoded(symbolId: symbol, command: .cancel(CancelOrder(orderId: id)),
                                              clientSequence: UInt64(id)),
                        to: producer.slot(k))
                }
                producer.publish(n)
                next += n
            }
        }
    }
}

