/* With texts (a BEIR folder, JSONL), queries.jsonl holds the queries of every split, and only
 * those with a positive in the chosen qrels are written: `negsamp mine` keeps just those rows
 * (embeddings, guide embeddings, ids, texts, positives), in file order, before it mines, so a
 * split of 43 queries among 500k costs 43 queries of mining. */
#define _GNU_SOURCE
#include "mine_beir.h"

#include <stdlib.h>
#include <string.h>

/* The rows sel[0..n) of e into a buffer of its own (dtype kept, ld = cols). */
static int gather_rows(cli_embeddings *e, const int64_t *sel, int64_t n) {
    size_t esz = e->m.dtype == NS_F32 ? 4 : 2, row = (size_t)e->m.cols * esz;
    int64_t ld = e->m.ld ? e->m.ld : e->m.cols;
    char *buf = malloc(row * (size_t)(n ? n : 1));
    if (!buf) {
        cli_error("%s: out of memory for %lld rows", e->path, (long long)n);
        return -1;
    }
    for (int64_t i = 0; i < n; i++)
        memcpy(buf + row * (size_t)i, (const char *)e->m.data + (size_t)(sel[i] * ld) * esz, row);
    free(e->owned);
    e->owned = (float *)(void *)buf;
    e->m.data = buf;
    e->m.rows = n;
    e->m.ld = e->m.cols;
    return 0;
}

/* Ids, texts and positive lists of the kept rows (in place: sel[i] >= i). */
static int compact(stage *s, cli_texts *qt, const int64_t *sel, int64_t n) {
    char **id = malloc(sizeof(char *) * (size_t)(n ? n : 1));
    int64_t *line = malloc(sizeof(int64_t) * (size_t)(n ? n : 1));
    if (!id || !line) {
        free(id);
        free(line);
        cli_error("out of memory for %lld query ids", (long long)n);
        return -1;
    }
    int64_t *off = s->pos.offsets, *ids = s->pos.ids, w = 0;
    for (int64_t i = 0; i < n; i++) {
        id[i] = s->qids.id[sel[i]];
        line[i] = s->qids.line[sel[i]];
        qt->title[i] = qt->title[sel[i]];
        qt->body[i] = qt->body[sel[i]];
        int64_t b = off[sel[i]], e = off[sel[i] + 1];
        off[i] = w;
        memmove(ids + w, ids + b, (size_t)(e - b) * sizeof(int64_t));
        w += e - b;
    }
    off[n] = w;
    qt->rows = n;
    cli_ids old = s->qids;
    int rc = cli_ids_adopt(&s->qids, old.path, old.what, n, id, line);
    cli_ids_free(&old);
    free(id);
    free(line);
    return rc;
}

int mine_keep_positive_queries(stage *s, cli_embeddings *Q, cli_embeddings *GQ,
                               cli_texts *qt) {
    int64_t B = s->B, n = 0;
    int64_t *sel = malloc(sizeof(int64_t) * (size_t)(B ? B : 1));
    if (!sel) {
        cli_error("out of memory for %lld query rows", (long long)B);
        return -1;
    }
    for (int64_t q = 0; q < B; q++)
        if (s->pos.offsets[q] < s->pos.offsets[q + 1]) sel[n++] = q;
    int rc = 0;
    if (n == 0) {
        cli_error("no query of %s has a positive in %s (do the qrels' query ids match the "
                  "JSONL's \"_id\"s?)", qt->path, s->o->qrels ? s->o->qrels : "the positives");
        rc = -1;
    } else if (n < B) {
        rc = gather_rows(Q, sel, n) || (GQ->m.data && gather_rows(GQ, sel, n)) ||
                     compact(s, qt, sel, n)
                 ? -1
                 : 0;
        s->B = n;
        s->skipped_queries = B - n;
    }
    free(sel);
    return rc;
}
