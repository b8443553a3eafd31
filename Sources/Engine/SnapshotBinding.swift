// What ties a snapshot to the journal it was taken from: a snapshot is the state after a
// sequence of one journal, and is worth nothing beside another journal (another data directory,
// a journal started again) or at another sequence. 32 bytes at the start of every snapshot body:
//   0 magic "CBSNAPJ1" (u64), 8 journal id (u64), 16 sequence (u64),
//   24 CRC32C of the journal's record at that sequence (u32), 28 reserved (u32, 0)
import Journal

struct SnapshotBinding {
    static let size = 32
    /// "CBSNAPJ1" as it lies in the body.
    static let magic: UInt64 = UInt64(littleEndian: 0x314A_5041_4E53_4243)

    var journalId: UInt64
    var sequence: UInt64
    var recordCRC: UInt32

    var bytes: [UInt8] {
        var out = [UInt8](repeating: 0, count: Self.size)
        out.withUnsafeMutableBytes { b in
            b.storeBytes(of: Self.magic, toByteOffset: 0, as: UInt64.self)
            b.storeBytes(of: journalId.littleEndian, toByteOffset: 8, as: UInt64.self)
            b.storeBytes(of: sequence.littleEndian, toByteOffset: 16, as: UInt64.self)
            b.storeBytes(of: recordCRC.littleEndian, toByteOffset: 24, as: UInt32.self)
        }
        return out
    }

    /// The body after the binding, if the binding names this journal's record at `at`; throws why not.
    static func check(_ body: [UInt8], at: UInt64, directory: String, shard: Int) throws -> [UInt8] {
        guard body.count >= size else { throw EngineError("no journal binding (a snapshot of an older format)") }
        let (magic, journalId, sequence, crc) = body.withUnsafeBytes {
            ($0.loadUnaligned(as: UInt64.self), UInt64(littleEndian: $0.loadUnaligned(fromByteOffset: 8, as: UInt64.self)),
             UInt64(littleEndian: $0.loadUnaligned(fromByteOffset: 16, as: UInt64.self)),
             UInt32(littleEndian: $0.loadUnaligned(fromByteOffset: 24, as: UInt32.self)))
        }
        guard magic == Self.magic else { throw EngineError("no journal binding (a snapshot of an older format)") }
        guard sequence == at else { throw EngineError("its body is of sequence \(sequence), not \(at)") }
        let record: (journalId: UInt64, crc: UInt32)?
        do { record = try JournalReader.record(directory: directory, shard: shard, sequence: at) } catch {
            throw EngineError("the journal cannot be read at sequence \(at): \(error)")
        }
        guard let record else { throw EngineError("the journal does not hold sequence \(at)") }
        guard record.journalId == journalId else {
            throw EngineError("it was taken from another journal (id \(String(journalId, radix: 16)), this one is \(String(record.journalId, radix: 16)))")
        }
        guard record.crc == crc else { throw EngineError("the journal's record at sequence \(at) is not the one it was taken after") }
        return Array(body[size...])
    }
}
