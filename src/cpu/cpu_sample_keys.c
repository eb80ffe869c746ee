/* The sampling keys of one query row, many slots at a time (ns_cpu_sample_keys, ns_cpu.h).
 *
 * The key of a slot is ns_sample_key (src/hostdevice/ns_math.h): Philox4x32-10 on the counter
 * (id, query id, step), u = ((x >> 9) + 0.5) · 2^-23, G = −ns_logf(−ns_logf(u)), plus the
 * strategy's log-weight. The AVX-512 and AVX2 paths below run that same sequence of IEEE
 * operations 16 and 8 lanes wide: the integer Philox rounds (exact), the same conversions, additions,
 * multiplications, the divisions of softmax, and an explicit fused multiply-add exactly where
 * ns_logf calls fmaf (this file is compiled with -ffp-contract=off, so nothing else fuses).
 * Each lane therefore gives the bits of the scalar key. Lanes whose logarithm meets a special
 * input (zero, negative, subnormal, Inf, NaN — never for the sampler's u and −log u, kept
 * for safety) are recomputed by the scalar code. The path is chosen at run time
 * (__builtin_cpu_supports: AVX-512, else AVX2 + FMA, else the scalar loop).
 * tests/test_sample_keys.cpp checks every path the CPU has against ns_sample_key bit for bit. */
#include "ns_cpu.h"
#include "ns_math.h"

#include <string.h>

#if defined(__GNUC__) && defined(__x86_64__)
#define NS_KEYS_AVX512 1
#include <immintrin.h>
#endif

static int forced_isa = -1; /* tests: ns_cpu_sample_keys_force */

void ns_cpu_sample_keys_force(int isa) { forced_isa = isa; }

/* The scalar loop, also compiled for FMA hardware (picked at load time): ns_logf's fmaf is then
 * one instruction instead of a libm call. The fused result is the same correctly rounded value,
 * so the keys are the same bits on either. */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && !defined(__FMA__) && \
    defined(__linux__)
__attribute__((target_clones("fma", "default")))
#endif
static void keys_scalar(const ns_sampler_options *o, int64_t qid, float sp, const int64_t *ids,
                        const float *s, int64_t n, float *keys) {
    const int strategy = (int)o->strategy;
    for (int64_t j = 0; j < n; j++)
        keys[j] = ns_sample_key(strategy, s[j], sp, o->simans_a, o->simans_b, o->temperature,
                                o->seed, o->step, qid, ids[j]);
}

#ifdef NS_KEYS_AVX512
#define NS_AVX512 __attribute__((target("avx512f,avx512dq,avx512vl,fma")))

/* hi and lo 32 bits of the 16 products a · m (unsigned 32 × 32 → 64). */
NS_AVX512 static inline void mul_hilo(__m512i a, __m512i m, __m512i *hi, __m512i *lo) {
    __m512i even = _mm512_mul_epu32(a, m);                          /* lanes 0, 2, ... */
    __m512i odd = _mm512_mul_epu32(_mm512_srli_epi64(a, 32), m);    /* lanes 1, 3, ... */
    *hi = _mm512_mask_blend_epi32((__mmask16)0xAAAA, _mm512_srli_epi64(even, 32), odd);
    *lo = _mm512_mullo_epi32(a, m);
}

/* Word 0 of Philox4x32-10 for 16 counters (ns_philox4x32_10). */
NS_AVX512 static inline __m512i philox16(__m512i c0, __m512i c1, __m512i c2, __m512i c3,
                                          uint32_t k0, uint32_t k1) {
    const __m512i M0 = _mm512_set1_epi32((int)NS_PHILOX_M0);
    const __m512i M1 = _mm512_set1_epi32((int)NS_PHILOX_M1);
    for (int r = 0; r < 10; r++) {
        if (r > 0) {
            k0 += NS_PHILOX_W0;
            k1 += NS_PHILOX_W1;
        }
        __m512i hi0, lo0, hi1, lo1;
        mul_hilo(c0, M0, &hi0, &lo0);
        mul_hilo(c2, M1, &hi1, &lo1);
        __m512i n0 = _mm512_xor_si512(_mm512_xor_si512(hi1, c1), _mm512_set1_epi32((int)k0));
        __m512i n2 = _mm512_xor_si512(_mm512_xor_si512(hi0, c3), _mm512_set1_epi32((int)k1));
        c0 = n0;
        c1 = lo1;
        c2 = n2;
        c3 = lo0;
    }
    return c0;
}

