/* Internal communicator interface: the few collectives the multi-rank step needs, with one
 * implementation per transport (src/comm_mpi.c, src/comm_nccl.c) behind a table of functions.
 *
 * Every collective is called by every rank in the same order. Buffers live where the
 * communicator's backend keeps data: host memory for MPI (CPU contexts), device memory for NCCL
 * (CUDA contexts, ordered on ctx->stream). Functions named *_host take host memory on both.
 * Each call returns when its result is ready for what follows (MPI: in memory; NCCL: enqueued
 * on ctx->stream, where later work sees it, with no host wait except for the *_host exchanges),
 * or fails with NS_ERR_COMM once timeout_ms passed without the other ranks; the communicator is
 * then marked broken and every later call fails at once. fn names the public caller in messages. */
#ifndef NS_COMM_H
#define NS_COMM_H

#include "ns_internal.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum { NS_COMM_MPI = 1, NS_COMM_NCCL = 2 } ns_comm_kind;

/* The multi-rank loss's buffers (src/comm_loss.c), carved from the communicator's arenas for
 * one forward and its backward: the gathered rows and ids, the reversed (symmetric) term's
 * inputs and saved statistics, and the staged gradients. */
typedef struct {
    size_t R, B, N, d, h;
    size_t es_passage, es_hard, es_query;
    int share, sym, hard_id, hard_keep;
    void *passage, *hard, *query;
    int64_t *passage_id, *positive, *hard_ids, *rev_positive;
    uint8_t *keep;
    float *rev_saved;
    float *grad_passage, *grad_hard, *grad_query, *grad_tmp;
    float *stage_query, *stage_query2, *stage_passage, *stage_hard;
} ns_comm_loss_bufs;

typedef struct {
    /* Rank r's `rows` rows of row_bytes each (at src, pitch src_pitch bytes) land at
     * out + r·rows·row_bytes on every rank. */
    ns_status (*allgather_rows)(ns_context *ctx, ns_comm *c, const void *src, size_t src_pitch,
                                size_t row_bytes, int64_t rows, void *out, const char *fn);
    /* recv[0..n) = Σ_r send_r[rank·n .. rank·n + n) (send holds size·n floats). */
    ns_status (*reduce_scatter_f32)(ns_context *ctx, ns_comm *c, const float *send, float *recv,
                                    size_t n, const char *fn);
    /* Small host-memory all-gather: all[r·bytes ..] = rank r's mine. Names a rank that did not
     * answer when it can tell. */
    ns_status (*allgather_host)(ns_context *ctx, ns_comm *c, const void *mine, void *all,
                                size_t bytes, const char *fn);
    /* Personalised all-to-all of host memory: send + sdispl[j] (scount[j] bytes) on rank r lands
     * at recv + rdispl[r] (rcount[r] bytes) on rank j; rank r's scount[j] equals rank j's
     * rcount[r] (the caller guarantees it: ns_comm_alltoallv_host checks it first). The send
     * and receive ranges do not overlap. MPI: point-to-point messages, so a timeout names the
     * silent ranks; NCCL: grouped ncclSend/ncclRecv through the exchange buffers. */
    ns_status (*alltoallv_host)(ns_context *ctx, ns_comm *c, const void *send,
                                const size_t *scount, const size_t *sdispl, void *recv,
                                const size_t *rcount, const size_t *rdispl, const char *fn);
    void (*destroy)(ns_comm *c);
} ns_comm_ops;

struct ns_comm {
    ns_comm_kind kind;
    int rank, size;
    int timeout_ms;
    ns_backend backend; /* the contexts it serves: CPU (MPI) or CUDA (NCCL) */
    int device;         /* CUDA device (NCCL) */
    int broken;         /* set by a failed or timed-out collective */
    char broken_why[NS_ERROR_CAPACITY];
    const ns_comm_ops *ops;
    void *impl;
    /* The distributed loss (src/comm_loss.c): gathered rows and ids of the last forward, kept
     * for its backward, in an arena of the backend's memory reserved by each forward for its
     * shapes (ids and sums are made there: nothing goes through the host). */
    ns_arena mem;
    ns_comm_loss_bufs bufs;
    int loss_ready;
    ns_loss_options loss_opt;
    ns_infonce_inputs gathered, reversed;
    /* Multi-rank mining (src/mine_ranks.c): a block's local lists in backend memory (CUDA). */
    ns_arena mine;
};

/* Shared by the constructors: allocates the ns_comm shell with validated options. */
ns_status ns_comm_new(ns_context *ctx, const char *fn, const ns_comm_options *opt,
                      ns_comm_kind kind, ns_comm **out);
/* Marks c broken with the reason (kept for later calls) and records it as ctx's error. */
ns_status ns_comm_break(ns_context *ctx, ns_comm *c, ns_status st, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 4, 5)))
#endif
    ;
/* Seconds on a monotonic clock, for deadlines. */
double ns_comm_now(void);
/* Sleeps a little more each time it is called while polling (spin first, then up to 1 ms). */
void ns_comm_backoff(unsigned *round);

