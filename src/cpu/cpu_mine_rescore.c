/* The exact re-score of ns_mine_topk on the CPU (cpu_mine.h): s* for a (query, corpus row) pair,
 * f32 and bf16 rows, with vector versions that give the same bits; and the re-score of every
 * short-listed candidate in corpus order. */
#include "cpu_mine.h"
#include "cpu_tiles.h"

#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

/* s* = fl32(α · Σ q_t c_t), the sum in double in one fixed order (32 interleaved partial sums,
 * then a pairwise tree): products of f32 values are exact in double, so this is the real score
 * to (d+1)·2^-53 relative, rounded once, the same bits on every machine and thread count. */
/* Vector clones (chosen at run time) compute the same bits: each of the 32 lanes sums in the
 * same order whatever the vector width, and the products are exact (no contraction matters). */
NS_VECTOR_CLONES
static float score_exact(const float *q, const float *c, int64_t d, float scale) {
    double acc[32];
    for (int l = 0; l < 32; l++) acc[l] = 0.0;
    int64_t t = 0;
    for (; t + 32 <= d; t += 32)
        for (int l = 0; l < 32; l++) acc[l] += (double)q[t + l] * (double)c[t + l];
    for (int l = 0; t < d; t++, l++) acc[l] += (double)q[t] * (double)c[t];
    for (int w = 16; w >= 1; w /= 2)
        for (int l = 0; l < w; l++) acc[l] += acc[l + w];
    return (float)((double)scale * acc[0]);
}

/* The same score for bf16 rows (bits; widened exactly): no f32 copy of either row. */
NS_VECTOR_CLONES
static float score_exact_bf16(const uint16_t *q, const uint16_t *c, int64_t d, float scale) {
    double acc[32];
    for (int l = 0; l < 32; l++) acc[l] = 0.0;
    int64_t t = 0;
    for (; t + 32 <= d; t += 32)
        for (int l = 0; l < 32; l++) {
            uint32_t a = (uint32_t)q[t + l] << 16, b = (uint32_t)c[t + l] << 16;
            float fa, fb;
            memcpy(&fa, &a, 4);
            memcpy(&fb, &b, 4);
            acc[l] += (double)fa * (double)fb;
        }
    for (int l = 0; t < d; t++, l++) {
        uint32_t a = (uint32_t)q[t] << 16, b = (uint32_t)c[t] << 16;
        float fa, fb;
        memcpy(&fa, &a, 4);
        memcpy(&fb, &b, 4);
        acc[l] += (double)fa * (double)fb;
    }
    for (int w = 16; w >= 1; w /= 2)
        for (int l = 0; l < w; l++) acc[l] += acc[l + w];
    return (float)((double)scale * acc[0]);
}

/* An AVX-512 version of score_exact_bf16 (chosen at run time): the 32 lanes are four registers
 * of 8 doubles, lane l summing the same terms in the same order, and an FMA of widened bf16
 * values in double rounds once, as the exact product and the add do, so the bits are the same.
 * Written out because the compiler's version of the loop above shuffles: 81 ns against 35 ns
 * per d = 384 score (CPU time; score_exact's own vector clone takes 30 ns). */
#ifdef NS_HAVE_SCAN_AVX512
__attribute__((target("avx512f"))) static inline void fma32(__m512 x0, __m512 x1, __m512 y0,
                                                            __m512 y1, __m512d *a) {
#define NS_LO(v) _mm512_cvtps_pd(_mm512_castps512_ps256(v))
#define NS_HI(v) _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)))
    a[0] = _mm512_fmadd_pd(NS_LO(x0), NS_LO(y0), a[0]);
    a[1] = _mm512_fmadd_pd(NS_HI(x0), NS_HI(y0), a[1]);
    a[2] = _mm512_fmadd_pd(NS_LO(x1), NS_LO(y1), a[2]);
    a[3] = _mm512_fmadd_pd(NS_HI(x1), NS_HI(y1), a[3]);
#undef NS_LO
#undef NS_HI
}

