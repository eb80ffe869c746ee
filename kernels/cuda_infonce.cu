// ns_infonce_forward / ns_infonce_backward on CUDA: the CPU algorithm (src/infonce_forward.c,
// src/infonce_backward.c) with the tiles on the GPU. Forward: a logit tile from one cuBLAS GEMM
// (tensor cores for f16/bf16, FP32 for f32) into a fixed-size workspace tile, then one block
// per query row folds the tile into the row's online statistics (running max m of the
// negatives, A = Σ e^{(1+β)(x−m)}, W = Σ e^{β(x−m)}, in double) and, when symmetric, one thread
// per positive-passage column folds it into the column statistics; the row factors are saved in
// the CPU's layout (NS_SAVED_* in src/infonce_internal.h), so either backend's backward can use
// either backend's forward. Backward: recomputes each tile, turns it in place into dL/dlogit
// (scaled), and accumulates dQ += G·C and dC += Gᵀ·Q with GEMMs (for f16/bf16 inputs G is
// rounded to the input dtype so the GEMMs run on tensor cores, like autocast; f32 stays f32).
// Own hard negatives (share_hard = 0) use strided batched GEMMs per query. Extra memory: two
// tiles plus O(B + N) statistics (and f32 copies of the inputs only when their dtypes differ).
//
// Synchronisation: once at the start to validate positives and scan for NaN/Inf (skipped while
// captured), once at the end of the forward for the host loss, and once at the end of the
// backward only when dL/dτ (a host float) is asked for. The forward, and a backward asking for
// dL/dτ, cannot be captured into a CUDA graph (their host outputs need the sync).
#include <cfloat>
#include <cmath>

#include "cuda_util.cuh"
#include "infonce_internal.h"
#include "ns_cuda.h"

namespace {

constexpr int kT = 256;
constexpr int kSaved = NS_INFONCE_SAVED_PER_QUERY;
enum Kind { K_PASSAGE = 0, K_HARD = 1, K_EXTRA = 2, K_OWN = 3 };
// Wide flag slots: first bad index; then the reduced doubles.
enum { W_POS = 0, W_Q = 1, W_P = 2, W_H = 3, W_E = 4, W_SAVED = 5, W_TOTAL = 8, W_TAU = 9, W_TAUX = 10 };

struct Ids {
    const int64_t *positive, *passage_id, *hard_id, *extra_id;
    const uint8_t *hard_keep;
    const int64_t *posid;  // B: id of each query's positive (filled by ns_k_loss_init)
    int same;
    int64_t h;
};

__device__ __forceinline__ int64_t pos_of(const Ids &d, int64_t i) { return d.positive ? d.positive[i] : i; }
__device__ __forceinline__ int64_t pid_of(const Ids &d, int64_t j) { return d.passage_id ? d.passage_id[j] : j; }
__device__ __forceinline__ bool hard_masked(const Ids &d, int64_t r, int64_t posid) {
    if (d.hard_keep && !d.hard_keep[r]) return true;
    if (d.hard_id && (d.hard_id[r] == -1 || (d.same && d.hard_id[r] == posid))) return true;
    return false;
}
// Column j of a block for query i: 0 a negative, 1 masked, 2 the positive.
__device__ __forceinline__ int col_class(const Ids &d, int kind, int64_t i, int64_t pos,
                                         int64_t posid, int64_t j) {
    switch (kind) {
    case K_PASSAGE:
        if (j == pos) return 2;
        return d.same && pid_of(d, j) == posid ? 1 : 0;
    case K_HARD: return hard_masked(d, j, posid) ? 1 : 0;
    case K_EXTRA: return d.extra_id && d.same && d.extra_id[j] == posid ? 1 : 0;
    default: return hard_masked(d, i * d.h + j, posid) ? 1 : 0;
    }
}

// Block-wide reductions (kT threads); every thread gets the result.
template <class T, class Op> __device__ T block_reduce(T v, Op op, T *sh) {
    for (int o = 16; o; o >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, o));
    __syncthreads();  // sh may still be read from a previous call
    if ((threadIdx.x & 31) == 0) sh[threadIdx.x >> 5] = v;
    __syncthreads();
    T r = sh[0];
    for (int w = 1; w < kT / 32; w++) r = op(r, sh[w]);
    return r;
}
struct MaxF { __device__ float operator()(float a, float b) const { return a > b ? a : b; } };
struct SumI { __device__ int operator()(int a, int b) const { return a + b; } };
struct SumD { __device__ double operator()(double a, double b) const { return a + b; } };

struct InitArgs {
    int64_t B, N;
    Ids ids;
    float *m;
    double *a, *w, *rtau;
    int64_t *n, *posid;
    uint8_t *ispos;      // N, or NULL (not symmetric)
    double *cmax, *csum; // N, or NULL
};

__global__ void ns_k_loss_init_cols(InitArgs a) {
    for (int64_t j = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; j < a.N; j += (int64_t)gridDim.x * blockDim.x) {
        a.ispos[j] = 0;
        a.cmax[j] = -INFINITY;
        a.csum[j] = 0.0;
    }
}

