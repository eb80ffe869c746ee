/* negsamp mine across MPI ranks: launch detection, the communicator, the shard split and the
 * CLI's own agreements between phases (tools/cli_shard.h). */
#define _GNU_SOURCE /* sched_getaffinity, CPU_COUNT */
#include "cli_shard.h"

#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#ifdef NS_CLI_MPI
#include <mpi.h>
#endif

/* The rank count the launcher announced (Open MPI's mpirun; MPICH's Hydra and other PMI
 * launchers); 1 when none. */
static int launched_size(void) {
    static const char *vars[] = {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE"};
    for (size_t i = 0; i < sizeof vars / sizeof vars[0]; i++) {
        const char *v = getenv(vars[i]);
        if (v && atoi(v) > 0) return atoi(v);
    }
    return 1;
}

/* Tests take the multi-rank path in one process (the host layer's NCCL has one rank). */
static int forced(void) {
    const char *v = getenv("NS_CLI_TEST_FORCE_RANKS");
    return v && atoi(v) > 0;
}

#ifdef NS_CLI_MPI
/* This rank's number among the ranks sharing its node (its memory): the CUDA device it uses;
 * and how many ranks share the node (they share its cores). 0, or -1 when MPI fails. */
static int node_ranks(int *local_rank, int *local_size) {
    MPI_Comm node;
    if (MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node) !=
        MPI_SUCCESS)
        return -1;
    MPI_Comm_rank(node, local_rank);
    MPI_Comm_size(node, local_size);
    MPI_Comm_free(&node);
    return 0;
}
#endif

int cli_shard_threads(const cli_shard *sh, int *cores) {
    long online = sysconf(_SC_NPROCESSORS_ONLN);
    *cores = online > 0 ? (int)online : 1;
    int share = *cores / (sh->local_size > 0 ? sh->local_size : 1);
    /* A rank the launcher bound to fewer CPUs than its share keeps to them (OpenMP's own
     * default would be that count too): more threads than CPUs would only take turns. */
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) == 0 && CPU_COUNT(&set) < share)
        share = CPU_COUNT(&set);
    return share > 1 ? share : 1;
}

int cli_shard_init(cli_shard *sh) {
    memset(sh, 0, sizeof *sh);
    sh->size = sh->local_size = 1;
    if (launched_size() <= 1 && !forced()) return 0;
#ifdef NS_CLI_MPI
    int inited = 0;
    MPI_Initialized(&inited);
    if (!inited && MPI_Init(NULL, NULL) != MPI_SUCCESS) {
        cli_error("MPI_Init failed");
        return -1;
    }
    sh->mpi = !inited;
    sh->ranks = 1;
    MPI_Comm_rank(MPI_COMM_WORLD, &sh->rank);
    MPI_Comm_size(MPI_COMM_WORLD, &sh->size);
    if (node_ranks(&sh->local_rank, &sh->local_size)) {
        cli_error("rank %d: MPI_Comm_split_type (the ranks of this node) failed", sh->rank);
        return -1;
    }
    return 0;
#else
    cli_error("launched with %d ranks, but this negsamp was built without MPI (configure with "
              "MPI found and -DNS_MPI=ON), so each rank would write the whole output",
              launched_size());
    return -1;
#endif
}

#ifdef NS_CLI_MPI
/* NCCL ranks: rank 0 makes the ncclUniqueId and broadcasts it with its verdict (a failure
 * there stops every rank at once), then every rank joins the communicator (collective, with
 * the library's timeout). */
static int nccl_comm(cli_shard *sh, ns_context *ctx) {
    unsigned char id[NS_NCCL_UNIQUE_ID_BYTES + 1];
    memset(id, 0, sizeof id);
    if (sh->rank == 0) {
        if (ns_nccl_unique_id(ctx, id) == NS_OK) id[NS_NCCL_UNIQUE_ID_BYTES] = 1;
        else cli_error("rank 0: cannot make an NCCL unique id: %s", ns_last_error(ctx));
    }
    if (MPI_Bcast(id, (int)sizeof id, MPI_BYTE, 0, MPI_COMM_WORLD) != MPI_SUCCESS) {
        cli_error("rank %d: MPI_Bcast of the NCCL unique id failed", sh->rank);
        return -1;
    }
    if (!id[NS_NCCL_UNIQUE_ID_BYTES]) {
        if (sh->rank) cli_error("rank %d: rank 0 could not make the NCCL unique id", sh->rank);
        return -1;
    }
    if (ns_comm_create_nccl_id(ctx, id, sh->size, sh->rank, NULL, &sh->comm) != NS_OK) {
        cli_error("rank %d (CUDA device %d): cannot create the NCCL communicator: %s", sh->rank,
                  sh->local_rank, ns_last_error(ctx));
        return -1;
    }
    return 0;
}
#endif

int cli_shard_comm(cli_shard *sh, ns_context *ctx) {
    if (!sh->ranks) return 0;
#ifdef NS_CLI_MPI
    if (ns_context_backend(ctx) == NS_BACKEND_CUDA) return nccl_comm(sh, ctx);
    MPI_Comm world = MPI_COMM_WORLD;
    ns_status st = ns_comm_create_mpi(ctx, &world, NULL, &sh->comm);
    if (st != NS_OK) {
        cli_error("rank %d: cannot create the MPI communicator: %s", sh->rank,
                  ns_last_error(ctx));
        return -1;
    }
    return 0;
#else
    (void)ctx;
    return -1;
#endif
}

void cli_shard_rows(const cli_shard *sh, int64_t rows, int64_t *r0, int64_t *n) {
    /* Even split, the first rows % size ranks one row longer: every shard's rows are known to
     * every rank without an exchange. */
    int64_t R = sh->size, r = sh->rank, base = rows / R, extra = rows % R;
    *r0 = r * base + (r < extra ? r : extra);
    *n = base + (r < extra ? 1 : 0);
}

int cli_shard_any_failed(const cli_shard *sh, int failed) {
    if (!sh->ranks) return failed != 0;
#ifdef NS_CLI_MPI
    int mine = failed != 0, any = 1;
    if (MPI_Allreduce(&mine, &any, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD) != MPI_SUCCESS) return 1;
    return any;
#else
    return failed != 0;
#endif
}

int64_t cli_shard_bcast(const cli_shard *sh, int64_t v) {
#ifdef NS_CLI_MPI
    if (sh->ranks) MPI_Bcast(&v, 1, MPI_INT64_T, 0, MPI_COMM_WORLD);
#else
    (void)sh;
#endif
    return v;
}

void cli_shard_finish(cli_shard *sh) {
    ns_comm_destroy(sh->comm);
    sh->comm = NULL;
#ifdef NS_CLI_MPI
    if (sh->mpi) MPI_Finalize();
#endif
    sh->mpi = 0;
}
