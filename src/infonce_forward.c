/* InfoNCE forward on the CPU: one pass over tiles of logits (rows of queries × columns of
 * candidates), an online softmax per query row, and, for the symmetric loss, online column
 * statistics of the positive passages. Memory beyond inputs and outputs: one logit tile, row
 * state for one row tile and, when symmetric, two doubles and a byte per passage.
 *
 * Per query i with n unmasked negatives x_j (logits), the row keeps the running maximum m of the
 * negatives and A' = Σ e^{(1+β)(x_j − m)}, W' = Σ e^{β(x_j − m)} (β = 0 when plain: A' is the
 * shifted sum of exponentials, W' = n). The positive logit l⁺ is taken from its passage column.
 * The saved layout is documented in infonce_internal.h.
 *
 * Debiasing (τ⁺) and reweighting (β) apply to the query→passage term only; the symmetric
 * passage→query term is always the plain log-softmax over the queries of the column.
 * Outputs are written only once every check has passed: nothing below can fail but the
 * workspace allocation, which happens before the first write. */
#if defined(__GNUC__) && !defined(__clang__)
/* Lets GCC if-convert and vectorise the clamps and selects of the element loops. */
#pragma GCC optimize("no-trapping-math")
#endif
#include "infonce_internal.h"

#include <math.h>
#include <string.h>

typedef struct {
    float *m;     /* running max of negative logits, -inf when none yet */
    double *a, *w;
    int64_t *n;
    int64_t *pos, *posid; /* the positive passage row and its id, per row of the tile */
} row_state;

/* Sums run in NS_LANES independent lanes of a fixed order: the compiler vectorises them without
 * reassociating, and the result does not depend on the thread count. */
#define NS_LANES 16

/* Adds the logits x[0..n) (-inf = masked) to one row's running statistics. */
NS_LOSS_CLONES
static void row_update(const float *x, int64_t n, float beta, float *m, double *a, double *w,
                       int64_t *cnt) {
    float lm[NS_LANES];
    int32_t lc[NS_LANES];
    for (int l = 0; l < NS_LANES; l++) {
        lm[l] = -INFINITY;
        lc[l] = 0;
    }
    int64_t j0 = 0;
    for (; j0 + NS_LANES <= n; j0 += NS_LANES)
        for (int l = 0; l < NS_LANES; l++) {
            float v = x[j0 + l];
            lm[l] = v > lm[l] ? v : lm[l];
            lc[l] += v != -INFINITY;
        }
    for (int64_t j = j0; j < n; j++) {
        float v = x[j];
        lm[j - j0] = v > lm[j - j0] ? v : lm[j - j0];
        lc[j - j0] += v != -INFINITY;
    }
    float tmax = -INFINITY;
    int64_t c = 0;
    for (int l = 0; l < NS_LANES; l++) {
        tmax = lm[l] > tmax ? lm[l] : tmax;
        c += lc[l];
    }
    if (!c) return;
    float mn = tmax > *m ? tmax : *m;
    if (*cnt) {
        *a *= exp((double)(1.0f + beta) * ((double)*m - mn));
        if (beta > 0.0f) *w *= exp((double)beta * ((double)*m - mn));
    }
    float la[NS_LANES], lw[NS_LANES];
    for (int l = 0; l < NS_LANES; l++) la[l] = lw[l] = 0.0f;
    double sw;
    if (beta > 0.0f) {
        for (j0 = 0; j0 + NS_LANES <= n; j0 += NS_LANES)
            for (int l = 0; l < NS_LANES; l++) {
                float v = x[j0 + l], e = v - mn;
                float vb = ns_loss_exp(beta * e), u = vb * ns_loss_exp(e);
                la[l] += v != -INFINITY ? u : 0.0f;
                lw[l] += v != -INFINITY ? vb : 0.0f;
            }
        for (int64_t j = j0; j < n; j++) {
            float v = x[j], e = v - mn;
            float vb = ns_loss_exp(beta * e), u = vb * ns_loss_exp(e);
            la[j - j0] += v != -INFINITY ? u : 0.0f;
            lw[j - j0] += v != -INFINITY ? vb : 0.0f;
        }
        sw = 0.0;
        for (int l = 0; l < NS_LANES; l++) sw += (double)lw[l];
    } else {
        for (j0 = 0; j0 + NS_LANES <= n; j0 += NS_LANES)
            for (int l = 0; l < NS_LANES; l++) {
                float v = x[j0 + l];
                la[l] += v != -INFINITY ? ns_loss_exp(v - mn) : 0.0f;
            }
        for (int64_t j = j0; j < n; j++) {
            float v = x[j];
            la[j - j0] += v != -INFINITY ? ns_loss_exp(v - mn) : 0.0f;
        }
        sw = (double)c;
    }
    double sa = 0.0;
    for (int l = 0; l < NS_LANES; l++) sa += (double)la[l];
    *a += sa;
    *w += sw;
    *m = mn;
    *cnt += c;
}

