// `crossbook md`: subscribe to a running engine's event rings and print market data.
import ArgumentParser
import Engine
import Foundation
import Glibc
import SharedMemory
import Wire

nonisolated(unsafe) var mdInterrupted: Int32 = 0

struct MarketDataCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "md",
        abstract: "Print a running engine's market data: trades and L2 level changes, as they happen.",
        discussion: """
            TRADE,<symbol>,<taker side B|S>,<price>,<qty>,<engine sequence>
            L2,<symbol>,<B|S>,<price>,<qty>,<orders>,<engine sequence>
            By default this consumer holds the engine back if it reads too slowly (nothing is
            ever lost); with --may-detach the engine detaches it instead, and it exits with an error.
            """)

    @OptionGroup var target: InstanceOptions

    @Flag(help: "Let the engine detach this consumer when it lags, instead of waiting for it.")
    var mayDetach = false

    @Option(help: "Stop after this many events (0: until Ctrl-C or the engine stops).")
    var count: Int = 0

    func run() throws {
        let dir = target.resolvedDirectory
        let engine: EngineFile
        do { engine = try EngineFile.attach(directory: dir) } catch {
            throw CLIError("engine '\(target.instance)' is not running: \(error)")
        }
        var names: [UInt32: String] = [:]
        // Read again when a symbol listed since (crossbook symbol add) shows up.
        func readNames() {
            if let text = try? String(contentsOfFile: InstanceLayout.symbolsPath(dir), encoding: .utf8) {
                for line in text.split(separator: "\n") {
                    let f = line.split(separator: " ")
                    if f.count >= 2, let id = UInt32(f[1]) { names[id] = String(f[0]) }
                }
            }
        }
        readNames()
        var namesRead = engine.symbolCount
        var consumers: [EventConsumer] = []
        var rings: [EventRing] = []
        for s in 0..<engine.shardCount {
            do {
                let ring = try EventRing.attach(path: InstanceLayout.eventRingPath(dir, shard: s))
                rings.append(ring)
                consumers.append(try ring.consumer(mayDetach: mayDetach))
            } catch {
                throw CLIError("shard \(s): \(error)")
            }
        }
        // SIGINT or SIGTERM ends it; a parent may have started it with them blocked or ignored.
        signal(SIGINT) { _ in mdInterrupted = 1 }
        signal(SIGTERM) { _ in mdInterrupted = 1 }
        var stopSignals = sigset_t()
        sigemptyset(&stopSignals)
        sigaddset(&stopSignals, SIGINT)
        sigaddset(&stopSignals, SIGTERM)
        pthread_sigmask(SIG_UNBLOCK, &stopSignals, nil)
        var printed = 0
        while mdInterrupted == 0 && (count == 0 || printed < count) {
            var any = 0
            for consumer in consumers {
                let n: Int
                do { n = try consumers.count == 1 ? consumer.wait(timeoutNanoseconds: 100_000_000) : consumer.poll() } catch {
                    throw CLIError("\(error)")
                }
                for k in 0..<n where count == 0 || printed < count {
                    guard let e = MarketEventRecord.decode(consumer.slot(k)) else { continue }
                    if names[e.symbolId] == nil, engine.symbolCount != namesRead {
                        namesRead = engine.symbolCount
                        readNames()
                    }
                    let symbol = names[e.symbolId] ?? "#\(e.symbolId)"
                    switch e.kind {
                    case .trade: emit("TRADE,\(symbol),\(e.side.letter),\(e.price),\(e.quantity),\(e.engineSequence)")
                    case .level: emit("L2,\(symbol),\(e.side.letter),\(e.price),\(e.quantity),\(e.orders),\(e.engineSequence)")
                    }
                    printed += 1
                }
                consumer.release(n)
                any += n
            }
            if any == 0 {
                if !processIsAlive(engine.enginePid) || engine.state != .running {
                    throw CLIError("engine '\(target.instance)' stopped")
                }
                if consumers.count > 1 { usleep(1000) }
            }
        }
        _ = rings
    }
}

/// One line straight to standard output: a subscriber's lines must not wait in a buffer.
func emit(_ line: String) {
    let bytes = Array((line + "\n").utf8)
    _ = bytes.withUnsafeBytes { write(1, $0.baseAddress, $0.count) }
}
