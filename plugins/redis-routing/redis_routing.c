/* plugins/redis-routing: the routing table of every engine in Redis (hiredis 0.14, RESP2).
 * See plugins/redis-routing/README.md.
 *
 * Keys (under the configured prefix):
 *   route:<SYMBOL>    hash: instance, shard, status (ACTIVE | MIGRATING), epoch
 *   instance:<NAME>   hash: shards, address, pid, heartbeat_ms; expires 3 heartbeats after the
 *                     last (a dead engine's key goes away by itself)
 *   routes            pub/sub channel: "<route key> <epoch>" after every change (a hint)
 *
 * Every change of a route is route_cas.h's compare-and-set on the epoch. The engine owns its
 * symbols: it rejects commands for a symbol another shard owns (symbol_moved), whatever Redis
 * says. Redis is the map producers elsewhere read, and an operator's lever: this plugin
 *   - at (re)connect and every resync_ms re-reads every route of this engine's symbols and
 *     publishes the missing ones (epoch 1, ACTIVE, where the engine has them);
 *   - follows a route that names this instance and another of its shards (ACTIVE): the engine
 *     moves the symbol there (symbol_migrate);
 *   - is the engine's router: before a move it marks the route MIGRATING (epoch + 1; refused when
 *     Redis is unreachable or the epoch moved meanwhile), after it ACTIVE where the symbol trades
 *     (epoch + 1);
 *   - resolves a MIGRATING route of this instance that no move of its own explains (a crash
 *     between the two writes) to ACTIVE where the engine has the symbol;
 *   - in a standby promoted to primary (engine.predecessor: the primary it followed, under another
 *     instance name) takes over the routes that name that primary, for the symbols it trades;
 *   - leaves alone a route that names another instance (a move between engines is settled by
 *     transfer_begin/transfer_claim), and says so in its health.
 * Change notifications are hints; the epoch is the truth; a reconnect re-reads everything. Redis
 * down: health degraded, trading goes on with the routes the engine has, and no move is allowed
 * until Redis is back. */
#define _GNU_SOURCE
#include "crossbook_plugin.h"
#include "redis_common.h"
#include "route_cas.h"

#include <hiredis/hiredis.h>
#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

typedef struct route {
    int present;
    char instance[128];
    long shard;
    int migrating; /* status MIGRATING */
    char to[128];  /* MIGRATING to another instance: that instance ("" otherwise) */
    long to_shard; /* and its shard */
    long long epoch;
    char malformed[320]; /* why it cannot be read; "" when fine */
} route;

typedef struct symbol_state {
    uint32_t id;
    const char *name;
    long long epoch;      /* the last epoch seen or written */
    int elsewhere;        /* the route names another instance (atomic: health reads it) */
    int malformed;        /* the route cannot be read (atomic) */
    char other[128];      /* that instance */
} symbol_state;

typedef struct routing {
    const cb_host_api *api;
    cb_host *host;
    char redis_host[256];
    int redis_port;
    redis_credentials credentials;
    redis_tls tls;
    char prefix[64];
    char instance[128];
    char predecessor[128]; /* a promoted standby: the primary it followed ("" otherwise) */
    char address[256];
    char channel[96];
    int heartbeat_ms, timeout_ms, resync_ms;
    uint32_t shards;

    pthread_mutex_t lock; /* the command connection and everything below */
    redisContext *cmd;
    redisContext *sub;
    int connected; /* atomic: health reads it without the lock */
    char last_error[160];
    uint32_t count;
    symbol_state *symbols;
    long migrating; /* the id of the symbol this engine is moving, -1: none */
    int resync_now;

    pthread_t thread;
    int thread_started;
    int stopping;
    uint64_t *c_connected, *c_reconnects, *c_cas_lost, *c_follows, *c_changes, *c_takeovers;

    /* Moves to this engine the routes announce (MIGRATING, to = this instance), to hand to the
       engine outside the lock; the last ones handed, not to hand twice. */
    int accept_transfers;
    struct offer { char name[65]; long long epoch; uint32_t shard; } offers[16], offered[64];
    int offer_count, offered_next;
} routing;

static uint64_t now_ms(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000u + (uint64_t)t.tv_nsec / 1000000u;
}

static uint64_t wall_ms(void) {
    struct timespec t;
    clock_gettime(CLOCK_REALTIME, &t);
    return (uint64_t)t.tv_sec * 1000u + (uint64_t)t.tv_nsec / 1000000u;
}

static void logf_(routing *r, int level, const char *format, ...) {
    char line[512];
    va_list args;
    va_start(args, format);
    vsnprintf(line, sizeof line, format, args);
    va_end(args);
    r->api->log(r->host, level, line);
}

static long config_long(routing *r, const char *key, long fallback, long lo, long hi, char *error, size_t size, int *bad) {
    const char *text = r->api->config_get(r->host, key);
    if (text == NULL) return fallback;
    char *end = NULL;
    errno = 0;
    long v = strtol(text, &end, 10);
    if (errno != 0 || end == text || *end != 0 || v < lo || v > hi) {
        snprintf(error, size, "config %s = '%s': a whole number in %ld...%ld", key, text, lo, hi);
        *bad = 1;
    }
    return v;
}

/* ---- The connection ------------------------------------------------------------------------- */

/* Under the lock. */
static void disconnect(routing *r, const char *why) {
    if (r->connected) logf_(r, CB_LOG_WARNING, "redis %s:%d lost: %s", r->redis_host, r->redis_port, why);
    if (why != NULL) snprintf(r->last_error, sizeof r->last_error, "%s", why);
    if (r->cmd != NULL) redisFree(r->cmd);
    if (r->sub != NULL) redisFree(r->sub);
    r->cmd = r->sub = NULL;
    __atomic_store_n(&r->connected, 0, __ATOMIC_RELAXED);
    if (r->c_connected) __atomic_store_n(r->c_connected, 0, __ATOMIC_RELAXED);
}

