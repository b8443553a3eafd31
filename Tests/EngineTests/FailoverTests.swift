// Hot standby and failover: a standby that holds the primary's state (digests compared live and
// offline), unplanned failover by kill -9 under load with a checker that counts every
// acknowledged order exactly once, a network cut (sync stops acknowledging, async counts the
// lag), and the start-up rule that keeps a deposed primary from coming back as one.
import CCRC32C
import CrossbookClient
@testable import Engine
import Foundation
import Glibc
import Journal
import OrderBook
import SharedMemory
import Testing
import TestSupport
import Wire
import Workloads

/// Every new order in a shard's journal: client order id → how many times it was sequenced.
func journaledClientIds(_ data: String) throws -> [Int64: Int] {
    var out: [Int64: Int] = [:]
    _ = try JournalReader.scan(directory: data, shard: 0, repair: false) { type, _, payload in
        guard type == 1, payload.count == 80, let decoded = try? CommandRecord.decode(payload.baseAddress!),
              case .new(let order) = decoded.command else { return }
        out[order.orderId, default: 0] += 1
    }
    return out
}

/// The payloads of the new orders in a shard's journal (80 bytes each), as the journal holds them.
func journaledOrderPayloads(_ data: String) throws -> [[UInt8]] {
    var out: [[UInt8]] = []
    _ = try JournalReader.scan(directory: data, shard: 0, repair: false) { type, _, payload in
        guard type == 1, payload.count == 80, let decoded = try? CommandRecord.decode(payload.baseAddress!),
              case .new = decoded.command else { return }
        out.append(Array(UnsafeRawBufferPointer(payload)))
    }
    return out
}

/// How many of `needles` occur somewhere in `haystack`, byte for byte.
func occurrences(of needles: [[UInt8]], in haystack: [UInt8]) -> Int {
    // Indexed by their first 16 bytes; each offset of the haystack looked up, then compared whole.
    var byHead: [UInt128: [Int]] = [:]
    for (i, n) in needles.enumerated() where n.count >= 16 {
        byHead[n.withUnsafeBytes { $0.loadUnaligned(as: UInt128.self) }, default: []].append(i)
    }
    var found = Set<Int>()
    haystack.withUnsafeBytes { h in
        guard h.count >= 16 else { return }
        for at in 0...(h.count - 16) {
            guard let candidates = byHead[h.loadUnaligned(fromByteOffset: at, as: UInt128.self)] else { continue }
            for i in candidates where !found.contains(i) && at + needles[i].count <= h.count {
                if needles[i].withUnsafeBytes({ memcmp(h.baseAddress! + at, $0.baseAddress!, $0.count) }) == 0 { found.insert(i) }
            }
        }
    }
    return found.count
}

/// An offline replay of a journal (a copy of its segments): the digest it rebuilds.
func offlineDigest(_ data: String, tag: String, snapshots: Bool = false) throws -> UInt64? {
    let copy = data + "-replay-\(tag)"
    removeTree(copy)
    copyDirectory(data, copy, snapshots: snapshots)
    defer { removeTree(copy) }
    let offline = try durableEngine(testDirectory(), data: copy, instance: "replay-\(tag)", durability: .async,
                                    symbols: ["BTC-USD", "ETH-USD"])
    defer { offline.stop() }
    return offline.recoveredDigests.first
}

/// One engine process of a pair, configured by a TOML file of its own.
final class PairNode: @unchecked Sendable {
    let name: String
    let dir: String
    let data: String
    let config: String
    let log = LogLines()
    private(set) var process: Process?

    /// `engineExtra`: lines of the [engine] section; `extra`: lines of [replication] (and sections after it).
    init(name: String, listen: Int, peer: Int, mode: String = "sync", failoverAfterMs: Int? = 300, extra: String = "", engineExtra: String = "") {
        self.name = name
        dir = testDirectory()
        data = NSTemporaryDirectory() + "crossbook-ha-\(name)-\(UUID().uuidString.prefix(8))"
        config = NSTemporaryDirectory() + "crossbook-ha-\(name)-\(UUID().uuidString.prefix(8)).toml"
        let text = """
            [engine]
            instance = "\(name)"
            durability = "sync"
            \(engineExtra)
            [book]
            orders = 65536
            levels = 4096
            [[symbols]]
            name = "BTC-USD"
            [[symbols]]
            name = "ETH-USD"
            [replication]
            listen = "127.0.0.1:\(listen)"
            peer = "127.0.0.1:\(peer)"
            mode = "\(mode)"
            digest_every_ms = 100
            \(failoverAfterMs.map { "failover_after_ms = \($0)" } ?? "")
            \(extra)

            """
        FileManager.default.createFile(atPath: config, contents: Data(text.utf8))
    }

    /// `plugins`: load the config's [plugins] (else none; nil: whether it has that section);
    /// `arguments`: more options of `crossbook run`.
    func start(standby: Bool, rebuild: Bool = false, plugins: Bool? = nil, arguments: [String] = []) throws {
        let plugins = plugins ?? ((try? String(contentsOfFile: config, encoding: .utf8))?.contains("[plugins]") ?? false)
        let p = Process()
        p.executableURL = crossbookBinary()
        p.arguments = ["run", "--config", config, "--directory", dir, "--data-dir", data, "--no-pin", "--clean-stale"]
            + (plugins ? [] : ["--no-plugins"]) + (standby ? ["--standby"] : []) + (rebuild ? ["--rebuild"] : []) + arguments
        let err = Pipe()
        p.standardError = err
        p.standardOutput = err
        let log = self.log
        readLines(err.fileHandleForReading) { log.append($0) }
        try p.run()
        process = p
    }

    func kill9() {
        guard let p = process else { return }
        kill(p.processIdentifier, SIGKILL)
        p.waitUntilExit()
        process = nil
    }

    func terminate() {
        guard let p = process else { return }
        kill(p.processIdentifier, SIGTERM)
        p.waitUntilExit()
        process = nil
    }

    /// The engine's `replication` lines (empty while it does not answer).
    func status() -> [String] { (try? Engine.ask(directory: dir, "replication", timeout: 2)) ?? [] }
    var isPrimary: Bool { status().contains { $0.hasPrefix("role primary") } }
    /// Serving a standby with sync engaged.
    var engagedWithStandby: Bool { status().contains { $0.hasPrefix("serving") && $0.contains("engaged 1 standbys 1") } }

    func remove() {
        removeTree(data)
        try? FileManager.default.removeItem(atPath: config)
        for aside in (try? FileManager.default.contentsOfDirectory(atPath: NSTemporaryDirectory())) ?? []
        where aside.hasPrefix((data as NSString).lastPathComponent + ".diverged-")
            || aside.hasPrefix((data as NSString).lastPathComponent + ".replaced-") {
            removeTree(NSTemporaryDirectory() + aside)
        }
    }
}

@Suite("Hot standby and failover", .serialized)
struct FailoverTests {
    static let cycles = Int(ProcessInfo.processInfo.environment["CROSSBOOK_FAILOVER_CYCLES"] ?? "") ?? 10

