/* Id files: one id per line, line i = row i (a UTF-8 BOM, CRLF and spaces or tabs around an id
 * are not part of it); a hash table from id to row. */
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

/* Non-blank lines of text (the rows when no embeddings count them). */
static int64_t count_ids(const char *text) {
    int64_t rows = 0;
    for (const char *q = text; *q;) {
        size_t l = strcspn(q, "\n");
        if (strspn(q, " \t\r") < l) rows++;
        q += l + (q[l] == '\n');
    }
    return rows;
}

/* Adds id (line `line`) as row ids->rows_seen; -1 with a message when it is there already. */
static int add_id(cli_ids *ids, char *id, size_t len, int64_t n, int64_t line) {
    uint64_t s = hash_bytes(id, len) & (uint64_t)(ids->slots - 1);
    while (ids->slot[s]) {
        const char *o = ids->id[ids->slot[s] - 1];
        if (strcmp(o, id) == 0) {
            cli_error("%s: line %lld: %s id '%s' appears twice (first at line %lld)", ids->path,
                      (long long)line, ids->what, id, (long long)ids->line[ids->slot[s] - 1]);
            return -1;
        }
        s = (s + 1) & (uint64_t)(ids->slots - 1);
    }
    ids->id[n] = id;
    ids->line[n] = line;
    ids->slot[s] = n + 1;
    return 0;
}

/* An empty table for rows ids: the id and line arrays and a hash of at least 2·rows slots. */
static int ids_init(cli_ids *ids, const char *path, const char *what, int64_t rows) {
    memset(ids, 0, sizeof(*ids));
    ids->path = path;
    ids->what = what;
    ids->rows = rows;
    ids->slots = 16;
    while (ids->slots < 2 * rows) ids->slots *= 2;
    ids->id = calloc((size_t)rows + 1, sizeof(char *));
    ids->line = calloc((size_t)rows + 1, sizeof(int64_t));
    ids->slot = calloc((size_t)ids->slots, sizeof(int64_t));
    if (!ids->id || !ids->line || !ids->slot) {
        cli_error("%s: out of memory for %lld ids", path, (long long)rows);
        cli_ids_free(ids);
        return -1;
    }
    return 0;
}

int cli_ids_parse(cli_ids *ids, const char *path, const char *what, int64_t rows, char *text) {
    char *p = cli_skip_bom(text);
    if (rows < 0) rows = count_ids(p);
    if (ids_init(ids, path, what, rows)) {
        free(text); /* the table owns text once set: free it here, as cli_ids_free would */
        return -1;
    }
    ids->text = text;
    int64_t n = 0, line = 0;
    size_t l;
    for (char *s; (s = cli_next_line(&p, &l)) != NULL;) {
        line++;
        s = cli_trim(s, &l);
        if (l == 0) { /* blank lines only at the end: an id per line, line i = row i */
            if (strspn(p, " \t\r\n") == strlen(p)) break;
            cli_error("%s: line %lld is empty; expected one %s id per line (line i = row i)",
                      path, (long long)line, what);
            cli_ids_free(ids);
            return -1;
        }
        if (n == rows) {
            cli_error("%s: has more than %lld ids but the %s embeddings have %lld rows", path,
                      (long long)rows, what, (long long)rows);
            cli_ids_free(ids);
            return -1;
        }
        if (add_id(ids, s, l, n++, line)) {
            cli_ids_free(ids);
            return -1;
        }
    }
    if (n != rows) {
        cli_error("%s: has %lld ids but the %s embeddings have %lld rows", path, (long long)n,
                  what, (long long)rows);
        cli_ids_free(ids);
        return -1;
    }
    return 0;
}

int cli_ids_adopt(cli_ids *ids, const char *path, const char *what, int64_t rows, char **id,
                  int64_t *line) {
    if (ids_init(ids, path, what, rows)) return -1;
    for (int64_t r = 0; r < rows; r++)
        if (add_id(ids, id[r], strlen(id[r]), r, line[r])) {
            cli_ids_free(ids);
            return -1;
        }
    return 0;
}

int cli_ids_load(cli_ids *ids, const char *path, const char *what, int64_t rows) {
    memset(ids, 0, sizeof(*ids));
    ids->path = path;
    ids->what = what;
    ids->rows = rows;
    if (!path) return 0;
    char *text = cli_read_text(path, NULL);
    return text ? cli_ids_parse(ids, path, what, rows, text) : -1;
}

void cli_ids_free(cli_ids *ids) {
    free(ids->id);
    free(ids->slot);
    free(ids->line);
    free(ids->text);
    ids->id = NULL;
    ids->slot = NULL;
    ids->line = NULL;
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
