// crossbook-powercut: a FUSE layer that simulates power loss under a data directory.
//
// Every write is held in memory (as a page cache would hold it) until the file is fsync'ed or
// fdatasync'ed; reads see it. On SIGUSR1 the power is cut: what was never synced is dropped,
// and from then on every operation fails with EIO (the machine is off) until the layer is
// unmounted. Options:
//   --torn          the cut comes at the next fsync (inside a group commit), and each 4 KiB
//                   page of unsynced data reaches the disk or not, at random (the newest
//                   content of a page, or nothing), as real disks may do with one large write
//   --dir-entries   a file created (or renamed into place) is durable only once its directory
//                   is fsync'ed; at the cut, entries never synced disappear with their data
//   --faults FILE   read before each fsync: a line `fsync` makes fsync/fdatasync fail with EIO
//                   (dropping the file's unsynced pages, as Linux does after a failed
//                   writeback), a line `fsyncdir` makes directory fsyncs fail with EIO
//   --seed N        the random choices of --torn
// Usage: crossbook-powercut [options] BACKING_DIR MOUNT_POINT  (runs in the foreground; stop
// it with `fusermount3 -u MOUNT_POINT`). Unsynced data still held at an unmount without a cut
// is written (a clean shutdown).
//
// Single-threaded (-s): every operation runs in turn, so the cut is atomic with respect to them.
#define FUSE_USE_VERSION 31
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <fuse.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

enum { PAGE = 4096 };

struct extent { off_t off; size_t len; char *data; };
/// The unsynced writes of one file, in the order they were made.
struct inode {
    ino_t ino;
    int fd;                 // a backing descriptor of our own, for the cut
    struct extent *ext;
    size_t count, cap;
};
/// A name created (or renamed into place) whose directory has not been fsync'ed since.
struct entry { char *path; };

static int backing = -1;
static struct inode *inodes;
static size_t ninodes;
static struct entry *entries;
static size_t nentries;
static int torn, dir_entries;
static const char *faults_path;
static uint64_t rng = 0x2545F4914F6CDD1DULL;
static volatile sig_atomic_t cut_requested;
static unsigned long long ops_total, ops_at_signal;
static struct timespec last_op, last_op_at_signal;
static struct timespec signalled;
static int dead;
static uint64_t cuts_pages_kept, cuts_pages_dropped, cut_entries_dropped;

static uint64_t next_random(void) {
    rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17;
    return rng;
}

static const char *rel(const char *path) { return path[1] ? path + 1 : "."; }

static struct inode *find_inode(ino_t ino, int create) {
    for (size_t i = 0; i < ninodes; i++) if (inodes[i].ino == ino) return &inodes[i];
    if (!create) return NULL;
    inodes = realloc(inodes, (ninodes + 1) * sizeof *inodes);
    struct inode *n = &inodes[ninodes++];
    memset(n, 0, sizeof *n);
    n->ino = ino;
    n->fd = -1;
    return n;
}

static void drop_extents(struct inode *n) {
    for (size_t i = 0; i < n->count; i++) free(n->ext[i].data);
    n->count = 0;
}

static off_t pending_end(const struct inode *n) {
    off_t end = 0;
    for (size_t i = 0; i < n->count; i++)
        if (n->ext[i].off + (off_t)n->ext[i].len > end) end = n->ext[i].off + (off_t)n->ext[i].len;
    return end;
}

/// Writes a file's unsynced data to the backing file (an fsync that worked).
static int apply_extents(struct inode *n) {
    for (size_t i = 0; i < n->count; i++) {
        struct extent *e = &n->ext[i];
        if (pwrite(n->fd, e->data, e->len, e->off) != (ssize_t)e->len) return -errno;
    }
    drop_extents(n);
    return 0;
}

static int fault(const char *what) {
    if (!faults_path) return 0;
    FILE *f = fopen(faults_path, "r");
    if (!f) return 0;
    char line[64];
    int hit = 0;
    while (fgets(line, sizeof line, f)) {
        line[strcspn(line, "\r\n ")] = 0;
        if (strcmp(line, what) == 0) hit = 1;
    }
    fclose(f);
    return hit;
}

