/* ns_mine_topk across ranks (options->comm): the corpus is sharded over the ranks, the queries
 * are the same on every rank. Data flow of one call:
 *   1. agree: one all-gather of a small header per rank (its arguments' verdict, shapes,
 *      options, shard size, largest exclusion id): every rank sees the same table, so all fail
 *      together on a bad argument or a disagreement; the shard offsets are its exclusive scan.
 *   2. per query block: mine this rank's shard (the one-rank backend, k_r = min(k, rows)), turn
 *      the rows global, pad to k, then merge the R sorted lists of each query by ns_before (ties
 *      to the lower global row) in one of two ways (merge_rule):
 *      - sharded (the block has at least R queries): the block's queries are cut into R
 *        contiguous slices; an all-to-all sends rank j every rank's lists of slice j, rank j
 *        merges its slice, and the merged slices are all-gathered. Each rank receives about
 *        2·(R−1)/R · nb·k·12 bytes and merges nb/R queries.
 *      - all-gather (fewer queries than ranks): every rank's lists to every rank, each merges the
 *        whole block: (R−1) · nb·k·12 bytes received, nb queries merged.
 *      With NS_MINE_RESULT_ON_RANK0 the merged slices go to rank 0 only (and in the all-gather
 *      merge only rank 0 merges): the other ranks receive about half the bytes.
 *   3. copy the staged result into index/score (the outputs are written only on success; with
 *      NS_MINE_RESULT_ON_RANK0 on rank 0 only).
 * The merge runs on the host for both backends: it is O(R · k) per query, small beside the
 * mining, and the host exchanges work on MPI and NCCL alike. */
#include "ns_comm.h"
#include "ns_dispatch.h"
#include "ns_mine_ranks.h"
#include "hostdevice/ns_order.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Received bytes per block (R · nb · k · 12) are kept under this, so the staging stays small
 * whatever the number of queries. */
#define RANKS_BLOCK_BYTES ((size_t)32 << 20)

enum { H_OK, H_Q, H_D, H_K, H_QT, H_CT, H_FLAGS, H_SCALE, H_EX, H_ROWS, H_MAXEX, H_COUNT };
static const char *const header_names[H_COUNT] = {
    "arguments valid", "the number of queries (q.rows)", "the dimension (q.cols)", "k",
    "q.dtype", "corpus.dtype", "options->flags", "options->scale (bits)",
    "options->exclude given (non-NULL)", "corpus.rows", "the largest exclusion id"};
/* Values every rank must pass alike (the shard size and exclusion ids may differ). */
static int must_agree(int i) { return i != H_OK && i != H_ROWS && i != H_MAXEX; }

typedef struct {
    ns_comm *c;
    int R;
    int rank0_only;                /* NS_MINE_RESULT_ON_RANK0: the result on rank 0 alone */
    int64_t Q, k, N, offset, rows; /* global rows N; this rank's [offset, offset + rows) */
    int64_t *ex_off, *ex_ids;      /* this rank's exclusions, local rows (NULL: none) */
    int64_t *index, *head;         /* the staged result (Q × k); the merge's list heads (R) */
    float *score;
    char *pk;                      /* this rank's lists of a block, as one packet */
    char *send;                    /* sharded: the packets for every rank, then the merged slice */
    char *all;                     /* the received packets (R), or the gathered merged slices */
    size_t *a2a;                   /* the all-to-all's counts and displacements (4 · R) */
} ranks_plan;

static int64_t float_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return (int64_t)u;
}

/* The exclusion lists' data, read on the host; *max_id = the largest id (-1 when none): the
 * bound on global rows is checked once the ranks agree on the corpus size. */
static ns_status check_exclusions(ns_context *ctx, const char *fn, const ns_id_lists *ex,
                                  int64_t *max_id) {
    *max_id = -1;
    if (!ex) return NS_OK;
    return ns_check_id_lists_data(ctx, fn, "options->exclude", ex, ex->queries, NS_IDS_NONNEG,
                                  NULL, max_id);
}

