// The journal of one shard: sequenced records in preallocated segment files, written by
// io_uring in group commits (one write and a linked fdatasync per batch), and read back by a
// recovery scan that checks every record's CRC32C and every batch's checksum.
//
// Segment file `journal-<shard>-<first sequence, 20 digits>.seg`, preallocated to the segment
// size (fallocate), so a full disk shows when a segment is opened, not in the middle of one:
//   0   magic "CBJRNL01" (u64), version (u32, 2), shard (u32), first sequence (u64),
//       segment size (u64), journal id (u64: random, the same in every segment of a journal),
//       chain (u32: the checksum of the last batch before this segment, 0 for the first),
//       20 bytes reserved
//   64  batches, one per group commit, each 8-byte aligned records:
//         a batch header record (type 0xB47C, sequence = the batch's first sequence), payload:
//           0 last sequence (u64), 8 batch bytes including this header (u32),
//           12 checksum (u32), 16 previous batch's checksum (u32), 20 reserved (u32, 0),
//           24 journal id (u64)
//         then the batch's records, each:
//           0 payload length (u32, > 0), 4 type (u16), 6 reserved (u16, 0), 8 sequence (u64),
//           16 CRC32C of bytes 0..<16 and the payload (u32), 20 reserved (u32, 0), 24 payload,
//           then zeros up to a multiple of 8
//       The checksum is CRC32C over the records' CRCs in order, seeded with the previous
//       batch's checksum: batches are chained, across segments too.
//   The unwritten rest of a segment is zeros: a zero record header ends the segment's batches.
//   Record types the engine writes: 1 a command (80 bytes: Engine/Shard/JournalFeed.swift),
//   2 a sequenced admin command (the engine time, then Wire/AdminRecord.swift).
//
// Recovery tells a torn last batch from corruption. Only one batch is ever in flight and a
// batch is acknowledged only once its write and fdatasync completed, so damage confined to the
// last batch of the last segment, with nothing valid after it, is a torn write of a batch that
// was never acknowledged: it is cut, and everything after the cut is zeroed and synced, so no
// stale byte can be read as a record again. Damage followed by a valid later batch (found by
// its header, which carries the journal id, at any 8-byte offset) is corruption: the scan stops
// naming file, offset and sequence. Version 1 segments (records without batches) still read.

import CCRC32C
import CSync
import CUring
import Glibc
import SharedMemory
import SystemPackage

public enum JournalLayout {
    public static let version: UInt32 = 2
    public static let segmentHeaderSize = 64
    public static let recordHeaderSize = 24
    public static let maxPayload = 1 << 20
    /// The record type of a batch header (never a command's type).
    public static let batchType: UInt16 = 0xB47C
    public static let batchPayload = 32
    public static let batchHeaderSize = recordSize(payload: batchPayload)

    /// "CBJRNL01" as it lies in the file.
    public static let magic: UInt64 = UInt64(littleEndian: 0x3130_4C4E_524A_4243)

    @inline(__always)
    public static func recordSize(payload: Int) -> Int { (recordHeaderSize + payload + 7) & ~7 }

    /// The next segment made ahead of time (JournalConfig.prezero): not a segment (the readers
    /// list `journal-<shard>-*.seg` only); removed or replaced whenever the journal opens.
    public static func spareName(shard: Int) -> String { "journal-\(shard).spare" }

    public static func segmentName(shard: Int, firstSequence: UInt64) -> String {
        let digits = String(firstSequence)
        return "journal-\(shard)-" + String(repeating: "0", count: max(0, 20 - digits.count)) + digits + ".seg"
    }
}

/// A system call through `SystemCall` (EINTR retried), its failure as this layer's error.
@inline(__always) @discardableResult
func journalCall(_ call: String, _ path: String, _ body: () -> Int32) throws(JournalError) -> Int32 {
    do { return try SystemCall.run(call, path, body) } catch { throw .system(error) }
}

@inline(__always) @discardableResult
func journalCall(_ call: String, _ path: String, _ body: () -> Int) throws(JournalError) -> Int {
    do { return try SystemCall.run(call, path, body) } catch { throw .system(error) }
}

public enum JournalError: Error, Equatable, CustomStringConvertible {
    /// A system call failed: which, on what, and its errno.
    case system(SystemCallError)
    case diskFull(path: String)
    /// A snapshot-store plugin refused: its status and its own message.
    case snapshotStore(plugin: String, status: String, message: String)
    case corrupt(path: String, offset: Int, sequence: UInt64, String)
    case badSegment(path: String, String)
    case tooLarge(Int)
    /// The scan was asked to stop (the engine is stopping during recovery).
    case interrupted(sequence: UInt64)

    public var description: String {
        switch self {
        case .system(let failure): failure.description
        case .snapshotStore(let plugin, let status, let message): "snapshot store \(plugin): \(status): \(message)"
        case .diskFull(let path): "no space left on the device of \(path): nothing more is durable until space returns"
        case .corrupt(let path, let offset, let sequence, let why):
            "\(path): corrupt record at offset \(offset) (sequence \(sequence)): \(why)"
        case .badSegment(let path, let why): "\(path) is not a valid journal segment: \(why)"
        case .tooLarge(let n): "a record of \(n) bytes is above the \(JournalLayout.maxPayload)-byte limit"
        case .interrupted(let sequence): "stopped at sequence \(sequence), as asked"
        }
    }
}

/// Where a writer continues a journal that a scan read: the last segment, the offset after its
/// last good batch, the journal's id and the checksum the next batch chains to.
public struct JournalResume: Equatable, Sendable {
    public var path: String?
    public var offset: Int
    public var journalId: UInt64
    public var chain: UInt32

    public init(path: String?, offset: Int, journalId: UInt64, chain: UInt32) {
        self.path = path
        self.offset = offset
        self.journalId = journalId
        self.chain = chain
    }
}

public struct JournalConfig: Sendable {
    public var directory: String
    public var shard: Int
    /// Bytes per segment file, preallocated.
    public var segmentSize: Int
    /// Bytes of records one batch may hold (two such buffers: one filling, one in flight).
    public var bufferSize: Int
    /// The CPUs the ring's kernel workers (the writes and fdatasyncs) may run on; empty: the
    /// kernel's default, which is the submitting thread's affinity (a pinned shard's own core).
    public var ioCores: [Int32] = []
    /// Segments older than every kept snapshot are removed after each snapshot is stored
    /// (`JournalReader.prune`); false keeps them all.
    public var prune = false
    /// Each next segment is made ahead of time by a thread of its own, every byte written with
    /// zeros and synced (`cb_spare_start`), and renamed in at rollover: records then land on
    /// written blocks, and each fdatasync flushes data without converting the blocks from
    /// "unwritten" (what fallocate leaves) to written. False (the default): fallocate at
    /// rollover. The first segment of a new journal is always fallocated.
    public var prezero = false

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
///
/// A failing disk (a write, an fdatasync, a segment that cannot be created or whose directory
/// entry cannot be made durable) sets `failure`, and it stays set until what failed has been
/// done again and worked: a batch is written again whole (after a failed writeback Linux may
/// have dropped its pages), a segment is created again. Meanwhile nothing becomes durable, so
/// nothing more is acknowledged, and the shard takes no command.
///
/// One thread owns a writer (a shard's) and reads, per command and per pass, how far it is
/// durable and whether it fails. Those words live in memory of their own (`progress`), not in
/// class properties: a read of a class property pays a dynamic exclusivity check (a call to
/// swift_beginAccess) on the shard's order path; a read through a pointer does not.
public final class JournalWriter {
    /// What the owning thread reads on its order path.
    public struct Progress {
        public var durable: UInt64 = 0
        /// The highest sequence whose write has completed (in the file, maybe not yet on disk):
        /// what a standby may be sent ahead of the fdatasync (JournalTail).
        public var written: UInt64 = 0
        /// `failure != nil`.
        public var failing = false
        public var failureCount: UInt64 = 0
        public var durableBatches: UInt64 = 0
        public var durableBytes: UInt64 = 0
    }
    @usableFromInline let progress: UnsafeMutablePointer<Progress>

