// The client library: attach to a running engine by instance name, submit orders into your
// own rings, read your own execution reports. One client = one thread's worth of rings: use
// it from one thread at a time.

import Foundation
import Glibc
import OrderBook
import SharedMemory
import Wire

public enum ClientError: Error, Equatable, CustomStringConvertible {
    case engineNotRunning(instance: String, String)
    case engineGone(instance: String, pid: Int32)
    case refused(String)
    case handshakeTimedOut(instance: String)
    case unknownSymbol(String)
    case setup(String)
    /// The engine stopped serving this client's session on a shard, and why.
    case detached(shard: Int, RingClosed)

    public var description: String {
        switch self {
        case .detached(let shard, let why): "shard \(shard): \(why)"
        case .engineNotRunning(let instance, let why): "engine '\(instance)' is not running: \(why)"
        case .engineGone(let instance, let pid): "engine '\(instance)' (pid \(pid)) is gone"
        case .refused(let why): "the engine refused this client: \(why)"
        case .handshakeTimedOut(let instance): "engine '\(instance)' did not answer the handshake"
        case .unknownSymbol(let name): "the engine has no symbol \(name)"
        case .setup(let why): why
        }
    }
}

public struct SymbolInfo: Sendable, Equatable {
    public var spec: SymbolSpec
    /// The shard that owned it when the client attached (`CrossbookClient.shard(of:)`: now).
    public var shard: Int
    /// Its block in the engine's control file, where the engine keeps its current shard.
    public var slot: Int = -1
}

public final class CrossbookClient {
    public let instance: String
    public let directory: String
    public let name: String
    public private(set) var symbols: [String: SymbolInfo]
    public let sessionId: UInt32
    /// This client's stream (nil: none): a named order flow whose commands carry their offset in
    /// the client sequence field; the engine journals how far it took each shard's part of it,
    /// so that after a restart or a failover the stream's next client resends what was not
    /// acknowledged with the same offsets and each order is taken exactly once.
    public let stream: String?
    /// With a stream, per shard the next offset the engine expects of it (0: nothing of it
    /// taken yet): an order sent to shard s with an offset below this was taken (journaled,
    /// applied or rejected) before this client attached; sent again, it is rejected
    /// (`duplicate_ingress`). Empty without a stream.
    public let resumeOffsets: [UInt64]
    private let engineFile: EngineFile
    private let sessionFile: SessionFile
    private let rings: [Ring]
    /// Its rings and the shards' doorbells, and the shards sent commands since the last flush
    /// (bit per shard; at most 64 shards). Behind a pointer: a class's stored property that
    /// `submit` and `poll` change is checked for exclusive access at run time on every call
    /// (`swift_beginAccess`: ~12% of a flat-out `crossbook load`'s time); one client is used by
    /// one thread at a time.
    private let hotRings: UnsafeMutablePointer<SessionRings>
    private let hotUnflushed: UnsafeMutablePointer<UInt64>
    private var io: SessionRings {
        @inline(__always) unsafeAddress { UnsafePointer(hotRings) }
        @inline(__always) unsafeMutableAddress { hotRings }
    }
    private var unflushed: UInt64 {
        @inline(__always) get { hotUnflushed.pointee }
        @inline(__always) set { hotUnflushed.pointee = newValue }
    }
    private var closed = false
    private nonisolated(unsafe) static var counter = 0

