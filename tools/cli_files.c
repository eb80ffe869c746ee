/* Input files: whole text files read into memory. */
#define _POSIX_C_SOURCE 200809L
#include "cli.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

/* Reads a file into a NUL-terminated buffer. */
char *cli_read_text(const char *path, size_t *len_out) {
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
