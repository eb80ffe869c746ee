/* negsamp bench-mine: times ns_mine_topk on given embeddings or a random corpus, so the mining
 * speed can be measured without writing outputs (the bench/ runner calls it). */
#define _GNU_SOURCE
#include "cli.h"

#include <getopt.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

static const char BENCH_HELP[] =
    "usage: negsamp bench-mine (--queries Q --corpus C | --random B,N,D) [options]\n"
    "\n"
    "Times exact top-k mining (ns_mine_topk) and prints the best and median of the runs,\n"
    "queries per second and the GEMM rate (2*B*N*D flops per run).\n"
    "\n"
    "Options:\n"
    "  --queries FILE, --corpus FILE  embeddings (.npy or .fvecs)\n"
    "  --random B,N,D     B queries and N corpus rows of dimension D, standard normal f32\n"
    "  -k, --k K          neighbours per query (default 100)\n"
    "  --cosine           normalise the rows (NS_NORMALIZE)\n"
    "  --repeat R         timed runs (default 5), after one warm-up run\n"
    "  --device-corpus    CUDA: copy the corpus to the device first (default: streamed from host)\n"
    "  --backend B        auto | cpu | cuda (default auto)\n"
    "  --threads N        CPU threads (default all)\n"
    "  --seed N           seed of --random (default 0)\n"
    "  --json             one JSON line instead of text\n"
    "\n"
    "Example:\n"
    "  negsamp bench-mine --random 4096,100000,128 -k 100 --threads 2\n";

enum { B_QUERIES = 500, B_CORPUS, B_RANDOM, B_COSINE, B_REPEAT, B_DEVCORPUS, B_BACKEND, B_THREADS,
       B_SEED, B_JSON };

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Standard normal floats from a seeded xorshift + Box-Muller (no libc rand state). */
static void fill_normal(float *x, int64_t n, uint64_t *s) {
    for (int64_t i = 0; i < n; i += 2) {
        double u[2];
        for (int j = 0; j < 2; j++) {
            *s ^= *s << 13, *s ^= *s >> 7, *s ^= *s << 17;
            u[j] = ((double)(*s >> 11) + 0.5) / 9007199254740992.0;
        }
        double r = sqrt(-2 * log(u[0])), t = 6.283185307179586 * u[1];
        x[i] = (float)(r * cos(t));
        if (i + 1 < n) x[i + 1] = (float)(r * sin(t));
    }
}

typedef struct {
    const char *qpath, *cpath;
    long long rb, rn, rd; /* --random B,N,D */
    int64_t k, repeat, threads;
    uint64_t seed;
    int cosine, dev_corpus, json;
    ns_backend backend;
} bench_args;

/* --random B,N,D: three decimal integers (B, N ≤ 2^31, D ≤ 2^20). 0 or -1 (message printed). */
static int parse_random(const char *arg, bench_args *a) {
    static const char *names[3] = {"--random B", "--random N", "--random D"};
    static const int64_t hi[3] = {INT64_C(1) << 31, INT64_C(1) << 31, INT64_C(1) << 20};
    int64_t v[3];
    const char *p = arg;
    for (int i = 0; i < 3; i++) {
        size_t n = strcspn(p, ",");
        char part[32];
        if ((i < 2) != (p[n] == ',') || n >= sizeof part) {
            cli_usage_error("--random '%s': expected B,N,D (three positive integers)", arg);
            return -1;
        }
        memcpy(part, p, n);
        part[n] = '\0';
        if (cli_parse_i64(names[i], part, 1, hi[i], &v[i])) return -1;
        p += n + 1;
    }
    a->rb = v[0];
    a->rn = v[1];
    a->rd = v[2];
    return 0;
}

