/* Row tiles of the CPU backend (declared in cpu_tiles.h): a fast NaN/Inf scan that reports
 * where, and f32 (optionally L2-normalised) views of a block of rows, shared by ns_similarity
 * and ns_mine_topk. */
#include "cpu_tiles.h"

#include <float.h>
#include <math.h>
#include <string.h>

/* f16 → f32 by exponent re-biasing (exact for normals, subnormals, Inf and NaN); inline and
 * branch-light so a converted corpus block costs little next to its GEMM. */
static inline float f16_to_f32(uint16_t h) {
    const uint32_t shifted_exp = 0x7c00u << 13;
    uint32_t o = ((uint32_t)h & 0x7fffu) << 13;
    uint32_t exp = shifted_exp & o;
    float f;
    o += (uint32_t)(127 - 15) << 23;
    if (exp == shifted_exp) {
        o += (uint32_t)(128 - 16) << 23; /* Inf / NaN keep their payload */
    } else if (exp == 0) {               /* subnormal: let the FPU renormalise */
        o += 1u << 23;
        memcpy(&f, &o, 4);
        f -= 6.103515625e-05f; /* 2^-14 */
        memcpy(&o, &f, 4);
    }
    o |= ((uint32_t)h & 0x8000u) << 16;
    memcpy(&f, &o, 4);
    return f;
}

static inline float bf16_to_f32(uint16_t h) {
    uint32_t o = (uint32_t)h << 16;
    float f;
    memcpy(&f, &o, 4);
    return f;
}

/* Whether one row holds a NaN/Inf: an OR of compares the compiler vectorises. */
static int row_has_nonfinite(ns_matrix m, const void *row) {
    int bad = 0;
    if (m.dtype == NS_F32) {
        const float *x = (const float *)row;
        for (int64_t c = 0; c < m.cols; c++) bad |= !(fabsf(x[c]) <= FLT_MAX);
    } else {
        /* all-ones exponent: f16 0x7c00, bf16 0x7f80 */
        const uint16_t mask = m.dtype == NS_F16 ? 0x7c00u : 0x7f80u;
        const uint16_t *x = (const uint16_t *)row;
        for (int64_t c = 0; c < m.cols; c++) bad |= (x[c] & mask) == mask;
    }
    return bad;
}

static float element_f32(ns_matrix m, const void *row, int64_t c) {
    if (m.dtype == NS_F32) return ((const float *)row)[c];
    if (m.dtype == NS_F16) return f16_to_f32(((const uint16_t *)row)[c]);
    return bf16_to_f32(((const uint16_t *)row)[c]);
}

int ns_tile_find_nonfinite(ns_matrix m, int64_t r0, int64_t n, int64_t *row, int64_t *col,
                           float *value) {
    for (int64_t r = r0; r < r0 + n; r++) {
        const void *p = ns_row(m, r);
        if (!row_has_nonfinite(m, p)) continue;
        for (int64_t c = 0; c < m.cols; c++) {
            float v = element_f32(m, p, c);
            if (!isfinite(v)) {
                *row = r;
                *col = c;
                *value = v;
                return 1;
            }
        }
    }
    return 0;
}

ns_status ns_tile_fail_nonfinite(ns_context *ctx, const char *fn, const char *name, int64_t row,
                                 int64_t col, float value) {
    return ns_fail(ctx, NS_ERR_NONFINITE, "%s: %s[%lld][%lld] is %g; inputs must be finite", fn,
                   name, (long long)row, (long long)col, (double)value);
}

#if defined(__GNUC__) && defined(__x86_64__)
#include <immintrin.h>
#define NS_HAVE_F16C_PATH 1
/* The hardware conversion (F16C, exact like the scalar one), 8 halves per instruction. */
__attribute__((target("f16c,avx"))) static void f16_row_f16c(const uint16_t *h, float *out,
                                                             int64_t d) {
    int64_t c = 0;
    for (; c + 8 <= d; c += 8)
        _mm256_storeu_ps(out + c, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(h + c))));
    for (; c < d; c++) out[c] = f16_to_f32(h[c]);
}
#endif

static void convert_row(ns_matrix m, int64_t r, int normalize, float *out) {
    const void *row = ns_row(m, r);
    int64_t d = m.cols;
    if (m.dtype == NS_F32) {
        memcpy(out, row, (size_t)d * sizeof(float));
    } else if (m.dtype == NS_F16) {
        const uint16_t *h = (const uint16_t *)row;
#ifdef NS_HAVE_F16C_PATH
        if (__builtin_cpu_supports("f16c") && __builtin_cpu_supports("avx")) {
            f16_row_f16c(h, out, d);
        } else
#endif
            for (int64_t c = 0; c < d; c++) out[c] = f16_to_f32(h[c]);
    } else {
        const uint16_t *h = (const uint16_t *)row;
        for (int64_t c = 0; c < d; c++) out[c] = bf16_to_f32(h[c]);
    }
    if (!normalize) return;
    double ss = 0.0;
    for (int64_t c = 0; c < d; c++) ss += (double)out[c] * out[c];
    /* A zero row has no direction: it stays zero, so every score with it is 0 (not NaN). */
    if (ss == 0.0) return;
    float inv = (float)(1.0 / sqrt(ss));
    for (int64_t c = 0; c < d; c++) out[c] *= inv;
}

const float *ns_tile_rows(ns_matrix m, int64_t r0, int64_t n, int normalize, float *buf,
                          int64_t *ld, int threads) {
    if (!ns_tile_needs_buffer(m, normalize)) {
        *ld = ns_ld(m);
        return (const float *)ns_row(m, r0);
    }
    *ld = m.cols;
    int64_t d = m.cols;
    /* Small tiles are not worth waking the thread team. */
    int par = threads > 1 && n * d >= 65536;
#pragma omp parallel for num_threads(threads) schedule(static) if (par)
    for (int64_t r = 0; r < n; r++) convert_row(m, r0 + r, normalize, buf + r * d);
    return buf;
}

