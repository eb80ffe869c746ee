// Two-stage exact mining on the CPU (src/cpu/cpu_mine_*.c, bound in src/hostdevice/ns_bound.h):
// candidate scores from the bf16 GEMM (or the f32 one), an exact re-score of every candidate
// within the proven bound of the k-th. Checked on adversarial data — near-ties at the k-th score,
// exact duplicates, large norms (past the bf16 range limit too), mixed scales, negative scale,
// bf16 inputs, several corpus blocks and query tiles — against an independent float64 brute force
// (the score is fl32(α·Σ q_t c_t) with the sum in double; ties to the lower row; the same index
// sets and the same f32 scores, bit for bit), and the bf16-GEMM path against the f32-GEMM path
// (NS_CPU_MINE_GEMM=f32): identical outputs, at 1, 2 and 3 threads; k up to 4096, reservoirs that
// refill, the portable scan, bf16 inputs past the bf16 range, more queries than one tile.
#include <gtest/gtest.h>

#include "negsamp.h"
#include "../src/ns_internal.h"
#include "ns_test_util.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

namespace {

struct Data {
    int64_t Q, N, d;
    ns_dtype dtype = NS_F32;
    std::vector<float> q, c;          // the values (bf16-representable when dtype is bf16)
    std::vector<uint16_t> q16, c16;   // bf16 storage
    ns_matrix mq() const { return m(q, q16, Q); }
    ns_matrix mc() const { return m(c, c16, N); }
    ns_matrix m(const std::vector<float> &f, const std::vector<uint16_t> &h, int64_t rows) const {
        ns_matrix x;
        x.data = dtype == NS_F32 ? (const void *)f.data() : (const void *)h.data();
        x.dtype = dtype;
        x.rows = rows;
        x.cols = d;
        x.ld = d;
        return x;
    }
    void to_bf16() {
        dtype = NS_BF16;
        q16.resize(q.size());
        c16.resize(c.size());
        for (size_t i = 0; i < q.size(); i++) q[i] = ns_bf16_to_f32(q16[i] = ns_f32_to_bf16(q[i]));
        for (size_t i = 0; i < c.size(); i++) c[i] = ns_bf16_to_f32(c16[i] = ns_f32_to_bf16(c[i]));
    }
};

struct Result {
    std::vector<int64_t> index;
    std::vector<float> score;
};

// float64 brute force: every score, sorted by (f32 score desc, row asc).
Result brute_force(const Data &D, int64_t k, float scale) {
    Result r;
    r.index.resize((size_t)(D.Q * k));
    r.score.resize((size_t)(D.Q * k));
    std::vector<std::pair<float, int64_t>> all((size_t)D.N);
    for (int64_t i = 0; i < D.Q; i++) {
        for (int64_t j = 0; j < D.N; j++) {
            double s = 0.0;
            for (int64_t t = 0; t < D.d; t++)
                s += (double)D.q[(size_t)(i * D.d + t)] * (double)D.c[(size_t)(j * D.d + t)];
            all[(size_t)j] = {(float)((double)scale * s), j};
        }
        std::partial_sort(all.begin(), all.begin() + k, all.end(), [](auto a, auto b) {
            return a.first > b.first || (a.first == b.first && a.second < b.second);
        });
        for (int64_t t = 0; t < k; t++) {
            r.score[(size_t)(i * k + t)] = all[(size_t)t].first;
            r.index[(size_t)(i * k + t)] = all[(size_t)t].second;
        }
    }
    return r;
}

Result mine(const Data &D, int64_t k, float scale, int threads, const char *gemm) {
    if (gemm) setenv("NS_CPU_MINE_GEMM", gemm, 1);
    else unsetenv("NS_CPU_MINE_GEMM");
    ns_context_options co = NS_CONTEXT_OPTIONS_INIT;
    co.backend = NS_BACKEND_CPU;
    co.threads = threads;
    ns_context *ctx = nullptr;
    EXPECT_EQ(ns_context_create(&ctx, &co), NS_OK);
    ns_mine_options mo = NS_MINE_OPTIONS_INIT;
    mo.scale = scale;
    Result r;
    r.index.assign((size_t)(D.Q * k), -7);
    r.score.assign((size_t)(D.Q * k), 0.0f);
    ns_status st = ns_mine_topk(ctx, D.mq(), D.mc(), k, &mo, r.index.data(), r.score.data());
    EXPECT_EQ(st, NS_OK) << ns_last_error(ctx);
    ns_context_destroy(ctx);
    unsetenv("NS_CPU_MINE_GEMM");
    return r;
}

void expect_same(const Result &want, const Result &got, int64_t Q, int64_t k, const char *what) {
    int64_t bad = 0;
    for (int64_t i = 0; i < Q * k; i++) {
        bool ok = want.index[(size_t)i] == got.index[(size_t)i] &&
                  std::memcmp(&want.score[(size_t)i], &got.score[(size_t)i], sizeof(float)) == 0;
        if (!ok && bad++ < 5)
            ADD_FAILURE() << what << ": query " << i / k << " rank " << i % k << ": expected row "
                          << want.index[(size_t)i] << " score " << want.score[(size_t)i]
                          << ", got row " << got.index[(size_t)i] << " score "
                          << got.score[(size_t)i];
    }
    EXPECT_EQ(bad, 0) << what << ": " << bad << " of " << Q * k << " entries differ";
}

// Random rows, then the adversarial parts: for each query, 3k corpus rows whose scores with
// query 0 lie within a few f32 ulps of each other (near-ties at the k-th, far below bf16's
// resolution), exact duplicates of some of them, and rows of mixed norms.
Data adversarial(int64_t Q, int64_t N, int64_t d, int64_t k, double norm_spread, uint32_t seed) {
    std::mt19937 g(seed);
    std::normal_distribution<float> nd(0.0f, 1.0f);
    std::uniform_real_distribution<double> ud(-1.0, 1.0);
    Data D;
    D.Q = Q, D.N = N, D.d = d;
    D.q.resize((size_t)(Q * d));
    D.c.resize((size_t)(N * d));
    for (auto &x : D.q) x = nd(g);
    for (int64_t j = 0; j < N; j++) {
        double sc = std::pow(10.0, norm_spread * ud(g)); // mixed scales
        for (int64_t t = 0; t < d; t++) D.c[(size_t)(j * d + t)] = (float)(nd(g) * sc);
    }
    // Near-ties: rows c = a·q0 + n, a in a band of 17 f32 ulps, n orthogonal to q0 with
    // ‖n‖ = 0.3‖q0‖: the exact scores with query 0 lie within ~1e-6 relative of each other (the
    // k-th among them), while their bf16 roundings differ by ~1e-2 relative, in random directions.
    const int64_t ties = std::min<int64_t>(3 * k, N / 3);
    double q0q0 = 0.0;
    for (int64_t t = 0; t < d; t++) q0q0 += (double)D.q[(size_t)t] * D.q[(size_t)t];
    std::vector<double> n((size_t)d);
    for (int64_t r = 0; r < ties; r++) {
        int64_t j = (r * 7919) % N;
        double a = 1.0 + (double)(r % 17) * 1.2e-7, dot = 0.0, nn = 0.0;
        for (int64_t t = 0; t < d; t++) dot += (n[(size_t)t] = nd(g)) * (double)D.q[(size_t)t];
        for (int64_t t = 0; t < d; t++) nn += std::pow(n[(size_t)t] -= dot / q0q0 * D.q[(size_t)t], 2);
        double f = 0.3 * std::sqrt(q0q0 / nn);
        for (int64_t t = 0; t < d; t++)
            D.c[(size_t)(j * d + t)] = (float)(a * D.q[(size_t)t] + f * n[(size_t)t]);
    }
    // Exact duplicates of a few of those rows, further down the corpus (ties go to the lower).
    for (int64_t r = 0; r < ties / 4; r++) {
        int64_t src = (r * 7919) % N, dst = (src + N / 2 + 1) % N;
        std::memcpy(&D.c[(size_t)(dst * d)], &D.c[(size_t)(src * d)], (size_t)d * sizeof(float));
    }
    return D;
}

void check(const Data &D, int64_t k, float scale) {
    Result want = brute_force(D, k, scale);
    for (int threads : {1, 2, 3}) {
        Result lo = mine(D, k, scale, threads, nullptr);  // bf16 GEMM where oneDNN is built in
        Result hi = mine(D, k, scale, threads, "f32");
        std::string tag = "threads " + std::to_string(threads);
        expect_same(want, lo, D.Q, k, ("default GEMM vs float64, " + tag).c_str());
        expect_same(hi, lo, D.Q, k, ("default GEMM vs f32 GEMM, " + tag).c_str());
    }
}

}  // namespace

