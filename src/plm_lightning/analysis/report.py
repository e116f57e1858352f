"""The paper's results table from run directories: runs grouped by config with the seed set aside, mean ± std over
seeds, beside the paper's numbers (``paper.metrics`` of the bundled configs) and the difference.

A run directory is a folder whose ``config.yaml`` is a plm-lightning config (folders below a ``wandb`` folder are
W&B's copies, not runs). A run is *finished* when its ``metrics.json`` history reaches ``trainer.max_epochs``; a
run that is unfinished, or has no metrics, is listed under the table and never averaged. Runs are averaged together
only when their configs are equal after removing the keys in ``OPERATIONAL`` (where and how a run was executed,
which does not change what it measures) and ``run.seed``.

No Lightning here: the module reads YAML and JSON only.
"""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

import yaml

from plm_lightning.config.migration import upgrade

# Keys that say where and how a run was executed, not what it measures: ignored when grouping runs.
OPERATIONAL = (
    "run",
    "logger",
    "resume",
    "paper",
    "data.root",
    "data.loader",  # worker processes, prefetching, the evaluation batch size: speed, not results
    "trainer.enable_progress_bar",
    "trainer.log_every_n_steps",
    "trainer.stop_after_epochs",
    "eval.plots",
)
# What identifies a group in its label before the keys in which groups differ.
LABEL_KEYS = ("data.name", "model.backbone", "model.embedding_dim")
DATASET_NAMES = {
    "cub": "CUB-200",
    "cars196": "Cars196",
    "sop": "SOP",
    "inshop": "In-Shop",
    "digits": "digits",
    "glyphs": "glyphs",
    "synthetic": "synthetic",
    "folder": "folder",
}


@dataclass
class RunRecord:
    path: Path
    config: dict[str, Any]
    metrics: Optional[dict[str, Any]]
    problem: Optional[str] = None  # why the run is not in the table, or None

    @property
    def seed(self) -> int:
        return int(self.config.get("run", {}).get("seed", 0))


@dataclass
class Group:
    key: str  # the config without the operational keys, as canonical JSON
    config: dict[str, Any]
    runs: list[RunRecord] = field(default_factory=list)
    label: str = ""

    @property
    def dataset(self) -> str:
        return str(_get(self.config, "data.name"))

    @property
    def metric_names(self) -> list[str]:
        return [f"R@{k}" for k in _get(self.config, "eval.ks")]

    def values(self, metric: str, which: str) -> list[float]:
        return [float(r.metrics[which][metric]) for r in self.runs if r.metrics and r.metrics.get(which)]


class ReportError(ValueError):
    """A path that holds no runs, or that does not exist. One line; plm-report exits with 2."""


def _get(tree: dict[str, Any], dotted: str) -> Any:
    node: Any = tree
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _without(tree: dict[str, Any], dotted_keys: Iterable[str]) -> dict[str, Any]:
    out = json.loads(json.dumps(tree))
    for dotted in dotted_keys:
        *parents, last = dotted.split(".")
        node = out
        for part in parents:
            node = node.get(part, {}) if isinstance(node, dict) else {}
        if isinstance(node, dict):
            node.pop(last, None)
    return out


def _flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _is_config(data: Any) -> bool:
    return isinstance(data, dict) and all(k in data for k in ("data", "model", "method", "trainer"))


def find_runs(paths: Sequence[Path]) -> list[RunRecord]:
    """Every run directory at or below ``paths`` (sorted by path), finished or not."""
    found: dict[Path, RunRecord] = {}
    for root in paths:
        root = Path(root)
        if not root.exists():
            raise ReportError(f"{root}: no such file or directory")
        candidates = [root / "config.yaml"] if (root / "config.yaml").is_file() else []
        candidates += sorted(root.rglob("*/config.yaml"))
        for config_file in candidates:
            folder = config_file.parent.resolve()
            if folder in found or "wandb" in config_file.relative_to(root).parts:
                continue
            try:
                config = yaml.safe_load(config_file.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, yaml.YAMLError):
                continue
            if not _is_config(config):
                continue
            found[folder] = _record(folder, upgrade(config)[0])  # runs made before keys moved group with newer ones
    return [found[p] for p in sorted(found)]


