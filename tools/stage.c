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
        (o->out_positive_score && cli_output_open(&s->out_pos, o->out_positive_score, o->force)))
        return -1;
    return 0;
}

int stage_write_headers(stage *s) {
    if (s->out_index.f && cli_npy_write_header(s->out_index.f, "<i8", s->B, s->o->m)) return -1;
    if (s->out_score.f && cli_npy_write_header(s->out_score.f, "<f4", s->B, s->o->m)) return -1;
    if (s->out_pos.f && cli_npy_write_header(s->out_pos.f, "<f4", s->B, 0)) return -1;
    return 0;
}

void stage_abort(stage *s) {
    cli_output_abort(&s->out);
    cli_output_abort(&s->out_index);
    cli_output_abort(&s->out_score);
    cli_output_abort(&s->out_pos);
}

int stage_commit(stage *s) {
    if (cli_output_commit(&s->out) || cli_output_commit(&s->out_index) ||
        cli_output_commit(&s->out_score) || cli_output_commit(&s->out_pos)) {
        stage_abort(s);
        return -1;
    }
    return 0;
}

int stage_load_positives(stage *s, int64_t qrows, int64_t crows) {
    stage_opts *o = s->o;
    if (cli_ids_load(&s->qids, o->query_ids, "query", qrows)) return -1;
    if (cli_ids_load(&s->cids, o->corpus_ids, "corpus", crows < 0 && !o->corpus_ids ? INT64_MAX / 4 : crows))
        return -1;
    s->has_pos = 1;
    if (o->qrels) return cli_qrels_load(o->qrels, &s->qids, &s->cids, &s->pos);
    if (o->positives) return cli_positives_load(o->positives, &s->cids, qrows, &s->pos);
    if (o->paired) return cli_lists_paired(qrows, s->cids.rows, &s->pos);
    s->has_pos = 0;
    return 0;
}

static int check_lib(ns_context *ctx, ns_status st, const char *what) {
    if (st == NS_OK) return 0;
    cli_error("%s failed: %s (%s)", what, ns_last_error(ctx), ns_status_string(st));
    return -1;
}

/* Filter → sample → write for queries [b0, b0+nb). cand_id/cand_score/pos_score are the block's
 * host arrays (nb×C, nb×C, nb). valid[i] = 0 marks a query without positive (blank output). */
