/* Whole .npy arrays in (candidate index and score matrices of `negsamp sample`), read through
 * the library's checked reader, converted to int64 / f32. */
#define _POSIX_C_SOURCE 200809L
#include "cli.h"

#include <stdlib.h>
#include <string.h>

/* Element t of a mapped array as int64 / f32. */
static void to_i64(const ns_npy_array *x, void *out, int64_t n) {
    int64_t *o = out;
    if (x->dtype == NS_NPY_I64) memcpy(o, x->data, (size_t)n * 8);
    else
        for (int64_t t = 0; t < n; t++) o[t] = ((const int32_t *)x->data)[t];
}

static void to_f32(const ns_npy_array *x, void *out, int64_t n) {
    float *o = out;
    if (x->dtype == NS_NPY_F32) memcpy(o, x->data, (size_t)n * 4);
    else
        for (int64_t t = 0; t < n; t++) o[t] = cli_f16_to_f32(((const uint16_t *)x->data)[t]);
}

/* Reads the whole array through the library's checked reader (ns_npy_open_array: the same
 * header, shape and size checks as every .npy input), converting out of the mapping into
 * int64 (want CLI_I64: <i8, <i4) or f32 (CLI_F32: <f4, <f2). */
static int npy_read_as(const char *path, cli_kind want, cli_array *a) {
    memset(a, 0, sizeof(*a));
    ns_npy_file *f = NULL;
    if (ns_npy_open_array(path, &f) != NS_OK) {
        const char *msg = ns_last_error(NULL);
        if (strstr(msg, path)) cli_error("%s", msg);
        else cli_error("%s: %s", path, msg);
        return -1;
    }
    ns_npy_array x;
    ns_npy_get_array(f, &x);
    int ints = x.dtype == NS_NPY_I64 || x.dtype == NS_NPY_I32;
    int rc = -1;
    if (want == CLI_I64 && !ints)
        cli_error("%s: holds floats; expected an integer (<i8 or <i4) index matrix", path);
    else if (want == CLI_F32 && ints)
        cli_error("%s: holds integers; expected a float (<f4 or <f2) score array", path);
    else {
        /* The library checked rows · cols against the file: no overflow, all mapped. */
        int64_t n = x.rows * x.cols;
        a->data = malloc((size_t)(n ? n : 1) * (want == CLI_I64 ? 8 : 4));
        if (!a->data) {
            cli_error("%s: out of memory for %lld values", path, (long long)n);
        } else {
            (want == CLI_I64 ? to_i64 : to_f32)(&x, a->data, n);
            a->kind = want;
            a->ndim = x.ndim;
            a->shape[0] = x.rows;
            a->shape[1] = x.cols;
            rc = 0;
        }
    }
    ns_npy_close(f);
    return rc;
}

int cli_npy_read_i64(const char *path, cli_array *a) { return npy_read_as(path, CLI_I64, a); }

int cli_npy_read_f32(const char *path, cli_array *a) { return npy_read_as(path, CLI_F32, a); }
