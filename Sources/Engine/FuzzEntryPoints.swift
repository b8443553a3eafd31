// Entry points for the fuzz targets (fuzz/): the engine's decoders of bytes another party
// controls, callable from outside the module without making the decoders public API.
// `@_spi(Fuzz) import Engine` sees them; nothing else does.
//
// Each one takes any bytes and must return (a refusal is a thrown error, caught here); a trap,
// a crash or a hang is the bug the fuzzer looks for. Where a decoder has an encoder, what
// decodes must also survive encode + decode unchanged: a decoder that accepts what its encoder
// cannot say back has misread something.

import CCRC32C
import Foundation
import Journal
import OrderBook
import SharedMemory

@_spi(Fuzz)
public enum FuzzEntryPoints {
    /// One replication frame's body of `kind`, as a peer (primary or standby, authenticated or
    /// not) sends it. A records frame's bytes are then split into journal records the way the
    /// standby's receiver does it, and a seed's are parsed as a seed.
    public static func replicationFrame(kind: UInt16, body: UnsafeRawBufferPointer) {
        let message: ReplicationMessage
        do { message = try ReplicationMessage.decode(kind: kind, body) } catch { return }
        let frame = message.encode()
        let again = frame.withUnsafeBytes { f in
            try? ReplicationMessage.decode(kind: UInt16(littleEndian: f.loadUnaligned(fromByteOffset: 4, as: UInt16.self)), UnsafeRawBufferPointer(rebasing: f[8...]))
        }
        // A refusal's text is cut at 4,096 bytes when encoded: a longer one need not survive.
        if case .refuse(let why) = message, why.utf8.count > 4096 {
        } else if again != message {
            fatalError("a replication message of kind \(kind) that decodes does not survive encode + decode: \(message)")
        }
        switch message {
        case .records(_, _, let bytes):
            bytes.withUnsafeBytes { raw in
                var at = 0
                while at < raw.count {
                    guard case .success(let record) = JournalRecordBytes.check(UnsafeRawBufferPointer(rebasing: raw[at...])) else { return }
                    precondition(record.size > 0 && record.size <= raw.count - at, "a checked record of \(record.size) bytes at \(at) of \(raw.count)")
                    _ = JournalRecordBytes.crc(UnsafeRawBufferPointer(rebasing: raw[at...]))
                    at += record.size
                }
            }
        case .seed(let shard, let sequence, _, _, let bytes):
            _ = try? StandbySeed.parse(shard: shard, sequence: sequence, payload: bytes)
        default:
            break
        }
    }

    /// A transfer blob as another engine (or anyone who can write the snapshot store) left it in
    /// Redis: decoded; what decodes survives encode + decode; its book rewritten for the target's
    /// sessions (every owner it names mapped) and restored into an empty book, as the target
    /// takes it in. The CRC is the caller's to fix up (it is the last 4 bytes).
    public static func transferBlob(_ bytes: [UInt8]) {
        guard let blob = try? TransferBlob.decode(bytes) else { return }
        guard (try? TransferBlob.decode(blob.encode())) == blob else {
            fatalError("a transfer blob that decodes does not survive encode + decode: \(blob.spec.name) epoch \(blob.epoch)")
        }
        var sessions: [String: UInt32] = [:]
        for (i, key) in blob.owners.values.sorted().enumerated() { sessions[key] = UInt32(i + 1) }
        guard let arriving = try? blob.arrivingBook(sessions: sessions) else { return }
        guard var book = try? OrderBook(spec: blob.spec, capacity: BookCapacity(orders: 1 << 10, levels: 1 << 8)) else { return }
        try? book.restore(from: arriving)
    }

    /// Sets the last 4 bytes to the CRC32C of the others (a blob of 8 bytes or more).
    public static func fixTransferBlobCRC(_ bytes: inout [UInt8]) {
        guard bytes.count >= 8 else { return }
        let crc = bytes.withUnsafeBytes { cb_crc32c(0, $0.baseAddress, bytes.count - 4) }
        withUnsafeBytes(of: crc.littleEndian) { bytes.replaceSubrange((bytes.count - 4)..., with: $0) }
    }

