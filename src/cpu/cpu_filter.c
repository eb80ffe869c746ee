/* ns_filter on the CPU: the checks of the host data, then every rule (ns_filter_hits of
 * src/hostdevice/ns_math.h, the code the CUDA kernel runs) over every slot, one query row at a
 * time (ns_cpu_filter_row: also the first half of ns_cpu_filter_sample's fused row). */
#include "ns_cpu.h"
#include "cpu_candidates.h"
#include "ns_math.h"

#include <math.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#define NS_FILTER_NEEDS_POSITIVE_SCORE (NS_FILTER_MARGIN | NS_FILTER_REL_MARGIN)
#define NS_FILTER_GUIDE_RULES (NS_FILTER_GUIDE | NS_FILTER_GUIDE_REL)
#define HIT_EMPTY 0x100u /* beside the NS_FILTER_* bits (0xff) of a row's hit words */

static const char *const FN = "ns_filter";

/* Whether slot t is bad: an id below -1, or a non-empty slot with a non-finite score (or guide
 * score). Integer tests on the bits so that the scan vectorises. */
static inline int slot_bad(const ns_candidates *c, int need_guide, int64_t t) {
    const int64_t id = c->id[t];
    const uint32_t e = ns_float_bits(c->score[t]) & 0x7f800000u;
    const uint32_t eg = need_guide ? ns_float_bits(c->guide_score[t]) & 0x7f800000u : 0u;
    return (id < -1) | ((id != -1) & ((e == 0x7f800000u) | (eg == 0x7f800000u)));
}

/* Whether a slot in [t0, t1) is bad: no early exit (a branch per slot would stop the vector
 * loop). */
NS_CPU_CLONES static int any_bad(const ns_candidates *c, int need_guide, int64_t t0, int64_t t1) {
    int bad = 0;
    if (need_guide)
        for (int64_t t = t0; t < t1; t++) bad |= slot_bad(c, 1, t);
    else
        for (int64_t t = t0; t < t1; t++) bad |= slot_bad(c, 0, t);
    return bad;
}

/* The first bad slot (n when none): blocks scanned in parallel, then the first bad block
 * searched slot by slot. */
static int64_t first_bad_slot(ns_context *ctx, const ns_candidates *c, int need_guide) {
    const int64_t n = c->queries * c->per_query, block = 4096;
    const int64_t blocks = (n + block - 1) / block;
    int64_t first = blocks;
#pragma omp parallel for schedule(static) num_threads(ns_threads(ctx)) reduction(min : first)
    for (int64_t b = 0; b < blocks; b++) {
        const int64_t end = (b + 1) * block < n ? (b + 1) * block : n;
        if (any_bad(c, need_guide, b * block, end) && b < first) first = b;
    }
    for (int64_t t = first * block; t < n; t++)
        if (slot_bad(c, need_guide, t)) return t;
    return n;
}

/* Checks that read the (host) data: ids, non-finite scores of non-empty slots, positive lists.
 * Shared with ns_sample (src/sample.c) for ids and scores. */
ns_status ns_check_candidate_data(ns_context *ctx, const char *fn, const ns_candidates *c,
                                  int need_positive_score, int need_guide) {
    const int64_t n = c->queries * c->per_query, t = first_bad_slot(ctx, c, need_guide);
    if (t < n) {
        const int64_t id = c->id[t];
        if (id < -1)
            return ns_fail(ctx, NS_ERR_INVALID_ARGUMENT,
                           "%s: cand->id[%lld] (%lld) is negative (expected -1 for an empty slot "
                           "or an id >= 0)",
                           fn, (long long)t, (long long)id);
        if (!isfinite(c->score[t]))
            return ns_fail(ctx, NS_ERR_NONFINITE,
                           "%s: cand->score[%lld] (query %lld, column %lld) is %g (expected finite)",
                           fn, (long long)t, (long long)(t / c->per_query),
                           (long long)(t % c->per_query), (double)c->score[t]);
        return ns_fail(ctx, NS_ERR_NONFINITE,
                       "%s: cand->guide_score[%lld] (query %lld, column %lld) is %g (expected "
                       "finite)",
                       fn, (long long)t, (long long)(t / c->per_query),
                       (long long)(t % c->per_query), (double)c->guide_score[t]);
    }
    return ns_check_candidate_rows(ctx, fn, c, need_positive_score, need_guide);
}

