/* The CUDA backend's entry points: the mirror of src/cpu/ns_cpu.h (same signatures), one file
 * per operation under kernels/. Each is called by the public function after the argument checks
 * that read no data, with ctx->backend == NS_BACKEND_CUDA, and only in builds with
 * NS_HAVE_CUDA; the checks that read device data run here, on the device. Pointers are device
 * pointers; work goes on ctx->stream. */
#ifndef NS_CUDA_H
#define NS_CUDA_H

#include "ns_internal.h"

#ifdef __cplusplus
extern "C" {
#endif

int ns_cuda_device_count_impl(void);
/* Creates ctx->cuda (handles, workspace) for ctx->device; NS_ERR_NO_DEVICE without a GPU. */
ns_status ns_cuda_context_init(ns_context *ctx);
void ns_cuda_context_free(ns_context *ctx);
ns_status ns_cuda_set_stream(ns_context *ctx, void *stream);
/* The device guard of every CUDA entry (NS_DISPATCH, the step, the queue, context creation and
 * destruction): enter makes ctx's device current and stores the caller's current device in
 * *prev (−1 when unreadable or nothing to restore); leave restores it. A failing cudaSetDevice
 * is NS_ERR_CUDA naming fn and the ordinal (*prev = −1: the caller's device is still current),
 * and the entry returns it before any work. Nested guards are harmless. */
ns_status ns_cuda_device_enter(ns_context *ctx, const char *fn, int *prev);
void ns_cuda_device_leave(ns_context *ctx, int prev);

ns_status ns_cuda_similarity(ns_context *ctx, ns_matrix q, ns_matrix p, float scale,
                             unsigned flags, float *s);
ns_status ns_cuda_mine_topk(ns_context *ctx, ns_matrix q, ns_matrix corpus, int64_t k,
                            const ns_mine_options *opt, int64_t *index, float *score);
ns_status ns_cuda_filter(ns_context *ctx, const ns_candidates *cand, const ns_filter_options *opt,
                         uint8_t *keep, ns_filter_counts *counts);
ns_status ns_cuda_sample(ns_context *ctx, const ns_candidates *cand, const uint8_t *keep,
                         const ns_sampler_options *opt, int64_t m, int64_t *index, float *score,
                         int64_t *count);
/* ns_filter_sample: the data both need checked first (nothing written on failure), then
 * ns_cuda_filter and ns_cuda_sample on its keep (cuda_sample.cu). Their own checks run again:
 * one kernel each, cheap on the device beside the host's scans. */
ns_status ns_cuda_filter_sample(ns_context *ctx, const ns_candidates *cand,
                                const ns_filter_options *fo, const ns_sampler_options *so,
                                int64_t m, uint8_t *keep, ns_filter_counts *counts,
                                int64_t *index, float *score, int64_t *count);
ns_status ns_cuda_sample_corpus(ns_context *ctx, const ns_corpus_weights *w,
                                const ns_id_lists *exclude, const ns_corpus_sampler_options *opt,
                                int64_t queries, int64_t m, int64_t *index, int64_t *count);
ns_status ns_cuda_kmeans(ns_context *ctx, ns_matrix x, int64_t k, const ns_kmeans_options *opt,
                         int64_t *labels, float *centroids, double *inertia, int64_t *iterations);
ns_status ns_cuda_infonce_forward(ns_context *ctx, const ns_infonce_inputs *in,
                                  const ns_loss_options *opt, float *loss, float *per_query,
                                  float *saved);
ns_status ns_cuda_infonce_backward(ns_context *ctx, const ns_infonce_inputs *in,
                                   const ns_loss_options *opt, const float *saved,
                                   float grad_loss, const ns_infonce_grads *grads);
/* The forward with the mean loss written to the device float *loss_dev on the stream instead of
 * a host float: no synchronisation at the end (the step's sync_free path). */
ns_status ns_cuda_infonce_forward_device(ns_context *ctx, const ns_infonce_inputs *in,
                                         const ns_loss_options *opt, float *loss_dev,
                                         float *per_query, float *saved);
/* The fused forward + backward (kernels/cuda_infonce_fused.cu): each logit tile computed once
 * (kept in a row strip), three GEMMs per tile; the outputs of the forward then the backward. */
ns_status ns_cuda_infonce_forward_backward(ns_context *ctx, const ns_infonce_inputs *in,
                                           const ns_loss_options *opt, float grad_loss,
                                           float *loss, float *per_query, float *saved,
                                           const ns_infonce_grads *grads);
/* The same with the mean loss and dL/dτ written to device floats (loss_dev; dtau_dev when not
 * NULL; grads->temperature is ignored): no synchronisation unless the inputs are validated
 * (the step's path). */
ns_status ns_cuda_infonce_forward_backward_device(ns_context *ctx, const ns_infonce_inputs *in,
                                                  const ns_loss_options *opt, float grad_loss,
                                                  float *loss_dev, float *per_query, float *saved,
                                                  const ns_infonce_grads *grads, float *dtau_dev);
/* Turns the ops' synchronising data validation on ctx on (1) or off (0) and returns the
 * previous setting (kernels/cuda_util.cu; see ns_cuda_set_input_checks). */
int ns_cuda_swap_input_checks(ns_context *ctx, int on);
/* The step's ids on the device, no host copy: pos_offsets[i] = i (i ≤ B); pos_ids[i] =
 * query_offset + i when pos_ids is not NULL; cand_ids[r] = query_offset·C + r (r < B·C) when
 * cand_ids is not NULL. */
ns_status ns_cuda_step_ids(ns_context *ctx, int64_t B, int64_t C, int64_t query_offset,
                           int64_t *pos_offsets, int64_t *pos_ids, int64_t *cand_ids);
/* The step's small kernels (kernels/cuda_step.cu): score[i·C + j] = q_i · cand_{i·C+j}
 * and positive_score[i] = q_i · p_i; then gather the sampled rows (ids → rows of the candidate
 * block of query i, in cand's dtype, keep/row/id arrays, zero rows for padding). */
/* The batch's device rows are checked by the ops the step calls (their device scans). */
ns_status ns_cuda_step_check_batch(ns_context *ctx, const ns_batch *batch);
ns_status ns_cuda_step_scores(ns_context *ctx, ns_matrix q, ns_matrix pos, ns_matrix cand,
                              int64_t per_query, float *score, float *positive_score);
/* gather: the slot of a chosen id is the first slot of its query with that id that the filter
 * kept (slot_keep, B·C; NULL = all kept) — the copy the sampler drew, not an earlier removed one.
 * hard: B·h rows of d in cand's dtype (no conversion: the loss sees one dtype). */
ns_status ns_cuda_step_gather(ns_context *ctx, ns_matrix cand, int64_t per_query,
                              const int64_t *cand_id, const uint8_t *slot_keep,
                              const int64_t *chosen_id, int64_t h, void *hard, uint8_t *keep,
                              int64_t *row);
/* dst[e] = src[e] · scale for e < n (dst may be src): the fused step's gradients, made at
 * grad_loss = 1 in the forward, scaled in the backward. */
ns_status ns_cuda_step_scale(ns_context *ctx, int64_t n, const float *src, float scale, float *dst);
/* The checked step's deferred validation (kernels/cuda_step_checks.cu): begin zeroes the
 * deferred words, scans the batch's queries and positives into them and makes the ops defer
 * their synchronising checks (*deferring = 1; 0 while capturing or with checks off: nothing
 * deferred). end (always called after a begin that deferred) stops deferring and, when so_far
 * is NS_OK, reads the words and the device loss with one synchronisation: the first failure,
 * else *loss and (when counts, the step filtered) the filter counts. */
ns_status ns_cuda_step_defer_begin(ns_context *ctx, const ns_batch *batch, int *deferring);
ns_status ns_cuda_step_defer_end(ns_context *ctx, ns_status so_far, const ns_batch *batch,
                                 const float *loss_dev, float *loss, ns_filter_counts *counts);
/* grad_cand (B·C × d) = 0, then grad_cand[row[r]] += grad_hard[r] for every r with row ≥ 0. */
ns_status ns_cuda_step_scatter(ns_context *ctx, int64_t rows, int64_t dim, const float *grad_hard,
                               const int64_t *row, int64_t nrow, float *grad_cand);
/* The step's random + hard mixing (kernels/cuda_step_mix.cu; rules in src/hostdevice/ns_step_mix.h):
 * mix_mask: out[t] (B·C) = the filter kept slot t (keep NULL: all), its column is in [lo, hi),
 * its id (cand_id) is >= 0 and none of query i's ndrop ids drop[i·ndrop ..];
 * mix_merge: id (B × (h + hr)) = each query's h hard ids then its hr random ids, count (B) = its
 * ids >= 0 (hard may be NULL when h = 0). */
ns_status ns_cuda_step_mix_mask(ns_context *ctx, int64_t B, int64_t C, const uint8_t *keep,
                              const int64_t *cand_id, int64_t lo, int64_t hi,
                              const int64_t *drop, int64_t ndrop, uint8_t *out);
ns_status ns_cuda_step_mix_merge(ns_context *ctx, int64_t B, const int64_t *hard, int64_t h,
                               const int64_t *rnd, int64_t hr, int64_t *id, int64_t *count);

/* dst[r] = row[r] >= 0 ? src[row[r]] : -1 (r < n): the sampled hard negatives' group ids. */
ns_status ns_cuda_step_gather_ids(ns_context *ctx, int64_t n, const int64_t *row,
                                  const int64_t *src, int64_t *dst);
/* The queue's push (kernels/cuda_queue.cu): rows [first, first + n) of the device matrix rows
 * into ring slots start, start + 1, ... (mod capacity) of a ring of ring_dtype (converted,
 * round to nearest even, when rows.dtype differs), and ids (NULL: −1) into ring_ids. validate:
 * the device NaN/Inf scan of the rows first (one synchronisation; skipped after
 * ns_cuda_set_input_checks(ctx, 0) or while capturing). Otherwise asynchronous. */
ns_status ns_cuda_queue_push(ns_context *ctx, ns_matrix rows, const int64_t *ids, int64_t first,
                             int64_t n, void *ring, ns_dtype ring_dtype, int64_t capacity,
                             int64_t start, int64_t *ring_ids, int validate);
/* The multi-rank loss's device steps (kernels/cuda_comm.cu), on ctx's stream: dst[i] =
 * (src ? src[i] : i) + add for i < n; dst = dst + src (mean 0) or 0.5·(dst + src) (mean 1). */
ns_status ns_cuda_offset_ids(ns_context *ctx, int64_t *dst, const int64_t *src, int64_t n,
                             int64_t add);
ns_status ns_cuda_combine_f32(ns_context *ctx, float *dst, const float *src, int64_t n, int mean);
/* Device memory for the arenas (src/arena.c): ns_cuda_free_ordered frees after the work queued
 * on ctx's stream (ctx NULL: after all work on the device) and returns any failure. */
ns_status ns_cuda_malloc(ns_context *ctx, void **p, size_t bytes);
/* 1 while ctx's stream is being captured into a CUDA graph (no allocation, free or sync then). */
int ns_cuda_stream_capturing(ns_context *ctx);
ns_status ns_cuda_free_ordered(ns_context *ctx, void *p);
/* Page-locked host memory; freed after the work on ctx's stream and copy stream. */
ns_status ns_cuda_host_alloc(ns_context *ctx, void **p, size_t bytes);
ns_status ns_cuda_free_host_ordered(ns_context *ctx, void *p);
/* A copy ordered on ctx's stream (use ns_copy, src/ns_arena.h, from backend-neutral code). */
ns_status ns_cuda_memcpy(ns_context *ctx, void *dst, const void *src, size_t bytes,
                         ns_copy_dir dir);

#ifdef __cplusplus
}
#endif
#endif
