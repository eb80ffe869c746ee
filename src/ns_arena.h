/* Workspace arenas, in the spirit of zstd's zstd_cwksp.h: one block of memory per lifetime,
 * reserved (grown) at the start of a call, before anything is carved from it and never inside a
 * loop, then carved into aligned pieces (64 B on the host, 256 B on the device) and reset by
 * the next call. A layout function that carves every piece an operation needs runs twice: on a
 * sizing arena (which only counts bytes) and, after the reserve, on the real one — so the sizes
 * and the carving cannot disagree, and no offset is written by hand.
 *
 * The arenas and their lifetimes:
 *   ctx->scratch          host, one operation (the CPU backend's tiles, reservoirs, row state)
 *   ctx->cuda->scratch    device, one operation (the CUDA backend's tiles and statistics)
 *   the step's arenas     backend + host staging, from ns_step_forward to ns_step_backward
 *   the comm's arena      backend, a multi-rank loss's gathered rows, forward to backward
 *   a queue's arena       backend, the ring itself (reserved once)
 *   ctx->cuda->pinned     pinned host, the double buffer that streams a host corpus to the GPU */
#ifndef NS_ARENA_H
#define NS_ARENA_H

#include "negsamp.h"

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Host, device, or page-locked host memory (CUDA builds: staging of host data for async copies). */
typedef enum { NS_MEM_HOST = 0, NS_MEM_DEVICE = 1, NS_MEM_PINNED = 2 } ns_memory;

typedef struct {
    char *base;      /* NULL: a sizing arena, or nothing reserved yet */
    size_t capacity; /* bytes reserved (SIZE_MAX for a sizing arena) */
    size_t used;     /* bytes carved since the last reset */
    ns_memory kind;
} ns_arena;

static inline size_t ns_arena_alignment(ns_memory kind) { return kind == NS_MEM_DEVICE ? 256 : 64; }

/* An empty arena of the given memory (nothing reserved). */
static inline ns_arena ns_arena_empty(ns_memory kind) {
    ns_arena a = {NULL, 0, 0, kind};
    return a;
}

/* A sizing arena: carves return NULL and only a.used grows (the layout pass). */
static inline ns_arena ns_arena_sizer(ns_memory kind) {
    ns_arena a = {NULL, SIZE_MAX, 0, kind};
    return a;
}

static inline void ns_arena_reset(ns_arena *a) { a->used = 0; }

/* The next bytes of a, aligned; NULL from a sizing arena or when a is too small (a layout run
 * after ns_arena_reserve with its own size never is). */
static inline void *ns_arena_carve(ns_arena *a, size_t bytes) {
    const size_t al = ns_arena_alignment(a->kind);
    const size_t off = (a->used + al - 1) & ~(al - 1);
    if (off > a->capacity || bytes > a->capacity - off) return NULL;
    a->used = off + bytes;
    return a->base ? a->base + off : NULL;
}

/* Makes a hold at least bytes, and resets it. bytes counts the alignment padding between
 * pieces too: size several carves with a sizing arena (ns_arena_lay_out does both passes).
 * Grows only when too small (by half again, so a slowly growing shape does not reallocate every
 * call); the old block's contents are not kept. Device and pinned blocks are freed after the
 * work queued on ctx's streams (which may still read them); every failure is returned, as
 * NS_ERR_OUT_OF_MEMORY or NS_ERR_CUDA, naming fn. */
ns_status ns_arena_reserve(ns_context *ctx, ns_arena *a, size_t bytes, const char *fn);
/* Frees a's block (device: after the queued work) and leaves it empty. */
void ns_arena_release(ns_context *ctx, ns_arena *a);

/* The two-pass pattern: runs layout(plan, sizer), reserves a for the bytes it carved, then runs
 * layout(plan, a) to carve them for real. layout only carves (and stores the pointers in plan). */
typedef void (*ns_layout_fn)(void *plan, ns_arena *a);
ns_status ns_arena_lay_out(ns_context *ctx, ns_arena *a, ns_layout_fn layout, void *plan,
                           const char *fn);

/* Copies between host and the context's backend memory, in a direction (CPU contexts: a plain
 * memcpy whatever the direction). CUDA: ordered on ctx's stream; D2H into pageable memory
 * returns once the copy is done. */
typedef enum { NS_COPY_H2H = 0, NS_COPY_H2D = 1, NS_COPY_D2H = 2, NS_COPY_D2D = 3 } ns_copy_dir;
ns_status ns_copy(ns_context *ctx, void *dst, const void *src, size_t bytes, ns_copy_dir dir);

#ifdef __cplusplus
}
#endif
#endif
