// The journal of one shard: sequenced records in preallocated segment files, written by
// io_uring in group commits (one write and a linked fdatasync per batch), and read back by a
// recovery scan that checks every record's CRC32C.
//
// Segment file `journal-<shard>-<first sequence, 20 digits>.seg`, preallocated to the segment
// size (fallocate), so a full disk shows when a segment is opened, not in the middle of one:
//   0   magic "CBJRNL01" (u64), version (u32), shard (u32), first sequence (u64),
//       segment size (u64), 32 bytes reserved
//   64  records, each 8-byte aligned:
//         0  payload length (u32, > 0), 4 type (u16), 6 reserved (u16, 0), 8 sequence (u64),
//         16 CRC32C of bytes 0..<16 and the payload (u32), 20 reserved (u32, 0), 24 payload,
//         then zeros up to a multiple of 8
//   The unwritten rest of a segment is zeros: a zero length ends the segment's records.
//
// NOT YET WIRED INTO THE SHARDS: the engine does not journal its commands yet (issue 4).

import CShims
import Glibc
import SharedMemory

public enum JournalLayout {
    public static let version: UInt32 = 1
    public static let segmentHeaderSize = 64
    public static let recordHeaderSize = 24
    public static let maxPayload = 1 << 20

    /// "CBJRNL01" as it lies in the file.
    public static let magic: UInt64 = UInt64(littleEndian: 0x3130_4C4E_524A_4243)

    @inline(__always)
    public static func recordSize(payload: Int) -> Int { (recordHeaderSize + payload + 7) & ~7 }

    public static func segmentName(shard: Int, firstSequence: UInt64) -> String {
        let digits = String(firstSequence)
        return "journal-\(shard)-" + String(repeating: "0", count: max(0, 20 - digits.count)) + digits + ".seg"
    }
}

public enum JournalError: Error, Equatable, CustomStringConvertible {
    case system(call: String, path: String, errno: Int32)
    case diskFull(path: String)
    case corrupt(path: String, offset: Int, sequence: UInt64, String)
    case badSegment(path: String, String)
    case tooLarge(Int)

    public var description: String {
        switch self {
        case .system(let call, let path, let e): "\(call)(\(path)) failed: \(String(cString: strerror(e))) (errno \(e))"
        case .diskFull(let path): "no space left on the device of \(path): nothing more is durable until space returns"
        case .corrupt(let path, let offset, let sequence, let why):
            "\(path): corrupt record at offset \(offset) (sequence \(sequence)): \(why)"
        case .badSegment(let path, let why): "\(path) is not a valid journal segment: \(why)"
        case .tooLarge(let n): "a record of \(n) bytes is above the \(JournalLayout.maxPayload)-byte limit"
        }
    }
}

public struct JournalConfig: Sendable {
    public var directory: String
    public var shard: Int
    /// Bytes per segment file, preallocated.
    public var segmentSize: Int
    /// Bytes of records one batch may hold (two such buffers: one filling, one in flight).
    public var bufferSize: Int

    public init(directory: String, shard: Int, segmentSize: Int = 64 << 20, bufferSize: Int = 4 << 20) {
        self.directory = directory
        self.shard = shard
        self.segmentSize = segmentSize
        self.bufferSize = bufferSize
    }
}

/// Appends records and makes them durable in group commits. Single-threaded: the shard's.
/// `append` copies into the filling buffer; `poll` submits it when no batch is in flight and
/// reaps completions without blocking; `durable` is the highest sequence on disk.
public final class JournalWriter {
    public let config: JournalConfig
    public private(set) var durable: UInt64
    /// Set when the disk refuses: nothing more becomes durable until `retry` succeeds.
    public private(set) var failure: JournalError?
    /// Batches made durable, and their bytes (for the mean batch size).
    public private(set) var durableBatches: UInt64 = 0
    public private(set) var durableBytes: UInt64 = 0
    /// Where to count each group commit's latency (write + fdatasync, submission to
    /// completion): a histogram of CB_HISTOGRAM_WORDS words, or nil.
    public var syncHistogram: UnsafeMutablePointer<UInt64>?
    /// Where to count the records of each group commit (a count histogram), or nil.
    public var batchHistogram: UnsafeMutablePointer<UInt64>?
    private var submittedAt: UInt64 = 0