/* The local checks' verdict and this rank's header, all-gathered: every rank fails alike on a
 * rejected argument or a disagreement; on success the plan holds the shard offsets. */
static ns_status agree(ns_context *ctx, ranks_plan *p, ns_status local, ns_matrix q,
                       ns_matrix corpus, int64_t k, const ns_mine_options *o, int64_t max_ex,
                       const char *fn) {
    ns_comm *c = p->c;
    int64_t hdr[H_COUNT] = {0};
    hdr[H_OK] = local == NS_OK;
    if (local == NS_OK) {
        hdr[H_Q] = q.rows, hdr[H_D] = q.cols, hdr[H_K] = k, hdr[H_QT] = q.dtype;
        hdr[H_CT] = corpus.dtype, hdr[H_FLAGS] = o->flags, hdr[H_SCALE] = float_bits(o->scale);
        hdr[H_EX] = o->exclude != NULL, hdr[H_ROWS] = corpus.rows, hdr[H_MAXEX] = max_ex;
    }
    int64_t *all = (int64_t *)malloc(sizeof hdr * (size_t)c->size);
    if (!all) return ns_fail(ctx, NS_ERR_OUT_OF_MEMORY, "%s: cannot allocate the header", fn);
    char mine[NS_ERROR_CAPACITY];
    memcpy(mine, ctx->error, sizeof mine);
    ns_status st = c->ops->allgather_host(ctx, c, hdr, all, sizeof hdr, fn);
    if (!st && local != NS_OK) memcpy(ctx->error, mine, sizeof mine), st = local;
    for (int r = 0; r < c->size && !st; r++)
        if (!all[(size_t)r * H_COUNT + H_OK])
            st = ns_fail(ctx, NS_ERR_COMM,
                         "%s: rank %d rejected its arguments (its own error names them), so "
                         "every rank fails this call (this is rank %d)",
                         fn, r, c->rank);
    /* Every rank holds the same table, so every rank fails the same way. */
    for (int i = 1; i < H_COUNT && !st; i++)
        for (int r = 1; r < c->size && !st && must_agree(i); r++) {
            int64_t a = all[i], b = all[(size_t)r * H_COUNT + (size_t)i];
            if (a != b)
                st = ns_fail(ctx, NS_ERR_COMM,
                             "%s: ranks disagree: %s is %lld on rank 0 but %lld on rank %d "
                             "(every rank must pass the same queries, k and options; this is "
                             "rank %d)",
                             fn, header_names[i], (long long)a, (long long)b, r, c->rank);
        }
    if (!st) {
        p->N = 0;
        for (int r = 0; r < c->size; r++) {
            if (r == c->rank) p->offset = p->N;
            p->N += all[(size_t)r * H_COUNT + H_ROWS];
        }
        int64_t worst = -1;
        int at = 0;
        for (int r = 0; r < c->size; r++)
            if (all[(size_t)r * H_COUNT + H_MAXEX] > worst)
                worst = all[(size_t)r * H_COUNT + H_MAXEX], at = r;
        if (k > p->N)
            st = ns_fail(ctx, NS_ERR_INVALID_ARGUMENT,
                         "%s: k (%lld) is larger than the corpus (%lld rows over %d ranks)", fn,
                         (long long)k, (long long)p->N, c->size);
        else if (worst >= p->N)
            st = ns_fail(ctx, NS_ERR_INVALID_ARGUMENT,
                         "%s: options->exclude->ids on rank %d holds %lld, outside the global "
                         "corpus rows [0, %lld)",
                         fn, at, (long long)worst, (long long)p->N);
    }
    free(all);
    return st;
}

