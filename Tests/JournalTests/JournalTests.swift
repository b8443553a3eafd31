// The journal on a real file system through a real io_uring: what is written reads back, a
// torn tail is cut, a flipped bit in the middle is named, a full disk stops durability and
// resumes when space returns.
import Foundation
import Glibc
import Journal
import Testing
import TestSupport
import Workloads

func journalDirectory() -> String {
    let dir = NSTemporaryDirectory() + "crossbook-journal-\(UUID().uuidString.prefix(8))"
    mkdir(dir, 0o700)
    return dir
}

func removeAll(_ dir: String) {
    for path in (try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? [] { unlink(dir + "/" + path) }
    rmdir(dir)
}

/// Deterministic payload of record `sequence`: its length and bytes follow from the sequence.
func payload(_ sequence: UInt64) -> [UInt8] {
    var rng = SplitMix64(seed: sequence)
    let length = 1 + Int(rng.next() % 200)
    return (0..<length).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
}

/// Appends records first...last, polling as needed, then flushes.
func write(_ writer: JournalWriter, _ range: ClosedRange<UInt64>) throws {
    for sequence in range {
        let bytes = payload(sequence)
        while try !bytes.withUnsafeBytes({ try writer.append(type: 7, sequence: sequence, payload: $0) }) {
            writer.poll()
        }
        writer.poll()
    }
    try writer.flush()
}

func readAll(_ dir: String, repair: Bool = true) throws -> (JournalScan, [UInt64: [UInt8]]) {
    var seen: [UInt64: [UInt8]] = [:]
    let scan = try JournalReader.scan(directory: dir, shard: 0, repair: repair) { type, sequence, bytes in
        #expect(type == 7)
        seen[sequence] = Array(bytes)
    }
    return (scan, seen)
}

@Suite("Journal", .serialized)
struct JournalTests {
    @Test("20,000 records across many segments read back exactly, in order; durable reaches the last")
    func roundTrip() throws {
        let dir = journalDirectory()
        defer { removeAll(dir) }
        let writer = try JournalWriter(config: JournalConfig(directory: dir, shard: 0, segmentSize: 256 << 10,
                                                             bufferSize: 32 << 10), lastSequence: 0)
        try write(writer, 1...20_000)
        #expect(writer.durable == 20_000)
        #expect(JournalReader.segments(directory: dir, shard: 0).count > 5)
        let (scan, seen) = try readAll(dir)
        #expect(scan.records == 20_000 && scan.firstSequence == 1 && scan.lastSequence == 20_000)
        #expect(scan.truncated == nil)
        #expect((1...20_000).allSatisfy { seen[UInt64($0)] == payload(UInt64($0)) })
    }

    @Test("appending resumes after a scan, in the same segment")
    func resume() throws {
        let dir = journalDirectory()
        defer { removeAll(dir) }
        let config = JournalConfig(directory: dir, shard: 0, segmentSize: 1 << 20, bufferSize: 64 << 10)
        try write(try JournalWriter(config: config, lastSequence: 0), 1...500)
        let (first, _) = try readAll(dir)
        let writer = try JournalWriter(config: config, lastSequence: first.lastSequence,
                                       resume: (first.appendPath!, first.appendOffset))
        try write(writer, 501...900)
        let (scan, seen) = try readAll(dir)
        #expect(scan.records == 900 && scan.lastSequence == 900)
        #expect(seen[900] == payload(900))
        #expect(JournalReader.segments(directory: dir, shard: 0).count == 1)
    }

    @Test("a torn last record is cut off, and the records before it stay")
    func tornTail() throws {
        let dir = journalDirectory()
        defer { removeAll(dir) }
        try write(try JournalWriter(config: JournalConfig(directory: dir, shard: 0, segmentSize: 1 << 20,
                                                          bufferSize: 64 << 10), lastSequence: 0), 1...100)
        let (before, _) = try readAll(dir, repair: false)
        // Tear the last record: zero its second half, as a write cut short by a crash would.
        let path = before.appendPath!
        let lastSize = ((24 + payload(100).count + 7) & ~7)
        let lastStart = before.appendOffset - lastSize
        let zeros = [UInt8](repeating: 0, count: lastSize / 2)
        let fd = open(path, O_RDWR)
        #expect(pwrite(fd, zeros, zeros.count, off_t(lastStart + lastSize - zeros.count)) == zeros.count)
        close(fd)
        let (scan, seen) = try readAll(dir)
        #expect(scan.records == 99 && scan.lastSequence == 99)
        #expect(scan.truncated?.offset == lastStart)
        #expect(seen[100] == nil)
        // Repaired: a second scan finds a clean end, and appending goes on from 100.
        let (again, _) = try readAll(dir)
        #expect(again.truncated == nil && again.appendOffset == lastStart)
    }

    @Test("a flipped bit before the end stops the scan, naming file, offset and sequence")
    func corruptMiddle() throws {
        let dir = journalDirectory()
        defer { removeAll(dir) }
        try write(try JournalWriter(config: JournalConfig(directory: dir, shard: 0, segmentSize: 1 << 20,
                                                          bufferSize: 64 << 10), lastSequence: 0), 1...100)
        // Record 10 starts after records 1...9.
        var offset = 64
        for s in 1...9 { offset += (24 + payload(UInt64(s)).count + 7) & ~7 }
        let path = JournalReader.segments(directory: dir, shard: 0)[0]
        let fd = open(path, O_RDWR)
        var byte: UInt8 = 0
        _ = pread(fd, &byte, 1, off_t(offset + 30))
        byte ^= 0x10
        _ = pwrite(fd, &byte, 1, off_t(offset + 30))
        close(fd)
        #expect(throws: JournalError.corrupt(path: path, offset: offset, sequence: 10, "CRC mismatch")) {
            _ = try readAll(dir)
        }
    }

    @Test("a full disk stops durability without corrupting the journal; it resumes when space returns")
    func fullDisk() throws {
        let dir = journalDirectory()
        defer { removeAll(dir) }
        let mountPoint = dir + "/fs"
        mkdir(mountPoint, 0o700)
        defer { rmdir(mountPoint) }
        // A real, small file system: 1 MiB of tmpfs.
        try withTmpfs(size: "1m", at: mountPoint) {
            let writer = try JournalWriter(config: JournalConfig(directory: mountPoint, shard: 0, segmentSize: 128 << 10,
                                                                 bufferSize: 16 << 10), lastSequence: 0)
            // Write until the file system is full: a segment cannot be allocated.
            var sequence: UInt64 = 0
            var failed = false
            while !failed && sequence < 100_000 {
                let next = sequence + 1
                let bytes = payload(next)
                do {
                    while try !bytes.withUnsafeBytes({ try writer.append(type: 7, sequence: next, payload: $0) }) {
                        writer.poll()
                        if writer.failure != nil { break }
                    }
                    if writer.failure == nil { sequence = next }
                    writer.poll()
                } catch {
                    failed = true
                }
                if writer.failure != nil { failed = true }
            }
            #expect(failed)
            guard case .diskFull = writer.failure else {
                Issue.record("expected disk full, got \(String(describing: writer.failure))")
                return
            }
            // What was durable before is intact and readable.
            try? writer.flush()
            let durable = writer.durable
            #expect(durable > 0 && durable <= sequence)
            var scanned = 0
            let scan = try JournalReader.scan(directory: mountPoint, shard: 0, repair: false) { _, s, bytes in
                if Array(bytes) == payload(s) { scanned += 1 }
            }
            #expect(scan.lastSequence >= durable && scanned == scan.records)
            // Space returns (another file goes away): the rollover is retried and writing goes on.
            let segments = JournalReader.segments(directory: mountPoint, shard: 0)
            #expect(segments.count >= 2)
            unlink(segments[0])
            try writer.retryRollover()
            #expect(writer.failure == nil)
            try write(writer, (sequence + 1)...(sequence + 50))
            #expect(writer.durable == sequence + 50)
        }
    }
}
