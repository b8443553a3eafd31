// The real book against the reference model on seeded random command streams, with the
// book's invariants checked after every command.

import OrderBook
import Testing
import Workloads

/// Random commands that reach every rule: all order types and conditions, STP between a few
/// accounts, replaces of every kind, and a share of invalid commands.
struct CommandGenerator {
    var rng: SplitMix64
    let spec: SymbolSpec
    var nextId: OrderId = 1
    var live: [OrderId] = []

    init(seed: UInt64, spec: SymbolSpec) {
        rng = SplitMix64(seed: seed)
        self.spec = spec
    }

    mutating func below(_ n: UInt64) -> UInt64 { rng.next() % n }

    mutating func price() -> Price { spec.tickSize * (200 + Price(below(13)) - 6) }

    mutating func quantity() -> Quantity { spec.lotSize * (1 + Quantity(below(12))) }

    mutating func liveId() -> OrderId {
        if live.isEmpty || below(10) == 0 { return OrderId(below(UInt64(nextId) + 5)) }
        return live[Int(below(UInt64(live.count)))]
    }

    mutating func next() -> BookCommand {
        let roll = below(100)
        let side: Side = below(2) == 0 ? .buy : .sell
        let account = AccountId(below(4))
        let stp: SelfTradePrevention = below(3) == 0 ? .none : SelfTradePrevention.allCases[Int(below(5))]
        func new(_ type: OrderType, _ price: Price, _ qty: Quantity, _ tif: TimeInForce, id: OrderId? = nil) -> BookCommand {
            let orderId = id ?? { defer { nextId += 1 }; return nextId }()
            return .new(NewOrder(orderId: orderId, account: account, side: side, type: type, price: price,
                                 quantity: qty, timeInForce: tif, selfTradePrevention: stp))
        }
        switch roll {
        case 0..<36: return new(.limit, price(), quantity(), .gtc)
        case 36..<43: return new(.limit, price(), quantity(), .ioc)
        case 43..<49: return new(.limit, price(), quantity() * 2, .fok)
        case 49..<55: return new(.limit, price(), quantity(), .postOnly)
        case 55..<61: return new(.market, 0, quantity() * 2, below(3) == 0 ? .fok : .ioc)
        case 61..<79: return .cancel(CancelOrder(orderId: liveId()))
        case 79..<93:
            let id = liveId()
            let p = below(3) == 0 ? price() : spec.tickSize * 200
            return .replace(ReplaceOrder(orderId: id, price: below(2) == 0 ? p : price(), quantity: quantity()))
        default:
            // Invalid on purpose, each a different rule.
            switch below(9) {
            case 0: return new(.limit, price() + 1, quantity(), .gtc)                  // off tick
            case 1: return new(.limit, price(), 0, .gtc)                               // zero
            case 2: return new(.limit, price(), -spec.lotSize, .gtc)                   // negative
            case 3: return new(.limit, price(), quantity() + 1, .gtc)                  // off lot
            case 4: return new(.limit, price(), spec.maxOrderQuantity + spec.lotSize, .gtc) // above max
            case 5: return new(.limit, spec.maxPrice + spec.tickSize, quantity(), .gtc) // outside band
            case 6: return new(.limit, price(), quantity(), .gtc, id: liveId())       // duplicate (mostly)
            case 7: return new(.market, 0, quantity(), .gtc)                           // market GTC
            default: return .replace(ReplaceOrder(orderId: liveId(), price: price() + 1, quantity: quantity()))
            }
        }
    }

    /// Keeps `live` close to the book, so that cancels and replaces mostly hit.
    mutating func observe(_ events: [BookEvent], book: borrowing OrderBook) {
        for event in events {
            if case .accepted(let id, _, _, _) = event { live.append(id) }
        }
        if live.count > 64 || below(16) == 0 { live = live.filter { book.order($0) != nil } }
    }
}

/// Invariant bookkeeping across commands: quantity conservation and arrival stamps per order.
struct PropertyTracker {
    var submitted: [OrderId: Quantity] = [:]
    var traded: [OrderId: Quantity] = [:]
    var cancelled: [OrderId: Quantity] = [:]
    var stamp: [OrderId: Int] = [:]
    var clock = 0

    mutating func record(_ events: [BookEvent], openBefore: Quantity?) {
        for event in events {
            switch event {
            case .accepted(let id, _, _, let q):
                // A new life for this id: reset its accounts.
                submitted[id] = q
                traded[id] = 0
                cancelled[id] = 0
                clock += 1
                stamp[id] = clock
            case .trade(let maker, let taker, _, _, let q, _, _):
                traded[maker, default: 0] += q
                traded[taker, default: 0] += q
            case .cancelled(let id, let q, _, _):
                cancelled[id, default: 0] += q
            case .replaced(let id, _, let q, let kept):
                submitted[id, default: 0] += q - (openBefore ?? 0)
                if !kept {
                    clock += 1
                    stamp[id] = clock
                }
            case .rejected, .level:
                break
            }
        }
    }

