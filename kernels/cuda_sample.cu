// ns_sample on CUDA: the same draw as the CPU backend (src/cpu/cpu_sample.c) from the same
// scores: eligibility, Gumbel keys from ns_sample_key (src/hostdevice/ns_math.h: Philox4x32-10,
// own logf; -fmad=false keeps every operation as written), best first by ns_before. Validates
// the candidate data first (ns_cuda_check_candidates, kernels/cuda_filter.cu: one sync, skipped
// while the stream is captured into a CUDA graph).
//
// Three paths, one draw:
//   stream  (m ≤ 512 and C ≥ 2048, any C up to 2^24): one block per query reads its row once,
//           computes each kept candidate's key once and keeps the best m in shared memory by
//           append-then-select (a candidate enters only above the m-th best so far; a full
//           buffer is cut to m by a radix select on the packed 64-bit (key, column) order), so
//           the work is one read of the row plus a few hundred shared-memory entries, whatever C.
//           Like the CPU it draws over every kept slot and then checks that no winner is a
//           later copy of an id (one more read of the ids before the last winner); a query where
//           one is goes to the global path (below) in a second launch that reads the list of
//           such queries on the device (no host sync).
//   shared  (the rest, when 13·P bytes fit the block's shared memory): sort-based, in shared
//           memory: dedup by sorting (id, column), then the keys sorted best first.
//   global  (the rest): the same sorts in a slot of arena scratch per block.
// NS_CUDA_SAMPLE_PATH=stream|shared|global forces one (tests, benchmarks; stream only where
// m ≤ 512, shared only where it fits).
#include <climits>
#include <cstdlib>
#include <cstring>

#include "cuda_primitives.cuh"
#include "cuda_util.cuh"
#include "ns_cuda.h"
#include "ns_math.h"

