// The replay text format: what parses, what is refused and why, and the event lines.
import OrderBook
import Testing
import Wire

@Suite("Text codec")
struct TextCodecTests {
    @Test("a new limit order line parses field by field")
    func newLimit() throws {
        let parsed = try TextCodec.parse("N,BTC-USD,42,7,B,LMT,10010,5,GTC")
        #expect(parsed == TextCommand(symbol: "BTC-USD", command: .new(NewOrder(
            orderId: 42, account: 7, side: .buy, type: .limit, price: 10010, quantity: 5, timeInForce: .gtc))))
    }

    @Test("market, IOC, FOK, post-only and an explicit STP mode")
    func variants() throws {
        let m = try TextCodec.parse("N,X,1,2,S,MKT,0,3,IOC,decrement")
        #expect(m == TextCommand(symbol: "X", command: .new(NewOrder(
            orderId: 1, account: 2, side: .sell, type: .market, price: 0, quantity: 3, timeInForce: .ioc,
            selfTradePrevention: .decrement))))
        let p = try TextCodec.parse("N,X,1,2,S,LMT,5,3,POST", defaultSelfTradePrevention: .cancelBoth)
        if case .new(let order) = p?.command {
            #expect(order.timeInForce == .postOnly)
            #expect(order.selfTradePrevention == .cancelBoth)
        } else {
            Issue.record("not a new order: \(String(describing: p))")
        }
        let f = try TextCodec.parse("N,X,1,2,S,LMT,5,3,FOK,none", defaultSelfTradePrevention: .decrement)
        guard case .new(let fok) = f?.command else {
            Issue.record("not a new order: \(String(describing: f))")
            return
        }
        #expect(fok.selfTradePrevention == SelfTradePrevention.none)
    }

    @Test("cancel and replace lines")
    func cancelReplace() throws {
        #expect(try TextCodec.parse("C,ETH,9") == TextCommand(symbol: "ETH", command: .cancel(CancelOrder(orderId: 9))))
        #expect(try TextCodec.parse(" R , ETH , 9 , 100 , 4 ") ==
                TextCommand(symbol: "ETH", command: .replace(ReplaceOrder(orderId: 9, price: 100, quantity: 4))))
    }

    @Test("blank lines and comments are skipped")
    func comments() throws {
        #expect(try TextCodec.parse("") == nil)
        #expect(try TextCodec.parse("   # a comment") == nil)
        #expect(try TextCodec.parse("C,ETH,9 # trailing comment") != nil)
    }

    @Test("malformed lines are refused with a reason naming the field", arguments: [
        ("N,X,1,2,B,LMT,5,3", "9 or 10 fields"),
        ("N,X,one,2,B,LMT,5,3,GTC", "order_id"),
        ("N,X,1,-2,B,LMT,5,3,GTC", "account"),
        ("N,X,1,2,Q,LMT,5,3,GTC", "side"),
        ("N,X,1,2,B,STOP,5,3,GTC", "type"),
        ("N,X,1,2,B,LMT,5.5,3,GTC", "price"),
        ("N,X,1,2,B,LMT,5,99999999999999999999,GTC", "qty"),
        ("N,X,1,2,B,LMT,5,3,DAY", "time in force"),
        ("N,X,1,2,B,LMT,5,3,GTC,maybe", "self-trade"),
        ("N,,1,2,B,LMT,5,3,GTC", "symbol"),
        ("C,X", "C needs"),
        ("R,X,1,2", "R needs"),
        ("Z,X,1", "unknown command"),
    ])
    func malformed(line: String, mention: String) {
        #expect {
            _ = try TextCodec.parse(Substring(line))
        } throws: { error in
            (error as? TextParseError)?.message.contains(mention) == true
        }
    }

    @Test("a trade is printed exactly as T,symbol,maker,taker,price,qty")
    func tradeLine() {
        let line = TextCodec.format(.trade(makerId: 1, takerId: 6, takerSide: .buy, price: 10010, quantity: 5,
                                           makerOpen: 0, takerOpen: 5), symbol: "BTC-USD")
        #expect(line == "T,BTC-USD,1,6,10010,5")
        #expect(TextCodec.format(.rejected(orderId: 3, reason: .quantityZero), symbol: "E") == "REJ,E,3,quantity_zero")
    }
}
