// The replay text format: order logs, `crossbook submit`, the template plugins' input.
import FuzzSupport
import Wire

let samples = [
    "N,BTC-USD,1,7,S,LMT,10000,5,GTC", "N,BTC-USD,2,8,B,MKT,,3,IOC", "C,BTC-USD,1", "R,ETH-USD,3,2001,1",
    "N,X,1,1,B,LMT,10,5,FOK,cancel-both", "# comment", "",
]


@_cdecl("LLVMFuzzerInitialize")
public func fuzzInitialize(_ argc: UnsafeMutablePointer<Int32>?, _ argv: UnsafeMutableRawPointer?) -> Int32 {
    writeSeedsIfAsked { samples.map { Array($0.utf8) } }
    return 0
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOne(_ data: UnsafePointer<UInt8>?, _ count: Int) -> Int32 {
    let text = String(decoding: input(data, count), as: UTF8.self)
    for line in text.split(separator: "\n", omittingEmptySubsequences: false) {
        if let parsed = (try? TextCodec.parse(line)) ?? nil {
            _ = parsed.symbol.utf8.count
        }
    }
    return 0
}
