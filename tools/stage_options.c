/* The options of the filter → sample → write stage: defaults, values, checks, help. */
#define _GNU_SOURCE
#include "stage.h"

#include <math.h>
#include <string.h>

const char STAGE_HELP[] =
    "Positives (the same-id rule, s+ for margins and SimANS, JSONL 'positive'):\n"
    "  --qrels FILE          BEIR qrels TSV: query-id, corpus-id, score (header optional;\n"
    "                        score <= 0 is not a positive; TREC's 4 columns accepted)\n"
    "  --positives FILE      line i lists the corpus ids of query row i's positives\n"
    "  --paired              query row i's positive is corpus row i\n"
    "  --query-ids FILE      one id per line, line i = query row i (default: row numbers)\n"
    "  --corpus-ids FILE     one id per line, line i = corpus row i (default: row numbers)\n"
    "                        (a UTF-8 BOM, CRLF and spaces around ids are not part of them)\n"
    "  --skip-unknown-ids    skip qrels lines (positives) whose ids are not in the id files\n"
    "                        (or not row numbers), and report how many, instead of failing:\n"
    "                        mines a subset of a BEIR query set\n"
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
    "Random negatives (corpus-wide, after the m hard ones; ns_sample_corpus):\n"
    "  --random-negatives M  M more corpus rows per query, drawn without replacement by\n"
    "                        weight^alpha, never a positive or a chosen hard negative; they\n"
    "                        fill columns m..m+M-1 of the .npy rows (score NaN: not scored)\n"
    "                        and follow the hard ones in JSONL (provenance: random_negatives)\n"
    "  --weights FILE.npy    one weight >= 0 per corpus row (frequency, degree); default uniform\n"
    "  --random-alpha A      weights^A (default 1; word2vec's unigram: 0.75)\n"
    "Output (at least one; written to a temporary file and renamed when complete):\n"
    "  --out FILE.jsonl      JSONL, in --format (gzip-compressed when FILE ends in .gz):\n"
    "        ids       {\"query\": id, \"positive\": id, \"negatives\": [ids], \"scores\": [s]}\n"
    "                  (one line per query and positive; default)\n"
    "        st        {\"query\": id, \"positive\": id, \"negative_1\": id, ...}\n"
    "                  (sentence-transformers n-tuple column order; rows with fewer than m\n"
    "                  negatives are left out)\n"
    "        tevatron  {\"query_id\": id, \"positive_passages\": [{\"docid\": id}],\n"
    "                   \"negative_passages\": [{\"docid\": id, \"score\": s}]}\n"
    "        flag      {\"query\": text, \"pos\": [texts], \"neg\": [texts]} (FlagEmbedding;\n"
    "                  needs texts: mine --beir or --queries/--corpus JSONL)\n"
    "        With texts (mine --beir DIR, or --queries/--corpus .jsonl): st is\n"
    "        {\"anchor\": text, \"positive\": text, \"negative_1\": text, ...} and tevatron\n"
    "        {\"query_id\", \"query\", \"positive_passages\"/\"negative_passages\": [{\"docid\",\n"
    "        \"title\", \"text\"}]}; a passage for st/flag is \"title text\".\n"
    "  --with-scores         st: \"scores\": [positive, negatives...]; flag: pos_scores/neg_scores\n"
    "  --out-index FILE.npy  int64 queries x m corpus rows, -1 padded\n"
    "  --out-score FILE.npy  float32 queries x m scores, NaN padded\n"
    "  --out-positive-score FILE.npy  float32 s+ per query (NaN without positive)\n"
    "  Ids in JSONL are the lines of --query-ids/--corpus-ids (strings) or row numbers\n"
    "  (integers; strings in tevatron).\n"
    "  Every run also writes OUT.provenance.json beside the first output (version, command\n"
    "  line, seed, rules, sampler, k, m, inputs' sizes and FNV-1a-64 hashes).\n"
    "  --trace PREFIX        PREFIX.candidates.npy (int64 q x k), PREFIX.scores.npy (f32),\n"
    "                        PREFIX.decisions.npy (int32: rule bits, 256 kept, 512 sampled),\n"
    "                        PREFIX.positive_score.npy, PREFIX.query_ids.txt and\n"
    "                        PREFIX.corpus_ids.txt: what `negsamp inspect` reads\n"
    "  --force               overwrite existing outputs\n"
    "Run:\n"
    "  --backend B           auto | cpu | cuda (default auto)\n"
    "  --threads N           CPU threads (default: all cores; under mpirun each rank's\n"
    "                        share: the node's cores over its ranks; OMP_NUM_THREADS also\n"
    "                        sets it)\n"
    "  --quiet               no progress bar, no summary\n"
    "Exit status: 0 ok, 1 runtime error (files, data), 2 usage error.\n";

