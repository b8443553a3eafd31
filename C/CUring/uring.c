// The journal's io_uring calls, on liburing.
#define _GNU_SOURCE
#include "cb_uring.h"

#include <errno.h>
#include <sched.h>
#include <fcntl.h>
#include <liburing.h>
#include <stdlib.h>
#include <string.h>

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
