// The host/device-shared math of src/hostdevice/ns_math.h on the host: Philox4x32-10 known answers,
// ns_logf against double log, the open uniform, Gumbel noise, log-weights and the filter rules.
#include "ns_test_util.h"

#include <cfloat>

#include "ns_math.h"

using namespace nstest;

namespace {

// Error of f against the exact y in units of the f32 spacing at y (ulp of the true result).
double ulp_error(float f, double y) {
    int e;
    std::frexp(y, &e);                       // y = x · 2^e, x in [0.5, 1)
    double ulp = std::ldexp(1.0, e - 24);
    if (ulp < std::ldexp(1.0, -149)) ulp = std::ldexp(1.0, -149);
    return std::fabs((double)f - y) / ulp;
}

}  // namespace

// Random123's kat_vectors for philox4x32_10 (counter, key → output).
TEST(NsMath, PhiloxKnownAnswers) {
    struct Kat {
        uint32_t ctr[4], key[2], out[4];
    } kats[] = {
        {{0, 0, 0, 0}, {0, 0}, {0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8}},
        {{0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff},
         {0xffffffff, 0xffffffff},
         {0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd}},
        {{0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344},
         {0xa4093822, 0x299f31d0},
         {0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1}},
    };
    for (const Kat &k : kats) {
        uint32_t out[4];
        ns_philox4x32_10(k.ctr, k.key, out);
        for (int w = 0; w < 4; w++)
            EXPECT_EQ(out[w], k.out[w]) << "word " << w << " of counter " << std::hex << k.ctr[0];
    }
}

// The documented counter layout: key = seed halves; counter = (cand lo, qid lo, step lo,
// cand hi16 | qid hi16 << 16); word 0 is used.
TEST(NsMath, RngCounterLayout) {
    const uint64_t seed = 0x0123456789abcdefull, step = 0x500000007ull;
    const int64_t qid = 0x0000babe00000011ll, cand = 0x0000cafe00000022ll;
    uint32_t key[2] = {0x89abcdefu, 0x01234567u};
    uint32_t ctr[4] = {0x22u, 0x11u, 0x7u, 0xcafeu | (0xbabeu << 16)};
    uint32_t out[4];
    ns_philox4x32_10(ctr, key, out);
    EXPECT_EQ(ns_rng_bits(seed, step, qid, cand), out[0]);
    // Every input moves the draw.
    const uint32_t x = ns_rng_bits(seed, step, qid, cand);
    EXPECT_NE(ns_rng_bits(seed + 1, step, qid, cand), x);
    EXPECT_NE(ns_rng_bits(seed + (1ull << 32), step, qid, cand), x);
    EXPECT_NE(ns_rng_bits(seed, step + 1, qid, cand), x);
    EXPECT_NE(ns_rng_bits(seed, step, qid + 1, cand), x);
    EXPECT_NE(ns_rng_bits(seed, step, qid + (1ll << 32), cand), x);
    EXPECT_NE(ns_rng_bits(seed, step, qid, cand + 1), x);
    EXPECT_NE(ns_rng_bits(seed, step, qid, cand + (1ll << 32)), x);
    // Swapping query and candidate ids gives another counter.
    EXPECT_NE(ns_rng_bits(seed, step, 5, 9), ns_rng_bits(seed, step, 9, 5));
}

TEST(NsMath, LogfSpecialValues) {
    EXPECT_EQ(ns_logf(1.0f), 0.0f);
    EXPECT_TRUE(std::isinf(ns_logf(0.0f)) && ns_logf(0.0f) < 0);
    EXPECT_TRUE(std::isinf(ns_logf(-0.0f)) && ns_logf(-0.0f) < 0);
    EXPECT_TRUE(std::isnan(ns_logf(-1.0f)));
    EXPECT_TRUE(std::isnan(ns_logf(-INFINITY)));
    EXPECT_TRUE(std::isnan(ns_logf(NAN)));
    EXPECT_EQ(ns_logf(INFINITY), INFINITY);
    EXPECT_TRUE(std::isnan(ns_logf(-FLT_MIN)));
}

