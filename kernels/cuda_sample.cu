// ns_filter and ns_sample on CUDA: the same decisions as the CPU backend (src/filter.c,
// src/sample.c) from the same scores, through the shared kernels/ns_math.h (filter rules,
// Philox4x32-10, Gumbel keys; -fmad=false keeps every operation as written).
//
// Both first validate the candidate data on the device (ids ≥ −1, finite scores of non-empty
// slots, finite s⁺/g⁺ where a rule or strategy uses them, positive lists) and synchronise once
// to report a failure before any output is written; while the stream is captured into a CUDA
// graph that check is skipped. ns_filter synchronises a second time only when counts (host
// memory) are asked for.
#include <climits>

#include "cuda_util.cuh"
#include "ns_cuda.h"
#include "ns_math.h"

namespace {

// Wide slots (first bad flat index, stored as ULLONG_MAX − index so atomicMax keeps the first).
enum { W_ID = 0, W_SCORE = 1, W_GUIDE = 2, W_SP = 3, W_GP = 4, W_POS = 5, W_COUNTS = 8 };
// Counts, in ns_filter_counts order after examined.
enum { C_KEPT = 0, C_REMOVED, C_EMPTY, C_SAME_ID, C_MAX, C_MIN, C_MARGIN, C_REL, C_RANK, C_GUIDE, C_N };

__device__ __forceinline__ void note_first(unsigned long long *w, int slot, int64_t t) {
    atomicMax(w + slot, ULLONG_MAX - (unsigned long long)t);
}
static inline int64_t first_of(const unsigned long long *w, int slot) {
    return w[slot] ? (int64_t)(ULLONG_MAX - w[slot]) : -1;
}

struct CandArgs {
    int64_t B, C;
    const int64_t *id;
    const float *score;
    const float *sp;        // checked when non-NULL
    const float *guide;     // checked when non-NULL
    const float *gp;        // checked when non-NULL
    const int64_t *pos_off; // positive lists (offsets checked) when non-NULL
    const int64_t *pos_ids;
};

__global__ void ns_k_check_candidates(CandArgs a, unsigned long long *w) {
    const int64_t n = a.B * a.C;
    for (int64_t t = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; t < n;
         t += (int64_t)gridDim.x * blockDim.x) {
        int64_t id = a.id[t];
        if (id == -1) continue;
        if (id < -1) note_first(w, W_ID, t);
        if (!isfinite(a.score[t])) note_first(w, W_SCORE, t);
        if (a.guide && !isfinite(a.guide[t])) note_first(w, W_GUIDE, t);
    }
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < a.B;
         i += (int64_t)gridDim.x * blockDim.x) {
        if (a.sp && !isfinite(a.sp[i])) note_first(w, W_SP, i);
        if (a.gp && !isfinite(a.gp[i])) note_first(w, W_GP, i);
        if (a.pos_off) {
            int64_t lo = a.pos_off[i], hi = a.pos_off[i + 1];
            if ((i == 0 && lo != 0) || hi < lo || (hi > lo && !a.pos_ids)) note_first(w, W_POS, i);
        }
    }
}

// Launches the check, synchronises and turns the first failure into the CPU backend's message.
ns_status check_candidates(ns_context *ctx, const char *fn, const CandArgs &a) {
    if (!ns_cuda_validating(ctx)) return NS_OK;
    int *flags;
    const int *hf;
    ns_status rc;
    if ((rc = ns_cuda_flags_reset(ctx, fn, &flags))) return rc;
    ns_k_check_candidates<<<ns_blocks(a.B * a.C), NS_CUDA_THREADS, 0, ns_stream(ctx)>>>(
        a, NS_CUDA_WIDE(flags));
    NS_CUDA_TRY(ctx, fn, cudaGetLastError());
    if ((rc = ns_cuda_flags_read(ctx, fn, &hf))) return rc;
    const unsigned long long *w = NS_CUDA_WIDE(hf);
    int64_t t;
    if ((t = first_of(w, W_ID)) >= 0)
        return ns_fail(ctx, NS_ERR_INVALID_ARGUMENT,
                       "%s: cand->id[%lld] is negative (expected -1 for an empty slot or an id >= 0)",
                       fn, (long long)t);
    if ((t = first_of(w, W_SCORE)) >= 0)
        return ns_fail(ctx, NS_ERR_NONFINITE,
                       "%s: cand->score[%lld] (query %lld, column %lld) is not finite (expected finite)",
                       fn, (long long)t, (long long)(t / a.C), (long long)(t % a.C));
    if ((t = first_of(w, W_GUIDE)) >= 0)
        return ns_fail(ctx, NS_ERR_NONFINITE,
                       "%s: cand->guide_score[%lld] (query %lld, column %lld) is not finite "
                       "(expected finite)",
                       fn, (long long)t, (long long)(t / a.C), (long long)(t % a.C));
    if ((t = first_of(w, W_SP)) >= 0)
        return ns_fail(ctx, NS_ERR_NONFINITE, "%s: cand->positive_score[%lld] is not finite (expected finite)",
                       fn, (long long)t);
    if ((t = first_of(w, W_GP)) >= 0)
        return ns_fail(ctx, NS_ERR_NONFINITE,
                       "%s: cand->guide_positive_score[%lld] is not finite (expected finite)", fn,
                       (long long)t);
    if ((t = first_of(w, W_POS)) >= 0)
        return ns_fail(ctx, NS_ERR_INVALID_ARGUMENT,
                       "%s: cand->positive_id lists are malformed at query %lld (offsets must start "
                       "at 0 and never decrease; ids must not be NULL when lists hold ids)",
                       fn, (long long)t);
    return NS_OK;
}

