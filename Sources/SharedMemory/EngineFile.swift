// The engine control file (layout: InstanceLayout.swift): created and written by the engine
// only, mapped read-only by clients; the state, the pid, per shard its counters, the symbols, the
// plugins' status and counters.

import CPluginABI
import CSync
import Glibc

/// What the control file says of one plugin (written by the engine's control thread).
public struct PluginStatus: Sendable, Equatable {
    public enum State: UInt32, Sendable {
        case empty = 0, loaded = 1, running = 2, stopped = 3, failed = 4
    }
    public var name: String
    public var version: String
    public var kinds: UInt32
    public var state: State
    /// CB_HEALTH_*: 0 ok, 1 degraded, 2 failed.
    public var health: UInt32
    public var message: String
    public var updatedNanoseconds: UInt64

    public init(name: String, version: String, kinds: UInt32, state: State, health: UInt32, message: String,
                updatedNanoseconds: UInt64) {
        self.name = name
        self.version = version
        self.kinds = kinds
        self.state = state
        self.health = health
        self.message = message
        self.updatedNanoseconds = updatedNanoseconds
    }

    public var healthName: String { health == 0 ? "ok" : health == 1 ? "degraded" : "failed" }
    public var kindNames: [String] { Self.kindNames(kinds) }

    /// The names of the CB_KIND_* bits set in `kinds`.
    public static func kindNames(_ kinds: UInt32) -> [String] {
        [(1, "ingress"), (2, "egress"), (4, "routing"), (8, "snapshot-store"), (16, "metrics")]
            .filter { kinds & UInt32($0.0) != 0 }.map(\.1)
    }
}

/// A plugin's own counter as read from the control file.
public struct PluginCounterValue: Sendable, Equatable {
    public var name: String
    public var plugin: Int
    public var isGauge: Bool
    public var value: UInt64
}

func storeText(_ text: String, at base: UnsafeMutableRawPointer, capacity: Int) {
    let bytes = Array(text.utf8.prefix(capacity - 1))
    base.initializeMemory(as: UInt8.self, repeating: 0, count: capacity)
    bytes.withUnsafeBytes { base.copyMemory(from: $0.baseAddress!, byteCount: bytes.count) }
}

func loadText(_ base: UnsafeRawPointer, capacity: Int) -> String {
    let bytes = UnsafeRawBufferPointer(start: base, count: capacity)
    return String(decoding: bytes.prefix { $0 != 0 }, as: UTF8.self)
}

/// The engine control file.
public final class EngineFile: @unchecked Sendable {
    public let file: MappedFile
    public let shardCount: Int

