/* The orchestrated training step: score the candidates → filter → sample → gather the sampled
 * rows → InfoNCE forward; then the backward and the scatter of the hard negatives' gradient
 * back onto the candidate rows. Each stage is the public op of the same name, so the step
 * inherits their checks, their CUDA paths and their determinism; what lives here is the
 * plumbing between them and the state kept from forward to backward. */
#include "ns_comm.h"
#include "ns_dispatch.h"
#include "infonce_internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* The buffers a step keeps from its forward to its backward, carved from the step's arena of
 * the backend's memory (host on CPU, device on CUDA), reserved at the start of each forward for
 * that batch's shapes, so a step of unchanged shapes allocates nothing. Nothing is staged
 * through the host: the ids are built by the backend (ns_*_step_ids). */
typedef struct {
    int64_t B, C, h, d; /* h: the negatives per query, hard and random (h_hard + hr) */
    int64_t hr;         /* random negatives per query (options->random_negatives) */
    int64_t *mix_hard, *mix_rand, *mix_hcount, *mix_rcount; /* hr > 0: the two draws */
    uint8_t *mix_keep;  /* hr > 0: the eligible slots of a draw */
    int64_t *pos_ids, *pos_offsets, *cand_ids, *chosen_id, *chosen_row, *count;
    float *loss, *per_query, *saved, *cand_score, *pos_score, *grad_hard;
    void *hard;             /* B·h rows of d in the candidates' dtype (ns_step_gather) */
    uint8_t *keep, *hard_keep;
    int grouped, fused;     /* options->groups given; the forward computes the gradients */
    int64_t *hard_group;    /* grouped: B·h, the sampled hard negatives' groups */
    float *fgq, *fgp;       /* fused: dL/dQ and dL/dP at grad_loss = 1 (B·d each) */
    float fdtau;            /* fused (CPU): dL/dτ at grad_loss = 1 */
    float *fdtau_dev;       /* fused (CUDA): the same in device memory */
} step_bufs;

struct ns_step_state {
    ns_arena mem;
    step_bufs buf;
    int ready;                /* a forward succeeded and its backward has not run yet */
    ns_batch batch;
    ns_step_options opt;
    ns_filter_options filter; /* the options resolved (defaults where the caller gave none) */
    ns_sampler_options sampler;
    ns_loss_options loss;
    ns_loss_groups groups;    /* the loss's groups (options->groups with the hard ones gathered) */
    ns_infonce_inputs in;
    ns_id_lists positives;
};

/* Backend memory: ids, per-query outputs and saved statistics; with hard negatives the scores,
 * masks, choices, gathered rows and (for the backward) their gradient rows. */
static void step_layout(void *plan, ns_arena *a) {
    step_bufs *b = (step_bufs *)plan;
    const int64_t B = b->B, C = b->C, h = b->h, d = b->d, H = h > 0;
    b->pos_ids = (int64_t *)ns_arena_carve(a, (size_t)B * 8);
    b->pos_offsets = (int64_t *)ns_arena_carve(a, (size_t)(B + 1) * 8);
    b->loss = (float *)ns_arena_carve(a, 4);
    b->per_query = (float *)ns_arena_carve(a, (size_t)B * 4);
    b->saved = (float *)ns_arena_carve(a, (size_t)B * NS_INFONCE_SAVED_PER_QUERY * 4);
    b->cand_score = (float *)ns_arena_carve(a, H * (size_t)(B * C) * 4);
    b->pos_score = (float *)ns_arena_carve(a, H * (size_t)B * 4);
    b->keep = (uint8_t *)ns_arena_carve(a, H * (size_t)(B * C));
    b->cand_ids = (int64_t *)ns_arena_carve(a, H * (size_t)(B * C) * 8);
    b->chosen_id = (int64_t *)ns_arena_carve(a, (size_t)(B * h) * 8);
    b->chosen_row = (int64_t *)ns_arena_carve(a, (size_t)(B * h) * 8);
    b->count = (int64_t *)ns_arena_carve(a, H * (size_t)B * 8);
    b->hard = ns_arena_carve(a, (size_t)(B * h * d) * 4); /* room for any dtype */
    b->hard_keep = (uint8_t *)ns_arena_carve(a, (size_t)(B * h));
    b->grad_hard = (float *)ns_arena_carve(a, (size_t)(B * h * d) * 4);
    const int64_t hr = b->hr, R = hr > 0;
    b->mix_hard = (int64_t *)ns_arena_carve(a, R * (size_t)(B * (h - hr)) * 8);
    b->mix_rand = (int64_t *)ns_arena_carve(a, (size_t)(B * hr) * 8);
    b->mix_hcount = (int64_t *)ns_arena_carve(a, R * (size_t)B * 8);
    b->mix_rcount = (int64_t *)ns_arena_carve(a, R * (size_t)B * 8);
    b->mix_keep = (uint8_t *)ns_arena_carve(a, R * (size_t)(B * C));
    b->hard_group = (int64_t *)ns_arena_carve(a, b->grouped ? (size_t)(B * h) * 8 : 0);
    b->fgq = (float *)ns_arena_carve(a, b->fused ? (size_t)(B * d) * 4 : 0);
    b->fgp = (float *)ns_arena_carve(a, b->fused ? (size_t)(B * d) * 4 : 0);
    b->fdtau_dev = (float *)ns_arena_carve(a, b->fused ? 4 : 0);
}

