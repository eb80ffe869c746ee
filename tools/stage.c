/* The filter → sample → write stage over blocks of queries: outputs, positives, the library
 * calls (host or device memory), the .npy rows and the summary. */
#define _GNU_SOURCE
#include "stage.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

int stage_open_outputs(stage *s) {
    stage_opts *o = s->o;
    if ((o->out && cli_output_open(&s->out, o->out, o->force)) ||
        (o->out_index && cli_output_open(&s->out_index, o->out_index, o->force)) ||
        (o->out_score && cli_output_open(&s->out_score, o->out_score, o->force)) ||
        (o->out_positive_score && cli_output_open(&s->out_pos, o->out_positive_score, o->force)) ||
        cli_output_open(&s->prov, o->provenance, o->force))
        return -1;
    for (int i = 0; o->trace && i < 6; i++)
        if (cli_output_open(&s->trace[i], o->trace_path[i], o->force)) return -1;
    return 0;
}

int stage_write_headers(stage *s) {
    const int64_t w = stage_width(s->o);
    if (s->out_index.f && cli_npy_write_header(s->out_index.f, "<i8", s->B, w)) return -1;
    if (s->out_score.f && cli_npy_write_header(s->out_score.f, "<f4", s->B, w)) return -1;
    if (s->out_pos.f && cli_npy_write_header(s->out_pos.f, "<f4", s->B, 0)) return -1;
    return stage_trace_headers(s);
}

void stage_abort(stage *s) {
    cli_output_abort(&s->out);
    cli_output_abort(&s->out_index);
    cli_output_abort(&s->out_score);
    cli_output_abort(&s->out_pos);
    cli_output_abort(&s->prov);
    for (int i = 0; i < 6; i++) cli_output_abort(&s->trace[i]);
}

int stage_commit(stage *s) {
    stage_trace_ids(s);
    if (cli_output_commit(&s->trace[4]) || cli_output_commit(&s->trace[5]) ||
        cli_output_commit(&s->out) || cli_output_commit(&s->out_index) ||
        cli_output_commit(&s->out_score) || cli_output_commit(&s->out_pos) ||
        cli_output_commit(&s->trace[0]) || cli_output_commit(&s->trace[1]) ||
        cli_output_commit(&s->trace[2]) || cli_output_commit(&s->trace[3]) ||
        cli_output_commit(&s->prov)) {
        stage_abort(s);
        return -1;
    }
    return 0;
}

int stage_load_positives(stage *s, int64_t qrows, int64_t crows) {
    stage_opts *o = s->o;
    if (s->qt) { /* the JSONL texts' "_id"s, taken over */
        s->qids = ((cli_texts *)s->qt)->ids;
        s->cids = ((cli_texts *)s->ct)->ids;
        memset(&((cli_texts *)s->qt)->ids, 0, sizeof(cli_ids));
        memset(&((cli_texts *)s->ct)->ids, 0, sizeof(cli_ids));
    } else if (cli_ids_load(&s->qids, o->query_ids, "query", qrows) ||
               cli_ids_load(&s->cids, o->corpus_ids, "corpus",
                            crows < 0 && !o->corpus_ids ? INT64_MAX / 4 : crows)) {
        return -1;
    }
    s->has_pos = 1;
    cli_unknown_ids u = {o->skip_unknown_ids, 0, 0, ""};
    int rc = 0;
    if (o->qrels) rc = cli_qrels_load(o->qrels, &s->qids, &s->cids, &u, &s->pos);
    else if (o->positives) rc = cli_positives_load(o->positives, &s->cids, qrows, &u, &s->pos);
    else if (o->paired) rc = cli_lists_paired(qrows, s->cids.rows, &s->pos);
    else s->has_pos = 0;
    if (!rc && u.skipped && !o->quiet)
        fprintf(stderr, "%s: --skip-unknown-ids: skipped %lld %s with unknown ids (first: %s "
                "line %lld, '%s')\n", cli_command, (long long)u.skipped,
                o->qrels ? "qrels lines" : "positives", o->qrels ? o->qrels : o->positives,
                (long long)u.first_line, u.first_id);
    return rc;
}

static int check_lib(ns_context *ctx, ns_status st, const char *what) {
    if (st == NS_OK) return 0;
    cli_error("%s failed: %s (%s)", what, ns_last_error(ctx), ns_status_string(st));
    return -1;
}

