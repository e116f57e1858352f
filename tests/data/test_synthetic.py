"""The synthetic manifolds dataset: a pure function of its config, class-disjoint splits, the documented geometry
(flat pieces at curvature 0, bent along a normal direction otherwise), vector items, parameter validation, and
plm-fit end to end on the bundled synthetic.yaml."""

import json
import math
import os
import pickle

import pytest
import torch
from runner import run_cli

from plm_lightning.config import load_config
from plm_lightning.config.schema import DataConfig, SyntheticConfig
from plm_lightning.data.registry import DATASETS
from plm_lightning.data.synthetic import SyntheticManifoldsDataset, generate_synthetic_manifolds
from plm_lightning.data.transforms import VECTOR_JITTER_STD, build_transform

SMALL = dict(num_classes=6, points_per_class=40, intrinsic_dim=2, ambient_dim=12)


def make(split, transform=None, **overrides):
    data_cfg = DataConfig(name="synthetic", synthetic=SyntheticConfig(**{**SMALL, **overrides}))
    return SyntheticManifoldsDataset.from_config(split, transform, data_cfg)


def class_singular_values(points, labels):
    """Singular values of each class's centred points (rows: classes)."""
    return torch.stack(
        [torch.linalg.svdvals((points[labels == k] - points[labels == k].mean(0)).double()) for k in labels.unique()]
    )


def vector_transform(train):
    return build_transform(
        augmentation="vector", train=train, augment=True, image_size=227, resize=256, in_channels=12, out_channels=12
    )


def test_registered_and_input_channels_follow_ambient_dim():
    assert DATASETS["synthetic"] is SyntheticManifoldsDataset
    assert not SyntheticManifoldsDataset.needs_root
    assert SyntheticManifoldsDataset.input_channels(DataConfig(synthetic=SyntheticConfig(ambient_dim=7))) == 7


def test_same_config_same_data_and_seed_changes_it():
    a, b = make("train"), make("train")
    assert torch.equal(a.points, b.points) and torch.equal(a.labels, b.labels)
    c = make("train", seed=1)
    assert not torch.allclose(a.points, c.points)
    # Train and test come from one generated world: together they are all of it, in order.
    full, labels = generate_synthetic_manifolds(SyntheticConfig(**SMALL))
    assert torch.equal(torch.cat([a.points, make("test").points]), full)
    assert torch.equal(torch.cat([a.labels, make("test").labels]), labels)


def test_bundled_config_builds_the_default_world():
    cfg = load_config("synthetic.yaml")  # a DictConfig node, as in a run
    train = DATASETS[cfg.data.name].from_config("train", None, cfg.data)
    assert len(train) == 1000 and train.points.shape == (1000, 32)
    default, _ = generate_synthetic_manifolds(SyntheticConfig())
    assert torch.equal(train.points, default[:1000])


def test_split_sizes_and_class_disjointness():
    train, test = make("train", num_classes=7, points_per_class=10), make("test", num_classes=7, points_per_class=10)
    assert len(train) == 30 and len(test) == 40
    assert set(train.labels.tolist()) == {0, 1, 2} and set(test.labels.tolist()) == {3, 4, 5, 6}
    assert train.num_classes == 3 and test.num_classes == 4
    assert torch.bincount(test.labels).tolist() == [0, 0, 0, 10, 10, 10, 10]


@pytest.mark.parametrize("r", [1, 2, 3])
def test_curvature_zero_gives_flat_pieces_and_curvature_bends_them(r):
    flat, labels = generate_synthetic_manifolds(
        SyntheticConfig(**{**SMALL, "intrinsic_dim": r}, curvature=0.0, noise=0.0)
    )
    sv = class_singular_values(flat, labels)
    assert (sv[:, r - 1] > 1.0).all()  # r tangent directions, each spanning [-1, 1] over 40 points
    assert (sv[:, r:] < 1e-5 * sv[:, :1]).all()  # nothing else: an affine r-dimensional piece (float32 rounding)

    bent, _ = generate_synthetic_manifolds(SyntheticConfig(**{**SMALL, "intrinsic_dim": r}, curvature=1.0, noise=0.0))
    sv = class_singular_values(bent, labels)
    assert (sv[:, r] > 1e-2 * sv[:, 0]).all()  # bent out of the flat piece...
    assert (sv[:, r + 1 :] < 1e-5 * sv[:, :1]).all()  # ...along exactly one normal direction
    # Same world: only the bending term differs, and it is orthogonal to each class's tangent directions.
    for k in labels.unique():
        piece = (flat[labels == k] - flat[labels == k][0]).double()
        tangent = torch.linalg.svd(piece, full_matrices=False).Vh[:r]  # r x D
        offset = (bent[labels == k] - flat[labels == k]).double()
        assert torch.allclose(offset @ tangent.T, torch.zeros(1, dtype=torch.float64), atol=1e-5)
        assert offset.norm(dim=1).max() > 0.3