    @Test("a standby under load holds the primary's state: digests compared live and offline; it takes no orders")
    func standbyFollows() throws {
        let pa = freeLoopbackPort(), pb = freeLoopbackPort()
        let a = PairNode(name: "hf-a", listen: pa, peer: pb, failoverAfterMs: nil)
        let b = PairNode(name: "hf-b", listen: pb, peer: pa, failoverAfterMs: nil)
        defer { a.terminate(); b.terminate(); a.remove(); b.remove() }
        try a.start(standby: false)
        #expect(waitFor(10) { a.isPrimary })
        try b.start(standby: true)
        #expect(waitFor(10) { a.engagedWithStandby }, "sync engaged: \(a.status())")
        // The standby refuses clients.
        #expect(throws: (any Error).self) { _ = try CrossbookClient(instance: "hf-b", directory: b.dir, timeout: 2) }
        let client = try CrossbookClient(instance: "hf-a", directory: a.dir)
        let btc = try client.symbol("BTC-USD"), eth = try client.symbol("ETH-USD")
        var acked = 0
        for id in 1...6000 {
            let side: Side = id % 2 == 0 ? .buy : .sell
            // A full ring (the primary holds output until the standby confirms): wait, send again.
            while !client.submit(.new(NewOrder(orderId: OrderId(id), side: side, price: 990 + Price(id % 21), quantity: 1 + Quantity(id % 3))),
                                 symbol: id % 3 == 0 ? eth : btc) {
                _ = try client.poll { if $0.kind == .accepted { acked += 1 } }
            }
            if id % 64 == 0 { _ = try client.poll { if $0.kind == .accepted { acked += 1 } } }
        }
        #expect(waitFor(15) {
            _ = try? client.poll { if $0.kind == .accepted { acked += 1 } }
            return acked == 6000
        }, "acknowledged \(acked) of 6000")
        client.close()
        // Caught up, and the primary's digests compared equal along the way.
        #expect(waitFor(10) { b.status().contains { $0.contains("lag 0 ") && !$0.contains("digests_matched 0") } }, "\(b.status())")
        #expect(!b.status().joined().contains("ALARM"))
        a.terminate()
        b.terminate()
        // The same journal records, and the same state rebuilt from either.
        let ca = try journaledClientIds(a.data), cb = try journaledClientIds(b.data)
        #expect(ca == cb && ca.count == 6000)
        let da = try offlineDigest(a.data, tag: "a"), db = try offlineDigest(b.data, tag: "b")
        #expect(da != nil && da == db)
        let stopped = a.log.all.first { $0.contains("stopped at state digest") } ?? ""
        #expect(stopped.hasSuffix(String(da ?? 0, radix: 16)), "\(stopped)")
    }

    @Test("kill -9 of the primary under load, 10 times (make soak: 200), the pair authenticated (secret_file): the standby promotes itself, every acknowledged order is in the final state exactly once, the old primary comes back as a standby and converges")
    func killPrimary() throws {
        let pa = freeLoopbackPort(), pb = freeLoopbackPort()
        // Authenticated: every reconnection, probe and catch-up of the cycles goes through it.
        let secret = Self.secretFile(Array("kill-cycles-\(UUID().uuidString)-0123456789abcdef".utf8))
        defer { unlink(secret) }
        let a = PairNode(name: "hk-a", listen: pa, peer: pb, extra: "secret_file = \"\(secret)\"")
        let b = PairNode(name: "hk-b", listen: pb, peer: pa, extra: "secret_file = \"\(secret)\"")
        defer { a.terminate(); b.terminate(); a.remove(); b.remove() }
        try a.start(standby: false)
        #expect(waitFor(10) { a.isPrimary })
        try b.start(standby: true)
        #expect(waitFor(10) { a.engagedWithStandby }, "\(a.status())")
        #expect(a.status().contains { $0.hasPrefix("role primary") && $0.hasSuffix("authenticated 1") }, "\(a.status())")
        var primary = a, standby = b
        var acked = Set<Int64>()
        var nextId: Int64 = 0
        var rng = UInt64(77)
        var rtos: [Double] = []
        var rebuilds = 0
        for cycle in 0..<Self.cycles {
            // The standby has heard that sync is engaged (the condition of its automatic promotion).
            #expect(waitFor(10) { standby.status().contains { $0.hasPrefix("following") && $0.contains("engaged 1") } }, "cycle \(cycle): \(standby.status())")
            let client = try CrossbookClient(instance: primary.name, directory: primary.dir)
            let btc = try client.symbol("BTC-USD"), eth = try client.symbol("ETH-USD")
            rng = rng &* 6364136223846793005 &+ 1442695040888963407
            let runFor = 0.05 + Double((rng >> 33) % 250) / 1000
            let hardStop = Date().addingTimeInterval(5)
            var stopAt = hardStop
            var cycleAcked = 0, cycleSent = 0
            func take() throws {
                _ = try client.poll { if $0.kind == .accepted { acked.insert($0.orderId); cycleAcked += 1 } }
            }
            while Date() < stopAt && Date() < hardStop {
                if stopAt == hardStop && cycleAcked > 0 { stopAt = Date().addingTimeInterval(runFor) }
                if cycleSent - cycleAcked < 2000 {
                    // Buys and sells at one price in turn: the books stay small over every cycle.
                    let side: Side = ((nextId + 1) / 2) % 2 == 0 ? .buy : .sell
                    // Not sent (a full ring): the same id is tried again.
                    if client.submit(.new(NewOrder(orderId: nextId + 1, side: side, price: 1000, quantity: 1)),
                                     symbol: (nextId + 1) % 3 == 0 ? eth : btc) {
                        nextId += 1
                        cycleSent += 1
                    }
                }
                try take()
            }
            let killedAt = Date()
            primary.kill9()
            // Acknowledgements that were in the report ring when the engine died count too.
            try? take()
            client.close()
            #expect(cycleAcked > 0, "cycle \(cycle): nothing acknowledged before the kill")
            if cycleAcked == 0 && ProcessInfo.processInfo.environment["HA_DEBUG"] != nil {
                print("PRIMARY LOG\n" + primary.log.all.suffix(30).joined(separator: "\n"))
                print("STANDBY LOG\n" + standby.log.all.suffix(30).joined(separator: "\n"))
            }
            // The standby notices, waits out failover_after_ms, promotes itself.
            #expect(waitFor(10) { standby.isPrimary }, "cycle \(cycle): no promotion: \(standby.status())")
            // RTO: from the kill to the first order acknowledged by the new primary.
            let next = try CrossbookClient(instance: standby.name, directory: standby.dir)
            nextId += 1
            let probe = nextId
            _ = next.submit(.new(NewOrder(orderId: probe, side: .buy, price: 999, quantity: 1)), symbol: try next.symbol("BTC-USD"))
            var probeAcked = false
            _ = waitFor(10) {
                _ = try? next.poll { if $0.kind == .accepted && $0.orderId == probe { probeAcked = true; acked.insert(probe) } }
                return probeAcked
            }
            #expect(probeAcked, "cycle \(cycle): the new primary acknowledged nothing")
            rtos.append(Date().timeIntervalSince(killedAt) * 1000)
            next.close()
            if cycle == 0 {
                // A deposed primary does not come back as one while its peer serves.
                try primary.start(standby: false)
                primary.process?.waitUntilExit()
                #expect(primary.process?.terminationStatus != 0)
                #expect(primary.log.contains("is serving as a primary"))
            }
            // The old primary comes back as the standby, without a rebuild: if its journal went
            // past what the new primary has (durable there, never confirmed), it cuts its
            // journal back to the common prefix, starts again and follows.
            let before = primary.log.all.count
            try primary.start(standby: true)
            #expect(waitFor(20) { standby.engagedWithStandby }, "cycle \(cycle): the old primary did not engage as the standby: \(standby.status()) \(primary.log.all.suffix(4))")
            if primary.log.all.dropFirst(before).contains(where: { $0.contains("journal cut back after sequence") }) { rebuilds += 1 }
            swap(&primary, &standby)
        }
        print("failover RTO ms: \(rtos.map { String(format: "%.0f", $0) }.joined(separator: " ")); old primaries cut back to the new primary's journal: \(rebuilds) of \(rtos.count)")
        // The standby has caught up; stop both.
        #expect(waitFor(10) { standby.status().contains { $0.contains("lag 0 ") } })
        primary.terminate()
        standby.terminate()
        // Every acknowledged order is in the final primary's journal exactly once.
        let counts = try journaledClientIds(primary.data)
        let missing = acked.filter { counts[$0] == nil }
        let twice = counts.filter { $0.value > 1 }
        #expect(missing.isEmpty, "\(missing.count) of \(acked.count) acknowledged orders lost")
        #expect(twice.isEmpty, "\(twice.count) orders sequenced twice")
        // Its digest equals an offline replay of its journal, and the standby converged.
        let dp = try offlineDigest(primary.data, tag: "p"), ds = try offlineDigest(standby.data, tag: "s")
        let stopped = primary.log.all.last { $0.contains("stopped at state digest") } ?? ""
        #expect(dp != nil && stopped.hasSuffix(String(dp ?? 0, radix: 16)), "\(stopped)")
        #expect(ds == dp)
    }
}

extension FailoverTests {
    @Test("a stream client across a kill -9 failover: it resends what was not acknowledged with the same offsets; each order is taken exactly once (an independent replay of the new primary's journal); a plain client of the new primary gets no id of the old primary's resting orders")
    func streamFailover() throws {
        let pa = freeLoopbackPort(), pb = freeLoopbackPort()
        let a = PairNode(name: "hs-a", listen: pa, peer: pb), b = PairNode(name: "hs-b", listen: pb, peer: pa)
        defer { a.terminate(); b.terminate(); a.remove(); b.remove() }
        try a.start(standby: false)
        #expect(waitFor(10) { a.isPrimary })
        try b.start(standby: true)
        #expect(waitFor(10) { a.engagedWithStandby }, "\(a.status())")
        #expect(waitFor(10) { b.status().contains { $0.hasPrefix("following") && $0.contains("engaged 1") } }, "\(b.status())")
        // A plain client's resting order on the old primary.
        let plain = try CrossbookClient(instance: a.name, directory: a.dir)
        let plainBtc = try plain.symbol("BTC-USD")
        sendAt(plain, .new(NewOrder(orderId: 7, side: .buy, price: 900, quantity: 1)), plainBtc, offset: 0)
        #expect(try reports(plain, count: 1).first?.kind == .accepted)
        let plainSession = plain.sessionId

        let desk = try CrossbookClient(instance: a.name, directory: a.dir, stream: "desk")
        #expect(desk.resumeOffsets == [0])
        let btc = try desk.symbol("BTC-USD"), eth = try desk.symbol("ETH-USD")
        func order(_ offset: UInt64) -> BookCommand {
            // Buys and sells at one price in turn: the book stays small.
            .new(NewOrder(orderId: OrderId(offset + 1), side: (offset / 2) % 2 == 0 ? .buy : .sell, price: 1000, quantity: 1))
        }
        func symbol(_ offset: UInt64) -> SymbolInfo { offset % 3 == 0 ? eth : btc }
        var acked = Set<Int64>(), sent: UInt64 = 0
        func take(_ c: CrossbookClient) throws { _ = try c.poll { if $0.kind == .accepted { acked.insert($0.orderId) } } }
        let hardStop = Date().addingTimeInterval(5)
        var stopAt = hardStop
        while Date() < stopAt && Date() < hardStop {
            if stopAt == hardStop && !acked.isEmpty { stopAt = Date().addingTimeInterval(0.15) }
            if Int(sent) - acked.count < 2000, desk.submit(order(sent), symbol: symbol(sent), clientSequence: sent) { sent += 1 }
            try take(desk)
        }
        // Orders in flight at the kill, whatever the speed of the moment: with the standby
        // stopped, the sync primary cannot acknowledge a last burst (some of it may reach the
        // standby's socket, some not: the resend below takes the one and refuses the other).
        let standbyPid = try #require(b.process?.processIdentifier)
        kill(standbyPid, SIGSTOP)
        for _ in 0..<200 {
            // A full ring: the same offset is tried again.
            if desk.submit(order(sent), symbol: symbol(sent), clientSequence: sent) { sent += 1 }
        }
        Thread.sleep(forTimeInterval: 0.05)
        try take(desk)
        a.kill9()
        kill(standbyPid, SIGCONT)
        try? take(desk)
        desk.close()
        plain.close()
        #expect(!acked.isEmpty && acked.count < Int(sent), "acknowledged \(acked.count) of \(sent)")
        #expect(waitFor(10) { b.isPrimary }, "no promotion: \(b.status())")

        // A plain client of the new primary: never the id under which the old one's order rests.
        let stranger = try CrossbookClient(instance: b.name, directory: b.dir)
        #expect(stranger.sessionId != plainSession)
        sendAt(stranger, .cancel(CancelOrder(orderId: 7)), try stranger.symbol("BTC-USD"), offset: 0)
        #expect(try reports(stranger, count: 1).first?.kind == .rejected)
        stranger.close()

        // The stream attaches to the new primary: everything acknowledged is below its position
        // (sync: acknowledged means on the standby's disk); the rest is sent again.
        let again = try CrossbookClient(instance: b.name, directory: b.dir, stream: "desk")
        let resume = try #require(again.resumeOffsets.first)
        #expect(acked.allSatisfy { UInt64($0 - 1) < resume }, "an acknowledged order above the position \(resume)")
        let unacked = (0..<sent).filter { !acked.contains(OrderId($0 + 1)) }
        var duplicates = 0, taken = 0, other: [String] = []
        // Each resent order's answer (trades of the resent orders come too: not counted).
        var answers: [OrderId: ReportRecord.Report] = [:]
        let wanted = Set(unacked.map { OrderId($0 + 1) })
        func collect() throws {
            _ = try again.poll { r in if r.kind != .trade, wanted.contains(r.orderId) { answers[r.orderId] = r } }
        }
        for offset in unacked {
            while !again.submit(order(offset), symbol: symbol(offset), clientSequence: offset) { try collect() }
            try collect()
        }
        _ = waitFor(10) { (try? collect()) != nil && answers.count == wanted.count }
        for r in answers.values {
            if r.kind == .rejected && r.code == RejectReason.duplicateIngress.rawValue { duplicates += 1 }
            else if r.kind == .accepted { taken += 1 }
            else { other.append("\(r.kind) \(r.code)") }
        }
        #expect(answers.count == wanted.count, "answers for \(answers.count) of \(wanted.count) resent orders")
        #expect(other.isEmpty, "\(other.prefix(5))")
        #expect(duplicates == unacked.filter { $0 < resume }.count && taken == unacked.filter { $0 >= resume }.count,
                "duplicates \(duplicates), taken \(taken), unacknowledged \(unacked.count), position \(resume)")
        print("stream failover: sent \(sent), acknowledged \(acked.count), position on the new primary \(resume), resent \(unacked.count): \(duplicates) duplicate_ingress, \(taken) taken")
        let streamSession = again.sessionId
        again.close()
        b.terminate()

