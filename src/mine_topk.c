/* ns_mine_topk on the CPU: exact top-k corpus rows per query.
 *
 * The corpus is streamed once, block by block (so a memory-mapped corpus larger than RAM is read
 * once, in order). For each corpus block and each query tile, OpenBLAS computes the score tile
 * (one sgemm call from this thread; OpenBLAS threads itself), then an OpenMP team merges the
 * tile into per-query reservoirs of candidates. Corpus rows arrive in increasing index order, so
 * a new score can matter only when strictly above the query's running k-th best score (a tie
 * loses to the lower row already held): one vectorised compare per score, appends rare, and a
 * quickselect now and then. Reservoirs live in workspace slot NS_WS_MINE and reach index/score
 * only once the whole call has succeeded. */
#include "ns_tiles.h"
#ifdef NS_HAVE_CUDA
#include "ns_cuda.h"
#endif

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

/* a ranks below b: lower score, or the same score and a higher corpus row. */
static inline int worse(float sa, int64_t ia, float sb, int64_t ib) {
    return sa < sb || (sa == sb && ia > ib);
}

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

/* Puts the entry of rank m (in the order "a before b": higher score, or the same score and a
 * lower row) at position m, the better ones before it and the worse after (quickselect with a
 * median-of-three pivot; rows are unique, so the order is strict and the loops terminate). */
static inline int before(float sa, int64_t ia, float sb, int64_t ib) {
    return sa > sb || (sa == sb && ia < ib);
}

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

