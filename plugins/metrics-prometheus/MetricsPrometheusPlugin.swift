// plugins/metrics-prometheus: serves GET /metrics in the Prometheus text exposition format
// (version 0.0.4), read from the engine's counters region through the host table
// (metrics_read) at each scrape. One thread of its own: accept, read the request, answer,
// close. Nothing runs on a shard thread and a scrape costs the shards nothing.
//
// Config: listen = "127.0.0.1:9464" (host:port; IPv4).

import CPluginABI
import CSync
import Glibc


final class MetricsServer: @unchecked Sendable {
    let api: UnsafePointer<cb_host_api>
    let host: OpaquePointer
    let listener: Int32
    let address: String
    var thread = pthread_t()
    var stopping = UnsafeMutablePointer<UInt32>.allocate(capacity: 1)
    var scrapes: UnsafeMutablePointer<UInt64>?
    var errors: UnsafeMutablePointer<UInt64>?
    /// The last failed request, for health (written by the server thread, read by the host's
    /// control thread: under the mutex).
    private var lastErrorText = ""
    private var mutex = pthread_mutex_t()
    var lastError: String {
        get {
            pthread_mutex_lock(&mutex)
            defer { pthread_mutex_unlock(&mutex) }
            return lastErrorText
        }
        set {
            pthread_mutex_lock(&mutex)
            lastErrorText = newValue
            pthread_mutex_unlock(&mutex)
        }
    }

    init(api: UnsafePointer<cb_host_api>, host: OpaquePointer, listener: Int32, address: String) {
        self.api = api
        self.host = host
        self.listener = listener
        self.address = address
        stopping.initialize(to: 0)
        pthread_mutex_init(&mutex, nil)
    }

    func log(_ level: cb_log_level, _ text: String) { api.pointee.log(host, Int32(level.rawValue), text) }

    func run() {
        while cb_load_acquire_u32(stopping) == 0 {
            var pfd = pollfd(fd: listener, events: Int16(POLLIN), revents: 0)
            guard poll(&pfd, 1, 100) > 0 else { continue }
            let client = accept(listener, nil, nil)
            guard client >= 0 else { continue }
            serve(client)
            close(client)
        }
    }

    func serve(_ fd: Int32) {
        var timeout = timeval(tv_sec: 2, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        var request: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 4096)
        // The request line and headers; no body is expected.
        while request.count < 16384 {
            let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n <= 0 { break }
            request += chunk[0..<n]
            if request.count >= 4, request.suffix(4) == [13, 10, 13, 10] { break }
            if request.firstRange(of: [13, 10, 13, 10]) != nil { break }
        }
        let line = String(decoding: request.prefix { $0 != 13 && $0 != 10 }, as: UTF8.self)
        let parts = line.split(separator: " ")
        guard parts.count == 3, parts[2].hasPrefix("HTTP/1.") else {
            respond(fd, 400, "Bad Request", "text/plain", "a request line 'GET /metrics HTTP/1.1' was expected\n")
            count(error: "bad request line '\(line.prefix(80))'")
            return
        }
        guard parts[0] == "GET" || parts[0] == "HEAD" else {
            respond(fd, 405, "Method Not Allowed", "text/plain", "only GET\n", extra: "Allow: GET, HEAD\r\n")
            return
        }
        let path = parts[1].split(separator: "?", maxSplits: 1).first.map(String.init) ?? ""
        switch path {
        case "/metrics":
            let body = exposition()
            respond(fd, 200, "OK", "text/plain; version=0.0.4; charset=utf-8", body, headOnly: parts[0] == "HEAD")
            if let scrapes { _ = cb_fetch_add_u64_relaxed(scrapes, 1) }
        case "/", "/healthz":
            respond(fd, 200, "OK", "text/plain", "crossbook metrics: GET /metrics\n", headOnly: parts[0] == "HEAD")
        default:
            respond(fd, 404, "Not Found", "text/plain", "not found: try /metrics\n")
        }
    }

    func count(error: String) {
        lastError = error
        if let errors { _ = cb_fetch_add_u64_relaxed(errors, 1) }
    }

    func respond(_ fd: Int32, _ code: Int, _ reason: String, _ type: String, _ body: String, extra: String = "",
                 headOnly: Bool = false) {
        let payload = Array(body.utf8)
        let head = "HTTP/1.1 \(code) \(reason)\r\nContent-Type: \(type)\r\nContent-Length: \(payload.count)\r\n\(extra)Connection: close\r\n\r\n"
        var bytes = Array(head.utf8)
        if !headOnly { bytes += payload }
        var done = 0
        while done < bytes.count {
            let n = bytes.withUnsafeBytes { send(fd, $0.baseAddress! + done, $0.count - done, Int32(MSG_NOSIGNAL)) }
            if n <= 0 {
                count(error: "send: \(String(cString: strerror(errno)))")
                return
            }
            done += n
        }
    }

