// ns_mine_topk on CUDA: exact top-k of q·corpusᵀ without the Q×N score matrix.
//
// The corpus goes in tiles of NT rows (outer loop; a host corpus is copied tile by tile through
// two pinned buffers on a copy stream, overlapping the compute of the previous tile). For each
// tile and query block of QB rows, one cuBLAS GEMM writes a QB×NT f32 score tile into
// workspace (sized to stay in L2 on Hopper), then ns_k_topk_tile merges that tile into each
// query's running top-k, kept sorted best first in a Q×k staging area in device memory:
//   one block per query scans its score row against the query's current k-th score (the
//   threshold), collects the rows that beat it (and are not excluded) in shared memory, and
//   whenever the collection is nearly full (and at the end) sorts it (bitonic, in shared
//   memory) and merges it into the running list by merge-path ranks (binary searches), moving
//   only the changed suffix of the list. After a few tiles almost nothing beats the threshold
//   and the kernel is one coalesced read of the score tile.
// Order: score descending, ties to the lower corpus row, so "a before b" is a total order and
// the result is exactly the CPU backend's for equal scores.
// Future work: the fused tensor-core GEMM + selection (scores never leave registers/shared).
#include <climits>
#include <cstring>

#include "cuda_util.cuh"
#include "ns_cuda.h"

