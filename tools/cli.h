/* The negsamp command-line program: shared declarations of its pieces (file formats, outputs
 * written atomically, progress bar, device staging, subcommands). Not part of the library. */
#ifndef NS_CLI_H
#define NS_CLI_H

#include <stdint.h>
#include <stdio.h>
#include <sys/types.h>

#include "negsamp.h"

/* Exit codes: 0 ok, 1 runtime error (a file, the library), 2 usage error. */
enum { CLI_OK = 0, CLI_RUNTIME = 1, CLI_USAGE = 2 };

/* "negsamp <cmd>: message" on stderr. The command name is set once by main. cli_silent (the
 * fuzz targets set it) drops the messages. */
extern const char *cli_command;
extern int cli_silent;
void cli_error(const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 1, 2)))
#endif
    ;
/* Prints the usage message and returns CLI_USAGE. */
int cli_usage_error(const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 1, 2)))
#endif
    ;

/* Option values: each returns 0 and stores the value, or prints a usage error and returns -1. */
int cli_parse_i64(const char *opt, const char *s, int64_t lo, int64_t hi, int64_t *out);
int cli_parse_f32(const char *opt, const char *s, float *out);
int cli_parse_u64(const char *opt, const char *s, uint64_t *out);
/* auto | cpu | cuda. */
int cli_parse_backend(const char *opt, const char *s, ns_backend *out);

/* ------------------------------------------------------------------ input files */

/* The tag in the name of every temporary output: "DIR/.NAME" CLI_TEMP_TAG "XXXXXX". A file
 * a killed run left is recognisable by it, and refused as an input. */
#define CLI_TEMP_TAG ".negsamp-tmp-"
#define CLI_MAX_FILES 16

/* A file named on the command line, with the flag that named it (for messages). */
typedef struct {
    const char *flag;
    const char *path; /* NULL: not given */
} cli_named_path;

/* Every input a regular file that is no leftover temporary (exit 1 otherwise); every output
 * in an existing directory, none two the same file, none an input (CLI_USAGE), an existing
 * one only a regular file (even with --force) and only with force (CLI_RUNTIME). Returns 0 or
 * the exit status, message printed. */
int cli_check_files(const cli_named_path *in, int nin, const cli_named_path *out, int nout,
                    int force);
/* Opens an input for reading without blocking on a FIFO: NULL (message printed) unless it is
 * a regular file. */
FILE *cli_open_input(const char *path);
/* A whole file in a NUL-terminated buffer (free it); NULL with a message printed. */
char *cli_read_text(const char *path, size_t *len);
int cli_is_temp_name(const char *path);
/* Text lines: the next line of *p, NUL-terminated in place without its "\n" or "\r\n" (*len
 * bytes), *p moved past it; NULL at the end. */
char *cli_next_line(char **p, size_t *len);
/* Past a UTF-8 byte order mark at the start of a text, if any. */
char *cli_skip_bom(char *text);
/* s without the spaces and tabs at either end (NUL-terminated in place); *len updated. */
char *cli_trim(char *s, size_t *len);
/* 1 (message printed) when path is now one of the inputs cli_check_files saw. */
int cli_is_input(const char *path);
const char *cli_file_kind(mode_t mode);

/* ------------------------------------------------------------------ embeddings in */

float cli_f16_to_f32(uint16_t h);

/* Embeddings from .npy (memory-mapped by ns_npy_open) or .fvecs (read into memory, f32). */
typedef struct {
    const char *path;
    ns_npy_file *npy;
    float *owned;
    ns_matrix m;
} cli_embeddings;

int cli_embeddings_load(const char *path, cli_embeddings *e); /* 0 or -1 (message printed) */
/* .fvecs from an open stream (int32 dimension, then the floats, per row; every row the same
 * dimension): e->owned holds the rows. */
int cli_fvecs_read(FILE *f, const char *path, cli_embeddings *e);
void cli_embeddings_free(cli_embeddings *e);
/* Queries and corpus of one dimension (the message names both files otherwise). */
int cli_embeddings_load_pair(const char *qpath, cli_embeddings *q, const char *cpath,
                             cli_embeddings *c);
/* Row r as f32 (converting f16/bf16) into out (m.cols floats). */
void cli_embeddings_row(const cli_embeddings *e, int64_t r, float *out);

/* ------------------------------------------------------------------ arrays in (.npy) */

typedef enum { CLI_I64, CLI_F32 } cli_kind;

/* A whole .npy array in memory, as int64 or f32. */
typedef struct {
    void *data;
    cli_kind kind;
    int ndim;
    int64_t shape[2]; /* 1-D arrays: shape[1] = 1 */
} cli_array;

/* Through the library's checked reader (ns_npy_open_array), converted while copied out of the
 * mapping: int64 from <i8/<i4 (index matrices), f32 from <f4/<f2 (scores). 0 or -1 (message
 * printed, naming the file). */
int cli_npy_read_i64(const char *path, cli_array *a);
int cli_npy_read_f32(const char *path, cli_array *a);

