// A deliberately simple order book: two arrays kept in priority order, linear scans, no pools,
// no ladders, no id table. It states the rules as plainly as possible; the differential test
// requires the real book to produce exactly the same events.

import OrderBook

struct ReferenceBook {
    struct Order: Equatable {
        var id: OrderId
        var account: AccountId
        var side: Side
        var price: Price
        var open: Quantity
        var stp: SelfTradePrevention
    }

    let spec: SymbolSpec
    let capacity: BookCapacity
    /// Best first: bids by price descending, asks ascending, then by time.
    var bids: [Order] = []
    var asks: [Order] = []
    var events: [BookEvent] = []

    init(spec: SymbolSpec, capacity: BookCapacity) {
        self.spec = spec
        self.capacity = capacity
    }

    func orders(_ side: Side) -> [Order] { side == .buy ? bids : asks }

    mutating func setOrders(_ side: Side, _ orders: [Order]) {
        if side == .buy { bids = orders } else { asks = orders }
    }

    func find(_ id: OrderId) -> Order? { bids.first { $0.id == id } ?? asks.first { $0.id == id } }

    func levelCount() -> Int { Set(bids.map(\.price)).count + Set(asks.map(\.price)).count }

    func hasLevel(_ side: Side, _ price: Price) -> Bool { orders(side).contains { $0.price == price } }

    /// `a` is a better price than `b` for `side`.
    static func better(_ side: Side, _ a: Price, _ b: Price) -> Bool { side == .buy ? a > b : a < b }

    mutating func emitLevel(_ side: Side, _ price: Price) {
        let at = orders(side).filter { $0.price == price }
        events.append(.level(side: side, price: price, quantity: at.reduce(0) { $0 + $1.open },
                             orders: Int32(at.count)))
    }

    /// Appends at the back of its price in priority order.
    mutating func rest(_ order: Order) {
        var list = orders(order.side)
        let index = list.firstIndex { Self.better(order.side, order.price, $0.price) } ?? list.count
        list.insert(order, at: index)
        setOrders(order.side, list)
        emitLevel(order.side, order.price)
    }

    func quantityError(_ q: Quantity) -> RejectReason? {
        if q == 0 { return .quantityZero }
        if q < 0 { return .quantityNegative }
        if q % spec.lotSize != 0 { return .quantityOffLot }
        if q > spec.maxOrderQuantity { return .quantityAboveMaximum }
        return nil
    }

    func priceError(_ p: Price) -> RejectReason? {
        if p % spec.tickSize != 0 { return .priceOffTick }
        if p < spec.minPrice || p > spec.maxPrice { return .priceOutsideBand }
        return nil
    }

    func crosses(_ side: Side, _ limit: Price?, _ makerPrice: Price) -> Bool {
        guard let limit else { return true }
        return side == .buy ? makerPrice <= limit : makerPrice >= limit
    }

    mutating func apply(_ command: BookCommand) {
        switch command {
        case .new(let o): submit(o)
        case .cancel(let c): cancel(c.orderId)
        case .replace(let r): replace(r)
        }
    }

    mutating func submit(_ o: NewOrder) {
        let isMarket = o.type == .market
        var reason = quantityError(o.quantity)
        if reason == nil && !isMarket { reason = priceError(o.price) }
        if reason == nil && isMarket && o.timeInForce != .ioc && o.timeInForce != .fok { reason = .marketOrderTimeInForce }
        if reason == nil && find(o.orderId) != nil { reason = .duplicateOrderId }
        let rests = !isMarket && (o.timeInForce == .gtc || o.timeInForce == .postOnly)
        if reason == nil && rests {
            if bids.count + asks.count >= capacity.orders {
                reason = .orderPoolExhausted
            } else if levelCount() >= capacity.levels && !hasLevel(o.side, o.price) {
                reason = .levelPoolExhausted
            }
        }
        let limit: Price? = isMarket ? nil : o.price
        if reason == nil && o.timeInForce == .postOnly,
           let best = orders(o.side.opposite).first, crosses(o.side, limit, best.price) {
            reason = .postOnlyWouldTake
        }
        if reason == nil && o.timeInForce == .fok {
            // Fillable means: matching it (on a copy) trades its whole quantity.
            var trial = self
            trial.events = []
            var remaining = o.quantity
            trial.match(o.orderId, o.account, o.side, limit, &remaining, o.selfTradePrevention)
            var traded: Quantity = 0
            for case .trade(_, _, _, _, let q, _, _) in trial.events { traded += q }
            if traded != o.quantity { reason = .fokNotFillable }
        }
        if let reason {
            events.append(.rejected(orderId: o.orderId, reason: reason))
            return
        }
        events.append(.accepted(orderId: o.orderId, side: o.side, price: isMarket ? 0 : o.price, quantity: o.quantity))
        var remaining = o.quantity
        match(o.orderId, o.account, o.side, limit, &remaining, o.selfTradePrevention)
        guard remaining > 0 else { return }
        if rests {
            rest(Order(id: o.orderId, account: o.account, side: o.side, price: o.price, open: remaining,
                       stp: o.selfTradePrevention))
        } else {
            events.append(.cancelled(orderId: o.orderId, quantity: remaining, open: 0, reason: .iocRemainder))
        }
    }

