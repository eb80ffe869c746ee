// ns_infonce_forward on CUDA: a logit tile from one cuBLAS GEMM (tensor cores for f16/bf16,
// FP32 for f32) into a fixed-size workspace tile, then one block per query row folds the tile
// into the row's online statistics (running max m of the negatives, A = Σ e^{(1+β)(x−m)},
// W = Σ e^{β(x−m)}, in double) and, when symmetric, one thread per positive-passage column folds
// it into the column statistics; one thread per query finishes its row (ns_loss_row_finish,
// src/hostdevice/ns_loss_math.h) and the loss is summed on the device, read back with one sync.
#include "cuda_infonce.cuh"

using namespace nsloss;

namespace {

struct RowArgs {
    const float *x;
    int64_t ldx, nc, j0, r0;
    int kind;
    ns_loss_ids ids;
    float beta;
    float *m;
    double *a, *w;
    int64_t *n;
    float *saved;
};

// One block per query row of the tile: the running statistics (row_update of the CPU forward).
__global__ void __launch_bounds__(kT) ns_k_loss_rows(RowArgs a) {
    __shared__ float shf[kT / 32];
    __shared__ int shi[kT / 32];
    __shared__ double shd[kT / 32];
    __shared__ float mn_s;
    const int64_t k = blockIdx.x, i = a.r0 + k;
    const int64_t pos = ns_loss_positive(&a.ids, i), posid = a.ids.posid[i];
    const float *x = a.x + k * a.ldx;
    float tmax = -INFINITY;
    int cnt = 0;
    for (int64_t c = threadIdx.x; c < a.nc; c += kT) {
        int cl = ns_loss_col_class(&a.ids, a.kind, i, pos, posid, a.j0 + c);
        if (cl == 2) {
            a.saved[i * kSaved + NS_SAVED_LPOS] = x[c];
            continue;
        }
        if (cl) continue;
        cnt++;
        if (x[c] > tmax) tmax = x[c];
    }
    tmax = ns_block_reduce<kT>(tmax, NsMaxF(), shf);
    cnt = ns_block_reduce<kT>(cnt, NsSumI(), shi);
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
        if (ns_loss_col_class(&a.ids, a.kind, i, pos, posid, a.j0 + c)) continue;
        float e = x[c] - mn;
        if (beta > 0.0f) {
            float v = expf(beta * e);
            sa += (double)(v * expf(e));
            sw += (double)v;
        } else {
            sa += (double)expf(e);
        }
    }
    sa = ns_block_reduce<kT>(sa, NsSumD(), shd);
    if (beta > 0.0f) sw = ns_block_reduce<kT>(sw, NsSumD(), shd);
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
    ns_loss_ids ids;
    const uint8_t *ispos;
    double *cmax, *csum;
};

// One thread per passage column (symmetric): column_update of the CPU forward.
__global__ void ns_k_loss_cols(ColArgs a) {
    const int64_t c = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
    if (c >= a.nc) return;
    const int64_t j = a.j0 + c;
    if (!a.ispos[j]) return;
    const int64_t pj = ns_loss_passage_id(&a.ids, j);
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
    ns_loss_ids ids;
    int general, sym;
    double tau, tau_plus, beta;
    const float *m;
    const double *a, *w;
    const int64_t *n;
    const double *cmax, *csum;
    float *saved, *per_query;
    double *total;
};

// One thread per query: the row finish and the symmetric term (ns_loss_math.h).
__global__ void __launch_bounds__(kT) ns_k_loss_finish(FinishArgs f) {
    __shared__ double shd[kT / 32];
    const int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
    double L = 0.0;
    if (i < f.B) {
        float *sv = f.saved + i * kSaved;
        L = ns_loss_row_finish(f.general, f.tau, f.tau_plus, f.beta, f.m[i], f.a[i], f.w[i], f.n[i], sv);
        if (f.sym) {
            const int64_t j = ns_loss_positive(&f.ids, i);
            const double lp = sv[NS_SAVED_LPOS];
            const double clse = ns_loss_column_lse(f.cmax[j], f.csum[j], lp, f.ids.same);
            sv[NS_SAVED_COLLSE] = (float)clse;
            L = 0.5 * (L + (clse - lp));
        }
        if (f.per_query) f.per_query[i] = (float)L;
    }
    double s = ns_block_reduce<kT>(L, NsSumD(), shd);
    if (threadIdx.x == 0) atomicAdd(f.total, s);
}

