// The standby's side of replication: it connects to the primary, says where each of its shards'
// journals ends (sequence and that record's CRC, so the primary can tell a prefix of its own
// journal from a diverged one), hands what arrives to the shards (Shard/Replica.swift), and
// acknowledges what their journals have made durable.
//
// Automatic failover (the two-node rule, ReplicationServer.swift): when the primary has been
// silent for `failoverAfter` (no message, no reconnect) and its last heartbeat said sync was
// engaged, the old primary cannot acknowledge anything this standby does not hold: the standby
// promotes itself. A standby that never saw sync engaged waits for an operator
// (`crossbook promote`).

import CSync
import Foundation
import Glibc
import Journal
import SharedMemory

final class ReplicationClient: @unchecked Sendable {
    struct Status {
        var connected = false
        var primary: String
        var primaryEpoch: UInt64 = 0
        /// The primary's instance name, from its welcome (nil: not heard yet).
        var primaryInstance: String?
        var engaged = false
        /// The primary's mode, from its welcome.
        var mode: ReplicationMode?
        /// Milliseconds since the primary was last heard (nil: never).
        var silentMilliseconds: UInt64?
        var refused: String?
        var reconnects = 0
        /// The key id of the secret the connection was authenticated with (nil: none).
        var keyId: String?
    }

    private let primary: ReplicationAddress
    private let inboxes: [ReplicaInbox]
    private let nudge: (Int) -> Void
    private let durable: (Int) -> UInt64
    /// It sleeps on these until one of its shards makes more durable (nil: it polls).
    private let wakers: JournalWakers?
    /// The pair's secrets (read at each connection): the primary proves it holds one, and every
    /// frame is encrypted under a key of the session (nil: not authenticated).
    private let secrets: ReplicationSecrets?
    private let configurationHash: UInt64
    private let epoch: UInt64
    private let failoverAfterNanoseconds: UInt64?
    /// With a lease: takes it (its epoch) or says another engine holds it (nil).
    private let leaseAcquire: (@Sendable () -> UInt64?)?
    private let promote: @Sendable (UInt64) -> Void
    /// The primary seeded shards from its snapshots (StandbySeed.swift): the engine stages them
    /// and starts again; this client's work is done.
    /// Returns why the seeds cannot be installed here (nil: staged, the engine starts again).
    private let reseed: @Sendable ([StandbySeed]) -> String?
    /// The primary said this standby's journal diverged: the cuts found (JournalCut, in
    /// StandbySeed.swift) go to the engine, which stages them and starts again.
    /// Returns why the cuts cannot be staged (nil: staged, the engine starts again).
    private let rewind: @Sendable ([JournalCut]) -> String?
    /// The CRC of this standby's own record at a sequence (nil: its journal does not hold it).
    private let localCrc: (Int, UInt64) -> UInt32?
    /// Seeds or cuts were staged: the engine starts again to install them; this client is done.
    private var installPending = false
    private let log: @Sendable (String) -> Void
    /// Told the primary's instance name at each welcome.
    private let named: (String) -> Void
    private var received: [UInt64]
    private var receivedCrc: [UInt32]
    private let lock = Lock()
    private var stopping = false
    private var current: ReplicationConnection?
    private var status: Status
    private var lastHeard: UInt64 = 0
    private let finished = Semaphore()
    private var running = false
    /// The primary handed over: this client's work is done (the promotion stops it).
    private var handedOver = false

    /// `positions`: where each shard's journal ends (sequence, CRC of that record).
    init(primary: ReplicationAddress, inboxes: [ReplicaInbox], positions: [(last: UInt64, crc: UInt32)],
         configurationHash: UInt64, epoch: UInt64, failoverAfterNanoseconds: UInt64?,
         leaseAcquire: (@Sendable () -> UInt64?)? = nil,
         nudge: @escaping (Int) -> Void, durable: @escaping (Int) -> UInt64,
         reseed: @escaping @Sendable ([StandbySeed]) -> String? = { _ in "seeding is not supported here" },
         rewind: @escaping @Sendable ([JournalCut]) -> String? = { _ in "cutting the journal back is not supported here" },
         localCrc: @escaping (Int, UInt64) -> UInt32? = { _, _ in nil },
         named: @escaping (String) -> Void = { _ in },
         wakers: JournalWakers? = nil, secrets: ReplicationSecrets? = nil,
         promote: @escaping @Sendable (UInt64) -> Void,
         log: @escaping @Sendable (String) -> Void) {
        self.wakers = wakers
        self.secrets = secrets
        self.named = named
        self.reseed = reseed
        self.rewind = rewind
        self.localCrc = localCrc
        self.primary = primary
        self.inboxes = inboxes
        received = positions.map(\.last)
        receivedCrc = positions.map(\.crc)
        self.configurationHash = configurationHash
        self.epoch = epoch
        self.failoverAfterNanoseconds = failoverAfterNanoseconds
        self.leaseAcquire = leaseAcquire
        self.nudge = nudge
        self.durable = durable
        self.promote = promote
        self.log = log
        status = Status(primary: primary.description)
        for (i, p) in positions.enumerated() { cb_store_release_u64(inboxes[i].applied, p.last) }
    }

