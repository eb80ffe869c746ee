/* ns_kmeans on the CPU: the passes of the driver (src/kmeans_lloyd.c) over row blocks of x, read
 * in order and never copied whole (a memory-mapped .npy larger than RAM streams through). The
 * assignment multiplies each tile by the centroids with the library's f32 GEMM (ns_sgemm_nt)
 * and picks every row's label exactly from it (ns_km_pick); rows are independent, so any thread
 * count gives the same bits. */
#include "cpu_tiles.h"
#include "kmeans_internal.h"
#include "ns_cpu.h"

#include <math.h>
#include <string.h>

typedef struct {
    ns_context *ctx;
    ns_matrix x;
    int64_t n, k, d, tile;
    int spherical, threads;
    float *xf, *score;
    double *sums;
} cpu_km;

static void cpu_km_layout(void *self, ns_arena *a) {
    cpu_km *s = (cpu_km *)self;
    const int64_t rows = s->n < NS_KM_BLOCK ? s->n : NS_KM_BLOCK;
    /* conversions of a block; f32 rows are read in place and need only the chunk's rows */
    const int64_t buf = ns_tile_needs_buffer(s->x, 0) || rows < NS_KM_CHUNK ? rows : NS_KM_CHUNK;
    s->xf = (float *)ns_arena_carve(a, (size_t)(buf * s->d) * sizeof(float));
    s->score = (float *)ns_arena_carve(a, (size_t)(s->tile * s->k) * sizeof(float));
    s->sums = (double *)ns_arena_carve(a, (size_t)(s->k * s->d) * sizeof(double));
}

static ns_status cpu_km_prepare(void *self) {
    (void)self;
    return NS_OK;
}

/* f32 view of rows [r0, r0+nb) (nb <= NS_KM_BLOCK). */
static const float *cpu_km_view(cpu_km *s, int64_t r0, int64_t nb, int64_t *ld) {
    return ns_tile_rows(s->x, r0, nb, 0, s->xf, ld, s->threads);
}

static ns_status cpu_km_scan(void *self, ns_km_scan *out) {
    cpu_km *s = (cpu_km *)self;
    out->bad_row = -1, out->bad_col = -1, out->bad_value = 0.0f, out->zero_row = -1;
    out->max_abs = 0.0;
    for (int64_t r0 = 0; r0 < s->n; r0 += NS_KM_BLOCK) {
        const int64_t nb = s->n - r0 < NS_KM_BLOCK ? s->n - r0 : NS_KM_BLOCK;
        if (ns_tile_find_nonfinite(s->x, r0, nb, &out->bad_row, &out->bad_col, &out->bad_value))
            return NS_OK;
        int64_t ld;
        const float *v = cpu_km_view(s, r0, nb, &ld);
        int64_t zero = INT64_MAX;
        float mx = 0.0f;
#pragma omp parallel for num_threads(s->threads) reduction(min : zero) reduction(max : mx)
        for (int64_t i = 0; i < nb; i++) {
            const float *row = v + i * ld;
            float rm = 0.0f;
            for (int64_t t = 0; t < s->d; t++) rm = fabsf(row[t]) > rm ? fabsf(row[t]) : rm;
            if (rm == 0.0f && r0 + i < zero) zero = r0 + i;
            if (rm > mx) mx = rm;
        }
        if (out->zero_row < 0 && zero != INT64_MAX) out->zero_row = zero;
        if (mx > out->max_abs) out->max_abs = mx;
    }
    return NS_OK;
}

static ns_status cpu_km_assign(void *self, const ns_km_model *m, int64_t *labels, double *cost) {
    cpu_km *s = (cpu_km *)self;
    for (int64_t r0 = 0; r0 < s->n; r0 += s->tile) {
        const int64_t nb = s->n - r0 < s->tile ? s->n - r0 : s->tile;
        int64_t ld;
        const float *v = cpu_km_view(s, r0, nb, &ld);
        ns_sgemm_nt(nb, s->k, s->d, 1.0f, v, ld, m->c, s->d, 0.0f, s->score, s->k);
#pragma omp parallel for num_threads(s->threads) schedule(static)
        for (int64_t i = 0; i < nb; i++)
            labels[r0 + i] = ns_km_pick(m, v + i * ld, s->score + i * s->k, &cost[r0 + i]);
    }
    return NS_OK;
}

