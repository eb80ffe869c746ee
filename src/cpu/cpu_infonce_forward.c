/* InfoNCE forward on the CPU: one pass over tiles of logits (rows of queries × columns of
 * candidates), an online softmax per query row, and, for the symmetric loss, online column
 * statistics of the positive passages. Memory beyond inputs and outputs: one logit tile, row
 * state for one row tile and, when symmetric, two doubles and a byte per passage.
 *
 * Per query i with n unmasked negatives x_j (logits), the row keeps the running maximum m of the
 * negatives and A' = Σ e^{(1+β)(x_j − m)}, W' = Σ e^{β(x_j − m)} (β = 0 when plain: A' is the
 * shifted sum of exponentials, W' = n). The positive logit l⁺ is taken from its passage column.
 * The saved layout and the row finish are in src/hostdevice/ns_loss_math.h.
 *
 * Debiasing (τ⁺) and reweighting (β) apply to the query→passage term only; the symmetric
 * passage→query term is always the plain log-softmax over the queries of the column.
 * Outputs are written only once every check has passed: nothing below can fail but the
 * workspace allocation, which happens before the first write. */
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

typedef ns_loss_row_state row_state;

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
                          int64_t r0, int64_t j0, const int64_t *rposid, const uint8_t *ispos,
                          double *cmax, double *csum) {
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
        /* ns_loss_col_logit: -inf = query k out of column j (same id, group mask) */
        for (int64_t k = 0; k < nb; k++) {
            const float *x = xt + k * nc;
            for (int64_t c = c0; c < c1; c++) {
                if (!ispos[j0 + c]) continue;
                const float v = ns_loss_col_logit(&p->ids, r0 + k, rposid[k], pid[c - c0], j0 + c, x[c]);
                if (v > tmax[c - c0]) tmax[c - c0] = v;
            }
        }
        for (int64_t c = c0; c < c1; c++)
            if (ispos[j0 + c]) ns_loss_lse_rescale(&cmax[j0 + c], &csum[j0 + c], tmax[c - c0]);
        for (int64_t k = 0; k < nb; k++) {
            const float *x = xt + k * nc;
            for (int64_t c = c0; c < c1; c++) {
                if (!ispos[j0 + c]) continue;
                const float v = ns_loss_col_logit(&p->ids, r0 + k, rposid[k], pid[c - c0], j0 + c, x[c]);
                if (v == -INFINITY) continue;
                tsum[c - c0] += (double)ns_loss_exp((float)((double)v - cmax[j0 + c]));
            }
        }
        for (int64_t c = c0; c < c1; c++) csum[j0 + c] += tsum[c - c0];
    }
}

/* One call's workspace (the context's scratch arena): the logit tile, f32 copies of f16/bf16
 * tiles, a tile's column facts, the row state of one row tile and, when symmetric, the column
 * statistics of the positive passages. */
typedef ns_loss_fwd fwd_work;

void ns_loss_fwd_carve(ns_loss_fwd *w, ns_arena *a) {
    const ns_loss_plan *p = w->p;
    const int64_t tb = w->t.tb;
    ns_loss_tiles_carve(p, &w->t, a);
    w->rs.m = (float *)ns_arena_carve(a, (size_t)tb * 4);
    w->rs.a = (double *)ns_arena_carve(a, (size_t)tb * 8);
    w->rs.w = (double *)ns_arena_carve(a, (size_t)tb * 8);
    w->rs.n = (int64_t *)ns_arena_carve(a, (size_t)tb * 8);
    w->rs.pos = (int64_t *)ns_arena_carve(a, (size_t)tb * 8);
    w->rs.posid = (int64_t *)ns_arena_carve(a, (size_t)tb * 8);
    w->cmax = p->sym ? (double *)ns_arena_carve(a, (size_t)p->N * 8) : NULL;
    w->csum = p->sym ? (double *)ns_arena_carve(a, (size_t)p->N * 8) : NULL;
    w->ispos = p->sym ? (uint8_t *)ns_arena_carve(a, (size_t)p->N) : NULL;
    w->adjbuf = (float *)ns_arena_carve(a, p->grouped ? (size_t)(p->nt * w->t.tn) * 4 : 0);
}

