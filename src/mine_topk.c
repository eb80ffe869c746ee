/* ns_mine_topk: the argument checks, then the backend (src/cpu/cpu_mine_topk.c,
 * kernels/cuda_mine_topk.cu). The exclusion lists are data: their offsets and ids are checked by
 * the backend that can read them. */
#include "ns_dispatch.h"
#include "ns_mine_ranks.h"

#include <limits.h>
#include <math.h>

static ns_status check_exclusions(ns_context *ctx, const char *fn, const ns_id_lists *ex,
                                  int64_t queries) {
    if (!ex) return NS_OK;
    if (ex->queries != queries)
        return ns_fail(ctx, NS_ERR_INVALID_ARGUMENT,
                       "%s: options->exclude->queries (%lld) differs from q.rows (%lld)", fn,
                       (long long)ex->queries, (long long)queries);
    if (!ex->offsets)
        return ns_fail(ctx, NS_ERR_INVALID_ARGUMENT, "%s: options->exclude->offsets is NULL", fn);
    return NS_OK;
}

/* ranks: with a communicator this rank's corpus is a shard, which may be empty and smaller than
 * k (the bound on k is over every rank's rows, checked by src/mine_ranks.c). */
static ns_status check_args(ns_context *ctx, const char *fn, ns_matrix q, ns_matrix corpus,
                            int64_t k, const ns_mine_options *opt, int64_t *index, float *score,
                            int ranks) {
    ns_status st;
    if ((st = ns_check_matrix(ctx, fn, "q", q, 0))) return st;
    if ((st = ns_check_matrix(ctx, fn, "corpus", corpus, ranks))) return st;
    if (corpus.rows == 0) corpus.cols = q.cols, corpus.ld = 0;
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
    if (k > corpus.rows && !ranks)
        return ns_fail(ctx, NS_ERR_INVALID_ARGUMENT,
                       "%s: k (%lld) is larger than the corpus (%lld rows)", fn, (long long)k,
                       (long long)corpus.rows);
    if (k > NS_MAX_K)
        return ns_fail(ctx, NS_ERR_INVALID_ARGUMENT, "%s: k (%lld) is larger than NS_MAX_K (%d)",
                       fn, (long long)k, NS_MAX_K);
    if (!isfinite(opt->scale))
        return ns_fail(ctx, NS_ERR_INVALID_ARGUMENT, "%s: options->scale (%g) must be finite", fn,
                       (double)opt->scale);
    if (opt->flags & ~(NS_NORMALIZE | NS_MINE_RESULT_ON_RANK0))
        return ns_fail(ctx, NS_ERR_INVALID_ARGUMENT,
                       "%s: options->flags (0x%x) has bits other than NS_NORMALIZE (0x%x) and "
                       "NS_MINE_RESULT_ON_RANK0 (0x%x)",
                       fn, opt->flags, NS_NORMALIZE, NS_MINE_RESULT_ON_RANK0);
    if ((st = check_exclusions(ctx, fn, opt->exclude, q.rows))) return st;
    /* A rank other than 0 writes no result when it goes to rank 0 only. */
    if ((opt->flags & NS_MINE_RESULT_ON_RANK0) && ns_comm_rank(opt->comm) != 0) return NS_OK;
    if ((st = ns_check_ptr(ctx, fn, "index", index))) return st;
    if ((st = ns_check_ptr(ctx, fn, "score", score))) return st;
    return NS_OK;
}

ns_status ns_mine_topk(ns_context *ctx, ns_matrix q, ns_matrix corpus, int64_t k,
                       const ns_mine_options *options, int64_t *index, float *score) {
    static const char *fn = "ns_mine_topk";
    ns_mine_options resolved;
    ns_status st;
    if ((st = ns_check_context(ctx, fn))) return st;
    if ((st = NS_RESOLVE_OPTIONS(ctx, fn, "options", ns_mine_options, NS_MINE_OPTIONS_INIT,
                                 options, &resolved)))
        return st;
    options = &resolved;
    st = check_args(ctx, fn, q, corpus, k, options, index, score, options->comm != NULL);
    if (options->comm) return ns_mine_topk_ranks(ctx, q, corpus, k, options, index, score, st, fn);
    if (st) return st;
    return NS_DISPATCH(ctx, mine_topk, (ctx, q, corpus, k, options, index, score));
}
