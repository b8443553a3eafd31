/* crossbook-route: the routing table in Redis, for operators and tools (hiredis 0.14).
 *
 *   crossbook-route [--prefix P] HOST:PORT list                  every route: symbol instance shard status epoch
 *   crossbook-route [--prefix P] HOST:PORT get SYMBOL            one route (exit 1: none)
 *   crossbook-route [--prefix P] HOST:PORT instances             live engines: name shards address pid heartbeat age
 *   crossbook-route [--prefix P] HOST:PORT set SYMBOL INSTANCE SHARD --epoch E [--status ACTIVE|MIGRATING]
 *       the compare-and-set of route_cas.h: exit 0 and "won epoch N" when the route's epoch was
 *       E (0: no route yet), exit 3 and "lost: epoch is N" otherwise. An engine that owns SYMBOL
 *       follows an ACTIVE route naming one of its other shards (it moves the symbol there).
 * A Redis that requires AUTH: the password in the environment variable REDISCLI_AUTH (as
 * redis-cli takes it), an ACL user in CROSSBOOK_REDIS_USER.
 * Exit 2: a usage error or Redis unreachable (or refusing the password). */
#define _GNU_SOURCE
#include "route_cas.h"
#include "redis_tls.h"

#include <hiredis/hiredis.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

static void usage(void) {
    fprintf(stderr,
            "usage: crossbook-route [--prefix P] HOST:PORT list | get SYMBOL | instances |\n"
            "       set SYMBOL INSTANCE SHARD --epoch E [--status ACTIVE|MIGRATING]\n");
    exit(2);
}

static const char *field(redisReply *hash, const char *name) {
    if (hash == NULL || hash->type != REDIS_REPLY_ARRAY) return "?";
    for (size_t i = 0; i + 1 < hash->elements; i += 2)
        if (hash->element[i]->type == REDIS_REPLY_STRING && strcmp(hash->element[i]->str, name) == 0 &&
            hash->element[i + 1]->type == REDIS_REPLY_STRING)
            return hash->element[i + 1]->str;
    return "?";
}

static int print_route(redisContext *c, const char *key, const char *symbol) {
    redisReply *h = redisCommand(c, "HGETALL %s", key);
    if (h == NULL) {
        fprintf(stderr, "crossbook-route: %s\n", c->errstr);
        exit(2);
    }
    int found = h->type == REDIS_REPLY_ARRAY && h->elements > 0;
    if (found)
        printf("%s\t%s\t%s\t%s\t%s\n", symbol, field(h, "instance"), field(h, "shard"), field(h, "status"), field(h, "epoch"));
    freeReplyObject(h);
    return found;
}

/* Every key matching `pattern`, by SCAN (never KEYS on a live server). */
static void scan(redisContext *c, const char *pattern, void (*each)(redisContext *, const char *, void *), void *arg) {
    char cursor[32] = "0";
    do {
        redisReply *r = redisCommand(c, "SCAN %s MATCH %s COUNT 500", cursor, pattern);
        if (r == NULL || r->type != REDIS_REPLY_ARRAY || r->elements != 2) {
            fprintf(stderr, "crossbook-route: SCAN: %s\n", r == NULL ? c->errstr : "unexpected reply");
            exit(2);
        }
        snprintf(cursor, sizeof cursor, "%s", r->element[0]->str);
        for (size_t i = 0; i < r->element[1]->elements; i++) each(c, r->element[1]->element[i]->str, arg);
        freeReplyObject(r);
    } while (strcmp(cursor, "0") != 0);
}

static void each_route(redisContext *c, const char *key, void *arg) {
    size_t skip = *(size_t *)arg;
    print_route(c, key, key + skip);
}

static void each_instance(redisContext *c, const char *key, void *arg) {
    size_t skip = *(size_t *)arg;
    redisReply *h = redisCommand(c, "HGETALL %s", key);
    redisReply *ttl = redisCommand(c, "PTTL %s", key);
    struct timeval now;
    gettimeofday(&now, NULL);
    long long beat = strtoll(field(h, "heartbeat_ms"), NULL, 10);
    long long age = beat > 0 ? (long long)now.tv_sec * 1000 + now.tv_usec / 1000 - beat : -1;
    printf("%s\tshards %s\taddress %s\tpid %s\theartbeat %lld ms ago\texpires in %lld ms\n", key + skip, field(h, "shards"),
           field(h, "address"), field(h, "pid"), age, ttl && ttl->type == REDIS_REPLY_INTEGER ? ttl->integer : -1);
    if (h) freeReplyObject(h);
    if (ttl) freeReplyObject(ttl);
}