__global__ void ns_k_loss_init_rows(InitArgs a) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < a.B; i += (int64_t)gridDim.x * blockDim.x) {
        if (a.m) {
            a.m[i] = -INFINITY;
            a.a[i] = a.w[i] = 0.0;
            a.n[i] = 0;
        }
        if (a.rtau) a.rtau[i] = 0.0;
        int64_t p = pos_of(a.ids, i);
        a.posid[i] = pid_of(a.ids, p);
        if (a.ispos) a.ispos[p] = 1;  // every writer stores 1: benign
    }
}

// Validation: positives in range, inputs finite (first offender recorded).
__global__ void ns_k_loss_check_pos(const int64_t *positive, int64_t B, int64_t N, unsigned long long *w) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < B; i += (int64_t)gridDim.x * blockDim.x)
        if (positive[i] < 0 || positive[i] >= N) atomicMax(w + W_POS, ULLONG_MAX - (unsigned long long)i);
}

__global__ void ns_k_loss_check_saved(const float *saved, int64_t n, unsigned long long *w) {
    for (int64_t e = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; e < n; e += (int64_t)gridDim.x * blockDim.x)
        if (!isfinite(saved[e])) atomicMax(w + W_SAVED, ULLONG_MAX - (unsigned long long)e);
}

struct RowArgs {
    const float *x;
    int64_t ldx, nc, j0, r0;
    int kind;
    Ids ids;
    float beta;
    float *m;
    double *a, *w;
    int64_t *n;
    float *saved;
};

// One block per query row of the tile: row_update of the CPU forward.
__global__ void __launch_bounds__(kT) ns_k_loss_rows(RowArgs a) {
    __shared__ float shf[kT / 32];
    __shared__ int shi[kT / 32];
    __shared__ double shd[kT / 32];
    __shared__ float mn_s;
    const int64_t k = blockIdx.x, i = a.r0 + k;
    const int64_t pos = pos_of(a.ids, i), posid = a.ids.posid[i];
    const float *x = a.x + k * a.ldx;
    float tmax = -INFINITY;
    int cnt = 0;
    for (int64_t c = threadIdx.x; c < a.nc; c += kT) {
        int cl = col_class(a.ids, a.kind, i, pos, posid, a.j0 + c);
        if (cl == 2) {
            a.saved[i * kSaved + NS_SAVED_LPOS] = x[c];
            continue;
        }
        if (cl) continue;
        cnt++;
        if (x[c] > tmax) tmax = x[c];
    }
    tmax = block_reduce(tmax, MaxF(), shf);
    cnt = block_reduce(cnt, SumI(), shi);
    if (cnt == 0) return;
    const float beta = a.beta;
    if (threadIdx.x == 0) {
        float m0 = a.m[i];
        float mn = tmax > m0 ? tmax : m0;
        if (a.n[i]) {
            a.a[i] *= exp((double)(1.0f + beta) * ((double)m0 - mn));
            if (beta > 0.0f) a.w[i] *= exp((double)beta * ((double)m0 - mn));
        }
        mn_s = mn;
    }
    __syncthreads();
    const float mn = mn_s;
    double sa = 0.0, sw = 0.0;
    for (int64_t c = threadIdx.x; c < a.nc; c += kT) {
        if (col_class(a.ids, a.kind, i, pos, posid, a.j0 + c)) continue;
        float e = x[c] - mn;
        if (beta > 0.0f) {
            float v = expf(beta * e);
            sa += (double)(v * expf(e));
            sw += (double)v;
        } else {
            sa += (double)expf(e);
        }
    }
    sa = block_reduce(sa, SumD(), shd);
    if (beta > 0.0f) sw = block_reduce(sw, SumD(), shd);
    if (threadIdx.x == 0) {
        a.a[i] += sa;
        a.w[i] += beta > 0.0f ? sw : (double)cnt;
        a.m[i] = mn;
        a.n[i] += cnt;
    }
}

struct ColArgs {
    const float *x;
    int64_t ldx, nb, nc, j0, r0;
    Ids ids;
    const uint8_t *ispos;
    double *cmax, *csum;
};

// One thread per passage column (symmetric): column_update of the CPU forward.
__global__ void ns_k_loss_cols(ColArgs a) {
    const int64_t c = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
    if (c >= a.nc) return;
    const int64_t j = a.j0 + c;
    if (!a.ispos[j]) return;
    const int64_t pj = pid_of(a.ids, j);
    double tmax = -INFINITY;
    for (int64_t k = 0; k < a.nb; k++) {
        if (a.ids.same && a.ids.posid[a.r0 + k] == pj) continue;
        double v = a.x[k * a.ldx + c];
        if (v > tmax) tmax = v;
    }
    if (tmax == -INFINITY) return;
    double mn = tmax > a.cmax[j] ? tmax : a.cmax[j];
    double cs = a.csum[j] * exp(a.cmax[j] - mn);
    double t = 0.0;
    for (int64_t k = 0; k < a.nb; k++) {
        if (a.ids.same && a.ids.posid[a.r0 + k] == pj) continue;
        t += (double)expf((float)((double)a.x[k * a.ldx + c] - mn));
    }
    a.cmax[j] = mn;
    a.csum[j] = cs + t;
}

struct FinishArgs {
    int64_t B;
    Ids ids;
    int general, sym;
    double tau, tau_plus, beta;
    const float *m;
    const double *a, *w;
    const int64_t *n;
    const double *cmax, *csum;
    float *saved, *per_query;
    double *total;
};

