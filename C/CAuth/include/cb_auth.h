// HMAC-SHA256, AES-256-GCM (OpenSSL's libcrypto) and random bytes, for the replication
// protocol's authentication (Sources/Engine/Replication/ReplicationAuth.swift): both engines of a
// pair prove they hold one secret, and every frame after is encrypted and tagged under a key of
// that session.
#ifndef CROSSBOOK_CB_AUTH_H
#define CROSSBOOK_CB_AUTH_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/// A key, ready to compute tags with (one thread at a time). NULL: libcrypto failed.
typedef struct cb_mac cb_mac;
cb_mac *cb_mac_new(const uint8_t *key, size_t key_len);
void cb_mac_free(cb_mac *mac);
/// HMAC-SHA256 under the key of the concatenation a || b || c (a part may be empty: NULL, 0).
/// 0, or -1 when libcrypto failed (then out is not a tag).
int cb_mac_compute(cb_mac *mac, const void *a, size_t a_len, const void *b, size_t b_len,
                   const void *c, size_t c_len, uint8_t out[32]);
/// AES-256-GCM under one 32-byte key, 12-byte nonces, 16-byte tags; one thread at a time per
/// handle (a connection keeps one to seal what it sends and one to open what it receives).
typedef struct cb_aead cb_aead;
cb_aead *cb_aead_new(const uint8_t key[32]);
void cb_aead_free(cb_aead *aead);
/// Encrypts data (length bytes, in place) and writes the tag over aad and it. 0, or -1 when
/// libcrypto failed.
int cb_aead_seal(cb_aead *aead, const uint8_t nonce[12], const void *aad, size_t aad_len,
                 uint8_t *data, size_t length, uint8_t tag[16]);
/// Decrypts data in place if the tag checks out over aad and it: 0; 1 when it does not (data is
/// then garbage: use none of it); -1 when libcrypto failed.
int cb_aead_open(cb_aead *aead, const uint8_t nonce[12], const void *aad, size_t aad_len,
                 uint8_t *data, size_t length, const uint8_t tag[16]);
/// Equal in time that does not depend on where they differ: 1 equal, 0 not.
int cb_equal_constant_time(const uint8_t *a, const uint8_t *b, size_t n);
/// n bytes from the kernel's random source (getrandom). 0, or an errno.
int cb_random_bytes(uint8_t *out, size_t n);

#ifdef __cplusplus
}
#endif
#endif
