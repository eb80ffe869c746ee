/* Row norms, bf16 rounding-residual norms and bf16 copies for ns_mine_topk on the CPU
 * (cpu_mine.h): the rows' part of the score bound (src/hostdevice/ns_bound.h), in one pass. */
#include "cpu_mine.h"
#include "cpu_tiles.h"

#include <math.h>
#include <string.h>

/* Round to nearest even bf16 (bits); NaN stays NaN or becomes ±Inf: non-finite either way,
 * and reported through its scores. */
static inline uint32_t bf16_round(uint32_t b) { return b + 0x7fffu + ((b >> 16) & 1u); }
static inline uint16_t bf16_bits(uint32_t b) { return (uint16_t)(bf16_round(b) >> 16); }

/* The sums of squares below are 32 lanes, lane l summing the terms t ≡ l (mod 32) in increasing
 * t, then a pairwise tree — one order, so the portable and AVX-512 versions give the same bits.
 * Squares of f32 values and of bf16 residuals are exact in double, so only the additions round;
 * any order would do (the bound carries a margin for it), a fixed one keeps the bits of the
 * bounds the same on every path. */
static inline double lanes_total(double *acc) {
    for (int w = 16; w >= 1; w /= 2)
        for (int l = 0; l < w; l++) acc[l] += acc[l + w];
    return acc[0];
}

/* One term: x², and the square of x's bf16 rounding residual (exact in f32 and double). */
static inline void lane_add(double *acc, double *res, float x, uint32_t u) {
    const uint32_t h = bf16_round(u) & 0xffff0000u;
    float xh;
    memcpy(&xh, &h, 4);
    const double r = (double)x - (double)xh;
    *acc += (double)x * (double)x;
    *res += r * r;
}

/* The tail (the last d mod 32 terms from t) and the totals: ‖row‖ and the residual norm, each
 * rounded up to f32. */
static float finish_prepare(double *acc, double *res, const float *x, int64_t t, int64_t d,
                            float *resid) {
    const uint32_t *u = (const uint32_t *)(const void *)x;
    for (int l = 0; t < d; t++, l++) lane_add(acc + l, res + l, x[t], u[t]);
    *resid = up((float)sqrt(lanes_total(res)));
    return up((float)sqrt(lanes_total(acc)));
}

/* ‖row‖ and ‖row − bf16(row)‖ (the bf16 rounding residual) in double from an f32 view, each
 * rounded up to f32, and, when out16, the bf16 copy. */
NS_VECTOR_CLONES
static float row_prepare_portable(const float *x, int64_t d, uint16_t *out16, float *resid) {
    double acc[32], res[32];
    for (int l = 0; l < 32; l++) acc[l] = res[l] = 0.0;
    const uint32_t *u = (const uint32_t *)(const void *)x;
    int64_t t = 0;
    for (; t + 32 <= d; t += 32)
        for (int l = 0; l < 32; l++) lane_add(acc + l, res + l, x[t + l], u[t + l]);
    if (out16)
        for (int64_t j = 0; j < d; j++) out16[j] = bf16_bits(u[j]);
    return finish_prepare(acc, res, x, t, d, resid);
}

/* ‖row‖ of a bf16 row from its bits (the same norm as of its f32 widening), rounded up; the
 * same lanes and tree. */
NS_VECTOR_CLONES
static float row_norm_bf16_portable(const uint16_t *x, int64_t d) {
    double acc[32];
    for (int l = 0; l < 32; l++) acc[l] = 0.0;
    for (int64_t t = 0; t < d; t++) {
        const uint32_t u = (uint32_t)x[t] << 16;
        float f;
        memcpy(&f, &u, 4);
        acc[t % 32] += (double)f * (double)f;
    }
    return up((float)sqrt(lanes_total(acc)));
}

#ifdef NS_HAVE_SCAN_AVX512
/* AVX-512 versions (chosen at run time; the compiler's clones of the loops above stay scalar:
 * ~1 µs a d = 768 row, 15 % of a mining call at Q = 512). Lanes 0-7, 8-15, 16-23, 24-31 are the
 * four registers a[0..3]; each FMA adds an exact square, rounding once as the add does. */
#define NS_AVX512_ROWS __attribute__((target("avx512f")))
NS_AVX512_ROWS static inline __m512d lo8(__m512 v) {
    return _mm512_cvtps_pd(_mm512_castps512_ps256(v));
}
NS_AVX512_ROWS static inline __m512d hi8(__m512 v) {
    return _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
}

