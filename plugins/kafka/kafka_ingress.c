/* plugins/kafka (ingress): orders from a Kafka topic into the engine, exactly once across
 * crashes. See plugins/kafka/README.md for the config, the message formats and the guarantees.
 *
 * One consumer thread reads the configured partitions of the orders topic, assigned explicitly
 * (no consumer group: the engine owns the positions; librdkafka wants a group.id all the same,
 * and never commits: enable.auto.commit=false). Per partition it opens a producer bound to that
 * partition (producer_open_source): each command carries its offset, each shard journals it
 * with the command, and at start the plugin asks each shard for the last offset it journaled
 * (source_position). A partition resumes at the lowest next offset over the shards, and a
 * message for a symbol whose shard has journaled it already is skipped: after a kill -9 at
 * any moment, no message is applied twice and none is skipped.
 *
 * Engines that share the topic each take their own symbols' messages: a symbol another engine
 * takes (CB_SYMBOL_ELSEWHERE: it lives there, or moves) is skipped. When a symbol arrives from
 * another engine, the host hands out rewinds (ingress_generation, source_rewind): the partition
 * is read again from where that engine stopped, so the messages skipped meanwhile are applied
 * here, in order, once (the shards drop what they applied already).
 *
 * A message that does not parse or names an unknown symbol goes to the dead-letter topic, with
 * the reason in the header crossbook.reason, and consumption goes on. A full ring stops the
 * consumer thread until the shard makes room (librdkafka then stops fetching once its queue is
 * full): nothing dropped, nothing reordered. A broker that goes away makes the health degraded
 * with librdkafka's reason; it clears when the broker answers again.
 *
 * Only crossbook_plugin.h is shared with the engine. Links librdkafka (Debian's librdkafka-dev
 * in production; the tests load the librdkafka of the confluent-kafka wheel via
 * LD_LIBRARY_PATH: Debian's 2.0.2 cannot talk to the test broker). */
#define _GNU_SOURCE
#include "crossbook_plugin.h"
#include "kafka_common.h"
#include "order_json.h"

#include <errno.h>
#include <librdkafka/rdkafka.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MAX_PARTITIONS 256
#define MAX_SHARDS 256
#define MAX_SYMBOL_IDS 65536 /* ids above: the plugin keeps no record of their skips (rewinds read all) */
#define COVERED_MAX 256

typedef struct partition_state {
    int32_t partition;
    cb_producer *producer;
    int64_t start;                /* the first offset read after a start */
    int64_t next;                 /* the next offset to read: the last one handled + 1 */
    int64_t applied[MAX_SHARDS];  /* per shard: the last offset it journaled at start, -1 none */
    int64_t high;                 /* the highest offset handled (next - 1 below it: reading again) */
    int64_t sent[MAX_SHARDS];     /* per shard: the last offset submitted to it (or its position at start) */
    uint8_t busy[MAX_SHARDS];     /* per shard: submitted to since the last watermark round */
} partition_state;

typedef struct ingress {
    kafka_health h; /* first: librdkafka's opaque is the plugin, read as its health */
    const cb_host_api *api;
    cb_host *host;
    char brokers[512];
    char topic[201];
    char dead_letter_topic[256];
    char group_id[128];
    char fetch_wait[16];
    int binary;
    uint32_t shards;
    int partition_count;
    partition_state *partitions;
    rd_kafka_t *consumer;
    rd_kafka_t *dead_letters;
    pthread_t thread;
    int thread_started;
    int stopping; /* atomic */
    int dead_letters_pending; /* produced, not yet acknowledged by the broker (consumer thread only) */
    int follows;              /* the host hands out rewinds (ingress_generation, source_rewind) */
    uint64_t generation;      /* the host's ingress generation last seen */
    /* Per symbol id: the first offset, and its partition, at which this plugin skipped a message
       of it as another engine's since it started (-1: none; partition -2: on several). A rewind
       for a symbol need read a partition again only from there. */
    int64_t *skipped_from;
    int32_t *skipped_part;
    uint64_t *consumed, *submitted, *skipped, *dead_lettered, *accepted, *rejected, *duplicates, *full_waits;
    uint64_t *elsewhere, *rewinds, *watermarks;
    long watermark_ms;       /* how often quiet shards are told how far the partition was read (0: never) */
    long long last_watermark; /* now_ms() of the last round */
} ingress;

