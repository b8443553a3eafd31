/* plugins/template (C): the smallest useful ingress plugin. It reads orders in the replay text
 * format (the format of samples/orders.csv) from a file or a named pipe and submits them:
 *
 *   N,<symbol>,<order_id>,<account>,<B|S>,<LMT|MKT>,<price>,<qty>,<GTC|IOC|FOK|POST>[,<stp>]
 *   C,<symbol>,<order_id>
 *   R,<symbol>,<order_id>,<new_price>,<new_open_qty>
 *   blank lines and lines starting with # are skipped
 *
 * Config: path (required): the file or pipe. A regular file is read once; a pipe is read for as
 * long as the plugin runs (writers may come and go).
 * Counters: template_c_lines, template_c_submitted, template_c_bad_lines, template_c_accepted,
 * template_c_rejected, template_c_trades.
 *
 * Build, with the SDK installed (make install, or make install-sdk): from anywhere,
 *   cc -std=c11 -shared -fPIC -O2 $(pkg-config --cflags crossbook-plugin) template.c -o libcrossbook-template-c.so -lpthread
 * or inside the repository: -I C/CPluginABI/include instead of the pkg-config part.
 * Only crossbook_plugin.h is shared with the engine. */
#define _GNU_SOURCE
#include "crossbook_plugin.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

typedef struct template_plugin {
    const cb_host_api *api;
    cb_host *host;
    cb_producer *producer;
    char path[512];
    int fd;
    int is_pipe;
    int stopping; /* set by stop, read by the thread (atomic) */
    int finished; /* the file was read to its end (atomic) */
    pthread_t thread;
    uint64_t *lines, *submitted, *bad_lines, *accepted, *rejected, *trades;
    char last_error[160];
    pthread_mutex_t error_lock;
} template_plugin;

static void bump(uint64_t *counter) {
    if (counter) __atomic_fetch_add(counter, 1, __ATOMIC_RELAXED);
}

static void note_error(template_plugin *p, const char *text) {
    pthread_mutex_lock(&p->error_lock);
    snprintf(p->last_error, sizeof p->last_error, "%s", text);
    pthread_mutex_unlock(&p->error_lock);
}

static void drain_reports(template_plugin *p) {
    cb_report reports[64];
    int n;
    while ((n = p->api->producer_poll(p->producer, reports, 64)) > 0) {
        for (int i = 0; i < n; i++) {
            switch (reports[i].type) {
            case CB_REPORT_ACCEPTED: bump(p->accepted); break;
            case CB_REPORT_REJECTED: bump(p->rejected); break;
            case CB_REPORT_TRADE: bump(p->trades); break;
            default: break;
            }
        }
    }
}

/* Splits `line` at commas into at most `max` fields; returns how many. */
static int split(char *line, char **fields, int max) {
    int n = 0;
    char *s = line;
    while (n < max) {
        while (*s == ' ' || *s == '\t') s++;
        fields[n++] = s;
        char *comma = strchr(s, ',');
        char *end = comma ? comma : s + strlen(s);
        while (end > s && (end[-1] == ' ' || end[-1] == '\t' || end[-1] == '\r')) end--;
        if (!comma) { *end = 0; break; }
        *end = 0;
        s = comma + 1;
    }
    return n;
}

static int parse_int(const char *text, int64_t *out) {
    char *end;
    errno = 0;
    long long v = strtoll(text, &end, 10);
    if (errno || end == text || *end) return 0;
    *out = v;
    return 1;
}

