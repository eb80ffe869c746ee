/* ns_kmeans's driver: Lloyd's algorithm over a backend's passes (src/kmeans_internal.h). The
 * host holds the labels, the costs, the per-cluster sums and the centroids, and takes every
 * decision here, once, for both backends:
 *
 *   init      k-means++: the first row uniform (ns_km_uniform, stream FIRST), then row r with
 *             probability cost[r] / Σ cost (cost: its cost under the nearest centroid so far,
 *             exact), found by a running sum in row order against u_j · Σ cost (stream PICK,
 *             counter j). Random: k distinct rows, draw a of stream PICK gives row ⌊u_a · n⌋,
 *             a row drawn before is skipped. A centroid taken from a row is the row (its unit
 *             vector when spherical, rounded to f32).
 *   assign    the backend's pass: every row's exact label and cost (ns_km_pick); the inertia is
 *             Σ cost in row order (double).
 *   balance   (balance >= 0) cap = ceil(n/k · (1 + balance)), at least ceil(n/k). A cluster over
 *             cap keeps its cap rows of lowest cost (ties: lower row); the rest, in row order,
 *             each take the cluster of lowest exact cost among those still under cap (ties: lower
 *             index). Deterministic, and every cluster ends at most cap.
 *   update    sums in double, rows in ascending order (the backends add each block's rows of a
 *             cluster in order, blocks in order: the same bits at any thread count); centroid =
 *             sum / count (Euclidean) or sum / ‖sum‖ (spherical), rounded to f32 once.
 *   re-seed   clusters left empty (or, spherical, with a zero sum) take, in index order, the
 *             rows of largest cost under the previous assignment (ties: lower row).
 *   stop      after max_iterations updates, when an assignment changes no label, or when the
 *             inertia decreased by at most tolerance times its previous value. */
#include "kmeans_internal.h"

#include <math.h>
#include <string.h>

static const char *const FN = "ns_kmeans";

typedef struct {
    const ns_km_passes *p;
    int64_t n, k, d;
    int balanced;
    int64_t iters;
    /* host state */
    int64_t *labels, *prev, *idx, *tmp, *off, *brow, *counts;
    double *cost, *sums, *h, *norm, *n2, *chunk, *hist;
    float *c, *row;
    uint8_t *taken;
} km_state;

#define KM_CHUNK NS_KM_CHUNK

static void km_layout(void *plan, ns_arena *a) {
    km_state *s = (km_state *)plan;
    const size_t n = (size_t)s->n, k = (size_t)s->k, d = (size_t)s->d;
    s->labels = (int64_t *)ns_arena_carve(a, n * 8);
    s->prev = (int64_t *)ns_arena_carve(a, n * 8);
    s->cost = (double *)ns_arena_carve(a, n * 8);
    s->idx = (int64_t *)ns_arena_carve(a, n * 8);
    s->tmp = (int64_t *)ns_arena_carve(a, n * 8);
    s->off = (int64_t *)ns_arena_carve(a, (k + 1) * 8);
    s->brow = (int64_t *)ns_arena_carve(a, (size_t)NS_KM_BLOCK * 8);
    s->counts = (int64_t *)ns_arena_carve(a, k * 8);
    s->sums = (double *)ns_arena_carve(a, k * d * 8);
    s->h = (double *)ns_arena_carve(a, k * 8);
    s->norm = (double *)ns_arena_carve(a, k * 8);
    s->n2 = (double *)ns_arena_carve(a, k * 8);
    s->chunk = (double *)ns_arena_carve(a, (size_t)KM_CHUNK * k * 8);
    s->hist = (double *)ns_arena_carve(a, (size_t)(s->iters + 1) * 8);
    s->c = (float *)ns_arena_carve(a, k * d * 4);
    s->row = (float *)ns_arena_carve(a, d * 4);
    s->taken = (uint8_t *)ns_arena_carve(a, n / 8 + 1);
    s->p->layout(s->p->self, a);
}

