// negsamp host execution layer: the CUDA runtime API and the device built-ins, implemented on
// the CPU so that the unchanged kernels/*.cu compile with g++ and run in CI without a GPU.
// Test support only (tests/cuda_host/README.md): never part of an installed library.
//
// A .cu file is first rewritten by rewrite.py (kernel<<<g, b, shm, stream>>>(args) → a call of
// cuda_host::launch, __shared__ declarations → poisoned per-block statics, extern __shared__ →
// the launch's dynamic shared memory), then compiled as C++17 against this header.
#pragma once

// Defined by the host execution layer only: its test hooks below exist.
#define NS_CUDA_HOST_LAYER 1
#ifdef __cplusplus
extern "C" {
#endif
// Host synchronisations so far in this process: device/stream/event synchronisation, cudaMemcpy,
// cudaFree, and any copy from or to pageable host memory (a real GPU runs those synchronously
// with the host). Tests take the difference around a call.
unsigned long long cuda_host_sync_count(void);
// Floating-point operations (2·m·n·k per matrix) of the cuBLAS GEMMs queued so far whose A and B
// are of type ab_type (a cudaDataType: CUDA_R_32F, CUDA_R_16BF, ...). Tests take the difference
// around a call to see which GEMMs it ran (a half-precision step must run no f32 GEMM).
unsigned long long cuda_host_gemm_flops(int ab_type);
// The order the layer runs blocks and threads in from now on (as NS_CUDA_HOST_ORDER): 0 forward,
// 1 reverse (threads of a block), 2 shuffled (blocks of a grid and threads of a block in a random
// order drawn from seed and a launch counter). Tests that compare results across orders.
void cuda_host_set_order(int order, unsigned long long seed);
// Fault injection: the n-th resource creation from now (cudaMalloc, cudaHostAlloc,
// cudaStreamCreate*, cudaEventCreate*, cublasCreate) fails, n <= 0: none (also
// NS_CUDA_HOST_FAIL_AT=n at start). Returns the creations counted since the previous call.
long cuda_host_fail_at(long n);
// Live device/pinned allocations, streams, events and cuBLAS handles (leak checks).
long cuda_host_live_resources(void);
// The peak of live device memory (cudaMalloc bytes) on the current device since the last call
// with reset = 1 (which restarts it from the bytes live now).
unsigned long long cuda_host_peak_bytes(int reset);
#ifdef __cplusplus
}
#endif

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <climits>
#include <cmath>
#include <cstdio>
#include <functional>
#include <memory>
#include <tuple>
#include <type_traits>
#include <utility>

// ------------------------------------------------------------------ keywords
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
#define __restrict__ __restrict
#define __align__(n) alignas(n)
#define __constant__
#define __managed__
#ifndef CUDART_VERSION
#define CUDART_VERSION 13000
#endif
#define NS_CUDA_HOST_LAYER 1

// ------------------------------------------------------------------ vector types
struct uint3 {
    unsigned int x, y, z;
};
struct dim3 {
    unsigned int x, y, z;
    constexpr dim3(unsigned int vx = 1, unsigned int vy = 1, unsigned int vz = 1) : x(vx), y(vy), z(vz) {}
    constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
    constexpr operator uint3() const { return uint3{x, y, z}; }
};
struct int2 { int x, y; };
struct float2 { float x, y; };
struct float4 { float x, y, z, w; };
struct int4 { int x, y, z, w; };

// ------------------------------------------------------------------ runtime types
enum cudaError {
    cudaSuccess = 0,
    cudaErrorInvalidValue = 1,
    cudaErrorMemoryAllocation = 2,
    cudaErrorInitializationError = 3,
    cudaErrorInvalidConfiguration = 9,
    cudaErrorInvalidPitchValue = 12,
    cudaErrorInvalidSymbol = 13,
    cudaErrorInvalidDevicePointer = 17,
    cudaErrorInvalidMemcpyDirection = 21,
    cudaErrorInvalidDeviceFunction = 98,
    cudaErrorNoDevice = 100,
    cudaErrorInvalidDevice = 101,
    cudaErrorInvalidResourceHandle = 400,
    cudaErrorIllegalState = 401,
    cudaErrorNotReady = 600,
    cudaErrorIllegalAddress = 700,
    cudaErrorLaunchOutOfResources = 701,
    cudaErrorLaunchFailure = 719,
    cudaErrorStreamCaptureUnsupported = 900,
    cudaErrorStreamCaptureInvalidated = 901,
    cudaErrorStreamCaptureMerge = 902,
    cudaErrorStreamCaptureUnmatched = 903,
    cudaErrorStreamCaptureUnjoined = 904,
    cudaErrorStreamCaptureIsolation = 905,
    cudaErrorStreamCaptureImplicit = 906,
    cudaErrorCapturedEvent = 907,
    cudaErrorStreamCaptureWrongThread = 908,
    cudaErrorUnknown = 999
};
typedef enum cudaError cudaError_t;

enum cudaMemcpyKind {
    cudaMemcpyHostToHost = 0,
    cudaMemcpyHostToDevice = 1,
    cudaMemcpyDeviceToHost = 2,
    cudaMemcpyDeviceToDevice = 3,
    cudaMemcpyDefault = 4
};
enum cudaMemoryType {
    cudaMemoryTypeUnregistered = 0,
    cudaMemoryTypeHost = 1,
    cudaMemoryTypeDevice = 2,
    cudaMemoryTypeManaged = 3
};
struct cudaPointerAttributes {
    enum cudaMemoryType type;
    int device;
    void *devicePointer;
    void *hostPointer;
};
enum cudaStreamCaptureStatus {
    cudaStreamCaptureStatusNone = 0,
    cudaStreamCaptureStatusActive = 1,
    cudaStreamCaptureStatusInvalidated = 2
};
enum cudaStreamCaptureMode {
    cudaStreamCaptureModeGlobal = 0,
    cudaStreamCaptureModeThreadLocal = 1,
    cudaStreamCaptureModeRelaxed = 2
};
enum cudaFuncAttribute {
    cudaFuncAttributeMaxDynamicSharedMemorySize = 8,
    cudaFuncAttributePreferredSharedMemoryCarveout = 9
};
enum cudaDeviceAttr {
    cudaDevAttrMaxThreadsPerBlock = 1,
    cudaDevAttrMaxBlockDimX = 2,
    cudaDevAttrMaxGridDimX = 5,
    cudaDevAttrMaxSharedMemoryPerBlock = 8,
    cudaDevAttrWarpSize = 10,
    cudaDevAttrMultiProcessorCount = 16,
    cudaDevAttrComputeCapabilityMajor = 75,
    cudaDevAttrComputeCapabilityMinor = 76,
    cudaDevAttrMaxSharedMemoryPerBlockOptin = 97
};
struct cudaDeviceProp {
    char name[256];
    size_t totalGlobalMem;
    size_t sharedMemPerBlock;
    size_t sharedMemPerBlockOptin;
    int regsPerBlock;
    int warpSize;
    int maxThreadsPerBlock;
    int maxThreadsDim[3];
    int maxGridSize[3];
    int major, minor;
    int multiProcessorCount;
    int l2CacheSize;
    int pciBusID, pciDeviceID, pciDomainID;
};

