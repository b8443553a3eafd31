// TLS to Redis (plugins/redis-routing/redis_tls.h: Debian's hiredis 0.14 has none, so the
// plugins make the TLS connection with OpenSSL and relay it to hiredis) for the three users of
// Redis: redis-routing, its lease, snapshot-redis, and the crossbook-route tool. A real
// redis-server that speaks only TLS and wants a client certificate (tls-auth-clients yes, its
// default); certificates made by scripts/test-certs.sh (the openssl tool).
import Foundation
import Glibc
@testable import Engine
import OrderBook
import Testing
import TestSupport

/// A CA, a server certificate for 127.0.0.1 and localhost, a client certificate, and another CA
/// that signed neither; keys mode 600.
struct TestCertificates {
    let dir: String
    var ca: String { dir + "/ca.crt" }
    var otherCA: String { dir + "/other.crt" }
    var serverCert: String { dir + "/server.crt" }
    var serverKey: String { dir + "/server.key" }
    var clientCert: String { dir + "/client.crt" }
    var clientKey: String { dir + "/client.key" }

    init() throws {
        guard FileManager.default.isExecutableFile(atPath: "/usr/bin/openssl") else {
            throw KitMissing(description: "no /usr/bin/openssl: run `make test` (it installs Debian's openssl)")
        }
        dir = NSTemporaryDirectory() + "crossbook-tls-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let made = try runTool("/bin/bash", [repositoryDirectory + "/scripts/test-certs.sh", dir])
        guard made.status == 0, FileManager.default.fileExists(atPath: dir + "/client.crt") else {
            throw KitMissing(description: "openssl could not make test certificates in \(dir)")
        }
    }

    func remove() { removeTree(dir) }

    /// The plugin config that connects with the client certificate.
    var config: [String: String] { ["tls": "yes", "tls_ca_file": ca, "tls_cert_file": clientCert, "tls_key_file": clientKey] }
}

/// A loopback port that accepts connections (the kernel does) and never says anything.
final class SilentListener {
    let fd: Int32
    let address: String
    init() throws {
        let port = freeLoopbackPort()
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        self.fd = fd
        var a = sockaddr_in()
        a.sin_family = sa_family_t(AF_INET)
        a.sin_addr.s_addr = inet_addr("127.0.0.1")
        a.sin_port = UInt16(port).bigEndian
        let bound = withUnsafePointer(to: &a) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        guard bound == 0, listen(fd, 16) == 0 else { throw KitMissing(description: "cannot listen on 127.0.0.1:\(port)") }
        address = "127.0.0.1:\(port)"
    }
    func close() { Glibc.close(fd) }
}

