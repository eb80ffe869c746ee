// CUDA side of a context: device selection, stream, cuBLAS/cuBLASLt handles and workspaces.
#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cstdlib>

#include "ns_cuda.h"
#include "cuda_common.cuh"

int ns_cuda_device_count_impl(void) {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        cudaGetLastError();  // clear the sticky "no device" error
        return 0;
    }
    return n;
}

ns_status ns_cuda_context_init(ns_context *ctx) {
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
    NS_CUDA_TRY(ctx, "ns_context_create", cudaSetDevice(ctx->device));
    NS_CUBLAS_TRY(ctx, "ns_context_create", cublasCreate(&s->blas));
    NS_CUBLAS_TRY(ctx, "ns_context_create", cublasLtCreate(&s->lt));
    s->lt_workspace_size = 32u << 20;  // 32 MiB, what cuBLAS asks for on Hopper
    NS_CUDA_TRY(ctx, "ns_context_create", cudaMalloc(&s->lt_workspace, s->lt_workspace_size));
    return ns_cuda_set_stream(ctx, ctx->stream);
}

void ns_cuda_context_free(ns_context *ctx) {
    ns_cuda_state *s = ctx->cuda;
    if (!s) return;
    cudaSetDevice(ctx->device);
    if (ctx->stream) cudaStreamSynchronize((cudaStream_t)ctx->stream);
    else cudaDeviceSynchronize();
    for (int i = 0; i < NS_WS_COUNT; i++) cudaFree(s->ws[i]);
    cudaFree(s->lt_workspace);
    cudaFreeHost(s->pinned[0]);
    cudaFreeHost(s->pinned[1]);
    cudaFree(s->dflag);
    cudaFreeHost(s->hflag);
    for (int i = 0; i < 4; i++)
        if (s->ev[i]) cudaEventDestroy(s->ev[i]);
    if (s->copy) {
        cudaStreamSynchronize(s->copy);
        cudaStreamDestroy(s->copy);
    }
    if (s->lt) cublasLtDestroy(s->lt);
    if (s->blas) cublasDestroy(s->blas);
    free(s);
    ctx->cuda = NULL;
}

ns_status ns_cuda_set_stream(ns_context *ctx, void *stream) {
    ns_cuda_state *s = ctx->cuda;
    ctx->stream = stream;
    NS_CUBLAS_TRY(ctx, "ns_context_set_stream", cublasSetStream(s->blas, (cudaStream_t)stream));
    // cublasSetStream resets the workspace: set it again afterwards.
    NS_CUBLAS_TRY(ctx, "ns_context_set_stream",
                  cublasSetWorkspace(s->blas, s->lt_workspace, s->lt_workspace_size));
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

void ns_cuda_free(ns_context *ctx, void *p) {
    (void)ctx;
    cudaFree(p);
}

ns_status ns_cuda_memcpy(ns_context *ctx, void *dst, const void *src, size_t bytes, int kind) {
    NS_CUDA_TRY(ctx, "ns_cuda_memcpy",
                cudaMemcpyAsync(dst, src, bytes, (cudaMemcpyKind)kind, (cudaStream_t)ctx->stream));
    return NS_OK;
}

void *ns_cuda_workspace(ns_context *ctx, int slot, size_t bytes) {
    ns_cuda_state *s = ctx->cuda;
    if (bytes == 0) bytes = 256;
    if (s->ws_size[slot] >= bytes) return s->ws[slot];
    size_t grow = s->ws_size[slot] + s->ws_size[slot] / 2;
    size_t size = bytes > grow ? bytes : grow;
    // The old buffer may still be read by queued work: order the free after it.
    if (s->ws[slot]) {
        cudaStreamSynchronize((cudaStream_t)ctx->stream);
        cudaFree(s->ws[slot]);
        s->ws[slot] = nullptr;
        s->ws_size[slot] = 0;
    }
    void *p = nullptr;
    if (cudaMalloc(&p, size) != cudaSuccess) {
        cudaGetLastError();
        return nullptr;
    }
    s->ws[slot] = p;
    s->ws_size[slot] = size;
    return p;
}
