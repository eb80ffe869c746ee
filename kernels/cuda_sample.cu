// ns_sample on CUDA: the same draw as the CPU backend (src/cpu/cpu_sample.c) from the same
// scores: eligibility, Gumbel keys from ns_sample_key (src/hostdevice/ns_math.h: Philox4x32-10,
// own logf; -fmad=false keeps every operation as written), best first by ns_before. Validates
// the candidate data first (ns_cuda_check_candidates, kernels/cuda_filter.cu: one sync, skipped
// while the stream is captured into a CUDA graph).
#include <climits>
#include <cstdlib>

#include "cuda_primitives.cuh"
#include "cuda_util.cuh"
#include "ns_cuda.h"
#include "ns_math.h"

namespace {

constexpr int kSampleThreads = 256;
constexpr int64_t kMaxSampleC = 1 << 24;          // candidates per query (large-C path's slot: 272 MiB)
constexpr size_t kGlobalScratch = (size_t)256 << 20;  // the large-C path's scratch, all blocks
constexpr int kInelig = 1 << 30;   // column flag: not eligible (sorts after every eligible one)

// Eligible before ineligible; among either, the larger key first, ties to the lower column.
struct EligibleKeyFirst {
    __device__ bool operator()(float a, int ca, float b, int cb) const {
        const bool ia = (ca & kInelig) != 0, ib = (cb & kInelig) != 0;
        return ia != ib ? ib : ns_before(a, ca, b, cb);
    }
};

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

// Arena scratch of one block of the large-C path: ids 8·P, columns 4·P, keys 4·P, first flags P,
// rounded to 256 B so every slot is aligned as the arena's.
__host__ __device__ inline size_t global_slot_bytes(int P) { return ((size_t)P * 17 + 255) & ~(size_t)255; }

// One query's draw, by the whole block, in the arrays the caller gives (shared memory for the
// one-block-per-query path, the block's slot of arena scratch for large C). Phase 1 sorts (id,
// column) of the eligible slots to find the first occurrence of every id (a duplicate would draw
// the same noise; the CPU keeps the first kept copy). Phase 2 sorts (key, column) best first —
// larger key, ties to the lower column, the ineligible last — and writes the first m. sid, scol,
// first hold P entries; skey may alias sid (it is written only after phase 1 read sid).
// Returns after a barrier (the arrays may be reused for the next query).
__device__ void sample_query(const SampleArgs &a, int64_t i, int64_t *sid, int *scol, float *skey,
                             unsigned char *first) {
    const int P = a.P;
    const int64_t C = a.C;
    const int64_t *ids = a.id + i * C;
    const float *s = a.score + i * C;
    const uint8_t *kp = a.keep ? a.keep + i * C : nullptr;

    for (int j = threadIdx.x; j < P; j += blockDim.x) {
        bool elig = j < C && ids[j] != -1 && (!kp || kp[j]);
        sid[j] = elig ? ids[j] : LLONG_MAX;
        scol[j] = elig ? j : j | kInelig;
    }
    __syncthreads();
    ns_bitonic_sort(sid, scol, P, NsIdFirst());
    for (int p = threadIdx.x; p < P; p += blockDim.x) {
        int c = scol[p];
        if (!(c & kInelig)) first[c] = p == 0 || sid[p - 1] != sid[p];
        else first[c & ~kInelig] = 0;
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
    ns_bitonic_sort(skey, scol, P, EligibleKeyFirst());
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
    __syncthreads();
}

// One block per query, its candidates in shared memory: SharedBytes(P) = 13·P bytes (ids 8·P,
// reused by the keys; columns 4·P; first flags P).
__global__ void __launch_bounds__(kSampleThreads) ns_k_sample(SampleArgs a) {
    extern __shared__ unsigned char smem[];
    const int P = a.P;
    sample_query(a, blockIdx.x, (int64_t *)smem, (int *)(smem + (size_t)P * 8), (float *)smem,
                 smem + (size_t)P * 12);
}

// C too large for shared memory: gridDim.x blocks, each with a slot of GlobalBytes(P) = 17·P
// bytes of arena scratch, take the queries blockIdx.x, blockIdx.x + gridDim.x, ... The same two
// bitonic sorts in global memory (__syncthreads orders a block's global accesses too): per
// query 2·log2(P)·(log2(P)+1)/2 passes over 12·P bytes, ~27 MiB read and written at P = 65,536,
// mostly from L2 (the slot is 1.1 MiB). Correct for every C; the speed target is the shared path.
__global__ void __launch_bounds__(kSampleThreads) ns_k_sample_global(SampleArgs a, int64_t B,
                                                                       unsigned char *scratch) {
    const size_t P = (size_t)a.P;
    unsigned char *slot = scratch + (size_t)blockIdx.x * global_slot_bytes(a.P);
    for (int64_t i = blockIdx.x; i < B; i += gridDim.x)
        sample_query(a, i, (int64_t *)slot, (int *)(slot + P * 8), (float *)(slot + P * 12),
                     slot + P * 16);
}

struct GlobalPlan {
    size_t bytes;
    unsigned char *scratch;
};
void global_layout(void *plan, ns_arena *a) {
    GlobalPlan *g = (GlobalPlan *)plan;
    g->scratch = (unsigned char *)ns_arena_carve(a, g->bytes);
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
                       "%s: cand->per_query (%lld) is larger than the CUDA backend's limit (%lld "
                       "candidates per query)",
                       fn, (long long)C, (long long)kMaxSampleC);
    if (B > INT_MAX)
        return ns_fail(ctx, NS_ERR_UNSUPPORTED, "%s: cand->queries (%lld) exceeds %d on CUDA", fn,
                       (long long)B, INT_MAX);
    const int simans = o->strategy == NS_SAMPLE_SIMANS;
    NsCandArgs ca;
    ca.B = B, ca.C = C, ca.id = cand->id, ca.score = cand->score;
    ca.sp = simans ? cand->positive_score : nullptr;
    ca.guide = nullptr, ca.gp = nullptr, ca.pos_off = nullptr, ca.pos_ids = nullptr;
    if ((rc = ns_cuda_check_candidates(ctx, fn, ca))) return rc;

    int P = 1;
    while (P < C) P <<= 1;
    // Shared memory of the one-block-per-query path: 13·P bytes; above 48 KiB it needs the
    // kernel's opt-in, up to the device's limit (227 KiB on H100/H200: C ≤ 16,384; 163 KiB on
    // A100: C ≤ 8,192). Larger C goes through arena scratch (ns_k_sample_global).
    int optin = 0;
    NS_CUDA_TRY(ctx, fn, cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, ctx->device));
    const size_t shm = (size_t)P * 13;
    // NS_CUDA_SAMPLE_GLOBAL=1 (tests, benchmarks) takes the large-C path for every C, so that
    // its draws and distribution are checked at shapes a test can afford.
    const char *force = getenv("NS_CUDA_SAMPLE_GLOBAL");
    const int shared_path = shm <= (size_t)optin && !(force && force[0] == '1');
    if (shared_path && shm > 48 * 1024)
        NS_CUDA_TRY(ctx, fn, cudaFuncSetAttribute(ns_k_sample, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)shm));
    GlobalPlan gp = {0, nullptr};
    int64_t G = 0;
    if (!shared_path) {
        G = (int64_t)(kGlobalScratch / global_slot_bytes(P));
        if (G < 1) G = 1;
        if (G > B) G = B;
        gp.bytes = (size_t)G * global_slot_bytes(P);
        if ((rc = ns_arena_lay_out(ctx, &ctx->cuda->scratch, global_layout, &gp, fn))) return rc;
    }
    SampleArgs sa;
    sa.C = C, sa.m = m, sa.P = P, sa.id = cand->id, sa.score = cand->score, sa.keep = keep;
    sa.sp = cand->positive_score, sa.strategy = (int)o->strategy;
    sa.a = o->simans_a, sa.b = o->simans_b, sa.tau = o->temperature;
    sa.seed = o->seed, sa.step = o->step, sa.query_offset = cand->query_offset;
    sa.index = index, sa.out_score = score, sa.count = count;
    if (shared_path) ns_k_sample<<<(unsigned)B, kSampleThreads, shm, ns_stream(ctx)>>>(sa);
    else ns_k_sample_global<<<(unsigned)G, kSampleThreads, 0, ns_stream(ctx)>>>(sa, B, gp.scratch);
    NS_CUDA_TRY(ctx, fn, cudaGetLastError());
    return NS_OK;
}

