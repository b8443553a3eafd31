// The 64-byte execution report the engine writes into a client's report ring. Little-endian,
// versioned. Order ids are the client's own (the engine's session bits removed).
//
//  offset size field
//   0     1    version          1
//   1     1    type             1 accepted, 2 rejected, 3 trade, 4 cancelled, 5 replaced
//   2     1    side             the order's side (trade: this order's side)
//   3     1    code             rejected: RejectReason; cancelled: CancelReason;
//                               replaced: 1 kept priority, 0 lost it; trade: 1 this order was the maker
//   4     4    symbol id
//   8     8    engine sequence  of the command that caused it
//  16     8    order id         the client's order this report is about
//  24     8    price            accepted/replaced: the order's price; trade: the trade price;
//                               rejected symbol_moved: the shard that owns the symbol now
//  32     8    quantity         accepted: order quantity; trade: traded; cancelled: cancelled;
//                               replaced: new open quantity
//  40     8    open             what is still open of the order after this (0: it is gone)
//  48     8    engine time      nanoseconds since the epoch (CLOCK_REALTIME), taken by the shard
//                               once per batch of commands, at sequencing
//  56     8    client time      echoed from the command (accepted, rejected, replaced, cancel
//                               by the user); 0 otherwise

import OrderBook

public enum ReportRecord {
    public static let version: UInt8 = 1

    public enum Kind: UInt8, Sendable {
        case accepted = 1
        case rejected = 2
        case trade = 3
        case cancelled = 4
        case replaced = 5
    }

    public struct Report: Equatable, Sendable {
        public var kind: Kind
        public var side: Side
        public var code: UInt8
        public var symbolId: UInt32
        public var engineSequence: UInt64
        public var orderId: OrderId
        public var price: Price
        public var quantity: Quantity
        public var open: Quantity
        public var engineTime: UInt64
        public var clientTime: UInt64

        public init(kind: Kind, side: Side = .buy, code: UInt8 = 0, symbolId: UInt32, engineSequence: UInt64,
                    orderId: OrderId, price: Price = 0, quantity: Quantity = 0, open: Quantity = 0,
                    engineTime: UInt64 = 0, clientTime: UInt64 = 0) {
            self.kind = kind
            self.side = side
            self.code = code
            self.symbolId = symbolId
            self.engineSequence = engineSequence
            self.orderId = orderId
            self.price = price
            self.quantity = quantity
            self.open = open
            self.engineTime = engineTime
            self.clientTime = clientTime
        }

        public var rejectReason: RejectReason? { kind == .rejected ? RejectReason(rawValue: code) : nil }
        public var cancelReason: CancelReason? { kind == .cancelled ? CancelReason(rawValue: code) : nil }
    }

    @inlinable
    public static func encode(_ r: Report, to p: UnsafeMutableRawPointer) {
        let w0 = UInt64(version) | UInt64(r.kind.rawValue) << 8 | UInt64(r.side.rawValue) << 16
            | UInt64(r.code) << 24 | UInt64(r.symbolId) << 32
        p.storeBytes(of: w0.littleEndian, toByteOffset: 0, as: UInt64.self)
        p.storeBytes(of: r.engineSequence.littleEndian, toByteOffset: 8, as: UInt64.self)
        p.storeBytes(of: r.orderId.littleEndian, toByteOffset: 16, as: Int64.self)
        p.storeBytes(of: r.price.littleEndian, toByteOffset: 24, as: Int64.self)
        p.storeBytes(of: r.quantity.littleEndian, toByteOffset: 32, as: Int64.self)
        p.storeBytes(of: r.open.littleEndian, toByteOffset: 40, as: Int64.self)
        p.storeBytes(of: r.engineTime.littleEndian, toByteOffset: 48, as: UInt64.self)
        p.storeBytes(of: r.clientTime.littleEndian, toByteOffset: 56, as: UInt64.self)
    }

    /// Decodes a report; nil if the record is not one (the engine wrote it, but a client
    /// library still checks what it reads from shared memory).
    @inlinable
    public static func decode(_ p: UnsafeRawPointer) -> Report? {
        let w0 = UInt64(littleEndian: p.loadUnaligned(as: UInt64.self))
        guard UInt8(truncatingIfNeeded: w0) == version,
              let kind = Kind(rawValue: UInt8(truncatingIfNeeded: w0 >> 8)),
              let side = Side(rawValue: UInt8(truncatingIfNeeded: w0 >> 16))
        else { return nil }
        return Report(
            kind: kind, side: side, code: UInt8(truncatingIfNeeded: w0 >> 24), symbolId: UInt32(truncatingIfNeeded: w0 >> 32),
            engineSequence: UInt64(littleEndian: p.loadUnaligned(fromByteOffset: 8, as: UInt64.self)),
            orderId: Int64(littleEndian: p.loadUnaligned(fromByteOffset: 16, as: Int64.self)),
            price: Int64(littleEndian: p.loadUnaligned(fromByteOffset: 24, as: Int64.self)),
            quantity: Int64(littleEndian: p.loadUnaligned(fromByteOffset: 32, as: Int64.self)),
            open: Int64(littleEndian: p.loadUnaligned(fromByteOffset: 40, as: Int64.self)),
            engineTime: UInt64(littleEndian: p.loadUnaligned(fromByteOffset: 48, as: UInt64.self)),
            clientTime: UInt64(littleEndian: p.loadUnaligned(fromByteOffset: 56, as: UInt64.self)))
    }
}
