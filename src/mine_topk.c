/* ns_mine_topk on the CPU: exact top-k corpus rows per query.
 *
 * The corpus is streamed once, block by block (so a memory-mapped corpus larger than RAM is read
 * once, in order). For each corpus block and each query block, OpenBLAS computes the score tile
 * (one sgemm call from this thread; OpenBLAS threads itself), then an OpenMP team merges the
 * tile into per-query min-heaps of the k best so far. Corpus rows arrive in increasing index
 * order, so a new score enters a full heap only when strictly above the heap's worst score (a tie
 * loses to the lower index already held): one vectorised compare per score, insertions rare.
 * Heaps live in workspace slot NS_WS_MINE and reach index/score only once the whole call has
 * succeeded. */
#include "ns_tiles.h"
#ifdef NS_HAVE_CUDA
#include "ns_cuda.h"
#endif

#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* NS_MINE_CORPUS_BLOCK × NS_MINE_QUERY_BLOCK (ns_tiles.h): an f32 tile of 8 MiB, which stays in
 * the last-level cache between the sgemm that writes it and the selection that reads it. */
static int64_t corpus_block(void) {
    const char *e = getenv("NS_MINE_NB"); /* tuning only; not a documented knob */
    return e && atoll(e) > 0 ? atoll(e) : NS_MINE_CORPUS_BLOCK;
}
static int64_t query_block(void) {
    const char *e = getenv("NS_MINE_QB");
    return e && atoll(e) > 0 ? atoll(e) : NS_MINE_QUERY_BLOCK;
}

/* ---------------------------------------------------------------- per-query heaps */

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

/* A score that is not finite although the inputs were: q·c overflowed f32. */
typedef struct {
    int set;
    int64_t query, row;
    float value;
} bad_score;

