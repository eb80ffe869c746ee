/* ns_sample on the CPU, one query row at a time (ns_cpu_sample_row, also the second half of
 * ns_cpu_filter_sample's fused row):
 *   1. the candidates: the kept, non-empty slots, compressed in column order (column, id, score);
 *   2. their Gumbel keys (ns_cpu_sample_keys: ns_sample_key of src/hostdevice/ns_math.h, the
 *      CUDA kernel's code, 8 or 16 lanes wide, bit-identical);
 *   3. the best m by (key, lower column): sorted insertion behind the m-th best, or, for m <= 16
 *      on the AVX-512 path, a branch-free insert into two sorted registers;
 *   4. eligibility: a candidate is eligible when no earlier kept slot of the row has its id (a
 *      duplicate draws the same noise and could be returned twice; the first kept copy is the
 *      one drawn). Duplicates are rare in mined lists, so only the m winners are checked (a
 *      scan of the candidates before each; on AVX-512, whether any winner's id occurs twice);
 *      when one may be a later copy, the row is deduplicated with a hash set and step 3 runs
 *      again on the first copies. The winners are the same either way: the eligible candidates
 *      are a subset, so m winners that are all eligible are the best m eligible ones.
 * Steps 1, 3 and 4 have AVX-512 forms beside the portable ones, taken with the AVX-512 keys;
 * tests/test_sample_keys.cpp and tests/test_filter_sample.cpp force every path. */
#include "ns_cpu.h"
#include "cpu_candidates.h"
#include "ns_math.h"

#include <math.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

static const char *const FN = "ns_sample";

#if defined(__GNUC__)
#define NS_ALWAYS_INLINE static inline __attribute__((always_inline))
#else
#define NS_ALWAYS_INLINE static inline
#endif

/* (key, q) of candidate q as one integer that orders exactly as ns_before
 * (src/hostdevice/ns_order.h): the key's bits mapped to an unsigned order (−0 made +0 first, so
 * that it ties with +0 as the float compare does; keys are never NaN) above the complemented
 * position q (ties to the lower; candidates are in column order, so the lower column). */
static inline uint64_t pack(float key, uint32_t q) {
    uint32_t b = ns_float_bits(key + 0.0f);
    b = (b & 0x80000000u) ? ~b : (b | 0x80000000u);
    return ((uint64_t)b << 32) | (uint64_t)(uint32_t)~q;
}
static inline uint32_t packed_q(uint64_t p) { return ~(uint32_t)p; }

/* 1. The kept non-empty slots of the row, branch-free; returns how many. */
NS_ALWAYS_INLINE int64_t gather_candidates(const int64_t *ids, const float *s, const uint8_t *kp,
                                           int64_t C, const ns_sample_scratch *w) {
    int64_t n = 0;
    for (int64_t j = 0; j < C; j++) {
        w->col[n] = (uint32_t)j;
        w->id[n] = ids[j];
        w->s[n] = s[j];
        n += (ids[j] != -1) & (kp ? kp[j] != 0 : 1);
    }
    return n;
}

#if defined(__GNUC__) && defined(__x86_64__)
#include <immintrin.h>
#define NS_SAMPLE_AVX512 1
#define NS_AVX512_SEL __attribute__((target("avx512f,avx512vl,avx512bw")))
/* Step 1 on AVX-512 (the keys' AVX-512 path): 16 slots at a time, the candidates' lanes
 * compressed into registers and stored whole (the scratch has 16 spare slots: a store past n is
 * overwritten or never read). */
