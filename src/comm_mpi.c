/* The MPI communicator (CPU ranks): a duplicate of the caller's MPI_Comm with MPI_ERRORS_RETURN,
 * non-blocking collectives polled against a deadline so a rank that stops answering makes the
 * others fail instead of hang.
 *
 * MPI cannot cancel a collective: after a timeout its request stays pending and MPI may still
 * write its buffers. Every collective therefore works in buffers the communicator owns, and a
 * timed-out one abandons them (never frees them) along with the broken communicator. */
#include "ns_comm.h"

#include <mpi.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NS_MPI_TAG 0x6e53 /* private duplicate: no other traffic to collide with */

typedef struct {
    MPI_Comm comm;
    void *buf; /* staging for the collectives, grows */
    size_t cap;
    int abandoned; /* a request is still pending on buf: leak it rather than free it */
} mpi_impl;

static ns_status mpi_fail(ns_context *ctx, ns_comm *c, int rc, const char *fn, const char *call) {
    char s[MPI_MAX_ERROR_STRING];
    int len = 0;
    if (MPI_Error_string(rc, s, &len) != MPI_SUCCESS) snprintf(s, sizeof s, "error %d", rc);
    return ns_comm_break(ctx, c, NS_ERR_COMM, "%s: %s failed on rank %d: %s", fn, call,
                         c ? c->rank : -1, s);
}

static void *staging(ns_context *ctx, ns_comm *c, size_t bytes, const char *fn) {
    mpi_impl *m = (mpi_impl *)c->impl;
    if (m->cap >= bytes && m->buf) return m->buf;
    free(m->buf);
    m->buf = malloc(bytes ? bytes : 1);
    m->cap = m->buf ? bytes : 0;
    if (!m->buf) ns_fail(ctx, NS_ERR_OUT_OF_MEMORY, "%s: cannot allocate %zu bytes for MPI", fn, bytes);
    return m->buf;
}

/* Polls req until it completes or the communicator's timeout passes. */
static ns_status mpi_wait(ns_context *ctx, ns_comm *c, MPI_Request *req, const char *fn,
                          const char *what) {
    double deadline = ns_comm_now() + 1e-3 * c->timeout_ms;
    unsigned round = 0;
    for (;;) {
        int done = 0;
        int rc = MPI_Test(req, &done, MPI_STATUS_IGNORE);
        if (rc != MPI_SUCCESS) {
            ((mpi_impl *)c->impl)->abandoned = 1;
            return mpi_fail(ctx, c, rc, fn, what);
        }
        if (done) return NS_OK;
        if (ns_comm_now() > deadline) {
            ((mpi_impl *)c->impl)->abandoned = 1;
            return ns_comm_break(ctx, c, NS_ERR_COMM,
                                 "%s: MPI %s timed out after %d ms on rank %d of %d waiting for "
                                 "the other ranks (one stopped answering or exited)",
                                 fn, what, c->timeout_ms, c->rank, c->size);
        }
        ns_comm_backoff(&round);
    }
}

static ns_status mpi_allgather_rows(ns_context *ctx, ns_comm *c, const void *src, size_t pitch,
                                    size_t row_bytes, int64_t rows, void *out, const char *fn) {
    mpi_impl *m = (mpi_impl *)c->impl;
    size_t part = row_bytes * (size_t)rows;
    if (part > INT_MAX)
        return ns_fail(ctx, NS_ERR_UNSUPPORTED,
                       "%s: %zu bytes per rank exceed what one MPI all-gather carries (%d)", fn,
                       part, INT_MAX);
    char *buf = (char *)staging(ctx, c, part * (size_t)c->size, fn);
    if (!buf) return NS_ERR_OUT_OF_MEMORY;
    char *mine = buf + part * (size_t)c->rank;
    for (int64_t r = 0; r < rows; r++)
        memcpy(mine + (size_t)r * row_bytes, (const char *)src + (size_t)r * pitch, row_bytes);
    MPI_Request req;
    int rc = MPI_Iallgather(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, buf, (int)part, MPI_BYTE, m->comm,
                            &req);
    if (rc != MPI_SUCCESS) return mpi_fail(ctx, c, rc, fn, "MPI_Iallgather");
    ns_status st = mpi_wait(ctx, c, &req, fn, "all-gather");
    if (st) return st;
    memcpy(out, buf, part * (size_t)c->size);
    return NS_OK;
}

