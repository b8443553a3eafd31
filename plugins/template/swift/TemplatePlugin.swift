// plugins/template (Swift): the same ingress plugin as template.c, in Swift through @_cdecl.
// Reads orders in the replay text format from a file or a named pipe and submits them; counts
// lines, submissions, bad lines and the reports that come back.
//
// Config: path (required). Counters: template_swift_lines, template_swift_submitted,
// template_swift_bad_lines, template_swift_accepted, template_swift_rejected,
// template_swift_trades.
//
// No Swift type crosses the boundary: the host sees C function pointers and an opaque pointer
// (the retained TemplatePlugin instance). Only crossbook_plugin.h is shared with the engine.

import CPluginABI
import CSync
import Glibc


final class TemplatePlugin: @unchecked Sendable {
    let api: UnsafePointer<cb_host_api>
    let host: OpaquePointer
    let path: String
    let fd: Int32
    let isPipe: Bool
    var producer: OpaquePointer?
    var thread = pthread_t()
    let flags = UnsafeMutablePointer<UInt32>.allocate(capacity: 2)  // [0] stopping, [1] finished
    var lines, submitted, badLines, accepted, rejected, trades: UnsafeMutablePointer<UInt64>?
    /// Reports are copied here (used by the plugin's thread only).
    var reports = [cb_report](repeating: cb_report(), count: 64)

    init(api: UnsafePointer<cb_host_api>, host: OpaquePointer, path: String, fd: Int32, isPipe: Bool) {
        self.api = api
        self.host = host
        self.path = path
        self.fd = fd
        self.isPipe = isPipe
        flags.initialize(repeating: 0, count: 2)
    }

    deinit { flags.deallocate() }

    var stopping: Bool { cb_load_acquire_u32(flags) != 0 }
    var finished: Bool { cb_load_acquire_u32(flags + 1) != 0 }

    func bump(_ counter: UnsafeMutablePointer<UInt64>?) {
        if let counter { _ = cb_fetch_add_u64_relaxed(counter, 1) }
    }

    func log(_ level: cb_log_level, _ text: String) { api.pointee.log(host, Int32(level.rawValue), text) }

    func drainReports() {
        while true {
            let n = api.pointee.producer_poll(producer, &reports, 64)
            if n <= 0 { return }
            for r in reports[0..<Int(n)] {
                switch Int(r.type) {
                case Int(CB_REPORT_ACCEPTED): bump(accepted)
                case Int(CB_REPORT_REJECTED): bump(rejected)
                case Int(CB_REPORT_TRADE): bump(trades)
                default: break
                }
            }
        }
    }

    /// One line to a command: nil for a blank line or a comment; throws for a bad line.
    func parse(_ raw: Substring) -> cb_command?? {
        var text = raw
        if let hash = text.firstIndex(of: "#") { text = text[..<hash] }
        let fields = text.split(separator: ",", omittingEmptySubsequences: false)
            .map { $0.trimmingSpaces }
        if fields.count == 1 && fields[0].isEmpty { return .some(nil) }
        guard fields.count >= 3, let id = UInt64(fields[2]) else { return nil }
        var symbol = cb_symbol()
        symbol.size = UInt32(MemoryLayout<cb_symbol>.size)
        guard api.pointee.symbol_lookup(host, fields[1], &symbol) == CB_OK.rawValue else { return nil }
        var c = cb_command()
        c.version = UInt8(CB_RECORD_VERSION)
        c.symbol_id = symbol.id
        c.order_id = id
        switch (fields[0], fields.count) {
        case ("N", 9), ("N", 10):
            guard let account = UInt32(fields[3]), let price = Int64(fields[6]), let quantity = Int64(fields[7]) else {
                return nil
            }
            c.type = UInt8(CB_CMD_NEW)
            c.account = account
            switch fields[4] {
            case "B": c.side = UInt8(CB_SIDE_BUY)
            case "S": c.side = UInt8(CB_SIDE_SELL)
            default: return nil
            }
            switch fields[5] {
            case "LMT":
                c.order_type = UInt8(CB_ORDER_LIMIT)
                c.price = price
            case "MKT": c.order_type = UInt8(CB_ORDER_MARKET)
            default: return nil
            }
            c.quantity = quantity
            guard let tif = ["GTC": CB_TIF_GTC, "IOC": CB_TIF_IOC, "FOK": CB_TIF_FOK, "POST": CB_TIF_POST_ONLY][fields[8]] else {
                return nil
            }
            c.time_in_force = UInt8(tif)
            if fields.count == 10 {
                guard let mode = ["none", "cancel-newest", "cancel-oldest", "cancel-both", "decrement"].firstIndex(of: fields[9])
                else { return nil }
                c.self_trade = UInt8(mode)
            }
        case ("C", 3):
            c.type = UInt8(CB_CMD_CANCEL)
        case ("R", 5):
            guard let price = Int64(fields[3]), let quantity = Int64(fields[4]) else { return nil }
            c.type = UInt8(CB_CMD_REPLACE)
            c.price = price
            c.quantity = quantity
        default:
            return nil
        }
        return .some(c)
    }

