/* Internal to the InfoNCE loss (src/infonce*.c): the argument checks and the per-call setup the
 * forward and the backward share, and the tile-size hook the tests use. */
#ifndef NS_INFONCE_INTERNAL_H
#define NS_INFONCE_INTERNAL_H

#include "ns_internal.h"

#include <string.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Layout of the NS_INFONCE_SAVED_PER_QUERY floats the forward saves for query i. */
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

/* One dense block of candidates shared by every query: the in-batch passages, the shared hard
 * negatives (share_hard = 1) or the extra rows. */
enum { NS_BLK_PASSAGE = 0, NS_BLK_HARD = 1, NS_BLK_EXTRA = 2 };
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
    float tau, inv_tau, beta, tau_plus;
    int nblocks;
    ns_loss_block blk[3];
    int nt;
    int64_t tb, tn;
} ns_loss_plan;

void ns_loss_plan_init(ns_loss_plan *p, ns_context *ctx, const ns_infonce_inputs *in,
                       const ns_loss_options *opt);

static inline int64_t ns_loss_pos(const ns_loss_plan *p, int64_t i) {
    return p->in->positive ? p->in->positive[i] : i;
}
static inline int64_t ns_loss_pid(const ns_loss_plan *p, int64_t j) {
    return p->in->passage_id ? p->in->passage_id[j] : j;
}
/* The id of query i's positive. */
static inline int64_t ns_loss_posid(const ns_loss_plan *p, int64_t i) {
    return ns_loss_pid(p, ns_loss_pos(p, i));
}
/* Hard row r masked for a query whose positive id is posid. */
static inline int ns_loss_hard_masked(const ns_loss_plan *p, int64_t r, int64_t posid) {
    const ns_infonce_inputs *in = p->in;
    if (in->hard_keep && !in->hard_keep[r]) return 1;
    if (in->hard_id && (in->hard_id[r] == -1 || (p->same && in->hard_id[r] == posid))) return 1;
    return 0;
}

/* Per-column facts of a tile of block b, columns [j0, j0+n): mask[c] = 1 when masked for every
 * query; idok[c] = 1 when id[c] takes part in same-id masking. */
void ns_loss_columns(const ns_loss_plan *p, const ns_loss_block *b, int64_t j0, int64_t n,
                     uint8_t *mask, int64_t *id, uint8_t *idok);

/* A f32 view of rows [r0, r0+n) of m (f16/bf16 converted into buf by nt threads). */
const float *ns_loss_view(ns_matrix m, int64_t r0, int64_t n, float *buf, int64_t *ld, int nt);

/* Tile sizes of the CPU loss (rows of queries × columns of candidates). 0 restores the
 * defaults. Only for tests, which use tiny tiles to cross many tile boundaries at small sizes. */
void ns_infonce_set_tiles(int64_t rows, int64_t cols);
void ns_infonce_get_tiles(int64_t *rows, int64_t *cols);

/* Threads for the element loops of a tile of n logits: one when the tile is small, where
 * waking the OpenMP team (and its spin-waiting against OpenBLAS's threads, which have just run
 * the tile's sgemm on the same cores) costs more than the loop. The loops give the same bits on
 * any number of threads. */
int ns_loss_elem_threads(int nt, int64_t n);

/* Checks shared by forward and backward; fn names the public function. Checks that read data
 * (positive range, non-finite values) are done only for host (CPU) contexts. */
ns_status ns_infonce_check(ns_context *ctx, const char *fn, const ns_infonce_inputs *in,
                           const ns_loss_options **opt, ns_loss_options *defaults);
ns_status ns_infonce_check_data(ns_context *ctx, const char *fn, const ns_infonce_inputs *in);

/* The element loops are compiled for AVX2 and AVX-512 too, picked at load time (GCC ifunc);
 * no FMA contraction is allowed (-ffp-contract=off), so every version computes the same bits. */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define NS_LOSS_CLONES __attribute__((target_clones("default", "avx2", "avx512f")))
#else
#define NS_LOSS_CLONES
#endif

/* e^x for the loss's tiles: range reduction to r = x − n·ln2 and Cephes' degree-6 polynomial,
 * written so the compiler vectorises it (libm's expf is one call per element and took a third of
 * the loss's time). Relative error ~2 ulp on [-87, 88]; x is clamped into that range, so masked
 * elements (x = -inf) give ~1e-38 and callers select them to 0. */
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

/* The CPU backend, after every check (src/infonce_forward.c, src/infonce_backward.c). */
ns_status ns_infonce_forward_cpu(ns_context *ctx, const ns_loss_plan *p, float *loss,
                                 float *per_query, float *saved);
ns_status ns_infonce_backward_cpu(ns_context *ctx, const ns_loss_plan *p, const float *saved,
                                  float grad_loss, const ns_infonce_grads *grads);

#ifdef __cplusplus
}
#endif
#endif
