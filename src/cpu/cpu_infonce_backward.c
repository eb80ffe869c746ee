/* InfoNCE backward on the CPU: recomputes each logit tile, turns it in place into the tile of
 * dL/ds from the row statistics the forward saved (and, when symmetric, the column statistics
 * rebuilt from them), and accumulates dQ += G·C and dC += Gᵀ·Q with GEMMs. Memory beyond inputs
 * and gradients: one tile, O(B) row factors for a row tile, and O(N) column factors. */
#if defined(__GNUC__) && !defined(__clang__)
/* Lets GCC if-convert and vectorise the clamps and selects of the element loops. */
#pragma GCC optimize("no-trapping-math")
#endif
#include "cpu_infonce.h"

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

/* dL/dl of element cc of a row (ns_loss_element_grad), where the vector form of row_grad does
 * not hold (the positive column, same-id masked columns). */
static float element_grad(const tile_info *t, int64_t cc, float xv, const float *sv, int64_t pos,
                          int64_t posid) {
    const ns_loss_plan *p = t->p;
    const int64_t j = t->j0 + cc;
    const ns_loss_factors f = ns_loss_row_factors(sv);
    const int is_pos = j == pos, id_match = t->cidok[cc] && t->cid[cc] == posid;
    const int cl = t->passage && is_pos ? NS_COL_POSITIVE
                   : t->cmask[cc] || id_match ? NS_COL_MASKED
                                             : NS_COL_NEGATIVE;
    return ns_loss_element_grad(&f, p->beta, cl, xv, t->symcol, t->symcol ? t->colc[cc] : 0.0f,
                                p->same && t->cid[cc] == posid, is_pos);
}

/* Turns row x[0..nc) of logits into w·dL/ds in place, g being scratch; returns Σ dL/dl · l.
 * xa: NULL, or the row's logits with the group adjustments added (-inf: masked by the group
 * rule), which the gradient is taken at (l + log w), while dl/dτ = -l/τ stays the raw logit's. */
