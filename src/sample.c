/* ns_sample: m negatives per query among the kept candidates, without replacement, exactly by
 * weight, with the Gumbel-top-m trick (DESIGN.md "Sampling", "Randomness"). Argument checks
 * for every backend, then the CPU backend. Keys come from kernels/ns_math.h (ns_sample_key),
 * the same code the CUDA kernel runs, so both backends pick the same candidates. */
#include "ns_internal.h"
#include "ns_cuda.h"
#include "ns_math.h"

#include <math.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

static const char *const FN = "ns_sample";

static ns_status check_options(ns_context *ctx, const ns_candidates *c,
                               const ns_sampler_options *o, int64_t m) {
    if (o->struct_size < sizeof(ns_sampler_options))
        return ns_fail(ctx, NS_ERR_INVALID_ARGUMENT,
                       "%s: options->struct_size (%zu) is smaller than sizeof(ns_sampler_options) "
                       "(%zu); initialise with NS_SAMPLER_OPTIONS_INIT",
                       FN, o->struct_size, sizeof(ns_sampler_options));
    if (o->strategy != NS_SAMPLE_TOP && o->strategy != NS_SAMPLE_UNIFORM &&
        o->strategy != NS_SAMPLE_SIMANS && o->strategy != NS_SAMPLE_SOFTMAX)
        return ns_fail(ctx, NS_ERR_INVALID_ARGUMENT,
                       "%s: options->strategy (%d) is not NS_SAMPLE_TOP, _UNIFORM, _SIMANS or "
                       "_SOFTMAX",
                       FN, (int)o->strategy);
    if (m < 1)
        return ns_fail(ctx, NS_ERR_INVALID_ARGUMENT, "%s: m (%lld) must be at least 1", FN,
                       (long long)m);
    if (m > c->per_query)
        return ns_fail(ctx, NS_ERR_INVALID_ARGUMENT,
                       "%s: m (%lld) is larger than the candidates per query (%lld)", FN,
                       (long long)m, (long long)c->per_query);
    /* Parameters are checked for the strategy that uses them only. */
    if (o->strategy == NS_SAMPLE_SIMANS) {
        if (!(o->simans_a > 0.0f) || !isfinite(o->simans_a))
            return ns_fail(ctx, NS_ERR_INVALID_ARGUMENT,
                           "%s: options->simans_a (%g) must be finite and > 0", FN,
                           (double)o->simans_a);
        if (!isfinite(o->simans_b))
            return ns_fail(ctx, NS_ERR_INVALID_ARGUMENT,
                           "%s: options->simans_b (%g) must be finite", FN, (double)o->simans_b);
        if (!c->positive_score)
            return ns_fail(ctx, NS_ERR_INVALID_ARGUMENT,
                           "%s: cand->positive_score is NULL but NS_SAMPLE_SIMANS needs s+", FN);
    }
    if (o->strategy == NS_SAMPLE_SOFTMAX && (!(o->temperature > 0.0f) || !isfinite(o->temperature)))
        return ns_fail(ctx, NS_ERR_INVALID_ARGUMENT,
                       "%s: options->temperature (%g) must be finite and > 0", FN,
                       (double)o->temperature);
    return NS_OK;
}

typedef struct {
    float key;
    int64_t col;
} entry;

/* a comes before b: larger key, ties to the lower column. Keys are never NaN (finite scores and
 * valid parameters give finite or infinite keys only). */
static inline int before(entry a, entry b) {
    return a.key > b.key || (a.key == b.key && a.col < b.col);
}

