/* Row norms, bf16 rounding-residual norms and bf16 copies for ns_mine_topk on the CPU
 * (cpu_mine.h): the rows' part of the score bound (src/hostdevice/ns_bound.h), in one pass. */
#include "cpu_mine.h"
#include "cpu_tiles.h"

#include <math.h>
#include <string.h>

/* Round to nearest even bf16 (bits); NaN stays NaN or becomes ±Inf: non-finite either way,
 * and reported through its scores. */
static inline uint16_t bf16_bits(uint32_t b) { return (uint16_t)((b + 0x7fffu + ((b >> 16) & 1u)) >> 16); }

/* ‖row‖ and ‖row − bf16(row)‖ (the bf16 rounding residual) in double from an f32 view, each
 * rounded up to f32 (8 partial sums: any order is fine, the bound carries a margin for it; the
 * residuals and their squares are exact in double), and, when out16, the bf16 copy. */
NS_VECTOR_CLONES
static float row_prepare(const float *x, int64_t d, uint16_t *out16, float *resid) {
    double acc[8] = {0, 0, 0, 0, 0, 0, 0, 0}, res[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    const uint32_t *u = (const uint32_t *)(const void *)x;
    int64_t t = 0;
    for (; t + 8 <= d; t += 8)
        for (int l = 0; l < 8; l++) {
            uint32_t h = (uint32_t)bf16_bits(u[t + l]) << 16;
            float xh;
            memcpy(&xh, &h, 4);
            const double r = (double)x[t + l] - (double)xh;
            acc[l] += (double)x[t + l] * (double)x[t + l];
            res[l] += r * r;
        }
    for (; t < d; t++) {
        uint32_t h = (uint32_t)bf16_bits(u[t]) << 16;
        float xh;
        memcpy(&xh, &h, 4);
        const double r = (double)x[t] - (double)xh;
        acc[0] += (double)x[t] * (double)x[t];
        res[0] += r * r;
    }
    if (out16)
        for (int64_t j = 0; j < d; j++) out16[j] = bf16_bits(u[j]);
    double s2 = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    double r2 = ((res[0] + res[4]) + (res[1] + res[5])) + ((res[2] + res[6]) + (res[3] + res[7]));
    *resid = up((float)sqrt(r2));
    return up((float)sqrt(s2));
}

/* Norms and residual norms (row_prepare) of n rows of an f32 view, and (when out16) their
 * bf16 copy; returns the largest of each. */
norm_max ns_mine_rows_prepare(const float *v, int64_t ld, int64_t n, int64_t d, float *norms,
                              float *resids, uint16_t *out16, int threads) {
    float mx = 0.0f, rx = 0.0f;
#pragma omp parallel for num_threads(threads) schedule(static) reduction(max : mx, rx) if (n * d >= 65536)
    for (int64_t r = 0; r < n; r++) {
        float rr, nr = row_prepare(v + r * ld, d, out16 ? out16 + r * d : NULL, &rr);
        if (norms) norms[r] = nr;
        if (resids) resids[r] = rr;
        if (nr > mx) mx = nr;
        if (rr > rx) rx = rr;
    }
    norm_max m = {mx, rx};
    return m;
}

/* ‖row‖ of a bf16 row from its bits (the same norm as of its f32 widening), rounded up. */
NS_VECTOR_CLONES
static float row_norm_bf16(const uint16_t *x, int64_t d) {
    double acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    int64_t t = 0;
    for (; t + 8 <= d; t += 8)
        for (int l = 0; l < 8; l++) {
            uint32_t u = (uint32_t)x[t + l] << 16;
            float f;
            memcpy(&f, &u, 4);
            acc[l] += (double)f * (double)f;
        }
    for (; t < d; t++) {
        uint32_t u = (uint32_t)x[t] << 16;
        float f;
        memcpy(&f, &u, 4);
        acc[0] += (double)f * (double)f;
    }
    double s2 = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    return up((float)sqrt(s2));
}

/* Norms and bf16 residual norms of rows [r0, r0+n) of m, and (when out16) their bf16 copy;
 * returns the largest of each. bf16 data used as it is (exact16: not normalised) is read from
 * its bits, with no f32 copy (*view = NULL; residuals 0); otherwise *view, *ld = the f32 view
 * made on the way (ns_tile_rows). */
norm_max ns_mine_norms_of(ns_matrix m, int64_t r0, int64_t n, int exact16, int normalize,
                          float *buf, float *norms, float *resids, uint16_t *out16, int threads,
                          const float **view, int64_t *ld) {
    *view = NULL;
    if (exact16 && !out16) {
        const uint16_t *x = (const uint16_t *)ns_row(m, r0);
        const int64_t ld = ns_ld(m), d = m.cols;
        float mx = 0.0f;
#pragma omp parallel for num_threads(threads) schedule(static) reduction(max : mx) if (n * d >= 65536)
        for (int64_t r = 0; r < n; r++) {
            float nr = row_norm_bf16(x + r * ld, d);
            norms[r] = nr;
            resids[r] = 0.0f;
            if (nr > mx) mx = nr;
        }
        norm_max mm = {mx, 0.0f};
        return mm;
    }
    *view = ns_tile_rows(m, r0, n, normalize, buf, ld, threads);
    return ns_mine_rows_prepare(*view, *ld, n, m.cols, norms, resids, out16, threads);
}

