// Sequenced admin commands: everything that changes a shard's state other than orders. The
// shard gives each a sequence like an order, journals it (journal record type 2) and applies
// it; recovery replays it through the same code. Little-endian, versioned; the journal frames
// it (length, CRC32C, batch checksum) like every record.
//
//  offset size field
//   0     2    version          1
//   2     2    kind             see `AdminCommand.Kind`
//   4     4    body length      bytes after this header (at most `maxBody`)
//   8     …    body, by kind:
//     epoch              epoch (u64)
//     ingress position   partition (u32), 0 (u32), offset (u64), source length (u16), source (UTF-8)
//     freeze, thaw, drop symbol id (u32)
//     export, import     symbol id (u32), book length (u32), the book (OrderBook.snapshot bytes)
//     export sealed      symbol id (u32), book length (u32), the book's CRC32C (u32)
//     import part        symbol id (u32), total length (u32), offset (u32), part length (u32), part
//     ingress floor      symbol id (u32), partition (u32), offset (u64), source length (u16), source
//     bind source        session (u32), partition (u32), source length (u16), source (UTF-8)
//     unbind source      session (u32)
//     list symbol        slot (u32), home shard (u32), symbol id (u32), tick size, lot size,
//                        min price, max price, max order quantity (i64 each), name length (u16),
//                        name (1 to 32 bytes, SymbolSpec's rule)
//     transfer out       symbol id (u32), book length (u32), the book's CRC32C (u32), route epoch
//                        (u64), instance length (u16), the target instance (1 to 128 bytes)
//     transfer in        symbol id (u32), route epoch (u64), instance length (u16), the source
//                        instance (1 to 128 bytes)
//
// Who uses which: epochs (routing and failover fencing), ingress positions (exactly-once
// Kafka ingress: the position a command came from), freeze/export/import/drop/thaw (moving a
// symbol's book between shards), bind/unbind source (a session whose commands come from one
// ingress partition: each carries its offset, and the shard keeps the last one). The journal record of an admin command is the engine time
// (u64) followed by this record.

public enum AdminCommand: Equatable, Sendable {
    /// The shard's epoch becomes this (it only ever rises).
    case epoch(UInt64)
    /// Commands from `source` (a topic) partition `partition` are applied up to `offset`.
    case ingressPosition(source: String, partition: UInt32, offset: UInt64)
    /// The symbol takes no more commands (each is rejected, `symbol_frozen`).
    case freeze(symbolId: UInt32)
    /// A frozen symbol takes commands again.
    case thaw(symbolId: UInt32)
    /// The symbol's book as it is now, for another shard to import; the symbol is frozen from
    /// here on (if it was not). Live, the shard fills in the book; on replay the journaled book
    /// must equal the replayed one.
    case exportBook(symbolId: UInt32, book: [UInt8])
    /// The symbol's book arrives from another shard: this shard owns it from now on, frozen
    /// until a thaw.
    case importBook(symbolId: UInt32, book: [UInt8])
    /// An export that journals the book by its length and CRC32C only (a migration's: the
    /// source's replay rebuilds the book, so the bytes need not be on its disk; the target
    /// journals them, in parts).
    case exportSealed(symbolId: UInt32, length: UInt32, crc: UInt32)
    /// Part of an import too large for one journal record: bytes `offset ..< offset + part.count`
    /// of a book of `total` bytes. The last part imports the book, as `importBook` does.
    case importPart(symbolId: UInt32, total: UInt32, offset: UInt32, part: [UInt8])
    /// The symbol's commands from `source` partition `partition` below `offset` were applied by
    /// the shard it came from (its position at the export): one of them arriving here again is
    /// a replay of the source (`duplicate_ingress`), whatever this shard's own position.
    case ingressFloor(symbolId: UInt32, source: String, partition: UInt32, offset: UInt64)
    /// This shard no longer owns the (exported) symbol: its book is emptied.
    case drop(symbolId: UInt32)
    /// From now on the commands of `session` come from `source` partition `partition`, each with
    /// its offset in the client sequence field: the shard keeps the last one as that source's
    /// position, and rejects a command whose offset is not after it (applied already).
    case bindSource(session: UInt32, source: String, partition: UInt32)
    /// The session is gone: its id may come back for another client.
    case unbindSource(session: UInt32)
    /// A symbol listed while the engine runs takes slot `slot` of the instance's symbols (the
    /// next one): journaled by every shard, in slot order; its home shard makes its book.
    case listSymbol(Listing)
    /// The symbol's book leaves for another engine (`instance`), its route MIGRATING at `epoch`:
    /// an `exportSealed` that names where it goes. Frozen from here; the route (Redis) decides:
    /// the target's claim commits the move (the source drops), the source's claim undoes it
    /// (the source thaws).
    case transferOut(symbolId: UInt32, length: UInt32, crc: UInt32, epoch: UInt64, instance: String)
    /// The symbol's book arrives from another engine (`instance`) at route epoch `epoch`: the
    /// import (its parts) follows; frozen until this engine wins the route (thaw) or loses it
    /// (drop).
    case transferIn(symbolId: UInt32, epoch: UInt64, instance: String)

