"""The four experiments readers of the method ask for (docs/method.md, "Experiments the method's readers ask for").

Each study takes a validated base config, varies a few knobs, writes ``<name>.csv`` and ``<name>.png`` into its
output folder and returns its rows:

1. ``curvature``:   similarity quality (purity@k, Pearson r) of every estimator as the synthetic manifolds bend.
2. ``proxies``:     zero-shot Recall@1 with and without proxies across batch sizes (short training runs).
3. ``sensitivity``: similarity quality of PLM as k, M, tau and m vary (one knob at a time around the config).
4. ``cost``:        forward + backward time of similarity + loss as batch size, dimension and proxies grow.

Studies 1, 3 and 4 need no training and run in seconds; study 2 trains ``len(batch_sizes) x 2`` short runs.
"""

from __future__ import annotations

import csv
import math
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch
from omegaconf import DictConfig

from plm_lightning.analysis.features import training_features
from plm_lightning.analysis.run_simreport import config_batches, estimators_from_config
from plm_lightning.config.loading import override_config
from plm_lightning.figures.common import plt, save_figure
from plm_lightning.manifold import PLMLoss, PLMSimilarity, ProxyManifold
from plm_lightning.manifold.quality import similarity_report
from plm_lightning.retrieval.approximate import INDEXES
from plm_lightning.utils.io import atomic_write

ESTIMATOR_NAMES = ("plm", "gaussian", "knn", "kmeans")


def with_overrides(cfg: DictConfig, **dotted: Any) -> DictConfig:
    """A validated copy of ``cfg`` with ``{"a.b": v}`` overrides (keys written a__b in Python)."""
    return override_config(
        cfg, values={key.replace("__", "."): value for key, value in dotted.items()}, source="in a study"
    )


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)

    atomic_write(path, write)


def _quality_rows(
    cfg: DictConfig,
    names: Sequence[str],
    features: str,
    max_batches: Optional[int],
    extra: dict[str, Any],
    embedded: Optional[tuple[torch.Tensor, torch.Tensor]] = None,
) -> list[dict[str, Any]]:
    emb, labels = embedded if embedded is not None else training_features(cfg, features)
    batches = config_batches(cfg, emb, max_batches)
    report, _ = similarity_report(
        emb, labels, estimators_from_config(cfg, names), batches, purity_k=cfg.data.sampler.neighbours_per_seed
    )
    return [{**extra, "estimator": name, "purity": q["purity"], "pearson": q["pearson"]} for name, q in report.items()]


def _line_plot(ax, rows, x: str, y: str, group: str, label_prefix: str = "") -> None:
    for g in dict.fromkeys(r[group] for r in rows):
        pts = [(r[x], r[y]) for r in rows if r[group] == g and r[y] is not None and not _isnan(r[y])]
        if pts:
            xs, ys = zip(*pts)
            ax.plot(xs, ys, marker="o", label=f"{label_prefix}{g}")
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    ax.grid(alpha=0.3)


def _isnan(v: Any) -> bool:
    return isinstance(v, float) and math.isnan(v)


# --- 1. similarity accuracy vs curvature --------------------------------------------------------------------------
def curvature_study(
    cfg: DictConfig,
    out: Path,
    curvatures: Sequence[float] = (0.0, 0.5, 1.0, 2.0, 4.0),
    max_batches: Optional[int] = None,
) -> list[dict[str, Any]]:
    """On the synthetic manifolds' own coordinates (raw features: the true geometry), per estimator."""
    rows = []
    for c in curvatures:
        rows += _quality_rows(
            with_overrides(cfg, data__synthetic__curvature=float(c)),
            ESTIMATOR_NAMES,
            "raw",
            max_batches,
            {"curvature": float(c)},
        )
    write_csv(rows, out / "curvature.csv")
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    _line_plot(axes[0], rows, "curvature", "purity", "estimator")
    _line_plot(axes[1], rows, "curvature", "pearson", "estimator")
    axes[0].legend(fontsize=8)
    fig.suptitle("Similarity accuracy vs curvature (synthetic manifolds, raw coordinates)", y=1.02)
    save_figure(fig, out / "curvature.png")
    return rows


