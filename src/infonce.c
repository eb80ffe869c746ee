/* InfoNCE: the public entry points, their argument checks, and the setup that the CPU forward
 * (infonce_forward.c) and backward (infonce_backward.c) share. */
#include "infonce_internal.h"
#ifdef NS_HAVE_CUDA
#include "ns_cuda.h"
#endif

#include <math.h>
#include <string.h>

/* Tiles of the CPU loss. Few large tiles: every tile costs three or four sgemm calls, each with
 * its own packing and a switch between OpenBLAS's threads and the OpenMP team of the element
 * loops (both spin-wait for a while on the same cores). 256 × 512 tiles ran at a third of the
 * BLAS rate; tiles of a few MiB reach it. The logit tile is capped at NS_LOSS_TILE_BYTES and the
 * f32 copies of f16/bf16 rows at NS_LOSS_CONVERT_BYTES each, so the loss's memory stays bounded
 * whatever the sizes (tile + conversions + O(B + N) vectors). Sizes depend only on the shapes,
 * never on the thread count, so results stay bitwise reproducible for a given thread count. */
#define NS_LOSS_TILE_ROWS_MAX 2048
#define NS_LOSS_TILE_COLS_MAX 4096
#define NS_LOSS_TILE_BYTES ((int64_t)16 << 20)
#define NS_LOSS_CONVERT_BYTES ((int64_t)8 << 20)
static int64_t tile_rows = 0, tile_cols = 0; /* 0: chosen per call */

void ns_infonce_set_tiles(int64_t rows, int64_t cols) {
    tile_rows = rows > 0 ? rows : 0;
    tile_cols = cols > 0 ? cols : 0;
}

void ns_infonce_get_tiles(int64_t *rows, int64_t *cols) {
    *rows = tile_rows;
    *cols = tile_cols;
}

/* n split into ceil(n / cap) nearly equal parts: no thin remainder tile. */
static int64_t even_split(int64_t n, int64_t cap) {
    if (cap < 1) cap = 1;
    if (n <= cap) return n < 1 ? 1 : n;
    int64_t parts = (n + cap - 1) / cap;
    return (n + parts - 1) / parts;
}

static void choose_tiles(ns_loss_plan *p) {
    const ns_infonce_inputs *in = p->in;
    int64_t maxc = 1;
    int half_cols = 0;
    for (int b = 0; b < p->nblocks; b++) {
        if (p->blk[b].m.rows > maxc) maxc = p->blk[b].m.rows;
        if (p->blk[b].m.dtype != NS_F32) half_cols = 1;
    }
    const int64_t row_bytes = p->d * (int64_t)sizeof(float);
    int64_t rcap = NS_LOSS_TILE_ROWS_MAX, ccap = NS_LOSS_TILE_COLS_MAX;
    if (in->query.dtype != NS_F32 && rcap > NS_LOSS_CONVERT_BYTES / row_bytes)
        rcap = NS_LOSS_CONVERT_BYTES / row_bytes;
    if (p->own_hard && in->hard.dtype != NS_F32 &&
        rcap > NS_LOSS_CONVERT_BYTES / (row_bytes * p->h))
        rcap = NS_LOSS_CONVERT_BYTES / (row_bytes * p->h);
    if (half_cols && ccap > NS_LOSS_CONVERT_BYTES / row_bytes)
        ccap = NS_LOSS_CONVERT_BYTES / row_bytes;
    if (rcap < 16) rcap = 16;
    if (ccap < 16) ccap = 16;
    p->tb = tile_rows ? tile_rows : even_split(p->B, rcap);
    if (tile_cols) {
        p->tn = tile_cols;
    } else {
        /* Columns fill the tile budget left by the rows (few queries: long rows). */
        int64_t fit = NS_LOSS_TILE_BYTES / ((int64_t)sizeof(float) * p->tb);
        p->tn = even_split(maxc, fit < ccap ? fit : ccap);
    }
}

/* Below 2^21 logits (an 8 MiB tile) one thread ran the whole loss faster on 2 cores: 512 × 512
 * took 17 ms with the team woken per tile and 11 ms without. */
