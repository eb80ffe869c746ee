// ns_mine_topk on CUDA: exact top-k of q·corpusᵀ without the Q×N score matrix.
//
// The corpus goes in tiles of NT rows (outer loop; a host corpus is copied tile by tile through
// two pinned buffers on a copy stream, overlapping the compute of the previous tile). For each
// tile and query block of QB rows, one cuBLAS GEMM writes a QB×NT f32 score tile into
// workspace (sized to stay in L2 on Hopper), then ns_k_topk_tile runs append-then-select:
//   every query owns a candidate buffer of cap = k + max(k, 2048) (score, row) entries in the
//   arena, unordered, and a threshold (the k-th best at its last reduction, −INF before).
//   One block per query scans its score row and appends the rows that beat the threshold (and
//   are not excluded); nothing already in the buffer moves. Only when the next step could
//   overflow the buffer does the block reduce it to its k best (reduce_to_k: a radix select on
//   64-bit order keys, 8 passes of 8 bits, then one compaction), which tightens the threshold.
//   After a few tiles almost nothing beats the threshold and the kernel is one coalesced read of
//   the score tile (4·NT bytes per query; the old sorted-list merge rewrote the list suffix,
//   up to 8·k bytes read and written per merge of ≤ 4096 collected rows).
// At the end ns_k_topk_final reduces each buffer to k and sorts it (bitonic, in a scratch slot).
// Order: ns_before (src/hostdevice/ns_order.h, the CPU backend's order): score descending, ties
// to the lower corpus row, a total order, so the result is exactly the CPU backend's for equal
// scores. The sort and the comparator are in cuda_primitives.cuh.
// Exact mode (the default for same-dtype rows without NS_NORMALIZE; "exact scores" below): the
// GEMM runs on bf16 copies of f32 rows and only the rows within the proven bound of a query's
// threshold are re-scored exactly, so the result is the CPU's, bit for bit; NS_CUDA_MINE_GEMM=f32
// keeps the plain path (the GEMM's scores as they are) for the benchmark.
// Future work: the fused tensor-core GEMM + selection (scores never leave registers/shared).
#include <climits>
#include <cmath>
#include <cstdlib>
#include <cstring>

#include "cuda_primitives.cuh"
#include "cuda_util.cuh"
#include "ns_bound.h"
#include "ns_cuda.h"

