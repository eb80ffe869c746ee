/* The NCCL communicator (one GPU per rank): collectives ordered on the context's stream, then
 * waited for by polling ncclCommGetAsyncError and cudaStreamQuery against a deadline. A rank
 * that stops answering leaves the others' kernels spinning forever, so on a timeout the
 * communicator is aborted (ncclCommAbort frees the stream) and reported as NS_ERR_COMM.
 * Owned communicators are created non-blocking (ncclCommInitRankConfig, blocking = 0) so that
 * even their creation cannot hang. */
#include "ns_comm.h"

#include <cuda_runtime.h>
#include <nccl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

_Static_assert(sizeof(ncclUniqueId) == NS_NCCL_UNIQUE_ID_BYTES,
               "NS_NCCL_UNIQUE_ID_BYTES must match ncclUniqueId");

typedef struct {
    ncclComm_t comm;
    int owned;
    int aborted;
    void *scratch; /* device bytes for the host-memory exchanges */
    size_t scratch_cap;
} nccl_impl;

static cudaStream_t stream_of(const ns_context *ctx) { return (cudaStream_t)ctx->stream; }

static void nccl_abort(nccl_impl *n) {
    if (n->comm && !n->aborted) {
        ncclCommAbort(n->comm);
        n->aborted = 1;
    }
}

static ns_status cuda_fail(ns_context *ctx, ns_comm *c, cudaError_t e, const char *fn,
                           const char *call) {
    cudaGetLastError();
    return ns_comm_break(ctx, c, NS_ERR_CUDA, "%s: %s failed on rank %d: %s", fn, call, c->rank,
                         cudaGetErrorString(e));
}

static ns_status nccl_fail(ns_context *ctx, ns_comm *c, ncclResult_t r, const char *fn,
                           const char *call) {
    nccl_impl *n = (nccl_impl *)c->impl;
    const char *detail = n && n->comm ? ncclGetLastError(n->comm) : NULL;
    ns_status st = ns_comm_break(ctx, c, NS_ERR_COMM, "%s: %s failed on rank %d: %s%s%s", fn, call,
                                 c->rank, ncclGetErrorString(r), detail && *detail ? ": " : "",
                                 detail ? detail : "");
    if (n) nccl_abort(n);
    return st;
}

/* Waits until the communicator has left ncclInProgress (non-blocking calls return before their
 * work is enqueued) and, with stream set, until the stream has drained. */
static ns_status nccl_wait(ns_context *ctx, ns_comm *c, int with_stream, const char *fn,
                           const char *what) {
    nccl_impl *n = (nccl_impl *)c->impl;
    double deadline = ns_comm_now() + 1e-3 * c->timeout_ms;
    unsigned round = 0;
    for (;;) {
        ncclResult_t async = ncclSuccess;
        ncclResult_t r = ncclCommGetAsyncError(n->comm, &async);
        if (r != ncclSuccess) return nccl_fail(ctx, c, r, fn, "ncclCommGetAsyncError");
        if (async != ncclSuccess && async != ncclInProgress)
            return nccl_fail(ctx, c, async, fn, what);
        if (async == ncclSuccess) {
            if (!with_stream) return NS_OK;
            cudaError_t e = cudaStreamQuery(stream_of(ctx));
            if (e == cudaSuccess) return NS_OK;
            if (e != cudaErrorNotReady) {
                nccl_abort(n);
                return cuda_fail(ctx, c, e, fn, "cudaStreamQuery");
            }
        }
        if (ns_comm_now() > deadline) {
            nccl_abort(n);
            return ns_comm_break(ctx, c, NS_ERR_COMM,
                                 "%s: NCCL %s timed out after %d ms on rank %d of %d waiting for "
                                 "the other ranks (one stopped answering or died); the NCCL "
                                 "communicator was aborted",
                                 fn, what, c->timeout_ms, c->rank, c->size);
        }
        ns_comm_backoff(&round);
    }
}

/* Enqueues an NCCL call result: ncclInProgress is the normal answer of a non-blocking comm. */
static ns_status nccl_enqueued(ns_context *ctx, ns_comm *c, ncclResult_t r, const char *fn,
                               const char *call) {
    if (r == ncclSuccess || r == ncclInProgress) return NS_OK;
    return nccl_fail(ctx, c, r, fn, call);
}