static ns_km_model km_model(const km_state *s, int spherical, double K, double A) {
    ns_km_model m = {s->c, s->h, s->norm, s->n2, s->k, s->d, spherical, K, A, 0.0, 0.0};
    return m;
}

/* The model's maxima over the current centroids (the pick's one bound per row). */
static void km_refresh(const km_state *s, ns_km_model *m) {
    double cmax = 0.0, hmax = 0.0;
    for (int64_t j = 0; j < s->k; j++) {
        if (s->norm[j] > cmax) cmax = s->norm[j];
        if (s->h[j] > hmax) hmax = s->h[j];
    }
    m->cmax = cmax, m->hmax = hmax;
}

/* h, ‖c‖, ‖c‖² of centroid j. */
static void km_set_norms(km_state *s, int64_t j, int spherical) {
    const double n2 = ns_km_norm2(s->c + j * s->d, s->d);
    s->n2[j] = n2;
    s->norm[j] = sqrt(n2);
    s->h[j] = spherical ? 0.0 : 0.5 * n2;
}

/* Centroid j from a host f32 vector v: as it is, or its unit vector (0: v is zero). */
static int km_set_centroid(km_state *s, int64_t j, const float *v, int spherical) {
    float *c = s->c + j * s->d;
    if (spherical) {
        const double nn = sqrt(ns_km_norm2(v, s->d));
        if (!(nn > 0.0)) return 0;
        for (int64_t t = 0; t < s->d; t++) c[t] = (float)((double)v[t] / nn);
    } else {
        memcpy(c, v, (size_t)s->d * sizeof(float));
    }
    km_set_norms(s, j, spherical);
    return 1;
}

/* Stable merge sort of idx[0..m) by cost (ascending, or descending with desc): equal costs keep
 * their order (the callers pass rows in ascending order: ties go to the lower row). */
static void km_sort(int64_t *idx, int64_t m, const double *cost, int desc, int64_t *tmp) {
    for (int64_t w = 1; w < m; w *= 2) {
        for (int64_t lo = 0; lo < m; lo += 2 * w) {
            const int64_t mid = lo + w < m ? lo + w : m, hi = lo + 2 * w < m ? lo + 2 * w : m;
            int64_t i = lo, j = mid, o = lo;
            while (i < mid && j < hi) {
                const double a = cost[idx[i]], b = cost[idx[j]];
                const int take_right = desc ? b > a : b < a;
                tmp[o++] = take_right ? idx[j++] : idx[i++];
            }
            while (i < mid) tmp[o++] = idx[i++];
            while (j < hi) tmp[o++] = idx[j++];
        }
        memcpy(idx, tmp, (size_t)m * sizeof(int64_t));
    }
}

static ns_status km_progress(ns_context *ctx, const ns_kmeans_options *o, int64_t done,
                             int64_t total) {
    if (o->progress && o->progress(done, total, o->progress_user))
        return ns_fail(ctx, NS_ERR_INVALID_ARGUMENT, "%s: cancelled by the progress callback",
                       FN);
    return NS_OK;
}

/* ------------------------------------------------------------------ init */

/* Row ⌊u·n⌋ for u in (0, 1) (the product can round up to n for large n). */
static int64_t km_row(double u, int64_t n) {
    const int64_t r = (int64_t)(u * (double)n);
    return r < n ? r : n - 1;
}

static ns_status km_init_random(ns_context *ctx, km_state *s, const ns_kmeans_options *o) {
    const ns_km_passes *p = s->p;
    memset(s->taken, 0, (size_t)(s->n / 8 + 1));
    ns_status st;
    for (int64_t j = 0, a = 0; j < s->k; a++) {
        const int64_t r = km_row(ns_km_uniform(o->seed, NS_KM_STREAM_PICK, a), s->n);
        if (s->taken[r >> 3] & (1u << (r & 7))) continue;
        s->taken[r >> 3] |= (uint8_t)(1u << (r & 7));
        if ((st = p->read_row(p->self, r, s->row))) return st;
        km_set_centroid(s, j++, s->row, o->spherical); /* rows are non-zero when spherical */
    }
    return NS_OK;
}