/* This rank's exclusions: the global ids inside its shard, as local rows. */
static ns_status local_exclusions(ns_context *ctx, ranks_plan *p, const ns_id_lists *ex,
                                  const char *fn) {
    if (!ex) return NS_OK;
    int64_t total = ex->offsets[p->Q];
    p->ex_off = (int64_t *)malloc(sizeof(int64_t) * (size_t)(p->Q + 1));
    p->ex_ids = (int64_t *)malloc(sizeof(int64_t) * (size_t)(total > 0 ? total : 1));
    if (!p->ex_off || !p->ex_ids)
        return ns_fail(ctx, NS_ERR_OUT_OF_MEMORY, "%s: cannot allocate %lld exclusions", fn,
                       (long long)total);
    int64_t n = 0;
    p->ex_off[0] = 0;
    for (int64_t i = 0; i < p->Q; i++) {
        for (int64_t t = ex->offsets[i]; t < ex->offsets[i + 1]; t++) {
            int64_t g = ex->ids[t] - p->offset;
            if (g >= 0 && g < p->rows) p->ex_ids[n++] = g;
        }
        p->ex_off[i + 1] = n;
    }
    return NS_OK;
}

/* One block's packet: status, nb·k global rows, nb·k scores (padded with -1, -inf), message;
 * a multiple of 8 bytes, so every packet's rows stay aligned in the gathered buffer. */
static size_t packet_bytes(int64_t nb, int64_t k) {
    return (8 + (size_t)(nb * k) * 12 + NS_ERROR_CAPACITY + 7) & ~(size_t)7;
}

static int64_t *packet_ids(char *pk) { return (int64_t *)(pk + 8); }
static float *packet_scores(char *pk, int64_t nb, int64_t k) {
    return (float *)(pk + 8 + (size_t)(nb * k) * 8);
}

/* Writes the status and this rank's error text into a packet of `bytes`. */
static void packet_stamp(const ns_context *ctx, char *pk, size_t bytes, ns_status local) {
    int64_t mine = (int64_t)local;
    memcpy(pk, &mine, 8);
    memcpy(pk + bytes - NS_ERROR_CAPACITY, ctx->error, NS_ERROR_CAPACITY);
}

/* Queries per block: the received R packets stay under RANKS_BLOCK_BYTES. The same size for
 * both merges: sharded blocks R times larger (fewer rounds) measured slower on one node
 * (exchange + merge +0.25 s vs +0.19 s at Q = 100,000, k = 100, R = 2, the buffers leaving
 * the caches), and the rounds they save are a few collective latencies. */
static int64_t block_queries(const ranks_plan *p) {
    size_t cap = RANKS_BLOCK_BYTES;
    /* Tests set a small cap to cross block boundaries with small inputs. */
    const char *env = getenv("NS_MINE_RANKS_BLOCK_BYTES");
    if (env && atoll(env) > 0) cap = (size_t)atoll(env);
    int64_t nb = (int64_t)(cap / ((size_t)p->R * (size_t)p->k * 12));
    if (nb < 1) nb = 1;
    return nb < p->Q ? nb : p->Q;
}

/* The block's exclusion lists, rebased to start at 0, into el (eo holds nb + 1 offsets). */
static const ns_id_lists *block_exclusions(const ranks_plan *p, int64_t b0, int64_t nb,
                                           int64_t *eo, ns_id_lists *el) {
    if (!p->ex_off) return NULL;
    for (int64_t i = 0; i <= nb; i++) eo[i] = p->ex_off[b0 + i] - p->ex_off[b0];
    el->offsets = eo, el->ids = p->ex_ids + p->ex_off[b0], el->queries = nb;
    return el;
}

/* Mines queries [b0, b0 + nb) against this rank's shard into the packet pk (host): the
 * backend's nb × k_r lists (in dev, backend memory, on CUDA), their rows made global. */
