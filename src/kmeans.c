/* ns_kmeans: Lloyd's k-means, deterministic for a seed (contract in include/negsamp.h). The
 * checks that read no data, then the backend (src/cpu/cpu_kmeans.c, kernels/cuda_kmeans.cu),
 * which runs the one driver of src/kmeans_lloyd.c over its passes. */
#include "ns_dispatch.h"

#include <math.h>

static const char *const FN = "ns_kmeans";

#define NS_KMEANS_MAX_ITERATIONS 1000000

ns_status ns_kmeans(ns_context *ctx, ns_matrix x, int64_t k, const ns_kmeans_options *options,
                    int64_t *labels, float *centroids, double *inertia, int64_t *iterations) {
    ns_status st;
    if ((st = ns_check_context(ctx, FN))) return st;
    if ((st = ns_check_matrix(ctx, FN, "x", x, 0))) return st;
    if ((st = ns_check_ptr(ctx, FN, "labels", labels))) return st;
    if ((st = ns_check_ptr(ctx, FN, "centroids", centroids))) return st;
    if ((st = ns_check_ptr(ctx, FN, "inertia", inertia))) return st;
    if ((st = ns_check_ptr(ctx, FN, "iterations", iterations))) return st;
    ns_kmeans_options o;
    if ((st = NS_RESOLVE_OPTIONS(ctx, FN, "options", ns_kmeans_options, NS_KMEANS_OPTIONS_INIT,
                                 options, &o)))
        return st;
    if (k < 1)
        return ns_fail(ctx, NS_ERR_INVALID_ARGUMENT, "%s: k (%lld) must be at least 1", FN,
                       (long long)k);
    if (k > x.rows)
        return ns_fail(ctx, NS_ERR_INVALID_ARGUMENT,
                       "%s: k (%lld) is larger than the number of rows (x.rows = %lld)", FN,
                       (long long)k, (long long)x.rows);
    if (x.rows >= ((int64_t)1 << 48))
        return ns_fail(ctx, NS_ERR_UNSUPPORTED, "%s: x.rows (%lld) must be below 2^48", FN,
                       (long long)x.rows);
    if (o.spherical != 0 && o.spherical != 1)
        return ns_fail(ctx, NS_ERR_INVALID_ARGUMENT, "%s: options->spherical (%d) must be 0 or 1",
                       FN, o.spherical);
    if (o.init != NS_KMEANS_PLUSPLUS && o.init != NS_KMEANS_RANDOM)
        return ns_fail(ctx, NS_ERR_INVALID_ARGUMENT,
                       "%s: options->init (%d) must be NS_KMEANS_PLUSPLUS (0) or "
                       "NS_KMEANS_RANDOM (1)", FN, (int)o.init);
    if (o.max_iterations < 0 || o.max_iterations > NS_KMEANS_MAX_ITERATIONS)
        return ns_fail(ctx, NS_ERR_INVALID_ARGUMENT,
                       "%s: options->max_iterations (%lld) must be in [0, %d]", FN,
                       (long long)o.max_iterations, NS_KMEANS_MAX_ITERATIONS);
    if (!(o.tolerance >= 0.0) || isinf(o.tolerance))
        return ns_fail(ctx, NS_ERR_INVALID_ARGUMENT,
                       "%s: options->tolerance (%g) must be finite and >= 0", FN, o.tolerance);
    if (isnan(o.balance) || isinf(o.balance))
        return ns_fail(ctx, NS_ERR_INVALID_ARGUMENT,
                       "%s: options->balance (%g) must be finite (< 0: unbalanced)", FN,
                       o.balance);
    return NS_DISPATCH(ctx, kmeans, (ctx, x, k, &o, labels, centroids, inertia, iterations));
}
