// The primary's side of replication: it listens for standbys and streams each one its shards'
// journals, batch by batch as they become durable (read back from the segments, so a standby
// that connects late or falls behind catches up from the same code), with the state digest of
// each shard every `digestEvery` and a heartbeat every 100 ms.
//
// Sync mode and the two-node rule. Until a standby has caught up (acknowledged, for every shard,
// everything durable here), the primary runs alone: output is released on local durability,
// and the heartbeat says "not engaged". Once one has, sync is engaged for the rest of this
// process's life: output is released only up to what a standby has confirmed durable
// (`cap`, read by every shard's output gate). A primary cut off from its standby then stops
// acknowledging; it never goes back to running alone. That is what lets an engaged standby
// promote itself when the primary falls silent (ReplicationClient.swift) without two primaries
// ever acknowledging: the old one cannot acknowledge without it.
//
// Several standbys: `syncStandbys` (K, `sync_standbys`) of the connected ones must confirm a
// record before its output is released: the cap is the K-th highest confirmation, and sync
// engages once K standbys have each caught up. With K equal to the number of standbys that
// may be promoted, whichever wins the lease holds every acknowledged order; with fewer
// connected than K, output waits.

import CSync
import Foundation
import Glibc
import Journal
import SharedMemory

final class ReplicationServer: @unchecked Sendable {
    struct Standby {
        var peer: String
        var acked: [UInt64]
        var sent: [UInt64]
        /// The key id of the secret this connection was authenticated with (nil: none).
        var keyId: String? = nil
    }

    let address: ReplicationAddress
    /// This engine's instance name, told to each standby in its welcome.
    let instance: String
    let mode: ReplicationMode
    private let shardCount: Int
    private let dataDirectory: String
    private let configurationHash: UInt64
    private let epoch: UInt64
    private let durable: (Int) -> UInt64
    /// Per shard, the highest sequence written to the journal's file (sent before it is durable:
    /// the standby's fdatasync then runs beside this one's, not after it).
    private let written: (Int) -> UInt64
    private let digest: (Int) -> (sequence: UInt64, digest: UInt64)?
    /// A shard's seed for a standby whose position this journal no longer holds: the newest
    /// snapshot of this journal and its record (StandbySeed.swift); nil when there is none.
    private let seed: (Int) -> StandbySeed?
    private let log: @Sendable (String) -> Void
    /// Rings shard i's doorbell: its output waits for the cap raised just before.
    private let ring: (Int) -> Void
    /// The sender sleeps on these until a shard's journal moves (nil: it polls).
    private let wakers: JournalWakers?
    /// The pair's secrets (read at each standby's handshake): each standby proves it holds one,
    /// and every frame is encrypted under a key of the session (nil: not authenticated).
    private let secrets: ReplicationSecrets?
    private let digestEveryNanoseconds: UInt64
    /// Per shard: the highest sequence the output gates may release (sync mode).
    let cap: UnsafeMutablePointer<UInt64>
    /// How many standbys must confirm a record (see above).
    let syncStandbys: Int
    /// 1 once sync is engaged (see above).
    private let engagedFlag: UnsafeMutablePointer<UInt32>
    private var listener: Int32 = -1
    private let lock = Lock()
    private var standbys: [Int: Standby] = [:]
    private var connections: [Int: ReplicationConnection] = [:]
    private var nextId = 0
    static let maxConnections = 8
    /// Connections closed at once because `maxConnections` were open.
    private var turnedAway = 0
    var connectionsTurnedAway: Int { lock.locked { turnedAway } }
    private var stopping = false
    private var acceptThread: Thread?
    private var threads = 0
    /// The connection threads running now (at most `maxConnections`).
    var connectionThreads: Int { lock.locked { threads } }
    private let threadsDone = Semaphore()
    /// Per shard, the highest sequence any standby has confirmed (kept when it goes): the lag
    /// is the durable sequence minus this.
    private var bestAcked: [UInt64]
    /// A planned switchover: the epoch to hand to the first caught-up standby, and whether it went.
    private var handover: (epoch: UInt64, through: [UInt64])?
    private(set) var handedOver = false
    /// Refused standbys and why (the last few), for the operator.
    private var refusals: [String] = []

