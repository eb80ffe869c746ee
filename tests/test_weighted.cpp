// ns_sample_corpus: exact law of successive weighted sampling without replacement (chi-square
// over ordered draws against enumerated probabilities, inclusion probabilities, m = 1 against
// w/Σw, alpha, uniform, the rejection fallback), exclusions never drawn, determinism across
// thread counts and batch splits, CPU == CUDA bit for bit, bad input.
#include "ns_test_util.h"

#include <algorithm>
#include <map>
#include <numeric>

using namespace nstest;

namespace {

struct Lists {
    std::vector<int64_t> off{0}, ids;
    void add(const std::vector<int64_t> &l) {
        ids.insert(ids.end(), l.begin(), l.end());
        off.push_back((int64_t)ids.size());
    }
};

struct Out {
    ns_status status = NS_OK;
    std::string error;
    std::vector<int64_t> index, count;
};

// weight empty = NULL (uniform over N rows); lists == nullptr: no exclusions.
Out draw(const Ctx &c, const std::vector<float> &weight, int64_t N, const Lists *lists,
         const ns_corpus_sampler_options &o, int64_t B, int64_t m, int64_t list_queries = -1) {
    Buf<float> w(c, weight.empty() ? std::vector<float>(1, 0.f) : weight);
    Buf<int64_t> off(c, lists ? lists->off : std::vector<int64_t>(1, 0));
    Buf<int64_t> ids(c, lists && !lists->ids.empty() ? lists->ids : std::vector<int64_t>(1, 0));
    const size_t n_out = (size_t)std::max<int64_t>(1, B * std::max<int64_t>(m, 1));
    Buf<int64_t> index(c, n_out, (int64_t)77);
    Buf<int64_t> count(c, (size_t)std::max<int64_t>(1, B), (int64_t)77);
    ns_corpus_weights cw{weight.empty() ? nullptr : w.ptr(), N};
    ns_id_lists ex{off.ptr(), ids.ptr(), list_queries < 0 ? B : list_queries};
    Out r;
    r.status = ns_sample_corpus(c, &cw, lists ? &ex : nullptr, &o, B, m, index.ptr(), count.ptr());
    if (r.status != NS_OK) r.error = ns_last_error(c);
    r.index = index.fetch();
    r.count = count.fetch();
    return r;
}

ns_corpus_sampler_options opts(uint64_t seed = 99, float alpha = 1.0f, int64_t offset = 0,
                               uint64_t step = 3) {
    ns_corpus_sampler_options o = NS_CORPUS_SAMPLER_OPTIONS_INIT;
    o.seed = seed;
    o.alpha = alpha;
    o.query_offset = offset;
    o.step = step;
    return o;
}

double chi2_critical(int df) {  // upper 1e-4 quantile (Wilson–Hilferty)
    const double z = 3.719, h = 2.0 / (9.0 * df);
    return df * std::pow(1 - h + z * std::sqrt(h), 3);
}

// P(ordered draws a1, a2, …) of successive sampling without replacement.
double sequential_probability(const std::vector<double> &w, const std::vector<int> &order) {
    double W = std::accumulate(w.begin(), w.end(), 0.0), p = 1;
    for (int a : order) {
        p *= w[a] / W;
        W -= w[a];
    }
    return p;
}

// All ordered m-tuples of distinct rows of positive weight, with their probabilities.
void enumerate(const std::vector<double> &w, int m, std::vector<int> &cur,
               std::map<std::vector<int>, double> &out) {
    if ((int)cur.size() == m) {
        out[cur] = sequential_probability(w, cur);
        return;
    }
    for (int r = 0; r < (int)w.size(); r++)
        if (w[r] > 0 && std::find(cur.begin(), cur.end(), r) == cur.end()) {
            cur.push_back(r);
            enumerate(w, m, cur, out);
            cur.pop_back();
        }
}

// Chi-square of the ordered outcomes of B queries against the enumeration of weights v (the
// effective weights: 0 for excluded rows), and each row's inclusion frequency within 5 σ.
void expect_law(const Out &o, const std::vector<double> &v, int64_t B, int m) {
    ASSERT_EQ(o.status, NS_OK) << o.error;
    std::map<std::vector<int>, double> law;
    std::vector<int> cur;
    enumerate(v, m, cur, law);
    std::map<std::vector<int>, double> seen;
    std::vector<double> incl(v.size(), 0.0), incl_p(v.size(), 0.0);
    for (auto &kv : law)
        for (int r : kv.first) incl_p[r] += kv.second;
    for (int64_t i = 0; i < B; i++) {
        ASSERT_EQ(o.count[i], m);
        std::vector<int> key(o.index.begin() + i * m, o.index.begin() + (i + 1) * m);
        ASSERT_TRUE(law.count(key)) << "query " << i << " drew an impossible sequence";
        seen[key] += 1;
        for (int r : key) incl[r] += 1;
    }
    double x = 0;
    for (auto &kv : law) {
        const double e = B * kv.second, d = seen[kv.first] - e;
        x += d * d / e;
    }
    EXPECT_LT(x, chi2_critical((int)law.size() - 1)) << "cells " << law.size();
    for (size_t r = 0; r < v.size(); r++) {
        const double p = incl_p[r], sd = std::sqrt(B * p * (1 - p)) + 1e-9;
        EXPECT_LT(std::fabs(incl[r] - B * p), 5 * sd + 1e-9) << "row " << r << " p " << p;
    }
}

class Weighted : public ::testing::TestWithParam<ns_backend> {};

TEST_P(Weighted, OneDrawFollowsTheWeights) {
    Ctx c(GetParam());
    NS_REQUIRE_BACKEND(c);
    const std::vector<float> w = {1, 0, 2.5f, 4, 0.5f, 3, 7, 1};
    const int64_t B = 40000;
    Out o = draw(c, w, (int64_t)w.size(), nullptr, opts(5), B, 1);
    expect_law(o, std::vector<double>(w.begin(), w.end()), B, 1);
}

TEST_P(Weighted, OrderedDrawsMatchSuccessiveSamplingWithExclusions) {
    Ctx c(GetParam());
    NS_REQUIRE_BACKEND(c);
    const std::vector<float> w = {1, 6, 2, 3, 4, 5};
    const int64_t B = 60000;
    Lists l;
    for (int64_t i = 0; i < B; i++) l.add({1, 1});  // row 1 excluded (twice) for every query
    Out o = draw(c, w, (int64_t)w.size(), &l, opts(11), B, 3);
    std::vector<double> v(w.begin(), w.end());
    v[1] = 0;
    expect_law(o, v, B, 3);
}

TEST_P(Weighted, AlphaAndUniform) {
    Ctx c(GetParam());
    NS_REQUIRE_BACKEND(c);
    const std::vector<float> w = {1, 16, 81, 0, 256};
    const int64_t B = 40000;
    Out o = draw(c, w, 5, nullptr, opts(21, 0.5f), B, 2);  // v = sqrt(w) = 1, 4, 9, 0, 16
    expect_law(o, {1, 4, 9, 0, 16}, B, 2);
    Out z = draw(c, w, 5, nullptr, opts(22, 0.0f), B, 2);  // v = 1 on positive rows
    expect_law(z, {1, 1, 1, 0, 1}, B, 2);
    Out u = draw(c, {}, 6, nullptr, opts(23), B, 2);  // weight NULL: uniform
    expect_law(u, {1, 1, 1, 1, 1, 1}, B, 2);
}

TEST_P(Weighted, FallbackWhenExclusionsHoldTheMass) {
    Ctx c(GetParam());
    NS_REQUIRE_BACKEND(c);
    // Rows 0..3 hold nearly all the mass and are excluded: rejection almost always fails, so the
    // draws come from the direct fallback, still with the law of the light rows.
    const std::vector<float> w = {1e9f, 2e9f, 1e9f, 3e9f, 1, 2, 3};
    const int64_t B = 30000;
    Lists l;
    for (int64_t i = 0; i < B; i++) l.add({3, 0, 2, 1});
    Out o = draw(c, w, 7, &l, opts(31), B, 2);
    expect_law(o, {0, 0, 0, 0, 1, 2, 3}, B, 2);
    // Fewer eligible rows than m: count < m and -1 padding.
    Lists l2;
    for (int64_t i = 0; i < 4; i++) l2.add({0, 1, 2, 3, 4, 5});
    Out p = draw(c, w, 7, &l2, opts(32), 4, 3);
    ASSERT_EQ(p.status, NS_OK) << p.error;
    for (int64_t i = 0; i < 4; i++) {
        EXPECT_EQ(p.count[i], 1);
        EXPECT_EQ(p.index[i * 3], 6);
        EXPECT_EQ(p.index[i * 3 + 1], -1);
        EXPECT_EQ(p.index[i * 3 + 2], -1);
    }
    const std::vector<float> zeros = {0, 5, 0, 0};
    Out q = draw(c, zeros, 4, nullptr, opts(33), 3, 2);  // one positive row only
    ASSERT_EQ(q.status, NS_OK) << q.error;
    for (int64_t i = 0; i < 3; i++) {
        EXPECT_EQ(q.count[i], 1);
        EXPECT_EQ(q.index[i * 2], 1);
        EXPECT_EQ(q.index[i * 2 + 1], -1);
    }
}

// A larger corpus (several table chunks) with random exclusion lists.
struct Big {
    std::vector<float> w;
    Lists l;
    int64_t N, B;
};
Big big(int64_t N, int64_t B, uint64_t seed) {
    Big b;
    b.N = N, b.B = B;
    std::mt19937_64 g(seed);
    for (int64_t r = 0; r < N; r++)
        b.w.push_back(g() % 5 == 0 ? 0.f : (float)(1 + g() % 1000) * 0.37f);
    for (int64_t i = 0; i < B; i++) {
        std::vector<int64_t> ex;
        const int n = (int)(g() % 30);
        // heavy overlap with the low rows
        for (int k = 0; k < n; k++) ex.push_back((int64_t)(g() % 64));
        b.l.add(ex);
    }
    return b;
}

TEST_P(Weighted, ExclusionsNeverDrawnRowsDistinct) {
    Ctx c(GetParam());
    NS_REQUIRE_BACKEND(c);
    Big b = big(9000, 300, 4);
    // Weight on rows < 64 raised so that excluded rows are drawn often and must be rejected.
    for (int r = 0; r < 64; r++) b.w[r] = 5e4f;
    Out o = draw(c, b.w, b.N, &b.l, opts(41, 0.75f), b.B, 25);
    ASSERT_EQ(o.status, NS_OK) << o.error;
    for (int64_t i = 0; i < b.B; i++) {
        ASSERT_EQ(o.count[i], 25);
        std::vector<int64_t> row(o.index.begin() + i * 25, o.index.begin() + (i + 1) * 25);
        for (int64_t r : row) {
            ASSERT_GE(r, 0);
            ASSERT_LT(r, b.N);
            EXPECT_GT(b.w[r], 0.f);
            for (int64_t j = b.l.off[i]; j < b.l.off[i + 1]; j++) EXPECT_NE(r, b.l.ids[j]);
        }
        std::sort(row.begin(), row.end());
        EXPECT_EQ(std::adjacent_find(row.begin(), row.end()), row.end()) << "query " << i;
    }
}

TEST_P(Weighted, DeterministicAcrossThreadsAndBatchSplits) {
    Big b = big(10000, 120, 8);
    Out ref;
    for (int threads : {1, 2, 3}) {
        Ctx c(GetParam(), threads);
        NS_REQUIRE_BACKEND(c);
        Out o = draw(c, b.w, b.N, &b.l, opts(51, 0.75f, 1000), b.B, 7);
        ASSERT_EQ(o.status, NS_OK) << o.error;
        if (ref.index.empty()) ref = o;
        EXPECT_EQ(o.index, ref.index) << threads << " threads";
        EXPECT_EQ(o.count, ref.count);
    }
    // Split the batch at 50: the second half with query_offset 1050 draws the same rows.
    Ctx c(GetParam());
    NS_REQUIRE_BACKEND(c);
    for (int part = 0; part < 2; part++) {
        const int64_t lo = part ? 50 : 0, hi = part ? b.B : 50;
        Lists l;
        for (int64_t i = lo; i < hi; i++)
            l.add(std::vector<int64_t>(b.l.ids.begin() + b.l.off[i],
                                       b.l.ids.begin() + b.l.off[i + 1]));
        Out o = draw(c, b.w, b.N, &l, opts(51, 0.75f, 1000 + lo), hi - lo, 7);
        ASSERT_EQ(o.status, NS_OK) << o.error;
        EXPECT_TRUE(std::equal(o.index.begin(), o.index.begin() + (hi - lo) * 7,
                               ref.index.begin() + lo * 7));
    }
    // Another step or seed changes the draw.
    Out s = draw(c, b.w, b.N, &b.l, opts(51, 0.75f, 1000, 4), b.B, 7);
    EXPECT_NE(s.index, ref.index);
}

TEST_P(Weighted, BadInputNamesTheArgumentAndLeavesOutputs) {
    Ctx c(GetParam());
    NS_REQUIRE_BACKEND(c);
    auto bad = [&](const std::vector<float> &w, int64_t N, const Lists *l,
                   ns_corpus_sampler_options o, int64_t B, int64_t m, const char *needle,
                   int64_t lq = -1, ns_status want = NS_ERR_INVALID_ARGUMENT) {
        Out r = draw(c, w, N, l, o, B, m, lq);
        EXPECT_EQ(r.status, want) << needle;
        EXPECT_NE(r.error.find(needle), std::string::npos) << r.error;
        for (int64_t x : r.index) EXPECT_EQ(x, 77);
        for (int64_t x : r.count) EXPECT_EQ(x, 77);
    };
    const std::vector<float> w = {1, 2, 3, 4};
    bad({1, -2, 3, 4}, 4, nullptr, opts(), 2, 1, "w->weight[1] (-2)");
    // NaN/Inf data is NS_ERR_NONFINITE, as for every op's inputs; a negative weight is invalid.
    bad({1, 2, NAN, 4}, 4, nullptr, opts(), 2, 1, "w->weight[2] (nan)", -1, NS_ERR_NONFINITE);
    bad({1, 2, 3, INFINITY}, 4, nullptr, opts(), 2, 1, "w->weight[3] (inf)", -1, NS_ERR_NONFINITE);
    bad({0, 0, 0, 0}, 4, nullptr, opts(), 2, 1, "no positive entry");
    bad(w, 4, nullptr, opts(1, NAN), 2, 1, "options->alpha (nan)");
    bad(w, 4, nullptr, opts(1, 100.f), 2, 1, "options->alpha (100)");
    bad(w, 4, nullptr, opts(), 2, 5, "m (5) is larger than the corpus (w->rows = 4)");
    bad(w, 4, nullptr, opts(), 2, 0, "m (0)");
    bad(w, 0, nullptr, opts(), 2, 1, "w->rows (0)");
    bad(w, 4, nullptr, opts(), -1, 1, "queries (-1)");
    Lists l;
    l.add({0});
    l.add({9});
    bad(w, 4, &l, opts(), 2, 1, "exclude->ids[1] (9)");
    bad(w, 4, &l, opts(), 1, 1, "exclude->queries (2) differs from queries (1)", 2);
    Lists d;
    d.off = {0, 2, 1};
    d.ids = {0, 1};
    bad(w, 4, &d, opts(), 2, 1, "exclude->offsets[2] (1)");
    Lists z;
    z.off = {1, 1, 1};
    z.ids = {0};
    bad(w, 4, &z, opts(), 2, 1, "exclude->offsets[0] (1)");
    ns_corpus_sampler_options big = opts();
    big.struct_size = sizeof(big) + 8;
    Out r = draw(c, w, 4, nullptr, big, 2, 1);
    EXPECT_EQ(r.status, NS_ERR_UNSUPPORTED);
    int64_t idx = 0, cnt = 0;
    EXPECT_EQ(ns_sample_corpus(c, nullptr, nullptr, nullptr, 1, 1, &idx, &cnt),
              NS_ERR_INVALID_ARGUMENT);
    EXPECT_NE(std::string(ns_last_error(c)).find("w"), std::string::npos);
}

INSTANTIATE_TEST_SUITE_P(B, Weighted, NS_BACKENDS, BackendName());

// CPU and CUDA draw the same rows, bit for bit (through the host layer in CI).
TEST(WeightedParity, CpuEqualsCuda) {
    Ctx cpu(NS_BACKEND_CPU), cuda(NS_BACKEND_CUDA);
    NS_REQUIRE_BACKEND(cpu);
    NS_REQUIRE_BACKEND(cuda);
    Big b = big(10000, 64, 12);
    for (float alpha : {1.0f, 0.75f, 0.0f, -0.5f}) {
        Out x = draw(cpu, b.w, b.N, &b.l, opts(61, alpha, 7), b.B, 9);
        Out y = draw(cuda, b.w, b.N, &b.l, opts(61, alpha, 7), b.B, 9);
        ASSERT_EQ(x.status, NS_OK) << x.error;
        ASSERT_EQ(y.status, NS_OK) << y.error;
        EXPECT_EQ(x.index, y.index) << "alpha " << alpha;
        EXPECT_EQ(x.count, y.count);
    }
    Out x = draw(cpu, {}, 5000, &b.l, opts(62), b.B, 4);
    Out y = draw(cuda, {}, 5000, &b.l, opts(62), b.B, 4);
    EXPECT_EQ(x.index, y.index);
    // The fallback path too.
    Lists l;
    for (int i = 0; i < 8; i++) l.add({0, 1, 2});
    const std::vector<float> w = {1e9f, 1e9f, 1e9f, 1, 2, 3};
    x = draw(cpu, w, 6, &l, opts(63), 8, 3);
    y = draw(cuda, w, 6, &l, opts(63), 8, 3);
    EXPECT_EQ(x.index, y.index);
    EXPECT_EQ(x.count, y.count);
}

}  // namespace
