/* negsamp demo: what each sampling setting does to false negatives on real labelled data.
 *
 * The digits set (1,797 8×8 images, labels 0..9). Embedding: each pixel vector minus the mean
 * image, L2-normalised (cosine scores). Every image is a query against all the others; the k
 * nearest (excluding itself and its positive) are the candidates. The positive of image i is a
 * same-label image (by default its nearest one, as a labelled training pair would give), and a
 * chosen negative that carries i's own label is a false negative. */
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
    "Embeds the digits images (pixels minus the mean image, L2-normalised), mines the k nearest\n"
    "images of every image (itself and its positive excluded), then picks m negatives per image\n"
    "under five settings and prints, for each, the share of picked negatives that carry the\n"
    "image's own label (false negatives), their mean score and the time taken:\n"
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
    "  -k, --k K          candidates per image (default 50)\n"
    "  -m, --negatives M  negatives per image (default 10)\n"
    "  --positive P       nearest: the nearest same-label image (default);\n"
    "                     random: a random same-label image (seeded)\n"
    "  --rel-margin X     relative margin of the filter (default 0.05)\n"
    "  --rank-min R       the filter keeps ranks [R, k) (default 10)\n"
    "  --simans-a A       (default 20: cosine scores are ~1/20 the scale of the SimXNS\n"
    "                     dot-product scores its a = 0.5 was tuned on)\n"
    "  --simans-b B       (default 0)\n"
    "  --seed N           (default 1)\n"
    "  --backend B        auto | cpu | cuda (default auto)\n"
    "  --threads N        CPU threads (default all)\n"
    "\n"
    "Example:\n"
    "  negsamp demo\n"
    "  negsamp demo --positive random --simans-a 5\n";

enum { D_DATA = 400, D_POSITIVE, D_REL, D_RANK_MIN, D_A, D_B, D_SEED, D_BACKEND, D_THREADS };

typedef struct {
    const char *name, *what;
    int filter;
    ns_sampler strategy;
} demo_setting;

typedef struct {
    const char *data;
    int64_t k, m, rank_min, threads;
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
        {"threads", required_argument, 0, D_THREADS}, {0, 0, 0, 0}};
    demo_args def = {NS_DEFAULT_DATA, 50, 10, 10, 0, 0.05f, 20.f, 0.f, 1, 0, NS_BACKEND_AUTO};
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

typedef struct {
    const demo_args *a;
    int64_t n, d, cols;
    double *raw;
    float *emb, *pos_score, *cand_sc, *neg_sc;
    int *label;
    int64_t *pos, *eoff, *eids, *cand, *neg, *cnt, *poff;
    ns_context *ctx;
    void *d_emb, *d_eoff, *d_eids, *d_cand, *d_csc, *d_ps, *d_poff, *d_pids, *d_keep, *d_neg,
        *d_nsc, *d_cnt;
    double t_load, t_mine;
} demo_run;

/* The CSV and the host arrays sized from it. */
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
    int64_t n = r->n, k = a->k, m = a->m;
    r->d = r->cols - 1;
    if (n < 2 || k > n - 2) {
        cli_error("%s: %lld rows is too few for k = %lld (k ≤ rows − 2)", a->data, (long long)n,
                  (long long)k);
        return -1;
    }
    r->emb = malloc((size_t)(n * r->d) * 4);
    r->label = malloc((size_t)n * sizeof(int));
    r->pos = malloc((size_t)n * 8);
    r->pos_score = malloc((size_t)n * 4);
    r->eoff = malloc((size_t)(n + 1) * 8);
    r->eids = malloc((size_t)(2 * n) * 8);
    r->poff = malloc((size_t)(n + 1) * 8);
    r->cand = malloc((size_t)(n * k) * 8);
    r->cand_sc = malloc((size_t)(n * k) * 4);
    r->neg = malloc((size_t)(n * m) * 8);
    r->neg_sc = malloc((size_t)(n * m) * 4);
    r->cnt = malloc((size_t)n * 8);
    if (!r->emb || !r->label || !r->pos || !r->pos_score || !r->eoff || !r->eids || !r->poff ||
        !r->cand || !r->cand_sc || !r->neg || !r->neg_sc || !r->cnt) {
        cli_error("out of memory");
        return -1;
    }
    return 0;
}

