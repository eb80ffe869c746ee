// ns_infonce_forward / ns_infonce_backward on CUDA, the parts both share: validation of the
// inputs on the device, the plan, the device workspace and the state initialisation. The CPU
// algorithm (src/cpu/cpu_infonce_forward.c, src/cpu/cpu_infonce_backward.c) with the tiles on
// the GPU: see cuda_infonce_forward.cu and cuda_infonce_backward.cu. The row factors are saved
// in the CPU's layout (NS_SAVED_*, src/hostdevice/ns_loss_math.h), so either backend's backward
// can use either backend's forward. Extra memory: two tiles plus O(B + N) statistics (and f32
// copies of the inputs only when their dtypes differ).
//
// Synchronisation: once at the start to validate positives and scan for NaN/Inf (skipped while
// captured), once at the end of the forward for the host loss, and once at the end of the
// backward only when dL/dτ (a host float) is asked for. The forward, and a backward asking for
// dL/dτ, cannot be captured into a CUDA graph (their host outputs need the sync).
#include "cuda_infonce.cuh"

namespace nsloss {
namespace {

__global__ void ns_k_loss_init_cols(InitArgs a) {
    for (int64_t j = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; j < a.N; j += (int64_t)gridDim.x * blockDim.x) {
        a.ispos[j] = 0;
        a.cmax[j] = -INFINITY;
        a.csum[j] = 0.0;
    }
}

__global__ void ns_k_loss_init_rows(InitArgs a) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < a.B; i += (int64_t)gridDim.x * blockDim.x) {
        if (a.m) {
            a.m[i] = -INFINITY;
            a.a[i] = a.w[i] = 0.0;
            a.n[i] = 0;
        }
        if (a.rtau) a.rtau[i] = 0.0;
        int64_t p = ns_loss_positive(&a.ids, i);
        a.posid[i] = ns_loss_passage_id(&a.ids, p);
        if (a.ispos) a.ispos[p] = 1;  // every writer stores 1: benign
    }
}

// Validation: positives in range, inputs finite (first offender recorded).
__global__ void ns_k_loss_check_pos(const int64_t *positive, int64_t B, int64_t N, unsigned long long *w) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < B; i += (int64_t)gridDim.x * blockDim.x)
        if (positive[i] < 0 || positive[i] >= N) atomicMax(w + W_POS, ULLONG_MAX - (unsigned long long)i);
}

__global__ void ns_k_loss_check_saved(const float *saved, int64_t n, unsigned long long *w) {
    for (int64_t e = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; e < n; e += (int64_t)gridDim.x * blockDim.x)
        if (!isfinite(saved[e])) atomicMax(w + W_SAVED, ULLONG_MAX - (unsigned long long)e);
}

}  // namespace

ns_status plan_init(ns_context *ctx, const char *fn, const ns_infonce_inputs *in,
                    const ns_loss_options *o, Plan *P, const float *saved) {
    P->B = in->query.rows, P->N = in->passage.rows, P->d = in->query.cols;
    P->h = in->hard_per_query, P->E = in->extra.rows;
    P->general = o->tau_plus > 0.0f || o->beta > 0.0f;
    P->sym = o->symmetric, P->same = o->mask_same_id;
    P->own_hard = P->h > 0 && !o->share_hard;
    P->share = P->h > 0 && o->share_hard;
    P->tau = o->temperature, P->inv_tau = 1.0f / o->temperature;
    P->ids.positive = in->positive, P->ids.passage_id = in->passage_id;
    P->ids.hard_id = in->hard_id, P->ids.extra_id = in->extra_id, P->ids.hard_keep = in->hard_keep;
    P->ids.same = o->mask_same_id, P->ids.h = P->h, P->ids.posid = nullptr;
    ns_loss_groups g;
    ns_loss_groups_resolve(o, &g);
    P->ids.qgroup = g.query, P->ids.pgroup = g.passage;
    P->ids.hgroup = P->h > 0 ? g.hard : nullptr, P->ids.egroup = P->E > 0 ? g.extra : nullptr;
    P->ids.group_adj = g.weight > 0.0f ? logf(g.weight) : -INFINITY;
    cudaStream_t st = ns_stream(ctx);
    ns_status rc;
    if (ns_cuda_validating(ctx)) {
        int *flags;
        const int *hf;
        if ((rc = ns_cuda_flags_reset(ctx, fn, &flags))) return rc;
        if (in->positive) {
            ns_k_loss_check_pos<<<ns_blocks(P->B), NS_CUDA_THREADS, 0, st>>>(in->positive, P->B, P->N,
                                                                           NS_CUDA_WIDE(flags));
            NS_CUDA_TRY(ctx, fn, cudaGetLastError());
        }
        if ((rc = ns_cuda_scan_nonfinite(ctx, fn, in->query, 0, P->B, flags, W_Q, st))) return rc;
        if ((rc = ns_cuda_scan_nonfinite(ctx, fn, in->passage, 0, P->N, flags, W_P, st))) return rc;
        if (P->h > 0 && (rc = ns_cuda_scan_nonfinite(ctx, fn, in->hard, 0, in->hard.rows, flags, W_H, st)))
            return rc;
        if (P->E > 0 && (rc = ns_cuda_scan_nonfinite(ctx, fn, in->extra, 0, P->E, flags, W_E, st)))
            return rc;
        if (saved) {  // the backward's saved statistics (like the CPU backend, which reads them)
            ns_k_loss_check_saved<<<ns_blocks(P->B * kSaved), NS_CUDA_THREADS, 0, st>>>(
                saved, P->B * kSaved, NS_CUDA_WIDE(flags));
            NS_CUDA_TRY(ctx, fn, cudaGetLastError());
        }
        if ((rc = ns_cuda_flags_read(ctx, fn, &hf))) return rc;
        const unsigned long long *w = NS_CUDA_WIDE(hf);
        if (w[W_POS]) {
            const int64_t i = (int64_t)(ULLONG_MAX - w[W_POS]);
            int64_t v = 0;
            NS_CUDA_TRY(ctx, fn, cudaMemcpy(&v, in->positive + i, sizeof v, cudaMemcpyDeviceToHost));
            return ns_fail(ctx, NS_ERR_INVALID_ARGUMENT,
                           "%s: positive[%lld] (%lld) is not a passage row in [0, %lld)", fn,
                           (long long)i, (long long)v, (long long)P->N);
        }
        static const char *names[] = {"", "query", "passage", "hard", "extra"};
        int64_t r, c;
        for (int s = W_Q; s <= W_E; s++)
            if (ns_cuda_first_nonfinite(hf, s, P->d, &r, &c))
                return ns_fail(ctx, NS_ERR_NONFINITE, "%s: %s[%lld][%lld] is not finite", fn, names[s],
                               (long long)r, (long long)c);
        if (w[W_SAVED])
            return ns_fail(ctx, NS_ERR_NONFINITE,
                           "%s: saved[%lld] is not finite (pass the saved buffer of the forward with "
                           "the same inputs and options)",
                           fn, (long long)(ULLONG_MAX - w[W_SAVED]));
    }
    return NS_OK;
}

