// Host facts for placement and start-up checks: CPUs, NUMA nodes (libnuma), io_uring (liburing).
#define _GNU_SOURCE
#include "cb_host.h"

#include <errno.h>
#include <liburing.h>
#include <numa.h>
#include <string.h>
#include <unistd.h>

void cb_host_probe(cb_host_info *info) {
    memset(info, 0, sizeof(*info));
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    info->online_cpus = cpus > 0 ? (int32_t)cpus : 1;

    if (numa_available() >= 0) {
        info->numa_available = 1;
        info->numa_nodes = numa_max_node() + 1;
    } else {
        info->numa_nodes = 1;
    }

    // A real ring, set up and torn down: containers and old kernels often forbid io_uring,
    // and the engine must say so at start rather than fail on the first journal write.
    struct io_uring ring;
    struct io_uring_params params;
    memset(&params, 0, sizeof(params));
    int rc = io_uring_queue_init_params(4, &ring, &params);
    if (rc < 0) {
        info->io_uring_errno = -rc;
    } else {
        info->io_uring_features = params.features;
        io_uring_queue_exit(&ring);
    }

    __builtin_cpu_init();
    info->crc32c_hw = __builtin_cpu_supports("sse4.2") ? 1 : 0;
}
