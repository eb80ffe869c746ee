/* ns_mine_topk on the CPU: exact top-k corpus rows per query.
 *
 * The corpus is streamed once, block by block (so a memory-mapped corpus larger than RAM is read
 * once, in order). For each corpus block and each query tile, OpenBLAS computes the score tile
 * (one sgemm call from this thread; OpenBLAS threads itself), then an OpenMP team merges the
 * tile into per-query reservoirs of candidates. Corpus rows arrive in increasing index order, so
 * a new score can matter only when strictly above the query's running k-th best score (a tie
 * loses to the lower row already held): one vectorised compare per score, appends rare, and a
 * quickselect now and then. Reservoirs live in the context's scratch arena and reach index/score
 * only once the whole call has succeeded. */
#include "cpu_tiles.h"
#include "ns_cpu.h"
#include "ns_bound.h"
#include "ns_order.h"

#include <float.h>
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

/* ---------------------------------------------------------------- ordering, heapsort, quickselect */

/* a ranks below b (ns_order.h): b comes before a. */
static inline int worse(float sa, int64_t ia, float sb, int64_t ib) { return ns_before(sb, ib, sa, ia); }

static inline void heap_push(float *hs, int64_t *hi, int64_t n, float s, int64_t id) {
    int64_t c = n;
    while (c > 0) {
        int64_t p = (c - 1) / 2;
        if (!worse(s, id, hs[p], hi[p])) break;
        hs[c] = hs[p];
        hi[c] = hi[p];
        c = p;
    }
    hs[c] = s;
    hi[c] = id;
}

/* Sifts (s, id) down from the root of a heap of n entries (replacing the root). */
static inline void heap_sift(float *hs, int64_t *hi, int64_t n, float s, int64_t id) {
    int64_t c = 0;
    for (;;) {
        int64_t l = 2 * c + 1;
        if (l >= n) break;
        int64_t m = (l + 1 < n && worse(hs[l + 1], hi[l + 1], hs[l], hi[l])) ? l + 1 : l;
        if (!worse(hs[m], hi[m], s, id)) break;
        hs[c] = hs[m];
        hi[c] = hi[m];
        c = m;
    }
    hs[c] = s;
    hi[c] = id;
}

/* In-place heapsort of a worst-at-root heap: leaves the n entries best first. */
static void heap_sort_best_first(float *hs, int64_t *hi, int64_t n) {
    for (int64_t end = n - 1; end > 0; end--) {
        float s = hs[end];
        int64_t id = hi[end];
        hs[end] = hs[0];
        hi[end] = hi[0];
        heap_sift(hs, hi, end, s, id);
    }
}

/* Puts the entry of rank m (in the order ns_before) at position m, the better ones before it
 * and the worse after (quickselect with a median-of-three pivot; rows are unique, so the order
 * is strict and the loops terminate). */
#define before ns_before

static inline void swap_entries(float *s, int64_t *id, int64_t a, int64_t b) {
    float ts = s[a];
    int64_t ti = id[a];
    s[a] = s[b];
    id[a] = id[b];
    s[b] = ts;
    id[b] = ti;
}

static void select_nth(float *s, int64_t *id, int64_t n, int64_t m) {
    int64_t lo = 0, hi = n - 1;
    while (hi - lo >= 16) {
        int64_t mid = lo + (hi - lo) / 2;
        if (before(s[mid], id[mid], s[lo], id[lo])) swap_entries(s, id, mid, lo);
        if (before(s[hi], id[hi], s[lo], id[lo])) swap_entries(s, id, hi, lo);
        if (before(s[hi], id[hi], s[mid], id[mid])) swap_entries(s, id, hi, mid);
        float ps = s[mid];
        int64_t pi = id[mid];
        int64_t i = lo, j = hi;
        while (i <= j) {
            while (before(s[i], id[i], ps, pi)) i++;
            while (before(ps, pi, s[j], id[j])) j--;
            if (i <= j) swap_entries(s, id, i++, j--);
        }
        if (m <= j) hi = j;
        else if (m >= i) lo = i;
        else return;
    }
    for (int64_t i = lo + 1; i <= hi; i++) /* insertion sort of the last few */
        for (int64_t j = i; j > lo && before(s[j], id[j], s[j - 1], id[j - 1]); j--)
            swap_entries(s, id, j, j - 1);
}

/* ---------------------------------------------------------------- thresholds by radix
 * A threshold only has to be a lower bound of the k-th largest value, not the k-th itself, so it
 * is found by two counting passes over order keys (no data movement, no unpredictable branches):
 * the 22-bit key prefix (sign, exponent, 13 fraction bits) that holds the k-th largest, and its
 * lower edge as the threshold — at least k values are ≥ it, and it lies within 2^-13 relative
 * below the k-th, far inside any score bound. */

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

#define RADIX_BITS 11
#define RADIX_BINS (1 << RADIX_BITS)

/* The bin of hist (from the top) where the running count from above reaches k; *above = the
 * count in the bins above it. */
static int top_bin(const uint32_t *hist, int64_t k, int64_t *above) {
    int64_t acc = *above;
    int b = RADIX_BINS - 1;
    for (; b > 0; b--) {
        if (acc + (int64_t)hist[b] >= k) break;
        acc += hist[b];
    }
    *above = acc;
    return b;
}