        // An independent replay of the new primary's journal: per offset of the stream, taken
        // when it is at or above the position so far; every order sent is taken exactly once.
        var next: UInt64 = 0
        var times: [Int64: Int] = [:]
        _ = try JournalReader.scan(directory: b.data, shard: 0, repair: false) { type, _, payload in
            guard type == 1, payload.count == 80,
                  UInt32(littleEndian: payload.loadUnaligned(fromByteOffset: 64, as: UInt32.self)) == streamSession,
                  let decoded = try? CommandRecord.decode(payload.baseAddress!), case .new(let o) = decoded.command else { return }
            guard decoded.clientSequence >= next else { return }
            next = decoded.clientSequence + 1
            times[o.orderId, default: 0] += 1
        }
        #expect(times.count == Int(sent) && times.values.allSatisfy { $0 == 1 }, "taken \(times.count) of \(sent), twice: \(times.filter { $0.value > 1 }.count)")
    }
}

/// A TCP relay the test controls, standing in for the network between primary and standby:
/// `cut` stops carrying bytes without closing anything (a partition sends no FIN), `heal`
/// closes what was cut and carries new connections again.
final class CuttableProxy: @unchecked Sendable {
    let port: Int
    private let upstream: Int
    private let lock = NSLock()
    private var cutNow = false
    private var generation = 0
    private var listener: Int32 = -1
    private var stopped = false

