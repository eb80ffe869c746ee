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

int cli_cmd_demo(int argc, char **argv) {
    static const struct option longopts[] = {
        {"help", no_argument, 0, 'h'}, {"data", required_argument, 0, D_DATA},
        {"k", required_argument, 0, 'k'}, {"negatives", required_argument, 0, 'm'},
        {"positive", required_argument, 0, D_POSITIVE},
        {"rel-margin", required_argument, 0, D_REL},
        {"rank-min", required_argument, 0, D_RANK_MIN},
        {"simans-a", required_argument, 0, D_A}, {"simans-b", required_argument, 0, D_B},
        {"seed", required_argument, 0, D_SEED}, {"backend", required_argument, 0, D_BACKEND},
        {"threads", required_argument, 0, D_THREADS}, {0, 0, 0, 0}};
    const char *data = NS_DEFAULT_DATA;
    int64_t k = 50, m = 10, rank_min = 10, threads = 0;
    float rel = 0.05f, a = 20.f, b = 0.f;
    uint64_t seed = 1;
    int random_pos = 0;
    ns_backend backend = NS_BACKEND_AUTO;
    opterr = 0;
    optind = 1;
    int c;
    while ((c = getopt_long(argc, argv, ":hk:m:", longopts, NULL)) != -1) {
        switch (c) {
        case 'h': fputs(DEMO_HELP, stdout); return CLI_OK;
        case D_DATA: data = optarg; break;
        case 'k': if (cli_parse_i64("-k", optarg, 1, NS_MAX_K, &k)) return CLI_USAGE; break;
        case 'm': if (cli_parse_i64("--negatives", optarg, 1, NS_MAX_K, &m)) return CLI_USAGE; break;
        case D_POSITIVE:
            if (!strcmp(optarg, "nearest")) random_pos = 0;
            else if (!strcmp(optarg, "random")) random_pos = 1;
            else return cli_usage_error("--positive '%s': expected nearest or random", optarg);
            break;
        case D_REL: if (cli_parse_f32("--rel-margin", optarg, &rel)) return CLI_USAGE; break;
        case D_RANK_MIN:
            if (cli_parse_i64("--rank-min", optarg, 0, NS_MAX_K, &rank_min)) return CLI_USAGE;
            break;
        case D_A:
            if (cli_parse_f32("--simans-a", optarg, &a)) return CLI_USAGE;
            if (!(a > 0)) return cli_usage_error("--simans-a (%s) must be > 0", optarg);
            break;
        case D_B: if (cli_parse_f32("--simans-b", optarg, &b)) return CLI_USAGE; break;
        case D_SEED: if (cli_parse_u64("--seed", optarg, &seed)) return CLI_USAGE; break;
        case D_BACKEND:
            if (!strcmp(optarg, "auto")) backend = NS_BACKEND_AUTO;
            else if (!strcmp(optarg, "cpu")) backend = NS_BACKEND_CPU;
            else if (!strcmp(optarg, "cuda")) backend = NS_BACKEND_CUDA;
            else return cli_usage_error("--backend '%s': expected auto, cpu or cuda", optarg);
            break;
        case D_THREADS:
            if (cli_parse_i64("--threads", optarg, 0, 4096, &threads)) return CLI_USAGE;
            break;
        case ':': return cli_usage_error("option '%s' needs a value", argv[optind - 1]);
        default: return cli_usage_error("unknown option '%s'", argv[optind - 1]);
        }
    }
    if (optind < argc) return cli_usage_error("unexpected argument '%s'", argv[optind]);
    if (k < m) return cli_usage_error("-k (%lld) must be at least -m (%lld)", (long long)k, (long long)m);
    if (rank_min >= k)
        return cli_usage_error("--rank-min (%lld) must be below k (%lld)", (long long)rank_min,
                               (long long)k);

    int rc = CLI_RUNTIME;
    double *raw = NULL;
    float *emb = NULL, *pos_score = NULL, *cand_sc = NULL, *neg_sc = NULL;
    int *label = NULL;
    int64_t *pos = NULL, *eoff = NULL, *eids = NULL, *cand = NULL, *neg = NULL, *cnt = NULL,
            *poff = NULL;
    uint8_t *keep = NULL;
    ns_context *ctx = NULL;
    void *d_emb = NULL, *d_eoff = NULL, *d_eids = NULL, *d_cand = NULL, *d_csc = NULL,
         *d_ps = NULL, *d_poff = NULL, *d_keep = NULL, *d_neg = NULL, *d_nsc = NULL, *d_cnt = NULL;
    int64_t n, cols;

    double t_load = cli_now();
    if (cli_csv_read(data, &raw, &n, &cols)) {
        fprintf(stderr, "%s: pass --data PATH to the digits CSV (digits.csv.gz)\n", cli_command);
        return CLI_RUNTIME;
    }
    if (cols < 2) {
        cli_error("%s: %lld columns; expected the pixels and then the label", data, (long long)cols);
        goto done;
    }
    int64_t d = cols - 1;
    if (n < 2 || k > n - 2) {
        cli_error("%s: %lld rows is too few for k = %lld (k ≤ rows − 2)", data, (long long)n,
                  (long long)k);
        goto done;
    }
    emb = malloc((size_t)(n * d) * 4);
    label = malloc((size_t)n * sizeof(int));
    pos = malloc((size_t)n * 8);
    pos_score = malloc((size_t)n * 4);
    eoff = malloc((size_t)(n + 1) * 8);
    eids = malloc((size_t)(2 * n) * 8);
    poff = malloc((size_t)(n + 1) * 8);
    cand = malloc((size_t)(n * k) * 8);
    cand_sc = malloc((size_t)(n * k) * 4);
    neg = malloc((size_t)(n * m) * 8);
    neg_sc = malloc((size_t)(n * m) * 4);
    cnt = malloc((size_t)n * 8);
    keep = malloc((size_t)(n * k));
    if (!emb || !label || !pos || !pos_score || !eoff || !eids || !poff || !cand || !cand_sc ||
        !neg || !neg_sc || !cnt || !keep) {
        cli_error("out of memory");
        goto done;
    }
    /* Embed: centre on the mean image, then L2-normalise (so scores are cosines). */
    for (int64_t c2 = 0; c2 < d; c2++) {
        double mean = 0;
        for (int64_t i = 0; i < n; i++) mean += raw[i * cols + c2];
        mean /= (double)n;
        for (int64_t i = 0; i < n; i++) emb[i * d + c2] = (float)(raw[i * cols + c2] - mean);
    }
    for (int64_t i = 0; i < n; i++) {
        double nrm = 0;
        for (int64_t c2 = 0; c2 < d; c2++) nrm += (double)emb[i * d + c2] * emb[i * d + c2];
        nrm = nrm > 0 ? 1.0 / sqrt(nrm) : 0;
        for (int64_t c2 = 0; c2 < d; c2++) emb[i * d + c2] = (float)(emb[i * d + c2] * nrm);
        double lv = raw[i * cols + d];
        label[i] = (int)lv;
        if (lv != (double)label[i]) {
            cli_error("%s: row %lld: label %g is not an integer", data, (long long)i + 1, lv);
            goto done;
        }
    }
    /* The positive of each image: a same-label image (nearest, or a seeded random one). */
    uint64_t rs = seed * 0x9E3779B97F4A7C15ull + 1;
    for (int64_t i = 0; i < n; i++) {
        int64_t best = -1, seen = 0;
        float bs = -INFINITY;
        for (int64_t j = 0; j < n; j++) {
            if (j == i || label[j] != label[i]) continue;
            float s = 0;
            for (int64_t c2 = 0; c2 < d; c2++) s += emb[i * d + c2] * emb[j * d + c2];
            if (random_pos) { /* reservoir sampling: uniform among the same-label images */
                rs ^= rs << 13, rs ^= rs >> 7, rs ^= rs << 17;
                if ((int64_t)(rs % (uint64_t)(++seen)) == 0) best = j, bs = s;
            } else if (s > bs) {
                best = j, bs = s;
            }
        }
        if (best < 0) {
            cli_error("%s: image %lld is the only one with label %d; it has no positive", data,
                      (long long)i, label[i]);
            goto done;
        }
        pos[i] = best;
        pos_score[i] = bs;
        /* exclusions: itself and its positive (sorted) */
        eoff[i] = 2 * i;
        eids[2 * i] = i < best ? i : best;
        eids[2 * i + 1] = i < best ? best : i;
        poff[i] = i;
    }
    eoff[n] = 2 * n;
    poff[n] = n;
    t_load = cli_now() - t_load;

    ns_context_options co = NS_CONTEXT_OPTIONS_INIT;
    co.backend = backend;
    co.threads = (int)threads;
    if (ns_context_create(&ctx, &co) != NS_OK) {
        cli_error("cannot create a context: %s", ns_last_error(NULL));
        goto done;
    }
    d_emb = cli_dev_put(ctx, emb, (size_t)(n * d) * 4);
    d_eoff = cli_dev_put(ctx, eoff, (size_t)(n + 1) * 8);
    d_eids = cli_dev_put(ctx, eids, (size_t)(2 * n) * 8);
    d_cand = cli_dev_alloc(ctx, (size_t)(n * k) * 8);
    d_csc = cli_dev_alloc(ctx, (size_t)(n * k) * 4);
    d_ps = cli_dev_put(ctx, pos_score, (size_t)n * 4);
    d_poff = cli_dev_put(ctx, poff, (size_t)(n + 1) * 8);
    d_keep = cli_dev_alloc(ctx, (size_t)(n * k));
    d_neg = cli_dev_alloc(ctx, (size_t)(n * m) * 8);
    d_nsc = cli_dev_alloc(ctx, (size_t)(n * m) * 4);
    d_cnt = cli_dev_alloc(ctx, (size_t)n * 8);
    if (!d_emb || !d_eoff || !d_eids || !d_cand || !d_csc || !d_ps || !d_poff || !d_keep ||
        !d_neg || !d_nsc || !d_cnt)
        goto done;
    void *d_pids = cli_dev_put(ctx, pos, (size_t)n * 8);
    if (!d_pids) goto done;

    ns_matrix E = {d_emb, NS_F32, n, d, d};
    ns_id_lists excl = {d_eoff, d_eids, n};
    ns_mine_options mo = NS_MINE_OPTIONS_INIT;
    mo.exclude = &excl;
    double t0 = cli_now();
    ns_status st = ns_mine_topk(ctx, E, E, k, &mo, d_cand, d_csc);
    if (st == NS_OK && cli_dev_get(ctx, cand, d_cand, (size_t)(n * k) * 8)) st = NS_ERR_CUDA;
    if (st == NS_OK && cli_dev_get(ctx, cand_sc, d_csc, (size_t)(n * k) * 4)) st = NS_ERR_CUDA;
    double t_mine = cli_now() - t0;
    if (st != NS_OK) {
        cli_error("ns_mine_topk failed: %s", ns_last_error(ctx));
        cli_dev_free(ctx, d_pids, pos);
        goto done;
    }
    /* Reference rates: own-label share among all other images and among the k candidates. */
    int64_t same_all = 0, same_cand = 0, cand_n = 0;
    double pos_mean = 0;
    for (int64_t i = 0; i < n; i++) {
        for (int64_t j = 0; j < n; j++) same_all += j != i && j != pos[i] && label[j] == label[i];
        for (int64_t j = 0; j < k; j++) {
            int64_t id = cand[i * k + j];
            if (id < 0) continue;
            cand_n++;
            same_cand += label[id] == label[i];
        }
        pos_mean += pos_score[i];
    }
    printf("negsamp demo: %lld images x %lld pixels from %s (%.2fs to read and embed)\n",
           (long long)n, (long long)d, data, t_load);
    printf("embedding: pixels minus the mean image, L2-normalised; scores are cosines\n");
    printf("positive: the %s same-label image (mean s+ %.3f); backend %s\n",
           random_pos ? "a random" : "nearest", pos_mean / (double)n,
           ns_context_backend(ctx) == NS_BACKEND_CUDA ? "cuda" : "cpu");
    printf("mined top-%lld of %lld images per image (self and positive excluded) in %.1f ms\n",
           (long long)k, (long long)n, 1e3 * t_mine);
    printf("own-label share: %.1f%% of all other images, %.1f%% of the %lld mined candidates\n",
           100.0 * (double)same_all / (double)(n * (n - 2)),
           100.0 * (double)same_cand / (double)(cand_n ? cand_n : 1), (long long)k);
    printf("filter F: rel-margin %.3g (drop s > s+ - |s+|*%.3g), ranks [%lld, %lld); SimANS a=%g "
           "b=%g; m=%lld, seed %llu\n\n",
           (double)rel, (double)rel, (long long)rank_min, (long long)k, (double)a, (double)b,
           (long long)m, (unsigned long long)seed);

    static const demo_setting settings[5] = {
        {"(a) top", "top-k hardest, no filter", 0, NS_SAMPLE_TOP},
        {"(b) top+F", "top-k hardest after the filter", 1, NS_SAMPLE_TOP},
        {"(c) simans", "SimANS, no filter", 0, NS_SAMPLE_SIMANS},
        {"(d) simans+F", "SimANS after the filter", 1, NS_SAMPLE_SIMANS},
        {"(e) uniform", "uniform among the k, no filter", 0, NS_SAMPLE_UNIFORM}};
    printf("%-13s %-32s %13s %10s %11s %9s\n", "setting", "", "false neg.", "mean s", "negs/img",
           "time");
    for (int si = 0; si < 5; si++) {
        const demo_setting *S = &settings[si];
        ns_id_lists plist = {d_poff, d_pids, n};
        ns_candidates cd = {0};
        cd.queries = n;
        cd.per_query = k;
        cd.id = d_cand;
        cd.score = d_csc;
        cd.positive_score = d_ps;
        cd.positive_id = &plist;
        ns_filter_options fo = NS_FILTER_OPTIONS_INIT;
        fo.rules = NS_FILTER_SAME_ID | NS_FILTER_REL_MARGIN | NS_FILTER_RANK;
        fo.rel_margin = rel;
        fo.rank_min = rank_min;
        fo.rank_max = k;
        ns_sampler_options so = NS_SAMPLER_OPTIONS_INIT;
        so.strategy = S->strategy;
        so.simans_a = a;
        so.simans_b = b;
        so.seed = seed;
        double t1 = cli_now();
        st = NS_OK;
        if (S->filter) st = ns_filter(ctx, &cd, &fo, d_keep, NULL);
        if (st == NS_OK)
            st = ns_sample(ctx, &cd, S->filter ? d_keep : NULL, &so, m, d_neg, d_nsc, d_cnt);
        if (st == NS_OK && (cli_dev_get(ctx, neg, d_neg, (size_t)(n * m) * 8) ||
                            cli_dev_get(ctx, neg_sc, d_nsc, (size_t)(n * m) * 4) ||
                            cli_dev_get(ctx, cnt, d_cnt, (size_t)n * 8)))
            st = NS_ERR_CUDA;
        double t = cli_now() - t1;
        if (st != NS_OK) {
            cli_error("%s: %s", S->name, ns_last_error(ctx));
            cli_dev_free(ctx, d_pids, pos);
            goto done;
        }
        int64_t fn = 0, tot = 0;
        double ssum = 0;
        for (int64_t i = 0; i < n; i++)
            for (int64_t j = 0; j < cnt[i]; j++) {
                int64_t id = neg[i * m + j];
                tot++;
                fn += label[id] == label[i];
                ssum += neg_sc[i * m + j];
            }
        printf("%-13s %-32s %12.1f%% %10.3f %11.2f %7.1fms\n", S->name, S->what,
               100.0 * (double)fn / (double)(tot ? tot : 1), tot ? ssum / (double)tot : NAN,
               (double)tot / (double)n, 1e3 * t);
    }
    printf("\nfalse neg. = share of the picked negatives that carry the image's own label; time = "
           "filter + sample on %lld x %lld candidates\n", (long long)n, (long long)k);
    cli_dev_free(ctx, d_pids, pos);
    rc = CLI_OK;
done:
    if (ctx) {
        cli_dev_free(ctx, d_emb, emb);
        cli_dev_free(ctx, d_eoff, eoff);
        cli_dev_free(ctx, d_eids, eids);
        cli_dev_free(ctx, d_cand, NULL);
        cli_dev_free(ctx, d_csc, NULL);
        cli_dev_free(ctx, d_ps, pos_score);
        cli_dev_free(ctx, d_poff, poff);
        cli_dev_free(ctx, d_keep, NULL);
        cli_dev_free(ctx, d_neg, NULL);
        cli_dev_free(ctx, d_nsc, NULL);
        cli_dev_free(ctx, d_cnt, NULL);
        ns_context_destroy(ctx);
    }
    free(raw);
    free(emb);
    free(label);
    free(pos);
    free(pos_score);
    free(eoff);
    free(eids);
    free(poff);
    free(cand);
    free(cand_sc);
    free(neg);
    free(neg_sc);
    free(cnt);
    free(keep);
    return rc;
}
