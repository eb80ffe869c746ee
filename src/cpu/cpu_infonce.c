/* The CPU loss's plan, shared by its forward (cpu_infonce_forward.c) and backward
 * (cpu_infonce_backward.c): the checks of the host data, the blocks of candidates, the tile
 * sizes, the column facts of a tile and the f32 views of rows. */
#include "cpu_infonce.h"
#include "infonce_internal.h"

#include <math.h>
#include <string.h>

/* Tiles of the CPU loss. Few large tiles: every tile costs three or four sgemm calls, each with
 * its own packing and a switch between OpenBLAS's threads and the OpenMP team of the element
 * loops (both spin-wait for a while on the same cores). 256 × 512 tiles ran at a third of the
 * BLAS rate; tiles of a few MiB reach it. The logit tile is capped at NS_LOSS_TILE_BYTES and the
 * f32 copies of f16/bf16 rows at NS_LOSS_CONVERT_BYTES each, so the loss's memory stays bounded
 * whatever the sizes (tile + conversions + O(B + N) vectors). Sizes depend only on the shapes,
 * never on the thread count, so results stay bitwise reproducible for a given thread count. */
#define NS_LOSS_TILE_ROWS_MAX 2048
#define NS_LOSS_TILE_COLS_MAX 4096
#define NS_LOSS_TILE_BYTES ((int64_t)16 << 20)
#define NS_LOSS_CONVERT_BYTES ((int64_t)8 << 20)

/* n split into ceil(n / cap) nearly equal parts: no thin remainder tile. */
static int64_t even_split(int64_t n, int64_t cap) {
    if (cap < 1) cap = 1;
    if (n <= cap) return n < 1 ? 1 : n;
    int64_t parts = (n + cap - 1) / cap;
    return (n + parts - 1) / parts;
}

static void choose_tiles(ns_loss_plan *p, int64_t tile_rows, int64_t tile_cols) {
    const ns_infonce_inputs *in = p->in;
    int64_t maxc = 1;
    int half_cols = 0;
    for (int b = 0; b < p->nblocks; b++) {
        if (p->blk[b].m.rows > maxc) maxc = p->blk[b].m.rows;
        if (p->blk[b].m.dtype != NS_F32) half_cols = 1;
    }
    const int64_t row_bytes = p->d * (int64_t)sizeof(float);
    int64_t rcap = NS_LOSS_TILE_ROWS_MAX, ccap = NS_LOSS_TILE_COLS_MAX;
    if (in->query.dtype != NS_F32 && rcap > NS_LOSS_CONVERT_BYTES / row_bytes)
        rcap = NS_LOSS_CONVERT_BYTES / row_bytes;
    if (p->own_hard && in->hard.dtype != NS_F32 &&
        rcap > NS_LOSS_CONVERT_BYTES / (row_bytes * p->h))
        rcap = NS_LOSS_CONVERT_BYTES / (row_bytes * p->h);
    if (half_cols && ccap > NS_LOSS_CONVERT_BYTES / row_bytes)
        ccap = NS_LOSS_CONVERT_BYTES / row_bytes;
    if (rcap < 16) rcap = 16;
    if (ccap < 16) ccap = 16;
    p->tb = tile_rows ? tile_rows : even_split(p->B, rcap);
    if (tile_cols) {
        p->tn = tile_cols;
    } else {
        /* Columns fill the tile budget left by the rows (few queries: long rows). */
        int64_t fit = NS_LOSS_TILE_BYTES / ((int64_t)sizeof(float) * p->tb);
        p->tn = even_split(maxc, fit < ccap ? fit : ccap);
    }
}

/* Below 2^21 logits (an 8 MiB tile) one thread ran the whole loss faster on 2 cores: 512 × 512
 * took 17 ms with the team woken per tile and 11 ms without. */
#define NS_LOSS_PARALLEL_MIN ((int64_t)1 << 21)

int ns_loss_elem_threads(int nt, int64_t n) { return n < NS_LOSS_PARALLEL_MIN ? 1 : nt; }

static ns_status check_finite(ns_context *ctx, const char *fn, const char *name, ns_matrix m) {
    if (m.rows == 0) return NS_OK;
    int64_t bad = ns_matrix_find_nonfinite(m);
    if (!bad) return NS_OK;
    bad--;
    return ns_fail(ctx, NS_ERR_NONFINITE, "%s: %s[%lld][%lld] is not finite", fn, name,
                   (long long)(bad / m.cols), (long long)(bad % m.cols));
}

ns_status ns_cpu_infonce_check_data(ns_context *ctx, const char *fn,
                                     const ns_infonce_inputs *in) {
    ns_status st;
    int64_t B = in->query.rows, N = in->passage.rows;
    if (in->positive)
        for (int64_t i = 0; i < B; i++)
            if (in->positive[i] < 0 || in->positive[i] >= N)
                return ns_fail(ctx, NS_ERR_INVALID_ARGUMENT,
                               "%s: positive[%lld] (%lld) is not a passage row in [0, %lld)", fn,
                               (long long)i, (long long)in->positive[i], (long long)N);
    if ((st = check_finite(ctx, fn, "query", in->query))) return st;
    if ((st = check_finite(ctx, fn, "passage", in->passage))) return st;
    if (in->hard_per_query > 0 && (st = check_finite(ctx, fn, "hard", in->hard))) return st;
    if ((st = check_finite(ctx, fn, "extra", in->extra))) return st;
    return NS_OK;
}

