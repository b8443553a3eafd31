// The C host table of crossbook_plugin.h: one function pointer per thing a plugin may ask of the
// engine, each a thin check of its arguments before the Swift that does the work. Append only
// (the ABI policy in the header).

import CPluginABI
import CSync
import Glibc
import Journal
import OrderBook
import SharedMemory
import Wire

extension PluginHost {
    /// The table every plugin gets; built once, never freed.
    nonisolated(unsafe) static let api: UnsafeMutablePointer<cb_host_api> = {
        let table = UnsafeMutablePointer<cb_host_api>.allocate(capacity: 1)
        table.initialize(to: cb_host_api())
        table.pointee.size = UInt32(MemoryLayout<cb_host_api>.size)
        table.pointee.abi_version = CB_PLUGIN_ABI_VERSION
        table.pointee.host_version = UnsafePointer(strdup("crossbook \(crossbookVersion)"))
        table.pointee.log = { host, level, message in
            guard let plugin = LoadedPlugin.from(host), let message else { return }
            let tag = ["debug", "info", "warning", "error"][Int(max(0, min(3, level)))]
            plugin.host?.environment.log("plugin \(plugin.name) [\(tag)]: \(String(cString: message))")
        }
        table.pointee.config_get = { host, key in
            guard let plugin = LoadedPlugin.from(host), let key else { return nil }
            return plugin.configValue(String(cString: key))
        }
        table.pointee.symbol_lookup = { host, name, out in
            guard let plugin = LoadedPlugin.from(host), let name, let out, out.pointee.size >= 16 else {
                return CB_ERR_INVALID.rawValue
            }
            return plugin.lookup(String(cString: name), into: out)
        }
        table.pointee.shard_count = { host in
            UInt32(LoadedPlugin.from(host)?.host?.environment.engineFile.shardCount ?? 0)
        }
        table.pointee.producer_open = { host, out in
            guard let plugin = LoadedPlugin.from(host), let out else { return CB_ERR_INVALID.rawValue }
            return plugin.openProducer(out)
        }
        table.pointee.producer_submit = { producer, command in
            guard let producer, let command else { return CB_ERR_INVALID.rawValue }
            return PluginProducer.from(producer).submit(UnsafeRawPointer(command))
        }
        table.pointee.producer_poll = { producer, out, capacity in
            guard let producer, let out, capacity >= 0 else { return CB_ERR_INVALID.rawValue }
            return PluginProducer.from(producer).poll(UnsafeMutableRawPointer(out), capacity: Int(capacity))
        }
        table.pointee.producer_close = { producer in
            guard let producer else { return }
            PluginProducer.from(producer).close()
        }
        table.pointee.subscribe = { host, shard, out in
            guard let plugin = LoadedPlugin.from(host), let out else { return CB_ERR_INVALID.rawValue }
            return plugin.subscribe(shard: Int(shard), out)
        }
        table.pointee.subscription_poll = { subscription, out, capacity in
            guard let subscription, let out, capacity >= 0 else { return CB_ERR_INVALID.rawValue }
            return PluginSubscription.from(subscription).poll(UnsafeMutableRawPointer(out), capacity: Int(capacity))
        }
        table.pointee.subscription_close = { subscription in
            guard let subscription else { return }
            PluginSubscription.from(subscription).close()
        }
        table.pointee.metrics_read = { host, visit, context in
            guard let plugin = LoadedPlugin.from(host), let visit, let environment = plugin.host?.environment else {
                return CB_ERR_INVALID.rawValue
            }
            var metrics = EngineMetrics.collect(environment.engineFile, pluginHelp: plugin.host?.counterHelp ?? [:])
            metrics.addProcess(version: crossbookVersion)
            metrics.visit(visit, context)
            return CB_OK.rawValue
        }
        table.pointee.counter_register = { host, name, help, type, slot in
            guard let plugin = LoadedPlugin.from(host), let name, let slot, type <= 1 else { return CB_ERR_INVALID.rawValue }
            let text = String(cString: name)
            guard EngineMetrics.validCounterName(text) else {
                plugin.host?.environment.log("plugin \(plugin.name): counter name '\(text)' refused: [a-z0-9_], optionally labels {key=\"value\",...}, under 80 bytes")
                return CB_ERR_INVALID.rawValue
            }
            // Its family must be its own: not one of the engine's (a gauge named "health" would
            // repeat crossbook_plugin_health, and Prometheus drops a scrape with a family twice), and
            // not another plugin's of the other type.
            guard let host = plugin.host else { return CB_ERR_INVALID.rawValue }
            let base = EngineMetrics.splitCounterName(text).base
            let family = EngineMetrics.pluginFamily(base, isGauge: type == 1)
            if let clash = host.familyClash(family, name: base, isGauge: type == 1) {
                host.environment.log("plugin \(plugin.name): counter name '\(text)' refused: \(clash)")
                return CB_ERR_INVALID.rawValue
            }
            guard let word = host.environment.engineFile.claimPluginCounter(name: text, plugin: plugin.slot,
                                                                           isGauge: type == 1) else {
                return CB_ERR_LIMIT.rawValue
            }
            host.rememberHelp(base, help.map { String(cString: $0) } ?? "")
            slot.pointee = word
            return CB_OK.rawValue
        }
        table.pointee.snapshot_store_register = { host, store in
            // A store built before the blob functions is shorter: what it has, the rest zero.
            guard let plugin = LoadedPlugin.from(host), let store, store.pointee.size >= UInt32(cb_snapshot_store_min_size()),
                  store.pointee.save != nil, store.pointee.list != nil, store.pointee.load != nil else {
                return CB_ERR_INVALID.rawValue
            }
            return plugin.host?.registerSnapshotStore(copyPrefix(store, size: store.pointee.size), plugin: plugin) ?? CB_ERR_INVALID.rawValue
        }
        table.pointee.monotonic_ns = { _ in monotonicNanoseconds() }
        table.pointee.producer_open_source = { host, source, partition, out in
            guard let plugin = LoadedPlugin.from(host), let source, let out, let name = ingressSourceName(source) else {
                return CB_ERR_INVALID.rawValue
            }
            return plugin.openProducer(out, source: IngressSource(name: name, partition: partition))
        }
        table.pointee.symbol_by_id = { host, id, out in
            guard let plugin = LoadedPlugin.from(host), let out, out.pointee.size >= 16 else { return CB_ERR_INVALID.rawValue }
            return plugin.lookup(id: id, into: out)
        }
        table.pointee.subscribe_output = { host, shard, after, executions, market in
            guard let plugin = LoadedPlugin.from(host), let executions, let market else { return CB_ERR_INVALID.rawValue }
            return plugin.subscribeReplayed(shard: Int(shard), after: after, executions: executions, market: market)
        }
        table.pointee.source_position = { host, shard, source, partition, offset in
            guard let plugin = LoadedPlugin.from(host), let source, let offset, let name = ingressSourceName(source),
                  let environment = plugin.host?.environment, Int(shard) < environment.engineFile.shardCount else {
                return CB_ERR_INVALID.rawValue
            }
            guard let last = environment.position(Int(shard), sourceKey(name, partition)) else { return CB_ERR_NOT_FOUND.rawValue }
            offset.pointee = last
            return CB_OK.rawValue
        }
        table.pointee.symbol_count = { host in
            UInt32(LoadedPlugin.from(host)?.host?.environment.symbolCount ?? 0)
        }
        table.pointee.symbol_at = { host, index, out in
            guard let plugin = LoadedPlugin.from(host), let out, out.pointee.size >= 16 else { return CB_ERR_INVALID.rawValue }
            return plugin.lookup(index: Int(index), into: out)
        }
        table.pointee.router_register = { host, router in
            guard let plugin = LoadedPlugin.from(host), let router, router.pointee.size >= UInt32(cb_router_min_size()),
                  router.pointee.route_begin != nil, router.pointee.route_end != nil else {
                return CB_ERR_INVALID.rawValue
            }
            return plugin.host?.registerRouter(copyPrefix(router, size: router.pointee.size), plugin: plugin) ?? CB_ERR_INVALID.rawValue
        }
        table.pointee.symbol_migrate = { host, id, shard, error, errorSize in
            guard let plugin = LoadedPlugin.from(host), let environment = plugin.host?.environment else { return CB_ERR_INVALID.rawValue }
            guard !plugin.starting else {
                if let error { cb_copy_text(error, errorSize, "symbol_migrate may not be called from start") }
                return CB_ERR_INVALID.rawValue
            }
            guard let why = environment.migrate(id, Int(shard)) else { return CB_OK.rawValue }
            if let error { cb_copy_text(error, errorSize, why) }
            return CB_ERR_FAILED.rawValue
        }
        table.pointee.transfer_offered = { host, symbol, epoch, shard in
            guard let plugin = LoadedPlugin.from(host), let environment = plugin.host?.environment, let symbol,
                  let name = String(validating: UnsafeBufferPointer(start: UnsafeRawPointer(symbol).assumingMemoryBound(to: UInt8.self), count: strnlen(symbol, 65)), as: UTF8.self),
                  SymbolSpec.isValidName(name) else { return CB_ERR_INVALID.rawValue }
            return environment.transferOffered(name, epoch, Int(shard)) ? CB_OK.rawValue : CB_ERR_UNSUPPORTED.rawValue
        }
        table.pointee.source_watermark = { producer, shard, offset in
            guard let producer, shard < UInt32(InstanceLayout.maxShards) else { return CB_ERR_INVALID.rawValue }
            return PluginProducer.from(producer).watermark(shard: Int(shard), offset: offset)
        }
        table.pointee.ingress_generation = { host in
            LoadedPlugin.from(host)?.host?.environment.rewinds.currentGeneration ?? 0
        }
        table.pointee.source_rewind = { host, source, partition, reached, offset, symbols, capacity, count in
            guard let plugin = LoadedPlugin.from(host), let source, let offset, let count, symbols != nil || capacity == 0,
                  let name = ingressSourceName(source), let environment = plugin.host?.environment else { return CB_ERR_INVALID.rawValue }
            guard let taken = environment.rewinds.take(sourceKey(name, partition), reached: reached) else { return CB_ERR_NOT_FOUND.rawValue }
            offset.pointee = taken.from
            // All of them counted; as many as fit written.
            count.pointee = UInt32(taken.symbols.count)
            if let symbols { for (i, id) in taken.symbols.prefix(Int(capacity)).enumerated() { symbols[i] = id } }
            return CB_OK.rawValue
        }
        return table
    }()
}


