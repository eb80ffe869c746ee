/* The NCCL communicator (one GPU per rank): collectives ordered on the context's stream like
 * any kernel (no host wait: what follows on the stream sees their results); only an exchange
 * of host values waits, for its own event, by polling ncclCommGetAsyncError and
 * cudaEventQuery against a deadline. A rank that stops answering leaves the others' kernels
 * spinning forever, so on a timeout the communicator is aborted (ncclCommAbort frees the
 * stream) and reported as NS_ERR_COMM; a hang inside a device collective is seen at the next
 * exchange (every multi-rank step makes one per forward and backward). Every entry makes the
 * communicator's device current and gives the caller's back.
 * Owned communicators are created non-blocking (ncclCommInitRankConfig, blocking = 0) so that
 * even their creation cannot hang. */
#include "ns_comm.h"

#include <cuda_runtime.h>
#include <nccl.h>
#include <assert.h> /* static_assert: C11 and C++ (the host layer compiles this file as C++) */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static_assert(sizeof(ncclUniqueId) == NS_NCCL_UNIQUE_ID_BYTES,
               "NS_NCCL_UNIQUE_ID_BYTES must match ncclUniqueId");

typedef struct {
    ncclComm_t comm;
    int owned;
    int aborted;
    void *scratch; /* device bytes for the host-memory exchanges */
    void *pinned;  /* their pinned host mirror */
    size_t scratch_cap;
    cudaEvent_t done; /* recorded after an exchange's copy back */
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
 * work is enqueued) and, with done set, until that event has completed on the device (a host
 * value is needed: the exchanges). Polled against the deadline, so a rank that stopped
 * answering is reported instead of waited for. Device collectives wait for nothing more: their
 * results are ordered on ctx's stream like any kernel's. */
