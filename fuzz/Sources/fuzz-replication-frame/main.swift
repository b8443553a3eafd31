// Replication frames, as a peer sends them (a primary to its standby, a standby to its primary;
// without a secret anyone who can reach the port is a peer). The input is the frame's kind
// (u16, little-endian), then its body: decoding never traps; what decodes survives encode +
// decode unchanged; a records frame's bytes are split into journal records as the standby's
// receiver does it, and a seed's parsed as a seed.
@_spi(Fuzz) import Engine
import FuzzSupport

@_cdecl("LLVMFuzzerInitialize")
public func fuzzInitialize(_ argc: UnsafeMutablePointer<Int32>?, _ argv: UnsafeMutableRawPointer?) -> Int32 {
    writeSeedsIfAsked { FuzzEntryPoints.replicationFrameSeeds() }
    return 0
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOne(_ data: UnsafePointer<UInt8>?, _ count: Int) -> Int32 {
    let bytes = input(data, count)
    guard bytes.count >= 2 else { return 0 }
    let kind = UInt16(bytes[0]) | UInt16(bytes[1]) << 8
    FuzzEntryPoints.replicationFrame(kind: kind, body: UnsafeRawBufferPointer(rebasing: bytes[2...]))
    return 0
}
