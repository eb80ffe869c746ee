// The bytes multi-rank mining sends, counted through PMPI: this program defines MPI_Isend,
// MPI_Iallgather and MPI_Ialltoallv (the library is linked statically, so its calls land here),
// counts what each rank sends and forwards to PMPI_*. Each rank's count for one ns_mine_topk
// call must equal the formula of src/mine_ranks.c exactly:
//   header: (R−1) · 88
//   per block of nb queries, packet(m) = round8(8 + m·k·12 + 1024) (status, lists, error text):
//     sharded merge (nb ≥ R): Σ_{j≠me} packet(n_j) + (R−1) · ceil(nb/R)·k·12
//     all-gather merge (nb < R): (R−1) · packet(nb)
// with n_j = the size of rank j's contiguous slice, floor((j+1)·nb/R) − floor(j·nb/R);
// NS_MINE_RESULT_ON_RANK0: the merged slices to rank 0 only (rank 0 sends none of them). The old
// all-gather for many queries sends (R−1)·packet(nb) and fails the check. The results are also
// compared with the one-rank call, and rank 0 prints the per-rank bytes of both merges.
#include <mpi.h>

#include <cstdint>
#include <cstdlib>
#include <random>
#include <vector>

#include "mpi_test_util.h"

using namespace mpitest;

namespace {
long long g_sent = 0, g_recv = 0;

int type_bytes(MPI_Datatype t) {
    int s = 0;
    PMPI_Type_size(t, &s);
    return s;
}
}  // namespace

extern "C" {
int MPI_Isend(const void *buf, int count, MPI_Datatype type, int dest, int tag, MPI_Comm comm,
              MPI_Request *req) {
    g_sent += (long long)count * type_bytes(type);
    return PMPI_Isend(buf, count, type, dest, tag, comm, req);
}
int MPI_Irecv(void *buf, int count, MPI_Datatype type, int src, int tag, MPI_Comm comm,
              MPI_Request *req) {
    g_recv += (long long)count * type_bytes(type);  // the library posts exact sizes
    return PMPI_Irecv(buf, count, type, src, tag, comm, req);
}
int MPI_Iallgather(const void *sbuf, int scount, MPI_Datatype stype, void *rbuf, int rcount,
                   MPI_Datatype rtype, MPI_Comm comm, MPI_Request *req) {
    int R = 1;
    PMPI_Comm_size(comm, &R);
    long long one = sbuf == MPI_IN_PLACE ? (long long)rcount * type_bytes(rtype)
                                         : (long long)scount * type_bytes(stype);
    g_sent += (R - 1) * one;
    return PMPI_Iallgather(sbuf, scount, stype, rbuf, rcount, rtype, comm, req);
}
int MPI_Ialltoallv(const void *sbuf, const int scounts[], const int sdispls[], MPI_Datatype stype,
                   void *rbuf, const int rcounts[], const int rdispls[], MPI_Datatype rtype,
                   MPI_Comm comm, MPI_Request *req) {
    int R = 1, me = 0;
    PMPI_Comm_size(comm, &R);
    PMPI_Comm_rank(comm, &me);
    for (int j = 0; j < R; j++)
        if (j != me) g_sent += (long long)scounts[j] * type_bytes(stype);
    return PMPI_Ialltoallv(sbuf, scounts, sdispls, stype, rbuf, rcounts, rdispls, rtype, comm,
                           req);
}
}

