/* JSONL rows with the texts joined in (inputs from BEIR / HF JSONL): sentence-transformers
 * (anchor, positive, negative_1..n), Tevatron ({docid, title, text} passages) and FlagEmbedding
 * ({query, pos, neg}). A passage's text for st and flag is "title text" (the title and a space
 * left out when the title is empty); Tevatron keeps them apart. */
#define _GNU_SOURCE
#include "stage.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static void str(FILE *f, const char *s) { cli_json_string(f, s, strlen(s)); }

/* The passage of corpus row r as one JSON string: title and text joined by a space. */
static void passage(FILE *f, const cli_texts *c, int64_t r) {
    const char *t = c->title[r], *b = c->body[r];
    if (!*t) {
        str(f, b);
        return;
    }
    size_t nt = strlen(t), nb = strlen(b);
    char *s = malloc(nt + nb + 2);
    if (!s) { /* out of memory: the text alone rather than a broken row */
        str(f, b);
        return;
    }
    memcpy(s, t, nt);
    s[nt] = ' ';
    memcpy(s + nt + 1, b, nb + 1);
    cli_json_string(f, s, nt + 1 + nb);
    free(s);
}

/* {"docid": id, "title": t, "text": x[, "score": s]} of corpus row r (score NULL: none). */
static void tevatron_passage(FILE *f, const stage *s, int64_t r, const float *score) {
    fputs("{\"docid\": ", f);
    str(f, s->cids.id[r]);
    fputs(", \"title\": ", f);
    str(f, s->ct->title[r]);
    fputs(", \"text\": ", f);
    str(f, s->ct->body[r]);
    if (score) {
        fputs(", \"score\": ", f);
        cli_json_float(f, *score);
    }
    fputc('}', f);
}

/* Tevatron's training rows; every negative passage carries its mining score (as the id-only
 * tevatron rows do: Tevatron's readers keep only the keys they know), the positives theirs with
 * --with-scores (null where none was computed). */
static void write_tevatron(stage *s, int64_t q, const int64_t *idx, const float *sc, int64_t n) {
    FILE *f = s->out.f;
    int64_t pb = s->pos.offsets[q], pe = s->pos.offsets[q + 1];
    const float *pos_sc = s->pos_each ? s->pos_each + pb : NULL;
    const float nan_score = NAN;
    fputs("{\"query_id\": ", f);
    str(f, s->qids.id[q]);
    fputs(", \"query\": ", f);
    str(f, s->qt->body[q]);
    fputs(", \"positive_passages\": [", f);
    for (int64_t p = pb; p < pe; p++) {
        if (p > pb) fputs(", ", f);
        const float *ps = !s->o->with_scores ? NULL : pos_sc ? &pos_sc[p - pb] : &nan_score;
        tevatron_passage(f, s, s->pos.ids[p], ps);
    }
    fputs("], \"negative_passages\": [", f);
    for (int64_t j = 0; j < n; j++) {
        if (j) fputs(", ", f);
        tevatron_passage(f, s, idx[j], &sc[j]);
    }
    fputs("]}\n", f);
    s->jsonl_rows++;
}

static void write_flag(stage *s, int64_t q, const int64_t *idx, const float *sc, int64_t n) {
    FILE *f = s->out.f;
    int64_t pb = s->pos.offsets[q], pe = s->pos.offsets[q + 1];
    const float *pos_sc = s->pos_each ? s->pos_each + pb : NULL;
    fputs("{\"query\": ", f);
    str(f, s->qt->body[q]);
    fputs(", \"pos\": [", f);
    for (int64_t p = pb; p < pe; p++) {
        if (p > pb) fputs(", ", f);
        passage(f, s->ct, s->pos.ids[p]);
    }
    fputs("], \"neg\": [", f);
    for (int64_t j = 0; j < n; j++) {
        if (j) fputs(", ", f);
        passage(f, s->ct, idx[j]);
    }
    fputc(']', f);
    if (s->o->with_scores) {
        fputs(", \"pos_scores\": [", f);
        for (int64_t p = pb; p < pe; p++) {
            if (p > pb) fputs(", ", f);
            if (pos_sc) cli_json_float(f, pos_sc[p - pb]);
            else fputs("null", f);
        }
        fputs("], \"neg_scores\": [", f);
        for (int64_t j = 0; j < n; j++) {
            if (j) fputs(", ", f);
            cli_json_float(f, sc[j]);
        }
        fputc(']', f);
    }
    fputs("}\n", f);
    s->jsonl_rows++;
}

/* One (anchor, positive, negative_1..n) row per positive of the query. */
static void write_st(stage *s, int64_t q, const int64_t *idx, const float *sc, int64_t n) {
    FILE *f = s->out.f;
    if (n < stage_width(s->o)) return; /* n-tuples need every column */
    int64_t pb = s->pos.offsets[q], pe = s->pos.offsets[q + 1];
    const float *pos_sc = s->pos_each ? s->pos_each + pb : NULL;
    for (int64_t p = pb; p < pe; p++) {
        fputs("{\"anchor\": ", f);
        str(f, s->qt->body[q]);
        fputs(", \"positive\": ", f);
        passage(f, s->ct, s->pos.ids[p]);
        for (int64_t j = 0; j < n; j++) {
            fprintf(f, ", \"negative_%lld\": ", (long long)j + 1);
            passage(f, s->ct, idx[j]);
        }
        if (s->o->with_scores) { /* sentence-transformers' output_scores: [positive, negatives] */
            fputs(", \"scores\": [", f);
            if (pos_sc) cli_json_float(f, pos_sc[p - pb]);
            else fputs("null", f);
            for (int64_t j = 0; j < n; j++) {
                fputs(", ", f);
                cli_json_float(f, sc[j]);
            }
            fputc(']', f);
        }
        fputs("}\n", f);
        s->jsonl_rows++;
    }
}

void stage_write_text_jsonl(stage *s, int64_t q, const int64_t *idx, const float *sc, int64_t n) {
    switch (s->o->format) {
    case FMT_TEVATRON: write_tevatron(s, q, idx, sc, n); return;
    case FMT_FLAG: write_flag(s, q, idx, sc, n); return;
    case FMT_ST: write_st(s, q, idx, sc, n); return;
    default: stage_write_jsonl(s, q, idx, sc, n); return;
    }
}
