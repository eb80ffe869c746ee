// Planted-fault kernels for the host execution layer's own tests (test_cuda_host.cpp). Written
// as CUDA C++ and rewritten by rewrite.py like kernels/*.cu; every fault here is one that the
// layer must report (or expose through wrong output) and that a real GPU might hide.
#include <math.h>

#include "fault_kernels.h"

namespace {

__global__ void k_reverse(const float *in, float *out, int n, int with_barrier) {
    __shared__ float s[1024];
    const int t = threadIdx.x;
    s[t] = in[t];
    if (with_barrier) __syncthreads();
    out[t] = s[n - 1 - t];
}

__device__ __forceinline__ bool before(float av, int ai, float bv, int bi) {
    return av > bv || (av == bv && ai < bi);
}
__device__ __forceinline__ int rank_in(const float *v, const int *ix, int n, float x, int xi) {
    int lo = 0, hi = n;
    while (lo < hi) {
        int mid = (lo + hi) >> 1;
        if (before(v[mid], ix[mid], x, xi)) lo = mid + 1;
        else hi = mid;
    }
    return lo;
}

// The pattern of the miner's former merge_collected (a shared-memory bitonic sort, as
// ns_bitonic_sort of kernels/cuda_primitives.cuh, then a merge-path merge) with switchable
// barriers: a fixture for the layer's race detection, not a copy of a current kernel.
__global__ void __launch_bounds__(256) k_bitonic_merge(const float *keys, int c, float *tv, int *ti, int k, int drop) {
    __shared__ float cv[2048];
    __shared__ int ci[2048];
    __shared__ float sv[2048];
    __shared__ int si[2048];
    for (int t = threadIdx.x; t < c; t += blockDim.x) {
        cv[t] = keys[t];
        ci[t] = t;
    }
    int p = 1;
    while (p < c) p <<= 1;
    for (int t = c + threadIdx.x; t < p; t += blockDim.x) {
        cv[t] = -INFINITY;
        ci[t] = 1 << 30;
    }
    __syncthreads();
    for (int size = 2; size <= p; size <<= 1) {
        for (int stride = size >> 1; stride > 0; stride >>= 1) {
            for (int t = threadIdx.x; t < (p >> 1); t += blockDim.x) {
                int i = 2 * t - (t & (stride - 1));
                int j = i + stride;
                bool up = (i & size) == 0;
                float a = cv[i], b = cv[j];
                int ai = ci[i], bi = ci[j];
                bool swap = up ? before(b, bi, a, ai) : before(a, ai, b, bi);
                if (swap) {
                    cv[i] = b, cv[j] = a;
                    ci[i] = bi, ci[j] = ai;
                }
            }
            if (drop != 1 || size != p || stride != 1) __syncthreads();
        }
    }
    const int p0 = rank_in(tv, ti, k, cv[0], ci[0]);
    for (int i = p0 + threadIdx.x; i < k; i += blockDim.x) {
        int pos = i + rank_in(cv, ci, c, tv[i], ti[i]);
        if (pos < k) sv[pos - p0] = tv[i], si[pos - p0] = ti[i];
    }
    for (int j = threadIdx.x; j < c; j += blockDim.x) {
        int pos = j + rank_in(tv, ti, k, cv[j], ci[j]);
        if (pos < k) sv[pos - p0] = cv[j], si[pos - p0] = ci[j];
    }
    if (drop != 2) __syncthreads();
    for (int i = p0 + threadIdx.x; i < k; i += blockDim.x) tv[i] = sv[i - p0], ti[i] = si[i - p0];
    __syncthreads();
}

__global__ void k_overrun(float *out, int n) {
    for (int i = threadIdx.x; i <= n; i += blockDim.x) out[i] = (float)i;  // planted: <= n
}

__global__ void k_dynamic_smem(float *out, int n) {
    extern __shared__ float dyn[];
    for (int i = threadIdx.x; i < n; i += blockDim.x) dyn[i] = 1.0f;
    __syncthreads();
    if (threadIdx.x == 0) {
        float s = 0;
        for (int i = 0; i < n; i++) s += dyn[i];
        out[0] = s;
    }
}

__global__ void k_uninit_shared(float *out) {
    __shared__ float s[256];
    out[threadIdx.x] = s[threadIdx.x];  // planted: never written
}

__global__ void k_early_exit(int *out, int quit) {
    if ((int)threadIdx.x < quit) return;  // planted: these threads skip the barrier
    __shared__ int v;
    if (threadIdx.x == blockDim.x - 1) v = 7;
    __syncthreads();
    out[threadIdx.x] = v;
}

__global__ void k_split_barrier(int *out) {
    if (threadIdx.x & 1) {
        __syncthreads();  // planted: odd threads here,
        out[threadIdx.x] = 1;
    } else {
        __syncthreads();  // even threads here
        out[threadIdx.x] = 2;
    }
}

__global__ void k_shfl_missing_lane(int *out) {
    const int lane = threadIdx.x & 31;
    if (lane == 5) return;  // planted: lane 5 leaves the warp
    int v = lane;
    for (int o = 16; o; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    out[threadIdx.x] = v;
}

__global__ void k_warp_ops(const int *in, int *out) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    int v = in[threadIdx.x];
    int x = v;
    for (int o = 16; o; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
    int d = v;
    for (int o = 16; o; o >>= 1) d += __shfl_down_sync(0xffffffffu, d, o);
    int u = __shfl_up_sync(0xffffffffu, v, 1);
    int b = __shfl_sync(0xffffffffu, v, 31 - lane);
    unsigned ballot = __ballot_sync(0xffffffffu, v & 1);
    int any = __any_sync(0xffffffffu, v > 1000), all = __all_sync(0xffffffffu, v >= 0);
    __syncwarp();
    int cnt = __syncthreads_count(v & 1);
    int orr = __syncthreads_or(v == 5), andd = __syncthreads_and(v >= 0);
    // out: 8 words per thread
    int *o = out + threadIdx.x * 8;
    o[0] = x;                            // warp sum in every lane
    o[1] = lane == 0 ? d : -1;           // warp sum in lane 0
    o[2] = u;                            // v of lane − 1 (own v in lane 0)
    o[3] = b;                            // v of lane 31 − lane
    o[4] = (int)ballot;                  // odd lanes' bits
    o[5] = any * 2 + all;
    o[6] = cnt;                          // odd values in the block
    o[7] = orr * 2 + andd + warp * 0;
}

__global__ void k_struct_arg(faults::Holder h, float *out) {
    for (int i = threadIdx.x; i < h.n; i += blockDim.x) out[i] = h.x[i] * 2;
}

__global__ void k_empty() {}

__global__ void k_fill(float *out, int n, float value) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) out[i] = value;
}

}  // namespace

