/* The one line a public entry point ends with: after its argument checks, the operation goes
 * to the backend of the context — ns_cpu_<op> (src/cpu/) or ns_cuda_<op> (kernels/), whose
 * headers declare the same signatures.
 *     return NS_DISPATCH(ctx, filter, (ctx, cand, o, keep, counts));                       */
#ifndef NS_DISPATCH_H
#define NS_DISPATCH_H

#include "ns_cpu.h"
#ifdef NS_HAVE_CUDA
#include "ns_cuda.h"
/* The CUDA branch runs under the device guard: ctx's device current during the op, the
 * caller's restored after it (a GNU statement expression: gcc and clang). */
#define NS_DISPATCH(ctx, op, args)                                                         \
    ((ctx)->backend == NS_BACKEND_CUDA ? __extension__({                                   \
        const int ns_prev_device_ = ns_cuda_device_enter(ctx);                             \
        const ns_status ns_dispatch_st_ = ns_cuda_##op args;                               \
        ns_cuda_device_leave(ctx, ns_prev_device_);                                        \
        ns_dispatch_st_;                                                                   \
    })                                                                                     \
                                       : ns_cpu_##op args)
#else
#define NS_DISPATCH(ctx, op, args) (ns_cpu_##op args)
#endif

#endif
