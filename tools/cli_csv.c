/* Numbers from a CSV file, plain or gzip-compressed (the demo's digits data). */
#define _POSIX_C_SOURCE 200809L
#include "cli.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zlib.h>

int cli_csv_read(const char *path, double **values, int64_t *rows, int64_t *cols) {
    FILE *f = cli_open_input(path);
    if (!f) return -1;
    gzFile g = gzdopen(dup(fileno(f)), "rb"); /* reads plain files too */
    fclose(f);
    if (!g) {
        cli_error("%s: cannot open: %s", path, strerror(errno));
        return -1;
    }
    int64_t cap = 1 << 16, n = 0, r = 0, c0 = -1;
    double *v = malloc((size_t)cap * sizeof(double));
    char line[1 << 16];
    while (v && gzgets(g, line, sizeof line)) {
        size_t l = strlen(line);
        if (l == sizeof line - 1 && line[l - 1] != '\n') {
            cli_error("%s: line %lld is longer than %zu bytes", path, (long long)r + 1,
                      sizeof line - 2);
            free(v);
            gzclose(g);
            return -1;
        }
        if (strspn(line, " \t\r\n") == l) continue;
        int64_t c = 0;
        char *p = line;
        for (;;) {
            char *end;
            double x = strtod(p, &end);
            if (end == p) {
                cli_error("%s: line %lld, field %lld is not a number", path, (long long)r + 1,
                          (long long)c + 1);
                free(v);
                gzclose(g);
                return -1;
            }
            if (n == cap) {
                cap *= 2;
                double *nv = realloc(v, (size_t)cap * sizeof(double));
                if (!nv) {
                    free(v);
                    v = NULL;
                    break;
                }
                v = nv;
            }
            v[n++] = x;
            c++;
            p = end + strspn(end, " \t\r");
            if (*p == ',') p++;
            else break;
        }
        if (!v) break;
        if (c0 < 0) c0 = c;
        else if (c != c0) {
            cli_error("%s: line %lld has %lld fields but line 1 has %lld", path, (long long)r + 1,
                      (long long)c, (long long)c0);
            free(v);
            gzclose(g);
            return -1;
        }
        r++;
    }
    int errnum = 0;
    const char *zmsg = gzerror(g, &errnum);
    if (!v || errnum < 0) {
        cli_error("%s: %s", path, !v ? "out of memory" : zmsg);
        free(v);
        gzclose(g);
        return -1;
    }
    gzclose(g);
    if (r == 0) {
        cli_error("%s: holds no rows", path);
        free(v);
        return -1;
    }
    *values = v;
    *rows = r;
    *cols = c0;
    return 0;
}
