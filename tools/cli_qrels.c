/* Positives per query as CSR lists of corpus rows: BEIR/TREC qrels, positives files, aligned
 * pairs, and the exclusion lists built from them. */
#define _POSIX_C_SOURCE 200809L
#include "cli.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void cli_lists_free(cli_lists *l) {
    free(l->offsets);
    free(l->ids);
    l->offsets = NULL;
    l->ids = NULL;
}

static int cmp_i64(const void *a, const void *b) {
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

/* Builds sorted, unique CSR lists from (query, corpus) pairs. */
static int lists_from_pairs(const int64_t *pq, const int64_t *pc, int64_t n, int64_t queries,
                            cli_lists *out) {
    out->queries = queries;
    out->offsets = calloc((size_t)queries + 1, sizeof(int64_t));
    out->ids = malloc((size_t)(n ? n : 1) * sizeof(int64_t));
    int64_t *fill = calloc((size_t)queries + 1, sizeof(int64_t));
    if (!out->offsets || !out->ids || !fill) {
        free(fill);
        cli_lists_free(out);
        cli_error("out of memory for %lld positives", (long long)n);
        return -1;
    }
    for (int64_t i = 0; i < n; i++) out->offsets[pq[i] + 1]++;
    for (int64_t q = 0; q < queries; q++) out->offsets[q + 1] += out->offsets[q];
    for (int64_t i = 0; i < n; i++) out->ids[out->offsets[pq[i]] + fill[pq[i]]++] = pc[i];
    /* sort + unique per query, compacting */
    int64_t w = 0;
    for (int64_t q = 0; q < queries; q++) {
        int64_t b = out->offsets[q], e = out->offsets[q + 1];
        qsort(out->ids + b, (size_t)(e - b), sizeof(int64_t), cmp_i64);
        out->offsets[q] = w;
        for (int64_t i = b; i < e; i++)
            if (i == b || out->ids[i] != out->ids[i - 1]) out->ids[w++] = out->ids[i];
    }
    out->offsets[queries] = w;
    free(fill);
    return 0;
}

/* (query, corpus) pairs collected while a positives file is read. */
typedef struct {
    int64_t *q, *c, n, cap;
} pair_list;

static int pairs_push(pair_list *l, int64_t q, int64_t c, const char *path) {
    if (l->n == l->cap) {
        int64_t cap = l->cap ? 2 * l->cap : 1024;
        int64_t *a = realloc(l->q, (size_t)cap * 8);
        if (a) l->q = a;
        int64_t *b = a ? realloc(l->c, (size_t)cap * 8) : NULL;
        if (b) l->c = b;
        if (!a || !b) {
            cli_error("%s: out of memory", path);
            return -1;
        }
        l->cap = cap;
    }
    l->q[l->n] = q;
    l->c[l->n] = c;
    l->n++;
    return 0;
}

/* Splits s at tabs, or at runs of spaces when the line has no tab. */
static int split_fields(char *s, char **f, int max) {
    int n = 0;
    int tabs = strchr(s, '\t') != NULL;
    while (*s && n < max) {
        if (!tabs) while (*s == ' ') s++;
        if (!*s) break;
        f[n++] = s;
        char *e = tabs ? strchr(s, '\t') : strchr(s, ' ');
        if (!e) break;
        *e = '\0';
        s = e + 1;
    }
    return n;
}

/* An id a positives file names that is not known: skipped and counted with --skip-unknown-ids,
 * else the message and -1. what/names: "query"/"query id", rows for row-number ids. */
static int unknown_id(cli_unknown_ids *u, const char *path, int64_t line, const cli_ids *ids,
                      const char *id, size_t len) {
    if (u->skip) {
        if (u->skipped++ == 0) {
            u->first_line = line;
            snprintf(u->first_id, sizeof u->first_id, "%.*s", (int)(len < 60 ? len : 60), id);
        }
        return 0;
    }
    const char *hint = "; pass --skip-unknown-ids to skip such lines";
    if (ids->path)
        cli_error("%s: line %lld: %s id '%.*s' is not in %s%s", path, (long long)line, ids->what,
                  (int)len, id, ids->path, hint);
    else
        cli_error("%s: line %lld: %s id '%.*s' is not a %s row number (0..%lld); pass "
                  "--%s-ids FILE to map ids to rows%s", path, (long long)line, ids->what,
                  (int)len, id, ids->what, (long long)ids->rows - 1, ids->what, hint);
    return -1;
}

/* One qrels line split into fields: 0 when it is blank or the header, 1 with *q, *c, *score,
 * -1 with a message. */
static int qrels_fields(char *s, size_t l, int64_t line, const char *path, char **q, char **c,
                        double *score) {
    char *f[5];
    int nf = l ? split_fields(s, f, 5) : 0;
    if (nf == 0) return 0;
    if (nf < 2 || nf > 4) {
        cli_error("%s: line %lld has %d fields; expected 'query-id<TAB>corpus-id<TAB>score' "
                  "(BEIR) or TREC's 4 columns", path, (long long)line, nf);
        return -1;
    }
    size_t ql = strlen(f[0]), cl = strlen(f[nf == 4 ? 2 : 1]);
    *q = cli_trim(f[0], &ql);
    *c = cli_trim(f[nf == 4 ? 2 : 1], &cl);
    const char *ss = nf == 2 ? NULL : f[nf - 1];
    char *end = NULL;
    *score = ss ? strtod(ss, &end) : 1.0;
    if (ss && (end == ss || *end)) {
        if (line == 1) return 0; /* a header line ("query-id corpus-id score") */
        cli_error("%s: line %lld: score '%s' is not a number", path, (long long)line, ss);
        return -1;
    }
    return 1;
}

int cli_qrels_parse(char *text, const char *path, const cli_ids *qids, const cli_ids *cids,
                    cli_unknown_ids *u, cli_lists *out) {
    pair_list pairs = {NULL, NULL, 0, 0};
    int64_t line = 0;
    int rc = -1;
    char *p = cli_skip_bom(text), *s, *qs, *cs;
    size_t l;
    double score;
    while ((s = cli_next_line(&p, &l)) != NULL) {
        int r = qrels_fields(s, l, ++line, path, &qs, &cs, &score);
        if (r < 0) goto done;
        if (r == 0) continue;
        int64_t q = cli_ids_find(qids, qs, strlen(qs)), c = cli_ids_find(cids, cs, strlen(cs));
        if (q < 0 || c < 0) {
            if (q < 0 ? unknown_id(u, path, line, qids, qs, strlen(qs))
                      : unknown_id(u, path, line, cids, cs, strlen(cs)))
                goto done;
            continue;
        }
        if (score > 0 && pairs_push(&pairs, q, c, path)) goto done;
    }
    if (pairs.n == 0) {
        cli_error("%s: holds no positive pair (score > 0)%s", path,
                  u->skipped ? " with known ids" : "");
        goto done;
    }
    rc = lists_from_pairs(pairs.q, pairs.c, pairs.n, qids->rows, out);
done:
    free(pairs.q);
    free(pairs.c);
    return rc;
}

int cli_qrels_load(const char *path, const cli_ids *qids, const cli_ids *cids, cli_unknown_ids *u,
                   cli_lists *out) {
    char *text = cli_read_text(path, NULL);
    if (!text) return -1;
    int rc = cli_qrels_parse(text, path, qids, cids, u, out);
    free(text);
    return rc;
}

int cli_positives_parse(char *text, const char *path, const cli_ids *cids, int64_t queries,
                        cli_unknown_ids *u, cli_lists *out) {
    pair_list pairs = {NULL, NULL, 0, 0};
    int64_t line = 0;
    int rc = -1;
    char *p = cli_skip_bom(text), *s;
    size_t l;
    while ((s = cli_next_line(&p, &l)) != NULL) {
        if (line == queries) {
            if (strspn(s, " \t,") != l || strspn(p, " \t\r\n,") != strlen(p)) {
                cli_error("%s: has more lines than the %lld queries", path, (long long)queries);
                goto done;
            }
            break;
        }
        for (;;) {
            s += strspn(s, " \t\r,");
            if (!*s) break;
            size_t n = strcspn(s, " \t\r,");
            int64_t c = cli_ids_find(cids, s, n);
            if (c < 0 ? unknown_id(u, path, line + 1, cids, s, n) : pairs_push(&pairs, line, c, path))
                goto done;
            s += n;
        }
        line++;
    }
    rc = lists_from_pairs(pairs.q, pairs.c, pairs.n, queries, out);
done:
    free(pairs.q);
    free(pairs.c);
    return rc;
}

int cli_positives_load(const char *path, const cli_ids *cids, int64_t queries, cli_unknown_ids *u,
                       cli_lists *out) {
    char *text = cli_read_text(path, NULL);
    if (!text) return -1;
    int rc = cli_positives_parse(text, path, cids, queries, u, out);
    free(text);
    return rc;
}

int cli_lists_paired(int64_t queries, int64_t corpus_rows, cli_lists *out) {
    if (queries > corpus_rows) {
        cli_error("--paired: %lld queries but only %lld corpus rows (query i's positive is corpus "
                  "row i)",
                  (long long)queries, (long long)corpus_rows);
        return -1;
    }
    out->queries = queries;
    out->offsets = malloc((size_t)(queries + 1) * 8);
    out->ids = malloc((size_t)queries * 8);
    if (!out->offsets || !out->ids) {
        cli_lists_free(out);
        cli_error("out of memory");
        return -1;
    }
    for (int64_t i = 0; i <= queries; i++) out->offsets[i] = i;
    for (int64_t i = 0; i < queries; i++) out->ids[i] = i;
    return 0;
}

int cli_lists_with_self(const cli_lists *a, int64_t queries, int self, cli_lists *out) {
    int64_t n = (a && a->ids ? a->offsets[queries] : 0) + (self ? queries : 0);
    int64_t *pq = malloc((size_t)(n ? n : 1) * 8), *pc = malloc((size_t)(n ? n : 1) * 8);
    if (!pq || !pc) {
        free(pq);
        free(pc);
        cli_error("out of memory");
        return -1;
    }
    int64_t w = 0;
    for (int64_t q = 0; q < queries; q++) {
        if (a && a->ids)
            for (int64_t i = a->offsets[q]; i < a->offsets[q + 1]; i++) pq[w] = q, pc[w++] = a->ids[i];
        if (self) pq[w] = q, pc[w++] = q;
    }
    int rc = lists_from_pairs(pq, pc, w, queries, out);
    free(pq);
    free(pc);
    return rc;
}
