/* InfoNCE over the global pool of every rank (the loss inside a multi-rank step).
 *
 * Each rank computes the loss of its own B queries against the gathered candidates, so work is
 * not repeated across ranks, and returns exactly the gradient of its own rows:
 *   forward   all-gather the passages (+ ids), with share_hard the hard rows (+ ids, keep), with
 *             symmetric the queries; loss_r = mean over its queries; loss = Σ_r B·loss_r / (R·B).
 *   backward  d(loss)/d(x) = Σ_r (1/R) · d(loss_r)/d(x): each rank back-propagates grad_loss/R
 *             through its own term (the 1/R is the world-size factor OpenCLIP-style gathers lose
 *             or double), then the gradients of gathered rows are reduce-scattered (summed) to
 *             the rank that owns them; dτ is summed over the ranks.
 * Query i of rank r keeps its positive at global passage r·N + positive[i], so labels stay
 * aligned after the gather. The symmetric (passage→query) term is computed as a second, plain
 * InfoNCE with this rank's positives as the queries and the gathered queries as candidates,
 * which is the column log-sum-exp the one-rank loss uses.
 * Every rank reaches every collective even when its own part fails, so failures are shared. */
#include "ns_comm.h"
#include "infonce_internal.h"
#ifdef NS_HAVE_CUDA
#include "ns_cuda.h"
#endif

#include <math.h>
#include <stdlib.h>
#include <string.h>

static int on_device(const ns_context *ctx) { return ctx->backend == NS_BACKEND_CUDA; }

void ns_comm_loss_free(ns_comm *c) {
    ns_arena_release(NULL, &c->mem);
}

/* Every buffer of one forward and its backward, from its shapes. */
static void loss_layout(void *plan, ns_arena *a) {
    ns_comm_loss_bufs *b = (ns_comm_loss_bufs *)plan;
    const size_t R = b->R, B = b->B, N = b->N, d = b->d, h = b->h;
    const size_t nq = B * d, np = N * d, nh = B * h * d;
    b->passage = ns_arena_carve(a, R * N * d * b->es_passage);
    b->passage_id = (int64_t *)ns_arena_carve(a, sizeof(int64_t) * R * N);
    b->positive = (int64_t *)ns_arena_carve(a, sizeof(int64_t) * B);
    b->hard = b->share ? ns_arena_carve(a, R * B * h * d * b->es_hard) : NULL;
    b->hard_ids = b->share && b->hard_id ? (int64_t *)ns_arena_carve(a, sizeof(int64_t) * R * B * h) : NULL;
    b->keep = b->share && b->hard_keep ? (uint8_t *)ns_arena_carve(a, R * B * h) : NULL;
    b->query = b->sym ? ns_arena_carve(a, R * B * d * b->es_query) : NULL;
    b->rev_positive = b->sym ? (int64_t *)ns_arena_carve(a, sizeof(int64_t) * B) : NULL;
    b->rev_saved = b->sym ? (float *)ns_arena_carve(a, sizeof(float) * B * (NS_INFONCE_SAVED_PER_QUERY + 1)) : NULL;
    b->grad_passage = (float *)ns_arena_carve(a, sizeof(float) * R * np);
    b->grad_hard = b->share ? (float *)ns_arena_carve(a, sizeof(float) * R * nh) : NULL;
    b->grad_query = b->sym ? (float *)ns_arena_carve(a, sizeof(float) * R * nq) : NULL;
    b->grad_tmp = b->sym ? (float *)ns_arena_carve(a, sizeof(float) * np) : NULL;
    b->stage_query = (float *)ns_arena_carve(a, sizeof(float) * nq);
    b->stage_query2 = b->sym ? (float *)ns_arena_carve(a, sizeof(float) * nq) : NULL;
    b->stage_passage = (float *)ns_arena_carve(a, sizeof(float) * np);
    b->stage_hard = h > 0 ? (float *)ns_arena_carve(a, sizeof(float) * nh) : NULL;
}

/* dst[0..n) = dst + src (mean 0) or 0.5·(dst + src) (mean 1) on the backend (CUDA: a kernel on
 * the stream, the same f32 operations; the symmetric loss's two terms). */