void stage_defaults(stage_opts *o) {
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
    o->random_alpha = 1.0f;
}

/* -m and the sampler's options. */
static int sampler_option(stage_opts *o, int c, const char *arg) {
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
    default: return 0;
    }
}

/* The filter's rules. */
static int filter_option(stage_opts *o, int c, const char *arg) {
    switch (c) {
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

/* Inputs of positives, outputs and the run. */
static int io_option(stage_opts *o, int c, const char *arg) {
    int64_t v;
    switch (c) {
    case O_FORMAT:
        if (!strcmp(arg, "ids")) o->format = FMT_IDS;
        else if (!strcmp(arg, "st")) o->format = FMT_ST;
        else if (!strcmp(arg, "tevatron")) o->format = FMT_TEVATRON;
        else if (!strcmp(arg, "flag")) o->format = FMT_FLAG;
        else {
            cli_usage_error("--format '%s': expected ids, st, tevatron or flag", arg);
            return -1;
        }
        return 1;
    case O_OUT: o->out = arg; return 1;
    case O_OUT_INDEX: o->out_index = arg; return 1;
    case O_OUT_SCORE: o->out_score = arg; return 1;
    case O_OUT_POS: o->out_positive_score = arg; return 1;
    case O_FORCE: o->force = 1; return 1;
    case O_QUIET: o->quiet = 1; return 1;
    case O_BACKEND: return cli_parse_backend("--backend", arg, &o->backend) ? -1 : 1;
    case O_THREADS:
        if (cli_parse_i64("--threads", arg, 0, 4096, &v)) return -1;
        o->threads = (int)v, o->threads_set = 1;
        return 1;
    case O_QUERY_IDS: o->query_ids = arg; return 1;
    case O_CORPUS_IDS: o->corpus_ids = arg; return 1;
    case O_QRELS: o->qrels = arg; return 1;
    case O_POSITIVES: o->positives = arg; return 1;
    case O_PAIRED: o->paired = 1; return 1;
    case O_SKIP_UNKNOWN: o->skip_unknown_ids = 1; return 1;
    case O_WITH_SCORES: o->with_scores = 1; return 1;
    case O_TRACE: o->trace = arg; return 1;
    default: return 0;
    }
}

/* Corpus-wide random negatives. */
static int random_option(stage_opts *o, int c, const char *arg) {
    switch (c) {
    case O_RANDOM_NEGATIVES:
        return cli_parse_i64("--random-negatives", arg, 1, NS_MAX_K, &o->random_m) ? -1 : 1;
    case O_RANDOM_ALPHA:
        if (cli_parse_f32("--random-alpha", arg, &o->random_alpha)) return -1;
        if (!(fabsf(o->random_alpha) <= 64.0f)) {
            cli_usage_error("--random-alpha (%s) must be finite with |A| <= 64", arg);
            return -1;
        }
        return 1;
    case O_WEIGHTS: o->weights = arg; return 1;
    default: return 0;
    }
}

int stage_option(stage_opts *o, int c, const char *arg) {
    int r = sampler_option(o, c, arg);
    if (!r) r = random_option(o, c, arg);
    if (!r) r = filter_option(o, c, arg);
    if (!r) r = io_option(o, c, arg);
    return r;
}

int stage_check(stage_opts *o, int64_t C_hint, int mine) {
    int npos = !!o->qrels + !!o->positives + !!o->paired;
    if (npos > 1) return cli_usage_error("--qrels, --positives and --paired exclude each other");
    if (!o->out && !o->out_index && !o->out_score && !o->out_positive_score)
        return cli_usage_error("nothing to write: pass --out, --out-index, --out-score or "
                               "--out-positive-score");
    const char *outs[4] = {o->out, o->out_index, o->out_score, o->out_positive_score};
    static const char *flags[4] = {"--out", "--out-index", "--out-score", "--out-positive-score"};
    for (int i = 0; i < 4; i++)
        if (outs[i] && !*outs[i]) return cli_usage_error("%s '': the path is empty", flags[i]);
    int needs_pos = (o->filter.rules & (NS_FILTER_MARGIN | NS_FILTER_REL_MARGIN)) ||
                    o->sampler.strategy == NS_SAMPLE_SIMANS;
    if (mine && o->guide_set && npos == 0)
        return cli_usage_error("--guide-margin and --guide-rel-margin need each query's positive "
                               "(g+): pass --qrels, --positives or --paired");
    if (mine && needs_pos && npos == 0)
        return cli_usage_error("--margin, --rel-margin and --sampler simans need each query's "
                                   "positive score: pass --qrels, --positives or --paired");
    if (!mine && (o->format == FMT_FLAG || o->with_scores))
        return cli_usage_error("--format flag and --with-scores need texts: negsamp mine --beir "
                               "DIR or JSONL --queries/--corpus");
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
    if (!o->random_m && (o->weights || o->random_alpha != 1.0f))
        return cli_usage_error("--weights and --random-alpha need --random-negatives M");
    const char *first = o->out         ? o->out
                        : o->out_index ? o->out_index
                        : o->out_score ? o->out_score
                                       : o->out_positive_score;
    int n = snprintf(o->provenance, sizeof o->provenance, "%s.provenance.json", first);
    static const char *trace_suffix[6] = {"candidates.npy", "scores.npy", "decisions.npy",
                                          "positive_score.npy", "query_ids.txt",
                                          "corpus_ids.txt"};
    for (int i = 0; o->trace && i < 6; i++)
        if (snprintf(o->trace_path[i], sizeof o->trace_path[i], "%s.%s", o->trace,
                     trace_suffix[i]) >= (int)sizeof o->trace_path[i])
            n = -1;
    if (n < 0 || (size_t)n >= sizeof o->provenance)
        return cli_usage_error("an output path is too long");
    return 0;
}

int stage_check_files(const stage_opts *o, const cli_named_path *inputs, int n) {
    cli_named_path in[CLI_MAX_FILES] = {
        {"--query-ids", o->query_ids}, {"--corpus-ids", o->corpus_ids}, {"--qrels", o->qrels},
        {"--positives", o->positives}, {"--weights", o->weights}};
    int nin = 5;
    for (int i = 0; i < n && nin < CLI_MAX_FILES; i++) in[nin++] = inputs[i];
    const cli_named_path out[11] = {{"--out", o->out}, {"--out-index", o->out_index},
                                   {"--out-score", o->out_score},
                                   {"--out-positive-score", o->out_positive_score},
                                   {"provenance sidecar", o->provenance},
                                   {"--trace", o->trace ? o->trace_path[0] : NULL},
                                   {"--trace", o->trace ? o->trace_path[1] : NULL},
                                   {"--trace", o->trace ? o->trace_path[2] : NULL},
                                   {"--trace", o->trace ? o->trace_path[3] : NULL},
                                   {"--trace", o->trace ? o->trace_path[4] : NULL},
                                   {"--trace", o->trace ? o->trace_path[5] : NULL}};
    return cli_check_files(in, nin, out, 11, o->force);
}
