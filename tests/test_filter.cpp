// ns_filter against a plain double-precision reference written here, rule by rule and combined,
// on random candidates with several positives per query; counts exact; bad input.
#include "ns_test_util.h"

#include <algorithm>

#include <sys/mman.h>
#include <unistd.h>

using namespace nstest;

namespace {

// Random candidates: ids from a small range (so candidates collide with positives), about 10 %
// empty slots, 1–3 positives per query whose lowest score is s⁺ (negative for some queries).
struct Problem {
    int64_t B = 0, C = 0;
    std::vector<int64_t> id, pos_off, pos_ids;
    std::vector<float> score, sp, guide, gp;
};

Problem make_problem(int64_t B, int64_t C, uint64_t seed) {
    Problem p;
    p.B = B, p.C = C;
    std::mt19937_64 g(seed);
    std::uniform_real_distribution<float> u(-1.f, 1.f), upos(-0.6f, 1.0f);
    const int64_t range = 3 * C + 3;
    p.id.resize(B * C);
    p.score.resize(B * C);
    p.guide.resize(B * C);
    for (int64_t t = 0; t < B * C; t++) {
        p.id[t] = (g() % 10 == 0) ? -1 : (int64_t)(g() % range);
        p.score[t] = u(g);
        p.guide[t] = u(g);
    }
    p.pos_off.push_back(0);
    for (int64_t i = 0; i < B; i++) {
        int npos = 1 + (int)(g() % 3);
        float lowest = 2.f;
        for (int k = 0; k < npos; k++) {
            p.pos_ids.push_back((int64_t)(g() % range));
            lowest = std::min(lowest, upos(g));
        }
        p.pos_off.push_back((int64_t)p.pos_ids.size());
        p.sp.push_back(lowest);
        p.gp.push_back(upos(g));
    }
    return p;
}

// The filter as DESIGN.md states it, in double.
void reference(const Problem &p, const ns_filter_options &o, std::vector<uint8_t> &keep,
               ns_filter_counts &n) {
    keep.assign(p.B * p.C, 0);
    n = ns_filter_counts{};
    n.examined = p.B * p.C;
    for (int64_t i = 0; i < p.B; i++)
        for (int64_t j = 0; j < p.C; j++) {
            const int64_t t = i * p.C + j;
            if (p.id[t] == -1) {
                n.empty++;
                continue;
            }
            const double s = p.score[t], sp = p.sp[i], g = p.guide[t], gp = p.gp[i];
            bool same = false;
            for (int64_t k = p.pos_off[i]; k < p.pos_off[i + 1]; k++) same |= p.pos_ids[k] == p.id[t];
            const unsigned r = o.rules;
            bool h_same = (r & NS_FILTER_SAME_ID) && same;
            bool h_max = (r & NS_FILTER_MAX_SCORE) && s > o.max_score;
            bool h_min = (r & NS_FILTER_MIN_SCORE) && s < o.min_score;
            bool h_margin = (r & NS_FILTER_MARGIN) && s > sp - o.margin;
            bool h_rel = (r & NS_FILTER_REL_MARGIN) && s > sp - std::fabs(sp) * o.rel_margin;
            bool h_rank = (r & NS_FILTER_RANK) && (j < o.rank_min || j >= o.rank_max);
            bool h_guide = ((r & NS_FILTER_GUIDE) && g > gp - o.guide_margin) ||
                           ((r & NS_FILTER_GUIDE_REL) && g > gp - std::fabs(gp) * o.guide_margin);
            n.same_id += h_same;
            n.max_score += h_max;
            n.min_score += h_min;
            n.margin += h_margin;
            n.rel_margin += h_rel;
            n.rank += h_rank;
            n.guide += h_guide;
            bool removed = h_same || h_max || h_min || h_margin || h_rel || h_rank || h_guide;
            keep[t] = !removed;
            n.removed += removed;
            n.kept += !removed;
        }
}

// The problem's buffers on the context's backend, and the ns_candidates that point at them.
struct Placed {
    Buf<int64_t> id, pos_off, pos_ids;
    Buf<float> score, sp, guide, gp;
    ns_id_lists lists{};
    ns_candidates cand{};
    Placed(const Ctx &c, const Problem &p)
        : id(c, p.id), pos_off(c, p.pos_off), pos_ids(c, p.pos_ids), score(c, p.score),
          sp(c, p.sp), guide(c, p.guide), gp(c, p.gp) {
        lists.offsets = pos_off.ptr();
        lists.ids = pos_ids.ptr();
        lists.queries = p.B;
        cand.queries = p.B;
        cand.per_query = p.C;
        cand.id = id.ptr();
        cand.score = score.ptr();
        cand.positive_score = sp.ptr();
        cand.positive_id = &lists;
        cand.guide_score = guide.ptr();
        cand.guide_positive_score = gp.ptr();
        cand.query_offset = 0;
    }
};

std::string counts_str(const ns_filter_counts &n) {
    char b[320];
    snprintf(b, sizeof b,
             "examined %lld kept %lld removed %lld empty %lld | same_id %lld max %lld min %lld "
             "margin %lld rel %lld rank %lld guide %lld",
             (long long)n.examined, (long long)n.kept, (long long)n.removed, (long long)n.empty,
             (long long)n.same_id, (long long)n.max_score, (long long)n.min_score,
             (long long)n.margin, (long long)n.rel_margin, (long long)n.rank, (long long)n.guide);
    return b;
}

bool same_counts(const ns_filter_counts &a, const ns_filter_counts &b) {
    return a.examined == b.examined && a.kept == b.kept && a.removed == b.removed &&
           a.empty == b.empty && a.same_id == b.same_id && a.max_score == b.max_score &&
           a.min_score == b.min_score && a.margin == b.margin && a.rel_margin == b.rel_margin &&
           a.rank == b.rank && a.guide == b.guide;
}

// Options with every threshold set to something that fires on part of the random data.
ns_filter_options options_for(unsigned rules, int64_t C) {
    ns_filter_options o = NS_FILTER_OPTIONS_INIT;
    o.rules = rules;
    o.max_score = 0.6f;
    o.min_score = -0.7f;
    o.margin = 0.15f;
    o.rel_margin = 0.3f;
    o.rank_min = C > 2 ? 1 : 0;
    o.rank_max = std::max<int64_t>(o.rank_min + 1, C - C / 4);
    o.guide_margin = 0.2f;
    return o;
}

class Filter : public ::testing::TestWithParam<ns_backend> {};

void run_case(const Ctx &c, int64_t B, int64_t C, const ns_filter_options &o, uint64_t seed) {
    Problem p = make_problem(B, C, seed);
    Placed d(c, p);
    Buf<uint8_t> keep(c, (size_t)(B * C), (uint8_t)7);
    ns_filter_counts got{};
    ASSERT_EQ(ns_filter(c, &d.cand, &o, keep.ptr(), &got), NS_OK) << ns_last_error(c);
    std::vector<uint8_t> want;
    ns_filter_counts wn;
    reference(p, o, want, wn);
    const auto &k = keep.fetch();
    int64_t bad = 0;
    std::string first;
    for (int64_t t = 0; t < B * C; t++)
        if (k[t] != want[t]) {
            if (bad++ < 5)
                first += " [q " + std::to_string(t / C) + " col " + std::to_string(t % C) +
                         " id " + std::to_string(p.id[t]) + " s " + std::to_string(p.score[t]) +
                         " got " + std::to_string(k[t]) + " want " + std::to_string(want[t]) + "]";
        }
    EXPECT_EQ(bad, 0) << "B=" << B << " C=" << C << " rules=0x" << std::hex << o.rules << std::dec
                      << first;
    EXPECT_TRUE(same_counts(got, wn)) << "rules=0x" << std::hex << o.rules << std::dec
                                      << "\n got  " << counts_str(got) << "\n want "
                                      << counts_str(wn);
    EXPECT_EQ(got.kept + got.removed + got.empty, got.examined);
}

const int64_t kShapes[][2] = {{1, 1}, {1, 5}, {7, 13}, {33, 64}, {5, 200}, {64, 3}};

}  // namespace

