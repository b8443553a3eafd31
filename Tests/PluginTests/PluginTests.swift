// Plugins: the host loads, starts and stops them; refuses each bad one with one error naming the
// plugin and the cause; a plugin built against the first v1 header loads after the host table
// grew; the template plugins (C and Swift) feed orders end to end; metrics are scraped over
// real HTTP under load and parsed.
import CrossbookClient
import CPluginABI
import CSync
import CrossbookConfig
import Engine
import Foundation
import Glibc
import OrderBook
import SharedMemory
import Testing
import TestSupport
import Wire

let repositoryRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
    .deletingLastPathComponent().path
let buildDirectory = PluginSettings.executableDirectory


func temporaryFolder() -> String {
    let path = NSTemporaryDirectory() + "crossbook-plugins-\(UUID().uuidString.prefix(8))"
    mkdir(path, 0o755)
    return path
}


/// Runs a program; returns its exit status and output.
@discardableResult
func run(_ program: String, _ arguments: [String], input: String? = nil) throws -> (status: Int32, output: String) {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: program)
    process.arguments = arguments
    let pipe = Pipe()
    process.standardOutput = pipe
    process.standardError = pipe
    try process.run()
    let data = pipe.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    return (process.terminationStatus, String(decoding: data, as: UTF8.self))
}

/// Compiles a C plugin into `folder` as libcrossbook-<name>.so, against `include` (default: the
/// repository's header).
func compilePlugin(_ source: String, name: String, into folder: String, include: String? = nil,
                   defines: [String] = []) throws -> String {
    let file = folder + "/\(name).c"
    try source.write(toFile: file, atomically: true, encoding: .utf8)
    let output = folder + "/libcrossbook-\(name).so"
    let (status, text) = try run("/usr/bin/env", ["cc", "-std=c11", "-Wall", "-Werror", "-shared", "-fPIC", "-O1",
                                                   "-I", include ?? repositoryRoot + "/C/CPluginABI/include"]
                                     + defines + [file, "-o", output, "-lpthread"])
    guard status == 0 else { throw CompileError(text: text) }
    return output
}

struct CompileError: Error, CustomStringConvertible {
    var text: String
    var description: String { "cc failed: \(text)" }
}

let symbolNames = ["BTC-USD", "ETH-USD", "SOL-USD", "XRP-USD"]

func pluginEngine(_ dir: String, plugins: PluginSettings?, log: LogLines, instance: String = "p",
                  syncJournalIn data: String? = nil, replication: ReplicationSettings? = nil) throws -> Engine {
    var settings = EngineSettings(
        instance: instance, directory: dir, shards: [ShardSettings(core: nil), ShardSettings(core: nil)],
        symbols: symbolNames.enumerated().map { (spec: SymbolSpec(name: $1, id: UInt32($0 + 1)), shard: $0 % 2) },
        capacity: BookCapacity(orders: 1 << 14, levels: 1 << 10),
        wait: WaitStrategy(spins: 1000, yields: 10, park: true, parkTimeoutNanoseconds: 50_000_000))
    settings.plugins = plugins
    if let data {
        settings.durability = .sync
        settings.dataDirectory = data
    }
    settings.replication = replication
    let engine = Engine(settings: settings, log: { log.append($0) })
    for line in try engine.start() { log.append(line) }
    return engine
}

/// Starts an engine that must refuse; returns its error text.
func refusal(_ plugins: PluginSettings) -> String {
    let dir = testDirectory()
    let log = LogLines()
    do {
        let engine = try pluginEngine(dir, plugins: plugins, log: log)
        engine.stop()
        return "(started)"
    } catch {
        // Nothing of the refused engine is left behind.
        #expect(access(dir + "/engine", F_OK) != 0)
        return "\(error)"
    }
}


/// A small plugin for the host's checks: its descriptor fields come from -D flags.
let probeSource = """
    #include "crossbook_plugin.h"
    #include <stdio.h>
    #include <string.h>
    #ifndef PROBE_NAME
    #define PROBE_NAME "probe"
    #endif
    #ifndef PROBE_ABI
    #define PROBE_ABI CB_PLUGIN_ABI_VERSION
    #endif
    #ifndef PROBE_SIZE
    #define PROBE_SIZE sizeof(cb_plugin)
    #endif
    static int marker;
    static int start(const cb_host_api *api, cb_host *host, void **instance, char *error, size_t size) {
        const char *fail = api->config_get(host, "fail");
        if (fail) { snprintf(error, size, "asked to fail: %s", fail); return CB_ERR_INVALID; }
        uint64_t *started = NULL;
        if (api->counter_register(host, "probe_started", "", CB_METRIC_COUNTER, &started) == CB_OK)
            __atomic_fetch_add(started, 1, __ATOMIC_RELAXED);
        api->log(host, CB_LOG_INFO, "probe started");
        *instance = &marker;
        return CB_OK;
    }
    static void stop(void *instance) { (void)instance; }
    static int health(void *instance, char *message, size_t size) {
        (void)instance;
        snprintf(message, size, "probe fine");
        return CB_HEALTH_OK;
    }
    static const cb_plugin descriptor = {
        .size = PROBE_SIZE, .abi_version = PROBE_ABI, .name = PROBE_NAME, .version = "0.1",
        .kinds = CB_KIND_EGRESS, .start = start, .stop = stop, .health = health,
    };
    #ifndef NO_ENTRY
    CB_PLUGIN_EXPORT const cb_plugin *crossbook_plugin_entry(void) { return &descriptor; }
    #else
    CB_PLUGIN_EXPORT const cb_plugin *some_other_name(void) { return &descriptor; }
    #endif
    """

