// Redis AUTH for the three users of Redis (the lease, redis-routing, snapshot-redis) against a
// real redis-server with `requirepass`: the password comes from a file that others cannot read;
// a wrong or missing password, or a file readable by others, is refused with the reason.
import CrossbookClient
@testable import Engine
import Foundation
import Glibc
import OrderBook
import SharedMemory
import Testing
import TestSupport

/// A password file with `mode` holding `password` (and a newline).
func passwordFile(_ password: String, mode: mode_t = 0o600) throws -> String {
    let path = NSTemporaryDirectory() + "crossbook-pw-\(UUID().uuidString.prefix(8))"
    FileManager.default.createFile(atPath: path, contents: Data((password + "\n").utf8))
    chmod(path, mode)
    return path
}

@Suite("Redis AUTH", .serialized)
struct RedisAuthTests {
    static let secret = "s3cret-\(UInt32.random(in: 0...UInt32.max))"

    @Test("the lease with redis-routing's password_file: the primary takes it; a wrong password and a file readable by others are refused at start, naming why")
    func lease() throws {
        let redis = try RedisServer(password: Self.secret)
        defer { redis.stop() }
        let good = try passwordFile(Self.secret), wrong = try passwordFile("nope"), open = try passwordFile(Self.secret, mode: 0o644)
        defer { for f in [good, wrong, open] { unlink(f) } }
        for (file, expected) in [(open, "readable by others"), (wrong, "AUTH"), (good, "")] {
            let key = "ha-\(UInt32.random(in: 0...UInt32.max))"
            let extra = FailoverTests.lease(redis, key, config: ", password_file = \"\(file)\"")
            let a = PairNode(name: "ha-a", listen: freeLoopbackPort(), peer: freeLoopbackPort(), failoverAfterMs: nil, extra: extra)
            defer { a.terminate(); a.remove() }
            try a.start(standby: false)
            if expected.isEmpty {
                #expect(waitFor(10) { a.isPrimary }, "\(a.log.all.suffix(3))")
                #expect(try redis.cli(["GET", key + ":epoch"]) == "1")
            } else {
                a.process?.waitUntilExit()
                #expect(a.process?.terminationStatus != 0)
                #expect(a.log.contains(expected), "\(expected): \(a.log.all.suffix(3))")
                #expect(!a.log.all.joined().contains(Self.secret), "the password is never logged")
            }
        }
    }

    @Test("snapshot-redis with password_file stores its snapshots; without it the store is refused (NOAUTH) and the engine trades on; a password file readable by others is refused at start")
    func snapshots() throws {
        let redis = try RedisServer(password: Self.secret)
        defer { redis.stop() }
        let good = try passwordFile(Self.secret), open = try passwordFile(Self.secret, mode: 0o604)
        defer { for f in [good, open] { unlink(f) } }
        for (config, stores) in [(["password_file": good], true), ([:], false)] {
            let prefix = "sa\(UInt32.random(in: 0...UInt32.max)):"
            let dir = testDirectory(), data = NSTemporaryDirectory() + "crossbook-sa-\(UUID().uuidString.prefix(8))"
            defer { removeTree(data) }
            let log = LogLines()
            let engine = try snapshotRedisEngine(dir, data: data, redis: redis, prefix: prefix, log: log, extra: config)
            let client = try CrossbookClient(instance: "sr", directory: dir)
            let hot = try client.symbol("HOT-USD")
            for id in 1...400 as ClosedRange<OrderId> {
                while !client.submit(.new(NewOrder(orderId: id, side: .buy, price: 90 + Price(id % 5), quantity: 1)), symbol: hot) {
                    _ = try client.poll { _ in }
                }
                if id % 50 == 0 { _ = waitFor(5) { (try? client.poll { _ in }) ?? 0 > 0 } }
            }
            _ = waitFor(5) { (engine.engineFile?.counters(0).read(.snapshots) ?? 0) >= 1 || log.contains("NOAUTH") }
            client.close()
            let keys = try redis.cli(["--scan", "--pattern", prefix + "*"])
            if stores {
                #expect(!keys.isEmpty, "snapshots in Redis: \(log.all.suffix(3))")
            } else {
                #expect(keys.isEmpty)
                #expect(log.contains("NOAUTH") || log.contains("AUTH"), "\(log.all.suffix(5))")
            }
            engine.stop()
        }
        let dir = testDirectory(), data = NSTemporaryDirectory() + "crossbook-sa-\(UUID().uuidString.prefix(8))"
        defer { removeTree(data) }
        let log = LogLines()
        do {
            let e = try snapshotRedisEngine(dir, data: data, redis: redis, prefix: "x:", log: log, extra: ["password_file": open])
            e.stop()
            Issue.record("started with a password file readable by others")
        } catch {
            #expect("\(error)".contains("readable by others"), "\(error)")
        }
    }

    @Test("redis-routing with password_file publishes its routes; without it the plugin's health says why (NOAUTH) and the engine trades on its config's routes")
    func routing() throws {
        let redis = try RedisServer(password: Self.secret)
        defer { redis.stop() }
        let good = try passwordFile(Self.secret)
        defer { unlink(good) }
        for (config, publishes) in [(["password_file": good], true), ([:], false)] {
            let prefix = "ra\(UInt32.random(in: 0...UInt32.max)):"
            let dir = testDirectory(), data = NSTemporaryDirectory() + "crossbook-ra-\(UUID().uuidString.prefix(8))"
            defer { removeTree(data) }
            let log = LogLines()
            let engine = try routedEngine("ra", dir: dir, data: data, redis: redis, prefix: prefix, log: log, extra: config)
            defer { engine.stop() }
            if publishes {
                #expect(waitFor(5) { (try? redis.cli(["HGET", prefix + "route:HOT-USD", "status"])) == "ACTIVE" }, "\(log.all.suffix(3))")
                // The operator's tool, with the password in REDISCLI_AUTH (and refused without).
                let listed = try routeTool(redis, prefix: prefix, ["list"], environment: ["REDISCLI_AUTH": Self.secret])
                #expect(listed.status == 0 && listed.out.contains("HOT-USD"), "\(listed)")
                #expect(try routeTool(redis, prefix: prefix, ["list"]).status == 2)
            } else {
                #expect(waitFor(5) { routingHealth(engine)?.message.contains("AUTH") ?? false }, "\(String(describing: routingHealth(engine)))")
                #expect(try redis.cli(["--scan", "--pattern", prefix + "*"]).isEmpty)
            }
        }
    }
}