typedef struct CUstream_st *cudaStream_t;
typedef struct CUevent_st *cudaEvent_t;
typedef struct CUgraph_st *cudaGraph_t;
typedef struct CUgraphExec_st *cudaGraphExec_t;

#define cudaStreamLegacy ((cudaStream_t)0x1)
#define cudaStreamPerThread ((cudaStream_t)0x2)
#define cudaStreamDefault 0x00
#define cudaStreamNonBlocking 0x01
#define cudaEventDefault 0x00
#define cudaEventBlockingSync 0x01
#define cudaEventDisableTiming 0x02
#define cudaHostAllocDefault 0x00
#define cudaHostAllocPortable 0x01
#define cudaHostAllocMapped 0x02
#define cudaHostAllocWriteCombined 0x04

enum cudaDataType_t {
    CUDA_R_32F = 0,
    CUDA_R_64F = 1,
    CUDA_R_16F = 2,
    CUDA_R_8I = 3,
    CUDA_R_32I = 10,
    CUDA_R_16BF = 14
};
typedef enum cudaDataType_t cudaDataType;

// ------------------------------------------------------------------ runtime API
const char *cudaGetErrorString(cudaError_t e);
const char *cudaGetErrorName(cudaError_t e);
cudaError_t cudaGetLastError(void);
cudaError_t cudaPeekAtLastError(void);
cudaError_t cudaGetDeviceCount(int *n);
cudaError_t cudaSetDevice(int d);
cudaError_t cudaGetDevice(int *d);
cudaError_t cudaDeviceReset(void);
cudaError_t cudaDeviceSynchronize(void);
cudaError_t cudaGetDeviceProperties(cudaDeviceProp *p, int d);
cudaError_t cudaDeviceGetAttribute(int *v, cudaDeviceAttr a, int d);
cudaError_t cudaDriverGetVersion(int *v);
cudaError_t cudaRuntimeGetVersion(int *v);
cudaError_t cudaMemGetInfo(size_t *free_b, size_t *total_b);

cudaError_t cudaMalloc(void **p, size_t bytes);
cudaError_t cudaFree(void *p);
cudaError_t cudaMallocHost(void **p, size_t bytes);
cudaError_t cudaHostAlloc(void **p, size_t bytes, unsigned int flags);
cudaError_t cudaFreeHost(void *p);
cudaError_t cudaMallocAsync(void **p, size_t bytes, cudaStream_t s);
cudaError_t cudaFreeAsync(void *p, cudaStream_t s);
cudaError_t cudaPointerGetAttributes(cudaPointerAttributes *a, const void *p);
// The C++ overloads of cuda_runtime.h.
template <class T> inline cudaError_t cudaMalloc(T **p, size_t bytes) { return cudaMalloc((void **)p, bytes); }
template <class T> inline cudaError_t cudaMallocHost(T **p, size_t bytes) { return cudaMallocHost((void **)p, bytes); }
template <class T> inline cudaError_t cudaHostAlloc(T **p, size_t bytes, unsigned int flags) {
    return cudaHostAlloc((void **)p, bytes, flags);
}

cudaError_t cudaMemcpy(void *dst, const void *src, size_t bytes, cudaMemcpyKind kind);
cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t bytes, cudaMemcpyKind kind,
                            cudaStream_t s = 0);
cudaError_t cudaMemcpy2D(void *dst, size_t dpitch, const void *src, size_t spitch, size_t width,
                         size_t height, cudaMemcpyKind kind);
cudaError_t cudaMemcpy2DAsync(void *dst, size_t dpitch, const void *src, size_t spitch,
                              size_t width, size_t height, cudaMemcpyKind kind, cudaStream_t s = 0);
cudaError_t cudaMemcpyPeer(void *dst, int dd, const void *src, int sd, size_t bytes);
cudaError_t cudaMemcpyPeerAsync(void *dst, int dd, const void *src, int sd, size_t bytes,
                                cudaStream_t s = 0);
cudaError_t cudaMemset(void *p, int v, size_t bytes);
cudaError_t cudaMemsetAsync(void *p, int v, size_t bytes, cudaStream_t s = 0);

cudaError_t cudaStreamCreate(cudaStream_t *s);
cudaError_t cudaStreamCreateWithFlags(cudaStream_t *s, unsigned int flags);
cudaError_t cudaStreamCreateWithPriority(cudaStream_t *s, unsigned int flags, int priority);
cudaError_t cudaStreamDestroy(cudaStream_t s);
cudaError_t cudaStreamSynchronize(cudaStream_t s);
cudaError_t cudaStreamQuery(cudaStream_t s);
cudaError_t cudaStreamWaitEvent(cudaStream_t s, cudaEvent_t e, unsigned int flags = 0);
cudaError_t cudaStreamGetFlags(cudaStream_t s, unsigned int *flags);
cudaError_t cudaStreamGetDevice(cudaStream_t s, int *device);

