// CRC32C (Castagnoli, reflected polynomial 0x82F63B78): the SSE4.2 instruction when the CPU has
// it, a table otherwise. Both give the same value; a test holds them to it.
#include "cb_crc32c.h"

#include <stdint.h>
#include <string.h>

static uint32_t table[256];
static int table_ready;

static void build_table(void) {
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++) c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
        table[i] = c;
    }
    __atomic_store_n(&table_ready, 1, __ATOMIC_RELEASE);
}

uint32_t cb_crc32c_sw(uint32_t crc, const void *data, size_t length) {
    if (!__atomic_load_n(&table_ready, __ATOMIC_ACQUIRE)) build_table();
    const uint8_t *p = (const uint8_t *)data;
    crc = ~crc;
    while (length--) crc = table[(crc ^ *p++) & 0xFF] ^ (crc >> 8);
    return ~crc;
}

#if defined(__x86_64__)
/* The CRC instruction takes 3 cycles and can start every cycle: one chain uses a third of it.
 * Long buffers go three blocks at a time, one chain each, and the chains are joined (Mark
 * Adler's method): the register after A then B is the register after A advanced over |B| zero
 * bytes (a multiplication by x^(8|B|) modulo the polynomial) xor the register of B from 0. */
#define POLY 0x82F63B78u
#define LONG_BLOCK 8192
#define SHORT_BLOCK 256

/* a * b modulo the polynomial, both reflected (bit 31 is x^0). */
static uint32_t multmodp(uint32_t a, uint32_t b) {
    uint32_t m = 1u << 31, p = 0;
    for (;;) {
        if (a & m) {
            p ^= b;
            if ((a & (m - 1)) == 0) break;
        }
        m >>= 1;
        b = b & 1 ? (b >> 1) ^ POLY : b >> 1;
    }
    return p;
}

/* x^(8n) modulo the polynomial, reflected. */
static uint32_t x8nmodp(size_t n) {
    uint32_t result = 1u << 31, square = 1u << 30; /* x^0, x^1 */
    uint64_t bits = (uint64_t)n * 8;
    while (bits) {
        if (bits & 1) result = multmodp(square, result);
        square = multmodp(square, square);
        bits >>= 1;
    }
    return result;
}

static uint32_t shift_long, shift_short;
static int shifts_ready;

__attribute__((target("sse4.2")))
static uint64_t crc32c_three(uint64_t c0, const uint8_t **at, size_t *length, size_t block, uint32_t shift) {
    const uint8_t *p = *at;
    while (*length >= 3 * block) {
        uint64_t c1 = 0, c2 = 0;
        const uint8_t *end = p + block;
        do {
            uint64_t w0, w1, w2;
            memcpy(&w0, p, 8);
            memcpy(&w1, p + block, 8);
            memcpy(&w2, p + 2 * block, 8);
            c0 = __builtin_ia32_crc32di(c0, w0);
            c1 = __builtin_ia32_crc32di(c1, w1);
            c2 = __builtin_ia32_crc32di(c2, w2);
            p += 8;
        } while (p < end);
        c0 = multmodp(shift, (uint32_t)c0) ^ (uint32_t)c1;
        c0 = multmodp(shift, (uint32_t)c0) ^ (uint32_t)c2;
        p += 2 * block;
        *length -= 3 * block;
    }
    *at = p;
    return c0;
}

__attribute__((target("sse4.2")))
static uint32_t crc32c_hw(uint32_t crc, const void *data, size_t length) {
    const uint8_t *p = (const uint8_t *)data;
    uint64_t c = ~crc;
    if (length >= 3 * SHORT_BLOCK) {
        if (!__atomic_load_n(&shifts_ready, __ATOMIC_ACQUIRE)) {
            shift_long = x8nmodp(LONG_BLOCK);
            shift_short = x8nmodp(SHORT_BLOCK);
            __atomic_store_n(&shifts_ready, 1, __ATOMIC_RELEASE);
        }
        c = crc32c_three(c, &p, &length, LONG_BLOCK, shift_long);
        c = crc32c_three(c, &p, &length, SHORT_BLOCK, shift_short);
    }
    while (length >= 8) {
        uint64_t word;
        memcpy(&word, p, 8);
        c = __builtin_ia32_crc32di(c, word);
        p += 8;
        length -= 8;
    }
    uint32_t c32 = (uint32_t)c;
    while (length--) c32 = __builtin_ia32_crc32qi(c32, *p++);
    return ~c32;
}
#endif

uint32_t cb_crc32c(uint32_t crc, const void *data, size_t length) {
#if defined(__x86_64__)
    static int has_hw = -1;
    if (has_hw < 0) {
        __builtin_cpu_init();
        has_hw = __builtin_cpu_supports("sse4.2") ? 1 : 0;
    }
    if (has_hw) return crc32c_hw(crc, data, length);
#endif
    return cb_crc32c_sw(crc, data, length);
}
