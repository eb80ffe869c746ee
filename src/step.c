/* The orchestrated training step: score the candidates → filter → sample → gather the sampled
 * rows → InfoNCE forward; then the backward and the scatter of the hard negatives' gradient
 * back onto the candidate rows. Each stage is the public op of the same name, so the step
 * inherits their checks, their CUDA paths and their determinism; what lives here is the
 * plumbing between them and the state kept from forward to backward. */
#include "ns_internal.h"
#include "ns_comm.h"
#ifdef NS_HAVE_CUDA
#include "ns_cuda.h"
#endif

#include <math.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

/* Buffers grow and are reused across steps (host memory on CPU, device memory on CUDA). */
enum {
    BUF_CAND_SCORE, BUF_POS_SCORE, BUF_KEEP, BUF_POS_OFFSETS, BUF_POS_IDS, BUF_CAND_IDS,
    BUF_CHOSEN_ID, BUF_CHOSEN_ROW, BUF_COUNT, BUF_HARD, BUF_HARD_KEEP, BUF_PER_QUERY, BUF_SAVED,
    BUF_GRAD_HARD, BUF_STAGE, BUF_COUNT_OF
};

struct ns_step_state {
    void *buf[BUF_COUNT_OF];
    size_t cap[BUF_COUNT_OF];
    int on_device[BUF_COUNT_OF];
    int ready;                /* a forward succeeded and its backward has not run yet */
    ns_batch batch;
    ns_step_options opt;
    int64_t B, C, h, d;
    ns_infonce_inputs in;
    ns_id_lists positives;
};

static void buf_free(struct ns_step_state *s, int i) {
#ifdef NS_HAVE_CUDA
    if (s->on_device[i]) {
        ns_cuda_free(NULL, s->buf[i]);
    } else
#endif
        free(s->buf[i]);
    s->buf[i] = NULL;
    s->cap[i] = 0;
}

void ns_step_state_free(struct ns_step_state *s) {
    if (!s) return;
    for (int i = 0; i < BUF_COUNT_OF; i++) buf_free(s, i);
    free(s);
}

/* Buffer i with at least bytes, on the context's backend (or on the host when host != 0). */
static void *buf_get(ns_context *ctx, int i, size_t bytes, int host) {
    struct ns_step_state *s = ctx->step;
    int device = !host && ctx->backend == NS_BACKEND_CUDA;
    if (bytes == 0) bytes = 8;
    if (s->buf[i] && s->cap[i] >= bytes && s->on_device[i] == device) return s->buf[i];
    buf_free(s, i);
    void *p = NULL;
#ifdef NS_HAVE_CUDA
    if (device) {
        if (ns_cuda_malloc(ctx, &p, bytes) != NS_OK) return NULL;
    } else
#endif
        p = malloc(bytes);
    if (!p) return NULL;
    s->buf[i] = p;
    s->cap[i] = bytes;
    s->on_device[i] = device;
    return p;
}

/* Copies host memory into a buffer of the context's backend (plain memcpy on CPU). */
static ns_status put(ns_context *ctx, void *dst, const void *src, size_t bytes) {
#ifdef NS_HAVE_CUDA
    if (ctx->backend == NS_BACKEND_CUDA) return ns_cuda_memcpy(ctx, dst, src, bytes, 1);
#endif
    memcpy(dst, src, bytes);
    return NS_OK;
}

/* ------------------------------------------------------------------ CPU stages */

static float dot_f32(const float *a, const float *b, int64_t n) {
    float s = 0.f;
    for (int64_t k = 0; k < n; k++) s += a[k] * b[k];
    return s;
}

/* score[i·C + j] = q_i · cand_{i·C+j}; positive_score[i] = q_i · p_i. */
static ns_status cpu_scores(ns_context *ctx, const ns_batch *b, int64_t C, float *score,
                            float *positive_score) {
    int64_t B = b->query.rows, d = b->query.cols;
    int threads = ns_threads(ctx);
    float *tmp = (float *)ns_workspace(ctx, NS_WS_STEP, (size_t)threads * 2 * d * sizeof(float));
    if (!tmp) return ns_fail(ctx, NS_ERR_OUT_OF_MEMORY, "ns_step_forward: cannot allocate %lld floats",
                             (long long)(threads * 2 * d));
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t i = 0; i < B; i++) {
        int t = 0;
#ifdef _OPENMP
        t = omp_get_thread_num();
#endif
        float *qi = tmp + (size_t)t * 2 * d, *row = qi + d;
        ns_rows_to_f32(b->query, i, 1, qi);
        ns_rows_to_f32(b->positive, i, 1, row);
        positive_score[i] = dot_f32(qi, row, d);
        for (int64_t j = 0; j < C; j++) {
            ns_rows_to_f32(b->candidate, i * C + j, 1, row);
            score[i * C + j] = dot_f32(qi, row, d);
        }
    }
    return NS_OK;
}

