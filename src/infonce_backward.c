/* InfoNCE backward on the CPU: recomputes each logit tile, turns it in place into the tile of
 * dL/ds from the row statistics the forward saved (and, when symmetric, the column statistics
 * rebuilt from them), and accumulates dQ += G·C and dC += Gᵀ·Q with GEMMs. Memory beyond inputs
 * and gradients: one tile, O(B) row factors for a row tile, and O(N) column factors. */
#if defined(__GNUC__) && !defined(__clang__)
/* Lets GCC if-convert and vectorise the clamps and selects of the element loops. */
#pragma GCC optimize("no-trapping-math")
#endif
#include "infonce_internal.h"

#include <math.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#define NS_LANES 16

/* What one row of a tile needs besides its logits. */
typedef struct {
    const ns_loss_plan *p;
    int64_t j0, nc;
    int passage, symcol, anyid;
    const float *keepf;  /* 1 where the column is not masked for every query */
    const float *colc;   /* symmetric: column factors of this tile (+inf: not a positive) */
    const int64_t *cid;
    const uint8_t *cidok, *cmask;
    float wt;            /* grad_loss · weight / τ: turns dL/dl into dL/ds */
} tile_info;

/* dL/dl of element cc of row k, every case written out; used where the vector form below does
 * not hold (the positive column, same-id masked columns). */
static float element_grad(const tile_info *t, int64_t cc, float xv, const float *sv, int64_t pos,
                          int64_t posid) {
    const ns_loss_plan *p = t->p;
    const int64_t j = t->j0 + cc;
    const float shift = sv[NS_SAVED_SHIFT], cu = sv[NS_SAVED_CU], cv = sv[NS_SAVED_CV];
    float g = 0.0f;
    if (t->passage && j == pos) {
        g = sv[NS_SAVED_GPOS];
    } else if (t->cmask[cc] || (t->cidok[cc] && t->cid[cc] == posid)) {
        g = 0.0f;
    } else if (cu != 0.0f) {
        float e = xv - shift;
        if (cv != 0.0f) {
            float vb = ns_loss_exp(p->beta * e);
            g = cu * (vb * ns_loss_exp(e)) - cv * vb;
        } else {
            g = cu * ns_loss_exp((1.0f + p->beta) * e);
        }
    }
    if (t->symcol && t->colc[cc] != INFINITY) {
        if (p->same && t->cid[cc] == posid) {
            if (j == pos) g += ns_loss_exp(xv - sv[NS_SAVED_COLLSE]) - 1.0f;
        } else {
            g += ns_loss_exp(xv - t->colc[cc]) - (j == pos ? 1.0f : 0.0f);
        }
    }
    return g;
}

/* Turns row x[0..nc) of logits into w·dL/ds in place, g being scratch; returns Σ dL/dl · l. */
NS_LOSS_CLONES
static float row_grad(const tile_info *t, float *x, float *g, const float *sv, int64_t pos,
                      int64_t posid) {
    const ns_loss_plan *p = t->p;
    const int64_t nc = t->nc;
    const float shift = sv[NS_SAVED_SHIFT], cu = sv[NS_SAVED_CU], cv = sv[NS_SAVED_CV];
    const float beta = p->beta, beta1 = 1.0f + p->beta;
    const float *keepf = t->keepf;
    if (cu == 0.0f) {
        for (int64_t cc = 0; cc < nc; cc++) g[cc] = 0.0f;
    } else if (cv != 0.0f) {
        for (int64_t cc = 0; cc < nc; cc++) {
            float e = x[cc] - shift;
            float vb = ns_loss_exp(beta * e);
            float gr = cu * (vb * ns_loss_exp(e)) - cv * vb;
            g[cc] = keepf[cc] != 0.0f ? gr : 0.0f;
        }
    } else {
        for (int64_t cc = 0; cc < nc; cc++) {
            float gr = cu * ns_loss_exp(beta1 * (x[cc] - shift));
            g[cc] = keepf[cc] != 0.0f ? gr : 0.0f;
        }
    }
    if (t->symcol) {
        const float *colc = t->colc;
        for (int64_t cc = 0; cc < nc; cc++) {
            float es = ns_loss_exp(x[cc] - colc[cc]);
            g[cc] += colc[cc] != INFINITY ? es : 0.0f;
        }
    }
    if (t->anyid)
        for (int64_t cc = 0; cc < nc; cc++)
            if (t->cidok[cc] && t->cid[cc] == posid) g[cc] = element_grad(t, cc, x[cc], sv, pos, posid);
    if (t->passage && pos >= t->j0 && pos < t->j0 + nc)
        g[pos - t->j0] = element_grad(t, pos - t->j0, x[pos - t->j0], sv, pos, posid);
    float lt[NS_LANES];
    for (int l = 0; l < NS_LANES; l++) lt[l] = 0.0f;
    const float wt = t->wt;
    int64_t c0 = 0;
    for (; c0 + NS_LANES <= nc; c0 += NS_LANES)
        for (int l = 0; l < NS_LANES; l++) {
            lt[l] += g[c0 + l] * x[c0 + l];
            x[c0 + l] = g[c0 + l] * wt;
        }
    for (int64_t cc = c0; cc < nc; cc++) {
        lt[cc - c0] += g[cc] * x[cc];
        x[cc] = g[cc] * wt;
    }
    float sum = 0.0f;
    for (int l = 0; l < NS_LANES; l++) sum += lt[l];
    return sum;
}

