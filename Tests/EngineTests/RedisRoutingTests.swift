// plugins/redis-routing against a real redis-server (Debian's, started here on a free loopback
// port and stopped with the test process), with the crossbook-route tool built beside the engine.
@testable import Engine
import Foundation
import Glibc
import OrderBook
import SharedMemory
import Testing
import TestSupport

/// A redis-server (no persistence) on a free loopback port; `stop` kills it, `start` brings up
/// an empty one on the same port.
final class RedisServer {
    static let binary = "/usr/bin/redis-server"
    private let server: LoopbackServer
    var port: Int { server.port }
    var address: String { server.address }

    /// With `password`: the server requires AUTH (`requirepass`), and `cli` gives it.
    let password: String?
    /// With `tls`: the server speaks only TLS on its port and wants a client certificate
    /// (tls-auth-clients yes, Redis's default); `cli` gives the client's.
    let tls: TestCertificates?

    init(password: String? = nil, tls: TestCertificates? = nil) throws {
        guard FileManager.default.isExecutableFile(atPath: Self.binary) else {
            throw KitMissing(description: "no \(Self.binary): run `make test` (it installs Debian's redis-server)")
        }
        self.password = password
        self.tls = tls
        let port = freeLoopbackPort()
        let listen = tls.map { "--port 0 --tls-port \(port) --tls-cert-file '\($0.serverCert)' --tls-key-file '\($0.serverKey)' --tls-ca-cert-file '\($0.ca)'" }
            ?? "--port \(port)"
        server = try LoopbackServer("redis", port: port,
                                    command: "'\(Self.binary)' \(listen) --bind 127.0.0.1 --save '' --appendonly no --dir /tmp"
                                        + (password.map { " --requirepass '\($0)'" } ?? ""))
    }

    func start() throws { try server.start() }
    func stop() { server.stop() }

    /// redis-cli against this server: its standard output, trimmed.
    @discardableResult
    func cli(_ arguments: [String]) throws -> String {
        try runTool("/usr/bin/redis-cli", ["-p", "\(port)"] + (password.map { ["--no-auth-warning", "-a", $0] } ?? [])
                    + (tls.map { ["--tls", "--cacert", $0.ca, "--cert", $0.clientCert, "--key", $0.clientKey] } ?? []) + arguments)
            .out.trimmingCharacters(in: .whitespacesAndNewlines)
    }
}

/// Runs a program: its exit status and standard output.
@discardableResult
func runTool(_ path: String, _ arguments: [String], environment: [String: String] = [:]) throws -> (status: Int32, out: String) {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: path)
    process.arguments = arguments
    if !environment.isEmpty { process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 } }
    let out = Pipe()
    process.standardOutput = out
    process.standardError = FileHandle.nullDevice
    try process.run()
    let data = out.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    return (process.terminationStatus, String(decoding: data, as: UTF8.self))
}

/// crossbook-route (built beside crossbook by `make c-plugins`).
func routeTool(_ redis: RedisServer, prefix: String, _ arguments: [String], environment: [String: String] = [:]) throws -> (status: Int32, out: String) {
    let tool = crossbookBinary().deletingLastPathComponent().appendingPathComponent("crossbook-route").path
    guard FileManager.default.isExecutableFile(atPath: tool) else {
        throw KitMissing(description: "no \(tool): run `make test` (or `make c-plugins OUT=.build/release`)")
    }
    return try runTool(tool, ["--prefix", prefix, redis.address] + arguments, environment: environment)
}

/// One route as crossbook-route prints it.
struct RouteLine: Equatable {
    var instance: String
    var shard: Int
    var status: String
    var epoch: Int
}

func routes(_ redis: RedisServer, prefix: String) -> [String: RouteLine] {
    guard let listed = try? routeTool(redis, prefix: prefix, ["list"]), listed.status == 0 else { return [:] }
    var result: [String: RouteLine] = [:]
    for line in listed.out.split(separator: "\n") {
        let f = line.split(separator: "\t").map(String.init)
        guard f.count == 5, let shard = Int(f[2]), let epoch = Int(f[4]) else { continue }
        result[f[0]] = RouteLine(instance: f[1], shard: shard, status: f[3], epoch: epoch)
    }
    return result
}