static int dtypes_differ(const ns_infonce_inputs *in) {
    ns_dtype t = in->query.dtype;
    return in->passage.dtype != t || (in->hard_per_query > 0 && in->hard.dtype != t) ||
           (in->extra.rows > 0 && in->extra.dtype != t);
}

struct Work {
    const Plan *P;
    int conv, half;
    State *S;
};

static void state_layout(void *plan, ns_arena *a) {
    Work *w = (Work *)plan;
    const Plan &P = *w->P;
    State *s = w->S;
    const int conv = w->conv, half = w->half, sym = P.sym;
    const int64_t tb = s->tb, tn = s->tn;
    s->m = (float *)ns_arena_carve(a, (size_t)P.B * 4);
    s->a = (double *)ns_arena_carve(a, (size_t)P.B * 8);
    s->w = (double *)ns_arena_carve(a, (size_t)P.B * 8);
    s->rtau = (double *)ns_arena_carve(a, (size_t)P.B * 8);
    s->n = (int64_t *)ns_arena_carve(a, (size_t)P.B * 8);
    s->posid = (int64_t *)ns_arena_carve(a, (size_t)P.B * 8);
    s->ispos = sym ? (uint8_t *)ns_arena_carve(a, (size_t)P.N) : nullptr;
    s->cmax = sym ? (double *)ns_arena_carve(a, (size_t)P.N * 8) : nullptr;
    s->csum = sym ? (double *)ns_arena_carve(a, (size_t)P.N * 8) : nullptr;
    s->colmax = sym ? (int *)ns_arena_carve(a, (size_t)P.N * 4) : nullptr;
    s->colc = sym ? (float *)ns_arena_carve(a, (size_t)P.N * 4) : nullptr;
    s->colfix = sym ? (unsigned long long *)ns_arena_carve(a, (size_t)P.N * 8) : nullptr;
    s->part = (double *)ns_arena_carve(a, (size_t)2 * kMaxPartials * 8);
    s->qf = conv ? (float *)ns_arena_carve(a, (size_t)(P.B * P.d) * 4) : nullptr;
    s->pf = conv ? (float *)ns_arena_carve(a, (size_t)(P.N * P.d) * 4) : nullptr;
    s->hf = conv && P.h > 0 ? (float *)ns_arena_carve(a, (size_t)(P.B * P.h * P.d) * 4) : nullptr;
    s->ef = conv && P.E > 0 ? (float *)ns_arena_carve(a, (size_t)(P.E * P.d) * 4) : nullptr;
    s->tile = (float *)ns_arena_carve(a, (size_t)(tb * tn) * 4);
    s->half_tile = half ? ns_arena_carve(a, (size_t)(tb * tn) * 2) : nullptr;
    s->htile = P.own_hard ? (float *)ns_arena_carve(a, (size_t)(tb * P.h) * 4) : nullptr;
    s->half_htile = P.own_hard && half ? ns_arena_carve(a, (size_t)(tb * P.h) * 2) : nullptr;
    s->strip = s->strip_floats > 0 ? (float *)ns_arena_carve(a, (size_t)s->strip_floats * 4) : nullptr;
}

