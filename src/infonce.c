/* InfoNCE: the public entry points and their argument checks (the checks of the options and
 * shapes, which read no data), then the backend (src/cpu/cpu_infonce_*.c,
 * kernels/cuda_infonce_*.cu). */
#include "infonce_internal.h"
#include "ns_dispatch.h"

#include <math.h>
#include <string.h>

static int is_flag(int v) { return v == 0 || v == 1; }

void ns_loss_groups_resolve(const ns_loss_options *o, ns_loss_groups *g) {
    static const ns_loss_groups init = NS_LOSS_GROUPS_INIT;
    *g = init;
    if (!o->groups) return;
    size_t n;
    memcpy(&n, o->groups, sizeof n);
    memcpy(g, o->groups, n < sizeof *g ? n : sizeof *g);
    g->struct_size = sizeof *g;
}

/* options->groups: struct_size (an older or newer header), the query ids, the weight. The ids'
 * values need no check: any negative id is "no group". */
static ns_status check_groups(ns_context *ctx, const char *fn, const ns_loss_groups *given) {
    if (!given) return NS_OK;
    ns_loss_groups g;
    ns_status st = NS_RESOLVE_OPTIONS(ctx, fn, "options->groups", ns_loss_groups,
                                      NS_LOSS_GROUPS_INIT, given, &g);
    if (st) return st;
    if (!g.query)
        return ns_fail(ctx, NS_ERR_INVALID_ARGUMENT,
                       "%s: options->groups->query is NULL (the query group ids are required "
                       "when options->groups is given)",
                       fn);
    if (!(g.weight >= 0.0f && g.weight <= 1.0f))
        return ns_fail(ctx, NS_ERR_INVALID_ARGUMENT,
                       "%s: options->groups->weight (%g) must be 0 (mask) or in (0, 1] "
                       "(down-weight)",
                       fn, (double)g.weight);
    return NS_OK;
}

/* The loss's scalar options; name is how the caller knows the struct ("options", or the step's
 * "options->loss"), so the message names the field the caller set. */
ns_status ns_loss_check_params(ns_context *ctx, const char *fn, const char *name,
                               const ns_loss_options *o) {
    if (!(o->temperature > 0.0f) || !isfinite(o->temperature))
        return ns_fail(ctx, NS_ERR_INVALID_ARGUMENT, "%s: %s->temperature (%g) must be finite and > 0",
                       fn, name, (double)o->temperature);
    if (!(o->tau_plus >= 0.0f && o->tau_plus < 1.0f))
        return ns_fail(ctx, NS_ERR_INVALID_ARGUMENT, "%s: %s->tau_plus (%g) must be in [0, 1)", fn,
                       name, (double)o->tau_plus);
    if (!(o->beta >= 0.0f) || !isfinite(o->beta))
        return ns_fail(ctx, NS_ERR_INVALID_ARGUMENT, "%s: %s->beta (%g) must be finite and >= 0",
                       fn, name, (double)o->beta);
    if (!is_flag(o->symmetric))
        return ns_fail(ctx, NS_ERR_INVALID_ARGUMENT, "%s: %s->symmetric (%d) must be 0 or 1", fn,
                       name, o->symmetric);
    if (!is_flag(o->mask_same_id))
        return ns_fail(ctx, NS_ERR_INVALID_ARGUMENT, "%s: %s->mask_same_id (%d) must be 0 or 1",
                       fn, name, o->mask_same_id);
    if (!is_flag(o->share_hard))
        return ns_fail(ctx, NS_ERR_INVALID_ARGUMENT, "%s: %s->share_hard (%d) must be 0 or 1", fn,
                       name, o->share_hard);
    return NS_OK;
}

