/* Filter + sampling on the CPU beside the time to read the candidates once.
 *
 *   bench_sample [--B 1000000] [--C 100] [--m 16] [--strategy simans|uniform|softmax|top]
 *                [--threads 0] [--reps 3] [--json PATH]
 *
 * Candidates: B queries × C slots of random ids and scores (s⁺ per query), like a mined list.
 * Timed, interleaved rep by rep (best of reps, wall and process CPU seconds):
 *   read     one pass summing every id and score (the memory floor of any filter or sampler);
 *   filter   ns_filter with a margin rule (s > s⁺ − 0.05) and a max-score rule;
 *   sample   ns_sample of m per query (SimANS by default), on the keep mask;
 *   sample/avx2, sample/scalar  the same draw with the AVX2 (where the CPU has it) or the
 *            scalar keys forced (the vector keys' gain);
 *   filter+sample  the two calls, as a pipeline runs them;
 *   fused    ns_filter_sample: the same work in one call (one data check, one pass per row).
 * The draws of every path are compared (they must be the same) and the result printed.
 * Prints the CPU model, the thread count and the GEMM library (not used here). */
#define _POSIX_C_SOURCE 200809L
#include "negsamp.h"
#include "bench_util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

/* Internal (src/cpu/ns_cpu.h): force the scalar (0), AVX-512 (1) or AVX2 (2) keys; -1 = the
 * CPU's widest. */
void ns_cpu_sample_keys_force(int isa);
int ns_cpu_sample_keys_isa(void);
int ns_cpu_sample_keys_supported(int isa);
const char *ns_gemm_name(void); /* the CPU GEMM the library was built with (src/cpu) */


static volatile double sink;

/* One pass over ids and scores, in parallel like the library's loops. */
static void read_once(const int64_t *id, const float *s, int64_t n, int nt) {
    double acc = 0.0;
#pragma omp parallel for num_threads(nt) reduction(+ : acc) schedule(static)
    for (int64_t t = 0; t < n; t++) acc += (double)s[t] + (double)(id[t] & 1);
    sink = acc;
}