TEST(MineExact, NearTiesAndDuplicatesAtTheKth) {
    check(adversarial(5, 3000, 96, 100, 0.0, 1), 100, 1.0f);
}

TEST(MineExact, KIsOne) { check(adversarial(7, 2000, 64, 1, 0.0, 2), 1, 1.0f); }

TEST(MineExact, KIsMaxKOnASmallCorpus) {
    check(adversarial(2, NS_MAX_K + 300, 8, NS_MAX_K, 0.0, 3), NS_MAX_K, 1.0f);
}

TEST(MineExact, MixedScalesAndNegativeScale) {
    check(adversarial(4, 3000, 48, 50, 3.0, 4), 50, -0.37f);
}

TEST(MineExact, LargeNormsIncludingPastTheBf16Limit) {
    Data D = adversarial(4, 2500, 32, 40, 0.0, 5);
    for (int64_t j = 0; j < D.N; j++) {
        float sc = j % 3 == 0 ? 1e6f : j % 3 == 1 ? 3e9f : 1.0f; // 3e9·|x| > 2^32: f32 blocks
        for (int64_t t = 0; t < D.d; t++) D.c[(size_t)(j * D.d + t)] *= sc;
    }
    check(D, 40, 1e-12f);
}

TEST(MineExact, Bf16InputsAreExactInTheBf16Gemm) {
    Data D = adversarial(6, 3000, 384, 100, 0.0, 6);
    D.to_bf16();
    check(D, 100, 1.0f);
    Data E = adversarial(4, 2000, 45, 30, 1.0, 16); // d = 32 + 13: the scorers' tail too
    E.to_bf16();
    check(E, 30, -0.5f);
    setenv("NS_CPU_MINE_SCAN", "portable", 1);      // the generic scorer
    check(E, 30, -0.5f);
    unsetenv("NS_CPU_MINE_SCAN");
}

