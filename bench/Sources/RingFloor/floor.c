// Floors for R1 and R2. The ring here is SharedMemory.Ring's algorithm, line for line:
// cursors on their own 128-byte blocks, acquire/release, cached opposite cursor, batch claim.
#define _GNU_SOURCE
#include "RingFloor.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <sys/mman.h>
#include <unistd.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static inline uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static int pin(int cpu) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    return pthread_setaffinity_np(pthread_self(), sizeof(set), &set);
}

static inline void relax(void) { __builtin_ia32_pause(); }

// ---- cache-line ping-pong ----
typedef struct {
    _Alignas(128) volatile uint64_t line;
    int cpu;
    int trips;
} pingpong_t;

static void *pong_line(void *arg) {
    pingpong_t *p = arg;
    pin(p->cpu);
    for (uint64_t k = 0; k < (uint64_t)p->trips; k++) {
        while (__atomic_load_n(&p->line, __ATOMIC_ACQUIRE) != 2 * k + 1) relax();
        __atomic_store_n(&p->line, 2 * k + 2, __ATOMIC_RELEASE);
    }
    return NULL;
}

int floor_cacheline_pingpong(int cpu_a, int cpu_b, int trips, uint32_t *rtt_ns) {
    pingpong_t *p = aligned_alloc(128, sizeof(pingpong_t));
    memset(p, 0, sizeof(*p));
    p->cpu = cpu_b;
    p->trips = trips;
    pthread_t t;
    if (pthread_create(&t, NULL, pong_line, p) != 0) return errno;
    pin(cpu_a);
    for (uint64_t k = 0; k < (uint64_t)trips; k++) {
        uint64_t t0 = now_ns();
        __atomic_store_n(&p->line, 2 * k + 1, __ATOMIC_RELEASE);
        while (__atomic_load_n(&p->line, __ATOMIC_ACQUIRE) != 2 * k + 2) relax();
        rtt_ns[k] = (uint32_t)(now_ns() - t0);
    }
    pthread_join(t, NULL);
    free(p);
    return 0;
}

// ---- the ring ----
typedef struct {
    _Alignas(128) uint64_t producer;
    _Alignas(128) uint64_t consumer;
    _Alignas(128) unsigned char slots[];
} ring_t;

typedef struct { ring_t *r; uint64_t mask, capacity, head, cached; } producer_t;
typedef struct { ring_t *r; uint64_t mask, tail, cached; } consumer_t;

// The same memory as SharedMemory.Ring: a /dev/shm file, MAP_SHARED | MAP_POPULATE.
static size_t ring_bytes(int capacity) { return sizeof(ring_t) + (size_t)capacity * 64; }

static ring_t *ring_new(int capacity) {
    static int n;
    char path[128];
    snprintf(path, sizeof path, "/dev/shm/crossbook-floor-%d-%d", getpid(), __atomic_fetch_add(&n, 1, __ATOMIC_RELAXED));
    int fd = open(path, O_RDWR | O_CREAT | O_EXCL, 0600);
    if (fd < 0) return NULL;
    unlink(path);
    if (ftruncate(fd, (off_t)ring_bytes(capacity)) != 0) { close(fd); return NULL; }
    void *p = mmap(NULL, ring_bytes(capacity), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, 0);
    close(fd);
    return p == MAP_FAILED ? NULL : (ring_t *)p;
}

static void ring_free(ring_t *r, int capacity) { munmap(r, ring_bytes(capacity)); }

static inline int claim(producer_t *p, int n) {
    uint64_t free_ = p->capacity - (p->head - p->cached);
    if (free_ < (uint64_t)n) {
        p->cached = __atomic_load_n(&p->r->consumer, __ATOMIC_ACQUIRE);
        free_ = p->capacity - (p->head - p->cached);
    }
    return (int)(free_ < (uint64_t)n ? free_ : (uint64_t)n);
}
static inline unsigned char *pslot(producer_t *p, int k) { return p->r->slots + ((p->head + k) & p->mask) * 64; }
static inline void publish(producer_t *p, int n) {
    p->head += n;
    __atomic_store_n(&p->r->producer, p->head, __ATOMIC_RELEASE);
}
static inline int poll_(consumer_t *c) {
    if (c->cached == c->tail) c->cached = __atomic_load_n(&c->r->producer, __ATOMIC_ACQUIRE);
    return (int)(c->cached - c->tail);
}
static inline const unsigned char *cslot(consumer_t *c, int k) { return c->r->slots + ((c->tail + k) & c->mask) * 64; }
static inline void release_(consumer_t *c, int n) {
    c->tail += n;
    __atomic_store_n(&c->r->consumer, c->tail, __ATOMIC_RELEASE);
}