static void fwd_layout(void *plan, ns_arena *a) { ns_loss_fwd_carve((ns_loss_fwd *)plan, a); }

void ns_loss_fwd_init(ns_loss_fwd *w) {
    const ns_loss_plan *p = w->p;
    if (p->sym) {
        memset(w->ispos, 0, (size_t)p->N);
        for (int64_t i = 0; i < p->B; i++) w->ispos[ns_loss_pos(p, i)] = 1;
        for (int64_t j = 0; j < p->N; j++) {
            w->cmax[j] = -INFINITY;
            w->csum[j] = 0.0;
        }
    }
}

static ns_status fwd_setup(ns_context *ctx, const ns_loss_plan *p, fwd_work *w) {
    memset(w, 0, sizeof *w);
    w->p = p;
    ns_loss_tiles_shape(p, &w->t);
    ns_status st = ns_arena_lay_out(ctx, &ctx->scratch, fwd_layout, w, "ns_infonce_forward");
    if (st) return st;
    ns_loss_fwd_init(w);
    return NS_OK;
}

/* Folds one logit tile (rows [r0, r0+nb) × columns [j0, j0+nc) of a shared block) into the
 * rows' statistics: the positive logit saved, masked columns set to -inf. */
static void fwd_block_tile(const fwd_work *w, const ns_loss_block *blk, int64_t r0, int64_t nb,
                           int64_t j0, int64_t nc, float *xt, float *saved) {
    const ns_loss_plan *p = w->p;
    const int passage = blk->kind == NS_BLK_PASSAGE;
    const uint8_t *cmask = w->t.cmask, *cidok = w->t.cidok;
    const int64_t *cid = w->t.cid;
    const int grouped = ns_loss_block_grouped(p, blk);
    /* Row-independent masks, and whether any id can match a row's positive id (passage rows
     * without passage_id only match at the positive itself). */
    int anymask = 0, anyid = 0;
    for (int64_t cc = 0; cc < nc; cc++) {
        anymask |= cmask[cc];
        anyid |= cidok[cc];
    }
    if (passage && !p->in->passage_id) anyid = 0;
#pragma omp parallel for num_threads(ns_loss_elem_threads(p->nt, nb * nc)) schedule(static)
    for (int64_t k = 0; k < nb; k++) {
        float *x = xt + k * nc;
        int tid = 0;
#ifdef _OPENMP
        tid = omp_get_thread_num();
#endif
        if (w->rowbuf) { /* fused: mask a copy, the strip keeps the raw logits */
            float *copy = w->rowbuf + (int64_t)tid * w->t.tn;
            memcpy(copy, x, (size_t)nc * sizeof(float));
            x = copy;
        }
        const int64_t pos = w->rs.pos[k], posid = w->rs.posid[k];
        const int has_pos = passage && pos >= j0 && pos < j0 + nc;
        if (has_pos) saved[(r0 + k) * NS_INFONCE_SAVED_PER_QUERY + NS_SAVED_LPOS] = x[pos - j0];
        if (anymask)
            for (int64_t cc = 0; cc < nc; cc++)
                if (cmask[cc]) x[cc] = -INFINITY;
        if (anyid)
            for (int64_t cc = 0; cc < nc; cc++)
                if (cidok[cc] && cid[cc] == posid) x[cc] = -INFINITY;
        if (grouped && p->ids.qgroup[r0 + k] >= 0) { /* the same-group rule: + -inf or log w */
            float *adj = w->adjbuf + (int64_t)tid * w->t.tn;
            ns_loss_row_adj(p, w->t.cgrp, nc, p->ids.qgroup[r0 + k], -1, adj);
            for (int64_t cc = 0; cc < nc; cc++) x[cc] += adj[cc];
        }
        if (has_pos) x[pos - j0] = -INFINITY;
        row_update(x, nc, p->beta, &w->rs.m[k], &w->rs.a[k], &w->rs.w[k], &w->rs.n[k]);
    }
}

