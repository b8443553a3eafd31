// Reading a live journal from behind: the records after a sequence, up to a durable watermark,
// as they lie in the segments (record header, payload, padding), for a standby. Every batch is
// checked (framing, CRCs, sequence, checksum and chain) before a record of it is handed out,
// and only batches wholly at or below the watermark are read: the writer has finished them.
//
// The tail follows rollovers: a zero header where the next batch would be, with the next
// segment on disk starting at the next sequence, means the segment is done.

import CCRC32C
import Glibc

public final class JournalTail {
    public let directory: String
    public let shard: Int
    /// The last sequence handed out (the tail reads what follows it).
    public private(set) var position: UInt64
    private var segment: (path: String, base: UnsafeRawPointer, size: Int, journalId: UInt64)?
    private var offset = 0
    private var knownJournalId: UInt64?
    private var chain: UInt32 = 0
    /// The sequence of the batch that starts at `offset`.
    private var expected: UInt64 = 0

    public init(directory: String, shard: Int, after: UInt64) {
        self.directory = directory
        self.shard = shard
        position = after
    }

    deinit { unmap() }

    private func unmap() {
        if let segment { munmap(UnsafeMutableRawPointer(mutating: segment.base), segment.size) }
        segment = nil
    }

    /// Why the tail cannot go on from its position.
    public enum Gap: Error, Equatable, CustomStringConvertible {
        /// The segments holding the sequences after the position are gone (removed after a snapshot).
        case removed(after: UInt64, firstKept: UInt64?)
        case damaged(String)
        public var description: String {
            switch self {
            case .removed(let after, let first):
                "the journal no longer holds the records after sequence \(after)\(first.map { " (it starts at \($0))" } ?? " (it is empty)")"
            case .damaged(let why): why
            }
        }
    }

    /// Appends the raw records after `position` whose batches end at or below `upTo`, up to about
    /// `maxBytes` (always whole batches' records; at least one record if any is ready). Returns
    /// how many records it appended.
    public func read(upTo: UInt64, maxBytes: Int, into out: inout [UInt8]) throws(Gap) -> Int {
        var count = 0
        var bytes = 0
        while position < upTo && bytes < maxBytes {
            if segment == nil { try open() }
            guard let seg = segment else { return count }
            if offset + JournalLayout.recordHeaderSize > seg.size
                || JournalReader.isZero(seg.base + offset, JournalLayout.recordHeaderSize) {
                // The end of what is written here: the next segment, if the writer rolled over.
                let files = JournalReader.segments(directory: directory, shard: shard)
                let next = files.first { JournalReader.firstSequence(of: $0) == expected }
                guard let next, next != seg.path else {
                    // Pruned while this tail read behind: the segments after this one are gone.
                    if let first = files.first.flatMap(JournalReader.firstSequence(of:)), first > expected {
                        throw .removed(after: position, firstKept: first)
                    }
                    return count
                }
                unmap()
                try map(next)
                continue
            }
            let last = UInt64(littleEndian: seg.base.load(fromByteOffset: offset + JournalLayout.recordHeaderSize, as: UInt64.self))
            guard JournalReader.isBatchHeader(seg.base, size: seg.size, at: offset, journalId: seg.journalId) else {
                // A batch being written (its header not yet readable) is never below the watermark.
                throw .damaged("\(seg.path): no valid batch header at offset \(offset) (sequence \(expected))")
            }
            if last > upTo { return count }
            switch JournalReader.checkBatch(seg.base, size: seg.size, at: offset, journalId: seg.journalId, chain: chain, expected: expected) {
            case .failure(let problem):
                throw .damaged("\(seg.path): batch at offset \(offset): \(problem.why)")
            case .success(let batch):
                var p = offset + JournalLayout.batchHeaderSize
                var sequence = expected
                while p < batch.end {
                    let length = Int(UInt32(littleEndian: seg.base.load(fromByteOffset: p, as: UInt32.self)))
                    let size = JournalLayout.recordSize(payload: length)
                    if sequence > position {
                        out.append(contentsOf: UnsafeRawBufferPointer(start: seg.base + p, count: size))
                        position = sequence
                        count += 1
                        bytes += size
                    }
                    sequence += 1
                    p += size
                }
                chain = batch.checksum
                offset = batch.end
                expected = last + 1
            }
        }
        return count
    }

