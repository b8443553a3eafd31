// The journal on a real file system through a real io_uring: what is written reads back, a
// torn tail is cut, a flipped bit in the middle is named, a full disk stops durability and
// resumes when space returns.
import Foundation
import Glibc
import CCRC32C
import CSync
import CUring
@testable import Journal
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

/// Appends records first...last as one batch (nothing is submitted until they are all in, unless
/// the segment ends: then it is split there), then flushes.
func writeBatch(_ writer: JournalWriter, _ range: ClosedRange<UInt64>) throws {
    for sequence in range {
        let bytes = payload(sequence)
        if try !bytes.withUnsafeBytes({ try writer.append(type: 7, sequence: sequence, payload: $0) }) {
            try writer.flush()
            guard try bytes.withUnsafeBytes({ try writer.append(type: 7, sequence: sequence, payload: $0) }) else {
                Issue.record("record \(sequence) does not fit")
                return
            }
        }
    }
    try writer.flush()
}

/// Where each batch of a version 2 segment starts, and where its records start.
func batches(_ path: String) -> [(start: Int, records: [Int])] {
    let data = FileManager.default.contents(atPath: path) ?? Data()
    var out: [(start: Int, records: [Int])] = []
    data.withUnsafeBytes { (raw: UnsafeRawBufferPointer) in
        var offset = 64
        while offset + 56 <= raw.count {
            let bytes = Int(raw.loadUnaligned(fromByteOffset: offset + 24 + 8, as: UInt32.self))
            guard raw.loadUnaligned(fromByteOffset: offset + 4, as: UInt16.self) == JournalLayout.batchType, bytes > 0 else { break }
            var records: [Int] = []
            var p = offset + JournalLayout.batchHeaderSize
            while p < offset + bytes {
                records.append(p)
                p += JournalLayout.recordSize(payload: Int(raw.loadUnaligned(fromByteOffset: p, as: UInt32.self)))
            }
            out.append((offset, records))
            offset += bytes
        }
    }
    return out
}

func flip(_ path: String, at offset: Int, mask: UInt8 = 0x10) {
    let fd = open(path, O_RDWR)
    var byte: UInt8 = 0
    _ = pread(fd, &byte, 1, off_t(offset))
    byte ^= mask
    _ = pwrite(fd, &byte, 1, off_t(offset))
    close(fd)
}