@Suite("Plugin ABI: what a plugin links")
struct PluginLinkTests {
    @Test("the Swift plugins built here link neither liburing nor libnuma: the ABI header is a target of its own that links nothing")
    func noEngineLibraries() throws {
        let names = try FileManager.default.contentsOfDirectory(atPath: buildDirectory)
            .filter { $0.hasPrefix("libcrossbook-") && $0.hasSuffix(".so") && !$0.contains("-c.so") }
        #expect(names.count >= 3, "\(names)")
        for name in names {
            let ldd = Process()
            ldd.executableURL = URL(fileURLWithPath: "/usr/bin/ldd")
            ldd.arguments = [buildDirectory + "/" + name]
            let out = Pipe()
            ldd.standardOutput = out
            try ldd.run()
            let text = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            ldd.waitUntilExit()
            #expect(!text.contains("liburing") && !text.contains("libnuma"), "\(name): \(text)")
        }
    }
}

@Suite("plugin host", .serialized)
struct PluginHostTests {
    @Test("a plugin loads, starts, shows its health and counters, and stops")
    func loadStartStop() throws {
        let folder = temporaryFolder()
        defer { removeTree(folder) }
        _ = try compilePlugin(probeSource, name: "probe", into: folder)
        let dir = testDirectory(), log = LogLines()
        let engine = try pluginEngine(dir, plugins: PluginSettings(directory: folder, load: [PluginSpec(name: "probe")]),
                                      log: log)
        let file = try EngineFile.attach(directory: dir)
        #expect(file.pluginStatuses().map(\.name) == ["probe"])
        #expect(file.pluginStatuses().first?.state == .running)
        #expect(file.pluginCounters().first { $0.name == "probe_started" }?.value == 1)
        #expect(log.contains("plugin probe [info]: probe started"))
        // Health is asked about once a second, on the control thread.
        #expect(waitFor(3) { file.pluginStatuses().first?.message == "probe fine" })
        engine.stop()
        #expect(log.contains("plugin probe: stopped"))
    }

    @Test("refused: a missing file, named with the plugin and the cause")
    func missingFile() {
        let folder = temporaryFolder()
        defer { removeTree(folder) }
        let text = refusal(PluginSettings(directory: folder, load: [PluginSpec(name: "nothere")]))
        #expect(text.hasPrefix("plugin nothere: missing file:"), "\(text)")
        #expect(text.contains("libcrossbook-nothere.so"), "\(text)")
    }

    @Test("refused: a missing entry point")
    func missingEntryPoint() throws {
        let folder = temporaryFolder()
        defer { removeTree(folder) }
        _ = try compilePlugin(probeSource, name: "probe", into: folder, defines: ["-DNO_ENTRY"])
        let text = refusal(PluginSettings(directory: folder, load: [PluginSpec(name: "probe")]))
        #expect(text.hasPrefix("plugin probe: missing entry point:"), "\(text)")
        #expect(text.contains("crossbook_plugin_entry"), "\(text)")
    }

    @Test("refused: another ABI version, or a descriptor smaller than v1's")
    func abiMismatch() throws {
        let folder = temporaryFolder()
        defer { removeTree(folder) }
        _ = try compilePlugin(probeSource, name: "probe", into: folder, defines: ["-DPROBE_ABI=2"])
        let text = refusal(PluginSettings(directory: folder, load: [PluginSpec(name: "probe")]))
        #expect(text.hasPrefix("plugin probe: ABI mismatch: built for plugin ABI v2; this engine speaks v1"), "\(text)")
        _ = try compilePlugin(probeSource, name: "small", into: folder, defines: ["-DPROBE_NAME=\"small\"", "-DPROBE_SIZE=16"])
        let small = refusal(PluginSettings(directory: folder, load: [PluginSpec(name: "small")]))
        #expect(small.hasPrefix("plugin small: ABI mismatch: descriptor of 16 bytes"), "\(small)")
    }