/* The device copies of one block's inputs and outputs (host pointers on a CPU context). */
typedef struct {
    const int64_t *cand_id;
    const float *cand_score, *pos_score, *guide_score, *guide_pos;
    int64_t *poff; /* the block's positive lists, rebased so poff[0] == 0 (same-id rule) */
    void *id, *sc, *ps, *poff_d, *pids, *keep, *idx, *osc, *cnt, *gs, *gp;
} block_bufs;

static int block_upload(stage *s, block_bufs *d, int64_t b0, int64_t nb) {
    ns_context *ctx = s->ctx;
    const stage_opts *o = s->o;
    if (s->has_pos && (o->filter.rules & NS_FILTER_SAME_ID)) {
        d->poff = malloc((size_t)(nb + 1) * 8);
        if (!d->poff) {
            cli_error("out of memory");
            return -1;
        }
        for (int64_t i = 0; i <= nb; i++) d->poff[i] = s->pos.offsets[b0 + i] - s->pos.offsets[b0];
    }
    size_t nidx = (size_t)(nb * s->C), nout = (size_t)(nb * o->m);
    int64_t npos = d->poff ? d->poff[nb] : 0;
    d->id = cli_dev_put(ctx, d->cand_id, nidx * 8);
    d->sc = cli_dev_put(ctx, d->cand_score, nidx * 4);
    d->ps = cli_dev_put(ctx, d->pos_score, (size_t)nb * 4);
    if (d->poff) {
        d->poff_d = cli_dev_put(ctx, d->poff, (size_t)(nb + 1) * 8);
        d->pids = cli_dev_put(ctx, s->pos.ids + s->pos.offsets[b0], (size_t)(npos ? npos : 1) * 8);
    }
    d->keep = o->filter.rules ? cli_dev_alloc(ctx, nidx) : NULL;
    d->idx = cli_dev_alloc(ctx, nout * 8);
    d->osc = cli_dev_alloc(ctx, nout * 4);
    d->cnt = cli_dev_alloc(ctx, (size_t)nb * 8);
    if (d->guide_score) {
        d->gs = cli_dev_put(ctx, d->guide_score, nidx * 4);
        d->gp = cli_dev_put(ctx, d->guide_pos, (size_t)nb * 4);
        if (!d->gs || !d->gp) return -1;
    }
    if (!d->id || !d->sc || !d->ps || (d->poff && (!d->poff_d || !d->pids)) ||
        (o->filter.rules && !d->keep) || !d->idx || !d->osc || !d->cnt)
        return -1;
    return 0;
}

static void block_release(stage *s, block_bufs *d, int64_t b0) {
    ns_context *ctx = s->ctx;
    cli_dev_free(ctx, d->id, d->cand_id);
    cli_dev_free(ctx, d->sc, d->cand_score);
    cli_dev_free(ctx, d->ps, d->pos_score);
    cli_dev_free(ctx, d->poff_d, d->poff);
    if (d->poff) cli_dev_free(ctx, d->pids, s->pos.ids + s->pos.offsets[b0]);
    cli_dev_free(ctx, d->keep, NULL);
    cli_dev_free(ctx, d->idx, NULL);
    cli_dev_free(ctx, d->osc, NULL);
    cli_dev_free(ctx, d->cnt, NULL);
    cli_dev_free(ctx, d->gs, d->guide_score);
    cli_dev_free(ctx, d->gp, d->guide_pos);
    free(d->poff);
}

static void add_counts(ns_filter_counts *t, const ns_filter_counts *c) {
    t->examined += c->examined;
    t->kept += c->kept;
    t->removed += c->removed;
    t->empty += c->empty;
    t->same_id += c->same_id;
    t->max_score += c->max_score;
    t->min_score += c->min_score;
    t->margin += c->margin;
    t->rel_margin += c->rel_margin;
    t->rank += c->rank;
    t->guide += c->guide;
}

/* The library names the field of a bad value (cand->score[t] (query q, column c)); the file
 * it came from is the stage's to name. The longest field name in the message wins
 * (cand->guide_positive_score before cand->positive_score). Query numbers are the block's,
 * which starts at row b0. */
