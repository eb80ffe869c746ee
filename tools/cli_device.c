/* Host ↔ device staging for a CUDA context: the library takes device pointers there. On a CPU
 * context (or a build without CUDA) the host pointers pass through. */
#include "cli.h"

#include <stdlib.h>
#include <string.h>

int cli_context_create(ns_backend backend, int threads, ns_context **ctx) {
    return cli_context_create_on(backend, threads, 0, ctx);
}

int cli_context_create_on(ns_backend backend, int threads, int device, ns_context **ctx) {
    ns_context_options co = NS_CONTEXT_OPTIONS_INIT;
    co.backend = backend;
    co.threads = threads;
    co.device = backend == NS_BACKEND_CPU ? 0 : device;
    if (ns_context_create(ctx, &co) == NS_OK) return 0;
    cli_error("cannot create a %s context: %s", backend == NS_BACKEND_CUDA ? "CUDA" :
              backend == NS_BACKEND_CPU ? "CPU" : "auto", ns_last_error(NULL));
    return -1;
}

#ifdef NS_HAVE_CUDA
#include <cuda_runtime_api.h>

static int on_device(ns_context *ctx) { return ns_context_backend(ctx) == NS_BACKEND_CUDA; }

void *cli_dev_alloc(ns_context *ctx, size_t bytes) {
    if (!on_device(ctx)) return malloc(bytes ? bytes : 1);
    void *d = NULL;
    cudaError_t e = cudaMalloc(&d, bytes ? bytes : 1);
    if (e != cudaSuccess) {
        cli_error("cannot allocate %zu bytes of device memory: %s", bytes, cudaGetErrorString(e));
        return NULL;
    }
    return d;
}

void *cli_dev_put(ns_context *ctx, const void *host, size_t bytes) {
    if (!on_device(ctx)) return (void *)host;
    void *d = cli_dev_alloc(ctx, bytes);
    if (!d) return NULL;
    cudaError_t e = cudaMemcpy(d, host, bytes, cudaMemcpyHostToDevice);
    if (e != cudaSuccess) {
        cli_error("cannot copy %zu bytes to the device: %s", bytes, cudaGetErrorString(e));
        cudaFree(d);
        return NULL;
    }
    return d;
}

int cli_dev_get(ns_context *ctx, void *host, const void *dev, size_t bytes) {
    if (!on_device(ctx)) {
        if (host != dev) memcpy(host, dev, bytes);
        return 0;
    }
    cudaError_t e = cudaMemcpy(host, dev, bytes, cudaMemcpyDeviceToHost); /* syncs the stream */
    if (e != cudaSuccess) {
        cli_error("cannot copy %zu bytes from the device: %s", bytes, cudaGetErrorString(e));
        return -1;
    }
    return 0;
}

void cli_dev_free(ns_context *ctx, void *dev, const void *host) {
    if (!dev || dev == host) return;
    if (on_device(ctx)) cudaFree(dev);
    else free(dev);
}

#else

void *cli_dev_alloc(ns_context *ctx, size_t bytes) {
    (void)ctx;
    return malloc(bytes ? bytes : 1);
}
void *cli_dev_put(ns_context *ctx, const void *host, size_t bytes) {
    (void)ctx;
    (void)bytes;
    return (void *)host;
}
int cli_dev_get(ns_context *ctx, void *host, const void *dev, size_t bytes) {
    (void)ctx;
    if (host != dev) memcpy(host, dev, bytes);
    return 0;
}
void cli_dev_free(ns_context *ctx, void *dev, const void *host) {
    (void)ctx;
    if (dev && dev != host) free(dev);
}

#endif