    /// A symbol listed at run time: its rules, its slot among the instance's symbols and the
    /// shard that owns it first.
    public struct Listing: Equatable, Sendable {
        public var slot: UInt32
        public var home: UInt32
        public var name: String
        public var id: UInt32
        public var tickSize: Int64
        public var lotSize: Int64
        public var minPrice: Int64
        public var maxPrice: Int64
        public var maxOrderQuantity: Int64

        public init(slot: UInt32, home: UInt32, name: String, id: UInt32, tickSize: Int64, lotSize: Int64,
                    minPrice: Int64, maxPrice: Int64, maxOrderQuantity: Int64) {
            self.slot = slot
            self.home = home
            self.name = name
            self.id = id
            self.tickSize = tickSize
            self.lotSize = lotSize
            self.minPrice = minPrice
            self.maxPrice = maxPrice
            self.maxOrderQuantity = maxOrderQuantity
        }
    }

    public enum Kind: UInt16, Sendable, CaseIterable {
        case epoch = 1
        case ingressPosition = 2
        case freeze = 3
        case thaw = 4
        case exportBook = 5
        case importBook = 6
        case drop = 7
        case bindSource = 8
        case unbindSource = 9
        case exportSealed = 10
        case importPart = 11
        case ingressFloor = 12
        case listSymbol = 13
        case transferOut = 14
        case transferIn = 15
    }

    public var kind: Kind {
        switch self {
        case .epoch: .epoch
        case .ingressPosition: .ingressPosition
        case .freeze: .freeze
        case .thaw: .thaw
        case .exportBook: .exportBook
        case .importBook: .importBook
        case .drop: .drop
        case .bindSource: .bindSource
        case .unbindSource: .unbindSource
        case .exportSealed: .exportSealed
        case .importPart: .importPart
        case .ingressFloor: .ingressFloor
        case .listSymbol: .listSymbol
        case .transferOut: .transferOut
        case .transferIn: .transferIn
        }
    }
}

public enum AdminRecord {
    public static let version: UInt16 = 1
    public static let headerSize = 8
    /// The largest body: a book of a symbol at its largest capacity fits many times over in a
    /// journal batch; past this, refused.
    public static let maxBody = 64 << 20
    public static let maxSourceLength = 200
    public static let maxNameLength = 32
    public static let maxInstanceLength = 128

    public enum Malformed: Error, Equatable, Sendable, CustomStringConvertible {
        case tooShort(Int)
        case version(UInt16)
        case kind(UInt16)
        case length(declared: Int, available: Int)
        case body(AdminCommand.Kind, String)

