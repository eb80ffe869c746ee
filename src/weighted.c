/* ns_sample_corpus: m distinct corpus rows per query, drawn without replacement by per-row
 * weight^alpha over the whole corpus, each query's excluded rows (positives) never drawn
 * (contract in include/negsamp.h). The checks that read no data, then the backend
 * (src/cpu/cpu_weighted.c, kernels/cuda_weighted.cu); both run the per-query draw of
 * src/hostdevice/ns_weighted_math.h on the same cumulative table, so they draw the same rows.
 *
 * The scheme, for a corpus of N up to ~10^7 rows and small m:
 *  1. One table per call, shared by all queries: v_r = weight[r]^alpha and the inclusive
 *     prefix sums cum[r] (double, in a fixed chunked order, so both backends and any thread
 *     count build the same bits). O(N) once, instead of O(N) per query as Gumbel-top-m over
 *     the corpus would cost.
 *  2. Per query, successive sampling with rejection: attempt a draws u_a (Philox4x32-10 keyed
 *     by seed, countered by (step, qid = query_offset + i, a)), takes the row r with
 *     cum[r−1] <= u_a·total < cum[r] — row r with probability v_r / Σv — and accepts it unless
 *     r is in the query's exclusion list or already drawn; otherwise the next attempt.
 *     O(log N · (1 + rejections)) per draw.
 *  3. Fallback: after NS_WT_MAX_REJECT rejections in a row (exclusions or earlier draws hold
 *     most of the mass), the next attempt's u picks directly among the eligible rows by their
 *     running sum (O(N) for that draw); no eligible mass left → count < m, −1 padding.
 *
 * Why it is exact. Let S be the rows drawn so far and X the excluded rows; the eligible set is
 * E = {v_r > 0} \ (S ∪ X). Successive sampling without replacement draws the next row r ∈ E with
 * probability v_r / Σ_{E} v. One attempt of step 2 returns r ∈ E with probability v_r / Σv and
 * rejects with probability ρ = Σ_{S∪X} v / Σv; the attempts are independent (distinct Philox
 * counters), so the accepted row after any number of rejections is r with probability
 *     Σ_{j>=0} ρ^j · v_r / Σv = v_r / ((1 − ρ) Σv) = v_r / Σ_{E} v,
 * and, given that the first j attempts were all rejected (which is how step 3 is reached), the
 * conditional law of the row eventually accepted is the same (the attempts are memoryless), and
 * step 3 draws exactly that law directly. Hence each draw has the successive-sampling law, and
 * so does the whole sequence — the same law as Gumbel-top-m over log v (ns_sample's scheme).
 * "Exact" is up to floating point, as for ns_sample: v in double from an f32 log (alpha ≠ 0, 1;
 * alpha = 1 uses the weights as given), the table rounded to 2^-53 of the running total, u on
 * a 2^-52 grid.
 *
 * Determinism: the table depends only on the weights and alpha, and query i's draws only on the
 * table, its list, seed, step and its global id — not on threads, batch split, rank or
 * backend. The RNG counter's candidate slot holds the attempt number (not a corpus row: with
 * rejection a row has no attempt of its own) and the words used are 2 and 3 of the Philox block,
 * so the same seed in ns_sample (word 0) draws independent numbers. */
#include "ns_dispatch.h"
#include "ns_weighted_math.h"

#include <math.h>

static const char *const FN = "ns_sample_corpus";

ns_status ns_sample_corpus(ns_context *ctx, const ns_corpus_weights *w, const ns_id_lists *exclude,
                           const ns_corpus_sampler_options *options, int64_t queries, int64_t m,
                           int64_t *index, int64_t *count) {
    ns_status st;
    if ((st = ns_check_context(ctx, FN))) return st;
    if ((st = ns_check_ptr(ctx, FN, "w", w))) return st;
    if ((st = ns_check_ptr(ctx, FN, "index", index))) return st;
    if ((st = ns_check_ptr(ctx, FN, "count", count))) return st;
    ns_corpus_sampler_options o;
    if ((st = NS_RESOLVE_OPTIONS(ctx, FN, "options", ns_corpus_sampler_options,
                                 NS_CORPUS_SAMPLER_OPTIONS_INIT, options, &o)))
        return st;
    if (w->rows < 1)
        return ns_fail(ctx, NS_ERR_INVALID_ARGUMENT, "%s: w->rows (%lld) must be at least 1", FN,
                       (long long)w->rows);
    if (w->rows >= ((int64_t)1 << 48))
        return ns_fail(ctx, NS_ERR_UNSUPPORTED, "%s: w->rows (%lld) must be below 2^48", FN,
                       (long long)w->rows);
    if (queries < 0)
        return ns_fail(ctx, NS_ERR_INVALID_ARGUMENT, "%s: queries (%lld) must be >= 0", FN,
                       (long long)queries);
    if (m < 1)
        return ns_fail(ctx, NS_ERR_INVALID_ARGUMENT, "%s: m (%lld) must be at least 1", FN,
                       (long long)m);
    if (m > w->rows)
        return ns_fail(ctx, NS_ERR_INVALID_ARGUMENT,
                       "%s: m (%lld) is larger than the corpus (w->rows = %lld)", FN,
                       (long long)m, (long long)w->rows);
    if (!isfinite(o.alpha) || fabsf(o.alpha) > NS_WT_MAX_ALPHA)
        return ns_fail(ctx, NS_ERR_INVALID_ARGUMENT,
                       "%s: options->alpha (%g) must be finite with |alpha| <= %g", FN,
                       (double)o.alpha, (double)NS_WT_MAX_ALPHA);
    if (o.query_offset < 0)
        return ns_fail(ctx, NS_ERR_INVALID_ARGUMENT,
                       "%s: options->query_offset (%lld) must be >= 0", FN,
                       (long long)o.query_offset);
    if (exclude) {
        if (exclude->queries != queries)
            return ns_fail(ctx, NS_ERR_INVALID_ARGUMENT,
                           "%s: exclude->queries (%lld) differs from queries (%lld)", FN,
                           (long long)exclude->queries, (long long)queries);
        if (!exclude->offsets)
            return ns_fail(ctx, NS_ERR_INVALID_ARGUMENT, "%s: exclude->offsets is NULL", FN);
    }
    if (queries == 0) return NS_OK;
    return NS_DISPATCH(ctx, sample_corpus, (ctx, w, exclude, &o, queries, m, index, count));
}