    init(address: ReplicationAddress, instance: String, mode: ReplicationMode, shards: Int, dataDirectory: String, configurationHash: UInt64,
         epoch: UInt64, cap: UnsafeMutablePointer<UInt64>, syncStandbys: Int = 1, digestEveryNanoseconds: UInt64,
         durable: @escaping (Int) -> UInt64, written: @escaping (Int) -> UInt64, digest: @escaping (Int) -> (sequence: UInt64, digest: UInt64)?,
         seed: @escaping (Int) -> StandbySeed? = { _ in nil },
         ring: @escaping (Int) -> Void = { _ in }, wakers: JournalWakers? = nil, secrets: ReplicationSecrets? = nil,
         log: @escaping @Sendable (String) -> Void) {
        self.secrets = secrets
        self.seed = seed
        self.ring = ring
        self.wakers = wakers
        self.address = address
        self.instance = instance
        self.mode = mode
        shardCount = shards
        self.dataDirectory = dataDirectory
        self.configurationHash = configurationHash
        self.epoch = epoch
        self.cap = cap
        self.syncStandbys = max(1, syncStandbys)
        self.durable = durable
        self.written = written
        self.digest = digest
        self.log = log
        self.digestEveryNanoseconds = digestEveryNanoseconds
        bestAcked = Array(repeating: 0, count: shards)
        engagedFlag = cacheAligned(UInt32.self, count: 1)
        engagedFlag.initialize(to: 0)
        // Alone until a standby catches up: the gates release on local durability.
        for i in 0..<shards { cb_store_release_u64(cap + i, .max) }
    }

    deinit { engagedFlag.deallocate() }

    var engaged: Bool { cb_load_acquire_u32(engagedFlag) != 0 }

    /// Asks the serving threads to hand over to the first standby that has confirmed every
    /// record durable here (the caller has stopped the shards taking commands).
    /// `through`: each shard's last sequenced command (the standby must hold them all); nil cancels.
    func requestHandover(_ request: (epoch: UInt64, through: [UInt64])?) {
        lock.locked { handover = request }
        wakers?.wakeAll()
    }
    var hasHandedOver: Bool { lock.locked { handedOver } }

    /// The standbys connected now.
    var connected: [Standby] { lock.locked { Array(standbys.values) } }
    var lastRefusals: [String] { lock.locked { refusals } }
    /// Per shard, the records durable here that no standby has confirmed.
    var lag: [UInt64] {
        let best = lock.locked { bestAcked }
        return (0..<shardCount).map { let d = durable($0); return d &- min(d, best[$0]) }
    }