/// An ingress source's name from a plugin: UTF-8, 1 to AdminRecord.maxSourceLength bytes, no '#'.
func ingressSourceName(_ text: UnsafePointer<CChar>) -> String? {
    guard let name = String(validatingCString: text), !name.isEmpty, name.utf8.count <= AdminRecord.maxSourceLength,
          !name.contains("#") else { return nil }
    return name
}

/// The text a plugin wrote into a message buffer (NUL-terminated, or the whole buffer).
func messageText(_ buffer: [CChar]) -> String {
    String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
}

func statusName(_ rc: Int32) -> String {
    switch rc {
    case CB_OK.rawValue: "CB_OK"
    case CB_ERR_INVALID.rawValue: "CB_ERR_INVALID"
    case CB_ERR_UNKNOWN_SYMBOL.rawValue: "CB_ERR_UNKNOWN_SYMBOL"
    case CB_ERR_FULL.rawValue: "CB_ERR_FULL"
    case CB_ERR_CLOSED.rawValue: "CB_ERR_CLOSED"
    case CB_ERR_NOT_FOUND.rawValue: "CB_ERR_NOT_FOUND"
    case CB_ERR_LIMIT.rawValue: "CB_ERR_LIMIT"
    case CB_ERR_IO.rawValue: "CB_ERR_IO"
    case CB_ERR_UNSUPPORTED.rawValue: "CB_ERR_UNSUPPORTED"
    case CB_ERR_FAILED.rawValue: "CB_ERR_FAILED"
    default: "status \(rc)"
    }
}

/// The first `size` bytes of a plugin's struct (its own size: an older, shorter one), the rest
/// zero (no function).
func copyPrefix<T>(_ source: UnsafePointer<T>, size: UInt32) -> T {
    let out = UnsafeMutableRawPointer.allocate(byteCount: MemoryLayout<T>.size, alignment: MemoryLayout<T>.alignment)
    defer { out.deallocate() }
    memset(out, 0, MemoryLayout<T>.size)
    memcpy(out, source, min(Int(size), MemoryLayout<T>.size))
    return out.load(as: T.self)
}
