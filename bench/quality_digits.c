/*
 * Quality study: what the negative-sampling strategy does to a small contrastive embedding
 * trained on real labelled data.
 *
 * Data: the UCI digits test split (1,797 8×8 images, label last; shared/data/digits). Same
 * label = false negative, so it is a ground truth for what a false-negative filter removes.
 *
 * Model: z = normalise(W·x), W is dim×64, x the centred pixels / 16. Supervised contrastive
 * pairs: the anchor is a training image, its positive another training image of the same
 * class drawn afresh every step. Each query contrasts against the batch's positives (in-batch
 * negatives, same for every strategy) plus h extra negatives chosen by the strategy under test:
 *   inbatch        none
 *   uniform        h training images drawn uniformly (not the anchor)
 *   topk           the h highest-scoring of C candidates mined with ns_mine_topk
 *   topk+filter    the same after ns_filter (same id + TopK-PercPos 95%, NV-Retriever)
 *   simans         ns_sample SimANS (a, b) over the C candidates
 *   simans+filter  the same after ns_filter
 *   topk+oracle    topk after dropping every same-label candidate: an upper bound that uses
 *                  the labels, which a real filter does not have
 * Candidates are re-mined over the training set under the current W every `remine` epochs.
 * Loss and gradients come from ns_infonce_forward/backward; dW by the chain rule through the
 * normalisation; Adam.
 *
 * Measured per strategy and seed: the share of chosen negatives that carry the anchor's label
 * (false negatives), what the filter removed (and how many of those were false negatives), and
 * retrieval of the held-out 30 % (stratified per seed) against the training images:
 * R@1, R@10 (a same-class image among the first 10) and P@10 (share of the first 10).
 *
 * Usage: quality_digits --data digits.csv.gz [--seeds 3] [--epochs 30] [--batch 32] [--hard 4]
 *        [--cand 200] [--dim 16] [--tau 0.1] [--lr 0.003] [--remine 2] [--strategies a,b,..]
 *        [--out results.json]
 * A .gz path is read through `gzip -dc`. Writes JSON (stdout without --out), a table to stderr.
 */
#define _POSIX_C_SOURCE 200809L
#include <negsamp.h>

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define NPIX 64
#define NCLASS 10
#define MAXSEEDS 32

#define CHECK(call)                                                                          \
    do {                                                                                     \
        ns_status st_ = (call);                                                              \
        if (st_ != NS_OK) {                                                                  \
            fprintf(stderr, "%s:%d: %s failed: %s: %s\n", __FILE__, __LINE__, #call,         \
                    ns_status_string(st_), ns_last_error(g_ctx));                            \
            exit(2);                                                                         \
        }                                                                                    \
    } while (0)

static ns_context *g_ctx;

/* ------------------------------------------------------------------ options */

typedef struct {
    const char *data, *out, *strategies;
    int seeds, epochs, batch, hard, cand, dim, remine, threads;
    float tau, lr, rel_margin, simans_a, simans_b, test_share;
} config;

enum { S_INBATCH, S_UNIFORM, S_TOPK, S_SIMANS };
enum { F_NONE, F_NEGSAMP, F_ORACLE };

typedef struct {
    const char *name;
    int kind, filter;
} strategy;

static const strategy all_strategies[] = {
    {"inbatch", S_INBATCH, F_NONE},       {"uniform", S_UNIFORM, F_NONE},
    {"topk", S_TOPK, F_NONE},             {"topk+filter", S_TOPK, F_NEGSAMP},
    {"simans", S_SIMANS, F_NONE},         {"simans+filter", S_SIMANS, F_NEGSAMP},
    {"topk+oracle", S_TOPK, F_ORACLE},
};
#define NSTRAT ((int)(sizeof all_strategies / sizeof all_strategies[0]))

/* ------------------------------------------------------------------ a small RNG of our own */

static uint64_t rng_next(uint64_t *s) { /* splitmix64 */
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}
static int64_t rng_below(uint64_t *s, int64_t n) { return (int64_t)(rng_next(s) % (uint64_t)n); }
static double rng_uniform(uint64_t *s) { return (double)(rng_next(s) >> 11) * 0x1.0p-53; }
static double rng_normal(uint64_t *s) {
    double u = rng_uniform(s), v = rng_uniform(s);
    return sqrt(-2.0 * log(u + 1e-300)) * cos(6.283185307179586 * v);
}
static void shuffle(int64_t *a, int64_t n, uint64_t *s) {
    for (int64_t i = n - 1; i > 0; --i) {
        int64_t j = rng_below(s, i + 1), t = a[i];
        a[i] = a[j];
        a[j] = t;
    }
}

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* ------------------------------------------------------------------ data */

