"""BN-Inception: the pretrainedmodels "bninception" architecture (shapes, parameter count, state-dict names), loading
its published weight format, the input sizes it accepts, and a clear one-line error without network."""

from urllib.error import URLError

import pytest
import torch

from plm_lightning.config import ConfigError, load_config
from plm_lightning.models import backbones
from plm_lightning.models.backbones import BACKBONES, PretrainedWeightsError
from plm_lightning.models.bn_inception import (
    BLOCKS,
    WEIGHTS_URL,
    BNInception,
    bn_inception_map_size,
    load_pretrained_state,
)

# Cadene's pretrainedmodels BNInception has 11,295,240 parameters; minus its 1024 x 1000 classifier (1,025,000):
REFERENCE_BACKBONE_PARAMETERS = 10_270_240


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return BNInception().eval()


def test_feature_map_shape_and_channels(net):
    with torch.no_grad():
        assert net(torch.randn(2, 3, 64, 64)).shape == (2, 1024, 2, 2)
        assert net(torch.randn(1, 3, 227, 227)).shape == (1, 1024, 7, 7)  # the DML crop: 7 x 7 as at 224
    assert [b.out_channels for b in BLOCKS] == [256, 320, 576, 576, 576, 608, 608, 1056, 1024, 1024]
    assert BACKBONES["bn_inception"].out_channels(0) == 1024
    assert BACKBONES["bn_inception"].input_space == "caffe_bgr255"


def test_parameter_count_matches_the_reference(net):
    assert sum(p.numel() for p in net.parameters()) == REFERENCE_BACKBONE_PARAMETERS


def test_state_dict_names_are_those_of_the_published_weights(net):
    state = net.state_dict()
    # Spot checks against pretrainedmodels/models/bninception.py (name -> shape).
    expected = {
        "conv1_7x7_s2.weight": (64, 3, 7, 7),
        "conv1_7x7_s2.bias": (64,),
        "conv1_7x7_s2_bn.running_mean": (64,),
        "conv2_3x3_reduce.weight": (64, 64, 1, 1),
        "conv2_3x3.weight": (192, 64, 3, 3),
        "inception_3a_1x1.weight": (64, 192, 1, 1),
        "inception_3a_pool_proj_bn.weight": (32,),
        "inception_3c_3x3.weight": (160, 128, 3, 3),
        "inception_3c_double_3x3_2_bn.running_var": (96,),
        "inception_4a_1x1.weight": (224, 576, 1, 1),
        "inception_4e_double_3x3_2.weight": (256, 256, 3, 3),
        "inception_5a_1x1.weight": (352, 1056, 1, 1),
        "inception_5b_pool_proj_bn.bias": (128,),
    }
    for key, shape in expected.items():
        assert tuple(state[key].shape) == shape, key
    assert not any(
        k.startswith(("inception_3c_1x1", "inception_3c_pool_proj", "inception_4e_1x1", "last_linear")) for k in state
    )
    assert all(k.split(".")[0].startswith(("conv", "inception_")) for k in state)  # flat names, no nesting
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    norms = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(convs) == len(norms) == 69 and all(n.eps == 1e-5 for n in norms)
    assert all(m.ceil_mode for m in net.modules() if isinstance(m, torch.nn.MaxPool2d))


def test_published_format_loads_strictly():
    """The published file stores batch-norm tensors as 1 x C, carries the classifier and no num_batches_tracked."""
    torch.manual_seed(1)
    source = BNInception()
    published = {
        k: (v.unsqueeze(0) if v.dim() == 1 else v)
        for k, v in source.state_dict().items()
        if not k.endswith("num_batches_tracked")
    }
    published["last_linear.weight"] = torch.zeros(1000, 1024)
    published["last_linear.bias"] = torch.zeros(1000)
    target = BNInception()
    load_pretrained_state(target, published)
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key
    published["unexpected.weight"] = torch.zeros(1)
    with pytest.raises(RuntimeError, match="unexpected"):
        load_pretrained_state(BNInception(), published)


def test_input_sizes():
    assert bn_inception_map_size(224) == bn_inception_map_size(227) == 7
    assert bn_inception_map_size(64) == 2
    assert bn_inception_map_size(32) is None  # too small for inception_4e's pool
    assert bn_inception_map_size(80) is None  # 5 x 5 before inception_4e: its branches would disagree
    assert bn_inception_map_size(48) is None  # 3 x 3 before inception_3c
    with pytest.raises(ValueError, match="inception_4e.*224 or 227"), torch.no_grad():
        BNInception().eval()(torch.randn(1, 3, 80, 80))


def test_config_rejects_an_image_size_that_does_not_fit():
    overrides = ["model.backbone=bn_inception", "model.pretrained=false"]
    load_config("digits.yaml", overrides + ["data.image_size=64"])
    with pytest.raises(ConfigError, match="data.image_size"):
        load_config("digits.yaml", overrides + ["data.image_size=80"])


def test_without_network_one_clear_line(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    seen = {}

    def offline(url, **kwargs):
        seen.update(kwargs, url=url)
        raise URLError(OSError(101, "Network is unreachable"))

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(PretrainedWeightsError) as info:
        backbones.bn_inception(pretrained=True)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("could not download pretrained bn_inception weights: no network")
    assert "model.pretrained=false" in message and str(tmp_path) in message
    assert seen["url"] == WEIGHTS_URL and seen["check_hash"] and seen["weights_only"]


def test_corrupt_download_names_the_cache(monkeypatch):
    def bad_hash(url, **kwargs):
        raise RuntimeError('invalid hash value (expected "52deb4733", got "0123abcd")')

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", bad_hash)
    with pytest.raises(PretrainedWeightsError, match="invalid hash value.*model.pretrained=false"):
        backbones.bn_inception(pretrained=True)
