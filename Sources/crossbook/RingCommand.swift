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
            // Cursors as raw numbers: a ring one inspects after a fault may hold anything.
            let (head, tail) = ring.cursors
            print("ring \(path): capacity \(ring.capacity) slots of \(RingLayout.slotSize) bytes")
            print("creator pid \(ring.creatorPid) (\(ring.creatorIsAlive ? "alive" : "gone"))")
            print("producer cursor \(head), consumer cursor \(tail); consumer may park: \(ring.consumerMayPark)")
            let backlog = head &- tail
            if tail > head || backlog > UInt64(ring.capacity) {
                print("CORRUPT: the cursors are \(tail > head ? "crossed (consumer ahead of producer)" : "further apart than the capacity")")
                throw ExitCode(1)
            }
            print("backlog \(backlog) slots")
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

        @Option(help: "Seconds to wait for room before giving up.")
        var timeout: Double = 10

        func validate() throws {
            guard count >= 0 else { throw ValidationError("--count must be 0 or more") }
            guard batch >= 1 else { throw ValidationError("--batch must be at least 1") }
            guard timeout.isFinite, timeout >= 0 else { throw ValidationError("--timeout must be a number of seconds") }
        }

        func run() throws {
            let ring: Ring
            do { ring = try Ring.attach(path: path) } catch { throw CLIError("\(error)") }
            let (head, tail) = ring.cursors
            if tail > head || head &- tail > UInt64(ring.capacity) {
                throw CLIError("\(path): corrupt cursors (producer \(head), consumer \(tail)): not writing into it")
            }
            var producer = ring.producer()
            var next = 1
            var waitingSince: UInt64 = 0
            while next <= count {
                let n = producer.claim(min(batch, count - next + 1))
                if n == 0 {
                    // Full: let the consumer run, but not forever.
                    let now = monotonicNanoseconds()
                    if waitingSince == 0 { waitingSince = now }
                    if Double(now - waitingSince) / 1e9 > timeout {
                        let (h, t) = ring.cursors
                        throw CLIError("\(path): no room for \(timeout) s (producer \(h), consumer \(t)): is its consumer running? \(next - 1) of \(count) written")
                    }
                    sched_yield()
                    continue
                }
                waitingSince = 0
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

