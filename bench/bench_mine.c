/*
 * Mining benchmark: exact top-k with ns_mine_topk beside the f32 GEMM alone (ns_sgemm_nt: the
 * GEMM library this build uses, printed with the results) for the same
 * shape, in one run on the same data, so the ratio says what the selection costs on top of the
 * product it cannot avoid.
 *
 *   sgemm (blocked)  the product computed corpus block × query tile into one reused score tile,
 *                    with the same blocking ns_mine_topk uses (ns_mine_*_block, src/cpu/cpu_tiles.h)
 *   sgemm (full)     one sgemm call writing the whole Q×N matrix (skipped when it would not fit:
 *                    --full 0/1 forces it)
 *   ns_mine_topk     exact top-k per query (each tile merged into per-query reservoirs)
 *
 * Usage: bench_mine [--queries 4096] [--corpus 200000] [--dim 384] [--k 100] [--threads 0]
 *                   [--dtype f32|f16|bf16] [--repeat 1] [--full -1|0|1] [--json PATH]
 *                   [--only mine|sgemm]   (one side alone, for profiling)
 * --dtype sets the corpus and query storage for mining; the sgemm baselines are always f32.
 * Each timing is the best of --repeat interleaved runs (the machine may be shared; the CPU-time
 * columns help there). Prints a table; --json writes the same numbers.
 */
#define _POSIX_C_SOURCE 200809L
#include "bench_util.h"
#include "ns_internal.h"
#include "cpu_tiles.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    int64_t Q, N, d, k;
    int threads, repeat, full;
    const char *only; /* "mine" or "sgemm": run one side (for profiling) */
    ns_dtype dtype;
    const char *json;
} args;

static void usage(void) {
    fprintf(stderr, "usage: bench_mine [--queries Q] [--corpus N] [--dim d] [--k k] [--threads T]\n"
                    "                  [--dtype f32|f16|bf16] [--repeat R] [--full -1|0|1] [--json PATH]\n");
    exit(2);
}

static args parse(int argc, char **argv) {
    args a = {4096, 200000, 384, 100, 0, 1, -1, "", NS_F32, NULL};
    for (int i = 1; i < argc; i++) {
        const char *f = argv[i];
        if (i + 1 >= argc) usage();
        const char *v = argv[++i];
        if (!strcmp(f, "--queries")) a.Q = atoll(v);
        else if (!strcmp(f, "--corpus")) a.N = atoll(v);
        else if (!strcmp(f, "--dim")) a.d = atoll(v);
        else if (!strcmp(f, "--k")) a.k = atoll(v);
        else if (!strcmp(f, "--threads")) a.threads = atoi(v);
        else if (!strcmp(f, "--repeat")) a.repeat = atoi(v);
        else if (!strcmp(f, "--full")) a.full = atoi(v);
        else if (!strcmp(f, "--json")) a.json = v;
        else if (!strcmp(f, "--only")) a.only = v;
        else if (!strcmp(f, "--dtype")) {
            if (!strcmp(v, "f32")) a.dtype = NS_F32;
            else if (!strcmp(v, "f16")) a.dtype = NS_F16;
            else if (!strcmp(v, "bf16")) a.dtype = NS_BF16;
            else usage();
        } else usage();
    }
    if (a.Q < 1 || a.N < 1 || a.d < 1 || a.k < 1 || a.repeat < 1) usage();
    return a;
}

/* A matrix in the requested dtype over f32 values (half copies are made once, outside timing). */
static ns_matrix as_dtype(const float *x, int64_t rows, int64_t cols, ns_dtype t, void **owned) {
    ns_matrix m = {x, NS_F32, rows, cols, 0};
    *owned = NULL;
    if (t == NS_F32) return m;
    size_t n = (size_t)(rows * cols);
    uint16_t *h = (uint16_t *)malloc(n * sizeof(uint16_t));
    if (!h) {
        fprintf(stderr, "bench_mine: out of memory\n");
        exit(1);
    }
    for (size_t i = 0; i < n; i++) h[i] = t == NS_F16 ? ns_f32_to_f16(x[i]) : ns_f32_to_bf16(x[i]);
    m.data = h;
    m.dtype = t;
    *owned = h;
    return m;
}

/* Wall and CPU seconds of one run; keep_best keeps the lower wall time of repeats. */
typedef struct {
    double wall, cpu;
} timing;

static void keep_best(timing *best, timing t) {
    if (t.wall < best->wall) *best = t;
}

/* The baselines call ns_sgemm_nt directly, outside any library operation: without
 * ns_cpu_threads_enter they ran on OpenMP's default team (every core) whatever --threads said,
 * so at --threads 1 a two-thread sgemm was compared with one-thread mining (and its "CPU s"
 * counted two threads). Each baseline runs on the context's thread count, as mining does. */