void ns_step_state_free(ns_context *ctx, struct ns_step_state *s) {
    if (!s) return;
    ns_arena_release(ctx, &s->mem);
    free(s);
}

/* The step state of ctx with its buffers carved for this batch. */
static ns_status step_reserve(ns_context *ctx, const ns_batch *batch, const ns_step_options *o,
                              const char *fn) {
    const int64_t h = o->hard_negatives, hr = o->random_negatives;
    if (!ctx->step) {
        ctx->step = (struct ns_step_state *)calloc(1, sizeof(struct ns_step_state));
        if (!ctx->step) return ns_fail(ctx, NS_ERR_OUT_OF_MEMORY, "%s: cannot allocate the step state", fn);
        ctx->step->mem = ns_arena_empty(ns_backend_memory(ctx));
    }
    struct ns_step_state *s = ctx->step;
    s->ready = 0;
    step_bufs *b = &s->buf;
    b->B = batch->query.rows, b->d = batch->query.cols, b->C = batch->candidates_per_query;
    b->h = h + hr, b->hr = hr;
    b->grouped = o->groups != NULL;
    b->fused = !o->comm && !o->forward_only;
    return ns_arena_lay_out(ctx, &s->mem, step_layout, b, fn);
}

/* ------------------------------------------------------------------ checks */

/* The step's options resolved (ns_options_resolve): the caller's prefix over the defaults, and
 * the filter, sampler and loss options they point to (NULL: the defaults). */
typedef struct {
    int resolved;
    ns_step_options opt;
    ns_filter_options filter;
    ns_sampler_options sampler;
    ns_loss_options loss;
    ns_loss_groups groups;
} step_config;

static ns_status resolve_config(ns_context *ctx, const char *fn, const ns_step_options *given,
                                step_config *cfg) {
    ns_status st;
    if ((st = NS_RESOLVE_OPTIONS(ctx, fn, "options", ns_step_options, NS_STEP_OPTIONS_INIT, given,
                                 &cfg->opt)))
        return st;
    const ns_step_options *o = &cfg->opt;
    if ((st = NS_RESOLVE_OPTIONS(ctx, fn, "options->filter", ns_filter_options,
                                 NS_FILTER_OPTIONS_INIT, o->filter, &cfg->filter)))
        return st;
    if ((st = NS_RESOLVE_OPTIONS(ctx, fn, "options->sampler", ns_sampler_options,
                                 NS_SAMPLER_OPTIONS_INIT, o->sampler, &cfg->sampler)))
        return st;
    if ((st = NS_RESOLVE_OPTIONS(ctx, fn, "options->loss", ns_loss_options, NS_LOSS_OPTIONS_INIT,
                                 o->loss, &cfg->loss)))
        return st;
    if (o->groups && (st = NS_RESOLVE_OPTIONS(ctx, fn, "options->groups", ns_loss_groups,
                                              NS_LOSS_GROUPS_INIT, o->groups, &cfg->groups)))
        return st;
    cfg->opt.filter = &cfg->filter;
    cfg->opt.sampler = &cfg->sampler;
    cfg->opt.loss = &cfg->loss;
    if (o->groups) cfg->opt.groups = &cfg->groups;
    cfg->resolved = 1;
    return NS_OK;
}

