// Client streams: a shared-memory client that names a stream gets the session id the stream had
// and the engine's position in it per shard, so that after a restart (or a failover:
// FailoverTests) it resends what was not acknowledged with the same offsets and each order is
// taken exactly once. Hostile stream names in a session file are refused with a reason.
import CrossbookClient
@testable import Engine
import Foundation
import Glibc
import OrderBook
import SharedMemory
import Testing
import TestSupport
import Wire

/// Sends `command` at `offset`, waiting while the ring is full.
func sendAt(_ client: CrossbookClient, _ command: BookCommand, _ symbol: SymbolInfo, offset: UInt64) {
    let deadline = Date().addingTimeInterval(5)
    while !client.submit(command, symbol: symbol, clientSequence: offset), Date() < deadline { usleep(100) }
}

/// Reports until `count` have come (or 5 s).
func reports(_ client: CrossbookClient, count: Int) throws -> [ReportRecord.Report] {
    var out: [ReportRecord.Report] = []
    let deadline = Date().addingTimeInterval(5)
    while out.count < count && Date() < deadline {
        _ = try client.waitForReports(timeout: 0.2) { out.append($0) }
    }
    return out
}

/// A handshake written by hand, as a hostile local process could: rings for every shard, a
/// session file of the longer form that `mutate` spoils, the announcement. The engine's answer
/// (state, refusal code).
func handMadeStreamHandshake(_ dir: String, shards: Int, mutate: (UnsafeMutableRawPointer) -> Void) throws -> (SessionFile.State, UInt32) {
    let name = "c\(getpid())-hand\(UInt32.random(in: 0...999_999))"
    var rings: [Ring] = []
    for s in 0..<shards {
        rings.append(try Ring.create(path: InstanceLayout.commandRingPath(dir, name, shard: s), capacity: 64, consumerMayPark: false))
        rings.append(try Ring.create(path: InstanceLayout.reportRingPath(dir, name, shard: s), capacity: 64, consumerMayPark: true))
    }
    let session = try SessionFile.create(path: InstanceLayout.sessionPath(dir, name), mode: 0o600, stream: "placeholder")
    mutate(session.file.base)
    let hello = InstanceLayout.helloPath(dir, name)
    FileManager.default.createFile(atPath: hello, contents: nil)
    let state = session.awaitAnswer(timeoutNanoseconds: 5_000_000_000)
    let refusal = session.refusal
    unlink(InstanceLayout.sessionPath(dir, name))
    for s in 0..<shards {
        unlink(InstanceLayout.commandRingPath(dir, name, shard: s))
        unlink(InstanceLayout.reportRingPath(dir, name, shard: s))
    }
    _ = rings
    return (state, refusal)
}

