// ns_kmeans on CUDA: the passes of the driver (src/kmeans_lloyd.c) on the device. x is device
// memory or host memory (a memory-mapped .npy: each block of rows is copied to a staging
// buffer); every pass widens a block to f32, and the per-row results come from the functions
// of src/hostdevice/ns_kmeans_math.h that the CPU backend runs too (cuBLAS f32 scores, then the
// exact pick), so the labels, costs and sums are the same bits. The host copies back each
// block's labels and costs (the driver decides on the host): the call synchronises.
#include "cuda_util.cuh"
#include "kmeans_internal.h"
#include "ns_cuda.h"

namespace {

const char *const kFn = "ns_kmeans";

struct KmScanDev {
    unsigned long long bad;   // lowest flat index (row · d + col) of a non-finite element
    unsigned long long zero;  // lowest all-zero row
    unsigned int max_bits;    // largest |x| as float bits (non-negative floats order as ints)
    unsigned int pad;
};

struct CudaKm {
    ns_context *ctx;
    ns_matrix x;
    int64_t n, k, d, tile, block;
    int spherical, host_x;
    // host
    float *hrows;  // NS_KM_CHUNK × d: gathered rows of a host x
    // device
    void *stage;
    float *xf, *S, *C;
    double *h, *norm, *n2, *cost, *rn, *sums, *out;
    int64_t *lab, *off, *rows;
    KmScanDev *scan;
};

__global__ void k_km_scan(const float *xf, int64_t nb, int64_t d, int64_t r0, KmScanDev *s) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < nb;
         i += (int64_t)gridDim.x * blockDim.x) {
        const float *row = xf + i * d;
        float mx = 0.0f;
        for (int64_t t = 0; t < d; t++) {
            const float v = row[t];
            if (!isfinite(v)) {
                atomicMin(&s->bad, (unsigned long long)((r0 + i) * d + t));
                break;
            }
            const float a = fabsf(v);
            if (a > mx) mx = a;
        }
        if (mx == 0.0f) atomicMin(&s->zero, (unsigned long long)(r0 + i));
        atomicMax(&s->max_bits, ns_float_bits(mx));
    }
}

__global__ void k_km_pick(ns_km_model m, const float *xf, const float *S, int64_t nb,
                          int64_t *lab, double *cost) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < nb;
         i += (int64_t)gridDim.x * blockDim.x)
        lab[i] = ns_km_pick(&m, xf + i * m.d, S + i * m.k, &cost[i]);
}

__global__ void k_km_cost_to(ns_km_model m, const float *xf, int64_t nb, int64_t j, int first,
                             double *cost) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < nb;
         i += (int64_t)gridDim.x * blockDim.x) {
        const double c = ns_km_cost_of(&m, xf + i * m.d, j);
        if (first || c < cost[i]) cost[i] = c;
    }
}

__global__ void k_km_costs(ns_km_model m, const float *xf, int64_t nr, double *out) {
    const int64_t total = nr * m.k;
    for (int64_t e = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; e < total;
         e += (int64_t)gridDim.x * blockDim.x) {
        const int64_t i = e / m.k, j = e - i * m.k;
        out[e] = ns_km_cost_of(&m, xf + i * m.d, j);
    }
}

// dst row i = row rows[i] of x (device data) as f32.
__global__ void k_km_gather(ns_matrix x, const int64_t *rows, int64_t nr, float *dst) {
    const int64_t total = nr * x.cols, ld = ns_ld_d(x);
    for (int64_t e = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; e < total;
         e += (int64_t)gridDim.x * blockDim.x) {
        const int64_t i = e / x.cols, t = e - i * x.cols;
        dst[e] = ns_load_f32(x.data, x.dtype, (size_t)(rows[i] * ld + t));
    }
}

__global__ void k_km_row_norms(const float *xf, int64_t nb, int64_t d, double *rn) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < nb;
         i += (int64_t)gridDim.x * blockDim.x)
        rn[i] = ns_km_row_norm(xf + i * d, d);
}

