// The replay text format: one command a line in, one event a line out.
//
// In:   N,<symbol>,<order_id>,<account>,<B|S>,<LMT|MKT>,<price>,<qty>,<GTC|IOC|FOK|POST>[,<stp>]
//       C,<symbol>,<order_id>
//       R,<symbol>,<order_id>,<new_price>,<new_open_qty>
//       blank lines and lines starting with # are skipped; <stp> is none, cancel-newest,
//       cancel-oldest, cancel-both or decrement.
// Out:  see `TextCodec.format(_:symbol:)` and the README.

import OrderBook

/// A command read from text, with the symbol it names.
public struct TextCommand: Equatable, Sendable {
    public var symbol: String
    public var command: BookCommand

    public init(symbol: String, command: BookCommand) {
        self.symbol = symbol
        self.command = command
    }
}

/// Why a line did not parse: a message meant for the person who wrote the line.
public struct TextParseError: Error, Equatable, CustomStringConvertible {
    public var message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

public enum TextCodec {
    /// Parses one line. Returns nil for blank lines and comments.
    public static func parse(
        _ line: Substring, defaultSelfTradePrevention: SelfTradePrevention = .none
    ) throws(TextParseError) -> TextCommand? {
        var text = line
        if let hash = text.firstIndex(of: "#") { text = text[..<hash] }
        text = trimmed(text)
        if text.isEmpty { return nil }
        let fields = text.split(separator: ",", omittingEmptySubsequences: false).map { trimmed($0) }
        guard let kind = fields.first else { return nil }
        switch kind {
        case "N":
            guard fields.count == 9 || fields.count == 10 else {
                throw TextParseError("N needs 9 or 10 fields (N,symbol,order_id,account,side,type,price,qty,tif[,stp]), got \(fields.count)")
            }
            let symbol = try symbolField(fields[1])
            let id = try int64(fields[2], "order_id")
            guard let account = UInt32(fields[3]) else {
                throw TextParseError("account must be an unsigned 32-bit integer, got '\(fields[3])'")
            }
            let side: Side
            switch fields[4] {
            case "B": side = .buy
            case "S": side = .sell
            default: throw TextParseError("side must be B or S, got '\(fields[4])'")
            }
            let type: OrderType
            switch fields[5] {
            case "LMT": type = .limit
            case "MKT": type = .market
            default: throw TextParseError("type must be LMT or MKT, got '\(fields[5])'")
            }
            let price: Price = type == .market && fields[6].isEmpty ? 0 : try int64(fields[6], "price")
            let quantity = try int64(fields[7], "qty")
            let tif: TimeInForce
            switch fields[8] {
            case "GTC": tif = .gtc
            case "IOC": tif = .ioc
            case "FOK": tif = .fok
            case "POST": tif = .postOnly
            default: throw TextParseError("time in force must be GTC, IOC, FOK or POST, got '\(fields[8])'")
            }
            var stp = defaultSelfTradePrevention
            if fields.count == 10 {
                guard let mode = selfTradePrevention(named: fields[9]) else {
                    throw TextParseError("self-trade prevention must be none, cancel-newest, cancel-oldest, cancel-both or decrement, got '\(fields[9])'")
                }
                stp = mode
            }
            return TextCommand(symbol: symbol, command: .new(NewOrder(
                orderId: id, account: account, side: side, type: type, price: price, quantity: quantity,
                timeInForce: tif, selfTradePrevention: stp)))
        case "C":
            guard fields.count == 3 else { throw TextParseError("C needs 3 fields (C,symbol,order_id), got \(fields.count)") }
            return TextCommand(symbol: try symbolField(fields[1]),
                               command: .cancel(CancelOrder(orderId: try int64(fields[2], "order_id"))))
        case "R":
            guard fields.count == 5 else {
                throw TextParseError("R needs 5 fields (R,symbol,order_id,new_price,new_open_qty), got \(fields.count)")
            }
            return TextCommand(symbol: try symbolField(fields[1]), command: .replace(ReplaceOrder(
                orderId: try int64(fields[2], "order_id"), price: try int64(fields[3], "new_price"),
                quantity: try int64(fields[4], "new_open_qty"))))
        default:
            throw TextParseError("unknown command '\(kind)': expected N, C or R")
        }
    }

    public static func selfTradePrevention(named name: Substring) -> SelfTradePrevention? {
        switch name {
        case "none": SelfTradePrevention.none
        case "cancel-newest": .cancelNewest
        case "cancel-oldest": .cancelOldest
        case "cancel-both": .cancelBoth
        case "decrement": .decrement
        default: nil
        }
    }

    /// One event as one line. A trade is exactly `T,<symbol>,<maker_id>,<taker_id>,<price>,<qty>`.
    public static func format(_ event: BookEvent, symbol: String) -> String {
        switch event {
        case .accepted(let id, let side, let price, let quantity):
            "ACK,\(symbol),\(id),\(side.letter),\(price),\(quantity)"
        case .rejected(let id, let reason):
            "REJ,\(symbol),\(id),\(reason.name)"
        case .trade(let maker, let taker, _, let price, let quantity, _, _):
            "T,\(symbol),\(maker),\(taker),\(price),\(quantity)"
        case .cancelled(let id, let quantity, let open, let reason):
            "CXL,\(symbol),\(id),\(quantity),\(open),\(reason.name)"
        case .replaced(let id, let price, let quantity, let kept):
            "RPL,\(symbol),\(id),\(price),\(quantity),\(kept ? "kept" : "lost")"
        case .level(let side, let price, let quantity, let orders):
            "L2,\(symbol),\(side.letter),\(price),\(quantity),\(orders)"
        }
    }

    private static func trimmed(_ s: Substring) -> Substring {
        var t = s
        while let f = t.first, f == " " || f == "\t" || f == "\r" { t = t.dropFirst() }
        while let l = t.last, l == " " || l == "\t" || l == "\r" { t = t.dropLast() }
        return t
    }

    private static func symbolField(_ s: Substring) throws(TextParseError) -> String {
        guard !s.isEmpty else { throw TextParseError("symbol is empty") }
        guard SymbolSpec.isValidName(String(s)) else {
            throw TextParseError("symbol must be 1 to 32 letters, digits, '-', '_', '.', '/' or ':', got '\(s)'")
        }
        return String(s)
    }

    private static func int64(_ s: Substring, _ name: String) throws(TextParseError) -> Int64 {
        guard let value = Int64(s) else { throw TextParseError("\(name) must be a 64-bit integer, got '\(s)'") }
        return value
    }
}

extension Side {
    /// B or S, as in the text format.
    public var letter: String { self == .buy ? "B" : "S" }
}
