// Mining across ranks (ns_mine_options.comm over MPI): every rank holds a shard of a global corpus
// (uneven, one shard smaller than k, on 4 ranks one empty) and the same queries; the result on
// every rank must equal a brute-force top-k over the concatenated corpus computed here, and the
// one-rank ns_mine_topk over it, entry for entry. Embeddings are small integers, so every score
// is exact and ties are frequent; duplicated corpus rows sit in different shards (ties across
// shards go to the lower global row). Then exclusions in global rows, k larger than every
// shard, several query blocks, and bad input: ranks that disagree (k, dimension) fail every rank
// with NS_ERR_COMM naming the value; a rank with a bad argument fails with its own message, the
// others with NS_ERR_COMM naming it; a cancel on one rank cancels all.
#include <mpi.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <random>
#include <vector>

#include "mpi_test_util.h"

using namespace mpitest;

namespace {

constexpr int64_t D = 6, Q = 23;

struct Data {
    int64_t N;
    std::vector<float> corpus, q;
    std::vector<int64_t> start;  // shard r = rows [start[r], start[r + 1])
};

// Integer entries in [-2, 2]: exact f32 dot products, many equal scores. Rows copied from early
// rows to late ones make ties that cross shard boundaries.
Data make_data(int R, uint64_t seed) {
    Data g;
    std::mt19937_64 rng(seed);
    std::uniform_int_distribution<int> v(-2, 2);
    // Shard sizes: rank 0 has 2 (fewer than k), the others 9, 13, ...; on 4 ranks rank 2 is empty.
    g.start.push_back(0);
    for (int r = 0; r < R; r++) {
        int64_t n = r == 0 ? 2 : (R == 4 && r == 2 ? 0 : 5 + 4 * r);
        g.start.push_back(g.start.back() + n);
    }
    g.N = g.start.back();
    g.corpus.resize((size_t)(g.N * D));
    for (auto &x : g.corpus) x = (float)v(rng);
    for (int64_t r = g.N / 2; r < g.N; r += 3)  // duplicates of rows in lower shards
        std::copy_n(&g.corpus[(size_t)((r - g.N / 2) * D)], D, &g.corpus[(size_t)(r * D)]);
    g.q.resize((size_t)(Q * D));
    for (auto &x : g.q) x = (float)v(rng);
    return g;
}

// Brute force over the global corpus: score desc, ties to the lower row, excluded rows skipped,
// tail -1 / -inf.
void brute(const Data &g, int64_t k, const std::vector<std::vector<int64_t>> *ex,
           std::vector<int64_t> &idx, std::vector<float> &sc) {
    idx.assign((size_t)(Q * k), -1);
    sc.assign((size_t)(Q * k), -INFINITY);
    for (int64_t i = 0; i < Q; i++) {
        std::vector<std::pair<double, int64_t>> all;
        for (int64_t r = 0; r < g.N; r++) {
            if (ex && std::count((*ex)[(size_t)i].begin(), (*ex)[(size_t)i].end(), r)) continue;
            double s = 0;
            for (int64_t c = 0; c < D; c++)
                s += (double)g.q[(size_t)(i * D + c)] * g.corpus[(size_t)(r * D + c)];
            all.push_back({-s, r});
        }
        std::sort(all.begin(), all.end());
        for (int64_t j = 0; j < k && j < (int64_t)all.size(); j++) {
            idx[(size_t)(i * k + j)] = all[(size_t)j].second;
            sc[(size_t)(i * k + j)] = (float)-all[(size_t)j].first;
        }
    }
}

ns_matrix shard_of(const Data &g, int r) {
    int64_t n = g.start[(size_t)r + 1] - g.start[(size_t)r];
    return ns_matrix{n ? &g.corpus[(size_t)(g.start[(size_t)r] * D)] : nullptr, NS_F32, n, n ? D : 0, 0};
}

// Exclusions in global rows: query i excludes rows i % N, (7 i) % N and the last row.
std::vector<std::vector<int64_t>> exclusions(const Data &g) {
    std::vector<std::vector<int64_t>> ex((size_t)Q);
    for (int64_t i = 0; i < Q; i++) ex[(size_t)i] = {i % g.N, (7 * i) % g.N, g.N - 1};
    return ex;
}

struct Lists {
    std::vector<int64_t> off{0}, ids;
    ns_id_lists view() const { return ns_id_lists{off.data(), ids.data(), (int64_t)off.size() - 1}; }
};

Lists flatten(const std::vector<std::vector<int64_t>> &ex) {
    Lists l;
    for (auto &e : ex) {
        l.ids.insert(l.ids.end(), e.begin(), e.end());
        l.off.push_back((int64_t)l.ids.size());
    }
    return l;
}

void check_case(ns_context *ctx, ns_comm *comm, const Data &g, int64_t k, bool with_ex,
                const char *what) {
    const int me = ns_comm_rank(comm);
    auto ex = exclusions(g);
    Lists l = flatten(ex);
    ns_id_lists el = l.view();
    ns_mine_options o = NS_MINE_OPTIONS_INIT;
    o.exclude = with_ex ? &el : nullptr;
    o.comm = comm;
    std::vector<int64_t> idx((size_t)(Q * k), -7);
    std::vector<float> sc((size_t)(Q * k), 7.f);
    ns_matrix qm{g.q.data(), NS_F32, Q, D, 0};
    MT_CHECK_OK(ctx, ns_mine_topk(ctx, qm, shard_of(g, me), k, &o, idx.data(), sc.data()));
    std::vector<int64_t> bi;
    std::vector<float> bs;
    brute(g, k, with_ex ? &ex : nullptr, bi, bs);
    // The one-rank result over the whole corpus, too (same call without comm).
    std::vector<int64_t> oi((size_t)(Q * k));
    std::vector<float> os((size_t)(Q * k));
    o.comm = nullptr;
    MT_CHECK_OK(ctx, ns_mine_topk(ctx, qm, ns_matrix{g.corpus.data(), NS_F32, g.N, D, 0}, k, &o,
                                  oi.data(), os.data()));
    int bad = 0;
    for (size_t t = 0; t < idx.size(); t++)
        if (idx[t] != bi[t] || sc[t] != bs[t] || oi[t] != idx[t] || os[t] != sc[t]) {
            if (bad++ < 3)
                MT_CHECK(false, "%s k=%lld entry %zu: ranks %lld/%g, brute %lld/%g, one rank %lld/%g",
                         what, (long long)k, t, (long long)idx[t], (double)sc[t], (long long)bi[t],
                         (double)bs[t], (long long)oi[t], (double)os[t]);
        }
    // Ties across shards really happened: some query has two equal scores from two shards.
    (void)bad;
}

// At least one pair of equal scores in one list whose rows live on different ranks.
bool has_cross_shard_tie(const Data &g, int64_t k) {
    std::vector<int64_t> bi;
    std::vector<float> bs;
    brute(g, k, nullptr, bi, bs);
    auto rank_of = [&](int64_t row) {
        return (int)(std::upper_bound(g.start.begin(), g.start.end(), row) - g.start.begin()) - 1;
    };
    for (int64_t i = 0; i < Q; i++)
        for (int64_t j = 1; j < k; j++) {
            size_t t = (size_t)(i * k + j);
            if (bs[t] == bs[t - 1] && rank_of(bi[t]) != rank_of(bi[t - 1])) return true;
        }
    return false;
}

void test_disagreement(ns_context *ctx, ns_comm *comm, const Data &g) {
    const int me = ns_comm_rank(comm);
    std::vector<int64_t> idx((size_t)(Q * 8));
    std::vector<float> sc((size_t)(Q * 8));
    ns_mine_options o = NS_MINE_OPTIONS_INIT;
    o.comm = comm;
    ns_matrix qm{g.q.data(), NS_F32, Q, D, 0};
    // k differs on the last rank.
    int64_t k = me == ns_comm_size(comm) - 1 ? 5 : 4;
    ns_status st = ns_mine_topk(ctx, qm, shard_of(g, me), k, &o, idx.data(), sc.data());
    MT_CHECK(st == NS_ERR_COMM && contains(ns_last_error(ctx), "k is 4 on rank 0 but 5"),
             "k differs: %s: %s", ns_status_string(st), ns_last_error(ctx));
    // The dimension differs (rank 1 passes one column fewer, with a shard of that width).
    std::vector<float> narrow((size_t)(Q * (D - 1)), 1.f);
    ns_matrix q1 = me == 1 ? ns_matrix{narrow.data(), NS_F32, Q, D - 1, 0} : qm;
    ns_matrix c1 = me == 1 ? ns_matrix{narrow.data(), NS_F32, 3, D - 1, 0} : shard_of(g, me);
    st = ns_mine_topk(ctx, q1, c1, 4, &o, idx.data(), sc.data());
    MT_CHECK(st == NS_ERR_COMM && contains(ns_last_error(ctx), "dimension (q.cols)"),
             "cols differ: %s: %s", ns_status_string(st), ns_last_error(ctx));
    // A bad argument on rank 1: its own message there, NS_ERR_COMM naming it elsewhere.
    st = ns_mine_topk(ctx, qm, shard_of(g, me), 4, &o, me == 1 ? nullptr : idx.data(), sc.data());
    if (me == 1)
        MT_CHECK(st == NS_ERR_INVALID_ARGUMENT && contains(ns_last_error(ctx), "index is NULL"),
                 "%s", ns_last_error(ctx));
    else
        MT_CHECK(st == NS_ERR_COMM && contains(ns_last_error(ctx), "rank 1 rejected"), "%s",
                 ns_last_error(ctx));
    // k larger than the global corpus: every rank, the same message.
    std::vector<int64_t> big((size_t)(Q * (g.N + 1)));
    std::vector<float> bigs((size_t)(Q * (g.N + 1)));
    st = ns_mine_topk(ctx, qm, shard_of(g, me), g.N + 1, &o, big.data(), bigs.data());
    MT_CHECK(st == NS_ERR_INVALID_ARGUMENT && contains(ns_last_error(ctx), "over"),
             "k > N: %s", ns_last_error(ctx));
    // An exclusion id past the global corpus on rank 0 only.
    std::vector<int64_t> off(Q + 1, 0), ids{g.N};
    for (int64_t i = 1; i <= Q; i++) off[(size_t)i] = 1;
    ns_id_lists el{off.data(), ids.data(), Q};
    std::vector<int64_t> zero(Q + 1, 0);
    ns_id_lists none{zero.data(), nullptr, Q};
    o.exclude = me == 0 ? &el : &none;
    st = ns_mine_topk(ctx, qm, shard_of(g, me), 4, &o, idx.data(), sc.data());
    MT_CHECK(st == NS_ERR_INVALID_ARGUMENT && contains(ns_last_error(ctx), "rank 0 holds"),
             "exclusion past N: %s", ns_last_error(ctx));
    o.exclude = nullptr;
    // The outputs were never written by a failed call.
    // A cancel on the last rank (its progress callback) cancels every rank.
    o.progress = [](int64_t, int64_t, void *u) -> int { return *(int *)u; };
    int cancel = me == ns_comm_size(comm) - 1;
    o.progress_user = &cancel;
    std::fill(idx.begin(), idx.end(), -9);
    st = ns_mine_topk(ctx, qm, shard_of(g, me), 4, &o, idx.data(), sc.data());
    MT_CHECK(st != NS_OK && contains(ns_last_error(ctx), "cancel") && idx[0] == -9,
             "cancel: %s: %s", ns_status_string(st), ns_last_error(ctx));
    // And the communicator still works after these argument failures.
    o.progress = nullptr;
    MT_CHECK_OK(ctx, ns_mine_topk(ctx, qm, shard_of(g, me), 4, &o, idx.data(), sc.data()));
}

}  // namespace

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    ns_context *ctx = cpu_context();
    ns_comm *comm = world_comm(ctx, 20000);
    if (comm) {
        Data g = make_data(size(), 15);
        MT_CHECK(has_cross_shard_tie(g, 6), "the data has no tie across shards at k = 6");
        check_case(ctx, comm, g, 6, false, "plain");
        check_case(ctx, comm, g, 1, false, "k=1");
        check_case(ctx, comm, g, 5, true, "exclusions");
        // k larger than every shard, with exclusions leaving fewer than k rows for some queries.
        check_case(ctx, comm, g, g.N - 1, true, "k > shards");
        // Several query blocks (a block of 2 queries at k = 6).
        setenv("NS_MINE_RANKS_BLOCK_BYTES", std::to_string(2 * size() * 6 * 12).c_str(), 1);
        check_case(ctx, comm, g, 6, true, "blocks");
        unsetenv("NS_MINE_RANKS_BLOCK_BYTES");
        test_disagreement(ctx, comm, g);
    }
    ns_comm_destroy(comm);
    ns_context_destroy(ctx);
    int rc = finish("mpi_mine");
    MPI_Finalize();
    return rc;
}
