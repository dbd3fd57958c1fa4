/* Packed-code decoding for quant.packing (CPU): out[i] = table[row(i) * tstride + code(i)].
 *
 * Codes are the little-endian bit stream of quant.packing.pack_codes (bit j of code i at stream
 * bit i*bits + j); row(i) = i / row_len; `tstride` is 2^bits for one table per row (UAQ with its
 * scale folded in, K-Means-C) and 0 for one table for the tensor (K-Means-A). The table holds
 * the output dtype's bit patterns (uint16: fp16/bf16, uint32: fp32), so this is a pure lookup:
 * the same bits as any other decode of the same table. Eight codes of `bits` bits fill exactly
 * `bits` bytes, read as one word. Compiled on first use by quant/packing.py (ctypes, no torch
 * headers); every caller falls back to the torch implementation when it cannot be built. */
#include <stdint.h>
#include <string.h>

static inline uint32_t one_code(const uint8_t *p, int64_t nbytes, int bits, int64_t i) {
    int64_t pos = i * bits, byte = pos >> 3;
    uint32_t v = p[byte];
    if (byte + 1 < nbytes) v |= (uint32_t)p[byte + 1] << 8;
    return (v >> (pos & 7)) & ((1u << bits) - 1);
}

#define ROWS(T, B)                                                                         \
    static void rows_##T##_##B(const uint8_t *p, int64_t nbytes, int64_t numel,           \
                               const T *table, int64_t row_len, int64_t tstride, T *out) { \
        const uint64_t m = (1ull << B) - 1;                                                \
        for (int64_t r0 = 0; r0 < numel; r0 += row_len) {                                  \
            const T *tab = table + (r0 / row_len) * tstride;                                \
            int64_t i = r0, end = r0 + row_len;                                             \
            for (; i < end && (i & 7); i++) out[i] = tab[one_code(p, nbytes, B, i)];        \
            for (; i + 8 <= end; i += 8) {                                                  \
                uint64_t w = 0;                                                             \
                int64_t at = (i >> 3) * B;                                                  \
                if (at + 8 <= nbytes) memcpy(&w, p + at, 8); /* one unaligned load */        \
                else memcpy(&w, p + at, B);                                                 \
                T *o = out + i;                                                             \
                o[0] = tab[w & m];            o[1] = tab[(w >> B) & m];                     \
                o[2] = tab[(w >> 2 * B) & m]; o[3] = tab[(w >> 3 * B) & m];                 \
                o[4] = tab[(w >> 4 * B) & m]; o[5] = tab[(w >> 5 * B) & m];                 \
                o[6] = tab[(w >> 6 * B) & m]; o[7] = tab[(w >> 7 * B) & m];                 \
            }                                                                               \
            for (; i < end; i++) out[i] = tab[one_code(p, nbytes, B, i)];                   \
        }                                                                                   \
    }

#define ALL(T) ROWS(T, 1) ROWS(T, 2) ROWS(T, 3) ROWS(T, 4) ROWS(T, 5) ROWS(T, 6) ROWS(T, 7) ROWS(T, 8)
ALL(uint16_t)
ALL(uint32_t)

#define DISPATCH(T)                                                                          \
    int qsens_decode_##T(const uint8_t *p, int64_t nbytes, int bits, int64_t numel,          \
                         const T *table, int64_t row_len, int64_t tstride, T *out) {          \
        if (row_len <= 0 || numel % row_len) return 1;                                       \
        switch (bits) {                                                                      \
        case 1: rows_##T##_1(p, nbytes, numel, table, row_len, tstride, out); return 0;      \
        case 2: rows_##T##_2(p, nbytes, numel, table, row_len, tstride, out); return 0;      \
        case 3: rows_##T##_3(p, nbytes, numel, table, row_len, tstride, out); return 0;      \
        case 4: rows_##T##_4(p, nbytes, numel, table, row_len, tstride, out); return 0;      \
        case 5: rows_##T##_5(p, nbytes, numel, table, row_len, tstride, out); return 0;      \
        case 6: rows_##T##_6(p, nbytes, numel, table, row_len, tstride, out); return 0;      \
        case 7: rows_##T##_7(p, nbytes, numel, table, row_len, tstride, out); return 0;      \
        case 8: rows_##T##_8(p, nbytes, numel, table, row_len, tstride, out); return 0;      \
        }                                                                                    \
        return 2;                                                                            \
    }
DISPATCH(uint16_t)
DISPATCH(uint32_t)