/* The first row whose running cost exceeds u·Σ cost (row order); a row of positive cost when
 * rounding leaves none; a uniform row when every cost is 0. */
static int64_t km_pick_by_cost(const km_state *s, double u) {
    double total = 0.0;
    for (int64_t r = 0; r < s->n; r++) total += s->cost[r];
    if (!(total > 0.0)) return km_row(u, s->n);
    const double t = u * total;
    double run = 0.0;
    int64_t last = -1;
    for (int64_t r = 0; r < s->n; r++) {
        if (s->cost[r] > 0.0) last = r;
        run += s->cost[r];
        if (run > t) return r;
    }
    return last;
}

static ns_status km_init_plusplus(ns_context *ctx, km_state *s, const ns_kmeans_options *o,
                                  const ns_km_model *m, int64_t total_units) {
    const ns_km_passes *p = s->p;
    ns_status st;
    for (int64_t j = 0; j < s->k; j++) {
        const int64_t r = j == 0 ? km_row(ns_km_uniform(o->seed, NS_KM_STREAM_FIRST, 0), s->n)
                                 : km_pick_by_cost(s, ns_km_uniform(o->seed, NS_KM_STREAM_PICK, j));
        if ((st = p->read_row(p->self, r, s->row))) return st;
        km_set_centroid(s, j, s->row, o->spherical);
        if (j + 1 < s->k && (st = p->cost_to(p->self, m, j, j == 0, s->cost))) return st;
        if ((st = km_progress(ctx, o, j + 1, total_units))) return st;
    }
    return NS_OK;
}

static ns_status km_init_given(ns_context *ctx, km_state *s, const ns_kmeans_options *o) {
    ns_status st;
    float *v = (float *)s->sums; /* staged in the sums' memory (k·d doubles), then set */
    if ((st = s->p->read_centroids(s->p->self, o->init_centroids, v))) return st;
    for (int64_t j = 0; j < s->k; j++)
        for (int64_t t = 0; t < s->d; t++)
            if (!isfinite(v[j * s->d + t]))
                return ns_fail(ctx, NS_ERR_NONFINITE,
                               "%s: options->init_centroids[%lld][%lld] (%g) is not finite", FN,
                               (long long)j, (long long)t, (double)v[j * s->d + t]);
    for (int64_t j = 0; j < s->k; j++)
        if (!km_set_centroid(s, j, v + j * s->d, o->spherical))
            return ns_fail(ctx, NS_ERR_INVALID_ARGUMENT,
                           "%s: options->init_centroids row %lld is zero; spherical centroids "
                           "need a direction", FN, (long long)j);
    return NS_OK;
}

/* ------------------------------------------------------------------ balance */

static ns_status km_balance(km_state *s, const ns_km_model *m, int64_t cap) {
    const int64_t n = s->n, k = s->k;
    int64_t *cnt = s->counts, *off = s->off;
    memset(cnt, 0, (size_t)k * sizeof(int64_t));
    int over = 0;
    for (int64_t r = 0; r < n; r++) over |= ++cnt[s->labels[r]] > cap;
    if (!over) return NS_OK;
    off[0] = 0;
    for (int64_t j = 0; j < k; j++) off[j + 1] = off[j] + cnt[j];
    for (int64_t j = 0; j < k; j++) cnt[j] = off[j];
    for (int64_t r = 0; r < n; r++) s->idx[cnt[s->labels[r]]++] = r; /* rows ascending */
    for (int64_t j = 0; j < k; j++) {
        const int64_t m_j = off[j + 1] - off[j];
        cnt[j] = m_j;
        if (m_j <= cap) continue;
        km_sort(s->idx + off[j], m_j, s->cost, 0, s->tmp);
        for (int64_t i = off[j] + cap; i < off[j + 1]; i++) s->labels[s->idx[i]] = -1;
        cnt[j] = cap;
    }
    int64_t nd = 0; /* the displaced rows, ascending */
    for (int64_t r = 0; r < n; r++)
        if (s->labels[r] < 0) s->idx[nd++] = r;
    ns_status st;
    for (int64_t c0 = 0; c0 < nd; c0 += KM_CHUNK) {
        const int64_t nc = nd - c0 < KM_CHUNK ? nd - c0 : KM_CHUNK;
        if ((st = s->p->costs_of_rows(s->p->self, m, s->idx + c0, nc, s->chunk))) return st;
        for (int64_t i = 0; i < nc; i++) {
            const double *cr = s->chunk + i * k;
            int64_t best = -1;
            for (int64_t j = 0; j < k; j++)
                if (cnt[j] < cap && (best < 0 || cr[j] < cr[best])) best = j;
            s->labels[s->idx[c0 + i]] = best;
            s->cost[s->idx[c0 + i]] = cr[best];
            cnt[best]++;
        }
    }
    return NS_OK;
}