static redisContext *open_context(routing *r, char *why, size_t size) {
    struct timeval tv = {r->timeout_ms / 1000, (r->timeout_ms % 1000) * 1000};
    redisContext *c = redis_connect(r->redis_host, r->redis_port, tv, &r->tls, why, size);
    if (c == NULL) return NULL;
    redisSetTimeout(c, tv);
    if (!redis_authenticate(c, &r->credentials, why, size)) {
        redisFree(c);
        return NULL;
    }
    return c;
}

/* A command on the command connection (under the lock); NULL (and disconnected) on an I/O error. */
static redisReply *command(routing *r, int argc, const char **argv) {
    if (!r->connected) return NULL;
    redisReply *reply = redisCommandArgv(r->cmd, argc, argv, NULL);
    if (reply == NULL) {
        disconnect(r, r->cmd->errstr[0] ? r->cmd->errstr : "no reply");
        return NULL;
    }
    return reply;
}

static void key_of(routing *r, const char *symbol, char *out, size_t size) {
    snprintf(out, size, "%sroute:%s", r->prefix, symbol);
}

/* Reads a route (under the lock); 0 on an I/O error. */
static int read_route(routing *r, const char *symbol, route *out) {
    char key[256];
    key_of(r, symbol, key, sizeof key);
    memset(out, 0, sizeof *out);
    const char *argv[] = {"HGETALL", key};
    redisReply *reply = command(r, 2, argv);
    if (reply == NULL) return 0;
    if (reply->type != REDIS_REPLY_ARRAY) {
        snprintf(out->malformed, sizeof out->malformed, "%s is not a hash", key);
        out->present = 1;
        freeReplyObject(reply);
        return 1;
    }
    if (reply->elements == 0) {
        freeReplyObject(reply);
        return 1;
    }
    out->present = 1;
    int have_instance = 0, have_shard = 0, have_status = 0, have_epoch = 0;
    for (size_t i = 0; i + 1 < reply->elements; i += 2) {
        redisReply *f = reply->element[i], *v = reply->element[i + 1];
        if (f->type != REDIS_REPLY_STRING || v->type != REDIS_REPLY_STRING) continue;
        char *end = NULL;
        if (strcmp(f->str, "instance") == 0) {
            if (v->len == 0 || v->len >= sizeof out->instance) continue;
            memcpy(out->instance, v->str, v->len);
            out->instance[v->len] = 0;
            have_instance = 1;
        } else if (strcmp(f->str, "shard") == 0) {
            errno = 0;
            long s = strtol(v->str, &end, 10);
            if (errno == 0 && end != v->str && *end == 0 && s >= 0) { out->shard = s; have_shard = 1; }
        } else if (strcmp(f->str, "to_shard") == 0) {
            errno = 0;
            long s = strtol(v->str, &end, 10);
            if (errno == 0 && end != v->str && *end == 0 && s >= 0) out->to_shard = s;
        } else if (strcmp(f->str, "to") == 0) {
            if (v->len == 0 || v->len >= sizeof out->to) continue;
            memcpy(out->to, v->str, v->len);
            out->to[v->len] = 0;
        } else if (strcmp(f->str, "status") == 0) {
            if (strcmp(v->str, "ACTIVE") == 0) { out->migrating = 0; have_status = 1; }
            else if (strcmp(v->str, "MIGRATING") == 0) { out->migrating = 1; have_status = 1; }
        } else if (strcmp(f->str, "epoch") == 0) {
            errno = 0;
            long long e = strtoll(v->str, &end, 10);
            if (errno == 0 && end != v->str && *end == 0 && e >= 1) { out->epoch = e; have_epoch = 1; }
        }
    }
    freeReplyObject(reply);
    if (!have_epoch) snprintf(out->malformed, sizeof out->malformed, "%s: no whole epoch >= 1", key);
    else if (!have_instance) snprintf(out->malformed, sizeof out->malformed, "%s: no instance", key);
    else if (!have_shard) snprintf(out->malformed, sizeof out->malformed, "%s: no whole shard >= 0", key);
    else if (!have_status) snprintf(out->malformed, sizeof out->malformed, "%s: status neither ACTIVE nor MIGRATING", key);
    return 1;
}

/* The compare-and-set (under the lock): 1 won (*epoch = the new one), 0 lost (*epoch = the
 * route's), -1 I/O error. */
static int cas_to(routing *r, const char *symbol, long long expected, uint32_t shard, const char *status, const char *to,
                  uint32_t to_shard, int must_migrate, long long *epoch) {
    char key[256], exp[32], sh[16], tsh[16];
    key_of(r, symbol, key, sizeof key);
    snprintf(exp, sizeof exp, "%lld", expected);
    snprintf(sh, sizeof sh, "%u", shard);
    snprintf(tsh, sizeof tsh, "%u", to_shard);
    const char *argv[] = {"EVAL", route_cas_script, "1", key, exp, r->instance, sh, status, r->channel, to ? to : "",
                          must_migrate ? "M" : "", tsh};
    redisReply *reply = command(r, 12, argv);
    if (reply == NULL) return -1;
    int result = -1;
    if (reply->type == REDIS_REPLY_ARRAY && reply->elements == 2 && reply->element[0]->type == REDIS_REPLY_INTEGER) {
        result = reply->element[0]->integer == 1 ? 1 : 0;
        redisReply *e = reply->element[1];
        if (e->type == REDIS_REPLY_STRING) *epoch = strtoll(e->str, NULL, 10);
        else if (e->type == REDIS_REPLY_INTEGER) *epoch = e->integer;
    } else {
        logf_(r, CB_LOG_ERROR, "route script on %s: unexpected reply (type %d%s%s)", key, reply->type,
              reply->type == REDIS_REPLY_ERROR ? ": " : "", reply->type == REDIS_REPLY_ERROR ? reply->str : "");
    }
    freeReplyObject(reply);
    if (result == 1) {
        if (r->c_changes) __atomic_fetch_add(r->c_changes, 1, __ATOMIC_RELAXED);
    } else if (result == 0) {
        if (r->c_cas_lost) __atomic_fetch_add(r->c_cas_lost, 1, __ATOMIC_RELAXED);
    }
    return result;
}