static long long now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void bump(uint64_t *counter, uint64_t n) {
    if (counter) __atomic_fetch_add(counter, n, __ATOMIC_RELAXED);
}

static void set_health(ingress *p, int health, const char *message) { kafka_health_set(&p->h, health, message); }

static int is_degraded(ingress *p) { return kafka_health_degraded(&p->h); }

static void on_dead_letter_delivery(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque) {
    (void)rk;
    ingress *p = opaque;
    p->dead_letters_pending--;
    if (m->err) {
        char text[1024];
        snprintf(text, sizeof text, "dead-letter topic %s: delivery failed: %s", p->dead_letter_topic, rd_kafka_err2str(m->err));
        set_health(p, CB_HEALTH_DEGRADED, text);
    }
}

static void drain_reports(ingress *p) {
    cb_report reports[256];
    for (int i = 0; i < p->partition_count; i++) {
        int n;
        while ((n = p->api->producer_poll(p->partitions[i].producer, reports, 256)) > 0) {
            for (int k = 0; k < n; k++) {
                if (reports[k].type == CB_REPORT_ACCEPTED) bump(p->accepted, 1);
                else if (reports[k].type == CB_REPORT_REJECTED) {
                    bump(p->rejected, 1);
                    if (reports[k].code == 18) bump(p->duplicates, 1); /* duplicate_ingress */
                }
            }
        }
    }
}

static void dead_letter(ingress *p, const rd_kafka_message_t *m, const char *reason) {
    char offset[24], source[240];
    snprintf(offset, sizeof offset, "%lld", (long long)m->offset);
    snprintf(source, sizeof source, "%s#%d", p->topic, (int)m->partition);
    rd_kafka_headers_t *headers = rd_kafka_headers_new(3);
    rd_kafka_header_add(headers, "crossbook.reason", -1, reason, -1);
    rd_kafka_header_add(headers, "crossbook.source", -1, source, -1);
    rd_kafka_header_add(headers, "crossbook.offset", -1, offset, -1);
    for (;;) {
        rd_kafka_resp_err_t err = rd_kafka_producev(
            p->dead_letters, RD_KAFKA_V_TOPIC(p->dead_letter_topic), RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
            RD_KAFKA_V_VALUE(m->payload, m->len), RD_KAFKA_V_KEY(m->key, m->key_len), RD_KAFKA_V_HEADERS(headers),
            RD_KAFKA_V_END);
        if (err == RD_KAFKA_RESP_ERR_NO_ERROR) { /* the headers belong to the message now */
            p->dead_letters_pending++;
            break;
        }
        if (err == RD_KAFKA_RESP_ERR__QUEUE_FULL && !__atomic_load_n(&p->stopping, __ATOMIC_ACQUIRE)) {
            rd_kafka_poll(p->dead_letters, 10);
            continue;
        }
        rd_kafka_headers_destroy(headers);
        char text[1024];
        snprintf(text, sizeof text, "dead-letter topic %s: %s", p->dead_letter_topic, rd_kafka_err2str(err));
        set_health(p, CB_HEALTH_DEGRADED, text);
        break;
    }
    bump(p->dead_lettered, 1);
    /* Delivered before anything after it is submitted: a shard's position never passes a dead
       letter the broker does not have, so a crash cannot lose one (it may send it again). */
    while (p->dead_letters_pending > 0 && !__atomic_load_n(&p->stopping, __ATOMIC_ACQUIRE)) {
        rd_kafka_poll(p->dead_letters, 10);
        drain_reports(p);
    }
}

static partition_state *partition_of(ingress *p, int32_t partition) {
    for (int i = 0; i < p->partition_count; i++)
        if (p->partitions[i].partition == partition) return &p->partitions[i];
    return NULL;
}

/* A symbol arrived from another engine (or a move away was undone): the partitions it may have
   messages in that this plugin skipped are read again from where the host says. Returns 1 when
   `current` (whose message in hand follows `offset`) is read again from at or before that
   message: it is not handled now (it comes back). Called
   after symbol_lookup said the message's symbol is this engine's, before submitting it. */
