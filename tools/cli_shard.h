/* negsamp mine across MPI ranks (`mpirun -np R negsamp mine ...`): the launch is detected from
 * the launcher's environment; each rank mines rows [r·N/R, (r+1)·N/R) of the corpus, the
 * library merges the ranks' top-k lists (ns_mine_options.comm) and rank 0 alone writes the
 * outputs, which are byte for byte those of a one-process run. Without a launcher (or with one
 * rank) everything here is a no-op and the program runs as one process. */
#ifndef NS_CLI_SHARD_H
#define NS_CLI_SHARD_H

#include "cli.h"

typedef struct {
    int rank, size;  /* 0 and 1 in a one-process run */
    int mpi;         /* MPI was initialised here */
    ns_comm *comm;   /* the library's communicator over MPI_COMM_WORLD (size > 1) */
} cli_shard;

/* Initialises MPI when launched by mpirun/mpiexec/srun with more than one rank. 0, or -1 with
 * a message (a build without MPI launched with several ranks). */
int cli_shard_init(cli_shard *sh);
/* The communicator for ctx (a CPU context: MPI; CUDA contexts are refused, NCCL needs a
 * device per rank which the CLI does not set up yet). 0 or -1 (message printed). */
int cli_shard_comm(cli_shard *sh, ns_context *ctx);
/* This rank's rows [*r0, *r0 + *n) of a corpus of rows rows. */
void cli_shard_rows(const cli_shard *sh, int64_t rows, int64_t *r0, int64_t *n);
/* 1 when any rank passes failed != 0 (every rank learns it; collective), else 0. */
int cli_shard_any_failed(const cli_shard *sh, int failed);
/* Rank 0's v on every rank (collective). */
int64_t cli_shard_bcast(const cli_shard *sh, int64_t v);
/* 1 on the rank that writes outputs and reports (rank 0). */
static inline int cli_shard_writer(const cli_shard *sh) { return sh->rank == 0; }
/* Destroys the communicator and finalises MPI (when initialised here). */
void cli_shard_finish(cli_shard *sh);

#endif