namespace {

constexpr int kThreads = 256;
constexpr int kItems = 4;                       // scores per thread per step
constexpr int kStep = kThreads * kItems;        // scores per block per step
constexpr int kExShared = 256;                  // exclusion ids cached in shared memory
constexpr int kPadIndex = INT_MAX;              // index of an empty slot (score −INF)

// Flag slots of this op.
enum { F_Q = 0, F_CORPUS = 1, F_SCORE = 2, F_EX_OFFSETS = 3, F_EX_IDS = 4, F_EX_NULL_IDS = 5 };

__device__ __forceinline__ bool before(float av, int ai, float bv, int bi) { return ns_before(av, ai, bv, bi); }

// The ns_before order as one unsigned 64-bit key, larger = before: the score's bits made
// monotone (−0 read as +0, since ns_before finds them equal), then the row complemented (ties to
// the lower row). Distinct rows give distinct keys, so the k-th largest key names one entry.
__device__ __forceinline__ unsigned long long order_key(float v, int row) {
    unsigned u = __float_as_uint(v == 0.0f ? 0.0f : v);
    u = (u & 0x80000000u) ? ~u : (u | 0x80000000u);
    return ((unsigned long long)u << 32) | (unsigned long long)(0xFFFFFFFFu - (unsigned)row);
}

// The capacity of a query's candidate buffer: k kept entries plus room for appends, at least
// two scan steps (a reduction happens at most once per step) and at most k (one reduction per
// k appends amortises its passes over the buffer).
inline int64_t buffer_cap(int64_t k) { return k + (k > 2 * kStep ? k : 2 * kStep); }

struct Select {  // shared memory of reduce_to_k
    NsRadixSelect radix;
    int pos, thr_i;
    float thr_v;
};

// Reduces a query's buffer (v, ix)[0, n), n > k, to its k best by ns_before, in any order, in
// [0, k); the k-th best (the new threshold) lands in sel.thr_v / thr_i. A radix select over the
// 64-bit order keys, 8 bits per pass from the top (a 256-bin histogram in shared memory over the
// entries that share the prefix found so far): 8 passes read the buffer (8·12·n bytes with the
// keys' inputs), then one pass moves the k entries whose key is at least the k-th to the block's
// scratch (sv, si) and one copies them back. Exact: the keys are distinct. Called by the whole
// block; returns after a barrier.
__device__ void reduce_to_k(float *v, int *ix, int n, int k, float *sv, int *si, Select &sel) {
    const unsigned long long prefix =
        ns_block_radix_kth([&](int e) { return order_key(v[e], ix[e]); }, n, k, sel.radix);
    // prefix is now the k-th largest key.
    if (threadIdx.x == 0) sel.pos = 0;
    __syncthreads();
    for (int e = threadIdx.x; e < n; e += blockDim.x) {
        const float x = v[e];
        const int r = ix[e];
        const unsigned long long key = order_key(x, r);
        if (key >= prefix) {
            const int p = atomicAdd(&sel.pos, 1);
            sv[p] = x, si[p] = r;
            if (key == prefix) sel.thr_v = x, sel.thr_i = r;
        }
    }
    __syncthreads();
    for (int t = threadIdx.x; t < k; t += blockDim.x) v[t] = sv[t], ix[t] = si[t];
    __syncthreads();
}

struct TileArgs {
    const float *score;     // QB×NT tile (ld = ld_score), row b = query q0 + b
    int64_t ld_score;
    int64_t q0;             // first query of the block
    int64_t c0;             // first corpus row of the tile
    int nt;                 // corpus rows in this tile
    int k;
    int64_t cap;            // entries of a query's candidate buffer
    const float *inv_q;     // Q inverse norms, or NULL (no normalisation)
    const float *inv_c;     // nt inverse norms of this tile, or NULL
    const int64_t *ex_off;  // exclusions (CSR over queries), or NULL
    const int64_t *ex_ids;
    float *buf_v;           // Q×cap candidate buffers: (score, row), unordered
    int *buf_i;
    int *cnt;               // Q: entries in each buffer
    float *thr_v;           // Q: each query's threshold (the k-th best at its last reduction)
    int *thr_i;
    float *scr_v;           // a slot of P2 entries per block (reductions, the final sort)
    int *scr_i;
    int64_t slot;
    int *flags;
    // Exact mode (xq non-NULL; see "Exact scores" below): score holds ŝ from a low-precision
    // GEMM, every candidate within the bound of the threshold is re-scored from the rows.
    const void *xq;         // Q rows of the queries (xdt), ld ldxq
    int64_t ldxq;
    const void *xc;         // nt rows of this corpus tile (xdt), ld ldxc
    int64_t ldxc;
    ns_dtype xdt;
    int d;
    const double *qn;       // Q row norms ‖q_i‖ (NS_BOUND_MAX_ABS < norm: no bound, +INF)
    const double *cn;       // nt row norms of this tile
    double rel, abs_e;      // K·|α| and A of ns_bound.h
    float scale;            // α of the exact score
};

// ---------------------------------------------------------------- exact scores
// Exact mining on the device (the CPU's two-stage mining, src/cpu/cpu_mine_topk.c, with the
// bound of src/hostdevice/ns_bound.h, not re-derived here): the GEMM gives ŝ (bf16 inputs for
// f32 rows, or the rows themselves when they are bf16/f16), |ŝ − s*| ≤ e = K·|α|·‖q‖‖c‖ + A.
// The buffers hold EXACT scores only: a row is a candidate when ŝ + e reaches the threshold
// (the k-th best exact score held: s* ≤ ŝ + e below it cannot enter), and a candidate is
// re-scored exactly before it is compared and appended. So the buffers, the reductions and the
// final sort are those of the plain path, on s*: the result is exact f32 mining, the CPU's bits.

// s* = fl32(α · Σ q_t c_t), the sum in double in the CPU's order (cpu_mine_rescore.c score_exact:
// 32 interleaved partial sums acc[l] over t ≡ l (mod 32) in increasing t, then a pairwise tree
// acc[l] += acc[l + w] for w = 16, 8, .., 1): the products of f32 values are exact in double,
// so the same order gives the same bits. One warp per candidate: lane l is the CPU's acc[l]
// (so lane l reads t = l, l + 32, ..: each step of the warp reads 32 consecutive elements of
// both rows, coalesced), and the tree is shuffle-down steps (lane l < w adds lane l + w).
// Called by all 32 lanes of the warp together; each lane with want set gets its own (qi, j)
// re-scored, the warp taking the candidates one after another (a candidate group of ≤ 32).
__device__ float warp_exact_scores(const TileArgs &a, int64_t qi, int j, bool want, float s) {
    const unsigned full = 0xffffffffu;
    const int lane = threadIdx.x & 31;
    const size_t qb = (size_t)(qi * a.ldxq);
    for (unsigned pending = __ballot_sync(full, want); pending; pending &= pending - 1) {
        const int src = __ffs((int)pending) - 1;
        const int jj = __shfl_sync(full, j, src);
        const size_t cb = (size_t)((int64_t)jj * a.ldxc);
        double acc = 0.0;
        for (int t = lane; t < a.d; t += 32)
            acc += (double)ns_load_f32(a.xq, a.xdt, qb + t) * (double)ns_load_f32(a.xc, a.xdt, cb + t);
        for (int w = 16; w >= 1; w /= 2) {
            const double o = __shfl_down_sync(full, acc, w);
            if (lane < w) acc += o;
        }
        const float v = __shfl_sync(full, (float)((double)a.scale * acc), 0);
        if (lane == src) s = v;
    }
    return s;
}

// 1 when the exact score of (qi, tile row j) may reach the threshold score tv: ŝ + e ≥ tv in
// double (e ≥ 2^-8·|ŝ|, so the double sum's rounding is far inside NS_BOUND_SAFETY). A
// non-finite ŝ (a bf16 copy overflowed) or a row outside the bound's range is always one.
__device__ __forceinline__ bool may_enter(const TileArgs &a, double qn, int j, float s, float tv) {
    const double cn = a.cn[j];
    if (!isfinite(s) || !(qn <= NS_BOUND_MAX_ABS) || !(cn <= NS_BOUND_MAX_ABS)) return true;
    return (double)s + (a.rel * qn * cn + a.abs_e) >= (double)tv;
}

// Append-then-select, one block per query of the block: scans the query's score row, appends
// every finite, non-excluded score that comes before the query's threshold to its buffer (no
// other entry moves), and when the next step could overflow the buffer, reduces it to its k best
// (reduce_to_k), which tightens the threshold. After a few tiles almost nothing beats the
// threshold and the kernel is one coalesced read of the score row.
__global__ void __launch_bounds__(kThreads) ns_k_topk_tile(TileArgs a) {
    __shared__ int64_t ex[kExShared];
    __shared__ int count;
    __shared__ float thr_v;
    __shared__ int thr_i;
    __shared__ Select sel;
    const int b = blockIdx.x;
    const int64_t qi = a.q0 + b;
    const int k = a.k;
    const int cap = (int)a.cap;
    float *bv = a.buf_v + qi * a.cap;
    int *bi = a.buf_i + qi * a.cap;
    float *sv = a.scr_v + (int64_t)b * a.slot;
    int *si = a.scr_i + (int64_t)b * a.slot;
    const float *row = a.score + b * a.ld_score;
    const float sq = a.inv_q ? a.inv_q[qi] : 1.0f;
    const double qn = a.xq ? a.qn[qi] : 0.0;
    int64_t e0 = 0, ne = 0;
    if (a.ex_off && a.ex_ids) {  // NULL ids: refused by mine_validate (ignored when unchecked)
        e0 = a.ex_off[qi];
        ne = a.ex_off[qi + 1] - e0;
        if (ne < 0) ne = 0;
        for (int t = threadIdx.x; t < ne && t < kExShared; t += blockDim.x) ex[t] = a.ex_ids[e0 + t];
    }
    if (threadIdx.x == 0) {
        count = a.cnt[qi];
        thr_v = a.thr_v[qi];
        thr_i = a.thr_i[qi];
    }
    __syncthreads();
    int bad = 0;
    int c = count;  // entries in the buffer, the same in every thread (read between barriers)
    __syncthreads();  // every thread has read count before the first append changes it
    for (int base = 0; base < a.nt; base += kStep) {
        if (c > cap - kStep) {  // the next step could overflow the buffer: reduce it to k now
            reduce_to_k(bv, bi, c, k, sv, si, sel);
            if (threadIdx.x == 0) {
                count = k;
                thr_v = sel.thr_v;
                thr_i = sel.thr_i;
            }
            __syncthreads();
            c = k;
        }
        const float tv_ = thr_v;
        const int ti_ = thr_i;
#pragma unroll
        for (int it = 0; it < kItems; it++) {
            // No early exit: every lane of a warp reaches the warp's exact re-score.
            const int j = base + it * kThreads + threadIdx.x;
            const bool in = j < a.nt;
            float s = in ? row[j] : 0.0f;
            if (in && a.inv_q) s = s * (sq * a.inv_c[j]);
            if (a.xq) {  // exact mode: ŝ → s* for the candidates only (a warp per candidate)
                const bool want = in && may_enter(a, qn, j, s, tv_);
                s = warp_exact_scores(a, qi, j, want, s);
                if (!want) continue;
            }
            if (!in) continue;
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
            bv[p] = s;
            bi[p] = g;
        }
        // Two barriers: every append is done before c is read, and every thread has read c
        // (and the threshold) before the next step appends or reduces again.
        __syncthreads();
        c = count;
        __syncthreads();
    }
    if (threadIdx.x == 0) {
        a.cnt[qi] = c;
        a.thr_v[qi] = thr_v;
        a.thr_i[qi] = thr_i;
    }
    if (bad) a.flags[F_SCORE] = 1;
}

__global__ void ns_k_topk_init(int *cnt, float *thr_v, int *thr_i, int64_t Q) {
    for (int64_t e = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; e < Q;
         e += (int64_t)gridDim.x * blockDim.x) {
        cnt[e] = 0;
        thr_v[e] = -INFINITY;  // every finite score comes before (−INF, kPadIndex)
        thr_i[e] = kPadIndex;
    }
}

// The outputs: gridDim.x blocks take the queries blockIdx.x, + gridDim.x, ...: the buffer reduced
// to k (when it holds more), copied into the block's slot padded to P2 (a power of two ≥ k)
// with (−INF, kPadIndex), sorted best first (bitonic, in the slot: global memory, mostly L2),
// written as k (index, score) with −1 / −INF past the entries found.
__global__ void __launch_bounds__(kThreads) ns_k_topk_final(TileArgs a, int64_t Q, int P2,
                                                              int64_t *index, float *score) {
    __shared__ Select sel;
    const int k = a.k;
    float *sv = a.scr_v + (int64_t)blockIdx.x * a.slot;
    int *si = a.scr_i + (int64_t)blockIdx.x * a.slot;
    for (int64_t qi = blockIdx.x; qi < Q; qi += gridDim.x) {
        float *bv = a.buf_v + qi * a.cap;
        int *bi = a.buf_i + qi * a.cap;
        int n = a.cnt[qi];
        if (n > k) {
            reduce_to_k(bv, bi, n, k, sv, si, sel);
            n = k;
        }
        for (int t = threadIdx.x; t < P2; t += blockDim.x) {
            sv[t] = t < n ? bv[t] : -INFINITY;
            si[t] = t < n ? bi[t] : kPadIndex;
        }
        __syncthreads();
        ns_bitonic_sort(sv, si, P2, NsScoreFirst());
        for (int r = threadIdx.x; r < k; r += blockDim.x) {
            index[qi * k + r] = r < n ? (int64_t)si[r] : -1;
            score[qi * k + r] = r < n ? sv[r] : -INFINITY;
        }
        __syncthreads();
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
        if (b > a && !ids) {  // lists that are not all empty need ids (never read NULL)
            flags[F_EX_NULL_IDS] = 1;
            continue;
        }
        for (int64_t t = a; t < b; t++)
            if (ids[t] < 0 || ids[t] >= rows) flags[F_EX_IDS] = 1;
    }
}

// norm[r] = ‖row r‖₂ in double (any order: the bound carries a margin for it) of n rows.
__global__ void ns_k_row_norms_d(const void *x, ns_dtype t, int64_t ld, int64_t n, int64_t d,
                                 double *norm) {
    for (int64_t r = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; r < n;
         r += (int64_t)gridDim.x * blockDim.x) {
        double s2 = 0.0;
        for (int64_t c = 0; c < d; c++) {
            const double v = ns_load_f32(x, t, (size_t)(r * ld + c));
            s2 += v * v;
        }
        norm[r] = sqrt(s2);
    }
}

// dst (n × d, dense) = the f32 rows rounded to bf16, nearest even (the GEMM's inputs).
__global__ void ns_k_rows_to_bf16(const float *x, int64_t ld, int64_t n, int64_t d,
                                  __nv_bfloat16 *dst) {
    for (int64_t e = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; e < n * d;
         e += (int64_t)gridDim.x * blockDim.x) {
        const int64_t r = e / d, c = e - r * d;
        dst[e] = __float2bfloat16_rn(x[r * ld + c]);
    }
}

}  // namespace

