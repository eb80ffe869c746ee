/* ns_mine_topk on the CPU: exact top-k corpus rows per query — the driver (cpu_mine.h lists
 * the other files: scan, radix orders, exact re-score, row norms).
 *
 * The corpus is streamed once, block by block (so a memory-mapped corpus larger than RAM is read
 * once, in order). For each corpus block and each query tile, the GEMM (oneDNN's bf16 matmul or
 * f32 sgemm, cpu_blas.c; threaded by the same OpenMP pool) computes the score tile, then an
 * OpenMP team merges the tile into per-query reservoirs of candidates.
 *
 * Two-stage exact mining. The GEMM (f32, or bf16 at about twice the speed) gives each score ŝ
 * with a proven bound e: |ŝ − s*| ≤ e, s* the exact score (src/hostdevice/ns_bound.h: its
 * definition, the derivation, e = K·|α|·‖q‖·‖c‖ + A). Each query keeps a reservoir of
 * candidates (ŝ, e, row) — e = 0 once a candidate is re-scored exactly — and a threshold T, a
 * proven lower bound of its k-th best exact score so far: the k-th largest of the lower bounds
 * ŝ − e held. A new row (rows arrive in increasing order) can enter the top-k only if ŝ + e > T:
 * otherwise k held rows, all lower, score at least as much. One vectorised compare per score
 * against T − max e, appends rare; when the reservoir is full, T is recomputed and only
 * candidates with ŝ + e ≥ T are kept (the short list). At the end the short list is re-scored
 * exactly (cpu_mine_rescore.c) and the k best kept, ties to the lower row: the result is exact
 * f32 mining whatever GEMM, blocking or thread count produced ŝ. Reservoirs live in the
 * context's scratch arena and reach index/score only once the whole call has succeeded. */
#include "cpu_mine.h"
#include "cpu_tiles.h"
#include "ns_bound.h"
#include "ns_cpu.h"

#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

/* A score that is not finite although the inputs were: q·c overflowed f32. */
typedef struct {
    int set;
    int64_t query, row;
    float value;
} bad_score;

/* The reservoir's short list: T = a lower bound (ns_mine_kth_key_floor) of the k-th largest
 * lower bound held, then only candidates whose upper bound reaches T are kept (the others score
 * below k held rows). When that still fills more than three quarters of the room, the survivors
 * are re-scored exactly and exactly k kept (so the reservoir always makes progress; with the
 * bounds of bf16 rounding the short list is ~2.4·k, and the room 5·k, so this is rare). Returns
 * the count; *thr = T. keys: room for cnt. avx512: the passes' AVX-512 versions. */
