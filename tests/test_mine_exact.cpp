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
#include "../src/hostdevice/ns_bound.h"

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

// 2048 queries: corpus blocks of 4096 rows (ns_mine_corpus_block), three of them; and at k = 1000
// on one thread (the shared tile) query tiles of 1024 with corpus blocks of 8192, so that the
// first row of a tile holds more than four reservoirs (mine_plan_init), bf16 inputs too.
TEST(MineExact, ManyQueryTilesAndCorpusBlocks) {
    Data D = adversarial(2048, 9000, 24, 20, 1.0, 7);
    check(D, 20, 1.0f);
    Data E = adversarial(2048, 9000, 8, 1000, 0.5, 23);
    Result want = brute_force(E, 1000, 1.0f);
    expect_same(want, mine(E, 1000, 1.0f, 1, nullptr), E.Q, 1000, "k = 1000, one thread");
    E.to_bf16();
    want = brute_force(E, 1000, 1.0f);
    expect_same(want, mine(E, 1000, 1.0f, 1, nullptr), E.Q, 1000, "k = 1000, bf16, one thread");
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

// budget: options->workspace_bytes (0: the default); *blocks: the query super-blocks the call
// streamed the corpus for (the progress callback's total over the corpus rows).
Result mine_cuda(const Data &D, int64_t k, float scale, const char *gemm, bool *skipped,
                 size_t budget = 0, int64_t *blocks = nullptr) {
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
    mo.workspace_bytes = budget;
    int64_t total = 0;
    if (blocks) {
        mo.progress = [](int64_t, int64_t t, void *u) {
            *(int64_t *)u = t;
            return 0;
        };
        mo.progress_user = &total;
    }
    EXPECT_EQ(ns_mine_topk(c, mq, mc, k, &mo, index.ptr(), score.ptr()), NS_OK) << ns_last_error(c);
    if (blocks) *blocks = total / D.N;
    unsetenv("NS_CUDA_MINE_GEMM");
    unsetenv("NS_CUDA_MINE_TILE_ROWS");
    r.index = index.fetch();
    r.score = score.fetch();
    return r;
}

// The device workspace one query needs for this shape: the number the refusal of a 1-byte
// budget names.
size_t one_query_bytes(const Data &D, int64_t k) {
    nstest::Ctx c(NS_BACKEND_CUDA);
    if (c.status != NS_OK) return 0;
    setenv("NS_CUDA_MINE_TILE_ROWS", "700", 1);
    nstest::Buf<float> qf(c, D.q), cf(c, D.c);
    nstest::Buf<int64_t> index(c, (size_t)(D.Q * k), -7);
    nstest::Buf<float> score(c, (size_t)(D.Q * k), 0.0f);
    ns_matrix mq = D.mq(), mc = D.mc();
    mq.data = qf.ptr(), mc.data = cf.ptr();
    ns_mine_options mo = NS_MINE_OPTIONS_INIT;
    mo.workspace_bytes = 1;
    EXPECT_EQ(ns_mine_topk(c, mq, mc, k, &mo, index.ptr(), score.ptr()), NS_ERR_OUT_OF_MEMORY);
    unsetenv("NS_CUDA_MINE_TILE_ROWS");
    const std::string e = ns_last_error(c);
    EXPECT_NE(e.find("options->workspace_bytes (1)"), std::string::npos) << e;
    for (int64_t v : index.fetch()) EXPECT_EQ(v, -7);  // refused before any output
    const size_t at = e.find("below the ");
    return at == std::string::npos ? 0 : (size_t)std::stoull(e.substr(at + 10));
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

// Many candidates per query: corpus rows that are one common row plus noise 2^-12 of its size,
// so every score lies within ~1e-3 relative of the k-th while the bf16 bound is ~8e-3: nearly
// the whole corpus is re-scored exactly (the warp-per-candidate re-score, candidates arriving
// 32 per warp at once). Checked: the data does put most rows inside the bound, and the result
// is the float64 brute force's and the CPU's, bit for bit.
TEST(MineExactCuda, ManyCandidatesPerQueryAllReScored) {
    std::mt19937 g(77);
    std::normal_distribution<float> nd(0.0f, 1.0f);
    Data D;
    D.Q = 3, D.N = 1500, D.d = 77;  // d not a multiple of 32: the lanes' tails
    D.q.resize((size_t)(D.Q * D.d));
    D.c.resize((size_t)(D.N * D.d));
    for (auto &x : D.q) x = 1.0f + 0.1f * nd(g);  // all scores positive, of one size
    std::vector<float> base((size_t)D.d);
    for (auto &x : base) x = 1.0f + 0.1f * nd(g);
    for (int64_t j = 0; j < D.N; j++)
        for (int64_t t = 0; t < D.d; t++)
            D.c[(size_t)(j * D.d + t)] = base[(size_t)t] * (1.0f + 0x1p-12f * nd(g));
    const int64_t k = 64;
    Result want = brute_force(D, k, 1.0f);
    const double rel = ns_bound_relative(D.d, 1, NS_BOUND_ACC_TENSOR_CORE);  // the CUDA GEMM's
    for (int64_t i = 0; i < D.Q; i++) {  // rows whose score is within the bound of the k-th
        const double kth = want.score[(size_t)(i * k + k - 1)];
        int64_t inside = 0;
        for (int64_t j = 0; j < D.N; j++) {
            double s = 0, nq = 0, nc = 0;
            for (int64_t t = 0; t < D.d; t++) {
                const double a = D.q[(size_t)(i * D.d + t)], b = D.c[(size_t)(j * D.d + t)];
                s += a * b, nq += a * a, nc += b * b;
            }
            inside += s + 2 * rel * std::sqrt(nq * nc) >= kth;
        }
        EXPECT_GT(inside, D.N * 9 / 10) << "query " << i << ": the data should put most rows in the band";
    }
    bool skipped = false;
    Result got = mine_cuda(D, k, 1.0f, nullptr, &skipped);
    if (skipped) GTEST_SKIP() << "no CUDA backend here";
    expect_same(want, got, D.Q, k, "CUDA exact, every row a candidate, vs float64");
    expect_same(mine(D, k, 1.0f, 2, nullptr), got, D.Q, k, "CUDA exact vs CPU");
}

// Query super-blocks (options->workspace_bytes): the smallest budget that holds one query
// streams the corpus once per query, larger ones a few queries per super-block; every budget
// gives the float64 brute force's bits (and the default budget's: one super-block). A budget
// below one query is refused, naming both sizes, before any output is written.
TEST(MineExactCuda, QuerySuperBlocksGiveTheSameBitsForEveryBudget) {
    Data D = adversarial(7, 2100, 40, 50, 1.0, 11);
    const int64_t k = 50;
    bool skipped = false;
    int64_t blocks = 0;
    Result one = mine_cuda(D, k, 1.0f, nullptr, &skipped, 0, &blocks);
    if (skipped) GTEST_SKIP() << "no CUDA backend here";
    EXPECT_EQ(blocks, 1);
    const Result want = brute_force(D, k, 1.0f);
    expect_same(want, one, D.Q, k, "default budget vs float64");
    const size_t min = one_query_bytes(D, k);
    ASSERT_GT(min, 0u);
    const size_t budgets[] = {min, min + min / 4, min + min / 2, 2 * min};
    int64_t last = D.Q, between = 0;
    for (int b = 0; b < 4; b++) {
        Result got = mine_cuda(D, k, 1.0f, nullptr, &skipped, budgets[b], &blocks);
        SCOPED_TRACE("budget " + std::to_string(budgets[b]) + " bytes, " + std::to_string(blocks) + " super-blocks");
        if (b == 0) EXPECT_EQ(blocks, D.Q);  // one query per super-block
        EXPECT_LE(blocks, last);             // a larger budget, no more super-blocks
        between += blocks > 1 && blocks < D.Q;
        last = blocks;
        expect_same(want, got, D.Q, k, "super-blocks vs float64");
    }
    EXPECT_GT(between, 0) << "no budget gave super-blocks of several queries";
}

// The re-score's summation order, where the order decides the value: rows with components ±2^60
// and 1 (norms past 2^32: always re-scored) against a query of ones, d = 64. The CPU's order
// (lane l sums t ≡ l mod 32, then the pairwise tree) loses the 1 in rows "A" (2^60 + 1 in one
// lane, −2^60 in the next: 0) and keeps it in rows "B" (±2^60 in one lane, 1 in the next: 1); a
// left-to-right sum would give the opposite. The CUDA top-k must be the B rows (score 1), then
// the A rows (score 0), as on the CPU, ahead of the ordinary rows (negative scores).
TEST(MineExactCuda, ReScoreFollowsTheCpuSummationOrder) {
    std::mt19937 g(5);
    std::uniform_real_distribution<float> ud(0.5f, 1.0f);
    Data D;
    D.Q = 1, D.N = 600, D.d = 64;
    D.q.assign((size_t)D.d, 1.0f);
    D.c.resize((size_t)(D.N * D.d));
    for (auto &x : D.c) x = -ud(g);
    const float big = 0x1p60f;
    std::vector<int64_t> a_rows, b_rows;
    for (int64_t r = 0; r < 4; r++) {
        const int64_t a = 100 + 97 * r, b = 150 + 89 * r;
        float *ca = &D.c[(size_t)(a * D.d)], *cb = &D.c[(size_t)(b * D.d)];
        std::fill(ca, ca + D.d, 0.0f);
        std::fill(cb, cb + D.d, 0.0f);
        const int l = (int)(r % 16) * 2;  // the lanes l, l + 1
        ca[l] = big, ca[l + 32] = 1.0f, ca[l + 1] = -big;   // lane l: 2^60 + 1 = 2^60; lane l+1: −2^60
        cb[l] = big, cb[l + 32] = -big, cb[l + 1] = 1.0f;   // lane l: 0; lane l+1: 1
        a_rows.push_back(a), b_rows.push_back(b);
    }
    const int64_t k = 8;
    Result cpu = mine(D, k, 1.0f, 2, nullptr);
    std::vector<int64_t> want = b_rows;
    want.insert(want.end(), a_rows.begin(), a_rows.end());
    for (int64_t r = 0; r < k; r++) {
        EXPECT_EQ(cpu.index[(size_t)r], want[(size_t)r]) << "CPU rank " << r;
        EXPECT_EQ(cpu.score[(size_t)r], r < 4 ? 1.0f : 0.0f) << "CPU rank " << r;
    }
    bool skipped = false;
    Result got = mine_cuda(D, k, 1.0f, nullptr, &skipped);
    if (skipped) GTEST_SKIP() << "no CUDA backend here";
    expect_same(cpu, got, D.Q, k, "CUDA exact vs CPU, order-dependent sums");
}

// ---------------------------------------------------------------- the CPU's internal passes
// The passes of src/cpu/cpu_mine_reservoir.c and cpu_mine_order.c on their own, against plain
// loops written here: the radix threshold's promise, the AVX-512 versions' bits against the
// portable ones', and the bf16 re-score's summation order.
extern "C" {
#include "cpu/cpu_mine.h"
}

namespace {

// The promise of ns_mine_kth_key_floor against a sort: t ≤ the k-th largest (at least k keys
// ≥ t), and either t is the k-th largest or fewer than k + NS_MINE_KTH_SLACK keys are ≥ t.
void expect_kth_floor(const std::vector<uint32_t> &keys, int64_t k, const char *what) {
    const int64_t n = (int64_t)keys.size();
    std::vector<uint32_t> sorted = keys;
    std::sort(sorted.begin(), sorted.end(), std::greater<uint32_t>());
    const uint32_t kth = sorted[(size_t)(k - 1)];
    const uint32_t t = ns_mine_kth_key_floor(keys.data(), n, k);
    int64_t at_least = 0;
    for (uint32_t x : keys) at_least += x >= t;
    EXPECT_LE(t, kth) << what << " n " << n << " k " << k;
    EXPECT_GE(at_least, k) << what << " n " << n << " k " << k;
    if (t != kth) EXPECT_LT(at_least, k + NS_MINE_KTH_SLACK) << what << " n " << n << " k " << k;
}

}  // namespace

// Keys spread over all 32 bits, clustered in a narrow band (the scores of one reservoir), with
// many equal keys at the k-th, a few far outliers that stretch the range (so the first pass's
// bins are coarse and the k-th's bin is counted again), the extremes 0 and 2^32 − 1, and sizes
// from 1 to past the largest histogram; k from 1 to n.
TEST(MineExact, KthKeyFloorIsALowerBoundWithinTheSlack) {
    std::mt19937 g(31);
    std::uniform_int_distribution<uint32_t> any;
    for (int64_t n : {1, 2, 17, 64, 200, 1000, 2000, 5000, 9000}) {
        for (int shape = 0; shape < 5; shape++) {
            std::vector<uint32_t> keys((size_t)n);
            for (auto &x : keys) {
                const uint32_t r = any(g);
                x = shape == 0 ? r
                    : shape == 1 ? 0xbe000000u + (r & 0xfffff)          // a narrow band
                    : shape == 2 ? 0xbe000000u + (r % 7) * 3            // few distinct values
                    : shape == 3 ? (r % 50 == 0 ? r : 0xbe000000u + (r & 0x3ff))  // outliers
                                 : (r & 1 ? 0xffffffffu : 0u);          // the extremes
            }
            for (int64_t k : {(int64_t)1, n / 3 + 1, n / 2 + 1, n - 1, n}) {
                if (k < 1 || k > n) continue;
                expect_kth_floor(keys, k, ("shape " + std::to_string(shape)).c_str());
            }
        }
    }
}

namespace {

// A score with 16 random significant bits near 2^e (bf16 products of the tile are such).
float near_pow2(std::mt19937 &g, int e) {
    std::uniform_int_distribution<int> m(-65535, 65535);
    return std::ldexp((float)m(g), e - 16);
}

}  // namespace

// ns_mine_take_listed, ns_mine_lower_keys and ns_mine_keep_above, AVX-512 against portable:
// the same entries, the same bits, the same stopping points (right after the entry that fills
// the reservoir) — tile rows of scores around the threshold (many within a bound of it), ±0,
// subnormal bounds, list lengths not a multiple of 16, reservoirs that fill part-way through a
// row and again after being emptied, NaN and ±Inf at several list positions (the group that
// holds one is taken one by one); entries already exact (e = 0) among the shrink's.
TEST(MineExact, ReservoirPassesAvx512MatchPortable) {
    if (!ns_mine_scan_avx512_usable()) GTEST_SKIP() << "no AVX-512 here";
    std::mt19937 g(41);
    std::uniform_real_distribution<float> ud(0.0f, 1.0f);
    for (int trial = 0; trial < 200; trial++) {
        const int64_t n = 1 + (int64_t)(g() % 300), base = (int64_t)(g() % 100000);
        std::vector<float> row((size_t)n), cn((size_t)n), cr((size_t)n);
        for (int64_t j = 0; j < n; j++) {
            row[(size_t)j] = trial % 7 == 0 && j % 5 == 0 ? (j % 2 ? -0.0f : 0.0f) : near_pow2(g, -2);
            cn[(size_t)j] = ud(g) * 2.0f;
            cr[(size_t)j] = trial % 3 == 0 ? 1e-40f : ud(g) * 0.01f;
        }
        if (trial % 4 == 1) row[(size_t)(g() % n)] = trial % 8 == 1 ? NAN : -INFINITY;
        row_bound b;
        b.fq = 1e-3f * ud(g), b.gq = 1.0f, b.cn = cn.data(), b.cr = trial % 2 ? cr.data() : nullptr;
        b.abs_e = trial % 5 == 0 ? 1e-45f : 0.0f;
        b.emax = 0.0f;
        std::vector<int32_t> cols;
        for (int64_t j = 0; j < n; j++)
            if (g() % 3 || !(std::fabs(row[(size_t)j]) <= FLT_MAX)) cols.push_back((int32_t)j);
        const int64_t m = (int64_t)cols.size();
        const float thr = near_pow2(g, -3), pre = thr - 0.01f;
        const int64_t cap = 1 + (int64_t)(g() % (m + 2));
        std::vector<float> s[2], e[2];
        std::vector<int64_t> id[2];
        int64_t ret[2][4], cnt[2][4], filled = 0; // filled: the entries held at the end
        for (int v = 0; v < 2; v++) {
            s[v].assign((size_t)(cap + CHUNK), 7.0f), e[v].assign((size_t)(cap + CHUNK), 7.0f);
            id[v].assign((size_t)(cap + CHUNK), -7);
            reservoir r = {s[v].data(), e[v].data(), id[v].data(), 0, cap};
            int64_t c = 0;
            for (int step = 0; step < 4; step++) { // filling, then emptied and filled again
                ret[v][step] = ns_mine_take_listed(row.data(), cols.data(), c, m, &b, pre, thr,
                                                   base, &r, v);
                cnt[v][step] = r.cnt;
                if (v == 0) filled = r.cnt;
                if (ret[v][step] >= 0) break;
                c = -ret[v][step] - 1;
                r.cnt = r.cnt / 2;
            }
        }
        for (int step = 0; step < 4; step++) {
            ASSERT_EQ(ret[0][step], ret[1][step]) << "trial " << trial << " step " << step;
            ASSERT_EQ(cnt[0][step], cnt[1][step]) << "trial " << trial << " step " << step;
            if (ret[0][step] >= 0) break;
        }
        for (int64_t j = 0; j < filled; j++) {
            ASSERT_EQ(std::memcmp(&s[0][(size_t)j], &s[1][(size_t)j], 4), 0) << trial << " " << j;
            ASSERT_EQ(std::memcmp(&e[0][(size_t)j], &e[1][(size_t)j], 4), 0) << trial << " " << j;
            ASSERT_EQ(id[0][(size_t)j], id[1][(size_t)j]) << trial << " " << j;
        }
        // Each entry is one the plain rule takes, with the bound ns_mine_bound_of gives.
        for (int64_t j = 0; j < filled; j++) {
            const int64_t col = id[0][(size_t)j] - base;
            ASSERT_GT(s[0][(size_t)j], pre);
            ASSERT_EQ(e[0][(size_t)j], ns_mine_bound_of(&b, col));
            ASSERT_GT(up(s[0][(size_t)j] + e[0][(size_t)j]), thr);
        }
        // The shrink's passes on the entries (some exact: e = 0).
        const int64_t k = std::max<int64_t>(1, filled / 2);
        std::vector<uint32_t> keys[2];
        int64_t kept[2];
        for (int v = 0; v < 2; v++) {
            for (int64_t j = 0; j < filled; j += 3) e[v][(size_t)j] = 0.0f;
            keys[v].assign((size_t)filled, 0);
            ns_mine_lower_keys(s[v].data(), e[v].data(), filled, keys[v].data(), v);
            const float t = filled ? key_value(ns_mine_kth_key_floor(keys[v].data(), filled, k)) : 0.0f;
            kept[v] = ns_mine_keep_above(s[v].data(), e[v].data(), id[v].data(), filled, t, v);
        }
        ASSERT_EQ(keys[0], keys[1]) << "trial " << trial;
        ASSERT_EQ(kept[0], kept[1]) << "trial " << trial;
        for (int64_t j = 0; j < kept[0]; j++) {
            ASSERT_EQ(std::memcmp(&s[0][(size_t)j], &s[1][(size_t)j], 4), 0);
            ASSERT_EQ(std::memcmp(&e[0][(size_t)j], &e[1][(size_t)j], 4), 0);
            ASSERT_EQ(id[0][(size_t)j], id[1][(size_t)j]);
        }
    }
}

// The bf16 re-score's summation order (lane l sums the terms t ≡ l mod 32 in order, then the
// pairwise tree), which the CUDA re-score mirrors: rows of small bf16 values plus a pair ±2^60 at
// two of the positions P where every query is 1 (the pair cancels in the real sum; what else
// survives in those lanes depends on the order), scored by the library with every row returned
// (k = N) and compared bit for bit with that order written out here — at d = 64, 77 (a tail of
// 13) and 384, on the AVX-512 scorer (unpacked lanes, the tree in registers) and the portable
// one, 1 and 2 threads. A left-to-right sum differs on most rows (checked: the data is a test).
TEST(MineExact, Bf16ReScoreFollowsTheLaneOrder) {
    std::mt19937 g(51);
    std::uniform_int_distribution<int> ex(0, 3), mant(-255, 255);
    for (int64_t d : {64, 77, 384}) {
        const int64_t P[] = {0, 5, 33, 38, 40, 63};
        Data D;
        D.Q = 3, D.N = 200, D.d = d;
        D.q.resize((size_t)(D.Q * d));
        D.c.resize((size_t)(D.N * d));
        for (auto &x : D.q) x = std::ldexp((float)mant(g), -8 + ex(g));
        for (auto &x : D.c) x = std::ldexp((float)mant(g), ex(g));
        for (int64_t i = 0; i < D.Q; i++)
            for (int64_t t : P) D.q[(size_t)(i * d + t)] = 1.0f;
        for (int64_t j = 0; j < D.N; j++) {
            const uint32_t ia = g() % 6, ib = (ia + 1 + g() % 5) % 6; // two of P
            D.c[(size_t)(j * d + P[ia])] = 0x1p60f;
            D.c[(size_t)(j * d + P[ib])] = -0x1p60f;
        }
        D.to_bf16();
        Result want;
        int64_t order_matters = 0;
        for (int64_t i = 0; i < D.Q; i++) {
            std::vector<std::pair<float, int64_t>> all;
            for (int64_t j = 0; j < D.N; j++) {
                double acc[32] = {0}, seq = 0;
                for (int64_t t = 0; t < d; t++) {
                    const double p = (double)D.q[(size_t)(i * d + t)] * D.c[(size_t)(j * d + t)];
                    acc[t % 32] += p;
                    seq += p;
                }
                for (int w = 16; w >= 1; w /= 2)
                    for (int l = 0; l < w; l++) acc[l] += acc[l + w];
                all.push_back({(float)acc[0], j});
                order_matters += (float)acc[0] != (float)seq;
            }
            std::sort(all.begin(), all.end(), [](auto x, auto y) {
                return x.first > y.first || (x.first == y.first && x.second < y.second);
            });
            for (auto &x : all) want.score.push_back(x.first), want.index.push_back(x.second);
        }
        EXPECT_GT(order_matters, D.Q * D.N / 3) << "d " << d << ": the data should depend on the order";
        for (const char *scan : {"avx512", "portable"}) {
            if (!std::strcmp(scan, "portable")) setenv("NS_CPU_MINE_SCAN", "portable", 1);
            for (int threads : {1, 2}) {
                Result got = mine(D, D.N, 1.0f, threads, nullptr);
                expect_same(want, got, D.Q, D.N,
                            ("d " + std::to_string(d) + " " + scan + " threads " +
                             std::to_string(threads)).c_str());
            }
            unsetenv("NS_CPU_MINE_SCAN");
        }
    }
}

// ns_bound.h 3': the CUDA bf16 GEMM runs on tensor cores, whose f32 accumulation is not IEEE.
// tc_dot emulates it as Fasi, Higham, Mikaitis & Pranesh (2021) measured it: block FMAs adding
// b exact products to the accumulator, every term aligned to the largest one's exponent and
// truncated to 24 bits (no guard bits), the sum normalised by truncation. rn_dot is IEEE f32
// (one rounding to nearest per addition), what the CPU GEMMs do.
namespace {

double truncate_to_24_bits(double x, int top_exponent) {  // toward zero, ulp 2^(top − 23)
    const double ulp = std::ldexp(1.0, top_exponent - 23);
    return std::trunc(x / ulp) * ulp;
}

float tc_dot(const std::vector<float> &q, const std::vector<float> &c, int b) {
    double acc = 0;  // an f32 value
    for (size_t t0 = 0; t0 < q.size(); t0 += (size_t)b) {
        std::vector<double> terms = {acc};
        for (size_t t = t0; t < q.size() && t < t0 + (size_t)b; t++)
            terms.push_back((double)q[t] * (double)c[t]);  // exact: bf16 × bf16
        double top = 0;
        for (double x : terms) top = std::max(top, std::fabs(x));
        if (top == 0) continue;
        double sum = 0;  // exact: at most 33 multiples of one ulp, each below 2^24 ulps
        for (double x : terms) sum += truncate_to_24_bits(x, std::ilogb(top));
        acc = sum == 0 ? 0 : truncate_to_24_bits(sum, std::ilogb(sum));
    }
    return (float)acc;
}

float rn_dot(const std::vector<float> &q, const std::vector<float> &c) {
    volatile float acc = 0;  // volatile: one f32 rounding per step, never contracted
    for (size_t t = 0; t < q.size(); t++) {
        volatile float p = q[t] * c[t];  // exact: bf16 × bf16
        acc = acc + p;
    }
    return acc;
}

struct DotCase {
    double err;    // |ŝ − s*|, s* = fl32(Σ q_t c_t in double)
    double scale;  // ‖q‖·‖c‖
};

DotCase error_of(float got, const std::vector<float> &q, const std::vector<float> &c) {
    double s = 0, nq = 0, nc = 0;
    for (size_t t = 0; t < q.size(); t++)
        s += (double)q[t] * c[t], nq += (double)q[t] * q[t], nc += (double)c[t] * c[t];
    return {std::fabs((double)got - (double)(float)s), std::sqrt(nq) * std::sqrt(nc)};
}

double bound_of(const DotCase &e, int64_t d, int acc) {
    return ns_bound_relative(d, 0, acc) * e.scale + ns_bound_absolute(d, 1.0);
}

}  // namespace

// c = q = (1, s, …, s) with s² just under 2^-23, one unit of 1's last place: an IEEE adder
// rounds every s² up into the sum, a truncating one drops every one of them — an error of about
// 2u per term, twice the nearest-rounding bound (the bound CUDA's exact mining used before).
TEST(MineExact, TensorCoreAccumulationNeedsItsOwnBound) {
    const int64_t d = 768;
    const float s = 0x1.68p-12f;  // 1.40625 · 2^-12, a bf16 value: s² = 0.9888 · 2^-23
    std::vector<float> q((size_t)d, s);
    q[0] = 1.0f;
    for (int b : {1, 4, 8, 16, 32}) {
        const DotCase tc = error_of(tc_dot(q, q, b), q, q);
        EXPECT_GT(tc.err, bound_of(tc, d, NS_BOUND_ACC_NEAREST))
            << "b " << b << ": the emulated tensor-core sum should exceed the nearest-rounding bound";
        EXPECT_LE(tc.err, bound_of(tc, d, NS_BOUND_ACC_TENSOR_CORE)) << "b " << b;
    }
    const DotCase rn = error_of(rn_dot(q, q), q, q);
    EXPECT_LE(rn.err, bound_of(rn, d, NS_BOUND_ACC_NEAREST)) << "IEEE f32 accumulation";
}

// Random bf16 rows of mixed signs and scales, every block size: the emulated tensor-core sum
// stays inside NS_BOUND_ACC_TENSOR_CORE's bound and IEEE f32 inside NS_BOUND_ACC_NEAREST's.
TEST(MineExact, TensorCoreAccumulationStaysInsideItsBound) {
    std::mt19937_64 g(20261130);
    std::normal_distribution<float> nd(0.0f, 1.0f);
    std::uniform_int_distribution<int> ex(-6, 6);
    for (int64_t d : {64, 384, 768, 1000}) {
        double worst_tc = 0, worst_rn = 0;
        for (int rep = 0; rep < 60; rep++) {
            std::vector<float> q((size_t)d), c((size_t)d);
            const bool same_sign = rep % 3 == 0;  // no cancellation: the bound at its tightest
            for (int64_t t = 0; t < d; t++) {
                float a = std::ldexp(nd(g), ex(g)), x = std::ldexp(nd(g), ex(g));
                if (same_sign) a = std::fabs(a), x = std::fabs(x);
                q[(size_t)t] = ns_bf16_to_f32(ns_f32_to_bf16(a));
                c[(size_t)t] = ns_bf16_to_f32(ns_f32_to_bf16(x));
            }
            for (int b : {1, 4, 8, 16, 32}) {
                const DotCase tc = error_of(tc_dot(q, c, b), q, c);
                const double bt = bound_of(tc, d, NS_BOUND_ACC_TENSOR_CORE);
                ASSERT_LE(tc.err, bt) << "d " << d << " b " << b << " rep " << rep;
                worst_tc = std::max(worst_tc, tc.err / bt);
            }
            const DotCase rn = error_of(rn_dot(q, c), q, c);
            const double br = bound_of(rn, d, NS_BOUND_ACC_NEAREST);
            ASSERT_LE(rn.err, br) << "d " << d << " rep " << rep;
            worst_rn = std::max(worst_rn, rn.err / br);
        }
        RecordProperty("worst_tc_d" + std::to_string(d), std::to_string(worst_tc));
        RecordProperty("worst_rn_d" + std::to_string(d), std::to_string(worst_rn));
    }
}