typedef struct {
    int64_t n;
    float *x; /* n×64 pixel counts */
    int *label;
} dataset;

static int read_digits(const char *path, dataset *ds) {
    size_t len = strlen(path);
    FILE *f;
    int piped = len > 3 && strcmp(path + len - 3, ".gz") == 0;
    if (piped) {
        char cmd[4096];
        snprintf(cmd, sizeof cmd, "gzip -dc '%s'", path);
        f = popen(cmd, "r");
    } else {
        f = fopen(path, "r");
    }
    if (!f) return -1;
    int64_t cap = 2048;
    ds->n = 0;
    ds->x = malloc((size_t)cap * NPIX * sizeof(float));
    ds->label = malloc((size_t)cap * sizeof(int));
    for (;;) {
        int v[NPIX + 1], k;
        for (k = 0; k <= NPIX; ++k)
            if (fscanf(f, k == 0 ? "%d" : " ,%d", &v[k]) != 1) break;
        if (k == 0) break;
        if (k != NPIX + 1 || v[NPIX] < 0 || v[NPIX] >= NCLASS) {
            fprintf(stderr, "quality_digits: row %lld of %s is malformed\n", (long long)ds->n,
                    path);
            return -1;
        }
        if (ds->n == cap) {
            cap *= 2;
            ds->x = realloc(ds->x, (size_t)cap * NPIX * sizeof(float));
            ds->label = realloc(ds->label, (size_t)cap * sizeof(int));
        }
        for (k = 0; k < NPIX; ++k) ds->x[ds->n * NPIX + k] = (float)v[k];
        ds->label[ds->n++] = v[NPIX];
    }
    if (piped) pclose(f); else fclose(f);
    return ds->n > 0 ? 0 : -1;
}

/* ------------------------------------------------------------------ the model */

typedef struct {
    int dim;
    float *w, *m, *v, *g; /* dim×64 weights, Adam moments, gradient */
    int64_t t;
} model;

/* z (n×dim) = normalise(W·x) for the listed rows; norm (n) keeps |W·x| for the backward. */
static void embed(const model *md, const float *x, const int64_t *rows, int64_t n, float *z,
                  float *norm) {
    for (int64_t i = 0; i < n; ++i) {
        float *zi = z + i * md->dim;
        if (rows && rows[i] < 0) { /* padding */
            memset(zi, 0, (size_t)md->dim * sizeof(float));
            if (norm) norm[i] = 1.f;
            continue;
        }
        const float *xi = x + (rows ? rows[i] : i) * NPIX;
        double ss = 0;
        for (int o = 0; o < md->dim; ++o) {
            const float *wo = md->w + o * NPIX;
            float acc = 0;
            for (int k = 0; k < NPIX; ++k) acc += wo[k] * xi[k];
            zi[o] = acc;
            ss += (double)acc * acc;
        }
        float nr = (float)sqrt(ss) + 1e-12f;
        for (int o = 0; o < md->dim; ++o) zi[o] /= nr;
        if (norm) norm[i] = nr;
    }
}

/* g += Σ_i (dz_raw_i ⊗ x_i), dz_raw = (dz − z (z·dz)) / |W·x|: the chain rule through the
 * normalisation and the projection. */
static void embed_backward(model *md, const float *x, const int64_t *rows, int64_t n,
                           const float *z, const float *norm, const float *dz) {
    float draw[256];
    for (int64_t i = 0; i < n; ++i) {
        if (rows && rows[i] < 0) continue;
        const float *zi = z + i * md->dim, *gi = dz + i * md->dim;
        const float *xi = x + (rows ? rows[i] : i) * NPIX;
        float dot = 0;
        for (int o = 0; o < md->dim; ++o) dot += zi[o] * gi[o];
        for (int o = 0; o < md->dim; ++o) draw[o] = (gi[o] - zi[o] * dot) / norm[i];
        for (int o = 0; o < md->dim; ++o) {
            float *go = md->g + o * NPIX;
            for (int k = 0; k < NPIX; ++k) go[k] += draw[o] * xi[k];
        }
    }
}

