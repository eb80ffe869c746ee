// Size arithmetic at the shapes of issue 11 and beyond (B = N = 1,000,000 and more), checked at
// its boundary values: the shapes themselves are far too large for CI, so the arithmetic that
// decides whether they work is a small function (src/hostdevice/) tested here.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>

#include "ns_loss_math.h"
#include "step_memory.h"

namespace {

// n · scale ≤ 2^63 in exact integer arithmetic (scale a power of two ≤ 2^40).
bool fits(int64_t n, double scale) {
    const int s = std::ilogb(scale);
    return (unsigned __int128)(uint64_t)n << s <= (unsigned __int128)1 << 63;
}

}  // namespace

// The symmetric backward's fixed-point column sums (kernels/cuda_infonce_backward.cu): the
// scale stays 2^40 (the bits every test so far saw) while at most 2^23 queries can share a
// passage, and above that never lets B terms of at most `scale` wrap 64 bits. The former fixed
// 2^40 wrapped at B = 2^24 queries on one passage: 2^24 · 2^40 = 2^64.
TEST(Sizes, ColumnSumFixedPointNeverWraps) {
    const int64_t unchanged[] = {0, 1, 32768, 1000000, 2000000, int64_t(1) << 23};
    for (int64_t n : unchanged) EXPECT_EQ(ns_loss_colfix_scale(n), std::ldexp(1.0, 40)) << n;
    const int64_t large[] = {(int64_t(1) << 23) + 1, (int64_t(1) << 24) - 1, int64_t(1) << 24,
                             (int64_t(1) << 24) + 1, int64_t(3) << 30,      int64_t(1) << 40,
                             (int64_t(1) << 62) + 7, INT64_MAX};
    for (int64_t n : large) {
        const double s = ns_loss_colfix_scale(n);
        EXPECT_TRUE(fits(n, s)) << n << " terms at scale " << s << " can wrap";
        EXPECT_GE(s, 1.0) << n;
        if (s < std::ldexp(1.0, 40)) EXPECT_FALSE(fits(n, 2 * s)) << n << ": a larger scale fits";
    }
    EXPECT_FALSE(fits(int64_t(1) << 24, std::ldexp(1.0, 40)));  // the old constant at 2^24
}

// kernels/README.md "Sizes and limits" quotes the CUDA step's device memory at the issue's
// shapes (d = 768 bf16, COMPUTED, not measured): the formula of tests/step_memory.h, which
// CudaParity.StepDevicePeakMatchesTheFormula holds to the host layer's cudaMalloc count.
TEST(Sizes, StepDeviceMemoryAtIssueShapes) {
    auto total = [](int64_t B, bool sym) { return nsmem::step_memory({B, 768, 2, sym}).total(); };
    EXPECT_EQ(total(32768, false), 1178601216);  // 1.10 GiB, of which the strip 512 MiB
    EXPECT_EQ(total(32768, true), 1179682560);
    EXPECT_EQ(total(1000000, false), 15591268096);  // 14.52 GiB: no strip (forward, backward)
    EXPECT_EQ(total(1000000, true), 15624268288);   // 14.55 GiB
    EXPECT_EQ(nsmem::strip_bytes(1000000, 1000000, 4096, 4096, int64_t(512) << 20, 256), 0);
    EXPECT_GT(nsmem::strip_bytes(524288, 524288, 4096, 4096, int64_t(512) << 20, 256), 0);
    EXPECT_EQ(nsmem::strip_bytes(524288 + 4097, 524288 + 4097, 4096, 4096, int64_t(512) << 20, 256), 0);
    // The largest B = N whose step fits 139 GiB (an H200's 140.4 GiB less its CUDA context).
    const int64_t cap = int64_t(139) << 30;
    EXPECT_LE(total(9627144, true), cap);
    EXPECT_GT(total(9627145, true), cap);
    EXPECT_LE(total(9647699, false), cap);
    EXPECT_GT(total(9647700, false), cap);
}