TEST(MineExact, ManyQueryTilesAndCorpusBlocks) {
    // 2048 queries: corpus blocks of 4096 rows (ns_mine_corpus_block), three of them.
    Data D = adversarial(2048, 9000, 24, 20, 1.0, 7);
    check(D, 20, 1.0f);
}

// Large k: 3k near-ties at the k-th of query 0 overflow the reservoir's room (~5k): shrinks
// that re-score, thresholds from the radix counting passes.
TEST(MineExact, KIs1000WithNearTies) {
    check(adversarial(3, 12000, 40, 1000, 0.5, 8), 1000, 1.0f);
}

// Scores that rise along the corpus (rows a_j·q0 + noise, a_j increasing) over two corpus blocks
// (65,536 rows each for few queries): every row of the second block beats the threshold the
// first left, so the reservoir fills and shrinks again and again; query 1 is random.
TEST(MineExact, RisingScoresRefillTheReservoir) {
    const int64_t N = 70000, d = 8, k = 1000;
    Data D = adversarial(2, N, d, 1, 0.0, 13);
    std::mt19937 g(14);
    std::normal_distribution<float> nd(0.0f, 1.0f);
    for (int64_t j = 0; j < N; j++)
        for (int64_t t = 0; t < d; t++)
            D.c[(size_t)(j * d + t)] = (float)(1.0 + 3.0 * (double)j / (double)N) * D.q[(size_t)t] +
                                       0.05f * nd(g);
    check(D, k, 1.0f);
}

TEST(MineExact, KIs4096) { check(adversarial(2, 14000, 16, 4096, 0.0, 9), 4096, 1.0f); }