cudaError_t cudaEventCreate(cudaEvent_t *e);
cudaError_t cudaEventCreateWithFlags(cudaEvent_t *e, unsigned int flags);
cudaError_t cudaEventDestroy(cudaEvent_t e);
cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t s = 0);
cudaError_t cudaEventSynchronize(cudaEvent_t e);
cudaError_t cudaEventQuery(cudaEvent_t e);
cudaError_t cudaEventElapsedTime(float *ms, cudaEvent_t a, cudaEvent_t b);

cudaError_t cudaStreamBeginCapture(cudaStream_t s, cudaStreamCaptureMode mode);
cudaError_t cudaStreamEndCapture(cudaStream_t s, cudaGraph_t *g);
cudaError_t cudaStreamIsCapturing(cudaStream_t s, cudaStreamCaptureStatus *st);
cudaError_t cudaGraphInstantiate(cudaGraphExec_t *x, cudaGraph_t g, unsigned long long flags = 0);
cudaError_t cudaGraphLaunch(cudaGraphExec_t x, cudaStream_t s);
cudaError_t cudaGraphExecDestroy(cudaGraphExec_t x);
cudaError_t cudaGraphDestroy(cudaGraph_t g);
cudaError_t cudaGraphGetNodes(cudaGraph_t g, void **nodes, size_t *n);

cudaError_t cudaFuncSetAttribute_impl(const void *fn, cudaFuncAttribute attr, int value);
template <class F> inline cudaError_t cudaFuncSetAttribute(F *fn, cudaFuncAttribute attr, int value) {
    return cudaFuncSetAttribute_impl((const void *)fn, attr, value);
}

