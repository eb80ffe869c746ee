/* libFuzzer target: the CLI's positives readers (cli_qrels_parse, cli_positives_parse). The
 * first byte picks the set-up: bit 0 query ids from an id file (else row numbers), bit 1 corpus
 * ids from an id file, bit 2 --skip-unknown-ids, bit 3 the positives-file reader instead of
 * qrels. What they accept must be CSR lists of sorted, unique, in-range corpus rows. */
#define _GNU_SOURCE
#include "cli.h"

#include <stdlib.h>
#include <string.h>

enum { QUERIES = 8, CORPUS = 16 };

static void load_ids(cli_ids *ids, int from_file, const char *prefix, int rows, const char *what) {
    if (!from_file) {
        cli_ids_load(ids, NULL, what, rows);
        return;
    }
    char *text = malloc((size_t)rows * 8 + 1), *p = text;
    for (int i = 0; i < rows; i++) p += sprintf(p, "%s%d\n", prefix, i);
    if (cli_ids_parse(ids, "ids.txt", what, rows, text)) abort();
}

static void check_lists(const cli_lists *l, int64_t queries, int64_t corpus) {
    if (l->queries != queries || l->offsets[0] != 0) abort();
    for (int64_t q = 0; q < queries; q++) {
        if (l->offsets[q + 1] < l->offsets[q]) abort();
        for (int64_t i = l->offsets[q]; i < l->offsets[q + 1]; i++) {
            if (l->ids[i] < 0 || l->ids[i] >= corpus) abort();
            if (i > l->offsets[q] && l->ids[i] <= l->ids[i - 1]) abort();
        }
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    cli_silent = 1;
    if (size < 1 || memchr(data, 0, size)) return 0; /* cli_read_text refuses NUL bytes */
    unsigned mode = data[0];
    char *text = malloc(size);
    if (!text) return 0;
    memcpy(text, data + 1, size - 1);
    text[size - 1] = '\0';
    cli_ids qids, cids;
    load_ids(&qids, mode & 1, "q", QUERIES, "query");
    load_ids(&cids, mode & 2, "d", CORPUS, "corpus");
    cli_unknown_ids u = {(mode & 4) != 0, 0, 0, ""};
    cli_lists l = {0};
    int rc = mode & 8 ? cli_positives_parse(text, "fuzz.txt", &cids, QUERIES, &u, &l)
                      : cli_qrels_parse(text, "fuzz.tsv", &qids, &cids, &u, &l);
    if (rc == 0) check_lists(&l, QUERIES, CORPUS);
    if (u.skipped && !(mode & 4)) abort();
    cli_lists_free(&l);
    cli_ids_free(&qids);
    cli_ids_free(&cids);
    free(text);
    return 0;
}
