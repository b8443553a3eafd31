// Hot standby: an engine is a primary (it takes orders and serves standbys its journals) or a
// standby (it follows a primary's journals, takes no orders, and can be promoted). The pieces:
// Replication/ReplicationServer.swift (the primary's side, sync mode and the two-node rule),
// Replication/ReplicationClient.swift (the standby's side, automatic failover), and
// Shard/Replica.swift (a standby shard applying what arrives).

import CSync
import Foundation
import Glibc
import Journal
import SharedMemory
import Wire

public struct ReplicationSettings: Sendable, Equatable {
    public enum Role: String, Sendable, CaseIterable {
        case primary
        case standby
    }
    public var role: Role = .primary
    /// Where this engine serves standbys: as the primary, or once promoted (nil: it serves none).
    public var listen: String?
    /// The other engine's replication address: the primary a standby follows; at a primary's
    /// start, the engine that must not be serving as a primary already.
    public var peer: String?
    public var mode: ReplicationMode = .sync
    /// A standby promotes itself when an engaged primary has been silent this long (nil: only
    /// `crossbook promote` promotes it).
    public var failoverAfterMilliseconds: Int?
    /// How often the primary sends each shard's state digest for the standby to compare (0: never).
    public var digestEveryMilliseconds: Int = 1000
    /// Leadership as a lease (Replication/Lease.swift): the lease's key, taken through the plugin
    /// `leasePlugin` (its cb_lease_ops; redis-routing's is a Redis key on its Redis); nil: the
    /// two-node rule alone.
    public var lease: String?
    public var leasePlugin: String = "redis-routing"
    public var leaseTtlMilliseconds: Int = 2000
    /// Sync mode: how many standbys must confirm a record durable before its output is
    /// released (1 to 8). With several standbys that may be promoted (a lease), set it to
    /// their number for RPO 0: the winner then holds every acknowledged order.
    public var syncStandbys: Int = 1
    /// The pair's secret (ReplicationAuth.swift): a file of 32 to 4096 bytes, mode 600, the
    /// same on both engines; nil: the connection is not authenticated. Read again at each
    /// handshake: replacing it takes effect at the next connection, without a restart.
    public var secretFile: String?
    /// During a rotation, the secret being replaced (same rules), still accepted; a path that
    /// does not exist is none. Needs secretFile.
    public var previousSecretFile: String?

    public init(role: Role = .primary, listen: String? = nil, peer: String? = nil, mode: ReplicationMode = .sync,
                failoverAfterMilliseconds: Int? = nil, digestEveryMilliseconds: Int = 1000,
                lease: String? = nil, leasePlugin: String = "redis-routing", leaseTtlMilliseconds: Int = 2000) {
        self.lease = lease
        self.leasePlugin = leasePlugin
        self.leaseTtlMilliseconds = leaseTtlMilliseconds
        self.role = role
        self.listen = listen
        self.peer = peer
        self.mode = mode
        self.failoverAfterMilliseconds = failoverAfterMilliseconds
        self.digestEveryMilliseconds = digestEveryMilliseconds
    }
}

/// What the engine keeps of replication while it runs (one object, so the engine's stored
/// properties stay in Engine.swift).
final class ReplicationRuntime: @unchecked Sendable {
    let lock = Lock()
    var role: ReplicationSettings.Role
    var server: ReplicationServer?
    var client: ReplicationClient?
    var inboxes: [ReplicaInbox] = []
    /// Per shard, what the output gates may release: given to the gates in sync mode only.
    let cap: UnsafeMutablePointer<UInt64>
    let mode: ReplicationMode
    var gateCap: UnsafeMutablePointer<UInt64>? { mode == .sync ? cap : nil }
    /// 1 while a planned switchover holds the shards' ingress (they take no command).
    let paused: UnsafeMutablePointer<UInt32>
    /// Set once this engine handed over to its standby: it stops, and `crossbook run` starts it
    /// again as the standby.
    var switchedOver = false
    /// Set once the primary seeded this standby from its snapshots, or once this standby found
    /// its journal must be cut back to the primary's (staged in the data directory): it stops,
    /// and `crossbook run` starts it again to install them.
    var installPending = false
    let shards: Int
    var promotions = 0
    /// The Redis lease ([replication] lease), when configured.
    var lease: LeaseKeeper?
    /// Each shard's epoch as last read (at start, and at each promotion).
    var epochs: [UInt64] = []
    var lastPromotion: (epoch: UInt64, milliseconds: Double)?
    var promoting = false
    /// The sender and acknowledger sleep on these until a shard's journal moves.
    let wakers = JournalWakers()
    /// The pair's secrets ([replication] secret_file, previous_secret_file), checked at start,
    /// read at each handshake; nil: none.
    var secrets: ReplicationSecrets?

