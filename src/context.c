/* Contexts, status strings and the last-error record. */
#include "ns_internal.h"
#ifdef NS_HAVE_CUDA
#include "ns_cuda.h"
#endif

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

void ns_step_state_free(ns_context *ctx, struct ns_step_state *s); /* src/step.c */

static _Thread_local char thread_error[NS_ERROR_CAPACITY];

int ns_version(void) { return NS_VERSION_CODE; }

const char *ns_status_string(ns_status s) {
    switch (s) {
    case NS_OK: return "NS_OK: success";
    case NS_ERR_INVALID_ARGUMENT: return "NS_ERR_INVALID_ARGUMENT: invalid argument";
    case NS_ERR_UNSUPPORTED: return "NS_ERR_UNSUPPORTED: not supported by this build or backend";
    case NS_ERR_OUT_OF_MEMORY: return "NS_ERR_OUT_OF_MEMORY: out of memory";
    case NS_ERR_NO_DEVICE: return "NS_ERR_NO_DEVICE: no usable CUDA device";
    case NS_ERR_CUDA: return "NS_ERR_CUDA: a CUDA or cuBLAS call failed";
    case NS_ERR_COMM: return "NS_ERR_COMM: communicator failure";
    case NS_ERR_NONFINITE: return "NS_ERR_NONFINITE: NaN or Inf in the input";
    case NS_ERR_IO: return "NS_ERR_IO: file error";
    case NS_ERR_INTERNAL: return "NS_ERR_INTERNAL: internal error";
    }
    return "unknown ns_status";
}

ns_status ns_fail(ns_context *ctx, ns_status status, const char *fmt, ...) {
    char *dst = ctx ? ctx->error : thread_error;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(dst, NS_ERROR_CAPACITY, fmt, ap);
    va_end(ap);
    return status;
}

void ns_clear_error(ns_context *ctx) { (ctx ? ctx->error : thread_error)[0] = '\0'; }

const char *ns_last_error(const ns_context *ctx) { return ctx ? ctx->error : thread_error; }

int ns_cuda_built(void) {
#ifdef NS_HAVE_CUDA
    return 1;
#else
    return 0;
#endif
}

int ns_cuda_device_count(void) {
#ifdef NS_HAVE_CUDA
    return ns_cuda_device_count_impl();
#else
    return 0;
#endif
}

ns_status ns_context_create(ns_context **out, const ns_context_options *opt) {
    static const char *fn = "ns_context_create";
    ns_context_options resolved;
    ns_clear_error(NULL);
    if (!out) return ns_fail(NULL, NS_ERR_INVALID_ARGUMENT, "%s: ctx is NULL", fn);
    *out = NULL;
    ns_status rs = NS_RESOLVE_OPTIONS(NULL, fn, "options", ns_context_options,
                                      NS_CONTEXT_OPTIONS_INIT, opt, &resolved);
    if (rs) return rs;
    opt = &resolved;
    if (opt->backend != NS_BACKEND_AUTO && opt->backend != NS_BACKEND_CPU &&
        opt->backend != NS_BACKEND_CUDA)
        return ns_fail(NULL, NS_ERR_INVALID_ARGUMENT,
                       "%s: options->backend (%d) is not NS_BACKEND_AUTO, _CPU or _CUDA", fn,
                       (int)opt->backend);
    if (opt->threads < 0)
        return ns_fail(NULL, NS_ERR_INVALID_ARGUMENT,
                       "%s: options->threads (%d) is negative; expected 0 (all cores) or more", fn,
                       opt->threads);
    if (opt->device < 0)
        return ns_fail(NULL, NS_ERR_INVALID_ARGUMENT, "%s: options->device (%d) is negative", fn,
                       opt->device);

    ns_context *ctx = (ns_context *)calloc(1, sizeof(ns_context));
    if (!ctx) return ns_fail(NULL, NS_ERR_OUT_OF_MEMORY, "%s: cannot allocate the context", fn);
    ctx->device = opt->device;
    ctx->stream = opt->stream;
    ctx->threads = opt->threads;
    ctx->backend = NS_BACKEND_CPU;
    ctx->scratch = ns_arena_empty(NS_MEM_HOST);

    if (opt->backend == NS_BACKEND_CUDA || opt->backend == NS_BACKEND_AUTO) {
#ifdef NS_HAVE_CUDA
        ctx->backend = NS_BACKEND_CUDA;
        ns_status st = ns_cuda_context_init(ctx);
        if (st != NS_OK) {
            if (opt->backend == NS_BACKEND_CUDA) {
                ns_fail(NULL, st, "%s", ctx->error);
                free(ctx);
                return st;
            }
            ctx->backend = NS_BACKEND_CPU; /* AUTO falls back */
            ctx->cuda = NULL;
        }
#else
        if (opt->backend == NS_BACKEND_CUDA) {
            free(ctx);
            return ns_fail(NULL, NS_ERR_UNSUPPORTED,
                           "%s: backend NS_BACKEND_CUDA requested but this build of negsamp has no "
                           "CUDA backend (built without the CUDA toolkit)",
                           fn);
        }
#endif
    }
    ns_clear_error(ctx);
    *out = ctx;
    return NS_OK;
}

ns_status ns_context_destroy(ns_context *ctx) {
    if (!ctx) return NS_OK;
    ns_step_state_free(ctx, ctx->step);
    ns_arena_release(ctx, &ctx->scratch);
#ifdef NS_HAVE_CUDA
    if (ctx->cuda) ns_cuda_context_free(ctx);
#endif
    free(ctx);
    return NS_OK;
}

ns_backend ns_context_backend(const ns_context *ctx) {
    return ctx ? ctx->backend : NS_BACKEND_AUTO;
}

ns_status ns_context_set_stream(ns_context *ctx, void *stream) {
    ns_status st = ns_check_context(ctx, "ns_context_set_stream");
    if (st) return st;
#ifdef NS_HAVE_CUDA
    if (ctx->backend == NS_BACKEND_CUDA) return ns_cuda_set_stream(ctx, stream);
#endif
    ctx->stream = stream;
    return NS_OK;
}

int ns_threads(const ns_context *ctx) {
#ifdef _OPENMP
    return ctx->threads > 0 ? ctx->threads : omp_get_max_threads();
#else
    (void)ctx;
    return 1;
#endif
}
