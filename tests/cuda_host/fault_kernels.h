// Launchers of the planted-fault kernels (fault_kernels.cu), called by test_cuda_host.cpp. Each
// returns the launch's cudaError_t; the kernel runs when the stream is synchronised.
#pragma once
#include <cuda_runtime.h>

namespace faults {

// out[i] = in[n − 1 − i] through shared memory (one block of n ≤ 1024 threads); with_barrier = 0
// drops the barrier between the shared-memory store and the load.
cudaError_t reverse(const float *in, float *out, int n, int with_barrier, cudaStream_t s = 0);
// The mining kernels' former pattern (merge_collected, since replaced): a shared-memory bitonic
// sort of n keys (ties to the lower index, n ≤ 2048, k ≤ 2048) by 256 threads, then a
// merge-path merge into a sorted list of k; drop = 0 keeps every barrier, 1 drops the barrier at
// the end of the sort, 2 the one between the merge's scratch writes and the copy back.
cudaError_t bitonic_merge(const float *keys, int n, float *list_v, int *list_i, int k, int drop, cudaStream_t s = 0);
// out[i] = i for i <= n: one element past the end.
cudaError_t overrun(float *out, int n, cudaStream_t s = 0);
// Dynamic shared memory of bytes; the kernel writes all of it and sums it into out[0].
cudaError_t dynamic_smem(float *out, size_t bytes, int opt_in, cudaStream_t s = 0);
// out[t] = shared value read before any thread wrote it (uninitialised shared memory).
cudaError_t uninit_shared(float *out, cudaStream_t s = 0);
// Threads with threadIdx.x < quit return before a __syncthreads.
cudaError_t early_exit(int *out, int threads, int quit, cudaStream_t s = 0);
// Even and odd threads wait at two different __syncthreads.
cudaError_t split_barrier(int *out, cudaStream_t s = 0);
// Lane 5 of each warp exits before a full-mask __shfl_xor_sync.
cudaError_t shfl_missing_lane(int *out, cudaStream_t s = 0);
// Warp sums with __shfl_xor_sync / __shfl_down_sync, a ballot and __syncthreads_count: a correct
// kernel (the layer must not report anything).
cudaError_t warp_ops(const int *in, int *out, cudaStream_t s = 0);
// out[i] = a.x[i] * 2 with a struct argument holding the pointer.
struct Holder {
    const float *x;
    int n;
};
cudaError_t struct_arg(Holder h, float *out, cudaStream_t s = 0);
// A launch with the given block and grid (an empty kernel).
cudaError_t empty(dim3 grid, dim3 block, cudaStream_t s = 0);
// The order blocks and threads ran in: out[k] = the linear id (block · threads + thread) of
// the k-th thread to run (an atomic counter; blocks × threads ≤ n entries).
cudaError_t run_order(int *counter, int *out, int blocks, int threads, cudaStream_t s = 0);
// out[i] = value for i < n, on stream s (grid-stride).
cudaError_t fill(float *out, int n, float value, cudaStream_t s = 0);

}  // namespace faults