    /// A shard's snapshot body after its journal binding (as a snapshot store, a staged seed or a
    /// primary's seed gives it), restored into a shard of two symbols (ids 1 and 2) with room
    /// for eight, then written back and restored again into a fresh shard: the second restore
    /// must succeed (what the engine wrote, it must read).
    public static func shardSnapshot(_ body: [UInt8]) {
        guard let fixture = ShardFixture.shared else { return }
        guard var state = fixture.makeState() else { return }
        do { try state.restoreBooks(body) } catch { return }
        let written = Array(state.snapshotBody().dropFirst(SnapshotBinding.size))
        guard var again = fixture.makeState() else { return }
        do { try again.restoreBooks(written) } catch {
            fatalError("a shard snapshot the engine wrote after restoring one does not restore: \(error)")
        }
    }
}

// MARK: Seeds (CROSSBOOK_FUZZ_SEEDS: how the committed corpora were made)

@_spi(Fuzz)
extension FuzzEntryPoints {
    /// One frame of each kind: its kind (u16, little-endian), then its body.
    public static func replicationFrameSeeds() -> [[UInt8]] {
        let record = sampleJournalRecords()
        let messages: [ReplicationMessage] = [
            .hello(epoch: 3, configuration: 0xFEED, shards: [.init(last: 10, crc: 7), .init(last: 0, crc: 0)]),
            .hello(epoch: 3, configuration: 0xFEED, shards: [.init(last: 10, crc: 7)], nonce: Array(repeating: 9, count: 32),
                   keyIds: [Array(repeating: 1, count: ReplicationAuth.keyIdSize), Array(repeating: 2, count: ReplicationAuth.keyIdSize)]),
            .proof(nonce: Array(repeating: 3, count: 32), tag: Array(repeating: 4, count: 32)),
            .welcome(epoch: 3, mode: .sync, instance: "primary-a"), .refuse("another configuration"),
            .records(shard: 0, durable: 2, bytes: record), .digest(shard: 1, sequence: 9, digest: 0xABCD),
            .heartbeat(epoch: 3, engaged: true, durable: [5, 6]), .ack(shard: 0, durable: 4), .handover(epoch: 4),
            .seed(shard: 0, sequence: 1, total: UInt64(record.count + 4), offset: 0,
                  bytes: withUnsafeBytes(of: UInt32(record.count).littleEndian, Array.init) + record + [1, 2, 3]),
            .seeded, .diverged(shard: 0, last: 8), .probe(shard: 0, sequence: 4), .probed(shard: 0, sequence: 4, crc: 77),
        ]
        return messages.map { m in
            let frame = m.encode()
            return Array(frame[4..<6]) + Array(frame[8...])
        }
    }

    /// Blobs as a source writes them: with and without owners, with an empty and a full book.
    public static func transferBlobSeeds() -> [[UInt8]] {
        let spec = SymbolSpec(name: "HOT-USD", id: 7)
        var blobs: [TransferBlob] = [
            TransferBlob(spec: spec, epoch: 4, source: "engine-a", positions: [:], book: sampleBook(spec: spec, owner: 0)),
            TransferBlob(spec: spec, epoch: 9, source: "engine-b", positions: ["orders/0": 12, "orders/3": 1 << 33],
                         owners: [1: "orders/0", 2: "client:1000:desk"], frozenWall: 1_700_000_000_000_000_000,
                         book: sampleBook(spec: spec, owner: 1)),
        ]
        if let empty = try? OrderBook(spec: spec, capacity: BookCapacity(orders: 1 << 10, levels: 1 << 8)) {
            blobs.append(TransferBlob(spec: spec, epoch: 2, source: "c", positions: [:], book: empty.snapshot()))
        }
        return blobs.map { $0.encode() }
    }

    /// Shard snapshot bodies (after the binding): no books, one book, both books.
    public static func shardSnapshotSeeds() -> [[UInt8]] {
        guard let fixture = ShardFixture.shared else { return [] }
        var out: [[UInt8]] = []
        for books in [[], [0], [0, 1]] {
            guard var state = fixture.makeState() else { continue }
            for b in books {
                _ = state.makeBook(b)
                var sink = DiscardingSink()
                for id in 1...12 {
                    state.books[b].apply(.new(NewOrder(orderId: engineOrderId(UInt32(1 + id % 2), OrderId(id)), side: id % 2 == 0 ? .buy : .sell,
                                                       price: 100 + Price(id % 4) * (id % 2 == 0 ? -1 : 1), quantity: Quantity(id))), to: &sink)
                }
            }
            out.append(Array(state.snapshotBody().dropFirst(SnapshotBinding.size)))
        }
        return out
    }