// The portable scan (no AVX-512 compress) lists the same columns: the same exact result.
TEST(MineExact, PortableScanGivesTheSameResult) {
    setenv("NS_CPU_MINE_SCAN", "portable", 1);
    check(adversarial(5, 6000, 40, 300, 0.5, 10), 300, 1.0f);
    unsetenv("NS_CPU_MINE_SCAN");
}

// bf16 inputs whose rows pass the bf16 GEMM's range (|x| > 2^32): those blocks take the f32
// GEMM, which needs the f32 view of bf16 data made on demand.
TEST(MineExact, Bf16InputsPastTheBf16LimitTakeTheF32Gemm) {
    Data D = adversarial(4, 2500, 32, 40, 0.0, 11);
    for (int64_t j = 0; j < D.N; j++)
        if (j % 5 == 0)
            for (int64_t t = 0; t < D.d; t++) D.c[(size_t)(j * D.d + t)] *= 3e9f;
    D.to_bf16();
    check(D, 40, 1e-12f);
}

// More queries than one query tile (NS_MINE_QUERY_BLOCK): each tile's bf16 copy / f32 view is
// made again for every corpus block; bf16 inputs and f32 inputs.
TEST(MineExact, MoreQueriesThanOneTile) {
    Data D = adversarial(4100, 700, 8, 5, 0.5, 12);
    check(D, 5, 1.0f);
    D.to_bf16();
    check(D, 5, 1.0f);
}

// Enough queries for per-thread tiles (each thread computes and merges its own sub-tiles of
// the block with a single-threaded GEMM: 800 queries make slices of 192 and 128 at 2 and 3
// threads; 1 thread takes the shared tile), several sub-tiles of corpus rows, every third row past the bf16 range (those
// blocks' sub-tiles take the f32 GEMM), near-ties at the k-th; then the same with one shared
// tile (NS_CPU_MINE_TILES=shared), and with bf16 inputs.
TEST(MineExact, PerThreadTilesAndTheSharedTileAgree) {
    Data D = adversarial(800, 3000, 24, 100, 2.0, 17);
    check(D, 100, 1.0f);
    Data E = D;
    for (int64_t j = 0; j < E.N; j += 3)
        for (int64_t t = 0; t < E.d; t++) E.c[(size_t)(j * E.d + t)] *= 3e9f;
    check(E, 100, 1e-12f);
    setenv("NS_CPU_MINE_TILES", "shared", 1);
    check(D, 100, 1.0f);
    unsetenv("NS_CPU_MINE_TILES");
    D.to_bf16();
    check(D, 100, 1.0f);
}

// Per-thread tiles at k = 1000: the reservoir (5000 on the bf16 GEMM, 2000 on the f32) holds more
// than a 1024-column sub-tile, so the stream's first sub-tile is wider (its rows set each
// query's first threshold); near-ties at the k-th of query 0 spread over it and the later ones,
// a second corpus block; f32 and bf16 inputs.
TEST(MineExact, PerThreadTilesAtKIs1000) {
    Data D = adversarial(800, 9000, 8, 1000, 0.5, 21);
    check(D, 1000, 1.0f);
    D.to_bf16();
    check(D, 1000, 1.0f);
}

