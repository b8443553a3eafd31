// CShims: the thin C layer under Crossbook. Only what Swift cannot express well lives here:
// CPU and NUMA facts (libnuma), io_uring (liburing), CRC32C with the SSE4.2 instruction.
#ifndef CROSSBOOK_CSHIMS_H
#define CROSSBOOK_CSHIMS_H

#include <stddef.h>
#include <stdint.h>

#include "cb_sync.h"
#include "cb_uring.h"
#include "crossbook_plugin.h"

#ifdef __cplusplus
extern "C" {
#endif

/// What the host offers the engine, read once at start (never on a hot path).
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

/// NUMA node of `cpu`, or -1 when unknown (no NUMA support, cpu out of range).
int32_t cb_numa_node_of_cpu(int32_t cpu);

/// Makes the calling thread's future allocations prefer `node` (libnuma numa_set_preferred);
/// a no-op without NUMA support.
void cb_numa_prefer_node(int32_t node);

/// CRC32C (Castagnoli), the journal's record checksum. `crc` is the running value
/// (0 to start); the result is finalized (it can be fed back in to continue).
uint32_t cb_crc32c(uint32_t crc, const void *data, size_t length);
/// The portable table-driven implementation, kept for CPUs without SSE4.2 and for tests.
uint32_t cb_crc32c_sw(uint32_t crc, const void *data, size_t length);

#ifdef __cplusplus
}
#endif
#endif
