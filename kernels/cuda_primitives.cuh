// Block-level device primitives shared by the kernels: the block reduction, the radix select of
// the m-th largest 64-bit key, and the bitonic sort of (key, value) pairs in shared memory, with the comparators the ops sort by. Plain CUDA
// C++ (warp shuffles, __syncthreads), as every kernel of this folder.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "ns_order.h"

// A reduction over a block of kThreads threads (a multiple of 32); every thread gets the
// result. sh holds kThreads / 32 values; it may be reused by the next call (a barrier first).
template <int kThreads, class T, class Op>
__device__ T ns_block_reduce(T v, Op op, T *sh) {
    for (int o = 16; o; o >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, o));
    __syncthreads();  // sh may still be read from a previous call
    if ((threadIdx.x & 31) == 0) sh[threadIdx.x >> 5] = v;
    __syncthreads();
    T r = sh[0];
    for (int w = 1; w < kThreads / 32; w++) r = op(r, sh[w]);
    return r;
}
struct NsMaxF { __device__ float operator()(float a, float b) const { return a > b ? a : b; } };
struct NsSumI { __device__ int operator()(int a, int b) const { return a + b; } };
struct NsSumD { __device__ double operator()(double a, double b) const { return a + b; } };

// Shared memory of ns_block_radix_kth.
struct NsRadixSelect {
    int hist[256];
    int need, digit;
};

// The m-th largest (1 ≤ m ≤ n) of the n distinct 64-bit values key(e), e in [0, n): a radix
// select, 8 bits per pass from the top, each pass a 256-bin histogram of the values that share
// the prefix found so far. Exact because the values are distinct: the values ≥ the result are
// exactly the m largest. Called by the whole block; returns after a barrier.
template <class Key>
__device__ unsigned long long ns_block_radix_kth(Key key, int n, int m, NsRadixSelect &sel) {
    unsigned long long prefix = 0, mask = 0;
    int need = m;
    for (int shift = 56; shift >= 0; shift -= 8) {
        for (int t = threadIdx.x; t < 256; t += blockDim.x) sel.hist[t] = 0;
        __syncthreads();
        for (int e = threadIdx.x; e < n; e += blockDim.x) {
            const unsigned long long k = key(e);
            if ((k & mask) == prefix) atomicAdd(&sel.hist[(int)((k >> shift) & 255u)], 1);
        }
        __syncthreads();
        if (threadIdx.x == 0) {
            int d = 255, above = 0;
            for (; d > 0 && above + sel.hist[d] < need; d--) above += sel.hist[d];
            sel.need = need - above;
            sel.digit = d;
        }
        __syncthreads();
        need = sel.need;
        prefix |= (unsigned long long)sel.digit << shift;
        mask |= 255ull << shift;
    }
    return prefix;
}

// Sorts the n pairs (key[i], val[i]) (n a power of two, in shared memory) so that
// first(key[i], val[i], key[j], val[j]) holds for i < j; first is a strict order on the pairs.
// Called by the whole block; returns after a barrier.
template <class K, class V, class First>
__device__ void ns_bitonic_sort(K *key, V *val, int n, First first) {
    for (int size = 2; size <= n; size <<= 1)
        for (int stride = size >> 1; stride > 0; stride >>= 1) {
            for (int t = threadIdx.x; t < (n >> 1); t += blockDim.x) {
                const int x = 2 * t - (t & (stride - 1)), y = x + stride;
                const bool up = (x & size) == 0;
                const K kx = key[x], ky = key[y];
                const V vx = val[x], vy = val[y];
                if (up ? first(ky, vy, kx, vx) : first(kx, vx, ky, vy)) {
                    key[x] = ky, key[y] = kx;
                    val[x] = vy, val[y] = vx;
                }
            }
            __syncthreads();
        }
}

// The ranking order (ns_order.h): higher score first, ties to the lower index.
struct NsScoreFirst {
    __device__ bool operator()(float a, int ia, float b, int ib) const { return ns_before(a, ia, b, ib); }
};
// Lower id first, ties to the lower column.
struct NsIdFirst {
    __device__ bool operator()(int64_t a, int ca, int64_t b, int cb) const {
        return a < b || (a == b && ca < cb);
    }
};
