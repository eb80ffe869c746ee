/* The filter → sample → write stage that `negsamp mine` and `negsamp sample` share: its options
 * (stage_options.c), its run over blocks of queries (stage.c) and its JSONL rows (stage_jsonl.c). */
#ifndef NS_CLI_STAGE_H
#define NS_CLI_STAGE_H

#include "cli.h"

enum { FMT_IDS, FMT_ST, FMT_TEVATRON, FMT_FLAG };

/* Options of the filter → sample → write stage, shared by mine and sample. */
typedef struct {
    int64_t m;
    ns_filter_options filter;
    ns_sampler_options sampler;
    int same_id;
    int rank_set;
    int guide_set;
    int format;
    const char *out, *out_index, *out_score, *out_positive_score;
    const char *query_ids, *corpus_ids, *qrels, *positives;
    int paired, skip_unknown_ids;
    int with_scores;         /* --with-scores: scores in st / flag rows */
    const char *trace;       /* --trace PREFIX: per-candidate scores and decisions (.npy) */
    char provenance[4096];   /* "<first output>.provenance.json" (stage_check) */
    char trace_path[6][4096];
    int force, quiet, threads;
    int threads_set; /* --threads given (under mpirun the default is the rank's share) */
    ns_backend backend;
    int device; /* the CUDA device of the context (a rank's under mpirun; 0 otherwise) */
    /* --random-negatives M: M corpus rows per query by weight^alpha (ns_sample_corpus) after the
     * m hard ones, never a positive or a chosen hard negative (stage_random.c) */
    int64_t random_m;
    float random_alpha;
    const char *weights; /* --weights W.npy: one weight per corpus row; NULL = uniform */
} stage_opts;

/* Columns of an output row: the m hard negatives (-1 padded), then the random ones. */
static inline int64_t stage_width(const stage_opts *o) { return o->m + o->random_m; }

enum {
    O_HELP = 'h', O_M = 'm', O_K = 'k',
    O_SAMPLER = 300, O_SIMANS_A, O_SIMANS_B, O_TEMPERATURE, O_SEED, O_SAME_ID, O_NO_SAME_ID,
    O_MAX_SCORE, O_MIN_SCORE, O_MARGIN, O_REL_MARGIN, O_RANK_MIN, O_RANK_MAX, O_FORMAT, O_OUT,
    O_OUT_INDEX, O_OUT_SCORE, O_OUT_POS, O_FORCE, O_QUIET, O_BACKEND, O_THREADS, O_QUERY_IDS,
    O_CORPUS_IDS, O_QRELS, O_POSITIVES, O_PAIRED, O_GUIDE_MARGIN, O_GUIDE_REL, O_SKIP_UNKNOWN,
    /* mine */
    O_QUERIES, O_CORPUS, O_COSINE, O_SCALE, O_EXCLUDE_SELF, O_BATCH, O_GUIDE_QUERIES,
    O_GUIDE_CORPUS, O_BEIR, O_SPLIT, O_QUERIES_EMB, O_CORPUS_EMB, O_WITH_SCORES, O_TRACE,
    /* sample */
    O_CANDIDATES, O_SCORES, O_POSITIVE_SCORE, O_GUIDE_SCORES, O_GUIDE_POSITIVE_SCORE,
    /* random negatives */
    O_RANDOM_NEGATIVES, O_RANDOM_ALPHA, O_WEIGHTS
};

#define STAGE_LONG_OPTIONS                                                                    \
    {"help", no_argument, 0, O_HELP}, {"negatives", required_argument, 0, O_M},              \
        {"sampler", required_argument, 0, O_SAMPLER},                                         \
        {"simans-a", required_argument, 0, O_SIMANS_A},                                       \
        {"simans-b", required_argument, 0, O_SIMANS_B},                                       \
        {"temperature", required_argument, 0, O_TEMPERATURE},                                 \
        {"seed", required_argument, 0, O_SEED}, {"same-id", no_argument, 0, O_SAME_ID},       \
        {"no-same-id", no_argument, 0, O_NO_SAME_ID},                                         \
        {"max-score", required_argument, 0, O_MAX_SCORE},                                     \
        {"min-score", required_argument, 0, O_MIN_SCORE},                                     \
        {"margin", required_argument, 0, O_MARGIN},                                           \
        {"rel-margin", required_argument, 0, O_REL_MARGIN},                                   \
        {"rank-min", required_argument, 0, O_RANK_MIN},                                       \
        {"rank-max", required_argument, 0, O_RANK_MAX},                                       \
        {"format", required_argument, 0, O_FORMAT}, {"out", required_argument, 0, O_OUT},     \
        {"out-index", required_argument, 0, O_OUT_INDEX},                                     \
        {"out-score", required_argument, 0, O_OUT_SCORE},                                     \
        {"out-positive-score", required_argument, 0, O_OUT_POS},                              \
        {"force", no_argument, 0, O_FORCE}, {"quiet", no_argument, 0, O_QUIET},               \
        {"backend", required_argument, 0, O_BACKEND},                                         \
        {"threads", required_argument, 0, O_THREADS},                                         \
        {"query-ids", required_argument, 0, O_QUERY_IDS},                                     \
        {"corpus-ids", required_argument, 0, O_CORPUS_IDS},                                   \
        {"qrels", required_argument, 0, O_QRELS},                                             \
        {"positives", required_argument, 0, O_POSITIVES},                                     \
        {"paired", no_argument, 0, O_PAIRED},                                                 \
        {"skip-unknown-ids", no_argument, 0, O_SKIP_UNKNOWN},                                 \
        {"guide-margin", required_argument, 0, O_GUIDE_MARGIN},                               \
        {"guide-rel-margin", required_argument, 0, O_GUIDE_REL},                              \
        {"with-scores", no_argument, 0, O_WITH_SCORES},                                       \
        {"trace", required_argument, 0, O_TRACE},                                             \
        {"random-negatives", required_argument, 0, O_RANDOM_NEGATIVES},                       \
        {"random-alpha", required_argument, 0, O_RANDOM_ALPHA},                               \
        {"weights", required_argument, 0, O_WEIGHTS}


