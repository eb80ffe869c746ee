// ns_similarity on CUDA: s = scale · q · pᵀ as one cuBLAS GEMM (f32/f16/bf16 in, f32 out,
// FP32 accumulation), cosine by scaling the product with the rows' inverse norms afterwards.
#include "cuda_util.cuh"
#include "ns_cuda.h"

// s[i, j] *= inv_q[i] · inv_p[j]
__global__ void ns_k_scale_rows_cols(float *s, int64_t m, int64_t n, const float *inv_q,
                                     const float *inv_p) {
    int64_t total = m * n;
    for (int64_t e = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; e < total;
         e += (int64_t)gridDim.x * blockDim.x) {
        int64_t i = e / n, j = e - i * n;
        s[e] = s[e] * (inv_q[i] * inv_p[j]);
    }
}

// Device workspace: f32 copies when the dtypes differ (cuBLAS multiplies one dtype), inverse
// row norms for cosine.
struct SimWork {
    int64_t m, n, d;
    int mixed, norm;
    float *qf, *pf, *inv_q, *inv_p;
};

static void sim_layout(void *plan, ns_arena *a) {
    SimWork *w = (SimWork *)plan;
    w->qf = w->mixed ? (float *)ns_arena_carve(a, (size_t)(w->m * w->d) * 4) : nullptr;
    w->pf = w->mixed ? (float *)ns_arena_carve(a, (size_t)(w->n * w->d) * 4) : nullptr;
    w->inv_q = w->norm ? (float *)ns_arena_carve(a, (size_t)w->m * 4) : nullptr;
    w->inv_p = w->norm ? (float *)ns_arena_carve(a, (size_t)w->n * 4) : nullptr;
}

// Synchronises once (before anything is written) to report NaN/Inf inputs as NS_ERR_NONFINITE
// with s untouched; skipped while the stream is captured into a CUDA graph.
ns_status ns_cuda_similarity(ns_context *ctx, ns_matrix q, ns_matrix p, float scale,
                             unsigned flags, float *s) {
    static const char *fn = "ns_similarity";
    cudaStream_t st = ns_stream(ctx);
    ns_status rc;
    if (ns_cuda_validating(ctx)) {
        int *dflags;
        const int *hflags;
        if ((rc = ns_cuda_flags_reset(ctx, fn, &dflags))) return rc;
        if ((rc = ns_cuda_scan_nonfinite(ctx, fn, q, 0, q.rows, dflags, 0, st))) return rc;
        if ((rc = ns_cuda_scan_nonfinite(ctx, fn, p, 0, p.rows, dflags, 1, st))) return rc;
        if ((rc = ns_cuda_flags_read(ctx, fn, &hflags))) return rc;
        int64_t r, c;
        for (int slot = 0; slot < 2; slot++)
            if (ns_cuda_first_nonfinite(hflags, slot, q.cols, &r, &c))
                return ns_fail(ctx, NS_ERR_NONFINITE, "%s: %s[%lld][%lld] is not finite; inputs must be finite",
                               fn, slot ? "p" : "q", (long long)r, (long long)c);
    }
    const int64_t m = q.rows, n = p.rows, d = q.cols;
    SimWork w = {m, n, d, q.dtype != p.dtype, (flags & NS_NORMALIZE) != 0};
    if ((rc = ns_arena_lay_out(ctx, &ctx->cuda->scratch, sim_layout, &w, fn))) return rc;
    const int mixed = w.mixed, norm = w.norm;
    const void *a = q.data, *b = p.data;
    ns_dtype t = q.dtype;
    int64_t lda = ns_ld(q), ldb = ns_ld(p);
    if (mixed) {  // cuBLAS multiplies one dtype: widen both to f32
        if ((rc = ns_cuda_rows_to_f32(ctx, fn, q, 0, m, w.qf, st))) return rc;
        if ((rc = ns_cuda_rows_to_f32(ctx, fn, p, 0, n, w.pf, st))) return rc;
        a = w.qf, b = w.pf, t = NS_F32, lda = ldb = d;
    }
    if ((rc = ns_cuda_gemm(ctx, fn, 0, 1, m, n, d, scale, a, t, lda, b, t, ldb, 0.0f, s, n)))
        return rc;
    if (norm) {
        float *iq = w.inv_q, *ip = w.inv_p;
        if ((rc = ns_cuda_row_inv_norms(ctx, fn, q, 0, m, iq, st))) return rc;
        if ((rc = ns_cuda_row_inv_norms(ctx, fn, p, 0, n, ip, st))) return rc;
        ns_k_scale_rows_cols<<<ns_blocks(m * n), NS_CUDA_THREADS, 0, st>>>(s, m, n, iq, ip);
        NS_CUDA_TRY(ctx, fn, cudaGetLastError());
    }
    return NS_OK;
}