// One block per cluster, threads over the dimensions: each sum adds the cluster's rows in the
// order of its list (ascending), as the CPU does.
__global__ void k_km_sums(const float *xf, const double *rn, int64_t r0, int64_t k, int64_t d,
                          int spherical, const int64_t *off, const int64_t *rows, double *sums) {
    for (int64_t c = blockIdx.x; c < k; c += gridDim.x)
        for (int64_t t = threadIdx.x; t < d; t += blockDim.x) {
            double acc = sums[c * d + t];
            for (int64_t i = off[c]; i < off[c + 1]; i++) {
                const int64_t r = rows[i] - r0;
                acc = ns_dadd(acc, ns_km_term(xf[r * d + t], spherical ? rn[r] : 1.0, spherical));
            }
            sums[c * d + t] = acc;
        }
}

void km_device_layout(void *plan, ns_arena *a) {
    CudaKm *s = (CudaKm *)plan;
    const size_t b = (size_t)s->block, k = (size_t)s->k, d = (size_t)s->d;
    const size_t chunk = (size_t)(s->n < NS_KM_CHUNK ? s->n : NS_KM_CHUNK);
    s->stage = s->host_x ? ns_arena_carve(a, b * d * ns_dtype_size(s->x.dtype)) : nullptr;
    s->xf = (float *)ns_arena_carve(a, b * d * 4);
    s->S = (float *)ns_arena_carve(a, (size_t)s->tile * k * 4);
    s->C = (float *)ns_arena_carve(a, k * d * 4);
    s->h = (double *)ns_arena_carve(a, k * 8);
    s->norm = (double *)ns_arena_carve(a, k * 8);
    s->n2 = (double *)ns_arena_carve(a, k * 8);
    s->cost = (double *)ns_arena_carve(a, b * 8);
    s->rn = (double *)ns_arena_carve(a, b * 8);
    s->sums = (double *)ns_arena_carve(a, k * d * 8);
    s->out = (double *)ns_arena_carve(a, chunk * k * 8);
    s->lab = (int64_t *)ns_arena_carve(a, b * 8);
    s->off = (int64_t *)ns_arena_carve(a, (k + 1) * 8);
    s->rows = (int64_t *)ns_arena_carve(a, b * 8);
    s->scan = (KmScanDev *)ns_arena_carve(a, sizeof(KmScanDev));
}

void km_host_layout(void *self, ns_arena *a) {
    CudaKm *s = (CudaKm *)self;
    const int64_t chunk = s->n < NS_KM_CHUNK ? s->n : NS_KM_CHUNK;
    s->hrows = (float *)ns_arena_carve(a, (size_t)(chunk * s->d) * sizeof(float));
}

ns_status km_prepare(void *self) {
    CudaKm *s = (CudaKm *)self;
    return ns_arena_lay_out(s->ctx, &s->ctx->cuda->scratch, km_device_layout, s, kFn);
}

// Rows [r0, r0+nb) of x as f32 in s->xf (nb <= block).
ns_status km_fetch(CudaKm *s, int64_t r0, int64_t nb) {
    cudaStream_t st = ns_stream(s->ctx);
    ns_matrix v = s->x;
    int64_t from = r0;
    if (s->host_x) {
        const size_t es = ns_dtype_size(v.dtype);
        NS_CUDA_TRY(s->ctx, kFn,
                    cudaMemcpy2DAsync(s->stage, (size_t)s->d * es, ns_row(v, r0),
                                      (size_t)ns_ld(v) * es, (size_t)s->d * es, (size_t)nb,
                                      cudaMemcpyHostToDevice, st));
        v.data = s->stage, v.rows = nb, v.ld = s->d, from = 0;
    }
    return ns_cuda_rows_to_f32(s->ctx, kFn, v, from, nb, s->xf, st);
}

