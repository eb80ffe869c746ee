/* .npy files mapped read-only (v1/v2/v3 headers, C order; <f4 / <f2 matrices, and <i4 / <i8
 * arrays through ns_npy_open_array), so ns_mine_topk can stream a corpus larger than RAM straight
 * from the page cache. The header is untrusted input: ns_npy_parse checks every field and every
 * size before anything is read through it (tests/fuzz/fuzz_npy.c runs it under libFuzzer).
 * Errors go to the thread's last error (ns_last_error(NULL)): there is no context here. */
#define _GNU_SOURCE
#include "ns_internal.h"
#include "ns_npy.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

struct ns_npy_file {
    void *map;
    size_t map_size;
    ns_npy_array array;
    ns_matrix matrix; /* data NULL for integer arrays */
};

static const char *fn = "ns_npy_open";

/* Finds 'key' in the header dict and returns a pointer just past its ':' (spaces skipped). */
static const char *dict_value(const char *h, const char *key) {
    char quoted[32];
    for (int quote = 0; quote < 2; quote++) {
        snprintf(quoted, sizeof quoted, quote ? "\"%s\"" : "'%s'", key);
        const char *p = strstr(h, quoted);
        if (!p) continue;
        p += strlen(quoted);
        while (*p == ' ') p++;
        if (*p != ':') return NULL;
        p++;
        while (*p == ' ') p++;
        return p;
    }
    return NULL;
}

static size_t dtype_size(ns_npy_dtype t) {
    return t == NS_NPY_F16 ? 2 : t == NS_NPY_I64 ? 8 : 4;
}

static const char *dtype_name(ns_npy_dtype t) {
    static const char *names[] = {"f32", "f16", "i32", "i64"};
    return names[t];
}

static ns_status parse_descr(const char *path, const char *h, ns_npy_dtype *dtype) {
    const char *v = dict_value(h, "descr");
    if (!v || (*v != '\'' && *v != '"'))
        return ns_fail(NULL, NS_ERR_IO, "%s: %s: header has no 'descr' string: %.200s", fn, path, h);
    char q = *v++;
    const char *end = strchr(v, q);
    if (!end || end - v > 16)
        return ns_fail(NULL, NS_ERR_IO, "%s: %s: header's 'descr' is malformed: %.200s", fn, path, h);
    char descr[17];
    memcpy(descr, v, (size_t)(end - v));
    descr[end - v] = '\0';
    static const struct { const char *name; ns_npy_dtype t; } known[] = {
        {"<f4", NS_NPY_F32}, {"<f2", NS_NPY_F16}, {"<i4", NS_NPY_I32}, {"<i8", NS_NPY_I64}};
    for (size_t i = 0; i < sizeof known / sizeof known[0]; i++)
        if (!strcmp(descr, known[i].name)) {
            *dtype = known[i].t;
            return NS_OK;
        }
    return ns_fail(NULL, NS_ERR_UNSUPPORTED,
                   "%s: %s: dtype '%s' is not supported; expected '<f4' (float32), '<f2' "
                   "(float16), or for index arrays '<i8' / '<i4'", fn, path, descr);
}

static ns_status parse_order(const char *path, const char *h) {
    const char *v = dict_value(h, "fortran_order");
    if (!v)
        return ns_fail(NULL, NS_ERR_IO, "%s: %s: header has no 'fortran_order': %.200s", fn, path, h);
    if (!strncmp(v, "True", 4))
        return ns_fail(NULL, NS_ERR_UNSUPPORTED,
                       "%s: %s: fortran_order is True; only C-order arrays can be mapped (save "
                       "with np.ascontiguousarray)", fn, path);
    if (strncmp(v, "False", 5))
        return ns_fail(NULL, NS_ERR_IO, "%s: %s: header's 'fortran_order' is neither True nor False",
                       fn, path);
    return NS_OK;
}

