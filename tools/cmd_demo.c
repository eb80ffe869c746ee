/* negsamp demo: train a small embedding with negsamp's loss, then show what each sampling
 * setting does to false negatives, before and after training, on real labelled data.
 *
 * The digits set (1,797 8×8 images, labels 0..9). Stages, each a function below:
 *   load     read the CSV; hold out every 5th image (20%) from training
 *   train    a linear map 64→dim, z = normalise(W·x), trained with ns_infonce_forward/backward
 *            on in-batch negatives (anchor + a random same-label training image as positive),
 *            Adam written here, seeded; on a CPU context (host arrays). The label is the
 *            passages' id, so same-label passages of a batch are masked, not negatives
 *   eval     held-out images retrieve among all other images (ns_mine_topk, k = 100):
 *            P@10, P@100, R@1
 *   analyse  for the raw pixels (centred, L2-normalised) and for the trained embedding: every
 *            image is a query against all the others; its positive is its nearest same-label
 *            image; the k nearest (itself and its positive excluded) are the candidates; then
 *            five settings pick m negatives (ns_filter, ns_sample). A chosen negative that
 *            carries the query's label is a false negative.
 *   print    one table, the two embeddings side by side. */
#define _GNU_SOURCE
#include "cli.h"

#include <getopt.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#ifndef NS_DEFAULT_DATA
#define NS_DEFAULT_DATA "../shared/data/digits/digits.csv.gz"
#endif

static const char DEMO_HELP[] =
    "usage: negsamp demo [--data PATH] [options]\n"
    "\n"
    "Trains a linear embedding of the digits images (64 pixels -> --dim) with negsamp's InfoNCE\n"
    "loss on in-batch negatives (a batch's same-label passages masked as one id; every 5th image\n"
    "held out). Then, for the raw pixels and for the trained embedding, mines the k nearest\n"
    "images of every image (itself and its positive, its nearest same-label image, excluded) and\n"
    "picks m negatives per image under five settings. It prints held-out retrieval (P@10, P@100,\n"
    "R@1) before and after training and, per setting, the share of picked negatives that carry\n"
    "the image's own label (false negatives) and their mean score:\n"
    "  (a) top      the m hardest, no filter\n"
    "  (b) top+F    the m hardest after the filter: relative margin s > s+ - |s+| * rel removed,\n"
    "               and only ranks in [rank-min, k) kept\n"
    "  (c) simans   SimANS w = exp(-a (s - s+ - b)^2), no filter\n"
    "  (d) simans+F SimANS after the filter\n"
    "  (e) uniform  uniform among the k candidates\n"
    "\n"
    "Options:\n"
    "  --data PATH        digits CSV (gzip or plain; 64 pixels then the label per row)\n"
    "                     (default " NS_DEFAULT_DATA ")\n"
    "  -k, --k K          candidates per image (default 200)\n"
    "  -m, --negatives M  negatives per image (default 10)\n"
    "  --positive P       nearest: the nearest same-label image (default);\n"
    "                     random: a random same-label image (seeded)\n"
    "  --rel-margin X     relative margin of the filter (default 0.05)\n"
    "  --rank-min R       the filter keeps ranks [R, k) (default 10)\n"
    "  --simans-a A       (default 20: cosine scores are ~1/20 the scale of the SimXNS\n"
    "                     dot-product scores its a = 0.5 was tuned on)\n"
    "  --simans-b B       (default 0)\n"
    "  --dim D            trained embedding size (default 32)\n"
    "  --epochs E         training epochs, 0 = no training (default 20)\n"
    "  --seed N           (default 1)\n"
    "  --backend B        auto | cpu | cuda, for mining, filter and sample (default auto)\n"
    "  --threads N        CPU threads (default all)\n"
    "\n"
    "Example:\n"
    "  negsamp demo\n"
    "  negsamp demo --positive random --simans-a 5 --epochs 40\n";

enum { D_DATA = 400, D_POSITIVE, D_REL, D_RANK_MIN, D_A, D_B, D_SEED, D_BACKEND, D_THREADS,
       D_DIM, D_EPOCHS };
enum { NSET = 5, NEMB = 2, TRAIN_BATCH = 64 };
#define TRAIN_TAU 0.1f
#define TRAIN_LR 0.01f

typedef struct {
    const char *name, *what;
    int filter;
    ns_sampler strategy;
} demo_setting;

static const demo_setting demo_settings[NSET] = {
    {"(a) top", "top-k hardest, no filter", 0, NS_SAMPLE_TOP},
    {"(b) top+F", "top-k hardest after the filter", 1, NS_SAMPLE_TOP},
    {"(c) simans", "SimANS, no filter", 0, NS_SAMPLE_SIMANS},
    {"(d) simans+F", "SimANS after the filter", 1, NS_SAMPLE_SIMANS},
    {"(e) uniform", "uniform among the k, no filter", 0, NS_SAMPLE_UNIFORM}};

