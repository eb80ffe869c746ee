/* The InfoNCE formulas both backends run (src/cpu/cpu_infonce_*.c and kernels/cuda_infonce_*.cu):
 * the layout of the saved row statistics, which columns of a block are the positive, masked or
 * a negative for a query, the row finish with its debiased/clamped branch, the symmetric column
 * combine and the gradient of one logit. Written once here (NS_HD, see ns_hd.h); only the loops
 * around them are per backend. e^x is ns_loss_expf: the vectorisable polynomial on the host,
 * CUDA's expf on the device. */
#ifndef NS_LOSS_MATH_H
#define NS_LOSS_MATH_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "ns_hd.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Layout of the NS_INFONCE_SAVED_PER_QUERY floats the forward saves for query i; either
 * backend's backward reads either backend's forward. */
enum {
    NS_SAVED_SHIFT = 0,  /* plain: the row log-sum-exp; debiased/β: max negative logit (0 if none) */
    NS_SAVED_CU = 1,     /* dL_i/dl_j = cu·e^{(1+β)(l_j − shift)} − cv·e^{β(l_j − shift)} ... */
    NS_SAVED_CV = 2,     /* ... for each unmasked negative j (plain: cu = 1, cv = 0) */
    NS_SAVED_GPOS = 3,   /* dL_i/dl⁺ (query→passage direction) */
    NS_SAVED_COLLSE = 4, /* symmetric: log Σ_k m'_k e^{l_{k,p}} of the column p = positive[i] */
    NS_SAVED_LOSS = 5,   /* L_i, the query→passage term */
    NS_SAVED_DTAU = 6,   /* the explicit ∂L_i/∂τ (clamped debiased branch: n e^{-1/τ}/(τ² Z)) */
    NS_SAVED_LPOS = 7    /* l⁺, the positive logit */
};

/* The blocks of candidates: shared by every query (passages, shared hard negatives, extra rows)
 * or a query's own hard negatives (column j of query i is hard row i·h + j). */
enum { NS_BLK_PASSAGE = 0, NS_BLK_HARD = 1, NS_BLK_EXTRA = 2, NS_BLK_OWN = 3 };
/* What column j of a block is for query i. */
enum { NS_COL_NEGATIVE = 0, NS_COL_MASKED = 1, NS_COL_POSITIVE = 2 };

/* The id arrays of ns_infonce_inputs, the same-id rule and the same-group rule
 * (options->groups: qgroup NULL = off). */
typedef struct {
    const int64_t *positive, *passage_id, *hard_id, *extra_id;
    const uint8_t *hard_keep;
    const int64_t *posid; /* CUDA: the id of each query's positive, filled on the device */
    int same;             /* options->mask_same_id */
    int64_t h;            /* hard_per_query */
    const int64_t *qgroup, *pgroup, *hgroup, *egroup; /* B, N, B·h, E group ids; < 0 = none */
    float group_adj;      /* added to a same-group logit: -inf (mask) or log(weight) */
} ns_loss_ids;

NS_HD NS_MATH_INLINE int64_t ns_loss_positive(const ns_loss_ids *d, int64_t i) {
    return d->positive ? d->positive[i] : i;
}
NS_HD NS_MATH_INLINE int64_t ns_loss_passage_id(const ns_loss_ids *d, int64_t j) {
    return d->passage_id ? d->passage_id[j] : j;
}

/* The facts of column j of a shared block (kind PASSAGE, HARD or EXTRA) that hold for every
 * query: returns 1 when it is masked for all of them; *id is its id and *idok whether the
 * same-id rule compares it with a query's positive id. */
NS_HD NS_MATH_INLINE int ns_loss_column(const ns_loss_ids *d, int kind, int64_t j, int64_t *id,
                                        int *idok) {
    *id = 0;
    *idok = 0;
    if (kind == NS_BLK_PASSAGE) {
        *id = ns_loss_passage_id(d, j);
        *idok = d->same;
        return 0;
    }
    if (kind == NS_BLK_HARD) {
        int masked = d->hard_keep && !d->hard_keep[j];
        if (d->hard_id) {
            masked |= d->hard_id[j] == -1;
            *id = d->hard_id[j];
            *idok = d->same;
        }
        return masked;
    }
    if (d->extra_id) {
        *id = d->extra_id[j];
        *idok = d->same;
    }
    return 0;
}