#define NS_LOSS_PARALLEL_MIN ((int64_t)1 << 21)

int ns_loss_elem_threads(int nt, int64_t n) { return n < NS_LOSS_PARALLEL_MIN ? 1 : nt; }

static int is_flag(int v) { return v == 0 || v == 1; }

ns_status ns_infonce_check(ns_context *ctx, const char *fn, const ns_infonce_inputs *in,
                           const ns_loss_options **optp, ns_loss_options *defaults) {
    ns_status st;
    if ((st = ns_check_ptr(ctx, fn, "inputs", in))) return st;
    const ns_loss_options *o = *optp;
    if (!o) {
        ns_loss_options d = NS_LOSS_OPTIONS_INIT;
        *defaults = d;
        o = *optp = defaults;
    }
    if (o->struct_size < sizeof(ns_loss_options))
        return ns_fail(ctx, NS_ERR_INVALID_ARGUMENT,
                       "%s: options->struct_size (%zu) is smaller than sizeof(ns_loss_options) "
                       "(%zu); initialise with NS_LOSS_OPTIONS_INIT",
                       fn, o->struct_size, sizeof(ns_loss_options));
    if (!(o->temperature > 0.0f) || !isfinite(o->temperature))
        return ns_fail(ctx, NS_ERR_INVALID_ARGUMENT,
                       "%s: options->temperature (%g) must be finite and > 0", fn,
                       (double)o->temperature);
    if (!(o->tau_plus >= 0.0f && o->tau_plus < 1.0f))
        return ns_fail(ctx, NS_ERR_INVALID_ARGUMENT,
                       "%s: options->tau_plus (%g) must be in [0, 1)", fn, (double)o->tau_plus);
    if (!(o->beta >= 0.0f) || !isfinite(o->beta))
        return ns_fail(ctx, NS_ERR_INVALID_ARGUMENT,
                       "%s: options->beta (%g) must be finite and >= 0", fn, (double)o->beta);
    if (!is_flag(o->symmetric))
        return ns_fail(ctx, NS_ERR_INVALID_ARGUMENT, "%s: options->symmetric (%d) must be 0 or 1",
                       fn, o->symmetric);
    if (!is_flag(o->mask_same_id))
        return ns_fail(ctx, NS_ERR_INVALID_ARGUMENT,
                       "%s: options->mask_same_id (%d) must be 0 or 1", fn, o->mask_same_id);
    if (!is_flag(o->share_hard))
        return ns_fail(ctx, NS_ERR_INVALID_ARGUMENT, "%s: options->share_hard (%d) must be 0 or 1",
                       fn, o->share_hard);

    if ((st = ns_check_matrix(ctx, fn, "query", in->query, 0))) return st;
    if ((st = ns_check_matrix(ctx, fn, "passage", in->passage, 0))) return st;
    int64_t B = in->query.rows, N = in->passage.rows, d = in->query.cols;
    if (in->passage.cols != d)
        return ns_fail(ctx, NS_ERR_INVALID_ARGUMENT,
                       "%s: query has %lld columns but passage has %lld", fn, (long long)d,
                       (long long)in->passage.cols);
    if (!in->positive && B > N)
        return ns_fail(ctx, NS_ERR_INVALID_ARGUMENT,
                       "%s: positive is NULL, so query i's positive is passage row i, but there "
                       "are %lld queries and only %lld passages",
                       fn, (long long)B, (long long)N);
    int64_t h = in->hard_per_query;
    if (h < 0)
        return ns_fail(ctx, NS_ERR_INVALID_ARGUMENT,
                       "%s: hard_per_query (%lld) is negative; expected 0 (none) or more", fn,
                       (long long)h);
    if (h > 0) {
        if ((st = ns_check_matrix(ctx, fn, "hard", in->hard, 0))) return st;
        if (in->hard.rows / h != B || in->hard.rows % h != 0)
            return ns_fail(ctx, NS_ERR_INVALID_ARGUMENT,
                           "%s: hard has %lld rows but queries × hard_per_query is %lld × %lld",
                           fn, (long long)in->hard.rows, (long long)B, (long long)h);
        if (in->hard.cols != d)
            return ns_fail(ctx, NS_ERR_INVALID_ARGUMENT,
                           "%s: query has %lld columns but hard has %lld", fn, (long long)d,
                           (long long)in->hard.cols);
    } else if (in->hard.rows != 0) {
        return ns_fail(ctx, NS_ERR_INVALID_ARGUMENT,
                       "%s: hard has %lld rows but hard_per_query is 0 (expected 0 rows)", fn,
                       (long long)in->hard.rows);
    }
    if ((st = ns_check_matrix(ctx, fn, "extra", in->extra, 1))) return st;
    if (in->extra.rows > 0 && in->extra.cols != d)
        return ns_fail(ctx, NS_ERR_INVALID_ARGUMENT,
                       "%s: query has %lld columns but extra has %lld", fn, (long long)d,
                       (long long)in->extra.cols);
    return NS_OK;
}