    /// Attaches to engine `instance`: creates this client's rings, announces them, waits for
    /// the engine to accept (up to `timeout` seconds). `stream`: attach as that stream (1 to 64
    /// of A-Z a-z 0-9 . _ -; one client at a time per stream): the engine gives it the
    /// session id it had (its resting orders are its own again) and says where each shard is
    /// in it (`resumeOffsets`). Every command must then carry its offset, increasing per shard,
    /// in `clientSequence` (at most 2^63 - 1).
    public init(instance: String, directory: String? = nil, ringCapacity: Int = 4096, timeout: Double = 5,
                stream: String? = nil) throws(ClientError) {
        if let stream, !SessionFile.isValidStream(stream) {
            throw .setup("stream name '\(stream)': 1 to 64 of A-Z a-z 0-9 . _ -")
        }
        self.instance = instance
        self.stream = stream
        let dir = directory ?? InstanceLayout.defaultDirectory(instance)
        self.directory = dir
        let engine: EngineFile
        do {
            engine = try EngineFile.attach(directory: dir)
        } catch {
            throw .engineNotRunning(instance: instance, "\(error)")
        }
        guard processIsAlive(engine.enginePid) else { throw .engineGone(instance: instance, pid: engine.enginePid) }
        guard engine.state == .running else { throw .engineNotRunning(instance: instance, "its state is \(engine.state)") }
        engineFile = engine
        let bells: DoorbellFile
        do { bells = try DoorbellFile.attach(directory: dir, shards: engine.shardCount) } catch {
            throw .engineNotRunning(instance: instance, "\(error)")
        }

        symbols = try Self.readSymbols(directory: dir, engine: engine, instance: instance)

        Self.counter += 1
        let name = "c\(getpid())-\(Self.counter)"
        self.name = name
        var made: [Ring] = []
        func cleanUp() {
            unlink(InstanceLayout.sessionPath(dir, name))
            for s in 0..<engine.shardCount {
                unlink(InstanceLayout.commandRingPath(dir, name, shard: s))
                unlink(InstanceLayout.reportRingPath(dir, name, shard: s))
            }
        }
        // An instance shared with a group (its directory setgid and group-writable): this client's
        // files are the group's too, so that an engine of another user in it can read them.
        var dirInfo = stat()
        let shared = stat(dir, &dirInfo) == 0 && dirInfo.st_mode & S_ISGID != 0 && dirInfo.st_mode & 0o070 == 0o070
        let mode: mode_t = shared ? 0o660 : 0o600
        let session: SessionFile
        do {
            for s in 0..<engine.shardCount {
                made.append(try Ring.create(path: InstanceLayout.commandRingPath(dir, name, shard: s),
                                            capacity: ringCapacity, mode: mode, consumerMayPark: false))
                made.append(try Ring.create(path: InstanceLayout.reportRingPath(dir, name, shard: s),
                                            capacity: ringCapacity, mode: mode, consumerMayPark: true))
            }
            session = try SessionFile.create(path: InstanceLayout.sessionPath(dir, name), mode: mode, stream: stream)
        } catch {
            cleanUp()
            throw .setup("cannot create this client's rings: \(error)")
        }
        // The announcement, by rename: the engine sees it only once it is whole.
        let temporary = dir + "/\(name).tmp"
        let fd = open(temporary, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode)
        if fd >= 0 { Glibc.close(fd) }
        guard fd >= 0, rename(temporary, InstanceLayout.helloPath(dir, name)) == 0 else {
            cleanUp()
            throw .setup("cannot announce this client in \(dir): \(String(cString: strerror(errno)))")
        }
        let answer = session.awaitAnswer(timeoutNanoseconds: Int64(timeout * 1e9))
        switch answer {
        case .accepted:
            break
        case .refused:
            cleanUp()
            throw .refused("code \(session.refusal); the engine's log says why")
        case .pending:
            cleanUp()
            unlink(InstanceLayout.helloPath(dir, name))
            if !processIsAlive(engine.enginePid) { throw .engineGone(instance: instance, pid: engine.enginePid) }
            throw .handshakeTimedOut(instance: instance)
        }
        if stream != nil {
            guard let positions = session.positions(shards: engine.shardCount) else {
                cleanUp()
                throw .setup("engine '\(instance)' accepted the stream but said nothing of its positions (an engine without streams?)")
            }
            resumeOffsets = positions
        } else {
            resumeOffsets = []
        }
        sessionFile = session
        sessionId = session.sessionId
        rings = made
        hotRings = .allocate(capacity: 1)
        hotRings.initialize(to: SessionRings(commands: (0..<engine.shardCount).map { made[2 * $0].producer() },
                                             reports: (0..<engine.shardCount).map { made[2 * $0 + 1].consumer() },
                                             doorbells: (0..<engine.shardCount).map { bells.doorbell($0) }))
        hotUnflushed = .allocate(capacity: 1)
        hotUnflushed.initialize(to: 0)
    }

