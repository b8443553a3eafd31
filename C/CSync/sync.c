// futex and CPU affinity: raw syscalls with errno turned into return values.
#define _GNU_SOURCE
#include <sys/prctl.h>
#include "cb_sync.h"

#include <errno.h>
#include <linux/futex.h>
#include <pthread.h>
#include <sched.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>
#include <stdio.h>
#include <string.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/eventfd.h>

int cb_futex_wait(uint32_t *addr, uint32_t expected, int64_t timeout_ns) {
    struct timespec ts, *tsp = NULL;
    if (timeout_ns >= 0) {
        ts.tv_sec = (time_t)(timeout_ns / 1000000000);
        ts.tv_nsec = (long)(timeout_ns % 1000000000);
        tsp = &ts;
    }
    long rc = syscall(SYS_futex, addr, FUTEX_WAIT, expected, tsp, NULL, 0);
    if (rc == 0) return 0;
    if (errno == EAGAIN) return 0;  // the value had changed: nothing to wait for
    return errno;
}

int cb_futex_wake(uint32_t *addr, int32_t count) {
    long rc = syscall(SYS_futex, addr, FUTEX_WAKE, count, NULL, NULL, 0);
    return rc < 0 ? -errno : (int)rc;
}

int cb_pin_current_thread(int32_t cpu) {
    if (cpu < 0 || cpu >= CPU_SETSIZE) return EINVAL;
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    return pthread_setaffinity_np(pthread_self(), sizeof(set), &set);
}

int cb_set_current_thread_cpus(const int32_t *cpus, uint32_t count) {
    cpu_set_t set;
    CPU_ZERO(&set);
    if (count > 0) {
        for (uint32_t i = 0; i < count; i++)
            if (cpus[i] >= 0 && cpus[i] < CPU_SETSIZE) CPU_SET(cpus[i], &set);
    } else {
        long online = sysconf(_SC_NPROCESSORS_ONLN);
        for (long i = 0; i < online && i < CPU_SETSIZE; i++) CPU_SET(i, &set);
    }
    if (CPU_COUNT(&set) == 0) return EINVAL;
    return pthread_setaffinity_np(pthread_self(), sizeof(set), &set);
}

int32_t cb_current_cpu(void) { return sched_getcpu(); }

int32_t cb_thread_id(void) { return (int32_t)syscall(SYS_gettid); }

void cb_close_from(int lowest) {
#ifdef SYS_close_range
    if (syscall(SYS_close_range, (unsigned)lowest, ~0u, 0) == 0) return;
#endif
    for (int fd = lowest; fd < 65536; fd++) close(fd);
}

int cb_set_timer_slack_ns(unsigned long ns) { return prctl(PR_SET_TIMERSLACK, ns, 0, 0, 0); }

int64_t cb_thread_cpu_ns(int32_t pid, int32_t tid) {
    if (tid <= 0) return -1;
    if (pid == getpid()) {
        /* A thread of this process: its own CPU clock (the kernel's MAKE_THREAD_CPUCLOCK),
           nanosecond-exact and no file to read. */
        clockid_t clock = (clockid_t)((~(uint32_t)tid << 3) | 6u);
        struct timespec ts;
        if (clock_gettime(clock, &ts) == 0) return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
    }
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/task/%d/stat", (int)pid, (int)tid);
    FILE *f = fopen(path, "re");
    if (f == NULL) return -1;
    char line[1024];
    size_t n = fread(line, 1, sizeof line - 1, f);
    fclose(f);
    line[n] = 0;
    /* The command name may hold spaces and parentheses: fields start after the last ')'. */
    char *p = strrchr(line, ')');
    if (p == NULL) return -1;
    unsigned long utime = 0, stime = 0;
    /* After ")": state(3) ... utime is field 14, stime 15: skip 11 fields. */
    if (sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &utime, &stime) != 2) return -1;
    long hz = sysconf(_SC_CLK_TCK);
    if (hz <= 0) return -1;
    return (int64_t)(utime + stime) * (1000000000 / hz);
}

cb_wakers *cb_wakers_create(void) {
    cb_wakers *w = calloc(1, sizeof *w);
    if (!w) return NULL;
    for (int i = 0; i < CB_WAKERS; i++) w->fds[i] = -1;
    return w;
}

void cb_wakers_destroy(cb_wakers *w) {
    if (!w) return;
    for (int i = 0; i < CB_WAKERS; i++)
        if (w->fds[i] >= 0) close(w->fds[i]);
    free(w);
}

int32_t cb_wakers_take(cb_wakers *w) {
    for (int32_t i = 0; i < CB_WAKERS; i++) {
        uint32_t expected = 0;
        if (!__atomic_compare_exchange_n(&w->taken[i], &expected, 1, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)) continue;
        /* Only the taker touches fds[i] until it is armed; notifiers read it after the arm. */
        if (w->fds[i] < 0) {
            int fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
            if (fd < 0) {
                __atomic_store_n(&w->taken[i], 0, __ATOMIC_SEQ_CST);
                return -1;
            }
            __atomic_store_n(&w->fds[i], fd, __ATOMIC_RELEASE);
        }
        return i;
    }
    return -1;
}

void cb_wakers_give(cb_wakers *w, int32_t slot) {
    if (slot < 0 || slot >= CB_WAKERS) return;
    cb_wakers_disarm(w, slot);
    __atomic_store_n(&w->taken[slot], 0, __ATOMIC_SEQ_CST);
}

void cb_wakers_disarm(cb_wakers *w, int32_t slot) {
    if (__atomic_exchange_n(&w->armed[slot], 0, __ATOMIC_SEQ_CST) == 1)
        __atomic_fetch_sub(&w->armed_count, 1, __ATOMIC_SEQ_CST);
    uint64_t value;
    /* A notify that took the arm may still write after this: the next poll then returns at
       once, and its caller looks again (a spurious wake, never a lost one). */
    while (read(w->fds[slot], &value, sizeof value) > 0) {}
}

void cb_wakers_notify_slow(cb_wakers *w) {
    for (int i = 0; i < CB_WAKERS; i++) {
        if (__atomic_load_n(&w->armed[i], __ATOMIC_RELAXED) == 0) continue;
        if (__atomic_exchange_n(&w->armed[i], 0, __ATOMIC_SEQ_CST) != 1) continue;
        __atomic_fetch_sub(&w->armed_count, 1, __ATOMIC_SEQ_CST);
        uint64_t one = 1;
        ssize_t rc = write(__atomic_load_n(&w->fds[i], __ATOMIC_ACQUIRE), &one, sizeof one);
        (void)rc;  /* EAGAIN: the counter is full, the sleeper is awake anyway */
    }
}
