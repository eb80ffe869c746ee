/* libFuzzer target: the library's .npy parser (ns_npy_parse, behind ns_npy_open and
 * ns_npy_open_array) on any bytes. Whatever it accepts must describe data inside the image:
 * offset + rows·cols·size == the image size, and every data byte is read here. */
#include "ns_npy.h"

#include <stdint.h>
#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    ns_npy_layout l;
    if (ns_npy_parse(data, size, "fuzz.npy", &l) != NS_OK) return 0;
    size_t esize = l.dtype == NS_NPY_F16 ? 2 : l.dtype == NS_NPY_I64 ? 8 : 4;
    if (l.ndim < 1 || l.ndim > 2 || l.rows < 0 || l.cols < 0) abort();
    if (l.offset > size || l.bytes != size - l.offset || l.offset % esize) abort();
    if (l.cols && (uint64_t)l.rows > UINT64_MAX / (uint64_t)l.cols) abort();
    if ((uint64_t)l.rows * (uint64_t)l.cols * esize != l.bytes) abort();
    volatile uint8_t acc = 0;
    for (size_t i = 0; i < l.bytes; i++) acc ^= data[l.offset + i];
    (void)acc;
    return 0;
}
