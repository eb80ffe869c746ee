/* The conventions of the host/device-shared headers of this folder (ns_math.h, ns_order.h,
 * ns_loss_math.h): every function is NS_HD NS_MATH_INLINE, compiled by the C compiler for the
 * CPU backend and by nvcc for the kernels, with explicit operations and no contraction (the
 * library is built with -ffp-contract=off and nvcc -fmad=false), so both backends compute the
 * same bits wherever a test holds them to it. */
#ifndef NS_HD_H
#define NS_HD_H

#ifdef __CUDACC__
#define NS_HD __host__ __device__
#else
#define NS_HD
#endif
/* Forced inline on the host (gcc/clang) so that a
 * caller compiled for FMA hardware (src/cpu/cpu_sample.c builds a target("fma") clone of its row loop)
 * gets fmaf as one instruction instead of a libm call; the result is the same correctly
 * rounded fma either way. */
#if !defined(__CUDACC__) && defined(__GNUC__)
#define NS_MATH_INLINE static inline __attribute__((always_inline))
#else
#define NS_MATH_INLINE static inline
#endif

#endif
