// The replication connection's sealing ([replication] secret_file): AES-256-GCM (cb_aead in
// CAuth) as the standard defines it, and a connection that opens each frame once, in order, in
// its direction: a byte changed in the body, the header or the tag, a frame replayed or sent
// back the other way, or another key, ends the connection with the reason.

import CAuth
import Foundation
import Glibc
@testable import Engine
import Testing

@Suite("Replication encryption")
struct ReplicationCryptoTests {
    static func hex(_ s: String) -> [UInt8] {
        var out: [UInt8] = []
        var i = s.startIndex
        while i < s.endIndex {
            let j = s.index(i, offsetBy: 2)
            out.append(UInt8(s[i..<j], radix: 16)!)
            i = j
        }
        return out
    }

    /// Seals `plain` in place; the tag.
    static func seal(_ aead: OpaquePointer, _ nonce: [UInt8], _ aad: [UInt8], _ data: inout [UInt8]) -> [UInt8] {
        var tag = [UInt8](repeating: 0, count: 16)
        let rc = data.withUnsafeMutableBufferPointer { d in cb_aead_seal(aead, nonce, aad, aad.count, d.baseAddress, d.count, &tag) }
        #expect(rc == 0)
        return tag
    }

    static func open(_ aead: OpaquePointer, _ nonce: [UInt8], _ aad: [UInt8], _ data: [UInt8], _ tag: [UInt8]) -> (Int32, [UInt8]) {
        var d = data
        let rc = d.withUnsafeMutableBufferPointer { cb_aead_open(aead, nonce, aad, aad.count, $0.baseAddress, $0.count, tag) }
        return (rc, d)
    }

    @Test("AES-256-GCM: the GCM specification's test case 16 (key, nonce, AAD, 60 bytes), and a change anywhere fails to open")
    func knownAnswer() throws {
        let key = Self.hex("feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308")
        let nonce = Self.hex("cafebabefacedbaddecaf888")
        let aad = Self.hex("feedfacedeadbeeffeedfacedeadbeefabaddad2")
        let plain = Self.hex("d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a721c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39")
        let cipher = Self.hex("522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662")
        let expectedTag = Self.hex("76fc6ece0f4e1768cddf8853bb2d551b")
        let aead = try #require(key.withUnsafeBufferPointer { cb_aead_new($0.baseAddress) })
        defer { cb_aead_free(aead) }
        var data = plain
        let tag = Self.seal(aead, nonce, aad, &data)
        #expect(data == cipher && tag == expectedTag)
        // The same handle, again (the key is set once; each message sets its nonce).
        var again = plain
        #expect(Self.seal(aead, nonce, aad, &again) == expectedTag && again == cipher)
        let (rc, opened) = Self.open(aead, nonce, aad, cipher, tag)
        #expect(rc == 0 && opened == plain)
        var flipped = cipher; flipped[17] ^= 1
        var badAad = aad; badAad[0] ^= 0x80
        var badTag = tag; badTag[15] ^= 1
        var badNonce = nonce; badNonce[11] ^= 1
        #expect(Self.open(aead, nonce, aad, flipped, tag).0 == 1)
        #expect(Self.open(aead, nonce, badAad, cipher, tag).0 == 1)
        #expect(Self.open(aead, nonce, aad, cipher, badTag).0 == 1)
        #expect(Self.open(aead, badNonce, aad, cipher, tag).0 == 1)
        // Empty body: the tag still covers the header.
        var empty: [UInt8] = []
        let emptyTag = Self.seal(aead, nonce, aad, &empty)
        #expect(Self.open(aead, nonce, aad, [], emptyTag).0 == 0)
        #expect(Self.open(aead, nonce, badAad, [], emptyTag).0 == 1)
    }

    @Test("a hello's authentication part: a nonce and one or two key ids round trip; a nonce alone, a cut id, three ids are refused with the reason; key ids differ per secret and say nothing of it")
    func helloKeyIds() throws {
        let nonce = (0..<32).map { UInt8($0) }
        let a = Array("a secret of at least thirty-two bytes, one".utf8), b = Array("a secret of at least thirty-two bytes, two".utf8)
        let ids = [ReplicationAuth.keyId(a), ReplicationAuth.keyId(b)]
        #expect(ids[0].count == 8 && ids[0] != ids[1] && ids[0] == ReplicationAuth.keyId(a))
        for keys in [[ids[0]], ids] {
            let hello = ReplicationMessage.hello(epoch: 3, configuration: 9, shards: [.init(last: 1, crc: 2)], nonce: nonce, keyIds: keys)
            let frame = hello.encode()
            let decoded = try frame.withUnsafeBytes { try ReplicationMessage.decode(kind: 1, UnsafeRawBufferPointer(rebasing: $0[8...])) }
            #expect(decoded == hello)
        }
        let plain = ReplicationMessage.hello(epoch: 3, configuration: 9, shards: [.init(last: 1, crc: 2)]).encode()
        for (tail, why) in [(nonce, "authentication part is 32 bytes"), (nonce + ids[0].prefix(5), "37 bytes"),
                            (nonce + ids[0] + ids[1] + ids[0], "56 bytes"), ([1], "1 bytes")] {
            let body = Array(plain[8...]) + tail
            do {
                _ = try body.withUnsafeBytes { try ReplicationMessage.decode(kind: 1, $0) }
                Issue.record("a hello with \(tail.count) more bytes was taken")
            } catch {
                #expect("\(error)".contains(why), "\(error)")
            }
        }
    }

