// ns_sample_corpus on CUDA: the data checks in one pass each over the weights and the lists
// (one sync to read them back, skipped while capturing or with input checks off), the
// cumulative table (one thread per chunk, the chunk prefix in one thread, then the add), and
// one thread per query running ns_wt_draw_query — the functions of
// src/hostdevice/ns_weighted_math.h that the CPU backend runs too, so the draws are the same.
#include "cuda_util.cuh"
#include "ns_cuda.h"
#include "ns_weighted_math.h"

namespace {

constexpr unsigned long long kNone = ~0ull;

struct WtStatus {
    unsigned long long bad_weight;  // lowest row with a negative, NaN or Inf weight
    unsigned long long positive;    // 1 when some weight is > 0
    unsigned int lmax_key;          // the ordered key of max alpha·log w over positive rows
    unsigned int pad;
    unsigned long long bad_offset;  // lowest i + 1 with offsets[i+1] < offsets[i];
                                    // 0: offsets[0] != 0
    unsigned long long bad_id;      // lowest position of an id outside [0, N)
    long long total_ids;            // offsets[B]
};

// Floats ordered as unsigned ints (larger float → larger key).
__device__ __host__ inline unsigned int float_key(float f) {
    unsigned int b = ns_float_bits(f);
    return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}
__device__ __host__ inline float key_float(unsigned int k) {
    return ns_bits_float((k & 0x80000000u) ? (k & 0x7fffffffu) : ~k);
}

__global__ void k_wt_init(WtStatus *s) {
    s->bad_weight = kNone;
    s->positive = 0;
    s->lmax_key = float_key(-INFINITY);
    s->pad = 0;
    s->bad_offset = kNone;
    s->bad_id = kNone;
    s->total_ids = 0;
}

__global__ void k_wt_check_weights(const float *w, int64_t N, float alpha, WtStatus *s) {
    for (int64_t r = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; r < N;
         r += (int64_t)gridDim.x * blockDim.x) {
        const float x = w[r];
        if (!(x >= 0.0f) || isinf(x)) {
            atomicMin(&s->bad_weight, (unsigned long long)r);
        } else if (x > 0.0f) {
            if (s->positive == 0) atomicOr(&s->positive, 1ull);
            atomicMax(&s->lmax_key, float_key(ns_wt_logw(x, alpha)));
        }
    }
}

__global__ void k_wt_check_lists(const int64_t *off, const int64_t *ids, int64_t B, int64_t N,
                                 WtStatus *s) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < B;
         i += (int64_t)gridDim.x * blockDim.x) {
        if (i == 0 && off[0] != 0) atomicMin(&s->bad_offset, 0ull);
        if (i == B - 1) s->total_ids = off[B];
        const int64_t a = off[i], b = off[i + 1];
        if (b < a) {
            atomicMin(&s->bad_offset, (unsigned long long)(i + 1));
            continue;
        }
        if (!ids || a < 0) continue;
        for (int64_t j = a; j < b; j++)
            if (ids[j] < 0 || ids[j] >= N) {
                atomicMin(&s->bad_id, (unsigned long long)j);
                break;
            }
    }
}

__global__ void k_wt_chunks(const float *w, int64_t N, int64_t chunks, float alpha,
                            const WtStatus *s, double *cum, double *pre) {
    const float lmax = key_float(s->lmax_key);
    for (int64_t c = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; c < chunks;
         c += (int64_t)gridDim.x * blockDim.x) {
        const int64_t r0 = c * NS_WT_CHUNK, r1 = r0 + NS_WT_CHUNK < N ? r0 + NS_WT_CHUNK : N;
        pre[c + 1] = ns_wt_chunk_scan(w, r0, r1, alpha, lmax, cum);
    }
}

__global__ void k_wt_prefix(int64_t chunks, double *pre) {
    if (blockIdx.x != 0 || threadIdx.x != 0) return;
    pre[0] = 0.0;
    for (int64_t c = 0; c < chunks; c++) pre[c + 1] = ns_dadd(pre[c], pre[c + 1]);
}

__global__ void k_wt_add(int64_t N, const double *pre, double *cum) {
    for (int64_t r = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; r < N;
         r += (int64_t)gridDim.x * blockDim.x)
        cum[r] = ns_dadd(pre[r / NS_WT_CHUNK], cum[r]);
}

struct DrawArgs {
    const double *cum;
    const float *w;
    float alpha;
    const WtStatus *s;
    int64_t N, B, m;
    const int64_t *off, *ids;
    uint64_t seed, step;
    int64_t query_offset;
    int64_t *index, *count;
};

__global__ void k_wt_draw(DrawArgs a) {
    const float lmax = a.w ? key_float(a.s->lmax_key) : 0.0f;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < a.B;
         i += (int64_t)gridDim.x * blockDim.x) {
        const int64_t *ex = a.off ? a.ids + a.off[i] : nullptr;
        const int64_t nex = a.off ? a.off[i + 1] - a.off[i] : 0;
        a.count[i] = ns_wt_draw_query(a.cum, a.w, a.alpha, lmax, a.N, ex, nex, a.seed, a.step,
                                      a.query_offset + i, a.m, a.index + i * a.m);
    }
}

struct WtPlan {
    int64_t N, chunks;
    WtStatus *s;
    double *cum, *pre;
};

