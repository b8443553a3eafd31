// A book exported to bytes and restored is the same book: same digest, same L3, and the same
// events for every command that follows. A snapshot that lies is refused.
import OrderBook
import Testing
import Workloads

@Suite("Book snapshots")
struct SnapshotTests {
    static let spec = DifferentialTests.spec

    /// `commands` of the generator applied to `book`, the generator following its events.
    static func churn(_ book: inout OrderBook, _ generator: inout CommandGenerator, commands: Int) {
        for _ in 0..<commands {
            var recorder = EventRecorder()
            book.apply(generator.next(), to: &recorder)
            generator.observe(recorder.events, book: book)
        }
    }

    @Test("version-1 and version-2 snapshots (checksums byte by byte and in one chain of words, as written before) still restore to the same book; a version 4 is refused")
    func versionOne() throws {
        let capacity = BookCapacity(orders: 4096, levels: 256)
        var book = try OrderBook(spec: Self.spec, capacity: capacity)
        var sink = EventRecorder()
        for id in 1...200 {
            book.apply(.new(NewOrder(orderId: OrderId(id), side: id % 2 == 0 ? .buy : .sell,
                                     price: 1000 + Int64(id % 7) * (id % 2 == 0 ? -1 : 1) * 10, quantity: 5)), to: &sink)
        }
        var bytes = book.snapshot()
        #expect(bytes[8] == 3, "written as version 3")
        func resum(_ version: UInt32) {
            withUnsafeBytes(of: version.littleEndian) { bytes.replaceSubrange(8..<12, with: $0) }
            let sum = bytes.withUnsafeBytes { BookSnapshotLayout.checksum(UnsafeRawBufferPointer(rebasing: $0[..<(bytes.count - 8)]), version: version) }
            withUnsafeBytes(of: sum.littleEndian) { bytes.replaceSubrange((bytes.count - 8)..., with: $0) }
        }
        resum(2)
        let two = try OrderBook.restoring(spec: Self.spec, capacity: capacity, from: bytes)
        #expect(two.digest == book.digest)
        // The checksums differ: a version-2 checksum under a version-3 header is refused.
        withUnsafeBytes(of: UInt32(3).littleEndian) { bytes.replaceSubrange(8..<12, with: $0) }
        #expect(throws: BookSnapshotError.checksum) { _ = try OrderBook.restoring(spec: Self.spec, capacity: capacity, from: bytes) }
        resum(1)
        let old = try OrderBook.restoring(spec: Self.spec, capacity: capacity, from: bytes)
        #expect(old.digest == book.digest)
        // A version-1 checksum under a version-2 header is refused.
        withUnsafeBytes(of: UInt32(2).littleEndian) { bytes.replaceSubrange(8..<12, with: $0) }
        #expect(throws: BookSnapshotError.checksum) { _ = try OrderBook.restoring(spec: Self.spec, capacity: capacity, from: bytes) }
        resum(4)
        #expect(throws: BookSnapshotError.badHeader("version 4")) { _ = try OrderBook.restoring(spec: Self.spec, capacity: capacity, from: bytes) }
    }

    @Test("restore(snapshot(book)) and clone(of: book) behave exactly like book: same digest, snapshot and L3, the same events for every command that follows; the book cloned is unchanged; books not made alike cannot be cloned", arguments: [UInt64(11), 12, 13])
    func clone(seed: UInt64) throws {
        let capacity = BookCapacity(orders: 4096, levels: 256)
        var book = try OrderBook(spec: Self.spec, capacity: capacity)
        var generator = CommandGenerator(seed: seed, spec: Self.spec)
        Self.churn(&book, &generator, commands: 20_000)
        #expect(book.restingOrderCount > 0)
        let before = book.snapshot()
        var copy = try OrderBook(spec: Self.spec, capacity: capacity)
        let alike = copy.canClone(book)
        #expect(alike)
        copy.clone(of: book)
        #expect(book.snapshot() == before, "the source changed")
        var restored = try OrderBook.restoring(spec: Self.spec, capacity: capacity, from: before)
        #expect(copy.snapshot() == before && copy.digest == book.digest && restored.digest == book.digest)
        #expect(copy.orders(.buy) == book.orders(.buy) && copy.orders(.sell) == book.orders(.sell))
        #expect(restored.orders(.buy) == book.orders(.buy) && restored.orders(.sell) == book.orders(.sell))
        #expect(copy.consistencyError() == nil && restored.consistencyError() == nil)
        for n in 0..<10_000 {
            let command = generator.next()
            var a = EventRecorder(), b = EventRecorder(), c = EventRecorder()
            book.apply(command, to: &a)
            copy.apply(command, to: &b)
            restored.apply(command, to: &c)
            guard a.events == b.events, b.events == c.events else {
                Issue.record("seed \(seed), command \(n) after clone: \(a.events) vs \(b.events) vs \(c.events)")
                return
            }
            generator.observe(a.events, book: book)
        }
        #expect(copy.digest == book.digest && restored.digest == book.digest && copy.consistencyError() == nil)
        // Not alike, or used: no clone.
        let used = copy.canClone(book)
        #expect(!used, "a used book")
        let bigger = try OrderBook(spec: Self.spec, capacity: BookCapacity(orders: 8192, levels: 256)).canClone(book)
        #expect(!bigger, "other sizes")
        var other = Self.spec
        other.id += 1
        let another = try OrderBook(spec: other, capacity: capacity).canClone(book)
        #expect(!another, "another symbol")
        let pools = try BookPools(orders: 4096, levels: 256)
        let sharing = try OrderBook(spec: Self.spec, pools: pools, levels: 256).canClone(book)
        #expect(!sharing, "shared pools")
    }

