// The multi-rank loss's small device steps (src/comm_loss.c on a CUDA context): id arrays and
// the sums of its two loss terms, on ctx's stream, so that nothing of the loss goes through the
// host. Each computes what the CPU path's loop computes, in the same f32 operations.
#include "cuda_util.cuh"
#include "ns_cuda.h"

namespace {

__global__ void ns_k_offset_ids(int64_t *dst, const int64_t *src, int64_t n, int64_t add) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x)
        dst[i] = (src ? src[i] : i) + add;
}

// dst = dst + src (mean = 0) or 0.5·(dst + src) (mean = 1), f32 rounding of each operation.
__global__ void ns_k_combine(float *dst, const float *src, int64_t n, int mean) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x) {
        const float s = __fadd_rn(dst[i], src[i]);
        dst[i] = mean ? __fmul_rn(0.5f, s) : s;
    }
}

}  // namespace

ns_status ns_cuda_offset_ids(ns_context *ctx, int64_t *dst, const int64_t *src, int64_t n,
                             int64_t add) {
    if (n <= 0) return NS_OK;
    ns_k_offset_ids<<<ns_blocks(n), NS_CUDA_THREADS, 0, ns_stream(ctx)>>>(dst, src, n, add);
    NS_CUDA_TRY(ctx, "ns_comm_infonce", cudaGetLastError());
    return NS_OK;
}

ns_status ns_cuda_combine_f32(ns_context *ctx, float *dst, const float *src, int64_t n, int mean) {
    if (n <= 0) return NS_OK;
    ns_k_combine<<<ns_blocks(n), NS_CUDA_THREADS, 0, ns_stream(ctx)>>>(dst, src, n, mean);
    NS_CUDA_TRY(ctx, "ns_comm_infonce", cudaGetLastError());
    return NS_OK;
}
