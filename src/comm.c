/* Communicators: the public constructors and the transport-independent collectives built on
 * the small table each transport fills (src/comm_mpi.c, src/comm_nccl.c). */
#include "ns_comm.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

double ns_comm_now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

void ns_comm_backoff(unsigned *round) {
    /* Spin briefly (a collective between close ranks finishes in microseconds), then sleep
     * with a growing period so waiting ranks leave the cores to the slow one. */
    unsigned r = (*round)++;
    if (r < 64) return;
    long ns = 1000L << ((r - 64) / 16 < 10 ? (r - 64) / 16 : 10);
    struct timespec t = {0, ns > 1000000L ? 1000000L : ns};
    nanosleep(&t, NULL);
}

ns_status ns_comm_break(ns_context *ctx, ns_comm *c, ns_status st, const char *fmt, ...) {
    char msg[NS_ERROR_CAPACITY];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (c && !c->broken) {
        c->broken = 1;
        snprintf(c->broken_why, sizeof c->broken_why, "%s", msg);
    }
    return ns_fail(ctx, st, "%s", msg);
}

ns_status ns_comm_new(ns_context *ctx, const char *fn, const ns_comm_options *opt,
                      ns_comm_kind kind, ns_comm **out) {
    ns_comm_options resolved;
    ns_status rs = NS_RESOLVE_OPTIONS(ctx, fn, "options", ns_comm_options, NS_COMM_OPTIONS_INIT,
                                      opt, &resolved);
    if (rs) return rs;
    opt = &resolved;
    if (opt->timeout_ms < 1)
        return ns_fail(ctx, NS_ERR_INVALID_ARGUMENT,
                       "%s: options->timeout_ms (%d) must be at least 1", fn, opt->timeout_ms);
    ns_comm *c = (ns_comm *)calloc(1, sizeof(ns_comm));
    if (!c) return ns_fail(ctx, NS_ERR_OUT_OF_MEMORY, "%s: cannot allocate the communicator", fn);
    c->kind = kind;
    c->timeout_ms = opt->timeout_ms;
    c->backend = ctx->backend;
    c->device = ctx->device;
    c->size = 1;
    *out = c;
    return NS_OK;
}

ns_status ns_comm_create_mpi(ns_context *ctx, const void *mpi_comm,
                             const ns_comm_options *options, ns_comm **comm) {
    static const char *fn = "ns_comm_create_mpi";
    ns_status st = ns_check_context(ctx, fn);
    if (st) return st;
    if ((st = ns_check_ptr(ctx, fn, "comm", comm))) return st;
    if ((st = ns_check_ptr(ctx, fn, "mpi_comm", mpi_comm))) return st;
#ifdef NS_HAVE_MPI
    if (ctx->backend != NS_BACKEND_CPU)
        return ns_fail(ctx, NS_ERR_UNSUPPORTED,
                       "%s: ctx is a CUDA context but the MPI communicator serves CPU contexts "
                       "(host buffers); use ns_comm_create_nccl for GPUs",
                       fn);
    ns_comm *c = NULL;
    if ((st = ns_comm_new(ctx, fn, options, NS_COMM_MPI, &c))) return st;
    if ((st = ns_comm_mpi_init(ctx, c, mpi_comm, fn))) {
        free(c);
        return st;
    }
    *comm = c;
    return NS_OK;
#else
    (void)options;
    return ns_fail(ctx, NS_ERR_UNSUPPORTED,
                   "%s: this build of negsamp has no MPI communicator (built without MPI)", fn);
#endif
}

#ifdef NS_HAVE_NCCL
static ns_status nccl_create(ns_context *ctx, const char *fn, void *nccl_comm,
                             const void *unique_id, int nranks, int rank,
                             const ns_comm_options *options, ns_comm **comm) {
    ns_status st;
    if (ctx->backend != NS_BACKEND_CUDA)
        return ns_fail(ctx, NS_ERR_UNSUPPORTED,
                       "%s: ctx is a CPU context but the NCCL communicator serves CUDA contexts "
                       "(device buffers); use ns_comm_create_mpi for CPU ranks",
                       fn);
    ns_comm *c = NULL;
    if ((st = ns_comm_new(ctx, fn, options, NS_COMM_NCCL, &c))) return st;
    if ((st = ns_comm_nccl_init(ctx, c, nccl_comm, unique_id, nranks, rank, fn))) {
        free(c);
        return st;
    }
    *comm = c;
    return NS_OK;
}
#endif