static int check_block_lib(const stage *s, ns_status st, const char *what, int64_t b0) {
    if (st == NS_OK) return 0;
    static const char *const field[5] = {"cand->id[", "cand->score[", "cand->positive_score[",
                                         "cand->guide_score[", "cand->guide_positive_score["};
    const char *msg = ns_last_error(s->ctx);
    int best = -1;
    for (int f = 0; f < 5; f++)
        if (s->src_path[f] && strstr(msg, field[f]) &&
            (best < 0 || strlen(field[f]) > strlen(field[best])))
            best = f;
    if (best < 0) return check_lib(s->ctx, st, what);
    if (b0)
        cli_error("%s %s: %s (queries counted from row %lld; %s)", s->src_option[best],
                  s->src_path[best], msg, (long long)b0, ns_status_string(st));
    else
        cli_error("%s %s: %s (%s)", s->src_option[best], s->src_path[best], msg,
                  ns_status_string(st));
    return -1;
}

/* ns_filter_sample (one check of the data, then filter and sample per row; ns_sample alone
 * without filter rules) on the uploaded block; the results back in s->index/score/count. */
static int block_run(stage *s, block_bufs *d, int64_t b0, int64_t nb) {
    ns_context *ctx = s->ctx;
    const stage_opts *o = s->o;
    ns_id_lists plist = {d->poff_d, d->pids, nb};
    ns_candidates cand = {0};
    cand.queries = nb;
    cand.per_query = s->C;
    cand.id = d->id;
    cand.score = d->sc;
    cand.positive_score = d->ps;
    cand.positive_id = d->poff ? &plist : NULL;
    cand.query_offset = b0;
    cand.guide_score = d->gs;
    cand.guide_positive_score = d->gp;
    if (o->filter.rules) {
        ns_filter_counts fc;
        if (check_block_lib(s, ns_filter_sample(ctx, &cand, &o->filter, &o->sampler, o->m,
                                                d->keep, &fc, d->idx, d->osc, d->cnt),
                            "ns_filter_sample", b0))
            return -1;
        add_counts(&s->counts, &fc);
    } else if (check_block_lib(s, ns_sample(ctx, &cand, NULL, &o->sampler, o->m, d->idx, d->osc,
                                            d->cnt),
                               "ns_sample", b0)) {
        return -1;
    }
    if (cli_dev_get(ctx, s->index, d->idx, (size_t)(nb * o->m) * 8) ||
        cli_dev_get(ctx, s->score, d->osc, (size_t)(nb * o->m) * 4) ||
        cli_dev_get(ctx, s->count, d->cnt, (size_t)nb * 8))
        return -1;
    return 0;
}

/* A JSONL row's negatives: the hard ones, then the random ones, without the padding between
 * (in place: the padding moves to the end of the row). Returns how many. */
static int64_t row_compact(const stage *s, int64_t i, int64_t *idx, float *sc) {
    const int64_t m = s->o->m, k = s->count[i];
    if (!s->o->random_m) return k;
    const int64_t r = s->rcount[i];
    memmove(idx + k, idx + m, (size_t)r * 8);
    memmove(sc + k, sc + m, (size_t)r * 4);
    return k + r;
}

/* The block's JSONL rows and .npy rows; queries without positive become -1 / NaN rows. */
static void block_write(stage *s, int64_t b0, int64_t nb, const float *pos_score,
                        const uint8_t *valid) {
    const int64_t m = stage_width(s->o);
    for (int64_t i = 0; i < nb; i++) {
        int64_t *idx = s->index + i * m;
        float *sc = s->score + i * m;
        if (!valid[i]) {
            for (int64_t j = 0; j < m; j++) idx[j] = -1, sc[j] = NAN;
            s->count[i] = 0;
            s->no_pos_rows++;
            continue;
        }
        if (s->count[i] < s->o->m || (s->o->random_m && s->rcount[i] < s->o->random_m))
            s->short_rows++;
        if (!s->out.f) continue;
        int64_t *ri = idx;
        float *rs = sc;
        if (s->o->random_m) { /* the .npy keeps the columns: compact a copy */
            ri = s->index + nb * m;
            rs = s->score + nb * m;
            memcpy(ri, idx, (size_t)m * 8);
            memcpy(rs, sc, (size_t)m * 4);
        }
        const int64_t n = row_compact(s, i, ri, rs);
        if (s->qt) stage_write_text_jsonl(s, b0 + i, ri, rs, n);
        else stage_write_jsonl(s, b0 + i, ri, rs, n);
    }
    if (s->out_index.f) fwrite(s->index, 8, (size_t)(nb * m), s->out_index.f);
    if (s->out_score.f) fwrite(s->score, 4, (size_t)(nb * m), s->out_score.f);
    if (s->out_pos.f)
        for (int64_t i = 0; i < nb; i++) {
            float v = valid[i] && s->has_pos ? pos_score[i] : NAN;
            fwrite(&v, 4, 1, s->out_pos.f);
        }
}

