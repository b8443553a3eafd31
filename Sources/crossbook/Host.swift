// `crossbook host`: what this machine offers the engine (CPUs, NUMA, io_uring, CRC32C).
import ArgumentParser
import CHost
import CNuma

struct Host: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Show what this host offers the engine: CPUs, NUMA nodes, io_uring, CRC32C.")

    func run() throws {
        var info = cb_host_info()
        cb_host_probe(&info)
        print("cpus online: \(info.online_cpus)")
        if info.numa_available == 1 {
            var placement: [String] = []
            for cpu in 0..<info.online_cpus { placement.append("cpu\(cpu)→node\(cb_numa_node_of_cpu(cpu))") }
            print("numa: \(info.numa_nodes) node(s): \(placement.joined(separator: " "))")
        } else {
            print("numa: not available (libnuma reports no NUMA support); one node assumed")
        }
        if info.io_uring_errno == 0 {
            print("io_uring: available, features 0x\(String(info.io_uring_features, radix: 16))")
        } else {
            print("io_uring: NOT available (errno \(info.io_uring_errno)); the journal needs it")
        }
        print("crc32c: \(info.crc32c_hw == 1 ? "SSE4.2 instruction" : "software table")")
    }
}