static void forget_entry(const char *path) {
    for (size_t i = 0; i < nentries; i++)
        if (strcmp(entries[i].path, path) == 0) {
            free(entries[i].path);
            entries[i] = entries[--nentries];
            return;
        }
}

static void track_entry(const char *path) {
    if (!dir_entries) return;
    forget_entry(path);
    entries = realloc(entries, (nentries + 1) * sizeof *entries);
    entries[nentries++].path = strdup(path);
}

/// The power goes: unsynced pages are lost (or, torn, some of them land), unsynced names vanish.
static void cut(void) {
    for (size_t i = 0; i < ninodes; i++) {
        struct inode *n = &inodes[i];
        if (n->count == 0) continue;
        if (torn) {
            off_t first = n->ext[0].off, end = pending_end(n);
            for (size_t k = 0; k < n->count; k++) if (n->ext[k].off < first) first = n->ext[k].off;
            for (off_t page = first / PAGE * PAGE; page < end; page += PAGE) {
                char buf[PAGE];
                int touched = 0;
                ssize_t have = pread(n->fd, buf, PAGE, page);
                if (have < 0) have = 0;
                memset(buf + have, 0, PAGE - (size_t)have);
                size_t top = (size_t)have;
                // The newest content of this page: the backing bytes overlaid with every write.
                for (size_t k = 0; k < n->count; k++) {
                    struct extent *e = &n->ext[k];
                    off_t lo = e->off > page ? e->off : page;
                    off_t hi = e->off + (off_t)e->len < page + PAGE ? e->off + (off_t)e->len : page + PAGE;
                    if (lo >= hi) continue;
                    memcpy(buf + (lo - page), e->data + (lo - e->off), (size_t)(hi - lo));
                    if ((size_t)(hi - page) > top) top = (size_t)(hi - page);
                    touched = 1;
                }
                if (!touched) continue;
                if (next_random() & 1) {
                    if (pwrite(n->fd, buf, top, page) == (ssize_t)top) cuts_pages_kept++;
                } else {
                    cuts_pages_dropped++;
                }
            }
        } else {
            for (size_t k = 0; k < n->count; k++) cuts_pages_dropped += (n->ext[k].len + PAGE - 1) / PAGE;
        }
        drop_extents(n);
    }
    for (size_t i = 0; i < nentries; i++) {
        unlinkat(backing, rel(entries[i].path), 0);
        free(entries[i].path);
        cut_entries_dropped++;
    }
    nentries = 0;
    syncfs(backing);
    dead = 1;
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    fprintf(stderr, "powercut: last op %.3f ms before the signal; ", (signalled.tv_sec - last_op_at_signal.tv_sec) * 1e3 + (signalled.tv_nsec - last_op_at_signal.tv_nsec) / 1e6);
    fprintf(stderr, "%llu ops, %llu after the signal; %.3f ms after the signal: ", ops_total, ops_total - ops_at_signal, (now.tv_sec - signalled.tv_sec) * 1e3 + (now.tv_nsec - signalled.tv_nsec) / 1e6);
    fprintf(stderr, "cut (torn %d): %llu pages landed, %llu lost, %llu names lost\n", torn,
            (unsigned long long)cuts_pages_kept, (unsigned long long)cuts_pages_dropped,
            (unsigned long long)cut_entries_dropped);
}

// A torn cut waits for the next fsync, so that it falls inside a group commit (its pages written,
// not yet synced); a clean cut happens at the next operation.
#define ALIVE() do { ops_total++; clock_gettime(CLOCK_MONOTONIC, &last_op); if (cut_requested && !dead && !torn) cut(); if (dead) return -EIO; } while (0)