ns_status ns_comm_create_nccl(ns_context *ctx, void *nccl_comm, const ns_comm_options *options,
                              ns_comm **comm) {
    static const char *fn = "ns_comm_create_nccl";
    ns_status st = ns_check_context(ctx, fn);
    if (st) return st;
    if ((st = ns_check_ptr(ctx, fn, "comm", comm))) return st;
    if ((st = ns_check_ptr(ctx, fn, "nccl_comm", nccl_comm))) return st;
#ifdef NS_HAVE_NCCL
    return nccl_create(ctx, fn, nccl_comm, NULL, 0, 0, options, comm);
#else
    (void)options;
    return ns_fail(ctx, NS_ERR_UNSUPPORTED,
                   "%s: this build of negsamp has no NCCL communicator (built without NCCL)", fn);
#endif
}

ns_status ns_comm_create_nccl_id(ns_context *ctx, const void *unique_id, int nranks, int rank,
                                 const ns_comm_options *options, ns_comm **comm) {
    static const char *fn = "ns_comm_create_nccl_id";
    ns_status st = ns_check_context(ctx, fn);
    if (st) return st;
    if ((st = ns_check_ptr(ctx, fn, "comm", comm))) return st;
    if ((st = ns_check_ptr(ctx, fn, "unique_id", unique_id))) return st;
    if (nranks < 1)
        return ns_fail(ctx, NS_ERR_INVALID_ARGUMENT, "%s: nranks (%d) must be at least 1", fn,
                       nranks);
    if (rank < 0 || rank >= nranks)
        return ns_fail(ctx, NS_ERR_INVALID_ARGUMENT, "%s: rank (%d) is outside [0, nranks = %d)",
                       fn, rank, nranks);
#ifdef NS_HAVE_NCCL
    return nccl_create(ctx, fn, NULL, unique_id, nranks, rank, options, comm);
#else
    (void)options;
    return ns_fail(ctx, NS_ERR_UNSUPPORTED,
                   "%s: this build of negsamp has no NCCL communicator (built without NCCL)", fn);
#endif
}

ns_status ns_nccl_unique_id(ns_context *ctx, void *unique_id) {
    static const char *fn = "ns_nccl_unique_id";
    if (ctx) ns_clear_error(ctx);
    if (!unique_id) return ns_fail(ctx, NS_ERR_INVALID_ARGUMENT, "%s: unique_id is NULL", fn);
#ifdef NS_HAVE_NCCL
    return ns_comm_nccl_unique_id(ctx, unique_id);
#else
    return ns_fail(ctx, NS_ERR_UNSUPPORTED,
                   "%s: this build of negsamp has no NCCL communicator (built without NCCL)", fn);
#endif
}

ns_status ns_comm_destroy(ns_comm *comm) {
    if (!comm) return NS_OK;
    ns_comm_loss_free(comm);
    ns_arena_release(NULL, &comm->mine);
    if (comm->ops) comm->ops->destroy(comm);
    free(comm);
    return NS_OK;
}

int ns_comm_rank(const ns_comm *comm) { return comm ? comm->rank : 0; }
int ns_comm_size(const ns_comm *comm) { return comm ? comm->size : 1; }

/* ------------------------------------------------------------------ generic collectives */

ns_status ns_comm_usable(ns_context *ctx, const ns_comm *c, const char *fn) {
    if (!c) return ns_fail(ctx, NS_ERR_INTERNAL, "%s: communicator is NULL", fn);
    if (c->broken)
        return ns_fail(ctx, NS_ERR_COMM,
                       "%s: the communicator failed earlier and is unusable (destroy it and "
                       "create a new one); the failure was: %s",
                       fn, c->broken_why);
    if (ctx->backend != c->backend)
        return ns_fail(ctx, NS_ERR_INVALID_ARGUMENT,
                       "%s: options->comm is %s communicator but ctx is a %s context", fn,
                       c->kind == NS_COMM_MPI ? "an MPI (CPU)" : "an NCCL (CUDA)",
                       ctx->backend == NS_BACKEND_CUDA ? "CUDA" : "CPU");
    if (c->backend == NS_BACKEND_CUDA && ctx->device != c->device)
        return ns_fail(ctx, NS_ERR_INVALID_ARGUMENT,
                       "%s: options->comm was created for CUDA device %d but ctx uses device %d",
                       fn, c->device, ctx->device);
    return NS_OK;
}