# --- 2. Recall@1 with and without proxies across batch sizes ------------------------------------------------------
def proxies_study(
    cfg: DictConfig,
    out: Path,
    batch_sizes: Sequence[int] = (30, 60, 120),
    num_proxies: Sequence[int] = (0, 20),
    fit: Optional[Callable[[DictConfig], dict[str, Any]]] = None,
) -> list[dict[str, Any]]:
    if fit is None:
        from plm_lightning.experiment import fit as fit_run

        fit = fit_run
    rows = []
    for b in batch_sizes:
        for n in num_proxies:
            run_cfg = with_overrides(
                cfg,
                data__sampler__batch_size=int(b),
                method__proxies__count=int(n),
                run__dir=str(out / f"runs/b{b}-p{n}"),
                logger__csv=False,
                logger__wandb=False,
                trainer__enable_progress_bar=False,
            )
            summary = fit(run_cfg)
            rows.append(
                {
                    "batch_size": int(b),
                    "num_proxies": int(n),
                    "initial_R@1": (summary.get("initial") or {}).get("R@1"),
                    "final_R@1": summary["final"]["R@1"],
                    "best_R@1": summary["best"]["R@1"],
                    "final_MAP@R": summary["final"].get("MAP@R"),
                }
            )
    write_csv(rows, out / "proxies.csv")
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    _line_plot(ax, rows, "batch_size", "final_R@1", "num_proxies", label_prefix="proxies=")
    ax.set_xscale("log", base=2)
    ax.legend(fontsize=8)
    ax.set_title("Recall@1 with and without proxies")
    save_figure(fig, out / "proxies.png")
    return rows


# --- 3. sensitivity to k, M, tau and m ----------------------------------------------------------------------------
def sensitivity_study(
    cfg: DictConfig,
    out: Path,
    features: str = "raw",
    max_batches: Optional[int] = None,
    grid: Optional[dict[str, Sequence[Any]]] = None,
) -> list[dict[str, Any]]:
    grid = grid or {
        "data.sampler.neighbours_per_seed": [2, 3, 5, 6, 10],
        "method.plm.max_candidates": [2, 5, 10, 20, 30],
        "method.plm.tau": [0.1, 0.25, 0.5, 0.75, 1.0],
        "method.plm.piece_dim": [1, 2, 3, 4, 8],
    }
    # None of these knobs changes the data or the network, so the features are computed once.
    embedded = training_features(cfg, features)
    rows = []
    for key, values in grid.items():
        for v in values:
            overrides = {key.replace(".", "__"): v}
            if key == "data.sampler.neighbours_per_seed":  # keep B divisible by k
                b = cfg.data.sampler.batch_size
                overrides["data__sampler__batch_size"] = max(v, (b // v) * v)
            run_cfg = with_overrides(cfg, **overrides)
            rows += _quality_rows(run_cfg, ("plm",), features, max_batches, {"knob": key, "value": v}, embedded)
    write_csv(rows, out / "sensitivity.csv")
    fig, axes = plt.subplots(1, len(grid), figsize=(3.6 * len(grid), 3.4), squeeze=False)
    for ax, key in zip(axes[0], grid):
        sub = [r for r in rows if r["knob"] == key]
        ax.plot([r["value"] for r in sub], [r["purity"] for r in sub], marker="o", label="purity@k")
        ax.plot([r["value"] for r in sub], [r["pearson"] for r in sub], marker="s", label="Pearson r")
        ax.set_xlabel(key)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"PLM similarity quality, one knob at a time ({cfg.data.name}, {features} features)", y=1.03)
    save_figure(fig, out / "sensitivity.png")
    return rows


# --- 4. compute and memory cost -----------------------------------------------------------------------------------
def _time_loss(b: int, d: int, n_rho: int, repeats: int, device: str) -> float:
    g = torch.Generator().manual_seed(0)
    x = torch.nn.functional.normalize(torch.randn(b, d, generator=g), dim=1).to(device)
    z = torch.randn(b, d, generator=g).to(device).requires_grad_(True)
    proxies = None
    if n_rho:
        pool = torch.nn.functional.normalize(torch.randn(n_rho + 10, d, generator=g), dim=1)
        proxies = ProxyManifold(n_rho, d, 2)
        proxies.initialise_(pool, torch.cdist(pool, pool).argsort(1)[:, :5], g)
        proxies.to(device)
    loss = PLMLoss(PLMSimilarity(max_candidates=10), proxy_neighbours=5)
    times = []
    for i in range(repeats + 1):
        if device == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        loss(z, x, proxies)["loss"].backward()
        if device == "cuda":
            torch.cuda.synchronize()
        if i:  # the first call warms up
            times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2] * 1000


