// What every fuzz target shares. SwiftPM builds the targets with libFuzzer's own main
// (`--sanitize=fuzzer`); each target exports LLVMFuzzerTestOneInput, and LLVMFuzzerInitialize to
// write its seed corpus when asked.
import Foundation

/// With CROSSBOOK_FUZZ_SEEDS=DIR set, writes `seeds` there (how the committed corpus was made)
/// and exits; otherwise returns.
public func writeSeedsIfAsked(_ seeds: () -> [[UInt8]]) {
    guard let dir = ProcessInfo.processInfo.environment["CROSSBOOK_FUZZ_SEEDS"] else { return }
    try? FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    for (i, seed) in seeds().enumerated() {
        FileManager.default.createFile(atPath: dir + "/seed-\(i)", contents: Data(seed))
    }
    exit(0)
}

/// The input as a buffer (libFuzzer may pass a null pointer for an empty input).
@inline(__always)
public func input(_ data: UnsafePointer<UInt8>?, _ count: Int) -> UnsafeRawBufferPointer {
    UnsafeRawBufferPointer(start: count > 0 ? UnsafeRawPointer(data) : nil, count: count)
}
