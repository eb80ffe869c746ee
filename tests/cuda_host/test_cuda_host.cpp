// The host execution layer's own tests: planted faults it must catch (removed barriers, a missing
// shared-memory opt-in, a one-element overrun, wrong copy directions, host pointers handed to
// kernels, barriers not every thread reaches), and the CUDA semantics it must keep (lazy
// streams, events, the legacy stream, graph capture, devices, cuBLAS's argument rules).
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "cuda_host_internal.h"
#include "fault_kernels.h"

#if defined(__SANITIZE_ADDRESS__)
#define NS_TEST_ASAN 1
#endif

namespace {

// Every test starts and ends with a clean (un-faulted) context and the configured order.
class Layer : public ::testing::Test {
  protected:
    bool saved_reverse = false;
    void SetUp() override {
        cudaDeviceReset();
        saved_reverse = cuda_host::config().reverse;
    }
    void TearDown() override {
        cuda_host::config_mut().reverse = saved_reverse;
        cuda_host::config_mut().shuffle = false;
        cuda_host::config_mut().devices = 1;
        cudaSetDevice(0);
        cudaDeviceReset();
    }
    void set_order(bool reverse) { cuda_host::config_mut().reverse = reverse; }
};

template <class T> struct Dev {
    T *p = nullptr;
    size_t n;
    explicit Dev(size_t n_) : n(n_) { EXPECT_EQ(cudaMalloc(&p, n * sizeof(T)), cudaSuccess); }
    Dev(const std::vector<T> &v) : Dev(v.size()) {
        EXPECT_EQ(cudaMemcpy(p, v.data(), n * sizeof(T), cudaMemcpyHostToDevice), cudaSuccess);
    }
    ~Dev() { cudaFree(p); }
    std::vector<T> get() const {
        std::vector<T> v(n);
        EXPECT_EQ(cudaMemcpy(v.data(), p, n * sizeof(T), cudaMemcpyDeviceToHost), cudaSuccess);
        return v;
    }
};

bool is_poison(float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    return u == 0x7ff7deadu;
}

std::vector<float> randoms(size_t n, uint64_t seed) {
    std::mt19937_64 g(seed);
    std::uniform_real_distribution<float> u(-1.f, 1.f);
    std::vector<float> v(n);
    for (auto &x : v) x = u(g);
    return v;
}

}  // namespace

// ---------------------------------------------------------------- removed barriers

TEST_F(Layer, RemovedBarrierIsCaughtInBothOrders) {
    const int n = 256;
    std::vector<float> in = randoms(n, 1), want(in.rbegin(), in.rend());
    Dev<float> din(in), dout(n);
    for (bool rev : {false, true}) {
        set_order(rev);
        ASSERT_EQ(faults::reverse(din.p, dout.p, n, 1), cudaSuccess);
        ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
        EXPECT_EQ(dout.get(), want) << "with the barrier, order " << rev;
        ASSERT_EQ(faults::reverse(din.p, dout.p, n, 0), cudaSuccess);
        ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
        std::vector<float> got = dout.get();
        int poisoned = (int)std::count_if(got.begin(), got.end(), is_poison);
        EXPECT_NE(got, want) << "the removed barrier went unnoticed, order " << rev;
        EXPECT_GT(poisoned, 0) << "reads of shared memory not yet written should see the poison";
    }
}

TEST_F(Layer, RemovedBarrierInTheMiningBitonicMergeIsCaught) {
    const int n = 1500, k = 300;
    std::vector<float> keys = randoms(n, 2);
    // The running list: a sorted top-k of other candidates (indices 1<<20 + r), half of them
    // better than most keys, so the merge moves a suffix.
    std::vector<float> lv(k);
    std::vector<int> li(k);
    std::vector<float> other = randoms(k, 3);
    std::sort(other.begin(), other.end(), std::greater<float>());
    for (int r = 0; r < k; r++) lv[r] = other[r] + 0.5f, li[r] = (1 << 20) + r;
    // Reference: merge of both, best first, ties to the lower index.
    std::vector<std::pair<float, int>> all;
    for (int i = 0; i < n; i++) all.push_back({keys[i], i});
    for (int r = 0; r < k; r++) all.push_back({lv[r], li[r]});
    std::sort(all.begin(), all.end(), [](auto a, auto b) { return a.first > b.first || (a.first == b.first && a.second < b.second); });
    std::vector<float> want_v;
    std::vector<int> want_i;
    for (int r = 0; r < k; r++) want_v.push_back(all[r].first), want_i.push_back(all[r].second);
    Dev<float> dk(keys);
    for (bool rev : {false, true})
        for (int drop : {0, 1, 2}) {
            set_order(rev);
            Dev<float> dv(lv);
            Dev<int> di(li);
            ASSERT_EQ(faults::bitonic_merge(dk.p, n, dv.p, di.p, k, drop), cudaSuccess);
            ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
            const bool same = dv.get() == want_v && di.get() == want_i;
            if (drop == 0) EXPECT_TRUE(same) << "correct kernel, order " << rev;
            else EXPECT_FALSE(same) << "barrier " << drop << " removed but the result is right, order " << rev;
        }
}