// One row tile [r0, r0+nb): a GEMM logit tile per tile of every shared block, folded into the
// column statistics (symmetric passages) and the row statistics; then the own hard negatives by
// one batched GEMM.
ns_status forward_row_tile(ns_context *ctx, const char *fn, const Plan &P, const State &S,
                           const Block *blk, int nblk, float beta, int64_t r0, int64_t nb, float *saved) {
    cudaStream_t st = ns_stream(ctx);
    ns_status rc;
    const void *q = row_ptr(P.q, r0, P.es);
    for (int b = 0; b < nblk; b++) {
        for (int64_t j0 = 0; j0 < blk[b].rows; j0 += S.tn) {
            const int64_t nc = blk[b].rows - j0 < S.tn ? blk[b].rows - j0 : S.tn;
            if ((rc = ns_cuda_gemm(ctx, fn, 0, 1, nb, nc, P.d, P.inv_tau, q, P.t, P.q.ld,
                                   row_ptr(blk[b].v, j0, P.es), P.t, blk[b].v.ld, 0.0f, S.tile, nc)))
                return rc;
            if (P.sym && blk[b].kind == NS_BLK_PASSAGE) {
                ColArgs ca{S.tile, nc, nb, nc, j0, r0, P.ids, S.ispos, S.cmax, S.csum};
                ns_k_loss_cols<<<ns_blocks(nc), NS_CUDA_THREADS, 0, st>>>(ca);
                NS_CUDA_TRY(ctx, fn, cudaGetLastError());
            }
            RowArgs ra{S.tile, nc, nc, j0, r0, blk[b].kind, P.ids, beta, S.m, S.a, S.w, S.n, saved};
            ns_k_loss_rows<<<(unsigned)nb, kT, 0, st>>>(ra);
            NS_CUDA_TRY(ctx, fn, cudaGetLastError());
        }
    }
    if (!P.own_hard) return NS_OK;
    // Per query k of the tile: its h logits = q_k · H_kᵀ / τ.
    if ((rc = ns_cuda_gemm_batched(ctx, fn, 0, 1, 1, P.h, P.d, P.inv_tau, q, P.q.ld, P.q.ld,
                                   row_ptr(P.hd, r0 * P.h, P.es), P.hd.ld, P.h * P.hd.ld, P.t,
                                   0.0f, S.htile, P.h, P.h, nb)))
        return rc;
    RowArgs ra{S.htile, P.h, P.h, 0, r0, NS_BLK_OWN, P.ids, beta, S.m, S.a, S.w, S.n, saved};
    ns_k_loss_rows<<<(unsigned)nb, kT, 0, st>>>(ra);
    NS_CUDA_TRY(ctx, fn, cudaGetLastError());
    return NS_OK;
}

}  // namespace

namespace {

// The mean loss as a device float: *out = total / B (the sum ns_k_loss_finish left in the
// status words), before any later op resets them.
__global__ void ns_k_loss_mean(const double *total, int64_t B, float *out) {
    if (blockIdx.x == 0 && threadIdx.x == 0) *out = (float)(*total / (double)B);
}

// loss (host float: one synchronisation, refused while capturing) or loss_dev (device float:
// no synchronisation), exactly one of them non-NULL.
ns_status forward(ns_context *ctx, const ns_infonce_inputs *in, const ns_loss_options *opt,
                  float *loss, float *loss_dev, float *per_query, float *saved) {
    static const char *fn = "ns_infonce_forward";
    if (loss && ns_cuda_capturing(ctx))
        return ns_fail(ctx, NS_ERR_UNSUPPORTED,
                       "%s: loss is a host float and needs a synchronisation, which a stream being "
                       "captured into a CUDA graph cannot do",
                       fn);
    Plan P;
    State S;
    ns_status rc;
    if ((rc = plan_init(ctx, fn, in, opt, &P))) return rc;
    if ((rc = setup(ctx, fn, in, P, S))) return rc;
    const int64_t tb = S.tb;
    cudaStream_t st = ns_stream(ctx);
    int *flags;
    if ((rc = ns_cuda_flags_reset(ctx, fn, &flags))) return rc;
    double *total = (double *)(NS_CUDA_WIDE(flags) + W_TOTAL);

    InitArgs ia{P.B, P.N, P.ids, S.m, S.a, S.w, nullptr, S.n, S.posid, S.ispos, S.cmax, S.csum};
    if ((rc = init_state(ctx, fn, ia, P.sym))) return rc;

    Block blk[3];
    const int nblk = blocks_of(P, blk, nullptr, nullptr);
    for (int64_t r0 = 0; r0 < P.B; r0 += tb)
        if ((rc = forward_row_tile(ctx, fn, P, S, blk, nblk, opt->beta, r0, P.B - r0 < tb ? P.B - r0 : tb, saved)))
            return rc;
    FinishArgs fa{P.B, P.ids, P.general, P.sym, (double)P.tau, (double)opt->tau_plus, (double)opt->beta,
                  S.m, S.a, S.w, S.n, S.cmax, S.csum, saved, per_query, total};
    ns_k_loss_finish<<<ns_blocks(P.B, kT), kT, 0, st>>>(fa);
    NS_CUDA_TRY(ctx, fn, cudaGetLastError());
    if (loss_dev) {
        ns_k_loss_mean<<<1, 32, 0, st>>>(total, P.B, loss_dev);
        NS_CUDA_TRY(ctx, fn, cudaGetLastError());
        return NS_OK;
    }
    const int *hf;
    if ((rc = ns_cuda_flags_read(ctx, fn, &hf))) return rc;
    *loss = (float)(*(const double *)(NS_CUDA_WIDE(hf) + W_TOTAL) / (double)P.B);
    return NS_OK;
}

}  // namespace

ns_status ns_cuda_infonce_forward(ns_context *ctx, const ns_infonce_inputs *in,
                                  const ns_loss_options *opt, float *loss, float *per_query,
                                  float *saved) {
    return forward(ctx, in, opt, loss, nullptr, per_query, saved);
}

ns_status ns_cuda_infonce_forward_device(ns_context *ctx, const ns_infonce_inputs *in,
                                         const ns_loss_options *opt, float *loss_dev,
                                         float *per_query, float *saved) {
    return forward(ctx, in, opt, nullptr, loss_dev, per_query, saved);
}