// Data where the bf16 bound's residual terms (ns_bound.h, 7) are tight: rounding residuals
// aligned with the other row, so Cauchy–Schwarz holds with equality, and a best row (exactly)
// whose bf16 score is below another row's by 0.4 of the residual term. Halves of d = 64:
// (bf16's spacing at 1 is 2^-7; its unit roundoff u_b = 2^-8, half of it.)
//   query 0 = 0 | 1 (exact in bf16);        query 1 = 1 + 0.499·2^-7 (rounds to 1) | 1
//   row 100 = 0 | 14 of 32 at 1 + 2^-7, the rest 1 (exact in bf16: ŝ = exact = 32 + 14·2^-7)
//   row 300 = 0 | 1 + 0.45·2^-7 (rounds to 1): query 0's best through the corpus residual
//   row 400 = 1 | 0: query 1's best through the query's residual
// A bound short of ~95 % of the corpus residual term (query 0; the rest of the margin is the
// radix threshold's 2^-13 granularity), or missing the query's residual term (query 1: that term
// widens every row's bound for the query alike, so only its absence shows), drops the best row.
// The data above: rows 100, 300, 400 at `at` + 100, ...; queries past the first two random.
Data aligned_residuals(int64_t Q, int64_t N, int64_t at) {
    const int64_t d = 64, h = d / 2;
    const float q_up = 1.0f + 0.499f / 128.0f, c_up = 1.0f + 0.45f / 128.0f;
    const float bf_next = 1.0f + 1.0f / 128.0f;
    Data D;
    D.Q = Q, D.N = N, D.d = d;
    std::mt19937 g(15);
    std::uniform_real_distribution<float> ud(-0.2f, 0.2f);
    D.q.resize((size_t)(Q * d));
    for (auto &x : D.q) x = ud(g);
    for (int64_t t = 0; t < d; t++) D.q[(size_t)t] = t < h ? 0.0f : 1.0f;
    for (int64_t t = 0; t < d; t++) D.q[(size_t)(d + t)] = t < h ? q_up : 1.0f;
    D.c.resize((size_t)(N * d));
    for (auto &x : D.c) x = ud(g); // low scores
    auto row = [&](int64_t j) { return &D.c[(size_t)((at + j) * d)]; };
    for (int64_t t = 0; t < d; t++) {
        row(100)[t] = t < h ? 0.0f : (t - h < 14 ? bf_next : 1.0f);
        row(300)[t] = t < h ? 0.0f : c_up;
        row(400)[t] = t < h ? 1.0f : 0.0f;
    }
    return D;
}

TEST(MineExact, ResidualBoundIsTightOnAlignedRoundingErrors) {
    Data D = aligned_residuals(2, 600, 0);
    Result want = brute_force(D, 1, 1.0f);
    ASSERT_EQ(want.index[0], 300);
    ASSERT_EQ(want.index[1], 400);
    check(D, 1, 1.0f);
    check(D, 3, 1.0f);
}

// The same rows in a later sub-tile of per-thread tiles (columns 2048.. of the block, 800
// queries): each row's bound must be its own (a bound taken from another row of the block, all
// of them small, drops the best rows).
TEST(MineExact, ResidualBoundIsTightInEverySubTile) {
    Data D = aligned_residuals(800, 3000, 2048);
    Result want = brute_force(D, 1, 1.0f);
    ASSERT_EQ(want.index[0], 2048 + 300);
    ASSERT_EQ(want.index[1], 2048 + 400);
    check(D, 1, 1.0f);
    check(D, 3, 1.0f);
}

// Scores that underflow to +0 and −0 (α·q·c below f32's range): ns_before ties them, so the
// rows come in increasing order whatever the sign of their zero, and each zero keeps its sign.
TEST(MineExact, SignedZeroScoresTieToTheLowerRow) {
    const int64_t N = 60, d = 4;
    Data D;
    D.Q = 1, D.N = N, D.d = d;
    D.q = {1.0f, 0.0f, 0.0f, 0.0f};
    D.c.assign((size_t)(N * d), 0.0f);
    for (int64_t j = 0; j < N; j++) D.c[(size_t)(j * d)] = (j % 3 == 1 ? -1e-20f : 1e-20f) * (1.0f + (float)j);
    Result want = brute_force(D, N, 1e-30f);
    ASSERT_TRUE(std::signbit(want.score[1]) && want.index[1] == 1); // the test has −0 scores
    check(D, N, 1e-30f);
    check(D, 7, 1e-30f);
}

