// The ring: order, no loss, no duplicate, wrap-around, full and empty, with real threads and a
// real second process; headers and cursors that lie; parking and waking; leftovers.
import Foundation
import Glibc
import OrderBook
import SharedMemory
import Testing
import Wire

/// A fresh directory for ring files, removed by the caller.
func ringDirectory() -> String {
    let dir = NSTemporaryDirectory() + "crossbook-ring-\(UUID().uuidString)"
    mkdir(dir, 0o700)
    return dir
}

func write(_ value: UInt64, into slot: UnsafeMutableRawPointer) {
    slot.storeBytes(of: value, as: UInt64.self)
    slot.storeBytes(of: ~value, toByteOffset: 56, as: UInt64.self)
}

final class Box<T>: @unchecked Sendable { var value: T; init(_ v: T) { value = v } }

@Suite("Shared-memory ring")
struct RingTests {
    @Test("empty, then full, then empty again; claims never exceed the free space")
    func fullAndEmpty() throws {
        let dir = ringDirectory()
        defer { rmdir(dir) }
        let path = dir + "/r"
        defer { unlink(path) }
        let ring = try Ring.create(path: path, capacity: 8)
        var producer = ring.producer()
        var consumer = ring.consumer()
        #expect(try consumer.poll() == 0)
        #expect(producer.claim(5) == 5)
        for k in 0..<5 { write(UInt64(k), into: producer.slot(k)) }
        producer.publish(5)
        #expect(producer.claim(5) == 3)
        for k in 0..<3 { write(UInt64(5 + k), into: producer.slot(k)) }
        producer.publish(3)
        #expect(producer.claim(1) == 0)
        #expect(try consumer.poll() == 8)
        for k in 0..<8 { #expect(consumer.slot(k).load(as: UInt64.self) == UInt64(k)) }
        consumer.release(8)
        #expect(try consumer.poll() == 0)
        #expect(producer.claim(8) == 8)
    }

    @Test("two threads: 2,000,000 records through 64 slots arrive in order, none lost or doubled")
    func twoThreads() throws {
        let dir = ringDirectory()
        defer { rmdir(dir) }
        let path = dir + "/r"
        defer { unlink(path) }
        let ring = try Ring.create(path: path, capacity: 64)
        let total: UInt64 = 2_000_000
        let producerRing = Box(ring)
        let thread = Thread {
            var producer = producerRing.value.producer()
            var next: UInt64 = 0
            var batch = 1
            while next < total {
                let n = producer.claim(min(batch, Int(total - next)))
                for k in 0..<n { write(next + UInt64(k), into: producer.slot(k)) }
                producer.publish(n)
                next += UInt64(n)
                batch = batch % 13 + 1  // varying batch sizes
            }
        }
        thread.start()
        var consumer = ring.consumer()
        var expected: UInt64 = 0
        var bad = 0
        while expected < total {
            let n = try consumer.wait(WaitStrategy(spins: 1000, yields: 10, park: true))
            for k in 0..<n {
                let slot = consumer.slot(k)
                let value = slot.load(as: UInt64.self)
                if value != expected || slot.load(fromByteOffset: 56, as: UInt64.self) != ~value { bad += 1 }
                expected += 1
            }
            consumer.release(n)
        }
        #expect(bad == 0)
        #expect(try consumer.poll() == 0)
    }

    @Test("a second process writes 200,000 records; the consumer sees every one, in order")
    func twoProcesses() throws {
        let dir = ringDirectory()
        defer { rmdir(dir) }
        let path = dir + "/r"
        defer { unlink(path) }
        let ring = try Ring.create(path: path, capacity: 256)
        let count = 200_000
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath()
            .deletingLastPathComponent().appendingPathComponent("crossbook")
        process.arguments = ["ring", "produce", path, "--count", String(count), "--batch", "7", "--symbol", "9"]
        try process.run()
        var consumer = ring.consumer()
        var seen = 0
        var wrong = 0
        let deadline = Date().addingTimeInterval(60)
        while seen < count && Date() < deadline {
            let n = try consumer.wait(WaitStrategy(spins: 1000, yields: 10, park: true, parkTimeoutNanoseconds: 10_000_000))
            for k in 0..<n {
                let decoded = try? CommandRecord.decode(consumer.slot(k))
                let expected = CommandRecord.Decoded(symbolId: 9, command: .cancel(CancelOrder(orderId: Int64(seen + 1))),
                                                     clientSequence: UInt64(seen + 1))
                if decoded != expected { wrong += 1 }
                seen += 1
            }
            consumer.release(n)
        }
        process.waitUntilExit()
        #expect(process.terminationStatus == 0)
        #expect(seen == count)
        #expect(wrong == 0)
    }

    @Test("a parked consumer wakes when data is published")
    func parkAndWake() throws {
        let dir = ringDirectory()
        defer { rmdir(dir) }
        let path = dir + "/r"
        defer { unlink(path) }
        let ring = try Ring.create(path: path, capacity: 16)
        let shared = Box(ring)
        let thread = Thread {
            usleep(50_000)  // the consumer is parked by now
            var producer = shared.value.producer()
            _ = producer.claim(1)
            write(42, into: producer.slot(0))
            producer.publish(1)
        }
        thread.start()
        var consumer = ring.consumer()
        // Spin little, park with a long timeout: only a wake-up returns data in time.
        let start = DispatchTime.now().uptimeNanoseconds
        let n = try consumer.wait(WaitStrategy(spins: 10, yields: 1, park: true, parkTimeoutNanoseconds: 30_000_000_000))
        let waited = DispatchTime.now().uptimeNanoseconds - start
        #expect(n == 1)
        #expect(consumer.slot(0).load(as: UInt64.self) == 42)
        #expect(waited < 20_000_000_000, "woken by the producer, not by the timeout")
    }

    @Test("the ring file is created 0600 whatever the umask, and a second create is refused")
    func modeAndExclusive() throws {
        let dir = ringDirectory()
        defer { rmdir(dir) }
        let path = dir + "/r"
        defer { unlink(path) }
        let old = umask(0)
        let ring = try Ring.create(path: path, capacity: 16)
        umask(old)
        var info = stat()
        #expect(stat(path, &info) == 0)
        #expect(info.st_mode & 0o777 == 0o600)
        #expect(throws: SharedMemoryError.inUse(path: path, creatorPid: getpid())) {
            _ = try Ring.create(path: path, capacity: 16)
        }
        _ = ring
    }

