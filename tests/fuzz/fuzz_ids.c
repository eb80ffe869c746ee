/* libFuzzer target: the CLI's id-file reader (cli_ids_parse) and the JSON writer of ids. The
 * first byte picks the expected row count (0: count the ids); the rest is the file. Every id
 * read must be found again at its row, and its JSON must be valid UTF-8. */
#define _GNU_SOURCE
#include "cli.h"

#include <stdlib.h>
#include <string.h>

static void check_utf8(const char *s, size_t n) {
    for (size_t i = 0; i < n;) {
        size_t len = cli_utf8_char((const unsigned char *)s + i, n - i);
        if (!len) abort();
        i += len;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    cli_silent = 1;
    if (size < 1 || memchr(data, 0, size)) return 0; /* cli_read_text refuses NUL bytes */
    char *text = malloc(size);
    if (!text) return 0;
    memcpy(text, data + 1, size - 1);
    text[size - 1] = '\0';
    cli_ids ids;
    int64_t rows = data[0] % 9 == 0 ? -1 : data[0] % 9;
    if (cli_ids_parse(&ids, "fuzz.txt", "corpus", rows, text) != 0) return 0; /* took text */
    char *json = NULL;
    size_t jlen = 0;
    FILE *out = open_memstream(&json, &jlen);
    for (int64_t r = 0; r < ids.rows; r++) {
        const char *id = ids.id[r];
        size_t n = strlen(id);
        if (n == 0 || cli_ids_find(&ids, id, n) != r) abort();
        if (out) cli_ids_write_json(out, &ids, r);
    }
    if (out) {
        fclose(out);
        check_utf8(json, jlen);
        free(json);
    }
    cli_ids_free(&ids);
    return 0;
}
