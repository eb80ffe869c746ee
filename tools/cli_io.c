/* File formats the command line reads: embeddings (.npy via the library's memory map, .fvecs),
 * whole .npy arrays (candidate matrices), id files, BEIR qrels, positive lists, gzip CSV. */
#define _POSIX_C_SOURCE 200809L
#include "cli.h"

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

/* ------------------------------------------------------------------ messages, option values */

const char *cli_command = "negsamp";

void cli_error(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "%s: ", cli_command);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

int cli_usage_error(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "%s: ", cli_command);
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n(run '%s --help' for the options)\n", cli_command);
    va_end(ap);
    return CLI_USAGE;
}

int cli_parse_i64(const char *opt, const char *s, int64_t lo, int64_t hi, int64_t *out) {
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || end == s || *end) {
        cli_usage_error("%s expects an integer, got '%s'", opt, s);
        return -1;
    }
    if (v < lo || v > hi) {
        cli_usage_error("%s (%lld) must be in [%lld, %lld]", opt, v, (long long)lo, (long long)hi);
        return -1;
    }
    *out = v;
    return 0;
}

int cli_parse_u64(const char *opt, const char *s, uint64_t *out) {
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 0);
    if (errno || end == s || *end || s[0] == '-') {
        cli_usage_error("%s expects a non-negative integer, got '%s'", opt, s);
        return -1;
    }
    *out = v;
    return 0;
}

int cli_parse_f32(const char *opt, const char *s, float *out) {
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || v != v || v > 3.4e38 || v < -3.4e38) {
        cli_usage_error("%s expects a finite number, got '%s'", opt, s);
        return -1;
    }
    *out = (float)v;
    return 0;
}

/* ------------------------------------------------------------------ whole files */

/* Reads a file into a NUL-terminated buffer. */
static char *read_text(const char *path, size_t *len_out) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        cli_error("%s: cannot open: %s", path, strerror(errno));
        return NULL;
    }
    size_t cap = 1 << 16, len = 0;
    char *buf = malloc(cap + 1);
    for (;;) {
        if (!buf) break;
        size_t n = fread(buf + len, 1, cap - len, f);
        len += n;
        if (len < cap) break;
        cap *= 2;
        char *nb = realloc(buf, cap + 1);
        if (!nb) {
            free(buf);
            buf = NULL;
            break;
        }
        buf = nb;
    }
    int err = ferror(f);
    fclose(f);
    if (!buf) {
        cli_error("%s: out of memory reading the file", path);
        return NULL;
    }
    if (err) {
        cli_error("%s: read error", path);
        free(buf);
        return NULL;
    }
    buf[len] = '\0';
    if (len_out) *len_out = len;
    return buf;
}

static float f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h >> 15) << 31, exp = (h >> 10) & 31, man = h & 1023, bits;
    if (exp == 0) {
        if (man == 0) bits = sign;
        else { /* subnormal: normalise */
            int e = -1;
            do { man <<= 1; e++; } while (!(man & 1024));
            bits = sign | ((uint32_t)(127 - 15 - e) << 23) | ((man & 1023) << 13);
        }
    } else if (exp == 31) bits = sign | 0x7f800000u | (man << 13);
    else bits = sign | ((exp + 112) << 23) | (man << 13);
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

/* ------------------------------------------------------------------ embeddings */

static int ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && strcmp(s + n - m, suffix) == 0;
}

