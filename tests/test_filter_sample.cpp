// ns_filter_sample (ns_filter then ns_sample in one call; on the CPU fused row by row with one
// data check): the same keep, counts, draws and scores as the two calls, on every backend, for
// every rule and strategy; its draw against a brute-force Gumbel-top-m written here (first kept
// copy of an id eligible, best key first, ties to the lower column) on every CPU key path, with
// rows where a later copy of an id would win; bad input named "ns_filter_sample", outputs kept.
#include "ns_test_util.h"

#include <algorithm>
#include <set>

#include "ns_math.h"

extern "C" {
// Internal (src/cpu/ns_cpu.h); the test links the static library.
int ns_cpu_sample_keys_supported(int isa);
void ns_cpu_sample_keys_force(int isa);
}

using namespace nstest;

namespace {

// Candidates with 1–2 positives per query (ids that collide with candidates), ~8 % empty slots,
// guide scores. dup_range > 0: ids in [0, dup_range) (duplicates in rows); else wide and
// distinct in practice.
struct Data {
    int64_t B = 0, C = 0;
    std::vector<int64_t> id, pos_off, pos_ids;
    std::vector<float> score, sp, guide, gp;
};

Data make_data(int64_t B, int64_t C, uint64_t seed, int64_t dup_range) {
    Data d;
    d.B = B, d.C = C;
    std::mt19937_64 g(seed);
    std::uniform_real_distribution<float> u(-1.f, 1.f), up(-0.3f, 1.f);
    const uint64_t range = dup_range > 0 ? (uint64_t)dup_range : (uint64_t)1 << 44;
    for (int64_t t = 0; t < B * C; t++) {
        d.id.push_back(g() % 12 == 0 ? -1 : (int64_t)(g() % range));
        d.score.push_back(u(g));
        d.guide.push_back(u(g));
    }
    d.pos_off.push_back(0);
    for (int64_t i = 0; i < B; i++) {
        const int npos = 1 + (int)(g() % 2);
        for (int k = 0; k < npos; k++)
            d.pos_ids.push_back(g() % 3 == 0 && C > 0 ? d.id[(size_t)(i * C + (int64_t)(g() % C))]
                                                    : (int64_t)(g() % range));
        d.pos_off.push_back((int64_t)d.pos_ids.size());
        d.sp.push_back(up(g));
        d.gp.push_back(up(g));
    }
    return d;
}

// The data on the context's backend, as ns_candidates.
struct Placed {
    Buf<int64_t> id, pos_off, pos_ids;
    Buf<float> score, sp, guide, gp;
    ns_id_lists lists{};
    ns_candidates cand{};
    Placed(const Ctx &c, const Data &d)
        : id(c, d.id), pos_off(c, d.pos_off), pos_ids(c, d.pos_ids), score(c, d.score),
          sp(c, d.sp), guide(c, d.guide), gp(c, d.gp) {
        lists.offsets = pos_off.ptr();
        lists.ids = pos_ids.ptr();
        lists.queries = d.B;
        cand.queries = d.B;
        cand.per_query = d.C;
        cand.id = id.ptr();
        cand.score = score.ptr();
        cand.positive_score = sp.ptr();
        cand.positive_id = &lists;
        cand.guide_score = guide.ptr();
        cand.guide_positive_score = gp.ptr();
        cand.query_offset = 12345;
    }
};

ns_filter_options filter_for(unsigned rules, int64_t C) {
    ns_filter_options o = NS_FILTER_OPTIONS_INIT;
    o.rules = rules;
    o.max_score = 0.8f;
    o.min_score = -0.7f;
    o.margin = 0.05f;
    o.rel_margin = 0.1f;
    o.rank_min = 1;
    o.rank_max = C > 2 ? C - 1 : 1 + C;
    o.guide_margin = 0.02f;
    return o;
}

ns_sampler_options sampler_for(ns_sampler st, uint64_t seed) {
    ns_sampler_options o = NS_SAMPLER_OPTIONS_INIT;
    o.strategy = st;
    o.seed = seed * 0x9E3779B97F4A7C15ull + 1;
    o.step = seed % 9;
    o.simans_a = 2.f;
    o.simans_b = 0.1f;
    o.temperature = 0.3f;
    return o;
}

struct Result {
    ns_status status = NS_OK;
    std::vector<uint8_t> keep;
    std::vector<int64_t> index, count;
    std::vector<float> score;
    ns_filter_counts counts{};
};

Result two_calls(const Ctx &c, Placed &p, const Data &d, const ns_filter_options &fo,
                 const ns_sampler_options &so, int64_t m) {
    Result r;
    Buf<uint8_t> keep(c, (size_t)(d.B * d.C), (uint8_t)9);
    Buf<int64_t> index(c, (size_t)(d.B * m), (int64_t)77), count(c, (size_t)d.B, (int64_t)77);
    Buf<float> score(c, (size_t)(d.B * m), 77.f);
    r.status = ns_filter(c, &p.cand, &fo, keep.ptr(), &r.counts);
    if (r.status == NS_OK)
        r.status = ns_sample(c, &p.cand, keep.ptr(), &so, m, index.ptr(), score.ptr(),
                             count.ptr());
    r.keep = keep.fetch(), r.index = index.fetch(), r.count = count.fetch();
    r.score = score.fetch();
    return r;
}

Result fused(const Ctx &c, Placed &p, const Data &d, const ns_filter_options &fo,
             const ns_sampler_options &so, int64_t m, bool counts = true) {
    Result r;
    Buf<uint8_t> keep(c, (size_t)(d.B * d.C), (uint8_t)9);
    Buf<int64_t> index(c, (size_t)(d.B * m), (int64_t)77), count(c, (size_t)d.B, (int64_t)77);
    Buf<float> score(c, (size_t)(d.B * m), 77.f);
    r.status = ns_filter_sample(c, &p.cand, &fo, &so, m, keep.ptr(), counts ? &r.counts : nullptr,
                                index.ptr(), score.ptr(), count.ptr());
    r.keep = keep.fetch(), r.index = index.fetch(), r.count = count.fetch();
    r.score = score.fetch();
    return r;
}

uint32_t bits(float x) {
    uint32_t u;
    std::memcpy(&u, &x, sizeof u);
    return u;
}

class FilterSample : public ::testing::TestWithParam<ns_backend> {};

TEST_P(FilterSample, SameAsFilterThenSample) {
    Ctx c(GetParam(), 2);
    NS_REQUIRE_BACKEND(c);
    const int64_t shapes[][3] = {{1, 1, 1}, {5, 17, 4}, {12, 100, 16}, {3, 300, 40}, {40, 24, 24}};
    const unsigned rule_sets[] = {0u,
                                  NS_FILTER_SAME_ID,
                                  NS_FILTER_MARGIN | NS_FILTER_MAX_SCORE,
                                  NS_FILTER_REL_MARGIN | NS_FILTER_MIN_SCORE | NS_FILTER_RANK,
                                  NS_FILTER_GUIDE | NS_FILTER_SAME_ID,
                                  0xffu & ~(unsigned)NS_FILTER_GUIDE_REL,
                                  NS_FILTER_GUIDE_REL | NS_FILTER_MARGIN};
    uint64_t seed = 1;
    for (auto &sh : shapes)
        for (unsigned rules : rule_sets) {
            const ns_sampler st = (ns_sampler)(seed % 4);
            const Data d = make_data(sh[0], sh[1], seed, seed % 2 ? 2 * sh[1] : 0);
            Placed p(c, d);
            const ns_filter_options fo = filter_for(rules, sh[1]);
            const ns_sampler_options so = sampler_for(st, seed);
            const Result a = two_calls(c, p, d, fo, so, sh[2]);
            const Result b = fused(c, p, d, fo, so, sh[2]);
            const std::string what = "B=" + std::to_string(sh[0]) + " C=" + std::to_string(sh[1]) +
                                     " m=" + std::to_string(sh[2]) + " rules " +
                                     std::to_string(rules) + " strategy " + std::to_string(st);
            ASSERT_EQ(a.status, NS_OK) << what << ": " << ns_last_error(c);
            ASSERT_EQ(b.status, NS_OK) << what << ": " << ns_last_error(c);
            EXPECT_EQ(a.keep, b.keep) << what;
            EXPECT_EQ(a.index, b.index) << what;
            EXPECT_EQ(a.count, b.count) << what;
            for (size_t t = 0; t < a.score.size(); t++)
                ASSERT_EQ(bits(a.score[t]), bits(b.score[t])) << what << " slot " << t;
            const int64_t *x = &a.counts.examined, *y = &b.counts.examined;
            for (size_t k = 0; k < sizeof(ns_filter_counts) / sizeof(int64_t); k++)
                EXPECT_EQ(x[k], y[k]) << what << " count field " << k;
            EXPECT_EQ(b.counts.examined, sh[0] * sh[1]) << what;
            // counts may be NULL; the rest is unchanged
            const Result n = fused(c, p, d, fo, so, sh[2], false);
            ASSERT_EQ(n.status, NS_OK) << what;
            EXPECT_EQ(n.index, b.index) << what;
            seed++;
        }
}

// The two calls and the fused one read no data the enabled rules and the strategy do not need
// (positive scores NULL: no margin rule and no SimANS).
TEST_P(FilterSample, UnusedInputsMayBeNull) {
    Ctx c(GetParam(), 2);
    NS_REQUIRE_BACKEND(c);
    const Data d = make_data(6, 20, 5, 0);
    Placed p(c, d);
    ns_candidates x = p.cand;
    x.positive_score = nullptr, x.guide_score = nullptr, x.guide_positive_score = nullptr;
    x.positive_id = nullptr;
    p.cand = x;
    const ns_filter_options fo = filter_for(NS_FILTER_MAX_SCORE | NS_FILTER_RANK, d.C);
    const ns_sampler_options so = sampler_for(NS_SAMPLE_SOFTMAX, 3);
    const Result a = two_calls(c, p, d, fo, so, 5), b = fused(c, p, d, fo, so, 5);
    ASSERT_EQ(a.status, NS_OK) << ns_last_error(c);
    ASSERT_EQ(b.status, NS_OK) << ns_last_error(c);
    EXPECT_EQ(a.index, b.index);
    EXPECT_EQ(a.keep, b.keep);
}

TEST_P(FilterSample, BadInputNamesTheCallAndLeavesOutputs) {
    Ctx c(GetParam(), 2);
    NS_REQUIRE_BACKEND(c);
    const ns_filter_options fo = filter_for(NS_FILTER_MAX_SCORE, 8);  // s+ not needed by it
    const ns_sampler_options simans = sampler_for(NS_SAMPLE_SIMANS, 2);
    struct Case {
        const char *what;
        int64_t m;
        int poison;  // 0 none, 1 score NaN, 2 positive score NaN, 3 id -5
        unsigned rules;
        ns_status want;
        const char *needle;
    } cases[] = {
        {"score NaN", 3, 1, NS_FILTER_MAX_SCORE, NS_ERR_NONFINITE, "cand->score[13]"},
        {"s+ NaN for SimANS only", 3, 2, NS_FILTER_MAX_SCORE, NS_ERR_NONFINITE,
         "cand->positive_score[2]"},
        {"id below -1", 3, 3, NS_FILTER_MAX_SCORE, NS_ERR_INVALID_ARGUMENT, "cand->id[13]"},
        {"m too large", 9, 0, NS_FILTER_MAX_SCORE, NS_ERR_INVALID_ARGUMENT, "m (9)"},
        {"unknown rule", 3, 0, 0x100u, NS_ERR_INVALID_ARGUMENT, "options->rules"},
    };
    for (const Case &k : cases) {
        Data d = make_data(4, 8, 77, 0);
        if (k.poison == 1) d.score[13] = NAN;
        if (k.poison == 2) d.sp[2] = NAN;
        if (k.poison == 3) d.id[13] = -5;
        Placed p(c, d);
        ns_filter_options o = fo;
        o.rules = k.rules;
        const Result r = fused(c, p, d, o, simans, k.m);
        EXPECT_EQ(r.status, k.want) << k.what << ": " << ns_last_error(c);
        const std::string msg = ns_last_error(c);
        EXPECT_NE(msg.find("ns_filter_sample"), std::string::npos) << k.what << ": " << msg;
        EXPECT_NE(msg.find(k.needle), std::string::npos)
            << k.what << ": '" << msg << "' lacks '" << k.needle << "'";
        EXPECT_TRUE(std::all_of(r.keep.begin(), r.keep.end(), [](uint8_t v) { return v == 9; }))
            << k.what;
        EXPECT_TRUE(std::all_of(r.index.begin(), r.index.end(), [](int64_t v) { return v == 77; }))
            << k.what;
        EXPECT_TRUE(std::all_of(r.count.begin(), r.count.end(), [](int64_t v) { return v == 77; }))
            << k.what;
    }
}

INSTANTIATE_TEST_SUITE_P(B, FilterSample, NS_BACKENDS, BackendName());

// The fused draw is Gumbel-top-m over the header's keys (brute force here, in the test), on every
// CPU key path: rows without duplicates, rows with many, and rows built so that a later copy of
// an id has the best key (TOP: the later copy's higher score) — the eligibility check must send
// those rows down the duplicate path.
TEST(FilterSampleCpu, DrawIsGumbelTopMOnEveryKeyPath) {
    Ctx c(NS_BACKEND_CPU, 2);
    NS_REQUIRE_BACKEND(c);
    std::vector<int> isas = {0};
    for (int isa : {2, 1})
        if (ns_cpu_sample_keys_supported(isa)) isas.push_back(isa);
    const int64_t shapes[][3] = {{30, 40, 16}, {8, 300, 5}, {10, 64, 17}, {2, 700, 50}};
    uint64_t seed = 400;
    for (int isa : isas)
        for (auto &sh : shapes)
            for (int dups : {0, 1, 2})
                for (ns_sampler st : {NS_SAMPLE_TOP, NS_SAMPLE_SIMANS, NS_SAMPLE_UNIFORM}) {
                    const int64_t B = sh[0], C = sh[1], m = sh[2];
                    Data d = make_data(B, C, seed++, dups == 1 ? 2 * C : 0);
                    if (dups == 2)  // a later copy of each row's first id, with the best score
                        for (int64_t i = 0; i < B; i++) {
                            d.id[(size_t)(i * C)] = 1000 + i;
                            d.id[(size_t)(i * C + C - 2)] = 1000 + i;
                            d.score[(size_t)(i * C + C - 2)] = 0.99f;
                        }
                    Placed p(c, d);
                    const ns_filter_options fo = filter_for(NS_FILTER_MIN_SCORE, C);
                    const ns_sampler_options so = sampler_for(st, seed);
                    ns_cpu_sample_keys_force(isa);
                    const Result r = fused(c, p, d, fo, so, m);
                    ns_cpu_sample_keys_force(-1);
                    ASSERT_EQ(r.status, NS_OK) << ns_last_error(c);
                    for (int64_t i = 0; i < B; i++) {
                        std::vector<std::pair<float, int64_t>> kc;  // (key, column)
                        std::set<int64_t> seen;
                        for (int64_t j = 0; j < C; j++) {
                            const size_t t = (size_t)(i * C + j);
                            if (d.id[t] == -1 || d.score[t] < fo.min_score) continue;
                            if (!seen.insert(d.id[t]).second) continue;  // a later copy
                            kc.push_back({ns_sample_key((int)st, d.score[t], d.sp[(size_t)i],
                                                        so.simans_a, so.simans_b,
                                                        so.temperature, so.seed, so.step,
                                                        p.cand.query_offset + i, d.id[t]),
                                          j});
                        }
                        std::sort(kc.begin(), kc.end(), [](const auto &a, const auto &b) {
                            return a.first > b.first || (a.first == b.first && a.second < b.second);
                        });
                        const int64_t k = std::min<int64_t>(m, (int64_t)kc.size());
                        const std::string what = "path " + std::to_string(isa) + " B=" +
                                                 std::to_string(B) + " C=" + std::to_string(C) +
                                                 " m=" + std::to_string(m) + " dups " +
                                                 std::to_string(dups) + " strategy " +
                                                 std::to_string(st) + " row " + std::to_string(i);
                        ASSERT_EQ(r.count[(size_t)i], k) << what;
                        for (int64_t q = 0; q < m; q++) {
                            const size_t at = (size_t)(i * m + q);
                            if (q >= k) {
                                ASSERT_EQ(r.index[at], -1) << what;
                                ASSERT_TRUE(std::isnan(r.score[at])) << what;
                                continue;
                            }
                            const size_t t = (size_t)(i * C + kc[(size_t)q].second);
                            ASSERT_EQ(r.index[at], d.id[t]) << what << " rank " << q;
                            ASSERT_EQ(bits(r.score[at]), bits(d.score[t])) << what << " rank " << q;
                        }
                    }
                }
}

}  // namespace
