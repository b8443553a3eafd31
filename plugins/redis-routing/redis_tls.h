/* TLS to Redis for the Redis plugins (redis-routing with its lease, snapshot-redis) and
 * crossbook-route. Debian's hiredis (0.14) has no TLS, so the TLS connection is made here with
 * OpenSSL and hiredis is handed one end of a socket pair (`redisConnectFd`); a relay thread per
 * connection carries the bytes between the pair and the TLS connection, and ends when either
 * side closes (hiredis's redisFree closes its end). Compiled into each user; not part of the ABI.
 *
 * Config (each user's own section): tls = "yes" (default "no"), tls_ca_file (the CA that signed
 * the server's certificate: required), tls_cert_file and tls_key_file (this client's certificate
 * and key, for a server with tls-auth-clients yes, Redis's default: both or neither; the key file
 * must not be readable by others), tls_server_name (the name or IP address the server's
 * certificate must carry; default the host of `redis`). TLS 1.2 at least; the server's
 * certificate is always verified. */
#ifndef CROSSBOOK_REDIS_TLS_H
#define CROSSBOOK_REDIS_TLS_H

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <hiredis/hiredis.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include <stdarg.h>

/* snprintf that may cut the text short (error messages: a long path is cut, not overflowed). */
__attribute__((format(printf, 3, 4))) static inline void redis_tls_text(char *out, size_t size, const char *format, ...) {
    va_list arguments;
    va_start(arguments, format);
    vsnprintf(out, size, format, arguments);
    va_end(arguments);
}

struct redis_relay;

typedef struct redis_tls {
    SSL_CTX *ctx; /* NULL: plain TCP */
    char server_name[256];
    atomic_int relays; /* relay threads running: redis_tls_free waits for them (they use this) */
    pthread_mutex_t lock;
    struct redis_relay *live; /* the running relays (under lock): redis_tls_free ends them */
} redis_tls;

typedef struct redis_relay {
    SSL *ssl;
    int tcp;
    int pair;
    redis_tls *tls;
    struct redis_relay *next, *previous;
} redis_relay;

/* The last OpenSSL error, readable. */
static inline void redis_tls_error(const char *what, char *error, size_t size) {
    unsigned long e = ERR_get_error();
    char text[256] = "";
    if (e != 0) ERR_error_string_n(e, text, sizeof text);
    ERR_clear_error();
    redis_tls_text(error, size, "%s%s%s", what, text[0] ? ": " : "", text);
}

/* From explicit values (crossbook-route takes them from its environment); enabled 0: plain. */
static inline int redis_tls_make(redis_tls *out, int enabled, const char *ca, const char *cert, const char *key,
                                 const char *server_name, const char *redis_host, char *error, size_t size) {
    memset(out, 0, sizeof *out);
    atomic_init(&out->relays, 0);
    pthread_mutex_init(&out->lock, NULL);
    if (!enabled) return 1;
    if (ca == NULL || ca[0] == 0) {
        redis_tls_text(error, size, "tls: give tls_ca_file (the CA that signed the Redis server's certificate)");
        return 0;
    }
    if ((cert == NULL) != (key == NULL)) {
        redis_tls_text(error, size, "tls: give tls_cert_file and tls_key_file together (or neither)");
        return 0;
    }
    if (key != NULL) {
        struct stat st;
        if (stat(key, &st) != 0 || !S_ISREG(st.st_mode)) {
            redis_tls_text(error, size, "tls_key_file = '%s': not a readable regular file", key);
            return 0;
        }
        if (st.st_mode & S_IROTH) {
            redis_tls_text(error, size, "tls_key_file = '%s': readable by others (chmod o-r)", key);
            return 0;
        }
    }
    const char *name = server_name != NULL && server_name[0] != 0 ? server_name : redis_host;
    if (strlen(name) >= sizeof out->server_name) {
        redis_tls_text(error, size, "tls_server_name: at most %zu bytes", sizeof out->server_name - 1);
        return 0;
    }
    strcpy(out->server_name, name);
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    if (ctx == NULL) {
        redis_tls_error("tls: cannot make a context", error, size);
        return 0;
    }
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    /* The relay reads only what poll says is there: a record that carries no data (a TLS 1.3
     * session ticket) must not make SSL_read wait for more. */
    SSL_CTX_clear_mode(ctx, SSL_MODE_AUTO_RETRY);
    char what[600];
    if (SSL_CTX_load_verify_locations(ctx, ca, NULL) != 1) {
        redis_tls_text(what, sizeof what, "tls_ca_file = '%s'", ca);
        redis_tls_error(what, error, size);
        SSL_CTX_free(ctx);
        return 0;
    }
    if (cert != NULL) {
        if (SSL_CTX_use_certificate_chain_file(ctx, cert) != 1) {
            redis_tls_text(what, sizeof what, "tls_cert_file = '%s'", cert);
            redis_tls_error(what, error, size);
            SSL_CTX_free(ctx);
            return 0;
        }
        if (SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1 || SSL_CTX_check_private_key(ctx) != 1) {
            redis_tls_text(what, sizeof what, "tls_key_file = '%s' (or it does not match tls_cert_file)", key);
            redis_tls_error(what, error, size);
            SSL_CTX_free(ctx);
            return 0;
        }
    }
    out->ctx = ctx;
    return 1;
}

