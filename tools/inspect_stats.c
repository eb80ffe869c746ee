/* The numbers of `negsamp inspect` from a run's trace: removals per rule, kept and sampled,
 * labelled positives among the negatives (--qrels), near-duplicates by score (within eps of
 * s+), the rank of each query's positive, and score histograms of positives, kept, sampled and
 * filtered candidates over one range. */
#define _GNU_SOURCE
#include "inspect.h"

#include <math.h>
#include <string.h>

#include "stage.h"

const char *const INSPECT_RULE_NAMES[8] = {"same-id", "max-score", "min-score", "margin",
                                           "rel-margin", "rank", "guide-margin",
                                           "guide-rel-margin"};
const char *const INSPECT_SERIES_NAMES[INS_SERIES] = {"positives (s+)", "kept", "sampled",
                                                      "filtered"};

static int labelled(const inspect_trace *t, int64_t q, int64_t id) {
    for (int64_t p = t->labels.offsets[q]; p < t->labels.offsets[q + 1]; p++)
        if (t->labels.ids[p] == id) return 1;
    return 0;
}

static int bin_of(const inspect_stats *st, double v) {
    if (!(st->hi > st->lo)) return 0;
    int b = (int)floor((v - st->lo) / (st->hi - st->lo) * INSPECT_BINS);
    return b < 0 ? 0 : b >= INSPECT_BINS ? INSPECT_BINS - 1 : b;
}

/* The histograms' range: the scores of the candidates the run decided on (decision != 0: rows
 * the run wrote) and s+ of the queries with a positive. */
static void score_range(const inspect_trace *t, inspect_stats *st) {
    const float *sc = t->score.data, *ps = t->pos.data;
    const int64_t *cand = t->cand.data, *dec = t->dec.data;
    st->lo = INFINITY, st->hi = -INFINITY;
    for (int64_t i = 0; i < t->B * t->k; i++)
        if (cand[i] >= 0 && dec[i] && isfinite(sc[i])) {
            if (sc[i] < st->lo) st->lo = sc[i];
            if (sc[i] > st->hi) st->hi = sc[i];
        }
    for (int64_t q = 0; q < t->B; q++)
        if (isfinite(ps[q])) {
            if (ps[q] < st->lo) st->lo = ps[q];
            if (ps[q] > st->hi) st->hi = ps[q];
        }
    if (!(st->lo <= st->hi)) st->lo = 0, st->hi = 1;
}

/* The rank of query q's positive (s+): 1 + candidates scoring above it. */
static void rank_of(const inspect_trace *t, int64_t q, inspect_stats *st) {
    const float *sc = (const float *)t->score.data + q * t->k;
    const int64_t *cand = (const int64_t *)t->cand.data + q * t->k;
    float sp = ((const float *)t->pos.data)[q];
    int64_t above = 0, filled = 0;
    for (int64_t j = 0; j < t->k; j++)
        if (cand[j] >= 0) filled++, above += sc[j] > sp;
    int64_t r = above + 1;
    int b = above == filled && filled == t->k ? 4 : r == 1 ? 0 : r <= 3 ? 1 : r <= 10 ? 2 : 3;
    st->rank[b]++;
    if (b < 4) st->mrr += 1.0 / (double)r;
}

static void candidate(const inspect_trace *t, int64_t q, int64_t j, inspect_stats *st) {
    int64_t i = q * t->k + j, id = ((const int64_t *)t->cand.data)[i];
    int64_t d = ((const int64_t *)t->dec.data)[i];
    double s = ((const float *)t->score.data)[i], sp = ((const float *)t->pos.data)[q];
    st->examined++;
    int lab = st->has_labels && labelled(t, q, id);
    int multi = st->has_labels && t->labels.offsets[q + 1] - t->labels.offsets[q] >= 2;
    int near = isfinite(sp) && s >= sp - st->eps;
    if (d & STAGE_KEPT) {
        st->kept++, st->kept_labelled += lab, st->near_kept += near;
        st->hist[INS_KEPT][bin_of(st, s)]++;
    } else {
        st->removed++;
        for (int r = 0; r < 8; r++) st->rule[r] += (d >> r) & 1;
        st->hist[INS_FILTERED][bin_of(st, s)]++;
    }
    if (d & STAGE_SAMPLED) {
        st->sampled++, st->sampled_labelled += lab, st->near_sampled += near;
        st->multi_sampled += multi, st->multi_sampled_labelled += multi && lab;
        st->hist[INS_SAMPLED][bin_of(st, s)]++;
    }
}

void inspect_compute(const inspect_trace *t, double eps, inspect_stats *st) {
    memset(st, 0, sizeof *st);
    st->eps = eps;
    st->B = t->B;
    st->k = t->k;
    st->has_labels = t->labels.ids != NULL || t->labels.offsets != NULL;
    score_range(t, st);
    const float *ps = t->pos.data;
    const int64_t *cand = t->cand.data, *dec = t->dec.data;
    for (int64_t q = 0; q < t->B; q++) {
        if (isfinite(ps[q])) {
            st->with_pos++;
            st->hist[INS_POS][bin_of(st, ps[q])]++;
            rank_of(t, q, st);
        }
        int64_t nl = st->has_labels ? t->labels.offsets[q + 1] - t->labels.offsets[q] : 0;
        st->labelled_queries += nl > 0;
        st->multi_queries += nl >= 2;
        /* decision 0: a row the run did not write (no positive) or an empty slot */
        for (int64_t j = 0; j < t->k; j++)
            if (cand[q * t->k + j] >= 0 && dec[q * t->k + j]) candidate(t, q, j, st);
    }
    if (st->with_pos) st->mrr /= (double)st->with_pos;
}