static inline void write_msg(unsigned char *s, uint64_t v) {
    uint64_t *w = (uint64_t *)s;
    for (int i = 0; i < 8; i++) w[i] = v + i;
}

typedef struct { ring_t *r; int cpu; long messages; int capacity; } thr_t;

static void *produce(void *arg) {
    thr_t *a = arg;
    pin(a->cpu);
    producer_t p = {a->r, (uint64_t)a->capacity - 1, (uint64_t)a->capacity, 0, 0};
    long sent = 0;
    while (sent < a->messages) {
        long want = a->messages - sent;
        int n = claim(&p, want < 64 ? (int)want : 64);
        for (int k = 0; k < n; k++) write_msg(pslot(&p, k), (uint64_t)(sent + k));
        if (n) publish(&p, n); else relax();
        sent += n;
    }
    return NULL;
}

double floor_ring_throughput(int cpu_prod, int cpu_cons, long messages, int capacity) {
    ring_t *r = ring_new(capacity);
    if (!r) return -1;
    thr_t a = {r, cpu_prod, messages, capacity};
    pin(cpu_cons);
    uint64_t t0 = now_ns();
    pthread_t t;
    if (pthread_create(&t, NULL, produce, &a) != 0) return -1;
    consumer_t c = {r, (uint64_t)capacity - 1, 0, 0};
    long got = 0, bad = 0;
    while (got < messages) {
        int n = poll_(&c);
        if (!n) { relax(); continue; }
        for (int k = 0; k < n; k++) {
            const uint64_t *w = (const uint64_t *)cslot(&c, k);
            if (w[0] != (uint64_t)(got + k)) bad++;
        }
        release_(&c, n);
        got += n;
    }
    uint64_t t1 = now_ns();
    pthread_join(t, NULL);
    ring_free(r, capacity);
    return bad ? -2 : (double)(t1 - t0) / (double)messages;
}

typedef struct { ring_t *in, *out; int cpu, trips, capacity; } echo_t;

static void *echo(void *arg) {
    echo_t *e = arg;
    pin(e->cpu);
    consumer_t c = {e->in, (uint64_t)e->capacity - 1, 0, 0};
    producer_t p = {e->out, (uint64_t)e->capacity - 1, (uint64_t)e->capacity, 0, 0};
    for (int k = 0; k < e->trips; k++) {
        while (!poll_(&c)) relax();
        uint64_t v = *(const uint64_t *)cslot(&c, 0);
        release_(&c, 1);
        while (!claim(&p, 1)) relax();
        write_msg(pslot(&p, 0), v);
        publish(&p, 1);
    }
    return NULL;
}

int floor_ring_pingpong(int cpu_a, int cpu_b, int trips, int capacity, uint32_t *rtt_ns) {
    ring_t *there = ring_new(capacity), *back = ring_new(capacity);
    if (!there || !back) return ENOMEM;
    echo_t e = {there, back, cpu_b, trips, capacity};
    pthread_t t;
    if (pthread_create(&t, NULL, echo, &e) != 0) return errno;
    pin(cpu_a);
    producer_t p = {there, (uint64_t)capacity - 1, (uint64_t)capacity, 0, 0};
    consumer_t c = {back, (uint64_t)capacity - 1, 0, 0};
    for (int k = 0; k < trips; k++) {
        uint64_t t0 = now_ns();
        while (!claim(&p, 1)) relax();
        write_msg(pslot(&p, 0), (uint64_t)k);
        publish(&p, 1);
        while (!poll_(&c)) relax();
        release_(&c, 1);
        rtt_ns[k] = (uint32_t)(now_ns() - t0);
    }
    pthread_join(t, NULL);
    ring_free(there, capacity);
    ring_free(back, capacity);
    return 0;
}
