/* What the Redis plugins (redis-routing, snapshot-redis) share: the server's address from the
 * config. Compiled into each plugin; not part of the ABI. */
#ifndef CROSSBOOK_REDIS_COMMON_H
#define CROSSBOOK_REDIS_COMMON_H

#include "crossbook_plugin.h"
#include "redis_tls.h"

#include <hiredis/hiredis.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* `redis` of the plugin's config (default 127.0.0.1:6379) as host and port; 0 with the reason in
 * `error` when it is not host:port. */
static inline int redis_address(const cb_host_api *api, cb_host *host, char *out_host, size_t host_size, int *out_port,
                                char *error, size_t error_size) {
    const char *redis = api->config_get(host, "redis");
    if (redis == NULL) redis = "127.0.0.1:6379";
    const char *colon = strrchr(redis, ':');
    char *end = NULL;
    long port = colon ? strtol(colon + 1, &end, 10) : 0;
    if (colon == NULL || colon == redis || (size_t)(colon - redis) >= host_size || end == colon + 1 || *end != 0 ||
        port < 1 || port > 65535) {
        snprintf(error, error_size, "config redis = '%s': give host:port", redis);
        return 0;
    }
    memcpy(out_host, redis, (size_t)(colon - redis));
    out_host[colon - redis] = 0;
    *out_port = (int)port;
    return 1;
}

/* Credentials for Redis AUTH, from the plugin's config: `user` (an ACL user, optional) and
 * `password_file` (a file holding the password, its first line; it must not be readable by
 * others: a password in the config itself would be, so there is no `password` key). */
typedef struct redis_credentials {
    char user[128];
    char password[512];
    int present;
} redis_credentials;

/* Reads the credentials; 0 with the reason in `error` when the file is missing, readable by
 * others, empty or longer than 511 bytes, or the user is not 1 to 127 printable characters. */
static inline int redis_credentials_read(const cb_host_api *api, cb_host *host, redis_credentials *out, char *error,
                                         size_t error_size) {
    memset(out, 0, sizeof *out);
    const char *user = api->config_get(host, "user");
    const char *file = api->config_get(host, "password_file");
    if (user == NULL && file == NULL) return 1;
    if (file == NULL) {
        snprintf(error, error_size, "config user = '%s' needs password_file", user);
        return 0;
    }
    if (user != NULL) {
        size_t n = strlen(user);
        if (n == 0 || n >= sizeof out->user) {
            snprintf(error, error_size, "config user: 1 to %zu characters", sizeof out->user - 1);
            return 0;
        }
        for (size_t i = 0; i < n; i++)
            if (user[i] <= 32 || user[i] >= 127) {
                snprintf(error, error_size, "config user: printable characters without spaces only");
                return 0;
            }
        memcpy(out->user, user, n + 1);
    }
    FILE *f = fopen(file, "re");
    if (f == NULL) {
        snprintf(error, error_size, "config password_file = '%s': cannot open it", file);
        return 0;
    }
    struct stat st;
    if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode) || (st.st_mode & S_IROTH)) {
        fclose(f);
        snprintf(error, error_size, "config password_file = '%s': not a regular file, or readable by others (chmod o-r)", file);
        return 0;
    }
    char line[600];
    size_t n = fread(line, 1, sizeof line - 1, f);
    fclose(f);
    line[n] = 0;
    char *end = strpbrk(line, "\r\n");
    if (end != NULL) *end = 0;
    size_t length = strlen(line);
    if (length == 0 || length >= sizeof out->password || (end == NULL && n == sizeof line - 1)) {
        snprintf(error, error_size, "config password_file = '%s': its first line must be a password of 1 to %zu bytes", file,
                 sizeof out->password - 1);
        return 0;
    }
    memcpy(out->password, line, length + 1);
    out->present = 1;
    return 1;
}

/* AUTH on a new connection (nothing without credentials); 0 with Redis's reason in `error`. */
static inline int redis_authenticate(redisContext *c, const redis_credentials *cred, char *error, size_t error_size) {
    if (!cred->present) return 1;
    const char *argv[3] = {"AUTH", cred->user, cred->password};
    int argc = cred->user[0] ? 3 : 2;
    if (argc == 2) argv[1] = cred->password;
    redisReply *reply = redisCommandArgv(c, argc, argv, NULL);
    if (reply == NULL) {
        snprintf(error, error_size, "AUTH: %s", c->errstr[0] ? c->errstr : "no reply");
        return 0;
    }
    int ok = reply->type == REDIS_REPLY_STATUS;
    if (!ok) snprintf(error, error_size, "AUTH refused: %s", reply->type == REDIS_REPLY_ERROR ? reply->str : "unexpected reply");
    freeReplyObject(reply);
    return ok;
}

#endif