/* ------------------------------------------------------------------ update */

/* Sums per cluster over row blocks (rows of a cluster ascending within a block, blocks in order). */
static ns_status km_sums(km_state *s) {
    const ns_km_passes *p = s->p;
    const int64_t k = s->k;
    ns_status st;
    if ((st = p->sums_begin(p->self))) return st;
    for (int64_t r0 = 0; r0 < s->n; r0 += NS_KM_BLOCK) {
        const int64_t nb = s->n - r0 < NS_KM_BLOCK ? s->n - r0 : NS_KM_BLOCK;
        int64_t *off = s->off, *cnt = s->counts;
        memset(cnt, 0, (size_t)k * sizeof(int64_t));
        for (int64_t r = r0; r < r0 + nb; r++) cnt[s->labels[r]]++;
        off[0] = 0;
        for (int64_t j = 0; j < k; j++) off[j + 1] = off[j] + cnt[j], cnt[j] = off[j];
        for (int64_t r = r0; r < r0 + nb; r++) s->brow[cnt[s->labels[r]]++] = r;
        if ((st = p->sums_block(p->self, r0, nb, off, s->brow))) return st;
    }
    return p->sums_end(p->self, s->sums);
}

/* New centroids from the labels; empty ones re-seeded from the rows of largest cost. */
static ns_status km_update(km_state *s, int spherical) {
    const int64_t n = s->n, k = s->k, d = s->d;
    ns_status st;
    if ((st = km_sums(s))) return st;
    int64_t *cnt = s->counts;
    memset(cnt, 0, (size_t)k * sizeof(int64_t));
    for (int64_t r = 0; r < n; r++) cnt[s->labels[r]]++;
    int64_t empty = 0;
    for (int64_t j = 0; j < k; j++) {
        const double *sj = s->sums + j * d;
        float *c = s->c + j * d;
        double div = (double)cnt[j];
        if (spherical) {
            double q = 0.0;
            for (int64_t t = 0; t < d; t++) q += sj[t] * sj[t];
            div = sqrt(q);
        }
        if (cnt[j] == 0 || !(div > 0.0)) {
            cnt[j] = -1; /* to re-seed */
            empty++;
            continue;
        }
        for (int64_t t = 0; t < d; t++) c[t] = (float)(sj[t] / div);
        km_set_norms(s, j, spherical);
    }
    if (!empty) return NS_OK;
    for (int64_t r = 0; r < n; r++) s->idx[r] = r;
    km_sort(s->idx, n, s->cost, 1, s->tmp);
    for (int64_t j = 0, i = 0; j < k; j++) {
        if (cnt[j] >= 0) continue;
        const int64_t r = s->idx[i < n ? i++ : n - 1];
        if ((st = s->p->read_row(s->p->self, r, s->row))) return st;
        km_set_centroid(s, j, s->row, spherical);
    }
    return NS_OK;
}

/* ------------------------------------------------------------------ the loop */

