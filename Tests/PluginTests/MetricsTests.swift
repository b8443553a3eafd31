// metrics-prometheus: scraped over HTTP by a real client (Python's urllib) while orders flow,
// and the answer parsed as the Prometheus text format.
import CrossbookClient
import CPluginABI
import CSync
import Engine
import Foundation
import Glibc
import OrderBook
import SharedMemory
import Testing
import TestSupport

/// A socket bound to 127.0.0.1 on a port the kernel picks: (fd, port).
func boundSocket() -> (fd: Int32, port: UInt16) {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_addr.s_addr = UInt32(0x7F00_0001).bigEndian
    _ = withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
    }
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    _ = withUnsafeMutablePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
    }
    return (fd, UInt16(bigEndian: address.sin_port))
}

/// A TCP port nobody listens on now.
func freePort() -> UInt16 {
    let (fd, port) = boundSocket()
    close(fd)
    return port
}

/// GET with Python's urllib: status, content type and body.
func httpGet(_ url: String) throws -> (status: Int, type: String, body: String) {
    let script = """
        import sys, urllib.request, urllib.error
        try:
            r = urllib.request.urlopen(sys.argv[1], timeout=5)
            status, ctype, body = r.status, r.headers.get('Content-Type', ''), r.read()
        except urllib.error.HTTPError as e:
            status, ctype, body = e.code, e.headers.get('Content-Type', ''), e.read()
        sys.stdout.write(f"{status}\\n{ctype}\\n")
        sys.stdout.flush()
        sys.stdout.buffer.write(body)
        """
    let (code, output) = try run("/usr/bin/env", ["python3", "-c", script, url])
    guard code == 0 else { throw CompileError(text: "python3 failed: \(output)") }
    let parts = output.split(separator: "\n", maxSplits: 2, omittingEmptySubsequences: false)
    return (Int(parts[0]) ?? 0, String(parts[1]), parts.count > 2 ? String(parts[2]) : "")
}

/// The text format, parsed strictly: every sample belongs to a family declared by # TYPE before
/// it, names and labels are well formed, values are numbers.
struct Exposition {
    struct Sample {
        var name: String
        var labels: [String: String]
        var value: Double
    }

    var types: [String: String] = [:]
    var samples: [Sample] = []

    init(_ text: String) throws {
        let nameChars = CharacterSet(charactersIn: "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_:")
        func bad(_ line: Substring, _ why: String) -> CompileError { CompileError(text: "\(why): \(line)") }
        var current = ""
        for line in text.split(separator: "\n") {
            if line.hasPrefix("# HELP ") { continue }
            if line.hasPrefix("# TYPE ") {
                let f = line.split(separator: " ")
                guard f.count == 4, ["counter", "gauge", "histogram"].contains(f[3]) else { throw bad(line, "bad TYPE") }
                guard types[String(f[2])] == nil else { throw bad(line, "family declared twice") }
                types[String(f[2])] = String(f[3])
                current = String(f[2])
                continue
            }
            guard !line.hasPrefix("#") else { continue }
            var name = "", labels: [String: String] = [:], rest = Substring(line)
            if let brace = line.firstIndex(of: "{") {
                name = String(line[..<brace])
                guard let close = line.lastIndex(of: "}") else { throw bad(line, "unclosed labels") }
                var inner = line[line.index(after: brace)..<close]
                while !inner.isEmpty {
                    guard let eq = inner.firstIndex(of: "="), inner[inner.index(after: eq)] == "\"" else {
                        throw bad(line, "bad label")
                    }
                    let key = String(inner[..<eq])
                    var value = "", i = inner.index(eq, offsetBy: 2)
                    while i < inner.endIndex && inner[i] != "\"" {
                        if inner[i] == "\\" { i = inner.index(after: i) }
                        value.append(inner[i])
                        i = inner.index(after: i)
                    }
                    guard i < inner.endIndex else { throw bad(line, "unterminated label value") }
                    labels[key] = value
                    inner = inner[inner.index(after: i)...]
                    if inner.hasPrefix(",") { inner = inner.dropFirst() }
                }
                rest = line[line.index(after: close)...]
            } else {
                guard let space = line.firstIndex(of: " ") else { throw bad(line, "no value") }
                name = String(line[..<space])
                rest = line[space...]
            }
            guard !name.isEmpty, name.unicodeScalars.allSatisfy({ nameChars.contains($0) }) else { throw bad(line, "bad name") }
            let valueText = rest.trimmingCharacters(in: .whitespaces)
            guard let value = Double(valueText) ?? (valueText == "+Inf" ? .infinity : nil) else { throw bad(line, "bad value") }
            let family = types[name] != nil ? name
                : ["_bucket", "_sum", "_count"].compactMap { name.hasSuffix($0) ? String(name.dropLast($0.count)) : nil }.first ?? name
            guard family == current, types[family] != nil else { throw bad(line, "sample outside its family (\(current))") }
            samples.append(Sample(name: name, labels: labels, value: value))
        }
    }

