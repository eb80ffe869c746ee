/* .npy files mapped read-only (v1/v2/v3 headers, C order, <f4 / <f2), so ns_mine_topk can stream
 * a corpus larger than RAM straight from the page cache. Errors go to the thread's last error
 * (ns_last_error(NULL)): there is no context here. */
#define _GNU_SOURCE
#include "ns_internal.h"

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
    ns_matrix matrix;
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

/* Parses the header dict; fills dtype, rows, cols or records the failure. */
static ns_status parse_header(const char *path, const char *h, ns_dtype *dtype, int64_t *rows,
                              int64_t *cols) {
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
    if (!strcmp(descr, "<f4")) *dtype = NS_F32;
    else if (!strcmp(descr, "<f2")) *dtype = NS_F16;
    else
        return ns_fail(NULL, NS_ERR_UNSUPPORTED,
                       "%s: %s: dtype '%s' is not supported; expected '<f4' (float32) or '<f2' "
                       "(float16)", fn, path, descr);

    v = dict_value(h, "fortran_order");
    if (!v)
        return ns_fail(NULL, NS_ERR_IO, "%s: %s: header has no 'fortran_order': %.200s", fn, path, h);
    if (!strncmp(v, "True", 4))
        return ns_fail(NULL, NS_ERR_UNSUPPORTED,
                       "%s: %s: fortran_order is True; only C-order arrays can be mapped (save "
                       "with np.ascontiguousarray)", fn, path);
    if (strncmp(v, "False", 5))
        return ns_fail(NULL, NS_ERR_IO, "%s: %s: header's 'fortran_order' is neither True nor False",
                       fn, path);

    v = dict_value(h, "shape");
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
        if (errno || x < 0)
            return ns_fail(NULL, NS_ERR_IO, "%s: %s: header's 'shape' has a bad dimension", fn, path);
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
    *rows = dims[0];
    *cols = n == 2 ? dims[1] : 1;
    return NS_OK;
}

ns_status ns_npy_open(const char *path, ns_npy_file **file) {
    ns_clear_error(NULL);
    if (!file) return ns_fail(NULL, NS_ERR_INVALID_ARGUMENT, "%s: file is NULL", fn);
    *file = NULL;
    if (!path) return ns_fail(NULL, NS_ERR_INVALID_ARGUMENT, "%s: path is NULL", fn);

    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return ns_fail(NULL, NS_ERR_IO, "%s: %s: cannot open (%s)", fn, path, strerror(errno));
    struct stat sb;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        close(fd);
        return ns_fail(NULL, NS_ERR_IO, "%s: %s: not a regular file", fn, path);
    }
    size_t size = (size_t)sb.st_size;
    if (size < 10) {
        close(fd);
        return ns_fail(NULL, NS_ERR_IO, "%s: %s: file has %zu bytes, too short for a .npy header",
                       fn, path, size);
    }
    void *map = mmap(NULL, size, PROT_READ, MAP_SHARED, fd, 0);
    int map_errno = errno;
    close(fd); /* the mapping keeps the file */
    if (map == MAP_FAILED)
        return ns_fail(NULL, NS_ERR_IO, "%s: %s: cannot map %zu bytes (%s)", fn, path, size,
                       strerror(map_errno));
    const unsigned char *b = (const unsigned char *)map;
    ns_status st = NS_OK;
    char *header = NULL;
    ns_dtype dtype = NS_F32;
    int64_t rows = 0, cols = 0;
    size_t offset = 0;

    if (memcmp(b, "\x93NUMPY", 6) != 0) {
        st = ns_fail(NULL, NS_ERR_IO, "%s: %s: bad magic; not a .npy file", fn, path);
        goto fail;
    }
    unsigned major = b[6];
    size_t hlen;
    if (major == 1) {
        hlen = (size_t)b[8] | (size_t)b[9] << 8;
        offset = 10;
    } else if (major == 2 || major == 3) {
        if (size < 12) {
            st = ns_fail(NULL, NS_ERR_IO, "%s: %s: file has %zu bytes, too short for a v%u header",
                         fn, path, size, major);
            goto fail;
        }
        hlen = (size_t)b[8] | (size_t)b[9] << 8 | (size_t)b[10] << 16 | (size_t)b[11] << 24;
        offset = 12;
    } else {
        st = ns_fail(NULL, NS_ERR_IO, "%s: %s: .npy format version %u.%u is not 1, 2 or 3", fn,
                     path, major, (unsigned)b[7]);
        goto fail;
    }
    if (hlen > size - offset) {
        st = ns_fail(NULL, NS_ERR_IO, "%s: %s: file has %zu bytes but the header claims %zu",
                     fn, path, size, offset + hlen);
        goto fail;
    }
    header = (char *)malloc(hlen + 1);
    if (!header) {
        st = ns_fail(NULL, NS_ERR_OUT_OF_MEMORY, "%s: %s: cannot allocate the header", fn, path);
        goto fail;
    }
    memcpy(header, b + offset, hlen);
    header[hlen] = '\0';
    offset += hlen;
    if ((st = parse_header(path, header, &dtype, &rows, &cols))) goto fail;

    size_t esize = ns_dtype_size(dtype);
    if (offset % esize) {
        st = ns_fail(NULL, NS_ERR_IO, "%s: %s: data offset %zu is not aligned to %zu bytes", fn,
                     path, offset, esize);
        goto fail;
    }
    /* rows·cols·esize without overflow */
    size_t avail = size - offset;
    if (cols > 0 && (uint64_t)rows > (uint64_t)(SIZE_MAX / esize) / (uint64_t)cols) {
        st = ns_fail(NULL, NS_ERR_IO, "%s: %s: shape %lld×%lld overflows", fn, path,
                     (long long)rows, (long long)cols);
        goto fail;
    }
    size_t need = (size_t)rows * (size_t)cols * esize;
    if (need > avail) {
        st = ns_fail(NULL, NS_ERR_IO,
                     "%s: %s: file has %zu bytes but header says %lld×%lld %s (%zu bytes)", fn,
                     path, size, (long long)rows, (long long)cols, ns_dtype_name(dtype),
                     offset + need);
        goto fail;
    }
    free(header);
    header = NULL;

    ns_npy_file *f = (ns_npy_file *)calloc(1, sizeof *f);
    if (!f) {
        st = ns_fail(NULL, NS_ERR_OUT_OF_MEMORY, "%s: %s: cannot allocate the file record", fn, path);
        goto fail;
    }
    /* Mining reads the corpus front to back: let the kernel read ahead. */
    madvise(map, size, MADV_SEQUENTIAL);
    f->map = map;
    f->map_size = size;
    f->matrix.data = b + offset;
    f->matrix.dtype = dtype;
    f->matrix.rows = rows;
    f->matrix.cols = cols;
    f->matrix.ld = cols;
    *file = f;
    return NS_OK;

fail:
    free(header);
    munmap(map, size);
    return st;
}

ns_matrix ns_npy_matrix(const ns_npy_file *file) {
    ns_matrix m;
    memset(&m, 0, sizeof m);
    if (file) m = file->matrix;
    return m;
}

ns_status ns_npy_close(ns_npy_file *file) {
    if (!file) return NS_OK;
    munmap(file->map, file->map_size);
    free(file);
    return NS_OK;
}
