// ns_infonce_backward on CUDA: recomputes each logit tile with a GEMM, turns it in place into
// dL/dlogit (scaled; ns_loss_element_grad of src/hostdevice/ns_loss_math.h, the CPU backend's
// formula), and accumulates dQ += G·C and dC += Gᵀ·Q with GEMMs (for f16/bf16 inputs G is
// rounded to the input dtype so the GEMMs run on tensor cores, like autocast; f32 stays f32).
// Own hard negatives (share_hard = 0) use strided batched GEMMs per query.
#include "cuda_infonce.cuh"

using namespace nsloss;

namespace {

// Orders floats as ints for atomicMax (finite and ±Inf values).
__device__ __forceinline__ int float_order(float f) {
    int i = __float_as_int(f);
    return i >= 0 ? i : i ^ 0x7fffffff;
}
__device__ __forceinline__ float order_float(int i) { return __int_as_float(i >= 0 ? i : i ^ 0x7fffffff); }

// colc_p = −log Σ_{i: positive[i] = p} e^{−collse_i} (symmetric): max pass, sum pass, finish.
// Several queries may share a positive, so the sum is accumulated by atomics — in fixed point
// (integers add associatively: the same bits whatever the order). Each term is e^{v − max} in
// (0, 1], scaled by fix = ns_loss_colfix_scale(B) (src/hostdevice/ns_loss_math.h: 2^40 up to
// 2^23 queries, less above, so that B terms never wrap the 64-bit sum), an absolute error of
// 1/(2·fix) per term against a sum >= 1 (colc is a float).

__global__ void ns_k_colc_max(int64_t B, ns_loss_ids ids, const float *saved, int *cmaxo) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < B; i += (int64_t)gridDim.x * blockDim.x)
        atomicMax(cmaxo + ns_loss_positive(&ids, i), float_order(-saved[i * kSaved + NS_SAVED_COLLSE]));
}
__global__ void ns_k_colc_sum(int64_t B, ns_loss_ids ids, const float *saved, const int *cmaxo,
                              double fix, unsigned long long *cfix) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < B; i += (int64_t)gridDim.x * blockDim.x) {
        int64_t j = ns_loss_positive(&ids, i);
        double v = -(double)saved[i * kSaved + NS_SAVED_COLLSE];
        const double e = exp(v - (double)order_float(cmaxo[j]));
        atomicAdd(cfix + j, (unsigned long long)llrint(e * fix));  // ns-int-atomic
    }
}
__global__ void ns_k_colc_init(int64_t N, int *cmaxo, unsigned long long *cfix) {
    for (int64_t j = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; j < N; j += (int64_t)gridDim.x * blockDim.x) {
        cmaxo[j] = float_order(-INFINITY);
        cfix[j] = 0;
    }
}
__global__ void ns_k_colc_finish(int64_t N, const int *cmaxo, const unsigned long long *cfix, double fix,
                                 float *colc) {
    for (int64_t j = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; j < N; j += (int64_t)gridDim.x * blockDim.x)
        colc[j] = cfix[j] ? (float)-((double)order_float(cmaxo[j]) + log((double)cfix[j] / fix)) : INFINITY;
}

struct GradArgs {
    float *x;  // in: logits; out: dL/dlogit · wt
    int64_t ldx, nc, j0, r0;
    int kind, sym, same;
    ns_loss_ids ids;
    float beta, wt;
    const float *saved;
    const float *colc;  // N (symmetric passage blocks), else NULL
    double *rtau;
    void *half;         // when set: G goes here in dtype ht (dense, ld nc) instead of into x
    ns_dtype ht;
};