// ---------------------------------------------------------------- shared memory

TEST_F(Layer, DynamicSharedMemoryAbove48KiBNeedsTheOptIn) {
    Dev<float> out(1);
    EXPECT_EQ(faults::dynamic_smem(out.p, 48 * 1024, 0), cudaSuccess);
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    EXPECT_EQ(out.get()[0], 12288.0f);
    EXPECT_EQ(faults::dynamic_smem(out.p, 64 * 1024, 0), cudaErrorInvalidValue) << "64 KiB without cudaFuncSetAttribute";
    EXPECT_EQ(cudaGetLastError(), cudaSuccess) << "the launch error is not sticky: cudaGetLastError returned and cleared it";
    EXPECT_EQ(faults::dynamic_smem(out.p, 64 * 1024, 1), cudaSuccess);
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    EXPECT_EQ(out.get()[0], 16384.0f);
    EXPECT_EQ(faults::dynamic_smem(out.p, 228 * 1024, 1), cudaErrorInvalidValue) << "beyond 227 KiB (H100/H200)";
}

TEST_F(Layer, UninitialisedSharedMemoryReadsThePoison) {
    Dev<float> out(256);
    ASSERT_EQ(faults::uninit_shared(out.p), cudaSuccess);
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    for (float f : out.get()) ASSERT_TRUE(is_poison(f)) << f;
}

TEST_F(Layer, FreshDeviceMemoryIsPoisoned) {
    Dev<float> d(64);
    for (float f : d.get()) ASSERT_TRUE(std::isnan(f) && is_poison(f));
    Dev<int64_t> i(8);
    for (int64_t v : i.get()) EXPECT_EQ((uint64_t)v, 0x7ff7dead7ff7deadull) << "int64 reads a large positive value";
}

// ---------------------------------------------------------------- device memory bounds

TEST_F(Layer, OneElementOverrunOfADeviceBufferIsCaught) {
#ifdef NS_TEST_ASAN
    // Under AddressSanitizer the guard zones are poisoned: ASan stops the process at the write.
    ::testing::FLAGS_gtest_death_test_style = "threadsafe";
    EXPECT_DEATH(
        {
            float *d = nullptr;
            cudaMalloc(&d, 100 * sizeof(float));
            faults::overrun(d, 100);
            cudaDeviceSynchronize();
        },
        "AddressSanitizer");
#else
    Dev<float> d(100);
    ASSERT_EQ(faults::overrun(d.p, 100), cudaSuccess);
    EXPECT_EQ(cudaDeviceSynchronize(), cudaErrorIllegalAddress);
    EXPECT_EQ(cudaGetLastError(), cudaErrorIllegalAddress) << "sticky, as on a GPU";
    EXPECT_EQ(cudaMemset(d.p, 0, 4), cudaErrorIllegalAddress);
    cudaDeviceReset();
    // The same kernel with room for n + 1 elements is fine.
    Dev<float> ok(101);
    ASSERT_EQ(faults::overrun(ok.p, 100), cudaSuccess);
    EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
#endif
}

TEST_F(Layer, CopiesPastAnAllocationAreRejected) {
    Dev<float> d(10);
    std::vector<float> h(11, 1.f);
    EXPECT_EQ(cudaMemcpy(d.p, h.data(), 11 * sizeof(float), cudaMemcpyHostToDevice), cudaErrorInvalidValue);
    EXPECT_EQ(cudaMemcpy(h.data(), d.p + 1, 10 * sizeof(float), cudaMemcpyDeviceToHost), cudaErrorInvalidValue);
    EXPECT_EQ(cudaMemsetAsync(d.p + 5, 0, 6 * sizeof(float), 0), cudaErrorInvalidValue);
    cudaGetLastError();
    EXPECT_EQ(cudaMemcpy(d.p, h.data(), 10 * sizeof(float), cudaMemcpyHostToDevice), cudaSuccess);
}

