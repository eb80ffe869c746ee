/* The per-query reservoirs of ns_mine_topk on the CPU (cpu_mine.h): candidates taken from a
 * tile row's listed columns, and the two passes of a shrink (the lower bounds as order keys;
 * the entries whose upper bound reaches the threshold kept). Each has a portable version and an
 * AVX-512 one (chosen at run time, 16 entries at a time) that computes the same bits: the bounds
 * with the same roundings in the same order (up()/down() as integer steps on the bits), the
 * same entries appended and kept, in the same order. */
#include "cpu_mine.h"

#include <math.h>

/* ---------------------------------------------------------------- portable */

static int64_t take_portable(const float *row, const int32_t *cols, int64_t c, int64_t stop,
                             const row_bound *b, float pre, float thr, int64_t base,
                             reservoir *r) {
    int64_t cnt = r->cnt;
    for (; c < stop && cnt < r->cap; c++) {
        const int64_t j = cols[c];
        const float v = row[j];
        if (!(fabsf(v) <= FLT_MAX)) {
            r->cnt = cnt;
            return c;
        }
        if (!(v > pre)) continue; /* below a threshold raised since the scan */
        const float ej = ns_mine_bound_of(b, j);
        if (!(up(v + ej) > thr)) continue;
        r->s[cnt] = v;
        r->e[cnt] = ej;
        r->id[cnt] = base + j;
        cnt++;
    }
    r->cnt = cnt;
    return -c - 1;
}

/* The lower bound ŝ − e rounded down (ŝ itself once exact: e = 0), as an order key. */
static void lower_keys_portable(const float *s, const float *e, int64_t n, uint32_t *keys) {
    for (int64_t j = 0; j < n; j++) {
        const float lb = down(s[j] - e[j]); /* computed either way: no branch */
        keys[j] = order_key(e[j] > 0.0f ? lb : s[j]);
    }
}

static int64_t keep_above_portable(float *s, float *e, int64_t *id, int64_t n, float t) {
    int64_t out = 0;
    for (int64_t j = 0; j < n; j++) { /* branch-free compaction: entries past out are dropped */
        const float sj = s[j], ej = e[j], ub = up(sj + ej);
        const int64_t ij = id[j];
        s[out] = sj, e[out] = ej, id[out] = ij;
        out += (ej > 0.0f ? ub : sj) >= t;
    }
    return out;
}

/* ---------------------------------------------------------------- AVX-512 */
#ifdef NS_HAVE_SCAN_AVX512
#define NS_AVX512 __attribute__((target("avx512f")))

/* step_float(x, dir) on 16 lanes, the same bits: ±1 on the bits (away from zero when x's sign
 * is dir's, towards it otherwise), ±0 → ±FLT_TRUE_MIN, ±Inf and NaN as they are. */
NS_AVX512 static inline __m512 step16(__m512 x, int dir) {
    const __m512i u = _mm512_castps_si512(x), one = _mm512_set1_epi32(1);
    const __m512i mag = _mm512_and_si512(u, _mm512_set1_epi32(0x7fffffff));
    const __mmask16 neg = _mm512_cmplt_epi32_mask(u, _mm512_setzero_si512());
    const __mmask16 away = dir > 0 ? (__mmask16)~neg : neg;
    __m512i r = _mm512_mask_add_epi32(_mm512_sub_epi32(u, one), away, u, one);
    r = _mm512_mask_mov_epi32(r, _mm512_cmpeq_epi32_mask(mag, _mm512_setzero_si512()),
                              _mm512_set1_epi32(dir > 0 ? 0x00000001 : (int)0x80000001u));
    r = _mm512_mask_mov_epi32(r, _mm512_cmpge_epi32_mask(mag, _mm512_set1_epi32(0x7f800000)), u);
    return _mm512_castsi512_ps(r);
}

/* order_key on 16 lanes. */
NS_AVX512 static inline __m512i key16(__m512 x) {
    const __m512i u = _mm512_castps_si512(x);
    const __mmask16 neg = _mm512_cmplt_epi32_mask(u, _mm512_setzero_si512());
    return _mm512_mask_xor_epi32(_mm512_or_si512(u, _mm512_set1_epi32((int)0x80000000u)), neg, u,
                                 _mm512_set1_epi32(-1));
}

static inline __mmask16 lanes(int64_t left) {
    return left >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << left) - 1);
}