    var currentStatus: Status {
        lock.locked {
            var s = status
            if lastHeard > 0 { s.silentMilliseconds = (monotonicNanoseconds() - lastHeard) / 1_000_000 }
            return s
        }
    }

    func start() {
        running = true
        let thread = Thread { [weak self] in
            self?.run()
            self?.finished.signal()
        }
        thread.name = "cb-repl-recv"
        thread.start()
    }

    /// Stops receiving (at promotion, or when the engine stops); returns once the thread is done.
    func stop() {
        let connection: ReplicationConnection? = lock.locked {
            stopping = true
            return current
        }
        connection?.shutdownNow()
        if running { _ = finished.wait(seconds: 5) }
        running = false
    }

    private var isStopping: Bool { lock.locked { stopping } }

    private func run() {
        _ = cb_set_timer_slack_ns(1)  // its short sleeps are on the acknowledgement path
        var silentSince = monotonicNanoseconds()
        var loggedDown = false
        while !isStopping {
            if let alarm = inboxes.lazy.compactMap(\.alarm).first {
                // Never promoted, never fed again: an operator rebuilds this standby.
                lock.locked { status.refused = "stopped: \(alarm)" }
                return log("replication: ALARM: \(alarm); this standby stops following and will not promote")
            }
            if let reason = stream(onHeard: { silentSince = monotonicNanoseconds() }) {
                if !loggedDown { log("replication: primary \(primary): \(reason)") }
                loggedDown = true
            } else {
                loggedDown = false
            }
            if isStopping || lock.locked({ handedOver || installPending }) { return }
            lock.locked { status.connected = false }
            // The two-node rule: an engaged primary silent this long cannot acknowledge anything.
            let now = monotonicNanoseconds()
            let (engaged, theirEpoch, mode) = lock.locked { (status.engaged, status.primaryEpoch, status.mode) }
            if let after = failoverAfterNanoseconds, now - silentSince >= after {
                if let leaseAcquire {
                    // With a lease, the lease decides: the old primary stops acknowledging before
                    // its lease can expire, and only one engine gets it. In sync mode only a
                    // standby of an engaged primary holds every acknowledged order: RPO 0.
                    if mode != .sync || engaged, let leased = leaseAcquire() {
                        log("replication: the primary has been silent \((now - silentSince) / 1_000_000) ms and this standby took the lease (epoch \(leased)): promoting it")
                        promote(max(leased, max(epoch, theirEpoch) + 1))
                        return
                    }
                } else if engaged {
                    log("replication: the primary has been silent \((now - silentSince) / 1_000_000) ms and sync was engaged: promoting this standby")
                    let next = max(epoch, theirEpoch) + 1
                    promote(next)
                    return
                }
            }
            usleep(50_000)
        }
    }

    /// Per shard, the last sequence where this journal and the primary's hold the same record
    /// (a bisection: records agree up to the divergence and differ from it on); the cuts of the
    /// shards whose journal goes beyond it.
    private func findCommonPrefix(_ connection: ReplicationConnection) throws(ReplicationError) -> [JournalCut] {
        var probes = 0
        func theirs(_ shard: Int, _ sequence: UInt64) throws(ReplicationError) -> UInt32? {
            probes += 1
            let most = ReplicationMessage.maxProbes(shards: inboxes.count)
            guard probes <= most else { throw .protocol("more than \(most) probes") }
            try connection.send(.probe(shard: shard, sequence: sequence))
            let deadline = monotonicNanoseconds() + 5_000_000_000
            while monotonicNanoseconds() < deadline && !isStopping {
                guard let answer = try connection.receive(timeoutMilliseconds: 100) else { continue }
                guard case .probed(let s, let q, let crc) = answer, s == shard, q == sequence else {
                    throw .protocol("an answer to the probe of shard \(shard) sequence \(sequence) that is not one")
                }
                return crc
            }
            throw .closed("no answer to a probe in 5 s")
        }
        var cuts: [JournalCut] = []
        for shard in 0..<inboxes.count {
            let last = received[shard]
            guard last > 0 else { continue }
            if let mine = localCrc(shard, last), try theirs(shard, last) == mine { continue }
            // Agree at `low` (0: nothing), differ at `high`.
            var low: UInt64 = 0, high = last
            while high - low > 1 {
                let mid = low + (high - low) / 2
                guard let mine = localCrc(shard, mid) else {
                    throw .protocol("this journal no longer holds its own record \(mid) of shard \(shard) (pruned)")
                }
                if try theirs(shard, mid) == mine { low = mid } else { high = mid }
            }
            cuts.append(JournalCut(shard: shard, after: low))
        }
        return cuts
    }