/* Counts the 11-bit digit (key >> shift) of the keys whose higher bits (key >> (shift + 11))
 * equal `prefix` (all keys when shift = 21) into hist. Four interleaved partial histograms:
 * scores cluster in a few bins, and one counter incremented back to back waits on itself. */
static void count_digits(const uint32_t *key, int64_t n, int shift, uint32_t prefix,
                         uint32_t *hist) {
    uint32_t part[4][RADIX_BINS];
    memset(part, 0, sizeof part);
    const int top = shift + RADIX_BITS;
    int64_t j = 0;
    for (; j + 4 <= n; j += 4)
        for (int l = 0; l < 4; l++) {
            const uint32_t x = key[j + l];
            if (top >= 32 || x >> top == prefix) part[l][(x >> shift) & (RADIX_BINS - 1)]++;
        }
    for (; j < n; j++)
        if (top >= 32 || key[j] >> top == prefix) part[0][(key[j] >> shift) & (RADIX_BINS - 1)]++;
    for (int b = 0; b < RADIX_BINS; b++) hist[b] = part[0][b] + part[1][b] + part[2][b] + part[3][b];
}

/* A lower bound, within 2^-13 relative, of the k-th largest of the n keys (1 ≤ k ≤ n), as a
 * key: the lower edge of the 22-bit prefix bin that holds the k-th largest. */
static uint32_t kth_key_floor(const uint32_t *key, int64_t n, int64_t k) {
    uint32_t hist[RADIX_BINS];
    count_digits(key, n, 21, 0, hist);
    int64_t above = 0;
    const uint32_t b1 = (uint32_t)top_bin(hist, k, &above);
    count_digits(key, n, 10, b1, hist);
    const uint32_t b2 = (uint32_t)top_bin(hist, k, &above);
    return b1 << 21 | b2 << 10;
}

/* A score that is not finite although the inputs were: q·c overflowed f32. */
typedef struct {
    int set;
    int64_t query, row;
    float value;
} bad_score;

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

/* Bit t set where needs_look(r[t], thr), t < 32: two vector compares per 4 scores. */
static inline uint32_t chunk_mask(const float *r, float thr) {
#if defined(__SSE2__)
    const __m128 t = _mm_set1_ps(thr), lo = _mm_set1_ps(-FLT_MAX);
    uint32_t m = 0;
    for (int i = 0; i < CHUNK; i += 4) {
        __m128 v = _mm_loadu_ps(r + i);
        m |= (uint32_t)_mm_movemask_ps(_mm_or_ps(_mm_cmpnle_ps(v, t), _mm_cmpnge_ps(v, lo))) << i;
    }
    return m;
#else
    uint32_t m = 0;
    for (int i = 0; i < CHUNK; i++) m |= (uint32_t)needs_look(r[i], thr) << i;
    return m;
#endif
}

/* The columns t of row[0, n) with needs_look(row[t], thr), in increasing order, into out (room
 * for n + 16); returns their count. The AVX-512 version (chosen at run time) compresses 16
 * columns per compare into the list (compress to a register, then one store: the memory form of
 * vpcompressd is slow on Zen 4); the portable one takes the SSE2 mask of 32 at a time. */
static int64_t scan_row_portable(const float *row, int64_t n, float thr, int32_t *out) {
    int64_t cnt = 0, j0 = 0;
    for (; j0 + CHUNK <= n; j0 += CHUNK)
        for (uint32_t m = chunk_mask(row + j0, thr); m; m &= m - 1)
            out[cnt++] = (int32_t)(j0 + __builtin_ctz(m));
    for (; j0 < n; j0++)
        if (needs_look(row[j0], thr)) out[cnt++] = (int32_t)j0;
    return cnt;
}

#if defined(__GNUC__) && defined(__x86_64__)
#include <immintrin.h>
#define NS_HAVE_SCAN_AVX512 1
__attribute__((target("avx512f"))) static int64_t scan_row_avx512(const float *row, int64_t n,
                                                                   float thr, int32_t *out) {
    const __m512 t = _mm512_set1_ps(thr), lo = _mm512_set1_ps(-FLT_MAX);
    const __m512i step = _mm512_set1_epi32(16);
    __m512i idx = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    int64_t cnt = 0, j = 0;
    for (; j + 16 <= n; j += 16, idx = _mm512_add_epi32(idx, step)) {
        const __m512 v = _mm512_loadu_ps(row + j);
        const __mmask16 m = (__mmask16)(_mm512_cmp_ps_mask(v, t, _CMP_NLE_UQ) |
                                        _mm512_cmp_ps_mask(v, lo, _CMP_NGE_UQ));
        if (m) {
            _mm512_storeu_si512((void *)(out + cnt), _mm512_maskz_compress_epi32(m, idx));
            cnt += __builtin_popcount(m);
        }
    }
    for (; j < n; j++)
        if (needs_look(row[j], thr)) out[cnt++] = (int32_t)j;
    return cnt;
}
#endif

/* Whether scan_row and the exact scorers may take their AVX-512 versions: the CPU has it, and
 * NS_CPU_MINE_SCAN is not "portable" (the lists and scores are the same either way; the
 * variable lets tests cover both). */