NS_AVX512_SEL static int64_t gather_candidates16(const int64_t *ids, const float *s,
                                                 const uint8_t *kp, int64_t C,
                                                 const ns_sample_scratch *w) {
    const __m512i none = _mm512_set1_epi64(-1);
    __m512i col = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    int64_t n = 0;
    for (int64_t j = 0; j < C; j += 16, col = _mm512_add_epi32(col, _mm512_set1_epi32(16))) {
        const __mmask16 live = C - j >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (C - j)) - 1u);
        const __m512i lo = _mm512_maskz_loadu_epi64((__mmask8)live, ids + j);
        const __m512i hi = _mm512_maskz_loadu_epi64((__mmask8)(live >> 8), ids + j + 8);
        __mmask16 ok = (__mmask16)(_mm512_cmpneq_epi64_mask(lo, none) |
                                   (_mm512_cmpneq_epi64_mask(hi, none) << 8)) & live;
        if (kp) ok &= _mm_test_epi8_mask(_mm_maskz_loadu_epi8(live, kp + j), _mm_set1_epi8(-1));
        const __mmask8 ok_lo = (__mmask8)ok, ok_hi = (__mmask8)(ok >> 8);
        const int64_t n_lo = __builtin_popcount(ok_lo);
        _mm512_storeu_si512(w->id + n, _mm512_maskz_compress_epi64(ok_lo, lo));
        _mm512_storeu_si512(w->id + n + n_lo, _mm512_maskz_compress_epi64(ok_hi, hi));
        const __m512 sv = _mm512_maskz_loadu_ps(live, s + j);
        _mm512_storeu_ps(w->s + n, _mm512_maskz_compress_ps(ok, sv));
        _mm512_storeu_si512(w->col + n, _mm512_maskz_compress_epi32(ok, col));
        n += __builtin_popcount(ok);
    }
    return n;
}
#endif

/* 3. The best min(m, n) packed (key, column), best first: sorted insertion of each candidate
 * that beats the current m-th (about m · ln(n / m) of them for random keys). */
NS_ALWAYS_INLINE int64_t select_best(const ns_sample_scratch *w, int64_t n, int64_t m) {
    uint64_t *best = w->best;
    int64_t k = 0;
    for (int64_t q = 0; q < n; q++) {
        const uint64_t p = pack(w->key[q], (uint32_t)q);
        if (k == m) {
            if (p <= best[m - 1]) continue;
            k--; /* the worst leaves */
        }
        int64_t r = k++;
        for (; r > 0 && best[r - 1] < p; r--) best[r] = best[r - 1];
        best[r] = p;
    }
    return k;
}

/* 4. Whether an earlier candidate (kept, non-empty, in column order) has candidate q's id: a
 * vector compare over the packed ids. */
NS_ALWAYS_INLINE int earlier_copy(const int64_t *id, int64_t q) {
    const int64_t x = id[q];
    int64_t found = 0; /* 64-bit, as the compared lanes: no narrowing in the loop */
    for (int64_t j = 0; j < q; j++) found |= (int64_t)(id[j] == x);
    return found != 0;
}

#ifdef NS_SAMPLE_AVX512
/* Step 3 for m <= 16 on AVX-512 (the keys' AVX-512 path): the best 16 packed values live in two
 * registers, sorted; a candidate is inserted without a branch — the lanes it beats take their
 * left neighbour (or the candidate, whichever is smaller) — and only candidates above the m-th
 * best are inserted (8 compared at once). The same order and the same result as select_best. */
