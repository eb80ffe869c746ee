/*
 * negsamp — negative sampling for contrastive training.
 *
 * The public C ABI, and nothing else public. Conventions:
 *  - Every call returns an ns_status; NS_OK is 0. On failure ns_last_error(ctx) names the
 *    function, the argument, the value received and the value expected, and no output has been
 *    written (outputs are staged and written only once the call is known to succeed).
 *  - The library never aborts, exits or prints.
 *  - Matrices are row-major (ns_matrix); outputs are dense row-major f32/int64 arrays.
 *  - On a CUDA context every data pointer is a device pointer and work is ordered on the
 *    context's stream: calls return once the work is enqueued, outputs are ready when the stream
 *    completes. Scalar outputs that live in host memory (counts, losses returned by value) are
 *    noted per call and synchronise the stream.
 *  - A context is used by one thread at a time (like a zstd context or a cuBLAS handle).
 *  - Option structs start with struct_size and have an initializer macro; pass NULL for the
 *    defaults. ABI evolution as NCCL's config structs: fields are only ever appended, so a
 *    program built against an older negsamp.h passes a smaller struct_size (at least
 *    sizeof(size_t)), and the fields it does not know take their defaults; a struct_size larger
 *    than this library's struct (a program built against a newer header) is refused with
 *    NS_ERR_UNSUPPORTED naming it. Options structs never hold another options struct by value
 *    (ns_step_options points to its filter, sampler and loss options), so each grows on its own.
 *  - Frozen structs: ns_matrix, ns_id_lists, ns_candidates, ns_filter_counts,
 *    ns_infonce_inputs, ns_infonce_grads, ns_batch, ns_step_result and ns_step_grads carry no
 *    struct_size: they describe data, are passed by pointer or value on every call and their
 *    layout is part of the ABI for this major version (a new field means a new struct or a new
 *    major version).
 */
#ifndef NEGSAMP_H
#define NEGSAMP_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32)
#define NS_API __declspec(dllexport)
#elif defined(__GNUC__)
#define NS_API __attribute__((visibility("default")))
#else
#define NS_API
#endif

#define NS_VERSION_MAJOR 0
#define NS_VERSION_MINOR 1
#define NS_VERSION_PATCH 0
#define NS_VERSION_CODE (NS_VERSION_MAJOR * 10000 + NS_VERSION_MINOR * 100 + NS_VERSION_PATCH)

/* The run-time version, NS_VERSION_CODE of the library actually loaded. */
NS_API int ns_version(void);

/* Status codes. The values are frozen: new codes are only ever appended. */
typedef enum {
    NS_OK = 0,
    NS_ERR_INVALID_ARGUMENT = 1, /* a null pointer, a bad shape, an option out of its bounds */
    NS_ERR_UNSUPPORTED = 2,      /* a dtype, backend or option this build does not provide */
    NS_ERR_OUT_OF_MEMORY = 3,
    NS_ERR_NO_DEVICE = 4,        /* a CUDA context was asked for and no usable GPU exists */
    NS_ERR_CUDA = 5,             /* a CUDA runtime / cuBLAS call failed */
    NS_ERR_COMM = 6,             /* a communicator failed, timed out or ranks disagree */
    NS_ERR_NONFINITE = 7,        /* an input holds NaN or Inf */
    NS_ERR_IO = 8,               /* a file is missing, truncated or malformed */
    NS_ERR_INTERNAL = 9
} ns_status;

/* A static string naming the status ("NS_ERR_INVALID_ARGUMENT: invalid argument"). */
NS_API const char *ns_status_string(ns_status status);

/* ------------------------------------------------------------------ contexts */

typedef struct ns_context ns_context;

typedef enum {
    NS_BACKEND_AUTO = 0, /* CUDA when a device is usable, otherwise CPU */
    NS_BACKEND_CPU = 1,
    NS_BACKEND_CUDA = 2
} ns_backend;

typedef struct {
    size_t struct_size;  /* sizeof(ns_context_options) */
    ns_backend backend;
    int device;          /* CUDA device ordinal: every call on the context makes it current and
                          * gives the caller's current device back on return */
    void *stream;        /* cudaStream_t the work is ordered on; NULL = the legacy default stream */
    int threads;         /* CPU threads; 0 = all the cores OpenMP sees */
} ns_context_options;

#define NS_CONTEXT_OPTIONS_INIT {sizeof(ns_context_options), NS_BACKEND_AUTO, 0, NULL, 0}

/* Creates a context. On failure *ctx is NULL and ns_last_error(NULL) holds the message. */
NS_API ns_status ns_context_create(ns_context **ctx, const ns_context_options *options);
/* Destroys a context; NULL is accepted. */
NS_API ns_status ns_context_destroy(ns_context *ctx);
/* The backend the context resolved to (CPU or CUDA, never AUTO). */
NS_API ns_backend ns_context_backend(const ns_context *ctx);
/* Sets the CUDA stream (or ignores it on CPU). */
NS_API ns_status ns_context_set_stream(ns_context *ctx, void *stream);
/* The message of the last failed call on ctx ("" when none). ctx == NULL gives the calling
 * thread's last failure of a call that had no context (ns_context_create, ns_npy_open). */
NS_API const char *ns_last_error(const ns_context *ctx);
/* 1 when this build has the CUDA backend, and the number of devices it sees (0 without GPU). */
NS_API int ns_cuda_built(void);
NS_API int ns_cuda_device_count(void);

/* ------------------------------------------------------------------ matrices */

typedef enum { NS_F32 = 0, NS_F16 = 1, NS_BF16 = 2 } ns_dtype;

