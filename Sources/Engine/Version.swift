// The engine's version: `crossbook --version`, the plugin host table's host_version, and the
// crossbook_build_info metric.
public let crossbookVersion = "0.6.0"
