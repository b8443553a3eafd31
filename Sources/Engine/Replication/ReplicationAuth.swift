// Authentication of the replication connection ([replication] secret_file). Without it, anyone
// who can reach a primary's port could follow its journal, and anyone who could answer in a
// primary's place could feed a standby records: the README said "run it on a private network".
// With it, both engines prove they hold the pair's secret (HMAC-SHA256 over both sides' fresh
// nonces and the hello: a recorded answer is worth nothing on another connection), and every
// frame after is encrypted and tagged (AES-256-GCM) under the session's key, numbered in its
// direction: the journal (orders, accounts) does not cross the network readable, and a frame
// altered, dropped, replayed or injected on the way ends the connection. Rotation without a
// restart: the files are read again at each handshake; the standby's hello names its secrets
// (secret_file, then previous_secret_file) by key id, and the primary proves the first of them
// it holds too. What it does not do: hide the frames' sizes and kinds (their headers); resist
// guessing a weak secret offline from a recorded handshake (use 32 random bytes or more, as the
// README says); protect the lease's Redis (the plugin's own TLS does).
// The protocol's frames: ReplicationWire.swift.

import CAuth
import Glibc

/// The pair's secrets as the files hold them now: read at each handshake, so that a secret is
/// rotated without a restart. `current` ([replication] secret_file) is the one a standby offers
/// first; `previous` (previous_secret_file), while a rotation is under way, is still accepted.
struct ReplicationSecrets: Sendable {
    let current: String
    let previous: String?

    /// The secrets in order of preference (one or two). A previous_secret_file that does not
    /// exist is none (the rotation is over); one that exists must be good, as secret_file must.
    func read() throws(EngineError) -> [[UInt8]] {
        var secrets = [try ReplicationAuth.readSecret(current)]
        if let previous, access(previous, F_OK) == 0 || errno != ENOENT {
            let old = try ReplicationAuth.readSecret(previous)
            if !ReplicationAuth.equal(old, secrets[0]) { secrets.append(old) }
        }
        return secrets
    }
}

enum ReplicationAuth {
    static let nonceSize = 32
    /// Bytes of a secret's key id: a standby's hello names its secrets by them, so a primary that
    /// holds two (a rotation) knows which to prove.
    static let keyIdSize = 8

    /// A secret's key id: the first 8 bytes of HMAC-SHA256 under it of a label (says nothing of it).
    static func keyId(_ secret: [UInt8]) -> [UInt8] {
        Array(hmac(secret, Array("crossbook replication key id".utf8)).prefix(keyIdSize))
    }

    static func hex(_ bytes: [UInt8]) -> String { bytes.map { String($0, radix: 16).count == 1 ? "0" + String($0, radix: 16) : String($0, radix: 16) }.joined() }
    /// Bytes a frame's tag adds (AES-256-GCM's).
    static let tagSize = 16

    static func nonce() -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: nonceSize)
        let rc = bytes.withUnsafeMutableBufferPointer { cb_random_bytes($0.baseAddress, nonceSize) }
        precondition(rc == 0, "getrandom failed: errno \(rc)")
        return bytes
    }

    static func hmac(_ key: [UInt8], _ a: [UInt8], _ b: [UInt8] = []) -> [UInt8] {
        guard let mac = key.withUnsafeBufferPointer({ cb_mac_new($0.baseAddress, $0.count) }) else {
            fatalError("libcrypto cannot make an HMAC-SHA256")
        }
        defer { cb_mac_free(mac) }
        return a.withUnsafeBytes { a in b.withUnsafeBytes { b in compute(mac, a, b) } }
    }

    /// HMAC-SHA256 under `mac`'s key of a || b.
    static func compute(_ mac: OpaquePointer, _ a: UnsafeRawBufferPointer, _ b: UnsafeRawBufferPointer) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: 32)
        let rc = out.withUnsafeMutableBufferPointer { cb_mac_compute(mac, a.baseAddress, a.count, b.baseAddress, b.count, nil, 0, $0.baseAddress) }
        precondition(rc == 0, "libcrypto failed to compute an HMAC-SHA256")
        return out
    }

    /// A role's proof: its label, the standby's nonce, the primary's, and the hello as sent.
    static func proof(_ secret: [UInt8], primary: Bool, standbyNonce: [UInt8], primaryNonce: [UInt8], hello: [UInt8]) -> [UInt8] {
        hmac(secret, Array((primary ? "crossbook replication primary" : "crossbook replication standby").utf8) + standbyNonce + primaryNonce, hello)
    }

    /// The session's key (AES-256-GCM) for its frames.
    static func sessionKey(_ secret: [UInt8], standbyNonce: [UInt8], primaryNonce: [UInt8]) -> [UInt8] {
        hmac(secret, Array("crossbook replication session".utf8) + standbyNonce + primaryNonce)
    }

    static func equal(_ a: [UInt8], _ b: [UInt8]) -> Bool {
        a.count == b.count && a.withUnsafeBufferPointer { a in b.withUnsafeBufferPointer { cb_equal_constant_time(a.baseAddress, $0.baseAddress, a.count) == 1 } }
    }

    /// The pair's secret from `path`: a regular file (not a link) of this process's user that no
    /// one else may read or write, 32 to 4096 bytes (a final newline is not part of it).
    static func readSecret(_ path: String) throws(EngineError) -> [UInt8] {
        let fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK)
        guard fd >= 0 else { throw EngineError("[replication] secret_file \(path): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        var info = stat()
        guard fstat(fd, &info) == 0, info.st_mode & S_IFMT == S_IFREG else {
            throw EngineError("[replication] secret_file \(path): not a regular file")
        }
        guard info.st_uid == geteuid() else {
            throw EngineError("[replication] secret_file \(path): owned by uid \(info.st_uid), not by this engine's user (\(geteuid()))")
        }
        guard info.st_mode & 0o077 == 0 else {
            throw EngineError("[replication] secret_file \(path): mode \(String(info.st_mode & 0o777, radix: 8)): others may read or write it (chmod 600)")
        }
        var bytes = [UInt8](repeating: 0, count: 4097)
        var got = 0
        while got < bytes.count {
            let n = bytes.withUnsafeMutableBytes { read(fd, $0.baseAddress! + got, $0.count - got) }
            if n < 0 && errno == EINTR { continue }
            guard n >= 0 else { throw EngineError("[replication] secret_file \(path): \(String(cString: strerror(errno)))") }
            if n == 0 { break }
            got += n
        }
        var secret = Array(bytes[..<got])
        if secret.last == 0x0A { secret.removeLast() }
        guard secret.count >= 32, secret.count <= 4096 else {
            throw EngineError("[replication] secret_file \(path): \(secret.count) bytes; give 32 to 4096 (e.g. head -c 48 /dev/urandom | base64 > FILE)")
        }
        return secret
    }
}