// One block per query row: the gradient of every logit (ns_loss_element_grad), in place.
__global__ void __launch_bounds__(kT) ns_k_loss_grad(GradArgs a) {
    __shared__ double shd[kT / 32];
    const int64_t k = blockIdx.x, i = a.r0 + k;
    const float *sv = a.saved + i * kSaved;
    const ns_loss_factors f = ns_loss_row_factors(sv);
    const int64_t pos = ns_loss_positive(&a.ids, i), posid = a.ids.posid[i];
    const bool symcol = a.kind == NS_BLK_PASSAGE && a.sym;
    float *x = a.x + k * a.ldx;
    double tacc = 0.0;
    for (int64_t c = threadIdx.x; c < a.nc; c += kT) {
        const int64_t j = a.j0 + c;
        const float xv = x[c];
        const int cl = ns_loss_col_class(&a.ids, a.kind, i, pos, posid, j);
        const int same_id = symcol && a.same && ns_loss_passage_id(&a.ids, j) == posid;
        // the gradient at the group-adjusted logit (l + log w; -inf masked); dl/dτ of the raw l
        const float xa = xv + ns_loss_group_adj(&a.ids, a.kind, i, pos, j);
        const float g = ns_loss_element_grad(&f, a.beta, cl, xa, symcol, symcol ? a.colc[j] : 0.0f,
                                             same_id, j == pos);
        tacc += (double)g * (double)xv;
        const float G = g * a.wt;
        if (!a.half) x[c] = G;
        else if (a.ht == NS_F16) ((__half *)a.half)[k * a.nc + c] = __float2half_rn(G);
        else ((__nv_bfloat16 *)a.half)[k * a.nc + c] = __float2bfloat16_rn(G);
    }
    tacc = ns_block_reduce<kT>(tacc, NsSumD(), shd);
    if (threadIdx.x == 0) a.rtau[i] += tacc;
}

// Per block: Σ rtau and Σ the explicit ∂L/∂τ of its queries into part[block] and
// part[nblocks + block] (ns_k_loss_reduce adds them in a fixed order: no float atomics).
__global__ void __launch_bounds__(kT) ns_k_tau_sum(int64_t B, const double *rtau, const float *saved, double *part) {
    __shared__ double shd[kT / 32];
    double t = 0.0, x = 0.0;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < B; i += (int64_t)gridDim.x * blockDim.x) {
        t += rtau[i];
        x += (double)saved[i * kSaved + NS_SAVED_DTAU];
    }
    t = ns_block_reduce<kT>(t, NsSumD(), shd);
    x = ns_block_reduce<kT>(x, NsSumD(), shd);
    if (threadIdx.x == 0) {
        part[blockIdx.x] = t;
        part[gridDim.x + blockIdx.x] = x;
    }
}

// dτ = w · (−Σ rtau / τ + Σ explicit) from the two sums of ns_k_tau_sum (device float).
__global__ void ns_k_dtau(const double *r, double w, double tau, float *out) {
    if (blockIdx.x == 0 && threadIdx.x == 0) *out = (float)(w * (-r[0] / tau + r[1]));
}

}  // namespace

