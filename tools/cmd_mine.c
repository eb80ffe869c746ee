/* negsamp mine: top-k over a corpus → false-negative filter → sample m → JSONL / .npy.
 * Queries are processed in blocks (--batch) so memory stays O(batch · k); the sampler's RNG is
 * countered by the global query row, so the block size never changes the draws. */
#define _GNU_SOURCE
#include "stage.h"

#include <getopt.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

static const char MINE_HELP[] =
    "usage: negsamp mine --queries Q.npy --corpus C.npy [options]\n"
    "\n"
    "Mines hard negatives: exact top-k corpus rows per query (excluding its positives), the\n"
    "false-negative filter, then m negatives per query by the sampler.\n"
    "\n"
    "Inputs:\n"
    "  --queries FILE        query embeddings: .npy (<f4/<f2, C order, memory-mapped) or .fvecs\n"
    "  --corpus FILE         corpus embeddings, same formats; same dimension as the queries\n"
    "  -k, --k K             candidates mined per query (default 100, at most the corpus; >= m)\n"
    "  --cosine              L2-normalise queries and corpus rows (cosine scores)\n"
    "  --scale X             score = X * q.c (default 1)\n"
    "  --exclude-self        never return corpus row i for query row i (queries = corpus)\n"
    "  --batch N             queries per block (default 16384; memory O(N * k))\n"
    "  --guide-queries FILE, --guide-corpus FILE  a guide model's embeddings of the same rows,\n"
    "                        for --guide-margin / --guide-rel-margin (cosine with --cosine)\n";

static const char MINE_EXAMPLES[] =
    "\nExamples:\n"
    "  negsamp mine --queries q.npy --corpus c.npy --qrels qrels.tsv --query-ids q.txt \\\n"
    "      --corpus-ids c.txt -k 100 -m 8 --rel-margin 0.05 --out negs.jsonl --format st\n"
    "  negsamp mine --queries q.fvecs --corpus c.fvecs --paired --cosine -k 200 \\\n"
    "      --sampler simans --simans-a 20 -m 15 --out-index idx.npy --out-score score.npy\n"
    "  negsamp mine --queries c.npy --corpus c.npy --exclude-self -k 50 --sampler uniform \\\n"
    "      --out neighbours.jsonl\n";

/* s⁺ of query row q: the lowest score among its positives; 0 when it has none. */
static float positive_score(const cli_embeddings *Q, const cli_embeddings *C, const cli_lists *pos,
                            int64_t q, int cosine, float scale, float *qrow, float *crow) {
    if (!pos->ids || pos->offsets[q] == pos->offsets[q + 1]) return 0.f;
    int64_t d = Q->m.cols;
    cli_embeddings_row(Q, q, qrow);
    double qn = 0;
    for (int64_t c = 0; c < d; c++) qn += (double)qrow[c] * qrow[c];
    float best = INFINITY;
    for (int64_t p = pos->offsets[q]; p < pos->offsets[q + 1]; p++) {
        cli_embeddings_row(C, pos->ids[p], crow);
        double dot = 0, cn = 0;
        for (int64_t c = 0; c < d; c++) dot += (double)qrow[c] * crow[c], cn += (double)crow[c] * crow[c];
        if (cosine) dot = (qn > 0 && cn > 0) ? dot / sqrt(qn * cn) : 0;
        float sc = (float)(scale * dot);
        if (sc < best) best = sc;
    }
    return best;
}

static double dot_rows(const float *a, const float *b, int64_t d, int cosine) {
    double dot = 0, na = 0, nb = 0;
    for (int64_t c = 0; c < d; c++) dot += (double)a[c] * b[c], na += (double)a[c] * a[c],
                                    nb += (double)b[c] * b[c];
    if (cosine) dot = (na > 0 && nb > 0) ? dot / sqrt(na * nb) : 0;
    return dot;
}

/* Guide-model scores of the block's candidates (g, nb × k; 0 at empty slots) and g+ (the lowest
 * guide score among each query's positives; 0 without positive). */
