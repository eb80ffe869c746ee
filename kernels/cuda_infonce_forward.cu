// ns_infonce_forward on CUDA: a logit tile from one cuBLAS GEMM (tensor cores for f16/bf16,
// FP32 for f32) into a fixed-size workspace tile, then one block per query row folds the tile
// into the row's online statistics (running max m of the negatives, A = Σ e^{(1+β)(x−m)},
// W = Σ e^{β(x−m)}, in double) and, when symmetric, a block per tile of 32 positive-passage
// columns (its rows split over 8 thread rows, combined in a fixed order) folds it into the
// column statistics; one thread per query finishes its row (ns_loss_row_finish,
// src/hostdevice/ns_loss_math.h) and the loss is summed on the device — per-block partials
// added in a fixed order, no float atomics, so the bits do not depend on block scheduling —
// and read back with one sync.
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
        const float v = x[c] + ns_loss_group_adj(&a.ids, a.kind, i, pos, a.j0 + c);
        if (v > tmax) tmax = v;
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
        float e = (x[c] + ns_loss_group_adj(&a.ids, a.kind, i, pos, a.j0 + c)) - mn;
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

// The symmetric column statistics (column_update of the CPU forward): a block per tile of kCW
// positive-passage columns, its threads kCR rows of kCW columns (adjacent threads read adjacent
// columns of a row); each thread takes every kCR-th row of the tile, the kCR partial maxima and
// sums of a column are combined in row-slice order, and the tile's maximum merges into the
// running (cmax, csum) by ns_loss_lse_rescale, as on the CPU.
constexpr int kCW = 32, kCR = kT / kCW;

__global__ void __launch_bounds__(kT) ns_k_loss_cols(ColArgs a) {
    __shared__ double sh[kCR][kCW];
    __shared__ double mn_s[kCW];
    const int tx = threadIdx.x % kCW, ty = threadIdx.x / kCW;
    const int64_t c = blockIdx.x * (int64_t)kCW + tx, j = a.j0 + c;
    const bool live = c < a.nc && a.ispos[j];
    const int64_t pj = live ? ns_loss_passage_id(&a.ids, j) : 0;
    double t = -INFINITY;
    if (live)
        for (int64_t k = ty; k < a.nb; k += kCR) {
            const float v = ns_loss_col_logit(&a.ids, a.r0 + k, a.ids.posid[a.r0 + k], pj, j,
                                              a.x[k * a.ldx + c]);
            if (v > t) t = v;
        }
    sh[ty][tx] = t;
    __syncthreads();
    if (ty == 0) {
        for (int r = 1; r < kCR; r++) t = sh[r][tx] > t ? sh[r][tx] : t;
        if (live) {
            double m = a.cmax[j], s = a.csum[j];
            ns_loss_lse_rescale(&m, &s, t);
            a.cmax[j] = m;
            a.csum[j] = s;
            mn_s[tx] = m;
        }
    }
    __syncthreads();
    t = 0.0;
    if (live && mn_s[tx] != -INFINITY) {
        const double mn = mn_s[tx];
        for (int64_t k = ty; k < a.nb; k += kCR) {
            const float v = ns_loss_col_logit(&a.ids, a.r0 + k, a.ids.posid[a.r0 + k], pj, j,
                                              a.x[k * a.ldx + c]);
            if (v != -INFINITY) t += (double)expf((float)((double)v - mn));
        }
    }
    __syncthreads();  // every thread 0 row has read sh before it is reused
    sh[ty][tx] = t;
    __syncthreads();
    if (ty == 0 && live) {
        for (int r = 1; r < kCR; r++) t += sh[r][tx];
        a.csum[j] += t;
    }
}

// The positive logits of rows [r0, r0+nb) in passage columns [j0, j0+nc) of tile x (what
// ns_k_loss_rows saves at a positive column): the fused symmetric call's column pass.
__global__ void ns_k_loss_lpos(const float *x, int64_t ldx, int64_t nb, int64_t j0, int64_t nc, int64_t r0,
                               ns_loss_ids ids, float *saved) {
    for (int64_t k = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; k < nb; k += (int64_t)gridDim.x * blockDim.x) {
        const int64_t pos = ns_loss_positive(&ids, r0 + k);
        if (pos >= j0 && pos < j0 + nc) saved[(r0 + k) * kSaved + NS_SAVED_LPOS] = x[k * ldx + pos - j0];
    }
}

