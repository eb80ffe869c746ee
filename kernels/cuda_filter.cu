// ns_filter on CUDA: the same decisions as the CPU backend (src/cpu/cpu_filter.c) from the same
// scores, through ns_filter_hits (src/hostdevice/ns_math.h; -fmad=false keeps every operation
// as written), and the device check of candidate data that ns_sample shares.
//
// The check validates the candidate data on the device (ids ≥ −1, finite scores of non-empty
// slots, finite s⁺/g⁺ where a rule or strategy uses them, positive lists) and synchronises once
// to report a failure before any output is written; while the stream is captured into a CUDA
// graph it is skipped. ns_filter synchronises a second time only when counts (host memory) are
// asked for. Inside the checked training step neither synchronises: the check and the counts go
// to the step's deferred words, read once at the end of its forward (kernels/cuda_step_checks.cu).
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

__global__ void ns_k_check_candidates(NsCandArgs a, unsigned long long *w) {
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

}  // namespace

// Launches the check, synchronises and turns the first failure into the CPU backend's message.
// While the checked step defers (ctx->cuda->deferring) the check goes to the step's words and
// is read, with the rest, at the end of its forward (ns_cuda_candidates_error there).
ns_status ns_cuda_check_candidates(ns_context *ctx, const char *fn, const NsCandArgs &a) {
    if (ctx->cuda->unchecked) return NS_OK;  // the caller vouches (or checked it already)
    if (ctx->cuda->deferring) {
        ns_k_check_candidates<<<ns_blocks(a.B * a.C), NS_CUDA_THREADS, 0, ns_stream(ctx)>>>(
            a, NS_CUDA_WIDE(ctx->cuda->defer));
        NS_CUDA_TRY(ctx, fn, cudaGetLastError());
        return NS_OK;
    }
    if (!ns_cuda_validating(ctx)) return NS_OK;
    int *flags;
    const int *hf;
    ns_status rc;
    if ((rc = ns_cuda_flags_reset(ctx, fn, &flags))) return rc;
    ns_k_check_candidates<<<ns_blocks(a.B * a.C), NS_CUDA_THREADS, 0, ns_stream(ctx)>>>(
        a, NS_CUDA_WIDE(flags));
    NS_CUDA_TRY(ctx, fn, cudaGetLastError());
    if ((rc = ns_cuda_flags_read(ctx, fn, &hf))) return rc;
    return ns_cuda_candidates_error(ctx, fn, a.C, NS_CUDA_WIDE(hf));
}

ns_status ns_cuda_candidates_error(ns_context *ctx, const char *fn, int64_t C,
                                   const unsigned long long *w) {
    int64_t t;
    if ((t = first_of(w, W_ID)) >= 0)
        return ns_fail(ctx, NS_ERR_INVALID_ARGUMENT,
                       "%s: cand->id[%lld] is negative (expected -1 for an empty slot or an id >= 0)",
                       fn, (long long)t);
    if ((t = first_of(w, W_SCORE)) >= 0)
        return ns_fail(ctx, NS_ERR_NONFINITE,
                       "%s: cand->score[%lld] (query %lld, column %lld) is not finite (expected finite)",
                       fn, (long long)t, (long long)(t / C), (long long)(t % C));
    if ((t = first_of(w, W_GUIDE)) >= 0)
        return ns_fail(ctx, NS_ERR_NONFINITE,
                       "%s: cand->guide_score[%lld] (query %lld, column %lld) is not finite "
                       "(expected finite)",
                       fn, (long long)t, (long long)(t / C), (long long)(t % C));
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

namespace {


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
    NsCandArgs ca;
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
    if ((rc = ns_cuda_check_candidates(ctx, fn, ca))) return rc;

    FilterArgs fa;
    fa.B = B, fa.C = C, fa.id = cand->id, fa.score = cand->score;
    // Only what the enabled rules need (ca above): a pointer no rule reads is never dereferenced.
    fa.sp = ca.sp, fa.guide = ca.guide, fa.gp = ca.gp;
    fa.pos_off = ca.pos_off, fa.pos_ids = ca.pos_ids, fa.o = *o, fa.keep = keep;
    fa.counts = nullptr;
    int *flags = nullptr;
    const int defer = counts && ctx->cuda->deferring;  // counts read by the step, at its end
    if (defer) {
        fa.counts = NS_CUDA_WIDE(ctx->cuda->defer) + W_COUNTS;
    } else if (counts) {
        if ((rc = ns_cuda_flags_reset(ctx, fn, &flags))) return rc;
        fa.counts = NS_CUDA_WIDE(flags) + W_COUNTS;
    }
    ns_k_filter<<<ns_blocks(B * C), NS_CUDA_THREADS, 0, ns_stream(ctx)>>>(fa);
    NS_CUDA_TRY(ctx, fn, cudaGetLastError());
    if (counts && !defer) {
        const int *hf;
        if ((rc = ns_cuda_flags_read(ctx, fn, &hf))) return rc;
        ns_cuda_filter_counts(NS_CUDA_WIDE(hf), B * C, counts);
    }
    return NS_OK;
}

void ns_cuda_filter_counts(const unsigned long long *w, int64_t examined, ns_filter_counts *counts) {
    const unsigned long long *c = w + W_COUNTS;
    counts->examined = examined;
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

