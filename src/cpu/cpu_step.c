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

/* Sampled ids → rows of query i's candidate block; the rows gathered to f32. The sampler never
 * returns an id twice in a row, and it returns only ids of that row, so the first match is it. */
ns_status ns_cpu_step_gather(ns_context *ctx, ns_matrix cand, int64_t per_query,
                             const int64_t *cand_id, const int64_t *chosen, int64_t h,
                             float *hard, uint8_t *keep, int64_t *row) {
    const int64_t C = per_query, B = C > 0 ? cand.rows / C : 0, d = cand.cols;
    (void)ctx;
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < B; i++) {
        for (int64_t r = 0; r < h; r++) {
            int64_t id = chosen[i * h + r], at = -1;
            if (id >= 0)
                for (int64_t j = 0; j < C; j++)
                    if ((cand_id ? cand_id[i * C + j] : j) == id) {
                        at = i * C + j;
                        break;
                    }
            float *dst = hard + (size_t)(i * h + r) * d;
            row[i * h + r] = at;
            keep[i * h + r] = at >= 0;
            if (at >= 0) ns_rows_to_f32(cand, at, 1, dst);
            else memset(dst, 0, (size_t)d * sizeof(float));
        }
    }
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
