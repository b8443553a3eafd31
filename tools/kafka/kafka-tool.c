/* crossbook-kafka: the small Kafka client the tests, the demo and benchmark K1 drive the broker
 * with (librdkafka; no engine code). One command a run:
 *
 *   crossbook-kafka create  BROKERS TOPIC PARTITIONS
 *   crossbook-kafka produce BROKERS TOPIC          lines on stdin: PARTITION<TAB>KEY<TAB>VALUE
 *                                                  VALUE "hex:..." is bytes; "-" as KEY: none
 *   crossbook-kafka consume BROKERS TOPIC PARTITIONS [IDLE_MS] [COUNT]
 *        every partition from its beginning; stops after COUNT messages or IDLE_MS without one
 *        (default 3000); prints PARTITION<TAB>OFFSET<TAB>KEY<TAB>HEADERS<TAB>VALUE, VALUE as
 *        text when printable, "hex:..." otherwise, HEADERS as name=value;name=value or "-"
 *   crossbook-kafka offsets BROKERS TOPIC PARTITIONS   the low and high watermark of each partition
 *   crossbook-kafka orders  BROKERS TOPIC PARTITIONS   order lines in the replay text format on
 *        stdin (N,<symbol>,... C,... R,...; # comments) to JSON order messages (plugins/kafka/
 *        README.md), keyed by symbol, partition FNV-1a(symbol) % PARTITIONS; a line that does not
 *        convert is sent as it is (the ingress dead-letters it)
 *
 *   crossbook-kafka floor   BROKERS TOPIC RATE COUNT   benchmark K1's floor: COUNT messages at
 *        RATE/s (0: flat out) produced and consumed back, no engine; prints the rate and the
 *        produce→consume latency percentiles
 *   crossbook-kafka k1      BROKERS ORDERS FILLS RATE COUNT [FIRST_ID]   benchmark K1: COUNT JSON orders
 *        (pairs: a resting buy, then a sell that trades with it) into ORDERS at RATE/s, the fills
 *        read back from FILLS; prints orders/s end to end and the sell's produce→fill-consumed
 *        latency percentiles; order ids from FIRST_ID on (default 0: give each run its own)
 *
 * Exit status 0, or 1 with one line on stderr. Production uses: none (a test, demo and benchmark tool).
 */
#define _POSIX_C_SOURCE 200809L
#include <ctype.h>
#include <pthread.h>
#include <errno.h>
#include <librdkafka/rdkafka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static void fail(const char *what) {
    fprintf(stderr, "crossbook-kafka: %s\n", what);
    exit(1);
}

static rd_kafka_t *client(rd_kafka_type_t type, const char *brokers, int idempotent) {
    char error[512];
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    if (rd_kafka_conf_set(conf, "bootstrap.servers", brokers, error, sizeof error) != RD_KAFKA_CONF_OK) fail(error);
    if (type == RD_KAFKA_CONSUMER) {
        rd_kafka_conf_set(conf, "group.id", "crossbook-kafka-tool", error, sizeof error);
        rd_kafka_conf_set(conf, "enable.auto.commit", "false", error, sizeof error);
        rd_kafka_conf_set(conf, "enable.partition.eof", "false", error, sizeof error);
    } else {
        rd_kafka_conf_set(conf, "linger.ms", "1", error, sizeof error);
        if (idempotent) rd_kafka_conf_set(conf, "enable.idempotence", "true", error, sizeof error);
    }
    rd_kafka_t *rk = rd_kafka_new(type, conf, error, sizeof error);
    if (rk == NULL) fail(error);
    return rk;
}

