// The training step's stages on CUDA (declared in kernels/ns_cuda.h; src/cpu/cpu_step.c is the
// CPU side): candidate scores, the gather of the sampled candidate rows and the scatter of their
// gradients back. All ordered on
// the context's stream, no synchronisation, no allocation.
#include "cuda_util.cuh"
#include "ns_cuda.h"

namespace {

// score[t] = q_{t / C} · cand_t for t < B·C, then positive_score[i] = q_i · pos_i for the B outputs
// after them. Each dot product is summed sequentially over the columns with separately rounded
// products and sums — the CPU step's order (src/cpu/cpu_step.c, dot_f32 under -ffp-contract=off) — so
// the scores, and the filter and sampler decisions taken from them, are bit-identical on both
// backends. A warp owns 32 outputs; it stages 32×32 blocks of the rows in shared memory
// (coalesced loads) and each lane then sums its own row's block in order.
constexpr int kScoreWarps = 4;
__global__ void __launch_bounds__(kScoreWarps * 32) ns_k_step_scores(ns_matrix q, ns_matrix pos,
                                                                     ns_matrix cand, int64_t C,
                                                                     float *score, float *positive_score) {
    __shared__ float qs[kScoreWarps][32][33], cs[kScoreWarps][32][33];
    const int lane = threadIdx.x & 31, wib = threadIdx.x >> 5;
    const int64_t nc = score ? cand.rows : 0, total = nc + (positive_score ? q.rows : 0);
    const int64_t d = q.cols, ldq = ns_ld_d(q);
    const int64_t groups = (total + 31) / 32, nwarps = (int64_t)gridDim.x * kScoreWarps;
    for (int64_t g = blockIdx.x * (int64_t)kScoreWarps + wib; g < groups; g += nwarps) {
        const int64_t t = g * 32 + lane;  // this lane's output
        float s = 0.0f;
        for (int64_t c0 = 0; c0 < d; c0 += 32) {
            const int64_t w = d - c0 < 32 ? d - c0 : 32;
            // Row r of the group: its query row and its other row, element c0 + lane.
            for (int r = 0; r < 32; r++) {
                const int64_t tr = g * 32 + r;
                if (tr >= total || lane >= w) continue;
                const bool is_pos = tr >= nc;
                const int64_t i = is_pos ? tr - nc : tr / C;
                const ns_matrix &o = is_pos ? pos : cand;
                const int64_t orow = is_pos ? i : tr;
                qs[wib][r][lane] = ns_load_f32(q.data, q.dtype, (size_t)(i * ldq + c0 + lane));
                cs[wib][r][lane] = ns_load_f32(o.data, o.dtype, (size_t)(orow * ns_ld_d(o) + c0 + lane));
            }
            __syncwarp();
            if (t < total)
                for (int e = 0; e < w; e++) s = __fadd_rn(s, __fmul_rn(qs[wib][lane][e], cs[wib][lane][e]));
            __syncwarp();
        }
        if (t < total) {
            if (t >= nc) positive_score[t - nc] = s;
            else score[t] = s;
        }
    }
}

// One warp per chosen negative (i, r): the first slot j of query i that the filter kept
// (slot_keep; NULL = all) and whose id is the chosen id — the copy the sampler drew — then its
// row copied in cand's dtype, es bytes an element (zeros, keep 0, row −1 for padding or an id
// not found).
template <class T>
__global__ void ns_k_step_gather(ns_matrix cand, int64_t C, const int64_t *cand_id,
                                 const uint8_t *slot_keep, const int64_t *chosen, int64_t B,
                                 int64_t h, T *hard, uint8_t *keep, int64_t *row) {
    const int lane = threadIdx.x & 31;
    const int64_t warps = ((int64_t)gridDim.x * blockDim.x) >> 5;
    const int64_t d = cand.cols, ld = ns_ld_d(cand);
    const T *data = (const T *)cand.data;
    for (int64_t t = (blockIdx.x * (int64_t)blockDim.x + threadIdx.x) >> 5; t < B * h; t += warps) {
        const int64_t i = t / h, id = chosen[t];
        int64_t found = -1;
        if (id >= 0)
            for (int64_t j0 = 0; j0 < C && found < 0; j0 += 32) {
                const int64_t j = j0 + lane;
                const bool hit = j < C && (!slot_keep || slot_keep[i * C + j]) &&
                                 (cand_id ? cand_id[i * C + j] : j) == id;
                const unsigned m = __ballot_sync(0xffffffffu, hit);
                if (m) found = j0 + __ffs(m) - 1;
            }
        const int64_t src = found >= 0 ? i * C + found : -1;
        T *dst = hard + t * d;
        for (int64_t e = lane; e < d; e += 32) dst[e] = src >= 0 ? data[src * ld + e] : T(0);
        if (lane == 0) {
            keep[t] = src >= 0;
            row[t] = src;
        }
    }
}

__global__ void ns_k_step_scatter(int64_t dim, const float *grad_hard, const int64_t *row,
                                  int64_t nrow, float *grad_cand) {
    const int64_t n = nrow * dim;
    for (int64_t e = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; e < n; e += (int64_t)gridDim.x * blockDim.x) {
        const int64_t r = e / dim, c = e - r * dim, dst = row[r];
        if (dst >= 0) atomicAdd(grad_cand + dst * dim + c, grad_hard[e]);
    }
}

// The step's ids (ns_cuda_step_ids): one thread per element, no host staging.
__global__ void ns_k_step_ids(int64_t B, int64_t C, int64_t query_offset, int64_t *pos_offsets,
                              int64_t *pos_ids, int64_t *cand_ids) {
    const int64_t n = B * C > B + 1 ? B * C : B + 1;
    for (int64_t t = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; t < n; t += (int64_t)gridDim.x * blockDim.x) {
        if (t <= B) pos_offsets[t] = t;
        if (pos_ids && t < B) pos_ids[t] = query_offset + t;
        if (cand_ids && t < B * C) cand_ids[t] = query_offset * C + t;
    }
}

}  // namespace