// ---------------------------------------------------------------- pointer kinds

TEST_F(Layer, WrongCopyDirectionIsAnError) {
    Dev<float> a(16), b(16);
    std::vector<float> h(16, 2.f), g(16);
    EXPECT_EQ(cudaMemcpy(a.p, b.p, 64, cudaMemcpyHostToDevice), cudaErrorInvalidValue) << "device source";
    EXPECT_EQ(cudaMemcpy(h.data(), g.data(), 64, cudaMemcpyHostToDevice), cudaErrorInvalidValue) << "host destination";
    EXPECT_EQ(cudaMemcpy(a.p, h.data(), 64, cudaMemcpyDeviceToHost), cudaErrorInvalidValue) << "reversed";
    EXPECT_EQ(cudaMemcpy(a.p, h.data(), 64, cudaMemcpyDeviceToDevice), cudaErrorInvalidValue) << "host source";
    EXPECT_EQ(cudaMemcpyAsync(g.data(), h.data(), 64, cudaMemcpyDeviceToHost, 0), cudaErrorInvalidValue);
    cudaGetLastError();
    EXPECT_EQ(cudaMemcpy(a.p, h.data(), 64, cudaMemcpyHostToDevice), cudaSuccess);
    EXPECT_EQ(cudaMemcpy(b.p, a.p, 64, cudaMemcpyDefault), cudaSuccess) << "cudaMemcpyDefault infers the kinds";
    EXPECT_EQ(b.get(), h);
}

TEST_F(Layer, HostPointerHandedToAKernelIsAnError) {
    std::vector<float> h = randoms(64, 4);
    Dev<float> d(h), out(64);
    EXPECT_EQ(faults::reverse(h.data(), out.p, 64, 1), cudaErrorInvalidValue) << "pageable host pointer argument";
    faults::Holder bad{h.data(), 64}, good{d.p, 64};
    EXPECT_EQ(faults::struct_arg(bad, out.p), cudaErrorInvalidValue) << "host pointer inside a struct argument";
    cudaGetLastError();
    EXPECT_EQ(faults::struct_arg(good, out.p), cudaSuccess);
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    std::vector<float> got = out.get();
    for (int i = 0; i < 64; i++) EXPECT_EQ(got[i], 2 * h[i]);
    float *freed = nullptr;
    ASSERT_EQ(cudaMalloc(&freed, 256), cudaSuccess);
    ASSERT_EQ(cudaFree(freed), cudaSuccess);
    EXPECT_EQ(faults::fill(freed, 4, 1.f), cudaErrorInvalidValue) << "freed device memory";
}

TEST_F(Layer, PointerAttributesComeFromTheRegistry) {
    Dev<float> d(8);
    void *pinned = nullptr;
    ASSERT_EQ(cudaMallocHost(&pinned, 64), cudaSuccess);
    std::vector<float> h(8);
    cudaPointerAttributes a;
    ASSERT_EQ(cudaPointerGetAttributes(&a, d.p + 3), cudaSuccess);
    EXPECT_EQ(a.type, cudaMemoryTypeDevice);
    EXPECT_EQ(a.device, 0);
    ASSERT_EQ(cudaPointerGetAttributes(&a, pinned), cudaSuccess);
    EXPECT_EQ(a.type, cudaMemoryTypeHost);
    ASSERT_EQ(cudaPointerGetAttributes(&a, h.data()), cudaSuccess);
    EXPECT_EQ(a.type, cudaMemoryTypeUnregistered);
    EXPECT_EQ(cudaFreeHost(pinned), cudaSuccess);
    EXPECT_EQ(cudaFree(h.data()), cudaErrorInvalidValue);
    cudaGetLastError();
}

// ---------------------------------------------------------------- barriers and warps

TEST_F(Layer, BarrierNotReachedByEveryThreadIsReported) {
    Dev<int> out(1024);
    ASSERT_EQ(faults::early_exit(out.p, 128, 0), cudaSuccess);
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    EXPECT_EQ(out.get()[5], 7);
    ASSERT_EQ(faults::early_exit(out.p, 128, 10), cudaSuccess);
    EXPECT_EQ(cudaDeviceSynchronize(), cudaErrorLaunchFailure) << "10 threads exited before __syncthreads";
    cudaDeviceReset();
    ASSERT_EQ(faults::split_barrier(out.p), cudaSuccess);
    EXPECT_EQ(cudaDeviceSynchronize(), cudaErrorLaunchFailure) << "threads at two different __syncthreads";
    cudaDeviceReset();
    ASSERT_EQ(faults::shfl_missing_lane(out.p), cudaSuccess);
    EXPECT_EQ(cudaDeviceSynchronize(), cudaErrorLaunchFailure) << "a lane named in the mask exited";
}

