/* f16 / bf16 <-> f32, and block-wise row conversion: ops convert a tile at a time so that a
 * half-precision corpus is never copied whole to f32. */
#include "ns_internal.h"

#include <math.h>
#include <string.h>

float ns_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1f, man = h & 0x3ffu, bits;
    if (exp == 0) {
        if (man == 0) {
            bits = sign;
        } else { /* subnormal: renormalise */
            int e = -1;
            do { man <<= 1; e++; } while (!(man & 0x400u));
            bits = sign | ((uint32_t)(127 - 15 - e) << 23) | ((man & 0x3ffu) << 13);
        }
    } else if (exp == 0x1f) {
        bits = sign | 0x7f800000u | (man << 13);
    } else {
        bits = sign | ((exp + 127 - 15) << 23) | (man << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

float ns_bf16_to_f32(uint16_t h) {
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

uint16_t ns_f32_to_bf16(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    if ((x & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((x >> 16) | 0x40u); /* quiet NaN */
    x += 0x7fffu + ((x >> 16) & 1u); /* round to nearest even */
    return (uint16_t)(x >> 16);
}

uint16_t ns_f32_to_f16(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    uint32_t sign = (x >> 16) & 0x8000u;
    uint32_t ax = x & 0x7fffffffu;
    if (ax > 0x7f800000u) return (uint16_t)(sign | 0x7e00u);
    if (ax >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u); /* overflow to Inf */
    if (ax < 0x38800000u) { /* subnormal or zero in f16 */
        float a;
        memcpy(&a, &ax, 4);
        /* value / 2^-24 rounded to nearest even */
        float scaled = a * 16777216.0f;
        uint32_t m = (uint32_t)nearbyintf(scaled);
        return (uint16_t)(sign | m);
    }
    uint32_t e = (ax >> 23) - 127 + 15;
    uint32_t man = ax & 0x7fffffu;
    uint32_t half = (e << 10) | (man >> 13);
    uint32_t rest = man & 0x1fffu;
    if (rest > 0x1000u || (rest == 0x1000u && (half & 1u))) half++;
    return (uint16_t)(sign | half);
}

int64_t ns_rows_to_f32(ns_matrix m, int64_t r0, int64_t n, float *dst) {
    int64_t bad = 0;
    for (int64_t r = 0; r < n; r++) {
        const void *row = ns_row(m, r0 + r);
        float *out = dst + r * m.cols;
        if (m.dtype == NS_F32) {
            memcpy(out, row, (size_t)m.cols * 4);
        } else if (m.dtype == NS_F16) {
            const uint16_t *h = (const uint16_t *)row;
            for (int64_t c = 0; c < m.cols; c++) out[c] = ns_f16_to_f32(h[c]);
        } else {
            const uint16_t *h = (const uint16_t *)row;
            for (int64_t c = 0; c < m.cols; c++) out[c] = ns_bf16_to_f32(h[c]);
        }
        if (!bad) {
            int64_t i = ns_find_nonfinite_f32(out, m.cols);
            if (i) bad = (r0 + r) * m.cols + i;
        }
    }
    return bad;
}

const float *ns_rows_f32_view(ns_matrix m, int64_t r0, int64_t n, float *buf, int64_t *ld_out,
                              int64_t *nonfinite) {
    if (m.dtype == NS_F32) {
        const float *p = (const float *)ns_row(m, r0);
        int64_t ld = ns_ld(m);
        *ld_out = ld;
        if (nonfinite) {
            *nonfinite = 0;
            for (int64_t r = 0; r < n && !*nonfinite; r++) {
                int64_t i = ns_find_nonfinite_f32(p + r * ld, m.cols);
                if (i) *nonfinite = (r0 + r) * m.cols + i;
            }
        }
        return p;
    }
    int64_t bad = ns_rows_to_f32(m, r0, n, buf);
    if (nonfinite) *nonfinite = bad;
    *ld_out = m.cols;
    return buf;
}