int stage_block(stage *s, int64_t b0, int64_t nb, const int64_t *cand_id, const float *cand_score,
                const float *pos_score, const uint8_t *valid, const float *guide_score,
                const float *guide_pos) {
    block_bufs d;
    memset(&d, 0, sizeof d);
    d.cand_id = cand_id;
    d.cand_score = cand_score;
    d.pos_score = pos_score;
    d.guide_score = guide_score;
    d.guide_pos = guide_pos;
    int rc = block_upload(s, &d, b0, nb) || block_run(s, &d, b0, nb) ? -1 : 0;
    if (!rc && s->o->random_m) rc = stage_random_block(s, b0, nb, valid);
    if (!rc && s->o->trace)
        stage_write_trace(s, nb, cand_id, cand_score, pos_score, valid, guide_score, guide_pos, b0);
    if (!rc) block_write(s, b0, nb, pos_score, valid);
    block_release(s, &d, b0);
    return rc;
}

int stage_alloc(stage *s, int64_t nb) {
    const int64_t w = stage_width(s->o); /* one more row: block_write's JSONL copy */
    s->index = malloc((size_t)((nb + 1) * w) * 8);
    s->score = malloc((size_t)((nb + 1) * w) * 4);
    s->count = malloc((size_t)nb * 8);
    if (!s->index || !s->score || !s->count) {
        cli_error("out of memory for a block of %lld queries", (long long)nb);
        return -1;
    }
    return 0;
}

void stage_free(stage *s) {
    free(s->index);
    free(s->score);
    free(s->count);
    free(s->pos_each);
    stage_random_free(s);
    cli_lists_free(&s->pos);
    cli_ids_free(&s->qids);
    cli_ids_free(&s->cids);
    if (s->ctx) ns_context_destroy(s->ctx);
}

int stage_context(stage *s) {
    return cli_context_create_on(s->o->backend, s->o->threads, s->o->device, &s->ctx);
}

void stage_summary(const stage *s, const char *what, double secs) {
    if (s->o->quiet) return;
    fprintf(stderr, "%s: %lld queries, %lld candidates each, %s in %.2fs\n", cli_command,
            (long long)s->B, (long long)s->C, what, secs);
    if (s->o->filter.rules) {
        const ns_filter_counts *c = &s->counts;
        fprintf(stderr,
                "%s: filter kept %lld of %lld candidates (removed: same-id %lld, max-score %lld, "
                "min-score %lld, margin %lld, rel-margin %lld, rank %lld, guide %lld; empty "
                "slots %lld)\n",
                cli_command, (long long)c->kept, (long long)c->examined, (long long)c->same_id,
                (long long)c->max_score, (long long)c->min_score, (long long)c->margin,
                (long long)c->rel_margin, (long long)c->rank, (long long)c->guide,
                (long long)c->empty);
    }
    if (s->short_rows)
        fprintf(stderr, "%s: %lld queries have fewer than %lld negatives (padded with -1)%s\n",
                cli_command, (long long)s->short_rows, (long long)s->o->m,
                s->o->format == FMT_ST && s->o->out ? "; left out of the st JSONL" : "");
    if (s->skipped_queries)
        fprintf(stderr, "%s: %lld queries without a positive in %s were left out\n", cli_command,
                (long long)s->skipped_queries, s->o->qrels ? s->o->qrels : "the positives");
    if (s->no_pos_rows)
        fprintf(stderr, "%s: %lld queries have no positive and were skipped (-1 rows)\n",
                cli_command, (long long)s->no_pos_rows);
    if (s->o->out)
        fprintf(stderr, "%s: wrote %lld JSONL rows to %s\n", cli_command,
                (long long)s->jsonl_rows, s->o->out);
    if (cli_json_bad_bytes)
        fprintf(stderr, "%s: ids held %lld bytes that are not UTF-8; JSONL has each as \\u00XX\n",
                cli_command, (long long)cli_json_bad_bytes);
}
