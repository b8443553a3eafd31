/* plugins/kafka (egress): the engine's output to Kafka, exactly once across crashes. See
 * plugins/kafka/README.md.
 *
 * Per shard it subscribes to the drop copies (every execution report) and the market data
 * (subscribe_output) and publishes, with the partition FNV-1a(key) % count:
 *   fills         T,<symbol>,<maker order id>,<taker order id>,<price>,<qty>  keyed by symbol
 *                 (a maker and a taker drop copy)
 *   exec-reports  EXEC,<type>,<symbol>,<account>,<session>,<order id>,<B|S>,<price>,<qty>,<open>,<code>
 *                 keyed by account (decimal)
 *   depth         L2,<symbol>,<B|S>,<price>,<qty>,<orders>  keyed by symbol
 * with the headers crossbook.instance, crossbook.shard, crossbook.sequence (the engine sequence of
 * the command), crossbook.index (the message's place among that command's messages of that
 * topic) and crossbook.engine_time (ns since the epoch, taken by the shard at sequencing). One idempotent producer, the only writer of these topics.
 *
 * Exactly once out: at start it reads what each output partition holds and keeps, per topic,
 * partition and shard, the last (sequence, index) there. It asks each shard for its output above
 * the lowest of those (subscribe_output: regenerated from the journal, then live) and skips every
 * message at or below its partition's last: after a kill -9 of the engine a consumer of the topics
 * sees no duplicate and no gap. Sync durability: only durable output is published. */
#define _GNU_SOURCE
#include "crossbook_plugin.h"
#include "kafka_common.h"

#include <librdkafka/rdkafka.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MAX_SHARDS 256
#define MAX_PARTITIONS 1024
#define MAX_SYMBOLS 65536
enum { T_FILLS, T_EXECS, T_DEPTH, T_COUNT };

typedef struct mark {
    uint64_t sequence; /* 0: none */
    uint32_t index;
} mark;

typedef struct topic_state {
    char name[256]; /* "-": not published */
    int off;
    int partitions;
    mark *last; /* [partition * shards + shard] */
} topic_state;

typedef struct shard_state {
    cb_subscription *executions, *market;
    cb_execution maker; /* a maker drop copy waiting for its taker */
    int has_maker;
    uint64_t sequence[T_COUNT]; /* the command the index counts in */
    uint32_t index[T_COUNT];
    uint64_t delivered; /* the last sequence read from the subscriptions */
} shard_state;

typedef struct egress {
    kafka_health h; /* first: librdkafka's opaque is the plugin, read as its health */
    const cb_host_api *api;
    cb_host *host;
    char brokers[512];
    char instance[64];
    uint32_t shards;
    topic_state topics[T_COUNT];
    char **symbol_names; /* by id; NULL: none */
    uint32_t *symbol_shard;
    uint8_t *placed;     /* by id: symbol_shard holds its shard (at start, or when first seen listed) */
    uint32_t max_symbol;
    shard_state *state;
    rd_kafka_t *producer;
    pthread_t thread;
    int thread_started;
    int stopping;
    uint64_t *published, *skipped, *resubscribed;
} egress;

static uint32_t fnv1a(const char *s) {
    uint32_t h = 2166136261u;
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 16777619u;
    return h;
}

static void set_health(egress *p, int health, const char *message) { kafka_health_set(&p->h, health, message); }

static void on_delivery(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque) {
    (void)rk;
    egress *p = opaque;
    if (m->err) {
        char text[1024];
        snprintf(text, sizeof text, "delivery to %s failed: %s", rd_kafka_topic_name(m->rkt), rd_kafka_err2str(m->err));
        set_health(p, CB_HEALTH_DEGRADED, text);
    } else {
        __atomic_fetch_add(p->published, 1, __ATOMIC_RELAXED);
        if (kafka_health_degraded(&p->h)) set_health(p, CB_HEALTH_OK, "");
    }
}

static mark *last_of(egress *p, int topic, int partition, uint32_t shard) {
    return &p->topics[topic].last[(size_t)partition * p->shards + shard];
}

static int mark_le(uint64_t sequence, uint32_t index, const mark *m) {
    return sequence < m->sequence || (sequence == m->sequence && index <= m->index);
}

