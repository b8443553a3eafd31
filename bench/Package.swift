// swift-tools-version:6.1
// Crossbook's benchmarks (ordo-one/benchmark), kept in their own package so that `make test`
// does not build the benchmark framework. Run them with `make bench` from the repository root.
import Foundation
import PackageDescription

// SwiftPM names a path dependency after its folder, which is whatever the clone was called.
let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
    .lastPathComponent

let package = Package(
    name: "crossbook-bench",
    platforms: [.macOS(.v13)],
    dependencies: [
        .package(path: ".."),
        .package(url: "https://github.com/ordo-one/benchmark", from: "1.38.1", traits: ["MallocInterposer"]),
    ],
    targets: [
        // The floors of R1/R2 in plain C at -O3: compared with, in the same run.
        .target(name: "RingFloor", path: "Sources/RingFloor", cSettings: [.unsafeFlags(["-O3"])]),
        .executableTarget(
            name: "RingBenchmarks",
            dependencies: [
                "RingFloor",
                .product(name: "Benchmark", package: "benchmark"),
                .product(name: "SharedMemory", package: root),
            ],
            path: "Benchmarks/RingBenchmarks",
            plugins: [.plugin(name: "BenchmarkPlugin", package: "benchmark")]
        ),
        .executableTarget(
            name: "EngineBenchmarks",
            dependencies: [
                .product(name: "Benchmark", package: "benchmark"),
                .product(name: "Engine", package: root),
                .product(name: "CrossbookClient", package: root),
                .product(name: "OrderBook", package: root),
                .product(name: "Workloads", package: root),
                .product(name: "SharedMemory", package: root),
            ],
            path: "Benchmarks/EngineBenchmarks",
            plugins: [.plugin(name: "BenchmarkPlugin", package: "benchmark")]
        ),
        .executableTarget(
            name: "OrderBookBenchmarks",
            dependencies: [
                .product(name: "Benchmark", package: "benchmark"),
                .product(name: "OrderBook", package: root),
                .product(name: "Workloads", package: root),
            ],
            path: "Benchmarks/OrderBookBenchmarks",
            plugins: [.plugin(name: "BenchmarkPlugin", package: "benchmark")]
        ),
    ]
)
