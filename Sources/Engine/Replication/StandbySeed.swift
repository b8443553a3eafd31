// Seeding a standby from a snapshot: when the records after a standby's position are gone from
// the primary's journal (pruned after a snapshot, [engine] prune_journal), the primary sends,
// for each shard that needs it, its newest snapshot of this journal and the journal's record at
// the snapshot's sequence S, in place of a welcome (ReplicationWire.swift, kinds 9 and 10).
//
// The standby stages each seed in its data directory (`seed-<shard>`: written whole, synced,
// renamed), stops and starts again (`crossbook run` re-executes itself). At the start, before
// recovery, each staged seed is installed: the shard's old segments go aside to
// `<data dir>.replaced-<time>/`, a new journal is started at S holding the primary's record S
// (same bytes, same CRC), the snapshot is stored bound to that journal, and the staged file is
// removed last. Recovery then loads the snapshot and replays nothing; the standby says it holds S
// (with that record's CRC, which the primary checks as a prefix of its own journal) and follows
// from S + 1. A crash at any point of the install leaves the staged file, and the install runs
// again from the start.
//
// Staged file: magic "CBSEED01" (u64), shard (u32), reserved (u32), sequence (u64), payload
// length (u64), CRC32C of the payload (u32), reserved (u32), payload. Payload: record length
// (u32), the record (header, payload, padding), the snapshot body without its binding.

import CCRC32C
import Foundation
import Glibc
import Journal

struct StandbySeed: Equatable {
    var shard: Int
    var sequence: UInt64
    /// The journal's record at `sequence`, as it lies in a segment.
    var record: [UInt8]
    /// The snapshot body after its binding (highest session id, books, admin state).
    var body: [UInt8]

    /// At most this many bytes of seed per shard (a hostile primary cannot make a standby hold more).
    static let maxBytes: UInt64 = 1 << 31
    static let magic: UInt64 = 0x3130_4445_4553_4243  // "CBSEED01"
    static let headerSize = 40

    /// What travels in the seed messages.
    var payload: [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(4 + record.count + body.count)
        withUnsafeBytes(of: UInt32(record.count).littleEndian) { out.append(contentsOf: $0) }
        out.append(contentsOf: record)
        out.append(contentsOf: body)
        return out
    }

    /// A seed from its payload, checked: a record of `sequence` whose CRC holds; or why not.
    static func parse(shard: Int, sequence: UInt64, payload: [UInt8]) throws(ReplicationError) -> StandbySeed {
        guard sequence > 0 else { throw .protocol("a seed at sequence 0") }
        guard payload.count >= 4 else { throw .protocol("a seed of \(payload.count) bytes") }
        let length = payload.withUnsafeBytes { Int(UInt32(littleEndian: $0.loadUnaligned(as: UInt32.self))) }
        guard length >= JournalLayout.recordHeaderSize, length <= payload.count - 4 else {
            throw .protocol("a seed whose record is \(length) bytes of \(payload.count)")
        }
        let record = Array(payload[4..<(4 + length)])
        let checked = record.withUnsafeBytes { JournalRecordBytes.check($0) }
        switch checked {
        case .failure(let why): throw .protocol("the seed's record: \(why)")
        case .success(let r):
            guard r.sequence == sequence, r.size == length else {
                throw .protocol("the seed's record is of sequence \(r.sequence) (\(r.size) bytes), not \(sequence) (\(length) bytes)")
            }
        }
        return StandbySeed(shard: shard, sequence: sequence, record: record, body: Array(payload[(4 + length)...]))
    }

    static func stagedPath(_ dataDirectory: String, shard: Int) -> String { dataDirectory + "/seed-\(shard)" }

    /// Writes the seed whole into the data directory (temporary file, fsync, rename, directory fsync).
    func stage(in dataDirectory: String) throws(EngineError) {
        let data = payload
        var header = [UInt8](repeating: 0, count: Self.headerSize)
        header.withUnsafeMutableBytes { h in
            h.storeBytes(of: Self.magic.littleEndian, toByteOffset: 0, as: UInt64.self)
            h.storeBytes(of: UInt32(shard).littleEndian, toByteOffset: 8, as: UInt32.self)
            h.storeBytes(of: sequence.littleEndian, toByteOffset: 16, as: UInt64.self)
            h.storeBytes(of: UInt64(data.count).littleEndian, toByteOffset: 24, as: UInt64.self)
            h.storeBytes(of: data.withUnsafeBytes { cb_crc32c(0, $0.baseAddress, $0.count) }.littleEndian, toByteOffset: 32, as: UInt32.self)
        }
        try stageFile(header + data, at: Self.stagedPath(dataDirectory, shard: shard), directory: dataDirectory,
                      what: "the seed of shard \(shard)")
    }

