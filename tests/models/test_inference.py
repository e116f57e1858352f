"""The inference model (plm-embed / plm-search) preprocesses images exactly as training-time evaluation does."""

import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from plm_lightning.config import load_config
from plm_lightning.data.datamodule import RetrievalDataModule
from plm_lightning.models.head import backbone_input_space
from plm_lightning.models.inference import TrainedModel

sys.path.insert(0, str(Path(__file__).parents[1] / "data"))
from trees import make_cub_tree  # noqa: E402


@pytest.mark.parametrize("backbone", ["googlenet", "bn_inception", "resnet50"])
def test_eval_transform_is_the_datamodules(backbone, tmp_path):
    cfg = load_config(
        "cub_googlenet.yaml",
        [f"data.root={make_cub_tree(tmp_path / 'cub')}", "data.check_counts=false", f"model.backbone={backbone}"],
    )
    model = TrainedModel(nn.Identity(), cfg, in_channels=3, ckpt="unused.ckpt", device=torch.device("cpu"))
    datamodule = RetrievalDataModule(cfg.data, backbone_channels=3, input_space=backbone_input_space(backbone))
    expected = datamodule._dataset("test", train_transform=False)
    image = expected.load(0)
    assert torch.equal(model.image_transform()(image), expected.transform(image))
    assert repr(model.eval_transform(cfg.data)) == repr(expected.transform)
