/*
 * Host/device-shared math: the counter-based RNG (Philox4x32-10), an own logf, the Gumbel
 * noise, the sampling keys of every strategy and the score rules of the false-negative filter.
 *
 * ONE header, compiled by the C compiler (C11; C++ in the tests) for the CPU backend and by
 * nvcc for the CUDA kernels, so both backends compute bit-identical keys and filter decisions
 * from the same scores. How that is kept:
 *  - Only IEEE basic operations (+ − × ÷, correctly rounded in both), explicit fmaf (the IEEE
 *    fused operation, exact in glibc and CUDA alike), integer and bit operations. No libm
 *    transcendental: ns_logf below replaces logf (glibc and CUDA logf differ in the last bit).
 *  - No contraction: the library is compiled with -ffp-contract=off (gcc) and -fmad=false
 *    (nvcc). On the device the products and sums are also spelled __fmul_rn/__fadd_rn/
 *    __fdiv_rn, which nvcc never contracts and which stay IEEE under -use_fast_math.
 *  - Subnormal inputs of ns_logf are scaled explicitly; that needs FTZ/DAZ off, the default
 *    of both compilers (not -use_fast_math / -ftz=true). The sampler never passes one: its
 *    logarithms see u >= 2^-24 and -log(u) >= 2^-24.
 *
 * Random-number layout (fixed; changing it changes every draw):
 *   key     = { (u32)seed, (u32)(seed >> 32) }
 *   counter = { (u32)cand_id, (u32)qid, (u32)step,
 *               ((cand_id >> 32) & 0xffff) | (((qid >> 32) & 0xffff) << 16) }
 * qid is the GLOBAL query id (cand->query_offset + row), cand_id the candidate's id
 * (ns_candidates.id), step the training step (its low 32 bits). So a draw depends on what is
 * drawn — not on positions, thread layout, batch split, world size or backend. Ids and query
 * ids are distinct in the counter up to 2^48; step repeats after 2^32 steps.
 * Output word 0 of the Philox block gives u = ((x >> 9) + 0.5) · 2^-23, which is exact in f32
 * and lies in [2^-24, 1 − 2^-24]: never 0 or 1, so the Gumbel noise G = −log(−log u) is finite.
 * (23 bits, not 24: with 24 bits, (2^24 − 1) + 0.5 is not a float and rounds up to u = 1.)
 */
#ifndef NS_MATH_H
#define NS_MATH_H

#include <stdint.h>
#include <string.h>
#include <math.h>

#include "negsamp.h"

#include "ns_hd.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ------------------------------------------------------------------ exact basic operations */

NS_HD NS_MATH_INLINE uint32_t ns_float_bits(float x) {
#ifdef __CUDA_ARCH__
    return __float_as_uint(x);
#else
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    return u;
#endif
}

NS_HD NS_MATH_INLINE float ns_bits_float(uint32_t u) {
#ifdef __CUDA_ARCH__
    return __uint_as_float(u);
#else
    float x;
    memcpy(&x, &u, sizeof x);
    return x;
#endif
}

/* Correctly rounded single operations that no compiler flag may fuse or relax. */
NS_HD NS_MATH_INLINE float ns_fmul(float a, float b) {
#ifdef __CUDA_ARCH__
    return __fmul_rn(a, b);
#else
    return a * b;
#endif
}
NS_HD NS_MATH_INLINE float ns_fadd(float a, float b) {
#ifdef __CUDA_ARCH__
    return __fadd_rn(a, b);
#else
    return a + b;
#endif
}
NS_HD NS_MATH_INLINE float ns_fsub(float a, float b) {
#ifdef __CUDA_ARCH__
    return __fsub_rn(a, b);
#else
    return a - b;
#endif
}
NS_HD NS_MATH_INLINE float ns_fdiv(float a, float b) {
#ifdef __CUDA_ARCH__
    return __fdiv_rn(a, b);
#else
    return a / b;
#endif
}
NS_HD NS_MATH_INLINE float ns_fma(float a, float b, float c) { return fmaf(a, b, c); }
NS_HD NS_MATH_INLINE float ns_fabs(float a) {
    return ns_bits_float(ns_float_bits(a) & 0x7fffffffu);
}

/* ------------------------------------------------------------------ logarithm */

/* Natural logarithm, max error 0.945 ulp against the exact value, measured over every positive
 * float (tests/test_ns_math.cpp checks a dense sample against double log on every build).
 * Identical bits on host and device. a = m · 2^i with m in [2/3, 4/3) by integer arithmetic on
 * the representation (so f = m − 1 is exact), then log a = i · ln 2 + log1p(f) with
 * log1p(f) = f + f² · P(f), P a degree-9 near-minimax polynomial (fitted for this header, weighted
 * by |f| so the relative error of the sum is flat). log(0) = −Inf, log(x < 0) = NaN,
 * log(+Inf) = +Inf, log(NaN) = NaN. */