namespace {

constexpr int kThreads = 256;
constexpr int kItems = 4;                       // scores per thread per step
constexpr int kStep = kThreads * kItems;        // scores per block per step
constexpr int kCap = 4096;                      // collected candidates (shared memory)
constexpr int kExShared = 256;                  // exclusion ids cached in shared memory
constexpr int kPadIndex = INT_MAX;              // index of an empty slot (score −INF)

// Flag slots of this op.
enum { F_Q = 0, F_CORPUS = 1, F_SCORE = 2, F_EX_OFFSETS = 3, F_EX_IDS = 4 };

__device__ __forceinline__ bool before(float av, int ai, float bv, int bi) {
    return av > bv || (av == bv && ai < bi);
}

// Number of entries of the sorted list (v, i)[0, n) that come before (x, xi).
__device__ __forceinline__ int rank_in(const float *v, const int *ix, int n, float x, int xi) {
    int lo = 0, hi = n;
    while (lo < hi) {
        int mid = (lo + hi) >> 1;
        if (before(v[mid], ix[mid], x, xi)) lo = mid + 1;
        else hi = mid;
    }
    return lo;
}

struct TileArgs {
    const float *score;     // QB×NT tile (ld = ld_score), row b = query q0 + b
    int64_t ld_score;
    int64_t q0;             // first query of the block
    int64_t c0;             // first corpus row of the tile
    int nt;                 // corpus rows in this tile
    int k;
    const float *inv_q;     // Q inverse norms, or NULL (no normalisation)
    const float *inv_c;     // nt inverse norms of this tile, or NULL
    const int64_t *ex_off;  // exclusions (CSR over queries), or NULL
    const int64_t *ex_ids;
    float *top_v;           // Q×k running top-k, sorted best first
    int *top_i;
    float *scr_v;           // QB×k merge scratch
    int *scr_i;
    int *flags;
};

// Sorts the c collected candidates in (cv, ci) best first and merges them into the query's
// running list (tv, ti, length k). Called by the whole block; returns with the list updated.
__device__ void merge_collected(float *cv, int *ci, int c, float *tv, int *ti, float *sv,
                                int *si, int k) {
    int p = 1;
    while (p < c) p <<= 1;
    for (int t = c + threadIdx.x; t < p; t += blockDim.x) {
        cv[t] = -INFINITY;
        ci[t] = kPadIndex;
    }
    __syncthreads();
    // Bitonic sort into "before" order (best first).
    for (int size = 2; size <= p; size <<= 1) {
        for (int stride = size >> 1; stride > 0; stride >>= 1) {
            for (int t = threadIdx.x; t < (p >> 1); t += blockDim.x) {
                int i = 2 * t - (t & (stride - 1));
                int j = i + stride;
                bool up = (i & size) == 0;
                float a = cv[i], b = cv[j];
                int ai = ci[i], bi = ci[j];
                bool swap = up ? before(b, bi, a, ai) : before(a, ai, b, bi);
                if (swap) {
                    cv[i] = b, cv[j] = a;
                    ci[i] = bi, ci[j] = ai;
                }
            }
            __syncthreads();
        }
    }
    // The list keeps its first p0 entries; the merged suffix [p0, k) goes to scratch first.
    const int p0 = rank_in(tv, ti, k, cv[0], ci[0]);
    for (int i = p0 + threadIdx.x; i < k; i += blockDim.x) {
        int pos = i + rank_in(cv, ci, c, tv[i], ti[i]);
        if (pos < k) sv[pos - p0] = tv[i], si[pos - p0] = ti[i];
    }
    for (int j = threadIdx.x; j < c; j += blockDim.x) {
        int pos = j + rank_in(tv, ti, k, cv[j], ci[j]);
        if (pos < k) sv[pos - p0] = cv[j], si[pos - p0] = ci[j];
    }
    __syncthreads();
    for (int i = p0 + threadIdx.x; i < k; i += blockDim.x) tv[i] = sv[i - p0], ti[i] = si[i - p0];
    __syncthreads();
}

__global__ void __launch_bounds__(kThreads) ns_k_topk_tile(TileArgs a) {
    __shared__ float cv[kCap];
    __shared__ int ci[kCap];
    __shared__ int64_t ex[kExShared];
    __shared__ int count;
    __shared__ float thr_v;
    __shared__ int thr_i;
    const int b = blockIdx.x;
    const int64_t qi = a.q0 + b;
    const int k = a.k;
    float *tv = a.top_v + qi * k;
    int *ti = a.top_i + qi * k;
    float *sv = a.scr_v + (int64_t)b * k;
    int *si = a.scr_i + (int64_t)b * k;
    const float *row = a.score + b * a.ld_score;
    const float sq = a.inv_q ? a.inv_q[qi] : 1.0f;
    int64_t e0 = 0, ne = 0;
    if (a.ex_off) {
        e0 = a.ex_off[qi];
        ne = a.ex_off[qi + 1] - e0;
        if (ne < 0) ne = 0;
        for (int t = threadIdx.x; t < ne && t < kExShared; t += blockDim.x) ex[t] = a.ex_ids[e0 + t];
    }
    if (threadIdx.x == 0) {
        count = 0;
        thr_v = tv[k - 1];
        thr_i = ti[k - 1];
    }
    __syncthreads();
    int bad = 0;
    int c = 0;  // candidates collected so far, the same in every thread (read between barriers)
    for (int base = 0; base < a.nt; base += kStep) {
        if (c > kCap - kStep) {  // the next step could overflow the collection: merge it now
            merge_collected(cv, ci, c, tv, ti, sv, si, k);
            if (threadIdx.x == 0) {
                count = 0;
                thr_v = tv[k - 1];
                thr_i = ti[k - 1];
            }
            __syncthreads();
        }
        const float tv_ = thr_v;
        const int ti_ = thr_i;
#pragma unroll
        for (int it = 0; it < kItems; it++) {
            int j = base + it * kThreads + threadIdx.x;
            if (j >= a.nt) break;
            float s = row[j];
            if (a.inv_q) s = s * (sq * a.inv_c[j]);
            if (!isfinite(s)) {
                bad = 1;
                continue;
            }
            int g = (int)(a.c0 + j);
            if (!before(s, g, tv_, ti_)) continue;
            bool excluded = false;
            for (int64_t t = 0; t < ne && !excluded; t++)
                excluded = (t < kExShared ? ex[t] : a.ex_ids[e0 + t]) == (int64_t)g;
            if (excluded) continue;
            int p = atomicAdd(&count, 1);
            cv[p] = s;
            ci[p] = g;
        }
        // Two barriers: every append is done before c is read, and every thread has read c
        // before the next step appends again.
        __syncthreads();
        c = count;
        __syncthreads();
    }
    if (c > 0) merge_collected(cv, ci, c, tv, ti, sv, si, k);
    if (bad) a.flags[F_SCORE] = 1;
}

__global__ void ns_k_topk_init(float *v, int *ix, int64_t n) {
    for (int64_t e = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; e < n;
         e += (int64_t)gridDim.x * blockDim.x) {
        v[e] = -INFINITY;
        ix[e] = kPadIndex;
    }
}

__global__ void ns_k_topk_finish(const float *v, const int *ix, int64_t n, int64_t *index,
                                 float *score) {
    for (int64_t e = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; e < n;
         e += (int64_t)gridDim.x * blockDim.x) {
        int i = ix[e];
        index[e] = i == kPadIndex ? -1 : (int64_t)i;
        score[e] = i == kPadIndex ? -INFINITY : v[e];
    }
}

// Exclusion lists on the device: offsets[0] == 0, non-decreasing, ids in [0, rows).
__global__ void ns_k_check_exclusions(const int64_t *off, const int64_t *ids, int64_t queries,
                                      int64_t rows, int *flags) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < queries;
         i += (int64_t)gridDim.x * blockDim.x) {
        int64_t a = off[i], b = off[i + 1];
        if ((i == 0 && a != 0) || b < a) {
            flags[F_EX_OFFSETS] = 1;
            continue;
        }
        for (int64_t t = a; t < b; t++)
            if (ids[t] < 0 || ids[t] >= rows) flags[F_EX_IDS] = 1;
    }
}

}  // namespace

