/* negsamp mine --checkpoint: finished blocks' top-k on disk, and the resume (cli_checkpoint.h). */
#define _GNU_SOURCE
#include "cli_checkpoint.h"
#include "cli_hash.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* Format 2: XXH64 input fingerprints and record checksums. Format 1 (FNV-1a) is refused by
 * name: its input hashes cannot be compared with this run's. */
#define CK_FIRST_LINE "negsamp mine checkpoint 2\n"
#define CK_FIRST_LINE_V1 "negsamp mine checkpoint 1\n"
#define CK_END "end\n"
#define CK_MAGIC 0x4b43534eu /* "NSCK" */

/* The checksum of a record: XXH64 of its position, rows and scores. */
static uint64_t record_hash(const int64_t pos[2], const void *id, const void *sc, size_t n) {
    cli_xxh64 h;
    cli_xxh64_init(&h);
    cli_xxh64_update(&h, pos, 16);
    cli_xxh64_update(&h, id, n * 8);
    cli_xxh64_update(&h, sc, n * 4);
    return cli_xxh64_digest(&h);
}

/* The first line where a and b differ (NUL-terminated texts), into out. */
static void first_difference(const char *a, const char *b, char *out, size_t cap) {
    while (*a && *b) {
        size_t la = strcspn(a, "\n"), lb = strcspn(b, "\n");
        if (la != lb || memcmp(a, b, la) != 0) {
            snprintf(out, cap, "the checkpoint has \"%.*s\" but this run has \"%.*s\"", (int)la,
                     a, (int)lb, b);
            return;
        }
        a += la + (a[la] != 0), b += lb + (b[lb] != 0);
    }
    snprintf(out, cap, "the checkpoint's header has %s lines", *a ? "more" : "fewer");
}

/* The header text of an existing file (up to and with "end\n"); NULL when not a checkpoint. */
static char *read_header(FILE *f) {
    size_t cap = 1 << 16, n = 0;
    char *h = (char *)malloc(cap + 1);
    if (!h) return NULL;
    int ch;
    while (n < cap && (ch = fgetc(f)) != EOF) {
        h[n++] = (char)ch;
        h[n] = 0;
        if (ch == '\n' && n >= 4 && strcmp(h + n - 4, CK_END) == 0 &&
            (n == 4 || h[n - 5] == '\n'))
            break;
    }
    h[n] = 0;
    if (strncmp(h, CK_FIRST_LINE, strlen(CK_FIRST_LINE)) != 0 || n < 4 ||
        strcmp(h + n - 4, CK_END) != 0) {
        free(h);
        return NULL;
    }
    return h;
}

/* 1 when the file starts as a format-1 checkpoint did. */
static int old_format(FILE *f) {
    char line[sizeof CK_FIRST_LINE_V1] = {0};
    rewind(f);
    size_t got = fread(line, 1, sizeof line - 1, f);
    return got == sizeof line - 1 && strcmp(line, CK_FIRST_LINE_V1) == 0;
}

/* One record at the file position: 0 when whole and its hash right (the position after it),
 * 1 when torn or absent. With id/sc NULL the payload is only checked. */
static int read_record(cli_checkpoint *c, int64_t *b0, int64_t *nb, int64_t *id, float *sc) {
    uint32_t head[2];
    int64_t pos[2];
    if (fread(head, 4, 2, c->f) != 2 || head[0] != CK_MAGIC || fread(pos, 8, 2, c->f) != 2)
        return 1;
    if (pos[1] < 1 || pos[1] > c->batch) return 1;
    size_t n = (size_t)(pos[1] * c->k);
    int64_t *ids = id ? id : (int64_t *)malloc(n * 8);
    float *scs = sc ? sc : (float *)malloc(n * 4);
    uint64_t want = 0;
    int bad = !ids || !scs || fread(ids, 8, n, c->f) != n || fread(scs, 4, n, c->f) != n ||
              fread(&want, 8, 1, c->f) != 1;
    if (!bad) bad = record_hash(pos, ids, scs, n) != want;
    if (!id) free(ids);
    if (!sc) free(scs);
    *b0 = pos[0], *nb = pos[1];
    return bad;
}

/* Counts the whole records after the header; cuts off a torn tail; back to the first record. */
static int scan_records(cli_checkpoint *c) {
    int64_t expect = 0, b0, nb;
    const long first = ftell(c->f);
    for (;;) {
        long at = ftell(c->f);
        if (read_record(c, &b0, &nb, NULL, NULL) || b0 != expect) {
            if (fflush(c->f) || ftruncate(fileno(c->f), at) || fseek(c->f, at, SEEK_SET)) {
                cli_error("--checkpoint %s: cannot cut off its unfinished last record: %s",
                          c->path, strerror(errno));
                return -1;
            }
            return fseek(c->f, first, SEEK_SET) ? -1 : 0;
        }
        c->done++;
        expect = b0 + nb;
    }
}