static ns_status combine(ns_context *ctx, float *dst, const float *src, size_t n, int mean) {
#ifdef NS_HAVE_CUDA
    if (on_device(ctx)) return ns_cuda_combine_f32(ctx, dst, src, (int64_t)n, mean);
#endif
    (void)ctx;
    for (size_t k = 0; k < n; k++) dst[k] = mean ? 0.5f * (dst[k] + src[k]) : dst[k] + src[k];
    return NS_OK;
}

/* dst[i] = (src ? src[i] : i) + add, i < n, in backend memory (CUDA: a kernel on the stream,
 * no host copy of the ids). */
static ns_status offset_ids(ns_context *ctx, int64_t *dst, const int64_t *src, int64_t n,
                            int64_t add) {
#ifdef NS_HAVE_CUDA
    if (on_device(ctx)) return ns_cuda_offset_ids(ctx, dst, src, n, add);
#endif
    (void)ctx;
    for (int64_t i = 0; i < n; i++) dst[i] = (src ? src[i] : i) + add;
    return NS_OK;
}

static int64_t float_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return (int64_t)u;
}

/* Shares each rank's verdict on its own arguments (so that no rank enters a gather alone),
 * then checks that shapes and options agree. */
enum { H_OK, H_B, H_N, H_D, H_H, H_QT, H_PT, H_HT, H_POS, H_PID, H_HID, H_HKEEP, H_TAU, H_SYM,
       H_SAME, H_TAUP, H_BETA, H_SHARE, H_COUNT };
static const char *const header_names[H_COUNT] = {
    "arguments valid", "the number of queries (query.rows)", "the number of passages (passage.rows)",
    "the dimension (query.cols)", "hard_per_query", "query.dtype", "passage.dtype", "hard.dtype",
    "positive given (non-NULL)", "passage_id given (non-NULL)", "hard_id given (non-NULL)",
    "hard_keep given (non-NULL)", "options->temperature (bits)", "options->symmetric",
    "options->mask_same_id", "options->tau_plus (bits)", "options->beta (bits)",
    "options->share_hard"};

static ns_status agree(ns_context *ctx, ns_comm *c, ns_status local, const ns_infonce_inputs *in,
                       const ns_loss_options *o, const char *fn) {
    int64_t hdr[H_COUNT];
    memset(hdr, 0, sizeof hdr);
    hdr[H_OK] = local == NS_OK;
    if (local == NS_OK) {
        hdr[H_B] = in->query.rows, hdr[H_N] = in->passage.rows, hdr[H_D] = in->query.cols;
        hdr[H_H] = in->hard_per_query;
        hdr[H_QT] = in->query.dtype, hdr[H_PT] = in->passage.dtype;
        hdr[H_HT] = in->hard_per_query > 0 ? (int64_t)in->hard.dtype : -1;
        hdr[H_POS] = in->positive != NULL, hdr[H_PID] = in->passage_id != NULL;
        hdr[H_HID] = in->hard_id != NULL, hdr[H_HKEEP] = in->hard_keep != NULL;
        hdr[H_TAU] = float_bits(o->temperature), hdr[H_SYM] = o->symmetric;
        hdr[H_SAME] = o->mask_same_id, hdr[H_TAUP] = float_bits(o->tau_plus);
        hdr[H_BETA] = float_bits(o->beta), hdr[H_SHARE] = o->share_hard;
    }
    size_t n = (size_t)c->size * H_COUNT;
    int64_t *all = (int64_t *)malloc(sizeof(int64_t) * n);
    if (!all) return ns_fail(ctx, NS_ERR_OUT_OF_MEMORY, "%s: cannot allocate %zu ids", fn, n);
    char mine[NS_ERROR_CAPACITY];
    memcpy(mine, ctx->error, sizeof mine);
    ns_status st = ns_comm_usable(ctx, c, fn);
    if (!st) st = c->ops->allgather_host(ctx, c, hdr, all, sizeof hdr, fn);
    if (st) {
        free(all);
        return st;
    }
    if (local != NS_OK) {
        memcpy(ctx->error, mine, sizeof mine);
        free(all);
        return local;
    }
    for (int r = 0; r < c->size; r++)
        if (!all[(size_t)r * H_COUNT + H_OK]) {
            free(all);
            return ns_fail(ctx, NS_ERR_COMM,
                           "%s: rank %d rejected its arguments (its own error names them), so "
                           "every rank fails this call (this is rank %d)",
                           fn, r, c->rank);
        }
    /* Every rank holds the same table, so every rank fails the same way. */
    for (int i = 1; i < H_COUNT; i++)
        for (int r = 1; r < c->size; r++) {
            int64_t a = all[i], b = all[(size_t)r * H_COUNT + (size_t)i];
            if (a == b) continue;
            free(all);
            return ns_fail(ctx, NS_ERR_COMM,
                           "%s: ranks disagree: %s is %lld on rank 0 but %lld on rank %d (every "
                           "rank must pass the same shapes and options; this is rank %d)",
                           fn, header_names[i], (long long)a, (long long)b, r, c->rank);
        }
    free(all);
    return NS_OK;
}

