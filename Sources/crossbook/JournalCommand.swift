// `crossbook journal verify|dump|truncate`: operators' tools for a shard's journal segments.
import ArgumentParser
import Journal
import OrderBook
import Wire

struct JournalCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "journal",
        abstract: "Check, print or repair a shard's journal.",
        subcommands: [Verify.self, Dump.self, Truncate.self])

    struct Location: ParsableArguments {
        @Argument(help: "The directory holding the journal segments.")
        var directory: String

        @Option(help: "The shard whose journal to read.")
        var shard: Int = 0
    }

    struct Verify: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Check every record's framing, CRC32C and sequence, and every batch's checksum and chain; change nothing.")
        @OptionGroup var location: Location

        func run() throws {
            let scan: JournalScan
            do {
                scan = try JournalReader.scan(directory: location.directory, shard: location.shard, repair: false) { _, _, _ in }
            } catch {
                throw CLIError("\(error)")
            }
            print("\(scan.records) records, sequences \(scan.firstSequence)...\(scan.lastSequence), "
                  + "\(JournalReader.segments(directory: location.directory, shard: location.shard).count) segment(s)")
            if let unfinished = scan.unfinishedSegment {
                print("\(unfinished): a segment whose creation never completed (no header, no record): `crossbook journal truncate` removes it")
            }
            if let torn = scan.truncated {
                throw CLIError("torn last batch at \(torn.path) offset \(torn.offset) (never acknowledged): run `crossbook journal truncate` to cut it")
            }
        }
    }

    struct Dump: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Print each record: sequence, type, length, then the command or admin command decoded (or its first bytes).")
        @OptionGroup var location: Location

        func run() throws {
            do {
                _ = try JournalReader.scan(directory: location.directory, shard: location.shard, repair: false) { type, sequence, bytes in
                    print("\(sequence) type \(type) \(bytes.count) bytes \(Self.describe(type: type, bytes))")
                }
            } catch {
                throw CLIError("\(error)")
            }
        }

        /// A command in the replay text format, the symbol as #<id> (the journal holds ids).
        static func line(_ d: CommandRecord.Decoded) -> String {
            let symbol = "#\(d.symbolId)"
            switch d.command {
            case .new(let o):
                let tif = ["GTC", "IOC", "FOK", "POST"][Int(o.timeInForce.rawValue) % 4]
                let stp = ["none", "cancel-newest", "cancel-oldest", "cancel-both", "decrement"][Int(o.selfTradePrevention.rawValue) % 5]
                return "N,\(symbol),\(o.orderId),\(o.account),\(o.side == .buy ? "B" : "S"),\(o.type == .limit ? "LMT" : "MKT"),"
                    + "\(o.type == .limit ? String(o.price) : ""),\(o.quantity),\(tif),\(stp)"
            case .cancel(let c):
                return "C,\(symbol),\(c.orderId)"
            case .replace(let r):
                return "R,\(symbol),\(r.orderId),\(r.price),\(r.quantity)"
            }
        }

        /// Type 1: session, engine time and the command; type 2: the admin command; else bytes.
        static func describe(type: UInt16, _ bytes: UnsafeRawBufferPointer) -> String {
            if type == 1, bytes.count == 80 {
                let session = UInt32(littleEndian: bytes.loadUnaligned(fromByteOffset: 64, as: UInt32.self))
                let time = UInt64(littleEndian: bytes.loadUnaligned(fromByteOffset: 72, as: UInt64.self))
                let command: String
                do { command = line(try CommandRecord.decode(bytes.baseAddress!)) } catch { command = "malformed (\(error))" }
                return "session \(session) engine time \(time): \(command)"
            }
            if type == 2, bytes.count >= 8 {
                let time = UInt64(littleEndian: bytes.loadUnaligned(as: UInt64.self))
                do {
                    return "engine time \(time): \(AdminRecord.describe(try AdminRecord.decode(UnsafeRawBufferPointer(rebasing: bytes[8...]))))"
                } catch {
                    return "malformed admin record (\(error))"
                }
            }
            let head = bytes.prefix(16).map { String($0, radix: 16).count == 1 ? "0" + String($0, radix: 16) : String($0, radix: 16) }
            return head.joined(separator: " ") + (bytes.count > 16 ? " …" : "")
        }
    }

    struct Truncate: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Cut a torn last batch (it and everything after it zeroed and synced); refuse anything else.")
        @OptionGroup var location: Location

        func run() throws {
            do {
                let scan = try JournalReader.scan(directory: location.directory, shard: location.shard, repair: true) { _, _, _ in }
                if let unfinished = scan.unfinishedSegment {
                    print("removed \(unfinished), a segment whose creation never completed")
                }
                if let torn = scan.truncated {
                    print("cut the torn last batch at \(torn.path) offset \(torn.offset); the journal ends at sequence \(scan.lastSequence)")
                } else {
                    print("nothing to cut; the journal ends at sequence \(scan.lastSequence)")
                }
            } catch {
                throw CLIError("\(error)")
            }
        }
    }
}