    @Test("a leftover of a dead creator is reported as stale")
    func stale() throws {
        let dir = ringDirectory()
        defer { rmdir(dir) }
        let path = dir + "/r"
        defer { unlink(path) }
        _ = try Ring.create(path: path, capacity: 16)
        // Pretend the creator was a process that no longer exists.
        let fd = open(path, O_RDWR)
        var dead: Int32 = 0x3FFF_FFF0
        #expect(pwrite(fd, &dead, 4, 24) == 4)
        close(fd)
        #expect(throws: SharedMemoryError.stale(path: path, creatorPid: 0x3FFF_FFF0)) {
            _ = try Ring.create(path: path, capacity: 16)
        }
        let attached = try Ring.attach(path: path)
        #expect(!attached.creatorIsAlive)
    }

    @Test("random bytes in the header are refused on attach, never trusted", arguments: 0..<200)
    func corruptHeader(seed: Int) throws {
        let dir = ringDirectory()
        defer { rmdir(dir) }
        let path = dir + "/r"
        defer { unlink(path) }
        _ = try Ring.create(path: path, capacity: 16)
        var rng = UInt64(seed + 1) &* 0x9E37_79B9_7F4A_7C15
        let fd = open(path, O_RDWR)
        // Corrupt 1 to 8 bytes among the first 32 (magic, version, slot size, capacity, pid).
        for _ in 0...(rng % 8) {
            rng = rng &* 6364136223846793005 &+ 1442695040888963407
            var byte = UInt8(truncatingIfNeeded: rng >> 40)
            let offset = off_t((rng >> 20) % 28)
            var current: UInt8 = 0
            _ = pread(fd, &current, 1, offset)
            if byte == current { byte ^= 0xFF }
            _ = pwrite(fd, &byte, 1, offset)
        }
        close(fd)
        do {
            let ring = try Ring.attach(path: path)
            // Only the pid field may change and still attach; the layout must be intact.
            #expect(ring.capacity == 16)
        } catch let error as SharedMemoryError {
            guard case .badHeader = error else {
                Issue.record("unexpected error \(error)")
                return
            }
        }
    }

    @Test("a truncated ring file is refused on attach")
    func truncated() throws {
        let dir = ringDirectory()
        defer { rmdir(dir) }
        let path = dir + "/r"
        defer { unlink(path) }
        _ = try Ring.create(path: path, capacity: 16)
        #expect(truncate(path, off_t(RingLayout.headerSize + 64)) == 0)
        #expect(throws: SharedMemoryError.self) { _ = try Ring.attach(path: path) }
        #expect(truncate(path, 100) == 0)
        #expect(throws: SharedMemoryError.self) { _ = try Ring.attach(path: path) }
    }

    @Test("a producer cursor that jumps or goes back is a fault, not a read")
    func corruptCursor() throws {
        let dir = ringDirectory()
        defer { rmdir(dir) }
        let path = dir + "/r"
        defer { unlink(path) }
        let ring = try Ring.create(path: path, capacity: 16)
        var producer = ring.producer()
        _ = producer.claim(4)
        producer.publish(4)
        var consumer = ring.consumer()
        #expect(try consumer.poll() == 4)
        consumer.release(4)
        let cursor = (ring.file.base + 128).assumingMemoryBound(to: UInt64.self)
        cursor.pointee = 1_000
        #expect(throws: RingFault.cursorBeyondCapacity(readable: 996, capacity: 16)) { _ = try consumer.poll() }
        var other = ring.consumer()
        cursor.pointee = 1
        #expect(throws: RingFault.cursorWentBack(was: 4, now: 1)) { _ = try other.poll() }
    }
}
