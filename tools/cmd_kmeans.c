/* negsamp kmeans: cluster labels for cluster-aware batches (ns_kmeans on a memory-mapped .npy),
 * written as an int64 .npy of group ids in [0, k), with the centroids optionally. */
#define _GNU_SOURCE
#include "cli.h"

#include <getopt.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

static const char KMEANS_HELP[] =
    "usage: negsamp kmeans --embeddings X.npy -k K --out LABELS.npy [options]\n"
    "\n"
    "Clusters the rows of X (float32 or float16 .npy, memory-mapped: larger than RAM is fine)\n"
    "into K clusters with Lloyd's k-means, deterministic for a seed at any thread count and on\n"
    "either backend, and writes each row's cluster (int64 in [0, K)) to LABELS.npy: group ids\n"
    "for cluster-aware batches (TAS-B, NGAME, ClusterNS).\n"
    "\n"
    "Options:\n"
    "  --embeddings FILE   n x d float32/float16 .npy (required)\n"
    "  -k, --clusters K    number of clusters, 1 <= K <= n (required)\n"
    "  --out FILE          the labels, int64 .npy of n values (required)\n"
    "  --centroids FILE    also write the K x d float32 centroids\n"
    "  --spherical         cosine k-means (unit centroids; a row costs 1 - cos)\n"
    "  --balanced SLACK    no cluster holds more than ceil(n/K * (1 + SLACK)) rows (SLACK >= 0)\n"
    "  --init NAME         kmeans++ (default; costs O(n K d)) or random\n"
    "  --iterations N      at most N Lloyd updates (default 25)\n"
    "  --tolerance T       stop once the inertia falls by at most T of itself (default 1e-4)\n"
    "  --seed S            the seed of the init (default 0)\n"
    "  --backend B         auto, cpu or cuda (default auto)\n"
    "  --threads N         CPU threads (default: all)\n"
    "  --force             replace existing output files (never an input)\n"
    "  --quiet             no progress bar and no summary\n"
    "\n"
    "Example:\n"
    "  negsamp kmeans --embeddings corpus.npy -k 1024 --spherical --balanced 0.1 --seed 1 \\\n"
    "      --out clusters.npy --centroids centroids.npy\n";

enum {
    OK_HELP = 'h', OK_K = 'k',
    OK_EMB = 256, OK_OUT, OK_CENT, OK_SPH, OK_BAL, OK_INIT, OK_ITERS, OK_TOL, OK_SEED,
    OK_BACKEND, OK_THREADS, OK_FORCE, OK_QUIET
};

typedef struct {
    const char *xpath, *out, *cpath;
    int64_t k;
    int force, quiet, threads;
    ns_backend backend;
    ns_kmeans_options o;
} kmeans_args;

static int parse_double(const char *opt, const char *s, double lo, double *out) {
    char *end = NULL;
    const double v = strtod(s, &end);
    if (!*s || *end || !isfinite(v) || v < lo)
        return cli_usage_error("%s expects a finite number >= %g, got '%s'", opt, lo, s), -1;
    *out = v;
    return 0;
}

