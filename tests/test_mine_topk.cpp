// ns_mine_topk in the faiss TestGpuSelect style: against a double-precision full sort of every
// score. Scores agree within f32 rounding, each returned row's true score is the reference score
// of its rank, no duplicates, indices equal wherever the reference scores are separated by more
// than rounding, exact ties go to the lower row (integer-valued data makes ties exact), k = 1,
// k = N, k = 2048 / 4096, exclusions, several corpus blocks and query tiles, a memory-mapped f16
// corpus, progress and cancellation; and every bad argument.
#include "ns_test_util.h"

#include "../src/ns_internal.h"

#include <algorithm>
#include <cstdio>
#include <numeric>
#include <unistd.h>

using namespace nstest;

namespace {

const int64_t kIndexSentinel = -77;
const float kScoreSentinel = 12345.0f;

// Values of a matrix as the library sees them (after f16/bf16 rounding), and the storage.
struct Emb {
    ns_dtype dtype;
    int64_t rows, cols, ld;
    std::vector<double> v;  // rows × cols
    Buf<float> f;
    Buf<uint16_t> h;
    Emb(const Ctx &c, ns_dtype t, int64_t r, int64_t cl, std::vector<float> raw, int64_t l = 0)
        : dtype(t), rows(r), cols(cl), ld(l ? l : cl) {
        // raw is rows × cols; stored with ld, the padding filled with NaN (must never be read)
        std::vector<float> st((size_t)(rows * ld), NAN);
        for (int64_t i = 0; i < rows; i++)
            for (int64_t j = 0; j < cols; j++) st[(size_t)(i * ld + j)] = raw[(size_t)(i * cols + j)];
        v.resize((size_t)(rows * cols));
        if (t == NS_F32) {
            for (size_t e = 0; e < raw.size(); e++) v[e] = raw[e];
            f.host = st;
            f.place(c);
        } else {
            std::vector<uint16_t> hs(st.size());
            for (size_t e = 0; e < st.size(); e++)
                hs[e] = t == NS_F16 ? ns_f32_to_f16(st[e]) : ns_f32_to_bf16(st[e]);
            for (int64_t i = 0; i < rows; i++)
                for (int64_t j = 0; j < cols; j++) {
                    uint16_t x = hs[(size_t)(i * ld + j)];
                    v[(size_t)(i * cols + j)] = t == NS_F16 ? ns_f16_to_f32(x) : ns_bf16_to_f32(x);
                }
            h.host = hs;
            h.place(c);
        }
    }
    ns_matrix m() {
        ns_matrix x;
        x.data = dtype == NS_F32 ? (const void *)f.ptr() : (const void *)h.ptr();
        x.dtype = dtype;
        x.rows = rows;
        x.cols = cols;
        x.ld = ld;
        return x;
    }
};

struct Excl {
    std::vector<int64_t> offsets, ids;
};

// Reference: all scores in double, exclusions removed, sorted by (score desc, row asc).
struct Reference {
    int64_t Q, N;
    std::vector<double> s;    // Q × N
    std::vector<double> mag;  // Σ|q_k c_k| · |scale| per score: the rounding bound
    std::vector<std::vector<int64_t>> order;  // per query, the non-excluded rows sorted
    Reference(const Emb &q, const Emb &c, double scale, bool normalize, const Excl *ex)
        : Q(q.rows), N(c.rows) {
        int64_t d = q.cols;
        std::vector<double> nq(Q, 1.0), nc(N, 1.0);
        if (normalize) {
            for (int64_t i = 0; i < Q; i++) {
                double ss = 0;
                for (int64_t t = 0; t < d; t++) ss += q.v[i * d + t] * q.v[i * d + t];
                nq[i] = ss > 0 ? 1 / std::sqrt(ss) : 0;
            }
            for (int64_t j = 0; j < N; j++) {
                double ss = 0;
                for (int64_t t = 0; t < d; t++) ss += c.v[j * d + t] * c.v[j * d + t];
                nc[j] = ss > 0 ? 1 / std::sqrt(ss) : 0;
            }
        }
        s.resize((size_t)(Q * N));
        mag.resize((size_t)(Q * N));
        for (int64_t i = 0; i < Q; i++)
            for (int64_t j = 0; j < N; j++) {
                double a = 0, m = 0;
                for (int64_t t = 0; t < d; t++) {
                    double x = q.v[i * d + t] * c.v[j * d + t];
                    a += x;
                    m += std::fabs(x);
                }
                s[i * N + j] = scale * a * nq[i] * nc[j];
                mag[i * N + j] = std::fabs(scale) * m * nq[i] * nc[j];
            }
        order.resize(Q);
        for (int64_t i = 0; i < Q; i++) {
            std::vector<char> out(N, 0);
            if (ex)
                for (int64_t t = ex->offsets[i]; t < ex->offsets[i + 1]; t++) out[ex->ids[t]] = 1;
            for (int64_t j = 0; j < N; j++)
                if (!out[j]) order[i].push_back(j);
            const double *si = &s[i * N];
            std::stable_sort(order[i].begin(), order[i].end(),
                             [&](int64_t a, int64_t b) { return si[a] > si[b]; });
        }
    }
    double tol(int64_t i, int64_t j, int64_t d) const {
        return 1e-6 + 4e-7 * (double)(d + 8) * mag[i * N + j];
    }
};

// The faiss-style comparison; `exact` demands identical indices and scores equal to the
// double ones (integer-valued data, where f32 is exact).
void check_topk(const Reference &ref, int64_t k, int64_t d, const std::vector<int64_t> &index,
                const std::vector<float> &score, bool exact, const std::string &what) {
    int64_t bad = 0;
    auto fail = [&](const std::string &m) {
        if (bad++ < 6) ADD_FAILURE() << what << ": " << m;
    };
    for (int64_t i = 0; i < ref.Q; i++) {
        const auto &ord = ref.order[i];
        const int64_t avail = (int64_t)ord.size(), found = std::min(k, avail);
        std::vector<int64_t> seen;
        for (int64_t r = 0; r < k; r++) {
            int64_t g = index[i * k + r];
            float gs = score[i * k + r];
            std::string at = "query " + std::to_string(i) + " rank " + std::to_string(r);
            if (r >= found) {
                if (g != -1 || !(gs == -INFINITY))
                    fail(at + ": expected padding (-1, -inf), got (" + std::to_string(g) + ", " +
                         std::to_string(gs) + ")");
                continue;
            }
            if (g < 0 || g >= ref.N) {
                fail(at + ": index " + std::to_string(g) + " is not a corpus row");
                continue;
            }
            seen.push_back(g);
            int64_t w = ord[r];
            double want = ref.s[i * ref.N + w];
            double tol = exact ? 0.0 : ref.tol(i, w, d);
            if (!(std::fabs(gs - want) <= tol))
                fail(at + ": score " + std::to_string(gs) + ", expected " + std::to_string(want));
            // the returned row really has the score of this rank
            double own = ref.s[i * ref.N + g];
            if (!(std::fabs(own - want) <= 2 * tol + (exact ? 0 : 1e-6)))
                fail(at + ": row " + std::to_string(g) + " scores " + std::to_string(own) +
                     " but rank holds " + std::to_string(want));
            // identical rows wherever the reference separates neighbours beyond rounding
            bool separated = true;
            if (!exact) {
                if (r > 0 && ref.s[i * ref.N + ord[r - 1]] - want <= 2 * tol) separated = false;
                if (r + 1 < avail && want - ref.s[i * ref.N + ord[r + 1]] <= 2 * tol) separated = false;
            }
            if (separated && g != w)
                fail(at + ": index " + std::to_string(g) + ", expected " + std::to_string(w));
            if (r > 0 && gs > score[i * k + r - 1]) fail(at + ": scores not in descending order");
        }
        std::sort(seen.begin(), seen.end());
        if (std::adjacent_find(seen.begin(), seen.end()) != seen.end())
            fail("query " + std::to_string(i) + ": duplicate indices");
    }
    EXPECT_EQ(bad, 0) << what << ": " << bad << " problems";
}

struct Result {
    std::vector<int64_t> index;
    std::vector<float> score;
};

ns_status mine(const Ctx &c, ns_matrix q, ns_matrix corpus, int64_t k, const ns_mine_options *o,
               Result &out) {
    // bad-argument calls may pass k <= 0 or rows < 0: keep a non-empty buffer then
    size_t n = q.rows > 0 && k > 0 ? (size_t)(q.rows * k) : 1;
    Buf<int64_t> idx(c, n, kIndexSentinel);
    Buf<float> sc(c, n, kScoreSentinel);
    ns_status st = ns_mine_topk(c, q, corpus, k, o, idx.ptr(), sc.ptr());
    out.index = idx.fetch();
    out.score = sc.fetch();
    return st;
}

void expect_untouched(const Result &r) {
    for (int64_t x : r.index) ASSERT_EQ(x, kIndexSentinel) << "index written on failure";
    for (float x : r.score) ASSERT_EQ(x, kScoreSentinel) << "score written on failure";
}

// Integer multiples of 1/8 in [-2, 2]: every product and partial sum is exact in f32 (and f16
// for the inputs), so scores are exact and ties are real.
std::vector<float> eighths(size_t n, uint64_t seed) {
    std::mt19937_64 g(seed);
    std::uniform_int_distribution<int> u(-16, 16);
    std::vector<float> v(n);
    for (auto &x : v) x = (float)u(g) / 8.0f;
    return v;
}

class MineTopK : public ::testing::TestWithParam<ns_backend> {};

struct Case {
    int64_t Q, N, d, k;
    ns_dtype tq, tc;
    float scale;
    unsigned flags;
};

void run_random(const Ctx &c, const Case &cs, uint64_t seed, const Excl *ex = nullptr,
                int64_t ldq = 0, int64_t ldc = 0) {
    Emb q(c, cs.tq, cs.Q, cs.d, random_floats((size_t)(cs.Q * cs.d), seed), ldq);
    Emb corpus(c, cs.tc, cs.N, cs.d, random_floats((size_t)(cs.N * cs.d), seed + 1), ldc);
    ns_mine_options o = NS_MINE_OPTIONS_INIT;
    o.scale = cs.scale;
    o.flags = cs.flags;
    ns_id_lists lists;
    Buf<int64_t> off, ids;
    if (ex) {
        off.host = ex->offsets;
        off.place(c);
        ids.host = ex->ids;
        ids.host.push_back(0);  // never empty
        ids.place(c);
        lists.offsets = off.ptr();
        lists.ids = ids.ptr();
        lists.queries = cs.Q;
        o.exclude = &lists;
    }
    Result r;
    ASSERT_EQ(mine(c, q.m(), corpus.m(), cs.k, &o, r), NS_OK) << ns_last_error(c);
    Reference ref(q, corpus, cs.scale, cs.flags & NS_NORMALIZE, ex);
    std::string what = std::to_string(cs.Q) + "×" + std::to_string(cs.N) + "×" +
                       std::to_string(cs.d) + " k=" + std::to_string(cs.k) + " " +
                       ns_dtype_name(cs.tq) + "/" + ns_dtype_name(cs.tc);
    check_topk(ref, cs.k, cs.d, r.index, r.score, false, what);
}

TEST_P(MineTopK, MatchesFullSortOnRandomShapes) {
    Ctx c(GetParam());
    NS_REQUIRE_BACKEND(c);
    const Case cases[] = {
        {1, 1, 1, 1, NS_F32, NS_F32, 1.f, 0},
        {3, 1, 5, 1, NS_F32, NS_F32, 1.f, 0},
        {1, 17, 1, 17, NS_F32, NS_F32, 1.f, 0},       // k = N, d = 1
        {37, 53, 17, 5, NS_F32, NS_F32, 1.f, 0},      // ragged
        {5, 300, 64, 300, NS_F32, NS_F32, 2.f, 0},    // k = N
        {7, 5000, 24, 1, NS_F32, NS_F32, 1.f, 0},     // k = 1 over several corpus blocks
        {6, 5003, 16, 100, NS_F32, NS_F32, 1.f, 0},   // several blocks, ragged last block
        {9, 2500, 33, 40, NS_F16, NS_F16, 1.f, 0},
        {9, 2500, 33, 40, NS_BF16, NS_BF16, 1.f, 0},
        {4, 777, 20, 30, NS_F32, NS_F16, 1.f, 0},     // mixed dtypes
        {8, 3000, 32, 64, NS_F32, NS_F32, 20.f, NS_NORMALIZE},
        {8, 900, 12, 9, NS_BF16, NS_F16, -1.5f, NS_NORMALIZE},  // negative scale
    };
    uint64_t seed = 1000;
    for (const Case &cs : cases) {
        SCOPED_TRACE(::testing::Message() << cs.Q << "×" << cs.N << "×" << cs.d << " k=" << cs.k);
        run_random(c, cs, seed += 10);
    }
}

TEST_P(MineTopK, LargeK) {
    Ctx c(GetParam());
    NS_REQUIRE_BACKEND(c);
    run_random(c, {3, 5000, 32, 2048, NS_F32, NS_F32, 1.f, 0}, 21);
    run_random(c, {2, 6000, 16, 4096, NS_F16, NS_F16, 1.f, 0}, 22);
    run_random(c, {2, 4200, 8, 4200, NS_F32, NS_F32, 1.f, 0}, 23);  // k = N over blocks
}

TEST_P(MineTopK, ManyQueryTiles) {
    Ctx c(GetParam());
    NS_REQUIRE_BACKEND(c);
    // more queries than one tile (4096) of the CPU backend
    run_random(c, {4100, 260, 4, 5, NS_F32, NS_F32, 1.f, 0}, 31);
    run_random(c, {4099, 90, 3, 3, NS_F16, NS_F32, 1.f, NS_NORMALIZE}, 32);
    run_random(c, {1030, 2200, 4, 5, NS_F32, NS_F32, 1.f, 0}, 33);  // and two corpus blocks
}

TEST_P(MineTopK, LeadingDimensionLargerThanCols) {
    Ctx c(GetParam());
    NS_REQUIRE_BACKEND(c);
    run_random(c, {11, 2300, 17, 12, NS_F32, NS_F32, 1.f, 0}, 41, nullptr, 19, 20);
    run_random(c, {11, 2300, 17, 12, NS_F16, NS_BF16, 1.f, NS_NORMALIZE}, 42, nullptr, 25, 18);
}

// Exact scores with many ties, and exact duplicate rows across blocks: ties go to the lower row.
TEST_P(MineTopK, TiesGoToTheLowerRow) {
    Ctx c(GetParam());
    NS_REQUIRE_BACKEND(c);
    const int64_t Q = 6, N = 5000, d = 8;
    std::vector<float> cv = eighths((size_t)(N * d), 51);
    for (int64_t dup : {17, 2047, 2048, 4095, 4999})  // copies of row 3 around block edges
        std::copy(cv.begin() + 3 * d, cv.begin() + 4 * d, cv.begin() + dup * d);
    for (ns_dtype t : {NS_F32, NS_F16, NS_BF16}) {
        Emb q(c, t, Q, d, eighths((size_t)(Q * d), 52));
        Emb corpus(c, t, N, d, cv);
        Reference ref(q, corpus, 1.0, false, nullptr);
        for (int64_t k : {(int64_t)1, (int64_t)7, (int64_t)100, (int64_t)2048, N}) {
            Result r;
            ASSERT_EQ(mine(c, q.m(), corpus.m(), k, nullptr, r), NS_OK) << ns_last_error(c);
            check_topk(ref, k, d, r.index, r.score, true,
                       std::string("ties ") + ns_dtype_name(t) + " k=" + std::to_string(k));
        }
    }
}

// NS_NORMALIZE with zero rows: a zero query scores 0 against everything (ties: rows 0, 1, ...),
// a zero corpus row scores 0 for every query.
TEST_P(MineTopK, ZeroRowsUnderNormalisation) {
    Ctx c(GetParam());
    NS_REQUIRE_BACKEND(c);
    const int64_t Q = 3, N = 2500, d = 7, k = 6;
    std::vector<float> qv = random_floats((size_t)(Q * d), 131);
    std::fill(qv.begin() + d, qv.begin() + 2 * d, 0.0f);  // query 1 is zero
    std::vector<float> cv = random_floats((size_t)(N * d), 132);
    std::fill(cv.begin() + 5 * d, cv.begin() + 6 * d, 0.0f);  // corpus row 5 is zero
    Emb q(c, NS_F32, Q, d, qv), corpus(c, NS_F32, N, d, cv);
    ns_mine_options o = NS_MINE_OPTIONS_INIT;
    o.flags = NS_NORMALIZE;
    Result r;
    ASSERT_EQ(mine(c, q.m(), corpus.m(), k, &o, r), NS_OK) << ns_last_error(c);
    for (int64_t t = 0; t < k; t++) {
        EXPECT_EQ(r.index[1 * k + t], t) << "rank " << t;
        EXPECT_EQ(r.score[1 * k + t], 0.0f) << "rank " << t;
    }
    Reference ref(q, corpus, 1.0, true, nullptr);
    check_topk(ref, k, d, r.index, r.score, false, "zero rows");
}

TEST_P(MineTopK, ExclusionsIncludingEverything) {
    Ctx c(GetParam());
    NS_REQUIRE_BACKEND(c);
    const int64_t Q = 5, N = 4500;
    Excl ex;
    ex.offsets = {0};
    std::mt19937_64 g(61);
    for (int64_t i = 0; i < Q; i++) {
        if (i == 1) {  // everything: all padding
            for (int64_t j = N - 1; j >= 0; j--) ex.ids.push_back(j);
        } else if (i == 3) {  // all but 10 rows (fewer than k survive), with repeats
            for (int64_t j = 0; j < N; j++)
                if (j % 450 != 7) ex.ids.push_back(j);
            ex.ids.push_back(0);
            ex.ids.push_back(0);
        } else if (i != 4) {  // query 4 has an empty list
            for (int t = 0; t < 40; t++) ex.ids.push_back((int64_t)(g() % N));
        }
        ex.offsets.push_back((int64_t)ex.ids.size());
    }
    run_random(c, {Q, N, 16, 25, NS_F32, NS_F32, 1.f, 0}, 62, &ex);
    run_random(c, {Q, N, 16, 25, NS_F16, NS_F16, 1.f, NS_NORMALIZE}, 63, &ex);
}

// The exclusion of a query's own best rows: the answer moves to the next ones.
TEST_P(MineTopK, ExcludingTheBestRowsShiftsTheAnswer) {
    Ctx c(GetParam());
    NS_REQUIRE_BACKEND(c);
    const int64_t Q = 3, N = 2600, d = 12, k = 10;
    Emb q(c, NS_F32, Q, d, random_floats((size_t)(Q * d), 71));
    Emb corpus(c, NS_F32, N, d, random_floats((size_t)(N * d), 72));
    Reference full(q, corpus, 1.0, false, nullptr);
    Excl ex;
    ex.offsets = {0};
    for (int64_t i = 0; i < Q; i++) {
        for (int64_t r = 0; r < 3; r++) ex.ids.push_back(full.order[i][r]);
        ex.offsets.push_back((int64_t)ex.ids.size());
    }
    Buf<int64_t> off(c, ex.offsets), ids(c, ex.ids);
    ns_id_lists lists = {off.ptr(), ids.ptr(), Q};
    ns_mine_options o = NS_MINE_OPTIONS_INIT;
    o.exclude = &lists;
    Result r;
    ASSERT_EQ(mine(c, q.m(), corpus.m(), k, &o, r), NS_OK) << ns_last_error(c);
    for (int64_t i = 0; i < Q; i++)
        for (int64_t j = 0; j < 3; j++)
            for (int64_t t = 0; t < k; t++) EXPECT_NE(r.index[i * k + t], full.order[i][j]);
    Reference ref(q, corpus, 1.0, false, &ex);
    check_topk(ref, k, d, r.index, r.score, false, "excluded best rows");
}

// ---------------------------------------------------------------- memory-mapped f16 corpus

std::string write_npy(const std::string &name, const char *descr, const void *data, size_t bytes,
                      int64_t rows, int64_t cols) {
    char tmpl[] = "/tmp/ns_mine_XXXXXX";
    int fd = mkstemp(tmpl);
    if (fd >= 0) close(fd);
    std::string path = std::string(tmpl) + "_" + name;
    std::rename(tmpl, path.c_str());
    std::string dict = std::string("{'descr': '") + descr + "', 'fortran_order': False, 'shape': (" +
                       std::to_string(rows) + ", " + std::to_string(cols) + "), }";
    size_t total = 10 + dict.size() + 1;
    size_t pad = (64 - total % 64) % 64;
    dict += std::string(pad, ' ') + "\n";
    FILE *f = std::fopen(path.c_str(), "wb");
    std::fwrite("\x93NUMPY\x01\x00", 1, 8, f);
    unsigned char len[2] = {(unsigned char)(dict.size() & 0xff), (unsigned char)(dict.size() >> 8)};
    std::fwrite(len, 1, 2, f);
    std::fwrite(dict.data(), 1, dict.size(), f);
    std::fwrite(data, 1, bytes, f);
    std::fclose(f);
    return path;
}

TEST_P(MineTopK, MemoryMappedF16Corpus) {
    Ctx c(GetParam());
    NS_REQUIRE_BACKEND(c);
    const int64_t Q = 6, N = 5200, d = 40, k = 50;
    Emb q(c, NS_F32, Q, d, random_floats((size_t)(Q * d), 81));
    Ctx host(NS_BACKEND_CPU);
    Emb ref_corpus(host, NS_F16, N, d, random_floats((size_t)(N * d), 82));
    std::string path = write_npy("corpus.npy", "<f2", ref_corpus.h.host.data(),
                                 ref_corpus.h.host.size() * 2, N, d);
    ns_npy_file *file = nullptr;
    ASSERT_EQ(ns_npy_open(path.c_str(), &file), NS_OK) << ns_last_error(nullptr);
    ns_matrix m = ns_npy_matrix(file);
    EXPECT_EQ(m.dtype, NS_F16);
    EXPECT_EQ(m.rows, N);
    EXPECT_EQ(m.cols, d);
    ns_mine_options o = NS_MINE_OPTIONS_INIT;
    o.flags = NS_NORMALIZE;
    Result r;
    EXPECT_EQ(mine(c, q.m(), m, k, &o, r), NS_OK) << ns_last_error(c);
    Reference ref(q, ref_corpus, 1.0, true, nullptr);
    check_topk(ref, k, d, r.index, r.score, false, "mapped f16 corpus");
    EXPECT_EQ(ns_npy_close(file), NS_OK);
    std::remove(path.c_str());
}

// ---------------------------------------------------------------- progress and threads

struct Progress {
    std::vector<std::pair<int64_t, int64_t>> calls;
    int64_t cancel_after = -1;  // cancel on this call (0-based)
};

int on_progress(int64_t done, int64_t total, void *user) {
    Progress *p = static_cast<Progress *>(user);
    p->calls.emplace_back(done, total);
    return p->cancel_after >= 0 && (int64_t)p->calls.size() > p->cancel_after;
}

TEST_P(MineTopK, ProgressReportsBlocksAndCancels) {
    Ctx c(GetParam());
    NS_REQUIRE_BACKEND(c);
    const int64_t Q = 4, N = 6000, d = 8, k = 3;
    Emb q(c, NS_F32, Q, d, random_floats((size_t)(Q * d), 91));
    Emb corpus(c, NS_F32, N, d, random_floats((size_t)(N * d), 92));
    Progress p;
    ns_mine_options o = NS_MINE_OPTIONS_INIT;
    o.progress = on_progress;
    o.progress_user = &p;
    Result r;
    ASSERT_EQ(mine(c, q.m(), corpus.m(), k, &o, r), NS_OK) << ns_last_error(c);
    ASSERT_GE(p.calls.size(), 1u);
    for (size_t t = 0; t < p.calls.size(); t++) {
        EXPECT_EQ(p.calls[t].second, N);
        if (t) EXPECT_GT(p.calls[t].first, p.calls[t - 1].first);
    }
    EXPECT_EQ(p.calls.back().first, N);
    if (p.calls.size() >= 2) {  // cancel on the first report
        Progress pc;
        pc.cancel_after = 0;
        o.progress_user = &pc;
        Result rc;
        EXPECT_EQ(mine(c, q.m(), corpus.m(), k, &o, rc), NS_ERR_INVALID_ARGUMENT);
        EXPECT_NE(std::string(ns_last_error(c)).find("cancelled"), std::string::npos)
            << ns_last_error(c);
        expect_untouched(rc);
    }
}

TEST(MineTopKCpu, SameResultWithOneThread) {
    Ctx c1(NS_BACKEND_CPU, 1), c2(NS_BACKEND_CPU, 0);
    ASSERT_EQ(c1.status, NS_OK);
    const int64_t Q = 33, N = 4500, d = 20, k = 17;
    Emb q(c1, NS_F32, Q, d, random_floats((size_t)(Q * d), 95));
    Emb corpus(c1, NS_F32, N, d, random_floats((size_t)(N * d), 96));
    Result a, b;
    ASSERT_EQ(mine(c1, q.m(), corpus.m(), k, nullptr, a), NS_OK);
    ASSERT_EQ(mine(c2, q.m(), corpus.m(), k, nullptr, b), NS_OK);
    EXPECT_EQ(a.index, b.index);
    EXPECT_EQ(a.score, b.score);
}

// ---------------------------------------------------------------- bad input

void expect_error(const Ctx &c, ns_status got, ns_status want, const std::string &needle,
                  const Result &r) {
    EXPECT_EQ(got, want) << ns_last_error(c);
    std::string msg = ns_last_error(c);
    EXPECT_NE(msg.find("ns_mine_topk"), std::string::npos) << msg;
    EXPECT_NE(msg.find(needle), std::string::npos) << "expected \"" << needle << "\" in: " << msg;
    expect_untouched(r);
}

TEST_P(MineTopK, BadArgumentsNameTheArgumentAndLeaveOutputsUntouched) {
    Ctx c(GetParam());
    NS_REQUIRE_BACKEND(c);
    const int64_t Q = 3, N = 4000, d = 6;
    Emb q(c, NS_F32, Q, d, random_floats((size_t)(Q * d), 101));
    Emb corpus(c, NS_F32, N, d, random_floats((size_t)(N * d), 102));
    ns_matrix qm = q.m(), cm = corpus.m();
    Result r;
    Buf<int64_t> idx(c, (size_t)(Q * 5000), kIndexSentinel);
    Buf<float> sc(c, (size_t)(Q * 5000), kScoreSentinel);

    EXPECT_EQ(ns_mine_topk(nullptr, qm, cm, 3, nullptr, idx.ptr(), sc.ptr()), NS_ERR_INVALID_ARGUMENT);
    EXPECT_NE(std::string(ns_last_error(nullptr)).find("ctx is NULL"), std::string::npos);

    expect_error(c, mine(c, qm, cm, 4097, nullptr, r), NS_ERR_INVALID_ARGUMENT,
                 "ns_mine_topk: k (4097) is larger than the corpus (4000 rows)", r);
    expect_error(c, mine(c, qm, cm, 0, nullptr, r), NS_ERR_INVALID_ARGUMENT, "k (0)", r);
    expect_error(c, mine(c, qm, cm, -5, nullptr, r), NS_ERR_INVALID_ARGUMENT, "k (-5)", r);
    {
        std::vector<float> big(NS_MAX_K + 10, 0.5f);
        Buf<float> bb(c, big);
        Result rb;
        expect_error(c, mine(c, f32_matrix(qm.data ? (const float *)qm.data : nullptr, Q, 1),
                             f32_matrix(bb.ptr(), NS_MAX_K + 10, 1), NS_MAX_K + 1, nullptr, rb),
                     NS_ERR_INVALID_ARGUMENT, "NS_MAX_K", rb);
    }
    ns_matrix x = cm;
    x.cols = 5;
    expect_error(c, mine(c, qm, x, 3, nullptr, r), NS_ERR_INVALID_ARGUMENT,
                 "q has 6 columns but corpus has 5", r);
    x = qm;
    x.data = nullptr;
    expect_error(c, mine(c, x, cm, 3, nullptr, r), NS_ERR_INVALID_ARGUMENT, "q.data", r);
    x = cm;
    x.dtype = (ns_dtype)3;
    expect_error(c, mine(c, qm, x, 3, nullptr, r), NS_ERR_UNSUPPORTED, "corpus.dtype (3)", r);
    x = cm;
    x.rows = 0;
    expect_error(c, mine(c, qm, x, 3, nullptr, r), NS_ERR_INVALID_ARGUMENT, "corpus.rows (0)", r);
    x = qm;
    x.rows = -1;
    expect_error(c, mine(c, x, cm, 3, nullptr, r), NS_ERR_INVALID_ARGUMENT, "q.rows (-1)", r);
    x = cm;
    x.ld = 2;
    expect_error(c, mine(c, qm, x, 3, nullptr, r), NS_ERR_INVALID_ARGUMENT, "corpus.ld (2)", r);

    EXPECT_EQ(ns_mine_topk(c, qm, cm, 3, nullptr, nullptr, sc.ptr()), NS_ERR_INVALID_ARGUMENT);
    EXPECT_NE(std::string(ns_last_error(c)).find("index is NULL"), std::string::npos);
    EXPECT_EQ(ns_mine_topk(c, qm, cm, 3, nullptr, idx.ptr(), nullptr), NS_ERR_INVALID_ARGUMENT);
    EXPECT_NE(std::string(ns_last_error(c)).find("score is NULL"), std::string::npos);
    for (float v : sc.fetch()) ASSERT_EQ(v, kScoreSentinel);
    for (int64_t v : idx.fetch()) ASSERT_EQ(v, kIndexSentinel);

    ns_mine_options o = NS_MINE_OPTIONS_INIT;
    o.struct_size = 4;
    expect_error(c, mine(c, qm, cm, 3, &o, r), NS_ERR_INVALID_ARGUMENT, "struct_size (4)", r);
    o = NS_MINE_OPTIONS_INIT;
    o.scale = INFINITY;
    expect_error(c, mine(c, qm, cm, 3, &o, r), NS_ERR_INVALID_ARGUMENT, "scale (inf)", r);
    o = NS_MINE_OPTIONS_INIT;
    o.flags = 4;
    expect_error(c, mine(c, qm, cm, 3, &o, r), NS_ERR_INVALID_ARGUMENT, "flags (0x4)", r);
}

TEST_P(MineTopK, BadExclusionsAreRejected) {
    Ctx c(GetParam());
    NS_REQUIRE_BACKEND(c);
    const int64_t Q = 3, N = 50, d = 4;
    Emb q(c, NS_F32, Q, d, random_floats((size_t)(Q * d), 111));
    Emb corpus(c, NS_F32, N, d, random_floats((size_t)(N * d), 112));
    Result r;
    auto with = [&](std::vector<int64_t> offsets, std::vector<int64_t> ids, int64_t queries,
                    bool null_offsets = false) {
        Buf<int64_t> off(c, offsets), idb(c, ids.empty() ? std::vector<int64_t>{0} : ids);
        ns_id_lists l = {null_offsets ? nullptr : off.ptr(), idb.ptr(), queries};
        ns_mine_options o = NS_MINE_OPTIONS_INIT;
        o.exclude = &l;
        return mine(c, q.m(), corpus.m(), 4, &o, r);
    };
    expect_error(c, with({0, 1, 2}, {1, 2}, 2), NS_ERR_INVALID_ARGUMENT,
                 "exclude->queries (2) differs from q.rows (3)", r);
    expect_error(c, with({0, 1, 2, 3}, {1, 2, 3}, 3, true), NS_ERR_INVALID_ARGUMENT,
                 "offsets is NULL", r);
    if (c.cuda()) return;  // the contents of device lists are checked by the CUDA backend
    expect_error(c, with({0, 2, 1, 3}, {1, 2, 3}, 3), NS_ERR_INVALID_ARGUMENT, "offsets[2] (1)", r);
    expect_error(c, with({1, 2, 2, 3}, {1, 2, 3}, 3), NS_ERR_INVALID_ARGUMENT, "offsets[0] (1)", r);
    expect_error(c, with({0, 1, 2, 3}, {1, 50, 3}, 3), NS_ERR_INVALID_ARGUMENT,
                 "ids[1] (50) is outside the corpus rows [0, 50)", r);
    expect_error(c, with({0, 1, 2, 3}, {1, 2, -1}, 3), NS_ERR_INVALID_ARGUMENT, "ids[2] (-1)", r);
}

TEST_P(MineTopK, NonFiniteInputsAreReportedAndOutputsUntouched) {
    Ctx c(GetParam());
    NS_REQUIRE_BACKEND(c);
    const int64_t Q = 3, N = 5000, d = 6;
    std::vector<float> qv = random_floats((size_t)(Q * d), 121);
    std::vector<float> cv = random_floats((size_t)(N * d), 122);
    {
        std::vector<float> bad = qv;
        bad[1 * d + 4] = NAN;
        Emb q(c, NS_F32, Q, d, bad), corpus(c, NS_F32, N, d, cv);
        Result r;
        expect_error(c, mine(c, q.m(), corpus.m(), 2, nullptr, r), NS_ERR_NONFINITE,
                     c.cuda() ? "q" : "q[1][4]", r);
    }
    // in the last corpus block (the earlier blocks are merged before it is found), as +Inf,
    // -Inf and NaN, with and without normalisation
    for (float v : {INFINITY, -INFINITY, NAN}) {
        std::vector<float> bad = cv;
        bad[4990 * d + 2] = v;
        for (ns_dtype t : {NS_F32, NS_F16, NS_BF16})
            for (unsigned flags : {0u, NS_NORMALIZE}) {
                SCOPED_TRACE(::testing::Message() << v << " " << ns_dtype_name(t) << " " << flags);
                Emb q(c, t, Q, d, qv), corpus(c, t, N, d, bad);
                ns_mine_options o = NS_MINE_OPTIONS_INIT;
                o.flags = flags;
                Result r;
                expect_error(c, mine(c, q.m(), corpus.m(), 2, &o, r), NS_ERR_NONFINITE,
                             c.cuda() ? "corpus" : "corpus[4990][2]", r);
            }
    }
    {  // finite inputs whose product overflows f32
        std::vector<float> huge(N * d, 1e30f), hq(Q * d, 1e30f);
        Emb q(c, NS_F32, Q, d, hq), corpus(c, NS_F32, N, d, huge);
        Result r;
        EXPECT_EQ(mine(c, q.m(), corpus.m(), 2, nullptr, r), NS_ERR_NONFINITE) << ns_last_error(c);
        expect_untouched(r);
    }
}

INSTANTIATE_TEST_SUITE_P(B, MineTopK, NS_BACKENDS, BackendName());

}  // namespace