ns_status ns_check_candidate_rows(ns_context *ctx, const char *fn, const ns_candidates *c,
                                  int need_positive_score, int need_guide) {
    for (int64_t i = 0; i < c->queries; i++) {
        if (need_positive_score && !isfinite(c->positive_score[i]))
            return ns_fail(ctx, NS_ERR_NONFINITE,
                           "%s: cand->positive_score[%lld] is %g (expected finite)", fn,
                           (long long)i, (double)c->positive_score[i]);
        if (need_guide && !isfinite(c->guide_positive_score[i]))
            return ns_fail(ctx, NS_ERR_NONFINITE,
                           "%s: cand->guide_positive_score[%lld] is %g (expected finite)", fn,
                           (long long)i, (double)c->guide_positive_score[i]);
    }
    return NS_OK;
}

static ns_status check_positive_lists(ns_context *ctx, const char *fn, const ns_id_lists *p) {
    return ns_check_id_lists_data(ctx, fn, "cand->positive_id", p, p->queries, NS_IDS_ANY,
                                  NULL, NULL);
}

ns_status ns_cpu_filter_check(ns_context *ctx, const char *fn, const ns_candidates *cand,
                              const ns_filter_options *o, int need_positive_score) {
    ns_status st;
    const unsigned r = o->rules;
    if ((r & NS_FILTER_SAME_ID) && (st = check_positive_lists(ctx, fn, cand->positive_id)))
        return st;
    return ns_check_candidate_data(ctx, fn, cand,
                                   need_positive_score || (r & NS_FILTER_NEEDS_POSITIVE_SCORE),
                                   (r & NS_FILTER_GUIDE_RULES) != 0);
}

/* The per-rule counts of one row's hit words (h[j]: the NS_FILTER_* bits that removed slot j,
 * or HIT_EMPTY alone): branch-free with 16-bit sums over chunks, so that it vectorises wide. */
NS_CPU_CLONES static void count_hits(const uint16_t *h, int64_t C, int64_t cnt[NS_FILTER_NCOUNTS]) {
    int64_t bit[9] = {0}, kept = 0, guide = 0;
    for (int64_t j0 = 0; j0 < C; j0 += 65535) {
        const int64_t j1 = C - j0 < 65535 ? C : j0 + 65535;
        uint16_t b16[9] = {0}, k16 = 0, g16 = 0;
        for (int64_t j = j0; j < j1; j++) {
            const unsigned v = h[j];
            for (int b = 0; b < 9; b++) b16[b] += (uint16_t)((v >> b) & 1u);
            k16 += (uint16_t)(v == 0);
            g16 += (uint16_t)((v & NS_FILTER_GUIDE_RULES) != 0); /* both guide forms: one count */
        }
        for (int b = 0; b < 9; b++) bit[b] += b16[b];
        kept += k16;
        guide += g16;
    }
    cnt[NS_FC_KEPT] += kept;
    cnt[NS_FC_EMPTY] += bit[8];
    cnt[NS_FC_REMOVED] += C - kept - bit[8];
    cnt[NS_FC_SAME_ID] += bit[0];
    cnt[NS_FC_MAX_SCORE] += bit[1];
    cnt[NS_FC_MIN_SCORE] += bit[2];
    cnt[NS_FC_MARGIN] += bit[3];
    cnt[NS_FC_REL_MARGIN] += bit[4];
    cnt[NS_FC_RANK] += bit[5];
    cnt[NS_FC_GUIDE] += guide;
}