func zeroRange(_ path: String, _ from: Int, _ to: Int) {
    let fd = open(path, O_RDWR)
    let zeros = [UInt8](repeating: 0, count: to - from)
    _ = pwrite(fd, zeros, zeros.count, off_t(from))
    close(fd)
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

    @Test("prezero: each next segment is made ahead (zeros, synced) and renamed in at rollover; records read back across them; the spare is no segment to the readers; one left on disk is replaced at open, and removed when the journal closes")
    func prezeroedSegments() throws {
        let dir = journalDirectory()
        defer { removeAll(dir) }
        var config = JournalConfig(directory: dir, shard: 0, segmentSize: 256 << 10, bufferSize: 32 << 10)
        config.prezero = true
        let sparePath = dir + "/" + JournalLayout.spareName(shard: 0)
        // Garbage where the spare goes (a crash while one was made): never read as a segment.
        FileManager.default.createFile(atPath: sparePath, contents: Data(repeating: 0xEE, count: 4096))
        #expect(JournalReader.segments(directory: dir, shard: 0).isEmpty)
        var writer: JournalWriter? = try JournalWriter(config: config, lastSequence: 0)
        var next: UInt64 = 1
        for round in 1...3 {
            #expect(waitFor(10) { writer!.spareReady }, "round \(round): the spare was not made")
            // Its bytes are zeros now, the size of a segment.
            let attributes = try FileManager.default.attributesOfItem(atPath: sparePath)
            #expect((attributes[.size] as? Int) == 256 << 10)
            let zeros = FileManager.default.contents(atPath: sparePath).map { $0.allSatisfy { $0 == 0 } } ?? false
            #expect(zeros, "round \(round): the spare holds something other than zeros")
            let segments = JournalReader.segments(directory: dir, shard: 0).count
            // Enough records to fill the current segment and start the next.
            while JournalReader.segments(directory: dir, shard: 0).count == segments {
                try write(writer!, next...(next + 99))
                next += 100
            }
            #expect(writer!.segmentsFromSpares == round, "round \(round): \(writer!.segmentsFromSpares) segments from spares")
        }
        try write(writer!, next...(next + 49))
        let last = next + 49
        #expect(writer!.durable == last)
        writer = nil
        #expect(access(sparePath, F_OK) != 0, "the spare stays after the journal closed")
        let (scan, seen) = try readAll(dir)
        #expect(scan.records == Int(last) && scan.lastSequence == last && scan.truncated == nil)
        #expect((1...last).allSatisfy { seen[$0] == payload($0) })
        // A crash between a rollover's rename and its directory's fsync, on a file system that
        // linked and unlinked instead, could leave the spare's name on the live segment: the
        // next spare removes that name, it never truncates the segment.
        let live = try #require(JournalReader.segments(directory: dir, shard: 0).last)
        #expect(link(live, sparePath) == 0)
        // Appending goes on after a restart, with a new spare.
        let again = try JournalWriter(config: config, lastSequence: scan.lastSequence, resume: scan.resume)
        #expect(waitFor(10) { again.spareReady })
        try write(again, (last + 1)...(last + 10))
        let (after, seenAfter) = try readAll(dir)
        #expect(after.lastSequence == last + 10 && after.records == Int(last) + 10)
        #expect((1...(last + 10)).allSatisfy { seenAfter[$0] == payload($0) })
    }

    @Test("appending resumes after a scan, in the same segment")
    func resume() throws {
        let dir = journalDirectory()
        defer { removeAll(dir) }
        let config = JournalConfig(directory: dir, shard: 0, segmentSize: 1 << 20, bufferSize: 64 << 10)
        try write(try JournalWriter(config: config, lastSequence: 0), 1...500)
        let (first, _) = try readAll(dir)
        let writer = try JournalWriter(config: config, lastSequence: first.lastSequence, resume: first.resume)
        try write(writer, 501...900)
        let (scan, seen) = try readAll(dir)
        #expect(scan.records == 900 && scan.lastSequence == 900)
        #expect(seen[900] == payload(900))
        #expect(JournalReader.segments(directory: dir, shard: 0).count == 1)
    }

    @Test("a torn last batch is cut off, and the batches before it stay")
    func tornTail() throws {
        let dir = journalDirectory()
        defer { removeAll(dir) }
        let writer = try JournalWriter(config: JournalConfig(directory: dir, shard: 0, segmentSize: 1 << 20,
                                                             bufferSize: 64 << 10), lastSequence: 0)
        try write(writer, 1...99)
        try writeBatch(writer, 100...100)  // the last batch: record 100 alone
        let (before, _) = try readAll(dir, repair: false)
        // Tear the last record: zero its second half, as a write cut short by a crash would.
        let path = before.appendPath!
        let lastSize = ((24 + payload(100).count + 7) & ~7)
        let lastStart = before.appendOffset - lastSize
        let batchStart = lastStart - JournalLayout.batchHeaderSize
        let zeros = [UInt8](repeating: 0, count: lastSize / 2)
        let fd = open(path, O_RDWR)
        #expect(pwrite(fd, zeros, zeros.count, off_t(lastStart + lastSize - zeros.count)) == zeros.count)
        close(fd)
        let (scan, seen) = try readAll(dir)
        #expect(scan.records == 99 && scan.lastSequence == 99)
        #expect(scan.truncated?.offset == batchStart)
        #expect(seen[100] == nil)
        // Repaired: a second scan finds a clean end, and appending goes on from 100.
        let (again, _) = try readAll(dir)
        #expect(again.truncated == nil && again.appendOffset == batchStart)
    }

    @Test("a flipped bit before the end stops the scan, naming file, offset and sequence")
    func corruptMiddle() throws {
        let dir = journalDirectory()
        defer { removeAll(dir) }
        let writer = try JournalWriter(config: JournalConfig(directory: dir, shard: 0, segmentSize: 1 << 20,
                                                             bufferSize: 64 << 10), lastSequence: 0)
        try writeBatch(writer, 1...9)
        try writeBatch(writer, 10...100)
        try writeBatch(writer, 101...120)  // damage in the last batch would be a torn tail
        // Record 10 starts the second batch, after its header.
        var offset = 64 + JournalLayout.batchHeaderSize
        for s in 1...9 { offset += (24 + payload(UInt64(s)).count + 7) & ~7 }
        let batchStart = offset
        offset += JournalLayout.batchHeaderSize
        let path = JournalReader.segments(directory: dir, shard: 0)[0]
        #expect(batches(path).map(\.start).dropFirst().first == batchStart)
        flip(path, at: offset + 30)
        #expect {
            _ = try readAll(dir)
        } throws: { error in
            guard case JournalError.corrupt(let p, let o, let s, let why) = error else { return false }
            return p == path && o == offset && s == 10 && why.contains("CRC mismatch") && why.contains("in the batch at offset \(batchStart)")
                && why.contains("valid later batch")
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

    @Test("a torn last batch (its first page never landed, later pages did) is cut and zeroed: nothing of it comes back after new appends")
    func tornBatchNoResurrection() throws {
        let dir = journalDirectory()
        defer { removeAll(dir) }
        let config = JournalConfig(directory: dir, shard: 0, segmentSize: 1 << 20, bufferSize: 256 << 10)
        let writer = try JournalWriter(config: config, lastSequence: 0)
        try writeBatch(writer, 1...50)
        try writeBatch(writer, 51...400)  // about 11 pages
        let path = JournalReader.segments(directory: dir, shard: 0)[0]
        let last = batches(path)[1]
        // The pages that did not land keep their old content: zeros after the batch before.
        let firstPageEnd = (last.start / 4096 + 1) * 4096
        zeroRange(path, last.start, firstPageEnd)
        zeroRange(path, firstPageEnd + 4096, firstPageEnd + 8192)
        let (scan, _) = try readAll(dir)
        #expect(scan.records == 50 && scan.lastSequence == 50)
        #expect(scan.truncated?.offset == last.start)
        // Everything after the cut is zeros on disk.
        let bytes = FileManager.default.contents(atPath: path)!
        #expect(bytes[last.start...].allSatisfy { $0 == 0 })
        // New records over the old place; the records of the torn batch never return.
        let again = try JournalWriter(config: config, lastSequence: scan.lastSequence, resume: scan.resume)
        try writeBatch(again, 51...60)
        let (after, seen) = try readAll(dir)
        #expect(after.records == 60 && after.lastSequence == 60 && after.truncated == nil)
        #expect(seen[61] == nil && (1...60).allSatisfy { seen[UInt64($0)] == payload(UInt64($0)) })
    }

    @Test("a flipped bit in a length field with valid batches after it is corruption, not a torn tail: nothing is cut")
    func flippedLengthIsCorruption() throws {
        let dir = journalDirectory()
        defer { removeAll(dir) }
        let writer = try JournalWriter(config: JournalConfig(directory: dir, shard: 0, segmentSize: 1 << 20,
                                                             bufferSize: 64 << 10), lastSequence: 0)
        try writeBatch(writer, 1...50)
        try writeBatch(writer, 51...100)
        try writeBatch(writer, 101...150)
        let path = JournalReader.segments(directory: dir, shard: 0)[0]
        let second = batches(path)[1]
        let record60 = second.records[9]
        flip(path, at: record60 + 2, mask: 0x01)  // length += 65536
        #expect {
            _ = try readAll(dir, repair: true)
        } throws: { error in
            guard case JournalError.corrupt(let p, let o, let s, let why) = error else { return false }
            return p == path && o == record60 && s == 60 && why.contains("does not fit") && why.contains("valid later batch")
        }
        // Nothing was zeroed: with the bit flipped back, all 150 records read.
        flip(path, at: record60 + 2, mask: 0x01)
        let (scan, _) = try readAll(dir, repair: false)
        #expect(scan.records == 150)
    }

    @Test("a last segment whose creation never completed is removed; appending goes on")
    func unfinishedSegment() throws {
        let dir = journalDirectory()
        defer { removeAll(dir) }
        let config = JournalConfig(directory: dir, shard: 0, segmentSize: 256 << 10, bufferSize: 32 << 10)
        try write(try JournalWriter(config: config, lastSequence: 0), 1...100)
        let orphan = dir + "/" + JournalLayout.segmentName(shard: 0, firstSequence: 101)
        let fd = open(orphan, O_RDWR | O_CREAT, 0o600)
        #expect(posix_fallocate(fd, 0, 256 << 10) == 0)
        close(fd)
        let (scan, _) = try readAll(dir, repair: false)
        #expect(scan.unfinishedSegment == orphan && scan.records == 100)
        #expect(access(orphan, F_OK) == 0, "a read-only scan removes nothing")
        let (repaired, _) = try readAll(dir)
        #expect(access(orphan, F_OK) != 0)
        try write(try JournalWriter(config: config, lastSequence: 100, resume: repaired.resume), 101...3000)
        let (after, seen) = try readAll(dir)
        #expect(after.records == 3000 && seen[3000] == payload(3000))
        // A zero header before data is not an unfinished segment: refused, not removed.
        let last = JournalReader.segments(directory: dir, shard: 0).last!
        zeroRange(last, 0, 64)
        #expect(throws: JournalError.self) { _ = try readAll(dir) }
        #expect(access(last, F_OK) == 0)
    }

    @Test("a segment of another journal is refused")
    func foreignSegment() throws {
        let a = journalDirectory(), b = journalDirectory()
        defer { removeAll(a); removeAll(b) }
        let config = { (dir: String) in JournalConfig(directory: dir, shard: 0, segmentSize: 64 << 10, bufferSize: 32 << 10) }
        // The same batches in both, so that their segments start at the same sequences.
        for dir in [a, b] {
            let writer = try JournalWriter(config: config(dir), lastSequence: 0)
            for first in stride(from: UInt64(1), to: 2000, by: 50) { try writeBatch(writer, first...(first + 49)) }
        }
        let segA = JournalReader.segments(directory: a, shard: 0), segB = JournalReader.segments(directory: b, shard: 0)
        #expect(segA.count > 2 && segA.count == segB.count)
        unlink(segA[1])
        #expect(link(segB[1], segA[1]) == 0)
        #expect {
            _ = try readAll(a, repair: false)
        } throws: { "\($0)".contains("another journal") }
    }

    @Test("a version 1 journal (records without batches) still reads, and appending goes on in a version 2 segment")
    func version1Journal() throws {
        let dir = journalDirectory()
        defer { removeAll(dir) }
        // A version 1 segment as the first journal wrote it: records back to back after the header.
        var file = [UInt8](repeating: 0, count: 64 << 10)
        file.withUnsafeMutableBytes { f in
            f.storeBytes(of: JournalLayout.magic, toByteOffset: 0, as: UInt64.self)
            f.storeBytes(of: UInt32(1).littleEndian, toByteOffset: 8, as: UInt32.self)
            f.storeBytes(of: UInt64(1).littleEndian, toByteOffset: 16, as: UInt64.self)
            f.storeBytes(of: UInt64(64 << 10).littleEndian, toByteOffset: 24, as: UInt64.self)
            var offset = 64
            for sequence in UInt64(1)...100 {
                let bytes = payload(sequence)
                let p = f.baseAddress! + offset
                p.storeBytes(of: UInt32(bytes.count).littleEndian, toByteOffset: 0, as: UInt32.self)
                p.storeBytes(of: UInt16(7).littleEndian, toByteOffset: 4, as: UInt16.self)
                p.storeBytes(of: sequence.littleEndian, toByteOffset: 8, as: UInt64.self)
                bytes.withUnsafeBytes { (p + 24).copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
                var crc = cb_crc32c(0, p, 16)
                crc = cb_crc32c(crc, p + 24, bytes.count)
                p.storeBytes(of: crc.littleEndian, toByteOffset: 16, as: UInt32.self)
                offset += JournalLayout.recordSize(payload: bytes.count)
            }
        }
        let path = dir + "/" + JournalLayout.segmentName(shard: 0, firstSequence: 1)
        #expect(FileManager.default.createFile(atPath: path, contents: Data(file)))
        let (scan, seen) = try readAll(dir)
        #expect(scan.records == 100 && seen[100] == payload(100) && scan.lastVersion == 1 && scan.resume == nil)
        let config = JournalConfig(directory: dir, shard: 0, segmentSize: 64 << 10, bufferSize: 16 << 10)
        try write(try JournalWriter(config: config, lastSequence: 100, resume: scan.resume), 101...200)
        let (after, all) = try readAll(dir)
        #expect(after.records == 200 && all[1] == payload(1) && all[200] == payload(200) && after.lastVersion == 2)
        #expect(JournalReader.segments(directory: dir, shard: 0).count == 2)
    }

    @Test("cutting a journal back after a sequence (inside a batch, at a batch's end, across segments, to nothing): it reads back to exactly there, and appending goes on from there")
    func truncate() throws {
        for cut in [UInt64(1234), 1250, 1, 0] {
            let dir = journalDirectory()
            defer { removeAll(dir) }
            let config = JournalConfig(directory: dir, shard: 0, segmentSize: 64 << 10, bufferSize: 32 << 10)
            let writer = try JournalWriter(config: config, lastSequence: 0)
            for first in stride(from: UInt64(1), to: 3000, by: 50) { try writeBatch(writer, first...(first + 49)) }
            #expect(JournalReader.segments(directory: dir, shard: 0).count > 3)
            _ = try JournalReader.truncate(directory: dir, shard: 0, after: cut)
            let (scan, seen) = try readAll(dir)
            #expect(scan.lastSequence == cut && seen.count == Int(cut), "cut \(cut): \(scan.lastSequence), \(seen.count)")
            #expect(seen.allSatisfy { $0.value == payload($0.key) })
            // Appending after the cut: the next batch chains to the one cut short.
            let again = try JournalWriter(config: config, lastSequence: cut, resume: scan.resume)
            try write(again, (cut + 1)...(cut + 300))
            let (scan2, seen2) = try readAll(dir)
            #expect(scan2.lastSequence == cut + 300 && seen2.count == Int(cut + 300) && seen2.allSatisfy { $0.value == payload($0.key) },
                    "cut \(cut): after appending \(scan2.lastSequence)")
        }
    }
}

