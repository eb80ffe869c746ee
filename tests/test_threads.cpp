// The context's thread count reaches the GEMM libraries (src/ns_dispatch.h, src/cpu/cpu_blas.c):
// oneDNN and OpenBLAS's OpenMP build size their teams from omp_get_max_threads() at the call, so
// a CPU operation sets it to ns_context_options.threads for its duration and restores the
// caller's value after. The caller's value here stands for OMP_NUM_THREADS (5, more than the
// machine's cores, so that it differs from every context's count); the GEMM must see the
// context's count, the caller its own after every call, and the results must not depend on it.
#include <gtest/gtest.h>

#include "negsamp.h"
#include "../src/ns_internal.h"

#include <omp.h>

#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

// src/cpu/ns_cpu.h (internal to the library): the team size the last GEMM call of this thread saw.
extern "C" int ns_gemm_last_threads(void);

namespace {

constexpr int kCallerThreads = 5;

ns_context *cpu_context(int threads) {
    ns_context_options co = NS_CONTEXT_OPTIONS_INIT;
    co.backend = NS_BACKEND_CPU;
    co.threads = threads;
    ns_context *ctx = nullptr;
    EXPECT_EQ(ns_context_create(&ctx, &co), NS_OK);
    return ctx;
}

ns_matrix f32(const std::vector<float> &x, int64_t rows, int64_t cols) {
    ns_matrix m;
    m.data = x.data();
    m.dtype = NS_F32;
    m.rows = rows;
    m.cols = cols;
    m.ld = cols;
    return m;
}

struct Mined {
    std::vector<int64_t> index;
    std::vector<float> score;
    int gemm_threads;
};

// Mines with a context of `threads` (0: OpenMP's default) and the given candidate GEMM.
Mined mine(int threads, const char *gemm, const std::vector<float> &q, const std::vector<float> &c,
           int64_t Q, int64_t N, int64_t d, int64_t k) {
    if (gemm) setenv("NS_CPU_MINE_GEMM", gemm, 1);
    else unsetenv("NS_CPU_MINE_GEMM");
    ns_context *ctx = cpu_context(threads);
    ns_mine_options mo = NS_MINE_OPTIONS_INIT;
    Mined r;
    r.index.assign((size_t)(Q * k), -7);
    r.score.assign((size_t)(Q * k), 0.0f);
    omp_set_num_threads(kCallerThreads);
    EXPECT_EQ(ns_mine_topk(ctx, f32(q, Q, d), f32(c, N, d), k, &mo, r.index.data(), r.score.data()),
              NS_OK)
        << ns_last_error(ctx);
    r.gemm_threads = ns_gemm_last_threads();
    EXPECT_EQ(omp_get_max_threads(), kCallerThreads) << "the caller's thread count was not restored";
    ns_context_destroy(ctx);
    unsetenv("NS_CPU_MINE_GEMM");
    return r;
}

}  // namespace

// 64 queries: one score tile, threaded by the GEMM library; 800: per-thread sub-tiles, each
// team member running its own GEMMs (the team's size is what reaches them).
class ThreadsMining : public ::testing::TestWithParam<int64_t> {};

TEST_P(ThreadsMining, TheContextsThreadCountReachesTheMiningGemm) {
    const int64_t Q = GetParam(), N = 5000, d = 48, k = 30;
    std::mt19937 g(11);
    std::normal_distribution<float> nd(0.0f, 1.0f);
    std::vector<float> q((size_t)(Q * d)), c((size_t)(N * d));
    for (auto &x : q) x = nd(g);
    for (auto &x : c) x = nd(g);
    const char *gemms[] = {nullptr, "f32"}; // bf16 matmul where oneDNN is built in; dnnl_sgemm
    for (const char *gemm : gemms) {
        Mined ref = mine(1, gemm, q, c, Q, N, d, k);
        EXPECT_EQ(ref.gemm_threads, 1) << "context threads 1, GEMM " << (gemm ? gemm : "default");
        for (int threads : {2, 3}) {
            Mined r = mine(threads, gemm, q, c, Q, N, d, k);
            EXPECT_EQ(r.gemm_threads, threads) << "GEMM " << (gemm ? gemm : "default");
            EXPECT_EQ(r.index, ref.index) << "threads " << threads;
            EXPECT_EQ(0, std::memcmp(r.score.data(), ref.score.data(), r.score.size() * sizeof(float)))
                << "threads " << threads;
        }
        // threads = 0: OpenMP's default, i.e. the caller's.
        EXPECT_EQ(mine(0, gemm, q, c, Q, N, d, k).gemm_threads, kCallerThreads);
    }
}

INSTANTIATE_TEST_SUITE_P(Queries, ThreadsMining, ::testing::Values(64, 800));

TEST(Threads, TheContextsThreadCountReachesTheSimilarityGemm) {
    const int64_t B = 40, d = 24;
    std::vector<float> q((size_t)(B * d), 0.5f), p((size_t)(B * d), 0.25f);
    std::vector<float> s((size_t)(B * B));
    for (int threads : {1, 2}) {
        ns_context *ctx = cpu_context(threads);
        omp_set_num_threads(kCallerThreads);
        ASSERT_EQ(ns_similarity(ctx, f32(q, B, d), f32(p, B, d), 1.0f, 0, s.data()), NS_OK)
            << ns_last_error(ctx);
        EXPECT_EQ(ns_gemm_last_threads(), threads);
        EXPECT_EQ(omp_get_max_threads(), kCallerThreads);
        for (float v : s) EXPECT_EQ(v, 0.125f * (float)d);
        ns_context_destroy(ctx);
    }
}
