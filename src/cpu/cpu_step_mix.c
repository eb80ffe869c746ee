/* The step's random + hard mixing on the CPU (rules: src/hostdevice/ns_step_mix.h). */
#include "ns_cpu.h"
#include "ns_step_mix.h"

ns_status ns_cpu_step_mix_mask(ns_context *ctx, int64_t B, int64_t C, const uint8_t *keep,
                               const int64_t *cand_id, int64_t lo, int64_t hi,
                               const int64_t *drop, int64_t ndrop, uint8_t *out) {
    const int nt = ns_threads(ctx);
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int64_t t = 0; t < B * C; t++)
        out[t] = ns_mix_eligible(keep, cand_id, C, lo, hi, drop, ndrop, t);
    return NS_OK;
}

ns_status ns_cpu_step_mix_merge(ns_context *ctx, int64_t B, const int64_t *hard, int64_t h,
                                const int64_t *rnd, int64_t hr, int64_t *id, int64_t *count) {
    (void)ctx;
    for (int64_t i = 0; i < B; i++) count[i] = ns_mix_merge_row(hard, h, rnd, hr, i, id);
    return NS_OK;
}
