// What the configuration says of plugins: which to load, from where, with what config; and the
// one error a plugin that cannot load or start becomes.

import CPluginABI
import CSync
import Glibc
import Journal
import OrderBook
import SharedMemory

/// One plugin the configuration names.
public struct PluginSpec: Sendable, Equatable {
    public var name: String
    /// The file in the plugin directory; default `libcrossbook-<name>.so`.
    public var file: String?
    /// A plugin that cannot load is logged and skipped instead of stopping the start.
    public var optional: Bool
    /// The plugin's config section, values as text.
    public var config: [String: String]

    public init(name: String, file: String? = nil, optional: Bool = false, config: [String: String] = [:]) {
        self.name = name
        self.file = file
        self.optional = optional
        self.config = config
    }

    public var fileName: String { file ?? "libcrossbook-\(name).so" }
}

public struct PluginSettings: Sendable, Equatable {
    /// Where the plugin files are ([plugins] dir).
    public var directory: String
    public var load: [PluginSpec]

    public init(directory: String, load: [PluginSpec]) {
        self.directory = directory
        self.load = load
    }

    /// Where plugins are looked for by default: beside the executable (where `swift build` and
    /// `make` put them), or, for an installed engine (`make install`: bin/crossbook), in
    /// ../lib/crossbook when that holds them and the executable's directory does not.
    public static var defaultDirectory: String {
        let here = executableDirectory
        let installed = here + "/../lib/crossbook"
        if access(here + "/libcrossbook-snapshot-file.so", F_OK) != 0, access(installed + "/libcrossbook-snapshot-file.so", F_OK) == 0 {
            return installed
        }
        return here
    }

    /// The directory of the running executable: where `swift build` and `make` put the plugins.
    public static var executableDirectory: String {
        var buffer = [CChar](repeating: 0, count: 4096)
        let n = readlink("/proc/self/exe", &buffer, buffer.count - 1)
        guard n > 0 else { return "." }
        let path = String(decoding: buffer[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
        guard let slash = path.lastIndex(of: "/") else { return "." }
        return String(path[..<slash])
    }
}

/// Why a plugin did not load or start: which plugin, what is wrong.
public struct PluginError: Error, CustomStringConvertible, Equatable {
    public enum Cause: String, Sendable {
        case missingFile = "missing file"
        case unsafePermissions = "unsafe permissions"
        case cannotLoad = "cannot load"
        case missingEntryPoint = "missing entry point"
        case abiMismatch = "ABI mismatch"
        case badDescriptor = "bad descriptor"
        case startFailed = "start failed"
    }

    public var plugin: String
    public var cause: Cause
    public var detail: String
    public var description: String { "plugin \(plugin): \(cause.rawValue): \(detail)" }
}