ns_status ns_comm_infonce_abstain(ns_context *ctx, ns_comm *c, ns_status local, const char *fn) {
    if (!ctx || !c || local == NS_OK) return local;
    c->loss_ready = 0;
    return agree(ctx, c, local, NULL, NULL, fn);
}

/* Every rank learns whether every rank's local part succeeded (and, on success, the sum of v). */
static ns_status share_outcome(ns_context *ctx, ns_comm *c, ns_status local, double *v, int nv,
                               const char *fn) {
    double mine[4] = {local == NS_OK ? 0.0 : 1.0 + (double)local, 0, 0, 0};
    for (int i = 0; i < nv; i++) mine[1 + i] = local == NS_OK ? v[i] : 0.0;
    char msg[NS_ERROR_CAPACITY];
    memcpy(msg, ctx->error, sizeof msg);
    double *all = (double *)malloc(sizeof mine * (size_t)c->size);
    if (!all) return ns_fail(ctx, NS_ERR_OUT_OF_MEMORY, "%s: cannot allocate", fn);
    ns_status st = ns_comm_usable(ctx, c, fn);
    if (!st) st = c->ops->allgather_host(ctx, c, mine, all, sizeof mine, fn);
    if (st) {
        free(all);
        return st;
    }
    if (local != NS_OK) {
        memcpy(ctx->error, msg, sizeof msg);
        free(all);
        return local;
    }
    for (int r = 0; r < c->size; r++)
        if (all[(size_t)r * 4] != 0.0) {
            ns_status theirs = (ns_status)(int)(all[(size_t)r * 4] - 1.0);
            free(all);
            return ns_fail(ctx, theirs == NS_ERR_NONFINITE ? NS_ERR_NONFINITE : NS_ERR_COMM,
                           "%s: rank %d failed (%s; its own error says why), so every rank fails "
                           "this call (this is rank %d)",
                           fn, r, ns_status_string(theirs), c->rank);
        }
    /* Rank order: the same bits on every rank. */
    for (int i = 0; i < nv; i++) {
        double s = 0.0;
        for (int r = 0; r < c->size; r++) s += all[(size_t)r * 4 + 1 + (size_t)i];
        v[i] = s;
    }
    free(all);
    return NS_OK;
}

static ns_status local_checks(ns_context *ctx, const ns_infonce_inputs *in,
                              const ns_loss_options **opt, ns_loss_options *defaults,
                              const char *fn) {
    ns_status st = ns_infonce_check(ctx, fn, in, opt, defaults);
    if (st) return st;
    if ((*opt)->symmetric && (in->positive || in->passage.rows != in->query.rows))
        return ns_fail(ctx, NS_ERR_UNSUPPORTED,
                       "%s: the symmetric loss across ranks needs positive == NULL and as many "
                       "passages as queries (got %s, %lld passages for %lld queries)",
                       fn, in->positive ? "positive given" : "positive NULL",
                       (long long)in->passage.rows, (long long)in->query.rows);
    if (!on_device(ctx) && in->positive)
        for (int64_t i = 0; i < in->query.rows; i++)
            if (in->positive[i] < 0 || in->positive[i] >= in->passage.rows)
                return ns_fail(ctx, NS_ERR_INVALID_ARGUMENT,
                               "%s: positive[%lld] (%lld) is not a passage row in [0, %lld)", fn,
                               (long long)i, (long long)in->positive[i],
                               (long long)in->passage.rows);
    return NS_OK;
}