static int64_t shrink(const rescorer *rs, int64_t query, float *s, float *e, int64_t *id,
                      int64_t cnt, int64_t k, int64_t cap, uint32_t *keys, float *thr,
                      int avx512) {
    if (cnt <= k) return cnt;
    ns_mine_lower_keys(s, e, cnt, keys, avx512);
    float t = key_value(ns_mine_kth_key_floor(keys, cnt, k));
    int64_t n = ns_mine_keep_above(s, e, id, cnt, t, avx512);
    if (n > cap - cap / 4) {
        ns_mine_rescore(rs, query, s, e, id, n);
        ns_mine_select_nth(s, id, n, k - 1); /* e is all 0 now */
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
    float top = key_value(ns_mine_kth_key_floor(keys, n, k));
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
    const int64_t m = ns_mine_scan_row(row, n, pre, ws->cols, ws->avx512);
    reservoir r = {s, e, id, cnt, cap};
    for (int64_t c = 0; c < m;) {
        const int64_t at =
            ns_mine_take_listed(row, ws->cols, c, m, b, pre, thr, base, &r, ws->avx512);
        if (at >= 0) { /* NaN or ±Inf: report, stop ranking this query */
            const int64_t j = ws->cols[at];
#pragma omp critical(ns_mine_bad)
            if (!bad->set || query < bad->query) {
                bad->set = 1;
                bad->query = query;
                bad->row = base + j;
                bad->value = row[j];
            }
            *count = r.cnt;
            return;
        }
        c = -at - 1;
        if (r.cnt >= cap) {
            r.cnt = shrink(rs, query, s, e, id, r.cnt, k, cap, ws->keys, &thr, ws->avx512);
            pre = down(thr - b->emax);
            if (!(pre >= EXCLUDED)) pre = EXCLUDED;
        }
    }
    *count = r.cnt;
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

static void mine_layout(void *plan, ns_arena *a) {
    mine_plan *p = (mine_plan *)plan;
    const size_t scratch = (size_t)(p->cb > p->width ? p->cb : p->width);
    const size_t tile = p->thread_tiles ? (size_t)p->threads * p->sq * p->sf
                                        : (size_t)(p->qb * p->cb);
    p->tile = (float *)ns_arena_carve(a, tile * sizeof(float));
    p->tile_bytes = tile * sizeof(float);
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

/* Whether each thread computes its own sub-tiles (merge_block_threads): with oneDNN (its calls
 * from a parallel region run on the calling thread, side by side), unless
 * NS_CPU_MINE_TILES=shared (one tile threaded by the GEMM, then merged: the same result; for
 * benchmarks and tests). */
static int use_thread_tiles(void) {
    const char *v = getenv("NS_CPU_MINE_TILES");
    if (v && !strcmp(v, "shared")) return 0;
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
    p->avx512 = ns_mine_scan_avx512_usable();
    /* Sub-tiles of at most 256 × 1024 scores (1 MiB, a Zen 4 core's L2; fewer queries and the
     * GEMM packs each corpus slice for too few rows: 64 cost 18 % more CPU time than 256), at
     * least two query slices per thread (dynamic: a preempted thread does not hold the block
     * back), each of at least 128 queries; fewer queries, or one thread (nothing to hand
     * over; the shared tile's first row sets a threshold from 8192 columns: 5 % less CPU time
     * at k = 1000), take the shared tile. */
    p->sq = p->Q / (2 * (int64_t)p->threads) / 16 * 16;
    if (p->sq > 256) p->sq = 256;
    p->sr = 1024;
    p->thread_tiles = p->threads > 1 && p->q_once && p->sq >= 128 && use_thread_tiles();
    /* A larger cap means rarer shrinks but a threshold that lags more. The bf16 bound keeps
     * short lists of about 3·k (unit vectors): room for them, or shrinks re-score early. */
    int64_t extra = k < 64 ? 64 : k > 4096 ? 4096 : k;
    if (p->bf16 && !(p->q_exact && p->c_exact)) extra = 4 * k < 1024 ? 1024 : 4 * k;
    p->cap = k + extra;
    p->width = p->cap + CHUNK;
    /* The shared tile: its first row sets each query's first threshold, from the top k of cb
     * columns, so cb should hold several reservoirs (≥ 4·cap): fewer queries per tile (down to
     * 1024) for more columns, the tile's size unchanged. At 4096 × 200k × 384, k = 1000, one
     * thread: cb 8192 instead of 2048 took 2.9 % less CPU time with bf16 inputs, 2.3 % with
     * f32; at k = 100 (cap 200, kept at 2048) it took 2.1 % more with bf16 inputs. */
    while (!p->thread_tiles && p->qb > 1024 && p->cb < 4 * p->cap) {
        const int64_t wider = ns_mine_corpus_block(p->qb / 2, p->N, p->d, p->convert_c);
        if (wider <= p->cb) break; /* the corpus, or the f32 copy's limit, allows no more */
        p->qb /= 2;
        p->cb = wider;
        p->q_once = p->Q <= p->qb;
    }
    /* Per-thread tiles: the stream's first sub-tile (p->sf columns) wider than the reservoir,
     * so that its rows set each query's first threshold (select_row: more columns than cap)
     * instead of filling the reservoir unfiltered — at k = 1000 the reservoir holds 5000 rows,
     * 1024-column sub-tiles none: 14 % less time with f32 inputs, 7 % with bf16 inputs (512 ×
     * 50k × 384, 2 threads, interleaved A/B). NS_CPU_MINE_FIRST_COLS=n sets it (whole
     * sub-tiles; n ≤ 1024 is the old width), for benchmarks. */
    p->sf = p->sr;
    const char *fc = getenv("NS_CPU_MINE_FIRST_COLS");
    int64_t want = fc ? atoll(fc) : (p->cap / p->sr + 2) * p->sr;
    if (want > p->cb) want = p->cb; /* a sub-tile never spans blocks */
    if (p->thread_tiles && p->cap >= p->sr && want > p->sf) p->sf = want / p->sr * p->sr;
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
        b.cr = p->c_exact ? NULL : p->cr; /* bf16 rows used as they are: c_r = 0, no term */
        b.emax = up(up(up(b.fq * tb->cmax) + up(b.gq * tb->crmax)) + b.abs_e);
    } else {
        b.fq = up((float)(tb->rel * qn));
        b.gq = 0.0f;
        b.cr = NULL;
        b.emax = up(up(b.fq * tb->cmax) + b.abs_e);
    }
    return b;
}

/* Merges query qi's tile row trow (scores of corpus rows base .. base+n-1, base = c0 + j0: j0
 * columns into the block at c0) into its reservoir, excluded rows first overwritten with
 * EXCLUDED. */
static void merge_row(const mine_plan *p, ns_matrix q, ns_matrix corpus, float scale,
                      const ns_id_lists *ex, int64_t qi, float *trow, int64_t c0, int64_t j0,
                      int64_t n, const tile_bound *tb, bad_score *bad, int tid) {
    const size_t scratch = (size_t)(p->cb > p->width ? p->cb : p->width);
    const int64_t base = c0 + j0;
    if (ex)
        for (int64_t t = ex->offsets[qi]; t < ex->offsets[qi + 1]; t++) {
            int64_t id = ex->ids[t];
            if (id >= base && id < base + n) trow[id - base] = EXCLUDED;
        }
    row_bound b = query_bound(p, tb, qi);
    b.cn += j0;
    if (b.cr) b.cr += j0;
    rescorer rs = ns_mine_thread_rescorer(p, q, corpus, scale, tid);
    row_scratch ws = {p->keys + (size_t)tid * scratch, p->cols + (size_t)tid * (size_t)(p->cb + 16),
                      p->avx512};
    select_row(trow, n, base, &b, p->hs + qi * p->width, p->es + qi * p->width,
               p->hi + qi * p->width, p->cnt + qi, p->thr + qi, p->k, p->cap, qi, &ws, &rs, bad);
}

/* Merges the score tile of queries [q0, q0+nq) × corpus rows [c0, c0+nc) (p->tile). */
static void merge_tile(const mine_plan *p, ns_matrix q, ns_matrix corpus, float scale,
                       const ns_id_lists *ex, int64_t q0, int64_t nq, int64_t c0, int64_t nc,
                       const tile_bound *tb, bad_score *bad) {
    /* Dynamic chunks: a thread that the OS preempts (a busy machine) does not hold the whole
     * tile back. */
#pragma omp parallel for num_threads(p->threads) schedule(dynamic, 32)
    for (int64_t i = 0; i < nq; i++) {
        int tid = 0;
#ifdef _OPENMP
        tid = omp_get_thread_num();
#endif
        merge_row(p, q, corpus, scale, ex, q0 + i, p->tile + i * nc, c0, 0, nc, tb, bad, tid);
    }
}

/* ---------------------------------------------------------------- per-thread tiles
 * With every query in one tile (Q ≤ NS_MINE_QUERY_BLOCK) and oneDNN, a corpus block is cut into
 * sub-tiles of p->sq queries × p->sr corpus rows (mine_plan_init): each thread of the one
 * OpenMP team takes a query slice, computes its sub-tiles with its own single-threaded GEMM and
 * merges each while it sits in L2, the corpus rows of a query still in increasing order. One
 * team, no switch between the GEMM's threads and the selection's, no barrier between them, and
 * no score tile written to and read back from memory (a shared tile is 32 MiB). */

/* One corpus block's GEMM operands: bf16 (c16 set) or f32. */
typedef struct {
    const uint16_t *q16, *c16;
    int64_t ldq16, ldc16;
    const float *qv, *cv;
    int64_t ldq, ldc;
} block_operands;

/* C = alpha·A·Bᵀ from bf16 bits with f32 products (exact) and f32 sums: what the bf16 GEMM
 * computes, within the same bound (ns_bound.h, 2.–4.), should oneDNN refuse a call. */
static void gemm_bf16_portable(int64_t m, int64_t n, int64_t d, float alpha, const uint16_t *a,
                               int64_t lda, const uint16_t *b, int64_t ldb, float *c) {
    for (int64_t i = 0; i < m; i++)
        for (int64_t j = 0; j < n; j++) {
            float s = 0.0f;
            for (int64_t t = 0; t < d; t++) {
                const uint32_t x = (uint32_t)a[i * lda + t] << 16, y = (uint32_t)b[j * ldb + t] << 16;
                float fx, fy;
                memcpy(&fx, &x, 4);
                memcpy(&fy, &y, 4);
                s += fx * fy;
            }
            c[i * n + j] = alpha * s;
        }
}

/* The scores of queries [q0, q0+nq) × block columns [j0, j0+n) into tile (n wide). */
static void sub_gemm(const mine_plan *p, const block_operands *o, float scale, int64_t q0,
                     int64_t nq, int64_t j0, int64_t n, float *tile) {
    if (o->c16) {
        const uint16_t *a = o->q16 + q0 * o->ldq16, *b = o->c16 + j0 * o->ldc16;
        if (ns_gemm_bf16_nt(nq, n, p->d, scale, a, o->ldq16, b, o->ldc16, tile, n) != 0)
            gemm_bf16_portable(nq, n, p->d, scale, a, o->ldq16, b, o->ldc16, tile);
        return;
    }
    ns_sgemm_nt(nq, n, p->d, scale, o->qv + q0 * o->ldq, o->ldq, o->cv + j0 * o->ldc, o->ldc, 0.0f,
                tile, n);
}

static void merge_block_threads(const mine_plan *p, ns_matrix q, ns_matrix corpus,
                                const ns_mine_options *opt, const block_operands *o, int64_t c0,
                                int64_t nc, const tile_bound *tb, bad_score *bad) {
    const int64_t slices = (p->Q + p->sq - 1) / p->sq;
    int team = 1;
#pragma omp parallel num_threads(p->threads)
    {
        int tid = 0;
#ifdef _OPENMP
        tid = omp_get_thread_num();
        omp_set_num_threads(1); /* this task's GEMMs: on this thread (oneDNN sizes by it) */
        if (tid == 0) team = omp_get_num_threads();
#endif
        float *tile = p->tile + (size_t)tid * (size_t)(p->sq * p->sf);
#pragma omp for schedule(dynamic, 1)
        for (int64_t s = 0; s < slices; s++) {
            const int64_t q0 = s * p->sq, nq = p->Q - q0 < p->sq ? p->Q - q0 : p->sq;
            for (int64_t j0 = 0, w; j0 < nc; j0 += w) {
                w = c0 == 0 && j0 == 0 ? p->sf : p->sr; /* the first: sets thresholds */
                const int64_t n = nc - j0 < w ? nc - j0 : w;
                sub_gemm(p, o, opt->scale, q0, nq, j0, n, tile);
                for (int64_t i = 0; i < nq; i++)
                    merge_row(p, q, corpus, opt->scale, opt->exclude, q0 + i, tile + i * n, c0, j0,
                              n, tb, bad, tid);
            }
        }
    }
    ns_gemm_note_threads(team);
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
        norm_max m = ns_mine_norms_of(q, q0, nq, p->q_exact, p->normalize, p->qbuf, p->qn + q0,
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
        norm_max cm = ns_mine_norms_of(corpus, c0, nc, p->c_exact && p->bf16, p->normalize,
                                       p->cbuf, p->cn, p->cr, convert16 ? p->cb16 : NULL,
                                       p->threads, &cv, &ldc);
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
        /* The CPU GEMMs (vdpbf16ps too) round every f32 addition to nearest. */
        tb.rel = (bf16 ? ns_bound_residual_relative(d, NS_BOUND_ACC_NEAREST)
                       : ns_bound_relative(d, 0, NS_BOUND_ACC_NEAREST)) *
                 aabs;
        tb.abs_e = up((float)ns_bound_absolute(d, aabs));
        tb.aabs = aabs;
        for (int64_t q0 = 0; q0 < Q; q0 += p->qb) {
            const int64_t nq = Q - q0 < p->qb ? Q - q0 : p->qb;
            if (!p->q_once) qv_ok = q16_ok = 0;
            int done = 0;
            block_operands o = {NULL, NULL, 0, 0, NULL, NULL, 0, 0};
            if (bf16) {
                if (p->q_exact) {
                    q16 = (const uint16_t *)ns_row(q, q0);
                    ldq16 = ns_ld(q);
                } else if (!q16_ok) {
                    if (!qv_ok) qv = ns_tile_rows(q, q0, nq, p->normalize, p->qbuf, &ldq, p->threads);
                    qv_ok = 1;
                    ns_mine_rows_prepare(qv, ldq, nq, d, NULL, NULL, p->qb16, p->threads);
                    q16 = p->qb16;
                    ldq16 = d;
                    q16_ok = 1;
                }
                if (p->thread_tiles) { /* each thread's own GEMMs, in merge_block_threads */
                    o.q16 = q16, o.ldq16 = ldq16, o.c16 = c16, o.ldc16 = ldc16;
                    done = 1;
                } else {
                    done = ns_gemm_bf16_nt(nq, nc, d, opt->scale, q16, ldq16, c16, ldc16, p->tile,
                                           nc) == 0;
                }
            }
            tile_bound tbq = tb;
            if (!done) { /* f32 GEMM: the f32 bound */
                if (!qv_ok) qv = ns_tile_rows(q, q0, nq, p->normalize, p->qbuf, &ldq, p->threads);
                qv_ok = 1;
                if (!cv) cv = ns_tile_rows(corpus, c0, nc, p->normalize, p->cbuf, &ldc, p->threads);
                if (p->thread_tiles) o.qv = qv, o.ldq = ldq, o.cv = cv, o.ldc = ldc;
                else ns_sgemm_nt(nq, nc, d, opt->scale, qv, ldq, cv, ldc, 0.0f, p->tile, nc);
                tbq.rel = ns_bound_relative(d, 0, NS_BOUND_ACC_NEAREST) * aabs;
                tbq.residual = 0;
            }
            if (p->thread_tiles) /* q_once: this is every query */
                merge_block_threads(p, q, corpus, opt, &o, c0, nc, &tbq, &bad);
            else
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
                           p->keys + (size_t)tid * scratch, &thr, p->avx512);
    }
    const int by_query = ns_mine_rescore_in_corpus_order(p, q, corpus, scale) != 0;
#pragma omp parallel for num_threads(p->threads) schedule(dynamic, 16)
    for (int64_t i = 0; i < p->Q; i++) {
        int tid = 0;
#ifdef _OPENMP
        tid = omp_get_thread_num();
#endif
        float *s = p->hs + i * p->width, *e = p->es + i * p->width;
        int64_t *id = p->hi + i * p->width, n = p->cnt[i];
        if (by_query) {
            rescorer rs = ns_mine_thread_rescorer(p, q, corpus, scale, tid);
            ns_mine_rescore(&rs, i, s, e, id, n);
        }
        uint64_t *sortbuf = p->sortbuf + (size_t)tid * 2 * (size_t)p->width;
        if (p->N <= ((int64_t)1 << 32) && ns_mine_sort_best_first_radix(s, id, n, sortbuf) == 0) {
            if (n > k) n = k;
        } else { /* rows past 2^32, or a −0 score: quickselect and heapsort */
            if (n > k) {
                ns_mine_select_nth(s, id, n, k - 1);
                n = k;
            }
            ns_mine_sort_best_first_heap(s, id, n);
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