TEST_P(Filter, EachRuleAloneMatchesReference) {
    Ctx c(GetParam(), 2);
    NS_REQUIRE_BACKEND(c);
    uint64_t seed = 100;
    for (unsigned bit = 0; bit < 8; bit++)
        for (auto &sh : kShapes) run_case(c, sh[0], sh[1], options_for(1u << bit, sh[1]), seed++);
}

TEST_P(Filter, CombinedRulesMatchReference) {
    Ctx c(GetParam(), 2);
    NS_REQUIRE_BACKEND(c);
    uint64_t seed = 200;
    const unsigned combos[] = {0u, 0xffu, NS_FILTER_SAME_ID | NS_FILTER_MARGIN,
                               NS_FILTER_REL_MARGIN | NS_FILTER_MAX_SCORE | NS_FILTER_RANK,
                               NS_FILTER_GUIDE | NS_FILTER_GUIDE_REL | NS_FILTER_MIN_SCORE,
                               NS_FILTER_SAME_ID | NS_FILTER_GUIDE_REL | NS_FILTER_RANK};
    for (unsigned rules : combos)
        for (auto &sh : kShapes) run_case(c, sh[0], sh[1], options_for(rules, sh[1]), seed++);
    // Overlapping rules: each counts what it would remove, removed counts the union.
    Problem p = make_problem(40, 50, 7);
    Placed d(c, p);
    Buf<uint8_t> keep(c, (size_t)(40 * 50), (uint8_t)0);
    ns_filter_counts n{};
    ns_filter_options o = options_for(0xffu, 50);
    ASSERT_EQ(ns_filter(c, &d.cand, &o, keep.ptr(), &n), NS_OK) << ns_last_error(c);
    EXPECT_GT(n.same_id + n.max_score + n.min_score + n.margin + n.rel_margin + n.rank + n.guide,
              n.removed)
        << "the random data should make rules overlap: " << counts_str(n);
    EXPECT_GT(n.kept, 0);
    EXPECT_GT(n.empty, 0);
}

