/* The lease of redis-routing (cb_lease_ops in crossbook_plugin.h): leadership of a primary/standby
 * pair as a Redis key with a fencing epoch, on the plugin's Redis (its `redis`, `user` and
 * `password_file` config), on a connection of its own.
 *
 *   <prefix>KEY        = the holder, PX ttl: who may acknowledge
 *   <prefix>KEY:epoch  = a counter, incremented by each new holder: the fencing token
 *
 * Each change is one Lua script (atomic in Redis): two engines racing cannot both take the key,
 * and each new holder gets a higher epoch. Redis sets the expiry when it runs the script, after
 * the call began: a CB_OK means nobody can take the key before ttl_ms from the call's start, the
 * one thing the host's timing rule needs.
 *
 * Every answer is bounded: at most 64 KiB, within min(2 s, ttl) of the call; anything else is
 * CB_ERR_IO, so a hostile or broken server can neither hang the engine nor make it allocate. */
#define _GNU_SOURCE
#include "redis_common.h"

#include <errno.h>
#include <time.h>

static const char acquire_script[] =
    "local cur = redis.call('GET', KEYS[1])\n"
    "if cur == ARGV[1] then\n"
    "  redis.call('PEXPIRE', KEYS[1], ARGV[2])\n"
    "  return tonumber(redis.call('GET', KEYS[2]) or '0')\n"
    "end\n"
    "if cur then return -1 end\n"
    "redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])\n"
    "return redis.call('INCR', KEYS[2])\n";

static const char renew_script[] =
    "if redis.call('GET', KEYS[1]) == ARGV[1] then\n"
    "  redis.call('PEXPIRE', KEYS[1], ARGV[2])\n"
    "  return 1\n"
    "end\n"
    "return 0\n";

enum { LEASE_REPLY_MAX = 64 * 1024 };

typedef struct redis_lease {
    const cb_host_api *api;
    cb_host *host;
    char redis_host[256];
    int redis_port;
    redis_credentials credentials;
    redis_tls tls;
    char prefix[48]; /* the plugin's `prefix`, put before the lease's keys as before the routes' */
    redisContext *c; /* NULL: connect at the next call */
} redis_lease;

static uint64_t lease_now_ms(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000u + (uint64_t)t.tv_nsec / 1000000u;
}

static int lease_open(const cb_host_api *api, cb_host *host, void **out, char *error, size_t error_size) {
    redis_lease *l = calloc(1, sizeof *l);
    if (l == NULL) {
        cb_copy_text(error, error_size, "out of memory");
        return CB_ERR_FAILED;
    }
    l->api = api;
    l->host = host;
    if (!redis_address(api, host, l->redis_host, sizeof l->redis_host, &l->redis_port, error, error_size) ||
        !redis_credentials_read(api, host, &l->credentials, error, error_size) ||
        !redis_tls_read(api, host, l->redis_host, &l->tls, error, error_size)) {
        free(l);
        return CB_ERR_INVALID;
    }
    const char *prefix = api->config_get(host, "prefix");
    if (prefix == NULL) prefix = "";
    if (strlen(prefix) >= sizeof l->prefix || strchr(prefix, ' ') != NULL) {
        cb_copy_text(error, error_size, "config prefix: at most 47 bytes, no space");
        memset(&l->credentials, 0, sizeof l->credentials);
        redis_tls_free(&l->tls);
        free(l);
        return CB_ERR_INVALID;
    }
    snprintf(l->prefix, sizeof l->prefix, "%s", prefix);
    *out = l;
    return CB_OK;
}

static void lease_disconnect(redis_lease *l) {
    if (l->c != NULL) redisFree(l->c);
    l->c = NULL;
}

static void lease_close(void *lease) {
    redis_lease *l = lease;
    if (l == NULL) return;
    lease_disconnect(l);
    memset(&l->credentials, 0, sizeof l->credentials);
    redis_tls_free(&l->tls);
    free(l);
}

static void set_timeout(redisContext *c, uint64_t ms) {
    if (ms == 0) ms = 1;
    struct timeval tv = {(time_t)(ms / 1000), (suseconds_t)((ms % 1000) * 1000)};
    redisSetTimeout(c, tv);
}

/* EVAL of `script` on KEY, KEY:epoch with holder and ttl: the integer it answered, or 0 with why
 * in `error` (the connection is dropped: the next call reconnects). */