int main(int argc, char **argv) {
    int64_t B = 1000000, C = 100, m = 16;
    int threads = 0, reps = 3;
    const char *json = NULL, *sname = "simans";
    ns_sampler strategy = NS_SAMPLE_SIMANS;
    for (int i = 1; i + 1 < argc; i += 2) {
        const char *a = argv[i], *v = argv[i + 1];
        if (!strcmp(a, "--B")) B = atoll(v);
        else if (!strcmp(a, "--C")) C = atoll(v);
        else if (!strcmp(a, "--m")) m = atoll(v);
        else if (!strcmp(a, "--threads")) threads = atoi(v);
        else if (!strcmp(a, "--reps")) reps = atoi(v);
        else if (!strcmp(a, "--json")) json = v;
        else if (!strcmp(a, "--strategy")) {
            sname = v;
            strategy = !strcmp(v, "uniform")   ? NS_SAMPLE_UNIFORM
                       : !strcmp(v, "softmax") ? NS_SAMPLE_SOFTMAX
                       : !strcmp(v, "top")     ? NS_SAMPLE_TOP
                                               : NS_SAMPLE_SIMANS;
        } else {
            fprintf(stderr, "bench_sample: unknown option %s\n", a);
            return 2;
        }
    }
    if (B < 1 || C < 1 || m < 1 || m > C || reps < 1) return 2;
    ns_context_options co = NS_CONTEXT_OPTIONS_INIT;
    co.backend = NS_BACKEND_CPU;
    co.threads = threads;
    ns_context *ctx = NULL;
    if (ns_context_create(&ctx, &co) != NS_OK) {
        fprintf(stderr, "bench_sample: %s\n", ns_last_error(NULL));
        return 1;
    }
    int nt = threads;
#ifdef _OPENMP
    if (nt <= 0) nt = omp_get_max_threads();
#else
    nt = 1;
#endif
    const int64_t n = B * C;
    int64_t *id = (int64_t *)malloc((size_t)n * 8);
    float *s = (float *)malloc((size_t)n * 4), *sp = (float *)malloc((size_t)B * 4);
    uint8_t *keep = (uint8_t *)malloc((size_t)n);
    int64_t *idx = (int64_t *)malloc((size_t)(B * m) * 8), *idx2 = (int64_t *)malloc((size_t)(B * m) * 8);
    int64_t *cnt = (int64_t *)malloc((size_t)B * 8);
    if (!id || !s || !sp || !keep || !idx || !idx2 || !cnt) {
        fprintf(stderr, "bench_sample: out of memory for B=%lld C=%lld\n", (long long)B,
                (long long)C);
        return 1;
    }
    bench_fill_uniform(s, (size_t)n, 11, -0.2f, 0.9f);
    bench_fill_uniform(sp, (size_t)B, 12, 0.5f, 1.0f);
    uint64_t st = 13;
    for (int64_t t = 0; t < n; t++) id[t] = (int64_t)(bench_next(&st) % 20000000u);

    ns_candidates cand;
    memset(&cand, 0, sizeof cand);
    cand.queries = B;
    cand.per_query = C;
    cand.id = id;
    cand.score = s;
    cand.positive_score = sp;
    ns_filter_options fo = NS_FILTER_OPTIONS_INIT;
    fo.rules = NS_FILTER_MARGIN | NS_FILTER_MAX_SCORE;
    fo.margin = 0.05f;
    fo.max_score = 0.85f;
    ns_sampler_options so = NS_SAMPLER_OPTIONS_INIT;
    so.strategy = strategy;
    so.seed = 42;
    ns_filter_counts counts;

    double t_read = 1e30, t_filter = 1e30, t_sample = 1e30, t_scalar = 1e30, t_pipe = 1e30;
    double c_read = 1e30, c_filter = 1e30, c_sample = 1e30, c_scalar = 1e30, c_pipe = 1e30;
    double t_avx2 = 1e30, c_avx2 = 1e30, t_fused = 1e30, c_fused = 1e30;
    const int vector_isa = ns_cpu_sample_keys_isa(), has_avx2 = ns_cpu_sample_keys_supported(2);
    const char *isa_name = vector_isa == 1 ? "avx512" : vector_isa == 2 ? "avx2" : "scalar";
    uint8_t *keep2 = (uint8_t *)malloc((size_t)n);
    if (!keep2) return 1;
    int same = 1;
#define TIMED(tbest, cbest, stmt)                                                              \
    do {                                                                                       \
        double c0_ = bench_cpu_now(), t0_ = bench_now();                                       \
        stmt;                                                                                  \
        double t1_ = bench_now(), c1_ = bench_cpu_now();                                       \
        if (t1_ - t0_ < tbest) tbest = t1_ - t0_;                                              \
        if (c1_ - c0_ < cbest) cbest = c1_ - c0_;                                              \
    } while (0)
#define CHECK(call)                                                                            \
    do {                                                                                       \
        if ((call) != NS_OK) {                                                                 \
            fprintf(stderr, "bench_sample: %s\n", ns_last_error(ctx));                         \
            return 1;                                                                          \
        }                                                                                      \
    } while (0)
    CHECK(ns_filter(ctx, &cand, &fo, keep, &counts)); /* warm-up: pages, threads */
    for (int r = 0; r < reps; r++) {
        TIMED(t_read, c_read, read_once(id, s, n, nt));
        TIMED(t_filter, c_filter, CHECK(ns_filter(ctx, &cand, &fo, keep, &counts)));
        ns_cpu_sample_keys_force(-1);
        TIMED(t_sample, c_sample, CHECK(ns_sample(ctx, &cand, keep, &so, m, idx, NULL, cnt)));
        if (has_avx2) {
            ns_cpu_sample_keys_force(2);
            TIMED(t_avx2, c_avx2, CHECK(ns_sample(ctx, &cand, keep, &so, m, idx2, NULL, cnt)));
            same &= memcmp(idx, idx2, (size_t)(B * m) * 8) == 0;
        }
        ns_cpu_sample_keys_force(0);
        TIMED(t_scalar, c_scalar, CHECK(ns_sample(ctx, &cand, keep, &so, m, idx2, NULL, cnt)));
        ns_cpu_sample_keys_force(-1);
        same &= memcmp(idx, idx2, (size_t)(B * m) * 8) == 0;
        TIMED(t_pipe, c_pipe, {
            CHECK(ns_filter(ctx, &cand, &fo, keep, &counts));
            CHECK(ns_sample(ctx, &cand, keep, &so, m, idx, NULL, cnt));
        });
        TIMED(t_fused, c_fused,
              CHECK(ns_filter_sample(ctx, &cand, &fo, &so, m, keep2, &counts, idx2, NULL, cnt)));
        same &= memcmp(idx, idx2, (size_t)(B * m) * 8) == 0 && memcmp(keep, keep2, (size_t)n) == 0;
    }
    char model[256];
    bench_cpu_model(model, sizeof model);
    printf("machine: %s, threads %d, GEMM: %s (not used by this benchmark)\n", model, nt, ns_gemm_name());
    printf("filter + sample CPU  B=%lld C=%lld m=%lld strategy=%s keys=%s kept=%.1f%%\n",
           (long long)B, (long long)C, (long long)m, sname,
           vector_isa == 1 ? "AVX-512 16 lanes" : vector_isa == 2 ? "AVX2 8 lanes" : "scalar",
           100.0 * (double)counts.kept / (double)counts.examined);
    printf("| %-28s | %10s | %10s | %14s | %12s |\n", "step", "wall ms", "CPU ms", "ns / candidate",
           "× read once");
    printf("|------------------------------|------------|------------|----------------|--------------|\n");
    struct { const char *name; double t, c; } rows[] = {
        {"read ids + scores once", t_read, c_read}, {"ns_filter", t_filter, c_filter},
        {"ns_sample (widest keys)", t_sample, c_sample}, {"ns_sample (AVX2 keys)", t_avx2, c_avx2},
        {"ns_sample (scalar keys)", t_scalar, c_scalar}, {"ns_filter + ns_sample", t_pipe, c_pipe},
        {"ns_filter_sample (fused)", t_fused, c_fused}};
    for (size_t k = 0; k < sizeof rows / sizeof rows[0]; k++)
        if (rows[k].t < 1e29)
            printf("| %-28s | %10.1f | %10.1f | %14.2f | %12.2f |\n", rows[k].name, rows[k].t * 1e3,
               rows[k].c * 1e3, rows[k].t * 1e9 / (double)n, rows[k].t / t_read);
    printf("draws of every key path and of the fused call identical: %s\n", same ? "yes" : "NO");
    printf("target: filter + sample within 10x of reading the scores once: fused %s (%.1fx), "
           "two calls %.1fx\n",
           t_fused <= 10 * t_read ? "yes" : "NO", t_fused / t_read, t_pipe / t_read);
    if (json) {
        FILE *f = fopen(json, "w");
        if (!f) return 1;
        fprintf(f,
                "{\"bench\": \"sample_cpu\", \"cpu\": \"%s\", \"threads\": %d, \"gemm\": \"%s\", "
                "\"B\": %lld, \"C\": %lld, \"m\": %lld, \"strategy\": \"%s\", "
                "\"keys\": \"%s\", \"reps\": %d, \"read_s\": %.6f, \"filter_s\": %.6f, "
                "\"sample_s\": %.6f, \"sample_avx2_s\": %.6f, \"sample_scalar_s\": %.6f, "
                "\"filter_sample_s\": %.6f, \"fused_s\": %.6f, "
                "\"read_cpu_s\": %.6f, \"filter_cpu_s\": %.6f, \"sample_cpu_s\": %.6f, "
                "\"sample_scalar_cpu_s\": %.6f, \"filter_sample_cpu_s\": %.6f, "
                "\"fused_cpu_s\": %.6f, \"draws_identical\": %s, \"peak_rss_mib\": %.1f}\n",
                model, nt, ns_gemm_name(), (long long)B, (long long)C, (long long)m, sname,
                isa_name, reps, t_read, t_filter, t_sample, has_avx2 ? t_avx2 : -1.0, t_scalar,
                t_pipe, t_fused, c_read, c_filter, c_sample, c_scalar, c_pipe, c_fused,
                same ? "true" : "false", bench_peak_rss_mib());
        fclose(f);
    }
    free(id); free(s); free(sp); free(keep); free(keep2); free(idx); free(idx2); free(cnt);
    ns_context_destroy(ctx);
    return same ? 0 : 1;
}
