/* negsamp: the command-line program. Subcommands: mine, sample, kmeans, inspect, demo, info, bench-mine. */
#include "cli.h"

#include <stdlib.h>
#include <string.h>

static const char MAIN_HELP[] =
    "usage: negsamp <command> [options]   (negsamp <command> --help for its options)\n"
    "\n"
    "Commands:\n"
    "  mine     mine hard negatives for queries against a corpus (.npy / .fvecs embeddings,\n"
    "           BEIR qrels) and write JSONL (ids, sentence-transformers, Tevatron) or .npy\n"
    "  sample   filter and sample negatives from a precomputed candidate .npy matrix\n"
    "  kmeans   cluster embeddings (.npy) into k groups for cluster-aware batches: int64 labels\n"
    "  inspect  a report on a mining run (mine --trace): rules, positives among the negatives,\n"
    "           ranks, score histograms; Markdown with PNG plots\n"
    "  demo     false negatives of each sampling setting on the digits data set\n"
    "  info     version, build, CUDA devices and backends\n"
    "  bench-mine  time mining on given embeddings or a random corpus (--json for scripts)\n"
    "\n"
    "Examples:\n"
    "  negsamp demo\n"
    "  negsamp mine --queries q.npy --corpus c.npy --qrels qrels.tsv -k 100 -m 8 \\\n"
    "      --rel-margin 0.05 --out negatives.jsonl\n"
    "\n"
    "Exit status: 0 ok, 1 runtime error (a file, the data), 2 usage error.\n";

static const char INFO_HELP[] =
    "usage: negsamp info\n"
    "\n"
    "Prints the library version, whether this build has the CUDA backend, the CUDA devices it\n"
    "sees, and the backend 'auto' resolves to.\n";

/* src/cpu/cpu_blas.c (internal; the program links the static library). */
const char *ns_gemm_name(void);

int cli_cmd_info(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            fputs(INFO_HELP, stdout);
            return CLI_OK;
        }
        return cli_usage_error("unknown argument '%s'", argv[i]);
    }
    int v = ns_version();
    printf("negsamp %d.%d.%d (header %d.%d.%d)\n", v / 10000, v / 100 % 100, v % 100,
           NS_VERSION_MAJOR, NS_VERSION_MINOR, NS_VERSION_PATCH);
    int built = ns_cuda_built(), devices = ns_cuda_device_count();
    printf("cuda backend built: %s\n", built ? "yes" : "no");
    printf("cpu gemm: %s\n", ns_gemm_name());
    printf("cuda devices: %d\n", devices);
    printf("backends: cpu%s\n", built && devices > 0 ? ", cuda" : "");
    ns_context *ctx = NULL;
    if (ns_context_create(&ctx, NULL) == NS_OK) {
        printf("auto resolves to: %s\n",
               ns_context_backend(ctx) == NS_BACKEND_CUDA ? "cuda" : "cpu");
        ns_context_destroy(ctx);
    } else {
        printf("auto resolves to: (failed: %s)\n", ns_last_error(NULL));
    }
#ifdef NS_DEFAULT_DATA
    printf("demo data: %s\n", NS_DEFAULT_DATA);
#endif
    return CLI_OK;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fputs(MAIN_HELP, stderr);
        return CLI_USAGE;
    }
    const char *cmd = argv[1];
    if (!strcmp(cmd, "--help") || !strcmp(cmd, "-h") || !strcmp(cmd, "help")) {
        fputs(MAIN_HELP, stdout);
        return CLI_OK;
    }
    if (!strcmp(cmd, "--version")) {
        int v = ns_version();
        printf("negsamp %d.%d.%d\n", v / 10000, v / 100 % 100, v % 100);
        return CLI_OK;
    }
    static char name[64];
    snprintf(name, sizeof name, "negsamp %s", cmd);
    cli_command = name;
    if (!strcmp(cmd, "mine")) return cli_cmd_mine(argc - 1, argv + 1);
    if (!strcmp(cmd, "sample")) return cli_cmd_sample(argc - 1, argv + 1);
    if (!strcmp(cmd, "kmeans")) return cli_cmd_kmeans(argc - 1, argv + 1);
    if (!strcmp(cmd, "demo")) return cli_cmd_demo(argc - 1, argv + 1);
    if (!strcmp(cmd, "info")) return cli_cmd_info(argc - 1, argv + 1);
    if (!strcmp(cmd, "inspect")) return cli_cmd_inspect(argc - 1, argv + 1);
    if (!strcmp(cmd, "bench-mine")) return cli_cmd_bench_mine(argc - 1, argv + 1);
    cli_command = "negsamp";
    fprintf(stderr, "negsamp: unknown command '%s'\n\n", cmd);
    fputs(MAIN_HELP, stderr);
    return CLI_USAGE;
}
