// The step's random + hard mixing on CUDA (rules: src/hostdevice/ns_step_mix.h; the CPU side is
// src/cpu/cpu_step_mix.c). Ordered on the context's stream, no synchronisation, no allocation.
#include "cuda_util.cuh"
#include "ns_cuda.h"
#include "ns_step_mix.h"

namespace {

__global__ void ns_k_mix_mask(int64_t n, int64_t C, const uint8_t *keep, const int64_t *cand_id,
                              int64_t lo, int64_t hi, const int64_t *drop, int64_t ndrop,
                              uint8_t *out) {
    for (int64_t t = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; t < n;
         t += (int64_t)gridDim.x * blockDim.x)
        out[t] = ns_mix_eligible(keep, cand_id, C, lo, hi, drop, ndrop, t);
}

// One thread per query: its row of h + hr ids and their count.
__global__ void ns_k_mix_merge(int64_t B, const int64_t *hard, int64_t h, const int64_t *rnd,
                               int64_t hr, int64_t *id, int64_t *count) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < B;
         i += (int64_t)gridDim.x * blockDim.x)
        count[i] = ns_mix_merge_row(hard, h, rnd, hr, i, id);
}

}  // namespace

ns_status ns_cuda_step_mix_mask(ns_context *ctx, int64_t B, int64_t C, const uint8_t *keep,
                                const int64_t *cand_id, int64_t lo, int64_t hi,
                                const int64_t *drop, int64_t ndrop, uint8_t *out) {
    const int64_t n = B * C;
    if (n == 0) return NS_OK;
    ns_k_mix_mask<<<ns_blocks(n), NS_CUDA_THREADS, 0, ns_stream(ctx)>>>(n, C, keep, cand_id, lo,
                                                                        hi, drop, ndrop, out);
    NS_CUDA_TRY(ctx, "ns_step_forward", cudaGetLastError());
    return NS_OK;
}

ns_status ns_cuda_step_mix_merge(ns_context *ctx, int64_t B, const int64_t *hard, int64_t h,
                                 const int64_t *rnd, int64_t hr, int64_t *id, int64_t *count) {
    if (B == 0) return NS_OK;
    ns_k_mix_merge<<<ns_blocks(B), NS_CUDA_THREADS, 0, ns_stream(ctx)>>>(B, hard, h, rnd, hr, id,
                                                                         count);
    NS_CUDA_TRY(ctx, "ns_step_forward", cudaGetLastError());
    return NS_OK;
}