/* ------------------------------------------------------------------ ids and positives */

/* Ids of rows: from a file (one per line) or, without a file, the row numbers. */
typedef struct {
    const char *path;   /* NULL: ids are row numbers */
    const char *what;   /* "query" / "corpus" for messages */
    int64_t rows;
    char **id;          /* rows strings when path */
    int64_t *slot;      /* hash table of row + 1, 0 empty */
    int64_t slots;
    int64_t *line;      /* the line of each id in the file */
    char *text;         /* the file's content, id[] points into it */
} cli_ids;

/* rows < 0: as many rows as the file has ids (no embeddings to count them). */
int cli_ids_load(cli_ids *ids, const char *path, const char *what, int64_t rows);
/* The same on the file's text (NUL-terminated; ids takes it, and frees it in cli_ids_free). */
int cli_ids_parse(cli_ids *ids, const char *path, const char *what, int64_t rows, char *text);
void cli_ids_free(cli_ids *ids);
/* The row of id (length n), -1 if unknown. */
int64_t cli_ids_find(const cli_ids *ids, const char *id, size_t n);
/* Writes id of row r as a JSON value: a string with an id file, else the row number. */
void cli_ids_write_json(FILE *f, const cli_ids *ids, int64_t r);

/* Positives per query row as CSR lists of corpus rows (sorted, unique). */
typedef struct {
    int64_t *offsets; /* queries + 1 */
    int64_t *ids;
    int64_t queries;
} cli_lists;

void cli_lists_free(cli_lists *l);
/* Ids a positives file names that the id files (or row numbers) do not know. */
typedef struct {
    int skip;            /* --skip-unknown-ids: skip and count them instead of failing */
    int64_t skipped;     /* qrels lines / positives ids skipped */
    int64_t first_line;  /* the first one skipped, and its id */
    char first_id[64];
} cli_unknown_ids;

/* BEIR qrels TSV (query-id corpus-id score; TREC's 4 columns accepted; header optional;
 * score ≤ 0 is not a positive; a UTF-8 BOM, CRLF and spaces around fields ignored). */
int cli_qrels_load(const char *path, const cli_ids *qids, const cli_ids *cids, cli_unknown_ids *u,
                   cli_lists *out);
/* The same on the file's text (NUL-terminated, changed in place; path names it in messages). */
int cli_qrels_parse(char *text, const char *path, const cli_ids *qids, const cli_ids *cids,
                    cli_unknown_ids *u, cli_lists *out);
/* Line i holds the corpus ids of query row i's positives (whitespace or comma separated). */
int cli_positives_load(const char *path, const cli_ids *cids, int64_t queries, cli_unknown_ids *u,
                       cli_lists *out);
int cli_positives_parse(char *text, const char *path, const cli_ids *cids, int64_t queries,
                        cli_unknown_ids *u, cli_lists *out);
/* Query i's positive is corpus row i (aligned pairs). */
int cli_lists_paired(int64_t queries, int64_t corpus_rows, cli_lists *out);
/* a ∪ {i} per query (self exclusion), or a copy of a when self is 0. a may be empty (NULL ids). */
int cli_lists_with_self(const cli_lists *a, int64_t queries, int self, cli_lists *out);

/* ------------------------------------------------------------------ JSONL texts in */

/* A wanted top-level key of a JSON object and its value: a string (decoded, NUL-terminated in
 * place) or a number (its literal). value NULL: absent; other: present but of another type. */
typedef struct {
    const char *key;
    char *value;
    size_t len;
    int is_string, other;
} cli_json_field;

/* Parses line (NUL-terminated, changed in place) as one JSON object (strict: RFC 8259, valid
 * UTF-8, surrogates only in pairs, \u0000 refused, nesting <= 64, nothing after it) and fills
 * the wanted fields. 0, or -1 with "column N: problem" in err. */
int cli_json_object_fields(char *line, cli_json_field *f, int nf, char *err, size_t errcap);

/* BEIR / HF JSONL texts, one object per line in row order: "_id" (or "id"; a string or a
 * number), "text" (required), "title" (optional). Blank lines are skipped. */
typedef struct {
    const char *path, *what;
    int64_t rows;
    char *text;    /* the file; every string points into it */
    char **title;  /* "" when absent */
    char **body;
    cli_ids ids;   /* the "_id"s, row by row (the stage takes them over) */
} cli_texts;

int cli_texts_load(cli_texts *t, const char *path, const char *what);
/* The same on the file's text (NUL-terminated; t takes it). */
int cli_texts_parse(cli_texts *t, const char *path, const char *what, char *text);
void cli_texts_free(cli_texts *t);
/* ids of rows strings id[0..rows) found at lines line[] (both arrays copied; the strings stay
 * the caller's and must outlive ids); duplicates refused naming both lines. */
int cli_ids_adopt(cli_ids *ids, const char *path, const char *what, int64_t rows, char **id,
                  int64_t *line);