static int fvecs_load(const char *path, cli_embeddings *e) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        cli_error("%s: cannot open: %s", path, strerror(errno));
        return -1;
    }
    if (fseeko(f, 0, SEEK_END) != 0) {
        cli_error("%s: cannot seek: %s", path, strerror(errno));
        fclose(f);
        return -1;
    }
    int64_t size = (int64_t)ftello(f);
    rewind(f);
    int32_t d;
    if (size < 4 || fread(&d, 4, 1, f) != 1) {
        cli_error("%s: empty or truncated .fvecs (no dimension in the first 4 bytes)", path);
        fclose(f);
        return -1;
    }
    if (d < 1 || d > (1 << 20)) {
        cli_error("%s: .fvecs dimension %d of row 0 is not in [1, 1048576]; is this an .fvecs file?",
                  path, (int)d);
        fclose(f);
        return -1;
    }
    int64_t row_bytes = 4 + 4 * (int64_t)d;
    if (size % row_bytes != 0) {
        cli_error("%s: truncated .fvecs: %lld bytes is not a whole number of rows of dimension %d "
                  "(%lld bytes each)",
                  path, (long long)size, (int)d, (long long)row_bytes);
        fclose(f);
        return -1;
    }
    int64_t rows = size / row_bytes;
    float *data = malloc((size_t)(rows * d) * sizeof(float));
    if (!data) {
        cli_error("%s: out of memory for %lld × %d floats", path, (long long)rows, (int)d);
        fclose(f);
        return -1;
    }
    for (int64_t r = 0; r < rows; r++) {
        int32_t dr = d;
        if ((r > 0 && fread(&dr, 4, 1, f) != 1) ||
            fread(data + r * d, 4, (size_t)d, f) != (size_t)d) {
            cli_error("%s: read error at row %lld", path, (long long)r);
            free(data);
            fclose(f);
            return -1;
        }
        if (dr != d) {
            cli_error("%s: row %lld has dimension %d but row 0 has %d", path, (long long)r,
                      (int)dr, (int)d);
            free(data);
            fclose(f);
            return -1;
        }
    }
    fclose(f);
    e->owned = data;
    e->m.data = data;
    e->m.dtype = NS_F32;
    e->m.rows = rows;
    e->m.cols = d;
    e->m.ld = d;
    return 0;
}

int cli_embeddings_load(const char *path, cli_embeddings *e) {
    memset(e, 0, sizeof(*e));
    e->path = path;
    if (ends_with(path, ".fvecs")) return fvecs_load(path, e);
    if (!ends_with(path, ".npy")) {
        cli_error("%s: unknown embedding format; expected a .npy or .fvecs file", path);
        return -1;
    }
    ns_status st = ns_npy_open(path, &e->npy);
    if (st != NS_OK) {
        const char *msg = ns_last_error(NULL);
        if (strstr(msg, path)) cli_error("%s", msg);
        else cli_error("%s: %s", path, msg);
        e->npy = NULL;
        return -1;
    }
    e->m = ns_npy_matrix(e->npy);
    if (e->m.rows < 1) {
        cli_error("%s: holds no rows", path);
        cli_embeddings_free(e);
        return -1;
    }
    return 0;
}

void cli_embeddings_free(cli_embeddings *e) {
    if (e->npy) ns_npy_close(e->npy);
    free(e->owned);
    e->npy = NULL;
    e->owned = NULL;
}

void cli_embeddings_row(const cli_embeddings *e, int64_t r, float *out) {
    int64_t ld = e->m.ld ? e->m.ld : e->m.cols;
    if (e->m.dtype == NS_F32) {
        memcpy(out, (const float *)e->m.data + r * ld, (size_t)e->m.cols * sizeof(float));
        return;
    }
    const uint16_t *h = (const uint16_t *)e->m.data + r * ld;
    for (int64_t c = 0; c < e->m.cols; c++) {
        if (e->m.dtype == NS_F16) out[c] = f16_to_f32(h[c]);
        else {
            uint32_t bits = (uint32_t)h[c] << 16;
            memcpy(&out[c], &bits, 4);
        }
    }
}

/* ------------------------------------------------------------------ .npy arrays */

/* Reads the whole array through the library's checked reader (ns_npy_open_array: the same
 * header, shape and size checks as every .npy input), then copies it out of the mapping. */
int cli_npy_read(const char *path, cli_array *a) {
    memset(a, 0, sizeof(*a));
    ns_npy_file *f = NULL;
    if (ns_npy_open_array(path, &f) != NS_OK) {
        const char *msg = ns_last_error(NULL);
        if (strstr(msg, path)) cli_error("%s", msg);
        else cli_error("%s: %s", path, msg);
        return -1;
    }
    ns_npy_array arr;
    ns_npy_get_array(f, &arr);
    static const cli_kind kinds[] = {CLI_F32, CLI_F16, CLI_I32, CLI_I64};
    static const size_t sizes[] = {4, 2, 4, 8};
    a->kind = kinds[arr.dtype];
    a->ndim = arr.ndim;
    a->shape[0] = arr.rows;
    a->shape[1] = arr.cols;
    /* The library checked rows · cols · size against the file: it neither overflows nor
     * exceeds the bytes mapped. */
    size_t need = (size_t)arr.rows * (size_t)arr.cols * sizes[arr.dtype];
    a->data = malloc(need ? need : 1);
    if (!a->data) {
        cli_error("%s: out of memory for %zu bytes", path, need);
        ns_npy_close(f);
        return -1;
    }
    if (need) memcpy(a->data, arr.data, need);
    ns_npy_close(f);
    return 0;
}

