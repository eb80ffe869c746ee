/*
 * ns_kmeans's shared math (host and device, bit-identical like ns_math.h): the exact row costs,
 * the per-row assignment from a GEMM score row, and the init's uniforms.
 *
 *   dot      x·c in double, terms in index order (products of two f32 are exact in double), so
 *            every backend and thread layout gets the same bits.
 *   cost     Euclidean ‖x‖² − 2 x·c + ‖c‖² (clamped at 0); spherical 1 − x·c / ‖x‖ (c unit).
 *   assign   row x goes to argmax_j g_j, g_j = x·c_j − h_j (h_j = ‖c_j‖²/2 Euclidean, 0
 *            spherical: the argmax of the dot is the argmax of the cosine), ties to the lower j.
 *            The GEMM's ŝ_j is within e_j = K·‖x‖‖c_j‖ + A of the exact dot (ns_bound.h, f32
 *            GEMM: inputs not rounded); any j with ŝ_j − h_j + e_j below max_i (ŝ_i − h_i − e_i)
 *            cannot be the argmax, and the rest are re-scored exactly. So the label depends on
 *            the exact values only, not on the GEMM, its blocking or its threads.
 *   uniform  Philox4x32-10 keyed by the seed, counter {j, stream tag, 0, 0}, words 2 and 3
 *            → (b + 0.5)·2^-52 with b their top 52 bits: in (0, 1), exact in double.
 */
#ifndef NS_KMEANS_MATH_H
#define NS_KMEANS_MATH_H

#include "ns_bound.h"
#include "ns_weighted_math.h"