static void adam_step(model *md, float lr) {
    const float b1 = 0.9f, b2 = 0.999f, eps = 1e-8f;
    md->t++;
    float c1 = 1.f - powf(b1, (float)md->t), c2 = 1.f - powf(b2, (float)md->t);
    for (int i = 0; i < md->dim * NPIX; ++i) {
        md->m[i] = b1 * md->m[i] + (1 - b1) * md->g[i];
        md->v[i] = b2 * md->v[i] + (1 - b2) * md->g[i] * md->g[i];
        md->w[i] -= lr * (md->m[i] / c1) / (sqrtf(md->v[i] / c2) + eps);
        md->g[i] = 0;
    }
}

static ns_matrix mat(const float *p, int64_t rows, int64_t cols) {
    ns_matrix m = {p, NS_F32, rows, cols, 0};
    return m;
}

/* ------------------------------------------------------------------ evaluation */

typedef struct {
    double r1, r10, p10;
} retrieval;

/* Held-out images retrieve from the training images by cosine (ns_mine_topk, k = 10). */
static retrieval evaluate(const float *zte, int64_t nte, const int *lte, const float *ztr,
                          int64_t ntr, const int *ltr, int dim) {
    const int64_t k = 10;
    int64_t *idx = malloc((size_t)(nte * k) * sizeof(int64_t));
    float *sc = malloc((size_t)(nte * k) * sizeof(float));
    CHECK(ns_mine_topk(g_ctx, mat(zte, nte, dim), mat(ztr, ntr, dim), k, NULL, idx, sc));
    retrieval r = {0, 0, 0};
    for (int64_t i = 0; i < nte; ++i) {
        int hits = 0, first = -1;
        for (int64_t j = 0; j < k; ++j)
            if (ltr[idx[i * k + j]] == lte[i]) {
                hits++;
                if (first < 0) first = (int)j;
            }
        r.r1 += first == 0;
        r.r10 += hits > 0;
        r.p10 += hits / (double)k;
    }
    r.r1 /= (double)nte;
    r.r10 /= (double)nte;
    r.p10 /= (double)nte;
    free(idx);
    free(sc);
    return r;
}

/* ------------------------------------------------------------------ one training run */

typedef struct {
    retrieval ret;
    double fn_hard;        /* share of chosen extra negatives with the anchor's label */
    double fn_inbatch;     /* the same among in-batch negatives */
    double fn_candidates;  /* share of mined candidates with the anchor's label */
    double filter_removed; /* share of candidates the filter removed */
    double filter_precision, filter_recall; /* removed that were FN; FN that were removed */
    double found_per_query; /* extra negatives found per query (< h when the filter starves) */
    double final_loss, seconds;
} run_result;

typedef struct {
    int64_t ntr, nte;
    float *xtr, *xte; /* centred, /16 */
    int *ltr, *lte;
    int64_t *by_class[NCLASS]; /* training rows of each class */
    int64_t class_n[NCLASS];
} split;

static void make_split(const dataset *ds, double test_share, uint64_t seed, split *sp) {
    uint64_t s = seed * 0x2545F4914F6CDD1Dull + 17;
    int64_t *rows = malloc((size_t)ds->n * sizeof(int64_t));
    int8_t *is_test = calloc((size_t)ds->n, 1);
    for (int c = 0; c < NCLASS; ++c) { /* stratified: the same share of every class */
        int64_t m = 0;
        for (int64_t i = 0; i < ds->n; ++i)
            if (ds->label[i] == c) rows[m++] = i;
        shuffle(rows, m, &s);
        int64_t t = (int64_t)llround(test_share * (double)m);
        for (int64_t i = 0; i < t; ++i) is_test[rows[i]] = 1;
    }
    sp->ntr = sp->nte = 0;
    for (int64_t i = 0; i < ds->n; ++i) {
        if (is_test[i]) sp->nte++;
        else sp->ntr++;
    }
    sp->xtr = malloc((size_t)(sp->ntr * NPIX) * sizeof(float));
    sp->xte = malloc((size_t)(sp->nte * NPIX) * sizeof(float));
    sp->ltr = malloc((size_t)sp->ntr * sizeof(int));
    sp->lte = malloc((size_t)sp->nte * sizeof(int));
    double mean[NPIX] = {0};
    for (int64_t i = 0; i < ds->n; ++i)
        if (!is_test[i])
            for (int k = 0; k < NPIX; ++k) mean[k] += ds->x[i * NPIX + k];
    for (int k = 0; k < NPIX; ++k) mean[k] /= (double)sp->ntr; /* training statistics only */
    int64_t a = 0, b = 0;
    for (int64_t i = 0; i < ds->n; ++i) {
        float *dst = is_test[i] ? sp->xte + b * NPIX : sp->xtr + a * NPIX;
        for (int k = 0; k < NPIX; ++k)
            dst[k] = (float)((ds->x[i * NPIX + k] - mean[k]) / 16.0);
        if (is_test[i]) sp->lte[b++] = ds->label[i];
        else sp->ltr[a++] = ds->label[i];
    }
    for (int c = 0; c < NCLASS; ++c) {
        sp->class_n[c] = 0;
        sp->by_class[c] = malloc((size_t)sp->ntr * sizeof(int64_t));
    }
    for (int64_t i = 0; i < sp->ntr; ++i) {
        int c = sp->ltr[i];
        sp->by_class[c][sp->class_n[c]++] = i;
    }
    free(rows);
    free(is_test);
}