// ------------------------------------------------------------------ filter

struct FilterArgs {
    int64_t B, C;
    const int64_t *id;
    const float *score, *sp, *guide, *gp;
    const int64_t *pos_off, *pos_ids;  // NS_FILTER_SAME_ID
    ns_filter_options o;
    uint8_t *keep;
    unsigned long long *counts;        // C_N counters, or NULL
};

__global__ void ns_k_filter(FilterArgs a) {
    const int64_t n = a.B * a.C;
    // Every thread of the block runs the same number of iterations (barriers inside).
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    const int64_t first = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
    const int64_t rounds = (n - (int64_t)blockIdx.x * blockDim.x + stride - 1) / stride;
    for (int64_t r = 0; r < rounds; r++) {
        const int64_t t = first + r * stride;
        unsigned hit = 0;
        int live = 0, empty = 0;
        if (t < n) {
            const int64_t i = t / a.C, j = t - i * a.C, id = a.id[t];
            if (id == -1) {
                a.keep[t] = 0;
                empty = 1;
            } else {
                live = 1;
                const float sp = a.sp ? a.sp[i] : 0.0f;
                const float gp = a.gp ? a.gp[i] : 0.0f;
                const float g = a.guide ? a.guide[t] : 0.0f;
                hit = ns_filter_hits(&a.o, a.score[t], sp, g, gp, j);
                if (a.pos_off)
                    for (int64_t p = a.pos_off[i]; p < a.pos_off[i + 1]; p++)
                        if (a.pos_ids[p] == id) {
                            hit |= NS_FILTER_SAME_ID;
                            break;
                        }
                a.keep[t] = hit == 0;
            }
        }
        if (a.counts) {
            int c[C_N];
            c[C_KEPT] = __syncthreads_count(live && !hit);
            c[C_REMOVED] = __syncthreads_count(live && hit);
            c[C_EMPTY] = __syncthreads_count(empty);
            c[C_SAME_ID] = __syncthreads_count(hit & NS_FILTER_SAME_ID);
            c[C_MAX] = __syncthreads_count(hit & NS_FILTER_MAX_SCORE);
            c[C_MIN] = __syncthreads_count(hit & NS_FILTER_MIN_SCORE);
            c[C_MARGIN] = __syncthreads_count(hit & NS_FILTER_MARGIN);
            c[C_REL] = __syncthreads_count(hit & NS_FILTER_REL_MARGIN);
            c[C_RANK] = __syncthreads_count(hit & NS_FILTER_RANK);
            c[C_GUIDE] = __syncthreads_count(hit & (NS_FILTER_GUIDE | NS_FILTER_GUIDE_REL));
            if (threadIdx.x == 0)
                for (int k = 0; k < C_N; k++)
                    if (c[k]) atomicAdd(a.counts + k, (unsigned long long)c[k]);
        }
    }
}

}  // namespace