// ---------------------------------------------------------------- the CUDA backend
// The same mining on CUDA (kernels/cuda_mine_topk.cu, exact mode): ŝ from a bf16 GEMM of the
// f32 rows (the rows themselves when they are bf16), every candidate within the bound of the
// running k-th re-scored in the CPU's order: the same indices and scores as the float64 brute
// force and the CPU, bit for bit. Corpus tiles of 700 rows (NS_CUDA_MINE_TILE_ROWS), so the
// thresholds, buffer reductions and bounds cross tiles. The plain path (NS_CUDA_MINE_GEMM=f32)
// is the benchmark's baseline: here it runs and finds the same index sets within a tolerance
// only (a GPU's f32 GEMM rounds differently from the layer's double-accumulating reference).
namespace {

Result mine_cuda(const Data &D, int64_t k, float scale, const char *gemm, bool *skipped) {
    Result r;
    nstest::Ctx c(NS_BACKEND_CUDA);
    *skipped = c.status != NS_OK;
    if (*skipped) return r;
    if (gemm) setenv("NS_CUDA_MINE_GEMM", gemm, 1);
    else unsetenv("NS_CUDA_MINE_GEMM");
    setenv("NS_CUDA_MINE_TILE_ROWS", "700", 1);
    const bool bf = D.dtype == NS_BF16;
    nstest::Buf<float> qf(c, bf ? std::vector<float>(1) : D.q), cf(c, bf ? std::vector<float>(1) : D.c);
    nstest::Buf<uint16_t> q16(c, bf ? D.q16 : std::vector<uint16_t>(1)),
        c16(c, bf ? D.c16 : std::vector<uint16_t>(1));
    nstest::Buf<int64_t> index(c, (size_t)(D.Q * k), -7);
    nstest::Buf<float> score(c, (size_t)(D.Q * k), 0.0f);
    ns_matrix mq = D.mq(), mc = D.mc();
    mq.data = bf ? (const void *)q16.ptr() : (const void *)qf.ptr();
    mc.data = bf ? (const void *)c16.ptr() : (const void *)cf.ptr();
    ns_mine_options mo = NS_MINE_OPTIONS_INIT;
    mo.scale = scale;
    EXPECT_EQ(ns_mine_topk(c, mq, mc, k, &mo, index.ptr(), score.ptr()), NS_OK) << ns_last_error(c);
    unsetenv("NS_CUDA_MINE_GEMM");
    unsetenv("NS_CUDA_MINE_TILE_ROWS");
    r.index = index.fetch();
    r.score = score.fetch();
    return r;
}

void check_cuda(const Data &D, int64_t k, float scale) {
    bool skipped = false;
    Result got = mine_cuda(D, k, scale, nullptr, &skipped);
    if (skipped) GTEST_SKIP() << "no CUDA backend here";
    expect_same(brute_force(D, k, scale), got, D.Q, k, "CUDA exact (bf16 GEMM) vs float64");
    expect_same(mine(D, k, scale, 2, nullptr), got, D.Q, k, "CUDA exact vs CPU");
    Result plain = mine_cuda(D, k, scale, "f32", &skipped);
    int64_t far = 0;
    for (size_t i = 0; i < got.score.size(); i++)
        far += !nstest::close(plain.score[i], got.score[i], 1e-6, 1e-4);
    EXPECT_EQ(far, 0) << "the plain f32 path (NS_CUDA_MINE_GEMM=f32) is far from the exact scores";
}

}  // namespace

TEST(MineExactCuda, NearTiesAndDuplicatesAtTheKth) {
    check_cuda(adversarial(5, 3000, 96, 100, 0.0, 1), 100, 1.0f);
}

TEST(MineExactCuda, KIsOneMixedScalesNegativeScale) {
    check_cuda(adversarial(4, 2000, 48, 1, 3.0, 4), 1, -0.37f);
}

TEST(MineExactCuda, LargeNormsIncludingPastTheBf16Limit) {
    Data D = adversarial(3, 2100, 32, 40, 0.0, 5);
    for (int64_t j = 0; j < D.N; j++) {
        float sc = j % 3 == 0 ? 1e6f : j % 3 == 1 ? 3e9f : 1.0f;  // past 2^32: no bound, re-scored
        for (int64_t t = 0; t < D.d; t++) D.c[(size_t)(j * D.d + t)] *= sc;
    }
    check_cuda(D, 40, 1e-12f);
}

TEST(MineExactCuda, Bf16InputsAreExactInTheBf16Gemm) {
    Data D = adversarial(4, 2500, 160, 64, 0.0, 6);
    D.to_bf16();
    check_cuda(D, 64, 1.0f);
}