    private let ring: OpaquePointer
    private var buffers: [UnsafeMutableRawPointer]
    private var filling = 0
    private var fillLength = 0
    private var fillLastSequence: UInt64 = 0
    /// The batch in flight: its buffer, offset, length, last sequence, and what completed.
    private var inFlight: (buffer: Int, offset: Int, length: Int, last: UInt64, wrote: Bool, synced: Bool)?
    private var fd: Int32 = -1
    private var segmentPath = ""
    /// Where the next batch goes in the current segment.
    private var writeOffset = 0
    private var nextSequence: UInt64
    private var batchTag: UInt64 = 0

    /// Opens the journal to append after `lastSequence` (0 for a new journal), continuing the
    /// last segment at `appendOffset` if given (what a recovery scan found), else a new segment.
    public init(config: JournalConfig, lastSequence: UInt64, resume: (path: String, offset: Int)? = nil) throws(JournalError) {
        self.config = config
        durable = lastSequence
        nextSequence = lastSequence + 1
        var error: Int32 = 0
        guard let ring = cb_uring_create(64, &error) else {
            throw .system(call: "io_uring_queue_init", path: config.directory, errno: error)
        }
        self.ring = ring
        buffers = (0..<2).map { _ in
            let p = UnsafeMutableRawPointer.allocate(byteCount: config.bufferSize, alignment: 4096)
            p.initializeMemory(as: UInt8.self, repeating: 0, count: config.bufferSize)
            return p
        }
        if let resume {
            let fd = open(resume.path, O_RDWR | O_CLOEXEC)
            guard fd >= 0 else { throw .system(call: "open", path: resume.path, errno: errno) }
            self.fd = fd
            segmentPath = resume.path
            writeOffset = resume.offset
        } else {
            try openSegment(firstSequence: nextSequence)
        }
    }

    deinit {
        cb_uring_destroy(ring)
        if fd >= 0 { close(fd) }
        for b in buffers { b.deallocate() }
    }

    /// The sequence the next record must carry.
    public var expectedSequence: UInt64 { nextSequence }

    /// Copies a record into the filling buffer. False when it has no room (call `poll` and try
    /// again: that is back-pressure from the disk).
    public func append(type: UInt16, sequence: UInt64, payload: UnsafeRawBufferPointer) throws(JournalError) -> Bool {
        guard payload.count > 0, payload.count <= JournalLayout.maxPayload else { throw .tooLarge(payload.count) }
        precondition(sequence == nextSequence, "journal sequence \(sequence), expected \(nextSequence)")
        let size = JournalLayout.recordSize(payload: payload.count)
        guard size <= config.bufferSize, size <= config.segmentSize - JournalLayout.segmentHeaderSize else {
            throw .tooLarge(payload.count)
        }
        if fillLength + size > config.bufferSize { return false }
        // The record must fit in the current segment after everything queued before it.
        let queued = (inFlight.map { $0.offset + $0.length } ?? writeOffset) + fillLength
        if queued + size > config.segmentSize {
            // Roll over once what is queued is on disk.
            if inFlight != nil || fillLength > 0 { return false }
            try openSegment(firstSequence: sequence)
        }
        let p = buffers[filling] + fillLength
        p.storeBytes(of: UInt32(payload.count).littleEndian, toByteOffset: 0, as: UInt32.self)
        p.storeBytes(of: type.littleEndian, toByteOffset: 4, as: UInt16.self)
        p.storeBytes(of: UInt16(0), toByteOffset: 6, as: UInt16.self)
        p.storeBytes(of: sequence.littleEndian, toByteOffset: 8, as: UInt64.self)
        p.storeBytes(of: UInt64(0), toByteOffset: 16, as: UInt64.self)
        (p + JournalLayout.recordHeaderSize).copyMemory(from: payload.baseAddress!, byteCount: payload.count)
        let pad = size - JournalLayout.recordHeaderSize - payload.count
        if pad > 0 { (p + JournalLayout.recordHeaderSize + payload.count).initializeMemory(as: UInt8.self, repeating: 0, count: pad) }
        var crc = cb_crc32c(0, p, 16)
        crc = cb_crc32c(crc, p + JournalLayout.recordHeaderSize, payload.count)
        p.storeBytes(of: crc.littleEndian, toByteOffset: 16, as: UInt32.self)
        fillLength += size
        fillLastSequence = sequence
        nextSequence = sequence + 1
        return true
    }