typedef struct {
    const char *data;
    int64_t k, m, rank_min, threads, dim, epochs;
    float rel, a, b;
    uint64_t seed;
    int random_pos;
    ns_backend backend;
} demo_args;

/* Returns -1 to go on, or the exit status (--help, a usage error). */
static int demo_parse(int argc, char **argv, demo_args *a) {
    static const struct option longopts[] = {
        {"help", no_argument, 0, 'h'}, {"data", required_argument, 0, D_DATA},
        {"k", required_argument, 0, 'k'}, {"negatives", required_argument, 0, 'm'},
        {"positive", required_argument, 0, D_POSITIVE},
        {"rel-margin", required_argument, 0, D_REL},
        {"rank-min", required_argument, 0, D_RANK_MIN},
        {"simans-a", required_argument, 0, D_A}, {"simans-b", required_argument, 0, D_B},
        {"seed", required_argument, 0, D_SEED}, {"backend", required_argument, 0, D_BACKEND},
        {"threads", required_argument, 0, D_THREADS}, {"dim", required_argument, 0, D_DIM},
        {"epochs", required_argument, 0, D_EPOCHS}, {0, 0, 0, 0}};
    demo_args def = {NS_DEFAULT_DATA, 200, 10, 10, 0, 32, 20, 0.05f, 20.f, 0.f, 1, 0,
                     NS_BACKEND_AUTO};
    *a = def;
    opterr = 0;
    optind = 1;
    int c, bad = 0;
    while (!bad && (c = getopt_long(argc, argv, ":hk:m:", longopts, NULL)) != -1) {
        switch (c) {
        case 'h': fputs(DEMO_HELP, stdout); return CLI_OK;
        case D_DATA: a->data = optarg; break;
        case 'k': bad = cli_parse_i64("-k", optarg, 1, NS_MAX_K, &a->k); break;
        case 'm': bad = cli_parse_i64("--negatives", optarg, 1, NS_MAX_K, &a->m); break;
        case D_POSITIVE:
            if (!strcmp(optarg, "nearest")) a->random_pos = 0;
            else if (!strcmp(optarg, "random")) a->random_pos = 1;
            else return cli_usage_error("--positive '%s': expected nearest or random", optarg);
            break;
        case D_REL: bad = cli_parse_f32("--rel-margin", optarg, &a->rel); break;
        case D_RANK_MIN: bad = cli_parse_i64("--rank-min", optarg, 0, NS_MAX_K, &a->rank_min); break;
        case D_A:
            if (cli_parse_f32("--simans-a", optarg, &a->a)) return CLI_USAGE;
            if (!(a->a > 0)) return cli_usage_error("--simans-a (%s) must be > 0", optarg);
            break;
        case D_B: bad = cli_parse_f32("--simans-b", optarg, &a->b); break;
        case D_SEED: bad = cli_parse_u64("--seed", optarg, &a->seed); break;
        case D_BACKEND: bad = cli_parse_backend("--backend", optarg, &a->backend); break;
        case D_THREADS: bad = cli_parse_i64("--threads", optarg, 0, 4096, &a->threads); break;
        case D_DIM: bad = cli_parse_i64("--dim", optarg, 1, 256, &a->dim); break;
        case D_EPOCHS: bad = cli_parse_i64("--epochs", optarg, 0, 10000, &a->epochs); break;
        case ':': return cli_usage_error("option '%s' needs a value", argv[optind - 1]);
        default: return cli_usage_error("unknown option '%s'", argv[optind - 1]);
        }
    }
    if (bad) return CLI_USAGE;
    if (optind < argc) return cli_usage_error("unexpected argument '%s'", argv[optind]);
    if (a->k < a->m)
        return cli_usage_error("-k (%lld) must be at least -m (%lld)", (long long)a->k,
                               (long long)a->m);
    if (a->rank_min >= a->k)
        return cli_usage_error("--rank-min (%lld) must be below k (%lld)", (long long)a->rank_min,
                               (long long)a->k);
    return -1;
}

/* What one setting gave on one embedding. */
typedef struct {
    double fn, mean_s, per_img, ms;
} demo_cell;

/* What one embedding gave: retrieval of the held-out images, the mined candidates, the table. */
typedef struct {
    double p10, p100, r1, own_cand, pos_mean, mine_ms;
    demo_cell cell[NSET];
} demo_column;