static int take_rewinds(ingress *p, partition_state *current, int64_t offset) {
    if (!p->follows) return 0;
    uint64_t generation = p->api->ingress_generation(p->host);
    if (generation == p->generation) return 0;
    p->generation = generation;
    int again = 0;
    for (int i = 0; i < p->partition_count; i++) {
        partition_state *part = &p->partitions[i];
        uint64_t from = 0;
        int64_t reached = part == current ? offset : part->next - 1; /* the last offset handled */
        uint32_t covered[COVERED_MAX], count = 0;
        if (p->api->source_rewind(p->host, p->topic, (uint32_t)part->partition, reached < 0 ? UINT64_MAX : (uint64_t)reached,
                                  &from, covered, COVERED_MAX, &count) != CB_OK)
            continue;
        if (from > (uint64_t)INT64_MAX) continue;
        /* Where to read again from: the symbols' floor, or later where this plugin knows it skipped
           nothing of them before (it read the partition from its start and recorded each symbol's
           first skip); from the floor whenever it cannot tell. */
        int64_t target = -1;
        if (count > COVERED_MAX || (int64_t)from < part->start) target = (int64_t)from;
        for (uint32_t k = 0; k < count && k < COVERED_MAX && target != (int64_t)from; k++) {
            uint32_t id = covered[k];
            if (id >= MAX_SYMBOL_IDS || p->skipped_part[id] == -2) {
                target = (int64_t)from;
            } else if (p->skipped_from[id] >= 0 && p->skipped_part[id] == part->partition) {
                int64_t at = p->skipped_from[id] > (int64_t)from ? p->skipped_from[id] : (int64_t)from;
                if (target < 0 || at < target) target = at;
            }
        }
        for (uint32_t k = 0; k < count && k < COVERED_MAX; k++)
            if (covered[k] < MAX_SYMBOL_IDS && p->skipped_part[covered[k]] == part->partition) {
                p->skipped_from[covered[k]] = -1;
                p->skipped_part[covered[k]] = -1;
            }
        if (target < 0 || target > reached) continue; /* nothing of them skipped there */
        rd_kafka_topic_partition_list_t *list = rd_kafka_topic_partition_list_new(1);
        rd_kafka_topic_partition_list_add(list, p->topic, part->partition)->offset = target;
        /* Blocks until the seek is done; the messages fetched before it are purged. */
        rd_kafka_error_t *error = rd_kafka_seek_partitions(p->consumer, list, 5000);
        rd_kafka_topic_partition_list_destroy(list);
        char line[400];
        if (error) {
            snprintf(line, sizeof line, "%s#%d: reading again from offset %lld failed (%s): consumption stops until a restart",
                     p->topic, (int)part->partition, (long long)target, rd_kafka_error_string(error));
            rd_kafka_error_destroy(error);
            set_health(p, CB_HEALTH_FAILED, line);
            __atomic_store_n(&p->stopping, 1, __ATOMIC_RELEASE);
            return 1;
        }
        snprintf(line, sizeof line, "%s#%d: a symbol arrived from another engine: reading again from offset %lld (its floor %llu, had read to %lld)",
                 p->topic, (int)part->partition, (long long)target, (unsigned long long)from, (long long)reached);
        p->api->log(p->host, CB_LOG_INFO, line);
        bump(p->rewinds, 1);
        part->next = target;
        if (part == current) again = 1;
    }
    return again;
}

