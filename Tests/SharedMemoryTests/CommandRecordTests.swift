// 64-byte command records: every command survives a round trip; random bytes never trap.
import OrderBook
import Testing
import Wire
import Workloads

@Suite("Command records")
struct CommandRecordTests {
    @Test("every command round-trips through 64 bytes")
    func roundTrip() throws {
        var rng = SplitMix64(seed: 5)
        var buffer = [UInt8](repeating: 0xAA, count: 64)
        for _ in 0..<100_000 {
            let pick = rng.next() % 3
            let id = Int64(bitPattern: rng.next())
            let command: BookCommand
            switch pick {
            case 0:
                let type: OrderType = rng.next() & 1 == 0 ? .limit : .market
                command = .new(NewOrder(
                    orderId: id, account: UInt32(truncatingIfNeeded: rng.next()), side: rng.next() & 1 == 0 ? .buy : .sell,
                    type: type, price: type == .market ? 0 : Int64(bitPattern: rng.next()),
                    quantity: Int64(bitPattern: rng.next()),
                    timeInForce: TimeInForce(rawValue: UInt8(rng.next() % 4))!,
                    selfTradePrevention: SelfTradePrevention(rawValue: UInt8(rng.next() % 5))!))
            case 1: command = .cancel(CancelOrder(orderId: id))
            default: command = .replace(ReplaceOrder(orderId: id, price: Int64(bitPattern: rng.next()),
                                                      quantity: Int64(bitPattern: rng.next())))
            }
            let record = CommandRecord.Decoded(symbolId: UInt32(truncatingIfNeeded: rng.next()), command: command,
                                               clientTime: rng.next(), clientSequence: rng.next())
            let decoded = try buffer.withUnsafeMutableBytes { raw in
                CommandRecord.encode(record, to: raw.baseAddress!)
                return try CommandRecord.decode(raw.baseAddress!)
            }
            #expect(decoded == record)
        }
    }

    @Test("1,000,000 random records decode or are refused with a reason, never a trap")
    func randomBytes() {
        var rng = SplitMix64(seed: 77)
        var buffer = [UInt64](repeating: 0, count: 8)
        var refused = [CommandRecord.Malformed: Int]()
        var decoded = 0
        for i in 0..<1_000_000 {
            for k in 0..<8 { buffer[k] = rng.next() }
            // Half the time, make the header plausible so that the deeper checks run too.
            if i % 2 == 0 {
                buffer[0] = buffer[0] & 0xFFFF_0707_0707_0000 & 0x0000_FFFF_FFFF_FFFF | 0x01 | UInt64(1 + i % 3) << 8
                buffer[7] = 0
            }
            buffer.withUnsafeBytes { raw in
                do throws(CommandRecord.Malformed) {
                    _ = try CommandRecord.decode(raw.baseAddress!)
                    decoded += 1
                } catch {
                    refused[error, default: 0] += 1
                }
            }
        }
        #expect(decoded + refused.values.reduce(0, +) == 1_000_000)
        #expect(refused[.version, default: 0] > 0)
        #expect(refused[.side, default: 0] > 0 || refused[.timeInForce, default: 0] > 0)
    }

    @Test("each malformed field is named", arguments: [
        (0, UInt64(0x02), CommandRecord.Malformed.version),
        (0, UInt64(0x0901), .type),
        (0, UInt64(0x07_0101), .side),
        (0, UInt64(0x0700_0101), .orderType),
        (0, UInt64(0x09_0000_0101), .timeInForce),
        (0, UInt64(0x0900_0000_0101), .selfTradePrevention),
        (0, UInt64(0x0001_0000_0000_0101), .reservedNotZero),
        (0, UInt64(0x0001_0000_0000_0201), .reservedNotZero),
        (0, UInt64(0x01_0201), .unusedFieldNotZero),
    ])
    func malformed(word: Int, value: UInt64, reason: CommandRecord.Malformed) {
        var buffer = [UInt64](repeating: 0, count: 8)
        buffer[word] = value.littleEndian
        buffer.withUnsafeBytes { raw in
            #expect(throws: reason) { _ = try CommandRecord.decode(raw.baseAddress!) }
        }
    }
}
