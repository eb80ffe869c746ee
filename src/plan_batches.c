/* ns_plan_batches: an epoch's cluster-aware batches (contract in include/negsamp.h).
 *
 * Index bookkeeping, so it runs on the host for either backend (no dispatch): O(n log n) for
 * the sorts, single-threaded, hence trivially the same plan at any thread count.
 *
 * Stages:
 *  1. groups: the queries sorted by (group id, query) — any int64 ids become dense groups
 *     0..G−1 in id order; each group's queries are then shuffled (Fisher–Yates, Philox).
 *  2. positives: every positive id is mapped to a dense slot (sorted unique ids), so the
 *     per-batch count of each positive is an array, reset after each batch.
 *  3. fill: groups are visited in a seeded order. TAS-B: a batch takes the queries of the
 *     current group in their shuffled order, and when the group runs out, the next groups'.
 *     NGAME: a batch's seed group is the first group of the order with queries left; it takes
 *     ceil(B / groups_per_batch) queries from the seed and each of its neighbours with queries
 *     left (up to groups_per_batch groups), then anything left in those groups, then spills
 *     as TAS-B does. A query whose positive is at the cap in the batch stays in its group for a
 *     later batch; a batch no group can add to is closed short.
 *  4. order: full batches in a seeded order, then the short ones in the order they were made.
 *
 * Random numbers: Philox4x32-10 keyed by seed, counter (i, stream, epoch, domain | high bits),
 * domain 1 = shuffle in group `stream`, 2 = group order, 3 = batch order; a uniform integer in
 * [0, b) is the high word of 64 random bits × b (bias below 2^-32 · b / 2^32). */
#include "ns_internal.h"
#include "hostdevice/ns_math.h"

#include <stdlib.h>
#include <string.h>

static const char *const FN = "ns_plan_batches";

enum { DOMAIN_SHUFFLE = 1, DOMAIN_GROUPS = 2, DOMAIN_BATCHES = 3 };

static uint64_t plan_below(uint64_t seed, uint64_t epoch, int domain, uint64_t stream, uint64_t i,
                           uint64_t bound) {
    uint32_t key[2] = {(uint32_t)seed, (uint32_t)(seed >> 32)};
    uint32_t ctr[4] = {(uint32_t)i, (uint32_t)stream, (uint32_t)epoch,
                       ((uint32_t)domain << 28) ^ (uint32_t)((i >> 32) & 0x3fffu) ^
                           (uint32_t)(((stream >> 32) & 0x3fffu) << 14)};
    uint32_t out[4];
    ns_philox4x32_10(ctr, key, out);
    const uint64_t x = ((uint64_t)out[0] << 32) | out[1];
    return (uint64_t)(((unsigned __int128)x * bound) >> 64);
}

/* Fisher–Yates over a[0..n). */
static void plan_shuffle(int64_t *a, int64_t n, uint64_t seed, uint64_t epoch, int domain,
                         uint64_t stream) {
    for (int64_t i = n - 1; i > 0; i--) {
        const int64_t j = (int64_t)plan_below(seed, epoch, domain, stream, (uint64_t)i,
                                              (uint64_t)i + 1);
        const int64_t t = a[i];
        a[i] = a[j];
        a[j] = t;
    }
}

/* ------------------------------------------------------------------ checks */

static ns_status check_lists(ns_context *ctx, const char *name, const ns_id_lists *x,
                             int64_t queries, int64_t id_bound) {
    if (x->queries != queries)
        return ns_fail(ctx, NS_ERR_INVALID_ARGUMENT, "%s: %s->queries (%lld) must be %lld", FN,
                       name, (long long)x->queries, (long long)queries);
    if (!x->offsets)
        return ns_fail(ctx, NS_ERR_INVALID_ARGUMENT, "%s: %s->offsets is NULL", FN, name);
    return ns_check_id_lists_data(ctx, FN, name, x, queries, id_bound, "the groups", NULL);
}

