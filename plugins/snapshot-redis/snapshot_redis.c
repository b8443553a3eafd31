/* plugins/snapshot-redis: shard snapshots in Redis (hiredis 0.14), the newest N kept. A snapshot
 * store (CB_KIND_SNAPSHOT_STORE) like snapshot-file, for the low-latency snapshots the seed
 * architecture keeps in Redis, and the way a book is to travel between engines.
 *
 * Keys (one hash slot per shard, for Redis Cluster: the braces):
 *   <prefix>snap:{<instance>:<shard>}:<sequence>   the body, binary, as the engine gave it
 *   <prefix>snaps:{<instance>:<shard>}             sorted set: score and member = the sequence
 * A save writes the body, indexes it and drops all but the newest `keep`, in one Lua script
 * (whole or not at all). The engine checks what it loads (the snapshot's binding to its journal
 * and the book checksums) and falls back to an older snapshot, or to the journal, when one is
 * damaged or missing: snapshots only shorten a replay. Durable as Redis is configured (appendonly
 * with appendfsync always for a snapshot to outlive a Redis crash). One connection per call:
 * the host calls from a thread per shard, and calls may overlap. */
#define _GNU_SOURCE
#include "crossbook_plugin.h"
#include "redis_common.h"

#include <hiredis/hiredis.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char save_script[] =
    "redis.call('SET', KEYS[2], ARGV[2])\n"
    "redis.call('ZADD', KEYS[1], ARGV[1], ARGV[1])\n"
    "local n = redis.call('ZCARD', KEYS[1])\n"
    "local drop = n - tonumber(ARGV[3])\n"
    "if drop > 0 then\n"
    "  for _, s in ipairs(redis.call('ZRANGE', KEYS[1], 0, drop - 1)) do\n"
    "    redis.call('DEL', ARGV[4] .. s)\n"
    "    redis.call('ZREM', KEYS[1], s)\n"
    "  end\n"
    "end\n"
    "return n\n";

typedef struct store {
    const cb_host_api *api;
    cb_host *host;
    char redis_host[256];
    int redis_port;
    redis_credentials credentials;
    redis_tls tls;
    char prefix[64];
    char instance[128];
    long keep;
    int timeout_ms;
    uint64_t *saved, *failures;
    int last_failed; /* the last save failed (atomic) */
    char last_error[256];
    pthread_mutex_t idle_lock;
    redisContext *idle; /* the connection kept between calls (under idle_lock) */
    int stopping;
} store;

static redisContext *open_redis(store *s, char *error, size_t size) {
    struct timeval tv = {s->timeout_ms / 1000, (s->timeout_ms % 1000) * 1000};
    redisContext *c = redis_connect(s->redis_host, s->redis_port, tv, &s->tls, error, size);
    if (c == NULL) return NULL;
    redisSetTimeout(c, tv);
    char why[256];
    if (!redis_authenticate(c, &s->credentials, why, sizeof why)) {
        snprintf(error, size, "redis %s:%d: %s", s->redis_host, s->redis_port, why);
        redisFree(c);
        return NULL;
    }
    return c;
}

/* One command on the connection kept between calls (a move's blob calls come one after
 * another, and a connection with AUTH costs more than a GET on loopback); a caller who finds it
 * in use opens its own. A kept connection the server closed meanwhile is replaced once. NULL:
 * no reply (`error` says why). */
static redisReply *command(store *s, int argc, const char **argv, const size_t *lens, char *error, size_t error_size) {
    for (int attempt = 0; attempt < 2; attempt++) {
        pthread_mutex_lock(&s->idle_lock);
        redisContext *c = s->idle;
        s->idle = NULL;
        pthread_mutex_unlock(&s->idle_lock);
        int kept = c != NULL;
        if (c == NULL) c = open_redis(s, error, error_size);
        if (c == NULL) return NULL;
        redisReply *r = redisCommandArgv(c, argc, argv, lens);
        if (r == NULL) {
            int closed = c->err == REDIS_ERR_EOF || (c->err == REDIS_ERR_IO && (errno == ECONNRESET || errno == EPIPE));
            snprintf(error, error_size, "redis %s:%d: %s", s->redis_host, s->redis_port, c->errstr);
            redisFree(c);
            if (kept && closed) continue;
            return NULL;
        }
        pthread_mutex_lock(&s->idle_lock);
        if (s->idle == NULL && !s->stopping) {
            s->idle = c;
            c = NULL;
        }
        pthread_mutex_unlock(&s->idle_lock);
        if (c) redisFree(c);
        return r;
    }
    return NULL;
}

