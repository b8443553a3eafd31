// Where each symbol lives now: symbol id → owner shard. Written by the control thread (at start,
// from what the journals say, and at each migration step); read by the shards (to name the
// owner in a `symbol_moved` reject), by plugin producers (where to send), and mirrored in the
// control file's symbol blocks for clients (CrossbookClient reads it on every submit).

import CSync
import SharedMemory

final class RouteTable: @unchecked Sendable {
    static let none = UInt32.max
    /// Set with the owner while the symbol is moving (its commands go to the owner-to-be).
    let words: UnsafeMutablePointer<UInt32>
    let count: Int
    private let engineFile: EngineFile?
    /// Symbol id → its block in the control file (-1: none); grows by listings (`register`).
    private let slotOf: UnsafeMutablePointer<Int32>

    /// `idLimit`: room for symbol ids below it (listed symbols' too).
    init(symbols: [(id: UInt32, shard: Int)], idLimit: UInt32 = 0, engineFile: EngineFile?) {
        let maxId = Int(symbols.map(\.id).max() ?? 0)
        count = max(maxId + 1, Int(idLimit))
        words = cacheAligned(UInt32.self, count: count)
        words.initialize(repeating: Self.none, count: count)
        slotOf = cacheAligned(Int32.self, count: count)
        slotOf.initialize(repeating: -1, count: count)
        for (i, symbol) in symbols.enumerated() {
            words[Int(symbol.id)] = UInt32(symbol.shard)
            slotOf[Int(symbol.id)] = Int32(i)
        }
        self.engineFile = engineFile
    }

    deinit {
        words.deallocate()
        slotOf.deallocate()
    }

    /// A listed symbol's control-file block (each shard registers the same: no race that matters).
    func register(_ symbolId: UInt32, slot: Int) {
        guard Int(symbolId) < count else { return }
        cb_store_release_u32(UnsafeMutableRawPointer(slotOf + Int(symbolId)).assumingMemoryBound(to: UInt32.self), UInt32(bitPattern: Int32(slot)))
    }

    /// The owner of `symbolId` now (nil: not a symbol of the instance).
    @inline(__always)
    func shard(of symbolId: UInt32) -> Int? {
        guard Int(symbolId) < count else { return nil }
        let word = cb_load_acquire_u32(words + Int(symbolId))
        return word == Self.none ? nil : Int(word)
    }

    /// Producers send `symbolId`'s commands to `shard` from now on (-1: no shard of this engine
    /// owns it: it trades on another engine; `shard(of:)` is nil, the control file says
    /// UINT32_MAX).
    func set(_ symbolId: UInt32, shard: Int) {
        guard Int(symbolId) < count else { return }
        cb_store_release_u32(words + Int(symbolId), shard < 0 ? Self.none : UInt32(shard))
        let slot = Int32(bitPattern: cb_load_acquire_u32(UnsafeMutableRawPointer(slotOf + Int(symbolId)).assumingMemoryBound(to: UInt32.self)))
        if slot >= 0 { engineFile?.setRoute(Int(slot), shard: shard) }
    }
}