/* Returns -1 to go on, or the exit status (--help, a usage error). */
static int kmeans_parse(int argc, char **argv, kmeans_args *a) {
    static const struct option longopts[] = {
        {"help", no_argument, 0, OK_HELP},
        {"clusters", required_argument, 0, OK_K},
        {"embeddings", required_argument, 0, OK_EMB},
        {"out", required_argument, 0, OK_OUT},
        {"centroids", required_argument, 0, OK_CENT},
        {"spherical", no_argument, 0, OK_SPH},
        {"balanced", required_argument, 0, OK_BAL},
        {"init", required_argument, 0, OK_INIT},
        {"iterations", required_argument, 0, OK_ITERS},
        {"tolerance", required_argument, 0, OK_TOL},
        {"seed", required_argument, 0, OK_SEED},
        {"backend", required_argument, 0, OK_BACKEND},
        {"threads", required_argument, 0, OK_THREADS},
        {"force", no_argument, 0, OK_FORCE},
        {"quiet", no_argument, 0, OK_QUIET},
        {0, 0, 0, 0}};
    memset(a, 0, sizeof *a);
    const ns_kmeans_options init = NS_KMEANS_OPTIONS_INIT;
    a->o = init;
    a->backend = NS_BACKEND_AUTO;
    opterr = 0;
    optind = 1;
    int c;
    int64_t v;
    while ((c = getopt_long(argc, argv, ":hk:", longopts, NULL)) != -1) {
        switch (c) {
        case OK_HELP: fputs(KMEANS_HELP, stdout); return CLI_OK;
        case OK_K:
            if (cli_parse_i64("-k", optarg, 1, INT64_MAX, &a->k)) return CLI_USAGE;
            break;
        case OK_EMB: a->xpath = optarg; break;
        case OK_OUT: a->out = optarg; break;
        case OK_CENT: a->cpath = optarg; break;
        case OK_SPH: a->o.spherical = 1; break;
        case OK_BAL:
            if (parse_double("--balanced", optarg, 0.0, &a->o.balance)) return CLI_USAGE;
            break;
        case OK_INIT:
            if (!strcmp(optarg, "kmeans++") || !strcmp(optarg, "k-means++"))
                a->o.init = NS_KMEANS_PLUSPLUS;
            else if (!strcmp(optarg, "random")) a->o.init = NS_KMEANS_RANDOM;
            else return cli_usage_error("--init '%s': expected kmeans++ or random", optarg);
            break;
        case OK_ITERS:
            if (cli_parse_i64("--iterations", optarg, 0, 1000000, &a->o.max_iterations))
                return CLI_USAGE;
            break;
        case OK_TOL:
            if (parse_double("--tolerance", optarg, 0.0, &a->o.tolerance)) return CLI_USAGE;
            break;
        case OK_SEED:
            if (cli_parse_u64("--seed", optarg, &a->o.seed)) return CLI_USAGE;
            break;
        case OK_BACKEND:
            if (cli_parse_backend("--backend", optarg, &a->backend)) return CLI_USAGE;
            break;
        case OK_THREADS:
            if (cli_parse_i64("--threads", optarg, 0, 4096, &v)) return CLI_USAGE;
            a->threads = (int)v;
            break;
        case OK_FORCE: a->force = 1; break;
        case OK_QUIET: a->quiet = 1; break;
        case ':': return cli_usage_error("option '%s' needs a value", argv[optind - 1]);
        default: return cli_usage_error("unknown option '%s'", argv[optind - 1]);
        }
    }
    if (optind < argc) return cli_usage_error("unexpected argument '%s'", argv[optind]);
    if (!a->xpath || !a->k || !a->out)
        return cli_usage_error("--embeddings, -k and --out are required");
    return -1;
}

/* A C-order .npy into an open output: header then the bytes. */
static int write_npy(cli_output *o, const char *descr, int64_t rows, int64_t cols,
                     const void *data, size_t bytes) {
    if (cli_npy_write_header(o->f, descr, rows, cols) || fwrite(data, 1, bytes, o->f) != bytes) {
        cli_error("%s: write failed", o->path);
        return -1;
    }
    return 0;
}

/* Both outputs written in full before either replaces its path. */
static int write_outputs(const kmeans_args *a, int64_t n, int64_t d, const int64_t *labels,
                         const float *cent) {
    cli_output lo, co;
    memset(&co, 0, sizeof co);
    if (cli_output_open(&lo, a->out, a->force)) return -1;
    if (a->cpath && cli_output_open(&co, a->cpath, a->force)) {
        cli_output_abort(&lo);
        return -1;
    }
    if (write_npy(&lo, "<i8", n, 0, labels, (size_t)n * 8) ||
        (a->cpath && write_npy(&co, "<f4", a->k, d, cent, (size_t)(a->k * d) * 4)) ||
        cli_output_commit(&lo) || (a->cpath && cli_output_commit(&co))) {
        cli_output_abort(&lo);
        if (a->cpath) cli_output_abort(&co);
        return -1;
    }
    return 0;
}

