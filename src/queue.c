/* A fixed-capacity FIFO of past passage embeddings: a ring of rows and int64 ids. Rows are
 * written at the slot after the newest, wrapping; once full, each push overwrites the oldest.
 * ns_queue_view returns the slots in storage order (slot 0 first), not age order: the InfoNCE
 * loss sums over its candidates, so their order carries no meaning.
 * The ring's dtype is the first push's (f32, f16 or bf16; an empty queue never pushed to views
 * as f32): rows of a later push in another dtype are converted to it, round to nearest even,
 * the same conversion on both backends. A bf16 step thus keeps a bf16 queue, and the loss sees
 * one dtype.
 * On a CUDA context the ring lives in device memory and pushes take device rows; a push is one
 * kernel (kernels/cuda_queue.cu), with no copy through the host. */
#include "ns_internal.h"
#ifdef NS_HAVE_CUDA
#include "ns_cuda.h"
#endif

#include <stdlib.h>
#include <string.h>

struct ns_queue {
    ns_context *ctx;    /* the context it was created on (device memory is freed through it) */
    ns_backend backend;
    int device;         /* CUDA: the device its ring lives on (ctx->device at creation) */
    int64_t capacity, dim;
    int64_t size;       /* rows held, ≤ capacity */
    int64_t next;       /* the slot the next row goes to */
    ns_arena ring;      /* the backend's memory, reserved once: rows then ids */
    ns_dtype dtype;     /* the rows' dtype: the first push's (f32 before any push) */
    int typed;          /* 1 once a push fixed dtype */
    void *rows;         /* capacity × dim elements of dtype (room reserved for f32) */
    int64_t *ids;       /* capacity */
};

static void ring_layout(void *plan, ns_arena *a) {
    ns_queue *qu = (ns_queue *)plan;
    qu->rows = ns_arena_carve(a, (size_t)(qu->capacity * qu->dim) * sizeof(float));
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
    qu->device = ctx->device;
    qu->capacity = capacity;
    qu->dim = dim;
    qu->ring = ns_arena_empty(ns_backend_memory(ctx));
    qu->dtype = NS_F32;
#ifdef NS_HAVE_CUDA
    int prev = -1;
    if (ctx->backend == NS_BACKEND_CUDA) st = ns_cuda_device_enter(ctx, fn, &prev);
    if (!st) st = ns_arena_lay_out(ctx, &qu->ring, ring_layout, qu, fn);
    if (ctx->backend == NS_BACKEND_CUDA) ns_cuda_device_leave(ctx, prev);
#else
    st = ns_arena_lay_out(ctx, &qu->ring, ring_layout, qu, fn);
#endif
    if (st) {
        free(qu);
        return st;
    }
    *queue = qu;
    return NS_OK;
}

ns_status ns_queue_destroy(ns_queue *queue) {
    if (!queue) return NS_OK;
    ns_status st = NS_OK;
#ifdef NS_HAVE_CUDA
    /* Released whatever happens (a failing guard is reported after the release). */
    ns_context *ctx = queue->ctx;
    int prev = -1;
    if (queue->backend == NS_BACKEND_CUDA) st = ns_cuda_device_enter(ctx, "ns_queue_destroy", &prev);
    ns_arena_release(ctx, &queue->ring);
    if (queue->backend == NS_BACKEND_CUDA) ns_cuda_device_leave(ctx, prev);
#else
    ns_arena_release(queue->ctx, &queue->ring);
#endif
    free(queue);
    return st;
}

int64_t ns_queue_size(const ns_queue *queue) { return queue ? queue->size : 0; }

/* The queue (named `name` in messages) is usable with ctx: the same backend and, on CUDA, the
 * same device (its ring is that device's memory). */
static ns_status check_queue_named(ns_context *ctx, const char *fn, const char *name,
                                   const ns_queue *queue) {
    ns_status st = ns_check_ptr(ctx, fn, name, queue);
    if (st) return st;
    if (queue->backend != ctx->backend)
        return ns_fail(ctx, NS_ERR_INVALID_ARGUMENT,
                       "%s: %s was created on a %s context but ctx is %s", fn, name,
                       queue->backend == NS_BACKEND_CUDA ? "CUDA" : "CPU",
                       ctx->backend == NS_BACKEND_CUDA ? "CUDA" : "CPU");
    if (queue->backend == NS_BACKEND_CUDA && queue->device != ctx->device)
        return ns_fail(ctx, NS_ERR_INVALID_ARGUMENT,
                       "%s: %s lives on CUDA device %d but ctx is on device %d", fn, name,
                       queue->device, ctx->device);
    return NS_OK;
}