// With a negative s⁺ the relative rule must stay below s⁺: threshold s⁺ − |s⁺|·rel, not
// s⁺·(1 − rel) (which would lie above s⁺ and remove far too much).
TEST_P(Filter, RelativeMarginUsesAbsolutePositiveScore) {
    Ctx c(GetParam());
    NS_REQUIRE_BACKEND(c);
    Problem p;
    p.B = 2, p.C = 4;
    p.id = {10, 11, 12, 13, 20, 21, 22, 23};
    p.score = {-0.7f, -0.5f, -0.3f, -0.1f, 0.1f, 0.3f, 0.45f, 0.7f};
    p.sp = {-0.4f, 0.5f};  // thresholds: −0.4 − 0.2 = −0.6 and 0.5 − 0.25 = 0.25
    p.gp = {0.f, 0.f};
    p.guide.assign(8, 0.f);
    p.pos_off = {0, 0, 0};
    Placed d(c, p);
    ns_filter_options o = NS_FILTER_OPTIONS_INIT;
    o.rules = NS_FILTER_REL_MARGIN;
    o.rel_margin = 0.5f;
    Buf<uint8_t> keep(c, 8, (uint8_t)7);
    ns_filter_counts n{};
    ASSERT_EQ(ns_filter(c, &d.cand, &o, keep.ptr(), &n), NS_OK) << ns_last_error(c);
    std::vector<uint8_t> want = {1, 0, 0, 0, 1, 0, 0, 0};
    EXPECT_EQ(keep.fetch(), want);
    EXPECT_EQ(n.rel_margin, 6);
    EXPECT_EQ(n.removed, 6);
    EXPECT_EQ(n.kept, 2);
}

// NULL options: the defaults (same id only); NULL counts is accepted; empty slots with NaN
// scores are ignored (mine_topk pads with -Inf; other producers may pad with NaN).
TEST_P(Filter, DefaultsNullCountsAndEmptySlots) {
    Ctx c(GetParam());
    NS_REQUIRE_BACKEND(c);
    Problem p = make_problem(9, 17, 31);
    p.score[3] = NAN;
    p.id[3] = -1;
    p.score[5] = -INFINITY;
    p.id[5] = -1;
    Placed d(c, p);
    Buf<uint8_t> keep(c, (size_t)(9 * 17), (uint8_t)7);
    ASSERT_EQ(ns_filter(c, &d.cand, nullptr, keep.ptr(), nullptr), NS_OK) << ns_last_error(c);
    ns_filter_options o = NS_FILTER_OPTIONS_INIT;
    std::vector<uint8_t> want;
    ns_filter_counts wn;
    reference(p, o, want, wn);
    EXPECT_EQ(keep.fetch(), want);
    EXPECT_GT(wn.same_id, 0);
    // Rules that need no positive data work without it.
    d.cand.positive_score = nullptr;
    d.cand.positive_id = nullptr;
    d.cand.guide_score = nullptr;
    d.cand.guide_positive_score = nullptr;
    o = options_for(NS_FILTER_MAX_SCORE | NS_FILTER_MIN_SCORE | NS_FILTER_RANK, 17);
    ns_filter_counts n{};
    ASSERT_EQ(ns_filter(c, &d.cand, &o, keep.ptr(), &n), NS_OK) << ns_last_error(c);
    reference(p, o, want, wn);
    EXPECT_EQ(keep.fetch(), want);
    EXPECT_TRUE(same_counts(n, wn)) << counts_str(n) << "\n" << counts_str(wn);
}