    /// The seed parts after the first, up to `seeded`, checked: shards that exist, each once, its
    /// parts in order and whole, within `StandbySeed.maxBytes`, each a record of its sequence.
    private func receiveSeeds(_ connection: ReplicationConnection, first: ReplicationMessage) throws(ReplicationError) -> [StandbySeed] {
        var parts: [Int: (sequence: UInt64, total: UInt64, bytes: [UInt8])] = [:]
        var finished: [Int] = []
        var message: ReplicationMessage? = first
        while true {
            guard let m = message else { throw .protocol("the primary went silent while seeding") }
            switch m {
            case .seed(let shard, let sequence, let total, let offset, let bytes):
                guard shard >= 0, shard < inboxes.count else { throw .protocol("a seed for shard \(shard), which does not exist") }
                guard total <= StandbySeed.maxBytes, total > 0 else { throw .protocol("a seed of \(total) bytes") }
                guard !finished.contains(shard) else { throw .protocol("a second seed for shard \(shard)") }
                var part = parts[shard] ?? (sequence, total, [])
                guard part.sequence == sequence, part.total == total, offset == UInt64(part.bytes.count),
                      UInt64(part.bytes.count) + UInt64(bytes.count) <= total else {
                    throw .protocol("a seed part of shard \(shard) out of order (sequence \(sequence), offset \(offset), \(bytes.count) bytes)")
                }
                part.bytes.append(contentsOf: bytes)
                if UInt64(part.bytes.count) == total {
                    finished.append(shard)
                }
                parts[shard] = part
            case .seeded:
                guard !finished.isEmpty, finished.count == parts.count else { throw .protocol("seeding ended with a seed cut short (or none)") }
                var seeds: [StandbySeed] = []
                for shard in finished {
                    let part = parts[shard]!
                    seeds.append(try StandbySeed.parse(shard: shard, sequence: part.sequence, payload: part.bytes))
                }
                return seeds
            default:
                throw .protocol("unexpected message while seeding")
            }
            // Each part within 10 s of the one before.
            message = nil
            let deadline = monotonicNanoseconds() + 10_000_000_000
            while message == nil && monotonicNanoseconds() < deadline && !isStopping {
                message = try connection.receive(timeoutMilliseconds: 100)
            }
            if isStopping { throw .closed("the standby is stopping") }
        }
    }

