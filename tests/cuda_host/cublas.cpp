// negsamp host execution layer: cuBLAS as a plain column-major reference (double accumulation),
// with cuBLAS's argument rules, queued on the handle's stream like the real library.
#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <stdint.h>
#include <stdarg.h>
#include <stdlib.h>

#include <map>
#include <memory>
#include <vector>

#include "cuda_host_internal.h"

using namespace cuda_host;

struct cublasContext {
    int device;
    cudaStream_t stream;
    void *workspace;
    size_t workspace_size;
    cublasPointerMode_t pmode;
    bool live;
};
struct cublasLtContext {
    int device;
};

namespace {

std::vector<std::unique_ptr<cublasContext>> &handles() {
    static std::vector<std::unique_ptr<cublasContext>> v;
    return v;
}
bool live(cublasHandle_t h) {
    if (!h) return false;
    for (auto &p : handles())
        if (p.get() == h) return h->live;
    return false;
}

cublasStatus_t blas_error(cublasStatus_t s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
cublasStatus_t blas_error(cublasStatus_t s, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    char buf[1024];
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    report("%s: %s", cublasGetStatusName(s), buf);
    return s;
}

size_t dtype_size(cudaDataType t) {
    switch (t) {
    case CUDA_R_64F: return 8;
    case CUDA_R_32F: case CUDA_R_32I: return 4;
    case CUDA_R_16F: case CUDA_R_16BF: return 2;
    case CUDA_R_8I: return 1;
    }
    return 0;
}
const char *dtype_name(cudaDataType t) {
    switch (t) {
    case CUDA_R_64F: return "CUDA_R_64F";
    case CUDA_R_32F: return "CUDA_R_32F";
    case CUDA_R_32I: return "CUDA_R_32I";
    case CUDA_R_16F: return "CUDA_R_16F";
    case CUDA_R_16BF: return "CUDA_R_16BF";
    case CUDA_R_8I: return "CUDA_R_8I";
    }
    return "?";
}

double load(const void *p, cudaDataType t, size_t e) {
    switch (t) {
    case CUDA_R_64F: return ((const double *)p)[e];
    case CUDA_R_32F: return ((const float *)p)[e];
    case CUDA_R_16F: return __half2float(((const __half *)p)[e]);
    case CUDA_R_16BF: return __bfloat162float(((const __nv_bfloat16 *)p)[e]);
    default: return 0;
    }
}
void store(void *p, cudaDataType t, size_t e, double v) {
    switch (t) {
    case CUDA_R_64F: ((double *)p)[e] = v; break;
    case CUDA_R_32F: ((float *)p)[e] = (float)v; break;
    case CUDA_R_16F: ((__half *)p)[e] = __float2half_rn((float)v); break;
    case CUDA_R_16BF: ((__nv_bfloat16 *)p)[e] = __float2bfloat16_rn((float)v); break;
    default: break;
    }
}

// cublasGemmEx's table of supported (compute type, A/B type, C type); scale type follows.
bool supported(cublasComputeType_t c, cudaDataType ab, cudaDataType ct, bool *double_scale, bool *half_scale) {
    *double_scale = false;
    *half_scale = false;
    switch (c) {
    case CUBLAS_COMPUTE_16F:
    case CUBLAS_COMPUTE_16F_PEDANTIC:
        *half_scale = true;
        return ab == CUDA_R_16F && ct == CUDA_R_16F;
    case CUBLAS_COMPUTE_32F:
    case CUBLAS_COMPUTE_32F_PEDANTIC:
        return (ab == CUDA_R_16BF && (ct == CUDA_R_16BF || ct == CUDA_R_32F)) ||
               (ab == CUDA_R_16F && (ct == CUDA_R_16F || ct == CUDA_R_32F)) || (ab == CUDA_R_32F && ct == CUDA_R_32F);
    case CUBLAS_COMPUTE_32F_FAST_16F:
    case CUBLAS_COMPUTE_32F_FAST_16BF:
    case CUBLAS_COMPUTE_32F_FAST_TF32:
        return ab == CUDA_R_32F && ct == CUDA_R_32F;
    case CUBLAS_COMPUTE_64F:
    case CUBLAS_COMPUTE_64F_PEDANTIC:
        *double_scale = true;
        return ab == CUDA_R_64F && ct == CUDA_R_64F;
    default: return false;
    }
}

// The extent of a column-major rows×cols operand with leading dimension ld must lie inside one
// device allocation (the kernel would read past it otherwise).
cublasStatus_t check_operand(const char *fn, const char *name, const void *p, cudaDataType t, int64_t rows,
                             int64_t cols, int64_t ld, int64_t batch, long long stride) {
    if (rows == 0 || cols == 0 || batch == 0) return CUBLAS_STATUS_SUCCESS;
    const Alloc *a = find_alloc(p, false);
    if (!a || a->pinned) {
        fault(cudaErrorIllegalAddress, "%s: %s (%p) is not device memory", fn, name, p);
        return CUBLAS_STATUS_EXECUTION_FAILED;
    }
    if (a->device != current_device()) {
        fault(cudaErrorIllegalAddress, "%s: %s is memory of device %d, the call runs on device %d", fn, name, a->device,
              current_device());
        return CUBLAS_STATUS_EXECUTION_FAILED;
    }
    const long long last = (long long)(batch - 1) * stride + (long long)(cols - 1) * ld + (rows - 1);
    const long long first = stride < 0 ? (long long)(batch - 1) * stride : 0;
    const size_t es = dtype_size(t);
    const long long lo = (long long)((const char *)p - a->base) + first * (long long)es;
    const long long hi = (long long)((const char *)p - a->base) + (last + 1) * (long long)es;
    if (lo < 0 || hi > (long long)a->size) {
        fault(cudaErrorIllegalAddress,
              "%s: %s (%lld×%lld, ld %lld, batch %lld, stride %lld, %s) spans bytes [%lld, %lld) of an allocation of %zu bytes",
              fn, name, (long long)rows, (long long)cols, (long long)ld, (long long)batch, stride, dtype_name(t), lo, hi,
              a->size);
        return CUBLAS_STATUS_EXECUTION_FAILED;
    }
    return CUBLAS_STATUS_SUCCESS;
}

struct Gemm {
    cublasOperation_t ta, tb;
    int64_t m, n, k;
    double alpha, beta;
    const void *A, *B;
    void *C;
    cudaDataType at, bt, ct;
    int64_t lda, ldb, ldc;
    long long sa, sb, sc;
    int64_t batch;
};

// The operands' extents were checked against their allocations when the call was queued
// (check_operand), so the reference loop itself is left uninstrumented: under ASan it would
// dominate the sanitizer pass.
__attribute__((no_sanitize("address", "undefined"))) void run_gemm(const Gemm &g) {
    std::vector<double> a((size_t)(g.m * g.k)), col((size_t)g.m);
    for (int64_t b = 0; b < g.batch; b++) {
        const size_t oa = (size_t)(b * g.sa), ob = (size_t)(b * g.sb), oc = (size_t)(b * g.sc);
        // op(A) as column-major m×k
        if (g.alpha != 0.0)
            for (int64_t l = 0; l < g.k; l++)
                for (int64_t i = 0; i < g.m; i++)
                    a[(size_t)(l * g.m + i)] = g.ta == CUBLAS_OP_N ? load(g.A, g.at, oa + (size_t)(l * g.lda + i))
                                                                   : load(g.A, g.at, oa + (size_t)(i * g.lda + l));
        for (int64_t j = 0; j < g.n; j++) {
            std::fill(col.begin(), col.end(), 0.0);
            if (g.alpha != 0.0)
                for (int64_t l = 0; l < g.k; l++) {
                    const double bv = g.tb == CUBLAS_OP_N ? load(g.B, g.bt, ob + (size_t)(j * g.ldb + l))
                                                          : load(g.B, g.bt, ob + (size_t)(l * g.ldb + j));
                    const double *ac = &a[(size_t)(l * g.m)];
                    for (int64_t i = 0; i < g.m; i++) col[(size_t)i] += ac[i] * bv;
                }
            for (int64_t i = 0; i < g.m; i++) {
                const size_t e = oc + (size_t)(j * g.ldc + i);
                double v = g.alpha * col[(size_t)i];
                if (g.beta != 0.0) v += g.beta * load(g.C, g.ct, e);  // beta == 0: C is not read
                store(g.C, g.ct, e, v);
            }
        }
    }
}

// cuda_host_gemm_flops: per A/B type (guarded by mutex()).
std::map<int, unsigned long long> &gemm_flops() {
    static std::map<int, unsigned long long> f;
    return f;
}

cublasStatus_t gemm(const char *fn, cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int64_t m, int64_t n,
                    int64_t k, const void *alpha, const void *A, cudaDataType at, int64_t lda, long long sa,
                    const void *B, cudaDataType bt, int64_t ldb, long long sb, const void *beta, void *C,
                    cudaDataType ct, int64_t ldc, long long sc, int64_t batch, cublasComputeType_t compute) {
    std::lock_guard<std::recursive_mutex> lk(mutex());
    if (!live(h)) return blas_error(CUBLAS_STATUS_NOT_INITIALIZED, "%s: handle %p was not created", fn, (void *)h);
    if (ta > CUBLAS_OP_C || tb > CUBLAS_OP_C || (int)ta < 0 || (int)tb < 0)
        return blas_error(CUBLAS_STATUS_INVALID_VALUE, "%s: invalid transpose flag", fn);
    if (m < 0 || n < 0 || k < 0 || batch < 0)
        return blas_error(CUBLAS_STATUS_INVALID_VALUE, "%s: negative size m=%lld n=%lld k=%lld batch=%lld", fn,
                          (long long)m, (long long)n, (long long)k, (long long)batch);
    const int64_t arows = ta == CUBLAS_OP_N ? m : k, acols = ta == CUBLAS_OP_N ? k : m;
    const int64_t brows = tb == CUBLAS_OP_N ? k : n, bcols = tb == CUBLAS_OP_N ? n : k;
    if (lda < std::max<int64_t>(1, arows))
        return blas_error(CUBLAS_STATUS_INVALID_VALUE, "%s: lda (%lld) < max(1, %s) = %lld", fn, (long long)lda,
                          ta == CUBLAS_OP_N ? "m" : "k", (long long)std::max<int64_t>(1, arows));
    if (ldb < std::max<int64_t>(1, brows))
        return blas_error(CUBLAS_STATUS_INVALID_VALUE, "%s: ldb (%lld) < max(1, %s) = %lld", fn, (long long)ldb,
                          tb == CUBLAS_OP_N ? "k" : "n", (long long)std::max<int64_t>(1, brows));
    if (ldc < std::max<int64_t>(1, m))
        return blas_error(CUBLAS_STATUS_INVALID_VALUE, "%s: ldc (%lld) < max(1, m) = %lld", fn, (long long)ldc,
                          (long long)std::max<int64_t>(1, m));
    if (at != bt)
        return blas_error(CUBLAS_STATUS_NOT_SUPPORTED, "%s: Atype %s differs from Btype %s", fn, dtype_name(at),
                          dtype_name(bt));
    bool dscale, hscale;
    if (!supported(compute, at, ct, &dscale, &hscale))
        return blas_error(CUBLAS_STATUS_NOT_SUPPORTED, "%s: compute type %d with A/B %s and C %s is not a supported combination",
                          fn, (int)compute, dtype_name(at), dtype_name(ct));
    if (!alpha || !beta) return blas_error(CUBLAS_STATUS_INVALID_VALUE, "%s: NULL alpha or beta", fn);
    if (h->pmode != CUBLAS_POINTER_MODE_HOST)
        return blas_error(CUBLAS_STATUS_NOT_SUPPORTED, "%s: device pointer mode is not emulated", fn);
    if (find_alloc(alpha, false) || find_alloc(beta, false))
        return blas_error(CUBLAS_STATUS_INVALID_VALUE, "%s: alpha/beta are device pointers in host pointer mode", fn);
    Gemm g;
    g.ta = ta, g.tb = tb, g.m = m, g.n = n, g.k = k;
    g.alpha = dscale ? *(const double *)alpha : hscale ? (double)__half2float(*(const __half *)alpha) : *(const float *)alpha;
    g.beta = dscale ? *(const double *)beta : hscale ? (double)__half2float(*(const __half *)beta) : *(const float *)beta;
    g.A = A, g.B = B, g.C = C, g.at = at, g.bt = bt, g.ct = ct;
    g.lda = lda, g.ldb = ldb, g.ldc = ldc, g.sa = sa, g.sb = sb, g.sc = sc, g.batch = batch;
    if (m == 0 || n == 0 || batch == 0) return CUBLAS_STATUS_SUCCESS;
    if (sticky()) return CUBLAS_STATUS_EXECUTION_FAILED;
    int sdev = 0;
    if (stream_device(h->stream, &sdev) != cudaSuccess)
        return blas_error(CUBLAS_STATUS_INVALID_VALUE, "%s: the handle's stream is not a live stream", fn);
    if (h->device != current_device() || sdev != h->device)
        return blas_error(CUBLAS_STATUS_EXECUTION_FAILED, "%s: handle of device %d, stream of device %d, current device %d",
                          fn, h->device, sdev, current_device());
    const bool reads_ab = g.alpha != 0.0 && k > 0;
    cublasStatus_t s;
    if (reads_ab && (s = check_operand(fn, "A", A, at, arows, acols, lda, batch, sa))) return s;
    if (reads_ab && (s = check_operand(fn, "B", B, bt, brows, bcols, ldb, batch, sb))) return s;
    if ((s = check_operand(fn, "C", C, ct, m, n, ldc, batch, sc))) return s;
    if (reads_ab) gemm_flops()[at] += 2ull * (unsigned long long)(m * n) * (unsigned long long)(k * batch);
    Op op;
    op.what = fn;
    op.run = [g]() { run_gemm(g); };
    if (enqueue(h->stream, std::move(op), nullptr) != cudaSuccess)
        return blas_error(CUBLAS_STATUS_EXECUTION_FAILED, "%s: could not be queued on the handle's stream", fn);
    return CUBLAS_STATUS_SUCCESS;
}

}  // namespace

unsigned long long cuda_host_gemm_flops(int ab_type) {
    std::lock_guard<std::recursive_mutex> lk(mutex());
    return gemm_flops()[ab_type];
}

long cuda_host_live_blas_handles() {
    std::lock_guard<std::recursive_mutex> lk(mutex());
    long n = 0;
    for (auto &p : handles()) n += p->live;
    return n;
}

cublasStatus_t cublasCreate(cublasHandle_t *h) {
    std::lock_guard<std::recursive_mutex> lk(mutex());
    if (!h) return CUBLAS_STATUS_INVALID_VALUE;
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess || n == 0) {
        cudaGetLastError();
        return CUBLAS_STATUS_NOT_INITIALIZED;
    }
    if (cuda_host::inject_failure("cublasCreate")) return CUBLAS_STATUS_ALLOC_FAILED;
    handles().emplace_back(new cublasContext{current_device(), nullptr, nullptr, 0, CUBLAS_POINTER_MODE_HOST, true});
    *h = handles().back().get();
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasDestroy(cublasHandle_t h) {
    std::lock_guard<std::recursive_mutex> lk(mutex());
    if (!live(h)) return CUBLAS_STATUS_NOT_INITIALIZED;
    h->live = false;
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasSetStream(cublasHandle_t h, cudaStream_t s) {
    std::lock_guard<std::recursive_mutex> lk(mutex());
    if (!live(h)) return CUBLAS_STATUS_NOT_INITIALIZED;
    int dev;
    if (stream_device(s, &dev) != cudaSuccess)
        return blas_error(CUBLAS_STATUS_INVALID_VALUE, "cublasSetStream: %p is not a live stream", (void *)s);
    h->stream = s;
    h->workspace = nullptr;  // cublasSetStream resets the workspace to the default pool
    h->workspace_size = 0;
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasGetStream(cublasHandle_t h, cudaStream_t *s) {
    if (!live(h)) return CUBLAS_STATUS_NOT_INITIALIZED;
    *s = h->stream;
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasSetWorkspace(cublasHandle_t h, void *ws, size_t bytes) {
    std::lock_guard<std::recursive_mutex> lk(mutex());
    if (!live(h)) return CUBLAS_STATUS_NOT_INITIALIZED;
    if (bytes && !ws) return blas_error(CUBLAS_STATUS_INVALID_VALUE, "cublasSetWorkspace: NULL workspace of %zu bytes", bytes);
    if (ws && ((uintptr_t)ws % 256))
        return blas_error(CUBLAS_STATUS_INVALID_VALUE, "cublasSetWorkspace: workspace %p is not 256-byte aligned", ws);
    if (ws) {
        const Alloc *a = find_alloc(ws, false);
        if (!a || a->pinned || (size_t)((char *)ws - a->base) + bytes > a->size)
            return blas_error(CUBLAS_STATUS_INVALID_VALUE, "cublasSetWorkspace: %zu bytes at %p are not device memory", bytes, ws);
    }
    h->workspace = ws;
    h->workspace_size = bytes;
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasSetPointerMode(cublasHandle_t h, cublasPointerMode_t m) {
    if (!live(h)) return CUBLAS_STATUS_NOT_INITIALIZED;
    h->pmode = m;
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasSetMathMode(cublasHandle_t h, cublasMath_t) {
    return live(h) ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_NOT_INITIALIZED;
}

const char *cublasGetStatusName(cublasStatus_t s) {
    switch (s) {
    case CUBLAS_STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_ARCH_MISMATCH: return "CUBLAS_STATUS_ARCH_MISMATCH";
    case CUBLAS_STATUS_MAPPING_ERROR: return "CUBLAS_STATUS_MAPPING_ERROR";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "CUBLAS_STATUS_EXECUTION_FAILED";
    case CUBLAS_STATUS_INTERNAL_ERROR: return "CUBLAS_STATUS_INTERNAL_ERROR";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
    case CUBLAS_STATUS_LICENSE_ERROR: return "CUBLAS_STATUS_LICENSE_ERROR";
    }
    return "CUBLAS_STATUS_UNKNOWN";
}
const char *cublasGetStatusString(cublasStatus_t s) {
    switch (s) {
    case CUBLAS_STATUS_SUCCESS: return "success";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "the library was not initialized";
    case CUBLAS_STATUS_INVALID_VALUE: return "an invalid value was used as an argument";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "the GPU program failed to execute";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "the functionality requested is not supported";
    default: return cublasGetStatusName(s);
    }
}

cublasStatus_t cublasGemmEx_64(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int64_t m, int64_t n,
                               int64_t k, const void *alpha, const void *A, cudaDataType at, int64_t lda, const void *B,
                               cudaDataType bt, int64_t ldb, const void *beta, void *C, cudaDataType ct, int64_t ldc,
                               cublasComputeType_t compute, cublasGemmAlgo_t) {
    return gemm("cublasGemmEx_64", h, ta, tb, m, n, k, alpha, A, at, lda, 0, B, bt, ldb, 0, beta, C, ct, ldc, 0, 1,
                compute);
}
cublasStatus_t cublasGemmEx(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                            const void *alpha, const void *A, cudaDataType at, int lda, const void *B, cudaDataType bt,
                            int ldb, const void *beta, void *C, cudaDataType ct, int ldc, cublasComputeType_t compute,
                            cublasGemmAlgo_t) {
    return gemm("cublasGemmEx", h, ta, tb, m, n, k, alpha, A, at, lda, 0, B, bt, ldb, 0, beta, C, ct, ldc, 0, 1, compute);
}
cublasStatus_t cublasGemmStridedBatchedEx_64(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int64_t m,
                                             int64_t n, int64_t k, const void *alpha, const void *A, cudaDataType at,
                                             int64_t lda, long long sa, const void *B, cudaDataType bt, int64_t ldb,
                                             long long sb, const void *beta, void *C, cudaDataType ct, int64_t ldc,
                                             long long sc, int64_t batch, cublasComputeType_t compute, cublasGemmAlgo_t) {
    return gemm("cublasGemmStridedBatchedEx_64", h, ta, tb, m, n, k, alpha, A, at, lda, sa, B, bt, ldb, sb, beta, C, ct,
                ldc, sc, batch, compute);
}
cublasStatus_t cublasSgemm(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                           const float *alpha, const float *A, int lda, const float *B, int ldb, const float *beta,
                           float *C, int ldc) {
    return gemm("cublasSgemm", h, ta, tb, m, n, k, alpha, A, CUDA_R_32F, lda, 0, B, CUDA_R_32F, ldb, 0, beta, C,
                CUDA_R_32F, ldc, 0, 1, CUBLAS_COMPUTE_32F);
}

cublasStatus_t cublasLtCreate(cublasLtHandle_t *h) {
    if (!h) return CUBLAS_STATUS_INVALID_VALUE;
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess || n == 0) {
        cudaGetLastError();
        return CUBLAS_STATUS_NOT_INITIALIZED;
    }
    *h = new cublasLtContext{current_device()};
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtDestroy(cublasLtHandle_t h) {
    if (!h) return CUBLAS_STATUS_NOT_INITIALIZED;
    delete h;
    return CUBLAS_STATUS_SUCCESS;
}
