// Shared by the CUDA sources: the per-context CUDA state and the macros that turn a CUDA or
// cuBLAS failure into an ns_status with the call site recorded (never an exit, never a print).
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include "ns_internal.h"

struct ns_cuda_state {
    cublasHandle_t blas;
    void *blas_workspace;   // cuBLAS's own workspace (cublasSetWorkspace), fixed size
    size_t blas_workspace_size;
    ns_arena scratch;       // device workspace of one operation (src/ns_arena.h)
    ns_arena pinned;        // pinned host double buffer for streaming a host corpus
    // Created on first use by kernels/cuda_util.cu (ns_cuda_flags, ns_cuda_copy_stream):
    int *dflag;             // device status words (non-finite seen, ...), NS_CUDA_FLAGS ints;
                            // ints [32, 128) are read as 48 uint64 words (NS_CUDA_WIDE)
    int *hflag;             // pinned host mirror of dflag
    cudaStream_t copy;      // H2D copies of a streamed host corpus, overlapping compute
    cudaEvent_t ev[4];      // copied[2], consumed[2] for the double buffer
    // Created on first use by ns_cuda_side_stream (kernels/cuda_util.cu): a second compute
    // stream and its events, ordered against the context's stream by events only (mining: the
    // selection of one score tile overlaps the GEMM of the next).
    cudaStream_t side;
    cudaEvent_t side_ev[6];
    int unchecked;          // 1: skip the synchronising input validation (ns_cuda_set_input_checks)
    // The checked step's deferred validation (kernels/cuda_step_checks.cu): while deferring, the
    // ops do not synchronise to validate; the candidate check and the filter counts go to the
    // device words defer (NS_CUDA_FLAGS ints, the flags' layout), read once with the loss at the
    // end of the forward into hdefer (pinned). Created on first use.
    int *defer, *hdefer;
    int deferring;
};
#define NS_CUDA_FLAGS 128
#define NS_CUDA_WIDE(flags) ((unsigned long long *)((flags) + 32))

#define NS_CUDA_TRY(ctx, fn, call)                                                            \
    do {                                                                                      \
        cudaError_t ns_e_ = (call);                                                           \
        if (ns_e_ != cudaSuccess) {                                                           \
            cudaGetLastError();                                                               \
            return ns_fail((ctx), ns_e_ == cudaErrorMemoryAllocation ? NS_ERR_OUT_OF_MEMORY  \
                                                                     : NS_ERR_CUDA,          \
                           "%s: %s failed: %s (%s:%d)", (fn), #call, cudaGetErrorString(ns_e_), \
                           __FILE__, __LINE__);                                               \
        }                                                                                     \
    } while (0)

#define NS_CUBLAS_TRY(ctx, fn, call)                                                          \
    do {                                                                                      \
        cublasStatus_t ns_b_ = (call);                                                        \
        if (ns_b_ != CUBLAS_STATUS_SUCCESS)                                                   \
            return ns_fail((ctx), NS_ERR_CUDA, "%s: %s failed: %s (%s:%d)", (fn), #call,     \
                           cublasGetStatusString(ns_b_), __FILE__, __LINE__);                 \
    } while (0)

static inline cudaStream_t ns_stream(const ns_context *ctx) { return (cudaStream_t)ctx->stream; }
