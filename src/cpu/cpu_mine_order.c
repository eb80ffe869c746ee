/* Orders for ns_mine_topk on the CPU (cpu_mine.h): the radix thresholds (a proven lower bound of
 * the k-th largest by two counting passes), the final radix sort of the exact short lists, and
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
 * is found by two counting passes over order keys (no data movement, no unpredictable branches):
 * the 22-bit key prefix (sign, exponent, 13 fraction bits) that holds the k-th largest, and its
 * lower edge as the threshold — at least k values are ≥ it, and it lies within 2^-13 relative
 * below the k-th, far inside any score bound. */

#define RADIX_BITS 11
#define RADIX_BINS (1 << RADIX_BITS)

/* The bin of hist (from the top) where the running count from above reaches k; *above = the
 * count in the bins above it. */
static int top_bin(const uint32_t *hist, int64_t k, int64_t *above) {
    int64_t acc = *above;
    int b = RADIX_BINS - 1;
    for (; b > 0; b--) {
        if (acc + (int64_t)hist[b] >= k) break;
        acc += hist[b];
    }
    *above = acc;
    return b;
}

/* Counts the 11-bit digit (key >> shift) of the keys whose higher bits (key >> (shift + 11))
 * equal `prefix` (all keys when shift = 21) into hist. Four interleaved partial histograms:
 * scores cluster in a few bins, and one counter incremented back to back waits on itself. */
static void count_digits(const uint32_t *key, int64_t n, int shift, uint32_t prefix,
                         uint32_t *hist) {
    uint32_t part[4][RADIX_BINS];
    memset(part, 0, sizeof part);
    const int top = shift + RADIX_BITS;
    int64_t j = 0;
    for (; j + 4 <= n; j += 4)
        for (int l = 0; l < 4; l++) {
            const uint32_t x = key[j + l];
            if (top >= 32 || x >> top == prefix) part[l][(x >> shift) & (RADIX_BINS - 1)]++;
        }
    for (; j < n; j++)
        if (top >= 32 || key[j] >> top == prefix) part[0][(key[j] >> shift) & (RADIX_BINS - 1)]++;
    for (int b = 0; b < RADIX_BINS; b++) hist[b] = part[0][b] + part[1][b] + part[2][b] + part[3][b];
}

/* A lower bound, within 2^-13 relative, of the k-th largest of the n keys (1 ≤ k ≤ n), as a
 * key: the lower edge of the 22-bit prefix bin that holds the k-th largest. */
uint32_t ns_mine_kth_key_floor(const uint32_t *key, int64_t n, int64_t k) {
    uint32_t hist[RADIX_BINS];
    count_digits(key, n, 21, 0, hist);
    int64_t above = 0;
    const uint32_t b1 = (uint32_t)top_bin(hist, k, &above);
    count_digits(key, n, 10, b1, hist);
    const uint32_t b2 = (uint32_t)top_bin(hist, k, &above);
    return b1 << 21 | b2 << 10;
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