    func submit(_ line: Substring) {
        guard let parsed = parse(line) else {
            bump(lines)
            bump(badLines)
            log(CB_LOG_WARNING, "bad line: \(line.prefix(100))")
            return
        }
        guard var command = parsed else { return }
        bump(lines)
        command.client_sequence = lines.map { cb_load_relaxed_u64($0) } ?? 0
        while true {
            let rc = api.pointee.producer_submit(producer, &command)
            if rc == CB_OK.rawValue {
                bump(submitted)
                return
            }
            guard rc == CB_ERR_FULL.rawValue, !stopping else {
                if rc != CB_ERR_FULL.rawValue { log(CB_LOG_WARNING, "submit refused (status \(rc))") }
                return
            }
            drainReports()  // reports make room; the engine is behind
            usleep(50)
        }
    }

    func run() {
        var pending: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while !stopping {
            drainReports()
            if finished {
                usleep(10_000)
                continue
            }
            var pfd = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            guard poll(&pfd, 1, 100) > 0 else { continue }
            let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n < 0 {
                if errno == EAGAIN || errno == EINTR { continue }
                log(CB_LOG_ERROR, "read \(path): \(String(cString: strerror(errno)))")
                break
            }
            if n == 0 {
                if !pending.isEmpty {
                    submit(Substring(String(decoding: pending, as: UTF8.self)))
                    pending.removeAll()
                }
                if !isPipe { cb_store_release_u32(flags + 1, 1) } else { usleep(10_000) }
                continue
            }
            pending += chunk[0..<n]
            var start = 0
            for i in pending.indices where pending[i] == 10 {
                submit(Substring(String(decoding: pending[start..<i], as: UTF8.self)))
                start = i + 1
            }
            pending.removeFirst(start)
        }
        drainReports()
    }
}

extension Substring {
    var trimmingSpaces: String {
        String(drop { $0 == " " || $0 == "\t" }.reversed().drop { $0 == " " || $0 == "\t" || $0 == "\r" }.reversed())
    }
}