ns_status ns_infonce_check(ns_context *ctx, const char *fn, const ns_infonce_inputs *in,
                           const ns_loss_options **optp, ns_loss_options *defaults) {
    ns_status st;
    if ((st = ns_check_ptr(ctx, fn, "inputs", in))) return st;
    if ((st = NS_RESOLVE_OPTIONS(ctx, fn, "options", ns_loss_options, NS_LOSS_OPTIONS_INIT,
                                 *optp, defaults)))
        return st;
    const ns_loss_options *o = *optp = defaults;
    if ((st = ns_loss_check_params(ctx, fn, "options", o))) return st;

    if ((st = check_groups(ctx, fn, o->groups))) return st;

    if ((st = ns_check_matrix(ctx, fn, "query", in->query, 0))) return st;
    if ((st = ns_check_matrix(ctx, fn, "passage", in->passage, 0))) return st;
    int64_t B = in->query.rows, N = in->passage.rows, d = in->query.cols;
    if (in->passage.cols != d)
        return ns_fail(ctx, NS_ERR_INVALID_ARGUMENT,
                       "%s: query has %lld columns but passage has %lld", fn, (long long)d,
                       (long long)in->passage.cols);
    if (!in->positive && B > N)
        return ns_fail(ctx, NS_ERR_INVALID_ARGUMENT,
                       "%s: positive is NULL, so query i's positive is passage row i, but there "
                       "are %lld queries and only %lld passages",
                       fn, (long long)B, (long long)N);
    int64_t h = in->hard_per_query;
    if (h < 0)
        return ns_fail(ctx, NS_ERR_INVALID_ARGUMENT,
                       "%s: hard_per_query (%lld) is negative; expected 0 (none) or more", fn,
                       (long long)h);
    if (h > 0) {
        if ((st = ns_check_matrix(ctx, fn, "hard", in->hard, 0))) return st;
        if (in->hard.rows / h != B || in->hard.rows % h != 0)
            return ns_fail(ctx, NS_ERR_INVALID_ARGUMENT,
                           "%s: hard has %lld rows but queries × hard_per_query is %lld × %lld",
                           fn, (long long)in->hard.rows, (long long)B, (long long)h);
        if (in->hard.cols != d)
            return ns_fail(ctx, NS_ERR_INVALID_ARGUMENT,
                           "%s: query has %lld columns but hard has %lld", fn, (long long)d,
                           (long long)in->hard.cols);
    } else if (in->hard.rows != 0) {
        return ns_fail(ctx, NS_ERR_INVALID_ARGUMENT,
                       "%s: hard has %lld rows but hard_per_query is 0 (expected 0 rows)", fn,
                       (long long)in->hard.rows);
    }
    if ((st = ns_check_matrix(ctx, fn, "extra", in->extra, 1))) return st;
    if (in->extra.rows > 0 && in->extra.cols != d)
        return ns_fail(ctx, NS_ERR_INVALID_ARGUMENT,
                       "%s: query has %lld columns but extra has %lld", fn, (long long)d,
                       (long long)in->extra.cols);
    return NS_OK;
}

/* ------------------------------------------------------------------ public entry points */

ns_status ns_infonce_forward(ns_context *ctx, const ns_infonce_inputs *in,
                             const ns_loss_options *options, float *loss, float *per_query,
                             float *saved) {
    static const char *fn = "ns_infonce_forward";
    ns_status st = ns_check_context(ctx, fn);
    if (st) return st;
    ns_loss_options defaults;
    if ((st = ns_infonce_check(ctx, fn, in, &options, &defaults))) return st;
    if ((st = ns_check_ptr(ctx, fn, "loss", loss))) return st;
    if ((st = ns_check_ptr(ctx, fn, "saved", saved))) return st;
    return NS_DISPATCH(ctx, infonce_forward, (ctx, in, options, loss, per_query, saved));
}

ns_status ns_infonce_backward(ns_context *ctx, const ns_infonce_inputs *in,
                              const ns_loss_options *options, const float *saved,
                              float grad_loss, const ns_infonce_grads *grads) {
    static const char *fn = "ns_infonce_backward";
    ns_status st = ns_check_context(ctx, fn);
    if (st) return st;
    ns_loss_options defaults;
    if ((st = ns_infonce_check(ctx, fn, in, &options, &defaults))) return st;
    if ((st = ns_check_ptr(ctx, fn, "saved", saved))) return st;
    if ((st = ns_check_ptr(ctx, fn, "grads", grads))) return st;
    if (!isfinite(grad_loss))
        return ns_fail(ctx, NS_ERR_NONFINITE, "%s: grad_loss (%g) is not finite", fn,
                       (double)grad_loss);
    return NS_DISPATCH(ctx, infonce_backward, (ctx, in, options, saved, grad_loss, grads));
}

ns_status ns_infonce_forward_backward(ns_context *ctx, const ns_infonce_inputs *in,
                                      const ns_loss_options *options, float grad_loss,
                                      float *loss, float *per_query, float *saved,
                                      const ns_infonce_grads *grads) {
    static const char *fn = "ns_infonce_forward_backward";
    ns_status st = ns_check_context(ctx, fn);
    if (st) return st;
    ns_loss_options defaults;
    if ((st = ns_infonce_check(ctx, fn, in, &options, &defaults))) return st;
    if ((st = ns_check_ptr(ctx, fn, "loss", loss))) return st;
    if ((st = ns_check_ptr(ctx, fn, "saved", saved))) return st;
    if ((st = ns_check_ptr(ctx, fn, "grads", grads))) return st;
    if (!isfinite(grad_loss))
        return ns_fail(ctx, NS_ERR_NONFINITE, "%s: grad_loss (%g) is not finite", fn,
                       (double)grad_loss);
    return NS_DISPATCH(ctx, infonce_forward_backward,
                       (ctx, in, options, grad_loss, loss, per_query, saved, grads));
}

void ns_infonce_set_tiles(ns_context *ctx, int64_t rows, int64_t cols) {
    ctx->loss_tile_rows = rows > 0 ? rows : 0;
    ctx->loss_tile_cols = cols > 0 ? cols : 0;
}

void ns_infonce_set_strip(ns_context *ctx, int64_t bytes, int64_t min_rows) {
    ctx->loss_strip_bytes = bytes > 0 ? bytes : 0;
    ctx->loss_strip_rows = min_rows > 0 ? min_rows : 0;
}

void ns_infonce_set_keep(ns_context *ctx, int keep) { ctx->loss_no_keep = !keep; }
