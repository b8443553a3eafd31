// `crossbook journal verify|dump|truncate`: operators' tools for a shard's journal segments.
import ArgumentParser
import Foundation
import Glibc
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

        /// Where a scan starts: before the journal's first kept record (the segments before it
        /// may have been removed after a snapshot, [engine] prune_journal).
        var scanAfter: UInt64 { (JournalReader.firstKept(directory: directory, shard: shard) ?? 1) - 1 }

        /// A missing directory, or one without a segment of the shard, is an error (exit 1), not
        /// an empty journal.
        func check() throws {
            var info = stat()
            guard stat(directory, &info) == 0 else {
                throw CLIError("\(directory): \(String(cString: strerror(errno)))")
            }
            guard info.st_mode & S_IFMT == S_IFDIR else { throw CLIError("\(directory) is not a directory") }
            guard !JournalReader.segments(directory: directory, shard: shard).isEmpty else {
                throw CLIError("no journal segment of shard \(shard) in \(directory)")
            }
        }
    }

    struct Verify: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Check every record's framing, CRC32C and sequence, and every batch's checksum and chain; change nothing.")
        @OptionGroup var location: Location

        func run() throws {
            try location.check()
            let scan: JournalScan
            do {
                scan = try JournalReader.scan(directory: location.directory, shard: location.shard, repair: false,
                                              after: location.scanAfter) { _, _, _ in }
            } catch {
                throw CLIError("\(error)")
            }
            print("\(scan.records) records, sequences \(scan.firstSequence)...\(scan.lastSequence), "
                  + "\(JournalReader.segments(directory: location.directory, shard: location.shard).count) segment(s)"
                  + (location.scanAfter > 0 ? " (it starts at \(location.scanAfter + 1): the segments before were removed after a snapshot)" : ""))
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

        @Option(help: "Only records at or after this sequence.")
        var from: UInt64?

        @Option(help: "Only records at or before this sequence.")
        var to: UInt64?

        @Option(help: "Only records whose engine time is at or after this (ISO 8601 UTC, e.g. 2026-11-30T02:00:00Z, or nanoseconds since the epoch).")
        var since: String?

        @Option(help: "Only records whose engine time is at or before this (as --since).")
        var until: String?

        func run() throws {
            try location.check()
            let after = try since.map { try Self.time($0, "--since") }
            let before = try until.map { try Self.time($0, "--until") }
            do {
                _ = try JournalReader.scan(directory: location.directory, shard: location.shard, repair: false,
                                           after: location.scanAfter) { type, sequence, bytes in
                    if let from, sequence < from { return }
                    if let to, sequence > to { return }
                    if after != nil || before != nil {
                        guard let time = Self.engineTime(type: type, bytes) else { return }
                        if let after, time < after { return }
                        if let before, time > before { return }
                    }
                    print("\(sequence) type \(type) \(bytes.count) bytes \(Self.describe(type: type, bytes))")
                }
            } catch {
                throw CLIError("\(error)")
            }
        }

        /// Nanoseconds since the epoch from ISO 8601 UTC (seconds, optional fraction, Z) or digits.
        static func time(_ text: String, _ option: String) throws -> UInt64 {
            if let ns = UInt64(text) { return ns }
            let formatter = ISO8601DateFormatter()
            formatter.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
            let plain = ISO8601DateFormatter()
            // Up to 2500 (nanoseconds since 1970 fit 64 bits until 2554).
            guard let date = formatter.date(from: text) ?? plain.date(from: text), date.timeIntervalSince1970 >= 0,
                  date.timeIntervalSince1970 < 16_725_225_600 else {
                throw ValidationError("\(option) '\(text)': give ISO 8601 UTC between 1970 and 2500 (2026-11-30T02:00:00Z) or nanoseconds since the epoch")
            }
            return UInt64(date.timeIntervalSince1970 * 1e9)
        }

        /// The engine time a record carries (commands and admin records), or nil.
        static func engineTime(type: UInt16, _ bytes: UnsafeRawBufferPointer) -> UInt64? {
            if type == 1, bytes.count == 80 { return UInt64(littleEndian: bytes.loadUnaligned(fromByteOffset: 72, as: UInt64.self)) }
            if type == 2, bytes.count >= 8 { return UInt64(littleEndian: bytes.loadUnaligned(as: UInt64.self)) }
            return nil
        }

        /// Engine time as ISO 8601 UTC with nanoseconds.
        static func iso(_ ns: UInt64) -> String {
            var seconds = time_t(ns / 1_000_000_000)
            var tm = tm()
            gmtime_r(&seconds, &tm)
            return String(format: "%04d-%02d-%02dT%02d:%02d:%02d.%09lluZ", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday,
                          tm.tm_hour, tm.tm_min, tm.tm_sec, ns % 1_000_000_000)
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
                return "session \(session) engine time \(iso(time)): \(command)"
            }
            if type == 2, bytes.count >= 8 {
                let time = UInt64(littleEndian: bytes.loadUnaligned(as: UInt64.self))
                do {
                    return "engine time \(iso(time)): \(AdminRecord.describe(try AdminRecord.decode(UnsafeRawBufferPointer(rebasing: bytes[8...]))))"
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
            try location.check()
            do {
                let scan = try JournalReader.scan(directory: location.directory, shard: location.shard, repair: true,
                                                  after: location.scanAfter) { _, _, _ in }
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