static ns_status check_finite(ns_context *ctx, const char *fn, const char *name, ns_matrix m) {
    if (m.rows == 0) return NS_OK;
    int64_t bad = ns_matrix_find_nonfinite(m);
    if (!bad) return NS_OK;
    bad--;
    return ns_fail(ctx, NS_ERR_NONFINITE, "%s: %s[%lld][%lld] is not finite", fn, name,
                   (long long)(bad / m.cols), (long long)(bad % m.cols));
}

ns_status ns_infonce_check_data(ns_context *ctx, const char *fn, const ns_infonce_inputs *in) {
    ns_status st;
    int64_t B = in->query.rows, N = in->passage.rows;
    if (in->positive)
        for (int64_t i = 0; i < B; i++)
            if (in->positive[i] < 0 || in->positive[i] >= N)
                return ns_fail(ctx, NS_ERR_INVALID_ARGUMENT,
                               "%s: positive[%lld] (%lld) is not a passage row in [0, %lld)", fn,
                               (long long)i, (long long)in->positive[i], (long long)N);
    if ((st = check_finite(ctx, fn, "query", in->query))) return st;
    if ((st = check_finite(ctx, fn, "passage", in->passage))) return st;
    if (in->hard_per_query > 0 && (st = check_finite(ctx, fn, "hard", in->hard))) return st;
    if ((st = check_finite(ctx, fn, "extra", in->extra))) return st;
    return NS_OK;
}

void ns_loss_plan_init(ns_loss_plan *p, ns_context *ctx, const ns_infonce_inputs *in,
                       const ns_loss_options *opt) {
    memset(p, 0, sizeof(*p));
    p->in = in;
    p->B = in->query.rows;
    p->N = in->passage.rows;
    p->d = in->query.cols;
    p->h = in->hard_per_query;
    p->E = in->extra.rows;
    p->tau = opt->temperature;
    p->inv_tau = 1.0f / opt->temperature;
    p->beta = opt->beta;
    p->tau_plus = opt->tau_plus;
    p->general = opt->tau_plus > 0.0f || opt->beta > 0.0f;
    p->sym = opt->symmetric;
    p->same = opt->mask_same_id;
    p->own_hard = p->h > 0 && !opt->share_hard;
    p->blk[p->nblocks++] = (ns_loss_block){in->passage, NS_BLK_PASSAGE, NULL};
    if (p->h > 0 && opt->share_hard) p->blk[p->nblocks++] = (ns_loss_block){in->hard, NS_BLK_HARD, NULL};
    if (p->E > 0) p->blk[p->nblocks++] = (ns_loss_block){in->extra, NS_BLK_EXTRA, NULL};
    p->nt = ns_threads(ctx);
    choose_tiles(p);
}