    /// Submits the filling buffer if no batch is in flight, and reaps completions. Returns the
    /// durable watermark. Never blocks.
    @discardableResult
    public func poll() -> UInt64 {
        reap()
        if inFlight == nil && fillLength > 0 && failure == nil { submit() }
        return durable
    }

    /// After a failure: tries again what failed (space may have returned). A failed batch is
    /// submitted again (its outcome shows in `poll`); a segment that could not be allocated is
    /// allocated again, and the failure stays until that works.
    public func retry() {
        guard failure != nil else { return }
        if let batch = inFlight, !batch.wrote || !batch.synced {
            failure = nil
            inFlight = nil
            resubmit(batch)
        } else if inFlight == nil && fillLength == 0, case .diskFull = failure {
            failure = nil
            do { try openSegment(firstSequence: nextSequence) } catch {}  // failure is set again if not
        } else if inFlight == nil && fillLength > 0 {
            failure = nil
            submit()
        }
    }

    /// Blocks until everything appended is durable or the disk fails (shutdown, tests).
    public func flush() throws(JournalError) {
        while true {
            poll()
            if let failure { throw failure }
            if inFlight == nil && fillLength == 0 { return }
            var tag: UInt64 = 0, result: Int32 = 0
            if cb_uring_wait(ring, &tag, &result) == 1 { complete(tag: tag, result: result) }
        }
    }

    private func submit() {
        let batch = (buffer: filling, offset: writeOffset, length: fillLength, last: fillLastSequence, wrote: false, synced: false)
        writeOffset += fillLength
        filling ^= 1
        fillLength = 0
        resubmit(batch)
    }

    private func resubmit(_ batch: (buffer: Int, offset: Int, length: Int, last: UInt64, wrote: Bool, synced: Bool)) {
        batchTag += 1
        let rc = cb_uring_write_and_sync(ring, fd, buffers[batch.buffer], UInt32(batch.length), UInt64(batch.offset),
                                         batchTag << 1)
        inFlight = (batch.buffer, batch.offset, batch.length, batch.last, false, false)
        if syncHistogram != nil { submittedAt = monotonicNanoseconds() }
        if rc < 0 { failure = .system(call: "io_uring_submit", path: segmentPath, errno: -rc) }
    }

    private func reap() {
        var tag: UInt64 = 0, result: Int32 = 0
        while cb_uring_reap(ring, &tag, &result) == 1 { complete(tag: tag, result: result) }
    }

    private func complete(tag: UInt64, result: Int32) {
        guard let batch = inFlight, (tag & ~(1 << 63)) >> 1 == batchTag else { return }  // a stale retry's
        let isSync = tag & (1 << 63) != 0
        if result < 0 {
            if result == -ECANCELED { return }  // the sync of a failed write: the write says why
            failure = result == -ENOSPC ? .diskFull(path: segmentPath)
                : .system(call: isSync ? "fdatasync" : "write", path: segmentPath, errno: -result)
            return
        }
        if !isSync && Int(result) != batch.length {
            failure = .system(call: "write (short: \(result) of \(batch.length) bytes)", path: segmentPath, errno: EIO)
            return
        }
        if isSync { inFlight?.synced = true } else { inFlight?.wrote = true }
        if let done = inFlight, done.wrote && done.synced {
            if let batchHistogram { cb_histogram_record_count(batchHistogram, done.last &- durable) }
            durable = done.last
            durableBatches += 1
            durableBytes += UInt64(done.length)
            if let syncHistogram { cb_histogram_record(syncHistogram, monotonicNanoseconds() &- submittedAt) }
            // The buffer is free again: zero it so the next batch's padding is clean.
            buffers[done.buffer].initializeMemory(as: UInt8.self, repeating: 0, count: done.length)
            inFlight = nil
        }
    }