TEST_F(Layer, WarpCollectivesAndBlockReductions) {
    std::vector<int> in(128);
    for (int i = 0; i < 128; i++) in[i] = (i * 37 + 11) % 101;
    Dev<int> din(in), out(128 * 8);
    for (bool rev : {false, true}) {
        set_order(rev);
        ASSERT_EQ(faults::warp_ops(din.p, out.p), cudaSuccess);
        ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
        std::vector<int> o = out.get();
        int odd = 0;
        for (int v : in) odd += v & 1;
        for (int t = 0; t < 128; t++) {
            const int w = t / 32, lane = t % 32;
            int sum = 0;
            unsigned ballot = 0;
            for (int l = 0; l < 32; l++) sum += in[w * 32 + l], ballot |= (unsigned)(in[w * 32 + l] & 1) << l;
            const int *r = &o[t * 8];
            EXPECT_EQ(r[0], sum);
            EXPECT_EQ(r[1], lane == 0 ? sum : -1);
            EXPECT_EQ(r[2], lane == 0 ? in[t] : in[t - 1]);
            EXPECT_EQ(r[3], in[w * 32 + 31 - lane]);
            EXPECT_EQ((unsigned)r[4], ballot);
            EXPECT_EQ(r[5], 1);
            EXPECT_EQ(r[6], odd);
            int has5 = std::count(in.begin(), in.end(), 5) > 0;
            EXPECT_EQ(r[7], has5 * 2 + 1);
        }
    }
}

TEST_F(Layer, LaunchLimitsReturnTheRealErrors) {
    EXPECT_EQ(faults::empty(dim3(1), dim3(1024)), cudaSuccess);
    EXPECT_EQ(faults::empty(dim3(1), dim3(1025)), cudaErrorInvalidConfiguration);
    EXPECT_EQ(faults::empty(dim3(1), dim3(32, 32, 2)), cudaErrorInvalidConfiguration);
    EXPECT_EQ(faults::empty(dim3(1), dim3(1, 1, 65)), cudaErrorInvalidConfiguration);
    EXPECT_EQ(faults::empty(dim3(1, 65536), dim3(1)), cudaErrorInvalidConfiguration);
    EXPECT_EQ(faults::empty(dim3(0), dim3(1)), cudaErrorInvalidConfiguration);
    EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess) << "launch errors are not sticky";
}

// ---------------------------------------------------------------- streams, events, graphs

TEST_F(Layer, WorkRunsWhenTheHostSynchronises) {
    cudaStream_t s;
    ASSERT_EQ(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), cudaSuccess);
    Dev<float> d(256);
    float *pinned = nullptr;
    ASSERT_EQ(cudaMallocHost(&pinned, 256 * sizeof(float)), cudaSuccess);
    for (int i = 0; i < 256; i++) pinned[i] = -1.f;
    ASSERT_EQ(faults::fill(d.p, 256, 3.f, s), cudaSuccess);
    ASSERT_EQ(cudaMemcpyAsync(pinned, d.p, 256 * sizeof(float), cudaMemcpyDeviceToHost, s), cudaSuccess);
    EXPECT_EQ(pinned[0], -1.f) << "a pinned copy is asynchronous: reading it before the sync is a bug the layer exposes";
    EXPECT_EQ(cudaStreamQuery(s), cudaErrorNotReady);
    ASSERT_EQ(cudaStreamSynchronize(s), cudaSuccess);
    EXPECT_EQ(pinned[255], 3.f);
    EXPECT_EQ(cudaStreamQuery(s), cudaSuccess);
    // Pageable: device-to-host completes before returning; host-to-device takes its source at the call.
    std::vector<float> h(256, 0.f);
    ASSERT_EQ(faults::fill(d.p, 256, 4.f, s), cudaSuccess);
    ASSERT_EQ(cudaMemcpyAsync(h.data(), d.p, 256 * sizeof(float), cudaMemcpyDeviceToHost, s), cudaSuccess);
    EXPECT_EQ(h[7], 4.f);
    std::vector<float> src(256, 5.f);
    ASSERT_EQ(cudaMemcpyAsync(d.p, src.data(), 256 * sizeof(float), cudaMemcpyHostToDevice, s), cudaSuccess);
    src.assign(256, 6.f);
    ASSERT_EQ(cudaStreamSynchronize(s), cudaSuccess);
    EXPECT_EQ(d.get()[9], 5.f);
    EXPECT_EQ(cudaFreeHost(pinned), cudaSuccess);
    EXPECT_EQ(cudaStreamDestroy(s), cudaSuccess);
}