/* options->groups and forward_only (the group ids' values need no check: negative = none). */
static ns_status check_groups(ns_context *ctx, const char *fn, const step_config *cfg) {
    const ns_step_options *o = &cfg->opt;
    if (o->forward_only != 0 && o->forward_only != 1)
        return ns_fail(ctx, NS_ERR_INVALID_ARGUMENT,
                       "%s: options->forward_only (%d) must be 0 or 1", fn, o->forward_only);
    if (cfg->loss.groups)
        return ns_fail(ctx, NS_ERR_INVALID_ARGUMENT,
                       "%s: options->loss->groups is set; the step takes the groups from "
                       "options->groups (candidate slots' groups, gathered with the sampled rows)",
                       fn);
    if (!o->groups) return NS_OK;
    if (o->comm)
        return ns_fail(ctx, NS_ERR_UNSUPPORTED,
                       "%s: options->groups with options->comm: the multi-rank loss does not "
                       "gather group ids",
                       fn);
    if (!o->groups->query)
        return ns_fail(ctx, NS_ERR_INVALID_ARGUMENT,
                       "%s: options->groups->query is NULL (the query group ids are required "
                       "when options->groups is given)",
                       fn);
    if (!(o->groups->weight >= 0.0f && o->groups->weight <= 1.0f))
        return ns_fail(ctx, NS_ERR_INVALID_ARGUMENT,
                       "%s: options->groups->weight (%g) must be 0 (mask) or in (0, 1] "
                       "(down-weight)",
                       fn, (double)o->groups->weight);
    return NS_OK;
}

/* random_negatives and random_pool against h and C (ns_step_options). */
static ns_status check_mix(ns_context *ctx, const char *fn, const ns_step_options *o, int64_t C) {
    const int64_t h = o->hard_negatives, hr = o->random_negatives, pool = o->random_pool;
    if (hr < 0 || hr > C - h)
        return ns_fail(ctx, NS_ERR_INVALID_ARGUMENT,
                       "%s: options->random_negatives (%lld) must be in [0, %lld] "
                       "(batch->candidates_per_query %lld − options->hard_negatives %lld)",
                       fn, (long long)hr, (long long)(C - h), (long long)C, (long long)h);
    if (pool < 0 || pool > C)
        return ns_fail(ctx, NS_ERR_INVALID_ARGUMENT,
                       "%s: options->random_pool (%lld) must be in [0, %lld] "
                       "(batch->candidates_per_query)", fn, (long long)pool, (long long)C);
    if (pool > 0 && (h > C - pool || hr > pool))
        return ns_fail(ctx, NS_ERR_INVALID_ARGUMENT,
                       "%s: options->random_pool (%lld) leaves %lld slots for "
                       "options->hard_negatives (%lld) and %lld for options->random_negatives "
                       "(%lld)", fn, (long long)pool, (long long)(C - pool), (long long)h,
                       (long long)pool, (long long)hr);
    if (pool > 0 && hr == 0)
        return ns_fail(ctx, NS_ERR_INVALID_ARGUMENT,
                       "%s: options->random_pool (%lld) without options->random_negatives", fn,
                       (long long)pool);
    return NS_OK;
}