NS_LOSS_CLONES
static float row_grad(const tile_info *t, float *x, const float *xa, float *g, const float *sv,
                      int64_t pos, int64_t posid) {
    const ns_loss_plan *p = t->p;
    const int64_t nc = t->nc;
    const float shift = sv[NS_SAVED_SHIFT], cu = sv[NS_SAVED_CU], cv = sv[NS_SAVED_CV];
    const float beta = p->beta, beta1 = 1.0f + p->beta;
    const float *keepf = t->keepf;
    const float *xe = xa ? xa : x;
    if (cu == 0.0f) {
        for (int64_t cc = 0; cc < nc; cc++) g[cc] = 0.0f;
    } else if (cv != 0.0f) {
        for (int64_t cc = 0; cc < nc; cc++) {
            float gr = ns_loss_grad_reweighted(xe[cc] - shift, cu, cv, beta);
            g[cc] = keepf[cc] != 0.0f && xe[cc] != -INFINITY ? gr : 0.0f;
        }
    } else {
        for (int64_t cc = 0; cc < nc; cc++) {
            float gr = ns_loss_grad_plain(xe[cc] - shift, cu, beta1);
            g[cc] = keepf[cc] != 0.0f && xe[cc] != -INFINITY ? gr : 0.0f;
        }
    }
    if (t->symcol) {
        const float *colc = t->colc;
        for (int64_t cc = 0; cc < nc; cc++) {
            float es = ns_loss_exp(xe[cc] - colc[cc]);
            g[cc] += colc[cc] != INFINITY && xe[cc] != -INFINITY ? es : 0.0f;
        }
    }
    if (t->anyid)
        for (int64_t cc = 0; cc < nc; cc++)
            if (t->cidok[cc] && t->cid[cc] == posid) g[cc] = element_grad(t, cc, xe[cc], sv, pos, posid);
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

/* One call's workspace (the context's scratch arena): the logit tile, f32 copies of f16/bf16
 * tiles, a tile's column facts, per-thread gradient rows, the row factors of one row tile and,
 * when symmetric, the column factors colc. */
typedef struct {
    const ns_loss_plan *p;
    ns_loss_block blk[3];
    ns_loss_tiles t;
    float *keepf, *gscratch, *colc;
    float *adjbuf, *xabuf; /* grouped: per thread, a row's group adjustments and adjusted logits */
    int64_t *rpos, *rposid;
    double *rtau;
    float *strip; /* fused: the forward's logit tiles of this row tile (no recompute) */
} bwd_work;

/* Carves the backward's buffers; its tiles too when carve_tiles (the fused call shares the
 * forward's). */
static void bwd_carve(bwd_work *w, ns_arena *a, int carve_tiles) {
    const ns_loss_plan *p = w->p;
    const int64_t tb = w->t.tb, tn = w->t.tn;
    if (carve_tiles) ns_loss_tiles_carve(p, &w->t, a);
    w->keepf = (float *)ns_arena_carve(a, (size_t)tn * 4);
    w->gscratch = (float *)ns_arena_carve(a, (size_t)p->nt * (size_t)tn * 4);
    w->adjbuf = (float *)ns_arena_carve(a, p->grouped ? (size_t)p->nt * (size_t)tn * 4 : 0);
    w->xabuf = (float *)ns_arena_carve(a, p->grouped ? (size_t)p->nt * (size_t)tn * 4 : 0);
    w->rpos = (int64_t *)ns_arena_carve(a, (size_t)tb * 8);
    w->rposid = (int64_t *)ns_arena_carve(a, (size_t)tb * 8);
    w->rtau = (double *)ns_arena_carve(a, (size_t)tb * 8);
    w->colc = p->sym ? (float *)ns_arena_carve(a, (size_t)p->N * 4) : NULL;
}

static void bwd_layout(void *plan, ns_arena *a) { bwd_carve((bwd_work *)plan, a, 1); }

/* Column p gets Σ_{i: positive[i] = p} e^{l_kp − collse_i} = e^{l_kp − colc_p} from the queries
 * whose positive it is: colc_p = −log Σ_i e^{−collse_i} (+inf: not a positive). */
static void bwd_column_factors(const ns_loss_plan *p, const float *saved, float *colc) {
    for (int64_t j = 0; j < p->N; j++) colc[j] = INFINITY;
    for (int64_t i = 0; i < p->B; i++) {
        int64_t j = ns_loss_pos(p, i);
        double v = -(double)saved[i * NS_INFONCE_SAVED_PER_QUERY + NS_SAVED_COLLSE];
        double c = colc[j] == INFINITY ? -INFINITY : -(double)colc[j];
        double M = c > v ? c : v;
        colc[j] = (float)-(M + log(exp(c - M) + exp(v - M)));
    }
}

static void bwd_blocks(const ns_loss_plan *p, const ns_infonce_grads *grads, bwd_work *w) {
    memcpy(w->blk, p->blk, sizeof(w->blk));
    float *gh = p->h > 0 ? grads->hard : NULL;
    for (int b = 0; b < p->nblocks; b++) {
        ns_loss_block *bk = &w->blk[b];
        bk->grad = bk->kind == NS_BLK_PASSAGE ? grads->passage : bk->kind == NS_BLK_HARD ? gh : NULL;
    }
}

static ns_status bwd_setup(ns_context *ctx, const ns_loss_plan *p, const ns_infonce_grads *grads,
                           const float *saved, bwd_work *w) {
    memset(w, 0, sizeof *w);
    w->p = p;
    bwd_blocks(p, grads, w);
    ns_loss_tiles_shape(p, &w->t);
    ns_status st = ns_arena_lay_out(ctx, &ctx->scratch, bwd_layout, w, "ns_infonce_backward");
    if (st) return st;
    if (p->sym) bwd_column_factors(p, saved, w->colc);
    return NS_OK;
}

/* One logit tile of a shared block: recomputed, turned into w·dL/ds in place (row_grad), then
 * dQ += G·C and dC += Gᵀ·Q. */
static void bwd_block_tile(bwd_work *w, int b, const float *q, int64_t ldq, int64_t r0,
                           int64_t nb, int64_t j0, int64_t nc, const float *saved, float *gq,
                           float wt) {
    const ns_loss_plan *p = w->p;
    const ns_loss_block *bk = &w->blk[b];
    const int passage = bk->kind == NS_BLK_PASSAGE, symcol = passage && p->sym;
    const int64_t d = p->d;
    int64_t ldc;
    const float *c = ns_loss_view(bk->m, j0, nc, w->t.cbuf, &ldc, p->nt);
    /* The logit tile: the fused call's forward kept it (the same sgemm's bits), else again. */
    float *xt = w->strip ? ns_loss_strip_tile(w->strip, p, b, nb, j0) : w->t.xt;
    if (!w->strip) ns_sgemm_nt(nb, nc, d, p->inv_tau, q, ldq, c, ldc, 0.0f, xt, nc);
    ns_loss_columns(p, bk, j0, nc, w->t.cmask, w->t.cid, w->t.cidok, w->t.cgrp);
    const int grouped = ns_loss_block_grouped(p, bk);
    tile_info ti = {p, j0, nc, passage, symcol, 0, w->keepf, symcol ? w->colc + j0 : NULL,
                    w->t.cid, w->t.cidok, w->t.cmask, wt};
    for (int64_t cc = 0; cc < nc; cc++) {
        w->keepf[cc] = w->t.cmask[cc] ? 0.0f : 1.0f;
        ti.anyid |= w->t.cidok[cc];
    }
    /* Passage rows without passage_id match a row's positive id only at the positive itself,
     * which row_grad treats apart. */
    if (passage && !p->in->passage_id) ti.anyid = 0;
#pragma omp parallel for num_threads(ns_loss_elem_threads(p->nt, nb * nc)) schedule(static)
    for (int64_t k = 0; k < nb; k++) {
        int tid = 0;
#ifdef _OPENMP
        tid = omp_get_thread_num();
#endif
        const float *sv = saved + (r0 + k) * NS_INFONCE_SAVED_PER_QUERY;
        float *x = xt + k * nc, *xa = NULL;
        if (grouped && p->ids.qgroup[r0 + k] >= 0) { /* the same-group rule: + -inf or log w */
            float *adj = w->adjbuf + (int64_t)tid * w->t.tn;
            const int64_t pos = w->rpos[k];
            ns_loss_row_adj(p, w->t.cgrp, nc, p->ids.qgroup[r0 + k],
                            passage && pos >= j0 && pos < j0 + nc ? pos - j0 : -1, adj);
            xa = w->xabuf + (int64_t)tid * w->t.tn;
            for (int64_t cc = 0; cc < nc; cc++) xa[cc] = x[cc] + adj[cc];
        }
        w->rtau[k] += (double)row_grad(&ti, x, xa, w->gscratch + (int64_t)tid * w->t.tn, sv,
                                       w->rpos[k], w->rposid[k]);
    }
    if (gq) ns_sgemm_nn(nb, d, nc, 1.0f, xt, nc, c, ldc, 1.0f, gq + r0 * d, d);
    if (bk->grad) ns_sgemm_tn(nc, d, nb, 1.0f, xt, nc, q, ldq, 1.0f, bk->grad + j0 * d, d);
}

/* Each query's own hard negatives (share_hard = 0): h dot products and rank-1 updates per row. */
static void bwd_own_hard(bwd_work *w, const float *q, int64_t ldq, int64_t r0, int64_t nb,
                         const float *saved, float *gq, float *gh, float wt) {
    const ns_loss_plan *p = w->p;
    const int64_t h = p->h, d = p->d;
    const float beta = p->beta, beta1 = 1.0f + p->beta;
    int64_t ldh;
    const float *hq = ns_loss_view(p->in->hard, r0 * h, nb * h, w->t.hbuf, &ldh, p->nt);
#pragma omp parallel for num_threads(p->nt) schedule(static)
    for (int64_t k = 0; k < nb; k++) {
        const float *sv = saved + (r0 + k) * NS_INFONCE_SAVED_PER_QUERY;
        const float shift = sv[NS_SAVED_SHIFT], cu = sv[NS_SAVED_CU], cv = sv[NS_SAVED_CV];
        const float *qk = q + k * ldq;
        float *gqk = gq ? gq + (r0 + k) * d : NULL;
        double tacc = 0.0;
        if (cu == 0.0f) continue; /* clamped or no negatives: no gradient here */
        for (int64_t r = 0; r < h; r++) {
            const int64_t R = (r0 + k) * h + r;
            if (ns_loss_hard_masked(p, r0 + k, r, w->rposid[k])) continue;
            const float *hr = hq + (k * h + r) * ldh;
            float s = 0.0f;
            for (int64_t e = 0; e < d; e++) s += qk[e] * hr[e];
            /* the gradient at l + log w (same-group rule), dl/dτ of the raw l */
            const float xv = s * p->inv_tau,
                        e = xv + ns_loss_group_adj(&p->ids, NS_BLK_OWN, r0 + k, -1, r) - shift;
            const float g = cv != 0.0f ? ns_loss_grad_reweighted(e, cu, cv, beta)
                                       : ns_loss_grad_plain(e, cu, beta1);
            tacc += (double)g * (double)xv;
            const float G = g * wt;
            if (gqk)
                for (int64_t e2 = 0; e2 < d; e2++) gqk[e2] += G * hr[e2];
            if (gh) {
                float *ghr = gh + R * d;
                for (int64_t e2 = 0; e2 < d; e2++) ghr[e2] = G * qk[e2];
            }
        }
        w->rtau[k] += tacc;
    }
}

/* Rows [r0, r0+nb): every tile of every block, then the own hard negatives; adds the rows'
 * dL/dτ parts to *tau_sum and *tau_explicit. */
static void bwd_row_tile(bwd_work *w, int64_t r0, int64_t nb, const float *saved,
                         const ns_infonce_grads *grads, float wt, double *tau_sum,
                         double *tau_explicit) {
    const ns_loss_plan *p = w->p;
    const ns_infonce_inputs *in = p->in;
    float *gq = grads->query, *gh = p->h > 0 ? grads->hard : NULL;
    const int want_tau = grads->temperature != NULL;
    int64_t ldq;
    const float *q = ns_loss_view(in->query, r0, nb, w->t.qbuf, &ldq, p->nt);
    for (int64_t k = 0; k < nb; k++) {
        w->rpos[k] = ns_loss_pos(p, r0 + k);
        w->rposid[k] = ns_loss_pid(p, w->rpos[k]);
        w->rtau[k] = 0.0;
    }
    for (int b = 0; b < p->nblocks; b++) {
        const ns_loss_block *bk = &w->blk[b];
        if (!gq && !want_tau && !bk->grad) continue;
        for (int64_t j0 = 0; j0 < bk->m.rows; j0 += w->t.tn)
            bwd_block_tile(w, b, q, ldq, r0, nb, j0,
                           bk->m.rows - j0 < w->t.tn ? bk->m.rows - j0 : w->t.tn, saved, gq, wt);
    }
    if (p->own_hard) bwd_own_hard(w, q, ldq, r0, nb, saved, gq, gh, wt);
    for (int64_t k = 0; k < nb; k++) {
        *tau_sum += w->rtau[k];
        *tau_explicit += saved[(r0 + k) * NS_INFONCE_SAVED_PER_QUERY + NS_SAVED_DTAU];
    }
}

ns_status ns_cpu_infonce_backward(ns_context *ctx, const ns_infonce_inputs *in,
                                  const ns_loss_options *opt, const float *saved,
                                  float grad_loss, const ns_infonce_grads *grads) {
    static const char *fn = "ns_infonce_backward";
    ns_status st = ns_cpu_infonce_check_data(ctx, fn, in);
    if (st) return st;
    int64_t bad = ns_find_nonfinite_f32(saved, in->query.rows * NS_INFONCE_SAVED_PER_QUERY);
    if (bad)
        return ns_fail(ctx, NS_ERR_NONFINITE,
                       "%s: saved[%lld] is not finite (pass the saved buffer of the forward with "
                       "the same inputs and options)",
                       fn, (long long)(bad - 1));
    ns_loss_plan plan;
    ns_loss_plan_init(&plan, ctx, in, opt);
    const ns_loss_plan *p = &plan;
    const int64_t B = p->B, N = p->N, d = p->d, h = p->h;
    float *gq = grads->query, *gp = grads->passage, *gh = h > 0 ? grads->hard : NULL;
    const int want_tau = grads->temperature != NULL;
    bwd_work w;
    if ((st = bwd_setup(ctx, p, grads, saved, &w))) return st;
    if (gq) memset(gq, 0, (size_t)(B * d) * 4);
    if (gp) memset(gp, 0, (size_t)(N * d) * 4);
    if (gh) memset(gh, 0, (size_t)(B * h * d) * 4);
    if (!gq && !gp && !gh && !want_tau) return NS_OK;

    const double wl = (double)grad_loss / (double)B * (p->sym ? 0.5 : 1.0);
    const float wt = (float)(wl / p->tau);
    double tau_sum = 0.0, tau_explicit = 0.0;
    for (int64_t r0 = 0; r0 < B; r0 += w.t.tb)
        bwd_row_tile(&w, r0, B - r0 < w.t.tb ? B - r0 : w.t.tb, saved, grads, wt, &tau_sum,
                     &tau_explicit);
    if (want_tau) *grads->temperature = (float)(wl * (-tau_sum / (double)p->tau + tau_explicit));
    return NS_OK;
}

/* ------------------------------------------------------------------ fused forward + backward */

/* The strip of one row tile (every block's columns) is capped: beyond it the fused call runs
 * the forward, then the backward. tb × columns: 2048 × 16384 logits are 128 MiB. The symmetric
 * loss's gradients need every row's column statistics: a first pass gathers them (the passage
 * tiles' GEMMs), then each row tile runs forward and backward on its strip. When every row
 * tile's strip fits the same cap (B × columns: B = N = 8192 is 256 MiB), the column pass keeps
 * its passage tiles in them and the row tiles do not compute them again: three GEMMs per tile,
 * as the plain loss. Beyond it the passage tiles take four (the column statistics of every row
 * come before any gradient, and a gradient of dQ sums over columns each normalised by its own
 * statistics, so no rescaling afterwards can stand in for the second product). Either way the
 * same bits as the two calls. */
#define NS_LOSS_STRIP_BYTES ((int64_t)256 << 20)

typedef struct {
    ns_loss_fwd f;
    bwd_work b;
    float *clse; /* symmetric: each query's column log-sum-exp, from the column pass */
    int keep;    /* symmetric: every row tile's strip at once (f.kept), see above */
} fused_work;

static void fused_layout(void *plan, ns_arena *a) {
    fused_work *w = (fused_work *)plan;
    const ns_loss_plan *p = w->f.p;
    ns_loss_fwd_carve(&w->f, a);
    w->f.strip = (float *)ns_arena_carve(
        a, (size_t)((w->keep ? p->B : w->f.t.tb) * ns_loss_block_base(p, p->nblocks)) *
               sizeof(float));
    w->f.rowbuf = (float *)ns_arena_carve(a, (size_t)(p->nt * w->f.t.tn) * sizeof(float));
    w->b.t = w->f.t; /* the forward's tiles */
    bwd_carve(&w->b, a, 0);
    w->b.strip = w->f.strip;
    w->clse = (float *)ns_arena_carve(a, p->sym ? (size_t)p->B * sizeof(float) : 0);
}

/* Symmetric: every row tile's column statistics and positive logits, then each query's column
 * log-sum-exp (the value the forward's finish saves) and the backward's column factors. */
static void fused_columns(fused_work *w, float *saved) {
    const ns_loss_plan *p = w->f.p;
    w->f.kept = w->keep ? w->f.strip : NULL;
    for (int64_t r0 = 0; r0 < p->B; r0 += w->f.t.tb)
        ns_loss_fwd_column_tile(&w->f, r0, p->B - r0 < w->f.t.tb ? p->B - r0 : w->f.t.tb, saved);
    for (int64_t i = 0; i < p->B; i++) {
        float *sv = saved + i * NS_INFONCE_SAVED_PER_QUERY;
        const int64_t j = ns_loss_pos(p, i);
        w->clse[i] = (float)ns_loss_column_lse(w->f.cmax[j], w->f.csum[j], sv[NS_SAVED_LPOS], p->same);
        sv[NS_SAVED_COLLSE] = w->clse[i];
    }
    bwd_column_factors(p, saved, w->b.colc);
    w->f.columns_done = 1;
}

ns_status ns_cpu_infonce_forward_backward(ns_context *ctx, const ns_infonce_inputs *in,
                                          const ns_loss_options *opt, float grad_loss,
                                          float *loss, float *per_query, float *saved,
                                          const ns_infonce_grads *grads) {
    static const char *fn = "ns_infonce_forward_backward";
    ns_status st = ns_cpu_infonce_check_data(ctx, fn, in);
    if (st) return st;
    ns_loss_plan plan;
    ns_loss_plan_init(&plan, ctx, in, opt);
    const ns_loss_plan *p = &plan;
    fused_work w;
    memset(&w, 0, sizeof w);
    w.f.p = w.b.p = p;
    ns_loss_tiles_shape(p, &w.f.t);
    const int64_t cols = ns_loss_block_base(p, p->nblocks);
    w.keep = p->sym && !ctx->loss_no_keep &&
             p->B * cols * (int64_t)sizeof(float) <= NS_LOSS_STRIP_BYTES;
    if (w.f.t.tb * cols * (int64_t)sizeof(float) > NS_LOSS_STRIP_BYTES) {
        if ((st = ns_cpu_infonce_forward(ctx, in, opt, loss, per_query, saved))) return st;
        return ns_cpu_infonce_backward(ctx, in, opt, saved, grad_loss, grads);
    }
    bwd_blocks(p, grads, &w.b);
    if ((st = ns_arena_lay_out(ctx, &ctx->scratch, fused_layout, &w, fn))) return st;
    ns_loss_fwd_init(&w.f);
    const int64_t B = p->B, N = p->N, d = p->d, h = p->h;
    float *gq = grads->query, *gp = grads->passage, *gh = h > 0 ? grads->hard : NULL;
    if (gq) memset(gq, 0, (size_t)(B * d) * 4);
    if (gp) memset(gp, 0, (size_t)(N * d) * 4);
    if (gh) memset(gh, 0, (size_t)(B * h * d) * 4);
    if (p->sym) fused_columns(&w, saved);
    const double wl = (double)grad_loss / (double)B * (p->sym ? 0.5 : 1.0);
    const float wt = (float)(wl / p->tau);
    double tau_sum = 0.0, tau_explicit = 0.0;
    float *strip = w.f.strip;
    w.f.passage_kept = w.keep;
    for (int64_t r0 = 0; r0 < B; r0 += w.f.t.tb) {
        const int64_t nb = B - r0 < w.f.t.tb ? B - r0 : w.f.t.tb;
        if (w.keep) w.f.strip = w.b.strip = strip + r0 * cols; /* this row tile's kept tiles */
        ns_loss_fwd_row_tile(&w.f, r0, nb, saved);
        if (p->sym) /* the row finish cleared it; the backward's same-id columns read it */
            for (int64_t k = 0; k < nb; k++)
                saved[(r0 + k) * NS_INFONCE_SAVED_PER_QUERY + NS_SAVED_COLLSE] = w.clse[r0 + k];
        bwd_row_tile(&w.b, r0, nb, saved, grads, wt, &tau_sum, &tau_explicit);
    }
    *loss = ns_loss_fwd_finish(&w.f, saved, per_query);
    if (grads->temperature)
        *grads->temperature = (float)(wl * (-tau_sum / (double)p->tau + tau_explicit));
    return NS_OK;
}
