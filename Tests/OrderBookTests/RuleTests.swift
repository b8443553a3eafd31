// The rules a user would quote, one hand-picked case each.
import OrderBook
import Testing

/// A book with tick 1, lot 1, band 1...1_000_000, max quantity 1_000.
func makeBook(orders: Int = 1024, levels: Int = 64) throws -> OrderBook {
    try OrderBook(spec: SymbolSpec(name: "T", id: 1, maxPrice: 1_000_000, maxOrderQuantity: 1_000),
                  capacity: BookCapacity(orders: orders, levels: levels))
}

extension OrderBook {
    /// Applies a command and returns its events.
    mutating func run(_ command: BookCommand) -> [BookEvent] {
        var recorder = EventRecorder()
        apply(command, to: &recorder)
        return recorder.events
    }

    mutating func limit(_ id: OrderId, _ side: Side, _ price: Price, _ qty: Quantity, _ tif: TimeInForce = .gtc,
                        account: AccountId = 0, stp: SelfTradePrevention = .none) -> [BookEvent] {
        run(.new(NewOrder(orderId: id, account: account, side: side, price: price, quantity: qty, timeInForce: tif,
                          selfTradePrevention: stp)))
    }

    mutating func market(_ id: OrderId, _ side: Side, _ qty: Quantity, _ tif: TimeInForce = .ioc) -> [BookEvent] {
        run(.new(NewOrder(orderId: id, side: side, type: .market, price: 0, quantity: qty, timeInForce: tif)))
    }
}

func trades(_ events: [BookEvent]) -> [(maker: OrderId, price: Price, qty: Quantity)] {
    events.compactMap { if case .trade(let m, _, _, let p, let q, _, _) = $0 { (m, p, q) } else { nil } }
}

func rejection(_ events: [BookEvent]) -> RejectReason? {
    if events.count == 1, case .rejected(_, let reason) = events[0] { reason } else { nil }
}

@Suite("Order book rules")
struct RuleTests {
    @Test("orders at the same price fill in time order")
    func timePriority() throws {
        var book = try makeBook()
        _ = book.limit(1, .sell, 100, 5)
        _ = book.limit(2, .sell, 100, 5)
        let t = trades(book.limit(3, .buy, 100, 7))
        #expect(t.map(\.maker) == [1, 2])
        #expect(t.map(\.qty) == [5, 2])
        #expect(book.order(2)?.open == 3)
    }

    @Test("a better price fills first, at the maker's price")
    func pricePriority() throws {
        var book = try makeBook()
        _ = book.limit(1, .sell, 102, 5)
        _ = book.limit(2, .sell, 101, 5)
        let t = trades(book.limit(3, .buy, 105, 6))
        #expect(t.map(\.maker) == [2, 1])
        #expect(t.map(\.price) == [101, 102])
    }

