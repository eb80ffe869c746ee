/* ns_mine_topk on the CPU, internal: what its files share.
 *   cpu_mine_topk.c    the driver: plan and workspace, the score bound per query, the stream over
 *                      corpus blocks (GEMM, then the tile merged into per-query reservoirs), the
 *                      results
 *   cpu_mine_scan.c    the score-tile scan (AVX-512 compress, or portable)
 *   cpu_mine_reservoir.c  candidates into a reservoir, a shrink's passes (AVX-512, or portable)
 *   cpu_mine_order.c   radix thresholds, the radix sort of the final lists, quickselect/heapsort
 *   cpu_mine_rescore.c the exact score s* of a pair, the re-score of short lists in corpus order
 *   cpu_mine_rows.c    row norms, bf16 rounding-residual norms and bf16 copies
 * Nothing here is public (src/cpu/ns_cpu.h declares ns_cpu_mine_topk). */
#ifndef NS_CPU_MINE_H
#define NS_CPU_MINE_H

#include "ns_internal.h"

#include <float.h>
#include <stdint.h>
#include <string.h>

#if defined(__GNUC__) && defined(__x86_64__)
#include <immintrin.h>
#define NS_HAVE_SCAN_AVX512 1 /* AVX-512 versions exist (chosen at run time) */
#endif

/* Vector clones (chosen at run time) of loops whose result must not depend on the clone: each
 * is written so that every lane sums in the same order whatever the vector width. */
#if defined(__GNUC__) && defined(__x86_64__) && !defined(__clang__)
#define NS_VECTOR_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define NS_VECTOR_CLONES
#endif

/* Scores tested per step: one vectorised compare each, then a branch per chunk. */
#define CHUNK 32

/* Excluded corpus rows are overwritten in the tile with this score, which never passes a
 * threshold (thresholds never go below it). A real score of exactly -FLT_MAX (at the edge of f32
 * overflow) is therefore never returned. */
#define EXCLUDED (-FLT_MAX)

/* Whether a score needs a look: above the threshold, or not finite (NaN, ±Inf). Non-finite
 * scores are how NaN/Inf in the corpus shows (a product with Inf or NaN is never finite, with or
 * without normalisation), so the corpus needs no scan of its own: one pass over it, by the GEMM.
 * (A bad corpus row that every query excludes is never ranked, and goes unreported.) */
static inline int needs_look(float v, float thr) { return !(v <= thr) | !(v >= -FLT_MAX); }

/* f32 → uint32 in the same order (−0 just below +0; NaN beyond ±Inf). */
static inline uint32_t order_key(float x) {
    uint32_t u;
    memcpy(&u, &x, 4);
    return (u & 0x80000000u) ? ~u : u | 0x80000000u;
}

static inline float key_value(uint32_t key) {
    uint32_t u = (key & 0x80000000u) ? key & 0x7fffffffu : ~key;
    float x;
    memcpy(&x, &u, 4);
    return x;
}

/* The next float above / below a finite x (nextafterf without the libm call); ±Inf and NaN
 * are returned as they are. Branch-free (selects), so that the loops over reservoirs that
 * bound every entry vectorise. */
static inline float step_float(float x, int dir) {
    uint32_t u;
    memcpy(&u, &x, 4);
    const uint32_t mag = u & 0x7fffffffu;
    const int away = (int)(u >> 31) == (dir < 0); /* negative going down, positive going up */
    uint32_t r = away ? u + 1u : u - 1u;          /* away from / towards zero */
    r = mag == 0 ? (dir > 0 ? 0x00000001u : 0x80000001u) : r; /* ±0 → ±FLT_TRUE_MIN */
    r = mag >= 0x7f800000u ? u : r;                           /* ±Inf, NaN as they are */
    memcpy(&x, &r, 4);
    return x;
}

static inline float up(float x) { return step_float(x, 1); }
static inline float down(float x) { return step_float(x, -1); }

/* One call's blocking and workspace: the score tile, the converted corpus block and query
 * tile if needed (f32 views; bf16 copies for the bf16 GEMM), per-thread scratch (threshold keys,
 * the scan's column list, two rows to re-score), the rows' norms, and per query a reservoir of
 * cap + CHUNK (ŝ, e, row), its fill count and threshold. */
typedef struct {
    int64_t Q, N, d, k, qb, cb, cap, width;
    int normalize, threads, q_once, avx512;
    int thread_tiles;     /* each thread computes and merges its own sub-tiles */
    int64_t sq, sr;       /* a thread's sub-tile: queries × corpus rows */
    int64_t sf;           /* the corpus rows of the stream's first sub-tile (≥ sr) */
    int convert_q, convert_c;
    int bf16;             /* the bf16 GEMM (oneDNN) computes ŝ */
    int q_exact, c_exact; /* q / corpus are bf16 data used as they are (no rounding) */
    float *tile; /* the score tile, or each thread's sub-tile (thread_tiles) */
    size_t tile_bytes; /* free once the corpus is streamed: the re-score's lists, if they fit */
    float *cbuf, *qbuf, *rows;
    uint32_t *keys; /* per thread: max(cb, width) */
    int32_t *cols;  /* per thread: cb + 16 */
    uint64_t *sortbuf; /* per thread: 2 · width */
    uint16_t *qb16, *cb16;
    float *qn, *cn;       /* ‖q_i‖, ‖c_j‖ of the block, rounded up */
    float *qr, *cr;       /* ‖q_i − bf16(q_i)‖, the same of the block's c_j, rounded up */
    float *hs, *es, *thr;
    int64_t *hi, *cnt;
} mine_plan;

