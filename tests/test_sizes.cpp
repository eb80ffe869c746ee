// Size arithmetic at the shapes of issue 11 and beyond (B = N = 1,000,000 and more), checked at
// its boundary values: the shapes themselves are far too large for CI, so the arithmetic that
// decides whether they work is a small function (src/hostdevice/) tested here.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>

#include "ns_loss_math.h"

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