static ns_status nccl_allgather_rows(ns_context *ctx, ns_comm *c, const void *src, size_t pitch,
                                     size_t row_bytes, int64_t rows, void *out, const char *fn) {
    nccl_impl *n = (nccl_impl *)c->impl;
    size_t part = row_bytes * (size_t)rows;
    char *mine = (char *)out + part * (size_t)c->rank;
    cudaError_t e = cudaSetDevice(c->device);
    if (e != cudaSuccess) return cuda_fail(ctx, c, e, fn, "cudaSetDevice");
    /* Pack this rank's rows into its slot, then gather in place. */
    if (mine != src) {
        e = cudaMemcpy2DAsync(mine, row_bytes, src, pitch, row_bytes, (size_t)rows,
                              cudaMemcpyDeviceToDevice, stream_of(ctx));
        if (e != cudaSuccess) return cuda_fail(ctx, c, e, fn, "cudaMemcpy2DAsync");
    }
    ns_status st = nccl_enqueued(ctx, c,
                                 ncclAllGather(mine, out, part, ncclUint8, n->comm, stream_of(ctx)),
                                 fn, "ncclAllGather");
    if (st) return st;
    return nccl_wait(ctx, c, 1, fn, "all-gather");
}

static ns_status nccl_reduce_scatter_f32(ns_context *ctx, ns_comm *c, const float *send,
                                         float *recv, size_t count, const char *fn) {
    nccl_impl *n = (nccl_impl *)c->impl;
    cudaError_t e = cudaSetDevice(c->device);
    if (e != cudaSuccess) return cuda_fail(ctx, c, e, fn, "cudaSetDevice");
    ns_status st = nccl_enqueued(
        ctx, c, ncclReduceScatter(send, recv, count, ncclFloat32, ncclSum, n->comm, stream_of(ctx)),
        fn, "ncclReduceScatter");
    if (st) return st;
    return nccl_wait(ctx, c, 1, fn, "reduce-scatter");
}

static ns_status nccl_allgather_host(ns_context *ctx, ns_comm *c, const void *mine, void *all,
                                     size_t bytes, const char *fn) {
    nccl_impl *n = (nccl_impl *)c->impl;
    size_t total = bytes * (size_t)c->size;
    cudaError_t e = cudaSetDevice(c->device);
    if (e != cudaSuccess) return cuda_fail(ctx, c, e, fn, "cudaSetDevice");
    if (n->scratch_cap < total) {
        /* Order the free after any queued use of the old scratch. */
        cudaStreamSynchronize(stream_of(ctx));
        cudaFree(n->scratch);
        n->scratch = NULL;
        n->scratch_cap = 0;
        e = cudaMalloc(&n->scratch, total);
        if (e != cudaSuccess) {
            cudaGetLastError();
            return ns_fail(ctx, NS_ERR_OUT_OF_MEMORY, "%s: cudaMalloc of %zu bytes failed: %s", fn,
                           total, cudaGetErrorString(e));
        }
        n->scratch_cap = total;
    }
    char *d = (char *)n->scratch;
    e = cudaMemcpyAsync(d + bytes * (size_t)c->rank, mine, bytes, cudaMemcpyHostToDevice,
                        stream_of(ctx));
    if (e != cudaSuccess) return cuda_fail(ctx, c, e, fn, "cudaMemcpyAsync");
    ns_status st = nccl_enqueued(ctx, c,
                                 ncclAllGather(d + bytes * (size_t)c->rank, d, bytes, ncclUint8,
                                               n->comm, stream_of(ctx)),
                                 fn, "ncclAllGather");
    if (st) return st;
    if ((st = nccl_wait(ctx, c, 1, fn, "exchange"))) return st;
    e = cudaMemcpy(all, d, total, cudaMemcpyDeviceToHost);
    if (e != cudaSuccess) return cuda_fail(ctx, c, e, fn, "cudaMemcpy");
    return NS_OK;
}

