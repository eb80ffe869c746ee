/* BEIR / HF JSONL texts (corpus.jsonl, queries.jsonl): one JSON object per line, row r = the
 * r-th object; its "_id" (or "id"), "title" and "text" kept, every other key checked and
 * skipped. Every malformed line is reported as FILE:LINE: column C: problem. */
#define _POSIX_C_SOURCE 200809L
#include "cli.h"

#include <stdlib.h>
#include <string.h>

static int blank(const char *s) { return s[strspn(s, " \t\r")] == '\0'; }

static int64_t count_objects(const char *text) {
    int64_t n = 0;
    for (const char *q = text; *q;) {
        size_t l = strcspn(q, "\n");
        if (strspn(q, " \t\r") < l) n++;
        q += l + (q[l] == '\n');
    }
    return n;
}

/* The fields of one line into row r. */
static int parse_line(cli_texts *t, char *s, int64_t line, int64_t r, char **id) {
    cli_json_field f[4];
    memset(f, 0, sizeof f);
    f[0].key = "_id", f[1].key = "id", f[2].key = "title", f[3].key = "text";
    char err[256];
    if (cli_json_object_fields(s, f, 4, err, sizeof err)) {
        cli_error("%s:%lld: %s", t->path, (long long)line, err);
        return -1;
    }
    cli_json_field *idf = f[0].value ? &f[0] : &f[1];
    if (f[0].value && f[1].value) idf = &f[0]; /* BEIR's "_id" wins over a plain "id" */
    const char *bad = NULL;
    if (!idf->value) bad = (f[0].other || f[1].other) ? "its \"_id\" is not a string or number"
                                                      : "no \"_id\" (or \"id\")";
    else if (idf->len == 0) bad = "its \"_id\" is empty";
    else if (strpbrk(idf->value, "\t\n\r")) bad = "its \"_id\" holds a tab or line break "
                                                   "(a qrels TSV could not name it)";
    else if (!f[3].value) bad = f[3].other ? "its \"text\" is not a string" : "no \"text\"";
    else if (!f[3].is_string) bad = "its \"text\" is a number, not a string";
    else if (f[2].value && !f[2].is_string) bad = "its \"title\" is not a string";
    else if (f[2].other) bad = "its \"title\" is not a string";
    if (bad) {
        cli_error("%s:%lld: %s %s", t->path, (long long)line, t->what, bad);
        return -1;
    }
    id[r] = idf->value;
    t->title[r] = f[2].value ? f[2].value : (char *)"";
    t->body[r] = f[3].value;
    return 0;
}

int cli_texts_parse(cli_texts *t, const char *path, const char *what, char *text) {
    memset(t, 0, sizeof(*t));
    t->path = path;
    t->what = what;
    t->text = text;
    char *p = cli_skip_bom(text);
    int64_t rows = count_objects(p);
    char **id = calloc((size_t)rows + 1, sizeof(char *));
    int64_t *lines = calloc((size_t)rows + 1, sizeof(int64_t));
    t->title = calloc((size_t)rows + 1, sizeof(char *));
    t->body = calloc((size_t)rows + 1, sizeof(char *));
    int rc = -1;
    if (!id || !lines || !t->title || !t->body) {
        cli_error("%s: out of memory for %lld lines", path, (long long)rows);
        goto done;
    }
    int64_t line = 0, r = 0;
    size_t l;
    for (char *s; (s = cli_next_line(&p, &l)) != NULL;) {
        line++;
        if (blank(s)) continue;
        lines[r] = line;
        if (parse_line(t, s, line, r, id)) goto done;
        r++;
    }
    if (rows == 0) {
        cli_error("%s: holds no %s (expected one JSON object per line)", path, what);
        goto done;
    }
    t->rows = rows;
    rc = cli_ids_adopt(&t->ids, path, what, rows, id, lines);
done:
    free(id);
    free(lines);
    if (rc) cli_texts_free(t);
    return rc;
}

int cli_texts_load(cli_texts *t, const char *path, const char *what) {
    memset(t, 0, sizeof(*t));
    char *text = cli_read_text(path, NULL);
    return text ? cli_texts_parse(t, path, what, text) : -1;
}

void cli_texts_free(cli_texts *t) {
    cli_ids_free(&t->ids);
    free(t->title);
    free(t->body);
    free(t->text);
    t->title = t->body = NULL;
    t->text = NULL;
    t->rows = 0;
}
