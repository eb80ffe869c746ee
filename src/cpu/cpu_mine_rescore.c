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
 * per d = 384 score (CPU time; score_exact's own vector clone takes 30 ns).
 * bf16 → f32 by interleaving zero words below the bits (one unpack per 16 values, not a
 * widening load and a shift): it permutes the lanes within each register (fma_unpacked lists
 * which register holds which lanes), but each lane still sums its own terms in order; the four
 * registers are put back in lane order (two 128-bit shuffles each) before the tree, which runs
 * in registers: the same additions of the same pairs as the scalar tree. 26 ns per d = 384
 * score against 46 ns for the widening loads and the scalar tree (CPU time, rows in cache;
 * the lane order is tested bit for bit in tests/test_mine_exact.cpp). */
#ifdef NS_HAVE_SCAN_AVX512
/* The lanes after unpacking 32 bf16 values t .. t+31 (unpacklo / unpackhi work within 128-bit
 * blocks of 8 values): lo holds t + {0..3, 8..11, 16..19, 24..27} (f32 lanes 0..15), hi
 * t + {4..7, 12..15, 20..23, 28..31}; widened to doubles, a[0] = lo's first 8 lanes
 * (0..3, 8..11), a[1] = lo's last 8 (16..19, 24..27), a[2] = hi's first (4..7, 12..15),
 * a[3] = hi's last (20..23, 28..31). */
__attribute__((target("avx512f,avx512bw"))) static inline void fma_unpacked(__m512i qv, __m512i cv,
                                                                            __m512d *a) {
#define NS_LO(v) _mm512_cvtps_pd(_mm512_castps512_ps256(v))
#define NS_HI(v) _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)))
    const __m512i z = _mm512_setzero_si512();
    const __m512 q0 = _mm512_castsi512_ps(_mm512_unpacklo_epi16(z, qv)),
                 q1 = _mm512_castsi512_ps(_mm512_unpackhi_epi16(z, qv)),
                 c0 = _mm512_castsi512_ps(_mm512_unpacklo_epi16(z, cv)),
                 c1 = _mm512_castsi512_ps(_mm512_unpackhi_epi16(z, cv));
    a[0] = _mm512_fmadd_pd(NS_LO(q0), NS_LO(c0), a[0]);
    a[1] = _mm512_fmadd_pd(NS_HI(q0), NS_HI(c0), a[1]);
    a[2] = _mm512_fmadd_pd(NS_LO(q1), NS_LO(c1), a[2]);
    a[3] = _mm512_fmadd_pd(NS_HI(q1), NS_HI(c1), a[3]);
#undef NS_LO
#undef NS_HI
}

/* The lanes back in order: lanes 0..7 = a[0]'s first 4 and a[2]'s first 4, and so on. */
__attribute__((target("avx512f"))) static inline void lanes_in_order(const __m512d *a,
                                                                     __m512d *b) {
    b[0] = _mm512_shuffle_f64x2(a[0], a[2], 0x44); /* lanes 0..7 */
    b[1] = _mm512_shuffle_f64x2(a[0], a[2], 0xEE); /* 8..15 */
    b[2] = _mm512_shuffle_f64x2(a[1], a[3], 0x44); /* 16..23 */
    b[3] = _mm512_shuffle_f64x2(a[1], a[3], 0xEE); /* 24..31 */
}

/* The tail (t < d, fewer than 32 terms) and the tree, as in score_exact_bf16. */
static float finish_exact(double *acc, const float *q, const float *c, int64_t t, int64_t d,
                          float scale) {
    for (int l = 0; t < d; t++, l++) acc[l] += (double)q[t] * (double)c[t];
    for (int w = 16; w >= 1; w /= 2)
        for (int l = 0; l < w; l++) acc[l] += acc[l + w];
    return (float)((double)scale * acc[0]);
}

/* The tree of score_exact_bf16 on the 32 lanes in order (b[r] = lanes 8r .. 8r+7), in
 * registers: w = 16 adds lanes l + 16 (b[2], b[3]) to l, w = 8 lanes l + 8 (the sums of b[1]'s
 * pair to b[0]'s), then the halves of 4, 2, 1. */
__attribute__((target("avx512f"))) static inline float tree_in_registers(const __m512d *b,
                                                                         float scale) {
    const __m512d x = _mm512_add_pd(_mm512_add_pd(b[0], b[2]), _mm512_add_pd(b[1], b[3]));
    const __m256d y = _mm256_add_pd(_mm512_castpd512_pd256(x), _mm512_extractf64x4_pd(x, 1));
    const __m128d z = _mm_add_pd(_mm256_castpd256_pd128(y), _mm256_extractf128_pd(y, 1));
    return (float)((double)scale * (_mm_cvtsd_f64(z) + _mm_cvtsd_f64(_mm_unpackhi_pd(z, z))));
}

__attribute__((target("avx512f,avx512bw"))) static float
score_exact_bf16_avx512(const uint16_t *q, const uint16_t *c, int64_t d, float scale) {
    __m512d a[4] = {_mm512_setzero_pd(), _mm512_setzero_pd(), _mm512_setzero_pd(),
                    _mm512_setzero_pd()};
    int64_t t = 0;
    for (; t + 32 <= d; t += 32)
        fma_unpacked(_mm512_loadu_si512((const void *)(q + t)),
                     _mm512_loadu_si512((const void *)(c + t)), a);
    __m512d b[4];
    lanes_in_order(a, b);
    if (t == d) return tree_in_registers(b, scale);
    double acc[32];
    for (int r = 0; r < 4; r++) _mm512_storeu_pd(acc + 8 * r, b[r]);
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
 * (query, row) are bucketed by corpus row (a counting sort over blocks of rows), and each
 * bucket's rows — RESCORE_BYTES, a part of a core's L2 — are read while they sit in the cache,
 * the pairs of a bucket in query order, instead of one random corpus row per pair.
 *
 * The reservoirs (tens to hundreds of MiB) are only ever read and written in their own order:
 * the pair list holds each pair's query and row (packed, 8 bytes) and its exact score goes to a
 * list in pair order; a last pass walks the reservoirs again, in the order that filled the list,
 * and takes the scores back. (Scoring straight into the reservoir slots cost three scattered
 * cache misses per pair, ~2/3 of a pair's ~150 ns.) Every pass but the bucket scan splits the
 * queries into one contiguous range per thread; the buckets hold the ranges in thread order, so
 * each bucket's pairs stay in query order. Returns 0, or -1 when the lists cannot be allocated
 * (the caller then re-scores query by query). */
#define RESCORE_BYTES (256 << 10)
#define PAIR_ROW_BITS 16 /* a row's offset in its bucket (buckets hold at most 2^16 rows) */

typedef struct {
    int64_t rows, nb; /* corpus rows per bucket (2^shift), buckets */
    int shift;
    int threads;
    int64_t *at;      /* [threads][nb]: the next list position of each (thread, bucket) */
    uint64_t *pair;   /* query << PAIR_ROW_BITS | row offset in the bucket */
    float *score;     /* s* of each pair */
    int64_t *start;   /* [nb + 1]: each bucket's first pair */
} pair_lists;

/* Thread tid's contiguous range of queries. */
static void query_range(const mine_plan *p, int tid, int threads, int64_t *lo, int64_t *hi) {
    *lo = p->Q * tid / threads;
    *hi = p->Q * (tid + 1) / threads;
}

/* pass 0: count the pairs of each (thread, bucket); 1: list them; 2: take the scores back. */
static void walk_reservoirs(const mine_plan *p, pair_lists *L, int pass, int tid) {
    int64_t lo, hi;
    query_range(p, tid, L->threads, &lo, &hi);
    int64_t *at = L->at + (size_t)tid * (size_t)L->nb;
    for (int64_t i = lo; i < hi; i++) {
        float *s = p->hs + i * p->width, *e = p->es + i * p->width;
        const int64_t *id = p->hi + i * p->width;
        const int64_t cnt = p->cnt[i];
        for (int64_t j = 0; j < cnt; j++) {
            if (!(e[j] > 0.0f)) continue;
            const int64_t b = id[j] >> L->shift;
            if (pass == 0) {
                at[b]++;
            } else if (pass == 1) {
                L->pair[at[b]++] =
                    (uint64_t)i << PAIR_ROW_BITS | (uint64_t)(id[j] & (L->rows - 1));
            } else {
                s[j] = L->score[at[b]++];
                e[j] = 0.0f;
            }
        }
    }
}

/* Each (thread, bucket)'s first list position: buckets in order, threads in order within.
 * counts: L->at holds the counts (pass 0), and each bucket's start is noted; otherwise it holds
 * each segment's end (pass 1: one past its last pair, which is where the next segment starts). */
static void bucket_positions(pair_lists *L, int counts) {
    int64_t pos = 0;
    for (int64_t b = 0; b < L->nb; b++) {
        if (counts) L->start[b] = pos;
        for (int t = 0; t < L->threads; t++) {
            int64_t *c = L->at + (size_t)t * (size_t)L->nb + b;
            const int64_t next = counts ? pos + *c : *c;
            *c = pos;
            pos = next;
        }
    }
    if (counts) L->start[L->nb] = pos;
}

/* The exact scores of bucket b's pairs, into L->score. */
static void score_bucket(const mine_plan *p, const pair_lists *L, const rescorer *rs, int64_t b) {
    const size_t row_bytes = (size_t)p->d * ns_dtype_size(rs->corpus.dtype),
                 q_bytes = (size_t)p->d * ns_dtype_size(rs->q.dtype);
    const int64_t base = b * L->rows, end = L->start[b + 1];
    const uint64_t mask = ((uint64_t)1 << PAIR_ROW_BITS) - 1;
    const float *qr = NULL; /* the f32 row of query `last`, when one was made */
    int64_t last = -1;
    for (int64_t t = L->start[b]; t < end; t++) {
        /* the rows of the pair after next: the score itself is ~30 ns of arithmetic, a row's
         * first touch from memory more */
        if (t + 2 < end) {
            const uint64_t ahead = L->pair[t + 2];
            prefetch_row(ns_row(rs->corpus, base + (int64_t)(ahead & mask)), row_bytes);
            const int64_t qa = (int64_t)(ahead >> PAIR_ROW_BITS);
            if (qa != last) prefetch_row(ns_row(rs->q, qa), q_bytes);
        }
        const int64_t i = (int64_t)(L->pair[t] >> PAIR_ROW_BITS);
        if (i != last) qr = NULL, last = i; /* pairs come in query order within a bucket */
        L->score[t] = score_pair(rs, i, base + (int64_t)(L->pair[t] & mask), &qr);
    }
}

int ns_mine_rescore_in_corpus_order(const mine_plan *p, ns_matrix q, ns_matrix corpus,
                                    float scale) {
    pair_lists L;
    int64_t total = 0;
    for (int64_t i = 0; i < p->Q; i++) total += p->cnt[i];
    const int64_t elem = p->c_exact ? 2 : 4, fit = RESCORE_BYTES / (p->d * elem);
    /* buckets of 2^shift rows (16 .. 2^16, the most that fit): a shift, not a division, per
     * pair in walk_reservoirs (the division was a fifth of those passes' time) */
    L.shift = 4;
    while (L.shift < PAIR_ROW_BITS && ((int64_t)2 << L.shift) <= fit) L.shift++;
    L.rows = (int64_t)1 << L.shift;
    L.nb = (p->N + L.rows - 1) / L.rows;
    L.threads = 1; /* the team's size, set inside the parallel region */
    L.at = (int64_t *)calloc((size_t)p->threads * (size_t)L.nb, sizeof(int64_t));
    L.start = (int64_t *)malloc((size_t)(L.nb + 1) * sizeof(int64_t));
    /* The pair and score lists in the score tile, free now, when they fit: the arena's pages
     * are already there, where fresh malloc'd lists (tens of MiB at k = 1000) fault theirs in
     * on every call (~4 % of a call's CPU time). */
    const size_t n = (size_t)(total > 0 ? total : 1);
    const int in_tile = n * (sizeof(uint64_t) + sizeof(float)) <= p->tile_bytes;
    L.pair = in_tile ? (uint64_t *)(void *)p->tile : (uint64_t *)malloc(n * sizeof(uint64_t));
    L.score = in_tile ? (float *)(void *)(L.pair + n) : (float *)malloc(n * sizeof(float));
    int rc = -1;
    if (!L.at || !L.start || !L.pair || !L.score) goto done;
#pragma omp parallel num_threads(p->threads)
    {
        int tid = 0;
#ifdef _OPENMP
        tid = omp_get_thread_num();
#pragma omp single
        L.threads = omp_get_num_threads(); /* the team OpenMP gave (at most p->threads) */
#endif
        walk_reservoirs(p, &L, 0, tid);
#pragma omp barrier
#pragma omp single
        bucket_positions(&L, 1);
        walk_reservoirs(p, &L, 1, tid);
#pragma omp barrier
        const rescorer rs = ns_mine_thread_rescorer(p, q, corpus, scale, tid);
#pragma omp for schedule(dynamic, 1)
        for (int64_t b = 0; b < L.nb; b++) score_bucket(p, &L, &rs, b);
#pragma omp single
        bucket_positions(&L, 0);
        walk_reservoirs(p, &L, 2, tid);
    }
    rc = 0;
done:
    free(L.at);
    free(L.start);
    if (!in_tile) {
        free(L.pair);
        free(L.score);
    }
    return rc;
}
