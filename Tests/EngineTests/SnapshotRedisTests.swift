// plugins/snapshot-redis against a real redis-server: snapshots stored, the newest N kept,
// recovery from them, a damaged or missing one skipped, Redis down at start (the journal replays).
@testable import Engine
import CrossbookClient
import Foundation
import Glibc
import OrderBook
import SharedMemory
import Testing
import TestSupport
import Wire

func snapshotRedisEngine(_ dir: String, data: String, redis: RedisServer, prefix: String, log: LogLines,
                         extra: [String: String] = [:]) throws -> Engine {
    var settings = EngineSettings(
        instance: "sr", directory: dir, shards: [ShardSettings(core: nil), ShardSettings(core: nil)],
        symbols: [(spec: SymbolSpec(name: "HOT-USD", id: 1), shard: 0), (spec: SymbolSpec(name: "ETH-USD", id: 2), shard: 1)],
        capacity: BookCapacity(orders: 1 << 14, levels: 1 << 10),
        wait: WaitStrategy(spins: 1000, yields: 10, park: true, parkTimeoutNanoseconds: 50_000_000), cleanStale: true)
    settings.durability = .sync
    settings.dataDirectory = data
    settings.snapshotEvery = 150
    settings.plugins = PluginSettings(directory: PluginSettings.executableDirectory, load: [
        PluginSpec(name: "snapshot-redis", config: ["redis": redis.address, "prefix": prefix, "keep": "2", "timeout_ms": "500"].merging(extra) { $1 }),
    ])
    let engine = Engine(settings: settings, log: { log.append($0) })
    for line in try engine.start() { log.append(line) }
    return engine
}

@Suite("Snapshots in Redis", .serialized)
struct SnapshotRedisTests {
    @Test("snapshots go to Redis, the newest 2 a shard kept; a restart recovers from the newest, skips a damaged one for the one before, and replays the journal with Redis down; the books are the same each time")
    func storeKeepRecover() throws {
        let redis = try RedisServer()
        let prefix = "s\(UInt32.random(in: 0...UInt32.max)):"
        let dir = testDirectory(), data = NSTemporaryDirectory() + "crossbook-sr-\(UUID().uuidString.prefix(8))"
        defer { removeTree(data) }
        let log = LogLines()
        let engine = try snapshotRedisEngine(dir, data: data, redis: redis, prefix: prefix, log: log)
        let client = try CrossbookClient(instance: "sr", directory: dir, ringCapacity: 1 << 12)
        let hot = try client.symbol("HOT-USD"), eth = try client.symbol("ETH-USD")
        // In rounds, each acknowledged before the next: a snapshot is taken between batches.
        for id in 1...3000 as ClosedRange<OrderId> {
            let order = NewOrder(orderId: id, side: id % 2 == 0 ? .buy : .sell, price: 95 + Price(id % 11), quantity: 1 + Quantity(id % 3))
            while !client.submit(.new(order), symbol: id % 3 == 0 ? eth : hot) { _ = try client.poll { _ in } }
            if id % 64 == 0 { _ = try client.poll { _ in } }
            if id % 300 == 0 {
                _ = waitFor(5) {
                    _ = try? client.poll { _ in }
                    return (engine.engineFile?.counters(0).read(.durableSequence) ?? 0) + (engine.engineFile?.counters(1).read(.durableSequence) ?? 0) >= UInt64(id)
                }
            }
        }
        var acknowledged = 0
        _ = waitFor(20) {
            acknowledged += (try? client.waitForReports(timeout: 0.05) { r in _ = r }) ?? 0
            return (engine.engineFile?.counters(0).read(.snapshots) ?? 0) >= 3
        }
        client.close()
        let file = try #require(engine.engineFile)
        #expect(file.counters(0).read(.snapshots) >= 3, "commands \(file.counters(0).read(.commands)) snapshots \(file.counters(0).read(.snapshots)) failures \(file.counters(0).read(.snapshotFailures)) durable \(file.counters(0).read(.durableSequence)) \(log.all.suffix(8))")
        engine.stop()
        let final = engine.finalDigests

        // The newest two of shard 0, nothing older.
        let members = try redis.cli(["ZRANGE", prefix + "snaps:{sr:0}", "0", "-1"]).split(separator: "\n").map(String.init)
        #expect(members.count == 2, "\(members)")
        let bodies = try redis.cli(["--scan", "--pattern", prefix + "snap:{sr:0}:*"]).split(separator: "\n").map(String.init)
        #expect(Set(bodies) == Set(members.map { prefix + "snap:{sr:0}:" + $0 }), "\(bodies) vs \(members)")
        let newest = try #require(members.compactMap { UInt64($0) }.max()), older = try #require(members.compactMap { UInt64($0) }.min())

        // Restart: from the newest.
        let log2 = LogLines()
        let again = try snapshotRedisEngine(dir, data: data, redis: redis, prefix: prefix, log: log2)
        #expect(again.recoveredDigests == final)
        #expect(log2.contains("shard 0: loaded snapshot \(newest) (sequence \(newest))"), "\(log2.all)")
        again.stop()

        // The newest damaged (and a member that names nothing): the one before it.
        try redis.cli(["SETRANGE", prefix + "snap:{sr:0}:\(newest)", "40", "garbage in the book"])
        try redis.cli(["ZADD", prefix + "snaps:{sr:0}", "1", "not-a-sequence"])
        let log3 = LogLines()
        let third = try snapshotRedisEngine(dir, data: data, redis: redis, prefix: prefix, log: log3)
        #expect(third.recoveredDigests == final)
        #expect(log3.contains("snapshot \(newest) unusable"), "\(log3.all)")
        #expect(log3.contains("shard 0: loaded snapshot \(older)"), "\(log3.all)")
        third.stop()

        // Redis gone: the journal alone, the same books; the store says why in its health.
        redis.stop()
        let log4 = LogLines()
        let fourth = try snapshotRedisEngine(dir, data: data, redis: redis, prefix: prefix, log: log4)
        #expect(fourth.recoveredDigests == final)
        #expect(!log4.contains("loaded snapshot"))
        fourth.stop()
    }

