/* The score-tile scan of ns_mine_topk on the CPU (cpu_mine.h): which columns of a tile row need
 * a look. */
#include "cpu_mine.h"

#include <stdlib.h>
#include <string.h>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

/* Bit t set where needs_look(r[t], thr), t < 32: two vector compares per 4 scores. */
static inline uint32_t chunk_mask(const float *r, float thr) {
#if defined(__SSE2__)
    const __m128 t = _mm_set1_ps(thr), lo = _mm_set1_ps(-FLT_MAX);
    uint32_t m = 0;
    for (int i = 0; i < CHUNK; i += 4) {
        __m128 v = _mm_loadu_ps(r + i);
        m |= (uint32_t)_mm_movemask_ps(_mm_or_ps(_mm_cmpnle_ps(v, t), _mm_cmpnge_ps(v, lo))) << i;
    }
    return m;
#else
    uint32_t m = 0;
    for (int i = 0; i < CHUNK; i++) m |= (uint32_t)needs_look(r[i], thr) << i;
    return m;
#endif
}

/* The columns t of row[0, n) with needs_look(row[t], thr), in increasing order, into out (room
 * for n + 16); returns their count. The AVX-512 version (chosen at run time) compresses 16
 * columns per compare into the list (compress to a register, then one store: the memory form of
 * vpcompressd is slow on Zen 4), without a branch; the portable one takes the SSE2 mask of 32
 * at a time. */
static int64_t scan_row_portable(const float *row, int64_t n, float thr, int32_t *out) {
    int64_t cnt = 0, j0 = 0;
    for (; j0 + CHUNK <= n; j0 += CHUNK)
        for (uint32_t m = chunk_mask(row + j0, thr); m; m &= m - 1)
            out[cnt++] = (int32_t)(j0 + __builtin_ctz(m));
    for (; j0 < n; j0++)
        if (needs_look(row[j0], thr)) out[cnt++] = (int32_t)j0;
    return cnt;
}

#ifdef NS_HAVE_SCAN_AVX512
__attribute__((target("avx512f"))) static int64_t scan_row_avx512(const float *row, int64_t n,
                                                                   float thr, int32_t *out) {
    const __m512 t = _mm512_set1_ps(thr), lo = _mm512_set1_ps(-FLT_MAX);
    const __m512i step = _mm512_set1_epi32(16);
    __m512i idx = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    int64_t cnt = 0, j = 0;
    for (; j + 16 <= n; j += 16, idx = _mm512_add_epi32(idx, step)) {
        const __m512 v = _mm512_loadu_ps(row + j);
        const __mmask16 m = (__mmask16)(_mm512_cmp_ps_mask(v, t, _CMP_NLE_UQ) |
                                        _mm512_cmp_ps_mask(v, lo, _CMP_NGE_UQ));
        /* always stored (a branch on m mispredicted on every chunk with a candidate: a third
         * of the scan's time at k = 1000) */
        _mm512_storeu_si512((void *)(out + cnt), _mm512_maskz_compress_epi32(m, idx));
        cnt += __builtin_popcount(m);
    }
    for (; j < n; j++)
        if (needs_look(row[j], thr)) out[cnt++] = (int32_t)j;
    return cnt;
}
#endif

/* Whether scan_row, the reservoir's passes and the exact scorers may take their AVX-512
 * versions: the CPU has AVX-512 F and BW, and NS_CPU_MINE_SCAN is not "portable" (the lists and
 * scores are the same either way; the variable lets tests cover both). */
int ns_mine_scan_avx512_usable(void) {
#ifdef NS_HAVE_SCAN_AVX512
    const char *v = getenv("NS_CPU_MINE_SCAN");
    if (v && !strcmp(v, "portable")) return 0;
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") ? 1 : 0;
#else
    return 0;
#endif
}

int64_t ns_mine_scan_row(const float *row, int64_t n, float thr, int32_t *out, int avx512) {
#ifdef NS_HAVE_SCAN_AVX512
    if (avx512) return scan_row_avx512(row, n, thr, out);
#else
    (void)avx512;
#endif
    return scan_row_portable(row, n, thr, out);
}