        public var description: String {
            switch self {
            case .tooShort(let n): "admin record of \(n) bytes, shorter than its header"
            case .version(let v): "admin record version \(v), this build reads \(AdminRecord.version)"
            case .kind(let k): "unknown admin command kind \(k)"
            case .length(let declared, let available): "admin record says \(declared) body bytes, \(available) follow"
            case .body(let kind, let why): "bad \(kind) admin record: \(why)"
            }
        }
    }

    public static func encode(_ command: AdminCommand) -> [UInt8] {
        let (head, tail) = encodeSplit(command)
        guard let tail else { return head }
        return head + tail
    }

    /// The record in two parts whose concatenation is `encode`'s: a book (or part of one) is the
    /// second, not copied, so that a large import goes into the journal in one copy.
    public static func encodeSplit(_ command: AdminCommand) -> (head: [UInt8], tail: [UInt8]?) {
        var body: [UInt8] = []
        var tail: [UInt8]?
        func put<T: FixedWidthInteger>(_ value: T) { withUnsafeBytes(of: value.littleEndian) { body.append(contentsOf: $0) } }
        switch command {
        case .epoch(let epoch):
            put(epoch)
        case .ingressPosition(let source, let partition, let offset):
            let name = Array(source.utf8.prefix(maxSourceLength))
            put(partition)
            put(UInt32(0))
            put(offset)
            put(UInt16(name.count))
            body.append(contentsOf: name)
        case .freeze(let id), .thaw(let id), .drop(let id), .unbindSource(let id):
            put(id)
        case .bindSource(let session, let source, let partition):
            let name = Array(source.utf8.prefix(maxSourceLength))
            put(session)
            put(partition)
            put(UInt16(name.count))
            body.append(contentsOf: name)
        case .exportBook(let id, let book), .importBook(let id, let book):
            put(id)
            put(UInt32(book.count))
            tail = book
        case .exportSealed(let id, let length, let crc):
            put(id)
            put(length)
            put(crc)
        case .ingressFloor(let id, let source, let partition, let offset):
            let name = Array(source.utf8.prefix(maxSourceLength))
            put(id)
            put(partition)
            put(offset)
            put(UInt16(name.count))
            body.append(contentsOf: name)
        case .importPart(let id, let total, let offset, let part):
            put(id)
            put(total)
            put(offset)
            put(UInt32(part.count))
            tail = part
        case .listSymbol(let l):
            let name = Array(l.name.utf8.prefix(maxNameLength))
            put(l.slot)
            put(l.home)
            put(l.id)
            for v in [l.tickSize, l.lotSize, l.minPrice, l.maxPrice, l.maxOrderQuantity] { put(v) }
            put(UInt16(name.count))
            body.append(contentsOf: name)
        case .transferOut(let id, let length, let crc, let epoch, let instance):
            let name = Array(instance.utf8.prefix(maxInstanceLength))
            put(id)
            put(length)
            put(crc)
            put(epoch)
            put(UInt16(name.count))
            body.append(contentsOf: name)
        case .transferIn(let id, let epoch, let instance):
            let name = Array(instance.utf8.prefix(maxInstanceLength))
            put(id)
            put(epoch)
            put(UInt16(name.count))
            body.append(contentsOf: name)
        }
        var out: [UInt8] = []
        out.reserveCapacity(headerSize + body.count)
        withUnsafeBytes(of: version.littleEndian) { out.append(contentsOf: $0) }
        withUnsafeBytes(of: command.kind.rawValue.littleEndian) { out.append(contentsOf: $0) }
        withUnsafeBytes(of: UInt32(body.count + (tail?.count ?? 0)).littleEndian) { out.append(contentsOf: $0) }
        out.append(contentsOf: body)
        return (out, tail)
    }