    mutating func match(_ takerId: OrderId, _ account: AccountId, _ side: Side, _ limit: Price?,
                        _ remaining: inout Quantity, _ stp: SelfTradePrevention) {
        let makerSide = side.opposite
        while remaining > 0 {
            var book = orders(makerSide)
            guard let first = book.first, crosses(side, limit, first.price) else { return }
            let price = first.price
            var touched = false
            var stop = false
            var i = 0
            while i < book.count && book[i].price == price && remaining > 0 {
                let maker = book[i]
                if stp != .none && maker.account == account {
                    switch stp {
                    case .cancelNewest:
                        events.append(.cancelled(orderId: takerId, quantity: remaining, open: 0, reason: .selfTrade))
                        remaining = 0
                        stop = true
                    case .cancelOldest:
                        events.append(.cancelled(orderId: maker.id, quantity: maker.open, open: 0, reason: .selfTrade))
                        book.remove(at: i)
                        touched = true
                    case .cancelBoth:
                        events.append(.cancelled(orderId: maker.id, quantity: maker.open, open: 0, reason: .selfTrade))
                        book.remove(at: i)
                        events.append(.cancelled(orderId: takerId, quantity: remaining, open: 0, reason: .selfTrade))
                        remaining = 0
                        touched = true
                        stop = true
                    case .decrement:
                        let d = min(remaining, maker.open)
                        remaining -= d
                        events.append(.cancelled(orderId: maker.id, quantity: d, open: maker.open - d, reason: .selfTrade))
                        events.append(.cancelled(orderId: takerId, quantity: d, open: remaining, reason: .selfTrade))
                        if maker.open == d { book.remove(at: i) } else { book[i].open -= d; i += 1 }
                        touched = true
                    case .none:
                        break
                    }
                    if stop { break }
                    continue
                }
                let fill = min(remaining, maker.open)
                remaining -= fill
                touched = true
                events.append(.trade(makerId: maker.id, takerId: takerId, takerSide: side, price: price,
                                     quantity: fill, makerOpen: maker.open - fill, takerOpen: remaining))
                if maker.open == fill { book.remove(at: i) } else { book[i].open -= fill; i += 1 }
            }
            setOrders(makerSide, book)
            if touched { emitLevel(makerSide, price) }
            if hasLevel(makerSide, price) || stop { return }
        }
    }

    mutating func remove(_ id: OrderId) -> Order? {
        if let i = bids.firstIndex(where: { $0.id == id }) { return bids.remove(at: i) }
        if let i = asks.firstIndex(where: { $0.id == id }) { return asks.remove(at: i) }
        return nil
    }

    mutating func cancel(_ id: OrderId) {
        guard let order = remove(id) else {
            events.append(.rejected(orderId: id, reason: .unknownOrderId))
            return
        }
        events.append(.cancelled(orderId: id, quantity: order.open, open: 0, reason: .user))
        emitLevel(order.side, order.price)
    }

    mutating func replace(_ r: ReplaceOrder) {
        guard var order = find(r.orderId) else {
            events.append(.rejected(orderId: r.orderId, reason: .unknownOrderId))
            return
        }
        if let reason = quantityError(r.quantity) ?? priceError(r.price) {
            events.append(.rejected(orderId: r.orderId, reason: reason))
            return
        }
        if r.price == order.price {
            if r.quantity <= order.open {
                events.append(.replaced(orderId: r.orderId, price: r.price, quantity: r.quantity, keptPriority: true))
                if r.quantity != order.open {
                    var list = orders(order.side)
                    let i = list.firstIndex { $0.id == r.orderId }!
                    list[i].open = r.quantity
                    setOrders(order.side, list)
                    emitLevel(order.side, order.price)
                }
            } else {
                events.append(.replaced(orderId: r.orderId, price: r.price, quantity: r.quantity, keptPriority: false))
                _ = remove(r.orderId)
                order.open = r.quantity
                var list = orders(order.side)
                let index = list.firstIndex { Self.better(order.side, order.price, $0.price) } ?? list.count
                list.insert(order, at: index)
                setOrders(order.side, list)
                emitLevel(order.side, order.price)
            }
            return
        }
        if levelCount() >= capacity.levels && !hasLevel(order.side, r.price) {
            events.append(.rejected(orderId: r.orderId, reason: .levelPoolExhausted))
            return
        }
        events.append(.replaced(orderId: r.orderId, price: r.price, quantity: r.quantity, keptPriority: false))
        _ = remove(r.orderId)
        emitLevel(order.side, order.price)
        var remaining = r.quantity
        match(order.id, order.account, order.side, r.price, &remaining, order.stp)
        if remaining > 0 {
            order.price = r.price
            order.open = remaining
            rest(order)
        }
    }
}
