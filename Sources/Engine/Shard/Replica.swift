// A standby shard: it takes no orders; it applies what its primary's journal holds, record by
// record, through the code path recovery uses (`applyJournaled`), after writing each record
// into its own journal under the same sequence (same bytes, same CRC). The replication client
// (Replication/ReplicationClient.swift) hands it the records in arrival order through a
// `ReplicaInbox`, and reads how far its journal is durable to acknowledge.
//
// A digest from the primary (its state digest at a sequence) is compared when the standby's
// state is at exactly that sequence. A mismatch, a gap in the sequences or a record that does
// not apply stops the standby's applying: an alarm, never ignored.

import CSync
import Glibc
import Journal
import OrderBook
import SharedMemory
import Wire

/// What the replication client gives a standby shard, in arrival order.
final class ReplicaInbox: @unchecked Sendable {
    enum Item {
        case records([UInt8])
        case digest(sequence: UInt64, digest: UInt64)
    }
    private let lock = Lock()
    private var items: [Item] = []
    private var alarmText: String?
    /// The last sequence applied, and the primary's durable sequence last heard (for the lag).
    let applied: UnsafeMutablePointer<UInt64>
    let primaryDurable: UnsafeMutablePointer<UInt64>
    /// Digests compared and found equal.
    let digestsMatched: UnsafeMutablePointer<UInt64>
    /// How many items wait: the shard looks here on every pass, without the lock (and without
    /// the exclusivity check every access to `items` costs).
    private let waiting: UnsafeMutablePointer<UInt64>

    init() {
        waiting = cacheAligned(UInt64.self, count: 1)
        waiting.initialize(to: 0)
        applied = cacheAligned(UInt64.self, count: 1)
        applied.initialize(to: 0)
        primaryDurable = cacheAligned(UInt64.self, count: 1)
        primaryDurable.initialize(to: 0)
        digestsMatched = cacheAligned(UInt64.self, count: 1)
        digestsMatched.initialize(to: 0)
    }

    deinit {
        applied.deallocate()
        primaryDurable.deallocate()
        digestsMatched.deallocate()
        waiting.deallocate()
    }

    func push(_ item: Item) {
        lock.locked {
            items.append(item)
            cb_store_release_u64(waiting, UInt64(items.count))
        }
    }
    /// Swaps what arrived into `taken` (emptied by the caller, its capacity kept): the two
    /// arrays go back and forth, so neither side allocates per take.
    func take(into taken: inout [Item]) {
        if cb_load_acquire_u64(waiting) == 0 { return }
        lock.locked {
            swap(&items, &taken)
            cb_store_release_u64(waiting, 0)
        }
    }
    var isEmpty: Bool { cb_load_acquire_u64(waiting) == 0 }
    /// Why the standby stopped applying (nil: it applies).
    var alarm: String? { lock.locked { alarmText } }
    func raise(_ why: String) { lock.locked { if alarmText == nil { alarmText = why } } }
}

/// The shard's side of the inbox: what it took and has not finished (a journal that is full
/// or failing holds the rest for the next pass).
final class ReplicaCursor {
    var items: [ReplicaInbox.Item] = []
    var item = 0
    var offset = 0
    var pendingDigest: (sequence: UInt64, digest: UInt64)?
    var stopped = false
}

extension ShardState {
    /// A record of the journal, live on a standby or replayed at recovery: applied through the
    /// same code as a live command. nil, or why the replay cannot go on.
    mutating func applyJournaled(type: UInt16, sequence: UInt64, payload: UnsafeRawBufferPointer) -> String? {
        if type == adminRecordType {
            guard payload.count >= 8 else { return "admin record at sequence \(sequence) of \(payload.count) bytes" }
            let engineTime = UInt64(littleEndian: payload.loadUnaligned(as: UInt64.self))
            do {
                let command = try AdminRecord.decode(UnsafeRawBufferPointer(rebasing: payload[8...]))
                let refusal = processAdmin(command, sequencer.replayed(sequence: sequence, session: 0, engineTime: engineTime))
                let isExport: Bool
                switch command {
                case .exportBook, .exportSealed: isExport = true
                default: isExport = false
                }
                if let refusal, isExport, refusal.contains("differs") {
                    return "sequence \(sequence): \(refusal): the replay does not rebuild what was exported"
                }
                // A listing the live engine had room for: without it, the symbol's commands after
                // it would replay as rejects.
                if let refusal, case .listSymbol = command, refusal.hasPrefix("no room") || refusal.contains("outside this instance's ids") {
                    return "sequence \(sequence): \(refusal): the journal lists more symbols than this configuration has room for (raise [engine] max_symbols)"
                }
            } catch {
                return "sequence \(sequence): \(error)"
            }
            // An admin record that does not apply (an epoch that does not rise) is still sequenced.
            sequencer.commit(sequencer.replayed(sequence: sequence, session: 0, engineTime: engineTime))
            return nil
        }
        guard type == JournalFeed.commandRecord, payload.count == JournalFeed.commandRecordSize else {
            // A record type this build does not know: skipped, as recovery does, but sequenced.
            sequencer.commit(sequencer.replayed(sequence: sequence, session: 0, engineTime: 0))
            return nil
        }
        let session = UInt32(littleEndian: payload.loadUnaligned(fromByteOffset: 64, as: UInt32.self))
        let engineTime = UInt64(littleEndian: payload.loadUnaligned(fromByteOffset: 72, as: UInt64.self))
        process(payload.baseAddress!, sequencer.replayed(sequence: sequence, session: session, engineTime: engineTime))
        return nil
    }