// rows (host list of nr <= NS_KM_CHUNK rows) as f32 in s->xf.
ns_status km_gather(CudaKm *s, const int64_t *rows, int64_t nr) {
    cudaStream_t st = ns_stream(s->ctx);
    if (s->host_x) {
        for (int64_t i = 0; i < nr; i++) ns_rows_to_f32(s->x, rows[i], 1, s->hrows + i * s->d);
        NS_CUDA_TRY(s->ctx, kFn,
                    cudaMemcpyAsync(s->xf, s->hrows, (size_t)(nr * s->d) * 4,
                                    cudaMemcpyHostToDevice, st));
        return NS_OK;
    }
    NS_CUDA_TRY(s->ctx, kFn,
                cudaMemcpyAsync(s->rows, rows, (size_t)nr * 8, cudaMemcpyHostToDevice, st));
    k_km_gather<<<ns_blocks(nr * s->d), NS_CUDA_THREADS, 0, st>>>(s->x, s->rows, nr, s->xf);
    NS_CUDA_TRY(s->ctx, kFn, cudaGetLastError());
    return NS_OK;
}

// The model with device pointers, after uploading the host one.
ns_status km_upload(CudaKm *s, const ns_km_model *m, ns_km_model *dm) {
    cudaStream_t st = ns_stream(s->ctx);
    const size_t k = (size_t)s->k;
    NS_CUDA_TRY(s->ctx, kFn, cudaMemcpyAsync(s->C, m->c, k * (size_t)s->d * 4,
                                             cudaMemcpyHostToDevice, st));
    NS_CUDA_TRY(s->ctx, kFn, cudaMemcpyAsync(s->h, m->h, k * 8, cudaMemcpyHostToDevice, st));
    NS_CUDA_TRY(s->ctx, kFn,
                cudaMemcpyAsync(s->norm, m->norm, k * 8, cudaMemcpyHostToDevice, st));
    NS_CUDA_TRY(s->ctx, kFn, cudaMemcpyAsync(s->n2, m->n2, k * 8, cudaMemcpyHostToDevice, st));
    *dm = *m;
    dm->c = s->C, dm->h = s->h, dm->norm = s->norm, dm->n2 = s->n2;
    return NS_OK;
}

ns_status km_d2h(CudaKm *s, void *dst, const void *src, size_t bytes) {
    cudaStream_t st = ns_stream(s->ctx);
    NS_CUDA_TRY(s->ctx, kFn, cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, st));
    NS_CUDA_TRY(s->ctx, kFn, cudaStreamSynchronize(st));
    return NS_OK;
}

ns_status km_read_row(void *self, int64_t r, float *out) {
    CudaKm *s = (CudaKm *)self;
    if (s->host_x) {
        ns_rows_to_f32(s->x, r, 1, out);
        return NS_OK;
    }
    ns_status rc;
    if ((rc = km_gather(s, &r, 1))) return rc;
    return km_d2h(s, out, s->xf, (size_t)s->d * 4);
}

ns_status km_scan(void *self, ns_km_scan *out) {
    CudaKm *s = (CudaKm *)self;
    cudaStream_t st = ns_stream(s->ctx);
    const KmScanDev init = {~0ull, ~0ull, 0u, 0u};
    NS_CUDA_TRY(s->ctx, kFn,
                cudaMemcpyAsync(s->scan, &init, sizeof init, cudaMemcpyHostToDevice, st));
    ns_status rc;
    for (int64_t r0 = 0; r0 < s->n; r0 += s->block) {
        const int64_t nb = s->n - r0 < s->block ? s->n - r0 : s->block;
        if ((rc = km_fetch(s, r0, nb))) return rc;
        k_km_scan<<<ns_blocks(nb), NS_CUDA_THREADS, 0, st>>>(s->xf, nb, s->d, r0, s->scan);
        NS_CUDA_TRY(s->ctx, kFn, cudaGetLastError());
    }
    KmScanDev h;
    if ((rc = km_d2h(s, &h, s->scan, sizeof h))) return rc;
    out->bad_row = -1, out->bad_col = -1, out->bad_value = 0.0f;
    out->zero_row = h.zero == ~0ull ? -1 : (int64_t)h.zero;
    out->max_abs = ns_bits_float(h.max_bits);
    if (h.bad != ~0ull) {
        out->bad_row = (int64_t)(h.bad / (unsigned long long)s->d);
        out->bad_col = (int64_t)(h.bad % (unsigned long long)s->d);
        float *row = s->hrows;  // at least one row of d floats
        if ((rc = km_read_row(s, out->bad_row, row))) return rc;
        out->bad_value = row[out->bad_col];
    }
    return NS_OK;
}

