// The three commands a book understands. Plain values: the engine decodes them from wire
// records, the replay tool from CSV, the tests from seeded generators.

@frozen
public struct NewOrder: Sendable, Equatable {
    public var orderId: OrderId
    public var account: AccountId
    public var side: Side
    public var type: OrderType
    /// Limit price; ignored for market orders.
    public var price: Price
    public var quantity: Quantity
    public var timeInForce: TimeInForce
    public var selfTradePrevention: SelfTradePrevention

    @inlinable
    public init(
        orderId: OrderId, account: AccountId = 0, side: Side, type: OrderType = .limit,
        price: Price, quantity: Quantity, timeInForce: TimeInForce = .gtc,
        selfTradePrevention: SelfTradePrevention = .none
    ) {
        self.orderId = orderId
        self.account = account
        self.side = side
        self.type = type
        self.price = price
        self.quantity = quantity
        self.timeInForce = timeInForce
        self.selfTradePrevention = selfTradePrevention
    }
}

@frozen
public struct CancelOrder: Sendable, Equatable {
    public var orderId: OrderId

    @inlinable
    public init(orderId: OrderId) { self.orderId = orderId }
}

/// A new price and a new *open* quantity. Same price and a quantity not above the open
/// quantity keeps time priority; anything else loses it, and a replaced order that now
/// crosses trades at once like a new GTC order with the same id.
@frozen
public struct ReplaceOrder: Sendable, Equatable {
    public var orderId: OrderId
    public var price: Price
    public var quantity: Quantity

    @inlinable
    public init(orderId: OrderId, price: Price, quantity: Quantity) {
        self.orderId = orderId
        self.price = price
        self.quantity = quantity
    }
}

/// Any of the three, for streams of mixed commands (tests, replay).
@frozen
public enum BookCommand: Sendable, Equatable {
    case new(NewOrder)
    case cancel(CancelOrder)
    case replace(ReplaceOrder)
}

extension BookCommand {
    /// The order the command is about.
    @inlinable
    public var orderId: OrderId {
        get {
            switch self {
            case .new(let order): order.orderId
            case .cancel(let cancel): cancel.orderId
            case .replace(let replace): replace.orderId
            }
        }
        set {
            switch self {
            case .new(var order):
                order.orderId = newValue
                self = .new(order)
            case .cancel(var cancel):
                cancel.orderId = newValue
                self = .cancel(cancel)
            case .replace(var replace):
                replace.orderId = newValue
                self = .replace(replace)
            }
        }
    }
}