NS_AVX512_SEL static int64_t select_best16(const ns_sample_scratch *w, int64_t n, int64_t m) {
    __m512i lo = _mm512_setzero_si512(), hi = lo; /* 0 is below every packed key */
    __m512i thr = lo;
    const __m512i at = _mm512_set1_epi64((m - 1) & 7);
    const __m256i top = _mm256_set1_epi32((int)0x80000000u), ones = _mm256_set1_epi32(-1);
    for (int64_t q = 0; q < n; q += 8) {
        const __mmask8 live = n - q >= 8 ? (__mmask8)0xff : (__mmask8)((1u << (n - q)) - 1u);
        /* pack(): the key's order bits above the complemented column, 8 at a time */
        __m256 k = _mm256_add_ps(_mm256_castsi256_ps(_mm256_maskz_loadu_epi32(live, w->key + q)),
                                 _mm256_setzero_ps());
        __m256i b = _mm256_castps_si256(k);
        b = _mm256_xor_si256(b, _mm256_or_si256(_mm256_srai_epi32(b, 31), top));
        __m256i c = _mm256_xor_si256(
            _mm256_add_epi32(_mm256_set1_epi32((int)q), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)),
            ones);
        __m512i p = _mm512_or_si512(_mm512_slli_epi64(_mm512_cvtepu32_epi64(b), 32),
                                    _mm512_cvtepu32_epi64(c));
        for (__mmask8 gt = _mm512_mask_cmpgt_epu64_mask(live, p, thr); gt; gt &= gt - 1) {
            const __m512i pb = _mm512_permutexvar_epi64(_mm512_set1_epi64(__builtin_ctz(gt)), p);
            const __mmask8 mlo = _mm512_cmpgt_epu64_mask(pb, lo);
            const __mmask8 mhi = _mm512_cmpgt_epu64_mask(pb, hi);
            hi = _mm512_mask_min_epu64(hi, mhi, _mm512_alignr_epi64(hi, lo, 7), pb);
            lo = _mm512_mask_min_epu64(lo, mlo, _mm512_alignr_epi64(lo, pb, 7), pb);
        } /* (a lane of this block below the risen m-th best is inserted anyway: harmless) */
        thr = _mm512_permutexvar_epi64(at, m <= 8 ? lo : hi);
    }
    uint64_t best[16];
    _mm512_storeu_si512(best, lo);
    _mm512_storeu_si512(best + 8, hi);
    const int64_t k = n < m ? n : m;
    memcpy(w->best, best, (size_t)k * sizeof *best);
    return k;
}

/* Step 4 for m <= 16 on AVX-512: whether some winner's id occurs more than once among the n
 * candidates — each candidate compared with the (up to 16) winners' ids at once. Stricter than
 * "a winner is a later copy" (a first copy with a later one also says yes): a yes only sends the
 * row down the exact duplicate path. */
NS_AVX512_SEL static int winners_repeat16(const ns_sample_scratch *w, int64_t n, int64_t k) {
    const __m512i low32 = _mm512_set1_epi64(0xffffffffll), one = _mm512_set1_epi64(1);
    const __m512i none = _mm512_set1_epi64(-1); /* no candidate's id: never matches */
    const __mmask8 k0 = (__mmask8)(k >= 8 ? 0xff : (1u << k) - 1u);
    const __mmask8 k1 = (__mmask8)(k >= 16 ? 0xff : k > 8 ? (1u << (k - 8)) - 1u : 0u);
    /* the winners' positions q = ~(u32)packed, then their ids */
    const __m512i q0 = _mm512_andnot_si512(_mm512_maskz_loadu_epi64(k0, w->best), low32);
    const __m512i q1 = _mm512_andnot_si512(_mm512_maskz_loadu_epi64(k1, w->best + 8), low32);
    const __m512i w0 = _mm512_mask_i64gather_epi64(none, k0, q0, w->id, 8);
    const __m512i w1 = _mm512_mask_i64gather_epi64(none, k1, q1, w->id, 8);
    __m512i c0 = _mm512_setzero_si512(), c1 = c0;
    for (int64_t j = 0; j < n; j++) {
        const __m512i b = _mm512_set1_epi64(w->id[j]);
        c0 = _mm512_mask_add_epi64(c0, _mm512_cmpeq_epi64_mask(w0, b), c0, one);
        c1 = _mm512_mask_add_epi64(c1, _mm512_cmpeq_epi64_mask(w1, b), c1, one);
    }
    return (_mm512_cmpgt_epu64_mask(c0, one) | _mm512_cmpgt_epu64_mask(c1, one)) != 0;
}
#endif