/* A row-major matrix: element (r, c) is at data + (r * ld + c) * sizeof(dtype).
 * ld = 0 means ld = cols. f16/bf16 inputs are converted to f32 block by block, never whole. */
typedef struct {
    const void *data;
    ns_dtype dtype;
    int64_t rows, cols, ld;
} ns_matrix;

/* Lists of ids per query in CSR form: the ids of query i are ids[offsets[i] .. offsets[i+1]).
 * offsets has queries+1 entries, offsets[0] == 0. Used for exclusions and positives. */
typedef struct {
    const int64_t *offsets;
    const int64_t *ids;
    int64_t queries;
} ns_id_lists;

/* ------------------------------------------------------------------ similarity */

#define NS_NORMALIZE 1u /* L2-normalise the rows of q and p before the product (cosine) */

/* s (q.rows × p.rows, row-major, ld = p.rows) = scale · q · pᵀ, f32 accumulation.
 * Bounds: q.cols == p.cols ≥ 1, scale finite. flags: 0 or NS_NORMALIZE. */
NS_API ns_status ns_similarity(ns_context *ctx, ns_matrix q, ns_matrix p, float scale,
                               unsigned flags, float *s);

/* ------------------------------------------------------------------ mining */

/* Progress report for long calls: done out of total units. Return non-zero to cancel (the call
 * then returns NS_ERR_INVALID_ARGUMENT with "cancelled" and leaves outputs untouched). */
typedef int (*ns_progress_fn)(int64_t done, int64_t total, void *user);

/* Other ranks (NCCL / MPI): see the communicator functions below. NULL = one rank. */
typedef struct ns_comm ns_comm;

typedef struct {
    size_t struct_size;
    float scale;                 /* score = scale · q·c; default 1 */
    unsigned flags;              /* NS_NORMALIZE, NS_MINE_RESULT_ON_RANK0 (below) */
    const ns_id_lists *exclude;  /* corpus rows never returned for query i (positives, self) */
    ns_progress_fn progress;     /* optional */
    void *progress_user;
    ns_comm *comm;               /* other ranks: corpus sharded over them (below); default NULL */
    size_t workspace_bytes;      /* CUDA: device workspace budget of one call; 0 = the default,
                                  * NS_MINE_WORKSPACE_DEFAULT (below); ignored on CPU */
} ns_mine_options;

#define NS_MINE_OPTIONS_INIT {sizeof(ns_mine_options), 1.0f, 0u, NULL, NULL, NULL, NULL, 0}

/* The CUDA miner keeps, per query, a candidate buffer of (k + max(k, 2048)) entries of 8 bytes
 * while it streams the corpus. When the buffers of all q.rows queries and the fixed tiles do not
 * fit workspace_bytes, the queries go in super-blocks of as many rows as fit, the corpus streamed
 * once per super-block (from the device: a small cost next to the GEMMs; from host memory: once
 * more over PCIe per super-block); the result is the same for every budget. A budget below one
 * query's needs fails with NS_ERR_OUT_OF_MEMORY naming both sizes. The exclusion lists, when
 * in host memory, are copied whole besides the budget. With several super-blocks, a cancel
 * (progress counts corpus rows over all super-blocks) or a score that overflows f32 in a later
 * super-block ends the call after the earlier super-blocks' rows were written. */
#define NS_MINE_WORKSPACE_DEFAULT ((size_t)4 << 30)

/* Exact top-k: for each query the k corpus rows of highest score, best first, ties to the lower
 * row index. index/score are q.rows × k. When exclusions leave fewer than k rows, the tail is
 * index -1, score -INFINITY. Bounds: 1 ≤ k ≤ corpus.rows, k ≤ NS_MAX_K.
 *
 * Across ranks (options->comm; a field of the options rather than a second entry point, so a
 * caller turns a one-process miner into a multi-rank one by setting one pointer, and an older
 * caller's smaller struct_size means comm = NULL): the global corpus is the concatenation of
 * every rank's `corpus` in rank order, so rank r's rows are global rows [o_r, o_r + rows) with
 * o_r = the sum of the lower ranks' corpus.rows (an exclusive scan over the communicator; a rank
 * may hold 0 rows). Every rank passes the same queries (q.rows, cols, dtypes, k, scale, flags
 * and whether exclude is set are checked: a difference fails every rank with NS_ERR_COMM naming
 * the value and the ranks), 1 ≤ k ≤ the global row count (k may exceed a shard: a shard with
 * fewer rows contributes what it has), exclusion ids are global rows and, on a CUDA context too,
 * exclusion lists are in host memory. Each rank mines its shard and the per-rank lists are
 * merged by ns_before (ties to the lower global row) by query blocks: a block of at least R
 * queries is cut into R slices, rank j merges slice j (an all-to-all) and the merged slices are
 * all-gathered; a smaller block is all-gathered and merged on every rank. The result, on every
 * rank, is exactly the one-rank result over the concatenated corpus, index holding global rows.
 * With flags | NS_MINE_RESULT_ON_RANK0 only rank 0's index/score are written (the other ranks'
 * are not, and may be NULL): the merged slices are gathered to rank 0 instead of to every rank,
 * which halves the bytes a rank other than 0 receives (a caller that writes the result from
 * rank 0, like `negsamp mine`). A rank whose own part fails fails with its message; the others
 * with NS_ERR_COMM naming it. progress counts query blocks mined here; a cancel on any rank
 * cancels all. CPU contexts with an MPI communicator, CUDA contexts with NCCL (merged on the
 * host). Without a communicator NS_MINE_RESULT_ON_RANK0 changes nothing (the caller is rank 0). */