ns_status km_assign(void *self, const ns_km_model *m, int64_t *labels, double *cost) {
    CudaKm *s = (CudaKm *)self;
    cudaStream_t st = ns_stream(s->ctx);
    ns_km_model dm;
    ns_status rc;
    if ((rc = km_upload(s, m, &dm))) return rc;
    for (int64_t r0 = 0; r0 < s->n; r0 += s->tile) {
        const int64_t nb = s->n - r0 < s->tile ? s->n - r0 : s->tile;
        if ((rc = km_fetch(s, r0, nb))) return rc;
        if ((rc = ns_cuda_gemm(s->ctx, kFn, 0, 1, nb, s->k, s->d, 1.0f, s->xf, NS_F32, s->d,
                               s->C, NS_F32, s->d, 0.0f, s->S, s->k)))
            return rc;
        k_km_pick<<<ns_blocks(nb, 64), 64, 0, st>>>(dm, s->xf, s->S, nb, s->lab, s->cost);
        NS_CUDA_TRY(s->ctx, kFn, cudaGetLastError());
        NS_CUDA_TRY(s->ctx, kFn, cudaMemcpyAsync(labels + r0, s->lab, (size_t)nb * 8,
                                                 cudaMemcpyDeviceToHost, st));
        if ((rc = km_d2h(s, cost + r0, s->cost, (size_t)nb * 8))) return rc;
    }
    return NS_OK;
}

ns_status km_cost_to(void *self, const ns_km_model *m, int64_t j, int first, double *cost) {
    CudaKm *s = (CudaKm *)self;
    cudaStream_t st = ns_stream(s->ctx);
    const size_t d = (size_t)s->d;
    NS_CUDA_TRY(s->ctx, kFn, cudaMemcpyAsync(s->C + j * d, m->c + j * d, d * 4,
                                             cudaMemcpyHostToDevice, st));
    NS_CUDA_TRY(s->ctx, kFn,
                cudaMemcpyAsync(s->n2 + j, m->n2 + j, 8, cudaMemcpyHostToDevice, st));
    ns_km_model dm = *m;
    dm.c = s->C, dm.h = s->h, dm.norm = s->norm, dm.n2 = s->n2;
    ns_status rc;
    for (int64_t r0 = 0; r0 < s->n; r0 += s->block) {
        const int64_t nb = s->n - r0 < s->block ? s->n - r0 : s->block;
        if ((rc = km_fetch(s, r0, nb))) return rc;
        if (!first)
            NS_CUDA_TRY(s->ctx, kFn, cudaMemcpyAsync(s->cost, cost + r0, (size_t)nb * 8,
                                                     cudaMemcpyHostToDevice, st));
        k_km_cost_to<<<ns_blocks(nb, 64), 64, 0, st>>>(dm, s->xf, nb, j, first, s->cost);
        NS_CUDA_TRY(s->ctx, kFn, cudaGetLastError());
        if ((rc = km_d2h(s, cost + r0, s->cost, (size_t)nb * 8))) return rc;
    }
    return NS_OK;
}

ns_status km_costs_of_rows(void *self, const ns_km_model *m, const int64_t *rows, int64_t nr,
                           double *out) {
    CudaKm *s = (CudaKm *)self;
    cudaStream_t st = ns_stream(s->ctx);
    ns_km_model dm;
    ns_status rc;
    if ((rc = km_upload(s, m, &dm))) return rc;
    if ((rc = km_gather(s, rows, nr))) return rc;
    k_km_costs<<<ns_blocks(nr * s->k, 64), 64, 0, st>>>(dm, s->xf, nr, s->out);
    NS_CUDA_TRY(s->ctx, kFn, cudaGetLastError());
    return km_d2h(s, out, s->out, (size_t)(nr * s->k) * 8);
}

ns_status km_sums_begin(void *self) {
    CudaKm *s = (CudaKm *)self;
    NS_CUDA_TRY(s->ctx, kFn, cudaMemsetAsync(s->sums, 0, (size_t)(s->k * s->d) * 8,
                                             ns_stream(s->ctx)));
    return NS_OK;
}