/* Min-heap (the worst of the kept k at the root) over "before". */
static void sift_down(entry *h, int64_t n, int64_t i) {
    for (;;) {
        int64_t l = 2 * i + 1, w = i;
        if (l < n && before(h[w], h[l])) w = l;
        if (l + 1 < n && before(h[w], h[l + 1])) w = l + 1;
        if (w == i) return;
        entry t = h[i];
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
                                    float *score) {
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
    /* 2. Their keys, in a loop of independent iterations (the two logs of a key are a long
     * dependent chain; the CPU overlaps consecutive keys when no branch separates them). */
    const int strategy = (int)o->strategy;
    for (int64_t k = 0; k < n; k++) {
        const int64_t j = e[k].col;
        e[k].key = ns_sample_key(strategy, s[j], sp, o->simans_a, o->simans_b, o->temperature,
                                 o->seed, o->step, qid, ids[j]);
    }
    /* 3. The best min(m, n) into e[0..k) — a heap with the worst at the root — then heap sort,
     * each pop moving the current worst to the back, so e[0..k) ends best-first. */
    const int64_t k = n < m ? n : m;
    for (int64_t p = k / 2 - 1; p >= 0; p--) sift_down(e, k, p);
    for (int64_t q = k; q < n; q++)
        if (before(e[q], e[0])) {
            e[0] = e[q];
            sift_down(e, k, 0);
        }
    for (int64_t q = k - 1; q > 0; q--) {
        entry t = e[0];
        e[0] = e[q];
        e[q] = t;
        sift_down(e, q, 0);
    }
    for (int64_t r = 0; r < m; r++) {
        if (r < k) {
            index[r] = ids[e[r].col];
            if (score) score[r] = s[e[r].col];
        } else {
            index[r] = -1;
            if (score) score[r] = NAN;
        }
    }
    return k;
}

typedef int64_t (*row_fn)(const ns_candidates *, const uint8_t *, const ns_sampler_options *,
                         int64_t, int64_t, entry *, int64_t *, int64_t, int64_t *, float *);

static int64_t sample_row_generic(const ns_candidates *c, const uint8_t *keep,
                                  const ns_sampler_options *o, int64_t m, int64_t i, entry *e,
                                  int64_t *set, int64_t hmask, int64_t *index, float *score) {
    return sample_row(c, keep, o, m, i, e, set, hmask, index, score);
}

/* The same row compiled for FMA hardware: the keys' fmaf (ns_math.h, inlined) becomes one
 * instruction instead of a libm call, about a quarter of the key's cost. The fused result is
 * the same correctly rounded value, so the draw is bit-identical on either path. */
#if defined(__GNUC__) && defined(__x86_64__) && !defined(__FMA__)
#define NS_SAMPLE_FMA_CLONE 1
__attribute__((target("fma"))) static int64_t
sample_row_fma(const ns_candidates *c, const uint8_t *keep, const ns_sampler_options *o,
               int64_t m, int64_t i, entry *e, int64_t *set, int64_t hmask, int64_t *index,
               float *score) {
    return sample_row(c, keep, o, m, i, e, set, hmask, index, score);
}
#endif

static row_fn pick_row_fn(void) {
#ifdef NS_SAMPLE_FMA_CLONE
    __builtin_cpu_init();
    if (__builtin_cpu_supports("fma")) return sample_row_fma;
#endif
    return sample_row_generic;
}

ns_status ns_sample(ns_context *ctx, const ns_candidates *cand, const uint8_t *keep,
                    const ns_sampler_options *options, int64_t m, int64_t *index, float *score,
                    int64_t *count) {
    ns_status st;
    if ((st = ns_check_context(ctx, FN))) return st;
    if ((st = ns_check_candidates(ctx, FN, cand))) return st;
    if ((st = ns_check_ptr(ctx, FN, "index", index))) return st;
    if ((st = ns_check_ptr(ctx, FN, "count", count))) return st;
    static const ns_sampler_options defaults = NS_SAMPLER_OPTIONS_INIT;
    const ns_sampler_options *o = options ? options : &defaults;
    if ((st = check_options(ctx, cand, o, m))) return st;

    if (ctx->backend == NS_BACKEND_CUDA) {
#ifdef NS_HAVE_CUDA
        return ns_cuda_sample(ctx, cand, keep, o, m, index, score, count);
#else
        return ns_fail(ctx, NS_ERR_UNSUPPORTED, "%s: this build has no CUDA backend", FN);
#endif
    }

    if ((st = ns_check_candidate_data(ctx, FN, cand, o->strategy == NS_SAMPLE_SIMANS, 0)))
        return st;
    const int nt = ns_threads(ctx);
    const int64_t C = cand->per_query, H = hash_size(C);
    /* Per thread: the eligible entries (C) and the id set (H ids), 64-byte aligned pieces. */
    const size_t entry_bytes = ((size_t)C * sizeof(entry) + 63) & ~(size_t)63;
    const size_t per_thread = entry_bytes + (size_t)H * sizeof(int64_t);
    char *ws = (char *)ns_workspace(ctx, NS_WS_SAMPLE, per_thread * (size_t)nt);
    if (!ws)
        return ns_fail(ctx, NS_ERR_OUT_OF_MEMORY, "%s: cannot allocate %zu bytes of workspace",
                       FN, per_thread * (size_t)nt);

    const int64_t B = cand->queries;
    const row_fn row = pick_row_fn();
#pragma omp parallel num_threads(nt)
    {
#ifdef _OPENMP
        const int tid = omp_get_thread_num();
#else
        const int tid = 0;
#endif
        entry *e = (entry *)(ws + per_thread * (size_t)tid);
        int64_t *set = (int64_t *)(ws + per_thread * (size_t)tid + entry_bytes);
#pragma omp for schedule(dynamic, 8)
        for (int64_t i = 0; i < B; i++)
            count[i] = row(cand, keep, o, m, i, e, set, H - 1, index + i * m,
                           score ? score + i * m : NULL);
    }
    return NS_OK;
}
