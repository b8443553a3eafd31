// A shard's recovery at start: the newest usable snapshot, then every journaled command after
// it, through the same `process` as live commands, with the output gate sending nothing.

import Journal
import OrderBook
import SharedMemory
import Wire

/// What recovery found, for the engine's log and its session ids.
struct RecoveryOutcome {
    var log: [String] = []
    /// Where the journal ends, for the writer that appends after it.
    var resume: JournalResume?
    var restingOwners = Set<UInt32>()
    var digest: UInt64 = 0
}

enum RecoveryFailure: Error {
    /// A stop came during recovery: it stopped at this sequence.
    case interrupted(at: UInt64)
    case failed(String)
}

extension ShardState {
    /// `snapshotAtOrBefore`: only a snapshot at or below this sequence (a regeneration must replay
    /// the commands above it).
    mutating func recover(config: JournalConfig, snapshots: SnapshotStore?, readOnly: Bool, describeBooks: Bool,
                          snapshotAtOrBefore: UInt64 = .max,
                          interrupted: () -> Bool) throws(RecoveryFailure) -> RecoveryOutcome {
        var outcome = RecoveryOutcome()
        let recoveryStart = monotonicNanoseconds()
        output.pointee.replaying = true
        defer { output.pointee.replaying = false }
        var maxSession: UInt32 = 0
        // The newest snapshot that loads and restores whole; an older one if it does not.
        var base: UInt64 = 0
        if let store = snapshots {
            for candidate in store.list(shard: index) where candidate.sequence <= snapshotAtOrBefore {
                do {
                    let (at, stored) = try store.load(shard: index, name: candidate.name)
                    // Only a snapshot of this journal, at a sequence it holds, with the same record there.
                    let body = try SnapshotBinding.check(stored, at: at, directory: config.directory, shard: index)
                    try restoreBooks(body)
                    base = at
                    maxSession = body.withUnsafeBytes { UInt32(littleEndian: $0.loadUnaligned(as: UInt32.self)) }
                    outcome.log.append("shard \(index): loaded snapshot \(candidate.name) (sequence \(at))")
                    break
                } catch {
                    outcome.log.append("shard \(index): snapshot \(candidate.name) unusable (\(error)); trying an older one")
                    do { try resetBooks() } catch { throw .failed("\(error)") }
                }
            }
        }
        sequencer.resume(after: base)
        let scanned: JournalScan
        var replayed = 0
        var adminFailure: String?
        do {
            scanned = try JournalReader.scan(directory: config.directory, shard: index, repair: !readOnly, after: base,
                                             interrupted: interrupted) { type, seq, payload in
                replayed += 1
                guard adminFailure == nil else { return }
                if type == JournalFeed.commandRecord, payload.count == JournalFeed.commandRecordSize {
                    maxSession = max(maxSession, UInt32(littleEndian: payload.loadUnaligned(fromByteOffset: 64, as: UInt32.self)))
                }
                adminFailure = applyJournaled(type: type, sequence: seq, payload: payload)
            }
        } catch .interrupted(let at) {
            throw .interrupted(at: at)
        } catch {
            throw .failed("shard \(index): recovery failed: \(error)")
        }
        if let adminFailure { throw .failed("shard \(index): recovery failed: \(adminFailure)") }
        sequencer.resume(after: max(scanned.lastSequence, base))
        maxRecoveredSession = maxSession
        outcome.resume = scanned.resume
        outcome.restingOwners = restingOwners
        if let torn = scanned.truncated {
            outcome.log.append("shard \(index): cut a torn last batch (never acknowledged) at \(torn.path) offset \(torn.offset)\(readOnly ? " (read-only: left on disk)" : "; everything after it zeroed")")
        }
        if let unfinished = scanned.unfinishedSegment {
            outcome.log.append("shard \(index): \(readOnly ? "ignored" : "removed") \(unfinished), a segment whose creation never completed (it held no record)")
        }
        outcome.digest = digest
        let seconds = Double(monotonicNanoseconds() - recoveryStart) / 1e9
        let replayRate = seconds > 0 ? Int(Double(replayed) / seconds) : 0
        outcome.log.append("shard \(index): recovered \(base > 0 ? "from the snapshot at \(base) and " : "")\(replayed) journaled commands (up to sequence \(sequencer.last)) in \(Int(seconds * 1000)) ms (\(replayRate) records/s), state digest \(String(outcome.digest, radix: 16))")
        if describeBooks {
            for b in symbols.indices where hasBook(b) {
                let name = symbols[b].spec.name
                let bids = books[b].depth(.buy), asks = books[b].depth(.sell)
                outcome.log.append("BOOK,\(name),bids=\(bids.count),asks=\(asks.count)")
                for level in asks.reversed() { outcome.log.append("ASK,\(name),\(level.price),\(level.quantity),\(level.orders)") }
                for level in bids { outcome.log.append("BID,\(name),\(level.price),\(level.quantity),\(level.orders)") }
            }
        }
        return outcome
    }
}
