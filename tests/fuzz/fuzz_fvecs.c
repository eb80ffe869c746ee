/* libFuzzer target: the CLI's .fvecs reader (cli_fvecs_read) on any bytes, through a memory
 * stream. What it accepts must be rows × d floats, every row of dimension d. */
#define _GNU_SOURCE
#include "cli.h"

#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    cli_silent = 1;
    if (size == 0) return 0; /* fmemopen needs a buffer; cli_open_input gives an empty file */
    FILE *f = fmemopen((void *)data, size, "rb");
    if (!f) return 0;
    cli_embeddings e = {0};
    if (cli_fvecs_read(f, "fuzz.fvecs", &e) == 0) {
        if (e.m.rows < 1 || e.m.cols < 1 || (size_t)(e.m.rows * (e.m.cols + 1) * 4) != size)
            abort();
        volatile float acc = 0;
        for (int64_t i = 0; i < e.m.rows * e.m.cols; i++) acc += e.owned[i];
        (void)acc;
    }
    free(e.owned);
    fclose(f);
    return 0;
}