static ns_status mine_block(ns_context *ctx, const ranks_plan *p, ns_matrix q, ns_matrix corpus,
                            const ns_mine_options *o, int64_t b0, int64_t nb, char *pk,
                            void *dev, const char *fn) {
    const int64_t k = p->k, kr = p->rows < k ? p->rows : k;
    int64_t *id = packet_ids(pk);
    float *sc = packet_scores(pk, nb, k);
    for (int64_t t = 0; t < nb * k; t++) id[t] = -1, sc[t] = -INFINITY;
    if (kr == 0) return NS_OK; /* an empty shard contributes nothing */
    ns_matrix qb = q;
    qb.rows = nb;
    qb.data = (const char *)q.data + (size_t)(b0 * ns_ld(q)) * ns_dtype_size(q.dtype);
    ns_id_lists el;
    ns_mine_options lo = *o;
    lo.comm = NULL, lo.progress = NULL, lo.flags &= NS_NORMALIZE;
    const size_t n = (size_t)(nb * kr);
    int64_t *eo = (int64_t *)malloc(sizeof(int64_t) * (size_t)(nb + 1));
    int64_t *hi = (int64_t *)malloc(sizeof(int64_t) * n);
    float *hs = (float *)malloc(sizeof(float) * n);
    ns_status st = NS_OK;
    if (!eo || !hi || !hs)
        st = ns_fail(ctx, NS_ERR_OUT_OF_MEMORY, "%s: cannot allocate a block of %lld × %lld", fn,
                     (long long)nb, (long long)kr);
    lo.exclude = st ? NULL : block_exclusions(p, b0, nb, eo, &el);
    int64_t *li = dev ? (int64_t *)dev : hi;
    float *ls = dev ? (float *)((char *)dev + ((n * 8 + 255) & ~(size_t)255)) : hs;
    if (!st) st = NS_DISPATCH(ctx, mine_topk, (ctx, qb, corpus, kr, &lo, li, ls));
    if (!st && dev) st = ns_copy(ctx, hi, li, sizeof(int64_t) * n, NS_COPY_D2H);
    if (!st && dev) st = ns_copy(ctx, hs, ls, sizeof(float) * n, NS_COPY_D2H);
    if (!st)
        for (int64_t i = 0; i < nb; i++)
            for (int64_t j = 0; j < kr; j++) {
                int64_t r = hi[i * kr + j];
                id[i * k + j] = r < 0 ? -1 : r + p->offset;
                sc[i * k + j] = hs[i * kr + j];
            }
    free(eo);
    free(hi);
    free(hs);
    return st;
}

/* Query i's k best of the R sorted lists in the packets `all` (a k-way merge by ns_before;
 * each rank's list is sorted by it already, its padding last). */
static void merge_query(const ranks_plan *p, const char *all, size_t bytes, int64_t nb,
                        int64_t i, int64_t *head, int64_t *index, float *score) {
    const int64_t k = p->k;
    memset(head, 0, sizeof(int64_t) * (size_t)p->R);
    for (int64_t j = 0; j < k; j++) {
        int best = -1;
        float bs = -INFINITY;
        int64_t bi = -1;
        for (int r = 0; r < p->R; r++) {
            if (head[r] >= k) continue;
            const char *pk = all + (size_t)r * bytes;
            int64_t id = packet_ids((char *)pk)[i * k + head[r]];
            float s = packet_scores((char *)pk, nb, k)[i * k + head[r]];
            if (id >= 0 && (best < 0 || ns_before(s, id, bs, bi))) best = r, bs = s, bi = id;
        }
        if (best >= 0) head[best]++;
        index[j] = bi;
        score[j] = bs;
    }
}

/* The received packets (R, `bytes` apart): a failed rank fails every rank (its own message on
 * it, restored from its own packet pk). */
static ns_status packets_verdict(ns_context *ctx, const ranks_plan *p, ns_status local,
                                 const char *pk, size_t pk_bytes, const char *all, size_t bytes,
                                 const char *fn) {
    if (local) {
        memcpy(ctx->error, pk + pk_bytes - NS_ERROR_CAPACITY, NS_ERROR_CAPACITY);
        return local;
    }
    for (int r = 0; r < p->R; r++) {
        int64_t theirs;
        memcpy(&theirs, all + (size_t)r * bytes, 8);
        if (theirs)
            return ns_fail(ctx, NS_ERR_COMM,
                           "%s: rank %d failed (%s: %.400s), so every rank fails this call "
                           "(this is rank %d)",
                           fn, r, ns_status_string((ns_status)theirs),
                           all + (size_t)r * bytes + bytes - NS_ERROR_CAPACITY, p->c->rank);
    }
    return NS_OK;
}

