// Contexts, status strings, versions and the error record.
#include "ns_test_util.h"

using namespace nstest;

TEST(Context, CpuCreatesAndReportsBackend) {
    Ctx c(NS_BACKEND_CPU, 2);
    ASSERT_EQ(c.status, NS_OK) << c.why;
    EXPECT_EQ(ns_context_backend(c), NS_BACKEND_CPU);
    EXPECT_STREQ(ns_last_error(c), "");
}

TEST(Context, AutoFallsBackToCpuWithoutDevice) {
    Ctx c(NS_BACKEND_AUTO);
    ASSERT_EQ(c.status, NS_OK) << c.why;
    if (ns_cuda_device_count() == 0) EXPECT_EQ(ns_context_backend(c), NS_BACKEND_CPU);
    else EXPECT_EQ(ns_context_backend(c), NS_BACKEND_CUDA);
}

TEST(Context, CudaWithoutDeviceFailsClearly) {
    if (ns_cuda_device_count() > 0) GTEST_SKIP() << "a GPU is present; this checks the no-GPU path";
    ns_context *ctx = reinterpret_cast<ns_context *>(0x1);
    ns_context_options o = NS_CONTEXT_OPTIONS_INIT;
    o.backend = NS_BACKEND_CUDA;
    ns_status st = ns_context_create(&ctx, &o);
    EXPECT_EQ(ctx, nullptr);
    if (ns_cuda_built()) {
        EXPECT_EQ(st, NS_ERR_NO_DEVICE);
    } else {
        EXPECT_EQ(st, NS_ERR_UNSUPPORTED);
    }
    EXPECT_NE(std::string(ns_last_error(nullptr)).find("ns_context_create"), std::string::npos)
        << ns_last_error(nullptr);
}

TEST(Context, BadOptionsNameTheArgument) {
    ns_context *ctx = nullptr;
    ns_context_options o = NS_CONTEXT_OPTIONS_INIT;
    o.threads = -3;
    EXPECT_EQ(ns_context_create(&ctx, &o), NS_ERR_INVALID_ARGUMENT);
    EXPECT_NE(std::string(ns_last_error(nullptr)).find("threads (-3)"), std::string::npos);
    o = NS_CONTEXT_OPTIONS_INIT;
    o.backend = (ns_backend)7;
    EXPECT_EQ(ns_context_create(&ctx, &o), NS_ERR_INVALID_ARGUMENT);
    EXPECT_NE(std::string(ns_last_error(nullptr)).find("backend (7)"), std::string::npos);
    o = NS_CONTEXT_OPTIONS_INIT;
    o.struct_size = 4;
    EXPECT_EQ(ns_context_create(&ctx, &o), NS_ERR_INVALID_ARGUMENT);
    EXPECT_EQ(ns_context_create(nullptr, nullptr), NS_ERR_INVALID_ARGUMENT);
    EXPECT_EQ(ctx, nullptr);
    EXPECT_EQ(ns_context_destroy(nullptr), NS_OK);
}

TEST(Context, StatusValuesAreFrozenAndNamed) {
    EXPECT_EQ(NS_OK, 0);
    EXPECT_EQ(NS_ERR_INVALID_ARGUMENT, 1);
    EXPECT_EQ(NS_ERR_UNSUPPORTED, 2);
    EXPECT_EQ(NS_ERR_OUT_OF_MEMORY, 3);
    EXPECT_EQ(NS_ERR_NO_DEVICE, 4);
    EXPECT_EQ(NS_ERR_CUDA, 5);
    EXPECT_EQ(NS_ERR_COMM, 6);
    EXPECT_EQ(NS_ERR_NONFINITE, 7);
    EXPECT_EQ(NS_ERR_IO, 8);
    EXPECT_EQ(NS_ERR_INTERNAL, 9);
    for (int s = 0; s <= 9; s++) {
        std::string name = ns_status_string((ns_status)s);
        EXPECT_EQ(name.rfind("NS_", 0), 0u) << name;
    }
    EXPECT_STREQ(ns_status_string((ns_status)99), "unknown ns_status");
}

TEST(Context, VersionMatchesHeader) {
    EXPECT_EQ(ns_version(), NS_VERSION_CODE);
    EXPECT_EQ(NS_VERSION_CODE, NS_VERSION_MAJOR * 10000 + NS_VERSION_MINOR * 100 + NS_VERSION_PATCH);
}