/* Sampled ids → rows of query i's candidate block; the rows gathered to f32. The sampler never
 * returns an id twice in a row, and it returns only ids of that row, so the first match is it. */
static void cpu_gather(const ns_batch *b, int64_t C, const int64_t *cand_id,
                       const int64_t *chosen, int64_t h, float *hard, uint8_t *keep, int64_t *row) {
    int64_t B = b->query.rows, d = b->query.cols;
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < B; i++) {
        for (int64_t r = 0; r < h; r++) {
            int64_t id = chosen[i * h + r], at = -1;
            if (id >= 0)
                for (int64_t j = 0; j < C; j++)
                    if (cand_id[i * C + j] == id) { at = i * C + j; break; }
            float *dst = hard + (size_t)(i * h + r) * d;
            row[i * h + r] = at;
            keep[i * h + r] = at >= 0;
            if (at >= 0) ns_rows_to_f32(b->candidate, at, 1, dst);
            else memset(dst, 0, (size_t)d * sizeof(float));
        }
    }
}

static void cpu_scatter(int64_t rows, int64_t d, const float *grad_hard, const int64_t *row,
                        int64_t nrow, float *grad_cand) {
    memset(grad_cand, 0, (size_t)rows * d * sizeof(float));
    /* Distinct rows per query and disjoint blocks across queries: no two r write one row. */
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < nrow; r++) {
        if (row[r] < 0) continue;
        float *dst = grad_cand + (size_t)row[r] * d;
        const float *src = grad_hard + (size_t)r * d;
        for (int64_t k = 0; k < d; k++) dst[k] += src[k];
    }
}

/* ------------------------------------------------------------------ checks */

static ns_status check_step(ns_context *ctx, const ns_batch *b, const ns_step_options *o) {
    static const char *fn = "ns_step_forward";
    ns_status st;
    if ((st = ns_check_ptr(ctx, fn, "batch", b))) return st;
    if ((st = ns_check_ptr(ctx, fn, "options", o))) return st;
    if ((st = ns_check_matrix(ctx, fn, "batch->query", b->query, 0))) return st;
    if ((st = ns_check_matrix(ctx, fn, "batch->positive", b->positive, 0))) return st;
    if ((st = ns_check_matrix(ctx, fn, "batch->candidate", b->candidate, 1))) return st;
    if (o->struct_size < sizeof(ns_step_options))
        return ns_fail(ctx, NS_ERR_INVALID_ARGUMENT,
                       "%s: options->struct_size (%zu) is smaller than sizeof(ns_step_options) (%zu);"
                       " initialise with NS_STEP_OPTIONS_INIT",
                       fn, o->struct_size, sizeof(ns_step_options));
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
    if (o->queue && ns_queue_size(o->queue) > 0) {
        ns_matrix rows;
        const int64_t *ids;
        if ((st = ns_queue_view(ctx, o->queue, &rows, &ids))) return st;
        if (rows.cols != d)
            return ns_fail(ctx, NS_ERR_INVALID_ARGUMENT,
                           "%s: options->queue holds rows of %lld columns but batch->query has %lld",
                           fn, (long long)rows.cols, (long long)d);
    }
    if (ctx->backend == NS_BACKEND_CPU) { /* device memory is checked by the ops themselves */
        const char *names[3] = {"batch->query", "batch->positive", "batch->candidate"};
        const ns_matrix ms[3] = {b->query, b->positive, b->candidate};
        for (int m = 0; m < 3; m++) {
            int64_t bad = ns_matrix_find_nonfinite(ms[m]);
            if (bad)
                return ns_fail(ctx, NS_ERR_NONFINITE, "%s: %s holds NaN or Inf at row %lld, column %lld",
                               fn, names[m], (long long)((bad - 1) / ms[m].cols),
                               (long long)((bad - 1) % ms[m].cols));
        }
    }
    if (o->comm && (st = ns_comm_usable(ctx, o->comm, fn))) return st;
    return NS_OK;
}

