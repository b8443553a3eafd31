// The C layer: the host probe runs against the real liburing and libnuma, and both CRC32C
// implementations agree.
import CCRC32C
import CHost
import CNuma
import Testing

@Suite("CShims")
struct CShimsTests {
    @Test("the host probe reports CPUs and NUMA nodes and runs a real io_uring setup")
    func hostProbe() {
        var info = cb_host_info()
        info.online_cpus = -1
        info.io_uring_errno = -1
        cb_host_probe(&info)
        #expect(info.online_cpus >= 1)
        #expect(info.numa_nodes >= 1)
        // Either a ring was set up (features reported) or the kernel said why not.
        #expect((info.io_uring_errno == 0 && info.io_uring_features != 0) || info.io_uring_errno > 0)
        #expect(cb_numa_node_of_cpu(0) >= (info.numa_available == 1 ? 0 : -1))
    }

    @Test("CRC32C matches the standard check value")
    func checkValue() {
        let bytes = Array("123456789".utf8)
        #expect(cb_crc32c(0, bytes, bytes.count) == 0xE306_9283)
        #expect(cb_crc32c_sw(0, bytes, bytes.count) == 0xE306_9283)
    }

    @Test("hardware and software CRC32C agree on every length and alignment (one chain, and three joined), and chain")
    func agree() {
        var rng: UInt64 = 0x1234_5678
        var bytes = [UInt8](repeating: 0, count: 80_000)
        for i in bytes.indices {
            rng = rng &* 6364136223846793005 &+ 1442695040888963407
            bytes[i] = UInt8(truncatingIfNeeded: rng >> 33)
        }
        bytes.withUnsafeBytes { raw in
            for offset in 0..<9 {
                // From 768 bytes on, three chains at a time (256-byte blocks; 8 KiB from 24 KiB).
                for length in [0, 1, 7, 8, 9, 63, 64, 65, 767, 768, 769, 1000, 1543, 4000, 24_575, 24_576, 24_583, 50_000, 79_000] {
                    let p = raw.baseAddress! + offset
                    #expect(cb_crc32c(0, p, length) == cb_crc32c_sw(0, p, length))
                }
            }
            let whole = cb_crc32c(0, raw.baseAddress!, 1000)
            let chained = cb_crc32c(cb_crc32c(0, raw.baseAddress!, 300), raw.baseAddress! + 300, 700)
            #expect(whole == chained)
            let long = cb_crc32c(0, raw.baseAddress!, 79_000)
            #expect(long == cb_crc32c(cb_crc32c(0, raw.baseAddress!, 30_001), raw.baseAddress! + 30_001, 48_999))
        }
    }
}