// Every bad argument: the status, a message naming the argument, and keep/counts untouched.
TEST_P(Filter, BadInputNamesTheArgumentAndLeavesOutputs) {
    Ctx c(GetParam());
    NS_REQUIRE_BACKEND(c);
    Problem p = make_problem(4, 6, 55);
    Placed d(c, p);
    Buf<uint8_t> keep(c, 24, (uint8_t)7);
    const ns_filter_options all = options_for(0xffu, 6);

    auto expect_fail = [&](const char *what, ns_status want, const ns_candidates *cand,
                           const ns_filter_options *o, uint8_t *k, const char *needle) {
        ns_filter_counts n;
        n.examined = -77;
        ns_status st = ns_filter(c, cand, o, k, &n);
        EXPECT_EQ(st, want) << what << ": " << ns_last_error(c);
        std::string msg = ns_last_error(c);
        EXPECT_NE(msg.find("ns_filter"), std::string::npos) << what << ": " << msg;
        EXPECT_NE(msg.find(needle), std::string::npos) << what << ": '" << msg << "' lacks '"
                                                       << needle << "'";
        EXPECT_EQ(n.examined, -77) << what;
        const auto &h = keep.fetch();
        EXPECT_TRUE(std::all_of(h.begin(), h.end(), [](uint8_t v) { return v == 7; })) << what;
    };

    EXPECT_EQ(ns_filter(nullptr, &d.cand, &all, keep.ptr(), nullptr), NS_ERR_INVALID_ARGUMENT);
    expect_fail("cand NULL", NS_ERR_INVALID_ARGUMENT, nullptr, &all, keep.ptr(), "cand");
    expect_fail("keep NULL", NS_ERR_INVALID_ARGUMENT, &d.cand, &all, nullptr, "keep");
    {
        ns_candidates x = d.cand;
        x.queries = 0;
        expect_fail("queries 0", NS_ERR_INVALID_ARGUMENT, &x, &all, keep.ptr(), "queries (0)");
        x = d.cand;
        x.per_query = 0;
        expect_fail("per_query 0", NS_ERR_INVALID_ARGUMENT, &x, &all, keep.ptr(), "per_query (0)");
        x = d.cand;
        x.id = nullptr;
        expect_fail("id NULL", NS_ERR_INVALID_ARGUMENT, &x, &all, keep.ptr(), "cand->id");
        x = d.cand;
        x.score = nullptr;
        expect_fail("score NULL", NS_ERR_INVALID_ARGUMENT, &x, &all, keep.ptr(), "cand->score");
        x = d.cand;
        x.positive_id = nullptr;
        expect_fail("positive_id NULL", NS_ERR_INVALID_ARGUMENT, &x, &all, keep.ptr(),
                    "cand->positive_id");
        x = d.cand;
        x.positive_score = nullptr;
        expect_fail("positive_score NULL", NS_ERR_INVALID_ARGUMENT, &x, &all, keep.ptr(),
                    "cand->positive_score");
        x = d.cand;
        x.guide_score = nullptr;
        expect_fail("guide_score NULL", NS_ERR_INVALID_ARGUMENT, &x, &all, keep.ptr(),
                    "cand->guide_score");
        x = d.cand;
        x.guide_positive_score = nullptr;
        expect_fail("guide_positive_score NULL", NS_ERR_INVALID_ARGUMENT, &x, &all, keep.ptr(),
                    "cand->guide_positive_score");
    }
    {
        ns_filter_options o = all;
        o.struct_size = 4;
        expect_fail("struct_size", NS_ERR_INVALID_ARGUMENT, &d.cand, &o, keep.ptr(), "struct_size");
        o = all;
        o.rules = 0x100u | NS_FILTER_SAME_ID;
        expect_fail("rule bits", NS_ERR_INVALID_ARGUMENT, &d.cand, &o, keep.ptr(), "rules (0x101)");
        o = all;
        o.rank_min = -1;
        expect_fail("rank_min", NS_ERR_INVALID_ARGUMENT, &d.cand, &o, keep.ptr(), "rank_min (-1)");
        o = all;
        o.rank_min = 3;
        o.rank_max = 3;
        expect_fail("rank_max", NS_ERR_INVALID_ARGUMENT, &d.cand, &o, keep.ptr(), "rank_max (3)");
        const char *names[] = {"max_score", "min_score", "margin", "rel_margin", "guide_margin"};
        for (int k = 0; k < 5; k++) {
            o = all;
            float *f[] = {&o.max_score, &o.min_score, &o.margin, &o.rel_margin, &o.guide_margin};
            *f[k] = NAN;
            expect_fail(names[k], NS_ERR_INVALID_ARGUMENT, &d.cand, &o, keep.ptr(), names[k]);
        }
    }
    // Data: non-finite scores of non-empty slots, ids below -1, malformed positive lists.
    auto with = [&](const char *what, ns_status want, const char *needle, auto edit) {
        Problem q = p;
        edit(q);
        Placed e(c, q);
        expect_fail(what, want, &e.cand, &all, keep.ptr(), needle);
    };
    with("NaN score", NS_ERR_NONFINITE, "cand->score[7]", [](Problem &q) {
        q.id[7] = 3;
        q.score[7] = NAN;
    });
    with("Inf score", NS_ERR_NONFINITE, "cand->score[2]", [](Problem &q) {
        q.id[2] = 3;
        q.score[2] = INFINITY;
    });
    with("NaN guide", NS_ERR_NONFINITE, "cand->guide_score[4]", [](Problem &q) {
        q.id[4] = 3;
        q.guide[4] = NAN;
    });
    with("Inf s+", NS_ERR_NONFINITE, "cand->positive_score[1]",
         [](Problem &q) { q.sp[1] = -INFINITY; });
    with("NaN g+", NS_ERR_NONFINITE, "cand->guide_positive_score[3]",
         [](Problem &q) { q.gp[3] = NAN; });
    with("id -2", NS_ERR_INVALID_ARGUMENT, "cand->id[5]", [](Problem &q) { q.id[5] = -2; });
    with("offsets[0]", NS_ERR_INVALID_ARGUMENT, "cand->positive_id",
         [](Problem &q) { q.pos_off[0] = 1; });
    with("offsets decrease", NS_ERR_INVALID_ARGUMENT, "cand->positive_id",
         [](Problem &q) { q.pos_off[2] = q.pos_off[1] - 1; });
    {
        ns_id_lists l = d.lists;
        l.queries = 3;
        ns_candidates x = d.cand;
        x.positive_id = &l;
        expect_fail("lists queries", NS_ERR_INVALID_ARGUMENT, &x, &all, keep.ptr(),
                    "positive_id->queries (3)");
    }
    // Empty slots are never examined for finiteness, and rules off need no data.
    {
        Problem q = p;
        q.id[7] = -1;
        q.score[7] = NAN;
        q.sp[0] = NAN;  // no margin rule below: s⁺ is not read
        Placed e(c, q);
        ns_filter_options o = options_for(NS_FILTER_SAME_ID | NS_FILTER_RANK, 6);
        EXPECT_EQ(ns_filter(c, &e.cand, &o, keep.ptr(), nullptr), NS_OK) << ns_last_error(c);
    }
}

