/*
 * ns_sample_corpus's shared math (host and device, bit-identical like ns_math.h): the weight
 * of a row, the cumulative table, the uniform of a draw attempt and the per-query draw.
 *
 * Scheme (why it is exact: src/weighted.c):
 *   weight  v_r = w_r (alpha = 1), 1 for w_r > 0 (alpha = 0), else exp(alpha·log w_r − lmax)
 *           with lmax = max over w_r > 0 of alpha·ns_logf(w_r) (f32), the exp in double here;
 *           v_r = 0 for w_r = 0. (Rows with relative weight below e^-708 get 0.)
 *   table   cum[r] = inclusive prefix sum of v in double, in a fixed order: chunks of
 *           NS_WT_CHUNK rows summed left to right from 0, the chunk totals prefix-summed left
 *           to right, then cum[r] = pre[chunk] + local[r]. Monotone; total = cum[N−1].
 *   attempt a of query qid: Philox4x32-10 with the layout of ns_rng_bits (ns_math.h), candidate
 *           slot = a, output words 2 and 3 (ns_sample uses word 0) → u = (b + 0.5)·2^-52,
 *           b the top 52 bits: u in (0, 1), exact. t = u·total; the row is the first r with
 *           cum[r] > t (uniform: r = floor(u·N)); t >= total counts as a rejection.
 *   draw    accept the row unless it is excluded for the query or already drawn; after
 *           NS_WT_MAX_REJECT rejections in a row the next attempt's u picks directly among the
 *           eligible rows (sum of eligible v in row order, then the first with running sum > t).
 */
#ifndef NS_WEIGHTED_MATH_H
#define NS_WEIGHTED_MATH_H

#include "ns_math.h"