    /// The seed staged for `shard`, checked whole; nil when there is none; throws when the file is damaged.
    static func staged(in dataDirectory: String, shard: Int) throws(EngineError) -> StandbySeed? {
        let path = stagedPath(dataDirectory, shard: shard)
        guard access(path, F_OK) == 0 else { return nil }
        guard let data = FileManager.default.contents(atPath: path), data.count >= headerSize else {
            throw EngineError("\(path): a staged seed that cannot be read or is short")
        }
        let bytes = [UInt8](data)
        let (magic, fileShard, sequence, length, crc) = bytes.withUnsafeBytes {
            (UInt64(littleEndian: $0.loadUnaligned(as: UInt64.self)), Int(UInt32(littleEndian: $0.loadUnaligned(fromByteOffset: 8, as: UInt32.self))),
             UInt64(littleEndian: $0.loadUnaligned(fromByteOffset: 16, as: UInt64.self)),
             UInt64(littleEndian: $0.loadUnaligned(fromByteOffset: 24, as: UInt64.self)),
             UInt32(littleEndian: $0.loadUnaligned(fromByteOffset: 32, as: UInt32.self)))
        }
        guard magic == Self.magic, fileShard == shard, length == UInt64(bytes.count - headerSize) else {
            throw EngineError("\(path): not a staged seed of shard \(shard) (or cut short)")
        }
        let payload = Array(bytes[headerSize...])
        guard payload.withUnsafeBytes({ cb_crc32c(0, $0.baseAddress, $0.count) }) == crc else {
            throw EngineError("\(path): the staged seed's CRC does not hold")
        }
        do { return try parse(shard: shard, sequence: sequence, payload: payload) } catch {
            throw EngineError("\(path): \(error)")
        }
    }

    /// Installs this seed (see the top of the file). `aside`: where the shard's old segments go.
    func install(config: JournalConfig, store: SnapshotStore, aside: String) throws(EngineError) {
        let directory = config.directory
        let old = JournalReader.segments(directory: directory, shard: shard)
        if !old.isEmpty {
            if access(aside, F_OK) != 0 && mkdir(aside, 0o700) != 0 {
                throw EngineError("cannot create \(aside) for the replaced segments: \(String(cString: strerror(errno)))")
            }
            for path in old {
                var target = aside + "/" + (path as NSString).lastPathComponent
                while access(target, F_OK) == 0 { target += ".again" }  // never over an earlier install's
                guard rename(path, target) == 0 else {
                    throw EngineError("cannot move \(path) to \(target): \(String(cString: strerror(errno)))")
                }
            }
            do {
                try JournalReader.syncDirectory(aside)
                try JournalReader.syncDirectory(directory)
            } catch { throw EngineError("moving the replaced segments: \(error)") }
        }
        let writer: JournalWriter
        do { writer = try JournalWriter(config: config, lastSequence: sequence - 1) } catch {
            throw EngineError("shard \(shard): cannot start the seeded journal: \(error)")
        }
        let type = record.withUnsafeBytes { UInt16(littleEndian: $0.loadUnaligned(fromByteOffset: 4, as: UInt16.self)) }
        let length = record.withUnsafeBytes { Int(UInt32(littleEndian: $0.loadUnaligned(as: UInt32.self))) }
        do {
            let appended = try record.withUnsafeBytes { raw throws(JournalError) in
                try writer.append(type: type, sequence: sequence,
                                  payload: UnsafeRawBufferPointer(rebasing: raw[JournalLayout.recordHeaderSize..<(JournalLayout.recordHeaderSize + length)]))
            }
            guard appended else { throw JournalError.tooLarge(length) }
            try writer.flush()
        } catch {
            throw EngineError("shard \(shard): cannot write the seeded journal's first record: \(error)")
        }
        let stored = record.withUnsafeBytes { UInt32(littleEndian: $0.loadUnaligned(fromByteOffset: 16, as: UInt32.self)) }
        guard writer.lastRecordCRC == stored else {
            throw EngineError("shard \(shard): the seeded record's CRC \(writer.lastRecordCRC) is not the primary's \(stored)")
        }
        let binding = SnapshotBinding(journalId: writer.journalId, sequence: sequence, recordCRC: stored)
        do { try store.save(shard: shard, sequence: sequence, body: binding.bytes + body) } catch {
            throw EngineError("shard \(shard): cannot store the seed's snapshot: \(error)")
        }
        let path = Self.stagedPath(directory, shard: shard)
        unlink(path)
        try? JournalReader.syncDirectory(directory)
    }
}