/* ------------------------------------------------------------------ forward */

/* Multi-rank (options->comm): each rank filters and samples its own queries (the RNG counters
 * use global query ids, so the draws are those of one rank over the whole batch), then the
 * loss runs over the global pool (src/comm_loss.c). *collective tells whether that loss, the
 * step's only collective, was reached: a rank failing before it still takes part in its first
 * exchange, so that the others fail at once instead of at the timeout. */
static ns_status step_forward(ns_context *ctx, const ns_batch *batch, const ns_step_options *opt,
                              ns_step_result *result, int *collective);

ns_status ns_step_forward(ns_context *ctx, const ns_batch *batch, const ns_step_options *opt,
                          ns_step_result *result) {
    int collective = 0;
    ns_status st = step_forward(ctx, batch, opt, result, &collective);
    if (st && !collective && ctx && opt && opt->struct_size >= sizeof(ns_step_options) && opt->comm) {
        char why[NS_ERROR_CAPACITY]; /* this rank's own failure is what it reports */
        memcpy(why, ctx->error, sizeof why);
        if (ns_comm_usable(ctx, opt->comm, "ns_step_forward") == NS_OK)
            ns_comm_infonce_abstain(ctx, opt->comm, st, "ns_step_forward");
        memcpy(ctx->error, why, sizeof why);
    }
    return st;
}

