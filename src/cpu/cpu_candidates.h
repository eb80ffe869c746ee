/* The row stages that ns_cpu_filter, ns_cpu_sample and the fused ns_cpu_filter_sample share
 * (src/cpu/cpu_filter.c, cpu_sample.c, cpu_filter_sample.c): one query row at a time, so that
 * the fused path filters a row and samples it while the row is in cache. */
#ifndef NS_CPU_CANDIDATES_H
#define NS_CPU_CANDIDATES_H

#include "ns_cpu.h"

/* A loop-heavy row function compiled three times, for AVX-512 (x86-64-v4), AVX2 and the
 * baseline, picked once at load time (GCC ifunc): the vectoriser then compares 8 or 4 int64 ids
 * per instruction (SSE2 has no 64-bit compare). IEEE basic operations (never contracted:
 * -ffp-contract=off), comparisons, integer work and moves only, so every clone gives the same
 * bits; the sampling keys choose their own path (ns_cpu_sample_keys). */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && !defined(__AVX2__) && \
    defined(__linux__)
#define NS_CPU_CLONES __attribute__((target_clones("arch=x86-64-v4", "avx2", "default")))
#else
#define NS_CPU_CLONES
#endif

/* Indices of the per-rule counts a row adds to (ns_filter_counts without examined). */
enum {
    NS_FC_KEPT, NS_FC_REMOVED, NS_FC_EMPTY, NS_FC_SAME_ID, NS_FC_MAX_SCORE, NS_FC_MIN_SCORE,
    NS_FC_MARGIN, NS_FC_REL_MARGIN, NS_FC_RANK, NS_FC_GUIDE, NS_FILTER_NCOUNTS
};

/* The positive lists (when NS_FILTER_SAME_ID) and ns_check_candidate_data for the rules of o;
 * need_positive_score: also check s+ (the fused path's sampler needs it for SimANS). */
ns_status ns_cpu_filter_check(ns_context *ctx, const char *fn, const ns_candidates *cand,
                              const ns_filter_options *o, int need_positive_score);
/* Row i: h (C words of scratch) = the rule bits that removed each slot, keep (the row's C
 * bytes) = 1 where none did; cnt (NS_FILTER_NCOUNTS, may be NULL) += the row's counts. */
void ns_cpu_filter_row(const ns_candidates *c, const ns_filter_options *o, int64_t i,
                       uint16_t *h, uint8_t *keep, int64_t *cnt);
void ns_cpu_filter_counts_out(const int64_t cnt[NS_FILTER_NCOUNTS], int64_t examined,
                              ns_filter_counts *out);

/* One thread's scratch for sampling rows of C slots (ns_cpu_sample_plan sizes it). */
typedef struct {
    uint32_t *col;  /* the row's candidate columns (C) */
    int64_t *id;    /* their ids (C) */
    float *s, *key; /* their scores and keys (C each) */
    uint64_t *best; /* the best m packed (key, column), best first (m) */
    int64_t *set;   /* open-addressing id set of the duplicate path (hmask + 1) */
    int64_t hmask;
} ns_sample_scratch;

/* The per-thread scratch of nt threads, carved from an arena by ns_cpu_sample_layout. */
typedef struct {
    int64_t C, m, H, nt;
    void *base;
} ns_sample_plan;
void ns_cpu_sample_plan(ns_sample_plan *p, int64_t C, int64_t m, int nt);
void ns_cpu_sample_layout(ns_sample_plan *p, ns_arena *a);
ns_sample_scratch ns_cpu_sample_scratch(const ns_sample_plan *p, int tid);

/* Checks of ns_sample that read data: ids, scores, s+ for SimANS; the column limit. */
ns_status ns_cpu_sample_check(ns_context *ctx, const char *fn, const ns_candidates *cand,
                              const ns_sampler_options *o, int slots_checked);
/* Row i: index/score (m each; score may be NULL) and the count, from the kept slots (keep:
 * the row's C bytes, NULL = all). isa: ns_cpu_sample_keys_isa(). */
int64_t ns_cpu_sample_row(const ns_candidates *c, const uint8_t *keep,
                          const ns_sampler_options *o, int isa, int64_t m, int64_t i,
                          const ns_sample_scratch *w, int64_t *index, float *score);

#endif
