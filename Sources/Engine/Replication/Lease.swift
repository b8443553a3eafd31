// Leadership as a lease with a fencing epoch, taken through a plugin (cb_lease_ops; redis-routing's
// is a Redis key): the third party the two-node rule does without (Engine+Replication.swift,
// README "Hot standby and failover").
//
//   key <lease>        = the holder (instance, pid, random), with a ttl: who may acknowledge
//   key <lease>:epoch  = a counter, incremented by each new holder: the fencing token, journaled
//                        by the holder in every shard (an epoch admin record)
//
// In redis-routing both changes are one Lua script each (atomic in Redis): two engines racing
// for the lease cannot both get it, and each new holder gets a higher epoch.
//
// The timing rule. A holder renews every ttl/3. A renewal sent at monotonic time t that
// succeeds extends the lease to at least t + ttl in the third party's clock (Redis sets the
// expiry when it runs the script, after t: the one promise cb_lease_ops asks of a plugin). The
// holder releases output (OutputGate.leaseUntil) only before t + ttl − margin, margin =
// max(ttl/10, 50 ms) for the two clocks' rates: it stops acknowledging before the lease can
// expire, and so before anyone else can acquire it. A holder whose renewal finds the lease gone
// or someone else's is deposed: it never acknowledges again (restart it as a standby). A renewal
// that learns nothing (the third party unreachable, no answer in min(2 s, ttl)) leaves the
// deadline where it was: acknowledgements stop when it passes, and resume with the next success.

import CSync
import Foundation
import Glibc
import SharedMemory

/// The lease as one engine sees it: acquire (standby at promotion, primary at start), then a
/// thread that renews it and moves the output gates' deadline.
final class LeaseKeeper: @unchecked Sendable {
    /// The lease's key (`[replication] lease`).
    let key: String
    let lease: PluginLease
    let ttlMilliseconds: Int
    let holder: String
    /// Where the output gates read the deadline (monotonic ns): nothing is released at or after it.
    let until: UnsafeMutablePointer<UInt64>
    private let log: @Sendable (String) -> Void
    private let lock = Lock()
    private var stopping = false
    private var deposed = false
    private let finished = Semaphore()
    private var running = false

    init(key: String, lease: PluginLease, ttlMilliseconds: Int, instance: String, log: @escaping @Sendable (String) -> Void) {
        self.key = key
        self.lease = lease
        self.ttlMilliseconds = ttlMilliseconds
        holder = "\(instance)/\(getpid())/\(UInt64.random(in: 1...UInt64.max))"
        self.log = log
        until = cacheAligned(UInt64.self, count: 1)
        until.initialize(to: 0)  // nothing released before the lease is held
    }

    deinit { until.deallocate() }

    var marginNanoseconds: UInt64 { UInt64(max(ttlMilliseconds / 10, 50)) * 1_000_000 }
    var isDeposed: Bool { lock.locked { deposed } }

    /// Takes the lease if it is free (or already this holder's): its epoch, or nil when another
    /// engine holds it. Sets the gates' deadline on success.
    func acquire() throws(ReplicationError) -> UInt64? {
        let t0 = monotonicNanoseconds()
        switch lease.acquire(key: key, holder: holder, ttlMilliseconds: ttlMilliseconds) {
        case .held(let epoch):
            guard epoch > 0 else { throw .protocol("lease \(key): plugin \(lease.name) gave epoch 0") }
            cb_store_release_u64(until, t0 + UInt64(ttlMilliseconds) * 1_000_000 - marginNanoseconds)
            return epoch
        case .lost:
            return nil
        case .unknown(let why):
            throw .closed("plugin \(lease.name): \(why)")
        }
    }

    /// Renews every ttl/3 until stopped or deposed.
    func start() {
        running = true
        let thread = Thread { [weak self] in
            self?.renewLoop()
            self?.finished.signal()
        }
        thread.name = "cb-lease"
        thread.start()
    }

    /// Stops renewing and closes the plugin's lease (a held lease is left to expire).
    func stop() {
        lock.locked { stopping = true }
        if running { _ = finished.wait(seconds: 5) }
        running = false
        lease.close()
    }

    private func renewLoop() {
        _ = cb_set_timer_slack_ns(1)
        let period = UInt64(ttlMilliseconds) * 1_000_000 / 3
        var failing = false
        while !lock.locked({ stopping }) {
            let t0 = monotonicNanoseconds()
            switch lease.renew(key: key, holder: holder, ttlMilliseconds: ttlMilliseconds) {
            case .held:
                cb_store_release_u64(until, t0 + UInt64(ttlMilliseconds) * 1_000_000 - marginNanoseconds)
                if failing { log("lease \(key): renewed again") }
                failing = false
            case .lost(let why):
                cb_store_release_u64(until, 0)
                lock.locked { deposed = true }
                return log("lease \(key): lost (\(why)): this engine no longer acknowledges anything; restart it as a standby")
            case .unknown(let why):
                if !failing {
                    log("lease \(key): cannot renew (\(why)); acknowledgements stop in \((cb_load_acquire_u64(until) &- min(cb_load_acquire_u64(until), monotonicNanoseconds())) / 1_000_000) ms unless a renewal succeeds")
                }
                failing = true
            }
            let elapsed = monotonicNanoseconds() - t0
            if elapsed < period {
                var pause = timespec(tv_sec: Int((period - elapsed) / 1_000_000_000), tv_nsec: Int((period - elapsed) % 1_000_000_000))
                // Wake early if stopping: sleep in slices of at most 50 ms.
                while pause.tv_sec > 0 || pause.tv_nsec > 0, !lock.locked({ stopping }) {
                    let slice = min(Int(pause.tv_sec) * 1_000_000_000 + pause.tv_nsec, 50_000_000)
                    var s = timespec(tv_sec: 0, tv_nsec: slice)
                    nanosleep(&s, nil)
                    let left = Int(pause.tv_sec) * 1_000_000_000 + pause.tv_nsec - slice
                    pause = timespec(tv_sec: left / 1_000_000_000, tv_nsec: left % 1_000_000_000)
                }
            }
        }
    }
}
