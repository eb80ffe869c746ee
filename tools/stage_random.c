/* --random-negatives M: after the m hard negatives of a block, M corpus rows per query drawn
 * without replacement by weight^alpha over the whole corpus (ns_sample_corpus), never one of
 * the query's positives or of its chosen hard negatives (both are the draw's exclusion list).
 * The draw is keyed by --seed and the global query row, so it does not depend on --batch or
 * the backend. Rows widen from m to m + M columns: hard ones (-1 padded) then random ones. */
#define _GNU_SOURCE
#include "stage.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

int stage_random_open(stage *s, int64_t rows) {
    const stage_opts *o = s->o;
    if (!o->random_m) return 0;
    int64_t n = rows;
    if (o->weights) {
        if (cli_npy_read_f32(o->weights, &s->weights)) return -1;
        const int64_t wn = s->weights.shape[0] * s->weights.shape[1];
        if (s->weights.ndim != 1 && s->weights.shape[1] != 1) {
            cli_error("%s: weights must be one column (one weight per corpus row); it is %lld x "
                      "%lld", o->weights, (long long)s->weights.shape[0],
                      (long long)s->weights.shape[1]);
            return -1;
        }
        if (n >= 0 && wn != n) {
            cli_error("%s holds %lld weights but the corpus has %lld rows", o->weights,
                      (long long)wn, (long long)n);
            return -1;
        }
        n = wn;
    }
    if (n < 0 && o->corpus_ids) n = s->cids.rows;
    if (n < 0) {
        cli_error("--random-negatives needs the corpus size: pass --weights or --corpus-ids");
        return -1;
    }
    if (o->random_m > n) {
        cli_error("--random-negatives (%lld) is larger than the corpus (%lld rows)",
                  (long long)o->random_m, (long long)n);
        return -1;
    }
    s->corpus_rows = n;
    s->rcount = malloc((size_t)(s->B + 1) * 8); /* any block's count and list offsets */
    s->xoff = malloc((size_t)(s->B + 1) * 8);
    if (!s->rcount || !s->xoff) {
        cli_error("out of memory for %lld queries", (long long)s->B);
        return -1;
    }
    if (o->weights && !(s->weights_d = cli_dev_put(s->ctx, s->weights.data, (size_t)n * 4)))
        return -1;
    return 0;
}

/* The exclusion lists of the block: query i's own row (mine --exclude-self), its positives,
 * then its chosen hard negatives. */
static int build_exclusions(stage *s, int64_t b0, int64_t nb) {
    const int64_t m = s->o->m;
    int64_t need = 0;
    for (int64_t i = 0; i < nb; i++)
        need += s->count[i] + s->random_exclude_self +
                (s->has_pos ? s->pos.offsets[b0 + i + 1] - s->pos.offsets[b0 + i] : 0);
    if (need > s->xcap || !s->xids) {
        int64_t *x = realloc(s->xids, (size_t)(need ? need : 1) * 8);
        if (!x) {
            cli_error("out of memory for the exclusion lists of %lld queries", (long long)nb);
            return -1;
        }
        s->xids = x;
        s->xcap = need;
    }
    int64_t at = 0;
    s->xoff[0] = 0;
    for (int64_t i = 0; i < nb; i++) {
        if (s->random_exclude_self) s->xids[at++] = b0 + i;
        if (s->has_pos)
            for (int64_t p = s->pos.offsets[b0 + i]; p < s->pos.offsets[b0 + i + 1]; p++)
                s->xids[at++] = s->pos.ids[p];
        for (int64_t k = 0; k < s->count[i]; k++) s->xids[at++] = s->index[i * m + k];
        s->xoff[i + 1] = at;
    }
    return 0;
}

/* Rows of m columns → rows of m + M columns, from the last row back (in place). */
static void widen_rows(stage *s, int64_t nb, const int64_t *ridx) {
    const int64_t m = s->o->m, M = s->o->random_m, w = m + M;
    for (int64_t i = nb - 1; i >= 0; i--) {
        memmove(s->index + i * w, s->index + i * m, (size_t)m * 8);
        memmove(s->score + i * w, s->score + i * m, (size_t)m * 4);
        for (int64_t j = 0; j < M; j++) {
            s->index[i * w + m + j] = ridx[i * M + j];
            s->score[i * w + m + j] = NAN;
        }
    }
}

int stage_random_block(stage *s, int64_t b0, int64_t nb, const uint8_t *valid) {
    (void)valid; /* rows without positive are blanked by block_write */
    ns_context *ctx = s->ctx;
    const int64_t M = s->o->random_m;
    if (build_exclusions(s, b0, nb)) return -1;
    int64_t *ridx = malloc((size_t)(nb * M) * 8);
    void *off_d = cli_dev_put(ctx, s->xoff, (size_t)(nb + 1) * 8);
    void *ids_d = cli_dev_put(ctx, s->xids, (size_t)(s->xoff[nb] ? s->xoff[nb] : 1) * 8);
    void *idx_d = cli_dev_alloc(ctx, (size_t)(nb * M) * 8);
    void *cnt_d = cli_dev_alloc(ctx, (size_t)nb * 8);
    int rc = -1;
    if (!ridx || !off_d || !ids_d || !idx_d || !cnt_d) {
        if (!ridx) cli_error("out of memory for a block of %lld queries", (long long)nb);
        goto done;
    }
    ns_corpus_weights cw = {(const float *)s->weights_d, s->corpus_rows};
    ns_id_lists ex = {off_d, ids_d, nb};
    ns_corpus_sampler_options co = NS_CORPUS_SAMPLER_OPTIONS_INIT;
    co.alpha = s->o->random_alpha;
    co.seed = s->o->sampler.seed;
    co.step = s->o->sampler.step;
    co.query_offset = b0;
    ns_status st = ns_sample_corpus(ctx, &cw, &ex, &co, nb, M, idx_d, cnt_d);
    if (st != NS_OK) {
        cli_error("ns_sample_corpus failed: %s (%s)", ns_last_error(ctx), ns_status_string(st));
        goto done;
    }
    if (cli_dev_get(ctx, ridx, idx_d, (size_t)(nb * M) * 8) ||
        cli_dev_get(ctx, s->rcount, cnt_d, (size_t)nb * 8))
        goto done;
    widen_rows(s, nb, ridx);
    rc = 0;
done:
    cli_dev_free(ctx, off_d, s->xoff);
    cli_dev_free(ctx, ids_d, s->xids);
    cli_dev_free(ctx, idx_d, NULL);
    cli_dev_free(ctx, cnt_d, NULL);
    free(ridx);
    return rc;
}

void stage_random_free(stage *s) {
    if (s->weights_d) cli_dev_free(s->ctx, s->weights_d, s->weights.data);
    free(s->weights.data);
    free(s->rcount);
    free(s->xoff);
    free(s->xids);
    s->weights_d = NULL;
    s->weights.data = NULL;
    s->rcount = s->xoff = s->xids = NULL;
}