int cli_array_to_i64(const char *path, cli_array *a) {
    int64_t n = a->shape[0] * a->shape[1];
    if (a->kind == CLI_I64) return 0;
    if (a->kind != CLI_I32) {
        cli_error("%s: holds floats; expected an integer (<i8 or <i4) index matrix", path);
        return -1;
    }
    int64_t *out = malloc((size_t)(n ? n : 1) * 8);
    if (!out) {
        cli_error("%s: out of memory", path);
        return -1;
    }
    for (int64_t i = 0; i < n; i++) out[i] = ((const int32_t *)a->data)[i];
    free(a->data);
    a->data = out;
    a->kind = CLI_I64;
    return 0;
}

int cli_array_to_f32(const char *path, cli_array *a) {
    int64_t n = a->shape[0] * a->shape[1];
    if (a->kind == CLI_F32) return 0;
    if (a->kind != CLI_F16) {
        cli_error("%s: holds integers; expected a float (<f4 or <f2) score array", path);
        return -1;
    }
    float *out = malloc((size_t)(n ? n : 1) * 4);
    if (!out) {
        cli_error("%s: out of memory", path);
        return -1;
    }
    for (int64_t i = 0; i < n; i++) out[i] = f16_to_f32(((const uint16_t *)a->data)[i]);
    free(a->data);
    a->data = out;
    a->kind = CLI_F32;
    return 0;
}

/* ------------------------------------------------------------------ ids */

static uint64_t hash_bytes(const char *s, size_t n) {
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)s[i]) * 1099511628211ull;
    return h;
}

int cli_ids_load(cli_ids *ids, const char *path, const char *what, int64_t rows) {
    memset(ids, 0, sizeof(*ids));
    ids->path = path;
    ids->what = what;
    ids->rows = rows;
    if (!path) return 0;
    size_t len;
    char *text = read_text(path, &len);
    if (!text) return -1;
    ids->text = text;
    if (rows < 0) { /* count the ids: non-blank lines */
        rows = 0;
        for (const char *q = text; *q;) {
            size_t l = strcspn(q, "\n");
            if (strspn(q, " \t\r") < l) rows++;
            q += l + (q[l] == '\n');
        }
        ids->rows = rows;
    }
    ids->id = calloc((size_t)rows + 1, sizeof(char *));
    ids->slots = 16;
    while (ids->slots < 2 * rows) ids->slots *= 2;
    ids->slot = calloc((size_t)ids->slots, sizeof(int64_t));
    if (!ids->id || !ids->slot) {
        cli_error("%s: out of memory", path);
        cli_ids_free(ids);
        return -1;
    }
    int64_t n = 0, line = 0;
    char *p = text;
    while (*p) {
        char *eol = strchr(p, '\n');
        if (eol) *eol = '\0';
        line++;
        size_t l = strlen(p);
        if (l && p[l - 1] == '\r') p[--l] = '\0';
        /* Blank lines only at the end: an id per line, line i = row i. */
        if (l == 0) {
            char *q = eol ? eol + 1 : p + l;
            while (*q == '\n' || *q == '\r' || *q == ' ' || *q == '\t') q++;
            if (*q) {
                cli_error("%s: line %lld is empty; expected one %s id per line (line i = row i)",
                          path, (long long)line, what);
                cli_ids_free(ids);
                return -1;
            }
            break;
        }
        if (n == rows) {
            cli_error("%s: has more than %lld ids but the %s embeddings have %lld rows", path,
                      (long long)rows, what, (long long)rows);
            cli_ids_free(ids);
            return -1;
        }
        uint64_t s = hash_bytes(p, l) & (uint64_t)(ids->slots - 1);
        while (ids->slot[s]) {
            const char *o = ids->id[ids->slot[s] - 1];
            if (strcmp(o, p) == 0) {
                cli_error("%s: line %lld: %s id '%s' appears twice (first at line %lld)", path,
                          (long long)line, what, p, (long long)ids->slot[s]);
                cli_ids_free(ids);
                return -1;
            }
            s = (s + 1) & (uint64_t)(ids->slots - 1);
        }
        ids->id[n] = p;
        ids->slot[s] = n + 1;
        n++;
        if (!eol) break;
        p = eol + 1;
    }
    if (n != rows) {
        cli_error("%s: has %lld ids but the %s embeddings have %lld rows", path, (long long)n,
                  what, (long long)rows);
        cli_ids_free(ids);
        return -1;
    }
    return 0;
}

