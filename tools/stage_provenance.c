/* The provenance sidecar of a run, OUT.provenance.json: negsamp's version, the command line,
 * the seed, the filter's rules and values, the sampler, k and m, and each input's size and
 * XXH64 of its bytes (key "xxh64"; the run's one fingerprint of the file, cli_fingerprint.c),
 * so a trainer's data can be traced to the embeddings it came from. Written with the other
 * outputs, committed with them. */
#define _GNU_SOURCE
#include "stage.h"

#include <string.h>
#include <unistd.h>

static const char *sampler_name(ns_sampler st) {
    switch (st) {
    case NS_SAMPLE_TOP: return "top";
    case NS_SAMPLE_UNIFORM: return "uniform";
    case NS_SAMPLE_SIMANS: return "simans";
    case NS_SAMPLE_SOFTMAX: return "softmax";
    default: return "?";
    }
}

static void write_rules(FILE *f, const ns_filter_options *o) {
    unsigned r = o->rules;
    fputs("  \"filter\": {", f);
    int first = 1;
#define RULE(bit, name, fmt, ...)                                                              \
    if (r & (bit)) {                                                                           \
        fprintf(f, "%s\"%s\": " fmt, first ? "" : ", ", name, __VA_ARGS__);                    \
        first = 0;                                                                             \
    }
    RULE(NS_FILTER_SAME_ID, "same_id", "%s", "true")
    RULE(NS_FILTER_MAX_SCORE, "max_score", "%.9g", (double)o->max_score)
    RULE(NS_FILTER_MIN_SCORE, "min_score", "%.9g", (double)o->min_score)
    RULE(NS_FILTER_MARGIN, "margin", "%.9g", (double)o->margin)
    RULE(NS_FILTER_REL_MARGIN, "rel_margin", "%.9g", (double)o->rel_margin)
    RULE(NS_FILTER_RANK, "rank", "[%lld, %lld]", (long long)o->rank_min, (long long)o->rank_max)
    RULE(NS_FILTER_GUIDE, "guide_margin", "%.9g", (double)o->guide_margin)
    RULE(NS_FILTER_GUIDE_REL, "guide_rel_margin", "%.9g", (double)o->guide_margin)
#undef RULE
    fputs("},\n", f);
}

static int write_inputs(FILE *f, const cli_named_path *in, int n, int quiet) {
    if (cli_fingerprint_inputs(in, n, quiet)) return -1;
    fputs("  \"inputs\": [", f);
    int first = 1;
    for (int i = 0; i < n; i++) {
        if (!in[i].path) continue;
        uint64_t h;
        int64_t size;
        if (cli_file_fingerprint(in[i].path, &h, &size)) return -1;
        fputs(first ? "\n    {\"flag\": " : ",\n    {\"flag\": ", f);
        cli_json_string(f, in[i].flag, strlen(in[i].flag));
        fputs(", \"path\": ", f);
        cli_json_string(f, in[i].path, strlen(in[i].path));
        fprintf(f, ", \"bytes\": %lld, \"" CLI_FINGERPRINT_NAME "\": \"%016llx\"}",
                (long long)size, (unsigned long long)h);
        first = 0;
    }
    fputs("\n  ],\n", f);
    return 0;
}

/* The trace prefix as an absolute path: `negsamp inspect --run OUT` follows it from any working
 * directory (a relative prefix was read against the inspecting shell's directory, not the
 * mining run's, and was not found). argv keeps the prefix as given. */
static void write_trace(FILE *f, const char *trace) {
    char path[8192], cwd[4096];
    if (trace[0] != '/' && getcwd(cwd, sizeof cwd) &&
        snprintf(path, sizeof path, "%s/%s", cwd, trace) < (int)sizeof path)
        trace = path;
    fputs("  \"trace\": ", f);
    cli_json_string(f, trace, strlen(trace));
    fputs(",\n", f);
}

int stage_write_provenance(stage *s, int argc, char **argv, const char *command,
                           const cli_named_path *inputs, int n, const char *extra) {
    FILE *f = s->prov.f;
    const stage_opts *o = s->o;
    int v = ns_version();
    fprintf(f, "{\n  \"negsamp_version\": \"%d.%d.%d\",\n  \"command\": \"%s\",\n", v / 10000,
            v / 100 % 100, v % 100, command);
    fputs("  \"argv\": [\"negsamp\"", f);
    for (int i = 0; i < argc; i++) {
        fputs(", ", f);
        cli_json_string(f, argv[i], strlen(argv[i]));
    }
    fprintf(f, "],\n  \"seed\": %llu,\n", (unsigned long long)o->sampler.seed);
    write_rules(f, &o->filter);
    fprintf(f, "  \"sampler\": {\"strategy\": \"%s\", \"simans_a\": %.9g, \"simans_b\": %.9g, "
               "\"temperature\": %.9g},\n",
            sampler_name(o->sampler.strategy), (double)o->sampler.simans_a,
            (double)o->sampler.simans_b, (double)o->sampler.temperature);
    fprintf(f, "  \"k\": %lld,\n  \"m\": %lld,\n  \"queries\": %lld,\n", (long long)s->C,
            (long long)o->m, (long long)s->B);
    static const char *fmt[] = {"ids", "st", "tevatron", "flag"};
    fprintf(f, "  \"format\": \"%s\",\n", fmt[o->format]);
    if (o->random_m)
        fprintf(f, "  \"random_negatives\": {\"count\": %lld, \"columns\": [%lld, %lld], "
                   "\"alpha\": %.9g, \"weights\": %s, \"scores\": \"NaN (not scored)\"},\n",
                (long long)o->random_m, (long long)o->m, (long long)stage_width(o),
                (double)o->random_alpha, o->weights ? "\"--weights\"" : "\"uniform\"");
    if (extra) fputs(extra, f);
    if (o->trace) write_trace(f, o->trace);
    cli_named_path all[CLI_MAX_FILES + 5] = {{"--query-ids", o->query_ids},
                                             {"--corpus-ids", o->corpus_ids},
                                             {"--qrels", o->qrels},
                                             {"--positives", o->positives},
                                             {"--weights", o->weights}};
    int na = 5;
    for (int i = 0; i < n && na < CLI_MAX_FILES + 5; i++) all[na++] = inputs[i];
    if (write_inputs(f, all, na, o->quiet)) return -1;
    fprintf(f, "  \"rows_written\": %lld\n}\n", (long long)s->jsonl_rows);
    return ferror(f) ? -1 : 0;
}