namespace nsloss {

ns_status column_factors(ns_context *ctx, const char *fn, const Plan &P, const State &S, const float *saved) {
    cudaStream_t st = ns_stream(ctx);
    ns_k_colc_init<<<ns_blocks(P.N), NS_CUDA_THREADS, 0, st>>>(P.N, S.colmax, S.colfix);
    ns_k_colc_max<<<ns_blocks(P.B), NS_CUDA_THREADS, 0, st>>>(P.B, P.ids, saved, S.colmax);
    const double fix = ns_loss_colfix_scale(P.B);
    ns_k_colc_sum<<<ns_blocks(P.B), NS_CUDA_THREADS, 0, st>>>(P.B, P.ids, saved, S.colmax, fix, S.colfix);
    ns_k_colc_finish<<<ns_blocks(P.N), NS_CUDA_THREADS, 0, st>>>(P.N, S.colmax, S.colfix, fix, S.colc);
    NS_CUDA_TRY(ctx, fn, cudaGetLastError());
    return NS_OK;
}

ns_status grad_tile(ns_context *ctx, const char *fn, const Plan &P, const State &S, const Block &bk,
                    float beta, float wt, int64_t r0, int64_t nb, int64_t j0, int64_t nc, float *x,
                    const float *saved, float *gq) {
    ns_status rc;
    const void *q = row_ptr(P.q, r0, P.es), *c = row_ptr(bk.v, j0, P.es);
    const bool to_half = P.t != NS_F32 && (gq || bk.grad);
    GradArgs ga{x, nc, nc, j0, r0, bk.kind, P.sym, P.same, P.ids, beta, wt,
                saved, P.sym ? S.colc : nullptr, S.rtau, to_half ? S.half_tile : nullptr, P.t};
    ns_k_loss_grad<<<(unsigned)nb, kT, 0, ns_stream(ctx)>>>(ga);
    NS_CUDA_TRY(ctx, fn, cudaGetLastError());
    const void *g = to_half ? S.half_tile : (const void *)x;
    if (gq && (rc = ns_cuda_gemm(ctx, fn, 0, 0, nb, P.d, nc, 1.0f, g, P.t, nc, c, P.t, bk.v.ld, 1.0f,
                                 gq + r0 * P.d, P.d)))
        return rc;
    if (bk.grad && (rc = ns_cuda_gemm(ctx, fn, 1, 0, nc, P.d, nb, 1.0f, g, P.t, nc, q, P.t, P.q.ld,
                                      1.0f, bk.grad + j0 * P.d, P.d)))
        return rc;
    return NS_OK;
}

ns_status grad_own_hard(ns_context *ctx, const char *fn, const Plan &P, const State &S, float beta,
                        float wt, int64_t r0, int64_t nb, float *x, const float *saved, float *gq,
                        float *gh) {
    ns_status rc;
    const void *q = row_ptr(P.q, r0, P.es), *hr = row_ptr(P.hd, r0 * P.h, P.es);
    const bool to_half = P.t != NS_F32 && (gq || gh);
    GradArgs ga{x, P.h, P.h, 0, r0, NS_BLK_OWN, 0, P.same, P.ids, beta, wt, saved, nullptr,
                S.rtau, to_half ? S.half_htile : nullptr, P.t};
    ns_k_loss_grad<<<(unsigned)nb, kT, 0, ns_stream(ctx)>>>(ga);
    NS_CUDA_TRY(ctx, fn, cudaGetLastError());
    const void *g = to_half ? S.half_htile : (const void *)x;
    if (gq && (rc = ns_cuda_gemm_batched(ctx, fn, 0, 0, 1, P.d, P.h, 1.0f, g, P.h, P.h, hr, P.hd.ld,
                                         P.h * P.hd.ld, P.t, 1.0f, gq + r0 * P.d, P.d, P.d, nb)))
        return rc;
    if (gh && (rc = ns_cuda_gemm_batched(ctx, fn, 1, 0, P.h, P.d, 1, 1.0f, g, P.h, P.h, q, P.q.ld,
                                         P.q.ld, P.t, 0.0f, gh + r0 * P.h * P.d, P.d, P.h * P.d, nb)))
        return rc;
    return NS_OK;
}

ns_status tau_total(ns_context *ctx, const char *fn, const Plan &P, const State &S, const float *saved,
                    double *out) {
    const unsigned ntb = ns_blocks(P.B, kT) < (unsigned)kMaxPartials ? ns_blocks(P.B, kT) : kMaxPartials;
    ns_k_tau_sum<<<ntb, kT, 0, ns_stream(ctx)>>>(P.B, S.rtau, saved, S.part);
    NS_CUDA_TRY(ctx, fn, cudaGetLastError());
    return reduce_partials(ctx, fn, S.part, ntb, 2, out);
}

ns_status dtau_device(ns_context *ctx, const char *fn, const double *sums, double w, double tau, float *out) {
    ns_k_dtau<<<1, 32, 0, ns_stream(ctx)>>>(sums, w, tau, out);
    NS_CUDA_TRY(ctx, fn, cudaGetLastError());
    return NS_OK;
}

}  // namespace nsloss

namespace {

// One logit tile of a shared block: recomputed by a GEMM into the tile, then grad_tile: turned
// into G = dL/dlogit · wt (for f16/bf16 inputs written in that dtype for the tensor-core GEMMs),
// dQ[r0 : r0+nb] += G · C and dC[j0 : j0+nc] += Gᵀ · Q.
ns_status backward_tile(ns_context *ctx, const char *fn, const Plan &P, const State &S, const Block &bk,
                        float beta, float wt, int64_t r0, int64_t nb, int64_t j0, int64_t nc,
                        const float *saved, float *gq) {
    ns_status rc;
    if ((rc = ns_cuda_gemm(ctx, fn, 0, 1, nb, nc, P.d, P.inv_tau, row_ptr(P.q, r0, P.es), P.t, P.q.ld,
                           row_ptr(bk.v, j0, P.es), P.t, bk.v.ld, 0.0f, S.tile, nc)))
        return rc;
    return grad_tile(ctx, fn, P, S, bk, beta, wt, r0, nb, j0, nc, S.tile, saved, gq);
}

// The own hard negatives of rows [r0, r0+nb) by strided batched GEMMs per query:
// dq_k += G_k · H_k (1×h · h×d);  dH_k = G_kᵀ · q_k (h×1 · 1×d).
ns_status backward_own_hard(ns_context *ctx, const char *fn, const Plan &P, const State &S, float beta,
                            float wt, int64_t r0, int64_t nb, const float *saved, float *gq, float *gh) {
    ns_status rc;
    if ((rc = ns_cuda_gemm_batched(ctx, fn, 0, 1, 1, P.h, P.d, P.inv_tau, row_ptr(P.q, r0, P.es), P.q.ld,
                                   P.q.ld, row_ptr(P.hd, r0 * P.h, P.es), P.hd.ld, P.h * P.hd.ld, P.t,
                                   0.0f, S.htile, P.h, P.h, nb)))
        return rc;
    return grad_own_hard(ctx, fn, P, S, beta, wt, r0, nb, S.htile, saved, gq, gh);
}

}  // namespace