// Below 1 ulp over a dense sample of all positive floats (every 1021st bit pattern, about 2.1
// million values including subnormals), every float within 2^14 ulps of 1, the smallest
// subnormals, the largest floats and powers of two. An exhaustive run over every positive float
// gave 0.945 ulp (the worst case near 2.67, where i·ln2 and log1p(f) partly cancel).
TEST(NsMath, LogfWithinOneUlpOfDoubleLog) {
    double worst = 0;
    uint32_t worst_bits = 0;
    int64_t checked = 0;
    auto check = [&](uint32_t b) {
        float a;
        std::memcpy(&a, &b, 4);
        double e = ulp_error(ns_logf(a), std::log((double)a));
        if (e > worst) worst = e, worst_bits = b;
        checked++;
    };
    for (uint32_t b = 1; b < 0x7f800000u; b += 1021) check(b);
    const uint32_t one = 0x3f800000u;
    for (uint32_t b = one - (1u << 14); b <= one + (1u << 14); b++) check(b);
    for (uint32_t b = 1; b < 4096; b++) check(b);                         // tiny subnormals
    for (uint32_t b = 0x007ff000u; b < 0x00801000u; b++) check(b);        // subnormal/normal edge
    for (uint32_t b = 0x7f7ff000u; b < 0x7f800000u; b++) check(b);        // largest floats
    for (uint32_t b = 0x3f2aa000u; b < 0x3f2ab000u; b++) check(b);        // the 2/3 reduction edge
    for (uint32_t b = 0x3faaa000u; b < 0x3faab000u; b++) check(b);        // the 4/3 reduction edge
    for (int e = -149; e < 128; e++) check([&] {
        float p = std::ldexp(1.0f, e);
        uint32_t b;
        std::memcpy(&b, &p, 4);
        return b;
    }());
    float wa;
    std::memcpy(&wa, &worst_bits, 4);
    EXPECT_LT(worst, 1.0) << "worst at " << std::hexfloat << wa << " over " << std::dec
                          << checked << " values";
    RecordProperty("max_ulp", std::to_string(worst));
}

TEST(NsMath, UniformIsOpenAndExact) {
    // Extremes: never 0 or 1.
    EXPECT_EQ(ns_uniform_open(0u), std::ldexp(1.0f, -24));
    EXPECT_EQ(ns_uniform_open(0xffffffffu), 1.0f - std::ldexp(1.0f, -24));
    EXPECT_LT(ns_uniform_open(0xffffffffu), 1.0f);
    // Exact: u = ((x >> 9) + 0.5) · 2^-23 in double equals the float.
    std::mt19937_64 g(7);
    double mean = 0;
    const int n = 200000;
    for (int t = 0; t < n; t++) {
        uint32_t x = (uint32_t)g();
        float u = ns_uniform_open(x);
        ASSERT_GT(u, 0.0f);
        ASSERT_LT(u, 1.0f);
        ASSERT_EQ((double)u, ((double)(x >> 9) + 0.5) * std::ldexp(1.0, -23)) << x;
        mean += u;
    }
    EXPECT_NEAR(mean / n, 0.5, 0.005);
    // The Gumbel noise is finite at both ends.
    float lo = ns_gumbel(ns_uniform_open(0u)), hi = ns_gumbel(ns_uniform_open(0xffffffffu));
    EXPECT_TRUE(std::isfinite(lo) && std::isfinite(hi));
    EXPECT_NEAR(lo, -std::log(-std::log(std::ldexp(1.0, -24))), 1e-5);
    EXPECT_NEAR(hi, -std::log(-std::log1p(-std::ldexp(1.0, -24))), 1e-4);
}

// Gumbel noise from the Philox stream has the standard Gumbel mean (Euler–Mascheroni) and
// variance (π²/6).
TEST(NsMath, GumbelMoments) {
    const int n = 200000;
    double s1 = 0, s2 = 0;
    for (int t = 0; t < n; t++) {
        double gv = ns_gumbel(ns_uniform_open(ns_rng_bits(42, 3, 1, t)));
        double ref = -std::log(-std::log((double)ns_uniform_open(ns_rng_bits(42, 3, 1, t))));
        ASSERT_NEAR(gv, ref, 1e-5 * (1 + std::fabs(ref)));
        s1 += gv;
        s2 += gv * gv;
    }
    double mean = s1 / n, var = s2 / n - mean * mean;
    EXPECT_NEAR(mean, 0.5772156649, 0.01);
    EXPECT_NEAR(var, M_PI * M_PI / 6, 0.03);
}

