/* The orchestrated training step: filter → sample → InfoNCE forward, then the backward. */
#include "ns_internal.h"

#include <stdlib.h>

struct ns_step_state {
    int unused;
};

void ns_step_state_free(struct ns_step_state *s) { free(s); }
