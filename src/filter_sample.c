/* ns_filter_sample: ns_filter then ns_sample in one call (contract in include/negsamp.h). The
 * option checks of both (src/filter.c, src/sample.c), then the backend: the CPU fuses the two
 * per row with one scan of the data checks (src/cpu/cpu_filter_sample.c); CUDA runs its two
 * kernels (kernels/cuda_sample.cu). */
#include "ns_dispatch.h"

static const char *const FN = "ns_filter_sample";

ns_status ns_filter_sample(ns_context *ctx, const ns_candidates *cand,
                           const ns_filter_options *filter, const ns_sampler_options *sampler,
                           int64_t m, uint8_t *keep, ns_filter_counts *counts, int64_t *index,
                           float *score, int64_t *count) {
    ns_status st;
    if ((st = ns_check_context(ctx, FN))) return st;
    if ((st = ns_check_candidates(ctx, FN, cand))) return st;
    if ((st = ns_check_ptr(ctx, FN, "keep", keep))) return st;
    if ((st = ns_check_ptr(ctx, FN, "index", index))) return st;
    if ((st = ns_check_ptr(ctx, FN, "count", count))) return st;
    ns_filter_options fo;
    ns_sampler_options so;
    if ((st = NS_RESOLVE_OPTIONS(ctx, FN, "filter", ns_filter_options, NS_FILTER_OPTIONS_INIT,
                                 filter, &fo)) ||
        (st = NS_RESOLVE_OPTIONS(ctx, FN, "sampler", ns_sampler_options,
                                 NS_SAMPLER_OPTIONS_INIT, sampler, &so)))
        return st;
    if ((st = ns_filter_check_options(ctx, FN, cand, &fo)) ||
        (st = ns_sample_check_options(ctx, FN, cand, &so, m)))
        return st;
    return NS_DISPATCH(ctx, filter_sample, (ctx, cand, &fo, &so, m, keep, counts, index, score,
                                            count));
}
