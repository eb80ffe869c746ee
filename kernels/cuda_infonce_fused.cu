// ns_infonce_forward_backward on CUDA: each logit tile computed by one GEMM, kept, and turned
// into gradients after its rows' statistics are complete — three GEMMs per tile where the
// forward then the backward take four (the backward recomputes every tile).
//
// Rows are processed in strips: a strip is nsub consecutive row tiles of the two calls' shape
// (S.tb rows; the GEMMs are issued per row tile exactly as the two calls issue them), and keeps
// every logit tile of those rows (all column tiles of every block, and the own hard negatives'
// h logits) in the workspace. Per strip: the forward tiles (GEMM → row statistics), the row
// finish, then per kept tile the gradient kernel and the two gradient GEMMs. The statistics and
// GEMMs are the forward's and backward's own pieces (forward_tile, grad_tile, ...), in the same
// order, so the outputs are the two calls' bits.
//
// Symmetric: a passage column's gradient needs the column statistics over every row. When one
// strip holds all rows, its forward tiles gather them (as the forward does) before any
// gradient: three GEMMs per tile. Otherwise a column pass runs first (the passage tiles' GEMMs
// and column statistics in the forward's row tiles, with the positive logits), so passage tiles
// take four GEMMs and hard/extra tiles three — the CPU fused path's design (the column pass
// cannot be avoided without keeping all B × N logits).
//
// Memory: the strip is capped (512 MiB, ns_infonce_set_strip in tests). When one row tile of
// S.tb rows does not fit, the strip's row tiles get fewer rows (a multiple of 64): still
// deterministic, but dC sums over other row chunks than the two calls' (equal within f32
// rounding, not bit for bit). Below 256 rows (GEMMs too thin to pay) the call runs the forward
// then the backward. Every kept tile starts 256-byte aligned, as the two calls' tile does.
//
// Synchronisation: the data validation (one, skipped when deferred, off or capturing) and one
// read of the loss and dL/dτ at the end when they are host floats; none with device outputs.
#include "cuda_infonce.cuh"

using namespace nsloss;

