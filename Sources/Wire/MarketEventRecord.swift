// The 64-byte market data event a shard writes into its event ring. Little-endian, versioned.
// No order ids: market data says what traded and what rests, not whose.
//
//  offset size field
//   0     1    version          1
//   1     1    type             1 trade, 2 level (an L2 price level changed)
//   2     1    side             trade: the taker's side; level: the level's side
//   3     1    reserved         0
//   4     4    symbol id
//   8     8    engine sequence  of the command that caused it
//  16     8    price
//  24     8    quantity         trade: traded; level: total resting at the price (0: gone)
//  32     8    orders           level: resting orders at the price; trade: 0
//  40     8    engine time      nanoseconds since the epoch, taken once per batch at sequencing
//  48    16    reserved         0

import OrderBook

public enum MarketEventRecord {
    public static let version: UInt8 = 1

    public enum Kind: UInt8, Sendable {
        case trade = 1
        case level = 2
    }

    public struct Event: Equatable, Sendable {
        public var kind: Kind
        public var side: Side
        public var symbolId: UInt32
        public var engineSequence: UInt64
        public var price: Price
        public var quantity: Quantity
        public var orders: Int64
        public var engineTime: UInt64

        public init(kind: Kind, side: Side, symbolId: UInt32, engineSequence: UInt64, price: Price, quantity: Quantity,
                    orders: Int64 = 0, engineTime: UInt64 = 0) {
            self.kind = kind
            self.side = side
            self.symbolId = symbolId
            self.engineSequence = engineSequence
            self.price = price
            self.quantity = quantity
            self.orders = orders
            self.engineTime = engineTime
        }
    }

    @inlinable
    public static func encode(_ e: Event, to p: UnsafeMutableRawPointer) {
        let w0 = UInt64(version) | UInt64(e.kind.rawValue) << 8 | UInt64(e.side.rawValue) << 16 | UInt64(e.symbolId) << 32
        p.storeBytes(of: w0.littleEndian, toByteOffset: 0, as: UInt64.self)
        p.storeBytes(of: e.engineSequence.littleEndian, toByteOffset: 8, as: UInt64.self)
        p.storeBytes(of: e.price.littleEndian, toByteOffset: 16, as: Int64.self)
        p.storeBytes(of: e.quantity.littleEndian, toByteOffset: 24, as: Int64.self)
        p.storeBytes(of: e.orders.littleEndian, toByteOffset: 32, as: Int64.self)
        p.storeBytes(of: e.engineTime.littleEndian, toByteOffset: 40, as: UInt64.self)
        p.storeBytes(of: UInt64(0), toByteOffset: 48, as: UInt64.self)
        p.storeBytes(of: UInt64(0), toByteOffset: 56, as: UInt64.self)
    }

    @inlinable
    public static func decode(_ p: UnsafeRawPointer) -> Event? {
        let w0 = UInt64(littleEndian: p.loadUnaligned(as: UInt64.self))
        guard UInt8(truncatingIfNeeded: w0) == version,
              let kind = Kind(rawValue: UInt8(truncatingIfNeeded: w0 >> 8)),
              let side = Side(rawValue: UInt8(truncatingIfNeeded: w0 >> 16))
        else { return nil }
        return Event(kind: kind, side: side, symbolId: UInt32(truncatingIfNeeded: w0 >> 32),
                     engineSequence: UInt64(littleEndian: p.loadUnaligned(fromByteOffset: 8, as: UInt64.self)),
                     price: Int64(littleEndian: p.loadUnaligned(fromByteOffset: 16, as: Int64.self)),
                     quantity: Int64(littleEndian: p.loadUnaligned(fromByteOffset: 24, as: Int64.self)),
                     orders: Int64(littleEndian: p.loadUnaligned(fromByteOffset: 32, as: Int64.self)),
                     engineTime: UInt64(littleEndian: p.loadUnaligned(fromByteOffset: 40, as: UInt64.self)))
    }
}