    init(to upstream: Int) {
        self.upstream = upstream
        port = freeLoopbackPort()
        listener = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var one: Int32 = 1
        setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        var a = sockaddr_in()
        a.sin_family = sa_family_t(AF_INET)
        a.sin_addr.s_addr = inet_addr("127.0.0.1")
        a.sin_port = UInt16(port).bigEndian
        _ = withUnsafePointer(to: &a) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(listener, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        listen(listener, 8)
        Thread { [self] in acceptLoop() }.start()
    }

    func cut() { lock.lock(); cutNow = true; lock.unlock() }
    /// Flips the last byte of the next chunk carried from the upstream (the primary) on.
    func corruptNext() { lock.lock(); corrupt = true; lock.unlock() }
    /// Every byte the upstream (the primary) sent through the proxy so far, as it came (at most
    /// 64 MiB).
    var fromUpstream: [UInt8] { lock.lock(); defer { lock.unlock() }; return captured }
    private var captured: [UInt8] = []
    private func capture(_ bytes: UnsafeRawBufferPointer) {
        lock.lock(); defer { lock.unlock() }
        if captured.count + bytes.count <= 64 << 20 { captured.append(contentsOf: bytes) }
    }
    private var corrupt = false
    private func takeCorrupt() -> Bool { lock.lock(); defer { lock.unlock() }; let c = corrupt; corrupt = false; return c }
    func heal() { lock.lock(); cutNow = false; generation += 1; lock.unlock() }
    func stop() { lock.lock(); stopped = true; lock.unlock(); shutdown(listener, Int32(SHUT_RDWR)); close(listener) }

    private var state: (cut: Bool, generation: Int, stopped: Bool) { lock.lock(); defer { lock.unlock() }; return (cutNow, generation, stopped) }

    private func acceptLoop() {
        while !state.stopped {
            let client = accept(listener, nil, nil)
            if client < 0 { if state.stopped { return } else { continue } }
            let server = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            var a = sockaddr_in()
            a.sin_family = sa_family_t(AF_INET)
            a.sin_addr.s_addr = inet_addr("127.0.0.1")
            a.sin_port = UInt16(upstream).bigEndian
            let rc = withUnsafePointer(to: &a) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(server, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
            if rc != 0 { close(client); close(server); continue }
            let born = state.generation
            for (from, to) in [(client, server), (server, client)] {
                Thread { [self] in
                    var buffer = [UInt8](repeating: 0, count: 65536)
                    while true {
                        var p = pollfd(fd: from, events: Int16(POLLIN), revents: 0)
                        let s = state
                        if s.stopped || s.generation != born { break }
                        if s.cut { usleep(10_000); continue }  // bytes stay in the kernel: a partition
                        if poll(&p, 1, 50) <= 0 { continue }
                        if state.cut { continue }  // cut while waiting: the bytes stay where they are
                        let n = buffer.withUnsafeMutableBytes { recv(from, $0.baseAddress!, $0.count, 0) }
                        if n <= 0 { break }
                        if from == server {
                            buffer.withUnsafeBytes { capture(UnsafeRawBufferPointer(rebasing: $0[0..<n])) }
                            if takeCorrupt() { buffer[n - 1] ^= 0x40 }
                        }
                        var sent = 0
                        while sent < n {
                            let m = buffer.withUnsafeBytes { send(to, $0.baseAddress! + sent, n - sent, Int32(MSG_NOSIGNAL)) }
                            if m <= 0 { break }
                            sent += m
                        }
                    }
                    // Either direction ending ends both (a second shutdown does nothing).
                    shutdown(client, Int32(SHUT_RDWR))
                    shutdown(server, Int32(SHUT_RDWR))
                }.start()
            }
        }
    }
}

extension FailoverTests {
    /// Orders through a client; returns how many were acknowledged within `seconds`.
    static func submitAndCount(_ client: CrossbookClient, _ symbol: SymbolInfo, ids: ClosedRange<Int64>, seconds: Double) throws -> Int {
        var acked = 0
        for id in ids {
            while !client.submit(.new(NewOrder(orderId: id, side: id % 2 == 0 ? .buy : .sell, price: 900 + Price(id % 7), quantity: 1)), symbol: symbol) {
                _ = try client.poll { if $0.kind == .accepted { acked += 1 } }
            }
        }
        _ = waitFor(seconds) {
            _ = try? client.poll { if $0.kind == .accepted { acked += 1 } }
            return acked == ids.count
        }
        return acked
    }

    @Test("a network cut between primary and standby: sync stops acknowledging rather than lose, and resumes when it heals; async keeps acknowledging and counts the lag")
    func networkCut() throws {
        for mode in ["sync", "async"] {
            let pa = freeLoopbackPort(), pb = freeLoopbackPort()
            let proxy = CuttableProxy(to: pa)
            defer { proxy.stop() }
            let a = PairNode(name: "hn-a", listen: pa, peer: pb, mode: mode, failoverAfterMs: nil)
            let b = PairNode(name: "hn-b", listen: pb, peer: proxy.port, mode: mode, failoverAfterMs: nil)
            defer { a.terminate(); b.terminate(); a.remove(); b.remove() }
            try a.start(standby: false)
            #expect(waitFor(10) { a.isPrimary })
            try b.start(standby: true)
            #expect(waitFor(10) { a.status().contains { $0.hasPrefix("serving") && $0.contains("standbys 1") } }, "\(mode): \(a.status())")
            let client = try CrossbookClient(instance: "hn-a", directory: a.dir)
            let btc = try client.symbol("BTC-USD")
            #expect(try Self.submitAndCount(client, btc, ids: 1...200, seconds: 10) == 200, "\(mode): before the cut")
            // Sync engages once the standby has caught up (the orders above were acknowledged
            // before that, by the primary alone): wait for it, or the cut finds it running alone.
            if mode == "sync" {
                #expect(waitFor(10) { a.engagedWithStandby }, "\(a.status())")
                // Without a secret the journal crosses the network as it lies on disk (what the
                // encrypted case below must not show).
                let orders = try journaledOrderPayloads(a.data)
                #expect(orders.count == 200 && occurrences(of: orders, in: proxy.fromUpstream) == 200)
            }
            proxy.cut()
            let during = try Self.submitAndCount(client, btc, ids: 201...400, seconds: 2)
            let lag = a.status().first { $0.hasPrefix("serving") } ?? ""
            if ProcessInfo.processInfo.environment["HA_DEBUG"] != nil { print(a.status(), b.status(), a.log.all.suffix(8), b.log.all.suffix(8)) }
            if mode == "sync" {
                #expect(during == 0, "sync: \(during) orders acknowledged while no standby could confirm them")
            } else {
                #expect(during == 200, "async: \(during) of 200 acknowledged during the cut")
                #expect(!lag.hasSuffix("lag 0"), "async: the lag is counted: \(lag)")
            }
            proxy.heal()
            // The standby reconnects and catches up: sync releases what it held.
            var late = 0
            _ = waitFor(15) {
                _ = try? client.poll { if $0.kind == .accepted { late += 1 } }
                return during + late == 200
            }
            #expect(during + late == 200, "\(mode): after the cut healed, \(during + late) of 200")
            #expect(waitFor(10) { (a.status().first { $0.hasPrefix("serving") } ?? "").hasSuffix("lag 0") }, "\(mode): \(a.status())")
            client.close()
            a.terminate()
            b.terminate()
            // Nothing lost, nothing twice: both journals hold the 400 orders once.
            let ca = try journaledClientIds(a.data), cb = try journaledClientIds(b.data)
            #expect(ca.count == 400 && ca.values.allSatisfy { $0 == 1 } && ca == cb, "\(mode): \(ca.count) / \(cb.count)")
        }
    }
}

/// An engine in this process with a [replication] section; with `lease` (the Redis address, and
/// the key), the lease is taken through redis-routing.
func replicatedEngine(_ name: String, data: String, role: ReplicationSettings.Role, listen: Int?, peer: Int?,
                      lease: (redis: String, key: String)? = nil, log: LogLines = LogLines()) throws -> Engine {
    var settings = EngineSettings(
        instance: name, directory: testDirectory(), shards: [ShardSettings(core: nil)],
        symbols: [(spec: SymbolSpec(name: "BTC-USD", id: 1), shard: 0)],
        capacity: BookCapacity(orders: 1 << 12, levels: 1 << 8),
        wait: WaitStrategy(spins: 1000, yields: 10, park: true, parkTimeoutNanoseconds: 20_000_000))
    settings.durability = .sync
    settings.dataDirectory = data
    settings.replication = ReplicationSettings(role: role, listen: listen.map { "127.0.0.1:\($0)" },
                                               peer: peer.map { "127.0.0.1:\($0)" }, digestEveryMilliseconds: 50, lease: lease?.key)
    if let lease {
        settings.plugins = PluginSettings(directory: PluginSettings.executableDirectory, load: [
            PluginSpec(name: "redis-routing", config: ["redis": lease.redis, "timeout_ms": "500"]),
        ])
    }
    let engine = Engine(settings: settings, log: { log.append($0) })
    _ = try engine.start()
    return engine
}

/// A raw TCP connection to 127.0.0.1:port.
func rawConnect(_ port: Int) -> Int32 {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    var a = sockaddr_in()
    a.sin_family = sa_family_t(AF_INET)
    a.sin_addr.s_addr = inet_addr("127.0.0.1")
    a.sin_port = UInt16(port).bigEndian
    _ = withUnsafePointer(to: &a) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
    return fd
}

/// A listening socket on a free loopback port.
func rawListen() -> (fd: Int32, port: Int) {
    let port = freeLoopbackPort()
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    var one: Int32 = 1
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
    var a = sockaddr_in()
    a.sin_family = sa_family_t(AF_INET)
    a.sin_addr.s_addr = inet_addr("127.0.0.1")
    a.sin_port = UInt16(port).bigEndian
    _ = withUnsafePointer(to: &a) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
    listen(fd, 4)
    return (fd, port)
}

/// A standby engine in this process whose primary is the test: `start` waits for the standby to
/// connect and say hello, and gives the test's side of the connection.
final class FakePrimary {
    let server = rawListen()
    let log = LogLines()
    let engine: Engine
    private(set) var connection: ReplicationConnection?
    private(set) var hello: ReplicationMessage?

    init(_ name: String, data: String) throws {
        do { engine = try replicatedEngine(name, data: data, role: .standby, listen: nil, peer: server.port, log: log) } catch {
            close(server.fd)
            throw error
        }
    }

    /// The standby connected and said hello (false: it did not, within 5 s).
    func start() -> Bool {
        var p = pollfd(fd: server.fd, events: Int16(POLLIN), revents: 0)
        guard poll(&p, 1, 5000) == 1 else { return false }
        let c = ReplicationConnection(fd: accept(server.fd, nil, nil), peer: "standby")
        connection = c
        _ = waitFor(3) { hello = try? c.receive(timeoutMilliseconds: 50); return hello != nil }
        guard case .hello? = hello else { return false }
        return true
    }

    func stop() {
        connection?.shutdownNow()
        engine.stop()
        close(server.fd)
    }
}

/// One raw record as a journal holds it (header with CRC, payload, padding).
func rawRecord(type: UInt16, sequence: UInt64, payload: [UInt8]) -> [UInt8] {
    var header = [UInt8](repeating: 0, count: 24)
    header.withUnsafeMutableBytes { h in
        h.storeBytes(of: UInt32(payload.count).littleEndian, toByteOffset: 0, as: UInt32.self)
        h.storeBytes(of: type.littleEndian, toByteOffset: 4, as: UInt16.self)
        h.storeBytes(of: sequence.littleEndian, toByteOffset: 8, as: UInt64.self)
        var crc = cb_crc32c(0, h.baseAddress!, 16)
        crc = payload.withUnsafeBytes { cb_crc32c(crc, $0.baseAddress!, payload.count) }
        h.storeBytes(of: crc.littleEndian, toByteOffset: 16, as: UInt32.self)
    }
    let record = header + payload
    return record + [UInt8](repeating: 0, count: JournalLayout.recordSize(payload: payload.count) - record.count)
}

extension FailoverTests {
    @Test("garbage on a primary's replication port: closed with a reason; a forged hello is refused; acknowledgements above what was sent release nothing")
    func hostileStandby() throws {
        let data = NSTemporaryDirectory() + "crossbook-ha-hp-\(UUID().uuidString.prefix(8))"
        defer { removeTree(data) }
        let port = freeLoopbackPort()
        let log = LogLines()
        let engine = try replicatedEngine("hp", data: data, role: .primary, listen: port, peer: nil, log: log)
        defer { engine.stop() }
        // Random bytes, a frame claiming 4 GiB, an unknown kind: each connection is dropped, the engine serves on.
        var rng = SplitMix64(seed: 9)
        for attempt in 0..<20 {
            let fd = rawConnect(port)
            var junk = (0..<(1 + Int(rng.next() % 300))).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
            if attempt == 1 { junk = [0xFF, 0xFF, 0xFF, 0xFF, 1, 0, 0, 0] }
            if attempt == 2 { junk = [0, 0, 0, 0, 99, 0, 0, 0] }
            _ = send(fd, junk, junk.count, Int32(MSG_NOSIGNAL))
            var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            _ = poll(&p, 1, 2000)
            close(fd)
        }
        // Many connections that say nothing: at most 8 are served (each for 5 s), the rest are
        // closed at once; no thread piles up, and a real hello gets through once they time out.
        // The server's connection threads (the process's count moves with the other tests of
        // this process, an engine with librdkafka's threads among them): 40 connections served
        // each by a thread would be far above the bound.
        let server = try #require(engine.replication?.server)
        let silent = (0..<40).map { _ in rawConnect(port) }
        usleep(300_000)
        #expect(server.connectionThreads >= 1 && server.connectionThreads <= ReplicationServer.maxConnections,
                "\(server.connectionThreads) connection threads")
        for fd in silent { close(fd) }
        // Hellos that do not fit: another configuration, two shards, a journal that went past this one.
        let forged: [(ReplicationMessage, String)] = [
            (.hello(epoch: 0, configuration: 1, shards: [.init(last: 0, crc: 0)]), "configuration"),
            (.hello(epoch: 0, configuration: engine.replicationConfigurationHash, shards: [.init(last: 0, crc: 0), .init(last: 0, crc: 0)]), "shards"),
            (.hello(epoch: 0, configuration: engine.replicationConfigurationHash, shards: [.init(last: 1_000_000, crc: 7)]), "diverged"),
            (.hello(epoch: 0, configuration: engine.replicationConfigurationHash, shards: [.init(last: 1_000_000, crc: 7)]), "diverged-garbage"),
            (.hello(epoch: 9, configuration: engine.replicationConfigurationHash, shards: [.init(last: 0, crc: 0)]), "replaced"),
        ]
        for (hello, why) in forged {
            let connection = try ReplicationConnection.connect(to: try ReplicationAddress("127.0.0.1:\(port)"), timeoutMilliseconds: 1000)
            try connection.send(hello)
            var answer: ReplicationMessage?
            _ = waitFor(3) { answer = try? connection.receive(timeoutMilliseconds: 50); return answer != nil }
            if why == "diverged" {
                // A journal that went past this one: told so, then probes answered (nothing
                // beyond this journal), and anything but a probe of a shard it has refused.
                #expect(answer == .diverged(shard: 0, last: 1_000_000), "\(String(describing: answer))")
                try connection.send(.probe(shard: 0, sequence: 1_000_000))
                var probed: ReplicationMessage?
                _ = waitFor(3) { probed = try? connection.receive(timeoutMilliseconds: 50); return probed != nil }
                #expect(probed == .probed(shard: 0, sequence: 1_000_000, crc: nil), "\(String(describing: probed))")
                // At most 65 probes a shard are answered (each walks a segment): then the primary closes.
                var answered = 1
                for n in 2...70 {
                    guard (try? connection.send(.probe(shard: 0, sequence: UInt64(n)))) != nil else { break }
                    var got: ReplicationMessage?
                    _ = waitFor(2) {
                        do { got = try connection.receive(timeoutMilliseconds: 50) } catch { return true }
                        return got != nil
                    }
                    guard got != nil else { break }
                    answered += 1
                }
                #expect(answered == ReplicationMessage.maxProbes(shards: 1), "\(answered) probes answered")
                continue
            }
            if why == "diverged-garbage" {
                #expect(answer == .diverged(shard: 0, last: 1_000_000), "\(String(describing: answer))")
                try connection.send(.probe(shard: 5, sequence: 1))
                var refused: ReplicationMessage?
                _ = waitFor(3) { refused = try? connection.receive(timeoutMilliseconds: 50); return refused != nil }
                guard case .refuse(let text)? = refused else { Issue.record("probe of shard 5: \(String(describing: refused))"); continue }
                #expect(text.contains("unexpected message"), "\(text)")
                continue
            }
            guard case .refuse(let text)? = answer else { Issue.record("\(why): \(String(describing: answer))"); continue }
            #expect(text.contains(why), "\(text)")
        }
        // A standby that acknowledges far ahead, before anything was sent: nothing is released
        // beyond what it was sent, so an order waits for records it really confirmed.
        let liar = try ReplicationConnection.connect(to: try ReplicationAddress("127.0.0.1:\(port)"), timeoutMilliseconds: 1000)
        try liar.send(.hello(epoch: 0, configuration: engine.replicationConfigurationHash, shards: [.init(last: 0, crc: 0)]))
        var welcome: ReplicationMessage?
        _ = waitFor(3) { welcome = try? liar.receive(timeoutMilliseconds: 50); return welcome != nil }
        guard case .welcome? = welcome else { Issue.record("no welcome: \(String(describing: welcome))"); return }
        try liar.send(.ack(shard: 0, durable: 1 << 40))
        let client = try CrossbookClient(instance: "hp", directory: engine.settings.directory)
        defer { client.close() }
        #expect(client.submit(.new(NewOrder(orderId: 1, side: .buy, price: 100, quantity: 1)), symbol: try client.symbol("BTC-USD")))
        var acked = false
        _ = waitFor(1) { _ = try? client.poll { if $0.kind == .accepted { acked = true } }; return acked }
        #expect(!acked, "an order was acknowledged on an acknowledgement sent before its record")
        // Once the liar has been sent the record and confirms it, the order is released.
        var last: UInt64 = 0
        _ = waitFor(3) {
            if case .records(_, _, let bytes)? = try? liar.receive(timeoutMilliseconds: 50) {
                bytes.withUnsafeBytes { raw in
                    var at = 0
                    while at < raw.count, case .success(let r) = JournalRecordBytes.check(UnsafeRawBufferPointer(rebasing: raw[at...])) {
                        last = r.sequence
                        at += r.size
                    }
                }
            }
            return last > 0
        }
        try liar.send(.ack(shard: 0, durable: last))
        #expect(waitFor(3) { _ = try? client.poll { if $0.kind == .accepted { acked = true } }; return acked })
        #expect(engine.role == .primary)
    }

    @Test("a primary that sends garbage, a gap, a wrong digest or a welcome without a good instance name: the standby applies nothing of it, raises an alarm or drops the connection, and refuses promotion after an alarm")
    func hostilePrimary() throws {
        for scenario in ["bad-crc", "gap", "digest", "huge-frame", "nameless-welcome", "spaced-name-welcome", "long-name-welcome"] {
            let data = NSTemporaryDirectory() + "crossbook-ha-hs-\(UUID().uuidString.prefix(8))"
            defer { removeTree(data) }
            let fake = try FakePrimary("hs", data: data)
            defer { fake.stop() }
            guard fake.start(), let connection = fake.connection else { Issue.record("\(scenario): no hello"); continue }
            let (engine, log, server, fd) = (fake.engine, fake.log, fake.server, connection.fd)
            let lines = { engine.replicationStatus().joined(separator: " | ") }
            if scenario.hasSuffix("-welcome") {
                // A welcome as a primary of protocol version 1 sent it (no name), or with a name
                // that is not one: epoch 0, mode sync, then the name's bytes.
                let name: [UInt8] = scenario == "nameless-welcome" ? [] : scenario == "spaced-name-welcome"
                    ? Array("hs primary".utf8) : [UInt8](repeating: 0x61, count: 128)
                let body = [UInt8](repeating: 0, count: 9) + name
                var frame = withUnsafeBytes(of: UInt32(body.count).littleEndian, Array.init) + [2, 0, 0, 0] + body
                _ = send(fd, &frame, frame.count, Int32(MSG_NOSIGNAL))
                #expect(waitFor(5) { log.contains("welcome names no instance") }, "\(scenario): \(log.all.suffix(3))")
                #expect(lines().contains("connected 0") && lines().contains("instance -"), "\(scenario): \(lines())")
                #expect(Engine.primaryInstance(dataDirectory: data) == nil)
                #expect(engine.role == .standby)
                connection.shutdownNow()
                continue
            }
            try connection.send(.welcome(epoch: 0, mode: .sync, instance: "hs-primary"))
            // The standby knows its primary's name, and keeps it for a promotion after a restart.
            #expect(waitFor(5) { lines().contains("instance hs-primary connected 1") }, "\(scenario): \(lines())")
            #expect(Engine.primaryInstance(dataDirectory: data) == "hs-primary")
            let command = [UInt8](repeating: 0, count: 80)  // an all-zero command: rejected when applied, but sequenced
            switch scenario {
            case "bad-crc":
                var record = rawRecord(type: 1, sequence: 1, payload: command)
                record[30] ^= 1
                try connection.send(.records(shard: 0, durable: 1, bytes: record))
            case "gap":
                try connection.send(.records(shard: 0, durable: 5, bytes: rawRecord(type: 1, sequence: 5, payload: command)))
            case "digest":
                try connection.send(.digest(shard: 0, sequence: 1, digest: 12345))
                try connection.send(.records(shard: 0, durable: 1, bytes: rawRecord(type: 1, sequence: 1, payload: command)))
            default:
                var frame = [UInt8](repeating: 0, count: 8)
                frame[0] = 0xFF; frame[1] = 0xFF; frame[2] = 0xFF; frame[3] = 0x7F; frame[4] = 4
                _ = send(fd, frame, 8, Int32(MSG_NOSIGNAL))
            }
            switch scenario {
            case "bad-crc", "huge-frame":
                // Refused at the door: the connection is dropped, nothing applied, the standby lives on.
                #expect(waitFor(5) { log.contains("primary 127.0.0.1:\(server.port): ") }, "\(scenario): \(log.all.suffix(3))")
                #expect(lines().contains("shard 0 applied 0"), "\(scenario): \(lines())")
            default:
                #expect(waitFor(5) { lines().contains("ALARM") }, "\(scenario): \(lines())")
                #expect(throws: EngineError.self) { try engine.promote() }
            }
            #expect(engine.role == .standby)
            connection.shutdownNow()
        }
    }
}

extension FailoverTests {
    @Test("a planned switchover under load: the primary stops taking orders, hands over, comes back as the standby without a rebuild; nothing acknowledged is lost; the pause is measured")
    func switchover() throws {
        let pa = freeLoopbackPort(), pb = freeLoopbackPort()
        let a = PairNode(name: "hw-a", listen: pa, peer: pb, failoverAfterMs: nil)
        let b = PairNode(name: "hw-b", listen: pb, peer: pa, failoverAfterMs: nil)
        defer { a.terminate(); b.terminate(); a.remove(); b.remove() }
        try a.start(standby: false)
        #expect(waitFor(10) { a.isPrimary })
        try b.start(standby: true)
        #expect(waitFor(10) { a.engagedWithStandby })
        var acked = Set<Int64>()
        var id: Int64 = 0
        for round in 0..<3 {
            let (from, to) = round % 2 == 0 ? (a, b) : (b, a)
            let client = try CrossbookClient(instance: from.name, directory: from.dir)
            let btc = try client.symbol("BTC-USD")
            let until = Date().addingTimeInterval(0.5)
            while Date() < until {
                if client.submit(.new(NewOrder(orderId: id + 1, side: (id / 2) % 2 == 0 ? .buy : .sell, price: 1000, quantity: 1)), symbol: btc) { id += 1 }
                _ = try client.poll { if $0.kind == .accepted { acked.insert($0.orderId) } }
            }
            // The client keeps reading its reports while the switchover runs (one that stops
            // reading holds its shard up to lag_timeout_ms, as always).
            final class Reader: @unchecked Sendable {
                let client: CrossbookClient
                let lock = NSLock()
                var stop = false, ids: [Int64] = []
                let done = DispatchSemaphore(value: 0)
                init(_ client: CrossbookClient) { self.client = client }
            }
            let reader = Reader(client)
            Thread {
                while !reader.lock.withLock({ reader.stop }) {
                    _ = try? reader.client.poll { if $0.kind == .accepted { reader.ids.append($0.orderId) } }
                }
                reader.done.signal()
            }.start()
            let asked = Date()
            let answer = try Engine.ask(directory: from.dir, "switchover", timeout: 30)
            reader.lock.withLock { reader.stop = true }
            reader.done.wait()
            acked.formUnion(reader.ids)
            #expect(answer.first == "ok", "round \(round): \(answer)")
            // The pause: from the request to the new primary's first acknowledgement (a standby
            // refuses clients: try until it takes one).
            var taken: CrossbookClient?
            _ = waitFor(10) { taken = try? CrossbookClient(instance: to.name, directory: to.dir, timeout: 1); return taken != nil }
            guard let next = taken else { Issue.record("round \(round): the new primary takes no client: \(to.status())"); return }
            id += 1
            let probe = id
            _ = next.submit(.new(NewOrder(orderId: probe, side: .buy, price: 999, quantity: 1)), symbol: try next.symbol("BTC-USD"))
            var got = false
            _ = waitFor(10) { _ = try? next.poll { if $0.kind == .accepted && $0.orderId == probe { got = true } }; return got }
            #expect(got)
            acked.insert(probe)
            let handover = answer.dropFirst().first?.split(separator: " ").firstIndex(of: "after").map { answer[1].split(separator: " ")[$0 + 1] } ?? "?"
            let promotion = to.status().first { $0.hasPrefix("last_promotion") }?.split(separator: " ").last ?? "?"
            if ProcessInfo.processInfo.environment["HA_DEBUG"] != nil { print(answer, from.log.all.suffix(12).joined(separator: "\n"), to.log.all.suffix(12).joined(separator: "\n")) }
            print("switchover \(round): paused \(handover) ms until the handover, the standby promoted in \(promotion) ms; \(Int(Date().timeIntervalSince(asked) * 1000)) ms from the request to this client's first acknowledgement by the new primary (with the client's reconnection)")
            next.close()
            // What the old primary acknowledged before it stopped (its rings stay mapped here).
            _ = try? client.poll { if $0.kind == .accepted { acked.insert($0.orderId) } }
            client.close()
            // The old primary follows the new one: its journal is a prefix, no rebuild.
            #expect(waitFor(20) { to.engagedWithStandby }, "round \(round): \(to.status()) \(from.log.all.suffix(3))")
            #expect(!from.log.contains("diverged"))
        }
        let final = b  // three switchovers: a → b → a → b
        #expect(waitFor(10) { final.status().contains { $0.hasPrefix("serving") && $0.hasSuffix("lag 0") } })
        a.terminate()
        b.terminate()
        let counts = try journaledClientIds(final.data)
        #expect(acked.allSatisfy { counts[$0] == 1 }, "\(acked.filter { counts[$0] != 1 }.count) of \(acked.count) acknowledged orders missing or twice")
        #expect(try journaledClientIds(a.data) == counts)
    }
}

extension FailoverTests {
    @Test("Kafka ingress across a failover: the primary is killed with -9 while it consumes; the promoted standby starts its ingress at the journaled positions; every message of the topic is journaled exactly once, in order")
    func kafkaFailover() throws {
        let broker = try KafkaBroker()
        defer { broker.stop() }
        try broker.createTopic("orders", partitions: 2)
        try broker.createTopic("orders.dead-letter", partitions: 1)
        let pa = freeLoopbackPort(), pb = freeLoopbackPort()
        struct Side { let name, dir, data, config: String }
        func side(_ name: String, listen: Int, peer: Int) throws -> Side {
            let data = NSTemporaryDirectory() + "crossbook-kha-\(name)-\(UUID().uuidString.prefix(8))"
            let text = kafkaEngineConfig(instance: name, broker: broker, topic: "orders")
                + "\n[replication]\nlisten = \"127.0.0.1:\(listen)\"\npeer = \"127.0.0.1:\(peer)\"\nfailover_after_ms = 300\n"
            try text.write(toFile: data + ".toml", atomically: true, encoding: .utf8)
            return Side(name: name, dir: testDirectory(), data: data, config: data + ".toml")
        }
        let a = try side("kha-a", listen: pa, peer: pb), b = try side("kha-b", listen: pb, peer: pa)
        defer { for s in [a, b] { removeTree(s.data); unlink(s.config) } }
        func arguments(_ s: Side) -> [String] { ["--config", s.config, "--directory", s.dir, "--no-pin", "--data-dir", s.data, "--clean-stale"] }
        let primary = try EngineProcess(arguments(a), environment: KafkaKit.environment)
        #expect(waitFor(20) { (try? EngineFile.attach(directory: a.dir))?.isServing ?? false }, "\(primary.log.all.suffix(5))")
        let standby = try EngineProcess(arguments(b) + ["--standby"], environment: KafkaKit.environment)
        defer { standby.signal(SIGTERM); _ = standby.waitForExit(10) }
        let status = { (dir: String) in (try? Engine.ask(directory: dir, "replication", timeout: 2)) ?? [] }
        #expect(waitFor(20) { status(a.dir).contains { $0.contains("engaged 1 standbys 1") } }, "\(status(a.dir))")

        let lines = randomOrderLog(count: 4000, seed: 1212)
        func produce(_ part: ArraySlice<String>) throws {
            let producer = try startOrderProducer(broker, lines: part)
            producer.waitUntilExit()
            #expect(producer.terminationStatus == 0)
        }
        try produce(lines[0..<2000])
        // Killed while it consumes: some of the first half journaled, maybe not all.
        #expect(waitFor(20) { ((try? JournaledIngress(data: a.data, shards: 2))?.offsets.values.map(\.count).reduce(0, +) ?? 0) > 200 })
        primary.signal(SIGKILL)
        _ = primary.waitForExit(10)
        #expect(waitFor(10) { status(b.dir).contains { $0.hasPrefix("role primary") } }, "\(standby.log.all.suffix(5))")
        try produce(lines[2000...])
        let consumed = ConsumedMessage.parse(try KafkaKit.run(["consume", broker.address, "orders", "2", "3000"]).out)
        #expect(consumed.count == lines.count)
        #expect(waitFor(60) {
            ((try? JournaledIngress(data: b.data, shards: 2))?.offsets.values.map(\.count).reduce(0, +) ?? 0) >= consumed.count
        }, "\(standby.log.all.suffix(10))")
        #expect(standby.log.contains("resuming at offset"))
        usleep(300_000)
        let journaled = try JournaledIngress(data: b.data, shards: 2)
        for partition in 0..<2 {
            let want = consumed.filter { $0.partition == partition }.map(\.offset).sorted()
            let got = (journaled.offsets["orders#\(partition)"] ?? []).sorted()
            #expect(got == want, "partition \(partition): \(got.count) journaled, \(want.count) in the topic; duplicates \(got.count - Set(got).count)")
        }
        for (shard, keys) in journaled.perShard {
            for (key, offsets) in keys { #expect(offsets == offsets.sorted(), "shard \(shard) \(key) out of order") }
        }
    }
}