ns_status ns_cuda_filter(ns_context *ctx, const ns_candidates *cand, const ns_filter_options *o,
                         uint8_t *keep, ns_filter_counts *counts) {
    static const char *fn = "ns_filter";
    const unsigned r = o->rules;
    const int same_id = (r & NS_FILTER_SAME_ID) != 0;
    const int need_sp = (r & (NS_FILTER_MARGIN | NS_FILTER_REL_MARGIN)) != 0;
    const int need_guide = (r & (NS_FILTER_GUIDE | NS_FILTER_GUIDE_REL)) != 0;
    const int64_t B = cand->queries, C = cand->per_query;
    ns_status rc;
    CandArgs ca;
    ca.B = B, ca.C = C, ca.id = cand->id, ca.score = cand->score;
    ca.sp = need_sp ? cand->positive_score : nullptr;
    ca.guide = need_guide ? cand->guide_score : nullptr;
    ca.gp = need_guide ? cand->guide_positive_score : nullptr;
    ca.pos_off = same_id ? cand->positive_id->offsets : nullptr;
    ca.pos_ids = same_id ? cand->positive_id->ids : nullptr;
    if (same_id && cand->positive_id->queries != B)
        return ns_fail(ctx, NS_ERR_INVALID_ARGUMENT,
                       "%s: cand->positive_id->queries (%lld) differs from cand->queries (%lld)", fn,
                       (long long)cand->positive_id->queries, (long long)B);
    if (counts && ns_cuda_capturing(ctx))
        return ns_fail(ctx, NS_ERR_UNSUPPORTED,
                       "%s: counts are host memory and need a synchronisation, which a stream "
                       "being captured into a CUDA graph cannot do (pass counts = NULL)",
                       fn);
    if ((rc = check_candidates(ctx, fn, ca))) return rc;

    FilterArgs fa;
    fa.B = B, fa.C = C, fa.id = cand->id, fa.score = cand->score;
    fa.sp = cand->positive_score, fa.guide = cand->guide_score, fa.gp = cand->guide_positive_score;
    fa.pos_off = ca.pos_off, fa.pos_ids = ca.pos_ids, fa.o = *o, fa.keep = keep;
    fa.counts = nullptr;
    int *flags = nullptr;
    if (counts) {
        if ((rc = ns_cuda_flags_reset(ctx, fn, &flags))) return rc;
        fa.counts = NS_CUDA_WIDE(flags) + W_COUNTS;
    }
    ns_k_filter<<<ns_blocks(B * C), NS_CUDA_THREADS, 0, ns_stream(ctx)>>>(fa);
    NS_CUDA_TRY(ctx, fn, cudaGetLastError());
    if (counts) {
        const int *hf;
        if ((rc = ns_cuda_flags_read(ctx, fn, &hf))) return rc;
        const unsigned long long *c = NS_CUDA_WIDE(hf) + W_COUNTS;
        counts->examined = B * C;
        counts->kept = (int64_t)c[C_KEPT];
        counts->removed = (int64_t)c[C_REMOVED];
        counts->empty = (int64_t)c[C_EMPTY];
        counts->same_id = (int64_t)c[C_SAME_ID];
        counts->max_score = (int64_t)c[C_MAX];
        counts->min_score = (int64_t)c[C_MIN];
        counts->margin = (int64_t)c[C_MARGIN];
        counts->rel_margin = (int64_t)c[C_REL];
        counts->rank = (int64_t)c[C_RANK];
        counts->guide = (int64_t)c[C_GUIDE];
    }
    return NS_OK;
}

// ------------------------------------------------------------------ sample