    /// Maps the segment that holds position + 1 and walks to it.
    private func open() throws(Gap) {
        let files = JournalReader.segments(directory: directory, shard: shard)
        guard let path = files.last(where: { (JournalReader.firstSequence(of: $0) ?? .max) <= position + 1 }) else {
            // Nothing yet (a journal that holds no record), or the segments needed are gone.
            if let first = files.first.flatMap(JournalReader.firstSequence(of:)), first > position + 1 {
                throw .removed(after: position, firstKept: first)
            }
            return
        }
        try map(path)
        // Skip whole batches at or below the position (a batch straddling it is read from its start).
        while let seg = segment, offset + JournalLayout.recordHeaderSize <= seg.size,
              !JournalReader.isZero(seg.base + offset, JournalLayout.recordHeaderSize) {
            guard JournalReader.isBatchHeader(seg.base, size: seg.size, at: offset, journalId: seg.journalId) else { return }
            let last = UInt64(littleEndian: seg.base.load(fromByteOffset: offset + JournalLayout.recordHeaderSize, as: UInt64.self))
            if last > position { return }
            switch JournalReader.checkBatch(seg.base, size: seg.size, at: offset, journalId: seg.journalId, chain: chain, expected: expected) {
            case .failure(let problem): throw .damaged("\(seg.path): batch at offset \(offset): \(problem.why)")
            case .success(let batch):
                chain = batch.checksum
                offset = batch.end
                expected = last + 1
            }
        }
    }

    private func map(_ path: String) throws(Gap) {
        let fd = Glibc.open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw .damaged("\(path): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        var info = stat()
        guard fstat(fd, &info) == 0, Int(info.st_size) >= JournalLayout.segmentHeaderSize,
              let base = mmap(nil, Int(info.st_size), PROT_READ, MAP_SHARED, fd, 0), base != MAP_FAILED else {
            throw .damaged("\(path): cannot map it")
        }
        let size = Int(info.st_size)
        let raw = UnsafeRawPointer(base)
        guard raw.load(as: UInt64.self) == JournalLayout.magic,
              UInt32(littleEndian: raw.load(fromByteOffset: 8, as: UInt32.self)) == JournalLayout.version,
              UInt32(littleEndian: raw.load(fromByteOffset: 12, as: UInt32.self)) == UInt32(shard) else {
            munmap(base, size)
            throw .damaged("\(path): not a version \(JournalLayout.version) segment of shard \(shard)")
        }
        let first = UInt64(littleEndian: raw.load(fromByteOffset: 16, as: UInt64.self))
        let journalId = UInt64(littleEndian: raw.load(fromByteOffset: 32, as: UInt64.self))
        if let previous = knownJournalId, previous != journalId {
            munmap(base, size)
            throw .damaged("\(path): another journal's segment")
        }
        let segmentChain = UInt32(littleEndian: raw.load(fromByteOffset: 40, as: UInt32.self))
        if knownJournalId != nil, segmentChain != chain, expected == first {
            munmap(base, size)
            throw .damaged("\(path): does not continue the batches of the segment before")
        }
        segment = (path, raw, size, journalId)
        knownJournalId = journalId
        offset = JournalLayout.segmentHeaderSize
        chain = segmentChain
        expected = first
    }
}

/// A record as it travels between journals: header (length, type, sequence, CRC) and payload.
public enum JournalRecordBytes {
    /// Checks one raw record at the start of `bytes`: (type, sequence, payload, its size with
    /// padding), or why it is not a record.
    public static func check(_ bytes: UnsafeRawBufferPointer) -> Result<(type: UInt16, sequence: UInt64, payload: UnsafeRawBufferPointer, size: Int), JournalTail.Gap> {
        guard bytes.count >= JournalLayout.recordHeaderSize, let base = bytes.baseAddress else {
            return .failure(.damaged("a record header of \(bytes.count) bytes"))
        }
        let length = Int(UInt32(littleEndian: base.loadUnaligned(as: UInt32.self)))
        guard length > 0, length <= JournalLayout.maxPayload, JournalLayout.recordSize(payload: length) <= bytes.count else {
            return .failure(.damaged("a record of length \(length) in \(bytes.count) bytes"))
        }
        let type = UInt16(littleEndian: base.loadUnaligned(fromByteOffset: 4, as: UInt16.self))
        let sequence = UInt64(littleEndian: base.loadUnaligned(fromByteOffset: 8, as: UInt64.self))
        var crc = cb_crc32c(0, base, 16)
        crc = cb_crc32c(crc, base + JournalLayout.recordHeaderSize, length)
        guard crc == UInt32(littleEndian: base.loadUnaligned(fromByteOffset: 16, as: UInt32.self)) else {
            return .failure(.damaged("CRC mismatch in the record of sequence \(sequence)"))
        }
        guard type != JournalLayout.batchType else { return .failure(.damaged("a batch header where a record was expected")) }
        return .success((type, sequence, UnsafeRawBufferPointer(start: base + JournalLayout.recordHeaderSize, count: length),
                         JournalLayout.recordSize(payload: length)))
    }

    /// The stored CRC of the record at the start of `bytes` (already checked).
    public static func crc(_ bytes: UnsafeRawBufferPointer) -> UInt32 {
        UInt32(littleEndian: bytes.baseAddress!.loadUnaligned(fromByteOffset: 16, as: UInt32.self))
    }
}
