"""Cluster-aware batches: plan_batches (ns_plan_batches). The PyTorch batch sampler over it
is negsamp.batch_sampler.ClusterBatchSampler (negsamp.ClusterBatchSampler, loaded lazily)."""
from __future__ import annotations

from collections import namedtuple
from ctypes import byref, c_int64, pointer

import numpy as np

from . import _checks as chk
from . import _ffi
from ._core import IdLists, _c, _ctx, _id_lists
from ._errors import InvalidArgument

BatchPlan = namedtuple("BatchPlan", "order offsets")


def plan_batches(group_ids, batch_size: int, *, drop_last=False, neighbors=None,
                 groups_per_batch=2, positives=None, max_duplicate_positives=1, seed=0, epoch=0,
                 ctx=None) -> BatchPlan:
    """An epoch's batches from per-query group ids (cluster labels, topics, labels): every
    query once, each batch from one group (TAS-B) or, with ``neighbors`` (one list of nearest
    groups per group, e.g. from centroid similarities; group ids then in [0, len(neighbors))),
    from a group and up to ``groups_per_batch - 1`` of its neighbours (NGAME); no positive id
    (``positives``: one list of ids per query) in more than ``max_duplicate_positives`` queries
    of a batch. Seeded by (seed, epoch): the same plan on every run.

    Returns BatchPlan(order int64 n, offsets int64 batches+1): batch b is
    order[offsets[b]:offsets[b+1]]; with drop_last the short batches' queries follow
    order[offsets[-1]:]."""
    fn = "plan_batches"
    ctx = _ctx(ctx)
    g = chk.int_vector(group_ids, fn, "group_ids")
    g = np.ascontiguousarray(g, dtype=np.int64).ravel()
    n = g.size
    batch_size = chk.integer(batch_size, fn, "batch_size", 1)
    o = _ffi.plan_options_init()
    o.drop_last = 1 if chk.flag(drop_last, fn, "drop_last") else 0
    nb = None if neighbors is None else IdLists(neighbors, fn=fn, name="neighbors")
    pos = _id_lists(positives, fn, "positives", n)
    if nb is not None:
        o.neighbors = pointer(nb.struct)
        o.groups_per_batch = chk.integer(groups_per_batch, fn, "groups_per_batch", 1, 64)
    if pos is not None:
        o.positives = pointer(pos.struct)
    o.max_duplicate_positives = chk.integer(max_duplicate_positives, fn,
                                            "max_duplicate_positives", 1)
    o.seed = chk.uint64(seed, fn, "seed")
    o.epoch = chk.uint64(epoch, fn, "epoch")
    order = np.empty(max(n, 1), dtype=np.int64)
    offsets = np.empty(n + 1, dtype=np.int64)
    batches = c_int64(0)
    ctx.check(_c("ns_plan_batches")(ctx.handle, g.ctypes.data, n, batch_size, byref(o),
                                    order.ctypes.data, offsets.ctypes.data, byref(batches)))
    return BatchPlan(order[:n], offsets[: batches.value + 1])