/* Embed: centre on the mean image, then L2-normalise (so scores are cosines); the labels. */
static int demo_embed(demo_run *r) {
    int64_t n = r->n, d = r->d, cols = r->cols;
    for (int64_t c = 0; c < d; c++) {
        double mean = 0;
        for (int64_t i = 0; i < n; i++) mean += r->raw[i * cols + c];
        mean /= (double)n;
        for (int64_t i = 0; i < n; i++) r->emb[i * d + c] = (float)(r->raw[i * cols + c] - mean);
    }
    for (int64_t i = 0; i < n; i++) {
        float *e = r->emb + i * d;
        double nrm = 0;
        for (int64_t c = 0; c < d; c++) nrm += (double)e[c] * e[c];
        nrm = nrm > 0 ? 1.0 / sqrt(nrm) : 0;
        for (int64_t c = 0; c < d; c++) e[c] = (float)(e[c] * nrm);
        double lv = r->raw[i * cols + d];
        r->label[i] = (int)lv;
        if (lv != (double)r->label[i]) {
            cli_error("%s: row %lld: label %g is not an integer", r->a->data, (long long)i + 1, lv);
            return -1;
        }
    }
    return 0;
}

/* The positive of each image: a same-label image (nearest, or a seeded random one); the
 * exclusions (itself and its positive, sorted) and the positive lists. */
static int demo_positives(demo_run *r) {
    int64_t n = r->n, d = r->d;
    uint64_t rs = r->a->seed * 0x9E3779B97F4A7C15ull + 1;
    for (int64_t i = 0; i < n; i++) {
        int64_t best = -1, seen = 0;
        float bs = -INFINITY;
        for (int64_t j = 0; j < n; j++) {
            if (j == i || r->label[j] != r->label[i]) continue;
            float s = 0;
            for (int64_t c = 0; c < d; c++) s += r->emb[i * d + c] * r->emb[j * d + c];
            if (r->a->random_pos) { /* reservoir sampling: uniform among the same-label images */
                rs ^= rs << 13, rs ^= rs >> 7, rs ^= rs << 17;
                if ((int64_t)(rs % (uint64_t)(++seen)) == 0) best = j, bs = s;
            } else if (s > bs) {
                best = j, bs = s;
            }
        }
        if (best < 0) {
            cli_error("%s: image %lld is the only one with label %d; it has no positive",
                      r->a->data, (long long)i, r->label[i]);
            return -1;
        }
        r->pos[i] = best;
        r->pos_score[i] = bs;
        r->eoff[i] = 2 * i;
        r->eids[2 * i] = i < best ? i : best;
        r->eids[2 * i + 1] = i < best ? best : i;
        r->poff[i] = i;
    }
    r->eoff[n] = 2 * n;
    r->poff[n] = n;
    return 0;
}

