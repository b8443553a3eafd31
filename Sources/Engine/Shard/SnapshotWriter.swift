// A shard's snapshots are written on a thread of their own: the shard pauses only for the copy.

import CSync
import Foundation
import Journal
import SharedMemory

/// Writes a shard's snapshots on a thread of its own: the shard hands over bytes and goes on.
final class SnapshotWriter: @unchecked Sendable {
    let store: SnapshotStore
    let shard: Int
    let counters: ShardCounters
    private var queue: [(UInt64, [UInt8])] = []
    private var done = false
    private let lock = Lock()
    private let wake = Semaphore()
    private let finished = Semaphore()

    private let log: @Sendable (String) -> Void
    /// The reason of the last failure said in the log (nil: the last snapshot was stored).
    private var lastFailure: String?

    /// The journal's directory when segments are pruned after each stored snapshot
    /// ([engine] prune_journal); nil keeps every segment.
    private let pruneDirectory: String?
    private var lastPruneFailure: String?

    /// `cpus`: where its thread runs (the engine's io_cores), or any CPU when empty: it is
    /// started by the shard's thread, whose single pinned core it would inherit and compete for.
    init(store: SnapshotStore, shard: Int, counters: ShardCounters, pruneDirectory: String? = nil, cpus: [Int32] = [],
         log: @escaping @Sendable (String) -> Void = { _ in }) {
        self.cpus = cpus
        self.log = log
        self.pruneDirectory = pruneDirectory
        self.store = store
        self.shard = shard
        self.counters = counters
        let thread = Thread { [self] in run() }
        thread.name = "crossbook-snapshots-\(shard)"
        thread.start()
    }

    func submit(sequence: UInt64, body: [UInt8]) {
        lock.locked { queue.append((sequence, body)) }
        wake.signal()
    }

    /// Writes what is queued, then stops.
    func finish() {
        lock.locked { done = true }
        wake.signal()
        finished.wait()
    }

    private let cpus: [Int32]

    private func run() {
        _ = cpus.withUnsafeBufferPointer { cb_set_current_thread_cpus($0.baseAddress, UInt32($0.count)) }
        while true {
            wake.wait()
            while let (sequence, body) = lock.locked({ queue.isEmpty ? nil : queue.removeFirst() }) {
                do {
                    try store.save(shard: shard, sequence: sequence, body: body)
                    counters.add(.snapshots)
                    counters.set(.lastSnapshotSequence, sequence)
                    if lastFailure != nil { log("shard \(shard): snapshots are stored again (sequence \(sequence))") }
                    lastFailure = nil
                    if let directory = pruneDirectory { prune(directory, after: sequence) }
                } catch {
                    counters.add(.snapshotFailures)
                    // Said once per reason, not once per snapshot.
                    let why = "\(error)"
                    if why != lastFailure { log("shard \(shard): the snapshot at sequence \(sequence) was not stored: \(why) (recovery replays more of the journal)") }
                    lastFailure = why
                }
            }
            if lock.locked({ done }) { break }
        }
        finished.signal()
    }

    /// Removes the journal segments older than every snapshot the store keeps of this journal:
    /// each of them still loads (its record, and everything after it, stay), so a damaged newest
    /// snapshot still falls back to an older one. A snapshot whose binding does not name this
    /// journal (another data directory's, left in a shared store) never moves the boundary.
    private func prune(_ directory: String, after sequence: UInt64) {
        var boundary = sequence
        for candidate in store.list(shard: shard) where candidate.sequence < boundary {
            guard let (at, body) = try? store.load(shard: shard, name: candidate.name),
                  (try? SnapshotBinding.check(body, at: at, directory: directory, shard: shard)) != nil else { continue }
            boundary = min(boundary, at)
        }
        do {
            let removed = try JournalReader.prune(directory: directory, shard: shard, below: boundary)
            if !removed.isEmpty {
                counters.add(.journalSegmentsPruned, UInt64(removed.count))
                log("shard \(shard): removed \(removed.count) journal segment(s) below sequence \(boundary), the oldest snapshot kept (the journal now starts at \(JournalReader.firstKept(directory: directory, shard: shard) ?? 0))")
            }
            lastPruneFailure = nil
        } catch {
            let why = "\(error)"
            if why != lastPruneFailure { log("shard \(shard): journal segments below \(boundary) were not removed: \(why)") }
            lastPruneFailure = why
        }
    }
}