void cli_ids_free(cli_ids *ids) {
    free(ids->id);
    free(ids->slot);
    free(ids->text);
    ids->id = NULL;
    ids->slot = NULL;
    ids->text = NULL;
}

int64_t cli_ids_find(const cli_ids *ids, const char *id, size_t n) {
    if (!ids->path) {
        if (n == 0 || n > 18) return -1;
        int64_t v = 0;
        for (size_t i = 0; i < n; i++) {
            if (!isdigit((unsigned char)id[i])) return -1;
            v = v * 10 + (id[i] - '0');
        }
        return v < ids->rows ? v : -1;
    }
    uint64_t s = hash_bytes(id, n) & (uint64_t)(ids->slots - 1);
    while (ids->slot[s]) {
        const char *o = ids->id[ids->slot[s] - 1];
        if (strlen(o) == n && memcmp(o, id, n) == 0) return ids->slot[s] - 1;
        s = (s + 1) & (uint64_t)(ids->slots - 1);
    }
    return -1;
}

void cli_json_string(FILE *f, const char *s, size_t n) {
    fputc('"', f);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\') {
            fputc('\\', f);
            fputc(c, f);
        } else if (c < 0x20) {
            fprintf(f, "\\u%04x", c);
        } else {
            fputc(c, f);
        }
    }
    fputc('"', f);
}

void cli_ids_write_json(FILE *f, const cli_ids *ids, int64_t r) {
    if (ids->path) cli_json_string(f, ids->id[r], strlen(ids->id[r]));
    else fprintf(f, "%lld", (long long)r);
}

/* ------------------------------------------------------------------ positive lists */

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
    char *text = read_text(path, NULL);
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
    char *text = read_text(path, NULL);
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

/* ------------------------------------------------------------------ gzip CSV */

int cli_csv_read(const char *path, double **values, int64_t *rows, int64_t *cols) {
    gzFile g = gzopen(path, "rb"); /* reads plain files too */
    if (!g) {
        cli_error("%s: cannot open: %s", path, strerror(errno));
        return -1;
    }
    int64_t cap = 1 << 16, n = 0, r = 0, c0 = -1;
    double *v = malloc((size_t)cap * sizeof(double));
    char line[1 << 16];
    while (v && gzgets(g, line, sizeof line)) {
        size_t l = strlen(line);
        if (l == sizeof line - 1 && line[l - 1] != '\n') {
            cli_error("%s: line %lld is longer than %zu bytes", path, (long long)r + 1,
                      sizeof line - 2);
            free(v);
            gzclose(g);
            return -1;
        }
        if (strspn(line, " \t\r\n") == l) continue;
        int64_t c = 0;
        char *p = line;
        for (;;) {
            char *end;
            double x = strtod(p, &end);
            if (end == p) {
                cli_error("%s: line %lld, field %lld is not a number", path, (long long)r + 1,
                          (long long)c + 1);
                free(v);
                gzclose(g);
                return -1;
            }
            if (n == cap) {
                cap *= 2;
                double *nv = realloc(v, (size_t)cap * sizeof(double));
                if (!nv) {
                    free(v);
                    v = NULL;
                    break;
                }
                v = nv;
            }
            v[n++] = x;
            c++;
            p = end + strspn(end, " \t\r");
            if (*p == ',') p++;
            else break;
        }
        if (!v) break;
        if (c0 < 0) c0 = c;
        else if (c != c0) {
            cli_error("%s: line %lld has %lld fields but line 1 has %lld", path, (long long)r + 1,
                      (long long)c, (long long)c0);
            free(v);
            gzclose(g);
            return -1;
        }
        r++;
    }
    int errnum = 0;
    const char *zmsg = gzerror(g, &errnum);
    if (!v || errnum < 0) {
        cli_error("%s: %s", path, !v ? "out of memory" : zmsg);
        free(v);
        gzclose(g);
        return -1;
    }
    gzclose(g);
    if (r == 0) {
        cli_error("%s: holds no rows", path);
        free(v);
        return -1;
    }
    *values = v;
    *rows = r;
    *cols = c0;
    return 0;
}
