"""The PLM loss: student distances regressed onto scaled dissimilarities (docs/method.md, "Loss").

L = L_point + lambda_proxy * L_proxy + lambda_nbhd * L_nbhd
L_point = mean_{i != j} (delta (1 - s(i, j)) - ||z_i - z_j||)^2           (no gradient through s)
L_proxy = mean_{i, k} (delta (1 - s(i, k)) - ||z_i - rho_k||)^2           (rho detached: moves the network;
          k over all proxies, or over the proxy_neighbours most similar to i: proxy_pairs=nearest)
L_nbhd  = mean_k mean_{q most similar i} ||(I - V_k V_k^T)(x_i - rho_k)||^2  (x detached: moves the proxies)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from plm_lightning.manifold.distances import squared_distances
from plm_lightning.manifold.proxies import ProxyManifold
from plm_lightning.manifold.similarity import SimilarityResult, teacher_space

# Squared distances below this are clamped before the square root: the gradient of ||a - b|| is undefined at
# a == b (identical images can share a batch), and the clamp keeps it finite.
_EPS = 1e-12


def cdist_safe(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Euclidean distances with a finite gradient everywhere (torch.cdist's backward is NaN at zero distance),
    computed in float64 (distances.squared_distances)."""
    return squared_distances(a, b).clamp_min(_EPS).sqrt().to(a.dtype)


def point_loss(
    z: torch.Tensor, s: torch.Tensor, delta: float = 1.0, distances: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean over pairs i != j of (delta (1 - s(i, j)) - ||z_i - z_j||)^2; ``distances``: cdist_safe(z, z) when the
    caller has it already."""
    b = z.shape[0]
    if b < 2:
        return z.sum() * 0
    off_diag = ~torch.eye(b, dtype=torch.bool, device=z.device)
    residual = delta * (1 - s.detach()) - (cdist_safe(z, z) if distances is None else distances)
    return residual[off_diag].pow(2).mean()


def proxy_loss(
    z: torch.Tensor,
    proxy_points: torch.Tensor,
    s: torch.Tensor,
    delta: float = 1.0,
    nearest: int | None = None,
    distances: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean over pairs (i, k) of (delta (1 - s(i, k)) - ||z_i - rho_k||)^2: over all K proxies (nearest=None, the
    proxies "treated like data embeddings"), or over each point's ``nearest`` most similar proxies by s (ties: the
    lower proxy index), the part of the proxy manifold around the point [ours]. ``distances``: cdist_safe(z,
    proxy_points) when the caller has it already."""
    if distances is None:
        distances = cdist_safe(z, proxy_points.detach())
    residual = delta * (1 - s.detach()) - distances
    if nearest is None or nearest >= s.shape[1]:
        return residual.pow(2).mean()
    chosen = torch.sort(s.detach(), dim=1, descending=True, stable=True).indices[:, :nearest]  # B x q
    return residual.gather(1, chosen).pow(2).mean()


def neighbourhood_loss(
    x: torch.Tensor, s: torch.Tensor, proxy_points: torch.Tensor, proxy_bases: torch.Tensor, num_neighbours: int
) -> torch.Tensor:
    """Squared residual of each proxy's q most similar (detached) batch points from its affine piece."""
    q = min(num_neighbours, x.shape[0])
    # K x q, the most similar batch points of each proxy (ties: lower batch index first, deterministic)
    nearest = torch.sort(s.detach(), dim=0, descending=True, stable=True).indices[:q].T
    offsets = x.detach()[nearest] - proxy_points.unsqueeze(1)  # K x q x d
    in_plane = torch.bmm(offsets, proxy_bases)  # K x q x m
    residual2 = offsets.pow(2).sum(-1) - in_plane.pow(2).sum(-1)
    return residual2.clamp_min(0).mean()


@dataclass
class PLMLoss:
    """Composes a similarity estimator (PLM or an ablation) with the three loss terms for one batch."""

    similarity: Callable[..., SimilarityResult]
    delta: float = 1.0
    lambda_proxy: float = 1.0
    lambda_nbhd: float = 1.0
    proxy_neighbours: int = 5
    proxy_pairs: str = "all"  # all: every point with every proxy | nearest: each point's proxy_neighbours nearest
    normalize_student: bool = True
    normalize_teacher: bool = True

    def __call__(
        self, z: torch.Tensor, x: torch.Tensor, proxies: ProxyManifold | None = None
    ) -> dict[str, torch.Tensor]:
        """z: student embeddings (B x d, with grad); x: teacher embeddings (B x d, no grad).
        Returns a dict with "loss" (the total) and the individual terms plus diagnostics, all scalars except "s"."""
        z = z if z.dtype == torch.float32 else z.float()
        x = x.detach()
        x = x if x.dtype == torch.float32 else x.float()
        if self.normalize_student:
            z = F.normalize(z, dim=1)
        x = teacher_space(x, self.normalize_teacher)
        points: torch.Tensor | None = None
        bases: torch.Tensor | None = None
        bases64: torch.Tensor | None = None
        if proxies is not None and len(proxies) > 0:
            # The loss runs in float32 whatever the parameters' precision (bf16-true / 16-true runs); the pieces
            # are orthonormalised once, in float64, as the similarity needs them.
            points, bases64 = proxies.points, proxies.bases(torch.float64)
            points, bases = (points if points.dtype == torch.float32 else points.float()), bases64.float()
        sim = self.similarity(
            x, None if points is None else points.detach(), None if bases64 is None else bases64.detach()
        )
        b = z.shape[0]
        if points is None or bases is None or sim.s_proxy is None:
            out = {"loss_point": point_loss(z, sim.s, self.delta), "s": sim.s}
            total = out["loss_point"]
        else:
            # Distances to the batch and to the proxies in one computation (fewer kernels per step).
            distances = cdist_safe(z, torch.cat([z, points.detach()]))
            out = {"loss_point": point_loss(z, sim.s, self.delta, distances[:, :b]), "s": sim.s}
            nearest = self.proxy_neighbours if self.proxy_pairs == "nearest" else None
            out["loss_proxy"] = proxy_loss(z, points, sim.s_proxy, self.delta, nearest, distances[:, b:])
            out["loss_nbhd"] = neighbourhood_loss(x, sim.s_proxy, points, bases, self.proxy_neighbours)
            total = out["loss_point"] + self.lambda_proxy * out["loss_proxy"] + self.lambda_nbhd * out["loss_nbhd"]
            out["s_proxy"] = sim.s_proxy
        out["loss"] = total
        out.update(sim.stats)
        return out