/* The shape tuple: 1 or 2 non-negative dimensions that each fit in int64. */
static ns_status parse_shape(const char *path, const char *h, ns_npy_layout *out) {
    const char *v = dict_value(h, "shape");
    if (!v || *v != '(')
        return ns_fail(NULL, NS_ERR_IO, "%s: %s: header has no 'shape' tuple: %.200s", fn, path, h);
    v++;
    int64_t dims[3];
    int n = 0;
    for (;;) {
        while (*v == ' ') v++;
        if (*v == ')') break;
        if (*v < '0' || *v > '9')
            return ns_fail(NULL, NS_ERR_IO, "%s: %s: header's 'shape' is malformed: %.200s", fn,
                           path, h);
        errno = 0;
        char *e;
        long long x = strtoll(v, &e, 10);
        if (errno == ERANGE)
            return ns_fail(NULL, NS_ERR_IO, "%s: %s: header's 'shape' has a dimension %.40s that "
                           "does not fit in 64 bits", fn, path, v);
        if (n == 3)
            return ns_fail(NULL, NS_ERR_UNSUPPORTED,
                           "%s: %s: arrays of more than 2 dimensions are not supported", fn, path);
        dims[n++] = (int64_t)x;
        v = e;
        while (*v == ' ') v++;
        if (*v == ',') v++;
        else if (*v != ')')
            return ns_fail(NULL, NS_ERR_IO, "%s: %s: header's 'shape' is malformed: %.200s", fn,
                           path, h);
    }
    if (n == 0 || n > 2)
        return ns_fail(NULL, NS_ERR_UNSUPPORTED,
                       "%s: %s: shape has %d dimensions; expected 1 or 2", fn, path, n);
    out->ndim = n;
    out->rows = dims[0];
    out->cols = n == 2 ? dims[1] : 1;
    return NS_OK;
}

/* The preamble: magic, version, header length; sets *hstart and *hlen. */
static ns_status parse_preamble(const unsigned char *b, size_t size, const char *path,
                                size_t *hstart, size_t *hlen) {
    if (size < 10)
        return ns_fail(NULL, NS_ERR_IO, "%s: %s: file has %zu bytes, too short for a .npy header",
                       fn, path, size);
    if (memcmp(b, "\x93NUMPY", 6) != 0)
        return ns_fail(NULL, NS_ERR_IO, "%s: %s: bad magic; not a .npy file", fn, path);
    unsigned major = b[6];
    if (major == 1) {
        *hlen = (size_t)b[8] | (size_t)b[9] << 8;
        *hstart = 10;
    } else if (major == 2 || major == 3) {
        if (size < 12)
            return ns_fail(NULL, NS_ERR_IO, "%s: %s: file has %zu bytes, too short for a v%u header",
                           fn, path, size, major);
        *hlen = (size_t)b[8] | (size_t)b[9] << 8 | (size_t)b[10] << 16 | (size_t)b[11] << 24;
        *hstart = 12;
    } else {
        return ns_fail(NULL, NS_ERR_IO, "%s: %s: .npy format version %u.%u is not 1, 2 or 3", fn,
                       path, major, (unsigned)b[7]);
    }
    if (*hlen > size - *hstart)
        return ns_fail(NULL, NS_ERR_IO, "%s: %s: truncated header: file has %zu bytes but the "
                       "header claims %zu", fn, path, size, *hstart + *hlen);
    return NS_OK;
}

/* rows · cols · element size against the bytes after the header: no overflow, exact match. */
static ns_status check_size(const char *path, size_t size, ns_npy_layout *l) {
    size_t esize = dtype_size(l->dtype);
    if (l->offset % esize)
        return ns_fail(NULL, NS_ERR_IO, "%s: %s: data offset %zu is not aligned to %zu bytes", fn,
                       path, l->offset, esize);
    uint64_t r = (uint64_t)l->rows, c = (uint64_t)l->cols;
    if (c > 0 && r > (uint64_t)(SIZE_MAX / esize) / c)
        return ns_fail(NULL, NS_ERR_IO, "%s: %s: shape %lld×%lld of %s overflows: more than 2^64 "
                       "bytes", fn, path, (long long)l->rows, (long long)l->cols,
                       dtype_name(l->dtype));
    l->bytes = (size_t)(r * c) * esize;
    size_t avail = size - l->offset;
    if (l->bytes > avail)
        return ns_fail(NULL, NS_ERR_IO,
                       "%s: %s: truncated: file has %zu bytes but header says %lld×%lld %s (%zu "
                       "bytes)", fn, path, size, (long long)l->rows, (long long)l->cols,
                       dtype_name(l->dtype), l->offset + l->bytes);
    if (l->bytes < avail)
        return ns_fail(NULL, NS_ERR_IO,
                       "%s: %s: file has %zu bytes but header says %lld×%lld %s (%zu bytes): %zu "
                       "bytes more than its shape", fn, path, size, (long long)l->rows,
                       (long long)l->cols, dtype_name(l->dtype), l->offset + l->bytes,
                       avail - l->bytes);
    return NS_OK;
}

ns_status ns_npy_parse(const unsigned char *b, size_t size, const char *path, ns_npy_layout *out) {
    memset(out, 0, sizeof *out);
    size_t hstart = 0, hlen = 0;
    ns_status st = parse_preamble(b, size, path, &hstart, &hlen);
    if (st) return st;
    char *header = (char *)malloc(hlen + 1);
    if (!header)
        return ns_fail(NULL, NS_ERR_OUT_OF_MEMORY, "%s: %s: cannot allocate the header", fn, path);
    memcpy(header, b + hstart, hlen);
    header[hlen] = '\0';
    if (!(st = parse_descr(path, header, &out->dtype)) && !(st = parse_order(path, header)))
        st = parse_shape(path, header, out);
    free(header);
    if (st) return st;
    out->offset = hstart + hlen;
    return check_size(path, size, out);
}