@Suite("Journal tail (replication)", .serialized)
struct JournalTailTests {
    /// Reads everything the tail gives up to `upTo`, in chunks of at most `chunk` bytes.
    func drain(_ tail: JournalTail, upTo: UInt64, chunk: Int = 4096) throws -> [(UInt64, [UInt8])] {
        var out: [(UInt64, [UInt8])] = []
        while true {
            var bytes: [UInt8] = []
            let n = try tail.read(upTo: upTo, maxBytes: chunk, into: &bytes)
            if n == 0 { return out }
            var at = 0
            while at < bytes.count {
                let checked = bytes.withUnsafeBytes { JournalRecordBytes.check(UnsafeRawBufferPointer(rebasing: $0[at...])) }
                guard case .success(let record) = checked else { Issue.record("a bad record at \(at)"); return out }
                #expect(record.type == 7)
                out.append((record.sequence, Array(record.payload)))
                at += record.size
            }
        }
    }

    @Test("a tail reads every record after its position, across segment rollovers, only up to the watermark, from mid-batch too")
    func tailAcrossSegments() throws {
        let dir = journalDirectory()
        defer { removeAll(dir) }
        let writer = try JournalWriter(config: JournalConfig(directory: dir, shard: 0, segmentSize: 64 << 10, bufferSize: 16 << 10),
                                       lastSequence: 0)
        try write(writer, 1...3000)
        #expect(JournalReader.segments(directory: dir, shard: 0).count > 3)
        // From the start, stopping at a watermark in the middle: whole batches at or below it only.
        let tail = JournalTail(directory: dir, shard: 0, after: 0)
        let first = try drain(tail, upTo: 1500)
        #expect(first.allSatisfy { $0.0 <= 1500 } && first.map(\.0) == Array(1...UInt64(first.count)))
        #expect(first.allSatisfy { $0.1 == payload($0.0) })
        // The rest, as the watermark moves on (more written meanwhile).
        try write(writer, 3001...4000)
        let rest = try drain(tail, upTo: 4000)
        #expect((first + rest).map(\.0) == Array(1...4000))
        #expect(rest.allSatisfy { $0.1 == payload($0.0) })
        // A tail that starts after a sequence inside a batch and inside a later segment.
        let late = JournalTail(directory: dir, shard: 0, after: 2345)
        #expect(try drain(late, upTo: 4000).map(\.0) == Array(2346...4000))
        // Nothing beyond the watermark, nothing twice.
        #expect(try drain(late, upTo: 4000).isEmpty)
    }

