// Internal to the CUDA InfoNCE loss (cuda_infonce.cu: plan, validation, workspace, shared
// kernels; cuda_infonce_forward.cu; cuda_infonce_backward.cu). The per-element formulas are in
// src/hostdevice/ns_loss_math.h, shared with the CPU backend.
#pragma once

#include <cfloat>
#include <cmath>

#include "cuda_util.cuh"
#include "cuda_primitives.cuh"
#include "infonce_internal.h"
#include "ns_cuda.h"
#include "ns_loss_math.h"

namespace nsloss {

constexpr int kT = 256;
constexpr int kSaved = NS_INFONCE_SAVED_PER_QUERY;
// Wide flag slots: first bad index; then the reduced doubles.
enum { W_POS = 0, W_Q = 1, W_P = 2, W_H = 3, W_E = 4, W_SAVED = 5, W_TOTAL = 8, W_TAU = 9, W_TAUX = 10 };

// The inputs as the GEMMs see them: one dtype for all (f32 copies when they differ).
struct View {
    const void *data;
    int64_t ld;
};
struct Plan {
    int64_t B, N, d, h, E;
    ns_dtype t;
    size_t es;
    View q, p, hd, ex;
    int general, sym, same, own_hard, share;
    float tau, inv_tau;
    ns_loss_ids ids;
};

inline const void *row_ptr(const View &v, int64_t r, size_t es) {
    return (const char *)v.data + (size_t)(r * v.ld) * es;
}

// The O(B + N) statistics, the f32 copies when dtypes differ, and the logit tiles (tb × tn, and
// tb × h for own hard negatives; f16/bf16 copies of G for the tensor-core gradient GEMMs).
struct State {
    float *m;
    double *a, *w, *rtau;
    int64_t *n, *posid;
    uint8_t *ispos;
    double *cmax, *csum;
    int *colmax;
    float *colc;
    unsigned long long *colfix; // N: the backward's column sums in fixed point (deterministic)
    double *part;               // per-block partial sums, reduced in a fixed order (ns_k_loss_reduce)
    float *qf, *pf, *hf, *ef;
    int64_t tb, tn;
    float *tile, *htile;
    void *half_tile, *half_htile;
    int64_t strip_floats;  // the fused call's strip (set before setup; 0 = none)
    float *strip;
};

struct InitArgs {
    int64_t B, N;
    ns_loss_ids ids;
    float *m;
    double *a, *w, *rtau;
    int64_t *n, *posid;
    uint8_t *ispos;      // N, or NULL (not symmetric)
    double *cmax, *csum; // N, or NULL
};

struct Block {
    int kind;
    View v;
    int64_t rows;
    float *grad;
};

// Validates (sync; skipped while capturing) the positives, the inputs and (backward) saved,
// then resolves the options into the plan.
ns_status plan_init(ns_context *ctx, const char *fn, const ns_infonce_inputs *in,
                    const ns_loss_options *o, Plan *P, const float *saved = nullptr);
// The GEMM dtype (P.t, P.es) and the tile shape (S.tb × S.tn); no memory yet.
void shape(ns_context *ctx, const ns_infonce_inputs *in, Plan &P, State &S);
// shape, then carves S (with S.strip_floats floats for S.strip: the fused call's strip; 0 =
// none) from the context's device scratch arena and resolves the GEMM views (f32 copies when
// the dtypes differ).
ns_status setup(ns_context *ctx, const char *fn, const ns_infonce_inputs *in, Plan &P, State &S);
// The shared blocks of candidates, with their gradient rows.
int blocks_of(const Plan &P, Block *b, float *gp, float *gh);
// Per-row (and, when symmetric, per-column) state initialised on the stream.
ns_status init_state(ns_context *ctx, const char *fn, const InitArgs &a, bool columns);

// Deterministic sums, no float atomics: blocks write partials (series s of n partials at
// part + s·n), one block adds each series in a fixed order into out[s] (m series).
constexpr int kMaxPartials = 65536;  // blocks of the reducing kernels (grid-stride beyond)
ns_status reduce_partials(ns_context *ctx, const char *fn, const double *part, int64_t n, int m,
                          double *out);

// ------------------------------------------------------------------ the pieces of a call
// The forward's (cuda_infonce_forward.cu) and the backward's (cuda_infonce_backward.cu) steps,
// shared with the fused forward + backward (cuda_infonce_fused.cu). x is a dense logit tile
// (ld = its column count).

// One logit tile of block bk, rows [r0, r0+nb) × columns [j0, j0+nc): the GEMM into x, then
// what it feeds (kTile*): the symmetric column statistics (passage blocks), the row statistics
// (without them, only the positive logits are saved).
enum { kTileColumns = 1, kTileRows = 2 };
ns_status forward_tile(ns_context *ctx, const char *fn, const Plan &P, const State &S, const Block &bk,
                       float beta, int64_t r0, int64_t nb, int64_t j0, int64_t nc, float *x, int what,
                       float *saved);
// Symmetric, the column statistics complete: every query's saved COLLSE (as the finish sets it).
ns_status column_lse(ns_context *ctx, const char *fn, const Plan &P, const State &S, float *saved);
// The own hard negatives of rows [r0, r0+nb): one batched GEMM into x (nb × h), the row statistics.
ns_status forward_own_hard(ns_context *ctx, const char *fn, const Plan &P, const State &S, float beta,
                           int64_t r0, int64_t nb, float *x, float *saved);
// The row finish of rows [i0, i0+n) into saved and per_query (optional); with total, the sum of
// their losses reduced in a fixed order into *total (device). Idempotent.
ns_status finish_rows(ns_context *ctx, const char *fn, const Plan &P, const State &S,
                      const ns_loss_options *o, int64_t i0, int64_t n, float *saved, float *per_query,
                      double *total);
// *out = *total / B on the device.
ns_status loss_mean(ns_context *ctx, const char *fn, const double *total, int64_t B, float *out);

// The symmetric backward's column factors S.colc from every query's saved COLLSE.
ns_status column_factors(ns_context *ctx, const char *fn, const Plan &P, const State &S, const float *saved);
// Logit tile x of block bk turned into G = dL/dlogit · wt (in place, or into S.half_tile for
// f16/bf16), then dQ[r0 : r0+nb] += G · C and bk.grad[j0 : j0+nc] += Gᵀ · Q; S.rtau gets dl/dτ.
ns_status grad_tile(ns_context *ctx, const char *fn, const Plan &P, const State &S, const Block &bk,
                    float beta, float wt, int64_t r0, int64_t nb, int64_t j0, int64_t nc, float *x,
                    const float *saved, float *gq);
// The same for the own hard negatives' logits x (nb × h): dq_k += G_k·H_k, dH_k = G_kᵀ·q_k.
ns_status grad_own_hard(ns_context *ctx, const char *fn, const Plan &P, const State &S, float beta,
                        float wt, int64_t r0, int64_t nb, float *x, const float *saved, float *gq,
                        float *gh);
// out[0] = Σ S.rtau, out[1] = Σ the saved explicit ∂L/∂τ (device doubles, fixed order).
ns_status tau_total(ns_context *ctx, const char *fn, const Plan &P, const State &S, const float *saved,
                    double *out);
// *out = w · (−sums[0]/τ + sums[1]) on the device.
ns_status dtau_device(ns_context *ctx, const char *fn, const double *sums, double w, double tau, float *out);

// The whole forward / backward, fn naming the public function. The forward writes the mean
// loss to the host (loss, one synchronisation) or the device (loss_dev); the backward dτ to the
// host (grads->temperature, one synchronisation) or the device (dtau_dev, when not NULL).
ns_status forward_call(ns_context *ctx, const char *fn, const ns_infonce_inputs *in,
                       const ns_loss_options *opt, float *loss, float *loss_dev, float *per_query,
                       float *saved);
ns_status backward_call(ns_context *ctx, const char *fn, const ns_infonce_inputs *in,
                        const ns_loss_options *opt, const float *saved, float grad_loss,
                        const ns_infonce_grads *grads, float *dtau_dev);

}  // namespace nsloss