static symbol_state *find(routing *r, uint32_t id) {
    for (uint32_t i = 0; i < r->count; i++)
        if (r->symbols[i].id == id) return &r->symbols[i];
    return NULL;
}

static uint32_t engine_shard(routing *r, uint32_t id) {
    cb_symbol s = {.size = sizeof(cb_symbol)};
    if (r->api->symbol_by_id(r->host, id, &s) != CB_OK) return UINT32_MAX;
    return s.shard;
}

static int cas(routing *r, const char *symbol, long long expected, uint32_t shard, const char *status, long long *epoch) {
    return cas_to(r, symbol, expected, shard, status, NULL, 0, 0, epoch);
}

static void note_offer(routing *r, const char *name, const route *rt);

/* Brings one route in line (under the lock). Returns the shard the engine should move the
 * symbol to (a route of this instance that says so), or -1. */
static long sync_one(routing *r, symbol_state *s) {
    route rt;
    if (!read_route(r, s->name, &rt)) return -1;
    uint32_t here = engine_shard(r, s->id);
    long long epoch = 0;
    if (here == UINT32_MAX) {
        /* No shard of this engine owns it (it moved to another engine): its route is not ours to
           publish or mend; a move to here is offered to the engine. */
        if (rt.present && !rt.malformed[0]) s->epoch = rt.epoch;
        note_offer(r, s->name, &rt);
        return -1;
    }
    if (!rt.present) {
        if (cas(r, s->name, 0, here, "ACTIVE", &epoch) == 1) {
            s->epoch = epoch;
            logf_(r, CB_LOG_INFO, "route %s published: %s shard %u, epoch %lld", s->name, r->instance, here, epoch);
        }
        __atomic_store_n(&s->elsewhere, 0, __ATOMIC_RELAXED);
        __atomic_store_n(&s->malformed, 0, __ATOMIC_RELAXED);
        return -1;
    }
    if (rt.malformed[0]) {
        if (!s->malformed) logf_(r, CB_LOG_WARNING, "route of %s left alone: %s", s->name, rt.malformed);
        __atomic_store_n(&s->malformed, 1, __ATOMIC_RELAXED);
        return -1;
    }
    __atomic_store_n(&s->malformed, 0, __ATOMIC_RELAXED);
    if (rt.migrating && rt.to[0]) {
        /* A move between engines: the two engines settle it (transfer_claim), not this loop. */
        s->epoch = rt.epoch;
        return -1;
    }
    if (r->predecessor[0] && strcmp(rt.instance, r->predecessor) == 0) {
        /* This engine was promoted in place of that instance (its standby, under another name):
           the symbols it trades are its own now (the lease fenced the old primary). */
        if (cas(r, s->name, rt.epoch, here, "ACTIVE", &epoch) == 1) {
            s->epoch = epoch;
            __atomic_store_n(&s->elsewhere, 0, __ATOMIC_RELAXED);
            if (r->c_takeovers) __atomic_fetch_add(r->c_takeovers, 1, __ATOMIC_RELAXED);
            logf_(r, CB_LOG_INFO, "route %s taken over from instance %s (this engine's primary before its promotion): %s shard %u, epoch %lld",
                  s->name, r->predecessor, r->instance, here, epoch);
        }
        return -1;
    }
    if (strcmp(rt.instance, r->instance) != 0) {
        if (!s->elsewhere || strcmp(s->other, rt.instance) != 0)
            logf_(r, CB_LOG_WARNING, "route of %s names instance %s (epoch %lld): it trades there unless this engine owns it (then here too: fix the route)",
                  s->name, rt.instance, rt.epoch);
        __atomic_store_n(&s->elsewhere, 1, __ATOMIC_RELAXED);
        snprintf(s->other, sizeof s->other, "%s", rt.instance);
        s->epoch = rt.epoch;
        return -1;
    }
    __atomic_store_n(&s->elsewhere, 0, __ATOMIC_RELAXED);
    s->epoch = rt.epoch;
    if (rt.migrating) {
        if (r->migrating == (long)s->id) return -1; /* ours, in progress */
        /* A move interrupted between its two writes: the engine's placement is the truth. */
        if (cas(r, s->name, rt.epoch, here, "ACTIVE", &epoch) == 1) {
            s->epoch = epoch;
            logf_(r, CB_LOG_INFO, "route %s was MIGRATING with no move in progress: ACTIVE on shard %u, epoch %lld",
                  s->name, here, epoch);
        }
        return -1;
    }
    if ((uint32_t)rt.shard == here) return -1;
    if (rt.shard >= (long)r->shards) {
        logf_(r, CB_LOG_WARNING, "route of %s names shard %ld of %u shards: set back to shard %u", s->name, rt.shard,
              r->shards, here);
        if (cas(r, s->name, rt.epoch, here, "ACTIVE", &epoch) == 1) s->epoch = epoch;
        return -1;
    }
    return rt.shard;
}

/* ---- The router (called by the engine, from the thread that asked for a move) ---------------- */

static int route_begin(void *context, uint32_t id, uint32_t from, uint32_t to, char *error, size_t size) {
    routing *r = context;
    (void)from;
    pthread_mutex_lock(&r->lock);
    int rc = CB_ERR_FAILED;
    symbol_state *s = find(r, id);
    route rt;
    long long epoch = 0;
    if (s == NULL) {
        cb_copy_text(error, size, "not a symbol of this engine");
    } else if (!r->connected) {
        snprintf(error, size, "redis %s:%d unreachable (%s): no route changes until it is back", r->redis_host,
                 r->redis_port, r->last_error);
        rc = CB_ERR_IO;
    } else if (!read_route(r, s->name, &rt)) {
        snprintf(error, size, "redis %s:%d: %s", r->redis_host, r->redis_port, r->last_error);
        rc = CB_ERR_IO;
    } else if (rt.present && rt.malformed[0]) {
        snprintf(error, size, "the route is malformed: %s", rt.malformed);
    } else if (rt.present && strcmp(rt.instance, r->instance) != 0) {
        snprintf(error, size, "route:%s names instance %s (epoch %lld)", s->name, rt.instance, rt.epoch);
    } else if (rt.present && rt.migrating) {
        snprintf(error, size, "route:%s is MIGRATING already (epoch %lld)", s->name, rt.epoch);
    } else {
        int won = cas(r, s->name, rt.present ? rt.epoch : 0, to, "MIGRATING", &epoch);
        if (won == 1) {
            s->epoch = epoch;
            r->migrating = id;
            rc = CB_OK;
        } else if (won == 0) {
            snprintf(error, size, "route:%s changed meanwhile (epoch %lld)", s->name, epoch);
        } else {
            snprintf(error, size, "redis %s:%d: %s", r->redis_host, r->redis_port, r->last_error);
            rc = CB_ERR_IO;
        }
    }
    pthread_mutex_unlock(&r->lock);
    return rc;
}

