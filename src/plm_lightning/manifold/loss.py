"""The PLM loss: student distances regressed onto scaled dissimilarities (docs/method.md, "Loss").

L = L_point + lambda_proxy * L_proxy + lambda_nbhd * L_nbhd
L_point = mean_{i != j} (delta (1 - s(i, j)) - ||z_i - z_j||)^2           (no gradient through s)
L_proxy = mean_{i, k} (delta (1 - s(i, k)) - ||z_i - rho_k||)^2           (rho detached: moves the network;
          k over all proxies, or over the proxy_neighbours most similar to i: proxy_pairs=nearest)
L_nbhd  = mean_k mean_{q most similar i} ||(I - V_k V_k^T)(x_i - rho_k)||^2  (x detached: moves the proxies)
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable

import torch

from plm_lightning.manifold.distances import as_float64, norm_sums, squared_distances
from plm_lightning.manifold.proxies import ProxyManifold
from plm_lightning.manifold.similarity import SimilarityResult, teacher_space, unit_rows

# Squared distances below this are clamped before the square root: the gradient of ||a - b|| is undefined at
# a == b (identical images can share a batch), and the clamp keeps it finite.
_EPS = 1e-12


def cdist_safe(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Euclidean distances with a finite gradient everywhere (torch.cdist's backward is NaN at zero distance),
    computed in float64 (distances.squared_distances) and returned in a's precision."""
    distances = squared_distances(a, b).clamp_min(_EPS).sqrt()
    return distances if distances.dtype == a.dtype else distances.to(a.dtype)


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
    x = x.detach() if x.requires_grad else x
    s = s.detach() if s.requires_grad else s
    # The q most similar batch points of each proxy (ties: lower batch index first, deterministic)
    nearest = torch.sort(s, dim=0, descending=True, stable=True).indices[:q]  # q x K
    offsets = (x[nearest] - proxy_points).transpose(0, 1)  # K x q x d
    in_plane = torch.bmm(offsets, proxy_bases)  # K x q x m
    residual2: torch.Tensor = torch.linalg.vecdot(offsets, offsets) - torch.linalg.vecdot(in_plane, in_plane)
    return residual2.clamp_min(0).mean()


@functools.lru_cache(maxsize=16)
def _pair_weights(b: int, k: int, lambda_proxy: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """3 x (b (b + k)) weights that turn the squared residuals of [batch | proxies] pairs (row-major, b rows) into
    L_point (the mean over the off-diagonal batch pairs), L_proxy (the mean over all point-proxy pairs) and
    L_point + lambda_proxy L_proxy (cached constant)."""
    w = torch.zeros(3, b, b + k, dtype=torch.float64)
    w[0, :, :b] = 1.0 / (b * (b - 1))
    w[0, :, :b].fill_diagonal_(0.0)
    w[1, :, b:] = 1.0 / (b * k)
    w[2] = w[0] + lambda_proxy * w[1]
    return w.reshape(3, -1).to(dtype).to(device)


def point_and_proxy_loss(
    s_all: torch.Tensor, distances: torch.Tensor, delta: float = 1.0, lambda_proxy: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(L_point, L_proxy, L_point + lambda_proxy L_proxy) with every proxy, in one pass: s_all and distances are
    b x (b + k), [batch | proxies] (b >= 2, k >= 1). The same means as point_loss and proxy_loss(nearest=None), as
    weighted sums of one vector of squared residuals."""
    b, width = s_all.shape
    residual = torch.rsub(s_all.detach() if s_all.requires_grad else s_all, delta, alpha=delta) - distances
    weights = _pair_weights(b, width - b, float(lambda_proxy), distances.dtype, distances.device)
    loss_point, loss_proxy, combined = torch.mv(weights, residual.square().flatten()).unbind()
    return loss_point, loss_proxy, combined


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
        Returns a dict with "loss" (the total) and the individual terms plus diagnostics, all scalars except "s".

        The loss runs in float64 whatever the network's precision (bf16 / 16-bit runs included): its matrices are
        small (B x (B + N_rho)), the pieces need float64 anyway, and distances between near-identical students are
        exact only there (squared_distances)."""
        z = as_float64(z)
        x = as_float64(x.detach() if x.requires_grad else x)
        if self.normalize_student:
            z = unit_rows(z)
        x = teacher_space(x, self.normalize_teacher)
        b = z.shape[0]
        if proxies is None or len(proxies) == 0:
            sim = self.similarity(x, None, None)
            out = {"loss_point": point_loss(z, sim.s, self.delta), "s": sim.s}
            out["loss"] = out["loss_point"]
            out.update(sim.stats)
            return out
        # One Cholesky QR pass: orthonormal to ~1e-16 cond^2, and the proxies' raw pieces stay close to orthonormal
        # (measured: condition number <= 2.71 after training in all 96 glyphs-ladder runs, so <= 1e-15), as the
        # loss's gradient and the similarity both need them.
        bases = proxies.bases(torch.float64, passes=1)
        points = as_float64(proxies.points)
        points64 = points.detach()
        sim = self.similarity(x, points64, bases)  # it takes no gradient
        if sim.s_proxy is None:
            raise ValueError("the similarity estimator returned no point-proxy similarity although proxies were given")
        distances = self._student_distances(z, points64)  # to the batch and to the (detached) proxies
        if self.proxy_pairs == "all" and b >= 2:
            s_all = sim.s_all if sim.s_all is not None else torch.cat([sim.s, sim.s_proxy], dim=1)
            loss_point, loss_proxy, regression = point_and_proxy_loss(s_all, distances, self.delta, self.lambda_proxy)
        else:
            nearest = self.proxy_neighbours if self.proxy_pairs == "nearest" else None
            loss_point = point_loss(z, sim.s, self.delta, distances[:, :b])
            loss_proxy = proxy_loss(z, points, sim.s_proxy, self.delta, nearest, distances[:, b:])
            regression = torch.add(loss_point, loss_proxy, alpha=self.lambda_proxy)
        loss_nbhd = neighbourhood_loss(x, sim.s_proxy, points, bases, self.proxy_neighbours)
        total = torch.add(regression, loss_nbhd, alpha=self.lambda_nbhd)
        out = {
            "loss_point": loss_point,
            "loss_proxy": loss_proxy,
            "loss_nbhd": loss_nbhd,
            "loss": total,
            "s": sim.s,
            "s_proxy": sim.s_proxy,
        }
        out.update(sim.stats)
        return out

    def _student_distances(self, z: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        """||z_i - c_j|| for c = [z; points] (float64, B x (B + K), finite gradient everywhere; points detached)."""
        others = torch.cat([z, points])
        if not self.normalize_student:
            return cdist_safe(z, others)
        # Unit rows: ||z_i||^2 = 1 whatever z, so its gradient is zero (the normalisation's backward removes any
        # component along z_i). The norms are taken without gradient: the same gradient, fewer backward operators.
        with torch.no_grad():
            norms2 = torch.linalg.vecdot(others, others)
            offset = norm_sums(norms2[: z.shape[0]], norms2)
        return torch.addmm(offset, z, others.T, alpha=-2).clamp_min(_EPS).sqrt()