#define NS_MINE_RESULT_ON_RANK0 2u /* options->flags, across ranks: the result on rank 0 only */
#define NS_MAX_K 16384
NS_API ns_status ns_mine_topk(ns_context *ctx, ns_matrix q, ns_matrix corpus, int64_t k,
                              const ns_mine_options *options, int64_t *index, float *score);

/* A .npy file (v1/v2/v3 header, C order, <f4 / <f2) mapped read-only into memory, so a corpus
 * larger than RAM can be mined. The matrix stays valid until ns_npy_close. 1-D arrays are
 * mapped as one column. Every file is checked before it is mapped for use: a regular file
 * (a FIFO or a device is refused, never waited on), a well-formed header, a shape whose size
 * does not overflow and that matches the data exactly; failures are NS_ERR_IO (malformed,
 * truncated, inconsistent) or NS_ERR_UNSUPPORTED (a dtype, order or rank negsamp does not
 * read), with ns_last_error(NULL) naming the file and the problem. */
typedef struct ns_npy_file ns_npy_file;
NS_API ns_status ns_npy_open(const char *path, ns_npy_file **file);
NS_API ns_matrix ns_npy_matrix(const ns_npy_file *file);
NS_API ns_status ns_npy_close(ns_npy_file *file);

/* Element types of .npy arrays (little endian). Values are frozen. */
typedef enum { NS_NPY_F32 = 0, NS_NPY_F16 = 1, NS_NPY_I32 = 2, NS_NPY_I64 = 3 } ns_npy_dtype;

/* A .npy array as stored: rows × cols elements of dtype, C order, valid until ns_npy_close.
 * Frozen: no field is ever added (a later need gets a new struct and call). */
typedef struct {
    const void *data;
    ns_npy_dtype dtype;
    int ndim;            /* 1 or 2 */
    int64_t rows, cols;  /* a 1-D array of n elements is n × 1 */
} ns_npy_array;

/* Like ns_npy_open, with the same checks, but integer arrays (<i4, <i8, e.g. candidate index
 * matrices) are accepted too. ns_npy_matrix of an integer file is an empty matrix (data NULL). */
NS_API ns_status ns_npy_open_array(const char *path, ns_npy_file **file);
/* The array of an open file. NS_ERR_INVALID_ARGUMENT when file or array is NULL. */
NS_API ns_status ns_npy_get_array(const ns_npy_file *file, ns_npy_array *array);

/* ------------------------------------------------------------------ candidates, filter */

/* Candidate negatives of B queries, C per query, in rank order (best first, as ns_mine_topk
 * returns them). id -1 marks an empty slot (never kept). */
typedef struct {
    int64_t queries;               /* B */
    int64_t per_query;             /* C */
    const int64_t *id;             /* B×C candidate ids (corpus rows or document ids) */
    const float *score;            /* B×C scores s_ij */
    const float *positive_score;   /* B: s⁺, the lowest score among query i's positives */
    const ns_id_lists *positive_id;/* ids of each query's positives (same-id rule), optional */
    const float *guide_score;      /* B×C guide-model scores g_ij, optional */
    const float *guide_positive_score; /* B: g⁺, optional */
    int64_t query_offset;          /* global id of query 0: the RNG counter for sampling */
} ns_candidates;

enum {
    NS_FILTER_SAME_ID = 1u << 0,   /* id equals one of the query's positive ids */
    NS_FILTER_MAX_SCORE = 1u << 1, /* s > max_score */
    NS_FILTER_MIN_SCORE = 1u << 2, /* s < min_score */
    NS_FILTER_MARGIN = 1u << 3,    /* s > s⁺ − margin            (NV-Retriever TopK-MarginPos) */
    NS_FILTER_REL_MARGIN = 1u << 4,/* s > s⁺ − |s⁺| · rel_margin (TopK-PercPos, perc = 1 − rel) */
    NS_FILTER_RANK = 1u << 5,      /* rank outside [rank_min, rank_max) */
    NS_FILTER_GUIDE = 1u << 6,     /* g > g⁺ − guide_margin      (GISTEmbed) */
    NS_FILTER_GUIDE_REL = 1u << 7  /* g > g⁺ − |g⁺| · guide_margin */
};

typedef struct {
    size_t struct_size;
    unsigned rules;                /* NS_FILTER_* bits */
    float max_score, min_score, margin, rel_margin;
    int64_t rank_min, rank_max;
    float guide_margin;
} ns_filter_options;

#define NS_FILTER_OPTIONS_INIT \
    {sizeof(ns_filter_options), NS_FILTER_SAME_ID, 0.f, 0.f, 0.f, 0.f, 0, 0, 0.f}

/* How many candidates each rule removed. A candidate several rules remove is counted by each;
 * removed counts it once. empty counts id -1 slots. */
typedef struct {
    int64_t examined, kept, removed, empty;
    int64_t same_id, max_score, min_score, margin, rel_margin, rank, guide;
} ns_filter_counts;

/* keep (B×C) = 1 where the candidate survives every enabled rule, else 0. counts may be NULL.
 * CUDA: counts are host memory and synchronise the stream. */
NS_API ns_status ns_filter(ns_context *ctx, const ns_candidates *cand,
                           const ns_filter_options *options, uint8_t *keep,
                           ns_filter_counts *counts);

/* ------------------------------------------------------------------ sampling */

typedef enum {
    NS_SAMPLE_TOP = 0,     /* the m highest scores */
    NS_SAMPLE_UNIFORM = 1,
    NS_SAMPLE_SIMANS = 2,  /* w = exp(−a · (s − s⁺ − b)²) */
    NS_SAMPLE_SOFTMAX = 3  /* w = exp(s / temperature) */
} ns_sampler;

