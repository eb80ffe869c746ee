/* ns_filter_sample on the CPU: ns_filter and ns_sample fused row by row. One scan of the data
 * checks (ns_cpu_filter_check, with s+ when SimANS needs it), then per query row the filter's
 * rules (ns_cpu_filter_row) and the draw (ns_cpu_sample_row) while the row's ids, scores and
 * keep bytes are still in cache: the data is read from memory once for the check and once for
 * the work, where the two calls read it four times. Same keep, counts and draws as the two
 * calls (tests/test_filter_sample.cpp). */
#include "ns_cpu.h"
#include "cpu_candidates.h"

#ifdef _OPENMP
#include <omp.h>
#endif

static const char *const FN = "ns_filter_sample";

typedef struct {
    ns_sample_plan sample;
    int64_t hits_per_thread;
    uint16_t *hits;
} fused_ws;

static void fused_layout(void *plan, ns_arena *a) {
    fused_ws *w = (fused_ws *)plan;
    ns_cpu_sample_layout(&w->sample, a);
    w->hits = (uint16_t *)ns_arena_carve(
        a, (size_t)w->hits_per_thread * (size_t)w->sample.nt * sizeof(uint16_t));
}

ns_status ns_cpu_filter_sample(ns_context *ctx, const ns_candidates *cand,
                               const ns_filter_options *fo, const ns_sampler_options *so,
                               int64_t m, uint8_t *keep, ns_filter_counts *counts,
                               int64_t *index, float *score, int64_t *count) {
    ns_status st;
    if ((st = ns_cpu_filter_check(ctx, FN, cand, fo, so->strategy == NS_SAMPLE_SIMANS)) ||
        (st = ns_cpu_sample_check(ctx, FN, cand, so, 1)))
        return st;
    const int nt = ns_threads(ctx), isa = ns_cpu_sample_keys_isa();
    const int64_t B = cand->queries, C = cand->per_query;
    fused_ws w;
    ns_cpu_sample_plan(&w.sample, C, m, nt);
    w.hits_per_thread = (C + 31) / 32 * 32;
    w.hits = NULL;
    if ((st = ns_arena_lay_out(ctx, &ctx->scratch, fused_layout, &w, FN))) return st;
    int64_t cnt[NS_FILTER_NCOUNTS] = {0};
#pragma omp parallel num_threads(nt) reduction(+ : cnt[:NS_FILTER_NCOUNTS])
    {
#ifdef _OPENMP
        const int tid = omp_get_thread_num();
#else
        const int tid = 0;
#endif
        const ns_sample_scratch sw = ns_cpu_sample_scratch(&w.sample, tid);
        uint16_t *h = w.hits + w.hits_per_thread * tid;
#pragma omp for schedule(dynamic, 64)
        for (int64_t i = 0; i < B; i++) {
            ns_cpu_filter_row(cand, fo, i, h, keep + i * C, counts ? cnt : NULL);
            count[i] = ns_cpu_sample_row(cand, keep + i * C, so, isa, m, i, &sw, index + i * m,
                                         score ? score + i * m : NULL);
        }
    }
    if (counts) ns_cpu_filter_counts_out(cnt, B * C, counts);
    return NS_OK;
}
