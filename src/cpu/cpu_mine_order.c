/* Orders for ns_mine_topk on the CPU (cpu_mine.h): the radix thresholds (a proven lower bound of
 * the k-th largest by counting passes), the final radix sort of the exact short lists, and
 * the quickselect/heapsort they fall back on. */
#include "cpu_mine.h"
#include "ns_order.h"

#include <math.h>
#include <string.h>

/* ---------------------------------------------------------------- ordering, heapsort, quickselect */

/* a ranks below b (ns_order.h): b comes before a. */
static inline int worse(float sa, int64_t ia, float sb, int64_t ib) { return ns_before(sb, ib, sa, ia); }

static inline void heap_push(float *hs, int64_t *hi, int64_t n, float s, int64_t id) {
    int64_t c = n;
    while (c > 0) {
        int64_t p = (c - 1) / 2;
        if (!worse(s, id, hs[p], hi[p])) break;
        hs[c] = hs[p];
        hi[c] = hi[p];
        c = p;
    }
    hs[c] = s;
    hi[c] = id;
}

/* Sifts (s, id) down from the root of a heap of n entries (replacing the root). */
static inline void heap_sift(float *hs, int64_t *hi, int64_t n, float s, int64_t id) {
    int64_t c = 0;
    for (;;) {
        int64_t l = 2 * c + 1;
        if (l >= n) break;
        int64_t m = (l + 1 < n && worse(hs[l + 1], hi[l + 1], hs[l], hi[l])) ? l + 1 : l;
        if (!worse(hs[m], hi[m], s, id)) break;
        hs[c] = hs[m];
        hi[c] = hi[m];
        c = m;
    }
    hs[c] = s;
    hi[c] = id;
}

/* In-place heapsort of a worst-at-root heap: leaves the n entries best first. */
static void heap_sort_best_first(float *hs, int64_t *hi, int64_t n) {
    for (int64_t end = n - 1; end > 0; end--) {
        float s = hs[end];
        int64_t id = hi[end];
        hs[end] = hs[0];
        hi[end] = hi[0];
        heap_sift(hs, hi, end, s, id);
    }
}

/* Puts the entry of rank m (in the order ns_before) at position m, the better ones before it
 * and the worse after (quickselect with a median-of-three pivot; rows are unique, so the order
 * is strict and the loops terminate). */
#define before ns_before

static inline void swap_entries(float *s, int64_t *id, int64_t a, int64_t b) {
    float ts = s[a];
    int64_t ti = id[a];
    s[a] = s[b];
    id[a] = id[b];
    s[b] = ts;
    id[b] = ti;
}

void ns_mine_select_nth(float *s, int64_t *id, int64_t n, int64_t m) {
    int64_t lo = 0, hi = n - 1;
    while (hi - lo >= 16) {
        int64_t mid = lo + (hi - lo) / 2;
        if (before(s[mid], id[mid], s[lo], id[lo])) swap_entries(s, id, mid, lo);
        if (before(s[hi], id[hi], s[lo], id[lo])) swap_entries(s, id, hi, lo);
        if (before(s[hi], id[hi], s[mid], id[mid])) swap_entries(s, id, hi, mid);
        float ps = s[mid];
        int64_t pi = id[mid];
        int64_t i = lo, j = hi;
        while (i <= j) {
            while (before(s[i], id[i], ps, pi)) i++;
            while (before(ps, pi, s[j], id[j])) j--;
            if (i <= j) swap_entries(s, id, i++, j--);
        }
        if (m <= j) hi = j;
        else if (m >= i) lo = i;
        else return;
    }
    for (int64_t i = lo + 1; i <= hi; i++) /* insertion sort of the last few */
        for (int64_t j = i; j > lo && before(s[j], id[j], s[j - 1], id[j - 1]); j--)
            swap_entries(s, id, j, j - 1);
}

/* ---------------------------------------------------------------- thresholds by radix
 * A threshold only has to be a lower bound of the k-th largest value, not the k-th itself, so it
 * is found by counting passes over order keys (no data movement): a histogram of the keys' range
 * [min, max] in equal bins, the lower edge of the bin that holds the k-th largest as the
 * threshold, and that bin's range counted again only while it holds more than
 * NS_MINE_KTH_SLACK keys (each level divides the bin width by the bin count, ≥ 64: at most six
 * levels, and one or two on a reservoir's scores).
 * Bins over the keys' own range, not fixed key digits: the scores of a reservoir share their
 * sign, exponent and first fraction bits, so a fixed first digit puts them all in one bin (a
 * wasted pass), and counting the next digit of only the keys with that prefix took a branch
 * that mispredicted on every other key (~60 % of the old threshold's time); here a refining
 * pass's bin holds few of the keys. */

#define KTH_BINS_MAX 2048

/* Counts the keys in [lo, lo + span] into bins of 2^shift keys each (span >> shift < bins).
 * Two interleaved partial histograms, so that a key in the same bin as the one before it does
 * not wait on that one's increment. The range test is a branch, but a predictable one: the
 * first pass's range holds every key, a refining pass's (one bin of the pass before) few. */
