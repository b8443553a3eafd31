// Atomics on shared memory, futex and CPU pinning: the few things a ring between processes
// needs that Swift cannot say directly. The inline functions compile to single instructions.
#ifndef CROSSBOOK_CB_SYNC_H
#define CROSSBOOK_CB_SYNC_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

static inline uint64_t cb_load_acquire_u64(const uint64_t *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
static inline uint64_t cb_load_relaxed_u64(const uint64_t *p) { return __atomic_load_n(p, __ATOMIC_RELAXED); }
static inline void cb_store_release_u64(uint64_t *p, uint64_t v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }
static inline uint32_t cb_load_acquire_u32(const uint32_t *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
static inline void cb_store_release_u32(uint32_t *p, uint32_t v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }
static inline void cb_store_seq_cst_u32(uint32_t *p, uint32_t v) { __atomic_store_n(p, v, __ATOMIC_SEQ_CST); }
static inline uint64_t cb_fetch_add_u64_relaxed(uint64_t *p, uint64_t v) { return __atomic_fetch_add(p, v, __ATOMIC_RELAXED); }
static inline uint32_t cb_fetch_add_u32(uint32_t *p, uint32_t v) { return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST); }
static inline int cb_cas_u32(uint32_t *p, uint32_t expected, uint32_t desired) {
    return __atomic_compare_exchange_n(p, &expected, desired, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
}
static inline void cb_fence_seq_cst(void) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }

/// A spin-wait hint (PAUSE on x86).
static inline void cb_cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

/// Sleeps while *addr == expected (shared, not process-private: works across processes on a
/// MAP_SHARED mapping). timeout_ns < 0 waits without limit. Returns 0 when woken or when the
/// value had already changed, ETIMEDOUT, or EINTR.
int cb_futex_wait(uint32_t *addr, uint32_t expected, int64_t timeout_ns);
/// Wakes up to `count` waiters on addr. Returns how many were woken, or -errno.
int cb_futex_wake(uint32_t *addr, int32_t count);

/// Pins the calling thread to one CPU. Returns 0 or an errno.
int cb_pin_current_thread(int32_t cpu);
/// Lets the calling thread run on the `count` CPUs in `cpus`, or on every online CPU when
/// `count` is 0 (a thread started by a pinned one inherits its single core). 0 or an errno.
int cb_set_current_thread_cpus(const int32_t *cpus, uint32_t count);
/// The CPU the calling thread runs on now, or -1.
int32_t cb_current_cpu(void);

/// Latency histograms in the engine's counters region (one writer, plain stores; readers load
/// relaxed). Words: [0, CB_HISTOGRAM_BUCKETS) counts of values <= 256 ns << i, then the count
/// above the last bound, the sum in ns, the total count.
#define CB_HISTOGRAM_BUCKETS 20
#define CB_HISTOGRAM_WORDS 24
static inline void cb_histogram_record(uint64_t *words, uint64_t ns) {
    uint32_t i = 0;
    if (ns > 256) i = 64 - (uint32_t)__builtin_clzll((ns - 1) >> 8);
    if (i > CB_HISTOGRAM_BUCKETS) i = CB_HISTOGRAM_BUCKETS;
    words[i] += 1;
    words[CB_HISTOGRAM_BUCKETS + 1] += ns;
    words[CB_HISTOGRAM_BUCKETS + 2] += 1;
}

/// The same layout for counts (commands per group commit): bucket i holds n <= 2^i.
static inline void cb_histogram_record_count(uint64_t *words, uint64_t n) {
    uint32_t i = n > 1 ? 64 - (uint32_t)__builtin_clzll(n - 1) : 0;
    if (i > CB_HISTOGRAM_BUCKETS) i = CB_HISTOGRAM_BUCKETS;
    words[i] += 1;
    words[CB_HISTOGRAM_BUCKETS + 1] += n;
    words[CB_HISTOGRAM_BUCKETS + 2] += 1;
}

/// The calling thread's kernel id (for /proc/<pid>/task/<tid>/stat).
int32_t cb_thread_id(void);

/* Closes every descriptor from `lowest` up (close_range, else one by one up to 65536): a forked
   child that only computes must not keep the parent's files (a data directory's lock) open. */
void cb_close_from(int lowest);
/* The calling thread's timer slack (prctl PR_SET_TIMERSLACK): how late the kernel may wake a
   short sleep. The default 50 us turns each 20-50 us sleep of the replication path into ~100 us. */
int cb_set_timer_slack_ns(unsigned long ns);
/// CPU time of thread `tid` of this process in nanoseconds (from /proc), or -1.
int64_t cb_thread_cpu_ns(int32_t pid, int32_t tid);

/* Wakers: threads that sleep in poll() until a shard's journal moves (the replication sender
   and a standby's acknowledger), woken through an eventfd each. A sleeper takes a slot, arms
   it, looks once more at what it waits for, then polls the slot's eventfd (and its socket);
   a shard whose durable or written sequence moved calls cb_wakers_notify, which costs a fence
   and a load while nobody sleeps, and one write(2) per armed sleeper otherwise. The eventfds
   are made at a slot's first take and closed only by cb_wakers_destroy (after the shards have
   stopped), so a notifier never writes to a closed descriptor. */
#define CB_WAKERS 16
typedef struct cb_wakers {
    uint32_t armed_count;
    uint32_t armed[CB_WAKERS];
    uint32_t taken[CB_WAKERS];
    int32_t fds[CB_WAKERS];
} cb_wakers;
cb_wakers *cb_wakers_create(void);
void cb_wakers_destroy(cb_wakers *w);
/// A free slot (its eventfd made now if it has none), or -1: none free, or no eventfd.
int32_t cb_wakers_take(cb_wakers *w);
void cb_wakers_give(cb_wakers *w, int32_t slot);
static inline int32_t cb_wakers_fd(const cb_wakers *w, int32_t slot) { return w->fds[slot]; }
/// Before the last look at the condition: a notify from now on wakes the slot.
static inline void cb_wakers_arm(cb_wakers *w, int32_t slot) {
    if (__atomic_exchange_n(&w->armed[slot], 1, __ATOMIC_SEQ_CST) == 0)
        __atomic_fetch_add(&w->armed_count, 1, __ATOMIC_SEQ_CST);
}
/// After the sleep: disarms the slot and empties its eventfd.
void cb_wakers_disarm(cb_wakers *w, int32_t slot);
void cb_wakers_notify_slow(cb_wakers *w);
/// After publishing what moved (a release store): wakes every armed slot.
static inline void cb_wakers_notify(cb_wakers *w) {
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    if (__atomic_load_n(&w->armed_count, __ATOMIC_RELAXED) != 0) cb_wakers_notify_slow(w);
}

// SIGBUS guards (sigbus.c): a mapping of a file another process can shrink. On SIGBUS inside a
// guarded mapping, private zero pages replace it and the guard says it faulted; a SIGBUS
// elsewhere keeps its default action. Returns the guard's slot, or -1 when all are taken.
int32_t cb_guard_add(void *base, size_t size);
void cb_guard_remove(int32_t slot);
int32_t cb_guard_faulted(int32_t slot);

#ifdef __cplusplus
}
#endif
#endif
