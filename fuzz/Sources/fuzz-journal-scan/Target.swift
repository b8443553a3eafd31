// A journal segment as recovery reads it: a file on disk that anything (a failing disk, an
// operator, an attacker with the data directory) may have changed. The input is the segment.
import FuzzSupport
import Foundation
import Glibc
import Journal

let directory: String = {
    let dir = NSTemporaryDirectory() + "crossbook-fuzz-journal-\(getpid())"
    mkdir(dir, 0o700)
    atexit { _ = try? FileManager.default.removeItem(atPath: NSTemporaryDirectory() + "crossbook-fuzz-journal-\(getpid())") }
    return dir
}()
let segment = directory + "/" + JournalLayout.segmentName(shard: 0, firstSequence: 1)

/// A real journal: three batches written by the writer, in one 16 KiB segment.
func seeds() -> [[UInt8]] {
    let dir = NSTemporaryDirectory() + "crossbook-fuzz-seed-\(getpid())"
    mkdir(dir, 0o700)
    defer { try? FileManager.default.removeItem(atPath: dir) }
    guard let writer = try? JournalWriter(config: JournalConfig(directory: dir, shard: 0, segmentSize: 16 << 10, bufferSize: 8 << 10),
                                          lastSequence: 0) else { return [] }
    var sequence: UInt64 = 0
    for batch in 0..<3 {
        for _ in 0..<(5 + batch * 3) {
            sequence += 1
            let payload = [UInt8](repeating: UInt8(truncatingIfNeeded: sequence), count: 80)
            _ = try? payload.withUnsafeBytes { try writer.append(type: 1, sequence: sequence, payload: $0) }
        }
        try? writer.flush()
    }
    guard let bytes = FileManager.default.contents(atPath: dir + "/" + JournalLayout.segmentName(shard: 0, firstSequence: 1)) else { return [] }
    return [Array(bytes)]
}


@_cdecl("LLVMFuzzerInitialize")
public func fuzzInitialize(_ argc: UnsafeMutablePointer<Int32>?, _ argv: UnsafeMutableRawPointer?) -> Int32 {
    writeSeedsIfAsked { seeds() }
    return 0
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOne(_ data: UnsafePointer<UInt8>?, _ count: Int) -> Int32 {
    let bytes = input(data, count)
    for repair in [false, true] {
        let fd = open(segment, O_RDWR | O_CREAT | O_TRUNC, 0o600)
        if count > 0 { _ = write(fd, bytes.baseAddress!, count) }
        close(fd)
        var visited = 0
        _ = try? JournalReader.scan(directory: directory, shard: 0, repair: repair) { _, _, payload in visited += payload.count }
        _ = try? JournalReader.record(directory: directory, shard: 0, sequence: 2)
    }
    return 0
}