/* One line to a command; 0 for a blank line or a comment, -1 for a bad line. */
static int parse_line(template_plugin *p, char *line, cb_command *c) {
    char *hash = strchr(line, '#');
    if (hash) *hash = 0;
    char *fields[12];
    int n = split(line, fields, 12);
    if (n == 1 && fields[0][0] == 0) return 0;
    memset(c, 0, sizeof *c);
    c->version = CB_RECORD_VERSION;
    cb_symbol symbol = {.size = sizeof symbol};
    if (n < 3 || p->api->symbol_lookup(p->host, fields[1], &symbol) != CB_OK) return -1;
    c->symbol_id = symbol.id;
    int64_t id, v;
    if (!parse_int(fields[2], &id) || id < 0) return -1;
    c->order_id = (uint64_t)id;
    if (strcmp(fields[0], "N") == 0 && (n == 9 || n == 10)) {
        int64_t account, price, qty;
        if (!parse_int(fields[3], &account) || account < 0 || account > UINT32_MAX) return -1;
        if (!parse_int(fields[6], &price) || !parse_int(fields[7], &qty)) return -1;
        c->type = CB_CMD_NEW;
        c->account = (uint32_t)account;
        if (strcmp(fields[4], "B") == 0) c->side = CB_SIDE_BUY;
        else if (strcmp(fields[4], "S") == 0) c->side = CB_SIDE_SELL;
        else return -1;
        if (strcmp(fields[5], "LMT") == 0) { c->order_type = CB_ORDER_LIMIT; c->price = price; }
        else if (strcmp(fields[5], "MKT") == 0) c->order_type = CB_ORDER_MARKET;
        else return -1;
        c->quantity = qty;
        if (strcmp(fields[8], "GTC") == 0) c->time_in_force = CB_TIF_GTC;
        else if (strcmp(fields[8], "IOC") == 0) c->time_in_force = CB_TIF_IOC;
        else if (strcmp(fields[8], "FOK") == 0) c->time_in_force = CB_TIF_FOK;
        else if (strcmp(fields[8], "POST") == 0) c->time_in_force = CB_TIF_POST_ONLY;
        else return -1;
        if (n == 10) {
            static const char *modes[] = {"none", "cancel-newest", "cancel-oldest", "cancel-both", "decrement"};
            int found = -1;
            for (int m = 0; m < 5; m++)
                if (strcmp(fields[9], modes[m]) == 0) found = m;
            if (found < 0) return -1;
            c->self_trade = (uint8_t)found;
        }
        return 1;
    }
    if (strcmp(fields[0], "C") == 0 && n == 3) {
        c->type = CB_CMD_CANCEL;
        return 1;
    }
    if (strcmp(fields[0], "R") == 0 && n == 5) {
        if (!parse_int(fields[3], &v)) return -1;
        c->price = v;
        if (!parse_int(fields[4], &v)) return -1;
        c->quantity = v;
        c->type = CB_CMD_REPLACE;
        return 1;
    }
    return -1;
}

static void submit_line(template_plugin *p, char *line) {
    cb_command command;
    int parsed = parse_line(p, line, &command);
    if (parsed == 0) return;
    bump(p->lines);
    if (parsed < 0) {
        bump(p->bad_lines);
        char text[160];
        snprintf(text, sizeof text, "bad line: %.100s", line);
        p->api->log(p->host, CB_LOG_WARNING, text);
        note_error(p, text);
        return;
    }
    command.client_sequence = p->lines ? __atomic_load_n(p->lines, __ATOMIC_RELAXED) : 0;
    for (;;) {
        int rc = p->api->producer_submit(p->producer, &command);
        if (rc == CB_OK) { bump(p->submitted); return; }
        if (rc != CB_ERR_FULL) {
            char text[96];
            snprintf(text, sizeof text, "submit refused (status %d)", rc);
            note_error(p, text);
            return;
        }
        /* The ring is full: the engine is behind. Read reports (they make room) and retry. */
        drain_reports(p);
        if (__atomic_load_n(&p->stopping, __ATOMIC_ACQUIRE)) return;
        struct timespec pause = {0, 50000};
        nanosleep(&pause, NULL);
    }
}

static void *run(void *arg) {
    template_plugin *p = arg;
    char buffer[65536];
    size_t used = 0;
    while (!__atomic_load_n(&p->stopping, __ATOMIC_ACQUIRE)) {
        drain_reports(p);
        if (__atomic_load_n(&p->finished, __ATOMIC_ACQUIRE)) {
            struct timespec pause = {0, 10000000};
            nanosleep(&pause, NULL);
            continue;
        }
        struct pollfd pfd = {.fd = p->fd, .events = POLLIN};
        if (poll(&pfd, 1, 100) <= 0) continue;
        ssize_t n = read(p->fd, buffer + used, sizeof buffer - 1 - used);
        if (n < 0) {
            if (errno == EAGAIN || errno == EINTR) continue;
            note_error(p, strerror(errno));
            break;
        }
        if (n == 0) {
            if (used > 0) { /* a last line without a newline */
                buffer[used] = 0;
                submit_line(p, buffer);
                used = 0;
            }
            if (!p->is_pipe) {
                __atomic_store_n(&p->finished, 1, __ATOMIC_RELEASE);
                continue;
            }
            /* No writer on the pipe now: wait for the next one. */
            struct timespec pause = {0, 10000000};
            nanosleep(&pause, NULL);
            continue;
        }
        used += (size_t)n;
        size_t start = 0;
        for (size_t i = 0; i < used; i++) {
            if (buffer[i] != '\n') continue;
            buffer[i] = 0;
            submit_line(p, buffer + start);
            start = i + 1;
        }
        memmove(buffer, buffer + start, used - start);
        used -= start;
        if (used == sizeof buffer - 1) { /* a line longer than the buffer */
            bump(p->bad_lines);
            note_error(p, "a line longer than 64 KiB was dropped");
            used = 0;
        }
    }
    drain_reports(p);
    return NULL;
}

