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
__attribute__((target("sse4.2")))
static uint32_t crc32c_hw(uint32_t crc, const void *data, size_t length) {
    const uint8_t *p = (const uint8_t *)data;
    uint64_t c = ~crc;
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
