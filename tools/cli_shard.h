/* negsamp mine across ranks (`mpirun -np R negsamp mine ...`): the launch is detected from
 * the launcher's environment; each rank mines rows [r·N/R, (r+1)·N/R) of the corpus, the
 * library merges the ranks' top-k lists (ns_mine_options.comm) and rank 0 alone writes the
 * outputs, which are byte for byte those of a one-process run. CPU ranks (--backend cpu) share
 * an MPI communicator; CUDA ranks (--backend cuda) an NCCL one, built from an ncclUniqueId that
 * rank 0 makes and broadcasts over MPI, each rank on the CUDA device numbered by its rank among
 * the ranks of its node (MPI_Comm_split_type SHARED). Without a launcher (or with one rank)
 * everything here is a no-op and the program runs as one process; NS_CLI_TEST_FORCE_RANKS=1
 * (tests) makes even one process take the multi-rank path (MPI initialised as a singleton). */
#ifndef NS_CLI_SHARD_H
#define NS_CLI_SHARD_H

#include "cli.h"

typedef struct {
    int rank, size;  /* 0 and 1 in a one-process run */
    int ranks;       /* the multi-rank path is taken (size > 1, or forced for tests) */
    int local_rank;  /* the rank among the ranks of this node: the CUDA device of this rank */
    int local_size;  /* the ranks on this node (1 in a one-process run) */
    int mpi;         /* MPI was initialised here */
    ns_comm *comm;   /* the library's communicator over MPI_COMM_WORLD (ranks) */
} cli_shard;

/* Initialises MPI when launched by mpirun/mpiexec/srun with more than one rank. 0, or -1 with
 * a message (a build without MPI launched with several ranks). */
int cli_shard_init(cli_shard *sh);
/* The default CPU threads of a rank: the node's cores (*cores) divided by the ranks on the
 * node, at least 1, and no more than the CPUs the launcher bound this rank to; so R ranks on
 * one node do not run R teams of every core each. */
int cli_shard_threads(const cli_shard *sh, int *cores);
/* The communicator for ctx: MPI for a CPU context, NCCL for a CUDA one (ctx on device
 * local_rank; collective: every rank calls it). 0 or -1 (message printed). */
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
