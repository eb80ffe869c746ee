/* negsamp mine: top-k over a corpus → false-negative filter → sample m → JSONL / .npy.
 * Queries are processed in blocks (--batch) so memory stays O(batch · k); the sampler's RNG is
 * countered by the global query row, so the block size never changes the draws. */
#define _GNU_SOURCE
#include "cli_checkpoint.h"
#include "cli_shard.h"
#include "mine_beir.h"

#include <getopt.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

static const char MINE_HELP[] =
    "usage: negsamp mine --queries Q.npy --corpus C.npy [options]\n"
    "       negsamp mine --beir DIR [--split test] [options]\n"
    "       negsamp mine --queries Q.jsonl --corpus C.jsonl --queries-emb Q.npy \\\n"
    "                    --corpus-emb C.npy [options]\n"
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
    "  --checkpoint FILE     record each finished block's top-k in FILE; a rerun of the same\n"
    "                        command after a crash, kill or Ctrl-C resumes from it (FILE is\n"
    "                        removed once the outputs are written)\n"
    "  --guide-queries FILE, --guide-corpus FILE  a guide model's embeddings of the same rows,\n"
    "                        for --guide-margin / --guide-rel-margin (cosine with --cosine)\n"
    "Texts (joined into st / tevatron / flag rows; ids are the JSONL's \"_id\"s):\n"
    "  --beir DIR            a BEIR folder: DIR/corpus.jsonl (_id, title, text),\n"
    "                        DIR/queries.jsonl (_id, text), DIR/qrels/SPLIT.tsv (the positives\n"
    "                        unless --qrels/--positives/--paired), embeddings DIR/queries.npy\n"
    "                        and DIR/corpus.npy (row i = line i of the JSONL)\n"
    "  --split NAME          the qrels split of --beir (default test)\n"
    "  --queries-emb FILE, --corpus-emb FILE  the embeddings of the JSONL texts (with --beir,\n"
    "                        instead of DIR/*.npy; with JSONL --queries/--corpus, required)\n"
    "  --queries/--corpus FILE.jsonl  HF-style JSONL texts (same fields as BEIR's)\n"
    "  Texts and qrels may be gzip-compressed: FILE.jsonl.gz, qrels .tsv.gz; in a --beir\n"
    "  folder NAME.gz is read where NAME is absent.\n"
    "  Parquet (HF hub BEIR tables) in and out: python -m negsamp.parquet mine ARGS... runs\n"
    "  this command with --queries/--corpus/--qrels FILE.parquet and --out FILE.parquet.\n"
    "  With texts, only the queries with a positive in the qrels are mined and written (rows\n"
    "  of --out-index etc. and of the trace follow them in file order).\n"
    "Across ranks: mpirun -np R negsamp mine ...: each rank mines 1/R of the corpus rows, the\n"
    "  ranks' top-k are merged exactly and rank 0 writes the outputs, byte for byte those of one\n"
    "  process. --backend cpu (the default under mpirun): MPI ranks; --backend cuda: NCCL ranks,\n"
    "  one GPU each (device = the rank's number among the ranks of its node).\n";

static const char MINE_EXAMPLES[] =
    "\nExamples:\n"
    "  negsamp mine --queries q.npy --corpus c.npy --qrels qrels.tsv --query-ids q.txt \\\n"
    "      --corpus-ids c.txt -k 100 -m 8 --rel-margin 0.05 --out negs.jsonl --format st\n"
    "  negsamp mine --queries q.fvecs --corpus c.fvecs --paired --cosine -k 200 \\\n"
    "      --sampler simans --simans-a 20 -m 15 --out-index idx.npy --out-score score.npy\n"
    "  negsamp mine --queries c.npy --corpus c.npy --exclude-self -k 50 --sampler uniform \\\n"
    "      --out neighbours.jsonl\n"
    "  mpirun -np 4 negsamp mine --queries q.npy --corpus c.npy -k 100 --checkpoint run.ckpt \\\n"
    "      --out-index idx.npy\n";