static struct inode *inode_of_fd(int fd, int create) {
    struct stat st;
    if (fstat(fd, &st) != 0) return NULL;
    struct inode *n = find_inode(st.st_ino, create);
    if (n && n->fd < 0) {
        char p[64];
        snprintf(p, sizeof p, "/proc/self/fd/%d", fd);
        n->fd = open(p, O_RDWR | O_CLOEXEC);
    }
    return n;
}

static void *pc_init(struct fuse_conn_info *conn, struct fuse_config *cfg) {
    (void)conn;
    cfg->use_ino = 1;
    cfg->attr_timeout = 0;
    cfg->entry_timeout = 0;
    cfg->negative_timeout = 0;
    cfg->kernel_cache = 0;
    cfg->hard_remove = 1;
    return NULL;
}

static void pc_destroy(void *data) {
    (void)data;
    if (cut_requested && !dead) cut();
    if (!dead) for (size_t i = 0; i < ninodes; i++) if (inodes[i].count) apply_extents(&inodes[i]);
}

static int pc_getattr(const char *path, struct stat *st, struct fuse_file_info *fi) {
    ALIVE();
    int rc = fi ? fstat((int)fi->fh, st) : fstatat(backing, rel(path), st, AT_SYMLINK_NOFOLLOW);
    if (rc != 0) return -errno;
    struct inode *n = find_inode(st->st_ino, 0);
    if (n) {
        off_t end = pending_end(n);
        if (end > st->st_size) st->st_size = end;
    }
    return 0;
}

static int pc_readdir(const char *path, void *buf, fuse_fill_dir_t fill, off_t off, struct fuse_file_info *fi,
                      enum fuse_readdir_flags flags) {
    (void)off; (void)fi; (void)flags;
    ALIVE();
    int fd = openat(backing, rel(path), O_RDONLY | O_DIRECTORY);
    if (fd < 0) return -errno;
    DIR *d = fdopendir(fd);
    if (!d) { close(fd); return -errno; }
    struct dirent *e;
    while ((e = readdir(d))) fill(buf, e->d_name, NULL, 0, 0);
    closedir(d);
    return 0;
}

static int pc_mkdir(const char *path, mode_t mode) {
    ALIVE();
    return mkdirat(backing, rel(path), mode) == 0 ? 0 : -errno;
}

static int pc_rmdir(const char *path) {
    ALIVE();
    return unlinkat(backing, rel(path), AT_REMOVEDIR) == 0 ? 0 : -errno;
}

static int pc_unlink(const char *path) {
    ALIVE();
    forget_entry(path);
    return unlinkat(backing, rel(path), 0) == 0 ? 0 : -errno;
}

static int pc_rename(const char *from, const char *to, unsigned int flags) {
    ALIVE();
    if (renameat2(backing, rel(from), backing, rel(to), flags) != 0) return -errno;
    // The new name is durable only once its directory is synced (with --dir-entries).
    forget_entry(from);
    track_entry(to);
    return 0;
}

static int pc_chmod(const char *path, mode_t mode, struct fuse_file_info *fi) {
    ALIVE();
    int rc = fi ? fchmod((int)fi->fh, mode) : fchmodat(backing, rel(path), mode, 0);
    return rc == 0 ? 0 : -errno;
}

static int pc_chown(const char *path, uid_t uid, gid_t gid, struct fuse_file_info *fi) {
    ALIVE();
    int rc = fi ? fchown((int)fi->fh, uid, gid) : fchownat(backing, rel(path), uid, gid, AT_SYMLINK_NOFOLLOW);
    return rc == 0 ? 0 : -errno;
}

static int pc_utimens(const char *path, const struct timespec tv[2], struct fuse_file_info *fi) {
    ALIVE();
    int rc = fi ? futimens((int)fi->fh, tv) : utimensat(backing, rel(path), tv, AT_SYMLINK_NOFOLLOW);
    return rc == 0 ? 0 : -errno;
}