typedef struct {
    size_t struct_size;
    ns_sampler strategy;
    float simans_a, simans_b;  /* a > 0; defaults 0.5, 0 (SimXNS) */
    float temperature;         /* softmax τ_s > 0 */
    uint64_t seed;
    uint64_t step;             /* the training step: part of the RNG counter */
} ns_sampler_options;

#define NS_SAMPLER_OPTIONS_INIT \
    {sizeof(ns_sampler_options), NS_SAMPLE_SIMANS, 0.5f, 0.0f, 1.0f, 0u, 0u}

/* Draws m distinct kept candidates per query without replacement, exactly by weight
 * (Gumbel-top-m in log space; Philox4x32-10 keyed by seed, countered by step, global query id
 * and candidate id, so the draw does not depend on threads, batch split or backend).
 * index (B×m): the chosen candidate ids in key order, -1 padded; score (B×m, optional): their
 * scores, NaN padded; count (B): how many were found (≤ m). keep may be NULL (all non-empty).
 * An id that appears twice in a row is drawn at most once (its first kept copy is eligible). */
NS_API ns_status ns_sample(ns_context *ctx, const ns_candidates *cand, const uint8_t *keep,
                           const ns_sampler_options *options, int64_t m, int64_t *index,
                           float *score, int64_t *count);

/* ns_filter, then ns_sample on its keep, in one call: the same keep, counts, index, score and
 * count as the two calls (keep is written: B×C, as ns_filter's). The CPU backend fuses them
 * row by row and reads the candidates once for the data checks and once for the work (the two
 * calls read them four times). Errors name "ns_filter_sample". */
NS_API ns_status ns_filter_sample(ns_context *ctx, const ns_candidates *cand,
                                  const ns_filter_options *filter,
                                  const ns_sampler_options *sampler, int64_t m, uint8_t *keep,
                                  ns_filter_counts *counts, int64_t *index, float *score,
                                  int64_t *count);

/* ------------------------------------------------------------------ corpus-wide negatives */

/* Per-row weights of a corpus of `rows` rows (frozen data struct). weight == NULL: uniform.
 * Otherwise weight[r] >= 0 and finite (frequencies, counts, degrees, ...); rows of weight 0 are
 * never drawn. The weight used is weight[r]^alpha (options->alpha; 1 = as given, 0 = uniform over
 * the rows of positive weight). */
typedef struct {
    const float *weight;
    int64_t rows;
} ns_corpus_weights;

typedef struct {
    size_t struct_size;
    float alpha;           /* exponent, finite, |alpha| <= 64; default 1 (frequency^0.75: 0.75) */
    uint64_t seed;
    uint64_t step;         /* the training step: part of the RNG counter */
    int64_t query_offset;  /* global id of query 0: the RNG counter */
} ns_corpus_sampler_options;

#define NS_CORPUS_SAMPLER_OPTIONS_INIT {sizeof(ns_corpus_sampler_options), 1.0f, 0u, 0u, 0}

/* Draws m distinct corpus rows per query (queries of them) without replacement, exactly by
 * weight^alpha (successive sampling: each draw picks an eligible row with probability
 * proportional to its weight among the rows not yet drawn), never a row of exclude's list of
 * that query (positives; exclude may be NULL). Philox4x32-10 keyed by seed, countered by step,
 * the global query id (query_offset + i) and the draw attempt, so the draw does not depend on
 * threads, batch split, rank or backend (scheme: src/weighted.c). index (queries×m): the rows in
 * draw order, -1 padded; count (queries): how many were drawn (< m when fewer rows are eligible).
 * w->weight, the lists and the outputs are device pointers on a CUDA context; there the data
 * checks (weights, lists) synchronise the stream once (not while capturing), and index and
 * count are ready when the stream completes. The shared table takes N doubles of workspace. */
NS_API ns_status ns_sample_corpus(ns_context *ctx, const ns_corpus_weights *w,
                                  const ns_id_lists *exclude,
                                  const ns_corpus_sampler_options *options, int64_t queries,
                                  int64_t m, int64_t *index, int64_t *count);

/* ------------------------------------------------------------------ k-means */

typedef enum {
    NS_KMEANS_PLUSPLUS = 0, /* k-means++ (Arthur & Vassilvitskii 2007): D² sampling, exact;
                             * costs O(n·k·d) outside the GEMM (large n·k: RANDOM) */
    NS_KMEANS_RANDOM = 1    /* k distinct rows drawn uniformly */
} ns_kmeans_init;

typedef struct {
    size_t struct_size;
    int spherical;           /* 1: cosine — rows and centroids compared by direction: each
                              * centroid is the renormalised mean of its unit rows, rows go to
                              * the centroid of largest dot product, a row costs 1 − cos;
                              * 0 (default): Euclidean, a row costs ‖x − c‖² */
    ns_kmeans_init init;     /* default NS_KMEANS_PLUSPLUS */
    uint64_t seed;           /* Philox4x32-10 key of the init and nothing else */
    int64_t max_iterations;  /* Lloyd updates, >= 0; default 25 (0: the init's assignment) */
    double tolerance;        /* stop once (I_{t-1} − I_t) <= tolerance · I_{t-1} (I: inertia);
                              * >= 0, default 1e-4; a step that changes no label stops too */
    double balance;          /* < 0 (default −1): unconstrained. >= 0: balanced — no cluster holds
                              * more than ceil(n/k · (1 + balance)) rows (capacity-constrained
                              * assignment, scheme in src/kmeans_lloyd.c) */
    const float *init_centroids; /* optional k × d f32 (backend memory): the start instead of
                                  * init (spherical: normalised first) */
    ns_progress_fn progress; /* optional; units: the init's centroids + assignment passes */
    void *progress_user;
} ns_kmeans_options;

