/* ns_sample: m negatives per query among the kept candidates, without replacement, exactly by
 * weight, with the Gumbel-top-m trick (contract in include/negsamp.h). The checks of the
 * options, then the backend (src/cpu/cpu_sample.c, kernels/cuda_sample.cu); both draw their
 * keys from ns_sample_key (src/hostdevice/ns_math.h: the RNG layout), so they pick the same
 * candidates. */
#include "ns_dispatch.h"

#include <math.h>

static const char *const FN = "ns_sample";

/* The sampler's parameters (strategy, SimANS a and b, softmax temperature), each checked for the
 * strategy that uses it; name is how the caller knows the struct ("options", or the step's
 * "options->sampler"), so the message names the field the caller set. */
ns_status ns_sampler_check_params(ns_context *ctx, const char *fn, const char *name,
                                  const ns_sampler_options *o) {
    if (o->strategy != NS_SAMPLE_TOP && o->strategy != NS_SAMPLE_UNIFORM &&
        o->strategy != NS_SAMPLE_SIMANS && o->strategy != NS_SAMPLE_SOFTMAX)
        return ns_fail(ctx, NS_ERR_INVALID_ARGUMENT,
                       "%s: %s->strategy (%d) is not NS_SAMPLE_TOP, _UNIFORM, _SIMANS or "
                       "_SOFTMAX",
                       fn, name, (int)o->strategy);
    if (o->strategy == NS_SAMPLE_SIMANS) {
        if (!(o->simans_a > 0.0f) || !isfinite(o->simans_a))
            return ns_fail(ctx, NS_ERR_INVALID_ARGUMENT,
                           "%s: %s->simans_a (%g) must be finite and > 0", fn, name,
                           (double)o->simans_a);
        if (!isfinite(o->simans_b))
            return ns_fail(ctx, NS_ERR_INVALID_ARGUMENT, "%s: %s->simans_b (%g) must be finite",
                           fn, name, (double)o->simans_b);
    }
    if (o->strategy == NS_SAMPLE_SOFTMAX && (!(o->temperature > 0.0f) || !isfinite(o->temperature)))
        return ns_fail(ctx, NS_ERR_INVALID_ARGUMENT,
                       "%s: %s->temperature (%g) must be finite and > 0", fn, name,
                       (double)o->temperature);
    return NS_OK;
}

/* Checks of the options alone (no data is read); also ns_filter_sample's (src/filter_sample.c). */
ns_status ns_sample_check_options(ns_context *ctx, const char *fn, const ns_candidates *c,
                                  const ns_sampler_options *o, int64_t m) {
    ns_status st;
    if ((st = ns_sampler_check_params(ctx, fn, "options", o))) return st;
    if (m < 1)
        return ns_fail(ctx, NS_ERR_INVALID_ARGUMENT, "%s: m (%lld) must be at least 1", fn,
                       (long long)m);
    if (m > c->per_query)
        return ns_fail(ctx, NS_ERR_INVALID_ARGUMENT,
                       "%s: m (%lld) is larger than the candidates per query (%lld)", fn,
                       (long long)m, (long long)c->per_query);
    if (o->strategy == NS_SAMPLE_SIMANS && !c->positive_score)
        return ns_fail(ctx, NS_ERR_INVALID_ARGUMENT,
                       "%s: cand->positive_score is NULL but NS_SAMPLE_SIMANS needs s+", fn);
    return NS_OK;
}

ns_status ns_sample(ns_context *ctx, const ns_candidates *cand, const uint8_t *keep,
                    const ns_sampler_options *options, int64_t m, int64_t *index, float *score,
                    int64_t *count) {
    ns_status st;
    if ((st = ns_check_context(ctx, FN))) return st;
    if ((st = ns_check_candidates(ctx, FN, cand))) return st;
    if ((st = ns_check_ptr(ctx, FN, "index", index))) return st;
    if ((st = ns_check_ptr(ctx, FN, "count", count))) return st;
    ns_sampler_options resolved;
    if ((st = NS_RESOLVE_OPTIONS(ctx, FN, "options", ns_sampler_options, NS_SAMPLER_OPTIONS_INIT,
                                 options, &resolved)))
        return st;
    const ns_sampler_options *o = &resolved;
    if ((st = ns_sample_check_options(ctx, FN, cand, o, m))) return st;

    return NS_DISPATCH(ctx, sample, (ctx, cand, keep, o, m, index, score, count));
}
