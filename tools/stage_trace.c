/* --trace PREFIX: what `negsamp inspect` reads of a run. Per query row and candidate column:
 * the candidate (corpus row, -1 empty), its score, and its decision: the NS_FILTER_* bits of
 * every rule that removed it (the library's own rule function, ns_filter_hits, plus the same-id
 * lists), STAGE_KEPT when no rule did, STAGE_SAMPLED when the sampler took it; and s+ per
 * query (NaN without positive; such rows have decision 0). */
#define _GNU_SOURCE
#include "stage.h"

#include <math.h>
#include <string.h>

#include "ns_math.h"

int stage_trace_headers(stage *s) {
    if (!s->o->trace) return 0;
    if (cli_npy_write_header(s->trace[0].f, "<i8", s->B, s->C) ||
        cli_npy_write_header(s->trace[1].f, "<f4", s->B, s->C) ||
        cli_npy_write_header(s->trace[2].f, "<i4", s->B, s->C) ||
        cli_npy_write_header(s->trace[3].f, "<f4", s->B, 0))
        return -1;
    return 0;
}

/* The decision of candidate column j of block row i. */
static int32_t decision(const stage *s, int64_t i, int64_t j, int64_t q, const int64_t *cand,
                        const float *score, const float *ps, const float *g, const float *gp) {
    const stage_opts *o = s->o;
    int64_t t = i * s->C + j, id = cand[t];
    if (id < 0) return 0;
    unsigned hit = o->filter.rules ? ns_filter_hits(&o->filter, score[t], ps ? ps[i] : 0.f,
                                                    g ? g[t] : 0.f, gp ? gp[i] : 0.f, j)
                                   : 0u;
    if ((o->filter.rules & NS_FILTER_SAME_ID) && s->has_pos)
        for (int64_t p = s->pos.offsets[q]; p < s->pos.offsets[q + 1]; p++)
            if (s->pos.ids[p] == id) hit |= NS_FILTER_SAME_ID;
    if (hit) return (int32_t)hit;
    int32_t d = STAGE_KEPT;
    for (int64_t k = 0; k < s->count[i]; k++)
        if (s->index[i * stage_width(o) + k] == id) d |= STAGE_SAMPLED;
    return d;
}

void stage_write_trace(stage *s, int64_t nb, const int64_t *cand_id, const float *cand_score,
                       const float *pos_score, const uint8_t *valid, const float *guide_score,
                       const float *guide_pos, int64_t b0) {
    int64_t C = s->C;
    fwrite(cand_id, 8, (size_t)(nb * C), s->trace[0].f);
    for (int64_t t = 0; t < nb * C; t++)
        if (cand_id[t] >= s->trace_rows) s->trace_rows = cand_id[t] + 1;
    fwrite(cand_score, 4, (size_t)(nb * C), s->trace[1].f);
    for (int64_t i = 0; i < nb; i++) {
        for (int64_t j = 0; j < C; j++) {
            int32_t d = valid[i] ? decision(s, i, j, b0 + i, cand_id, cand_score, pos_score,
                                            guide_score, guide_pos)
                                 : 0;
            fwrite(&d, 4, 1, s->trace[2].f);
        }
        float v = valid[i] && s->has_pos ? pos_score[i] : NAN;
        fwrite(&v, 4, 1, s->trace[3].f);
    }
}

static void write_ids(FILE *f, const cli_ids *ids, int64_t rows) {
    for (int64_t r = 0; r < rows; r++) {
        if (ids->path) fputs(ids->id[r], f);
        else fprintf(f, "%lld", (long long)r);
        fputc('\n', f);
    }
}

void stage_trace_ids(stage *s) {
    if (!s->o->trace) return;
    write_ids(s->trace[4].f, &s->qids, s->B);
    /* without corpus ids (sample) the rows are not known: those the candidates name */
    write_ids(s->trace[5].f, &s->cids, s->cids.path || s->cids.rows < INT64_MAX / 8
                                            ? s->cids.rows : s->trace_rows);
}
