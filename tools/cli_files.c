/* Input files and the rules between inputs and outputs: inputs are regular files (a FIFO or a
 * device is refused at once, never waited on) and never a temporary file a killed run left;
 * outputs never replace an input, never collide with each other, and only ever replace a
 * regular file. */
#define _GNU_SOURCE
#include "cli.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

const char *cli_file_kind(mode_t mode) {
    if (S_ISREG(mode)) return "a regular file";
    if (S_ISDIR(mode)) return "a directory";
    if (S_ISFIFO(mode)) return "a FIFO (named pipe)";
    if (S_ISCHR(mode)) return "a character device";
    if (S_ISBLK(mode)) return "a block device";
    if (S_ISSOCK(mode)) return "a socket";
    if (S_ISLNK(mode)) return "a symbolic link";
    return "not a regular file";
}

int cli_is_temp_name(const char *path) {
    const char *base = strrchr(path, '/');
    base = base ? base + 1 : path;
    return strstr(base, CLI_TEMP_TAG) != NULL;
}

/* An input that is not a regular file or is a leftover temporary: the message, -1. */
static int refuse_input(const char *flag, const char *path, const struct stat *st) {
    const char *sep = flag ? " " : "";
    if (!flag) flag = "";
    if (!S_ISREG(st->st_mode)) {
        cli_error("%s%s%s: is %s; expected a regular file", flag, sep, path,
                  cli_file_kind(st->st_mode));
        return -1;
    }
    if (cli_is_temp_name(path)) {
        cli_error("%s%s%s: is a temporary file of a negsamp run that never finished (killed); it "
                  "is not a result: delete it and run again", flag, sep, path);
        return -1;
    }
    return 0;
}

FILE *cli_open_input(const char *path) {
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
    if (fd < 0) {
        cli_error("%s: cannot open: %s", path, strerror(errno));
        return NULL;
    }
    struct stat st;
    if (fstat(fd, &st) != 0) {
        cli_error("%s: cannot stat: %s", path, strerror(errno));
        close(fd);
        return NULL;
    }
    if (refuse_input(NULL, path, &st)) {
        close(fd);
        return NULL;
    }
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
    FILE *f = fdopen(fd, "rb");
    if (!f) {
        cli_error("%s: cannot open a stream: %s", path, strerror(errno));
        close(fd);
    }
    return f;
}

/* Reads the whole stream; gzread passes a plain file through unchanged, so gzip-compressed
 * texts (*.jsonl.gz, *.tsv.gz: recognised by their magic bytes, not their name) read alike.
 * NULL with the message printed (a truncated or corrupt gzip stream is an error, never a
 * shorter text). */
static char *read_all(gzFile g, const char *path, size_t *len_out) {
    size_t cap = 1 << 16, len = 0;
    char *buf = malloc(cap + 1);
    int n = 0;
    while (buf) {
        size_t want = cap - len > (1u << 30) ? (1u << 30) : cap - len;
        n = gzread(g, buf + len, (unsigned)want);
        if (n <= 0) break;
        len += (size_t)n;
        if (len < cap) continue;
        cap *= 2;
        char *nb = realloc(buf, cap + 1);
        if (!nb) free(buf);
        buf = nb;
    }
    if (!buf) {
        cli_error("%s: out of memory reading the file", path);
        return NULL;
    }
    int errnum = Z_OK;
    const char *msg = gzerror(g, &errnum);
    const char *fd_name = strstr(msg, ">: "); /* zlib prefixes "<fd:N>: " */
    if (!strncmp(msg, "<fd:", 4) && fd_name) msg = fd_name + 3;
    if (n < 0 || (errnum != Z_OK && errnum != Z_STREAM_END)) {
        if (errnum == Z_ERRNO) cli_error("%s: read error: %s", path, strerror(errno));
        else cli_error("%s: not a valid gzip file after %zu bytes of text (%s): truncated or "
                       "corrupt", path, len, msg);
        free(buf);
        return NULL;
    }
    buf[len] = '\0';
    *len_out = len;
    return buf;
}

/* Reads a text file, plain or gzip-compressed, into a NUL-terminated buffer. */
char *cli_read_text(const char *path, size_t *len_out) {
    FILE *f = cli_open_input(path);
    if (!f) return NULL;
    int fd = dup(fileno(f));
    fclose(f);
    gzFile g = fd >= 0 ? gzdopen(fd, "rb") : NULL;
    if (!g) {
        cli_error("%s: cannot open a stream: %s", path, strerror(errno));
        if (fd >= 0) close(fd);
        return NULL;
    }
    size_t len = 0;
    char *buf = read_all(g, path, &len);
    int closed = gzclose_r(g);
    if (buf && closed != Z_OK) {
        cli_error("%s: not a complete gzip file (zlib status %d): truncated?", path, closed);
        free(buf);
        return NULL;
    }
    if (!buf) return NULL;
    const char *nul = memchr(buf, '\0', len);
    if (nul) {
        int64_t line = 1;
        for (const char *q = buf; q < nul; q++) line += *q == '\n';
        cli_error("%s: line %lld holds a NUL byte; expected a text file", path, (long long)line);
        free(buf);
        return NULL;
    }
    if (len_out) *len_out = len;
    return buf;
}

char *cli_next_line(char **p, size_t *len) {
    char *s = *p;
    if (!s || !*s) return NULL;
    char *eol = strchr(s, '\n');
    size_t l = eol ? (size_t)(eol - s) : strlen(s);
    *p = eol ? eol + 1 : s + l;
    if (l && s[l - 1] == '\r') l--;
    s[l] = '\0';
    *len = l;
    return s;
}