static ns_status check_plan(ns_context *ctx, const int64_t *group, int64_t n, int64_t batch_size,
                            const ns_plan_options *o, const int64_t *order,
                            const int64_t *offsets, const int64_t *batches) {
    ns_status st;
    if ((st = ns_check_ptr(ctx, FN, "order", order))) return st;
    if ((st = ns_check_ptr(ctx, FN, "offsets", offsets))) return st;
    if ((st = ns_check_ptr(ctx, FN, "batches", batches))) return st;
    if (n < 0)
        return ns_fail(ctx, NS_ERR_INVALID_ARGUMENT, "%s: n (%lld) must be >= 0", FN, (long long)n);
    if (n > 0 && (st = ns_check_ptr(ctx, FN, "group", group))) return st;
    if (batch_size < 1)
        return ns_fail(ctx, NS_ERR_INVALID_ARGUMENT, "%s: batch_size (%lld) must be at least 1",
                       FN, (long long)batch_size);
    if (o->drop_last != 0 && o->drop_last != 1)
        return ns_fail(ctx, NS_ERR_INVALID_ARGUMENT, "%s: options->drop_last (%d) must be 0 or 1",
                       FN, o->drop_last);
    if (o->max_duplicate_positives < 1)
        return ns_fail(ctx, NS_ERR_INVALID_ARGUMENT,
                       "%s: options->max_duplicate_positives (%lld) must be at least 1", FN,
                       (long long)o->max_duplicate_positives);
    if (o->positives &&
        (st = check_lists(ctx, "options->positives", o->positives, n, NS_IDS_ANY)))
        return st;
    if (o->neighbors) {
        const int64_t G = o->neighbors->queries;
        if (o->groups_per_batch < 1)
            return ns_fail(ctx, NS_ERR_INVALID_ARGUMENT,
                           "%s: options->groups_per_batch (%lld) must be at least 1", FN,
                           (long long)o->groups_per_batch);
        if (o->groups_per_batch > 64)
            return ns_fail(ctx, NS_ERR_INVALID_ARGUMENT,
                           "%s: options->groups_per_batch (%lld) must be at most 64", FN,
                           (long long)o->groups_per_batch);
        if (G < 1)
            return ns_fail(ctx, NS_ERR_INVALID_ARGUMENT,
                           "%s: options->neighbors->queries (%lld) must be at least 1 (the "
                           "number of groups)", FN, (long long)G);
        if ((st = check_lists(ctx, "options->neighbors", o->neighbors, G, G))) return st;
        for (int64_t i = 0; i < n; i++)
            if (group[i] < 0 || group[i] >= G)
                return ns_fail(ctx, NS_ERR_INVALID_ARGUMENT,
                               "%s: group[%lld] (%lld) is not a row of options->neighbors, in "
                               "[0, %lld)", FN, (long long)i, (long long)group[i], (long long)G);
    }
    return NS_OK;
}

/* ------------------------------------------------------------------ stages */

typedef struct {
    int64_t n, B, G;
    int64_t *mem;        /* n: queries grouped; group g's left ones are mem[head[g] .. end[g]) */
    int64_t *head, *end; /* G each */
    int64_t *gorder;     /* G: the seeded group order */
    int64_t *pslot;      /* positives' ids mapped to dense slots (CSR like options->positives) */
    int64_t *pcount;     /* per slot: queries of the current batch with that positive */
    int64_t *out, *boff; /* the batches in the order made, and their offsets */
    int64_t nb, filled;
} plan_state;

