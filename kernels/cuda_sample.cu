// ns_sample on CUDA: the same draw as the CPU backend (src/cpu/cpu_sample.c) from the same
// scores: eligibility, Gumbel keys from ns_sample_key (src/hostdevice/ns_math.h: Philox4x32-10,
// own logf; -fmad=false keeps every operation as written), best first by ns_before. Validates
// the candidate data first (ns_cuda_check_candidates, kernels/cuda_filter.cu: one sync, skipped
// while the stream is captured into a CUDA graph).
#include <climits>

#include "cuda_primitives.cuh"
#include "cuda_util.cuh"
#include "ns_cuda.h"
#include "ns_math.h"

namespace {

constexpr int kSampleThreads = 256;
constexpr int kMaxSampleC = 8192;  // candidates per query held in shared memory
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
    ns_bitonic_sort(sid, scol, P, NsIdFirst());
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
    NsCandArgs ca;
    ca.B = B, ca.C = C, ca.id = cand->id, ca.score = cand->score;
    ca.sp = simans ? cand->positive_score : nullptr;
    ca.guide = nullptr, ca.gp = nullptr, ca.pos_off = nullptr, ca.pos_ids = nullptr;
    if ((rc = ns_cuda_check_candidates(ctx, fn, ca))) return rc;

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
