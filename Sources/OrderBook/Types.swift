// The vocabulary of the book: prices, quantities, sides, order conditions and reason codes.
// Every outcome has a code; the same enums serve the book, the wire format, the CLI and metrics.

/// A price in ticks of the symbol's price grid (an integer, never a float).
public typealias Price = Int64
/// A quantity in the symbol's base units; it must be a multiple of the lot size.
public typealias Quantity = Int64
/// A client-chosen order id, unique among the live orders of a symbol.
public typealias OrderId = Int64
/// The engine's number for the account an order belongs to; self-trade prevention compares
/// these. 32 bits keep the order node at 32 bytes; a gateway maps external account ids to them.
public typealias AccountId = UInt32

@frozen
public enum Side: UInt8, Sendable, CaseIterable {
    case buy = 0
    case sell = 1

    @inlinable
    public var opposite: Side { self == .buy ? .sell : .buy }
}

@frozen
public enum OrderType: UInt8, Sendable {
    case limit = 0
    /// Immediate at any price: time in force IOC (or FOK when asked for).
    case market = 1
}

@frozen
public enum TimeInForce: UInt8, Sendable, CaseIterable {
    /// Good till cancelled: the remainder rests.
    case gtc = 0
    /// Immediate or cancel: the remainder is cancelled.
    case ioc = 1
    /// Fill or kill: all of it at once, or a reject and nothing happens.
    case fok = 2
    /// Post only: rests without taking, or is rejected.
    case postOnly = 3
}

/// What happens when an incoming order would trade with a resting order of the same account.
/// The incoming (newest) order's mode decides.
@frozen
public enum SelfTradePrevention: UInt8, Sendable, CaseIterable {
    /// Self-trades are allowed.
    case none = 0
    /// The incoming order's remainder is cancelled; the resting order stays.
    case cancelNewest = 1
    /// The resting order is cancelled and matching goes on.
    case cancelOldest = 2
    /// Both are cancelled (the incoming order's whole remainder).
    case cancelBoth = 3
    /// Both are reduced by the smaller open quantity, without a trade; matching goes on.
    case decrement = 4
}

/// Why a command was refused. Raw values are stable: they travel in wire records and metrics.
@frozen
public enum RejectReason: UInt8, Sendable, CaseIterable {
    case unknownSymbol = 1
    case priceOffTick = 2
    case priceOutsideBand = 3
    case quantityZero = 4
    case quantityNegative = 5
    case quantityOffLot = 6
    case quantityAboveMaximum = 7
    case duplicateOrderId = 8
    case unknownOrderId = 9
    case fokNotFillable = 10
    case postOnlyWouldTake = 11
    case orderPoolExhausted = 12
    case levelPoolExhausted = 13
    /// A market order may only be IOC or FOK.
    case marketOrderTimeInForce = 14
    /// A record from outside (shared memory, Kafka, a file) did not decode.
    case malformedCommand = 15
    /// A client order id outside 0 ..< 2^48 (the engine keeps the top bits for the session).
    case orderIdOutOfRange = 16
    /// The symbol is frozen (a sequenced admin command: it is moving to another shard).
    case symbolFrozen = 17
    /// A command from an ingress source (a Kafka partition) at an offset the shard has applied
    /// already: a replay of the source, not a new command.
    case duplicateIngress = 18
    /// The symbol is not this shard's (it moved away, or has not arrived yet): the report names
    /// the owner shard in its price field (ReportRecord), so a producer can redirect.
    case symbolMoved = 19

    /// A stable name for logs, CSV output and metric labels.
    public var name: String {
        switch self {
        case .unknownSymbol: "unknown_symbol"
        case .priceOffTick: "price_off_tick"
        case .priceOutsideBand: "price_outside_band"
        case .quantityZero: "quantity_zero"
        case .quantityNegative: "quantity_negative"
        case .quantityOffLot: "quantity_off_lot"
        case .quantityAboveMaximum: "quantity_above_maximum"
        case .duplicateOrderId: "duplicate_order_id"
        case .unknownOrderId: "unknown_order_id"
        case .fokNotFillable: "fok_not_fillable"
        case .postOnlyWouldTake: "post_only_would_take"
        case .orderPoolExhausted: "order_pool_exhausted"
        case .levelPoolExhausted: "level_pool_exhausted"
        case .marketOrderTimeInForce: "market_order_time_in_force"
        case .malformedCommand: "malformed_command"
        case .orderIdOutOfRange: "order_id_out_of_range"
        case .symbolFrozen: "symbol_frozen"
        case .duplicateIngress: "duplicate_ingress"
        case .symbolMoved: "symbol_moved"
        }
    }
}

/// Why quantity left the book without trading.
@frozen
public enum CancelReason: UInt8, Sendable, CaseIterable {
    /// A cancel command.
    case user = 1
    /// The unfilled rest of an IOC or market order.
    case iocRemainder = 2
    /// Self-trade prevention.
    case selfTrade = 3

    public var name: String {
        switch self {
        case .user: "user"
        case .iocRemainder: "ioc_remainder"
        case .selfTrade: "self_trade"
        }
    }
}
