// HMAC-SHA256 through OpenSSL 3's EVP_MAC: the keyed state is made once, and each tag starts
// from a copy of it.
#define _GNU_SOURCE
#include "cb_auth.h"

#include <errno.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/params.h>
#include <stdlib.h>
#include <sys/random.h>

struct cb_mac {
    EVP_MAC_CTX *keyed;
};

cb_mac *cb_mac_new(const uint8_t *key, size_t key_len) {
    cb_mac *m = calloc(1, sizeof *m);
    if (!m) return NULL;
    EVP_MAC *mac = EVP_MAC_fetch(NULL, "HMAC", NULL);
    if (!mac) { free(m); return NULL; }
    m->keyed = EVP_MAC_CTX_new(mac);
    EVP_MAC_free(mac);
    char digest[] = "SHA256";
    OSSL_PARAM params[] = { OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, digest, 0), OSSL_PARAM_construct_end() };
    if (!m->keyed || EVP_MAC_init(m->keyed, key, key_len, params) != 1) {
        cb_mac_free(m);
        return NULL;
    }
    return m;
}

void cb_mac_free(cb_mac *m) {
    if (!m) return;
    EVP_MAC_CTX_free(m->keyed);
    free(m);
}

int cb_mac_compute(cb_mac *m, const void *a, size_t a_len, const void *b, size_t b_len,
                   const void *c, size_t c_len, uint8_t out[32]) {
    EVP_MAC_CTX *ctx = EVP_MAC_CTX_dup(m->keyed);
    if (!ctx) return -1;
    size_t length = 0;
    int ok = (a_len == 0 || EVP_MAC_update(ctx, a, a_len) == 1)
          && (b_len == 0 || EVP_MAC_update(ctx, b, b_len) == 1)
          && (c_len == 0 || EVP_MAC_update(ctx, c, c_len) == 1)
          && EVP_MAC_final(ctx, out, &length, 32) == 1 && length == 32;
    EVP_MAC_CTX_free(ctx);
    return ok ? 0 : -1;
}

int cb_equal_constant_time(const uint8_t *a, const uint8_t *b, size_t n) { return CRYPTO_memcmp(a, b, n) == 0; }

int cb_random_bytes(uint8_t *out, size_t n) {
    size_t got = 0;
    while (got < n) {
        ssize_t r = getrandom(out + got, n - got, 0);
        if (r < 0) {
            if (errno == EINTR) continue;
            return errno;
        }
        got += (size_t)r;
    }
    return 0;
}