static int scan_avx512_usable(void) {
#ifdef NS_HAVE_SCAN_AVX512
    const char *v = getenv("NS_CPU_MINE_SCAN");
    if (v && !strcmp(v, "portable")) return 0;
    return __builtin_cpu_supports("avx512f") ? 1 : 0;
#else
    return 0;
#endif
}

static int64_t scan_row(const float *row, int64_t n, float thr, int32_t *out, int avx512) {
#ifdef NS_HAVE_SCAN_AVX512
    if (avx512) return scan_row_avx512(row, n, thr, out);
#else
    (void)avx512;
#endif
    return scan_row_portable(row, n, thr, out);
}

/* ---------------------------------------------------------------- two-stage exact mining
 *
 * The GEMM (f32, or bf16 at about twice the speed) gives each score ŝ with a proven bound e:
 * |ŝ − s*| ≤ e, s* the exact score (src/hostdevice/ns_bound.h: its definition, the derivation,
 * e = K·|α|·‖q‖·‖c‖ + A). Each query keeps a reservoir of candidates (ŝ, e, row) — e = 0 once a
 * candidate is re-scored exactly — and a threshold T, a proven lower bound of its k-th best
 * exact score so far: the k-th largest of the lower bounds ŝ − e held. A new row (rows arrive in
 * increasing order) can enter the top-k only if ŝ + e > T: otherwise k held rows, all lower, score
 * at least as much. One vectorised compare per score against T − max e, appends rare; when the
 * reservoir is full, T is recomputed and only candidates with ŝ + e ≥ T are kept (the short
 * list). At the end the short list is re-scored exactly (ns_score_exact) and the k best kept,
 * ties to the lower row: the result is exact f32 mining whatever GEMM, blocking or thread count
 * produced ŝ. Reservoirs live in the context's scratch arena and reach index/score only once the
 * whole call has succeeded. */

/* s* = fl32(α · Σ q_t c_t), the sum in double in one fixed order (32 interleaved partial sums,
 * then a pairwise tree): products of f32 values are exact in double, so this is the real score
 * to (d+1)·2^-53 relative, rounded once, the same bits on every machine and thread count. */
/* Vector clones (chosen at run time) compute the same bits: each of the 32 lanes sums in the
 * same order whatever the vector width, and the products are exact (no contraction matters). */
#if defined(__GNUC__) && defined(__x86_64__) && !defined(__clang__)
#define NS_VECTOR_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define NS_VECTOR_CLONES
#endif
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

static inline float up(float x) { return step_float(x, 1); }
static inline float down(float x) { return step_float(x, -1); }

/* What select_row needs besides the tile row: the bound's parts for this query and block. */
typedef struct {
    float fq, gq;    /* per query (query_bound), rounded up */
    const float *cn; /* ‖c_j‖ of the block's rows, rounded up */
    const float *cr; /* ‖c_j − bf16(c_j)‖, rounded up; NULL on the f32 GEMM (no such term) */
    float abs_e;     /* A, rounded up */
    float emax;      /* the largest e_j of the block, rounded up */
} row_bound;

static inline float bound_of(const row_bound *b, int64_t j) {
    float e = up(b->fq * b->cn[j]);
    if (b->cr) e = up(e + up(b->gq * b->cr[j]));
    return up(e + b->abs_e);
}

/* Re-scores exactly: what each thread needs (its row buffers) and where the rows are. */
typedef struct {
    ns_matrix q, corpus;
    int normalize;
    int raw16; /* q and corpus are bf16 data used as they are: scored from their bits */
    int avx512; /* the AVX-512 scorers apply (the same bits) */
    float scale;
    float *qrow, *crow; /* this thread's d floats each */
} rescorer;

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
static void rescore(const rescorer *rs, int64_t query, float *s, float *e, const int64_t *id,
                    int64_t n) {
    const float *qr = NULL;
    for (int64_t j = 0; j < n; j++) {
        if (e[j] == 0.0f) continue;
        s[j] = score_pair(rs, query, id[j], &qr);
        e[j] = 0.0f;
    }
}

/* The reservoir's short list: T = a lower bound (kth_key_floor) of the k-th largest lower bound
 * held, then only candidates whose upper bound reaches T are kept (the others score below k held
 * rows). When that still fills more than three quarters of the room, the survivors are
 * re-scored exactly and exactly k kept (so the reservoir always makes progress; with the bounds
 * of bf16 rounding the short list is ~2.4·k, and the room 5·k, so this is rare). Returns the
 * count; *thr = T. keys: room for cnt. */
static int64_t shrink(const rescorer *rs, int64_t query, float *s, float *e, int64_t *id,
                      int64_t cnt, int64_t k, int64_t cap, uint32_t *keys, float *thr) {
    if (cnt <= k) return cnt;
    for (int64_t j = 0; j < cnt; j++) keys[j] = order_key(e[j] > 0.0f ? down(s[j] - e[j]) : s[j]);
    float t = key_value(kth_key_floor(keys, cnt, k));
    int64_t n = 0;
    for (int64_t j = 0; j < cnt; j++) { /* branch-free compaction: entries past n are dropped */
        const float sj = s[j], ej = e[j];
        const int64_t ij = id[j];
        s[n] = sj, e[n] = ej, id[n] = ij;
        n += (ej > 0.0f ? up(sj + ej) : sj) >= t;
    }
    if (n > cap - cap / 4) {
        rescore(rs, query, s, e, id, n);
        select_nth(s, id, n, k - 1); /* e is all 0 now */
        n = k;
        t = s[k - 1];
    }
    if (!(t >= EXCLUDED)) t = EXCLUDED;
    *thr = t;
    return n;
}