void ns_loss_columns(const ns_loss_plan *p, const ns_loss_block *b, int64_t j0, int64_t n,
                     uint8_t *mask, int64_t *id, uint8_t *idok) {
    const ns_infonce_inputs *in = p->in;
    for (int64_t c = 0; c < n; c++) {
        int64_t j = j0 + c;
        mask[c] = 0;
        id[c] = 0;
        idok[c] = 0;
        if (b->kind == NS_BLK_PASSAGE) {
            id[c] = ns_loss_pid(p, j);
            idok[c] = (uint8_t)p->same;
        } else if (b->kind == NS_BLK_HARD) {
            if (in->hard_keep && !in->hard_keep[j]) mask[c] = 1;
            if (in->hard_id) {
                if (in->hard_id[j] == -1) mask[c] = 1;
                id[c] = in->hard_id[j];
                idok[c] = (uint8_t)p->same;
            }
        } else if (in->extra_id) {
            id[c] = in->extra_id[j];
            idok[c] = (uint8_t)p->same;
        }
    }
}

const float *ns_loss_view(ns_matrix m, int64_t r0, int64_t n, float *buf, int64_t *ld, int nt) {
    if (m.dtype == NS_F32) return ns_rows_f32_view(m, r0, n, buf, ld, NULL);
    /* Half-precision tiles are converted by every thread: a serial conversion would cost as
     * much as the GEMM it feeds once the BLAS is threaded. */
    int64_t chunk = (n + nt - 1) / nt;
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int t = 0; t < nt; t++) {
        int64_t a = t * chunk, e = a + chunk < n ? a + chunk : n;
        if (a < e) ns_rows_to_f32(m, r0 + a, e - a, buf + a * m.cols);
    }
    *ld = m.cols;
    return buf;
}

/* ------------------------------------------------------------------ public entry points */

ns_status ns_infonce_forward(ns_context *ctx, const ns_infonce_inputs *in,
                             const ns_loss_options *options, float *loss, float *per_query,
                             float *saved) {
    static const char *fn = "ns_infonce_forward";
    ns_status st = ns_check_context(ctx, fn);
    if (st) return st;
    ns_loss_options defaults;
    if ((st = ns_infonce_check(ctx, fn, in, &options, &defaults))) return st;
    if ((st = ns_check_ptr(ctx, fn, "loss", loss))) return st;
    if ((st = ns_check_ptr(ctx, fn, "saved", saved))) return st;
#ifdef NS_HAVE_CUDA
    if (ctx->backend == NS_BACKEND_CUDA)
        return ns_cuda_infonce_forward(ctx, in, options, loss, per_query, saved);
#endif
    if ((st = ns_infonce_check_data(ctx, fn, in))) return st;
    ns_loss_plan plan;
    ns_loss_plan_init(&plan, ctx, in, options);
    return ns_infonce_forward_cpu(ctx, &plan, loss, per_query, saved);
}

ns_status ns_infonce_backward(ns_context *ctx, const ns_infonce_inputs *in,
                              const ns_loss_options *options, const float *saved,
                              float grad_loss, const ns_infonce_grads *grads) {
    static const char *fn = "ns_infonce_backward";
    ns_status st = ns_check_context(ctx, fn);
    if (st) return st;
    ns_loss_options defaults;
    if ((st = ns_infonce_check(ctx, fn, in, &options, &defaults))) return st;
    if ((st = ns_check_ptr(ctx, fn, "saved", saved))) return st;
    if ((st = ns_check_ptr(ctx, fn, "grads", grads))) return st;
    if (!isfinite(grad_loss))
        return ns_fail(ctx, NS_ERR_NONFINITE, "%s: grad_loss (%g) is not finite", fn,
                       (double)grad_loss);
#ifdef NS_HAVE_CUDA
    if (ctx->backend == NS_BACKEND_CUDA)
        return ns_cuda_infonce_backward(ctx, in, options, saved, grad_loss, grads);
#endif
    if ((st = ns_infonce_check_data(ctx, fn, in))) return st;
    int64_t nsaved = in->query.rows * NS_INFONCE_SAVED_PER_QUERY;
    int64_t bad = ns_find_nonfinite_f32(saved, nsaved);
    if (bad)
        return ns_fail(ctx, NS_ERR_NONFINITE,
                       "%s: saved[%lld] is not finite (pass the saved buffer of the forward with "
                       "the same inputs and options)",
                       fn, (long long)(bad - 1));
    ns_loss_plan plan;
    ns_loss_plan_init(&plan, ctx, in, options);
    return ns_infonce_backward_cpu(ctx, &plan, saved, grad_loss, grads);
}
