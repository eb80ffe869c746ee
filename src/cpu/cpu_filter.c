/* ns_filter on the CPU: the checks of the host data, then every rule (ns_filter_hits of
 * src/hostdevice/ns_math.h, the code the CUDA kernel runs) over every slot. */
#include "ns_cpu.h"
#include "ns_math.h"

#include <math.h>
#include <string.h>

#define NS_FILTER_NEEDS_POSITIVE_SCORE (NS_FILTER_MARGIN | NS_FILTER_REL_MARGIN)
#define NS_FILTER_GUIDE_RULES (NS_FILTER_GUIDE | NS_FILTER_GUIDE_REL)

static const char *const FN = "ns_filter";

/* Checks that read the (host) data: ids, non-finite scores of non-empty slots, positive lists.
 * Shared with ns_sample (src/sample.c) for ids and scores. */
ns_status ns_check_candidate_data(ns_context *ctx, const char *fn, const ns_candidates *c,
                                  int need_positive_score, int need_guide) {
    const int64_t n = c->queries * c->per_query;
    /* Find the first bad slot in parallel (a plain scan is a fair part of the filter's time),
     * then name what is wrong with it. */
    int64_t first = n;
#pragma omp parallel for schedule(static) num_threads(ns_threads(ctx)) reduction(min : first)
    for (int64_t t = 0; t < n; t++) {
        const int64_t id = c->id[t];
        if (id == -1) continue;
        if (id < -1 || !isfinite(c->score[t]) || (need_guide && !isfinite(c->guide_score[t])))
            if (t < first) first = t;
    }
    if (first < n) {
        const int64_t t = first, id = c->id[t];
        if (id < -1)
            return ns_fail(ctx, NS_ERR_INVALID_ARGUMENT,
                           "%s: cand->id[%lld] (%lld) is negative (expected -1 for an empty slot "
                           "or an id >= 0)",
                           fn, (long long)t, (long long)id);
        if (!isfinite(c->score[t]))
            return ns_fail(ctx, NS_ERR_NONFINITE,
                           "%s: cand->score[%lld] (query %lld, column %lld) is %g (expected finite)",
                           fn, (long long)t, (long long)(t / c->per_query),
                           (long long)(t % c->per_query), (double)c->score[t]);
        return ns_fail(ctx, NS_ERR_NONFINITE,
                       "%s: cand->guide_score[%lld] (query %lld, column %lld) is %g (expected "
                       "finite)",
                       fn, (long long)t, (long long)(t / c->per_query),
                       (long long)(t % c->per_query), (double)c->guide_score[t]);
    }
    return ns_check_candidate_rows(ctx, fn, c, need_positive_score, need_guide);
}

ns_status ns_check_candidate_rows(ns_context *ctx, const char *fn, const ns_candidates *c,
                                  int need_positive_score, int need_guide) {
    for (int64_t i = 0; i < c->queries; i++) {
        if (need_positive_score && !isfinite(c->positive_score[i]))
            return ns_fail(ctx, NS_ERR_NONFINITE,
                           "%s: cand->positive_score[%lld] is %g (expected finite)", fn,
                           (long long)i, (double)c->positive_score[i]);
        if (need_guide && !isfinite(c->guide_positive_score[i]))
            return ns_fail(ctx, NS_ERR_NONFINITE,
                           "%s: cand->guide_positive_score[%lld] is %g (expected finite)", fn,
                           (long long)i, (double)c->guide_positive_score[i]);
    }
    return NS_OK;
}

static ns_status check_positive_lists(ns_context *ctx, const ns_id_lists *p) {
    if (p->offsets[0] != 0)
        return ns_fail(ctx, NS_ERR_INVALID_ARGUMENT,
                       "%s: cand->positive_id->offsets[0] (%lld) must be 0", FN,
                       (long long)p->offsets[0]);
    for (int64_t i = 0; i < p->queries; i++)
        if (p->offsets[i + 1] < p->offsets[i])
            return ns_fail(ctx, NS_ERR_INVALID_ARGUMENT,
                           "%s: cand->positive_id->offsets[%lld] (%lld) is smaller than "
                           "offsets[%lld] (%lld) (expected non-decreasing)",
                           FN, (long long)(i + 1), (long long)p->offsets[i + 1], (long long)i,
                           (long long)p->offsets[i]);
    if (p->offsets[p->queries] > 0 && !p->ids)
        return ns_fail(ctx, NS_ERR_INVALID_ARGUMENT,
                       "%s: cand->positive_id->ids is NULL but the lists hold %lld ids", FN,
                       (long long)p->offsets[p->queries]);
    return NS_OK;
}

