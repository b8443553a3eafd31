// JournalWakers (cb_wakers in CSync): the replication threads sleep in poll(2) until a shard's
// journal moves. What must hold: a notify after the arm is never lost, a notify with nobody
// armed writes nothing, a socket wakes the sleeper too, and slots run out cleanly.

import CSync
import Foundation
import Glibc
@testable import Engine
import SharedMemory
import Testing

@Suite("Journal wakers")
struct JournalWakersTests {
    /// Wakers with one slot taken, and a socket pair for the sleeps (the caller closes it).
    static func sleeper() -> (JournalWakers, Int32, [Int32]) {
        let wakers = JournalWakers()
        var pair: [Int32] = [0, 0]
        #expect(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &pair) == 0)
        return (wakers, wakers.take()!, pair)
    }

    @Test("16 slots, then none; a slot given back is taken again")
    func slots() {
        let wakers = JournalWakers()
        let taken = (0..<16).compactMap { _ in wakers.take() }
        #expect(Set(taken).count == 16)
        #expect(wakers.take() == nil)
        wakers.give(taken[3])
        #expect(wakers.take() == taken[3])
    }

    @Test("a notify with nobody armed writes nothing; one after the arm makes the eventfd readable, and the disarm empties it")
    func armed() {
        let wakers = JournalWakers()
        let slot = wakers.take()!
        let fd = cb_wakers_fd(wakers.raw, slot)
        var value: UInt64 = 0
        cb_wakers_notify(wakers.raw)
        #expect(read(fd, &value, 8) == -1 && errno == EAGAIN)
        cb_wakers_arm(wakers.raw, slot)
        #expect(wakers.raw.pointee.armed_count == 1)
        cb_wakers_notify(wakers.raw)
        #expect(wakers.raw.pointee.armed_count == 0)  // the notify takes the arm
        cb_wakers_notify(wakers.raw)  // a second one writes nothing more
        #expect(read(fd, &value, 8) == 8 && value == 1)
        cb_wakers_arm(wakers.raw, slot)
        cb_wakers_notify(wakers.raw)
        cb_wakers_disarm(wakers.raw, slot)
        #expect(read(fd, &value, 8) == -1 && errno == EAGAIN)
        #expect(wakers.raw.pointee.armed_count == 0)
    }

    @Test("`ready` true: no sleep; a readable socket ends the sleep")
    func socketWakes() {
        let (wakers, slot, pair) = Self.sleeper()
        defer { close(pair[0]); close(pair[1]) }
        #expect(!wakers.sleep(slot: slot, socket: pair[0], timeoutMilliseconds: 60_000) { true })
        var byte: UInt8 = 1
        #expect(write(pair[1], &byte, 1) == 1)
        let t0 = monotonicNanoseconds()
        #expect(wakers.sleep(slot: slot, socket: pair[0], timeoutMilliseconds: 60_000) { false })
        #expect(monotonicNanoseconds() - t0 < 30_000_000_000)  // the socket, not the 60 s timeout
    }

    @Test("20,000 hand-offs between a publishing thread and a sleeper: no notify is lost (no sleep runs to its 5 s timeout)")
    func noLostWakeUp() {
        let (wakers, slot, pair) = Self.sleeper()
        defer { close(pair[0]); close(pair[1]) }
        let published = UnsafeMutablePointer<UInt64>.allocate(capacity: 3)
        published.initialize(repeating: 0, count: 3)  // [0] published, [1] seen by the sleeper, [2] give up
        defer { published.deallocate() }
        let rounds: UInt64 = 20_000
        let box = UInt(bitPattern: published), wakersBox = UInt(bitPattern: wakers.raw)
        // Waited for before the memory it uses goes (its last notify may come after the last
        // value the sleeper saw).
        let publisherDone = DispatchSemaphore(value: 0)
        let publisher = Thread {
            defer { publisherDone.signal() }
            let p = UnsafeMutablePointer<UInt64>(bitPattern: box)!
            let raw = UnsafeMutablePointer<cb_wakers>(bitPattern: wakersBox)!
            for i in 1...rounds {
                // Waits for the sleeper to have seen the last one, then publishes and notifies,
                // as a shard does after its journal moves.
                while cb_load_acquire_u64(p + 1) < i - 1 {
                    if cb_load_acquire_u64(p + 2) != 0 { return }
                    sched_yield()
                }
                cb_store_release_u64(p, i)
                cb_wakers_notify(raw)
            }
        }
        publisher.start()
        var longest: UInt64 = 0
        var sleeps = 0
        rounds: for i in 1...rounds {
            while cb_load_acquire_u64(published) < i {
                let t0 = monotonicNanoseconds()
                if wakers.sleep(slot: slot, socket: pair[0], timeoutMilliseconds: 5_000, unless: { cb_load_acquire_u64(published) >= i }) {
                    sleeps += 1
                    longest = max(longest, monotonicNanoseconds() - t0)
                    if longest > 4_500_000_000 { break rounds }  // lost: one is enough
                }
            }
            cb_store_release_u64(published + 1, i)
        }
        cb_store_release_u64(published + 2, 1)
        publisherDone.wait()
        #expect(longest < 4_500_000_000, "a sleep ran to its timeout: a notify was lost (\(sleeps) sleeps)")
        #expect(cb_load_acquire_u64(published + 1) == rounds)
    }
}