namespace {

constexpr int kSampleThreads = 256;
constexpr int kMaxSampleC = 8192;  // candidates per query held in shared memory
constexpr int kInelig = 1 << 30;   // column flag: not eligible (sorts after every eligible one)

struct SampleArgs {
    int64_t C, m;
    int P;  // C rounded up to a power of two
    const int64_t *id;
    const float *score;
    const uint8_t *keep;
    const float *sp;
    int strategy;
    float a, b, tau;
    uint64_t seed, step;
    int64_t query_offset;
    int64_t *index;
    float *out_score;
    int64_t *count;
};

// One block per query. Phase 1 sorts (id, column) of the eligible slots to find the first
// occurrence of every id (a duplicate would draw the same noise; the CPU keeps the first kept
// copy). Phase 2 sorts (key, column) best first — larger key, ties to the lower column, the
// ineligible last — and writes the first m.
__global__ void __launch_bounds__(kSampleThreads) ns_k_sample(SampleArgs a) {
    extern __shared__ unsigned char smem[];
    const int P = a.P;
    int64_t *sid = (int64_t *)smem;                       // phase 1: ids
    int *scol = (int *)(smem + (size_t)P * 8);            // columns (both phases)
    float *skey = (float *)smem;                          // phase 2: keys (over sid)
    unsigned char *first = smem + (size_t)P * 12;         // eligible and first of its id
    const int64_t i = blockIdx.x, C = a.C;
    const int64_t *ids = a.id + i * C;
    const float *s = a.score + i * C;
    const uint8_t *kp = a.keep ? a.keep + i * C : nullptr;

    for (int j = threadIdx.x; j < P; j += blockDim.x) {
        bool elig = j < C && ids[j] != -1 && (!kp || kp[j]);
        sid[j] = elig ? ids[j] : LLONG_MAX;
        scol[j] = elig ? j : j | kInelig;
    }
    __syncthreads();
    for (int size = 2; size <= P; size <<= 1)
        for (int stride = size >> 1; stride > 0; stride >>= 1) {
            for (int t = threadIdx.x; t < (P >> 1); t += blockDim.x) {
                int x = 2 * t - (t & (stride - 1)), y = x + stride;
                bool up = (x & size) == 0;
                int64_t ix = sid[x], iy = sid[y];
                int cx = scol[x], cy = scol[y];
                bool yfirst = iy < ix || (iy == ix && cy < cx);
                if (up ? yfirst : !yfirst) {
                    sid[x] = iy, sid[y] = ix;
                    scol[x] = cy, scol[y] = cx;
                }
            }
            __syncthreads();
        }
    for (int p = threadIdx.x; p < P; p += blockDim.x) {
        int c = scol[p];
        if (!(c & kInelig)) first[c] = p == 0 || sid[p - 1] != sid[p];
        else if ((c & ~kInelig) < P) first[c & ~kInelig] = 0;
    }
    __syncthreads();
    const float sp = a.sp ? a.sp[i] : 0.0f;
    const int64_t qid = a.query_offset + i;
    int n = 0;
    for (int j0 = 0; j0 < P; j0 += blockDim.x) {
        int j = j0 + threadIdx.x;
        bool ok = j < P && first[j];
        if (j < P) {
            skey[j] = ok ? ns_sample_key(a.strategy, s[j], sp, a.a, a.b, a.tau, a.seed, a.step, qid, ids[j])
                         : -INFINITY;
            scol[j] = ok ? j : j | kInelig;
        }
        n += __syncthreads_count(ok);
    }
    __syncthreads();
    for (int size = 2; size <= P; size <<= 1)
        for (int stride = size >> 1; stride > 0; stride >>= 1) {
            for (int t = threadIdx.x; t < (P >> 1); t += blockDim.x) {
                int x = 2 * t - (t & (stride - 1)), y = x + stride;
                bool up = (x & size) == 0;
                float kx = skey[x], ky = skey[y];
                int cx = scol[x], cy = scol[y];
                bool ex = (cx & kInelig) != 0, ey = (cy & kInelig) != 0;
                bool yfirst = ex != ey ? ex : (ky > kx || (ky == kx && cy < cx));
                if (up ? yfirst : !yfirst) {
                    skey[x] = ky, skey[y] = kx;
                    scol[x] = cy, scol[y] = cx;
                }
            }
            __syncthreads();
        }
    const int64_t m = a.m;
    const int64_t found = n < m ? n : m;
    for (int64_t r = threadIdx.x; r < m; r += blockDim.x) {
        if (r < found) {
            int c = scol[r];
            a.index[i * m + r] = ids[c];
            if (a.out_score) a.out_score[i * m + r] = s[c];
        } else {
            a.index[i * m + r] = -1;
            if (a.out_score) a.out_score[i * m + r] = NAN;
        }
    }
    if (threadIdx.x == 0) a.count[i] = found;
}

}  // namespace

ns_status ns_cuda_sample(ns_context *ctx, const ns_candidates *cand, const uint8_t *keep,
                         const ns_sampler_options *o, int64_t m, int64_t *index, float *score,
                         int64_t *count) {
    static const char *fn = "ns_sample";
    const int64_t B = cand->queries, C = cand->per_query;
    ns_status rc;
    if (C > kMaxSampleC)
        return ns_fail(ctx, NS_ERR_UNSUPPORTED,
                       "%s: cand->per_query (%lld) is larger than the CUDA backend's limit (%d "
                       "candidates per query)",
                       fn, (long long)C, kMaxSampleC);
    if (B > INT_MAX)
        return ns_fail(ctx, NS_ERR_UNSUPPORTED, "%s: cand->queries (%lld) exceeds %d on CUDA", fn,
                       (long long)B, INT_MAX);
    const int simans = o->strategy == NS_SAMPLE_SIMANS;
    CandArgs ca;
    ca.B = B, ca.C = C, ca.id = cand->id, ca.score = cand->score;
    ca.sp = simans ? cand->positive_score : nullptr;
    ca.guide = nullptr, ca.gp = nullptr, ca.pos_off = nullptr, ca.pos_ids = nullptr;
    if ((rc = check_candidates(ctx, fn, ca))) return rc;

    int P = 1;
    while (P < C) P <<= 1;
    const size_t shm = (size_t)P * 13;
    if (shm > 48 * 1024)
        NS_CUDA_TRY(ctx, fn, cudaFuncSetAttribute(ns_k_sample, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)shm));
    SampleArgs sa;
    sa.C = C, sa.m = m, sa.P = P, sa.id = cand->id, sa.score = cand->score, sa.keep = keep;
    sa.sp = cand->positive_score, sa.strategy = (int)o->strategy;
    sa.a = o->simans_a, sa.b = o->simans_b, sa.tau = o->temperature;
    sa.seed = o->seed, sa.step = o->step, sa.query_offset = cand->query_offset;
    sa.index = index, sa.out_score = score, sa.count = count;
    ns_k_sample<<<(unsigned)B, kSampleThreads, shm, ns_stream(ctx)>>>(sa);
    NS_CUDA_TRY(ctx, fn, cudaGetLastError());
    return NS_OK;
}
