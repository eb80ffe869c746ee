/* Id files: one id per line, line i = row i; a hash table from id to row. */
#define _POSIX_C_SOURCE 200809L
#include "cli.h"

#include <ctype.h>
#include <stdlib.h>
#include <string.h>

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
    char *text = cli_read_text(path, &len);
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

void cli_ids_write_json(FILE *f, const cli_ids *ids, int64_t r) {
    if (ids->path) cli_json_string(f, ids->id[r], strlen(ids->id[r]));
    else fprintf(f, "%lld", (long long)r);
}