/* The context, the device copies, and the top-k of every image against all the others. */
static int demo_mine(demo_run *r) {
    const demo_args *a = r->a;
    int64_t n = r->n, d = r->d, k = a->k, m = a->m;
    if (cli_context_create(a->backend, (int)a->threads, &r->ctx)) return -1;
    ns_context *ctx = r->ctx;
    r->d_emb = cli_dev_put(ctx, r->emb, (size_t)(n * d) * 4);
    r->d_eoff = cli_dev_put(ctx, r->eoff, (size_t)(n + 1) * 8);
    r->d_eids = cli_dev_put(ctx, r->eids, (size_t)(2 * n) * 8);
    r->d_cand = cli_dev_alloc(ctx, (size_t)(n * k) * 8);
    r->d_csc = cli_dev_alloc(ctx, (size_t)(n * k) * 4);
    r->d_ps = cli_dev_put(ctx, r->pos_score, (size_t)n * 4);
    r->d_poff = cli_dev_put(ctx, r->poff, (size_t)(n + 1) * 8);
    r->d_pids = cli_dev_put(ctx, r->pos, (size_t)n * 8);
    r->d_keep = cli_dev_alloc(ctx, (size_t)(n * k));
    r->d_neg = cli_dev_alloc(ctx, (size_t)(n * m) * 8);
    r->d_nsc = cli_dev_alloc(ctx, (size_t)(n * m) * 4);
    r->d_cnt = cli_dev_alloc(ctx, (size_t)n * 8);
    if (!r->d_emb || !r->d_eoff || !r->d_eids || !r->d_cand || !r->d_csc || !r->d_ps ||
        !r->d_poff || !r->d_pids || !r->d_keep || !r->d_neg || !r->d_nsc || !r->d_cnt)
        return -1;
    ns_matrix E = {r->d_emb, NS_F32, n, d, d};
    ns_id_lists excl = {r->d_eoff, r->d_eids, n};
    ns_mine_options mo = NS_MINE_OPTIONS_INIT;
    mo.exclude = &excl;
    double t0 = cli_now();
    ns_status st = ns_mine_topk(ctx, E, E, k, &mo, r->d_cand, r->d_csc);
    if (st == NS_OK && cli_dev_get(ctx, r->cand, r->d_cand, (size_t)(n * k) * 8)) st = NS_ERR_CUDA;
    if (st == NS_OK && cli_dev_get(ctx, r->cand_sc, r->d_csc, (size_t)(n * k) * 4)) st = NS_ERR_CUDA;
    r->t_mine = cli_now() - t0;
    if (st != NS_OK) {
        cli_error("ns_mine_topk failed: %s", ns_last_error(ctx));
        return -1;
    }
    return 0;
}

/* What was mined: reference own-label rates among all images and among the candidates. */
static void demo_print_header(const demo_run *r) {
    const demo_args *a = r->a;
    int64_t n = r->n, k = a->k, same_all = 0, same_cand = 0, cand_n = 0;
    double pos_mean = 0;
    for (int64_t i = 0; i < n; i++) {
        for (int64_t j = 0; j < n; j++)
            same_all += j != i && j != r->pos[i] && r->label[j] == r->label[i];
        for (int64_t j = 0; j < k; j++) {
            int64_t id = r->cand[i * k + j];
            if (id < 0) continue;
            cand_n++;
            same_cand += r->label[id] == r->label[i];
        }
        pos_mean += r->pos_score[i];
    }
    printf("negsamp demo: %lld images x %lld pixels from %s (%.2fs to read and embed)\n",
           (long long)n, (long long)r->d, a->data, r->t_load);
    printf("embedding: pixels minus the mean image, L2-normalised; scores are cosines\n");
    printf("positive: the %s same-label image (mean s+ %.3f); backend %s\n",
           a->random_pos ? "a random" : "nearest", pos_mean / (double)n,
           ns_context_backend(r->ctx) == NS_BACKEND_CUDA ? "cuda" : "cpu");
    printf("mined top-%lld of %lld images per image (self and positive excluded) in %.1f ms\n",
           (long long)k, (long long)n, 1e3 * r->t_mine);
    printf("own-label share: %.1f%% of all other images, %.1f%% of the %lld mined candidates\n",
           100.0 * (double)same_all / (double)(n * (n - 2)),
           100.0 * (double)same_cand / (double)(cand_n ? cand_n : 1), (long long)k);
    printf("filter F: rel-margin %.3g (drop s > s+ - |s+|*%.3g), ranks [%lld, %lld); SimANS a=%g "
           "b=%g; m=%lld, seed %llu\n\n",
           (double)a->rel, (double)a->rel, (long long)a->rank_min, (long long)k, (double)a->a,
           (double)a->b, (long long)a->m, (unsigned long long)a->seed);
    printf("%-13s %-32s %13s %10s %11s %9s\n", "setting", "", "false neg.", "mean s", "negs/img",
           "time");
}