int cli_checkpoint_open(cli_checkpoint *c, const char *path, const char *desc, int64_t k,
                        int64_t batch) {
    memset(c, 0, sizeof *c);
    snprintf(c->path, sizeof c->path, "%s", path);
    c->k = k, c->batch = batch;
    struct stat st;
    if (stat(path, &st) == 0) {
        if (!S_ISREG(st.st_mode)) {
            cli_error("--checkpoint %s: not a regular file", path);
            return -1;
        }
        if (!(c->f = fopen(path, "r+b"))) {
            cli_error("--checkpoint %s: cannot open: %s", path, strerror(errno));
            return -1;
        }
        char *h = read_header(c->f);
        if (!h && old_format(c->f)) {
            cli_error("--checkpoint %s: written by an older negsamp (checkpoint format 1, FNV-1a "
                      "input hashes); this version fingerprints inputs with XXH64 and cannot "
                      "resume it: remove it to start over",
                      path);
            return -1;
        }
        if (!h) {
            cli_error("--checkpoint %s: exists and is not a negsamp mine checkpoint; remove it "
                      "or name another file",
                      path);
            return -1;
        }
        const char *body = h + strlen(CK_FIRST_LINE);
        if (strlen(body) != strlen(desc) + strlen(CK_END) ||
            strncmp(body, desc, strlen(desc)) != 0) {
            char why[1024];
            h[strlen(h) - strlen(CK_END)] = 0; /* the lines without "end" */
            first_difference(body, desc, why, sizeof why);
            free(h);
            cli_error("--checkpoint %s: was written for other inputs or options (%s); remove it "
                      "to start over",
                      path, why);
            return -1;
        }
        free(h);
        return scan_records(c);
    }
    int fd = open(path, O_RDWR | O_CREAT | O_EXCL, 0644);
    if (fd < 0 || !(c->f = fdopen(fd, "w+b"))) {
        cli_error("--checkpoint %s: cannot create: %s", path, strerror(errno));
        if (fd >= 0) close(fd);
        return -1;
    }
    if (fputs(CK_FIRST_LINE, c->f) < 0 || fputs(desc, c->f) < 0 || fputs(CK_END, c->f) < 0 ||
        fflush(c->f) || fsync(fileno(c->f))) {
        cli_error("--checkpoint %s: cannot write: %s", path, strerror(errno));
        return -1;
    }
    return 0;
}

int cli_checkpoint_read(cli_checkpoint *c, int64_t b0, int64_t nb, int64_t *id, float *sc) {
    int64_t rb0, rnb;
    if (read_record(c, &rb0, &rnb, id, sc) || rb0 != b0 || rnb != nb) {
        cli_error("--checkpoint %s: block %lld (queries %lld..%lld) could not be read back",
                  c->path, (long long)c->read, (long long)b0, (long long)(b0 + nb));
        return -1;
    }
    c->read++;
    return 0;
}

/* Tests stop a run after N blocks with a real signal (NS_CLI_TEST_KILL_AFTER_BLOCKS=N,
 * NS_CLI_TEST_KILL_SIGNAL=KILL (default) or INT). */
static void test_kill(int64_t written) {
    const char *n = getenv("NS_CLI_TEST_KILL_AFTER_BLOCKS");
    if (!n || written != atoll(n)) return;
    const char *s = getenv("NS_CLI_TEST_KILL_SIGNAL");
    raise(s && strcmp(s, "INT") == 0 ? SIGINT : SIGKILL);
}

int cli_checkpoint_append(cli_checkpoint *c, int64_t b0, int64_t nb, const int64_t *id,
                          const float *sc) {
    uint32_t head[2] = {CK_MAGIC, 0};
    int64_t pos[2] = {b0, nb};
    size_t n = (size_t)(nb * c->k);
    uint64_t h = record_hash(pos, id, sc, n);
    if (fwrite(head, 4, 2, c->f) != 2 || fwrite(pos, 8, 2, c->f) != 2 ||
        fwrite(id, 8, n, c->f) != n || fwrite(sc, 4, n, c->f) != n ||
        fwrite(&h, 8, 1, c->f) != 1 || fflush(c->f) || fdatasync(fileno(c->f))) {
        cli_error("--checkpoint %s: cannot write block %lld: %s", c->path,
                  (long long)(c->done + c->written), strerror(errno));
        return -1;
    }
    c->written++;
    test_kill(c->written);
    return 0;
}

void cli_checkpoint_close(cli_checkpoint *c, int remove) {
    if (c->f) fclose(c->f);
    c->f = NULL;
    if (remove && c->path[0]) unlink(c->path);
}