/* Opens path without ever blocking (a FIFO is refused, not waited on) and maps it. */
static ns_status map_file(const char *path, void **map, size_t *size) {
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
    if (fd < 0)
        return ns_fail(NULL, NS_ERR_IO, "%s: %s: cannot open (%s)", fn, path, strerror(errno));
    struct stat sb;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        close(fd);
        return ns_fail(NULL, NS_ERR_IO, "%s: %s: not a regular file (%s)", fn, path,
                       S_ISDIR(sb.st_mode) ? "a directory" : S_ISFIFO(sb.st_mode) ? "a FIFO"
                       : S_ISCHR(sb.st_mode) || S_ISBLK(sb.st_mode) ? "a device" : "not a file");
    }
    *size = (size_t)sb.st_size;
    if (*size < 10) {
        close(fd);
        return ns_fail(NULL, NS_ERR_IO, "%s: %s: file has %zu bytes, too short for a .npy header",
                       fn, path, *size);
    }
    *map = mmap(NULL, *size, PROT_READ, MAP_SHARED, fd, 0);
    int map_errno = errno;
    close(fd); /* the mapping keeps the file */
    if (*map == MAP_FAILED)
        return ns_fail(NULL, NS_ERR_IO, "%s: %s: cannot map %zu bytes (%s)", fn, path, *size,
                       strerror(map_errno));
    return NS_OK;
}

static ns_status open_file(const char *path, ns_npy_file **file, int integers) {
    ns_clear_error(NULL);
    if (!file) return ns_fail(NULL, NS_ERR_INVALID_ARGUMENT, "%s: file is NULL", fn);
    *file = NULL;
    if (!path) return ns_fail(NULL, NS_ERR_INVALID_ARGUMENT, "%s: path is NULL", fn);
    void *map = NULL;
    size_t size = 0;
    ns_status st = map_file(path, &map, &size);
    if (st) return st;
    ns_npy_layout l;
    st = ns_npy_parse((const unsigned char *)map, size, path, &l);
    int is_int = l.dtype == NS_NPY_I32 || l.dtype == NS_NPY_I64;
    if (!st && is_int && !integers)
        st = ns_fail(NULL, NS_ERR_UNSUPPORTED, "%s: %s: dtype '<i%d' is not supported; expected "
                     "'<f4' (float32) or '<f2' (float16)", fn, path, (int)dtype_size(l.dtype));
    ns_npy_file *f = st ? NULL : (ns_npy_file *)calloc(1, sizeof *f);
    if (!st && !f)
        st = ns_fail(NULL, NS_ERR_OUT_OF_MEMORY, "%s: %s: cannot allocate the file record", fn, path);
    if (st) {
        munmap(map, size);
        return st;
    }
    /* Mining reads the corpus front to back: let the kernel read ahead. */
    madvise(map, size, MADV_SEQUENTIAL);
    f->map = map;
    f->map_size = size;
    const char *data = (const char *)map + l.offset;
    ns_npy_array a = {data, l.dtype, l.ndim, l.rows, l.cols};
    f->array = a;
    if (!is_int) {
        f->matrix.data = data;
        f->matrix.dtype = l.dtype == NS_NPY_F16 ? NS_F16 : NS_F32;
        f->matrix.rows = l.rows;
        f->matrix.cols = l.cols;
        f->matrix.ld = l.cols;
    }
    *file = f;
    return NS_OK;
}

ns_status ns_npy_open(const char *path, ns_npy_file **file) { return open_file(path, file, 0); }

ns_status ns_npy_open_array(const char *path, ns_npy_file **file) {
    return open_file(path, file, 1);
}

ns_matrix ns_npy_matrix(const ns_npy_file *file) {
    ns_matrix m;
    memset(&m, 0, sizeof m);
    if (file) m = file->matrix;
    return m;
}

ns_status ns_npy_get_array(const ns_npy_file *file, ns_npy_array *array) {
    if (!array)
        return ns_fail(NULL, NS_ERR_INVALID_ARGUMENT, "ns_npy_get_array: array is NULL");
    memset(array, 0, sizeof *array);
    if (!file) return ns_fail(NULL, NS_ERR_INVALID_ARGUMENT, "ns_npy_get_array: file is NULL");
    *array = file->array;
    return NS_OK;
}

ns_status ns_npy_close(ns_npy_file *file) {
    if (!file) return NS_OK;
    munmap(file->map, file->map_size);
    free(file);
    return NS_OK;
}