static ns_status check_exclusions(ns_context *ctx, const char *fn, const ns_id_lists *ex,
                                  int64_t queries, int64_t corpus_rows, int host) {
    if (!ex) return NS_OK;
    if (ex->queries != queries)
        return ns_fail(ctx, NS_ERR_INVALID_ARGUMENT,
                       "%s: options->exclude->queries (%lld) differs from q.rows (%lld)", fn,
                       (long long)ex->queries, (long long)queries);
    if (!ex->offsets)
        return ns_fail(ctx, NS_ERR_INVALID_ARGUMENT, "%s: options->exclude->offsets is NULL", fn);
    /* On CUDA the lists are device memory like every data pointer: the backend checks them. */
    if (!host) return NS_OK;
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

static ns_status check_args(ns_context *ctx, const char *fn, ns_matrix q, ns_matrix corpus,
                            int64_t k, const ns_mine_options *opt, int64_t *index, float *score) {
    ns_status st;
    if ((st = ns_check_matrix(ctx, fn, "q", q, 0))) return st;
    if ((st = ns_check_matrix(ctx, fn, "corpus", corpus, 0))) return st;
    if (q.cols != corpus.cols)
        return ns_fail(ctx, NS_ERR_INVALID_ARGUMENT, "%s: q has %lld columns but corpus has %lld",
                       fn, (long long)q.cols, (long long)corpus.cols);
    if (q.cols > INT_MAX || ns_ld(q) > INT_MAX || ns_ld(corpus) > INT_MAX)
        return ns_fail(ctx, NS_ERR_UNSUPPORTED,
                       "%s: cols (%lld) or ld (q %lld, corpus %lld) exceed the BLAS limit of %d",
                       fn, (long long)q.cols, (long long)ns_ld(q), (long long)ns_ld(corpus),
                       INT_MAX);
    if (k < 1)
        return ns_fail(ctx, NS_ERR_INVALID_ARGUMENT, "%s: k (%lld) must be at least 1", fn,
                       (long long)k);
    if (k > corpus.rows)
        return ns_fail(ctx, NS_ERR_INVALID_ARGUMENT,
                       "%s: k (%lld) is larger than the corpus (%lld rows)", fn, (long long)k,
                       (long long)corpus.rows);
    if (k > NS_MAX_K)
        return ns_fail(ctx, NS_ERR_INVALID_ARGUMENT, "%s: k (%lld) is larger than NS_MAX_K (%d)",
                       fn, (long long)k, NS_MAX_K);
    if (opt->struct_size < sizeof(ns_mine_options))
        return ns_fail(ctx, NS_ERR_INVALID_ARGUMENT,
                       "%s: options->struct_size (%zu) is smaller than sizeof(ns_mine_options) "
                       "(%zu); initialise with NS_MINE_OPTIONS_INIT",
                       fn, opt->struct_size, sizeof(ns_mine_options));
    if (!isfinite(opt->scale))
        return ns_fail(ctx, NS_ERR_INVALID_ARGUMENT, "%s: options->scale (%g) must be finite", fn,
                       (double)opt->scale);
    if (opt->flags & ~NS_NORMALIZE)
        return ns_fail(ctx, NS_ERR_INVALID_ARGUMENT,
                       "%s: options->flags (0x%x) has bits other than NS_NORMALIZE (0x%x)", fn,
                       opt->flags, NS_NORMALIZE);
    if ((st = check_exclusions(ctx, fn, opt->exclude, q.rows, corpus.rows,
                               ctx->backend != NS_BACKEND_CUDA)))
        return st;
    if ((st = ns_check_ptr(ctx, fn, "index", index))) return st;
    if ((st = ns_check_ptr(ctx, fn, "score", score))) return st;
    return NS_OK;
}

/* ---------------------------------------------------------------- the CPU backend */

static ns_status mine_cpu(ns_context *ctx, const char *fn, ns_matrix q, ns_matrix corpus,
                          int64_t k, const ns_mine_options *opt, int64_t *index, float *score) {
    int64_t row, col;
    float value;
    if (ns_tile_find_nonfinite(q, 0, q.rows, &row, &col, &value))
        return ns_tile_fail_nonfinite(ctx, fn, "q", row, col, value);

    const int normalize = (opt->flags & NS_NORMALIZE) != 0;
    const int threads = ns_threads(ctx);
    const int64_t Q = q.rows, N = corpus.rows, d = q.cols;
    /* Blocking: see ns_mine_corpus_block (ns_tiles.h). */
    const int64_t qb = ns_mine_query_block(Q);
    const int64_t cb = ns_mine_corpus_block(Q, N, d, ns_tile_needs_buffer(corpus, normalize));
    const int q_once = Q <= qb; /* one query tile: convert it once for the whole corpus */
    const ns_id_lists *ex = opt->exclude;

    /* Workspace: the score tile, then the converted corpus block and query tile if needed. */
    size_t tile_b = ((size_t)(qb * cb) * sizeof(float) + 63) & ~(size_t)63;
    size_t cbuf_b = ns_tile_needs_buffer(corpus, normalize)
                        ? ((size_t)(cb * d) * sizeof(float) + 63) & ~(size_t)63 : 0;
    size_t qbuf_b = ns_tile_needs_buffer(q, normalize)
                        ? ((size_t)(qb * d) * sizeof(float) + 63) & ~(size_t)63 : 0;
    size_t scratch_b = (size_t)threads * (size_t)cb * sizeof(float);
    size_t ws_b = tile_b + cbuf_b + qbuf_b + scratch_b;
    char *ws = (char *)ns_workspace(ctx, NS_WS_SIMILARITY, ws_b);
    if (!ws)
        return ns_fail(ctx, NS_ERR_OUT_OF_MEMORY, "%s: cannot allocate %zu bytes of tile workspace",
                       fn, ws_b);
    float *tile = (float *)ws, *cbuf = (float *)(ws + tile_b);
    float *qbuf = (float *)(ws + tile_b + cbuf_b);
    float *scratch = (float *)(ws + tile_b + cbuf_b + qbuf_b); /* per thread, cb floats */

    /* Staged results: per query a reservoir of cap + CHUNK (score, row), its fill count and
     * threshold. A larger cap means rarer quickselects but a threshold that lags more. */
    const int64_t extra = k < 64 ? 64 : k > 4096 ? 4096 : k;
    const int64_t cap = k + extra, width = cap + CHUNK;
    size_t hs_b = ((size_t)(Q * width) * sizeof(float) + 63) & ~(size_t)63;
    size_t hi_b = (size_t)(Q * width) * sizeof(int64_t);
    size_t cnt_b = (size_t)Q * sizeof(int64_t);
    size_t thr_b = (size_t)Q * sizeof(float);
    char *stage = (char *)ns_workspace(ctx, NS_WS_MINE, hs_b + hi_b + cnt_b + thr_b);
    if (!stage)
        return ns_fail(ctx, NS_ERR_OUT_OF_MEMORY,
                       "%s: cannot allocate %zu bytes for the staged top-%lld of %lld queries", fn,
                       hs_b + hi_b + cnt_b + thr_b, (long long)k, (long long)Q);
    float *hs = (float *)stage;
    int64_t *hi = (int64_t *)(stage + hs_b);
    int64_t *cnt = (int64_t *)(stage + hs_b + hi_b);
    float *thr = (float *)(stage + hs_b + hi_b + cnt_b);
    memset(cnt, 0, cnt_b);
    for (int64_t i = 0; i < Q; i++) thr[i] = EXCLUDED;

    bad_score bad = {0, 0, 0, 0.0f};
    int64_t ldq = 0;
    const float *qv = q_once ? ns_tile_rows(q, 0, Q, normalize, qbuf, &ldq, threads) : NULL;
    for (int64_t c0 = 0; c0 < N; c0 += cb) {
        const int64_t nc = N - c0 < cb ? N - c0 : cb;
        int64_t ldc;
        const float *cv = ns_tile_rows(corpus, c0, nc, normalize, cbuf, &ldc, threads);
        for (int64_t q0 = 0; q0 < Q; q0 += qb) {
            const int64_t nq = Q - q0 < qb ? Q - q0 : qb;
            if (!q_once) qv = ns_tile_rows(q, q0, nq, normalize, qbuf, &ldq, threads);
            ns_sgemm_nt(nq, nc, d, opt->scale, qv, ldq, cv, ldc, 0.0f, tile, nc);
            /* Dynamic chunks: a thread that the OS preempts (a busy machine, OpenBLAS's threads
             * still spinning) does not hold the whole tile back. */
#pragma omp parallel for num_threads(threads) schedule(dynamic, 32)
            for (int64_t i = 0; i < nq; i++) {
                int tid = 0;
#ifdef _OPENMP
                tid = omp_get_thread_num();
#endif
                const int64_t qi = q0 + i;
                float *trow = tile + i * nc;
                if (ex)
                    for (int64_t t = ex->offsets[qi]; t < ex->offsets[qi + 1]; t++) {
                        int64_t id = ex->ids[t];
                        if (id >= c0 && id < c0 + nc) trow[id - c0] = EXCLUDED;
                    }
                select_row(trow, nc, c0, hs + qi * width, hi + qi * width, cnt + qi, thr + qi, k,
                           cap, qi, scratch + (size_t)tid * cb, &bad);
            }
            if (bad.set) {
                /* q was scanned up front: the culprit is the corpus row, or an overflow. */
                if (ns_tile_find_nonfinite(corpus, bad.row, 1, &row, &col, &value))
                    return ns_tile_fail_nonfinite(ctx, fn, "corpus", row, col, value);
                return ns_fail(ctx, NS_ERR_NONFINITE,
                               "%s: the score of query %lld and corpus row %lld is %g although "
                               "the inputs are finite: q·corpus overflows f32 (scale the "
                               "embeddings or options->scale down)",
                               fn, (long long)bad.query, (long long)bad.row, (double)bad.value);
            }
        }
        if (opt->progress && opt->progress(c0 + nc, N, opt->progress_user))
            return ns_fail(ctx, NS_ERR_INVALID_ARGUMENT,
                           "%s: cancelled by the progress callback after %lld of %lld corpus rows",
                           fn, (long long)(c0 + nc), (long long)N);
    }

    /* Success is certain now: keep each query's k best, sort them and write the outputs. */
#pragma omp parallel for num_threads(threads) schedule(dynamic, 16)
    for (int64_t i = 0; i < Q; i++) {
        float *s = hs + i * width;
        int64_t *id = hi + i * width, n = cnt[i];
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
    return NS_OK;
}

ns_status ns_mine_topk(ns_context *ctx, ns_matrix q, ns_matrix corpus, int64_t k,
                       const ns_mine_options *options, int64_t *index, float *score) {
    static const char *fn = "ns_mine_topk";
    const ns_mine_options defaults = NS_MINE_OPTIONS_INIT;
    ns_status st;
    if ((st = ns_check_context(ctx, fn))) return st;
    if (!options) options = &defaults;
    if ((st = check_args(ctx, fn, q, corpus, k, options, index, score))) return st;
#ifdef NS_HAVE_CUDA
    if (ctx->backend == NS_BACKEND_CUDA)
        return ns_cuda_mine_topk(ctx, q, corpus, k, options, index, score);
#endif
    return mine_cpu(ctx, fn, q, corpus, k, options, index, score);
}