    @Test("refused: unsafe permissions (world-writable file or directory, another user's file)")
    func unsafePermissions() throws {
        let folder = temporaryFolder()
        defer { removeTree(folder) }
        let path = try compilePlugin(probeSource, name: "probe", into: folder)
        let settings = PluginSettings(directory: folder, load: [PluginSpec(name: "probe")])
        chmod(path, 0o757)
        let writable = refusal(settings)
        #expect(writable.hasPrefix("plugin probe: unsafe permissions: \(path) is writable by every user"), "\(writable)")
        chmod(path, 0o755)
        chmod(folder, 0o777)
        let directory = refusal(settings)
        #expect(directory.hasPrefix("plugin probe: unsafe permissions: plugin directory \(folder) is writable by every user"),
                "\(directory)")
        chmod(folder, 0o755)
        if geteuid() == 0 {  // only root can give a file away
            chown(path, 12345, 12345)
            let owned = refusal(settings)
            #expect(owned.hasPrefix("plugin probe: unsafe permissions: \(path) is owned by uid 12345"), "\(owned)")
            chown(path, 0, 0)
        }
        #expect(refusal(settings) == "(started)")
    }

    @Test("refused: a group-writable plugin or directory, and a plugin file that is a symbolic link")
    func groupWritableAndLinks() throws {
        let folder = temporaryFolder()
        defer { removeTree(folder) }
        let path = try compilePlugin(probeSource, name: "probe", into: folder)
        let settings = PluginSettings(directory: folder, load: [PluginSpec(name: "probe")])
        chmod(folder, 0o775)
        let directory = refusal(settings)
        #expect(directory.hasPrefix("plugin probe: unsafe permissions: plugin directory \(folder) is writable by its group"), "\(directory)")
        chmod(folder, 0o755)
        chmod(path, 0o775)
        let file = refusal(settings)
        #expect(file.hasPrefix("plugin probe: unsafe permissions: \(path) is writable by its group"), "\(file)")
        chmod(path, 0o755)
        // The configured name is a link (to a good plugin, even): what is loaded must be the file
        // that was checked, so a link is refused rather than followed.
        let real = folder + "/real-probe.so"
        #expect(rename(path, real) == 0 && symlink(real, path) == 0)
        let link = refusal(settings)
        #expect(link.hasPrefix("plugin probe: unsafe permissions: \(path) is a symbolic link"), "\(link)")
        unlink(path)
        #expect(rename(real, path) == 0)
        #expect(refusal(settings) == "(started)")
    }

    @Test("refused: a file that is not a shared library, and a plugin that names itself otherwise")
    func cannotLoad() throws {
        let folder = temporaryFolder()
        defer { removeTree(folder) }
        try "not an ELF file".write(toFile: folder + "/libcrossbook-junk.so", atomically: true, encoding: .utf8)
        let junk = refusal(PluginSettings(directory: folder, load: [PluginSpec(name: "junk")]))
        #expect(junk.hasPrefix("plugin junk: cannot load:"), "\(junk)")
        _ = try compilePlugin(probeSource, name: "probe", into: folder)
        let renamed = refusal(PluginSettings(directory: folder, load: [PluginSpec(name: "other", file: "libcrossbook-probe.so")]))
        #expect(renamed.hasPrefix("plugin other: bad descriptor:"), "\(renamed)")
        #expect(renamed.contains("is plugin 'probe'"), "\(renamed)")
    }

    @Test("refused: start failed, with the plugin's own reason")
    func startFailed() throws {
        let folder = temporaryFolder()
        defer { removeTree(folder) }
        _ = try compilePlugin(probeSource, name: "probe", into: folder)
        let text = refusal(PluginSettings(directory: folder, load: [PluginSpec(name: "probe", config: ["fail": "on purpose"])]))
        #expect(text == "plugin probe: start failed: CB_ERR_INVALID: asked to fail: on purpose", "\(text)")
    }

    @Test("an optional plugin that cannot load or start is logged and skipped; the engine starts")
    func optionalSkipped() throws {
        let folder = temporaryFolder()
        defer { removeTree(folder) }
        _ = try compilePlugin(probeSource, name: "probe", into: folder)
        let dir = testDirectory(), log = LogLines()
        let engine = try pluginEngine(dir, plugins: PluginSettings(directory: folder, load: [
            PluginSpec(name: "nothere", optional: true),
            PluginSpec(name: "probe", optional: true, config: ["fail": "optional"]),
        ]), log: log)
        defer { engine.stop() }
        #expect(log.contains("plugin nothere: missing file:"))
        #expect(log.contains("(optional: skipped)"))
        #expect(log.contains("plugin probe: start failed: CB_ERR_INVALID: asked to fail: optional (optional: skipped)"))
        let statuses = try EngineFile.attach(directory: dir).pluginStatuses()
        #expect(statuses.map(\.name) == ["probe"])
        #expect(statuses.first?.state == .failed)
    }

    @Test("plugins stop in the reverse of the order they started")
    func reverseStop() throws {
        let folder = temporaryFolder()
        defer { removeTree(folder) }
        for name in ["first", "second", "third"] {
            _ = try compilePlugin(probeSource, name: name, into: folder, defines: ["-DPROBE_NAME=\"\(name)\""])
        }
        let dir = testDirectory(), log = LogLines()
        let engine = try pluginEngine(dir, plugins: PluginSettings(directory: folder, load: [
            PluginSpec(name: "first"), PluginSpec(name: "second"), PluginSpec(name: "third"),
        ]), log: log)
        engine.stop()
        let started = ["first", "second", "third"].map { log.index(of: "plugin \($0) 0.1") ?? -1 }
        let stopped = ["first", "second", "third"].map { log.index(of: "plugin \($0): stopped") ?? -1 }
        #expect(started == started.sorted() && !started.contains(-1), "\(log.all)")
        #expect(stopped == stopped.sorted(by: >) && !stopped.contains(-1), "\(log.all)")
    }

    @Test("a plugin built against the first v1 header still loads after the host table grew; a newer one sees what the host lacks")
    func abiAppendOnly() throws {
        let folder = temporaryFolder()
        defer { removeTree(folder) }
        // The first published v1 header: this repository's, without the fields appended since
        // (everything after snapshot_store_register in the host table).
        let current = try String(contentsOfFile: repositoryRoot + "/C/CPluginABI/include/crossbook_plugin.h", encoding: .utf8)
        let lastOfFirst = "    int (*snapshot_store_register)(cb_host *host, const cb_snapshot_store *store);\n"
        let tableEnd = "} cb_host_api;"
        let cutFrom = try #require(current.range(of: lastOfFirst)).upperBound
        let cutTo = try #require(current.range(of: tableEnd)).lowerBound
        #expect(current[cutFrom..<cutTo].contains("monotonic_ns"), "fields were appended after the first v1 table")
        let first = current.replacingCharacters(in: cutFrom..<cutTo, with: "")
        let firstInclude = folder + "/v1.0", futureInclude = folder + "/v1.future"
        mkdir(firstInclude, 0o755)
        mkdir(futureInclude, 0o755)
        try first.write(toFile: firstInclude + "/crossbook_plugin.h", atomically: true, encoding: .utf8)
        // A header from the future: one more host function after the last one of today's table.
        let future = current.replacingOccurrences(of: tableEnd, with: "    uint64_t (*future_fn)(cb_host *host);\n" + tableEnd)
        try future.write(toFile: futureInclude + "/crossbook_plugin.h", atomically: true, encoding: .utf8)
        let versionSource = """
            #include "crossbook_plugin.h"
            #include <stdio.h>
            static int marker;
            static int start(const cb_host_api *api, cb_host *host, void **instance, char *error, size_t size) {
                /* What a plugin may rely on: the host table holds at least what it was built with. */
                if (api->size < sizeof(cb_host_api)) {
            #ifdef FUTURE
                    /* Built against a newer header: use what the host has, go without the rest. */
                    if (!CB_HOST_HAS(api, monotonic_ns) || CB_HOST_HAS(api, future_fn)) {
                        snprintf(error, size, "CB_HOST_HAS answered wrong"); return CB_ERR_FAILED; }
                    api->log(host, CB_LOG_INFO, "host lacks future_fn: going without it");
            #else
                    snprintf(error, size, "host table of %u bytes, built for %zu", api->size, sizeof(cb_host_api));
                    return CB_ERR_UNSUPPORTED;
            #endif
                }
                cb_producer *producer = NULL;
                if (api->producer_open(host, &producer) != CB_OK) { snprintf(error, size, "no producer"); return CB_ERR_FAILED; }
                cb_symbol symbol = {.size = sizeof symbol};
                if (api->symbol_lookup(host, "ETH-USD", &symbol) != CB_OK) { snprintf(error, size, "no symbol"); return CB_ERR_FAILED; }
                cb_command c = {.version = CB_RECORD_VERSION, .type = CB_CMD_NEW, .side = CB_SIDE_BUY, .symbol_id = symbol.id,
                                .account = 7, .order_id = 1, .price = 100, .quantity = 2};
                if (api->producer_submit(producer, &c) != CB_OK) { snprintf(error, size, "submit failed"); return CB_ERR_FAILED; }
                api->log(host, CB_LOG_INFO, "submitted one order");
                *instance = &marker;
                return CB_OK;
            }
            static void stop(void *instance) { (void)instance; }
            static const cb_plugin descriptor = {
                .size = sizeof(cb_plugin), .abi_version = CB_PLUGIN_ABI_VERSION, .name = PLUGIN_NAME, .version = "1.0",
                .kinds = CB_KIND_INGRESS, .start = start, .stop = stop,
            };
            CB_PLUGIN_EXPORT const cb_plugin *crossbook_plugin_entry(void) { return &descriptor; }
            """
        _ = try compilePlugin(versionSource, name: "old", into: folder, include: firstInclude,
                              defines: ["-DPLUGIN_NAME=\"old\""])
        _ = try compilePlugin(versionSource, name: "newer", into: folder, include: futureInclude,
                              defines: ["-DPLUGIN_NAME=\"newer\"", "-DFUTURE"])
        let dir = testDirectory(), log = LogLines()
        let engine = try pluginEngine(dir, plugins: PluginSettings(directory: folder, load: [
            PluginSpec(name: "old"), PluginSpec(name: "newer"),
        ]), log: log)
        let file = try EngineFile.attach(directory: dir)
        #expect(file.pluginStatuses().map(\.state) == [.running, .running])
        #expect(log.contains("plugin old [info]: submitted one order"))
        #expect(log.contains("plugin newer [info]: host lacks future_fn: going without it"))
        // Both orders reached ETH-USD's shard (1) through the plugins' rings.
        #expect(waitFor(5) { file.counters(1).read(.commands) == 2 })
        engine.stop()
    }
}