    private func openSegment(firstSequence: UInt64) throws(JournalError) {
        let path = config.directory + "/" + JournalLayout.segmentName(shard: config.shard, firstSequence: firstSequence)
        let newFd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        guard newFd >= 0 else { throw .system(call: "open", path: path, errno: errno) }
        let rc = cb_fallocate(newFd, 0, UInt64(config.segmentSize))
        if rc != 0 {
            close(newFd)
            unlink(path)
            failure = rc == ENOSPC ? .diskFull(path: path) : .system(call: "fallocate", path: path, errno: rc)
            throw failure!
        }
        var header = [UInt8](repeating: 0, count: JournalLayout.segmentHeaderSize)
        header.withUnsafeMutableBytes { h in
            h.storeBytes(of: JournalLayout.magic, toByteOffset: 0, as: UInt64.self)
            h.storeBytes(of: JournalLayout.version.littleEndian, toByteOffset: 8, as: UInt32.self)
            h.storeBytes(of: UInt32(config.shard).littleEndian, toByteOffset: 12, as: UInt32.self)
            h.storeBytes(of: firstSequence.littleEndian, toByteOffset: 16, as: UInt64.self)
            h.storeBytes(of: UInt64(config.segmentSize).littleEndian, toByteOffset: 24, as: UInt64.self)
        }
        guard pwrite(newFd, header, header.count, 0) == header.count, fdatasync(newFd) == 0 else {
            let e = errno
            close(newFd)
            unlink(path)
            throw .system(call: "pwrite", path: path, errno: e)
        }
        // The directory entry must be durable too, or a crash could lose the whole segment.
        let dirFd = open(config.directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if dirFd >= 0 {
            fsync(dirFd)
            close(dirFd)
        }
        if fd >= 0 { close(fd) }
        fd = newFd
        segmentPath = path
        writeOffset = JournalLayout.segmentHeaderSize
    }

    /// Opens the next segment after a failure at rollover (space may have returned).
    public func retryRollover() throws(JournalError) {
        retry()
        if let failure { throw failure }
    }
}

/// What a recovery scan found.
public struct JournalScan: Equatable, Sendable {
    public var records = 0
    public var firstSequence: UInt64 = 0
    public var lastSequence: UInt64 = 0
    /// Where appending continues: the last segment and the offset after its last good record.
    public var appendPath: String?
    public var appendOffset = 0
    /// A torn last record that was cut off: the file and the offset it started at.
    public var truncated: (path: String, offset: Int)?

    public static func == (a: JournalScan, b: JournalScan) -> Bool {
        a.records == b.records && a.firstSequence == b.firstSequence && a.lastSequence == b.lastSequence
            && a.appendPath == b.appendPath && a.appendOffset == b.appendOffset
            && a.truncated?.path == b.truncated?.path && a.truncated?.offset == b.truncated?.offset
    }
}

public enum JournalReader {
    /// The shard's segment files, in sequence order.
    public static func segments(directory: String, shard: Int) -> [String] {
        guard let dir = opendir(directory) else { return [] }
        defer { closedir(dir) }
        var names: [String] = []
        let prefix = "journal-\(shard)-"
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: &entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            if name.hasPrefix(prefix) && name.hasSuffix(".seg") { names.append(name) }
        }
        return names.sorted().map { directory + "/" + $0 }
    }

