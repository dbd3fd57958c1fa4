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

/* Activation fake-quantization grid (quant.activations._fake_quantize), float32, one pass:
 * out = (clamp(round(x / s) + z, 0, qmax) - z) * s with s, z per row of `row_len` values
 * (rstride 1) or one pair for all (rstride 0). The same IEEE operations, in the same order, as
 * the torch ops it replaces (round = nearbyint, ties to even; clamp passes NaN through); build
 * without -ffast-math and with -ffp-contract=off so none is fused or reordered. */
#include <math.h>
#include <stdlib.h>
int qsens_fq_grid_f32(const float *x, int64_t numel, int64_t row_len, const float *scale,
                      const float *zero, int64_t rstride, float qmax, float *out) {
    if (row_len <= 0 || numel % row_len) return 1;
    for (int64_t r0 = 0, r = 0; r0 < numel; r0 += row_len, r++) {
        const float s = scale[r * rstride], z = zero[r * rstride];
        for (int64_t i = r0; i < r0 + row_len; i++) {
            float v = nearbyintf(x[i] / s) + z;
            v = v < 0.0f ? 0.0f : (v > qmax ? qmax : v);
            out[i] = (v - z) * s;
        }
    }
    return 0;
}

/* The whole dynamic/static grid from the ranges: per row, s = (hi - lo) / qmax (hi/qmax - lo/qmax
 * when hi - lo overflows), s = 1 for a zero-width range (hi <= lo), z = round(-lo / s), then the
 * grid above. Returns 0, or 3 when some row's range is zero-width (the caller keeps those values
 * as they are, as the torch path does). */
int qsens_fq_range_f32(const float *x, int64_t numel, int64_t row_len, const float *lo,
                       const float *hi, int64_t rstride, float qmax, float *out) {
    int degenerate = 0;
    if (row_len <= 0 || numel % row_len) return 1;
    for (int64_t r0 = 0, r = 0; r0 < numel; r0 += row_len, r++) {
        const float l = lo[r * rstride], h = hi[r * rstride];
        float s;
        if (h <= l) { s = 1.0f; degenerate = 1; }
        else {
            float span = h - l;
            s = isfinite(span) ? span / qmax : h / qmax - l / qmax;
        }
        const float z = nearbyintf(-l / s);
        for (int64_t i = r0; i < r0 + row_len; i++) {
            float v = nearbyintf(x[i] / s) + z;
            v = v < 0.0f ? 0.0f : (v > qmax ? qmax : v);
            out[i] = (v - z) * s;
        }
    }
    return degenerate ? 3 : 0;
}

/* Dynamic ranges too: each row's min and max (NaN if the row holds a NaN, as torch.amin/amax),
 * written to lo/hi, then the grid as qsens_fq_range_f32. */
int qsens_fq_dynamic_f32(const float *x, int64_t numel, int64_t row_len, float *lo, float *hi,
                         float qmax, float *out) {
    if (row_len <= 0 || numel % row_len) return 1;
    for (int64_t r0 = 0, r = 0; r0 < numel; r0 += row_len, r++) {
        float l = x[r0], h = x[r0];
        int nan = isnan(l);
        for (int64_t i = r0 + 1; i < r0 + row_len; i++) {
            const float v = x[i];
            if (isnan(v)) nan = 1;
            l = v < l ? v : l;
            h = v > h ? v : h;
        }
        lo[r] = nan ? NAN : l;
        hi[r] = nan ? NAN : h;
    }
    return qsens_fq_range_f32(x, numel, row_len, lo, hi, 1, qmax, out);
}

/* The same for a channels-last (N, L, C) layout, ranges per (n, c) over L: no transposing copy. */
int qsens_fq_dynamic_cl_f32(const float *x, int64_t n_, int64_t l_, int64_t c_, float *lo, float *hi,
                            float qmax, float *out) {
    int degenerate = 0;
    if (l_ <= 0 || c_ <= 0) return 1;
    float *s = malloc(2 * c_ * sizeof(float)), *z;
    if (!s) return 1;
    z = s + c_;
    for (int64_t n = 0; n < n_; n++) {
        const float *xn = x + n * l_ * c_;
        float *ln = lo + n * c_, *hn = hi + n * c_, *on = out + n * l_ * c_;
        for (int64_t c = 0; c < c_; c++) { ln[c] = xn[c]; hn[c] = xn[c]; }
        for (int64_t l = 1; l < l_; l++) {
            const float *row = xn + l * c_;
            for (int64_t c = 0; c < c_; c++) {
                const float v = row[c];
                ln[c] = (v < ln[c] || isnan(v)) ? v : ln[c];  /* a NaN, once in, stays (v<NaN false, NaN!=NaN) */
                hn[c] = (v > hn[c] || isnan(v)) ? v : hn[c];
            }
        }
        for (int64_t c = 0; c < c_; c++) {
            if (isnan(ln[c]) || isnan(hn[c])) { ln[c] = NAN; hn[c] = NAN; }
        }
        for (int64_t c = 0; c < c_; c++) {
            const float lo_c = ln[c], hi_c = hn[c];
            float sc;
            if (hi_c <= lo_c) { sc = 1.0f; degenerate = 1; }
            else {
                float span = hi_c - lo_c;
                sc = isfinite(span) ? span / qmax : hi_c / qmax - lo_c / qmax;
            }
            s[c] = sc;
            z[c] = nearbyintf(-lo_c / sc);
        }
        for (int64_t l = 0; l < l_; l++) {
            const float *row = xn + l * c_;
            float *orow = on + l * c_;
            for (int64_t c = 0; c < c_; c++) {
                float v = nearbyintf(row[c] / s[c]) + z[c];
                v = v < 0.0f ? 0.0f : (v > qmax ? qmax : v);
                orow[c] = (v - z[c]) * s[c];
            }
        }
    }
    free(s);
    return degenerate ? 3 : 0;
}
