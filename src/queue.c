/* A fixed-capacity FIFO of past passage embeddings: a ring of f32 rows and int64 ids. Rows are
 * written at the slot after the newest, wrapping; once full, each push overwrites the oldest.
 * ns_queue_view returns the slots in storage order (slot 0 first), not age order: the InfoNCE
 * loss sums over its candidates, so their order carries no meaning.
 * On a CUDA context the ring lives in device memory and pushes take device rows (f32 only). */
#include "ns_internal.h"
#ifdef NS_HAVE_CUDA
#include "ns_cuda.h"
#endif

#include <stdlib.h>
#include <string.h>

struct ns_queue {
    ns_context *ctx;    /* the context it was created on (device memory is freed through it) */
    ns_backend backend;
    int64_t capacity, dim;
    int64_t size;       /* rows held, ≤ capacity */
    int64_t next;       /* the slot the next row goes to */
    ns_arena ring;      /* the backend's memory, reserved once: rows then ids */
    ns_arena stage;     /* CUDA: host staging for the non-finite check, grown on demand */
    float *rows;        /* capacity × dim */
    int64_t *ids;       /* capacity */
};

static void ring_layout(void *plan, ns_arena *a) {
    ns_queue *qu = (ns_queue *)plan;
    qu->rows = (float *)ns_arena_carve(a, (size_t)(qu->capacity * qu->dim) * sizeof(float));
    qu->ids = (int64_t *)ns_arena_carve(a, (size_t)qu->capacity * sizeof(int64_t));
}

ns_status ns_queue_create(ns_context *ctx, int64_t capacity, int64_t dim, ns_queue **queue) {
    static const char *fn = "ns_queue_create";
    ns_status st = ns_check_context(ctx, fn);
    if (st) return st;
    if ((st = ns_check_ptr(ctx, fn, "queue", queue))) return st;
    if (capacity < 1)
        return ns_fail(ctx, NS_ERR_INVALID_ARGUMENT, "%s: capacity (%lld) must be at least 1", fn,
                       (long long)capacity);
    if (dim < 1)
        return ns_fail(ctx, NS_ERR_INVALID_ARGUMENT, "%s: dim (%lld) must be at least 1", fn,
                       (long long)dim);
    if (capacity > INT64_MAX / 4 / dim)
        return ns_fail(ctx, NS_ERR_INVALID_ARGUMENT,
                       "%s: capacity × dim (%lld × %lld) overflows the addressable size", fn,
                       (long long)capacity, (long long)dim);
    ns_queue *qu = (ns_queue *)calloc(1, sizeof(ns_queue));
    if (!qu) return ns_fail(ctx, NS_ERR_OUT_OF_MEMORY, "%s: cannot allocate the queue", fn);
    qu->ctx = ctx;
    qu->backend = ctx->backend;
    qu->capacity = capacity;
    qu->dim = dim;
    qu->ring = ns_arena_empty(ns_backend_memory(ctx));
    qu->stage = ns_arena_empty(NS_MEM_HOST);
    if ((st = ns_arena_lay_out(ctx, &qu->ring, ring_layout, qu, fn))) {
        free(qu);
        return st;
    }
    *queue = qu;
    return NS_OK;
}

ns_status ns_queue_destroy(ns_queue *queue) {
    if (!queue) return NS_OK;
    ns_arena_release(queue->ctx, &queue->ring);
    ns_arena_release(queue->ctx, &queue->stage);
    free(queue);
    return NS_OK;
}

int64_t ns_queue_size(const ns_queue *queue) { return queue ? queue->size : 0; }

static ns_status check_queue(ns_context *ctx, const char *fn, const ns_queue *queue) {
    ns_status st = ns_check_ptr(ctx, fn, "queue", queue);
    if (st) return st;
    if (queue->backend != ctx->backend)
        return ns_fail(ctx, NS_ERR_INVALID_ARGUMENT,
                       "%s: the queue was created on a %s context but ctx is %s", fn,
                       queue->backend == NS_BACKEND_CUDA ? "CUDA" : "CPU",
                       ctx->backend == NS_BACKEND_CUDA ? "CUDA" : "CPU");
    return NS_OK;
}

#ifdef NS_HAVE_CUDA
/* Host staging of a CUDA push: n rows (f32) and n ids. */
typedef struct {
    int64_t n, dim;
    float *rows;
    int64_t *ids;
} push_stage;

static void stage_layout(void *plan, ns_arena *a) {
    push_stage *s = (push_stage *)plan;
    s->rows = (float *)ns_arena_carve(a, (size_t)(s->n * s->dim) * sizeof(float));
    s->ids = (int64_t *)ns_arena_carve(a, (size_t)s->n * sizeof(int64_t));
}

/* Device push: rows are device f32. They are brought to the host once to reject NaN/Inf (this
 * synchronises the stream), then copied device to device into the ring. */