ns_status ns_cuda_filter_sample(ns_context *ctx, const ns_candidates *cand,
                                const ns_filter_options *fo, const ns_sampler_options *so,
                                int64_t m, uint8_t *keep, ns_filter_counts *counts,
                                int64_t *index, float *score, int64_t *count) {
    // First the data both need, named for this call: nothing is written when it fails (the
    // filter would otherwise have written keep before the sampler's own check).
    const unsigned r = fo->rules;
    const int need_sp = (r & (NS_FILTER_MARGIN | NS_FILTER_REL_MARGIN)) != 0 ||
                        so->strategy == NS_SAMPLE_SIMANS;
    const int need_guide = (r & (NS_FILTER_GUIDE | NS_FILTER_GUIDE_REL)) != 0;
    const int same_id = (r & NS_FILTER_SAME_ID) != 0;
    NsCandArgs ca;
    ca.B = cand->queries, ca.C = cand->per_query, ca.id = cand->id, ca.score = cand->score;
    ca.sp = need_sp ? cand->positive_score : nullptr;
    ca.guide = need_guide ? cand->guide_score : nullptr;
    ca.gp = need_guide ? cand->guide_positive_score : nullptr;
    ca.pos_off = same_id ? cand->positive_id->offsets : nullptr;
    ca.pos_ids = same_id ? cand->positive_id->ids : nullptr;
    ns_status rc = ns_cuda_check_candidates(ctx, "ns_filter_sample", ca);
    if (rc) return rc;
    // Checked once: the two ops below skip their own scans of the same data (each would
    // synchronise again outside the checked step's deferral).
    const int was = ns_cuda_swap_input_checks(ctx, 0);
    rc = ns_cuda_filter(ctx, cand, fo, keep, counts);
    if (!rc) rc = ns_cuda_sample(ctx, cand, keep, so, m, index, score, count);
    ns_cuda_swap_input_checks(ctx, was);
    return rc;
}