/* ------------------------------------------------------------------ provenance */

/* Input fingerprints (cli_fingerprint.c): a file's XXH64 (tools/cli_hash.h) and size, read
 * once per run and kept (by device and inode; read again if its size or time changed). The
 * name in the checkpoint header and the provenance sidecar is CLI_FINGERPRINT_NAME. */
#define CLI_FINGERPRINT_NAME "xxh64"
/* 0 or -1 (message printed, naming the path: a read error, a file that changed while read). */
int cli_file_fingerprint(const char *path, uint64_t *hash, int64_t *size);
/* Fingerprints every input not yet kept (NULL paths skipped), with one progress line over
 * their bytes when they are large and stderr is a terminal (none when quiet). 0 or -1. */
int cli_fingerprint_inputs(const cli_named_path *in, int n, int quiet);
/* Forgets the kept fingerprints (bench/bench_fingerprint.c times the read). */
void cli_fingerprint_forget(void);

/* ------------------------------------------------------------------ outputs */

/* An output written to a temporary file in the same directory (".NAME.negsamp-tmp-XXXXXX"),
 * renamed over path only by cli_output_commit: an error or any signal the process can catch
 * never leaves a half-written file, and what SIGKILL leaves is named as a temporary. */
typedef struct {
    char path[4096];
    char tmp[4096];
    FILE *f;
    int slot; /* in the signal-cleanup registry */
} cli_output;

/* Refuses an existing path unless force, and anything but a regular file even with force.
 * 0 or -1 (message printed). */
int cli_output_open(cli_output *o, const char *path, int force);
int cli_output_commit(cli_output *o);
void cli_output_abort(cli_output *o);
/* Every signal that ends the process and can be caught (SIGINT, SIGTERM, SIGHUP, SIGQUIT,
 * SIGPIPE, SIGALRM, SIGUSR1/2, SIGXCPU, SIGXFSZ, and the crash signals) and exit() remove every
 * open temporary file; then the signal ends the process as it would have. */
void cli_install_signal_cleanup(void);

/* .npy writing: header for a C-order 2-D (cols > 0) or 1-D (cols == 0) array. */
int cli_npy_write_header(FILE *f, const char *descr, int64_t rows, int64_t cols);
/* A JSON string: quotes, backslashes and control characters escaped; a byte that is not part
 * of valid UTF-8 is written as \u00XX (the code point of its value) and counted in
 * cli_json_bad_bytes, so the output is valid JSON and valid UTF-8 whatever the id files hold. */
void cli_json_string(FILE *f, const char *s, size_t n);
extern int64_t cli_json_bad_bytes;
size_t cli_utf8_char(const unsigned char *s, size_t n);
/* A float32 that reads back as the same float32 (%.9g); null when not finite. */
void cli_json_float(FILE *f, float x);

/* ------------------------------------------------------------------ progress */

typedef struct {
    int enabled;
    const char *label;
    int64_t total, base, span; /* the block in flight covers [base, base + span) */
    double t0, last;
    int bytes; /* counts bytes (shown in MiB), not queries */
} cli_progress;

void cli_progress_init(cli_progress *p, const char *label, int64_t total, int quiet);
/* ns_progress_fn: done/total is the fraction of the current block, user is the cli_progress. */
int cli_progress_update(int64_t done, int64_t total, void *user);
void cli_progress_finish(cli_progress *p);
double cli_now(void);

/* ------------------------------------------------------------------ device staging */

/* On a CUDA context the library takes device pointers: these copy host arrays in and out.
 * On a CPU context they return the host pointer / do nothing. */
/* A context of the backend (threads 0: all cores); 0 or -1 (message printed). */
int cli_context_create(ns_backend backend, int threads, ns_context **ctx);
/* The same on CUDA device `device` (a CPU context ignores it). */
int cli_context_create_on(ns_backend backend, int threads, int device, ns_context **ctx);
void *cli_dev_put(ns_context *ctx, const void *host, size_t bytes); /* NULL on failure */
void *cli_dev_alloc(ns_context *ctx, size_t bytes);
int cli_dev_get(ns_context *ctx, void *host, const void *dev, size_t bytes);
void cli_dev_free(ns_context *ctx, void *dev, const void *host);

/* ------------------------------------------------------------------ gzip CSV */

/* Reads a (possibly gzip-compressed) CSV of numbers: *rows × *cols doubles. */
int cli_csv_read(const char *path, double **values, int64_t *rows, int64_t *cols);

/* ------------------------------------------------------------------ subcommands */

int cli_cmd_mine(int argc, char **argv);
int cli_cmd_sample(int argc, char **argv);
int cli_cmd_kmeans(int argc, char **argv);
int cli_cmd_demo(int argc, char **argv);
int cli_cmd_info(int argc, char **argv);
int cli_cmd_bench_mine(int argc, char **argv);
int cli_cmd_fingerprint(int argc, char **argv);
int cli_cmd_inspect(int argc, char **argv);

#endif