static int create(const char *brokers, const char *topic, int partitions) {
    rd_kafka_t *rk = client(RD_KAFKA_PRODUCER, brokers, 0);
    char error[512];
    rd_kafka_NewTopic_t *t = rd_kafka_NewTopic_new(topic, partitions, 1, error, sizeof error);
    if (t == NULL) fail(error);
    rd_kafka_queue_t *q = rd_kafka_queue_new(rk);
    rd_kafka_CreateTopics(rk, &t, 1, NULL, q);
    rd_kafka_event_t *ev = rd_kafka_queue_poll(q, 15000);
    int rc = 0;
    if (ev == NULL) fail("create: no answer from the broker in 15 s");
    if (rd_kafka_event_error(ev)) {
        fprintf(stderr, "crossbook-kafka: create: %s\n", rd_kafka_event_error_string(ev));
        rc = 1;
    } else {
        const rd_kafka_CreateTopics_result_t *r = rd_kafka_event_CreateTopics_result(ev);
        size_t n;
        const rd_kafka_topic_result_t **results = rd_kafka_CreateTopics_result_topics(r, &n);
        for (size_t i = 0; i < n; i++) {
            rd_kafka_resp_err_t err = rd_kafka_topic_result_error(results[i]);
            if (err != RD_KAFKA_RESP_ERR_NO_ERROR && err != RD_KAFKA_RESP_ERR_TOPIC_ALREADY_EXISTS) {
                fprintf(stderr, "crossbook-kafka: create %s: %s\n", topic, rd_kafka_err2str(err));
                rc = 1;
            }
        }
    }
    rd_kafka_event_destroy(ev);
    rd_kafka_queue_destroy(q);
    rd_kafka_NewTopic_destroy(t);
    rd_kafka_destroy(rk);
    return rc;
}

