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
        // only CShims/include/crossbook_plugin.h with the engine.
        .library(name: "crossbook-snapshot-file", type: .dynamic, targets: ["SnapshotFilePlugin"]),
        .library(name: "crossbook-metrics-prometheus", type: .dynamic, targets: ["MetricsPrometheusPlugin"]),
        .library(name: "crossbook-template-swift", type: .dynamic, targets: ["TemplateSwiftPlugin"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/LebJe/TOMLKit", from: "0.6.0"),
        .package(url: "https://github.com/HdrHistogram/hdrhistogram-swift", from: "0.2.0"),
    ],
    targets: [
        // Thin C: what Swift cannot express well. Linked against liburing and libnuma from the
        // start so that every build proves the system libraries are there.
        .target(
            name: "CShims",
            path: "CShims",
            linkerSettings: [.linkedLibrary("uring"), .linkedLibrary("numa")]
        ),
        // The book and its rules: pure Swift, no OS, no Foundation.
        .target(name: "OrderBook"),
        // 64-byte command records and the replay text codec.
        .target(name: "Wire", dependencies: ["OrderBook"]),
        // Rings in shared-memory files, between processes.
        .target(name: "SharedMemory", dependencies: ["CShims"]),
        // Journal segments, io_uring group commit, recovery scan (the clock from SharedMemory).
        .target(name: "Journal", dependencies: ["CShims", "SharedMemory"]),
        // Shards, sequencing, sessions, the plugin host. A shard's state is a value on its own
        // thread (Sources/Engine/Shard/ShardState.swift): exclusivity is checked at compile time,
        // with no unsafe flags.
        .target(name: "Engine", dependencies: ["OrderBook", "Wire", "SharedMemory", "Journal", "CShims"]),
        // For other processes: attach to an engine, submit, read reports.
        .target(name: "CrossbookClient", dependencies: ["OrderBook", "Wire", "SharedMemory", "CShims"]),
        // The seeded benchmark workloads of bench/README.md, shared by tests and benchmarks.
        .target(name: "Workloads", dependencies: ["OrderBook"]),
        // The configuration file (TOML), a library so that the fuzz targets can load configs.
        .target(name: "CrossbookConfig", dependencies: ["Engine", "OrderBook", .product(name: "TOMLKit", package: "TOMLKit")]),
        .executableTarget(
            name: "crossbook",
            dependencies: [
                "OrderBook", "Wire", "Workloads", "CShims", "SharedMemory", "Engine", "CrossbookClient", "Journal", "CrossbookConfig",
                .product(name: "Histogram", package: "hdrhistogram-swift"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "TOMLKit", package: "TOMLKit"),
            ]
        ),
        .target(name: "SnapshotFilePlugin", dependencies: ["CShims"], path: "plugins/snapshot-file",
                sources: ["SnapshotFilePlugin.swift"]),
        .target(name: "MetricsPrometheusPlugin", dependencies: ["CShims"], path: "plugins/metrics-prometheus",
                exclude: ["README.md", "grafana-dashboard.json", "prometheus-alerts.yml"],
                sources: ["MetricsPrometheusPlugin.swift"]),
        .target(name: "TemplateSwiftPlugin", dependencies: ["CShims"], path: "plugins/template/swift"),
        // Helpers shared by the test targets (not a test target itself).
        .target(name: "TestSupport", path: "Tests/TestSupport"),
        .testTarget(name: "OrderBookTests", dependencies: ["OrderBook", "Workloads"]),
        .testTarget(name: "WireTests", dependencies: ["Wire", "OrderBook", "CShims"]),
        .testTarget(name: "SharedMemoryTests", dependencies: ["SharedMemory", "Wire", "OrderBook", "CShims", "crossbook"]),
        .testTarget(name: "CrossbookCLITests", dependencies: ["crossbook", "Journal", "SharedMemory"]),
        .testTarget(name: "JournalTests", dependencies: ["Journal", "Workloads", "TestSupport", "CShims"]),
        .testTarget(name: "EngineTests", dependencies: ["Engine", "CrossbookClient", "SharedMemory", "Wire", "OrderBook", "crossbook", "TestSupport"]),
        .testTarget(name: "PluginTests", dependencies: ["Engine", "CrossbookClient", "SharedMemory", "Wire", "OrderBook", "CShims", "crossbook", "TestSupport"]),
    ]
)
