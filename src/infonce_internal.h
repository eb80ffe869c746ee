/* Internal to the InfoNCE loss: the argument checks the public entry points (src/infonce.c) and
 * the multi-rank loss (src/comm_loss.c) share, and the per-context tile setting of the CPU loss
 * that the tests use. */
#ifndef NS_INFONCE_INTERNAL_H
#define NS_INFONCE_INTERNAL_H

#include "ns_internal.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Checks of the options and shapes (no data is read); fn names the public function. *opt NULL
 * is replaced by defaults. */
ns_status ns_infonce_check(ns_context *ctx, const char *fn, const ns_infonce_inputs *in,
                           const ns_loss_options **opt, ns_loss_options *defaults);

/* options->groups (checked by ns_infonce_check) as this build's struct: the fields past the
 * caller's struct_size take their defaults; all NULL when options->groups is NULL. */
void ns_loss_groups_resolve(const ns_loss_options *opt, ns_loss_groups *groups);

/* Tile sizes of ctx's CPU loss (rows of queries × columns of candidates); 0 restores the
 * defaults. For tests, which use tiny tiles to cross many tile boundaries at small sizes. */
void ns_infonce_set_tiles(ns_context *ctx, int64_t rows, int64_t cols);
/* keep = 0: the CPU fused symmetric loss never keeps the column pass's logit tiles (four GEMMs
 * per passage tile, as beyond its memory cap); 1 (default): it keeps them when they fit. For
 * tests, which run both paths at small sizes. */
void ns_infonce_set_keep(ns_context *ctx, int keep);

/* The fused CUDA loss's strip (kernels/cuda_infonce_fused.cu): at most bytes of kept logit
 * tiles, and no fewer than min_rows rows per GEMM row tile before it falls back to the forward
 * then the backward; 0 restores the defaults. For tests (several strips, thin strips and the
 * fallback at small sizes). */
void ns_infonce_set_strip(ns_context *ctx, int64_t bytes, int64_t min_rows);

#ifdef __cplusplus
}
#endif
#endif
