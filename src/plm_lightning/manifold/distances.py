"""Pairwise squared Euclidean distances, written once for the method's core."""

from __future__ import annotations

import functools

import torch


def as_float64(t: torch.Tensor) -> torch.Tensor:
    """``t`` in float64, without a conversion (an operator, a kernel on a GPU) when it already is."""
    return t if t.dtype == torch.float64 else t.to(torch.float64)


def squared_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """||a_i - b_j||^2 for every pair (n x m, float64, differentiable), as ||a||^2 + ||b||^2 - 2 a.b: no n x m x d
    intermediate (B = 480, d = 512 would need ~0.5 GB), and in float64, where the expansion's cancellation for
    near-identical points costs ~1e-8 instead of float32's ~3e-4. Not clamped: it can be slightly negative."""
    a64, b64 = as_float64(a), as_float64(b)
    # One fused call (the norms added to -2 a.b): few operators, as the PLM step wants (benchmarks/ops.py).
    return torch.addmm(torch.linalg.vecdot(a64, a64).unsqueeze(1) + torch.linalg.vecdot(b64, b64), a64, b64.T, alpha=-2)


def pairwise_squared_distances(a: torch.Tensor) -> torch.Tensor:
    """||a_i - a_j||^2 for every pair of rows (n x n, float64): squared_distances(a, a) with the norms taken once."""
    a64 = as_float64(a)
    sq = torch.linalg.vecdot(a64, a64)
    return torch.addmm(norm_sums(sq, sq), a64, a64.T, alpha=-2)


def norm_sums(rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """rows_i + cols_j (len(rows) x len(cols)): the norms term of the squared-distance expansion, as a rank-1 update
    of the row ``cols`` (one operator, no broadcast intermediate)."""
    return torch.addr(cols, rows, _ones(cols.shape[0], cols.dtype, cols.device))


@functools.lru_cache(maxsize=16)
def _ones(n: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A vector of n ones (cached constant, read only)."""
    return torch.ones(n, dtype=dtype).to(device)