// Issue 11 item 10: a pointer that only a disabled rule needs is never read, on either backend
// (the CUDA kernel used to load s⁺, g and g⁺ for every slot). They point at an inaccessible
// page here: any read faults.
TEST_P(Filter, PointersOfDisabledRulesAreNeverRead) {
    Ctx c(GetParam());
    NS_REQUIRE_BACKEND(c);
    Problem p = make_problem(6, 11, 41);
    Placed d(c, p);
    const long page = sysconf(_SC_PAGESIZE);
    void *none = mmap(nullptr, (size_t)page, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    ASSERT_NE(none, MAP_FAILED);
    d.cand.positive_score = (const float *)none;
    d.cand.guide_score = (const float *)none;
    d.cand.guide_positive_score = (const float *)none;
    Buf<uint8_t> keep(c, (size_t)(6 * 11), (uint8_t)7);
    ns_filter_options o = options_for(NS_FILTER_SAME_ID | NS_FILTER_MAX_SCORE | NS_FILTER_RANK, 11);
    ns_filter_counts n{}, wn{};
    ASSERT_EQ(ns_filter(c, &d.cand, &o, keep.ptr(), &n), NS_OK) << ns_last_error(c);
    std::vector<uint8_t> want;
    reference(p, o, want, wn);
    EXPECT_EQ(keep.fetch(), want);
    EXPECT_TRUE(same_counts(n, wn)) << counts_str(n) << "\n" << counts_str(wn);
    munmap(none, (size_t)page);
}

INSTANTIATE_TEST_SUITE_P(B, Filter, NS_BACKENDS, BackendName());