/* Returns -1 to go on, or the exit status (--help, a usage error). */
static int bench_parse(int argc, char **argv, bench_args *a) {
    static const struct option longopts[] = {
        {"help", no_argument, 0, 'h'}, {"queries", required_argument, 0, B_QUERIES},
        {"corpus", required_argument, 0, B_CORPUS}, {"random", required_argument, 0, B_RANDOM},
        {"k", required_argument, 0, 'k'}, {"cosine", no_argument, 0, B_COSINE},
        {"repeat", required_argument, 0, B_REPEAT},
        {"device-corpus", no_argument, 0, B_DEVCORPUS},
        {"backend", required_argument, 0, B_BACKEND},
        {"threads", required_argument, 0, B_THREADS}, {"seed", required_argument, 0, B_SEED},
        {"json", no_argument, 0, B_JSON}, {0, 0, 0, 0}};
    memset(a, 0, sizeof *a);
    a->k = 100;
    a->repeat = 5;
    a->backend = NS_BACKEND_AUTO;
    opterr = 0;
    optind = 1;
    int c, bad = 0;
    while (!bad && (c = getopt_long(argc, argv, ":hk:", longopts, NULL)) != -1) {
        switch (c) {
        case 'h': fputs(BENCH_HELP, stdout); return CLI_OK;
        case B_QUERIES: a->qpath = optarg; break;
        case B_CORPUS: a->cpath = optarg; break;
        case B_RANDOM: bad = parse_random(optarg, a); break;
        case 'k': bad = cli_parse_i64("-k", optarg, 1, NS_MAX_K, &a->k); break;
        case B_COSINE: a->cosine = 1; break;
        case B_REPEAT: bad = cli_parse_i64("--repeat", optarg, 1, 1000, &a->repeat); break;
        case B_DEVCORPUS: a->dev_corpus = 1; break;
        case B_BACKEND: bad = cli_parse_backend("--backend", optarg, &a->backend); break;
        case B_THREADS: bad = cli_parse_i64("--threads", optarg, 0, 4096, &a->threads); break;
        case B_SEED: bad = cli_parse_u64("--seed", optarg, &a->seed); break;
        case B_JSON: a->json = 1; break;
        case ':': return cli_usage_error("option '%s' needs a value", argv[optind - 1]);
        default: return cli_usage_error("unknown option '%s'", argv[optind - 1]);
        }
    }
    if (bad) return CLI_USAGE;
    if (optind < argc) return cli_usage_error("unexpected argument '%s'", argv[optind]);
    if (!a->rb && (!a->qpath || !a->cpath))
        return cli_usage_error("pass --queries and --corpus, or --random B,N,D");
    if (a->rb && (a->qpath || a->cpath))
        return cli_usage_error("--random excludes --queries/--corpus");
    return -1;
}

typedef struct {
    cli_embeddings Q, C;
    float *rq, *rc;
    ns_matrix qm, cm;
    ns_context *ctx;
    void *d_q, *d_c, *d_i, *d_s;
    double *times;
} bench_run;

/* The queries and corpus: random normal rows, or the files. */
static int bench_inputs(const bench_args *a, bench_run *r) {
    if (!a->rb) {
        if (cli_embeddings_load_pair(a->qpath, &r->Q, a->cpath, &r->C)) return -1;
        r->qm = r->Q.m;
        r->cm = r->C.m;
        return 0;
    }
    r->rq = malloc((size_t)(a->rb * a->rd) * 4);
    r->rc = malloc((size_t)(a->rn * a->rd) * 4);
    if (!r->rq || !r->rc) {
        cli_error("out of memory for --random %lld,%lld,%lld", a->rb, a->rn, a->rd);
        return -1;
    }
    uint64_t s = a->seed * 0x9E3779B97F4A7C15ull + 0x1234567ull;
    fill_normal(r->rq, a->rb * a->rd, &s);
    fill_normal(r->rc, a->rn * a->rd, &s);
    ns_matrix q = {r->rq, NS_F32, a->rb, a->rd, a->rd}, c = {r->rc, NS_F32, a->rn, a->rd, a->rd};
    r->qm = q;
    r->cm = c;
    return 0;
}

/* The context and the device copies (the corpus only with --device-corpus). */
static int bench_prepare(const bench_args *a, bench_run *r) {
    if (a->k > r->cm.rows) {
        cli_error("-k (%lld) is larger than the corpus (%lld rows)", (long long)a->k,
                  (long long)r->cm.rows);
        return -1;
    }
    if (cli_context_create(a->backend, (int)a->threads, &r->ctx)) return -1;
    int cuda = ns_context_backend(r->ctx) == NS_BACKEND_CUDA;
    const ns_matrix *qm = &r->qm, *cm = &r->cm;
    size_t qes = qm->dtype == NS_F32 ? 4 : 2, ces = cm->dtype == NS_F32 ? 4 : 2;
    int64_t qld = qm->ld ? qm->ld : qm->cols, cld = cm->ld ? cm->ld : cm->cols;
    r->d_q = cli_dev_put(r->ctx, qm->data, (size_t)(qm->rows * qld) * qes);
    if (cuda && a->dev_corpus) r->d_c = cli_dev_put(r->ctx, cm->data, (size_t)(cm->rows * cld) * ces);
    r->d_i = cli_dev_alloc(r->ctx, (size_t)(qm->rows * a->k) * 8);
    r->d_s = cli_dev_alloc(r->ctx, (size_t)(qm->rows * a->k) * 4);
    r->times = malloc((size_t)a->repeat * sizeof(double));
    if (!r->d_q || (cuda && a->dev_corpus && !r->d_c) || !r->d_i || !r->d_s || !r->times) return -1;
    return 0;
}