static ns_status check_step(ns_context *ctx, const ns_batch *b, const ns_step_options *given,
                            step_config *cfg) {
    static const char *fn = "ns_step_forward";
    ns_status st;
    if ((st = ns_check_ptr(ctx, fn, "batch", b))) return st;
    if ((st = ns_check_ptr(ctx, fn, "options", given))) return st;
    if ((st = ns_check_matrix(ctx, fn, "batch->query", b->query, 0))) return st;
    if ((st = ns_check_matrix(ctx, fn, "batch->positive", b->positive, 0))) return st;
    if ((st = ns_check_matrix(ctx, fn, "batch->candidate", b->candidate, 1))) return st;
    if ((st = resolve_config(ctx, fn, given, cfg))) return st;
    const ns_step_options *o = &cfg->opt;
    int64_t B = b->query.rows, d = b->query.cols, C = b->candidates_per_query;
    if (b->positive.rows != B)
        return ns_fail(ctx, NS_ERR_INVALID_ARGUMENT,
                       "%s: batch->positive has %lld rows but batch->query has %lld", fn,
                       (long long)b->positive.rows, (long long)B);
    if (b->positive.cols != d)
        return ns_fail(ctx, NS_ERR_INVALID_ARGUMENT,
                       "%s: batch->query has %lld columns but batch->positive has %lld", fn,
                       (long long)d, (long long)b->positive.cols);
    if (C < 0)
        return ns_fail(ctx, NS_ERR_INVALID_ARGUMENT,
                       "%s: batch->candidates_per_query (%lld) is negative", fn, (long long)C);
    if (b->candidate.rows != B * C)
        return ns_fail(ctx, NS_ERR_INVALID_ARGUMENT,
                       "%s: batch->candidate has %lld rows but batch->query.rows × "
                       "batch->candidates_per_query is %lld × %lld = %lld",
                       fn, (long long)b->candidate.rows, (long long)B, (long long)C,
                       (long long)(B * C));
    if (C > 0 && b->candidate.cols != d)
        return ns_fail(ctx, NS_ERR_INVALID_ARGUMENT,
                       "%s: batch->query has %lld columns but batch->candidate has %lld", fn,
                       (long long)d, (long long)b->candidate.cols);
    if (b->query_offset < 0)
        return ns_fail(ctx, NS_ERR_INVALID_ARGUMENT, "%s: batch->query_offset (%lld) is negative",
                       fn, (long long)b->query_offset);
    if (o->hard_negatives < 0 || o->hard_negatives > C)
        return ns_fail(ctx, NS_ERR_INVALID_ARGUMENT,
                       "%s: options->hard_negatives (%lld) must be in [0, %lld] "
                       "(batch->candidates_per_query)",
                       fn, (long long)o->hard_negatives, (long long)C);
    if ((st = check_mix(ctx, fn, o, C))) return st;
    /* named as the caller set them (the inner calls' messages said "ns_filter_sample:
     * options->simans_a", "ns_infonce_forward_backward: options->temperature") */
    if (o->hard_negatives > 0 &&
        (st = ns_sampler_check_params(ctx, fn, "options->sampler", &cfg->sampler)))
        return st;
    if ((st = ns_loss_check_params(ctx, fn, "options->loss", &cfg->loss))) return st;
    if (o->enqueue != 0 && o->enqueue != 1)
        return ns_fail(ctx, NS_ERR_INVALID_ARGUMENT, "%s: options->enqueue (%d) must be 0 or 1",
                       fn, o->enqueue);
    if (o->enqueue && !o->queue)
        return ns_fail(ctx, NS_ERR_INVALID_ARGUMENT,
                       "%s: options->enqueue is 1 but options->queue is NULL (no queue to push the "
                       "positives into)",
                       fn);
    /* Whatever the queue holds: the loss reads its rows, and the backward's push (enqueue)
     * must not be the first to find it unusable, after the gradients were written. */
    if (o->queue && (st = ns_queue_check_push(ctx, fn, "options->queue", o->queue, d, o->enqueue)))
        return st;
    if ((st = check_groups(ctx, fn, cfg))) return st;
    if ((st = NS_DISPATCH(ctx, step_check_batch, (ctx, b)))) return st;
    if (o->comm && (st = ns_comm_usable(ctx, o->comm, fn))) return st;
    if (o->sync_free != 0 && o->sync_free != 1)
        return ns_fail(ctx, NS_ERR_INVALID_ARGUMENT, "%s: options->sync_free (%d) must be 0 or 1",
                       fn, o->sync_free);
    if (o->sync_free && o->comm)
        return ns_fail(ctx, NS_ERR_UNSUPPORTED,
                       "%s: options->sync_free with options->comm: the multi-rank loss exchanges "
                       "host values (set sync_free = 0)",
                       fn);
    return NS_OK;
}

/* ------------------------------------------------------------------ forward */

/* Multi-rank (options->comm): each rank filters and samples its own queries (the RNG counters
 * use global query ids, so the draws are those of one rank over the whole batch), then the
 * loss runs over the global pool (src/comm_loss.c). *collective tells whether that loss, the
 * step's only collective, was reached: a rank failing before it still takes part in its first
 * exchange, so that the others fail at once instead of at the timeout. */
static ns_status step_forward(ns_context *ctx, const ns_batch *batch, const ns_step_options *opt,
                              ns_step_result *result, step_config *cfg, int *collective);

ns_status ns_step_forward(ns_context *ctx, const ns_batch *batch, const ns_step_options *opt,
                          ns_step_result *result) {
    int collective = 0;
    step_config cfg;
    cfg.resolved = 0;
    ns_status st = NS_OK;
#ifdef NS_HAVE_CUDA
    const int guard = ctx && ctx->backend == NS_BACKEND_CUDA && ctx->cuda;
    int prev_device = -1;
    if (guard) st = ns_cuda_device_enter(ctx, "ns_step_forward", &prev_device);
#endif
    if (!st) st = step_forward(ctx, batch, opt, result, &cfg, &collective);
#ifdef NS_HAVE_CUDA
    if (guard) ns_cuda_device_leave(ctx, prev_device);
#endif
    ns_comm *comm = cfg.resolved ? cfg.opt.comm : NULL;
    if (st && !collective && ctx && comm) {
        char why[NS_ERROR_CAPACITY]; /* this rank's own failure is what it reports */
        memcpy(why, ctx->error, sizeof why);
        if (ns_comm_usable(ctx, comm, "ns_step_forward") == NS_OK)
            ns_comm_infonce_abstain(ctx, comm, st, "ns_step_forward");
        memcpy(ctx->error, why, sizeof why);
    }
    return st;
}

/* The ids every stage keys on: the positives' (given, or the global query ids) as one-id
 * lists, and the candidates' (given, or synthetic ids — global candidate slots, batch-split
 * invariant — that only key the sampler and never match a positive). */