def cost_study(
    cfg: DictConfig,
    out: Path,
    batch_sizes: Sequence[int] = (60, 120, 240, 480),
    dims: Sequence[int] = (64, 128, 512),
    proxies: Sequence[int] = (0, 100, 400),
    repeats: int = 3,
    device: str = "cpu",
    dataset_sizes: Sequence[int] = (2_000, 10_000, 30_000),
) -> list[dict[str, Any]]:
    """The similarity + loss time against B, d and N_rho (cost.csv), and the per-epoch neighbour table's time and
    recall against the training split's size for each data.sampler.index (cost_table.csv); plots in cost.png.
    benchmarks/neighbours.py runs the table part up to 10^6 images."""
    rows = []
    for b in batch_sizes:
        for d in dims:
            for n in proxies:
                rows.append(
                    {
                        "batch_size": b,
                        "dim": d,
                        "num_proxies": n,
                        "device": device,
                        "fwd_bwd_ms": _time_loss(b, d, n, repeats, device),
                    }
                )
    write_csv(rows, out / "cost.csv")
    table_rows = _table_cost(dataset_sizes, max(dims), device)
    write_csv(table_rows, out / "cost_table.csv")
    fig, axes = plt.subplots(1, 3, figsize=(15, 3.6))
    mid_n = proxies[len(proxies) // 2]
    _line_plot(
        axes[0], [r for r in rows if r["num_proxies"] == mid_n], "batch_size", "fwd_bwd_ms", "dim", label_prefix="d="
    )
    axes[0].set_title(f"vs batch size (proxies={mid_n})")
    top_d = dims[-1]
    _line_plot(
        axes[1],
        [r for r in rows if r["dim"] == top_d],
        "batch_size",
        "fwd_bwd_ms",
        "num_proxies",
        label_prefix="proxies=",
    )
    axes[1].set_title(f"vs proxies (d={top_d})")
    for ax in axes[:2]:
        ax.set_xscale("log", base=2)
    for index in INDEXES:
        mine = [r for r in table_rows if r["index"] == index]
        label = index if index == "exact" else f"{index} (recall {min(r['recall'] for r in mine):.3f}+)"
        axes[2].plot([r["dataset_size"] for r in mine], [r["seconds"] for r in mine], marker="o", label=label)
    axes[2].set_xscale("log")
    axes[2].set_xlabel("training images N")
    axes[2].set_ylabel("neighbour table, s")
    axes[2].set_title(f"per-epoch neighbour table (d={max(dims)}, k=5)")
    for ax in axes:
        ax.set_yscale("log")
        ax.legend(fontsize=8)
    fig.suptitle(f"Similarity + loss forward/backward time, neighbour table ({device})", y=1.02)
    save_figure(fig, out / "cost.png")
    return rows


def clustered_unit_vectors(n: int, dim: int, per_class: int = 50, seed: int = 0) -> torch.Tensor:
    """n random unit vectors around n / per_class random centres (each point's centre drawn at random): stand-in
    teacher embeddings of a large training split for the neighbour table's cost (also benchmarks/neighbours.py)."""
    g = torch.Generator().manual_seed(seed)
    classes = max(1, n // per_class)
    centres = torch.randn(classes, dim, generator=g)
    x = centres[torch.randint(classes, (n,), generator=g)] + 0.5 * torch.randn(n, dim, generator=g)
    return torch.nn.functional.normalize(x, dim=1)


def _table_cost(sizes: Sequence[int], dim: int, device: str) -> list[dict[str, Any]]:
    """Time of the neighbour table over N clustered unit vectors per index, and recall against exact."""
    from plm_lightning.data.sampler import neighbour_table
    from plm_lightning.retrieval.approximate import table_recall

    rows = []
    for n in sizes:
        x = clustered_unit_vectors(n, dim).to(device)
        exact: Optional[torch.Tensor] = None
        for index in INDEXES:  # "exact" first: the others' recall is measured against it
            started = time.perf_counter()
            table = neighbour_table(x, 5, index=index)
            seconds = time.perf_counter() - started
            exact = table if exact is None else exact
            recall = table_recall(table[:, 1:], exact[:, 1:])
            rows.append({"dataset_size": n, "index": index, "dim": dim, "seconds": seconds, "recall": recall})
    return rows


STUDIES = {"curvature": curvature_study, "proxies": proxies_study, "sensitivity": sensitivity_study, "cost": cost_study}