// ------------------------------------------------------------------ the layer's own calls
namespace cuda_host {

// Per-fiber registers of the thread being run.
struct ThreadRegs {
    uint3 tid;
    unsigned lane, warp, linear;
};
extern ThreadRegs *t_regs;  // plain globals: kernels run one at a time, under the runtime's lock
extern uint3 t_block_idx;
extern dim3 t_block_dim, t_grid_dim;

// Device side: barriers and warp collectives switch fibers.
int block_barrier(int kind, int pred, const char *file, int line);
unsigned long long warp_collective(int op, unsigned mask, unsigned long long bits, int param,
                                   int width, const char *file, int line);
void *dynamic_shared();
void shared_static(void *p, size_t n, const char *name);
[[noreturn]] void device_trap(const char *file, int line);

enum { B_SYNC = 0, B_COUNT, B_AND, B_OR };
enum { W_SYNC = 0, W_IDX, W_UP, W_DOWN, W_XOR, W_BALLOT, W_ANY, W_ALL, W_ACTIVE };

// Host side: launching.
struct LaunchSpec {
    const void *fn;
    const char *name;
    int max_threads;  // __launch_bounds__, 0 = none
    dim3 grid, block;
    size_t shm;
    cudaStream_t stream;
    const char *file;
    int line;
};
cudaError_t launch_begin(const LaunchSpec &s);                   // limits, stream, device
cudaError_t check_pointer_arg(const LaunchSpec &s, int idx, const void *p);
cudaError_t check_struct_arg(const LaunchSpec &s, int idx, const void *p, size_t n);
cudaError_t launch_enqueue(const LaunchSpec &s, std::function<void()> body);

template <class P, class A> inline P convert_arg(A &&a) { return std::forward<A>(a); }

// Exact member visit of an aggregate struct argument (the idea of Boost.PFR: count the fields by
// aggregate initialisation from a type convertible to anything, then bind them).
namespace refl {
struct any {
    template <class T> constexpr operator T() const;  // unevaluated only
};
template <class T, class Seq, class = void> struct init_n : std::false_type {};
template <class T, size_t... I>
struct init_n<T, std::index_sequence<I...>, std::void_t<decltype(T{(void(I), any{})...})>> : std::true_type {};
template <class T, size_t N = 0> constexpr size_t count_fields() {
    if constexpr (N > 40) return N;
    else if constexpr (init_n<T, std::make_index_sequence<N + 1>>::value) return count_fields<T, N + 1>();
    else return N;
}
constexpr size_t kMaxFields = 40;
template <class T, class F> inline void for_each_field(const T &t, F &&f) {
    constexpr size_t n = count_fields<T>();
    static_assert(n <= kMaxFields, "struct kernel argument with too many fields for the layer's visitor");
    if constexpr (n == 0) {
        (void)t, (void)f;
    } else if constexpr (n == 1) {
        const auto &[m0] = t;
        f(m0);
    } else if constexpr (n == 2) {
        const auto &[m0, m1] = t;
        f(m0); f(m1);
    } else if constexpr (n == 3) {
        const auto &[m0, m1, m2] = t;
        f(m0); f(m1); f(m2);
    } else if constexpr (n == 4) {
        const auto &[m0, m1, m2, m3] = t;
        f(m0); f(m1); f(m2); f(m3);
    } else if constexpr (n == 5) {
        const auto &[m0, m1, m2, m3, m4] = t;
        f(m0); f(m1); f(m2); f(m3); f(m4);
    } else if constexpr (n == 6) {
        const auto &[m0, m1, m2, m3, m4, m5] = t;
        f(m0); f(m1); f(m2); f(m3); f(m4); f(m5);
    } else if constexpr (n == 7) {
        const auto &[m0, m1, m2, m3, m4, m5, m6] = t;
        f(m0); f(m1); f(m2); f(m3); f(m4); f(m5); f(m6);
    } else if constexpr (n == 8) {
        const auto &[m0, m1, m2, m3, m4, m5, m6, m7] = t;
        f(m0); f(m1); f(m2); f(m3); f(m4); f(m5); f(m6); f(m7);
    } else if constexpr (n == 9) {
        const auto &[m0, m1, m2, m3, m4, m5, m6, m7, m8] = t;
        f(m0); f(m1); f(m2); f(m3); f(m4); f(m5); f(m6); f(m7); f(m8);
    } else if constexpr (n == 10) {
        const auto &[m0, m1, m2, m3, m4, m5, m6, m7, m8, m9] = t;
        f(m0); f(m1); f(m2); f(m3); f(m4); f(m5); f(m6); f(m7); f(m8); f(m9);
    } else if constexpr (n == 11) {
        const auto &[m0, m1, m2, m3, m4, m5, m6, m7, m8, m9, m10] = t;
        f(m0); f(m1); f(m2); f(m3); f(m4); f(m5); f(m6); f(m7); f(m8); f(m9); f(m10);
    } else if constexpr (n == 12) {
        const auto &[m0, m1, m2, m3, m4, m5, m6, m7, m8, m9, m10, m11] = t;
        f(m0); f(m1); f(m2); f(m3); f(m4); f(m5); f(m6); f(m7); f(m8); f(m9); f(m10); f(m11);
    } else if constexpr (n == 13) {
        const auto &[m0, m1, m2, m3, m4, m5, m6, m7, m8, m9, m10, m11, m12] = t;
        f(m0); f(m1); f(m2); f(m3); f(m4); f(m5); f(m6); f(m7); f(m8); f(m9); f(m10); f(m11); f(m12);
    } else if constexpr (n == 14) {
        const auto &[m0, m1, m2, m3, m4, m5, m6, m7, m8, m9, m10, m11, m12, m13] = t;
        f(m0); f(m1); f(m2); f(m3); f(m4); f(m5); f(m6); f(m7); f(m8); f(m9); f(m10); f(m11); f(m12); f(m13);
    } else if constexpr (n == 15) {
        const auto &[m0, m1, m2, m3, m4, m5, m6, m7, m8, m9, m10, m11, m12, m13, m14] = t;
        f(m0); f(m1); f(m2); f(m3); f(m4); f(m5); f(m6); f(m7); f(m8); f(m9); f(m10); f(m11); f(m12); f(m13); f(m14);
    } else if constexpr (n == 16) {
        const auto &[m0, m1, m2, m3, m4, m5, m6, m7, m8, m9, m10, m11, m12, m13, m14, m15] = t;
        f(m0); f(m1); f(m2); f(m3); f(m4); f(m5); f(m6); f(m7); f(m8); f(m9); f(m10); f(m11); f(m12); f(m13); f(m14); f(m15);
    } else if constexpr (n == 17) {
        const auto &[m0, m1, m2, m3, m4, m5, m6, m7, m8, m9, m10, m11, m12, m13, m14, m15, m16] = t;
        f(m0); f(m1); f(m2); f(m3); f(m4); f(m5); f(m6); f(m7); f(m8); f(m9); f(m10); f(m11); f(m12); f(m13); f(m14); f(m15); f(m16);
    } else if constexpr (n == 18) {
        const auto &[m0, m1, m2, m3, m4, m5, m6, m7, m8, m9, m10, m11, m12, m13, m14, m15, m16, m17] = t;
        f(m0); f(m1); f(m2); f(m3); f(m4); f(m5); f(m6); f(m7); f(m8); f(m9); f(m10); f(m11); f(m12); f(m13); f(m14); f(m15); f(m16); f(m17);
    } else if constexpr (n == 19) {
        const auto &[m0, m1, m2, m3, m4, m5, m6, m7, m8, m9, m10, m11, m12, m13, m14, m15, m16, m17, m18] = t;
        f(m0); f(m1); f(m2); f(m3); f(m4); f(m5); f(m6); f(m7); f(m8); f(m9); f(m10); f(m11); f(m12); f(m13); f(m14); f(m15); f(m16); f(m17); f(m18);
    } else if constexpr (n == 20) {
        const auto &[m0, m1, m2, m3, m4, m5, m6, m7, m8, m9, m10, m11, m12, m13, m14, m15, m16, m17, m18, m19] = t;
        f(m0); f(m1); f(m2); f(m3); f(m4); f(m5); f(m6); f(m7); f(m8); f(m9); f(m10); f(m11); f(m12); f(m13); f(m14); f(m15); f(m16); f(m17); f(m18); f(m19);
    } else if constexpr (n == 21) {
        const auto &[m0, m1, m2, m3, m4, m5, m6, m7, m8, m9, m10, m11, m12, m13, m14, m15, m16, m17, m18, m19, m20] = t;
        f(m0); f(m1); f(m2); f(m3); f(m4); f(m5); f(m6); f(m7); f(m8); f(m9); f(m10); f(m11); f(m12); f(m13); f(m14); f(m15); f(m16); f(m17); f(m18); f(m19); f(m20);
    } else if constexpr (n == 22) {
        const auto &[m0, m1, m2, m3, m4, m5, m6, m7, m8, m9, m10, m11, m12, m13, m14, m15, m16, m17, m18, m19, m20, m21] = t;
        f(m0); f(m1); f(m2); f(m3); f(m4); f(m5); f(m6); f(m7); f(m8); f(m9); f(m10); f(m11); f(m12); f(m13); f(m14); f(m15); f(m16); f(m17); f(m18); f(m19); f(m20); f(m21);
    } else if constexpr (n == 23) {
        const auto &[m0, m1, m2, m3, m4, m5, m6, m7, m8, m9, m10, m11, m12, m13, m14, m15, m16, m17, m18, m19, m20, m21, m22] = t;
        f(m0); f(m1); f(m2); f(m3); f(m4); f(m5); f(m6); f(m7); f(m8); f(m9); f(m10); f(m11); f(m12); f(m13); f(m14); f(m15); f(m16); f(m17); f(m18); f(m19); f(m20); f(m21); f(m22);
    } else if constexpr (n == 24) {
        const auto &[m0, m1, m2, m3, m4, m5, m6, m7, m8, m9, m10, m11, m12, m13, m14, m15, m16, m17, m18, m19, m20, m21, m22, m23] = t;
        f(m0); f(m1); f(m2); f(m3); f(m4); f(m5); f(m6); f(m7); f(m8); f(m9); f(m10); f(m11); f(m12); f(m13); f(m14); f(m15); f(m16); f(m17); f(m18); f(m19); f(m20); f(m21); f(m22); f(m23);
    } else if constexpr (n == 25) {
        const auto &[m0, m1, m2, m3, m4, m5, m6, m7, m8, m9, m10, m11, m12, m13, m14, m15, m16, m17, m18, m19, m20, m21, m22, m23, m24] = t;
        f(m0); f(m1); f(m2); f(m3); f(m4); f(m5); f(m6); f(m7); f(m8); f(m9); f(m10); f(m11); f(m12); f(m13); f(m14); f(m15); f(m16); f(m17); f(m18); f(m19); f(m20); f(m21); f(m22); f(m23); f(m24);
    } else if constexpr (n == 26) {
        const auto &[m0, m1, m2, m3, m4, m5, m6, m7, m8, m9, m10, m11, m12, m13, m14, m15, m16, m17, m18, m19, m20, m21, m22, m23, m24, m25] = t;
        f(m0); f(m1); f(m2); f(m3); f(m4); f(m5); f(m6); f(m7); f(m8); f(m9); f(m10); f(m11); f(m12); f(m13); f(m14); f(m15); f(m16); f(m17); f(m18); f(m19); f(m20); f(m21); f(m22); f(m23); f(m24); f(m25);
    } else if constexpr (n == 27) {
        const auto &[m0, m1, m2, m3, m4, m5, m6, m7, m8, m9, m10, m11, m12, m13, m14, m15, m16, m17, m18, m19, m20, m21, m22, m23, m24, m25, m26] = t;
        f(m0); f(m1); f(m2); f(m3); f(m4); f(m5); f(m6); f(m7); f(m8); f(m9); f(m10); f(m11); f(m12); f(m13); f(m14); f(m15); f(m16); f(m17); f(m18); f(m19); f(m20); f(m21); f(m22); f(m23); f(m24); f(m25); f(m26);
    } else if constexpr (n == 28) {
        const auto &[m0, m1, m2, m3, m4, m5, m6, m7, m8, m9, m10, m11, m12, m13, m14, m15, m16, m17, m18, m19, m20, m21, m22, m23, m24, m25, m26, m27] = t;
        f(m0); f(m1); f(m2); f(m3); f(m4); f(m5); f(m6); f(m7); f(m8); f(m9); f(m10); f(m11); f(m12); f(m13); f(m14); f(m15); f(m16); f(m17); f(m18); f(m19); f(m20); f(m21); f(m22); f(m23); f(m24); f(m25); f(m26); f(m27);
    } else if constexpr (n == 29) {
        const auto &[m0, m1, m2, m3, m4, m5, m6, m7, m8, m9, m10, m11, m12, m13, m14, m15, m16, m17, m18, m19, m20, m21, m22, m23, m24, m25, m26, m27, m28] = t;
        f(m0); f(m1); f(m2); f(m3); f(m4); f(m5); f(m6); f(m7); f(m8); f(m9); f(m10); f(m11); f(m12); f(m13); f(m14); f(m15); f(m16); f(m17); f(m18); f(m19); f(m20); f(m21); f(m22); f(m23); f(m24); f(m25); f(m26); f(m27); f(m28);
    } else if constexpr (n == 30) {
        const auto &[m0, m1, m2, m3, m4, m5, m6, m7, m8, m9, m10, m11, m12, m13, m14, m15, m16, m17, m18, m19, m20, m21, m22, m23, m24, m25, m26, m27, m28, m29] = t;
        f(m0); f(m1); f(m2); f(m3); f(m4); f(m5); f(m6); f(m7); f(m8); f(m9); f(m10); f(m11); f(m12); f(m13); f(m14); f(m15); f(m16); f(m17); f(m18); f(m19); f(m20); f(m21); f(m22); f(m23); f(m24); f(m25); f(m26); f(m27); f(m28); f(m29);
    } else if constexpr (n == 31) {
        const auto &[m0, m1, m2, m3, m4, m5, m6, m7, m8, m9, m10, m11, m12, m13, m14, m15, m16, m17, m18, m19, m20, m21, m22, m23, m24, m25, m26, m27, m28, m29, m30] = t;
        f(m0); f(m1); f(m2); f(m3); f(m4); f(m5); f(m6); f(m7); f(m8); f(m9); f(m10); f(m11); f(m12); f(m13); f(m14); f(m15); f(m16); f(m17); f(m18); f(m19); f(m20); f(m21); f(m22); f(m23); f(m24); f(m25); f(m26); f(m27); f(m28); f(m29); f(m30);
    } else if constexpr (n == 32) {
        const auto &[m0, m1, m2, m3, m4, m5, m6, m7, m8, m9, m10, m11, m12, m13, m14, m15, m16, m17, m18, m19, m20, m21, m22, m23, m24, m25, m26, m27, m28, m29, m30, m31] = t;
        f(m0); f(m1); f(m2); f(m3); f(m4); f(m5); f(m6); f(m7); f(m8); f(m9); f(m10); f(m11); f(m12); f(m13); f(m14); f(m15); f(m16); f(m17); f(m18); f(m19); f(m20); f(m21); f(m22); f(m23); f(m24); f(m25); f(m26); f(m27); f(m28); f(m29); f(m30); f(m31);
    } else if constexpr (n == 33) {
        const auto &[m0, m1, m2, m3, m4, m5, m6, m7, m8, m9, m10, m11, m12, m13, m14, m15, m16, m17, m18, m19, m20, m21, m22, m23, m24, m25, m26, m27, m28, m29, m30, m31, m32] = t;
        f(m0); f(m1); f(m2); f(m3); f(m4); f(m5); f(m6); f(m7); f(m8); f(m9); f(m10); f(m11); f(m12); f(m13); f(m14); f(m15); f(m16); f(m17); f(m18); f(m19); f(m20); f(m21); f(m22); f(m23); f(m24); f(m25); f(m26); f(m27); f(m28); f(m29); f(m30); f(m31); f(m32);
    } else if constexpr (n == 34) {
        const auto &[m0, m1, m2, m3, m4, m5, m6, m7, m8, m9, m10, m11, m12, m13, m14, m15, m16, m17, m18, m19, m20, m21, m22, m23, m24, m25, m26, m27, m28, m29, m30, m31, m32, m33] = t;
        f(m0); f(m1); f(m2); f(m3); f(m4); f(m5); f(m6); f(m7); f(m8); f(m9); f(m10); f(m11); f(m12); f(m13); f(m14); f(m15); f(m16); f(m17); f(m18); f(m19); f(m20); f(m21); f(m22); f(m23); f(m24); f(m25); f(m26); f(m27); f(m28); f(m29); f(m30); f(m31); f(m32); f(m33);
    } else if constexpr (n == 35) {
        const auto &[m0, m1, m2, m3, m4, m5, m6, m7, m8, m9, m10, m11, m12, m13, m14, m15, m16, m17, m18, m19, m20, m21, m22, m23, m24, m25, m26, m27, m28, m29, m30, m31, m32, m33, m34] = t;
        f(m0); f(m1); f(m2); f(m3); f(m4); f(m5); f(m6); f(m7); f(m8); f(m9); f(m10); f(m11); f(m12); f(m13); f(m14); f(m15); f(m16); f(m17); f(m18); f(m19); f(m20); f(m21); f(m22); f(m23); f(m24); f(m25); f(m26); f(m27); f(m28); f(m29); f(m30); f(m31); f(m32); f(m33); f(m34);
    } else if constexpr (n == 36) {
        const auto &[m0, m1, m2, m3, m4, m5, m6, m7, m8, m9, m10, m11, m12, m13, m14, m15, m16, m17, m18, m19, m20, m21, m22, m23, m24, m25, m26, m27, m28, m29, m30, m31, m32, m33, m34, m35] = t;
        f(m0); f(m1); f(m2); f(m3); f(m4); f(m5); f(m6); f(m7); f(m8); f(m9); f(m10); f(m11); f(m12); f(m13); f(m14); f(m15); f(m16); f(m17); f(m18); f(m19); f(m20); f(m21); f(m22); f(m23); f(m24); f(m25); f(m26); f(m27); f(m28); f(m29); f(m30); f(m31); f(m32); f(m33); f(m34); f(m35);
    } else if constexpr (n == 37) {
        const auto &[m0, m1, m2, m3, m4, m5, m6, m7, m8, m9, m10, m11, m12, m13, m14, m15, m16, m17, m18, m19, m20, m21, m22, m23, m24, m25, m26, m27, m28, m29, m30, m31, m32, m33, m34, m35, m36] = t;
        f(m0); f(m1); f(m2); f(m3); f(m4); f(m5); f(m6); f(m7); f(m8); f(m9); f(m10); f(m11); f(m12); f(m13); f(m14); f(m15); f(m16); f(m17); f(m18); f(m19); f(m20); f(m21); f(m22); f(m23); f(m24); f(m25); f(m26); f(m27); f(m28); f(m29); f(m30); f(m31); f(m32); f(m33); f(m34); f(m35); f(m36);
    } else if constexpr (n == 38) {
        const auto &[m0, m1, m2, m3, m4, m5, m6, m7, m8, m9, m10, m11, m12, m13, m14, m15, m16, m17, m18, m19, m20, m21, m22, m23, m24, m25, m26, m27, m28, m29, m30, m31, m32, m33, m34, m35, m36, m37] = t;
        f(m0); f(m1); f(m2); f(m3); f(m4); f(m5); f(m6); f(m7); f(m8); f(m9); f(m10); f(m11); f(m12); f(m13); f(m14); f(m15); f(m16); f(m17); f(m18); f(m19); f(m20); f(m21); f(m22); f(m23); f(m24); f(m25); f(m26); f(m27); f(m28); f(m29); f(m30); f(m31); f(m32); f(m33); f(m34); f(m35); f(m36); f(m37);
    } else if constexpr (n == 39) {
        const auto &[m0, m1, m2, m3, m4, m5, m6, m7, m8, m9, m10, m11, m12, m13, m14, m15, m16, m17, m18, m19, m20, m21, m22, m23, m24, m25, m26, m27, m28, m29, m30, m31, m32, m33, m34, m35, m36, m37, m38] = t;
        f(m0); f(m1); f(m2); f(m3); f(m4); f(m5); f(m6); f(m7); f(m8); f(m9); f(m10); f(m11); f(m12); f(m13); f(m14); f(m15); f(m16); f(m17); f(m18); f(m19); f(m20); f(m21); f(m22); f(m23); f(m24); f(m25); f(m26); f(m27); f(m28); f(m29); f(m30); f(m31); f(m32); f(m33); f(m34); f(m35); f(m36); f(m37); f(m38);
    } else if constexpr (n == 40) {
        const auto &[m0, m1, m2, m3, m4, m5, m6, m7, m8, m9, m10, m11, m12, m13, m14, m15, m16, m17, m18, m19, m20, m21, m22, m23, m24, m25, m26, m27, m28, m29, m30, m31, m32, m33, m34, m35, m36, m37, m38, m39] = t;
        f(m0); f(m1); f(m2); f(m3); f(m4); f(m5); f(m6); f(m7); f(m8); f(m9); f(m10); f(m11); f(m12); f(m13); f(m14); f(m15); f(m16); f(m17); f(m18); f(m19); f(m20); f(m21); f(m22); f(m23); f(m24); f(m25); f(m26); f(m27); f(m28); f(m29); f(m30); f(m31); f(m32); f(m33); f(m34); f(m35); f(m36); f(m37); f(m38); f(m39);
    }
}
}  // namespace refl

// A kernel argument: pointers are checked against the registry; aggregate structs member by
// member (recursively); other classes by a scan of their words (check_struct_arg).
template <class T> inline cudaError_t check_value(const LaunchSpec &s, int idx, const T &v) {
    if constexpr (std::is_pointer_v<T>) {
        return check_pointer_arg(s, idx, (const void *)v);
    } else if constexpr (std::is_class_v<T> && std::is_aggregate_v<T> && !std::is_empty_v<T>) {
        cudaError_t e = cudaSuccess;
        refl::for_each_field(v, [&](const auto &m) {
            if (e == cudaSuccess) e = check_value(s, idx, m);
        });
        return e;
    } else if constexpr (std::is_class_v<T> && !std::is_empty_v<T>) {
        return check_struct_arg(s, idx, (const void *)&v, sizeof v);
    } else {
        return cudaSuccess;
    }
}

template <class Tuple, size_t... I>
inline cudaError_t check_args(const LaunchSpec &s, const Tuple &t, std::index_sequence<I...>) {
    cudaError_t e = cudaSuccess;
    auto one = [&](int idx, const auto &v) {
        if (e == cudaSuccess) e = check_value(s, idx, v);
    };
    (one((int)I, std::get<I>(t)), ...);
    return e;
}

template <class... P, class... A>
inline cudaError_t launch(void (*k)(P...), const char *name, int max_threads, dim3 grid, dim3 block,
                          size_t shm, cudaStream_t stream, const char *file, int line, A &&...a) {
    static_assert(sizeof...(P) == sizeof...(A), "kernel launched with the wrong number of arguments");
    LaunchSpec s{(const void *)k, name, max_threads, grid, block, shm, stream, file, line};
    cudaError_t e = launch_begin(s);
    if (e != cudaSuccess) return e;
    auto args = std::make_shared<std::tuple<std::decay_t<P>...>>(convert_arg<std::decay_t<P>>(std::forward<A>(a))...);
    e = check_args(s, *args, std::index_sequence_for<P...>{});
    if (e != cudaSuccess) return e;
    return launch_enqueue(s, [k, args]() { std::apply(k, *args); });
}

template <class T> inline unsigned long long to_bits(T v) {
    static_assert(sizeof(T) <= 8, "warp collectives move at most 8 bytes");
    unsigned long long b = 0;
    memcpy(&b, &v, sizeof v);
    return b;
}
template <class T> inline T from_bits(unsigned long long b) {
    T v;
    memcpy(&v, &b, sizeof v);
    return v;
}

}  // namespace cuda_host