TEST_F(Layer, LegacyStreamOrdersBlockingStreamsOnly) {
    cudaStream_t blocking, nonblocking;
    ASSERT_EQ(cudaStreamCreate(&blocking), cudaSuccess);
    ASSERT_EQ(cudaStreamCreateWithFlags(&nonblocking, cudaStreamNonBlocking), cudaSuccess);
    Dev<float> d(64);
    std::vector<float> h(64);
    ASSERT_EQ(faults::fill(d.p, 64, 1.f, blocking), cudaSuccess);
    ASSERT_EQ(cudaMemcpy(h.data(), d.p, 256, cudaMemcpyDeviceToHost), cudaSuccess);
    EXPECT_EQ(h[0], 1.f) << "the legacy stream waits for a blocking stream";
    ASSERT_EQ(faults::fill(d.p, 64, 2.f, nonblocking), cudaSuccess);
    ASSERT_EQ(cudaMemcpy(h.data(), d.p, 256, cudaMemcpyDeviceToHost), cudaSuccess);
    EXPECT_EQ(h[0], 1.f) << "but not for a non-blocking one";
    ASSERT_EQ(cudaStreamSynchronize(nonblocking), cudaSuccess);
    EXPECT_EQ(d.get()[0], 2.f);
    cudaStreamDestroy(blocking);
    cudaStreamDestroy(nonblocking);
}

TEST_F(Layer, EventsOrderStreamsAndTime) {
    cudaStream_t a, b;
    ASSERT_EQ(cudaStreamCreateWithFlags(&a, cudaStreamNonBlocking), cudaSuccess);
    ASSERT_EQ(cudaStreamCreateWithFlags(&b, cudaStreamNonBlocking), cudaSuccess);
    cudaEvent_t e0, e1, nt;
    ASSERT_EQ(cudaEventCreate(&e0), cudaSuccess);
    ASSERT_EQ(cudaEventCreate(&e1), cudaSuccess);
    ASSERT_EQ(cudaEventCreateWithFlags(&nt, cudaEventDisableTiming), cudaSuccess);
    Dev<float> x(1000), y(1000);
    ASSERT_EQ(cudaEventRecord(e0, a), cudaSuccess);
    ASSERT_EQ(faults::fill(x.p, 1000, 7.f, a), cudaSuccess);
    ASSERT_EQ(cudaEventRecord(e1, a), cudaSuccess);
    ASSERT_EQ(cudaEventRecord(nt, a), cudaSuccess);
    ASSERT_EQ(cudaStreamWaitEvent(b, e1, 0), cudaSuccess);
    ASSERT_EQ(cudaMemcpyAsync(y.p, x.p, 4000, cudaMemcpyDeviceToDevice, b), cudaSuccess);
    float ms = -1;
    EXPECT_EQ(cudaEventElapsedTime(&ms, e0, e1), cudaErrorNotReady);
    EXPECT_EQ(cudaEventQuery(e1), cudaErrorNotReady);
    ASSERT_EQ(cudaStreamSynchronize(b), cudaSuccess);
    EXPECT_EQ(cudaEventQuery(e1), cudaSuccess) << "b waited for e1, so a ran up to it";
    EXPECT_EQ(y.get()[999], 7.f);
    EXPECT_EQ(cudaEventElapsedTime(&ms, e0, e1), cudaSuccess);
    EXPECT_GE(ms, 0.f);
    ASSERT_EQ(cudaEventSynchronize(nt), cudaSuccess);
    EXPECT_EQ(cudaEventElapsedTime(&ms, e0, nt), cudaErrorInvalidResourceHandle) << "timing disabled";
    for (cudaEvent_t e : {e0, e1, nt}) cudaEventDestroy(e);
    cudaStreamDestroy(a);
    cudaStreamDestroy(b);
}

