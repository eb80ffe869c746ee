/* ns_similarity: s = scale · q · pᵀ on the CPU, tile by tile through OpenBLAS, plus the row
 * tiles (NaN scan, f16/bf16 conversion, L2 normalisation) that ns_mine_topk shares. */
#include "ns_tiles.h"
#ifdef NS_HAVE_CUDA
#include "ns_cuda.h"
#endif

#include <float.h>
#include <limits.h>
#include <math.h>
#include <string.h>

/* ---------------------------------------------------------------- row tiles */

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

/* ---------------------------------------------------------------- ns_similarity */

/* Rows per tile. A p tile is converted once and reused against every q tile; q tiles are
 * reconverted per p tile (a cost of 1/P_TILE of the product). Large enough that each sgemm call
 * keeps OpenBLAS's own blocking efficient. */
#define Q_TILE 2048
#define P_TILE 4096

static ns_status check_int_dims(ns_context *ctx, const char *fn, const char *name, ns_matrix m) {
    if (m.cols > INT_MAX || ns_ld(m) > INT_MAX)
        return ns_fail(ctx, NS_ERR_UNSUPPORTED,
                       "%s: %s.cols (%lld) / ld (%lld) exceed the BLAS limit of %d", fn, name,
                       (long long)m.cols, (long long)ns_ld(m), INT_MAX);
    return NS_OK;
}

ns_status ns_similarity(ns_context *ctx, ns_matrix q, ns_matrix p, float scale, unsigned flags,
                        float *s) {
    static const char *fn = "ns_similarity";
    ns_status st;
    if ((st = ns_check_context(ctx, fn))) return st;
    if ((st = ns_check_matrix(ctx, fn, "q", q, 0))) return st;
    if ((st = ns_check_matrix(ctx, fn, "p", p, 0))) return st;
    if (q.cols != p.cols)
        return ns_fail(ctx, NS_ERR_INVALID_ARGUMENT, "%s: q has %lld columns but p has %lld", fn,
                       (long long)q.cols, (long long)p.cols);
    if (!isfinite(scale))
        return ns_fail(ctx, NS_ERR_INVALID_ARGUMENT, "%s: scale (%g) must be finite", fn,
                       (double)scale);
    if (flags & ~NS_NORMALIZE)
        return ns_fail(ctx, NS_ERR_INVALID_ARGUMENT,
                       "%s: flags (0x%x) has bits other than NS_NORMALIZE (0x%x)", fn, flags,
                       NS_NORMALIZE);
    if ((st = ns_check_ptr(ctx, fn, "s", s))) return st;
    if ((st = check_int_dims(ctx, fn, "q", q))) return st;
    if ((st = check_int_dims(ctx, fn, "p", p))) return st;
    if (p.rows > INT_MAX)
        return ns_fail(ctx, NS_ERR_UNSUPPORTED,
                       "%s: p.rows (%lld) exceeds the BLAS limit of %d for the output's ld", fn,
                       (long long)p.rows, INT_MAX);
#ifdef NS_HAVE_CUDA
    if (ctx->backend == NS_BACKEND_CUDA) return ns_cuda_similarity(ctx, q, p, scale, flags, s);
#endif

    /* Scan first (O((Q+P)·d), far below the product) so s is never half-written. */
    int64_t row, col;
    float value;
    if (ns_tile_find_nonfinite(q, 0, q.rows, &row, &col, &value))
        return ns_tile_fail_nonfinite(ctx, fn, "q", row, col, value);
    if (ns_tile_find_nonfinite(p, 0, p.rows, &row, &col, &value))
        return ns_tile_fail_nonfinite(ctx, fn, "p", row, col, value);

    const int normalize = (flags & NS_NORMALIZE) != 0;
    const int threads = ns_threads(ctx);
    const int64_t d = q.cols, P = p.rows;
    const int64_t qt = q.rows < Q_TILE ? q.rows : Q_TILE;
    const int64_t pt = P < P_TILE ? P : P_TILE;
    size_t qbytes = ns_tile_needs_buffer(q, normalize) ? (size_t)(qt * d) * sizeof(float) : 0;
    size_t pbytes = ns_tile_needs_buffer(p, normalize) ? (size_t)(pt * d) * sizeof(float) : 0;
    qbytes = (qbytes + 63) & ~(size_t)63;
    char *ws = (char *)ns_workspace(ctx, NS_WS_SIMILARITY, qbytes + pbytes);
    if (!ws)
        return ns_fail(ctx, NS_ERR_OUT_OF_MEMORY, "%s: cannot allocate %zu bytes of tile workspace",
                       fn, qbytes + pbytes);
    float *qbuf = (float *)ws, *pbuf = (float *)(ws + qbytes);

    /* With a single q tile, convert it once rather than once per p tile. */
    const int q_once = q.rows <= qt;
    int64_t ldq = 0;
    const float *qv = q_once ? ns_tile_rows(q, 0, q.rows, normalize, qbuf, &ldq, threads) : NULL;
    for (int64_t p0 = 0; p0 < P; p0 += pt) {
        int64_t np = P - p0 < pt ? P - p0 : pt, ldp;
        const float *pv = ns_tile_rows(p, p0, np, normalize, pbuf, &ldp, threads);
        for (int64_t q0 = 0; q0 < q.rows; q0 += qt) {
            int64_t nq = q.rows - q0 < qt ? q.rows - q0 : qt;
            if (!q_once) qv = ns_tile_rows(q, q0, nq, normalize, qbuf, &ldq, threads);
            /* OpenBLAS threads itself: one call per tile from this thread. */
            ns_sgemm_nt(nq, np, d, scale, qv, ldq, pv, ldp, 0.0f, s + q0 * P + p0, P);
        }
    }
    return NS_OK;
}