/* ---- Moves between engines (the router's transfer functions) -------------------------------- */

static int transfer_begin(void *context, const char *symbol, uint32_t shard, const char *to, uint32_t to_shard,
                          uint64_t *epoch_out, char *error, size_t size) {
    routing *r = context;
    if (symbol == NULL || to == NULL || epoch_out == NULL || !*to || strlen(to) >= 128 || strlen(symbol) > 64) {
        cb_copy_text(error, size, "bad arguments");
        return CB_ERR_INVALID;
    }
    if (strcmp(to, r->instance) == 0) {
        cb_copy_text(error, size, "the target is this instance");
        return CB_ERR_INVALID;
    }
    pthread_mutex_lock(&r->lock);
    int rc = CB_ERR_FAILED;
    route rt;
    long long epoch = 0;
    if (!r->connected || !read_route(r, symbol, &rt)) {
        snprintf(error, size, "redis %s:%d unreachable (%s): no route changes until it is back", r->redis_host, r->redis_port,
                 r->last_error);
        rc = CB_ERR_IO;
    } else if (!rt.present) {
        snprintf(error, size, "route:%s does not exist (this engine publishes its routes once Redis answers)", symbol);
    } else if (rt.malformed[0]) {
        snprintf(error, size, "the route is malformed: %s", rt.malformed);
    } else if (strcmp(rt.instance, r->instance) != 0) {
        snprintf(error, size, "route:%s names instance %s (epoch %lld)", symbol, rt.instance, rt.epoch);
    } else if (rt.migrating) {
        snprintf(error, size, "route:%s is MIGRATING already (epoch %lld)", symbol, rt.epoch);
    } else {
        int won = cas_to(r, symbol, rt.epoch, shard, "MIGRATING", to, to_shard, 0, &epoch);
        if (won == 1) {
            *epoch_out = (uint64_t)epoch;
            rc = CB_OK;
            logf_(r, CB_LOG_INFO, "route %s: MIGRATING to instance %s, epoch %lld", symbol, to, epoch);
        } else if (won == 0) {
            snprintf(error, size, "route:%s changed meanwhile (epoch %lld)", symbol, epoch);
        } else {
            snprintf(error, size, "redis %s:%d: %s", r->redis_host, r->redis_port, r->last_error);
            rc = CB_ERR_IO;
        }
    }
    pthread_mutex_unlock(&r->lock);
    return rc;
}

static int transfer_claim(void *context, const char *symbol, uint64_t epoch, uint32_t shard, char *error, size_t size) {
    routing *r = context;
    if (symbol == NULL || strlen(symbol) > 64 || epoch == 0 || epoch > (uint64_t)LLONG_MAX) {
        cb_copy_text(error, size, "bad arguments");
        return CB_ERR_INVALID;
    }
    pthread_mutex_lock(&r->lock);
    long long now = 0;
    int won = r->connected ? cas_to(r, symbol, (long long)epoch, shard, "ACTIVE", NULL, 0, 1, &now) : -1;
    int rc;
    if (won == 1) {
        logf_(r, CB_LOG_INFO, "route %s: ACTIVE on %s shard %u, epoch %lld (claimed at epoch %llu)", symbol, r->instance, shard,
              now, (unsigned long long)epoch);
        rc = CB_OK;
    } else if (won == 0) {
        snprintf(error, size, "route:%s is not MIGRATING at epoch %llu (epoch %lld)", symbol, (unsigned long long)epoch, now);
        rc = CB_ERR_FAILED;
    } else {
        snprintf(error, size, "redis %s:%d unreachable (%s)", r->redis_host, r->redis_port, r->last_error);
        rc = CB_ERR_IO;
    }
    pthread_mutex_unlock(&r->lock);
    return rc;
}

static int route_read_(void *context, const char *symbol, cb_route *out, char *error, size_t size) {
    routing *r = context;
    if (symbol == NULL || out == NULL || strlen(symbol) > 64) {
        cb_copy_text(error, size, "bad arguments");
        return CB_ERR_INVALID;
    }
    pthread_mutex_lock(&r->lock);
    route rt;
    int rc;
    if (!r->connected || !read_route(r, symbol, &rt)) {
        snprintf(error, size, "redis %s:%d unreachable (%s)", r->redis_host, r->redis_port, r->last_error);
        rc = CB_ERR_IO;
    } else if (!rt.present) {
        rc = CB_ERR_NOT_FOUND;
    } else if (rt.malformed[0]) {
        cb_copy_text(error, size, rt.malformed);
        rc = CB_ERR_INVALID;
    } else {
        memset(out, 0, sizeof *out);
        snprintf(out->instance, sizeof out->instance, "%s", rt.instance);
        snprintf(out->to, sizeof out->to, "%s", rt.to);
        out->shard = (uint32_t)rt.shard;
        out->migrating = rt.migrating ? 1 : 0;
        out->epoch = (uint64_t)rt.epoch;
        out->to_shard = (uint32_t)rt.to_shard;
        rc = CB_OK;
    }
    pthread_mutex_unlock(&r->lock);
    return rc;
}

static long sync_one(routing *r, symbol_state *s);

/* A symbol listed while the engine runs (the host calls route_end once it is published): it joins
 * the table (under the lock), and its route is published at once when Redis is up (else at the
 * next resync). */