/// An egress plugin (subscribes to every shard's market data and counts it) that also checks
/// what a producer answers for an unknown symbol, and that a malformed record comes back as a
/// rejected report, not a crash.
let egressSource = """
    #define _GNU_SOURCE
    #include "crossbook_plugin.h"
    #include <pthread.h>
    #include <stdio.h>
    #include <stdlib.h>
    #include <time.h>
    typedef struct state {
        const cb_host_api *api; cb_host *host; cb_producer *producer;
        cb_subscription *subs[8]; uint32_t shards; int stopping; pthread_t thread;
        uint64_t *trades, *levels, *malformed, *detached;
    } state;
    static void *run(void *arg) {
        state *s = arg;
        cb_market_event events[32];
        cb_report reports[8];
        while (!__atomic_load_n(&s->stopping, __ATOMIC_ACQUIRE)) {
            for (uint32_t i = 0; i < s->shards; i++) {
                int n = s->api->subscription_poll(s->subs[i], events, 32);
                if (n == CB_ERR_CLOSED) { __atomic_fetch_add(s->detached, 1, __ATOMIC_RELAXED); continue; }
                for (int k = 0; k < n; k++)
                    __atomic_fetch_add(events[k].type == CB_EVENT_TRADE ? s->trades : s->levels, 1, __ATOMIC_RELAXED);
            }
            int n = s->api->producer_poll(s->producer, reports, 8);
            for (int k = 0; k < n; k++)
                if (reports[k].type == CB_REPORT_REJECTED && reports[k].code == 15 && reports[k].order_id == 77)
                    __atomic_fetch_add(s->malformed, 1, __ATOMIC_RELAXED);
            struct timespec pause = {0, 1000000};
            nanosleep(&pause, NULL);
        }
        return NULL;
    }
    static int start(const cb_host_api *api, cb_host *host, void **instance, char *error, size_t size) {
        state *s = calloc(1, sizeof *s);
        s->api = api; s->host = host; s->shards = api->shard_count(host);
        if (s->shards == 0 || s->shards > 8) { snprintf(error, size, "shards %u", s->shards); return CB_ERR_FAILED; }
        for (uint32_t i = 0; i < s->shards; i++)
            if (api->subscribe(host, i, &s->subs[i]) != CB_OK) { snprintf(error, size, "subscribe %u", i); return CB_ERR_FAILED; }
        cb_subscription *bad = NULL;
        if (api->subscribe(host, 99, &bad) != CB_ERR_INVALID) { snprintf(error, size, "shard 99 accepted"); return CB_ERR_FAILED; }
        if (api->producer_open(host, &s->producer) != CB_OK) { snprintf(error, size, "producer"); return CB_ERR_FAILED; }
        cb_command c = {.version = CB_RECORD_VERSION, .type = CB_CMD_NEW, .symbol_id = 999, .order_id = 1, .price = 1, .quantity = 1};
        if (api->producer_submit(s->producer, &c) != CB_ERR_UNKNOWN_SYMBOL) { snprintf(error, size, "symbol 999 accepted"); return CB_ERR_FAILED; }
        /* A record with a stray reserved byte: the shard must reject it (malformed), not trust it. */
        cb_symbol symbol = {.size = sizeof symbol};
        api->symbol_lookup(host, "BTC-USD", &symbol);
        cb_command m = {.version = CB_RECORD_VERSION, .type = CB_CMD_NEW, .symbol_id = symbol.id, .order_id = 77,
                        .price = 100, .quantity = 1, .reserved1 = 0xDEAD};
        if (api->producer_submit(s->producer, &m) != CB_OK) { snprintf(error, size, "submit"); return CB_ERR_FAILED; }
        api->counter_register(host, "egress_trades", "", CB_METRIC_COUNTER, &s->trades);
        api->counter_register(host, "egress_levels", "", CB_METRIC_COUNTER, &s->levels);
        api->counter_register(host, "egress_malformed_rejects", "", CB_METRIC_COUNTER, &s->malformed);
        api->counter_register(host, "egress_detached", "", CB_METRIC_GAUGE, &s->detached);
        pthread_create(&s->thread, NULL, run, s);
        *instance = s;
        return CB_OK;
    }
    static void stop(void *instance) {
        state *s = instance;
        __atomic_store_n(&s->stopping, 1, __ATOMIC_RELEASE);
        pthread_join(s->thread, NULL);
        for (uint32_t i = 0; i < s->shards; i++) s->api->subscription_close(s->subs[i]);
        s->api->producer_close(s->producer);
        free(s);
    }
    static const cb_plugin descriptor = {
        .size = sizeof(cb_plugin), .abi_version = CB_PLUGIN_ABI_VERSION, .name = "egress", .version = "1.0",
        .kinds = CB_KIND_EGRESS | CB_KIND_INGRESS, .start = start, .stop = stop,
    };
    CB_PLUGIN_EXPORT const cb_plugin *crossbook_plugin_entry(void) { return &descriptor; }
    """