// ------------------------------------------------------------------ device built-ins
#define threadIdx (static_cast<const uint3 &>(::cuda_host::t_regs->tid))
#define blockIdx (static_cast<const uint3 &>(::cuda_host::t_block_idx))
#define blockDim (static_cast<const dim3 &>(::cuda_host::t_block_dim))
#define gridDim (static_cast<const dim3 &>(::cuda_host::t_grid_dim))
static constexpr int warpSize = 32;

inline void __syncthreads(const char *f = __builtin_FILE(), int l = __builtin_LINE()) {
    ::cuda_host::block_barrier(::cuda_host::B_SYNC, 1, f, l);
}
inline int __syncthreads_count(int p, const char *f = __builtin_FILE(), int l = __builtin_LINE()) {
    return ::cuda_host::block_barrier(::cuda_host::B_COUNT, p != 0, f, l);
}
inline int __syncthreads_and(int p, const char *f = __builtin_FILE(), int l = __builtin_LINE()) {
    return ::cuda_host::block_barrier(::cuda_host::B_AND, p != 0, f, l);
}
inline int __syncthreads_or(int p, const char *f = __builtin_FILE(), int l = __builtin_LINE()) {
    return ::cuda_host::block_barrier(::cuda_host::B_OR, p != 0, f, l);
}
inline void __syncwarp(unsigned mask = 0xffffffffu, const char *f = __builtin_FILE(), int l = __builtin_LINE()) {
    ::cuda_host::warp_collective(::cuda_host::W_SYNC, mask, 0, 0, 32, f, l);
}
inline void __threadfence() {}
inline void __threadfence_block() {}
inline void __threadfence_system() {}
[[noreturn]] inline void __trap(const char *f = __builtin_FILE(), int l = __builtin_LINE()) {
    ::cuda_host::device_trap(f, l);
}