ns_status ns_comm_allgather_rows(ns_context *ctx, ns_comm *c, ns_matrix rows, void *out,
                                 const char *fn) {
    ns_status st = ns_comm_usable(ctx, c, fn);
    if (st) return st;
    size_t es = ns_dtype_size(rows.dtype);
    size_t row_bytes = (size_t)rows.cols * es;
    size_t pitch = (size_t)ns_ld(rows) * es;
    if (rows.rows == 0 || row_bytes == 0) return NS_OK;
    return c->ops->allgather_rows(ctx, c, rows.data, pitch, row_bytes, rows.rows, out, fn);
}

ns_status ns_comm_allgather(ns_context *ctx, ns_comm *c, const void *src, size_t n, size_t elem,
                            void *out, const char *fn) {
    ns_status st = ns_comm_usable(ctx, c, fn);
    if (st) return st;
    if (n == 0 || elem == 0) return NS_OK;
    return c->ops->allgather_rows(ctx, c, src, n * elem, n * elem, 1, out, fn);
}

ns_status ns_comm_reduce_scatter_f32(ns_context *ctx, ns_comm *c, const float *send,
                                     float *recv, size_t n, const char *fn) {
    ns_status st = ns_comm_usable(ctx, c, fn);
    if (st) return st;
    if (n == 0) return NS_OK;
    return c->ops->reduce_scatter_f32(ctx, c, send, recv, n, fn);
}

/* A host scratch for the small exchanges, sized for size · bytes. */
static void *host_scratch(ns_context *ctx, ns_comm *c, size_t bytes, const char *fn) {
    (void)c;
    void *p = malloc(bytes ? bytes : 1);
    if (!p) ns_fail(ctx, NS_ERR_OUT_OF_MEMORY, "%s: cannot allocate %zu bytes", fn, bytes);
    return p;
}

/* The local arguments of ns_comm_alltoallv_host (they read no other rank's values). */
static ns_status alltoallv_local(ns_context *ctx, const ns_comm *c, const void *send,
                                 const size_t *scount, const size_t *sdispl, const void *recv,
                                 const size_t *rcount, const size_t *rdispl, const char *fn) {
    const void *arrays[] = {scount, sdispl, rcount, rdispl};
    const char *names[] = {"scount", "sdispl", "rcount", "rdispl"};
    for (int i = 0; i < 4; i++)
        if (!arrays[i])
            return ns_fail(ctx, NS_ERR_INVALID_ARGUMENT, "%s: %s is NULL (it needs %d entries)",
                           fn, names[i], c->size);
    for (int j = 0; j < c->size; j++) {
        if (scount[j] && !send)
            return ns_fail(ctx, NS_ERR_INVALID_ARGUMENT, "%s: send is NULL but scount[%d] is %zu",
                           fn, j, scount[j]);
        if (rcount[j] && !recv)
            return ns_fail(ctx, NS_ERR_INVALID_ARGUMENT, "%s: recv is NULL but rcount[%d] is %zu",
                           fn, j, rcount[j]);
        if (sdispl[j] > SIZE_MAX - scount[j] || rdispl[j] > SIZE_MAX - rcount[j])
            return ns_fail(ctx, NS_ERR_INVALID_ARGUMENT,
                           "%s: the range of rank %d (sdispl %zu + scount %zu, rdispl %zu + "
                           "rcount %zu) overflows",
                           fn, j, sdispl[j], scount[j], rdispl[j], rcount[j]);
    }
    return NS_OK;
}

/* Every rank's verdict and counts on every rank: all fail alike on a rejected argument or on
 * counts that do not pair up (rank r's scount[j] must be rank j's rcount[r]). */