/* ns_logf for 16 positive normal finite floats (the caller sends the others to the scalar
 * code): the same integer steps, the same subtraction, product and fused steps. */
NS_AVX512 static inline __m512 logf16(__m512 a) {
    __m512i ia = _mm512_castps_si512(a);
    __m512i e = _mm512_and_si512(_mm512_sub_epi32(ia, _mm512_set1_epi32(0x3f2aaaab)),
                                 _mm512_set1_epi32((int)0xff800000u));
    __m512 m = _mm512_castsi512_ps(_mm512_sub_epi32(ia, e));
    /* e / 8388608 of a multiple of 2^23 is its arithmetic shift; bias is 0 for normal input. */
    __m512 i = _mm512_cvtepi32_ps(_mm512_srai_epi32(e, 23));
    __m512 f = _mm512_sub_ps(m, _mm512_set1_ps(1.0f));
    __m512 s = _mm512_mul_ps(f, f);
    __m512 p = _mm512_set1_ps(0x1.fef318p-4f);
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(-0x1.0ab670p-3f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(0x1.b33202p-4f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(-0x1.f19408p-4f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(0x1.2535dcp-3f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(-0x1.55b038p-3f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(0x1.9994f8p-3f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(-0x1.fffe38p-3f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(0x1.55555ap-2f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(-0.5f));
    __m512 r = _mm512_fmadd_ps(p, s, f);
    r = _mm512_fmadd_ps(i, _mm512_set1_ps(0x1.7f7d1cp-20f), r);
    return _mm512_fmadd_ps(i, _mm512_set1_ps(0x1.62e4p-1f), r);
}

/* The lanes that logf16 may not take: sign set, zero, subnormal, Inf or NaN. */
NS_AVX512 static inline __mmask16 log_special(__m512 a) {
    __m512i ia = _mm512_castps_si512(a);
    /* ia − 0x00800000 (unsigned) ≥ 0x7f000000 exactly when ia < 0x00800000 or ia ≥ 0x7f800000 */
    return _mm512_cmpge_epu32_mask(_mm512_sub_epi32(ia, _mm512_set1_epi32(0x00800000)),
                                   _mm512_set1_epi32(0x7f000000));
}

NS_AVX512 static inline __m512 neg16(__m512 x) {
    return _mm512_castsi512_ps(
        _mm512_xor_si512(_mm512_castps_si512(x), _mm512_set1_epi32((int)0x80000000u)));
}

NS_AVX512 static void keys_avx512(const ns_sampler_options *o, int64_t qid, float sp,
                                  const int64_t *ids, const float *s, int64_t n, float *keys) {
    const int strategy = (int)o->strategy;
    if (strategy == NS_SAMPLE_TOP) {
        for (int64_t j = 0; j < n; j++) keys[j] = s[j];
        return;
    }
    const uint64_t q = (uint64_t)qid;
    const uint32_t k0 = (uint32_t)o->seed, k1 = (uint32_t)(o->seed >> 32);
    const __m512i c1 = _mm512_set1_epi32((int)(uint32_t)q);
    const __m512i c2 = _mm512_set1_epi32((int)(uint32_t)o->step);
    const __m512i qhi = _mm512_set1_epi32((int)(((q >> 32) & 0xffffu) << 16));
    const __m512 sp16 = _mm512_set1_ps(sp), a16 = _mm512_set1_ps(o->simans_a),
                 b16 = _mm512_set1_ps(o->simans_b), tau16 = _mm512_set1_ps(o->temperature);
    int64_t j = 0;
    for (; j < n; j += 16) {
        const int64_t left = n - j;
        const __mmask16 live = left >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << left) - 1u);
        const __mmask8 lo8 = (__mmask8)(live & 0xff), hi8 = (__mmask8)(live >> 8);
        __m512i id_lo = _mm512_maskz_loadu_epi64(lo8, ids + j);
        __m512i id_hi = _mm512_maskz_loadu_epi64(hi8, ids + j + 8);
        /* (u32)id and (id >> 32) & 0xffff, 16 lanes */
        __m512i c0 = _mm512_inserti64x4(_mm512_castsi256_si512(_mm512_cvtepi64_epi32(id_lo)),
                                        _mm512_cvtepi64_epi32(id_hi), 1);
        __m512i top = _mm512_inserti64x4(
            _mm512_castsi256_si512(_mm512_cvtepi64_epi32(_mm512_srli_epi64(id_lo, 32))),
            _mm512_cvtepi64_epi32(_mm512_srli_epi64(id_hi, 32)), 1);
        __m512i c3 = _mm512_or_si512(_mm512_and_si512(top, _mm512_set1_epi32(0xffff)), qhi);
        __m512i x = philox16(c0, c1, c2, c3, k0, k1);
        /* ns_uniform_open: ((float)(x >> 9) + 0.5) · 2^-23 (x >> 9 < 2^23: the signed
         * conversion is the unsigned one) */
        __m512 u = _mm512_mul_ps(
            _mm512_add_ps(_mm512_cvtepi32_ps(_mm512_srli_epi32(x, 9)), _mm512_set1_ps(0.5f)),
            _mm512_set1_ps(0x1p-23f));
        __m512 l1 = logf16(u);
        __m512 nl1 = neg16(l1);
        __m512 g = neg16(logf16(nl1));
        __mmask16 special = (log_special(u) | log_special(nl1)) & live;
        __m512 key = g;
        if (strategy != NS_SAMPLE_UNIFORM) {
            __m512 sv = _mm512_maskz_loadu_ps(live, s + j);
            __m512 w;
            if (strategy == NS_SAMPLE_SIMANS) {
                __m512 d = _mm512_sub_ps(_mm512_sub_ps(sv, sp16), b16);
                w = neg16(_mm512_mul_ps(a16, _mm512_mul_ps(d, d)));
            } else {
                w = _mm512_div_ps(sv, tau16);
            }
            key = _mm512_add_ps(w, g);
        }
        _mm512_mask_storeu_ps(keys + j, live, key);
        if (special) /* never for the sampler's inputs; the scalar code for exactness */
            for (int l = 0; l < 16; l++)
                if (special & (1u << l))
                    keys_scalar(o, qid, sp, ids + j + l, s + j + l, 1, keys + j + l);
    }
}
#endif

#ifdef NS_KEYS_AVX512
#define NS_AVX2 __attribute__((target("avx2,fma")))

/* hi and lo 32 bits of the 8 products a · m (unsigned 32 × 32 → 64). */
NS_AVX2 static inline void mul_hilo8(__m256i a, __m256i m, __m256i *hi, __m256i *lo) {
    __m256i even = _mm256_mul_epu32(a, m);                       /* lanes 0, 2, ... */
    __m256i odd = _mm256_mul_epu32(_mm256_srli_epi64(a, 32), m); /* lanes 1, 3, ... */
    *hi = _mm256_blend_epi32(_mm256_srli_epi64(even, 32), odd, 0xAA);
    *lo = _mm256_mullo_epi32(a, m);
}

/* Word 0 of Philox4x32-10 for 8 counters (ns_philox4x32_10). */
NS_AVX2 static inline __m256i philox8(__m256i c0, __m256i c1, __m256i c2, __m256i c3,
                                       uint32_t k0, uint32_t k1) {
    const __m256i M0 = _mm256_set1_epi32((int)NS_PHILOX_M0);
    const __m256i M1 = _mm256_set1_epi32((int)NS_PHILOX_M1);
    for (int r = 0; r < 10; r++) {
        if (r > 0) {
            k0 += NS_PHILOX_W0;
            k1 += NS_PHILOX_W1;
        }
        __m256i hi0, lo0, hi1, lo1;
        mul_hilo8(c0, M0, &hi0, &lo0);
        mul_hilo8(c2, M1, &hi1, &lo1);
        __m256i n0 = _mm256_xor_si256(_mm256_xor_si256(hi1, c1), _mm256_set1_epi32((int)k0));
        __m256i n2 = _mm256_xor_si256(_mm256_xor_si256(hi0, c3), _mm256_set1_epi32((int)k1));
        c0 = n0;
        c1 = lo1;
        c2 = n2;
        c3 = lo0;
    }
    return c0;
}

/* ns_logf for 8 positive normal finite floats: logf16's steps, 8 lanes. */
NS_AVX2 static inline __m256 logf8(__m256 a) {
    __m256i ia = _mm256_castps_si256(a);
    __m256i e = _mm256_and_si256(_mm256_sub_epi32(ia, _mm256_set1_epi32(0x3f2aaaab)),
                                 _mm256_set1_epi32((int)0xff800000u));
    __m256 m = _mm256_castsi256_ps(_mm256_sub_epi32(ia, e));
    __m256 i = _mm256_cvtepi32_ps(_mm256_srai_epi32(e, 23));
    __m256 f = _mm256_sub_ps(m, _mm256_set1_ps(1.0f));
    __m256 s = _mm256_mul_ps(f, f);
    __m256 p = _mm256_set1_ps(0x1.fef318p-4f);
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(-0x1.0ab670p-3f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(0x1.b33202p-4f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(-0x1.f19408p-4f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(0x1.2535dcp-3f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(-0x1.55b038p-3f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(0x1.9994f8p-3f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(-0x1.fffe38p-3f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(0x1.55555ap-2f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(-0.5f));
    __m256 r = _mm256_fmadd_ps(p, s, f);
    r = _mm256_fmadd_ps(i, _mm256_set1_ps(0x1.7f7d1cp-20f), r);
    return _mm256_fmadd_ps(i, _mm256_set1_ps(0x1.62e4p-1f), r);
}

/* The lanes logf8 may not take (log_special's test; unsigned ≥ by max_epu32), as 8 bits. */
NS_AVX2 static inline int log_special8(__m256 a) {
    const __m256i T = _mm256_set1_epi32(0x7f000000);
    __m256i x = _mm256_sub_epi32(_mm256_castps_si256(a), _mm256_set1_epi32(0x00800000));
    __m256i ge = _mm256_cmpeq_epi32(_mm256_max_epu32(x, T), x);
    return _mm256_movemask_ps(_mm256_castsi256_ps(ge));
}

NS_AVX2 static inline __m256 neg8(__m256 x) {
    return _mm256_castsi256_ps(
        _mm256_xor_si256(_mm256_castps_si256(x), _mm256_set1_epi32((int)0x80000000u)));
}

/* The keys of 8 slots (ids, scores s; all 8 read). */
NS_AVX2 static inline __m256 keys8(int strategy, const int64_t *ids, const float *s,
                                   __m256i c1, __m256i c2, __m256i qhi, uint32_t k0,
                                   uint32_t k1, __m256 sp8, __m256 a8, __m256 b8, __m256 tau8,
                                   int *special) {
    /* (u32)id and (id >> 32) & 0xffff, 8 lanes: the 32-bit halves of each 4 ids gathered into
     * the low (low words) and high (high words) 128 bits, then the two sets joined. */
    const __m256i halves = _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7);
    __m256i a = _mm256_permutevar8x32_epi32(_mm256_loadu_si256((const __m256i *)ids), halves);
    __m256i b =
        _mm256_permutevar8x32_epi32(_mm256_loadu_si256((const __m256i *)(ids + 4)), halves);
    __m256i c0 = _mm256_permute2x128_si256(a, b, 0x20);
    __m256i top = _mm256_permute2x128_si256(a, b, 0x31);
    __m256i c3 = _mm256_or_si256(_mm256_and_si256(top, _mm256_set1_epi32(0xffff)), qhi);
    __m256i x = philox8(c0, c1, c2, c3, k0, k1);
    __m256 u = _mm256_mul_ps(
        _mm256_add_ps(_mm256_cvtepi32_ps(_mm256_srli_epi32(x, 9)), _mm256_set1_ps(0.5f)),
        _mm256_set1_ps(0x1p-23f));
    __m256 nl1 = neg8(logf8(u));
    __m256 g = neg8(logf8(nl1));
    *special = log_special8(u) | log_special8(nl1);
    if (strategy == NS_SAMPLE_UNIFORM) return g;
    __m256 sv = _mm256_loadu_ps(s), w;
    if (strategy == NS_SAMPLE_SIMANS) {
        __m256 d = _mm256_sub_ps(_mm256_sub_ps(sv, sp8), b8);
        w = neg8(_mm256_mul_ps(a8, _mm256_mul_ps(d, d)));
    } else {
        w = _mm256_div_ps(sv, tau8);
    }
    return _mm256_add_ps(w, g);
}

NS_AVX2 static void keys_avx2(const ns_sampler_options *o, int64_t qid, float sp,
                              const int64_t *ids, const float *s, int64_t n, float *keys) {
    const int strategy = (int)o->strategy;
    if (strategy == NS_SAMPLE_TOP) {
        for (int64_t j = 0; j < n; j++) keys[j] = s[j];
        return;
    }
    const uint64_t q = (uint64_t)qid;
    const uint32_t k0 = (uint32_t)o->seed, k1 = (uint32_t)(o->seed >> 32);
    const __m256i c1 = _mm256_set1_epi32((int)(uint32_t)q);
    const __m256i c2 = _mm256_set1_epi32((int)(uint32_t)o->step);
    const __m256i qhi = _mm256_set1_epi32((int)(((q >> 32) & 0xffffu) << 16));
    const __m256 sp8 = _mm256_set1_ps(sp), a8 = _mm256_set1_ps(o->simans_a),
                 b8 = _mm256_set1_ps(o->simans_b), tau8 = _mm256_set1_ps(o->temperature);
    for (int64_t j = 0; j < n; j += 8) {
        const int64_t left = n - j < 8 ? n - j : 8;
        int special;
        if (left == 8) {
            _mm256_storeu_ps(keys + j, keys8(strategy, ids + j, s + j, c1, c2, qhi, k0, k1, sp8,
                                             a8, b8, tau8, &special));
        } else { /* the tail through a padded copy: no read or write past n */
            int64_t ti[8] = {0};
            float ts[8] = {0}, tk[8];
            memcpy(ti, ids + j, (size_t)left * sizeof *ti);
            memcpy(ts, s + j, (size_t)left * sizeof *ts);
            _mm256_storeu_ps(tk, keys8(strategy, ti, ts, c1, c2, qhi, k0, k1, sp8, a8, b8,
                                       tau8, &special));
            memcpy(keys + j, tk, (size_t)left * sizeof *tk);
            special &= (1 << left) - 1;
        }
        if (special) /* never for the sampler's inputs; the scalar code for exactness */
            for (int l = 0; l < 8; l++)
                if (special & (1 << l))
                    keys_scalar(o, qid, sp, ids + j + l, s + j + l, 1, keys + j + l);
    }
}
#endif

static int cpu_has(int isa) {
#ifdef NS_KEYS_AVX512
    __builtin_cpu_init();
    if (isa == NS_KEYS_ISA_AVX512)
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
               __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("fma");
    if (isa == NS_KEYS_ISA_AVX2)
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#endif
    return isa == NS_KEYS_ISA_SCALAR;
}

int ns_cpu_sample_keys_supported(int isa) { return cpu_has(isa); }

int ns_cpu_sample_keys_isa(void) {
    static int isa = -1;
    if (forced_isa >= 0) return forced_isa;
    if (isa < 0)
        isa = cpu_has(NS_KEYS_ISA_AVX512) ? NS_KEYS_ISA_AVX512
              : cpu_has(NS_KEYS_ISA_AVX2) ? NS_KEYS_ISA_AVX2
                                          : NS_KEYS_ISA_SCALAR;
    return isa;
}

void ns_cpu_sample_keys(int isa, const ns_sampler_options *o, int64_t qid, float sp,
                        const int64_t *ids, const float *s, int64_t n, float *keys) {
#ifdef NS_KEYS_AVX512
    if (isa == NS_KEYS_ISA_AVX512) {
        keys_avx512(o, qid, sp, ids, s, n, keys);
        return;
    }
    if (isa == NS_KEYS_ISA_AVX2) {
        keys_avx2(o, qid, sp, ids, s, n, keys);
        return;
    }
#endif
    (void)isa;
    keys_scalar(o, qid, sp, ids, s, n, keys);
}
