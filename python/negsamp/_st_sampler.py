"""ClusterBatchSampler for SentenceTransformerTrainer (re-exported by
negsamp.sentence_transformers): a sentence-transformers DefaultBatchSampler whose batches
ns_plan_batches plans from cluster labels (TAS-B) or a group-neighbour table (NGAME).

The trainer builds its batch sampler itself, from (dataset, batch_size, drop_last,
valid_label_columns, generator, seed); the group ids cannot come from a dataset column (the
collator would tokenize it), so ``cluster_batch_sampler(group_ids, ...)`` returns the callable
to pass as ``SentenceTransformerTrainingArguments(batch_sampler=...)``."""
from __future__ import annotations

import functools

import numpy as np

from ._errors import InvalidArgument
from .batch_sampler import ClusterBatchSampler as _Planner


def _default_batch_sampler():
    try:
        from sentence_transformers.base.sampler import DefaultBatchSampler
    except ImportError:  # sentence-transformers before 6
        from sentence_transformers.sampler import DefaultBatchSampler
    return DefaultBatchSampler


def _text_ids(dataset, skip):
    """Per row, ids of its texts (every string column but the labels): two rows sharing a
    text share an id, so a cap of 1 keeps duplicates out of a batch (as NoDuplicates does)."""
    table, lists = {}, [[] for _ in range(len(dataset))]
    for col in dataset.column_names:
        if col in skip:
            continue
        for i, v in enumerate(dataset[col]):
            if isinstance(v, str):
                lists[i].append(table.setdefault(v, len(table)))
    return lists


class ClusterBatchSampler(_default_batch_sampler()):
    """Batches of one cluster (or of a cluster and its nearest clusters, with ``neighbors``)
    for SentenceTransformerTrainer; every row once per epoch, a new plan per epoch (seeded by
    the trainer's seed and the epoch the trainer sets). ``no_duplicates=True``: no text appears
    twice in a batch (in-batch false negatives), like sentence-transformers' NoDuplicates.
    ``refresh(new_group_ids)`` re-plans the rest of the epoch from new cluster labels."""

    def __init__(self, dataset, batch_size: int, drop_last: bool, valid_label_columns=None,
                 generator=None, seed: int = 0, *, group_ids, neighbors=None,
                 groups_per_batch=2, positives=None, max_duplicate_positives=1,
                 no_duplicates=False):
        super().__init__(dataset, batch_size=batch_size, drop_last=drop_last,
                         valid_label_columns=valid_label_columns, generator=generator, seed=seed)
        g = np.asarray(group_ids).ravel()
        if g.size != len(dataset):
            raise InvalidArgument(f"ClusterBatchSampler: {g.size} group ids for a dataset of "
                                  f"{len(dataset)} rows (one id per row)")
        if no_duplicates and positives is not None:
            raise InvalidArgument("ClusterBatchSampler: give positives or no_duplicates, not both")
        if no_duplicates:
            positives = _text_ids(dataset, set(valid_label_columns or ()))
            max_duplicate_positives = 1
        self.planner = _Planner(g, batch_size, drop_last=drop_last, neighbors=neighbors,
                                groups_per_batch=groups_per_batch, positives=positives,
                                max_duplicate_positives=max_duplicate_positives, seed=seed)

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        self.planner.set_epoch(epoch)

    def refresh(self, group_ids, neighbors=None) -> None:
        self.planner.refresh(group_ids, neighbors)

    def __len__(self) -> int:
        return len(self.planner)

    def __iter__(self):
        self.planner.set_epoch(self.epoch)
        return iter(self.planner)


def cluster_batch_sampler(group_ids, **options):
    """The ``batch_sampler`` argument of SentenceTransformerTrainingArguments for batches
    planned from ``group_ids`` (one per training row); options as ClusterBatchSampler's."""
    return functools.partial(ClusterBatchSampler, group_ids=group_ids, **options)