extension FailoverTests {
    /// The [replication] lines of a Redis lease, and the [plugins] that take it (redis-routing,
    /// with `config`: more of its config, e.g. `, password_file = "..."`).
    static func lease(_ redis: RedisServer, _ key: String, ttl: Int = 600, config: String = "") -> String {
        """
        lease = "\(key)"
        lease_ttl_ms = \(ttl)
        [plugins]
        [[plugins.load]]
        name = "redis-routing"
        config = { redis = "127.0.0.1:\(redis.port)", heartbeat_ms = 200, timeout_ms = 500\(config) }
        """
    }

    @Test("a primary that loses its Redis lease stops acknowledging before the lease can expire, and takes no more commands: the key taken by another holder, and Redis down")
    func leaseLoss() throws {
        let redis = try RedisServer()
        defer { redis.stop() }
        for scenario in ["stolen", "redis down"] {
            let key = "hl-\(UInt32.random(in: 0...UInt32.max))"
            let pa = freeLoopbackPort()
            let a = PairNode(name: "hl-a", listen: pa, peer: freeLoopbackPort(), failoverAfterMs: nil, extra: Self.lease(redis, key))
            defer { a.terminate(); a.remove() }
            try a.start(standby: false)
            #expect(waitFor(10) { a.isPrimary }, "\(scenario): \(a.log.all.suffix(3))")
            #expect(try redis.cli(["GET", key + ":epoch"]) == "1")
            let client = try CrossbookClient(instance: "hl-a", directory: a.dir)
            defer { client.close() }
            let btc = try client.symbol("BTC-USD")
            #expect(try Self.submitAndCount(client, btc, ids: 1...100, seconds: 5) == 100, "\(scenario): acknowledged while the lease is held")
            if scenario == "stolen" {
                try redis.cli(["SET", key, "another-engine"])
            } else {
                redis.stop()
            }
            // Within the lease's ttl (600 ms) nothing more is acknowledged, and never again.
            usleep(700_000)
            #expect(try Self.submitAndCount(client, btc, ids: 101...150, seconds: 1.5) == 0, "\(scenario): acknowledged without a lease")
            #expect(a.status().contains { $0.hasPrefix("lease") && ($0.contains("DEPOSED") || $0.contains("for 0 ms")) }, "\(scenario): \(a.status())")
            if scenario == "redis down" {
                try redis.start()  // an empty Redis: the key is gone, the primary stays deposed
                usleep(500_000)
                #expect(try Self.submitAndCount(client, btc, ids: 151...160, seconds: 1) == 0)
                #expect(a.log.contains("lost"), "\(a.log.all.suffix(5))")
            }
            // Fencing stops intake too: nothing sent after the deadline was journaled, even
            // when the engine stops (it drains only what it may take).
            a.terminate()
            let journaled = try journaledClientIds(a.data)
            #expect(journaled.count == 100 && journaled.keys.allSatisfy { $0 <= 100 }, "\(scenario): \(journaled.count) journaled, highest \(journaled.keys.max() ?? 0)")
        }
    }

