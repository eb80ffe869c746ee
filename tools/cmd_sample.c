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
