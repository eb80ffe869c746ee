/* GPU benchmarks of the CUDA backend through the public C ABI (device pointers from the CUDA
 * runtime), each printing one JSON object per line on stdout:
 *
 *   bench_gpu_ops gemm   M N K            cuBLAS bf16×bf16→f32 GEMM rate (the mining ceiling)
 *   bench_gpu_ops copy   BYTES            device-to-device copy bandwidth (the sampling floor)
 *   bench_gpu_ops mine   Q N d k [host]   ns_mine_topk, bf16, corpus on device (or host memory),
 *                                         beside cuBLAS on the same Q×N×d in the miner's tiles
 *                                         (device corpus: interleaved, median of 3);
 *                                         NS_BENCH_MINE_WORKSPACE=bytes sets options->workspace_bytes
 *                                         (query super-blocks; 0 = NS_MINE_WORKSPACE_DEFAULT)
 *   bench_gpu_ops mine32 Q N d k          ns_mine_topk on f32 rows (device): the exact path (bf16 GEMM
 *                                         + bound re-score, the default) and the plain f32 GEMM
 *                                         (NS_CUDA_MINE_GEMM=f32), interleaved, median of 3, beside
 *                                         cuBLAS bf16 in the miner's tiles
 *   bench_gpu_ops step   B C d h          ns_step_forward + backward, bf16: the checked step (one
 *                                         host sync per forward) and sync_free, interleaved, median of 3
 *   bench_gpu_ops loss   B N d            ns_infonce_forward + backward, bf16, time and extra memory
 *   bench_gpu_ops lossfused B N d [sym]  ns_infonce_forward_backward (fused: 3 GEMMs per tile) vs
 *                                         the two calls (4), interleaved, median of 3, beside
 *                                         cuBLAS running the fused path's 3 GEMMs in its tiles;
 *                                         the extra memory of each (its own context)
 *   bench_gpu_ops sample B C m            ns_filter-free ns_sample, SimANS, C candidates → m,
 *                                         beside a device copy of the B×C scores; every sampling
 *                                         path that can run the shape (NS_CUDA_SAMPLE_PATH: stream,
 *                                         shared, global) and the copy interleaved, median of 3
 *
 * Inputs are random (a fixed xorshift), generated on the host in chunks and uploaded. Times are
 * CUDA-event times on the context's stream after one warm-up call (the warm-up grows the
 * workspace: no allocation in the timed call). Nothing here is a test: no assertion on speed. */
#define _POSIX_C_SOURCE 200809L /* setenv, unsetenv */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "negsamp.h"

#ifndef NS_HAVE_CUDA
int main(int argc, char **argv) {
    (void)argc;
    fprintf(stderr, "%s: this build of negsamp has no CUDA backend\n", argv[0]);
    return 4;
}
#else
#include <cublas_v2.h>
#include <cuda_runtime.h>

#define CK(x)                                                                                \
    do {                                                                                     \
        cudaError_t e_ = (x);                                                                \
        if (e_ != cudaSuccess) {                                                             \
            fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e_)); \
            exit(2);                                                                         \
        }                                                                                    \
    } while (0)
#define NS(ctx, x)                                                                           \
    do {                                                                                     \
        ns_status s_ = (x);                                                                  \
        if (s_ != NS_OK) {                                                                   \
            fprintf(stderr, "%s:%d: %s: %s (%s)\n", __FILE__, __LINE__, #x, ns_status_string(s_), \
                    ns_last_error(ctx));                                                     \
            exit(3);                                                                         \
        }                                                                                    \
    } while (0)