/// A plugin that calls the host functions of ingress that follows moves with garbage and with
/// good arguments, and says what they answered (start fails with the first wrong answer).
let followSource = """
    #include "crossbook_plugin.h"
    #include <stdio.h>
    #include <stdint.h>
    static int marker;
    static int start(const cb_host_api *api, cb_host *host, void **instance, char *error, size_t size) {
        if (!CB_HOST_HAS(api, ingress_generation) || !CB_HOST_HAS(api, source_rewind)) { snprintf(error, size, "no follow API"); return CB_ERR_FAILED; }
        uint64_t from = 7;
        uint32_t ids[4], count = 9;
        struct { const char *source; uint64_t *out; uint32_t *ids; uint32_t capacity; uint32_t *count; int want; } calls[] = {
            {NULL, &from, ids, 4, &count, CB_ERR_INVALID}, {"orders", NULL, ids, 4, &count, CB_ERR_INVALID},
            {"a#b", &from, ids, 4, &count, CB_ERR_INVALID}, {"", &from, ids, 4, &count, CB_ERR_INVALID},
            {"orders", &from, NULL, 4, &count, CB_ERR_INVALID}, {"orders", &from, ids, 4, NULL, CB_ERR_INVALID},
            {"orders", &from, ids, 4, &count, CB_ERR_NOT_FOUND}, {"orders", &from, NULL, 0, &count, CB_ERR_NOT_FOUND},
        };
        for (size_t i = 0; i < sizeof calls / sizeof calls[0]; i++) {
            int rc = api->source_rewind(host, calls[i].source, 3, UINT64_MAX, calls[i].out, calls[i].ids, calls[i].capacity, calls[i].count);
            if (rc != calls[i].want) { snprintf(error, size, "source_rewind call %zu: %d, not %d", i, rc, calls[i].want); return CB_ERR_FAILED; }
        }
        if (count != 9) { snprintf(error, size, "a refused call wrote its count"); return CB_ERR_FAILED; }
        if (from != 7) { snprintf(error, size, "a refused call wrote its offset"); return CB_ERR_FAILED; }
        if (api->ingress_generation(host) != 0) { snprintf(error, size, "generation before any move"); return CB_ERR_FAILED; }
        if (api->ingress_generation(NULL) != 0) { snprintf(error, size, "generation without a host"); return CB_ERR_FAILED; }
        cb_symbol symbol = {.size = sizeof symbol};
        if (api->symbol_lookup(host, "BTC-USD", &symbol) != CB_OK || symbol.flags != 0 || symbol.shard != 0) {
            snprintf(error, size, "BTC-USD: shard %u flags %u", symbol.shard, symbol.flags); return CB_ERR_FAILED; }
        /* A caller's struct shorter than the first v1 one (16 bytes, through `flags`) is refused, untouched. */
        cb_symbol small = {.size = 12, .flags = 0x5A5A};
        if (api->symbol_lookup(host, "ETH-USD", &small) != CB_ERR_INVALID || small.flags != 0x5A5A || small.size != 12) {
            snprintf(error, size, "a 12-byte cb_symbol: flags %u size %u", small.flags, small.size); return CB_ERR_FAILED; }
        api->log(host, CB_LOG_INFO, "follow API answered as documented");
        *instance = &marker;
        return CB_OK;
    }
    static void stop(void *instance) { (void)instance; }
    static const cb_plugin descriptor = {
        .size = sizeof(cb_plugin), .abi_version = CB_PLUGIN_ABI_VERSION, .name = "follow", .version = "1.0",
        .kinds = CB_KIND_INGRESS, .start = start, .stop = stop,
    };
    CB_PLUGIN_EXPORT const cb_plugin *crossbook_plugin_entry(void) { return &descriptor; }
    """