/* One message: skipped when its partition holds it already, else produced. */
static void emit(egress *p, uint32_t shard, int topic, const char *key, uint64_t sequence, uint64_t engine_time,
                 const char *value) {
    shard_state *st = &p->state[shard];
    if (st->sequence[topic] != sequence) {
        st->sequence[topic] = sequence;
        st->index[topic] = 0;
    }
    uint32_t index = st->index[topic]++;
    topic_state *t = &p->topics[topic];
    if (t->off) return;
    int partition = (int)(fnv1a(key) % (uint32_t)t->partitions);
    mark *last = last_of(p, topic, partition, shard);
    if (last->sequence != 0 && mark_le(sequence, index, last)) {
        __atomic_fetch_add(p->skipped, 1, __ATOMIC_RELAXED);
        return;
    }
    last->sequence = sequence;
    last->index = index;
    char shard_text[16], sequence_text[24], index_text[16], time_text[24];
    snprintf(time_text, sizeof time_text, "%llu", (unsigned long long)engine_time);
    snprintf(shard_text, sizeof shard_text, "%u", shard);
    snprintf(sequence_text, sizeof sequence_text, "%llu", (unsigned long long)sequence);
    snprintf(index_text, sizeof index_text, "%u", index);
    for (;;) {
        rd_kafka_resp_err_t err = rd_kafka_producev(
            p->producer, RD_KAFKA_V_TOPIC(t->name), RD_KAFKA_V_PARTITION(partition), RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
            RD_KAFKA_V_KEY(key, strlen(key)), RD_KAFKA_V_VALUE((void *)value, strlen(value)),
            RD_KAFKA_V_HEADER("crossbook.instance", p->instance, -1), RD_KAFKA_V_HEADER("crossbook.shard", shard_text, -1),
            RD_KAFKA_V_HEADER("crossbook.sequence", sequence_text, -1), RD_KAFKA_V_HEADER("crossbook.index", index_text, -1),
            RD_KAFKA_V_HEADER("crossbook.engine_time", time_text, -1),
            RD_KAFKA_V_END);
        if (err == RD_KAFKA_RESP_ERR_NO_ERROR) return;
        if (err == RD_KAFKA_RESP_ERR__QUEUE_FULL && !__atomic_load_n(&p->stopping, __ATOMIC_ACQUIRE)) {
            rd_kafka_poll(p->producer, 10);
            continue;
        }
        char text[1024];
        snprintf(text, sizeof text, "produce to %s: %s", t->name, rd_kafka_err2str(err));
        set_health(p, CB_HEALTH_FAILED, text);
        return;
    }
}

/* A symbol's name by id: the table made at start, or one listed since (asked of the host once,
   then kept; two threads asking at once keep one copy). */