/* One setting: (filter →) sample, then its line of the table. */
static int demo_setting_run(demo_run *r, const demo_setting *S) {
    const demo_args *a = r->a;
    ns_context *ctx = r->ctx;
    int64_t n = r->n, k = a->k, m = a->m;
    ns_id_lists plist = {r->d_poff, r->d_pids, n};
    ns_candidates cd = {0};
    cd.queries = n;
    cd.per_query = k;
    cd.id = r->d_cand;
    cd.score = r->d_csc;
    cd.positive_score = r->d_ps;
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
    if (S->filter) st = ns_filter(ctx, &cd, &fo, r->d_keep, NULL);
    if (st == NS_OK)
        st = ns_sample(ctx, &cd, S->filter ? r->d_keep : NULL, &so, m, r->d_neg, r->d_nsc, r->d_cnt);
    if (st == NS_OK && (cli_dev_get(ctx, r->neg, r->d_neg, (size_t)(n * m) * 8) ||
                        cli_dev_get(ctx, r->neg_sc, r->d_nsc, (size_t)(n * m) * 4) ||
                        cli_dev_get(ctx, r->cnt, r->d_cnt, (size_t)n * 8)))
        st = NS_ERR_CUDA;
    double t = cli_now() - t1;
    if (st != NS_OK) {
        cli_error("%s: %s", S->name, ns_last_error(ctx));
        return -1;
    }
    int64_t fn = 0, tot = 0;
    double ssum = 0;
    for (int64_t i = 0; i < n; i++)
        for (int64_t j = 0; j < r->cnt[i]; j++) {
            tot++;
            fn += r->label[r->neg[i * m + j]] == r->label[i];
            ssum += r->neg_sc[i * m + j];
        }
    printf("%-13s %-32s %12.1f%% %10.3f %11.2f %7.1fms\n", S->name, S->what,
           100.0 * (double)fn / (double)(tot ? tot : 1), tot ? ssum / (double)tot : NAN,
           (double)tot / (double)n, 1e3 * t);
    return 0;
}

static void demo_free(demo_run *r) {
    if (r->ctx) {
        cli_dev_free(r->ctx, r->d_emb, r->emb);
        cli_dev_free(r->ctx, r->d_eoff, r->eoff);
        cli_dev_free(r->ctx, r->d_eids, r->eids);
        cli_dev_free(r->ctx, r->d_cand, NULL);
        cli_dev_free(r->ctx, r->d_csc, NULL);
        cli_dev_free(r->ctx, r->d_ps, r->pos_score);
        cli_dev_free(r->ctx, r->d_poff, r->poff);
        cli_dev_free(r->ctx, r->d_pids, r->pos);
        cli_dev_free(r->ctx, r->d_keep, NULL);
        cli_dev_free(r->ctx, r->d_neg, NULL);
        cli_dev_free(r->ctx, r->d_nsc, NULL);
        cli_dev_free(r->ctx, r->d_cnt, NULL);
        ns_context_destroy(r->ctx);
    }
    void *host[] = {r->raw, r->emb, r->label, r->pos, r->pos_score, r->eoff, r->eids, r->poff,
                    r->cand, r->cand_sc, r->neg, r->neg_sc, r->cnt};
    for (size_t i = 0; i < sizeof host / sizeof host[0]; i++) free(host[i]);
}

int cli_cmd_demo(int argc, char **argv) {
    static const demo_setting settings[5] = {
        {"(a) top", "top-k hardest, no filter", 0, NS_SAMPLE_TOP},
        {"(b) top+F", "top-k hardest after the filter", 1, NS_SAMPLE_TOP},
        {"(c) simans", "SimANS, no filter", 0, NS_SAMPLE_SIMANS},
        {"(d) simans+F", "SimANS after the filter", 1, NS_SAMPLE_SIMANS},
        {"(e) uniform", "uniform among the k, no filter", 0, NS_SAMPLE_UNIFORM}};
    demo_args a;
    int u = demo_parse(argc, argv, &a);
    if (u >= 0) return u;
    demo_run r;
    memset(&r, 0, sizeof r);
    r.a = &a;
    int rc = CLI_RUNTIME;
    double t0 = cli_now();
    if (demo_load(&r) || demo_embed(&r) || demo_positives(&r)) goto done;
    r.t_load = cli_now() - t0;
    if (demo_mine(&r)) goto done;
    demo_print_header(&r);
    for (int si = 0; si < 5; si++)
        if (demo_setting_run(&r, &settings[si])) goto done;
    printf("\nfalse neg. = share of the picked negatives that carry the image's own label; time = "
           "filter + sample on %lld x %lld candidates\n", (long long)r.n, (long long)a.k);
    rc = CLI_OK;
done:
    demo_free(&r);
    return rc;
}
