/* ns_sample_corpus on the CPU: the data checks (weights, lists), the cumulative table
 * (src/hostdevice/ns_weighted_math.h: chunks in parallel, their prefix in order), then the
 * per-query draws in parallel — the same functions the CUDA kernels call. */
#include "ns_cpu.h"
#include "ns_weighted_math.h"

#include <math.h>
#ifdef _OPENMP
#include <omp.h>
#endif

static const char *const FN = "ns_sample_corpus";

typedef struct {
    int64_t N, chunks;
    double *cum, *pre;
} wt_ws;

static void wt_layout(void *plan, ns_arena *a) {
    wt_ws *p = (wt_ws *)plan;
    p->cum = (double *)ns_arena_carve(a, (size_t)p->N * sizeof(double));
    p->pre = (double *)ns_arena_carve(a, (size_t)(p->chunks + 1) * sizeof(double));
}

/* The lists: offsets[0] == 0, non-decreasing, ids in [0, N). */
static ns_status check_lists(ns_context *ctx, const ns_id_lists *x, int64_t N) {
    return ns_check_id_lists_data(ctx, FN, "exclude", x, x->queries, N, "the corpus rows", NULL);
}

ns_status ns_cpu_sample_corpus(ns_context *ctx, const ns_corpus_weights *cw,
                               const ns_id_lists *exclude, const ns_corpus_sampler_options *o,
                               int64_t queries, int64_t m, int64_t *index, int64_t *count) {
    ns_status st;
    const int64_t N = cw->rows;
    const float *w = cw->weight;
    const float alpha = o->alpha;
    const int nt = ns_threads(ctx);
    if (exclude && (st = check_lists(ctx, exclude, N))) return st;

    float lmax = 0.0f;
    wt_ws p = {N, (N + NS_WT_CHUNK - 1) / NS_WT_CHUNK, NULL, NULL};
    if (w) {
        /* The first bad weight (lowest row) and the largest log-weight: order-free. */
        int64_t bad = N, positive = 0;
        float lm = -INFINITY;
#pragma omp parallel for num_threads(nt) reduction(min : bad) reduction(+ : positive) \
    reduction(max : lm)
        for (int64_t r = 0; r < N; r++) {
            const float x = w[r];
            if (!(x >= 0.0f) || isinf(x)) {
                if (r < bad) bad = r;
            } else if (x > 0.0f) {
                positive++;
                const float l = ns_wt_logw(x, alpha);
                if (l > lm) lm = l;
            }
        }
        if (bad < N)
            return ns_fail(ctx, isfinite(w[bad]) ? NS_ERR_INVALID_ARGUMENT : NS_ERR_NONFINITE,
                           "%s: w->weight[%lld] (%g) must be finite and >= 0", FN, (long long)bad,
                           (double)w[bad]);
        if (positive == 0)
            return ns_fail(ctx, NS_ERR_INVALID_ARGUMENT,
                           "%s: w->weight has no positive entry (all %lld rows are 0)", FN,
                           (long long)N);
        lmax = lm;
        if ((st = ns_arena_lay_out(ctx, &ctx->scratch, wt_layout, &p, FN))) return st;
        double *pre = p.pre;
#pragma omp parallel for num_threads(nt) schedule(static)
        for (int64_t c = 0; c < p.chunks; c++) {
            const int64_t r0 = c * NS_WT_CHUNK, r1 = r0 + NS_WT_CHUNK < N ? r0 + NS_WT_CHUNK : N;
            pre[c + 1] = ns_wt_chunk_scan(w, r0, r1, alpha, lmax, p.cum);
        }
        pre[0] = 0.0;
        for (int64_t c = 0; c < p.chunks; c++) pre[c + 1] = ns_dadd(pre[c], pre[c + 1]);
        if (!(pre[p.chunks] > 0.0))
            return ns_fail(ctx, NS_ERR_INVALID_ARGUMENT,
                           "%s: the weights w->weight^alpha (alpha = %g) sum to 0", FN,
                           (double)alpha);
#pragma omp parallel for num_threads(nt) schedule(static)
        for (int64_t r = 0; r < N; r++) p.cum[r] = ns_dadd(pre[r / NS_WT_CHUNK], p.cum[r]);
    }
    const double *cum = w ? p.cum : NULL;
    const int64_t *off = exclude ? exclude->offsets : NULL;
    const int64_t *ids = exclude ? exclude->ids : NULL;
#pragma omp parallel for num_threads(nt) schedule(dynamic, 16)
    for (int64_t i = 0; i < queries; i++) {
        const int64_t *ex = off ? ids + off[i] : NULL;
        const int64_t nex = off ? off[i + 1] - off[i] : 0;
        count[i] = ns_wt_draw_query(cum, w, alpha, lmax, N, ex, nex, o->seed, o->step,
                                    o->query_offset + i, m, index + i * m);
    }
    return NS_OK;
}
