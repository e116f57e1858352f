"""Synthetic classes on curved low-dimensional manifolds with known geometry (``data.name=synthetic``).

For the first of the method studies (docs/method.md) ("similarity accuracy on synthetic manifolds with known
geometry, as curvature grows"): every class is an r-dimensional surface in R^D whose curvature is one knob, so
the quality of the estimated similarity can be read against the true geometry. No download, no images: items are
float32 vectors.

Notation (the keys of ``data.synthetic``): C = num_classes, n = points_per_class, r = intrinsic_dim,
D = ambient_dim, kappa = curvature, sigma = noise, s = separation. Point i of class k is::

    x = c_k + A_k u + kappa * phi(u) * b_k + sigma * eps,    u ~ U[-1, 1]^r,  eps ~ N(0, I_D)
    phi(u) = ||u||^2 - r / 3                                    (E[phi(u)] = 0)

- Q (D x (r+1), orthonormal columns) is a random (r+1)-dimensional subspace shared by all classes.
- [A_k | b_k] = Q R_k with R_k a random orthogonal (r+1) x (r+1) matrix (QR of a Gaussian matrix): A_k (D x r)
  has orthonormal columns (the class's tangent directions at its vertex) and the unit vector b_k (D x 1, the
  frame B_k of the normal direction) is orthogonal to them.
- c_k = Q g_k * s / sqrt(r + 1), g_k ~ N(0, I_{r+1}), so E||c_k||^2 = s^2.

So kappa = 0 gives exactly flat (affine) r-dimensional square pieces; kappa > 0 bends each one into a paraboloid
whose principal curvatures at the vertex u = 0 are all 2 * kappa (the deviation from the tangent plane grows as
kappa * ||u||^2). phi takes its values along b_k, orthogonal to the tangent directions A_k.

Why one shared (r+1)-dimensional subspace: class surfaces with independent random frames in R^D hardly ever come
near each other (two random affine 2-planes in R^32 generically do not meet at all): raw-feature 1-NN Recall@1
measured 100% for every centre scale tried, so the benchmark would say nothing. Within a common (r+1)-space the
classes cut through each other along (r-1)-dimensional sets, like real classes that share their modes of variation;
the other D - r - 1 dimensions hold only noise. At the defaults (C=20, n=100, r=2, D=32, kappa=1, sigma=0.01, s=1,
seed=0) raw-feature 1-NN Recall@1 on the test split (retrieval.evaluate_embeddings) is 76.8% with Euclidean distance
and 43.6% with cosine (normalize=True; the classes sit near the origin), against 9.9% by chance (99 of 999 others
share the class). It falls as curvature grows (Euclidean, seed 0): 80.8% at curvature 0, 69.7% at 2, 64.1% at 4.

Classes 0 .. C//2 - 1 form the train split, the rest the test split; labels keep their global class ids. The data
is a pure function of the ``data.synthetic`` values: one torch.Generator seeded with ``seed`` draws, in a fixed
order, Q, all R_k, all g_k, all u and all eps for every class, and each split then selects its classes; changing
curvature, noise or separation alone therefore keeps every other random draw (the same world, bent or blurred
more).
"""

from __future__ import annotations

import math

import torch

from plm_lightning.data.base import RetrievalDataset

SYNTHETIC_KEYS = (
    "num_classes",
    "points_per_class",
    "intrinsic_dim",
    "ambient_dim",
    "curvature",
    "noise",
    "separation",
    "seed",
)


def _invalid(key: str, value, expectation: str) -> ValueError:
    return ValueError(f"invalid value for config key 'data.synthetic.{key}': {value!r} ({expectation})")


