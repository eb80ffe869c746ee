// negsamp mine's NCCL ranks (tools/cli_shard.c, compiled into this test) on one forced rank:
// NS_CLI_TEST_FORCE_RANKS=1 takes the multi-rank path in one process (MPI as a singleton), the
// rank's device is its rank on the node (0), rank 0 makes the ncclUniqueId and broadcasts it,
// and the NCCL communicator of one rank mines through the sharded merge (its all-to-all runs
// as grouped ncclSend/ncclRecv to self) with the result of a call without a communicator. On
// the host execution layer this runs on its one-rank NCCL; several ranks need GPUs (untested).
// One test per process: MPI cannot be initialised again after cli_shard_finish.
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "ns_test_util.h"

extern "C" {
#include "cli_shard.h"
}

using namespace nstest;

// The CLI's error printer (tools/cli_args.c), kept here: the messages become the test's.
std::string g_cli_errors;
extern "C" void cli_error(const char *fmt, ...) {
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    g_cli_errors += std::string(buf) + "\n";
}

namespace {

TEST(CommNccl, CliRanksOnOneForcedRank) {
#if !defined(NS_HAVE_NCCL) || !defined(NS_CLI_MPI)
    GTEST_SKIP() << "needs a build with NCCL and MPI";
#else
    {
        Ctx probe(NS_BACKEND_CUDA);
        NS_REQUIRE_BACKEND(probe);
    }
    setenv("NS_CLI_TEST_FORCE_RANKS", "1", 1);
    cli_shard sh;
    ASSERT_EQ(cli_shard_init(&sh), 0) << g_cli_errors;
    EXPECT_EQ(sh.ranks, 1);
    EXPECT_EQ(sh.size, 1);
    EXPECT_EQ(sh.local_rank, 0);
    {
        Ctx c(NS_BACKEND_CUDA);  // device 0 = the only rank's number on its node
        ASSERT_EQ(c.status, NS_OK) << c.why;
        ASSERT_EQ(cli_shard_comm(&sh, c), 0) << g_cli_errors;
        ASSERT_NE(sh.comm, nullptr);
        EXPECT_EQ(ns_comm_size(sh.comm), 1);
        const int64_t Q = 7, N = 30, d = 6, k = 5;
        std::vector<float> q = random_floats((size_t)(Q * d), 3), cv = random_floats((size_t)(N * d), 4);
        std::copy_n(cv.begin(), 2 * d, cv.end() - 2 * d);  // equal rows: ties to the lower row
        {
            Buf<float> bq(c, q), bc(c, cv);
            Buf<int64_t> i1(c, (size_t)(Q * k), -1), i2(c, (size_t)(Q * k), -2);
            Buf<float> s1(c, (size_t)(Q * k), 0.f), s2(c, (size_t)(Q * k), 1.f);
            ns_mine_options o = NS_MINE_OPTIONS_INIT;
            ASSERT_EQ(ns_mine_topk(c, f32_matrix(bq.ptr(), Q, d), f32_matrix(bc.ptr(), N, d), k,
                                   &o, i1.ptr(), s1.ptr()),
                      NS_OK)
                << ns_last_error(c);
            o.comm = sh.comm;
            ASSERT_EQ(ns_mine_topk(c, f32_matrix(bq.ptr(), Q, d), f32_matrix(bc.ptr(), N, d), k,
                                   &o, i2.ptr(), s2.ptr()),
                      NS_OK)
                << ns_last_error(c);
            EXPECT_EQ(i2.fetch(), i1.fetch());
            EXPECT_EQ(s2.fetch(), s1.fetch());
        }
        cli_shard_finish(&sh);  // destroys the communicator (before its context), finalises MPI
    }
    unsetenv("NS_CLI_TEST_FORCE_RANKS");
#endif
}

}  // namespace
