// ns_plan_batches: every query exactly once, batch sizes, group purity (TAS-B) against a
// count of the group boundaries the plan must cross, NGAME batches within a group's
// neighbourhood, the duplicate-positive cap checked by brute force, seeds and epochs, drop_last,
// the same plan on CPU and CUDA contexts and thread counts, bad input.
#include "ns_test_util.h"

#include <algorithm>
#include <map>
#include <set>

using namespace nstest;

namespace {

struct Lists {
    std::vector<int64_t> off{0}, ids;
    void add(const std::vector<int64_t> &l) {
        ids.insert(ids.end(), l.begin(), l.end());
        off.push_back((int64_t)ids.size());
    }
    ns_id_lists view() const { return {off.data(), ids.data(), (int64_t)off.size() - 1}; }
};

struct Plan {
    ns_status status = NS_OK;
    std::string error;
    std::vector<int64_t> order, offsets;
    int64_t batches = -1;
    std::vector<std::vector<int64_t>> batch() const {
        std::vector<std::vector<int64_t>> r;
        for (int64_t b = 0; b < batches; b++)
            r.emplace_back(order.begin() + offsets[b], order.begin() + offsets[b + 1]);
        return r;
    }
};

Plan plan(ns_context *ctx, const std::vector<int64_t> &group, int64_t B,
          const ns_plan_options &o) {
    Plan p;
    const size_t n = group.size();
    p.order.assign(std::max<size_t>(n, 1), -7);
    p.offsets.assign(n + 1, -7);
    p.status = ns_plan_batches(ctx, group.data(), (int64_t)n, B, &o, p.order.data(),
                               p.offsets.data(), &p.batches);
    if (p.status != NS_OK) p.error = ns_last_error(ctx);
    p.order.resize(n);
    return p;
}

ns_plan_options opts(uint64_t seed = 5, uint64_t epoch = 0) {
    ns_plan_options o = NS_PLAN_OPTIONS_INIT;
    o.seed = seed;
    o.epoch = epoch;
    return o;
}

// Random group ids (not dense: ids are spread over int64) with sizes in [lo, hi].
std::vector<int64_t> make_groups(int G, int lo, int hi, uint64_t seed) {
    std::mt19937_64 g(seed);
    std::vector<int64_t> ids;
    for (int k = 0; k < G; k++) {
        const int size = lo + (int)(g() % (uint64_t)(hi - lo + 1));
        for (int j = 0; j < size; j++) ids.push_back((int64_t)k * 1000003 - 500000);
    }
    std::shuffle(ids.begin(), ids.end(), g);
    return ids;
}

// Every query of [0, n) exactly once in order; offsets increasing from 0; batches <= B.
void expect_coverage(const Plan &p, int64_t n, int64_t B, bool drop_last) {
    ASSERT_EQ(p.status, NS_OK) << p.error;
    std::vector<int> seen(n, 0);
    for (int64_t q : p.order) {
        ASSERT_GE(q, 0);
        ASSERT_LT(q, n);
        seen[q]++;
    }
    for (int64_t i = 0; i < n; i++) ASSERT_EQ(seen[i], 1) << "query " << i;
    ASSERT_EQ(p.offsets[0], 0);
    for (int64_t b = 0; b < p.batches; b++) {
        const int64_t len = p.offsets[b + 1] - p.offsets[b];
        ASSERT_GE(len, 1);
        ASSERT_LE(len, B);
        if (drop_last) ASSERT_EQ(len, B);
    }
    if (!drop_last) ASSERT_EQ(p.offsets[p.batches], n);
}

TEST(PlanBatches, CoversEveryQueryOnce) {
    Ctx c(NS_BACKEND_CPU);
    NS_REQUIRE_BACKEND(c);
    for (int64_t B : {1, 7, 32, 1000}) {
        const auto g = make_groups(23, 1, 90, 11 + B);
        const Plan p = plan(c, g, B, opts());
        expect_coverage(p, (int64_t)g.size(), B, false);
        // without a cap, only the last batch can be short
        for (int64_t b = 0; b + 1 < p.batches; b++)
            EXPECT_EQ(p.offsets[b + 1] - p.offsets[b], B);
    }
}

TEST(PlanBatches, DropLastDropsOnlyTheShortBatch) {
    Ctx c(NS_BACKEND_CPU);
    NS_REQUIRE_BACKEND(c);
    const auto g = make_groups(9, 3, 40, 3);
    const int64_t n = (int64_t)g.size(), B = 16;
    ns_plan_options o = opts();
    o.drop_last = 1;
    const Plan p = plan(c, g, B, o);
    expect_coverage(p, n, B, true);  // order still holds all n: the dropped ones at the tail
    EXPECT_EQ(p.batches, n / B);
}

// TAS-B: the plan is the groups' queries laid one group after another, so a batch mixes groups
// only where it crosses a group boundary: at most G − 1 batches are impure, whatever the sizes.
// Random batches of the same data are almost never pure (the reference).
TEST(PlanBatches, BatchesAreGroupPure) {
    Ctx c(NS_BACKEND_CPU);
    NS_REQUIRE_BACKEND(c);
    const int G = 12;
    const int64_t B = 32;
    const auto g = make_groups(G, 4 * (int)B, 10 * (int)B, 21);
    const Plan p = plan(c, g, B, opts());
    expect_coverage(p, (int64_t)g.size(), B, false);
    int impure = 0;
    for (const auto &b : p.batch()) {
        std::set<int64_t> s;
        for (int64_t q : b) s.insert(g[q]);
        impure += s.size() > 1;
    }
    EXPECT_LE(impure, G - 1);
    // the reference: the same queries in random batches are almost never pure
    std::vector<int64_t> perm(g.size());
    for (size_t i = 0; i < perm.size(); i++) perm[i] = (int64_t)i;
    std::shuffle(perm.begin(), perm.end(), std::mt19937_64(22));
    int random_pure = 0, random_batches = 0;
    for (size_t b0 = 0; b0 < perm.size(); b0 += B, random_batches++) {
        std::set<int64_t> s;
        for (size_t j = b0; j < std::min(perm.size(), b0 + (size_t)B); j++) s.insert(g[perm[j]]);
        random_pure += s.size() == 1;
    }
    EXPECT_GE(1.0 - (double)impure / p.batches, 0.85);
    EXPECT_LT((double)random_pure / random_batches, 0.05);
    // groups whose size is a multiple of B give pure batches only
    std::vector<int64_t> exact;
    for (int k = 0; k < 5; k++)
        for (int j = 0; j < (k + 1) * B; j++) exact.push_back(k * 7);
    std::shuffle(exact.begin(), exact.end(), std::mt19937_64(4));
    const Plan e = plan(c, exact, B, opts(9));
    expect_coverage(e, (int64_t)exact.size(), B, false);
    for (const auto &b : e.batch())
        for (int64_t q : b) ASSERT_EQ(exact[q], exact[b[0]]);
}

// NGAME: each batch's groups lie in the closed neighbourhood of one group (its seed) except
// when groups run out near the end of the epoch; at most groups_per_batch groups.
TEST(PlanBatches, NeighbourBatchesStayNearTheirSeed) {
    Ctx c(NS_BACKEND_CPU);
    NS_REQUIRE_BACKEND(c);
    const int G = 16;
    const int64_t B = 24;
    std::vector<int64_t> g;
    for (int k = 0; k < G; k++)
        for (int j = 0; j < 12 * B; j++) g.push_back(k);
    std::shuffle(g.begin(), g.end(), std::mt19937_64(2));
    Lists nb;  // groups on a ring: neighbours k+1, k−1, k+2
    for (int k = 0; k < G; k++) nb.add({(k + 1) % G, (k + G - 1) % G, (k + 2) % G});
    const ns_id_lists view = nb.view();
    ns_plan_options o = opts(3);
    o.neighbors = &view;
    o.groups_per_batch = 3;
    const Plan p = plan(c, g, B, o);
    expect_coverage(p, (int64_t)g.size(), B, false);
    int near = 0, multi = 0;
    for (const auto &b : p.batch()) {
        std::set<int64_t> s;
        for (int64_t q : b) s.insert(g[q]);
        multi += s.size() > 1;
        bool ok = false;
        for (int64_t seed : s) {
            std::set<int64_t> hood{seed};
            for (int64_t j = nb.off[seed]; j < nb.off[seed + 1]; j++) hood.insert(nb.ids[j]);
            ok |= std::includes(hood.begin(), hood.end(), s.begin(), s.end()) && s.size() <= 3;
        }
        near += ok;
    }
    EXPECT_GE((double)near / p.batches, 0.9) << near << " of " << p.batches;
    EXPECT_GE((double)multi / p.batches, 0.5);  // batches do mix neighbouring groups
}

// The cap, brute force: in no batch does a positive id occur in more than cap queries.
TEST(PlanBatches, DuplicatePositiveCapNeverViolated) {
    Ctx c(NS_BACKEND_CPU);
    NS_REQUIRE_BACKEND(c);
    const auto g = make_groups(6, 20, 120, 8);
    const int64_t n = (int64_t)g.size();
    std::mt19937_64 r(17);
    Lists pos;  // 1..3 positives per query from a small pool: many duplicates
    for (int64_t i = 0; i < n; i++) {
        std::vector<int64_t> l;
        const int k = 1 + (int)(r() % 3);
        for (int j = 0; j < k; j++) l.push_back((int64_t)(r() % 40) * 13 - 100);
        pos.add(l);
    }
    const ns_id_lists view = pos.view();
    for (int64_t cap : {1, 2, 5}) {
        for (int64_t B : {8, 33}) {
            ns_plan_options o = opts(cap);
            o.positives = &view;
            o.max_duplicate_positives = cap;
            const Plan p = plan(c, g, B, o);
            expect_coverage(p, n, B, false);
            for (const auto &b : p.batch()) {
                std::map<int64_t, int64_t> seen;
                for (int64_t q : b) {
                    std::set<int64_t> own(pos.ids.begin() + pos.off[q],
                                          pos.ids.begin() + pos.off[q + 1]);
                    for (int64_t id : own) seen[id]++;
                }
                for (const auto &kv : seen) ASSERT_LE(kv.second, cap) << "positive " << kv.first;
            }
        }
    }
    // without the cap the same data does put duplicates together (the check above can fail)
    const Plan free_plan = plan(c, g, 33, opts());
    int dup = 0;
    for (const auto &b : free_plan.batch()) {
        std::map<int64_t, int64_t> seen;
        for (int64_t q : b)
            for (int64_t j = pos.off[q]; j < pos.off[q + 1]; j++) dup |= ++seen[pos.ids[j]] > 1;
    }
    EXPECT_TRUE(dup);
}

TEST(PlanBatches, SeedsAndEpochs) {
    Ctx c(NS_BACKEND_CPU), c1(NS_BACKEND_CPU, 1);
    NS_REQUIRE_BACKEND(c);
    const auto g = make_groups(10, 5, 60, 1);
    const Plan a = plan(c, g, 16, opts(5, 0)), b = plan(c1, g, 16, opts(5, 0));
    EXPECT_EQ(a.order, b.order);
    EXPECT_EQ(a.offsets, b.offsets);
    EXPECT_NE(a.order, plan(c, g, 16, opts(6, 0)).order);
    EXPECT_NE(a.order, plan(c, g, 16, opts(5, 1)).order);
    Ctx gpu(NS_BACKEND_CUDA);  // host bookkeeping on a CUDA context too: the same plan
    if (gpu.status == NS_OK) EXPECT_EQ(plan(gpu, g, 16, opts(5, 0)).order, a.order);
}

TEST(PlanBatches, BadInput) {
    Ctx c(NS_BACKEND_CPU);
    NS_REQUIRE_BACKEND(c);
    std::vector<int64_t> g{0, 1, 1, 0, 2};
    int64_t order[5], off[6], nb = -3;
    auto fails = [&](ns_status want, const ns_plan_options &o, int64_t B, const char *needle,
                     const int64_t *grp = nullptr, int64_t n = 5) {
        const ns_status st = ns_plan_batches(c, grp ? grp : g.data(), n, B, &o, order, off, &nb);
        EXPECT_EQ(st, want) << needle;
        EXPECT_NE(std::string(ns_last_error(c)).find(needle), std::string::npos)
            << ns_last_error(c);
        EXPECT_EQ(nb, -3) << "an output was written by a failing call";
    };
    fails(NS_ERR_INVALID_ARGUMENT, opts(), 0, "batch_size (0)");
    fails(NS_ERR_INVALID_ARGUMENT, opts(), 4, "n (-1)", nullptr, -1);
    ns_plan_options o = opts();
    o.drop_last = 2;
    fails(NS_ERR_INVALID_ARGUMENT, o, 4, "drop_last (2)");
    o = opts();
    o.max_duplicate_positives = 0;
    fails(NS_ERR_INVALID_ARGUMENT, o, 4, "max_duplicate_positives (0)");
    Lists short_pos;
    short_pos.add({1});
    const ns_id_lists sp = short_pos.view();
    o = opts();
    o.positives = &sp;
    fails(NS_ERR_INVALID_ARGUMENT, o, 4, "options->positives->queries (1) must be 5");
    Lists nbl;
    nbl.add({1});
    nbl.add({7});
    nbl.add({0});
    ns_id_lists nv = nbl.view();
    o = opts();
    o.neighbors = &nv;
    fails(NS_ERR_INVALID_ARGUMENT, o, 4, "options->neighbors->ids[1] (7)");
    nbl.ids[1] = 0;
    nv = nbl.view();
    std::vector<int64_t> g3{0, 1, 3, 0, 2};
    fails(NS_ERR_INVALID_ARGUMENT, o, 4, "group[2] (3)", g3.data());
    o.groups_per_batch = 65;
    fails(NS_ERR_INVALID_ARGUMENT, o, 4, "groups_per_batch (65)");
    ns_plan_options big = opts();
    big.struct_size = sizeof big + 8;
    fails(NS_ERR_UNSUPPORTED, big, 4, "struct_size");
    EXPECT_EQ(ns_plan_batches(c, g.data(), 5, 2, nullptr, nullptr, off, &nb),
              NS_ERR_INVALID_ARGUMENT);
    EXPECT_NE(std::string(ns_last_error(c)).find("order"), std::string::npos);
    // n = 0: no batches
    EXPECT_EQ(ns_plan_batches(c, nullptr, 0, 2, nullptr, order, off, &nb), NS_OK);
    EXPECT_EQ(nb, 0);
    EXPECT_EQ(off[0], 0);
}

}  // namespace