static ns_status mpi_reduce_scatter_f32(ns_context *ctx, ns_comm *c, const float *send,
                                        float *recv, size_t n, const char *fn) {
    mpi_impl *m = (mpi_impl *)c->impl;
    if (n > INT_MAX)
        return ns_fail(ctx, NS_ERR_UNSUPPORTED,
                       "%s: %zu floats per rank exceed what one MPI reduce-scatter carries (%d)",
                       fn, n, INT_MAX);
    size_t total = n * (size_t)c->size;
    float *buf = (float *)staging(ctx, c, sizeof(float) * (total + n), fn);
    if (!buf) return NS_ERR_OUT_OF_MEMORY;
    memcpy(buf, send, sizeof(float) * total);
    MPI_Request req;
    int rc = MPI_Ireduce_scatter_block(buf, buf + total, (int)n, MPI_FLOAT, MPI_SUM, m->comm, &req);
    if (rc != MPI_SUCCESS) return mpi_fail(ctx, c, rc, fn, "MPI_Ireduce_scatter_block");
    ns_status st = mpi_wait(ctx, c, &req, fn, "reduce-scatter");
    if (st) return st;
    memcpy(recv, buf + total, sizeof(float) * n);
    return NS_OK;
}

/* One exchange of point-to-point messages inside buf (the communicator's staging, which MPI
 * may still write after a timeout): from each peer r, rcount[r] bytes into buf + roff[r]; to
 * each peer r, scount[r] bytes from buf + soff[r]; this rank and empty messages are skipped.
 * req holds 2·size requests. Polled against the deadline, so a timeout names the ranks whose
 * message never came (the first few). */
static ns_status p2p_exchange(ns_context *ctx, ns_comm *c, char *buf, const size_t *soff,
                              const size_t *scount, const size_t *roff, const size_t *rcount,
                              MPI_Request *req, const char *fn) {
    mpi_impl *m = (mpi_impl *)c->impl;
    int R = c->size, me = c->rank;
    for (int r = 0; r < R; r++) {
        req[r] = req[R + r] = MPI_REQUEST_NULL;
        if (scount[r] > INT_MAX || rcount[r] > INT_MAX)
            return ns_fail(ctx, NS_ERR_UNSUPPORTED,
                           "%s: %zu bytes between rank %d and rank %d exceed what one MPI message "
                           "carries (%d)",
                           fn, scount[r] > rcount[r] ? scount[r] : rcount[r], me, r, INT_MAX);
    }
    for (int r = 0; r < R; r++) {
        if (r == me || !rcount[r]) continue;
        int rc = MPI_Irecv(buf + roff[r], (int)rcount[r], MPI_BYTE, r, NS_MPI_TAG, m->comm,
                           &req[r]);
        if (rc != MPI_SUCCESS) {
            m->abandoned = 1;
            return mpi_fail(ctx, c, rc, fn, "MPI_Irecv");
        }
    }
    for (int r = 0; r < R; r++) {
        if (r == me || !scount[r]) continue;
        int rc = MPI_Isend(buf + soff[r], (int)scount[r], MPI_BYTE, r, NS_MPI_TAG, m->comm,
                           &req[R + r]);
        if (rc != MPI_SUCCESS) {
            m->abandoned = 1;
            return mpi_fail(ctx, c, rc, fn, "MPI_Isend");
        }
    }
    double deadline = ns_comm_now() + 1e-3 * c->timeout_ms;
    unsigned round = 0;
    for (;;) {
        int done = 0;
        int rc = MPI_Testall(2 * R, req, &done, MPI_STATUSES_IGNORE);
        if (rc != MPI_SUCCESS) {
            m->abandoned = 1;
            return mpi_fail(ctx, c, rc, fn, "MPI_Testall");
        }
        if (done) return NS_OK;
        if (ns_comm_now() > deadline) {
            /* Name the ranks we heard nothing from (the first few). */
            char who[160];
            int len = 0, missing = 0;
            who[0] = '\0';
            for (int r = 0; r < R; r++) {
                int got = 1;
                if (req[r] != MPI_REQUEST_NULL) MPI_Test(&req[r], &got, MPI_STATUS_IGNORE);
                if (got) continue;
                if (missing++ < 8 && len < (int)sizeof who - 16)
                    len += snprintf(who + len, sizeof who - (size_t)len, "%s%d",
                                    missing > 1 ? ", " : "", r);
            }
            if (missing > 8) snprintf(who + len, sizeof who - (size_t)len, ", …");
            m->abandoned = 1;
            return ns_comm_break(ctx, c, NS_ERR_COMM,
                                 "%s: MPI exchange timed out after %d ms on rank %d of %d waiting "
                                 "for rank %s (%d rank%s stopped answering or exited)",
                                 fn, c->timeout_ms, me, R, missing ? who : "?", missing,
                                 missing == 1 ? "" : "s");
        }
        ns_comm_backoff(&round);
    }
}

