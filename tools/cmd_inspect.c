/* negsamp inspect: a report on a mining run from its trace (mine --trace PREFIX): removals per
 * rule, positives among the negatives (labelled ones with --qrels, near-duplicates by score),
 * the rank of each query's positive, score histograms; a terminal summary, and with --report
 * DIR a Markdown report with PNG plots and summary.json. */
#define _GNU_SOURCE
#include "inspect.h"

#include <getopt.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

static const char INSPECT_HELP[] =
    "usage: negsamp inspect (--run OUT | --trace PREFIX) [--qrels FILE] [--report DIR]\n"
    "\n"
    "Reports on a mining run from its trace (negsamp mine ... --trace PREFIX).\n"
    "  --run OUT             the run's output: OUT.provenance.json names its trace\n"
    "  --trace PREFIX        the trace itself (PREFIX.candidates.npy, .scores.npy,\n"
    "                        .decisions.npy, .positive_score.npy, .query_ids.txt,\n"
    "                        .corpus_ids.txt)\n"
    "  --qrels FILE          relevance labels (BEIR qrels TSV, score > 0 relevant): labelled\n"
    "                        positives among the sampled negatives = the estimated\n"
    "                        false-negative share (a split or labels the run did not exclude)\n"
    "  --skip-unknown-ids    skip (and count) qrels lines whose ids the trace does not know\n"
    "  --epsilon E           near-duplicate: a negative scoring >= s+ - E (default 0.01)\n"
    "  --report DIR          DIR/report.md with scores.png, ranks.png, rules.png and\n"
    "                        summary.json (DIR made when absent)\n"
    "  --force               overwrite the report's files\n"
    "  --quiet               no terminal summary\n"
    "Exit status: 0 ok, 1 runtime error (files, data), 2 usage error.\n";

enum { I_RUN = 400, I_TRACE, I_QRELS, I_SKIP, I_EPS, I_REPORT, I_FORCE, I_QUIET, I_HELP };

typedef struct {
    const char *run, *trace, *qrels, *report;
    int skip, force, quiet;
    float eps;
    char prov[4096], prefix[4096], path[6][4096], out[INS_FILES][4096];
} inspect_args;

static int inspect_parse(int argc, char **argv, inspect_args *a) {
    static const struct option lo[] = {
        {"run", required_argument, 0, I_RUN}, {"trace", required_argument, 0, I_TRACE},
        {"qrels", required_argument, 0, I_QRELS}, {"skip-unknown-ids", no_argument, 0, I_SKIP},
        {"epsilon", required_argument, 0, I_EPS}, {"report", required_argument, 0, I_REPORT},
        {"force", no_argument, 0, I_FORCE}, {"quiet", no_argument, 0, I_QUIET},
        {"help", no_argument, 0, I_HELP}, {0, 0, 0, 0}};
    memset(a, 0, sizeof *a);
    a->eps = 0.01f;
    opterr = 0;
    optind = 1;
    for (int c; (c = getopt_long(argc, argv, ":h", lo, NULL)) != -1;) {
        switch (c) {
        case 'h':
        case I_HELP: fputs(INSPECT_HELP, stdout); return CLI_OK;
        case I_RUN: a->run = optarg; break;
        case I_TRACE: a->trace = optarg; break;
        case I_QRELS: a->qrels = optarg; break;
        case I_SKIP: a->skip = 1; break;
        case I_EPS:
            if (cli_parse_f32("--epsilon", optarg, &a->eps)) return CLI_USAGE;
            if (!(a->eps >= 0)) return cli_usage_error("--epsilon (%s) must be >= 0", optarg);
            break;
        case I_REPORT: a->report = optarg; break;
        case I_FORCE: a->force = 1; break;
        case I_QUIET: a->quiet = 1; break;
        case ':': return cli_usage_error("option '%s' needs a value", argv[optind - 1]);
        default: return cli_usage_error("unknown option '%s'", argv[optind - 1]);
        }
    }
    if (optind < argc) return cli_usage_error("unexpected argument '%s'", argv[optind]);
    if (!a->run == !a->trace) return cli_usage_error("pass one of --run OUT and --trace PREFIX");
    if (a->quiet && !a->report) return cli_usage_error("--quiet without --report shows nothing");
    if (a->run && snprintf(a->prov, sizeof a->prov, "%s.provenance.json", a->run) >= 4096)
        return cli_usage_error("--run: path too long");
    return -1;
}

/* The trace prefix: --trace, or the "trace" the run's provenance names. */
static int find_prefix(inspect_args *a) {
    if (a->trace) {
        snprintf(a->prefix, sizeof a->prefix, "%s", a->trace);
        return 0;
    }
    char *text = cli_read_text(a->prov, NULL);
    if (!text) return -1;
    cli_json_field f[1];
    memset(f, 0, sizeof f);
    f[0].key = "trace";
    char err[256];
    int rc = 0;
    if (cli_json_object_fields(cli_skip_bom(text), f, 1, err, sizeof err)) {
        cli_error("%s: %s", a->prov, err);
        rc = -1;
    } else if (!f[0].value || !f[0].is_string) {
        cli_error("%s: the run has no trace: rerun negsamp mine with --trace PREFIX", a->prov);
        rc = -1;
    } else {
        snprintf(a->prefix, sizeof a->prefix, "%s", f[0].value);
    }
    free(text);
    return rc;
}

