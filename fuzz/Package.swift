// swift-tools-version:6.1
// Coverage-guided fuzz targets (libFuzzer, in the Swift toolchain) for the decoders of input
// another party controls. Build: `swift build -c release --sanitize=fuzzer` here; `make test`
// runs each briefly over its committed corpus, `make fuzz` for long. See fuzz/README.md.
import Foundation
import PackageDescription

// SwiftPM names a path dependency after its folder, which is whatever the clone was called.
let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
    .lastPathComponent

let package = Package(
    name: "crossbook-fuzz",
    dependencies: [.package(path: "..")],
    targets: [
        .target(name: "FuzzSupport"),
        .executableTarget(name: "fuzz-command-record", dependencies: ["FuzzSupport", .product(name: "Wire", package: root)]),
        .executableTarget(name: "fuzz-text-codec", dependencies: ["FuzzSupport", .product(name: "Wire", package: root)]),
        .executableTarget(name: "fuzz-journal-scan", dependencies: ["FuzzSupport", .product(name: "Journal", package: root)]),
        .executableTarget(name: "fuzz-book-snapshot", dependencies: ["FuzzSupport", .product(name: "OrderBook", package: root)]),
        .executableTarget(name: "fuzz-admin-record", dependencies: ["FuzzSupport", .product(name: "Wire", package: root)]),
        .executableTarget(name: "fuzz-config", dependencies: ["FuzzSupport", .product(name: "CrossbookConfig", package: root)]),
        .executableTarget(name: "fuzz-replication-frame", dependencies: ["FuzzSupport", .product(name: "Engine", package: root)]),
        .executableTarget(name: "fuzz-transfer-blob", dependencies: ["FuzzSupport", .product(name: "Engine", package: root)]),
        .executableTarget(name: "fuzz-shard-snapshot", dependencies: ["FuzzSupport", .product(name: "Engine", package: root)]),
    ]
)