/* One message: parse, route, skip if applied, submit (waiting while the ring is full). */
static void handle(ingress *p, const rd_kafka_message_t *m) {
    partition_state *part = partition_of(p, m->partition);
    if (part == NULL) return; /* not assigned: cannot happen with assign() */
    bump(p->consumed, 1);
    if (m->offset >= part->next) part->next = m->offset + 1;
    if (m->offset > part->high) part->high = m->offset;
    cb_command command;
    cb_symbol symbol = {.size = sizeof symbol};
    char why[200];
    if (p->binary) {
        if (m->len != sizeof command) {
            snprintf(why, sizeof why, "a binary record of %zu bytes, not %zu", m->len, sizeof command);
            return dead_letter(p, m, why);
        }
        memcpy(&command, m->payload, sizeof command);
        if (p->api->symbol_by_id(p->host, command.symbol_id, &symbol) != CB_OK) {
            snprintf(why, sizeof why, "unknown symbol id %u", command.symbol_id);
            return dead_letter(p, m, why);
        }
    } else {
        cb_json_order order;
        if (cb_order_from_json(m->payload, m->len, &order, why, sizeof why) != 0) return dead_letter(p, m, why);
        if (p->api->symbol_lookup(p->host, order.symbol, &symbol) != CB_OK) {
            char shown[CB_JSON_MAX_SYMBOL];
            snprintf(shown, sizeof shown, "%s", order.symbol);
            snprintf(why, sizeof why, "unknown symbol \"%s\"", shown);
            return dead_letter(p, m, why);
        }
        command = order.command;
        command.symbol_id = symbol.id;
    }
    /* Another engine's (it lives there, or is moving): that engine applies it. */
    if (symbol.size >= offsetof(cb_symbol, flags) + sizeof symbol.flags && (symbol.flags & CB_SYMBOL_ELSEWHERE)) {
        bump(p->elsewhere, 1);
        if (symbol.id < MAX_SYMBOL_IDS) {
            if (p->skipped_part[symbol.id] == -1) {
                p->skipped_part[symbol.id] = m->partition;
                p->skipped_from[symbol.id] = m->offset;
            } else if (p->skipped_part[symbol.id] != m->partition) {
                p->skipped_part[symbol.id] = -2;
            } else if (m->offset < p->skipped_from[symbol.id]) {
                p->skipped_from[symbol.id] = m->offset; /* read again after a rewind */
            }
        }
        return;
    }
    /* This engine's: a symbol that arrived has older messages to apply first. */
    if (take_rewinds(p, part, m->offset - 1)) return;
    if (symbol.shard < p->shards && m->offset <= part->applied[symbol.shard]) {
        bump(p->skipped, 1); /* journaled by its shard before the restart */
        return;
    }
    command.client_sequence = (uint64_t)m->offset;
    for (;;) {
        int rc = p->api->producer_submit(part->producer, &command);
        if (rc == CB_OK) {
            bump(p->submitted, 1);
            if (symbol.shard < p->shards) {
                part->sent[symbol.shard] = m->offset;
                part->busy[symbol.shard] = 1;
            }
            return;
        }
        if (rc == CB_ERR_UNKNOWN_SYMBOL) return dead_letter(p, m, "the engine does not route this symbol");
        if (rc != CB_ERR_FULL) {
            char text[1024];
            snprintf(text, sizeof text, "%s#%d: the engine refused the producer (status %d): consumption stops until a restart",
                     p->topic, (int)m->partition, rc);
            set_health(p, CB_HEALTH_FAILED, text);
            __atomic_store_n(&p->stopping, 1, __ATOMIC_RELEASE);
            return;
        }
        /* The ring is full: the shard is behind. Read reports (they make room), wait, retry:
           this thread does not poll Kafka meanwhile, so nothing is dropped or reordered. */
        bump(p->full_waits, 1);
        drain_reports(p);
        if (__atomic_load_n(&p->stopping, __ATOMIC_ACQUIRE)) return; /* not applied: re-read after restart */
        struct timespec pause = {0, 20000};
        nanosleep(&pause, NULL);
    }
}

/* Watermarks: a shard that took nothing of a partition during the last round, and is behind
 * where this plugin has handled it through, is told so (source_watermark): it journals that as its
 * position, and a restart reads the partition from there rather than from its last command. Not
 * while reading a partition again (a rewind), nor with dead letters unacknowledged (a restart must
 * read those again). Sent again each round while the shard stays quiet (it ignores what it has). */