#ifdef __cplusplus
extern "C" {
#endif

#define NS_WT_CHUNK 4096
#define NS_WT_MAX_REJECT 64
#define NS_WT_MAX_ALPHA 64.0f

NS_HD NS_MATH_INLINE double ns_dmul(double a, double b) {
#ifdef __CUDA_ARCH__
    return __dmul_rn(a, b);
#else
    return a * b;
#endif
}
NS_HD NS_MATH_INLINE double ns_dadd(double a, double b) {
#ifdef __CUDA_ARCH__
    return __dadd_rn(a, b);
#else
    return a + b;
#endif
}

/* e^x for x <= 0 in double (relative error about 1e-15; 0 below −708). Basic operations and
 * floor only (both exact). */
NS_HD NS_MATH_INLINE double ns_wt_exp(double x) {
    if (!(x > -708.0)) return 0.0;
    const double k = floor(ns_dadd(ns_dmul(x, 1.4426950408889634), 0.5));
    /* ln 2 = hi + lo, hi with 32 trailing zero bits so that k·hi is exact (|k| <= 1022) */
    double r = ns_dadd(x, -ns_dmul(k, 6.93147180369123816490e-01));
    r = ns_dadd(r, -ns_dmul(k, 1.90821492927058770002e-10));
    double p = 1.0 / 479001600.0; /* 1/12! */
    p = ns_dadd(ns_dmul(p, r), 1.0 / 39916800.0);
    p = ns_dadd(ns_dmul(p, r), 1.0 / 3628800.0);
    p = ns_dadd(ns_dmul(p, r), 1.0 / 362880.0);
    p = ns_dadd(ns_dmul(p, r), 1.0 / 40320.0);
    p = ns_dadd(ns_dmul(p, r), 1.0 / 5040.0);
    p = ns_dadd(ns_dmul(p, r), 1.0 / 720.0);
    p = ns_dadd(ns_dmul(p, r), 1.0 / 120.0);
    p = ns_dadd(ns_dmul(p, r), 1.0 / 24.0);
    p = ns_dadd(ns_dmul(p, r), 1.0 / 6.0);
    p = ns_dadd(ns_dmul(p, r), 0.5);
    p = ns_dadd(ns_dmul(p, r), 1.0);
    p = ns_dadd(ns_dmul(p, r), 1.0);
    uint64_t bits = (uint64_t)((int64_t)k + 1023) << 52; /* 2^k, k in [−1021, 0] */
    double s;
#ifdef __CUDA_ARCH__
    s = __longlong_as_double((long long)bits);
#else
    memcpy(&s, &bits, sizeof s);
#endif
    return ns_dmul(p, s);
}

/* alpha·log w (f32) for w > 0: the log-weight whose maximum is lmax. */
NS_HD NS_MATH_INLINE float ns_wt_logw(float w, float alpha) { return ns_fmul(alpha, ns_logf(w)); }

/* The weight v_r used by the draw (w == NULL: uniform). */
NS_HD NS_MATH_INLINE double ns_wt_weight(const float *w, int64_t r, float alpha, float lmax) {
    if (!w) return 1.0;
    const float x = w[r];
    if (!(x > 0.0f)) return 0.0;
    if (alpha == 1.0f) return (double)x;
    if (alpha == 0.0f) return 1.0;
    return ns_wt_exp((double)ns_fsub(ns_wt_logw(x, alpha), lmax));
}

/* Inclusive running sums of v over rows [r0, r1) from 0 into cum[r0..r1); returns the sum. */
NS_HD NS_MATH_INLINE double ns_wt_chunk_scan(const float *w, int64_t r0, int64_t r1, float alpha,
                                             float lmax, double *cum) {
    double s = 0.0;
    for (int64_t r = r0; r < r1; r++) {
        s = ns_dadd(s, ns_wt_weight(w, r, alpha, lmax));
        cum[r] = s;
    }
    return s;
}

/* u in (0, 1) of attempt a of query qid: (b + 0.5)·2^-52, b the top 52 of words 2, 3. */
NS_HD NS_MATH_INLINE double ns_wt_uniform(uint64_t seed, uint64_t step, int64_t qid,
                                          uint64_t a) {
    uint64_t q = (uint64_t)qid;
    uint32_t key[2] = {(uint32_t)seed, (uint32_t)(seed >> 32)};
    uint32_t ctr[4] = {(uint32_t)a, (uint32_t)q, (uint32_t)step,
                       (uint32_t)(((a >> 32) & 0xffffu) | (((q >> 32) & 0xffffu) << 16))};
    uint32_t out[4];
    ns_philox4x32_10(ctr, key, out);
    const uint64_t b = (((uint64_t)out[2] << 32) | out[3]) >> 12;
    return ns_dmul(ns_dadd((double)b, 0.5), 0x1p-52);
}

NS_HD NS_MATH_INLINE int ns_wt_in(const int64_t *list, int64_t n, int64_t r) {
    for (int64_t j = 0; j < n; j++)
        if (list[j] == r) return 1;
    return 0;
}

/* The row of u from the table (cum == NULL: uniform over N); −1 for the rejected edge. */
NS_HD NS_MATH_INLINE int64_t ns_wt_pick(const double *cum, int64_t N, double u) {
    if (!cum) {
        const int64_t r = (int64_t)ns_dmul(u, (double)N);
        return r < N ? r : -1;
    }
    const double t = ns_dmul(u, cum[N - 1]);
    if (!(t < cum[N - 1])) return -1;
    int64_t lo = 0, hi = N - 1; /* cum[hi] > t */
    while (lo < hi) {
        const int64_t mid = lo + (hi - lo) / 2;
        if (cum[mid] > t) hi = mid;
        else lo = mid + 1;
    }
    return lo;
}

/* The fallback: the row of u among the eligible rows (weight > 0, not excluded, not drawn),
 * directly; −1 when none is eligible. O(N · (nex + k)). */
NS_HD NS_MATH_INLINE int64_t ns_wt_direct(const float *w, float alpha, float lmax, int64_t N,
                                          const int64_t *ex, int64_t nex, const int64_t *drawn,
                                          int64_t k, double u) {
    double e = 0.0;
    int64_t last = -1;
    for (int64_t r = 0; r < N; r++) {
        const double v = ns_wt_weight(w, r, alpha, lmax);
        if (v > 0.0 && !ns_wt_in(ex, nex, r) && !ns_wt_in(drawn, k, r)) {
            e = ns_dadd(e, v);
            last = r;
        }
    }
    if (last < 0) return -1;
    const double t = ns_dmul(u, e);
    double acc = 0.0;
    for (int64_t r = 0; r < last; r++) {
        const double v = ns_wt_weight(w, r, alpha, lmax);
        if (v > 0.0 && !ns_wt_in(ex, nex, r) && !ns_wt_in(drawn, k, r)) {
            acc = ns_dadd(acc, v);
            if (acc > t) return r;
        }
    }
    return last;
}

/* The m draws of global query qid into out[0..m) (−1 padded); returns how many were drawn. */
NS_HD NS_MATH_INLINE int64_t ns_wt_draw_query(const double *cum, const float *w, float alpha,
                                              float lmax, int64_t N, const int64_t *ex,
                                              int64_t nex, uint64_t seed, uint64_t step,
                                              int64_t qid, int64_t m, int64_t *out) {
    int64_t k = 0;
    uint64_t a = 0;
    while (k < m) {
        int64_t r = -1;
        for (int rej = 0; rej < NS_WT_MAX_REJECT && r < 0; rej++) {
            const int64_t c = ns_wt_pick(cum, N, ns_wt_uniform(seed, step, qid, a++));
            if (c >= 0 && !ns_wt_in(ex, nex, c) && !ns_wt_in(out, k, c)) r = c;
        }
        if (r < 0) {
            r = ns_wt_direct(w, alpha, lmax, N, ex, nex, out, k,
                             ns_wt_uniform(seed, step, qid, a++));
            if (r < 0) break;
        }
        out[k++] = r;
    }
    for (int64_t j = k; j < m; j++) out[j] = -1;
    return k;
}

#ifdef __cplusplus
}
#endif
#endif /* NS_WEIGHTED_MATH_H */