static ns_status push_cuda(ns_context *ctx, ns_queue *qu, ns_matrix rows, const int64_t *ids,
                           int64_t first, int64_t n, int64_t start) {
    static const char *fn = "ns_queue_push";
    const int64_t dim = qu->dim, ld = ns_ld(rows);
    if (rows.dtype != NS_F32)
        return ns_fail(ctx, NS_ERR_UNSUPPORTED,
                       "%s: rows.dtype (%s) is not supported on CUDA (expected f32)", fn,
                       ns_dtype_name(rows.dtype));
    push_stage ps = {n, dim, NULL, NULL};
    ns_status st = ns_arena_lay_out(ctx, &qu->stage, stage_layout, &ps, fn);
    if (st) return st;
    float *host = ps.rows;
    int64_t *hid = ps.ids;
    const float *src = (const float *)rows.data + first * ld;
    if (ld == dim) {
        if ((st = ns_cuda_memcpy(ctx, host, src, (size_t)(n * dim) * 4, NS_COPY_D2H))) return st;
    } else {
        for (int64_t r = 0; r < n; r++)
            if ((st = ns_cuda_memcpy(ctx, host + r * dim, src + r * ld, (size_t)dim * 4, NS_COPY_D2H)))
                return st;
    }
    int64_t bad = ns_find_nonfinite_f32(host, n * dim);
    if (bad)
        return ns_fail(ctx, NS_ERR_NONFINITE, "%s: rows[%lld][%lld] is not finite", fn,
                       (long long)(first + (bad - 1) / dim), (long long)((bad - 1) % dim));
    if (!ids)
        for (int64_t r = 0; r < n; r++) hid[r] = -1;
    /* Up to two contiguous runs of slots (before and after the wrap). */
    int64_t done = 0, slot = start;
    while (done < n) {
        int64_t run = qu->capacity - slot < n - done ? qu->capacity - slot : n - done;
        if (ld == dim) {
            st = ns_cuda_memcpy(ctx, qu->rows + slot * dim, src + done * dim,
                                (size_t)(run * dim) * 4, NS_COPY_D2D);
        } else {
            st = NS_OK;
            for (int64_t r = 0; r < run && !st; r++)
                st = ns_cuda_memcpy(ctx, qu->rows + (slot + r) * dim, src + (done + r) * ld,
                                    (size_t)dim * 4, NS_COPY_D2D);
        }
        if (st) return st;
        if (ids) st = ns_cuda_memcpy(ctx, qu->ids + slot, ids + first + done, (size_t)run * 8, NS_COPY_D2D);
        else st = ns_cuda_memcpy(ctx, qu->ids + slot, hid + done, (size_t)run * 8, NS_COPY_H2D);
        if (st) return st;
        done += run;
        slot = (slot + run) % qu->capacity;
    }
    return NS_OK;
}
#endif

ns_status ns_queue_push(ns_context *ctx, ns_queue *queue, ns_matrix rows, const int64_t *ids) {
    static const char *fn = "ns_queue_push";
    ns_status st = ns_check_context(ctx, fn);
    if (st) return st;
    if ((st = check_queue(ctx, fn, queue))) return st;
    if ((st = ns_check_matrix(ctx, fn, "rows", rows, 1))) return st;
    if (rows.rows == 0) return NS_OK;
    if (rows.cols != queue->dim)
        return ns_fail(ctx, NS_ERR_INVALID_ARGUMENT,
                       "%s: rows has %lld columns but the queue holds rows of dim %lld", fn,
                       (long long)rows.cols, (long long)queue->dim);
    /* Only the newest capacity rows can survive the push; they land in the slots that pushing
     * every row one at a time would have left them in. */
    const int64_t n = rows.rows < queue->capacity ? rows.rows : queue->capacity;
    const int64_t first = rows.rows - n;
    const int64_t start = (queue->next + first % queue->capacity) % queue->capacity;
#ifdef NS_HAVE_CUDA
    if (ctx->backend == NS_BACKEND_CUDA) {
        if ((st = push_cuda(ctx, queue, rows, ids, first, n, start))) return st;
        queue->next = (start + n) % queue->capacity;
        queue->size = queue->size + n < queue->capacity ? queue->size + n : queue->capacity;
        return NS_OK;
    }
#endif
    /* Reject non-finite rows before any slot changes. */
    ns_matrix tail = rows;
    tail.data = ns_row(rows, first);
    tail.rows = n;
    int64_t bad = ns_matrix_find_nonfinite(tail);
    if (bad)
        return ns_fail(ctx, NS_ERR_NONFINITE, "%s: rows[%lld][%lld] is not finite", fn,
                       (long long)(first + (bad - 1) / rows.cols),
                       (long long)((bad - 1) % rows.cols));
    int64_t slot = start;
    for (int64_t r = 0; r < n; r++) {
        ns_rows_to_f32(rows, first + r, 1, queue->rows + slot * queue->dim);
        queue->ids[slot] = ids ? ids[first + r] : -1;
        slot = slot + 1 == queue->capacity ? 0 : slot + 1;
    }
    queue->next = slot;
    queue->size = queue->size + n < queue->capacity ? queue->size + n : queue->capacity;
    return NS_OK;
}

ns_status ns_queue_view(ns_context *ctx, const ns_queue *queue, ns_matrix *rows,
                        const int64_t **ids) {
    static const char *fn = "ns_queue_view";
    ns_status st = ns_check_context(ctx, fn);
    if (st) return st;
    if ((st = check_queue(ctx, fn, queue))) return st;
    if ((st = ns_check_ptr(ctx, fn, "rows", rows))) return st;
    rows->data = queue->rows;
    rows->dtype = NS_F32;
    rows->rows = queue->size;
    rows->cols = queue->dim;
    rows->ld = queue->dim;
    if (ids) *ids = queue->ids;
    return NS_OK;
}