__attribute__((target("avx512f"))) static inline __m512 widen16(const uint16_t *x) {
    __m512i w = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(const void *)x));
    return _mm512_castsi512_ps(_mm512_slli_epi32(w, 16));
}

/* The tail (t < d, fewer than 32 terms) and the tree, as in score_exact_bf16. */
static float finish_exact(double *acc, const float *q, const float *c, int64_t t, int64_t d,
                          float scale) {
    for (int l = 0; t < d; t++, l++) acc[l] += (double)q[t] * (double)c[t];
    for (int w = 16; w >= 1; w /= 2)
        for (int l = 0; l < w; l++) acc[l] += acc[l + w];
    return (float)((double)scale * acc[0]);
}

__attribute__((target("avx512f"))) static float score_exact_bf16_avx512(const uint16_t *q,
                                                                        const uint16_t *c,
                                                                        int64_t d, float scale) {
    __m512d a[4] = {_mm512_setzero_pd(), _mm512_setzero_pd(), _mm512_setzero_pd(),
                    _mm512_setzero_pd()};
    int64_t t = 0;
    for (; t + 32 <= d; t += 32)
        fma32(widen16(q + t), widen16(q + t + 16), widen16(c + t), widen16(c + t + 16), a);
    double acc[32];
    for (int r = 0; r < 4; r++) _mm512_storeu_pd(acc + 8 * r, a[r]);
    float qt[32], ct[32];
    for (int64_t j = t; j < d; j++) {
        uint32_t u = (uint32_t)q[j] << 16, v = (uint32_t)c[j] << 16;
        memcpy(&qt[j - t], &u, 4);
        memcpy(&ct[j - t], &v, 4);
    }
    return finish_exact(acc, qt, ct, 0, d - t, scale);
}
#endif

static const float *f32_row(ns_matrix m, int64_t r, int normalize, float *buf) {
    int64_t ld;
    return ns_tile_rows(m, r, 1, normalize, buf, &ld, 1);
}

/* s* of query row `query` and corpus row `row`; *qr caches the query's f32 row (NULL at first). */
static float score_pair(const rescorer *rs, int64_t query, int64_t row, const float **qr) {
    if (rs->raw16) {
        const uint16_t *a = (const uint16_t *)ns_row(rs->q, query);
        const uint16_t *b = (const uint16_t *)ns_row(rs->corpus, row);
#ifdef NS_HAVE_SCAN_AVX512
        if (rs->avx512) return score_exact_bf16_avx512(a, b, rs->q.cols, rs->scale);
#endif
        return score_exact_bf16(a, b, rs->q.cols, rs->scale);
    }
    if (!*qr) *qr = f32_row(rs->q, query, rs->normalize, rs->qrow);
    const float *cr = f32_row(rs->corpus, row, rs->normalize, rs->crow);
    return score_exact(*qr, cr, rs->q.cols, rs->scale);
}

/* Candidates with a bound get their exact score (and e = 0). */
void ns_mine_rescore(const rescorer *rs, int64_t query, float *s, float *e, const int64_t *id,
                     int64_t n) {
    const float *qr = NULL;
    for (int64_t j = 0; j < n; j++) {
        if (e[j] == 0.0f) continue;
        s[j] = score_pair(rs, query, id[j], &qr);
        e[j] = 0.0f;
    }
}

/* Thread tid's re-scorer. */
rescorer ns_mine_thread_rescorer(const mine_plan *p, ns_matrix q, ns_matrix corpus, float scale,
                                 int tid) {
    float *rows = p->rows + (size_t)tid * 2 * (size_t)p->d;
    rescorer rs = {q, corpus, p->normalize, p->q_exact && p->c_exact, p->avx512, scale, rows,
                   rows + p->d};
    return rs;
}

static inline void prefetch_row(const void *row, size_t bytes) {
    for (size_t o = 0; o < bytes; o += 64) __builtin_prefetch((const char *)row + o, 0);
}