/* The all-gather merge of queries [b0, b0 + nb): every rank's packet to every rank, each
 * merges every query. */
static ns_status merge_allgather(ns_context *ctx, ranks_plan *p, ns_status local, int64_t b0,
                                 int64_t nb, const char *fn) {
    const size_t bytes = packet_bytes(nb, p->k);
    packet_stamp(ctx, p->pk, bytes, local);
    ns_status st = p->c->ops->allgather_host(ctx, p->c, p->pk, p->all, bytes, fn);
    if (!st) st = packets_verdict(ctx, p, local, p->pk, bytes, p->all, bytes, fn);
    if (p->rank0_only && p->c->rank != 0) return st; /* no result here */
    for (int64_t i = 0; i < nb && !st; i++)
        merge_query(p, p->all, bytes, nb, i, p->head, p->index + (b0 + i) * p->k,
                    p->score + (b0 + i) * p->k);
    return st;
}

/* Rank j's slice of a block of nb queries: [slice_start(j), slice_start(j + 1)); contiguous,
 * sizes nb/R rounded down or up (empty slices when nb < R). */
static int64_t slice_start(int64_t nb, int R, int j) { return nb * j / R; }

/* Sends rank j its slice of this rank's lists (one packet each, stamped with the status) and
 * receives every rank's lists of this rank's slice into p->all (packets of `bytes`). */
static ns_status slices_exchange(ns_context *ctx, ranks_plan *p, ns_status local, int64_t nb,
                                 size_t bytes, const char *fn) {
    const int R = p->R;
    const int64_t k = p->k;
    size_t *scount = p->a2a, *sdispl = scount + R, *rcount = sdispl + R, *rdispl = rcount + R;
    packet_stamp(ctx, p->pk, packet_bytes(nb, k), local);
    size_t at = 0;
    for (int j = 0; j < R; j++) {
        const int64_t s0 = slice_start(nb, R, j), m = slice_start(nb, R, j + 1) - s0;
        char *o = p->send + at;
        memcpy(packet_ids(o), packet_ids(p->pk) + s0 * k, sizeof(int64_t) * (size_t)(m * k));
        memcpy(packet_scores(o, m, k), packet_scores(p->pk, nb, k) + s0 * k,
               sizeof(float) * (size_t)(m * k));
        scount[j] = packet_bytes(m, k), sdispl[j] = at;
        packet_stamp(ctx, o, scount[j], local);
        rcount[j] = bytes, rdispl[j] = (size_t)j * bytes;
        at += scount[j];
    }
    return p->c->ops->alltoallv_host(ctx, p->c, p->send, scount, sdispl, p->all, rcount, rdispl,
                                     fn);
}

/* The merged slices (each padded to the largest, gb bytes, packed at p->send) to every rank,
 * or to rank 0 alone (NS_MINE_RESULT_ON_RANK0: an all-to-all whose only receiver is rank 0). */
static ns_status slices_share(ns_context *ctx, ranks_plan *p, size_t gb, const char *fn) {
    if (!p->rank0_only) return p->c->ops->allgather_host(ctx, p->c, p->send, p->all, gb, fn);
    const int R = p->R, me = p->c->rank;
    size_t *scount = p->a2a, *sdispl = scount + R, *rcount = sdispl + R, *rdispl = rcount + R;
    for (int j = 0; j < R; j++) {
        scount[j] = j == 0 ? gb : 0, sdispl[j] = 0;
        rcount[j] = me == 0 ? gb : 0, rdispl[j] = (size_t)j * gb;
    }
    return p->c->ops->alltoallv_host(ctx, p->c, p->send, scount, sdispl, p->all, rcount, rdispl,
                                     fn);
}