/* The group of column j of a block (kind PASSAGE, HARD or EXTRA; -1: none). */
NS_HD NS_MATH_INLINE int64_t ns_loss_col_group(const ns_loss_ids *d, int kind, int64_t j) {
    const int64_t *g = kind == NS_BLK_PASSAGE ? d->pgroup : kind == NS_BLK_HARD ? d->hgroup : d->egroup;
    return g ? g[j] : -1;
}

/* The same-group rule (ClusterNS-style false negatives): the logit of query i and column j of a
 * block (its own hard row for NS_BLK_OWN) gets group_adj added — -inf masks it, log w
 * down-weights it — when both are in one group (>= 0). The positive of the row (pos) never is:
 * one rule per logit, so the symmetric column term sees the same logits as the rows. */
NS_HD NS_MATH_INLINE float ns_loss_group_adj(const ns_loss_ids *d, int kind, int64_t i,
                                             int64_t pos, int64_t j) {
    if (!d->qgroup || d->qgroup[i] < 0) return 0.0f;
    if (kind == NS_BLK_PASSAGE && j == pos) return 0.0f;
    if (kind == NS_BLK_OWN) {
        kind = NS_BLK_HARD;
        j = i * d->h + j;
    }
    return ns_loss_col_group(d, kind, j) == d->qgroup[i] ? d->group_adj : 0.0f;
}

/* Column j of a block for query i (positive row pos, positive id posid): NS_COL_*. A same-group
 * column masked by the group rule is NS_COL_MASKED; a down-weighted one stays a negative (its
 * logit + ns_loss_group_adj enters the formulas). */
NS_HD NS_MATH_INLINE int ns_loss_col_class(const ns_loss_ids *d, int kind, int64_t i, int64_t pos,
                                           int64_t posid, int64_t j) {
    if (kind == NS_BLK_PASSAGE && j == pos) return NS_COL_POSITIVE;
    if (ns_loss_group_adj(d, kind, i, pos, j) == -INFINITY) return NS_COL_MASKED;
    if (kind == NS_BLK_OWN) {
        kind = NS_BLK_HARD;
        j = i * d->h + j;
    }
    int64_t id;
    int idok;
    if (ns_loss_column(d, kind, j, &id, &idok)) return NS_COL_MASKED;
    return idok && id == posid ? NS_COL_MASKED : NS_COL_NEGATIVE;
}

/* The logit of query i (positive id posid_i) in the symmetric passage→query term of passage
 * column j (id pid_j), x being the raw logit: -inf when query i is out of the column (the
 * same-id rule: i's positive has j's id — column_lse adds i itself back; the group mask), else
 * x plus the group adjustment. Both backends' column statistics. */
NS_HD NS_MATH_INLINE float ns_loss_col_logit(const ns_loss_ids *d, int64_t i, int64_t posid_i,
                                             int64_t pid_j, int64_t j, float x) {
    if (d->same && posid_i == pid_j) return -INFINITY;
    return d->qgroup ? x + ns_loss_group_adj(d, NS_BLK_PASSAGE, i, ns_loss_positive(d, i), j) : x;
}

/* Running column statistics (max m, s = Σ e^{x − m}) meeting a tile whose maximum is tmax: m
 * becomes the larger, s is rescaled to it; the tile's Σ e^{x − m} (taken after) is added. The
 * merge both backends' column statistics use, in a fixed order of tiles. */
NS_HD NS_MATH_INLINE void ns_loss_lse_rescale(double *m, double *s, double tmax) {
    if (tmax == -INFINITY) return;
    const double mn = tmax > *m ? tmax : *m;
    *s *= exp(*m - mn);
    *m = mn;
}