/* Rows base + j of 16 lanes of columns j, as two registers of 8 int64 (lanes 0..7, 8..15). */
NS_AVX512 static inline void rows16(__m512i j, __m512i base, __m512i *lo, __m512i *hi) {
    *lo = _mm512_add_epi64(_mm512_cvtepi32_epi64(_mm512_castsi512_si256(j)), base);
    *hi = _mm512_add_epi64(_mm512_cvtepi32_epi64(_mm512_extracti64x4_epi64(j, 1)), base);
}

/* Stores the lanes `keep` of (v, e, row lo|hi), packed, at position at of the reservoir; full
 * registers are written (the reservoir's CHUNK of room past cap holds the rest). */
NS_AVX512 static inline void append16(reservoir *r, int64_t at, __mmask16 keep, __m512 v,
                                       __m512 e, __m512i lo, __m512i hi) {
    _mm512_storeu_ps(r->s + at, _mm512_maskz_compress_ps(keep, v));
    _mm512_storeu_ps(r->e + at, _mm512_maskz_compress_ps(keep, e));
    const int nlo = __builtin_popcount(keep & 0xff);
    _mm512_storeu_si512((void *)(r->id + at), _mm512_maskz_compress_epi64((__mmask8)keep, lo));
    _mm512_storeu_si512((void *)(r->id + at + nlo),
                        _mm512_maskz_compress_epi64((__mmask8)(keep >> 8), hi));
}

/* take_portable 16 columns at a time: the scores and norms gathered, every lane's bound as
 * ns_mine_bound_of computes it. Stops at the end, right after the entry that fills the
 * reservoir (the same entries and stopping point as take_portable), or before a group that
 * holds a non-finite score; returns the list position reached. A group starts only below cap,
 * so it writes at most cap + 15 entries' room. */
NS_AVX512 static int64_t take_avx512(const float *row, const int32_t *cols, int64_t c,
                                     int64_t stop, const row_bound *b, float pre, float thr,
                                     int64_t base, reservoir *r) {
    const __m512 vpre = _mm512_set1_ps(pre), vthr = _mm512_set1_ps(thr),
                 fmax = _mm512_set1_ps(FLT_MAX), fq = _mm512_set1_ps(b->fq),
                 gq = _mm512_set1_ps(b->gq), abs_e = _mm512_set1_ps(b->abs_e),
                 zero = _mm512_setzero_ps();
    const __m512i vbase = _mm512_set1_epi64(base);
    int64_t cnt = r->cnt;
    for (; c < stop && cnt < r->cap; c += 16) {
        const __mmask16 in = lanes(stop - c);
        const __m512i j = _mm512_maskz_loadu_epi32(in, cols + c);
        const __m512 v = _mm512_mask_i32gather_ps(zero, in, j, row, 4);
        if (_mm512_mask_cmp_ps_mask(in, _mm512_abs_ps(v), fmax, _CMP_NLE_UQ)) break;
        __m512 e = step16(_mm512_mul_ps(fq, _mm512_mask_i32gather_ps(zero, in, j, b->cn, 4)), 1);
        if (b->cr) {
            const __m512 g = _mm512_mul_ps(gq, _mm512_mask_i32gather_ps(zero, in, j, b->cr, 4));
            e = step16(_mm512_add_ps(e, step16(g, 1)), 1);
        }
        e = step16(_mm512_add_ps(e, abs_e), 1);
        __mmask16 take = _mm512_mask_cmp_ps_mask(in, v, vpre, _CMP_GT_OQ);
        take = _mm512_mask_cmp_ps_mask(take, step16(_mm512_add_ps(v, e), 1), vthr, _CMP_GT_OQ);
        int64_t next = c + 16;
        const int64_t room = r->cap - cnt;
        if (__builtin_popcount(take) >= room) { /* fills the reservoir: stop after the lane that
                                                   does, as take_portable does */
            uint32_t x = take;
            for (int64_t t = 1; t < room; t++) x &= x - 1; /* its lowest set bit: that lane */
            const int lane = __builtin_ctz(x);
            take &= (__mmask16)((2u << lane) - 1);
            next = c + lane + 1;
        }
        __m512i lo, hi;
        rows16(j, vbase, &lo, &hi);
        append16(r, cnt, take, v, e, lo, hi);
        cnt += __builtin_popcount(take);
        if (cnt >= r->cap) {
            c = next;
            break;
        }
    }
    r->cnt = cnt;
    return c < stop ? c : stop;
}