void ns_loss_plan_init(ns_loss_plan *p, ns_context *ctx, const ns_infonce_inputs *in,
                       const ns_loss_options *opt) {
    memset(p, 0, sizeof(*p));
    p->in = in;
    p->B = in->query.rows;
    p->N = in->passage.rows;
    p->d = in->query.cols;
    p->h = in->hard_per_query;
    p->E = in->extra.rows;
    p->tau = opt->temperature;
    p->inv_tau = 1.0f / opt->temperature;
    p->beta = opt->beta;
    p->tau_plus = opt->tau_plus;
    p->general = opt->tau_plus > 0.0f || opt->beta > 0.0f;
    p->sym = opt->symmetric;
    p->same = opt->mask_same_id;
    p->own_hard = p->h > 0 && !opt->share_hard;
    p->ids.positive = in->positive;
    p->ids.passage_id = in->passage_id;
    p->ids.hard_id = in->hard_id;
    p->ids.extra_id = in->extra_id;
    p->ids.hard_keep = in->hard_keep;
    p->ids.posid = NULL;
    p->ids.same = opt->mask_same_id;
    p->ids.h = p->h;
    ns_loss_groups g;
    ns_loss_groups_resolve(opt, &g);
    p->grouped = g.query != NULL;
    p->ids.qgroup = g.query;
    p->ids.pgroup = g.passage;
    p->ids.hgroup = p->h > 0 ? g.hard : NULL;
    p->ids.egroup = p->E > 0 ? g.extra : NULL;
    p->ids.group_adj = g.weight > 0.0f ? logf(g.weight) : -INFINITY;
    p->blk[p->nblocks++] = (ns_loss_block){in->passage, NS_BLK_PASSAGE, NULL};
    if (p->h > 0 && opt->share_hard) p->blk[p->nblocks++] = (ns_loss_block){in->hard, NS_BLK_HARD, NULL};
    if (p->E > 0) p->blk[p->nblocks++] = (ns_loss_block){in->extra, NS_BLK_EXTRA, NULL};
    p->nt = ns_threads(ctx);
    choose_tiles(p, ctx->loss_tile_rows, ctx->loss_tile_cols);
}

void ns_loss_columns(const ns_loss_plan *p, const ns_loss_block *b, int64_t j0, int64_t n,
                     uint8_t *mask, int64_t *id, uint8_t *idok, int64_t *grp) {
    for (int64_t c = 0; c < n; c++) {
        int ok;
        mask[c] = (uint8_t)ns_loss_column(&p->ids, b->kind, j0 + c, &id[c], &ok);
        idok[c] = (uint8_t)ok;
    }
    if (ns_loss_block_grouped(p, b))
        for (int64_t c = 0; c < n; c++) grp[c] = ns_loss_col_group(&p->ids, b->kind, j0 + c);
}

void ns_loss_tiles_shape(const ns_loss_plan *p, ns_loss_tiles *t) {
    int64_t maxc = 1;
    t->half_cols = 0;
    for (int b = 0; b < p->nblocks; b++) {
        if (p->blk[b].m.rows > maxc) maxc = p->blk[b].m.rows;
        if (p->blk[b].m.dtype != NS_F32) t->half_cols = 1;
    }
    t->tb = p->tb < p->B ? p->tb : p->B;
    t->tn = p->tn < maxc ? p->tn : maxc;
}

void ns_loss_tiles_carve(const ns_loss_plan *p, ns_loss_tiles *t, ns_arena *a) {
    const ns_infonce_inputs *in = p->in;
    const int64_t tb = t->tb, tn = t->tn, d = p->d, h = p->h;
    t->xt = (float *)ns_arena_carve(a, (size_t)(tb * tn) * 4);
    t->qbuf = (float *)ns_arena_carve(a, in->query.dtype != NS_F32 ? (size_t)(tb * d) * 4 : 0);
    t->cbuf = (float *)ns_arena_carve(a, t->half_cols ? (size_t)(tn * d) * 4 : 0);
    t->hbuf = (float *)ns_arena_carve(
        a, p->own_hard && in->hard.dtype != NS_F32 ? (size_t)(tb * h * d) * 4 : 0);
    t->cid = (int64_t *)ns_arena_carve(a, (size_t)tn * 8);
    t->cgrp = (int64_t *)ns_arena_carve(a, p->grouped ? (size_t)tn * 8 : 0);
    t->cmask = (uint8_t *)ns_arena_carve(a, (size_t)tn);
    t->cidok = (uint8_t *)ns_arena_carve(a, (size_t)tn);
}

const float *ns_loss_view(ns_matrix m, int64_t r0, int64_t n, float *buf, int64_t *ld, int nt) {
    if (m.dtype == NS_F32) return ns_rows_f32_view(m, r0, n, buf, ld, NULL);
    /* Half-precision tiles are converted by every thread: a serial conversion would cost as
     * much as the GEMM it feeds once the BLAS is threaded. */
    int64_t chunk = (n + nt - 1) / nt;
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int t = 0; t < nt; t++) {
        int64_t a = t * chunk, e = a + chunk < n ? a + chunk : n;
        if (a < e) ns_rows_to_f32(m, r0 + a, e - a, buf + a * m.cols);
    }
    *ld = m.cols;
    return buf;
}

int64_t ns_loss_block_base(const ns_loss_plan *p, int b) {
    int64_t base = 0;
    for (int k = 0; k < b; k++) base += p->blk[k].m.rows;
    return base;
}
