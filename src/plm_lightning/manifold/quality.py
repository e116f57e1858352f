"""How well an estimated similarity agrees with the true classes (docs/method.md, "Similarity quality against ground
truth"; the paper's Slide 14). Diagnostics only: labels are read here and never reach a loss.

- purity@k: mean over points of the fraction of its k most similar batch points (itself excluded) that share its
  class. Ties in s (binary estimators have many) are broken at random *in expectation*: points tied at the k-th
  value count fractionally, so the number does not depend on the order of the batch.
- Pearson r between s(i, j) and 1[y_i = y_j] over the pairs i != j of the batches, pooled over batches (sums are
  accumulated, so batches of any number and size, and processes, combine exactly).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch


def batch_purity(s: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    """Per-point purity@k of one batch (B,), tie-aware. s: B x B similarities; labels: B."""
    b = s.shape[0]
    k = min(k, b - 1)
    if k <= 0:
        return torch.zeros(0, dtype=torch.float64, device=s.device)
    s = s.to(torch.float64).clone()
    s.fill_diagonal_(float("-inf"))
    same = (labels[:, None] == labels[None, :]).to(torch.float64)
    same.fill_diagonal_(0)
    kth = torch.sort(s, dim=1, descending=True).values[:, k - 1 : k]  # B x 1, the k-th largest value
    greater = s > kth
    tied = s == kth
    n_greater = greater.sum(1, keepdim=True)
    n_tied = tied.sum(1, keepdim=True).clamp_min(1)
    weight = greater.to(torch.float64) + tied.to(torch.float64) * (k - n_greater) / n_tied
    return (weight * same).sum(1) / k


@dataclass
class SimilarityQuality:
    """Accumulates purity@k and pooled Pearson statistics over batches; ``compute()`` gives the numbers."""

    k: int = 5
    sums: torch.Tensor = field(default_factory=lambda: torch.zeros(8, dtype=torch.float64))

    # sums = [purity_sum, points, n_pairs, sum_s, sum_y, sum_ss, sum_yy, sum_sy]

    def update(self, s: torch.Tensor, labels: torch.Tensor) -> None:
        s = s.detach().to(torch.float64)
        labels = labels.to(s.device)
        purity = batch_purity(s, labels, self.k)
        off = ~torch.eye(s.shape[0], dtype=torch.bool, device=s.device)
        sv = s[off]
        yv = (labels[:, None] == labels[None, :])[off].to(torch.float64)
        batch = torch.stack(
            [
                purity.sum(),
                torch.tensor(float(purity.numel()), dtype=torch.float64, device=s.device),
                torch.tensor(float(sv.numel()), dtype=torch.float64, device=s.device),
                sv.sum(),
                yv.sum(),
                (sv * sv).sum(),
                (yv * yv).sum(),
                (sv * yv).sum(),
            ]
        )
        self.sums = self.sums.to(s.device) + batch

    def compute(self) -> dict[str, float]:
        p_sum, points, n, s1, y1, ss, yy, sy = self.sums.tolist()
        purity = p_sum / points if points else float("nan")
        cov = sy - s1 * y1 / n if n else 0.0
        var_s = ss - s1 * s1 / n if n else 0.0
        var_y = yy - y1 * y1 / n if n else 0.0
        pearson = cov / (var_s * var_y) ** 0.5 if var_s > 0 and var_y > 0 else float("nan")
        return {"purity": purity, "pearson": pearson}

    def reset(self) -> None:
        self.sums = torch.zeros(8, dtype=torch.float64)


@torch.no_grad()
def similarity_report(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    estimators: Mapping[str, Callable[[torch.Tensor], Any]],
    batches: list[list[int]],
    *,
    purity_k: int,
    keep_values: bool = False,
) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, torch.Tensor]]]:
    """{estimator: {"purity", "pearson"}} over the given batches; with keep_values, also the off-diagonal s values
    split into same-class and different-class pairs (for histograms)."""
    report: dict[str, dict[str, float]] = {}
    values: dict[str, dict[str, torch.Tensor]] = {}
    for name, estimator in estimators.items():
        quality = SimilarityQuality(k=purity_k)
        same_vals, diff_vals = [], []
        for batch in batches:
            idx = torch.as_tensor(batch)
            x, y = embeddings[idx], labels[idx]
            s = estimator(x).s
            quality.update(s, y)
            if keep_values:
                off = ~torch.eye(len(batch), dtype=torch.bool)
                same = (y[:, None] == y[None, :]) & off
                same_vals.append(s[same].float().cpu())
                diff_vals.append(s[~same & off].float().cpu())
        report[name] = quality.compute()
        if keep_values:
            values[name] = {"same": torch.cat(same_vals), "different": torch.cat(diff_vals)}
    return report, values