typedef struct {
    const demo_args *a;
    int64_t n, d, cols, ntrain;
    double *raw;
    float *x;        /* n×d centred pixels / 16: the model's input */
    float *emb[NEMB]; /* n×dims[e], L2-normalised: raw pixels, trained */
    int64_t dims[NEMB];
    int *label;
    uint8_t *held_out;
    ns_context *ctx, *cpu; /* mining/filter/sample (--backend); training and evaluation */
    demo_column col[NEMB];
    double t_load, t_train, final_loss;
} demo_run;

static uint64_t demo_rng(uint64_t *s) { /* splitmix64 */
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static void demo_normalise_rows(float *z, int64_t n, int64_t d) {
    for (int64_t i = 0; i < n; i++) {
        double ss = 0;
        for (int64_t c = 0; c < d; c++) ss += (double)z[i * d + c] * z[i * d + c];
        float inv = ss > 0 ? (float)(1.0 / sqrt(ss)) : 0.f;
        for (int64_t c = 0; c < d; c++) z[i * d + c] *= inv;
    }
}

/* Stage load: the CSV, the labels, the held-out split, the centred inputs and the raw
 * embedding (centred pixels, L2-normalised: scores are cosines). */
static int demo_load(demo_run *r) {
    const demo_args *a = r->a;
    if (cli_csv_read(a->data, &r->raw, &r->n, &r->cols)) {
        fprintf(stderr, "%s: pass --data PATH to the digits CSV (digits.csv.gz)\n", cli_command);
        return -1;
    }
    if (r->cols < 2) {
        cli_error("%s: %lld columns; expected the pixels and then the label", a->data,
                  (long long)r->cols);
        return -1;
    }
    int64_t n = r->n, d = r->cols - 1;
    r->d = d;
    if (n < 2 || a->k > n - 2) {
        cli_error("%s: %lld rows is too few for k = %lld (k ≤ rows − 2)", a->data, (long long)n,
                  (long long)a->k);
        return -1;
    }
    r->x = malloc((size_t)(n * d) * 4);
    r->emb[0] = malloc((size_t)(n * d) * 4);
    r->emb[1] = malloc((size_t)(n * a->dim) * 4);
    r->label = malloc((size_t)n * sizeof(int));
    r->held_out = malloc((size_t)n);
    if (!r->x || !r->emb[0] || !r->emb[1] || !r->label || !r->held_out) {
        cli_error("out of memory");
        return -1;
    }
    r->dims[0] = d;
    r->dims[1] = a->dim;
    for (int64_t c = 0; c < d; c++) {
        double mean = 0;
        for (int64_t i = 0; i < n; i++) mean += r->raw[i * r->cols + c];
        mean /= (double)n;
        for (int64_t i = 0; i < n; i++)
            r->x[i * d + c] = (float)((r->raw[i * r->cols + c] - mean) / 16.0);
    }
    memcpy(r->emb[0], r->x, (size_t)(n * d) * 4);
    demo_normalise_rows(r->emb[0], n, d);
    r->ntrain = 0;
    for (int64_t i = 0; i < n; i++) {
        double lv = r->raw[i * r->cols + d];
        r->label[i] = (int)lv;
        if (lv != (double)r->label[i]) {
            cli_error("%s: row %lld: label %g is not an integer", a->data, (long long)i + 1, lv);
            return -1;
        }
        r->held_out[i] = i % 5 == 4;
        r->ntrain += !r->held_out[i];
    }
    return 0;
}

/* The model: z = normalise(W·x), W dim×d; Adam state. */
typedef struct {
    int64_t dim, d, t;
    float *w, *g, *m, *v;
} demo_model;

/* z = normalise(W·x) for the listed rows; nrm keeps |W·x| for the backward. */
static void demo_forward(const demo_model *md, const float *x, const int64_t *rows, int64_t b,
                         float *z, float *nrm) {
    for (int64_t i = 0; i < b; i++) {
        const float *xi = x + (rows ? rows[i] : i) * md->d;
        double ss = 0;
        for (int64_t o = 0; o < md->dim; o++) {
            float acc = 0;
            for (int64_t c = 0; c < md->d; c++) acc += md->w[o * md->d + c] * xi[c];
            z[i * md->dim + o] = acc;
            ss += (double)acc * acc;
        }
        nrm[i] = (float)sqrt(ss) + 1e-12f;
        for (int64_t o = 0; o < md->dim; o++) z[i * md->dim + o] /= nrm[i];
    }
}

/* g += Σ_i ((dz − z (z·dz)) / |W·x|) ⊗ x_i: the chain rule through normalise and W. */
static void demo_backward(demo_model *md, const float *x, const int64_t *rows, int64_t b,
                          const float *z, const float *nrm, const float *dz) {
    for (int64_t i = 0; i < b; i++) {
        const float *xi = x + rows[i] * md->d, *zi = z + i * md->dim, *gi = dz + i * md->dim;
        float dot = 0;
        for (int64_t o = 0; o < md->dim; o++) dot += zi[o] * gi[o];
        for (int64_t o = 0; o < md->dim; o++) {
            float dr = (gi[o] - zi[o] * dot) / nrm[i];
            for (int64_t c = 0; c < md->d; c++) md->g[o * md->d + c] += dr * xi[c];
        }
    }
}

static void demo_adam(demo_model *md, float lr) {
    const float b1 = 0.9f, b2 = 0.999f;
    md->t++;
    float c1 = 1.f - powf(b1, (float)md->t), c2 = 1.f - powf(b2, (float)md->t);
    for (int64_t i = 0; i < md->dim * md->d; i++) {
        md->m[i] = b1 * md->m[i] + (1 - b1) * md->g[i];
        md->v[i] = b2 * md->v[i] + (1 - b2) * md->g[i] * md->g[i];
        md->w[i] -= lr * (md->m[i] / c1) / (sqrtf(md->v[i] / c2) + 1e-8f);
        md->g[i] = 0;
    }
}

/* One step: anchors and their positives → InfoNCE (in-batch) → dW → Adam. Returns the loss, or
 * NAN on failure (the message is printed). buf holds 4·B·dim + 2·B + B·saved floats. */
static float demo_train_step(demo_run *r, demo_model *md, const int64_t *anc,
                             const int64_t *pos, float *buf) {
    const int64_t B = TRAIN_BATCH, dim = md->dim;
    float *zq = buf, *zp = zq + B * dim, *gq = zp + B * dim, *gp = gq + B * dim;
    float *nq = gp + B * dim, *np_ = nq + B, *saved = np_ + B;
    demo_forward(md, r->x, anc, B, zq, nq);
    demo_forward(md, r->x, pos, B, zp, np_);
    ns_infonce_inputs in;
    memset(&in, 0, sizeof in);
    in.query = (ns_matrix){zq, NS_F32, B, dim, dim};
    in.passage = (ns_matrix){zp, NS_F32, B, dim, dim};
    int64_t pid[TRAIN_BATCH]; /* the label as the passage's id: same-label passages of the */
    for (int64_t i = 0; i < B; i++) /* batch are masked (same id), not taken as negatives */
        pid[i] = r->label[pos[i]];
    in.passage_id = pid;
    in.hard = (ns_matrix){NULL, NS_F32, 0, dim, dim};
    in.extra = (ns_matrix){NULL, NS_F32, 0, dim, dim};
    ns_loss_options lo = NS_LOSS_OPTIONS_INIT;
    lo.temperature = TRAIN_TAU;
    float loss = NAN;
    ns_infonce_grads gr = {gq, gp, NULL, NULL};
    if (ns_infonce_forward(r->cpu, &in, &lo, &loss, NULL, saved) != NS_OK ||
        ns_infonce_backward(r->cpu, &in, &lo, saved, 1.f, &gr) != NS_OK) {
        cli_error("training: %s", ns_last_error(r->cpu));
        return NAN;
    }
    demo_backward(md, r->x, anc, B, zq, nq, gq);
    demo_backward(md, r->x, pos, B, zp, np_, gp);
    demo_adam(md, TRAIN_LR);
    return loss;
}

/* Stage train: epochs over the training images in seeded random order; the positive of each
 * anchor is a random other training image of its label. Writes the trained embedding. */
static int demo_train(demo_run *r) {
    const demo_args *a = r->a;
    int64_t n = r->n, d = r->d, dim = a->dim, B = TRAIN_BATCH, nt = 0;
    uint64_t rs = a->seed * 0xD1B54A32D192ED03ull + 11;
    demo_model md = {dim, d, 0, malloc((size_t)(dim * d) * 4), calloc((size_t)(dim * d), 4),
                     calloc((size_t)(dim * d), 4), calloc((size_t)(dim * d), 4)};
    int64_t *train = malloc((size_t)n * 8), anc[TRAIN_BATCH], pos[TRAIN_BATCH];
    float *buf = malloc((size_t)(B * (4 * dim + 2 + NS_INFONCE_SAVED_PER_QUERY)) * 4);
    float *nrm = malloc((size_t)n * 4);
    int rc = -1;
    if (!md.w || !md.g || !md.m || !md.v || !train || !buf || !nrm) goto out;
    for (int64_t i = 0; i < dim * d; i++) /* N(0, 1/d) by Box-Muller */
        md.w[i] = (float)(sqrt(-2.0 * log(((double)(demo_rng(&rs) >> 11) + 1) * 0x1p-53)) *
                          cos(6.283185307179586 * (double)(demo_rng(&rs) >> 11) * 0x1p-53) /
                          sqrt((double)d));
    for (int64_t i = 0; i < n; i++)
        if (!r->held_out[i]) train[nt++] = i;
    double loss_sum = 0;
    int64_t loss_n = 0;
    for (int64_t ep = 0; ep < a->epochs; ep++) {
        for (int64_t i = nt - 1; i > 0; i--) { /* shuffle */
            int64_t j = (int64_t)(demo_rng(&rs) % (uint64_t)(i + 1)), t = train[i];
            train[i] = train[j], train[j] = t;
        }
        for (int64_t b0 = 0; b0 + B <= nt; b0 += B) {
            for (int64_t i = 0; i < B; i++) {
                anc[i] = train[b0 + i];
                int tries = 0; /* a label with one training image: its own image */
                do pos[i] = train[demo_rng(&rs) % (uint64_t)nt];
                while ((pos[i] == anc[i] || r->label[pos[i]] != r->label[anc[i]]) &&
                       ++tries < 100000);
                if (tries == 100000) pos[i] = anc[i];
            }
            float loss = demo_train_step(r, &md, anc, pos, buf);
            if (isnan(loss)) goto out;
            if (ep == a->epochs - 1) loss_sum += loss, loss_n++;
        }
    }
    r->final_loss = loss_n ? loss_sum / (double)loss_n : NAN;
    demo_forward(&md, r->x, NULL, n, r->emb[1], nrm);
    rc = 0;
out:
    if (rc) cli_error("training failed (out of memory or a loss error)");
    free(md.w), free(md.g), free(md.m), free(md.v), free(train), free(buf), free(nrm);
    return rc;
}

/* Stage eval: every held-out image retrieves its 100 nearest among all other images (itself
 * excluded): P@10 and P@100 (share of same-label ones), R@1 (the nearest has its label). */
static int demo_eval(demo_run *r, int e) {
    int64_t n = r->n, d = r->dims[e], nq = n - r->ntrain, k = n - 1 < 100 ? n - 1 : 100;
    if (nq == 0) return 0;
    float *q = malloc((size_t)(nq * d) * 4), *sc = malloc((size_t)(nq * k) * 4);
    int64_t *qrow = malloc((size_t)nq * 8), *off = malloc((size_t)(nq + 1) * 8);
    int64_t *idx = malloc((size_t)(nq * k) * 8);
    int rc = -1;
    if (!q || !sc || !qrow || !off || !idx) goto out;
    for (int64_t i = 0, j = 0; i < n; i++)
        if (r->held_out[i]) {
            memcpy(q + j * d, r->emb[e] + i * d, (size_t)d * 4);
            qrow[j] = i, off[j] = j, j++;
        }
    off[nq] = nq;
    ns_id_lists self = {off, qrow, nq};
    ns_mine_options mo = NS_MINE_OPTIONS_INIT;
    mo.exclude = &self;
    ns_matrix Q = {q, NS_F32, nq, d, d}, C = {r->emb[e], NS_F32, n, d, d};
    if (ns_mine_topk(r->cpu, Q, C, k, &mo, idx, sc) != NS_OK) {
        cli_error("evaluation: %s", ns_last_error(r->cpu));
        goto out;
    }
    double p10 = 0, p100 = 0, r1 = 0;
    for (int64_t i = 0; i < nq; i++) {
        int lab = r->label[qrow[i]];
        for (int64_t j = 0; j < k; j++) {
            p100 += r->label[idx[i * k + j]] == lab;
            if (j < 10) p10 += r->label[idx[i * k + j]] == lab;
        }
        r1 += r->label[idx[i * k]] == lab;
    }
    r->col[e].p10 = p10 / (double)(nq * (k < 10 ? k : 10));
    r->col[e].p100 = p100 / (double)(nq * k);
    r->col[e].r1 = r1 / (double)nq;
    rc = 0;
out:
    free(q), free(sc), free(qrow), free(off), free(idx);
    return rc;
}

/* Host and device arrays of one analysis. */
typedef struct {
    float *pos_score, *neg_sc;
    int64_t *pos, *eoff, *eids, *poff, *cand, *neg, *cnt;
    void *d_emb, *d_eoff, *d_eids, *d_cand, *d_csc, *d_ps, *d_poff, *d_pids, *d_keep, *d_neg,
        *d_nsc, *d_cnt;
} demo_arrays;

/* The positive of each image under embedding e: a same-label image (nearest, or a seeded
 * random one); the exclusions (itself and its positive, sorted) and the positive lists. */
static int demo_positives(demo_run *r, int e, demo_arrays *A) {
    int64_t n = r->n, d = r->dims[e];
    const float *emb = r->emb[e];
    uint64_t rs = r->a->seed * 0x9E3779B97F4A7C15ull + 1;
    for (int64_t i = 0; i < n; i++) {
        int64_t best = -1, seen = 0;
        float bs = -INFINITY;
        for (int64_t j = 0; j < n; j++) {
            if (j == i || r->label[j] != r->label[i]) continue;
            float s = 0;
            for (int64_t c = 0; c < d; c++) s += emb[i * d + c] * emb[j * d + c];
            if (r->a->random_pos) { /* reservoir sampling: uniform among the same-label images */
                if ((int64_t)(demo_rng(&rs) % (uint64_t)(++seen)) == 0) best = j, bs = s;
            } else if (s > bs) {
                best = j, bs = s;
            }
        }
        if (best < 0) {
            cli_error("%s: image %lld is the only one with label %d; it has no positive",
                      r->a->data, (long long)i, r->label[i]);
            return -1;
        }
        A->pos[i] = best;
        A->pos_score[i] = bs;
        A->eoff[i] = 2 * i;
        A->eids[2 * i] = i < best ? i : best;
        A->eids[2 * i + 1] = i < best ? best : i;
        A->poff[i] = i;
    }
    A->eoff[n] = 2 * n;
    A->poff[n] = n;
    return 0;
}

/* The device copies (plain host memory on a CPU context) and the top-k of every image. */
static int demo_mine(demo_run *r, int e, demo_arrays *A) {
    ns_context *ctx = r->ctx;
    int64_t n = r->n, d = r->dims[e], k = r->a->k, m = r->a->m;
    A->d_emb = cli_dev_put(ctx, r->emb[e], (size_t)(n * d) * 4);
    A->d_eoff = cli_dev_put(ctx, A->eoff, (size_t)(n + 1) * 8);
    A->d_eids = cli_dev_put(ctx, A->eids, (size_t)(2 * n) * 8);
    A->d_cand = cli_dev_alloc(ctx, (size_t)(n * k) * 8);
    A->d_csc = cli_dev_alloc(ctx, (size_t)(n * k) * 4);
    A->d_ps = cli_dev_put(ctx, A->pos_score, (size_t)n * 4);
    A->d_poff = cli_dev_put(ctx, A->poff, (size_t)(n + 1) * 8);
    A->d_pids = cli_dev_put(ctx, A->pos, (size_t)n * 8);
    A->d_keep = cli_dev_alloc(ctx, (size_t)(n * k));
    A->d_neg = cli_dev_alloc(ctx, (size_t)(n * m) * 8);
    A->d_nsc = cli_dev_alloc(ctx, (size_t)(n * m) * 4);
    A->d_cnt = cli_dev_alloc(ctx, (size_t)n * 8);
    if (!A->d_emb || !A->d_eoff || !A->d_eids || !A->d_cand || !A->d_csc || !A->d_ps ||
        !A->d_poff || !A->d_pids || !A->d_keep || !A->d_neg || !A->d_nsc || !A->d_cnt)
        return -1;
    ns_id_lists excl = {A->d_eoff, A->d_eids, n};
    ns_mine_options mo = NS_MINE_OPTIONS_INIT;
    mo.exclude = &excl;
    double t0 = cli_now();
    ns_matrix E = {A->d_emb, NS_F32, n, d, d};
    ns_status st = ns_mine_topk(ctx, E, E, k, &mo, A->d_cand, A->d_csc);
    if (st == NS_OK && cli_dev_get(ctx, A->cand, A->d_cand, (size_t)(n * k) * 8)) st = NS_ERR_CUDA;
    r->col[e].mine_ms = 1e3 * (cli_now() - t0);
    if (st != NS_OK) {
        cli_error("ns_mine_topk failed: %s", ns_last_error(ctx));
        return -1;
    }
    int64_t same = 0, tot = 0;
    double pm = 0;
    for (int64_t i = 0; i < n; i++) {
        for (int64_t j = 0; j < k; j++) {
            int64_t id = A->cand[i * k + j];
            if (id >= 0) tot++, same += r->label[id] == r->label[i];
        }
        pm += A->pos_score[i];
    }
    r->col[e].own_cand = (double)same / (double)(tot ? tot : 1);
    r->col[e].pos_mean = pm / (double)n;
    return 0;
}

/* One setting on embedding e: (filter →) sample, then its cell of the table. */
static int demo_setting_run(demo_run *r, int e, demo_arrays *A, int si) {
    const demo_args *a = r->a;
    const demo_setting *S = &demo_settings[si];
    ns_context *ctx = r->ctx;
    int64_t n = r->n, k = a->k, m = a->m;
    ns_id_lists plist = {A->d_poff, A->d_pids, n};
    ns_candidates cd = {0};
    cd.queries = n;
    cd.per_query = k;
    cd.id = A->d_cand;
    cd.score = A->d_csc;
    cd.positive_score = A->d_ps;
    cd.positive_id = &plist;
    ns_filter_options fo = NS_FILTER_OPTIONS_INIT;
    fo.rules = NS_FILTER_SAME_ID | NS_FILTER_REL_MARGIN | NS_FILTER_RANK;
    fo.rel_margin = a->rel;
    fo.rank_min = a->rank_min;
    fo.rank_max = k;
    ns_sampler_options so = NS_SAMPLER_OPTIONS_INIT;
    so.strategy = S->strategy;
    so.simans_a = a->a;
    so.simans_b = a->b;
    so.seed = a->seed;
    double t1 = cli_now();
    ns_status st = NS_OK;
    if (S->filter) st = ns_filter(ctx, &cd, &fo, A->d_keep, NULL);
    if (st == NS_OK)
        st = ns_sample(ctx, &cd, S->filter ? A->d_keep : NULL, &so, m, A->d_neg, A->d_nsc,
                       A->d_cnt);
    if (st == NS_OK && (cli_dev_get(ctx, A->neg, A->d_neg, (size_t)(n * m) * 8) ||
                        cli_dev_get(ctx, A->neg_sc, A->d_nsc, (size_t)(n * m) * 4) ||
                        cli_dev_get(ctx, A->cnt, A->d_cnt, (size_t)n * 8)))
        st = NS_ERR_CUDA;
    double t = cli_now() - t1;
    if (st != NS_OK) {
        cli_error("%s: %s", S->name, ns_last_error(ctx));
        return -1;
    }
    int64_t fn = 0, tot = 0;
    double ssum = 0;
    for (int64_t i = 0; i < n; i++)
        for (int64_t j = 0; j < A->cnt[i]; j++) {
            tot++;
            fn += r->label[A->neg[i * m + j]] == r->label[i];
            ssum += A->neg_sc[i * m + j];
        }
    demo_cell *c = &r->col[e].cell[si];
    c->fn = (double)fn / (double)(tot ? tot : 1);
    c->mean_s = tot ? ssum / (double)tot : NAN;
    c->per_img = (double)tot / (double)n;
    c->ms = 1e3 * t;
    return 0;
}

static void demo_arrays_free(ns_context *ctx, demo_arrays *A) {
    cli_dev_free(ctx, A->d_emb, NULL); /* never the embedding itself: the run owns it */
    cli_dev_free(ctx, A->d_eoff, A->eoff);
    cli_dev_free(ctx, A->d_eids, A->eids);
    cli_dev_free(ctx, A->d_cand, NULL);
    cli_dev_free(ctx, A->d_csc, NULL);
    cli_dev_free(ctx, A->d_ps, A->pos_score);
    cli_dev_free(ctx, A->d_poff, A->poff);
    cli_dev_free(ctx, A->d_pids, A->pos);
    cli_dev_free(ctx, A->d_keep, NULL);
    cli_dev_free(ctx, A->d_neg, NULL);
    cli_dev_free(ctx, A->d_nsc, NULL);
    cli_dev_free(ctx, A->d_cnt, NULL);
    void *host[] = {A->pos_score, A->neg_sc, A->pos, A->eoff, A->eids, A->poff, A->cand, A->neg,
                    A->cnt};
    for (size_t i = 0; i < sizeof host / sizeof host[0]; i++) free(host[i]);
}

/* Stage analyse: positives, mining, and the five settings on embedding e. */
static int demo_analyse(demo_run *r, int e) {
    int64_t n = r->n, k = r->a->k, m = r->a->m;
    demo_arrays A;
    memset(&A, 0, sizeof A);
    A.pos_score = malloc((size_t)n * 4);
    A.neg_sc = malloc((size_t)(n * m) * 4);
    A.pos = malloc((size_t)n * 8);
    A.eoff = malloc((size_t)(n + 1) * 8);
    A.eids = malloc((size_t)(2 * n) * 8);
    A.poff = malloc((size_t)(n + 1) * 8);
    A.cand = malloc((size_t)(n * k) * 8);
    A.neg = malloc((size_t)(n * m) * 8);
    A.cnt = malloc((size_t)n * 8);
    int rc = -1;
    if (!A.pos_score || !A.neg_sc || !A.pos || !A.eoff || !A.eids || !A.poff || !A.cand ||
        !A.neg || !A.cnt) {
        cli_error("out of memory");
        goto out;
    }
    if (demo_positives(r, e, &A) || demo_mine(r, e, &A)) goto out;
    for (int si = 0; si < NSET; si++)
        if (demo_setting_run(r, e, &A, si)) goto out;
    rc = 0;
out:
    if (A.d_emb == r->emb[e]) A.d_emb = NULL; /* a CPU context shares the host array */
    demo_arrays_free(r->ctx, &A);
    return rc;
}

/* Stage print: the header and the two embeddings side by side. */
static void demo_print(const demo_run *r) {
    const demo_args *a = r->a;
    const demo_column *R = &r->col[0], *T = &r->col[1];
    printf("negsamp demo: %lld images x %lld pixels from %s (%.2fs to read)\n", (long long)r->n,
           (long long)r->d, a->data, r->t_load);
    printf("trained: z = normalise(W x), W %lldx%lld, InfoNCE (tau %.2g) on in-batch negatives, "
           "batch %d, %lld epochs of Adam on %lld images, seed %llu: %.2fs, final loss %.3f\n",
           (long long)a->dim, (long long)r->d, (double)TRAIN_TAU, TRAIN_BATCH,
           (long long)a->epochs, (long long)r->ntrain, (unsigned long long)a->seed, r->t_train,
           r->final_loss);
    printf("backend %s; positive: the %s same-label image; top-%lld mined per image "
           "(self and positive excluded); m = %lld\n",
           ns_context_backend(r->ctx) == NS_BACKEND_CUDA ? "cuda" : "cpu",
           a->random_pos ? "a random" : "nearest", (long long)a->k, (long long)a->m);
    printf("filter F: rel-margin %.3g (drop s > s+ - |s+|*%.3g), ranks [%lld, %lld); SimANS a=%g "
           "b=%g\n\n",
           (double)a->rel, (double)a->rel, (long long)a->rank_min, (long long)a->k, (double)a->a,
           (double)a->b);
    printf("%-44s %21s %21s\n", "", "raw pixels", "trained");
    printf("%-44s %21.3f %21.3f\n", "held-out P@10 (same label in the top 10)", R->p10, T->p10);
    printf("%-44s %21.3f %21.3f\n", "held-out P@100", R->p100, T->p100);
    printf("%-44s %21.3f %21.3f\n", "held-out R@1", R->r1, T->r1);
    printf("%-44s %20.1f%% %20.1f%%\n", "own-label share of the mined candidates",
           100 * R->own_cand, 100 * T->own_cand);
    printf("%-44s %21.3f %21.3f\n", "mean positive score s+", R->pos_mean, T->pos_mean);
    printf("%-44s %19.1fms %19.1fms\n\n", "mining time", R->mine_ms, T->mine_ms);
    printf("%-13s %-30s %10s %10s %10s %10s %9s\n", "setting", "", "false neg.", "mean s",
           "false neg.", "mean s", "negs/img");
    for (int si = 0; si < NSET; si++) {
        const demo_cell *c0 = &R->cell[si], *c1 = &T->cell[si];
        printf("%-13s %-30s %9.1f%% %10.3f %9.1f%% %10.3f %9.2f\n", demo_settings[si].name,
               demo_settings[si].what, 100 * c0->fn, c0->mean_s, 100 * c1->fn, c1->mean_s,
               c1->per_img);
    }
    double lo = T->cell[0].ms, hi = T->cell[0].ms; /* the range over the settings */
    for (int si = 1; si < NSET; si++) {
        lo = T->cell[si].ms < lo ? T->cell[si].ms : lo;
        hi = T->cell[si].ms > hi ? T->cell[si].ms : hi;
    }
    printf("\nfalse neg. = share of the picked negatives that carry the image's own label "
           "(left: raw pixels, right: trained);\nfilter + sample took %.1f-%.1f ms per setting "
           "on %lld x %lld candidates\n",
           lo, hi, (long long)r->n, (long long)a->k);
}

int cli_cmd_demo(int argc, char **argv) {
    demo_args a;
    int u = demo_parse(argc, argv, &a);
    if (u >= 0) return u;
    demo_run r;
    memset(&r, 0, sizeof r);
    r.a = &a;
    int rc = CLI_RUNTIME;
    double t0 = cli_now();
    if (demo_load(&r)) goto done;
    r.t_load = cli_now() - t0;
    if (cli_context_create(a.backend, (int)a.threads, &r.ctx) ||
        cli_context_create(NS_BACKEND_CPU, (int)a.threads, &r.cpu))
        goto done;
    t0 = cli_now();
    if (demo_train(&r)) goto done;
    r.t_train = cli_now() - t0;
    for (int e = 0; e < NEMB; e++)
        if (demo_eval(&r, e) || demo_analyse(&r, e)) goto done;
    demo_print(&r);
    rc = CLI_OK;
done:
    if (r.ctx) ns_context_destroy(r.ctx);
    if (r.cpu) ns_context_destroy(r.cpu);
    free(r.raw), free(r.x), free(r.emb[0]), free(r.emb[1]), free(r.label), free(r.held_out);
    return rc;
}