#ifdef CROSSBOOK_PLUGIN_H
/* From the plugin's config. */
static inline int redis_tls_read(const cb_host_api *api, cb_host *host, const char *redis_host, redis_tls *out,
                                 char *error, size_t size) {
    const char *tls = api->config_get(host, "tls");
    int enabled = 0;
    if (tls != NULL) {
        if (strcmp(tls, "yes") == 0 || strcmp(tls, "true") == 0) {
            enabled = 1;
        } else if (strcmp(tls, "no") != 0 && strcmp(tls, "false") != 0) {
            redis_tls_text(error, size, "config tls = '%s': give yes or no", tls);
            return 0;
        }
    }
    const char *keys[] = {"tls_ca_file", "tls_cert_file", "tls_key_file", "tls_server_name"};
    if (!enabled) {
        for (int i = 0; i < 4; i++)
            if (api->config_get(host, keys[i]) != NULL) {
                redis_tls_text(error, size, "config %s without tls = \"yes\"", keys[i]);
                return 0;
            }
    }
    char why[512];
    if (!redis_tls_make(out, enabled, api->config_get(host, keys[0]), api->config_get(host, keys[1]),
                        api->config_get(host, keys[2]), api->config_get(host, keys[3]), redis_host, why, sizeof why)) {
        redis_tls_text(error, size, "config %s", why);
        return 0;
    }
    return 1;
}
#endif

/* After every connection made with it is freed: ends the relays still running (one may wait
 * inside a TLS record for up to the connection's timeout) and waits for them (at most 5 s). */
static inline void redis_tls_free(redis_tls *t) {
    if (t->ctx == NULL) return;
    pthread_mutex_lock(&t->lock);
    for (redis_relay *r = t->live; r != NULL; r = r->next) shutdown(r->tcp, SHUT_RDWR);
    pthread_mutex_unlock(&t->lock);
    for (int i = 0; i < 500 && atomic_load(&t->relays) > 0; i++) usleep(10000);
    if (atomic_load(&t->relays) == 0) {
        SSL_CTX_free(t->ctx);
        t->ctx = NULL;
    }
}

static inline int redis_relay_write_all(int fd, const char *p, size_t n) {
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return 0;
        p += w;
        n -= (size_t)w;
    }
    return 1;
}

/* OpenSSL writes to its socket with write(2): a peer gone raises SIGPIPE, which kills a process
 * that does not ignore it (a host that embeds the engine need not). Blocked on the threads that
 * write here; one raised meanwhile is taken before the mask is restored. */
static inline void redis_sigpipe_block(sigset_t *old) {
    sigset_t pipe;
    sigemptyset(&pipe);
    sigaddset(&pipe, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &pipe, old);
}

static inline void redis_sigpipe_restore(const sigset_t *old) {
    sigset_t pipe;
    sigemptyset(&pipe);
    sigaddset(&pipe, SIGPIPE);
    struct timespec none = {0, 0};
    while (sigtimedwait(&pipe, NULL, &none) > 0) {
    }
    pthread_sigmask(SIG_SETMASK, old, NULL);
}

static inline void redis_relay_unlink(redis_relay *r) {
    pthread_mutex_lock(&r->tls->lock);
    if (r->previous) r->previous->next = r->next; else r->tls->live = r->next;
    if (r->next) r->next->previous = r->previous;
    pthread_mutex_unlock(&r->tls->lock);
}

