// io_uring for the journal: one ring per shard, a write linked to an fdatasync per batch,
// completions reaped without blocking. The ring lives on the heap (struct io_uring is large
// and must not move); Swift sees an opaque pointer.
#ifndef CROSSBOOK_CB_URING_H
#define CROSSBOOK_CB_URING_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct cb_uring cb_uring;

/// A ring of `entries` submission slots, or NULL with *error set to the errno.
cb_uring *cb_uring_create(uint32_t entries, int32_t *error);
void cb_uring_destroy(cb_uring *ring);

/// Queues pwrite(fd, buffer, length, offset) linked to fdatasync(fd) and submits both: the sync
/// runs only if the write succeeded in full. Each completion carries its tag (write: tag,
/// sync: tag | 1 << 63). Returns 0 or -errno (the ring is full, or submit failed).
int32_t cb_uring_write_and_sync(cb_uring *ring, int32_t fd, const void *buffer, uint32_t length, uint64_t offset,
                                uint64_t tag);

/// Reaps one completion if there is one: returns 1 and fills tag and result (bytes written,
/// 0, or -errno), or 0 when there is none. Never blocks.
int32_t cb_uring_reap(cb_uring *ring, uint64_t *tag, int32_t *result);

/// Waits for one completion (shutdown and tests only).
int32_t cb_uring_wait(cb_uring *ring, uint64_t *tag, int32_t *result);
/* Sleeps in the kernel until a completion is there (1, not consumed: reap it) or `timeout_ns`
   pass (0); a negative errno on failure. */
int32_t cb_uring_wait_timeout(cb_uring *ring, uint64_t timeout_ns);

/* Queues a futex wait on *word (a shared futex, 32 bits: any process's FUTEX_WAKE on it ends
   the wait) if *word still holds `expected`, with `tag` on its completion, and submits it
   (IORING_OP_FUTEX_WAIT, kernel 6.7+): a thread sleeping in cb_uring_wait_timeout then wakes on
   a doorbell as well as on a journal completion. Returns 0 or -errno (-EINVAL or -EOPNOTSUPP
   on a kernel without it). */
int32_t cb_uring_futex_wait(cb_uring *ring, uint32_t *word, uint32_t expected, uint64_t tag);

/// Binds the ring's kernel workers (io-wq: they run the writes and fdatasyncs that cannot
/// complete inline) to the `count` CPUs in `cpus`. Without this they inherit the affinity of the
/// thread that submits: a pinned shard's own core. Returns 0 or -errno.
int32_t cb_uring_set_worker_cpus(cb_uring *ring, const int32_t *cpus, uint32_t count);

/// posix_fallocate, as a return code (0 or errno).
int32_t cb_fallocate(int32_t fd, uint64_t offset, uint64_t length);

/// A journal's next segment made ahead of time by a thread of its own: `path` created anew (mode
/// 0600; a file of that name is removed first, never opened), allocated to `size` bytes, then every byte of it written
/// with zeros in 256 KiB steps, each written back before the next and followed by a pause of
/// 8 ms (about 32 MiB/s: the disk sees a trickle, not a burst), and fdatasync'ed. Records later written there overwrite written
/// blocks, so their fdatasync flushes data and converts no extent. NULL: no thread.
typedef struct cb_spare cb_spare;
/// The thread runs on the `count` CPUs in `cpus` (the journal's io_cores; the first 64), or,
/// with none, on any CPU (not the creating shard's own core, whose affinity it would inherit).
cb_spare *cb_spare_start(const char *path, uint64_t size, const int32_t *cpus, uint32_t count);
/// 1: the file is complete and synced; 0: still being written; -1: it failed (errno in *error);
/// 2: taken (cb_spare_take).
int32_t cb_spare_state(cb_spare *spare, int32_t *error);
/// Once ready: renames the file to `target` (which must not exist: RENAME_NOREPLACE, or link
/// and unlink where the file system has no such rename). 0, or an errno (the spare stays).
int32_t cb_spare_take(cb_spare *spare, const char *target);
/// Stops the thread if it runs, waits for it, removes the file unless it was taken, frees.
void cb_spare_free(cb_spare *spare);

#ifdef __cplusplus
}
#endif
#endif
