// CRC32C (Castagnoli): the journal's and the snapshots' checksum.
#ifndef CROSSBOOK_CB_CRC32C_H
#define CROSSBOOK_CB_CRC32C_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/// CRC32C, with the SSE4.2 instruction where the CPU has it. `crc` is the running value (0 to
/// start); the result is finalized (it can be fed back in to continue).
uint32_t cb_crc32c(uint32_t crc, const void *data, size_t length);
/// The portable table-driven implementation, kept for CPUs without SSE4.2 and for tests.
uint32_t cb_crc32c_sw(uint32_t crc, const void *data, size_t length);

#ifdef __cplusplus
}
#endif
#endif
