/* negsamp sample: the filter → sample → write stage on a precomputed candidate matrix. */
#define _GNU_SOURCE
#include "stage.h"

#include <getopt.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

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

typedef struct {
    stage_opts o;
    const char *ipath, *spath, *ppath, *gspath, *gppath;
} sample_args;

typedef struct {
    sample_args *a;
    stage s;
    cli_array I, S, P, G, GP;
    float *ps;
    uint8_t *valid;
} sample_run;

/* Returns -1 to go on, or the exit status (--help, a usage error). */
static int sample_parse(int argc, char **argv, sample_args *a) {
    static const struct option longopts[] = {
        STAGE_LONG_OPTIONS,
        {"candidates", required_argument, 0, O_CANDIDATES},
        {"scores", required_argument, 0, O_SCORES},
        {"positive-score", required_argument, 0, O_POSITIVE_SCORE},
        {"guide-scores", required_argument, 0, O_GUIDE_SCORES},
        {"guide-positive-score", required_argument, 0, O_GUIDE_POSITIVE_SCORE},
        {0, 0, 0, 0}};
    memset(a, 0, sizeof *a);
    stage_defaults(&a->o);
    opterr = 0;
    optind = 1;
    int c;
    while ((c = getopt_long(argc, argv, ":hm:", longopts, NULL)) != -1) {
        int r = stage_option(&a->o, c, optarg);
        if (r < 0) return CLI_USAGE;
        if (r > 0) continue;
        switch (c) {
        case O_HELP:
            fputs(SAMPLE_HELP, stdout);
            fputs("\n", stdout);
            fputs(STAGE_HELP, stdout);
            fputs(SAMPLE_EXAMPLES, stdout);
            return CLI_OK;
        case O_CANDIDATES: a->ipath = optarg; break;
        case O_SCORES: a->spath = optarg; break;
        case O_POSITIVE_SCORE: a->ppath = optarg; break;
        case O_GUIDE_SCORES: a->gspath = optarg; break;
        case O_GUIDE_POSITIVE_SCORE: a->gppath = optarg; break;
        case ':': return cli_usage_error("option '%s' needs a value", argv[optind - 1]);
        default: return cli_usage_error("unknown option '%s'", argv[optind - 1]);
        }
    }
    if (optind < argc) return cli_usage_error("unexpected argument '%s'", argv[optind]);
    if (!a->ipath || !a->spath) return cli_usage_error("--candidates and --scores are required");
    int needs_ps = (a->o.filter.rules & (NS_FILTER_MARGIN | NS_FILTER_REL_MARGIN)) ||
                   a->o.sampler.strategy == NS_SAMPLE_SIMANS;
    if (needs_ps && !a->ppath)
        return cli_usage_error("--margin, --rel-margin and --sampler simans need --positive-score");
    if (a->o.guide_set && (!a->gspath || !a->gppath))
        return cli_usage_error("--guide-margin/--guide-rel-margin need --guide-scores and "
                               "--guide-positive-score");
    if (a->o.random_m && !a->o.weights && !a->o.corpus_ids)
        return cli_usage_error("--random-negatives needs the corpus size: pass --weights or "
                               "--corpus-ids");
    int u = stage_check(&a->o, 0, 0);
    return u ? u : -1;
}

/* A per-query array (B values, 1-D or B × 1). */
static int check_per_query(const char *path, const cli_array *x, const char *ipath, int64_t B) {
    if (x->shape[0] * x->shape[1] == B) return 0;
    cli_error("%s holds %lld values but %s has %lld queries (rows)", path,
              (long long)(x->shape[0] * x->shape[1]), ipath, (long long)B);
    return -1;
}

static int check_same_shape(const char *path, const cli_array *x, const char *ipath,
                            const cli_array *I) {
    if (x->shape[0] == I->shape[0] && x->shape[1] == I->shape[1]) return 0;
    cli_error("shape mismatch: %s is %lld x %lld but %s is %lld x %lld", ipath,
              (long long)I->shape[0], (long long)I->shape[1], path, (long long)x->shape[0],
              (long long)x->shape[1]);
    return -1;
}

/* The candidate, score, s⁺ and guide arrays, and the checks between them. */
static int sample_load_inputs(sample_run *r) {
    const sample_args *a = r->a;
    if (cli_npy_read_i64(a->ipath, &r->I)) return -1;
    if (cli_npy_read_f32(a->spath, &r->S)) return -1;
    if (check_same_shape(a->spath, &r->S, a->ipath, &r->I)) return -1;
    r->s.B = r->I.shape[0];
    r->s.C = r->I.shape[1];
    if (r->s.B < 1 || r->s.C < 1) {
        cli_error("%s: empty candidate matrix (%lld x %lld)", a->ipath, (long long)r->s.B,
                  (long long)r->s.C);
        return -1;
    }
    if (a->ppath && (cli_npy_read_f32(a->ppath, &r->P) ||
                     check_per_query(a->ppath, &r->P, a->ipath, r->s.B)))
        return -1;
    if (!a->gspath || !a->o.guide_set) return 0;
    if (cli_npy_read_f32(a->gspath, &r->G) ||
        cli_npy_read_f32(a->gppath, &r->GP) ||
        check_same_shape(a->gspath, &r->G, a->ipath, &r->I) ||
        check_per_query(a->gppath, &r->GP, a->ipath, r->s.B))
        return -1;
    /* Empty slots carry no guide score: give them a finite one (never kept anyway). */
    for (int64_t t = 0; t < r->s.B * r->s.C; t++)
        if (((const int64_t *)r->I.data)[t] < 0) ((float *)r->G.data)[t] = 0.f;
    return 0;
}

