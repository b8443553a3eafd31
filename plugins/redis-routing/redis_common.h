/* What the Redis plugins (redis-routing, snapshot-redis) share: the server's address from the
 * config. Compiled into each plugin; not part of the ABI. */
#ifndef CROSSBOOK_REDIS_COMMON_H
#define CROSSBOOK_REDIS_COMMON_H

#include "crossbook_plugin.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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

#endif