/* s⁺ of query row q: the lowest score among its positives; 0 when it has none. Each
 * positive's score goes to each[p] (aligned with pos->ids). */
static float positive_score(const cli_embeddings *Q, const cli_embeddings *C, const cli_lists *pos,
                            int64_t q, int cosine, float scale, float *qrow, float *crow,
                            float *each) {
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
        if (each) each[p] = sc;
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

/* The command line of mine. */
typedef struct {
    stage_opts o;
    const char *qpath, *cpath, *gqpath, *gcpath, *checkpoint;
    mine_texts t;
    int argc;
    char **argv;
    int64_t k, batch;
    int k_set, cosine, exclude_self;
    float scale;
} mine_args;

/* Everything one run holds: inputs, the stage, host and device buffers of a block. */
typedef struct {
    mine_args *a;
    stage s;
    cli_embeddings Q, C, GQ, GC;
    cli_lists excl;
    int64_t nb_max;
    float *qrow, *crow, *ps, *cand_sc, *gsc, *gps;
    uint8_t *valid;
    int64_t *eoff, *cand_id;
    void *d_q, *d_eoff, *d_eids, *d_ci, *d_cs;
    cli_progress prog;
    cli_shard sh;      /* ranks (mpirun); one process: rank 0 of 1 */
    cli_checkpoint ck; /* --checkpoint (rank 0) */
    int64_t resumed;   /* blocks read back from the checkpoint */
} mine_run;

/* Options of this command alone (after the stage's). */
enum { O_CHECKPOINT = 700 };

/* Returns -1 to go on, or the exit status (--help, a usage error). */
static int mine_parse(int argc, char **argv, mine_args *a) {
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
        {"beir", required_argument, 0, O_BEIR},
        {"split", required_argument, 0, O_SPLIT},
        {"queries-emb", required_argument, 0, O_QUERIES_EMB},
        {"corpus-emb", required_argument, 0, O_CORPUS_EMB},
        {"checkpoint", required_argument, 0, O_CHECKPOINT},
        {0, 0, 0, 0}};
    memset(a, 0, sizeof *a);
    stage_defaults(&a->o);
    a->k = 100;
    a->batch = 16384;
    a->scale = 1.f;
    opterr = 0;
    optind = 1;
    int c;
    while ((c = getopt_long(argc, argv, ":hm:k:", longopts, NULL)) != -1) {
        int r = stage_option(&a->o, c, optarg);
        if (r < 0) return CLI_USAGE;
        if (r > 0) continue;
        switch (c) {
        case O_HELP:
            fputs(MINE_HELP, stdout);
            fputs("\n", stdout);
            fputs(STAGE_HELP, stdout);
            fputs(MINE_EXAMPLES, stdout);
            return CLI_OK;
        case O_QUERIES: a->qpath = optarg; break;
        case O_CORPUS: a->cpath = optarg; break;
        case O_K:
            if (cli_parse_i64("-k", optarg, 1, NS_MAX_K, &a->k)) return CLI_USAGE;
            a->k_set = 1;
            break;
        case O_COSINE: a->cosine = 1; break;
        case O_SCALE:
            if (cli_parse_f32("--scale", optarg, &a->scale)) return CLI_USAGE;
            break;
        case O_EXCLUDE_SELF: a->exclude_self = 1; break;
        case O_GUIDE_QUERIES: a->gqpath = optarg; break;
        case O_GUIDE_CORPUS: a->gcpath = optarg; break;
        case O_BEIR: a->t.beir = optarg; break;
        case O_SPLIT: a->t.split = optarg; break;
        case O_QUERIES_EMB: a->t.queries_emb = optarg; break;
        case O_CORPUS_EMB: a->t.corpus_emb = optarg; break;
        case O_CHECKPOINT: a->checkpoint = optarg; break;
        case O_BATCH:
            if (cli_parse_i64("--batch", optarg, 1, INT64_MAX / 2, &a->batch)) return CLI_USAGE;
            break;
        case ':': return cli_usage_error("option '%s' needs a value", argv[optind - 1]);
        default: return cli_usage_error("unknown option '%s'", argv[optind - 1]);
        }
    }
    if (optind < argc) return cli_usage_error("unexpected argument '%s'", argv[optind]);
    return -1;
}

