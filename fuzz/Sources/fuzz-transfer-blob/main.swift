// Transfer blobs (a symbol's book moving between engines), as the snapshot store gives them to
// the target: anyone who can write that Redis can write one. The harness fixes the trailing
// CRC32C of what it is given, so that the decoding behind it is what is fuzzed. Decoding never
// traps; what decodes survives encode + decode; the book is rewritten for the target's sessions
// and restored into an empty book, as the target takes it in.
@_spi(Fuzz) import Engine
import FuzzSupport

@_cdecl("LLVMFuzzerInitialize")
public func fuzzInitialize(_ argc: UnsafeMutablePointer<Int32>?, _ argv: UnsafeMutableRawPointer?) -> Int32 {
    writeSeedsIfAsked { FuzzEntryPoints.transferBlobSeeds() }
    return 0
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOne(_ data: UnsafePointer<UInt8>?, _ count: Int) -> Int32 {
    var bytes = Array(input(data, count))
    FuzzEntryPoints.fixTransferBlobCRC(&bytes)
    FuzzEntryPoints.transferBlob(bytes)
    return 0
}
