/* The CPU backend's entry points: the mirror of kernels/ns_cuda.h, one file per operation under
 * src/cpu/. Each is called by the public function (src/<op>.c) after the argument checks that
 * read no data, with ctx->backend == NS_BACKEND_CPU; it does the checks that read the (host)
 * data — NaN/Inf scans, id and list checks — before it writes any output. */
#ifndef NS_CPU_H
#define NS_CPU_H

#include "ns_internal.h"

#ifdef __cplusplus
extern "C" {
#endif

/* src/cpu/cpu_similarity.c */
ns_status ns_cpu_similarity(ns_context *ctx, ns_matrix q, ns_matrix p, float scale,
                            unsigned flags, float *s);
/* src/cpu/cpu_mine_topk.c */
ns_status ns_cpu_mine_topk(ns_context *ctx, ns_matrix q, ns_matrix corpus, int64_t k,
                           const ns_mine_options *opt, int64_t *index, float *score);
/* src/cpu/cpu_blas.c: the one place where row-major products are mapped onto CBLAS. */
/* C = alpha · A · Bᵀ + beta · C, row-major, f32. */
void ns_sgemm_nt(int64_t m, int64_t n, int64_t k, float alpha, const float *a, int64_t lda,
                 const float *b, int64_t ldb, float beta, float *c, int64_t ldc);
/* C = alpha · A · B + beta · C, row-major. */
void ns_sgemm_nn(int64_t m, int64_t n, int64_t k, float alpha, const float *a, int64_t lda,
                 const float *b, int64_t ldb, float beta, float *c, int64_t ldc);
/* C = alpha · Aᵀ · B + beta · C, row-major (A is k × m). */
void ns_sgemm_tn(int64_t m, int64_t n, int64_t k, float alpha, const float *a, int64_t lda,
                 const float *b, int64_t ldb, float beta, float *c, int64_t ldc);

/* The context's thread count for one CPU operation (NS_DISPATCH, src/ns_dispatch.h): OpenMP's
 * default team size (the nthreads ICV of the calling thread) is set to ns_threads(ctx), so the
 * GEMM libraries that size their teams from it (oneDNN's dnnl_sgemm and matmul, OpenBLAS's OpenMP
 * build) use the context's threads, not OMP_NUM_THREADS; leave restores the caller's value.
 * enter returns what leave needs. Both are no-ops without OpenMP. */
int ns_cpu_threads_enter(const ns_context *ctx);
void ns_cpu_threads_leave(int saved);
/* The threads computing GEMMs that a GEMM call of this thread last saw: omp_get_max_threads()
 * outside a parallel region (what oneDNN and OpenBLAS size their teams from), the team size
 * inside one (each member runs its own GEMMs); 0 before any. For tests. */
int ns_gemm_last_threads(void);
/* Sets what ns_gemm_last_threads reports: a caller whose team members each ran their own GEMMs
 * (mining's per-thread tiles) notes the team size on the calling thread. */
void ns_gemm_note_threads(int threads);

/* The GEMM library in use ("oneDNN (...) + OpenBLAS (OpenMP)"), for `negsamp info` and benchmarks. */
const char *ns_gemm_name(void);
/* Whether ns_gemm_bf16_nt is available (oneDNN built in and its CPU engine created). */
int ns_gemm_has_bf16(void);
/* C = alpha · A · Bᵀ, row-major, A and B bf16 (raw bits), f32 accumulation, f32 C. 0 on success,
 * -1 where unavailable or failed (the caller then computes in f32). Inside a parallel region it
 * runs on the calling thread alone (its own oneDNN stream), side by side with the others. */
int ns_gemm_bf16_nt(int64_t m, int64_t n, int64_t k, float alpha, const uint16_t *a, int64_t lda,
                    const uint16_t *b, int64_t ldb, float *c, int64_t ldc);

/* The host data of candidates (src/cpu/cpu_filter.c; ns_filter and ns_sample): ids >= -1,
 * finite scores in non-empty slots, finite positive scores and guide scores when asked for. */
ns_status ns_check_candidate_data(ns_context *ctx, const char *fn, const ns_candidates *c,
                                  int need_positive_score, int need_guide);
/* The per-query part of it alone (positive and guide positive scores): what the fused
 * ns_cpu_filter_sample's sampler still checks after its one scan of the slots. */
ns_status ns_check_candidate_rows(ns_context *ctx, const char *fn, const ns_candidates *c,
                                  int need_positive_score, int need_guide);
/* src/cpu/cpu_filter.c */
ns_status ns_cpu_filter(ns_context *ctx, const ns_candidates *cand, const ns_filter_options *opt,
                        uint8_t *keep, ns_filter_counts *counts);
/* src/cpu/cpu_sample_keys.c: ns_sample_key (ns_math.h) of n slots of query qid (ids, scores
 * s) into keys, bit-identical on every path; isa: NS_KEYS_ISA_SCALAR, _AVX2 (8 lanes) or
 * _AVX512 (16 lanes), only one that ns_cpu_sample_keys_supported says the CPU has.
 * ns_cpu_sample_keys_isa: the path ns_sample takes (the widest the CPU has, checked at run
 * time; ns_cpu_sample_keys_force(isa ≥ 0) overrides it for tests, -1 restores it). */
#define NS_KEYS_ISA_SCALAR 0
#define NS_KEYS_ISA_AVX512 1
#define NS_KEYS_ISA_AVX2 2
int ns_cpu_sample_keys_supported(int isa);
int ns_cpu_sample_keys_isa(void);
void ns_cpu_sample_keys_force(int isa);
void ns_cpu_sample_keys(int isa, const ns_sampler_options *o, int64_t qid, float sp,
                        const int64_t *ids, const float *s, int64_t n, float *keys);
/* src/cpu/cpu_sample.c */
ns_status ns_cpu_sample(ns_context *ctx, const ns_candidates *cand, const uint8_t *keep,
                        const ns_sampler_options *opt, int64_t m, int64_t *index, float *score,
                        int64_t *count);
/* src/cpu/cpu_filter_sample.c: ns_cpu_filter then ns_cpu_sample on its keep, fused per row
 * with one scan of the data checks. */
ns_status ns_cpu_filter_sample(ns_context *ctx, const ns_candidates *cand,
                               const ns_filter_options *fo, const ns_sampler_options *so,
                               int64_t m, uint8_t *keep, ns_filter_counts *counts,
                               int64_t *index, float *score, int64_t *count);
/* src/cpu/cpu_weighted.c */
ns_status ns_cpu_sample_corpus(ns_context *ctx, const ns_corpus_weights *w,
                               const ns_id_lists *exclude, const ns_corpus_sampler_options *opt,
                               int64_t queries, int64_t m, int64_t *index, int64_t *count);
/* src/cpu/cpu_kmeans.c */
ns_status ns_cpu_kmeans(ns_context *ctx, ns_matrix x, int64_t k, const ns_kmeans_options *opt,
                        int64_t *labels, float *centroids, double *inertia, int64_t *iterations);
/* src/cpu/cpu_infonce_forward.c, src/cpu/cpu_infonce_backward.c */
ns_status ns_cpu_infonce_forward(ns_context *ctx, const ns_infonce_inputs *in,
                                 const ns_loss_options *opt, float *loss, float *per_query,
                                 float *saved);
ns_status ns_cpu_infonce_backward(ns_context *ctx, const ns_infonce_inputs *in,
                                  const ns_loss_options *opt, const float *saved,
                                  float grad_loss, const ns_infonce_grads *grads);
ns_status ns_cpu_infonce_forward_backward(ns_context *ctx, const ns_infonce_inputs *in,
                                          const ns_loss_options *opt, float grad_loss,
                                          float *loss, float *per_query, float *saved,
                                          const ns_infonce_grads *grads);
/* src/cpu/cpu_step.c: the step's stages between the public ops (same contracts as the CUDA
 * ones: scores in the sequential order of the CUDA kernel, so both backends take the same
 * filter and sampler decisions). check_batch: NaN/Inf in the batch's rows. */
ns_status ns_cpu_step_check_batch(ns_context *ctx, const ns_batch *batch);
ns_status ns_cpu_step_scores(ns_context *ctx, ns_matrix q, ns_matrix pos, ns_matrix cand,
                             int64_t per_query, float *score, float *positive_score);
/* gather: the slot of each chosen id is the first slot of its query with that id that the
 * filter kept (slot_keep, B·C; NULL = every slot kept): the copy the sampler drew. hard: B·h rows
 * of d in cand's dtype (zeros for padding). */
ns_status ns_cpu_step_gather(ns_context *ctx, ns_matrix cand, int64_t per_query,
                             const int64_t *cand_id, const uint8_t *slot_keep,
                             const int64_t *chosen_id, int64_t h, void *hard, uint8_t *keep,
                             int64_t *row);
/* The step's ids: pos_offsets[i] = i (i ≤ B); pos_ids[i] = query_offset + i (when not NULL);
 * cand_ids[r] = query_offset·C + r (when not NULL). */
ns_status ns_cpu_step_ids(ns_context *ctx, int64_t B, int64_t C, int64_t query_offset,
                          int64_t *pos_offsets, int64_t *pos_ids, int64_t *cand_ids);
ns_status ns_cpu_step_scatter(ns_context *ctx, int64_t rows, int64_t dim, const float *grad_hard,
                              const int64_t *row, int64_t nrow, float *grad_cand);
/* dst[e] = src[e] · scale for e < n (dst may be src): the fused step's gradients, made at
 * grad_loss = 1 in the forward, scaled in the backward. */
ns_status ns_cpu_step_scale(ns_context *ctx, int64_t n, const float *src, float scale, float *dst);
/* The step's random + hard mixing (src/cpu/cpu_step_mix.c; rules in src/hostdevice/ns_step_mix.h):
 * mix_mask: out[t] (B·C) = the filter kept slot t (keep NULL: all), its column is in [lo, hi),
 * its id (cand_id) is >= 0 and none of query i's ndrop ids drop[i·ndrop ..];
 * mix_merge: id (B × (h + hr)) = each query's h hard ids then its hr random ids, count (B) = its
 * ids >= 0 (hard may be NULL when h = 0). */
ns_status ns_cpu_step_mix_mask(ns_context *ctx, int64_t B, int64_t C, const uint8_t *keep,
                              const int64_t *cand_id, int64_t lo, int64_t hi,
                              const int64_t *drop, int64_t ndrop, uint8_t *out);
ns_status ns_cpu_step_mix_merge(ns_context *ctx, int64_t B, const int64_t *hard, int64_t h,
                               const int64_t *rnd, int64_t hr, int64_t *id, int64_t *count);

/* dst[r] = row[r] >= 0 ? src[row[r]] : -1 (r < n): the sampled hard negatives' group ids. */
ns_status ns_cpu_step_gather_ids(ns_context *ctx, int64_t n, const int64_t *row,
                                 const int64_t *src, int64_t *dst);

#ifdef __cplusplus
}
#endif
#endif