    public static func decode(_ bytes: UnsafeRawBufferPointer) throws(Malformed) -> AdminCommand {
        guard bytes.count >= headerSize else { throw .tooShort(bytes.count) }
        let version = UInt16(littleEndian: bytes.loadUnaligned(fromByteOffset: 0, as: UInt16.self))
        guard version == Self.version else { throw .version(version) }
        let raw = UInt16(littleEndian: bytes.loadUnaligned(fromByteOffset: 2, as: UInt16.self))
        guard let kind = AdminCommand.Kind(rawValue: raw) else { throw .kind(raw) }
        let length = Int(UInt32(littleEndian: bytes.loadUnaligned(fromByteOffset: 4, as: UInt32.self)))
        guard length <= maxBody, length == bytes.count - headerSize else {
            throw .length(declared: length, available: bytes.count - headerSize)
        }
        let body = UnsafeRawBufferPointer(rebasing: bytes[headerSize...])
        func need(_ n: Int) throws(Malformed) {
            guard body.count == n else { throw .body(kind, "\(body.count) bytes, expected \(n)") }
        }
        func u32(_ at: Int) -> UInt32 { UInt32(littleEndian: body.loadUnaligned(fromByteOffset: at, as: UInt32.self)) }
        func u64(_ at: Int) -> UInt64 { UInt64(littleEndian: body.loadUnaligned(fromByteOffset: at, as: UInt64.self)) }
        switch kind {
        case .epoch:
            try need(8)
            return .epoch(u64(0))
        case .ingressPosition:
            guard body.count >= 18 else { throw .body(kind, "\(body.count) bytes, fewer than 18") }
            let count = Int(UInt16(littleEndian: body.loadUnaligned(fromByteOffset: 16, as: UInt16.self)))
            try need(18 + count)
            guard count <= maxSourceLength, u32(4) == 0 else { throw .body(kind, "source length \(count) or reserved bytes") }
            guard let source = String(validating: body[18...], as: UTF8.self), !source.isEmpty else {
                throw .body(kind, "the source is not a name in UTF-8")
            }
            return .ingressPosition(source: source, partition: u32(0), offset: u64(8))
        case .bindSource:
            guard body.count >= 10 else { throw .body(kind, "\(body.count) bytes, fewer than 10") }
            let count = Int(UInt16(littleEndian: body.loadUnaligned(fromByteOffset: 8, as: UInt16.self)))
            try need(10 + count)
            guard count <= maxSourceLength else { throw .body(kind, "source length \(count)") }
            guard let source = String(validating: body[10...], as: UTF8.self), !source.isEmpty else {
                throw .body(kind, "the source is not a name in UTF-8")
            }
            return .bindSource(session: u32(0), source: source, partition: u32(4))
        case .unbindSource:
            try need(4)
            return .unbindSource(session: u32(0))
        case .freeze, .thaw, .drop:
            try need(4)
            let id = u32(0)
            return kind == .freeze ? .freeze(symbolId: id) : kind == .thaw ? .thaw(symbolId: id) : .drop(symbolId: id)
        case .exportBook, .importBook:
            guard body.count >= 8 else { throw .body(kind, "\(body.count) bytes, fewer than 8") }
            let count = Int(u32(4))
            try need(8 + count)
            let book = Array(body[8...])
            return kind == .exportBook ? .exportBook(symbolId: u32(0), book: book) : .importBook(symbolId: u32(0), book: book)
        case .exportSealed:
            try need(12)
            return .exportSealed(symbolId: u32(0), length: u32(4), crc: u32(8))
        case .ingressFloor:
            guard body.count >= 18 else { throw .body(kind, "\(body.count) bytes, fewer than 18") }
            let count = Int(UInt16(littleEndian: body.loadUnaligned(fromByteOffset: 16, as: UInt16.self)))
            try need(18 + count)
            guard count <= maxSourceLength, let source = String(validating: body[18...], as: UTF8.self), !source.isEmpty else {
                throw .body(kind, "the source is not a name in UTF-8")
            }
            return .ingressFloor(symbolId: u32(0), source: source, partition: u32(4), offset: u64(8))
        case .importPart:
            guard body.count >= 16 else { throw .body(kind, "\(body.count) bytes, fewer than 16") }
            let total = u32(4), offset = u32(8), count = Int(u32(12))
            try need(16 + count)
            guard count > 0, UInt64(offset) + UInt64(count) <= UInt64(total) else {
                throw .body(kind, "part \(offset) + \(count) outside a book of \(total) bytes")
            }
            return .importPart(symbolId: u32(0), total: total, offset: offset, part: Array(body[16...]))
        case .listSymbol:
            guard body.count >= 54 else { throw .body(kind, "\(body.count) bytes, fewer than 54") }
            let count = Int(UInt16(littleEndian: body.loadUnaligned(fromByteOffset: 52, as: UInt16.self)))
            try need(54 + count)
            guard count >= 1, count <= maxNameLength, let name = String(validating: body[54...], as: UTF8.self) else {
                throw .body(kind, "the name is not 1 to \(maxNameLength) bytes of UTF-8")
            }
            func i64(_ at: Int) -> Int64 { Int64(bitPattern: u64(at)) }
            return .listSymbol(AdminCommand.Listing(slot: u32(0), home: u32(4), name: name, id: u32(8), tickSize: i64(12), lotSize: i64(20),
                                                    minPrice: i64(28), maxPrice: i64(36), maxOrderQuantity: i64(44)))
        case .transferOut, .transferIn:
            let fixed = kind == .transferOut ? 20 : 12
            guard body.count >= fixed + 2 else { throw .body(kind, "\(body.count) bytes, fewer than \(fixed + 2)") }
            let count = Int(UInt16(littleEndian: body.loadUnaligned(fromByteOffset: fixed, as: UInt16.self)))
            try need(fixed + 2 + count)
            guard count >= 1, count <= maxInstanceLength, let instance = String(validating: body[(fixed + 2)...], as: UTF8.self) else {
                throw .body(kind, "the instance is not 1 to \(maxInstanceLength) bytes of UTF-8")
            }
            return kind == .transferOut
                ? .transferOut(symbolId: u32(0), length: u32(4), crc: u32(8), epoch: u64(12), instance: instance)
                : .transferIn(symbolId: u32(0), epoch: u64(4), instance: instance)
        }
    }

