/* ns_filter: drops likely false negatives (the NS_FILTER_* rules of include/negsamp.h). The
 * checks of the options (which read no data), then the backend (src/cpu/cpu_filter.c,
 * kernels/cuda_filter.cu); both take their decisions through ns_filter_hits
 * (src/hostdevice/ns_math.h). */
#include "ns_dispatch.h"

#include <math.h>

#define NS_FILTER_KNOWN_RULES 0xffu
#define NS_FILTER_NEEDS_POSITIVE_SCORE (NS_FILTER_MARGIN | NS_FILTER_REL_MARGIN)
#define NS_FILTER_GUIDE_RULES (NS_FILTER_GUIDE | NS_FILTER_GUIDE_REL)

static const char *const FN = "ns_filter";

/* Checks of the options alone (no data is read, so they hold for every backend); also
 * ns_filter_sample's (src/filter_sample.c). */
ns_status ns_filter_check_options(ns_context *ctx, const char *fn, const ns_candidates *c,
                                  const ns_filter_options *o) {
    const char *const FN = fn;
    unsigned r = o->rules;
    if (r & ~NS_FILTER_KNOWN_RULES)
        return ns_fail(ctx, NS_ERR_INVALID_ARGUMENT,
                       "%s: options->rules (0x%x) has unknown bits 0x%x (known NS_FILTER_* bits: 0x%x)",
                       FN, r, r & ~NS_FILTER_KNOWN_RULES, NS_FILTER_KNOWN_RULES);
    if ((r & NS_FILTER_SAME_ID) && !c->positive_id)
        return ns_fail(ctx, NS_ERR_INVALID_ARGUMENT,
                       "%s: cand->positive_id is NULL but options->rules has NS_FILTER_SAME_ID", FN);
    if ((r & NS_FILTER_NEEDS_POSITIVE_SCORE) && !c->positive_score)
        return ns_fail(ctx, NS_ERR_INVALID_ARGUMENT,
                       "%s: cand->positive_score is NULL but options->rules has %s", FN,
                       (r & NS_FILTER_MARGIN) ? "NS_FILTER_MARGIN" : "NS_FILTER_REL_MARGIN");
    if ((r & NS_FILTER_GUIDE_RULES) && !c->guide_score)
        return ns_fail(ctx, NS_ERR_INVALID_ARGUMENT,
                       "%s: cand->guide_score is NULL but options->rules has %s", FN,
                       (r & NS_FILTER_GUIDE) ? "NS_FILTER_GUIDE" : "NS_FILTER_GUIDE_REL");
    if ((r & NS_FILTER_GUIDE_RULES) && !c->guide_positive_score)
        return ns_fail(ctx, NS_ERR_INVALID_ARGUMENT,
                       "%s: cand->guide_positive_score is NULL but options->rules has %s", FN,
                       (r & NS_FILTER_GUIDE) ? "NS_FILTER_GUIDE" : "NS_FILTER_GUIDE_REL");
    if (r & NS_FILTER_RANK) {
        if (o->rank_min < 0)
            return ns_fail(ctx, NS_ERR_INVALID_ARGUMENT,
                           "%s: options->rank_min (%lld) must be at least 0", FN,
                           (long long)o->rank_min);
        if (o->rank_max <= o->rank_min)
            return ns_fail(ctx, NS_ERR_INVALID_ARGUMENT,
                           "%s: options->rank_max (%lld) must be larger than options->rank_min (%lld)",
                           FN, (long long)o->rank_max, (long long)o->rank_min);
    }
    /* ±Inf thresholds are meaningful (a rule that never fires); NaN is not. */
    struct { unsigned rule; float v; const char *name; } m[] = {
        {NS_FILTER_MAX_SCORE, o->max_score, "max_score"},
        {NS_FILTER_MIN_SCORE, o->min_score, "min_score"},
        {NS_FILTER_MARGIN, o->margin, "margin"},
        {NS_FILTER_REL_MARGIN, o->rel_margin, "rel_margin"},
        {NS_FILTER_GUIDE_RULES, o->guide_margin, "guide_margin"},
    };
    for (size_t i = 0; i < sizeof m / sizeof m[0]; i++)
        if ((r & m[i].rule) && isnan(m[i].v))
            return ns_fail(ctx, NS_ERR_INVALID_ARGUMENT, "%s: options->%s is NaN", FN, m[i].name);
    return NS_OK;
}

ns_status ns_filter(ns_context *ctx, const ns_candidates *cand, const ns_filter_options *options,
                    uint8_t *keep, ns_filter_counts *counts) {
    ns_status st;
    if ((st = ns_check_context(ctx, FN))) return st;
    if ((st = ns_check_candidates(ctx, FN, cand))) return st;
    if ((st = ns_check_ptr(ctx, FN, "keep", keep))) return st;
    ns_filter_options resolved;
    if ((st = NS_RESOLVE_OPTIONS(ctx, FN, "options", ns_filter_options, NS_FILTER_OPTIONS_INIT,
                                 options, &resolved)))
        return st;
    const ns_filter_options *o = &resolved;
    if ((st = ns_filter_check_options(ctx, FN, cand, o))) return st;

    return NS_DISPATCH(ctx, filter, (ctx, cand, o, keep, counts));
}
