"""STML's similarity and losses written from the definitions (docs/stml.md) with Python loops and sets, in float64
numpy: the oracle the vectorised code (plm_lightning.stml) is tested against. Slow on purpose; no tensor tricks.

Ranking: a point's nearest are ordered by the kernel, views of one image (``same``) first as if their kernel were 1;
among exact ties the point itself, then lower indices (which of several equal values comes first is the one thing
the definitions leave open; the tests keep tied groups from straddling k or round(k / 2))."""

from __future__ import annotations

import math

import numpy as np


def kernel(t: np.ndarray, sigma: float) -> np.ndarray:
    n = len(t)
    w = np.empty((n, n))
    for i in range(n):
        for j in range(n):
            w[i, j] = 1.0 if i == j else math.exp(-float(np.sum((t[i] - t[j]) ** 2)) / sigma)
    return w


def ranking(w_p: np.ndarray, same: np.ndarray | None) -> list[list[int]]:
    n = len(w_p)
    order = []
    for i in range(n):
        value = [1.0 if (same is not None and same[i, j]) else w_p[i, j] for j in range(n)]
        order.append(sorted(range(n), key=lambda j: (-value[j], j != i, j)))
    return order


def contextual(t: np.ndarray, same: np.ndarray | None, sigma: float, k: int) -> np.ndarray:
    """W = (W_P + W_C) / 2 for teacher embeddings t; same[i, j]: i and j are views of one image."""
    n = len(t)
    k = min(k, n)
    w_p = kernel(t, sigma)
    rank = ranking(w_p, same)
    near = [set(rank[i][:k]) for i in range(n)]
    recip = [{j for j in near[i] if i in near[j]} for i in range(n)]
    w_tilde = np.zeros((n, n))
    for i in range(n):
        for j in recip[i]:
            w_tilde[i, j] = len(recip[i] & recip[j]) / len(recip[i])
    h = max(1, round(k / 2))
    w_hat = np.zeros((n, n))
    for i in range(n):
        for r in rank[i][:h]:
            w_hat[i] += w_tilde[r] / h
    w_c = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            w_c[i, j] = (w_hat[i, j] + w_hat[j, i]) / 2
    return (w_p + w_c) / 2


def normalised_distances(e: np.ndarray, normalize: bool = False) -> np.ndarray:
    if normalize:
        e = e / np.sqrt(np.sum(e**2, axis=1, keepdims=True))
    n = len(e)
    d = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            d[i, j] = math.sqrt(float(np.sum((e[i] - e[j]) ** 2)))
    for i in range(n):
        d[i] = d[i] / (sum(d[i]) / n)
    return d


def relaxed_contrastive(d: np.ndarray, w: np.ndarray, delta: float) -> float:
    n = len(d)
    total = 0.0
    for i in range(n):
        for j in range(n):
            if i != j:
                total += w[i, j] * d[i, j] ** 2 + (1 - w[i, j]) * max(0.0, delta - d[i, j]) ** 2
    return total / (n * (n - 1))


def self_distillation(d_f: np.ndarray, d_g: np.ndarray, temperature: float) -> float:
    n = len(d_f)
    total = 0.0
    for i in range(n):
        q = [math.exp(-d_f[i, j] / temperature) for j in range(n)]
        p = [math.exp(-d_g[i, j] / temperature) for j in range(n)]
        zq, zp = sum(q), sum(p)
        for j in range(n):
            total += (p[j] / zp) * (math.log(p[j] / zp) - math.log(q[j] / zq))
    return total * temperature**2 / n


def stml_loss(f, g, t, same, *, sigma, delta, k, temperature, lambda_kl, normalize_student=False) -> dict:
    w = contextual(t, same, sigma, k)
    d_f, d_g = normalised_distances(f, normalize_student), normalised_distances(g, normalize_student)
    rc_f, rc_g = relaxed_contrastive(d_f, w, delta), relaxed_contrastive(d_g, w, delta)
    kl = self_distillation(d_f, d_g, temperature)
    return {"loss": (rc_f + rc_g) / 2 + lambda_kl * kl, "rc_f": rc_f, "rc_g": rc_g, "kl": kl, "s": w}
