// The floors the ring benchmarks are compared with, in plain C built with -O3:
// a cache-line ping-pong (the hardware limit of a round trip between two cores) and the same
// single-producer ring algorithm as SharedMemory.Ring, on anonymous memory.
#ifndef RING_FLOOR_H
#define RING_FLOOR_H
#include <stdint.h>

/// Round trips of one cache line between cpu_a and cpu_b; rtt_ns[i] per trip. Returns 0 or errno.
int floor_cacheline_pingpong(int cpu_a, int cpu_b, int trips, uint32_t *rtt_ns);
/// R1 in C: `messages` 64-byte messages, producer on cpu_prod, consumer on cpu_cons.
/// Returns nanoseconds per message (negative on error).
double floor_ring_throughput(int cpu_prod, int cpu_cons, long messages, int capacity);
/// R2 in C: round trips of a 64-byte message over two rings.
int floor_ring_pingpong(int cpu_a, int cpu_b, int trips, int capacity, uint32_t *rtt_ns);
#endif