void shape(ns_context *ctx, const ns_infonce_inputs *in, Plan &P, State &S) {
    P.t = dtypes_differ(in) ? NS_F32 : in->query.dtype;
    P.es = ns_dtype_size(P.t);
    // Tiles: up to 4096 × 4096 logits (64 MiB), GEMMs large enough for full tensor-core rate.
    int64_t maxc = P.N;
    if (P.share && P.B * P.h > maxc) maxc = P.B * P.h;
    if (P.E > maxc) maxc = P.E;
    S.tb = P.B < 4096 ? P.B : 4096;
    S.tn = maxc < 4096 ? maxc : 4096;
    // Tests cross many tile boundaries at small sizes (ns_infonce_set_tiles, as on the CPU).
    if (ctx->loss_tile_rows > 0 && ctx->loss_tile_rows < S.tb) S.tb = ctx->loss_tile_rows;
    if (ctx->loss_tile_cols > 0 && ctx->loss_tile_cols < S.tn) S.tn = ctx->loss_tile_cols;
}

ns_status setup(ns_context *ctx, const char *fn, const ns_infonce_inputs *in, Plan &P, State &S) {
    const int conv = dtypes_differ(in);
    shape(ctx, in, P, S);
    Work w = {&P, conv, P.t != NS_F32, &S};
    ns_status rc = ns_arena_lay_out(ctx, &ctx->cuda->scratch, state_layout, &w, fn);
    if (rc) return rc;
    P.ids.posid = S.posid;
    cudaStream_t st = ns_stream(ctx);
    if (conv) {
        if ((rc = ns_cuda_rows_to_f32(ctx, fn, in->query, 0, P.B, S.qf, st))) return rc;
        if ((rc = ns_cuda_rows_to_f32(ctx, fn, in->passage, 0, P.N, S.pf, st))) return rc;
        if (P.h > 0 && (rc = ns_cuda_rows_to_f32(ctx, fn, in->hard, 0, P.B * P.h, S.hf, st))) return rc;
        if (P.E > 0 && (rc = ns_cuda_rows_to_f32(ctx, fn, in->extra, 0, P.E, S.ef, st))) return rc;
        P.q = {S.qf, P.d}, P.p = {S.pf, P.d}, P.hd = {S.hf, P.d}, P.ex = {S.ef, P.d};
    } else {
        P.q = {in->query.data, ns_ld(in->query)};
        P.p = {in->passage.data, ns_ld(in->passage)};
        P.hd = {P.h > 0 ? in->hard.data : nullptr, P.h > 0 ? ns_ld(in->hard) : P.d};
        P.ex = {P.E > 0 ? in->extra.data : nullptr, P.E > 0 ? ns_ld(in->extra) : P.d};
    }
    return NS_OK;
}

int blocks_of(const Plan &P, Block *b, float *gp, float *gh) {
    int n = 0;
    b[n++] = {NS_BLK_PASSAGE, P.p, P.N, gp};
    if (P.share) b[n++] = {NS_BLK_HARD, P.hd, P.B * P.h, gh};
    if (P.E > 0) b[n++] = {NS_BLK_EXTRA, P.ex, P.E, nullptr};
    return n;
}

namespace {
// out[s] = Σ_b part[s·n + b] in a fixed order: per thread in index order, then the block's
// fixed reduction tree. One block: the partials are few (one per block of a row kernel).
__global__ void __launch_bounds__(kT) ns_k_loss_reduce(const double *part, int64_t n, double *out) {
    __shared__ double shd[kT / 32];
    const double *p = part + blockIdx.x * n;
    double t = 0.0;
    for (int64_t b = threadIdx.x; b < n; b += kT) t += p[b];
    t = ns_block_reduce<kT>(t, NsSumD(), shd);
    if (threadIdx.x == 0) out[blockIdx.x] = t;
}
}  // namespace

ns_status reduce_partials(ns_context *ctx, const char *fn, const double *part, int64_t n, int m,
                          double *out) {
    ns_k_loss_reduce<<<(unsigned)m, kT, 0, ns_stream(ctx)>>>(part, n, out);
    NS_CUDA_TRY(ctx, fn, cudaGetLastError());
    return NS_OK;
}

ns_status init_state(ns_context *ctx, const char *fn, const InitArgs &a, bool columns) {
    cudaStream_t st = ns_stream(ctx);
    if (columns) ns_k_loss_init_cols<<<ns_blocks(a.N), NS_CUDA_THREADS, 0, st>>>(a);
    ns_k_loss_init_rows<<<ns_blocks(a.B), NS_CUDA_THREADS, 0, st>>>(a);
    NS_CUDA_TRY(ctx, fn, cudaGetLastError());
    return NS_OK;
}

}  // namespace nsloss