static void free_split(split *sp) {
    free(sp->xtr);
    free(sp->xte);
    free(sp->ltr);
    free(sp->lte);
    for (int c = 0; c < NCLASS; ++c) free(sp->by_class[c]);
}

static void model_init(model *md, int dim, uint64_t seed) {
    uint64_t s = seed * 0x9E3779B97F4A7C15ull + 3;
    md->dim = dim;
    md->w = malloc((size_t)dim * NPIX * sizeof(float));
    md->m = calloc((size_t)dim * NPIX, sizeof(float));
    md->v = calloc((size_t)dim * NPIX, sizeof(float));
    md->g = calloc((size_t)dim * NPIX, sizeof(float));
    md->t = 0;
    for (int i = 0; i < dim * NPIX; ++i) md->w[i] = (float)(rng_normal(&s) / sqrt(NPIX));
}

static void model_free(model *md) {
    free(md->w);
    free(md->m);
    free(md->v);
    free(md->g);
}

static run_result train(const config *cf, const split *sp, const strategy *st, uint64_t seed) {
    const int dim = cf->dim, B = cf->batch;
    const int64_t ntr = sp->ntr, C = cf->cand;
    const int64_t h = st->kind == S_INBATCH ? 0 : cf->hard;
    const float inv_tau = 1.f / cf->tau;
    double t0 = now_s();
    model md;
    model_init(&md, dim, seed); /* the same start for every strategy of a seed */
    uint64_t rs = seed * 0xD1B54A32D192ED03ull + 11;

    float *ztr = malloc((size_t)(ntr * dim) * sizeof(float));
    int64_t *cand = malloc((size_t)(ntr * C) * sizeof(int64_t));
    float *cand_score = malloc((size_t)(ntr * C) * sizeof(float));
    int64_t *self_off = malloc((size_t)(ntr + 1) * sizeof(int64_t));
    int64_t *self_ids = malloc((size_t)ntr * sizeof(int64_t));
    for (int64_t i = 0; i <= ntr; ++i) self_off[i] = i;
    for (int64_t i = 0; i < ntr; ++i) self_ids[i] = i;
    ns_id_lists self = {self_off, self_ids, ntr};

    int64_t *order = malloc((size_t)ntr * sizeof(int64_t));
    for (int64_t i = 0; i < ntr; ++i) order[i] = i;
    int64_t anc[1024], pos[1024];
    int64_t *hard_rows = malloc((size_t)(B * (h ? h : 1)) * sizeof(int64_t));
    uint8_t *hard_keep = malloc((size_t)(B * (h ? h : 1)));
    float *zq = malloc((size_t)(B * dim) * sizeof(float)), *nq = malloc((size_t)B * sizeof(float));
    float *zp = malloc((size_t)(B * dim) * sizeof(float)), *np_ = malloc((size_t)B * sizeof(float));
    float *zh = malloc((size_t)(B * (h ? h : 1) * dim) * sizeof(float));
    float *nh = malloc((size_t)(B * (h ? h : 1)) * sizeof(float));
    float *gq = malloc((size_t)(B * dim) * sizeof(float)), *gp = malloc((size_t)(B * dim) * sizeof(float));
    float *gh = malloc((size_t)(B * (h ? h : 1) * dim) * sizeof(float));
    float *saved = malloc((size_t)B * NS_INFONCE_SAVED_PER_QUERY * sizeof(float));
    /* per-batch candidate staging for ns_filter / ns_sample */
    int64_t *bc_id = malloc((size_t)(B * C) * sizeof(int64_t));
    float *bc_score = malloc((size_t)(B * C) * sizeof(float));
    float *bc_pos = malloc((size_t)B * sizeof(float));
    uint8_t *keep = malloc((size_t)(B * C));
    int64_t *pid_off = malloc((size_t)(B + 1) * sizeof(int64_t));
    int64_t *pid = malloc((size_t)(2 * B) * sizeof(int64_t));
    int64_t *count = malloc((size_t)B * sizeof(int64_t));

    double fn_hard = 0, n_hard = 0, fn_inb = 0, n_inb = 0, fn_cand = 0, n_cand = 0;
    double removed = 0, removed_fn = 0, examined = 0;
    double loss_sum = 0;
    int64_t loss_n = 0, step = 0;

    for (int ep = 0; ep < cf->epochs; ++ep) {
        int mine = (st->kind == S_TOPK || st->kind == S_SIMANS) && ep % cf->remine == 0;
        if (mine) { /* candidates under the current W, in the model's own logit units; ztr
                     * also gives s⁺ on the same footing until the next mining */
            embed(&md, sp->xtr, NULL, ntr, ztr, NULL);
            ns_mine_options mo = NS_MINE_OPTIONS_INIT;
            mo.scale = inv_tau;
            mo.exclude = &self;
            CHECK(ns_mine_topk(g_ctx, mat(ztr, ntr, dim), mat(ztr, ntr, dim), C, &mo, cand,
                               cand_score));
        }
        shuffle(order, ntr, &rs);
        for (int64_t b0 = 0; b0 + B <= ntr; b0 += B, ++step) {
            for (int i = 0; i < B; ++i) {
                int64_t a = order[b0 + i];
                int c = sp->ltr[a];
                int64_t p;
                do p = sp->by_class[c][rng_below(&rs, sp->class_n[c])];
                while (p == a && sp->class_n[c] > 1);
                anc[i] = a;
                pos[i] = p;
            }
            for (int i = 0; i < B; ++i) /* in-batch negatives: the other rows' positives */
                for (int j = 0; j < B; ++j)
                    if (j != i && pos[j] != pos[i]) {
                        n_inb++;
                        fn_inb += sp->ltr[pos[j]] == sp->ltr[anc[i]];
                    }

            if (st->kind == S_UNIFORM) {
                for (int i = 0; i < B; ++i)
                    for (int64_t j = 0; j < h; ++j) {
                        int64_t r;
                        do r = rng_below(&rs, ntr);
                        while (r == anc[i]);
                        hard_rows[i * h + j] = r;
                    }
            } else if (st->kind == S_TOPK || st->kind == S_SIMANS) {
                for (int i = 0; i < B; ++i) {
                    memcpy(bc_id + i * C, cand + anc[i] * C, (size_t)C * sizeof(int64_t));
                    memcpy(bc_score + i * C, cand_score + anc[i] * C, (size_t)C * sizeof(float));
                    const float *za = ztr + anc[i] * dim, *zb = ztr + pos[i] * dim;
                    float s = 0;
                    for (int o = 0; o < dim; ++o) s += za[o] * zb[o];
                    bc_pos[i] = s * inv_tau;
                    pid_off[i] = i;
                    pid[i] = pos[i];
                    for (int64_t j = 0; j < C; ++j) {
                        int64_t id = bc_id[i * C + j];
                        if (id < 0) continue;
                        n_cand++;
                        fn_cand += sp->ltr[id] == sp->ltr[anc[i]];
                    }
                }
                pid_off[B] = B;
                ns_id_lists pids = {pid_off, pid, B};
                ns_candidates cd = {B, C, bc_id, bc_score, bc_pos, &pids, NULL, NULL, 0};
                const uint8_t *kp = NULL;
                if (st->filter == F_NEGSAMP) {
                    ns_filter_options fo = NS_FILTER_OPTIONS_INIT;
                    fo.rules = NS_FILTER_SAME_ID | NS_FILTER_REL_MARGIN;
                    fo.rel_margin = cf->rel_margin;
                    CHECK(ns_filter(g_ctx, &cd, &fo, keep, NULL));
                    kp = keep;
                } else if (st->filter == F_ORACLE) {
                    for (int i = 0; i < B; ++i)
                        for (int64_t j = 0; j < C; ++j) {
                            int64_t id = bc_id[i * C + j];
                            keep[i * C + j] = id >= 0 && sp->ltr[id] != sp->ltr[anc[i]];
                        }
                    kp = keep;
                }
                if (kp)
                    for (int i = 0; i < B; ++i)
                        for (int64_t j = 0; j < C; ++j) {
                            int64_t id = bc_id[i * C + j];
                            if (id < 0) continue;
                            examined++;
                            if (!kp[i * C + j]) {
                                removed++;
                                removed_fn += sp->ltr[id] == sp->ltr[anc[i]];
                            }
                        }
                ns_sampler_options so = NS_SAMPLER_OPTIONS_INIT;
                so.strategy = st->kind == S_TOPK ? NS_SAMPLE_TOP : NS_SAMPLE_SIMANS;
                so.simans_a = cf->simans_a;
                so.simans_b = cf->simans_b;
                so.seed = seed;
                so.step = (uint64_t)step;
                CHECK(ns_sample(g_ctx, &cd, kp, &so, h, hard_rows, NULL, count));
            }
            for (int64_t r = 0; r < B * h; ++r) {
                hard_keep[r] = hard_rows[r] >= 0;
                if (hard_rows[r] < 0) continue;
                n_hard++;
                fn_hard += sp->ltr[hard_rows[r]] == sp->ltr[anc[r / h]];
            }

            embed(&md, sp->xtr, anc, B, zq, nq);
            embed(&md, sp->xtr, pos, B, zp, np_);
            if (h) embed(&md, sp->xtr, hard_rows, B * h, zh, nh);
            ns_infonce_inputs in;
            memset(&in, 0, sizeof in);
            in.query = mat(zq, B, dim);
            in.passage = mat(zp, B, dim);
            in.passage_id = pos; /* a duplicate positive in the batch is the same image: masked */
            in.hard = mat(zh, h ? B * h : 0, dim);
            in.hard_per_query = h;
            in.hard_keep = h ? hard_keep : NULL;
            in.hard_id = h ? hard_rows : NULL;
            in.extra = mat(NULL, 0, dim);
            ns_loss_options lo = NS_LOSS_OPTIONS_INIT;
            lo.temperature = cf->tau;
            float loss = 0;
            CHECK(ns_infonce_forward(g_ctx, &in, &lo, &loss, NULL, saved));
            ns_infonce_grads gr = {gq, gp, h ? gh : NULL, NULL};
            CHECK(ns_infonce_backward(g_ctx, &in, &lo, saved, 1.f, &gr));
            embed_backward(&md, sp->xtr, anc, B, zq, nq, gq);
            embed_backward(&md, sp->xtr, pos, B, zp, np_, gp);
            if (h) embed_backward(&md, sp->xtr, hard_rows, B * h, zh, nh, gh);
            adam_step(&md, cf->lr);
            if (ep == cf->epochs - 1) {
                loss_sum += loss;
                loss_n++;
            }
        }
    }

    float *zte = malloc((size_t)(sp->nte * dim) * sizeof(float));
    embed(&md, sp->xtr, NULL, ntr, ztr, NULL);
    embed(&md, sp->xte, NULL, sp->nte, zte, NULL);
    run_result rr;
    rr.ret = evaluate(zte, sp->nte, sp->lte, ztr, ntr, sp->ltr, dim);
    rr.fn_hard = n_hard > 0 ? fn_hard / n_hard : NAN;
    rr.fn_inbatch = n_inb > 0 ? fn_inb / n_inb : NAN;
    rr.fn_candidates = n_cand > 0 ? fn_cand / n_cand : NAN;
    rr.filter_removed = examined > 0 ? removed / examined : NAN;
    rr.filter_precision = removed > 0 ? removed_fn / removed : NAN;
    rr.filter_recall = fn_cand > 0 && examined > 0 ? removed_fn / fn_cand : NAN;
    rr.found_per_query = h ? n_hard / ((double)step * B) : 0;
    rr.final_loss = loss_n ? loss_sum / (double)loss_n : NAN;
    rr.seconds = now_s() - t0;

    free(zte);
    free(ztr); free(cand); free(cand_score); free(self_off); free(self_ids); free(order);
    free(hard_rows); free(hard_keep); free(zq); free(nq); free(zp); free(np_); free(zh); free(nh);
    free(gq); free(gp); free(gh); free(saved); free(bc_id); free(bc_score); free(bc_pos);
    free(keep); free(pid_off); free(pid); free(count);
    model_free(&md);
    return rr;
}