static void keys_of(store *s, uint32_t shard, char *index, size_t isize, char *body_prefix, size_t bsize) {
    snprintf(index, isize, "%ssnaps:{%s:%u}", s->prefix, s->instance, shard);
    snprintf(body_prefix, bsize, "%ssnap:{%s:%u}:", s->prefix, s->instance, shard);
}

static int save(void *context, uint32_t shard, uint64_t sequence, const uint8_t *body, size_t length, char *error,
                size_t error_size) {
    store *s = context;
    char index[256], prefix[256], key[300], seq[32], keep[32];
    keys_of(s, shard, index, sizeof index, prefix, sizeof prefix);
    snprintf(seq, sizeof seq, "%llu", (unsigned long long)sequence);
    snprintf(key, sizeof key, "%s%s", prefix, seq);
    snprintf(keep, sizeof keep, "%ld", s->keep);
    const char *argv[] = {"EVAL", save_script, "2", index, key, seq, (const char *)body, keep, prefix};
    size_t lens[] = {4, strlen(save_script), 1, strlen(index), strlen(key), strlen(seq), length, strlen(keep), strlen(prefix)};
    redisReply *r = command(s, 9, argv, lens, error, error_size);
    int rc = CB_OK;
    if (r == NULL) {
        rc = CB_ERR_IO;
    } else if (r->type == REDIS_REPLY_ERROR) {
        snprintf(error, error_size, "redis refused the snapshot: %s", r->str);
        rc = CB_ERR_IO;
    }
    if (r) freeReplyObject(r);
    __atomic_fetch_add(rc == CB_OK ? s->saved : s->failures, 1, __ATOMIC_RELAXED);
    __atomic_store_n(&s->last_failed, rc != CB_OK, __ATOMIC_RELAXED);
    return rc;
}

/* A name is the sequence in decimal, as list gives it: anything else is not ours. */
static int parse_name(const char *name, uint64_t *sequence) {
    if (name == NULL || name[0] == 0 || strlen(name) > 20) return 0;
    for (const char *p = name; *p; p++)
        if (*p < '0' || *p > '9') return 0;
    errno = 0;
    char *end = NULL;
    unsigned long long v = strtoull(name, &end, 10);
    if (errno != 0 || *end != 0) return 0;
    *sequence = v;
    return 1;
}

static int list(void *context, uint32_t shard, cb_snapshot_visitor visit, void *visit_context) {
    store *s = context;
    char index[256], prefix[256], error[256];
    keys_of(s, shard, index, sizeof index, prefix, sizeof prefix);
    const char *argv[] = {"ZRANGE", index, "0", "-1"};
    redisReply *r = command(s, 4, argv, NULL, error, sizeof error);
    if (r == NULL) {
        s->api->log(s->host, CB_LOG_WARNING, error);
        return CB_ERR_IO;
    }
    int rc = CB_OK;
    if (r->type != REDIS_REPLY_ARRAY) {
        rc = CB_ERR_IO;
    } else {
        for (size_t i = 0; i < r->elements; i++) {
            uint64_t sequence;
            redisReply *e = r->element[i];
            if (e->type == REDIS_REPLY_STRING && parse_name(e->str, &sequence)) visit(visit_context, sequence, e->str);
        }
    }
    freeReplyObject(r);
    return rc;
}

/* GET key, handed to sink: CB_ERR_NOT_FOUND when it is not there; an empty string is a body
 * only when `empty_ok`. */
static int get_body(store *s, const char *key, int empty_ok, cb_snapshot_sink sink, void *sink_context, char *error,
                    size_t error_size) {
    const char *argv[] = {"GET", key};
    redisReply *r = command(s, 2, argv, NULL, error, error_size);
    int rc = CB_OK;
    if (r == NULL) {
        rc = CB_ERR_IO;
    } else if (r->type == REDIS_REPLY_NIL) {
        snprintf(error, error_size, "%s does not exist", key);
        rc = CB_ERR_NOT_FOUND;
    } else if (r->type != REDIS_REPLY_STRING || (r->len == 0 && !empty_ok)) {
        snprintf(error, error_size, "%s is not a body this store wrote", key);
        rc = CB_ERR_INVALID;
    } else {
        sink(sink_context, (const uint8_t *)r->str, r->len);
    }
    if (r) freeReplyObject(r);
    return rc;
}

