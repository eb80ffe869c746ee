/* ns_similarity: the argument checks, then the backend (src/cpu/cpu_similarity.c,
 * kernels/cuda_similarity.cu). */
#include "ns_dispatch.h"

#include <limits.h>
#include <math.h>

static ns_status check_int_dims(ns_context *ctx, const char *fn, const char *name, ns_matrix m) {
    if (m.cols > INT_MAX || ns_ld(m) > INT_MAX)
        return ns_fail(ctx, NS_ERR_UNSUPPORTED,
                       "%s: %s.cols (%lld) / ld (%lld) exceed the BLAS limit of %d", fn, name,
                       (long long)m.cols, (long long)ns_ld(m), INT_MAX);
    return NS_OK;
}

ns_status ns_similarity(ns_context *ctx, ns_matrix q, ns_matrix p, float scale, unsigned flags,
                        float *s) {
    static const char *fn = "ns_similarity";
    ns_status st;
    if ((st = ns_check_context(ctx, fn))) return st;
    if ((st = ns_check_matrix(ctx, fn, "q", q, 0))) return st;
    if ((st = ns_check_matrix(ctx, fn, "p", p, 0))) return st;
    if (q.cols != p.cols)
        return ns_fail(ctx, NS_ERR_INVALID_ARGUMENT, "%s: q has %lld columns but p has %lld", fn,
                       (long long)q.cols, (long long)p.cols);
    if (!isfinite(scale))
        return ns_fail(ctx, NS_ERR_INVALID_ARGUMENT, "%s: scale (%g) must be finite", fn,
                       (double)scale);
    if (flags & ~NS_NORMALIZE)
        return ns_fail(ctx, NS_ERR_INVALID_ARGUMENT,
                       "%s: flags (0x%x) has bits other than NS_NORMALIZE (0x%x)", fn, flags,
                       NS_NORMALIZE);
    if ((st = ns_check_ptr(ctx, fn, "s", s))) return st;
    if ((st = check_int_dims(ctx, fn, "q", q))) return st;
    if ((st = check_int_dims(ctx, fn, "p", p))) return st;
    if (p.rows > INT_MAX)
        return ns_fail(ctx, NS_ERR_UNSUPPORTED,
                       "%s: p.rows (%lld) exceeds the BLAS limit of %d for the output's ld", fn,
                       (long long)p.rows, INT_MAX);
    return NS_DISPATCH(ctx, similarity, (ctx, q, p, scale, flags, s));
}