static symbol_state *adopt_listed(routing *r, uint32_t id) {
    cb_symbol sym = {.size = sizeof(cb_symbol)};
    if (r->api->symbol_by_id(r->host, id, &sym) != CB_OK || sym.name == NULL) return NULL;
    symbol_state *grown = realloc(r->symbols, ((size_t)r->count + 1) * sizeof *r->symbols);
    if (grown == NULL) return NULL;
    r->symbols = grown;
    symbol_state *s = &r->symbols[r->count];
    memset(s, 0, sizeof *s);
    s->id = sym.id;
    s->name = sym.name;
    r->count++;
    logf_(r, CB_LOG_INFO, "symbol %s listed: its route is published%s", s->name, r->connected ? "" : " once Redis is back");
    if (r->connected) (void)sync_one(r, s);
    return s;
}

static void route_end(void *context, uint32_t id, uint32_t shard) {
    routing *r = context;
    pthread_mutex_lock(&r->lock);
    symbol_state *s = find(r, id);
    if (s == NULL && r->migrating != (long)id) {
        (void)adopt_listed(r, id);
    } else if (s != NULL && r->migrating == (long)id) {
        r->migrating = -1;
        long long epoch = 0;
        int won = r->connected ? cas(r, s->name, s->epoch, shard, "ACTIVE", &epoch) : -1;
        if (won == 1) {
            s->epoch = epoch;
            logf_(r, CB_LOG_INFO, "route %s: ACTIVE on shard %u, epoch %lld", s->name, shard, epoch);
        } else {
            /* Written at the next resync (a MIGRATING route no move explains). */
            logf_(r, CB_LOG_WARNING, "route %s: could not record shard %u now (%s); the next resync does",
                  s->name, shard, won == 0 ? "the epoch moved" : r->last_error);
            r->resync_now = 1;
        }
    }
    pthread_mutex_unlock(&r->lock);
}

/* ---- The thread ----------------------------------------------------------------------------- */

/* The value of a `CONFIG GET <name>` reply, made printable (at most `size` - 1 bytes; any byte
 * outside printable ASCII becomes '?'); 0 where the reply is not a name and a value. */
static int config_value(redisReply *reply, char *out, size_t size) {
    if (reply == NULL || reply->type != REDIS_REPLY_ARRAY || reply->elements != 2 || reply->element[1] == NULL) return 0;
    redisReply *v = reply->element[1];
    if ((v->type != REDIS_REPLY_STRING && v->type != REDIS_REPLY_STATUS) || v->str == NULL) return 0;
    size_t n = v->len < size - 1 ? v->len : size - 1;
    for (size_t i = 0; i < n; i++) out[i] = (v->str[i] >= 0x20 && v->str[i] < 0x7f) ? v->str[i] : '?';
    out[n] = 0;
    return 1;
}

/* Why a `CONFIG GET` said nothing usable, made printable into `why`. */
static void config_refusal(const redisReply *reply, char *why, size_t size) {
    snprintf(why, size, "%s", reply->type == REDIS_REPLY_ERROR && reply->str ? reply->str : "no such setting");
    for (char *p = why; *p; p++) if (*p < 0x20 || *p >= 0x7f) *p = '?';
}

/* Whether this Redis keeps what it acknowledged: a route (or a lease, or a transfer blob) that
 * Redis acknowledged and then lost in its own crash takes the route back in time, and a move
 * between engines could then give a symbol to both. That needs appendonly yes and appendfsync
 * always; said at every connection (a warning if not), or that it cannot be told (CONFIG
 * refused: renamed, or an ACL). Under the lock, just connected. */
static void check_durability(routing *r) {
    char only[16] = "", fsync_[16] = "";
    const char *a[] = {"CONFIG", "GET", "appendonly"};
    redisReply *reply = command(r, 3, a);
    if (reply == NULL) return;
    char why[96] = "";
    int known = config_value(reply, only, sizeof only);
    if (!known) config_refusal(reply, why, sizeof why);
    freeReplyObject(reply);
    if (known) {
        const char *f[] = {"CONFIG", "GET", "appendfsync"};
        reply = command(r, 3, f);
        if (reply == NULL) return;
        known = config_value(reply, fsync_, sizeof fsync_);
        if (!known) config_refusal(reply, why, sizeof why);
        freeReplyObject(reply);
    }
    if (!known) {
        logf_(r, CB_LOG_INFO, "redis %s:%d: cannot tell whether it keeps what it acknowledged (CONFIG GET: %s); moves between engines and leases need appendonly yes, appendfsync always",
              r->redis_host, r->redis_port, why);
    } else if (strcmp(only, "yes") != 0 || strcmp(fsync_, "always") != 0) {
        logf_(r, CB_LOG_WARNING, "redis %s:%d has appendonly %s, appendfsync %s: a route, lease or transfer it acknowledged can be lost if Redis crashes, and a moved symbol then trade on two engines; set appendonly yes, appendfsync always",
              r->redis_host, r->redis_port, only, fsync_);
    } else {
        logf_(r, CB_LOG_INFO, "redis %s:%d keeps what it acknowledges (appendonly yes, appendfsync always)", r->redis_host, r->redis_port);
    }
}

/* Under the lock. */
static int connect_all(routing *r) {
    char why[160];
    r->cmd = open_context(r, why, sizeof why);
    if (r->cmd != NULL) r->sub = open_context(r, why, sizeof why);
    if (r->cmd == NULL || r->sub == NULL) {
        if (r->cmd) redisFree(r->cmd);
        r->cmd = NULL;
        snprintf(r->last_error, sizeof r->last_error, "%s", why);
        return 0;
    }
    redisReply *reply = redisCommand(r->sub, "SUBSCRIBE %s", r->channel);
    if (reply == NULL || reply->type == REDIS_REPLY_ERROR) {
        snprintf(r->last_error, sizeof r->last_error, "SUBSCRIBE: %s",
                 reply ? reply->str : (r->sub->errstr[0] ? r->sub->errstr : "no reply"));
        if (reply) freeReplyObject(reply);
        redisFree(r->cmd);
        redisFree(r->sub);
        r->cmd = r->sub = NULL;
        return 0;
    }
    freeReplyObject(reply);
    __atomic_store_n(&r->connected, 1, __ATOMIC_RELAXED);
    if (r->c_connected) __atomic_store_n(r->c_connected, 1, __ATOMIC_RELAXED);
    if (r->c_reconnects) __atomic_fetch_add(r->c_reconnects, 1, __ATOMIC_RELAXED);
    logf_(r, CB_LOG_INFO, "redis %s:%d connected; following %s", r->redis_host, r->redis_port, r->channel);
    check_durability(r);
    return r->connected;
}

