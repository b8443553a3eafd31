// The 64-byte command record that producers write into shared-memory rings. Little-endian,
// versioned. Another process wrote it: every field is checked before anything is built from
// it, and a bad record becomes a reason, never a trap or an out-of-bounds read.
//
//  offset size field
//   0     1    version          1
//   1     1    type             1 new, 2 cancel, 3 replace
//   2     1    side             0 buy, 1 sell                      (new)
//   3     1    order type       0 limit, 1 market                  (new)
//   4     1    time in force    0 GTC, 1 IOC, 2 FOK, 3 post-only   (new)
//   5     1    self-trade mode  0 none, 1 cancel-newest, 2 cancel-oldest, 3 cancel-both, 4 decrement
//   6     2    reserved         0
//   8     4    symbol id        the engine's number for the symbol
//  12     4    account          the engine's number for the account (new)
//  16     8    order id         client-chosen, unique among the symbol's live orders
//  24     8    price            ticks (new limit, replace); 0 for market and cancel
//  32     8    quantity         lots (new: quantity; replace: new open quantity); 0 for cancel
//  40     8    client time      nanoseconds, the producer's clock, echoed in reports
//  48     8    client sequence  the producer's own count, for gap checks
//  56     8    reserved         0
//
// Fields that a type does not use must be zero: a record with stray bytes is refused rather
// than guessed at.

import OrderBook

public enum CommandRecord {
    public static let size = 64
    public static let version: UInt8 = 1

    public enum Kind: UInt8, Sendable {
        case new = 1
        case cancel = 2
        case replace = 3
    }

    /// Why a record was refused (each becomes `RejectReason.malformedCommand` with this detail).
    public enum Malformed: UInt8, Error, Sendable, Equatable, CaseIterable {
        case version = 1
        case type = 2
        case side = 3
        case orderType = 4
        case timeInForce = 5
        case selfTradePrevention = 6
        case reservedNotZero = 7
        case unusedFieldNotZero = 8
    }

    /// A command as decoded: which symbol, what to do, and the producer's bookkeeping.
    public struct Decoded: Equatable, Sendable {
        public var symbolId: UInt32
        public var command: BookCommand
        public var clientTime: UInt64
        public var clientSequence: UInt64

        public init(symbolId: UInt32, command: BookCommand, clientTime: UInt64 = 0, clientSequence: UInt64 = 0) {
            self.symbolId = symbolId
            self.command = command
            self.clientTime = clientTime
            self.clientSequence = clientSequence
        }
    }

    /// The order id field, whatever else is wrong with the record (so a reject can name it).
    @inlinable
    public static func orderId(_ p: UnsafeRawPointer) -> OrderId {
        OrderId(littleEndian: p.loadUnaligned(fromByteOffset: 16, as: Int64.self))
    }