ns_status ns_cuda_step_ids(ns_context *ctx, int64_t B, int64_t C, int64_t query_offset,
                           int64_t *pos_offsets, int64_t *pos_ids, int64_t *cand_ids) {
    static const char *fn = "ns_step_forward";
    const int64_t n = B * C > B + 1 ? B * C : B + 1;
    ns_k_step_ids<<<ns_blocks(n), NS_CUDA_THREADS, 0, ns_stream(ctx)>>>(B, C, query_offset, pos_offsets,
                                                                        pos_ids, cand_ids);
    NS_CUDA_TRY(ctx, fn, cudaGetLastError());
    return NS_OK;
}

ns_status ns_cuda_step_check_batch(ns_context *ctx, const ns_batch *batch) {
    (void)ctx;
    (void)batch;
    return NS_OK;
}

ns_status ns_cuda_step_scores(ns_context *ctx, ns_matrix q, ns_matrix pos, ns_matrix cand,
                              int64_t per_query, float *score, float *positive_score) {
    static const char *fn = "ns_step_forward";
    if (cand.rows == 0) score = nullptr;
    const int64_t outputs = (score ? cand.rows : 0) + (positive_score ? q.rows : 0);
    if (outputs == 0) return NS_OK;
    ns_k_step_scores<<<ns_blocks((outputs + 31) / 32, kScoreWarps), kScoreWarps * 32, 0, ns_stream(ctx)>>>(
        q, pos, cand, per_query > 0 ? per_query : 1, score, positive_score);
    NS_CUDA_TRY(ctx, fn, cudaGetLastError());
    return NS_OK;
}

ns_status ns_cuda_step_gather(ns_context *ctx, ns_matrix cand, int64_t per_query,
                              const int64_t *cand_id, const uint8_t *slot_keep,
                              const int64_t *chosen_id, int64_t h, void *hard, uint8_t *keep,
                              int64_t *row) {
    static const char *fn = "ns_step_forward";
    const int64_t B = per_query > 0 ? cand.rows / per_query : 0;
    if (B * h == 0) return NS_OK;
    const unsigned grid = ns_blocks(B * h * 32);
    cudaStream_t st = ns_stream(ctx);
    // Elements are moved as raw 2- or 4-byte words: no conversion, so bf16/f16 stay exact.
    if (cand.dtype == NS_F32)
        ns_k_step_gather<uint32_t><<<grid, NS_CUDA_THREADS, 0, st>>>(
            cand, per_query, cand_id, slot_keep, chosen_id, B, h, (uint32_t *)hard, keep, row);
    else
        ns_k_step_gather<uint16_t><<<grid, NS_CUDA_THREADS, 0, st>>>(
            cand, per_query, cand_id, slot_keep, chosen_id, B, h, (uint16_t *)hard, keep, row);
    NS_CUDA_TRY(ctx, fn, cudaGetLastError());
    return NS_OK;
}

ns_status ns_cuda_step_scatter(ns_context *ctx, int64_t rows, int64_t dim, const float *grad_hard,
                               const int64_t *row, int64_t nrow, float *grad_cand) {
    static const char *fn = "ns_step_backward";
    cudaStream_t st = ns_stream(ctx);
    NS_CUDA_TRY(ctx, fn, cudaMemsetAsync(grad_cand, 0, (size_t)(rows * dim) * sizeof(float), st));
    if (nrow * dim == 0) return NS_OK;
    ns_k_step_scatter<<<ns_blocks(nrow * dim), NS_CUDA_THREADS, 0, st>>>(dim, grad_hard, row, nrow, grad_cand);
    NS_CUDA_TRY(ctx, fn, cudaGetLastError());
    return NS_OK;
}

namespace {
__global__ void ns_k_step_gather_ids(int64_t n, const int64_t *row, const int64_t *src, int64_t *dst) {
    for (int64_t r = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; r < n; r += (int64_t)gridDim.x * blockDim.x)
        dst[r] = row[r] >= 0 ? src[row[r]] : -1;
}
}  // namespace

ns_status ns_cuda_step_gather_ids(ns_context *ctx, int64_t n, const int64_t *row,
                                  const int64_t *src, int64_t *dst) {
    if (n == 0) return NS_OK;
    ns_k_step_gather_ids<<<ns_blocks(n), NS_CUDA_THREADS, 0, ns_stream(ctx)>>>(n, row, src, dst);
    NS_CUDA_TRY(ctx, "ns_step_forward", cudaGetLastError());
    return NS_OK;
}

namespace {
__global__ void ns_k_step_scale(int64_t n, const float *src, float scale, float *dst) {
    for (int64_t e = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; e < n; e += (int64_t)gridDim.x * blockDim.x)
        dst[e] = src[e] * scale;
}
}  // namespace

ns_status ns_cuda_step_scale(ns_context *ctx, int64_t n, const float *src, float scale, float *dst) {
    if (n == 0) return NS_OK;
    ns_k_step_scale<<<ns_blocks(n), NS_CUDA_THREADS, 0, ns_stream(ctx)>>>(n, src, scale, dst);
    NS_CUDA_TRY(ctx, "ns_step_backward", cudaGetLastError());
    return NS_OK;
}