    deinit {
        close()
        hotRings.deinitialize(count: 1)
        hotRings.deallocate()
        hotUnflushed.deallocate()
    }

    /// Detaches: removes this client's files (the engine notices the files or the process go).
    public func close() {
        guard !closed else { return }
        closed = true
        unlink(InstanceLayout.sessionPath(directory, name))
        for s in 0..<engineFile.shardCount {
            unlink(InstanceLayout.commandRingPath(directory, name, shard: s))
            unlink(InstanceLayout.reportRingPath(directory, name, shard: s))
        }
    }

    /// A symbol by name. One this client has not seen yet (listed since it attached: `crossbook
    /// symbol add`) is looked for again in the engine's symbol list.
    public func symbol(_ name: String) throws(ClientError) -> SymbolInfo {
        if let info = symbols[name] { return info }
        if engineFile.symbolCount > symbols.count, let fresh = try? Self.readSymbols(directory: directory, engine: engineFile, instance: instance) {
            symbols = fresh
        }
        guard let info = symbols[name] else { throw .unknownSymbol(name) }
        return info
    }

    /// The engine's `symbols` file: one line per symbol, by slot (name id shard tick lot min max
    /// maxqty). A line this build cannot read is an error, not a guess.
    static func readSymbols(directory dir: String, engine: EngineFile, instance: String) throws(ClientError) -> [String: SymbolInfo] {
        var parsed: [String: SymbolInfo] = [:]
        guard let text = try? String(contentsOfFile: InstanceLayout.symbolsPath(dir), encoding: .utf8) else {
            throw .engineNotRunning(instance: instance, "cannot read its symbol list")
        }
        let published = engine.symbolCount
        for (slot, line) in text.split(separator: "\n").enumerated() {
            let f = line.split(separator: " ")
            guard f.count == 8, let id = UInt32(f[1]), let shard = Int(f[2]), let tick = Int64(f[3]), let lot = Int64(f[4]),
                  let lo = Int64(f[5]), let hi = Int64(f[6]), let maxQ = Int64(f[7]), shard >= 0, shard < engine.shardCount,
                  SymbolSpec.isValidName(String(f[0]))
            else { throw .setup("engine '\(instance)': a bad line in its symbol list: \(line)") }
            parsed[String(f[0])] = SymbolInfo(spec: SymbolSpec(name: String(f[0]), id: id, tickSize: tick, lotSize: lot,
                                                               minPrice: lo, maxPrice: hi, maxOrderQuantity: maxQ),
                                              shard: shard, slot: slot < published ? slot : -1)
        }
        return parsed
    }

    /// Puts one command in the ring of the symbol's shard. False when that ring is full (the
    /// engine is behind): try again, or wait for reports. The order id is yours, 0 ..< 2^48.
    /// `flush: false` leaves the shard's doorbell alone: submit a batch that way, then call
    /// `flush()` once (the doorbell costs a full memory fence).
    @discardableResult
    public func submit(_ command: BookCommand, symbol: SymbolInfo, clientTime: UInt64 = 0,
                       clientSequence: UInt64 = 0, flush: Bool = true) -> Bool {
        // Where the symbol lives now: the engine moves symbols between shards (a migration).
        let shard = shard(of: symbol)
        // A session the engine detached on this shard takes nothing more (`poll` says why).
        guard io.reports[shard].closed == nil, io.commands[shard].claim(1) == 1 else { return false }
        CommandRecord.encode(CommandRecord.Decoded(symbolId: symbol.spec.id, command: command, clientTime: clientTime,
                                                   clientSequence: clientSequence),
                             to: io.commands[shard].slot(0))
        io.commands[shard].publish(1)
        if flush { io.doorbells[shard].ring() } else { unflushed |= 1 << UInt64(shard) }
        return true
    }