static ns_status check_queue(ns_context *ctx, const char *fn, const ns_queue *queue) {
    return check_queue_named(ctx, fn, "queue", queue);
}

/* A push moves the ring's head and size on the host: captured into a CUDA graph, every replay
 * would write the capture's slots and leave the size as captured. */
static ns_status check_not_capturing(ns_context *ctx, const char *fn, const char *what) {
#ifdef NS_HAVE_CUDA
    if (ctx->backend == NS_BACKEND_CUDA && ns_cuda_stream_capturing(ctx))
        return ns_fail(ctx, NS_ERR_UNSUPPORTED,
                       "%s: %s while ctx's stream is being captured into a CUDA graph: the "
                       "queue's head and size are host values, so every replay would write the "
                       "same slots and see the captured size; push outside the graph "
                       "(ns_queue_push after each replay) or capture with enqueue = 0",
                       fn, what);
#else
    (void)ctx, (void)fn, (void)what;
#endif
    return NS_OK;
}

ns_status ns_queue_check_push(ns_context *ctx, const char *fn, const char *name,
                              const ns_queue *queue, int64_t cols, int push) {
    ns_status st = check_queue_named(ctx, fn, name, queue);
    if (st) return st;
    if (cols != queue->dim)
        return ns_fail(ctx, NS_ERR_INVALID_ARGUMENT,
                       "%s: %s holds rows of %lld columns but batch->query has %lld", fn, name,
                       (long long)queue->dim, (long long)cols);
    return push ? check_not_capturing(ctx, fn, "options->enqueue = 1 (a queue push)") : NS_OK;
}


ns_status ns_queue_push(ns_context *ctx, ns_queue *queue, ns_matrix rows, const int64_t *ids) {
    static const char *fn = "ns_queue_push";
    ns_status st = ns_check_context(ctx, fn);
    if (st) return st;
    if ((st = check_queue(ctx, fn, queue))) return st;
    if ((st = ns_check_matrix(ctx, fn, "rows", rows, 1))) return st;
    if ((st = check_not_capturing(ctx, fn, "a push"))) return st;
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
    const ns_dtype rt = queue->typed ? queue->dtype : rows.dtype;
#ifdef NS_HAVE_CUDA
    if (ctx->backend == NS_BACKEND_CUDA) {
        int prev = -1;
        if ((st = ns_cuda_device_enter(ctx, fn, &prev))) return st;
        st = ns_cuda_queue_push(ctx, rows, ids, first, n, queue->rows, rt, queue->capacity, start,
                                queue->ids, 1);
        ns_cuda_device_leave(ctx, prev);
        if (st) return st;
        queue->dtype = rt, queue->typed = 1;
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
    queue->dtype = rt, queue->typed = 1;
    const int64_t dim = queue->dim;
    const size_t es = ns_dtype_size(rt);
    int64_t slot = start;
    for (int64_t r = 0; r < n; r++) {
        char *dst = (char *)queue->rows + (size_t)(slot * dim) * es;
        if (rows.dtype == rt) {
            memcpy(dst, ns_row(rows, first + r), (size_t)dim * es);
        } else { /* through f32, round to nearest even: kernels/cuda_queue.cu's conversion */
            const void *src = ns_row(rows, first + r);
            for (int64_t c = 0; c < dim; c++) {
                float v = rows.dtype == NS_F32   ? ((const float *)src)[c]
                          : rows.dtype == NS_F16 ? ns_f16_to_f32(((const uint16_t *)src)[c])
                                                 : ns_bf16_to_f32(((const uint16_t *)src)[c]);
                if (rt == NS_F32) ((float *)dst)[c] = v;
                else ((uint16_t *)dst)[c] = rt == NS_F16 ? ns_f32_to_f16(v) : ns_f32_to_bf16(v);
            }
        }
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
    rows->dtype = queue->dtype;
    rows->rows = queue->size;
    rows->cols = queue->dim;
    rows->ld = queue->dim;
    if (ids) *ids = queue->ids;
    return NS_OK;
}