/* Under the lock. */
static void heartbeat(routing *r) {
    char key[256], shards[16], pid[16], beat[32], ttl[32];
    snprintf(key, sizeof key, "%sinstance:%s", r->prefix, r->instance);
    snprintf(shards, sizeof shards, "%u", r->shards);
    snprintf(pid, sizeof pid, "%d", (int)getpid());
    snprintf(beat, sizeof beat, "%llu", (unsigned long long)wall_ms());
    snprintf(ttl, sizeof ttl, "%d", r->heartbeat_ms * 3);
    const char *set[] = {"HSET", key, "shards", shards, "address", r->address, "pid", pid, "heartbeat_ms", beat};
    redisReply *reply = command(r, 10, set);
    if (reply == NULL) return;
    freeReplyObject(reply);
    const char *expire[] = {"PEXPIRE", key, ttl};
    reply = command(r, 3, expire);
    if (reply != NULL) freeReplyObject(reply);
}

/* Re-reads every route (under the lock); moves to make go into `moves` (id, shard pairs). */
static int sync_all(routing *r, long *moves) {
    int n = 0;
    for (uint32_t i = 0; i < r->count && r->connected; i++) {
        long to = sync_one(r, &r->symbols[i]);
        if (to >= 0) {
            moves[2 * n] = r->symbols[i].id;
            moves[2 * n + 1] = to;
            n++;
        }
    }
    return n;
}

/* A route MIGRATING to this instance (under the lock): queued for the engine, once. */
static void note_offer(routing *r, const char *name, const route *rt) {
    if (!r->accept_transfers || !rt->present || rt->malformed[0] || !rt->migrating || strcmp(rt->to, r->instance) != 0) return;
    for (int i = 0; i < 64; i++)
        if (r->offered[i].epoch == rt->epoch && strcmp(r->offered[i].name, name) == 0) return;
    for (int i = 0; i < r->offer_count; i++)
        if (r->offers[i].epoch == rt->epoch && strcmp(r->offers[i].name, name) == 0) return;
    if (r->offer_count >= 16 || strlen(name) >= sizeof r->offers[0].name) return;
    struct offer *o = &r->offers[r->offer_count++];
    snprintf(o->name, sizeof o->name, "%s", name);
    o->epoch = rt->epoch;
    o->shard = (uint32_t)rt->to_shard;
    r->offered[r->offered_next] = *o;
    r->offered_next = (r->offered_next + 1) % 64;
}

/* Hands the queued offers to the engine (without the lock: the engine may call the router). */
static void hand_offers(routing *r) {
    struct offer batch[16];
    pthread_mutex_lock(&r->lock);
    int n = r->offer_count;
    memcpy(batch, r->offers, sizeof(struct offer) * (size_t)n);
    r->offer_count = 0;
    pthread_mutex_unlock(&r->lock);
    for (int i = 0; i < n; i++) {
        logf_(r, CB_LOG_INFO, "route %s: MIGRATING to this instance at epoch %lld, shard %u: handed to the engine", batch[i].name,
              batch[i].epoch, batch[i].shard);
        if (CB_HOST_HAS(r->api, transfer_offered)) r->api->transfer_offered(r->host, batch[i].name, (uint64_t)batch[i].epoch, batch[i].shard);
    }
}

/* A hint about a symbol this plugin does not track (the engine does not know it yet): a move to
 * this instance is offered all the same. */
static void hint_untracked(routing *r, const char *text) {
    char head[256], name[65];
    snprintf(head, sizeof head, "%sroute:", r->prefix);
    size_t h = strlen(head);
    if (!r->accept_transfers || strncmp(text, head, h) != 0) return;
    const char *start = text + h, *space = strchr(start, ' ');
    size_t len = space ? (size_t)(space - start) : strlen(start);
    if (len == 0 || len >= sizeof name) return;
    memcpy(name, start, len);
    name[len] = 0;
    route rt;
    if (read_route(r, name, &rt)) note_offer(r, name, &rt);
}

/* A hint: "<prefix>route:<SYMBOL> <epoch>"; the symbol's state, or NULL. */
static symbol_state *hinted(routing *r, const char *text) {
    char head[256];
    snprintf(head, sizeof head, "%sroute:", r->prefix);
    size_t h = strlen(head);
    if (strncmp(text, head, h) != 0) return NULL;
    const char *name = text + h;
    const char *space = strchr(name, ' ');
    size_t len = space ? (size_t)(space - name) : strlen(name);
    for (uint32_t i = 0; i < r->count; i++)
        if (strlen(r->symbols[i].name) == len && strncmp(r->symbols[i].name, name, len) == 0) return &r->symbols[i];
    return NULL;
}

static void do_moves(routing *r, const long *moves, int n) {
    for (int i = 0; i < n && !__atomic_load_n(&r->stopping, __ATOMIC_ACQUIRE); i++) {
        char error[256] = {0};
        uint32_t id = (uint32_t)moves[2 * i], to = (uint32_t)moves[2 * i + 1];
        if (engine_shard(r, id) == to) continue;
        logf_(r, CB_LOG_INFO, "following the route of symbol %u: to shard %u", id, to);
        if (r->api->symbol_migrate(r->host, id, to, error, sizeof error) == CB_OK) {
            if (r->c_follows) __atomic_fetch_add(r->c_follows, 1, __ATOMIC_RELAXED);
        } else {
            logf_(r, CB_LOG_WARNING, "could not follow the route of symbol %u to shard %u: %s", id, to, error);
        }
    }
}

