// The journal's io_uring calls, on liburing.
#define _GNU_SOURCE
#include "cb_uring.h"
#include "cb_sync.h"

#include <errno.h>
#include <sched.h>
#include <fcntl.h>
#include <liburing.h>
#include <pthread.h>
#include <stdio.h>
#include <sys/syscall.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

struct cb_uring { struct io_uring ring; };

cb_uring *cb_uring_create(uint32_t entries, int32_t *error) {
    cb_uring *r = calloc(1, sizeof(cb_uring));
    if (!r) { *error = ENOMEM; return NULL; }
    int rc = io_uring_queue_init(entries, &r->ring, 0);
    if (rc < 0) { *error = -rc; free(r); return NULL; }
    *error = 0;
    return r;
}

void cb_uring_destroy(cb_uring *r) {
    if (!r) return;
    io_uring_queue_exit(&r->ring);
    free(r);
}

int32_t cb_uring_write_and_sync(cb_uring *r, int32_t fd, const void *buffer, uint32_t length, uint64_t offset,
                                uint64_t tag) {
    if (io_uring_sq_space_left(&r->ring) < 2) return -EBUSY;
    struct io_uring_sqe *w = io_uring_get_sqe(&r->ring);
    struct io_uring_sqe *s = io_uring_get_sqe(&r->ring);
    if (!w || !s) return -EBUSY;
    io_uring_prep_write(w, fd, buffer, length, offset);
    w->flags |= IOSQE_IO_LINK;  // a short or failed write cancels the sync (-ECANCELED)
    io_uring_sqe_set_data64(w, tag);
    io_uring_prep_fsync(s, fd, IORING_FSYNC_DATASYNC);
    io_uring_sqe_set_data64(s, tag | (1ull << 63));
    int rc;
    do { rc = io_uring_submit(&r->ring); } while (rc == -EINTR);
    return rc < 0 ? rc : 0;
}

int32_t cb_uring_reap(cb_uring *r, uint64_t *tag, int32_t *result) {
    struct io_uring_cqe *cqe = NULL;
    if (io_uring_peek_cqe(&r->ring, &cqe) != 0 || !cqe) return 0;
    *tag = io_uring_cqe_get_data64(cqe);
    *result = cqe->res;
    io_uring_cqe_seen(&r->ring, cqe);
    return 1;
}

int32_t cb_uring_wait_timeout(cb_uring *r, uint64_t timeout_ns) {
    struct io_uring_cqe *cqe = NULL;
    struct __kernel_timespec ts = {.tv_sec = (long long)(timeout_ns / 1000000000u), .tv_nsec = (long long)(timeout_ns % 1000000000u)};
    int rc = io_uring_wait_cqe_timeout(&r->ring, &cqe, &ts);
    if (rc == 0 && cqe) return 1;
    return rc == -ETIME || rc == -EINTR ? 0 : rc;
}

int32_t cb_uring_wait(cb_uring *r, uint64_t *tag, int32_t *result) {
    struct io_uring_cqe *cqe = NULL;
    int rc;
    do { rc = io_uring_wait_cqe(&r->ring, &cqe); } while (rc == -EINTR);
    if (rc < 0) return rc;
    *tag = io_uring_cqe_get_data64(cqe);
    *result = cqe->res;
    io_uring_cqe_seen(&r->ring, cqe);
    return 1;
}

#ifndef IORING_OP_FUTEX_WAIT
#define IORING_OP_FUTEX_WAIT 51 /* kernel 6.7; liburing 2.3's headers predate it */
#endif
#define CB_FUTEX2_SIZE_U32 0x02
#define CB_FUTEX_BITSET_MATCH_ANY 0xffffffffu

int32_t cb_uring_futex_wait(cb_uring *r, uint32_t *word, uint32_t expected, uint64_t tag) {
    struct io_uring_sqe *sqe = io_uring_get_sqe(&r->ring);
    if (!sqe) return -EBUSY;
    /* As liburing 2.5's io_uring_prep_futex_wait: fd = futex2 flags (shared, 32-bit),
       addr = the word, off = the expected value, addr3 = the mask, futex_flags (rw_flags) 0. */
    io_uring_prep_rw(IORING_OP_FUTEX_WAIT, sqe, CB_FUTEX2_SIZE_U32, word, 0, expected);
    sqe->addr3 = CB_FUTEX_BITSET_MATCH_ANY;
    io_uring_sqe_set_data64(sqe, tag);
    int rc = io_uring_submit(&r->ring);
    return rc < 0 ? rc : 0;
}

int32_t cb_fallocate(int32_t fd, uint64_t offset, uint64_t length) {
    return posix_fallocate(fd, (off_t)offset, (off_t)length);
}

int32_t cb_uring_set_worker_cpus(cb_uring *r, const int32_t *cpus, uint32_t count) {
    cpu_set_t mask;
    CPU_ZERO(&mask);
    for (uint32_t i = 0; i < count; i++) {
        if (cpus[i] < 0 || cpus[i] >= CPU_SETSIZE) return -EINVAL;
        CPU_SET(cpus[i], &mask);
    }
    return io_uring_register_iowq_aff(&r->ring, sizeof(mask), &mask);
}

