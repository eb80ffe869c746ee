/* The one line a public entry point ends with: after its argument checks, the operation goes
 * to the backend of the context — ns_cpu_<op> (src/cpu/) or ns_cuda_<op> (kernels/), whose
 * headers declare the same signatures.
 *     return NS_DISPATCH(ctx, filter, (ctx, cand, o, keep, counts));                       */
#ifndef NS_DISPATCH_H
#define NS_DISPATCH_H

#include "ns_cpu.h"
/* The CPU branch runs with OpenMP's default team size set to the context's thread count (so
 * oneDNN and OpenBLAS, which size their teams from it, follow the context; src/cpu/cpu_blas.c),
 * the caller's restored after it. */
#define NS_DISPATCH_CPU(ctx, op, args)                                                     \
    __extension__({                                                                        \
        const int ns_saved_threads_ = ns_cpu_threads_enter(ctx);                           \
        const ns_status ns_cpu_st_ = ns_cpu_##op args;                                     \
        ns_cpu_threads_leave(ns_saved_threads_);                                           \
        ns_cpu_st_;                                                                        \
    })
#ifdef NS_HAVE_CUDA
#include "ns_cuda.h"
/* The CUDA branch runs under the device guard: ctx's device current during the op, the
 * caller's restored after it; a device that cannot be made current fails the op before it
 * runs (a GNU statement expression: gcc and clang). */
#define NS_DISPATCH(ctx, op, args)                                                         \
    ((ctx)->backend == NS_BACKEND_CUDA ? __extension__({                                   \
        int ns_prev_device_ = -1;                                                          \
        ns_status ns_dispatch_st_ = ns_cuda_device_enter(ctx, "ns_" #op, &ns_prev_device_); \
        if (ns_dispatch_st_ == NS_OK) {                                                    \
            ns_dispatch_st_ = ns_cuda_##op args;                                           \
            ns_cuda_device_leave(ctx, ns_prev_device_);                                    \
        }                                                                                  \
        ns_dispatch_st_;                                                                   \
    })                                                                                     \
                                       : NS_DISPATCH_CPU(ctx, op, args))
#else
#define NS_DISPATCH(ctx, op, args) NS_DISPATCH_CPU(ctx, op, args)
#endif

#endif