static int load(void *context, uint32_t shard, const char *name, uint64_t *sequence, cb_snapshot_sink sink,
                void *sink_context, char *error, size_t error_size) {
    store *s = context;
    uint64_t at;
    if (!parse_name(name, &at)) {
        snprintf(error, error_size, "'%s' is not a snapshot of this store", name ? name : "(null)");
        return CB_ERR_INVALID;
    }
    char index[256], prefix[256], key[300];
    keys_of(s, shard, index, sizeof index, prefix, sizeof prefix);
    snprintf(key, sizeof key, "%s%s", prefix, name);
    *sequence = at;
    return get_body(s, key, 0, sink, sink_context, error, error_size);
}

/* ---- Blobs: a book moving between engines (`crossbook migrate --to-instance`) ---------------- */

/* <prefix>blob:{<key>}: one key, SET whole (atomic in Redis). */
static int blob_key(store *s, const char *key, char *out, size_t size, char *error, size_t error_size) {
    size_t n = key ? strlen(key) : 0;
    if (n == 0 || n > 200) {
        cb_copy_text(error, error_size, "a blob key is 1 to 200 bytes");
        return 0;
    }
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)key[i];
        if (ch <= ' ' || ch >= 127 || ch == '{' || ch == '}') {
            cb_copy_text(error, error_size, "a blob key is printable ASCII without spaces or braces");
            return 0;
        }
    }
    snprintf(out, size, "%sblob:{%s}", s->prefix, key);
    return 1;
}

static int blob_save(void *context, const char *key, const uint8_t *body, size_t length, char *error, size_t error_size) {
    store *s = context;
    char k[300];
    if (!blob_key(s, key, k, sizeof k, error, error_size)) return CB_ERR_INVALID;
    const char *argv[] = {"SET", k, (const char *)body};
    size_t lens[] = {3, strlen(k), length};
    redisReply *r = command(s, 3, argv, lens, error, error_size);
    int rc = CB_OK;
    if (r == NULL) {
        rc = CB_ERR_IO;
    } else if (r->type == REDIS_REPLY_ERROR) {
        snprintf(error, error_size, "redis refused %s: %s", k, r->str);
        rc = CB_ERR_IO;
    }
    if (r) freeReplyObject(r);
    return rc;
}

static int blob_load(void *context, const char *key, cb_snapshot_sink sink, void *sink_context, char *error,
                     size_t error_size) {
    store *s = context;
    char k[300];
    if (!blob_key(s, key, k, sizeof k, error, error_size)) return CB_ERR_INVALID;
    return get_body(s, k, 1, sink, sink_context, error, error_size);
}

static int blob_delete(void *context, const char *key) {
    store *s = context;
    char k[300], error[64];
    if (!blob_key(s, key, k, sizeof k, error, sizeof error)) return CB_ERR_INVALID;
    const char *argv[] = {"DEL", k};
    redisReply *r = command(s, 2, argv, NULL, error, sizeof error);
    int rc = r != NULL && r->type != REDIS_REPLY_ERROR ? CB_OK : CB_ERR_IO;
    if (r) freeReplyObject(r);
    return rc;
}

