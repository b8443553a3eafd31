// NUMA placement of shard threads (libnuma).
#ifndef CROSSBOOK_CB_NUMA_H
#define CROSSBOOK_CB_NUMA_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/// NUMA node of `cpu`, or -1 when unknown (no NUMA support, cpu out of range).
int32_t cb_numa_node_of_cpu(int32_t cpu);

/// Makes the calling thread's future allocations prefer `node` (libnuma numa_set_preferred);
/// a no-op without NUMA support.
void cb_numa_prefer_node(int32_t node);

#ifdef __cplusplus
}
#endif
#endif