static void watermarks(ingress *p) {
    if (p->watermark_ms <= 0 || !CB_HOST_HAS(p->api, source_watermark)) return;
    long long now = now_ms();
    if (now - p->last_watermark < p->watermark_ms) return;
    p->last_watermark = now;
    if (p->dead_letters_pending > 0) return;
    for (int i = 0; i < p->partition_count; i++) {
        partition_state *part = &p->partitions[i];
        int quiet = part->next - 1 >= part->high && part->high >= 0;
        for (uint32_t s = 0; s < p->shards; s++) {
            if (quiet && !part->busy[s] && part->high > part->sent[s] &&
                p->api->source_watermark(part->producer, s, (uint64_t)part->high) == CB_OK)
                bump(p->watermarks, 1);
            part->busy[s] = 0;
        }
    }
}

static void *run(void *arg) {
    ingress *p = arg;
    long long last_check = now_ms();
    while (!__atomic_load_n(&p->stopping, __ATOMIC_ACQUIRE)) {
        rd_kafka_message_t *m = rd_kafka_consumer_poll(p->consumer, 50);
        rd_kafka_poll(p->dead_letters, 0);
        if (m == NULL) {
            drain_reports(p);
            take_rewinds(p, NULL, 0); /* a quiet topic: what was skipped is read again all the same */
            watermarks(p);
            /* Degraded and idle: ask the broker; healthy again once it answers. */
            if (is_degraded(p) && now_ms() - last_check > 1000) {
                last_check = now_ms();
                int64_t low, high;
                rd_kafka_resp_err_t err = rd_kafka_query_watermark_offsets(p->consumer, p->topic,
                                                                           p->partitions[0].partition, &low, &high, 1000);
                if (err == RD_KAFKA_RESP_ERR_NO_ERROR) set_health(p, CB_HEALTH_OK, "");
                else if (err != RD_KAFKA_RESP_ERR__TIMED_OUT) {
                    char text[1024];
                    snprintf(text, sizeof text, "topic %s: %s", p->topic, rd_kafka_err2str(err));
                    set_health(p, CB_HEALTH_DEGRADED, text);
                }
            }
            continue;
        }
        if (m->err) {
            if (m->err != RD_KAFKA_RESP_ERR__PARTITION_EOF) {
                char text[1024];
                snprintf(text, sizeof text, "%s#%d: %s", p->topic, (int)m->partition, rd_kafka_message_errstr(m));
                set_health(p, CB_HEALTH_DEGRADED, text);
            }
            rd_kafka_message_destroy(m);
            continue;
        }
        if (is_degraded(p)) set_health(p, CB_HEALTH_OK, "");
        /* A rewind while this partition's message is in hand: read again first (the message
           comes back with the rest). */
        partition_state *part = partition_of(p, m->partition);
        if (part && take_rewinds(p, part, m->offset - 1)) {
            rd_kafka_message_destroy(m);
            continue;
        }
        handle(p, m);
        rd_kafka_message_destroy(m);
        if ((__atomic_load_n(p->consumed, __ATOMIC_RELAXED) & 15) == 0) drain_reports(p); /* before the report rings fill */
        if ((__atomic_load_n(p->consumed, __ATOMIC_RELAXED) & 255) == 0) watermarks(p);
    }
    drain_reports(p);
    return NULL;
}

/* "0,1,4-7" into partitions; the count, or -1. */
static int parse_partitions(const char *text, int32_t *out, int max) {
    int n = 0;
    const char *s = text;
    while (*s) {
        char *end;
        long a = strtol(s, &end, 10), b = a;
        if (end == s || a < 0 || a > INT32_MAX) return -1;
        s = end;
        if (*s == '-') {
            s++;
            b = strtol(s, &end, 10);
            if (end == s || b < a || b > INT32_MAX) return -1;
            s = end;
        }
        for (long v = a; v <= b; v++) {
            if (n == max) return -1;
            for (int k = 0; k < n; k++)
                if (out[k] == v) return -1;
            out[n++] = (int32_t)v;
        }
        if (*s == ',') s++;
        else if (*s) return -1;
    }
    return n;
}

static int config_text(ingress *p, const char *key, const char *fallback, char *out, size_t size, char *error,
                       size_t error_size) {
    return kafka_config_text(p->api, p->host, key, fallback, out, size, error, error_size);
}