/* The sharded merge of queries [b0, b0 + nb): slices exchanged, this rank's slice merged, the
 * merged slices shared (each padded to the largest slice, ceil(nb / R) queries). */
static ns_status merge_sharded(ns_context *ctx, ranks_plan *p, ns_status local, int64_t b0,
                               int64_t nb, const char *fn) {
    const int R = p->R, me = p->c->rank;
    const int64_t k = p->k, s0 = slice_start(nb, R, me), m = slice_start(nb, R, me + 1) - s0;
    const size_t bytes = packet_bytes(m, k);
    ns_status st = slices_exchange(ctx, p, local, nb, bytes, fn);
    if (!st) st = packets_verdict(ctx, p, local, p->pk, packet_bytes(nb, k), p->all, bytes, fn);
    if (st) return st;
    for (int64_t i = 0; i < m; i++)
        merge_query(p, p->all, bytes, m, i, p->head, p->index + (b0 + s0 + i) * k,
                    p->score + (b0 + s0 + i) * k);
    const int64_t w = (nb + R - 1) / R;
    const size_t ids = (size_t)(w * k) * 8, gb = (size_t)(w * k) * 12;
    memcpy(p->send, p->index + (b0 + s0) * k, (size_t)(m * k) * 8);
    memcpy(p->send + ids, p->score + (b0 + s0) * k, (size_t)(m * k) * 4);
    if ((st = slices_share(ctx, p, gb, fn))) return st;
    if (p->rank0_only && me != 0) return NS_OK; /* no result here */
    for (int r = 0; r < R; r++) {
        const int64_t r0 = slice_start(nb, R, r), n = slice_start(nb, R, r + 1) - r0;
        if (r == me || !n) continue;
        const char *g = p->all + (size_t)r * gb;
        memcpy(p->index + (b0 + r0) * k, g, (size_t)(n * k) * 8);
        memcpy(p->score + (b0 + r0) * k, g + ids, (size_t)(n * k) * 4);
    }
    return NS_OK;
}

/* The one rule between the two merges: sharded when the block has at least R queries (every
 * slice non-empty). NS_MINE_RANKS_MERGE=allgather|sharded forces one (tests, benchmarks). */
static int merge_rule_sharded(const ranks_plan *p, int64_t nb) {
    const char *env = getenv("NS_MINE_RANKS_MERGE");
    if (env && strcmp(env, "allgather") == 0) return 0;
    if (env && strcmp(env, "sharded") == 0) return 1;
    return nb >= p->R;
}

/* Query blocks: mine, share, merge into the staged result. failed: a local failure since the
 * agreement, reported in the first block's exchange. */
static ns_status mine_blocks(ns_context *ctx, ranks_plan *p, ns_matrix q, ns_matrix corpus,
                             const ns_mine_options *o, ns_status failed, const char *fn) {
    const int64_t k = p->k, nb_max = block_queries(p);
    void *dev = NULL;
    if (!failed && ctx->backend == NS_BACKEND_CUDA && p->rows > 0) {
        ns_arena *a = &p->c->mine;
        if (!a->base) a->kind = ns_backend_memory(ctx); /* the comm was zeroed: host memory */
        const int64_t kr = p->rows < k ? p->rows : k;
        failed = ns_arena_reserve(ctx, a, (size_t)(nb_max * kr) * 12 + 512, fn);
        dev = failed ? NULL : a->base;
    }
    const int64_t blocks = (p->Q + nb_max - 1) / nb_max;
    for (int64_t b0 = 0, blk = 0; b0 < p->Q; b0 += nb_max, blk++) {
        const int64_t nb = p->Q - b0 < nb_max ? p->Q - b0 : nb_max;
        ns_status local = failed;
        if (!local) local = mine_block(ctx, p, q, corpus, o, b0, nb, p->pk, dev, fn);
        if (!local && o->progress && o->progress(blk + 1, blocks, o->progress_user))
            local = ns_fail(ctx, NS_ERR_INVALID_ARGUMENT,
                            "%s: cancelled by the progress callback", fn);
        ns_status st = merge_rule_sharded(p, nb) ? merge_sharded(ctx, p, local, b0, nb, fn)
                                                 : merge_allgather(ctx, p, local, b0, nb, fn);
        if (st) return st;
    }
    return NS_OK;
}

