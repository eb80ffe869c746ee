/* Multi-rank mining: what the merge of the ranks' lists costs with the sharded merge (an
 * all-to-all of query slices, each rank merging Q/R queries, the slices all-gathered; the rule
 * for a block of at least R queries) and with the all-gather merge (every rank merges every
 * query; NS_MINE_RANKS_MERGE=allgather), beside the same shard mined without a communicator.
 * The three run interleaved, REPS times; each time is the slowest rank's (the call ends when the
 * last rank is done), medians printed. A small shard keeps the mining short, so the difference
 * to the local call is the exchange plus the merge.
 *     mpirun -np R build/bench/bench_mine_ranks [Q [k [rows_per_rank [d]]]]
 *     (defaults 20000 100 2000 32; add --oversubscribe --allow-run-as-root as needed)
 * Prints the CPU model, the thread count per rank and the GEMM library. */
#include "bench_util.h"
#include "negsamp.h"
#include "ns_cpu.h" /* ns_gemm_name */

#ifdef NS_HAVE_MPI
#include <mpi.h>

#define REPS 5

static int cmp_double(const void *a, const void *b) {
    const double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* One call (comm NULL: this rank's shard alone); the slowest rank's seconds. */
static double timed(ns_context *ctx, ns_comm *comm, ns_matrix q, ns_matrix shard, int64_t k,
                    int64_t *idx, float *sc) {
    ns_mine_options o = NS_MINE_OPTIONS_INIT;
    o.comm = comm;
    MPI_Barrier(MPI_COMM_WORLD);
    const double t0 = bench_now();
    if (ns_mine_topk(ctx, q, shard, k, &o, idx, sc)) {
        fprintf(stderr, "%s\n", ns_last_error(ctx));
        MPI_Abort(MPI_COMM_WORLD, 1);
    }
    double t = bench_now() - t0, slowest = 0;
    MPI_Allreduce(&t, &slowest, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
    return slowest;
}

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    int me = 0, R = 1;
    MPI_Comm_rank(MPI_COMM_WORLD, &me);
    MPI_Comm_size(MPI_COMM_WORLD, &R);
    const int64_t Q = argc > 1 ? atoll(argv[1]) : 20000, k = argc > 2 ? atoll(argv[2]) : 100;
    const int64_t rows = argc > 3 ? atoll(argv[3]) : 2000, d = argc > 4 ? atoll(argv[4]) : 32;
    ns_context *ctx = NULL;
    ns_context_options co = NS_CONTEXT_OPTIONS_INIT;
    co.backend = NS_BACKEND_CPU;
    if (ns_context_create(&ctx, &co)) return 1;
    char cpu[256];
    bench_cpu_model(cpu, sizeof cpu);
    const char *threads = getenv("OMP_NUM_THREADS");
    if (me == 0)
        printf("bench_mine_ranks: %s, %d ranks × %s thread(s) each (OMP_NUM_THREADS), GEMM %s\n"
               "Q=%lld k=%lld rows per rank=%lld d=%lld, medians of %d interleaved runs\n",
               cpu, R, threads ? threads : "all", ns_gemm_name(), (long long)Q, (long long)k,
               (long long)rows, (long long)d, REPS);
    float *qd = malloc(sizeof(float) * (size_t)(Q * d)), *cd = malloc(sizeof(float) * (size_t)(rows * d));
    int64_t *idx = malloc(sizeof(int64_t) * (size_t)(Q * k));
    float *sc = malloc(sizeof(float) * (size_t)(Q * k));
    if (!qd || !cd || !idx || !sc) return 1;
    uint64_t s = 3, sr = 17 + (uint64_t)me;
    for (int64_t i = 0; i < Q * d; i++) qd[i] = (float)(bench_next(&s) % 1000) / 500.f - 1.f;
    for (int64_t i = 0; i < rows * d; i++) cd[i] = (float)(bench_next(&sr) % 1000) / 500.f - 1.f;
    ns_matrix q = {qd, NS_F32, Q, d, 0}, shard = {cd, NS_F32, rows, d, 0};
    MPI_Comm world = MPI_COMM_WORLD;
    ns_comm *comm = NULL;
    if (ns_comm_create_mpi(ctx, &world, NULL, &comm)) return 1;
    const int64_t kl = k < rows ? k : rows;
    double t[3][REPS];
    for (int r = 0; r < REPS; r++) {
        t[0][r] = timed(ctx, NULL, q, shard, kl, idx, sc);
        setenv("NS_MINE_RANKS_MERGE", "allgather", 1);
        t[1][r] = timed(ctx, comm, q, shard, k, idx, sc);
        unsetenv("NS_MINE_RANKS_MERGE");
        t[2][r] = timed(ctx, comm, q, shard, k, idx, sc);
    }
    for (int m = 0; m < 3; m++) qsort(t[m], REPS, sizeof(double), cmp_double);
    const double local = t[0][REPS / 2], ag = t[1][REPS / 2], sh = t[2][REPS / 2];
    if (me == 0)
        printf("shard alone %.3f s; across ranks: all-gather merge %.3f s (+%.3f s), sharded "
               "merge %.3f s (+%.3f s); exchange+merge sharded/all-gather %.2f\n",
               local, ag, ag - local, sh, sh - local, (sh - local) / (ag - local));
    ns_comm_destroy(comm);
    ns_context_destroy(ctx);
    free(qd), free(cd), free(idx), free(sc);
    MPI_Finalize();
    return 0;
}
#else
int main(void) {
    printf("bench_mine_ranks: this build has no MPI; nothing to measure\n");
    return 0;
}
#endif