/* Gathers what the loss of this rank's queries needs and fills c->gathered (and c->reversed
 * for the symmetric term). */
static ns_status gather_inputs(ns_context *ctx, ns_comm *c, const ns_infonce_inputs *in,
                               const ns_loss_options *o, const char *fn) {
    const int R = c->size, me = c->rank;
    const int64_t B = in->query.rows, N = in->passage.rows, d = in->query.cols;
    const int64_t h = in->hard_per_query;
    ns_status st;
    ns_infonce_inputs g = *in;

    const ns_comm_loss_bufs *bf = &c->bufs;
    void *P = bf->passage;
    int64_t *pid = bf->passage_id, *pos = bf->positive;
    if ((st = ns_comm_allgather_rows(ctx, c, in->passage, P, fn))) goto out;
    if (in->passage_id) {
        if ((st = ns_comm_allgather(ctx, c, in->passage_id, (size_t)N, sizeof(int64_t), pid, fn)))
            goto out;
    } else if ((st = offset_ids(ctx, pid, NULL, R * N, 0))) { /* NULL ids: the global rows */
        goto out;
    }
    /* Query i's positive is global passage me·N + positive[i] (NULL: i). */
    if ((st = offset_ids(ctx, pos, in->positive, B, (int64_t)me * N))) goto out;
    g.passage = (ns_matrix){P, in->passage.dtype, R * N, d, 0};
    g.passage_id = pid;
    g.positive = pos;

    if (o->share_hard && h > 0) {
        /* The shared pool of every rank's hard rows: hard_per_query R·h keeps rows = B·(R·h),
         * which is all the shared block needs. */
        void *H = bf->hard;
        if ((st = ns_comm_allgather_rows(ctx, c, in->hard, H, fn))) goto out;
        g.hard = (ns_matrix){H, in->hard.dtype, R * B * h, d, 0};
        g.hard_per_query = (int64_t)R * h;
        if (in->hard_id) {
            int64_t *hid = bf->hard_ids;
            if ((st = ns_comm_allgather(ctx, c, in->hard_id, (size_t)(B * h), sizeof(int64_t), hid, fn)))
                goto out;
            g.hard_id = hid;
        }
        if (in->hard_keep) {
            uint8_t *keep = bf->keep;
            if ((st = ns_comm_allgather(ctx, c, in->hard_keep, (size_t)(B * h), 1, keep, fn))) goto out;
            g.hard_keep = keep;
        }
    }
    c->gathered = g;

    if (o->symmetric) {
        /* Reversed: this rank's positives (passage row i is query i's) against every query;
         * a query's id is its positive's, as the one-rank column term masks them. */
        void *Q = bf->query;
        int64_t *rpos = bf->rev_positive;
        if ((st = ns_comm_allgather_rows(ctx, c, in->query, Q, fn))) goto out;
        if ((st = offset_ids(ctx, rpos, NULL, B, (int64_t)me * B))) goto out;
        ns_infonce_inputs rv;
        memset(&rv, 0, sizeof rv);
        rv.query = in->passage;
        rv.passage = (ns_matrix){Q, in->query.dtype, R * B, d, 0};
        rv.positive = rpos;
        rv.hard = (ns_matrix){NULL, NS_F32, 0, d, 0};
        rv.extra = (ns_matrix){NULL, NS_F32, 0, d, 0};
        rv.passage_id = pid; /* N == B and positive NULL: query k's positive is passage k */
        c->reversed = rv;
    }
out:
    return st;
}

/* Reserves every buffer of this forward and its backward before the first exchange: a rank
 * that cannot get its memory says so there instead of leaving the others inside a gather. */
