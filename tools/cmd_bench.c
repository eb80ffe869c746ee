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

int cli_cmd_bench_mine(int argc, char **argv) {
    static const struct option longopts[] = {
        {"help", no_argument, 0, 'h'}, {"queries", required_argument, 0, B_QUERIES},
        {"corpus", required_argument, 0, B_CORPUS}, {"random", required_argument, 0, B_RANDOM},
        {"k", required_argument, 0, 'k'}, {"cosine", no_argument, 0, B_COSINE},
        {"repeat", required_argument, 0, B_REPEAT},
        {"device-corpus", no_argument, 0, B_DEVCORPUS},
        {"backend", required_argument, 0, B_BACKEND},
        {"threads", required_argument, 0, B_THREADS}, {"seed", required_argument, 0, B_SEED},
        {"json", no_argument, 0, B_JSON}, {0, 0, 0, 0}};
    const char *qpath = NULL, *cpath = NULL;
    long long rb = 0, rn = 0, rd = 0;
    int64_t k = 100, repeat = 5, threads = 0;
    uint64_t seed = 0;
    int cosine = 0, dev_corpus = 0, json = 0;
    ns_backend backend = NS_BACKEND_AUTO;
    opterr = 0;
    optind = 1;
    int c;
    while ((c = getopt_long(argc, argv, ":hk:", longopts, NULL)) != -1) {
        switch (c) {
        case 'h': fputs(BENCH_HELP, stdout); return CLI_OK;
        case B_QUERIES: qpath = optarg; break;
        case B_CORPUS: cpath = optarg; break;
        case B_RANDOM: {
            char tail;
            if (sscanf(optarg, "%lld,%lld,%lld%c", &rb, &rn, &rd, &tail) != 3 || rb < 1 || rn < 1 ||
                rd < 1)
                return cli_usage_error("--random '%s': expected B,N,D (three positive integers)",
                                       optarg);
            break;
        }
        case 'k': if (cli_parse_i64("-k", optarg, 1, NS_MAX_K, &k)) return CLI_USAGE; break;
        case B_COSINE: cosine = 1; break;
        case B_REPEAT: if (cli_parse_i64("--repeat", optarg, 1, 1000, &repeat)) return CLI_USAGE; break;
        case B_DEVCORPUS: dev_corpus = 1; break;
        case B_BACKEND:
            if (!strcmp(optarg, "auto")) backend = NS_BACKEND_AUTO;
            else if (!strcmp(optarg, "cpu")) backend = NS_BACKEND_CPU;
            else if (!strcmp(optarg, "cuda")) backend = NS_BACKEND_CUDA;
            else return cli_usage_error("--backend '%s': expected auto, cpu or cuda", optarg);
            break;
        case B_THREADS: if (cli_parse_i64("--threads", optarg, 0, 4096, &threads)) return CLI_USAGE; break;
        case B_SEED: if (cli_parse_u64("--seed", optarg, &seed)) return CLI_USAGE; break;
        case B_JSON: json = 1; break;
        case ':': return cli_usage_error("option '%s' needs a value", argv[optind - 1]);
        default: return cli_usage_error("unknown option '%s'", argv[optind - 1]);
        }
    }
    if (optind < argc) return cli_usage_error("unexpected argument '%s'", argv[optind]);
    if (!rb && (!qpath || !cpath))
        return cli_usage_error("pass --queries and --corpus, or --random B,N,D");
    if (rb && (qpath || cpath)) return cli_usage_error("--random excludes --queries/--corpus");

    int rc = CLI_RUNTIME;
    cli_embeddings Q = {0}, C = {0};
    float *rq = NULL, *rc_ = NULL;
    ns_context *ctx = NULL;
    void *d_q = NULL, *d_c = NULL, *d_i = NULL, *d_s = NULL;
    double *times = NULL;
    ns_matrix qm, cm;
    if (rb) {
        rq = malloc((size_t)(rb * rd) * 4);
        rc_ = malloc((size_t)(rn * rd) * 4);
        if (!rq || !rc_) {
            cli_error("out of memory for --random %lld,%lld,%lld", rb, rn, rd);
            goto done;
        }
        uint64_t s = seed * 0x9E3779B97F4A7C15ull + 0x1234567ull;
        fill_normal(rq, rb * rd, &s);
        fill_normal(rc_, rn * rd, &s);
        ns_matrix a = {rq, NS_F32, rb, rd, rd}, b = {rc_, NS_F32, rn, rd, rd};
        qm = a;
        cm = b;
    } else {
        if (cli_embeddings_load(qpath, &Q) || cli_embeddings_load(cpath, &C)) goto done;
        if (Q.m.cols != C.m.cols) {
            cli_error("dimension mismatch: %s has %lld columns but %s has %lld", qpath,
                      (long long)Q.m.cols, cpath, (long long)C.m.cols);
            goto done;
        }
        qm = Q.m;
        cm = C.m;
    }
    if (k > cm.rows) {
        cli_error("-k (%lld) is larger than the corpus (%lld rows)", (long long)k,
                  (long long)cm.rows);
        goto done;
    }
    ns_context_options co = NS_CONTEXT_OPTIONS_INIT;
    co.backend = backend;
    co.threads = (int)threads;
    if (ns_context_create(&ctx, &co) != NS_OK) {
        cli_error("cannot create a context: %s", ns_last_error(NULL));
        goto done;
    }
    int cuda = ns_context_backend(ctx) == NS_BACKEND_CUDA;
    size_t qes = qm.dtype == NS_F32 ? 4 : 2, ces = cm.dtype == NS_F32 ? 4 : 2;
    int64_t qld = qm.ld ? qm.ld : qm.cols, cld = cm.ld ? cm.ld : cm.cols;
    const void *qhost = qm.data, *chost = cm.data;
    d_q = cli_dev_put(ctx, qhost, (size_t)(qm.rows * qld) * qes);
    if (cuda && dev_corpus) d_c = cli_dev_put(ctx, chost, (size_t)(cm.rows * cld) * ces);
    d_i = cli_dev_alloc(ctx, (size_t)(qm.rows * k) * 8);
    d_s = cli_dev_alloc(ctx, (size_t)(qm.rows * k) * 4);
    times = malloc((size_t)repeat * sizeof(double));
    if (!d_q || (cuda && dev_corpus && !d_c) || !d_i || !d_s || !times) goto done;
    qm.data = d_q;
    if (d_c) cm.data = d_c;
    ns_mine_options mo = NS_MINE_OPTIONS_INIT;
    mo.flags = cosine ? NS_NORMALIZE : 0u;
    for (int64_t r = -1; r < repeat; r++) { /* r = -1: warm-up (workspace, BLAS threads) */
        double t0 = cli_now();
        ns_status st = ns_mine_topk(ctx, qm, cm, k, &mo, d_i, d_s);
        int64_t probe;
        /* Copying one result back waits for a CUDA stream; a no-op on the CPU. */
        if (st == NS_OK && cli_dev_get(ctx, &probe, d_i, 8)) st = NS_ERR_CUDA;
        double t = cli_now() - t0;
        if (st != NS_OK) {
            cli_error("ns_mine_topk failed: %s", ns_last_error(ctx));
            goto done;
        }
        if (r >= 0) times[r] = t;
    }
    qsort(times, (size_t)repeat, sizeof(double), cmp_double);
    double best = times[0], median = times[repeat / 2];
    double flops = 2.0 * (double)qm.rows * (double)cm.rows * (double)qm.cols;
    const char *bname = cuda ? "cuda" : "cpu";
    const char *where = cuda ? (d_c ? "device" : "host") : "host";
    if (json)
        printf("{\"op\": \"mine_topk\", \"backend\": \"%s\", \"queries\": %lld, \"corpus\": %lld, "
               "\"dim\": %lld, \"k\": %lld, \"cosine\": %d, \"corpus_memory\": \"%s\", "
               "\"threads\": %lld, \"repeat\": %lld, \"best_s\": %.6f, \"median_s\": %.6f, "
               "\"queries_per_s\": %.1f, \"gflops\": %.2f}\n",
               bname, (long long)qm.rows, (long long)cm.rows, (long long)qm.cols, (long long)k,
               cosine, where, (long long)threads, (long long)repeat, best, median,
               (double)qm.rows / median, flops / median * 1e-9);
    else
        printf("mine_topk %s: %lld queries x %lld corpus rows x %lld dims, k=%lld%s (corpus in %s "
               "memory)\n  best %.4fs, median %.4fs of %lld runs: %.0f queries/s, %.1f GFLOP/s\n",
               bname, (long long)qm.rows, (long long)cm.rows, (long long)qm.cols, (long long)k,
               cosine ? ", cosine" : "", where, best, median, (long long)repeat,
               (double)qm.rows / median, flops / median * 1e-9);
    rc = CLI_OK;
done:
    if (ctx) {
        cli_dev_free(ctx, d_q, rb ? (const void *)rq : Q.m.data);
        cli_dev_free(ctx, d_c, NULL);
        cli_dev_free(ctx, d_i, NULL);
        cli_dev_free(ctx, d_s, NULL);
        ns_context_destroy(ctx);
    }
    free(times);
    free(rq);
    free(rc_);
    cli_embeddings_free(&Q);
    cli_embeddings_free(&C);
    return rc;
}