    @Test("an empty book round-trips")
    func empty() throws {
        let book = try OrderBook(spec: Self.spec, capacity: .small)
        let copy = try OrderBook.restoring(spec: Self.spec, capacity: .small, from: book.snapshot())
        #expect(copy.restingOrderCount == 0 && copy.digest == book.digest)
    }

    @Test("a snapshot that lies is refused: checksum, size, symbol, capacity, order")
    func refused() throws {
        var book = try OrderBook(spec: Self.spec, capacity: .small)
        var sink = DiscardingSink()
        book.submit(NewOrder(orderId: 1, side: .buy, price: 5 * 199, quantity: 2), to: &sink)
        book.submit(NewOrder(orderId: 2, side: .buy, price: 5 * 198, quantity: 2), to: &sink)
        book.submit(NewOrder(orderId: 3, side: .sell, price: 5 * 201, quantity: 4), to: &sink)
        let good = book.snapshot()
        var flipped = good
        flipped[40] ^= 1
        #expect(throws: BookSnapshotError.checksum) { _ = try OrderBook.restoring(spec: Self.spec, capacity: .small, from: flipped) }
        #expect(throws: BookSnapshotError.self) {
            _ = try OrderBook.restoring(spec: Self.spec, capacity: .small, from: Array(good.dropLast(8)))
        }
        var other = Self.spec
        other.id = 99
        #expect(throws: BookSnapshotError.self) { _ = try OrderBook.restoring(spec: other, capacity: .small, from: good) }
        #expect(throws: BookSnapshotError.self) {
            _ = try OrderBook.restoring(spec: Self.spec, capacity: BookCapacity(orders: 2, levels: 8), from: good)
        }
        // Swap the two bids (out of priority order) and fix the checksum: still refused.
        var swapped = good
        let a = 32, b = 64
        for k in 0..<32 { swapped.swapAt(a + k, b + k) }
        let sum = swapped.withUnsafeBytes { BookSnapshotLayout.checksum(UnsafeRawBufferPointer(rebasing: $0[0..<(32 + 3 * 32)]), version: BookSnapshotLayout.version) }
        withUnsafeBytes(of: sum.littleEndian) { for k in 0..<8 { swapped[32 + 3 * 32 + k] = $0[k] } }
        #expect(throws: BookSnapshotError.invalidOrder(index: 1, "out of priority order")) {
            _ = try OrderBook.restoring(spec: Self.spec, capacity: .small, from: swapped)
        }
        // An order id below 1 (a negative one would index outside the engine's session table by
        // its top bits), its checksum fixed: refused by a restore and by a rewrite of the ids
        // (a move between engines), before the rewrite's transform sees it.
        for bad: Int64 in [0, -1, Int64.min] {
            var negative = good
            withUnsafeBytes(of: bad.littleEndian) { for k in 0..<8 { negative[64 + k] = $0[k] } }
            let fixed = negative.withUnsafeBytes { BookSnapshotLayout.checksum(UnsafeRawBufferPointer(rebasing: $0[0..<(32 + 3 * 32)]), version: BookSnapshotLayout.version) }
            withUnsafeBytes(of: fixed.littleEndian) { for k in 0..<8 { negative[32 + 3 * 32 + k] = $0[k] } }
            #expect(throws: BookSnapshotError.invalidOrder(index: 1, "order id \(bad), below 1")) {
                _ = try OrderBook.restoring(spec: Self.spec, capacity: .small, from: negative)
            }
            var seen: [OrderId] = []
            #expect(throws: BookSnapshotError.invalidOrder(index: 1, "order id \(bad), below 1")) {
                _ = try BookSnapshotLayout.rewritingOrderIds(negative) { _, id in seen.append(id); return id }
            }
            #expect(seen == [1])
        }
        // An order count above Int.max (its conversion trapped a move's rewrite), and one that
        // does not fit the bytes: refused with the count named.
        for count: UInt64 in [0x8400_0000_0000_0000, 4] {
            var huge = good
            withUnsafeBytes(of: count.littleEndian) { for k in 0..<8 { huge[16 + k] = $0[k] } }
            #expect(throws: BookSnapshotError.badHeader("\(count) orders in \(good.count) bytes")) {
                _ = try BookSnapshotLayout.rewritingOrderIds(huge) { _, id in id }
            }
            #expect(throws: BookSnapshotError.self) { _ = try OrderBook.restoring(spec: Self.spec, capacity: .small, from: huge) }
        }
        // Random bytes never trap.
        var rng = SplitMix64(seed: 3)
        for _ in 0..<2000 {
            var noise = good
            for _ in 0..<3 { noise[Int(rng.next() % UInt64(noise.count))] = UInt8(truncatingIfNeeded: rng.next()) }
            _ = try? OrderBook.restoring(spec: Self.spec, capacity: .small, from: noise)
        }
    }
}
