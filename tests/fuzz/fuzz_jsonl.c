/* libFuzzer target: the CLI's JSONL text reader (cli_texts_parse over cli_json_object_fields),
 * what `negsamp mine --beir` reads from corpus.jsonl / queries.jsonl. Every row read must be
 * found again by its id, its strings must be valid UTF-8 without NUL, and writing a row back as
 * JSON (cli_json_string) then reading it again must give the same strings. */
#define _GNU_SOURCE
#include "cli.h"

#include <stdlib.h>
#include <string.h>

static void check_utf8(const char *s) {
    size_t n = strlen(s);
    for (size_t i = 0; i < n;) {
        size_t len = cli_utf8_char((const unsigned char *)s + i, n - i);
        if (!len) abort();
        i += len;
    }
}

/* {"_id": id, "title": t, "text": x} written by the JSON writer, read back. */
static void round_trip(const char *id, const char *title, const char *text) {
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    if (!f) return;
    fputs("{\"_id\": ", f);
    cli_json_string(f, id, strlen(id));
    fputs(", \"title\": ", f);
    cli_json_string(f, title, strlen(title));
    fputs(", \"text\": ", f);
    cli_json_string(f, text, strlen(text));
    fputc('}', f);
    fclose(f);
    cli_json_field fl[3];
    memset(fl, 0, sizeof fl);
    fl[0].key = "_id", fl[1].key = "title", fl[2].key = "text";
    char err[256];
    if (cli_json_object_fields(buf, fl, 3, err, sizeof err)) abort();
    if (strcmp(fl[0].value, id) || strcmp(fl[1].value, title) || strcmp(fl[2].value, text))
        abort();
    free(buf);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    cli_silent = 1;
    if (memchr(data, 0, size)) return 0; /* cli_read_text refuses NUL bytes */
    char *text = malloc(size + 1);
    if (!text) return 0;
    memcpy(text, data, size);
    text[size] = '\0';
    cli_texts t;
    if (cli_texts_parse(&t, "fuzz.jsonl", "corpus", text) != 0) return 0; /* took text */
    for (int64_t r = 0; r < t.rows; r++) {
        const char *id = t.ids.id[r];
        if (!*id || cli_ids_find(&t.ids, id, strlen(id)) != r) abort();
        check_utf8(id);
        check_utf8(t.title[r]);
        check_utf8(t.body[r]);
        round_trip(id, t.title[r], t.body[r]);
    }
    cli_texts_free(&t);
    return 0;
}