// One thread per query: row_finish and the symmetric term of the CPU forward.
__global__ void __launch_bounds__(kT) ns_k_loss_finish(FinishArgs f) {
    __shared__ double shd[kT / 32];
    const int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
    double L = 0.0;
    if (i < f.B) {
        float *sv = f.saved + i * kSaved;
        const double lp = sv[NS_SAVED_LPOS];
        const float m = f.m[i];
        const double a = f.a[i], w = f.w[i];
        const int64_t n = f.n[i];
        if (!f.general) {
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
            L = 0.0;
            sv[NS_SAVED_SHIFT] = 0.0f;
            sv[NS_SAVED_CU] = sv[NS_SAVED_CV] = sv[NS_SAVED_GPOS] = sv[NS_SAVED_DTAU] = 0.0f;
        } else {
            const double tp = f.tau_plus, beta = f.beta, tau = f.tau, nn = (double)n;
            const double floor_l = -1.0 / tau;
            double M = lp;
            if (m > M) M = m;
            if (floor_l > M) M = floor_l;
            const double ratio = a / w;
            const double ep = exp(lp - M);
            const double g1 = (nn * exp((double)m - M) * ratio - tp * nn * ep) / (1.0 - tp);
            const double g2 = nn * exp(floor_l - M);
            const int clamped = !(g1 >= g2);
            const double z = ep + (clamped ? g2 : g1);
            L = -lp + M + log(z);
            sv[NS_SAVED_SHIFT] = m;
            if (!clamped) {
                const double K = nn * exp((double)m - M) / ((1.0 - tp) * w * z);
                sv[NS_SAVED_CU] = (float)(K * (1.0 + beta));
                sv[NS_SAVED_CV] = (float)(K * beta * ratio);
                sv[NS_SAVED_GPOS] = (float)(-1.0 + (ep - tp * nn * ep / (1.0 - tp)) / z);
                sv[NS_SAVED_DTAU] = 0.0f;
            } else {
                sv[NS_SAVED_CU] = sv[NS_SAVED_CV] = 0.0f;
                sv[NS_SAVED_GPOS] = (float)(-1.0 + ep / z);
                sv[NS_SAVED_DTAU] = (float)(g2 / (z * tau * tau));
            }
        }
        sv[NS_SAVED_LOSS] = (float)L;
        sv[NS_SAVED_COLLSE] = 0.0f;
        if (f.sym) {
            const int64_t j = pos_of(f.ids, i);
            const double lpf = sv[NS_SAVED_LPOS];
            double clse;
            if (f.csum[j] > 0.0) {
                clse = f.cmax[j] + log(f.csum[j]);
                if (f.ids.same) {
                    double M = clse > lpf ? clse : lpf;
                    clse = M + log(exp(clse - M) + exp(lpf - M));
                }
            } else {
                clse = lpf;
            }
            sv[NS_SAVED_COLLSE] = (float)clse;
            L = 0.5 * (L + (clse - lpf));
        }
        if (f.per_query) f.per_query[i] = (float)L;
    }
    double s = block_reduce(L, SumD(), shd);
    if (threadIdx.x == 0) atomicAdd(f.total, s);
}

// ------------------------------------------------------------------ backward kernels

// Orders floats as ints for atomicMax (finite and ±Inf values).
__device__ __forceinline__ int float_order(float f) {
    int i = __float_as_int(f);
    return i >= 0 ? i : i ^ 0x7fffffff;
}
__device__ __forceinline__ float order_float(int i) { return __int_as_float(i >= 0 ? i : i ^ 0x7fffffff); }

// colc_p = −log Σ_{i: positive[i] = p} e^{−collse_i} (symmetric): max pass, sum pass, finish.
__global__ void ns_k_colc_max(int64_t B, Ids ids, const float *saved, int *cmaxo) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < B; i += (int64_t)gridDim.x * blockDim.x)
        atomicMax(cmaxo + pos_of(ids, i), float_order(-saved[i * kSaved + NS_SAVED_COLLSE]));
}
__global__ void ns_k_colc_sum(int64_t B, Ids ids, const float *saved, const int *cmaxo, double *csum) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < B; i += (int64_t)gridDim.x * blockDim.x) {
        int64_t j = pos_of(ids, i);
        double v = -(double)saved[i * kSaved + NS_SAVED_COLLSE];
        atomicAdd(csum + j, exp(v - (double)order_float(cmaxo[j])));
    }
}
__global__ void ns_k_colc_init(int64_t N, int *cmaxo, double *csum) {
    for (int64_t j = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; j < N; j += (int64_t)gridDim.x * blockDim.x) {
        cmaxo[j] = float_order(-INFINITY);
        csum[j] = 0.0;
    }
}
__global__ void ns_k_colc_finish(int64_t N, const int *cmaxo, const double *csum, float *colc) {
    for (int64_t j = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; j < N; j += (int64_t)gridDim.x * blockDim.x)
        colc[j] = csum[j] > 0.0 ? (float)-((double)order_float(cmaxo[j]) + log(csum[j])) : INFINITY;
}