static void guide_scores(const cli_embeddings *GQ, const cli_embeddings *GC, const cli_lists *pos,
                         int64_t b0, int64_t nb, const int64_t *cand, int64_t k, int cosine,
                         float *g, float *gp) {
    int64_t d = GQ->m.cols;
#pragma omp parallel
    {
        float *qr = malloc((size_t)d * 4), *cr = malloc((size_t)d * 4);
#pragma omp for schedule(dynamic, 16)
        for (int64_t i = 0; i < nb; i++) {
            if (!qr || !cr) continue;
            cli_embeddings_row(GQ, b0 + i, qr);
            for (int64_t j = 0; j < k; j++) {
                int64_t id = cand[i * k + j];
                if (id < 0) {
                    g[i * k + j] = 0.f;
                    continue;
                }
                cli_embeddings_row(GC, id, cr);
                g[i * k + j] = (float)dot_rows(qr, cr, d, cosine);
            }
            float best = 0.f;
            int64_t pb = pos->ids ? pos->offsets[b0 + i] : 0, pe = pos->ids ? pos->offsets[b0 + i + 1] : 0;
            for (int64_t p = pb; p < pe; p++) {
                cli_embeddings_row(GC, pos->ids[p], cr);
                float v = (float)dot_rows(qr, cr, d, cosine);
                if (p == pb || v < best) best = v;
            }
            gp[i] = best;
        }
        free(qr);
        free(cr);
    }
}