/* Column statistics of the positive passages over the queries of this tile (symmetric loss):
 * cmax/csum hold max and Σ e^{l − max} over the unmasked queries k of each passage column. */
static void column_update(const ns_loss_plan *p, const float *xt, int64_t nb, int64_t nc,
                          int64_t j0, const int64_t *rposid, const uint8_t *ispos, double *cmax,
                          double *csum) {
    int64_t chunks = (nc + 63) / 64;
#pragma omp parallel for num_threads(p->nt) schedule(static)
    for (int64_t ch = 0; ch < chunks; ch++) {
        int64_t c0 = ch * 64, c1 = c0 + 64 < nc ? c0 + 64 : nc;
        double tmax[64], tsum[64];
        int64_t pid[64];
        for (int64_t c = c0; c < c1; c++) {
            tmax[c - c0] = -INFINITY;
            tsum[c - c0] = 0.0;
            pid[c - c0] = ns_loss_pid(p, j0 + c);
        }
        for (int64_t k = 0; k < nb; k++) {
            const float *x = xt + k * nc;
            for (int64_t c = c0; c < c1; c++) {
                if (!ispos[j0 + c] || (p->same && rposid[k] == pid[c - c0])) continue;
                if (x[c] > tmax[c - c0]) tmax[c - c0] = x[c];
            }
        }
        for (int64_t c = c0; c < c1; c++) {
            int64_t j = j0 + c;
            if (!ispos[j] || tmax[c - c0] == -INFINITY) continue;
            double mn = tmax[c - c0] > cmax[j] ? tmax[c - c0] : cmax[j];
            csum[j] *= exp(cmax[j] - mn);
            cmax[j] = mn;
        }
        for (int64_t k = 0; k < nb; k++) {
            const float *x = xt + k * nc;
            for (int64_t c = c0; c < c1; c++) {
                if (!ispos[j0 + c] || (p->same && rposid[k] == pid[c - c0])) continue;
                tsum[c - c0] += (double)ns_loss_exp((float)((double)x[c] - cmax[j0 + c]));
            }
        }
        for (int64_t c = c0; c < c1; c++) csum[j0 + c] += tsum[c - c0];
    }
}