// grads->temperature (host float: one synchronisation, refused while capturing) or dtau_dev
// (device float: none); fn names the public function.
ns_status nsloss::backward_call(ns_context *ctx, const char *fn, const ns_infonce_inputs *in,
                                const ns_loss_options *opt, const float *saved, float grad_loss,
                                const ns_infonce_grads *grads, float *dtau_dev) {
    const int want_tau = grads->temperature != nullptr || dtau_dev != nullptr;
    if (grads->temperature && ns_cuda_capturing(ctx))
        return ns_fail(ctx, NS_ERR_UNSUPPORTED,
                       "%s: grads->temperature is a host float and needs a synchronisation, which "
                       "a stream being captured into a CUDA graph cannot do",
                       fn);
    Plan P;
    State S{};
    ns_status rc;
    if ((rc = plan_init(ctx, fn, in, opt, &P, saved))) return rc;
    cudaStream_t st = ns_stream(ctx);
    float *gq = grads->query, *gp = grads->passage, *gh = P.h > 0 ? grads->hard : nullptr;
    if (gq) NS_CUDA_TRY(ctx, fn, cudaMemsetAsync(gq, 0, (size_t)(P.B * P.d) * 4, st));
    if (gp) NS_CUDA_TRY(ctx, fn, cudaMemsetAsync(gp, 0, (size_t)(P.N * P.d) * 4, st));
    if (gh) NS_CUDA_TRY(ctx, fn, cudaMemsetAsync(gh, 0, (size_t)(P.B * P.h * P.d) * 4, st));
    if (!gq && !gp && !gh && !want_tau) return NS_OK;
    if ((rc = setup(ctx, fn, in, P, S))) return rc;
    int *flags = nullptr;
    if (want_tau && (rc = ns_cuda_flags_reset(ctx, fn, &flags))) return rc;
    InitArgs ia{P.B, P.N, P.ids, nullptr, nullptr, nullptr, S.rtau, nullptr, S.posid, nullptr, nullptr, nullptr};
    if ((rc = init_state(ctx, fn, ia, false))) return rc;
    if (P.sym && (rc = column_factors(ctx, fn, P, S, saved))) return rc;
    const double w = (double)grad_loss / (double)P.B * (P.sym ? 0.5 : 1.0);
    const float wt = (float)(w / P.tau);
    Block blk[3];
    const int nblk = blocks_of(P, blk, gp, gh);
    for (int64_t r0 = 0; r0 < P.B; r0 += S.tb) {
        const int64_t nb = P.B - r0 < S.tb ? P.B - r0 : S.tb;
        for (int b = 0; b < nblk; b++) {
            if (!gq && !want_tau && !blk[b].grad) continue;
            for (int64_t j0 = 0; j0 < blk[b].rows; j0 += S.tn)
                if ((rc = backward_tile(ctx, fn, P, S, blk[b], opt->beta, wt, r0, nb, j0,
                                        blk[b].rows - j0 < S.tn ? blk[b].rows - j0 : S.tn, saved, gq)))
                    return rc;
        }
        if (P.own_hard && (rc = backward_own_hard(ctx, fn, P, S, opt->beta, wt, r0, nb, saved, gq, gh)))
            return rc;
    }
    if (!want_tau) return NS_OK;
    double *out = (double *)(NS_CUDA_WIDE(flags) + W_TAU);
    if ((rc = tau_total(ctx, fn, P, S, saved, out))) return rc;
    if (dtau_dev) return dtau_device(ctx, fn, out, w, (double)P.tau, dtau_dev);
    const int *hf;
    if ((rc = ns_cuda_flags_read(ctx, fn, &hf))) return rc;
    const double *r = (const double *)(NS_CUDA_WIDE(hf) + W_TAU);
    *grads->temperature = (float)(w * (-r[0] / (double)P.tau + r[1]));
    return NS_OK;
}

ns_status ns_cuda_infonce_backward(ns_context *ctx, const ns_infonce_inputs *in,
                                   const ns_loss_options *opt, const float *saved,
                                   float grad_loss, const ns_infonce_grads *grads) {
    return backward_call(ctx, "ns_infonce_backward", in, opt, saved, grad_loss, grads, nullptr);
}
