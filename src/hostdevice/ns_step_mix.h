/*
 * The step's random + hard mixing (ns_step_options.random_negatives; src/step.c), per element,
 * shared by the CPU loops (src/cpu/cpu_step_mix.c) and the CUDA kernels
 * (kernels/cuda_step_mix.cu), so both backends take the same decisions:
 *   mask   slot j of query i is eligible iff the filter kept it, lo <= j < hi (the hard region
 *          [0, C − pool) or the random pool [C − pool, C); pool 0 = every slot for both), and
 *          its id is none of the query's ndrop dropped ids (the hard negatives just chosen);
 *   merge  row i of the mixed choice is its h hard ids (−1 padded) then its h_rand random ids
 *          (−1 padded); the count is the number of ids >= 0.
 */
#ifndef NS_STEP_MIX_H
#define NS_STEP_MIX_H

#include "ns_hd.h"

#include <stdint.h>

NS_HD NS_MATH_INLINE uint8_t ns_mix_eligible(const uint8_t *keep, const int64_t *cand_id,
                                             int64_t C, int64_t lo, int64_t hi,
                                             const int64_t *drop, int64_t ndrop, int64_t t) {
    const int64_t i = t / C, j = t - i * C;
    if (j < lo || j >= hi || (keep && !keep[t])) return 0;
    const int64_t id = cand_id[t];
    if (id < 0) return 0;
    for (int64_t k = 0; k < ndrop; k++)
        if (drop[i * ndrop + k] == id) return 0;
    return 1;
}

/* Element t of the B × (h + hr) mixed ids. */
NS_HD NS_MATH_INLINE int64_t ns_mix_id(const int64_t *hard, int64_t h, const int64_t *rnd,
                                       int64_t hr, int64_t t) {
    const int64_t H = h + hr, i = t / H, c = t - i * H;
    return c < h ? hard[i * h + c] : rnd[i * hr + (c - h)];
}

/* Query i's merged row: its h + hr ids (hard first) into id, and how many are not -1. */
NS_HD NS_MATH_INLINE int64_t ns_mix_merge_row(const int64_t *hard, int64_t h, const int64_t *rnd,
                                              int64_t hr, int64_t i, int64_t *id) {
    const int64_t H = h + hr;
    int64_t n = 0;
    for (int64_t c = 0; c < H; c++) {
        const int64_t v = ns_mix_id(hard, h, rnd, hr, i * H + c);
        id[i * H + c] = v;
        n += v >= 0;
    }
    return n;
}

#endif /* NS_STEP_MIX_H */
