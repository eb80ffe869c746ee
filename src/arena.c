/* Workspace arenas (ns_arena.h) and the backend copy helper. */
#include "ns_internal.h"
#ifdef NS_HAVE_CUDA
#include "ns_cuda.h"
#endif

#include <stdlib.h>
#include <string.h>

static ns_status block_alloc(ns_context *ctx, ns_memory kind, size_t bytes, void **p) {
    *p = NULL;
#ifdef NS_HAVE_CUDA
    if (kind == NS_MEM_DEVICE) return ns_cuda_malloc(ctx, p, bytes);
    if (kind == NS_MEM_PINNED) return ns_cuda_host_alloc(ctx, p, bytes);
#endif
    (void)ctx;
    (void)kind;
    *p = aligned_alloc(64, bytes);
    return *p ? NS_OK : NS_ERR_OUT_OF_MEMORY;
}

static ns_status block_free(ns_context *ctx, ns_memory kind, void *p) {
    if (!p) return NS_OK;
#ifdef NS_HAVE_CUDA
    if (kind == NS_MEM_DEVICE) return ns_cuda_free_ordered(ctx, p);
    if (kind == NS_MEM_PINNED) return ns_cuda_free_host_ordered(ctx, p);
#endif
    (void)ctx;
    (void)kind;
    free(p);
    return NS_OK;
}

ns_status ns_arena_reserve(ns_context *ctx, ns_arena *a, size_t bytes, const char *fn) {
    const size_t al = ns_arena_alignment(a->kind);
    a->used = 0;
    if (bytes == 0) bytes = al;
    if (a->base && a->capacity >= bytes) return NS_OK;
    size_t grow = a->capacity + a->capacity / 2;
    size_t want = ((bytes > grow ? bytes : grow) + al - 1) & ~(al - 1);
#ifdef NS_HAVE_CUDA
    /* Growing frees the old block after the queued work (a synchronisation) and allocates a new
     * one: neither may happen while the stream is captured into a CUDA graph (the capture would
     * be invalidated). Refuse, with the arena and the capture left as they were. */
    if (a->kind != NS_MEM_HOST && ctx && ctx->backend == NS_BACKEND_CUDA && ns_cuda_stream_capturing(ctx))
        return ns_fail(ctx, NS_ERR_UNSUPPORTED,
                       "%s: the %s workspace must grow from %zu to %zu bytes, which needs a "
                       "synchronisation and cudaMalloc/cudaFree, impossible while ctx's stream is "
                       "captured into a CUDA graph; run one call of the same shapes outside the "
                       "capture first (the workspace is kept and reused)",
                       fn, a->kind == NS_MEM_DEVICE ? "device" : "pinned host", a->capacity, bytes);
#endif
    ns_status st = block_free(ctx, a->kind, a->base);
    a->base = NULL;
    a->capacity = 0;
    if (st) return st;
    void *p;
    if (block_alloc(ctx, a->kind, want, &p) != NS_OK) {
        want = (bytes + al - 1) & ~(al - 1);
        if ((st = block_alloc(ctx, a->kind, want, &p)) != NS_OK)
            return ns_fail(ctx, st == NS_ERR_CUDA ? NS_ERR_CUDA : NS_ERR_OUT_OF_MEMORY,
                           "%s: cannot allocate %zu bytes of %s workspace", fn, want,
                           a->kind == NS_MEM_DEVICE   ? "device"
                           : a->kind == NS_MEM_PINNED ? "pinned host"
                                                      : "host");
    }
    a->base = (char *)p;
    a->capacity = want;
    return NS_OK;
}

void ns_arena_release(ns_context *ctx, ns_arena *a) {
    block_free(ctx, a->kind, a->base);
    a->base = NULL;
    a->capacity = 0;
    a->used = 0;
}

ns_status ns_arena_lay_out(ns_context *ctx, ns_arena *a, ns_layout_fn layout, void *plan,
                           const char *fn) {
    ns_arena sizer = ns_arena_sizer(a->kind);
    layout(plan, &sizer);
    ns_status st = ns_arena_reserve(ctx, a, sizer.used, fn);
    if (st) return st;
    layout(plan, a);
    return NS_OK;
}

ns_status ns_copy(ns_context *ctx, void *dst, const void *src, size_t bytes, ns_copy_dir dir) {
#ifdef NS_HAVE_CUDA
    if (ctx->backend == NS_BACKEND_CUDA && dir != NS_COPY_H2H)
        return ns_cuda_memcpy(ctx, dst, src, bytes, dir);
#endif
    (void)ctx;
    (void)dir;
    if (bytes) memcpy(dst, src, bytes);
    return NS_OK;
}