static void nccl_destroy(ns_comm *c) {
    nccl_impl *n = (nccl_impl *)c->impl;
    if (!n) return;
    cudaSetDevice(c->device);
    if (n->owned && n->comm && !n->aborted) {
        /* Finalize flushes outstanding work; a non-blocking comm may answer InProgress, so
         * poll it within the timeout and abort when it does not settle. */
        ncclResult_t r = ncclCommFinalize(n->comm);
        double deadline = ns_comm_now() + 1e-3 * c->timeout_ms;
        unsigned round = 0;
        while (r == ncclSuccess || r == ncclInProgress) {
            ncclResult_t async = ncclSuccess;
            if (ncclCommGetAsyncError(n->comm, &async) != ncclSuccess) break;
            if (async != ncclInProgress) {
                r = async;
                break;
            }
            if (ns_comm_now() > deadline) {
                r = ncclInProgress;
                break;
            }
            ns_comm_backoff(&round);
        }
        if (r == ncclSuccess) ncclCommDestroy(n->comm);
        else nccl_abort(n);
    }
    cudaFree(n->scratch);
    free(n);
    c->impl = NULL;
}

static const ns_comm_ops nccl_ops = {nccl_allgather_rows, nccl_reduce_scatter_f32,
                                     nccl_allgather_host, nccl_destroy};

ns_status ns_comm_nccl_init(ns_context *ctx, ns_comm *c, void *nccl_comm, const void *unique_id,
                            int nranks, int rank, const char *fn) {
    nccl_impl *n = (nccl_impl *)calloc(1, sizeof(nccl_impl));
    if (!n) return ns_fail(ctx, NS_ERR_OUT_OF_MEMORY, "%s: cannot allocate the NCCL state", fn);
    c->impl = n;
    c->ops = &nccl_ops;
    cudaError_t e = cudaSetDevice(ctx->device);
    if (e != cudaSuccess) {
        cudaGetLastError();
        free(n);
        c->impl = NULL;
        return ns_fail(ctx, NS_ERR_CUDA, "%s: cudaSetDevice(%d) failed: %s", fn, ctx->device,
                       cudaGetErrorString(e));
    }
    ns_status st = NS_OK;
    if (nccl_comm) {
        n->comm = (ncclComm_t)nccl_comm;
        ncclResult_t r = ncclCommCount(n->comm, &c->size);
        if (r == ncclSuccess) r = ncclCommUserRank(n->comm, &c->rank);
        int dev = -1;
        if (r == ncclSuccess) r = ncclCommCuDevice(n->comm, &dev);
        if (r != ncclSuccess) {
            st = ns_fail(ctx, NS_ERR_COMM, "%s: nccl_comm is not a usable ncclComm_t: %s", fn,
                         ncclGetErrorString(r));
        } else if (dev != ctx->device) {
            st = ns_fail(ctx, NS_ERR_INVALID_ARGUMENT,
                         "%s: nccl_comm is on CUDA device %d but ctx uses device %d", fn, dev,
                         ctx->device);
        }
    } else {
        ncclUniqueId id;
        memcpy(&id, unique_id, sizeof id);
        ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
        config.blocking = 0;
        c->size = nranks;
        c->rank = rank;
        n->owned = 1;
        ncclResult_t r = ncclCommInitRankConfig(&n->comm, nranks, id, rank, &config);
        if (r != ncclSuccess && r != ncclInProgress) {
            st = ns_fail(ctx, NS_ERR_COMM, "%s: ncclCommInitRankConfig failed on rank %d of %d: %s",
                         fn, rank, nranks, ncclGetErrorString(r));
            if (n->comm) ncclCommAbort(n->comm);
        } else {
            st = nccl_wait(ctx, c, 0, fn, "communicator creation (ncclCommInitRankConfig)");
        }
    }
    if (st) {
        cudaFree(n->scratch);
        free(n);
        c->impl = NULL;
    }
    return st;
}

ns_status ns_comm_nccl_unique_id(ns_context *ctx, void *unique_id) {
    ncclUniqueId id;
    ncclResult_t r = ncclGetUniqueId(&id);
    if (r != ncclSuccess)
        return ns_fail(ctx, NS_ERR_COMM, "ns_nccl_unique_id: ncclGetUniqueId failed: %s",
                       ncclGetErrorString(r));
    memcpy(unique_id, &id, sizeof id);
    return NS_OK;
}