    init(settings: ReplicationSettings, shards: Int) {
        role = settings.role
        self.shards = shards
        mode = settings.mode
        cap = cacheAligned(UInt64.self, count: shards)
        cap.initialize(repeating: .max, count: shards)
        paused = cacheAligned(UInt32.self, count: 1)
        paused.initialize(to: 0)
    }

    deinit {
        cap.deallocate()
        paused.deallocate()
    }
}

extension Engine {
    var replicationConfigurationHash: UInt64 { fnv1a(Self.configurationText(settings)) }

    /// Checks the settings before anything starts.
    func checkReplication(_ s: EngineSettings) throws(EngineError) {
        guard let r = s.replication else { return }
        guard s.durability == .sync || (s.durability == .async && r.mode == .async) else {
            throw EngineError("replication needs a journal: durability \"sync\" (or \"async\" with mode \"async\"), not \"\(s.durability.rawValue)\"")
        }
        do {
            if let listen = r.listen { _ = try ReplicationAddress(listen) }
            if let peer = r.peer { _ = try ReplicationAddress(peer) }
        } catch { throw EngineError("[replication]: \(error)") }
        if r.role == .standby && r.peer == nil { throw EngineError("[replication]: a standby needs peer, the primary's address") }
        if let lease = r.lease {
            if let why = Self.leaseKeyProblem(lease) { throw EngineError("[replication]: \(why)") }
            guard r.leaseTtlMilliseconds >= 200, r.leaseTtlMilliseconds <= 60_000 else {
                throw EngineError("[replication]: lease_ttl_ms must be between 200 and 60000")
            }
        }
        if let ms = r.failoverAfterMilliseconds, ms < 100 || ms > 600_000 {
            throw EngineError("[replication]: failover_after_ms must be between 100 and 600000")
        }
        if let path = r.secretFile {
            _ = try ReplicationSecrets(current: path, previous: r.previousSecretFile).read()
        } else if r.previousSecretFile != nil {
            throw EngineError("[replication]: previous_secret_file needs secret_file (the secret that replaces it)")
        }
    }

    /// A primary's start: the peer must not be serving as a primary (a failover made it one).
    func checkPeerIsNotPrimary(_ s: EngineSettings) throws(EngineError) {
        guard let r = s.replication, r.role == .primary, let peerText = r.peer, let peer = try? ReplicationAddress(peerText) else { return }
        guard let connection = try? ReplicationConnection.connect(to: peer, timeoutMilliseconds: 500) else { return }
        let hello = ReplicationMessage.hello(epoch: 0, configuration: 0, shards: [ReplicationMessage.ShardPosition(last: 0, crc: 0)])
        try? connection.send(hello)
        let answer = try? connection.receive(timeoutMilliseconds: 2000)
        guard answer != nil else { return }
        throw EngineError("the peer \(peer) is serving as a primary (a failover promoted it): start this engine as its standby (--standby; --rebuild if it refuses this journal)")
    }

