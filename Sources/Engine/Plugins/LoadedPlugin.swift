// One loaded plugin: its descriptor, its config, its instance pointer, and what it opened.

import CPluginABI
import CSync
import Glibc
import Journal
import OrderBook
import SharedMemory

/// One plugin, loaded. Its address is the `cb_host *` the plugin gets.
final class LoadedPlugin: @unchecked Sendable {
    let spec: PluginSpec
    let path: String
    let name: String
    let version: String
    let descriptor: cb_plugin
    weak var host: PluginHost?
    var slot = -1
    var state: PluginStatus.State = .loaded
    var health: UInt32 = 0
    var healthMessage = ""
    var instance: UnsafeMutableRawPointer?
    var starting = false
    /// Config values as C strings, alive as long as the plugin (the engine's lifetime).
    private var config: [String: UnsafeMutablePointer<CChar>] = [:]
    private var symbolNames: [String: UnsafeMutablePointer<CChar>] = [:]
    private var producers: [PluginProducer] = []
    private var subscriptions: [PluginSubscription] = []
    private let lock = Lock()

    init(spec: PluginSpec, path: String, name: String, version: String, descriptor: cb_plugin,
         config: [String: String], host: PluginHost) {
        self.spec = spec
        self.path = path
        self.name = name
        self.version = version
        self.descriptor = descriptor
        self.host = host
        for (k, v) in config { self.config[k] = strdup(v) }
    }

    var isSnapshotStore: Bool { descriptor.kinds & UInt32(CB_KIND_SNAPSHOT_STORE) != 0 }
    var isEgress: Bool { descriptor.kinds & UInt32(CB_KIND_EGRESS) != 0 }

    var handle: OpaquePointer { OpaquePointer(Unmanaged.passUnretained(self).toOpaque()) }

    static func from(_ host: OpaquePointer?) -> LoadedPlugin? {
        guard let host else { return nil }
        return Unmanaged<LoadedPlugin>.fromOpaque(UnsafeRawPointer(host)).takeUnretainedValue()
    }

    func configValue(_ key: String) -> UnsafePointer<CChar>? { config[key].map { UnsafePointer($0) } }

    /// Sets a key the host gives every plugin (`engine.*`), before the plugin starts. The old
    /// value stays allocated: a plugin may hold it (the values live as long as the engine).
    func setHostConfig(_ key: String, _ value: String) {
        precondition(state == .loaded, "host config is set before a plugin starts")
        config[key] = strdup(value)
    }

    func lookup(_ symbol: String, into out: UnsafeMutablePointer<cb_symbol>) -> Int32 {
        guard let environment = host?.environment,
              let entry = environment.symbolIndex[symbol].map({ environment.symbols[$0] })
                ?? environment.table?.published(named: symbol).map({ (spec: $0.spec, shard: $0.home) }) else {
            return CB_ERR_UNKNOWN_SYMBOL.rawValue
        }
        return describe(entry, environment, into: out)
    }

    /// The symbol with engine id `id` (a binary record names its symbol by id).
    func lookup(id: UInt32, into out: UnsafeMutablePointer<cb_symbol>) -> Int32 {
        guard let environment = host?.environment,
              let entry = environment.symbols.first(where: { $0.spec.id == id })
                ?? environment.table?.published(id: id).map({ (spec: $0.spec, shard: $0.home) }) else {
            return CB_ERR_UNKNOWN_SYMBOL.rawValue
        }
        return describe(entry, environment, into: out)
    }

    /// The symbol at `index` of the engine's symbols.
    func lookup(index: Int, into out: UnsafeMutablePointer<cb_symbol>) -> Int32 {
        guard let environment = host?.environment, index >= 0 else { return CB_ERR_NOT_FOUND.rawValue }
        if index < environment.symbols.count { return describe(environment.symbols[index], environment, into: out) }
        guard let entry = environment.table?.published(at: index) else { return CB_ERR_NOT_FOUND.rawValue }
        return describe((spec: entry.spec, shard: entry.home), environment, into: out)
    }

    /// `shard`: where the symbol lives now (it may move: a producer follows by itself).
    private func describe(_ entry: (spec: SymbolSpec, shard: Int), _ environment: PluginEnvironment,
                          into out: UnsafeMutablePointer<cb_symbol>) -> Int32 {
        let routes = environment.routes
        let symbol = entry.spec.name
        let name = lock.locked {
            if let known = symbolNames[symbol] { return known }
            let copy = strdup(symbol)!
            symbolNames[symbol] = copy
            return copy
        }
        var value = cb_symbol()
        value.size = UInt32(MemoryLayout<cb_symbol>.size)
        value.id = entry.spec.id
        // No shard here owns it (it moved to another engine): UINT32_MAX.
        value.shard = routes.shard(of: entry.spec.id).map { UInt32($0) } ?? UInt32.max
        // Its ingress is another engine's: it lives there, or moves (IngressRewinds).
        if value.shard == UInt32.max || environment.rewinds.isAway(entry.spec.id) { value.flags = UInt32(CB_SYMBOL_ELSEWHERE) }
        value.name = UnsafePointer(name)
        value.tick_size = entry.spec.tickSize
        value.lot_size = entry.spec.lotSize
        value.min_price = entry.spec.minPrice
        value.max_price = entry.spec.maxPrice
        value.max_order_quantity = entry.spec.maxOrderQuantity
        // Write no more than the caller's struct holds.
        let count = min(Int(out.pointee.size), MemoryLayout<cb_symbol>.size)
        withUnsafeBytes(of: &value) { UnsafeMutableRawPointer(out).copyMemory(from: $0.baseAddress!, byteCount: count) }
        out.pointee.size = UInt32(count)
        return CB_OK.rawValue
    }