// Every query's symmetric column log-sum-exp (the value ns_k_loss_finish saves) from complete
// column statistics and its positive logit.
__global__ void ns_k_loss_collse(int64_t B, ns_loss_ids ids, const double *cmax, const double *csum,
                                 float *saved) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < B; i += (int64_t)gridDim.x * blockDim.x) {
        float *sv = saved + i * kSaved;
        const int64_t j = ns_loss_positive(&ids, i);
        sv[NS_SAVED_COLLSE] = (float)ns_loss_column_lse(cmax[j], csum[j], sv[NS_SAVED_LPOS], ids.same);
    }
}

struct FinishArgs {
    int64_t i0, i1;  // the rows [i0, i1) to finish
    ns_loss_ids ids;
    int general, sym;
    double tau, tau_plus, beta;
    const float *m;
    const double *a, *w;
    const int64_t *n;
    const double *cmax, *csum;
    float *saved, *per_query;
    double *part;
};

// One thread per query: the row finish and the symmetric term (ns_loss_math.h); each block's
// sum of its losses goes to f.part[block] (ns_k_loss_reduce adds them in a fixed order; NULL:
// only the saved statistics are wanted). Finishing a row again gives the same bits.
__global__ void __launch_bounds__(kT) ns_k_loss_finish(FinishArgs f) {
    __shared__ double shd[kT / 32];
    double acc = 0.0;
    for (int64_t i = f.i0 + blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < f.i1;
         i += (int64_t)gridDim.x * blockDim.x) {
        double L;
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
        acc += L;
    }
    double s = ns_block_reduce<kT>(acc, NsSumD(), shd);
    if (threadIdx.x == 0 && f.part) f.part[blockIdx.x] = s;
}

}  // namespace

namespace nsloss {

ns_status forward_tile(ns_context *ctx, const char *fn, const Plan &P, const State &S, const Block &bk,
                       float beta, int64_t r0, int64_t nb, int64_t j0, int64_t nc, float *x, int what,
                       float *saved) {
    cudaStream_t st = ns_stream(ctx);
    ns_status rc;
    if ((rc = ns_cuda_gemm(ctx, fn, 0, 1, nb, nc, P.d, P.inv_tau, row_ptr(P.q, r0, P.es), P.t, P.q.ld,
                           row_ptr(bk.v, j0, P.es), P.t, bk.v.ld, 0.0f, x, nc)))
        return rc;
    if ((what & kTileColumns) && P.sym && bk.kind == NS_BLK_PASSAGE) {
        ColArgs ca{x, nc, nb, nc, j0, r0, P.ids, S.ispos, S.cmax, S.csum};
        ns_k_loss_cols<<<ns_blocks(nc, kCW), kT, 0, st>>>(ca);
        NS_CUDA_TRY(ctx, fn, cudaGetLastError());
    }
    if (what & kTileRows) {
        RowArgs ra{x, nc, nc, j0, r0, bk.kind, P.ids, beta, S.m, S.a, S.w, S.n, saved};
        ns_k_loss_rows<<<(unsigned)nb, kT, 0, st>>>(ra);
    } else if (bk.kind == NS_BLK_PASSAGE) {
        ns_k_loss_lpos<<<ns_blocks(nb), NS_CUDA_THREADS, 0, st>>>(x, nc, nb, j0, nc, r0, P.ids, saved);
    }
    NS_CUDA_TRY(ctx, fn, cudaGetLastError());
    return NS_OK;
}

ns_status column_lse(ns_context *ctx, const char *fn, const Plan &P, const State &S, float *saved) {
    ns_k_loss_collse<<<ns_blocks(P.B), NS_CUDA_THREADS, 0, ns_stream(ctx)>>>(P.B, P.ids, S.cmax, S.csum, saved);
    NS_CUDA_TRY(ctx, fn, cudaGetLastError());
    return NS_OK;
}

ns_status forward_own_hard(ns_context *ctx, const char *fn, const Plan &P, const State &S, float beta,
                           int64_t r0, int64_t nb, float *x, float *saved) {
    ns_status rc;
    // Per query k of the tile: its h logits = q_k · H_kᵀ / τ.
    if ((rc = ns_cuda_gemm_batched(ctx, fn, 0, 1, 1, P.h, P.d, P.inv_tau, row_ptr(P.q, r0, P.es), P.q.ld,
                                   P.q.ld, row_ptr(P.hd, r0 * P.h, P.es), P.hd.ld, P.h * P.hd.ld, P.t,
                                   0.0f, x, P.h, P.h, nb)))
        return rc;
    RowArgs ra{x, P.h, P.h, 0, r0, NS_BLK_OWN, P.ids, beta, S.m, S.a, S.w, S.n, saved};
    ns_k_loss_rows<<<(unsigned)nb, kT, 0, ns_stream(ctx)>>>(ra);
    NS_CUDA_TRY(ctx, fn, cudaGetLastError());
    return NS_OK;
}

ns_status finish_rows(ns_context *ctx, const char *fn, const Plan &P, const State &S,
                      const ns_loss_options *o, int64_t i0, int64_t n, float *saved, float *per_query,
                      double *total) {
    FinishArgs fa{i0, i0 + n, P.ids, P.general, P.sym, (double)P.tau, (double)o->tau_plus, (double)o->beta,
                  S.m, S.a, S.w, S.n, S.cmax, S.csum, saved, per_query, total ? S.part : nullptr};
    const unsigned nfb = ns_blocks(n, kT) < (unsigned)kMaxPartials ? ns_blocks(n, kT) : kMaxPartials;
    ns_k_loss_finish<<<nfb, kT, 0, ns_stream(ctx)>>>(fa);
    NS_CUDA_TRY(ctx, fn, cudaGetLastError());
    return total ? reduce_partials(ctx, fn, S.part, nfb, 1, total) : NS_OK;
}

}  // namespace nsloss