static int start(const cb_host_api *api, cb_host *host, void **instance, char *error, size_t error_size) {
    const char *path = api->config_get(host, "path");
    if (path == NULL || path[0] == 0) {
        snprintf(error, error_size, "config 'path' (the file or pipe to read orders from) is required");
        return CB_ERR_INVALID;
    }
    template_plugin *p = calloc(1, sizeof *p);
    if (p == NULL) return CB_ERR_FAILED;
    p->api = api;
    p->host = host;
    pthread_mutex_init(&p->error_lock, NULL);
    snprintf(p->path, sizeof p->path, "%s", path);
    /* O_NONBLOCK: opening a pipe does not wait for a writer, and stop is never stuck in read. */
    p->fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (p->fd < 0) {
        snprintf(error, error_size, "cannot open %s: %s", path, strerror(errno));
        free(p);
        return CB_ERR_IO;
    }
    struct stat info;
    fstat(p->fd, &info);
    p->is_pipe = S_ISFIFO(info.st_mode);
    int rc = api->producer_open(host, &p->producer);
    if (rc != CB_OK) {
        snprintf(error, error_size, "cannot open a producer (status %d)", rc);
        close(p->fd);
        free(p);
        return rc;
    }
    api->counter_register(host, "template_c_lines", "Command lines read", CB_METRIC_COUNTER, &p->lines);
    api->counter_register(host, "template_c_submitted", "Commands submitted", CB_METRIC_COUNTER, &p->submitted);
    api->counter_register(host, "template_c_bad_lines", "Lines that did not parse", CB_METRIC_COUNTER, &p->bad_lines);
    api->counter_register(host, "template_c_accepted", "Accepted reports", CB_METRIC_COUNTER, &p->accepted);
    api->counter_register(host, "template_c_rejected", "Rejected reports", CB_METRIC_COUNTER, &p->rejected);
    api->counter_register(host, "template_c_trades", "Trade reports", CB_METRIC_COUNTER, &p->trades);
    rc = pthread_create(&p->thread, NULL, run, p);
    if (rc != 0) {
        snprintf(error, error_size, "pthread_create: %s", strerror(rc));
        api->producer_close(p->producer);
        close(p->fd);
        free(p);
        return CB_ERR_FAILED;
    }
    char text[600];
    snprintf(text, sizeof text, "reading orders from %s (%s)", path, p->is_pipe ? "pipe" : "file");
    api->log(host, CB_LOG_INFO, text);
    *instance = p;
    return CB_OK;
}

static void stop(void *instance) {
    template_plugin *p = instance;
    __atomic_store_n(&p->stopping, 1, __ATOMIC_RELEASE);
    pthread_join(p->thread, NULL);
    p->api->producer_close(p->producer);
    close(p->fd);
    pthread_mutex_destroy(&p->error_lock);
    free(p);
}

static int health(void *instance, char *message, size_t size) {
    template_plugin *p = instance;
    uint64_t submitted = p->submitted ? __atomic_load_n(p->submitted, __ATOMIC_RELAXED) : 0;
    uint64_t bad = p->bad_lines ? __atomic_load_n(p->bad_lines, __ATOMIC_RELAXED) : 0;
    int finished = __atomic_load_n(&p->finished, __ATOMIC_ACQUIRE);
    pthread_mutex_lock(&p->error_lock);
    snprintf(message, size, "%s %s: %llu submitted, %llu bad lines%s%s", finished ? "read all of" : "reading",
             p->path, (unsigned long long)submitted, (unsigned long long)bad, p->last_error[0] ? "; last: " : "",
             p->last_error);
    pthread_mutex_unlock(&p->error_lock);
    return bad > 0 ? CB_HEALTH_DEGRADED : CB_HEALTH_OK;
}

static const cb_plugin descriptor = {
    .size = sizeof(cb_plugin),
    .abi_version = CB_PLUGIN_ABI_VERSION,
    .name = "template-c",
    .version = "1.0.0",
    .kinds = CB_KIND_INGRESS,
    .start = start,
    .stop = stop,
    .health = health,
};

CB_PLUGIN_EXPORT const cb_plugin *crossbook_plugin_entry(void) { return &descriptor; }