/* Checks between options. Returns -1 to go on, or CLI_USAGE. */
static int mine_check(mine_args *a) {
    int u = mine_texts_resolve(&a->t, &a->o, &a->qpath, &a->cpath);
    if (u) return u;
    if (!a->qpath || !a->cpath)
        return cli_usage_error("--queries and --corpus are required (or --beir DIR)");
    if (!a->gqpath != !a->gcpath)
        return cli_usage_error("--guide-queries and --guide-corpus go together");
    if (a->o.guide_set && !a->gqpath)
        return cli_usage_error("--guide-margin/--guide-rel-margin need the guide model's "
                               "embeddings: --guide-queries and --guide-corpus");
    if (a->k_set && a->k < a->o.m)
        return cli_usage_error("-k (%lld) must be at least --negatives (%lld)", (long long)a->k,
                               (long long)a->o.m);
    if (!a->k_set && a->k < a->o.m) a->k = a->o.m;
    u = stage_check(&a->o, a->k, 1);
    return u ? u : -1;
}

/* The embeddings, and the checks between them. */
static int mine_load_inputs(mine_run *r) {
    const mine_args *a = r->a;
    if (cli_embeddings_load_pair(a->qpath, &r->Q, a->cpath, &r->C)) return -1;
    if (mine_texts_load(&r->a->t, &r->Q, &r->C)) return -1;
    if (a->t.has_texts) {
        r->s.qt = &r->a->t.q;
        r->s.ct = &r->a->t.c;
    }
    if (a->gqpath) {
        const ns_matrix *gq = &r->GQ.m, *gc = &r->GC.m;
        if (cli_embeddings_load(a->gqpath, &r->GQ) || cli_embeddings_load(a->gcpath, &r->GC))
            return -1;
        if (gq->rows != r->Q.m.rows || gc->rows != r->C.m.rows || gq->cols != gc->cols) {
            cli_error("guide embeddings: %s is %lld x %lld and %s is %lld x %lld; expected %lld "
                      "and %lld rows (as %s and %s) of one dimension",
                      a->gqpath, (long long)gq->rows, (long long)gq->cols, a->gcpath,
                      (long long)gc->rows, (long long)gc->cols, (long long)r->Q.m.rows,
                      (long long)r->C.m.rows, a->qpath, a->cpath);
            return -1;
        }
    }
    if (a->exclude_self && r->Q.m.rows > r->C.m.rows) {
        cli_error("--exclude-self: %s has %lld rows, more than the corpus %s (%lld)", a->qpath,
                  (long long)r->Q.m.rows, a->cpath, (long long)r->C.m.rows);
        return -1;
    }
    return 0;
}

/* k at most the corpus (a note when -k asked for more). 0, or CLI_USAGE when the corpus has
 * fewer rows than -m: the same usage error as -k below -m. */
static int mine_fit_k(mine_run *r) {
    mine_args *a = r->a;
    int64_t rows = r->C.m.rows;
    if (a->k <= rows) return 0;
    if (a->k_set && !a->o.quiet)
        fprintf(stderr, "%s: -k %lld is larger than the corpus; using k = %lld\n", cli_command,
                (long long)a->k, (long long)rows);
    a->k = rows;
    if (a->k < a->o.m)
        return cli_usage_error("--negatives (%lld) is larger than the corpus %s (%lld rows)",
                               (long long)a->o.m, a->cpath, (long long)rows);
    if ((a->o.filter.rules & NS_FILTER_RANK) && a->o.filter.rank_max > a->k && !(a->o.rank_set & 2))
        a->o.filter.rank_max = a->k;
    return 0;
}

