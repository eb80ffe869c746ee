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

/* The k-th largest of x[0, n) (x is reordered; no NaN in x). Quickselect, median of three. */
static float kth_largest(float *x, int64_t n, int64_t k) {
    int64_t lo = 0, hi = n - 1, m = k - 1;
    while (hi - lo >= 16) {
        int64_t mid = lo + (hi - lo) / 2;
        float t;
        if (x[mid] > x[lo]) t = x[mid], x[mid] = x[lo], x[lo] = t;
        if (x[hi] > x[lo]) t = x[hi], x[hi] = x[lo], x[lo] = t;
        if (x[hi] > x[mid]) t = x[hi], x[hi] = x[mid], x[mid] = t;
        float p = x[mid];
        int64_t i = lo, j = hi;
        while (i <= j) {
            while (x[i] > p) i++;
            while (p > x[j]) j--;
            if (i <= j) t = x[i], x[i++] = x[j], x[j--] = t;
        }
        if (m <= j) hi = j;
        else if (m >= i) lo = i;
        else return x[m];
    }
    for (int64_t i = lo + 1; i <= hi; i++)
        for (int64_t j = i; j > lo && x[j] > x[j - 1]; j--) {
            float t = x[j];
            x[j] = x[j - 1];
            x[j - 1] = t;
        }
    return x[m];
}

/* A score that is not finite although the inputs were: q·c overflowed f32. */
typedef struct {
    int set;
    int64_t query, row;
    float value;
} bad_score;

/* Scores tested per step: one vectorised compare each, then a branch per chunk. */
#define CHUNK 32

/* Each query keeps a reservoir of candidates (score, row) in staging: every score above the
 * query's threshold is appended; when the reservoir holds cap, a quickselect keeps the k best
 * and the threshold becomes the k-th best score. Rows arrive in increasing order, so a later
 * score equal to the threshold loses its tie and is skipped. Amortised O(1) per candidate,
 * without the mispredicted branches of a heap. */
typedef struct {
    float *s;       /* cap + CHUNK scores */
    int64_t *id;    /* cap + CHUNK rows */
    int64_t count;
    float threshold;
} reservoir;

static void reservoir_shrink(reservoir *r, int64_t k) {
    select_nth(r->s, r->id, r->count, k - 1);
    r->count = k;
    r->threshold = r->s[k - 1];
}