static int start(const cb_host_api *api, cb_host *host, void **instance, char *error, size_t size) {
    store *s = calloc(1, sizeof *s);
    if (s == NULL) return CB_ERR_FAILED;
    pthread_mutex_init(&s->idle_lock, NULL);
    s->api = api;
    s->host = host;
    if (!redis_address(api, host, s->redis_host, sizeof s->redis_host, &s->redis_port, error, size) ||
        !redis_credentials_read(api, host, &s->credentials, error, size)) {
        free(s);
        return CB_ERR_INVALID;
    }
    const char *prefix = api->config_get(host, "prefix");
    const char *name = api->config_get(host, "engine.instance");
    if (prefix == NULL) prefix = "";
    if (name == NULL) name = "crossbook";
    if (strlen(prefix) >= sizeof s->prefix || strlen(name) >= sizeof s->instance || strpbrk(prefix, " {}") != NULL) {
        cb_copy_text(error, size, "config prefix: at most 63 bytes, no space or braces");
        free(s);
        return CB_ERR_INVALID;
    }
    snprintf(s->prefix, sizeof s->prefix, "%s", prefix);
    snprintf(s->instance, sizeof s->instance, "%s", name);
    char *end = NULL;
    const char *keep = api->config_get(host, "keep");
    if (keep == NULL) keep = api->config_get(host, "engine.snapshots_kept");
    s->keep = keep ? strtol(keep, &end, 10) : 3;
    if (keep && (*end != 0 || s->keep < 1 || s->keep > 1000)) {
        snprintf(error, size, "config keep = '%s': 1 to 1000 snapshots a shard", keep);
        free(s);
        return CB_ERR_INVALID;
    }
    const char *timeout = api->config_get(host, "timeout_ms");
    s->timeout_ms = timeout ? (int)strtol(timeout, &end, 10) : 2000;
    if (timeout && (*end != 0 || s->timeout_ms < 10 || s->timeout_ms > 60000)) {
        snprintf(error, size, "config timeout_ms = '%s': 10 to 60000", timeout);
        free(s);
        return CB_ERR_INVALID;
    }
    if (!redis_tls_read(api, host, s->redis_host, &s->tls, error, size)) {
        free(s);
        return CB_ERR_INVALID;
    }
    static uint64_t unused_saved, unused_failures;
    s->saved = &unused_saved;
    s->failures = &unused_failures;
    api->counter_register(host, "redis_snapshots_saved", "Snapshots stored in Redis", CB_METRIC_COUNTER, &s->saved);
    api->counter_register(host, "redis_snapshot_failures", "Snapshots Redis did not take", CB_METRIC_COUNTER, &s->failures);
    cb_snapshot_store table = {.size = sizeof(cb_snapshot_store), .context = s, .save = save, .list = list, .load = load,
                               .blob_save = blob_save, .blob_load = blob_load, .blob_delete = blob_delete};
    int rc = api->snapshot_store_register(host, &table);
    if (rc != CB_OK) {
        snprintf(error, size, "cannot register as the snapshot store (status %d: another store loaded?)", rc);
        redis_tls_free(&s->tls);
        free(s);
        return rc;
    }
    /* Redis down now is not fatal: recovery replays the journal, saves fail and are counted. */
    *instance = s;
    return CB_OK;
}

static void stop(void *instance) {
    store *s = instance;
    pthread_mutex_lock(&s->idle_lock);
    s->stopping = 1;
    redisContext *c = s->idle;
    s->idle = NULL;
    pthread_mutex_unlock(&s->idle_lock);
    if (c) redisFree(c);
    pthread_mutex_destroy(&s->idle_lock);
    redis_tls_free(&s->tls);
    free(s);
}

static int health(void *instance, char *message, size_t size) {
    store *s = instance;
    uint64_t failures = __atomic_load_n(s->failures, __ATOMIC_RELAXED);
    snprintf(message, size, "redis %s:%d, newest %ld kept, %llu saved, %llu failed", s->redis_host, s->redis_port, s->keep,
             (unsigned long long)__atomic_load_n(s->saved, __ATOMIC_RELAXED), (unsigned long long)failures);
    if (__atomic_load_n(&s->last_failed, __ATOMIC_RELAXED)) {
        snprintf(message, size, "redis %s:%d: the last snapshot was not stored (%llu failed in all); recovery replays more of the journal",
                 s->redis_host, s->redis_port, (unsigned long long)failures);
        return CB_HEALTH_DEGRADED;
    }
    return CB_HEALTH_OK;
}

static const cb_plugin descriptor = {
    .size = sizeof(cb_plugin),
    .abi_version = CB_PLUGIN_ABI_VERSION,
    .name = "snapshot-redis",
    .version = "1.0.0",
    .kinds = CB_KIND_SNAPSHOT_STORE,
    .start = start,
    .stop = stop,
    .health = health,
};

CB_PLUGIN_EXPORT const cb_plugin *crossbook_plugin_entry(void) { return &descriptor; }
