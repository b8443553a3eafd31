// A transfer blob comes from the store: input like any other. The streams it names that are new
// to the target each take a session id there (Engine.streamSessions); a blob cannot spend them
// all: at most `maxNewStreamsPerMove` a move, refused before any is taken.

import Foundation
import Glibc
@testable import Engine
import Testing
import TestSupport
import OrderBook

@Suite("Transfer limits")
struct TransferLimitsTests {
    static func blob(streams: Int, user: Int = 1000) -> TransferBlob {
        var owners: [UInt32: String] = [:]
        for i in 0..<streams { owners[UInt32(i + 1)] = "client:\(user):s\(i)#0" }
        return TransferBlob(spec: SymbolSpec(name: "HOT-USD", id: 9), epoch: 3, source: "elsewhere", positions: [:], owners: owners, book: [])
    }

    @Test("a blob naming 257 streams new here is refused with the reason before a session id is taken; 256 get one each, journaled, and a second move naming them takes no more")
    func newStreamsPerMove() throws {
        let dir = testDirectory(), data = NSTemporaryDirectory() + "crossbook-data-\(UUID().uuidString.prefix(8))"
        defer { removeTree(data) }
        let engine = try durableEngine(dir, data: data, durability: .async)
        defer { engine.stop() }
        #expect(Engine.maxNewStreamsPerMove == 256)
        let before = engine.idLock.locked { engine.sourceSessionIds }

        var known: [String: UInt32] = [:]
        do {
            try engine.streamSessions(for: Self.blob(streams: 257), shard: 0, known: &known, timeout: 5)
            Issue.record("257 new streams were taken")
        } catch {
            #expect(error.description.contains("257 streams new to this engine (at most 256 a move)"), "\(error)")
        }
        #expect(known.isEmpty)
        #expect(engine.idLock.locked { engine.sourceSessionIds } == before)
        #expect(engine.adminState(shard: 0, timeout: 5)?.sourceSessions.keys.contains { $0.hasPrefix("client:") } == false)

        // 256: each gets its own session, bound on the shard (journaled), given back to the
        // stream's next client.
        try engine.streamSessions(for: Self.blob(streams: 256), shard: 0, known: &known, timeout: 5)
        #expect(known.count == 256 && Set(known.values).count == 256 && !known.values.contains(0))
        let ids = engine.idLock.locked { engine.sourceSessionIds }
        for (key, id) in known { #expect(ids[key] == id) }
        // A second move naming them (as transferIn asks: from the shard's bindings) gives each
        // the id it has, and takes no more.
        var again = engine.adminState(shard: 0, timeout: 5)?.sourceSessions ?? [:]
        try engine.streamSessions(for: Self.blob(streams: 256), shard: 0, known: &again, timeout: 5)
        for (key, id) in known { #expect(again[key] == id) }
        #expect(engine.idLock.locked { engine.sourceSessionIds }.count == ids.count)
        // A blob with an owner whose name is not a stream's (no partition suffix) is refused.
        var bad = Self.blob(streams: 0)
        bad.owners[1] = "client:1000:nopartition"
        var none: [String: UInt32] = [:]
        #expect(throws: EngineError.self) { try engine.streamSessions(for: bad, shard: 0, known: &none, timeout: 5) }
    }
}