static int lease_eval(redis_lease *l, const char *script, const char *key, const char *holder, uint32_t ttl_ms,
                      long long *out, char *error, size_t error_size) {
    uint64_t budget = ttl_ms < 2000 ? ttl_ms : 2000;
    uint64_t deadline = lease_now_ms() + budget;
    size_t key_length = strlen(key);
    if (key_length == 0 || key_length > 200) {
        snprintf(error, error_size, "lease key of %zu bytes (1 to 200)", key_length);
        return 0;
    }
    if (l->c == NULL) {
        struct timeval tv = {(time_t)(budget / 1000), (suseconds_t)((budget % 1000) * 1000)};
        redisContext *c = redis_connect(l->redis_host, l->redis_port, tv, &l->tls, error, error_size);
        if (c == NULL) return 0;
        set_timeout(c, budget);
        if (!redis_authenticate(c, &l->credentials, error, error_size)) {
            redisFree(c);
            return 0;
        }
        l->c = c;
    }
    char lease_key[256], epoch_key[264], ttl[16];
    snprintf(lease_key, sizeof lease_key, "%s%s", l->prefix, key);
    snprintf(epoch_key, sizeof epoch_key, "%s%s:epoch", l->prefix, key);
    snprintf(ttl, sizeof ttl, "%u", ttl_ms);
    const char *argv[7] = {"EVAL", script, "2", lease_key, epoch_key, holder, ttl};
    redisContext *c = l->c;
    if (redisAppendCommandArgv(c, 7, argv, NULL) != REDIS_OK) {
        snprintf(error, error_size, "redis: %s", c->errstr);
        lease_disconnect(l);
        return 0;
    }
    int done = 0;
    while (!done) {
        uint64_t now = lease_now_ms();
        if (now >= deadline) {
            snprintf(error, error_size, "redis %s:%d: cannot send in %llu ms", l->redis_host, l->redis_port,
                     (unsigned long long)budget);
            lease_disconnect(l);
            return 0;
        }
        set_timeout(c, deadline - now);
        if (redisBufferWrite(c, &done) != REDIS_OK) {
            snprintf(error, error_size, "redis %s:%d: %s", l->redis_host, l->redis_port, c->errstr);
            lease_disconnect(l);
            return 0;
        }
    }
    redisReply *reply = NULL;
    for (;;) {
        if (redisGetReplyFromReader(c, (void **)&reply) != REDIS_OK) {
            snprintf(error, error_size, "redis %s:%d: %s", l->redis_host, l->redis_port, c->errstr);
            lease_disconnect(l);
            return 0;
        }
        if (reply != NULL) break;
        if (c->reader->len > LEASE_REPLY_MAX) {
            snprintf(error, error_size, "redis %s:%d: an answer above %d bytes", l->redis_host, l->redis_port, LEASE_REPLY_MAX);
            lease_disconnect(l);
            return 0;
        }
        uint64_t now = lease_now_ms();
        if (now >= deadline) {
            snprintf(error, error_size, "redis %s:%d: no answer in %llu ms", l->redis_host, l->redis_port,
                     (unsigned long long)budget);
            lease_disconnect(l);
            return 0;
        }
        set_timeout(c, deadline - now);
        if (redisBufferRead(c) != REDIS_OK) {
            int timed_out = c->err == REDIS_ERR_IO && (errno == EAGAIN || errno == EWOULDBLOCK);
            if (timed_out)
                snprintf(error, error_size, "redis %s:%d: no answer in %llu ms", l->redis_host, l->redis_port,
                         (unsigned long long)budget);
            else
                snprintf(error, error_size, "redis %s:%d: %s", l->redis_host, l->redis_port, c->errstr);
            lease_disconnect(l);
            return 0;
        }
    }
    int ok = 0;
    if (reply->type == REDIS_REPLY_INTEGER) {
        *out = reply->integer;
        ok = 1;
    } else if (reply->type == REDIS_REPLY_ERROR) {
        snprintf(error, error_size, "redis refused the lease script: %.200s", reply->str);
    } else {
        snprintf(error, error_size, "redis answered the lease script with a reply of type %d, not an integer", reply->type);
    }
    freeReplyObject(reply);
    if (!ok) lease_disconnect(l); /* an unexpected answer: start clean */
    return ok;
}

static int lease_acquire(void *lease, const char *key, const char *holder, uint32_t ttl_ms, uint64_t *epoch,
                         char *error, size_t error_size) {
    redis_lease *l = lease;
    if (l == NULL || key == NULL || holder == NULL || epoch == NULL || ttl_ms == 0) return CB_ERR_INVALID;
    long long value = 0;
    if (!lease_eval(l, acquire_script, key, holder, ttl_ms, &value, error, error_size)) return CB_ERR_IO;
    if (value == -1) {
        snprintf(error, error_size, "lease %s is held by another engine", key);
        return CB_ERR_FAILED;
    }
    if (value <= 0) {
        snprintf(error, error_size, "redis answered the lease script with %lld", value);
        return CB_ERR_IO;
    }
    *epoch = (uint64_t)value;
    return CB_OK;
}

static int lease_renew(void *lease, const char *key, const char *holder, uint32_t ttl_ms, char *error,
                       size_t error_size) {
    redis_lease *l = lease;
    if (l == NULL || key == NULL || holder == NULL || ttl_ms == 0) return CB_ERR_INVALID;
    long long value = 0;
    if (!lease_eval(l, renew_script, key, holder, ttl_ms, &value, error, error_size)) return CB_ERR_IO;
    if (value == 1) return CB_OK;
    if (value == 0) {
        snprintf(error, error_size, "lease %s is gone or another engine's", key);
        return CB_ERR_FAILED;
    }
    snprintf(error, error_size, "redis answered the renewal with %lld", value);
    return CB_ERR_IO;
}

const cb_lease_ops redis_routing_lease = {
    .size = sizeof(cb_lease_ops),
    .open = lease_open,
    .acquire = lease_acquire,
    .renew = lease_renew,
    .close = lease_close,
};