    @Test("a tail whose records are gone says so; a damaged record is refused, never handed out")
    func tailGapsAndDamage() throws {
        let dir = journalDirectory()
        defer { removeAll(dir) }
        let writer = try JournalWriter(config: JournalConfig(directory: dir, shard: 0, segmentSize: 64 << 10, bufferSize: 16 << 10),
                                       lastSequence: 0)
        try write(writer, 1...2000)
        let segments = JournalReader.segments(directory: dir, shard: 0)
        unlink(segments[0])  // as a snapshot's cleanup would
        #expect(throws: JournalTail.Gap.self) { _ = try drain(JournalTail(directory: dir, shard: 0, after: 0), upTo: 2000) }
        // A flipped payload byte in the second segment's first batch.
        let layout = batches(segments[1])
        flip(segments[1], at: layout[2].records[0] + JournalLayout.recordHeaderSize)
        let first = JournalReader.firstSequence(of: segments[1])!
        #expect(throws: JournalTail.Gap.self) { _ = try drain(JournalTail(directory: dir, shard: 0, after: first - 1), upTo: 2000) }
    }

    @Test("pruning below a sequence removes only whole segments before it: that record and everything after stay, a scan from it reads the rest, one from 0 says the start is gone, a tail from before it says removed")
    func prune() throws {
        let dir = journalDirectory()
        defer { removeAll(dir) }
        let writer = try JournalWriter(config: JournalConfig(directory: dir, shard: 0, segmentSize: 64 << 10, bufferSize: 16 << 10),
                                       lastSequence: 0)
        try write(writer, 1...4000)
        let before = JournalReader.segments(directory: dir, shard: 0)
        #expect(before.count > 4)
        // A boundary just after a segment's first record: the segment holding it stays.
        let third = JournalReader.firstSequence(of: before[2])!
        let boundary = third + 1
        let crc = try #require(try JournalReader.record(directory: dir, shard: 0, sequence: boundary)).crc
        let removed = try JournalReader.prune(directory: dir, shard: 0, below: boundary)
        #expect(removed == Array(before[0..<2]))
        #expect(JournalReader.firstKept(directory: dir, shard: 0) == third)
        #expect(try JournalReader.record(directory: dir, shard: 0, sequence: boundary)?.crc == crc)
        #expect(try JournalReader.record(directory: dir, shard: 0, sequence: third - 1) == nil)
        // The record's bytes, as they lie: its header names it and its CRC is the stored one.
        let bytes = try #require(try JournalReader.recordBytes(directory: dir, shard: 0, sequence: boundary))
        let checked = bytes.withUnsafeBytes { JournalRecordBytes.check($0) }
        guard case .success(let record) = checked else { Issue.record("recordBytes: \(checked)"); return }
        #expect(record.sequence == boundary && Array(record.payload) == payload(boundary) && record.size == bytes.count)
        #expect(bytes.withUnsafeBytes { JournalRecordBytes.crc($0) } == crc)
        // Pruning again at the same boundary removes nothing; at a boundary in the last segment, never the last.
        #expect(try JournalReader.prune(directory: dir, shard: 0, below: boundary).isEmpty)
        _ = try JournalReader.prune(directory: dir, shard: 0, below: 4000)
        #expect(JournalReader.segments(directory: dir, shard: 0) == [before.last!])
        let last = JournalReader.firstSequence(of: before.last!)!
        // Recovery's scan: from a snapshot at or after the first kept record, the rest; from 0, an error that says why.
        var seen: [UInt64] = []
        _ = try JournalReader.scan(directory: dir, shard: 0, repair: false, after: last) { _, sequence, _ in seen.append(sequence) }
        #expect(seen == Array((last + 1)...4000))
        #expect { _ = try JournalReader.scan(directory: dir, shard: 0, repair: false) { _, _, _ in } } throws: {
            "\($0)".contains("the segments before it are missing")
        }
        #expect { _ = try drain(JournalTail(directory: dir, shard: 0, after: 10), upTo: 4000) } throws: {
            ($0 as? JournalTail.Gap) == .removed(after: 10, firstKept: last)
        }
    }

    @Test("a tail reading behind while the segments after its own are pruned says removed at the end of its segment, never waits there for ever")
    func pruneUnderATail() throws {
        let dir = journalDirectory()
        defer { removeAll(dir) }
        let writer = try JournalWriter(config: JournalConfig(directory: dir, shard: 0, segmentSize: 64 << 10, bufferSize: 16 << 10),
                                       lastSequence: 0)
        try write(writer, 1...4000)
        let files = JournalReader.segments(directory: dir, shard: 0)
        #expect(files.count > 4)
        let tail = JournalTail(directory: dir, shard: 0, after: 0)
        var bytes: [UInt8] = []
        _ = try tail.read(upTo: 4000, maxBytes: 1024, into: &bytes)  // inside the first segment
        let third = JournalReader.firstSequence(of: files[3])!
        _ = try JournalReader.prune(directory: dir, shard: 0, below: third)
        var error: JournalTail.Gap?
        for _ in 0..<10_000 {
            do {
                bytes.removeAll()
                if try tail.read(upTo: 4000, maxBytes: 1 << 20, into: &bytes) == 0 { break }
            } catch let gap { error = gap; break }
        }
        // It read its whole segment, then found the next ones gone.
        #expect(error == .removed(after: JournalReader.firstSequence(of: files[1])! - 1, firstKept: third), "\(String(describing: error))")
    }

    @Test("a futex wait queued on the journal's io_uring (shared memory, as the doorbell): a FUTEX_WAKE from another thread ends the ring's wait before its timeout, with the wait's tag; a stale expected value completes at once")
    func doorbellWaitInRing() throws {
        var error: Int32 = 0
        let ring = try #require(cb_uring_create(8, &error))
        defer { cb_uring_destroy(ring) }
        let map = try #require(mmap(nil, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0))
        defer { munmap(map, 4096) }
        let word = map.bindMemory(to: UInt32.self, capacity: 1)
        word.pointee = 0
        #expect(cb_uring_futex_wait(ring, word, 0, 7) == 0)
        let address = UInt(bitPattern: word)
        let waker = Thread {
            usleep(100_000)
            let w = UnsafeMutablePointer<UInt32>(bitPattern: address)!
            _ = cb_fetch_add_u32(w, 1)
            _ = cb_futex_wake(w, 1)
        }
        waker.start()
        let t0 = Date()
        #expect(cb_uring_wait_timeout(ring, 5_000_000_000) == 1)
        #expect(Date().timeIntervalSince(t0) < 4, "woken by the timeout, not by the wake")
        var tag: UInt64 = 0, result: Int32 = 0
        #expect(cb_uring_reap(ring, &tag, &result) == 1 && tag == 7 && result == 0, "tag \(tag), result \(result)")
        // The word moved on: a wait for the old value completes at once (-EAGAIN).
        #expect(cb_uring_futex_wait(ring, word, 0, 8) == 0)
        #expect(cb_uring_wait_timeout(ring, 5_000_000_000) == 1)
        #expect(cb_uring_reap(ring, &tag, &result) == 1 && tag == 8 && result == -EAGAIN, "tag \(tag), result \(result)")
    }
}