/* Each query's own hard negatives (share_hard = 0): h dot products per row. */
static void fwd_own_hard(const fwd_work *w, const float *q, int64_t ldq, int64_t r0, int64_t nb) {
    const ns_loss_plan *p = w->p;
    const int64_t h = p->h, d = p->d;
    int64_t ldh;
    const float *hq = ns_loss_view(p->in->hard, r0 * h, nb * h, w->t.hbuf, &ldh, p->nt);
#pragma omp parallel for num_threads(p->nt) schedule(static)
    for (int64_t k = 0; k < nb; k++) {
        float x[64];
        const float *qk = q + k * ldq;
        for (int64_t r0h = 0; r0h < h; r0h += 64) {
            int64_t nh = h - r0h < 64 ? h - r0h : 64;
            for (int64_t r = 0; r < nh; r++) {
                if (ns_loss_hard_masked(p, r0 + k, r0h + r, w->rs.posid[k])) {
                    x[r] = -INFINITY;
                    continue;
                }
                const float *hr = hq + (k * h + r0h + r) * ldh;
                float s = 0.0f;
                for (int64_t e = 0; e < d; e++) s += qk[e] * hr[e];
                x[r] = s * p->inv_tau + ns_loss_group_adj(&p->ids, NS_BLK_OWN, r0 + k, -1, r0h + r);
            }
            row_update(x, nh, p->beta, &w->rs.m[k], &w->rs.a[k], &w->rs.w[k], &w->rs.n[k]);
        }
    }
}

/* One row tile: every tile of every shared block, then the own hard negatives, then each
 * row's finish (ns_loss_row_finish). */
void ns_loss_fwd_row_tile(const ns_loss_fwd *w, int64_t r0, int64_t nb, float *saved) {
    const ns_loss_plan *p = w->p;
    const int nt = p->nt;
    int64_t ldq;
    const float *q = ns_loss_view(p->in->query, r0, nb, w->t.qbuf, &ldq, nt);
    for (int64_t k = 0; k < nb; k++) {
        w->rs.m[k] = -INFINITY;
        w->rs.a[k] = w->rs.w[k] = 0.0;
        w->rs.n[k] = 0;
        w->rs.pos[k] = ns_loss_pos(p, r0 + k);
        w->rs.posid[k] = ns_loss_pid(p, w->rs.pos[k]);
    }
    for (int b = 0; b < p->nblocks; b++) {
        const ns_loss_block *blk = &p->blk[b];
        for (int64_t j0 = 0; j0 < blk->m.rows; j0 += w->t.tn) {
            const int64_t nc = blk->m.rows - j0 < w->t.tn ? blk->m.rows - j0 : w->t.tn;
            int64_t ldc;
            const float *c = ns_loss_view(blk->m, j0, nc, w->t.cbuf, &ldc, nt);
            float *xt = w->strip ? ns_loss_strip_tile(w->strip, p, b, nb, j0) : w->t.xt;
            /* the column pass kept this tile: the same sgemm's bits, not computed again */
            if (!(w->passage_kept && blk->kind == NS_BLK_PASSAGE))
                ns_sgemm_nt(nb, nc, p->d, p->inv_tau, q, ldq, c, ldc, 0.0f, xt, nc);
            ns_loss_columns(p, blk, j0, nc, w->t.cmask, w->t.cid, w->t.cidok, w->t.cgrp);
            if (p->sym && blk->kind == NS_BLK_PASSAGE && !w->columns_done)
                column_update(p, xt, nb, nc, r0, j0, w->rs.posid, w->ispos, w->cmax, w->csum);
            fwd_block_tile(w, blk, r0, nb, j0, nc, xt, saved);
        }
    }
    if (p->own_hard) fwd_own_hard(w, q, ldq, r0, nb);
    for (int64_t k = 0; k < nb; k++)
        ns_loss_row_finish(p->general, p->tau, p->tau_plus, p->beta, w->rs.m[k], w->rs.a[k],
                           w->rs.w[k], w->rs.n[k], saved + (r0 + k) * NS_INFONCE_SAVED_PER_QUERY);
}

