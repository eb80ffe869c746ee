// Helpers shared by the GoogleTest suites: contexts per backend, random inputs, buffers that
// live on the context's backend (host memory on CPU, device memory on CUDA).
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "negsamp.h"
#ifdef NS_HAVE_CUDA
#include <cuda_runtime.h>
#endif

namespace nstest {

// A context of the given backend, or a skip with the reason when the backend is not usable here.
struct Ctx {
    ns_context *ctx = nullptr;
    ns_status status = NS_OK;
    std::string why;
    explicit Ctx(ns_backend backend, int threads = 0) {
        ns_context_options o = NS_CONTEXT_OPTIONS_INIT;
        o.backend = backend;
        o.threads = threads;
        status = ns_context_create(&ctx, &o);
        if (status != NS_OK) why = ns_last_error(nullptr);
    }
    ~Ctx() { ns_context_destroy(ctx); }
    operator ns_context *() const { return ctx; }
    bool cuda() const { return ctx && ns_context_backend(ctx) == NS_BACKEND_CUDA; }
};

// Skips the test when the backend cannot be created (CUDA without a GPU, or a CPU-only build).
#define NS_REQUIRE_BACKEND(c)                                                                 \
    do {                                                                                      \
        if ((c).status != NS_OK)                                                              \
            GTEST_SKIP() << "backend not available here: " << (c).why;                       \
    } while (0)

inline const char *backend_name(ns_backend b) {
    return b == NS_BACKEND_CUDA ? "CUDA" : b == NS_BACKEND_CPU ? "CPU" : "AUTO";
}

// Parameterise suites over the backends: INSTANTIATE_TEST_SUITE_P(B, Suite, NS_BACKENDS, ...).
#define NS_BACKENDS ::testing::Values(NS_BACKEND_CPU, NS_BACKEND_CUDA)
struct BackendName {
    std::string operator()(const ::testing::TestParamInfo<ns_backend> &i) const {
        return backend_name(i.param);
    }
};

inline std::vector<float> random_floats(size_t n, uint64_t seed, float lo = -1.f, float hi = 1.f) {
    std::mt19937_64 g(seed);
    std::uniform_real_distribution<float> u(lo, hi);
    std::vector<float> v(n);
    for (auto &x : v) x = u(g);
    return v;
}

inline ns_matrix f32_matrix(const float *p, int64_t rows, int64_t cols, int64_t ld = 0) {
    ns_matrix m;
    m.data = p;
    m.dtype = NS_F32;
    m.rows = rows;
    m.cols = cols;
    m.ld = ld;
    return m;
}

// A buffer mirrored on the context's backend. On CPU it is the host vector itself.
template <class T> struct Buf {
    std::vector<T> host;
    T *dev = nullptr;
    bool on_device = false;
    Buf() = default;
    Buf(const Ctx &c, std::vector<T> v) : host(std::move(v)) { place(c); }
    Buf(const Ctx &c, size_t n, T fill) : host(n, fill) { place(c); }
    Buf(const Buf &) = delete;
    Buf &operator=(const Buf &) = delete;
    void place(const Ctx &c) {
#ifdef NS_HAVE_CUDA
        if (c.cuda()) {
            on_device = true;
            cudaMalloc((void **)&dev, host.size() * sizeof(T) + 16);
            cudaMemcpy(dev, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice);
            return;
        }
#endif
        (void)c;
        dev = host.data();
    }
    T *ptr() { return dev; }
    // Brings device contents back to host (no-op on CPU) and returns the host vector.
    std::vector<T> &fetch() {
#ifdef NS_HAVE_CUDA
        if (on_device) cudaMemcpy(host.data(), dev, host.size() * sizeof(T), cudaMemcpyDeviceToHost);
#endif
        return host;
    }
    ~Buf() {
#ifdef NS_HAVE_CUDA
        if (on_device) cudaFree(dev);
#endif
    }
};

// Relative-plus-absolute closeness, in the llm.c validate_result style.
inline bool close(double got, double want, double atol, double rtol) {
    return std::fabs(got - want) <= atol + rtol * std::fabs(want);
}

}  // namespace nstest