struct GradArgs {
    float *x;  // in: logits; out: dL/dlogit · wt
    int64_t ldx, nc, j0, r0;
    int kind, sym, same;
    Ids ids;
    float beta, wt;
    const float *saved;
    const float *colc;  // N (symmetric passage blocks), else NULL
    double *rtau;
    void *half;         // when set: G goes here in dtype ht (dense, ld nc) instead of into x
    ns_dtype ht;
};

// One block per query row: the per-element gradient of the CPU backward, in place.
__global__ void __launch_bounds__(kT) ns_k_loss_grad(GradArgs a) {
    __shared__ double shd[kT / 32];
    const int64_t k = blockIdx.x, i = a.r0 + k;
    const float *sv = a.saved + i * kSaved;
    const float shift = sv[NS_SAVED_SHIFT], cu = sv[NS_SAVED_CU], cv = sv[NS_SAVED_CV],
                gpos = sv[NS_SAVED_GPOS], clse = sv[NS_SAVED_COLLSE];
    const float beta = a.beta, beta1 = 1.0f + a.beta;
    const int64_t pos = pos_of(a.ids, i), posid = a.ids.posid[i];
    const bool symcol = a.kind == K_PASSAGE && a.sym;
    float *x = a.x + k * a.ldx;
    double tacc = 0.0;
    for (int64_t c = threadIdx.x; c < a.nc; c += kT) {
        const int64_t j = a.j0 + c;
        const float xv = x[c];
        const int cl = col_class(a.ids, a.kind, i, pos, posid, j);
        float g = 0.0f;
        if (cl == 2) {
            g = gpos;
        } else if (cl == 1) {
            g = 0.0f;
        } else if (cu != 0.0f) {
            float e = xv - shift;
            if (cv != 0.0f) {
                float v = expf(beta * e);
                g = cu * (v * expf(e)) - cv * v;
            } else {
                g = cu * expf(beta1 * e);
            }
        }
        if (symcol && a.colc[j] != INFINITY) {
            if (a.same && pid_of(a.ids, j) == posid) {
                if (j == pos) g += expf(xv - clse) - 1.0f;
            } else {
                g += expf(xv - a.colc[j]) - (j == pos ? 1.0f : 0.0f);
            }
        }
        tacc += (double)g * (double)xv;
        const float G = g * a.wt;
        if (!a.half) x[c] = G;
        else if (a.ht == NS_F16) ((__half *)a.half)[k * a.nc + c] = __float2half_rn(G);
        else ((__nv_bfloat16 *)a.half)[k * a.nc + c] = __float2bfloat16_rn(G);
    }
    tacc = block_reduce(tacc, SumD(), shd);
    if (threadIdx.x == 0) a.rtau[i] += tacc;
}

__global__ void __launch_bounds__(kT) ns_k_tau_sum(int64_t B, const double *rtau, const float *saved, double *out) {
    __shared__ double shd[kT / 32];
    const int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
    double t = i < B ? rtau[i] : 0.0, x = i < B ? (double)saved[i * kSaved + NS_SAVED_DTAU] : 0.0;
    t = block_reduce(t, SumD(), shd);
    x = block_reduce(x, SumD(), shd);
    if (threadIdx.x == 0) {
        atomicAdd(out, t);
        atomicAdd(out + 1, x);
    }
}

// ------------------------------------------------------------------ host side

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
    Ids ids;
};

static const void *row_ptr(const View &v, int64_t r, size_t es) {
    return (const char *)v.data + (size_t)(r * v.ld) * es;
}

struct Carver {
    char *base;
    size_t off;
    void *take(size_t bytes) {
        void *p = base ? base + off : nullptr;
        off += ns_align256(bytes);
        return p;
    }
};