ns_status km_sums_block(void *self, int64_t r0, int64_t nb, const int64_t *off,
                        const int64_t *rows) {
    CudaKm *s = (CudaKm *)self;
    cudaStream_t st = ns_stream(s->ctx);
    ns_status rc;
    if ((rc = km_fetch(s, r0, nb))) return rc;
    NS_CUDA_TRY(s->ctx, kFn, cudaMemcpyAsync(s->off, off, (size_t)(s->k + 1) * 8,
                                             cudaMemcpyHostToDevice, st));
    NS_CUDA_TRY(s->ctx, kFn,
                cudaMemcpyAsync(s->rows, rows, (size_t)nb * 8, cudaMemcpyHostToDevice, st));
    if (s->spherical) {
        k_km_row_norms<<<ns_blocks(nb), NS_CUDA_THREADS, 0, st>>>(s->xf, nb, s->d, s->rn);
        NS_CUDA_TRY(s->ctx, kFn, cudaGetLastError());
    }
    const int64_t grid = s->k < 65535 ? s->k : 65535;
    const int threads = s->d < 128 ? 32 : 128;
    k_km_sums<<<(unsigned)grid, threads, 0, st>>>(s->xf, s->rn, r0, s->k, s->d, s->spherical,
                                                  s->off, s->rows, s->sums);
    NS_CUDA_TRY(s->ctx, kFn, cudaGetLastError());
    // off and rows are the driver's (pageable) buffers, rewritten for the next block: the
    // copies above took them at the call, and the wait keeps it so on every device.
    NS_CUDA_TRY(s->ctx, kFn, cudaStreamSynchronize(st));
    return NS_OK;
}

ns_status km_sums_end(void *self, double *sums) {
    CudaKm *s = (CudaKm *)self;
    return km_d2h(s, sums, s->sums, (size_t)(s->k * s->d) * 8);
}

ns_status km_write(void *self, const int64_t *labels, const float *centroids,
                   int64_t *labels_out, float *centroids_out) {
    CudaKm *s = (CudaKm *)self;
    cudaStream_t st = ns_stream(s->ctx);
    NS_CUDA_TRY(s->ctx, kFn, cudaMemcpyAsync(labels_out, labels, (size_t)s->n * 8,
                                             cudaMemcpyHostToDevice, st));
    NS_CUDA_TRY(s->ctx, kFn, cudaMemcpyAsync(centroids_out, centroids,
                                             (size_t)(s->k * s->d) * 4, cudaMemcpyHostToDevice,
                                             st));
    NS_CUDA_TRY(s->ctx, kFn, cudaStreamSynchronize(st));
    return NS_OK;
}

ns_status km_read_centroids(void *self, const float *src, float *dst) {
    CudaKm *s = (CudaKm *)self;
    return km_d2h(s, dst, src, (size_t)(s->k * s->d) * 4);
}

}  // namespace

ns_status ns_cuda_kmeans(ns_context *ctx, ns_matrix x, int64_t k, const ns_kmeans_options *o,
                         int64_t *labels, float *centroids, double *inertia,
                         int64_t *iterations) {
    if (ns_cuda_capturing(ctx))
        return ns_fail(ctx, NS_ERR_UNSUPPORTED,
                       "%s: synchronises (host decisions every pass); not while the stream is "
                       "captured", kFn);
    CudaKm s;
    memset(&s, 0, sizeof s);
    s.ctx = ctx, s.x = x, s.n = x.rows, s.k = k, s.d = x.cols;
    s.spherical = o->spherical, s.host_x = !ns_cuda_is_device_ptr(x.data);
    s.block = s.n < NS_KM_BLOCK ? s.n : NS_KM_BLOCK;
    int64_t tile = ((int64_t)8 << 20) / k;  // score tiles of at most 32 MiB
    if (tile < 64) tile = 64;
    s.tile = tile < s.block ? tile : s.block;
    const ns_km_passes p = {&s,         km_host_layout,   km_prepare,       km_scan,
                            km_assign,  km_cost_to,       km_costs_of_rows, km_read_row,
                            km_sums_begin, km_sums_block, km_sums_end,      km_write,
                            km_read_centroids};
    return ns_kmeans_run(ctx, &p, x, k, o, labels, centroids, inertia, iterations);
}