namespace faults {

__global__ void k_run_order(int *counter, int *out) {
    out[atomicAdd(counter, 1)] = (int)(blockIdx.x * blockDim.x + threadIdx.x);
}
cudaError_t run_order(int *counter, int *out, int blocks, int threads, cudaStream_t s) {
    k_run_order<<<blocks, threads, 0, s>>>(counter, out);
    return cudaGetLastError();
}
cudaError_t reverse(const float *in, float *out, int n, int with_barrier, cudaStream_t s) {
    k_reverse<<<1, n, 0, s>>>(in, out, n, with_barrier);
    return cudaGetLastError();
}
cudaError_t bitonic_merge(const float *keys, int n, float *list_v, int *list_i, int k, int drop, cudaStream_t s) {
    k_bitonic_merge<<<1, 256, 0, s>>>(keys, n, list_v, list_i, k, drop);
    return cudaGetLastError();
}
cudaError_t overrun(float *out, int n, cudaStream_t s) {
    k_overrun<<<1, 128, 0, s>>>(out, n);
    return cudaGetLastError();
}
cudaError_t dynamic_smem(float *out, size_t bytes, int opt_in, cudaStream_t s) {
    if (opt_in) {
        cudaError_t e = cudaFuncSetAttribute(k_dynamic_smem, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes);
        if (e != cudaSuccess) return e;
    }
    k_dynamic_smem<<<2, 256, bytes, s>>>(out, (int)(bytes / sizeof(float)));
    return cudaGetLastError();
}
cudaError_t uninit_shared(float *out, cudaStream_t s) {
    k_uninit_shared<<<1, 256, 0, s>>>(out);
    return cudaGetLastError();
}
cudaError_t early_exit(int *out, int threads, int quit, cudaStream_t s) {
    k_early_exit<<<1, threads, 0, s>>>(out, quit);
    return cudaGetLastError();
}
cudaError_t split_barrier(int *out, cudaStream_t s) {
    k_split_barrier<<<1, 64, 0, s>>>(out);
    return cudaGetLastError();
}
cudaError_t shfl_missing_lane(int *out, cudaStream_t s) {
    k_shfl_missing_lane<<<1, 64, 0, s>>>(out);
    return cudaGetLastError();
}
cudaError_t warp_ops(const int *in, int *out, cudaStream_t s) {
    k_warp_ops<<<1, 128, 0, s>>>(in, out);
    return cudaGetLastError();
}
cudaError_t struct_arg(Holder h, float *out, cudaStream_t s) {
    k_struct_arg<<<1, 64, 0, s>>>(h, out);
    return cudaGetLastError();
}
cudaError_t empty(dim3 grid, dim3 block, cudaStream_t s) {
    k_empty<<<grid, block, 0, s>>>();
    return cudaGetLastError();
}
cudaError_t fill(float *out, int n, float value, cudaStream_t s) {
    k_fill<<<(n + 255) / 256, 256, 0, s>>>(out, n, value);
    return cudaGetLastError();
}

}  // namespace faults