    /// Creates it (the instance must not be running). A leftover of a dead engine is reported
    /// as `stale`; a running engine as `inUse`. `mode` says who may read it; nobody may write it
    /// (0400, or 0440 for a group): the engine writes through the descriptor that created it,
    /// so no other process of another user can change what clients are told, or shrink it
    /// under the engine.
    /// `symbolCapacity`: room for that many symbols (at least `symbols.count`), the rest listed
    /// while the engine runs (`publishSymbol`).
    public static func create(directory: String, shards: Int, symbols: [(name: String, id: UInt32, shard: Int)] = [],
                              symbolCapacity: Int? = nil, mode: mode_t) throws(SharedMemoryError) -> EngineFile {
        let capacity = max(symbolCapacity ?? symbols.count, symbols.count)
        let path = InstanceLayout.enginePath(directory)
        guard shards >= 1, shards <= InstanceLayout.maxShards else {
            throw .badHeader(path: path, "shard count \(shards) outside 1...\(InstanceLayout.maxShards)")
        }
        guard capacity <= InstanceLayout.maxSymbols else {
            throw .badHeader(path: path, "room for \(capacity) symbols, at most \(InstanceLayout.maxSymbols)")
        }
        let file: MappedFile
        do {
            file = try MappedFile.create(path: path, size: InstanceLayout.engineFileSize(shards: shards, symbols: capacity),
                                         mode: mode & 0o444)
        } catch .system(let failure) where failure.errno == .fileExists {
            let pid = Self.peekPid(path)
            throw processIsAlive(pid) ? .inUse(path: path, creatorPid: pid) : .stale(path: path, creatorPid: pid)
        }
        let base = file.base
        base.storeBytes(of: InstanceLayout.version.littleEndian, toByteOffset: 8, as: UInt32.self)
        base.storeBytes(of: UInt32(shards).littleEndian, toByteOffset: 12, as: UInt32.self)
        base.storeBytes(of: getpid().littleEndian, toByteOffset: 16, as: Int32.self)
        base.storeBytes(of: EngineState.starting.rawValue.littleEndian, toByteOffset: 20, as: UInt32.self)
        base.storeBytes(of: realtimeNanoseconds().littleEndian, toByteOffset: 24, as: UInt64.self)
        base.storeBytes(of: UInt32(symbols.count).littleEndian, toByteOffset: 32, as: UInt32.self)
        base.storeBytes(of: UInt32(capacity).littleEndian, toByteOffset: 36, as: UInt32.self)
        let symbolBase = base + InstanceLayout.symbolsOffset(shards: shards)
        for (i, symbol) in symbols.enumerated() {
            let block = symbolBase + i * InstanceLayout.symbolBlockSize
            storeText(symbol.name, at: block, capacity: 24)
            block.storeBytes(of: symbol.id.littleEndian, toByteOffset: 24, as: UInt32.self)
            block.storeBytes(of: UInt32(symbol.shard).littleEndian, toByteOffset: 28, as: UInt32.self)
        }
        cb_store_release_u64(base.assumingMemoryBound(to: UInt64.self), InstanceLayout.engineMagic.littleEndian)
        return EngineFile(file: file, shards: shards, capacity: capacity)
    }

    /// Attaches to a running (or dead) engine's control file, checking its header. The mapping
    /// is read-only: a client reads the engine's state, never writes it.
    public static func attach(directory: String) throws(SharedMemoryError) -> EngineFile {
        let path = InstanceLayout.enginePath(directory)
        let file = try MappedFile.open(path: path, minimumSize: InstanceLayout.headerSize, writable: false)
        let base = file.base
        let magic = UInt64(littleEndian: cb_load_acquire_u64(base.assumingMemoryBound(to: UInt64.self)))
        guard magic == InstanceLayout.engineMagic else { throw .badHeader(path: path, "not an engine control file") }
        let version = UInt32(littleEndian: base.load(fromByteOffset: 8, as: UInt32.self))
        guard version == InstanceLayout.version else {
            throw .badHeader(path: path, "version \(version), this build reads \(InstanceLayout.version)")
        }
        let shards = Int(UInt32(littleEndian: base.load(fromByteOffset: 12, as: UInt32.self)))
        let capacity = Int(UInt32(littleEndian: base.load(fromByteOffset: 36, as: UInt32.self)))
        guard shards >= 1, shards <= InstanceLayout.maxShards, capacity <= InstanceLayout.maxSymbols,
              file.size == InstanceLayout.engineFileSize(shards: shards, symbols: capacity) else {
            throw .badHeader(path: path, "shard count \(shards) and symbol capacity \(capacity) do not match the file size \(file.size)")
        }
        return EngineFile(file: file, shards: shards, capacity: capacity)
    }

    private init(file: MappedFile, shards: Int, capacity: Int) {
        self.file = file
        shardCount = shards
        symbolCapacity = capacity
    }

    /// The blocks the file has room for.
    public let symbolCapacity: Int

    /// The symbols published so far (it grows as symbols are listed): never above the capacity,
    /// whatever the file says (a reader's mapping is the engine's, but a bound costs nothing).
    public var symbolCount: Int {
        let n = Int(UInt32(littleEndian: cb_load_acquire_u32((file.base + 32).assumingMemoryBound(to: UInt32.self))))
        return min(n, symbolCapacity)
    }

