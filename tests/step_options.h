// ns_step_options together with the filter, sampler and loss options it points to, for tests
// that build options field by field (o.sampler.seed = 1). get() points the step options at this
// object's own members, so a copy stays independent of the object it was copied from.
#pragma once

#include "negsamp.h"

struct StepOptions {
    size_t struct_size = sizeof(ns_step_options);
    int64_t hard_negatives = 0;
    ns_filter_options filter = NS_FILTER_OPTIONS_INIT;
    ns_sampler_options sampler = NS_SAMPLER_OPTIONS_INIT;
    ns_loss_options loss = NS_LOSS_OPTIONS_INIT;
    ns_queue *queue = nullptr;
    int enqueue = 0;
    ns_comm *comm = nullptr;
    int sync_free = 0;
    int64_t random_negatives = 0;
    int64_t random_pool = 0;
    const ns_loss_groups *groups = nullptr;
    int forward_only = 0;
    ns_step_options step{};

    const ns_step_options *get() {
        step = ns_step_options{struct_size, hard_negatives, &filter, &sampler, &loss,
                               queue, enqueue, comm, sync_free, random_negatives,
                               random_pool, groups, forward_only};
        return &step;
    }
};