NS_HD NS_MATH_INLINE float ns_logf(float a) {
    uint32_t ia = ns_float_bits(a);
    if (ia >= 0x7f800000u || ia == 0u) {       /* sign set, Inf, NaN or +0 */
        if ((ia & 0x7fffffffu) == 0u) return ns_bits_float(0xff800000u);        /* ±0 → −Inf */
        if ((ia & 0x7fffffffu) > 0x7f800000u) return a;                          /* NaN */
        if (ia == 0x7f800000u) return a;                                          /* +Inf */
        return ns_bits_float(0x7fc00000u);                                       /* < 0 → NaN */
    }
    int32_t bias = 0;
    if (ia < 0x00800000u) {                    /* subnormal: scale by 2^23 (exact) */
        ia = ns_float_bits(ns_fmul(a, 8388608.0f));
        bias = -23;
    }
    /* e = the exponent step that moves a into [2/3, 4/3): 0x3f2aaaab is 2/3 rounded up. */
    int32_t e = (int32_t)((ia - 0x3f2aaaabu) & 0xff800000u);
    float m = ns_bits_float(ia - (uint32_t)e);
    float i = (float)(e / 8388608 + bias);
    float f = ns_fsub(m, 1.0f);
    float s = ns_fmul(f, f);
    float p = 0x1.fef318p-4f;
    p = ns_fma(p, f, -0x1.0ab670p-3f);
    p = ns_fma(p, f, 0x1.b33202p-4f);
    p = ns_fma(p, f, -0x1.f19408p-4f);
    p = ns_fma(p, f, 0x1.2535dcp-3f);
    p = ns_fma(p, f, -0x1.55b038p-3f);
    p = ns_fma(p, f, 0x1.9994f8p-3f);
    p = ns_fma(p, f, -0x1.fffe38p-3f);
    p = ns_fma(p, f, 0x1.55555ap-2f);
    p = ns_fma(p, f, -0.5f);
    float r = ns_fma(p, s, f);
    /* i · ln 2 in two pieces: ln2_hi has 16 significant bits, so i · ln2_hi is exact. */
    r = ns_fma(i, 0x1.7f7d1cp-20f, r); /* ln 2 − ln2_hi */
    return ns_fma(i, 0x1.62e4p-1f, r); /* ln2_hi */
}

/* ------------------------------------------------------------------ Philox4x32-10 */

#define NS_PHILOX_M0 0xD2511F53u
#define NS_PHILOX_M1 0xCD9E8D57u
#define NS_PHILOX_W0 0x9E3779B9u /* Weyl key increments (golden ratio, sqrt(3) − 1) */
#define NS_PHILOX_W1 0xBB67AE85u

NS_HD NS_MATH_INLINE void ns_philox_round(uint32_t c[4], const uint32_t k[2]) {
    uint64_t p0 = (uint64_t)NS_PHILOX_M0 * c[0];
    uint64_t p1 = (uint64_t)NS_PHILOX_M1 * c[2];
    uint32_t hi0 = (uint32_t)(p0 >> 32), lo0 = (uint32_t)p0;
    uint32_t hi1 = (uint32_t)(p1 >> 32), lo1 = (uint32_t)p1;
    uint32_t c1 = c[1], c3 = c[3];
    c[0] = hi1 ^ c1 ^ k[0];
    c[1] = lo1;
    c[2] = hi0 ^ c3 ^ k[1];
    c[3] = lo0;
}

/* Philox4x32 with 10 rounds (Salmon et al. 2011, Random123): out = philox(counter, key). */
NS_HD NS_MATH_INLINE void ns_philox4x32_10(const uint32_t counter[4], const uint32_t key[2],
                                           uint32_t out[4]) {
    uint32_t c[4] = {counter[0], counter[1], counter[2], counter[3]};
    uint32_t k[2] = {key[0], key[1]};
    for (int r = 0; r < 10; r++) {
        if (r > 0) {
            k[0] += NS_PHILOX_W0;
            k[1] += NS_PHILOX_W1;
        }
        ns_philox_round(c, k);
    }
    out[0] = c[0];
    out[1] = c[1];
    out[2] = c[2];
    out[3] = c[3];
}

/* The 32 random bits drawn for candidate cand_id of global query qid at step (layout above). */
NS_HD NS_MATH_INLINE uint32_t ns_rng_bits(uint64_t seed, uint64_t step, int64_t qid,
                                          int64_t cand_id) {
    uint64_t q = (uint64_t)qid, c = (uint64_t)cand_id;
    uint32_t key[2] = {(uint32_t)seed, (uint32_t)(seed >> 32)};
    uint32_t ctr[4] = {(uint32_t)c, (uint32_t)q, (uint32_t)step,
                       (uint32_t)(((c >> 32) & 0xffffu) | (((q >> 32) & 0xffffu) << 16))};
    uint32_t out[4];
    ns_philox4x32_10(ctr, key, out);
    return out[0];
}