static int hexval(int c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

static int delivery_failures = 0;
static void on_delivery(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque) {
    (void)rk;
    (void)opaque;
    if (m->err) {
        delivery_failures++;
        fprintf(stderr, "crossbook-kafka: delivery failed: %s\n", rd_kafka_err2str(m->err));
    }
}

static uint32_t fnv1a(const char *s) {
    uint32_t h = 2166136261u;
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 16777619u;
    return h;
}

/* One replay-format line to a JSON order; 0 when it does not convert. */
static int line_to_json(char *line, char *symbol, size_t symbol_size, char *out, size_t size) {
    char *f[11];
    int n = 0;
    for (char *s = line; n < 11;) {
        f[n++] = s;
        char *comma = strchr(s, ',');
        if (!comma) break;
        *comma = 0;
        s = comma + 1;
    }
    if (n < 3 || strlen(f[1]) >= symbol_size) return 0;
    snprintf(symbol, symbol_size, "%s", f[1]);
    if (strcmp(f[0], "N") == 0 && (n == 9 || n == 10)) {
        const char *tif = strcmp(f[8], "GTC") == 0 ? "gtc" : strcmp(f[8], "IOC") == 0 ? "ioc" : strcmp(f[8], "FOK") == 0 ? "fok"
                        : strcmp(f[8], "POST") == 0 ? "post_only" : NULL;
        const char *side = strcmp(f[4], "B") == 0 ? "buy" : strcmp(f[4], "S") == 0 ? "sell" : NULL;
        int market = strcmp(f[5], "MKT") == 0;
        if (!tif || !side || (!market && strcmp(f[5], "LMT") != 0)) return 0;
        char stp[64] = "";
        if (n == 10) {
            char mode[32];
            snprintf(mode, sizeof mode, "%s", f[9]);
            for (char *c = mode; *c; c++) if (*c == '-') *c = '_';
            snprintf(stp, sizeof stp, ",\"self_trade\":\"%s\"", mode);
        }
        char price[48] = "";
        if (!market) snprintf(price, sizeof price, ",\"price\":%s", f[6]);
        snprintf(out, size,
                 "{\"type\":\"new\",\"symbol\":\"%s\",\"order_id\":%s,\"account\":%s,\"side\":\"%s\",\"order_type\":\"%s\"%s,"
                 "\"quantity\":%s,\"time_in_force\":\"%s\"%s}",
                 f[1], f[2], f[3], side, market ? "market" : "limit", price, f[7], tif, stp);
        return 1;
    }
    if (strcmp(f[0], "C") == 0 && n == 3) {
        snprintf(out, size, "{\"type\":\"cancel\",\"symbol\":\"%s\",\"order_id\":%s}", f[1], f[2]);
        return 1;
    }
    if (strcmp(f[0], "R") == 0 && n == 5) {
        snprintf(out, size, "{\"type\":\"replace\",\"symbol\":\"%s\",\"order_id\":%s,\"price\":%s,\"quantity\":%s}", f[1], f[2],
                 f[3], f[4]);
        return 1;
    }
    return 0;
}

static int produce(const char *brokers, const char *topic, int orders_partitions) {
    char error[512];
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    if (rd_kafka_conf_set(conf, "bootstrap.servers", brokers, error, sizeof error) != RD_KAFKA_CONF_OK) fail(error);
    rd_kafka_conf_set(conf, "linger.ms", "1", error, sizeof error);
    rd_kafka_conf_set(conf, "enable.idempotence", "true", error, sizeof error);
    rd_kafka_conf_set_dr_msg_cb(conf, on_delivery);
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, error, sizeof error);
    if (rk == NULL) fail(error);
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    unsigned char *bytes = NULL;
    long count = 0;
    while ((len = getline(&line, &cap, stdin)) > 0) {
        if (line[len - 1] == '\n') line[--len] = 0;
        if (len > 0 && line[len - 1] == '\r') line[--len] = 0;
        if (orders_partitions > 0) {
            /* An order line: convert it, route it by its symbol. */
            char *start = line;
            while (*start == ' ' || *start == '\t') start++;
            if (*start == 0 || *start == '#') continue;
            char original[4096], symbol[128] = "", json[4096];
            snprintf(original, sizeof original, "%s", start);
            const char *value = line_to_json(start, symbol, sizeof symbol, json, sizeof json) ? json : original;
            int partition = (int)(fnv1a(symbol) % (uint32_t)orders_partitions);
            rd_kafka_resp_err_t err;
            do {
                err = rd_kafka_producev(rk, RD_KAFKA_V_TOPIC(topic), RD_KAFKA_V_PARTITION(partition),
                                        RD_KAFKA_V_VALUE((void *)value, strlen(value)), RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
                                        RD_KAFKA_V_KEY(symbol, strlen(symbol)), RD_KAFKA_V_END);
                if (err == RD_KAFKA_RESP_ERR__QUEUE_FULL) rd_kafka_poll(rk, 10);
            } while (err == RD_KAFKA_RESP_ERR__QUEUE_FULL);
            if (err) {
                fprintf(stderr, "crossbook-kafka: produce: %s\n", rd_kafka_err2str(err));
                return 1;
            }
            rd_kafka_poll(rk, 0);
            count++;
            continue;
        }
        char *tab1 = strchr(line, '\t');
        char *tab2 = tab1 ? strchr(tab1 + 1, '\t') : NULL;
        if (tab2 == NULL) fail("produce: a line is PARTITION<TAB>KEY<TAB>VALUE");
        *tab1 = 0;
        *tab2 = 0;
        int partition = atoi(line);
        const char *key = tab1 + 1, *value = tab2 + 1;
        size_t vlen = strlen(value);
        const void *payload = value;
        if (strncmp(value, "hex:", 4) == 0) {
            size_t n = (vlen - 4) / 2;
            bytes = realloc(bytes, n + 1);
            for (size_t i = 0; i < n; i++) {
                int hi = hexval(value[4 + 2 * i]), lo = hexval(value[5 + 2 * i]);
                if (hi < 0 || lo < 0) fail("produce: bad hex value");
                bytes[i] = (unsigned char)(hi << 4 | lo);
            }
            payload = bytes;
            vlen = n;
        }
        rd_kafka_resp_err_t err;
        for (;;) {
            err = rd_kafka_producev(rk, RD_KAFKA_V_TOPIC(topic), RD_KAFKA_V_PARTITION(partition),
                                    RD_KAFKA_V_VALUE((void *)payload, vlen), RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
                                    strcmp(key, "-") == 0 ? RD_KAFKA_V_END : RD_KAFKA_V_KEY(key, strlen(key)),
                                    RD_KAFKA_V_END);
            if (err != RD_KAFKA_RESP_ERR__QUEUE_FULL) break;
            rd_kafka_poll(rk, 10);
        }
        if (err) {
            fprintf(stderr, "crossbook-kafka: produce: %s\n", rd_kafka_err2str(err));
            return 1;
        }
        rd_kafka_poll(rk, 0);
        count++;
    }
    free(line);
    free(bytes);
    rd_kafka_resp_err_t err = rd_kafka_flush(rk, 30000);
    rd_kafka_destroy(rk);
    if (err) fail("produce: not every message was delivered in 30 s");
    if (delivery_failures) return 1;
    fprintf(stderr, "crossbook-kafka: produced %ld\n", count);
    return 0;
}

static void print_bytes(const unsigned char *p, size_t n) {
    int printable = 1;
    for (size_t i = 0; i < n; i++)
        if (!isprint(p[i]) || p[i] == '\t') { printable = 0; break; }
    if (printable) {
        fwrite(p, 1, n, stdout);
        return;
    }
    fputs("hex:", stdout);
    for (size_t i = 0; i < n; i++) printf("%02x", p[i]);
}