// Validates (sync; skipped while capturing), then resolves dtypes into the plan. conv is the
// f32 copy area when dtypes differ (sized by plan_conv_bytes).
ns_status plan_init(ns_context *ctx, const char *fn, const ns_infonce_inputs *in,
                    const ns_loss_options *o, Plan *P, const float *saved = nullptr) {
    P->B = in->query.rows, P->N = in->passage.rows, P->d = in->query.cols;
    P->h = in->hard_per_query, P->E = in->extra.rows;
    P->general = o->tau_plus > 0.0f || o->beta > 0.0f;
    P->sym = o->symmetric, P->same = o->mask_same_id;
    P->own_hard = P->h > 0 && !o->share_hard;
    P->share = P->h > 0 && o->share_hard;
    P->tau = o->temperature, P->inv_tau = 1.0f / o->temperature;
    P->ids.positive = in->positive, P->ids.passage_id = in->passage_id;
    P->ids.hard_id = in->hard_id, P->ids.extra_id = in->extra_id, P->ids.hard_keep = in->hard_keep;
    P->ids.same = o->mask_same_id, P->ids.h = P->h, P->ids.posid = nullptr;
    cudaStream_t st = ns_stream(ctx);
    ns_status rc;
    if (ns_cuda_validating(ctx)) {
        int *flags;
        const int *hf;
        if ((rc = ns_cuda_flags_reset(ctx, fn, &flags))) return rc;
        if (in->positive) {
            ns_k_loss_check_pos<<<ns_blocks(P->B), NS_CUDA_THREADS, 0, st>>>(in->positive, P->B, P->N,
                                                                           NS_CUDA_WIDE(flags));
            NS_CUDA_TRY(ctx, fn, cudaGetLastError());
        }
        if ((rc = ns_cuda_scan_nonfinite(ctx, fn, in->query, 0, P->B, flags, W_Q, st))) return rc;
        if ((rc = ns_cuda_scan_nonfinite(ctx, fn, in->passage, 0, P->N, flags, W_P, st))) return rc;
        if (P->h > 0 && (rc = ns_cuda_scan_nonfinite(ctx, fn, in->hard, 0, in->hard.rows, flags, W_H, st)))
            return rc;
        if (P->E > 0 && (rc = ns_cuda_scan_nonfinite(ctx, fn, in->extra, 0, P->E, flags, W_E, st)))
            return rc;
        if (saved) {  // the backward's saved statistics (like the CPU backend, which reads them)
            ns_k_loss_check_saved<<<ns_blocks(P->B * kSaved), NS_CUDA_THREADS, 0, st>>>(
                saved, P->B * kSaved, NS_CUDA_WIDE(flags));
            NS_CUDA_TRY(ctx, fn, cudaGetLastError());
        }
        if ((rc = ns_cuda_flags_read(ctx, fn, &hf))) return rc;
        const unsigned long long *w = NS_CUDA_WIDE(hf);
        if (w[W_POS]) {
            const int64_t i = (int64_t)(ULLONG_MAX - w[W_POS]);
            int64_t v = 0;
            NS_CUDA_TRY(ctx, fn, cudaMemcpy(&v, in->positive + i, sizeof v, cudaMemcpyDeviceToHost));
            return ns_fail(ctx, NS_ERR_INVALID_ARGUMENT,
                           "%s: positive[%lld] (%lld) is not a passage row in [0, %lld)", fn,
                           (long long)i, (long long)v, (long long)P->N);
        }
        static const char *names[] = {"", "query", "passage", "hard", "extra"};
        int64_t r, c;
        for (int s = W_Q; s <= W_E; s++)
            if (ns_cuda_first_nonfinite(hf, s, P->d, &r, &c))
                return ns_fail(ctx, NS_ERR_NONFINITE, "%s: %s[%lld][%lld] is not finite", fn, names[s],
                               (long long)r, (long long)c);
        if (w[W_SAVED])
            return ns_fail(ctx, NS_ERR_NONFINITE,
                           "%s: saved[%lld] is not finite (pass the saved buffer of the forward with "
                           "the same inputs and options)",
                           fn, (long long)(ULLONG_MAX - w[W_SAVED]));
    }
    return NS_OK;
}

int dtypes_differ(const ns_infonce_inputs *in) {
    ns_dtype t = in->query.dtype;
    return in->passage.dtype != t || (in->hard_per_query > 0 && in->hard.dtype != t) ||
           (in->extra.rows > 0 && in->extra.dtype != t);
}

// Lays the O(B + N) area out (base NULL: only sizes) and the f32 copies when dtypes differ.
struct State {
    float *m;
    double *a, *w, *rtau;
    int64_t *n, *posid;
    uint8_t *ispos;
    double *cmax, *csum;
    int *colmax;
    float *colc;
    float *qf, *pf, *hf, *ef;
};
size_t carve_state(char *base, const Plan &P, int conv, State *s) {
    Carver c{base, 0};
    s->m = (float *)c.take((size_t)P.B * 4);
    s->a = (double *)c.take((size_t)P.B * 8);
    s->w = (double *)c.take((size_t)P.B * 8);
    s->rtau = (double *)c.take((size_t)P.B * 8);
    s->n = (int64_t *)c.take((size_t)P.B * 8);
    s->posid = (int64_t *)c.take((size_t)P.B * 8);
    s->ispos = P.sym ? (uint8_t *)c.take((size_t)P.N) : nullptr;
    s->cmax = P.sym ? (double *)c.take((size_t)P.N * 8) : nullptr;
    s->csum = P.sym ? (double *)c.take((size_t)P.N * 8) : nullptr;
    s->colmax = P.sym ? (int *)c.take((size_t)P.N * 4) : nullptr;
    s->colc = P.sym ? (float *)c.take((size_t)P.N * 4) : nullptr;
    s->qf = conv ? (float *)c.take((size_t)(P.B * P.d) * 4) : nullptr;
    s->pf = conv ? (float *)c.take((size_t)(P.N * P.d) * 4) : nullptr;
    s->hf = conv && P.h > 0 ? (float *)c.take((size_t)(P.B * P.h * P.d) * 4) : nullptr;
    s->ef = conv && P.E > 0 ? (float *)c.take((size_t)(P.E * P.d) * 4) : nullptr;
    return c.off;
}