    /// One line for `crossbook journal dump`.
    public static func describe(_ command: AdminCommand) -> String {
        switch command {
        case .epoch(let e): "admin epoch \(e)"
        case .ingressPosition(let source, let partition, let offset): "admin ingress-position \(source)#\(partition) offset \(offset)"
        case .freeze(let id): "admin freeze symbol \(id)"
        case .thaw(let id): "admin thaw symbol \(id)"
        case .exportBook(let id, let book): "admin export symbol \(id), book of \(book.count) bytes"
        case .importBook(let id, let book): "admin import symbol \(id), book of \(book.count) bytes"
        case .drop(let id): "admin drop symbol \(id)"
        case .exportSealed(let id, let length, let crc): "admin export symbol \(id), book of \(length) bytes, crc32c \(String(crc, radix: 16))"
        case .ingressFloor(let id, let source, let partition, let offset): "admin ingress-floor symbol \(id) \(source)#\(partition) below \(offset)"
        case .importPart(let id, let total, let offset, let part): "admin import symbol \(id), bytes \(offset)..<\(offset + UInt32(part.count)) of \(total)"
        case .bindSource(let session, let source, let partition): "admin bind session \(session) to source \(source)#\(partition)"
        case .unbindSource(let session): "admin unbind session \(session)"
        case .transferOut(let id, let length, let crc, let epoch, let instance): "admin transfer-out symbol \(id) to instance \(instance) at route epoch \(epoch), book of \(length) bytes, crc32c \(String(crc, radix: 16))"
        case .transferIn(let id, let epoch, let instance): "admin transfer-in symbol \(id) from instance \(instance) at route epoch \(epoch)"
        case .listSymbol(let l): "admin list symbol \(l.name) id \(l.id) slot \(l.slot) shard \(l.home) tick \(l.tickSize) lot \(l.lotSize) band \(l.minPrice)...\(l.maxPrice) max \(l.maxOrderQuantity)"
        }
    }
}