/* The staging of one exchange: `data` bytes of messages, then four size_t arrays of size
 * entries (offsets and counts) and 2·size requests. NULL on OOM (message set). */
static char *exchange_staging(ns_context *ctx, ns_comm *c, size_t data, size_t **arrays,
                              MPI_Request **req, const char *fn) {
    size_t R = (size_t)c->size, at = (data + 63) / 64 * 64;
    size_t req_at = at + (4 * R * sizeof(size_t) + 63) / 64 * 64;
    char *buf = (char *)staging(ctx, c, req_at + sizeof(MPI_Request) * 2 * R, fn);
    if (!buf) return NULL;
    *arrays = (size_t *)(buf + at);
    *req = (MPI_Request *)(buf + req_at);
    return buf;
}

/* Point-to-point rather than MPI_Iallgather, so that a timeout can name the ranks whose
 * message never came. Used for the small per-call headers and scalars. */
static ns_status mpi_allgather_host(ns_context *ctx, ns_comm *c, const void *mine, void *all,
                                    size_t bytes, const char *fn) {
    size_t R = (size_t)c->size, me = (size_t)c->rank, *a;
    MPI_Request *req;
    char *buf = exchange_staging(ctx, c, bytes * R, &a, &req, fn);
    if (!buf) return NS_ERR_OUT_OF_MEMORY;
    size_t *soff = a, *scount = a + R, *roff = a + 2 * R, *rcount = a + 3 * R;
    for (size_t r = 0; r < R; r++)
        soff[r] = bytes * me, scount[r] = rcount[r] = bytes, roff[r] = bytes * r;
    memcpy(buf + bytes * me, mine, bytes);
    ns_status st = p2p_exchange(ctx, c, buf, soff, scount, roff, rcount, req, fn);
    if (!st) memcpy(all, buf, bytes * R);
    return st;
}

/* Point-to-point too (the MPI_Alltoallv equivalent, with the timeout naming silent ranks): the
 * messages packed in the staging, received ones first; this rank's own part copied directly. */