NS_CPU_CLONES void ns_cpu_filter_row(const ns_candidates *c, const ns_filter_options *opt,
                                     int64_t i, uint16_t *h, uint8_t *keep, int64_t *cnt) {
    const ns_filter_options o = *opt; /* a local copy: the loops below see no aliasing */
    const int64_t C = c->per_query, *ids = c->id + i * C;
    const float *s = c->score + i * C;
    /* Only what an enabled rule needs is read: a caller may leave the others dangling. */
    const int need_sp = (o.rules & NS_FILTER_NEEDS_POSITIVE_SCORE) != 0;
    const int need_guide = (o.rules & NS_FILTER_GUIDE_RULES) != 0;
    const float sp = need_sp ? c->positive_score[i] : 0.0f;
    /* Every slot's rules computed, then the empty ones marked: no branch in the loop. */
    if (need_guide) {
        const float gp = c->guide_positive_score[i], *g = c->guide_score + i * C;
        for (int64_t j = 0; j < C; j++) {
            const unsigned hit = ns_filter_hits(&o, s[j], sp, g[j], gp, j);
            h[j] = (uint16_t)(ids[j] == -1 ? HIT_EMPTY : hit);
        }
    } else {
        for (int64_t j = 0; j < C; j++) {
            const unsigned hit = ns_filter_hits(&o, s[j], sp, 0.0f, 0.0f, j);
            h[j] = (uint16_t)(ids[j] == -1 ? HIT_EMPTY : hit);
        }
    }
    if (o.rules & NS_FILTER_SAME_ID) { /* one vector pass per positive id (usually one) */
        const int64_t *pos = c->positive_id->ids + c->positive_id->offsets[i];
        const int64_t npos = c->positive_id->offsets[i + 1] - c->positive_id->offsets[i];
        for (int64_t k = 0; k < npos; k++) {
            const int64_t p = pos[k];
            if (p == -1) continue; /* would match the empty slots only */
            for (int64_t j = 0; j < C; j++)
                h[j] |= (uint16_t)(ids[j] == p ? NS_FILTER_SAME_ID : 0u);
        }
    }
    for (int64_t j = 0; j < C; j++) keep[j] = h[j] == 0;
    if (cnt) count_hits(h, C, cnt);
}

void ns_cpu_filter_counts_out(const int64_t cnt[NS_FILTER_NCOUNTS], int64_t examined,
                              ns_filter_counts *out) {
    out->examined = examined;
    out->kept = cnt[NS_FC_KEPT];
    out->removed = cnt[NS_FC_REMOVED];
    out->empty = cnt[NS_FC_EMPTY];
    out->same_id = cnt[NS_FC_SAME_ID];
    out->max_score = cnt[NS_FC_MAX_SCORE];
    out->min_score = cnt[NS_FC_MIN_SCORE];
    out->margin = cnt[NS_FC_MARGIN];
    out->rel_margin = cnt[NS_FC_REL_MARGIN];
    out->rank = cnt[NS_FC_RANK];
    out->guide = cnt[NS_FC_GUIDE];
}

typedef struct {
    int64_t per_thread; /* hit words per thread, whole cache lines */
    int nt;
    uint16_t *hits;
} filter_ws;

static void filter_layout(void *plan, ns_arena *a) {
    filter_ws *w = (filter_ws *)plan;
    w->hits = (uint16_t *)ns_arena_carve(a, (size_t)w->per_thread * (size_t)w->nt * 2);
}

ns_status ns_cpu_filter(ns_context *ctx, const ns_candidates *cand, const ns_filter_options *o,
                        uint8_t *keep, ns_filter_counts *counts) {
    ns_status st;
    if ((st = ns_cpu_filter_check(ctx, FN, cand, o, 0))) return st;
    const int nt = ns_threads(ctx);
    const int64_t B = cand->queries, C = cand->per_query;
    filter_ws w = {(C + 31) / 32 * 32, nt, NULL};
    if ((st = ns_arena_lay_out(ctx, &ctx->scratch, filter_layout, &w, FN))) return st;
    int64_t cnt[NS_FILTER_NCOUNTS] = {0};
#pragma omp parallel num_threads(nt) reduction(+ : cnt[:NS_FILTER_NCOUNTS])
    {
#ifdef _OPENMP
        uint16_t *h = w.hits + w.per_thread * omp_get_thread_num();
#else
        uint16_t *h = w.hits;
#endif
#pragma omp for schedule(static)
        for (int64_t i = 0; i < B; i++)
            ns_cpu_filter_row(cand, o, i, h, keep + i * C, counts ? cnt : NULL);
    }
    if (counts) ns_cpu_filter_counts_out(cnt, B * C, counts);
    return NS_OK;
}