/* The moves buffer holds a move per symbol: it grows with the table (listings), under the lock. */
static long *moves_for(routing *r, long *moves, size_t *length) {
    size_t need = (size_t)r->count * 2 + 2;
    if (need <= *length) return moves;
    long *grown = realloc(moves, need * sizeof(long));
    if (grown == NULL) return moves;
    *length = need;
    return grown;
}

static void *run(void *arg) {
    routing *r = arg;
    size_t moves_length = 0;
    long *moves = NULL;
    pthread_mutex_lock(&r->lock);
    moves = moves_for(r, moves, &moves_length);
    pthread_mutex_unlock(&r->lock);
    uint64_t next_beat = 0, next_sync = 0, next_try = 0;
    while (!__atomic_load_n(&r->stopping, __ATOMIC_ACQUIRE)) {
        int n = 0;
        pthread_mutex_lock(&r->lock);
        moves = moves_for(r, moves, &moves_length);
        uint64_t now = now_ms();
        if (!r->connected && now >= next_try) {
            if (connect_all(r)) {
                next_beat = next_sync = 0;
            } else {
                next_try = now + 200;
            }
        }
        if (r->connected && now >= next_beat) {
            heartbeat(r);
            next_beat = now + (uint64_t)r->heartbeat_ms;
        }
        if (r->connected && (now >= next_sync || r->resync_now) && moves_length >= (size_t)r->count * 2 + 2) {
            r->resync_now = 0;
            n = sync_all(r, moves);
            next_sync = now + (uint64_t)r->resync_ms;
        }
        int fd = r->connected ? r->sub->fd : -1;
        pthread_mutex_unlock(&r->lock);
        hand_offers(r);
        if (n > 0) {
            do_moves(r, moves, n);
            continue;
        }
        if (fd < 0) {
            usleep(50 * 1000);
            continue;
        }
        /* The hints: the subscriber connection is read by this thread only. */
        struct pollfd p = {.fd = fd, .events = POLLIN};
        int ready = poll(&p, 1, 100);
        if (ready <= 0) continue;
        pthread_mutex_lock(&r->lock);
        moves = moves_for(r, moves, &moves_length);
        if (r->connected && r->sub->fd == fd && moves_length >= (size_t)r->count * 2 + 2) {
            if (redisBufferRead(r->sub) != REDIS_OK) {
                disconnect(r, r->sub->errstr[0] ? r->sub->errstr : "the subscription closed");
            } else {
                void *raw = NULL;
                while (r->connected && redisGetReplyFromReader(r->sub, &raw) == REDIS_OK && raw != NULL) {
                    redisReply *m = raw;
                    if (m->type == REDIS_REPLY_ARRAY && m->elements == 3 && m->element[2]->type == REDIS_REPLY_STRING) {
                        symbol_state *s = hinted(r, m->element[2]->str);
                        if (s == NULL) hint_untracked(r, m->element[2]->str);
                        if (s != NULL) {
                            long to = sync_one(r, s);
                            if (to >= 0) {
                                moves[2 * n] = s->id;
                                moves[2 * n + 1] = to;
                                n++;
                            }
                        }
                    }
                    freeReplyObject(m);
                    raw = NULL;
                    if ((uint32_t)n >= r->count) break;
                }
            }
        }
        pthread_mutex_unlock(&r->lock);
        hand_offers(r);
        if (n > 0) do_moves(r, moves, n);
    }
    free(moves);
    return NULL;
}

/* ---- The plugin ----------------------------------------------------------------------------- */