/* u in [2^-24, 1 − 2^-24], exact: never 0 or 1. */
NS_HD NS_MATH_INLINE float ns_uniform_open(uint32_t x) {
    return ns_fmul(ns_fadd((float)(x >> 9), 0.5f), 0x1p-23f);
}

/* Standard Gumbel noise G = −log(−log u); finite for every u ns_uniform_open returns
 * (G in [−2.82, 16.64]). */
NS_HD NS_MATH_INLINE float ns_gumbel(float u) { return -ns_logf(-ns_logf(u)); }

/* ------------------------------------------------------------------ sampling keys */

/* Log-weight of a candidate of score s for a query whose positive scores sp (s⁺):
 *   uniform: 0;  SimANS: −a · (s − s⁺ − b)²;  softmax: s / τ.
 * (top has no weight: its key is the score.) Overflow gives −Inf / ±Inf, never NaN, for finite
 * s, sp and valid a, b, τ. */
NS_HD NS_MATH_INLINE float ns_log_weight(int strategy, float s, float sp, float a, float b,
                                         float tau) {
    if (strategy == NS_SAMPLE_SIMANS) {
        float d = ns_fsub(ns_fsub(s, sp), b);
        return -ns_fmul(a, ns_fmul(d, d));
    }
    if (strategy == NS_SAMPLE_SOFTMAX) return ns_fdiv(s, tau);
    return 0.0f;
}

/* The Gumbel-top-m key: the m candidates with the largest keys are a draw without replacement
 * with probabilities proportional to exp(log-weight). top: key = s (no noise). Ties are broken
 * by the lower column position by the caller. */
NS_HD NS_MATH_INLINE float ns_sample_key(int strategy, float s, float sp, float a, float b,
                                         float tau, uint64_t seed, uint64_t step, int64_t qid,
                                         int64_t cand_id) {
    if (strategy == NS_SAMPLE_TOP) return s;
    float g = ns_gumbel(ns_uniform_open(ns_rng_bits(seed, step, qid, cand_id)));
    if (strategy == NS_SAMPLE_UNIFORM) return g;
    return ns_fadd(ns_log_weight(strategy, s, sp, a, b, tau), g);
}

/* ------------------------------------------------------------------ filter rules */

/* The NS_FILTER_* bits among MAX_SCORE, MIN_SCORE, MARGIN, REL_MARGIN, RANK, GUIDE, GUIDE_REL
 * that remove a candidate in column col of score s (guide score g) for a query with positive
 * score sp (guide positive gp). NS_FILTER_SAME_ID needs the positive lists and is the caller's.
 * Only the rules set in o->rules can hit; sp, g, gp are ignored when no enabled rule uses them
 * (the caller may pass 0). Thresholds are formed in f32 exactly as written here on both
 * backends. Every rule is evaluated and the disabled ones masked off, without a branch, so that
 * the CPU's loop over a row vectorises (comparisons with a disabled rule's threshold, even a
 * NaN one, only ever produce a masked bit). */
NS_HD NS_MATH_INLINE unsigned ns_filter_hits(const ns_filter_options *o, float s, float sp,
                                             float g, float gp, int64_t col) {
    const float margin = ns_fsub(sp, o->margin);
    const float rel_margin = ns_fsub(sp, ns_fmul(ns_fabs(sp), o->rel_margin));
    const float guide = ns_fsub(gp, o->guide_margin);
    const float guide_rel = ns_fsub(gp, ns_fmul(ns_fabs(gp), o->guide_margin));
    const unsigned hit = (s > o->max_score ? (unsigned)NS_FILTER_MAX_SCORE : 0u) |
                         (s < o->min_score ? (unsigned)NS_FILTER_MIN_SCORE : 0u) |
                         (s > margin ? (unsigned)NS_FILTER_MARGIN : 0u) |
                         (s > rel_margin ? (unsigned)NS_FILTER_REL_MARGIN : 0u) |
                         ((col < o->rank_min) | (col >= o->rank_max) ? (unsigned)NS_FILTER_RANK
                                                                     : 0u) |
                         (g > guide ? (unsigned)NS_FILTER_GUIDE : 0u) |
                         (g > guide_rel ? (unsigned)NS_FILTER_GUIDE_REL : 0u);
    return hit & o->rules & ~(unsigned)NS_FILTER_SAME_ID;
}

#ifdef __cplusplus
}
#endif
#endif /* NS_MATH_H */