static ns_status step_ids(ns_context *ctx, struct ns_step_state *s, const ns_batch *batch,
                          const int64_t **cand_ids) {
    step_bufs *b = &s->buf;
    const int64_t B = b->B, C = b->C;
    const int synth_cand = b->h > 0 && !batch->candidate_id;
    ns_status st = NS_DISPATCH(ctx, step_ids, (ctx, B, C, batch->query_offset, b->pos_offsets,
                                               batch->positive_id ? NULL : b->pos_ids,
                                               synth_cand ? b->cand_ids : NULL));
    if (st) return st;
    if (batch->positive_id &&
        (st = ns_copy(ctx, b->pos_ids, batch->positive_id, (size_t)B * 8, NS_COPY_D2D)))
        return st;
    s->positives.offsets = b->pos_offsets;
    s->positives.ids = b->pos_ids;
    s->positives.queries = B;
    *cand_ids = synth_cand ? b->cand_ids : batch->candidate_id;
    return NS_OK;
}

/* Random + hard mixing (options->random_negatives > 0): the hard draw over the kept slots of
 * the hard region, then the uniform random draw over the kept slots of the pool minus the
 * chosen hard ids, merged into each query's row (hard first). Why this design: the step's
 * inputs are one candidate block per query, so corpus-wide random negatives arrive as its
 * last random_pool slots (drawn by the caller with ns_sample_corpus, by weight, exactly) and
 * pass the same filter (positives, false-negative scores), gather and loss as the mined ones;
 * two ns_sample calls and two index kernels (src/hostdevice/ns_step_mix.h) add no host
 * synchronisation (sync_free holds) and no new sampling code. */
static ns_status step_mix(ns_context *ctx, struct ns_step_state *s, const ns_candidates *cand) {
    step_bufs *b = &s->buf;
    const int64_t B = b->B, C = b->C, hr = b->hr, hh = b->h - hr;
    const int64_t pool = s->opt.random_pool, split = pool > 0 ? C - pool : 0;
    ns_status st = NS_OK;
    if (hh > 0) {
        const uint8_t *hard_keep = b->keep;
        if (pool > 0) {
            if ((st = NS_DISPATCH(ctx, step_mix_mask, (ctx, B, C, b->keep, cand->id, 0, split,
                                                       NULL, 0, b->mix_keep))))
                return st;
            hard_keep = b->mix_keep;
        }
        if ((st = ns_sample(ctx, cand, hard_keep, &s->sampler, hh, b->mix_hard, NULL,
                            b->mix_hcount)))
            return st;
    }
    if ((st = NS_DISPATCH(ctx, step_mix_mask, (ctx, B, C, b->keep, cand->id, split, C,
                                               hh > 0 ? b->mix_hard : NULL, hh, b->mix_keep))))
        return st;
    ns_sampler_options uniform = s->sampler;
    uniform.strategy = NS_SAMPLE_UNIFORM;
    uniform.seed ^= NS_STEP_RANDOM_SEED_XOR;
    if ((st = ns_sample(ctx, cand, b->mix_keep, &uniform, hr, b->mix_rand, NULL, b->mix_rcount)))
        return st;
    return NS_DISPATCH(ctx, step_mix_merge, (ctx, B, hh > 0 ? b->mix_hard : NULL, hh,
                                             b->mix_rand, hr, b->chosen_id, b->count));
}

/* score → filter + sample (with mixing: filter → step_mix) → gather: the h hard negatives of
 * every query. */
static ns_status step_negatives(ns_context *ctx, struct ns_step_state *s, const ns_batch *batch,
                                const int64_t *cand_ids, ns_filter_counts *counts) {
    step_bufs *b = &s->buf;
    ns_status st = NS_DISPATCH(ctx, step_scores, (ctx, batch->query, batch->positive,
                                                  batch->candidate, b->C, b->cand_score,
                                                  b->pos_score));
    if (st) return st;
    ns_candidates cand;
    memset(&cand, 0, sizeof cand);
    cand.queries = b->B;
    cand.per_query = b->C;
    cand.id = cand_ids;
    cand.score = b->cand_score;
    cand.positive_score = b->pos_score;
    cand.positive_id = batch->candidate_id ? &s->positives : NULL;
    cand.guide_score = batch->guide_score;
    cand.guide_positive_score = batch->guide_positive_score;
    cand.query_offset = batch->query_offset;
    ns_filter_options fo = s->filter;
    if (!batch->candidate_id) fo.rules &= ~(unsigned)NS_FILTER_SAME_ID; /* nothing to match */
    /* filter and sample in one call (on the CPU fused per row, one scan of the data checks);
     * with random + hard mixing, the filter and then its two draws */
    ns_filter_counts *fc = s->opt.sync_free ? NULL : counts;
    if (b->hr > 0) {
        if ((st = ns_filter(ctx, &cand, &fo, b->keep, fc)) || (st = step_mix(ctx, s, &cand)))
            return st;
    } else if ((st = ns_filter_sample(ctx, &cand, &fo, &s->sampler, b->h, b->keep, fc,
                                      b->chosen_id, NULL, b->count))) {
        return st;
    }
    return NS_DISPATCH(ctx, step_gather, (ctx, batch->candidate, b->C, cand_ids, b->keep,
                                          b->chosen_id, b->h, b->hard, b->hard_keep,
                                          b->chosen_row));
}