static ns_status step_forward(ns_context *ctx, const ns_batch *batch, const ns_step_options *opt,
                              ns_step_result *result, int *collective) {
    static const char *fn = "ns_step_forward";
    ns_status st = ns_check_context(ctx, fn);
    if (st) return st;
    if ((st = ns_check_ptr(ctx, fn, "result", result))) return st;
    if ((st = check_step(ctx, batch, opt))) return st;
    if (!ctx->step) {
        ctx->step = (struct ns_step_state *)calloc(1, sizeof(struct ns_step_state));
        if (!ctx->step) return ns_fail(ctx, NS_ERR_OUT_OF_MEMORY, "%s: cannot allocate the step state", fn);
    }
    struct ns_step_state *s = ctx->step;
    s->ready = 0;
    const int64_t B = batch->query.rows, d = batch->query.cols, C = batch->candidates_per_query;
    const int64_t h = opt->hard_negatives;
#ifdef NS_HAVE_CUDA
    const int cuda = ctx->backend == NS_BACKEND_CUDA;
#endif

    /* Ids: the positives' (given, or the global query ids) and the candidates' (given, or
     * synthetic ids that only key the sampler and never match a positive). */
    int64_t *pos_ids = (int64_t *)buf_get(ctx, BUF_POS_IDS, (size_t)B * 8, 0);
    int64_t *pos_offsets = (int64_t *)buf_get(ctx, BUF_POS_OFFSETS, (size_t)(B + 1) * 8, 0);
    int64_t *stage = (int64_t *)buf_get(ctx, BUF_STAGE, (size_t)(B * (C > 1 ? C : 1) + B + 1) * 8, 1);
    float *per_query = (float *)buf_get(ctx, BUF_PER_QUERY, (size_t)B * 4, 0);
    float *saved = (float *)buf_get(ctx, BUF_SAVED, (size_t)B * NS_INFONCE_SAVED_PER_QUERY * 4, 0);
    if (!pos_ids || !pos_offsets || !stage || !per_query || !saved)
        return ns_fail(ctx, NS_ERR_OUT_OF_MEMORY, "%s: cannot allocate the step buffers (B = %lld)",
                       fn, (long long)B);
    for (int64_t i = 0; i <= B; i++) stage[i] = i;
    if ((st = put(ctx, pos_offsets, stage, (size_t)(B + 1) * 8))) return st;
    if (batch->positive_id) {
#ifdef NS_HAVE_CUDA
        if (cuda) st = ns_cuda_memcpy(ctx, pos_ids, batch->positive_id, (size_t)B * 8, 3);
        else
#endif
            memcpy(pos_ids, batch->positive_id, (size_t)B * 8);
        if (st) return st;
    } else {
        for (int64_t i = 0; i < B; i++) stage[i] = batch->query_offset + i;
        if ((st = put(ctx, pos_ids, stage, (size_t)B * 8))) return st;
    }
    s->positives.offsets = pos_offsets;
    s->positives.ids = pos_ids;
    s->positives.queries = B;

    ns_filter_counts counts;
    memset(&counts, 0, sizeof counts);
    const int64_t *chosen_id = NULL, *chosen_row = NULL, *chosen_count = NULL;
    float *hard = NULL;
    uint8_t *hard_keep = NULL;
    const int64_t *hard_id = NULL;
    if (h > 0) {
        float *cand_score = (float *)buf_get(ctx, BUF_CAND_SCORE, (size_t)B * C * 4, 0);
        float *pos_score = (float *)buf_get(ctx, BUF_POS_SCORE, (size_t)B * 4, 0);
        uint8_t *keep = (uint8_t *)buf_get(ctx, BUF_KEEP, (size_t)B * C, 0);
        int64_t *cid = (int64_t *)buf_get(ctx, BUF_CAND_IDS, (size_t)B * C * 8, 0);
        int64_t *cho = (int64_t *)buf_get(ctx, BUF_CHOSEN_ID, (size_t)B * h * 8, 0);
        int64_t *row = (int64_t *)buf_get(ctx, BUF_CHOSEN_ROW, (size_t)B * h * 8, 0);
        int64_t *cnt = (int64_t *)buf_get(ctx, BUF_COUNT, (size_t)B * 8, 0);
        hard = (float *)buf_get(ctx, BUF_HARD, (size_t)B * h * d * 4, 0);
        hard_keep = (uint8_t *)buf_get(ctx, BUF_HARD_KEEP, (size_t)B * h, 0);
        if (!cand_score || !pos_score || !keep || !cid || !cho || !row || !cnt || !hard || !hard_keep)
            return ns_fail(ctx, NS_ERR_OUT_OF_MEMORY,
                           "%s: cannot allocate the step buffers (B = %lld, C = %lld, h = %lld, d = %lld)",
                           fn, (long long)B, (long long)C, (long long)h, (long long)d);
        const int64_t *cand_ids = batch->candidate_id;
        if (!cand_ids) {
            /* Synthetic ids for the RNG counter: global candidate slots, batch-split invariant. */
            int64_t *tmp = (int64_t *)buf_get(ctx, BUF_STAGE, (size_t)B * C * 8, 1);
            if (!tmp) return ns_fail(ctx, NS_ERR_OUT_OF_MEMORY, "%s: cannot allocate ids", fn);
            for (int64_t r = 0; r < B * C; r++) tmp[r] = batch->query_offset * C + r;
            if ((st = put(ctx, cid, tmp, (size_t)B * C * 8))) return st;
            cand_ids = cid;
        }
#ifdef NS_HAVE_CUDA
        if (cuda)
            st = ns_cuda_step_scores(ctx, batch->query, batch->positive, batch->candidate, C,
                                     cand_score, pos_score);
        else
#endif
            st = cpu_scores(ctx, batch, C, cand_score, pos_score);
        if (st) return st;

        ns_candidates cand;
        memset(&cand, 0, sizeof cand);
        cand.queries = B;
        cand.per_query = C;
        cand.id = cand_ids;
        cand.score = cand_score;
        cand.positive_score = pos_score;
        cand.positive_id = batch->candidate_id ? &s->positives : NULL;
        cand.guide_score = batch->guide_score;
        cand.guide_positive_score = batch->guide_positive_score;
        cand.query_offset = batch->query_offset;
        ns_filter_options fo = opt->filter;
        if (!batch->candidate_id) fo.rules &= ~(unsigned)NS_FILTER_SAME_ID; /* nothing to match */
        if ((st = ns_filter(ctx, &cand, &fo, keep, &counts))) return st;
        if ((st = ns_sample(ctx, &cand, keep, &opt->sampler, h, cho, NULL, cnt))) return st;
#ifdef NS_HAVE_CUDA
        if (cuda)
            st = ns_cuda_step_gather(ctx, batch->candidate, C, cand_ids, cho, h, hard, hard_keep, row);
        else
#endif
            cpu_gather(batch, C, cand_ids, cho, h, hard, hard_keep, row);
        if (st) return st;
        chosen_id = cho;
        chosen_row = row;
        chosen_count = cnt;
        hard_id = batch->candidate_id ? cho : NULL;
    }

    ns_infonce_inputs *in = &s->in;
    memset(in, 0, sizeof *in);
    in->query = batch->query;
    in->passage = batch->positive;
    in->positive = NULL;
    in->passage_id = pos_ids;
    if (h > 0) {
        ns_matrix hm = {hard, NS_F32, B * h, d, d};
        in->hard = hm;
        in->hard_per_query = h;
        in->hard_keep = hard_keep;
        in->hard_id = hard_id;
    } else {
        ns_matrix none = {NULL, NS_F32, 0, d, 0};
        in->hard = none;
    }
    ns_matrix none = {NULL, NS_F32, 0, d, 0};
    in->extra = none;
    if (opt->queue && ns_queue_size(opt->queue) > 0) {
        const int64_t *qids = NULL;
        if ((st = ns_queue_view(ctx, opt->queue, &in->extra, &qids))) return st;
        in->extra_id = qids;
    }
    float loss = 0.f;
    if (opt->comm) {
        *collective = 1;
        st = ns_comm_infonce_forward(ctx, opt->comm, in, &opt->loss, &loss, per_query, saved, fn);
    } else {
        st = ns_infonce_forward(ctx, in, &opt->loss, &loss, per_query, saved);
    }
    if (st) return st;

    s->batch = *batch;
    s->opt = *opt;
    s->B = B;
    s->C = C;
    s->h = h;
    s->d = d;
    s->ready = 1;
    memset(result, 0, sizeof *result);
    result->loss = loss;
    result->per_query = per_query;
    result->negative_id = chosen_id;
    result->negative_row = chosen_row;
    result->negative_count = chosen_count;
    result->filtered = counts;
    return NS_OK;
}

