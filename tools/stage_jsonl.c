/* JSONL rows of the stage: ids, sentence-transformers (st) and Tevatron formats. */
#define _GNU_SOURCE
#include "stage.h"

#include <math.h>
#include <string.h>

/* Writes the id as a JSON string always (Tevatron's docids are strings). */
static void write_json_id_string(FILE *f, const cli_ids *ids, int64_t r) {
    if (ids->path) cli_json_string(f, ids->id[r], strlen(ids->id[r]));
    else fprintf(f, "\"%lld\"", (long long)r);
}

void stage_write_jsonl(stage *s, int64_t q, const int64_t *idx, const float *sc, int64_t n) {
    FILE *f = s->out.f;
    const stage_opts *o = s->o;
    int64_t pb = s->has_pos ? s->pos.offsets[q] : 0, pe = s->has_pos ? s->pos.offsets[q + 1] : 0;
    if (o->format == FMT_TEVATRON) {
        fputs("{\"query_id\": ", f);
        write_json_id_string(f, &s->qids, q);
        fputs(", \"positive_passages\": [", f);
        for (int64_t p = pb; p < pe; p++) {
            fputs(p > pb ? ", {\"docid\": " : "{\"docid\": ", f);
            write_json_id_string(f, &s->cids, s->pos.ids[p]);
            fputc('}', f);
        }
        fputs("], \"negative_passages\": [", f);
        for (int64_t j = 0; j < n; j++) {
            fputs(j ? ", {\"docid\": " : "{\"docid\": ", f);
            write_json_id_string(f, &s->cids, idx[j]);
            fputs(", \"score\": ", f);
            cli_json_float(f, sc[j]);
            fputc('}', f);
        }
        fputs("]}\n", f);
        s->jsonl_rows++;
        return;
    }
    if (o->format == FMT_ST && n < stage_width(o)) return; /* n-tuples need every column */
    /* One row per (query, positive); a query without positives gets "positive": null. */
    int64_t rows = s->has_pos ? pe - pb : 1;
    for (int64_t r = 0; r < rows; r++) {
        fputs("{\"query\": ", f);
        cli_ids_write_json(f, &s->qids, q);
        fputs(", \"positive\": ", f);
        if (s->has_pos) cli_ids_write_json(f, &s->cids, s->pos.ids[pb + r]);
        else fputs("null", f);
        if (o->format == FMT_ST) {
            for (int64_t j = 0; j < n; j++) {
                fprintf(f, ", \"negative_%lld\": ", (long long)j + 1);
                cli_ids_write_json(f, &s->cids, idx[j]);
            }
        } else {
            fputs(", \"negatives\": [", f);
            for (int64_t j = 0; j < n; j++) {
                if (j) fputs(", ", f);
                cli_ids_write_json(f, &s->cids, idx[j]);
            }
            fputs("], \"scores\": [", f);
            for (int64_t j = 0; j < n; j++) {
                if (j) fputs(", ", f);
                cli_json_float(f, sc[j]);
            }
            fputc(']', f);
        }
        fputs("}\n", f);
        s->jsonl_rows++;
    }
}