/* Host buffers of one block, and the device ones on a CUDA context. */
static int mine_alloc(mine_run *r) {
    const mine_args *a = r->a;
    int64_t nb = r->nb_max, k = a->k, d = r->Q.m.cols;
    if (stage_alloc(&r->s, nb)) return -1;
    r->qrow = malloc((size_t)d * 4);
    r->crow = malloc((size_t)d * 4);
    r->ps = malloc((size_t)nb * 4);
    r->valid = malloc((size_t)nb);
    r->eoff = malloc((size_t)(nb + 1) * 8);
    r->cand_id = malloc((size_t)(nb * k) * 8);
    r->cand_sc = malloc((size_t)(nb * k) * 4);
    if (a->gqpath) {
        r->gsc = malloc((size_t)(nb * k) * 4);
        r->gps = malloc((size_t)nb * 4);
    }
    if (!r->qrow || !r->crow || !r->ps || !r->valid || !r->eoff || !r->cand_id || !r->cand_sc ||
        (a->gqpath && (!r->gsc || !r->gps))) {
        cli_error("out of memory for a block of %lld queries × %lld candidates", (long long)nb,
                  (long long)k);
        return -1;
    }
    if (ns_context_backend(r->s.ctx) != NS_BACKEND_CUDA) {
        r->d_ci = r->cand_id;
        r->d_cs = r->cand_sc;
        return 0;
    }
    /* The corpus stays in host memory (a memory map): ns_mine_topk streams it through pinned
     * tiles, so it may be larger than the device. Query blocks are copied over. */
    r->d_ci = cli_dev_alloc(r->s.ctx, (size_t)(nb * k) * 8);
    r->d_cs = cli_dev_alloc(r->s.ctx, (size_t)(nb * k) * 4);
    return r->d_ci && r->d_cs ? 0 : -1;
}

/* Everything between the inputs and the first block. */
static int mine_prepare(mine_run *r) {
    mine_args *a = r->a;
    stage *s = &r->s;
    s->B = r->Q.m.rows;
    s->C = a->k;
    if (stage_load_positives(s, r->Q.m.rows, r->C.m.rows) || stage_context(s)) return -1;
    s->random_exclude_self = a->exclude_self;
    if (stage_random_open(s, r->C.m.rows)) return -1;
    if (a->t.has_texts && s->has_pos && !a->exclude_self &&
        mine_keep_positive_queries(s, &r->Q, &r->GQ, &a->t.q))
        return -1;
    if (cli_lists_with_self(a->o.same_id && s->has_pos ? &s->pos : NULL, s->B, a->exclude_self,
                            &r->excl))
        return -1;
    if (cli_shard_writer(&r->sh) && stage_write_headers(s)) {
        cli_error("cannot write the .npy headers");
        return -1;
    }
    if (s->has_pos && s->pos.offsets[s->B] > 0 &&
        !(s->pos_each = malloc((size_t)s->pos.offsets[s->B] * 4))) {
        cli_error("out of memory for %lld positive scores", (long long)s->pos.offsets[s->B]);
        return -1;
    }
    r->nb_max = a->batch < s->B ? a->batch : s->B;
    return mine_alloc(r);
}

