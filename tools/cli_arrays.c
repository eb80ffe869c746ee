/* Whole .npy arrays in (candidate index and score matrices of `negsamp sample`), read through
 * the library's checked reader, converted to int64 / f32. */
#define _POSIX_C_SOURCE 200809L
#include "cli.h"

#include <stdlib.h>
#include <string.h>

/* Reads the whole array through the library's checked reader (ns_npy_open_array: the same
 * header, shape and size checks as every .npy input), then copies it out of the mapping. */
int cli_npy_read(const char *path, cli_array *a) {
    memset(a, 0, sizeof(*a));
    ns_npy_file *f = NULL;
    if (ns_npy_open_array(path, &f) != NS_OK) {
        const char *msg = ns_last_error(NULL);
        if (strstr(msg, path)) cli_error("%s", msg);
        else cli_error("%s: %s", path, msg);
        return -1;
    }
    ns_npy_array arr;
    ns_npy_get_array(f, &arr);
    static const cli_kind kinds[] = {CLI_F32, CLI_F16, CLI_I32, CLI_I64};
    static const size_t sizes[] = {4, 2, 4, 8};
    a->kind = kinds[arr.dtype];
    a->ndim = arr.ndim;
    a->shape[0] = arr.rows;
    a->shape[1] = arr.cols;
    /* The library checked rows · cols · size against the file: it neither overflows nor
     * exceeds the bytes mapped. */
    size_t need = (size_t)arr.rows * (size_t)arr.cols * sizes[arr.dtype];
    a->data = malloc(need ? need : 1);
    if (!a->data) {
        cli_error("%s: out of memory for %zu bytes", path, need);
        ns_npy_close(f);
        return -1;
    }
    if (need) memcpy(a->data, arr.data, need);
    ns_npy_close(f);
    return 0;
}

int cli_array_to_i64(const char *path, cli_array *a) {
    int64_t n = a->shape[0] * a->shape[1];
    if (a->kind == CLI_I64) return 0;
    if (a->kind != CLI_I32) {
        cli_error("%s: holds floats; expected an integer (<i8 or <i4) index matrix", path);
        return -1;
    }
    int64_t *out = malloc((size_t)(n ? n : 1) * 8);
    if (!out) {
        cli_error("%s: out of memory", path);
        return -1;
    }
    for (int64_t i = 0; i < n; i++) out[i] = ((const int32_t *)a->data)[i];
    free(a->data);
    a->data = out;
    a->kind = CLI_I64;
    return 0;
}

int cli_array_to_f32(const char *path, cli_array *a) {
    int64_t n = a->shape[0] * a->shape[1];
    if (a->kind == CLI_F32) return 0;
    if (a->kind != CLI_F16) {
        cli_error("%s: holds integers; expected a float (<f4 or <f2) score array", path);
        return -1;
    }
    float *out = malloc((size_t)(n ? n : 1) * 4);
    if (!out) {
        cli_error("%s: out of memory", path);
        return -1;
    }
    for (int64_t i = 0; i < n; i++) out[i] = cli_f16_to_f32(((const uint16_t *)a->data)[i]);
    free(a->data);
    a->data = out;
    a->kind = CLI_F32;
    return 0;
}