static int shape_error(const char *path, const cli_array *x, int64_t B, int64_t k) {
    cli_error("%s: shape (%lld, %lld); expected (%lld, %lld) like the candidates", path,
              (long long)x->shape[0], (long long)x->shape[1], (long long)B, (long long)k);
    return -1;
}

/* The trace's arrays, ids and labels, with their shapes checked. */
static int load_trace(inspect_args *a, inspect_trace *t) {
    t->prefix = a->prefix;
    if (cli_npy_read_i64(a->path[0], &t->cand) || cli_npy_read_f32(a->path[1], &t->score) ||
        cli_npy_read_i64(a->path[2], &t->dec) || cli_npy_read_f32(a->path[3], &t->pos))
        return -1;
    t->B = t->cand.shape[0], t->k = t->cand.shape[1];
    if (t->cand.ndim != 2) return shape_error(a->path[0], &t->cand, t->B, t->k);
    for (int i = 1; i < 3; i++) {
        const cli_array *x = i == 1 ? &t->score : &t->dec;
        if (x->ndim != 2 || x->shape[0] != t->B || x->shape[1] != t->k)
            return shape_error(a->path[i], x, t->B, t->k);
    }
    if (t->pos.ndim != 1 || t->pos.shape[0] != t->B) {
        cli_error("%s: %lld values; expected one per query (%lld)", a->path[3],
                  (long long)t->pos.shape[0], (long long)t->B);
        return -1;
    }
    if (cli_ids_load(&t->qids, a->path[4], "query", t->B) ||
        cli_ids_load(&t->cids, a->path[5], "corpus", -1))
        return -1;
    const int64_t *cand = t->cand.data;
    for (int64_t i = 0; i < t->B * t->k; i++)
        if (cand[i] < -1 || cand[i] >= t->cids.rows) {
            cli_error("%s: query row %lld names corpus row %lld; %s has %lld ids", a->path[0],
                      (long long)(i / t->k), (long long)cand[i], a->path[5],
                      (long long)t->cids.rows);
            return -1;
        }
    if (!a->qrels) return 0;
    cli_unknown_ids u = {a->skip, 0, 0, ""};
    if (cli_qrels_load(a->qrels, &t->qids, &t->cids, &u, &t->labels)) return -1;
    if (u.skipped)
        fprintf(stderr, "%s: --skip-unknown-ids: skipped %lld qrels lines (first: line %lld, "
                "'%s')\n", cli_command, (long long)u.skipped, (long long)u.first_line, u.first_id);
    return 0;
}

static void free_trace(inspect_trace *t) {
    free(t->cand.data);
    free(t->score.data);
    free(t->dec.data);
    free(t->pos.data);
    cli_ids_free(&t->qids);
    cli_ids_free(&t->cids);
    cli_lists_free(&t->labels);
}

/* Inputs and the report's outputs, checked together. */
static int check_files(inspect_args *a) {
    static const char *suffix[6] = {"candidates.npy", "scores.npy", "decisions.npy",
                                    "positive_score.npy", "query_ids.txt", "corpus_ids.txt"};
    cli_named_path in[8], out[INS_FILES];
    for (int i = 0; i < 6; i++) {
        if (snprintf(a->path[i], 4096, "%s.%s", a->prefix, suffix[i]) >= 4096)
            return cli_usage_error("the trace prefix is too long");
        in[i].flag = "trace", in[i].path = a->path[i];
    }
    in[6].flag = "--qrels", in[6].path = a->qrels;
    in[7].flag = "--run", in[7].path = a->run ? a->prov : NULL;
    if (a->report && inspect_report_paths(a->report, a->out)) return CLI_RUNTIME;
    for (int i = 0; i < INS_FILES; i++)
        out[i].flag = "--report", out[i].path = a->report ? a->out[i] : NULL;
    return cli_check_files(in, 8, out, INS_FILES, a->force);
}

int cli_cmd_inspect(int argc, char **argv) {
    inspect_args a;
    int u = inspect_parse(argc, argv, &a);
    if (u >= 0) return u;
    cli_install_signal_cleanup();
    if (find_prefix(&a)) return CLI_RUNTIME;
    if ((u = check_files(&a))) return u;
    inspect_trace t;
    memset(&t, 0, sizeof t);
    int rc = CLI_RUNTIME;
    if (!load_trace(&a, &t)) {
        inspect_stats st;
        inspect_compute(&t, a.eps, &st);
        if (!a.quiet) inspect_print_summary(stdout, &t, &st);
        if (!a.report || !inspect_write_report(a.out, &t, &st, a.force)) rc = CLI_OK;
        if (rc == CLI_OK && a.report && !a.quiet) printf("  report: %s/report.md\n", a.report);
    }
    free_trace(&t);
    return rc;
}