    /// Why `key` cannot be a lease's key (nil: it can).
    static func leaseKeyProblem(_ key: String) -> String? {
        if key.hasPrefix("redis://") {
            return "lease = \"\(key)\": the lease is taken through a plugin now: give the key alone (lease = \"crossbook-main\"); the Redis address, user and password_file are redis-routing's (lease_plugin = \"redis-routing\")"
        }
        guard !key.isEmpty, key.utf8.count <= 200, key.utf8.allSatisfy({ $0 > 32 && $0 < 127 }) else {
            return "lease = \"\(key)\": the key must be 1 to 200 printable characters without spaces"
        }
        return nil
    }

    /// The shard-side objects for a standby (one inbox per shard) and sync mode (the caps), and
    /// the lease, opened through its plugin (loaded, not started: a standby starts it only when
    /// promoted).
    func prepareReplication(_ s: EngineSettings) throws(EngineError) -> ReplicationRuntime? {
        guard let r = s.replication else { return nil }
        let runtime = ReplicationRuntime(settings: r, shards: s.shards.count)
        if let path = r.secretFile {
            let secrets = ReplicationSecrets(current: path, previous: r.previousSecretFile)
            _ = try secrets.read()
            runtime.secrets = secrets
        }
        if r.role == .standby { runtime.inboxes = s.shards.map { _ in ReplicaInbox() } }
        if let key = r.lease {
            guard let plugin = pluginHost?.loaded.first(where: { $0.name == r.leasePlugin }) else {
                throw EngineError("[replication] lease \(key): lease_plugin \(r.leasePlugin) is not loaded: load it in [[plugins.load]] (--no-plugins leaves it out)")
            }
            let lease: PluginLease
            do { lease = try PluginLease(plugin: plugin) } catch { throw EngineError("[replication] lease \(key): \(error)") }
            runtime.lease = LeaseKeeper(key: key, lease: lease, ttlMilliseconds: r.leaseTtlMilliseconds, instance: s.instance, log: log)
        }
        return runtime
    }

