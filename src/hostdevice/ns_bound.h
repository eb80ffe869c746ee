/* Rounding bounds of low-precision scores: two-stage exact mining (src/cpu/cpu_mine_*.c;
 * shared so that the CUDA backend can bound its bf16/TF32 tiles the same way).
 *
 * What "exact" means. The exact score of query row q and corpus row c (both the f32 rows the
 * f32 path multiplies: converted from f16/bf16 and L2-normalised when asked) is
 *     s* = fl32(α · Σ_t q_t c_t)   with the sum computed in double (ns_score_exact),
 * i.e. the real value r = α·q·c to within (d+1)·2^-53 relative, then rounded once to f32. Each
 * product q_t·c_t of two f32 values is exact in double (24 + 24 ≤ 53 significand bits).
 *
 * What a GEMM computes instead, ŝ, and how far it can be from s*. Write u = 2^-24 (f32 unit
 * roundoff), u_b = 2^-8 (bf16, round to nearest even), γ_n = n·u / (1 − n·u), ‖·‖ the L2 norm.
 *  1. Inputs rounded to bf16: q̂_t = q_t(1 + δ), |δ| ≤ u_b, and the same for c (the exponent
 *     range is f32's; subnormals and their flushing by the bf16 dot instruction are the
 *     absolute term 5 below). Then |q̂_t ĉ_t − q_t c_t| ≤ (2u_b + u_b²)|q_t c_t|. Inputs that are
 *     bf16 already (and not normalised) are not rounded: δ = 0.
 *  2. A bf16 × bf16 product has at most 16 significand bits: it is exact in f32. (An f32 × f32
 *     product in an f32 GEMM is rounded or fused into an FMA; either way one rounding per term,
 *     counted in 3.)
 *  3. The d terms are summed in f32 in an order the library chooses (blocked, FMA chains, a
 *     tree of partial sums): every term passes through at most d roundings (d − 1 additions,
 *     plus one product rounding in the f32 case), so |fl(Σ p_t) − Σ p_t| ≤ γ_d · Σ|p_t|.
 *     That is IEEE f32 arithmetic rounding to nearest (the CPU GEMMs, cuBLAS's f32 SIMT GEMM):
 *     accumulation model NS_BOUND_ACC_NEAREST, unit u per rounding.
 *  3'. Tensor cores (the CUDA bf16 GEMM) are not IEEE adders. Measured on V100, T4 and A100
 *     (Fasi, Higham, Mikaitis & Pranesh, "Numerical behavior of NVIDIA tensor cores", PeerJ CS
 *     2021; Hopper's is unpublished), a block FMA adds b exact products to the f32 accumulator
 *     c by aligning every term to the largest one's exponent and truncating to 24 bits, with
 *     no guard bits, then normalises with truncation. Per block, each of the b terms other
 *     than the largest M loses less than one unit of M's last place (2^-23·|M|), and the
 *     normalisation less than 2^-23 of the result: below (b + 1)·2u·(|c| + Σ_b |p|). Over the
 *     d/b blocks, with |c| the earlier terms' sum, that is at most (first order)
 *     2u·(b + 1)(d/b + 1)·Σ|p_t| = 2u·(d + b + d/b + 1)·Σ|p_t| ≤ 4u·(d + 1)·Σ|p_t| for any
 *     1 ≤ b ≤ d. γ_{d+1} with u replaced by 6u (NS_BOUND_ACC_TENSOR_CORE) covers it, the
 *     scale's rounding of 4 and the second-order terms. Rounding to nearest, guard bits or
 *     cuBLAS's split-K reductions in f32 only make the error smaller. It assumes the aligned window keeps the
 *     accumulator's 24 bits (Hopper's FP8 accumulation reportedly keeps fewer; FP8 is not used).
 *     A truncating accumulator does exceed the bound of 3: c = (1, s, …, s) with s² just
 *     under 2^-23 loses every s² term (tests/test_mine_exact.cpp emulates it).
 *  4. The scale: one more rounding, |fl(α·x) − α·x| ≤ u·|α·x|; folded into γ_{d+1} (under 3',
 *     into its 6u).
 *     With Σ_t |q_t c_t| ≤ ‖q‖‖c‖ (Cauchy–Schwarz) and Σ|p_t| ≤ (1 + u_b)² ‖q‖‖c‖:
 *         |ŝ − r| ≤ |α|·‖q‖‖c‖ · [(2u_b + u_b²) + (1 + u_b)²·γ_{d+1}] + A
 *  5. A, the absolute term: with every |x| ≤ 2^32 (NS_BOUND_MAX_ABS; larger rows take the f32
 *     GEMM), subnormal inputs flushed or rounded change a product by at most 2^-126·2^34, and
 *     a flushed subnormal partial sum by 2^-126: A = |α|·(d + 2)·2^-90 bounds them all.
 *  6. s* itself: |s* − r| ≤ |r|·(u + γ^(double)_{d+1}(1 + u)) ≤ |α|‖q‖‖c‖·(u + 2^-50 (d+1)).
 * So |ŝ − s*| ≤ |α|‖q‖‖c‖·K + A with
 *         K = (2u_b + u_b²) + (1 + u_b)²·γ_{d+1} + u + (d+1)·2^-50,
 * and the norms themselves (computed in double from f32 rows, relative error < (d+2)·2^-53) and
 * the f32 evaluation of the bound are covered by NS_BOUND_SAFETY (relative) and by rounding
 * every bound up (nextafterf). For unit vectors and d = 384: K ≈ 7.85e-3 (bf16-rounded inputs),
 * 2.3e-5 (f32 GEMM, or inputs already in bf16).
 *
 *  7. A tighter bound for the bf16 GEMM from the rounding residuals (what the CPU backend uses):
 *     1. bounds the input rounding by its worst case u_b per component; the actual residuals
 *     q_r = q − q̂, c_r = c − ĉ (exact in f32 and in double: |q_r| ≤ u_b|q| has at most 24
 *     significant bits) are known when the rows are rounded. From the exact identity
 *         q·c − q̂·ĉ = q̂·c_r + q_r·c
 *     and Cauchy–Schwarz, |q·c − q̂·ĉ| ≤ ‖q̂‖‖c_r‖ + ‖q_r‖‖c‖ ≤ (1 + u_b)‖q‖‖c_r‖ + ‖q_r‖‖c‖
 *     (|q̂_t| ≤ (1 + u_b)|q_t|). With 2.–6. unchanged (Σ|q̂_t ĉ_t| ≤ (1 + u_b)²‖q‖‖c‖):
 *         |ŝ − s*| ≤ |α|·[K0·‖q‖‖c‖ + ‖q_r‖‖c‖ + (1 + u_b)·‖q‖‖c_r‖] + A,
 *         K0 = (1 + u_b)²·γ_{d+1} + u + (d+1)·2^-50   (ns_bound_residual_relative).
 *     Since ‖q_r‖ ≤ u_b‖q‖ and ‖c_r‖ ≤ u_b‖c‖ this never exceeds the bound of 1.–6.; for random
 *     data ‖x_r‖ ≈ 0.0017‖x‖ (not 0.0039), so the bound — and the band of candidates the exact
 *     re-score must settle — is about 2.3× narrower. Data already in bf16 has q_r = c_r = 0.
 *     The residual norms are computed in double (relative error (d+2)·2^-53, inside
 *     NS_BOUND_SAFETY, which multiplies every relative part) and rounded up. */
