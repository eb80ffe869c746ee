/* ns_sample on the CPU: per query row, the eligible columns (kept, non-empty, first copy of
 * their id), their Gumbel keys (ns_sample_key, src/hostdevice/ns_math.h: the CUDA kernel's
 * code) and the best m by a bounded heap, best first. */
#include "ns_cpu.h"
#include "ns_math.h"
#include "ns_order.h"

#include <math.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

static const char *const FN = "ns_sample";

typedef struct {
    float key;
    int64_t col;
} entry;

/* Min-heap (the worst of the kept k at the root) over packed (key, column) integers, larger
 * is better (sample_row, step 3). */
static void sift_down_packed(uint64_t *h, int64_t n, int64_t i) {
    for (;;) {
        int64_t l = 2 * i + 1, w = i;
        if (l < n && h[l] < h[w]) w = l;
        if (l + 1 < n && h[l + 1] < h[w]) w = l + 1;
        if (w == i) return;
        uint64_t t = h[i];
        h[i] = h[w];
        h[w] = t;
        i = w;
    }
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

/* Per thread, for the vector keys: the eligible ids, scores and their keys (NULL ids: the
 * scalar path). */
typedef struct {
    int64_t *ids;
    float *s, *keys;
    uint64_t *packed; /* the eligible (key, column) pairs packed for the selection */
} row_scratch;

/* One query row: eligible = kept, non-empty, and the first occurrence of its id among the
 * kept non-empty slots of the row (a duplicate id would draw the same Gumbel noise and could
 * be returned twice; the later copies are ignored, so a document is never drawn twice). */
#if defined(__GNUC__)
#define NS_ALWAYS_INLINE static inline __attribute__((always_inline))
#else
#define NS_ALWAYS_INLINE static inline
#endif
NS_ALWAYS_INLINE int64_t sample_row(const ns_candidates *c, const uint8_t *keep,
                                    const ns_sampler_options *o, int64_t m, int64_t i,
                                    entry *e, int64_t *set, int64_t hmask, int64_t *index,
                                    float *score, const row_scratch *rs) {
    const int64_t C = c->per_query;
    const int64_t qid = c->query_offset + i;
    const float sp = c->positive_score ? c->positive_score[i] : 0.0f;
    const int64_t *ids = c->id + i * C;
    const float *s = c->score + i * C;
    const uint8_t *kp = keep ? keep + i * C : NULL;
    /* 1. The eligible columns. */
    memset(set, 0xff, (size_t)(hmask + 1) * sizeof *set); /* all -1: empty */
    int64_t n = 0;
    for (int64_t j = 0; j < C; j++) {
        if (ids[j] == -1 || (kp && !kp[j])) continue;
        if (!set_insert(set, hmask, ids[j])) continue;
        e[n++].col = j;
    }
    /* 2. Their keys. Vector path (rs->ids != NULL): the eligible ids and scores packed, their
     * keys 16 at a time (ns_cpu_sample_keys, bit-identical to ns_sample_key). Scalar path: a
     * loop of independent iterations (the two logs of a key are a long dependent chain; the
     * CPU overlaps consecutive keys when no branch separates them). */
    const int strategy = (int)o->strategy;
    if (rs->ids) {
        for (int64_t k = 0; k < n; k++) {
            rs->ids[k] = ids[e[k].col];
            rs->s[k] = s[e[k].col];
        }
        ns_cpu_sample_keys(NS_KEYS_ISA_AVX512, o, qid, sp, rs->ids, rs->s, n, rs->keys);
        for (int64_t k = 0; k < n; k++) e[k].key = rs->keys[k];
    } else {
        for (int64_t k = 0; k < n; k++) {
            const int64_t j = e[k].col;
            e[k].key = ns_sample_key(strategy, s[j], sp, o->simans_a, o->simans_b,
                                     o->temperature, o->seed, o->step, qid, ids[j]);
        }
    }
    /* 3. The best min(m, n), best first. Each (key, column) is packed into one integer that
     * orders exactly as ns_before: the key's bits mapped to an unsigned order (−0 made +0
     * first, so that it ties with +0 as the float compare does; keys are never NaN) above the
     * complemented column (ties to the lower column). One integer compare per heap step. */
    uint64_t *pk = rs->packed;
    for (int64_t q = 0; q < n; q++) {
        uint32_t b = ns_float_bits(e[q].key + 0.0f);
        b = (b & 0x80000000u) ? ~b : (b | 0x80000000u);
        pk[q] = ((uint64_t)b << 32) | (uint64_t)(uint32_t)~(uint32_t)e[q].col;
    }
    const int64_t k = n < m ? n : m;
    /* a min-heap of the best k (the worst at the root), then heap sort: best first */
    for (int64_t p = k / 2 - 1; p >= 0; p--) sift_down_packed(pk, k, p);
    for (int64_t q = k; q < n; q++)
        if (pk[q] > pk[0]) {
            pk[0] = pk[q];
            sift_down_packed(pk, k, 0);
        }
    for (int64_t q = k - 1; q > 0; q--) {
        uint64_t t = pk[0];
        pk[0] = pk[q];
        pk[q] = t;
        sift_down_packed(pk, q, 0);
    }
    for (int64_t r = 0; r < m; r++) {
        if (r < k) {
            const int64_t col = (int64_t)(uint32_t)~(uint32_t)pk[r];
            index[r] = ids[col];
            if (score) score[r] = s[col];
        } else {
            index[r] = -1;
            if (score) score[r] = NAN;
        }
    }
    return k;
}

typedef int64_t (*row_fn)(const ns_candidates *, const uint8_t *, const ns_sampler_options *,
                         int64_t, int64_t, entry *, int64_t *, int64_t, int64_t *, float *,
                         const row_scratch *);

static int64_t sample_row_generic(const ns_candidates *c, const uint8_t *keep,
                                  const ns_sampler_options *o, int64_t m, int64_t i, entry *e,
                                  int64_t *set, int64_t hmask, int64_t *index, float *score,
                                  const row_scratch *rs) {
    return sample_row(c, keep, o, m, i, e, set, hmask, index, score, rs);
}

/* The same row compiled for FMA hardware: the keys' fmaf (ns_math.h, inlined) becomes one
 * instruction instead of a libm call, about a quarter of the key's cost. The fused result is
 * the same correctly rounded value, so the draw is bit-identical on either path. */
#if defined(__GNUC__) && defined(__x86_64__) && !defined(__FMA__)
#define NS_SAMPLE_FMA_CLONE 1
__attribute__((target("fma"))) static int64_t
sample_row_fma(const ns_candidates *c, const uint8_t *keep, const ns_sampler_options *o,
               int64_t m, int64_t i, entry *e, int64_t *set, int64_t hmask, int64_t *index,
               float *score, const row_scratch *rs) {
    return sample_row(c, keep, o, m, i, e, set, hmask, index, score, rs);
}
#endif

static row_fn pick_row_fn(void) {
#ifdef NS_SAMPLE_FMA_CLONE
    __builtin_cpu_init();
    if (__builtin_cpu_supports("fma")) return sample_row_fma;
#endif
    return sample_row_generic;
}

/* Per thread: the eligible entries (C, padded to whole cache lines), the id set (H ids) and,
 * on the vector path, the packed ids, scores and keys (C each, padded). */
typedef struct {
    int64_t per_thread_entries, H;
    int nt, vector;
    entry *entries;
    int64_t *sets, *ids;
    float *s, *keys;
    uint64_t *packed;
} sample_ws;

static void sample_layout(void *plan, ns_arena *a) {
    sample_ws *w = (sample_ws *)plan;
    const size_t per = (size_t)w->per_thread_entries, nt = (size_t)w->nt;
    w->entries = (entry *)ns_arena_carve(a, per * nt * sizeof(entry));
    w->sets = (int64_t *)ns_arena_carve(a, (size_t)w->H * nt * sizeof(int64_t));
    w->packed = (uint64_t *)ns_arena_carve(a, per * nt * sizeof(uint64_t));
    if (w->vector) {
        w->ids = (int64_t *)ns_arena_carve(a, per * nt * sizeof(int64_t));
        w->s = (float *)ns_arena_carve(a, per * nt * sizeof(float));
        w->keys = (float *)ns_arena_carve(a, per * nt * sizeof(float));
    }
}

ns_status ns_cpu_sample(ns_context *ctx, const ns_candidates *cand, const uint8_t *keep,
                        const ns_sampler_options *o, int64_t m, int64_t *index, float *score,
                        int64_t *count) {
    ns_status st;
    /* One scan of the slots per step: the step's ns_filter has just checked these. */
    if ((st = ctx->candidate_slots_checked
                  ? ns_check_candidate_rows(ctx, FN, cand, o->strategy == NS_SAMPLE_SIMANS, 0)
                  : ns_check_candidate_data(ctx, FN, cand, o->strategy == NS_SAMPLE_SIMANS, 0)))
        return st;
    if (cand->per_query > (int64_t)UINT32_MAX)
        return ns_fail(ctx, NS_ERR_UNSUPPORTED,
                       "%s: cand->per_query (%lld) is larger than 2^32 - 1 (the CPU sampler "
                       "packs a column into 32 bits)",
                       FN, (long long)cand->per_query);
    const int nt = ns_threads(ctx);
    const int64_t C = cand->per_query, H = hash_size(C);
    const int64_t line = 64 / (int64_t)sizeof(entry);
    const int vector = o->strategy != NS_SAMPLE_TOP &&
                       ns_cpu_sample_keys_isa() == NS_KEYS_ISA_AVX512;
    sample_ws w = {(C + line - 1) / line * line, H, nt, vector, NULL, NULL, NULL, NULL, NULL, NULL};
    if ((st = ns_arena_lay_out(ctx, &ctx->scratch, sample_layout, &w, FN))) return st;

    const int64_t B = cand->queries;
    const row_fn row = pick_row_fn();
#pragma omp parallel num_threads(nt)
    {
#ifdef _OPENMP
        const int tid = omp_get_thread_num();
#else
        const int tid = 0;
#endif
        entry *e = w.entries + w.per_thread_entries * tid;
        int64_t *set = w.sets + H * tid;
        const int64_t off = w.per_thread_entries * tid;
        const row_scratch rs = {vector ? w.ids + off : NULL, vector ? w.s + off : NULL,
                                vector ? w.keys + off : NULL, w.packed + off};
#pragma omp for schedule(dynamic, 8)
        for (int64_t i = 0; i < B; i++)
            count[i] = row(cand, keep, o, m, i, e, set, H - 1, index + i * m,
                           score ? score + i * m : NULL, &rs);
    }
    return NS_OK;
}