    /// After the shards started: a primary serves standbys, a standby follows its primary.
    func startReplication() throws(EngineError) {
        guard let r = settings.replication, let runtime = replication else { return }
        let epochs = shards.indices.map { adminState(shard: $0)?.epoch ?? 0 }
        runtime.lock.locked { runtime.epochs = epochs }
        if runtime.role == .primary {
            if let lease = runtime.lease {
                // Only the lease's holder acknowledges; its epoch is journaled in every shard.
                let epoch: UInt64?
                do { epoch = try lease.acquire() } catch { throw EngineError("lease \(lease.key): \(error)") }
                guard let epoch else {
                    throw EngineError("lease \(lease.key) is held by another engine: start this engine as its standby (--standby)")
                }
                for i in shards.indices where (adminState(shard: i)?.epoch ?? 0) < epoch {
                    guard case .applied = admin(shard: i, .epoch(epoch)) else { throw EngineError("shard \(i) cannot journal the lease's epoch \(epoch)") }
                }
                runtime.lock.locked { runtime.epochs = Array(repeating: epoch, count: shards.count) }
                lease.start()
                log("lease \(lease.key): held (epoch \(epoch), ttl \(lease.ttlMilliseconds) ms, acknowledgements stop \(lease.marginNanoseconds / 1_000_000) ms before an unrenewed lease expires)")
            }
            try startServer(r, runtime)
        } else {
            let positions: [(last: UInt64, crc: UInt32)] = shards.map { shard in
                let last = shard.recoveredLast
                let crc = last == 0 ? 0 : ((try? JournalReader.record(directory: settings.dataDirectory, shard: shard.index, sequence: last)) ?? nil)?.crc ?? 0
                return (last, crc)
            }
            let epoch = shards.indices.compactMap { adminState(shard: $0)?.epoch }.max() ?? 0
            let shards = self.shards
            var leaseAcquire: (@Sendable () -> UInt64?)?
            if let lease = runtime.lease {
                leaseAcquire = { () -> UInt64? in
                    do { return try lease.acquire() } catch { return nil }
                }
            }
            let client = ReplicationClient(
                primary: try! ReplicationAddress(r.peer!), inboxes: runtime.inboxes, positions: positions,
                configurationHash: replicationConfigurationHash, epoch: epoch,
                failoverAfterNanoseconds: r.failoverAfterMilliseconds.map { UInt64($0) * 1_000_000 },
                leaseAcquire: leaseAcquire,
                nudge: { shards[$0].nudge() }, durable: { shards[$0].tallied(ShardTally.durable) },
                reseed: { [weak self] seeds -> String? in
                    guard let self else { return "the engine is stopping" }
                    guard (self.pluginHost?.snapshotStore ?? self.injectedSnapshots) != nil else {
                        return "this standby has no snapshot-store plugin to install them into: load one, as the primary does"
                    }
                    for seed in seeds {
                        // Nothing staged is installed before the restart: a failure here leaves
                        // this journal as it is, and the next start is seeded again.
                        do { try seed.stage(in: self.settings.dataDirectory) } catch { return "\(error)" }
                    }
                    runtime.lock.locked { runtime.installPending = true }
                    self.log("replication: seeds staged in \(self.settings.dataDirectory): stopping, to start again from them")
                    self.onSwitchover?()
                    return nil
                },
                rewind: { [weak self] cuts -> String? in
                    guard let self else { return "the engine is stopping" }
                    for cut in cuts {
                        // A cut staged before a failure is still right to install at the next start.
                        do { try cut.stage(in: self.settings.dataDirectory) } catch { return "\(error)" }
                    }
                    runtime.lock.locked { runtime.installPending = true }
                    self.log("replication: journal cuts staged in \(self.settings.dataDirectory): stopping, to start again from the common prefix")
                    self.onSwitchover?()
                    return nil
                },
                localCrc: { [dataDirectory = settings.dataDirectory] shard, sequence in
                    ((try? JournalReader.record(directory: dataDirectory, shard: shard, sequence: sequence)) ?? nil)?.crc
                },
                named: { [dataDirectory = settings.dataDirectory, log] name in
                    // Kept for a promotion after a restart that never reached the primary.
                    guard Self.primaryInstance(dataDirectory: dataDirectory) != name else { return }
                    do {
                        try stageFile(Array(name.utf8), at: dataDirectory + "/" + Self.primaryInstanceFile,
                                      directory: dataDirectory, what: "the primary's instance name")
                    } catch { log("replication: \(error)") }
                },
                wakers: runtime.wakers, secrets: runtime.secrets,
                promote: { [weak self] epoch in
                    // Not on the client's own thread: promotion stops it and waits for it.
                    Thread { [weak self] in
                        guard let self else { return }
                        do { _ = try self.promote(epoch: epoch) } catch { self.log("automatic promotion failed: \(error)") }
                    }.start()
                },
                log: log)
            runtime.client = client
            client.start()
        }
    }

    private func startServer(_ r: ReplicationSettings, _ runtime: ReplicationRuntime) throws(EngineError) {
        guard let listen = r.listen, let address = try? ReplicationAddress(listen) else { return }
        let cap = runtime.cap
        let epoch = shards.indices.compactMap { adminState(shard: $0)?.epoch }.max() ?? 0
        let shards = self.shards
        let server = ReplicationServer(
            address: address, instance: settings.instance, mode: r.mode, shards: shards.count, dataDirectory: settings.dataDirectory,
            configurationHash: replicationConfigurationHash, epoch: epoch, cap: cap, syncStandbys: r.syncStandbys,
            digestEveryNanoseconds: UInt64(max(0, r.digestEveryMilliseconds)) * 1_000_000,
            durable: { shards[$0].tallied(ShardTally.durable) },
            written: { shards[$0].tallied(ShardTally.written) },
            digest: { i in
                let query = DigestQuery()
                guard shards[i].send(.digest(query)), query.done.wait(seconds: 1) else { return nil }
                return query.value
            },
            seed: { [weak self] i in self?.standbySeed(shard: i) },
            ring: { shards[$0].ring() }, wakers: runtime.wakers, secrets: runtime.secrets,
            log: log)
        do { try server.start() } catch { throw EngineError("\(error)") }
        runtime.server = server
        log("replication: serving standbys on \(address) (\(r.mode.rawValue), epoch \(epoch))")
    }