/* ------------------------------------------------------------------ baselines without training */

static retrieval baseline(const split *sp, int dim, uint64_t seed, int raw) {
    int d = raw ? NPIX : dim;
    float *ztr = malloc((size_t)(sp->ntr * d) * sizeof(float));
    float *zte = malloc((size_t)(sp->nte * d) * sizeof(float));
    if (raw) { /* cosine on the centred pixels */
        model id = {NPIX, calloc(NPIX * NPIX, sizeof(float)), NULL, NULL, NULL, 0};
        for (int k = 0; k < NPIX; ++k) id.w[k * NPIX + k] = 1.f;
        embed(&id, sp->xtr, NULL, sp->ntr, ztr, NULL);
        embed(&id, sp->xte, NULL, sp->nte, zte, NULL);
        free(id.w);
    } else { /* the random initial projection every strategy starts from */
        model md;
        model_init(&md, dim, seed);
        embed(&md, sp->xtr, NULL, sp->ntr, ztr, NULL);
        embed(&md, sp->xte, NULL, sp->nte, zte, NULL);
        model_free(&md);
    }
    retrieval r = evaluate(zte, sp->nte, sp->lte, ztr, sp->ntr, sp->ltr, d);
    free(ztr);
    free(zte);
    return r;
}

/* ------------------------------------------------------------------ main */