/* 16 terms into lanes a[0], a[1] (residuals r[0], r[1]); the bf16 bits to out16 when given. */
NS_AVX512_ROWS static inline void prepare16(const float *x, uint16_t *out16, __m512d *a,
                                            __m512d *r) {
    const __m512i u = _mm512_loadu_si512((const void *)x);
    const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
    const __m512i h = _mm512_add_epi32(u, _mm512_add_epi32(_mm512_set1_epi32(0x7fff), odd));
    if (out16)
        _mm256_storeu_si256((__m256i *)(void *)out16,
                            _mm512_cvtepi32_epi16(_mm512_srli_epi32(h, 16)));
    const __m512 xv = _mm512_castsi512_ps(u);
    const __m512 xh = _mm512_castsi512_ps(_mm512_and_si512(h, _mm512_set1_epi32((int)0xffff0000u)));
    const __m512d x0 = lo8(xv), x1 = hi8(xv);
    const __m512d r0 = _mm512_sub_pd(x0, lo8(xh)), r1 = _mm512_sub_pd(x1, hi8(xh));
    a[0] = _mm512_fmadd_pd(x0, x0, a[0]);
    a[1] = _mm512_fmadd_pd(x1, x1, a[1]);
    r[0] = _mm512_fmadd_pd(r0, r0, r[0]);
    r[1] = _mm512_fmadd_pd(r1, r1, r[1]);
}

NS_AVX512_ROWS static float row_prepare_avx512(const float *x, int64_t d, uint16_t *out16,
                                               float *resid) {
    __m512d a[4], r[4];
    for (int l = 0; l < 4; l++) a[l] = r[l] = _mm512_setzero_pd();
    int64_t t = 0;
    for (; t + 32 <= d; t += 32) {
        prepare16(x + t, out16 ? out16 + t : NULL, a, r);
        prepare16(x + t + 16, out16 ? out16 + t + 16 : NULL, a + 2, r + 2);
    }
    if (out16) {
        const uint32_t *u = (const uint32_t *)(const void *)x;
        for (int64_t j = t; j < d; j++) out16[j] = bf16_bits(u[j]);
    }
    double acc[32], res[32];
    for (int l = 0; l < 4; l++) {
        _mm512_storeu_pd(acc + 8 * l, a[l]);
        _mm512_storeu_pd(res + 8 * l, r[l]);
    }
    return finish_prepare(acc, res, x, t, d, resid);
}

NS_AVX512_ROWS static inline __m512 widen16(const uint16_t *x) {
    const __m512i w = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(const void *)x));
    return _mm512_castsi512_ps(_mm512_slli_epi32(w, 16));
}

NS_AVX512_ROWS static float row_norm_bf16_avx512(const uint16_t *x, int64_t d) {
    __m512d a[4];
    for (int l = 0; l < 4; l++) a[l] = _mm512_setzero_pd();
    int64_t t = 0;
    for (; t + 32 <= d; t += 32) {
        const __m512 v0 = widen16(x + t), v1 = widen16(x + t + 16);
        a[0] = _mm512_fmadd_pd(lo8(v0), lo8(v0), a[0]);
        a[1] = _mm512_fmadd_pd(hi8(v0), hi8(v0), a[1]);
        a[2] = _mm512_fmadd_pd(lo8(v1), lo8(v1), a[2]);
        a[3] = _mm512_fmadd_pd(hi8(v1), hi8(v1), a[3]);
    }
    double acc[32];
    for (int l = 0; l < 4; l++) _mm512_storeu_pd(acc + 8 * l, a[l]);
    for (int l = 0; t < d; t++, l++) {
        const uint32_t u = (uint32_t)x[t] << 16;
        float f;
        memcpy(&f, &u, 4);
        acc[l] += (double)f * (double)f;
    }
    return up((float)sqrt(lanes_total(acc)));
}
#endif

static float row_prepare(const float *x, int64_t d, uint16_t *out16, float *resid, int avx512) {
#ifdef NS_HAVE_SCAN_AVX512
    if (avx512) return row_prepare_avx512(x, d, out16, resid);
#else
    (void)avx512;
#endif
    return row_prepare_portable(x, d, out16, resid);
}

static float row_norm_bf16(const uint16_t *x, int64_t d, int avx512) {
#ifdef NS_HAVE_SCAN_AVX512
    if (avx512) return row_norm_bf16_avx512(x, d);
#else
    (void)avx512;
#endif
    return row_norm_bf16_portable(x, d);
}

/* Norms and residual norms (row_prepare) of n rows of an f32 view, and (when out16) their
 * bf16 copy; returns the largest of each. */
norm_max ns_mine_rows_prepare(const float *v, int64_t ld, int64_t n, int64_t d, float *norms,
                              float *resids, uint16_t *out16, int threads) {
    float mx = 0.0f, rx = 0.0f;
    const int avx512 = ns_mine_scan_avx512_usable();
#pragma omp parallel for num_threads(threads) schedule(static) reduction(max : mx, rx) if (n * d >= 65536)
    for (int64_t r = 0; r < n; r++) {
        float rr, nr = row_prepare(v + r * ld, d, out16 ? out16 + r * d : NULL, &rr, avx512);
        if (norms) norms[r] = nr;
        if (resids) resids[r] = rr;
        if (nr > mx) mx = nr;
        if (rr > rx) rx = rr;
    }
    norm_max m = {mx, rx};
    return m;
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
        const int avx512 = ns_mine_scan_avx512_usable();
#pragma omp parallel for num_threads(threads) schedule(static) reduction(max : mx) if (n * d >= 65536)
        for (int64_t r = 0; r < n; r++) {
            float nr = row_norm_bf16(x + r * ld, d, avx512);
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