@Suite("plugin producers and subscriptions", .serialized)
struct PluginRingTests {
    @Test("ingress that follows moves (ingress_generation, source_rewind, cb_symbol.flags): garbage arguments refused, no rewind before a move, a symbol of this engine unflagged, a short cb_symbol refused untouched")
    func followApiArguments() throws {
        let folder = temporaryFolder()
        defer { removeTree(folder) }
        _ = try compilePlugin(followSource, name: "follow", into: folder)
        let dir = testDirectory(), log = LogLines()
        let engine = try pluginEngine(dir, plugins: PluginSettings(directory: folder, load: [PluginSpec(name: "follow")]), log: log)
        defer { engine.stop() }
        #expect(log.contains("plugin follow [info]: follow API answered as documented"), "\(log.all)")
    }

    @Test("a subscription sees every shard's market data; a producer refuses unknown symbols and its malformed record is rejected with a reason")
    func subscribeAndProduce() throws {
        let folder = temporaryFolder()
        defer { removeTree(folder) }
        _ = try compilePlugin(egressSource, name: "egress", into: folder)
        let dir = testDirectory(), log = LogLines()
        let engine = try pluginEngine(dir, plugins: PluginSettings(directory: folder, load: [PluginSpec(name: "egress")]),
                                      log: log)
        defer { engine.stop() }
        let file = try EngineFile.attach(directory: dir)
        func counter(_ name: String) -> UInt64 { file.pluginCounters().first { $0.name == name }?.value ?? 0 }
        #expect(waitFor(5) { counter("egress_malformed_rejects") == 1 }, "\(log.all)")
        #expect(file.counters(0).read(.malformed) == 1)
        // The producer is a session of the engine's own, handed to the shards in process: no
        // session or ring files, no handshake through the control thread.
        #expect(log.contains("a plugin producer attached (in process)"), "\(log.all)")
        let names = (try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []
        #expect(!names.contains { $0.hasSuffix(".session") || $0.contains(".cmd.") }, "\(names)")
        // A trade on each shard (BTC-USD on shard 0, ETH-USD on shard 1) from a client process's session.
        let client = try CrossbookClient(instance: "p", directory: dir)
        for name in ["BTC-USD", "ETH-USD"] {
            let symbol = try client.symbol(name)
            #expect(client.submit(.new(NewOrder(orderId: 1, side: .sell, price: 100, quantity: 5)), symbol: symbol))
            #expect(client.submit(.new(NewOrder(orderId: 2, side: .buy, price: 100, quantity: 5)), symbol: symbol))
        }
        #expect(waitFor(5) { counter("egress_trades") == 2 }, "trades \(counter("egress_trades"))")
        // Each side's level appeared and went: four level events per symbol.
        #expect(waitFor(5) { counter("egress_levels") == 4 }, "levels \(counter("egress_levels"))")
        #expect(counter("egress_detached") == 0)
        client.close()
    }
}

/// The sample order log, and what the offline replay of it reports.
struct SampleExpectation {
    var commands = 0
    var accepted = 0
    var rejected = 0
    var trades = 0

    static func compute() throws -> SampleExpectation {
        var e = SampleExpectation()
        let text = try String(contentsOfFile: repositoryRoot + "/samples/orders.csv", encoding: .utf8)
        e.commands = text.split(separator: "\n").filter {
            let t = $0.trimmingCharacters(in: .whitespaces)
            return !t.isEmpty && !t.hasPrefix("#")
        }.count
        let replay = try run(buildDirectory + "/crossbook", ["replay", repositoryRoot + "/samples/orders.csv"])
        for line in replay.output.split(separator: "\n") {
            if line.hasPrefix("ACK,") { e.accepted += 1 }
            if line.hasPrefix("REJ,") { e.rejected += 1 }
            if line.hasPrefix("T,") { e.trades += 1 }
        }
        return e
    }
}

@Suite("template plugins", .serialized)
struct TemplatePluginTests {
    /// The C template is compiled here from plugins/template/c (make builds the same file); the
    /// Swift one is the SwiftPM product beside this test.
    func pluginSettings(_ flavour: String, path: String, folder: String) throws -> PluginSettings {
        if flavour == "c" {
            let source = try String(contentsOfFile: repositoryRoot + "/plugins/template/c/template.c", encoding: .utf8)
            _ = try compilePlugin(source, name: "template-c", into: folder)
            return PluginSettings(directory: folder, load: [PluginSpec(name: "template-c", config: ["path": path])])
        }
        return PluginSettings(directory: buildDirectory, load: [PluginSpec(name: "template-swift", config: ["path": path])])
    }

