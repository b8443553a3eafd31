// plugins/snapshot-file: the default snapshot store, behind the plugin ABI. Shard snapshots as
// files beside the journal (or in `dir`), the newest `keep` of each shard kept.
//
// Snapshot file `snapshot-<shard>-<sequence, 20 digits>.snap`:
//   0  magic "CBSNAP01" (u64), version (u32), shard (u32), sequence (u64), length of the body
//      (u64), CRC32C of the body (u32), 4 reserved... then at 36 the body (the engine's bytes).
// Written to a temporary name, synced, renamed, and the directory synced: a snapshot file is
// whole or absent. A body whose length or CRC does not match is an error, never handed back.
//
// Config: dir (default: the engine's data directory), keep (default: the engine's
// snapshots_kept, 3).

import CCRC32C
import CPluginABI
import Glibc

final class FileStore {
    let directory: String
    let keep: Int
    static let magic: UInt64 = UInt64(littleEndian: 0x3130_5041_4E53_4243)  // "CBSNAP01"

    init(directory: String, keep: Int) {
        self.directory = directory
        self.keep = max(1, keep)
    }

    static func name(shard: UInt32, sequence: UInt64) -> String {
        let digits = String(sequence)
        return "snapshot-\(shard)-" + String(repeating: "0", count: max(0, 20 - digits.count)) + digits + ".snap"
    }