/* Excluded corpus rows are overwritten in the tile with this score, which never passes a
 * threshold (thresholds start at it). A real score of exactly -FLT_MAX (at the edge of f32
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

/* Merges one query's tile row (scores of corpus rows base .. base+n-1) into its reservoir. */
static void select_row(const float *row, int64_t n, int64_t base, float *s, int64_t *id,
                       int64_t *count, float *threshold, int64_t k, int64_t cap, int64_t query,
                       float *scratch, bad_score *bad) {
    int64_t cnt = *count;
    float thr = *threshold;
    if (cnt == 0 && thr == EXCLUDED && n > cap) {
        /* The query's first block: rather than filling and shrinking the reservoir many times,
         * start from this block's own k-th best (one quickselect on a copy). Scores equal to it
         * must still enter (their rows may be lower), hence the next float below. NaN is
         * copied as +Inf so that the selection stays well defined; it is reported below. */
        for (int64_t t = 0; t < n; t++) scratch[t] = row[t] == row[t] ? row[t] : INFINITY;
        thr = nextafterf(kth_largest(scratch, n, k), -INFINITY);
        if (!(thr >= EXCLUDED)) thr = EXCLUDED;
    }
    for (int64_t j0 = 0; j0 < n; j0 += CHUNK) {
        const float *r = row + j0;
        uint32_t m;
        if (n - j0 >= CHUNK) {
            m = chunk_mask(r, thr);
        } else {
            m = 0;
            for (int64_t t = 0; t < n - j0; t++) m |= (uint32_t)needs_look(r[t], thr) << t;
        }
        /* Appends only the set bits: usually none, rarely more than a couple. */
        for (; m; m &= m - 1) {
            int t = __builtin_ctz(m);
            float v = r[t];
            if (!(fabsf(v) <= FLT_MAX)) { /* NaN or ±Inf: report, stop ranking this query */
#pragma omp critical(ns_mine_bad)
                if (!bad->set || query < bad->query) {
                    bad->set = 1;
                    bad->query = query;
                    bad->row = base + j0 + t;
                    bad->value = v;
                }
                *count = cnt;
                return;
            }
            s[cnt] = v;
            id[cnt] = base + j0 + t;
            cnt++;
        }
        if (cnt >= cap) {
            reservoir rv = {s, id, cnt, thr};
            reservoir_shrink(&rv, k);
            cnt = rv.count;
            thr = rv.threshold;
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
    if (ex->offsets[0] != 0)
        return ns_fail(ctx, NS_ERR_INVALID_ARGUMENT,
                       "%s: options->exclude->offsets[0] (%lld) must be 0", fn,
                       (long long)ex->offsets[0]);
    for (int64_t i = 0; i < queries; i++)
        if (ex->offsets[i + 1] < ex->offsets[i])
            return ns_fail(ctx, NS_ERR_INVALID_ARGUMENT,
                           "%s: options->exclude->offsets[%lld] (%lld) is smaller than "
                           "offsets[%lld] (%lld); offsets must not decrease",
                           fn, (long long)(i + 1), (long long)ex->offsets[i + 1], (long long)i,
                           (long long)ex->offsets[i]);
    int64_t total = ex->offsets[queries];
    if (total > 0 && !ex->ids)
        return ns_fail(ctx, NS_ERR_INVALID_ARGUMENT,
                       "%s: options->exclude->ids is NULL but offsets[%lld] is %lld", fn,
                       (long long)queries, (long long)total);
    for (int64_t t = 0; t < total; t++)
        if (ex->ids[t] < 0 || ex->ids[t] >= corpus_rows)
            return ns_fail(ctx, NS_ERR_INVALID_ARGUMENT,
                           "%s: options->exclude->ids[%lld] (%lld) is outside the corpus rows "
                           "[0, %lld)",
                           fn, (long long)t, (long long)ex->ids[t], (long long)corpus_rows);
    return NS_OK;
}

/* ---------------------------------------------------------------- the CPU backend */

/* One call's blocking and workspace: the score tile, the converted corpus block and query
 * tile if needed, per-thread quickselect scratch, and per query a reservoir of cap + CHUNK
 * (score, row), its fill count and threshold. */
typedef struct {
    int64_t Q, N, d, k, qb, cb, cap, width;
    int normalize, threads, q_once;
    int convert_q, convert_c;
    float *tile, *cbuf, *qbuf, *scratch;
    float *hs, *thr;
    int64_t *hi, *cnt;
} mine_plan;

static void mine_layout(void *plan, ns_arena *a) {
    mine_plan *p = (mine_plan *)plan;
    p->tile = (float *)ns_arena_carve(a, (size_t)(p->qb * p->cb) * sizeof(float));
    p->cbuf = (float *)ns_arena_carve(a, p->convert_c ? (size_t)(p->cb * p->d) * sizeof(float) : 0);
    p->qbuf = (float *)ns_arena_carve(a, p->convert_q ? (size_t)(p->qb * p->d) * sizeof(float) : 0);
    p->scratch = (float *)ns_arena_carve(a, (size_t)p->threads * (size_t)p->cb * sizeof(float));
    p->hs = (float *)ns_arena_carve(a, (size_t)(p->Q * p->width) * sizeof(float));
    p->hi = (int64_t *)ns_arena_carve(a, (size_t)(p->Q * p->width) * sizeof(int64_t));
    p->cnt = (int64_t *)ns_arena_carve(a, (size_t)p->Q * sizeof(int64_t));
    p->thr = (float *)ns_arena_carve(a, (size_t)p->Q * sizeof(float));
}

static void mine_plan_init(mine_plan *p, ns_context *ctx, ns_matrix q, ns_matrix corpus,
                           int64_t k, const ns_mine_options *opt) {
    p->normalize = (opt->flags & NS_NORMALIZE) != 0;
    p->threads = ns_threads(ctx);
    p->Q = q.rows, p->N = corpus.rows, p->d = q.cols, p->k = k;
    p->convert_q = ns_tile_needs_buffer(q, p->normalize);
    p->convert_c = ns_tile_needs_buffer(corpus, p->normalize);
    /* Blocking: see ns_mine_corpus_block (cpu_tiles.h). */
    p->qb = ns_mine_query_block(p->Q);
    p->cb = ns_mine_corpus_block(p->Q, p->N, p->d, p->convert_c);
    p->q_once = p->Q <= p->qb; /* one query tile: convert it once for the whole corpus */
    /* A larger cap means rarer quickselects but a threshold that lags more. */
    const int64_t extra = k < 64 ? 64 : k > 4096 ? 4096 : k;
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

/* Merges the score tile of queries [q0, q0+nq) × corpus rows [c0, c0+nc) into the reservoirs,
 * excluded rows first overwritten with EXCLUDED. */
static void merge_tile(const mine_plan *p, const ns_id_lists *ex, int64_t q0, int64_t nq,
                       int64_t c0, int64_t nc, bad_score *bad) {
    /* Dynamic chunks: a thread that the OS preempts (a busy machine, OpenBLAS's threads still
     * spinning) does not hold the whole tile back. */
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
        select_row(trow, nc, c0, p->hs + qi * p->width, p->hi + qi * p->width, p->cnt + qi,
                   p->thr + qi, p->k, p->cap, qi, p->scratch + (size_t)tid * p->cb, bad);
    }
}

/* Streams the corpus once, block by block; each block against every query tile. */
static ns_status stream_corpus(ns_context *ctx, const char *fn, mine_plan *p, ns_matrix q,
                               ns_matrix corpus, const ns_mine_options *opt) {
    const int64_t Q = p->Q, N = p->N;
    bad_score bad = {0, 0, 0, 0.0f};
    int64_t ldq = 0;
    const float *qv =
        p->q_once ? ns_tile_rows(q, 0, Q, p->normalize, p->qbuf, &ldq, p->threads) : NULL;
    for (int64_t c0 = 0; c0 < N; c0 += p->cb) {
        const int64_t nc = N - c0 < p->cb ? N - c0 : p->cb;
        int64_t ldc;
        const float *cv = ns_tile_rows(corpus, c0, nc, p->normalize, p->cbuf, &ldc, p->threads);
        for (int64_t q0 = 0; q0 < Q; q0 += p->qb) {
            const int64_t nq = Q - q0 < p->qb ? Q - q0 : p->qb;
            if (!p->q_once) qv = ns_tile_rows(q, q0, nq, p->normalize, p->qbuf, &ldq, p->threads);
            ns_sgemm_nt(nq, nc, p->d, opt->scale, qv, ldq, cv, ldc, 0.0f, p->tile, nc);
            merge_tile(p, opt->exclude, q0, nq, c0, nc, &bad);
            if (bad.set) return fail_bad_score(ctx, fn, corpus, &bad);
        }
        if (opt->progress && opt->progress(c0 + nc, N, opt->progress_user))
            return ns_fail(ctx, NS_ERR_INVALID_ARGUMENT,
                           "%s: cancelled by the progress callback after %lld of %lld corpus rows",
                           fn, (long long)(c0 + nc), (long long)N);
    }
    return NS_OK;
}

/* Success is certain now: keeps each query's k best, sorts them and writes the outputs. */
static void write_results(const mine_plan *p, int64_t *index, float *score) {
    const int64_t k = p->k;
#pragma omp parallel for num_threads(p->threads) schedule(dynamic, 16)
    for (int64_t i = 0; i < p->Q; i++) {
        float *s = p->hs + i * p->width;
        int64_t *id = p->hi + i * p->width, n = p->cnt[i];
        if (n > k) {
            select_nth(s, id, n, k - 1);
            n = k;
        }
        for (int64_t j = 1; j < n; j++) heap_push(s, id, j, s[j], id[j]);
        heap_sort_best_first(s, id, n);
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
    write_results(&p, index, score);
    return NS_OK;
}
