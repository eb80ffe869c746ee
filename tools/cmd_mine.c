/* negsamp mine: top-k over a corpus → false-negative filter → sample m → JSONL / .npy.
 * negsamp sample: the same filter → sample → write on a precomputed candidate matrix.
 * Queries are processed in blocks (--batch) so memory stays O(batch · k); the sampler's RNG is
 * countered by the global query row, so the block size never changes the draws. */
#define _GNU_SOURCE
#include "cli.h"

#include <getopt.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

enum { FMT_IDS, FMT_ST, FMT_TEVATRON };

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
    int paired;
    int force, quiet, threads;
    ns_backend backend;
} stage_opts;

enum {
    O_HELP = 'h', O_M = 'm', O_K = 'k',
    O_SAMPLER = 300, O_SIMANS_A, O_SIMANS_B, O_TEMPERATURE, O_SEED, O_SAME_ID, O_NO_SAME_ID,
    O_MAX_SCORE, O_MIN_SCORE, O_MARGIN, O_REL_MARGIN, O_RANK_MIN, O_RANK_MAX, O_FORMAT, O_OUT,
    O_OUT_INDEX, O_OUT_SCORE, O_OUT_POS, O_FORCE, O_QUIET, O_BACKEND, O_THREADS, O_QUERY_IDS,
    O_CORPUS_IDS, O_QRELS, O_POSITIVES, O_PAIRED, O_GUIDE_MARGIN, O_GUIDE_REL,
    /* mine */
    O_QUERIES, O_CORPUS, O_COSINE, O_SCALE, O_EXCLUDE_SELF, O_BATCH, O_GUIDE_QUERIES,
    O_GUIDE_CORPUS,
    /* sample */
    O_CANDIDATES, O_SCORES, O_POSITIVE_SCORE, O_GUIDE_SCORES, O_GUIDE_POSITIVE_SCORE
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
        {"guide-margin", required_argument, 0, O_GUIDE_MARGIN},                               \
        {"guide-rel-margin", required_argument, 0, O_GUIDE_REL}

static const char STAGE_HELP[] =
    "Positives (the same-id rule, s+ for margins and SimANS, JSONL 'positive'):\n"
    "  --qrels FILE          BEIR qrels TSV: query-id, corpus-id, score (header optional;\n"
    "                        score <= 0 is not a positive; TREC's 4 columns accepted)\n"
    "  --positives FILE      line i lists the corpus ids of query row i's positives\n"
    "  --paired              query row i's positive is corpus row i\n"
    "  --query-ids FILE      one id per line, line i = query row i (default: row numbers)\n"
    "  --corpus-ids FILE     one id per line, line i = corpus row i (default: row numbers)\n"
    "Filter (each rule optional; s+ = the lowest score among the query's positives):\n"
    "  --same-id / --no-same-id  exclude/drop the query's positives (default on)\n"
    "  --max-score X         drop s > X\n"
    "  --min-score X         drop s < X\n"
    "  --margin X            drop s > s+ - X              (NV-Retriever TopK-MarginPos)\n"
    "  --rel-margin X        drop s > s+ - |s+| * X       (TopK-PercPos, perc = 1 - X)\n"
    "  --rank-min R, --rank-max R  keep only candidate ranks in [R_min, R_max)\n"
    "  --guide-margin X      drop g > g+ - X with guide-model scores g (GISTEmbed; mine:\n"
    "                        --guide-queries/--guide-corpus, sample: --guide-scores)\n"
    "  --guide-rel-margin X  drop g > g+ - |g+| * X (instead of --guide-margin)\n"
    "Sampler (m negatives per query, without replacement):\n"
    "  -m, --negatives M     negatives per query (default 10)\n"
    "  --sampler S           top | uniform | simans | softmax (default top)\n"
    "  --simans-a A, --simans-b B  SimANS w = exp(-a (s - s+ - b)^2) (defaults 0.5, 0)\n"
    "  --temperature T       softmax w = exp(s / T) (default 1)\n"
    "  --seed N              random seed (default 0); same seed, same negatives\n"
    "Output (at least one; written to a temporary file and renamed when complete):\n"
    "  --out FILE.jsonl      JSONL, in --format:\n"
    "        ids       {\"query\": id, \"positive\": id, \"negatives\": [ids], \"scores\": [s]}\n"
    "                  (one line per query and positive; default)\n"
    "        st        {\"query\": id, \"positive\": id, \"negative_1\": id, ...}\n"
    "                  (sentence-transformers n-tuple column order; rows with fewer than m\n"
    "                  negatives are left out)\n"
    "        tevatron  {\"query_id\": id, \"positive_passages\": [{\"docid\": id}],\n"
    "                   \"negative_passages\": [{\"docid\": id, \"score\": s}]}\n"
    "  --out-index FILE.npy  int64 queries x m corpus rows, -1 padded\n"
    "  --out-score FILE.npy  float32 queries x m scores, NaN padded\n"
    "  --out-positive-score FILE.npy  float32 s+ per query (NaN without positive)\n"
    "  Ids in JSONL are the lines of --query-ids/--corpus-ids (strings) or row numbers\n"
    "  (integers; strings in tevatron).\n"
    "  --force               overwrite existing outputs\n"
    "Run:\n"
    "  --backend B           auto | cpu | cuda (default auto)\n"
    "  --threads N           CPU threads (default: all cores)\n"
    "  --quiet               no progress bar, no summary\n"
    "Exit status: 0 ok, 1 runtime error (files, data), 2 usage error.\n";

static void stage_defaults(stage_opts *o) {
    memset(o, 0, sizeof(*o));
    o->m = 10;
    ns_filter_options f = NS_FILTER_OPTIONS_INIT;
    ns_sampler_options s = NS_SAMPLER_OPTIONS_INIT;
    o->filter = f;
    o->filter.rules = 0;
    o->sampler = s;
    o->sampler.strategy = NS_SAMPLE_TOP;
    o->same_id = 1;
    o->format = FMT_IDS;
    o->backend = NS_BACKEND_AUTO;
}

/* 1 when handled, 0 when not a stage option, -1 on a bad value (usage message printed). */
static int stage_option(stage_opts *o, int c, const char *arg) {
    int64_t v;
    float x;
    switch (c) {
    case O_M:
        if (cli_parse_i64("--negatives", arg, 1, NS_MAX_K, &v)) return -1;
        o->m = v;
        return 1;
    case O_SAMPLER:
        if (!strcmp(arg, "top")) o->sampler.strategy = NS_SAMPLE_TOP;
        else if (!strcmp(arg, "uniform")) o->sampler.strategy = NS_SAMPLE_UNIFORM;
        else if (!strcmp(arg, "simans")) o->sampler.strategy = NS_SAMPLE_SIMANS;
        else if (!strcmp(arg, "softmax")) o->sampler.strategy = NS_SAMPLE_SOFTMAX;
        else {
            cli_usage_error("--sampler '%s': expected top, uniform, simans or softmax", arg);
            return -1;
        }
        return 1;
    case O_SIMANS_A:
        if (cli_parse_f32("--simans-a", arg, &x)) return -1;
        if (!(x > 0)) {
            cli_usage_error("--simans-a (%s) must be > 0", arg);
            return -1;
        }
        o->sampler.simans_a = x;
        return 1;
    case O_SIMANS_B:
        if (cli_parse_f32("--simans-b", arg, &o->sampler.simans_b)) return -1;
        return 1;
    case O_TEMPERATURE:
        if (cli_parse_f32("--temperature", arg, &x)) return -1;
        if (!(x > 0)) {
            cli_usage_error("--temperature (%s) must be > 0", arg);
            return -1;
        }
        o->sampler.temperature = x;
        return 1;
    case O_SEED:
        return cli_parse_u64("--seed", arg, &o->sampler.seed) ? -1 : 1;
    case O_SAME_ID: o->same_id = 1; return 1;
    case O_NO_SAME_ID: o->same_id = 0; return 1;
    case O_MAX_SCORE:
        o->filter.rules |= NS_FILTER_MAX_SCORE;
        return cli_parse_f32("--max-score", arg, &o->filter.max_score) ? -1 : 1;
    case O_MIN_SCORE:
        o->filter.rules |= NS_FILTER_MIN_SCORE;
        return cli_parse_f32("--min-score", arg, &o->filter.min_score) ? -1 : 1;
    case O_MARGIN:
        o->filter.rules |= NS_FILTER_MARGIN;
        return cli_parse_f32("--margin", arg, &o->filter.margin) ? -1 : 1;
    case O_REL_MARGIN:
        o->filter.rules |= NS_FILTER_REL_MARGIN;
        return cli_parse_f32("--rel-margin", arg, &o->filter.rel_margin) ? -1 : 1;
    case O_RANK_MIN:
        o->rank_set |= 1;
        if (cli_parse_i64("--rank-min", arg, 0, INT64_MAX / 2, &o->filter.rank_min)) return -1;
        return 1;
    case O_RANK_MAX:
        o->rank_set |= 2;
        if (cli_parse_i64("--rank-max", arg, 1, INT64_MAX / 2, &o->filter.rank_max)) return -1;
        return 1;
    case O_FORMAT:
        if (!strcmp(arg, "ids")) o->format = FMT_IDS;
        else if (!strcmp(arg, "st")) o->format = FMT_ST;
        else if (!strcmp(arg, "tevatron")) o->format = FMT_TEVATRON;
        else {
            cli_usage_error("--format '%s': expected ids, st or tevatron", arg);
            return -1;
        }
        return 1;
    case O_OUT: o->out = arg; return 1;
    case O_OUT_INDEX: o->out_index = arg; return 1;
    case O_OUT_SCORE: o->out_score = arg; return 1;
    case O_OUT_POS: o->out_positive_score = arg; return 1;
    case O_FORCE: o->force = 1; return 1;
    case O_QUIET: o->quiet = 1; return 1;
    case O_BACKEND:
        if (!strcmp(arg, "auto")) o->backend = NS_BACKEND_AUTO;
        else if (!strcmp(arg, "cpu")) o->backend = NS_BACKEND_CPU;
        else if (!strcmp(arg, "cuda")) o->backend = NS_BACKEND_CUDA;
        else {
            cli_usage_error("--backend '%s': expected auto, cpu or cuda", arg);
            return -1;
        }
        return 1;
    case O_THREADS:
        if (cli_parse_i64("--threads", arg, 0, 4096, &v)) return -1;
        o->threads = (int)v;
        return 1;
    case O_QUERY_IDS: o->query_ids = arg; return 1;
    case O_CORPUS_IDS: o->corpus_ids = arg; return 1;
    case O_QRELS: o->qrels = arg; return 1;
    case O_POSITIVES: o->positives = arg; return 1;
    case O_PAIRED: o->paired = 1; return 1;
    case O_GUIDE_MARGIN:
    case O_GUIDE_REL:
        if (o->guide_set) {
            cli_usage_error("--guide-margin and --guide-rel-margin exclude each other");
            return -1;
        }
        o->guide_set = 1;
        o->filter.rules |= c == O_GUIDE_MARGIN ? NS_FILTER_GUIDE : NS_FILTER_GUIDE_REL;
        return cli_parse_f32(c == O_GUIDE_MARGIN ? "--guide-margin" : "--guide-rel-margin", arg,
                             &o->filter.guide_margin)
                   ? -1
                   : 1;
    default: return 0;
    }
}

/* Checks that need every option; C is the candidates per query. Returns 0 or CLI_USAGE. */
static int stage_check(stage_opts *o, int64_t C_hint, int mine) {
    int npos = !!o->qrels + !!o->positives + !!o->paired;
    if (npos > 1) return cli_usage_error("--qrels, --positives and --paired exclude each other");
    if (!o->out && !o->out_index && !o->out_score && !o->out_positive_score)
        return cli_usage_error("nothing to write: pass --out, --out-index, --out-score or "
                               "--out-positive-score");
    const char *outs[4] = {o->out, o->out_index, o->out_score, o->out_positive_score};
    for (int i = 0; i < 4; i++)
        for (int j = i + 1; j < 4; j++)
            if (outs[i] && outs[j] && !strcmp(outs[i], outs[j]))
                return cli_usage_error("the same file '%s' is given for two outputs", outs[i]);
    int needs_pos = (o->filter.rules & (NS_FILTER_MARGIN | NS_FILTER_REL_MARGIN)) ||
                    o->sampler.strategy == NS_SAMPLE_SIMANS;
    if (mine && o->guide_set && npos == 0)
        return cli_usage_error("--guide-margin and --guide-rel-margin need each query's positive "
                               "(g+): pass --qrels, --positives or --paired");
    if (mine && needs_pos && npos == 0)
        return cli_usage_error("--margin, --rel-margin and --sampler simans need each query's "
                                   "positive score: pass --qrels, --positives or --paired");
    if (o->format == FMT_ST && o->out && npos == 0)
        return cli_usage_error("--format st writes (query, positive, negatives...) rows: pass "
                               "--qrels, --positives or --paired");
    if (o->rank_set) {
        o->filter.rules |= NS_FILTER_RANK;
        if (!(o->rank_set & 2)) o->filter.rank_max = C_hint > 0 ? C_hint : INT64_MAX / 2;
        if (o->filter.rank_min >= o->filter.rank_max)
            return cli_usage_error("--rank-min (%lld) must be below --rank-max (%lld)",
                                   (long long)o->filter.rank_min, (long long)o->filter.rank_max);
    }
    if (o->same_id && npos) o->filter.rules |= NS_FILTER_SAME_ID;
    return 0;
}

/* ------------------------------------------------------------------ the shared stage */

typedef struct {
    stage_opts *o;
    ns_context *ctx;
    cli_ids qids, cids;
    cli_lists pos;     /* positives per query row (corpus rows); ids NULL when none given */
    int has_pos;
    int64_t B, C;      /* queries, candidates per query */
    cli_output out, out_index, out_score, out_pos;
    /* per block, host */
    int64_t *index, *count;
    float *score;
    /* totals for the summary */
    ns_filter_counts counts;
    int64_t short_rows, no_pos_rows, jsonl_rows;
} stage;

static int stage_open_outputs(stage *s) {
    stage_opts *o = s->o;
    if ((o->out && cli_output_open(&s->out, o->out, o->force)) ||
        (o->out_index && cli_output_open(&s->out_index, o->out_index, o->force)) ||
        (o->out_score && cli_output_open(&s->out_score, o->out_score, o->force)) ||
        (o->out_positive_score && cli_output_open(&s->out_pos, o->out_positive_score, o->force)))
        return -1;
    return 0;
}

static int stage_write_headers(stage *s) {
    if (s->out_index.f && cli_npy_write_header(s->out_index.f, "<i8", s->B, s->o->m)) return -1;
    if (s->out_score.f && cli_npy_write_header(s->out_score.f, "<f4", s->B, s->o->m)) return -1;
    if (s->out_pos.f && cli_npy_write_header(s->out_pos.f, "<f4", s->B, 0)) return -1;
    return 0;
}

static void stage_abort(stage *s) {
    cli_output_abort(&s->out);
    cli_output_abort(&s->out_index);
    cli_output_abort(&s->out_score);
    cli_output_abort(&s->out_pos);
}

static int stage_commit(stage *s) {
    if (cli_output_commit(&s->out) || cli_output_commit(&s->out_index) ||
        cli_output_commit(&s->out_score) || cli_output_commit(&s->out_pos)) {
        stage_abort(s);
        return -1;
    }
    return 0;
}

/* Loads ids and positives. qrows/crows: rows of queries and corpus (-1: unknown). */
static int stage_load_positives(stage *s, int64_t qrows, int64_t crows) {
    stage_opts *o = s->o;
    if (cli_ids_load(&s->qids, o->query_ids, "query", qrows)) return -1;
    if (cli_ids_load(&s->cids, o->corpus_ids, "corpus", crows < 0 && !o->corpus_ids ? INT64_MAX / 4 : crows))
        return -1;
    s->has_pos = 1;
    if (o->qrels) return cli_qrels_load(o->qrels, &s->qids, &s->cids, &s->pos);
    if (o->positives) return cli_positives_load(o->positives, &s->cids, qrows, &s->pos);
    if (o->paired) return cli_lists_paired(qrows, s->cids.rows, &s->pos);
    s->has_pos = 0;
    return 0;
}

static void write_json_float(FILE *f, float x) {
    if (isfinite(x)) fprintf(f, "%.7g", (double)x);
    else fputs("null", f);
}

/* Writes the id as a JSON string always (Tevatron's docids are strings). */
static void write_json_id_string(FILE *f, const cli_ids *ids, int64_t r) {
    if (ids->path) cli_json_string(f, ids->id[r], strlen(ids->id[r]));
    else fprintf(f, "\"%lld\"", (long long)r);
}

static void write_jsonl_rows(stage *s, int64_t q, const int64_t *idx, const float *sc, int64_t n) {
    FILE *f = s->out.f;
    const stage_opts *o = s->o;
    int64_t pb = s->has_pos ? s->pos.offsets[q] : 0, pe = s->has_pos ? s->pos.offsets[q + 1] : 0;
    if (o->format == FMT_TEVATRON) {
        fputs("{\"query_id\": ", f);
        write_json_id_string(f, &s->qids, q);
        fputs(", \"positive_passages\": [", f);
        for (int64_t p = pb; p < pe; p++) {
            fputs(p > pb ? ", {\"docid\": " : "{\"docid\": ", f);
            write_json_id_string(f, &s->cids, s->pos.ids[p]);
            fputc('}', f);
        }
        fputs("], \"negative_passages\": [", f);
        for (int64_t j = 0; j < n; j++) {
            fputs(j ? ", {\"docid\": " : "{\"docid\": ", f);
            write_json_id_string(f, &s->cids, idx[j]);
            fputs(", \"score\": ", f);
            write_json_float(f, sc[j]);
            fputc('}', f);
        }
        fputs("]}\n", f);
        s->jsonl_rows++;
        return;
    }
    if (o->format == FMT_ST && n < o->m) return; /* n-tuples need every column */
    /* One row per (query, positive); a query without positives gets "positive": null. */
    int64_t rows = s->has_pos ? pe - pb : 1;
    for (int64_t r = 0; r < rows; r++) {
        fputs("{\"query\": ", f);
        cli_ids_write_json(f, &s->qids, q);
        fputs(", \"positive\": ", f);
        if (s->has_pos) cli_ids_write_json(f, &s->cids, s->pos.ids[pb + r]);
        else fputs("null", f);
        if (o->format == FMT_ST) {
            for (int64_t j = 0; j < n; j++) {
                fprintf(f, ", \"negative_%lld\": ", (long long)j + 1);
                cli_ids_write_json(f, &s->cids, idx[j]);
            }
        } else {
            fputs(", \"negatives\": [", f);
            for (int64_t j = 0; j < n; j++) {
                if (j) fputs(", ", f);
                cli_ids_write_json(f, &s->cids, idx[j]);
            }
            fputs("], \"scores\": [", f);
            for (int64_t j = 0; j < n; j++) {
                if (j) fputs(", ", f);
                write_json_float(f, sc[j]);
            }
            fputc(']', f);
        }
        fputs("}\n", f);
        s->jsonl_rows++;
    }
}

static int check_lib(ns_context *ctx, ns_status st, const char *what) {
    if (st == NS_OK) return 0;
    cli_error("%s failed: %s (%s)", what, ns_last_error(ctx), ns_status_string(st));
    return -1;
}

/* Filter → sample → write for queries [b0, b0+nb). cand_id/cand_score/pos_score are the block's
 * host arrays (nb×C, nb×C, nb). valid[i] = 0 marks a query without positive (blank output). */
static int stage_block(stage *s, int64_t b0, int64_t nb, const int64_t *cand_id,
                       const float *cand_score, const float *pos_score, const uint8_t *valid,
                       const float *guide_score, const float *guide_pos) {
    ns_context *ctx = s->ctx;
    const stage_opts *o = s->o;
    int64_t C = s->C, m = o->m;
    int rc = -1;
    void *d_id = NULL, *d_sc = NULL, *d_ps = NULL, *d_poff = NULL, *d_pids = NULL,
         *d_keep = NULL, *d_idx = NULL, *d_osc = NULL, *d_cnt = NULL, *d_gs = NULL, *d_gp = NULL;
    /* The block's positive lists, rebased so offsets[0] == 0. */
    int64_t *poff = NULL;
    ns_id_lists plist = {0};
    if (s->has_pos && (o->filter.rules & NS_FILTER_SAME_ID)) {
        poff = malloc((size_t)(nb + 1) * 8);
        if (!poff) goto oom;
        for (int64_t i = 0; i <= nb; i++) poff[i] = s->pos.offsets[b0 + i] - s->pos.offsets[b0];
    }
    size_t nidx = (size_t)(nb * C);
    int64_t npos = poff ? poff[nb] : 0;
    d_id = cli_dev_put(ctx, cand_id, nidx * 8);
    d_sc = cli_dev_put(ctx, cand_score, nidx * 4);
    d_ps = cli_dev_put(ctx, pos_score, (size_t)nb * 4);
    d_poff = poff ? cli_dev_put(ctx, poff, (size_t)(nb + 1) * 8) : NULL;
    d_pids = poff ? cli_dev_put(ctx, s->pos.ids + s->pos.offsets[b0], (size_t)(npos ? npos : 1) * 8)
                  : NULL;
    d_keep = o->filter.rules ? cli_dev_alloc(ctx, nidx) : NULL;
    d_idx = cli_dev_alloc(ctx, (size_t)(nb * m) * 8);
    d_osc = cli_dev_alloc(ctx, (size_t)(nb * m) * 4);
    d_cnt = cli_dev_alloc(ctx, (size_t)nb * 8);
    if (guide_score) {
        d_gs = cli_dev_put(ctx, guide_score, nidx * 4);
        d_gp = cli_dev_put(ctx, guide_pos, (size_t)nb * 4);
        if (!d_gs || !d_gp) goto done;
    }
    if (!d_id || !d_sc || !d_ps || (poff && (!d_poff || !d_pids)) ||
        (o->filter.rules && !d_keep) || !d_idx || !d_osc || !d_cnt)
        goto done;
    plist.offsets = d_poff;
    plist.ids = d_pids;
    plist.queries = nb;
    ns_candidates cand = {0};
    cand.queries = nb;
    cand.per_query = C;
    cand.id = d_id;
    cand.score = d_sc;
    cand.positive_score = d_ps;
    cand.positive_id = poff ? &plist : NULL;
    cand.query_offset = b0;
    cand.guide_score = d_gs;
    cand.guide_positive_score = d_gp;
    if (o->filter.rules) {
        ns_filter_counts fc;
        if (check_lib(ctx, ns_filter(ctx, &cand, &o->filter, d_keep, &fc), "ns_filter")) goto done;
        s->counts.examined += fc.examined;
        s->counts.kept += fc.kept;
        s->counts.removed += fc.removed;
        s->counts.empty += fc.empty;
        s->counts.same_id += fc.same_id;
        s->counts.max_score += fc.max_score;
        s->counts.min_score += fc.min_score;
        s->counts.margin += fc.margin;
        s->counts.rel_margin += fc.rel_margin;
        s->counts.rank += fc.rank;
        s->counts.guide += fc.guide;
    }
    if (check_lib(ctx, ns_sample(ctx, &cand, d_keep, &o->sampler, m, d_idx, d_osc, d_cnt),
                  "ns_sample"))
        goto done;
    if (cli_dev_get(ctx, s->index, d_idx, (size_t)(nb * m) * 8) ||
        cli_dev_get(ctx, s->score, d_osc, (size_t)(nb * m) * 4) ||
        cli_dev_get(ctx, s->count, d_cnt, (size_t)nb * 8))
        goto done;
    for (int64_t i = 0; i < nb; i++) {
        int64_t *idx = s->index + i * m;
        float *sc = s->score + i * m;
        if (!valid[i]) {
            for (int64_t j = 0; j < m; j++) idx[j] = -1, sc[j] = NAN;
            s->count[i] = 0;
            s->no_pos_rows++;
            continue;
        }
        if (s->count[i] < m) s->short_rows++;
        if (s->out.f) write_jsonl_rows(s, b0 + i, idx, sc, s->count[i]);
    }
    if (s->out_index.f) fwrite(s->index, 8, (size_t)(nb * m), s->out_index.f);
    if (s->out_score.f) fwrite(s->score, 4, (size_t)(nb * m), s->out_score.f);
    if (s->out_pos.f)
        for (int64_t i = 0; i < nb; i++) {
            float v = valid[i] && s->has_pos ? pos_score[i] : NAN;
            fwrite(&v, 4, 1, s->out_pos.f);
        }
    rc = 0;
    goto done;
oom:
    cli_error("out of memory");
done:
    cli_dev_free(ctx, d_id, cand_id);
    cli_dev_free(ctx, d_sc, cand_score);
    cli_dev_free(ctx, d_ps, pos_score);
    cli_dev_free(ctx, d_poff, poff);
    if (poff) cli_dev_free(ctx, d_pids, s->pos.ids + s->pos.offsets[b0]);
    cli_dev_free(ctx, d_keep, NULL);
    cli_dev_free(ctx, d_idx, NULL);
    cli_dev_free(ctx, d_osc, NULL);
    cli_dev_free(ctx, d_cnt, NULL);
    cli_dev_free(ctx, d_gs, guide_score);
    cli_dev_free(ctx, d_gp, guide_pos);
    free(poff);
    return rc;
}

static int stage_alloc(stage *s, int64_t nb) {
    s->index = malloc((size_t)(nb * s->o->m) * 8);
    s->score = malloc((size_t)(nb * s->o->m) * 4);
    s->count = malloc((size_t)nb * 8);
    if (!s->index || !s->score || !s->count) {
        cli_error("out of memory for a block of %lld queries", (long long)nb);
        return -1;
    }
    return 0;
}

static void stage_free(stage *s) {
    free(s->index);
    free(s->score);
    free(s->count);
    cli_lists_free(&s->pos);
    cli_ids_free(&s->qids);
    cli_ids_free(&s->cids);
    if (s->ctx) ns_context_destroy(s->ctx);
}

static int stage_context(stage *s) {
    ns_context_options co = NS_CONTEXT_OPTIONS_INIT;
    co.backend = s->o->backend;
    co.threads = s->o->threads;
    ns_status st = ns_context_create(&s->ctx, &co);
    if (st != NS_OK) {
        cli_error("cannot create a %s context: %s", s->o->backend == NS_BACKEND_CUDA ? "CUDA" :
                  s->o->backend == NS_BACKEND_CPU ? "CPU" : "auto", ns_last_error(NULL));
        return -1;
    }
    return 0;
}

static void stage_summary(const stage *s, const char *what, double secs) {
    if (s->o->quiet) return;
    fprintf(stderr, "%s: %lld queries, %lld candidates each, %s in %.2fs\n", cli_command,
            (long long)s->B, (long long)s->C, what, secs);
    if (s->o->filter.rules) {
        const ns_filter_counts *c = &s->counts;
        fprintf(stderr,
                "%s: filter kept %lld of %lld candidates (removed: same-id %lld, max-score %lld, "
                "min-score %lld, margin %lld, rel-margin %lld, rank %lld, guide %lld; empty "
                "slots %lld)\n",
                cli_command, (long long)c->kept, (long long)c->examined, (long long)c->same_id,
                (long long)c->max_score, (long long)c->min_score, (long long)c->margin,
                (long long)c->rel_margin, (long long)c->rank, (long long)c->guide,
                (long long)c->empty);
    }
    if (s->short_rows)
        fprintf(stderr, "%s: %lld queries have fewer than %lld negatives (padded with -1)%s\n",
                cli_command, (long long)s->short_rows, (long long)s->o->m,
                s->o->format == FMT_ST && s->o->out ? "; left out of the st JSONL" : "");
    if (s->no_pos_rows)
        fprintf(stderr, "%s: %lld queries have no positive and were skipped (-1 rows)\n",
                cli_command, (long long)s->no_pos_rows);
    if (s->o->out)
        fprintf(stderr, "%s: wrote %lld JSONL rows to %s\n", cli_command,
                (long long)s->jsonl_rows, s->o->out);
}

/* ------------------------------------------------------------------ mine */

static const char MINE_HELP[] =
    "usage: negsamp mine --queries Q.npy --corpus C.npy [options]\n"
    "\n"
    "Mines hard negatives: exact top-k corpus rows per query (excluding its positives), the\n"
    "false-negative filter, then m negatives per query by the sampler.\n"
    "\n"
    "Inputs:\n"
    "  --queries FILE        query embeddings: .npy (<f4/<f2, C order, memory-mapped) or .fvecs\n"
    "  --corpus FILE         corpus embeddings, same formats; same dimension as the queries\n"
    "  -k, --k K             candidates mined per query (default 100, at most the corpus; >= m)\n"
    "  --cosine              L2-normalise queries and corpus rows (cosine scores)\n"
    "  --scale X             score = X * q.c (default 1)\n"
    "  --exclude-self        never return corpus row i for query row i (queries = corpus)\n"
    "  --batch N             queries per block (default 16384; memory O(N * k))\n"
    "  --guide-queries FILE, --guide-corpus FILE  a guide model's embeddings of the same rows,\n"
    "                        for --guide-margin / --guide-rel-margin (cosine with --cosine)\n";

static const char MINE_EXAMPLES[] =
    "\nExamples:\n"
    "  negsamp mine --queries q.npy --corpus c.npy --qrels qrels.tsv --query-ids q.txt \\\n"
    "      --corpus-ids c.txt -k 100 -m 8 --rel-margin 0.05 --out negs.jsonl --format st\n"
    "  negsamp mine --queries q.fvecs --corpus c.fvecs --paired --cosine -k 200 \\\n"
    "      --sampler simans --simans-a 20 -m 15 --out-index idx.npy --out-score score.npy\n"
    "  negsamp mine --queries c.npy --corpus c.npy --exclude-self -k 50 --sampler uniform \\\n"
    "      --out neighbours.jsonl\n";

/* s⁺ of query row q: the lowest score among its positives; 0 when it has none. */
static float positive_score(const cli_embeddings *Q, const cli_embeddings *C, const cli_lists *pos,
                            int64_t q, int cosine, float scale, float *qrow, float *crow) {
    if (!pos->ids || pos->offsets[q] == pos->offsets[q + 1]) return 0.f;
    int64_t d = Q->m.cols;
    cli_embeddings_row(Q, q, qrow);
    double qn = 0;
    for (int64_t c = 0; c < d; c++) qn += (double)qrow[c] * qrow[c];
    float best = INFINITY;
    for (int64_t p = pos->offsets[q]; p < pos->offsets[q + 1]; p++) {
        cli_embeddings_row(C, pos->ids[p], crow);
        double dot = 0, cn = 0;
        for (int64_t c = 0; c < d; c++) dot += (double)qrow[c] * crow[c], cn += (double)crow[c] * crow[c];
        if (cosine) dot = (qn > 0 && cn > 0) ? dot / sqrt(qn * cn) : 0;
        float sc = (float)(scale * dot);
        if (sc < best) best = sc;
    }
    return best;
}

static double dot_rows(const float *a, const float *b, int64_t d, int cosine) {
    double dot = 0, na = 0, nb = 0;
    for (int64_t c = 0; c < d; c++) dot += (double)a[c] * b[c], na += (double)a[c] * a[c],
                                    nb += (double)b[c] * b[c];
    if (cosine) dot = (na > 0 && nb > 0) ? dot / sqrt(na * nb) : 0;
    return dot;
}

/* Guide-model scores of the block's candidates (g, nb × k; 0 at empty slots) and g+ (the lowest
 * guide score among each query's positives; 0 without positive). */
static void guide_scores(const cli_embeddings *GQ, const cli_embeddings *GC, const cli_lists *pos,
                         int64_t b0, int64_t nb, const int64_t *cand, int64_t k, int cosine,
                         float *g, float *gp) {
    int64_t d = GQ->m.cols;
#pragma omp parallel
    {
        float *qr = malloc((size_t)d * 4), *cr = malloc((size_t)d * 4);
#pragma omp for schedule(dynamic, 16)
        for (int64_t i = 0; i < nb; i++) {
            if (!qr || !cr) continue;
            cli_embeddings_row(GQ, b0 + i, qr);
            for (int64_t j = 0; j < k; j++) {
                int64_t id = cand[i * k + j];
                if (id < 0) {
                    g[i * k + j] = 0.f;
                    continue;
                }
                cli_embeddings_row(GC, id, cr);
                g[i * k + j] = (float)dot_rows(qr, cr, d, cosine);
            }
            float best = 0.f;
            int64_t pb = pos->ids ? pos->offsets[b0 + i] : 0, pe = pos->ids ? pos->offsets[b0 + i + 1] : 0;
            for (int64_t p = pb; p < pe; p++) {
                cli_embeddings_row(GC, pos->ids[p], cr);
                float v = (float)dot_rows(qr, cr, d, cosine);
                if (p == pb || v < best) best = v;
            }
            gp[i] = best;
        }
        free(qr);
        free(cr);
    }
}

int cli_cmd_mine(int argc, char **argv) {
    static const struct option longopts[] = {
        STAGE_LONG_OPTIONS,
        {"queries", required_argument, 0, O_QUERIES},
        {"corpus", required_argument, 0, O_CORPUS},
        {"k", required_argument, 0, O_K},
        {"cosine", no_argument, 0, O_COSINE},
        {"scale", required_argument, 0, O_SCALE},
        {"exclude-self", no_argument, 0, O_EXCLUDE_SELF},
        {"batch", required_argument, 0, O_BATCH},
        {"guide-queries", required_argument, 0, O_GUIDE_QUERIES},
        {"guide-corpus", required_argument, 0, O_GUIDE_CORPUS},
        {0, 0, 0, 0}};
    stage_opts o;
    stage_defaults(&o);
    const char *qpath = NULL, *cpath = NULL, *gqpath = NULL, *gcpath = NULL;
    int64_t k = 100, batch = 16384;
    int k_set = 0, cosine = 0, exclude_self = 0;
    float scale = 1.f;
    opterr = 0;
    optind = 1;
    int c;
    while ((c = getopt_long(argc, argv, ":hm:k:", longopts, NULL)) != -1) {
        int r = stage_option(&o, c, optarg);
        if (r < 0) return CLI_USAGE;
        if (r > 0) continue;
        switch (c) {
        case O_HELP:
            fputs(MINE_HELP, stdout);
            fputs("\n", stdout);
            fputs(STAGE_HELP, stdout);
            fputs(MINE_EXAMPLES, stdout);
            return CLI_OK;
        case O_QUERIES: qpath = optarg; break;
        case O_CORPUS: cpath = optarg; break;
        case O_K:
            if (cli_parse_i64("-k", optarg, 1, NS_MAX_K, &k)) return CLI_USAGE;
            k_set = 1;
            break;
        case O_COSINE: cosine = 1; break;
        case O_SCALE:
            if (cli_parse_f32("--scale", optarg, &scale)) return CLI_USAGE;
            break;
        case O_EXCLUDE_SELF: exclude_self = 1; break;
        case O_GUIDE_QUERIES: gqpath = optarg; break;
        case O_GUIDE_CORPUS: gcpath = optarg; break;
        case O_BATCH:
            if (cli_parse_i64("--batch", optarg, 1, INT64_MAX / 2, &batch)) return CLI_USAGE;
            break;
        case ':': return cli_usage_error("option '%s' needs a value", argv[optind - 1]);
        default: return cli_usage_error("unknown option '%s'", argv[optind - 1]);
        }
    }
    if (optind < argc) return cli_usage_error("unexpected argument '%s'", argv[optind]);
    if (!qpath || !cpath) return cli_usage_error("--queries and --corpus are required");
    if (!gqpath != !gcpath)
        return cli_usage_error("--guide-queries and --guide-corpus go together");
    if (o.guide_set && !gqpath)
        return cli_usage_error("--guide-margin/--guide-rel-margin need the guide model's "
                               "embeddings: --guide-queries and --guide-corpus");
    if (k_set && k < o.m)
        return cli_usage_error("-k (%lld) must be at least --negatives (%lld)", (long long)k,
                               (long long)o.m);
    if (!k_set && k < o.m) k = o.m;
    int u = stage_check(&o, k, 1);
    if (u) return u;

    stage s;
    memset(&s, 0, sizeof s);
    s.o = &o;
    cli_embeddings Q = {0}, C = {0}, GQ = {0}, GC = {0};
    float *gsc = NULL, *gps = NULL;
    cli_lists excl = {0};
    float *qrow = NULL, *crow = NULL, *ps = NULL;
    uint8_t *valid = NULL;
    int64_t *eoff = NULL;
    int64_t *cand_id = NULL;
    float *cand_sc = NULL;
    void *d_q = NULL, *d_eoff = NULL, *d_eids = NULL, *d_ci = NULL, *d_cs = NULL;
    int rc = CLI_RUNTIME;

    cli_install_signal_cleanup();
    if (stage_open_outputs(&s)) goto fail;
    if (cli_embeddings_load(qpath, &Q) || cli_embeddings_load(cpath, &C)) goto fail;
    if (Q.m.cols != C.m.cols) {
        cli_error("dimension mismatch: %s has %lld columns but %s has %lld", qpath,
                  (long long)Q.m.cols, cpath, (long long)C.m.cols);
        goto fail;
    }
    if (gqpath) {
        if (cli_embeddings_load(gqpath, &GQ) || cli_embeddings_load(gcpath, &GC)) goto fail;
        if (GQ.m.rows != Q.m.rows || GC.m.rows != C.m.rows || GQ.m.cols != GC.m.cols) {
            cli_error("guide embeddings: %s is %lld x %lld and %s is %lld x %lld; expected %lld "
                      "and %lld rows (as %s and %s) of one dimension",
                      gqpath, (long long)GQ.m.rows, (long long)GQ.m.cols, gcpath,
                      (long long)GC.m.rows, (long long)GC.m.cols, (long long)Q.m.rows,
                      (long long)C.m.rows, qpath, cpath);
            goto fail;
        }
    }
    if (exclude_self && Q.m.rows > C.m.rows) {
        cli_error("--exclude-self: %s has %lld rows, more than the corpus %s (%lld)", qpath,
                  (long long)Q.m.rows, cpath, (long long)C.m.rows);
        goto fail;
    }
    if (k > C.m.rows) {
        if (k_set && !o.quiet)
            fprintf(stderr, "%s: -k %lld is larger than the corpus; using k = %lld\n", cli_command,
                    (long long)k, (long long)C.m.rows);
        k = C.m.rows;
        if (k < o.m) {
            cli_error("the corpus %s has %lld rows, fewer than --negatives (%lld)", cpath,
                      (long long)C.m.rows, (long long)o.m);
            goto fail;
        }
        if ((o.filter.rules & NS_FILTER_RANK) && o.filter.rank_max > k && !(o.rank_set & 2))
            o.filter.rank_max = k;
    }
    s.B = Q.m.rows;
    s.C = k;
    if (stage_load_positives(&s, Q.m.rows, C.m.rows)) goto fail;
    if (stage_context(&s)) goto fail;
    if (cli_lists_with_self(o.same_id && s.has_pos ? &s.pos : NULL, s.B, exclude_self, &excl))
        goto fail;
    if (stage_write_headers(&s)) {
        cli_error("cannot write the .npy headers");
        goto fail;
    }

    int64_t nb_max = batch < s.B ? batch : s.B;
    if (stage_alloc(&s, nb_max)) goto fail;
    qrow = malloc((size_t)Q.m.cols * 4);
    crow = malloc((size_t)Q.m.cols * 4);
    ps = malloc((size_t)nb_max * 4);
    valid = malloc((size_t)nb_max);
    eoff = malloc((size_t)(nb_max + 1) * 8);
    cand_id = malloc((size_t)(nb_max * k) * 8);
    cand_sc = malloc((size_t)(nb_max * k) * 4);
    if (gqpath) {
        gsc = malloc((size_t)(nb_max * k) * 4);
        gps = malloc((size_t)nb_max * 4);
    }
    if (!qrow || !crow || !ps || !valid || !eoff || !cand_id || !cand_sc ||
        (gqpath && (!gsc || !gps))) {
        cli_error("out of memory for a block of %lld queries × %lld candidates", (long long)nb_max,
                  (long long)k);
        goto fail;
    }
    int64_t qld = Q.m.ld ? Q.m.ld : Q.m.cols;
    ns_matrix cm = C.m;
    if (ns_context_backend(s.ctx) == NS_BACKEND_CUDA) {
        /* The corpus stays in host memory (a memory map): ns_mine_topk streams it through
         * pinned tiles, so it may be larger than the device. Query blocks are copied over. */
        d_ci = cli_dev_alloc(s.ctx, (size_t)(nb_max * k) * 8);
        d_cs = cli_dev_alloc(s.ctx, (size_t)(nb_max * k) * 4);
        if (!d_ci || !d_cs) goto fail;
    } else {
        d_ci = cand_id;
        d_cs = cand_sc;
    }

    cli_progress prog;
    cli_progress_init(&prog, "mining", s.B, o.quiet);
    double t0 = cli_now();
    for (int64_t b0 = 0; b0 < s.B; b0 += batch) {
        int64_t nb = s.B - b0 < batch ? s.B - b0 : batch;
        size_t qesz = Q.m.dtype == NS_F32 ? 4 : 2;
        ns_matrix qm = Q.m;
        const void *qhost = (const char *)Q.m.data + (size_t)(b0 * qld) * qesz;
        qm.rows = nb;
        d_q = cli_dev_put(s.ctx, qhost, (size_t)(nb * qld) * qesz);
        for (int64_t i = 0; i <= nb; i++) eoff[i] = excl.offsets[b0 + i] - excl.offsets[b0];
        int64_t ne = eoff[nb];
        d_eoff = cli_dev_put(s.ctx, eoff, (size_t)(nb + 1) * 8);
        d_eids = cli_dev_put(s.ctx, excl.ids + excl.offsets[b0], (size_t)(ne ? ne : 1) * 8);
        if (!d_q || !d_eoff || !d_eids) goto fail;
        qm.data = d_q;
        ns_id_lists el = {d_eoff, d_eids, nb};
        ns_mine_options mo = NS_MINE_OPTIONS_INIT;
        mo.scale = scale;
        mo.flags = cosine ? NS_NORMALIZE : 0u;
        mo.exclude = ne ? &el : NULL;
        mo.progress = cli_progress_update;
        mo.progress_user = &prog;
        prog.base = b0;
        prog.span = nb;
        ns_status st = ns_mine_topk(s.ctx, qm, cm, k, &mo, d_ci, d_cs);
        if (st != NS_OK) {
            cli_error("mining %s against %s failed: %s (%s)", qpath, cpath, ns_last_error(s.ctx),
                      ns_status_string(st));
            goto fail;
        }
        if (cli_dev_get(s.ctx, cand_id, d_ci, (size_t)(nb * k) * 8) ||
            cli_dev_get(s.ctx, cand_sc, d_cs, (size_t)(nb * k) * 4))
            goto fail;
        cli_dev_free(s.ctx, d_q, qhost);
        cli_dev_free(s.ctx, d_eoff, eoff);
        cli_dev_free(s.ctx, d_eids, excl.ids + excl.offsets[b0]);
        d_q = d_eoff = d_eids = NULL;
        for (int64_t i = 0; i < nb; i++) {
            int64_t q = b0 + i;
            valid[i] = !s.has_pos || s.pos.offsets[q] < s.pos.offsets[q + 1];
            ps[i] = s.has_pos ? positive_score(&Q, &C, &s.pos, q, cosine, scale, qrow, crow) : 0.f;
        }
        if (gqpath) {
            guide_scores(&GQ, &GC, &s.pos, b0, nb, cand_id, k, cosine, gsc, gps);
            for (int64_t i = 0; i < nb; i++)
                if (!valid[i]) gps[i] = 0.f;
        }
        if (stage_block(&s, b0, nb, cand_id, cand_sc, ps, valid, gsc, gps)) goto fail;
        prog.base = b0 + nb;
        prog.span = 0;
        cli_progress_update(1, 1, &prog);
    }
    cli_progress_finish(&prog);
    if (stage_commit(&s)) goto fail;
    stage_summary(&s, "mined, filtered and sampled", cli_now() - t0);
    rc = CLI_OK;
    goto done;
fail:
    stage_abort(&s);
done:
    if (s.ctx && ns_context_backend(s.ctx) == NS_BACKEND_CUDA) {
        cli_dev_free(s.ctx, d_ci, NULL);
        cli_dev_free(s.ctx, d_cs, NULL);
        cli_dev_free(s.ctx, d_q, NULL);
        cli_dev_free(s.ctx, d_eoff, NULL);
        cli_dev_free(s.ctx, d_eids, NULL);
    }
    free(qrow);
    free(crow);
    free(ps);
    free(valid);
    free(eoff);
    free(cand_id);
    free(cand_sc);
    cli_lists_free(&excl);
    stage_free(&s);
    cli_embeddings_free(&Q);
    cli_embeddings_free(&C);
    cli_embeddings_free(&GQ);
    cli_embeddings_free(&GC);
    free(gsc);
    free(gps);
    return rc;
}

/* ------------------------------------------------------------------ sample */

static const char SAMPLE_HELP[] =
    "usage: negsamp sample --candidates I.npy --scores S.npy [--positive-score P.npy] [options]\n"
    "\n"
    "Filters and samples negatives from precomputed candidates (e.g. 'negsamp mine --sampler top\n"
    "-m K --out-index I.npy --out-score S.npy --out-positive-score P.npy').\n"
    "\n"
    "Inputs:\n"
    "  --candidates FILE     int64 (or int32) queries x C candidate corpus rows, best first, -1 empty\n"
    "  --scores FILE         float32 (or float16) queries x C candidate scores\n"
    "  --positive-score FILE float32 s+ per query (needed by --margin, --rel-margin, simans)\n"
    "  --guide-scores FILE, --guide-positive-score FILE  a guide model's scores of the same\n"
    "                        candidates (queries x C) and g+ per query, for --guide-margin\n";

static const char SAMPLE_EXAMPLES[] =
    "\nExamples:\n"
    "  negsamp sample --candidates idx.npy --scores score.npy --positive-score pos.npy \\\n"
    "      --sampler simans --simans-a 2 -m 8 --seed 1 --out-index neg.npy\n"
    "  negsamp sample --candidates idx.npy --scores score.npy --qrels qrels.tsv \\\n"
    "      --rank-min 5 --sampler uniform --out negs.jsonl\n";

int cli_cmd_sample(int argc, char **argv) {
    static const struct option longopts[] = {
        STAGE_LONG_OPTIONS,
        {"candidates", required_argument, 0, O_CANDIDATES},
        {"scores", required_argument, 0, O_SCORES},
        {"positive-score", required_argument, 0, O_POSITIVE_SCORE},
        {"guide-scores", required_argument, 0, O_GUIDE_SCORES},
        {"guide-positive-score", required_argument, 0, O_GUIDE_POSITIVE_SCORE},
        {0, 0, 0, 0}};
    stage_opts o;
    stage_defaults(&o);
    const char *ipath = NULL, *spath = NULL, *ppath = NULL, *gspath = NULL, *gppath = NULL;
    opterr = 0;
    optind = 1;
    int c;
    while ((c = getopt_long(argc, argv, ":hm:", longopts, NULL)) != -1) {
        int r = stage_option(&o, c, optarg);
        if (r < 0) return CLI_USAGE;
        if (r > 0) continue;
        switch (c) {
        case O_HELP:
            fputs(SAMPLE_HELP, stdout);
            fputs("\n", stdout);
            fputs(STAGE_HELP, stdout);
            fputs(SAMPLE_EXAMPLES, stdout);
            return CLI_OK;
        case O_CANDIDATES: ipath = optarg; break;
        case O_SCORES: spath = optarg; break;
        case O_POSITIVE_SCORE: ppath = optarg; break;
        case O_GUIDE_SCORES: gspath = optarg; break;
        case O_GUIDE_POSITIVE_SCORE: gppath = optarg; break;
        case ':': return cli_usage_error("option '%s' needs a value", argv[optind - 1]);
        default: return cli_usage_error("unknown option '%s'", argv[optind - 1]);
        }
    }
    if (optind < argc) return cli_usage_error("unexpected argument '%s'", argv[optind]);
    if (!ipath || !spath) return cli_usage_error("--candidates and --scores are required");
    int needs_ps = (o.filter.rules & (NS_FILTER_MARGIN | NS_FILTER_REL_MARGIN)) ||
                   o.sampler.strategy == NS_SAMPLE_SIMANS;
    if (needs_ps && !ppath)
        return cli_usage_error("--margin, --rel-margin and --sampler simans need --positive-score");
    if (o.guide_set && (!gspath || !gppath))
        return cli_usage_error("--guide-margin/--guide-rel-margin need --guide-scores and "
                               "--guide-positive-score");
    int u = stage_check(&o, 0, 0);
    if (u) return u;

    stage s;
    memset(&s, 0, sizeof s);
    s.o = &o;
    cli_array I = {0}, S = {0}, P = {0}, G = {0}, GP = {0};
    float *ps = NULL;
    uint8_t *valid = NULL;
    int rc = CLI_RUNTIME;
    cli_install_signal_cleanup();
    if (stage_open_outputs(&s)) goto fail;
    if (cli_npy_read(ipath, &I) || cli_array_to_i64(ipath, &I)) goto fail;
    if (cli_npy_read(spath, &S) || cli_array_to_f32(spath, &S)) goto fail;
    if (S.shape[0] != I.shape[0] || S.shape[1] != I.shape[1]) {
        cli_error("shape mismatch: %s is %lld x %lld but %s is %lld x %lld", ipath,
                  (long long)I.shape[0], (long long)I.shape[1], spath, (long long)S.shape[0],
                  (long long)S.shape[1]);
        goto fail;
    }
    s.B = I.shape[0];
    s.C = I.shape[1];
    if (s.B < 1 || s.C < 1) {
        cli_error("%s: empty candidate matrix (%lld x %lld)", ipath, (long long)s.B, (long long)s.C);
        goto fail;
    }
    if (ppath) {
        if (cli_npy_read(ppath, &P) || cli_array_to_f32(ppath, &P)) goto fail;
        if (P.shape[0] * P.shape[1] != s.B) {
            cli_error("%s holds %lld values but %s has %lld queries (rows)", ppath,
                      (long long)(P.shape[0] * P.shape[1]), ipath, (long long)s.B);
            goto fail;
        }
    }
    if (gspath && o.guide_set) {
        if (cli_npy_read(gspath, &G) || cli_array_to_f32(gspath, &G)) goto fail;
        if (cli_npy_read(gppath, &GP) || cli_array_to_f32(gppath, &GP)) goto fail;
        if (G.shape[0] != s.B || G.shape[1] != s.C) {
            cli_error("shape mismatch: %s is %lld x %lld but %s is %lld x %lld", gspath,
                      (long long)G.shape[0], (long long)G.shape[1], ipath, (long long)s.B,
                      (long long)s.C);
            goto fail;
        }
        if (GP.shape[0] * GP.shape[1] != s.B) {
            cli_error("%s holds %lld values but %s has %lld queries (rows)", gppath,
                      (long long)(GP.shape[0] * GP.shape[1]), ipath, (long long)s.B);
            goto fail;
        }
        /* Empty slots carry no guide score: give them a finite one (never kept anyway). */
        for (int64_t t = 0; t < s.B * s.C; t++)
            if (((const int64_t *)I.data)[t] < 0) ((float *)G.data)[t] = 0.f;
    }
    if ((o.filter.rules & NS_FILTER_RANK) && !(o.rank_set & 2)) o.filter.rank_max = s.C;
    if (stage_load_positives(&s, s.B, -1)) goto fail;
    /* Candidate ids must name corpus rows the JSONL can print. */
    const int64_t *ids = I.data;
    for (int64_t i = 0; i < s.B * s.C; i++)
        if (ids[i] < -1 || (ids[i] >= 0 && s.cids.path && ids[i] >= s.cids.rows)) {
            cli_error("%s: row %lld, column %lld: candidate %lld is not a corpus row%s", ipath,
                      (long long)(i / s.C), (long long)(i % s.C), (long long)ids[i],
                      s.cids.path ? " of --corpus-ids" : " (-1 marks an empty slot)");
            goto fail;
        }
    if (o.m > s.C && !o.quiet)
        fprintf(stderr, "%s: --negatives %lld is more than the %lld candidates per query\n",
                cli_command, (long long)o.m, (long long)s.C);
    if (stage_context(&s) || stage_write_headers(&s) || stage_alloc(&s, s.B)) goto fail;
    ps = calloc((size_t)s.B, 4);
    valid = malloc((size_t)s.B);
    if (!ps || !valid) {
        cli_error("out of memory");
        goto fail;
    }
    for (int64_t i = 0; i < s.B; i++) {
        valid[i] = 1;
        if (P.data) {
            ps[i] = ((const float *)P.data)[i];
            if (!isfinite(ps[i])) valid[i] = 0; /* NaN: the query had no positive */
        }
        if (s.has_pos && s.pos.offsets[i] == s.pos.offsets[i + 1]) valid[i] = 0;
        if (!valid[i]) ps[i] = 0.f;
        if (GP.data && !valid[i]) ((float *)GP.data)[i] = 0.f;
    }
    double t0 = cli_now();
    if (stage_block(&s, 0, s.B, I.data, S.data, ps, valid, G.data, GP.data)) goto fail;
    if (stage_commit(&s)) goto fail;
    stage_summary(&s, "filtered and sampled", cli_now() - t0);
    rc = CLI_OK;
    goto done;
fail:
    stage_abort(&s);
done:
    free(ps);
    free(valid);
    free(I.data);
    free(S.data);
    free(P.data);
    free(G.data);
    free(GP.data);
    stage_free(&s);
    return rc;
}