    func value(_ name: String, _ labels: [String: String] = [:]) -> Double? {
        samples.first { sample in sample.name == name && labels.allSatisfy { k, v in sample.labels[k] == v } }?.value
    }

    func all(_ name: String) -> [Sample] { samples.filter { $0.name == name } }
}

@Suite("metrics-prometheus", .serialized)
struct MetricsPluginTests {
    @Test("GET /metrics under load: valid text format (ours and promtool check metrics), counters move, histograms consistent, per symbol sums to per shard")
    func scrapeUnderLoad() throws {
        let port = freePort()
        let dir = testDirectory(), log = LogLines(), data = temporaryFolder()
        defer { removeTree(data) }
        // Sync durability: the group-commit histograms fill too.
        let engine = try pluginEngine(dir, plugins: PluginSettings(directory: buildDirectory, load: [
            PluginSpec(name: "metrics-prometheus", config: ["listen": "127.0.0.1:\(port)"]),
        ]), log: log, syncJournalIn: data)
        defer { engine.stop() }
        let url = "http://127.0.0.1:\(port)/metrics"
        nonisolated(unsafe) let stop = UnsafeMutablePointer<UInt32>.allocate(capacity: 1)
        stop.initialize(to: 0)
        let loader = Thread {
            guard let client = try? CrossbookClient(instance: "p", directory: dir) else { return }
            let symbols = symbolNames.compactMap { try? client.symbol($0) }
            var id: OrderId = 1
            while cb_load_acquire_u32(stop) == 0 {
                for k in 0..<64 {
                    let side: Side = k % 2 == 0 ? .buy : .sell
                    // Some off the band: rejects with a reason.
                    let price: Price = id % 50 == 0 ? 0 : 1000 + Price(id % 7)
                    _ = client.submit(.new(NewOrder(orderId: id, side: side, price: price, quantity: 1)),
                                      symbol: symbols[Int(id) % symbols.count], flush: false)
                    id += 1
                }
                client.flush()
                _ = try? client.poll { _ in }
                usleep(200)
            }
            client.close()
        }
        loader.start()
        defer {
            cb_store_release_u32(stop, 1)
            usleep(100_000)
        }
        #expect(waitFor(5) { (try? EngineFile.attach(directory: dir).counters(0).read(.commands)) ?? 0 > 1000 })
        let first = try httpGet(url)
        usleep(300_000)
        let second = try httpGet(url)
        #expect(first.status == 200)
        #expect(first.type == "text/plain; version=0.0.4; charset=utf-8")
        let a = try Exposition(first.body), b = try Exposition(second.body)
        // Debian's promtool on a scrape taken under load, as Prometheus would read it.
        let linted = try runWithInput("/usr/bin/promtool", ["check", "metrics"], input: second.body)
        #expect(linted.status == 0, "promtool: \(linted.output)")
        for family in ["crossbook_shard_commands_total", "crossbook_shard_trades_total", "crossbook_shard_rejects_by_reason_total",
                       "crossbook_shard_ring_backlog", "crossbook_shard_batch_size", "crossbook_match_batch_seconds",
                       "crossbook_journal_sync_seconds", "crossbook_shard_cpu_seconds_total", "crossbook_symbol_commands_total",
                       "crossbook_symbol_trades_total", "crossbook_plugin_health", "crossbook_plugin_metrics_scrapes_total"] {
            #expect(a.types[family] != nil, "\(family) missing")
        }
        #expect(a.types["crossbook_match_batch_seconds"] == "histogram")
        // Under load the counters move between two scrapes.
        let commandsA = a.all("crossbook_shard_commands_total").map(\.value).reduce(0, +)
        let commandsB = b.all("crossbook_shard_commands_total").map(\.value).reduce(0, +)
        #expect(commandsB > commandsA, "\(commandsA) -> \(commandsB)")
        #expect(b.value("crossbook_plugin_metrics_scrapes_total", ["plugin": "metrics-prometheus"]) ?? 0 >= 1)
        #expect(b.value("crossbook_engine_running") == 1)
        // Rejects by reason: the zero prices, under their reason, adding up to the rejects.
        let byReason = b.all("crossbook_shard_rejects_by_reason_total").filter { $0.value > 0 }
        #expect(!byReason.isEmpty && byReason.allSatisfy { $0.labels["reason"] != nil })
        // Histograms: buckets cumulative, +Inf equals _count.
        for family in ["crossbook_match_batch_seconds", "crossbook_shard_batch_size", "crossbook_journal_sync_seconds",
                       "crossbook_journal_batch_commands"] {
            for shard in ["0", "1"] {
                let buckets = b.all(family + "_bucket").filter { $0.labels["shard"] == shard }
                #expect(buckets.count > 2)
                #expect(zip(buckets, buckets.dropFirst()).allSatisfy { $0.value <= $1.value }, "\(family) not cumulative")
                #expect(buckets.last?.labels["le"] == "+Inf")
                #expect(buckets.last?.value == b.value(family + "_count", ["shard": shard]))
            }
        }
        #expect(b.value("crossbook_match_batch_seconds_count", ["shard": "0"]) ?? 0 > 0)
        #expect(b.value("crossbook_journal_sync_seconds_count", ["shard": "0"]) ?? 0 > 0)
        #expect(b.types["crossbook_journal_batch_commands"] == "histogram")
        #expect(b.value("crossbook_shard_cpu_seconds_total", ["shard": "0"]) ?? 0 > 0)
        // Per symbol adds up to per shard (each symbol's commands are counted by its shard).
        cb_store_release_u32(stop, 1)
        // Quiet: the last group commit may still be in flight (async: a shard that parks reaps its
        // completion at its next wake, up to a park timeout later). Scrape until it has landed.
        var still = try Exposition(try httpGet(url).body)
        let deadline = Date().addingTimeInterval(5)
        while Date() < deadline, ["0", "1"].contains(where: {
            still.value("crossbook_journal_batch_commands_sum", ["shard": $0]) != still.value("crossbook_journal_durable_sequence", ["shard": $0])
        }) {
            usleep(100_000)
            still = try Exposition(try httpGet(url).body)
        }
        for shard in ["0", "1"] {
            let bySymbol = still.all("crossbook_symbol_commands_total").filter { $0.labels["shard"] == shard }.map(\.value)
            #expect(bySymbol.count == 2)
            #expect(bySymbol.reduce(0, +) == still.value("crossbook_shard_commands_total", ["shard": shard]))
            // Every durable command was in exactly one group commit.
            #expect(still.value("crossbook_journal_batch_commands_sum", ["shard": shard])
                == still.value("crossbook_journal_durable_sequence", ["shard": shard]))
        }
        let notFound = try httpGet("http://127.0.0.1:\(port)/nothing")
        #expect(notFound.status == 404)
    }

    @Test("idle and slow clients do not hold up a scrape; the scrape passes promtool check metrics; a plugin counter that would repeat an engine family is refused, a plugin's help text is kept; build and process metrics")
    func cannotBeKnockedOver() throws {
        let port = freePort()
        let dir = testDirectory(), log = LogLines(), folder = temporaryFolder()
        defer { removeTree(folder) }
        // A plugin that asks for a gauge named "health" (it would repeat crossbook_plugin_health)
        // and a counter with its own help.
        _ = try compilePlugin("""
            #include "crossbook_plugin.h"
            static int marker;
            static int start(const cb_host_api *api, cb_host *host, void **instance, char *error, size_t size) {
                (void)error; (void)size;
                uint64_t *slot = 0, *good = 0;
                int clash = api->counter_register(host, "health", "mine", CB_METRIC_GAUGE, &slot);
                api->counter_register(host, "good_things", "Good things this plugin did", CB_METRIC_COUNTER, &good);
                if (good) __atomic_store_n(good, clash == CB_ERR_INVALID ? 7 : 1, __ATOMIC_RELAXED);
                uint64_t *orders = 0, *fills = 0, *bad = 0;
                api->counter_register(host, "routed{topic=\\"orders\\"}", "Messages routed, by topic", CB_METRIC_COUNTER, &orders);
                api->counter_register(host, "routed{topic=\\"fills\\"}", "Messages routed, by topic", CB_METRIC_COUNTER, &fills);
                int refused = api->counter_register(host, "routed{plugin=\\"x\\"}", "", CB_METRIC_COUNTER, &bad);
                if (orders) __atomic_store_n(orders, 3, __ATOMIC_RELAXED);
                if (fills) __atomic_store_n(fills, refused == CB_ERR_INVALID ? 5 : 0, __ATOMIC_RELAXED);
                *instance = &marker;
                return CB_OK;
            }
            static void stop(void *instance) { (void)instance; }
            static const cb_plugin d = { sizeof(cb_plugin), CB_PLUGIN_ABI_VERSION, "clash", "1.0", CB_KIND_METRICS, 0, start, stop, 0 };
            CB_PLUGIN_EXPORT const cb_plugin *crossbook_plugin_entry(void) { return &d; }
            """, name: "clash", into: folder)
        let engine = try pluginEngine(dir, plugins: PluginSettings(directory: folder, load: [
            PluginSpec(name: "metrics-prometheus", file: buildDirectory + "/libcrossbook-metrics-prometheus.so",
                       config: ["listen": "127.0.0.1:\(port)"]),
            PluginSpec(name: "clash"),
        ]), log: log)
        defer { engine.stop() }
        #expect(log.contains("counter name 'health' refused"), "\(log.all)")

        // Three connections that say nothing, one that sends a byte every 300 ms: before, each
        // held the one-at-a-time server for 2 s, and a scrape (5 s timeout here) failed.
        func connectLoopback() -> Int32 {
            let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            var address = sockaddr_in()
            address.sin_family = sa_family_t(AF_INET)
            address.sin_addr.s_addr = UInt32(0x7F00_0001).bigEndian
            address.sin_port = port.bigEndian
            _ = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
            }
            return fd
        }
        let idle = (0..<3).map { _ in connectLoopback() }
        defer { for fd in idle { close(fd) } }
        let slow = connectLoopback()
        let stopSlow = StopSignal()
        let slowThread = Thread {
            for byte in Array("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n".utf8) {
                if stopSlow.isSet { break }
                var b = byte
                _ = send(slow, &b, 1, Int32(MSG_NOSIGNAL))
                usleep(300_000)
            }
        }
        slowThread.start()
        defer {
            stopSlow.set()
            close(slow)
        }
        usleep(200_000)
        var bodies: [String] = []
        for _ in 0..<3 {
            let scrape = try httpGet("http://127.0.0.1:\(port)/metrics")
            #expect(scrape.status == 200)
            bodies.append(scrape.body)
        }
        let body = try #require(bodies.last)
        let parsed = try Exposition(body)
        #expect(parsed.value("crossbook_plugin_good_things_total", ["plugin": "clash"]) == 7)
        #expect(body.contains("# HELP crossbook_plugin_good_things_total Good things this plugin did\n"))
        // Labels of a plugin's own: one family, a sample per label set; "plugin" is the host's.
        #expect(parsed.value("crossbook_plugin_routed_total", ["plugin": "clash", "topic": "orders"]) == 3)
        #expect(parsed.value("crossbook_plugin_routed_total", ["plugin": "clash", "topic": "fills"]) == 5)
        #expect(body.contains("# HELP crossbook_plugin_routed_total Messages routed, by topic\n"))
        #expect(body.components(separatedBy: "# TYPE crossbook_plugin_health ").count == 2)
        #expect(parsed.value("crossbook_build_info", ["version": crossbookVersion]) == 1)
        #expect(parsed.value("process_resident_memory_bytes") ?? 0 > 1_000_000)
        #expect(parsed.value("process_open_fds") ?? 0 > 3)
        #expect(parsed.value("process_cpu_seconds_total") ?? 0 > 0)
        #expect(parsed.value("process_start_time_seconds") ?? 0 > Date().timeIntervalSince1970 - 86400 * 365)
        // Debian's promtool, as Prometheus would read it.
        let check = try runWithInput("/usr/bin/promtool", ["check", "metrics"], input: body)
        #expect(check.status == 0, "promtool: \(check.output)")
        // The slow one is cut at its deadline, and counted.
        #expect(waitFor(5) {
            (try? Exposition(try httpGet("http://127.0.0.1:\(port)/metrics").body))?
                .value("crossbook_plugin_metrics_request_errors_total", ["plugin": "metrics-prometheus"]) ?? 0 >= 1
        })
    }

    @Test("the alert rules load (promtool check rules) and pass their unit tests (promtool test rules: normal rejects do not page, a full book does); a real Prometheus server scrapes the engine under load and every dashboard query returns data")
    func prometheusServer() throws {
        let rules = repositoryRoot + "/plugins/metrics-prometheus/prometheus-alerts.yml"
        let checked = try runWithInput("/usr/bin/promtool", ["check", "rules", rules], input: "")
        #expect(checked.status == 0, "\(checked.output)")
        let unit = try runWithInput("/usr/bin/promtool", ["test", "rules", repositoryRoot + "/plugins/metrics-prometheus/prometheus-alerts-test.yml"], input: "")
        #expect(unit.status == 0, "\(unit.output)")

        let port = freePort(), prometheusPort = freePort()
        let dir = testDirectory(), log = LogLines(), folder = temporaryFolder()
        defer { removeTree(folder) }
        // A journaled primary serving standbys (none comes): the replication panels have data.
        let engine = try pluginEngine(dir, plugins: PluginSettings(directory: buildDirectory, load: [
            PluginSpec(name: "metrics-prometheus", config: ["listen": "127.0.0.1:\(port)"]),
        ]), log: log, syncJournalIn: folder + "/journal",
           replication: ReplicationSettings(listen: "127.0.0.1:\(freePort())", mode: .async))
        defer { engine.stop() }
        let stop = StopSignal()
        let loader = Thread {
            guard let client = try? CrossbookClient(instance: "p", directory: dir) else { return }
            let symbols = symbolNames.compactMap { try? client.symbol($0) }
            var id: OrderId = 1
            while !stop.isSet {
                for k in 0..<32 {
                    let price: Price = id % 50 == 0 ? 0 : 1000 + Price(id % 7)  // some rejected
                    _ = client.submit(.new(NewOrder(orderId: id, side: k % 2 == 0 ? .buy : .sell, price: price, quantity: 1)),
                                      symbol: symbols[Int(id) % symbols.count], flush: false)
                    id += 1
                }
                client.flush()
                _ = try? client.poll { _ in }
                usleep(2000)
            }
            client.close()
        }
        loader.start()
        defer { stop.set(); usleep(100_000) }

        try """
        global: {scrape_interval: 1s, evaluation_interval: 1s}
        rule_files: ["\(rules)"]
        scrape_configs:
          - job_name: crossbook
            static_configs: [{targets: ["127.0.0.1:\(port)"]}]
        """.write(toFile: folder + "/prometheus.yml", atomically: true, encoding: .utf8)
        let server = try LoopbackServer("prometheus", port: Int(prometheusPort), command:
            "/usr/bin/prometheus --config.file=\(folder)/prometheus.yml --storage.tsdb.path=\(folder)/data --web.listen-address=127.0.0.1:\(prometheusPort) --log.level=warn")
        defer { server.stop() }
        func query(_ expr: String) -> [Any]? {
            let encoded = expr.addingPercentEncoding(withAllowedCharacters: .alphanumerics) ?? ""
            guard let answer = try? httpGet("http://127.0.0.1:\(prometheusPort)/api/v1/query?query=\(encoded)"), answer.status == 200,
                  let json = try? JSONSerialization.jsonObject(with: Data(answer.body.utf8)) as? [String: Any],
                  let data = json["data"] as? [String: Any] else { return nil }
            return data["result"] as? [Any]
        }
        #expect(waitFor(30) { (query("up{job=\"crossbook\"} == 1")?.count ?? 0) == 1 }, "Prometheus never scraped the engine")
        usleep(12_000_000)  // enough samples for the rates
        let dashboard = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: repositoryRoot + "/plugins/metrics-prometheus/grafana-dashboard.json"))) as? [String: Any]
        let panels = dashboard?["panels"] as? [[String: Any]] ?? []
        #expect(panels.count >= 19)
        var empty: [String] = []
        for panel in panels {
            for target in panel["targets"] as? [[String: Any]] ?? [] {
                guard let expr = target["expr"] as? String else { continue }
                let concrete = expr.replacingOccurrences(of: "$instance", with: ".*").replacingOccurrences(of: "$__rate_interval", with: "10s")
                if (query(concrete)?.count ?? 0) == 0 { empty.append("\(panel["title"] ?? "?"): \(concrete)") }
            }
        }
        #expect(empty.isEmpty, "queries without data: \(empty)")
        // The rules loaded into the server. This load fills the test engine's small books
        // (16,384 orders a symbol): the book-full alert fires, and it alone.
        let full = query("sum(crossbook_shard_rejects_by_reason_total{reason=\"order_pool_exhausted\"}) > 0")?.count ?? 0
        // CrossbookReplicationDown is right (no standby ever comes) and may fire once 30 s pass.
        let firing = Set((query("ALERTS{alertstate=\"firing\"}") ?? []).compactMap { (($0 as? [String: Any])?["metric"] as? [String: Any])?["alertname"] as? String })
            .subtracting(["CrossbookReplicationDown"])
        #expect(firing == (full > 0 ? ["CrossbookBookFull"] : []), "firing: \(firing), book full: \(full > 0)")
        #expect(full > 0, "the load was meant to fill the books")
    }

    @Test("a port already taken: start fails with the address and the reason")
    func portTaken() throws {
        let (fd, port) = boundSocket()
        defer { close(fd) }
        listen(fd, 1)
        let text = refusal(PluginSettings(directory: buildDirectory, load: [
            PluginSpec(name: "metrics-prometheus", config: ["listen": "127.0.0.1:\(port)"]),
        ]))
        #expect(text == "plugin metrics-prometheus: start failed: CB_ERR_IO: cannot listen on 127.0.0.1:\(port): Address already in use",
                "\(text)")
    }
}

final class StopSignal: @unchecked Sendable {
    private let lock = NSLock()
    private var value = false
    var isSet: Bool { lock.lock(); defer { lock.unlock() }; return value }
    func set() { lock.lock(); value = true; lock.unlock() }
}

/// Runs a program with `input` on its standard input: its status and output (both streams).
func runWithInput(_ program: String, _ arguments: [String], input: String) throws -> (status: Int32, output: String) {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: program)
    process.arguments = arguments
    let pipe = Pipe(), stdin = Pipe()
    process.standardOutput = pipe
    process.standardError = pipe
    process.standardInput = stdin
    try process.run()
    let writer = Thread {
        stdin.fileHandleForWriting.write(Data(input.utf8))
        try? stdin.fileHandleForWriting.close()
    }
    writer.start()
    let data = pipe.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    return (process.terminationStatus, String(decoding: data, as: UTF8.self))
}