    /// One connection: hello, then records until it breaks. Returns why it ended (nil: stopping).
    private func stream(onHeard: () -> Void) -> String? {
        let connection: ReplicationConnection
        do { connection = try ReplicationConnection.connect(to: primary, timeoutMilliseconds: 500) } catch {
            return "\(error)"
        }
        let go: Bool = lock.locked {
            guard !stopping else { return false }
            current = connection
            return true
        }
        guard go else { return nil }
        defer { lock.locked { current = nil } }
        let positions = zip(received, receivedCrc).map { ReplicationMessage.ShardPosition(last: $0.0, crc: $0.1) }
        var acked = received
        do {
            var held: [[UInt8]] = []
            if let secrets {
                do { held = try secrets.read() } catch {
                    lock.locked { status.refused = "cannot read this standby's secret: \(error)" }
                    return "cannot read this standby's secret: \(error)"
                }
            }
            let mine = secrets.map { _ in ReplicationAuth.nonce() }
            let hello = ReplicationMessage.hello(epoch: epoch, configuration: configurationHash, shards: positions, nonce: mine,
                                                 keyIds: held.map(ReplicationAuth.keyId))
            try connection.send(hello)
            var answer: ReplicationMessage?
            var deadline = monotonicNanoseconds() + 1_000_000_000
            while answer == nil && monotonicNanoseconds() < deadline && !isStopping {
                answer = try connection.receive(timeoutMilliseconds: 100)
            }
            if secrets != nil, let mine {
                // The primary proves it holds one of the secrets first; a standby never follows one that does not.
                switch answer {
                case .proof(let theirs, let tag)?:
                    let sent = hello.encode()
                    guard let secret = held.first(where: {
                        ReplicationAuth.equal(tag, ReplicationAuth.proof($0, primary: true, standbyNonce: mine, primaryNonce: theirs, hello: sent))
                    }) else {
                        lock.locked { status.refused = "authentication failed: the primary does not hold this standby's secret" }
                        return "authentication failed: the primary at \(primary) did not prove it holds this standby's secret: not followed"
                    }
                    try connection.send(.proof(nonce: [UInt8](repeating: 0, count: ReplicationAuth.nonceSize),
                                               tag: ReplicationAuth.proof(secret, primary: false, standbyNonce: mine, primaryNonce: theirs, hello: sent)))
                    connection.authenticate(key: ReplicationAuth.sessionKey(secret, standbyNonce: mine, primaryNonce: theirs), primary: false)
                    lock.locked { status.keyId = ReplicationAuth.hex(ReplicationAuth.keyId(secret)) }
                    answer = nil
                    deadline = monotonicNanoseconds() + 1_000_000_000
                    while answer == nil && monotonicNanoseconds() < deadline && !isStopping {
                        answer = try connection.receive(timeoutMilliseconds: 100)
                    }
                case .refuse(let why)?:
                    lock.locked { status.refused = why }
                    return "refused: \(why)"
                case nil:
                    return isStopping ? nil : "no answer to the hello in 1 s"
                default:
                    lock.locked { status.refused = "the primary does not authenticate itself" }
                    return "the primary at \(primary) did not authenticate itself (no [replication] secret_file there?): not followed"
                }
            } else if case .proof? = answer {
                lock.locked { status.refused = "the primary authenticates its standbys: this one has no secret" }
                return "the primary at \(primary) authenticates its standbys: give this standby the pair's [replication] secret_file"
            }
            switch answer {
            case .welcome(let theirEpoch, let mode, let theirName)?:
                guard theirEpoch >= epoch else {
                    return "the primary is at epoch \(theirEpoch), this standby has seen \(epoch): it is not the current primary"
                }
                // Kept first: whoever sees this standby connected finds the name on disk.
                named(theirName)
                lock.locked {
                    status.connected = true
                    status.mode = mode
                    status.primaryEpoch = theirEpoch
                    status.primaryInstance = theirName
                    status.refused = nil
                    status.reconnects += 1
                    lastHeard = monotonicNanoseconds()
                }
                onHeard()
                log("replication: following primary \(theirName) at \(primary) (epoch \(theirEpoch), \(mode.rawValue)) from sequences \(received.map(String.init).joined(separator: ","))")
            case .refuse(let why)?:
                lock.locked { status.refused = why }
                return "refused: \(why)"
            case .diverged(let shard, let last)?:
                let cuts: [JournalCut]
                do { cuts = try findCommonPrefix(connection) } catch {
                    lock.locked { status.refused = "diverged at shard \(shard), sequence \(last): \(error)" }
                    return "this standby's journal has diverged from the primary's (shard \(shard), sequence \(last)) and the common prefix was not found: \(error); rebuild it (crossbook run --standby --rebuild)"
                }
                guard !cuts.isEmpty else { return "the primary said this journal diverged, but every record probed is the primary's" }
                if let why = rewind(cuts) {
                    // Not staged (a full disk, say): it cannot follow, and must not be promoted
                    // with records the new primary never had.
                    inboxes.first?.raise("this standby's journal holds records the primary never had, and the cut back to the common prefix cannot be staged: \(why)")
                    return "cutting the journal back failed: \(why)"
                }
                log("replication: this standby's journal holds records the primary never had (an old primary): cutting it back after \(cuts.map { "shard \($0.shard): \($0.after) (\(received[$0.shard] - $0.after) records)" }.joined(separator: ", ")); starting again from there")
                lock.locked {
                    installPending = true
                    status.refused = "diverged: cutting the journal back to the primary's, starting again"
                }
                return nil
            case .seed?, .seeded?:
                let seeds: [StandbySeed]
                do { seeds = try receiveSeeds(connection, first: answer!) } catch {
                    lock.locked { status.refused = "seeding: \(error)" }
                    return "seeding from the primary's snapshots failed: \(error)"
                }
                if let why = reseed(seeds) {
                    // It cannot follow without them, and must not be promoted this far behind.
                    inboxes.first?.raise("the primary no longer holds the records this standby needs, and its snapshots cannot be installed here: \(why)")
                    return "seeding from the primary's snapshots failed: \(why)"
                }
                log("replication: the primary no longer holds the records after this standby's journal: seeded from its snapshots of shard(s) \(seeds.map { "\($0.shard) at \($0.sequence)" }.joined(separator: ", ")); starting again from them")
                lock.locked {
                    installPending = true
                    status.refused = "seeded from the primary's snapshots: starting again"
                }
                return nil
            case nil:
                return isStopping ? nil : "no answer to the hello in 1 s"
            default:
                return "unexpected answer to the hello"
            }
            let slot = wakers?.take()
            defer { if let slot { wakers?.give(slot) } }
            while !isStopping {
                let outstanding = (0..<inboxes.count).contains { acked[$0] < received[$0] }
                if let message = try connection.receive(timeoutMilliseconds: outstanding ? 0 : 20) {
                    let now = monotonicNanoseconds()
                    lock.locked { lastHeard = now }
                    onHeard()
                    switch message {
                    case .records(let shard, let upTo, let bytes):
                        guard shard >= 0, shard < inboxes.count else { return "records for shard \(shard), which does not exist" }
                        // Where the chunk ends (the shard checks every record again as it applies it).
                        var at = 0
                        var last = received[shard], crc = receivedCrc[shard]
                        let problem: String? = bytes.withUnsafeBytes { raw in
                            while at < raw.count {
                                switch JournalRecordBytes.check(UnsafeRawBufferPointer(rebasing: raw[at...])) {
                                case .failure(let why): return "\(why)"
                                case .success(let record):
                                    last = record.sequence
                                    crc = JournalRecordBytes.crc(UnsafeRawBufferPointer(rebasing: raw[at...]))
                                    at += record.size
                                }
                            }
                            return nil
                        }
                        if let problem { return "a bad record from the primary: \(problem)" }
                        inboxes[shard].push(.records(bytes))
                        received[shard] = max(received[shard], last)
                        if last == received[shard] { receivedCrc[shard] = crc }
                        cb_store_release_u64(inboxes[shard].primaryDurable, upTo)
                        nudge(shard)
                    case .digest(let shard, let sequence, let value):
                        guard shard >= 0, shard < inboxes.count else { return "a digest for shard \(shard), which does not exist" }
                        inboxes[shard].push(.digest(sequence: sequence, digest: value))
                        nudge(shard)
                    case .heartbeat(let theirEpoch, let engaged, let upTo):
                        guard upTo.count == inboxes.count else { return "a heartbeat for \(upTo.count) shards" }
                        guard theirEpoch >= epoch else { return "the primary went back to epoch \(theirEpoch)" }
                        lock.locked {
                            status.engaged = engaged
                            status.primaryEpoch = theirEpoch
                        }
                        for (i, d) in upTo.enumerated() { cb_store_release_u64(inboxes[i].primaryDurable, d) }
                    case .handover(let theirEpoch):
                        // A planned switchover: everything the primary made durable is here.
                        guard theirEpoch > epoch else { return "a handover to epoch \(theirEpoch), not above \(epoch)" }
                        log("replication: the primary hands over (planned switchover): promoting this standby at epoch \(theirEpoch)")
                        lock.locked { handedOver = true }
                        promote(theirEpoch)
                        return nil
                    default:
                        return "unexpected message from the primary"
                    }
                } else if outstanding {
                    if let slot, let wakers {
                        // Until a shard makes more durable or the primary says something.
                        wakers.sleep(slot: slot, socket: connection.fd, timeoutMilliseconds: 20) {
                            (0..<inboxes.count).contains { min(durable($0), received[$0]) > acked[$0] }
                                || inboxes.contains { $0.alarm != nil }
                        }
                    } else {
                        usleep(30)
                    }
                }
                for shard in 0..<inboxes.count {
                    let d = min(durable(shard), received[shard])
                    if d > acked[shard] {
                        try connection.send(.ack(shard: shard, durable: d))
                        acked[shard] = d
                    }
                }
                if let alarm = inboxes.lazy.compactMap(\.alarm).first {
                    return "the standby stopped applying: \(alarm)"
                }
                // Heartbeats come every 100 ms: a connection silent this long is dead (a cut
                // network sends no FIN).
                let silence = min(failoverAfterNanoseconds ?? 1_000_000_000, 1_000_000_000)
                if monotonicNanoseconds() - lock.locked({ lastHeard }) > silence {
                    return "silent for \(silence / 1_000_000) ms"
                }
            }
        } catch {
            return "\(error)"
        }
        return nil
    }
}