/* The query→passage loss L_i of one row from its statistics (m: max negative logit, a = A',
 * w = W', n negatives; the positive logit is already in sv[NS_SAVED_LPOS]); fills the row's
 * saved floats. Plain: the log-sum-exp. Debiased/reweighted (general): Ng = max(g1, g2) with
 * g1 = (n·E_w[e^l] − τ⁺·n·e^{l⁺}) / (1 − τ⁺) and the clamp g2 = n·e^{−1/τ}. */
NS_HD NS_MATH_INLINE double ns_loss_row_finish(int general, double tau, double tau_plus,
                                               double beta, float m, double a, double w,
                                               int64_t n, float *sv) {
    const double lp = sv[NS_SAVED_LPOS];
    double L;
    if (!general) {
        double M = n && m > lp ? m : lp;
        double z = exp(lp - M) + (n ? exp((double)m - M) * a : 0.0);
        double lse = M + log(z);
        L = lse - lp;
        sv[NS_SAVED_SHIFT] = (float)lse;
        sv[NS_SAVED_CU] = 1.0f;
        sv[NS_SAVED_CV] = 0.0f;
        sv[NS_SAVED_GPOS] = (float)(exp(lp - lse) - 1.0);
        sv[NS_SAVED_DTAU] = 0.0f;
    } else if (n == 0) {
        /* No negatives: Ng = 0 on both branches of the max, L = 0, no gradient. */
        L = 0.0;
        sv[NS_SAVED_SHIFT] = 0.0f;
        sv[NS_SAVED_CU] = sv[NS_SAVED_CV] = sv[NS_SAVED_GPOS] = sv[NS_SAVED_DTAU] = 0.0f;
    } else {
        const double tp = tau_plus, nn = (double)n;
        const double floor_l = -1.0 / tau;
        double M = lp;
        if (m > M) M = m;
        if (floor_l > M) M = floor_l;
        const double ratio = a / w; /* A/W = e^m · ratio */
        const double ep = exp(lp - M);
        const double g1 = (nn * exp((double)m - M) * ratio - tp * nn * ep) / (1.0 - tp);
        const double g2 = nn * exp(floor_l - M);
        const int clamped = !(g1 >= g2);
        const double z = ep + (clamped ? g2 : g1);
        L = -lp + M + log(z);
        sv[NS_SAVED_SHIFT] = m;
        if (!clamped) {
            const double K = nn * exp((double)m - M) / ((1.0 - tp) * w * z);
            sv[NS_SAVED_CU] = (float)(K * (1.0 + beta));
            sv[NS_SAVED_CV] = (float)(K * beta * ratio);
            sv[NS_SAVED_GPOS] = (float)(-1.0 + (ep - tp * nn * ep / (1.0 - tp)) / z);
            sv[NS_SAVED_DTAU] = 0.0f;
        } else {
            /* Ng = n e^{-1/τ}: no gradient to the logits, but one to τ. */
            sv[NS_SAVED_CU] = sv[NS_SAVED_CV] = 0.0f;
            sv[NS_SAVED_GPOS] = (float)(-1.0 + ep / z);
            sv[NS_SAVED_DTAU] = (float)(g2 / (z * tau * tau));
        }
    }
    sv[NS_SAVED_LOSS] = (float)L;
    sv[NS_SAVED_COLLSE] = 0.0f;
    return L;
}

/* The fixed-point scale of the symmetric backward's column sums (kernels/cuda_infonce_backward.cu:
 * Σ e^{v − max} over the queries whose positive is one passage, added as 64-bit integers so the
 * bits do not depend on the order). Each term is in (0, 1], so at most n terms (n = B: a passage
 * is the positive of at most every query) sum to at most n·scale: 2^40 while n ≤ 2^23, else the
 * largest power of two with n·scale ≤ 2^63, so the sum never wraps (a fixed 2^40 wrapped from
 * 2^24 queries on one passage). The absolute error is scale^-1 / 2 per term against a sum ≥ 1. */
NS_HD NS_MATH_INLINE double ns_loss_colfix_scale(int64_t n) {
    int s = 40;
    while (s > 0 && (uint64_t)n > ((uint64_t)1 << (63 - s))) s--;
    return ldexp(1.0, s);
}