    @Test("two standbys racing for promotion when the primary dies: the lease lets one win, under a higher epoch; the other stays a standby")
    func twoStandbysRace() throws {
        let redis = try RedisServer()
        defer { redis.stop() }
        let key = "hr-\(UInt32.random(in: 0...UInt32.max))"
        let pp = freeLoopbackPort(), p1 = freeLoopbackPort(), p2 = freeLoopbackPort()
        let primary = PairNode(name: "hr-p", listen: pp, peer: p1, failoverAfterMs: nil, extra: Self.lease(redis, key))
        let s1 = PairNode(name: "hr-1", listen: p1, peer: pp, failoverAfterMs: 200, extra: Self.lease(redis, key))
        let s2 = PairNode(name: "hr-2", listen: p2, peer: pp, failoverAfterMs: 200, extra: Self.lease(redis, key))
        defer { for n in [primary, s1, s2] { n.terminate(); n.remove() } }
        try primary.start(standby: false)
        #expect(waitFor(10) { primary.isPrimary })
        try s1.start(standby: true)
        try s2.start(standby: true)
        #expect(waitFor(10) { primary.status().contains { $0.hasPrefix("serving") && $0.contains("standbys 2") } }, "\(primary.status())")
        // The primary publishes its symbols' routes (a standby starts no plugin but its lease).
        #expect(waitFor(10) {
            let now = routes(redis, prefix: "")
            return ["BTC-USD", "ETH-USD"].allSatisfy { now[$0] == RouteLine(instance: "hr-p", shard: 0, status: "ACTIVE", epoch: 1) }
        }, "\(routes(redis, prefix: ""))")
        let client = try CrossbookClient(instance: "hr-p", directory: primary.dir)
        #expect(try Self.submitAndCount(client, try client.symbol("BTC-USD"), ids: 1...300, seconds: 5) == 300)
        client.close()
        // Sync engaged, and both standbys told so (a standby of a primary that ran alone waits
        // for an operator: it may lack acknowledged orders).
        #expect(waitFor(10) { [s1, s2].allSatisfy { $0.status().contains { $0.hasPrefix("following") && $0.contains("engaged 1") } } },
                "\(primary.status()) \(s1.status()) \(s2.status())")
        primary.kill9()
        // Both notice; both try the lease (held until the dead primary's expires); one gets it.
        #expect(waitFor(10) { s1.isPrimary || s2.isPrimary })
        usleep(1_500_000)  // the loser keeps trying: still only one
        let leaders = [s1, s2].filter(\.isPrimary)
        #expect(leaders.count == 1, "\(s1.status()) \(s2.status())")
        #expect(try redis.cli(["GET", key + ":epoch"]) == "2")
        if let winner = leaders.first {
            #expect(winner.status().contains { $0.hasPrefix("role primary epoch 2") }, "\(winner.status())")
            // The winner was the dead primary's standby under another name: it takes over the
            // routes redis-routing published for hr-p (one compare-and-set each, epoch 1 → 2).
            #expect(winner.log.contains("takes over from instance hr-p"), "\(winner.log.all.suffix(5))")
            #expect(waitFor(10) {
                let now = routes(redis, prefix: "")
                return ["BTC-USD", "ETH-USD"].allSatisfy { now[$0] == RouteLine(instance: winner.name, shard: 0, status: "ACTIVE", epoch: 2) }
            }, "\(routes(redis, prefix: "")) \(winner.log.all.suffix(5))")
            #expect(winner.log.contains("route BTC-USD taken over from instance hr-p"))
            let loser = winner === s1 ? s2 : s1
            #expect(loser.status().contains { $0.hasPrefix("role standby") })
            #expect(loser.status().contains { $0.hasPrefix("lease") && $0.contains("not held") })
        }
    }
}