static int start(const cb_host_api *api, cb_host *host, void **instance, char *error, size_t size) {
    if (!CB_HOST_HAS(api, symbol_migrate)) {
        cb_copy_text(error, size, "this engine's host table has no router functions: a newer engine is needed");
        return CB_ERR_UNSUPPORTED;
    }
    routing *r = calloc(1, sizeof *r);
    if (r == NULL) return CB_ERR_FAILED;
    r->api = api;
    r->host = host;
    r->migrating = -1;
    pthread_mutex_init(&r->lock, NULL);
    int bad = 0;
    if (!redis_credentials_read(api, host, &r->credentials, error, size)) {
        free(r);
        return CB_ERR_INVALID;
    }
    if (!redis_address(api, host, r->redis_host, sizeof r->redis_host, &r->redis_port, error, size)) {
        free(r);
        return CB_ERR_INVALID;
    }
    const char *prefix = api->config_get(host, "prefix");
    if (prefix == NULL) prefix = "";
    const char *name = api->config_get(host, "engine.instance");
    if (name == NULL || name[0] == 0) name = "crossbook";
    if (strlen(prefix) >= 48 || strchr(prefix, ' ') != NULL || strlen(name) >= sizeof r->instance) {
        cb_copy_text(error, size, "config prefix: at most 47 bytes, no space");
        free(r);
        return CB_ERR_INVALID;
    }
    snprintf(r->prefix, sizeof r->prefix, "%s", prefix);
    snprintf(r->instance, sizeof r->instance, "%s", name);
    const char *predecessor = api->config_get(host, "engine.predecessor");
    if (predecessor != NULL && strlen(predecessor) < sizeof r->predecessor && strcmp(predecessor, name) != 0)
        snprintf(r->predecessor, sizeof r->predecessor, "%s", predecessor);
    snprintf(r->channel, sizeof r->channel, "%sroutes", r->prefix);
    const char *address = api->config_get(host, "address");
    if (address != NULL) {
        snprintf(r->address, sizeof r->address, "%s", address);
    } else if (gethostname(r->address, sizeof r->address) != 0) {
        snprintf(r->address, sizeof r->address, "unknown");
    }
    r->heartbeat_ms = (int)config_long(r, "heartbeat_ms", 1000, 50, 60000, error, size, &bad);
    if (!bad) r->timeout_ms = (int)config_long(r, "timeout_ms", 500, 10, 10000, error, size, &bad);
    if (!bad) r->resync_ms = (int)config_long(r, "resync_ms", 5000, 100, 600000, error, size, &bad);
    const char *accept = api->config_get(host, "accept_transfers");
    if (!bad && accept != NULL && strcmp(accept, "yes") != 0 && strcmp(accept, "no") != 0) {
        snprintf(error, size, "config accept_transfers = '%s': yes or no", accept);
        bad = 1;
    }
    r->accept_transfers = accept == NULL || strcmp(accept, "yes") == 0;
    if (bad || !redis_tls_read(api, host, r->redis_host, &r->tls, error, size)) {
        free(r);
        return CB_ERR_INVALID;
    }
    r->shards = api->shard_count(host);
    r->count = api->symbol_count(host);
    r->symbols = calloc(r->count ? r->count : 1, sizeof *r->symbols);
    for (uint32_t i = 0; i < r->count; i++) {
        cb_symbol s = {.size = sizeof(cb_symbol)};
        if (api->symbol_at(host, i, &s) != CB_OK) {
            snprintf(error, size, "symbol %u of %u: not found", i, r->count);
            redis_tls_free(&r->tls);
            free(r->symbols);
            free(r);
            return CB_ERR_FAILED;
        }
        r->symbols[i].id = s.id;
        r->symbols[i].name = s.name;
    }
    api->counter_register(host, "redis_connected", "1 while the plugin's Redis connection is up", CB_METRIC_GAUGE,
                          &r->c_connected);
    api->counter_register(host, "redis_reconnects", "connections to Redis made", CB_METRIC_COUNTER, &r->c_reconnects);
    api->counter_register(host, "route_changes", "routes this engine changed in Redis (compare-and-set won)",
                          CB_METRIC_COUNTER, &r->c_changes);
    api->counter_register(host, "route_cas_lost", "compare-and-sets lost to another writer", CB_METRIC_COUNTER,
                          &r->c_cas_lost);
    api->counter_register(host, "route_follows", "moves made because a route in Redis asked for them", CB_METRIC_COUNTER,
                          &r->c_follows);
    api->counter_register(host, "route_takeovers", "routes of the primary this promoted standby followed, taken over",
                          CB_METRIC_COUNTER, &r->c_takeovers);
    cb_router router = {.size = sizeof(cb_router), .context = r, .route_begin = route_begin, .route_end = route_end,
                        .transfer_begin = transfer_begin, .transfer_claim = transfer_claim, .route_read = route_read_};
    int rc = api->router_register(host, &router);
    if (rc != CB_OK) {
        snprintf(error, size, "cannot register as the engine's router (status %d: another router?)", rc);
        redis_tls_free(&r->tls);
        free(r->symbols);
        free(r);
        return rc;
    }
    /* Redis down at start is not fatal: the engine trades on its own placement meanwhile. */
    if (pthread_create(&r->thread, NULL, run, r) != 0) {
        cb_copy_text(error, size, "cannot start its thread");
        redis_tls_free(&r->tls);
        free(r->symbols);
        free(r);
        return CB_ERR_FAILED;
    }
    r->thread_started = 1;
    *instance = r;
    return CB_OK;
}

static void stop(void *instance) {
    routing *r = instance;
    if (r == NULL) return;
    __atomic_store_n(&r->stopping, 1, __ATOMIC_RELEASE);
    if (r->thread_started) pthread_join(r->thread, NULL);
    pthread_mutex_lock(&r->lock);
    if (r->connected) {
        /* A clean stop: this instance is gone from the map at once (the routes stay: the
           symbols live here, and come back with it). */
        char key[256];
        snprintf(key, sizeof key, "%sinstance:%s", r->prefix, r->instance);
        const char *argv[] = {"DEL", key};
        redisReply *reply = command(r, 2, argv);
        if (reply) freeReplyObject(reply);
    }
    disconnect(r, NULL);
    pthread_mutex_unlock(&r->lock);
    pthread_mutex_destroy(&r->lock);
    redis_tls_free(&r->tls);
    free(r->symbols);
    free(r);
}

static int health(void *instance, char *message, size_t size) {
    routing *r = instance;
    /* Never wait for the lock here (the health poll must return at once): read racy ints. */
    if (!__atomic_load_n(&r->connected, __ATOMIC_RELAXED)) {
        /* The reason, read without the lock (at most its buffer: a torn text at worst). */
        char why[sizeof r->last_error];
        memcpy(why, r->last_error, sizeof why);
        why[sizeof why - 1] = 0;
        snprintf(message, size, "redis %s:%d unreachable (%s): trading on the routes it has; no route changes until it is back",
                 r->redis_host, r->redis_port, why);
        return CB_HEALTH_DEGRADED;
    }
    uint32_t elsewhere = 0, malformed = 0;
    const char *first = NULL;
    for (uint32_t i = 0; i < r->count; i++) {
        if (__atomic_load_n(&r->symbols[i].elsewhere, __ATOMIC_RELAXED)) {
            elsewhere++;
            if (first == NULL) first = r->symbols[i].name;
        }
        if (__atomic_load_n(&r->symbols[i].malformed, __ATOMIC_RELAXED)) malformed++;
    }
    if (elsewhere > 0) {
        snprintf(message, size, "%u route(s) name another instance (%s ...): they trade here still", elsewhere, first);
        return CB_HEALTH_DEGRADED;
    }
    if (malformed > 0) {
        snprintf(message, size, "%u route(s) in redis cannot be read: left alone", malformed);
        return CB_HEALTH_DEGRADED;
    }
    snprintf(message, size, "redis %s:%d: %u routes", r->redis_host, r->redis_port, r->count);
    return CB_HEALTH_OK;
}

/* redis_lease.c */
extern const cb_lease_ops redis_routing_lease;

static const cb_plugin descriptor = {
    .size = sizeof(cb_plugin),
    .abi_version = CB_PLUGIN_ABI_VERSION,
    .name = "redis-routing",
    .version = "1.0.0",
    .kinds = CB_KIND_ROUTING,
    .start = start,
    .stop = stop,
    .health = health,
    .lease = &redis_routing_lease,
};

CB_PLUGIN_EXPORT const cb_plugin *crossbook_plugin_entry(void) { return &descriptor; }