static ns_status cpu_km_cost_to(void *self, const ns_km_model *m, int64_t j, int first,
                                double *cost) {
    cpu_km *s = (cpu_km *)self;
    for (int64_t r0 = 0; r0 < s->n; r0 += NS_KM_BLOCK) {
        const int64_t nb = s->n - r0 < NS_KM_BLOCK ? s->n - r0 : NS_KM_BLOCK;
        int64_t ld;
        const float *v = cpu_km_view(s, r0, nb, &ld);
#pragma omp parallel for num_threads(s->threads) schedule(static)
        for (int64_t i = 0; i < nb; i++) {
            const double c = ns_km_cost_of(m, v + i * ld, j);
            if (first || c < cost[r0 + i]) cost[r0 + i] = c;
        }
    }
    return NS_OK;
}

static ns_status cpu_km_costs_of_rows(void *self, const ns_km_model *m, const int64_t *rows,
                                      int64_t nr, double *out) {
    cpu_km *s = (cpu_km *)self;
#pragma omp parallel for num_threads(s->threads) schedule(dynamic, 1)
    for (int64_t i = 0; i < nr; i++) {
        float *row = s->xf + i * s->d; /* nr <= NS_KM_CHUNK rows of buffer */
        ns_rows_to_f32(s->x, rows[i], 1, row);
        for (int64_t j = 0; j < s->k; j++) out[i * s->k + j] = ns_km_cost_of(m, row, j);
    }
    return NS_OK;
}

static ns_status cpu_km_read_row(void *self, int64_t r, float *out) {
    cpu_km *s = (cpu_km *)self;
    ns_rows_to_f32(s->x, r, 1, out);
    return NS_OK;
}

static ns_status cpu_km_sums_begin(void *self) {
    cpu_km *s = (cpu_km *)self;
    memset(s->sums, 0, (size_t)(s->k * s->d) * sizeof(double));
    return NS_OK;
}

static ns_status cpu_km_sums_block(void *self, int64_t r0, int64_t nb, const int64_t *off,
                                   const int64_t *rows) {
    cpu_km *s = (cpu_km *)self;
    int64_t ld;
    const float *v = cpu_km_view(s, r0, nb, &ld);
    /* One thread per cluster: each cluster's rows are added in ascending order. */
#pragma omp parallel for num_threads(s->threads) schedule(dynamic, 4)
    for (int64_t c = 0; c < s->k; c++)
        for (int64_t i = off[c]; i < off[c + 1]; i++)
            ns_km_accumulate(s->sums + c * s->d, v + (rows[i] - r0) * ld, s->d, s->spherical);
    return NS_OK;
}

static ns_status cpu_km_sums_end(void *self, double *sums) {
    cpu_km *s = (cpu_km *)self;
    memcpy(sums, s->sums, (size_t)(s->k * s->d) * sizeof(double));
    return NS_OK;
}

static ns_status cpu_km_write(void *self, const int64_t *labels, const float *centroids,
                              int64_t *labels_out, float *centroids_out) {
    cpu_km *s = (cpu_km *)self;
    memcpy(labels_out, labels, (size_t)s->n * sizeof(int64_t));
    memcpy(centroids_out, centroids, (size_t)(s->k * s->d) * sizeof(float));
    return NS_OK;
}

static ns_status cpu_km_read_centroids(void *self, const float *src, float *dst) {
    cpu_km *s = (cpu_km *)self;
    memcpy(dst, src, (size_t)(s->k * s->d) * sizeof(float));
    return NS_OK;
}

ns_status ns_cpu_kmeans(ns_context *ctx, ns_matrix x, int64_t k, const ns_kmeans_options *o,
                        int64_t *labels, float *centroids, double *inertia,
                        int64_t *iterations) {
    cpu_km s;
    memset(&s, 0, sizeof s);
    s.ctx = ctx, s.x = x, s.n = x.rows, s.k = k, s.d = x.cols;
    s.spherical = o->spherical, s.threads = ns_threads(ctx);
    /* Score tiles of at most 32 MiB, and at most a block of rows. */
    int64_t tile = ((int64_t)8 << 20) / k;
    if (tile < 64) tile = 64;
    if (tile > NS_KM_BLOCK) tile = NS_KM_BLOCK;
    s.tile = tile < s.n ? tile : s.n;
    const ns_km_passes p = {&s,
                            cpu_km_layout,
                            cpu_km_prepare,
                            cpu_km_scan,
                            cpu_km_assign,
                            cpu_km_cost_to,
                            cpu_km_costs_of_rows,
                            cpu_km_read_row,
                            cpu_km_sums_begin,
                            cpu_km_sums_block,
                            cpu_km_sums_end,
                            cpu_km_write,
                            cpu_km_read_centroids};
    return ns_kmeans_run(ctx, &p, x, k, o, labels, centroids, inertia, iterations);
}
