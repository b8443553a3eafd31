// Where shard snapshots live. The engine sees a small interface (so that a plugin can take it
// over later); the default keeps them as files beside the journal.
//
// Snapshot file `snapshot-<shard>-<sequence, 20 digits>.snap`:
//   0  magic "CBSNAP01" (u64), version (u32), shard (u32), sequence (u64), length of the body
//      (u64), CRC32C of the body (u32), 4 reserved
//   32 body (the engine's bytes)
// Written to a temporary name, synced, renamed, and the directory synced: a snapshot file is
// whole or absent. The newest `keep` are kept.

import CShims
import Glibc

public protocol SnapshotStore: AnyObject, Sendable {
    /// Stores a shard's snapshot taken at `sequence`.
    func save(shard: Int, sequence: UInt64, body: [UInt8]) throws(JournalError)
    /// A shard's snapshots, newest first, as (sequence, path or name) to try in turn.
    func list(shard: Int) -> [(sequence: UInt64, name: String)]
    /// One snapshot's body, checked (header and CRC32C).
    func load(shard: Int, name: String) throws(JournalError) -> (sequence: UInt64, body: [UInt8])
}

public final class FileSnapshotStore: SnapshotStore, @unchecked Sendable {
    public let directory: String
    public let keep: Int
    static let magic: UInt64 = UInt64(littleEndian: 0x3130_5041_4E53_4243)  // "CBSNAP01"

    public init(directory: String, keep: Int = 3) {
        self.directory = directory
        self.keep = max(1, keep)
    }

    static func name(shard: Int, sequence: UInt64) -> String {
        let digits = String(sequence)
        return "snapshot-\(shard)-" + String(repeating: "0", count: max(0, 20 - digits.count)) + digits + ".snap"
    }

    public func save(shard: Int, sequence: UInt64, body: [UInt8]) throws(JournalError) {
        let final = directory + "/" + Self.name(shard: shard, sequence: sequence)
        let temporary = final + ".tmp"
        var header = [UInt8](repeating: 0, count: 32)
        let crc = body.withUnsafeBytes { cb_crc32c(0, $0.baseAddress, $0.count) }
        header.withUnsafeMutableBytes { h in
            h.storeBytes(of: Self.magic, toByteOffset: 0, as: UInt64.self)
            h.storeBytes(of: UInt32(1).littleEndian, toByteOffset: 8, as: UInt32.self)
            h.storeBytes(of: UInt32(shard).littleEndian, toByteOffset: 12, as: UInt32.self)
            h.storeBytes(of: sequence.littleEndian, toByteOffset: 16, as: UInt64.self)
            h.storeBytes(of: UInt64(body.count).littleEndian, toByteOffset: 24, as: UInt64.self)
        }
        var crcBytes = crc.littleEndian
        let fd = open(temporary, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw .system(call: "open", path: temporary, errno: errno) }
        var ok = write(fd, header, 32) == 32 && write(fd, &crcBytes, 4) == 4
        ok = ok && body.withUnsafeBytes { raw in
            var done = 0
            while done < raw.count {
                let n = write(fd, raw.baseAddress! + done, raw.count - done)
                if n <= 0 { return false }
                done += n
            }
            return true
        }
        let e = errno
        ok = ok && fsync(fd) == 0
        close(fd)
        guard ok else {
            unlink(temporary)
            throw e == ENOSPC ? .diskFull(path: temporary) : .system(call: "write", path: temporary, errno: e)
        }
        guard rename(temporary, final) == 0 else { throw .system(call: "rename", path: final, errno: errno) }
        let dirFd = open(directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if dirFd >= 0 {
            fsync(dirFd)
            close(dirFd)
        }
        for old in list(shard: shard).dropFirst(keep) { unlink(directory + "/" + old.name) }
    }

    public func list(shard: Int) -> [(sequence: UInt64, name: String)] {
        guard let dir = opendir(directory) else { return [] }
        defer { closedir(dir) }
        let prefix = "snapshot-\(shard)-"
        var out: [(sequence: UInt64, name: String)] = []
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: &entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            guard name.hasPrefix(prefix), name.hasSuffix(".snap"),
                  let sequence = UInt64(name.dropFirst(prefix.count).dropLast(5)) else { continue }
            out.append((sequence, name))
        }
        return out.sorted { $0.sequence > $1.sequence }
    }

    public func load(shard: Int, name: String) throws(JournalError) -> (sequence: UInt64, body: [UInt8]) {
        let path = directory + "/" + name
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw .system(call: "open", path: path, errno: errno) }
        defer { close(fd) }
        var info = stat()
        fstat(fd, &info)
        let size = Int(info.st_size)
        guard size >= 36 else { throw .badSegment(path: path, "a snapshot of \(size) bytes is too short") }
        var bytes = [UInt8](repeating: 0, count: size)
        guard bytes.withUnsafeMutableBytes({ pread(fd, $0.baseAddress, size, 0) }) == size else {
            throw .system(call: "pread", path: path, errno: errno)
        }
        let word64 = { (o: Int) in bytes.withUnsafeBytes { UInt64(littleEndian: $0.loadUnaligned(fromByteOffset: o, as: UInt64.self)) } }
        let word32 = { (o: Int) in bytes.withUnsafeBytes { UInt32(littleEndian: $0.loadUnaligned(fromByteOffset: o, as: UInt32.self)) } }
        guard bytes.withUnsafeBytes({ $0.loadUnaligned(as: UInt64.self) }) == Self.magic, word32(8) == 1,
              word32(12) == UInt32(shard)
        else { throw .badSegment(path: path, "wrong magic, version or shard") }
        let sequence = word64(16)
        let length = Int(word64(24))
        guard length == size - 36 else { throw .badSegment(path: path, "body of \(length) bytes in a file of \(size)") }
        let crc = bytes.withUnsafeBytes { cb_crc32c(0, $0.baseAddress! + 36, length) }
        guard crc == word32(32) else { throw .corrupt(path: path, offset: 36, sequence: sequence, "snapshot CRC mismatch") }
        return (sequence, Array(bytes[36...]))
    }
}