    /// Two journal records of a command each, as a segment holds them.
    static func sampleJournalRecords() -> [UInt8] {
        var out: [UInt8] = []
        for sequence in UInt64(1)...2 {
            // The header (JournalLayout): length u32, type u16, 2 zero bytes, sequence u64, CRC32C
            // u32 of the header's first 16 bytes and the payload, 4 zero bytes; the payload
            // padded to 8 bytes.
            let payload = [UInt8](repeating: UInt8(sequence), count: 64)
            var record = [UInt8](repeating: 0, count: JournalLayout.recordSize(payload: payload.count))
            record.withUnsafeMutableBytes { r in
                r.storeBytes(of: UInt32(payload.count).littleEndian, toByteOffset: 0, as: UInt32.self)
                r.storeBytes(of: UInt16(1).littleEndian, toByteOffset: 4, as: UInt16.self)
                r.storeBytes(of: sequence.littleEndian, toByteOffset: 8, as: UInt64.self)
                for (i, byte) in payload.enumerated() { r[JournalLayout.recordHeaderSize + i] = byte }
                var crc = cb_crc32c(0, r.baseAddress, 16)
                crc = cb_crc32c(crc, r.baseAddress! + JournalLayout.recordHeaderSize, payload.count)
                r.storeBytes(of: crc.littleEndian, toByteOffset: 16, as: UInt32.self)
            }
            out += record
        }
        return out
    }

    /// A book's snapshot with a few orders at two prices a side, of `owner`'s session.
    static func sampleBook(spec: SymbolSpec, owner: UInt32) -> [UInt8] {
        guard var book = try? OrderBook(spec: spec, capacity: BookCapacity(orders: 1 << 10, levels: 1 << 8)) else { return [] }
        var sink = DiscardingSink()
        for id in 1...10 {
            book.apply(.new(NewOrder(orderId: engineOrderId(owner, OrderId(id)), side: id % 2 == 0 ? .buy : .sell,
                                     price: 100 + Price(id % 2 + 1) * (id % 2 == 0 ? -1 : 1), quantity: Quantity(id))), to: &sink)
        }
        return book.snapshot()
    }
}

/// What a bare shard needs around it (a control file, an event ring), made once per process in a
/// temporary directory.
private final class ShardFixture: @unchecked Sendable {
    static let shared = ShardFixture()

    let file: EngineFile
    let ring: EventRing
    let stopFlag = UnsafeMutablePointer<UInt32>.allocate(capacity: 1)
    let tally = UnsafeMutablePointer<UInt64>.allocate(capacity: 64)
    let symbols: [(spec: SymbolSpec, capacity: BookCapacity)] = [
        (SymbolSpec(name: "AAA-USD", id: 1), BookCapacity(orders: 1 << 10, levels: 1 << 8)),
        (SymbolSpec(name: "BBB-USD", id: 2), BookCapacity(orders: 1 << 10, levels: 1 << 8)),
    ]

    init?() {
        let directory = NSTemporaryDirectory() + "crossbook-fuzz-\(getpid())"
        try? FileManager.default.removeItem(atPath: directory)
        guard (try? FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)) != nil,
              let file = try? EngineFile.create(directory: directory, shards: 1, symbols: symbols.map { ($0.spec.name, $0.spec.id, 0) },
                                                symbolCapacity: 8, mode: 0o600),
              let ring = try? EventRing.create(path: InstanceLayout.eventRingPath(directory, shard: 0), capacity: 1 << 10, mode: 0o600)
        else { return nil }
        self.file = file
        self.ring = ring
        stopFlag.initialize(to: 0)
        tally.initialize(repeating: 0, count: 64)
    }

    func makeState() -> ShardState? {
        try? ShardState(index: 0, symbols: symbols, symbolCounters: symbols.indices.map { file.symbolCounters($0) },
                        maxSessions: Shard.maxSessions, counters: file.counters(0), eventRing: ring, lagTimeoutNanoseconds: 1_000_000_000,
                        stopFlag: stopFlag, tally: tally)
    }
}