    func openProducer(_ out: UnsafeMutablePointer<OpaquePointer?>, source: IngressSource? = nil) -> Int32 {
        guard let environment = host?.environment else { return CB_ERR_CLOSED.rawValue }
        guard !isSnapshotStore else {
            environment.log("plugin \(name): a snapshot store starts before the engine serves: it cannot open producers")
            return CB_ERR_UNSUPPORTED.rawValue
        }
        do {
            let session = try environment.openSession(source)
            let producer = PluginProducer(session: session, routes: environment.routes, close: environment.closeSession,
                                          watermark: source == nil ? nil : environment.watermark)
            lock.locked { producers.append(producer) }
            out.pointee = producer.handle
            return CB_OK.rawValue
        } catch {
            environment.log("plugin \(name): cannot open a producer: \(error)")
            return CB_ERR_CLOSED.rawValue
        }
    }

    func subscribe(shard: Int, _ out: UnsafeMutablePointer<OpaquePointer?>) -> Int32 {
        guard let environment = host?.environment else { return CB_ERR_CLOSED.rawValue }
        guard shard >= 0, shard < environment.engineFile.shardCount else { return CB_ERR_INVALID.rawValue }
        do {
            let ring = try EventRing.attach(path: InstanceLayout.eventRingPath(environment.directory, shard: shard))
            let consumer = try ring.consumer(mayDetach: true)
            let subscription = PluginSubscription(consumer: consumer)
            lock.locked { subscriptions.append(subscription) }
            out.pointee = subscription.handle
            return CB_OK.rawValue
        } catch EventConsumerError.full {
            return CB_ERR_LIMIT.rawValue
        } catch {
            environment.log("plugin \(name): cannot subscribe to shard \(shard): \(error)")
            return CB_ERR_IO.rawValue
        }
    }

    /// A shard's drop copies and market data, each above `after`: first what the journal says
    /// (regenerated), then live. The live consumers attach before the regeneration reads the
    /// journal, so nothing falls between them (sync durability: what is published is on disk).
    func subscribeReplayed(shard: Int, after: UInt64, executions: UnsafeMutablePointer<OpaquePointer?>,
                           market: UnsafeMutablePointer<OpaquePointer?>) -> Int32 {
        guard let environment = host?.environment else { return CB_ERR_CLOSED.rawValue }
        guard shard >= 0, shard < environment.engineFile.shardCount else { return CB_ERR_INVALID.rawValue }
        guard let executionRing = environment.executionRing(shard) else {
            environment.log("plugin \(name): no drop copies (only a plugin of kind egress gets them)")
            return CB_ERR_UNSUPPORTED.rawValue
        }
        var attached: [EventConsumer] = []
        do {
            let ring = try EventRing.attach(path: InstanceLayout.eventRingPath(environment.directory, shard: shard))
            let liveMarket = try ring.consumer(mayDetach: true)
            attached.append(liveMarket)
            let liveExecutions = try executionRing.consumer(mayDetach: true)
            attached.append(liveExecutions)
            // Live only (UINT64_MAX): no backlog, and no live record is skipped.
            var backlog: (market: [UInt8], executions: [UInt8], through: UInt64) = ([], [], 0)
            if after != UInt64.max {
                backlog = try environment.regenerate(shard, after)
            }
            let m = PluginSubscription(consumer: liveMarket, backlog: backlog.market, skipThrough: backlog.through)
            let e = PluginSubscription(consumer: liveExecutions, backlog: backlog.executions, skipThrough: backlog.through)
            lock.locked { subscriptions.append(contentsOf: [m, e]) }
            market.pointee = m.handle
            executions.pointee = e.handle
            environment.log("plugin \(name): shard \(shard) output above sequence \(after == UInt64.max ? "now (live only)" : String(after)): \(backlog.executions.count / 64) drop copies and \(backlog.market.count / 64) market events from the journal, then live")
            return CB_OK.rawValue
        } catch {
            // A consumer attached before the failure would hold its slot (and, lagging, the ring).
            for consumer in attached { consumer.close() }
            if case EventConsumerError.full? = error as? EventConsumerError { return CB_ERR_LIMIT.rawValue }
            environment.log("plugin \(name): cannot subscribe to shard \(shard)'s output: \(error)")
            return CB_ERR_IO.rawValue
        }
    }

    /// After stop: whatever the plugin left open is closed.
    func closeAll() {
        let (p, s) = lock.locked { (producers, subscriptions) }
        for producer in p { producer.close() }
        for subscription in s { subscription.close() }
    }
}
