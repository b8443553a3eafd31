// The symbol directory: the static rules of each instrument.

/// The trading rules of one symbol.
public struct SymbolSpec: Sendable, Equatable {
    public var name: String
    public var id: UInt32
    /// Prices must be multiples of this.
    public var tickSize: Price
    /// Quantities must be multiples of this.
    public var lotSize: Quantity
    /// The price band: limit prices outside [minPrice, maxPrice] are rejected.
    public var minPrice: Price
    public var maxPrice: Price
    public var maxOrderQuantity: Quantity

    public static let defaultMaxPrice: Price = 1 << 53
    public static let defaultMaxOrderQuantity: Quantity = 1_000_000_000

    public init(
        name: String, id: UInt32, tickSize: Price = 1, lotSize: Quantity = 1,
        minPrice: Price = 1, maxPrice: Price = SymbolSpec.defaultMaxPrice,
        maxOrderQuantity: Quantity = SymbolSpec.defaultMaxOrderQuantity
    ) {
        self.name = name
        self.id = id
        self.tickSize = tickSize
        self.lotSize = lotSize
        self.minPrice = minPrice
        self.maxPrice = maxPrice
        self.maxOrderQuantity = maxOrderQuantity
    }

    /// Checks that the rules are usable; every problem is named.
    /// The one rule for symbol names, everywhere (config, engine, clients, plugins): 1 to 32
    /// bytes of letters, digits and - _ . / : (no space, no control byte: names travel in
    /// space-separated lists and log lines).
    public static func isValidName(_ name: String) -> Bool {
        let bytes = name.utf8
        return !bytes.isEmpty && bytes.count <= 32 && bytes.allSatisfy { b in
            (b >= 48 && b <= 57) || (b >= 65 && b <= 90) || (b >= 97 && b <= 122) || b == 45 || b == 95 || b == 46 || b == 47 || b == 58
        }
    }

    public func validate() throws(BookConfigError) {
        guard !name.isEmpty else { throw .invalid(symbol: name, "the name is empty") }
        guard Self.isValidName(name) else {
            throw .invalid(symbol: name.debugDescription, "a name is 1 to 32 letters, digits, '-', '_', '.', '/' or ':'")
        }
        guard tickSize > 0 else { throw .invalid(symbol: name, "tick size must be positive, got \(tickSize)") }
        guard lotSize > 0 else { throw .invalid(symbol: name, "lot size must be positive, got \(lotSize)") }
        guard minPrice >= 1 else { throw .invalid(symbol: name, "the band's minimum price must be at least 1, got \(minPrice)") }
        guard maxPrice >= minPrice else {
            throw .invalid(symbol: name, "the band's maximum price \(maxPrice) is below its minimum \(minPrice)")
        }
        // Prices are negated for the ask ladder's keys and summed nowhere; this bound leaves room.
        guard maxPrice <= 1 << 62 else { throw .invalid(symbol: name, "maximum price above 2^62") }
        guard maxOrderQuantity > 0 else {
            throw .invalid(symbol: name, "maximum order quantity must be positive, got \(maxOrderQuantity)")
        }
    }
}

public enum BookConfigError: Error, Equatable, CustomStringConvertible {
    case invalid(symbol: String, String)
    case duplicateSymbol(String)
    case capacity(String)

    public var description: String {
        switch self {
        case .invalid(let symbol, let why): "symbol \(symbol): \(why)"
        case .duplicateSymbol(let name): "symbol \(name) is declared twice"
        case .capacity(let why): "book capacity: \(why)"
        }
    }
}

/// Symbols by name and by id. Built once at start; the hot path uses ids.
public struct SymbolDirectory: Sendable {
    public private(set) var symbols: [SymbolSpec] = []
    private var byName: [String: Int] = [:]

    public init() {}

    public init(_ specs: [SymbolSpec]) throws(BookConfigError) {
        for spec in specs { try add(spec) }
    }

    public mutating func add(_ spec: SymbolSpec) throws(BookConfigError) {
        try spec.validate()
        guard byName[spec.name] == nil else { throw .duplicateSymbol(spec.name) }
        byName[spec.name] = symbols.count
        symbols.append(spec)
    }

    public func spec(named name: String) -> SymbolSpec? { byName[name].map { symbols[$0] } }

    public var count: Int { symbols.count }
}
