// plugins/metrics-prometheus: serves GET /metrics in the Prometheus text exposition format
// (version 0.0.4), read from the engine's counters region through the host table
// (metrics_read) at each scrape. One thread of its own serves every connection at once (poll,
// non-blocking sockets), each within a deadline: an idle or slow client never delays another's
// scrape. Nothing runs on a shard thread and a scrape costs the shards nothing.
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

    /// At most this many connections at once; a new one past it closes the oldest that has not
    /// sent its request yet.
    static let maxConnections = 64
    /// From accept to the last byte of the answer: a client that sends its request slowly, or
    /// reads the answer slowly, is closed at this deadline; others are served meanwhile.
    static let requestNanoseconds: UInt64 = 2_000_000_000

    struct Connection {
        var fd: Int32
        var deadline: UInt64
        var input: [UInt8] = []
        var output: [UInt8] = []
        var sent = 0
        var answering = false
    }

    /// One thread, every connection at once (poll): no client can hold up another's scrape.
    func run() {
        var connections: [Connection] = []
        var chunk = [UInt8](repeating: 0, count: 4096)
        while cb_load_acquire_u32(stopping) == 0 {
            var fds = [pollfd(fd: listener, events: Int16(POLLIN), revents: 0)]
            for c in connections { fds.append(pollfd(fd: c.fd, events: Int16(c.answering ? POLLOUT : POLLIN), revents: 0)) }
            let now = monotonic()
            var nearest: Int32 = 100
            if let first = connections.map(\.deadline).min() {
                let left: UInt64 = first > now ? (first - now) / 1_000_000 + 1 : 0
                nearest = Int32(min(100, left))
            }
            let ready = poll(&fds, nfds_t(fds.count), nearest)
            let at = monotonic()
            if ready > 0 {
                for i in 0..<connections.count where fds[i + 1].revents != 0 {
                    if connections[i].answering {
                        flush(&connections[i])
                    } else {
                        let n = chunk.withUnsafeMutableBytes { read(connections[i].fd, $0.baseAddress, $0.count) }
                        if n > 0 {
                            connections[i].input += chunk[0..<n]
                            let complete = connections[i].input.firstRange(of: [13, 10, 13, 10]) != nil
                            if complete || connections[i].input.count >= 16384 {
                                connections[i].output = answer(connections[i].input)
                                connections[i].answering = true
                                flush(&connections[i])
                            }
                        } else if n == 0 || (errno != EAGAIN && errno != EINTR) {
                            connections[i].answering = true  // gone before asking: closed below
                            connections[i].output = []
                        }
                    }
                }
                if fds[0].revents & Int16(POLLIN) != 0 {
                    while true {
                        let client = accept(listener, nil, nil)
                        guard client >= 0 else { break }
                        _ = fcntl(client, F_SETFD, FD_CLOEXEC)
                        _ = fcntl(client, F_SETFL, fcntl(client, F_GETFL) | O_NONBLOCK)
                        if connections.count >= Self.maxConnections {
                            let victim = connections.indices.filter { !connections[$0].answering }.min { connections[$0].deadline < connections[$1].deadline } ?? 0
                            close(connections[victim].fd)
                            connections.remove(at: victim)
                            count(error: "more than \(Self.maxConnections) connections: the oldest waiting one closed")
                        }
                        connections.append(Connection(fd: client, deadline: at + Self.requestNanoseconds))
                    }
                }
            }
            // Done, gone, or out of time.
            connections.removeAll { c in
                let finished = c.answering && c.sent >= c.output.count
                let late = at >= c.deadline
                if late && !finished { count(error: "a connection did not finish within \(Self.requestNanoseconds / 1_000_000_000) s: closed") }
                if finished || late { close(c.fd) }
                return finished || late
            }
        }
        for c in connections { close(c.fd) }
    }

    func monotonic() -> UInt64 {
        var t = timespec()
        clock_gettime(CLOCK_MONOTONIC, &t)
        return UInt64(t.tv_sec) * 1_000_000_000 + UInt64(t.tv_nsec)
    }

    /// Sends what the socket takes now.
    func flush(_ c: inout Connection) {
        while c.sent < c.output.count {
            let n = c.output.withUnsafeBytes { send(c.fd, $0.baseAddress! + c.sent, $0.count - c.sent, Int32(MSG_NOSIGNAL)) }
            if n > 0 {
                c.sent += n
            } else {
                if n < 0 && (errno == EAGAIN || errno == EINTR) { return }
                count(error: "send: \(String(cString: strerror(errno)))")
                c.sent = c.output.count  // give up on it
                return
            }
        }
    }

    /// The answer to a request (its line and headers).
    func answer(_ request: [UInt8]) -> [UInt8] {
        let line = String(decoding: request.prefix { $0 != 13 && $0 != 10 }, as: UTF8.self)
        let parts = line.split(separator: " ")
        guard parts.count == 3, parts[2].hasPrefix("HTTP/1.") else {
            count(error: "bad request line '\(line.prefix(80))'")
            return response(400, "Bad Request", "text/plain", "a request line 'GET /metrics HTTP/1.1' was expected\n")
        }
        guard parts[0] == "GET" || parts[0] == "HEAD" else {
            return response(405, "Method Not Allowed", "text/plain", "only GET\n", extra: "Allow: GET, HEAD\r\n")
        }
        let path = parts[1].split(separator: "?", maxSplits: 1).first.map(String.init) ?? ""
        switch path {
        case "/metrics":
            if let scrapes { _ = cb_fetch_add_u64_relaxed(scrapes, 1) }
            return response(200, "OK", "text/plain; version=0.0.4; charset=utf-8", exposition(), headOnly: parts[0] == "HEAD")
        case "/", "/healthz":
            return response(200, "OK", "text/plain", "crossbook metrics: GET /metrics\n", headOnly: parts[0] == "HEAD")
        default:
            return response(404, "Not Found", "text/plain", "not found: try /metrics\n")
        }
    }

    func count(error: String) {
        lastError = error
        if let errors { _ = cb_fetch_add_u64_relaxed(errors, 1) }
    }

    func response(_ code: Int, _ reason: String, _ type: String, _ body: String, extra: String = "",
                  headOnly: Bool = false) -> [UInt8] {
        let payload = Array(body.utf8)
        let head = "HTTP/1.1 \(code) \(reason)\r\nContent-Type: \(type)\r\nContent-Length: \(payload.count)\r\n\(extra)Connection: close\r\n\r\n"
        return Array(head.utf8) + (headOnly ? [] : payload)
    }

    /// The text format: for each family its HELP and TYPE once, then all its samples together
    /// (Prometheus refuses a scrape with a family twice). A family that comes back with another
    /// type is dropped and counted as an error.
    func exposition() -> String {
        final class Builder {
            var order: [String] = []
            var head: [String: (type: UInt32, text: String)] = [:]
            var lines: [String: String] = [:]
            var clashes: [String] = []
        }
        let builder = Builder()
        let context = Unmanaged.passUnretained(builder).toOpaque()
        _ = api.pointee.metrics_read(host, { context, metric in
            guard let context, let m = metric?.pointee, let namePointer = m.name else { return }
            let b = Unmanaged<Builder>.fromOpaque(context).takeUnretainedValue()
            let name = String(cString: namePointer)
            let labels = m.labels.map { String(cString: $0) } ?? ""
            if let known = b.head[name] {
                guard known.type == m.type else {
                    if !b.clashes.contains(name) { b.clashes.append(name) }
                    return
                }
            } else {
                let help = m.help.map { String(cString: $0) } ?? ""
                var text = help.isEmpty ? "" : "# HELP \(name) \(escapeHelp(help))\n"
                text += "# TYPE \(name) \(["counter", "gauge", "histogram"][Int(min(m.type, 2))])\n"
                b.head[name] = (m.type, text)
                b.order.append(name)
            }
            var out = ""
            if m.type == UInt32(CB_METRIC_HISTOGRAM) {
                let sep = labels.isEmpty ? "" : ","
                for i in 0..<Int(m.bucket_count) {
                    out += "\(name)_bucket{\(labels)\(sep)le=\"\(number(m.bucket_bounds[i]))\"} \(m.bucket_counts[i])\n"
                }
                out += "\(name)_bucket{\(labels)\(sep)le=\"+Inf\"} \(m.count)\n"
                out += "\(name)_sum\(labels.isEmpty ? "" : "{\(labels)}") \(number(m.sum))\n"
                out += "\(name)_count\(labels.isEmpty ? "" : "{\(labels)}") \(m.count)\n"
            } else {
                out += "\(name)\(labels.isEmpty ? "" : "{\(labels)}") \(number(m.value))\n"
            }
            b.lines[name, default: ""] += out
        }, context)
        if !builder.clashes.isEmpty { count(error: "families with two types dropped: \(builder.clashes.joined(separator: ", "))") }
        var text = ""
        for name in builder.order {
            text += builder.head[name]!.text
            text += builder.lines[name] ?? ""
        }
        return text
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
        _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)  // accepted until EAGAIN
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