static int pc_truncate(const char *path, off_t size, struct fuse_file_info *fi) {
    ALIVE();
    int fd = fi ? (int)fi->fh : openat(backing, rel(path), O_WRONLY);
    if (fd < 0) return -errno;
    struct inode *n = inode_of_fd(fd, 0);
    if (n) apply_extents(n);  // treated as a sync: the rare truncate is not what is under test
    int rc = ftruncate(fd, size) == 0 ? 0 : -errno;
    if (!fi) close(fd);
    return rc;
}

static int pc_open(const char *path, struct fuse_file_info *fi) {
    ALIVE();
    int fd = openat(backing, rel(path), (fi->flags & ~(O_APPEND | O_DIRECT)) | O_CLOEXEC);
    if (fd < 0) return -errno;
    if (fi->flags & O_TRUNC) {
        struct inode *n = inode_of_fd(fd, 0);
        if (n) drop_extents(n);
    }
    fi->fh = (uint64_t)fd;
    return 0;
}

static int pc_create(const char *path, mode_t mode, struct fuse_file_info *fi) {
    ALIVE();
    int fd = openat(backing, rel(path), (fi->flags & ~(O_APPEND | O_DIRECT)) | O_CREAT | O_CLOEXEC, mode);
    if (fd < 0) return -errno;
    fi->fh = (uint64_t)fd;
    track_entry(path);
    return 0;
}

static int pc_read(const char *path, char *buf, size_t size, off_t off, struct fuse_file_info *fi) {
    (void)path;
    ALIVE();
    int fd = (int)fi->fh;
    struct stat st;
    if (fstat(fd, &st) != 0) return -errno;
    struct inode *n = find_inode(st.st_ino, 0);
    off_t fileSize = st.st_size;
    if (n && pending_end(n) > fileSize) fileSize = pending_end(n);
    if (off >= fileSize) return 0;
    if ((off_t)size > fileSize - off) size = (size_t)(fileSize - off);
    ssize_t got = pread(fd, buf, size, off);
    if (got < 0) return -errno;
    if ((size_t)got < size) memset(buf + got, 0, size - (size_t)got);
    if (n) {
        for (size_t k = 0; k < n->count; k++) {
            struct extent *e = &n->ext[k];
            off_t lo = e->off > off ? e->off : off;
            off_t hi = e->off + (off_t)e->len < off + (off_t)size ? e->off + (off_t)e->len : off + (off_t)size;
            if (lo < hi) memcpy(buf + (lo - off), e->data + (lo - e->off), (size_t)(hi - lo));
        }
    }
    return (int)size;
}

static int pc_write(const char *path, const char *buf, size_t size, off_t off, struct fuse_file_info *fi) {
    (void)path;
    ALIVE();
    struct inode *n = inode_of_fd((int)fi->fh, 1);
    if (!n || n->fd < 0) return -EIO;
    if (n->count == n->cap) {
        n->cap = n->cap ? n->cap * 2 : 16;
        n->ext = realloc(n->ext, n->cap * sizeof *n->ext);
    }
    char *copy = malloc(size);
    if (!copy) return -ENOMEM;
    memcpy(copy, buf, size);
    n->ext[n->count++] = (struct extent){ off, size, copy };
    return (int)size;
}

static int pc_statfs(const char *path, struct statvfs *st) {
    (void)path;
    ALIVE();
    return fstatvfs(backing, st) == 0 ? 0 : -errno;
}

static int pc_release(const char *path, struct fuse_file_info *fi) {
    (void)path;
    close((int)fi->fh);  // unsynced data stays held, as a page cache keeps it after close
    return 0;
}

static int pc_fsync(const char *path, int datasync, struct fuse_file_info *fi) {
    (void)path; (void)datasync;
    if (cut_requested && !dead) cut();
    ALIVE();
    struct inode *n = inode_of_fd((int)fi->fh, 0);
    if (fault("fsync")) {
        // Linux marks the pages clean after a failed writeback: what was unsynced is gone.
        if (n) drop_extents(n);
        return -EIO;
    }
    return n ? apply_extents(n) : 0;
}