def test_all_classes_share_one_subspace_and_noise_fills_the_rest():
    points, _ = generate_synthetic_manifolds(SyntheticConfig(**SMALL, noise=0.0))
    sv = torch.linalg.svdvals((points - points.mean(0)).double())
    assert (sv[3:] < 1e-5 * sv[0]).all()  # intrinsic_dim + 1 = 3 dimensions in all
    noisy, _ = generate_synthetic_manifolds(SyntheticConfig(**SMALL, noise=0.01))
    residual = torch.linalg.svdvals((noisy - points).double()) / math.sqrt(len(points))
    assert torch.allclose(residual, torch.full_like(residual, 0.01), rtol=0.3)  # isotropic in all 12 dimensions


def test_items_are_float32_vectors_and_transforms():
    raw = make("test")
    vector, label, index = raw[5]
    assert vector.dtype == torch.float32 and vector.shape == (12,)
    assert isinstance(label, int) and 3 <= label <= 5 and index == 5

    evaluated = make("test", transform=vector_transform(train=False))
    assert torch.equal(evaluated[5][0], vector)  # eval: no jitter, no normalisation
    trained = make("test", transform=vector_transform(train=True))
    jittered = torch.stack([trained[5][0] for _ in range(200)])
    assert jittered.dtype == torch.float32 and not torch.equal(jittered[0], vector)
    assert (jittered - vector).std().item() == pytest.approx(VECTOR_JITTER_STD, rel=0.2)
    restored = pickle.loads(pickle.dumps(vector_transform(train=True)))  # DataLoader workers pickle it
    assert restored(torch.zeros(4, dtype=torch.float64)).dtype == torch.float32


@pytest.mark.parametrize(
    "overrides, key",
    [
        (dict(intrinsic_dim=12), "data.synthetic.ambient_dim"),
        (dict(intrinsic_dim=3, ambient_dim=3), "data.synthetic.ambient_dim"),
        (dict(intrinsic_dim=0), "data.synthetic.intrinsic_dim"),
        (dict(num_classes=1), "data.synthetic.num_classes"),
        (dict(points_per_class=1), "data.synthetic.points_per_class"),
        (dict(curvature=-0.5), "data.synthetic.curvature"),
        (dict(noise=float("nan")), "data.synthetic.noise"),
        (dict(separation=-1.0), "data.synthetic.separation"),
    ],
)
def test_invalid_parameters_name_their_key(overrides, key):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        make("train", **overrides)


def test_ambient_dim_one_more_than_intrinsic_is_enough():
    train = make("train", intrinsic_dim=3, ambient_dim=4)
    assert train.points.shape == (120, 4)


@pytest.mark.slow
def test_fit_on_synthetic_writes_metrics(tmp_path):
    env = dict(os.environ, WANDB_MODE="offline", WANDB_SILENT="true")
    env.pop("WANDB_API_KEY", None)
    run_dir = tmp_path / "run"
    result = run_cli(
        "fit",
        "--config",
        "synthetic.yaml",
        f"run.dir={run_dir}",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=4",
        "trainer.enable_progress_bar=false",
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for part in ("initial", "final"):
        assert 0.0 <= metrics[part]["R@1"] <= 100.0
    assert metrics["final"]["R@1"] > 20  # far above chance (9.9%) after a few steps
    assert "name: synthetic" in (run_dir / "config.yaml").read_text()