    func start() throws(ReplicationError) {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw .system("socket: \(String(cString: strerror(errno)))") }
        var one: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        var a = address.sockaddr
        let rc = withUnsafePointer(to: &a) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        guard rc == 0, listen(fd, 8) == 0 else {
            let why = String(cString: strerror(errno))
            close(fd)
            throw .system("replication: cannot listen on \(address): \(why)")
        }
        listener = fd
        let thread = Thread { [weak self] in self?.acceptLoop() }
        thread.name = "cb-repl-accept"
        acceptThread = thread
        thread.start()
    }

    func stop() {
        let open: [ReplicationConnection] = lock.locked {
            stopping = true
            return Array(connections.values)
        }
        if listener >= 0 { shutdown(listener, Int32(SHUT_RDWR)) }
        for c in open { c.shutdownNow() }
        // Every connection thread ends within its poll timeout.
        let running = lock.locked { threads }
        for _ in 0..<running { _ = threadsDone.wait(seconds: 2) }
        if listener >= 0 { close(listener) }
        listener = -1
    }

    private func acceptLoop() {
        while !lock.locked({ stopping }) {
            var p = pollfd(fd: listener, events: Int16(POLLIN), revents: 0)
            guard poll(&p, 1, 100) == 1 else { continue }
            var peer = sockaddr_in()
            var length = socklen_t(MemoryLayout<sockaddr_in>.size)
            let fd = withUnsafeMutablePointer(to: &peer) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { accept(listener, $0, &length) }
            }
            if fd < 0 { continue }
            var text = [CChar](repeating: 0, count: 32)
            inet_ntop(AF_INET, &peer.sin_addr, &text, 32)
            let name = "\(String(cString: text)):\(UInt16(bigEndian: peer.sin_port))"
            let connection = ReplicationConnection(fd: fd, peer: name)
            let id: Int? = lock.locked {
                // A thread per connection, so a bounded number of them: connections that say
                // nothing cannot pile up threads (each has 5 s to say hello).
                guard !stopping, threads < Self.maxConnections else { return nil }
                nextId += 1
                connections[nextId] = connection
                threads += 1
                return nextId
            }
            guard let id else {
                lock.locked { turnedAway += 1 }
                continue  // the connection closes as it goes
            }
            let thread = Thread { [weak self] in
                guard let self else { return }
                self.serve(id, connection)
                self.lock.locked {
                    self.connections[id] = nil
                    self.standbys[id] = nil
                    self.threads -= 1
                }
                self.threadsDone.signal()
            }
            thread.name = "cb-repl-send"
            thread.start()
        }
    }

    private func refuse(_ connection: ReplicationConnection, _ why: String) {
        log("replication: refused standby \(connection.peer): \(why)")
        lock.locked {
            refusals.append("\(connection.peer): \(why)")
            if refusals.count > 8 { refusals.removeFirst() }
        }
        try? connection.send(.refuse(why))
    }

    /// One standby: check its hello, then stream until it goes or the engine stops.
    private func serve(_ id: Int, _ connection: ReplicationConnection) {
        _ = cb_set_timer_slack_ns(1)  // its short sleeps are on the acknowledgement path
        let hello: ReplicationMessage?
        do {
            let deadline = monotonicNanoseconds() + 5_000_000_000
            var got: ReplicationMessage?
            while got == nil && monotonicNanoseconds() < deadline && !lock.locked({ stopping }) {
                got = try connection.receive(timeoutMilliseconds: 100)
            }
            hello = got
        } catch {
            return log("replication: standby \(connection.peer): \(error)")
        }
        guard case .hello(let theirEpoch, let configuration, let positions, let theirNonce, let theirKeys)? = hello else {
            return refuse(connection, "expected a hello first")
        }
        var keyId: String?
        if let secrets {
            guard let theirNonce else {
                return refuse(connection, "this primary authenticates its standbys: give the standby the pair's [replication] secret_file")
            }
            // The secret both hold, in the standby's order (a rotation: either may be ahead).
            let mineNow: [[UInt8]]
            do { mineNow = try secrets.read() } catch {
                log("replication: standby \(connection.peer) not served: this primary cannot read its secret: \(error)")
                return refuse(connection, "this primary cannot read its own secret now (see its log)")
            }
            guard let secret = theirKeys.lazy.compactMap({ id in mineNow.first { ReplicationAuth.keyId($0) == id } }).first else {
                return refuse(connection, "authentication failed: the standby's secrets (key ids \(theirKeys.map(ReplicationAuth.hex).joined(separator: ", "))) are none of this primary's (\(mineNow.map { ReplicationAuth.hex(ReplicationAuth.keyId($0)) }.joined(separator: ", ")))")
            }
            let mine = ReplicationAuth.nonce()
            let sent = hello!.encode()
            do {
                try connection.send(.proof(nonce: mine, tag: ReplicationAuth.proof(secret, primary: true, standbyNonce: theirNonce, primaryNonce: mine, hello: sent)))
                var answer: ReplicationMessage?
                let deadline = monotonicNanoseconds() + 5_000_000_000
                while answer == nil && monotonicNanoseconds() < deadline && !lock.locked({ stopping }) {
                    answer = try connection.receive(timeoutMilliseconds: 100)
                }
                let expected = ReplicationAuth.proof(secret, primary: false, standbyNonce: theirNonce, primaryNonce: mine, hello: sent)
                guard case .proof(_, let tag)? = answer, ReplicationAuth.equal(tag, expected) else {
                    return refuse(connection, "authentication failed: the standby did not prove it holds this primary's secret")
                }
            } catch {
                return log("replication: standby \(connection.peer): authentication: \(error)")
            }
            connection.authenticate(key: ReplicationAuth.sessionKey(secret, standbyNonce: theirNonce, primaryNonce: mine), primary: true)
            keyId = ReplicationAuth.hex(ReplicationAuth.keyId(secret))
            log("replication: standby \(connection.peer) authenticated with the secret of key id \(keyId!)")
        } else if theirNonce != nil {
            return refuse(connection, "the standby authenticates, and this primary has no [replication] secret_file: give both engines the pair's secret")
        }
        guard positions.count == shardCount else {
            return refuse(connection, "the standby has \(positions.count) shards, this primary \(shardCount)")
        }
        guard configuration == configurationHash else {
            return refuse(connection, "the standby's configuration (symbols, shards, book capacity) differs from the primary's")
        }
        guard theirEpoch <= epoch else {
            // A standby that has seen a later primary: this one has been deposed.
            return refuse(connection, "the standby has seen epoch \(theirEpoch), this primary is at epoch \(epoch): this primary has been replaced")
        }
        // A standby whose next records this journal no longer holds (pruned after a snapshot)
        // is seeded from the snapshot instead, and starts again.
        let gone = positions.enumerated().filter { shard, position in
            (JournalReader.firstKept(directory: dataDirectory, shard: shard) ?? 1) > position.last + 1
        }.map(\.offset)
        if !gone.isEmpty { return sendSeeds(connection, shards: gone, positions: positions) }
        // The standby's journal must be a prefix of this one: the record at its last sequence
        // is the same (same CRC), and it holds nothing this journal does not.
        for (shard, position) in positions.enumerated() where position.last > 0 {
            let mine = max(durable(shard), written(shard))
            let record = (try? JournalReader.record(directory: dataDirectory, shard: shard, sequence: position.last)) ?? nil
            if position.last > mine || record?.crc != position.crc {
                // An old primary coming back: it holds records this one never had. It finds
                // the common prefix by probing, cuts its journal back to it and connects again.
                return answerProbes(connection, shard: shard, last: position.last)
            }
        }
        do { try connection.send(.welcome(epoch: epoch, mode: mode, instance: instance)) } catch {
            return log("replication: standby \(connection.peer): \(error)")
        }
        let tails = positions.enumerated().map { JournalTail(directory: dataDirectory, shard: $0.offset, after: $0.element.last) }
        var state = Standby(peer: connection.peer, acked: positions.map(\.last), sent: positions.map(\.last), keyId: keyId)
        lock.locked {
            standbys[id] = state
            for i in 0..<shardCount { bestAcked[i] = max(bestAcked[i], state.acked[i]) }
        }
        // A standby that already holds everything durable here engages sync at once.
        if mode == .sync { confirm() }
        log("replication: standby \(connection.peer) connected (\(mode.rawValue)) from sequences \(positions.map { String($0.last) }.joined(separator: ","))")
        var lastHeartbeat: UInt64 = 0
        var lastDigest = monotonicNanoseconds()
        var buffer: [UInt8] = []
        buffer.reserveCapacity(1 << 20)
        let slot = wakers?.take()
        defer { if let slot { wakers?.give(slot) } }
        var handoverWaits = false
        do {
            while !lock.locked({ stopping }) {
                var work = 0
                for shard in 0..<shardCount {
                    let upTo = max(durable(shard), written(shard))
                    if tails[shard].position >= upTo { continue }
                    buffer.removeAll(keepingCapacity: true)
                    let n: Int
                    do { n = try tails[shard].read(upTo: upTo, maxBytes: 1 << 20, into: &buffer) } catch .removed(let after, let first) {
                        // Pruned while the standby was behind: it connects again and is seeded.
                        return refuse(connection, "shard \(shard): the records after \(after) were removed from the journal (it starts at \(first ?? 0)) before the standby had them: it is seeded from a snapshot when it connects again")
                    } catch {
                        return refuse(connection, "shard \(shard): cannot stream the journal: \(error); rebuild the standby (crossbook run --standby --rebuild)")
                    }
                    if n > 0 {
                        try connection.send(.records(shard: shard, durable: durable(shard), bytes: buffer))
                        state.sent[shard] = tails[shard].position
                        work += n
                    }
                }
                let now = monotonicNanoseconds()
                if digestEveryNanoseconds > 0 && now - lastDigest >= digestEveryNanoseconds {
                    lastDigest = now
                    for shard in 0..<shardCount {
                        if let d = digest(shard) { try connection.send(.digest(shard: shard, sequence: d.sequence, digest: d.digest)) }
                    }
                }
                if now - lastHeartbeat >= 100_000_000 {
                    lastHeartbeat = now
                    try connection.send(.heartbeat(epoch: epoch, engaged: engaged, durable: (0..<shardCount).map(durable)))
                }
                // Acknowledgements: everything that has arrived.
                var acks = 0
                while let message = try connection.receive(timeoutMilliseconds: 0) {
                    guard case .ack(let shard, let upTo) = message, shard >= 0, shard < shardCount else {
                        return refuse(connection, "unexpected message from the standby")
                    }
                    // Never more than was sent: a confused standby cannot release output.
                    state.acked[shard] = max(state.acked[shard], min(upTo, state.sent[shard]))
                    acks += 1
                }
                if acks > 0 {
                    lock.locked {
                        standbys[id] = state
                        for i in 0..<shardCount { bestAcked[i] = max(bestAcked[i], state.acked[i]) }
                    }
                    if mode == .sync { confirm() }
                }
                let request = lock.locked({ handedOver ? nil : handover })
                // A handover waiting for the standby's acknowledgements: those wake the sleep.
                handoverWaits = request != nil
                if let request, (0..<shardCount).allSatisfy({ state.acked[$0] >= request.through[$0] }) {
                    let epoch = request.epoch
                    try connection.send(.handover(epoch: epoch))
                    lock.locked { handedOver = true }
                    log("replication: handed over to standby \(connection.peer) at epoch \(epoch)")
                }
                if work == 0 && acks == 0 {
                    if let slot, let wakers {
                        // Until a shard writes more, the standby acknowledges, or a heartbeat,
                        // digest or handover is due (requestHandover wakes it too).
                        let wait = Int32(max(1, min(10, (lastHeartbeat + 100_000_000 &- now) / 1_000_000)))
                        wakers.sleep(slot: slot, socket: connection.fd, timeoutMilliseconds: wait) {
                            (0..<shardCount).contains { tails[$0].position < max(durable($0), written($0)) }
                                || lock.locked({ stopping || (handover != nil && !handedOver && !handoverWaits) })
                        }
                    } else {
                        usleep(50)
                    }
                }
            }
        } catch {
            log("replication: standby \(connection.peer) lost: \(error)\(mode == .sync && engaged ? "; sync is engaged: output waits for a standby" : "")")
        }
    }

    /// A standby whose journal has diverged: says so, then answers its probes (the CRC of this
    /// journal's record at a sequence) until it closes, at most `maxProbes(shards:)`, 30 s.
    private func answerProbes(_ connection: ReplicationConnection, shard: Int, last: UInt64) {
        log("replication: standby \(connection.peer): its journal has diverged from this primary's at shard \(shard) (its last record, \(last), is not this journal's): it looks for the common prefix, to cut its journal back to it")
        lock.locked {
            refusals.append("\(connection.peer): diverged at shard \(shard), sequence \(last): probing for the common prefix")
            if refusals.count > 8 { refusals.removeFirst() }
        }
        do {
            try connection.send(.diverged(shard: shard, last: last))
            let deadline = monotonicNanoseconds() + 30_000_000_000
            var answered = 0
            while monotonicNanoseconds() < deadline && answered < ReplicationMessage.maxProbes(shards: shardCount) && !lock.locked({ stopping }) {
                guard let message = try connection.receive(timeoutMilliseconds: 100) else { continue }
                guard case .probe(let s, let sequence) = message, s >= 0, s < shardCount else {
                    return refuse(connection, "unexpected message from the standby while it probes")
                }
                // Only what this journal holds durable or written: nothing beyond it.
                let mine = max(durable(s), written(s))
                let crc = sequence == 0 || sequence > mine ? nil
                    : ((try? JournalReader.record(directory: dataDirectory, shard: s, sequence: sequence)) ?? nil)?.crc
                try connection.send(.probed(shard: s, sequence: sequence, crc: crc))
                answered += 1
            }
        } catch {
            // The standby closed: it found what it looked for.
        }
    }

    /// Sends each shard in `shards` its seed, in parts, then `seeded`: the standby installs them
    /// and connects again from the seeds' sequences.
    private func sendSeeds(_ connection: ReplicationConnection, shards: [Int], positions: [ReplicationMessage.ShardPosition]) {
        var seeds: [StandbySeed] = []
        for shard in shards {
            guard let seed = seed(shard) else {
                let first = JournalReader.firstKept(directory: dataDirectory, shard: shard) ?? 0
                return refuse(connection, "shard \(shard): the journal no longer holds the records after \(positions[shard].last) (it starts at \(first)) and no snapshot of this journal is available to seed the standby from")
            }
            seeds.append(seed)
        }
        do {
            for seed in seeds {
                let payload = seed.payload
                let part = 4 << 20
                var offset = 0
                repeat {
                    let end = min(payload.count, offset + part)
                    try connection.send(.seed(shard: seed.shard, sequence: seed.sequence, total: UInt64(payload.count),
                                              offset: UInt64(offset), bytes: Array(payload[offset..<end])))
                    offset = end
                } while offset < payload.count
            }
            try connection.send(.seeded)
            log("replication: standby \(connection.peer) is behind this journal's oldest record: sent it the snapshots of shard(s) \(seeds.map { "\($0.shard) at \($0.sequence)" }.joined(separator: ", ")) to start again from")
        } catch {
            return log("replication: standby \(connection.peer): seeding ended: \(error)")
        }
        // Until the standby closes (it has read everything), at most 5 s.
        let deadline = monotonicNanoseconds() + 5_000_000_000
        while monotonicNanoseconds() < deadline && !lock.locked({ stopping }) {
            do { _ = try connection.receive(timeoutMilliseconds: 100) } catch { break }
        }
    }

    /// Per shard, what `syncStandbys` of the connected standbys have confirmed (the K-th highest
    /// confirmation); nil while fewer are connected.
    private var confirmed: [UInt64]? {
        lock.locked {
            let all = Array(standbys.values)
            guard all.count >= syncStandbys else { return nil }
            return (0..<shardCount).map { s in all.map { $0.acked[s] }.sorted(by: >)[syncStandbys - 1] }
        }
    }

    /// A standby confirmed: raise the caps to what `syncStandbys` of them hold, engaging sync
    /// once that many have caught up.
    private func confirm() {
        guard let acked = confirmed else { return }
        if !engaged {
            // Caught up: everything durable here (and so everything released) is durable there.
            // The caps go down first, then the check: whatever a gate released before the caps
            // went down was durable here by then, so at or below what the check reads.
            for shard in 0..<shardCount { cb_store_release_u64(cap + shard, acked[shard]) }
            guard (0..<shardCount).allSatisfy({ acked[$0] >= durable($0) }) else {
                for shard in 0..<shardCount { cb_store_release_u64(cap + shard, .max) }
                return
            }
            cb_store_release_u32(engagedFlag, 1)
            for shard in 0..<shardCount { ring(shard) }
            log("replication: sync engaged: output now waits for \(syncStandbys == 1 ? "the standby's confirmation" : "\(syncStandbys) standbys' confirmations")")
            return
        }
        for shard in 0..<shardCount where acked[shard] > cb_load_acquire_u64(cap + shard) {
            cb_store_release_u64(cap + shard, acked[shard])
            ring(shard)
        }
    }
}