int main(int argc, char **argv) {
    const char *prefix = "";
    int i = 1;
    if (i + 1 < argc && strcmp(argv[i], "--prefix") == 0) {
        prefix = argv[i + 1];
        i += 2;
    }
    if (i + 1 >= argc) usage();
    const char *address = argv[i++];
    const char *verb = argv[i++];
    const char *colon = strrchr(address, ':');
    if (colon == NULL || colon == address || strlen(prefix) > 47) usage();
    char host[256];
    snprintf(host, sizeof host, "%.*s", (int)(colon - address), address);
    int port = atoi(colon + 1);
    struct timeval tv = {2, 0};
    /* TLS (redis_tls.h) from the environment: CROSSBOOK_REDIS_TLS_CA (turns it on),
     * CROSSBOOK_REDIS_TLS_CERT and CROSSBOOK_REDIS_TLS_KEY (a client certificate), and
     * CROSSBOOK_REDIS_TLS_SERVER_NAME (default: HOST). */
    redis_tls tls;
    char why[600];
    const char *ca = getenv("CROSSBOOK_REDIS_TLS_CA");
    if (!redis_tls_make(&tls, ca != NULL && ca[0] != 0, ca, getenv("CROSSBOOK_REDIS_TLS_CERT"), getenv("CROSSBOOK_REDIS_TLS_KEY"),
                        getenv("CROSSBOOK_REDIS_TLS_SERVER_NAME"), host, why, sizeof why)) {
        fprintf(stderr, "crossbook-route: %s\n", why);
        return 2;
    }
    redisContext *c = redis_connect(host, port, tv, &tls, why, sizeof why);
    if (c == NULL) {
        fprintf(stderr, "crossbook-route: %s\n", why);
        return 2;
    }
    redisSetTimeout(c, tv);
    const char *password = getenv("REDISCLI_AUTH"), *user = getenv("CROSSBOOK_REDIS_USER");
    if (password != NULL && password[0] != 0) {
        const char *auth[3] = {"AUTH", user, password};
        int n = user != NULL && user[0] != 0 ? 3 : 2;
        if (n == 2) auth[1] = password;
        redisReply *r = redisCommandArgv(c, n, auth, NULL);
        if (r == NULL || r->type == REDIS_REPLY_ERROR) {
            fprintf(stderr, "crossbook-route: redis %s: AUTH: %s\n", address, r ? r->str : c->errstr);
            return 2;
        }
        freeReplyObject(r);
    }
    char key[512], pattern[128];
    if (strcmp(verb, "list") == 0) {
        snprintf(pattern, sizeof pattern, "%sroute:*", prefix);
        size_t skip = strlen(prefix) + strlen("route:");
        scan(c, pattern, each_route, &skip);
        return 0;
    }
    if (strcmp(verb, "instances") == 0) {
        snprintf(pattern, sizeof pattern, "%sinstance:*", prefix);
        size_t skip = strlen(prefix) + strlen("instance:");
        scan(c, pattern, each_instance, &skip);
        return 0;
    }
    if (strcmp(verb, "get") == 0) {
        if (i >= argc) usage();
        snprintf(key, sizeof key, "%sroute:%s", prefix, argv[i]);
        return print_route(c, key, argv[i]) ? 0 : 1;
    }
    if (strcmp(verb, "set") == 0) {
        if (i + 2 >= argc) usage();
        const char *symbol = argv[i], *instance = argv[i + 1], *shard = argv[i + 2];
        const char *epoch = NULL, *status = "ACTIVE";
        for (int j = i + 3; j < argc; j++) {
            if (strcmp(argv[j], "--epoch") == 0 && j + 1 < argc) epoch = argv[++j];
            else if (strcmp(argv[j], "--status") == 0 && j + 1 < argc) status = argv[++j];
            else usage();
        }
        char *end = NULL;
        if (epoch == NULL || strtoll(epoch, &end, 10) < 0 || *end != 0 || strtol(shard, &end, 10) < 0 || *end != 0 ||
            (strcmp(status, "ACTIVE") != 0 && strcmp(status, "MIGRATING") != 0))
            usage();
        snprintf(key, sizeof key, "%sroute:%s", prefix, symbol);
        char channel[96];
        snprintf(channel, sizeof channel, "%sroutes", prefix);
        const char *args[] = {"EVAL", route_cas_script, "1", key, epoch, instance, shard, status, channel};
        redisReply *r = redisCommandArgv(c, 9, args, NULL);
        if (r == NULL || r->type != REDIS_REPLY_ARRAY || r->elements != 2) {
            fprintf(stderr, "crossbook-route: the route script failed: %s\n",
                    r == NULL ? c->errstr : (r->type == REDIS_REPLY_ERROR ? r->str : "unexpected reply"));
            return 2;
        }
        int won = r->element[0]->integer == 1;
        printf("%s epoch %s\n", won ? "won" : "lost:", r->element[1]->type == REDIS_REPLY_STRING ? r->element[1]->str : "?");
        freeReplyObject(r);
        redisFree(c);
        return won ? 0 : 3;
    }
    usage();
    return 2;
}