    public let config: JournalConfig
    /// The highest sequence on disk.
    @inlinable public var durable: UInt64 { progress.pointee.durable }
    @inlinable public var written: UInt64 { progress.pointee.written }
    /// Set when the disk refuses: nothing more becomes durable until `retry` has made it work.
    public private(set) var failure: JournalError? {
        didSet { progress.pointee.failing = failure != nil }
    }
    /// `failure != nil`, without the cost of reading `failure`.
    @inlinable public var failing: Bool { progress.pointee.failing }
    /// Every failed attempt (write, fdatasync, segment creation, directory sync), for the counters.
    @inlinable public var failureCount: UInt64 { progress.pointee.failureCount }
    /// Batches made durable, and their bytes (for the mean batch size).
    @inlinable public var durableBatches: UInt64 { progress.pointee.durableBatches }
    @inlinable public var durableBytes: UInt64 { progress.pointee.durableBytes }
    /// Where to count each group commit's latency (write + fdatasync, submission to completion):
    /// a histogram of CB_HISTOGRAM_WORDS words, or nil.
    public var syncHistogram: UnsafeMutablePointer<UInt64>?
    /// Where to count the records of each group commit (a count histogram), or nil.
    public var batchHistogram: UnsafeMutablePointer<UInt64>?
    private var submittedAt: UInt64 = 0

    /// The journal's identity, written in every segment and batch header.
    public let journalId: UInt64
    /// The checksum of the last batch submitted: the next batch chains to it.
    private var chain: UInt32
    /// The CRC32C of the last record appended: with `journalId`, what binds a snapshot taken
    /// at that record's sequence to this journal.
    public private(set) var lastRecordCRC: UInt32 = 0

    private let ring: OpaquePointer
    private var buffers: [UnsafeMutableRawPointer]
    private var filling = 0
    /// Bytes in the filling buffer, its batch header included (0: no batch started).
    private var fillLength = 0
    private var fillFirstSequence: UInt64 = 0
    private var fillLastSequence: UInt64 = 0
    private var fillChecksum: UInt32 = 0
    /// The batch in flight: its buffer, offset, length, last sequence, and what completed.
    private var inFlight: (buffer: Int, offset: Int, length: Int, last: UInt64, wrote: Bool, synced: Bool)?
    /// A failed batch was submitted again and has not completed yet.
    private var retrying = false
    /// A segment that could not be created (or made durable): its first sequence.
    private var pendingSegment: UInt64?
    private var fd: Int32 = -1
    private var segmentPath = ""
    /// Where the next batch goes in the current segment.
    private var writeOffset = 0
    private var nextSequence: UInt64
    private var batchTag: UInt64 = 0
    /// The next segment being made (config.prezero), and how many segments came from one.
    private var spare: OpaquePointer?
    public private(set) var segmentsFromSpares = 0
    /// The next segment is made and synced (config.prezero).
    public var spareReady: Bool { spare.map { cb_spare_state($0, nil) == 1 } ?? false }

    /// Opens the journal to append after `lastSequence` (0 for a new journal), continuing the
    /// last segment where a recovery scan says (`JournalScan.resume`), else in a new segment.
    public init(config: JournalConfig, lastSequence: UInt64, resume: JournalResume? = nil) throws(JournalError) {
        self.config = config
        progress = .allocate(capacity: 1)
        progress.initialize(to: Progress(durable: lastSequence, written: lastSequence))
        nextSequence = lastSequence + 1
        journalId = resume?.journalId ?? UInt64.random(in: 1...UInt64.max)
        chain = resume?.chain ?? 0
        var error: Int32 = 0
        guard let ring = cb_uring_create(64, &error) else {
            throw .system(SystemCallError("io_uring_queue_init", config.directory, errno: error))
        }
        if !config.ioCores.isEmpty {
            let rc = config.ioCores.withUnsafeBufferPointer { cb_uring_set_worker_cpus(ring, $0.baseAddress, UInt32($0.count)) }
            if rc != 0 {
                cb_uring_destroy(ring)
                progress.deallocate()
                throw .system(SystemCallError("io_uring_register_iowq_aff (cores \(config.ioCores.map(String.init).joined(separator: ",")))",
                                              config.directory, errno: -rc))
            }
        }
        self.ring = ring
        buffers = (0..<2).map { _ in
            let p = UnsafeMutableRawPointer.allocate(byteCount: config.bufferSize, alignment: 4096)
            p.initializeMemory(as: UInt8.self, repeating: 0, count: config.bufferSize)
            return p
        }
        if let resume, let path = resume.path {
            let fd = try journalCall("open", path) { open(path, O_RDWR | O_CLOEXEC) }
            self.fd = fd
            segmentPath = path
            writeOffset = resume.offset
        } else {
            try openSegment(firstSequence: nextSequence)
        }
        if spare == nil { prepareSpare() }
    }

    /// Starts making the next segment (config.prezero), replacing any spare left on disk.
    private func prepareSpare() {
        guard config.prezero else { return }
        if let spare { cb_spare_free(spare) }
        let path = config.directory + "/" + JournalLayout.spareName(shard: config.shard)
        spare = config.ioCores.withUnsafeBufferPointer { cb_spare_start(path, UInt64(config.segmentSize), $0.baseAddress, UInt32($0.count)) }
    }

    deinit {
        if let spare { cb_spare_free(spare) }
        progress.deallocate()
        cb_uring_destroy(ring)
        if fd >= 0 { close(fd) }
        for b in buffers { b.deallocate() }
    }

    /// The sequence the next record must carry.
    public var expectedSequence: UInt64 { nextSequence }

    /// Copies a record into the filling buffer. False when it has no room (call `poll` and try
    /// again: that is back-pressure from the disk) or the journal is failing.
    public func append(type: UInt16, sequence: UInt64, payload: UnsafeRawBufferPointer) throws(JournalError) -> Bool {
        try append(type: type, sequence: sequence, payload: payload, then: UnsafeRawBufferPointer(start: nil, count: 0))
    }

