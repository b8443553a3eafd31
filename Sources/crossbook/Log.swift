// The engine's log: swift-log, one line per message on standard error (systemd's journal takes
// it from there), as text or JSON, filtered by level. Plugin messages keep the level the plugin
// gave ("plugin NAME [warning]: ..."); the engine's own lines are info, except the few it marks
// as warnings or errors by their first word.
import Foundation
import Glibc
import Logging

enum LogFormat: String, CaseIterable, Sendable {
    case text, json
}

/// Writes each message as one write(2) to standard error: lines of concurrent threads never mix.
struct CrossbookLogHandler: LogHandler {
    let format: LogFormat
    var logLevel: Logger.Level
    var metadata: Logger.Metadata = [:]

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        var tm = tm()
        var seconds = ts.tv_sec
        gmtime_r(&seconds, &tm)
        let stamp = String(format: "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday,
                           tm.tm_hour, tm.tm_min, tm.tm_sec, Int(ts.tv_nsec / 1_000_000))
        let text = "\(event.message)"
        let line: String
        switch format {
        case .text:
            // Info lines as they always were; other levels say theirs.
            line = event.level == .info ? "\(stamp) \(text)\n" : "\(stamp) \(event.level.rawValue.uppercased()) \(text)\n"
        case .json:
            var object: [String: String] = ["time": stamp, "level": event.level.rawValue, "message": text]
            for (key, value) in metadata.merging(event.metadata ?? [:], uniquingKeysWith: { $1 }) { object[key] = "\(value)" }
            let data = (try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])) ?? Data("{}".utf8)
            line = String(decoding: data, as: UTF8.self) + "\n"
        }
        let bytes = Array(line.utf8)
        _ = bytes.withUnsafeBytes { write(2, $0.baseAddress, $0.count) }
    }
}

/// The process's logger: text at info until `bootstrapLog` says otherwise.
nonisolated(unsafe) var engineLogger: Logger = Logger(label: "crossbook") { _ in
    CrossbookLogHandler(format: .text, logLevel: .info)
}

func bootstrapLog(level: Logger.Level, format: LogFormat, instance: String) {
    engineLogger = Logger(label: "crossbook") { _ in CrossbookLogHandler(format: format, logLevel: level) }
    if format == .json { engineLogger[metadataKey: "instance"] = "\(instance)" }
}

/// The level of an engine line: a plugin's own tag, else a few marks, else info.
func level(of text: String) -> Logger.Level {
    if text.hasPrefix("plugin "), let open = text.firstIndex(of: "["), let close = text[open...].firstIndex(of: "]") {
        switch text[text.index(after: open)..<close] {
        case "debug": return .debug
        case "warning": return .warning
        case "error": return .error
        case "info": return .info
        default: break
        }
    }
    if text.contains(": health degraded") { return .warning }
    if text.contains(": health failed") || text.hasPrefix("Error") { return .error }
    return .info
}

/// Log lines go to stderr through the logger.
func logLine(_ text: String) {
    engineLogger.log(level: level(of: text), "\(text)")
}

/// systemd's readiness protocol (sd_notify), without libsystemd: one datagram to the socket
/// NOTIFY_SOCKET names ("@..." is an abstract socket). Nothing when it is unset.
func notifySystemd(_ state: String) {
    guard let raw = getenv("NOTIFY_SOCKET") else { return }
    var path = Array(String(cString: raw).utf8)
    guard !path.isEmpty, path.count < 108 else { return }
    if path[0] == UInt8(ascii: "@") { path[0] = 0 }
    let fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
    guard fd >= 0 else { return }
    defer { close(fd) }
    var address = sockaddr_un()
    address.sun_family = sa_family_t(AF_UNIX)
    withUnsafeMutableBytes(of: &address.sun_path) { out in
        for (i, byte) in path.enumerated() { out[i] = byte }
    }
    let length = socklen_t(MemoryLayout<sa_family_t>.size + path.count)
    let message = Array(state.utf8)
    _ = withUnsafePointer(to: &address) { pointer in
        pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { sa in
            message.withUnsafeBytes { sendto(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL), sa, length) }
        }
    }
}