@Suite("Client streams (exactly-once resend)", .serialized)
struct StreamTests {
    @Test("a stream resumes after a restart: same session id (its resting orders are its own), the engine's position per shard; a resent order already taken is rejected (duplicate_ingress), a new one is taken; one client per stream")
    func resumeAfterRestart() throws {
        let dir = testDirectory(), data = NSTemporaryDirectory() + "crossbook-stream-\(UUID().uuidString.prefix(8))"
        defer { removeTree(data) }
        let engine = try durableEngine(dir, data: data, instance: "st")
        // A plain client first: the stream does not get its id.
        let plain = try CrossbookClient(instance: "st", directory: dir)
        let first = try CrossbookClient(instance: "st", directory: dir, stream: "desk-1")
        #expect(first.resumeOffsets == [0])
        #expect(first.sessionId != plain.sessionId)
        // One client per stream at a time.
        #expect(throws: ClientError.self) { _ = try CrossbookClient(instance: "st", directory: dir, timeout: 2, stream: "desk-1") }
        #expect(throws: ClientError.self) { _ = try CrossbookClient(instance: "st", directory: dir, stream: "no/slash") }
        let btc = try first.symbol("BTC-USD")
        for k in 0..<100 {
            sendAt(first, .new(NewOrder(orderId: OrderId(k + 1), side: .buy, price: 100 + Int64(k % 5), quantity: 1)), btc, offset: UInt64(k))
        }
        let acks = try reports(first, count: 100)
        #expect(acks.count == 100 && acks.allSatisfy { $0.kind == .accepted })
        // An offset below the position is a duplicate even live.
        sendAt(first, .new(NewOrder(orderId: 500, side: .buy, price: 100, quantity: 1)), btc, offset: 50)
        #expect(try reports(first, count: 1).first?.code == RejectReason.duplicateIngress.rawValue)
        let oldSession = first.sessionId
        plain.close()
        // Stopped with the stream attached: nothing undid its binding (as after a crash).
        engine.stop()
        let final = engine.finalDigests

        let restarted = try durableEngine(dir, data: data, instance: "st")
        #expect(restarted.recoveredDigests == final)
        let other = try CrossbookClient(instance: "st", directory: dir)
        #expect(other.sessionId != oldSession, "a new plain client must not get the stream's id")
        let again = try CrossbookClient(instance: "st", directory: dir, stream: "desk-1")
        #expect(again.sessionId == oldSession)
        #expect(again.resumeOffsets == [100])
        #expect(again.wasTaken(offset: 99, symbol: btc) && !again.wasTaken(offset: 100, symbol: btc))
        // What the client never saw acknowledged (say the last 10), sent again with its offsets.
        for k in 90..<100 {
            sendAt(again, .new(NewOrder(orderId: OrderId(k + 1), side: .buy, price: 100 + Int64(k % 5), quantity: 1)), btc, offset: UInt64(k))
        }
        let resent = try reports(again, count: 10)
        #expect(resent.count == 10 && resent.allSatisfy { $0.kind == .rejected && $0.code == RejectReason.duplicateIngress.rawValue })
        // New orders go on from the position; an order of before the restart is the stream's own.
        sendAt(again, .new(NewOrder(orderId: 101, side: .buy, price: 100, quantity: 1)), btc, offset: 100)
        sendAt(again, .cancel(CancelOrder(orderId: 1)), btc, offset: 101)
        let after = try reports(again, count: 2)
        #expect(after.map(\.kind) == [.accepted, .cancelled] && after.last?.orderId == 1, "\(after)")
        // The plain client cannot touch the stream's orders.
        sendAt(other, .cancel(CancelOrder(orderId: 2)), btc, offset: 0)
        #expect(try reports(other, count: 1).first?.kind == .rejected)
        #expect(restarted.adminState(shard: 0)?.positions["client:\(geteuid()):desk-1#0"] == 101)
        again.close()
        other.close()
        // Its next client in the same run: same id, same position.
        #expect(waitFor(5) { (try? CrossbookClient(instance: "st", directory: dir, timeout: 1, stream: "desk-1")).map { c in
            defer { c.close() }
            return c.sessionId == oldSession && c.resumeOffsets == [102]
        } ?? false })
        restarted.stop()
        let third = try durableEngine(dir, data: data, instance: "st")
        #expect(third.recoveredDigests == restarted.finalDigests)
        third.stop()
    }

    @Test("hostile stream names and lengths in a session file: refused with code 6, the engine serves on")
    func hostileStreamNames() throws {
        let dir = testDirectory()
        let engine = try startEngine(dir, instance: "sth")
        defer { engine.stop() }
        let cases: [(String, (UnsafeMutableRawPointer) -> Void)] = [
            ("length 0", { $0.storeBytes(of: UInt32(0), toByteOffset: 24, as: UInt32.self) }),
            ("length 65", { $0.storeBytes(of: UInt32(65), toByteOffset: 24, as: UInt32.self) }),
            ("length 2^32-1", { $0.storeBytes(of: UInt32.max, toByteOffset: 24, as: UInt32.self) }),
            ("a slash", { $0.storeBytes(of: UInt8(ascii: "/"), toByteOffset: 33, as: UInt8.self) }),
            ("a NUL", { $0.storeBytes(of: UInt8(0), toByteOffset: 34, as: UInt8.self) }),
            ("invalid UTF-8", { $0.storeBytes(of: UInt8(0xFF), toByteOffset: 32, as: UInt8.self) }),
        ]
        for (what, mutate) in cases {
            let (state, code) = try handMadeStreamHandshake(dir, shards: 1, mutate: mutate)
            #expect(state == .refused && code == 6, "\(what): \(state) \(code)")
        }
        // The engine still serves, streams included.
        let good = try CrossbookClient(instance: "sth", directory: dir, stream: "ok_1.a-b")
        #expect(good.resumeOffsets == [0])
        good.close()
    }
}
