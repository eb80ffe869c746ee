/* ns_plan_batches: the cost of planning an epoch (host bookkeeping, single-threaded) for n
 * queries in G groups, batch size B, without and with a duplicate-positive cap of 1 (one
 * positive per query drawn from n/2 ids, so many queries share one), interleaved, median of 5.
 *     build/bench/bench_plan [n ...]            (default 100000 1000000)
 * Prints the CPU model, the thread count (the planner uses one) and the GEMM library (unused
 * here; printed with every benchmark result). */
#include "bench_util.h"
#include "negsamp.h"
#include "ns_cpu.h"

#define REPS 5

static int cmp_double(const void *a, const void *b) {
    const double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv) {
    char cpu[256];
    bench_cpu_model(cpu, sizeof cpu);
    printf("bench_plan: %s, 1 thread (host bookkeeping), GEMM %s (unused)\n", cpu,
           ns_gemm_name());
    ns_context *ctx = NULL;
    ns_context_options co = NS_CONTEXT_OPTIONS_INIT;
    co.backend = NS_BACKEND_CPU;
    if (ns_context_create(&ctx, &co)) return 1;
    const int64_t B = 64, G = 1000;
    int nn = argc > 1 ? argc - 1 : 2;
    for (int a = 0; a < nn; a++) {
        const int64_t n = argc > 1 ? atoll(argv[a + 1]) : (a ? 1000000 : 100000);
        int64_t *group = malloc((size_t)n * 8), *order = malloc((size_t)n * 8);
        int64_t *off = malloc((size_t)(n + 1) * 8), *poff = malloc((size_t)(n + 1) * 8);
        int64_t *pid = malloc((size_t)n * 8), nb = 0;
        if (!group || !order || !off || !poff || !pid) return 1;
        uint64_t s = 7;
        for (int64_t i = 0; i < n; i++) {
            group[i] = (int64_t)(bench_next(&s) % (uint64_t)G);
            pid[i] = (int64_t)(bench_next(&s) % (uint64_t)(n / 2 + 1));
            poff[i] = i;
        }
        poff[n] = n;
        ns_id_lists pos = {poff, pid, n};
        ns_plan_options plain = NS_PLAN_OPTIONS_INIT, capped = NS_PLAN_OPTIONS_INIT;
        capped.positives = &pos;
        double t[2][REPS];
        for (int r = 0; r < REPS; r++)
            for (int k = 0; k < 2; k++) {
                const double t0 = bench_now();
                if (ns_plan_batches(ctx, group, n, B, k ? &capped : &plain, order, off, &nb)) {
                    fprintf(stderr, "%s\n", ns_last_error(ctx));
                    return 1;
                }
                t[k][r] = bench_now() - t0;
            }
        qsort(t[0], REPS, sizeof(double), cmp_double);
        qsort(t[1], REPS, sizeof(double), cmp_double);
        printf("n=%lld G=%lld B=%lld: plain %.3f s, cap 1 %.3f s (ratio %.2f), %lld batches\n",
               (long long)n, (long long)G, (long long)B, t[0][REPS / 2], t[1][REPS / 2],
               t[1][REPS / 2] / t[0][REPS / 2], (long long)nb);
        free(group), free(order), free(off), free(poff), free(pid);
    }
    ns_context_destroy(ctx);
    return 0;
}