void wt_layout(void *plan, ns_arena *a) {
    WtPlan *p = (WtPlan *)plan;
    p->s = (WtStatus *)ns_arena_carve(a, sizeof(WtStatus));
    p->cum = (double *)ns_arena_carve(a, (size_t)p->N * sizeof(double));
    p->pre = (double *)ns_arena_carve(a, (size_t)(p->chunks + 1) * sizeof(double));
}

}  // namespace

ns_status ns_cuda_sample_corpus(ns_context *ctx, const ns_corpus_weights *cw,
                                const ns_id_lists *exclude, const ns_corpus_sampler_options *o,
                                int64_t queries, int64_t m, int64_t *index, int64_t *count) {
    static const char *fn = "ns_sample_corpus";
    const int64_t N = cw->rows, B = queries;
    const float *w = cw->weight;
    cudaStream_t st = ns_stream(ctx);
    ns_status rc;
    WtPlan p = {N, (N + NS_WT_CHUNK - 1) / NS_WT_CHUNK, nullptr, nullptr, nullptr};
    if (!w) p.N = 0, p.chunks = 0;
    if ((rc = ns_arena_lay_out(ctx, &ctx->cuda->scratch, wt_layout, &p, fn))) return rc;

    k_wt_init<<<1, 1, 0, st>>>(p.s);
    if (w) k_wt_check_weights<<<ns_blocks(N), NS_CUDA_THREADS, 0, st>>>(w, N, o->alpha, p.s);
    const int64_t *off = exclude ? exclude->offsets : nullptr;
    const int64_t *ids = exclude ? exclude->ids : nullptr;
    if (off) k_wt_check_lists<<<ns_blocks(B), NS_CUDA_THREADS, 0, st>>>(off, ids, B, N, p.s);
    NS_CUDA_TRY(ctx, fn, cudaGetLastError());
    if (ns_cuda_validating(ctx)) {
        WtStatus h;
        NS_CUDA_TRY(ctx, fn, cudaMemcpyAsync(&h, p.s, sizeof h, cudaMemcpyDeviceToHost, st));
        NS_CUDA_TRY(ctx, fn, cudaStreamSynchronize(st));
        if (off && h.bad_offset == 0) {
            int64_t v = 0;
            NS_CUDA_TRY(ctx, fn, cudaMemcpy(&v, off, sizeof v, cudaMemcpyDeviceToHost));
            return ns_fail(ctx, NS_ERR_INVALID_ARGUMENT, "%s: exclude->offsets[0] (%lld) must be 0",
                           fn, (long long)v);
        }
        if (off && h.bad_offset != kNone) {
            const int64_t i = (int64_t)h.bad_offset;
            int64_t v[2] = {0, 0};
            NS_CUDA_TRY(ctx, fn, cudaMemcpy(v, off + i - 1, sizeof v, cudaMemcpyDeviceToHost));
            return ns_fail(ctx, NS_ERR_INVALID_ARGUMENT,
                           "%s: exclude->offsets[%lld] (%lld) is below offsets[%lld] (%lld)", fn,
                           (long long)i, (long long)v[1], (long long)(i - 1), (long long)v[0]);
        }
        if (off && h.total_ids > 0 && !ids)
            return ns_fail(ctx, NS_ERR_INVALID_ARGUMENT,
                           "%s: exclude->ids is NULL but offsets[%lld] is %lld", fn, (long long)B,
                           (long long)h.total_ids);
        if (off && h.bad_id != kNone) {
            int64_t v = 0;
            NS_CUDA_TRY(ctx, fn, cudaMemcpy(&v, ids + h.bad_id, sizeof v, cudaMemcpyDeviceToHost));
            return ns_fail(ctx, NS_ERR_INVALID_ARGUMENT,
                           "%s: exclude->ids[%lld] (%lld) is not a corpus row in [0, %lld)", fn,
                           (long long)h.bad_id, (long long)v, (long long)N);
        }
        if (w && h.bad_weight != kNone) {
            float v = 0;
            NS_CUDA_TRY(ctx, fn,
                        cudaMemcpy(&v, w + h.bad_weight, sizeof v, cudaMemcpyDeviceToHost));
            return ns_fail(ctx, isfinite(v) ? NS_ERR_INVALID_ARGUMENT : NS_ERR_NONFINITE,
                           "%s: w->weight[%lld] (%g) must be finite and >= 0", fn,
                           (long long)h.bad_weight, (double)v);
        }
        if (w && !h.positive)
            return ns_fail(ctx, NS_ERR_INVALID_ARGUMENT,
                           "%s: w->weight has no positive entry (all %lld rows are 0)", fn,
                           (long long)N);
    }
    if (w) {
        k_wt_chunks<<<ns_blocks(p.chunks, 64), 64, 0, st>>>(w, N, p.chunks, o->alpha, p.s, p.cum,
                                                            p.pre);
        k_wt_prefix<<<1, 1, 0, st>>>(p.chunks, p.pre);
        k_wt_add<<<ns_blocks(N), NS_CUDA_THREADS, 0, st>>>(N, p.pre, p.cum);
    }
    DrawArgs a;
    a.cum = w ? p.cum : nullptr, a.w = w, a.alpha = o->alpha, a.s = p.s;
    a.N = N, a.B = B, a.m = m, a.off = off, a.ids = ids;
    a.seed = o->seed, a.step = o->step, a.query_offset = o->query_offset;
    a.index = index, a.count = count;
    k_wt_draw<<<ns_blocks(B, 64), 64, 0, st>>>(a);
    NS_CUDA_TRY(ctx, fn, cudaGetLastError());
    return NS_OK;
}