    /// The same, for a payload in two parts (`payload` then `more`), copied once into the batch.
    public func append(type: UInt16, sequence: UInt64, payload first: UnsafeRawBufferPointer,
                       then more: UnsafeRawBufferPointer) throws(JournalError) -> Bool {
        let count = first.count + more.count
        guard count > 0, count <= JournalLayout.maxPayload, type != JournalLayout.batchType else {
            throw .tooLarge(count)
        }
        precondition(sequence == nextSequence, "journal sequence \(sequence), expected \(nextSequence)")
        let size = JournalLayout.recordSize(payload: count)
        let header = fillLength == 0 ? JournalLayout.batchHeaderSize : 0
        guard header + size <= config.bufferSize,
              JournalLayout.batchHeaderSize + size <= config.segmentSize - JournalLayout.segmentHeaderSize else {
            throw .tooLarge(count)
        }
        if failure != nil { return false }
        if fillLength + header + size > config.bufferSize { return false }
        // The record must fit in the current segment after everything queued before it.
        let queued = (inFlight.map { $0.offset + $0.length } ?? writeOffset) + fillLength
        if queued + header + size > config.segmentSize {
            // Roll over once what is queued is on disk.
            if inFlight != nil || fillLength > 0 { return false }
            try openSegment(firstSequence: sequence)
        }
        if fillLength == 0 {
            fillLength = JournalLayout.batchHeaderSize
            fillFirstSequence = sequence
            fillChecksum = chain
        }
        let p = buffers[filling] + fillLength
        p.storeBytes(of: UInt32(count).littleEndian, toByteOffset: 0, as: UInt32.self)
        p.storeBytes(of: type.littleEndian, toByteOffset: 4, as: UInt16.self)
        p.storeBytes(of: UInt16(0), toByteOffset: 6, as: UInt16.self)
        p.storeBytes(of: sequence.littleEndian, toByteOffset: 8, as: UInt64.self)
        p.storeBytes(of: UInt64(0), toByteOffset: 16, as: UInt64.self)
        if first.count > 0 { (p + JournalLayout.recordHeaderSize).copyMemory(from: first.baseAddress!, byteCount: first.count) }
        if more.count > 0 { (p + JournalLayout.recordHeaderSize + first.count).copyMemory(from: more.baseAddress!, byteCount: more.count) }
        let pad = size - JournalLayout.recordHeaderSize - count
        if pad > 0 { (p + JournalLayout.recordHeaderSize + count).initializeMemory(as: UInt8.self, repeating: 0, count: pad) }
        var crc = cb_crc32c(0, p, 16)
        crc = cb_crc32c(crc, p + JournalLayout.recordHeaderSize, count)
        p.storeBytes(of: crc.littleEndian, toByteOffset: 16, as: UInt32.self)
        fillChecksum = cb_crc32c(fillChecksum, p + 16, 4)
        lastRecordCRC = crc
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

    /// Whether a batch is on its way to disk (its completion is what a caller would wait for).
    public var hasInFlight: Bool { inFlight != nil }

    /// Sleeps in the kernel until the batch in flight completes or `timeoutNanoseconds` pass,
    /// then reaps: the thread gives its core to the kernel worker doing the write and fdatasync
    /// instead of spinning against it. Returns the durable watermark.
    @discardableResult
    public func waitForCompletion(timeoutNanoseconds: UInt64) -> UInt64 {
        if inFlight != nil { _ = cb_uring_wait_timeout(ring, timeoutNanoseconds) }
        return poll()
    }

    /// After a failure: does again what failed (the disk may work again, space may have
    /// returned). A failed batch is written again whole; a segment that could not be created is
    /// created again. `failure` stays set until that has completed and worked, so a caller that
    /// waits while `failure != nil` waits for the disk, not for the retry to be submitted.
    public func retry() {
        guard failure != nil else { return }
        if retrying {
            reap()
        } else if let batch = inFlight {
            retrying = true
            resubmit(batch)
        } else if let first = pendingSegment {
            do {
                try openSegment(firstSequence: first)
                failure = nil
            } catch {}  // failure and pendingSegment stay
        } else {
            failure = nil
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

    private func fail(_ error: JournalError) {
        failure = error
        progress.pointee.failureCount += 1
    }

    private func submit() {
        // The batch header, now that the batch is complete: its range, size and checksums.
        let h = buffers[filling]
        h.storeBytes(of: UInt32(JournalLayout.batchPayload).littleEndian, toByteOffset: 0, as: UInt32.self)
        h.storeBytes(of: JournalLayout.batchType.littleEndian, toByteOffset: 4, as: UInt16.self)
        h.storeBytes(of: UInt16(0), toByteOffset: 6, as: UInt16.self)
        h.storeBytes(of: fillFirstSequence.littleEndian, toByteOffset: 8, as: UInt64.self)
        h.storeBytes(of: UInt64(0), toByteOffset: 16, as: UInt64.self)
        let b = h + JournalLayout.recordHeaderSize
        b.storeBytes(of: fillLastSequence.littleEndian, toByteOffset: 0, as: UInt64.self)
        b.storeBytes(of: UInt32(fillLength).littleEndian, toByteOffset: 8, as: UInt32.self)
        b.storeBytes(of: fillChecksum.littleEndian, toByteOffset: 12, as: UInt32.self)
        b.storeBytes(of: chain.littleEndian, toByteOffset: 16, as: UInt32.self)
        b.storeBytes(of: UInt32(0), toByteOffset: 20, as: UInt32.self)
        b.storeBytes(of: journalId.littleEndian, toByteOffset: 24, as: UInt64.self)
        var crc = cb_crc32c(0, h, 16)
        crc = cb_crc32c(crc, b, JournalLayout.batchPayload)
        h.storeBytes(of: crc.littleEndian, toByteOffset: 16, as: UInt32.self)
        chain = fillChecksum
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
        if rc < 0 {
            retrying = false
            fail(.system(SystemCallError("io_uring_submit", segmentPath, errno: -rc)))
        }
    }

    /// The completion tag of a doorbell wait (batch tags are even, their syncs have bit 63).
    static let doorbellTag: UInt64 = 1
    /// A doorbell wait is queued on the ring and has not completed.
    private var doorbellArmed = false
    /// False once the kernel refused a doorbell wait (before 6.7): never asked again.
    public private(set) var doorbellWaitWorks = true

    /// Queues a futex wait on a shard's doorbell word (unless one is queued already), so that
    /// `waitForCompletion` wakes on a doorbell too, not only on the disk. A queued wait that
    /// completes later is reaped and ignored. Returns false when the kernel cannot.
    @discardableResult
    public func armDoorbell(_ word: UnsafeMutablePointer<UInt32>, expected: UInt32) -> Bool {
        guard doorbellWaitWorks else { return false }
        if doorbellArmed { return true }
        let rc = cb_uring_futex_wait(ring, word, expected, Self.doorbellTag)
        if rc != 0 { doorbellWaitWorks = false; return false }
        doorbellArmed = true
        return true
    }

    private func reap() {
        var tag: UInt64 = 0, result: Int32 = 0
        while cb_uring_reap(ring, &tag, &result) == 1 { complete(tag: tag, result: result) }
    }

    private func complete(tag: UInt64, result: Int32) {
        if tag == Self.doorbellTag {
            doorbellArmed = false
            if result == -EINVAL || result == -EOPNOTSUPP { doorbellWaitWorks = false }
            return
        }
        guard let batch = inFlight, (tag & ~(1 << 63)) >> 1 == batchTag else { return }  // a stale retry's
        let isSync = tag & (1 << 63) != 0
        if result < 0 {
            if result == -ECANCELED { return }  // the sync of a failed write: the write says why
            retrying = false
            fail(result == -ENOSPC ? .diskFull(path: segmentPath)
                 : .system(SystemCallError(isSync ? "fdatasync" : "write", segmentPath, errno: -result)))
            return
        }
        if !isSync && Int(result) != batch.length {
            retrying = false
            fail(.system(SystemCallError("write (short: \(result) of \(batch.length) bytes)", segmentPath, errno: EIO)))
            return
        }
        if isSync { inFlight?.synced = true } else {
            inFlight?.wrote = true
            progress.pointee.written = max(progress.pointee.written, batch.last)
        }
        if let done = inFlight, done.wrote && done.synced {
            if let batchHistogram { cb_histogram_record_count(batchHistogram, done.last &- durable) }
            progress.pointee.durable = done.last
            progress.pointee.written = max(progress.pointee.written, done.last)
            progress.pointee.durableBatches += 1
            progress.pointee.durableBytes += UInt64(done.length)
            if let syncHistogram { cb_histogram_record(syncHistogram, monotonicNanoseconds() &- submittedAt) }
            // The buffer is free again: zero it so the next batch's padding is clean.
            buffers[done.buffer].initializeMemory(as: UInt8.self, repeating: 0, count: done.length)
            inFlight = nil
            if retrying {
                retrying = false
                failure = nil
            }
        }
    }

    /// Creates, preallocates and syncs the next segment, and makes its name durable (fsync of
    /// the directory). Any failure leaves no file behind, sets `failure`, and is retried by
    /// `retry`: records of this segment are never written before its name is durable.
    private func openSegment(firstSequence: UInt64) throws(JournalError) {
        let path = config.directory + "/" + JournalLayout.segmentName(shard: config.shard, firstSequence: firstSequence)
        func refuse(_ error: JournalError, _ newFd: Int32) throws(JournalError) -> Never {
            if newFd >= 0 { close(newFd) }
            unlink(path)
            pendingSegment = firstSequence
            fail(error)
            throw error
        }
        let create = { () -> Int32 in open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0o600) }
        var newFd: Int32 = -1
        // The spare, if it is complete: zeros on disk, linked in under the segment's name (it
        // must not exist), then opened; else a new file the usual way.
        var fromSpare = false
        if let spare, cb_spare_state(spare, nil) == 1, cb_spare_take(spare, path) == 0 {
            newFd = open(path, O_RDWR | O_CLOEXEC)
            if newFd < 0 { unlink(path) } else { fromSpare = true }
        }
        if !fromSpare {
            do {
                newFd = try SystemCall.run("open", path, create)
            } catch let failure where failure.errno == .fileExists && pendingSegment == firstSequence {
                // Left by an earlier attempt whose removal failed: it holds no record.
                unlink(path)
                do { newFd = try SystemCall.run("open", path, create) } catch { try refuse(.system(error), -1) }
            } catch {
                try refuse(.system(error), -1)
            }
            let rc = cb_fallocate(newFd, 0, UInt64(config.segmentSize))
            if rc != 0 { try refuse(rc == ENOSPC ? .diskFull(path: path) : .system(SystemCallError("fallocate", path, errno: rc)), newFd) }
        }
        var header = [UInt8](repeating: 0, count: JournalLayout.segmentHeaderSize)
        header.withUnsafeMutableBytes { h in
            h.storeBytes(of: JournalLayout.magic, toByteOffset: 0, as: UInt64.self)
            h.storeBytes(of: JournalLayout.version.littleEndian, toByteOffset: 8, as: UInt32.self)
            h.storeBytes(of: UInt32(config.shard).littleEndian, toByteOffset: 12, as: UInt32.self)
            h.storeBytes(of: firstSequence.littleEndian, toByteOffset: 16, as: UInt64.self)
            h.storeBytes(of: UInt64(config.segmentSize).littleEndian, toByteOffset: 24, as: UInt64.self)
            h.storeBytes(of: journalId.littleEndian, toByteOffset: 32, as: UInt64.self)
            h.storeBytes(of: chain.littleEndian, toByteOffset: 40, as: UInt32.self)
        }
        do throws(SystemCallError) {
            let wrote = try SystemCall.run("pwrite", path) { pwrite(newFd, header, header.count, 0) }
            if wrote != header.count { throw SystemCallError("pwrite (short: \(wrote) of \(header.count) bytes)", path, .ioError) }
            try SystemCall.run("fdatasync", path) { fdatasync(newFd) }
        } catch {
            try refuse(.system(error), newFd)
        }
        // The directory entry must be durable too, or a power cut could lose the whole segment
        // with every acknowledged record in it.
        let dirFd: Int32
        do { dirFd = try SystemCall.run("open", config.directory) { open(config.directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC) } } catch {
            try refuse(.system(error), newFd)
        }
        do { try SystemCall.run("fsync (directory)", config.directory) { fsync(dirFd) } } catch {
            close(dirFd)
            try refuse(.system(error), newFd)
        }
        close(dirFd)
        if fd >= 0 { close(fd) }
        fd = newFd
        segmentPath = path
        writeOffset = JournalLayout.segmentHeaderSize
        pendingSegment = nil
        if fromSpare { segmentsFromSpares += 1 }
        // The next one: after this one took it, or after a spare that failed (or that a
        // failed creation of this segment took and lost).
        if config.prezero, spare.map({ cb_spare_state($0, nil) != 0 && cb_spare_state($0, nil) != 1 }) ?? true {
            prepareSpare()
        }
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
    /// Where appending continues: the last segment and the offset after its last good batch.
    public var appendPath: String?
    public var appendOffset = 0
    /// A torn last batch that was cut off: the file and the offset it started at.
    public var truncated: (path: String, offset: Int)?
    /// A last segment whose creation never completed (no header on disk): removed by a repair.
    public var unfinishedSegment: String?
    /// The journal's id and the checksum of its last batch (version 2 segments; nil for a
    /// journal without any).
    public var journalId: UInt64?
    public var chain: UInt32 = 0
    /// The version of the last segment.
    public var lastVersion: UInt32 = 0

    public init() {}

    /// Where a writer continues this journal: in its last segment if that is of the current
    /// version, else in a new segment (same journal id and chain).
    public var resume: JournalResume? {
        guard let journalId else { return nil }
        return JournalResume(path: lastVersion == JournalLayout.version ? appendPath : nil, offset: appendOffset,
                             journalId: journalId, chain: chain)
    }

    public static func == (a: JournalScan, b: JournalScan) -> Bool {
        a.records == b.records && a.firstSequence == b.firstSequence && a.lastSequence == b.lastSequence
            && a.appendPath == b.appendPath && a.appendOffset == b.appendOffset
            && a.truncated?.path == b.truncated?.path && a.truncated?.offset == b.truncated?.offset
            && a.unfinishedSegment == b.unfinishedSegment && a.journalId == b.journalId && a.chain == b.chain
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

    /// Reads every record in order, checking framing, CRCs, batch checksums and their chain, and
    /// that sequences follow each other. Damage confined to the last batch of the last segment
    /// (nothing valid after it) is a torn write: with `repair`, everything from that batch's
    /// start on is zeroed and synced, and the scan says so. Damage followed by a valid later
    /// batch, or anywhere but the last segment, stops the scan with an error naming the file,
    /// the offset and the sequence. A last segment without a header (its creation was cut
    /// short; it never held a record) is removed with `repair` and ignored without.
    ///
    /// `after`: records up to this sequence are checked but not visited, and segments that end
    /// before it are skipped (recovery from a snapshot at that sequence).
    ///
    /// `interrupted`: asked between batches; true stops the scan with `.interrupted`.
    public static func scan(directory: String, shard: Int, repair: Bool, after: UInt64 = 0,
                            interrupted: () -> Bool = { false },
                            visit: (UInt16, UInt64, UnsafeRawBufferPointer) -> Void) throws(JournalError) -> JournalScan {
        var state = ScanState(result: JournalScan(), expected: 0, repair: repair, after: after)
        var files = segments(directory: directory, shard: shard)
        if let last = files.last, try segmentNeverFinished(last) {
            state.result.unfinishedSegment = last
            files.removeLast()
            if repair {
                try journalCall("unlink", last) { unlink(last) }
                try syncDirectory(directory)
            }
        }
        // A segment is wholly at or below `after` if the next one starts at or below after + 1.
        while files.count > 1, let next = firstSequence(of: files[1]), next <= after + 1 { files.removeFirst() }
        // Gap-free from sequence 1, or from the snapshot the scan starts after: a missing first
        // segment would rebuild books without their earliest orders.
        if let first = files.first, let start = firstSequence(of: first), start > after + 1 {
            throw .corrupt(path: first, offset: 0, sequence: after + 1,
                           after == 0 ? "the journal starts at sequence \(start): the segments before it are missing"
                                      : "the journal resumes at sequence \(start), after a snapshot at \(after): the segments between are missing")
        }
        for (index, path) in files.enumerated() {
            try scanSegment(path, shard: shard, isLast: index == files.count - 1, state: &state, interrupted: interrupted, visit: visit)
        }
        return state.result
    }

    /// The journal id and the stored CRC32C of the record with `sequence` (a version 2 segment,
    /// every batch up to it checked), or nil when the journal does not hold it: what a snapshot
    /// taken at that sequence must match to be this journal's.
    public static func record(directory: String, shard: Int, sequence: UInt64) throws(JournalError) -> (journalId: UInt64, crc: UInt32)? {
        guard let path = segments(directory: directory, shard: shard).last(where: { (firstSequence(of: $0) ?? .max) <= sequence }) else {
            return nil
        }
        let found: (journalId: UInt64, crc: UInt32)?? = try mapped(path, writable: false, minimum: JournalLayout.segmentHeaderSize) {
            (_, base, size) throws(JournalError) -> (journalId: UInt64, crc: UInt32)? in
            recordIn(base, size: size, sequence: sequence)
        }
        return found ?? nil
    }

    /// The record with `sequence` as it lies in the journal (header, payload, padding), checked
    /// like `record`; nil when the journal does not hold it. What a standby seeded from a
    /// snapshot at that sequence starts its own journal with.
    public static func recordBytes(directory: String, shard: Int, sequence: UInt64) throws(JournalError) -> [UInt8]? {
        guard let path = segments(directory: directory, shard: shard).last(where: { (firstSequence(of: $0) ?? .max) <= sequence }) else {
            return nil
        }
        let found: [UInt8]?? = try mapped(path, writable: false, minimum: JournalLayout.segmentHeaderSize) {
            (_, base, size) throws(JournalError) -> [UInt8]? in
            guard let at = recordOffset(base, size: size, sequence: sequence) else { return nil }
            let length = Int(UInt32(littleEndian: base.load(fromByteOffset: at, as: UInt32.self)))
            let bytes = JournalLayout.recordSize(payload: length)
            guard at + bytes <= size else { return nil }
            return Array(UnsafeRawBufferPointer(start: base + at, count: bytes))
        }
        return found ?? nil
    }

    /// The first sequence the journal holds (that of its oldest segment), nil when it has none.
    public static func firstKept(directory: String, shard: Int) -> UInt64? {
        segments(directory: directory, shard: shard).first.flatMap(firstSequence(of:))
    }

    /// Removes the segments whose records all lie below `below` (never the last segment, never
    /// the one holding `below`), oldest first, then makes the removal durable. Returns the
    /// paths removed. Pruning keeps what a snapshot at `below` needs: its record (the
    /// snapshot's binding) and everything after it.
    public static func prune(directory: String, shard: Int, below: UInt64) throws(JournalError) -> [String] {
        let files = segments(directory: directory, shard: shard)
        var removed: [String] = []
        for i in files.indices.dropLast() {
            // Segment i holds [first(i), first(i + 1) - 1]: all below `below` when first(i + 1) <= below.
            guard let next = firstSequence(of: files[i + 1]), next <= below else { break }
            try journalCall("unlink", files[i]) { unlink(files[i]) }
            removed.append(files[i])
        }
        if !removed.isEmpty { try syncDirectory(directory) }
        return removed
    }

    /// Cuts the journal back so that `last` is its last record: later segments are removed, the
    /// batch holding `last` ends at it (its header written again when `last` is inside it:
    /// last sequence, length, checksum), and the rest of that segment is zeroed and synced. 0
    /// removes every segment. Returns the paths removed. For an old primary rejoining as a
    /// standby: the records after the common prefix were never the new primary's.
    public static func truncate(directory: String, shard: Int, after last: UInt64) throws(JournalError) -> [String] {
        let files = segments(directory: directory, shard: shard)
        var removed: [String] = []
        // A segment whose first sequence is above `last` holds nothing to keep.
        for path in files.reversed() where (firstSequence(of: path) ?? 0) > last {
            try journalCall("unlink", path) { unlink(path) }
            removed.append(path)
        }
        if !removed.isEmpty { try syncDirectory(directory) }
        guard last > 0, let holder = files.last(where: { (firstSequence(of: $0) ?? .max) <= last }) else { return removed }
        _ = try mapped(holder, writable: true, minimum: JournalLayout.segmentHeaderSize) { (fd, base, size) throws(JournalError) -> Void in
            let batch: BatchSpan
            switch batchHolding(base, size: size, sequence: last) {
            case .absent: return  // the journal ends before `last`: nothing to cut
            case .damaged(let offset, let expected):
                throw .corrupt(path: holder, offset: offset, sequence: expected, "cannot cut the journal after \(last): the batch here does not check")
            case .found(let found): batch = found
            }
            var end = batch.end
            if batch.last > last {
                // The batch ends at `last` now: its header says so, with the checksum of its records up to it.
                var p = batch.offset + JournalLayout.batchHeaderSize
                var running = batch.chain
                var sequence = batch.first
                while sequence <= last {
                    running = cb_crc32c(running, base + p + 16, 4)
                    p += JournalLayout.recordSize(payload: Int(UInt32(littleEndian: base.load(fromByteOffset: p, as: UInt32.self))))
                    sequence += 1
                }
                end = p
                var header = [UInt8](UnsafeRawBufferPointer(start: base + batch.offset, count: JournalLayout.batchHeaderSize))
                header.withUnsafeMutableBytes { h in
                    h.storeBytes(of: last.littleEndian, toByteOffset: JournalLayout.recordHeaderSize, as: UInt64.self)
                    h.storeBytes(of: UInt32(end - batch.offset).littleEndian, toByteOffset: JournalLayout.recordHeaderSize + 8, as: UInt32.self)
                    h.storeBytes(of: running.littleEndian, toByteOffset: JournalLayout.recordHeaderSize + 12, as: UInt32.self)
                    var crc = cb_crc32c(0, h.baseAddress!, 16)
                    crc = cb_crc32c(crc, h.baseAddress! + JournalLayout.recordHeaderSize, JournalLayout.batchPayload)
                    h.storeBytes(of: crc.littleEndian, toByteOffset: 16, as: UInt32.self)
                }
                let wrote = try journalCall("pwrite", holder) { pwrite(fd, header, header.count, off_t(batch.offset)) }
                guard wrote == header.count else { throw .system(SystemCallError("pwrite (short)", holder, errno: EIO)) }
            }
            if end < size { try zero(fd, path: holder, from: end, to: size) }
            try journalCall("fdatasync", holder) { fdatasync(fd) }
        }
        return removed
    }

    static func recordIn(_ base: UnsafeRawPointer, size: Int, sequence: UInt64) -> (journalId: UInt64, crc: UInt32)? {
        guard let at = recordOffset(base, size: size, sequence: sequence) else { return nil }
        return (UInt64(littleEndian: base.load(fromByteOffset: 32, as: UInt64.self)),
                UInt32(littleEndian: base.load(fromByteOffset: at + 16, as: UInt32.self)))
    }

    /// A batch of a mapped segment: where it starts and ends, its sequences, the checksum it chains to.
    struct BatchSpan {
        var offset: Int
        var end: Int
        var first: UInt64
        var last: UInt64
        var chain: UInt32
    }

    enum BatchSearch {
        case found(BatchSpan)
        /// The segment's batches end before the sequence (or it is not a version 2 segment).
        case absent
        /// The batch at `offset`, expected to start at `expected`, does not check.
        case damaged(offset: Int, expected: UInt64)
    }

    /// The batch of a mapped segment holding `sequence`, every batch up to it checked.
    static func batchHolding(_ base: UnsafeRawPointer, size: Int, sequence: UInt64) -> BatchSearch {
        guard base.load(as: UInt64.self) == JournalLayout.magic,
              UInt32(littleEndian: base.load(fromByteOffset: 8, as: UInt32.self)) == JournalLayout.version else { return .absent }
        let journalId = UInt64(littleEndian: base.load(fromByteOffset: 32, as: UInt64.self))
        var chain = UInt32(littleEndian: base.load(fromByteOffset: 40, as: UInt32.self))
        var expected = UInt64(littleEndian: base.load(fromByteOffset: 16, as: UInt64.self))
        guard sequence >= expected else { return .absent }
        var offset = JournalLayout.segmentHeaderSize
        while offset + JournalLayout.recordHeaderSize <= size, !isZero(base + offset, JournalLayout.recordHeaderSize) {
            guard case .success(let batch) = checkBatch(base, size: size, at: offset, journalId: journalId, chain: chain,
                                                        expected: expected) else { return .damaged(offset: offset, expected: expected) }
            let last = UInt64(littleEndian: base.load(fromByteOffset: offset + JournalLayout.recordHeaderSize, as: UInt64.self))
            if sequence <= last { return .found(BatchSpan(offset: offset, end: batch.end, first: expected, last: last, chain: chain)) }
            expected = last + 1
            chain = batch.checksum
            offset = batch.end
        }
        return .absent
    }

    /// Where the record with `sequence` starts in a mapped segment (every batch up to it checked).
    static func recordOffset(_ base: UnsafeRawPointer, size: Int, sequence: UInt64) -> Int? {
        guard case .found(let batch) = batchHolding(base, size: size, sequence: sequence) else { return nil }
        var p = batch.offset + JournalLayout.batchHeaderSize
        var expected = batch.first
        while expected < sequence {
            p += JournalLayout.recordSize(payload: Int(UInt32(littleEndian: base.load(fromByteOffset: p, as: UInt32.self))))
            expected += 1
        }
        return p
    }

    struct ScanState {
        var result: JournalScan
        var expected: UInt64
        var repair: Bool
        var after: UInt64
        /// The chain at the end of the previous version 2 segment, if there was one.
        var chainAtEnd: UInt32?

        /// A checked record (its header at `record`): visited unless at or below `after`, counted.
        mutating func deliver(_ record: UnsafeRawPointer, length: Int, visit: (UInt16, UInt64, UnsafeRawBufferPointer) -> Void) {
            if expected > after {
                visit(UInt16(littleEndian: record.load(fromByteOffset: 4, as: UInt16.self)), expected,
                      UnsafeRawBufferPointer(start: record + JournalLayout.recordHeaderSize, count: length))
            }
            result.records += 1
            result.lastSequence = expected
            expected += 1
        }
    }

    /// True for a segment file whose header never reached the disk and that holds nothing else:
    /// all zeros (or empty). A zero header before non-zero bytes is not that: it is refused.
    static func segmentNeverFinished(_ path: String) throws(JournalError) -> Bool {
        var info = stat()
        try journalCall("stat", path) { stat(path, &info) }
        if info.st_size == 0 { return true }  // empty: nothing was ever written
        let result: Bool? = try mapped(path, writable: false, minimum: 1) { (_, base, size) throws(JournalError) -> Bool in
            guard isZero(base, min(size, JournalLayout.segmentHeaderSize)) else { return false }
            guard isZero(base, size) else { throw .badSegment(path: path, "its header is zeros but it holds data") }
            return true
        }
        guard let result else { throw .badSegment(path: path, "it cannot be mapped") }
        return result
    }

    /// Opens and maps a segment file for `body` (its descriptor, base, size), read-only mapping;
    /// nil when the file has fewer than `minimum` bytes or cannot be mapped.
    static func mapped<T>(_ path: String, writable: Bool, minimum: Int,
                          _ body: (Int32, UnsafeRawPointer, Int) throws(JournalError) -> T) throws(JournalError) -> T? {
        let fd = try journalCall("open", path) { open(path, (writable ? O_RDWR : O_RDONLY) | O_CLOEXEC) }
        defer { close(fd) }
        var info = stat()
        try journalCall("fstat", path) { fstat(fd, &info) }
        let size = Int(info.st_size)
        guard size >= minimum, let map = mmap(nil, size, PROT_READ, MAP_SHARED, fd, 0), map != MAP_FAILED else { return nil }
        defer { munmap(map, size) }
        return try body(fd, UnsafeRawPointer(map), size)
    }

    /// fsync of a directory: the names in it are durable once this returns.
    public static func syncDirectory(_ directory: String) throws(JournalError) {
        let dirFd = try journalCall("open", directory) { open(directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC) }
        defer { close(dirFd) }
        try journalCall("fsync (directory)", directory) { fsync(dirFd) }
    }

    static func scanSegment(_ path: String, shard: Int, isLast: Bool, state: inout ScanState, interrupted: () -> Bool,
                            visit: (UInt16, UInt64, UnsafeRawBufferPointer) -> Void) throws(JournalError) {
        let done: Void? = try mapped(path, writable: true, minimum: JournalLayout.segmentHeaderSize) { (fd, base, size) throws(JournalError) in
            try scanMappedSegment(path, fd: fd, base: base, size: size, shard: shard, isLast: isLast, state: &state,
                                  interrupted: interrupted, visit: visit)
        }
        if done == nil { throw .badSegment(path: path, "too small or unreadable") }
    }

    static func scanMappedSegment(_ path: String, fd: Int32, base: UnsafeRawPointer, size: Int, shard: Int, isLast: Bool,
                                  state: inout ScanState, interrupted: () -> Bool,
                                  visit: (UInt16, UInt64, UnsafeRawBufferPointer) -> Void) throws(JournalError) {
        let version = UInt32(littleEndian: base.load(fromByteOffset: 8, as: UInt32.self))
        guard base.load(as: UInt64.self) == JournalLayout.magic, version == 1 || version == JournalLayout.version,
              UInt32(littleEndian: base.load(fromByteOffset: 12, as: UInt32.self)) == UInt32(shard)
        else { throw .badSegment(path: path, "wrong magic, version or shard") }
        let first = UInt64(littleEndian: base.load(fromByteOffset: 16, as: UInt64.self))
        if state.expected == 0 { state.expected = first; state.result.firstSequence = first }
        guard first == state.expected else {
            throw .corrupt(path: path, offset: 0, sequence: state.expected, "segment starts at sequence \(first)")
        }
        if firstSequence(of: path) != first {
            throw .badSegment(path: path, "its name says sequence \(firstSequence(of: path).map(String.init) ?? "?"), its header \(first)")
        }
        state.result.lastVersion = version
        let end: Int
        if version == 1 {
            end = try scanVersion1(path, fd: fd, base: base, size: size, isLast: isLast, state: &state, interrupted: interrupted, visit: visit)
        } else {
            end = try scanVersion2(path, fd: fd, base: base, size: size, isLast: isLast, state: &state, interrupted: interrupted, visit: visit)
        }
        if isLast {
            state.result.appendPath = path
            state.result.appendOffset = end
        }
    }

    /// A version 2 segment: batch by batch. Returns where appending would continue.
    static func scanVersion2(_ path: String, fd: Int32, base: UnsafeRawPointer, size: Int, isLast: Bool,
                             state: inout ScanState, interrupted: () -> Bool,
                             visit: (UInt16, UInt64, UnsafeRawBufferPointer) -> Void) throws(JournalError) -> Int {
        let journalId = UInt64(littleEndian: base.load(fromByteOffset: 32, as: UInt64.self))
        var chain = UInt32(littleEndian: base.load(fromByteOffset: 40, as: UInt32.self))
        if let known = state.result.journalId, known != journalId {
            throw .badSegment(path: path, "it belongs to another journal (id \(String(journalId, radix: 16)), not \(String(known, radix: 16)))")
        }
        if let previous = state.chainAtEnd, previous != chain {
            throw .corrupt(path: path, offset: 0, sequence: state.expected, "the segment does not continue the batches of the one before")
        }
        state.result.journalId = journalId
        var offset = JournalLayout.segmentHeaderSize
        var damage: (offset: Int, sequence: UInt64, why: String)?
        while offset + JournalLayout.recordHeaderSize <= size {
            if isZero(base + offset, JournalLayout.recordHeaderSize) { break }  // the end
            if interrupted() { throw .interrupted(sequence: state.expected) }
            switch checkBatch(base, size: size, at: offset, journalId: journalId, chain: chain, expected: state.expected) {
            case .failure(let problem):
                let at = problem.record.map { "record at offset \($0.offset), sequence \($0.sequence), in the batch at offset \(offset)" }
                    ?? "batch at offset \(offset)"
                damage = (problem.record?.offset ?? offset, problem.record?.sequence ?? state.expected, "\(problem.why) (\(at))")
            case .success(let batch):
                // Visit only a whole, checked batch: nothing of a torn batch is ever applied.
                var p = offset + JournalLayout.batchHeaderSize
                while p < batch.end {
                    let length = Int(UInt32(littleEndian: base.load(fromByteOffset: p, as: UInt32.self)))
                    state.deliver(base + p, length: length, visit: visit)
                    p += JournalLayout.recordSize(payload: length)
                }
                chain = batch.checksum
                offset = batch.end
            }
            if damage != nil { break }
        }
        state.chainAtEnd = chain
        state.result.chain = chain
        // Past the last good batch only never-written space may follow. A valid batch header
        // there means the damage (or the zeros) hide acknowledged batches: corruption.
        if let later = findBatchHeader(base, size: size, from: offset + 8, journalId: journalId) {
            let why = damage?.why ?? "the batches end here, but a valid batch follows"
            throw .corrupt(path: path, offset: damage?.offset ?? offset, sequence: damage?.sequence ?? state.expected,
                           "\(why); a valid later batch at offset \(later)")
        }
        let dirty = lastNonZero(base, from: offset, size: size)
        if dirty > offset {
            // Leftovers of a torn write (damaged or not, never acknowledged) after the last batch.
            guard isLast else {
                throw .corrupt(path: path, offset: damage?.offset ?? offset, sequence: damage?.sequence ?? state.expected,
                               damage?.why ?? "bytes after the last batch of a segment that is not the last")
            }
            state.result.truncated = (path, offset)
            if state.repair { try zero(fd, path: path, from: offset, to: dirty) }
        }
        return offset
    }

    struct BatchProblem: Error {
        var why: String
        /// The bad record, when the batch header was good.
        var record: (offset: Int, sequence: UInt64)?
    }

    /// Checks the batch at `offset`: its header, every record's framing, CRC and sequence, the
    /// batch's checksum and its link to the previous batch.
    static func checkBatch(_ base: UnsafeRawPointer, size: Int, at offset: Int, journalId: UInt64, chain: UInt32,
                           expected: UInt64) -> Result<(end: Int, checksum: UInt32), BatchProblem> {
        guard isBatchHeader(base, size: size, at: offset, journalId: journalId) else {
            return .failure(BatchProblem(why: "not a valid batch header"))
        }
        let b = base + offset + JournalLayout.recordHeaderSize
        let first = UInt64(littleEndian: base.load(fromByteOffset: offset + 8, as: UInt64.self))
        let last = UInt64(littleEndian: b.load(fromByteOffset: 0, as: UInt64.self))
        let bytes = Int(UInt32(littleEndian: b.load(fromByteOffset: 8, as: UInt32.self)))
        let checksum = UInt32(littleEndian: b.load(fromByteOffset: 12, as: UInt32.self))
        let previous = UInt32(littleEndian: b.load(fromByteOffset: 16, as: UInt32.self))
        guard first == expected else { return .failure(BatchProblem(why: "batch starts at sequence \(first) where \(expected) was expected")) }
        guard previous == chain else { return .failure(BatchProblem(why: "batch does not chain to the batch before it")) }
        guard last >= first, bytes > JournalLayout.batchHeaderSize, offset + bytes <= size else {
            return .failure(BatchProblem(why: "batch of \(bytes) bytes, sequences \(first)...\(last), does not fit"))
        }
        let end = offset + bytes
        var p = offset + JournalLayout.batchHeaderSize
        var sequence = first
        var running = chain
        while p < end {
            guard p + JournalLayout.recordHeaderSize <= end else {
                return .failure(BatchProblem(why: "record header crosses the batch end", record: (p, sequence)))
            }
            let length = Int(UInt32(littleEndian: base.load(fromByteOffset: p, as: UInt32.self)))
            guard length > 0, length <= JournalLayout.maxPayload, p + JournalLayout.recordSize(payload: length) <= end else {
                return .failure(BatchProblem(why: "length \(length) does not fit", record: (p, sequence)))
            }
            let seq = UInt64(littleEndian: base.load(fromByteOffset: p + 8, as: UInt64.self))
            var crc = cb_crc32c(0, base + p, 16)
            crc = cb_crc32c(crc, base + p + JournalLayout.recordHeaderSize, length)
            guard crc == UInt32(littleEndian: base.load(fromByteOffset: p + 16, as: UInt32.self)) else {
                return .failure(BatchProblem(why: "CRC mismatch", record: (p, sequence)))
            }
            guard seq == sequence, seq <= last else {
                return .failure(BatchProblem(why: "sequence \(seq) where \(sequence) was expected", record: (p, sequence)))
            }
            guard UInt16(littleEndian: base.load(fromByteOffset: p + 4, as: UInt16.self)) != JournalLayout.batchType else {
                return .failure(BatchProblem(why: "a batch header inside a batch", record: (p, sequence)))
            }
            running = cb_crc32c(running, base + p + 16, 4)
            sequence += 1
            p += JournalLayout.recordSize(payload: length)
        }
        guard sequence == last + 1 else { return .failure(BatchProblem(why: "batch ends at sequence \(sequence - 1), its header says \(last)")) }
        guard running == checksum else { return .failure(BatchProblem(why: "batch checksum mismatch")) }
        return .success((end, checksum))
    }

    /// A record header at `offset` that is a batch header of this journal, with a good CRC.
    static func isBatchHeader(_ base: UnsafeRawPointer, size: Int, at offset: Int, journalId: UInt64) -> Bool {
        guard offset + JournalLayout.batchHeaderSize <= size,
              UInt32(littleEndian: base.load(fromByteOffset: offset, as: UInt32.self)) == UInt32(JournalLayout.batchPayload),
              UInt16(littleEndian: base.load(fromByteOffset: offset + 4, as: UInt16.self)) == JournalLayout.batchType,
              UInt64(littleEndian: base.load(fromByteOffset: offset + JournalLayout.recordHeaderSize + 24, as: UInt64.self)) == journalId
        else { return false }
        var crc = cb_crc32c(0, base + offset, 16)
        crc = cb_crc32c(crc, base + offset + JournalLayout.recordHeaderSize, JournalLayout.batchPayload)
        return crc == UInt32(littleEndian: base.load(fromByteOffset: offset + 16, as: UInt32.self))
    }

    /// The offset of the first valid batch header at or after `from` (8-byte steps), if any.
    static func findBatchHeader(_ base: UnsafeRawPointer, size: Int, from: Int, journalId: UInt64) -> Int? {
        let marker = UInt64(JournalLayout.batchPayload) | UInt64(JournalLayout.batchType) << 32
        var p = (from + 7) & ~7
        while p + JournalLayout.batchHeaderSize <= size {
            // Length and type in one word (the reserved half-word is zero in a header).
            if UInt64(littleEndian: base.load(fromByteOffset: p, as: UInt64.self)) == marker,
               isBatchHeader(base, size: size, at: p, journalId: journalId) { return p }
            p += 8
        }
        return nil
    }

    /// One past the last non-zero byte at or after `from` (`from` itself if there is none).
    static func lastNonZero(_ base: UnsafeRawPointer, from: Int, size: Int) -> Int {
        var end = size
        while end > from && end & 7 != 0 {
            if base.load(fromByteOffset: end - 1, as: UInt8.self) != 0 { return end }
            end -= 1
        }
        while end - 8 >= from {
            if base.load(fromByteOffset: end - 8, as: UInt64.self) != 0 { break }
            end -= 8
        }
        while end > from && base.load(fromByteOffset: end - 1, as: UInt8.self) == 0 { end -= 1 }
        return end
    }

    /// Zeroes [from, to) and syncs it: nothing stale after a cut can ever be read as a record.
    static func zero(_ fd: Int32, path: String, from: Int, to: Int) throws(JournalError) {
        let chunk = [UInt8](repeating: 0, count: min(1 << 20, to - from))
        var at = from
        while at < to {
            let n = min(chunk.count, to - at)
            let wrote = try journalCall("pwrite", path) { pwrite(fd, chunk, n, off_t(at)) }
            guard wrote == n else { throw .system(SystemCallError("pwrite (short: \(wrote) of \(n) bytes)", path, errno: EIO)) }
            at += n
        }
        try journalCall("fdatasync", path) { fdatasync(fd) }
    }

    /// A version 1 segment (records without batches), as written before batches existed.
    static func scanVersion1(_ path: String, fd: Int32, base: UnsafeRawPointer, size: Int, isLast: Bool,
                             state: inout ScanState, interrupted: () -> Bool,
                             visit: (UInt16, UInt64, UnsafeRawBufferPointer) -> Void) throws(JournalError) -> Int {
        state.chainAtEnd = nil
        var offset = JournalLayout.segmentHeaderSize
        while offset + JournalLayout.recordHeaderSize <= size {
            let length = Int(UInt32(littleEndian: base.load(fromByteOffset: offset, as: UInt32.self)))
            if length == 0 && isZero(base + offset, JournalLayout.recordHeaderSize) { break }  // the end
            if state.expected & 4095 == 0 && interrupted() { throw .interrupted(sequence: state.expected) }
            var problem: String?
            if !(length > 0 && length <= JournalLayout.maxPayload && offset + JournalLayout.recordSize(payload: length) <= size) {
                problem = "length \(length) does not fit"
            } else {
                let seq = UInt64(littleEndian: base.load(fromByteOffset: offset + 8, as: UInt64.self))
                var crc = cb_crc32c(0, base + offset, 16)
                crc = cb_crc32c(crc, base + offset + JournalLayout.recordHeaderSize, length)
                if crc != UInt32(littleEndian: base.load(fromByteOffset: offset + 16, as: UInt32.self)) {
                    problem = "CRC mismatch"
                } else if seq != state.expected {
                    problem = "sequence \(seq) where \(state.expected) was expected"
                }
            }
            if let problem {
                let end = min(size, offset + max(JournalLayout.recordHeaderSize,
                                                 JournalLayout.recordSize(payload: min(length, JournalLayout.maxPayload))))
                guard isLast && isZero(base + end, size - end) else {
                    throw .corrupt(path: path, offset: offset, sequence: state.expected, problem)
                }
                if state.repair { try zero(fd, path: path, from: offset, to: end) }
                state.result.truncated = (path, offset)
                break
            }
            state.deliver(base + offset, length: length, visit: visit)
            offset += JournalLayout.recordSize(payload: length)
        }
        return offset
    }

    /// The first sequence of a segment, from its name.
    public static func firstSequence(of path: String) -> UInt64? {
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