namespace {

constexpr int64_t kStripBytes = (int64_t)512 << 20;
constexpr int64_t kStripMinRows = 256;
constexpr int64_t kAlignFloats = 64;  // 256 bytes

inline int64_t align_up(int64_t n) { return (n + kAlignFloats - 1) / kAlignFloats * kAlignFloats; }

// The strip's shape: row tiles of `sub` rows, `nsub` per strip, `T` column tiles per row tile
// (every block's), each kept in a slot of `slot` floats (and the own hard logits in `hslot`).
struct Strip {
    int64_t sub, nsub, slot, hslot;
    int64_t T;
    int64_t tbase[3];  // first column tile of each block
    float *x, *hx;
};

// Chooses the strip for the budget: the two calls' row tiles when one fits (bit for bit), else
// thinner ones; false when even min_rows rows do not fit (then forward, then backward).
bool plan_strip(ns_context *ctx, const Plan &P, const State &S, const Block *blk, int nblk, Strip *sp) {
    const int64_t budget = ctx->loss_strip_bytes > 0 ? ctx->loss_strip_bytes : kStripBytes;
    int64_t min_rows = ctx->loss_strip_rows > 0 ? ctx->loss_strip_rows : kStripMinRows;
    if (min_rows > S.tb) min_rows = S.tb;
    sp->T = 0;
    for (int b = 0; b < nblk; b++) {
        sp->tbase[b] = sp->T;
        sp->T += (blk[b].rows + S.tn - 1) / S.tn;
    }
    const int64_t h = P.own_hard ? P.h : 0;
    auto bytes = [&](int64_t sub) { return (sp->T * align_up(sub * S.tn) + (h ? align_up(sub * h) : 0)) * 4; };
    int64_t sub = S.tb;
    if (bytes(sub) > budget) {
        // the most rows that fit (bytes grows with the rows), a multiple of 64 when that many
        int64_t lo = 0, hi = S.tb;
        while (lo < hi) {
            const int64_t mid = (lo + hi + 1) / 2;
            if (bytes(mid) <= budget) lo = mid;
            else hi = mid - 1;
        }
        sub = lo >= 64 ? lo - lo % 64 : lo;
        if (sub < min_rows || sub < 1) return false;
    }
    const int64_t tiles = (P.B + sub - 1) / sub;
    int64_t nsub = budget / bytes(sub);
    if (nsub > tiles) nsub = tiles;
    if (nsub < 1) nsub = 1;
    sp->sub = sub;
    sp->nsub = nsub;
    sp->slot = align_up(sub * S.tn);
    sp->hslot = h ? align_up(sub * h) : 0;
    return true;
}

// The kept tile of row tile s (of its strip), column tile t (the own hard logits: hard_tile).
inline float *kept_tile(const Strip &sp, int64_t s, int64_t t) { return sp.x + (s * sp.T + t) * sp.slot; }
inline float *hard_tile(const Strip &sp, int64_t s) { return sp.hx + s * sp.hslot; }

struct Call {
    const Plan &P;
    const State &S;
    const Strip &sp;
    const Block *blk;
    int nblk;
    float beta, wt;
    float *saved, *gq, *gh;
    bool want_tau;
};

// Symmetric with several strips: the column statistics and positive logits of every row (the
// forward's row tiles, passage tiles only, through the workspace tile), then every query's
// column log-sum-exp and the backward's column factors.
ns_status column_pass(ns_context *ctx, const char *fn, const Call &c) {
    const Plan &P = c.P;
    const State &S = c.S;
    ns_status rc;
    for (int64_t r0 = 0; r0 < P.B; r0 += S.tb) {
        const int64_t nb = P.B - r0 < S.tb ? P.B - r0 : S.tb;
        for (int64_t j0 = 0; j0 < P.N; j0 += S.tn)
            if ((rc = forward_tile(ctx, fn, P, S, c.blk[0], c.beta, r0, nb, j0, P.N - j0 < S.tn ? P.N - j0 : S.tn,
                                   S.tile, kTileColumns, c.saved)))
                return rc;
    }
    if ((rc = column_lse(ctx, fn, P, S, c.saved))) return rc;
    return column_factors(ctx, fn, P, S, c.saved);
}

// The forward tiles of the strip's row tiles [g0, g0 + nsub·sub), kept; what = the statistics
// they feed.
ns_status strip_forward(ns_context *ctx, const char *fn, const Call &c, int64_t g0, int what) {
    const Plan &P = c.P;
    const Strip &sp = c.sp;
    ns_status rc;
    for (int64_t s = 0, r0 = g0; s < sp.nsub && r0 < P.B; s++, r0 += sp.sub) {
        const int64_t nb = P.B - r0 < sp.sub ? P.B - r0 : sp.sub;
        for (int b = 0; b < c.nblk; b++)
            for (int64_t j0 = 0, t = sp.tbase[b]; j0 < c.blk[b].rows; j0 += c.S.tn, t++) {
                const int64_t nc = c.blk[b].rows - j0 < c.S.tn ? c.blk[b].rows - j0 : c.S.tn;
                if ((rc = forward_tile(ctx, fn, P, c.S, c.blk[b], c.beta, r0, nb, j0, nc, kept_tile(sp, s, t),
                                       what, c.saved)))
                    return rc;
            }
        if (P.own_hard && (rc = forward_own_hard(ctx, fn, P, c.S, c.beta, r0, nb, hard_tile(sp, s), c.saved)))
            return rc;
    }
    return NS_OK;
}

// The gradients of the strip's kept tiles, in the backward's order.
ns_status strip_backward(ns_context *ctx, const char *fn, const Call &c, int64_t g0) {
    const Plan &P = c.P;
    const Strip &sp = c.sp;
    ns_status rc;
    for (int64_t s = 0, r0 = g0; s < sp.nsub && r0 < P.B; s++, r0 += sp.sub) {
        const int64_t nb = P.B - r0 < sp.sub ? P.B - r0 : sp.sub;
        for (int b = 0; b < c.nblk; b++) {
            if (!c.gq && !c.want_tau && !c.blk[b].grad) continue;
            for (int64_t j0 = 0, t = sp.tbase[b]; j0 < c.blk[b].rows; j0 += c.S.tn, t++) {
                const int64_t nc = c.blk[b].rows - j0 < c.S.tn ? c.blk[b].rows - j0 : c.S.tn;
                if ((rc = grad_tile(ctx, fn, P, c.S, c.blk[b], c.beta, c.wt, r0, nb, j0, nc, kept_tile(sp, s, t),
                                    c.saved, c.gq)))
                    return rc;
            }
        }
        if (P.own_hard && (rc = grad_own_hard(ctx, fn, P, c.S, c.beta, c.wt, r0, nb, hard_tile(sp, s), c.saved,
                                              c.gq, c.gh)))
            return rc;
    }
    return NS_OK;
}

// Every strip: forward tiles, the strip's row finish (the symmetric one-strip case: the column
// statistics completed first, then the column factors), the gradients.
ns_status run_strips(ns_context *ctx, const char *fn, const Call &c, const ns_loss_options *o) {
    const Plan &P = c.P;
    const int64_t G = c.sp.nsub * c.sp.sub;
    const bool one = G >= P.B;
    ns_status rc;
    if (P.sym && !one && (rc = column_pass(ctx, fn, c))) return rc;
    for (int64_t g0 = 0; g0 < P.B; g0 += G) {
        const int64_t ng = P.B - g0 < G ? P.B - g0 : G;
        if ((rc = strip_forward(ctx, fn, c, g0, kTileRows | (P.sym && one ? kTileColumns : 0)))) return rc;
        if ((rc = finish_rows(ctx, fn, P, c.S, o, g0, ng, c.saved, nullptr, nullptr))) return rc;
        if (P.sym && one && (rc = column_factors(ctx, fn, P, c.S, c.saved))) return rc;
        if ((rc = strip_backward(ctx, fn, c, g0))) return rc;
    }
    return NS_OK;
}

// The forward then the backward (no strip fits, or no gradient is wanted), the data already
// validated: the two calls run without their own checks.
ns_status two_calls(ns_context *ctx, const char *fn, const ns_infonce_inputs *in, const ns_loss_options *o,
                    float grad_loss, float *loss, float *loss_dev, float *per_query, float *saved,
                    const ns_infonce_grads *grads, float *dtau_dev, bool backward) {
    const int checks = ns_cuda_swap_input_checks(ctx, 0);
    ns_status rc = forward_call(ctx, fn, in, o, loss, loss_dev, per_query, saved);
    if (!rc && backward) rc = backward_call(ctx, fn, in, o, saved, grad_loss, grads, dtau_dev);
    ns_cuda_swap_input_checks(ctx, checks);
    return rc;
}

// loss and grads->temperature host floats (one synchronisation at the end), or loss_dev and
// dtau_dev device floats (none).
ns_status fused(ns_context *ctx, const ns_infonce_inputs *in, const ns_loss_options *o, float grad_loss,
                float *loss, float *loss_dev, float *per_query, float *saved, const ns_infonce_grads *grads,
                float *dtau_dev) {
    static const char *fn = "ns_infonce_forward_backward";
    if (loss && ns_cuda_capturing(ctx))
        return ns_fail(ctx, NS_ERR_UNSUPPORTED,
                       "%s: loss is a host float and needs a synchronisation, which a stream being "
                       "captured into a CUDA graph cannot do (the step's sync_free path writes it to the "
                       "device)",
                       fn);
    Plan P;
    State S{};
    ns_status rc;
    if ((rc = plan_init(ctx, fn, in, o, &P))) return rc;
    float *tau_host = loss ? grads->temperature : nullptr;
    if (loss) dtau_dev = nullptr;  // the host call's dτ is grads->temperature
    const bool want_tau = tau_host || dtau_dev;
    float *gq = grads->query, *gp = grads->passage, *gh = P.h > 0 ? grads->hard : nullptr;
    ns_infonce_grads g2 = {gq, gp, gh, tau_host};
    if (!gq && !gp && !gh && !want_tau)
        return two_calls(ctx, fn, in, o, grad_loss, loss, loss_dev, per_query, saved, &g2, dtau_dev, false);
    shape(ctx, in, P, S);
    Block blk[3];  // their rows (the views come with setup)
    const int nblk = blocks_of(P, blk, gp, gh);
    Strip sp;
    if (!plan_strip(ctx, P, S, blk, nblk, &sp))
        return two_calls(ctx, fn, in, o, grad_loss, loss, loss_dev, per_query, saved, &g2, dtau_dev, true);
    S.strip_floats = sp.nsub * (sp.T * sp.slot + sp.hslot);
    if ((rc = setup(ctx, fn, in, P, S))) return rc;
    blocks_of(P, blk, gp, gh);  // again: the GEMM views are resolved now
    sp.x = S.strip;
    sp.hx = S.strip + sp.nsub * sp.T * sp.slot;
    cudaStream_t st = ns_stream(ctx);
    if (gq) NS_CUDA_TRY(ctx, fn, cudaMemsetAsync(gq, 0, (size_t)(P.B * P.d) * 4, st));
    if (gp) NS_CUDA_TRY(ctx, fn, cudaMemsetAsync(gp, 0, (size_t)(P.N * P.d) * 4, st));
    if (gh) NS_CUDA_TRY(ctx, fn, cudaMemsetAsync(gh, 0, (size_t)(P.B * P.h * P.d) * 4, st));
    int *flags;
    if ((rc = ns_cuda_flags_reset(ctx, fn, &flags))) return rc;
    double *total = (double *)(NS_CUDA_WIDE(flags) + W_TOTAL), *tau = (double *)(NS_CUDA_WIDE(flags) + W_TAU);
    InitArgs ia{P.B, P.N, P.ids, S.m, S.a, S.w, S.rtau, S.n, S.posid, S.ispos, S.cmax, S.csum};
    if ((rc = init_state(ctx, fn, ia, P.sym))) return rc;
    const double w = (double)grad_loss / (double)P.B * (P.sym ? 0.5 : 1.0);
    const Call c{P, S, sp, blk, nblk, o->beta, (float)(w / P.tau), saved, gq, gh, want_tau};
    if ((rc = run_strips(ctx, fn, c, o))) return rc;
    // The finish of every row once more (the same bits) for per_query and the total in the
    // forward's fixed order.
    if ((rc = finish_rows(ctx, fn, P, S, o, 0, P.B, saved, per_query, total))) return rc;
    if (want_tau && (rc = tau_total(ctx, fn, P, S, saved, tau))) return rc;
    if (loss_dev) {
        if ((rc = loss_mean(ctx, fn, total, P.B, loss_dev))) return rc;
        return dtau_dev ? dtau_device(ctx, fn, tau, w, (double)P.tau, dtau_dev) : NS_OK;
    }
    const int *hf;
    if ((rc = ns_cuda_flags_read(ctx, fn, &hf))) return rc;
    *loss = (float)(*(const double *)(NS_CUDA_WIDE(hf) + W_TOTAL) / (double)P.B);
    if (tau_host) {
        const double *r = (const double *)(NS_CUDA_WIDE(hf) + W_TAU);
        *tau_host = (float)(w * (-r[0] / (double)P.tau + r[1]));
    }
    return NS_OK;
}

}  // namespace

ns_status ns_cuda_infonce_forward_backward(ns_context *ctx, const ns_infonce_inputs *in,
                                           const ns_loss_options *opt, float grad_loss, float *loss,
                                           float *per_query, float *saved, const ns_infonce_grads *grads) {
    return fused(ctx, in, opt, grad_loss, loss, nullptr, per_query, saved, grads, nullptr);
}

ns_status ns_cuda_infonce_forward_backward_device(ns_context *ctx, const ns_infonce_inputs *in,
                                                  const ns_loss_options *opt, float grad_loss,
                                                  float *loss_dev, float *per_query, float *saved,
                                                  const ns_infonce_grads *grads, float *dtau_dev) {
    return fused(ctx, in, opt, grad_loss, nullptr, loss_dev, per_query, saved, grads, dtau_dev);
}
