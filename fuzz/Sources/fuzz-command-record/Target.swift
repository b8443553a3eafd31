// The 64-byte command record, as a client writes it into its ring: every byte is the client's.
import FuzzSupport
import OrderBook
import Wire

func seeds() -> [[UInt8]] {
    let commands: [BookCommand] = [
        .new(NewOrder(orderId: 1, side: .buy, price: 100, quantity: 5)),
        .new(NewOrder(orderId: 2, side: .sell, type: .market, price: 0, quantity: 3, timeInForce: .ioc)),
        .cancel(CancelOrder(orderId: 7)),
        .replace(ReplaceOrder(orderId: 9, price: 101, quantity: 2)),
    ]
    return commands.map { command in
        var bytes = [UInt8](repeating: 0, count: CommandRecord.size)
        bytes.withUnsafeMutableBytes { CommandRecord.encode(CommandRecord.Decoded(symbolId: 1, command: command, clientTime: 42), to: $0.baseAddress!) }
        return bytes
    }
}


@_cdecl("LLVMFuzzerInitialize")
public func fuzzInitialize(_ argc: UnsafeMutablePointer<Int32>?, _ argv: UnsafeMutableRawPointer?) -> Int32 {
    writeSeedsIfAsked { seeds() }
    return 0
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOne(_ data: UnsafePointer<UInt8>?, _ count: Int) -> Int32 {
    let bytes = input(data, count)
    // Each whole record in the input, as the shard reads a ring slot (aligned copy first).
    var record = [UInt8](repeating: 0, count: CommandRecord.size)
    var offset = 0
    while offset + CommandRecord.size <= bytes.count {
        record.withUnsafeMutableBytes { $0.copyMemory(from: UnsafeRawBufferPointer(rebasing: bytes[offset..<(offset + CommandRecord.size)])) }
        if let decoded = try? record.withUnsafeBytes({ try CommandRecord.decode($0.baseAddress!) }) {
            // What decodes must encode back to a record that decodes the same.
            var again = [UInt8](repeating: 0, count: CommandRecord.size)
            again.withUnsafeMutableBytes { CommandRecord.encode(decoded, to: $0.baseAddress!) }
            let twice = try? again.withUnsafeBytes { try CommandRecord.decode($0.baseAddress!) }
            precondition(twice == decoded, "a decoded record does not survive encode + decode")
        }
        offset += CommandRecord.size
    }
    return 0
}