static long long now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int consume(const char *brokers, const char *topic, int partitions, int idle_ms, long count) {
    rd_kafka_t *rk = client(RD_KAFKA_CONSUMER, brokers, 0);
    rd_kafka_topic_partition_list_t *list = rd_kafka_topic_partition_list_new(partitions);
    for (int p = 0; p < partitions; p++)
        rd_kafka_topic_partition_list_add(list, topic, p)->offset = RD_KAFKA_OFFSET_BEGINNING;
    if (rd_kafka_assign(rk, list)) fail("consume: assign failed");
    rd_kafka_topic_partition_list_destroy(list);
    long seen = 0;
    long long last = now_ms();
    while (count <= 0 || seen < count) {
        rd_kafka_message_t *m = rd_kafka_consumer_poll(rk, 100);
        if (m == NULL) {
            if (now_ms() - last > idle_ms) break;
            continue;
        }
        if (m->err) {
            if (m->err != RD_KAFKA_RESP_ERR__PARTITION_EOF)
                fprintf(stderr, "crossbook-kafka: consume: %s\n", rd_kafka_message_errstr(m));
            rd_kafka_message_destroy(m);
            continue;
        }
        last = now_ms();
        printf("%d\t%lld\t", m->partition, (long long)m->offset);
        if (m->key) print_bytes(m->key, m->key_len);
        else fputs("-", stdout);
        putchar('\t');
        rd_kafka_headers_t *headers = NULL;
        if (rd_kafka_message_headers(m, &headers) == RD_KAFKA_RESP_ERR_NO_ERROR && headers != NULL) {
            const char *name;
            const void *value;
            size_t size;
            for (size_t i = 0; rd_kafka_header_get_all(headers, i, &name, &value, &size) == RD_KAFKA_RESP_ERR_NO_ERROR; i++) {
                if (i) putchar(';');
                printf("%s=", name);
                if (value) print_bytes(value, size);
            }
        } else {
            putchar('-');
        }
        putchar('\t');
        print_bytes(m->payload, m->len);
        putchar('\n');
        rd_kafka_message_destroy(m);
        seen++;
    }
    fflush(stdout);
    rd_kafka_consumer_close(rk);
    rd_kafka_destroy(rk);
    return 0;
}

static int offsets(const char *brokers, const char *topic, int partitions) {
    rd_kafka_t *rk = client(RD_KAFKA_CONSUMER, brokers, 0);
    for (int p = 0; p < partitions; p++) {
        int64_t low = 0, high = 0;
        rd_kafka_resp_err_t err = rd_kafka_query_watermark_offsets(rk, topic, p, &low, &high, 10000);
        if (err) {
            fprintf(stderr, "crossbook-kafka: offsets %s[%d]: %s\n", topic, p, rd_kafka_err2str(err));
            return 1;
        }
        printf("%d\t%lld\t%lld\n", p, (long long)low, (long long)high);
    }
    rd_kafka_destroy(rk);
    return 0;
}


/* ---- Benchmark K1 ------------------------------------------------------------------------- */

static uint64_t real_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* The consumers' settings of the benchmark: the same in the floor and in the ingress plugin. */
static rd_kafka_t *latency_consumer(const char *brokers, const char *topic) {
    char error[512];
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    rd_kafka_conf_set(conf, "bootstrap.servers", brokers, error, sizeof error);
    rd_kafka_conf_set(conf, "group.id", "crossbook-k1", error, sizeof error);
    rd_kafka_conf_set(conf, "enable.auto.commit", "false", error, sizeof error);
    rd_kafka_conf_set(conf, "fetch.wait.max.ms", "10", error, sizeof error);
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, error, sizeof error);
    if (rk == NULL) fail(error);
    rd_kafka_topic_partition_list_t *list = rd_kafka_topic_partition_list_new(1);
    rd_kafka_topic_partition_list_add(list, topic, 0)->offset = RD_KAFKA_OFFSET_END;
    if (rd_kafka_assign(rk, list)) fail("assign failed");
    rd_kafka_topic_partition_list_destroy(list);
    return rk;
}

static rd_kafka_t *latency_producer(const char *brokers) {
    char error[512];
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    rd_kafka_conf_set(conf, "bootstrap.servers", brokers, error, sizeof error);
    rd_kafka_conf_set(conf, "linger.ms", "1", error, sizeof error);
    rd_kafka_conf_set(conf, "enable.idempotence", "true", error, sizeof error);
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, error, sizeof error);
    if (rk == NULL) fail(error);
    return rk;
}

