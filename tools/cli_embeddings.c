/* Embeddings in: .npy through the library's memory map (ns_npy_open), .fvecs read into memory;
 * rows as f32 (f16/bf16 converted). */
#define _POSIX_C_SOURCE 200809L
#include "cli.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

float cli_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h >> 15) << 31, exp = (h >> 10) & 31, man = h & 1023, bits;
    if (exp == 0) {
        if (man == 0) bits = sign;
        else { /* subnormal: normalise */
            int e = -1;
            do { man <<= 1; e++; } while (!(man & 1024));
            bits = sign | ((uint32_t)(127 - 15 - e) << 23) | ((man & 1023) << 13);
        }
    } else if (exp == 31) bits = sign | 0x7f800000u | (man << 13);
    else bits = sign | ((exp + 112) << 23) | (man << 13);
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

static int ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && strcmp(s + n - m, suffix) == 0;
}

/* The dimension (row 0's) and the row count; -1 with a message when the sizes disagree. */
static int fvecs_shape(FILE *f, const char *path, int32_t *d, int64_t *rows) {
    if (fseeko(f, 0, SEEK_END) != 0) {
        cli_error("%s: cannot seek: %s", path, strerror(errno));
        return -1;
    }
    int64_t size = (int64_t)ftello(f);
    rewind(f);
    if (size < 4 || fread(d, 4, 1, f) != 1) {
        cli_error("%s: empty or truncated .fvecs (no dimension in the first 4 bytes)", path);
        return -1;
    }
    if (*d < 1 || *d > (1 << 20)) {
        cli_error("%s: .fvecs dimension %d of row 0 is not in [1, 1048576]; is this an .fvecs file?",
                  path, (int)*d);
        return -1;
    }
    int64_t row_bytes = 4 + 4 * (int64_t)*d;
    if (size % row_bytes != 0) {
        cli_error("%s: truncated .fvecs: %lld bytes is not a whole number of rows of dimension %d "
                  "(%lld bytes each)", path, (long long)size, (int)*d, (long long)row_bytes);
        return -1;
    }
    *rows = size / row_bytes;
    return 0;
}

int cli_fvecs_read(FILE *f, const char *path, cli_embeddings *e) {
    int32_t d;
    int64_t rows;
    if (fvecs_shape(f, path, &d, &rows)) return -1;
    float *data = malloc((size_t)(rows * d) * sizeof(float));
    if (!data) {
        cli_error("%s: out of memory for %lld × %d floats", path, (long long)rows, (int)d);
        return -1;
    }
    for (int64_t r = 0; r < rows; r++) {
        int32_t dr = d;
        if ((r > 0 && fread(&dr, 4, 1, f) != 1) ||
            fread(data + r * d, 4, (size_t)d, f) != (size_t)d) {
            cli_error("%s: read error at row %lld", path, (long long)r);
            free(data);
            return -1;
        }
        if (dr != d) {
            cli_error("%s: row %lld has dimension %d but row 0 has %d", path, (long long)r,
                      (int)dr, (int)d);
            free(data);
            return -1;
        }
    }
    e->owned = data;
    e->m.data = data;
    e->m.dtype = NS_F32;
    e->m.rows = rows;
    e->m.cols = d;
    e->m.ld = d;
    return 0;
}

static int fvecs_load(const char *path, cli_embeddings *e) {
    FILE *f = cli_open_input(path);
    if (!f) return -1;
    int rc = cli_fvecs_read(f, path, e);
    fclose(f);
    return rc;
}

int cli_embeddings_load(const char *path, cli_embeddings *e) {
    memset(e, 0, sizeof(*e));
    e->path = path;
    if (ends_with(path, ".fvecs")) return fvecs_load(path, e);
    if (!ends_with(path, ".npy")) {
        cli_error("%s: unknown embedding format; expected a .npy or .fvecs file", path);
        return -1;
    }
    ns_status st = ns_npy_open(path, &e->npy);
    if (st != NS_OK) {
        const char *msg = ns_last_error(NULL);
        if (strstr(msg, path)) cli_error("%s", msg);
        else cli_error("%s: %s", path, msg);
        e->npy = NULL;
        return -1;
    }
    e->m = ns_npy_matrix(e->npy);
    if (e->m.rows < 1 || e->m.cols < 1) {
        cli_error("%s: holds no embeddings (shape %lld x %lld); expected at least one row of at "
                  "least one column", path, (long long)e->m.rows, (long long)e->m.cols);
        cli_embeddings_free(e);
        return -1;
    }
    return 0;
}

int cli_embeddings_load_pair(const char *qpath, cli_embeddings *q, const char *cpath,
                             cli_embeddings *c) {
    if (cli_embeddings_load(qpath, q) || cli_embeddings_load(cpath, c)) return -1;
    if (q->m.cols == c->m.cols) return 0;
    cli_error("dimension mismatch: %s has %lld columns but %s has %lld", qpath,
              (long long)q->m.cols, cpath, (long long)c->m.cols);
    return -1;
}

void cli_embeddings_free(cli_embeddings *e) {
    if (e->npy) ns_npy_close(e->npy);
    free(e->owned);
    e->npy = NULL;
    e->owned = NULL;
}

void cli_embeddings_row(const cli_embeddings *e, int64_t r, float *out) {
    int64_t ld = e->m.ld ? e->m.ld : e->m.cols;
    if (e->m.dtype == NS_F32) {
        memcpy(out, (const float *)e->m.data + r * ld, (size_t)e->m.cols * sizeof(float));
        return;
    }
    const uint16_t *h = (const uint16_t *)e->m.data + r * ld;
    for (int64_t c = 0; c < e->m.cols; c++) {
        if (e->m.dtype == NS_F16) out[c] = cli_f16_to_f32(h[c]);
        else {
            uint32_t bits = (uint32_t)h[c] << 16;
            memcpy(&out[c], &bits, 4);
        }
    }
}