    /// The shard that owns `symbol` now (the engine's control file says; the engine moves symbols
    /// between shards). A value out of range (never written so by an engine) falls back to the
    /// shard it had at attach.
    @inline(__always)
    public func shard(of symbol: SymbolInfo) -> Int {
        guard symbol.slot >= 0 else { return symbol.shard }
        let shard = engineFile.routeShard(symbol.slot)
        return shard < io.commands.count ? shard : symbol.shard
    }

    /// Puts one 64-byte command record, encoded by the caller (a plugin), in `shard`'s ring.
    /// False when that ring is full. The shard checks every field.
    @discardableResult
    public func submitRecord(_ record: UnsafeRawPointer, shard: Int) -> Bool {
        io.submitRecord(record, shard: shard)
    }

    /// Copies up to `capacity` waiting 64-byte report records to `out`; returns how many.
    public func pollRecords(into out: UnsafeMutableRawPointer, capacity: Int) throws(ClientError) -> Int {
        do { return try io.pollRecords(into: out, capacity: capacity) } catch { throw .setup("a report ring: \(error)") }
    }

    /// Wakes the shards that were sent commands with `flush: false`, if they sleep.
    public func flush() {
        var pending = unflushed
        unflushed = 0
        while pending != 0 {
            let shard = pending.trailingZeroBitCount
            io.doorbells[shard].ring()
            pending &= pending - 1
        }
    }

    /// Hands every report waiting now to `body`; returns how many.
    @discardableResult
    public func poll(_ body: (ReportRecord.Report) -> Void) throws(ClientError) -> Int {
        var total = 0
        var closed: ClientError?
        for s in io.reports.indices {
            // Read before the reports: whatever the engine wrote before closing is handed over first.
            let why = io.reports[s].closed
            let n: Int
            do { n = try io.reports[s].poll() } catch { throw .setup("report ring \(s): \(error)") }
            for k in 0..<n {
                if let report = ReportRecord.decode(io.reports[s].slot(k)) { body(report) }
            }
            if n > 0 { io.reports[s].release(n) }
            total += n
            if let why, n == 0, closed == nil { closed = .detached(shard: s, why) }
        }
        if let closed { throw closed }
        return total
    }

    /// Waits up to `timeout` seconds for reports and hands them to `body`. Throws if the
    /// engine dies meanwhile: a client never hangs on a dead engine.
    @discardableResult
    public func waitForReports(timeout: Double, _ body: (ReportRecord.Report) -> Void) throws(ClientError) -> Int {
        let deadline = monotonicSeconds() + timeout
        while true {
            let n = try poll(body)
            if n > 0 { return n }
            try checkEngine()
            if monotonicSeconds() >= deadline { return 0 }
            // Sleep on the first report ring's futex (the engine wakes it on publish), briefly,
            // so that reports from other shards and a dead engine are both noticed.
            var strategy = WaitStrategy(spins: 200, yields: 10, park: true, parkTimeoutNanoseconds: 20_000_000)
            if io.reports.count > 1 { strategy.park = false }
            do { _ = try io.reports[0].wait(strategy) } catch { throw .setup("report ring 0: \(error)") }
        }
    }

    /// Throws if the engine process is gone or stopping.
    public func checkEngine() throws(ClientError) {
        if !processIsAlive(engineFile.enginePid) { throw .engineGone(instance: instance, pid: engineFile.enginePid) }
        let state = engineFile.state
        if state == .stopping || state == .stopped { throw .engineNotRunning(instance: instance, "it is \(state)") }
    }

    public var shardCount: Int { engineFile.shardCount }

    /// With a stream: whether the command sent at `offset` to `symbol`'s shard was taken before
    /// this client attached (its outcome is in the journal; sending it again only gets a
    /// `duplicate_ingress` reject).
    public func wasTaken(offset: UInt64, symbol: SymbolInfo) -> Bool {
        let s = shard(of: symbol)
        return s < resumeOffsets.count && offset < resumeOffsets[s]
    }
}

func monotonicSeconds() -> Double { Double(monotonicNanoseconds()) / 1e9 }