/* Merges one query's tile row (scores of corpus rows base .. base+n-1) into its heap. */
static void select_row(const float *row, int64_t n, int64_t base, float *hs, int64_t *hi,
                       int64_t *count, int64_t k, int64_t query, bad_score *bad) {
    int64_t cnt = *count;
    float thr = cnt == k ? hs[0] : -INFINITY;
    int64_t j = 0;
    for (;;) {
        /* Skip whole chunks that hold nothing above the threshold (the common case);
         * !(x <= thr) is also true for NaN, so an overflowed score is never skipped. */
        for (; j + 32 <= n; j += 32) {
            int hit = 0;
            for (int t = 0; t < 32; t++) hit |= !(row[j + t] <= thr);
            if (hit) break;
        }
        int64_t end = j + 32 <= n ? j + 32 : n;
        if (j >= n) break;
        for (; j < end; j++) {
            float v = row[j];
            if (v <= thr) continue;
            if (!(v < INFINITY)) { /* NaN or +Inf: report, do not rank */
                if (!bad->set) {
#pragma omp critical(ns_mine_bad)
                    if (!bad->set || query < bad->query) {
                        bad->set = 1;
                        bad->query = query;
                        bad->row = base + j;
                        bad->value = v;
                    }
                }
                continue;
            }
            if (cnt < k) {
                heap_push(hs, hi, cnt++, v, base + j);
                if (cnt == k) thr = hs[0];
            } else {
                heap_sift(hs, hi, k, v, base + j);
                thr = hs[0];
            }
        }
    }
    *count = cnt;
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

/* The first row of corpus rows [r0, r0+n) holding NaN/Inf, scanned by the thread team. */
static int find_nonfinite_parallel(ns_matrix m, int64_t r0, int64_t n, int threads,
                                   int64_t *row, int64_t *col, float *value) {
    int64_t first = INT64_MAX;
    int par = threads > 1 && n * m.cols >= 65536;
#pragma omp parallel for num_threads(threads) schedule(static) reduction(min : first) if (par)
    for (int64_t r = r0; r < r0 + n; r++) {
        int64_t rr, cc;
        float v;
        if (r < first && ns_tile_find_nonfinite(m, r, 1, &rr, &cc, &v)) first = r;
    }
    if (first == INT64_MAX) return 0;
    return ns_tile_find_nonfinite(m, first, 1, row, col, value);
}

static ns_status mine_cpu(ns_context *ctx, const char *fn, ns_matrix q, ns_matrix corpus,
                          int64_t k, const ns_mine_options *opt, int64_t *index, float *score) {
    int64_t row, col;
    float value;
    if (ns_tile_find_nonfinite(q, 0, q.rows, &row, &col, &value))
        return ns_tile_fail_nonfinite(ctx, fn, "q", row, col, value);

    const int normalize = (opt->flags & NS_NORMALIZE) != 0;
    const int threads = ns_threads(ctx);
    const int64_t Q = q.rows, N = corpus.rows, d = q.cols;
    const int64_t cb = N < corpus_block() ? N : corpus_block();
    const int64_t qb = Q < query_block() ? Q : query_block();
    const int q_once = Q <= qb; /* one query tile: convert it once for the whole corpus */
    const ns_id_lists *ex = opt->exclude;

    /* Workspace: the score tile, then the converted corpus block and query tile if needed. */
    size_t tile_b = ((size_t)(qb * cb) * sizeof(float) + 63) & ~(size_t)63;
    size_t cbuf_b = ns_tile_needs_buffer(corpus, normalize)
                        ? ((size_t)(cb * d) * sizeof(float) + 63) & ~(size_t)63 : 0;
    size_t qbuf_b = ns_tile_needs_buffer(q, normalize) ? (size_t)(qb * d) * sizeof(float) : 0;
    char *ws = (char *)ns_workspace(ctx, NS_WS_SIMILARITY, tile_b + cbuf_b + qbuf_b);
    if (!ws)
        return ns_fail(ctx, NS_ERR_OUT_OF_MEMORY, "%s: cannot allocate %zu bytes of tile workspace",
                       fn, tile_b + cbuf_b + qbuf_b);
    float *tile = (float *)ws, *cbuf = (float *)(ws + tile_b), *qbuf = (float *)(ws + tile_b + cbuf_b);

    /* Staged results: per query a heap of k (score, row) and its fill count. */
    size_t hs_b = ((size_t)(Q * k) * sizeof(float) + 63) & ~(size_t)63;
    size_t hi_b = (size_t)(Q * k) * sizeof(int64_t);
    size_t cnt_b = (size_t)Q * sizeof(int64_t);
    char *stage = (char *)ns_workspace(ctx, NS_WS_MINE, hs_b + hi_b + cnt_b);
    if (!stage)
        return ns_fail(ctx, NS_ERR_OUT_OF_MEMORY,
                       "%s: cannot allocate %zu bytes for the staged top-%lld of %lld queries", fn,
                       hs_b + hi_b + cnt_b, (long long)k, (long long)Q);
    float *hs = (float *)stage;
    int64_t *hi = (int64_t *)(stage + hs_b);
    int64_t *cnt = (int64_t *)(stage + hs_b + hi_b);
    memset(cnt, 0, cnt_b);

    bad_score bad = {0, 0, 0, 0.0f};
    int64_t ldq = 0;
    const float *qv = q_once ? ns_tile_rows(q, 0, Q, normalize, qbuf, &ldq, threads) : NULL;
    for (int64_t c0 = 0; c0 < N; c0 += cb) {
        const int64_t nc = N - c0 < cb ? N - c0 : cb;
        /* Scanned block by block as it streams in, so a mapped corpus is read once. */
        if (find_nonfinite_parallel(corpus, c0, nc, threads, &row, &col, &value))
            return ns_tile_fail_nonfinite(ctx, fn, "corpus", row, col, value);
        int64_t ldc;
        const float *cv = ns_tile_rows(corpus, c0, nc, normalize, cbuf, &ldc, threads);
        for (int64_t q0 = 0; q0 < Q; q0 += qb) {
            const int64_t nq = Q - q0 < qb ? Q - q0 : qb;
            if (!q_once) qv = ns_tile_rows(q, q0, nq, normalize, qbuf, &ldq, threads);
            ns_sgemm_nt(nq, nc, d, opt->scale, qv, ldq, cv, ldc, 0.0f, tile, nc);
#pragma omp parallel for num_threads(threads) schedule(static)
            for (int64_t i = 0; i < nq; i++) {
                const int64_t qi = q0 + i;
                float *trow = tile + i * nc;
                if (ex) /* excluded rows can never pass the strict threshold test */
                    for (int64_t t = ex->offsets[qi]; t < ex->offsets[qi + 1]; t++) {
                        int64_t id = ex->ids[t];
                        if (id >= c0 && id < c0 + nc) trow[id - c0] = -INFINITY;
                    }
                select_row(trow, nc, c0, hs + qi * k, hi + qi * k, cnt + qi, k, qi, &bad);
            }
            if (bad.set)
                return ns_fail(ctx, NS_ERR_NONFINITE,
                               "%s: the score of query %lld and corpus row %lld is %g although "
                               "the inputs are finite: q·corpus overflows f32 (scale the "
                               "embeddings or options->scale down)",
                               fn, (long long)bad.query, (long long)bad.row, (double)bad.value);
        }
        if (opt->progress && opt->progress(c0 + nc, N, opt->progress_user))
            return ns_fail(ctx, NS_ERR_INVALID_ARGUMENT,
                           "%s: cancelled by the progress callback after %lld of %lld corpus rows",
                           fn, (long long)(c0 + nc), (long long)N);
    }

    /* Success is certain now: sort each heap best first and write the outputs. */
#pragma omp parallel for num_threads(threads) schedule(dynamic, 16)
    for (int64_t i = 0; i < Q; i++) {
        float *s = hs + i * k;
        int64_t *id = hi + i * k, n = cnt[i];
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