/* Top-k of queries [b0, b0 + nb) into r->cand_id / r->cand_sc (host). */
static int mine_topk_block(mine_run *r, int64_t b0, int64_t nb) {
    const mine_args *a = r->a;
    ns_context *ctx = r->s.ctx;
    int64_t k = a->k, qld = r->Q.m.ld ? r->Q.m.ld : r->Q.m.cols;
    size_t qesz = r->Q.m.dtype == NS_F32 ? 4 : 2;
    ns_matrix qm = r->Q.m;
    const void *qhost = (const char *)r->Q.m.data + (size_t)(b0 * qld) * qesz;
    qm.rows = nb;
    r->d_q = cli_dev_put(ctx, qhost, (size_t)(nb * qld) * qesz);
    for (int64_t i = 0; i <= nb; i++) r->eoff[i] = r->excl.offsets[b0 + i] - r->excl.offsets[b0];
    int64_t ne = r->eoff[nb];
    const int64_t *eids = r->excl.ids + r->excl.offsets[b0];
    r->d_eoff = cli_dev_put(ctx, r->eoff, (size_t)(nb + 1) * 8);
    r->d_eids = cli_dev_put(ctx, eids, (size_t)(ne ? ne : 1) * 8);
    if (!r->d_q || !r->d_eoff || !r->d_eids) return -1;
    qm.data = r->d_q;
    ns_id_lists el = {r->d_eoff, r->d_eids, nb};
    ns_mine_options mo = NS_MINE_OPTIONS_INIT;
    mo.scale = a->scale;
    mo.flags = a->cosine ? NS_NORMALIZE : 0u;
    mo.exclude = ne ? &el : NULL;
    ns_matrix corpus = r->C.m;
    if (r->sh.comm) {
        /* This rank's rows; exclusions stay global rows, in host memory. */
        int64_t c0, cn;
        cli_shard_rows(&r->sh, corpus.rows, &c0, &cn);
        corpus.data = cn ? (const char *)corpus.data +
                               (size_t)(c0 * (corpus.ld ? corpus.ld : corpus.cols)) *
                                   (corpus.dtype == NS_F32 ? 4 : 2)
                         : NULL;
        corpus.rows = cn;
        el.offsets = r->eoff, el.ids = eids;
        mo.comm = r->sh.comm;
        mo.flags |= NS_MINE_RESULT_ON_RANK0; /* rank 0 alone runs the stage */
    }
    mo.progress = cli_progress_update;
    mo.progress_user = &r->prog;
    r->prog.base = b0;
    r->prog.span = nb;
    ns_status st = ns_mine_topk(ctx, qm, corpus, k, &mo, r->d_ci, r->d_cs);
    if (st != NS_OK) {
        cli_error("mining %s against %s failed: %s (%s)", a->qpath, a->cpath, ns_last_error(ctx),
                  ns_status_string(st));
        return -1;
    }
    if (cli_dev_get(ctx, r->cand_id, r->d_ci, (size_t)(nb * k) * 8) ||
        cli_dev_get(ctx, r->cand_sc, r->d_cs, (size_t)(nb * k) * 4))
        return -1;
    cli_dev_free(ctx, r->d_q, qhost);
    cli_dev_free(ctx, r->d_eoff, r->eoff);
    cli_dev_free(ctx, r->d_eids, eids);
    r->d_q = r->d_eoff = r->d_eids = NULL;
    return 0;
}

/* Block blk's top-k: read back from the checkpoint (rank 0; the other ranks skip it), or mined
 * (across the ranks) and recorded. */
static int mine_candidates(mine_run *r, int64_t b0, int64_t nb, int64_t blk) {
    const int writer = cli_shard_writer(&r->sh);
    if (blk < r->resumed)
        return writer ? cli_checkpoint_read(&r->ck, b0, nb, r->cand_id, r->cand_sc) : 0;
    if (mine_topk_block(r, b0, nb)) return -1;
    return writer && r->ck.f ? cli_checkpoint_append(&r->ck, b0, nb, r->cand_id, r->cand_sc) : 0;
}