static void json_num(FILE *f, const char *key, double v, int comma) {
    if (isfinite(v)) fprintf(f, "\"%s\": %.6g%s", key, v, comma ? ", " : "");
    else fprintf(f, "\"%s\": null%s", key, comma ? ", " : "");
}

static int usage(void) {
    fprintf(stderr, "usage: quality_digits --data digits.csv[.gz] [--seeds N] [--epochs N] "
                    "[--batch N] [--hard N] [--cand N] [--dim N] [--tau T] [--lr LR] "
                    "[--remine N] [--rel-margin R] [--simans-a A] [--simans-b B] "
                    "[--threads N] [--strategies a,b] [--out FILE]\n");
    return 2;
}

int main(int argc, char **argv) {
    config cf = {NULL, NULL, NULL, 3, 30, 32, 4, 200, 16, 2, 1,
                 0.1f, 0.003f, 0.05f, 0.5f, 0.0f, 0.3f};
    for (int i = 1; i < argc; ++i) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v) return usage();
        if (!strcmp(a, "--data")) cf.data = v;
        else if (!strcmp(a, "--out")) cf.out = v;
        else if (!strcmp(a, "--strategies")) cf.strategies = v;
        else if (!strcmp(a, "--seeds")) cf.seeds = atoi(v);
        else if (!strcmp(a, "--epochs")) cf.epochs = atoi(v);
        else if (!strcmp(a, "--batch")) cf.batch = atoi(v);
        else if (!strcmp(a, "--hard")) cf.hard = atoi(v);
        else if (!strcmp(a, "--cand")) cf.cand = atoi(v);
        else if (!strcmp(a, "--dim")) cf.dim = atoi(v);
        else if (!strcmp(a, "--remine")) cf.remine = atoi(v);
        else if (!strcmp(a, "--threads")) cf.threads = atoi(v);
        else if (!strcmp(a, "--tau")) cf.tau = (float)atof(v);
        else if (!strcmp(a, "--lr")) cf.lr = (float)atof(v);
        else if (!strcmp(a, "--rel-margin")) cf.rel_margin = (float)atof(v);
        else if (!strcmp(a, "--simans-a")) cf.simans_a = (float)atof(v);
        else if (!strcmp(a, "--simans-b")) cf.simans_b = (float)atof(v);
        else return usage();
        ++i;
    }
    if (!cf.data || cf.seeds < 1 || cf.seeds > MAXSEEDS || cf.epochs < 1 || cf.batch < 2 ||
        cf.batch > 1024 || cf.hard < 1 || cf.cand < cf.hard || cf.dim < 1 || cf.dim > 256 ||
        cf.remine < 1 || !(cf.tau > 0))
        return usage();

    dataset ds;
    if (read_digits(cf.data, &ds) != 0) {
        fprintf(stderr, "quality_digits: cannot read %s\n", cf.data);
        return 1;
    }
    ns_context_options co = NS_CONTEXT_OPTIONS_INIT;
    co.backend = NS_BACKEND_CPU;
    co.threads = cf.threads;
    if (ns_context_create(&g_ctx, &co) != NS_OK) {
        fprintf(stderr, "quality_digits: %s\n", ns_last_error(NULL));
        return 1;
    }

    int use[NSTRAT];
    for (int s = 0; s < NSTRAT; ++s) {
        use[s] = !cf.strategies;
        if (cf.strategies) { /* comma-separated names */
            const char *p = cf.strategies;
            size_t n = strlen(all_strategies[s].name);
            while (p && *p) {
                const char *e = strchr(p, ',');
                size_t l = e ? (size_t)(e - p) : strlen(p);
                if (l == n && !strncmp(p, all_strategies[s].name, n)) use[s] = 1;
                p = e ? e + 1 : NULL;
            }
        }
    }

    FILE *out = cf.out ? fopen(cf.out, "w") : stdout;
    if (!out) {
        fprintf(stderr, "quality_digits: cannot write %s\n", cf.out);
        return 1;
    }
    fprintf(out, "{\n  \"data\": {\"images\": %lld, \"test_share\": %.2f},\n", (long long)ds.n,
            cf.test_share);
    fprintf(out,
            "  \"config\": {\"seeds\": %d, \"epochs\": %d, \"batch\": %d, \"hard\": %d, "
            "\"candidates\": %d, \"dim\": %d, \"tau\": %g, \"lr\": %g, \"remine_every\": %d, "
            "\"rel_margin\": %g, \"simans_a\": %g, \"simans_b\": %g, \"threads\": %d},\n",
            cf.seeds, cf.epochs, cf.batch, cf.hard, cf.cand, cf.dim, cf.tau, cf.lr, cf.remine,
            cf.rel_margin, cf.simans_a, cf.simans_b, cf.threads);
    fprintf(out, "  \"runs\": [\n");
    int first = 1;
    fprintf(stderr, "%-14s %4s %6s %6s %6s %7s %7s %7s %6s\n", "strategy", "seed", "R@1",
            "R@10", "P@10", "FN-hard", "FN-cand", "removed", "sec");
    for (int seed = 1; seed <= cf.seeds; ++seed) {
        split sp;
        make_split(&ds, cf.test_share, (uint64_t)seed, &sp);
        for (int b = 0; b < 2; ++b) {
            retrieval r = baseline(&sp, cf.dim, (uint64_t)seed, b == 0);
            const char *name = b == 0 ? "raw-pixels" : "random-init";
            fprintf(out, "%s    {\"strategy\": \"%s\", \"seed\": %d, \"trained\": false, ",
                    first ? "" : ",\n", name, seed);
            json_num(out, "r1", r.r1, 1);
            json_num(out, "r10", r.r10, 1);
            json_num(out, "p10", r.p10, 0);
            fprintf(out, "}");
            first = 0;
            fprintf(stderr, "%-14s %4d %6.3f %6.3f %6.3f\n", name, seed, r.r1, r.r10, r.p10);
        }
        for (int s = 0; s < NSTRAT; ++s) {
            if (!use[s]) continue;
            run_result rr = train(&cf, &sp, &all_strategies[s], (uint64_t)seed);
            fprintf(out, ",\n    {\"strategy\": \"%s\", \"seed\": %d, \"trained\": true, ",
                    all_strategies[s].name, seed);
            json_num(out, "r1", rr.ret.r1, 1);
            json_num(out, "r10", rr.ret.r10, 1);
            json_num(out, "p10", rr.ret.p10, 1);
            json_num(out, "fn_share_chosen", rr.fn_hard, 1);
            json_num(out, "fn_share_inbatch", rr.fn_inbatch, 1);
            json_num(out, "fn_share_candidates", rr.fn_candidates, 1);
            json_num(out, "filter_removed", rr.filter_removed, 1);
            json_num(out, "filter_precision", rr.filter_precision, 1);
            json_num(out, "filter_recall", rr.filter_recall, 1);
            json_num(out, "found_per_query", rr.found_per_query, 1);
            json_num(out, "final_loss", rr.final_loss, 1);
            json_num(out, "seconds", rr.seconds, 0);
            fprintf(out, "}");
            fprintf(stderr, "%-14s %4d %6.3f %6.3f %6.3f %7.3f %7.3f %7.3f %6.2f\n",
                    all_strategies[s].name, seed, rr.ret.r1, rr.ret.r10, rr.ret.p10, rr.fn_hard,
                    rr.fn_candidates, rr.filter_removed, rr.seconds);
        }
        free_split(&sp);
    }
    fprintf(out, "\n  ]\n}\n");
    if (cf.out) fclose(out);
    ns_context_destroy(g_ctx);
    free(ds.x);
    free(ds.label);
    return 0;
}