static ns_status nccl_wait(ns_context *ctx, ns_comm *c, cudaEvent_t done, const char *fn,
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
            if (!done) return NS_OK;
            cudaError_t e = cudaEventQuery(done);
            if (e == cudaSuccess) return NS_OK;
            if (e != cudaErrorNotReady) {
                nccl_abort(n);
                return cuda_fail(ctx, c, e, fn, "cudaEventQuery");
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

/* The device guard of every entry: the communicator's device current, the caller's restored on
 * every path (the step calls the collectives with its own guard; a direct caller keeps its
 * device). */
static int device_enter(ns_comm *c, int *prev) {
    *prev = -1;
    if (cudaGetDevice(prev) != cudaSuccess) {
        cudaGetLastError();
        *prev = -1;
    }
    cudaError_t e = *prev == c->device ? cudaSuccess : cudaSetDevice(c->device);
    return e == cudaSuccess;
}
static ns_status device_leave(int prev, ns_status st) {
    int now = -1;
    if (prev >= 0 && (cudaGetDevice(&now) != cudaSuccess || now != prev) &&
        cudaSetDevice(prev) != cudaSuccess)
        cudaGetLastError();
    return st;
}

static ns_status allgather_rows_on(ns_context *ctx, ns_comm *c, const void *src, size_t pitch,
                                   size_t row_bytes, int64_t rows, void *out, const char *fn) {
    nccl_impl *n = (nccl_impl *)c->impl;
    size_t part = row_bytes * (size_t)rows;
    char *mine = (char *)out + part * (size_t)c->rank;
    /* Pack this rank's rows into its slot, then gather in place. */
    if (mine != src) {
        cudaError_t e = cudaMemcpy2DAsync(mine, row_bytes, src, pitch, row_bytes, (size_t)rows,
                                          cudaMemcpyDeviceToDevice, stream_of(ctx));
        if (e != cudaSuccess) return cuda_fail(ctx, c, e, fn, "cudaMemcpy2DAsync");
    }
    ns_status st = nccl_enqueued(ctx, c,
                                 ncclAllGather(mine, out, part, ncclUint8, n->comm, stream_of(ctx)),
                                 fn, "ncclAllGather");
    if (st) return st;
    return nccl_wait(ctx, c, NULL, fn, "all-gather");
}

static ns_status nccl_allgather_rows(ns_context *ctx, ns_comm *c, const void *src, size_t pitch,
                                     size_t row_bytes, int64_t rows, void *out, const char *fn) {
    int prev;
    if (!device_enter(c, &prev))
        return device_leave(prev, cuda_fail(ctx, c, cudaGetLastError(), fn, "cudaSetDevice"));
    return device_leave(prev, allgather_rows_on(ctx, c, src, pitch, row_bytes, rows, out, fn));
}

static ns_status nccl_reduce_scatter_f32(ns_context *ctx, ns_comm *c, const float *send,
                                         float *recv, size_t count, const char *fn) {
    nccl_impl *n = (nccl_impl *)c->impl;
    int prev;
    if (!device_enter(c, &prev))
        return device_leave(prev, cuda_fail(ctx, c, cudaGetLastError(), fn, "cudaSetDevice"));
    ns_status st = nccl_enqueued(
        ctx, c, ncclReduceScatter(send, recv, count, ncclFloat32, ncclSum, n->comm, stream_of(ctx)),
        fn, "ncclReduceScatter");
    if (!st) st = nccl_wait(ctx, c, NULL, fn, "reduce-scatter");
    return device_leave(prev, st);
}

/* The exchange buffers: device scratch and its pinned host mirror (so the copies are
 * asynchronous and the host waits only for the exchange's event). Growing waits for queued
 * uses of the old ones; it happens when the exchanged size grows, not per call. */
static ns_status exchange_reserve(ns_context *ctx, ns_comm *c, size_t total, const char *fn) {
    nccl_impl *n = (nccl_impl *)c->impl;
    cudaError_t e;
    if (!n->done) {
        if ((e = cudaEventCreateWithFlags(&n->done, cudaEventDisableTiming)) != cudaSuccess)
            return cuda_fail(ctx, c, e, fn, "cudaEventCreateWithFlags");
    }
    if (n->scratch_cap >= total) return NS_OK;
    if (total < 4096) total = 4096; /* the headers and scalars of a step never regrow it */
    if ((e = cudaStreamSynchronize(stream_of(ctx))) != cudaSuccess)
        return cuda_fail(ctx, c, e, fn, "cudaStreamSynchronize");
    cudaFree(n->scratch);
    cudaFreeHost(n->pinned);
    n->scratch = n->pinned = NULL;
    n->scratch_cap = 0;
    e = cudaMalloc(&n->scratch, total);
    if (e == cudaSuccess) e = cudaHostAlloc(&n->pinned, total, cudaHostAllocDefault);
    if (e != cudaSuccess) {
        cudaGetLastError();
        return ns_fail(ctx, NS_ERR_OUT_OF_MEMORY,
                       "%s: cannot allocate %zu bytes of device and pinned exchange buffers: %s",
                       fn, total, cudaGetErrorString(e));
    }
    n->scratch_cap = total;
    return NS_OK;
}

static ns_status allgather_host_on(ns_context *ctx, ns_comm *c, const void *mine, void *all,
                                   size_t bytes, const char *fn) {
    nccl_impl *n = (nccl_impl *)c->impl;
    size_t total = bytes * (size_t)c->size;
    ns_status st = exchange_reserve(ctx, c, total, fn);
    if (st) return st;
    char *d = (char *)n->scratch, *h = (char *)n->pinned;
    /* The previous exchange was waited for: the pinned buffer is free. */
    memcpy(h + bytes * (size_t)c->rank, mine, bytes);
    cudaError_t e = cudaMemcpyAsync(d + bytes * (size_t)c->rank, h + bytes * (size_t)c->rank,
                                    bytes, cudaMemcpyHostToDevice, stream_of(ctx));
    if (e != cudaSuccess) return cuda_fail(ctx, c, e, fn, "cudaMemcpyAsync");
    st = nccl_enqueued(ctx, c,
                       ncclAllGather(d + bytes * (size_t)c->rank, d, bytes, ncclUint8, n->comm,
                                     stream_of(ctx)),
                       fn, "ncclAllGather");
    if (st) return st;
    if ((e = cudaMemcpyAsync(h, d, total, cudaMemcpyDeviceToHost, stream_of(ctx))) != cudaSuccess)
        return cuda_fail(ctx, c, e, fn, "cudaMemcpyAsync");
    if ((e = cudaEventRecord(n->done, stream_of(ctx))) != cudaSuccess)
        return cuda_fail(ctx, c, e, fn, "cudaEventRecord");
    if ((st = nccl_wait(ctx, c, n->done, fn, "exchange"))) return st;
    memcpy(all, h, total);
    return NS_OK;
}

static ns_status nccl_allgather_host(ns_context *ctx, ns_comm *c, const void *mine, void *all,
                                     size_t bytes, const char *fn) {
    int prev;
    if (!device_enter(c, &prev))
        return device_leave(prev, cuda_fail(ctx, c, cudaGetLastError(), fn, "cudaSetDevice"));
    return device_leave(prev, allgather_host_on(ctx, c, mine, all, bytes, fn));
}

/* The all-to-all through the exchange buffers: this rank's messages packed into the pinned
 * buffer (sent ones first, then room for the received ones), copied to the device scratch,
 * one group of ncclSend/ncclRecv (this rank's own part too: NCCL pairs a self send with the
 * self receive of the group), copied back, and the host waits for that copy's event only. */
static ns_status alltoallv_host_on(ns_context *ctx, ns_comm *c, const void *send,
                                   const size_t *scount, const size_t *sdispl, void *recv,
                                   const size_t *rcount, const size_t *rdispl, const char *fn) {
    nccl_impl *n = (nccl_impl *)c->impl;
    size_t out = 0, in = 0;
    for (int r = 0; r < c->size; r++) out += scount[r], in += rcount[r];
    ns_status st = exchange_reserve(ctx, c, out + in, fn);
    if (st) return st;
    char *d = (char *)n->scratch, *h = (char *)n->pinned;
    for (size_t r = 0, at = 0; r < (size_t)c->size; at += scount[r], r++)
        memcpy(h + at, (const char *)send + sdispl[r], scount[r]);
    cudaError_t e = out ? cudaMemcpyAsync(d, h, out, cudaMemcpyHostToDevice, stream_of(ctx))
                        : cudaSuccess;
    if (e != cudaSuccess) return cuda_fail(ctx, c, e, fn, "cudaMemcpyAsync");
    if ((st = nccl_enqueued(ctx, c, ncclGroupStart(), fn, "ncclGroupStart"))) return st;
    size_t so = 0, ro = out;
    for (int r = 0; r < c->size && !st; r++) {
        if (scount[r])
            st = nccl_enqueued(ctx, c, ncclSend(d + so, scount[r], ncclUint8, r, n->comm,
                                                stream_of(ctx)),
                               fn, "ncclSend");
        if (!st && rcount[r])
            st = nccl_enqueued(ctx, c, ncclRecv(d + ro, rcount[r], ncclUint8, r, n->comm,
                                                stream_of(ctx)),
                               fn, "ncclRecv");
        so += scount[r], ro += rcount[r];
    }
    /* The group is closed on every path: an open group would swallow later calls. */
    ns_status end = nccl_enqueued(ctx, c, ncclGroupEnd(), fn, "ncclGroupEnd");
    if (st || (st = end)) return st;
    e = in ? cudaMemcpyAsync(h + out, d + out, in, cudaMemcpyDeviceToHost, stream_of(ctx))
           : cudaSuccess;
    if (e != cudaSuccess) return cuda_fail(ctx, c, e, fn, "cudaMemcpyAsync");
    if ((e = cudaEventRecord(n->done, stream_of(ctx))) != cudaSuccess)
        return cuda_fail(ctx, c, e, fn, "cudaEventRecord");
    if ((st = nccl_wait(ctx, c, n->done, fn, "all-to-all"))) return st;
    for (size_t r = 0, at = out; r < (size_t)c->size; at += rcount[r], r++)
        memcpy((char *)recv + rdispl[r], h + at, rcount[r]);
    return NS_OK;
}

static ns_status nccl_alltoallv_host(ns_context *ctx, ns_comm *c, const void *send,
                                     const size_t *scount, const size_t *sdispl, void *recv,
                                     const size_t *rcount, const size_t *rdispl, const char *fn) {
    int prev;
    if (!device_enter(c, &prev))
        return device_leave(prev, cuda_fail(ctx, c, cudaGetLastError(), fn, "cudaSetDevice"));
    return device_leave(prev, alltoallv_host_on(ctx, c, send, scount, sdispl, recv, rcount,
                                                rdispl, fn));
}

static void nccl_destroy(ns_comm *c) {
    nccl_impl *n = (nccl_impl *)c->impl;
    if (!n) return;
    int prev;
    if (!device_enter(c, &prev)) cudaGetLastError();
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
    cudaFreeHost(n->pinned);
    if (n->done) cudaEventDestroy(n->done);
    free(n);
    c->impl = NULL;
    device_leave(prev, NS_OK);
}

static const ns_comm_ops nccl_ops = {nccl_allgather_rows, nccl_reduce_scatter_f32,
                                     nccl_allgather_host, nccl_alltoallv_host, nccl_destroy};

ns_status ns_comm_nccl_init(ns_context *ctx, ns_comm *c, void *nccl_comm, const void *unique_id,
                            int nranks, int rank, const char *fn) {
    nccl_impl *n = (nccl_impl *)calloc(1, sizeof(nccl_impl));
    if (!n) return ns_fail(ctx, NS_ERR_OUT_OF_MEMORY, "%s: cannot allocate the NCCL state", fn);
    c->impl = n;
    c->ops = &nccl_ops;
    int prev;
    if (!device_enter(c, &prev)) {
        cudaError_t e = cudaGetLastError();
        free(n);
        c->impl = NULL;
        return device_leave(prev, ns_fail(ctx, NS_ERR_CUDA, "%s: cudaSetDevice(%d) failed: %s",
                                          fn, ctx->device, cudaGetErrorString(e)));
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
            st = nccl_wait(ctx, c, NULL, fn, "communicator creation (ncclCommInitRankConfig)");
        }
    }
    if (st) {
        cudaFree(n->scratch);
        free(n);
        c->impl = NULL;
    }
    return device_leave(prev, st);
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
