"""negsamp.plan_batches, negsamp.ClusterBatchSampler and the sentence-transformers batch
sampler: every index once per epoch (also across a mid-epoch refresh), group-pure batches, the
duplicate-positive cap, seeds and epochs, a DataLoader and an offline SentenceTransformerTrainer
run whose batches are all of one cluster."""
import functools
import os

import numpy as np
import pytest

try:  # before libnegsamp loads: torch's own NCCL must be the libnccl.so.2 the process holds
    import torch  # noqa: F401
except ImportError:
    torch = None

import negsamp

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_DISABLED", "true")


def _groups(sizes, seed=0):
    g = np.repeat(np.arange(len(sizes)) * 7 + 3, sizes)
    return np.random.default_rng(seed).permutation(g)


def _batches(plan):
    return [plan.order[plan.offsets[b]:plan.offsets[b + 1]] for b in range(plan.offsets.size - 1)]


def test_plan_covers_and_is_pure():
    g = _groups([64, 96, 32, 128])
    p = negsamp.plan_batches(g, 32, seed=1)
    assert sorted(p.order.tolist()) == list(range(g.size))
    for b in _batches(p):  # sizes are multiples of 32: every batch is one group
        assert len(set(g[b].tolist())) == 1
    q = negsamp.plan_batches(g, 32, seed=1)
    assert np.array_equal(p.order, q.order)
    assert not np.array_equal(p.order, negsamp.plan_batches(g, 32, seed=2).order)
    assert not np.array_equal(p.order, negsamp.plan_batches(g, 32, seed=1, epoch=1).order)


def test_plan_positive_cap_and_neighbors():
    r = np.random.default_rng(3)
    g = r.integers(0, 4, 300)
    pos = [[int(x)] for x in r.integers(0, 30, 300)]
    p = negsamp.plan_batches(g, 16, positives=pos, max_duplicate_positives=2)
    assert sorted(p.order.tolist()) == list(range(300))
    for b in _batches(p):
        ids, counts = np.unique([pos[i][0] for i in b], return_counts=True)
        assert counts.max() <= 2
    nb = [[1], [2], [3], [0]]
    p = negsamp.plan_batches(g, 16, neighbors=nb, groups_per_batch=2)
    assert sorted(p.order.tolist()) == list(range(300))
    with pytest.raises(negsamp.InvalidArgument, match="batch_size"):
        negsamp.plan_batches(g, 0)
    with pytest.raises(negsamp.InvalidArgument, match="group"):
        negsamp.plan_batches(g + 10, 16, neighbors=nb)


def test_dataloader_covers_every_index_each_epoch():
    torch = pytest.importorskip("torch")
    from torch.utils.data import DataLoader, TensorDataset
    g = _groups([40, 25, 70, 13], seed=4)
    ds = TensorDataset(torch.arange(g.size))
    sampler = negsamp.ClusterBatchSampler(g, 16, seed=5)
    loader = DataLoader(ds, batch_sampler=sampler)
    seen = []
    for epoch in range(2):
        sampler.set_epoch(epoch)
        batches = [b[0].tolist() for b in loader]
        assert len(batches) == len(sampler)
        assert sorted(sum(batches, [])) == list(range(g.size))
        seen.append(batches)
    assert seen[0] != seen[1]  # a new plan per epoch


def test_refresh_mid_epoch_replans_the_rest():
    pytest.importorskip("torch")
    g = _groups([64, 64, 64], seed=6)
    sampler = negsamp.ClusterBatchSampler(g, 16, seed=7)
    new = _groups([48, 48, 48, 48], seed=8)
    out = []
    for k, b in enumerate(sampler):
        out.append(b)
        if k == 3:
            sampler.refresh(new)
    assert sorted(sum(out, [])) == list(range(g.size))
    after = out[4:]  # planned from the new labels: pure in them except at group boundaries
    impure = sum(len(set(new[b].tolist())) > 1 for b in after)
    assert impure <= 3, impure


def test_sentence_transformers_trainer_batches_are_cluster_pure(tmp_path):
    torch = pytest.importorskip("torch")
    pytest.importorskip("sentence_transformers")
    datasets = pytest.importorskip("datasets")
    pytest.importorskip("tokenizers")
    from sentence_transformers import (SentenceTransformerTrainer,
                                       SentenceTransformerTrainingArguments)
    from negsamp import sentence_transformers as nst
    from test_sentence_transformers import WORDS, tiny_model

    r = np.random.default_rng(9)
    n, bs = 64, 8
    topic = np.repeat(np.arange(4), n // 4)  # a topic = a set of 8 words
    vocab = np.array(WORDS[:32]).reshape(4, 8)
    anchors = [" ".join(r.choice(vocab[t], 3, replace=False)) + f" {i}" for i, t in
               enumerate(topic)]
    positives = [" ".join(r.choice(vocab[t], 3, replace=False)) for t in topic]
    ds = datasets.Dataset.from_dict({"anchor": anchors, "positive": positives})
    seen = []

    class Recording(nst.ClusterBatchSampler):
        def __iter__(self):
            for b in super().__iter__():
                seen.append((self.epoch, list(b)))
                yield b

    torch.manual_seed(0)
    model = tiny_model(seed=10)
    args = SentenceTransformerTrainingArguments(
        output_dir=str(tmp_path), num_train_epochs=2, per_device_train_batch_size=bs,
        learning_rate=0.1, logging_steps=1, report_to=[], save_strategy="no", use_cpu=True,
        seed=0, dataloader_num_workers=0, disable_tqdm=True,
        batch_sampler=functools.partial(Recording, group_ids=topic, no_duplicates=True))
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=ds,
                                         loss=nst.MultipleNegativesRankingLoss(model))
    trainer.train()
    assert {e for e, _ in seen} == {0, 1}
    for epoch in range(2):
        assert sorted(sum([b for e, b in seen if e == epoch], [])) == list(range(n))
    for _, b in seen:
        assert len(set(topic[b].tolist())) == 1, b
        texts = [ds[i]["positive"] for i in b] + [ds[i]["anchor"] for i in b]
        assert len(set(texts)) == len(texts)  # no_duplicates
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert all(np.isfinite(losses))
