// CUDA side of a context: device selection, stream, the cuBLAS handle and its workspace, device
// memory for the arenas and ordered copies.
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cstdlib>
#include <cstring>

#include "ns_cuda.h"
#include "cuda_common.cuh"
#include "cuda_util.cuh"

int ns_cuda_device_count_impl(void) {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        cudaGetLastError();  // clear the sticky "no device" error
        return 0;
    }
    return n;
}

ns_status ns_cuda_device_enter(ns_context *ctx, const char *fn, int *prev) {
    *prev = -1;
    if (cudaGetDevice(prev) != cudaSuccess) {
        cudaGetLastError();
        *prev = -1;
    }
    if (*prev == ctx->device) return NS_OK;
    const cudaError_t e = cudaSetDevice(ctx->device);
    if (e == cudaSuccess) return NS_OK;
    cudaGetLastError();  // not sticky: the caller's context stays usable
    // Going on would run the op's work on the caller's device with ctx's pointers and stream.
    *prev = -1;          // nothing to restore: the caller's device is still current
    return ns_fail(ctx, NS_ERR_CUDA,
                   "%s: cannot make the context's device %d current: cudaSetDevice(%d) failed: %s",
                   fn, ctx->device, ctx->device, cudaGetErrorString(e));
}

void ns_cuda_device_leave(ns_context *ctx, int prev) {
    if (prev >= 0 && prev != ctx->device && cudaSetDevice(prev) != cudaSuccess) cudaGetLastError();
}

static ns_status context_init(ns_context *ctx);

// The caller's current device is restored whatever happens; a partly made state is freed.
ns_status ns_cuda_context_init(ns_context *ctx) {
    int prev = -1;
    if (cudaGetDevice(&prev) != cudaSuccess) {
        cudaGetLastError();
        prev = -1;
    }
    ns_status st = context_init(ctx);
    if (st && ctx->cuda) {
        char why[NS_ERROR_CAPACITY];
        memcpy(why, ctx->error, sizeof why);
        ns_cuda_context_free(ctx);
        memcpy(ctx->error, why, sizeof why);
    }
    if (prev >= 0 && cudaSetDevice(prev) != cudaSuccess) cudaGetLastError();
    return st;
}

static ns_status context_init(ns_context *ctx) {
    int n = ns_cuda_device_count_impl();
    if (n == 0)
        return ns_fail(ctx, NS_ERR_NO_DEVICE,
                       "ns_context_create: backend NS_BACKEND_CUDA requested but no CUDA device is "
                       "usable here (cudaGetDeviceCount found none)");
    if (ctx->device >= n)
        return ns_fail(ctx, NS_ERR_NO_DEVICE,
                       "ns_context_create: options->device (%d) is out of range; %d device(s) seen",
                       ctx->device, n);
    ns_cuda_state *s = (ns_cuda_state *)calloc(1, sizeof(ns_cuda_state));
    if (!s) return ns_fail(ctx, NS_ERR_OUT_OF_MEMORY, "ns_context_create: cannot allocate CUDA state");
    ctx->cuda = s;
    s->scratch = ns_arena_empty(NS_MEM_DEVICE);
    s->pinned = ns_arena_empty(NS_MEM_PINNED);
    NS_CUDA_TRY(ctx, "ns_context_create", cudaSetDevice(ctx->device));
    NS_CUBLAS_TRY(ctx, "ns_context_create", cublasCreate(&s->blas));
    s->blas_workspace_size = 32u << 20;  // 32 MiB, what cuBLAS asks for on Hopper
    NS_CUDA_TRY(ctx, "ns_context_create", cudaMalloc(&s->blas_workspace, s->blas_workspace_size));
    return ns_cuda_set_stream(ctx, ctx->stream);
}