static ns_status mpi_alltoallv_host(ns_context *ctx, ns_comm *c, const void *send,
                                    const size_t *scount, const size_t *sdispl, void *recv,
                                    const size_t *rcount, const size_t *rdispl, const char *fn) {
    size_t R = (size_t)c->size, me = (size_t)c->rank, in = 0, out = 0, *a;
    for (size_t r = 0; r < R; r++)
        if (r != me) in += rcount[r], out += scount[r];
    MPI_Request *req;
    char *buf = exchange_staging(ctx, c, in + out, &a, &req, fn);
    if (!buf) return NS_ERR_OUT_OF_MEMORY;
    size_t *soff = a, *sc = a + R, *roff = a + 2 * R, *rc = a + 3 * R;
    size_t ri = 0, si = in;
    for (size_t r = 0; r < R; r++) {
        sc[r] = r == me ? 0 : scount[r], rc[r] = r == me ? 0 : rcount[r];
        roff[r] = ri, soff[r] = si;
        if (sc[r]) memcpy(buf + si, (const char *)send + sdispl[r], sc[r]);
        ri += rc[r], si += sc[r];
    }
    ns_status st = p2p_exchange(ctx, c, buf, soff, sc, roff, rc, req, fn);
    if (st) return st;
    for (size_t r = 0; r < R; r++)
        if (rc[r]) memcpy((char *)recv + rdispl[r], buf + roff[r], rc[r]);
    if (scount[me]) memcpy((char *)recv + rdispl[me], (const char *)send + sdispl[me], scount[me]);
    return NS_OK;
}

static void mpi_destroy(ns_comm *c) {
    mpi_impl *m = (mpi_impl *)c->impl;
    if (!m) return;
    int finalized = 0;
    MPI_Finalized(&finalized);
    /* A broken communicator may still have a request pending on its buffer: leave both to MPI
     * (freeing the communicator waits for no one in Open MPI, but its buffer must outlive the
     * request). */
    if (!m->abandoned) {
        if (!finalized && m->comm != MPI_COMM_NULL) MPI_Comm_free(&m->comm);
        free(m->buf);
    }
    free(m);
    c->impl = NULL;
}

static const ns_comm_ops mpi_ops = {.allgather_rows = mpi_allgather_rows,
                                    .reduce_scatter_f32 = mpi_reduce_scatter_f32,
                                    .allgather_host = mpi_allgather_host,
                                    .alltoallv_host = mpi_alltoallv_host,
                                    .destroy = mpi_destroy};

ns_status ns_comm_mpi_init(ns_context *ctx, ns_comm *c, const void *mpi_comm, const char *fn) {
    int inited = 0, finalized = 0;
    MPI_Initialized(&inited);
    MPI_Finalized(&finalized);
    if (!inited || finalized)
        return ns_fail(ctx, NS_ERR_INVALID_ARGUMENT,
                       "%s: MPI is %s; call MPI_Init before creating the communicator", fn,
                       finalized ? "already finalised" : "not initialised");
    MPI_Comm parent = *(const MPI_Comm *)mpi_comm;
    if (parent == MPI_COMM_NULL)
        return ns_fail(ctx, NS_ERR_INVALID_ARGUMENT, "%s: *mpi_comm is MPI_COMM_NULL", fn);
    mpi_impl *m = (mpi_impl *)calloc(1, sizeof(mpi_impl));
    if (!m) return ns_fail(ctx, NS_ERR_OUT_OF_MEMORY, "%s: cannot allocate the MPI state", fn);
    m->comm = MPI_COMM_NULL;
    c->impl = m;
    c->ops = &mpi_ops;
    MPI_Comm_rank(parent, &c->rank);
    MPI_Comm_size(parent, &c->size);
    /* The duplicate is collective too: non-blocking, so a missing rank cannot hang creation. */
    MPI_Request req;
    int rc = MPI_Comm_idup(parent, &m->comm, &req);
    if (rc != MPI_SUCCESS) {
        mpi_fail(ctx, c, rc, fn, "MPI_Comm_idup");
        free(m);
        c->impl = NULL;
        return NS_ERR_COMM;
    }
    ns_status st = mpi_wait(ctx, c, &req, fn, "communicator duplication (MPI_Comm_idup)");
    if (st) {
        c->impl = NULL; /* m->comm is written when the duplicate completes: leak m */
        return st;
    }
    rc = MPI_Comm_set_errhandler(m->comm, MPI_ERRORS_RETURN);
    if (rc != MPI_SUCCESS) {
        mpi_fail(ctx, c, rc, fn, "MPI_Comm_set_errhandler");
        MPI_Comm_free(&m->comm);
        free(m);
        c->impl = NULL;
        return NS_ERR_COMM;
    }
    return NS_OK;
}
