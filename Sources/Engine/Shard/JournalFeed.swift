// What a shard gives its journal: each command's 80-byte record under its sequence. The feed
// does not release output: the shard's loop asks it how far the journal is durable and tells
// the output gate.
//
// Journal record of a command (type 1, 80 bytes): the 64-byte command as received, the session
// (u32), 4 reserved bytes, the engine time (u64).

import Journal
import SharedMemory

struct JournalFeed {
    static let commandRecord: UInt16 = 1
    static let commandRecordSize = 80

    /// nil: durability none, or read-only recovery.
    private(set) var journal: JournalWriter?
    /// The same writer, for the per-command path without a retain and release around each call
    /// (`journal` keeps it alive).
    private var writer: Unmanaged<JournalWriter>?
    private let scratch: UnsafeMutableRawPointer

    enum Append {
        case appended
        /// The journal's buffer is full: wait for the batch in flight, then append again.
        case full
        /// The journal cannot take it (disk full, I/O error, failed rollover).
        case refused
    }

    init() {
        scratch = .allocate(byteCount: Self.commandRecordSize, alignment: 8)
    }

    func deallocate() { scratch.deallocate() }

    mutating func open(_ writer: JournalWriter) {
        journal = writer
        self.writer = Unmanaged.passUnretained(writer)
    }

    /// Journals another kind of record (an admin command) under `context`.
    func append(type: UInt16, _ payload: UnsafeRawBufferPointer, then more: UnsafeRawBufferPointer = UnsafeRawBufferPointer(start: nil, count: 0),
                _ context: CommandContext) -> Append {
        guard let journal else { return .appended }
        if journal.failing { return .refused }
        do {
            return try journal.append(type: type, sequence: context.sequence, payload: payload, then: more) ? .appended : .full
        } catch {
            return .refused
        }
    }

    /// Journals the command of `context`.
    @inline(__always)
    func append(_ record: UnsafeRawPointer, _ context: CommandContext) -> Append {
        guard let writer else { return .appended }
        return writer._withUnsafeGuaranteedRef { journal in append(journal, record, context) }
    }

    @inline(__always)
    private func append(_ journal: JournalWriter, _ record: UnsafeRawPointer, _ context: CommandContext) -> Append {
        if journal.failing { return .refused }
        scratch.copyMemory(from: record, byteCount: 64)
        scratch.storeBytes(of: context.session.littleEndian, toByteOffset: 64, as: UInt32.self)
        scratch.storeBytes(of: UInt32(0), toByteOffset: 68, as: UInt32.self)
        scratch.storeBytes(of: context.engineTime.littleEndian, toByteOffset: 72, as: UInt64.self)
        do {
            return try journal.append(type: Self.commandRecord, sequence: context.sequence,
                                      payload: UnsafeRawBufferPointer(start: scratch, count: Self.commandRecordSize))
                ? .appended : .full
        } catch {
            return .refused  // a failed rollover (the writer counts it) or a record too large to journal
        }
    }

    /// Completions in, the next batch out; the durable watermark.
    @discardableResult
    func poll() -> UInt64 { journal?.poll() ?? 0 }

    var failed: Bool { journal?.failing ?? false }
}
