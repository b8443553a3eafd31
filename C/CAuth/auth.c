// HMAC-SHA256 through OpenSSL 3's EVP_MAC: the keyed state is made once, and each tag starts
// from a copy of it. AES-256-GCM through EVP_CIPHER: the key is set once, each message sets only
// its nonce.
#define _GNU_SOURCE
#include "cb_auth.h"

#include <errno.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/params.h>
#include <stdlib.h>
#include <string.h>
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

struct cb_aead {
    EVP_CIPHER_CTX *sealing;
    EVP_CIPHER_CTX *opening;
};

cb_aead *cb_aead_new(const uint8_t key[32]) {
    cb_aead *a = calloc(1, sizeof *a);
    if (!a) return NULL;
    a->sealing = EVP_CIPHER_CTX_new();
    a->opening = EVP_CIPHER_CTX_new();
    if (!a->sealing || !a->opening
        || EVP_EncryptInit_ex(a->sealing, EVP_aes_256_gcm(), NULL, key, NULL) != 1
        || EVP_DecryptInit_ex(a->opening, EVP_aes_256_gcm(), NULL, key, NULL) != 1) {
        cb_aead_free(a);
        return NULL;
    }
    return a;
}

void cb_aead_free(cb_aead *a) {
    if (!a) return;
    EVP_CIPHER_CTX_free(a->sealing);
    EVP_CIPHER_CTX_free(a->opening);
    free(a);
}

/* EVP's lengths are ints: longer inputs go in parts. */
static int cipher_update(EVP_CIPHER_CTX *ctx, int encrypt, uint8_t *out, const uint8_t *in, size_t length) {
    while (length > 0) {
        int part = length > (1u << 30) ? (1 << 30) : (int)length, written = 0;
        int ok = encrypt ? EVP_EncryptUpdate(ctx, out, &written, in, part) : EVP_DecryptUpdate(ctx, out, &written, in, part);
        if (ok != 1 || (out && written != part)) return -1;
        if (out) out += part;
        in += part;
        length -= (size_t)part;
    }
    return 0;
}

int cb_aead_seal(cb_aead *a, const uint8_t nonce[12], const void *aad, size_t aad_len, uint8_t *data, size_t length,
                 uint8_t tag[16]) {
    EVP_CIPHER_CTX *ctx = a->sealing;
    int rest = 0;
    if (EVP_EncryptInit_ex(ctx, NULL, NULL, NULL, nonce) != 1) return -1;
    if (cipher_update(ctx, 1, NULL, aad, aad_len) != 0 || cipher_update(ctx, 1, data, data, length) != 0) return -1;
    if (EVP_EncryptFinal_ex(ctx, data + length, &rest) != 1 || rest != 0) return -1;
    return EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, 16, tag) == 1 ? 0 : -1;
}

int cb_aead_open(cb_aead *a, const uint8_t nonce[12], const void *aad, size_t aad_len, uint8_t *data, size_t length,
                 const uint8_t tag[16]) {
    EVP_CIPHER_CTX *ctx = a->opening;
    int rest = 0;
    uint8_t expected[16];
    memcpy(expected, tag, 16);
    if (EVP_DecryptInit_ex(ctx, NULL, NULL, NULL, nonce) != 1) return -1;
    if (cipher_update(ctx, 0, NULL, aad, aad_len) != 0 || cipher_update(ctx, 0, data, data, length) != 0) return -1;
    if (EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, 16, expected) != 1) return -1;
    return EVP_DecryptFinal_ex(ctx, data + length, &rest) == 1 ? 0 : 1;
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