static timing time_blocked_sgemm(const args *a, const float *q, const float *c, float *tile) {
    const int64_t qb = ns_mine_query_block(a->Q);
    const int64_t cb = ns_mine_corpus_block(a->Q, a->N, a->d, a->dtype != NS_F32);
    double t0 = bench_now(), u0 = bench_cpu_now();
    for (int64_t c0 = 0; c0 < a->N; c0 += cb) {
        int64_t nc = a->N - c0 < cb ? a->N - c0 : cb;
        for (int64_t q0 = 0; q0 < a->Q; q0 += qb) {
            int64_t nq = a->Q - q0 < qb ? a->Q - q0 : qb;
            ns_sgemm_nt(nq, nc, a->d, 1.0f, q + q0 * a->d, a->d, c + c0 * a->d, a->d, 0.0f, tile,
                        nc);
        }
    }
    timing t = {bench_now() - t0, bench_cpu_now() - u0};
    return t;
}

int main(int argc, char **argv) {
    args a = parse(argc, argv);
    const double flop = 2.0 * (double)a.Q * (double)a.N * (double)a.d;
    float *q = (float *)malloc((size_t)(a.Q * a.d) * sizeof(float));
    float *c = (float *)malloc((size_t)(a.N * a.d) * sizeof(float));
    int64_t *index = (int64_t *)malloc((size_t)(a.Q * a.k) * sizeof(int64_t));
    float *score = (float *)malloc((size_t)(a.Q * a.k) * sizeof(float));
    const int64_t tile_rows = ns_mine_query_block(a.Q);
    const int64_t tile_cols = ns_mine_corpus_block(a.Q, a.N, a.d, a.dtype != NS_F32);
    float *tile = (float *)malloc((size_t)(tile_rows * tile_cols) * sizeof(float));
    if (!q || !c || !index || !score || !tile) {
        fprintf(stderr, "bench_mine: out of memory\n");
        return 1;
    }
    bench_fill_uniform(q, (size_t)(a.Q * a.d), 1, -1.f, 1.f);
    bench_fill_uniform(c, (size_t)(a.N * a.d), 2, -1.f, 1.f);
    void *qh, *ch;
    ns_matrix qm = as_dtype(q, a.Q, a.d, a.dtype, &qh), cm = as_dtype(c, a.N, a.d, a.dtype, &ch);

    ns_context_options o = NS_CONTEXT_OPTIONS_INIT;
    o.backend = NS_BACKEND_CPU;
    o.threads = a.threads;
    ns_context *ctx;
    if (ns_context_create(&ctx, &o) != NS_OK) {
        fprintf(stderr, "bench_mine: %s\n", ns_last_error(NULL));
        return 1;
    }
    const int threads = ns_threads(ctx);

    /* Warm-up: OpenBLAS's thread pool, the workspace, the pages of every buffer. */
    {
        ns_matrix part = cm;
        part.rows = a.N < 2 * NS_MINE_CORPUS_BLOCK ? a.N : 2 * NS_MINE_CORPUS_BLOCK;
        int64_t k = a.k < part.rows ? a.k : part.rows;
        if (ns_mine_topk(ctx, qm, part, k, NULL, index, score) != NS_OK) {
            fprintf(stderr, "bench_mine: %s\n", ns_last_error(ctx));
            return 1;
        }
        ns_sgemm_nt(a.Q < 256 ? a.Q : 256, 256 < a.N ? 256 : a.N, a.d, 1.f, q, a.d, c, a.d, 0.f,
                    tile, 256 < a.N ? 256 : a.N);
    }

    timing t_block = {1e30, 0}, t_full = {-1, -1}, t_mine = {1e30, 0};
    const int run_sgemm = strcmp(a.only, "mine") != 0, run_mine = strcmp(a.only, "sgemm") != 0;
    /* The full product needs Q·N floats; by default only when that is under 8 GiB. */
    double full_bytes = (double)a.Q * (double)a.N * 4.0;
    int do_full = a.full >= 0 ? a.full : full_bytes < 8.0 * 1024 * 1024 * 1024;
    if (!run_sgemm) do_full = 0;
    float *full = do_full ? (float *)malloc((size_t)full_bytes) : NULL;
    if (do_full && !full) do_full = 0;
    if (full) memset(full, 0, (size_t)full_bytes); /* page faults outside the timing */
    if (full) t_full.wall = 1e30;
    /* Interleaved repeats (sgemm, mining, full product, again...), best of each: on a shared
     * machine the load drifts, and interleaving keeps the ratio fair. */
    int sgemm_threads = 0; /* the team the baselines' GEMM ran on (ns_gemm_last_threads) */
    for (int r = 0; r < a.repeat; r++) {
        if (run_sgemm) {
            const int saved = ns_cpu_threads_enter(ctx);
            keep_best(&t_block, time_blocked_sgemm(&a, q, c, tile));
            sgemm_threads = ns_gemm_last_threads();
            ns_cpu_threads_leave(saved);
        }
        if (run_mine) {
            double t0 = bench_now(), u0 = bench_cpu_now();
            if (ns_mine_topk(ctx, qm, cm, a.k, NULL, index, score) != NS_OK) {
                fprintf(stderr, "bench_mine: %s\n", ns_last_error(ctx));
                return 1;
            }
            timing t = {bench_now() - t0, bench_cpu_now() - u0};
            keep_best(&t_mine, t);
        }
        if (full) {
            const int saved = ns_cpu_threads_enter(ctx);
            double t0 = bench_now(), u0 = bench_cpu_now();
            ns_sgemm_nt(a.Q, a.N, a.d, 1.0f, q, a.d, c, a.d, 0.0f, full, a.N);
            timing t = {bench_now() - t0, bench_cpu_now() - u0};
            ns_cpu_threads_leave(saved);
            keep_best(&t_full, t);
        }
    }
    /* A ratio of two thread counts is no ratio: refuse to print one. */
    if (run_sgemm && sgemm_threads != threads) {
        fprintf(stderr, "bench_mine: the sgemm baseline ran on %d threads, mining on %d\n",
                sgemm_threads, threads);
        return 1;
    }
    free(full);
    /* A sanity check that the answer is a top-k: row 0's scores descend. */
    for (int64_t j = 1; run_mine && j < a.k && j < a.N; j++)
        if (score[j] > score[j - 1]) {
            fprintf(stderr, "bench_mine: scores of query 0 are not sorted\n");
            return 1;
        }

    const char *dt = ns_dtype_name(a.dtype);
    printf("mining Q=%lld N=%lld d=%lld k=%lld (%s), %d threads, best of %d\n", (long long)a.Q,
           (long long)a.N, (long long)a.d, (long long)a.k, dt, threads, a.repeat);
    printf("CPU GEMM: %s; the sgemm rows are ns_sgemm_nt (the f32 GEMM)\n", ns_gemm_name());
    printf("%-16s %9s %9s %11s %9s %11s\n", "", "wall s", "GFLOP/s", "wall ratio", "CPU s",
           "CPU ratio");
    const char *names[3] = {"sgemm (blocked)", "sgemm (full)", "ns_mine_topk"};
    const timing *rows[3] = {&t_block, &t_full, &t_mine};
    for (int i = 0; i < 3; i++) {
        if ((i == 1 && !do_full) || (i == 0 && !run_sgemm) || (i == 2 && !run_mine)) continue;
        printf("%-16s %9.3f %9.1f ", names[i], rows[i]->wall, flop / rows[i]->wall * 1e-9);
        if (run_sgemm) /* ratios to the baseline only when it ran (--only mine: none) */
            printf("%11.3f %9.3f %11.3f\n", rows[i]->wall / t_block.wall, rows[i]->cpu,
                   rows[i]->cpu / t_block.cpu);
        else
            printf("%11s %9.3f %11s\n", "-", rows[i]->cpu, "-");
    }
    double rss = bench_peak_rss_mib();
    printf("ratios are to sgemm (blocked); peak RSS %.0f MiB\n", rss);

    if (a.json) {
        FILE *f = fopen(a.json, "w");
        if (!f) {
            fprintf(stderr, "bench_mine: cannot write %s\n", a.json);
            return 1;
        }
        fprintf(f,
                "{\n  \"benchmark\": \"mine_topk_cpu\",\n  \"gemm\": \"%s\",\n  \"queries\": %lld,\n  \"corpus\": %lld,\n"
                "  \"dim\": %lld,\n  \"k\": %lld,\n  \"dtype\": \"%s\",\n  \"threads\": %d,\n"
                "  \"repeat\": %d,\n  \"corpus_block\": %d,\n  \"query_block\": %d,\n"
                "  \"sgemm_blocked_s\": %.6f,\n  \"sgemm_blocked_cpu_s\": %.6f,\n"
                "  \"sgemm_full_s\": %.6f,\n  \"sgemm_full_cpu_s\": %.6f,\n"
                "  \"mine_s\": %.6f,\n  \"mine_cpu_s\": %.6f,\n  \"mine_gflops\": %.3f,\n"
                "  \"ratio_mine_vs_sgemm_blocked\": %.4f,\n  \"ratio_mine_vs_sgemm_full\": %.4f,\n"
                "  \"cpu_ratio_mine_vs_sgemm_blocked\": %.4f,\n  \"peak_rss_mib\": %.1f\n}\n",
                ns_gemm_name(), (long long)a.Q, (long long)a.N, (long long)a.d, (long long)a.k,
                dt, threads, a.repeat, (int)tile_cols, (int)tile_rows, t_block.wall, t_block.cpu,
                t_full.wall, t_full.cpu, t_mine.wall, t_mine.cpu, flop / t_mine.wall * 1e-9,
                run_sgemm ? t_mine.wall / t_block.wall : -1.0,
                do_full ? t_mine.wall / t_full.wall : -1.0,
                run_sgemm ? t_mine.cpu / t_block.cpu : -1.0, rss);
        fclose(f);
    }
    ns_context_destroy(ctx);
    free(qh);
    free(ch);
    free(q);
    free(c);
    free(index);
    free(score);
    free(tile);
    return 0;
}