extension FailoverTests {
    @Test("a primary whose data directory followed a primary of another name (primary-instance) takes over that one's routes when it starts, for its symbols; a route naming any other instance is left alone")
    func predecessorRoutesAtStart() throws {
        let redis = try RedisServer()
        defer { redis.stop() }
        let key = "hp-\(UInt32.random(in: 0...UInt32.max))"
        let node = PairNode(name: "hp-new", listen: freeLoopbackPort(), peer: freeLoopbackPort(), failoverAfterMs: nil, extra: Self.lease(redis, key))
        defer { node.terminate(); node.remove() }
        mkdir(node.data, 0o700)
        FileManager.default.createFile(atPath: node.data + "/" + Engine.primaryInstanceFile, contents: Data("hp-old".utf8))
        #expect(try routeTool(redis, prefix: "", ["set", "BTC-USD", "hp-old", "0", "--epoch", "0"]).status == 0)
        #expect(try routeTool(redis, prefix: "", ["set", "ETH-USD", "hp-foreign", "0", "--epoch", "0"]).status == 0)
        try node.start(standby: false)
        #expect(waitFor(10) { node.isPrimary }, "\(node.log.all.suffix(5))")
        #expect(waitFor(10) { routes(redis, prefix: "")["BTC-USD"] == RouteLine(instance: "hp-new", shard: 0, status: "ACTIVE", epoch: 2) },
                "\(routes(redis, prefix: "")) \(node.log.all.suffix(5))")
        usleep(500_000)
        #expect(routes(redis, prefix: "")["ETH-USD"] == RouteLine(instance: "hp-foreign", shard: 0, status: "ACTIVE", epoch: 1))
        #expect(node.log.contains("route BTC-USD taken over from instance hp-old"))
    }

    @Test("make failover-demo's drill, two failovers: each prints its RTO, nothing acknowledged lost, every order taken exactly once (the never acknowledged sent again by the stream)")
    func drill() throws {
        let out = try runCrossbookCapturing(["failover-drill", "--failovers", "2"])
        let lines = out.split(separator: "\n").filter { $0.hasPrefix("failover ") }
        #expect(lines.count == 2, "\(out)")
        for line in lines {
            #expect(line.contains("RTO ") && line.contains("lost 0,") && line.contains("sequenced twice 0;") && line.contains("orders not taken 0"), "\(line)")
        }
        #expect(out.contains("RTO over 2 failovers"))
    }

    @Test("sync_standbys = 2 with two standbys: output waits for both confirmations (one standby gone: nothing acknowledged) and flows again when it is back; with 1, one suffices")
    func twoConfirmations() throws {
        for needed in [2, 1] {
            let pp = freeLoopbackPort(), p1 = freeLoopbackPort(), p2 = freeLoopbackPort()
            let extra = "sync_standbys = \(needed)"
            let primary = PairNode(name: "hq-p", listen: pp, peer: p1, failoverAfterMs: nil, extra: extra)
            let s1 = PairNode(name: "hq-1", listen: p1, peer: pp, failoverAfterMs: nil, extra: extra)
            let s2 = PairNode(name: "hq-2", listen: p2, peer: pp, failoverAfterMs: nil, extra: extra)
            defer { for n in [primary, s1, s2] { n.terminate(); n.remove() } }
            try primary.start(standby: false)
            #expect(waitFor(10) { primary.isPrimary })
            try s1.start(standby: true)
            try s2.start(standby: true)
            #expect(waitFor(10) { primary.status().contains { $0.hasPrefix("serving") && $0.contains("engaged 1 standbys 2 sync_standbys \(needed)") } },
                    "\(needed): \(primary.status())")
            let client = try CrossbookClient(instance: "hq-p", directory: primary.dir)
            defer { client.close() }
            let btc = try client.symbol("BTC-USD")
            #expect(try Self.submitAndCount(client, btc, ids: 1...100, seconds: 5) == 100, "\(needed): with both standbys")
            s2.terminate()
            #expect(waitFor(5) { primary.status().contains { $0.hasPrefix("serving") && $0.contains("standbys 1 ") } })
            let alone = try Self.submitAndCount(client, btc, ids: 101...150, seconds: needed == 2 ? 1.5 : 5)
            if needed == 2 {
                #expect(alone == 0, "acknowledged \(alone) with one of two confirmations")
                // The second standby back: it catches up, confirms, and the held output goes out.
                try s2.start(standby: true)
                var late = 0
                #expect(waitFor(10) {
                    _ = try? client.poll { if $0.kind == .accepted { late += 1 } }
                    return late == 50
                }, "acknowledged \(late) of 50 once the second standby was back")
            } else {
                #expect(alone == 50, "\(needed): one standby suffices")
            }
        }
    }

    @Test("a lease whose plugin is not loaded, or offers no lease, refuses the start, naming it")
    func leasePluginMissing() throws {
        for (plugins, why) in [([PluginSpec](), "lease_plugin redis-routing is not loaded"),
                               ([PluginSpec(name: "snapshot-file")], "lease_plugin snapshot-file"),
                               ([PluginSpec(name: "snapshot-file")], "offers no lease")] {
            var settings = EngineSettings(
                instance: "hm", directory: testDirectory(), shards: [ShardSettings(core: nil)],
                symbols: [(spec: SymbolSpec(name: "BTC-USD", id: 1), shard: 0)],
                capacity: BookCapacity(orders: 1 << 12, levels: 1 << 8))
            let data = NSTemporaryDirectory() + "crossbook-ha-hm-\(UUID().uuidString.prefix(8))"
            defer { removeTree(data) }
            settings.durability = .sync
            settings.dataDirectory = data
            settings.replication = ReplicationSettings(role: .primary, lease: "hm-lease",
                                                       leasePlugin: plugins.isEmpty ? "redis-routing" : "snapshot-file")
            settings.plugins = PluginSettings(directory: PluginSettings.executableDirectory, load: plugins)
            let engine = Engine(settings: settings, log: { _ in })
            let error = #expect(throws: EngineError.self) { _ = try engine.start() }
            #expect("\(error.map { "\($0)" } ?? "")".contains(why), "\(error.map { "\($0)" } ?? "none")")
            engine.stop()
        }
    }

    @Test("a lease server that answers garbage, errors, huge lengths, floods or nothing: the primary refuses to start, naming why; it never acknowledges without a lease")
    func hostileLeaseServer() throws {
        let flood = "$300000\r\n" + String(repeating: "x", count: 300_000) + "\r\n"
        for (answer, why) in [("garbage\r\n", "Protocol error"), ("-ERR unknown command\r\n", "refused the lease script"),
                              ("$99999999999\r\n", "no answer in"), ("*3\r\n:1\r\n", "no answer in"), ("", "no answer in"),
                              (":-1\r\n", "held by another engine"), (flood, "an answer above"), (":0\r\n", "answered the lease script with 0"),
                              ("+OK\r\n", "not an integer")] {
            let server = rawListen()
            defer { close(server.fd) }
            let reply = Thread {
                let fd = accept(server.fd, nil, nil)
                guard fd >= 0 else { return }
                var buffer = [UInt8](repeating: 0, count: 4096)
                _ = recv(fd, &buffer, buffer.count, 0)
                _ = send(fd, answer, answer.utf8.count, Int32(MSG_NOSIGNAL))
                usleep(2_500_000)  // then silence (or a reply cut short) until the engine gives up
                close(fd)
            }
            reply.start()
            let data = NSTemporaryDirectory() + "crossbook-ha-hx-\(UUID().uuidString.prefix(8))"
            defer { removeTree(data) }
            let started = Date()
            let log = LogLines()
            let error = #expect(throws: EngineError.self, "answer \(answer.prefix(40).debugDescription)") {
                let engine = try replicatedEngine("hx", data: data, role: .primary, listen: freeLoopbackPort(), peer: nil,
                                                  lease: ("127.0.0.1:\(server.port)", "hx-lease"), log: log)
                engine.stop()
            }
            #expect("\(error.map { "\($0)" } ?? "")".contains("lease hx-lease") && "\(error.map { "\($0)" } ?? "")".contains(why),
                    "answer \(answer.prefix(40).debugDescription): \(error.map { "\($0)" } ?? "none")")
            #expect(Date().timeIntervalSince(started) < 10)
        }
    }
}

extension FailoverTests {
    /// A secret file of `bytes` (mode 600); returns its path.
    static func secretFile(_ bytes: [UInt8], mode: mode_t = 0o600) -> String {
        let path = NSTemporaryDirectory() + "crossbook-secret-\(UUID().uuidString.prefix(8))"
        FileManager.default.createFile(atPath: path, contents: Data(bytes))
        chmod(path, mode)
        return path
    }