void ns_cuda_context_free(ns_context *ctx) {
    ns_cuda_state *s = ctx->cuda;
    if (!s) return;
    // Freed whatever happens (a failing guard is recorded in ctx's error; the frees still run).
    int prev = -1;
    (void)ns_cuda_device_enter(ctx, "ns_context_destroy", &prev);
    if (ctx->stream) cudaStreamSynchronize((cudaStream_t)ctx->stream);
    else cudaDeviceSynchronize();
    ns_arena_release(ctx, &s->scratch);
    cudaFree(s->blas_workspace);
    ns_arena_release(ctx, &s->pinned);
    cudaFree(s->dflag);
    cudaFreeHost(s->hflag);
    cudaFree(s->defer);
    cudaFreeHost(s->hdefer);
    for (int i = 0; i < 4; i++)
        if (s->ev[i]) cudaEventDestroy(s->ev[i]);
    if (s->copy) {
        cudaStreamSynchronize(s->copy);
        cudaStreamDestroy(s->copy);
    }
    for (int i = 0; i < 6; i++)
        if (s->side_ev[i]) cudaEventDestroy(s->side_ev[i]);
    if (s->side) {
        cudaStreamSynchronize(s->side);
        cudaStreamDestroy(s->side);
    }
    if (s->blas) cublasDestroy(s->blas);
    free(s);
    ctx->cuda = NULL;
    ns_cuda_device_leave(ctx, prev);
}

ns_status ns_cuda_set_stream(ns_context *ctx, void *stream) {
    ns_cuda_state *s = ctx->cuda;
    ctx->stream = stream;
    NS_CUBLAS_TRY(ctx, "ns_context_set_stream", cublasSetStream(s->blas, (cudaStream_t)stream));
    // cublasSetStream resets the workspace: set it again afterwards.
    NS_CUBLAS_TRY(ctx, "ns_context_set_stream",
                  cublasSetWorkspace(s->blas, s->blas_workspace, s->blas_workspace_size));
    return NS_OK;
}

ns_status ns_cuda_malloc(ns_context *ctx, void **p, size_t bytes) {
    cudaError_t e = cudaMalloc(p, bytes ? bytes : 16);
    if (e == cudaErrorMemoryAllocation) {
        cudaGetLastError();
        return ns_fail(ctx, NS_ERR_OUT_OF_MEMORY, "cudaMalloc of %zu bytes failed: out of device memory", bytes);
    }
    if (e != cudaSuccess) return ns_fail(ctx, NS_ERR_CUDA, "cudaMalloc: %s", cudaGetErrorString(e));
    return NS_OK;
}

int ns_cuda_stream_capturing(ns_context *ctx) { return ns_cuda_capturing(ctx); }

ns_status ns_cuda_free_ordered(ns_context *ctx, void *p) {
    if (!p) return NS_OK;
    // Queued work may still read the block: free it after that work.
    NS_CUDA_TRY(ctx, "ns_cuda_free", ctx && ctx->stream ? cudaStreamSynchronize((cudaStream_t)ctx->stream)
                                                        : cudaDeviceSynchronize());
    NS_CUDA_TRY(ctx, "ns_cuda_free", cudaFree(p));
    return NS_OK;
}

ns_status ns_cuda_host_alloc(ns_context *ctx, void **p, size_t bytes) {
    NS_CUDA_TRY(ctx, "ns_cuda_host_alloc", cudaHostAlloc(p, bytes ? bytes : 64, cudaHostAllocDefault));
    return NS_OK;
}

ns_status ns_cuda_free_host_ordered(ns_context *ctx, void *p) {
    if (!p) return NS_OK;
    // Queued copies (the context's stream and its copy stream) may still read the block.
    NS_CUDA_TRY(ctx, "ns_cuda_free_host", cudaStreamSynchronize((cudaStream_t)ctx->stream));
    if (ctx->cuda && ctx->cuda->copy) NS_CUDA_TRY(ctx, "ns_cuda_free_host", cudaStreamSynchronize(ctx->cuda->copy));
    NS_CUDA_TRY(ctx, "ns_cuda_free_host", cudaFreeHost(p));
    return NS_OK;
}

ns_status ns_cuda_memcpy(ns_context *ctx, void *dst, const void *src, size_t bytes, ns_copy_dir dir) {
    NS_CUDA_TRY(ctx, "ns_cuda_memcpy",
                cudaMemcpyAsync(dst, src, bytes, (cudaMemcpyKind)dir, (cudaStream_t)ctx->stream));
    return NS_OK;
}