#ifdef __cplusplus
extern "C" {
#endif

#define NS_KM_STREAM_FIRST 0x6b6d3031u /* the first k-means++ / random row */
#define NS_KM_STREAM_PICK 0x6b6d3032u  /* later picks */

/* Double division and square root are correctly rounded on both sides (nvcc's -prec-div and
 * -prec-sqrt concern f32 only), and neither is ever contracted. */
NS_HD NS_MATH_INLINE double ns_ddiv(double a, double b) { return a / b; }
NS_HD NS_MATH_INLINE double ns_dsqrt(double a) { return sqrt(a); }

/* x·c over d terms in order, in double. */
NS_HD NS_MATH_INLINE double ns_km_dot(const float *x, const float *c, int64_t d) {
    double s = 0.0;
    for (int64_t t = 0; t < d; t++) s = ns_dadd(s, ns_dmul((double)x[t], (double)c[t]));
    return s;
}

NS_HD NS_MATH_INLINE double ns_km_norm2(const float *x, int64_t d) { return ns_km_dot(x, x, d); }

/* The cost of a row (‖x‖² = xn2) under a centroid (‖c‖² = cn2) with x·c = dot. */
NS_HD NS_MATH_INLINE double ns_km_cost(int spherical, double dot, double xn2, double cn2) {
    if (spherical) return ns_dadd(1.0, -ns_ddiv(dot, ns_dsqrt(xn2)));
    const double v = ns_dadd(ns_dadd(xn2, -ns_dmul(2.0, dot)), cn2);
    return v > 0.0 ? v : 0.0;
}

/* The centroids as the assignment sees them (host or device memory of the caller's side). */
typedef struct {
    const float *c;      /* k × d, ld = d */
    const double *h;     /* k: ‖c_j‖²/2 (Euclidean) or 0 (spherical) */
    const double *norm;  /* k: ‖c_j‖ */
    const double *n2;    /* k: ‖c_j‖² */
    int64_t k, d;
    int spherical;
    double K, A;         /* the GEMM bound: |ŝ − x·c| <= K·‖x‖‖c‖ + A */
    double cmax, hmax;   /* max_j ‖c_j‖, max_j h_j */
} ns_km_model;

/* The GEMM bound of an f32 GEMM over d terms on rows whose entries are at most max_abs. */
NS_HD NS_MATH_INLINE void ns_km_bound(int64_t d, double max_abs, double *K, double *A) {
    *K = ns_bound_relative((long long)d, 0, NS_BOUND_ACC_NEAREST);
    /* ns_bound_absolute assumes entries <= 2^32; larger ones scale the subnormal term. */
    const double s = max_abs > NS_BOUND_MAX_ABS ? max_abs / NS_BOUND_MAX_ABS : 1.0;
    *A = ns_bound_absolute((long long)d, 1.0) * s * s;
}

/* The label of row x (f32, d) from its GEMM scores s (k, ŝ_j ≈ x·c_j); *cost gets its exact
 * cost under that centroid. One bound for the row, E = K·‖x‖·max‖c‖ + A plus the rounding of
 * g_j = ŝ_j − h_j and of the exact g*_j = x·c_j − h_j in double (2^-50 of |ŝ_j| + h_j <=
 * 2‖x‖·max‖c‖ + max h + A + 1): every j has |g_j − g*_j| <= E, so the argmax of g* (and every
 * tie of it) has g_j >= max_i g_i − 2E.
 * The shortlist may differ between GEMMs; the exact re-score decides. */
NS_HD NS_MATH_INLINE int64_t ns_km_pick(const ns_km_model *m, const float *x, const float *s,
                                        double *cost) {
    const int64_t k = m->k, d = m->d;
    const double xn2 = ns_km_norm2(x, d), xn = ns_dsqrt(xn2);
    const double xc = ns_dmul(xn, m->cmax);
    const double E = ns_dadd(ns_dadd(ns_dmul(m->K, xc), m->A),
                             ns_dmul(8.8817841970012523e-16 /* 2^-50 */,
                                     ns_dadd(ns_dadd(ns_dmul(2.0, xc), m->hmax), ns_dadd(m->A, 1.0))));
    double gmax = -INFINITY;
    for (int64_t j = 0; j < k; j++) {
        const double g = ns_dadd((double)s[j], -m->h[j]);
        gmax = g > gmax ? g : gmax;
    }
    const double lo = ns_dadd(gmax, -ns_dmul(2.0, E));
    int64_t best = -1;
    double bg = -INFINITY, bdot = 0.0;
    for (int64_t j = 0; j < k; j++) {
        if (!(ns_dadd((double)s[j], -m->h[j]) >= lo)) continue;
        const double dot = ns_km_dot(x, m->c + j * d, d);
        const double ge = ns_dadd(dot, -m->h[j]);
        if (best < 0 || ge > bg) best = j, bg = ge, bdot = dot;
    }
    *cost = ns_km_cost(m->spherical, bdot, xn2, m->n2[best]);
    return best;
}

/* The exact cost of row x under centroid j (no GEMM). */
NS_HD NS_MATH_INLINE double ns_km_cost_of(const ns_km_model *m, const float *x, int64_t j) {
    return ns_km_cost(m->spherical, ns_km_dot(x, m->c + j * m->d, m->d), ns_km_norm2(x, m->d),
                      m->n2[j]);
}

/* acc (d doubles) += x, or its unit vector x / ‖x‖ when spherical (the update's sums). */
NS_HD NS_MATH_INLINE double ns_km_row_norm(const float *x, int64_t d) {
    return ns_dsqrt(ns_km_norm2(x, d));
}
/* One element's term: x_t, or x_t / ‖x‖ (nn = ns_km_row_norm) when spherical. */
NS_HD NS_MATH_INLINE double ns_km_term(float xt, double nn, int spherical) {
    return spherical ? ns_ddiv((double)xt, nn) : (double)xt;
}
NS_HD NS_MATH_INLINE void ns_km_accumulate(double *acc, const float *x, int64_t d, int spherical) {
    const double nn = spherical ? ns_km_row_norm(x, d) : 1.0;
    for (int64_t t = 0; t < d; t++) acc[t] = ns_dadd(acc[t], ns_km_term(x[t], nn, spherical));
}

/* The j-th uniform of a stream: in (0, 1). */
NS_HD NS_MATH_INLINE double ns_km_uniform(uint64_t seed, uint32_t stream, int64_t j) {
    const uint64_t c = (uint64_t)j;
    uint32_t key[2] = {(uint32_t)seed, (uint32_t)(seed >> 32)};
    uint32_t ctr[4] = {(uint32_t)c, stream, 0u, (uint32_t)(c >> 32)};
    uint32_t out[4];
    ns_philox4x32_10(ctr, key, out);
    const uint64_t b = (((uint64_t)out[2] << 32) | out[3]) >> 12;
    return ns_dmul(ns_dadd((double)b, 0.5), 2.220446049250313e-16 /* 2^-52 */);
}

#ifdef __cplusplus
}
#endif
#endif /* NS_KMEANS_MATH_H */