    @inlinable
    public static func decode(_ p: UnsafeRawPointer) throws(Malformed) -> Decoded {
        // Copy out once: the producer may be rewriting the slot under us (a broken one would);
        // everything below looks at this copy only.
        let r = (p.loadUnaligned(as: UInt64.self), p.loadUnaligned(fromByteOffset: 8, as: UInt64.self),
                 p.loadUnaligned(fromByteOffset: 16, as: Int64.self), p.loadUnaligned(fromByteOffset: 24, as: Int64.self),
                 p.loadUnaligned(fromByteOffset: 32, as: Int64.self), p.loadUnaligned(fromByteOffset: 40, as: UInt64.self),
                 p.loadUnaligned(fromByteOffset: 48, as: UInt64.self), p.loadUnaligned(fromByteOffset: 56, as: UInt64.self))
        let w0 = UInt64(littleEndian: r.0)
        let w1 = UInt64(littleEndian: r.1)
        let version = UInt8(truncatingIfNeeded: w0)
        let type = UInt8(truncatingIfNeeded: w0 >> 8)
        let sideRaw = UInt8(truncatingIfNeeded: w0 >> 16)
        let orderTypeRaw = UInt8(truncatingIfNeeded: w0 >> 24)
        let tifRaw = UInt8(truncatingIfNeeded: w0 >> 32)
        let stpRaw = UInt8(truncatingIfNeeded: w0 >> 40)
        let reserved16 = UInt16(truncatingIfNeeded: w0 >> 48)
        let symbolId = UInt32(truncatingIfNeeded: w1)
        let account = UInt32(truncatingIfNeeded: w1 >> 32)
        let orderId = Int64(littleEndian: r.2)
        let price = Int64(littleEndian: r.3)
        let quantity = Int64(littleEndian: r.4)
        let clientTime = UInt64(littleEndian: r.5)
        let clientSequence = UInt64(littleEndian: r.6)
        let reserved64 = UInt64(littleEndian: r.7)

        guard version == Self.version else { throw .version }
        guard reserved16 == 0, reserved64 == 0 else { throw .reservedNotZero }
        guard let kind = Kind(rawValue: type) else { throw .type }
        let command: BookCommand
        switch kind {
        case .new:
            guard let side = Side(rawValue: sideRaw) else { throw .side }
            guard let orderType = OrderType(rawValue: orderTypeRaw) else { throw .orderType }
            guard let tif = TimeInForce(rawValue: tifRaw) else { throw .timeInForce }
            guard let stp = SelfTradePrevention(rawValue: stpRaw) else { throw .selfTradePrevention }
            if orderType == .market && price != 0 { throw .unusedFieldNotZero }
            command = .new(NewOrder(orderId: orderId, account: account, side: side, type: orderType, price: price,
                                    quantity: quantity, timeInForce: tif, selfTradePrevention: stp))
        case .cancel:
            guard sideRaw == 0, orderTypeRaw == 0, tifRaw == 0, stpRaw == 0, account == 0, price == 0, quantity == 0 else {
                throw .unusedFieldNotZero
            }
            command = .cancel(CancelOrder(orderId: orderId))
        case .replace:
            guard sideRaw == 0, orderTypeRaw == 0, tifRaw == 0, stpRaw == 0, account == 0 else {
                throw .unusedFieldNotZero
            }
            command = .replace(ReplaceOrder(orderId: orderId, price: price, quantity: quantity))
        }
        return Decoded(symbolId: symbolId, command: command, clientTime: clientTime, clientSequence: clientSequence)
    }

    /// Writes a command into 64 bytes at `p` (all of them: reserved and unused fields zero).
    @inlinable
    public static func encode(_ d: Decoded, to p: UnsafeMutableRawPointer) {
        var w0 = UInt64(version)
        var account: UInt32 = 0
        var orderId: OrderId = 0
        var price: Price = 0
        var quantity: Quantity = 0
        switch d.command {
        case .new(let o):
            w0 |= UInt64(Kind.new.rawValue) << 8 | UInt64(o.side.rawValue) << 16 | UInt64(o.type.rawValue) << 24
                | UInt64(o.timeInForce.rawValue) << 32 | UInt64(o.selfTradePrevention.rawValue) << 40
            account = o.account
            orderId = o.orderId
            price = o.type == .market ? 0 : o.price
            quantity = o.quantity
        case .cancel(let c):
            w0 |= UInt64(Kind.cancel.rawValue) << 8
            orderId = c.orderId
        case .replace(let r):
            w0 |= UInt64(Kind.replace.rawValue) << 8
            orderId = r.orderId
            price = r.price
            quantity = r.quantity
        }
        p.storeBytes(of: w0.littleEndian, toByteOffset: 0, as: UInt64.self)
        p.storeBytes(of: (UInt64(d.symbolId) | UInt64(account) << 32).littleEndian, toByteOffset: 8, as: UInt64.self)
        p.storeBytes(of: orderId.littleEndian, toByteOffset: 16, as: Int64.self)
        p.storeBytes(of: price.littleEndian, toByteOffset: 24, as: Int64.self)
        p.storeBytes(of: quantity.littleEndian, toByteOffset: 32, as: Int64.self)
        p.storeBytes(of: d.clientTime.littleEndian, toByteOffset: 40, as: UInt64.self)
        p.storeBytes(of: d.clientSequence.littleEndian, toByteOffset: 48, as: UInt64.self)
        p.storeBytes(of: UInt64(0), toByteOffset: 56, as: UInt64.self)
    }
}
