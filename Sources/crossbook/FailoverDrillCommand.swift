// `crossbook failover-drill` (`make failover-demo`): a primary and a hot standby on this host
// (two `crossbook run` processes, loopback replication), orders from a client of this process
// attached as a stream (CrossbookClient's exactly-once resend), the primary killed with -9 again
// and again. For each failover: the RTO (from the kill to the new primary's first answer to
// this client), the orders never acknowledged sent again to the new primary with their offsets
// (those it already had are rejected `duplicate_ingress`), and every order checked against the
// new primary's journal (each acknowledged one there, each one taken exactly once). The old
// primary comes back as the standby each time (rebuilt when the new primary refuses its journal).
import ArgumentParser
import CrossbookClient
import Engine
import Foundation
import Glibc
import Journal
import OrderBook
import Wire

struct FailoverDrillCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "failover-drill",
        abstract: "Kill a primary with -9 under load, again and again; print each failover's RTO, the acknowledged orders checked and lost, and the unacknowledged ones sent again (exactly once).",
        discussion: "Starts two engines (instances drill-a and drill-b, sync replication on loopback, failover_after_ms as given) in a temporary directory, removed at the end. Exit status 1 if an acknowledged order is lost, an order is taken twice or never, or a failover does not happen.")

    @Option(help: "Failovers to drill.")
    var failovers = 5

    @Option(name: .customLong("failover-after-ms"), help: "The standby promotes itself after the primary is silent this long.")
    var failoverAfterMs = 300

    @Option(help: "Orders in flight at most (unacknowledged).")
    var window = 2000

    final class Node {
        let name: String, dir: String, data: String, config: String, logPath: String
        var process: Process?
        init(_ name: String, work: String, listen: Int, peer: Int, failoverAfterMs: Int, secretFile: String) {
            self.name = name
            dir = work + "/shm-" + name
            data = work + "/data-" + name
            config = work + "/" + name + ".toml"
            logPath = work + "/" + name + ".log"
            let text = """
                [engine]
                instance = "\(name)"
                durability = "sync"
                [[symbols]]
                name = "BTC-USD"
                [[symbols]]
                name = "ETH-USD"
                [replication]
                listen = "127.0.0.1:\(listen)"
                peer = "127.0.0.1:\(peer)"
                failover_after_ms = \(failoverAfterMs)
                secret_file = "\(secretFile)"

                """
            FileManager.default.createFile(atPath: config, contents: Data(text.utf8))
        }

        func start(standby: Bool, rebuild: Bool = false) throws {
            let p = Process()
            p.executableURL = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath()
            p.arguments = ["run", "--config", config, "--directory", dir, "--data-dir", data, "--no-pin", "--no-plugins", "--clean-stale"]
                + (standby ? ["--standby"] : []) + (rebuild ? ["--rebuild"] : [])
            FileManager.default.createFile(atPath: logPath, contents: nil)
            let log = FileHandle(forWritingAtPath: logPath)
            log?.seekToEndOfFile()
            p.standardError = log
            p.standardOutput = log
            try p.run()
            process = p
        }

        func signal(_ sig: Int32) {
            guard let p = process else { return }
            kill(p.processIdentifier, sig)
            p.waitUntilExit()
            process = nil
        }

        var status: [String] { (try? Engine.ask(directory: dir, "replication", timeout: 2)) ?? [] }
        var isPrimary: Bool { status.contains { $0.hasPrefix("role primary") } }
        var engaged: Bool { status.contains { $0.hasPrefix("serving") && $0.contains("engaged 1 standbys 1") } }
        var log: String { (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? "" }
    }

    static func wait(_ seconds: Double, _ condition: () -> Bool) -> Bool {
        let deadline = Date().addingTimeInterval(seconds)
        while Date() < deadline {
            if condition() { return true }
            usleep(10_000)
        }
        return condition()
    }

    static func freePort() -> Int {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var a = sockaddr_in()
        a.sin_family = sa_family_t(AF_INET)
        a.sin_addr.s_addr = inet_addr("127.0.0.1")
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafePointer(to: &a) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) } }
        _ = withUnsafeMutablePointer(to: &a) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) } }
        return Int(UInt16(bigEndian: a.sin_port))
    }

    /// Client order id → times taken, in a journal (read-only: the engine may be running): an
    /// independent replay of the stream's positions (a command at an offset below the position
    /// is a resent one the engine rejected; it is not counted).
    static func journaled(_ data: String) -> [Int64: Int] {
        var out: [Int64: Int] = [:]
        var next: UInt64 = 0
        _ = try? JournalReader.scan(directory: data, shard: 0, repair: false) { type, _, payload in
            guard type == 1, payload.count == 80, let decoded = try? CommandRecord.decode(payload.baseAddress!),
                  case .new(let order) = decoded.command, decoded.clientSequence >= next else { return }
            next = decoded.clientSequence + 1
            out[order.orderId, default: 0] += 1
        }
        return out
    }

    func run() throws {
        let work = NSTemporaryDirectory() + "crossbook-failover-drill-\(getpid())"
        mkdir(work, 0o700)
        let pa = Self.freePort(), pb = Self.freePort()
        // The pair authenticates (a secret of its own, mode 600), as a deployment should.
        let secret = work + "/replication.key"
        let key = (0..<48).map { _ in UInt8.random(in: 0x21...0x7E) }
        guard FileManager.default.createFile(atPath: secret, contents: Data(key), attributes: [.posixPermissions: 0o600]) else {
            throw ValidationError("cannot write \(secret)")
        }
        let a = Node("drill-a-\(getpid())", work: work, listen: pa, peer: pb, failoverAfterMs: failoverAfterMs, secretFile: secret)
        let b = Node("drill-b-\(getpid())", work: work, listen: pb, peer: pa, failoverAfterMs: failoverAfterMs, secretFile: secret)
        defer {
            a.signal(SIGTERM)
            b.signal(SIGTERM)
            try? FileManager.default.removeItem(atPath: work)
        }
        try a.start(standby: false)
        guard Self.wait(10, { a.isPrimary }) else { throw CLIError("the primary did not start: \(a.log.suffix(500))") }
        try b.start(standby: true)
        guard Self.wait(10, { a.engaged }) else { throw CLIError("the standby did not catch up: \(b.log.suffix(500))") }
        print("primary \(a.name), standby \(b.name), sync replication on 127.0.0.1:\(pa)/\(pb), failover_after_ms \(failoverAfterMs)")
        var primary = a, standby = b
        var acked = Set<Int64>(), settled = Set<Int64>()
        // Order id k is sent at offset k - 1 of the stream "drill" (one shard: offsets rise in it).
        var nextId: Int64 = 0
        var failed = false
        var rtos: [Double] = []
        func order(_ id: Int64) -> BookCommand {
            // Buys and sells at one price, in turn on each symbol: each sell fills the buy before
            // it, so the books stay small however long the drill runs.
            .new(NewOrder(orderId: id, side: (id / 2) % 2 == 0 ? .buy : .sell, price: 1000, quantity: 1))
        }
        var client = try CrossbookClient(instance: primary.name, directory: primary.dir, stream: "drill")
        for n in 1...failovers {
            // The standby has heard that sync is engaged: the condition of its automatic promotion.
            _ = Self.wait(10) { standby.status.contains { $0.hasPrefix("following") && $0.contains("engaged 1") } }
            let symbols = [try client.symbol("BTC-USD"), try client.symbol("ETH-USD")]
            var sent = 0, got = 0
            let runFor = 0.5 + Double(n % 4) * 0.25
            let start = Date()
            func take() throws { _ = try client.poll { if $0.kind == .accepted { acked.insert($0.orderId); got += 1 } } }
            while Date().timeIntervalSince(start) < runFor {
                if sent - got < window {
                    let id = nextId + 1
                    if client.submit(order(id), symbol: symbols[Int(id % 2)], clientSequence: UInt64(id - 1)) {
                        nextId = id
                        sent += 1
                    }
                }
                try take()
            }
            let killedAt = Date()
            primary.signal(SIGKILL)
            try? take()
            client.close()
            guard Self.wait(10, { standby.isPrimary }) else {
                print("failover \(n): the standby did not promote itself within 10 s")
                failed = true
                break
            }
            // The stream attaches to the new primary and sends again what was never acknowledged.
            var attached: CrossbookClient?
            _ = Self.wait(10) { attached = try? CrossbookClient(instance: standby.name, directory: standby.dir, timeout: 1, stream: "drill"); return attached != nil }
            guard let next = attached else {
                print("failover \(n): the stream could not attach to the new primary")
                failed = true
                break
            }
            client = next
            let nextSymbols = [try next.symbol("BTC-USD"), try next.symbol("ETH-USD")]
            // Never acknowledged, and not known to be taken (a duplicate_ingress answer of an
            // earlier failover says an order was: its outcome is in the journal).
            let unacked = (1...max(nextId, 1)).filter { $0 <= nextId && !acked.contains($0) && !settled.contains($0) }
            let resending = Set(unacked)
            var answered = Set<Int64>(), duplicates = 0, takenNow = 0
            var firstAnswer: Date?
            func collect() throws {
                _ = try next.poll { r in
                    guard r.kind != .trade else { return }
                    if firstAnswer == nil { firstAnswer = Date() }
                    if r.kind == .accepted { acked.insert(r.orderId) }
                    guard resending.contains(r.orderId), !answered.contains(r.orderId), r.kind == .accepted || r.kind == .rejected else { return }
                    answered.insert(r.orderId)
                    if r.kind == .rejected && r.code == RejectReason.duplicateIngress.rawValue {
                        duplicates += 1
                        settled.insert(r.orderId)
                    } else if r.kind == .accepted {
                        takenNow += 1
                    }
                }
            }
            for id in unacked {
                while !next.submit(order(id), symbol: nextSymbols[Int(id % 2)], clientSequence: UInt64(id - 1)) { try collect() }
                try collect()
            }
            // A new order after them: the new primary serves.
            nextId += 1
            let probe = nextId
            while !next.submit(order(probe), symbol: nextSymbols[Int(probe % 2)], clientSequence: UInt64(probe - 1)) { try collect() }
            _ = Self.wait(10) { (try? collect()) != nil && acked.contains(probe) && answered.count >= unacked.count }
            let probeAcked = acked.contains(probe)
            let rto = (firstAnswer ?? Date()).timeIntervalSince(killedAt) * 1000
            rtos.append(rto)
            // Every order acknowledged so far, by either primary, in the new primary's journal;
            // every order sent taken exactly once.
            let counts = Self.journaled(standby.data)
            let lost = acked.filter { counts[$0] == nil }.count
            let twice = counts.values.filter { $0 > 1 }.count
            let missing = (1...nextId).filter { counts[$0] == nil }.count
            print("failover \(n): RTO \(Int(rto.rounded())) ms; acknowledged orders checked \(acked.count), lost \(lost), sequenced twice \(twice); "
                  + "resent \(unacked.count) never acknowledged: \(duplicates) the new primary had (duplicate_ingress), \(takenNow) taken now; orders not taken \(missing)"
                  + (probeAcked ? "" : "; the new primary acknowledged nothing in 10 s"))
            if lost > 0 || twice > 0 || missing > 0 || !probeAcked { failed = true }
            if !probeAcked { print(standby.log.split(separator: "\n").suffix(8).joined(separator: "\n")) }
            // The old primary comes back as the standby (its journal cut back to the new
            // primary's if it went past it; rebuilt only if that fails).
            let before = primary.log.count
            try primary.start(standby: true)
            _ = Self.wait(20) { standby.engaged || primary.log.dropFirst(before).contains("rebuild it") }
            let cut = primary.log.dropFirst(before).contains("journal cut back after sequence")
            if !standby.engaged {
                primary.signal(SIGKILL)
                try primary.start(standby: true, rebuild: true)
                guard Self.wait(30, { standby.engaged }) else {
                    print("failover \(n): the old primary did not come back as a standby")
                    failed = true
                    break
                }
                print("  \(primary.name) is the standby again (rebuilt: its journal could not be cut back to the new primary's)")
            } else if cut {
                print("  \(primary.name) is the standby again (its journal cut back to the new primary's: it held records the new primary never confirmed)")
            } else {
                print("  \(primary.name) is the standby again")
            }
            swap(&primary, &standby)
        }
        client.close()
        if !rtos.isEmpty {
            let sorted = rtos.sorted()
            print("RTO over \(rtos.count) failovers: min \(Int(sorted.first!)) ms, median \(Int(sorted[sorted.count / 2])) ms, max \(Int(sorted.last!)) ms (failover_after_ms \(failoverAfterMs) of it)")
        }
        if failed { throw ExitCode(1) }
    }
}