namespace {

// One row tile [r0, r0+nb): a GEMM logit tile per tile of every shared block, folded into the
// column statistics (symmetric passages) and the row statistics; then the own hard negatives by
// one batched GEMM.
ns_status forward_row_tile(ns_context *ctx, const char *fn, const Plan &P, const State &S,
                           const Block *blk, int nblk, float beta, int64_t r0, int64_t nb, float *saved) {
    ns_status rc;
    for (int b = 0; b < nblk; b++)
        for (int64_t j0 = 0; j0 < blk[b].rows; j0 += S.tn)
            if ((rc = forward_tile(ctx, fn, P, S, blk[b], beta, r0, nb, j0,
                                   blk[b].rows - j0 < S.tn ? blk[b].rows - j0 : S.tn, S.tile,
                                   kTileColumns | kTileRows, saved)))
                return rc;
    return P.own_hard ? forward_own_hard(ctx, fn, P, S, beta, r0, nb, S.htile, saved) : NS_OK;
}

// The mean loss as a device float: *out = total / B (the sum ns_k_loss_finish left in the
// status words), before any later op resets them.
__global__ void ns_k_loss_mean(const double *total, int64_t B, float *out) {
    if (blockIdx.x == 0 && threadIdx.x == 0) *out = (float)(*total / (double)B);
}

}  // namespace

ns_status nsloss::loss_mean(ns_context *ctx, const char *fn, const double *total, int64_t B, float *out) {
    ns_k_loss_mean<<<1, 32, 0, ns_stream(ctx)>>>(total, B, out);
    NS_CUDA_TRY(ctx, fn, cudaGetLastError());
    return NS_OK;
}

// loss (host float: one synchronisation, refused while capturing) or loss_dev (device float:
// no synchronisation), exactly one of them non-NULL; fn names the public function.
ns_status nsloss::forward_call(ns_context *ctx, const char *fn, const ns_infonce_inputs *in,
                               const ns_loss_options *opt, float *loss, float *loss_dev,
                               float *per_query, float *saved) {
    if (loss && ns_cuda_capturing(ctx))
        return ns_fail(ctx, NS_ERR_UNSUPPORTED,
                       "%s: loss is a host float and needs a synchronisation, which a stream being "
                       "captured into a CUDA graph cannot do",
                       fn);
    Plan P;
    State S{};
    ns_status rc;
    if ((rc = plan_init(ctx, fn, in, opt, &P))) return rc;
    if ((rc = setup(ctx, fn, in, P, S))) return rc;
    const int64_t tb = S.tb;
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
    if ((rc = finish_rows(ctx, fn, P, S, opt, 0, P.B, saved, per_query, total))) return rc;
    if (loss_dev) return loss_mean(ctx, fn, total, P.B, loss_dev);
    const int *hf;
    if ((rc = ns_cuda_flags_read(ctx, fn, &hf))) return rc;
    *loss = (float)(*(const double *)(NS_CUDA_WIDE(hf) + W_TOTAL) / (double)P.B);
    return NS_OK;
}

ns_status ns_cuda_infonce_forward(ns_context *ctx, const ns_infonce_inputs *in,
                                  const ns_loss_options *opt, float *loss, float *per_query,
                                  float *saved) {
    return forward_call(ctx, "ns_infonce_forward", in, opt, loss, nullptr, per_query, saved);
}

ns_status ns_cuda_infonce_forward_device(ns_context *ctx, const ns_infonce_inputs *in,
                                         const ns_loss_options *opt, float *loss_dev,
                                         float *per_query, float *saved) {
    return forward_call(ctx, "ns_infonce_forward", in, opt, nullptr, loss_dev, per_query, saved);
}