/* A query's first threshold from its first tile row, before any candidate is held: k rows of
 * the row have ŝ ≥ the row's k-th largest, so lower bounds ≥ it − emax. The row's own keys are
 * counted (kth_key_floor on a copy would cost the same passes plus the copy). EXCLUDED when the
 * row holds NaN or +Inf near the top (reported by the scan that follows) or k > n. */
static float first_threshold(const float *row, int64_t n, int64_t k, float emax, uint32_t *keys) {
    if (k > n) return EXCLUDED;
    for (int64_t t = 0; t < n; t++) keys[t] = order_key(row[t]);
    float top = key_value(kth_key_floor(keys, n, k));
    if (!(fabsf(top) <= FLT_MAX)) return EXCLUDED;
    float thr = down(down(top) - emax);
    return thr >= EXCLUDED ? thr : EXCLUDED;
}

/* What a thread brings to select_row: its scratch (keys for shrink and first_threshold: room for
 * max(width, cb)), its candidate list (cb + 16 columns), whether the AVX-512 scan applies. */
typedef struct {
    uint32_t *keys;
    int32_t *cols;
    int avx512;
} row_scratch;

/* Merges one query's tile row (scores of corpus rows base .. base+n-1) into its reservoir: the
 * scan lists the columns above the row's pre-threshold T − max e (rare), then each listed column
 * is checked against its own bound and the threshold as it stands (shrinks raise it). */
static void select_row(const float *row, int64_t n, int64_t base, const row_bound *b, float *s,
                       float *e, int64_t *id, int64_t *count, float *threshold, int64_t k,
                       int64_t cap, int64_t query, const row_scratch *ws, const rescorer *rs,
                       bad_score *bad) {
    int64_t cnt = *count;
    float thr = *threshold;
    if (cnt == 0 && thr == EXCLUDED && n > cap) thr = first_threshold(row, n, k, b->emax, ws->keys);
    float pre = down(thr - b->emax); /* ŝ ≤ pre cannot reach ŝ + e > thr */
    if (!(pre >= EXCLUDED)) pre = EXCLUDED;
    const int64_t m = scan_row(row, n, pre, ws->cols, ws->avx512);
    for (int64_t c = 0; c < m; c++) {
        const int64_t j = ws->cols[c];
        const float v = row[j];
        if (!(fabsf(v) <= FLT_MAX)) { /* NaN or ±Inf: report, stop ranking this query */
#pragma omp critical(ns_mine_bad)
            if (!bad->set || query < bad->query) {
                bad->set = 1;
                bad->query = query;
                bad->row = base + j;
                bad->value = v;
            }
            *count = cnt;
            return;
        }
        if (!(v > pre)) continue; /* below a threshold raised since the scan */
        float ej = bound_of(b, j);
        if (!(up(v + ej) > thr)) continue;
        s[cnt] = v;
        e[cnt] = ej;
        id[cnt] = base + j;
        if (++cnt >= cap) {
            cnt = shrink(rs, query, s, e, id, cnt, k, cap, ws->keys, &thr);
            pre = down(thr - b->emax);
            if (!(pre >= EXCLUDED)) pre = EXCLUDED;
        }
    }
    *count = cnt;
    *threshold = thr;
}

/* ---------------------------------------------------------------- checks */

/* The exclusion lists' data (their shape was checked by ns_mine_topk). */
static ns_status check_exclusions(ns_context *ctx, const char *fn, const ns_id_lists *ex,
                                  int64_t queries, int64_t corpus_rows) {
    if (!ex) return NS_OK;
    return ns_check_id_lists_data(ctx, fn, "options->exclude", ex, queries, corpus_rows,
                                  "the corpus rows", NULL);
}

/* ---------------------------------------------------------------- the CPU backend */

/* One call's blocking and workspace: the score tile, the converted corpus block and query
 * tile if needed (f32 views; bf16 copies for the bf16 GEMM), per-thread scratch (threshold keys,
 * the scan's column list, two rows to re-score), the rows' norms, and per query a reservoir of
 * cap + CHUNK (ŝ, e, row), its fill count and threshold. */
typedef struct {
    int64_t Q, N, d, k, qb, cb, cap, width;
    int normalize, threads, q_once, avx512;
    int convert_q, convert_c;
    int bf16;             /* the bf16 GEMM (oneDNN) computes ŝ */
    int q_exact, c_exact; /* q / corpus are bf16 data used as they are (no rounding) */
    float *tile, *cbuf, *qbuf, *rows;
    uint32_t *keys; /* per thread: max(cb, width) */
    int32_t *cols;  /* per thread: cb + 16 */
    uint64_t *sortbuf; /* per thread: 2 · width */
    uint16_t *qb16, *cb16;
    float *qn, *cn;       /* ‖q_i‖, ‖c_j‖ of the block, rounded up */
    float *qr, *cr;       /* ‖q_i − bf16(q_i)‖, the same of the block's c_j, rounded up */
    float *hs, *es, *thr;
    int64_t *hi, *cnt;
} mine_plan;

