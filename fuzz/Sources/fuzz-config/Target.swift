// The configuration file (TOML): an operator's typo, a truncated file, anything.
import CrossbookConfig
import FuzzSupport

let samples = [
    """
    [engine]
    instance = "prod"
    lag_timeout_ms = 1000
    data_dir = "./data"
    durability = "sync"
    [[shards]]
    core = 1
    [book]
    orders = 65536
    levels = 4096
    [[symbols]]
    name = "BTC-USD"
    tick_size = 1
    lot_size = 1
    min_price = 1
    max_price = 10000000
    max_order_quantity = 1000000
    shard = 0
    [plugins]
    dir = "/opt/crossbook/plugins"
    [[plugins.load]]
    name = "metrics-prometheus"
    optional = true
    config = { listen = "127.0.0.1:9464" }
    """,
    "[book]\norders = 0\n", "[[symbols]]\nname = \"X\"\ntick_size = 0\n",
]


@_cdecl("LLVMFuzzerInitialize")
public func fuzzInitialize(_ argc: UnsafeMutablePointer<Int32>?, _ argv: UnsafeMutableRawPointer?) -> Int32 {
    writeSeedsIfAsked { samples.map { Array($0.utf8) } }
    return 0
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOne(_ data: UnsafePointer<UInt8>?, _ count: Int) -> Int32 {
    let text = String(decoding: input(data, count), as: UTF8.self)
    _ = try? EngineConfig(toml: text, source: "fuzz.toml")
    return 0
}
