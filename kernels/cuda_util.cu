// Helpers shared by the CUDA ops (see cuda_util.cuh).
#include "cuda_util.cuh"

#include <climits>
#include <cstdint>

static cudaDataType_t ns_cuda_type(ns_dtype t) {
    return t == NS_F32 ? CUDA_R_32F : t == NS_F16 ? CUDA_R_16F : CUDA_R_16BF;
}

// The row-major ↔ column-major mapping, written once. A row-major X (r×c, ld) is, byte for
// byte, the column-major Xᵀ (c×r, ld). So the row-major C = op(A)·op(B) is the column-major
// Cᵀ = op(B)ᵀ·op(A)ᵀ: cuBLAS gets B first and A second, each with the same transpose flag the
// row-major caller gave (op(B)ᵀ of the stored Bᵀ is Bᵀ itself when tb = 0, B when tb = 1), and
// the dimensions swapped: M = n, N = m.
ns_status ns_cuda_gemm(ns_context *ctx, const char *fn, int ta, int tb, int64_t m, int64_t n,
                       int64_t k, float alpha, const void *a, ns_dtype adt, int64_t lda,
                       const void *b, ns_dtype bdt, int64_t ldb, float beta, float *c,
                       int64_t ldc) {
    if (m == 0 || n == 0) return NS_OK;
    if (adt != bdt)
        return ns_fail(ctx, NS_ERR_INTERNAL, "%s: GEMM of mixed dtypes %s and %s", fn,
                       ns_dtype_name(adt), ns_dtype_name(bdt));
    // CUBLAS_COMPUTE_32F keeps full FP32 for f32 inputs (no TF32) and accumulates f16/bf16
    // products in FP32 on the tensor cores.
    NS_CUBLAS_TRY(ctx, fn,
                  cublasGemmEx_64(ctx->cuda->blas, tb ? CUBLAS_OP_T : CUBLAS_OP_N,
                                  ta ? CUBLAS_OP_T : CUBLAS_OP_N, n, m, k, &alpha, b,
                                  ns_cuda_type(bdt), ldb, a, ns_cuda_type(adt), lda, &beta, c,
                                  CUDA_R_32F, ldc, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    return NS_OK;
}

ns_status ns_cuda_gemm_batched(ns_context *ctx, const char *fn, int ta, int tb, int64_t m,
                               int64_t n, int64_t k, float alpha, const void *a, int64_t lda,
                               int64_t stride_a, const void *b, int64_t ldb, int64_t stride_b,
                               ns_dtype t, float beta, float *c, int64_t ldc, int64_t stride_c,
                               int64_t batch) {
    if (m == 0 || n == 0 || batch == 0) return NS_OK;
    // Same mapping as ns_cuda_gemm, per batch entry.
    NS_CUBLAS_TRY(ctx, fn,
                  cublasGemmStridedBatchedEx_64(
                      ctx->cuda->blas, tb ? CUBLAS_OP_T : CUBLAS_OP_N, ta ? CUBLAS_OP_T : CUBLAS_OP_N,
                      n, m, k, &alpha, b, ns_cuda_type(t), ldb, stride_b, a, ns_cuda_type(t), lda,
                      stride_a, &beta, c, CUDA_R_32F, ldc, stride_c, batch, CUBLAS_COMPUTE_32F,
                      CUBLAS_GEMM_DEFAULT));
    return NS_OK;
}

__global__ void ns_k_rows_to_f32(const void *src, ns_dtype t, int64_t ld, int64_t r0, int64_t n,
                                 int64_t cols, float *dst) {
    int64_t total = n * cols;
    for (int64_t e = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; e < total;
         e += (int64_t)gridDim.x * blockDim.x) {
        int64_t r = e / cols, c = e - r * cols;
        dst[e] = ns_load_f32(src, t, (size_t)((r0 + r) * ld + c));
    }
}

ns_status ns_cuda_rows_to_f32(ns_context *ctx, const char *fn, ns_matrix m, int64_t r0,
                              int64_t n, float *dst, cudaStream_t st) {
    if (n <= 0) return NS_OK;
    ns_k_rows_to_f32<<<ns_blocks(n * m.cols), NS_CUDA_THREADS, 0, st>>>(m.data, m.dtype, ns_ld(m),
                                                                       r0, n, m.cols, dst);
    NS_CUDA_TRY(ctx, fn, cudaGetLastError());
    return NS_OK;
}

// One warp per row; the sum of squares in double so the norm is correctly rounded f32.
__global__ void ns_k_row_inv_norms(const void *src, ns_dtype t, int64_t ld, int64_t r0,
                                   int64_t n, int64_t cols, float *inv) {
    int lane = threadIdx.x & 31;
    int64_t warp = (blockIdx.x * (int64_t)blockDim.x + threadIdx.x) >> 5;
    int64_t warps = ((int64_t)gridDim.x * blockDim.x) >> 5;
    for (int64_t r = warp; r < n; r += warps) {
        double s = 0;
        size_t base = (size_t)((r0 + r) * ld);
        for (int64_t c = lane; c < cols; c += 32) {
            double v = ns_load_f32(src, t, base + c);
            s += v * v;
        }
        for (int o = 16; o; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
        if (lane == 0) inv[r] = s > 0 ? (float)(1.0 / sqrt(s)) : 0.0f;
    }
}

ns_status ns_cuda_row_inv_norms(ns_context *ctx, const char *fn, ns_matrix m, int64_t r0,
                                int64_t n, float *inv, cudaStream_t st) {
    if (n <= 0) return NS_OK;
    ns_k_row_inv_norms<<<ns_blocks(n * 32), NS_CUDA_THREADS, 0, st>>>(m.data, m.dtype, ns_ld(m),
                                                                      r0, n, m.cols, inv);
    NS_CUDA_TRY(ctx, fn, cudaGetLastError());
    return NS_OK;
}

// Sets flag[0] and keeps in wide[0] the first offender as ULLONG_MAX − flat index (atomicMax
// keeps the smallest index), the flat index counted from row row_base.
__global__ void ns_k_scan_nonfinite(const void *src, ns_dtype t, int64_t ld, int64_t r0,
                                    int64_t n, int64_t cols, int64_t row_base, int *flag,
                                    unsigned long long *wide) {
    int64_t total = n * cols;
    unsigned long long best = 0;
    for (int64_t e = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; e < total;
         e += (int64_t)gridDim.x * blockDim.x) {
        int64_t r = e / cols, c = e - r * cols;
        if (!isfinite(ns_load_f32(src, t, (size_t)((r0 + r) * ld + c)))) {
            unsigned long long v = ULLONG_MAX - (unsigned long long)((row_base + r) * cols + c);
            if (v > best) best = v;
        }
    }
    if (best) {
        *flag = 1;
        atomicMax(wide, best);
    }
}

ns_status ns_cuda_scan_nonfinite(ns_context *ctx, const char *fn, ns_matrix m, int64_t r0,
                                 int64_t n, int *flags, int slot, cudaStream_t st,
                                 int64_t row_base) {
    if (n <= 0) return NS_OK;
    ns_k_scan_nonfinite<<<ns_blocks(n * m.cols), NS_CUDA_THREADS, 0, st>>>(
        m.data, m.dtype, ns_ld(m), r0, n, m.cols, row_base < 0 ? r0 : row_base, flags + slot,
        NS_CUDA_WIDE(flags) + slot);
    NS_CUDA_TRY(ctx, fn, cudaGetLastError());
    return NS_OK;
}

ns_status ns_cuda_scan_nonfinite_f32(ns_context *ctx, const char *fn, const float *x, int64_t n,
                                     int *flags, int slot, cudaStream_t st) {
    if (n <= 0) return NS_OK;
    ns_k_scan_nonfinite<<<ns_blocks(n), NS_CUDA_THREADS, 0, st>>>(x, NS_F32, n, 0, 1, n, 0,
                                                                 flags + slot, NS_CUDA_WIDE(flags) + slot);
    NS_CUDA_TRY(ctx, fn, cudaGetLastError());
    return NS_OK;
}

int ns_cuda_first_nonfinite(const int *hflags, int slot, int64_t cols, int64_t *row, int64_t *col) {
    const unsigned long long w = NS_CUDA_WIDE(hflags)[slot];
    if (!hflags[slot] || !w) return 0;
    const int64_t e = (int64_t)(ULLONG_MAX - w);
    *row = e / cols;
    *col = e % cols;
    return 1;
}

ns_status ns_cuda_flags_reset(ns_context *ctx, const char *fn, int **flags) {
    ns_cuda_state *s = ctx->cuda;
    if (!s->dflag && ns_cuda_capturing(ctx))
        return ns_fail(ctx, NS_ERR_UNSUPPORTED,
                       "%s: the context's device status words are allocated on first use "
                       "(cudaMalloc), impossible while ctx's stream is captured into a CUDA graph; "
                       "run one call outside the capture first",
                       fn);
    if (!s->dflag) {
        NS_CUDA_TRY(ctx, fn, cudaMalloc(&s->dflag, NS_CUDA_FLAGS * sizeof(int)));
        NS_CUDA_TRY(ctx, fn, cudaHostAlloc(&s->hflag, NS_CUDA_FLAGS * sizeof(int), cudaHostAllocDefault));
    }
    NS_CUDA_TRY(ctx, fn, cudaMemsetAsync(s->dflag, 0, NS_CUDA_FLAGS * sizeof(int), ns_stream(ctx)));
    *flags = s->dflag;
    return NS_OK;
}

ns_status ns_cuda_flags_read(ns_context *ctx, const char *fn, const int **host) {
    ns_cuda_state *s = ctx->cuda;
    NS_CUDA_TRY(ctx, fn, cudaMemcpyAsync(s->hflag, s->dflag, NS_CUDA_FLAGS * sizeof(int),
                                         cudaMemcpyDeviceToHost, ns_stream(ctx)));
    NS_CUDA_TRY(ctx, fn, cudaStreamSynchronize(ns_stream(ctx)));
    *host = s->hflag;
    return NS_OK;
}

int ns_cuda_capturing(ns_context *ctx) {
    cudaStreamCaptureStatus c = cudaStreamCaptureStatusNone;
    if (cudaStreamIsCapturing(ns_stream(ctx), &c) != cudaSuccess) {
        cudaGetLastError();
        return 0;
    }
    return c != cudaStreamCaptureStatusNone;
}

int ns_cuda_validating(ns_context *ctx) {
    return !ctx->cuda->unchecked && !ctx->cuda->deferring && !ns_cuda_capturing(ctx);
}

extern "C" void ns_cuda_set_input_checks(ns_context *ctx, int on) {
    if (ctx && ctx->cuda) ctx->cuda->unchecked = !on;
}

extern "C" int ns_cuda_swap_input_checks(ns_context *ctx, int on) {
    if (!ctx || !ctx->cuda) return 1;
    const int was = !ctx->cuda->unchecked;
    ctx->cuda->unchecked = !on;
    return was;
}

int ns_cuda_is_device_ptr(const void *p) {
    cudaPointerAttributes a;
    if (cudaPointerGetAttributes(&a, p) != cudaSuccess) {
        cudaGetLastError();
        return 0;
    }
    // Pinned host memory is readable by kernels too (UVA), but over PCIe at every GEMM pass:
    // it is treated as host memory and copied in tile by tile.
    return a.type == cudaMemoryTypeDevice || a.type == cudaMemoryTypeManaged;
}

int ns_cuda_is_pinned_host(const void *p) {
    cudaPointerAttributes a;
    if (cudaPointerGetAttributes(&a, p) != cudaSuccess) {
        cudaGetLastError();
        return 0;
    }
    return a.type == cudaMemoryTypeHost;
}

ns_status ns_cuda_copy_stream(ns_context *ctx, const char *fn, cudaStream_t *copy) {
    ns_cuda_state *s = ctx->cuda;
    if (!s->copy) {
        NS_CUDA_TRY(ctx, fn, cudaStreamCreateWithFlags(&s->copy, cudaStreamNonBlocking));
        for (int i = 0; i < 4; i++)
            NS_CUDA_TRY(ctx, fn, cudaEventCreateWithFlags(&s->ev[i], cudaEventDisableTiming));
    }
    *copy = s->copy;
    return NS_OK;
}

ns_status ns_cuda_side_stream(ns_context *ctx, const char *fn, cudaStream_t *side, cudaEvent_t **ev) {
    ns_cuda_state *s = ctx->cuda;
    if (!s->side) {
        NS_CUDA_TRY(ctx, fn, cudaStreamCreateWithFlags(&s->side, cudaStreamNonBlocking));
        for (int i = 0; i < 6; i++)
            NS_CUDA_TRY(ctx, fn, cudaEventCreateWithFlags(&s->side_ev[i], cudaEventDisableTiming));
    }
    *side = s->side;
    *ev = s->side_ev;
    return NS_OK;
}