/* The query→passage loss of one row from its statistics; fills the row's saved floats. */
static double row_finish(const ns_loss_plan *p, float m, double a, double w, int64_t n,
                         float *sv) {
    double lp = sv[NS_SAVED_LPOS];
    double L;
    if (!p->general) {
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
        double tp = p->tau_plus, beta = p->beta, tau = p->tau, nn = (double)n;
        double floor_l = -1.0 / tau;
        double M = lp;
        if (m > M) M = m;
        if (floor_l > M) M = floor_l;
        double ratio = a / w; /* A/W = e^m · ratio */
        double ep = exp(lp - M);
        double g1 = (nn * exp((double)m - M) * ratio - tp * nn * ep) / (1.0 - tp);
        double g2 = nn * exp(floor_l - M);
        int clamped = !(g1 >= g2);
        double z = ep + (clamped ? g2 : g1);
        L = -lp + M + log(z);
        sv[NS_SAVED_SHIFT] = m;
        if (!clamped) {
            double K = nn * exp((double)m - M) / ((1.0 - tp) * w * z);
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

ns_status ns_infonce_forward_cpu(ns_context *ctx, const ns_loss_plan *p, float *loss,
                                 float *per_query, float *saved) {
    static const char *fn = "ns_infonce_forward";
    const ns_infonce_inputs *in = p->in;
    const int64_t B = p->B, N = p->N, d = p->d, h = p->h;
    int64_t maxc = 1;
    int half_cols = 0;
    for (int b = 0; b < p->nblocks; b++) {
        if (p->blk[b].m.rows > maxc) maxc = p->blk[b].m.rows;
        if (p->blk[b].m.dtype != NS_F32) half_cols = 1;
    }
    const int64_t tb = p->tb < B ? p->tb : B, tn = p->tn < maxc ? p->tn : maxc;

    /* Workspace: the tile slot (NS_WS_LOSS) and the O(B + N) slot (NS_WS_LOSS2). */
    size_t off = 0, sz[8];
    sz[0] = (size_t)(tb * tn) * 4;                                              /* logits */
    sz[1] = in->query.dtype != NS_F32 ? (size_t)(tb * d) * 4 : 0;               /* q tile */
    sz[2] = half_cols ? (size_t)(tn * d) * 4 : 0;                               /* c tile */
    sz[3] = p->own_hard && in->hard.dtype != NS_F32 ? (size_t)(tb * h * d) * 4 : 0;
    sz[4] = (size_t)tn * 8;                                                     /* col ids */
    sz[5] = (size_t)tn * 2;                                                     /* masks */
    for (int i = 0; i < 6; i++) off += (sz[i] + 63) & ~(size_t)63;
    off += 128; /* the two mask arrays are carved apart */
    char *ws = (char *)ns_workspace(ctx, NS_WS_LOSS, off);
    size_t off2 = (size_t)tb * (4 + 8 + 8 + 8 + 8 + 8) + 64 * 6;
    if (p->sym) off2 += (size_t)N * (8 + 8 + 1) + 64 * 3;
    char *ws2 = (char *)ns_workspace(ctx, NS_WS_LOSS2, off2);
    if (!ws || !ws2)
        return ns_fail(ctx, NS_ERR_OUT_OF_MEMORY, "%s: cannot allocate %zu + %zu bytes of workspace",
                       fn, off, off2);
    char *cur = ws;
#define CARVE(base, bytes) (cur = base + (((size_t)(cur - base) + 63) & ~(size_t)63), cur += (bytes), (void *)(cur - (bytes)))
    float *xt = (float *)CARVE(ws, sz[0]);
    float *qbuf = (float *)CARVE(ws, sz[1]);
    float *cbuf = (float *)CARVE(ws, sz[2]);
    float *hbuf = (float *)CARVE(ws, sz[3]);
    int64_t *cid = (int64_t *)CARVE(ws, sz[4]);
    uint8_t *cmask = (uint8_t *)CARVE(ws, (size_t)tn);
    uint8_t *cidok = (uint8_t *)CARVE(ws, (size_t)tn);
    cur = ws2;
    row_state rs;
    rs.m = (float *)CARVE(ws2, (size_t)tb * 4);
    rs.a = (double *)CARVE(ws2, (size_t)tb * 8);
    rs.w = (double *)CARVE(ws2, (size_t)tb * 8);
    rs.n = (int64_t *)CARVE(ws2, (size_t)tb * 8);
    rs.pos = (int64_t *)CARVE(ws2, (size_t)tb * 8);
    rs.posid = (int64_t *)CARVE(ws2, (size_t)tb * 8);
    double *cmax = NULL, *csum = NULL;
    uint8_t *ispos = NULL;
    if (p->sym) {
        cmax = (double *)CARVE(ws2, (size_t)N * 8);
        csum = (double *)CARVE(ws2, (size_t)N * 8);
        ispos = (uint8_t *)CARVE(ws2, (size_t)N);
        memset(ispos, 0, (size_t)N);
        for (int64_t i = 0; i < B; i++) ispos[ns_loss_pos(p, i)] = 1;
        for (int64_t j = 0; j < N; j++) {
            cmax[j] = -INFINITY;
            csum[j] = 0.0;
        }
    }
#undef CARVE
    const int nt = p->nt;

    for (int64_t r0 = 0; r0 < B; r0 += tb) {
        const int64_t nb = B - r0 < tb ? B - r0 : tb;
        int64_t ldq;
        const float *q = ns_loss_view(in->query, r0, nb, qbuf, &ldq, nt);
        for (int64_t k = 0; k < nb; k++) {
            rs.m[k] = -INFINITY;
            rs.a[k] = rs.w[k] = 0.0;
            rs.n[k] = 0;
            rs.pos[k] = ns_loss_pos(p, r0 + k);
            rs.posid[k] = ns_loss_pid(p, rs.pos[k]);
        }
        for (int b = 0; b < p->nblocks; b++) {
            const ns_loss_block *blk = &p->blk[b];
            const int passage = blk->kind == NS_BLK_PASSAGE;
            for (int64_t j0 = 0; j0 < blk->m.rows; j0 += tn) {
                const int64_t nc = blk->m.rows - j0 < tn ? blk->m.rows - j0 : tn;
                int64_t ldc;
                const float *c = ns_loss_view(blk->m, j0, nc, cbuf, &ldc, nt);
                ns_sgemm_nt(nb, nc, d, p->inv_tau, q, ldq, c, ldc, 0.0f, xt, nc);
                ns_loss_columns(p, blk, j0, nc, cmask, cid, cidok);
                if (p->sym && passage) column_update(p, xt, nb, nc, j0, rs.posid, ispos, cmax, csum);
                /* Row-independent masks, and whether any id can match a row's positive id
                 * (passage rows without passage_id only match at the positive itself). */
                int anymask = 0, anyid = 0;
                for (int64_t cc = 0; cc < nc; cc++) {
                    anymask |= cmask[cc];
                    anyid |= cidok[cc];
                }
                if (passage && !in->passage_id) anyid = 0;
#pragma omp parallel for num_threads(ns_loss_elem_threads(nt, nb * nc)) schedule(static)
                for (int64_t k = 0; k < nb; k++) {
                    float *x = xt + k * nc;
                    const int64_t pos = rs.pos[k], posid = rs.posid[k];
                    const int has_pos = passage && pos >= j0 && pos < j0 + nc;
                    if (has_pos)
                        saved[(r0 + k) * NS_INFONCE_SAVED_PER_QUERY + NS_SAVED_LPOS] = x[pos - j0];
                    if (anymask)
                        for (int64_t cc = 0; cc < nc; cc++)
                            if (cmask[cc]) x[cc] = -INFINITY;
                    if (anyid)
                        for (int64_t cc = 0; cc < nc; cc++)
                            if (cidok[cc] && cid[cc] == posid) x[cc] = -INFINITY;
                    if (has_pos) x[pos - j0] = -INFINITY;
                    row_update(x, nc, p->beta, &rs.m[k], &rs.a[k], &rs.w[k], &rs.n[k]);
                }
            }
        }
        if (p->own_hard) {
            int64_t ldh;
            const float *hq = ns_loss_view(in->hard, r0 * h, nb * h, hbuf, &ldh, nt);
#pragma omp parallel for num_threads(nt) schedule(static)
            for (int64_t k = 0; k < nb; k++) {
                float x[64];
                const float *qk = q + k * ldq;
                for (int64_t r0h = 0; r0h < h; r0h += 64) {
                    int64_t nh = h - r0h < 64 ? h - r0h : 64;
                    for (int64_t r = 0; r < nh; r++) {
                        int64_t R = (r0 + k) * h + r0h + r;
                        if (ns_loss_hard_masked(p, R, rs.posid[k])) {
                            x[r] = -INFINITY;
                            continue;
                        }
                        const float *hr = hq + (k * h + r0h + r) * ldh;
                        float s = 0.0f;
                        for (int64_t e = 0; e < d; e++) s += qk[e] * hr[e];
                        x[r] = s * p->inv_tau;
                    }
                    row_update(x, nh, p->beta, &rs.m[k], &rs.a[k], &rs.w[k], &rs.n[k]);
                }
            }
        }
        for (int64_t k = 0; k < nb; k++)
            row_finish(p, rs.m[k], rs.a[k], rs.w[k], rs.n[k],
                       saved + (r0 + k) * NS_INFONCE_SAVED_PER_QUERY);
    }

    double total = 0.0;
    for (int64_t i = 0; i < B; i++) {
        float *sv = saved + i * NS_INFONCE_SAVED_PER_QUERY;
        double L = sv[NS_SAVED_LOSS];
        if (p->sym) {
            /* Column p = positive[i]: the unmasked queries' sum, plus query i itself when the
             * same-id rule kept it out of the column sum. */
            int64_t j = ns_loss_pos(p, i);
            double lp = sv[NS_SAVED_LPOS];
            double clse;
            if (csum[j] > 0.0) {
                clse = cmax[j] + log(csum[j]);
                if (p->same) {
                    double M = clse > lp ? clse : lp;
                    clse = M + log(exp(clse - M) + exp(lp - M));
                }
            } else {
                clse = lp;
            }
            sv[NS_SAVED_COLLSE] = (float)clse;
            L = 0.5 * (L + (clse - lp));
        }
        if (per_query) per_query[i] = (float)L;
        total += L;
    }
    *loss = (float)(total / (double)B);
    return NS_OK;
}
