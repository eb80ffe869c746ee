/* ns_similarity on the CPU: s = scale · q · pᵀ tile by tile through OpenBLAS. */
#include "cpu_tiles.h"
#include "ns_cpu.h"

/* Rows per tile. A p tile is converted once and reused against every q tile; q tiles are
 * reconverted per p tile (a cost of 1/P_TILE of the product). Large enough that each sgemm call
 * keeps OpenBLAS's own blocking efficient. */
#define Q_TILE 2048
#define P_TILE 4096

typedef struct {
    size_t qbytes, pbytes;
    float *qbuf, *pbuf;
} sim_tiles;

static void sim_layout(void *plan, ns_arena *a) {
    sim_tiles *t = (sim_tiles *)plan;
    t->qbuf = (float *)ns_arena_carve(a, t->qbytes);
    t->pbuf = (float *)ns_arena_carve(a, t->pbytes);
}

ns_status ns_cpu_similarity(ns_context *ctx, ns_matrix q, ns_matrix p, float scale,
                            unsigned flags, float *s) {
    static const char *fn = "ns_similarity";
    /* Scan first (O((Q+P)·d), far below the product) so s is never half-written. */
    int64_t row, col;
    float value;
    if (ns_tile_find_nonfinite(q, 0, q.rows, &row, &col, &value))
        return ns_tile_fail_nonfinite(ctx, fn, "q", row, col, value);
    if (ns_tile_find_nonfinite(p, 0, p.rows, &row, &col, &value))
        return ns_tile_fail_nonfinite(ctx, fn, "p", row, col, value);

    const int normalize = (flags & NS_NORMALIZE) != 0;
    const int threads = ns_threads(ctx);
    const int64_t d = q.cols, P = p.rows;
    const int64_t qt = q.rows < Q_TILE ? q.rows : Q_TILE;
    const int64_t pt = P < P_TILE ? P : P_TILE;
    sim_tiles t;
    t.qbytes = ns_tile_needs_buffer(q, normalize) ? (size_t)(qt * d) * sizeof(float) : 0;
    t.pbytes = ns_tile_needs_buffer(p, normalize) ? (size_t)(pt * d) * sizeof(float) : 0;
    ns_status st = ns_arena_lay_out(ctx, &ctx->scratch, sim_layout, &t, fn);
    if (st) return st;

    /* With a single q tile, convert it once rather than once per p tile. */
    const int q_once = q.rows <= qt;
    int64_t ldq = 0;
    const float *qv = q_once ? ns_tile_rows(q, 0, q.rows, normalize, t.qbuf, &ldq, threads) : NULL;
    for (int64_t p0 = 0; p0 < P; p0 += pt) {
        int64_t np = P - p0 < pt ? P - p0 : pt, ldp;
        const float *pv = ns_tile_rows(p, p0, np, normalize, t.pbuf, &ldp, threads);
        for (int64_t q0 = 0; q0 < q.rows; q0 += qt) {
            int64_t nq = q.rows - q0 < qt ? q.rows - q0 : qt;
            if (!q_once) qv = ns_tile_rows(q, q0, nq, normalize, t.qbuf, &ldq, threads);
            /* OpenBLAS threads itself: one call per tile from this thread. */
            ns_sgemm_nt(nq, np, d, scale, qv, ldq, pv, ldp, 0.0f, s + q0 * P + p0, P);
        }
    }
    return NS_OK;
}