static uint64_t rng = 0x9E3779B97F4A7C15ull;
static inline uint64_t next_u64(void) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}
static inline float next_f(void) { return (float)((next_u64() >> 40) * (1.0 / 16777216.0)) * 2.0f - 1.0f; }
static inline uint16_t f2bf(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

/* n random bf16 values in [-1, 1) scaled by `scale`, uploaded to dst (device) in chunks. */
static void fill_bf16(uint16_t *dst, size_t n, float scale) {
    const size_t chunk = (size_t)1 << 24;
    uint16_t *h;
    CK(cudaMallocHost((void **)&h, chunk * 2));
    for (size_t o = 0; o < n; o += chunk) {
        size_t m = n - o < chunk ? n - o : chunk;
        for (size_t i = 0; i < m; i++) h[i] = f2bf(next_f() * scale);
        CK(cudaMemcpy(dst + o, h, m * 2, cudaMemcpyHostToDevice));
    }
    CK(cudaFreeHost(h));
}

static void fill_f32(float *dst, size_t n, float scale) {
    const size_t chunk = (size_t)1 << 24;
    float *h;
    CK(cudaMallocHost((void **)&h, chunk * 4));
    for (size_t o = 0; o < n; o += chunk) {
        size_t m = n - o < chunk ? n - o : chunk;
        for (size_t i = 0; i < m; i++) h[i] = next_f() * scale;
        CK(cudaMemcpy(dst + o, h, m * 4, cudaMemcpyHostToDevice));
    }
    CK(cudaFreeHost(h));
}

static ns_matrix bf16_matrix(const void *p, int64_t rows, int64_t cols) {
    ns_matrix m = {p, NS_BF16, rows, cols, 0};
    return m;
}

static ns_context *make_ctx(void) {
    ns_context *ctx = NULL;
    ns_context_options o = NS_CONTEXT_OPTIONS_INIT;
    o.backend = NS_BACKEND_CUDA;
    NS(NULL, ns_context_create(&ctx, &o));
    return ctx;
}

static cudaEvent_t ev0, ev1;
static void tic(void) { CK(cudaEventRecord(ev0, 0)); }
static double toc_ms(void) {
    float ms;
    CK(cudaEventRecord(ev1, 0));
    CK(cudaEventSynchronize(ev1));
    CK(cudaEventElapsedTime(&ms, ev0, ev1));
    return ms;
}

static const char *gpu_name(void) {
    static struct cudaDeviceProp p;
    CK(cudaGetDeviceProperties(&p, 0));
    return p.name;
}

static int bench_gemm(int64_t M, int64_t N, int64_t K) {
    uint16_t *a, *b;
    float *c;
    CK(cudaMalloc((void **)&a, (size_t)(M * K) * 2));
    CK(cudaMalloc((void **)&b, (size_t)(N * K) * 2));
    CK(cudaMalloc((void **)&c, (size_t)(M * N) * 4));
    fill_bf16(a, (size_t)(M * K), 1.0f);
    fill_bf16(b, (size_t)(N * K), 1.0f);
    cublasHandle_t h;
    if (cublasCreate(&h) != CUBLAS_STATUS_SUCCESS) return 2;
    const float one = 1.0f, zero = 0.0f;
    double best = 1e30;
    for (int r = 0; r < 4; r++) {
        tic();
        /* row-major C (M×N) = A (M×K) · Bᵀ, as the library computes scores */
        cublasStatus_t s = cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, (int)N, (int)M, (int)K, &one, b,
                                        CUDA_R_16BF, (int)K, a, CUDA_R_16BF, (int)K, &zero, c, CUDA_R_32F,
                                        (int)N, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
        double ms = toc_ms();
        if (s != CUBLAS_STATUS_SUCCESS) return 2;
        if (r > 0 && ms < best) best = ms;
    }
    double tflops = 2.0 * M * N * K / (best * 1e-3) / 1e12;
    printf("{\"bench\":\"cublas_gemm_bf16\",\"gpu\":\"%s\",\"M\":%lld,\"N\":%lld,\"K\":%lld,\"ms\":%.3f,"
           "\"tflops\":%.2f}\n",
           gpu_name(), (long long)M, (long long)N, (long long)K, best, tflops);
    cublasDestroy(h);
    cudaFree(a);
    cudaFree(b);
    cudaFree(c);
    return 0;
}

static int bench_copy(size_t bytes) {
    void *a, *b;
    CK(cudaMalloc(&a, bytes));
    CK(cudaMalloc(&b, bytes));
    CK(cudaMemset(a, 1, bytes));
    double best = 1e30;
    for (int r = 0; r < 5; r++) {
        tic();
        CK(cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice, 0));
        double ms = toc_ms();
        if (r > 0 && ms < best) best = ms;
    }
    /* a copy reads and writes every byte */
    printf("{\"bench\":\"copy_d2d\",\"gpu\":\"%s\",\"bytes\":%zu,\"ms\":%.3f,\"read_plus_write_GBps\":%.1f}\n",
           gpu_name(), bytes, best, 2.0 * bytes / (best * 1e-3) / 1e9);
    cudaFree(a);
    cudaFree(b);
    return 0;
}

/* cuBLAS bf16 GEMMs over the whole Q×N×d product in the tile shape of ns_mine_topk on a device
 * corpus (kernels/cuda_mine_topk.cu, mine_plan: QB = min(Q, 2048) queries × NT = min(N, 8 Mi / QB)
 * corpus rows, every tile written into one L2-sized f32 score tile): the GEMM rate of the same
 * shape, the ceiling the miner's selection is measured against. rounds = 0: best of 2 after a
 * warm-up; otherwise that many timed rounds, the last one's time (the caller interleaves). */