    /// Every property; returns the first that fails.
    func check(_ book: borrowing OrderBook, touched: Set<OrderId>) -> String? {
        if let error = book.consistencyError() { return error }
        if let bid = book.bestBid, let ask = book.bestAsk, bid.price >= ask.price {
            return "crossed at rest: \(bid.price) ≥ \(ask.price)"
        }
        var resting: [OrderId: Quantity] = [:]
        for side in Side.allCases {
            let l3 = book.orders(side)
            for order in l3 { resting[order.orderId] = order.open }
            // L2 equals the aggregate of L3, level by level, in order.
            var aggregate: [DepthLevel] = []
            for order in l3 {
                if let last = aggregate.last, last.price == order.price {
                    aggregate[aggregate.count - 1].quantity += order.open
                    aggregate[aggregate.count - 1].orders += 1
                } else {
                    aggregate.append(DepthLevel(price: order.price, quantity: order.open, orders: 1))
                }
            }
            if aggregate != book.depth(side) { return "\(side) L2 differs from the aggregate of L3" }
            // FIFO within a level: arrival stamps increase.
            for (a, b) in zip(l3, l3.dropFirst()) where a.price == b.price {
                if stamp[a.orderId, default: 0] >= stamp[b.orderId, default: 0] {
                    return "FIFO broken at \(a.price): \(a.orderId) before \(b.orderId)"
                }
            }
        }
        // Quantity is conserved for each order the command touched.
        for id in touched where submitted[id] != nil {
            let accounted = traded[id, default: 0] + cancelled[id, default: 0] + resting[id, default: 0]
            if accounted != submitted[id] {
                return "order \(id): submitted \(submitted[id]!), traded + cancelled + resting = \(accounted)"
            }
        }
        return nil
    }
}

@Suite("Differential: the book against a simple reference model")
struct DifferentialTests {
    static let spec = SymbolSpec(name: "DIFF", id: 1, tickSize: 5, lotSize: 2, minPrice: 5 * 190,
                                 maxPrice: 5 * 210, maxOrderQuantity: 60)

    /// 1,000,000 commands in all, over four seeds; two of them with tiny pools so that the
    /// capacity rejects are exercised too.
    @Test("identical event streams and invariants after every command", arguments: [
        (UInt64(1), 400_000, BookCapacity(orders: 4096, levels: 256)),
        (UInt64(2), 400_000, BookCapacity(orders: 4096, levels: 256)),
        (UInt64(3), 100_000, BookCapacity(orders: 24, levels: 6)),
        (UInt64(4), 100_000, BookCapacity(orders: 8, levels: 3)),
    ])
    func differential(seed: UInt64, count: Int, capacity: BookCapacity) throws {
        var book = try OrderBook(spec: Self.spec, capacity: capacity)
        var reference = ReferenceBook(spec: Self.spec, capacity: capacity)
        var generator = CommandGenerator(seed: seed, spec: Self.spec)
        var tracker = PropertyTracker()
        var kinds: [String: Int] = [:]
        for n in 0..<count {
            let command = generator.next()
            var recorder = EventRecorder()
            let openBefore: Quantity? = if case .replace(let r) = command { book.order(r.orderId)?.open } else { nil }
            book.apply(command, to: &recorder)
            reference.events = []
            reference.apply(command)
            guard recorder.events == reference.events else {
                Issue.record("""
                    seed \(seed), command \(n): \(command)
                    book:      \(recorder.events)
                    reference: \(reference.events)
                    """)
                return
            }
            tracker.record(recorder.events, openBefore: openBefore)
            var touched = Set<OrderId>()
            for event in recorder.events {
                switch event {
                case .accepted(let id, _, _, _), .cancelled(let id, _, _, _), .replaced(let id, _, _, _):
                    touched.insert(id)
                case .trade(let maker, let taker, _, _, _, _, _):
                    touched.insert(maker)
                    touched.insert(taker)
                case .rejected(_, let reason):
                    kinds[reason.name, default: 0] += 1
                default:
                    break
                }
                kinds[String(describing: event).prefix { $0 != "(" }.description, default: 0] += 1
            }
            if let failure = tracker.check(book, touched: touched) {
                Issue.record("seed \(seed), command \(n) \(command): \(failure)")
                return
            }
            generator.observe(recorder.events, book: book)
        }
        // The stream really exercised the rules (a generator that drifted would pass vacuously).
        for kind in ["trade", "replaced", "level", "cancelled", "price_off_tick", "quantity_off_lot",
                     "fok_not_fillable", "post_only_would_take", "duplicate_order_id", "unknown_order_id"] {
            #expect(kinds[kind, default: 0] > 0, "seed \(seed): no \(kind) in \(count) commands")
        }
        if capacity.orders < 100 {
            #expect(kinds["order_pool_exhausted", default: 0] + kinds["level_pool_exhausted", default: 0] > 0)
        }
    }
}