#define NS_KMEANS_OPTIONS_INIT \
    {sizeof(ns_kmeans_options), 0, NS_KMEANS_PLUSPLUS, 0u, 25, 1e-4, -1.0, NULL, NULL, NULL}

/* Lloyd's k-means of the n = x.rows rows of x (f32/f16/bf16; may be a memory-mapped .npy
 * larger than RAM: x is read block by block, never copied whole). Deterministic: for a seed the
 * labels, centroids and inertia are the same bits at any thread count and on either backend —
 * assignments are exact (the GEMM's scores, within a proven rounding bound, only shortlist the
 * centroids a row is re-scored against in double; ties go to the lower centroid), per-cluster
 * sums are in double in row order, empty clusters are re-seeded from the rows of largest cost.
 * Outputs: labels (n, int64 in [0, k)): each row's cluster under the returned centroids
 * (k × d f32); inertia (host, max_iterations + 1 doubles): the total cost after the init (0)
 * and after each update, NaN past the last one run; *iterations (host): the updates run.
 * Bounds: 1 <= k <= n, finite x, spherical rows non-zero. On CUDA x may be device memory or
 * host memory (streamed to the device block by block); labels, centroids and init_centroids
 * are device memory; the call synchronises. Cancelled through progress: outputs untouched. */
NS_API ns_status ns_kmeans(ns_context *ctx, ns_matrix x, int64_t k,
                           const ns_kmeans_options *options, int64_t *labels, float *centroids,
                           double *inertia, int64_t *iterations);

/* ------------------------------------------------------------------ batch planning */

/* Options of ns_plan_batches. */
typedef struct {
    size_t struct_size;
    int drop_last;                 /* 1: batches shorter than batch_size are dropped (default 0) */
    /* NGAME mode: the nearest groups of each group (e.g. from centroid similarities), group g's
     * list being neighbors->ids[offsets[g] .. offsets[g+1]), nearest first; group ids are then
     * the rows of this table, in [0, neighbors->queries). NULL = TAS-B mode (one group per
     * batch, any int64 group ids). */
    const ns_id_lists *neighbors;
    int64_t groups_per_batch;      /* NGAME: a batch draws from its seed group and at most
                                    * groups_per_batch − 1 of its neighbours, an equal share from
                                    * each; in [1, 64], default 2 (ignored without neighbors) */
    /* Each query's positive ids (queries = n), optional: no positive id is shared by more than
     * max_duplicate_positives queries of one batch (in-batch false negatives). */
    const ns_id_lists *positives;
    int64_t max_duplicate_positives; /* >= 1, default 1 (no two queries share a positive) */
    uint64_t seed;
    uint64_t epoch;                /* part of the RNG counter: a new plan per epoch */
} ns_plan_options;

#define NS_PLAN_OPTIONS_INIT {sizeof(ns_plan_options), 0, NULL, 2, NULL, 1, 0u, 0u}

/* An epoch's batches of at most batch_size queries from per-query group ids (cluster labels,
 * topics, labels): every query of [0, n) exactly once; each batch filled from one group (TAS-B:
 * the group's queries in a seeded order, spilling to the next group of a seeded group order
 * when the group runs out) or, with options->neighbors, from a group and its nearest groups
 * (NGAME); never more than max_duplicate_positives queries with the same positive id in a batch
 * (a batch that cannot be filled under the cap is closed short). Batches shorter than
 * batch_size come last; full batches are in a seeded order. Seeded with Philox4x32-10 (seed,
 * epoch): the same plan on every run, backend and thread count.
 * Outputs: order (n) the queries batch after batch — batch b is order[offsets[b] ..
 * offsets[b+1]) — then, with drop_last, the dropped queries; offsets (capacity n + 1); *batches
 * the number of batches. Index bookkeeping that runs on the host for either backend: every
 * pointer is host memory, also on a CUDA context. O(n log n) time plus the rescans of queries
 * held back by the cap; O(n) host memory. */
NS_API ns_status ns_plan_batches(ns_context *ctx, const int64_t *group, int64_t n,
                                 int64_t batch_size, const ns_plan_options *options,
                                 int64_t *order, int64_t *offsets, int64_t *batches);

/* ------------------------------------------------------------------ InfoNCE */

/* The candidate set of query i: every in-batch passage (its positive among them), its own hard
 * negatives (or, with share_hard, every hard negative of the batch), and the extra rows (e.g. a
 * queue, no gradient). Logits l = q·c / τ (normalise the embeddings first for cosine). */
typedef struct {
    ns_matrix query;             /* B×d */
    ns_matrix passage;           /* N×d in-batch passages */
    const int64_t *positive;     /* B: the passage row of query i's positive; NULL = row i */
    ns_matrix hard;              /* (B·h)×d, rows i·h .. i·h+h−1 belong to query i; rows 0 = none */
    int64_t hard_per_query;      /* h */
    const uint8_t *hard_keep;    /* B·h, 0 masks a hard negative (filter result, padding) */
    ns_matrix extra;             /* E×d shared extra negatives without gradient; rows 0 = none */
    const int64_t *passage_id;   /* N ids: same-id masking; NULL = ids are the row numbers */
    const int64_t *hard_id;      /* B·h ids; -1 = padding (masked); NULL = none equal */
    const int64_t *extra_id;     /* E ids; NULL = none equal */
} ns_infonce_inputs;