int cli_cmd_mine(int argc, char **argv) {
    static const struct option longopts[] = {
        STAGE_LONG_OPTIONS,
        {"queries", required_argument, 0, O_QUERIES},
        {"corpus", required_argument, 0, O_CORPUS},
        {"k", required_argument, 0, O_K},
        {"cosine", no_argument, 0, O_COSINE},
        {"scale", required_argument, 0, O_SCALE},
        {"exclude-self", no_argument, 0, O_EXCLUDE_SELF},
        {"batch", required_argument, 0, O_BATCH},
        {"guide-queries", required_argument, 0, O_GUIDE_QUERIES},
        {"guide-corpus", required_argument, 0, O_GUIDE_CORPUS},
        {0, 0, 0, 0}};
    stage_opts o;
    stage_defaults(&o);
    const char *qpath = NULL, *cpath = NULL, *gqpath = NULL, *gcpath = NULL;
    int64_t k = 100, batch = 16384;
    int k_set = 0, cosine = 0, exclude_self = 0;
    float scale = 1.f;
    opterr = 0;
    optind = 1;
    int c;
    while ((c = getopt_long(argc, argv, ":hm:k:", longopts, NULL)) != -1) {
        int r = stage_option(&o, c, optarg);
        if (r < 0) return CLI_USAGE;
        if (r > 0) continue;
        switch (c) {
        case O_HELP:
            fputs(MINE_HELP, stdout);
            fputs("\n", stdout);
            fputs(STAGE_HELP, stdout);
            fputs(MINE_EXAMPLES, stdout);
            return CLI_OK;
        case O_QUERIES: qpath = optarg; break;
        case O_CORPUS: cpath = optarg; break;
        case O_K:
            if (cli_parse_i64("-k", optarg, 1, NS_MAX_K, &k)) return CLI_USAGE;
            k_set = 1;
            break;
        case O_COSINE: cosine = 1; break;
        case O_SCALE:
            if (cli_parse_f32("--scale", optarg, &scale)) return CLI_USAGE;
            break;
        case O_EXCLUDE_SELF: exclude_self = 1; break;
        case O_GUIDE_QUERIES: gqpath = optarg; break;
        case O_GUIDE_CORPUS: gcpath = optarg; break;
        case O_BATCH:
            if (cli_parse_i64("--batch", optarg, 1, INT64_MAX / 2, &batch)) return CLI_USAGE;
            break;
        case ':': return cli_usage_error("option '%s' needs a value", argv[optind - 1]);
        default: return cli_usage_error("unknown option '%s'", argv[optind - 1]);
        }
    }
    if (optind < argc) return cli_usage_error("unexpected argument '%s'", argv[optind]);
    if (!qpath || !cpath) return cli_usage_error("--queries and --corpus are required");
    if (!gqpath != !gcpath)
        return cli_usage_error("--guide-queries and --guide-corpus go together");
    if (o.guide_set && !gqpath)
        return cli_usage_error("--guide-margin/--guide-rel-margin need the guide model's "
                               "embeddings: --guide-queries and --guide-corpus");
    if (k_set && k < o.m)
        return cli_usage_error("-k (%lld) must be at least --negatives (%lld)", (long long)k,
                               (long long)o.m);
    if (!k_set && k < o.m) k = o.m;
    int u = stage_check(&o, k, 1);
    if (u) return u;

    stage s;
    memset(&s, 0, sizeof s);
    s.o = &o;
    cli_embeddings Q = {0}, C = {0}, GQ = {0}, GC = {0};
    float *gsc = NULL, *gps = NULL;
    cli_lists excl = {0};
    float *qrow = NULL, *crow = NULL, *ps = NULL;
    uint8_t *valid = NULL;
    int64_t *eoff = NULL;
    int64_t *cand_id = NULL;
    float *cand_sc = NULL;
    void *d_q = NULL, *d_eoff = NULL, *d_eids = NULL, *d_ci = NULL, *d_cs = NULL;
    int rc = CLI_RUNTIME;

    cli_install_signal_cleanup();
    if (stage_open_outputs(&s)) goto fail;
    if (cli_embeddings_load(qpath, &Q) || cli_embeddings_load(cpath, &C)) goto fail;
    if (Q.m.cols != C.m.cols) {
        cli_error("dimension mismatch: %s has %lld columns but %s has %lld", qpath,
                  (long long)Q.m.cols, cpath, (long long)C.m.cols);
        goto fail;
    }
    if (gqpath) {
        if (cli_embeddings_load(gqpath, &GQ) || cli_embeddings_load(gcpath, &GC)) goto fail;
        if (GQ.m.rows != Q.m.rows || GC.m.rows != C.m.rows || GQ.m.cols != GC.m.cols) {
            cli_error("guide embeddings: %s is %lld x %lld and %s is %lld x %lld; expected %lld "
                      "and %lld rows (as %s and %s) of one dimension",
                      gqpath, (long long)GQ.m.rows, (long long)GQ.m.cols, gcpath,
                      (long long)GC.m.rows, (long long)GC.m.cols, (long long)Q.m.rows,
                      (long long)C.m.rows, qpath, cpath);
            goto fail;
        }
    }
    if (exclude_self && Q.m.rows > C.m.rows) {
        cli_error("--exclude-self: %s has %lld rows, more than the corpus %s (%lld)", qpath,
                  (long long)Q.m.rows, cpath, (long long)C.m.rows);
        goto fail;
    }
    if (k > C.m.rows) {
        if (k_set && !o.quiet)
            fprintf(stderr, "%s: -k %lld is larger than the corpus; using k = %lld\n", cli_command,
                    (long long)k, (long long)C.m.rows);
        k = C.m.rows;
        if (k < o.m) {
            cli_error("the corpus %s has %lld rows, fewer than --negatives (%lld)", cpath,
                      (long long)C.m.rows, (long long)o.m);
            goto fail;
        }
        if ((o.filter.rules & NS_FILTER_RANK) && o.filter.rank_max > k && !(o.rank_set & 2))
            o.filter.rank_max = k;
    }
    s.B = Q.m.rows;
    s.C = k;
    if (stage_load_positives(&s, Q.m.rows, C.m.rows)) goto fail;
    if (stage_context(&s)) goto fail;
    if (cli_lists_with_self(o.same_id && s.has_pos ? &s.pos : NULL, s.B, exclude_self, &excl))
        goto fail;
    if (stage_write_headers(&s)) {
        cli_error("cannot write the .npy headers");
        goto fail;
    }

    int64_t nb_max = batch < s.B ? batch : s.B;
    if (stage_alloc(&s, nb_max)) goto fail;
    qrow = malloc((size_t)Q.m.cols * 4);
    crow = malloc((size_t)Q.m.cols * 4);
    ps = malloc((size_t)nb_max * 4);
    valid = malloc((size_t)nb_max);
    eoff = malloc((size_t)(nb_max + 1) * 8);
    cand_id = malloc((size_t)(nb_max * k) * 8);
    cand_sc = malloc((size_t)(nb_max * k) * 4);
    if (gqpath) {
        gsc = malloc((size_t)(nb_max * k) * 4);
        gps = malloc((size_t)nb_max * 4);
    }
    if (!qrow || !crow || !ps || !valid || !eoff || !cand_id || !cand_sc ||
        (gqpath && (!gsc || !gps))) {
        cli_error("out of memory for a block of %lld queries × %lld candidates", (long long)nb_max,
                  (long long)k);
        goto fail;
    }
    int64_t qld = Q.m.ld ? Q.m.ld : Q.m.cols;
    ns_matrix cm = C.m;
    if (ns_context_backend(s.ctx) == NS_BACKEND_CUDA) {
        /* The corpus stays in host memory (a memory map): ns_mine_topk streams it through
         * pinned tiles, so it may be larger than the device. Query blocks are copied over. */
        d_ci = cli_dev_alloc(s.ctx, (size_t)(nb_max * k) * 8);
        d_cs = cli_dev_alloc(s.ctx, (size_t)(nb_max * k) * 4);
        if (!d_ci || !d_cs) goto fail;
    } else {
        d_ci = cand_id;
        d_cs = cand_sc;
    }

    cli_progress prog;
    cli_progress_init(&prog, "mining", s.B, o.quiet);
    double t0 = cli_now();
    for (int64_t b0 = 0; b0 < s.B; b0 += batch) {
        int64_t nb = s.B - b0 < batch ? s.B - b0 : batch;
        size_t qesz = Q.m.dtype == NS_F32 ? 4 : 2;
        ns_matrix qm = Q.m;
        const void *qhost = (const char *)Q.m.data + (size_t)(b0 * qld) * qesz;
        qm.rows = nb;
        d_q = cli_dev_put(s.ctx, qhost, (size_t)(nb * qld) * qesz);
        for (int64_t i = 0; i <= nb; i++) eoff[i] = excl.offsets[b0 + i] - excl.offsets[b0];
        int64_t ne = eoff[nb];
        d_eoff = cli_dev_put(s.ctx, eoff, (size_t)(nb + 1) * 8);
        d_eids = cli_dev_put(s.ctx, excl.ids + excl.offsets[b0], (size_t)(ne ? ne : 1) * 8);
        if (!d_q || !d_eoff || !d_eids) goto fail;
        qm.data = d_q;
        ns_id_lists el = {d_eoff, d_eids, nb};
        ns_mine_options mo = NS_MINE_OPTIONS_INIT;
        mo.scale = scale;
        mo.flags = cosine ? NS_NORMALIZE : 0u;
        mo.exclude = ne ? &el : NULL;
        mo.progress = cli_progress_update;
        mo.progress_user = &prog;
        prog.base = b0;
        prog.span = nb;
        ns_status st = ns_mine_topk(s.ctx, qm, cm, k, &mo, d_ci, d_cs);
        if (st != NS_OK) {
            cli_error("mining %s against %s failed: %s (%s)", qpath, cpath, ns_last_error(s.ctx),
                      ns_status_string(st));
            goto fail;
        }
        if (cli_dev_get(s.ctx, cand_id, d_ci, (size_t)(nb * k) * 8) ||
            cli_dev_get(s.ctx, cand_sc, d_cs, (size_t)(nb * k) * 4))
            goto fail;
        cli_dev_free(s.ctx, d_q, qhost);
        cli_dev_free(s.ctx, d_eoff, eoff);
        cli_dev_free(s.ctx, d_eids, excl.ids + excl.offsets[b0]);
        d_q = d_eoff = d_eids = NULL;
        for (int64_t i = 0; i < nb; i++) {
            int64_t q = b0 + i;
            valid[i] = !s.has_pos || s.pos.offsets[q] < s.pos.offsets[q + 1];
            ps[i] = s.has_pos ? positive_score(&Q, &C, &s.pos, q, cosine, scale, qrow, crow) : 0.f;
        }
        if (gqpath) {
            guide_scores(&GQ, &GC, &s.pos, b0, nb, cand_id, k, cosine, gsc, gps);
            for (int64_t i = 0; i < nb; i++)
                if (!valid[i]) gps[i] = 0.f;
        }
        if (stage_block(&s, b0, nb, cand_id, cand_sc, ps, valid, gsc, gps)) goto fail;
        prog.base = b0 + nb;
        prog.span = 0;
        cli_progress_update(1, 1, &prog);
    }
    cli_progress_finish(&prog);
    if (stage_commit(&s)) goto fail;
    stage_summary(&s, "mined, filtered and sampled", cli_now() - t0);
    rc = CLI_OK;
    goto done;
fail:
    stage_abort(&s);
done:
    if (s.ctx && ns_context_backend(s.ctx) == NS_BACKEND_CUDA) {
        cli_dev_free(s.ctx, d_ci, NULL);
        cli_dev_free(s.ctx, d_cs, NULL);
        cli_dev_free(s.ctx, d_q, NULL);
        cli_dev_free(s.ctx, d_eoff, NULL);
        cli_dev_free(s.ctx, d_eids, NULL);
    }
    free(qrow);
    free(crow);
    free(ps);
    free(valid);
    free(eoff);
    free(cand_id);
    free(cand_sc);
    cli_lists_free(&excl);
    stage_free(&s);
    cli_embeddings_free(&Q);
    cli_embeddings_free(&C);
    cli_embeddings_free(&GQ);
    cli_embeddings_free(&GC);
    free(gsc);
    free(gps);
    return rc;
}