template <class T>
inline T __shfl_sync(unsigned mask, T v, int src, int width = 32, const char *f = __builtin_FILE(),
                     int l = __builtin_LINE()) {
    return ::cuda_host::from_bits<T>(
        ::cuda_host::warp_collective(::cuda_host::W_IDX, mask, ::cuda_host::to_bits(v), src, width, f, l));
}
template <class T>
inline T __shfl_up_sync(unsigned mask, T v, unsigned d, int width = 32, const char *f = __builtin_FILE(),
                        int l = __builtin_LINE()) {
    return ::cuda_host::from_bits<T>(
        ::cuda_host::warp_collective(::cuda_host::W_UP, mask, ::cuda_host::to_bits(v), (int)d, width, f, l));
}
template <class T>
inline T __shfl_down_sync(unsigned mask, T v, unsigned d, int width = 32, const char *f = __builtin_FILE(),
                          int l = __builtin_LINE()) {
    return ::cuda_host::from_bits<T>(
        ::cuda_host::warp_collective(::cuda_host::W_DOWN, mask, ::cuda_host::to_bits(v), (int)d, width, f, l));
}
template <class T>
inline T __shfl_xor_sync(unsigned mask, T v, int lm, int width = 32, const char *f = __builtin_FILE(),
                         int l = __builtin_LINE()) {
    return ::cuda_host::from_bits<T>(
        ::cuda_host::warp_collective(::cuda_host::W_XOR, mask, ::cuda_host::to_bits(v), lm, width, f, l));
}
inline unsigned __ballot_sync(unsigned mask, int p, const char *f = __builtin_FILE(), int l = __builtin_LINE()) {
    return (unsigned)::cuda_host::warp_collective(::cuda_host::W_BALLOT, mask, p != 0, 0, 32, f, l);
}
inline int __any_sync(unsigned mask, int p, const char *f = __builtin_FILE(), int l = __builtin_LINE()) {
    return (int)::cuda_host::warp_collective(::cuda_host::W_ANY, mask, p != 0, 0, 32, f, l);
}
inline int __all_sync(unsigned mask, int p, const char *f = __builtin_FILE(), int l = __builtin_LINE()) {
    return (int)::cuda_host::warp_collective(::cuda_host::W_ALL, mask, p != 0, 0, 32, f, l);
}
inline unsigned __activemask(const char *f = __builtin_FILE(), int l = __builtin_LINE()) {
    return (unsigned)::cuda_host::warp_collective(::cuda_host::W_ACTIVE, 0, 0, 0, 32, f, l);
}

