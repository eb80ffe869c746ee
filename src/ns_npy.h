/* The .npy image parser behind ns_npy_open / ns_npy_open_array, on a byte buffer, so the same
 * checks serve the memory map, the tests and the fuzz target (tests/fuzz/fuzz_npy.c). */
#ifndef NS_NPY_H
#define NS_NPY_H

#include "negsamp.h"

#include <stddef.h>

typedef struct {
    ns_npy_dtype dtype;
    int ndim;           /* 1 or 2 */
    int64_t rows, cols; /* a 1-D array has cols == 1 */
    size_t offset;      /* of the data in the image */
    size_t bytes;       /* rows · cols · element size; offset + bytes == size */
} ns_npy_layout;

/* Validates a whole .npy image of size bytes: magic, version, header dict (descr, fortran_order,
 * shape), element type, alignment, and that the shape matches the data exactly (no overflow, no
 * missing or extra bytes). path only names the file in messages. On failure records the message
 * in the thread's last error and returns NS_ERR_IO (malformed, truncated, inconsistent) or
 * NS_ERR_UNSUPPORTED (a valid .npy of a dtype, order or rank that negsamp does not read). */
ns_status ns_npy_parse(const unsigned char *image, size_t size, const char *path,
                       ns_npy_layout *out);

#endif