/* The symmetric term's column log-sum-exp for a query whose positive column has statistics
 * (cmax, csum) over the unmasked queries, lp its positive logit: query i itself joins the sum
 * when the same-id rule kept it out. */
NS_HD NS_MATH_INLINE double ns_loss_column_lse(double cmax, double csum, double lp, int same) {
    if (!(csum > 0.0)) return lp;
    double clse = cmax + log(csum);
    if (same) {
        double M = clse > lp ? clse : lp;
        clse = M + log(exp(clse - M) + exp(lp - M));
    }
    return clse;
}

#ifndef __CUDA_ARCH__
/* e^x for the CPU loss's tiles: range reduction to r = x − n·ln2 and Cephes' degree-6
 * polynomial, written so the compiler vectorises it (libm's expf is one call per element and
 * took a third of the loss's time). Relative error ~2 ulp on [-87, 88]; x is clamped into that
 * range, so masked elements (x = -inf) give ~1e-38 and callers select them to 0. */
static inline float ns_loss_exp(float x) {
    x = x < -87.0f ? -87.0f : x;
    x = x > 88.0f ? 88.0f : x;
    /* round(x / ln2) by the 1.5·2^23 trick (exact without -ffast-math, |x/ln2| < 2^22) */
    float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
    float r = x - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    int32_t bits = ((int32_t)n + 127) << 23;
    float scale;
    memcpy(&scale, &bits, 4);
    return p * scale;
}
#endif

NS_HD NS_MATH_INLINE float ns_loss_expf(float x) {
#ifdef __CUDA_ARCH__
    return expf(x);
#else
    return ns_loss_exp(x);
#endif
}

/* dL/dl of an unmasked negative at e = l − shift: reweighted (cv ≠ 0) and plain forms. */
NS_HD NS_MATH_INLINE float ns_loss_grad_reweighted(float e, float cu, float cv, float beta) {
    float vb = ns_loss_expf(beta * e);
    return cu * (vb * ns_loss_expf(e)) - cv * vb;
}
NS_HD NS_MATH_INLINE float ns_loss_grad_plain(float e, float cu, float beta1) {
    return cu * ns_loss_expf(beta1 * e);
}

/* The saved factors of one row that its gradient needs. */
typedef struct {
    float shift, cu, cv, gpos, clse;
} ns_loss_factors;

NS_HD NS_MATH_INLINE ns_loss_factors ns_loss_row_factors(const float *sv) {
    ns_loss_factors f;
    f.shift = sv[NS_SAVED_SHIFT];
    f.cu = sv[NS_SAVED_CU];
    f.cv = sv[NS_SAVED_CV];
    f.gpos = sv[NS_SAVED_GPOS];
    f.clse = sv[NS_SAVED_COLLSE];
    return f;
}

/* dL/dl of one logit xv of class cl (NS_COL_*). symcol: a passage column of the symmetric loss
 * with column factor colc (+inf: not a positive column); same_id: the column's id is the row's
 * positive id under the same-id rule; is_pos: the column is the row's positive. xv includes the
 * group adjustment (-inf: masked by the group rule, out of the column term too). */
NS_HD NS_MATH_INLINE float ns_loss_element_grad(const ns_loss_factors *f, float beta, int cl,
                                                float xv, int symcol, float colc, int same_id,
                                                int is_pos) {
    float g = 0.0f;
    if (cl == NS_COL_POSITIVE) {
        g = f->gpos;
    } else if (cl == NS_COL_NEGATIVE && f->cu != 0.0f) {
        const float e = xv - f->shift;
        g = f->cv != 0.0f ? ns_loss_grad_reweighted(e, f->cu, f->cv, beta)
                          : ns_loss_grad_plain(e, f->cu, 1.0f + beta);
    }
    if (symcol && colc != INFINITY && xv != -INFINITY) {
        if (same_id) {
            if (is_pos) g += ns_loss_expf(xv - f->clse) - 1.0f;
        } else {
            g += ns_loss_expf(xv - colc) - (is_pos ? 1.0f : 0.0f);
        }
    }
    return g;
}

#ifdef __cplusplus
}
#endif
#endif