/// busyShardEngine's placement (HOT-USD, ETH-USD on shard 0; SOL-USD on 1) with the routing plugin.
func routedEngine(_ instance: String, dir: String, data: String, redis: RedisServer, prefix: String,
                  log: LogLines, extra: [String: String] = [:]) throws -> Engine {
    var settings = EngineSettings(
        instance: instance, directory: dir, shards: [ShardSettings(core: nil), ShardSettings(core: nil)],
        symbols: [(spec: SymbolSpec(name: "HOT-USD", id: 1), shard: 0), (spec: SymbolSpec(name: "ETH-USD", id: 2), shard: 0),
                  (spec: SymbolSpec(name: "SOL-USD", id: 3), shard: 1)],
        capacity: BookCapacity(orders: 1 << 16, levels: 1 << 12),
        wait: WaitStrategy(spins: 1000, yields: 10, park: true, parkTimeoutNanoseconds: 50_000_000))
    settings.durability = .async
    settings.dataDirectory = data
    settings.plugins = PluginSettings(directory: PluginSettings.executableDirectory, load: [
        PluginSpec(name: "redis-routing", config: ["redis": redis.address, "prefix": prefix, "heartbeat_ms": "200",
                                                   "resync_ms": "500", "timeout_ms": "300"].merging(extra) { $1 }),
    ])
    let engine = Engine(settings: settings, log: { log.append($0) })
    for line in try engine.start() { log.append(line) }
    return engine
}

func routingHealth(_ engine: Engine) -> (health: UInt32, message: String)? {
    engine.engineFile?.pluginStatuses().first { $0.name == "redis-routing" }.map { ($0.health, $0.message) }
}

func commandsApplied(_ engine: Engine) -> UInt64 {
    guard let file = engine.engineFile else { return 0 }
    return (0..<file.shardCount).map { file.counters($0).read(.commands) }.reduce(0, +)
}