extern const char STAGE_HELP[];

void stage_defaults(stage_opts *o);
/* 1 when handled, 0 when not a stage option, -1 on a bad value (usage message printed). */
int stage_option(stage_opts *o, int c, const char *arg);
/* Checks that need every option; C_hint is the candidates per query. Returns 0 or CLI_USAGE. */
int stage_check(stage_opts *o, int64_t C_hint, int mine);
/* The command's inputs (n of them, NULL paths skipped) and the stage's own (id files, qrels,
 * positives) against the outputs: cli_check_files. Returns 0 or the exit status. */
int stage_check_files(const stage_opts *o, const cli_named_path *inputs, int n);

typedef struct {
    stage_opts *o;
    ns_context *ctx;
    cli_ids qids, cids;
    cli_lists pos;     /* positives per query row (corpus rows); ids NULL when none given */
    int has_pos;
    int64_t B, C;      /* queries, candidates per query */
    cli_output out, out_index, out_score, out_pos, prov;
    cli_output trace[6]; /* candidates, scores, decisions, positive_score, query/corpus ids */
    const cli_texts *qt, *ct; /* texts of queries and corpus rows (JSONL inputs), or NULL */
    float *pos_each;          /* each positive's score, aligned with pos.ids (NULL: not known) */
    int64_t trace_rows;       /* corpus rows the trace names: 1 + the largest candidate */
    int64_t skipped_queries;  /* query rows without positive left out before mining (texts) */
    /* per block, host: rows of stage_width columns (the hard ones first, -1 padded to m) */
    int64_t *index, *count;
    float *score;
    /* random negatives: the corpus size, the weights (host, and on the context's backend),
     * per block the random count per query and the exclusion lists (host) */
    int64_t corpus_rows;
    int random_exclude_self; /* mine --exclude-self: query row i is corpus row i */
    cli_array weights;
    void *weights_d;
    int64_t *rcount, *xoff, *xids;
    int64_t xcap;
    /* totals for the summary */
    ns_filter_counts counts;
    int64_t short_rows, no_pos_rows, jsonl_rows;
    /* Where the candidates came from, for the library's data errors (NULL: computed here, as
     * mine's are): the option and file of cand->id, score, positive_score, guide_score and
     * guide_positive_score, in that order (STAGE_SRC_*). */
    const char *src_option[5], *src_path[5];
} stage;

enum { STAGE_SRC_ID, STAGE_SRC_SCORE, STAGE_SRC_POSITIVE_SCORE, STAGE_SRC_GUIDE_SCORE,
       STAGE_SRC_GUIDE_POSITIVE_SCORE };


int stage_open_outputs(stage *s);
int stage_write_headers(stage *s);
void stage_abort(stage *s);
int stage_commit(stage *s);
/* Loads ids and positives. qrows/crows: rows of queries and corpus (-1: unknown). */
int stage_load_positives(stage *s, int64_t qrows, int64_t crows);
int stage_alloc(stage *s, int64_t nb);
/* --random-negatives: the corpus size (rows, or -1 when the command does not know it: then
 * --weights or --corpus-ids tells) and the weights. After stage_context. 0 or -1. */
int stage_random_open(stage *s, int64_t rows);
/* Draws the block's random negatives (ns_sample_corpus) and widens s->index/score rows from m
 * to stage_width columns (random scores NaN). 0 or -1. */
int stage_random_block(stage *s, int64_t b0, int64_t nb, const uint8_t *valid);
void stage_random_free(stage *s);
void stage_free(stage *s);
int stage_context(stage *s);
void stage_summary(const stage *s, const char *what, double secs);
/* Filter → sample → write for queries [b0, b0+nb). cand_id/cand_score/pos_score are the block's
 * host arrays (nb×C, nb×C, nb). valid[i] = 0 marks a query without positive (blank output). */
int stage_block(stage *s, int64_t b0, int64_t nb, const int64_t *cand_id, const float *cand_score,
                const float *pos_score, const uint8_t *valid, const float *guide_score,
                const float *guide_pos);
/* The JSONL rows of query q: n sampled negatives idx with scores sc. */
void stage_write_jsonl(stage *s, int64_t q, const int64_t *idx, const float *sc, int64_t n);
/* The same with the texts joined in (s->qt, s->ct set): st, tevatron, flag (ids: as above). */
void stage_write_text_jsonl(stage *s, int64_t q, const int64_t *idx, const float *sc, int64_t n);
/* --trace: the block's candidates, scores, decisions (bits: NS_FILTER_* rules that removed it,
 * STAGE_KEPT, STAGE_SAMPLED) and s+ rows. */
enum { STAGE_KEPT = 1 << 8, STAGE_SAMPLED = 1 << 9 };
void stage_write_trace(stage *s, int64_t nb, const int64_t *cand_id, const float *cand_score,
                       const float *pos_score, const uint8_t *valid, const float *guide_score,
                       const float *guide_pos, int64_t b0);
int stage_trace_headers(stage *s);
/* PREFIX.query_ids.txt and PREFIX.corpus_ids.txt: the ids of the rows, one a line. */
void stage_trace_ids(stage *s);
/* The provenance sidecar: version, command line, options, inputs' sizes and FNV-1a hashes.
 * extra: more "key": value JSON members (may be NULL). */
int stage_write_provenance(stage *s, int argc, char **argv, const char *command,
                           const cli_named_path *inputs, int n, const char *extra);

#endif