ns_status setup(ns_context *ctx, const char *fn, const ns_infonce_inputs *in, Plan &P, State &S,
                int64_t &tb, int64_t &tn, float *&tile, void *&half_tile, float *&htile,
                void *&half_htile) {
    const int conv = dtypes_differ(in);
    size_t sb = carve_state(nullptr, P, conv, &S);
    char *base = (char *)ns_cuda_workspace(ctx, NS_WS_LOSS2, sb);
    if (!base) return ns_fail(ctx, NS_ERR_OUT_OF_MEMORY, "%s: cannot allocate %zu bytes of device workspace", fn, sb);
    carve_state(base, P, conv, &S);
    P.ids.posid = S.posid;
    cudaStream_t st = ns_stream(ctx);
    ns_status rc;
    if (conv) {
        if ((rc = ns_cuda_rows_to_f32(ctx, fn, in->query, 0, P.B, S.qf, st))) return rc;
        if ((rc = ns_cuda_rows_to_f32(ctx, fn, in->passage, 0, P.N, S.pf, st))) return rc;
        if (P.h > 0 && (rc = ns_cuda_rows_to_f32(ctx, fn, in->hard, 0, P.B * P.h, S.hf, st))) return rc;
        if (P.E > 0 && (rc = ns_cuda_rows_to_f32(ctx, fn, in->extra, 0, P.E, S.ef, st))) return rc;
        P.t = NS_F32;
        P.q = {S.qf, P.d}, P.p = {S.pf, P.d}, P.hd = {S.hf, P.d}, P.ex = {S.ef, P.d};
    } else {
        P.t = in->query.dtype;
        P.q = {in->query.data, ns_ld(in->query)};
        P.p = {in->passage.data, ns_ld(in->passage)};
        P.hd = {P.h > 0 ? in->hard.data : nullptr, P.h > 0 ? ns_ld(in->hard) : P.d};
        P.ex = {P.E > 0 ? in->extra.data : nullptr, P.E > 0 ? ns_ld(in->extra) : P.d};
    }
    P.es = ns_dtype_size(P.t);
    // Tiles: up to 4096 × 4096 logits (64 MiB), GEMMs large enough for full tensor-core rate.
    int64_t maxc = P.N;
    if (P.share && P.B * P.h > maxc) maxc = P.B * P.h;
    if (P.E > maxc) maxc = P.E;
    tb = P.B < 4096 ? P.B : 4096;
    tn = maxc < 4096 ? maxc : 4096;
    const int half = P.t != NS_F32;
    Carver c{nullptr, 0};
    c.take((size_t)(tb * tn) * 4);
    if (half) c.take((size_t)(tb * tn) * 2);
    if (P.own_hard) {
        c.take((size_t)(tb * P.h) * 4);
        if (half) c.take((size_t)(tb * P.h) * 2);
    }
    char *tw = (char *)ns_cuda_workspace(ctx, NS_WS_LOSS, c.off);
    if (!tw) return ns_fail(ctx, NS_ERR_OUT_OF_MEMORY, "%s: cannot allocate %zu bytes of device tile workspace", fn, c.off);
    Carver d{tw, 0};
    tile = (float *)d.take((size_t)(tb * tn) * 4);
    half_tile = half ? d.take((size_t)(tb * tn) * 2) : nullptr;
    htile = P.own_hard ? (float *)d.take((size_t)(tb * P.h) * 4) : nullptr;
    half_htile = P.own_hard && half ? d.take((size_t)(tb * P.h) * 2) : nullptr;
    return NS_OK;
}

struct Block {
    int kind;
    View v;
    int64_t rows;
    float *grad;
};

int blocks_of(const Plan &P, Block *b, float *gp, float *gh) {
    int n = 0;
    b[n++] = {K_PASSAGE, P.p, P.N, gp};
    if (P.share) b[n++] = {K_HARD, P.hd, P.B * P.h, gh};
    if (P.E > 0) b[n++] = {K_EXTRA, P.ex, P.E, nullptr};
    return n;
}

}  // namespace