    /// A standby's data directory keeps the instance name of the primary it last followed.
    static let primaryInstanceFile = "primary-instance"

    /// That name, if the file holds one (1 to 127 printable bytes, no space).
    static func primaryInstance(dataDirectory: String) -> String? {
        let fd = open(dataDirectory + "/" + primaryInstanceFile, O_RDONLY | O_CLOEXEC | O_NOFOLLOW)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var buffer = [UInt8](repeating: 0, count: 128)
        let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, 128) }
        guard n >= 1, n <= 127, buffer[..<n].allSatisfy({ $0 > 0x20 && $0 < 0x7F }) else { return nil }
        return String(decoding: buffer[..<n], as: UTF8.self)
    }

    public var role: ReplicationSettings.Role { replication?.lock.locked { replication!.role } ?? .primary }

    /// Makes this standby the primary under `epoch` (nil: one above every epoch it has seen):
    /// stops following, applies and journals everything received, journals the epoch in every
    /// shard, then takes orders, starts its plugins and serves standbys. Returns what it took.
    @discardableResult
    public func promote(epoch requested: UInt64? = nil) throws(EngineError) -> String {
        guard let runtime = replication else { throw EngineError("this engine has no [replication] section") }
        let go: Bool = runtime.lock.locked {
            guard runtime.role == .standby, !runtime.promoting else { return false }
            runtime.promoting = true
            return true
        }
        guard go else { throw EngineError("this engine is not a standby (or is being promoted)") }
        if runtime.lock.locked({ runtime.installPending }) {
            runtime.lock.locked { runtime.promoting = false }
            throw EngineError("this standby is starting again to install the primary's seeds or a cut of its journal: it cannot be promoted before")
        }
        let t0 = monotonicNanoseconds()
        runtime.client?.stop()
        let predecessorHeard = runtime.client?.currentStatus.primaryInstance
        if let alarm = runtime.inboxes.lazy.compactMap(\.alarm).first {
            runtime.lock.locked { runtime.promoting = false }
            throw EngineError("this standby stopped applying (\(alarm)); it cannot be promoted: rebuild it")
        }
        let seen = runtime.client?.currentStatus.primaryEpoch ?? 0
        let mine = shards.indices.compactMap { adminState(shard: $0)?.epoch }.max() ?? 0
        var epoch = requested ?? (max(seen, mine) + 1)
        if let lease = runtime.lease {
            // The lease decides who leads: without it, no promotion (the old primary may live).
            let leased: UInt64?
            do { leased = try lease.acquire() } catch {
                runtime.lock.locked { runtime.promoting = false }
                throw EngineError("lease \(lease.key): \(error): not promoted")
            }
            guard let leased else {
                runtime.lock.locked { runtime.promoting = false }
                throw EngineError("lease \(lease.key) is held by another engine (the primary may be alive): not promoted")
            }
            epoch = max(epoch, leased)
        }
        var sequences: [UInt64] = []
        for shard in shards {
            let request = AdminRequest(.epoch(epoch))
            guard shard.send(.promote(request)), request.done.wait(seconds: 30), let outcome = request.outcome else {
                runtime.lock.locked { runtime.promoting = false }
                throw EngineError("shard \(shard.index) did not finish its promotion within 30 s")
            }
            guard case .applied(let sequence) = outcome else {
                runtime.lock.locked { runtime.promoting = false }
                throw EngineError("shard \(shard.index): \(outcome)")
            }
            sequences.append(sequence)
        }
        // A listing the primary left half done (some shards have it), then where each symbol is
        // after what was replicated (a migration the primary left half done); the listings the
        // standby replayed are shown to clients from here.
        do { for line in try completeListings(readOnly: false) { log(line) } } catch {
            log("promotion: \(error)")
        }
        do { for line in try reconcileOwners(readOnly: false) { log(line) } } catch {
            log("promotion: \(error)")
        }
        publishListings()
        // The primary's sessions that own resting orders, and those of its sources and streams,
        // keep their ids here (as after a restart): no new client may act for them.
        reserveSessions()
        runtime.lock.locked {
            runtime.role = .primary
            runtime.epochs = Array(repeating: epoch, count: shards.count)
            runtime.promoting = false
            runtime.client = nil
            runtime.promotions += 1
        }
        runtime.lease?.start()
        if let r = settings.replication {
            do { try startServer(r, runtime) } catch { log("promotion: \(error)") }
        }
        // The primary this standby followed, under another instance name: its plugins take over
        // what named it (redis-routing: the routes of the symbols this engine now trades).
        if let predecessor = predecessorHeard ?? Self.primaryInstance(dataDirectory: settings.dataDirectory),
           predecessor != settings.instance {
            pluginHost?.setHostConfig("engine.predecessor", predecessor)
            log("promotion: this engine takes over from instance \(predecessor)")
        }
        do { try pluginHost?.startAll(snapshotStores: false, allowed: true) } catch {
            log("promotion: plugins: \(error)")
        }
        let ms = Double(monotonicNanoseconds() - t0) / 1e6
        runtime.lock.locked { runtime.lastPromotion = (epoch, ms) }
        let text = "promoted to primary at epoch \(epoch) in \(String(format: "%.1f", ms)) ms (epoch records at sequences \(sequences.map(String.init).joined(separator: ",")))"
        log(text)
        return text
    }

    /// A planned switchover (`crossbook switchover`), on the primary: stop taking commands, wait
    /// until a standby has confirmed everything this engine made durable, hand over (it
    /// promotes itself under the next epoch), then stop; `crossbook run` starts this engine again
    /// as the new primary's standby. Nothing is lost, nothing needs rebuilding. On a timeout the
    /// orders flow again here and nothing changed.
    public func switchover(timeout: Double = 10) throws(EngineError) -> String {
        guard let runtime = replication, let server = runtime.lock.locked({ runtime.server }), role == .primary else {
            throw EngineError("a switchover starts on a primary that serves standbys")
        }
        guard !server.connected.isEmpty else { throw EngineError("no standby is connected: nothing to switch over to") }
        let t0 = monotonicNanoseconds()
        cb_store_release_u32(runtime.paused, 1)
        // Where each shard stopped (what it sequenced), then until that is durable here and there.
        var last: [UInt64] = []
        for shard in shards {
            let query = DigestQuery()
            guard shard.send(.digest(query)), query.done.wait(seconds: timeout), let value = query.value else {
                cb_store_release_u32(runtime.paused, 0)
                throw EngineError("shard \(shard.index) did not answer")
            }
            last.append(value.sequence)
        }
        let epoch = (shards.indices.compactMap { adminState(shard: $0)?.epoch }.max() ?? 0) + 1
        let t1 = monotonicNanoseconds()
        server.requestHandover((epoch, last))
        let deadline = monotonicNanoseconds() + UInt64(timeout * 1e9)
        while !server.hasHandedOver {
            guard monotonicNanoseconds() < deadline else {
                server.requestHandover(nil)
                cb_store_release_u32(runtime.paused, 0)
                throw EngineError("no standby confirmed every record within \(timeout) s (durable here: \(shards.map { String($0.tallied(ShardTally.durable)) }.joined(separator: ",")), sequenced: \(last.map(String.init).joined(separator: ","))); orders flow here again")
            }
            usleep(200)
        }
        runtime.lock.locked { runtime.switchedOver = true }
        let ms = Double(monotonicNanoseconds() - t0) / 1e6
        let text = "switched over: took no orders from the pause, handed over at epoch \(epoch) after \(String(format: "%.1f", ms)) ms (\(String(format: "%.1f", Double(t1 - t0) / 1e6)) ms until every shard had stopped; sequences \(last.map(String.init).joined(separator: ","))); stopping, to follow the new primary"
        log(text)
        return text
    }

    public var switchedOver: Bool { replication?.lock.locked { replication!.switchedOver } ?? false }
    /// The primary seeded this standby from its snapshots, or its journal is to be cut back to
    /// the primary's: it stops, to start again from them.
    public var restartsToInstall: Bool { replication?.lock.locked { replication!.installPending } ?? false }

    /// A seed for a standby (StandbySeed.swift): the newest snapshot of this journal that loads,
    /// and the journal's record at its sequence.
    func standbySeed(shard: Int) -> StandbySeed? {
        guard let store = pluginHost?.snapshotStore ?? injectedSnapshots else { return nil }
        for candidate in store.list(shard: shard) {
            guard let (at, stored) = try? store.load(shard: shard, name: candidate.name),
                  let body = try? SnapshotBinding.check(stored, at: at, directory: settings.dataDirectory, shard: shard),
                  let record = try? JournalReader.recordBytes(directory: settings.dataDirectory, shard: shard, sequence: at) else { continue }
            return StandbySeed(shard: shard, sequence: at, record: record, body: body)
        }
        return nil
    }

    /// At a standby's start, before recovery: installs the seeds a primary sent (StandbySeed.swift).
    func installStagedSeeds(store: SnapshotStore?, journalConfig: (Int) -> JournalConfig) throws(EngineError) -> [String] {
        var lines: [String] = []
        // Cuts first (an old primary rejoining), then seeds (which replace a shard's journal).
        let diverged = settings.dataDirectory + ".diverged-\(Int(Date().timeIntervalSince1970))"
        for shard in settings.shards.indices {
            guard let cut = try JournalCut.staged(in: settings.dataDirectory, shard: shard) else { continue }
            let copied = try cut.install(directory: settings.dataDirectory, aside: diverged)
            lines.append("shard \(shard): journal cut back after sequence \(cut.after), the primary's common prefix\(copied > 0 ? "; the segments that held the records cut are copied to \(diverged)" : "")")
        }
        let aside = settings.dataDirectory + ".replaced-\(Int(Date().timeIntervalSince1970))"
        for shard in settings.shards.indices {
            guard let seed = try StandbySeed.staged(in: settings.dataDirectory, shard: shard) else { continue }
            guard let store else {
                throw EngineError("shard \(shard): the primary's seed is staged in \(StandbySeed.stagedPath(settings.dataDirectory, shard: shard)), but no snapshot-store plugin is loaded to install it into: load one (as the primary does), or start with --rebuild")
            }
            try seed.install(config: journalConfig(shard), store: store, aside: aside)
            lines.append("shard \(shard): seeded from the primary's snapshot at sequence \(seed.sequence)\(access(aside, F_OK) == 0 ? "; the segments it replaces are in \(aside)" : "")")
        }
        return lines
    }

    /// Lines for `crossbook replication` (control socket) and `crossbook stat`.
    func replicationStatus() -> [String] {
        guard let runtime = replication, let r = settings.replication else { return ["role primary", "replication off"] }
        var lines: [String] = []
        let role = runtime.lock.locked { runtime.role }
        let epoch = runtime.lock.locked { runtime.epochs.max() ?? 0 }
        lines.append("role \(role.rawValue) epoch \(epoch) mode \(r.mode.rawValue) promotions \(runtime.promotions) authenticated \(runtime.secrets != nil ? 1 : 0)")
        if let last = runtime.lock.locked({ runtime.lastPromotion }) {
            lines.append("last_promotion epoch \(last.epoch) ms \(String(format: "%.1f", last.milliseconds))")
        }
        if let server = runtime.server {
            let caps = (0..<shards.count).map { i -> String in
                let c = cb_load_acquire_u64(runtime.cap + i)
                return r.mode == .sync && c != .max ? String(c) : "-"
            }
            lines.append("serving \(server.address) engaged \(server.engaged ? 1 : 0) standbys \(server.connected.count) sync_standbys \(server.syncStandbys) released_up_to \(caps.joined(separator: ",")) lag \(server.lag.map(String.init).joined(separator: ","))")
            for standby in server.connected {
                let lag = shards.indices.map { shards[$0].tallied(ShardTally.durable) &- min(standby.acked[$0], shards[$0].tallied(ShardTally.durable)) }
                lines.append("standby \(standby.peer) acked \(standby.acked.map(String.init).joined(separator: ",")) lag \(lag.map(String.init).joined(separator: ","))\(standby.keyId.map { " key \($0)" } ?? "")")
            }
            for refusal in server.lastRefusals { lines.append("refused \(refusal)") }
            if server.connectionsTurnedAway > 0 {
                lines.append("turned_away \(server.connectionsTurnedAway) (connections over \(ReplicationServer.maxConnections) at once)")
            }
        }
        if let lease = runtime.lease {
            let left = cb_load_acquire_u64(lease.until)
            let now = monotonicNanoseconds()
            lines.append("lease \(lease.key) ttl_ms \(lease.ttlMilliseconds) \(lease.isDeposed ? "DEPOSED" : role == .primary ? "held, acknowledges for \((left &- min(left, now)) / 1_000_000) ms more unless renewed" : "not held")")
        }
        if let client = runtime.client {
            let s = client.currentStatus
            lines.append("following \(s.primary) instance \(s.primaryInstance ?? "-") connected \(s.connected ? 1 : 0) primary_epoch \(s.primaryEpoch) engaged \(s.engaged ? 1 : 0) silent_ms \(s.silentMilliseconds.map(String.init) ?? "-") connections \(s.reconnects)\(s.keyId.map { " key \($0)" } ?? "")\(s.refused.map { " refused \($0)" } ?? "")")
        }
        for (i, inbox) in runtime.inboxes.enumerated() where role == .standby {
            let applied = cb_load_acquire_u64(inbox.applied), theirs = cb_load_acquire_u64(inbox.primaryDurable)
            lines.append("shard \(i) applied \(applied) primary \(theirs) lag \(theirs &- min(theirs, applied)) digests_matched \(cb_load_acquire_u64(inbox.digestsMatched))\(inbox.alarm.map { " ALARM \($0)" } ?? "")")
        }
        return lines
    }

    /// The control file's replication words (ReplicationCounters), for `stat` and the metrics.
    func publishReplicationCounters() {
        guard let file = engineFile, let runtime = replication else { return }
        let role = runtime.lock.locked { runtime.role }
        let server = runtime.lock.locked { runtime.server }
        let client = runtime.lock.locked { runtime.client }
        let status = client?.currentStatus
        let lag = server?.lag
        let standbys = UInt64(server?.connected.count ?? 0)
        for i in shards.indices {
            let c = file.replication(i)
            c.set(ReplicationCounters.role, role == .primary ? 1 : 2)
            c.set(ReplicationCounters.epoch, max(status?.primaryEpoch ?? 0, runtime.epochs[safe: i] ?? 0))
            c.set(ReplicationCounters.promotions, UInt64(runtime.promotions))
            if role == .primary {
                c.set(ReplicationCounters.engaged, server?.engaged ?? false ? 1 : 0)
                c.set(ReplicationCounters.lag, lag?[i] ?? 0)
                c.set(ReplicationCounters.connected, standbys)
                c.set(ReplicationCounters.alarm, 0)
            } else if i < runtime.inboxes.count {
                let inbox = runtime.inboxes[i]
                let applied = cb_load_acquire_u64(inbox.applied), theirs = cb_load_acquire_u64(inbox.primaryDurable)
                c.set(ReplicationCounters.engaged, status?.engaged ?? false ? 1 : 0)
                c.set(ReplicationCounters.lag, theirs &- min(theirs, applied))
                c.set(ReplicationCounters.connected, status?.connected ?? false ? 1 : 0)
                c.set(ReplicationCounters.digestsMatched, cb_load_acquire_u64(inbox.digestsMatched))
                c.set(ReplicationCounters.alarm, inbox.alarm == nil ? 0 : 1)
            }
        }
    }
}

extension Array {
    subscript(safe index: Int) -> Element? { index >= 0 && index < count ? self[index] : nil }
}
