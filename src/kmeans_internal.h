/* ns_kmeans's driver (src/kmeans_lloyd.c) and the passes each backend gives it
 * (src/cpu/cpu_kmeans.c, kernels/cuda_kmeans.cu). The driver holds the host state (labels,
 * costs, sums, centroids) and every decision — init picks, balancing, re-seeding, convergence —
 * so both backends take the same ones; a backend only runs passes over the rows of x, each
 * row's result computed with src/hostdevice/ns_kmeans_math.h. */
#ifndef NS_KMEANS_INTERNAL_H
#define NS_KMEANS_INTERNAL_H

#include "ns_internal.h"
#include "ns_kmeans_math.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Rows per block of the accumulation (and of the backends' streaming). */
#define NS_KM_BLOCK 16384
/* Rows per call of costs_of_rows (the balancing's displaced rows). */
#define NS_KM_CHUNK 256

/* What the scan of x found (check pass). */
typedef struct {
    int64_t bad_row, bad_col; /* first non-finite element (row −1: none) */
    float bad_value;
    int64_t zero_row;         /* first all-zero row (−1: none) */
    double max_abs;           /* largest |x| */
} ns_km_scan;

typedef struct {
    void *self;
    /* Carves the backend's host buffers from the driver's host arena. */
    void (*layout)(void *self, ns_arena *a);
    /* Called once after the host arena is carved (device reservations). */
    ns_status (*prepare)(void *self);
    ns_status (*scan)(void *self, ns_km_scan *out);
    /* Every row: labels[r], cost[r] by ns_km_pick (m: host pointers). */
    ns_status (*assign)(void *self, const ns_km_model *m, int64_t *labels, double *cost);
    /* Every row: cost[r] = min(cost[r], its cost under centroid j of m) (first: = it). */
    ns_status (*cost_to)(void *self, const ns_km_model *m, int64_t j, int first, double *cost);
    /* out[i·k + j] = the cost of row rows[i] under centroid j, for nr rows. */
    ns_status (*costs_of_rows)(void *self, const ns_km_model *m, const int64_t *rows, int64_t nr,
                               double *out);
    /* Row r as f32 (d). */
    ns_status (*read_row)(void *self, int64_t r, float *out);
    /* sums (k × d, double) = 0; then, per block [r0, r0+nb), the rows of cluster c are
     * rows[off[c] .. off[c+1]) (ascending, absolute row numbers): sums[c] += each row (its unit
     * vector when spherical), in that order; end: the sums to host. */
    ns_status (*sums_begin)(void *self);
    ns_status (*sums_block)(void *self, int64_t r0, int64_t nb, const int64_t *off,
                            const int64_t *rows);
    ns_status (*sums_end)(void *self, double *sums);
    /* The outputs (backend memory) from the host labels and centroids. */
    ns_status (*write)(void *self, const int64_t *labels, const float *centroids,
                       int64_t *labels_out, float *centroids_out);
    /* init_centroids (backend memory) to host. */
    ns_status (*read_centroids)(void *self, const float *src, float *dst);
} ns_km_passes;

/* The whole algorithm over a backend's passes (options resolved and checked). */
ns_status ns_kmeans_run(ns_context *ctx, const ns_km_passes *p, ns_matrix x, int64_t k,
                        const ns_kmeans_options *o, int64_t *labels, float *centroids,
                        double *inertia, int64_t *iterations);

#ifdef __cplusplus
}
#endif
#endif