    /// Engine side: symbol `i` (the next: `symbolCount`) gets its block, then the count says so.
    public func publishSymbol(_ i: Int, name: String, id: UInt32, shard: Int) {
        guard i == symbolCount, i < symbolCapacity else { return }
        let block = symbolBlock(i)
        storeText(name, at: block, capacity: 24)
        block.storeBytes(of: id.littleEndian, toByteOffset: 24, as: UInt32.self)
        block.storeBytes(of: UInt32(truncatingIfNeeded: shard).littleEndian, toByteOffset: 28, as: UInt32.self)
        cb_store_release_u32((file.base + 32).assumingMemoryBound(to: UInt32.self), UInt32(i + 1).littleEndian)
    }

    func symbolBlock(_ i: Int) -> UnsafeMutableRawPointer {
        file.base + InstanceLayout.symbolsOffset(shards: shardCount) + i * InstanceLayout.symbolBlockSize
    }

    /// Symbol i of the control file (config order): name, id, owning shard.
    public func symbol(_ i: Int) -> (name: String, id: UInt32, shard: Int) {
        let block = symbolBlock(i)
        return (loadText(block, capacity: 24), UInt32(littleEndian: block.load(fromByteOffset: 24, as: UInt32.self)),
                Int(UInt32(littleEndian: block.load(fromByteOffset: 28, as: UInt32.self))))
    }

    /// Engine side: symbol i's commands go to `shard` from now on (a migration). Clients read it
    /// on every submit (`routeShard`).
    public func setRoute(_ i: Int, shard: Int) {
        cb_store_release_u32((symbolBlock(i) + 28).assumingMemoryBound(to: UInt32.self), UInt32(truncatingIfNeeded: shard).littleEndian)
    }

    /// Where symbol i's commands go now.
    @inline(__always)
    public func routeShard(_ i: Int) -> Int {
        Int(UInt32(littleEndian: cb_load_acquire_u32((symbolBlock(i) + 28).assumingMemoryBound(to: UInt32.self))))
    }

    public func symbolCounters(_ i: Int) -> SymbolCounters {
        SymbolCounters(words: (symbolBlock(i) + InstanceLayout.symbolCountersOffset).assumingMemoryBound(to: UInt64.self))
    }

    func pluginSlot(_ i: Int) -> UnsafeMutableRawPointer {
        file.base + InstanceLayout.pluginsOffset(shards: shardCount, symbols: symbolCapacity) + i * InstanceLayout.pluginSlotSize
    }

    /// Engine side (control thread): publishes what it knows of plugin slot i.
    public func setPluginStatus(_ i: Int, _ status: PluginStatus) {
        let slot = pluginSlot(i)
        storeText(status.name, at: slot, capacity: 48)
        storeText(status.version, at: slot + 48, capacity: 16)
        slot.storeBytes(of: status.kinds.littleEndian, toByteOffset: 64, as: UInt32.self)
        slot.storeBytes(of: status.health.littleEndian, toByteOffset: 72, as: UInt32.self)
        slot.storeBytes(of: status.updatedNanoseconds.littleEndian, toByteOffset: 80, as: UInt64.self)
        storeText(status.message, at: slot + 96, capacity: 160)
        // Release: a reader that sees the state sees the fields written before it.
        cb_store_release_u32((slot + 68).assumingMemoryBound(to: UInt32.self), status.state.rawValue.littleEndian)
    }

    /// The plugins the engine knows of, in load order.
    public func pluginStatuses() -> [PluginStatus] {
        (0..<InstanceLayout.pluginSlots).compactMap { i in
            let slot = pluginSlot(i)
            let raw = UInt32(littleEndian: cb_load_acquire_u32((slot + 68).assumingMemoryBound(to: UInt32.self)))
            guard let state = PluginStatus.State(rawValue: raw), state != .empty else { return nil }
            return PluginStatus(name: loadText(slot, capacity: 48), version: loadText(slot + 48, capacity: 16),
                                kinds: UInt32(littleEndian: slot.load(fromByteOffset: 64, as: UInt32.self)), state: state,
                                health: UInt32(littleEndian: slot.load(fromByteOffset: 72, as: UInt32.self)),
                                message: loadText(slot + 96, capacity: 160),
                                updatedNanoseconds: UInt64(littleEndian: slot.load(fromByteOffset: 80, as: UInt64.self)))
        }
    }