static ns_status reserve(ns_context *ctx, ns_comm *c, const ns_infonce_inputs *in,
                         const ns_loss_options *o, const char *fn) {
    ns_comm_loss_bufs *b = &c->bufs;
    memset(b, 0, sizeof *b);
    b->R = (size_t)c->size, b->B = (size_t)in->query.rows, b->N = (size_t)in->passage.rows;
    b->d = (size_t)in->query.cols, b->h = (size_t)in->hard_per_query;
    b->es_passage = ns_dtype_size(in->passage.dtype);
    b->es_hard = ns_dtype_size(in->hard.dtype);
    b->es_query = ns_dtype_size(in->query.dtype);
    b->share = o->share_hard && b->h > 0, b->sym = o->symmetric;
    b->hard_id = in->hard_id != NULL, b->hard_keep = in->hard_keep != NULL;
    if (!c->mem.base && !c->mem.capacity) c->mem = ns_arena_empty(ns_backend_memory(ctx));
    ns_status st = ns_arena_lay_out(ctx, &c->mem, loss_layout, b, fn);
    if (!st) return NS_OK;
    return ns_fail(ctx, st,
                   "%s: cannot allocate the buffers for the rows gathered from %zu ranks "
                   "(B = %zu, N = %zu, h = %zu, d = %zu)",
                   fn, b->R, b->B, b->N, b->h, b->d);
}

/* The plain options of the reversed (passage→query) term. */
static ns_loss_options reversed_options(const ns_loss_options *o) {
    ns_loss_options r = NS_LOSS_OPTIONS_INIT;
    r.temperature = o->temperature;
    r.mask_same_id = o->mask_same_id;
    return r;
}

ns_status ns_comm_infonce_forward(ns_context *ctx, ns_comm *c, const ns_infonce_inputs *in,
                                  const ns_loss_options *opt, float *loss, float *per_query,
                                  float *saved, const char *fn) {
    ns_status st = ns_comm_usable(ctx, c, fn);
    if (st) return st;
    c->loss_ready = 0;
    ns_loss_options defaults;
    ns_status local = local_checks(ctx, in, &opt, &defaults, fn);
    if (!local) local = ns_check_ptr(ctx, fn, "loss", loss);
    if (!local) local = ns_check_ptr(ctx, fn, "saved", saved);
    if (!local) local = reserve(ctx, c, in, opt, fn);
    if ((st = agree(ctx, c, local, in, opt, fn))) return st;

    const int64_t B = in->query.rows;
    if ((st = gather_inputs(ctx, c, in, opt, fn))) return st;
    ns_loss_options o = *opt;
    o.symmetric = 0;
    float lq = 0.0f, lp = 0.0f;
    float *pq_rev = NULL, *rsaved = NULL;
    local = ns_infonce_forward(ctx, &c->gathered, &o, &lq, per_query, saved);
    if (!local && opt->symmetric) {
        ns_loss_options ro = reversed_options(opt);
        rsaved = c->bufs.rev_saved;
        pq_rev = rsaved + (size_t)B * NS_INFONCE_SAVED_PER_QUERY;
        local = ns_infonce_forward(ctx, &c->reversed, &ro, &lp, pq_rev, rsaved);
        /* per_query = (L_q + L_p) / 2, as the one-rank symmetric loss. */
        if (!local && per_query) local = combine(ctx, per_query, pq_rev, (size_t)B, 1);
    }
    double sum = opt->symmetric ? 0.5 * ((double)lq + (double)lp) * (double)B : (double)lq * (double)B;
    if ((st = share_outcome(ctx, c, local, &sum, 1, fn))) return st;
    *loss = (float)(sum / ((double)B * (double)c->size));
    c->loss_opt = *opt;
    c->loss_ready = 1;
    return NS_OK;
}

/* Backend copy (CPU memcpy, CUDA device to device). */
static ns_status copy_backend(ns_context *ctx, void *dst, const void *src, size_t bytes) {
    return ns_copy(ctx, dst, src, bytes, NS_COPY_D2D);
}

