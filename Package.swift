// swift-tools-version:6.1
// Crossbook: a matching engine for spot exchanges. See README.md for the map.
import PackageDescription

let package = Package(
    name: "crossbook",
    products: [
        .library(name: "OrderBook", targets: ["OrderBook"]),
        .library(name: "Wire", targets: ["Wire"]),
        .library(name: "SharedMemory", targets: ["SharedMemory"]),
        .library(name: "Engine", targets: ["Engine"]),
        .library(name: "Journal", targets: ["Journal"]),
        .library(name: "CrossbookClient", targets: ["CrossbookClient"]),
        .library(name: "Workloads", targets: ["Workloads"]),
        .library(name: "CrossbookConfig", targets: ["CrossbookConfig"]),
        .executable(name: "crossbook", targets: ["crossbook"]),
        // Plugins: dynamic libraries the engine loads at start (plugins/README.md). They share
        // only C/CPluginABI/include/crossbook_plugin.h with the engine.
        .library(name: "crossbook-snapshot-file", type: .dynamic, targets: ["SnapshotFilePlugin"]),
        .library(name: "crossbook-metrics-prometheus", type: .dynamic, targets: ["MetricsPrometheusPlugin"]),
        .library(name: "crossbook-template-swift", type: .dynamic, targets: ["TemplateSwiftPlugin"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/LebJe/TOMLKit", from: "0.6.0"),
        .package(url: "https://github.com/HdrHistogram/hdrhistogram-swift", from: "0.2.0"),
        .package(url: "https://github.com/apple/swift-system", from: "1.4.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.5.0"),
    ],
    targets: [
        // Thin C, one small target per concern (C/): what Swift cannot express well. Only the
        // targets that need liburing and libnuma link them: a plugin or a client built on the
        // ABI header or the ring primitives pulls in neither.
        // The plugin ABI: one header, links nothing.
        .target(name: "CPluginABI", path: "C/CPluginABI"),
        // Atomics, futex, CPU affinity, thread facts, latency histograms, SIGBUS guards.
        .target(name: "CSync", path: "C/CSync"),
        .target(name: "CAuth", path: "C/CAuth", linkerSettings: [.linkedLibrary("crypto")]),
        // CRC32C (SSE4.2 where the CPU has it).
        .target(name: "CCRC32C", path: "C/CCRC32C"),
        // The journal's io_uring (liburing).
        .target(name: "CUring", dependencies: ["CSync"], path: "C/CUring", linkerSettings: [.linkedLibrary("uring")]),
        // NUMA placement of shard threads (libnuma).
        .target(name: "CNuma", path: "C/CNuma", linkerSettings: [.linkedLibrary("numa")]),
        // Host facts for `crossbook host` (liburing and libnuma probed).
        .target(name: "CHost", path: "C/CHost", linkerSettings: [.linkedLibrary("uring"), .linkedLibrary("numa")]),
        // Software prefetch for the book's batch path: one header, links nothing.
        .target(name: "CPrefetch", path: "C/CPrefetch"),
        // The book and its rules: pure Swift, no OS, no Foundation.
        .target(name: "OrderBook", dependencies: ["CPrefetch"]),
        // 64-byte command records and the replay text codec.
        .target(name: "Wire", dependencies: ["OrderBook"]),
        // Rings in shared-memory files, between processes.
        .target(name: "SharedMemory", dependencies: ["CSync", "CPluginABI", .product(name: "SystemPackage", package: "swift-system")]),
        // Journal segments, io_uring group commit, recovery scan (the clock from SharedMemory).
        .target(name: "Journal", dependencies: ["CSync", "CCRC32C", "CUring", "SharedMemory", .product(name: "SystemPackage", package: "swift-system")]),
        // Shards, sequencing, sessions, the plugin host. A shard's state is a value on its own
        // thread (Sources/Engine/Shard/ShardState.swift): exclusivity is checked at compile time,
        // with no unsafe flags.
        .target(name: "Engine", dependencies: ["OrderBook", "CPrefetch", "Wire", "SharedMemory", "Journal", "CSync", "CAuth", "CCRC32C", "CNuma", "CPluginABI", .product(name: "SystemPackage", package: "swift-system")]),
        // For other processes: attach to an engine, submit, read reports.
        .target(name: "CrossbookClient", dependencies: ["OrderBook", "Wire", "SharedMemory", "CSync"]),
        // The seeded benchmark workloads of bench/README.md, shared by tests and benchmarks.
        .target(name: "Workloads", dependencies: ["OrderBook", "CPrefetch"]),
        // The configuration file (TOML), a library so that the fuzz targets can load configs.
        .target(name: "CrossbookConfig", dependencies: ["CSync", "Engine", "OrderBook", .product(name: "TOMLKit", package: "TOMLKit")]),
        .executableTarget(
            name: "crossbook",
            dependencies: [
                "OrderBook", "Wire", "Workloads", "CSync", "CHost", "CNuma", "SharedMemory", "Engine", "CrossbookClient", "Journal", "CrossbookConfig",
                .product(name: "Histogram", package: "hdrhistogram-swift"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "TOMLKit", package: "TOMLKit"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .target(name: "SnapshotFilePlugin", dependencies: ["CPluginABI", "CCRC32C"], path: "plugins/snapshot-file",
                sources: ["SnapshotFilePlugin.swift"]),
        .target(name: "MetricsPrometheusPlugin", dependencies: ["CPluginABI", "CSync"], path: "plugins/metrics-prometheus",
                exclude: ["README.md", "grafana-dashboard.json", "prometheus-alerts.yml", "prometheus-alerts-test.yml"],
                sources: ["MetricsPrometheusPlugin.swift"]),
        .target(name: "TemplateSwiftPlugin", dependencies: ["CPluginABI", "CSync"], path: "plugins/template/swift"),
        // Helpers shared by the test targets (not a test target itself).
        .target(name: "TestSupport", path: "Tests/TestSupport"),
        .testTarget(name: "OrderBookTests", dependencies: ["OrderBook", "Workloads"]),
        .testTarget(name: "WireTests", dependencies: ["Wire", "OrderBook", "CCRC32C", "CHost", "CNuma"]),
        .testTarget(name: "SharedMemoryTests", dependencies: ["SharedMemory", "Wire", "OrderBook", "CSync", "crossbook"]),
        .testTarget(name: "CrossbookCLITests", dependencies: ["crossbook", "Journal", "SharedMemory"]),
        .testTarget(name: "JournalTests", dependencies: ["Journal", "Workloads", "TestSupport", "CCRC32C", "CUring", "CSync"]),
        .testTarget(name: "EngineTests", dependencies: ["Engine", "CrossbookClient", "SharedMemory", "Wire", "OrderBook", "crossbook", "TestSupport", "CCRC32C", "Journal", "Workloads"]),
        .testTarget(name: "PluginTests", dependencies: ["Engine", "CrossbookClient", "SharedMemory", "Wire", "OrderBook", "CPluginABI", "CSync", "crossbook", "TestSupport", "CrossbookConfig"]),
    ]
)