namespace {

constexpr int64_t D = 8;

long long packet(int64_t m, int64_t k) { return (8 + m * k * 12 + 1024 + 7) / 8 * 8; }
int64_t slice(int64_t nb, int R, int j) { return nb * j / R; }

// The formula above for one call of Q queries in blocks of nb_max. rank0_only
// (NS_MINE_RESULT_ON_RANK0): the merged slices go to rank 0 alone, so rank 0 sends none and the
// others send theirs once.
long long expected_sent(int64_t Q, int64_t nb_max, int64_t k, int R, int me, bool sharded_rule,
                        bool rank0_only = false) {
    long long b = (long long)(R - 1) * 88;
    for (int64_t b0 = 0; b0 < Q; b0 += nb_max) {
        int64_t nb = Q - b0 < nb_max ? Q - b0 : nb_max;
        if (sharded_rule && nb >= R) {
            for (int j = 0; j < R; j++)
                if (j != me) b += packet(slice(nb, R, j + 1) - slice(nb, R, j), k);
            long long slice = (long long)((nb + R - 1) / R) * k * 12;
            b += rank0_only ? (me == 0 ? 0 : slice) : (R - 1) * slice;
        } else {
            b += (long long)(R - 1) * packet(nb, k);
        }
    }
    return b;
}

struct Run {
    long long sent, recv;
    std::vector<int64_t> idx;
    std::vector<float> sc;
};

Run mine(ns_context *ctx, ns_comm *comm, const std::vector<float> &q, int64_t Q,
         const std::vector<float> &shard, int64_t rows, int64_t k, unsigned flags = 0) {
    Run r{0, 0, std::vector<int64_t>((size_t)(Q * k)), std::vector<float>((size_t)(Q * k))};
    ns_mine_options o = NS_MINE_OPTIONS_INIT;
    o.comm = comm;
    o.flags = flags;
    long long before = g_sent, before_recv = g_recv;
    MT_CHECK_OK(ctx, ns_mine_topk(ctx, ns_matrix{q.data(), NS_F32, Q, D, 0},
                                  ns_matrix{rows ? shard.data() : nullptr, NS_F32, rows,
                                            rows ? D : 0, 0},
                                  k, &o, r.idx.data(), r.sc.data()));
    r.sent = g_sent - before;
    r.recv = g_recv - before_recv;
    return r;
}

// One case: Q queries, k, shards of `per` rows, blocks of nb_max queries (0: one block).
void check_case(ns_context *ctx, ns_comm *comm, int64_t Q, int64_t k, int64_t per,
                int64_t nb_max) {
    const int R = size(), me = rank();
    std::mt19937_64 g(11);
    std::uniform_int_distribution<int> v(-3, 3);
    std::vector<float> q((size_t)(Q * D)), corpus((size_t)(per * R * D));
    for (auto &x : q) x = (float)v(g);
    for (auto &x : corpus) x = (float)v(g);
    std::vector<float> shard(corpus.begin() + me * per * D, corpus.begin() + (me + 1) * per * D);
    if (nb_max) {
        setenv("NS_MINE_RANKS_BLOCK_BYTES", std::to_string(nb_max * R * k * 12).c_str(), 1);
    } else {
        nb_max = Q;
    }
    Run now = mine(ctx, comm, q, Q, shard, per, k);
    Run root = mine(ctx, comm, q, Q, shard, per, k, NS_MINE_RESULT_ON_RANK0);
    setenv("NS_MINE_RANKS_MERGE", "allgather", 1);
    Run old = mine(ctx, comm, q, Q, shard, per, k);
    unsetenv("NS_MINE_RANKS_MERGE");
    unsetenv("NS_MINE_RANKS_BLOCK_BYTES");
    long long want = expected_sent(Q, nb_max, k, R, me, true);
    long long want_old = expected_sent(Q, nb_max, k, R, me, false);
    MT_CHECK(now.sent == want, "Q=%lld k=%lld blocks of %lld: sent %lld bytes, the formula says %lld "
             "(the all-gather merge's: %lld)", (long long)Q, (long long)k, (long long)nb_max,
             now.sent, want, want_old);
    MT_CHECK(old.sent == want_old, "forced all-gather: sent %lld bytes, the formula says %lld",
             old.sent, want_old);
    long long want_root = expected_sent(Q, nb_max, k, R, me, true, true);
    MT_CHECK(root.sent == want_root, "NS_MINE_RESULT_ON_RANK0: sent %lld bytes, the formula says "
             "%lld", root.sent, want_root);
    // Both merges give the one-rank result.
    std::vector<int64_t> oi((size_t)(Q * k));
    std::vector<float> os((size_t)(Q * k));
    ns_mine_options o = NS_MINE_OPTIONS_INIT;
    MT_CHECK_OK(ctx, ns_mine_topk(ctx, ns_matrix{q.data(), NS_F32, Q, D, 0},
                                  ns_matrix{corpus.data(), NS_F32, per * R, D, 0}, k, &o,
                                  oi.data(), os.data()));
    MT_CHECK(now.idx == oi && now.sc == os, "sharded merge differs from one rank (Q=%lld)",
             (long long)Q);
    MT_CHECK(old.idx == oi && old.sc == os, "all-gather merge differs from one rank (Q=%lld)",
             (long long)Q);
    if (me == 0)
        MT_CHECK(root.idx == oi && root.sc == os, "the rank-0 result differs from one rank");
    // For the record: rank 0's bytes and the largest of the other ranks', sent / received.
    const Run *runs[3] = {&now, &old, &root};
    const char *what[3] = {"sharded", "all-gather", "sharded, result on rank 0 only"};
    for (int v = 0; v < 3; v++) {
        long long mine[2] = {me ? runs[v]->sent : 0, me ? runs[v]->recv : 0}, others[2] = {0, 0};
        MPI_Allreduce(mine, others, 2, MPI_LONG_LONG, MPI_MAX, MPI_COMM_WORLD);
        if (me == 0)
            std::printf("traffic R=%d Q=%lld k=%lld block=%lld %-31s rank 0 sent %9lld B "
                        "received %9lld B; other ranks (max) sent %9lld B received %9lld B\n",
                        R, (long long)Q, (long long)k, (long long)nb_max, what[v],
                        runs[v]->sent, runs[v]->recv, others[0], others[1]);
    }
}

}  // namespace

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    ns_context *ctx = cpu_context();
    ns_comm *comm = world_comm(ctx, 20000);
    if (comm) {
        check_case(ctx, comm, 1000, 100, 60, 0);  // many queries: one sharded block
        check_case(ctx, comm, 37, 10, 6, 9);      // blocks of 9 and a last one of 1 (< R)
        check_case(ctx, comm, 1, 5, 3, 0);        // fewer queries than ranks: all-gather
    }
    ns_comm_destroy(comm);
    ns_context_destroy(ctx);
    int rc = finish("mpi_mine_traffic");
    MPI_Finalize();
    return rc;
}