    /// A connection on one end of a socket pair; the other end's raw bytes.
    final class Wire {
        let connection: ReplicationConnection
        let raw: Int32
        init(key: [UInt8]?, primary: Bool) {
            var pair: [Int32] = [0, 0]
            precondition(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &pair) == 0)
            connection = ReplicationConnection(fd: pair[0], peer: "test")
            if let key { connection.authenticate(key: key, primary: primary) }
            raw = pair[1]
        }
        deinit { close(raw) }
        /// What the connection sent, as it went on the wire.
        func taken() -> [UInt8] {
            var out: [UInt8] = []
            var chunk = [UInt8](repeating: 0, count: 1 << 20)
            while true {
                var p = pollfd(fd: raw, events: Int16(POLLIN), revents: 0)
                guard poll(&p, 1, 100) == 1 else { return out }
                let n = chunk.withUnsafeMutableBytes { recv(raw, $0.baseAddress, $0.count, 0) }
                guard n > 0 else { return out }
                out += chunk[0..<n]
            }
        }
        func put(_ bytes: [UInt8]) { _ = bytes.withUnsafeBytes { Glibc.send(raw, $0.baseAddress, $0.count, 0) } }
    }

    static func rejects(_ bytes: [UInt8], key: [UInt8], primary: Bool = false, after: [[UInt8]] = []) -> String? {
        let w = Wire(key: key, primary: primary)
        for frame in after {
            w.put(frame)
            guard (try? w.connection.receive(timeoutMilliseconds: 1000)) != nil else { return "an earlier frame did not open" }
        }
        w.put(bytes)
        do {
            _ = try w.connection.receive(timeoutMilliseconds: 1000)
            return nil
        } catch {
            return error.description
        }
    }

    @Test("frames sealed under the session's key: readable only with it, once, in order, in their direction; what they carry is not on the wire in the clear")
    func connection() throws {
        let key = (0..<32).map { _ in UInt8.random(in: 0...255) }
        let records = (0..<4096).map { UInt8(truncatingIfNeeded: $0 &* 7) }
        let messages: [ReplicationMessage] = [.records(shard: 1, durable: 77, bytes: records), .heartbeat(epoch: 3, engaged: true, durable: [5, 6]),
                                              .ack(shard: 0, durable: 9)]
        let primary = Wire(key: key, primary: true)
        for m in messages { try primary.connection.send(m) }
        let sent = primary.taken()
        let frames = messages.map { $0.encode().count + ReplicationAuth.tagSize }
        #expect(sent.count == frames.reduce(0, +))
        // The records' bytes are not on the wire; without a key they are.
        #expect(occurrences(of: [Array(records[100..<180])], in: sent) == 0)
        let plain = Wire(key: nil, primary: true)
        try plain.connection.send(messages[0])
        #expect(occurrences(of: [Array(records[100..<180])], in: plain.taken()) == 1)

        // The standby opens them, in order.
        let standby = Wire(key: key, primary: false)
        standby.put(sent)
        for m in messages { #expect(try standby.connection.receive(timeoutMilliseconds: 1000) == m) }

        let first = Array(sent[0..<frames[0]]), second = Array(sent[frames[0]..<(frames[0] + frames[1])])
        var body = first; body[8 + 200] ^= 1
        var header = first; header[4] ^= 1  // the kind
        var tag = first; tag[tag.count - 1] ^= 1
        let otherKey = key.map { $0 ^ 0x5A }
        for (why, bytes, k, after) in [("a body byte", body, key, [[UInt8]]()), ("the header's kind", header, key, []), ("a tag byte", tag, key, []),
                                       ("another key", first, otherKey, []), ("out of order", second, key, []), ("replayed", first, key, [first])] {
            let reason = Self.rejects(bytes, key: k, after: after)
            #expect(reason?.contains("does not authenticate") == true, "\(why): \(reason ?? "opened")")
        }
        // A primary's frame sent back to the primary (the other direction's nonce).
        #expect(Self.rejects(first, key: key, primary: true)?.contains("does not authenticate") == true)
    }
}
