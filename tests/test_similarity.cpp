// ns_similarity against a double-precision loop: f32/f16/bf16 inputs, scale, cosine
// (NS_NORMALIZE), ld > cols, tiny and ragged shapes, shapes spanning several tiles; and every
// bad argument (status, message naming the argument, output untouched).
#include "ns_test_util.h"

#include "../src/ns_internal.h"

using namespace nstest;

namespace {

const float kSentinel = 12345.0f;

// A matrix of the given dtype built from random floats: the values the library sees (after
// rounding to f16/bf16) are returned in `decoded` for the reference.
struct Mat {
    std::vector<float> f32;
    std::vector<uint16_t> half;
    std::vector<double> decoded;  // rows × ld, the exact values of the stored elements
    ns_dtype dtype;
    int64_t rows, cols, ld;
    Buf<float> f32_buf;
    Buf<uint16_t> half_buf;

    // poison >= 0 stores +Inf at that flat element (a non-finite input).
    Mat(const Ctx &c, ns_dtype t, int64_t r, int64_t cl, int64_t l, uint64_t seed,
        int64_t poison = -1)
        : dtype(t), rows(r), cols(cl), ld(l ? l : cl) {
        std::vector<float> v = random_floats((size_t)(rows * ld), seed);
        if (poison >= 0) v[(size_t)poison] = INFINITY;
        decoded.resize(v.size());
        if (t == NS_F32) {
            for (size_t i = 0; i < v.size(); i++) decoded[i] = v[i];
            f32_buf.host = v;
            f32_buf.place(c);
        } else {
            half.resize(v.size());
            for (size_t i = 0; i < v.size(); i++) {
                half[i] = t == NS_F16 ? ns_f32_to_f16(v[i]) : ns_f32_to_bf16(v[i]);
                decoded[i] = t == NS_F16 ? ns_f16_to_f32(half[i]) : ns_bf16_to_f32(half[i]);
            }
            half_buf.host = half;
            half_buf.place(c);
        }
    }
    ns_matrix m() {
        ns_matrix x;
        x.data = dtype == NS_F32 ? (const void *)f32_buf.ptr() : (const void *)half_buf.ptr();
        x.dtype = dtype;
        x.rows = rows;
        x.cols = cols;
        x.ld = ld == cols ? 0 : ld;
        return x;
    }
    double at(int64_t r, int64_t c) const { return decoded[(size_t)(r * ld + c)]; }
};

// s_ij = scale · q_i·p_j in double (optionally of the unit rows), and Σ|q_ik p_jk| for the bound.
// Rows of q outside `only` (when given) are skipped: mag -1 marks them unchecked.
void reference(const Mat &q, const Mat &p, double scale, bool normalize, std::vector<double> &s,
               std::vector<double> &mag, const std::vector<int64_t> *only = nullptr) {
    int64_t Q = q.rows, P = p.rows, d = q.cols;
    std::vector<double> nq(Q, 1.0), np(P, 1.0);
    if (normalize) {
        for (int64_t i = 0; i < Q; i++) {
            double ss = 0;
            for (int64_t c = 0; c < d; c++) ss += q.at(i, c) * q.at(i, c);
            nq[i] = ss > 0 ? 1.0 / std::sqrt(ss) : 0.0;
        }
        for (int64_t j = 0; j < P; j++) {
            double ss = 0;
            for (int64_t c = 0; c < d; c++) ss += p.at(j, c) * p.at(j, c);
            np[j] = ss > 0 ? 1.0 / std::sqrt(ss) : 0.0;
        }
    }
    s.assign((size_t)(Q * P), 0.0);
    mag.assign((size_t)(Q * P), 0.0);
    std::vector<char> want_row(Q, only ? 0 : 1);
    if (only)
        for (int64_t i : *only) want_row[i] = 1;
    for (int64_t i = 0; i < Q; i++)
        for (int64_t j = 0; j < P; j++) {
            if (!want_row[i]) {
                mag[(size_t)(i * P + j)] = -1;
                continue;
            }
            double acc = 0, m = 0;
            for (int64_t c = 0; c < d; c++) {
                double t = q.at(i, c) * p.at(j, c);
                acc += t;
                m += std::fabs(t);
            }
            s[(size_t)(i * P + j)] = scale * acc * nq[i] * np[j];
            m *= std::fabs(scale) * nq[i] * np[j];
            mag[(size_t)(i * P + j)] = m;
        }
}

// Compares and prints the first few mismatches with their position and a count of the rest.
void expect_matches(const std::vector<float> &got, const std::vector<double> &want,
                    const std::vector<double> &mag, int64_t P, double rel, const std::string &what) {
    int64_t bad = 0;
    for (size_t e = 0; e < want.size(); e++) {
        if (mag[e] < 0) continue;
        double tol = 1e-6 + rel * mag[e];
        if (!(std::fabs(got[e] - want[e]) <= tol)) {
            if (bad < 5)
                ADD_FAILURE() << what << ": s[" << e / P << "][" << e % P << "] = " << got[e]
                              << ", expected " << want[e] << " (tolerance " << tol << ")";
            bad++;
        }
    }
    EXPECT_EQ(bad, 0) << what << ": " << bad << " of " << want.size() << " scores differ";
}

class Similarity : public ::testing::TestWithParam<ns_backend> {};

struct Shape {
    int64_t Q, P, d;
};

void run_case(const Ctx &c, ns_dtype tq, ns_dtype tp, Shape sh, int64_t ldq, int64_t ldp,
              float scale, unsigned flags, uint64_t seed,
              const std::vector<int64_t> *only = nullptr) {
    Mat q(c, tq, sh.Q, sh.d, ldq, seed);
    Mat p(c, tp, sh.P, sh.d, ldp, seed + 1);
    Buf<float> s(c, (size_t)(sh.Q * sh.P), kSentinel);
    ASSERT_EQ(ns_similarity(c, q.m(), p.m(), scale, flags, s.ptr()), NS_OK) << ns_last_error(c);
    std::vector<double> want, mag;
    reference(q, p, scale, flags & NS_NORMALIZE, want, mag, only);
    std::string what = std::string(ns_dtype_name(tq)) + "×" + ns_dtype_name(tp) + " " +
                       std::to_string(sh.Q) + "×" + std::to_string(sh.P) + "×" +
                       std::to_string(sh.d) + (flags ? " normalised" : "");
    // f32 accumulation over d terms: a few ulps of Σ|q_k p_k| per term.
    expect_matches(s.fetch(), want, mag, sh.P, 4e-7 * (sh.d + 8), what);
}

TEST_P(Similarity, MatchesDoubleReferenceAcrossShapesAndDtypes) {
    Ctx c(GetParam());
    NS_REQUIRE_BACKEND(c);
    const Shape shapes[] = {{1, 1, 1}, {37, 53, 17}, {5, 300, 64}, {64, 7, 384}, {1, 129, 3}};
    const ns_dtype types[] = {NS_F32, NS_F16, NS_BF16};
    uint64_t seed = 100;
    for (Shape sh : shapes)
        for (ns_dtype t : types) {
            SCOPED_TRACE(::testing::Message() << ns_dtype_name(t) << " " << sh.Q << "×" << sh.P
                                              << "×" << sh.d);
            run_case(c, t, t, sh, 0, 0, 1.0f, 0, seed++);
        }
}

TEST_P(Similarity, ScaleAndNormalise) {
    Ctx c(GetParam());
    NS_REQUIRE_BACKEND(c);
    run_case(c, NS_F32, NS_F32, {37, 53, 17}, 0, 0, 20.0f, NS_NORMALIZE, 7);
    run_case(c, NS_F16, NS_F16, {9, 41, 128}, 0, 0, 0.5f, NS_NORMALIZE, 8);
    run_case(c, NS_BF16, NS_BF16, {3, 5, 2}, 0, 0, -3.0f, NS_NORMALIZE, 9);
    run_case(c, NS_F32, NS_F32, {4, 6, 8}, 0, 0, 0.0f, 0, 10);
}

TEST_P(Similarity, LeadingDimensionLargerThanCols) {
    Ctx c(GetParam());
    NS_REQUIRE_BACKEND(c);
    run_case(c, NS_F32, NS_F32, {37, 53, 17}, 20, 33, 1.0f, 0, 11);
    run_case(c, NS_F16, NS_F16, {37, 53, 17}, 18, 24, 2.0f, NS_NORMALIZE, 12);
    run_case(c, NS_BF16, NS_BF16, {6, 9, 5}, 7, 5, 1.0f, 0, 13);
}

TEST_P(Similarity, MixedDtypes) {
    Ctx c(GetParam());
    NS_REQUIRE_BACKEND(c);
    run_case(c, NS_F32, NS_F16, {13, 21, 33}, 0, 0, 1.0f, 0, 14);
    run_case(c, NS_BF16, NS_F32, {13, 21, 33}, 40, 0, 1.0f, NS_NORMALIZE, 15);
}

// Larger than one tile of queries (2048) and of passages (4096) on the CPU backend.
TEST_P(Similarity, SpansSeveralTiles) {
    Ctx c(GetParam());
    NS_REQUIRE_BACKEND(c);
    // every column of the rows around the query-tile edges (a reference of all rows is slow
    // under sanitizers)
    const std::vector<int64_t> rows = {0, 1, 1023, 1024, 2046, 2047, 2048, 2049, 2058, 2059};
    run_case(c, NS_F16, NS_F16, {2060, 4110, 3}, 0, 0, 1.0f, 0, 16, &rows);
    const std::vector<int64_t> rows2 = {0, 2047, 2048};
    run_case(c, NS_F32, NS_F32, {2049, 4097, 2}, 3, 0, 1.0f, NS_NORMALIZE, 17, &rows2);
}

TEST_P(Similarity, ZeroRowNormalisesToZeroScores) {
    Ctx c(GetParam());
    NS_REQUIRE_BACKEND(c);
    std::vector<float> qv = {0, 0, 0, 1, 2, 3};
    std::vector<float> pv = {1, 0, 0, 0, 0, 0, 0, 1, 0};
    Buf<float> qb(c, qv), pb(c, pv), s(c, 6, kSentinel);
    ASSERT_EQ(ns_similarity(c, f32_matrix(qb.ptr(), 2, 3), f32_matrix(pb.ptr(), 3, 3), 1.0f,
                            NS_NORMALIZE, s.ptr()),
              NS_OK)
        << ns_last_error(c);
    std::vector<float> got = s.fetch();
    double n = std::sqrt(14.0);
    std::vector<double> want = {0, 0, 0, 1 / n, 0, 2 / n};
    for (int e = 0; e < 6; e++) EXPECT_NEAR(got[e], want[e], 1e-6) << "s[" << e / 3 << "][" << e % 3 << "]";
}

// ---------------------------------------------------------------- bad input

struct BadCase {
    Ctx &c;
    std::vector<float> qv, pv;
    Buf<float> qb, pb, s;
    // q_bad / p_bad >= 0: that flat element of q / p is set to `bad` (NaN, Inf).
    BadCase(Ctx &cx, int64_t Q, int64_t P, int64_t d, int64_t q_bad = -1, int64_t p_bad = -1,
            float bad = NAN)
        : c(cx), qv(poisoned(random_floats((size_t)(Q * d), 1), q_bad, bad)),
          pv(poisoned(random_floats((size_t)(P * d), 2), p_bad, bad)), qb(cx, qv), pb(cx, pv),
          s(cx, (size_t)(Q * P), kSentinel) {}
    static std::vector<float> poisoned(std::vector<float> v, int64_t at, float bad) {
        if (at >= 0) v[(size_t)at] = bad;
        return v;
    }
    void expect_untouched() {
        for (float x : s.fetch()) ASSERT_EQ(x, kSentinel) << "the output was written on failure";
    }
};

void expect_error(ns_context *ctx, ns_status got, ns_status want, const std::string &needle) {
    EXPECT_EQ(got, want) << ns_last_error(ctx);
    std::string msg = ns_last_error(ctx);
    EXPECT_NE(msg.find("ns_similarity"), std::string::npos) << msg;
    EXPECT_NE(msg.find(needle), std::string::npos) << "expected \"" << needle << "\" in: " << msg;
}

TEST_P(Similarity, BadArgumentsNameTheArgumentAndLeaveOutputUntouched) {
    Ctx c(GetParam());
    NS_REQUIRE_BACKEND(c);
    const int64_t Q = 4, P = 5, d = 6;
    BadCase b(c, Q, P, d);
    ns_matrix q = f32_matrix(b.qb.ptr(), Q, d), p = f32_matrix(b.pb.ptr(), P, d);

    EXPECT_EQ(ns_similarity(nullptr, q, p, 1.f, 0, b.s.ptr()), NS_ERR_INVALID_ARGUMENT);
    EXPECT_NE(std::string(ns_last_error(nullptr)).find("ctx is NULL"), std::string::npos);

    ns_matrix x = q;
    x.data = nullptr;
    expect_error(c, ns_similarity(c, x, p, 1.f, 0, b.s.ptr()), NS_ERR_INVALID_ARGUMENT, "q.data");
    x = p;
    x.dtype = (ns_dtype)7;
    expect_error(c, ns_similarity(c, q, x, 1.f, 0, b.s.ptr()), NS_ERR_UNSUPPORTED, "p.dtype (7)");
    x = q;
    x.rows = 0;
    expect_error(c, ns_similarity(c, x, p, 1.f, 0, b.s.ptr()), NS_ERR_INVALID_ARGUMENT, "q.rows (0)");
    x = p;
    x.rows = -2;
    expect_error(c, ns_similarity(c, q, x, 1.f, 0, b.s.ptr()), NS_ERR_INVALID_ARGUMENT, "p.rows (-2)");
    x = q;
    x.cols = 0;
    expect_error(c, ns_similarity(c, x, p, 1.f, 0, b.s.ptr()), NS_ERR_INVALID_ARGUMENT, "q.cols (0)");
    x = q;
    x.ld = 3;
    expect_error(c, ns_similarity(c, x, p, 1.f, 0, b.s.ptr()), NS_ERR_INVALID_ARGUMENT, "q.ld (3)");
    x = p;
    x.cols = 3;
    expect_error(c, ns_similarity(c, q, x, 1.f, 0, b.s.ptr()), NS_ERR_INVALID_ARGUMENT,
                 "q has 6 columns but p has 3");
    expect_error(c, ns_similarity(c, q, p, NAN, 0, b.s.ptr()), NS_ERR_INVALID_ARGUMENT, "scale (nan)");
    expect_error(c, ns_similarity(c, q, p, INFINITY, 0, b.s.ptr()), NS_ERR_INVALID_ARGUMENT, "scale (inf)");
    expect_error(c, ns_similarity(c, q, p, 1.f, 6, b.s.ptr()), NS_ERR_INVALID_ARGUMENT, "flags (0x6)");
    expect_error(c, ns_similarity(c, q, p, 1.f, 0, nullptr), NS_ERR_INVALID_ARGUMENT, "s is NULL");
    b.expect_untouched();
}

TEST_P(Similarity, NonFiniteInputsAreReportedAndOutputUntouched) {
    Ctx c(GetParam());
    NS_REQUIRE_BACKEND(c);
    const int64_t Q = 4, P = 5, d = 6;
    {
        BadCase b(c, Q, P, d, 2 * d + 3, -1, NAN);
        expect_error(c, ns_similarity(c, f32_matrix(b.qb.ptr(), Q, d), f32_matrix(b.pb.ptr(), P, d),
                                      1.f, 0, b.s.ptr()),
                     NS_ERR_NONFINITE, c.cuda() ? "q" : "q[2][3]");
        b.expect_untouched();
    }
    {
        BadCase b(c, Q, P, d, -1, 4 * d + 5, -INFINITY);
        expect_error(c, ns_similarity(c, f32_matrix(b.qb.ptr(), Q, d), f32_matrix(b.pb.ptr(), P, d),
                                      1.f, NS_NORMALIZE, b.s.ptr()),
                     NS_ERR_NONFINITE, c.cuda() ? "p" : "p[4][5]");
        b.expect_untouched();
    }
    {  // an f16 Inf
        Mat q(c, NS_F16, Q, d, 0, 3), p(c, NS_F16, P, d, 0, 4, 1 * d + 0);
        Buf<float> s(c, (size_t)(Q * P), kSentinel);
        expect_error(c, ns_similarity(c, q.m(), p.m(), 1.f, 0, s.ptr()), NS_ERR_NONFINITE,
                     c.cuda() ? "p" : "p[1][0]");
        for (float x : s.fetch()) ASSERT_EQ(x, kSentinel);
    }
}

INSTANTIATE_TEST_SUITE_P(B, Similarity, NS_BACKENDS, BackendName());

}  // namespace