/* Queries [b0, b0 + nb): top-k, s⁺ (and the guide scores), then the stage (rank 0). */
static int mine_block(mine_run *r, int64_t b0, int64_t nb, int64_t blk) {
    const mine_args *a = r->a;
    stage *s = &r->s;
    if (mine_candidates(r, b0, nb, blk)) return -1;
    if (!cli_shard_writer(&r->sh)) return 0;
    for (int64_t i = 0; i < nb; i++) {
        int64_t q = b0 + i;
        r->valid[i] = !s->has_pos || s->pos.offsets[q] < s->pos.offsets[q + 1];
        r->ps[i] = s->has_pos ? positive_score(&r->Q, &r->C, &s->pos, q, a->cosine, a->scale,
                                               r->qrow, r->crow, s->pos_each)
                              : 0.f;
    }
    if (a->gqpath) {
        guide_scores(&r->GQ, &r->GC, &s->pos, b0, nb, r->cand_id, a->k, a->cosine, r->gsc, r->gps);
        for (int64_t i = 0; i < nb; i++)
            if (!r->valid[i]) r->gps[i] = 0.f;
    }
    if (stage_block(s, b0, nb, r->cand_id, r->cand_sc, r->ps, r->valid, r->gsc, r->gps)) return -1;
    r->prog.base = b0 + nb;
    r->prog.span = 0;
    cli_progress_update(1, 1, &r->prog);
    return 0;
}

static void mine_free(mine_run *r) {
    ns_context *ctx = r->s.ctx;
    if (ctx && ns_context_backend(ctx) == NS_BACKEND_CUDA) {
        cli_dev_free(ctx, r->d_ci, NULL);
        cli_dev_free(ctx, r->d_cs, NULL);
        cli_dev_free(ctx, r->d_q, NULL);
        cli_dev_free(ctx, r->d_eoff, NULL);
        cli_dev_free(ctx, r->d_eids, NULL);
    }
    void *host[] = {r->qrow, r->crow, r->ps, r->valid, r->eoff, r->cand_id, r->cand_sc, r->gsc,
                    r->gps};
    for (size_t i = 0; i < sizeof host / sizeof host[0]; i++) free(host[i]);
    cli_lists_free(&r->excl);
    stage_free(&r->s);
    cli_embeddings_free(&r->Q);
    cli_embeddings_free(&r->C);
    cli_embeddings_free(&r->GQ);
    cli_embeddings_free(&r->GC);
    mine_texts_free(&r->a->t);
    cli_checkpoint_close(&r->ck, 0);
    cli_shard_finish(&r->sh);
}

/* The checkpoint is neither an input nor an output. 0 or CLI_USAGE. */
static int mine_check_checkpoint(const mine_args *a) {
    const char *c = a->checkpoint;
    if (!c) return 0;
    const char *outs[] = {a->o.out, a->o.out_index, a->o.out_score, a->o.out_positive_score,
                          a->o.provenance, a->o.trace};
    for (size_t i = 0; i < sizeof outs / sizeof outs[0]; i++)
        if (outs[i] && strcmp(outs[i], c) == 0)
            return cli_usage_error("--checkpoint %s is also an output", c);
    if (cli_is_temp_name(c) || cli_is_input(c))
        return cli_usage_error("--checkpoint %s: not a usable checkpoint path (an input, or a "
                               "temporary output's name)",
                               c);
    return 0;
}

/* What the top-k depends on, one "name value" a line: the inputs' sizes and hashes (not their
 * paths: a moved file resumes), k, the block size, scoring, exclusions and shapes. The ranks
 * are not in it: a run may resume with another rank count. */