static ns_status alltoallv_agree(ns_context *ctx, ns_comm *c, ns_status local,
                                 const size_t *scount, const size_t *rcount, const char *fn) {
    const size_t R = (size_t)c->size, row = 1 + 2 * R;
    int64_t *all = (int64_t *)host_scratch(ctx, c, sizeof(int64_t) * row * (R + 1), fn);
    if (!all) return NS_ERR_OUT_OF_MEMORY;
    int64_t *mine = all + row * R;
    memset(mine, 0, sizeof(int64_t) * row);
    mine[0] = local == NS_OK;
    for (size_t j = 0; j < R && !local; j++)
        mine[1 + j] = (int64_t)scount[j], mine[1 + R + j] = (int64_t)rcount[j];
    char own[NS_ERROR_CAPACITY];
    memcpy(own, ctx->error, sizeof own);
    ns_status st = c->ops->allgather_host(ctx, c, mine, all, sizeof(int64_t) * row, fn);
    if (!st && local) memcpy(ctx->error, own, sizeof own), st = local;
    for (int r = 0; r < c->size && !st; r++)
        if (!all[(size_t)r * row])
            st = ns_fail(ctx, NS_ERR_COMM,
                         "%s: rank %d rejected its arguments (its own error names them), so "
                         "every rank fails this call (this is rank %d)",
                         fn, r, c->rank);
    for (size_t r = 0; r < R && !st; r++)
        for (size_t j = 0; j < R && !st; j++) {
            int64_t sends = all[r * row + 1 + j], expects = all[j * row + 1 + R + r];
            if (sends != expects)
                st = ns_fail(ctx, NS_ERR_COMM,
                             "%s: ranks disagree: rank %zu sends %lld bytes to rank %zu (its "
                             "scount[%zu]) but rank %zu expects %lld from it (its rcount[%zu]); "
                             "this is rank %d",
                             fn, r, (long long)sends, j, j, j, (long long)expects, r, c->rank);
        }
    free(all);
    return st;
}

ns_status ns_comm_alltoallv_host(ns_context *ctx, ns_comm *c, const void *send,
                                 const size_t *scount, const size_t *sdispl, void *recv,
                                 const size_t *rcount, const size_t *rdispl, const char *fn) {
    ns_status st = ns_comm_usable(ctx, c, fn);
    if (st) return st;
    ns_status local = alltoallv_local(ctx, c, send, scount, sdispl, recv, rcount, rdispl, fn);
    if ((st = alltoallv_agree(ctx, c, local, scount, rcount, fn))) return st;
    return c->ops->alltoallv_host(ctx, c, send, scount, sdispl, recv, rcount, rdispl, fn);
}

ns_status ns_comm_allreduce_sum_host(ns_context *ctx, ns_comm *c, double *v, int n,
                                     const char *fn) {
    ns_status st = ns_comm_usable(ctx, c, fn);
    if (st || n <= 0) return st;
    /* All-gather then sum in rank order: the same bits on every rank, which a tree or ring
     * all-reduce does not promise. Fine for the handful of scalars it carries. */
    double *all = (double *)host_scratch(ctx, c, sizeof(double) * (size_t)n * (size_t)c->size, fn);
    if (!all) return NS_ERR_OUT_OF_MEMORY;
    st = c->ops->allgather_host(ctx, c, v, all, sizeof(double) * (size_t)n, fn);
    if (st == NS_OK) {
        for (int i = 0; i < n; i++) {
            double s = 0.0;
            for (int r = 0; r < c->size; r++) s += all[(size_t)r * (size_t)n + (size_t)i];
            v[i] = s;
        }
    }
    free(all);
    return st;
}

ns_status ns_comm_check_same(ns_context *ctx, ns_comm *c, const int64_t *values,
                             const char *const *names, int n, const char *fn) {
    ns_status st = ns_comm_usable(ctx, c, fn);
    if (st || n <= 0) return st;
    int64_t *all = (int64_t *)host_scratch(ctx, c, sizeof(int64_t) * (size_t)n * (size_t)c->size, fn);
    if (!all) return NS_ERR_OUT_OF_MEMORY;
    st = c->ops->allgather_host(ctx, c, values, all, sizeof(int64_t) * (size_t)n, fn);
    if (st == NS_OK) {
        /* Every rank sees the same table, so every rank fails the same way. */
        for (int i = 0; i < n && st == NS_OK; i++)
            for (int r = 1; r < c->size; r++) {
                int64_t a = all[i], b = all[(size_t)r * (size_t)n + (size_t)i];
                if (a != b) {
                    st = ns_fail(ctx, NS_ERR_COMM,
                                 "%s: ranks disagree: %s is %lld on rank 0 but %lld on rank %d "
                                 "(every rank must pass the same shapes and options; this is "
                                 "rank %d)",
                                 fn, names ? names[i] : "a value", (long long)a, (long long)b, r,
                                 c->rank);
                    break;
                }
            }
    }
    free(all);
    return st;
}
