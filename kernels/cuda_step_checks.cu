// The checked training step's validation in one synchronisation (issue 11 item 3).
//
// Each op validates its device data with its own synchronisation when called alone. Inside the
// checked step (ns_step_forward without sync_free) those checks are deferred: the step zeroes
// the context's deferred words, scans the batch's queries and positives into them, and the ops
// then run without synchronising — the candidate check (ids, the scores of non-empty slots,
// which are non-finite when a candidate row is) and the filter counts land in the same words
// (kernels/cuda_filter.cu). At the end of the forward one copy brings the words and the mean
// loss to pinned memory and one synchronisation makes them readable: the first failure is
// reported as the op that found it would have (the candidate check first, as the filter ran
// before the loss), otherwise the counts and the loss are the step's outputs. Nothing is
// written to the caller's result before that read succeeds. The backward reads nothing the
// forward did not check, so it runs unchecked (zero synchronisations unless grads->temperature,
// a host value, is asked for).
#include "cuda_util.cuh"
#include "ns_cuda.h"

namespace {
// Slots of the deferred words beside the filter's (wide words 0–5 and 8–17).
enum { S_QUERY = 20, S_POSITIVE = 21 };
constexpr size_t kWords = NS_CUDA_FLAGS * sizeof(int);
}  // namespace

ns_status ns_cuda_step_defer_begin(ns_context *ctx, const ns_batch *batch, int *deferring) {
    static const char *fn = "ns_step_forward";
    ns_cuda_state *s = ctx->cuda;
    *deferring = 0;
    // Under capture, or with checks turned off, the ops' own behaviour stands (no checks).
    if (!ns_cuda_validating(ctx)) return NS_OK;
    if (!s->defer) {
        NS_CUDA_TRY(ctx, fn, cudaMalloc(&s->defer, kWords));
        NS_CUDA_TRY(ctx, fn, cudaHostAlloc(&s->hdefer, kWords + 16, cudaHostAllocDefault));
    }
    cudaStream_t st = ns_stream(ctx);
    NS_CUDA_TRY(ctx, fn, cudaMemsetAsync(s->defer, 0, kWords, st));
    ns_status rc;
    const ns_matrix q = batch->query, p = batch->positive;
    if ((rc = ns_cuda_scan_nonfinite(ctx, fn, q, 0, q.rows, s->defer, S_QUERY, st))) return rc;
    if ((rc = ns_cuda_scan_nonfinite(ctx, fn, p, 0, p.rows, s->defer, S_POSITIVE, st))) return rc;
    s->deferring = 1;
    *deferring = 1;
    return NS_OK;
}

ns_status ns_cuda_step_defer_end(ns_context *ctx, ns_status so_far, const ns_batch *batch,
                                 const float *loss_dev, float *loss, ns_filter_counts *counts) {
    static const char *fn = "ns_step_forward";
    ns_cuda_state *s = ctx->cuda;
    s->deferring = 0;
    if (so_far) return so_far;
    cudaStream_t st = ns_stream(ctx);
    float *hloss = (float *)((char *)s->hdefer + kWords);
    NS_CUDA_TRY(ctx, fn, cudaMemcpyAsync(s->hdefer, s->defer, kWords, cudaMemcpyDeviceToHost, st));
    NS_CUDA_TRY(ctx, fn, cudaMemcpyAsync(hloss, loss_dev, 4, cudaMemcpyDeviceToHost, st));
    NS_CUDA_TRY(ctx, fn, cudaStreamSynchronize(st));  // the step's one synchronisation
    const int64_t C = batch->candidates_per_query;
    ns_status rc;
    if (counts && (rc = ns_cuda_candidates_error(ctx, "ns_filter", C, NS_CUDA_WIDE(s->hdefer))))
        return rc;
    int64_t r, c;
    if (ns_cuda_first_nonfinite(s->hdefer, S_QUERY, batch->query.cols, &r, &c))
        return ns_fail(ctx, NS_ERR_NONFINITE, "ns_infonce_forward: query[%lld][%lld] is not finite",
                       (long long)r, (long long)c);
    if (ns_cuda_first_nonfinite(s->hdefer, S_POSITIVE, batch->positive.cols, &r, &c))
        return ns_fail(ctx, NS_ERR_NONFINITE, "ns_infonce_forward: passage[%lld][%lld] is not finite",
                       (long long)r, (long long)c);
    if (counts) ns_cuda_filter_counts(NS_CUDA_WIDE(s->hdefer), batch->query.rows * C, counts);
    *loss = *hloss;
    return NS_OK;
}