TEST_F(Layer, GraphCaptureRecordsAndReplays) {
    cudaStream_t s;
    ASSERT_EQ(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), cudaSuccess);
    Dev<float> x(100), y(100);
    ASSERT_EQ(cudaMemset(y.p, 0, 400), cudaSuccess);
    // A synchronisation during capture fails and invalidates the capture.
    ASSERT_EQ(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal), cudaSuccess);
    ASSERT_EQ(faults::fill(x.p, 100, 1.f, s), cudaSuccess);
    EXPECT_EQ(cudaStreamSynchronize(s), cudaErrorStreamCaptureUnsupported);
    cudaStreamCaptureStatus st;
    ASSERT_EQ(cudaStreamIsCapturing(s, &st), cudaSuccess);
    EXPECT_EQ(st, cudaStreamCaptureStatusInvalidated);
    cudaGraph_t g = nullptr;
    EXPECT_EQ(cudaStreamEndCapture(s, &g), cudaErrorStreamCaptureInvalidated);
    EXPECT_EQ(g, nullptr);
    cudaGetLastError();  // every failed call also sets the thread's last error, as on CUDA
    // cudaMalloc during a global-mode capture fails too.
    ASSERT_EQ(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal), cudaSuccess);
    void *p = nullptr;
    EXPECT_EQ(cudaMalloc(&p, 16), cudaErrorStreamCaptureUnsupported);
    EXPECT_EQ(cudaStreamEndCapture(s, &g), cudaErrorStreamCaptureInvalidated);
    EXPECT_EQ(cudaGetLastError(), cudaErrorStreamCaptureInvalidated);
    EXPECT_EQ(cudaGetLastError(), cudaSuccess);
    // A clean capture records instead of running; the graph replays it.
    ASSERT_EQ(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal), cudaSuccess);
    ASSERT_EQ(cudaStreamIsCapturing(s, &st), cudaSuccess);
    EXPECT_EQ(st, cudaStreamCaptureStatusActive);
    ASSERT_EQ(faults::fill(x.p, 100, 9.f, s), cudaSuccess);
    ASSERT_EQ(cudaMemcpyAsync(y.p, x.p, 400, cudaMemcpyDeviceToDevice, s), cudaSuccess);
    ASSERT_EQ(cudaStreamEndCapture(s, &g), cudaSuccess);
    ASSERT_NE(g, nullptr);
    ASSERT_EQ(cudaStreamSynchronize(s), cudaSuccess);
    EXPECT_EQ(y.get()[50], 0.f) << "captured work does not run";
    cudaGraphExec_t ge;
    ASSERT_EQ(cudaGraphInstantiate(&ge, g, 0), cudaSuccess);
    ASSERT_EQ(cudaGraphLaunch(ge, s), cudaSuccess);
    ASSERT_EQ(cudaStreamSynchronize(s), cudaSuccess);
    EXPECT_EQ(y.get()[50], 9.f);
    ASSERT_EQ(cudaMemset(y.p, 0, 400), cudaSuccess);
    ASSERT_EQ(cudaGraphLaunch(ge, s), cudaSuccess);
    ASSERT_EQ(cudaStreamSynchronize(s), cudaSuccess);
    EXPECT_EQ(y.get()[99], 9.f) << "replayed";
    cudaGraphExecDestroy(ge);
    cudaGraphDestroy(g);
    // The legacy stream cannot be captured.
    EXPECT_EQ(cudaStreamBeginCapture(0, cudaStreamCaptureModeGlobal), cudaErrorStreamCaptureUnsupported);
    cudaStreamDestroy(s);
}

TEST_F(Layer, TwoEmulatedDevices) {
    cuda_host::config_mut().devices = 2;
    int n = 0;
    ASSERT_EQ(cudaGetDeviceCount(&n), cudaSuccess);
    EXPECT_EQ(n, 2);
    EXPECT_EQ(cudaSetDevice(2), cudaErrorInvalidDevice);
    cudaGetLastError();
    ASSERT_EQ(cudaSetDevice(1), cudaSuccess);
    float *d1 = nullptr;
    cudaStream_t s1;
    ASSERT_EQ(cudaMalloc(&d1, 64), cudaSuccess);
    ASSERT_EQ(cudaStreamCreate(&s1), cudaSuccess);
    cudaPointerAttributes a;
    ASSERT_EQ(cudaPointerGetAttributes(&a, d1), cudaSuccess);
    EXPECT_EQ(a.device, 1);
    ASSERT_EQ(faults::fill(d1, 16, 1.f, s1), cudaSuccess);
    ASSERT_EQ(cudaSetDevice(0), cudaSuccess);
    EXPECT_EQ(faults::fill(d1, 16, 1.f, s1), cudaErrorInvalidResourceHandle) << "stream of device 1 while 0 is current";
    cudaGetLastError();
    EXPECT_EQ(faults::fill(d1, 16, 1.f, 0), cudaErrorInvalidValue) << "memory of device 1 on device 0";
    ASSERT_EQ(cudaSetDevice(1), cudaSuccess);
    EXPECT_EQ(cudaStreamSynchronize(s1), cudaSuccess);
    EXPECT_EQ(cudaFree(d1), cudaSuccess);
    cudaStreamDestroy(s1);
}