static int pc_opendir(const char *path, struct fuse_file_info *fi) {
    ALIVE();
    int fd = openat(backing, rel(path), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return -errno;
    fi->fh = (uint64_t)fd;
    return 0;
}

static int pc_releasedir(const char *path, struct fuse_file_info *fi) {
    (void)path;
    close((int)fi->fh);
    return 0;
}

static int pc_fsyncdir(const char *path, int datasync, struct fuse_file_info *fi) {
    (void)datasync; (void)fi;
    ALIVE();
    if (fault("fsyncdir")) return -EIO;
    // Every name directly in this directory is durable now.
    size_t plen = strlen(path);
    for (size_t i = 0; i < nentries;) {
        const char *e = entries[i].path;
        const char *slash = strrchr(e, '/');
        size_t dlen = slash == e ? 1 : (size_t)(slash - e);
        if ((dlen == plen && strncmp(e, path, plen) == 0) || (plen == 1 && slash == e)) {
            free(entries[i].path);
            entries[i] = entries[--nentries];
        } else {
            i++;
        }
    }
    return 0;
}

static int pc_fallocate(const char *path, int mode, off_t off, off_t len, struct fuse_file_info *fi) {
    (void)path;
    ALIVE();
    // Space and size only (the engine preallocates segments): taken as durable at once.
    return fallocate((int)fi->fh, mode, off, len) == 0 ? 0 : -errno;
}

static int pc_access(const char *path, int mask) {
    ALIVE();
    return faccessat(backing, rel(path), mask, 0) == 0 ? 0 : -errno;
}

static const struct fuse_operations ops = {
    .init = pc_init, .destroy = pc_destroy, .getattr = pc_getattr, .readdir = pc_readdir,
    .mkdir = pc_mkdir, .rmdir = pc_rmdir, .unlink = pc_unlink, .rename = pc_rename,
    .chmod = pc_chmod, .chown = pc_chown, .utimens = pc_utimens, .truncate = pc_truncate,
    .open = pc_open, .create = pc_create, .read = pc_read, .write = pc_write, .statfs = pc_statfs,
    .release = pc_release, .fsync = pc_fsync, .opendir = pc_opendir, .releasedir = pc_releasedir,
    .fsyncdir = pc_fsyncdir, .fallocate = pc_fallocate, .access = pc_access,
};

static void on_cut(int sig) { (void)sig; clock_gettime(CLOCK_MONOTONIC, &signalled); ops_at_signal = ops_total; last_op_at_signal = last_op; cut_requested = 1; }

int main(int argc, char **argv) {
    int i = 1;
    for (; i < argc && strncmp(argv[i], "--", 2) == 0; i++) {
        if (strcmp(argv[i], "--torn") == 0) torn = 1;
        else if (strcmp(argv[i], "--dir-entries") == 0) dir_entries = 1;
        else if (strcmp(argv[i], "--faults") == 0 && i + 1 < argc) faults_path = argv[++i];
        else if (strcmp(argv[i], "--seed") == 0 && i + 1 < argc) rng = strtoull(argv[++i], NULL, 10) * 2 + 1;
        else { fprintf(stderr, "powercut: unknown option %s\n", argv[i]); return 2; }
    }
    if (argc - i != 2) {
        fprintf(stderr, "usage: crossbook-powercut [--torn] [--dir-entries] [--faults FILE] [--seed N] BACKING MOUNT\n");
        return 2;
    }
    backing = open(argv[i], O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (backing < 0) { perror(argv[i]); return 2; }
    struct sigaction sa = { .sa_handler = on_cut, .sa_flags = SA_RESTART };
    sigemptyset(&sa.sa_mask);
    sigaction(SIGUSR1, &sa, NULL);
    // A parent may have spawned us with signals blocked (Foundation's Process does).
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGUSR1);
    sigprocmask(SIG_UNBLOCK, &set, NULL);
    char *fargs[] = { argv[0], "-f", "-s", "-o", "fsname=powercut,subtype=powercut", argv[i + 1], NULL };
    return fuse_main(6, fargs, &ops, NULL);
}