/* The loss's inputs: the batch's queries and positives, the gathered hard negatives, the
 * queue's rows. */
static ns_status step_loss_inputs(ns_context *ctx, struct ns_step_state *s, const ns_batch *batch,
                                  const ns_step_options *opt) {
    const step_bufs *b = &s->buf;
    ns_infonce_inputs *in = &s->in;
    const ns_matrix none = {NULL, NS_F32, 0, b->d, 0};
    memset(in, 0, sizeof *in);
    in->query = batch->query;
    in->passage = batch->positive;
    in->positive = NULL;
    in->passage_id = b->pos_ids;
    in->hard = none;
    in->extra = none;
    if (b->h > 0) {
        const ns_matrix hm = {b->hard, batch->candidate.dtype, b->B * b->h, b->d, b->d};
        in->hard = hm;
        in->hard_per_query = b->h;
        in->hard_keep = b->hard_keep;
        in->hard_id = batch->candidate_id ? b->chosen_id : NULL;
    }
    if (opt->queue && ns_queue_size(opt->queue) > 0) {
        const int64_t *qids = NULL;
        ns_status st = ns_queue_view(ctx, opt->queue, &in->extra, &qids);
        if (st) return st;
        in->extra_id = qids;
    }
    if (opt->groups) { /* the hard negatives take the groups of the slots they were drawn from */
        const ns_loss_groups *g = opt->groups;
        const int gather = b->h > 0 && g->hard;
        s->groups = (ns_loss_groups)NS_LOSS_GROUPS_INIT;
        s->groups.query = g->query;
        s->groups.passage = g->passage;
        s->groups.hard = gather ? b->hard_group : NULL;
        s->groups.weight = g->weight;
        s->loss.groups = &s->groups;
        if (gather)
            return NS_DISPATCH(ctx, step_gather_ids,
                               (ctx, b->B * b->h, b->chosen_row, g->hard, b->hard_group));
    }
    return NS_OK;
}