typedef struct {
    int64_t key, query;
} plan_pair;
static int by_pair(const void *a, const void *b) {
    const plan_pair *x = (const plan_pair *)a, *y = (const plan_pair *)b;
    if (x->key != y->key) return x->key < y->key ? -1 : 1;
    return (x->query > y->query) - (x->query < y->query);
}
static int by_value(const void *a, const void *b) {
    const int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

/* Stage 1. TAS-B: dense groups in id order; NGAME: the caller's ids (empty groups allowed). */
static void plan_groups(plan_state *p, const int64_t *group, int64_t G_table,
                        const ns_plan_options *o) {
    for (int64_t i = 0; i < p->n; i++) p->mem[i] = i;
    if (G_table > 0) { /* counting sort by the table's group ids */
        memset(p->head, 0, (size_t)G_table * 8);
        for (int64_t i = 0; i < p->n; i++) p->head[group[i]]++;
        int64_t s = 0;
        for (int64_t g = 0; g < G_table; g++) {
            const int64_t c = p->head[g];
            p->head[g] = p->end[g] = s;
            s += c;
        }
        for (int64_t i = 0; i < p->n; i++) p->mem[p->end[group[i]]++] = i;
        p->G = G_table;
    } else { /* pairs (group, query) sorted, in out and boff (2n words) */
        plan_pair *pr = (plan_pair *)p->out;
        for (int64_t i = 0; i < p->n; i++) pr[i].key = group[i], pr[i].query = i;
        qsort(pr, (size_t)p->n, sizeof *pr, by_pair);
        int64_t G = 0;
        for (int64_t j = 0; j < p->n; j++) {
            if (j == 0 || pr[j].key != pr[j - 1].key) p->head[G++] = j;
            p->mem[j] = pr[j].query;
        }
        for (int64_t g = 0; g < G; g++) p->end[g] = g + 1 < G ? p->head[g + 1] : p->n;
        p->G = G;
    }
    for (int64_t g = 0; g < p->G; g++) {
        plan_shuffle(p->mem + p->head[g], p->end[g] - p->head[g], o->seed, o->epoch,
                     DOMAIN_SHUFFLE, (uint64_t)g);
        p->gorder[g] = g;
    }
    plan_shuffle(p->gorder, p->G, o->seed, o->epoch, DOMAIN_GROUPS, 0);
}

/* Stage 2: pslot[j] = the rank of positives->ids[j] among the distinct ids. */
static void plan_positives(plan_state *p, const ns_id_lists *pos, int64_t *scratch) {
    const int64_t total = pos->offsets[pos->queries];
    memcpy(scratch, pos->ids, (size_t)total * 8);
    qsort(scratch, (size_t)total, 8, by_value);
    int64_t u = 0;
    for (int64_t j = 0; j < total; j++)
        if (j == 0 || scratch[j] != scratch[j - 1]) scratch[u++] = scratch[j];
    for (int64_t j = 0; j < total; j++) {
        const int64_t *hit = (const int64_t *)bsearch(&pos->ids[j], scratch, (size_t)u, 8,
                                                      by_value);
        p->pslot[j] = hit - scratch;
    }
    memset(p->pcount, 0, (size_t)u * 8);
}

static int plan_fits(const plan_state *p, const ns_plan_options *o, int64_t q) {
    if (!o->positives) return 1;
    const int64_t *off = o->positives->offsets;
    for (int64_t j = off[q]; j < off[q + 1]; j++)
        if (p->pcount[p->pslot[j]] >= o->max_duplicate_positives) return 0;
    return 1;
}

static void plan_count(plan_state *p, const ns_plan_options *o, int64_t q, int64_t delta) {
    if (!o->positives) return;
    const int64_t *off = o->positives->offsets;
    for (int64_t j = off[q]; j < off[q + 1]; j++) p->pcount[p->pslot[j]] += delta;
}

/* Moves up to `want` queries of group g that fit the cap into the batch; returns how many. */
static int64_t plan_take(plan_state *p, const ns_plan_options *o, int64_t g, int64_t want) {
    int64_t took = 0;
    for (int64_t j = p->head[g]; j < p->end[g] && took < want; j++) {
        const int64_t q = p->mem[j];
        if (!plan_fits(p, o, q)) continue; /* held back for a later batch */
        p->mem[j] = p->mem[p->head[g]];
        p->mem[p->head[g]++] = q;
        plan_count(p, o, q, 1);
        p->out[p->filled++] = q;
        took++;
    }
    return took;
}

/* NGAME's first passes: an equal share from the seed group and its nearest groups. */
static void plan_neighbors(plan_state *p, const ns_plan_options *o, int64_t seed_group,
                           int64_t start) {
    const ns_id_lists *nb = o->neighbors;
    int64_t used[64], nu = 0; /* the groups of this batch, at most groups_per_batch (<= 64) */
    const int64_t cap = o->groups_per_batch;
    used[nu++] = seed_group;
    for (int64_t j = nb->offsets[seed_group]; j < nb->offsets[seed_group + 1] && nu < cap; j++) {
        const int64_t g = nb->ids[j];
        int dup = 0;
        for (int64_t k = 0; k < nu; k++) dup |= used[k] == g;
        if (!dup && p->head[g] < p->end[g]) used[nu++] = g;
    }
    const int64_t share = (p->B + nu - 1) / nu;
    for (int64_t k = 0; k < nu && p->filled - start < p->B; k++) {
        const int64_t room = p->B - (p->filled - start);
        plan_take(p, o, used[k], share < room ? share : room);
    }
    for (int64_t k = 0; k < nu && p->filled - start < p->B; k++)
        plan_take(p, o, used[k], p->B - (p->filled - start));
}

/* Stage 3: batches into out/boff in the order they are made. */
static void plan_fill(plan_state *p, const ns_plan_options *o) {
    int64_t cursor = 0; /* position in gorder of the first group that may have queries left */
    p->nb = 0;
    p->filled = 0;
    p->boff[0] = 0;
    while (p->filled < p->n) {
        while (cursor < p->G && p->head[p->gorder[cursor]] == p->end[p->gorder[cursor]]) cursor++;
        const int64_t start = p->filled;
        if (o->neighbors) plan_neighbors(p, o, p->gorder[cursor], start);
        for (int64_t c = cursor; c < p->G && p->filled - start < p->B; c++)
            plan_take(p, o, p->gorder[c], p->B - (p->filled - start));
        for (int64_t j = start; j < p->filled; j++) plan_count(p, o, p->out[j], -1);
        p->boff[++p->nb] = p->filled;
    }
}

/* Stage 4: full batches in a seeded order, then the short ones; drop_last leaves them out of
 * the batches (their queries stay at the tail of order). */
static int64_t plan_write(const plan_state *p, const ns_plan_options *o, int64_t *perm,
                          int64_t *order, int64_t *offsets) {
    int64_t nfull = 0, at = 0, nb = 0;
    for (int64_t b = 0; b < p->nb; b++)
        if (p->boff[b + 1] - p->boff[b] == p->B) perm[nfull++] = b;
    plan_shuffle(perm, nfull, o->seed, o->epoch, DOMAIN_BATCHES, 0);
    int64_t np = nfull;
    for (int64_t b = 0; b < p->nb; b++)
        if (p->boff[b + 1] - p->boff[b] < p->B) perm[np++] = b;
    const int64_t kept = o->drop_last ? nfull : p->nb;
    offsets[0] = 0;
    for (int64_t k = 0; k < np; k++) {
        const int64_t b = perm[k], len = p->boff[b + 1] - p->boff[b];
        memcpy(order + at, p->out + p->boff[b], (size_t)len * 8);
        at += len;
        if (k < kept) offsets[++nb] = at;
    }
    return nb;
}

ns_status ns_plan_batches(ns_context *ctx, const int64_t *group, int64_t n, int64_t batch_size,
                          const ns_plan_options *options, int64_t *order, int64_t *offsets,
                          int64_t *batches) {
    ns_status st;
    if ((st = ns_check_context(ctx, FN))) return st;
    ns_plan_options o;
    if ((st = NS_RESOLVE_OPTIONS(ctx, FN, "options", ns_plan_options, NS_PLAN_OPTIONS_INIT,
                                 options, &o)))
        return st;
    if ((st = check_plan(ctx, group, n, batch_size, &o, order, offsets, batches))) return st;
    const int64_t G_table = o.neighbors ? o.neighbors->queries : 0;
    const int64_t G_cap = G_table > n ? G_table : n;
    const int64_t npos = o.positives ? o.positives->offsets[n] : 0;
    /* one block: mem, out, boff (n + 1: out and boff hold the sort's n pairs first), perm
     * (n + 1), head, end, gorder (G_cap each), pslot and pcount (npos each) */
    const size_t words = (size_t)4 * (size_t)n + 2 + 3 * (size_t)G_cap + 2 * (size_t)npos;
    int64_t *block = (int64_t *)malloc(words * 8);
    if (!block)
        return ns_fail(ctx, NS_ERR_OUT_OF_MEMORY, "%s: cannot allocate %zu bytes of host memory",
                       FN, words * 8);
    plan_state p;
    memset(&p, 0, sizeof p);
    p.n = n;
    p.B = batch_size;
    p.mem = block;
    p.out = p.mem + n;
    p.boff = p.out + n;
    int64_t *perm = p.boff + n + 1;
    p.head = perm + n + 1;
    p.end = p.head + G_cap;
    p.gorder = p.end + G_cap;
    p.pslot = p.gorder + G_cap;
    p.pcount = p.pslot + npos;
    plan_groups(&p, group, G_table, &o);
    if (o.positives) plan_positives(&p, o.positives, p.pcount);
    plan_fill(&p, &o);
    *batches = plan_write(&p, &o, perm, order, offsets);
    free(block);
    return NS_OK;
}