nonisolated(unsafe) let templateDescriptor: UnsafeMutablePointer<cb_plugin> = {
    let d = UnsafeMutablePointer<cb_plugin>.allocate(capacity: 1)
    d.initialize(to: cb_plugin())
    d.pointee.size = UInt32(MemoryLayout<cb_plugin>.size)
    d.pointee.abi_version = CB_PLUGIN_ABI_VERSION
    d.pointee.name = UnsafePointer(strdup("template-swift"))
    d.pointee.version = UnsafePointer(strdup("1.0.0"))
    d.pointee.kinds = UInt32(CB_KIND_INGRESS)
    d.pointee.start = { api, host, instance, error, errorSize in
        guard let api, let host, let instance else { return CB_ERR_INVALID.rawValue }
        guard let pathPointer = api.pointee.config_get(host, "path"), pathPointer.pointee != 0 else {
            cb_copy_text(error, errorSize, "config 'path' (the file or pipe to read orders from) is required")
            return CB_ERR_INVALID.rawValue
        }
        let path = String(cString: pathPointer)
        // O_NONBLOCK: opening a pipe does not wait for a writer, and stop is never stuck in read.
        let fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC)
        guard fd >= 0 else {
            cb_copy_text(error, errorSize, "cannot open \(path): \(String(cString: strerror(errno)))")
            return CB_ERR_IO.rawValue
        }
        var info = stat()
        fstat(fd, &info)
        let plugin = TemplatePlugin(api: api, host: host, path: path, fd: fd, isPipe: info.st_mode & S_IFMT == S_IFIFO)
        let rc = api.pointee.producer_open(host, &plugin.producer)
        guard rc == CB_OK.rawValue else {
            close(fd)
            cb_copy_text(error, errorSize, "cannot open a producer (status \(rc))")
            return rc
        }
        let counters: [(String, String, ReferenceWritableKeyPath<TemplatePlugin, UnsafeMutablePointer<UInt64>?>)] = [
            ("template_swift_lines", "Command lines read", \.lines),
            ("template_swift_submitted", "Commands submitted", \.submitted),
            ("template_swift_bad_lines", "Lines that did not parse", \.badLines),
            ("template_swift_accepted", "Accepted reports", \.accepted),
            ("template_swift_rejected", "Rejected reports", \.rejected),
            ("template_swift_trades", "Trade reports", \.trades),
        ]
        for (name, help, key) in counters {
            var slot: UnsafeMutablePointer<UInt64>?
            _ = api.pointee.counter_register(host, name, help, UInt32(CB_METRIC_COUNTER), &slot)
            plugin[keyPath: key] = slot
        }
        let context = Unmanaged.passRetained(plugin).toOpaque()
        let created = pthread_create(&plugin.thread, nil, { context in
            Unmanaged<TemplatePlugin>.fromOpaque(context!).takeUnretainedValue().run()
            return nil
        }, context)
        guard created == 0 else {
            api.pointee.producer_close(plugin.producer)
            close(fd)
            Unmanaged<TemplatePlugin>.fromOpaque(context).release()
            cb_copy_text(error, errorSize, "pthread_create: \(String(cString: strerror(created)))")
            return CB_ERR_FAILED.rawValue
        }
        plugin.log(CB_LOG_INFO, "reading orders from \(path) (\(plugin.isPipe ? "pipe" : "file"))")
        instance.pointee = context
        return CB_OK.rawValue
    }
    d.pointee.stop = { instance in
        guard let instance else { return }
        let plugin = Unmanaged<TemplatePlugin>.fromOpaque(instance).takeRetainedValue()
        cb_store_release_u32(plugin.flags, 1)
        pthread_join(plugin.thread, nil)
        plugin.api.pointee.producer_close(plugin.producer)
        close(plugin.fd)
    }
    d.pointee.health = { instance, message, size in
        guard let instance else { return Int32(CB_HEALTH_FAILED.rawValue) }
        let plugin = Unmanaged<TemplatePlugin>.fromOpaque(instance).takeUnretainedValue()
        let submitted = plugin.submitted.map { cb_load_relaxed_u64($0) } ?? 0
        let bad = plugin.badLines.map { cb_load_relaxed_u64($0) } ?? 0
        cb_copy_text(message, size,
                     "\(plugin.finished ? "read all of" : "reading") \(plugin.path): \(submitted) submitted, \(bad) bad lines")
        return Int32(bad > 0 ? CB_HEALTH_DEGRADED.rawValue : CB_HEALTH_OK.rawValue)
    }
    return d
}()

@_cdecl("crossbook_plugin_entry")
public func crossbookPluginEntry() -> UnsafePointer<cb_plugin> { UnsafePointer(templateDescriptor) }
