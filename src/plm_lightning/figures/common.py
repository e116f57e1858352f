"""Figures people look at: the matplotlib setup (headless), atomic PNG saving, and the similarity histograms of the
similarity report. The figures of a run are in run_figures.py."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from plm_lightning.utils.io import atomic_write  # noqa: E402


def save_figure(fig, path: str | Path) -> None:
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight"))
    plt.close(fig)


def similarity_histograms(
    values: Mapping[str, Mapping[str, torch.Tensor]],
    report: Mapping[str, Mapping[str, float]],
    path: str | Path,
    title: str = "",
) -> None:
    """One panel per estimator: the distribution of s for same-class and for different-class pairs."""
    n = len(values)
    fig, axes = plt.subplots(1, n, figsize=(3.6 * n, 3.0), squeeze=False)
    for ax, (name, v) in zip(axes[0], values.items()):
        bins = torch.linspace(0, 1, 41).numpy()
        ax.hist(v["different"].numpy(), bins=bins, density=True, alpha=0.6, label="different class", color="tab:red")
        ax.hist(v["same"].numpy(), bins=bins, density=True, alpha=0.6, label="same class", color="tab:green")
        q = report[name]
        ax.set_title(f"{name}\npurity {q['purity']:.2f}  r {q['pearson']:.2f}", fontsize=10)
        ax.set_xlabel("estimated similarity s")
        ax.set_yscale("log")
    axes[0][0].set_ylabel("density (log)")
    axes[0][0].legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=11, y=1.08)
    save_figure(fig, path)