def _record(folder: Path, config: dict[str, Any]) -> RunRecord:
    metrics_file = folder / "metrics.json"
    if not metrics_file.is_file():
        return RunRecord(folder, config, None, "no metrics.json (not started, or stopped before its first evaluation)")
    try:
        metrics = json.loads(metrics_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return RunRecord(folder, config, None, f"unreadable metrics.json ({exc})")
    history = metrics.get("history") or []
    max_epochs = int(_get(config, "trainer.max_epochs") or 0)
    done = history[-1]["epoch"] + 1 if history else 0
    if done < max_epochs:
        return RunRecord(folder, config, metrics, f"unfinished: {done} of {max_epochs} epochs")
    return RunRecord(folder, config, metrics)


def group_runs(runs: Sequence[RunRecord]) -> list[Group]:
    """Finished runs grouped by config (the seed and OPERATIONAL keys aside), each group labelled by what sets it
    apart from the others."""
    groups: dict[str, Group] = {}
    for run in runs:
        if run.problem is not None:
            continue
        config = _without(run.config, OPERATIONAL)
        key = json.dumps(config, sort_keys=True)
        groups.setdefault(key, Group(key, run.config)).runs.append(run)
    ordered = list(groups.values())
    flats = [_flat(_without(g.config, OPERATIONAL)) for g in ordered]
    differing = sorted(
        {k for f in flats for k in f if k not in LABEL_KEYS and len({json.dumps(x.get(k)) for x in flats}) > 1}
    )
    # A group's label names only where it departs from the value most groups share (the ladder's "no proxies" row
    # reads "method.proxies.count=0", its reference row nothing).
    common = {}
    for k in differing:
        shown = [json.dumps(f.get(k), sort_keys=True) for f in flats]
        common[k] = max(dict.fromkeys(shown), key=shown.count)
    for group, flat in zip(ordered, flats):
        name = DATASET_NAMES.get(group.dataset, group.dataset)
        base = f"{name}, {_get(group.config, 'model.backbone')}, {_get(group.config, 'model.embedding_dim')}-d"
        extra = [f"{k}={_show(flat.get(k))}" for k in differing if json.dumps(flat.get(k), sort_keys=True) != common[k]]
        group.label = base + (" (" + ", ".join(extra) + ")" if extra else "")
    return ordered


def _show(value: Any) -> str:
    return "null" if value is None else str(value).replace(" ", "")


@dataclass
class Cell:
    mean: float
    std: float  # nan for a single run
    n: int
    paper: Optional[float]

    def text(self) -> str:
        return f"{self.mean:.2f}" if math.isnan(self.std) else f"{self.mean:.2f} ± {self.std:.2f}"


def cells(group: Group, which: str) -> dict[str, Cell]:
    paper = _get(group.config, "paper.metrics") or {}
    out = {}
    for metric in group.metric_names:
        values = group.values(metric, which)
        if values:
            std = statistics.stdev(values) if len(values) > 1 else math.nan
            out[metric] = Cell(statistics.fmean(values), std, len(values), paper.get(metric))
    return out


def report(paths: Sequence[Path], best: bool = False) -> dict[str, Any]:
    """The report of the runs at or below ``paths``: groups, their cells, and the runs left out (with why)."""
    runs = find_runs(paths)
    if not runs:
        where = ", ".join(map(str, paths))
        raise ReportError(f"no run directories (a folder with a plm-lightning config.yaml) in {where}")
    which = "best" if best else "final"
    groups = group_runs(runs)
    return {
        "which": which,
        "groups": [(g, cells(g, which)) for g in groups],
        "left_out": [r for r in runs if r.problem is not None],
    }


def _columns(groups: Sequence[Group]) -> list[tuple[str, str]]:
    """(dataset, metric) columns in the paper's layout: datasets side by side, each with its R@K."""
    columns: list[tuple[str, str]] = []
    for g in groups:
        for metric in g.metric_names:
            if (g.dataset, metric) not in columns:
                columns.append((g.dataset, metric))
    return columns


def title(which: str) -> str:
    if which == "best":
        return "best epoch per run (chosen on the test split: optimistic, not the paper's last-epoch protocol)"
    return "last epoch"


def markdown(rep: dict[str, Any]) -> str:
    groups = [g for g, _ in rep["groups"]]
    columns = _columns(groups)
    header = ["config", "n", "seeds", *(f"{DATASET_NAMES.get(d, d)} {m}" for d, m in columns)]
    lines = [
        f"# plm-report: {title(rep['which'])}, mean ± std over seeds",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for group, cs in rep["groups"]:
        seeds = sorted(r.seed for r in group.runs)
        row = [group.label, str(len(group.runs)), ",".join(map(str, seeds))]
        row += [cs[m].text() if d == group.dataset and m in cs else "" for d, m in columns]
        lines.append("| " + " | ".join(row) + " |")
        if any(c.paper is not None for c in cs.values()):
            source = _get(group.config, "paper.source") or "the paper"
            paper = ["paper: " + source, "", ""]
            diff = ["difference (yours − paper)", "", ""]
            for d, m in columns:
                c = cs.get(m) if d == group.dataset else None
                paper.append(f"{c.paper:.1f}" if c is not None and c.paper is not None else "")
                diff.append(f"{c.mean - c.paper:+.2f}" if c is not None and c.paper is not None else "")
            lines += ["| " + " | ".join(paper) + " |", "| " + " | ".join(diff) + " |"]
        if len(set(seeds)) < len(seeds):
            lines.append(f"| (warning: {group.label} has runs with the same seed) |" + " |" * (len(header) - 1))
    lines += ["", "Runs:"]
    lines += [f"- {g.label}: {', '.join(str(r.path) for r in g.runs)}" for g in groups]
    if rep["left_out"]:
        lines += ["", "Not in the table:"]
        lines += [f"- {r.path}: {r.problem}" for r in rep["left_out"]]
    return "\n".join(lines) + "\n"


def csv_text(rep: dict[str, Any]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    header = ["config", "dataset", "metric", "epoch", "mean", "std", "n", "seeds", "paper", "difference", "runs"]
    writer.writerow(header)
    for group, cs in rep["groups"]:
        seeds = ",".join(str(s) for s in sorted(r.seed for r in group.runs))
        runs = ";".join(str(r.path) for r in group.runs)
        for metric, c in cs.items():
            writer.writerow(
                [
                    group.label,
                    group.dataset,
                    metric,
                    rep["which"],
                    f"{c.mean:.4f}",
                    "" if math.isnan(c.std) else f"{c.std:.4f}",
                    c.n,
                    seeds,
                    "" if c.paper is None else c.paper,
                    "" if c.paper is None else f"{c.mean - c.paper:.4f}",
                    runs,
                ]
            )
    for r in rep["left_out"]:
        name = _get(r.config, "data.name")
        writer.writerow(["", name, "", "not in the table", "", "", "", r.seed, "", "", f"{r.path}: {r.problem}"])
    return out.getvalue()


def _tex(text: str) -> str:
    for a, b in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("_", r"\_"), ("#", r"\#"), ("±", r"$\pm$")):
        text = text.replace(a, b)
    return text


def latex(rep: dict[str, Any]) -> str:
    groups = [g for g, _ in rep["groups"]]
    columns = _columns(groups)
    datasets = list(dict.fromkeys(d for d, _ in columns))
    lines = [
        f"% plm-report: {title(rep['which'])}, mean $\\pm$ std over seeds",
        "\\begin{tabular}{l" + "c" * len(columns) + "}",
        "\\toprule",
        " & "
        + " & ".join(
            f"\\multicolumn{{{sum(1 for d2, _ in columns if d2 == d)}}}{{c}}{{{_tex(DATASET_NAMES.get(d, d))}}}"
            for d in datasets
        )
        + " \\\\",
        "Method & " + " & ".join(_tex(m) for _, m in columns) + " \\\\",
        "\\midrule",
    ]
    for group, cs in rep["groups"]:
        row = [f"{_tex(group.label)} ($n={len(group.runs)}$)"]
        row += [_tex(cs[m].text()) if d == group.dataset and m in cs else "" for d, m in columns]
        lines.append(" & ".join(row) + " \\\\")
        if any(c.paper is not None for c in cs.values()):
            paper = ["Paper"] + [
                f"{cs[m].paper:.1f}" if d == group.dataset and m in cs and cs[m].paper is not None else ""
                for d, m in columns
            ]
            lines.append(" & ".join(paper) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}"]
    return "\n".join(lines) + "\n"