static ns_status step_forward(ns_context *ctx, const ns_batch *batch, const ns_step_options *given,
                              ns_step_result *result, step_config *cfg, int *collective) {
    static const char *fn = "ns_step_forward";
    ns_status st = ns_check_context(ctx, fn);
    if (st) return st;
    if ((st = ns_check_ptr(ctx, fn, "result", result))) return st;
    if ((st = check_step(ctx, batch, given, cfg))) return st;
    const ns_step_options *opt = &cfg->opt;
    if ((st = step_reserve(ctx, batch, opt, fn))) return st;
    struct ns_step_state *s = ctx->step;
    s->filter = cfg->filter;
    s->sampler = cfg->sampler;
    s->loss = cfg->loss;
    s->opt.sync_free = opt->sync_free;
    s->opt.random_pool = opt->random_pool;
    float loss = 0.f;
    ns_filter_counts counts;
    memset(&counts, 0, sizeof counts);
#ifdef NS_HAVE_CUDA
    /* sync_free: the ops skip their synchronising data validation (the batch is trusted, the
     * rest is the step's own data); restored on every return. */
    const int cuda = ctx->backend == NS_BACKEND_CUDA;
    const int checks = cuda && opt->sync_free ? ns_cuda_swap_input_checks(ctx, 0) : 1;
    /* Checked (and one rank): the ops' validation is deferred to one read at the end, with the
     * counts and the loss (kernels/cuda_step_checks.cu): one synchronisation per forward. */
    int deferred = 0;
    if (cuda && !opt->sync_free && !opt->comm) st = ns_cuda_step_defer_begin(ctx, batch, &deferred);
#endif
    const int64_t *cand_ids;
    if (!st) st = step_ids(ctx, s, batch, &cand_ids);
    if (!st && s->buf.h > 0) st = step_negatives(ctx, s, batch, cand_ids, &counts);
    if (!st) st = step_loss_inputs(ctx, s, batch, opt);
    if (!st && opt->comm) {
        *collective = 1;
        st = ns_comm_infonce_forward(ctx, opt->comm, &s->in, &s->loss, &loss, s->buf.per_query,
                                     s->buf.saved, fn);
        if (!st) st = ns_copy(ctx, s->buf.loss, &loss, 4, NS_COPY_H2D);
    } else if (!st) {
#ifdef NS_HAVE_CUDA
        if (cuda) { /* the mean loss on the device; read back only when the caller wants it */
            const ns_loss_options *lo = &s->loss;
            ns_loss_options defaults;
            step_bufs *b = &s->buf;
            st = ns_infonce_check(ctx, b->fused ? "ns_infonce_forward_backward" : "ns_infonce_forward",
                                  &s->in, &lo, &defaults);
            if (!st && b->fused) { /* the gradients now, at grad_loss 1; the backward scales them */
                ns_infonce_grads g = {b->fgq, b->fgp, b->h > 0 ? b->grad_hard : NULL, NULL};
                st = ns_cuda_infonce_forward_backward_device(ctx, &s->in, lo, 1.0f, b->loss,
                                                             b->per_query, b->saved, &g, b->fdtau_dev);
            } else if (!st) {
                st = ns_cuda_infonce_forward_device(ctx, &s->in, lo, b->loss, b->per_query, b->saved);
            }
            if (!st && !opt->sync_free && !deferred) st = ns_copy(ctx, &loss, s->buf.loss, 4, NS_COPY_D2H);
        } else
#endif
        if (s->buf.fused) { /* the gradients now, at grad_loss 1; the backward scales them */
            step_bufs *b = &s->buf;
            ns_infonce_grads g = {b->fgq, b->fgp, b->h > 0 ? b->grad_hard : NULL, &b->fdtau};
            st = ns_infonce_forward_backward(ctx, &s->in, &s->loss, 1.0f, &loss, b->per_query,
                                             b->saved, &g);
            if (!st) *b->loss = loss;
        } else {
            st = ns_infonce_forward(ctx, &s->in, &s->loss, &loss, s->buf.per_query, s->buf.saved);
            if (!st) *s->buf.loss = loss; /* CPU: the backend's memory is the host's */
        }
    }
#ifdef NS_HAVE_CUDA
    if (cuda && opt->sync_free) ns_cuda_swap_input_checks(ctx, checks);
    if (deferred)
        st = ns_cuda_step_defer_end(ctx, st, batch, s->buf.loss, &loss, s->buf.h > 0 ? &counts : NULL);
#endif
    if (st) return st;

    s->batch = *batch;
    s->opt = *opt;
    s->opt.filter = &s->filter; /* the state's own copies, not the call's */
    s->opt.sampler = &s->sampler;
    s->opt.loss = &s->loss;
    s->ready = 1;
    memset(result, 0, sizeof *result);
    result->loss = opt->sync_free ? NAN : loss;
    result->per_query = s->buf.per_query;
    if (s->buf.h > 0) {
        result->negative_id = s->buf.chosen_id;
        result->negative_row = s->buf.chosen_row;
        result->negative_count = s->buf.count;
    }
    result->filtered = counts;
    return NS_OK;
}

/* ------------------------------------------------------------------ backward */

static ns_status step_backward(ns_context *ctx, float grad_loss, ns_step_grads *grads,
                               int *collective);

ns_status ns_step_backward(ns_context *ctx, float grad_loss, ns_step_grads *grads) {
    int collective = 0;
    ns_status st = NS_OK;
#ifdef NS_HAVE_CUDA
    const int guard = ctx && ctx->backend == NS_BACKEND_CUDA && ctx->cuda;
    int prev_device = -1;
    if (guard) st = ns_cuda_device_enter(ctx, "ns_step_backward", &prev_device);
#endif
    if (!st) st = step_backward(ctx, grad_loss, grads, &collective);
#ifdef NS_HAVE_CUDA
    if (guard) ns_cuda_device_leave(ctx, prev_device);
#endif
    ns_comm *comm = ctx && ctx->step && ctx->step->ready ? ctx->step->opt.comm : NULL;
    if (st && !collective && comm) {
        /* As in the forward: the other ranks are waiting in the backward's first exchange. */
        char why[NS_ERROR_CAPACITY];
        memcpy(why, ctx->error, sizeof why);
        if (ns_comm_usable(ctx, comm, "ns_step_backward") == NS_OK)
            ns_comm_infonce_abstain(ctx, comm, st, "ns_step_backward");
        memcpy(ctx->error, why, sizeof why);
    }
    return st;
}

/* The fused forward's gradients (grad_loss = 1) times grad_loss into the wanted buffers (the
 * hard rows' in place: they are the step's own), on the backend. CUDA: dτ is read back (the
 * backward's one synchronisation, only when asked for). */
