// The CUDA training step's device memory, term by term, as kernels/README.md ("Sizes and
// limits") states it: COMPUTED from the layouts the code carves (src/step.c step_layout,
// kernels/cuda_infonce.cu state_layout, kernels/cuda_infonce_fused.cu plan_strip), not measured
// on a GPU. CudaParity.StepDevicePeakMatchesTheFormula holds it to the host execution layer's
// count of every cudaMalloc at small shapes; Sizes.StepDeviceMemoryAtIssueShapes holds the
// README's numbers to it.
//
// The shape: B queries, their B positives as the passages (N = B), d columns of es bytes (the
// same dtype for both), no hard negatives, no queue, one rank: ns_step_forward (fused: the
// gradients at grad_loss 1 are computed in the forward) then ns_step_backward into the caller's
// f32 gradients of the queries and positives.
#pragma once

#include <cstdint>

namespace nsmem {

constexpr int64_t kCarve = 256;  // the device arena's alignment (src/ns_arena.h)
inline int64_t carve(int64_t bytes) { return (bytes + kCarve - 1) / kCarve * kCarve; }
inline int64_t align64(int64_t floats) { return (floats + 63) / 64 * 64; }  // a kept tile's slot

struct StepShape {
    int64_t B, d, es;
    bool sym;
    bool checked = true;                   // the checked step (its deferred words); false: sync_free
    int64_t tb = 4096, tn = 4096;          // the loss's tile (ns_infonce_set_tiles in tests)
    int64_t strip_budget = int64_t(512) << 20, strip_min_rows = 256;  // ns_infonce_set_strip
};

struct StepMemory {
    int64_t inputs;   // the caller's q and p (B·d·es each)
    int64_t grads;    // the caller's dq and dp (f32, B·d·4 each)
    int64_t step;     // the step's arena: ids, per-query loss, saved statistics, the fused dq, dp
    int64_t state;    // the loss's O(B + N) statistics and its partial sums
    int64_t tiles;    // one f32 logit tile (and its bf16/f16 copy for the gradient GEMMs)
    int64_t strip;    // the fused call's kept logit tiles (0: forward then backward)
    int64_t context;  // the context's cuBLAS workspace and status words
    int64_t total() const { return inputs + grads + step + state + tiles + strip + context; }
};

// The fused call's strip in bytes (plan_strip): S.tb-row tiles when T column tiles of them fit
// the budget, else the most rows that fit (a multiple of 64 from 64 on), none below the fewest
// rows (the call then runs the forward, then the backward); as many row tiles as fit.
inline int64_t strip_bytes(int64_t B, int64_t N, int64_t tb, int64_t tn, int64_t budget, int64_t min_rows) {
    const int64_t T = (N + tn - 1) / tn;
    auto bytes = [&](int64_t sub) { return T * align64(sub * tn) * 4; };
    if (min_rows > tb) min_rows = tb;
    int64_t sub = tb;
    if (bytes(sub) > budget) {
        sub = 0;
        while (sub < tb && bytes(sub + 1) <= budget) sub++;
        if (sub >= 64) sub -= sub % 64;
        if (sub < min_rows || sub < 1) return 0;
    }
    int64_t nsub = budget / bytes(sub), tiles = (B + sub - 1) / sub;
    if (nsub > tiles) nsub = tiles;
    if (nsub < 1) nsub = 1;
    return nsub * bytes(sub);
}

inline StepMemory step_memory(const StepShape &s) {
    const int64_t B = s.B, N = s.B, d = s.d;
    StepMemory m;
    m.inputs = 2 * B * d * s.es;
    m.grads = 2 * B * d * 4;
    // pos_ids, pos_offsets, loss, per_query, saved (8 floats a query), fused dq and dp, dτ
    m.step = carve(8 * B) + carve(8 * (B + 1)) + carve(4) + carve(4 * B) + carve(32 * B) +
             2 * carve(4 * B * d) + carve(4);
    // row max m, sums a and w, dτ parts, counts, positive ids; symmetric: the columns' positive
    // flags, max, sum, the backward's max and factor and fixed-point sums; 2 × 65,536 partials
    m.state = carve(4 * B) + 5 * carve(8 * B) + carve(2 * 65536 * 8);
    if (s.sym) m.state += carve(N) + 3 * carve(8 * N) + 2 * carve(4 * N);
    const int64_t tb = B < s.tb ? B : s.tb, tn = N < s.tn ? N : s.tn;
    m.tiles = carve(tb * tn * 4) + (s.es == 4 ? 0 : carve(tb * tn * 2));
    m.strip = carve(strip_bytes(B, N, tb, tn, s.strip_budget, s.strip_min_rows));
    // cuBLAS's 32 MiB workspace, the status words, the checked step's deferred words
    m.context = (int64_t(32) << 20) + 512 + (s.checked ? 512 : 0);
    return m;
}

}  // namespace nsmem