static void mine_layout(void *plan, ns_arena *a) {
    mine_plan *p = (mine_plan *)plan;
    const size_t scratch = (size_t)(p->cb > p->width ? p->cb : p->width);
    p->tile = (float *)ns_arena_carve(a, (size_t)(p->qb * p->cb) * sizeof(float));
    p->cbuf = (float *)ns_arena_carve(a, p->convert_c ? (size_t)(p->cb * p->d) * sizeof(float) : 0);
    p->qbuf = (float *)ns_arena_carve(a, p->convert_q ? (size_t)(p->qb * p->d) * sizeof(float) : 0);
    p->cb16 = (uint16_t *)ns_arena_carve(
        a, p->bf16 && !p->c_exact ? (size_t)(p->cb * p->d) * sizeof(uint16_t) : 0);
    p->qb16 = (uint16_t *)ns_arena_carve(
        a, p->bf16 && !p->q_exact ? (size_t)(p->qb * p->d) * sizeof(uint16_t) : 0);
    p->keys = (uint32_t *)ns_arena_carve(a, (size_t)p->threads * scratch * sizeof(uint32_t));
    p->cols = (int32_t *)ns_arena_carve(a, (size_t)p->threads * (size_t)(p->cb + 16) * sizeof(int32_t));
    p->sortbuf = (uint64_t *)ns_arena_carve(a, (size_t)p->threads * 2 * (size_t)p->width * sizeof(uint64_t));
    p->rows = (float *)ns_arena_carve(a, (size_t)p->threads * 2 * (size_t)p->d * sizeof(float));
    p->qn = (float *)ns_arena_carve(a, (size_t)p->Q * sizeof(float));
    p->cn = (float *)ns_arena_carve(a, (size_t)p->cb * sizeof(float));
    p->qr = (float *)ns_arena_carve(a, (size_t)p->Q * sizeof(float));
    p->cr = (float *)ns_arena_carve(a, (size_t)p->cb * sizeof(float));
    p->hs = (float *)ns_arena_carve(a, (size_t)(p->Q * p->width) * sizeof(float));
    p->es = (float *)ns_arena_carve(a, (size_t)(p->Q * p->width) * sizeof(float));
    p->hi = (int64_t *)ns_arena_carve(a, (size_t)(p->Q * p->width) * sizeof(int64_t));
    p->cnt = (int64_t *)ns_arena_carve(a, (size_t)p->Q * sizeof(int64_t));
    p->thr = (float *)ns_arena_carve(a, (size_t)p->Q * sizeof(float));
}

/* Which GEMM gives ŝ: the bf16 one where oneDNN is built in, unless NS_CPU_MINE_GEMM=f32 (the
 * result is the same either way; the variable is for benchmarks and tests). */
static int want_bf16(void) {
    const char *v = getenv("NS_CPU_MINE_GEMM");
    if (v && !strcmp(v, "f32")) return 0;
    return ns_gemm_has_bf16();
}

static void mine_plan_init(mine_plan *p, ns_context *ctx, ns_matrix q, ns_matrix corpus,
                           int64_t k, const ns_mine_options *opt) {
    p->normalize = (opt->flags & NS_NORMALIZE) != 0;
    p->threads = ns_threads(ctx);
    p->Q = q.rows, p->N = corpus.rows, p->d = q.cols, p->k = k;
    p->convert_q = ns_tile_needs_buffer(q, p->normalize);
    p->convert_c = ns_tile_needs_buffer(corpus, p->normalize);
    p->bf16 = want_bf16();
    p->q_exact = q.dtype == NS_BF16 && !p->normalize;
    p->c_exact = corpus.dtype == NS_BF16 && !p->normalize;
    /* Blocking: see ns_mine_corpus_block (cpu_tiles.h). */
    p->qb = ns_mine_query_block(p->Q);
    p->cb = ns_mine_corpus_block(p->Q, p->N, p->d, p->convert_c);
    p->q_once = p->Q <= p->qb; /* one query tile: convert it once for the whole corpus */
    p->avx512 = scan_avx512_usable();
    /* A larger cap means rarer shrinks but a threshold that lags more. The bf16 bound keeps
     * short lists of about 3·k (unit vectors): room for them, or shrinks re-score early. */
    int64_t extra = k < 64 ? 64 : k > 4096 ? 4096 : k;
    if (p->bf16 && !(p->q_exact && p->c_exact)) extra = 4 * k < 1024 ? 1024 : 4 * k;
    p->cap = k + extra;
    p->width = p->cap + CHUNK;
}

/* Names the non-finite score found in a tile: q was scanned up front, so the culprit is the
 * corpus row, or an overflow. */
