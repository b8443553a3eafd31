// NUMA placement through libnuma.
#include "cb_numa.h"

#include <numa.h>

int32_t cb_numa_node_of_cpu(int32_t cpu) {
    if (numa_available() < 0) return -1;
    int node = numa_node_of_cpu(cpu);
    return node < 0 ? -1 : node;
}

void cb_numa_prefer_node(int32_t node) {
    if (numa_available() < 0) return;
    numa_set_preferred(node);
}