/* Re-scores every short-listed candidate that still has a bound, in corpus order: the pairs
 * (query, slot) are bucketed by corpus row (a counting sort over blocks of rows), and each
 * bucket's rows — RESCORE_BYTES, a part of a core's L2 — are read while they sit in the cache,
 * the pairs of a bucket in query order (each query row read once per bucket), instead of one
 * random corpus row per pair. Returns 0, or -1 when the pair list cannot be allocated (the
 * caller then re-scores query by query). */
#define RESCORE_BYTES (256 << 10)
int ns_mine_rescore_in_corpus_order(const mine_plan *p, ns_matrix q, ns_matrix corpus,
                                    float scale) {
    int64_t total = 0;
    for (int64_t i = 0; i < p->Q; i++) total += p->cnt[i];
    const int64_t elem = p->c_exact ? 2 : 4, fit = RESCORE_BYTES / (p->d * elem);
    const int64_t rows = fit < 16 ? 16 : fit, nb = (p->N + rows - 1) / rows;
    int64_t *start = (int64_t *)calloc((size_t)nb + 1, sizeof(int64_t));
    int64_t *pair = (int64_t *)malloc((size_t)(total > 0 ? total : 1) * sizeof(int64_t));
    if (!start || !pair) {
        free(start);
        free(pair);
        return -1;
    }
    for (int64_t i = 0; i < p->Q; i++)
        for (int64_t j = 0; j < p->cnt[i]; j++)
            if (p->es[i * p->width + j] > 0.0f) start[p->hi[i * p->width + j] / rows + 1]++;
    for (int64_t b = 0; b < nb; b++) start[b + 1] += start[b];
    int64_t *fill = (int64_t *)malloc((size_t)nb * sizeof(int64_t));
    if (!fill) {
        free(start);
        free(pair);
        return -1;
    }
    memcpy(fill, start, (size_t)nb * sizeof(int64_t));
    for (int64_t i = 0; i < p->Q; i++)
        for (int64_t j = 0; j < p->cnt[i]; j++) {
            int64_t at = i * p->width + j;
            if (p->es[at] > 0.0f) pair[fill[p->hi[at] / rows]++] = at;
        }
    free(fill);
#pragma omp parallel for num_threads(p->threads) schedule(dynamic, 1)
    for (int64_t b = 0; b < nb; b++) {
        int tid = 0;
#ifdef _OPENMP
        tid = omp_get_thread_num();
#endif
        const rescorer rs = ns_mine_thread_rescorer(p, q, corpus, scale, tid);
        const size_t row_bytes = (size_t)p->d * ns_dtype_size(corpus.dtype),
                     q_bytes = (size_t)p->d * ns_dtype_size(q.dtype);
        const float *qr = NULL; /* the f32 row of query `last`, when one was made */
        int64_t last = -1;
        for (int64_t t = start[b]; t < start[b + 1]; t++) {
            /* The reservoir slots of the pairs ahead are scattered over all queries' reservoirs
             * (tens of MiB): fetch them early. */
            if (t + 8 < start[b + 1]) {
                const int64_t ahead = pair[t + 8];
                __builtin_prefetch(p->hi + ahead, 0);
                __builtin_prefetch(p->hs + ahead, 1);
                __builtin_prefetch(p->es + ahead, 1);
            }
            /* and the rows of the pair after next: the score itself is ~30 ns of arithmetic,
             * a row's first touch from memory more */
            if (t + 2 < start[b + 1]) {
                const int64_t ahead = pair[t + 2];
                prefetch_row(ns_row(corpus, p->hi[ahead]), row_bytes);
                if (ahead / p->width != last) prefetch_row(ns_row(q, ahead / p->width), q_bytes);
            }
            const int64_t at = pair[t], i = at / p->width;
            if (i != last) qr = NULL, last = i; /* pairs come in query order within a bucket */
            p->hs[at] = score_pair(&rs, i, p->hi[at], &qr);
            p->es[at] = 0.0f;
        }
    }
    free(start);
    free(pair);
    return 0;
}
