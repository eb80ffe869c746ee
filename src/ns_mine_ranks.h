/* ns_mine_topk across ranks (src/mine_ranks.c): called by ns_mine_topk when options->comm is
 * set, after its local argument checks (local: their verdict, shared with the other ranks so
 * that every rank fails together). The result is on every rank (see include/negsamp.h). */
#ifndef NS_MINE_RANKS_H
#define NS_MINE_RANKS_H

#include "ns_internal.h"

ns_status ns_mine_topk_ranks(ns_context *ctx, ns_matrix q, ns_matrix corpus, int64_t k,
                             const ns_mine_options *o, int64_t *index, float *score,
                             ns_status local, const char *fn);

#endif
