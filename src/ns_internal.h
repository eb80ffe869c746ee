/* Internal to the library: the context, error recording, argument checks and the block-wise
 * conversion of f16/bf16 rows to f32 that the CPU backend and the queue use. */
#ifndef NS_INTERNAL_H
#define NS_INTERNAL_H

#include "negsamp.h"
#include "ns_arena.h"

#include <stdarg.h>
#include <stdint.h>
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

#define NS_ERROR_CAPACITY 1024

struct ns_step_state; /* src/step.c */
struct ns_cuda_state; /* kernels/cuda_common.cuh */

struct ns_context {
    ns_backend backend; /* CPU or CUDA, never AUTO */
    int device;
    void *stream;
    int threads;
    char error[NS_ERROR_CAPACITY];
    ns_arena scratch; /* host workspace of one operation (src/ns_arena.h) */
    int64_t loss_tile_rows, loss_tile_cols; /* loss tiles (CPU, CUDA); 0 = chosen per call (tests) */
    int64_t loss_strip_bytes, loss_strip_rows; /* the fused CUDA loss's strip: budget, fewest rows
                                                  (0 = the defaults; tests) */
    int loss_no_keep; /* CPU fused symmetric loss: never keep every logit tile (tests) */
    struct ns_step_state *step;
    struct ns_cuda_state *cuda;
};

/* Records "fn: message" as the context's (or, for ctx == NULL, the thread's) last error and
 * returns status. Use: return ns_fail(ctx, NS_ERR_INVALID_ARGUMENT, "ns_x: k (%lld) ...", k); */
ns_status ns_fail(ns_context *ctx, ns_status status, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;
void ns_clear_error(ns_context *ctx);

/* The memory kind of ctx's backend. */
static inline ns_memory ns_backend_memory(const ns_context *ctx) {
    return ctx->backend == NS_BACKEND_CUDA ? NS_MEM_DEVICE : NS_MEM_HOST;
}

/* Argument checks. Each returns NS_OK or records "fn: name ..." and returns the failure. */
ns_status ns_check_context(ns_context *ctx, const char *fn);
ns_status ns_check_ptr(ns_context *ctx, const char *fn, const char *name, const void *p);
/* The data of CSR id lists in host memory, read here (the caller checked queries and that
 * offsets is not NULL): offsets[0] == 0, non-decreasing, ids given when the lists hold any, and
 * every id in [0, id_bound) — or, for id_bound NS_IDS_ANY, any id (document ids), for
 * NS_IDS_NONNEG any id >= 0. bound_name says what the bound counts ("the corpus rows").
 * *max_id (optional): the largest id, -1 when none. One rule for every op that takes lists
 * (exclusions, positives, neighbours). */
#define NS_IDS_ANY (-1)
#define NS_IDS_NONNEG (-2)
ns_status ns_check_id_lists_data(ns_context *ctx, const char *fn, const char *name,
                                 const ns_id_lists *x, int64_t queries, int64_t id_bound,
                                 const char *bound_name, int64_t *max_id);
/* A matrix with data, a supported dtype, rows ≥ 1 (≥ 0 with allow_empty), cols ≥ 1, ld ≥ cols. */
ns_status ns_check_matrix(ns_context *ctx, const char *fn, const char *name, ns_matrix m,
                          int allow_empty);
/* Resolves an options struct the caller passed, as NCCL resolves its config: out = the
 * defaults, overlaid with the caller's first struct_size bytes (given NULL: the defaults).
 * struct_size below sizeof(size_t) is refused (NS_ERR_INVALID_ARGUMENT: not initialised),
 * above size (a newer header than this library) too (NS_ERR_UNSUPPORTED). what names the
 * argument ("options", "options->filter"), type the struct and init its initializer macro. */
ns_status ns_options_resolve(ns_context *ctx, const char *fn, const char *what, const char *type,
                             const char *init, const void *given, const void *defaults,
                             size_t size, void *out);
#define NS_RESOLVE_OPTIONS(ctx, fn, what, T, INIT, given, out)                                \
    ns_options_resolve((ctx), (fn), (what), #T, #INIT, (given), &(const T)INIT, sizeof(T), (out))

/* ld with 0 resolved to cols. */
static inline int64_t ns_ld(ns_matrix m) { return m.ld ? m.ld : m.cols; }
size_t ns_dtype_size(ns_dtype t);
const char *ns_dtype_name(ns_dtype t);

/* Row r of m as a pointer (no conversion). */
static inline const void *ns_row(ns_matrix m, int64_t r) {
    return (const char *)m.data + (size_t)(r * ns_ld(m)) * ns_dtype_size(m.dtype);
}

/* Converts rows [r0, r0+n) of m to f32 in dst (n × m.cols, ld = m.cols). Returns the index of
 * the first non-finite element found + 1 (0 when all finite), so callers can report NaN/Inf. */
int64_t ns_rows_to_f32(ns_matrix m, int64_t r0, int64_t n, float *dst);
/* Returns a f32 view of rows [r0, r0+n): m's own memory when m is f32 (ld kept), otherwise
 * converted into buf (n × cols). *ld_out is the view's ld. Non-finite detection as above. */
const float *ns_rows_f32_view(ns_matrix m, int64_t r0, int64_t n, float *buf, int64_t *ld_out,
                              int64_t *nonfinite);
/* Scans rows for NaN/Inf: returns flat index + 1 of the first one, 0 if none. */
int64_t ns_matrix_find_nonfinite(ns_matrix m);
int64_t ns_find_nonfinite_f32(const float *x, int64_t n);

float ns_f16_to_f32(uint16_t h);
float ns_bf16_to_f32(uint16_t h);
uint16_t ns_f32_to_f16(float f);
uint16_t ns_f32_to_bf16(float f);

/* Threads the CPU backend uses for this context. */
int ns_threads(const ns_context *ctx);

/* Validation shared by ns_filter and ns_sample: the shapes and pointers (the data is checked
 * by the backend). */
ns_status ns_check_candidates(ns_context *ctx, const char *fn, const ns_candidates *c);
/* The option checks (no data read) of ns_filter (src/filter.c) and ns_sample (src/sample.c),
 * also run by ns_filter_sample (src/filter_sample.c); fn names the caller in the message. */
ns_status ns_filter_check_options(ns_context *ctx, const char *fn, const ns_candidates *c,
                                  const ns_filter_options *o);
ns_status ns_sample_check_options(ns_context *ctx, const char *fn, const ns_candidates *c,
                                  const ns_sampler_options *o, int64_t m);
/* The sampler's and the loss's parameters alone; name is the struct as the caller knows it
 * ("options", or ns_step_forward's "options->sampler" / "options->loss"). */
ns_status ns_sampler_check_params(ns_context *ctx, const char *fn, const char *name,
                                  const ns_sampler_options *o);
ns_status ns_loss_check_params(ns_context *ctx, const char *fn, const char *name,
                               const ns_loss_options *o);

#ifdef __cplusplus
}
#endif
#endif