// Atomics: a fiber runs until it reaches a barrier or a warp collective, so a read-modify-write
// is atomic with respect to every other thread of the grid (blocks run one after another).
#define NS_CH_ATOMIC2(name, T, expr) \
    inline T name(T *a, T v) {       \
        T old = *a;                  \
        *a = (expr);                 \
        return old;                  \
    }
NS_CH_ATOMIC2(atomicAdd, int, old + v)
NS_CH_ATOMIC2(atomicAdd, unsigned int, old + v)
NS_CH_ATOMIC2(atomicAdd, unsigned long long, old + v)
NS_CH_ATOMIC2(atomicAdd, float, old + v)
NS_CH_ATOMIC2(atomicAdd, double, old + v)
NS_CH_ATOMIC2(atomicSub, int, old - v)
NS_CH_ATOMIC2(atomicSub, unsigned int, old - v)
NS_CH_ATOMIC2(atomicMax, int, old > v ? old : v)
NS_CH_ATOMIC2(atomicMax, unsigned int, old > v ? old : v)
NS_CH_ATOMIC2(atomicMax, long long, old > v ? old : v)
NS_CH_ATOMIC2(atomicMax, unsigned long long, old > v ? old : v)
NS_CH_ATOMIC2(atomicMin, int, old < v ? old : v)
NS_CH_ATOMIC2(atomicMin, unsigned int, old < v ? old : v)
NS_CH_ATOMIC2(atomicMin, long long, old < v ? old : v)
NS_CH_ATOMIC2(atomicMin, unsigned long long, old < v ? old : v)
NS_CH_ATOMIC2(atomicExch, int, v)
NS_CH_ATOMIC2(atomicExch, unsigned int, v)
NS_CH_ATOMIC2(atomicExch, unsigned long long, v)
NS_CH_ATOMIC2(atomicExch, float, v)
NS_CH_ATOMIC2(atomicAnd, int, old & v)
NS_CH_ATOMIC2(atomicAnd, unsigned int, old & v)
NS_CH_ATOMIC2(atomicAnd, unsigned long long, old & v)
NS_CH_ATOMIC2(atomicOr, int, old | v)
NS_CH_ATOMIC2(atomicOr, unsigned int, old | v)
NS_CH_ATOMIC2(atomicOr, unsigned long long, old | v)
NS_CH_ATOMIC2(atomicXor, int, old ^ v)
NS_CH_ATOMIC2(atomicXor, unsigned int, old ^ v)
NS_CH_ATOMIC2(atomicInc, unsigned int, old >= v ? 0u : old + 1u)
#undef NS_CH_ATOMIC2
#define NS_CH_CAS(T)                         \
    inline T atomicCAS(T *a, T cmp, T v) {   \
        T old = *a;                          \
        if (old == cmp) *a = v;              \
        return old;                          \
    }