ns_status ns_infonce_backward_cpu(ns_context *ctx, const ns_loss_plan *p, const float *saved,
                                  float grad_loss, const ns_infonce_grads *grads) {
    static const char *fn = "ns_infonce_backward";
    const ns_infonce_inputs *in = p->in;
    const int64_t B = p->B, N = p->N, d = p->d, h = p->h;
    float *gq = grads->query, *gp = grads->passage, *gh = h > 0 ? grads->hard : NULL;
    const int want_tau = grads->temperature != NULL;
    ns_loss_block blk[3];
    memcpy(blk, p->blk, sizeof(blk));
    int64_t maxc = 1;
    int half_cols = 0;
    for (int b = 0; b < p->nblocks; b++) {
        blk[b].grad = blk[b].kind == NS_BLK_PASSAGE ? gp : blk[b].kind == NS_BLK_HARD ? gh : NULL;
        if (blk[b].m.rows > maxc) maxc = blk[b].m.rows;
        if (blk[b].m.dtype != NS_F32) half_cols = 1;
    }
    const int64_t tb = p->tb < B ? p->tb : B, tn = p->tn < maxc ? p->tn : maxc;

    size_t sz[4], off = 0;
    sz[0] = (size_t)(tb * tn) * 4;
    sz[1] = in->query.dtype != NS_F32 ? (size_t)(tb * d) * 4 : 0;
    sz[2] = half_cols ? (size_t)(tn * d) * 4 : 0;
    sz[3] = p->own_hard && in->hard.dtype != NS_F32 ? (size_t)(tb * h * d) * 4 : 0;
    for (int i = 0; i < 4; i++) off += (sz[i] + 63) & ~(size_t)63;
    off += (size_t)tn * 14 + (size_t)p->nt * (size_t)tn * 4 + 512;
    size_t off2 = (size_t)tb * (8 + 8 + 8) + 256;
    if (p->sym) off2 += (size_t)N * 8 + 64;
    char *ws = (char *)ns_workspace(ctx, NS_WS_LOSS, off);
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
    int64_t *cid = (int64_t *)CARVE(ws, (size_t)tn * 8);
    uint8_t *cmask = (uint8_t *)CARVE(ws, (size_t)tn);
    uint8_t *cidok = (uint8_t *)CARVE(ws, (size_t)tn);
    float *keepf = (float *)CARVE(ws, (size_t)tn * 4);
    float *gscratch = (float *)CARVE(ws, (size_t)p->nt * (size_t)tn * 4);
    cur = ws2;
    int64_t *rpos = (int64_t *)CARVE(ws2, (size_t)tb * 8);
    int64_t *rposid = (int64_t *)CARVE(ws2, (size_t)tb * 8);
    double *rtau = (double *)CARVE(ws2, (size_t)tb * 8);
    float *colc = NULL;
    if (p->sym) {
        /* Column p gets Σ_{i: positive[i] = p} e^{l_kp − collse_i} = e^{l_kp − colc_p} from the
         * queries whose positive it is: colc_p = −log Σ_i e^{−collse_i}. */
        colc = (float *)CARVE(ws2, (size_t)N * 4);
        for (int64_t j = 0; j < N; j++) colc[j] = INFINITY;
        for (int64_t i = 0; i < B; i++) {
            int64_t j = ns_loss_pos(p, i);
            double v = -(double)saved[i * NS_INFONCE_SAVED_PER_QUERY + NS_SAVED_COLLSE];
            double c = colc[j] == INFINITY ? -INFINITY : -(double)colc[j];
            double M = c > v ? c : v;
            colc[j] = (float)-(M + log(exp(c - M) + exp(v - M)));
        }
    }
#undef CARVE

    if (gq) memset(gq, 0, (size_t)(B * d) * 4);
    if (gp) memset(gp, 0, (size_t)(N * d) * 4);
    if (gh) memset(gh, 0, (size_t)(B * h * d) * 4);
    if (!gq && !gp && !gh && !want_tau) return NS_OK;

    const int nt = p->nt;
    const double w = (double)grad_loss / (double)B * (p->sym ? 0.5 : 1.0);
    const float wt = (float)(w / p->tau);
    const float beta = p->beta, beta1 = 1.0f + p->beta;
    double tau_sum = 0.0, tau_explicit = 0.0;

    for (int64_t r0 = 0; r0 < B; r0 += tb) {
        const int64_t nb = B - r0 < tb ? B - r0 : tb;
        int64_t ldq;
        const float *q = ns_loss_view(in->query, r0, nb, qbuf, &ldq, nt);
        for (int64_t k = 0; k < nb; k++) {
            rpos[k] = ns_loss_pos(p, r0 + k);
            rposid[k] = ns_loss_pid(p, rpos[k]);
            rtau[k] = 0.0;
        }
        for (int b = 0; b < p->nblocks; b++) {
            const ns_loss_block *bk = &blk[b];
            if (!gq && !want_tau && !bk->grad) continue;
            const int passage = bk->kind == NS_BLK_PASSAGE;
            const int symcol = passage && p->sym;
            for (int64_t j0 = 0; j0 < bk->m.rows; j0 += tn) {
                const int64_t nc = bk->m.rows - j0 < tn ? bk->m.rows - j0 : tn;
                int64_t ldc;
                const float *c = ns_loss_view(bk->m, j0, nc, cbuf, &ldc, nt);
                ns_sgemm_nt(nb, nc, d, p->inv_tau, q, ldq, c, ldc, 0.0f, xt, nc);
                ns_loss_columns(p, bk, j0, nc, cmask, cid, cidok);
                tile_info ti = {p, j0, nc, passage, symcol, 0, keepf,
                                symcol ? colc + j0 : NULL, cid, cidok, cmask, wt};
                for (int64_t cc = 0; cc < nc; cc++) {
                    keepf[cc] = cmask[cc] ? 0.0f : 1.0f;
                    ti.anyid |= cidok[cc];
                }
                /* Passage rows without passage_id match a row's positive id only at the
                 * positive itself, which row_grad treats apart. */
                if (passage && !in->passage_id) ti.anyid = 0;
#pragma omp parallel for num_threads(ns_loss_elem_threads(nt, nb * nc)) schedule(static)
                for (int64_t k = 0; k < nb; k++) {
                    int tid = 0;
#ifdef _OPENMP
                    tid = omp_get_thread_num();
#endif
                    const float *sv = saved + (r0 + k) * NS_INFONCE_SAVED_PER_QUERY;
                    rtau[k] += (double)row_grad(&ti, xt + k * nc, gscratch + (int64_t)tid * tn,
                                                sv, rpos[k], rposid[k]);
                }
                if (gq) ns_sgemm_nn(nb, d, nc, 1.0f, xt, nc, c, ldc, 1.0f, gq + r0 * d, d);
                if (bk->grad)
                    ns_sgemm_tn(nc, d, nb, 1.0f, xt, nc, q, ldq, 1.0f, bk->grad + j0 * d, d);
            }
        }
        if (p->own_hard) {
            int64_t ldh;
            const float *hq = ns_loss_view(in->hard, r0 * h, nb * h, hbuf, &ldh, nt);
#pragma omp parallel for num_threads(nt) schedule(static)
            for (int64_t k = 0; k < nb; k++) {
                const float *sv = saved + (r0 + k) * NS_INFONCE_SAVED_PER_QUERY;
                const float shift = sv[NS_SAVED_SHIFT], cu = sv[NS_SAVED_CU], cv = sv[NS_SAVED_CV];
                const float *qk = q + k * ldq;
                float *gqk = gq ? gq + (r0 + k) * d : NULL;
                double tacc = 0.0;
                if (cu == 0.0f) continue; /* clamped or no negatives: no gradient here */
                for (int64_t r = 0; r < h; r++) {
                    const int64_t R = (r0 + k) * h + r;
                    if (ns_loss_hard_masked(p, R, rposid[k])) continue;
                    const float *hr = hq + (k * h + r) * ldh;
                    float s = 0.0f;
                    for (int64_t e = 0; e < d; e++) s += qk[e] * hr[e];
                    const float xv = s * p->inv_tau, e = xv - shift;
                    float g;
                    if (cv != 0.0f) {
                        float v = ns_loss_exp(beta * e);
                        g = cu * (v * ns_loss_exp(e)) - cv * v;
                    } else {
                        g = cu * ns_loss_exp(beta1 * e);
                    }
                    tacc += (double)g * (double)xv;
                    const float G = g * wt;
                    if (gqk)
                        for (int64_t e2 = 0; e2 < d; e2++) gqk[e2] += G * hr[e2];
                    if (gh) {
                        float *ghr = gh + R * d;
                        for (int64_t e2 = 0; e2 < d; e2++) ghr[e2] = G * qk[e2];
                    }
                }
                rtau[k] += tacc;
            }
        }
        for (int64_t k = 0; k < nb; k++) {
            tau_sum += rtau[k];
            tau_explicit += saved[(r0 + k) * NS_INFONCE_SAVED_PER_QUERY + NS_SAVED_DTAU];
        }
    }
    if (want_tau)
        *grads->temperature = (float)(w * (-tau_sum / (double)p->tau + tau_explicit));
    return NS_OK;
}
