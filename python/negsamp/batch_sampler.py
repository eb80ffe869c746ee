"""ClusterBatchSampler: a PyTorch batch sampler (``DataLoader(batch_sampler=...)``) whose
batches ns_plan_batches plans from cluster labels (TAS-B) or a group-neighbour table (NGAME),
re-plannable mid-epoch when the clusters are refreshed."""
from __future__ import annotations

import numpy as np
from torch.utils.data import Sampler

from . import _checks as chk
from ._core import _id_lists
from ._errors import InvalidArgument
from ._plan import plan_batches

__all__ = ["ClusterBatchSampler"]


def _subset_lists(lists, rows):
    """The CSR lists of `rows` (an IdLists or None)."""
    if lists is None:
        return None
    off, ids = lists.offsets, lists.ids
    parts = [ids[off[r]:off[r + 1]] for r in rows]
    new_off = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum([len(p) for p in parts], out=new_off[1:])
    return (new_off, np.concatenate(parts) if parts else np.zeros(0, np.int64))


class ClusterBatchSampler(Sampler):
    """Yields batches (lists of dataset indices) planned by ns_plan_batches: every index once
    per epoch, batches from one group (TAS-B) or from a group and its nearest groups (NGAME,
    ``neighbors``), at most ``max_duplicate_positives`` queries per positive id in a batch.

    Use as ``DataLoader(ds, batch_sampler=ClusterBatchSampler(labels, 32))``. ``set_epoch(e)``
    gives epoch e its own plan (seeded by seed and e); ``refresh(new_group_ids)`` re-clusters:
    the queries not yet yielded in the current epoch are re-planned at once from the new
    labels (e.g. every N steps, from k-means over fresh embeddings), and later epochs use them.
    ``len()`` is the number of batches of the current epoch's plan."""

    def __init__(self, group_ids, batch_size: int, *, drop_last=False, neighbors=None,
                 groups_per_batch=2, positives=None, max_duplicate_positives=1, seed=0,
                 ctx=None):
        self._kw = dict(drop_last=drop_last, groups_per_batch=groups_per_batch,
                        max_duplicate_positives=max_duplicate_positives, ctx=ctx)
        self.batch_size = batch_size
        self.drop_last = drop_last
        self.seed = seed
        self.epoch = 0
        self._refreshes = 0
        self._positives = None if positives is None else _id_lists(
            positives, "ClusterBatchSampler", "positives", len(np.asarray(group_ids).ravel()))
        self._set_groups(group_ids, neighbors)
        self._plan_cache = None

    def _set_groups(self, group_ids, neighbors):
        g = np.ascontiguousarray(np.asarray(group_ids).ravel(), dtype=np.int64)
        if self._positives is not None and self._positives.offsets.size - 1 != g.size:
            raise InvalidArgument(f"ClusterBatchSampler: {g.size} group ids but positives has "
                                  f"{self._positives.offsets.size - 1} lists")
        self._groups = g
        self._neighbors = neighbors
        # plan once here, so bad input fails at construction, not inside a training loop
        self._plan(np.arange(g.size), self.epoch, self._refreshes)

    def _plan(self, rows, epoch, refreshes):
        pos = _subset_lists(self._positives, rows) if len(rows) != self._groups.size \
            else self._positives
        p = plan_batches(self._groups[rows], self.batch_size, neighbors=self._neighbors,
                         positives=pos, seed=self.seed, epoch=(epoch << 16) | refreshes,
                         **self._kw)
        order = rows[p.order]
        return [order[p.offsets[b]:p.offsets[b + 1]].tolist() for b in range(p.offsets.size - 1)]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = chk.integer(epoch, "ClusterBatchSampler.set_epoch", "epoch", 0)

    def refresh(self, group_ids, neighbors=None) -> None:
        """New group ids (and neighbour table) for the rest of this epoch and the next ones."""
        self._refreshes += 1
        self._set_groups(group_ids, neighbors)

    def _epoch_plan(self):
        key = (self.epoch, self._refreshes)
        if self._plan_cache is None or self._plan_cache[0] != key:
            self._plan_cache = (key, self._plan(np.arange(self._groups.size), self.epoch,
                                                self._refreshes))
        return self._plan_cache[1]

    def __len__(self) -> int:
        return len(self._epoch_plan())

    def __iter__(self):
        batches, version = self._epoch_plan(), self._refreshes
        done = np.zeros(self._groups.size, dtype=bool)
        k = 0
        while k < len(batches):
            b = batches[k]
            k += 1
            done[b] = True
            yield b
            if self._refreshes != version:  # re-plan what is left from the new groups
                version = self._refreshes
                batches, k = self._plan(np.flatnonzero(~done), self.epoch, version), 0