ns_status ns_cuda_infonce_forward(ns_context *ctx, const ns_infonce_inputs *in,
                                  const ns_loss_options *opt, float *loss, float *per_query,
                                  float *saved) {
    static const char *fn = "ns_infonce_forward";
    if (ns_cuda_capturing(ctx))
        return ns_fail(ctx, NS_ERR_UNSUPPORTED,
                       "%s: loss is a host float and needs a synchronisation, which a stream being "
                       "captured into a CUDA graph cannot do",
                       fn);
    Plan P;
    State S;
    ns_status rc;
    if ((rc = plan_init(ctx, fn, in, opt, &P))) return rc;
    int64_t tb, tn;
    float *tile, *htile;
    void *half_tile, *half_htile;
    if ((rc = setup(ctx, fn, in, P, S, tb, tn, tile, half_tile, htile, half_htile))) return rc;
    cudaStream_t st = ns_stream(ctx);
    int *flags;
    if ((rc = ns_cuda_flags_reset(ctx, fn, &flags))) return rc;
    double *total = (double *)(NS_CUDA_WIDE(flags) + W_TOTAL);

    InitArgs ia{P.B, P.N, P.ids, S.m, S.a, S.w, nullptr, S.n, S.posid, S.ispos, S.cmax, S.csum};
    if (P.sym) ns_k_loss_init_cols<<<ns_blocks(P.N), NS_CUDA_THREADS, 0, st>>>(ia);
    ns_k_loss_init_rows<<<ns_blocks(P.B), NS_CUDA_THREADS, 0, st>>>(ia);
    NS_CUDA_TRY(ctx, fn, cudaGetLastError());

    Block blk[3];
    const int nblk = blocks_of(P, blk, nullptr, nullptr);
    for (int64_t r0 = 0; r0 < P.B; r0 += tb) {
        const int64_t nb = P.B - r0 < tb ? P.B - r0 : tb;
        const void *q = row_ptr(P.q, r0, P.es);
        for (int b = 0; b < nblk; b++) {
            for (int64_t j0 = 0; j0 < blk[b].rows; j0 += tn) {
                const int64_t nc = blk[b].rows - j0 < tn ? blk[b].rows - j0 : tn;
                if ((rc = ns_cuda_gemm(ctx, fn, 0, 1, nb, nc, P.d, P.inv_tau, q, P.t, P.q.ld,
                                       row_ptr(blk[b].v, j0, P.es), P.t, blk[b].v.ld, 0.0f, tile, nc)))
                    return rc;
                if (P.sym && blk[b].kind == K_PASSAGE) {
                    ColArgs ca{tile, nc, nb, nc, j0, r0, P.ids, S.ispos, S.cmax, S.csum};
                    ns_k_loss_cols<<<ns_blocks(nc), NS_CUDA_THREADS, 0, st>>>(ca);
                    NS_CUDA_TRY(ctx, fn, cudaGetLastError());
                }
                RowArgs ra{tile, nc, nc, j0, r0, blk[b].kind, P.ids, opt->beta, S.m, S.a, S.w, S.n, saved};
                ns_k_loss_rows<<<(unsigned)nb, kT, 0, st>>>(ra);
                NS_CUDA_TRY(ctx, fn, cudaGetLastError());
            }
        }
        if (P.own_hard) {
            // Per query k of the tile: its h logits = q_k · H_kᵀ / τ.
            if ((rc = ns_cuda_gemm_batched(ctx, fn, 0, 1, 1, P.h, P.d, P.inv_tau, q, P.q.ld, P.q.ld,
                                           row_ptr(P.hd, r0 * P.h, P.es), P.hd.ld, P.h * P.hd.ld, P.t,
                                           0.0f, htile, P.h, P.h, nb)))
                return rc;
            RowArgs ra{htile, P.h, P.h, 0, r0, K_OWN, P.ids, opt->beta, S.m, S.a, S.w, S.n, saved};
            ns_k_loss_rows<<<(unsigned)nb, kT, 0, st>>>(ra);
            NS_CUDA_TRY(ctx, fn, cudaGetLastError());
        }
    }
    FinishArgs fa{P.B, P.ids, P.general, P.sym, (double)P.tau, (double)opt->tau_plus, (double)opt->beta,
                  S.m, S.a, S.w, S.n, S.cmax, S.csum, saved, per_query, total};
    ns_k_loss_finish<<<ns_blocks(P.B, kT), kT, 0, st>>>(fa);
    NS_CUDA_TRY(ctx, fn, cudaGetLastError());
    const int *hf;
    if ((rc = ns_cuda_flags_read(ctx, fn, &hf))) return rc;
    *loss = (float)(*(const double *)(NS_CUDA_WIDE(hf) + W_TOTAL) / (double)P.B);
    return NS_OK;
}