    @Test("[replication] secret_file: both engines prove the pair's secret and every frame is encrypted and tagged (no order readable on the wire); a frame altered on the way ends the connection (nothing of it applied) and the pair goes on; a wrong secret, or a standby without one, is refused with the reason and follows nothing")
    func authenticated() throws {
        let secret = (0..<48).map { _ in UInt8.random(in: 0x21...0x7E) }
        let sa = Self.secretFile(secret + [0x0A]), sb = Self.secretFile(secret)
        defer { unlink(sa); unlink(sb) }
        let pa = freeLoopbackPort(), pb = freeLoopbackPort()
        let proxy = CuttableProxy(to: pa)
        defer { proxy.stop() }
        let a = PairNode(name: "ht-a", listen: pa, peer: pb, failoverAfterMs: nil, extra: "secret_file = \"\(sa)\"")
        let b = PairNode(name: "ht-b", listen: pb, peer: proxy.port, failoverAfterMs: nil, extra: "secret_file = \"\(sb)\"")
        defer { a.terminate(); b.terminate(); a.remove(); b.remove() }
        try a.start(standby: false)
        #expect(waitFor(10) { a.isPrimary })
        try b.start(standby: true)
        #expect(waitFor(10) { a.engagedWithStandby }, "sync engaged: \(a.status()) \(b.log.all.suffix(5))")
        #expect(a.status().contains { $0.hasPrefix("role primary") && $0.hasSuffix("authenticated 1") } && b.status().contains { $0.hasPrefix("role standby") && $0.hasSuffix("authenticated 1") }, "\(a.status()) \(b.status())")
        let client = try CrossbookClient(instance: "ht-a", directory: a.dir)
        let btc = try client.symbol("BTC-USD")
        #expect(try Self.submitAndCount(client, btc, ids: 1...2000, seconds: 15) == 2000)
        // Encrypted on the way: none of the journal's orders is in what the primary sent (the
        // same check finds all of them without a secret: networkCut).
        let orders = try journaledOrderPayloads(a.data)
        #expect(orders.count == 2000 && proxy.fromUpstream.count > 2000 * 80)
        #expect(occurrences(of: orders, in: proxy.fromUpstream) == 0)

        // One byte of the primary's stream flipped on the way: the standby drops the connection,
        // applies nothing of that frame, connects again and catches up.
        proxy.corruptNext()
        #expect(waitFor(10) { b.log.contains("does not authenticate") }, "\(b.log.all.suffix(5))")
        #expect(waitFor(10) { a.engagedWithStandby }, "\(a.status())")
        #expect(try Self.submitAndCount(client, btc, ids: 2001...2500, seconds: 15) == 500)
        client.close()
        #expect(waitFor(10) { b.status().contains { $0.contains("lag 0 ") } }, "\(b.status())")
        #expect(!b.status().joined().contains("ALARM"), "\(b.status())")

        // The standby with another secret: the primary's proof does not check out; not followed.
        b.terminate()
        let other = (0..<48).map { _ in UInt8.random(in: 0x21...0x7E) }
        FileManager.default.createFile(atPath: sb, contents: Data(other))
        chmod(sb, 0o600)
        try b.start(standby: true)
        #expect(waitFor(10) { b.status().contains { $0.contains("authentication failed") } }, "\(b.status()) \(b.log.all.suffix(5))")
        #expect(!a.engagedWithStandby || !a.status().contains { $0.contains("standbys 1") })

        // A standby without a secret: the primary refuses it, saying why.
        let c = PairNode(name: "ht-c", listen: freeLoopbackPort(), peer: pa, failoverAfterMs: nil)
        defer { c.terminate(); c.remove() }
        try c.start(standby: true)
        #expect(waitFor(10) { c.status().contains { $0.contains("authenticates its standbys") } }, "\(c.status())")
        a.terminate()
        b.terminate()
        c.terminate()
        // Only what the primary sent, in order: the journals hold the same orders.
        let ca = try journaledClientIds(a.data), cb = try journaledClientIds(b.data)
        #expect(ca.count == 2500 && ca == cb)
        #expect(try journaledClientIds(c.data).isEmpty)
    }

    /// Replaces the file at `path` with `bytes`, mode 600 (written aside, then renamed: an engine
    /// reading it sees the old or the new, never half).
    static func rewriteSecret(_ path: String, _ bytes: [UInt8]) {
        let aside = path + ".new"
        FileManager.default.createFile(atPath: aside, contents: Data(bytes))
        chmod(aside, 0o600)
        rename(aside, path)
    }

    @Test("a secret rotated without a restart: the standby takes the new one and keeps the old as previous_secret_file, then the primary; each reconnection uses a secret both hold (the log names its key id), orders flow throughout; the old one removed; a standby with neither is refused, naming the key ids")
    func secretRotation() throws {
        let old = (0..<48).map { _ in UInt8.random(in: 0x21...0x7E) }, new = (0..<48).map { _ in UInt8.random(in: 0x21...0x7E) }
        let sa = Self.secretFile(old), sb = Self.secretFile(old)
        let pa = NSTemporaryDirectory() + "crossbook-secret-prev-\(UUID().uuidString.prefix(8))"
        let pb = NSTemporaryDirectory() + "crossbook-secret-prev-\(UUID().uuidString.prefix(8))"
        defer { for f in [sa, sb, pa, pb] { unlink(f) } }
        let portA = freeLoopbackPort(), portB = freeLoopbackPort()
        let proxy = CuttableProxy(to: portA)
        defer { proxy.stop() }
        let a = PairNode(name: "hr-a", listen: portA, peer: portB, failoverAfterMs: nil, extra: "secret_file = \"\(sa)\"\nprevious_secret_file = \"\(pa)\"")
        let b = PairNode(name: "hr-b", listen: portB, peer: proxy.port, failoverAfterMs: nil, extra: "secret_file = \"\(sb)\"\nprevious_secret_file = \"\(pb)\"")
        defer { a.terminate(); b.terminate(); a.remove(); b.remove() }
        try a.start(standby: false)
        #expect(waitFor(10) { a.isPrimary })
        try b.start(standby: true)
        #expect(waitFor(10) { a.engagedWithStandby }, "\(a.status()) \(b.status())")
        let client = try CrossbookClient(instance: "hr-a", directory: a.dir)
        let btc = try client.symbol("BTC-USD")
        #expect(try Self.submitAndCount(client, btc, ids: 1...300, seconds: 15) == 300)
        let oldId = ReplicationAuth.hex(ReplicationAuth.keyId(old)), newId = ReplicationAuth.hex(ReplicationAuth.keyId(new))
        func lastKey() -> String? { a.log.all.last { $0.contains("authenticated with the secret of key id") }.flatMap { $0.split(separator: " ").last.map(String.init) } }
        #expect(lastKey() == oldId)

        // The connection ends (a frame damaged on the way) and is made again with what the files hold then.
        func reconnect(_ step: String, expecting key: String, from: Int64) throws {
            let before = a.log.all.filter { $0.contains("authenticated with the secret of key id") }.count
            proxy.corruptNext()
            #expect(waitFor(15) { a.log.all.filter { $0.contains("authenticated with the secret of key id") }.count > before && a.engagedWithStandby },
                    "\(step): \(a.status()) \(b.status()) \(a.log.all.suffix(3))")
            #expect(lastKey() == key, "\(step)")
            // `crossbook replication` on both says which secret the connection uses.
            #expect(waitFor(5) { a.status().contains { $0.hasPrefix("standby ") && $0.hasSuffix("key \(key)") }
                                 && b.status().contains { $0.hasPrefix("following") && $0.contains(" key \(key)") } },
                    "\(step): \(a.status()) \(b.status())")
            #expect(try Self.submitAndCount(client, btc, ids: from...(from + 199), seconds: 15) == 200, "\(step)")
        }
        // 1. The standby first: the new secret, the old one as previous (the primary holds only the old).
        Self.rewriteSecret(sb, new)
        Self.rewriteSecret(pb, old)
        try reconnect("standby rotated", expecting: oldId, from: 1001)
        // 2. Then the primary: both now prefer the new one.
        Self.rewriteSecret(sa, new)
        Self.rewriteSecret(pa, old)
        try reconnect("primary rotated", expecting: newId, from: 2001)
        // 3. The old one removed on both.
        unlink(pa)
        unlink(pb)
        try reconnect("old removed", expecting: newId, from: 3001)
        // A standby that holds neither of the primary's secrets: refused, naming the key ids.
        Self.rewriteSecret(sb, (0..<48).map { _ in UInt8.random(in: 0x21...0x7E) })
        proxy.corruptNext()
        #expect(waitFor(10) { b.status().contains { $0.contains("none of this primary's") && $0.contains(newId) } }, "\(b.status())")
        client.close()
        a.terminate()
        b.terminate()
        let ca = try journaledClientIds(a.data), cb = try journaledClientIds(b.data)
        #expect(ca.count == 900 && ca == cb)
    }

    @Test("a secret file that others may read, a short one, a link, a directory, a missing one: refused with the reason; a final newline is not part of the secret")
    func secretFiles() throws {
        let good = (0..<40).map { _ in UInt8.random(in: 0x21...0x7E) }
        let plain = Self.secretFile(good), newline = Self.secretFile(good + [0x0A])
        let open = Self.secretFile(good, mode: 0o644), short = Self.secretFile(Array(good.prefix(31)))
        let link = NSTemporaryDirectory() + "crossbook-secret-link-\(UUID().uuidString.prefix(8))"
        symlink(plain, link)
        defer { for p in [plain, newline, open, short, link] { unlink(p) } }
        #expect(try ReplicationAuth.readSecret(plain) == good)
        #expect(try ReplicationAuth.readSecret(newline) == good)
        for (path, why) in [(open, "others may read"), (short, "31 bytes"), (link, "Too many levels of symbolic links"),
                            (NSTemporaryDirectory(), "not a regular file"), ("/nonexistent/secret", "No such file")] {
            do {
                _ = try ReplicationAuth.readSecret(path)
                Issue.record("\(path) was taken")
            } catch {
                #expect(error.description.contains(why), "\(error)")
            }
        }
    }
}
