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
// Carves S from the context's device scratch arena and resolves the GEMM views (f32 copies
// when the dtypes differ).
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

}  // namespace nsloss