int stage_block(stage *s, int64_t b0, int64_t nb, const int64_t *cand_id,
                       const float *cand_score, const float *pos_score, const uint8_t *valid,
                       const float *guide_score, const float *guide_pos) {
    ns_context *ctx = s->ctx;
    const stage_opts *o = s->o;
    int64_t C = s->C, m = o->m;
    int rc = -1;
    void *d_id = NULL, *d_sc = NULL, *d_ps = NULL, *d_poff = NULL, *d_pids = NULL,
         *d_keep = NULL, *d_idx = NULL, *d_osc = NULL, *d_cnt = NULL, *d_gs = NULL, *d_gp = NULL;
    /* The block's positive lists, rebased so offsets[0] == 0. */
    int64_t *poff = NULL;
    ns_id_lists plist = {0};
    if (s->has_pos && (o->filter.rules & NS_FILTER_SAME_ID)) {
        poff = malloc((size_t)(nb + 1) * 8);
        if (!poff) goto oom;
        for (int64_t i = 0; i <= nb; i++) poff[i] = s->pos.offsets[b0 + i] - s->pos.offsets[b0];
    }
    size_t nidx = (size_t)(nb * C);
    int64_t npos = poff ? poff[nb] : 0;
    d_id = cli_dev_put(ctx, cand_id, nidx * 8);
    d_sc = cli_dev_put(ctx, cand_score, nidx * 4);
    d_ps = cli_dev_put(ctx, pos_score, (size_t)nb * 4);
    d_poff = poff ? cli_dev_put(ctx, poff, (size_t)(nb + 1) * 8) : NULL;
    d_pids = poff ? cli_dev_put(ctx, s->pos.ids + s->pos.offsets[b0], (size_t)(npos ? npos : 1) * 8)
                  : NULL;
    d_keep = o->filter.rules ? cli_dev_alloc(ctx, nidx) : NULL;
    d_idx = cli_dev_alloc(ctx, (size_t)(nb * m) * 8);
    d_osc = cli_dev_alloc(ctx, (size_t)(nb * m) * 4);
    d_cnt = cli_dev_alloc(ctx, (size_t)nb * 8);
    if (guide_score) {
        d_gs = cli_dev_put(ctx, guide_score, nidx * 4);
        d_gp = cli_dev_put(ctx, guide_pos, (size_t)nb * 4);
        if (!d_gs || !d_gp) goto done;
    }
    if (!d_id || !d_sc || !d_ps || (poff && (!d_poff || !d_pids)) ||
        (o->filter.rules && !d_keep) || !d_idx || !d_osc || !d_cnt)
        goto done;
    plist.offsets = d_poff;
    plist.ids = d_pids;
    plist.queries = nb;
    ns_candidates cand = {0};
    cand.queries = nb;
    cand.per_query = C;
    cand.id = d_id;
    cand.score = d_sc;
    cand.positive_score = d_ps;
    cand.positive_id = poff ? &plist : NULL;
    cand.query_offset = b0;
    cand.guide_score = d_gs;
    cand.guide_positive_score = d_gp;
    if (o->filter.rules) {
        ns_filter_counts fc;
        if (check_lib(ctx, ns_filter(ctx, &cand, &o->filter, d_keep, &fc), "ns_filter")) goto done;
        s->counts.examined += fc.examined;
        s->counts.kept += fc.kept;
        s->counts.removed += fc.removed;
        s->counts.empty += fc.empty;
        s->counts.same_id += fc.same_id;
        s->counts.max_score += fc.max_score;
        s->counts.min_score += fc.min_score;
        s->counts.margin += fc.margin;
        s->counts.rel_margin += fc.rel_margin;
        s->counts.rank += fc.rank;
        s->counts.guide += fc.guide;
    }
    if (check_lib(ctx, ns_sample(ctx, &cand, d_keep, &o->sampler, m, d_idx, d_osc, d_cnt),
                  "ns_sample"))
        goto done;
    if (cli_dev_get(ctx, s->index, d_idx, (size_t)(nb * m) * 8) ||
        cli_dev_get(ctx, s->score, d_osc, (size_t)(nb * m) * 4) ||
        cli_dev_get(ctx, s->count, d_cnt, (size_t)nb * 8))
        goto done;
    for (int64_t i = 0; i < nb; i++) {
        int64_t *idx = s->index + i * m;
        float *sc = s->score + i * m;
        if (!valid[i]) {
            for (int64_t j = 0; j < m; j++) idx[j] = -1, sc[j] = NAN;
            s->count[i] = 0;
            s->no_pos_rows++;
            continue;
        }
        if (s->count[i] < m) s->short_rows++;
        if (s->out.f) stage_write_jsonl(s, b0 + i, idx, sc, s->count[i]);
    }
    if (s->out_index.f) fwrite(s->index, 8, (size_t)(nb * m), s->out_index.f);
    if (s->out_score.f) fwrite(s->score, 4, (size_t)(nb * m), s->out_score.f);
    if (s->out_pos.f)
        for (int64_t i = 0; i < nb; i++) {
            float v = valid[i] && s->has_pos ? pos_score[i] : NAN;
            fwrite(&v, 4, 1, s->out_pos.f);
        }
    rc = 0;
    goto done;
oom:
    cli_error("out of memory");
done:
    cli_dev_free(ctx, d_id, cand_id);
    cli_dev_free(ctx, d_sc, cand_score);
    cli_dev_free(ctx, d_ps, pos_score);
    cli_dev_free(ctx, d_poff, poff);
    if (poff) cli_dev_free(ctx, d_pids, s->pos.ids + s->pos.offsets[b0]);
    cli_dev_free(ctx, d_keep, NULL);
    cli_dev_free(ctx, d_idx, NULL);
    cli_dev_free(ctx, d_osc, NULL);
    cli_dev_free(ctx, d_cnt, NULL);
    cli_dev_free(ctx, d_gs, guide_score);
    cli_dev_free(ctx, d_gp, guide_pos);
    free(poff);
    return rc;
}

int stage_alloc(stage *s, int64_t nb) {
    s->index = malloc((size_t)(nb * s->o->m) * 8);
    s->score = malloc((size_t)(nb * s->o->m) * 4);
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
    cli_lists_free(&s->pos);
    cli_ids_free(&s->qids);
    cli_ids_free(&s->cids);
    if (s->ctx) ns_context_destroy(s->ctx);
}

int stage_context(stage *s) {
    ns_context_options co = NS_CONTEXT_OPTIONS_INIT;
    co.backend = s->o->backend;
    co.threads = s->o->threads;
    ns_status st = ns_context_create(&s->ctx, &co);
    if (st != NS_OK) {
        cli_error("cannot create a %s context: %s", s->o->backend == NS_BACKEND_CUDA ? "CUDA" :
                  s->o->backend == NS_BACKEND_CPU ? "CPU" : "auto", ns_last_error(NULL));
        return -1;
    }
    return 0;
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
    if (s->no_pos_rows)
        fprintf(stderr, "%s: %lld queries have no positive and were skipped (-1 rows)\n",
                cli_command, (long long)s->no_pos_rows);
    if (s->o->out)
        fprintf(stderr, "%s: wrote %lld JSONL rows to %s\n", cli_command,
                (long long)s->jsonl_rows, s->o->out);
}
