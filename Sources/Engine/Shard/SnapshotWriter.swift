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

    init(store: SnapshotStore, shard: Int, counters: ShardCounters) {
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
                } catch {
                    counters.add(.snapshotFailures)
                }
            }
            if lock.locked({ done }) { break }
        }
        finished.signal()
    }
}