char *cli_skip_bom(char *text) {
    return strncmp(text, "\xef\xbb\xbf", 3) == 0 ? text + 3 : text;
}

char *cli_trim(char *s, size_t *len) {
    size_t l = *len;
    while (l && (s[l - 1] == ' ' || s[l - 1] == '\t')) l--;
    s[l] = '\0';
    while (*s == ' ' || *s == '\t') s++, l--;
    *len = l;
    return s;
}

/* Where an output lands: its directory's device and inode and its last name, and the file's
 * own device and inode when it exists (exists = 1). -1 with a message when it cannot be. */
typedef struct {
    dev_t dir_dev, dev;
    ino_t dir_ino, ino;
    char base[256];
    int exists;
    mode_t mode;
} place;

static int output_place(const cli_named_path *o, place *p) {
    memset(p, 0, sizeof *p);
    size_t n = strlen(o->path);
    if (n == 0 || o->path[n - 1] == '/') {
        cli_error("%s '%s': names a directory, not a file", o->flag, o->path);
        return -1;
    }
    char *copy = strdup(o->path), *copy2 = strdup(o->path);
    if (!copy || !copy2) {
        free(copy);
        free(copy2);
        cli_error("out of memory");
        return -1;
    }
    const char *dir = dirname(copy), *base = basename(copy2);
    struct stat ds, fs;
    int rc = 0;
    if (stat(dir, &ds) != 0 || !S_ISDIR(ds.st_mode)) {
        cli_error("%s %s: cannot write there: %s is not a directory", o->flag, o->path, dir);
        rc = -1;
    } else if (strlen(base) >= sizeof p->base) {
        cli_error("%s %s: the file name is longer than 255 bytes", o->flag, o->path);
        rc = -1;
    } else {
        p->dir_dev = ds.st_dev;
        p->dir_ino = ds.st_ino;
        strcpy(p->base, base);
        if (lstat(o->path, &fs) == 0) {
            p->exists = 1;
            p->dev = fs.st_dev;
            p->ino = fs.st_ino;
            p->mode = fs.st_mode;
        }
    }
    free(copy);
    free(copy2);
    return rc;
}

static int same_place(const place *a, const place *b) {
    if (a->exists && b->exists && a->dev == b->dev && a->ino == b->ino) return 1;
    return a->dir_dev == b->dir_dev && a->dir_ino == b->dir_ino && !strcmp(a->base, b->base);
}

/* An existing output: only a regular file that is no input, and only with --force. */
static int check_existing_output(const cli_named_path *o, const place *p,
                                 const cli_named_path *in, int nin, const struct stat *ist,
                                 int force) {
    if (!S_ISREG(p->mode)) {
        cli_error("%s %s: is %s; negsamp only ever replaces a regular file, even with --force "
                  "(write elsewhere, or remove it first)", o->flag, o->path, cli_file_kind(p->mode));
        return CLI_RUNTIME;
    }
    for (int i = 0; i < nin; i++)
        if (in[i].path && ist[i].st_dev == p->dev && ist[i].st_ino == p->ino) {
            cli_error("%s %s: is the input given as %s %s; an output never replaces an input",
                      o->flag, o->path, in[i].flag, in[i].path);
            return CLI_USAGE;
        }
    if (!force) {
        cli_error("%s %s: output exists; pass --force to overwrite it", o->flag, o->path);
        return CLI_RUNTIME;
    }
    return 0;
}

/* The inputs cli_check_files saw, for the last check before an output is renamed into place. */
static struct {
    dev_t dev;
    ino_t ino;
    const char *flag, *path;
} inputs[CLI_MAX_FILES];
static int n_inputs;

int cli_is_input(const char *path) {
    struct stat st;
    if (lstat(path, &st) != 0) return 0;
    for (int i = 0; i < n_inputs; i++)
        if (inputs[i].dev == st.st_dev && inputs[i].ino == st.st_ino) {
            cli_error("%s: is the input given as %s %s; an output never replaces an input", path,
                      inputs[i].flag, inputs[i].path);
            return 1;
        }
    return 0;
}

int cli_check_files(const cli_named_path *in, int nin, const cli_named_path *out, int nout,
                    int force) {
    struct stat ist[CLI_MAX_FILES];
    place op[CLI_MAX_FILES];
    if (nin > CLI_MAX_FILES || nout > CLI_MAX_FILES) return CLI_RUNTIME;
    n_inputs = 0;
    for (int i = 0; i < nin; i++) {
        if (!in[i].path) continue;
        if (stat(in[i].path, &ist[i]) != 0) {
            cli_error("%s %s: cannot open: %s", in[i].flag, in[i].path, strerror(errno));
            return CLI_RUNTIME;
        }
        if (refuse_input(in[i].flag, in[i].path, &ist[i])) return CLI_RUNTIME;
        inputs[n_inputs].dev = ist[i].st_dev;
        inputs[n_inputs].ino = ist[i].st_ino;
        inputs[n_inputs].flag = in[i].flag;
        inputs[n_inputs++].path = in[i].path;
    }
    for (int i = 0; i < nout; i++) {
        if (!out[i].path) continue;
        if (output_place(&out[i], &op[i])) return CLI_RUNTIME;
        for (int j = 0; j < i; j++)
            if (out[j].path && same_place(&op[j], &op[i])) {
                cli_error("%s %s and %s %s name the same file; each output needs its own",
                          out[j].flag, out[j].path, out[i].flag, out[i].path);
                return CLI_USAGE;
            }
        if (op[i].exists) {
            int rc = check_existing_output(&out[i], &op[i], in, nin, ist, force);
            if (rc) return rc;
        }
    }
    return 0;
}