    func pluginCounterSlot(_ i: Int) -> UnsafeMutableRawPointer {
        file.base + InstanceLayout.pluginCountersOffset(shards: shardCount, symbols: symbolCapacity)
            + i * InstanceLayout.pluginCounterSize
    }

    /// Engine side: takes a free counter slot for plugin `plugin`; returns its value word.
    public func claimPluginCounter(name: String, plugin: Int, isGauge: Bool) -> UnsafeMutablePointer<UInt64>? {
        for i in 0..<InstanceLayout.pluginCounterSlots {
            let slot = pluginCounterSlot(i)
            let inUse = (slot + 88).assumingMemoryBound(to: UInt32.self)
            guard cb_load_acquire_u32(inUse) == 0 else { continue }
            storeText(name, at: slot, capacity: 80)
            slot.storeBytes(of: UInt32(plugin).littleEndian, toByteOffset: 80, as: UInt32.self)
            slot.storeBytes(of: UInt32(isGauge ? 1 : 0).littleEndian, toByteOffset: 84, as: UInt32.self)
            slot.storeBytes(of: UInt64(0), toByteOffset: 96, as: UInt64.self)
            // Release: the name and owner are visible before the slot reads as taken.
            cb_store_release_u32(inUse, 1)
            return (slot + 96).assumingMemoryBound(to: UInt64.self)
        }
        return nil
    }

    public func pluginCounters() -> [PluginCounterValue] {
        (0..<InstanceLayout.pluginCounterSlots).compactMap { i in
            let slot = pluginCounterSlot(i)
            guard cb_load_acquire_u32((slot + 88).assumingMemoryBound(to: UInt32.self)) != 0 else { return nil }
            return PluginCounterValue(name: loadText(slot, capacity: 80),
                                      plugin: Int(UInt32(littleEndian: slot.load(fromByteOffset: 80, as: UInt32.self))),
                                      isGauge: slot.load(fromByteOffset: 84, as: UInt32.self) != 0,
                                      value: cb_load_relaxed_u64((slot + 96).assumingMemoryBound(to: UInt64.self)))
        }
    }

    static func peekPid(_ path: String) -> Int32 {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return 0 }
        defer { close(fd) }
        var pid: Int32 = 0
        return pread(fd, &pid, 4, 16) == 4 ? Int32(littleEndian: pid) : 0
    }

    public var enginePid: Int32 { Int32(littleEndian: file.base.load(fromByteOffset: 16, as: Int32.self)) }

    public var state: EngineState {
        get {
            EngineState(rawValue: UInt32(littleEndian: cb_load_acquire_u32((file.base + 20).assumingMemoryBound(to: UInt32.self))))
                ?? .stopped
        }
        set { cb_store_release_u32((file.base + 20).assumingMemoryBound(to: UInt32.self), newValue.rawValue.littleEndian) }
    }

    /// Alive and running.
    public var isServing: Bool { state == .running && processIsAlive(enginePid) }

    func shardBlock(_ s: Int) -> UnsafeMutableRawPointer {
        file.base + InstanceLayout.headerSize + s * InstanceLayout.shardBlockSize
    }

    public func counters(_ shard: Int) -> ShardCounters { ShardCounters(shardBlock(shard), owner: file) }

    public func replication(_ shard: Int) -> ReplicationCounters {
        ReplicationCounters(words: (shardBlock(shard) + InstanceLayout.replicationOffset).assumingMemoryBound(to: UInt64.self))
    }

    public func ingress(_ shard: Int) -> IngressCounters {
        IngressCounters(words: (shardBlock(shard) + InstanceLayout.ingressOffset).assumingMemoryBound(to: UInt64.self))
    }

    public func migrations(_ shard: Int) -> MigrationCounters {
        MigrationCounters(words: (shardBlock(shard) + InstanceLayout.migrationsOffset).assumingMemoryBound(to: UInt64.self))
    }
}