/* Step 4 on the path the keys took: whether a winner may be a later copy of an id. */
NS_ALWAYS_INLINE int winners_may_repeat(const ns_sample_scratch *w, int64_t n, int64_t k,
                                        int64_t m, int isa) {
#ifdef NS_SAMPLE_AVX512
    if (isa == NS_KEYS_ISA_AVX512 && m <= 16) return winners_repeat16(w, n, k);
#endif
    (void)n, (void)m, (void)isa;
    for (int64_t r = 0; r < k; r++)
        if (earlier_copy(w->id, packed_q(w->best[r]))) return 1;
    return 0;
}

/* Step 3 on the path the keys took. */
NS_ALWAYS_INLINE int64_t select_winners(const ns_sample_scratch *w, int64_t n, int64_t m, int isa) {
#ifdef NS_SAMPLE_AVX512
    if (isa == NS_KEYS_ISA_AVX512 && m <= 16) return select_best16(w, n, m);
#endif
    (void)isa;
    return select_best(w, n, m);
}

static int64_t hash_size(int64_t per_query) {
    int64_t h = 16;
    while (h < 2 * per_query) h *= 2;
    return h;
}

/* Inserts id into the open-addressing set; returns 0 when it was already there. */
static int set_insert(int64_t *set, int64_t mask, int64_t id) {
    uint64_t x = (uint64_t)id * 0x9E3779B97F4A7C15ull;
    int64_t p = (int64_t)((x ^ (x >> 29)) & (uint64_t)mask);
    while (set[p] != -1) {
        if (set[p] == id) return 0;
        p = (p + 1) & mask;
    }
    set[p] = id;
    return 1;
}

/* The duplicate path: keeps the first copy of every id (in column order) among the n
 * candidates, with their keys; returns how many. */
static int64_t first_copies(const ns_sample_scratch *w, int64_t n) {
    memset(w->set, 0xff, (size_t)(w->hmask + 1) * sizeof *w->set); /* all -1: empty */
    int64_t k = 0;
    for (int64_t q = 0; q < n; q++) {
        if (!set_insert(w->set, w->hmask, w->id[q])) continue;
        w->col[k] = w->col[q];
        w->id[k] = w->id[q];
        w->key[k] = w->key[q];
        k++;
    }
    return k;
}

NS_ALWAYS_INLINE int64_t sample_row(const ns_candidates *c, const uint8_t *kp,
                                    const ns_sampler_options *o, int isa, int64_t m, int64_t i,
                                    const ns_sample_scratch *w, int64_t *index, float *score) {
    const int64_t C = c->per_query;
    const int64_t *ids = c->id + i * C;
    const float *s = c->score + i * C;
    const float sp = c->positive_score ? c->positive_score[i] : 0.0f;
#ifdef NS_SAMPLE_AVX512
    int64_t n = isa == NS_KEYS_ISA_AVX512 ? gather_candidates16(ids, s, kp, C, w)
                                          : gather_candidates(ids, s, kp, C, w);
#else
    int64_t n = gather_candidates(ids, s, kp, C, w);
#endif
    ns_cpu_sample_keys(isa, o, c->query_offset + i, sp, w->id, w->s, n, w->key);
    int64_t k = select_winners(w, n, m, isa);
    if (winners_may_repeat(w, n, k, m, isa)) {
        n = first_copies(w, n);
        k = select_winners(w, n, m, isa);
    }
    for (int64_t r = 0; r < m; r++) {
        const uint32_t col = r < k ? w->col[packed_q(w->best[r])] : 0u;
        index[r] = r < k ? ids[col] : -1;
        if (score) score[r] = r < k ? s[col] : NAN;
    }
    return k;
}

NS_CPU_CLONES int64_t ns_cpu_sample_row(const ns_candidates *c, const uint8_t *keep,
                                        const ns_sampler_options *o, int isa, int64_t m,
                                        int64_t i, const ns_sample_scratch *w, int64_t *index,
                                        float *score) {
    return sample_row(c, keep, o, isa, m, i, w, index, score);
}