// Synchronisation: once after validating the exclusion lists and scanning q (so bad input
// fails before any work), once per tile only when a progress callback is set or the corpus is
// in host memory (waiting for the tile before last: at most two tiles in flight), and once at
// the end to learn whether a score was non-finite; the outputs are written after that (async).
// While the stream is captured into a graph none of these checks run.
ns_status ns_cuda_mine_topk(ns_context *ctx, ns_matrix q, ns_matrix corpus, int64_t k,
                            const ns_mine_options *opt, int64_t *index, float *score) {
    static const char *fn = "ns_mine_topk";
    cudaStream_t st = ns_stream(ctx);
    ns_cuda_state *cs = ctx->cuda;
    ns_status rc;
    const int64_t Q = q.rows, N = corpus.rows, d = q.cols;
    if (N >= (int64_t)INT_MAX)
        return ns_fail(ctx, NS_ERR_UNSUPPORTED,
                       "%s: corpus.rows (%lld) is too large for the CUDA backend (at most %d)", fn,
                       (long long)N, INT_MAX - 1);
    const int normalize = (opt->flags & NS_NORMALIZE) != 0;
    const int host_corpus = !ns_cuda_is_device_ptr(corpus.data);
    const int pinned_corpus = host_corpus && ns_cuda_is_pinned_host(corpus.data);
    const int mixed = q.dtype != corpus.dtype;
    const int capturing = ns_cuda_capturing(ctx);
    const int validate = ns_cuda_validating(ctx);
    if (host_corpus && capturing)
        return ns_fail(ctx, NS_ERR_UNSUPPORTED,
                       "%s: a corpus in host memory cannot be streamed while the stream is "
                       "captured into a CUDA graph",
                       fn);
    if (opt->progress && capturing)
        return ns_fail(ctx, NS_ERR_UNSUPPORTED,
                       "%s: options->progress needs the host to wait for tiles, which a stream "
                       "being captured into a CUDA graph cannot do",
                       fn);
    const size_t esz = ns_dtype_size(corpus.dtype);

    // Tile shape: a score tile of at most 8 Mi floats (32 MiB: stays in H100's 50 MB L2).
    const int64_t area = 8ll << 20;
    const int64_t qb = Q < 2048 ? Q : 2048;
    int64_t nt = area / qb;
    if (nt > N) nt = N;
    if (nt > (1 << 20)) nt = 1 << 20;

    // Device workspace: score tile | inv_q | inv_c | 2 corpus tiles (host corpus) | f32 copies
    // (mixed dtypes) | exclusion copies (host lists).
    size_t need = 0;
    const size_t o_tile = need; need += ns_align256((size_t)(qb * nt) * 4);
    const size_t o_iq = need; if (normalize) need += ns_align256((size_t)Q * 4);
    const size_t o_ic = need; if (normalize) need += ns_align256((size_t)nt * 4);
    const size_t ctile_b = ns_align256((size_t)(nt * d) * esz);
    const size_t o_ct = need; if (host_corpus) need += 2 * ctile_b;
    const size_t o_qf = need; if (mixed) need += ns_align256((size_t)(Q * d) * 4);
    const size_t o_cf = need; if (mixed) need += ns_align256((size_t)(nt * d) * 4);
    const ns_id_lists *ex = opt->exclude;
    const int64_t *ex_off = ex ? ex->offsets : nullptr, *ex_ids = ex ? ex->ids : nullptr;
    int64_t ex_total = 0;
    const int host_ex = ex && !ns_cuda_is_device_ptr(ex->offsets);
    const size_t o_ex = need;
    if (host_ex) {  // host lists (allowed for convenience): copied to the device once
        ex_total = ex->offsets[Q];
        need += ns_align256((size_t)(Q + 1) * 8) + ns_align256((size_t)(ex_total > 0 ? ex_total : 1) * 8);
    }
    char *ws = (char *)ns_cuda_workspace(ctx, NS_WS_SIMILARITY, need);
    if (!ws)
        return ns_fail(ctx, NS_ERR_OUT_OF_MEMORY, "%s: cannot allocate %zu bytes of device tile workspace",
                       fn, need);
    const size_t stage_b = ns_align256((size_t)(Q * k) * 4);
    const size_t scr_b = ns_align256((size_t)(qb * k) * 4);
    char *stage = (char *)ns_cuda_workspace(ctx, NS_WS_MINE, 2 * stage_b + 2 * scr_b);
    if (!stage)
        return ns_fail(ctx, NS_ERR_OUT_OF_MEMORY,
                       "%s: cannot allocate %zu bytes of device memory for the staged top-%lld of "
                       "%lld queries",
                       fn, 2 * stage_b + 2 * scr_b, (long long)k, (long long)Q);
    float *top_v = (float *)stage;
    int *top_i = (int *)(stage + stage_b);
    float *scr_v = (float *)(stage + 2 * stage_b);
    int *scr_i = (int *)(stage + 2 * stage_b + scr_b);
    float *tile = (float *)(ws + o_tile);
    float *inv_q = normalize ? (float *)(ws + o_iq) : nullptr;
    float *inv_c = normalize ? (float *)(ws + o_ic) : nullptr;

    if (host_ex) {
        int64_t *doff = (int64_t *)(ws + o_ex);
        int64_t *dids = (int64_t *)(ws + o_ex + ns_align256((size_t)(Q + 1) * 8));
        NS_CUDA_TRY(ctx, fn, cudaMemcpyAsync(doff, ex->offsets, (size_t)(Q + 1) * 8, cudaMemcpyHostToDevice, st));
        if (ex_total > 0)
            NS_CUDA_TRY(ctx, fn, cudaMemcpyAsync(dids, ex->ids, (size_t)ex_total * 8, cudaMemcpyHostToDevice, st));
        ex_off = doff, ex_ids = dids;
    }

    int *flags;
    if ((rc = ns_cuda_flags_reset(ctx, fn, &flags))) return rc;
    if ((rc = ns_cuda_scan_nonfinite(ctx, fn, q, 0, Q, flags, F_Q, st))) return rc;
    if (ex_off) {
        ns_k_check_exclusions<<<ns_blocks(Q), NS_CUDA_THREADS, 0, st>>>(ex_off, ex_ids, Q, N, flags);
        NS_CUDA_TRY(ctx, fn, cudaGetLastError());
    }
    if (validate) {
        const int *hf;
        if ((rc = ns_cuda_flags_read(ctx, fn, &hf))) return rc;
        int64_t r, c;
        if (ns_cuda_first_nonfinite(hf, F_Q, d, &r, &c))
            return ns_fail(ctx, NS_ERR_NONFINITE, "%s: q[%lld][%lld] is not finite; inputs must be finite",
                           fn, (long long)r, (long long)c);
        if (hf[F_EX_OFFSETS])
            return ns_fail(ctx, NS_ERR_INVALID_ARGUMENT,
                           "%s: options->exclude->offsets must start at 0 and never decrease", fn);
        if (hf[F_EX_IDS])
            return ns_fail(ctx, NS_ERR_INVALID_ARGUMENT,
                           "%s: options->exclude->ids holds an id outside the corpus rows [0, %lld)",
                           fn, (long long)N);
    }

    // The queries as the GEMM sees them.
    const void *qdata = q.data;
    ns_dtype gdt = q.dtype;
    int64_t ldq = ns_ld(q);
    if (mixed) {
        if ((rc = ns_cuda_rows_to_f32(ctx, fn, q, 0, Q, (float *)(ws + o_qf), st))) return rc;
        qdata = ws + o_qf, gdt = NS_F32, ldq = d;
    }
    if (normalize && (rc = ns_cuda_row_inv_norms(ctx, fn, q, 0, Q, inv_q, st))) return rc;
    ns_k_topk_init<<<ns_blocks(Q * k), NS_CUDA_THREADS, 0, st>>>(top_v, top_i, Q * k);
    NS_CUDA_TRY(ctx, fn, cudaGetLastError());

    cudaStream_t copy = nullptr;
    cudaEvent_t *copied = cs->ev, *consumed = cs->ev + 2;
    if (host_corpus || opt->progress) {
        if ((rc = ns_cuda_copy_stream(ctx, fn, &copy))) return rc;
        // Work already queued on the stream may still read the workspace the copies overwrite.
        NS_CUDA_TRY(ctx, fn, cudaEventRecord(consumed[0], st));
        NS_CUDA_TRY(ctx, fn, cudaEventRecord(consumed[1], st));
    }
    if (host_corpus && !pinned_corpus && (rc = ns_cuda_pinned(ctx, fn, (size_t)(nt * d) * esz))) return rc;

    const int64_t tiles = (N + nt - 1) / nt;
    for (int64_t t = 0; t < tiles; t++) {
        const int64_t c0 = t * nt, n = N - c0 < nt ? N - c0 : nt;
        const int buf = (int)(t & 1);
        ns_matrix ct = corpus;  // this tile as a matrix whose row 0 is corpus row c0
        ct.rows = n;
        if (host_corpus) {
            char *dtile = ws + o_ct + buf * ctile_b;
            const size_t row_b = (size_t)d * esz, ld_b = (size_t)ns_ld(corpus) * esz;
            const char *src = (const char *)corpus.data + (size_t)c0 * ld_b;
            size_t spitch = ld_b;
            if (!pinned_corpus) {
                // The pinned buffer's previous copy (tile t−2) must have left it.
                NS_CUDA_TRY(ctx, fn, cudaEventSynchronize(copied[buf]));
                char *pin = (char *)cs->pinned[buf];
                if (ld_b == row_b) memcpy(pin, src, (size_t)n * row_b);
                else
                    for (int64_t r = 0; r < n; r++) memcpy(pin + r * row_b, src + r * ld_b, row_b);
                src = pin, spitch = row_b;
            }
            NS_CUDA_TRY(ctx, fn, cudaStreamWaitEvent(copy, consumed[buf], 0));
            NS_CUDA_TRY(ctx, fn, cudaMemcpy2DAsync(dtile, row_b, src, spitch, row_b, (size_t)n,
                                                   cudaMemcpyHostToDevice, copy));
            NS_CUDA_TRY(ctx, fn, cudaEventRecord(copied[buf], copy));
            NS_CUDA_TRY(ctx, fn, cudaStreamWaitEvent(st, copied[buf], 0));
            ct.data = dtile;
            ct.ld = d;
        } else {
            ct.data = (const char *)corpus.data + (size_t)(c0 * ns_ld(corpus)) * esz;
        }
        if (validate && (rc = ns_cuda_scan_nonfinite(ctx, fn, ct, 0, n, flags, F_CORPUS, st, c0)))
            return rc;
        if (normalize && (rc = ns_cuda_row_inv_norms(ctx, fn, ct, 0, n, inv_c, st))) return rc;
        const void *cdata = ct.data;
        int64_t ldc = ns_ld(ct);
        if (mixed) {
            if ((rc = ns_cuda_rows_to_f32(ctx, fn, ct, 0, n, (float *)(ws + o_cf), st))) return rc;
            cdata = ws + o_cf, ldc = d;
        }
        for (int64_t q0 = 0; q0 < Q; q0 += qb) {
            const int64_t nq = Q - q0 < qb ? Q - q0 : qb;
            const void *qblk = (const char *)qdata + (size_t)(q0 * ldq) * ns_dtype_size(gdt);
            if ((rc = ns_cuda_gemm(ctx, fn, 0, 1, nq, n, d, opt->scale, qblk, gdt, ldq, cdata, gdt,
                                   ldc, 0.0f, tile, n)))
                return rc;
            TileArgs a;
            a.score = tile, a.ld_score = n, a.q0 = q0, a.c0 = c0, a.nt = (int)n, a.k = (int)k;
            a.inv_q = inv_q, a.inv_c = inv_c, a.ex_off = ex_off, a.ex_ids = ex_ids;
            a.top_v = top_v, a.top_i = top_i, a.scr_v = scr_v, a.scr_i = scr_i, a.flags = flags;
            ns_k_topk_tile<<<(unsigned)nq, kThreads, 0, st>>>(a);
            NS_CUDA_TRY(ctx, fn, cudaGetLastError());
        }
        if (copy) NS_CUDA_TRY(ctx, fn, cudaEventRecord(consumed[buf], st));
        if (opt->progress) {
            if (t >= 1) NS_CUDA_TRY(ctx, fn, cudaEventSynchronize(consumed[buf ^ 1]));
            if (opt->progress(c0 + n, N, opt->progress_user)) {
                cudaStreamSynchronize(st);  // the queued tiles still use the workspace
                return ns_fail(ctx, NS_ERR_INVALID_ARGUMENT,
                               "%s: cancelled by the progress callback after %lld of %lld corpus rows",
                               fn, (long long)(c0 + n), (long long)N);
            }
        }
    }
    if (validate) {
        const int *hf;
        if ((rc = ns_cuda_flags_read(ctx, fn, &hf))) return rc;
        int64_t r, c;
        if (ns_cuda_first_nonfinite(hf, F_CORPUS, d, &r, &c))
            return ns_fail(ctx, NS_ERR_NONFINITE, "%s: corpus[%lld][%lld] is not finite; inputs must be finite",
                           fn, (long long)r, (long long)c);
        if (hf[F_SCORE])
            return ns_fail(ctx, NS_ERR_NONFINITE,
                           "%s: a score is non-finite although the inputs are finite: q·corpus "
                           "overflows f32 (scale the embeddings or options->scale down)",
                           fn);
    }
    ns_k_topk_finish<<<ns_blocks(Q * k), NS_CUDA_THREADS, 0, st>>>(top_v, top_i, Q * k, index, score);
    NS_CUDA_TRY(ctx, fn, cudaGetLastError());
    return NS_OK;
}
