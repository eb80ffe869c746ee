/* negsamp inspect: what a mining run's trace (mine --trace PREFIX) says about its negatives. */
#ifndef NS_CLI_INSPECT_H
#define NS_CLI_INSPECT_H

#include "cli.h"

#define INSPECT_BINS 24
enum { INS_POS, INS_KEPT, INS_SAMPLED, INS_FILTERED, INS_SERIES };
enum { INS_RANKS = 5 }; /* 1, 2-3, 4-10, 11-k, > k */

/* The trace of a run, as read. */
typedef struct {
    const char *prefix;
    cli_array cand, score, dec, pos;
    cli_ids qids, cids;
    cli_lists labels; /* --qrels, rows of the trace; ids NULL without --qrels */
    int64_t B, k;
} inspect_trace;

typedef struct {
    double eps;
    int64_t B, k, with_pos, examined, kept, sampled, removed, rule[8];
    int has_labels;
    int64_t labelled_queries, sampled_labelled, kept_labelled;
    int64_t multi_queries, multi_sampled, multi_sampled_labelled;
    int64_t near_sampled, near_kept;
    int64_t rank[INS_RANKS];
    double mrr;
    double lo, hi;
    int64_t hist[INS_SERIES][INSPECT_BINS];
} inspect_stats;

extern const char *const INSPECT_RULE_NAMES[8];
extern const char *const INSPECT_SERIES_NAMES[INS_SERIES];

void inspect_compute(const inspect_trace *t, double eps, inspect_stats *st);
void inspect_print_summary(FILE *f, const inspect_trace *t, const inspect_stats *st);
enum { INS_FILES = 5 };
/* DIR/report.md, summary.json, scores.png, ranks.png, rules.png (DIR made when absent). */
int inspect_report_paths(const char *dir, char path[INS_FILES][4096]);
/* Writes them (checked by cli_check_files before): 0 or -1 (message printed). */
int inspect_write_report(char path[INS_FILES][4096], const inspect_trace *t,
                         const inspect_stats *st, int force);

#endif