NS_CH_CAS(int)
NS_CH_CAS(unsigned int)
NS_CH_CAS(unsigned long long)
NS_CH_CAS(unsigned short)
#undef NS_CH_CAS

// Bit tricks.
inline int __ffs(int x) { return __builtin_ffs(x); }
inline int __ffsll(long long x) { return __builtin_ffsll(x); }
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
inline int __clz(int x) { return x ? __builtin_clz((unsigned)x) : 32; }
inline int __clzll(long long x) { return x ? __builtin_clzll((unsigned long long)x) : 64; }
inline unsigned __brev(unsigned x) {
    unsigned r = 0;
    for (int i = 0; i < 32; i++) r |= ((x >> i) & 1u) << (31 - i);
    return r;
}
inline unsigned __umulhi(unsigned a, unsigned b) { return (unsigned)(((unsigned long long)a * b) >> 32); }
inline unsigned long long __umul64hi(unsigned long long a, unsigned long long b) {
    return (unsigned long long)(((unsigned __int128)a * b) >> 64);
}

// Reinterpretations.
inline int __float_as_int(float x) { int r; memcpy(&r, &x, 4); return r; }
inline unsigned __float_as_uint(float x) { unsigned r; memcpy(&r, &x, 4); return r; }
inline float __int_as_float(int x) { float r; memcpy(&r, &x, 4); return r; }
inline float __uint_as_float(unsigned x) { float r; memcpy(&r, &x, 4); return r; }
inline long long __double_as_longlong(double x) { long long r; memcpy(&r, &x, 8); return r; }
inline double __longlong_as_double(long long x) { double r; memcpy(&r, &x, 8); return r; }

// Correctly rounded single operations (the generated code is compiled with -ffp-contract=off, so
// g++ never fuses them with a neighbour).
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __frcp_rn(float a) { return 1.0f / a; }
inline float __fsqrt_rn(float a) { return sqrtf(a); }
inline float __fmaf_rn(float a, float b, float c) { return fmaf(a, b, c); }
inline double __dmul_rn(double a, double b) { return a * b; }
inline double __dadd_rn(double a, double b) { return a + b; }
inline double __fma_rn(double a, double b, double c) { return fma(a, b, c); }
inline float __fdividef(float a, float b) { return a / b; }
inline float __expf(float x) { return expf(x); }
inline float __logf(float x) { return logf(x); }
inline float __powf(float a, float b) { return powf(a, b); }
inline float __saturatef(float x) { return x < 0.0f ? 0.0f : x > 1.0f ? 1.0f : x; }
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
inline double rsqrt(double x) { return 1.0 / sqrt(x); }
inline int __float2int_rn(float x) { return (int)nearbyintf(x); }
inline int __float2int_rz(float x) { return (int)x; }
inline float __int2float_rn(int x) { return (float)x; }

// The device-side min/max overloads CUDA declares globally.
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }
inline long min(long a, long b) { return a < b ? a : b; }
inline long max(long a, long b) { return a > b ? a : b; }
inline unsigned long long min(unsigned long long a, unsigned long long b) { return a < b ? a : b; }
inline unsigned long long max(unsigned long long a, unsigned long long b) { return a > b ? a : b; }
inline float min(float a, float b) { return fminf(a, b); }
inline float max(float a, float b) { return fmaxf(a, b); }
inline double min(double a, double b) { return fmin(a, b); }
inline double max(double a, double b) { return fmax(a, b); }