static const char *symbol_name(egress *p, uint32_t id) {
    if (id == 0 || id >= MAX_SYMBOLS) return NULL;
    char *known = __atomic_load_n(&p->symbol_names[id], __ATOMIC_ACQUIRE);
    if (known != NULL) return known;
    cb_symbol symbol = {.size = sizeof symbol};
    if (p->api->symbol_by_id(p->host, id, &symbol) != CB_OK || symbol.name == NULL) return NULL;
    char *copy = strdup(symbol.name);
    if (copy == NULL) return NULL;
    char *expected = NULL;
    if (!__atomic_compare_exchange_n(&p->symbol_names[id], &expected, copy, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
        free(copy);
        return expected;
    }
    return copy;
}

static void on_execution(egress *p, uint32_t shard, const cb_execution *e) {
    static const char *types[] = {"?", "accepted", "rejected", "trade", "cancelled", "replaced"};
    const char *symbol = symbol_name(p, e->symbol_id);
    char unknown[24];
    if (symbol == NULL) {
        snprintf(unknown, sizeof unknown, "#%u", e->symbol_id);
        symbol = unknown;
    }
    char value[256], account[16];
    snprintf(account, sizeof account, "%u", e->account);
    snprintf(value, sizeof value, "EXEC,%s,%s,%u,%u,%llu,%c,%lld,%lld,%lld,%u", e->type <= 5 ? types[e->type] : "?", symbol,
             e->account, e->session, (unsigned long long)e->order_id, e->side == CB_SIDE_BUY ? 'B' : 'S', (long long)e->price,
             (long long)e->quantity, (long long)e->open, e->code);
    emit(p, shard, T_EXECS, account, e->engine_sequence, e->engine_time, value);
    shard_state *st = &p->state[shard];
    if (e->type == CB_REPORT_TRADE) {
        if (e->code == 1) { /* the maker's: its taker's comes next */
            st->maker = *e;
            st->has_maker = 1;
        } else if (st->has_maker && st->maker.engine_sequence == e->engine_sequence) {
            snprintf(value, sizeof value, "T,%s,%llu,%llu,%lld,%lld", symbol, (unsigned long long)st->maker.order_id,
                     (unsigned long long)e->order_id, (long long)e->price, (long long)e->quantity);
            emit(p, shard, T_FILLS, symbol, e->engine_sequence, e->engine_time, value);
            st->has_maker = 0;
        }
    }
}

static void on_market(egress *p, uint32_t shard, const cb_market_event *m) {
    if (m->type != CB_EVENT_LEVEL) return; /* trades go out as fills, with both order ids */
    const char *symbol = symbol_name(p, m->symbol_id);
    if (symbol == NULL) return;
    char value[160];
    snprintf(value, sizeof value, "L2,%s,%c,%lld,%lld,%lld", symbol, m->side == CB_SIDE_BUY ? 'B' : 'S', (long long)m->price,
             (long long)m->quantity, (long long)m->orders);
    emit(p, shard, T_DEPTH, symbol, m->engine_sequence, m->engine_time, value);
}

/* The symbols listed since the start (crossbook symbol add) join the table: their names and the
   shard they are on when first seen (egress thread, or the start before it runs). */
static void place_listed(egress *p) {
    if (!CB_HOST_HAS(p->api, symbol_at)) return;
    uint32_t n = p->api->symbol_count(p->host);
    for (uint32_t i = 0; i < n; i++) {
        cb_symbol s = {.size = sizeof s};
        if (p->api->symbol_at(p->host, i, &s) != CB_OK || s.id == 0 || s.id >= MAX_SYMBOLS || p->placed[s.id]) continue;
        if (symbol_name(p, s.id) == NULL) continue;
        p->symbol_shard[s.id] = s.shard;
        p->placed[s.id] = 1;
        if (s.id > p->max_symbol) p->max_symbol = s.id;
    }
}

/* The lowest last sequence over the partitions a shard's output goes to (0: one has none): the
   partitions of its symbols in the topics keyed by symbol, every partition of exec-reports (keyed
   by account: any account may trade any symbol). */
static uint64_t resume_after(egress *p, uint32_t shard) {
    place_listed(p);
    uint64_t after = UINT64_MAX;
    if (!p->topics[T_EXECS].off)
        for (int q = 0; q < p->topics[T_EXECS].partitions; q++) {
            mark *last = last_of(p, T_EXECS, q, shard);
            uint64_t complete = last->sequence == 0 ? 0 : last->sequence - 1;
            if (complete < after) after = complete;
        }
    for (uint32_t id = 0; id <= p->max_symbol; id++) {
        if (!p->placed[id] || p->symbol_shard[id] != shard) continue;
        for (int t = 0; t < T_COUNT; t++) {
            if (p->topics[t].off || t == T_EXECS) continue;
            int partition = (int)(fnv1a(p->symbol_names[id]) % (uint32_t)p->topics[t].partitions);
            mark *last = last_of(p, t, partition, shard);
            /* A command's messages of one topic may be cut by a crash: its sequence again. */
            uint64_t complete = last->sequence == 0 ? 0 : last->sequence - 1;
            if (complete < after) after = complete;
        }
    }
    return after == UINT64_MAX ? 0 : after;
}

static int subscribe_shard(egress *p, uint32_t shard, char *error, size_t error_size) {
    shard_state *st = &p->state[shard];
    if (st->executions) p->api->subscription_close(st->executions);
    if (st->market) p->api->subscription_close(st->market);
    st->executions = st->market = NULL;
    st->has_maker = 0;
    memset(st->sequence, 0, sizeof st->sequence);
    uint64_t after = resume_after(p, shard);
    int rc = p->api->subscribe_output(p->host, shard, after, &st->executions, &st->market);
    if (rc != CB_OK) {
        snprintf(error, error_size, "shard %u: cannot subscribe to its output above %llu (status %d)", shard,
                 (unsigned long long)after, rc);
        return rc;
    }
    char line[200];
    snprintf(line, sizeof line, "shard %u: publishing from sequence %llu on", shard, (unsigned long long)after + 1);
    p->api->log(p->host, CB_LOG_INFO, line);
    return CB_OK;
}

static void *run(void *arg) {
    egress *p = arg;
    cb_execution executions[256];
    cb_market_event market[256];
    while (!__atomic_load_n(&p->stopping, __ATOMIC_ACQUIRE)) {
        int any = 0;
        for (uint32_t s = 0; s < p->shards; s++) {
            shard_state *st = &p->state[s];
            /* Drop copies first, then market data, each in sequence order within its topic. */
            int n = p->api->subscription_poll(st->executions, (cb_market_event *)executions, 256);
            int m = n >= 0 ? p->api->subscription_poll(st->market, market, 256) : 0;
            if (n < 0 || m < 0) {
                char error[256];
                __atomic_fetch_add(p->resubscribed, 1, __ATOMIC_RELAXED);
                if (subscribe_shard(p, s, error, sizeof error) != CB_OK) {
                    set_health(p, CB_HEALTH_FAILED, error);
                    __atomic_store_n(&p->stopping, 1, __ATOMIC_RELEASE);
                }
                continue;
            }
            for (int k = 0; k < n; k++) on_execution(p, s, &executions[k]);
            for (int k = 0; k < m; k++) on_market(p, s, &market[k]);
            any += n + m;
        }
        rd_kafka_poll(p->producer, 0);
        if (!any) {
            struct timespec pause = {0, 200000};
            nanosleep(&pause, NULL);
        }
    }
    return NULL;
}

static long long now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* What the output partitions hold: per partition and shard the last (sequence, index). */
static int read_positions(egress *p, char *error, size_t error_size) {
    char e[256];
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    rd_kafka_conf_set(conf, "bootstrap.servers", p->brokers, e, sizeof e);
    rd_kafka_conf_set(conf, "group.id", "crossbook-egress-resume", e, sizeof e);
    rd_kafka_conf_set(conf, "enable.auto.commit", "false", e, sizeof e);
    rd_kafka_conf_set(conf, "enable.partition.eof", "true", e, sizeof e);
    rd_kafka_t *consumer = rd_kafka_new(RD_KAFKA_CONSUMER, conf, e, sizeof e);
    if (consumer == NULL) {
        snprintf(error, error_size, "librdkafka: %s", e);
        return CB_ERR_FAILED;
    }
    int rc = CB_OK;
    for (int t = 0; t < T_COUNT && rc == CB_OK; t++) {
        topic_state *topic = &p->topics[t];
        if (topic->off) continue;
        const struct rd_kafka_metadata *metadata = NULL;
        rd_kafka_topic_t *handle = rd_kafka_topic_new(consumer, topic->name, NULL);
        rd_kafka_resp_err_t err = rd_kafka_metadata(consumer, 0, handle, &metadata, 10000);
        rd_kafka_topic_destroy(handle);
        if (err || metadata->topic_cnt != 1 || metadata->topics[0].err || metadata->topics[0].partition_cnt <= 0) {
            snprintf(error, error_size, "topic %s: %s", topic->name,
                     err ? rd_kafka_err2str(err) : metadata->topics[0].err ? rd_kafka_err2str(metadata->topics[0].err) : "no partitions");
            if (metadata) rd_kafka_metadata_destroy(metadata);
            rc = CB_ERR_IO;
            break;
        }
        topic->partitions = metadata->topics[0].partition_cnt;
        rd_kafka_metadata_destroy(metadata);
        if (topic->partitions > MAX_PARTITIONS) topic->partitions = MAX_PARTITIONS;
        topic->last = calloc((size_t)topic->partitions * p->shards, sizeof(mark));
        rd_kafka_topic_partition_list_t *list = rd_kafka_topic_partition_list_new(topic->partitions);
        int open = 0;
        for (int q = 0; q < topic->partitions; q++) {
            int64_t low = 0, high = 0;
            err = rd_kafka_query_watermark_offsets(consumer, topic->name, q, &low, &high, 10000);
            if (err) {
                snprintf(error, error_size, "topic %s[%d]: %s", topic->name, q, rd_kafka_err2str(err));
                rc = CB_ERR_IO;
                break;
            }
            if (high > low) {
                rd_kafka_topic_partition_list_add(list, topic->name, q)->offset = low;
                open++;
            }
        }
        if (rc == CB_OK && open > 0) {
            rd_kafka_assign(consumer, list);
            long long deadline = now_ms() + 60000;
            while (open > 0 && now_ms() < deadline) {
                rd_kafka_message_t *m = rd_kafka_consumer_poll(consumer, 200);
                if (m == NULL) continue;
                if (m->err == RD_KAFKA_RESP_ERR__PARTITION_EOF) open--;
                else if (m->err == RD_KAFKA_RESP_ERR_NO_ERROR) {
                    rd_kafka_headers_t *headers = NULL;
                    const void *v;
                    size_t size;
                    uint32_t shard = UINT32_MAX, index = 0;
                    uint64_t sequence = 0;
                    char text[32];
                    if (rd_kafka_message_headers(m, &headers) == RD_KAFKA_RESP_ERR_NO_ERROR) {
                        if (!rd_kafka_header_get_last(headers, "crossbook.shard", &v, &size) && size < sizeof text) {
                            memcpy(text, v, size); text[size] = 0; shard = (uint32_t)strtoul(text, NULL, 10);
                        }
                        if (!rd_kafka_header_get_last(headers, "crossbook.sequence", &v, &size) && size < sizeof text) {
                            memcpy(text, v, size); text[size] = 0; sequence = strtoull(text, NULL, 10);
                        }
                        if (!rd_kafka_header_get_last(headers, "crossbook.index", &v, &size) && size < sizeof text) {
                            memcpy(text, v, size); text[size] = 0; index = (uint32_t)strtoul(text, NULL, 10);
                        }
                    }
                    if (shard < p->shards && m->partition < topic->partitions) {
                        mark *last = last_of(p, t, m->partition, shard);
                        if (!mark_le(sequence, index, last)) { last->sequence = sequence; last->index = index; }
                    }
                }
                rd_kafka_message_destroy(m);
            }
            if (open > 0) {
                snprintf(error, error_size, "topic %s: not read to its end in 60 s", topic->name);
                rc = CB_ERR_IO;
            }
            rd_kafka_assign(consumer, NULL);
        }
        rd_kafka_topic_partition_list_destroy(list);
    }
    rd_kafka_consumer_close(consumer);
    rd_kafka_destroy(consumer);
    return rc;
}

static void release(egress *p) {
    if (p->producer) {
        rd_kafka_flush(p->producer, 10000);
        rd_kafka_destroy(p->producer);
    }
    for (int t = 0; t < T_COUNT; t++) free(p->topics[t].last);
    if (p->symbol_names) {
        for (uint32_t i = 0; i < MAX_SYMBOLS; i++) free(p->symbol_names[i]);
        free(p->symbol_names);
    }
    free(p->symbol_shard);
    free(p->placed);
    free(p->state);
    kafka_health_destroy(&p->h);
    free(p);
}

static int text(egress *p, const char *key, const char *fallback, char *out, size_t size, char *error, size_t error_size) {
    return kafka_config_text(p->api, p->host, key, fallback, out, size, error, error_size);
}

static int start(const cb_host_api *api, cb_host *host, void **instance, char *error, size_t error_size) {
    if (!CB_HOST_HAS(api, subscribe_output)) {
        cb_copy_text(error, error_size, "this engine has no drop copies (subscribe_output): too old");
        return CB_ERR_UNSUPPORTED;
    }
    egress *p = calloc(1, sizeof *p);
    if (p == NULL) return CB_ERR_FAILED;
    p->api = api;
    p->host = host;
    kafka_health_init(&p->h, api, host, p->brokers);
    if (text(p, "brokers", NULL, p->brokers, sizeof p->brokers, error, error_size) ||
        text(p, "fills_topic", "fills", p->topics[T_FILLS].name, sizeof p->topics[T_FILLS].name, error, error_size) ||
        text(p, "exec_reports_topic", "exec-reports", p->topics[T_EXECS].name, sizeof p->topics[T_EXECS].name, error, error_size) ||
        text(p, "depth_topic", "depth", p->topics[T_DEPTH].name, sizeof p->topics[T_DEPTH].name, error, error_size) ||
        text(p, "instance", api->config_get(host, "engine.instance"), p->instance, sizeof p->instance, error, error_size)) {
        release(p);
        return CB_ERR_INVALID;
    }
    p->shards = api->shard_count(host);
    if (p->shards == 0 || p->shards > MAX_SHARDS) {
        snprintf(error, error_size, "the engine has %u shards; this plugin handles 1 to %d", p->shards, MAX_SHARDS);
        release(p);
        return CB_ERR_UNSUPPORTED;
    }
    for (int t = 0; t < T_COUNT; t++) p->topics[t].off = strcmp(p->topics[t].name, "-") == 0;
    /* Every symbol, by id. */
    p->symbol_names = calloc(MAX_SYMBOLS, sizeof(char *));
    p->symbol_shard = calloc(MAX_SYMBOLS, sizeof(uint32_t));
    p->placed = calloc(MAX_SYMBOLS, 1);
    p->state = calloc(p->shards, sizeof(shard_state));
    for (uint32_t id = 1; id < MAX_SYMBOLS; id++) {
        cb_symbol symbol = {.size = sizeof symbol};
        if (api->symbol_by_id(host, id, &symbol) != CB_OK) continue;
        p->symbol_names[id] = strdup(symbol.name);
        p->symbol_shard[id] = symbol.shard;
        p->placed[id] = 1;
        p->max_symbol = id;
    }
    int rc = read_positions(p, error, error_size);
    if (rc != CB_OK) {
        release(p);
        return rc;
    }
    char e[256];
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    const char *settings[][2] = {{"bootstrap.servers", p->brokers}, {"enable.idempotence", "true"}, {"linger.ms", "1"},
                                 {"message.timeout.ms", "0"}, {"client.id", "crossbook-kafka-egress"},
                                 {"reconnect.backoff.max.ms", "1000"}};
    for (size_t i = 0; i < sizeof settings / sizeof settings[0]; i++) {
        if (rd_kafka_conf_set(conf, settings[i][0], settings[i][1], e, sizeof e) != RD_KAFKA_CONF_OK) {
            snprintf(error, error_size, "librdkafka %s: %s", settings[i][0], e);
            rd_kafka_conf_destroy(conf);
            release(p);
            return CB_ERR_INVALID;
        }
    }
    rd_kafka_conf_set_opaque(conf, p);
    rd_kafka_conf_set_error_cb(conf, kafka_on_error);
    rd_kafka_conf_set_dr_msg_cb(conf, on_delivery);
    p->producer = rd_kafka_new(RD_KAFKA_PRODUCER, conf, e, sizeof e);
    if (p->producer == NULL) {
        snprintf(error, error_size, "librdkafka: %s", e);
        release(p);
        return CB_ERR_FAILED;
    }
    api->counter_register(host, "kafka_egress_published", "messages the broker acknowledged", CB_METRIC_COUNTER, &p->published);
    api->counter_register(host, "kafka_egress_skipped", "messages skipped: their partition held them already", CB_METRIC_COUNTER,
                          &p->skipped);
    api->counter_register(host, "kafka_egress_resubscribed", "subscriptions reopened after a detach", CB_METRIC_COUNTER,
                          &p->resubscribed);
    static uint64_t dummy[3];
    if (!p->published) p->published = &dummy[0];
    if (!p->skipped) p->skipped = &dummy[1];
    if (!p->resubscribed) p->resubscribed = &dummy[2];
    for (uint32_t s = 0; s < p->shards; s++) {
        rc = subscribe_shard(p, s, error, error_size);
        if (rc != CB_OK) {
            release(p);
            return rc;
        }
    }
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
    egress *p = instance;
    __atomic_store_n(&p->stopping, 1, __ATOMIC_RELEASE);
    if (p->thread_started) pthread_join(p->thread, NULL);
    /* What the shards publish while they drain after this is not sent now: the next start
       regenerates it from the journal. */
    release(p);
}

static int health(void *instance, char *message, size_t message_size) {
    return kafka_health_get(&((egress *)instance)->h, message, message_size);
}

static const cb_plugin descriptor = {
    .size = sizeof(cb_plugin),
    .abi_version = CB_PLUGIN_ABI_VERSION,
    .name = "kafka-egress",
    .version = "1.0.0",
    .kinds = CB_KIND_EGRESS,
    .start = start,
    .stop = stop,
    .health = health,
};

CB_PLUGIN_EXPORT const cb_plugin *crossbook_plugin_entry(void) { return &descriptor; }