void ns_loss_fwd_column_tile(const ns_loss_fwd *w, int64_t r0, int64_t nb, float *saved) {
    const ns_loss_plan *p = w->p;
    const ns_loss_block *blk = &p->blk[0]; /* the passages */
    int64_t ldq;
    const float *q = ns_loss_view(p->in->query, r0, nb, w->t.qbuf, &ldq, p->nt);
    for (int64_t k = 0; k < nb; k++) {
        w->rs.pos[k] = ns_loss_pos(p, r0 + k);
        w->rs.posid[k] = ns_loss_pid(p, w->rs.pos[k]);
    }
    for (int64_t j0 = 0; j0 < blk->m.rows; j0 += w->t.tn) {
        const int64_t nc = blk->m.rows - j0 < w->t.tn ? blk->m.rows - j0 : w->t.tn;
        int64_t ldc;
        const float *c = ns_loss_view(blk->m, j0, nc, w->t.cbuf, &ldc, p->nt);
        float *xt = w->kept ? ns_loss_strip_tile(w->kept + r0 * ns_loss_block_base(p, p->nblocks),
                                                 p, 0, nb, j0)
                            : w->t.xt;
        ns_sgemm_nt(nb, nc, p->d, p->inv_tau, q, ldq, c, ldc, 0.0f, xt, nc);
        column_update(p, xt, nb, nc, r0, j0, w->rs.posid, w->ispos, w->cmax, w->csum);
        for (int64_t k = 0; k < nb; k++) {
            const int64_t pc = w->rs.pos[k] - j0;
            if (pc >= 0 && pc < nc)
                saved[(r0 + k) * NS_INFONCE_SAVED_PER_QUERY + NS_SAVED_LPOS] = xt[k * nc + pc];
        }
    }
}

float ns_loss_fwd_finish(const ns_loss_fwd *w, float *saved, float *per_query) {
    const ns_loss_plan *p = w->p;
    /* The symmetric term of query i: column positive[i]'s log-sum-exp. */
    double total = 0.0;
    for (int64_t i = 0; i < p->B; i++) {
        float *sv = saved + i * NS_INFONCE_SAVED_PER_QUERY;
        double L = sv[NS_SAVED_LOSS];
        if (p->sym) {
            const int64_t j = ns_loss_pos(p, i);
            const double lp = sv[NS_SAVED_LPOS];
            const double clse = ns_loss_column_lse(w->cmax[j], w->csum[j], lp, p->same);
            sv[NS_SAVED_COLLSE] = (float)clse;
            L = 0.5 * (L + (clse - lp));
        }
        if (per_query) per_query[i] = (float)L;
        total += L;
    }
    return (float)(total / (double)p->B);
}

ns_status ns_cpu_infonce_forward(ns_context *ctx, const ns_infonce_inputs *in,
                                 const ns_loss_options *opt, float *loss, float *per_query,
                                 float *saved) {
    ns_status st = ns_cpu_infonce_check_data(ctx, "ns_infonce_forward", in);
    if (st) return st;
    ns_loss_plan plan;
    ns_loss_plan_init(&plan, ctx, in, opt);
    const ns_loss_plan *p = &plan;
    fwd_work w;
    if ((st = fwd_setup(ctx, p, &w))) return st;
    for (int64_t r0 = 0; r0 < p->B; r0 += w.t.tb)
        ns_loss_fwd_row_tile(&w, r0, p->B - r0 < w.t.tb ? p->B - r0 : w.t.tb, saved);
    *loss = ns_loss_fwd_finish(&w, saved, per_query);
    return NS_OK;
}