static int mine_checkpoint_desc(mine_run *r, const cli_named_path *in, int n, char *buf,
                                size_t cap) {
    const mine_args *a = r->a;
    const stage_opts *o = &a->o;
    const cli_named_path ids[] = {{"--query-ids", o->query_ids}, {"--corpus-ids", o->corpus_ids},
                                  {"--qrels", o->qrels}, {"--positives", o->positives}};
    size_t w = 0;
    for (int i = 0; i < n + 4; i++) {
        const cli_named_path *p = i < n ? &in[i] : &ids[i - n];
        if (!p->path || strncmp(p->flag, "--guide", 7) == 0) continue;
        uint64_t h;
        int64_t size;
        if (cli_file_fingerprint(p->path, &h, &size)) return -1;
        w += (size_t)snprintf(buf + w, cap - w, "input %s %lld %016llx\n", p->flag,
                              (long long)size, (unsigned long long)h);
        if (w >= cap) return -1;
    }
    uint32_t sb;
    memcpy(&sb, &a->scale, 4);
    w += (size_t)snprintf(buf + w, cap - w,
                          "k %lld\nbatch %lld\ncosine %d\nscale %08x\nexclude_self %d\n"
                          "same_id %d\npaired %d\nqueries %lld\ncorpus %lld x %lld\n",
                          (long long)a->k, (long long)a->batch, a->cosine, sb, a->exclude_self,
                          o->same_id, o->paired, (long long)r->s.B, (long long)r->C.m.rows,
                          (long long)r->C.m.cols);
    return w < cap ? 0 : -1;
}

/* --checkpoint on rank 0: created, or opened to resume (a mismatch refused). */
static int mine_open_checkpoint(mine_run *r, const cli_named_path *in, int n) {
    const mine_args *a = r->a;
    if (!a->checkpoint) return 0;
    char desc[8192];
    if (mine_checkpoint_desc(r, in, n, desc, sizeof desc)) {
        cli_error("--checkpoint %s: cannot describe the inputs", a->checkpoint);
        return -1;
    }
    if (cli_checkpoint_open(&r->ck, a->checkpoint, desc, a->k, a->batch)) return -1;
    if (r->ck.done && !a->o.quiet)
        fprintf(stderr, "%s: resuming from %s: %lld finished block(s) read back, not mined\n",
                cli_command, a->checkpoint, (long long)r->ck.done);
    return 0;
}

static int mine_provenance(mine_run *r, const cli_named_path *in, int n) {
    const mine_args *a = r->a;
    char extra[8192];
    int w = snprintf(extra, sizeof extra,
                     "  \"cosine\": %s,\n  \"scale\": %.9g,\n  \"exclude_self\": %s,\n",
                     a->cosine ? "true" : "false", (double)a->scale,
                     a->exclude_self ? "true" : "false");
    if (a->t.beir && w > 0 && (size_t)w < sizeof extra) {
        char *e = extra + w;
        size_t cap = sizeof extra - (size_t)w;
        /* the folder and split as JSON strings */
        FILE *m = fmemopen(e, cap, "w");
        if (m) {
            fputs("  \"beir\": ", m);
            cli_json_string(m, a->t.beir, strlen(a->t.beir));
            fputs(",\n  \"split\": ", m);
            cli_json_string(m, a->t.split, strlen(a->t.split));
            fputs(",\n", m);
            fclose(m);
        }
    }
    if (stage_write_provenance(&r->s, a->argc, a->argv, "mine", in, n, extra)) {
        cli_error("%s: cannot write the provenance", a->o.provenance);
        return -1;
    }
    return 0;
}

/* The CPU threads of each rank under mpirun (o->threads) and where the number comes from:
 * --threads, then OMP_NUM_THREADS, else the rank's share of its node's cores (R ranks of every
 * core each would oversubscribe the node R-fold). */
static const char *mine_rank_threads(const cli_shard *sh, stage_opts *o) {
    static char why[96];
    const char *omp = getenv("OMP_NUM_THREADS");
    if (!sh->ranks || o->threads_set) return "--threads";
    if (omp && atoi(omp) > 0) {
        o->threads = atoi(omp);
        return "OMP_NUM_THREADS";
    }
    int cores;
    o->threads = cli_shard_threads(sh, &cores);
    snprintf(why, sizeof why, "the node's %d cores over its %d rank(s); --threads to change",
             cores, sh->local_size);
    return why;
}