static inline void *redis_relay_run(void *argument) {
    redis_relay *r = argument;
    char buffer[16384];
    sigset_t unused;
    redis_sigpipe_block(&unused); /* for the life of this thread: a write to a peer gone fails with EPIPE */
    for (;;) {
        struct pollfd p[2] = {{r->pair, POLLIN, 0}, {r->tcp, POLLIN, 0}};
        if (SSL_pending(r->ssl) == 0 && poll(p, 2, -1) < 0) {
            if (errno == EINTR) continue;
            break;
        }
        if (SSL_pending(r->ssl) > 0 || (p[1].revents & (POLLIN | POLLHUP | POLLERR))) {
            int n = SSL_read(r->ssl, buffer, sizeof buffer);
            if (n <= 0) {
                int e = SSL_get_error(r->ssl, n);
                if (e != SSL_ERROR_WANT_READ) break; /* closed, timed out or failed */
            } else if (!redis_relay_write_all(r->pair, buffer, (size_t)n)) {
                break;
            }
        }
        if (p[0].revents & (POLLIN | POLLHUP | POLLERR)) {
            ssize_t n = read(r->pair, buffer, sizeof buffer);
            if (n < 0 && errno == EINTR) continue;
            if (n <= 0) break; /* hiredis freed its end */
            size_t at = 0;
            while (at < (size_t)n) {
                int w = SSL_write(r->ssl, buffer + at, (int)((size_t)n - at));
                if (w <= 0) break;
                at += (size_t)w;
            }
            if (at < (size_t)n) break;
        }
    }
    redis_tls *tls = r->tls;
    redis_relay_unlink(r);
    SSL_free(r->ssl);
    close(r->tcp);
    close(r->pair);
    ERR_clear_error();
    atomic_fetch_sub(&tls->relays, 1);
    free(r);
    return NULL;
}

/* A TCP connection to host:port within tv; -1 with the reason. */
static inline int redis_tcp_connect(const char *host, int port, struct timeval tv, char *error, size_t size) {
    struct addrinfo hints = {0}, *found = NULL;
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    char service[16];
    snprintf(service, sizeof service, "%d", port);
    int rc = getaddrinfo(host, service, &hints, &found);
    if (rc != 0) {
        redis_tls_text(error, size, "%s: %s", host, gai_strerror(rc));
        return -1;
    }
    int fd = -1;
    int timeout_ms = (int)(tv.tv_sec * 1000 + tv.tv_usec / 1000);
    if (timeout_ms <= 0) timeout_ms = 1000;
    redis_tls_text(error, size, "%s:%d: no address", host, port);
    for (struct addrinfo *a = found; a != NULL && fd < 0; a = a->ai_next) {
        fd = socket(a->ai_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        if (fd < 0) continue;
        if (connect(fd, a->ai_addr, a->ai_addrlen) != 0 && errno != EINPROGRESS) {
            redis_tls_text(error, size, "%s:%d: %s", host, port, strerror(errno));
            close(fd);
            fd = -1;
            continue;
        }
        struct pollfd p = {fd, POLLOUT, 0};
        int failed = 0;
        socklen_t length = sizeof failed;
        if (poll(&p, 1, timeout_ms) != 1 || getsockopt(fd, SOL_SOCKET, SO_ERROR, &failed, &length) != 0 || failed != 0) {
            redis_tls_text(error, size, "%s:%d: %s", host, port, failed ? strerror(failed) : "connection timed out");
            close(fd);
            fd = -1;
        }
    }
    freeaddrinfo(found);
    if (fd < 0) return -1;
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    int one = 1, idle = 15;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof one);
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof idle);
    return fd;
}

/* A hiredis connection to host:port, over TLS when `tls` says so; NULL with the reason. The
 * caller sets its timeout (redisSetTimeout) as for any. */
