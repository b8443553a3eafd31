// A shard's snapshots are written on a thread of their own: the shard pauses only for the copy.

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

    init(store: SnapshotStore, shard: Int, counters: ShardCounters, log: @escaping @Sendable (String) -> Void = { _ in }) {
        self.log = log
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

    private func run() {
        while true {
            wake.wait()
            while let (sequence, body) = lock.locked({ queue.isEmpty ? nil : queue.removeFirst() }) {
                do {
                    try store.save(shard: shard, sequence: sequence, body: body)
                    counters.add(.snapshots)
                    counters.set(.lastSnapshotSequence, sequence)
                    if lastFailure != nil { log("shard \(shard): snapshots are stored again (sequence \(sequence))") }
                    lastFailure = nil
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
}