/* ---- Spare segments (cb_spare_*) ------------------------------------------------------------ */

struct cb_spare {
    char *path;
    uint64_t size;
    int32_t cpus[64]; /* where its thread runs (cb_set_current_thread_cpus: none = any CPU) */
    uint32_t cpu_count;
    pthread_t thread;
    int32_t state; /* atomic: 0 writing, 1 ready, -1 failed */
    int32_t error;
    int32_t stop;  /* atomic */
    int32_t taken;
};

static void *spare_main(void *arg) {
    struct cb_spare *s = arg;
    int32_t error = 0;
    (void)cb_set_current_thread_cpus(s->cpus, s->cpu_count);
    /* Named by itself once on its CPUs: whoever finds it by name sees where it runs. */
    pthread_setname_np(pthread_self(), "journal-spare");
    /* Its I/O in the idle class: a scheduler that honours it (mq-deadline, bfq) serves the
       journal's writes first. ioprio_set(IOPRIO_WHO_PROCESS = 1, this thread, IDLE = 3 << 13). */
    (void)syscall(SYS_ioprio_set, 1, 0, 3 << 13);
    /* A new file, never an old one opened again: a crash between the rollover's rename and
       its directory's fsync must never leave this name on the live segment's inode, but if it
       did, removing the name is harmless where truncating the file would not be. */
    unlink(s->path);
    int fd = open(s->path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0) {
        error = errno;
    } else {
        int rc = posix_fallocate(fd, 0, (off_t)s->size);
        if (rc != 0) error = rc;
        /* 256 KiB a step, each written back before the next, then a pause: about 32 MiB/s, so
           that the spare's writes leave the disk to the journal (a 64 MiB segment lasts 8 s at
           100k orders/s, and its spare is made in 2). */
        size_t step = 256u << 10;
        char *zeros = error == 0 ? calloc(1, step) : NULL;
        if (error == 0 && zeros == NULL) error = ENOMEM;
        for (uint64_t at = 0; error == 0 && at < s->size; at += step) {
            if (__atomic_load_n(&s->stop, __ATOMIC_ACQUIRE)) {
                error = ECANCELED;
                break;
            }
            size_t n = s->size - at < step ? (size_t)(s->size - at) : step;
            size_t done = 0;
            while (done < n) {
                ssize_t w = pwrite(fd, zeros + done, n - done, (off_t)(at + done));
                if (w < 0 && errno == EINTR) continue;
                if (w <= 0) {
                    error = w < 0 ? errno : EIO;
                    break;
                }
                done += (size_t)w;
            }
            if (error == 0 &&
                sync_file_range(fd, (off64_t)at, (off64_t)n,
                                SYNC_FILE_RANGE_WAIT_BEFORE | SYNC_FILE_RANGE_WRITE | SYNC_FILE_RANGE_WAIT_AFTER) != 0)
                error = errno;
            if (error == 0) {
                struct timespec pause = {0, 8 * 1000 * 1000};
                nanosleep(&pause, NULL);
            }
        }
        free(zeros);
        if (error == 0 && fdatasync(fd) != 0) error = errno;
        close(fd);
    }
    s->error = error;
    __atomic_store_n(&s->state, error == 0 ? 1 : -1, __ATOMIC_RELEASE);
    return NULL;
}

cb_spare *cb_spare_start(const char *path, uint64_t size, const int32_t *cpus, uint32_t count) {
    struct cb_spare *s = calloc(1, sizeof *s);
    if (s == NULL) return NULL;
    s->path = strdup(path);
    s->size = size;
    for (uint32_t i = 0; i < count && s->cpu_count < 64; i++) s->cpus[s->cpu_count++] = cpus[i];
    int rc = s->path == NULL ? -1 : pthread_create(&s->thread, NULL, spare_main, s);
    if (rc != 0) {
        free(s->path);
        free(s);
        return NULL;
    }
    return s;
}

int32_t cb_spare_state(cb_spare *s, int32_t *error) {
    if (s->taken) return 2;
    int32_t state = __atomic_load_n(&s->state, __ATOMIC_ACQUIRE);
    if (state < 0 && error) *error = s->error;
    return state;
}

int32_t cb_spare_take(cb_spare *s, const char *target) {
    if (s->taken || __atomic_load_n(&s->state, __ATOMIC_ACQUIRE) != 1) return EAGAIN;
    /* One atomic step (the spare's name goes as the segment's comes), never over a file. A file
       system without RENAME_NOREPLACE gets link then unlink (a crash between them leaves the
       spare's name on the segment too: cb_spare_start removes that name, never truncates). */
    if (renameat2(AT_FDCWD, s->path, AT_FDCWD, target, RENAME_NOREPLACE) != 0) {
        if (errno != EINVAL && errno != ENOSYS) return errno;
        if (link(s->path, target) != 0) return errno;
        unlink(s->path);
    }
    s->taken = 1;
    return 0;
}

void cb_spare_free(cb_spare *s) {
    if (s == NULL) return;
    __atomic_store_n(&s->stop, 1, __ATOMIC_RELEASE);
    pthread_join(s->thread, NULL);
    if (!s->taken) unlink(s->path);
    free(s->path);
    free(s);
}
