// A shard's snapshot: what its books hold at a sequence, bound to its journal.
//
// Body: the binding (SnapshotBinding: magic, the journal's id, the sequence, the CRC32C of the
// journal's record at that sequence), the highest session id (u32), the book count (u32), then
// per book its symbol id (u32), length (u32) and OrderBook.snapshot() bytes.

import Journal
import OrderBook
import SharedMemory

extension ShardState {
    func snapshotBody() -> [UInt8] {
        var body = SnapshotBinding(journalId: feed.journal?.journalId ?? 0, sequence: sequencer.last,
                                   recordCRC: feed.journal?.lastRecordCRC ?? 0).bytes
        let highest = max(maxRecoveredSession, sessions.highestSession)
        withUnsafeBytes(of: highest.littleEndian) { body.append(contentsOf: $0) }
        let present = symbols.indices.filter { isOwned($0) }
        withUnsafeBytes(of: UInt32(present.count).littleEndian) { body.append(contentsOf: $0) }
        for b in present {
            let bytes = books[b].snapshot()
            withUnsafeBytes(of: books[b].symbolId.littleEndian) { body.append(contentsOf: $0) }
            withUnsafeBytes(of: UInt32(bytes.count).littleEndian) { body.append(contentsOf: $0) }
            body.append(contentsOf: bytes)
        }
        body.append(contentsOf: adminTrailer())
        return body
    }

    /// Restores the books, and the admin state after them (none in snapshots written before
    /// admin commands), from a body whose binding was checked and cut off (it starts at the
    /// highest session id).
    mutating func restoreBooks(_ body: [UInt8]) throws(EngineError) {
        guard body.count >= 8 else { throw EngineError("snapshot body too short") }
        let count = body.withUnsafeBytes { Int(UInt32(littleEndian: $0.loadUnaligned(fromByteOffset: 4, as: UInt32.self))) }
        // The symbols listed at run time come first (their slots must exist for their books):
        // they are in the admin state after the books (version 4).
        var end = 8
        for _ in 0..<min(count, room) {
            guard end + 8 <= body.count else { break }
            let length = body.withUnsafeBytes { Int(UInt32(littleEndian: $0.loadUnaligned(fromByteOffset: end + 4, as: UInt32.self))) }
            guard length <= body.count - end - 8 else { break }
            end += 8 + length
        }
        if end + 4 <= body.count,
           body.withUnsafeBytes({ UInt32(littleEndian: $0.loadUnaligned(fromByteOffset: end, as: UInt32.self)) }) == Self.adminTrailerTag4 {
            for listing in try Self.listings(body, from: end + 4).listings where Int(listing.slot) >= symbols.count {
                if let why = adoptListing(listing) { throw EngineError("snapshot: listed symbol \(listing.name): \(why)") }
                routes?.register(listing.id, slot: Int(listing.slot))
            }
        }
        guard count <= symbols.count else { throw EngineError("snapshot of \(count) books, the instance has \(symbols.count) symbols") }
        var offset = 8
        for _ in 0..<count {
            guard offset + 8 <= body.count else { throw EngineError("snapshot body truncated") }
            let (symbol, length) = body.withUnsafeBytes {
                (UInt32(littleEndian: $0.loadUnaligned(fromByteOffset: offset, as: UInt32.self)),
                 Int(UInt32(littleEndian: $0.loadUnaligned(fromByteOffset: offset + 4, as: UInt32.self))))
            }
            offset += 8
            guard offset + length <= body.count, let b = book(of: symbol) else {
                throw EngineError("snapshot names symbol \(symbol), which is not one of this instance")
            }
            if let failure = makeBook(b) { throw failure }
            do {
                try books[b].restore(from: Array(body[offset..<(offset + length)]))
            } catch {
                throw EngineError("snapshot of symbol \(symbol): \(error)")
            }
            offset += length
        }
        if offset < body.count { try restoreAdminTrailer(body[offset...]) }
    }
}