static ns_status fail_bad_score(ns_context *ctx, const char *fn, ns_matrix corpus,
                                const bad_score *bad) {
    int64_t row, col;
    float value;
    if (ns_tile_find_nonfinite(corpus, bad->row, 1, &row, &col, &value))
        return ns_tile_fail_nonfinite(ctx, fn, "corpus", row, col, value);
    return ns_fail(ctx, NS_ERR_NONFINITE,
                   "%s: the score of query %lld and corpus row %lld is %g although the inputs "
                   "are finite: q·corpus overflows f32 (scale the embeddings or options->scale "
                   "down)",
                   fn, (long long)bad->query, (long long)bad->row, (double)bad->value);
}

/* Thread tid's re-scorer. */
static rescorer thread_rescorer(const mine_plan *p, ns_matrix q, ns_matrix corpus, float scale,
                                int tid) {
    float *rows = p->rows + (size_t)tid * 2 * (size_t)p->d;
    rescorer rs = {q, corpus, p->normalize, p->q_exact && p->c_exact, p->avx512, scale, rows,
                   rows + p->d};
    return rs;
}

/* The bound's constants of one GEMM call (ns_bound.h). */
typedef struct {
    int residual; /* the bf16 GEMM's bound with rounding residuals (ns_bound.h, 7) */
    double rel;   /* K·|α| (f32 GEMM), K0·|α| (bf16 GEMM) */
    double aabs;  /* |α| */
    float abs_e;  /* A, rounded up */
    float cmax;   /* max ‖c_j‖ of the block */
    float crmax;  /* max ‖c_j − bf16(c_j)‖ of the block */
} tile_bound;

/* Query qi's part of the bound (ns_bound.h): e_j = fq·‖c_j‖ + gq·‖c_j − bf16(c_j)‖ + A, with
 * fq = |α|·(K0·‖q‖ + ‖q − bf16(q)‖) and gq = |α|·(1 + u_b)·‖q‖ on the bf16 GEMM (each relative
 * part times NS_BOUND_SAFETY), fq = K·|α|·‖q‖ and no gq on the f32 GEMM; everything rounded up. */
static row_bound query_bound(const mine_plan *p, const tile_bound *tb, int64_t qi) {
    row_bound b;
    const double qn = (double)p->qn[qi];
    b.cn = p->cn;
    b.abs_e = tb->abs_e;
    if (tb->residual) {
        b.fq = up((float)(tb->rel * qn + tb->aabs * NS_BOUND_SAFETY * (double)p->qr[qi]));
        b.gq = up((float)(tb->aabs * NS_BOUND_SAFETY * (1.0 + NS_BOUND_U_BF16) * qn));
        b.cr = p->cr;
        b.emax = up(up(up(b.fq * tb->cmax) + up(b.gq * tb->crmax)) + b.abs_e);
    } else {
        b.fq = up((float)(tb->rel * qn));
        b.gq = 0.0f;
        b.cr = NULL;
        b.emax = up(up(b.fq * tb->cmax) + b.abs_e);
    }
    return b;
}

/* Merges the score tile of queries [q0, q0+nq) × corpus rows [c0, c0+nc) into the reservoirs,
 * excluded rows first overwritten with EXCLUDED. */
static void merge_tile(const mine_plan *p, ns_matrix q, ns_matrix corpus, float scale,
                       const ns_id_lists *ex, int64_t q0, int64_t nq, int64_t c0, int64_t nc,
                       const tile_bound *tb, bad_score *bad) {
    const size_t scratch = (size_t)(p->cb > p->width ? p->cb : p->width);
    /* Dynamic chunks: a thread that the OS preempts (a busy machine) does not hold the whole
     * tile back. */
#pragma omp parallel for num_threads(p->threads) schedule(dynamic, 32)
    for (int64_t i = 0; i < nq; i++) {
        int tid = 0;
#ifdef _OPENMP
        tid = omp_get_thread_num();
#endif
        const int64_t qi = q0 + i;
        float *trow = p->tile + i * nc;
        if (ex)
            for (int64_t t = ex->offsets[qi]; t < ex->offsets[qi + 1]; t++) {
                int64_t id = ex->ids[t];
                if (id >= c0 && id < c0 + nc) trow[id - c0] = EXCLUDED;
            }
        row_bound b = query_bound(p, tb, qi);
        rescorer rs = thread_rescorer(p, q, corpus, scale, tid);
        row_scratch ws = {p->keys + (size_t)tid * scratch, p->cols + (size_t)tid * (size_t)(p->cb + 16),
                          p->avx512};
        select_row(trow, nc, c0, &b, p->hs + qi * p->width, p->es + qi * p->width,
                   p->hi + qi * p->width, p->cnt + qi, p->thr + qi, p->k, p->cap, qi, &ws, &rs,
                   bad);
    }
}

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
 * bf16 copy; returns the largest norm, *rmax the largest residual norm. */
typedef struct {
    float norm, resid;
} norm_max;

