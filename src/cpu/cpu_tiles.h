/* Row tiles shared by ns_similarity and ns_mine_topk on the CPU (src/cpu/cpu_tiles.c): a fast NaN/Inf scan
 * that reports where, and f32 (optionally L2-normalised) views of a block of rows. */
#ifndef NS_TILES_H
#define NS_TILES_H

#include "ns_cpu.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ns_mine_topk's blocking: query rows per score tile, and corpus rows per block (streamed once,
 * in order): NS_MINE_CORPUS_BLOCK for a full query tile (a 2048 × 4096 f32 tile is 32 MiB),
 * more for fewer queries so that a tile stays about that large, up to NS_MINE_CORPUS_BLOCK_MAX
 * rows and, when the block is converted to f32, a 64 MiB conversion buffer. Few large tiles:
 * every switch between OpenBLAS's threads and the OpenMP team costs spin-waiting on both sides.
 * bench/bench_mine.c times the bare sgemm with the same blocking. */
#define NS_MINE_CORPUS_BLOCK 2048
#define NS_MINE_CORPUS_BLOCK_MAX 65536
#define NS_MINE_QUERY_BLOCK 4096

static inline int64_t ns_mine_query_block(int64_t queries) {
    return queries < NS_MINE_QUERY_BLOCK ? queries : NS_MINE_QUERY_BLOCK;
}

static inline int64_t ns_mine_corpus_block(int64_t queries, int64_t corpus_rows, int64_t cols,
                                           int converts) {
    int64_t qb = ns_mine_query_block(queries);
    int64_t cb = NS_MINE_CORPUS_BLOCK * (NS_MINE_QUERY_BLOCK / qb);
    if (cb > NS_MINE_CORPUS_BLOCK_MAX) cb = NS_MINE_CORPUS_BLOCK_MAX;
    if (converts) { /* the f32 copy of the block: at most 64 MiB */
        int64_t fit = ((int64_t)64 << 20) / (cols * (int64_t)sizeof(float));
        if (cb > fit) cb = fit;
    }
    if (cb < NS_MINE_CORPUS_BLOCK) cb = NS_MINE_CORPUS_BLOCK;
    return corpus_rows < cb ? corpus_rows : cb;
}

/* Scans rows [r0, r0+n) of m for NaN/Inf. Returns 0 when all are finite, else 1 with the first
 * offender's row, column and value (as f32). Vectorisable: one compare per element. */
int ns_tile_find_nonfinite(ns_matrix m, int64_t r0, int64_t n, int64_t *row, int64_t *col,
                           float *value);

/* Records "fn: name[row][col] is <value>; inputs must be finite" as NS_ERR_NONFINITE. */
ns_status ns_tile_fail_nonfinite(ns_context *ctx, const char *fn, const char *name, int64_t row,
                                 int64_t col, float value);

/* f32 view of rows [r0, r0+n): m's own memory when m is f32 and normalize is 0, otherwise the
 * rows converted into buf (n × m.cols) and, with normalize, scaled to unit L2 norm (norm in
 * double; a zero row stays zero, so its scores are 0). *ld is the view's leading dimension.
 * threads > 1 converts rows in parallel (never called from inside a parallel region). */
const float *ns_tile_rows(ns_matrix m, int64_t r0, int64_t n, int normalize, float *buf,
                          int64_t *ld, int threads);

/* Whether ns_tile_rows needs buf for m (a conversion or a normalised copy). */
static inline int ns_tile_needs_buffer(ns_matrix m, int normalize) {
    return m.dtype != NS_F32 || normalize;
}

#ifdef __cplusplus
}
#endif
#endif