/* ------------------------------------------------------------------ backward */

static ns_status step_backward(ns_context *ctx, float grad_loss, ns_step_grads *grads,
                               int *collective);

ns_status ns_step_backward(ns_context *ctx, float grad_loss, ns_step_grads *grads) {
    int collective = 0;
    ns_status st = step_backward(ctx, grad_loss, grads, &collective);
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
    const int64_t B = s->B, C = s->C, h = s->h, d = s->d;
    float *grad_hard = NULL;
    if (h > 0 && grads->candidate) {
        grad_hard = (float *)buf_get(ctx, BUF_GRAD_HARD, (size_t)B * h * d * 4, 0);
        if (!grad_hard)
            return ns_fail(ctx, NS_ERR_OUT_OF_MEMORY, "%s: cannot allocate %lld × %lld gradient rows",
                           fn, (long long)(B * h), (long long)d);
    }
    ns_infonce_grads g;
    g.query = grads->query;
    g.passage = grads->positive;
    g.hard = grad_hard;
    g.temperature = grads->temperature;
    if (s->opt.comm) {
        *collective = 1;
        st = ns_comm_infonce_backward(ctx, s->opt.comm, &s->in, &s->opt.loss,
                                      (const float *)s->buf[BUF_SAVED], grad_loss, &g, fn);
    } else {
        st = ns_infonce_backward(ctx, &s->in, &s->opt.loss, (const float *)s->buf[BUF_SAVED],
                                 grad_loss, &g);
    }
    if (st) return st;
    if (grads->candidate && C > 0) {
        const int64_t *row = h > 0 ? (const int64_t *)s->buf[BUF_CHOSEN_ROW] : NULL;
#ifdef NS_HAVE_CUDA
        if (ctx->backend == NS_BACKEND_CUDA)
            st = ns_cuda_step_scatter(ctx, B * C, d, grad_hard, row, h > 0 ? B * h : 0, grads->candidate);
        else
#endif
            cpu_scatter(B * C, d, grad_hard, row, h > 0 ? B * h : 0, grads->candidate);
        if (st) return st;
    }
    s->ready = 0;
    if (s->opt.enqueue && s->opt.queue)
        return ns_queue_push(ctx, s->opt.queue, s->batch.positive, s->positives.ids);
    return NS_OK;
}