static void count_range(const uint32_t *key, int64_t n, uint32_t lo, uint32_t span, int shift,
                        uint32_t bins, uint32_t *hist) {
    uint32_t part[2][KTH_BINS_MAX];
    memset(part, 0, sizeof part[0] * 2);
    int64_t j = 0;
    for (; j + 2 <= n; j += 2)
        for (int l = 0; l < 2; l++) {
            const uint32_t x = key[j + l] - lo; /* keys below lo wrap past span */
            if (x <= span) part[l][x >> shift]++;
        }
    for (; j < n; j++) {
        const uint32_t x = key[j] - lo;
        if (x <= span) part[0][x >> shift]++;
    }
    for (uint32_t b = 0; b < bins; b++) hist[b] = part[0][b] + part[1][b];
}

/* The bin of hist (bins of them, from the top) where the running count from above (starting
 * at *above) reaches k; *above = the count above it. */
static uint32_t top_bin(const uint32_t *hist, uint32_t bins, int64_t k, int64_t *above) {
    int64_t acc = *above;
    uint32_t b = bins - 1;
    for (; b > 0; b--) {
        if (acc + (int64_t)hist[b] >= k) break;
        acc += hist[b];
    }
    *above = acc;
    return b;
}

/* The smallest shift with (span >> shift) < bins. */
static int shift_for(uint32_t span, uint32_t bins) {
    int s = 0;
    while ((span >> s) >= bins) s++;
    return s;
}

/* The smallest and the largest of n keys (vector clones: no order to keep). */
NS_VECTOR_CLONES static void key_range(const uint32_t *key, int64_t n, uint32_t *lo,
                                       uint32_t *hi) {
    uint32_t a = UINT32_MAX, b = 0;
    for (int64_t j = 0; j < n; j++) {
        a = key[j] < a ? key[j] : a;
        b = key[j] > b ? key[j] : b;
    }
    *lo = a, *hi = b;
}

/* A lower bound t of the k-th largest of the n keys (1 ≤ k ≤ n), as a key: at least k keys are
 * ≥ t, and either t is the k-th largest itself or fewer than k + NS_MINE_KTH_SLACK keys are ≥ t. */
uint32_t ns_mine_kth_key_floor(const uint32_t *key, int64_t n, int64_t k) {
    uint32_t lo, hi;
    key_range(key, n, &lo, &hi);
    /* about two keys per bin: fewer bins for short lists (the histogram is cleared and summed
     * on every call) */
    uint32_t bins = 64;
    while (bins < KTH_BINS_MAX && 2 * (int64_t)bins < n) bins *= 2;
    uint32_t hist[KTH_BINS_MAX];
    uint32_t span = hi - lo; /* the bin's range: keys lo .. lo + span */
    int64_t above = 0;
    for (;;) {
        const int shift = shift_for(span, bins);
        count_range(key, n, lo, span, shift, bins, hist);
        const uint32_t b = top_bin(hist, bins, k, &above);
        lo += b << shift;
        /* Invariant: `above` < k keys lie above bin b and above + hist[b] ≥ k, so at least k
         * keys are ≥ lo (bin b's lower edge), and at most above + hist[b] ≤ k − 1 + hist[b]. */
        if (shift == 0 || hist[b] <= NS_MINE_KTH_SLACK) return lo;
        span = ((uint32_t)1 << shift) - 1;
    }
}

/* Sorts n exact (score, row) pairs best first, ties to the lower row (rows < 2^32): an LSD
 * radix sort (8-bit digits, constant digits skipped) of the 64-bit keys ~(order_key(score) << 32
 * | (2^32 − 1 − row)), ascending, i.e. the order ns_before. buf: room for 2n keys. Returns -1,
 * sorting nothing, when a score is −0 (ns_before ties it with +0; the keys would not, and the
 * sign of the zero must survive). */
int ns_mine_sort_best_first_radix(float *s, int64_t *id, int64_t n, uint64_t *buf) {
    for (int64_t j = 0; j < n; j++)
        if (s[j] == 0.0f && signbit(s[j])) return -1;
    uint64_t *a = buf, *b = buf + n;
    for (int64_t j = 0; j < n; j++)
        a[j] = ~((uint64_t)order_key(s[j]) << 32 | (uint64_t)(0xffffffffu - (uint32_t)id[j]));
    for (int shift = 0; shift < 64; shift += 8) {
        int64_t count[257];
        memset(count, 0, sizeof count);
        for (int64_t j = 0; j < n; j++) count[((a[j] >> shift) & 0xff) + 1]++;
        if (count[((a[0] >> shift) & 0xff) + 1] == n) continue; /* one digit value: in order */
        for (int v = 0; v < 256; v++) count[v + 1] += count[v];
        for (int64_t j = 0; j < n; j++) b[count[(a[j] >> shift) & 0xff]++] = a[j];
        uint64_t *t = a;
        a = b;
        b = t;
    }
    for (int64_t j = 0; j < n; j++) {
        const uint64_t key = ~a[j];
        s[j] = key_value((uint32_t)(key >> 32));
        id[j] = (int64_t)(0xffffffffu - (uint32_t)key);
    }
    return 0;
}

/* Heap built in place, then heapsort. */
void ns_mine_sort_best_first_heap(float *s, int64_t *id, int64_t n) {
    for (int64_t j = 1; j < n; j++) heap_push(s, id, j, s[j], id[j]);
    heap_sort_best_first(s, id, n);
}