    @Test("the template plugin feeds the sample orders end to end", arguments: ["c", "swift"])
    func feedsOrders(_ flavour: String) throws {
        let expected = try SampleExpectation.compute()
        #expect(expected.commands == 23 && expected.trades > 0)
        let folder = temporaryFolder()
        defer { removeTree(folder) }
        let dir = testDirectory(), log = LogLines()
        let engine = try pluginEngine(dir, plugins: try pluginSettings(flavour, path: repositoryRoot + "/samples/orders.csv",
                                                                       folder: folder), log: log)
        let file = try EngineFile.attach(directory: dir)
        let prefix = "template_\(flavour)_"
        func counter(_ name: String) -> UInt64 { file.pluginCounters().first { $0.name == prefix + name }?.value ?? 0 }
        let done = waitFor(10) {
            counter("accepted") == UInt64(expected.accepted) && counter("rejected") == UInt64(expected.rejected)
                && counter("trades") == UInt64(2 * expected.trades)
        }
        #expect(done, "accepted \(counter("accepted")) rejected \(counter("rejected")) trades \(counter("trades")); \(log.all)")
        #expect(counter("lines") == UInt64(expected.commands))
        #expect(counter("submitted") == UInt64(expected.commands))
        #expect(counter("bad_lines") == 0)
        // The shards sequenced exactly those commands and matched the same trades as the offline replay.
        #expect(file.counters(0).read(.commands) + file.counters(1).read(.commands) == UInt64(expected.commands))
        #expect(file.counters(0).read(.trades) + file.counters(1).read(.trades) == UInt64(expected.trades))
        #expect(waitFor(3) { file.pluginStatuses().first?.message.hasPrefix("read all of") == true })
        engine.stop()
    }

    @Test("the SDK outside the repository: make install-sdk puts the header and crossbook-plugin.pc under a prefix; the template, copied to a folder of its own, builds with pkg-config's flags as plugins/README.md says, loads from there and feeds the sample orders; an array in a plugin's config comes back joined by commas")
    func sdkOutsideTheRepository() throws {
        let root = temporaryFolder()
        defer { removeTree(root) }
        let prefix = root + "/prefix", work = root + "/my-plugin"
        let installed = try run("/usr/bin/make", ["-C", repositoryRoot, "--no-print-directory", "install-sdk", "PREFIX=\(prefix)"])
        #expect(installed.status == 0, "\(installed.output)")
        #expect(FileManager.default.fileExists(atPath: prefix + "/include/crossbook/crossbook_plugin.h"))
        mkdir(work, 0o755)
        try FileManager.default.copyItem(atPath: repositoryRoot + "/plugins/template/c/template.c", toPath: work + "/my.c")
        // The README's line, in the plugin's own folder, with only the installed SDK to go by.
        let build = "cd '\(work)' && PKG_CONFIG_PATH='\(prefix)/lib/pkgconfig' cc -std=c11 -shared -fPIC -O2 $(PKG_CONFIG_PATH='\(prefix)/lib/pkgconfig' pkg-config --cflags crossbook-plugin) my.c -o libcrossbook-template-c.so -lpthread"
        let built = try run("/bin/sh", ["-c", build])
        #expect(built.status == 0, "\(built.output)")
        let flags = try run("/bin/sh", ["-c", "PKG_CONFIG_PATH='\(prefix)/lib/pkgconfig' pkg-config --cflags crossbook-plugin"])
        #expect(flags.output.contains("-I\(prefix)/include/crossbook"), "\(flags.output)")
        let version = try run("/bin/sh", ["-c", "PKG_CONFIG_PATH='\(prefix)/lib/pkgconfig' pkg-config --modversion crossbook-plugin"])
        #expect(version.output.trimmingCharacters(in: .whitespacesAndNewlines) == crossbookVersion)
        chmod(work, 0o755)

        let expected = try SampleExpectation.compute()
        let dir = testDirectory(), log = LogLines()
        let engine = try pluginEngine(dir, plugins: PluginSettings(directory: work, load: [
            PluginSpec(name: "template-c", config: ["path": repositoryRoot + "/samples/orders.csv"]),
        ]), log: log)
        defer { engine.stop() }
        let file = try EngineFile.attach(directory: dir)
        #expect(waitFor(10) { file.pluginCounters().first { $0.name == "template_c_submitted" }?.value == UInt64(expected.commands) },
                "\(log.all)")

        // Arrays in a plugin's config: one text, items joined by commas.
        let parsed = try EngineConfig(toml: """
            [[symbols]]
            name = "AAA"
            [plugins]
            [[plugins.load]]
            name = "template-c"
            config = { path = "/dev/null", partitions = [0, 1, 2], topics = ["a", "b"] }
            """, source: "arrays.toml")
        #expect(parsed.plugins?.first?.config["partitions"] == "0,1,2")
        #expect(parsed.plugins?.first?.config["topics"] == "a,b")
    }

