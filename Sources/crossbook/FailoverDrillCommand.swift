// `crossbook failover-drill` (`make failover-demo`): a primary and a hot standby on this host
// (two `crossbook run` processes, loopback replication), orders from a client of this process,
// the primary killed with -9 again and again. For each failover: the RTO (from the kill to the
// first order the new primary acknowledges) and the acknowledged orders checked against the new
// primary's journal (each must be there exactly once). The old primary comes back as the
// standby each time (rebuilt when the new primary refuses its journal).
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
        abstract: "Kill a primary with -9 under load, again and again; print each failover's RTO and the acknowledged orders checked and lost.",
        discussion: "Starts two engines (instances drill-a and drill-b, sync replication on loopback, failover_after_ms as given) in a temporary directory, removed at the end. Exit status 1 if an acknowledged order is lost or sequenced twice, or a failover does not happen.")

    @Option(help: "Failovers to drill.")
    var failovers = 5

    @Option(name: .customLong("failover-after-ms"), help: "The standby promotes itself after the primary is silent this long.")
    var failoverAfterMs = 300

    @Option(help: "Orders in flight at most (unacknowledged).")
    var window = 2000

    final class Node {
        let name: String, dir: String, data: String, config: String, logPath: String
        var process: Process?
        init(_ name: String, work: String, listen: Int, peer: Int, failoverAfterMs: Int) {
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

    /// Client order id → times sequenced, in a journal (read-only: the engine may be running).
    static func journaled(_ data: String) -> [Int64: Int] {
        var out: [Int64: Int] = [:]
        _ = try? JournalReader.scan(directory: data, shard: 0, repair: false) { type, _, payload in
            guard type == 1, payload.count == 80, let decoded = try? CommandRecord.decode(payload.baseAddress!),
                  case .new(let order) = decoded.command else { return }
            out[order.orderId, default: 0] += 1
        }
        return out
    }

    func run() throws {
        let work = NSTemporaryDirectory() + "crossbook-failover-drill-\(getpid())"
        mkdir(work, 0o700)
        let pa = Self.freePort(), pb = Self.freePort()
        let a = Node("drill-a-\(getpid())", work: work, listen: pa, peer: pb, failoverAfterMs: failoverAfterMs)
        let b = Node("drill-b-\(getpid())", work: work, listen: pb, peer: pa, failoverAfterMs: failoverAfterMs)
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
        var acked = Set<Int64>()
        var nextId: Int64 = 0
        var failed = false
        var rtos: [Double] = []
        for n in 1...failovers {
            // The standby has heard that sync is engaged: the condition of its automatic promotion.
            _ = Self.wait(10) { standby.status.contains { $0.hasPrefix("following") && $0.contains("engaged 1") } }
            let client = try CrossbookClient(instance: primary.name, directory: primary.dir)
            let symbols = [try client.symbol("BTC-USD"), try client.symbol("ETH-USD")]
            var sent = 0, got = 0
            let runFor = 0.5 + Double(n % 4) * 0.25
            let start = Date()
            func take() throws { _ = try client.poll { if $0.kind == .accepted { acked.insert($0.orderId); got += 1 } } }
            while Date().timeIntervalSince(start) < runFor {
                if sent - got < window {
                    let id = nextId + 1
                    // Buys and sells at one price, in turn on each symbol: each sell fills the buy
                    // before it, so the books stay small however long the drill runs.
                    if client.submit(.new(NewOrder(orderId: id, side: (id / 2) % 2 == 0 ? .buy : .sell, price: 1000, quantity: 1)),
                                     symbol: symbols[Int(id % 2)]) {
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
            let next = try CrossbookClient(instance: standby.name, directory: standby.dir)
            nextId += 1
            let probe = nextId
            _ = next.submit(.new(NewOrder(orderId: probe, side: .buy, price: 999, quantity: 1)), symbol: try next.symbol("BTC-USD"))
            var probeAcked = false
            _ = Self.wait(10) {
                _ = try? next.poll { if $0.kind == .accepted && $0.orderId == probe { probeAcked = true } }
                return probeAcked
            }
            next.close()
            let rto = Date().timeIntervalSince(killedAt) * 1000
            rtos.append(rto)
            if probeAcked { acked.insert(probe) }
            // Every order acknowledged so far, by either primary, in the new primary's journal once.
            let counts = Self.journaled(standby.data)
            let lost = acked.filter { counts[$0] == nil }.count
            let twice = counts.values.filter { $0 > 1 }.count
            print("failover \(n): RTO \(Int(rto.rounded())) ms; acknowledged orders checked \(acked.count), lost \(lost), sequenced twice \(twice)\(probeAcked ? "" : "; the new primary acknowledged nothing in 10 s")")
            if lost > 0 || twice > 0 || !probeAcked { failed = true }
            if !probeAcked { print(standby.log.split(separator: "\n").suffix(8).joined(separator: "\n")) }
            // The old primary comes back as the standby (rebuilt if its journal went past the new primary's).
            let before = primary.log.count
            try primary.start(standby: true)
            _ = Self.wait(20) { standby.engaged || primary.log.dropFirst(before).contains("diverged") }
            if !standby.engaged {
                primary.signal(SIGKILL)
                try primary.start(standby: true, rebuild: true)
                guard Self.wait(30, { standby.engaged }) else {
                    print("failover \(n): the old primary did not come back as a standby")
                    failed = true
                    break
                }
                print("  \(primary.name) is the standby again (rebuilt: its journal held records the new primary never confirmed)")
            } else {
                print("  \(primary.name) is the standby again")
            }
            swap(&primary, &standby)
        }
        if !rtos.isEmpty {
            let sorted = rtos.sorted()
            print("RTO over \(rtos.count) failovers: min \(Int(sorted.first!)) ms, median \(Int(sorted[sorted.count / 2])) ms, max \(Int(sorted.last!)) ms (failover_after_ms \(failoverAfterMs) of it)")
        }
        if failed { throw ExitCode(1) }
    }
}