    func save(shard: UInt32, sequence: UInt64, body: UnsafeRawBufferPointer) -> String? {
        let final = directory + "/" + Self.name(shard: shard, sequence: sequence)
        let temporary = final + ".tmp"
        var header = [UInt8](repeating: 0, count: 36)
        header.withUnsafeMutableBytes { h in
            h.storeBytes(of: Self.magic, toByteOffset: 0, as: UInt64.self)
            h.storeBytes(of: UInt32(1).littleEndian, toByteOffset: 8, as: UInt32.self)
            h.storeBytes(of: shard.littleEndian, toByteOffset: 12, as: UInt32.self)
            h.storeBytes(of: sequence.littleEndian, toByteOffset: 16, as: UInt64.self)
            h.storeBytes(of: UInt64(body.count).littleEndian, toByteOffset: 24, as: UInt64.self)
            h.storeBytes(of: cb_crc32c(0, body.baseAddress, body.count).littleEndian, toByteOffset: 32, as: UInt32.self)
        }
        let fd = open(temporary, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard fd >= 0 else { return "open \(temporary): \(String(cString: strerror(errno)))" }
        func writeAll(_ raw: UnsafeRawBufferPointer) -> Bool {
            var done = 0
            while done < raw.count {
                let n = write(fd, raw.baseAddress! + done, raw.count - done)
                if n < 0 && errno == EINTR { continue }
                if n <= 0 { return false }
                done += n
            }
            return true
        }
        var ok = header.withUnsafeBytes { writeAll($0) } && (body.count == 0 || writeAll(body))
        let e = errno
        ok = ok && fsync(fd) == 0
        close(fd)
        guard ok else {
            unlink(temporary)
            return "write \(temporary): \(String(cString: strerror(e == 0 ? EIO : e)))"
        }
        guard rename(temporary, final) == 0 else { return "rename \(final): \(String(cString: strerror(errno)))" }
        // The new name must be durable before older snapshots go: a power cut in between must
        // leave at least one.
        let dirFd = open(directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard dirFd >= 0 else { return "open \(directory): \(String(cString: strerror(errno)))" }
        let synced = fsync(dirFd) == 0
        let syncError = errno
        close(dirFd)
        guard synced else { return "fsync of the directory \(directory): \(String(cString: strerror(syncError)))" }
        for old in list(shard: shard).dropFirst(keep) { unlink(directory + "/" + old.name) }
        return nil
    }

    /// Newest first.
    func list(shard: UInt32) -> [(sequence: UInt64, name: String)] {
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

    /// The body of one snapshot, checked; or why not.
    func load(shard: UInt32, name: String) -> Result<(sequence: UInt64, body: [UInt8]), Failure> {
        guard !name.contains("/") else { return .failure(Failure(status: CB_ERR_INVALID, "bad snapshot name \(name)")) }
        let path = directory + "/" + name
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else {
            return .failure(Failure(status: errno == ENOENT ? CB_ERR_NOT_FOUND : CB_ERR_IO,
                                    "open \(path): \(String(cString: strerror(errno)))"))
        }
        defer { close(fd) }
        var info = stat()
        fstat(fd, &info)
        let size = Int(info.st_size)
        guard size >= 36 else { return .failure(Failure(status: CB_ERR_FAILED, "\(path): \(size) bytes is too short")) }
        var bytes = [UInt8](repeating: 0, count: size)
        guard bytes.withUnsafeMutableBytes({ pread(fd, $0.baseAddress, size, 0) }) == size else {
            return .failure(Failure(status: CB_ERR_IO, "pread \(path): \(String(cString: strerror(errno)))"))
        }
        return bytes.withUnsafeBytes { raw in
            let word32 = { (o: Int) in UInt32(littleEndian: raw.loadUnaligned(fromByteOffset: o, as: UInt32.self)) }
            let word64 = { (o: Int) in UInt64(littleEndian: raw.loadUnaligned(fromByteOffset: o, as: UInt64.self)) }
            guard raw.loadUnaligned(as: UInt64.self) == Self.magic, word32(8) == 1, word32(12) == shard else {
                return .failure(Failure(status: CB_ERR_FAILED, "\(path): wrong magic, version or shard"))
            }
            let length = Int(word64(24))
            guard length == size - 36 else {
                return .failure(Failure(status: CB_ERR_FAILED, "\(path): a body of \(length) bytes in a file of \(size)"))
            }
            guard cb_crc32c(0, raw.baseAddress! + 36, length) == word32(32) else {
                return .failure(Failure(status: CB_ERR_FAILED, "\(path): CRC mismatch"))
            }
            return .success((word64(16), Array(raw[36...])))
        }
    }

    struct Failure: Error {
        var status: cb_status
        var message: String
        init(status: cb_status, _ message: String) {
            self.status = status
            self.message = message
        }
    }
}


/// The plugin's instance: its store and the struct it registered.
final class SnapshotFilePlugin {
    let store: FileStore
    init(store: FileStore) { self.store = store }
}

nonisolated(unsafe) let snapshotFileDescriptor: UnsafeMutablePointer<cb_plugin> = {
    let d = UnsafeMutablePointer<cb_plugin>.allocate(capacity: 1)
    d.initialize(to: cb_plugin())
    d.pointee.size = UInt32(MemoryLayout<cb_plugin>.size)
    d.pointee.abi_version = CB_PLUGIN_ABI_VERSION
    d.pointee.name = UnsafePointer(strdup("snapshot-file"))
    d.pointee.version = UnsafePointer(strdup("1.0.0"))
    d.pointee.kinds = UInt32(CB_KIND_SNAPSHOT_STORE)
    d.pointee.start = { api, host, instance, error, errorSize in
        guard let api, let host, let instance else { return CB_ERR_INVALID.rawValue }
        let value = { (key: String) -> String? in api.pointee.config_get(host, key).map { String(cString: $0) } }
        guard let directory = value("dir") ?? value("engine.data_dir") else {
            cb_copy_text(error, errorSize, "no dir configured and no engine.data_dir")
            return CB_ERR_INVALID.rawValue
        }
        let keepText = value("keep") ?? value("engine.snapshots_kept") ?? "3"
        guard let keep = Int(keepText), keep >= 1 else {
            cb_copy_text(error, errorSize, "keep must be a positive integer, got '\(keepText)'")
            return CB_ERR_INVALID.rawValue
        }
        var info = stat()
        guard stat(directory, &info) == 0, info.st_mode & S_IFMT == S_IFDIR else {
            cb_copy_text(error, errorSize, "dir \(directory) is not a directory")
            return CB_ERR_INVALID.rawValue
        }
        let plugin = SnapshotFilePlugin(store: FileStore(directory: directory, keep: keep))
        let context = Unmanaged.passRetained(plugin).toOpaque()
        var store = cb_snapshot_store()
        store.size = UInt32(MemoryLayout<cb_snapshot_store>.size)
        store.context = context
        store.save = { context, shard, sequence, body, length, error, errorSize in
            let plugin = Unmanaged<SnapshotFilePlugin>.fromOpaque(context!).takeUnretainedValue()
            if let why = plugin.store.save(shard: shard, sequence: sequence,
                                           body: UnsafeRawBufferPointer(start: body, count: length)) {
                cb_copy_text(error, errorSize, why)
                return CB_ERR_IO.rawValue
            }
            return CB_OK.rawValue
        }
        store.list = { context, shard, visit, visitContext in
            let plugin = Unmanaged<SnapshotFilePlugin>.fromOpaque(context!).takeUnretainedValue()
            for entry in plugin.store.list(shard: shard) { entry.name.withCString { visit?(visitContext, entry.sequence, $0) } }
            return CB_OK.rawValue
        }
        store.load = { context, shard, name, sequence, sink, sinkContext, error, errorSize in
            let plugin = Unmanaged<SnapshotFilePlugin>.fromOpaque(context!).takeUnretainedValue()
            guard let name else { return CB_ERR_INVALID.rawValue }
            switch plugin.store.load(shard: shard, name: String(cString: name)) {
            case .success(let snapshot):
                sequence?.pointee = snapshot.sequence
                snapshot.body.withUnsafeBufferPointer { sink?(sinkContext, $0.baseAddress, $0.count) }
                return CB_OK.rawValue
            case .failure(let failure):
                cb_copy_text(error, errorSize, failure.message)
                return failure.status.rawValue
            }
        }
        let rc = api.pointee.snapshot_store_register(host, &store)
        guard rc == CB_OK.rawValue else {
            Unmanaged<SnapshotFilePlugin>.fromOpaque(context).release()
            cb_copy_text(error, errorSize, "the host refused the store (status \(rc)): is another snapshot store loaded?")
            return rc
        }
        instance.pointee = context
        return CB_OK.rawValue
    }
    d.pointee.stop = { instance in
        guard let instance else { return }
        Unmanaged<SnapshotFilePlugin>.fromOpaque(instance).release()
    }
    d.pointee.health = { instance, message, size in
        guard let instance else { return Int32(CB_HEALTH_FAILED.rawValue) }
        let plugin = Unmanaged<SnapshotFilePlugin>.fromOpaque(instance).takeUnretainedValue()
        guard access(plugin.store.directory, W_OK) == 0 else {
            cb_copy_text(message, size, "\(plugin.store.directory) is not writable")
            return Int32(CB_HEALTH_FAILED.rawValue)
        }
        cb_copy_text(message, size, "storing in \(plugin.store.directory), keeping \(plugin.store.keep)")
        return Int32(CB_HEALTH_OK.rawValue)
    }
    return d
}()

@_cdecl("crossbook_plugin_entry")
public func crossbookPluginEntry() -> UnsafePointer<cb_plugin> { UnsafePointer(snapshotFileDescriptor) }
