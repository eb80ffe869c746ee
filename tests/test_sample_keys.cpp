// The CPU sampler's key paths (src/cpu/cpu_sample_keys.c: scalar, AVX2 8 lanes, AVX-512 16
// lanes — every one this CPU has): bit for bit the keys of the shared header (ns_sample_key,
// src/hostdevice/ns_math.h) on many seeds, steps, query and candidate ids (beyond 2^32), scores
// (up to the overflow of SimANS and softmax), strategies and row lengths that are not a multiple
// of 8 or 16; and ns_sample draws the same candidates and scores on every path (forced; each
// path also has its own candidate gather, selection and duplicate check), on ragged shapes, keep
// masks, duplicates, m below and above 16.
#include "ns_test_util.h"

#include <algorithm>
#include <cstring>

#include "ns_math.h"

extern "C" {
// Internal (src/cpu/ns_cpu.h); the test links the static library.
int ns_cpu_sample_keys_isa(void);
int ns_cpu_sample_keys_supported(int isa);
void ns_cpu_sample_keys_force(int isa);
void ns_cpu_sample_keys(int isa, const ns_sampler_options *o, int64_t qid, float sp,
                        const int64_t *ids, const float *s, int64_t n, float *keys);
}

using namespace nstest;

namespace {

constexpr int kScalar = 0, kAvx512 = 1, kAvx2 = 2;

uint32_t bits(float x) {
    uint32_t u;
    std::memcpy(&u, &x, sizeof u);
    return u;
}

// The paths this CPU has, scalar first.
std::vector<int> paths() {
    std::vector<int> p = {kScalar};
    for (int isa : {kAvx2, kAvx512})
        if (ns_cpu_sample_keys_supported(isa)) p.push_back(isa);
    return p;
}

const char *path_name(int isa) {
    return isa == kAvx512 ? "AVX-512" : isa == kAvx2 ? "AVX2" : "scalar";
}

struct ForceIsa {
    explicit ForceIsa(int isa) { ns_cpu_sample_keys_force(isa); }
    ~ForceIsa() { ns_cpu_sample_keys_force(-1); }
};

// The paths the CPU reports are the ones ns_sample takes: the widest it has.
TEST(SampleKeys, DefaultPathIsTheWidestSupported) {
    ns_cpu_sample_keys_force(-1);
    const std::vector<int> p = paths();
    EXPECT_EQ(ns_cpu_sample_keys_isa(), p.back()) << path_name(p.back());
    EXPECT_TRUE(ns_cpu_sample_keys_supported(kScalar));
}

TEST(SampleKeys, EveryPathGivesTheHeaderKeysBitForBit) {
    const std::vector<int> isas = paths();
    if (isas.size() < 2) GTEST_SKIP() << "this CPU has neither AVX2+FMA nor AVX-512: scalar only";
    std::mt19937_64 g(7);
    std::uniform_real_distribution<float> u(-1.f, 1.f);
    int64_t compared = 0, mismatches = 0;
    std::string first;
    for (int trial = 0; trial < 600; trial++) {
        ns_sampler_options o = NS_SAMPLER_OPTIONS_INIT;
        const ns_sampler strategies[] = {NS_SAMPLE_TOP, NS_SAMPLE_UNIFORM, NS_SAMPLE_SIMANS,
                                         NS_SAMPLE_SOFTMAX};
        o.strategy = strategies[trial % 4];
        o.seed = trial % 3 == 0 ? (uint64_t)trial : g();
        o.step = trial % 5 == 0 ? g() : (uint64_t)(trial % 17);
        o.simans_a = trial % 7 == 0 ? 1e30f : 0.1f + 10.f * std::abs(u(g));
        o.simans_b = 0.5f * u(g);
        o.temperature = trial % 11 == 0 ? 1e-30f : 0.01f + std::abs(u(g));
        // ragged lengths: 0..70 and some long rows
        const int64_t n = trial % 9 == 0 ? 1000 + trial : trial % 71;
        const int64_t qid = trial % 2 ? (int64_t)(g() >> 16) : (int64_t)trial;  // up to 2^48
        const float sp = trial % 13 == 0 ? 3e38f : u(g);
        std::vector<int64_t> ids((size_t)n);
        std::vector<float> s((size_t)n);
        for (int64_t j = 0; j < n; j++) {
            ids[(size_t)j] = j % 3 == 0 ? (int64_t)(g() >> 16) : (int64_t)(g() % 5000);
            if (j % 29 == 5) ids[(size_t)j] = -1;  // empty slots get a key too (ignored later)
            s[(size_t)j] = j % 31 == 7 ? 1e38f * u(g) : u(g);
        }
        for (int isa : isas) {
            std::vector<float> k((size_t)n + 16, -7.f);
            ns_cpu_sample_keys(isa, &o, qid, sp, ids.data(), s.data(), n, k.data());
            for (int64_t j = 0; j < n; j++) {
                const float want = ns_sample_key((int)o.strategy, s[(size_t)j], sp, o.simans_a,
                                                 o.simans_b, o.temperature, o.seed, o.step, qid,
                                                 ids[(size_t)j]);
                compared++;
                if (bits(k[(size_t)j]) != bits(want) && mismatches++ == 0) {
                    char buf[256];
                    std::snprintf(buf, sizeof buf,
                                  "%s path, trial %d strategy %d n %lld slot %lld: %a, header %a",
                                  path_name(isa), trial, (int)o.strategy, (long long)n,
                                  (long long)j, (double)k[(size_t)j], (double)want);
                    first = buf;
                }
            }
            // nothing written past n
            for (int64_t j = n; j < n + 16; j++)
                ASSERT_EQ(k[(size_t)j], -7.f) << path_name(isa) << " trial " << trial;
        }
    }
    EXPECT_EQ(mismatches, 0) << mismatches << " of " << compared << " keys differ; first: "
                             << first;
    EXPECT_GT(compared, 100000);
}

struct Draw {
    std::vector<int64_t> index, count;
    std::vector<float> score;
};

Draw draw(ns_context *ctx, int64_t B, int64_t C, int64_t m, uint64_t seed,
          const ns_sampler_options &o, bool keep_mask) {
    std::mt19937_64 g(seed);
    std::uniform_real_distribution<float> u(-1.f, 1.f);
    std::vector<int64_t> id((size_t)(B * C));
    std::vector<float> s((size_t)(B * C)), sp((size_t)B);
    std::vector<uint8_t> keep((size_t)(B * C));
    // odd seeds: ids from a wide range (rows without duplicates: the fast eligibility check);
    // even seeds: many duplicates per row (the hash-set path)
    const uint64_t range = seed % 2 ? (uint64_t)1 << 40 : (uint64_t)(3 * C + 1);
    for (size_t t = 0; t < id.size(); t++) {
        id[t] = g() % 13 == 0 ? -1 : (int64_t)(g() % range);
        if (g() % 17 == 0 && id[t] >= 0) id[t] += (int64_t)1 << 40;
        s[t] = u(g);
        keep[t] = g() % 5 != 0;
    }
    for (auto &x : sp) x = u(g);
    ns_candidates cand{};
    cand.queries = B;
    cand.per_query = C;
    cand.id = id.data();
    cand.score = s.data();
    cand.positive_score = sp.data();
    cand.query_offset = (int64_t)(seed * 977);
    Draw d;
    d.index.assign((size_t)(B * m), 77);
    d.count.assign((size_t)B, 77);
    d.score.assign((size_t)(B * m), 77.f);
    EXPECT_EQ(ns_sample(ctx, &cand, keep_mask ? keep.data() : nullptr, &o, m, d.index.data(),
                        d.score.data(), d.count.data()),
              NS_OK)
        << ns_last_error(ctx);
    return d;
}

TEST(SampleKeys, EveryPathDrawsTheSame) {
    const std::vector<int> isas = paths();
    if (isas.size() < 2) GTEST_SKIP() << "this CPU has neither AVX2+FMA nor AVX-512: scalar only";
    Ctx c(NS_BACKEND_CPU, 2);
    NS_REQUIRE_BACKEND(c);
    const int64_t shapes[][3] = {{1, 1, 1},     {3, 15, 4},   {5, 16, 16},   {7, 17, 3},
                                 {9, 33, 33},   {40, 100, 16}, {6, 257, 20}, {2, 1000, 64},
                                 {30, 120, 17}, {20, 64, 8}};
    uint64_t seed = 31;
    for (auto &sh : shapes)
        for (ns_sampler st : {NS_SAMPLE_TOP, NS_SAMPLE_UNIFORM, NS_SAMPLE_SIMANS,
                              NS_SAMPLE_SOFTMAX})
            for (bool keep : {false, true}) {
                ns_sampler_options o = NS_SAMPLER_OPTIONS_INIT;
                o.strategy = st;
                o.seed = seed * 0x9E3779B97F4A7C15ull;
                o.step = seed % 5;
                o.simans_a = 3.f;
                o.simans_b = 0.1f;
                o.temperature = 0.05f;
                Draw s;
                {
                    ForceIsa f(kScalar);
                    s = draw(c, sh[0], sh[1], sh[2], seed, o, keep);
                }
                for (size_t p = 1; p < isas.size(); p++) {
                    Draw v;
                    {
                        ForceIsa f(isas[p]);
                        v = draw(c, sh[0], sh[1], sh[2], seed, o, keep);
                    }
                    const std::string what = std::string(path_name(isas[p])) +
                                             " B=" + std::to_string(sh[0]) + " C=" +
                                             std::to_string(sh[1]) + " m=" +
                                             std::to_string(sh[2]) + " strategy " +
                                             std::to_string((int)st) + (keep ? " keep" : "");
                    ASSERT_EQ(v.count, s.count) << what;
                    ASSERT_EQ(v.index, s.index) << what;
                    for (size_t t = 0; t < v.score.size(); t++)
                        ASSERT_EQ(bits(v.score[t]), bits(s.score[t])) << what << " slot " << t;
                }
                seed++;
            }
}

// The selection orders by key, ties to the lower column, and −0 ties with +0 (as the float
// compare of ns_before does): top-m of scores with signed zeros and equal values.
TEST(SampleKeys, TiesAndSignedZerosGoToTheLowerColumn) {
    Ctx c(NS_BACKEND_CPU, 1);
    NS_REQUIRE_BACKEND(c);
    const float inf = INFINITY;
    const std::vector<float> s = {0.0f, -0.0f, 0.5f, -0.0f, 0.5f, 0.0f, -inf, 2.0f, -1.0f, 0.5f};
    const int64_t C = (int64_t)s.size(), m = C;
    std::vector<int64_t> id((size_t)C), index((size_t)m), count(1);
    std::vector<float> out((size_t)m);
    for (int64_t j = 0; j < C; j++) id[(size_t)j] = 100 + j;
    ns_candidates cand{};
    cand.queries = 1;
    cand.per_query = C;
    cand.id = id.data();
    cand.score = s.data();
    ns_sampler_options o = NS_SAMPLER_OPTIONS_INIT;
    o.strategy = NS_SAMPLE_TOP;
    // -Inf is not a finite score: leave it out of this row (empty slot)
    id[6] = -1;
    ASSERT_EQ(ns_sample(c, &cand, nullptr, &o, m - 1, index.data(), out.data(), count.data()),
              NS_OK)
        << ns_last_error(c);
    const std::vector<int64_t> want = {107, 102, 104, 109, 100, 101, 103, 105, 108};
    ASSERT_EQ(count[0], 9);
    for (int64_t r = 0; r < 9; r++) EXPECT_EQ(index[(size_t)r], want[(size_t)r]) << "rank " << r;
}

}  // namespace