namespace {

constexpr int kSampleThreads = 256;
constexpr int64_t kMaxSampleC = 1 << 24;          // candidates per query (large-C path's slot: 272 MiB)
constexpr size_t kGlobalScratch = (size_t)256 << 20;  // the large-C path's scratch, all blocks
constexpr int kInelig = 1 << 30;   // column flag: not eligible (sorts after every eligible one)
constexpr int kStreamMaxM = 512;   // the stream path's largest m
constexpr int64_t kStreamMinC = 2048;  // and smallest C by default (below, the shared sort)
constexpr int kStreamStep = kSampleThreads * 4;             // columns per block per step
constexpr int kStreamCap = kStreamMaxM + 2 * kStreamStep;   // buffer entries: m kept + 2 steps
constexpr int kStreamHash = 2 * kStreamMaxM;                // winners' id table, at most
constexpr size_t kRedoScratch = (size_t)64 << 20;           // the stream path's fallback slots

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
// With a list (redo, *redo_n entries: the stream path's queries with a later copy among their
// winners) only those queries.
__global__ void __launch_bounds__(kSampleThreads) ns_k_sample_global(SampleArgs a, int64_t B,
                                                                       unsigned char *scratch,
                                                                       const int *redo,
                                                                       const int *redo_n) {
    const size_t P = (size_t)a.P;
    unsigned char *slot = scratch + (size_t)blockIdx.x * global_slot_bytes(a.P);
    const int64_t n = redo ? (int64_t)*redo_n : B;
    for (int64_t t = blockIdx.x; t < n; t += gridDim.x)
        sample_query(a, redo ? (int64_t)redo[t] : t, (int64_t *)slot, (int *)(slot + P * 8),
                     (float *)(slot + P * 12), slot + P * 16);
}

// ------------------------------------------------------------------ the stream path
// (key, column) as one unsigned 64-bit value that orders as ns_before (src/hostdevice/ns_order.h)
// — the larger first: the key's bits made monotone (−0 read as +0, which ns_before finds equal),
// above the complemented column (ties to the lower column). The CPU's pack() (cpu_sample.c).
// Every key gives a value above 0, so 0 is "accept anything".
__device__ __forceinline__ unsigned long long stream_pack(float key, int col) {
    unsigned u = __float_as_uint(key == 0.0f ? 0.0f : key);
    u = (u & 0x80000000u) ? ~u : (u | 0x80000000u);
    return ((unsigned long long)u << 32) | (unsigned long long)(~(unsigned)col);
}
__device__ __forceinline__ int stream_col(unsigned long long p) { return (int)~(unsigned)p; }

struct StreamShared {
    unsigned long long buf[kStreamCap];  // appended (key, column) values, unordered
    unsigned long long win[kStreamMaxM]; // stream_select's compaction
    unsigned long long thr;              // the m-th best at the last selection (0: none yet)
    unsigned long long hid[kStreamHash]; // winners' ids (~0: empty) → their largest column
    int hcol[kStreamHash];
    NsRadixSelect radix;
    int count, pos, last;
};

// Cuts buf[0, n), n > m, to its m best (in any order) in buf[0, m) and sets thr to the m-th
// best: a radix select over the distinct 64-bit values, 8 bits per pass from the top, then one
// compaction. Called by the whole block; returns after a barrier.
__device__ void stream_select(StreamShared &sh, int n, int m) {
    const unsigned long long prefix =
        ns_block_radix_kth([&](int e) { return sh.buf[e]; }, n, m, sh.radix);
    if (threadIdx.x == 0) sh.pos = 0;
    __syncthreads();
    for (int e = threadIdx.x; e < n; e += blockDim.x)
        if (sh.buf[e] >= prefix) sh.win[atomicAdd(&sh.pos, 1)] = sh.buf[e];
    __syncthreads();
    for (int t = threadIdx.x; t < m; t += blockDim.x) sh.buf[t] = sh.win[t];
    if (threadIdx.x == 0) sh.count = m, sh.thr = prefix;
    __syncthreads();
}

// A slot of the winners' table of H entries (a power of two ≥ 2·m: load ≤ 1/2).
__device__ __forceinline__ int stream_hash(int64_t id, int H) {
    return (int)(((unsigned long long)id * 0x9E3779B97F4A7C15ull) >> 40) & (H - 1);
}

// 1 when a winner is a later copy of an id: some kept slot before the winner's column holds
// its id (the CPU's eligibility: the first kept copy is the one drawn). The winners' ids go into
// a table (id → the largest winner column with it), then the kept slots before the last winner
// are looked up. Called by the whole block.
__device__ int stream_later_copy(StreamShared &sh, const int64_t *ids, const uint8_t *kp, int n) {
    int H = 2;
    while (H < 2 * n) H <<= 1;
    for (int t = threadIdx.x; t < H; t += blockDim.x) sh.hid[t] = ~0ull, sh.hcol[t] = -1;
    if (threadIdx.x == 0) sh.last = 0;
    __syncthreads();
    for (int t = threadIdx.x; t < n; t += blockDim.x) {
        const int c = stream_col(sh.buf[t]);
        const unsigned long long id = (unsigned long long)ids[c];
        atomicMax(&sh.last, c);
        for (int h = stream_hash((int64_t)id, H);; h = (h + 1) & (H - 1)) {
            const unsigned long long prev = atomicCAS(&sh.hid[h], ~0ull, id);
            if (prev == ~0ull || prev == id) {
                atomicMax(&sh.hcol[h], c);
                break;
            }
        }
    }
    __syncthreads();
    int later = 0;
    for (int j = threadIdx.x; j < sh.last; j += blockDim.x) {
        const int64_t id = ids[j];
        if (id == -1 || (kp && !kp[j])) continue;
        for (int h = stream_hash(id, H); sh.hid[h] != ~0ull; h = (h + 1) & (H - 1))
            if (sh.hid[h] == (unsigned long long)id) {
                later |= j < sh.hcol[h];
                break;
            }
    }
    return __syncthreads_or(later);
}

// One block per query: append-then-select over the row (see the top of the file), the winners'
// check, then the winners ranked (by counting: m ≤ 512) and written; a query with a later copy
// among its winners is listed in redo and written by ns_k_sample_global instead.
__global__ void __launch_bounds__(kSampleThreads) ns_k_sample_stream(SampleArgs a, int *redo, int *redo_n) {
    __shared__ StreamShared sh;
    const int64_t i = blockIdx.x, C = a.C;
    const int m = (int)a.m;
    const int64_t *ids = a.id + i * C;
    const float *s = a.score + i * C;
    const uint8_t *kp = a.keep ? a.keep + i * C : nullptr;
    const float sp = a.sp ? a.sp[i] : 0.0f;
    const int64_t qid = a.query_offset + i;
    if (threadIdx.x == 0) sh.count = 0, sh.thr = 0;
    __syncthreads();
    for (int64_t base = 0; base < C; base += kStreamStep) {
        const unsigned long long thr = sh.thr;
#pragma unroll
        for (int it = 0; it < 4; it++) {
            const int64_t j = base + it * kSampleThreads + threadIdx.x;
            if (j >= C || ids[j] == -1 || (kp && !kp[j])) continue;
            const float key = ns_sample_key(a.strategy, s[j], sp, a.a, a.b, a.tau, a.seed, a.step, qid, ids[j]);
            const unsigned long long p = stream_pack(key, (int)j);
            if (p > thr) sh.buf[atomicAdd(&sh.count, 1)] = p;
        }
        // Two barriers: every append is done before count is read, and every thread has read
        // count (and thr) before the next step appends or selects.
        __syncthreads();
        const int c = sh.count;
        __syncthreads();
        if (c > kStreamCap - kStreamStep) stream_select(sh, c, m);
    }
    int n = sh.count;
    if (n > m) {
        stream_select(sh, n, m);
        n = m;
    }
    if (stream_later_copy(sh, ids, kp, n)) {
        if (threadIdx.x == 0) redo[atomicAdd(redo_n, 1)] = (int)i;
        return;
    }
    for (int t = threadIdx.x; t < n; t += blockDim.x) {
        const unsigned long long p = sh.buf[t];
        int r = 0;
        for (int u = 0; u < n; u++) r += sh.buf[u] > p;
        const int c = stream_col(p);
        a.index[i * m + r] = ids[c];
        if (a.out_score) a.out_score[i * m + r] = s[c];
    }
    for (int r = n + threadIdx.x; r < m; r += blockDim.x) {
        a.index[i * m + r] = -1;
        if (a.out_score) a.out_score[i * m + r] = NAN;
    }
    if (threadIdx.x == 0) a.count[i] = n;
}

struct GlobalPlan {
    size_t bytes;            // the global path's slots
    int64_t redo;            // stream path: entries of the redo list (0: no list)
    unsigned char *scratch;
    int *redo_list, *redo_n;
};
void global_layout(void *plan, ns_arena *a) {
    GlobalPlan *g = (GlobalPlan *)plan;
    g->scratch = (unsigned char *)ns_arena_carve(a, g->bytes);
    g->redo_list = g->redo ? (int *)ns_arena_carve(a, (size_t)g->redo * 4) : nullptr;
    g->redo_n = g->redo ? (int *)ns_arena_carve(a, 4) : nullptr;
}

enum SamplePath { PATH_STREAM, PATH_SHARED, PATH_GLOBAL };

// The path for (C, m, P) (see the top of the file), or the one NS_CUDA_SAMPLE_PATH forces where
// it can run.
SamplePath sample_path(int64_t C, int64_t m, size_t shm, int optin) {
    const bool stream_ok = m <= kStreamMaxM, shared_ok = shm <= (size_t)optin;
    const char *force = getenv("NS_CUDA_SAMPLE_PATH");
    if (force && strcmp(force, "stream") == 0 && stream_ok) return PATH_STREAM;
    if (force && strcmp(force, "shared") == 0 && shared_ok) return PATH_SHARED;
    if (force && strcmp(force, "global") == 0) return PATH_GLOBAL;
    if (stream_ok && C >= kStreamMinC) return PATH_STREAM;
    return shared_ok ? PATH_SHARED : PATH_GLOBAL;
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
    // Shared memory of the sort path in shared memory: 13·P bytes; above 48 KiB it needs the
    // kernel's opt-in, up to the device's limit (227 KiB on H100/H200: C ≤ 16,384; 163 KiB on
    // A100: C ≤ 8,192).
    int optin = 0;
    NS_CUDA_TRY(ctx, fn, cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, ctx->device));
    const size_t shm = (size_t)P * 13;
    const SamplePath path = sample_path(C, m, shm, optin);
    if (path == PATH_SHARED && shm > 48 * 1024)
        NS_CUDA_TRY(ctx, fn, cudaFuncSetAttribute(ns_k_sample, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)shm));
    // Global slots: every query on the global path; the stream path's fallback, fewer.
    GlobalPlan gp = {0, 0, nullptr, nullptr, nullptr};
    int64_t G = 0;
    if (path != PATH_SHARED) {
        G = (int64_t)((path == PATH_STREAM ? kRedoScratch : kGlobalScratch) / global_slot_bytes(P));
        if (G < 1) G = 1;
        if (G > B) G = B;
        gp.bytes = (size_t)G * global_slot_bytes(P);
        gp.redo = path == PATH_STREAM ? B : 0;
        if ((rc = ns_arena_lay_out(ctx, &ctx->cuda->scratch, global_layout, &gp, fn))) return rc;
    }
    SampleArgs sa;
    sa.C = C, sa.m = m, sa.P = P, sa.id = cand->id, sa.score = cand->score, sa.keep = keep;
    sa.sp = cand->positive_score, sa.strategy = (int)o->strategy;
    sa.a = o->simans_a, sa.b = o->simans_b, sa.tau = o->temperature;
    sa.seed = o->seed, sa.step = o->step, sa.query_offset = cand->query_offset;
    sa.index = index, sa.out_score = score, sa.count = count;
    cudaStream_t st = ns_stream(ctx);
    if (path == PATH_SHARED) {
        ns_k_sample<<<(unsigned)B, kSampleThreads, shm, st>>>(sa);
    } else if (path == PATH_GLOBAL) {
        ns_k_sample_global<<<(unsigned)G, kSampleThreads, 0, st>>>(sa, B, gp.scratch, nullptr, nullptr);
    } else {
        NS_CUDA_TRY(ctx, fn, cudaMemsetAsync(gp.redo_n, 0, 4, st));
        ns_k_sample_stream<<<(unsigned)B, kSampleThreads, 0, st>>>(sa, gp.redo_list, gp.redo_n);
        NS_CUDA_TRY(ctx, fn, cudaGetLastError());
        ns_k_sample_global<<<(unsigned)G, kSampleThreads, 0, st>>>(sa, B, gp.scratch, gp.redo_list, gp.redo_n);
    }
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
