// Sleeping until a shard's journal moves. The replication sender waits for records written
// here, a standby's acknowledger for its own shards' fdatasync: both used to poll (sleeps of
// 50 and 30 us between looks, each one on the acknowledgement path). Now each sleeps in
// poll(2) on its socket and an eventfd, and the shard that moved writes the eventfd
// (cb_wakers in CSync: one fence and one load per journal completion while nobody sleeps).

import CSync
import Glibc

final class JournalWakers: @unchecked Sendable {
    let raw: UnsafeMutablePointer<cb_wakers>

    init() {
        guard let w = cb_wakers_create() else { fatalError("out of memory for 200 bytes") }
        raw = w
    }

    /// After every shard has stopped (each keeps a reference).
    deinit { cb_wakers_destroy(raw) }

    /// A sleeper's slot, or nil (16 taken, or no eventfd): the caller polls as before.
    func take() -> Int32? {
        let slot = cb_wakers_take(raw)
        return slot >= 0 ? slot : nil
    }

    func give(_ slot: Int32) { cb_wakers_give(raw, slot) }

    /// Wakes every sleeper now (a request they must see: a handover, a stop).
    func wakeAll() { cb_wakers_notify_slow(raw) }

    /// Sleeps until a shard notifies, `socket` is readable (or closed), or the timeout, unless
    /// `ready` (looked at after arming, so a notify in between is never lost) says there is
    /// something to do already. Returns whether it slept.
    @discardableResult
    func sleep(slot: Int32, socket: Int32, timeoutMilliseconds: Int32, unless ready: () -> Bool) -> Bool {
        cb_wakers_arm(raw, slot)
        defer { cb_wakers_disarm(raw, slot) }
        if ready() { return false }
        var fds = (pollfd(fd: socket, events: Int16(POLLIN), revents: 0),
                   pollfd(fd: cb_wakers_fd(raw, slot), events: Int16(POLLIN), revents: 0))
        _ = withUnsafeMutablePointer(to: &fds) { $0.withMemoryRebound(to: pollfd.self, capacity: 2) { poll($0, 2, timeoutMilliseconds) } }
        return true
    }
}