static norm_max rows_prepare(const float *v, int64_t ld, int64_t n, int64_t d, float *norms,
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
static norm_max norms_of(ns_matrix m, int64_t r0, int64_t n, int exact16, int normalize,
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
    return rows_prepare(*view, *ld, n, m.cols, norms, resids, out16, threads);
}

/* Streams the corpus once, block by block; each block against every query tile. The f32 views
 * of bf16/f16 data (conversion passes) are made only where a GEMM needs them: never for bf16
 * inputs on the bf16 GEMM. */
static ns_status stream_corpus(ns_context *ctx, const char *fn, mine_plan *p, ns_matrix q,
                               ns_matrix corpus, const ns_mine_options *opt) {
    const int64_t Q = p->Q, N = p->N, d = p->d;
    bad_score bad = {0, 0, 0, 0.0f};
    int64_t ldq = 0;
    /* ‖q_i‖ once, from the rows the exact score uses. */
    float qmax = 0.0f;
    const float *qv = NULL;
    for (int64_t q0 = 0; q0 < Q; q0 += p->qb) {
        const int64_t nq = Q - q0 < p->qb ? Q - q0 : p->qb;
        norm_max m = norms_of(q, q0, nq, p->q_exact, p->normalize, p->qbuf, p->qn + q0,
                              p->qr + q0, NULL, p->threads, &qv, &ldq);
        if (m.norm > qmax) qmax = m.norm;
    }
    const uint16_t *q16 = NULL;
    int64_t ldq16 = d;
    /* the query tile's f32 view / bf16 copy is current (one tile: the view of the norms pass) */
    int qv_ok = p->q_once && qv, q16_ok = 0;
    const double aabs = fabs((double)opt->scale);
    for (int64_t c0 = 0; c0 < N; c0 += p->cb) {
        const int64_t nc = N - c0 < p->cb ? N - c0 : p->cb;
        int64_t ldc = 0;
        const float *cv = NULL;
        tile_bound tb;
        const int convert16 = p->bf16 && !p->c_exact;
        norm_max cm = norms_of(corpus, c0, nc, p->c_exact && p->bf16, p->normalize, p->cbuf,
                               p->cn, p->cr, convert16 ? p->cb16 : NULL, p->threads, &cv, &ldc);
        tb.cmax = cm.norm;
        tb.crmax = cm.resid;
        /* This block by bf16 when the rows are within the bound's range (ns_bound.h, 5); a
         * block outside it (its bf16 copy may hold ±Inf) takes the f32 GEMM. */
        const int bf16 = p->bf16 && qmax <= NS_BOUND_MAX_ABS && tb.cmax <= NS_BOUND_MAX_ABS;
        const uint16_t *c16 = NULL;
        int64_t ldc16 = d;
        if (bf16) {
            if (p->c_exact) {
                c16 = (const uint16_t *)ns_row(corpus, c0);
                ldc16 = ns_ld(corpus);
            } else {
                c16 = p->cb16;
            }
        }
        tb.residual = bf16;
        tb.rel = (bf16 ? ns_bound_residual_relative(d) : ns_bound_relative(d, 0)) * aabs;
        tb.abs_e = up((float)ns_bound_absolute(d, aabs));
        tb.aabs = aabs;
        for (int64_t q0 = 0; q0 < Q; q0 += p->qb) {
            const int64_t nq = Q - q0 < p->qb ? Q - q0 : p->qb;
            if (!p->q_once) qv_ok = q16_ok = 0;
            int done = 0;
            if (bf16) {
                if (p->q_exact) {
                    q16 = (const uint16_t *)ns_row(q, q0);
                    ldq16 = ns_ld(q);
                } else if (!q16_ok) {
                    if (!qv_ok) qv = ns_tile_rows(q, q0, nq, p->normalize, p->qbuf, &ldq, p->threads);
                    qv_ok = 1;
                    rows_prepare(qv, ldq, nq, d, NULL, NULL, p->qb16, p->threads);
                    q16 = p->qb16;
                    ldq16 = d;
                    q16_ok = 1;
                }
                done = ns_gemm_bf16_nt(nq, nc, d, opt->scale, q16, ldq16, c16, ldc16, p->tile,
                                       nc) == 0;
            }
            tile_bound tbq = tb;
            if (!done) { /* f32 GEMM: the f32 bound */
                if (!qv_ok) qv = ns_tile_rows(q, q0, nq, p->normalize, p->qbuf, &ldq, p->threads);
                qv_ok = 1;
                if (!cv) cv = ns_tile_rows(corpus, c0, nc, p->normalize, p->cbuf, &ldc, p->threads);
                ns_sgemm_nt(nq, nc, d, opt->scale, qv, ldq, cv, ldc, 0.0f, p->tile, nc);
                tbq.rel = ns_bound_relative(d, 0) * aabs;
                tbq.residual = 0;
            }
            merge_tile(p, q, corpus, opt->scale, opt->exclude, q0, nq, c0, nc, &tbq, &bad);
            if (bad.set) return fail_bad_score(ctx, fn, corpus, &bad);
        }
        if (opt->progress && opt->progress(c0 + nc, N, opt->progress_user))
            return ns_fail(ctx, NS_ERR_INVALID_ARGUMENT,
                           "%s: cancelled by the progress callback after %lld of %lld corpus rows",
                           fn, (long long)(c0 + nc), (long long)N);
    }
    return NS_OK;
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
static int rescore_in_corpus_order(const mine_plan *p, ns_matrix q, ns_matrix corpus,
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
        const rescorer rs = thread_rescorer(p, q, corpus, scale, tid);
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

/* Sorts n exact (score, row) pairs best first, ties to the lower row (rows < 2^32): an LSD
 * radix sort (8-bit digits, constant digits skipped) of the 64-bit keys ~(order_key(score) << 32
 * | (2^32 − 1 − row)), ascending, i.e. the order ns_before. buf: room for 2n keys. Returns -1,
 * sorting nothing, when a score is −0 (ns_before ties it with +0; the keys would not, and the
 * sign of the zero must survive). */
static int sort_best_first_radix(float *s, int64_t *id, int64_t n, uint64_t *buf) {
    for (int64_t j = 0; j < n; j++)
        if (s[j] == 0.0f && signbit(s[j])) return -1;
    uint64_t *a = buf, *b = buf + n;
    for (int64_t j = 0; j < n; j++)
        a[j] = ~((uint64_t)order_key(s[j]) << 32 | (uint64_t)(0xffffffffu - (uint32_t)id[j]));
    for (int shift = 0; shift < 64; shift += 8) {
        int64_t count[257];
        memset(count, 0, sizeof count);
        for (int64_t j = 0; j < n; j++) count[((a[j] >> shift) & 0xff) + 1]++;
        if (count[((a[0] >> shift) & 0xff) + 1] == n) continue; /* one digit value: in order */
        for (int v = 0; v < 256; v++) count[v + 1] += count[v];
        for (int64_t j = 0; j < n; j++) b[count[(a[j] >> shift) & 0xff]++] = a[j];
        uint64_t *t = a;
        a = b;
        b = t;
    }
    for (int64_t j = 0; j < n; j++) {
        const uint64_t key = ~a[j];
        s[j] = key_value((uint32_t)(key >> 32));
        id[j] = (int64_t)(0xffffffffu - (uint32_t)key);
    }
    return 0;
}

/* Success is certain now: each query's short list re-scored exactly, its k best kept, sorted
 * (ties to the lower row) and written. */
static void write_results(const mine_plan *p, ns_matrix q, ns_matrix corpus, float scale,
                          int64_t *index, float *score) {
    const int64_t k = p->k;
    const size_t scratch = (size_t)(p->cb > p->width ? p->cb : p->width);
    /* The short lists (bounds only, no re-scoring: a cap larger than any count). */
#pragma omp parallel for num_threads(p->threads) schedule(dynamic, 16)
    for (int64_t i = 0; i < p->Q; i++) {
        int tid = 0;
#ifdef _OPENMP
        tid = omp_get_thread_num();
#endif
        float thr;
        p->cnt[i] = shrink(NULL, i, p->hs + i * p->width, p->es + i * p->width,
                           p->hi + i * p->width, p->cnt[i], k, 2 * p->width + 2,
                           p->keys + (size_t)tid * scratch, &thr);
    }
    const int by_query = rescore_in_corpus_order(p, q, corpus, scale) != 0;
#pragma omp parallel for num_threads(p->threads) schedule(dynamic, 16)
    for (int64_t i = 0; i < p->Q; i++) {
        int tid = 0;
#ifdef _OPENMP
        tid = omp_get_thread_num();
#endif
        float *s = p->hs + i * p->width, *e = p->es + i * p->width;
        int64_t *id = p->hi + i * p->width, n = p->cnt[i];
        if (by_query) {
            rescorer rs = thread_rescorer(p, q, corpus, scale, tid);
            rescore(&rs, i, s, e, id, n);
        }
        if (p->N <= ((int64_t)1 << 32) &&
            sort_best_first_radix(s, id, n, p->sortbuf + (size_t)tid * 2 * (size_t)p->width) == 0) {
            if (n > k) n = k;
        } else { /* rows past 2^32, or a −0 score: quickselect and heapsort */
            if (n > k) {
                select_nth(s, id, n, k - 1);
                n = k;
            }
            for (int64_t j = 1; j < n; j++) heap_push(s, id, j, s[j], id[j]);
            heap_sort_best_first(s, id, n);
        }
        memcpy(score + i * k, s, (size_t)n * sizeof(float));
        memcpy(index + i * k, id, (size_t)n * sizeof(int64_t));
        for (int64_t j = n; j < k; j++) {
            score[i * k + j] = -INFINITY;
            index[i * k + j] = -1;
        }
    }
}

ns_status ns_cpu_mine_topk(ns_context *ctx, ns_matrix q, ns_matrix corpus, int64_t k,
                           const ns_mine_options *opt, int64_t *index, float *score) {
    static const char *fn = "ns_mine_topk";
    ns_status st;
    if ((st = check_exclusions(ctx, fn, opt->exclude, q.rows, corpus.rows))) return st;
    int64_t row, col;
    float value;
    if (ns_tile_find_nonfinite(q, 0, q.rows, &row, &col, &value))
        return ns_tile_fail_nonfinite(ctx, fn, "q", row, col, value);
    mine_plan p;
    mine_plan_init(&p, ctx, q, corpus, k, opt);
    if ((st = ns_arena_lay_out(ctx, &ctx->scratch, mine_layout, &p, fn))) return st;
    memset(p.cnt, 0, (size_t)p.Q * sizeof(int64_t));
    for (int64_t i = 0; i < p.Q; i++) p.thr[i] = EXCLUDED;
    if ((st = stream_corpus(ctx, fn, &p, q, corpus, opt))) return st;
    write_results(&p, q, corpus, opt->scale, index, score);
    return NS_OK;
}