typedef struct bench_run {
    const char *brokers, *topic;
    long rate, count;
    int orders; /* k1: JSON order pairs; floor: timestamps */
    uint64_t *sent;  /* k1: per order (id - first), its produce time */
    uint64_t *sent_real; /* k1: the same on the realtime clock (the engine's time is) */
    long first;      /* k1: the first order id */
    uint64_t started, finished;
} bench_run;

static void pace(const bench_run *b, long i, uint64_t start) {
    if (b->rate <= 0) return;
    uint64_t due = start + (uint64_t)((double)i * 1e9 / (double)b->rate);
    while (now_ns() < due) {}
}

static void *bench_producer(void *arg) {
    bench_run *b = arg;
    rd_kafka_t *rk = latency_producer(b->brokers);
    char value[256];
    b->started = now_ns();
    for (long i = 0; i < b->count; i++) {
        pace(b, i, b->started);
        uint64_t t = now_ns();
        if (b->orders)
            snprintf(value, sizeof value,
                     "{\"symbol\":\"BTC-USD\",\"order_id\":%ld,\"side\":\"%s\",\"price\":100,\"quantity\":1,\"account\":%ld}", b->first + i,
                     i % 2 == 0 ? "buy" : "sell", i % 2);
        else
            snprintf(value, sizeof value, "%llu", (unsigned long long)t);
        if (b->orders) {
            b->sent[i] = t;
            b->sent_real[i] = real_ns();
        }
        while (rd_kafka_producev(rk, RD_KAFKA_V_TOPIC(b->topic), RD_KAFKA_V_PARTITION(0), RD_KAFKA_V_KEY("BTC-USD", 7),
                                 RD_KAFKA_V_VALUE(value, strlen(value)), RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
                                 RD_KAFKA_V_END) == RD_KAFKA_RESP_ERR__QUEUE_FULL)
            rd_kafka_poll(rk, 1);
        rd_kafka_poll(rk, 0);
    }
    rd_kafka_flush(rk, 30000);
    rd_kafka_destroy(rk);
    return NULL;
}

