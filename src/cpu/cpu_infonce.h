/* Internal to the CPU loss (src/cpu/cpu_infonce*.c): the plan a forward or backward call works
 * on, resolved once, and the helpers both use. The formulas themselves are in
 * src/hostdevice/ns_loss_math.h, shared with the CUDA kernels. */
#ifndef NS_CPU_INFONCE_H
#define NS_CPU_INFONCE_H

#include "ns_cpu.h"
#include "ns_loss_math.h"

#include <string.h>

#ifdef __cplusplus
extern "C" {
#endif

/* One dense block of candidates shared by every query: the in-batch passages, the shared hard
 * negatives (share_hard = 1) or the extra rows (kind NS_BLK_*, ns_loss_math.h). */
typedef struct {
    ns_matrix m;
    int kind;
    float *grad; /* gradient rows (backward); NULL = not wanted or none (extra) */
} ns_loss_block;

/* What one forward or backward call works on, resolved once. */
typedef struct {
    const ns_infonce_inputs *in;
    int64_t B, N, d, h, E;
    int general;  /* tau_plus > 0 or beta > 0 */
    int sym, same, own_hard;
    int grouped;  /* options->groups given: the same-group rule (ids.qgroup, ns_loss_math.h) */
    float tau, inv_tau, beta, tau_plus;
    int nblocks;
    ns_loss_block blk[3];
    int nt;
    int64_t tb, tn;
    ns_loss_ids ids;
} ns_loss_plan;

void ns_loss_plan_init(ns_loss_plan *p, ns_context *ctx, const ns_infonce_inputs *in,
                       const ns_loss_options *opt);

static inline int64_t ns_loss_pos(const ns_loss_plan *p, int64_t i) {
    return ns_loss_positive(&p->ids, i);
}
static inline int64_t ns_loss_pid(const ns_loss_plan *p, int64_t j) {
    return ns_loss_passage_id(&p->ids, j);
}
/* The id of query i's positive. */
static inline int64_t ns_loss_posid(const ns_loss_plan *p, int64_t i) {
    return ns_loss_pid(p, ns_loss_pos(p, i));
}
/* Own hard negative r of query i masked for it (positive id posid; the same-group rule too). */
static inline int ns_loss_hard_masked(const ns_loss_plan *p, int64_t i, int64_t r, int64_t posid) {
    return ns_loss_col_class(&p->ids, NS_BLK_OWN, i, -1, posid, r) != NS_COL_NEGATIVE;
}
/* Per-column facts of a tile of block b, columns [j0, j0+n): mask[c] = 1 when masked for every
 * query; idok[c] = 1 when id[c] takes part in same-id masking; grp[c] its group (grouped plans
 * only, else grp is not written). */
void ns_loss_columns(const ns_loss_plan *p, const ns_loss_block *b, int64_t j0, int64_t n,
                     uint8_t *mask, int64_t *id, uint8_t *idok, int64_t *grp);
/* Whether block b's candidates can be in the query's group (the plan is grouped and the block
 * has group ids). */
static inline int ns_loss_block_grouped(const ns_loss_plan *p, const ns_loss_block *b) {
    if (!p->grouped) return 0;
    return (b->kind == NS_BLK_PASSAGE ? p->ids.pgroup
            : b->kind == NS_BLK_HARD  ? p->ids.hgroup
                                      : p->ids.egroup) != NULL;
}
/* The group adjustment of row x[0..n) of a block's tile for a query of group qg (>= 0) whose
 * positive is column pc of the tile (-1: none): adj[c] = ids.group_adj where grp[c] == qg, else
 * 0 (and 0 at the positive). */
static inline void ns_loss_row_adj(const ns_loss_plan *p, const int64_t *grp, int64_t n,
                                   int64_t qg, int64_t pc, float *adj) {
    const float a = p->ids.group_adj;
    for (int64_t c = 0; c < n; c++) adj[c] = grp[c] == qg ? a : 0.0f;
    if (pc >= 0) adj[pc] = 0.0f;
}

/* The tile buffers forward and backward both carve from the scratch arena: the logit tile
 * (tb × tn), f32 copies of f16/bf16 query, candidate and own-hard tiles, and a tile's column
 * facts (ns_loss_columns). */
typedef struct {
    int64_t tb, tn;
    int half_cols;
    float *xt, *qbuf, *cbuf, *hbuf;
    int64_t *cid, *cgrp;
    uint8_t *cmask, *cidok;
} ns_loss_tiles;

/* The tile shape of p (its tb, tn clamped to the sizes at hand). */
void ns_loss_tiles_shape(const ns_loss_plan *p, ns_loss_tiles *t);
/* Carves t's buffers from a (sizing or real arena). */
void ns_loss_tiles_carve(const ns_loss_plan *p, ns_loss_tiles *t, ns_arena *a);

/* A f32 view of rows [r0, r0+n) of m (f16/bf16 converted into buf by nt threads). */
const float *ns_loss_view(ns_matrix m, int64_t r0, int64_t n, float *buf, int64_t *ld, int nt);

/* Threads for the element loops of a tile of n logits: one when the tile is small, where
 * waking the OpenMP team (and its spin-waiting against OpenBLAS's threads, which have just run
 * the tile's sgemm on the same cores) costs more than the loop. The loops give the same bits on
 * any number of threads. */
int ns_loss_elem_threads(int nt, int64_t n);

/* The element loops are compiled for AVX2 and AVX-512 too, picked at load time (GCC ifunc);
 * no FMA contraction is allowed (-ffp-contract=off), so every version computes the same bits. */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define NS_LOSS_CLONES __attribute__((target_clones("default", "avx2", "avx512f")))
#else
#define NS_LOSS_CLONES
#endif

/* ------------------------------------------------------------------ forward, backward, fused
 * The forward's and backward's per-row-tile steps, shared with the fused forward + backward
 * (ns_cpu_infonce_forward_backward, cpu_infonce_backward.c), which runs, per row tile, the
 * forward over every column tile with each logit tile kept in a strip (tb × all columns), then
 * the backward on the kept tiles: three GEMMs per tile instead of four. */

/* Row statistics of one row tile (forward). */
typedef struct {
    float *m;     /* running max of negative logits, -inf when none yet */
    double *a, *w;
    int64_t *n;
    int64_t *pos, *posid; /* the positive passage row and its id, per row of the tile */
} ns_loss_row_state;

typedef struct {
    const ns_loss_plan *p;
    ns_loss_tiles t;
    ns_loss_row_state rs;
    double *cmax, *csum;
    uint8_t *ispos;
    float *strip;  /* fused: the row tile's logit tiles, kept for the backward; else NULL */
    int columns_done; /* fused symmetric: the column statistics were gathered first (a pass of
                         their own), the row tiles leave them alone */
    float *rowbuf; /* fused: per thread, a row copy to mask (the strip keeps the raw logits) */
    float *kept;   /* fused symmetric, when every row tile's strip fits: B × all columns, the
                      column pass's passage tiles kept there for the row tiles (no recompute) */
    int passage_kept; /* the row tiles' passage tiles are already in their strip */
    float *adjbuf; /* grouped: per thread, a row's group adjustments */
} ns_loss_fwd;

/* Carves w's buffers (its tiles too; not the strip or rowbuf); init after the real carve. */
void ns_loss_fwd_carve(ns_loss_fwd *w, ns_arena *a);
void ns_loss_fwd_init(ns_loss_fwd *w);
/* Rows [r0, r0+nb): every tile of every block, own hard negatives, the rows' finish. */
void ns_loss_fwd_row_tile(const ns_loss_fwd *w, int64_t r0, int64_t nb, float *saved);
/* Symmetric: the column statistics of rows [r0, r0+nb) alone (the passage tiles' GEMMs and
 * column_update, as ns_loss_fwd_row_tile computes them) and their positive logits; with
 * w->kept, the passage tiles stay in the row tile's strip there (kept + r0 · columns). */
void ns_loss_fwd_column_tile(const ns_loss_fwd *w, int64_t r0, int64_t nb, float *saved);
/* The symmetric terms, per_query (optional) and the mean loss, once every row tile is done. */
float ns_loss_fwd_finish(const ns_loss_fwd *w, float *saved, float *per_query);

/* Columns of the blocks before block b (the strip's layout: block after block). */
int64_t ns_loss_block_base(const ns_loss_plan *p, int b);
/* The strip's tile of block b, columns [j0, …), for a row tile of nb rows (nb × nc, dense). */
static inline float *ns_loss_strip_tile(float *strip, const ns_loss_plan *p, int b, int64_t nb,
                                        int64_t j0) {
    return strip + nb * (ns_loss_block_base(p, b) + j0);
}

/* The checks of the host data: positives in range, finite inputs. */
ns_status ns_cpu_infonce_check_data(ns_context *ctx, const char *fn, const ns_infonce_inputs *in);

#ifdef __cplusplus
}
#endif
#endif