// ------------------------------------------------------------------ host side, by stage

namespace {

// One call's shapes, modes and device workspace (the context's scratch arena).
struct MinePlan {
    int64_t Q, N, d, k, qb, nt, ex_total;
    int64_t S;               // queries per super-block (all Q when the budget allows)
    size_t budget;           // options->workspace_bytes (or the default)
    int64_t cap;             // entries of a query's candidate buffer (buffer_cap)
    int P2;                  // k rounded up to a power of two: a scratch slot
    size_t esz, ctile_b;     // bytes of one corpus tile
    int normalize, host_corpus, pinned_corpus, mixed, host_ex, validate;
    int exact;               // exact scores (TileArgs::xq): bf16 GEMM + re-score; 0: plain
    double rel, abs_e;       // the bound's constants (ns_bound.h) in exact mode
    float *tile[2], *inv_c[2];  // score tiles and tile norms, ping-ponged (mine_tile)
    double *qn, *cn[2];      // exact mode: ‖q_i‖ and the tile's ‖c_j‖ (ping-ponged)
    __nv_bfloat16 *q16, *c16;  // exact mode on f32 rows: their bf16 copies for the GEMM
    float *inv_q, *qf, *cf, *buf_v, *thr_v, *scr_v;
    int *buf_i, *cnt, *thr_i, *scr_i;
    char *ctile[2];          // the corpus tiles of a host corpus (double buffer)
    char *pin[2];            // their pinned host staging (a pageable host corpus)
    int64_t *ex_off, *ex_ids;  // device copies of host exclusion lists
};

// 2 score tiles | inv_q | 2 inv_c | 2 corpus tiles (host corpus) | f32 copies (mixed dtypes) |
// exclusion copies (host lists) | candidate buffers and merge scratch | exact-mode norms and bf16
// copies. Everything per query is sized by the super-block (S queries), not by all Q.
void mine_layout(void *plan, ns_arena *a) {
    MinePlan *P = (MinePlan *)plan;
    for (int b = 0; b < 2; b++) P->tile[b] = (float *)ns_arena_carve(a, (size_t)(P->qb * P->nt) * 4);
    P->inv_q = P->normalize ? (float *)ns_arena_carve(a, (size_t)P->S * 4) : nullptr;
    for (int b = 0; b < 2; b++)
        P->inv_c[b] = P->normalize ? (float *)ns_arena_carve(a, (size_t)P->nt * 4) : nullptr;
    for (int b = 0; b < 2; b++)
        P->ctile[b] = P->host_corpus ? (char *)ns_arena_carve(a, P->ctile_b) : nullptr;
    P->qf = P->mixed ? (float *)ns_arena_carve(a, (size_t)(P->S * P->d) * 4) : nullptr;
    P->cf = P->mixed ? (float *)ns_arena_carve(a, (size_t)(P->nt * P->d) * 4) : nullptr;
    P->ex_off = P->host_ex ? (int64_t *)ns_arena_carve(a, (size_t)(P->Q + 1) * 8) : nullptr;
    P->ex_ids = P->host_ex ? (int64_t *)ns_arena_carve(a, (size_t)(P->ex_total > 0 ? P->ex_total : 1) * 8)
                           : nullptr;
    P->buf_v = (float *)ns_arena_carve(a, (size_t)(P->S * P->cap) * 4);
    P->buf_i = (int *)ns_arena_carve(a, (size_t)(P->S * P->cap) * 4);
    P->cnt = (int *)ns_arena_carve(a, (size_t)P->S * 4);
    P->thr_v = (float *)ns_arena_carve(a, (size_t)P->S * 4);
    P->thr_i = (int *)ns_arena_carve(a, (size_t)P->S * 4);
    P->scr_v = (float *)ns_arena_carve(a, (size_t)P->qb * P->P2 * 4);
    P->scr_i = (int *)ns_arena_carve(a, (size_t)P->qb * P->P2 * 4);
    const int to16 = P->exact && P->esz == 4;
    P->qn = P->exact ? (double *)ns_arena_carve(a, (size_t)P->S * 8) : nullptr;
    for (int b = 0; b < 2; b++)
        P->cn[b] = P->exact ? (double *)ns_arena_carve(a, (size_t)P->nt * 8) : nullptr;
    P->q16 = to16 ? (__nv_bfloat16 *)ns_arena_carve(a, (size_t)(P->S * P->d) * 2) : nullptr;
    P->c16 = to16 ? (__nv_bfloat16 *)ns_arena_carve(a, (size_t)(P->nt * P->d) * 2) : nullptr;
}

// The per-query state of append-then-select, as the kernels see it.
void fill_state(const MinePlan &P, TileArgs *a) {
    a->cap = P.cap;
    a->buf_v = P.buf_v, a->buf_i = P.buf_i, a->cnt = P.cnt, a->thr_v = P.thr_v, a->thr_i = P.thr_i;
    a->scr_v = P.scr_v, a->scr_i = P.scr_i, a->slot = P.P2;
}

void pinned_layout(void *plan, ns_arena *a) {
    MinePlan *P = (MinePlan *)plan;
    for (int b = 0; b < 2; b++) P->pin[b] = (char *)ns_arena_carve(a, P->ctile_b);
}

// Modes and tile shape; the refusals that need no data.
ns_status mine_plan(ns_context *ctx, const char *fn, ns_matrix q, ns_matrix corpus, int64_t k,
                    const ns_mine_options *opt, MinePlan *P) {
    P->Q = q.rows, P->N = corpus.rows, P->d = q.cols, P->k = k;
    if (P->N >= (int64_t)INT_MAX)
        return ns_fail(ctx, NS_ERR_UNSUPPORTED,
                       "%s: corpus.rows (%lld) is too large for the CUDA backend (at most %d)", fn,
                       (long long)P->N, INT_MAX - 1);
    P->normalize = (opt->flags & NS_NORMALIZE) != 0;
    P->host_corpus = !ns_cuda_is_device_ptr(corpus.data);
    P->pinned_corpus = P->host_corpus && ns_cuda_is_pinned_host(corpus.data);
    P->mixed = q.dtype != corpus.dtype;
    const int capturing = ns_cuda_capturing(ctx);
    P->validate = ns_cuda_validating(ctx);
    if (P->host_corpus && capturing)
        return ns_fail(ctx, NS_ERR_UNSUPPORTED,
                       "%s: a corpus in host memory cannot be streamed while the stream is "
                       "captured into a CUDA graph",
                       fn);
    if (opt->progress && capturing)
        return ns_fail(ctx, NS_ERR_UNSUPPORTED,
                       "%s: options->progress needs the host to wait for tiles, which a stream "
                       "being captured into a CUDA graph cannot do",
                       fn);
    P->esz = ns_dtype_size(corpus.dtype);
    // Tile shape: a score tile of at most 8 Mi floats (32 MiB: stays in H100's 50 MB L2). The
    // corpus tile's rows follow from all Q (not the super-block), so that the workspace grows
    // with the super-block's size (mine_super_block searches it).
    const int64_t area = 8ll << 20;
    P->qb = P->Q < 2048 ? P->Q : 2048;
    P->nt = area / P->qb;
    if (P->nt > P->N) P->nt = P->N;
    if (P->nt > (1 << 20)) P->nt = 1 << 20;
    // NS_CUDA_MINE_TILE_ROWS=n (tests): corpus tiles of n rows, so that many tiles, buffer
    // reductions and the final selection run at shapes the host execution layer can afford.
    if (const char *tr = getenv("NS_CUDA_MINE_TILE_ROWS")) {
        const long long n = atoll(tr);
        if (n > 0 && n < P->nt) P->nt = n;
    }
    P->ctile_b = (size_t)(P->nt * P->d) * P->esz;
    // Exact scores unless NS_CUDA_MINE_GEMM=f32 (the plain path: the scores of a GEMM in the
    // data's dtype, kept for the benchmark) or the rows are normalised or of mixed dtypes (the
    // re-score would need the CPU's normalised rows: those take the plain path).
    const char *gemm = getenv("NS_CUDA_MINE_GEMM");
    P->exact = !P->normalize && !P->mixed && !(gemm && strcmp(gemm, "f32") == 0);
    const double aabs = fabs((double)opt->scale);
    // f32 rows are rounded to bf16; the tensor cores' accumulation is ns_bound.h's 3'.
    P->rel = ns_bound_relative(P->d, P->esz == 4, NS_BOUND_ACC_TENSOR_CORE) * aabs;
    P->abs_e = ns_bound_absolute(P->d, aabs);
    P->cap = buffer_cap(k);
    P->P2 = 1;
    while (P->P2 < k) P->P2 <<= 1;
    P->S = P->Q;
    P->budget = opt->workspace_bytes ? opt->workspace_bytes : NS_MINE_WORKSPACE_DEFAULT;
    const ns_id_lists *ex = opt->exclude;
    P->host_ex = ex && !ns_cuda_is_device_ptr(ex->offsets);
    P->ex_total = P->host_ex ? ex->offsets[P->Q] : 0;  // host lists: copied to the device once
    if (P->host_ex && P->ex_total > 0 && !ex->ids)  // the CPU backend's message
        return ns_fail(ctx, NS_ERR_INVALID_ARGUMENT,
                       "%s: options->exclude->ids is NULL but offsets[%lld] is %lld", fn,
                       (long long)P->Q, (long long)P->ex_total);
    return NS_OK;
}

// The device workspace of the plan with super-blocks of S queries (mine_layout on a sizing arena).
size_t mine_bytes(const MinePlan &P, int64_t S) {
    MinePlan T = P;
    T.S = S;
    T.qb = S < 2048 ? S : 2048;
    ns_arena sz = ns_arena_sizer(NS_MEM_DEVICE);
    mine_layout(&T, &sz);
    return sz.used;
}

// Super-blocks: S = Q when everything fits the budget, else as few super-blocks as the largest
// S whose workspace fits allows (bisection: the bytes grow with S), made equal in size; each
// streams the whole corpus. Fails when not even one query fits.
ns_status mine_super_block(ns_context *ctx, const char *fn, MinePlan *P) {
    int64_t lo = 1, hi = P->Q;
    if (mine_bytes(*P, hi) > P->budget) {
        const size_t one = mine_bytes(*P, 1);
        if (one > P->budget)
            return ns_fail(ctx, NS_ERR_OUT_OF_MEMORY,
                           "%s: options->workspace_bytes (%zu) is below the %zu bytes of device "
                           "workspace one query needs (k %lld, %lld columns)",
                           fn, P->budget, one, (long long)P->k, (long long)P->d);
        while (lo < hi - 1) {  // bytes(lo) fits, bytes(hi) does not
            const int64_t mid = lo + (hi - lo) / 2;
            if (mine_bytes(*P, mid) <= P->budget) lo = mid;
            else hi = mid;
        }
        const int64_t blocks = (P->Q + lo - 1) / lo;
        hi = (P->Q + blocks - 1) / blocks;  // ≤ lo: fits
    }
    P->S = hi;
    P->qb = hi < 2048 ? hi : 2048;
    return NS_OK;
}

// Host exclusion lists copied in; q scanned and the lists checked on the device; one sync to
// fail before any work.
ns_status mine_validate(ns_context *ctx, const char *fn, const MinePlan &P, ns_matrix q,
                        const int64_t *&ex_off, const int64_t *&ex_ids, int *&flags) {
    cudaStream_t st = ns_stream(ctx);
    ns_status rc;
    if (P.host_ex) {
        NS_CUDA_TRY(ctx, fn, cudaMemcpyAsync(P.ex_off, ex_off, (size_t)(P.Q + 1) * 8, cudaMemcpyHostToDevice, st));
        if (P.ex_total > 0)
            NS_CUDA_TRY(ctx, fn, cudaMemcpyAsync(P.ex_ids, ex_ids, (size_t)P.ex_total * 8, cudaMemcpyHostToDevice, st));
        ex_off = P.ex_off, ex_ids = P.ex_ids;
    }
    if ((rc = ns_cuda_flags_reset(ctx, fn, &flags))) return rc;
    if ((rc = ns_cuda_scan_nonfinite(ctx, fn, q, 0, P.Q, flags, F_Q, st))) return rc;
    if (ex_off) {
        ns_k_check_exclusions<<<ns_blocks(P.Q), NS_CUDA_THREADS, 0, st>>>(ex_off, ex_ids, P.Q, P.N, flags);
        NS_CUDA_TRY(ctx, fn, cudaGetLastError());
    }
    if (!P.validate) return NS_OK;
    const int *hf;
    if ((rc = ns_cuda_flags_read(ctx, fn, &hf))) return rc;
    int64_t r, c;
    if (ns_cuda_first_nonfinite(hf, F_Q, P.d, &r, &c))
        return ns_fail(ctx, NS_ERR_NONFINITE, "%s: q[%lld][%lld] is not finite; inputs must be finite",
                       fn, (long long)r, (long long)c);
    if (hf[F_EX_OFFSETS])
        return ns_fail(ctx, NS_ERR_INVALID_ARGUMENT,
                       "%s: options->exclude->offsets must start at 0 and never decrease", fn);
    if (hf[F_EX_NULL_IDS]) {  // error path only: one more read, of offsets[Q], for the message
        int64_t total = 0;
        NS_CUDA_TRY(ctx, fn, cudaMemcpy(&total, ex_off + P.Q, 8, cudaMemcpyDeviceToHost));
        return ns_fail(ctx, NS_ERR_INVALID_ARGUMENT,
                       "%s: options->exclude->ids is NULL but offsets[%lld] is %lld", fn,
                       (long long)P.Q, (long long)total);
    }
    if (hf[F_EX_IDS])
        return ns_fail(ctx, NS_ERR_INVALID_ARGUMENT,
                       "%s: options->exclude->ids holds an id outside the corpus rows [0, %lld)",
                       fn, (long long)P.N);
    return NS_OK;
}

// The corpus tile t as a device matrix whose row 0 is corpus row c0: a device corpus in place;
// a host corpus copied on the copy stream through the pinned double buffer (unless pinned), the
// buffer g & 1 (g: tiles staged in this call, over every super-block).
ns_status mine_stage_tile(ns_context *ctx, const char *fn, const MinePlan &P, ns_matrix corpus,
                          int64_t t, int64_t g, cudaStream_t copy, ns_matrix *ct) {
    ns_cuda_state *cs = ctx->cuda;
    cudaStream_t st = ns_stream(ctx);
    cudaEvent_t *copied = cs->ev, *consumed = cs->ev + 2;
    const int64_t c0 = t * P.nt, n = P.N - c0 < P.nt ? P.N - c0 : P.nt;
    const int buf = (int)(g & 1);
    *ct = corpus;
    ct->rows = n;
    if (!P.host_corpus) {
        ct->data = (const char *)corpus.data + (size_t)(c0 * ns_ld(corpus)) * P.esz;
        return NS_OK;
    }
    char *dtile = P.ctile[buf];
    const size_t row_b = (size_t)P.d * P.esz, ld_b = (size_t)ns_ld(corpus) * P.esz;
    const char *src = (const char *)corpus.data + (size_t)c0 * ld_b;
    size_t spitch = ld_b;
    if (!P.pinned_corpus) {
        // The pinned buffer's previous copy (tile g−2) must have left it.
        NS_CUDA_TRY(ctx, fn, cudaEventSynchronize(copied[buf]));
        char *pin = P.pin[buf];
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
    ct->data = dtile;
    ct->ld = P.d;
    return NS_OK;
}

// The GEMM/selection pipeline: GEMMs on the context's stream (the cuBLAS handle's), selections
// on the side stream, each score tile used by every other (corpus tile, query block) pair:
//   GEMM j into tile[j&1] waits sel_done[j&1] (selection j−2 has read that tile), then records
//   gemm_done[j&1]; selection j waits gemm_done[j&1] and records sel_done[j&1]. The norms of
//   corpus tile t go to inv_c[t&1] after norms_free[t&1] (the last selection of tile t−2).
//   Selections stay in order on the side stream (each query's buffer is updated tile after
//   tile); the context's stream waits for the last one before anything reads the buffers.
// So the GEMM of one score tile overlaps the selection of the previous one.
struct Pipe {
    cudaStream_t side;
    cudaEvent_t *gemm_done, *sel_done, *norms_free;  // 2 each (ctx->cuda->side_ev)
    int64_t j;                                        // (corpus tile, query block) pairs issued
};

// The context's stream waits for every selection issued (a no-op before the first).
ns_status pipe_join(ns_context *ctx, const char *fn, const Pipe &pp) {
    if (pp.j == 0) return NS_OK;
    NS_CUDA_TRY(ctx, fn, cudaStreamWaitEvent(ns_stream(ctx), pp.sel_done[(pp.j - 1) & 1], 0));
    return NS_OK;
}

// The queries of one super-block as the kernels see them: their rows (qrows: the caller's),
// the GEMM's operand (qdata, gdt, ldq) and their exclusion offsets (ex_off + the first query).
struct QueryBlock {
    ns_matrix qrows;
    const void *qdata;
    ns_dtype gdt;
    int64_t ldq;
    const int64_t *ex_off;
};

// One staged corpus tile (g: its count in the call, the parity of the ping-ponged norms)
// against every query block of the super-block: GEMM score tile, then ns_k_topk_tile. The
// corpus is scanned for non-finite values in the first super-block only (scan).
ns_status mine_tile(ns_context *ctx, const char *fn, const MinePlan &P, Pipe &pp, ns_matrix ct,
                    int64_t g, int64_t c0, const QueryBlock &qs, float scale, const int64_t *ex_ids,
                    int *flags, int scan) {
    cudaStream_t st = ns_stream(ctx);
    ns_status rc;
    const int64_t n = ct.rows;
    const int tp = (int)(g & 1);
    const void *qdata = qs.qdata;
    const ns_dtype gdt = qs.gdt;
    const int64_t ldq = qs.ldq, sbq = qs.qrows.rows;
    const int64_t *ex_off = qs.ex_off;
    if (scan && (rc = ns_cuda_scan_nonfinite(ctx, fn, ct, 0, n, flags, F_CORPUS, st, c0)))
        return rc;
    if (P.normalize || P.exact) {
        if (g >= 2) NS_CUDA_TRY(ctx, fn, cudaStreamWaitEvent(st, pp.norms_free[tp], 0));
    }
    if (P.normalize && (rc = ns_cuda_row_inv_norms(ctx, fn, ct, 0, n, P.inv_c[tp], st))) return rc;
    const void *cdata = ct.data;
    int64_t ldc = ns_ld(ct);
    if (P.exact) {
        ns_k_row_norms_d<<<ns_blocks(n), NS_CUDA_THREADS, 0, st>>>(ct.data, ct.dtype, ldc, n, P.d, P.cn[tp]);
        NS_CUDA_TRY(ctx, fn, cudaGetLastError());
        if (P.c16) {  // the GEMM of this tile is the last reader of c16 before the next tile's copy
            ns_k_rows_to_bf16<<<ns_blocks(n * P.d), NS_CUDA_THREADS, 0, st>>>(
                (const float *)ct.data, ldc, n, P.d, P.c16);
            NS_CUDA_TRY(ctx, fn, cudaGetLastError());
            cdata = P.c16, ldc = P.d;
        }
    }
    if (P.mixed) {
        if ((rc = ns_cuda_rows_to_f32(ctx, fn, ct, 0, n, P.cf, st))) return rc;
        cdata = P.cf, ldc = P.d;
    }
    for (int64_t q0 = 0; q0 < sbq; q0 += P.qb, pp.j++) {
        const int64_t nq = sbq - q0 < P.qb ? sbq - q0 : P.qb;
        const int b = (int)(pp.j & 1);
        const void *qblk = (const char *)qdata + (size_t)(q0 * ldq) * ns_dtype_size(gdt);
        if (pp.j >= 2) NS_CUDA_TRY(ctx, fn, cudaStreamWaitEvent(st, pp.sel_done[b], 0));
        if ((rc = ns_cuda_gemm(ctx, fn, 0, 1, nq, n, P.d, scale, qblk, gdt, ldq, cdata, gdt, ldc,
                               0.0f, P.tile[b], n)))
            return rc;
        NS_CUDA_TRY(ctx, fn, cudaEventRecord(pp.gemm_done[b], st));
        NS_CUDA_TRY(ctx, fn, cudaStreamWaitEvent(pp.side, pp.gemm_done[b], 0));
        TileArgs a;
        a.score = P.tile[b], a.ld_score = n, a.q0 = q0, a.c0 = c0, a.nt = (int)n, a.k = (int)P.k;
        a.inv_q = P.inv_q, a.inv_c = P.inv_c[tp], a.ex_off = ex_off, a.ex_ids = ex_ids;
        fill_state(P, &a);
        a.flags = flags;
        a.xq = nullptr, a.xc = nullptr, a.qn = nullptr, a.cn = nullptr;
        a.ldxq = a.ldxc = 0, a.xdt = ct.dtype, a.d = (int)P.d, a.rel = P.rel, a.abs_e = P.abs_e;
        a.scale = scale;
        if (P.exact) {
            a.xq = qs.qrows.data, a.ldxq = ns_ld(qs.qrows), a.xc = ct.data, a.ldxc = ns_ld(ct);
            a.qn = P.qn, a.cn = P.cn[tp];
        }
        ns_k_topk_tile<<<(unsigned)nq, kThreads, 0, pp.side>>>(a);
        NS_CUDA_TRY(ctx, fn, cudaGetLastError());
        NS_CUDA_TRY(ctx, fn, cudaEventRecord(pp.sel_done[b], pp.side));
    }
    if (P.normalize || P.exact) {
        NS_CUDA_TRY(ctx, fn, cudaEventRecord(pp.norms_free[tp], pp.side));
        // sel_done of the last pair marks the side stream's end again (pipe_join waits on it).
        NS_CUDA_TRY(ctx, fn, cudaEventRecord(pp.sel_done[(pp.j - 1) & 1], pp.side));
    }
    return NS_OK;
}

// The non-finite status of the corpus and scores (one sync), then the outputs of the nq
// queries of the super-block (async; index and score point at its first row).
ns_status mine_finish(ns_context *ctx, const char *fn, const MinePlan &P, int64_t nq, int64_t *index,
                      float *score) {
    cudaStream_t st = ns_stream(ctx);
    ns_status rc;
    if (P.validate) {
        const int *hf;
        if ((rc = ns_cuda_flags_read(ctx, fn, &hf))) return rc;
        int64_t r, c;
        if (ns_cuda_first_nonfinite(hf, F_CORPUS, P.d, &r, &c))
            return ns_fail(ctx, NS_ERR_NONFINITE, "%s: corpus[%lld][%lld] is not finite; inputs must be finite",
                           fn, (long long)r, (long long)c);
        if (hf[F_SCORE])
            return ns_fail(ctx, NS_ERR_NONFINITE,
                           "%s: a score is non-finite although the inputs are finite: q·corpus "
                           "overflows f32 (scale the embeddings or options->scale down)",
                           fn);
    }
    TileArgs a;
    memset(&a, 0, sizeof a);
    a.k = (int)P.k;
    fill_state(P, &a);
    ns_k_topk_final<<<(unsigned)P.qb, kThreads, 0, st>>>(a, nq, P.P2, index, score);
    NS_CUDA_TRY(ctx, fn, cudaGetLastError());
    return NS_OK;
}

}  // namespace

// The per-query state of super-block [s0, s0 + n): the GEMM's operand (f32 copies of mixed
// dtypes, bf16 copies of f32 rows in exact mode), the norms, the empty candidate buffers.
ns_status mine_queries(ns_context *ctx, const char *fn, const MinePlan &P, ns_matrix q, int64_t s0,
                       int64_t n, const int64_t *ex_off, QueryBlock *qs) {
    cudaStream_t st = ns_stream(ctx);
    ns_status rc;
    ns_matrix rows = q;
    rows.data = (const char *)q.data + (size_t)(s0 * ns_ld(q)) * ns_dtype_size(q.dtype);
    rows.rows = n;
    rows.ld = ns_ld(q);
    qs->qrows = rows;
    qs->qdata = rows.data, qs->gdt = q.dtype, qs->ldq = rows.ld;
    qs->ex_off = ex_off ? ex_off + s0 : nullptr;
    if (P.mixed) {
        if ((rc = ns_cuda_rows_to_f32(ctx, fn, rows, 0, n, P.qf, st))) return rc;
        qs->qdata = P.qf, qs->gdt = NS_F32, qs->ldq = P.d;
    }
    if (P.exact) {
        ns_k_row_norms_d<<<ns_blocks(n), NS_CUDA_THREADS, 0, st>>>(rows.data, q.dtype, rows.ld, n, P.d, P.qn);
        NS_CUDA_TRY(ctx, fn, cudaGetLastError());
        if (P.q16) {
            ns_k_rows_to_bf16<<<ns_blocks(n * P.d), NS_CUDA_THREADS, 0, st>>>(
                (const float *)rows.data, rows.ld, n, P.d, P.q16);
            NS_CUDA_TRY(ctx, fn, cudaGetLastError());
            qs->qdata = P.q16, qs->gdt = NS_BF16, qs->ldq = P.d;
        }
    }
    if (P.normalize && (rc = ns_cuda_row_inv_norms(ctx, fn, rows, 0, n, P.inv_q, st))) return rc;
    ns_k_topk_init<<<ns_blocks(n), NS_CUDA_THREADS, 0, st>>>(P.cnt, P.thr_v, P.thr_i, n);
    NS_CUDA_TRY(ctx, fn, cudaGetLastError());
    return NS_OK;
}

// Synchronisation: once after validating the exclusion lists and scanning q (so bad input
// fails before any work), once per tile only when a progress callback is set or the corpus is
// in host memory (waiting for the tile before last: at most two tiles in flight), and once per
// super-block at its end to learn whether a score was non-finite; the super-block's outputs are
// written after that (async). While the stream is captured into a graph none of these checks run.
ns_status ns_cuda_mine_topk(ns_context *ctx, ns_matrix q, ns_matrix corpus, int64_t k,
                            const ns_mine_options *opt, int64_t *index, float *score) {
    static const char *fn = "ns_mine_topk";
    cudaStream_t st = ns_stream(ctx);
    ns_cuda_state *cs = ctx->cuda;
    ns_status rc;
    MinePlan P;
    if ((rc = mine_plan(ctx, fn, q, corpus, k, opt, &P))) return rc;
    if ((rc = mine_super_block(ctx, fn, &P))) return rc;
    if ((rc = ns_arena_lay_out(ctx, &cs->scratch, mine_layout, &P, fn))) return rc;
    const int64_t *ex_off = opt->exclude ? opt->exclude->offsets : nullptr;
    const int64_t *ex_ids = opt->exclude ? opt->exclude->ids : nullptr;
    int *flags;
    if ((rc = mine_validate(ctx, fn, P, q, ex_off, ex_ids, flags))) return rc;

    cudaStream_t copy = nullptr;
    cudaEvent_t *consumed = cs->ev + 2;
    if (P.host_corpus || opt->progress) {
        if ((rc = ns_cuda_copy_stream(ctx, fn, &copy))) return rc;
        // Work already queued on the stream may still read the workspace the copies overwrite.
        NS_CUDA_TRY(ctx, fn, cudaEventRecord(consumed[0], st));
        NS_CUDA_TRY(ctx, fn, cudaEventRecord(consumed[1], st));
    }
    if (P.host_corpus && !P.pinned_corpus && (rc = ns_arena_lay_out(ctx, &cs->pinned, pinned_layout, &P, fn)))
        return rc;

    Pipe pp;
    cudaEvent_t *sev;
    if ((rc = ns_cuda_side_stream(ctx, fn, &pp.side, &sev))) return rc;
    pp.gemm_done = sev, pp.sel_done = sev + 2, pp.norms_free = sev + 4, pp.j = 0;
    const int64_t tiles = (P.N + P.nt - 1) / P.nt, blocks = (P.Q + P.S - 1) / P.S;
    int64_t g = 0;  // corpus tiles staged in this call (the double buffers' parity)
    for (int64_t b = 0; b < blocks; b++) {
        const int64_t s0 = b * P.S, nq = P.Q - s0 < P.S ? P.Q - s0 : P.S;
        QueryBlock qs;
        if ((rc = mine_queries(ctx, fn, P, q, s0, nq, ex_off, &qs))) return rc;
        for (int64_t t = 0; t < tiles; t++, g++) {
            const int64_t c0 = t * P.nt;
            const int buf = (int)(g & 1);
            ns_matrix ct;
            if ((rc = mine_stage_tile(ctx, fn, P, corpus, t, g, copy, &ct)) ||
                (rc = mine_tile(ctx, fn, P, pp, ct, g, c0, qs, opt->scale, ex_ids, flags,
                                P.validate && b == 0))) {
                pipe_join(ctx, fn, pp);  // queued selections still use the workspace
                return rc;
            }
            // Exact mode re-scores from the staged tile on the side stream: its buffer is free
            // for the copy of tile g + 2 only after those selections.
            if (copy && P.exact && (rc = pipe_join(ctx, fn, pp))) return rc;
            if (copy) NS_CUDA_TRY(ctx, fn, cudaEventRecord(consumed[buf], st));
            if (opt->progress) {
                if (g >= 1) NS_CUDA_TRY(ctx, fn, cudaEventSynchronize(consumed[buf ^ 1]));
                const int64_t done = b * P.N + c0 + ct.rows, total = blocks * P.N;
                if (opt->progress(done, total, opt->progress_user)) {
                    pipe_join(ctx, fn, pp);
                    cudaStreamSynchronize(st);  // the queued tiles still use the workspace
                    return ns_fail(ctx, NS_ERR_INVALID_ARGUMENT,
                                   "%s: cancelled by the progress callback after %lld of %lld corpus "
                                   "rows (%lld query super-blocks)",
                                   fn, (long long)done, (long long)total, (long long)blocks);
                }
            }
        }
        if ((rc = pipe_join(ctx, fn, pp))) return rc;
        if ((rc = mine_finish(ctx, fn, P, nq, index + s0 * P.k, score + s0 * P.k))) return rc;
    }
    return NS_OK;
}
