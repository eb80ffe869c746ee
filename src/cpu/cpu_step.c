/* The training step's stages on the CPU (kernels/cuda_step.cu is the CUDA side): candidate
 * scores, the gather of the sampled candidate rows and the scatter of their gradients back. */
#include "ns_cpu.h"

#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

/* Summed in order with separately rounded products and sums (-ffp-contract=off): the CUDA
 * kernel's order, so both backends take the same filter and sampler decisions. */
static float dot_f32(const float *a, const float *b, int64_t n) {
    float s = 0.f;
    for (int64_t k = 0; k < n; k++) s += a[k] * b[k];
    return s;
}

ns_status ns_cpu_step_check_batch(ns_context *ctx, const ns_batch *b) {
    const char *names[3] = {"batch->query", "batch->positive", "batch->candidate"};
    const ns_matrix ms[3] = {b->query, b->positive, b->candidate};
    for (int m = 0; m < 3; m++) {
        int64_t bad = ns_matrix_find_nonfinite(ms[m]);
        if (bad)
            return ns_fail(ctx, NS_ERR_NONFINITE,
                           "ns_step_forward: %s holds NaN or Inf at row %lld, column %lld",
                           names[m], (long long)((bad - 1) / ms[m].cols),
                           (long long)((bad - 1) % ms[m].cols));
    }
    return NS_OK;
}

typedef struct {
    size_t bytes;
    float *tmp;
} scores_ws;

static void scores_layout(void *plan, ns_arena *a) {
    scores_ws *w = (scores_ws *)plan;
    w->tmp = (float *)ns_arena_carve(a, w->bytes);
}

ns_status ns_cpu_step_scores(ns_context *ctx, ns_matrix q, ns_matrix pos, ns_matrix cand,
                             int64_t per_query, float *score, float *positive_score) {
    const int64_t B = q.rows, d = q.cols, C = per_query;
    const int threads = ns_threads(ctx);
    scores_ws w = {(size_t)threads * 2 * d * sizeof(float), NULL};
    ns_status st = ns_arena_lay_out(ctx, &ctx->scratch, scores_layout, &w, "ns_step_forward");
    if (st) return st;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t i = 0; i < B; i++) {
        int t = 0;
#ifdef _OPENMP
        t = omp_get_thread_num();
#endif
        float *qi = w.tmp + (size_t)t * 2 * d, *row = qi + d;
        ns_rows_to_f32(q, i, 1, qi);
        ns_rows_to_f32(pos, i, 1, row);
        positive_score[i] = dot_f32(qi, row, d);
        for (int64_t j = 0; j < C; j++) {
            ns_rows_to_f32(cand, i * C + j, 1, row);
            score[i * C + j] = dot_f32(qi, row, d);
        }
    }
    return NS_OK;
}

/* Sampled ids → rows of query i's candidate block, gathered in the candidates' own dtype (the
 * loss then sees one dtype and runs its products in it). The sampler draws among the kept slots
 * only, and of a duplicated id only its first kept copy; so the slot is the first one with that
 * id that the filter kept (an earlier copy the filter removed is not it: its vector may
 * differ). */
ns_status ns_cpu_step_gather(ns_context *ctx, ns_matrix cand, int64_t per_query,
                             const int64_t *cand_id, const uint8_t *slot_keep,
                             const int64_t *chosen, int64_t h, void *hard, uint8_t *keep,
                             int64_t *row) {
    const int64_t C = per_query, B = C > 0 ? cand.rows / C : 0, d = cand.cols;
    const size_t es = ns_dtype_size(cand.dtype);
    (void)ctx;
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < B; i++) {
        for (int64_t r = 0; r < h; r++) {
            int64_t id = chosen[i * h + r], at = -1;
            if (id >= 0)
                for (int64_t j = 0; j < C; j++)
                    if ((!slot_keep || slot_keep[i * C + j]) &&
                        (cand_id ? cand_id[i * C + j] : j) == id) {
                        at = i * C + j;
                        break;
                    }
            char *dst = (char *)hard + (size_t)(i * h + r) * d * es;
            row[i * h + r] = at;
            keep[i * h + r] = at >= 0;
            if (at >= 0) memcpy(dst, ns_row(cand, at), (size_t)d * es);
            else memset(dst, 0, (size_t)d * es);
        }
    }
    return NS_OK;
}

ns_status ns_cpu_step_ids(ns_context *ctx, int64_t B, int64_t C, int64_t query_offset,
                          int64_t *pos_offsets, int64_t *pos_ids, int64_t *cand_ids) {
    (void)ctx;
    for (int64_t i = 0; i <= B; i++) pos_offsets[i] = i;
    if (pos_ids)
        for (int64_t i = 0; i < B; i++) pos_ids[i] = query_offset + i;
    if (cand_ids)
        for (int64_t r = 0; r < B * C; r++) cand_ids[r] = query_offset * C + r;
    return NS_OK;
}

ns_status ns_cpu_step_scatter(ns_context *ctx, int64_t rows, int64_t d, const float *grad_hard,
                              const int64_t *row, int64_t nrow, float *grad_cand) {
    (void)ctx;
    memset(grad_cand, 0, (size_t)rows * d * sizeof(float));
    /* Distinct rows per query and disjoint blocks across queries: no two r write one row. */
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < nrow; r++) {
        if (row[r] < 0) continue;
        float *dst = grad_cand + (size_t)row[r] * d;
        const float *src = grad_hard + (size_t)r * d;
        for (int64_t k = 0; k < d; k++) dst[k] += src[k];
    }
    return NS_OK;
}

ns_status ns_cpu_step_gather_ids(ns_context *ctx, int64_t n, const int64_t *row,
                                 const int64_t *src, int64_t *dst) {
    (void)ctx;
    for (int64_t r = 0; r < n; r++) dst[r] = row[r] >= 0 ? src[row[r]] : -1;
    return NS_OK;
}

ns_status ns_cpu_step_scale(ns_context *ctx, int64_t n, const float *src, float scale, float *dst) {
    (void)ctx;
    for (int64_t e = 0; e < n; e++) dst[e] = src[e] * scale;
    return NS_OK;
}