static double tiled_gemm_rounds(const uint16_t *q, const uint16_t *c, int64_t Q, int64_t N, int64_t d,
                                int rounds) {
    const int64_t qb = Q < 2048 ? Q : 2048;
    int64_t nt = ((int64_t)8 << 20) / qb;
    if (nt > N) nt = N;
    float *tile;
    CK(cudaMalloc((void **)&tile, (size_t)(qb * nt) * 4));
    cublasHandle_t h;
    if (cublasCreate(&h) != CUBLAS_STATUS_SUCCESS) exit(2);
    const float one = 1.0f, zero = 0.0f;
    double best = 1e30, last = 0;
    for (int r = 0; r < (rounds ? rounds : 3); r++) {
        tic();
        for (int64_t c0 = 0; c0 < N; c0 += nt) {
            const int64_t n = N - c0 < nt ? N - c0 : nt;
            for (int64_t q0 = 0; q0 < Q; q0 += qb) {
                const int64_t m = Q - q0 < qb ? Q - q0 : qb;
                if (cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, (int)n, (int)m, (int)d, &one, c + c0 * d,
                                 CUDA_R_16BF, (int)d, q + q0 * d, CUDA_R_16BF, (int)d, &zero, tile,
                                 CUDA_R_32F, (int)n, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT) != CUBLAS_STATUS_SUCCESS)
                    exit(2);
            }
        }
        double ms = toc_ms();
        last = ms;
        if (r > 0 && ms < best) best = ms;
    }
    cublasDestroy(h);
    cudaFree(tile);
    return rounds ? last : best;
}
static double tiled_gemm_ms(const uint16_t *q, const uint16_t *c, int64_t Q, int64_t N, int64_t d) {
    return tiled_gemm_rounds(q, c, Q, N, d, 0);
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static int bench_mine(int64_t Q, int64_t N, int64_t d, int64_t k, int host) {
    ns_context *ctx = make_ctx();
    uint16_t *q, *c;
    int64_t *idx;
    float *sc;
    CK(cudaMalloc((void **)&q, (size_t)(Q * d) * 2));
    if (host) CK(cudaMallocHost((void **)&c, (size_t)(N * d) * 2));
    else CK(cudaMalloc((void **)&c, (size_t)(N * d) * 2));
    CK(cudaMalloc((void **)&idx, (size_t)(Q * k) * 8));
    CK(cudaMalloc((void **)&sc, (size_t)(Q * k) * 4));
    fill_bf16(q, (size_t)(Q * d), 1.0f);
    if (host) {
        for (size_t i = 0; i < (size_t)(N * d); i++) c[i] = f2bf(next_f());
    } else {
        fill_bf16(c, (size_t)(N * d), 1.0f);
    }
    ns_mine_options o = NS_MINE_OPTIONS_INIT;
    const char *ws = getenv("NS_BENCH_MINE_WORKSPACE");
    o.workspace_bytes = ws ? (size_t)strtoull(ws, NULL, 10) : 0;
    /* warm-up on a corpus slice: grows the workspace (tiles, candidate buffers) to its final size */
    ns_matrix qm = bf16_matrix(q, Q, d), cm = bf16_matrix(c, N < 100000 ? N : 100000, d);
    NS(ctx, ns_mine_topk(ctx, qm, cm, k < cm.rows ? k : cm.rows, &o, idx, sc));
    cm.rows = N;
    /* the miner and the same product through cuBLAS alone in the miner's tiles (device corpus),
     * interleaved, median of 3 each (a host corpus: the miner alone, 3 rounds) */
    double mv[3], gv[3];
    for (int r = 0; r < 3; r++) {
        tic();
        NS(ctx, ns_mine_topk(ctx, qm, cm, k, &o, idx, sc));
        mv[r] = toc_ms();
        gv[r] = host ? 0.0 : tiled_gemm_rounds(q, c, Q, N, d, r == 0 ? 2 : 1);
    }
    qsort(mv, 3, sizeof *mv, cmp_double);
    qsort(gv, 3, sizeof *gv, cmp_double);
    const double ms = mv[1], gms = gv[1];
    double tflops = 2.0 * Q * N * d / (ms * 1e-3) / 1e12;
    double gtflops = host ? 0.0 : 2.0 * Q * N * d / (gms * 1e-3) / 1e12;
    printf("{\"bench\":\"mine_topk\",\"gpu\":\"%s\",\"Q\":%lld,\"N\":%lld,\"d\":%lld,\"k\":%lld,"
           "\"corpus\":\"%s\",\"workspace_bytes\":%zu,\"ms\":%.3f,\"effective_tflops\":%.2f,"
           "\"gemm_same_shape_ms\":%.3f,\"gemm_same_shape_tflops\":%.2f,\"fraction_of_gemm\":%.3f}\n",
           gpu_name(), (long long)Q, (long long)N, (long long)d, (long long)k, host ? "host" : "device",
           o.workspace_bytes ? o.workspace_bytes : NS_MINE_WORKSPACE_DEFAULT, ms, tflops, gms, gtflops,
           host ? 0.0 : gms / ms);
    ns_context_destroy(ctx);
    cudaFree(q);
    if (host) cudaFreeHost(c);
    else cudaFree(c);
    cudaFree(idx);
    cudaFree(sc);
    return 0;
}

static double median3(double *v) {
    qsort(v, 3, sizeof *v, cmp_double);
    return v[1];
}

/* Exact f32 mining: the default path (bf16 GEMM scores, every candidate within the proven bound
 * of the running k-th re-scored exactly: the CPU's result) against the plain f32 GEMM path
 * (NS_CUDA_MINE_GEMM=f32: SIMT f32 scores, not re-scored), the two interleaved (median of 3),
 * beside cuBLAS bf16 on the same product in the miner's tiles (the ceiling). */
static int bench_mine_f32(int64_t Q, int64_t N, int64_t d, int64_t k) {
    ns_context *ctx = make_ctx();
    float *q, *c;
    uint16_t *q16, *c16;
    int64_t *idx;
    float *sc;
    CK(cudaMalloc((void **)&q, (size_t)(Q * d) * 4));
    CK(cudaMalloc((void **)&c, (size_t)(N * d) * 4));
    CK(cudaMalloc((void **)&idx, (size_t)(Q * k) * 8));
    CK(cudaMalloc((void **)&sc, (size_t)(Q * k) * 4));
    fill_f32(q, (size_t)(Q * d), 1.0f);
    fill_f32(c, (size_t)(N * d), 1.0f);
    ns_mine_options o = NS_MINE_OPTIONS_INIT;
    ns_matrix qm = {q, NS_F32, Q, d, 0}, cm = {c, NS_F32, N < 100000 ? N : 100000, d, 0};
    NS(ctx, ns_mine_topk(ctx, qm, cm, k < cm.rows ? k : cm.rows, &o, idx, sc));  /* workspace */
    cm.rows = N;
    double exact[3], plain[3];
    for (int r = 0; r < 3; r++) {
        unsetenv("NS_CUDA_MINE_GEMM");
        tic();
        NS(ctx, ns_mine_topk(ctx, qm, cm, k, &o, idx, sc));
        exact[r] = toc_ms();
        setenv("NS_CUDA_MINE_GEMM", "f32", 1);
        tic();
        NS(ctx, ns_mine_topk(ctx, qm, cm, k, &o, idx, sc));
        plain[r] = toc_ms();
    }
    unsetenv("NS_CUDA_MINE_GEMM");
    ns_context_destroy(ctx);
    cudaFree(idx);
    cudaFree(sc);
    cudaFree(c);  /* room for the bf16 copies of the ceiling */
    CK(cudaMalloc((void **)&q16, (size_t)(Q * d) * 2));
    CK(cudaMalloc((void **)&c16, (size_t)(N * d) * 2));
    fill_bf16(q16, (size_t)(Q * d), 1.0f);
    fill_bf16(c16, (size_t)(N * d), 1.0f);
    const double gms = tiled_gemm_ms(q16, c16, Q, N, d), flop = 2.0 * Q * N * d;
    const double ems = median3(exact), pms = median3(plain);
    printf("{\"bench\":\"mine_topk_f32\",\"gpu\":\"%s\",\"Q\":%lld,\"N\":%lld,\"d\":%lld,\"k\":%lld,"
           "\"exact_bf16_ms\":%.3f,\"plain_f32_ms\":%.3f,\"exact_speedup_over_plain\":%.2f,"
           "\"exact_effective_tflops\":%.2f,\"gemm_bf16_same_shape_ms\":%.3f,"
           "\"exact_fraction_of_bf16_gemm\":%.3f}\n",
           gpu_name(), (long long)Q, (long long)N, (long long)d, (long long)k, ems, pms, pms / ems,
           flop / (ems * 1e-3) / 1e12, gms, gms / ems);
    cudaFree(q);
    cudaFree(q16);
    cudaFree(c16);
    return 0;
}

/* The training step, bf16, B queries × C candidates → h hard negatives: the checked step (host
 * loss and filter counts: one synchronisation per forward, none in the backward) against
 * sync_free (none), interleaved, median of 3 of forward + backward. */
static int bench_step(int64_t B, int64_t C, int64_t d, int64_t h) {
    ns_context *ctx = make_ctx();
    uint16_t *q, *p, *c;
    int64_t *cid;
    float *gq, *gp, *gc;
    CK(cudaMalloc((void **)&q, (size_t)(B * d) * 2));
    CK(cudaMalloc((void **)&p, (size_t)(B * d) * 2));
    CK(cudaMalloc((void **)&c, (size_t)(B * C * d) * 2));
    CK(cudaMalloc((void **)&cid, (size_t)(B * C) * 8));
    CK(cudaMalloc((void **)&gq, (size_t)(B * d) * 4));
    CK(cudaMalloc((void **)&gp, (size_t)(B * d) * 4));
    CK(cudaMalloc((void **)&gc, (size_t)(B * C * d) * 4));
    fill_bf16(q, (size_t)(B * d), 0.05f);
    fill_bf16(p, (size_t)(B * d), 0.05f);
    fill_bf16(c, (size_t)(B * C * d), 0.05f);
    {
        int64_t *hid;
        CK(cudaMallocHost((void **)&hid, (size_t)(B * C) * 8));
        for (int64_t r = 0; r < B * C; r++) hid[r] = 1000000 + r;
        CK(cudaMemcpy(cid, hid, (size_t)(B * C) * 8, cudaMemcpyHostToDevice));
        CK(cudaFreeHost(hid));
    }
    ns_batch b;
    memset(&b, 0, sizeof b);
    b.query = bf16_matrix(q, B, d);
    b.positive = bf16_matrix(p, B, d);
    b.candidate = bf16_matrix(c, B * C, d);
    b.candidates_per_query = C;
    b.candidate_id = cid;
    ns_filter_options fo = NS_FILTER_OPTIONS_INIT;
    ns_sampler_options so = NS_SAMPLER_OPTIONS_INIT;
    ns_loss_options lo = NS_LOSS_OPTIONS_INIT;
    so.strategy = NS_SAMPLE_SIMANS;
    ns_step_options o = NS_STEP_OPTIONS_INIT;
    o.hard_negatives = h;
    o.filter = &fo, o.sampler = &so, o.loss = &lo;
    ns_step_result res;
    ns_step_grads g = {gq, gp, gc, NULL};
    double ms[2][3];
    for (int r = -1; r < 3; r++)  /* r = -1: the warm-up of both */
        for (int sf = 0; sf < 2; sf++) {
            o.sync_free = sf;
            so.step = (uint64_t)(r + 2);
            tic();
            NS(ctx, ns_step_forward(ctx, &b, &o, &res));
            NS(ctx, ns_step_backward(ctx, 1.0f, &g));
            const double t = toc_ms();
            if (r >= 0) ms[sf][r] = t;
        }
    const double checked = median3(ms[0]), free_ = median3(ms[1]);
    printf("{\"bench\":\"step\",\"gpu\":\"%s\",\"B\":%lld,\"C\":%lld,\"d\":%lld,\"h\":%lld,"
           "\"checked_ms\":%.3f,\"sync_free_ms\":%.3f,\"checked_over_sync_free\":%.3f,"
           "\"checked_host_syncs_per_step\":1}\n",
           gpu_name(), (long long)B, (long long)C, (long long)d, (long long)h, checked, free_,
           checked / free_);
    ns_context_destroy(ctx);
    cudaFree(q), cudaFree(p), cudaFree(c), cudaFree(cid), cudaFree(gq), cudaFree(gp), cudaFree(gc);
    return 0;
}

/* Device buffers of one loss benchmark: bf16 queries and passages, f32 gradients, saved
 * statistics, per-query losses, and the inputs pointing at them. */
typedef struct {
    uint16_t *q, *p;
    float *saved, *pq, *gq, *gp;
    ns_infonce_inputs in;
} loss_buffers;

static loss_buffers loss_buffers_make(int64_t B, int64_t N, int64_t d) {
    loss_buffers b;
    CK(cudaMalloc((void **)&b.q, (size_t)(B * d) * 2));
    CK(cudaMalloc((void **)&b.p, (size_t)(N * d) * 2));
    CK(cudaMalloc((void **)&b.saved, (size_t)(B * NS_INFONCE_SAVED_PER_QUERY) * 4));
    CK(cudaMalloc((void **)&b.pq, (size_t)B * 4));
    CK(cudaMalloc((void **)&b.gq, (size_t)(B * d) * 4));
    CK(cudaMalloc((void **)&b.gp, (size_t)(N * d) * 4));
    fill_bf16(b.q, (size_t)(B * d), 0.05f);
    fill_bf16(b.p, (size_t)(N * d), 0.05f);
    memset(&b.in, 0, sizeof b.in);
    b.in.query = bf16_matrix(b.q, B, d);
    b.in.passage = bf16_matrix(b.p, N, d);
    b.in.hard.dtype = b.in.extra.dtype = NS_BF16;
    b.in.hard.cols = b.in.extra.cols = d;
    return b;
}

static void loss_buffers_free(loss_buffers *b) {
    cudaFree(b->q), cudaFree(b->p), cudaFree(b->saved), cudaFree(b->pq), cudaFree(b->gq),
        cudaFree(b->gp);
}

static int bench_loss(int64_t B, int64_t N, int64_t d) {
    ns_context *ctx = make_ctx();
    loss_buffers b = loss_buffers_make(B, N, d);
    float *saved = b.saved, *pq = b.pq, *gq = b.gq, *gp = b.gp, loss, dtau;
    const ns_infonce_inputs in = b.in;
    ns_loss_options o = NS_LOSS_OPTIONS_INIT;
    ns_infonce_grads g = {gq, gp, NULL, &dtau};
    size_t free0, free1, total;
    CK(cudaDeviceSynchronize());
    CK(cudaMemGetInfo(&free0, &total));
    NS(ctx, ns_infonce_forward(ctx, &in, &o, &loss, pq, saved));
    NS(ctx, ns_infonce_backward(ctx, &in, &o, saved, 1.0f, &g));
    CK(cudaDeviceSynchronize());
    CK(cudaMemGetInfo(&free1, &total));
    double best_f = 1e30, best_fb = 1e30;
    for (int r = 0; r < 3; r++) {
        tic();
        NS(ctx, ns_infonce_forward(ctx, &in, &o, &loss, pq, saved));
        double mf = toc_ms();
        NS(ctx, ns_infonce_backward(ctx, &in, &o, saved, 1.0f, &g));
        double mfb = mf + toc_ms();
        if (mf < best_f) best_f = mf;
        if (mfb < best_fb) best_fb = mfb;
    }
    /* Largest B = N that fits, estimated: inputs (bf16) + gradients (f32) + saved statistics grow
     * with B = N, the extra memory measured here is tiles + O(B + N) (counted at this size). */
    const double per_row = 2.0 * d * 2 + 2.0 * d * 4 + NS_INFONCE_SAVED_PER_QUERY * 4 + 4 + 64;
    const double avail = (double)free1 + (double)(B * d * 2 + N * d * 2) + (double)(B * d * 4 + N * d * 4);
    printf("{\"bench\":\"infonce_fwd_bwd\",\"gpu\":\"%s\",\"B\":%lld,\"N\":%lld,\"d\":%lld,"
           "\"dtype\":\"bf16\",\"forward_ms\":%.3f,\"forward_backward_ms\":%.3f,"
           "\"extra_bytes\":%lld,\"largest_BN_estimate\":%lld,\"loss\":%.6f}\n",
           gpu_name(), (long long)B, (long long)N, (long long)d, best_f, best_fb,
           (long long)(free0 - free1), (long long)(avail / per_row), loss);
    ns_context_destroy(ctx);
    loss_buffers_free(&b);
    return 0;
}

/* cuBLAS bf16 GEMMs doing the fused loss's GEMM work in its tiles (kernels/cuda_infonce.cu,
 * shape: 4096 × 4096 logit tiles): per tile the logits L = Q·Pᵀ (f32 out), dQ += G·P and
 * dP += Gᵀ·Q with G in bf16 — the ceiling the fused loss is measured against. Best of 2 after a
 * warm-up. */
static double loss_gemms_ms(const uint16_t *q, const uint16_t *p, int64_t B, int64_t N, int64_t d) {
    const int64_t tb = B < 4096 ? B : 4096, tn = N < 4096 ? N : 4096;
    float *tile, *gq, *gp;
    uint16_t *g;
    CK(cudaMalloc((void **)&tile, (size_t)(tb * tn) * 4));
    CK(cudaMalloc((void **)&g, (size_t)(tb * tn) * 2));
    CK(cudaMalloc((void **)&gq, (size_t)(B * d) * 4));
    CK(cudaMalloc((void **)&gp, (size_t)(N * d) * 4));
    fill_bf16(g, (size_t)(tb * tn), 0.01f);
    cublasHandle_t h;
    if (cublasCreate(&h) != CUBLAS_STATUS_SUCCESS) exit(2);
    const float one = 1.0f, zero = 0.0f;
    double best = 1e30;
    for (int r = 0; r < 3; r++) {
        tic();
        for (int64_t r0 = 0; r0 < B; r0 += tb) {
            const int m = (int)(B - r0 < tb ? B - r0 : tb);
            for (int64_t j0 = 0; j0 < N; j0 += tn) {
                const int n = (int)(N - j0 < tn ? N - j0 : tn);
                /* row-major: L (m×n) = Q·Pᵀ; dQ (m×d) += G·P; dP (n×d) += Gᵀ·Q */
                cublasStatus_t s1 = cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, n, m, (int)d, &one, p + j0 * d,
                                                 CUDA_R_16BF, (int)d, q + r0 * d, CUDA_R_16BF, (int)d, &zero,
                                                 tile, CUDA_R_32F, n, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
                cublasStatus_t s2 = cublasGemmEx(h, CUBLAS_OP_N, CUBLAS_OP_N, (int)d, m, n, &one, p + j0 * d,
                                                 CUDA_R_16BF, (int)d, g, CUDA_R_16BF, n, &one, gq + r0 * d,
                                                 CUDA_R_32F, (int)d, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
                cublasStatus_t s3 = cublasGemmEx(h, CUBLAS_OP_N, CUBLAS_OP_T, (int)d, n, m, &one, q + r0 * d,
                                                 CUDA_R_16BF, (int)d, g, CUDA_R_16BF, n, &one, gp + j0 * d,
                                                 CUDA_R_32F, (int)d, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
                if (s1 || s2 || s3) exit(2);
            }
        }
        double ms = toc_ms();
        if (r > 0 && ms < best) best = ms;
    }
    cublasDestroy(h);
    cudaFree(tile), cudaFree(g), cudaFree(gq), cudaFree(gp);
    return best;
}

/* The fused forward + backward against the forward then the backward, bf16, plain (sym 0) or
 * symmetric (sym 1), each on its own context (its workspace measured alone), interleaved. */
static int bench_loss_fused(int64_t B, int64_t N, int64_t d, int sym) {
    loss_buffers b = loss_buffers_make(B, N, d);
    float *saved = b.saved, *pq = b.pq, *gq = b.gq, *gp = b.gp, loss[2], dtau[2];
    const ns_infonce_inputs in = b.in;
    ns_loss_options o = NS_LOSS_OPTIONS_INIT;
    o.symmetric = sym;
    ns_context *ctx[2] = {make_ctx(), make_ctx()}; /* 0: fused, 1: two calls */
    long long extra[2];
    for (int k = 0; k < 2; k++) { /* warm-up: sizes each context's workspace */
        size_t f0, f1, total;
        ns_infonce_grads g = {gq, gp, NULL, &dtau[k]};
        CK(cudaDeviceSynchronize());
        CK(cudaMemGetInfo(&f0, &total));
        if (k == 0) {
            NS(ctx[0], ns_infonce_forward_backward(ctx[0], &in, &o, 1.0f, &loss[0], pq, saved, &g));
        } else {
            NS(ctx[1], ns_infonce_forward(ctx[1], &in, &o, &loss[1], pq, saved));
            NS(ctx[1], ns_infonce_backward(ctx[1], &in, &o, saved, 1.0f, &g));
        }
        CK(cudaDeviceSynchronize());
        CK(cudaMemGetInfo(&f1, &total));
        extra[k] = (long long)f0 - (long long)f1;
    }
    double t[2][3];
    for (int r = 0; r < 3; r++)
        for (int k = 0; k < 2; k++) {
            ns_infonce_grads g = {gq, gp, NULL, &dtau[k]};
            tic();
            if (k == 0) {
                NS(ctx[0], ns_infonce_forward_backward(ctx[0], &in, &o, 1.0f, &loss[0], pq, saved, &g));
            } else {
                NS(ctx[1], ns_infonce_forward(ctx[1], &in, &o, &loss[1], pq, saved));
                NS(ctx[1], ns_infonce_backward(ctx[1], &in, &o, saved, 1.0f, &g));
            }
            t[k][r] = toc_ms();
        }
    const double fused = median3(t[0]), two = median3(t[1]), gemm = loss_gemms_ms(b.q, b.p, B, N, d);
    printf("{\"bench\":\"infonce_fused\",\"gpu\":\"%s\",\"B\":%lld,\"N\":%lld,\"d\":%lld,"
           "\"dtype\":\"bf16\",\"symmetric\":%d,\"fused_ms\":%.3f,\"two_calls_ms\":%.3f,"
           "\"cublas_3gemm_ms\":%.3f,\"fused_fraction_of_cublas\":%.3f,\"two_calls_over_fused\":%.3f,"
           "\"gemm_tflops_counted\":%.1f,\"fused_extra_bytes\":%lld,\"two_calls_extra_bytes\":%lld,"
           "\"loss_fused\":%.6f,\"loss_two_calls\":%.6f}\n",
           gpu_name(), (long long)B, (long long)N, (long long)d, sym, fused, two, gemm, gemm / fused, two / fused,
           3 * 2.0 * B * N * d / (fused * 1e-3) / 1e12, extra[0], extra[1], loss[0], loss[1]);
    ns_context_destroy(ctx[0]);
    ns_context_destroy(ctx[1]);
    loss_buffers_free(&b);
    return 0;
}

static int bench_sample(int64_t B, int64_t C, int64_t m) {
    ns_context *ctx = make_ctx();
    float *score, *sp, *osc;
    int64_t *id, *idx, *cnt;
    CK(cudaMalloc((void **)&score, (size_t)(B * C) * 4));
    CK(cudaMalloc((void **)&id, (size_t)(B * C) * 8));
    CK(cudaMalloc((void **)&sp, (size_t)B * 4));
    CK(cudaMalloc((void **)&idx, (size_t)(B * m) * 8));
    CK(cudaMalloc((void **)&osc, (size_t)(B * m) * 4));
    CK(cudaMalloc((void **)&cnt, (size_t)B * 8));
    fill_f32(score, (size_t)(B * C), 1.0f);
    fill_f32(sp, (size_t)B, 1.0f);
    {   /* ids: row i holds i·C + j (distinct, as mined candidates are) */
        const size_t chunk = (size_t)1 << 22;
        int64_t *h;
        CK(cudaMallocHost((void **)&h, chunk * 8));
        for (size_t o = 0; o < (size_t)(B * C); o += chunk) {
            size_t n = (size_t)(B * C) - o < chunk ? (size_t)(B * C) - o : chunk;
            for (size_t i = 0; i < n; i++) h[i] = (int64_t)(o + i);
            CK(cudaMemcpy(id + o, h, n * 8, cudaMemcpyHostToDevice));
        }
        CK(cudaFreeHost(h));
    }
    ns_candidates cand;
    memset(&cand, 0, sizeof cand);
    cand.queries = B;
    cand.per_query = C;
    cand.id = id;
    cand.score = score;
    cand.positive_score = sp;
    ns_sampler_options o = NS_SAMPLER_OPTIONS_INIT;
    o.strategy = NS_SAMPLE_SIMANS;
    o.seed = 42;
    /* The paths (kernels/cuda_sample.cu): the default, then each one forced where it can run
     * this shape (stream: m ≤ 512; shared: 13·P bytes within the opt-in shared memory). Each
     * warmed up once (workspace), then rounds of [copy, every path] interleaved, median of 3. */
    const char *pp[4];
    int np = 0, optin = 0, P = 1;
    while (P < C) P <<= 1;
    CK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, 0));
    pp[np++] = "";
    if (m <= 512) pp[np++] = "stream";
    if ((int64_t)P * 13 <= optin) pp[np++] = "shared";
    pp[np++] = "global";
    double t[4][3], cv[3];
    float *copy;
    CK(cudaMalloc((void **)&copy, (size_t)(B * C) * 4));
    for (int p = 0; p < np; p++) {
        if (pp[p][0]) setenv("NS_CUDA_SAMPLE_PATH", pp[p], 1);
        else unsetenv("NS_CUDA_SAMPLE_PATH");
        NS(ctx, ns_sample(ctx, &cand, NULL, &o, m, idx, osc, cnt));
    }
    CK(cudaMemcpyAsync(copy, score, (size_t)(B * C) * 4, cudaMemcpyDeviceToDevice, 0));
    for (int r = 0; r < 3; r++) {
        /* one device copy of the scores (reads them once, and writes them) */
        tic();
        CK(cudaMemcpyAsync(copy, score, (size_t)(B * C) * 4, cudaMemcpyDeviceToDevice, 0));
        cv[r] = toc_ms();
        for (int p = 0; p < np; p++) {
            if (pp[p][0]) setenv("NS_CUDA_SAMPLE_PATH", pp[p], 1);
            else unsetenv("NS_CUDA_SAMPLE_PATH");
            tic();
            NS(ctx, ns_sample(ctx, &cand, NULL, &o, m, idx, osc, cnt));
            t[p][r] = toc_ms();
        }
    }
    unsetenv("NS_CUDA_SAMPLE_PATH");
    cudaFree(copy);
    double med[4];
    for (int p = 0; p < np; p++) qsort(t[p], 3, sizeof(double), cmp_double), med[p] = t[p][1];
    qsort(cv, 3, sizeof(double), cmp_double);
    const double best = med[0], copy_best = cv[1];
    printf("{\"bench\":\"sample_simans\",\"gpu\":\"%s\",\"B\":%lld,\"C\":%lld,\"m\":%lld,\"ms\":%.3f,"
           "\"score_bytes\":%lld,\"input_bytes\":%lld,\"copy_scores_ms\":%.3f,\"ratio_to_copy\":%.3f",
           gpu_name(), (long long)B, (long long)C, (long long)m, best, (long long)(B * C * 4),
           (long long)(B * C * 12 + B * 4), copy_best, best / copy_best);
    for (int p = 1; p < np; p++) printf(",\"forced_%s_ms\":%.3f", pp[p], med[p]);
    printf("}\n");
    ns_context_destroy(ctx);
    cudaFree(score);
    cudaFree(id);
    cudaFree(sp);
    cudaFree(idx);
    cudaFree(osc);
    cudaFree(cnt);
    return 0;
}

static int64_t arg(int argc, char **argv, int i, int64_t dflt) {
    return i < argc ? strtoll(argv[i], NULL, 10) : dflt;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s gemm|copy|mine|mine32|step|loss|lossfused|sample [sizes...]\n", argv[0]);
        return 1;
    }
    if (ns_cuda_device_count() == 0) {
        fprintf(stderr, "%s: no CUDA device\n", argv[0]);
        return 4;
    }
    CK(cudaEventCreate(&ev0));
    CK(cudaEventCreate(&ev1));
    const char *w = argv[1];
    if (!strcmp(w, "gemm")) return bench_gemm(arg(argc, argv, 2, 8192), arg(argc, argv, 3, 65536), arg(argc, argv, 4, 768));
    if (!strcmp(w, "copy")) return bench_copy((size_t)arg(argc, argv, 2, (int64_t)4 << 30));
    if (!strcmp(w, "mine"))
        return bench_mine(arg(argc, argv, 2, 8192), arg(argc, argv, 3, 2000000), arg(argc, argv, 4, 768),
                          arg(argc, argv, 5, 256), argc > 6 && !strcmp(argv[6], "host"));
    if (!strcmp(w, "mine32"))
        return bench_mine_f32(arg(argc, argv, 2, 8192), arg(argc, argv, 3, 2000000), arg(argc, argv, 4, 768),
                              arg(argc, argv, 5, 256));
    if (!strcmp(w, "step"))
        return bench_step(arg(argc, argv, 2, 4096), arg(argc, argv, 3, 64), arg(argc, argv, 4, 768),
                          arg(argc, argv, 5, 8));
    if (!strcmp(w, "loss")) return bench_loss(arg(argc, argv, 2, 32768), arg(argc, argv, 3, 32768), arg(argc, argv, 4, 768));
    if (!strcmp(w, "lossfused"))
        return bench_loss_fused(arg(argc, argv, 2, 32768), arg(argc, argv, 3, 32768), arg(argc, argv, 4, 768),
                                (int)arg(argc, argv, 5, 0));
    if (!strcmp(w, "sample")) return bench_sample(arg(argc, argv, 2, 1000000), arg(argc, argv, 3, 1024), arg(argc, argv, 4, 16));
    fprintf(stderr, "%s: unknown benchmark %s\n", argv[0], w);
    return 1;
}
#endif /* NS_HAVE_CUDA */