static rd_kafka_t *kafka_client(ingress *p, rd_kafka_type_t type, char *error, size_t error_size) {
    char e[256];
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    struct { const char *k, *v; } settings[] = {
        {"bootstrap.servers", p->brokers},
        {"client.id", "crossbook-kafka-ingress"},
        {type == RD_KAFKA_CONSUMER ? "group.id" : "enable.idempotence", type == RD_KAFKA_CONSUMER ? p->group_id : "true"},
        {type == RD_KAFKA_CONSUMER ? "enable.auto.commit" : "linger.ms", type == RD_KAFKA_CONSUMER ? "false" : "5"},
        {type == RD_KAFKA_CONSUMER ? "enable.auto.offset.store" : "message.timeout.ms", type == RD_KAFKA_CONSUMER ? "false" : "0"},
        {type == RD_KAFKA_CONSUMER ? "auto.offset.reset" : "client.id", type == RD_KAFKA_CONSUMER ? "earliest" : "crossbook-kafka-dead-letters"},
        {"reconnect.backoff.max.ms", "1000"},
        /* A fetch the broker has nothing for waits this long at most (librdkafka's default, 500
           ms, is a floor under the latency of a quiet topic on brokers without long polling). */
        {type == RD_KAFKA_CONSUMER ? "fetch.wait.max.ms" : "linger.ms", type == RD_KAFKA_CONSUMER ? p->fetch_wait : "5"},
    };
    for (size_t i = 0; i < sizeof settings / sizeof settings[0]; i++) {
        if (rd_kafka_conf_set(conf, settings[i].k, settings[i].v, e, sizeof e) != RD_KAFKA_CONF_OK) {
            snprintf(error, error_size, "librdkafka %s: %s", settings[i].k, e);
            rd_kafka_conf_destroy(conf);
            return NULL;
        }
    }
    rd_kafka_conf_set_opaque(conf, p);
    rd_kafka_conf_set_error_cb(conf, kafka_on_error);
    if (type == RD_KAFKA_PRODUCER) rd_kafka_conf_set_dr_msg_cb(conf, on_dead_letter_delivery);
    rd_kafka_t *rk = rd_kafka_new(type, conf, e, sizeof e);
    if (rk == NULL) snprintf(error, error_size, "librdkafka: %s", e);
    return rk;
}

static void release(ingress *p) {
    if (p->consumer) {
        rd_kafka_consumer_close(p->consumer);
        rd_kafka_destroy(p->consumer);
    }
    if (p->dead_letters) {
        rd_kafka_flush(p->dead_letters, 5000);
        rd_kafka_destroy(p->dead_letters);
    }
    if (p->partitions) {
        for (int i = 0; i < p->partition_count; i++)
            if (p->partitions[i].producer) p->api->producer_close(p->partitions[i].producer);
        free(p->partitions);
    }
    kafka_health_destroy(&p->h);
    free(p);
}