static int compare_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static int latency_bench(const char *brokers, const char *in_topic, const char *out_topic, long rate, long count, int orders,
                         long first) {
    if (count <= 0 || count > 50000000) fail("COUNT must be 1 to 50,000,000");
    if (orders && count % 2) count++;
    long expected = orders ? count / 2 : count;
    uint64_t *latency = calloc((size_t)expected, sizeof(uint64_t));
    bench_run b = {brokers, in_topic, rate, count, orders, orders ? calloc((size_t)count, sizeof(uint64_t)) : NULL,
                   orders ? calloc((size_t)count, sizeof(uint64_t)) : NULL, first, 0, 0};
    /* K1's halves: produce → sequenced by the shard (the fill's crossbook.engine_time), and
       sequenced → fill consumed; both on the realtime clock, the engine's. */
    uint64_t *in = orders ? calloc((size_t)expected, sizeof(uint64_t)) : NULL;
    uint64_t *out = orders ? calloc((size_t)expected, sizeof(uint64_t)) : NULL;
    long halves = 0;
    rd_kafka_t *consumer = latency_consumer(brokers, out_topic);
    /* Wait until the consumer has its position (the end) before anything is produced. */
    for (int i = 0; i < 50; i++) {
        rd_kafka_message_t *m = rd_kafka_consumer_poll(consumer, 100);
        if (m) rd_kafka_message_destroy(m);
    }
    pthread_t producer;
    pthread_create(&producer, NULL, bench_producer, &b);
    long seen = 0;
    uint64_t last_seen = now_ns();
    while (seen < expected) {
        rd_kafka_message_t *m = rd_kafka_consumer_poll(consumer, 100);
        if (m == NULL) {
            if (now_ns() - last_seen > 20000000000ull) break; /* 20 s without a message */
            continue;
        }
        uint64_t t = now_ns();
        if (!m->err) {
            last_seen = t;
            char text[256];
            size_t n = m->len < sizeof text - 1 ? m->len : sizeof text - 1;
            memcpy(text, m->payload, n);
            text[n] = 0;
            if (orders) {
                /* T,<symbol>,<maker>,<taker>,<price>,<qty> */
                char *f = text;
                for (int k = 0; k < 3 && f; k++) f = strchr(f, ',') ? strchr(f, ',') + 1 : NULL;
                long taker = f ? atol(f) - first : -1; /* a fill of an earlier run is not this run's */
                if (taker >= 0 && taker < count && b.sent[taker]) {
                    latency[seen++] = t - b.sent[taker];
                    rd_kafka_headers_t *headers = NULL;
                    const void *v;
                    size_t size;
                    char stamp[32];
                    if (rd_kafka_message_headers(m, &headers) == RD_KAFKA_RESP_ERR_NO_ERROR &&
                        !rd_kafka_header_get_last(headers, "crossbook.engine_time", &v, &size) && size < sizeof stamp) {
                        memcpy(stamp, v, size);
                        stamp[size] = 0;
                        uint64_t engine = strtoull(stamp, NULL, 10), now = real_ns();
                        if (engine >= b.sent_real[taker] && now >= engine) {
                            in[halves] = engine - b.sent_real[taker];
                            out[halves] = now - engine;
                            halves++;
                        }
                    }
                }
            } else {
                latency[seen++] = t - strtoull(text, NULL, 10);
            }
        }
        rd_kafka_message_destroy(m);
    }
    b.finished = now_ns();
    pthread_join(producer, NULL);
    rd_kafka_consumer_close(consumer);
    rd_kafka_destroy(consumer);
    if (seen < expected) fprintf(stderr, "crossbook-kafka: %ld of %ld came back\n", seen, expected);
    qsort(latency, (size_t)seen, sizeof(uint64_t), compare_u64);
    double seconds = (double)(b.finished - b.started) / 1e9;
    printf("%s: %ld %s in %.2f s (%.0f/s), rate %ld/s; latency p50 %.1f ms, p99 %.1f ms, max %.1f ms\n",
           orders ? "k1" : "floor", orders ? count : seen, orders ? "orders" : "messages", seconds,
           (double)(orders ? count : seen) / seconds, rate, seen ? (double)latency[seen / 2] / 1e6 : 0,
           seen ? (double)latency[(size_t)(seen * 0.99)] / 1e6 : 0, seen ? (double)latency[seen - 1] / 1e6 : 0);
    if (orders && halves > 0) {
        qsort(in, (size_t)halves, sizeof(uint64_t), compare_u64);
        qsort(out, (size_t)halves, sizeof(uint64_t), compare_u64);
        printf("k1 halves (%ld fills): produce→sequenced p50 %.1f ms, p99 %.1f ms; sequenced→fill consumed p50 %.1f ms, p99 %.1f ms\n",
               halves, (double)in[halves / 2] / 1e6, (double)in[(size_t)(halves * 0.99)] / 1e6, (double)out[halves / 2] / 1e6,
               (double)out[(size_t)(halves * 0.99)] / 1e6);
    }
    free(in);
    free(out);
    free(latency);
    free(b.sent);
    free(b.sent_real);
    return seen == expected ? 0 : 1;
}

int main(int argc, char **argv) {
    if (argc >= 6 && strcmp(argv[1], "floor") == 0) return latency_bench(argv[2], argv[3], argv[3], atol(argv[4]), atol(argv[5]), 0, 0);
    if (argc >= 7 && strcmp(argv[1], "k1") == 0)
        return latency_bench(argv[2], argv[3], argv[4], atol(argv[5]), atol(argv[6]), 1, argc > 7 ? atol(argv[7]) : 0);
    if (argc >= 5 && strcmp(argv[1], "create") == 0) return create(argv[2], argv[3], atoi(argv[4]));
    if (argc >= 4 && strcmp(argv[1], "produce") == 0) return produce(argv[2], argv[3], 0);
    if (argc >= 5 && strcmp(argv[1], "orders") == 0) {
        int partitions = atoi(argv[4]);
        if (partitions <= 0) fail("orders: PARTITIONS must be at least 1");
        return produce(argv[2], argv[3], partitions);
    }
    if (argc >= 5 && strcmp(argv[1], "consume") == 0)
        return consume(argv[2], argv[3], atoi(argv[4]), argc > 5 ? atoi(argv[5]) : 3000, argc > 6 ? atol(argv[6]) : 0);
    if (argc >= 5 && strcmp(argv[1], "offsets") == 0) return offsets(argv[2], argv[3], atoi(argv[4]));
    fprintf(stderr, "usage: crossbook-kafka create|produce|consume|offsets BROKERS TOPIC ... (see the source's head)\n");
    return 2;
}
