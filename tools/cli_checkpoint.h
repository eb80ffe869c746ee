/* negsamp mine --checkpoint FILE: the mined top-k of every finished query block, so that a run
 * killed (SIGKILL, a crash, Ctrl-C) continues where it stopped. The file starts with a text
 * header naming what the top-k depends on (the inputs' sizes and XXH64 fingerprints, k, the block
 * size, the scoring and exclusion options, the shapes); a checkpoint whose header differs is
 * refused, naming the first difference. Then one record per finished block, appended in order
 * and flushed to disk before the block goes on to the filter, sampler and outputs: "NSCK", b0,
 * nb, nb·k rows, nb·k scores, and an XXH64 of the record, so a record torn by a kill is
 * recognised and dropped. On resume the recorded blocks are read back instead of mined and go
 * through the same filter → sample → write stage, so the outputs are those of an uninterrupted
 * run. The checkpoint is not a temporary: a caught signal leaves it in place (that is its
 * purpose); it is removed once the outputs are committed. */
#ifndef NS_CLI_CHECKPOINT_H
#define NS_CLI_CHECKPOINT_H

#include "cli.h"

typedef struct {
    char path[4096];
    FILE *f;
    int64_t k, batch; /* candidates per query; queries per block (records hold at most batch) */
    int64_t done;     /* blocks recorded (complete, in order) when opened */
    int64_t read;     /* blocks read back so far */
    int64_t written;  /* blocks appended by this run */
} cli_checkpoint;

/* Opens path: creates it with header desc (text lines), or reads an existing one, refusing it
 * (-1, message printed) when its header differs from desc or it is not a checkpoint; a torn
 * last record is cut off. 0 on success, c->done = the blocks recorded. */
int cli_checkpoint_open(cli_checkpoint *c, const char *path, const char *desc, int64_t k,
                        int64_t batch);
/* The next recorded block, which must be queries [b0, b0 + nb): nb·k rows and scores. */
int cli_checkpoint_read(cli_checkpoint *c, int64_t b0, int64_t nb, int64_t *id, float *sc);
/* Appends the block [b0, b0 + nb) and flushes it to disk. 0 or -1 (message printed). */
int cli_checkpoint_append(cli_checkpoint *c, int64_t b0, int64_t nb, const int64_t *id,
                          const float *sc);
/* Closes; removes the file when remove is set (the outputs are committed). */
void cli_checkpoint_close(cli_checkpoint *c, int remove);

#endif