ns_status ns_cuda_infonce_backward(ns_context *ctx, const ns_infonce_inputs *in,
                                   const ns_loss_options *opt, const float *saved,
                                   float grad_loss, const ns_infonce_grads *grads) {
    static const char *fn = "ns_infonce_backward";
    const int want_tau = grads->temperature != nullptr;
    if (want_tau && ns_cuda_capturing(ctx))
        return ns_fail(ctx, NS_ERR_UNSUPPORTED,
                       "%s: grads->temperature is a host float and needs a synchronisation, which "
                       "a stream being captured into a CUDA graph cannot do",
                       fn);
    Plan P;
    State S;
    ns_status rc;
    if ((rc = plan_init(ctx, fn, in, opt, &P, saved))) return rc;
    cudaStream_t st = ns_stream(ctx);
    float *gq = grads->query, *gp = grads->passage, *gh = P.h > 0 ? grads->hard : nullptr;
    if (gq) NS_CUDA_TRY(ctx, fn, cudaMemsetAsync(gq, 0, (size_t)(P.B * P.d) * 4, st));
    if (gp) NS_CUDA_TRY(ctx, fn, cudaMemsetAsync(gp, 0, (size_t)(P.N * P.d) * 4, st));
    if (gh) NS_CUDA_TRY(ctx, fn, cudaMemsetAsync(gh, 0, (size_t)(P.B * P.h * P.d) * 4, st));
    if (!gq && !gp && !gh && !want_tau) return NS_OK;
    int64_t tb, tn;
    float *tile, *htile;
    void *half_tile, *half_htile;
    if ((rc = setup(ctx, fn, in, P, S, tb, tn, tile, half_tile, htile, half_htile))) return rc;
    int *flags = nullptr;
    if (want_tau && (rc = ns_cuda_flags_reset(ctx, fn, &flags))) return rc;

    InitArgs ia{P.B, P.N, P.ids, nullptr, nullptr, nullptr, S.rtau, nullptr, S.posid, nullptr, nullptr, nullptr};
    ns_k_loss_init_rows<<<ns_blocks(P.B), NS_CUDA_THREADS, 0, st>>>(ia);
    NS_CUDA_TRY(ctx, fn, cudaGetLastError());
    if (P.sym) {
        ns_k_colc_init<<<ns_blocks(P.N), NS_CUDA_THREADS, 0, st>>>(P.N, S.colmax, S.csum);
        ns_k_colc_max<<<ns_blocks(P.B), NS_CUDA_THREADS, 0, st>>>(P.B, P.ids, saved, S.colmax);
        ns_k_colc_sum<<<ns_blocks(P.B), NS_CUDA_THREADS, 0, st>>>(P.B, P.ids, saved, S.colmax, S.csum);
        ns_k_colc_finish<<<ns_blocks(P.N), NS_CUDA_THREADS, 0, st>>>(P.N, S.colmax, S.csum, S.colc);
        NS_CUDA_TRY(ctx, fn, cudaGetLastError());
    }
    const double w = (double)grad_loss / (double)P.B * (P.sym ? 0.5 : 1.0);
    const float wt = (float)(w / P.tau);
    const int half = P.t != NS_F32;

    Block blk[3];
    const int nblk = blocks_of(P, blk, gp, gh);
    for (int64_t r0 = 0; r0 < P.B; r0 += tb) {
        const int64_t nb = P.B - r0 < tb ? P.B - r0 : tb;
        const void *q = row_ptr(P.q, r0, P.es);
        for (int b = 0; b < nblk; b++) {
            if (!gq && !want_tau && !blk[b].grad) continue;
            for (int64_t j0 = 0; j0 < blk[b].rows; j0 += tn) {
                const int64_t nc = blk[b].rows - j0 < tn ? blk[b].rows - j0 : tn;
                const void *c = row_ptr(blk[b].v, j0, P.es);
                if ((rc = ns_cuda_gemm(ctx, fn, 0, 1, nb, nc, P.d, P.inv_tau, q, P.t, P.q.ld, c, P.t,
                                       blk[b].v.ld, 0.0f, tile, nc)))
                    return rc;
                // For f16/bf16 inputs G is written in that dtype for the tensor-core GEMMs.
                const bool to_half = half && (gq || blk[b].grad);
                GradArgs ga{tile, nc, nc, j0, r0, blk[b].kind, P.sym, P.same, P.ids, opt->beta, wt,
                            saved, P.sym ? S.colc : nullptr, S.rtau, to_half ? half_tile : nullptr, P.t};
                ns_k_loss_grad<<<(unsigned)nb, kT, 0, st>>>(ga);
                NS_CUDA_TRY(ctx, fn, cudaGetLastError());
                const void *g = to_half ? half_tile : (const void *)tile;
                // dQ[r0 : r0+nb] += G · C;  dC[j0 : j0+nc] += Gᵀ · Q
                if (gq && (rc = ns_cuda_gemm(ctx, fn, 0, 0, nb, P.d, nc, 1.0f, g, P.t, nc, c, P.t,
                                             blk[b].v.ld, 1.0f, gq + r0 * P.d, P.d)))
                    return rc;
                if (blk[b].grad && (rc = ns_cuda_gemm(ctx, fn, 1, 0, nc, P.d, nb, 1.0f, g, P.t, nc, q, P.t,
                                                      P.q.ld, 1.0f, blk[b].grad + j0 * P.d, P.d)))
                    return rc;
            }
        }
        if (P.own_hard) {
            const void *hr = row_ptr(P.hd, r0 * P.h, P.es);
            if ((rc = ns_cuda_gemm_batched(ctx, fn, 0, 1, 1, P.h, P.d, P.inv_tau, q, P.q.ld, P.q.ld, hr,
                                           P.hd.ld, P.h * P.hd.ld, P.t, 0.0f, htile, P.h, P.h, nb)))
                return rc;
            const bool to_half = half && (gq || gh);
            GradArgs ga{htile, P.h, P.h, 0, r0, K_OWN, 0, P.same, P.ids, opt->beta, wt, saved, nullptr,
                        S.rtau, to_half ? half_htile : nullptr, P.t};
            ns_k_loss_grad<<<(unsigned)nb, kT, 0, st>>>(ga);
            NS_CUDA_TRY(ctx, fn, cudaGetLastError());
            const void *g = to_half ? half_htile : (const void *)htile;
            // dq_k += G_k · H_k (1×h · h×d);  dH_k = G_kᵀ · q_k (h×1 · 1×d)
            if (gq && (rc = ns_cuda_gemm_batched(ctx, fn, 0, 0, 1, P.d, P.h, 1.0f, g, P.h, P.h, hr, P.hd.ld,
                                                 P.h * P.hd.ld, P.t, 1.0f, gq + r0 * P.d, P.d, P.d, nb)))
                return rc;
            if (gh && (rc = ns_cuda_gemm_batched(ctx, fn, 1, 0, P.h, P.d, 1, 1.0f, g, P.h, P.h, q, P.q.ld,
                                                 P.q.ld, P.t, 0.0f, gh + r0 * P.h * P.d, P.d, P.h * P.d, nb)))
                return rc;
        }
    }
    if (want_tau) {
        double *out = (double *)(NS_CUDA_WIDE(flags) + W_TAU);
        ns_k_tau_sum<<<ns_blocks(P.B, kT), kT, 0, st>>>(P.B, S.rtau, saved, out);
        NS_CUDA_TRY(ctx, fn, cudaGetLastError());
        const int *hf;
        if ((rc = ns_cuda_flags_read(ctx, fn, &hf))) return rc;
        const double *r = (const double *)(NS_CUDA_WIDE(hf) + W_TAU);
        *grads->temperature = (float)(w * (-r[0] / (double)P.tau + r[1]));
    }
    return NS_OK;
}
