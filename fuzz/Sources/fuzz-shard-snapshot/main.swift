// A shard's snapshot body (after its journal binding): the books of its symbols, then its admin
// state (listings, ingress positions, streams). It comes from a snapshot store (a directory or
// Redis another process can write), from a seed staged on disk, or from a primary seeding its
// standby. Restoring never traps; what restored is written back and must restore again.
@_spi(Fuzz) import Engine
import FuzzSupport

@_cdecl("LLVMFuzzerInitialize")
public func fuzzInitialize(_ argc: UnsafeMutablePointer<Int32>?, _ argv: UnsafeMutableRawPointer?) -> Int32 {
    writeSeedsIfAsked { FuzzEntryPoints.shardSnapshotSeeds() }
    return 0
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOne(_ data: UnsafePointer<UInt8>?, _ count: Int) -> Int32 {
    FuzzEntryPoints.shardSnapshot(Array(input(data, count)))
    return 0
}