    /// The text format: for each family its HELP and TYPE, then its samples.
    func exposition() -> String {
        final class Builder {
            var text = ""
            var family = ""
        }
        let builder = Builder()
        let context = Unmanaged.passUnretained(builder).toOpaque()
        _ = api.pointee.metrics_read(host, { context, metric in
            guard let context, let m = metric?.pointee, let namePointer = m.name else { return }
            let b = Unmanaged<Builder>.fromOpaque(context).takeUnretainedValue()
            let name = String(cString: namePointer)
            let labels = m.labels.map { String(cString: $0) } ?? ""
            if name != b.family {
                b.family = name
                let help = m.help.map { String(cString: $0) } ?? ""
                if !help.isEmpty { b.text += "# HELP \(name) \(escapeHelp(help))\n" }
                b.text += "# TYPE \(name) \(["counter", "gauge", "histogram"][Int(min(m.type, 2))])\n"
            }
            if m.type == UInt32(CB_METRIC_HISTOGRAM) {
                let sep = labels.isEmpty ? "" : ","
                for i in 0..<Int(m.bucket_count) {
                    b.text += "\(name)_bucket{\(labels)\(sep)le=\"\(number(m.bucket_bounds[i]))\"} \(m.bucket_counts[i])\n"
                }
                b.text += "\(name)_bucket{\(labels)\(sep)le=\"+Inf\"} \(m.count)\n"
                b.text += "\(name)_sum\(labels.isEmpty ? "" : "{\(labels)}") \(number(m.sum))\n"
                b.text += "\(name)_count\(labels.isEmpty ? "" : "{\(labels)}") \(m.count)\n"
            } else {
                b.text += "\(name)\(labels.isEmpty ? "" : "{\(labels)}") \(number(m.value))\n"
            }
        }, context)
        return builder.text
    }
}

func escapeHelp(_ text: String) -> String {
    text.replacingAll("\\", with: "\\\\").replacingAll("\n", with: "\\n")
}

extension String {
    func replacingAll(_ target: Character, with replacement: String) -> String {
        var out = ""
        for c in self { if c == target { out += replacement } else { out.append(c) } }
        return out
    }
}

/// A float as Prometheus reads it: integers without a fraction.
func number(_ value: Double) -> String {
    if value.isNaN { return "NaN" }
    if value.isInfinite { return value > 0 ? "+Inf" : "-Inf" }
    if value == value.rounded(), abs(value) < 1e15 { return String(Int64(value)) }
    return "\(value)"
}

func parseListen(_ text: String) -> sockaddr_in? {
    guard let colon = text.lastIndex(of: ":"), let port = UInt16(text[text.index(after: colon)...]) else { return nil }
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_port = port.bigEndian
    let hostPart = String(text[..<colon])
    guard inet_pton(AF_INET, hostPart.isEmpty ? "0.0.0.0" : hostPart, &address.sin_addr) == 1 else { return nil }
    return address
}

nonisolated(unsafe) let metricsDescriptor: UnsafeMutablePointer<cb_plugin> = {
    let d = UnsafeMutablePointer<cb_plugin>.allocate(capacity: 1)
    d.initialize(to: cb_plugin())
    d.pointee.size = UInt32(MemoryLayout<cb_plugin>.size)
    d.pointee.abi_version = CB_PLUGIN_ABI_VERSION
    d.pointee.name = UnsafePointer(strdup("metrics-prometheus"))
    d.pointee.version = UnsafePointer(strdup("1.0.0"))
    d.pointee.kinds = UInt32(CB_KIND_METRICS)
    d.pointee.start = { api, host, instance, error, errorSize in
        guard let api, let host, let instance else { return CB_ERR_INVALID.rawValue }
        let listen = api.pointee.config_get(host, "listen").map { String(cString: $0) } ?? "127.0.0.1:9464"
        guard var address = parseListen(listen) else {
            cb_copy_text(error, errorSize, "listen = '\(listen)': give host:port, e.g. 127.0.0.1:9464")
            return CB_ERR_INVALID.rawValue
        }
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue | SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else {
            cb_copy_text(error, errorSize, "socket: \(String(cString: strerror(errno)))")
            return CB_ERR_IO.rawValue
        }
        var one: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard bound == 0, Glibc.listen(fd, 64) == 0 else {
            let why = String(cString: strerror(errno))
            close(fd)
            cb_copy_text(error, errorSize, "cannot listen on \(listen): \(why)")
            return CB_ERR_IO.rawValue
        }
        let server = MetricsServer(api: api, host: host, listener: fd, address: listen)
        _ = api.pointee.counter_register(host, "metrics_scrapes", "Scrapes of /metrics answered", UInt32(CB_METRIC_COUNTER), &server.scrapes)
        _ = api.pointee.counter_register(host, "metrics_request_errors", "Requests that failed", UInt32(CB_METRIC_COUNTER), &server.errors)
        let context = Unmanaged.passRetained(server).toOpaque()
        let rc = pthread_create(&server.thread, nil, { context in
            let server = Unmanaged<MetricsServer>.fromOpaque(context!).takeUnretainedValue()
            server.run()
            return nil
        }, context)
        guard rc == 0 else {
            close(fd)
            Unmanaged<MetricsServer>.fromOpaque(context).release()
            cb_copy_text(error, errorSize, "pthread_create: \(String(cString: strerror(rc)))")
            return CB_ERR_FAILED.rawValue
        }
        server.log(CB_LOG_INFO, "serving http://\(listen)/metrics")
        instance.pointee = context
        return CB_OK.rawValue
    }
    d.pointee.stop = { instance in
        guard let instance else { return }
        let server = Unmanaged<MetricsServer>.fromOpaque(instance).takeRetainedValue()
        cb_store_release_u32(server.stopping, 1)
        pthread_join(server.thread, nil)
        close(server.listener)
    }
    d.pointee.health = { instance, message, size in
        guard let instance else { return Int32(CB_HEALTH_FAILED.rawValue) }
        let server = Unmanaged<MetricsServer>.fromOpaque(instance).takeUnretainedValue()
        let scrapes = server.scrapes.map { cb_load_relaxed_u64($0) } ?? 0
        cb_copy_text(message, size,
                     "http://\(server.address)/metrics, \(scrapes) scrapes\(server.lastError.isEmpty ? "" : ", last error: " + server.lastError)")
        return Int32(CB_HEALTH_OK.rawValue)
    }
    return d
}()

@_cdecl("crossbook_plugin_entry")
public func crossbookPluginEntry() -> UnsafePointer<cb_plugin> { UnsafePointer(metricsDescriptor) }