TEST(NsMath, LogWeightsMatchTheFormulas) {
    auto sc = random_floats(1000, 11, -1.5f, 1.5f);
    auto sp = random_floats(1000, 12, -1.0f, 1.0f);
    const float as[] = {0.5f, 3.0f, 17.0f}, bs[] = {0.0f, 0.1f, -0.25f}, taus[] = {0.05f, 1.0f, 3.0f};
    for (size_t t = 0; t < sc.size(); t++) {
        for (float a : as)
            for (float b : bs) {
                double d = (double)sc[t] - sp[t] - b, want = -(double)a * d * d;
                float got = ns_log_weight(NS_SAMPLE_SIMANS, sc[t], sp[t], a, b, 1.0f);
                ASSERT_TRUE(close(got, want, 1e-6, 1e-5))
                    << "SimANS s=" << sc[t] << " s+=" << sp[t] << " a=" << a << " b=" << b
                    << " got " << got << " want " << want;
            }
        for (float tau : taus) {
            double want = (double)sc[t] / tau;
            float got = ns_log_weight(NS_SAMPLE_SOFTMAX, sc[t], sp[t], 0.5f, 0.0f, tau);
            ASSERT_TRUE(close(got, want, 0, 1e-6)) << "softmax s=" << sc[t] << " tau=" << tau;
        }
        EXPECT_EQ(ns_log_weight(NS_SAMPLE_UNIFORM, sc[t], sp[t], 0.5f, 0.0f, 1.0f), 0.0f);
    }
    // Overflow gives −Inf, not NaN; the key stays ordered.
    float w = ns_log_weight(NS_SAMPLE_SIMANS, 3e38f, -3e38f, 0.5f, 0.0f, 1.0f);
    EXPECT_TRUE(std::isinf(w) && w < 0);
    EXPECT_FALSE(std::isnan(ns_sample_key(NS_SAMPLE_SIMANS, 3e38f, -3e38f, 0.5f, 0, 1, 1, 1, 1, 1)));
    // Keys: top is the score; the others add the Gumbel noise of (seed, step, qid, id).
    EXPECT_EQ(ns_sample_key(NS_SAMPLE_TOP, 0.25f, 0, 0.5f, 0, 1, 9, 9, 9, 9), 0.25f);
    float g = ns_gumbel(ns_uniform_open(ns_rng_bits(9, 8, 7, 6)));
    EXPECT_EQ(ns_sample_key(NS_SAMPLE_UNIFORM, 0.25f, 0, 0.5f, 0, 1, 9, 8, 7, 6), g);
    EXPECT_EQ(ns_sample_key(NS_SAMPLE_SOFTMAX, 0.25f, 0, 0.5f, 0, 0.5f, 9, 8, 7, 6), 0.5f + g);
}

TEST(NsMath, FilterHitsEachRule) {
    ns_filter_options o = NS_FILTER_OPTIONS_INIT;
    o.rules = 0xffu;
    o.max_score = 0.9f;
    o.min_score = -0.7f;
    o.margin = 0.1f;
    o.rel_margin = 0.5f;
    o.rank_min = 1;
    o.rank_max = 4;
    o.guide_margin = 0.1f;
    // Nothing fires.
    EXPECT_EQ(ns_filter_hits(&o, 0.0f, 0.5f, 0.0f, 0.5f, 2), 0u);
    EXPECT_EQ(ns_filter_hits(&o, 0.95f, 2.0f, 0.0f, 0.5f, 2), (unsigned)NS_FILTER_MAX_SCORE);
    EXPECT_EQ(ns_filter_hits(&o, -0.75f, 0.5f, 0.0f, 0.5f, 2), (unsigned)NS_FILTER_MIN_SCORE);
    // s⁺ = 0.5: margin threshold 0.4, relative threshold 0.25.
    EXPECT_EQ(ns_filter_hits(&o, 0.3f, 0.5f, 0.0f, 0.5f, 2), (unsigned)NS_FILTER_REL_MARGIN);
    EXPECT_EQ(ns_filter_hits(&o, 0.45f, 0.5f, 0.0f, 0.5f, 2),
              (unsigned)(NS_FILTER_MARGIN | NS_FILTER_REL_MARGIN));
    // s⁺ = −0.4: relative threshold −0.4 − 0.2 = −0.6 (the |s⁺| keeps it below s⁺).
    EXPECT_EQ(ns_filter_hits(&o, -0.55f, -0.4f, 0.0f, 0.5f, 2), (unsigned)NS_FILTER_REL_MARGIN);
    EXPECT_EQ(ns_filter_hits(&o, 0.0f, 0.5f, 0.0f, 0.5f, 0), (unsigned)NS_FILTER_RANK);
    EXPECT_EQ(ns_filter_hits(&o, 0.0f, 0.5f, 0.0f, 0.5f, 4), (unsigned)NS_FILTER_RANK);
    EXPECT_EQ(ns_filter_hits(&o, 0.0f, 0.5f, 0.42f, 0.5f, 2), (unsigned)NS_FILTER_GUIDE);
    EXPECT_EQ(ns_filter_hits(&o, 0.0f, 0.5f, 0.46f, 0.5f, 2),
              (unsigned)(NS_FILTER_GUIDE | NS_FILTER_GUIDE_REL));
    // Disabled rules never fire.
    o.rules = NS_FILTER_RANK;
    EXPECT_EQ(ns_filter_hits(&o, 5.0f, 0.0f, 5.0f, 0.0f, 2), 0u);
}
