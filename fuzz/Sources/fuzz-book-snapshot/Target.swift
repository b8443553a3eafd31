// A book's snapshot bytes, as a snapshot store hands them back at recovery. The harness fixes
// the trailing checksum of what it is given, so that the validation behind it is what is fuzzed.
import FuzzSupport
import OrderBook

let spec = SymbolSpec(name: "BTC-USD", id: 1, tickSize: 1, lotSize: 1, minPrice: 1, maxPrice: 1_000_000, maxOrderQuantity: 1_000_000)
let capacity = BookCapacity(orders: 64, levels: 16)

struct Silent: BookEventSink {
    mutating func on(_ event: BookEvent) {}
}

func seeds() -> [[UInt8]] {
    guard var book = try? OrderBook(spec: spec, capacity: capacity) else { return [] }
    var sink = Silent()
    for id in 1...20 {
        book.apply(.new(NewOrder(orderId: OrderId(id), side: id % 2 == 0 ? .buy : .sell,
                                 price: 100 + Price(id % 5) * (id % 2 == 0 ? -1 : 1), quantity: Quantity(id))), to: &sink)
    }
    return [book.snapshot()]
}



@_cdecl("LLVMFuzzerInitialize")
public func fuzzInitialize(_ argc: UnsafeMutablePointer<Int32>?, _ argv: UnsafeMutableRawPointer?) -> Int32 {
    writeSeedsIfAsked { seeds() }
    return 0
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOne(_ data: UnsafePointer<UInt8>?, _ count: Int) -> Int32 {
    var bytes = Array(input(data, count))
    if bytes.count >= 8 {
        // The checksum of the version the bytes say (1 or 2; any other is refused before it).
        let version = bytes.count >= 12 ? UInt32(bytes[8]) | UInt32(bytes[9]) << 8 | UInt32(bytes[10]) << 16 | UInt32(bytes[11]) << 24 : 2
        let sum = bytes.withUnsafeBytes { BookSnapshotLayout.checksum(UnsafeRawBufferPointer(rebasing: $0[..<(bytes.count - 8)]), version: version) }
        withUnsafeBytes(of: sum.littleEndian) { bytes.replaceSubrange((bytes.count - 8)..., with: $0) }
    }
    if var book = try? OrderBook.restoring(spec: spec, capacity: capacity, from: bytes) {
        // A restored book must work: match against it.
        var sink = Silent()
        book.apply(.new(NewOrder(orderId: 1 << 40, side: .buy, type: .market, price: 0, quantity: 1_000, timeInForce: .ioc)), to: &sink)
        book.apply(.new(NewOrder(orderId: (1 << 40) + 1, side: .sell, type: .market, price: 0, quantity: 1_000, timeInForce: .ioc)), to: &sink)
        _ = book.snapshot()
    }
    return 0
}
