// The workspace arena (src/ns_arena.h): a layout pass on a sizing arena, one reserve, then the
// carve; alignment, growth only when too small, reset, and the copy helper's directions.
#include "ns_test_util.h"

#include "../src/ns_internal.h"

using namespace nstest;

namespace {

struct Plan {
    size_t a, b, c;
    char *pa, *pb, *pc;
};

void layout(void *plan, ns_arena *ar) {
    Plan *p = (Plan *)plan;
    p->pa = (char *)ns_arena_carve(ar, p->a);
    p->pb = (char *)ns_arena_carve(ar, p->b);
    p->pc = (char *)ns_arena_carve(ar, p->c);
}

TEST(Arena, SizerCountsAlignedBytesAndCarvesNothing) {
    ns_arena s = ns_arena_sizer(NS_MEM_HOST);
    EXPECT_EQ(ns_arena_carve(&s, 3), nullptr);
    EXPECT_EQ(ns_arena_carve(&s, 100), nullptr);
    EXPECT_EQ(s.used, 64u + 100u);  // the second piece starts at the next 64-byte boundary
    ns_arena d = ns_arena_sizer(NS_MEM_DEVICE);
    ns_arena_carve(&d, 1);
    ns_arena_carve(&d, 1);
    EXPECT_EQ(d.used, 256u + 1u);
}

TEST(Arena, LayOutReservesOnceAndCarvesAlignedDisjointPieces) {
    Ctx c(NS_BACKEND_CPU, 1);
    ASSERT_EQ(c.status, NS_OK) << c.why;
    ns_arena a = ns_arena_empty(NS_MEM_HOST);
    Plan p = {10, 1000, 0, nullptr, nullptr, nullptr};
    ASSERT_EQ(ns_arena_lay_out(c, &a, layout, &p, "test"), NS_OK);
    for (char *x : {p.pa, p.pb, p.pc}) {
        ASSERT_NE(x, nullptr);
        EXPECT_EQ((uintptr_t)x % 64, 0u);
    }
    EXPECT_GE(p.pb, p.pa + p.a);
    EXPECT_GE(p.pc, p.pb + p.b);
    EXPECT_LE((size_t)(p.pc - a.base) + p.c, a.capacity);
    std::memset(p.pa, 1, p.a);
    std::memset(p.pb, 2, p.b);
    // Same or smaller sizes: no new block, the same pieces.
    char *base = a.base, *pb = p.pb;
    p.b = 500;
    ASSERT_EQ(ns_arena_lay_out(c, &a, layout, &p, "test"), NS_OK);
    EXPECT_EQ(a.base, base);
    EXPECT_EQ(p.pb, pb);
    // Larger: grows by at least half again, so slowly growing shapes do not reallocate each call.
    const size_t cap = a.capacity;
    p.b = cap + 1;
    ASSERT_EQ(ns_arena_lay_out(c, &a, layout, &p, "test"), NS_OK);
    EXPECT_GE(a.capacity, cap + cap / 2);
    // A carve past the reserve fails instead of overrunning.
    ns_arena_reset(&a);
    EXPECT_EQ(ns_arena_carve(&a, a.capacity + 1), nullptr);
    EXPECT_NE(ns_arena_carve(&a, a.capacity), nullptr);
    ns_arena_release(c, &a);
    EXPECT_EQ(a.base, nullptr);
    EXPECT_EQ(a.capacity, 0u);
}

TEST(Arena, ReserveFailureIsReportedNotIgnored) {
#if defined(__SANITIZE_ADDRESS__)
    GTEST_SKIP() << "AddressSanitizer aborts on an impossible allocation instead of returning NULL";
#endif
    Ctx c(NS_BACKEND_CPU, 1);
    ASSERT_EQ(c.status, NS_OK) << c.why;
    ns_arena a = ns_arena_empty(NS_MEM_HOST);
    EXPECT_EQ(ns_arena_reserve(c, &a, SIZE_MAX / 2, "ns_test"), NS_ERR_OUT_OF_MEMORY);
    EXPECT_NE(std::string(ns_last_error(c)).find("ns_test: cannot allocate"), std::string::npos)
        << ns_last_error(c);
    EXPECT_EQ(a.base, nullptr);
    EXPECT_EQ(ns_arena_reserve(c, &a, 128, "ns_test"), NS_OK);
    ns_arena_release(c, &a);
}

TEST(Arena, CopyOnACpuContextIsAMemcpyInEveryDirection) {
    Ctx c(NS_BACKEND_CPU, 1);
    ASSERT_EQ(c.status, NS_OK) << c.why;
    const int src[4] = {1, 2, 3, 4};
    for (ns_copy_dir dir : {NS_COPY_H2H, NS_COPY_H2D, NS_COPY_D2H, NS_COPY_D2D}) {
        int dst[4] = {0, 0, 0, 0};
        ASSERT_EQ(ns_copy(c, dst, src, sizeof src, dir), NS_OK);
        EXPECT_EQ(std::memcmp(dst, src, sizeof src), 0);
    }
}

}  // namespace