/* The host buffers of one call (staged result, packets, merge heads); NS_OK or OOM. */
static ns_status plan_alloc(ns_context *ctx, ranks_plan *p, const char *fn) {
    const int64_t nb = block_queries(p);
    const size_t bytes = packet_bytes(nb, p->k);
    /* The sharded merge's outgoing packets: the block's lists plus R packet headers; the same
     * buffer later holds the merged slice (at most nb queries). Zeroed: padding goes out too. */
    const size_t send = (size_t)(nb * p->k) * 12 + (size_t)p->R * (packet_bytes(0, p->k) + 8);
    p->index = (int64_t *)malloc(sizeof(int64_t) * (size_t)(p->Q * p->k));
    p->score = (float *)malloc(sizeof(float) * (size_t)(p->Q * p->k));
    p->pk = (char *)calloc(1, bytes);
    p->send = (char *)calloc(1, send);
    p->all = (char *)malloc(bytes * (size_t)p->R);
    p->head = (int64_t *)malloc(sizeof(int64_t) * (size_t)p->R);
    p->a2a = (size_t *)malloc(sizeof(size_t) * 4 * (size_t)p->R);
    if (p->index && p->score && p->pk && p->send && p->all && p->head && p->a2a) return NS_OK;
    return ns_fail(ctx, NS_ERR_OUT_OF_MEMORY,
                   "%s: cannot allocate the staging of %lld × %lld results and %d packets of "
                   "%zu bytes",
                   fn, (long long)p->Q, (long long)p->k, p->R, bytes);
}

static void plan_free(ranks_plan *p) {
    void *m[] = {p->index, p->score, p->pk, p->send, p->all, p->head, p->a2a, p->ex_off,
                 p->ex_ids};
    for (size_t i = 0; i < sizeof m / sizeof m[0]; i++) free(m[i]);
}

ns_status ns_mine_topk_ranks(ns_context *ctx, ns_matrix q, ns_matrix corpus, int64_t k,
                             const ns_mine_options *o, int64_t *index, float *score,
                             ns_status local, const char *fn) {
    ranks_plan p;
    memset(&p, 0, sizeof p);
    p.c = o->comm;
    p.R = p.c->size;
    p.Q = q.rows, p.k = k, p.rows = corpus.rows;
    p.rank0_only = (o->flags & NS_MINE_RESULT_ON_RANK0) != 0;
    int64_t max_ex = -1;
    /* A broken communicator, or one of another backend or device, cannot exchange at all. */
    ns_status usable = ns_comm_usable(ctx, p.c, fn);
    if (usable) return usable;
    if (!local) local = check_exclusions(ctx, fn, o->exclude, &max_ex);
    /* The packets must exist before the agreement: without them no block can be shared. */
    if (!local) local = plan_alloc(ctx, &p, fn);
    ns_status st = agree(ctx, &p, local, q, corpus, k, o, max_ex, fn);
    if (!st) st = mine_blocks(ctx, &p, q, corpus, o, local_exclusions(ctx, &p, o->exclude, fn),
                              fn);
    const int writes = !p.rank0_only || p.c->rank == 0;
    if (!st && writes)
        st = ns_copy(ctx, index, p.index, sizeof(int64_t) * (size_t)(p.Q * k), NS_COPY_H2D);
    if (!st && writes)
        st = ns_copy(ctx, score, p.score, sizeof(float) * (size_t)(p.Q * k), NS_COPY_H2D);
    plan_free(&p);
    return st;
}
