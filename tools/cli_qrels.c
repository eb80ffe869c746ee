/* Positives per query as CSR lists of corpus rows: BEIR/TREC qrels, positives files, aligned
 * pairs, and the exclusion lists built from them. */
#define _POSIX_C_SOURCE 200809L
#include "cli.h"

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

int cli_qrels_load(const char *path, const cli_ids *qids, const cli_ids *cids, cli_lists *out) {
    char *text = cli_read_text(path, NULL);
    if (!text) return -1;
    int64_t line = 0;
    pair_list pairs = {NULL, NULL, 0, 0};
    int rc = -1;
    char *p = text;
    while (p && *p) {
        char *eol = strchr(p, '\n');
        if (eol) *eol = '\0';
        line++;
        size_t l = strlen(p);
        if (l && p[l - 1] == '\r') p[--l] = '\0';
        char *f[5];
        int nf = l ? split_fields(p, f, 5) : 0;
        char *next = eol ? eol + 1 : NULL;
        if (nf == 0) {
            p = next;
            continue;
        }
        if (nf < 2 || nf > 4) {
            cli_error("%s: line %lld has %d fields; expected 'query-id<TAB>corpus-id<TAB>score' "
                      "(BEIR) or TREC's 4 columns",
                      path, (long long)line, nf);
            goto done;
        }
        const char *qs = f[0], *cs = nf == 4 ? f[2] : f[1];
        const char *ss = nf == 2 ? NULL : f[nf - 1];
        char *end = NULL;
        double score = ss ? strtod(ss, &end) : 1.0;
        if (ss && (end == ss || *end)) {
            if (line == 1) { /* a header line ("query-id corpus-id score") */
                p = next;
                continue;
            }
            cli_error("%s: line %lld: score '%s' is not a number", path, (long long)line, ss);
            goto done;
        }
        int64_t q = cli_ids_find(qids, qs, strlen(qs));
        if (q < 0) {
            if (qids->path)
                cli_error("%s: line %lld: query id '%s' is not in %s", path, (long long)line, qs,
                          qids->path);
            else
                cli_error("%s: line %lld: query id '%s' is not a query row number (0..%lld); pass "
                          "--query-ids FILE to map ids to rows",
                          path, (long long)line, qs, (long long)qids->rows - 1);
            goto done;
        }
        int64_t c = cli_ids_find(cids, cs, strlen(cs));
        if (c < 0) {
            if (cids->path)
                cli_error("%s: line %lld: corpus id '%s' is missing from the corpus (%s)", path,
                          (long long)line, cs, cids->path);
            else
                cli_error("%s: line %lld: corpus id '%s' is not a corpus row number (0..%lld); "
                          "pass --corpus-ids FILE to map ids to rows",
                          path, (long long)line, cs, (long long)cids->rows - 1);
            goto done;
        }
        if (score > 0) {
            if (pairs_push(&pairs, q, c, path)) goto done;
        }
        p = next;
    }
    if (pairs.n == 0) {
        cli_error("%s: holds no positive pair (score > 0)", path);
        goto done;
    }
    rc = lists_from_pairs(pairs.q, pairs.c, pairs.n, qids->rows, out);
done:
    free(pairs.q);
    free(pairs.c);
    free(text);
    return rc;
}

int cli_positives_load(const char *path, const cli_ids *cids, int64_t queries, cli_lists *out) {
    char *text = cli_read_text(path, NULL);
    if (!text) return -1;
    int64_t line = 0;
    pair_list pairs = {NULL, NULL, 0, 0};
    int rc = -1;
    char *p = text;
    while (p && *p) {
        char *eol = strchr(p, '\n');
        if (eol) *eol = '\0';
        if (line == queries) {
            if (strspn(p, " \t\r\n,") != strlen(p) || (eol && strspn(eol + 1, " \t\r\n,") !=
                                                                  strlen(eol + 1))) {
                cli_error("%s: has more lines than the %lld queries", path, (long long)queries);
                goto done;
            }
            break;
        }
        char *s = p;
        for (;;) {
            s += strspn(s, " \t\r,");
            if (!*s) break;
            size_t l = strcspn(s, " \t\r,");
            int64_t c = cli_ids_find(cids, s, l);
            if (c < 0) {
                cli_error("%s: line %lld: corpus id '%.*s' is missing from the corpus (%s)", path,
                          (long long)line + 1, (int)l, s,
                          cids->path ? cids->path : "ids are row numbers");
                goto done;
            }
            if (pairs_push(&pairs, line, c, path)) goto done;
            s += l;
        }
        line++;
        p = eol ? eol + 1 : NULL;
    }
    rc = lists_from_pairs(pairs.q, pairs.c, pairs.n, queries, out);
done:
    free(pairs.q);
    free(pairs.c);
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
