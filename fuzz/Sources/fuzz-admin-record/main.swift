// Sequenced admin records, as the journal holds them (another build, a damaged or forged file):
// decoding never traps, and whatever decodes survives encode + decode unchanged.
import FuzzSupport
import Wire

let samples: [AdminCommand] = [
    .epoch(7), .ingressPosition(source: "orders", partition: 3, offset: 1 << 40), .freeze(symbolId: 1), .thaw(symbolId: 1),
    .exportBook(symbolId: 2, book: [1, 2, 3, 4]), .importBook(symbolId: 2, book: []), .drop(symbolId: 9),
]

@_cdecl("LLVMFuzzerInitialize")
public func fuzzInitialize(_ argc: UnsafeMutablePointer<Int32>?, _ argv: UnsafeMutableRawPointer?) -> Int32 {
    writeSeedsIfAsked { samples.map(AdminRecord.encode) }
    return 0
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOne(_ data: UnsafePointer<UInt8>?, _ count: Int) -> Int32 {
    guard let command = try? AdminRecord.decode(input(data, count)) else { return 0 }
    let again = AdminRecord.encode(command)
    guard (try? again.withUnsafeBytes { try AdminRecord.decode($0) }) == command else {
        fatalError("an admin record that decodes does not survive encode + decode: \(command)")
    }
    _ = AdminRecord.describe(command)
    return 0
}