def validate_synthetic_config(cfg) -> None:
    """Raise ValueError naming the ``data.synthetic.*`` key of the first bad value."""
    for key in ("num_classes", "points_per_class", "intrinsic_dim", "ambient_dim", "seed"):
        value = getattr(cfg, key)
        if isinstance(value, bool) or not isinstance(value, int):
            raise _invalid(key, value, "must be an integer")
    if cfg.num_classes < 2:
        raise _invalid("num_classes", cfg.num_classes, "must be at least 2: half trains, half is the test split")
    if cfg.points_per_class < 2:
        raise _invalid("points_per_class", cfg.points_per_class, "must be at least 2: retrieval needs a positive")
    if cfg.intrinsic_dim < 1:
        raise _invalid("intrinsic_dim", cfg.intrinsic_dim, "must be at least 1")
    if cfg.ambient_dim <= cfg.intrinsic_dim:
        raise _invalid(
            "ambient_dim",
            cfg.ambient_dim,
            f"must be larger than data.synthetic.intrinsic_dim={cfg.intrinsic_dim}: each class needs "
            f"intrinsic_dim tangent directions and one normal direction to bend into",
        )
    for key in ("curvature", "noise", "separation"):
        value = getattr(cfg, key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise _invalid(key, value, "must be a finite non-negative number")


def generate_synthetic_manifolds(cfg) -> tuple[torch.Tensor, torch.Tensor]:
    """All classes of the world that ``cfg`` (the ``data.synthetic`` values) describes.

    Returns (points, labels): float32 (C * n) x D and int64 (C * n,), class k's points in rows k*n .. (k+1)*n - 1.
    """
    validate_synthetic_config(cfg)
    c, n, r, d = cfg.num_classes, cfg.points_per_class, cfg.intrinsic_dim, cfg.ambient_dim
    kappa, sigma, sep = float(cfg.curvature), float(cfg.noise), float(cfg.separation)
    g = torch.Generator().manual_seed(int(cfg.seed))
    f64 = torch.float64
    # The draws, always all of them and in this order (see the module docstring).
    shared, _ = torch.linalg.qr(torch.randn(d, r + 1, generator=g, dtype=f64))  # Q: D x (r+1)
    rotations, _ = torch.linalg.qr(torch.randn(c, r + 1, r + 1, generator=g, dtype=f64))  # R_k
    centres_latent = torch.randn(c, r + 1, generator=g, dtype=f64) * (sep / math.sqrt(r + 1))  # g_k * s/sqrt(r+1)
    u = torch.rand(c, n, r, generator=g, dtype=f64) * 2 - 1
    eps = torch.randn(c, n, d, generator=g, dtype=f64)

    frames = torch.einsum("de,kef->kdf", shared, rotations)  # [A_k | b_k]: C x D x (r+1)
    tangent, normal = frames[..., :r], frames[..., r]  # C x D x r, C x D
    centres = centres_latent @ shared.T  # C x D
    phi = u.pow(2).sum(-1) - r / 3.0  # C x n, mean zero
    points = (
        centres[:, None, :]
        + torch.einsum("kdr,knr->knd", tangent, u)
        + kappa * phi[..., None] * normal[:, None, :]
        + sigma * eps
    )
    labels = torch.arange(c).repeat_interleave(n)
    return points.reshape(c * n, d).to(torch.float32), labels


class SyntheticManifoldsDataset(RetrievalDataset):
    """Items are (float32 vector of length ambient_dim, class label, index); see the module docstring."""

    name = "synthetic"
    needs_root = False
    augmentation = "vector"

    @classmethod
    def input_channels(cls, data_cfg) -> int:
        validate_synthetic_config(data_cfg.synthetic)  # the first thing a run asks of the dataset: fail early
        return int(data_cfg.synthetic.ambient_dim)

    @classmethod
    def from_config(cls, split, transform, data_cfg) -> SyntheticManifoldsDataset:
        return cls(split, transform=transform, config=data_cfg.synthetic)

    def __init__(self, split: str, transform=None, *, config):
        """config: the ``data.synthetic`` group (a SyntheticConfig, a DictConfig node, any object with its keys)."""
        super().__init__(split, transform)
        points, labels = generate_synthetic_manifolds(config)
        num_train = config.num_classes // 2
        keep = labels < num_train if split == "train" else labels >= num_train
        self.points = points[keep].contiguous()
        self.labels = labels[keep]

    def load(self, index: int) -> torch.Tensor:
        return self.points[index]