static ns_status step_fused_scale(ns_context *ctx, step_bufs *b, float grad_loss,
                                  const ns_infonce_grads *g) {
    const int64_t n = b->B * b->d, nh = b->B * b->h * b->d;
    ns_status st = NS_OK;
    if (!st && g->query) st = NS_DISPATCH(ctx, step_scale, (ctx, n, b->fgq, grad_loss, g->query));
    if (!st && g->passage) st = NS_DISPATCH(ctx, step_scale, (ctx, n, b->fgp, grad_loss, g->passage));
    if (!st && g->hard) st = NS_DISPATCH(ctx, step_scale, (ctx, nh, g->hard, grad_loss, g->hard));
    if (st || !g->temperature) return st;
    float dtau = b->fdtau;
#ifdef NS_HAVE_CUDA
    if (ctx->backend == NS_BACKEND_CUDA) {
        if (ns_cuda_stream_capturing(ctx))
            return ns_fail(ctx, NS_ERR_UNSUPPORTED,
                           "ns_step_backward: grads->temperature is a host float and needs a "
                           "synchronisation, which a stream being captured into a CUDA graph "
                           "cannot do");
        if ((st = ns_copy(ctx, &dtau, b->fdtau_dev, sizeof dtau, NS_COPY_D2H))) return st;
    }
#endif
    *g->temperature = dtau * grad_loss;
    return NS_OK;
}

static ns_status step_backward(ns_context *ctx, float grad_loss, ns_step_grads *grads,
                               int *collective) {
    static const char *fn = "ns_step_backward";
    ns_status st = ns_check_context(ctx, fn);
    if (st) return st;
    if ((st = ns_check_ptr(ctx, fn, "grads", grads))) return st;
    struct ns_step_state *s = ctx->step;
    if (!s || !s->ready)
        return ns_fail(ctx, NS_ERR_INVALID_ARGUMENT,
                       "%s: no forward to take the backward of; call ns_step_forward first (each "
                       "forward has one backward)",
                       fn);
    if (!isfinite(grad_loss))
        return ns_fail(ctx, NS_ERR_NONFINITE, "%s: grad_loss (%g) is not finite", fn, grad_loss);
    /* The push comes last: what it needs is checked before any gradient is written (the
     * forward checked the queue; the stream may since have begun a capture). */
    if (s->opt.enqueue &&
        (st = ns_queue_check_push(ctx, fn, "options->queue", s->opt.queue, s->buf.d, 1)))
        return st;
    const int64_t B = s->buf.B, C = s->buf.C, h = s->buf.h, d = s->buf.d;
    /* dH is laid out with the forward's buffers: the backward allocates nothing. */
    float *grad_hard = h > 0 && grads->candidate ? s->buf.grad_hard : NULL;
    ns_infonce_grads g;
    g.query = grads->query;
    g.passage = grads->positive;
    g.hard = grad_hard;
    g.temperature = grads->temperature;
#ifdef NS_HAVE_CUDA
    /* Everything the backward reads was checked by its forward (or trusted under sync_free):
     * no synchronising validation (a host dτ is the only synchronisation left). */
    const int cuda = ctx->backend == NS_BACKEND_CUDA;
    const int checks = cuda ? ns_cuda_swap_input_checks(ctx, 0) : 1;
#endif
    if (s->opt.comm) {
        *collective = 1;
        st = ns_comm_infonce_backward(ctx, s->opt.comm, &s->in, &s->loss, s->buf.saved,
                                      grad_loss, &g, fn);
    } else if (s->buf.fused) {
        st = step_fused_scale(ctx, &s->buf, grad_loss, &g);
    } else {
        st = ns_infonce_backward(ctx, &s->in, &s->loss, s->buf.saved, grad_loss, &g);
    }
    if (!st && grads->candidate && C > 0) {
        const int64_t *row = h > 0 ? s->buf.chosen_row : NULL;
        st = NS_DISPATCH(ctx, step_scatter,
                         (ctx, B * C, d, grad_hard, row, h > 0 ? B * h : 0, grads->candidate));
    }
    if (!st) {
        s->ready = 0;
        /* The positives were checked by the forward (or trusted under sync_free): the push's
         * own scan is skipped on CUDA (checks are off in the backward), and it takes any
         * dtype, so it cannot fail on the data after the backward ran. */
        if (s->opt.enqueue)
            st = ns_queue_push(ctx, s->opt.queue, s->batch.positive, s->positives.ids);
    }
#ifdef NS_HAVE_CUDA
    if (cuda) ns_cuda_swap_input_checks(ctx, checks);
#endif
    return st;
}

const float *ns_step_device_loss(ns_context *ctx) {
    return ctx && ctx->step && ctx->step->buf.loss && ctx->step->mem.base ? ctx->step->buf.loss
                                                                           : NULL;
}
