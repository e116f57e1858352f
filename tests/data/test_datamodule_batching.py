"""The DataModule owns the training batches: it rebuilds the nearest-neighbour table from the embeddings a training
method supplies (start_epoch), and its state_dict carries what a resumed run needs (the epoch; the table when it
outlives an epoch)."""

import pytest
import torch

from plm_lightning.config import load_config
from plm_lightning.data.datamodule import RetrievalDataModule
from plm_lightning.data.sampler import NearestNeighbourBatchSampler, RandomBatchSampler, neighbour_table


def _datamodule(sampling="neighbours", **overrides):
    cfg = load_config("digits.yaml", [f"{k}={v}" for k, v in overrides.items()])
    dm = RetrievalDataModule(cfg.data, backbone_channels=1, seed=0, sampling=sampling)
    dm.setup("fit")
    return dm


class PixelEmbedder:
    """Embeds a loader's images as their flattened pixels, in dataset order; counts its calls."""

    def __init__(self):
        self.calls = 0

    def __call__(self, loader):
        self.calls += 1
        pieces = [(index, images.flatten(1)) for images, _, index in loader]
        index = torch.cat([i for i, _ in pieces])
        embeddings = torch.cat([e for _, e in pieces])
        return embeddings[torch.argsort(index)]


def test_start_epoch_builds_the_table_from_the_supplied_embeddings_every_refresh_every_epochs():
    dm = _datamodule(**{"data.sampler.refresh_every": 2})
    embed = PixelEmbedder()
    refresh = dm.start_epoch(0, embed)
    assert embed.calls == 1 and refresh is not None
    assert refresh.embeddings.shape[0] == len(dm.train_eval_set)
    expected = neighbour_table(refresh.embeddings, dm.cfg.sampler.neighbours_per_seed)
    assert torch.equal(refresh.table, expected) and torch.equal(dm.batch_sampler.neighbours, expected)
    assert dm.batch_sampler.epoch == 0
    assert dm.start_epoch(1, embed) is None and embed.calls == 1  # kept between refreshes
    assert dm.batch_sampler.epoch == 1
    assert dm.start_epoch(2, embed) is not None and embed.calls == 2


def test_state_dict_restores_the_batches_of_a_resumed_epoch_even_before_setup():
    dm = _datamodule(**{"data.sampler.refresh_every": 2})
    dm.start_epoch(0, PixelEmbedder())
    dm.start_epoch(1, PixelEmbedder())
    state = dm.state_dict()
    assert state["epoch"] == 1 and torch.equal(state["neighbours"], dm.batch_sampler.neighbours)

    cfg = load_config("digits.yaml", ["data.sampler.refresh_every=2"])
    resumed = RetrievalDataModule(cfg.data, backbone_channels=1, seed=0)
    resumed.load_state_dict(state)  # Lightning may restore before setup(): the state waits for the sampler
    resumed.setup("fit")
    assert resumed.batch_sampler.epoch == 1
    assert list(resumed.batch_sampler) == list(dm.batch_sampler)  # the same batches as the uninterrupted run


def test_a_table_rebuilt_every_epoch_is_not_checkpointed():
    dm = _datamodule()
    dm.start_epoch(0, PixelEmbedder())
    assert dm.state_dict() == {"epoch": 0}


def test_random_batches_need_no_embeddings():
    dm = _datamodule("random")
    assert isinstance(dm.batch_sampler, RandomBatchSampler)
    assert dm.start_epoch(3) is None and dm.batch_sampler.epoch == 3
    assert dm.state_dict() == {"epoch": 3}


def test_nearest_neighbour_batches_without_embeddings_or_with_a_short_pass_fail_clearly():
    dm = _datamodule()
    assert isinstance(dm.batch_sampler, NearestNeighbourBatchSampler)
    with pytest.raises(RuntimeError, match="embeddings"):
        dm.start_epoch(0)
    with pytest.raises(RuntimeError, match="gave 3 of"):
        dm.start_epoch(0, lambda loader: torch.zeros(3, 8))


def test_an_approximate_index_builds_the_table_when_asked():
    dm = _datamodule(**{"data.sampler.index": "hnsw"})
    refresh = dm.start_epoch(0, PixelEmbedder())
    exact = neighbour_table(refresh.embeddings, dm.cfg.sampler.neighbours_per_seed)
    assert torch.equal(refresh.table[:, 0], exact[:, 0])  # each point first
    same = (refresh.table[:, 1:].unsqueeze(2) == exact[:, 1:].unsqueeze(1)).any(2).float().mean()
    assert same >= 0.9  # digits' pixel space: HNSW finds nearly all exact neighbours
    assert torch.equal(dm.batch_sampler.neighbours, refresh.table)