#ifndef NS_BOUND_H
#define NS_BOUND_H

#include "ns_hd.h"

#define NS_BOUND_U_F32 5.9604644775390625e-08 /* 2^-24 */
#define NS_BOUND_U_BF16 3.90625e-03           /* 2^-8 */
#define NS_BOUND_MAX_ABS 4294967296.0         /* 2^32: larger components take the f32 GEMM */
#define NS_BOUND_SAFETY 1.0009765625          /* 1 + 2^-10 on every relative bound */

/* How the GEMM accumulates (3 and 3' above): the unit of one addition's error, in u. */
#define NS_BOUND_ACC_NEAREST 1     /* IEEE f32, round to nearest: CPU GEMMs, f32 cuBLAS */
#define NS_BOUND_ACC_TENSOR_CORE 6 /* aligned, truncated block FMAs: the CUDA bf16 GEMM */

/* γ_{d+1} of the accumulation model acc (NS_BOUND_ACC_*). */
NS_HD NS_MATH_INLINE double ns_bound_gamma(long long d, int acc) {
    const double ua = (double)acc * NS_BOUND_U_F32;
    const double n = (double)(d + 1);
    return n * ua / (1.0 - n * ua);
}

/* K above, for d terms, inputs_rounded: 1 when the GEMM's inputs were rounded to bf16 from
 * other values, 0 when they are the exact values (f32 GEMM, or bf16 data not normalised); acc:
 * the GEMM's accumulation (NS_BOUND_ACC_*). */
NS_HD NS_MATH_INLINE double ns_bound_relative(long long d, int inputs_rounded, int acc) {
    const double u = NS_BOUND_U_F32, ub = inputs_rounded ? NS_BOUND_U_BF16 : 0.0;
    const double n = (double)(d + 1);
    const double gamma = ns_bound_gamma(d, acc);
    const double k = (2.0 * ub + ub * ub) + (1.0 + ub) * (1.0 + ub) * gamma + u +
                     n * 8.8817841970012523e-16 /* 2^-50 */;
    return k * NS_BOUND_SAFETY;
}

/* K0 of 7. above (times NS_BOUND_SAFETY): the bf16 GEMM's bound apart from the residual terms. */
NS_HD NS_MATH_INLINE double ns_bound_residual_relative(long long d, int acc) {
    const double u = NS_BOUND_U_F32, ub = NS_BOUND_U_BF16;
    const double n = (double)(d + 1);
    const double gamma = ns_bound_gamma(d, acc);
    return ((1.0 + ub) * (1.0 + ub) * gamma + u + n * 8.8817841970012523e-16 /* 2^-50 */) *
           NS_BOUND_SAFETY;
}

/* A above: |α|·(d + 2)·2^-90. */
NS_HD NS_MATH_INLINE double ns_bound_absolute(long long d, double abs_scale) {
    return abs_scale * (double)(d + 2) * 8.0779356694631609e-28 /* 2^-90 */;
}

#endif