/* One warm-up run (workspace, BLAS threads), then the timed ones, sorted. */
static int bench_time(const bench_args *a, bench_run *r) {
    ns_matrix qm = r->qm, cm = r->cm;
    qm.data = r->d_q;
    if (r->d_c) cm.data = r->d_c;
    ns_mine_options mo = NS_MINE_OPTIONS_INIT;
    mo.flags = a->cosine ? NS_NORMALIZE : 0u;
    for (int64_t i = -1; i < a->repeat; i++) {
        double t0 = cli_now();
        ns_status st = ns_mine_topk(r->ctx, qm, cm, a->k, &mo, r->d_i, r->d_s);
        int64_t probe;
        /* Copying one result back waits for a CUDA stream; a no-op on the CPU. */
        if (st == NS_OK && cli_dev_get(r->ctx, &probe, r->d_i, 8)) st = NS_ERR_CUDA;
        double t = cli_now() - t0;
        if (st != NS_OK) {
            cli_error("ns_mine_topk failed: %s", ns_last_error(r->ctx));
            return -1;
        }
        if (i >= 0) r->times[i] = t;
    }
    qsort(r->times, (size_t)a->repeat, sizeof(double), cmp_double);
    return 0;
}

static void bench_report(const bench_args *a, const bench_run *r) {
    const ns_matrix *qm = &r->qm, *cm = &r->cm;
    int cuda = ns_context_backend(r->ctx) == NS_BACKEND_CUDA;
    double best = r->times[0], median = r->times[a->repeat / 2];
    double flops = 2.0 * (double)qm->rows * (double)cm->rows * (double)qm->cols;
    const char *bname = cuda ? "cuda" : "cpu";
    const char *where = cuda ? (r->d_c ? "device" : "host") : "host";
    if (a->json)
        printf("{\"op\": \"mine_topk\", \"backend\": \"%s\", \"queries\": %lld, \"corpus\": %lld, "
               "\"dim\": %lld, \"k\": %lld, \"cosine\": %d, \"corpus_memory\": \"%s\", "
               "\"threads\": %lld, \"repeat\": %lld, \"best_s\": %.6f, \"median_s\": %.6f, "
               "\"queries_per_s\": %.1f, \"gflops\": %.2f}\n",
               bname, (long long)qm->rows, (long long)cm->rows, (long long)qm->cols,
               (long long)a->k, a->cosine, where, (long long)a->threads, (long long)a->repeat,
               best, median, (double)qm->rows / median, flops / median * 1e-9);
    else
        printf("mine_topk %s: %lld queries x %lld corpus rows x %lld dims, k=%lld%s (corpus in %s "
               "memory)\n  best %.4fs, median %.4fs of %lld runs: %.0f queries/s, %.1f GFLOP/s\n",
               bname, (long long)qm->rows, (long long)cm->rows, (long long)qm->cols,
               (long long)a->k, a->cosine ? ", cosine" : "", where, best, median,
               (long long)a->repeat, (double)qm->rows / median, flops / median * 1e-9);
}

static void bench_free(bench_run *r) {
    if (r->ctx) {
        cli_dev_free(r->ctx, r->d_q, r->qm.data);
        cli_dev_free(r->ctx, r->d_c, NULL);
        cli_dev_free(r->ctx, r->d_i, NULL);
        cli_dev_free(r->ctx, r->d_s, NULL);
        ns_context_destroy(r->ctx);
    }
    free(r->times);
    free(r->rq);
    free(r->rc);
    cli_embeddings_free(&r->Q);
    cli_embeddings_free(&r->C);
}

int cli_cmd_bench_mine(int argc, char **argv) {
    bench_args a;
    int u = bench_parse(argc, argv, &a);
    if (u >= 0) return u;
    const cli_named_path in[] = {{"--queries", a.qpath}, {"--corpus", a.cpath}};
    if ((u = cli_check_files(in, 2, NULL, 0, 0))) return u;
    bench_run r;
    memset(&r, 0, sizeof r);
    int rc = CLI_RUNTIME;
    if (!bench_inputs(&a, &r) && !bench_prepare(&a, &r) && !bench_time(&a, &r)) {
        bench_report(&a, &r);
        rc = CLI_OK;
    }
    bench_free(&r);
    return rc;
}