/* Same-group false negatives (ClusterNS; cluster-aware batches, where in-batch candidates from
 * the query's own cluster are often positives in disguise): the logit of query i and a
 * candidate c with query[i] == group of c (both >= 0; a negative id = no group) is masked
 * (weight 0) or down-weighted (weight w in (0, 1]: it enters every formula as logit + log w,
 * i.e. e^l becomes w·e^l), in the forward and the backward, in both terms of the symmetric loss
 * (one rule per logit: the passage→query term of passage p sees query k's logit as the
 * query→passage term of k does). A row's positive is never masked or weighted. The arrays are
 * per query (B) and per candidate block (passage N, hard B·h, extra E; NULL = no candidate of
 * that block is in a group), host pointers on a CPU context, device pointers on a CUDA one, and
 * must stay alive as the inputs do (the step: until its backward).
 * Versioned (struct_size) because ns_infonce_inputs is frozen: it reaches the loss through
 * ns_loss_options.groups, a field appended to that struct, so older callers (smaller
 * struct_size) get groups = NULL, the loss without the rule. */
typedef struct {
    size_t struct_size;
    const int64_t *query;   /* B group ids (required) */
    const int64_t *passage; /* N, or NULL */
    const int64_t *hard;    /* B·h (rows as in ns_infonce_inputs.hard), or NULL */
    const int64_t *extra;   /* E, or NULL */
    float weight;           /* 0 = mask (default); in (0, 1]: down-weight by this factor */
} ns_loss_groups;

#define NS_LOSS_GROUPS_INIT {sizeof(ns_loss_groups), NULL, NULL, NULL, NULL, 0.0f}

typedef struct {
    size_t struct_size;
    float temperature;    /* τ > 0 */
    int symmetric;        /* add the passage→query term over positives, loss = (L_q + L_p)/2 */
    int mask_same_id;     /* mask candidates whose id equals the positive's (default 1) */
    float tau_plus;       /* debiased (Chuang et al. 2020) class prior τ⁺ in [0, 1); 0 = off */
    float beta;           /* hard-negative reweighting (Robinson et al. 2021) β ≥ 0; 0 = off */
    int share_hard;       /* 1: every query also contrasts against every other query's hard
                             negatives (Tevatron-style shared pool); 0: only its own h */
    const ns_loss_groups *groups; /* same-group false negatives (above); NULL = off */
} ns_loss_options;

#define NS_LOSS_OPTIONS_INIT {sizeof(ns_loss_options), 0.05f, 0, 1, 0.0f, 0.0f, 0, NULL}

/* Floats per query that the forward saves for the backward (row statistics of the online
 * softmax; the first is the row's log-sum-exp in the plain case). */
#define NS_INFONCE_SAVED_PER_QUERY 8

/* loss: the mean over queries (host float; CUDA: synchronises); per_query (B, optional);
 * saved (B · NS_INFONCE_SAVED_PER_QUERY) for the backward. The logits are computed in tiles of
 * bounded size (at most 16 MiB on CPU), so memory stays O(B + N) whatever B and N. */
NS_API ns_status ns_infonce_forward(ns_context *ctx, const ns_infonce_inputs *in,
                                    const ns_loss_options *options, float *loss,
                                    float *per_query, float *saved);

typedef struct {
    float *query;       /* B×d, optional */
    float *passage;     /* N×d, optional */
    float *hard;        /* (B·h)×d, optional */
    float *temperature; /* one float (host), optional: dL/dτ */
} ns_infonce_grads;

/* Gradients of grad_loss · loss, overwriting the given buffers (f32, dense, ld = d). */
NS_API ns_status ns_infonce_backward(ns_context *ctx, const ns_infonce_inputs *in,
                                     const ns_loss_options *options, const float *saved,
                                     float grad_loss, const ns_infonce_grads *grads);

/* ns_infonce_forward then ns_infonce_backward with the same arguments, in one call, for callers
 * that know grad_loss before the forward (gradients are linear in it: pass 1 and scale later,
 * as negsamp's PyTorch op infonce_fused and ns_step do). Same outputs, bit for bit, as the two
 * calls; each logit tile is computed once instead of twice (three GEMMs per tile, not four),
 * its row tile's tiles held in a strip (memory stays O(B + N)): at most 256 MiB on the CPU,
 * 512 MiB on CUDA. The symmetric loss first gathers its column statistics in a pass over the
 * passage tiles (four GEMMs per passage tile, three per hard or extra tile), except on CUDA when
 * one strip holds every row. A strip above the cap runs as the two calls; so does CUDA below 256
 * rows or when no gradient is asked for, and CUDA's strips thinner than the two calls' row
 * tiles (a large N) agree with them within f32 rounding, not bit for bit. */
NS_API ns_status ns_infonce_forward_backward(ns_context *ctx, const ns_infonce_inputs *in,
                                             const ns_loss_options *options, float grad_loss,
                                             float *loss, float *per_query, float *saved,
                                             const ns_infonce_grads *grads);

/* ------------------------------------------------------------------ queue */

/* A fixed-capacity FIFO of past passage embeddings and ids: cross-batch memory. The rows are
 * stored in the dtype of the first push (f32, f16 or bf16; before any push the view says f32);
 * a later push in another dtype is converted to it (round to nearest even, the same on both
 * backends). */
typedef struct ns_queue ns_queue;
NS_API ns_status ns_queue_create(ns_context *ctx, int64_t capacity, int64_t dim, ns_queue **queue);
NS_API ns_status ns_queue_destroy(ns_queue *queue);
/* Appends rows (dropping the oldest beyond capacity); ids may be NULL (then -1). On CUDA rows
 * and ids are device memory: the push is one kernel, after a device NaN/Inf scan of the rows
 * that synchronises once (the scan is skipped inside a step, whose loss already checked them).
 * The queue must be used with contexts of its backend and (CUDA) device. Not while ctx's
 * stream is being captured into a CUDA graph (NS_ERR_UNSUPPORTED): the ring's head and size
 * are host values a replay would not move. */
NS_API ns_status ns_queue_push(ns_context *ctx, ns_queue *queue, ns_matrix rows,
                               const int64_t *ids);