static ns_status km_assign(km_state *s, ns_km_model *m, int64_t cap, double *inertia) {
    ns_status st;
    km_refresh(s, m);
    if ((st = s->p->assign(s->p->self, m, s->labels, s->cost))) return st;
    if (s->balanced && (st = km_balance(s, m, cap))) return st;
    double sum = 0.0;
    for (int64_t r = 0; r < s->n; r++) sum += s->cost[r];
    *inertia = sum;
    return NS_OK;
}

static ns_status km_check_scan(ns_context *ctx, const ns_km_passes *p, int spherical,
                               double *max_abs) {
    ns_km_scan sc;
    ns_status st;
    if ((st = p->scan(p->self, &sc))) return st;
    if (sc.bad_row >= 0)
        return ns_fail(ctx, NS_ERR_NONFINITE, "%s: x[%lld][%lld] (%g) is not finite; inputs must "
                       "be finite", FN, (long long)sc.bad_row, (long long)sc.bad_col,
                       (double)sc.bad_value);
    if (spherical && sc.zero_row >= 0)
        return ns_fail(ctx, NS_ERR_INVALID_ARGUMENT, "%s: x row %lld is zero; spherical k-means "
                       "needs rows with a direction", FN, (long long)sc.zero_row);
    *max_abs = sc.max_abs;
    return NS_OK;
}

ns_status ns_kmeans_run(ns_context *ctx, const ns_km_passes *p, ns_matrix x, int64_t k,
                        const ns_kmeans_options *o, int64_t *labels_out, float *centroids_out,
                        double *inertia, int64_t *iterations) {
    km_state s;
    memset(&s, 0, sizeof s);
    s.p = p, s.n = x.rows, s.k = k, s.d = x.cols, s.balanced = o->balance >= 0.0;
    s.iters = o->max_iterations;
    ns_status st;
    if ((st = ns_arena_lay_out(ctx, &ctx->scratch, km_layout, &s, FN))) return st;
    if ((st = p->prepare(p->self))) return st;
    double max_abs = 0.0, K, A;
    if ((st = km_check_scan(ctx, p, o->spherical, &max_abs))) return st;
    ns_km_bound(s.d, max_abs, &K, &A);
    ns_km_model m = km_model(&s, o->spherical, K, A);
    const int pp = !o->init_centroids && o->init == NS_KMEANS_PLUSPLUS;
    const int64_t units = (pp ? k : 0) + o->max_iterations + 1;
    if (o->init_centroids) st = km_init_given(ctx, &s, o);
    else if (pp) st = km_init_plusplus(ctx, &s, o, &m, units);
    else st = km_init_random(ctx, &s, o);
    if (st) return st;

    int64_t cap = (s.n + k - 1) / k;
    if (s.balanced) {
        const double c = ceil((double)s.n / (double)k * (1.0 + o->balance));
        if (c > (double)cap) cap = c >= (double)s.n ? s.n : (int64_t)c;
    }
    double prev_inertia, cur;
    if ((st = km_assign(&s, &m, cap, &cur))) return st;
    double *hist = s.hist; /* the inertia, staged: outputs are written only at the end */
    int64_t t = 0, done = pp ? k : 0;
    hist[0] = cur;
    if ((st = km_progress(ctx, o, ++done, units))) return st;
    while (t < o->max_iterations) {
        if ((st = km_update(&s, o->spherical))) return st;
        int64_t *sw = s.prev;
        s.prev = s.labels, s.labels = sw;
        prev_inertia = cur;
        if ((st = km_assign(&s, &m, cap, &cur))) return st;
        t++;
        hist[t] = cur;
        if ((st = km_progress(ctx, o, ++done, units))) return st;
        if (!memcmp(s.labels, s.prev, (size_t)s.n * sizeof(int64_t))) break;
        if (prev_inertia - cur <= o->tolerance * prev_inertia) break;
    }
    if ((st = p->write(p->self, s.labels, s.c, labels_out, centroids_out))) return st;
    for (int64_t i = 0; i <= o->max_iterations; i++)
        inertia[i] = i <= t ? hist[i] : NAN;
    *iterations = t;
    return NS_OK;
}