/* Checks that c is usable with ctx (not broken, same backend and device). */
ns_status ns_comm_usable(ns_context *ctx, const ns_comm *c, const char *fn);

/* out (size·rows × cols, packed, same dtype, on the backend) = every rank's `rows` in rank
 * order. Every rank passes the same rows.rows, cols and dtype (check with ns_comm_check_same). */
ns_status ns_comm_allgather_rows(ns_context *ctx, ns_comm *c, ns_matrix rows, void *out,
                                 const char *fn);
/* Packed raw elements: out[r·n·elem ..] = rank r's src[0 .. n·elem). */
ns_status ns_comm_allgather(ns_context *ctx, ns_comm *c, const void *src, size_t n, size_t elem,
                            void *out, const char *fn);
/* recv (n floats) = the sum over ranks of their send[rank·n .. rank·n + n); send has size·n. */
ns_status ns_comm_reduce_scatter_f32(ns_context *ctx, ns_comm *c, const float *send,
                                     float *recv, size_t n, const char *fn);
/* The checked personalised all-to-all (the ops entry above): local arguments (NULL buffers
 * with bytes to move, ranges that overflow) and the counts of every rank are all-gathered first,
 * so a rank with a bad argument, or ranks whose counts disagree (rank r sends rank j a number of
 * bytes rank j does not expect), fail every rank with NS_ERR_COMM naming them. Costs one extra
 * exchange of 2·size counts per rank: callers whose counts follow from values the ranks already
 * agreed on (multi-rank mining) call the ops entry directly. */
ns_status ns_comm_alltoallv_host(ns_context *ctx, ns_comm *c, const void *send,
                                 const size_t *scount, const size_t *sdispl, void *recv,
                                 const size_t *rcount, const size_t *rdispl, const char *fn);
/* v[0..n) (host) = Σ_r v_r, summed in rank order so every rank gets the same bits. */
ns_status ns_comm_allreduce_sum_host(ns_context *ctx, ns_comm *c, double *v, int n,
                                     const char *fn);
/* Fails with NS_ERR_COMM on every rank unless all ranks passed equal values[0..n) (host);
 * the message names the first differing value (names[i]), its value here and on the first
 * rank that differs. */
ns_status ns_comm_check_same(ns_context *ctx, ns_comm *c, const int64_t *values,
                             const char *const *names, int n, const char *fn);

/* InfoNCE of this rank's queries against the global pool: ns_infonce_forward / _backward
 * semantics for the concatenation of every rank's inputs, computed for this rank's rows only.
 * in holds this rank's B queries, N passages (its queries' positives among them), B·h hard rows
 * and ids, with the same B, N, h, d, dtypes, options and optional pointers on every rank.
 * Rank r's passage j is global passage r·N + j (so a NULL passage_id means the global row
 * number), query i's positive global passage r·N + positive[i]. The passages are all-gathered;
 * with share_hard the hard rows, ids and keep flags too; with symmetric the queries too (then
 * positive must be NULL and N == B). loss (host) is the mean over all ranks' queries, the same
 * bits on every rank; per_query and saved (B · NS_INFONCE_SAVED_PER_QUERY) are this rank's.
 * The backward must follow the forward on the same communicator and inputs; it writes this
 * rank's gradients exactly: the gathered rows' gradients are reduce-scattered to their owners,
 * dτ summed over the ranks. Every rank reaches every collective even when its own part fails,
 * so all ranks fail together (the failing one with its own message). */
ns_status ns_comm_infonce_forward(ns_context *ctx, ns_comm *c, const ns_infonce_inputs *in,
                                  const ns_loss_options *opt, float *loss, float *per_query,
                                  float *saved, const char *fn);
ns_status ns_comm_infonce_backward(ns_context *ctx, ns_comm *c, const ns_infonce_inputs *in,
                                   const ns_loss_options *opt, const float *saved,
                                   float grad_loss, const ns_infonce_grads *grads,
                                   const char *fn);
/* For a caller (the step) whose own work failed before it could call the forward or backward
 * above: takes part in that call's first exchange with the failure, so that the other ranks
 * fail at once ("rank r rejected its arguments") instead of waiting for the timeout. Returns
 * local, with ctx's message kept. */
ns_status ns_comm_infonce_abstain(ns_context *ctx, ns_comm *c, ns_status local, const char *fn);
/* Frees the loss buffers (ns_comm_destroy). */
void ns_comm_loss_free(ns_comm *c);

/* Constructors of the transports (only in builds that have them). */
#ifdef NS_HAVE_MPI
ns_status ns_comm_mpi_init(ns_context *ctx, ns_comm *c, const void *mpi_comm, const char *fn);
#endif
#ifdef NS_HAVE_NCCL
ns_status ns_comm_nccl_init(ns_context *ctx, ns_comm *c, void *nccl_comm, const void *unique_id,
                            int nranks, int rank, const char *fn);
ns_status ns_comm_nccl_unique_id(ns_context *ctx, void *unique_id);
#endif

#ifdef __cplusplus
}
#endif
#endif
