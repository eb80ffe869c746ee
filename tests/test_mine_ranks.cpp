// ns_mine_topk across ranks on either backend, without MPI or NCCL: the ranks are threads of
// this process joined by a small in-memory communicator (the ns_comm_ops table, host
// all-gather only, which is all multi-rank mining uses). On CUDA this runs the device path
// (the local lists in the communicator's device arena, copied to the host for the merge) through
// the host execution layer; tests/mpi/mpi_mine.cpp covers the MPI transport, NCCL is untested
// here. Every rank's result must equal a brute force over the concatenated corpus and the
// one-rank call, entry for entry (small-integer data: exact scores, ties across shards).
#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

#include "../src/ns_comm.h"
#include "ns_test_util.h"

using namespace nstest;

namespace {

// A barrier-based all-gather between threads.
struct Hub {
    int R;
    std::mutex m;
    std::condition_variable cv;
    int arrived = 0;
    long generation = 0;
    std::vector<const void *> slot;
    std::atomic<long> alltoalls{0};  // all-to-all calls (counted once, by rank 0)
    explicit Hub(int r) : R(r), slot((size_t)r) {}
    void barrier() {
        std::unique_lock<std::mutex> l(m);
        long g = generation;
        if (++arrived == R) {
            arrived = 0;
            generation++;
            cv.notify_all();
        } else {
            cv.wait(l, [&] { return generation != g; });
        }
    }
};

ns_status hub_allgather_host(ns_context *, ns_comm *c, const void *mine, void *all, size_t bytes,
                             const char *) {
    Hub *h = (Hub *)c->impl;
    h->slot[(size_t)c->rank] = mine;
    h->barrier();
    for (int r = 0; r < c->size; r++)
        std::memcpy((char *)all + (size_t)r * bytes, h->slot[(size_t)r], bytes);
    h->barrier();  // nobody reuses its buffer before every rank copied it
    return NS_OK;
}
// Rank r's send + sdispl[j] lands at rank j's recv + rdispl[r]; the counts must pair up (the
// library's callers guarantee it; a mismatch here is a test failure, reported as INTERNAL).
struct HubA2a {
    const char *send;
    const size_t *scount, *sdispl;
};
ns_status hub_alltoallv_host(ns_context *ctx, ns_comm *c, const void *send, const size_t *scount,
                             const size_t *sdispl, void *recv, const size_t *rcount,
                             const size_t *rdispl, const char *fn) {
    Hub *h = (Hub *)c->impl;
    if (c->rank == 0) h->alltoalls++;
    HubA2a mine{(const char *)send, scount, sdispl};
    h->slot[(size_t)c->rank] = &mine;
    h->barrier();
    ns_status st = NS_OK;
    for (int r = 0; r < c->size; r++) {
        const HubA2a *t = (const HubA2a *)h->slot[(size_t)r];
        if (t->scount[c->rank] != rcount[r])
            st = ns_fail(ctx, NS_ERR_INTERNAL, "%s: rank %d sends %zu bytes, %zu expected", fn, r,
                         t->scount[c->rank], rcount[r]);
        else if (rcount[r])
            std::memcpy((char *)recv + rdispl[r], t->send + t->sdispl[c->rank], rcount[r]);
    }
    h->barrier();
    return st;
}
ns_status hub_unused_rows(ns_context *ctx, ns_comm *, const void *, size_t, size_t, int64_t, void *,
                          const char *fn) {
    return ns_fail(ctx, NS_ERR_INTERNAL, "%s: not used by mining", fn);
}
ns_status hub_unused_rs(ns_context *ctx, ns_comm *, const float *, float *, size_t, const char *fn) {
    return ns_fail(ctx, NS_ERR_INTERNAL, "%s: not used by mining", fn);
}
void hub_destroy(ns_comm *) {}
const ns_comm_ops kHubOps = {hub_unused_rows, hub_unused_rs, hub_allgather_host,
                             hub_alltoallv_host, hub_destroy};

ns_comm *hub_comm(ns_context *ctx, Hub *h, int rank) {
    ns_comm *c = (ns_comm *)calloc(1, sizeof(ns_comm));
    c->kind = NS_COMM_MPI;
    c->rank = rank, c->size = h->R, c->timeout_ms = 10000;
    c->backend = ns_context_backend(ctx);
    c->device = ctx->device;
    c->ops = &kHubOps;
    c->impl = h;
    return c;
}

constexpr int64_t D = 5;

struct World {
    int64_t Q = 19;
    std::vector<int64_t> start;  // rank r holds rows [start[r], start[r + 1])
    std::vector<float> corpus, q;
    std::vector<int64_t> ex_off{0}, ex_ids;
    int64_t N() const { return start.back(); }
};

World make_world(std::vector<int64_t> sizes, int64_t Q = 19) {
    World w;
    w.Q = Q;
    w.start.push_back(0);
    for (int64_t n : sizes) w.start.push_back(w.start.back() + n);
    std::mt19937_64 g(5);
    std::uniform_int_distribution<int> v(-2, 2);
    w.corpus.resize((size_t)(w.N() * D));
    for (auto &x : w.corpus) x = (float)v(g);
    for (int64_t r = w.N() - 6; r < w.N(); r++)  // copies of the first rows, on the last rank
        std::copy_n(&w.corpus[(size_t)((r - (w.N() - 6)) * D)], D, &w.corpus[(size_t)(r * D)]);
    w.q.resize((size_t)(Q * D));
    for (auto &x : w.q) x = (float)v(g);
    for (int64_t i = 0; i < Q; i++) {
        w.ex_ids.push_back((3 * i) % w.N());
        w.ex_ids.push_back(w.N() - 1);
        w.ex_off.push_back((int64_t)w.ex_ids.size());
    }
    return w;
}

void brute(const World &w, int64_t k, bool ex, std::vector<int64_t> &idx, std::vector<float> &sc) {
    const int64_t Q = w.Q;
    idx.assign((size_t)(Q * k), -1);
    sc.assign((size_t)(Q * k), -INFINITY);
    for (int64_t i = 0; i < Q; i++) {
        std::vector<std::pair<double, int64_t>> all;
        for (int64_t r = 0; r < w.N(); r++) {
            if (ex && std::find(w.ex_ids.begin() + w.ex_off[(size_t)i],
                                w.ex_ids.begin() + w.ex_off[(size_t)i + 1], r) !=
                          w.ex_ids.begin() + w.ex_off[(size_t)i + 1])
                continue;
            double s = 0;
            for (int64_t c = 0; c < D; c++)
                s += (double)w.q[(size_t)(i * D + c)] * w.corpus[(size_t)(r * D + c)];
            all.push_back({-s, r});
        }
        std::sort(all.begin(), all.end());
        for (int64_t j = 0; j < k && j < (int64_t)all.size(); j++)
            idx[(size_t)(i * k + j)] = all[(size_t)j].second,
                                sc[(size_t)(i * k + j)] = (float)-all[(size_t)j].first;
    }
}

struct RankOut {
    ns_status st = NS_OK;
    std::string err;
    std::vector<int64_t> idx;
    std::vector<float> sc;
};

// Runs rank r's call on its own context in its own thread; bad_index_on: that rank passes NULL.
std::vector<RankOut> run_ranks(ns_backend be, const World &w, int64_t k, bool ex,
                               int bad_index_on = -1, Hub *counted = nullptr,
                               int cancel_on = -1, unsigned flags = 0, int plain_on = -1) {
    const int R = (int)w.start.size() - 1, Q = (int)w.Q;
    Hub own(R);
    Hub &hub = counted ? *counted : own;
    std::vector<RankOut> out((size_t)R);
    std::vector<std::thread> th;
    for (int r = 0; r < R; r++)
        th.emplace_back([&, r] {
            Ctx c(be, 1);
            ns_comm *comm = hub_comm(c, &hub, r);
            const int64_t n = w.start[(size_t)r + 1] - w.start[(size_t)r];
            Buf<float> q(c, w.q);
            Buf<float> shard(c, std::vector<float>(w.corpus.begin() + w.start[(size_t)r] * D,
                                                   w.corpus.begin() + w.start[(size_t)r + 1] * D));
            Buf<int64_t> idx(c, (size_t)(Q * k), -7);
            Buf<float> sc(c, (size_t)(Q * k), 7.f);
            ns_id_lists el{w.ex_off.data(), w.ex_ids.data(), Q};  // host memory on both
            ns_mine_options o = NS_MINE_OPTIONS_INIT;
            o.exclude = ex ? &el : nullptr;
            o.comm = comm;
            if (r == cancel_on) o.progress = [](int64_t, int64_t, void *) { return 1; };
            o.flags = r == plain_on ? 0u : flags;  // plain_on: the rank that disagrees
            // With the result on rank 0 only, odd ranks pass no outputs at all.
            const bool none = (flags & NS_MINE_RESULT_ON_RANK0) && r % 2 == 1;
            RankOut &ro = out[(size_t)r];
            ro.st = ns_mine_topk(c, f32_matrix(q.ptr(), Q, D),
                                 f32_matrix(n ? shard.ptr() : nullptr, n, n ? D : 0), k, &o,
                                 r == bad_index_on || none ? nullptr : idx.ptr(),
                                 none ? nullptr : sc.ptr());
            ro.err = ns_last_error(c);
            ro.idx = idx.fetch();
            ro.sc = sc.fetch();
            ns_comm_destroy(comm);
        });
    for (auto &t : th) t.join();
    return out;
}

class MineRanks : public ::testing::TestWithParam<ns_backend> {};

// alltoalls: the all-to-all calls the merge must make (the sharded merge: one per block of at
// least R queries); -1 skips the count.
void expect_global(ns_backend be, const World &w, int64_t k, bool ex, long alltoalls = -1) {
    const int64_t Q = w.Q;
    std::vector<int64_t> bi;
    std::vector<float> bs;
    brute(w, k, ex, bi, bs);
    // The one-rank call over the concatenated corpus on the same backend.
    Ctx c(be, 1);
    Buf<float> q(c, w.q), corpus(c, w.corpus);
    Buf<int64_t> oi(c, (size_t)(Q * k), 0);
    Buf<float> os(c, (size_t)(Q * k), 0.f);
    ns_id_lists el{w.ex_off.data(), w.ex_ids.data(), Q};
    ns_mine_options o = NS_MINE_OPTIONS_INIT;
    o.exclude = ex ? &el : nullptr;
    ASSERT_EQ(ns_mine_topk(c, f32_matrix(q.ptr(), Q, D), f32_matrix(corpus.ptr(), w.N(), D), k, &o,
                           oi.ptr(), os.ptr()),
              NS_OK)
        << ns_last_error(c);
    EXPECT_EQ(oi.fetch(), bi);
    EXPECT_EQ(os.fetch(), bs);
    Hub hub((int)w.start.size() - 1);
    auto out = run_ranks(be, w, k, ex, -1, &hub);
    if (alltoalls >= 0) EXPECT_EQ(hub.alltoalls.load(), alltoalls) << "k " << k;
    for (size_t r = 0; r < out.size(); r++) {
        ASSERT_EQ(out[r].st, NS_OK) << "rank " << r << ": " << out[r].err;
        EXPECT_EQ(out[r].idx, bi) << "rank " << r << " k " << k;
        EXPECT_EQ(out[r].sc, bs) << "rank " << r << " k " << k;
    }
}

TEST_P(MineRanks, EqualsOneRankWithTiesEmptyShardAndKBeyondAShard) {
    Ctx probe(GetParam());
    NS_REQUIRE_BACKEND(probe);
    World w = make_world({4, 0, 9, 13});  // rank 0 smaller than k, rank 1 empty
    expect_global(GetParam(), w, 6, false);
    expect_global(GetParam(), w, 6, true);
    expect_global(GetParam(), w, 15, true);  // k > every shard but the last
}

TEST_P(MineRanks, SeveralQueryBlocks) {
    Ctx probe(GetParam());
    NS_REQUIRE_BACKEND(probe);
    World w = make_world({7, 8, 5});
    setenv("NS_MINE_RANKS_BLOCK_BYTES", std::to_string(3 * 3 * 5 * 12).c_str(), 1);  // 3 queries
    // 19 queries: six blocks of 3 (sharded, one query per rank) and one of 1 (all-gathered).
    expect_global(GetParam(), w, 5, true, 6);
    unsetenv("NS_MINE_RANKS_BLOCK_BYTES");
}

// The sharded merge (an all-to-all of query slices, each rank merging its slice, the slices
// all-gathered) equals the one-rank result bit for bit on 2 to 5 ranks: 19 queries (divisible
// by none of them), uneven shards (one smaller than k, one empty from 4 ranks on), ties across
// shards (the last rows copy the first), k beyond a shard, exclusions.
TEST_P(MineRanks, ShardedMergeEqualsOneRankOnTwoToFiveRanks) {
    Ctx probe(GetParam());
    NS_REQUIRE_BACKEND(probe);
    const std::vector<std::vector<int64_t>> shards = {
        {12, 14}, {4, 11, 13}, {4, 0, 9, 13}, {3, 8, 0, 7, 10}};
    for (const auto &sizes : shards) {
        SCOPED_TRACE("ranks " + std::to_string(sizes.size()));
        World w = make_world(sizes);
        expect_global(GetParam(), w, 6, false, 1);
        expect_global(GetParam(), w, 5, true, 1);
        expect_global(GetParam(), w, 15, true, 1);  // k beyond every shard
    }
}

// Fewer queries than ranks: the all-gather merge (no all-to-all); forced through the sharded
// merge (NS_MINE_RANKS_MERGE=sharded: empty slices) the result is the same; and a block of at
// least R queries forced through the all-gather merge too.
TEST_P(MineRanks, FewerQueriesThanRanksAndForcedMerges) {
    Ctx probe(GetParam());
    NS_REQUIRE_BACKEND(probe);
    World few = make_world({3, 8, 0, 7, 10}, 3);
    expect_global(GetParam(), few, 6, true, 0);
    setenv("NS_MINE_RANKS_MERGE", "sharded", 1);
    expect_global(GetParam(), few, 6, true, 1);
    setenv("NS_MINE_RANKS_MERGE", "allgather", 1);
    expect_global(GetParam(), make_world({4, 11, 13}), 6, true, 0);
    unsetenv("NS_MINE_RANKS_MERGE");
}

// NS_MINE_RESULT_ON_RANK0: rank 0 gets the one-rank result; the other ranks' outputs are not
// written (odd ranks pass NULL), through both merges (19 queries on 4 ranks: sharded; 3: all-
// gathered), and the merged slices reach rank 0 through an all-to-all, not an all-gather.
TEST_P(MineRanks, ResultOnRankZeroOnly) {
    Ctx probe(GetParam());
    NS_REQUIRE_BACKEND(probe);
    for (int64_t Q : {19, 3}) {
        World w = make_world({4, 0, 9, 13}, Q);
        std::vector<int64_t> bi;
        std::vector<float> bs;
        brute(w, 6, true, bi, bs);
        Hub hub(4);
        auto out = run_ranks(GetParam(), w, 6, true, -1, &hub, -1, NS_MINE_RESULT_ON_RANK0);
        EXPECT_EQ(hub.alltoalls.load(), Q >= 4 ? 2 : 0) << "Q " << Q;
        for (size_t r = 0; r < out.size(); r++) {
            ASSERT_EQ(out[r].st, NS_OK) << "rank " << r << ": " << out[r].err;
            if (r == 0) {
                EXPECT_EQ(out[r].idx, bi) << "Q " << Q;
                EXPECT_EQ(out[r].sc, bs) << "Q " << Q;
            } else {
                EXPECT_EQ(out[r].idx, std::vector<int64_t>(bi.size(), -7)) << "rank " << r;
            }
        }
    }
}

// Ranks that disagree about NS_MINE_RESULT_ON_RANK0 fail alike, naming options->flags.
TEST_P(MineRanks, RanksDisagreeingAboutTheResultRankFail) {
    Ctx probe(GetParam());
    NS_REQUIRE_BACKEND(probe);
    World w = make_world({4, 11, 13});
    auto out = run_ranks(GetParam(), w, 4, false, -1, nullptr, -1, NS_MINE_RESULT_ON_RANK0, 2);
    for (size_t r = 0; r < out.size(); r++) {
        EXPECT_EQ(out[r].st, NS_ERR_COMM) << "rank " << r;
        EXPECT_NE(out[r].err.find("options->flags is 2 on rank 0 but 0 on rank 2"),
                  std::string::npos)
            << out[r].err;
        EXPECT_EQ(out[r].idx[0], -7) << "a failed call wrote its output";
    }
}

// A rank that fails during the sharded exchange (its progress callback cancels) fails every
// rank: its own message there, NS_ERR_COMM naming it on the others, no output written.
TEST_P(MineRanks, ACancelDuringTheShardedMergeFailsEveryRank) {
    Ctx probe(GetParam());
    NS_REQUIRE_BACKEND(probe);
    World w = make_world({4, 11, 13});
    Hub hub(3);
    auto out = run_ranks(GetParam(), w, 4, false, -1, &hub, 1);
    EXPECT_EQ(hub.alltoalls.load(), 1);
    EXPECT_EQ(out[1].st, NS_ERR_INVALID_ARGUMENT);
    EXPECT_NE(out[1].err.find("cancelled"), std::string::npos) << out[1].err;
    for (int r : {0, 2}) {
        EXPECT_EQ(out[(size_t)r].st, NS_ERR_COMM);
        EXPECT_NE(out[(size_t)r].err.find("rank 1 failed"), std::string::npos)
            << out[(size_t)r].err;
        EXPECT_NE(out[(size_t)r].err.find("cancelled"), std::string::npos) << out[(size_t)r].err;
        EXPECT_EQ(out[(size_t)r].idx[0], -7) << "a failed call wrote its output";
    }
}

TEST_P(MineRanks, ARankWithABadArgumentFailsEveryRank) {
    Ctx probe(GetParam());
    NS_REQUIRE_BACKEND(probe);
    World w = make_world({7, 8, 5});
    auto out = run_ranks(GetParam(), w, 4, false, 2);
    EXPECT_EQ(out[2].st, NS_ERR_INVALID_ARGUMENT);
    EXPECT_NE(out[2].err.find("index is NULL"), std::string::npos) << out[2].err;
    for (int r = 0; r < 2; r++) {
        EXPECT_EQ(out[(size_t)r].st, NS_ERR_COMM);
        EXPECT_NE(out[(size_t)r].err.find("rank 2 rejected"), std::string::npos) << out[(size_t)r].err;
        EXPECT_EQ(out[(size_t)r].idx[0], -7) << "a failed call wrote its output";
    }
}

// A communicator of another backend, or a broken one, fails at once (no exchange, no hang).
TEST(MineRanksArgs, UnusableCommunicatorFailsAtOnce) {
    Ctx c(NS_BACKEND_CPU, 1);
    NS_REQUIRE_BACKEND(c);
    Hub hub(2);
    ns_comm *comm = hub_comm(c, &hub, 0);
    std::vector<float> q(2 * 3, 1.f), corpus(4 * 3, 1.f), sc(4);
    std::vector<int64_t> idx(4);
    ns_mine_options o = NS_MINE_OPTIONS_INIT;
    o.comm = comm;
    comm->backend = NS_BACKEND_CUDA;
    EXPECT_EQ(ns_mine_topk(c, f32_matrix(q.data(), 2, 3), f32_matrix(corpus.data(), 4, 3), 2, &o,
                           idx.data(), sc.data()),
              NS_ERR_INVALID_ARGUMENT);
    EXPECT_NE(std::string(ns_last_error(c)).find("options->comm"), std::string::npos)
        << ns_last_error(c);
    comm->backend = NS_BACKEND_CPU;
    comm->broken = 1;
    std::snprintf(comm->broken_why, sizeof comm->broken_why, "rank 1 timed out");
    EXPECT_EQ(ns_mine_topk(c, f32_matrix(q.data(), 2, 3), f32_matrix(corpus.data(), 4, 3), 2, &o,
                           idx.data(), sc.data()),
              NS_ERR_COMM);
    EXPECT_NE(std::string(ns_last_error(c)).find("rank 1 timed out"), std::string::npos)
        << ns_last_error(c);
    ns_comm_destroy(comm);
}

INSTANTIATE_TEST_SUITE_P(B, MineRanks, NS_BACKENDS, BackendName());

}  // namespace
