// Helpers shared by the CUDA ops: the one row-major GEMM wrapper, dtype loads, row norms,
// non-finite scans, the device status words and pointer classification.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "cuda_common.cuh"

// ns_ld for device code too.
__host__ __device__ __forceinline__ int64_t ns_ld_d(ns_matrix m) { return m.ld ? m.ld : m.cols; }

// Threads per block for the simple elementwise kernels.
#define NS_CUDA_THREADS 256

// Element e of a row-major f32/f16/bf16 array as f32 (same conversion as ns_rows_to_f32).
__device__ __forceinline__ float ns_load_f32(const void *base, ns_dtype t, size_t e) {
    if (t == NS_F32) return ((const float *)base)[e];
    if (t == NS_F16) return __half2float(((const __half *)base)[e]);
    return __bfloat162float(((const __nv_bfloat16 *)base)[e]);
}

static inline unsigned ns_blocks(int64_t n, int threads = NS_CUDA_THREADS) {
    int64_t b = (n + threads - 1) / threads;
    if (b < 1) b = 1;
    return (unsigned)(b > 65535 * 32 ? 65535 * 32 : b);  // grid-stride loops cover the rest
}

// Row-major GEMM, f32 out: C (m×n, ldc) = alpha · op(A) · op(B) + beta · C, with op(X) = X or Xᵀ
// (ta/tb non-zero = transposed), A and B of the same dtype (f32/f16/bf16), FP32 compute
// (CUBLAS_COMPUTE_32F: no TF32). Ordered on the context's stream.
ns_status ns_cuda_gemm(ns_context *ctx, const char *fn, int ta, int tb, int64_t m, int64_t n,
                       int64_t k, float alpha, const void *a, ns_dtype adt, int64_t lda,
                       const void *b, ns_dtype bdt, int64_t ldb, float beta, float *c,
                       int64_t ldc);

// The same for `batch` independent products, operand p of batch b at p + b · stride_p elements.
ns_status ns_cuda_gemm_batched(ns_context *ctx, const char *fn, int ta, int tb, int64_t m,
                               int64_t n, int64_t k, float alpha, const void *a, int64_t lda,
                               int64_t stride_a, const void *b, int64_t ldb, int64_t stride_b,
                               ns_dtype t, float beta, float *c, int64_t ldc, int64_t stride_c,
                               int64_t batch);

// dst (n × m.cols, ld = m.cols) = rows [r0, r0+n) of m as f32. m.data is a device pointer.
ns_status ns_cuda_rows_to_f32(ns_context *ctx, const char *fn, ns_matrix m, int64_t r0,
                              int64_t n, float *dst, cudaStream_t st);
// inv[r] = 1/‖row r0+r‖₂ (0 for a zero row) for n rows of m (device data).
ns_status ns_cuda_row_inv_norms(ns_context *ctx, const char *fn, ns_matrix m, int64_t r0,
                                int64_t n, float *inv, cudaStream_t st);
// Sets flags[slot] = 1 when any of rows [r0, r0+n) of m holds NaN/Inf (device data), and keeps
// the first offender in wide word `slot` (rows counted from row_base; −1: from r0), read back
// with ns_cuda_first_nonfinite.
ns_status ns_cuda_scan_nonfinite(ns_context *ctx, const char *fn, ns_matrix m, int64_t r0,
                                 int64_t n, int *flags, int slot, cudaStream_t st,
                                 int64_t row_base = -1);
// Same for a dense f32 array.
ns_status ns_cuda_scan_nonfinite_f32(ns_context *ctx, const char *fn, const float *x, int64_t n,
                                     int *flags, int slot, cudaStream_t st);
// From the status words read back: 1 and the first offender's (row, col) when slot was set.
int ns_cuda_first_nonfinite(const int *hflags, int slot, int64_t cols, int64_t *row, int64_t *col);

// The context's device status words (NS_CUDA_FLAGS ints), zeroed on the stream.
ns_status ns_cuda_flags_reset(ns_context *ctx, const char *fn, int **flags);
// Copies the status words to host and waits for the stream: the one documented sync of an op
// whose status depends on data. *host points at NS_CUDA_FLAGS ints.
ns_status ns_cuda_flags_read(ns_context *ctx, const char *fn, const int **host);

// 1 when the stream is being captured into a graph (then no op may synchronise).
int ns_cuda_capturing(ns_context *ctx);
// 1 when an op should validate its device data with a synchronisation: not while capturing,
// and not after ns_cuda_set_input_checks(ctx, 0).
int ns_cuda_validating(ns_context *ctx);
// For callers that feed ops data they produced themselves (the training step): on = 0 skips the
// synchronising data validation (NaN scans, id and list checks) of every CUDA op on ctx, so a
// chain of ops runs without host synchronisation; on = 1 restores it. C linkage.
extern "C" void ns_cuda_set_input_checks(ns_context *ctx, int on);

// 1 when p is device (or managed) memory, 0 for host memory (pageable or pinned): a host
// corpus is streamed to the device tile by tile.
int ns_cuda_is_device_ptr(const void *p);
// 1 when p is page-locked host memory (cudaMemcpyAsync from it is asynchronous).
int ns_cuda_is_pinned_host(const void *p);

// The copy stream and its events (created on first use).
ns_status ns_cuda_copy_stream(ns_context *ctx, const char *fn, cudaStream_t *copy);
// The context's side compute stream (non-blocking) and its 6 events, created on first use.
ns_status ns_cuda_side_stream(ns_context *ctx, const char *fn, cudaStream_t *side, cudaEvent_t **ev);

// Candidate data for the device check shared by ns_filter and ns_sample (kernels/cuda_filter.cu):
// ids ≥ −1, finite scores of non-empty slots; s⁺, guide scores, g⁺ and positive lists only when
// given (non-NULL). Synchronises once (skipped while capturing) and names the first failure as
// the CPU backend does.
struct NsCandArgs {
    int64_t B, C;
    const int64_t *id;
    const float *score;
    const float *sp, *guide, *gp;
    const int64_t *pos_off, *pos_ids;
};
ns_status ns_cuda_check_candidates(ns_context *ctx, const char *fn, const NsCandArgs &a);
// The check's verdict from its wide words read back (the first failure, as the CPU backend
// names it), and the filter's counts from the same words (kernels/cuda_filter.cu).
ns_status ns_cuda_candidates_error(ns_context *ctx, const char *fn, int64_t C,
                                   const unsigned long long *w);
void ns_cuda_filter_counts(const unsigned long long *w, int64_t examined, ns_filter_counts *counts);