// Rejoin by cutting back: an old primary brought back as a standby may hold records the new
// primary never had (written, never confirmed; in sync mode never acknowledged). The new
// primary says so (`diverged`) and answers probes; the standby finds the last sequence where
// both journals hold the same record (a bisection over its own records' CRCs), stages a cut
// (`cut-<shard>`: "cut after N", synced), stops and starts again. Before recovery the segments
// holding the records after N are copied to `<data dir>.diverged-<time>/` (nothing is lost),
// the journal is cut back after N (JournalReader.truncate), and the staged file is removed
// last: a crash midway cuts again. Snapshots taken after N no longer bind to the journal and
// are skipped. The standby then follows from N + 1: no copy of the whole journal.
struct JournalCut: Equatable {
    var shard: Int
    var after: UInt64

    static func stagedPath(_ dataDirectory: String, shard: Int) -> String { dataDirectory + "/cut-\(shard)" }

    func stage(in dataDirectory: String) throws(EngineError) {
        try stageFile(Array("cut after \(after)\n".utf8), at: Self.stagedPath(dataDirectory, shard: shard), directory: dataDirectory,
                      what: "the cut of shard \(shard)")
    }

    static func staged(in dataDirectory: String, shard: Int) throws(EngineError) -> JournalCut? {
        let path = stagedPath(dataDirectory, shard: shard)
        guard access(path, F_OK) == 0 else { return nil }
        guard let data = FileManager.default.contents(atPath: path), data.count <= 64 else {
            throw EngineError("\(path): a staged cut that cannot be read")
        }
        let text = String(decoding: data, as: UTF8.self)
        guard text.hasPrefix("cut after "), text.hasSuffix("\n"),
              let after = UInt64(text.dropFirst("cut after ".count).dropLast()) else {
            throw EngineError("\(path): not a staged cut (\"cut after N\")")
        }
        return JournalCut(shard: shard, after: after)
    }

    /// Copies the segments holding records after `after` aside, then cuts the journal back.
    /// Returns how many segments were copied aside.
    func install(directory: String, aside: String) throws(EngineError) -> Int {
        let files = JournalReader.segments(directory: directory, shard: shard)
        // The segment holding `after` + 1 and every later one hold the records cut.
        let holding = files.indices.filter { i in
            i == files.count - 1 || (JournalReader.firstSequence(of: files[i + 1]) ?? 0) > after + 1
        }
        let copied = holding.map { files[$0] }
        if !copied.isEmpty {
            if access(aside, F_OK) != 0 && mkdir(aside, 0o700) != 0 {
                throw EngineError("cannot create \(aside) for the cut records: \(String(cString: strerror(errno)))")
            }
            for path in copied {
                var target = aside + "/" + (path as NSString).lastPathComponent
                while access(target, F_OK) == 0 { target += ".again" }
                do { try FileManager.default.copyItem(atPath: path, toPath: target) } catch {
                    throw EngineError("cannot copy \(path) to \(target): \(error)")
                }
            }
            do { try JournalReader.syncDirectory(aside) } catch { throw EngineError("copying the cut records aside: \(error)") }
        }
        do { _ = try JournalReader.truncate(directory: directory, shard: shard, after: after) } catch {
            throw EngineError("shard \(shard): cannot cut the journal back after \(after): \(error)")
        }
        unlink(Self.stagedPath(directory, shard: shard))
        try? JournalReader.syncDirectory(directory)
        return copied.count
    }
}

/// Writes `bytes` to `path` whole and durably: a temporary file, fsync, rename, fsync of the directory.
func stageFile(_ bytes: [UInt8], at path: String, directory: String, what: String) throws(EngineError) {
    let temporary = path + ".tmp"
    let fd = open(temporary, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
    guard fd >= 0 else { throw EngineError("cannot stage \(what) in \(temporary): \(String(cString: strerror(errno)))") }
    let written = bytes.withUnsafeBytes { raw -> Bool in
        var done = 0
        while done < raw.count {
            let n = write(fd, raw.baseAddress! + done, raw.count - done)
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { return false }
            done += n
        }
        return true
    }
    let ok = written && fsync(fd) == 0
    let why = String(cString: strerror(errno))
    close(fd)
    guard ok, rename(temporary, path) == 0 else {
        unlink(temporary)
        throw EngineError("cannot stage \(what) in \(path): \(why)")
    }
    do { try JournalReader.syncDirectory(directory) } catch { throw EngineError("staging \(what): \(error)") }
}
