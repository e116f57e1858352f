"""Per-epoch zero-shot R@1 of groups of runs, one panel per group (each seed a thin line, the mean a thick one), from
the runs' own metrics.json: the figure behind "does training keep improving?" in docs/method.md.

    python benchmarks/curves.py "synthetic (MLP from scratch)=runs/synth3" \\
        "glyphs PLM (pretrained backbone)=runs/ladder/runs/plm-s*" --output docs/results/curves.png

A group is LABEL=PATTERN; the pattern (a glob) names run directories, or folders whose seed-N subfolders are runs.
Also writes the numbers next to the PNG (same name, .json).
"""

from __future__ import annotations

import argparse
import glob
import json
import statistics
import sys
from pathlib import Path

from plm_lightning.figures.common import plt, save_figure
from plm_lightning.utils.io import atomic_write_text


def run_dirs(pattern: str) -> list[Path]:
    out: list[Path] = []
    for match in sorted(glob.glob(pattern)):
        path = Path(match)
        seeds = sorted(p.parent for p in path.glob("seed-*/metrics.json"))
        out += [path] if (path / "metrics.json").is_file() else seeds
    return out


def curve(run: Path) -> list[float]:
    metrics = json.loads((run / "metrics.json").read_text())
    start = [metrics["initial"]["R@1"]] if metrics.get("initial") else []
    return start + [h["R@1"] for h in metrics["history"]]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("groups", nargs="+", help="LABEL=GLOB")
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args(argv)
    groups = {}
    for spec in args.groups:
        label, _, pattern = spec.partition("=")
        runs = run_dirs(pattern)
        if not runs:
            parser.error(f"{spec}: no run directories")
        groups[label] = {str(r): curve(r) for r in runs}
    fig, axes = plt.subplots(1, len(groups), figsize=(5 * len(groups), 3.6), squeeze=False)
    for ax, (label, curves) in zip(axes[0], groups.items()):
        for values in curves.values():
            ax.plot(range(-1, len(values) - 1), values, color="0.6", lw=0.8)
        mean = [statistics.fmean(v) for v in zip(*curves.values())]
        ax.plot(range(-1, len(mean) - 1), mean, color="C0", lw=2.2, marker="o", label=f"mean of {len(curves)} seeds")
        ax.set_title(label, fontsize=10)
        ax.set_xlabel("epoch (-1 = before training)")
        ax.set_ylabel("zero-shot R@1 (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, args.output)
    atomic_write_text(args.output.with_suffix(".json"), json.dumps(groups, indent=1) + "\n")
    print(f"{args.output}, {args.output.with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