/* The rules over every slot; counts by OpenMP reductions. */
static void filter_rows(ns_context *ctx, const ns_candidates *c, const ns_filter_options *o,
                        uint8_t *keep, ns_filter_counts *out) {
    const int64_t B = c->queries, C = c->per_query;
    const unsigned rules = o->rules;
    /* Only what an enabled rule needs is read: a caller may leave the others dangling. */
    const int need_sp = (rules & (NS_FILTER_MARGIN | NS_FILTER_REL_MARGIN)) != 0;
    const int need_guide = (rules & (NS_FILTER_GUIDE | NS_FILTER_GUIDE_REL)) != 0;
    int64_t kept = 0, removed = 0, empty = 0, same_id = 0, max_score = 0, min_score = 0,
            margin = 0, rel_margin = 0, rank = 0, guide = 0;
#pragma omp parallel for schedule(dynamic, 16) num_threads(ns_threads(ctx))                  \
    reduction(+ : kept, removed, empty, same_id, max_score, min_score, margin, rel_margin,    \
                  rank, guide)
    for (int64_t i = 0; i < B; i++) {
        const float sp = need_sp ? c->positive_score[i] : 0.0f;
        const float gp = need_guide ? c->guide_positive_score[i] : 0.0f;
        const int64_t *pos = NULL;
        int64_t npos = 0;
        if (rules & NS_FILTER_SAME_ID) {
            pos = c->positive_id->ids + c->positive_id->offsets[i];
            npos = c->positive_id->offsets[i + 1] - c->positive_id->offsets[i];
        }
        for (int64_t j = 0; j < C; j++) {
            const int64_t t = i * C + j, id = c->id[t];
            if (id == -1) {
                keep[t] = 0;
                empty++;
                continue;
            }
            const float g = need_guide ? c->guide_score[t] : 0.0f;
            unsigned hit = ns_filter_hits(o, c->score[t], sp, g, gp, j);
            for (int64_t k = 0; k < npos; k++)
                if (pos[k] == id) {
                    hit |= NS_FILTER_SAME_ID;
                    break;
                }
            same_id += (hit & NS_FILTER_SAME_ID) != 0;
            max_score += (hit & NS_FILTER_MAX_SCORE) != 0;
            min_score += (hit & NS_FILTER_MIN_SCORE) != 0;
            margin += (hit & NS_FILTER_MARGIN) != 0;
            rel_margin += (hit & NS_FILTER_REL_MARGIN) != 0;
            rank += (hit & NS_FILTER_RANK) != 0;
            guide += (hit & NS_FILTER_GUIDE_RULES) != 0; /* both guide forms share one count */
            keep[t] = hit == 0;
            if (hit) removed++;
            else kept++;
        }
    }
    if (out) {
        out->examined = B * C;
        out->kept = kept;
        out->removed = removed;
        out->empty = empty;
        out->same_id = same_id;
        out->max_score = max_score;
        out->min_score = min_score;
        out->margin = margin;
        out->rel_margin = rel_margin;
        out->rank = rank;
        out->guide = guide;
    }
}

ns_status ns_cpu_filter(ns_context *ctx, const ns_candidates *cand, const ns_filter_options *o,
                        uint8_t *keep, ns_filter_counts *counts) {
    ns_status st;
    const unsigned r = o->rules;
    if ((r & NS_FILTER_SAME_ID) && (st = check_positive_lists(ctx, cand->positive_id))) return st;
    if ((st = ns_check_candidate_data(ctx, FN, cand, (r & NS_FILTER_NEEDS_POSITIVE_SCORE) != 0,
                                      (r & NS_FILTER_GUIDE_RULES) != 0)))
        return st;
    filter_rows(ctx, cand, o, keep, counts);
    return NS_OK;
}