// ---------------------------------------------------------------- cuBLAS

TEST_F(Layer, CublasFollowsItsArgumentRules) {
    cublasHandle_t h;
    ASSERT_EQ(cublasCreate(&h), CUBLAS_STATUS_SUCCESS);
    cudaStream_t s;
    ASSERT_EQ(cudaStreamCreate(&s), cudaSuccess);
    ASSERT_EQ(cublasSetStream(h, s), CUBLAS_STATUS_SUCCESS);
    // Column-major A (2×3), B (3×2): C = A·B.
    std::vector<float> A = {1, 4, 2, 5, 3, 6}, B = {7, 9, 11, 8, 10, 12};
    Dev<float> dA(A), dB(B), dC(4);
    const float one = 1.f, zero = 0.f;
    EXPECT_EQ(cublasGemmEx_64(h, CUBLAS_OP_N, CUBLAS_OP_N, 2, 2, 3, &one, dA.p, CUDA_R_32F, 1, dB.p, CUDA_R_32F, 3, &zero,
                              dC.p, CUDA_R_32F, 2, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
              CUBLAS_STATUS_INVALID_VALUE)
        << "lda < m";
    EXPECT_EQ(cublasGemmEx_64(h, CUBLAS_OP_T, CUBLAS_OP_N, 2, 2, 3, &one, dA.p, CUDA_R_32F, 2, dB.p, CUDA_R_32F, 3, &zero,
                              dC.p, CUDA_R_32F, 2, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
              CUBLAS_STATUS_INVALID_VALUE)
        << "lda < k for op(A) = Aᵀ";
    EXPECT_EQ(cublasGemmEx_64(h, CUBLAS_OP_N, CUBLAS_OP_N, 2, 2, 3, &one, dA.p, CUDA_R_32F, 2, dB.p, CUDA_R_32F, 3, &zero,
                              dC.p, CUDA_R_32F, 1, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
              CUBLAS_STATUS_INVALID_VALUE)
        << "ldc < m";
    EXPECT_EQ(cublasGemmEx_64(h, CUBLAS_OP_N, CUBLAS_OP_N, 2, 2, 3, &one, dA.p, CUDA_R_16F, 2, dB.p, CUDA_R_16F, 3, &zero,
                              dC.p, CUDA_R_16BF, 2, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
              CUBLAS_STATUS_NOT_SUPPORTED)
        << "f16 inputs with a bf16 output";
    EXPECT_EQ(cublasGemmEx_64(h, CUBLAS_OP_N, CUBLAS_OP_N, 2, 2, 3, &one, dA.p, CUDA_R_32F, 2, dB.p, CUDA_R_32F, 3, &zero,
                              dC.p, CUDA_R_32F, 2, CUBLAS_COMPUTE_16F, CUBLAS_GEMM_DEFAULT),
              CUBLAS_STATUS_NOT_SUPPORTED);
    ASSERT_EQ(cublasGemmEx_64(h, CUBLAS_OP_N, CUBLAS_OP_N, 2, 2, 3, &one, dA.p, CUDA_R_32F, 2, dB.p, CUDA_R_32F, 3, &zero,
                              dC.p, CUDA_R_32F, 2, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
              CUBLAS_STATUS_SUCCESS);
    ASSERT_EQ(cudaStreamSynchronize(s), cudaSuccess);
    EXPECT_EQ(dC.get(), (std::vector<float>{58, 139, 64, 154}));
    // Cᵀ = Bᵀ·Aᵀ through the transpose flags.
    ASSERT_EQ(cublasGemmEx_64(h, CUBLAS_OP_T, CUBLAS_OP_T, 2, 2, 3, &one, dB.p, CUDA_R_32F, 3, dA.p, CUDA_R_32F, 2, &zero,
                              dC.p, CUDA_R_32F, 2, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
              CUBLAS_STATUS_SUCCESS);
    ASSERT_EQ(cudaStreamSynchronize(s), cudaSuccess);
    EXPECT_EQ(dC.get(), (std::vector<float>{58, 64, 139, 154}));
    // An operand whose extent (ld too large for the buffer) runs past its allocation.
    EXPECT_EQ(cublasGemmEx_64(h, CUBLAS_OP_N, CUBLAS_OP_N, 2, 2, 3, &one, dA.p, CUDA_R_32F, 3, dB.p, CUDA_R_32F, 3, &zero,
                              dC.p, CUDA_R_32F, 2, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
              CUBLAS_STATUS_EXECUTION_FAILED);
    EXPECT_EQ(cudaStreamSynchronize(s), cudaErrorIllegalAddress);
    cudaDeviceReset();
    std::vector<float> hostA(A);
    EXPECT_EQ(cublasGemmEx_64(h, CUBLAS_OP_N, CUBLAS_OP_N, 2, 2, 3, &one, hostA.data(), CUDA_R_32F, 2, dB.p, CUDA_R_32F, 3,
                              &zero, dC.p, CUDA_R_32F, 2, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
              CUBLAS_STATUS_EXECUTION_FAILED)
        << "a host operand";
    cudaDeviceReset();
    EXPECT_EQ(cublasDestroy(h), CUBLAS_STATUS_SUCCESS);
    cudaStreamDestroy(s);
}

TEST_F(Layer, HalfAndBfloat16ConversionsRoundToNearestEven) {
    EXPECT_EQ(__half2float(__float2half_rn(1.0f + 1.0f / 2048)), 1.0f) << "tie to even";
    EXPECT_EQ(__half2float(__float2half_rn(1.0f + 3.0f / 2048)), 1.0f + 2.0f / 1024);
    EXPECT_EQ(__half2float(__float2half_rn(65520.f)), INFINITY);
    EXPECT_EQ(__half2float(__float2half_rn(65519.f)), 65504.f);
    EXPECT_EQ(__half2float(__float2half_rn(5.9604645e-08f)), 5.9604645e-08f) << "smallest subnormal";
    EXPECT_EQ(__half2float(__float2half_rn(2.9802322e-08f)), 0.f) << "half of it ties to 0";
    EXPECT_TRUE(std::isnan(__half2float(__float2half_rn(NAN))));
    EXPECT_EQ(__bfloat162float(__float2bfloat16_rn(1.0f + 1.0f / 256)), 1.0f);
    EXPECT_EQ(__bfloat162float(__float2bfloat16_rn(1.0f + 3.0f / 256)), 1.0f + 1.0f / 64);
    EXPECT_TRUE(std::isnan(__bfloat162float(__float2bfloat16_rn(NAN))));
}

// NS_CUDA_HOST_ORDER=shuffle / cuda_host_set_order(2, seed): blocks of a grid and threads of a
// block run in a seeded random order — a permutation, a new one per launch, the same for the
// same seed and launch count; forward and reverse keep the block order.
TEST_F(Layer, ShuffledOrderPermutesBlocksAndThreads) {
    const int blocks = 16, threads = 32, n = blocks * threads;
    auto run = [&](int order, unsigned long long seed) {
        cuda_host_set_order(order, seed);
        Dev<int> counter(std::vector<int>(1, 0)), out(std::vector<int>(n, -1));
        EXPECT_EQ(faults::run_order(counter.p, out.p, blocks, threads), cudaSuccess);
        std::vector<int> h(n);
        EXPECT_EQ(cudaMemcpy(h.data(), out.p, n * sizeof(int), cudaMemcpyDeviceToHost), cudaSuccess);
        cuda_host_set_order(0, 0);
        return h;
    };
    std::vector<int> ident(n);
    for (int i = 0; i < n; i++) ident[i] = i;
    EXPECT_EQ(run(0, 0), ident);
    std::vector<int> rev = run(1, 0);  // threads reversed within a block, blocks in order
    EXPECT_EQ(rev[0], threads - 1);
    EXPECT_EQ(rev[threads], 2 * threads - 1);
    std::vector<int> a = run(2, 7), b = run(2, 7);
    for (const auto &v : {a, b}) {
        std::vector<int> sorted = v;
        std::sort(sorted.begin(), sorted.end());
        EXPECT_EQ(sorted, ident) << "not a permutation";
        EXPECT_NE(v, ident);
        bool blocks_moved = false;  // the first thread to run is not always of block 0
        for (int k = 0; k < n; k += threads) blocks_moved |= v[k] / threads != k / threads;
        EXPECT_TRUE(blocks_moved);
    }
    EXPECT_NE(a, b) << "a new order per launch";
}