/* The rows held now (at most capacity), in storage order (a ring: the order carries no
 * meaning for a loss), valid until the next push. On CUDA rows.data and *ids are device memory. */
NS_API ns_status ns_queue_view(ns_context *ctx, const ns_queue *queue, ns_matrix *rows,
                               const int64_t **ids);
NS_API int64_t ns_queue_size(const ns_queue *queue);

/* ------------------------------------------------------------------ communicators */

/* ns_comm is declared with ns_mine_options above. A communicator lets every rank's queries contrast against all ranks' rows (ns_step_options
 * .comm). Its collectives never hang: a rank that dies or stops answering makes the others fail
 * with NS_ERR_COMM after timeout_ms; ranks that pass different shapes or options fail with
 * NS_ERR_COMM naming the value and the ranks. After any NS_ERR_COMM the communicator is
 * unusable (every later call fails at once): destroy it and build a new one. One rank per
 * process; an ns_comm is used by one thread at a time, with contexts of its backend. */
typedef struct {
    size_t struct_size; /* sizeof(ns_comm_options) */
    int timeout_ms;     /* longest wait for the other ranks in one call, ≥ 1; default 60000 */
} ns_comm_options;

#define NS_COMM_OPTIONS_INIT {sizeof(ns_comm_options), 60000}

/* MPI, for CPU contexts. mpi_comm points to the caller's MPI_Comm (e.g. &MPI_COMM_WORLD's
 * handle); negsamp duplicates it (collectively, with the timeout), sets MPI_ERRORS_RETURN on the
 * duplicate and uses non-blocking collectives polled against the deadline. MPI must be
 * initialised. NS_ERR_UNSUPPORTED in builds without MPI. */
NS_API ns_status ns_comm_create_mpi(ns_context *ctx, const void *mpi_comm,
                                    const ns_comm_options *options, ns_comm **comm);
/* NCCL, for CUDA contexts (device ctx's device, work on ctx's stream). nccl_comm is the
 * caller's ncclComm_t, not owned. On a timeout negsamp calls ncclCommAbort on it (the only way
 * to free a stream stuck in a collective): after NS_ERR_COMM the caller must not use it again.
 * NS_ERR_UNSUPPORTED in builds without NCCL. */
NS_API ns_status ns_comm_create_nccl(ns_context *ctx, void *nccl_comm,
                                     const ns_comm_options *options, ns_comm **comm);
/* NCCL, owned: created from an ncclUniqueId (NS_NCCL_UNIQUE_ID_BYTES bytes that rank 0 made
 * with ns_nccl_unique_id and broadcast, e.g. through the training framework) as a non-blocking
 * communicator (ncclCommInitRankConfig, blocking = 0) within the timeout. Called by every rank
 * with the same id and nranks and its own rank in [0, nranks). */
#define NS_NCCL_UNIQUE_ID_BYTES 128
NS_API ns_status ns_comm_create_nccl_id(ns_context *ctx, const void *unique_id, int nranks,
                                        int rank, const ns_comm_options *options,
                                        ns_comm **comm);
/* Writes a fresh ncclUniqueId (NS_NCCL_UNIQUE_ID_BYTES bytes) to unique_id. ctx may be NULL
 * (then ns_last_error(NULL) holds a failure). */
NS_API ns_status ns_nccl_unique_id(ns_context *ctx, void *unique_id);
/* Destroys a communicator (NULL accepted); an owned NCCL communicator is finalised and
 * destroyed, a caller's one is left alone. Local: no other rank is waited for. */
NS_API ns_status ns_comm_destroy(ns_comm *comm);
/* This rank and the number of ranks; NULL is one rank (0 and 1). */
NS_API int ns_comm_rank(const ns_comm *comm);
NS_API int ns_comm_size(const ns_comm *comm);

/* The step with a communicator (ns_step_options.comm): every rank passes its own B queries
 * (the same B, d, C, h, dtypes and options on every rank, checked: a difference fails every
 * rank with NS_ERR_COMM naming it) and batch.query_offset = the global id of its first query
 * (rank · B for equal shards), so sampling draws exactly what one rank would draw over the
 * concatenated batch. Each rank filters and samples its own candidates, then its queries
 * contrast against every rank's positives (all-gathered with their ids; same-id positives
 * across ranks are masked), with loss->share_hard every rank's sampled hard negatives too, with
 * loss->symmetric every rank's queries too. result.loss is the mean over all ranks' queries (the
 * same on every rank); per_query, negatives and gradients are this rank's rows: the gradient of
 * each rank's rows is exactly that of one rank over the concatenated batch (gathered rows'
 * gradients are reduce-scattered to their owners). A queue stays per rank (its rows join each
 * rank's own candidates, without gradient). */

/* ------------------------------------------------------------------ the step */

/* One training batch: B queries, their positives, and C candidate negatives per query (for
 * example mined offline with ns_mine_topk) from which the step filters and samples h. */
typedef struct {
    ns_matrix query;              /* B×d */
    ns_matrix positive;           /* B×d, row i is the positive of query i */
    const int64_t *positive_id;   /* B; NULL = query_offset + i */
    ns_matrix candidate;          /* (B·C)×d; rows 0 = in-batch negatives only */
    int64_t candidates_per_query; /* C */
    const int64_t *candidate_id;  /* B·C; -1 = empty slot; NULL = no ids (no same-id rule) */
    const float *guide_score;     /* B·C guide-model scores, optional */
    const float *guide_positive_score; /* B, optional */
    int64_t query_offset;         /* global id of query 0 */
} ns_batch;

