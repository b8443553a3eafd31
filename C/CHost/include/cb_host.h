// Host facts for placement and start-up checks (`crossbook host`): CPUs, NUMA nodes, io_uring,
// the CRC32C instruction. Read once, never on a hot path.
#ifndef CROSSBOOK_CB_HOST_H
#define CROSSBOOK_CB_HOST_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/// What the host offers the engine.
typedef struct cb_host_info {
    int32_t online_cpus;       ///< sysconf(_SC_NPROCESSORS_ONLN)
    int32_t numa_available;    ///< 1 when libnuma reports NUMA support, 0 otherwise
    int32_t numa_nodes;        ///< numa_max_node() + 1, or 1 without NUMA
    int32_t io_uring_errno;    ///< 0 when an io_uring could be set up here, else the errno
    uint32_t io_uring_features;///< io_uring_params.features of that ring (IORING_FEAT_*)
    int32_t crc32c_hw;         ///< 1 when the CPU has the SSE4.2 crc32 instruction
} cb_host_info;

/// Fills `info`; never fails: each probe that cannot run records why in its own field.
void cb_host_probe(cb_host_info *info);

#ifdef __cplusplus
}
#endif
#endif
