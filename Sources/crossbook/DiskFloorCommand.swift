// `crossbook disk-floor`: what the disk itself costs a group commit: pwrite of N bytes then
// fdatasync, in a loop, in a given directory. D1 compares the journal's ack latency with it.
import ArgumentParser
import Foundation
import Glibc
import Histogram
import SharedMemory

struct DiskFloorCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "disk-floor",
        abstract: "Time pwrite + fdatasync of a batch in a loop: the floor under durable acknowledgements.")

    @Option(help: "Directory to write in (the journal's file system).")
    var directory: String = "."

    @Option(help: "Bytes per write (the journal's mean batch).")
    var size: Int = 4096

    @Option(help: "How many write + fdatasync pairs.")
    var count: Int = 2000

    @Flag(help: "Write into blocks written (zeros) and synced before, instead of fallocated ones (as the journal's segments are): what a journal of pre-zeroed segments would pay.")
    var prezeroed = false

    func run() throws {
        guard size > 0, count > 0 else { throw ValidationError("size and count must be positive") }
        let path = directory + "/crossbook-disk-floor-\(getpid())"
        let fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw CLIError("cannot create \(path): \(String(cString: strerror(errno)))") }
        defer {
            close(fd)
            unlink(path)
        }
        // Preallocated like a journal segment, so that the loop measures data, not allocation;
        // or written with zeros and synced first (no extent left to convert at each fdatasync).
        let total = size * count
        if prezeroed {
            let zeros = [UInt8](repeating: 0, count: 1 << 20)
            var at = 0
            while at < total {
                let n = min(zeros.count, total - at)
                guard pwrite(fd, zeros, n, off_t(at)) == n else { throw CLIError("writing zeros in \(directory) failed: \(String(cString: strerror(errno)))") }
                at += n
            }
            guard fdatasync(fd) == 0 else { throw CLIError("fdatasync in \(directory) failed") }
        } else {
            guard posix_fallocate(fd, 0, off_t(total)) == 0 else { throw CLIError("fallocate \(total) bytes in \(directory) failed") }
        }
        let buffer = [UInt8](repeating: 0xA5, count: size)
        var histogram = Histogram<UInt64>(highestTrackableValue: 60_000_000_000, numberOfSignificantValueDigits: .three)
        for i in 0..<count {
            let t0 = monotonicNanoseconds()
            guard pwrite(fd, buffer, size, off_t(i * size)) == size, fdatasync(fd) == 0 else {
                throw CLIError("pwrite/fdatasync failed: \(String(cString: strerror(errno)))")
            }
            _ = histogram.record(monotonicNanoseconds() - t0)
        }
        print(String(format: "disk floor (%@, %d-byte pwrite + fdatasync, %d times%@): p50 %.1f µs, p99 %.1f µs, p99.9 %.1f µs",
                     directory, size, count, prezeroed ? ", blocks zeroed before" : "", Double(histogram.valueAtPercentile(50)) / 1e3,
                     Double(histogram.valueAtPercentile(99)) / 1e3, Double(histogram.valueAtPercentile(99.9)) / 1e3))
    }
}
