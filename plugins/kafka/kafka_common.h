/* What the two Kafka plugins share (header only: each compiles it in): a plugin's health as its
 * threads set it and the host reads it, librdkafka's error callback, and config values. */
#ifndef CROSSBOOK_KAFKA_COMMON_H
#define CROSSBOOK_KAFKA_COMMON_H

#include <librdkafka/rdkafka.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "crossbook_plugin.h"

typedef struct kafka_health {
    const cb_host_api *api;
    cb_host *host;
    const char *brokers; /* for the broker's errors */
    pthread_mutex_t lock;
    int health; /* cb_health */
    char message[200];
} kafka_health;

static inline void kafka_health_init(kafka_health *h, const cb_host_api *api, cb_host *host, const char *brokers) {
    h->api = api;
    h->host = host;
    h->brokers = brokers;
    pthread_mutex_init(&h->lock, NULL);
    h->health = CB_HEALTH_OK;
    h->message[0] = 0;
}

static inline void kafka_health_destroy(kafka_health *h) { pthread_mutex_destroy(&h->lock); }

/* Sets the health; a change is logged (a warning unless it is ok again). */
static inline void kafka_health_set(kafka_health *h, int health, const char *message) {
    pthread_mutex_lock(&h->lock);
    int changed = h->health != health || strcmp(h->message, message) != 0;
    h->health = health;
    cb_copy_text(h->message, sizeof h->message, message);
    pthread_mutex_unlock(&h->lock);
    if (changed) h->api->log(h->host, health == CB_HEALTH_OK ? CB_LOG_INFO : CB_LOG_WARNING, message[0] ? message : "healthy again");
}

/* The health and its message (the plugin's `health`). */
static inline int kafka_health_get(kafka_health *h, char *message, size_t size) {
    pthread_mutex_lock(&h->lock);
    int health = h->health;
    cb_copy_text(message, size, h->message);
    pthread_mutex_unlock(&h->lock);
    return health;
}

static inline int kafka_health_degraded(kafka_health *h) {
    pthread_mutex_lock(&h->lock);
    int health = h->health;
    pthread_mutex_unlock(&h->lock);
    return health != CB_HEALTH_OK;
}

/* librdkafka's error callback (opaque: the kafka_health): the broker is gone, with its reason. */
static inline void kafka_on_error(rd_kafka_t *rk, int err, const char *reason, void *opaque) {
    (void)rk;
    kafka_health *h = opaque;
    char text[1024];
    snprintf(text, sizeof text, "broker %.200s: %.60s (%.600s)", h->brokers, rd_kafka_err2name((rd_kafka_resp_err_t)err), reason);
    kafka_health_set(h, CB_HEALTH_DEGRADED, text);
}

/* A config value into out (1 to size - 1 bytes), or `fallback`; -1 with a reason in `error`. */
static inline int kafka_config_text(const cb_host_api *api, cb_host *host, const char *key, const char *fallback, char *out,
                                    size_t size, char *error, size_t error_size) {
    const char *v = api->config_get(host, key);
    if (v == NULL) v = fallback;
    if (v == NULL || v[0] == 0 || strlen(v) >= size) {
        snprintf(error, error_size, "config: %s is required, 1 to %zu bytes", key, size - 1);
        return -1;
    }
    snprintf(out, size, "%s", v);
    return 0;
}

#endif