@Suite("Redis TLS", .serialized)
struct RedisTLSTests {
    @Test("redis-routing over TLS (a client certificate, the server's verified): routes published and read back, again after Redis is killed and restarted; crossbook-route over TLS from its environment; refused with the reason in the health, nothing written: no client certificate, another CA or name, a silent server, a Redis without TLS; a plain client refused by the server")
    func routing() throws {
        let certs = try TestCertificates()
        defer { certs.remove() }
        let redis = try RedisServer(tls: certs)
        defer { redis.stop() }
        let prefix = "tls\(UInt32.random(in: 0...UInt32.max)):"
        do {
            let dir = testDirectory(), data = NSTemporaryDirectory() + "crossbook-tls-\(UUID().uuidString.prefix(8))"
            defer { removeTree(data) }
            let log = LogLines()
            let engine = try routedEngine("tl", dir: dir, data: data, redis: redis, prefix: prefix, log: log, extra: certs.config)
            defer { engine.stop() }
            #expect(waitFor(5) { (try? redis.cli(["HGET", prefix + "route:HOT-USD", "status"])) == "ACTIVE" },
                    "\(String(describing: routingHealth(engine))) \(log.all.suffix(3))")
            #expect(routingHealth(engine)?.health == 0, "\(String(describing: routingHealth(engine)))")
            // The operator's tool: TLS from its environment; without it, the server refuses it.
            let env = ["CROSSBOOK_REDIS_TLS_CA": certs.ca, "CROSSBOOK_REDIS_TLS_CERT": certs.clientCert, "CROSSBOOK_REDIS_TLS_KEY": certs.clientKey]
            let listed = try routeTool(redis, prefix: prefix, ["list"], environment: env)
            #expect(listed.status == 0 && listed.out.contains("HOT-USD") && listed.out.contains("SOL-USD"), "\(listed)")
            #expect(try routeTool(redis, prefix: prefix, ["list"]).status == 2)
            // A move through the TLS connection: MIGRATING then ACTIVE on the other shard.
            _ = try engine.migrate(symbol: "HOT-USD", toShard: 1)
            #expect(waitFor(5) { (try? redis.cli(["HGET", prefix + "route:HOT-USD", "shard"])) == "1" })
            // Redis killed under the relays: health degraded; back (empty), the plugin connects
            // again over TLS and publishes every route where the engine has it.
            redis.stop()
            #expect(waitFor(10) { routingHealth(engine)?.health == 1 }, "\(String(describing: routingHealth(engine)))")
            try redis.start()
            #expect(waitFor(10) { (try? redis.cli(["HGET", prefix + "route:HOT-USD", "shard"])) == "1" && routingHealth(engine)?.health == 0 },
                    "\(String(describing: routingHealth(engine))) \(log.all.suffix(3))")
        }
        // Refused: the reason in the plugin's health, and nothing written.
        let silent = try SilentListener()
        defer { silent.close() }
        let plain = try RedisServer()
        defer { plain.stop() }
        for (name, extra, why) in [
            ("no client certificate", ["tls": "yes", "tls_ca_file": certs.ca], "client certificate"),
            ("another CA", certs.config.merging(["tls_ca_file": certs.otherCA]) { $1 }, "not trusted"),
            ("another name", certs.config.merging(["tls_server_name": "redis.example"]) { $1 }, "hostname mismatch"),
            // A port that takes the connection and never answers: the handshake gives up at the
            // plugin's timeout_ms (300 here), it does not hang.
            ("a silent server", certs.config.merging(["redis": silent.address]) { $1 }, "TLS handshake failed"),
            ("a plain Redis", certs.config.merging(["redis": plain.address]) { $1 }, "TLS handshake failed"),
        ] {
            let other = "tlsx\(UInt32.random(in: 0...UInt32.max)):"
            let dir = testDirectory(), data = NSTemporaryDirectory() + "crossbook-tls-\(UUID().uuidString.prefix(8))"
            defer { removeTree(data) }
            let log = LogLines()
            let engine = try routedEngine("tx", dir: dir, data: data, redis: redis, prefix: other, log: log, extra: extra)
            defer { engine.stop() }
            #expect(waitFor(5) { routingHealth(engine)?.message.contains(why) ?? false }, "\(name): \(String(describing: routingHealth(engine)))")
            #expect(try redis.cli(["--scan", "--pattern", other + "*"]).isEmpty, "\(name)")
        }
    }

    @Test("the TLS settings refused at start with the reason: a key others may read, tls_ca_file without tls, tls without a CA, a certificate without its key, a CA file that is not one, tls = maybe")
    func settings() throws {
        let certs = try TestCertificates()
        defer { certs.remove() }
        let redis = try RedisServer(tls: certs)
        defer { redis.stop() }
        let openKey = certs.dir + "/open.key"
        try FileManager.default.copyItem(atPath: certs.clientKey, toPath: openKey)
        chmod(openKey, 0o644)
        for (extra, why) in [
            (certs.config.merging(["tls_key_file": openKey]) { $1 }, "readable by others"),
            (["tls_ca_file": certs.ca], "tls_ca_file without tls"),
            (["tls": "yes"], "give tls_ca_file"),
            (["tls": "yes", "tls_ca_file": certs.ca, "tls_cert_file": certs.clientCert], "together"),
            (certs.config.merging(["tls_ca_file": certs.dir + "/client.ext"]) { $1 }, "tls_ca_file"),
            (["tls": "maybe"], "give yes or no"),
        ] {
            let dir = testDirectory(), data = NSTemporaryDirectory() + "crossbook-tls-\(UUID().uuidString.prefix(8))"
            defer { removeTree(data) }
            let log = LogLines()
            do {
                let engine = try routedEngine("ts", dir: dir, data: data, redis: redis, prefix: "ts:", log: log, extra: extra)
                engine.stop()
                Issue.record("started with \(extra)")
            } catch {
                #expect("\(error)".contains(why), "\(extra): \(error)")
            }
        }
    }

    @Test("snapshot-redis over TLS: a blob as a move carries a book (300 KB) saved, read back equal, deleted; the lease over TLS: the primary takes it")
    func snapshotsAndLease() throws {
        let certs = try TestCertificates()
        defer { certs.remove() }
        let redis = try RedisServer(tls: certs)
        defer { redis.stop() }
        let prefix = "tlss\(UInt32.random(in: 0...UInt32.max)):"
        let dir = testDirectory(), data = NSTemporaryDirectory() + "crossbook-tls-\(UUID().uuidString.prefix(8))"
        defer { removeTree(data) }
        let log = LogLines()
        let engine = try snapshotRedisEngine(dir, data: data, redis: redis, prefix: prefix, log: log, extra: certs.config)
        defer { engine.stop() }
        let store = try #require(engine.pluginHost?.snapshotStore)
        let body = (0..<300_000).map { UInt8(truncatingIfNeeded: $0 &* 31) }
        #expect(store.saveBlob("tls-blob", body) == nil)
        #expect((try? store.loadBlob("tls-blob").get()) == body)
        #expect(try redis.cli(["EXISTS", prefix + "blob:{tls-blob}"]) == "1")
        store.deleteBlob("tls-blob")
        #expect(try redis.cli(["EXISTS", prefix + "blob:{tls-blob}"]) == "0")

        let key = "tlsl-\(UInt32.random(in: 0...UInt32.max))"
        let tls = certs.config.map { ", \($0.key) = \"\($0.value)\"" }.sorted().joined()
        let a = PairNode(name: "tl-a", listen: freeLoopbackPort(), peer: freeLoopbackPort(), failoverAfterMs: nil,
                         extra: FailoverTests.lease(redis, key, config: tls))
        defer { a.terminate(); a.remove() }
        try a.start(standby: false)
        #expect(waitFor(10) { a.isPrimary }, "\(a.log.all.suffix(3))")
        #expect(try redis.cli(["GET", key + ":epoch"]) == "1")
    }
}
