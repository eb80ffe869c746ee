// negsamp host execution layer: what runtime.cpp shares with cublas.cpp (not for kernels).
#pragma once
#include <cuda_runtime.h>

#include <functional>
#include <mutex>
#include <string>

namespace cuda_host {

struct Config {
    bool reverse = false;        // NS_CUDA_HOST_ORDER=reverse: fibers of a block in reverse order
    bool shuffle = false;        // NS_CUDA_HOST_ORDER=shuffle[:seed]: blocks of a grid and fibers
    unsigned long long seed = 0; //   of a block in a seeded random order (new order per launch)
    int devices = 1;             // NS_CUDA_HOST_DEVICES=N emulated devices
    bool abort_on_fault = false; // NS_CUDA_HOST_ABORT=1: abort() at the first fault (for a debugger)
    bool quiet = false;          // NS_CUDA_HOST_QUIET=1: no diagnostics for API errors (faults still print)
    bool struct_scan = true;     // NS_CUDA_HOST_STRUCT_SCAN=0: no host-pointer scan of struct arguments
    size_t memory = 0;           // NS_CUDA_HOST_MEMORY_GIB per device (default 16)
    long fail_at = 0;            // NS_CUDA_HOST_FAIL_AT=N: the N-th resource creation fails (0: none)
};
const Config &config();
Config &config_mut();  // for the layer's own tests (e.g. two emulated devices)

struct Alloc {
    char *base;
    size_t size;
    char *raw;
    size_t raw_size;
    bool pinned;
    int device;
};
// The allocation holding p (one_past_end: p may equal its end), or NULL.
const Alloc *find_alloc(const void *p, bool one_past_end);

struct Stream;
struct Event;
struct Op {
    std::string what;
    std::function<void()> run;
    Stream *wait_stream = nullptr;  // a wait: drain wait_stream up to wait_seq first
    unsigned long long wait_seq = 0;
    Event *event = nullptr;         // an event record
    unsigned long long seq = 0;
};
cudaError_t enqueue(cudaStream_t s, Op op, unsigned long long *seq);
cudaError_t stream_device(cudaStream_t s, int *dev);
int current_device();

std::recursive_mutex &mutex();
void report(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
cudaError_t api_error(cudaError_t e, const char *fmt, ...);
cudaError_t fault(cudaError_t e, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
cudaError_t sticky();
// Fault injection (NS_CUDA_HOST_FAIL_AT, cuda_host_fail_at): counts a resource creation —
// cudaMalloc, cudaHostAlloc, cudaStreamCreate*, cudaEventCreate*, cublasCreate — and returns
// true for the one that is to fail.
bool inject_failure(const char *what);

}  // namespace cuda_host
