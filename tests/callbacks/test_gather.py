"""Gathering embeddings across ranks by dataset index: padding and duplicates are dropped, order is by index."""

import torch

from plm_lightning.models.embedding_pass import gather_by_index


def fake_all_gather(shards):
    """all_gather over simulated ranks: each call stacks what every rank contributes at the same call number."""
    calls = {"n": 0}

    def gather(tensor):
        # rank 0's tensor is passed in; the other ranks' tensors for the same call come from ``shards``
        i = calls["n"]
        calls["n"] += 1
        return torch.stack([tensor] + [s[i] for s in shards])

    return gather


def test_two_ranks_with_padding_and_a_duplicate():
    emb = torch.arange(14, dtype=torch.float32).view(7, 2)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3])
    # rank 0 holds 0, 2, 4, 6; rank 1 holds 1, 3, 5 and a repeat of 0 (as a padding sampler would)
    r0 = torch.tensor([0, 2, 4, 6])
    r1 = torch.tensor([1, 3, 5, 0])
    rank1_calls = [torch.tensor([4]), r1, emb[r1], labels[r1]]
    idx, e, lab = gather_by_index(fake_all_gather([rank1_calls]), 2, r0, emb[r0], labels[r0])
    assert idx.tolist() == list(range(7))
    assert torch.equal(e, emb) and torch.equal(lab, labels)


def test_unequal_shards_are_padded_then_dropped():
    emb = torch.randn(5, 3)
    labels = torch.tensor([1, 2, 3, 4, 5])
    r0, r1 = torch.tensor([0, 2, 4]), torch.tensor([1, 3])
    pad = lambda t, v: torch.cat([t, t.new_full((1,) + t.shape[1:], v)])  # noqa: E731
    rank1_calls = [torch.tensor([2]), pad(r1, -1), pad(emb[r1], 0.0), pad(labels[r1], -1)]
    idx, e, lab = gather_by_index(fake_all_gather([rank1_calls]), 2, r0, emb[r0], labels[r0])
    assert idx.tolist() == [0, 1, 2, 3, 4]
    assert torch.equal(e, emb) and torch.equal(lab, labels)