int cli_cmd_mine(int argc, char **argv) {
    mine_args a;
    int u = mine_parse(argc, argv, &a);
    if (u < 0) u = mine_check(&a);
    if (u >= 0) return u;
    a.argc = argc;
    a.argv = argv;
    const char *qe = a.t.has_texts ? "--queries-emb" : "--queries";
    const char *ce = a.t.has_texts ? "--corpus-emb" : "--corpus";
    const cli_named_path in[] = {{qe, a.qpath}, {ce, a.cpath},
                                 {"--guide-queries", a.gqpath}, {"--guide-corpus", a.gcpath},
                                 {"queries JSONL", a.t.has_texts ? a.t.qtext : NULL},
                                 {"corpus JSONL", a.t.has_texts ? a.t.ctext : NULL}};
    if ((u = stage_check_files(&a.o, in, 6)) || (u = mine_check_checkpoint(&a))) return u;
    mine_run r;
    memset(&r, 0, sizeof r);
    r.a = &a;
    r.s.o = &a.o;
    int rc = CLI_RUNTIME;
    if (cli_shard_init(&r.sh)) return CLI_RUNTIME;
    const int writer = cli_shard_writer(&r.sh);
    if (!writer) a.o.quiet = 1; /* rank 0 reports for all */
    if (r.sh.ranks && a.o.backend == NS_BACKEND_AUTO) a.o.backend = NS_BACKEND_CPU; /* MPI */
    a.o.device = r.sh.local_rank; /* CUDA ranks: one device per rank of the node */
    const char *why = mine_rank_threads(&r.sh, &a.o);
    cli_install_signal_cleanup();
    int failed = (writer && stage_open_outputs(&r.s)) || mine_load_inputs(&r);
    if (!failed && (u = mine_fit_k(&r))) rc = u, failed = 1;
    failed = failed || mine_prepare(&r);
    /* Every rank ready before the communicator (collective): a rank that failed stops the
     * others here instead of leaving them to the communicator's timeout. */
    if (cli_shard_any_failed(&r.sh, failed)) goto fail;
    failed = cli_shard_comm(&r.sh, r.s.ctx) || (writer && mine_open_checkpoint(&r, in, 6));
    if (cli_shard_any_failed(&r.sh, failed)) goto fail;
    if (r.sh.ranks && !a.o.quiet)
        fprintf(stderr, "%s: mining across %d rank(s) over %s\n", cli_command, r.sh.size,
                ns_context_backend(r.s.ctx) == NS_BACKEND_CUDA
                    ? "NCCL (one CUDA device per rank: its number among its node's ranks)"
                    : "MPI");
    if (r.sh.ranks && !a.o.quiet && a.o.threads)
        fprintf(stderr, "%s: %d CPU thread(s) per rank (%s)\n", cli_command, a.o.threads, why);
    else if (r.sh.ranks && !a.o.quiet)
        fprintf(stderr, "%s: every core OpenMP sees on each rank (--threads 0)\n", cli_command);
    r.resumed = cli_shard_bcast(&r.sh, r.ck.done);
    cli_progress_init(&r.prog, "mining", r.s.B, a.o.quiet);
    double t0 = cli_now();
    for (int64_t b0 = 0, blk = 0; b0 < r.s.B; b0 += a.batch, blk++) {
        failed = mine_block(&r, b0, r.s.B - b0 < a.batch ? r.s.B - b0 : a.batch, blk);
        /* A failure on rank 0 after the merge (writing) stops the others too. */
        if (cli_shard_any_failed(&r.sh, failed)) goto fail;
    }
    cli_progress_finish(&r.prog);
    if (writer && (mine_provenance(&r, in, 6) || stage_commit(&r.s))) goto fail;
    cli_checkpoint_close(&r.ck, 1);
    if (writer) stage_summary(&r.s, "mined, filtered and sampled", cli_now() - t0);
    rc = CLI_OK;
    goto done;
fail:
    stage_abort(&r.s);
done:
    mine_free(&r);
    return rc;
}