    @Test("the store keeps one connection between calls (20 blob calls: one connection, not 20); a Redis restarted meanwhile is reached again at the next call; Redis down: a clear error, at once")
    func keptConnection() throws {
        let redis = try RedisServer()
        defer { redis.stop() }
        let prefix = "k\(UInt32.random(in: 0...UInt32.max)):"
        let dir = testDirectory(), data = NSTemporaryDirectory() + "crossbook-sr-\(UUID().uuidString.prefix(8))"
        defer { removeTree(data) }
        let log = LogLines()
        let engine = try snapshotRedisEngine(dir, data: data, redis: redis, prefix: prefix, log: log)
        defer { engine.stop() }
        let store = try #require(engine.pluginHost?.snapshotStore)
        func connections() throws -> Int {
            let info = try redis.cli(["INFO", "stats"])
            let line = info.split(whereSeparator: \.isNewline).first { $0.hasPrefix("total_connections_received:") } ?? ""
            return Int(line.split(separator: ":").last ?? "") ?? -1
        }
        let body = (0..<100_000).map { UInt8(truncatingIfNeeded: $0 &* 31) }
        #expect(store.saveBlob("warm", body) == nil)
        let before = try connections()
        for i in 0..<10 {
            #expect(store.saveBlob("b\(i)", body) == nil)
            #expect((try? store.loadBlob("b\(i)").get()) == body)
        }
        let opened = try connections() - before
        #expect(opened >= 1 && opened <= 2, "\(opened) connections for 20 calls (the cli's own count: 1)")
        // Restarted (empty): the kept connection is closed; the next call opens another.
        redis.stop()
        try redis.start()
        #expect(store.saveBlob("after", body) == nil, "the call after a restart")
        #expect((try? store.loadBlob("after").get()) == body)
        redis.stop()
        let t0 = monotonicNanoseconds()
        let failed = store.saveBlob("down", body)
        #expect(failed?.contains("127.0.0.1:\(redis.port)") == true, "\(failed ?? "saved?")")
        #expect(monotonicNanoseconds() - t0 < 2_000_000_000)
        if case .success = store.loadBlob("after") { Issue.record("loaded with Redis down") }
    }
}