    /// Reads every record in order, checking framing, CRC and that sequences follow each other.
    /// A bad record at the very end of the last segment (followed only by zeros) is a torn
    /// write: with `repair`, it is zeroed and synced, and the scan says so. A bad record
    /// anywhere else stops the scan with an error naming the file, the offset and the sequence.
    ///
    /// `after`: records up to this sequence are checked but not visited, and segments that end
    /// before it are skipped (recovery from a snapshot at that sequence).
    public static func scan(directory: String, shard: Int, repair: Bool, after: UInt64 = 0,
                            visit: (UInt16, UInt64, UnsafeRawBufferPointer) -> Void) throws(JournalError) -> JournalScan {
        var result = JournalScan()
        var files = segments(directory: directory, shard: shard)
        // A segment is wholly at or below `after` if the next one starts at or below after + 1.
        while files.count > 1, let next = firstSequence(of: files[1]), next <= after + 1 { files.removeFirst() }
        var expected: UInt64 = 0
        for (index, path) in files.enumerated() {
            let isLast = index == files.count - 1
            let fd = open(path, O_RDWR | O_CLOEXEC)
            guard fd >= 0 else { throw .system(call: "open", path: path, errno: errno) }
            defer { close(fd) }
            var info = stat()
            fstat(fd, &info)
            let size = Int(info.st_size)
            guard size >= JournalLayout.segmentHeaderSize,
                  let map = mmap(nil, size, PROT_READ, MAP_SHARED, fd, 0), map != MAP_FAILED else {
                throw .badSegment(path: path, "too small or unreadable")
            }
            defer { munmap(map, size) }
            let base = UnsafeRawPointer(map)
            guard base.load(as: UInt64.self) == JournalLayout.magic,
                  UInt32(littleEndian: base.load(fromByteOffset: 8, as: UInt32.self)) == JournalLayout.version,
                  UInt32(littleEndian: base.load(fromByteOffset: 12, as: UInt32.self)) == UInt32(shard)
            else { throw .badSegment(path: path, "wrong magic, version or shard") }
            let first = UInt64(littleEndian: base.load(fromByteOffset: 16, as: UInt64.self))
            if expected == 0 { expected = first; result.firstSequence = first }
            guard first == expected else {
                throw .corrupt(path: path, offset: 0, sequence: expected, "segment starts at sequence \(first)")
            }
            var offset = JournalLayout.segmentHeaderSize
            while offset + JournalLayout.recordHeaderSize <= size {
                let length = Int(UInt32(littleEndian: base.load(fromByteOffset: offset, as: UInt32.self)))
                if length == 0 && isZero(base + offset, JournalLayout.recordHeaderSize) { break }  // the end
                let problem: String? = {
                    guard length > 0, length <= JournalLayout.maxPayload,
                          offset + JournalLayout.recordSize(payload: length) <= size else { return "length \(length) does not fit" }
                    let seq = UInt64(littleEndian: base.load(fromByteOffset: offset + 8, as: UInt64.self))
                    var crc = cb_crc32c(0, base + offset, 16)
                    crc = cb_crc32c(crc, base + offset + JournalLayout.recordHeaderSize, length)
                    if crc != UInt32(littleEndian: base.load(fromByteOffset: offset + 16, as: UInt32.self)) { return "CRC mismatch" }
                    if seq != expected { return "sequence \(seq) where \(expected) was expected" }
                    return nil
                }()
                if let problem {
                    let end = min(size, offset + max(JournalLayout.recordHeaderSize, JournalLayout.recordSize(payload: min(length, JournalLayout.maxPayload))))
                    let onlyZerosAfter = isZero(base + end, size - end)
                    guard isLast && onlyZerosAfter else {
                        throw .corrupt(path: path, offset: offset, sequence: expected, problem)
                    }
                    if repair {
                        let zeros = [UInt8](repeating: 0, count: end - offset)
                        guard pwrite(fd, zeros, zeros.count, off_t(offset)) == zeros.count, fdatasync(fd) == 0 else {
                            throw .system(call: "pwrite", path: path, errno: errno)
                        }
                    }
                    result.truncated = (path, offset)
                    break
                }
                let type = UInt16(littleEndian: base.load(fromByteOffset: offset + 4, as: UInt16.self))
                if expected > after {
                    visit(type, expected, UnsafeRawBufferPointer(start: base + offset + JournalLayout.recordHeaderSize, count: length))
                }
                result.records += 1
                result.lastSequence = expected
                expected += 1
                offset += JournalLayout.recordSize(payload: length)
            }
            if isLast {
                result.appendPath = path
                result.appendOffset = offset
            }
        }
        return result
    }

    /// The first sequence of a segment, from its name.
    static func firstSequence(of path: String) -> UInt64? {
        guard let dash = path.lastIndex(of: "-"), let dot = path.lastIndex(of: ".") else { return nil }
        return UInt64(path[path.index(after: dash)..<dot])
    }

    static func isZero(_ p: UnsafeRawPointer, _ count: Int) -> Bool {
        var i = 0
        while i + 8 <= count {
            if p.loadUnaligned(fromByteOffset: i, as: UInt64.self) != 0 { return false }
            i += 8
        }
        while i < count {
            if p.load(fromByteOffset: i, as: UInt8.self) != 0 { return false }
            i += 1
        }
        return true
    }
}
