"""STML's losses on the student's two embeddings (docs/stml.md).

    D(i, j)  = ||e_i - e_j|| / mean_l ||e_i - e_l||                     distances normalised by their row mean
    L_RC(e)  = sum_{i != j} [ W(i, j) D(i, j)^2 + (1 - W(i, j)) relu(delta - D(i, j))^2 ] / (N (N - 1))
    L_KL     = (T^2 / N) sum_i KL( softmax(-D_g(i) / T) || softmax(-D_f(i) / T) )   (D_g detached)
    L        = (L_RC(f) + L_RC(g)) / 2 + lambda_KL L_KL

f is the target embedding (evaluated), g the larger auxiliary one; W is the teacher's contextualised similarity
(similarity.py), no gradient through it. The row-mean normalisation is what lets STML regress unnormalised student
embeddings onto a fixed margin delta.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from plm_lightning.manifold.distances import as_float64
from plm_lightning.manifold.loss import cdist_safe
from plm_lightning.stml.similarity import contextual_similarity

# Guards the row mean of an all-coinciding batch against division by zero.
_EPS = 1e-12


def row_mean_distances(e: torch.Tensor, normalize: bool = False) -> torch.Tensor:
    """D(i, j) = ||e_i - e_j|| / mean_l ||e_i - e_l|| (the mean over all N, the zero diagonal included), in e's
    dtype (float32 for half-precision e); ``normalize``: e L2-normalised first (STML's student_norm)."""
    if normalize:
        e = F.normalize(e, dim=1)
    n = e.shape[0]
    eye = torch.eye(n, dtype=torch.bool, device=e.device)
    # cdist_safe: a finite gradient where two views coincide; in float64, with the diagonal set to exactly 0 after, so
    # the row means are those of the true distances.
    e64 = as_float64(e)
    d = cdist_safe(e64, e64).masked_fill(eye, 0.0)
    # Half-precision student outputs (mixed precision) give float32 distances: the loss is no place for bf16.
    out = e.dtype if e.dtype in (torch.float32, torch.float64) else torch.float32
    return (d / d.mean(1, keepdim=True).clamp_min(_EPS)).to(out)


def relaxed_contrastive_loss(distances: torch.Tensor, w: torch.Tensor, delta: float = 1.0) -> torch.Tensor:
    """L_RC for normalised distances D (N x N) and similarity weights W (detached)."""
    n = distances.shape[0]
    if n < 2:
        return distances.sum() * 0
    w = w.detach().to(distances.dtype)
    off = ~torch.eye(n, dtype=torch.bool, device=distances.device)
    pull = w * distances.pow(2)
    push = (1 - w) * torch.relu(delta - distances).pow(2)
    return (pull + push)[off].sum() / (n * (n - 1))


def self_distillation_loss(d_f: torch.Tensor, d_g: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """L_KL: each row of the target embedding's distances D_f as a distribution softmax(-D / T) learns the auxiliary
    embedding's (D_g, detached); summed over rows, divided by N, times T^2 (STML's code)."""
    n = d_f.shape[0]
    log_q = F.log_softmax(-d_f / temperature, dim=1)
    p = F.softmax(-d_g.detach() / temperature, dim=1)
    return F.kl_div(log_q, p, reduction="sum") * temperature**2 / n


@dataclass
class STMLLoss:
    """One STML loss evaluation: student embeddings f (target) and g (auxiliary), teacher embeddings t (as the
    similarity sees them), and which items are views of one image. Returns the loss, its terms and W."""

    sigma: float = 3.0
    delta: float = 1.0
    k: int = 10
    kl_temperature: float = 1.0
    lambda_kl: float = 1.0
    normalize_student: bool = False

    def __call__(
        self, f: torch.Tensor, g: torch.Tensor, t: torch.Tensor, same: Optional[torch.Tensor] = None
    ) -> dict[str, torch.Tensor]:
        w, w_p = contextual_similarity(t, same, sigma=self.sigma, k=self.k)
        d_f = row_mean_distances(f, self.normalize_student)
        d_g = row_mean_distances(g, self.normalize_student)
        rc_f = relaxed_contrastive_loss(d_f, w, self.delta)
        rc_g = relaxed_contrastive_loss(d_g, w, self.delta)
        kl = self_distillation_loss(d_f, d_g, self.kl_temperature)
        rc = (rc_f + rc_g) / 2
        return {
            "loss": rc + self.lambda_kl * kl,
            "rc": rc,
            "rc_f": rc_f.detach(),
            "rc_g": rc_g.detach(),
            "kl": kl.detach(),
            "s": w.detach(),
            "s_kernel": w_p.detach(),
        }