static int start(const cb_host_api *api, cb_host *host, void **instance, char *error, size_t error_size) {
    if (!CB_HOST_HAS(api, symbol_by_id)) {
        cb_copy_text(error, error_size, "this engine has no exactly-once ingress (producer_open_source): too old");
        return CB_ERR_UNSUPPORTED;
    }
    ingress *p = calloc(1, sizeof *p);
    if (p == NULL) return CB_ERR_FAILED;
    p->api = api;
    p->host = host;
    p->follows = CB_HOST_HAS(api, ingress_generation) && CB_HOST_HAS(api, source_rewind);
    p->skipped_from = malloc(MAX_SYMBOL_IDS * sizeof *p->skipped_from);
    p->skipped_part = malloc(MAX_SYMBOL_IDS * sizeof *p->skipped_part);
    if (p->skipped_from == NULL || p->skipped_part == NULL) {
        free(p->skipped_from);
        free(p->skipped_part);
        free(p);
        return CB_ERR_FAILED;
    }
    for (int i = 0; i < MAX_SYMBOL_IDS; i++) {
        p->skipped_from[i] = -1;
        p->skipped_part[i] = -1;
    }
    kafka_health_init(&p->h, api, host, p->brokers);
    char partitions_text[512], format[16];
    int32_t partitions[MAX_PARTITIONS];
    if (config_text(p, "brokers", NULL, p->brokers, sizeof p->brokers, error, error_size) ||
        config_text(p, "topic", NULL, p->topic, sizeof p->topic, error, error_size) ||
        config_text(p, "partitions", "0", partitions_text, sizeof partitions_text, error, error_size) ||
        config_text(p, "format", "json", format, sizeof format, error, error_size) ||
        config_text(p, "group_id", "crossbook-ingress", p->group_id, sizeof p->group_id, error, error_size) ||
        config_text(p, "fetch_wait_max_ms", "10", p->fetch_wait, sizeof p->fetch_wait, error, error_size)) {
        release(p);
        return CB_ERR_INVALID;
    }
    char watermark_text[16];
    if (config_text(p, "watermark_ms", "1000", watermark_text, sizeof watermark_text, error, error_size)) {
        release(p);
        return CB_ERR_INVALID;
    }
    char *watermark_end = NULL;
    p->watermark_ms = strtol(watermark_text, &watermark_end, 10);
    if (watermark_end == watermark_text || *watermark_end != 0 || p->watermark_ms < 0 || p->watermark_ms > 3600000) {
        snprintf(error, error_size, "config: watermark_ms \"%s\": 0 (never) to 3600000", watermark_text);
        release(p);
        return CB_ERR_INVALID;
    }
    char fallback[256];
    snprintf(fallback, sizeof fallback, "%s.dead-letter", p->topic);
    if (config_text(p, "dead_letter_topic", fallback, p->dead_letter_topic, sizeof p->dead_letter_topic, error, error_size)) {
        release(p);
        return CB_ERR_INVALID;
    }
    if (strchr(p->topic, '#') || p->topic[0] == 0) {
        cb_copy_text(error, error_size, "config: topic must be a Kafka topic name (no '#')");
        release(p);
        return CB_ERR_INVALID;
    }
    if (strcmp(format, "json") == 0) p->binary = 0;
    else if (strcmp(format, "binary") == 0) p->binary = 1;
    else {
        snprintf(error, error_size, "config: format \"%s\": json or binary", format);
        release(p);
        return CB_ERR_INVALID;
    }
    p->partition_count = parse_partitions(partitions_text, partitions, MAX_PARTITIONS);
    if (p->partition_count <= 0) {
        snprintf(error, error_size, "config: partitions \"%s\": a list like 0,1,4-7 (at most %d, no repeats)", partitions_text,
                 MAX_PARTITIONS);
        release(p);
        return CB_ERR_INVALID;
    }
    p->shards = api->shard_count(host);
    if (p->shards == 0 || p->shards > MAX_SHARDS) {
        snprintf(error, error_size, "the engine has %u shards; this plugin handles 1 to %d", p->shards, MAX_SHARDS);
        release(p);
        return CB_ERR_UNSUPPORTED;
    }
    p->partitions = calloc((size_t)p->partition_count, sizeof *p->partitions);
    if (p->partitions == NULL) {
        release(p);
        return CB_ERR_FAILED;
    }
    rd_kafka_topic_partition_list_t *assignment = rd_kafka_topic_partition_list_new(p->partition_count);
    char line[600];
    for (int i = 0; i < p->partition_count; i++) {
        partition_state *part = &p->partitions[i];
        part->partition = partitions[i];
        int rc = api->producer_open_source(host, p->topic, (uint32_t)part->partition, &part->producer);
        if (rc != CB_OK) {
            snprintf(error, error_size, "cannot open a producer for %s#%d (status %d)", p->topic, part->partition, rc);
            rd_kafka_topic_partition_list_destroy(assignment);
            release(p);
            return rc;
        }
        /* Resume: the lowest next offset over the shards; skip what a shard journaled already. */
        part->start = INT64_MAX;
        for (uint32_t s = 0; s < p->shards; s++) {
            uint64_t last = 0;
            rc = api->source_position(host, s, p->topic, (uint32_t)part->partition, &last);
            if (rc == CB_OK) part->applied[s] = (int64_t)last;
            else if (rc == CB_ERR_NOT_FOUND) part->applied[s] = -1;
            else {
                snprintf(error, error_size, "cannot read shard %u's position of %s#%d (status %d)", s, p->topic, part->partition, rc);
                rd_kafka_topic_partition_list_destroy(assignment);
                release(p);
                return rc;
            }
            if (part->applied[s] + 1 < part->start) part->start = part->applied[s] + 1;
            part->sent[s] = part->applied[s];
        }
        part->high = part->start - 1;
        rd_kafka_topic_partition_list_add(assignment, p->topic, part->partition)->offset = part->start;
        part->next = part->start;
        int at = snprintf(line, sizeof line, "%s#%d: resuming at offset %lld; journaled up to:", p->topic, part->partition,
                          (long long)part->start);
        for (uint32_t s = 0; s < p->shards && at > 0 && at < (int)sizeof line - 32; s++)
            at += part->applied[s] < 0 ? snprintf(line + at, sizeof line - (size_t)at, " shard %u none", s)
                                       : snprintf(line + at, sizeof line - (size_t)at, " shard %u %lld", s, (long long)part->applied[s]);
        api->log(host, CB_LOG_INFO, line);
    }
    p->consumer = kafka_client(p, RD_KAFKA_CONSUMER, error, error_size);
    p->dead_letters = p->consumer ? kafka_client(p, RD_KAFKA_PRODUCER, error, error_size) : NULL;
    if (p->consumer == NULL || p->dead_letters == NULL) {
        rd_kafka_topic_partition_list_destroy(assignment);
        release(p);
        return CB_ERR_INVALID;
    }
    rd_kafka_resp_err_t err = rd_kafka_assign(p->consumer, assignment);
    rd_kafka_topic_partition_list_destroy(assignment);
    if (err) {
        snprintf(error, error_size, "librdkafka assign: %s", rd_kafka_err2str(err));
        release(p);
        return CB_ERR_FAILED;
    }
    struct { const char *name, *help; uint64_t **slot; } counters[] = {
        {"kafka_ingress_consumed", "messages read from the orders topic", &p->consumed},
        {"kafka_ingress_submitted", "commands submitted to the shards", &p->submitted},
        {"kafka_ingress_skipped", "messages skipped at start: their shard had journaled them", &p->skipped},
        {"kafka_ingress_dead_letters", "messages sent to the dead-letter topic", &p->dead_lettered},
        {"kafka_ingress_accepted", "accepted reports", &p->accepted},
        {"kafka_ingress_rejected", "rejected reports", &p->rejected},
        {"kafka_ingress_duplicates", "rejected as duplicate_ingress (0: replays are dropped by the shards now, crossbook_ingress_replays_dropped_total)", &p->duplicates},
        {"kafka_ingress_full_waits", "waits for a full ring (back-pressure)", &p->full_waits},
        {"kafka_ingress_elsewhere", "messages of symbols another engine takes (it lives there, or is moving)", &p->elsewhere},
        {"kafka_ingress_rewinds", "partitions read again from an earlier offset: a symbol arrived from another engine", &p->rewinds},
        {"kafka_ingress_watermarks", "watermarks sent to quiet shards (how far a partition was read)", &p->watermarks},
    };
    for (size_t i = 0; i < sizeof counters / sizeof counters[0]; i++)
        api->counter_register(host, counters[i].name, counters[i].help, CB_METRIC_COUNTER, counters[i].slot);
    if (pthread_create(&p->thread, NULL, run, p) != 0) {
        cb_copy_text(error, error_size, "pthread_create failed");
        release(p);
        return CB_ERR_FAILED;
    }
    p->thread_started = 1;
    *instance = p;
    return CB_OK;
}

static void stop(void *instance) {
    ingress *p = instance;
    __atomic_store_n(&p->stopping, 1, __ATOMIC_RELEASE);
    if (p->thread_started) pthread_join(p->thread, NULL);
    release(p);
}

static int health(void *instance, char *message, size_t message_size) {
    return kafka_health_get(&((ingress *)instance)->h, message, message_size);
}

static const cb_plugin descriptor = {
    .size = sizeof(cb_plugin),
    .abi_version = CB_PLUGIN_ABI_VERSION,
    .name = "kafka-ingress",
    .version = "1.0.0",
    .kinds = CB_KIND_INGRESS,
    .start = start,
    .stop = stop,
    .health = health,
};

CB_PLUGIN_EXPORT const cb_plugin *crossbook_plugin_entry(void) { return &descriptor; }