ns_status ns_comm_infonce_backward(ns_context *ctx, ns_comm *c, const ns_infonce_inputs *in,
                                   const ns_loss_options *opt, const float *saved,
                                   float grad_loss, const ns_infonce_grads *grads,
                                   const char *fn) {
    ns_status st = ns_comm_usable(ctx, c, fn);
    if (st) return st;
    ns_loss_options defaults;
    ns_status local = local_checks(ctx, in, &opt, &defaults, fn);
    if (!local && !c->loss_ready)
        local = ns_fail(ctx, NS_ERR_INVALID_ARGUMENT,
                        "%s: no successful forward on this communicator to take the backward of", fn);
    if (!local) local = ns_check_ptr(ctx, fn, "saved", saved);
    if (!local) local = ns_check_ptr(ctx, fn, "grads", grads);
    if (!local && !isfinite(grad_loss))
        local = ns_fail(ctx, NS_ERR_NONFINITE, "%s: grad_loss (%g) is not finite", fn, (double)grad_loss);
    if ((st = agree(ctx, c, local, in, opt, fn))) return st;

    const int R = c->size;
    const int64_t B = in->query.rows, N = in->passage.rows, d = in->query.cols;
    const int64_t h = in->hard_per_query;
    const int share = opt->share_hard && h > 0, sym = opt->symmetric;
    const size_t nq = (size_t)(B * d), np = (size_t)(N * d), nh = (size_t)(B * h * d);
    /* d(loss)/dx = Σ_r (1/R) d(loss_r)/dx; the symmetric loss halves both of its terms. */
    const float g = grad_loss / (float)R * (sym ? 0.5f : 1.0f);

    /* Everything is staged in the communicator's buffers (laid out by the forward for these
     * shapes): the caller's are written only once every rank is known to have succeeded.
     * Gathered rows' gradients are always computed, as the other ranks need this rank's share
     * of theirs. */
    const ns_comm_loss_bufs *bf = &c->bufs;
    float *gp = bf->grad_passage, *gh = share ? bf->grad_hard : NULL;
    float *gq = sym ? bf->grad_query : NULL, *tmp = sym ? bf->grad_tmp : NULL;
    float *sq = bf->stage_query, *sq2 = sym ? bf->stage_query2 : NULL;
    float *sp = bf->stage_passage, *sh = h > 0 ? bf->stage_hard : NULL;
    if (!local && (bf->B != (size_t)B || bf->N != (size_t)N || bf->d != (size_t)d ||
                   bf->h != (size_t)h || bf->share != share || bf->sym != sym))
        local = ns_fail(ctx, NS_ERR_INVALID_ARGUMENT,
                        "%s: the inputs or options differ from those of the forward", fn);
    float dtau[2] = {0.0f, 0.0f};
    if (!local) {
        ns_infonce_grads lg = {(grads->query || sym) ? sq : NULL, gp,
                               share ? gh : (grads->hard ? sh : NULL),
                               grads->temperature ? &dtau[0] : NULL};
        ns_loss_options o = *opt;
        o.symmetric = 0;
        local = ns_infonce_backward(ctx, &c->gathered, &o, saved, g, &lg);
    }
    if (!local && sym) {
        ns_loss_options ro = reversed_options(opt);
        ns_infonce_grads rg = {tmp, gq, NULL, grads->temperature ? &dtau[1] : NULL};
        local = ns_infonce_backward(ctx, &c->reversed, &ro, bf->rev_saved, g, &rg);
    }
    double t = (double)dtau[0] + (double)dtau[1];
    if ((st = share_outcome(ctx, c, local, &t, 1, fn))) return st;

    /* Hand the gathered rows' gradients to their owners. */
    if ((st = ns_comm_reduce_scatter_f32(ctx, c, gp, sp, np, fn))) return st;
    if (share && (st = ns_comm_reduce_scatter_f32(ctx, c, gh, sh, nh, fn))) return st;
    if (sym) {
        if ((st = ns_comm_reduce_scatter_f32(ctx, c, gq, sq2, nq, fn))) return st;
        if (grads->query && (st = combine(ctx, sq, sq2, nq, 0))) return st;
        if (grads->passage && (st = combine(ctx, sp, tmp, np, 0))) return st;
    }
    if (grads->query && (st = copy_backend(ctx, grads->query, sq, sizeof(float) * nq))) return st;
    if (grads->passage && (st = copy_backend(ctx, grads->passage, sp, sizeof(float) * np))) return st;
    if (grads->hard && h > 0 && (st = copy_backend(ctx, grads->hard, sh, sizeof(float) * nh)))
        return st;
    if (grads->temperature) *grads->temperature = (float)t;
    return NS_OK;
}