NS_AVX512 static void lower_keys_avx512(const float *s, const float *e, int64_t n,
                                        uint32_t *keys) {
    for (int64_t j = 0; j < n; j += 16) {
        const __mmask16 in = lanes(n - j);
        const __m512 sv = _mm512_maskz_loadu_ps(in, s + j), ev = _mm512_maskz_loadu_ps(in, e + j);
        const __mmask16 pos = _mm512_cmp_ps_mask(ev, _mm512_setzero_ps(), _CMP_GT_OQ);
        const __m512 lb = _mm512_mask_mov_ps(sv, pos, step16(_mm512_sub_ps(sv, ev), -1));
        _mm512_mask_storeu_epi32(keys + j, in, key16(lb));
    }
}

/* In place: the kept lanes of a group go to positions ≤ the group's own, and only as many as
 * are kept are written, so nothing not yet read is overwritten. */
NS_AVX512 static int64_t keep_above_avx512(float *s, float *e, int64_t *id, int64_t n, float t) {
    const __m512 vt = _mm512_set1_ps(t);
    int64_t out = 0;
    for (int64_t j = 0; j < n; j += 16) {
        const __mmask16 in = lanes(n - j);
        const __m512 sv = _mm512_maskz_loadu_ps(in, s + j), ev = _mm512_maskz_loadu_ps(in, e + j);
        const __m512i lo = _mm512_maskz_loadu_epi64((__mmask8)in, id + j);
        const __m512i hi = _mm512_maskz_loadu_epi64((__mmask8)(in >> 8), id + j + 8);
        const __mmask16 pos = _mm512_cmp_ps_mask(ev, _mm512_setzero_ps(), _CMP_GT_OQ);
        const __m512 ub = _mm512_mask_mov_ps(sv, pos, step16(_mm512_add_ps(sv, ev), 1));
        const __mmask16 keep = _mm512_mask_cmp_ps_mask(in, ub, vt, _CMP_GE_OQ);
        const int nk = __builtin_popcount(keep), nlo = __builtin_popcount(keep & 0xff);
        const __mmask16 w = lanes(nk);
        _mm512_mask_storeu_ps(s + out, w, _mm512_maskz_compress_ps(keep, sv));
        _mm512_mask_storeu_ps(e + out, w, _mm512_maskz_compress_ps(keep, ev));
        _mm512_mask_storeu_epi64(id + out, (__mmask8)lanes(nlo),
                                 _mm512_maskz_compress_epi64((__mmask8)keep, lo));
        _mm512_mask_storeu_epi64(id + out + nlo, (__mmask8)lanes(nk - nlo),
                                 _mm512_maskz_compress_epi64((__mmask8)(keep >> 8), hi));
        out += nk;
    }
    return out;
}
#endif

/* ---------------------------------------------------------------- dispatch */

int64_t ns_mine_take_listed(const float *row, const int32_t *cols, int64_t c, int64_t stop,
                            const row_bound *b, float pre, float thr, int64_t base, reservoir *r,
                            int avx512) {
#ifdef NS_HAVE_SCAN_AVX512
    if (avx512) {
        while (c < stop && r->cnt < r->cap) {
            c = take_avx512(row, cols, c, stop, b, pre, thr, base, r);
            if (c < stop && r->cnt < r->cap) { /* a group with a non-finite score: one by one */
                const int64_t at = take_portable(row, cols, c, c + 16 < stop ? c + 16 : stop, b,
                                                 pre, thr, base, r);
                if (at >= 0) return at;
                c = -at - 1;
            }
        }
        return -c - 1;
    }
#else
    (void)avx512;
#endif
    return take_portable(row, cols, c, stop, b, pre, thr, base, r);
}

void ns_mine_lower_keys(const float *s, const float *e, int64_t n, uint32_t *keys, int avx512) {
#ifdef NS_HAVE_SCAN_AVX512
    if (avx512) {
        lower_keys_avx512(s, e, n, keys);
        return;
    }
#else
    (void)avx512;
#endif
    lower_keys_portable(s, e, n, keys);
}

int64_t ns_mine_keep_above(float *s, float *e, int64_t *id, int64_t n, float t, int avx512) {
#ifdef NS_HAVE_SCAN_AVX512
    if (avx512) return keep_above_avx512(s, e, id, n, t);
#else
    (void)avx512;
#endif
    return keep_above_portable(s, e, id, n, t);
}