/* Per thread, each piece padded to whole cache lines: col (C u32), id (C i64), s and key (C
 * f32 each; C + 16 of each), best (m u64), set (H i64). */
static size_t line(size_t bytes) { return (bytes + 63) / 64 * 64; }
static size_t per_thread_bytes(const ns_sample_plan *p) {
    const size_t C = (size_t)p->C + 16; /* spare slots for gather_candidates16's whole stores */
    return line(C * 4) + line(C * 8) + 2 * line(C * 4) + line((size_t)p->m * 8) +
           line((size_t)p->H * 8);
}

void ns_cpu_sample_plan(ns_sample_plan *p, int64_t C, int64_t m, int nt) {
    p->C = C;
    p->m = m;
    p->H = hash_size(C);
    p->nt = nt;
    p->base = NULL;
}

void ns_cpu_sample_layout(ns_sample_plan *p, ns_arena *a) {
    p->base = ns_arena_carve(a, per_thread_bytes(p) * (size_t)p->nt);
}

ns_sample_scratch ns_cpu_sample_scratch(const ns_sample_plan *p, int tid) {
    const size_t C = (size_t)p->C + 16;
    char *b = (char *)p->base + per_thread_bytes(p) * (size_t)tid;
    ns_sample_scratch w;
    w.col = (uint32_t *)b, b += line(C * 4);
    w.id = (int64_t *)b, b += line(C * 8);
    w.s = (float *)b, b += line(C * 4);
    w.key = (float *)b, b += line(C * 4);
    w.best = (uint64_t *)b, b += line((size_t)p->m * 8);
    w.set = (int64_t *)b;
    w.hmask = p->H - 1;
    return w;
}

ns_status ns_cpu_sample_check(ns_context *ctx, const char *fn, const ns_candidates *cand,
                              const ns_sampler_options *o, int slots_checked) {
    ns_status st;
    const int simans = o->strategy == NS_SAMPLE_SIMANS;
    if ((st = slots_checked ? ns_check_candidate_rows(ctx, fn, cand, simans, 0)
                            : ns_check_candidate_data(ctx, fn, cand, simans, 0)))
        return st;
    if (cand->per_query > (int64_t)UINT32_MAX)
        return ns_fail(ctx, NS_ERR_UNSUPPORTED,
                       "%s: cand->per_query (%lld) is larger than 2^32 - 1 (the CPU sampler "
                       "packs a column into 32 bits)",
                       fn, (long long)cand->per_query);
    return NS_OK;
}

static void sample_layout(void *plan, ns_arena *a) {
    ns_cpu_sample_layout((ns_sample_plan *)plan, a);
}

ns_status ns_cpu_sample(ns_context *ctx, const ns_candidates *cand, const uint8_t *keep,
                        const ns_sampler_options *o, int64_t m, int64_t *index, float *score,
                        int64_t *count) {
    ns_status st;
    if ((st = ns_cpu_sample_check(ctx, FN, cand, o, 0))) return st;
    const int nt = ns_threads(ctx), isa = ns_cpu_sample_keys_isa();
    const int64_t B = cand->queries, C = cand->per_query;
    ns_sample_plan plan;
    ns_cpu_sample_plan(&plan, C, m, nt);
    if ((st = ns_arena_lay_out(ctx, &ctx->scratch, sample_layout, &plan, FN))) return st;
#pragma omp parallel num_threads(nt)
    {
#ifdef _OPENMP
        const ns_sample_scratch w = ns_cpu_sample_scratch(&plan, omp_get_thread_num());
#else
        const ns_sample_scratch w = ns_cpu_sample_scratch(&plan, 0);
#endif
#pragma omp for schedule(dynamic, 64)
        for (int64_t i = 0; i < B; i++)
            count[i] = ns_cpu_sample_row(cand, keep ? keep + i * C : NULL, o, isa, m, i, &w,
                                         index + i * m, score ? score + i * m : NULL);
    }
    return NS_OK;
}