    @Test("the template plugin reads a named pipe as writers come and go; a bad line makes it degraded", arguments: ["c", "swift"])
    func readsPipe(_ flavour: String) throws {
        let folder = temporaryFolder()
        defer { removeTree(folder) }
        let fifo = folder + "/orders.fifo"
        #expect(mkfifo(fifo, 0o600) == 0)
        let dir = testDirectory(), log = LogLines()
        let engine = try pluginEngine(dir, plugins: try pluginSettings(flavour, path: fifo, folder: folder), log: log)
        defer { engine.stop() }
        let file = try EngineFile.attach(directory: dir)
        let prefix = "template_\(flavour)_"
        func counter(_ name: String) -> UInt64 { file.pluginCounters().first { $0.name == prefix + name }?.value ?? 0 }
        for writer in 0..<2 {
            let fd = open(fifo, O_WRONLY)
            #expect(fd >= 0)
            var text = ""
            for k in 1...50 { text += "N,SOL-USD,\(writer * 100 + k),1,B,LMT,\(100 + k),1,GTC\n" }
            if writer == 1 { text += "N,SOL-USD,not-a-number\n" }
            _ = text.withCString { write(fd, $0, strlen($0)) }
            close(fd)
        }
        #expect(waitFor(10) { counter("accepted") == 100 }, "\(counter("accepted")) accepted; \(log.all)")
        #expect(counter("bad_lines") == 1)
        #expect(waitFor(3) { file.pluginStatuses().first?.health == 1 })
        #expect(file.pluginStatuses().first?.healthName == "degraded")
    }

    @Test("subscribe_output live only (UINT64_MAX): every drop copy from then on, with the owner's session and account; without egress kind it is refused")
    func dropCopiesLiveOnly() throws {
        let folder = temporaryFolder()
        defer { removeTree(folder) }
        let source = """
            #include "crossbook_plugin.h"
            #include <pthread.h>
            #include <stdio.h>
            static const cb_host_api *A; static cb_host *H;
            static cb_subscription *E, *M; static pthread_t T; static int stopping;
            static uint64_t *copies, *trades, *accounted;
            static void *run(void *arg) {
                (void)arg;
                cb_execution x[64];
                while (!__atomic_load_n(&stopping, __ATOMIC_ACQUIRE)) {
                    int n = A->subscription_poll(E, (cb_market_event *)x, 64);
                    for (int k = 0; k < n; k++) {
                        __atomic_fetch_add(copies, 1, __ATOMIC_RELAXED);
                        if (x[k].type == CB_REPORT_TRADE) __atomic_fetch_add(trades, 1, __ATOMIC_RELAXED);
                        if (x[k].session != 0 && x[k].account == 7) __atomic_fetch_add(accounted, 1, __ATOMIC_RELAXED);
                    }
                }
                return NULL;
            }
            static int start(const cb_host_api *api, cb_host *host, void **instance, char *error, size_t size) {
                A = api; H = host;
                int rc = api->subscribe_output(host, 0, UINT64_MAX, &E, &M);
                if (rc != CB_OK) { snprintf(error, size, "subscribe_output: %d", rc); return rc; }
                api->counter_register(host, "dc_copies", "drop copies", CB_METRIC_COUNTER, &copies);
                api->counter_register(host, "dc_trades", "trade drop copies", CB_METRIC_COUNTER, &trades);
                api->counter_register(host, "dc_accounted", "with session and account 7", CB_METRIC_COUNTER, &accounted);
                pthread_create(&T, NULL, run, NULL);
                *instance = &T;
                return CB_OK;
            }
            static void stop(void *instance) { (void)instance; __atomic_store_n(&stopping, 1, __ATOMIC_RELEASE); pthread_join(T, NULL); }
            static const cb_plugin descriptor = {
                .size = sizeof(cb_plugin), .abi_version = CB_PLUGIN_ABI_VERSION, .name = PLUGIN_NAME, .version = "1.0",
                .kinds = KINDS, .start = start, .stop = stop,
            };
            CB_PLUGIN_EXPORT const cb_plugin *crossbook_plugin_entry(void) { return &descriptor; }
            """
        _ = try compilePlugin(source, name: "dropcopy", into: folder, defines: ["-DPLUGIN_NAME=\"dropcopy\"", "-DKINDS=CB_KIND_EGRESS"])
        let dir = testDirectory(), log = LogLines()
        let engine = try pluginEngine(dir, plugins: PluginSettings(directory: folder, load: [PluginSpec(name: "dropcopy")]), log: log)
        defer { engine.stop() }
        let file = try EngineFile.attach(directory: dir)
        func counter(_ name: String) -> UInt64 { file.pluginCounters().first { $0.name == name }?.value ?? 0 }
        let client = try CrossbookClient(instance: "p", directory: dir)
        let btc = try client.symbol("BTC-USD")  // shard 0
        #expect(client.submit(.new(NewOrder(orderId: 1, account: 7, side: .sell, price: 100, quantity: 5)), symbol: btc))
        #expect(client.submit(.new(NewOrder(orderId: 2, account: 7, side: .buy, price: 100, quantity: 5)), symbol: btc))
        // Two accepted and two trade reports (maker's and taker's), each with its session and account.
        #expect(waitFor(5) { counter("dc_copies") == 4 }, "drop copies \(counter("dc_copies")); \(log.all.suffix(5))")
        #expect(counter("dc_trades") == 2)
        #expect(counter("dc_accounted") == 4)
        client.close()

        // A plugin that is not of kind egress gets no drop copies.
        _ = try compilePlugin(source, name: "notegress", into: folder, defines: ["-DPLUGIN_NAME=\"notegress\"", "-DKINDS=CB_KIND_INGRESS"])
        let refused = refusal(PluginSettings(directory: folder, load: [PluginSpec(name: "notegress")]))
        #expect(refused.contains("start failed: CB_ERR_UNSUPPORTED"), "\(refused)")
    }
}