static inline redisContext *redis_connect(const char *host, int port, struct timeval tv, redis_tls *tls, char *error,
                                          size_t size) {
    if (tls == NULL || tls->ctx == NULL) {
        redisContext *c = redisConnectWithTimeout(host, port, tv);
        if (c == NULL || c->err) {
            redis_tls_text(error, size, "redis %s:%d: %s", host, port, c ? c->errstr : "cannot allocate");
            if (c) redisFree(c);
            return NULL;
        }
        redisEnableKeepAlive(c);
        return c;
    }
    sigset_t mask;
    redis_sigpipe_block(&mask);
    char why[512];
    int tcp = redis_tcp_connect(host, port, tv, why, sizeof why);
    if (tcp < 0) {
        redis_tls_text(error, size, "redis %s", why);
        redis_sigpipe_restore(&mask);
        return NULL;
    }
    SSL *ssl = SSL_new(tls->ctx);
    if (ssl == NULL) {
        redis_tls_error("redis tls", error, size);
        close(tcp);
        redis_sigpipe_restore(&mask);
        return NULL;
    }
    struct in6_addr ip;
    int is_ip = inet_pton(AF_INET, tls->server_name, &ip) == 1 || inet_pton(AF_INET6, tls->server_name, &ip) == 1;
    X509_VERIFY_PARAM *param = SSL_get0_param(ssl);
    if (is_ip) {
        X509_VERIFY_PARAM_set1_ip_asc(param, tls->server_name);
    } else {
        X509_VERIFY_PARAM_set1_host(param, tls->server_name, 0);
        SSL_set_tlsext_host_name(ssl, tls->server_name);
    }
    SSL_set_fd(ssl, tcp);
    if (SSL_connect(ssl) != 1) {
        long verified = SSL_get_verify_result(ssl);
        if (verified != X509_V_OK) {
            redis_tls_text(error, size, "redis %s:%d: TLS: the server's certificate is not trusted for %s: %s", host, port, tls->server_name,
                     X509_verify_cert_error_string(verified));
            ERR_clear_error();
        } else {
            char what[300];
            redis_tls_text(what, sizeof what, "redis %s:%d: TLS handshake failed (a server without TLS there, or one that wants a client certificate?)", host, port);
            redis_tls_error(what, error, size);
        }
        SSL_free(ssl);
        close(tcp);
        redis_sigpipe_restore(&mask);
        return NULL;
    }
    /* A PING before hiredis has it: a server that refuses this client (TLS 1.3 tells a client
     * without the certificate it wants only after the handshake) is named here, not as a reset
     * at the first command. Either reply (PONG, or NOAUTH before AUTH) is Redis taking us. */
    static const char ping[] = "*1\r\n$4\r\nPING\r\n";
    char reply[256];
    int got = 0;
    if (SSL_write(ssl, ping, (int)sizeof ping - 1) == (int)sizeof ping - 1) {
        while (got < (int)sizeof reply - 1) {
            int n = SSL_read(ssl, reply + got, (int)sizeof reply - 1 - got);
            if (n <= 0) {
                if (SSL_get_error(ssl, n) == SSL_ERROR_WANT_READ) continue;
                got = -1;
                break;
            }
            got += n;
            reply[got] = 0;
            if (strstr(reply, "\r\n") != NULL) break;
        }
    } else {
        got = -1;
    }
    if (got <= 0 || (reply[0] != '+' && reply[0] != '-')) {
        char what[400];
        redis_tls_text(what, sizeof what, "redis %s:%d: TLS: the server %s", host, port,
                       got <= 0 ? "ended the session (does it want a client certificate: tls_cert_file, tls_key_file?)"
                                : "does not answer as Redis");
        redis_tls_error(what, error, size);
        SSL_free(ssl);
        close(tcp);
        redis_sigpipe_restore(&mask);
        return NULL;
    }
    int pair[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair) != 0) {
        redis_tls_text(error, size, "redis tls: socketpair: %s", strerror(errno));
        SSL_free(ssl);
        close(tcp);
        redis_sigpipe_restore(&mask);
        return NULL;
    }
    redis_relay *relay = malloc(sizeof *relay);
    redisContext *c = relay ? redisConnectFd(pair[0]) : NULL;
    if (c == NULL || c->err) {
        redis_tls_text(error, size, "redis tls: %s", c ? c->errstr : "cannot allocate");
        if (c) redisFree(c); else close(pair[0]);
        free(relay);
        close(pair[1]);
        SSL_free(ssl);
        close(tcp);
        redis_sigpipe_restore(&mask);
        return NULL;
    }
    *relay = (redis_relay){ssl, tcp, pair[1], tls, NULL, NULL};
    atomic_fetch_add(&tls->relays, 1);
    pthread_mutex_lock(&tls->lock);
    relay->next = tls->live;
    if (tls->live) tls->live->previous = relay;
    tls->live = relay;
    pthread_mutex_unlock(&tls->lock);
    pthread_t thread;
    pthread_attr_t attributes;
    pthread_attr_init(&attributes);
    pthread_attr_setdetachstate(&attributes, PTHREAD_CREATE_DETACHED);
    if (pthread_create(&thread, &attributes, redis_relay_run, relay) != 0) {
        pthread_attr_destroy(&attributes);
        redis_relay_unlink(relay);
        atomic_fetch_sub(&tls->relays, 1);
        redis_tls_text(error, size, "redis tls: cannot start the relay thread");
        redisFree(c);
        close(pair[1]);
        SSL_free(ssl);
        close(tcp);
        free(relay);
        redis_sigpipe_restore(&mask);
        return NULL;
    }
    pthread_attr_destroy(&attributes);
    redis_sigpipe_restore(&mask);
    return c;
}

#endif
