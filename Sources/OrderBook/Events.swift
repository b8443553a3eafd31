// What the book says. Each command produces a short, deterministic sequence of events,
// delivered to a sink that the caller passes in (generic, specialized: no existential).

@frozen
public enum BookEvent: Sendable, Equatable {
    /// A new order passed validation (before any trade it makes). Price is 0 for market orders.
    case accepted(orderId: OrderId, side: Side, price: Price, quantity: Quantity)
    /// A command was refused; nothing changed.
    case rejected(orderId: OrderId, reason: RejectReason)
    /// The taker traded `quantity` at the maker's price. Open quantities are after the trade;
    /// an open quantity of 0 means that order has left the book (or finished matching).
    case trade(
        makerId: OrderId, takerId: OrderId, takerSide: Side, price: Price, quantity: Quantity,
        makerOpen: Quantity, takerOpen: Quantity)
    /// `quantity` left the order without trading; `open` is what is still open (0: it is gone).
    case cancelled(orderId: OrderId, quantity: Quantity, open: Quantity, reason: CancelReason)
    /// A replace took effect with this price and open quantity.
    case replaced(orderId: OrderId, price: Price, quantity: Quantity, keptPriority: Bool)
    /// The L2 state of one price level after the command touched it (0 orders: the level is gone).
    /// Emitted once per level that a step changed, after that step's trades.
    case level(side: Side, price: Price, quantity: Quantity, orders: Int32)
}

/// Receives the book's events. Implementations are value types; the book is generic over
/// them, so the calls are specialized and inlined.
public protocol BookEventSink {
    mutating func on(_ event: BookEvent)
    /// The account of an order the next events name: the incoming order's before its first
    /// event, a resting order's before a trade, cancel or replace of it. For sinks that report
    /// per account (the engine's drop copies); the default does nothing.
    mutating func account(_ account: AccountId, of orderId: OrderId)
}

extension BookEventSink {
    @inlinable @inline(__always)
    public mutating func account(_ account: AccountId, of orderId: OrderId) {}
}

/// A sink that keeps every event, for tests and tools (it allocates: not for the hot path).
public struct EventRecorder: BookEventSink {
    public var events: [BookEvent] = []

    public init() {}

    public mutating func on(_ event: BookEvent) { events.append(event) }
}

/// A sink that drops everything.
@frozen
public struct DiscardingSink: BookEventSink {
    @inlinable public init() {}
    @inlinable public mutating func on(_ event: BookEvent) {}
}