typedef struct {
    size_t struct_size;
    int64_t hard_negatives;             /* h sampled per query (≤ C) */
    const ns_filter_options *filter;    /* NULL = NS_FILTER_OPTIONS_INIT */
    const ns_sampler_options *sampler;  /* NULL = NS_SAMPLER_OPTIONS_INIT */
    const ns_loss_options *loss;        /* NULL = NS_LOSS_OPTIONS_INIT */
    ns_queue *queue;                    /* extra negatives, optional */
    int enqueue;                        /* 1: push the positives into the queue after the
                                         * backward (the queue is checked by the forward: given,
                                         * same backend, device and dim; not under graph capture) */
    ns_comm *comm;                      /* other ranks, optional */
    /* 1 = no host synchronisation inside ns_step_forward/ns_step_backward (CUDA; capturable in a
     * CUDA graph once a step of the same shapes ran outside the capture): result.loss is NaN
     * (the mean loss is on the device: ns_step_device_loss), result.filtered is all zero (no
     * counts), and the batch's data is trusted — no NaN/Inf or id scans (the caller vouches, as
     * under graph capture). Not with comm (NS_ERR_UNSUPPORTED). grads->temperature, a host
     * float, still synchronises when given. 0 (default) = the checked, host-output step.
     * A captured step replays what was captured: sampler->seed and ->step (the same Philox
     * counters: the same draw each replay; capture one graph per step value for fresh draws)
     * and the queue's rows as they were. enqueue = 1 while the stream is being captured is
     * NS_ERR_UNSUPPORTED (the queue's head and size are host values a replay cannot move),
     * refused before anything is written: capture with enqueue = 0 and ns_queue_push the
     * positives after each replay (outside the graph). */
    int sync_free;
    /* Random + hard mixing (h_rand random negatives beside the h hard ones, as FlagEmbedding
     * and contrastors pad with random negatives): after the sampler drew the h hard negatives,
     * random_negatives more per query are drawn uniformly without replacement (Philox, seed =
     * sampler->seed ^ NS_STEP_RANDOM_SEED_XOR: independent of the hard draw) among the kept
     * candidates of the random pool whose id is not one of the query's chosen hard ids. The
     * random pool is the last random_pool candidate slots of each query, which the hard sampler
     * then never sees: put corpus-wide negatives there (ns_sample_corpus, by weight; with
     * random_pool == random_negatives the step takes every kept one). random_pool = 0: the pool
     * is every candidate slot (random among the kept mined ones). The negatives of query i are
     * then h + h_rand columns, the hard ones first (result.negative_id/row, -1 padded) — the
     * loss sees them all alike. Bounds: h + h_rand <= C; with a pool, h <= C − pool and
     * h_rand <= pool. A random id that is also kept among the query's hard-region slots takes
     * that slot's row (same id, same document). 0 (default) = no random negatives. */
    int64_t random_negatives;
    int64_t random_pool;
    /* Same-group false negatives (ns_loss_groups, above) for the step's loss: groups->query (B)
     * of the queries, groups->passage (B, optional) of the positives, groups->hard (B·C,
     * optional) of the candidate slots — the sampled hard negatives take their slots' groups —
     * and groups->weight; groups->extra is not read (queue rows are in no group). Device
     * pointers on CUDA, alive until ns_step_backward. NULL = off; not with comm
     * (NS_ERR_UNSUPPORTED); options->loss->groups must be NULL (the step makes the loss's). */
    const ns_loss_groups *groups;
    /* 1: no ns_step_backward follows this forward (evaluation): the loss alone. 0 (default):
     * without comm the forward computes the gradients too (either backend), at grad_loss = 1
     * (ns_infonce_forward_backward: each logit tile once, three GEMMs instead of four), and
     * ns_step_backward scales them by its grad_loss (2·B·d floats more of step memory). */
    int forward_only;
} ns_step_options;

#define NS_STEP_RANDOM_SEED_XOR 0x9E3779B97F4A7C15ull

#define NS_STEP_OPTIONS_INIT {sizeof(ns_step_options), 0, NULL, NULL, NULL, NULL, 0, NULL, 0, 0, 0, NULL, 0}

typedef struct {
    float loss;                   /* mean over the (global) batch */
    const float *per_query;       /* B, owned by the context until the next step */
    const int64_t *negative_id;   /* B×h chosen candidate ids (-1 padded), owned by the context */
    const int64_t *negative_row;  /* B×h rows of batch.candidate (-1 padded), owned by the context */
    const int64_t *negative_count;/* B */
    ns_filter_counts filtered;
} ns_step_result;

typedef struct {
    float *query;                 /* B×d, optional */
    float *positive;              /* B×d, optional */
    float *candidate;             /* (B·C)×d, optional: zero for candidates not sampled */
    float *temperature;           /* host float, optional */
} ns_step_grads;

/* Filter → sample → InfoNCE forward for one batch. The batch's buffers must stay alive and
 * unchanged until ns_step_backward. result pointers live in the context. The options (and the
 * filter, sampler and loss options they point to) are copied: they need not outlive the call. */
NS_API ns_status ns_step_forward(ns_context *ctx, const ns_batch *batch,
                                 const ns_step_options *options, ns_step_result *result);
/* The backward of the last ns_step_forward on ctx. */
NS_API ns_status ns_step_backward(ns_context *ctx, float grad_loss, ns_step_grads *grads);
/* The mean loss of the last successful ns_step_forward on ctx as one float in the backend's
 * memory (device memory on CUDA: ready when the context's stream reaches it), written by every
 * forward, with or without sync_free; NULL before the first forward. Owned by the context. */
NS_API const float *ns_step_device_loss(ns_context *ctx);

#ifdef __cplusplus
}
#endif
#endif /* NEGSAMP_H */
