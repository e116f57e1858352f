"""Backbones through the embedder: output shapes for vector (mlp) and image (small_cnn, googlenet, resnet50,
bn_inception) input with every embedding size; pooling; the input space each backbone's weights expect; no pretrained
weights for the small ones, and one clear line when the others cannot be downloaded."""

from urllib.error import URLError

import pytest
import torch
from torchvision.transforms import v2

from plm_lightning.config import ConfigError, load_config
from plm_lightning.data.transforms import IMAGENET_MEAN, IMAGENET_STD, INPUT_SPACES
from plm_lightning.models.backbones import BACKBONES, PretrainedWeightsError, mlp, small_cnn
from plm_lightning.models.head import (
    Embedder,
    EmbeddingHead,
    backbone_input_channels,
    backbone_input_space,
    build_embedder,
)


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
    embedder = build_embedder(
        "small_cnn", embedding_dim=16, pooling="avg+max", pretrained=False, in_channels=1, width=8
    )
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


# --- ImageNet-size backbones (weights=None here: no network in tests) --------------------------------------------
@pytest.fixture(scope="module")
def image_backbones():
    torch.manual_seed(0)
    return {
        name: BACKBONES[name].build(pretrained=False, in_channels=3, width=0).eval()
        for name in ("googlenet", "resnet50", "bn_inception")
    }


@pytest.mark.parametrize("name,channels", [("googlenet", 1024), ("resnet50", 2048), ("bn_inception", 1024)])
def test_image_backbones_with_every_embedding_size(image_backbones, name, channels):
    x = torch.randn(2, 3, 64, 64)  # small: GoogLeNet needs >= 16 px, BN-Inception >= 63 px
    with torch.no_grad():
        features = image_backbones[name](x)
    assert features.shape[:2] == (2, channels) and BACKBONES[name].out_channels(0) == channels
    for dim in (64, 128, 512):
        head = EmbeddingHead(channels, dim, "avg+max")
        with torch.no_grad():
            out = head(features)
        assert out.shape == (2, dim) and torch.isfinite(out).all()
    with torch.no_grad():  # the composed embedder gives the same (one pass: resnet50 is slow on a shared CPU)
        assert torch.allclose(Embedder(image_backbones[name], head)(x), out, atol=1e-5)


def test_pooling_outputs():
    features = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).reshape(2, 3, 2, 2)
    expected = {"avg": features.mean(dim=(2, 3)), "max": features.amax(dim=(2, 3))}
    expected["avg+max"] = expected["avg"] + expected["max"]
    for pooling, pooled in expected.items():
        head = EmbeddingHead(3, 3, pooling)
        with torch.no_grad():
            head.linear.weight.copy_(torch.eye(3))
        assert torch.allclose(head(features), pooled), pooling
    assert torch.equal(expected["max"][0], torch.tensor([3.0, 7.0, 11.0]))
    with pytest.raises(ValueError, match="pooling"):
        EmbeddingHead(3, 3, "sum")


def test_head_is_orthogonal_at_initialisation():
    head = EmbeddingHead(1024, 128)
    w = head.linear.weight
    assert torch.allclose(w @ w.T, torch.eye(128), atol=1e-4) and not head.linear.bias.any()


def test_input_spaces():
    assert {n: s.input_space for n, s in BACKBONES.items()} == {
        "small_cnn": "any",
        "mlp": "any",
        "googlenet": "imagenet_rgb",
        "resnet50": "imagenet_rgb",
        "bn_inception": "caffe_bgr255",
    }
    assert all(s.input_space in INPUT_SPACES for s in BACKBONES.values())
    assert backbone_input_space("bn_inception") == "caffe_bgr255"


def test_googlenet_maps_its_input_the_same_with_or_without_downloaded_weights(image_backbones):
    """transform_input is on whether or not the weights are downloaded: a checkpoint of a pretrained GoogLeNet,
    rebuilt without the download (plm-eval, plm-embed, model.weights), computes the function that was trained."""
    assert image_backbones["googlenet"].net.transform_input is True


def test_googlenet_transform_input_is_what_its_ported_weights_want():
    """With weights torchvision sets transform_input=True: our ImageNet-normalised input x_n = (x - mean) / std must
    come out as (x - 0.5) / 0.5 on the [0, 1] image x, the scaling the ported weights were trained with."""
    from torchvision.models import GoogLeNet

    net = GoogLeNet(transform_input=True, aux_logits=False, init_weights=False)
    x = torch.rand(2, 3, 8, 8)
    normalised = v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)(x)
    assert torch.allclose(net._transform_input(normalised), (x - 0.5) / 0.5, atol=1e-5)


def test_torchvision_weights_without_network_one_clear_line(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def offline(url, **kwargs):
        raise URLError(ConnectionRefusedError(111, "Connection refused"))

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(PretrainedWeightsError) as info:
        BACKBONES["googlenet"].build(pretrained=True, in_channels=3, width=0)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("could not download pretrained googlenet weights: no network (")
    assert message.endswith("set model.pretrained=false")