typedef struct {
    ns_context *ctx;
    ns_npy_file *file;
    int64_t *labels, *dlabels;
    float *cent, *dcent;
    double *inertia;
} kmeans_run;

static void kmeans_free(kmeans_run *r) {
    if (r->ctx) {
        cli_dev_free(r->ctx, r->dlabels, r->labels);
        cli_dev_free(r->ctx, r->dcent, r->cent);
    }
    free(r->labels);
    free(r->cent);
    free(r->inertia);
    if (r->file) ns_npy_close(r->file);
    ns_context_destroy(r->ctx);
}

static int kmeans_cluster(kmeans_args *a, kmeans_run *r) {
    if (ns_npy_open(a->xpath, &r->file) != NS_OK) {
        cli_error("%s", ns_last_error(NULL));
        return CLI_RUNTIME;
    }
    const ns_matrix x = ns_npy_matrix(r->file);
    if (a->k > x.rows)
        return cli_usage_error("-k (%lld) is larger than the number of rows of %s (%lld)",
                               (long long)a->k, a->xpath, (long long)x.rows);
    if (cli_context_create(a->backend, a->threads, &r->ctx)) return CLI_RUNTIME;
    const size_t nl = (size_t)x.rows * 8, nc = (size_t)(a->k * x.cols) * 4;
    r->labels = malloc(nl);
    r->cent = malloc(nc);
    r->inertia = malloc((size_t)(a->o.max_iterations + 1) * sizeof(double));
    r->dlabels = cli_dev_alloc(r->ctx, nl);
    r->dcent = cli_dev_alloc(r->ctx, nc);
    if (!r->labels || !r->cent || !r->inertia || !r->dlabels || !r->dcent) {
        cli_error("out of memory for %lld labels and %lld x %lld centroids", (long long)x.rows,
                  (long long)a->k, (long long)x.cols);
        return CLI_RUNTIME;
    }
    cli_progress prog;
    const int pp = a->o.init == NS_KMEANS_PLUSPLUS;
    cli_progress_init(&prog, "k-means", (pp ? a->k : 0) + a->o.max_iterations + 1, a->quiet);
    prog.span = prog.total;
    a->o.progress = cli_progress_update;
    a->o.progress_user = &prog;
    int64_t its = 0;
    const double t0 = cli_now();
    if (ns_kmeans(r->ctx, x, a->k, &a->o, r->dlabels, r->dcent, r->inertia, &its) != NS_OK) {
        cli_error("%s", ns_last_error(r->ctx));
        return CLI_RUNTIME;
    }
    cli_progress_finish(&prog);
    if (cli_dev_get(r->ctx, r->labels, r->dlabels, nl) ||
        cli_dev_get(r->ctx, r->cent, r->dcent, nc))
        return CLI_RUNTIME;
    if (write_outputs(a, x.rows, x.cols, r->labels, r->cent)) return CLI_RUNTIME;
    if (!a->quiet)
        printf("k-means: %lld rows x %lld dims into %lld clusters, %lld updates, inertia %.6g "
               "(after init %.6g), %.2fs\n",
               (long long)x.rows, (long long)x.cols, (long long)a->k, (long long)its,
               r->inertia[its], r->inertia[0], cli_now() - t0);
    return CLI_OK;
}

int cli_cmd_kmeans(int argc, char **argv) {
    kmeans_args a;
    int u = kmeans_parse(argc, argv, &a);
    if (u >= 0) return u;
    const cli_named_path in[] = {{"--embeddings", a.xpath}};
    const cli_named_path out[] = {{"--out", a.out}, {"--centroids", a.cpath}};
    if ((u = cli_check_files(in, 1, out, 2, a.force))) return u;
    cli_install_signal_cleanup();
    kmeans_run r;
    memset(&r, 0, sizeof r);
    const int rc = kmeans_cluster(&a, &r);
    kmeans_free(&r);
    return rc;
}