/* Candidate ids must name corpus rows the JSONL can print. */
static int sample_check_candidates(sample_run *r) {
    const stage *s = &r->s;
    const int64_t *ids = r->I.data;
    for (int64_t i = 0; i < s->B * s->C; i++)
        if (ids[i] < -1 || (ids[i] >= 0 && s->cids.path && ids[i] >= s->cids.rows)) {
            cli_error("%s: row %lld, column %lld: candidate %lld is not a corpus row%s",
                      r->a->ipath, (long long)(i / s->C), (long long)(i % s->C),
                      (long long)ids[i], s->cids.path ? " of --corpus-ids" : " (-1 marks an empty slot)");
            return -1;
        }
    return 0;
}

/* s⁺ per query (0 where the query has none) and which queries have a positive. */
static int sample_positive_scores(sample_run *r) {
    const stage *s = &r->s;
    r->ps = calloc((size_t)s->B, 4);
    r->valid = malloc((size_t)s->B);
    if (!r->ps || !r->valid) {
        cli_error("out of memory");
        return -1;
    }
    for (int64_t i = 0; i < s->B; i++) {
        r->valid[i] = 1;
        if (r->P.data) {
            r->ps[i] = ((const float *)r->P.data)[i];
            if (!isfinite(r->ps[i])) r->valid[i] = 0; /* NaN: the query had no positive */
        }
        if (s->has_pos && s->pos.offsets[i] == s->pos.offsets[i + 1]) r->valid[i] = 0;
        if (!r->valid[i]) r->ps[i] = 0.f;
        if (r->GP.data && !r->valid[i]) ((float *)r->GP.data)[i] = 0.f;
    }
    return 0;
}

static void sample_free(sample_run *r) {
    free(r->ps);
    free(r->valid);
    cli_array *arrays[] = {&r->I, &r->S, &r->P, &r->G, &r->GP};
    for (size_t i = 0; i < sizeof arrays / sizeof arrays[0]; i++) free(arrays[i]->data);
    stage_free(&r->s);
}

int cli_cmd_sample(int argc, char **argv) {
    sample_args a;
    int u = sample_parse(argc, argv, &a);
    if (u >= 0) return u;
    const cli_named_path in[] = {{"--candidates", a.ipath}, {"--scores", a.spath},
                                 {"--positive-score", a.ppath}, {"--guide-scores", a.gspath},
                                 {"--guide-positive-score", a.gppath}};
    if ((u = stage_check_files(&a.o, in, 5))) return u;
    sample_run r;
    memset(&r, 0, sizeof r);
    r.a = &a;
    r.s.o = &a.o;
    stage *s = &r.s;
    int rc = CLI_RUNTIME;
    cli_install_signal_cleanup();
    const char *src[5][2] = {{"--candidates", a.ipath}, {"--scores", a.spath},
                             {"--positive-score", a.ppath}, {"--guide-scores", a.gspath},
                             {"--guide-positive-score", a.gppath}}; /* STAGE_SRC_* order */
    for (int f = 0; f < 5; f++) {
        s->src_option[f] = src[f][0];
        s->src_path[f] = src[f][1];
    }
    if (stage_open_outputs(s) || sample_load_inputs(&r)) goto fail;
    if ((a.o.filter.rules & NS_FILTER_RANK) && !(a.o.rank_set & 2)) a.o.filter.rank_max = s->C;
    if (stage_load_positives(s, s->B, -1) || sample_check_candidates(&r)) goto fail;
    if (a.o.m > s->C) { /* the same usage error as mine's -m above -k */
        rc = cli_usage_error("--negatives (%lld) is larger than the %lld candidates per query in "
                             "%s", (long long)a.o.m, (long long)s->C, a.ipath);
        goto fail;
    }
    if (stage_context(s) || stage_random_open(s, -1) || stage_write_headers(s) ||
        stage_alloc(s, s->B) ||
        sample_positive_scores(&r))
        goto fail;
    double t0 = cli_now();
    if (stage_block(s, 0, s->B, r.I.data, r.S.data, r.ps, r.valid, r.G.data, r.GP.data)) goto fail;
    if (stage_write_provenance(s, argc, argv, "sample", in, 5, NULL) || stage_commit(s)) {
        cli_error("%s: the outputs were not written", a.o.provenance);
        goto fail;
    }
    stage_summary(s, "filtered and sampled", cli_now() - t0);
    rc = CLI_OK;
    goto done;
fail:
    stage_abort(s);
done:
    sample_free(&r);
    return rc;
}
