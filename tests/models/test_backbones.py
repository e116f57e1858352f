"""Backbones through the embedder: output shapes for vector (mlp) and image (small_cnn) input; no pretrained weights
for the small ones."""
import pytest
import torch

from plm_lightning.config import ConfigError, load_config
from plm_lightning.models.backbones import BACKBONES, mlp, small_cnn
from plm_lightning.models.head import backbone_input_channels, build_embedder


def test_mlp_features_and_embeddings():
    spec = BACKBONES["mlp"]
    assert spec.out_channels(24) == 24 and spec.input_channels == 0 and not spec.pretrainable
    assert backbone_input_channels("mlp", 32) == 32  # follows the dataset's vector length
    torch.manual_seed(0)
    embedder = build_embedder("mlp", embedding_dim=16, pooling="avg+max", pretrained=False, in_channels=32, width=24)
    x = torch.randn(5, 32)
    assert embedder.backbone(x).shape == (5, 24)
    out = embedder(x)
    assert out.shape == (5, 16) and out.dtype == torch.float32 and torch.isfinite(out).all()
    embedder.eval()
    assert embedder(x[:1]).shape == (1, 16)  # batch norm uses running statistics in eval mode


def test_small_cnn_features_and_embeddings():
    embedder = build_embedder("small_cnn", embedding_dim=16, pooling="avg+max", pretrained=False, in_channels=1,
                              width=8)
    x = torch.randn(2, 1, 16, 16)
    assert embedder.backbone(x).shape == (2, 16, 8, 8)  # 2 * width channels, one 2x pooling
    assert embedder(x).shape == (2, 16)


@pytest.mark.parametrize("build", [mlp, small_cnn])
def test_small_backbones_have_no_pretrained_weights(build):
    with pytest.raises(ValueError, match="model.pretrained=false"):
        build(pretrained=True, in_channels=3, width=8)


def test_config_rejects_pretrained_mlp():
    with pytest.raises(ConfigError, match="model.pretrained"):
        load_config("synthetic.yaml", ["model.pretrained=true"])