@Suite("Redis routing", .serialized)
struct RedisRoutingTests {
    @Test("routes in Redis: published at start, a move marks MIGRATING then ACTIVE (epoch + 2), an ACTIVE route naming another shard is followed, two racing writers never both win, garbage and foreign routes are left alone with a degraded health, a clean stop removes the instance")
    func routesFollowAndRace() throws {
        let redis = try RedisServer()
        let prefix = "t\(UInt32.random(in: 0...UInt32.max)):"
        let dir = testDirectory(), data = NSTemporaryDirectory() + "crossbook-rr-\(UUID().uuidString.prefix(8))"
        defer { removeTree(data) }
        let log = LogLines()
        let engine = try routedEngine("rra", dir: dir, data: data, redis: redis, prefix: prefix, log: log)
        let load = try BusyLoad(instance: "rra", directory: dir)

        // Published where the config puts them, epoch 1; the instance with its heartbeat.
        #expect(waitFor(10) { routes(redis, prefix: prefix).count == 3 }, "\(log.all.suffix(10))")
        #expect(routes(redis, prefix: prefix) == [
            "HOT-USD": RouteLine(instance: "rra", shard: 0, status: "ACTIVE", epoch: 1),
            "ETH-USD": RouteLine(instance: "rra", shard: 0, status: "ACTIVE", epoch: 1),
            "SOL-USD": RouteLine(instance: "rra", shard: 1, status: "ACTIVE", epoch: 1),
        ])
        let instance = try redis.cli(["HGET", prefix + "instance:rra", "shards"])
        #expect(instance == "2")
        let ttl = Int(try redis.cli(["PTTL", prefix + "instance:rra"])) ?? -1
        #expect(ttl > 0 && ttl <= 600, "ttl \(ttl)")

        // A move through the engine: MIGRATING (epoch 2), then ACTIVE on the target (epoch 3).
        let hints = Process()
        hints.executableURL = URL(fileURLWithPath: "/usr/bin/redis-cli")
        hints.arguments = ["-p", "\(redis.port)", "SUBSCRIBE", prefix + "routes"]
        let hintPipe = Pipe()
        hints.standardOutput = hintPipe
        try hints.run()
        usleep(200_000)
        _ = try engine.migrate(symbol: "HOT-USD", toShard: 1)
        #expect(routes(redis, prefix: prefix)["HOT-USD"] == RouteLine(instance: "rra", shard: 1, status: "ACTIVE", epoch: 3))
        usleep(200_000)
        kill(hints.processIdentifier, SIGKILL)  // redis-cli in subscribe mode does not end on SIGTERM
        hints.waitUntilExit()
        let heard = String(decoding: hintPipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        #expect(heard.contains(prefix + "route:HOT-USD 2") && heard.contains(prefix + "route:HOT-USD 3"), "\(heard)")

        // An operator's CAS naming another shard of this instance: the engine follows it.
        let set = try routeTool(redis, prefix: prefix, ["set", "ETH-USD", "rra", "1", "--epoch", "1"])
        #expect(set.status == 0 && set.out.contains("won epoch 2"), "\(set)")
        #expect(waitFor(10) { engine.owner(of: "ETH-USD") == 1 }, "\(log.all.suffix(10))")
        #expect(waitFor(5) { routes(redis, prefix: prefix)["ETH-USD"] == RouteLine(instance: "rra", shard: 1, status: "ACTIVE", epoch: 4) })
        // A stale epoch loses and changes nothing.
        let stale = try routeTool(redis, prefix: prefix, ["set", "ETH-USD", "rra", "0", "--epoch", "1"])
        #expect(stale.status == 3 && stale.out.contains("lost: epoch 4"), "\(stale)")
        usleep(300_000)
        #expect(engine.owner(of: "ETH-USD") == 1)

        // Two writers from the same epoch, 25 times: exactly one wins each time.
        var doubleWins = 0, noWins = 0
        for round in 0..<25 {
            let key = "RACE-\(round)"
            let a = Process(), b = Process()
            let tool = crossbookBinary().deletingLastPathComponent().appendingPathComponent("crossbook-route")
            for (p, who) in [(a, "east"), (b, "west")] {
                p.executableURL = tool
                p.arguments = ["--prefix", prefix, redis.address, "set", key, who, "0", "--epoch", "0"]
                p.standardOutput = FileHandle.nullDevice
            }
            try a.run()
            try b.run()
            a.waitUntilExit()
            b.waitUntilExit()
            let wins = [a, b].filter { $0.terminationStatus == 0 }.count
            let losses = [a, b].filter { $0.terminationStatus == 3 }.count
            if wins > 1 { doubleWins += 1 }
            if wins == 0 || wins + losses != 2 { noWins += 1 }
        }
        #expect(doubleWins == 0 && noWins == 0, "\(doubleWins) rounds with two winners, \(noWins) with none or an error")

        // Garbage in a route: left alone, said in the health; the symbol trades on.
        try redis.cli(["DEL", prefix + "route:SOL-USD"])
        try redis.cli(["HSET", prefix + "route:SOL-USD", "epoch", "many", "shard", "-3"])
        #expect(waitFor(10) { routingHealth(engine)?.message.contains("cannot be read") == true }, "\(String(describing: routingHealth(engine)))")
        #expect(engine.owner(of: "SOL-USD") == 1)
        // Deleted: published again where the engine has it.
        try redis.cli(["DEL", prefix + "route:SOL-USD"])
        #expect(waitFor(10) { routes(redis, prefix: prefix)["SOL-USD"] == RouteLine(instance: "rra", shard: 1, status: "ACTIVE", epoch: 1) })
        #expect(waitFor(10) { routingHealth(engine)?.health == 0 }, "\(String(describing: routingHealth(engine)))")
        // A route naming another instance: left alone (moves between engines are not built),
        // said in the health, and no move through this engine while it says so.
        let foreign = try routeTool(redis, prefix: prefix, ["set", "SOL-USD", "elsewhere", "0", "--epoch", "1"])
        #expect(foreign.status == 0)
        #expect(waitFor(10) { routingHealth(engine)?.message.contains("another instance") == true })
        #expect(throws: EngineError.self) { _ = try engine.migrate(symbol: "SOL-USD", toShard: 0) }
        #expect(engine.owner(of: "SOL-USD") == 1)
        #expect(routes(redis, prefix: prefix)["SOL-USD"]?.instance == "elsewhere")

        let before = commandsApplied(engine)
        usleep(200_000)
        #expect(commandsApplied(engine) > before, "the load trades on")
        load.stop()
        engine.stop()
        #expect(try redis.cli(["EXISTS", prefix + "instance:rra"]) == "0")
    }

    @Test("a symbol listed at run time gets its route in Redis at once (epoch 1, ACTIVE on its shard); moves of it go through the router like any; with Redis down its route is published once Redis is back")
    func listedSymbolRoutes() throws {
        let redis = try RedisServer()
        let prefix = "t\(UInt32.random(in: 0...UInt32.max)):"
        let dir = testDirectory(), data = NSTemporaryDirectory() + "crossbook-rl-\(UUID().uuidString.prefix(8))"
        defer { removeTree(data) }
        let log = LogLines()
        let engine = try routedEngine("rrl", dir: dir, data: data, redis: redis, prefix: prefix, log: log)
        defer { engine.stop() }
        #expect(waitFor(10) { routes(redis, prefix: prefix).count == 3 }, "\(log.all.suffix(10))")
        _ = try engine.listSymbol("ADA-USD", shard: 1)
        #expect(waitFor(5) { routes(redis, prefix: prefix)["ADA-USD"] == RouteLine(instance: "rrl", shard: 1, status: "ACTIVE", epoch: 1) },
                "\(routes(redis, prefix: prefix)) \(log.all.suffix(6))")
        _ = try engine.migrate(symbol: "ADA-USD", toShard: 0)
        #expect(waitFor(5) { routes(redis, prefix: prefix)["ADA-USD"] == RouteLine(instance: "rrl", shard: 0, status: "ACTIVE", epoch: 3) },
                "\(routes(redis, prefix: prefix))")
        // Redis gone: the listing goes on (the engine's placement is the truth); the route follows.
        redis.stop()
        #expect(waitFor(5) { routingHealth(engine)?.health == 1 })
        _ = try engine.listSymbol("DOT-USD", shard: 0)
        try redis.start()
        #expect(waitFor(10) { routes(redis, prefix: prefix)["DOT-USD"] == RouteLine(instance: "rrl", shard: 0, status: "ACTIVE", epoch: 1) },
                "\(routes(redis, prefix: prefix)) \(log.all.suffix(6))")
    }

    @Test("Redis down: health degraded, trading goes on, no move until it is back; an empty Redis restarted gets every route where the engine has it; a MIGRATING route no move explains is settled where the engine has the symbol")
    func redisDown() throws {
        let redis = try RedisServer()
        let prefix = "d\(UInt32.random(in: 0...UInt32.max)):"
        let dir = testDirectory(), data = NSTemporaryDirectory() + "crossbook-rd-\(UUID().uuidString.prefix(8))"
        defer { removeTree(data) }
        let log = LogLines()
        let engine = try routedEngine("rrd", dir: dir, data: data, redis: redis, prefix: prefix, log: log)
        defer { engine.stop() }
        let load = try BusyLoad(instance: "rrd", directory: dir)
        defer { load.stop() }
        #expect(waitFor(10) { routes(redis, prefix: prefix).count == 3 })
        _ = try engine.migrate(symbol: "HOT-USD", toShard: 1)

        redis.stop()
        #expect(waitFor(10) { routingHealth(engine)?.message.contains("unreachable") == true }, "\(String(describing: routingHealth(engine)))")
        #expect {
            _ = try engine.migrate(symbol: "ETH-USD", toShard: 1)
        } throws: { "\($0)".contains("unreachable") }
        #expect(engine.owner(of: "ETH-USD") == 0 && engine.owner(of: "HOT-USD") == 1)
        let before = commandsApplied(engine)
        usleep(300_000)
        #expect(commandsApplied(engine) > before, "the load trades on while Redis is down")

        // Back, empty: every route published again where the engine has it.
        try redis.start()
        #expect(waitFor(10) {
            routes(redis, prefix: prefix) == [
                "HOT-USD": RouteLine(instance: "rrd", shard: 1, status: "ACTIVE", epoch: 1),
                "ETH-USD": RouteLine(instance: "rrd", shard: 0, status: "ACTIVE", epoch: 1),
                "SOL-USD": RouteLine(instance: "rrd", shard: 1, status: "ACTIVE", epoch: 1),
            ]
        }, "\(routes(redis, prefix: prefix))")
        #expect(waitFor(10) { routingHealth(engine)?.health == 0 })
        _ = try engine.migrate(symbol: "ETH-USD", toShard: 1)
        #expect(routes(redis, prefix: prefix)["ETH-USD"] == RouteLine(instance: "rrd", shard: 1, status: "ACTIVE", epoch: 3))

        // A crash between a move's two writes leaves MIGRATING: settled where the engine has it.
        let left = try routeTool(redis, prefix: prefix, ["set", "SOL-USD", "rrd", "0", "--epoch", "1", "--status", "MIGRATING"])
        #expect(left.status == 0)
        #expect(waitFor(10) { routes(redis, prefix: prefix)["SOL-USD"] == RouteLine(instance: "rrd", shard: 1, status: "ACTIVE", epoch: 3) },
                "\(routes(redis, prefix: prefix))")
        #expect(engine.owner(of: "SOL-USD") == 1)
    }

    @Test("the router says at each connection whether Redis keeps what it acknowledged: a warning for appendonly no, a line for appendonly yes with appendfsync always, and that it cannot tell where CONFIG is refused")
    func redisDurabilityChecked() throws {
        let redis = try RedisServer()  // appendonly no, appendfsync everysec (Redis's default)
        let prefix = "k\(UInt32.random(in: 0...UInt32.max)):"
        let dir = testDirectory(), data = NSTemporaryDirectory() + "crossbook-rk-\(UUID().uuidString.prefix(8))"
        let aof = NSTemporaryDirectory() + "crossbook-rk-aof-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: aof, withIntermediateDirectories: true)
        defer { removeTree(data); removeTree(aof) }
        let log = LogLines()
        let engine = try routedEngine("rrk", dir: dir, data: data, redis: redis, prefix: prefix, log: log)
        defer { engine.stop() }
        func said(_ text: String) -> Bool { waitFor(10) { log.all.contains { $0.contains(text) } } }
        #expect(said("has appendonly no, appendfsync everysec: a route, lease or transfer it acknowledged can be lost"), "\(log.all.suffix(10))")
        #expect(!log.all.contains { $0.contains("keeps what it acknowledges") })

        // Made durable, then the router's connections cut: it connects again and says so.
        try redis.cli(["CONFIG", "SET", "dir", aof])
        try redis.cli(["CONFIG", "SET", "appendonly", "yes"])
        try redis.cli(["CONFIG", "SET", "appendfsync", "always"])
        try redis.cli(["CLIENT", "KILL", "TYPE", "normal"])
        try redis.cli(["CLIENT", "KILL", "TYPE", "pubsub"])
        #expect(said("keeps what it acknowledges (appendonly yes, appendfsync always)"), "\(log.all.suffix(10))")

        // CONFIG refused (an ACL): it cannot tell, and says that, and the routes go on.
        try redis.cli(["ACL", "SETUSER", "default", "-config"])
        try redis.cli(["CLIENT", "KILL", "TYPE", "normal"])
        try redis.cli(["CLIENT", "KILL", "TYPE", "pubsub"])
        #expect(said("cannot tell whether it keeps what it acknowledged (CONFIG GET: NOPERM"), "\(log.all.suffix(10))")
        _ = try engine.migrate(symbol: "HOT-USD", toShard: 1)
        #expect(routes(redis, prefix: prefix)["HOT-USD"] == RouteLine(instance: "rrk", shard: 1, status: "ACTIVE", epoch: 3))
    }

    @Test("a bad routing config is refused at start with the key and what it wants; a route key of another type is left alone")
    func badConfigAndKeys() throws {
        let redis = try RedisServer()
        for (key, value, says) in [("redis", "no-port", "give host:port"), ("redis", "127.0.0.1:99999", "give host:port"),
                                   ("heartbeat_ms", "often", "heartbeat_ms"), ("prefix", String(repeating: "p", count: 60), "prefix")] {
            var settings = EngineSettings(instance: "rbad", directory: testDirectory(), symbols: [(spec: SymbolSpec(name: "AAA", id: 1), shard: 0)])
            var config = ["redis": redis.address]
            config[key] = value
            settings.plugins = PluginSettings(directory: PluginSettings.executableDirectory, load: [PluginSpec(name: "redis-routing", config: config)])
            #expect {
                let engine = Engine(settings: settings, log: { _ in })
                _ = try engine.start()
                engine.stop()
            } throws: { "\($0)".contains(says) }
        }
        // A route that is a string, not a hash: the symbol trades on, the health says why.
        let prefix = "b\(UInt32.random(in: 0...UInt32.max)):"
        try redis.cli(["SET", prefix + "route:SOL-USD", "junk"])
        let dir = testDirectory(), data = NSTemporaryDirectory() + "crossbook-rb-\(UUID().uuidString.prefix(8))"
        defer { removeTree(data) }
        let log = LogLines()
        let engine = try routedEngine("rrb", dir: dir, data: data, redis: redis, prefix: prefix, log: log)
        defer { engine.stop() }
        #expect(waitFor(10) { routingHealth(engine)?.message.contains("cannot be read") == true }, "\(String(describing: routingHealth(engine)))")
        #expect(engine.owner(of: "SOL-USD") == 1)
        #expect(try redis.cli(["GET", prefix + "route:SOL-USD"]) == "junk")
        #expect(throws: EngineError.self) { _ = try engine.migrate(symbol: "SOL-USD", toShard: 0) }
        _ = try engine.migrate(symbol: "HOT-USD", toShard: 1)
        #expect(routes(redis, prefix: prefix)["HOT-USD"] == RouteLine(instance: "rrb", shard: 1, status: "ACTIVE", epoch: 3))
    }

    @Test("kill -9 at a random moment of back-to-back moves through the router, 5 times: after each restart every route in Redis is ACTIVE on the shard that owns the symbol, and the next moves go on")
    func killDuringRoutedMoves() throws {
        let redis = try RedisServer()
        let prefix = "k\(UInt32.random(in: 0...UInt32.max)):"
        let dir = testDirectory(), data = NSTemporaryDirectory() + "crossbook-rk-\(UUID().uuidString.prefix(8))"
        let config = data + ".toml"
        defer {
            removeTree(data)
            removeTree(config)
        }
        try """
        [engine]
        durability = "sync"
        [[shards]]
        [[shards]]
        [book]
        orders = 4096
        levels = 256
        [[symbols]]
        name = "HOT-USD"
        shard = 0
        [[symbols]]
        name = "ETH-USD"
        shard = 1
        [plugins]
        [[plugins.load]]
        name = "redis-routing"
        config = { redis = "\(redis.address)", prefix = "\(prefix)", heartbeat_ms = 200, resync_ms = 300 }
        """.write(toFile: config, atomically: true, encoding: .utf8)
        var rng: UInt64 = 0x0bad_5eed
        var summary: [String] = []
        for cycle in 0...5 {
            let engine = Process()
            engine.executableURL = crossbookBinary()
            engine.arguments = ["run", "--config", config, "--instance", "rk", "--directory", dir, "--data-dir", data, "--no-pin",
                                "--clean-stale"]
            engine.standardError = FileHandle.nullDevice
            engine.standardOutput = FileHandle.nullDevice
            try engine.run()
            #expect(waitFor(10) { (try? EngineFile.attach(directory: dir))?.isServing ?? false }, "cycle \(cycle): engine up")
            // After the restart: Redis agrees with the engine, every route ACTIVE.
            var owners: [String: Int] = [:]
            let settled = waitFor(10) {
                guard let answer = try? Engine.ask(directory: dir, "routes", timeout: 5), answer.first == "ok" else { return false }
                owners = [:]
                for line in answer.dropFirst() {
                    let f = line.split(separator: " ")
                    if f.count >= 2, let shard = Int(f.last!) { owners[String(f[0])] = shard }
                }
                let inRedis = routes(redis, prefix: prefix)
                return owners.count == 2 && owners.allSatisfy { inRedis[$0.key] == RouteLine(instance: "rk", shard: $0.value, status: "ACTIVE", epoch: inRedis[$0.key]?.epoch ?? 0) }
            }
            #expect(settled, "cycle \(cycle): engine \(owners), redis \(routes(redis, prefix: prefix))")
            guard cycle < 5 else {
                kill(engine.processIdentifier, SIGTERM)
                engine.waitUntilExit()
                break
            }
            // Moves back to back until the engine is gone.
            let (moves, mover) = backToBackMoves(directory: dir)
            rng = rng &* 6364136223846793005 &+ 1442695040888963407
            usleep(200_000 + UInt32((rng >> 33) % 600_000))
            kill(engine.processIdentifier, SIGKILL)
            engine.waitUntilExit()
            mover.wait()
            let done = moves.all.filter { $0 == "ok" }.count
            #expect(done > 0, "cycle \(cycle): no move went through the router")
            summary.append("cycle \(cycle): \(done) moves, then kill -9; redis before the restart: \(routes(redis, prefix: prefix)["HOT-USD"].map { "\($0.status) shard \($0.shard) epoch \($0.epoch)" } ?? "none")")
        }
        print(summary.joined(separator: "\n"))
    }
}