    /// Standby: journals and applies what the primary sent, in order. Returns the records applied.
    mutating func applyReplica(_ inbox: ReplicaInbox, _ cursor: ReplicaCursor) -> Int {
        if cursor.stopped { return 0 }
        if cursor.item >= cursor.items.count {
            cursor.items.removeAll(keepingCapacity: true)
            inbox.take(into: &cursor.items)
            cursor.item = 0
            cursor.offset = 0
            if cursor.items.isEmpty { return 0 }
        }
        var applied = 0
        // The cursor's place in locals: a class's stored properties cost an exclusivity check
        // (swift_beginAccess) at every access, and this loop runs once per record.
        let items = cursor.items
        var item = cursor.item, offset = cursor.offset, pendingDigest = cursor.pendingDigest
        defer {
            cursor.item = item
            cursor.offset = offset
            cursor.pendingDigest = pendingDigest
            cb_store_release_u64(inbox.applied, sequencer.last)
        }
        func stop(_ why: String) {
            cursor.stopped = true
            inbox.raise("shard \(index): \(why)")
        }
        while item < items.count {
            switch items[item] {
            case .digest(let sequence, let digest):
                if sequence >= sequencer.last { pendingDigest = (sequence, digest) }
                item += 1
            case .records(let bytes):
                let result: Int? = bytes.withUnsafeBytes { raw -> Int? in
                    while offset < raw.count {
                        let checked = JournalRecordBytes.check(UnsafeRawBufferPointer(rebasing: raw[offset...]))
                        guard case .success(let record) = checked else {
                            if case .failure(let why) = checked { stop("a record from the primary: \(why)") }
                            return applied
                        }
                        if record.sequence <= sequencer.last {  // already here (a resend after a reconnect)
                            offset += record.size
                            continue
                        }
                        guard record.sequence == sequencer.last + 1 else {
                            stop("the primary sent sequence \(record.sequence) after \(sequencer.last)")
                            return applied
                        }
                        let payload = UnsafeRawBufferPointer(rebasing: raw[(offset + JournalLayout.recordHeaderSize)..<(offset + JournalLayout.recordHeaderSize + record.payload.count)])
                        // Its own journal first, under the same sequence.
                        let context = sequencer.replayed(sequence: record.sequence, session: 0, engineTime: 0)
                        switch feed.append(type: record.type, payload, context) {
                        case .appended: break
                        case .full:
                            feed.poll()
                            return applied  // the rest on the next pass
                        case .refused:
                            if let journal = feed.journal { counters.set(.journalFailures, journal.failureCount) }
                            return applied  // the loop retries the journal
                        }
                        if let failure = applyJournaled(type: record.type, sequence: record.sequence, payload: payload) {
                            stop("applying the primary's record: \(failure)")
                            return applied
                        }
                        offset += record.size
                        applied += 1
                        if let check = pendingDigest, check.sequence == sequencer.last {
                            pendingDigest = nil
                            let mine = digest
                            guard mine == check.digest else {
                                stop("state digest \(String(mine, radix: 16)) at sequence \(check.sequence), the primary's is \(String(check.digest, radix: 16)): the standby does not hold the primary's state")
                                return applied
                            }
                            _ = cb_fetch_add_u64_relaxed(inbox.digestsMatched, 1)
                        }
                    }
                    return nil
                }
                if let result { return result }
                item += 1
                offset = 0
            }
        }
        // A digest at the sequence already reached (sent when the primary stood where we stand).
        if let check = pendingDigest, check.sequence == sequencer.last {
            pendingDigest = nil
            let mine = digest
            if mine != check.digest {
                stop("state digest \(String(mine, radix: 16)) at sequence \(check.sequence), the primary's is \(String(check.digest, radix: 16))")
            } else {
                _ = cb_fetch_add_u64_relaxed(inbox.digestsMatched, 1)
            }
        }
        return applied
    }
}