/* One query's bound for one corpus block (query_bound in cpu_mine_topk.c): e_j = fq·‖c_j‖ +
 * gq·‖c_j − bf16(c_j)‖ + A, every step rounded up. */
typedef struct {
    float fq, gq;    /* per query, rounded up */
    const float *cn; /* ‖c_j‖ of the block's rows, rounded up */
    const float *cr; /* ‖c_j − bf16(c_j)‖, rounded up; NULL where the term is 0 (f32 GEMM, or a
                      * bf16 corpus used as it is) */
    float abs_e;     /* A, rounded up */
    float emax;      /* the largest e_j of the block, rounded up */
} row_bound;

static inline float ns_mine_bound_of(const row_bound *b, int64_t j) {
    float e = up(b->fq * b->cn[j]);
    if (b->cr) e = up(e + up(b->gq * b->cr[j]));
    return up(e + b->abs_e);
}

/* A query's reservoir while a tile row is merged: cnt entries (ŝ, e, row); room for cap + CHUNK
 * (the AVX-512 passes write whole registers of 16 past the last entry). */
typedef struct {
    float *s, *e;
    int64_t *id;
    int64_t cnt, cap;
} reservoir;

/* ---------------------------------------------------------------- cpu_mine_order.c */

/* Puts the entry of rank m (ns_before) at position m, the better before it, the worse after. */
void ns_mine_select_nth(float *s, int64_t *id, int64_t n, int64_t m);
/* Sorts n entries best first (ns_before): the fallback of the radix sort. */
void ns_mine_sort_best_first_heap(float *s, int64_t *id, int64_t n);
/* A lower bound t of the k-th largest of n order keys, as a key: at least k keys are ≥ t, and
 * either t is the k-th largest or fewer than k + NS_MINE_KTH_SLACK keys are ≥ t. */
#define NS_MINE_KTH_SLACK 32
uint32_t ns_mine_kth_key_floor(const uint32_t *key, int64_t n, int64_t k);
/* Sorts n (score, row) pairs best first (rows < 2^32); -1 (nothing sorted) on a −0 score. */
int ns_mine_sort_best_first_radix(float *s, int64_t *id, int64_t n, uint64_t *buf);

/* ---------------------------------------------------------------- cpu_mine_scan.c */

/* Whether the AVX-512 scan and scorers apply (the CPU has them, NS_CPU_MINE_SCAN != portable). */
int ns_mine_scan_avx512_usable(void);
/* The columns t of row[0, n) with needs_look(row[t], thr), increasing, into out (room n + 16). */
int64_t ns_mine_scan_row(const float *row, int64_t n, float thr, int32_t *out, int avx512);

/* ---------------------------------------------------------------- cpu_mine_reservoir.c */

/* Appends the listed columns cols[c, stop) of a tile row (scores of corpus rows base + column)
 * that can enter the top-k — ŝ > pre, and ŝ + e_j > thr with e_j the column's own bound — to
 * the reservoir, until the list ends or the reservoir holds cap. Returns -(the list position
 * reached) - 1, or the list position of a non-finite score (which stops it). */
int64_t ns_mine_take_listed(const float *row, const int32_t *cols, int64_t c, int64_t stop,
                            const row_bound *b, float pre, float thr, int64_t base, reservoir *r,
                            int avx512);
/* keys[j] = order_key of entry j's lower bound: down(ŝ − e), or ŝ once exact (e = 0). */
void ns_mine_lower_keys(const float *s, const float *e, int64_t n, uint32_t *keys, int avx512);
/* Keeps, in order, the entries whose upper bound (up(ŝ + e), or ŝ once exact) is ≥ t; returns
 * their count. */
int64_t ns_mine_keep_above(float *s, float *e, int64_t *id, int64_t n, float t, int avx512);

/* ---------------------------------------------------------------- cpu_mine_rescore.c */

/* Re-scores exactly: what each thread needs (its row buffers) and where the rows are. */
typedef struct {
    ns_matrix q, corpus;
    int normalize;
    int raw16; /* q and corpus are bf16 data used as they are: scored from their bits */
    int avx512; /* the AVX-512 scorers apply (the same bits) */
    float scale;
    float *qrow, *crow; /* this thread's d floats each */
} rescorer;

rescorer ns_mine_thread_rescorer(const mine_plan *p, ns_matrix q, ns_matrix corpus, float scale,
                                 int tid);
/* Candidates with a bound (e > 0) get their exact score and e = 0. */
void ns_mine_rescore(const rescorer *rs, int64_t query, float *s, float *e, const int64_t *id,
                     int64_t n);
/* The same for every reservoir, in corpus order; -1 when its lists cannot be allocated. */
int ns_mine_rescore_in_corpus_order(const mine_plan *p, ns_matrix q, ns_matrix corpus,
                                    float scale);

/* ---------------------------------------------------------------- cpu_mine_rows.c */

/* The largest norm and the largest bf16 residual norm of some rows. */
typedef struct {
    float norm, resid;
} norm_max;

norm_max ns_mine_rows_prepare(const float *v, int64_t ld, int64_t n, int64_t d, float *norms,
                              float *resids, uint16_t *out16, int threads);
norm_max ns_mine_norms_of(ns_matrix m, int64_t r0, int64_t n, int exact16, int normalize,
                          float *buf, float *norms, float *resids, uint16_t *out16, int threads,
                          const float **view, int64_t *ld);

#endif
