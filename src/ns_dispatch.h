/* The one line a public entry point ends with: after its argument checks, the operation goes
 * to the backend of the context — ns_cpu_<op> (src/cpu/) or ns_cuda_<op> (kernels/), whose
 * headers declare the same signatures.
 *     return NS_DISPATCH(ctx, filter, (ctx, cand, o, keep, counts));                       */
#ifndef NS_DISPATCH_H
#define NS_DISPATCH_H

#include "ns_cpu.h"
#ifdef NS_HAVE_CUDA
#include "ns_cuda.h"
#define NS_DISPATCH(ctx, op, args) \
    ((ctx)->backend == NS_BACKEND_CUDA ? ns_cuda_##op args : ns_cpu_##op args)
#else
#define NS_DISPATCH(ctx, op, args) (ns_cpu_##op args)
#endif

#endif