    @Test("replace that lowers quantity keeps priority")
    func replaceLowerKeeps() throws {
        var book = try makeBook()
        _ = book.limit(1, .sell, 100, 5)
        _ = book.limit(2, .sell, 100, 5)
        #expect(book.run(.replace(ReplaceOrder(orderId: 1, price: 100, quantity: 3))).first ==
                .replaced(orderId: 1, price: 100, quantity: 3, keptPriority: true))
        #expect(trades(book.limit(3, .buy, 100, 1)).map(\.maker) == [1])
    }

    @Test("replace that raises quantity or moves the price loses priority")
    func replaceLoses() throws {
        var book = try makeBook()
        _ = book.limit(1, .sell, 100, 5)
        _ = book.limit(2, .sell, 100, 5)
        _ = book.run(.replace(ReplaceOrder(orderId: 1, price: 100, quantity: 6)))
        #expect(book.orders(.sell).map(\.orderId) == [2, 1])
        _ = book.run(.replace(ReplaceOrder(orderId: 2, price: 101, quantity: 5)))
        _ = book.run(.replace(ReplaceOrder(orderId: 2, price: 100, quantity: 5)))
        #expect(book.orders(.sell).map(\.orderId) == [1, 2])
    }

    @Test("a replaced order that now crosses trades at once like a new GTC order with the same id")
    func replaceCrosses() throws {
        var book = try makeBook()
        _ = book.limit(1, .sell, 100, 5)
        _ = book.limit(2, .buy, 99, 8)
        let events = book.run(.replace(ReplaceOrder(orderId: 2, price: 100, quantity: 8)))
        #expect(events.contains(.trade(makerId: 1, takerId: 2, takerSide: .buy, price: 100, quantity: 5,
                                       makerOpen: 0, takerOpen: 3)))
        #expect(book.order(2) == RestingOrder(orderId: 2, account: 0, side: .buy, price: 100, open: 3))
        #expect(book.bestAsk == nil)
    }

    @Test("IOC trades what it can and cancels the rest")
    func ioc() throws {
        var book = try makeBook()
        _ = book.limit(1, .sell, 100, 5)
        let events = book.limit(2, .buy, 100, 8, .ioc)
        #expect(events.last == .cancelled(orderId: 2, quantity: 3, open: 0, reason: .iocRemainder))
        #expect(book.restingOrderCount == 0)
    }

    @Test("FOK that cannot fill completely is rejected and changes nothing")
    func fokKill() throws {
        var book = try makeBook()
        _ = book.limit(1, .sell, 100, 5)
        _ = book.limit(2, .sell, 101, 5)
        let digest = book.digest
        #expect(rejection(book.limit(3, .buy, 100, 6, .fok)) == .fokNotFillable)
        #expect(book.digest == digest)
        #expect(trades(book.limit(4, .buy, 101, 10, .fok)).map(\.qty) == [5, 5])
    }

    @Test("FOK counts only liquidity that self-trade prevention lets it take")
    func fokWithSTP() throws {
        var book = try makeBook()
        _ = book.limit(1, .sell, 100, 5, account: 7)
        _ = book.limit(2, .sell, 100, 5, account: 8)
        #expect(rejection(book.limit(3, .buy, 100, 6, .fok, account: 7, stp: .cancelNewest)) == .fokNotFillable)
        #expect(rejection(book.limit(4, .buy, 100, 6, .fok, account: 7, stp: .decrement)) == .fokNotFillable)
        #expect(trades(book.limit(5, .buy, 100, 5, .fok, account: 7, stp: .cancelOldest)).map(\.maker) == [2])
    }

    @Test("post-only is rejected if it would take, and rests otherwise")
    func postOnly() throws {
        var book = try makeBook()
        _ = book.limit(1, .sell, 100, 5)
        #expect(rejection(book.limit(2, .buy, 100, 1, .postOnly)) == .postOnlyWouldTake)
        #expect(!book.limit(3, .buy, 99, 1, .postOnly).contains { if case .rejected = $0 { true } else { false } })
        #expect(book.bestBid?.price == 99)
    }

    @Test("a market order sweeps levels at any price and cancels what is left")
    func market() throws {
        var book = try makeBook()
        _ = book.limit(1, .buy, 100, 2)
        _ = book.limit(2, .buy, 50, 2)
        let events = book.market(3, .sell, 10)
        #expect(trades(events).map(\.price) == [100, 50])
        #expect(events.last == .cancelled(orderId: 3, quantity: 6, open: 0, reason: .iocRemainder))
        #expect(rejection(book.market(4, .sell, 1, .gtc)) == .marketOrderTimeInForce)
        #expect(rejection(book.market(5, .sell, 1, .postOnly)) == .marketOrderTimeInForce)
    }

    @Test("self-trade prevention: cancel-newest keeps the resting order")
    func stpCancelNewest() throws {
        var book = try makeBook()
        _ = book.limit(1, .sell, 100, 5, account: 9)
        let events = book.limit(2, .buy, 100, 3, account: 9, stp: .cancelNewest)
        #expect(events.last == .cancelled(orderId: 2, quantity: 3, open: 0, reason: .selfTrade))
        #expect(book.order(1)?.open == 5)
        #expect(book.order(2) == nil)
    }

    @Test("self-trade prevention: cancel-oldest removes the resting order and matching goes on")
    func stpCancelOldest() throws {
        var book = try makeBook()
        _ = book.limit(1, .sell, 100, 5, account: 9)
        _ = book.limit(2, .sell, 100, 5, account: 1)
        let events = book.limit(3, .buy, 100, 3, account: 9, stp: .cancelOldest)
        #expect(events.contains(.cancelled(orderId: 1, quantity: 5, open: 0, reason: .selfTrade)))
        #expect(trades(events).map(\.maker) == [2])
    }

    @Test("self-trade prevention: cancel-both removes both")
    func stpCancelBoth() throws {
        var book = try makeBook()
        _ = book.limit(1, .sell, 100, 5, account: 9)
        let events = book.limit(2, .buy, 100, 3, account: 9, stp: .cancelBoth)
        #expect(events.contains(.cancelled(orderId: 1, quantity: 5, open: 0, reason: .selfTrade)))
        #expect(events.contains(.cancelled(orderId: 2, quantity: 3, open: 0, reason: .selfTrade)))
        #expect(book.restingOrderCount == 0)
    }

    @Test("self-trade prevention: decrement reduces both by the smaller quantity, without a trade")
    func stpDecrement() throws {
        var book = try makeBook()
        _ = book.limit(1, .sell, 100, 5, account: 9)
        let events = book.limit(2, .buy, 100, 3, account: 9, stp: .decrement)
        #expect(trades(events).isEmpty)
        #expect(events.contains(.cancelled(orderId: 1, quantity: 3, open: 2, reason: .selfTrade)))
        #expect(events.contains(.cancelled(orderId: 2, quantity: 3, open: 0, reason: .selfTrade)))
        #expect(book.order(1)?.open == 2)
    }

    @Test("self-trade is allowed when the mode is none")
    func stpNone() throws {
        var book = try makeBook()
        _ = book.limit(1, .sell, 100, 5, account: 9)
        #expect(trades(book.limit(2, .buy, 100, 3, account: 9)).count == 1)
    }

    @Test("every bad command is rejected with its reason", arguments: [
        (NewOrder(orderId: 1, side: .buy, price: 100, quantity: 0), RejectReason.quantityZero),
        (NewOrder(orderId: 1, side: .buy, price: 100, quantity: -1), .quantityNegative),
        (NewOrder(orderId: 1, side: .buy, price: 100, quantity: 1_001), .quantityAboveMaximum),
        (NewOrder(orderId: 1, side: .buy, price: 0, quantity: 1), .priceOutsideBand),
        (NewOrder(orderId: 1, side: .buy, price: -5, quantity: 1), .priceOutsideBand),
        (NewOrder(orderId: 1, side: .buy, price: 1_000_001, quantity: 1), .priceOutsideBand),
        (NewOrder(orderId: 1, side: .buy, price: .max, quantity: .max), .quantityAboveMaximum),
        (NewOrder(orderId: 1, side: .buy, price: .min, quantity: 1), .priceOutsideBand),
        (NewOrder(orderId: .min, side: .sell, type: .market, price: .min, quantity: .min, timeInForce: .fok), .quantityNegative),
    ])
    func rejects(order: NewOrder, reason: RejectReason) throws {
        var book = try makeBook()
        #expect(rejection(book.run(.new(order))) == reason)
        #expect(book.restingOrderCount == 0)
    }

    @Test("tick and lot are enforced")
    func tickAndLot() throws {
        var book = try OrderBook(spec: SymbolSpec(name: "T", id: 1, tickSize: 5, lotSize: 10), capacity: .small)
        #expect(rejection(book.limit(1, .buy, 102, 10)) == .priceOffTick)
        #expect(rejection(book.limit(1, .buy, 100, 15)) == .quantityOffLot)
        _ = book.limit(1, .buy, 100, 10)
        #expect(rejection(book.run(.replace(ReplaceOrder(orderId: 1, price: 101, quantity: 10)))) == .priceOffTick)
        #expect(rejection(book.run(.replace(ReplaceOrder(orderId: 1, price: 100, quantity: 0)))) == .quantityZero)
    }

    @Test("a duplicate live id is rejected; an id that has left the book may be used again")
    func duplicateId() throws {
        var book = try makeBook()
        _ = book.limit(1, .buy, 100, 5)
        #expect(rejection(book.limit(1, .sell, 200, 5)) == .duplicateOrderId)
        _ = book.run(.cancel(CancelOrder(orderId: 1)))
        #expect(rejection(book.limit(1, .sell, 200, 5)) == nil)
    }

    @Test("cancel and replace of an unknown id are rejected")
    func unknownId() throws {
        var book = try makeBook()
        #expect(rejection(book.run(.cancel(CancelOrder(orderId: 7)))) == .unknownOrderId)
        #expect(rejection(book.run(.replace(ReplaceOrder(orderId: 7, price: 100, quantity: 1)))) == .unknownOrderId)
    }

    @Test("a full order pool rejects resting orders, not IOC, and frees up again")
    func orderPool() throws {
        var book = try makeBook(orders: 2, levels: 8)
        _ = book.limit(1, .buy, 100, 1)
        _ = book.limit(2, .sell, 200, 1)
        #expect(rejection(book.limit(3, .buy, 100, 1)) == .orderPoolExhausted)
        // An IOC never rests, so it needs no node.
        #expect(trades(book.limit(4, .buy, 200, 1, .ioc)).count == 1)
        #expect(rejection(book.limit(5, .buy, 101, 1)) == nil)
        #expect(rejection(book.limit(6, .buy, 102, 1)) == .orderPoolExhausted)
        _ = book.run(.cancel(CancelOrder(orderId: 5)))
        #expect(rejection(book.limit(6, .buy, 102, 1)) == nil)
        #expect(book.consistencyError() == nil)
    }

    @Test("a full level pool rejects a new price, for orders and replaces, but not an existing one")
    func levelPool() throws {
        var book = try makeBook(orders: 16, levels: 2)
        _ = book.limit(1, .buy, 100, 1)
        _ = book.limit(2, .sell, 200, 1)
        #expect(rejection(book.limit(3, .buy, 101, 1)) == .levelPoolExhausted)
        #expect(rejection(book.limit(4, .buy, 100, 1)) == nil)
        #expect(rejection(book.run(.replace(ReplaceOrder(orderId: 4, price: 99, quantity: 1)))) == .levelPoolExhausted)
        _ = book.run(.cancel(CancelOrder(orderId: 2)))
        #expect(rejection(book.limit(3, .buy, 101, 1)) == nil)
        #expect(book.levelCount(.buy) == 2)
        #expect(book.consistencyError() == nil)
    }

    @Test("L2 depth and L3 orders in priority order")
    func queries() throws {
        var book = try makeBook()
        _ = book.limit(1, .buy, 99, 1)
        _ = book.limit(2, .buy, 100, 2)
        _ = book.limit(3, .buy, 100, 3)
        _ = book.limit(4, .sell, 102, 4)
        #expect(book.depth(.buy) == [DepthLevel(price: 100, quantity: 5, orders: 2),
                                     DepthLevel(price: 99, quantity: 1, orders: 1)])
        #expect(book.depth(.buy, limit: 1).count == 1)
        #expect(book.orders(.buy).map(\.orderId) == [2, 3, 1])
        #expect(book.bestAsk == DepthLevel(price: 102, quantity: 4, orders: 1))
    }

    @Test("level events report each changed level once, after its trades")
    func levelEvents() throws {
        var book = try makeBook()
        _ = book.limit(1, .sell, 100, 2)
        _ = book.limit(2, .sell, 100, 2)
        _ = book.limit(3, .sell, 101, 5)
        let events = book.limit(4, .buy, 101, 6)
        #expect(events == [
            .accepted(orderId: 4, side: .buy, price: 101, quantity: 6),
            .trade(makerId: 1, takerId: 4, takerSide: .buy, price: 100, quantity: 2, makerOpen: 0, takerOpen: 4),
            .trade(makerId: 2, takerId: 4, takerSide: .buy, price: 100, quantity: 2, makerOpen: 0, takerOpen: 2),
            .level(side: .sell, price: 100, quantity: 0, orders: 0),
            .trade(makerId: 3, takerId: 4, takerSide: .buy, price: 101, quantity: 2, makerOpen: 3, takerOpen: 0),
            .level(side: .sell, price: 101, quantity: 3, orders: 1),
        ])
    }

    @Test("a deep ladder: levels far from the touch are added and removed in order")
    func deepLadder() throws {
        var book = try makeBook(orders: 4096, levels: 2048)
        var rng = UInt64(99)
        var ids: [OrderId] = []
        for id in 1...3000 {
            rng = rng &* 6364136223846793005 &+ 1442695040888963407
            let price = Price(1 + (rng >> 33) % 1000)
            _ = book.limit(OrderId(id), .buy, price, 1)
            ids.append(OrderId(id))
        }
        #expect(book.consistencyError() == nil)
        for id in ids where id % 3 == 0 { _ = book.run(.cancel(CancelOrder(orderId: id))) }
        #expect(book.consistencyError() == nil)
        let prices = book.depth(.buy).map(\.price)
        #expect(prices == prices.sorted(by: >))
    }

    @Test("a configuration that cannot work is refused with its cause")
    func badConfig() {
        #expect(throws: BookConfigError.self) {
            _ = try OrderBook(spec: SymbolSpec(name: "T", id: 1, tickSize: 0), capacity: .small)
        }
        #expect(throws: BookConfigError.self) {
            _ = try OrderBook(spec: SymbolSpec(name: "T", id: 1), capacity: BookCapacity(orders: 0, levels: 10))
        }
        #expect(throws: BookConfigError.self) {
            _ = try OrderBook(spec: SymbolSpec(name: "T", id: 1, maxOrderQuantity: .max), capacity: .small)
        }
    }

    @Test("at most 64 bytes of memory per resting order")
    func memoryPerOrder() throws {
        // Levels are sized separately; with the orders dominating, the per-order share is
        // a 40-byte node and 8 bytes of id table (16 at worst, just past a power of two).
        let book = try makeBook(orders: 1 << 20, levels: 1 << 12)
        let perOrder = Double(book.allocatedBytes) / Double(1 << 20)
        #expect(perOrder <= 64, "\(perOrder) bytes per order")
    }
}
