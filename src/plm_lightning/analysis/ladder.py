"""The ablation ladder: the method, each of its parts removed, the baselines and the supervised bound, over seeds.

``plm-study ladder --config glyphs.yaml`` (docs/benchmark.md):

1. pretrain the backbone on the labelled source task (``<config>_pretrain.yaml``) unless ``model.weights`` is set;
2. train every rung for every seed from that backbone (rungs: ``LADDER``; each is the config plus a few overrides);
3. write ``ladder.md`` / ``ladder.csv`` (mean +- std over seeds of the final-epoch metrics, the best epoch's R@1,
   wall time), ``ladder.json`` (every run's numbers and the goal checks), ``ladder.png`` (final R@1 with error
   bars) and ``ladder_curves.png`` (mean R@1 against epoch per rung) into the output folder.

Reference rows that need no training: the raw input (pixels as vectors), the randomly initialised network, and the
pretrained backbone before any training on the target ("pretrained only": the initial evaluation of the PLM runs).
A run whose folder already holds a finished run of the same config is reused, so an interrupted ladder continues.
"""

from __future__ import annotations

import csv
import json
import math
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch
from omegaconf import DictConfig, OmegaConf

from plm_lightning.config.loading import override_config
from plm_lightning.figures.common import plt, save_figure
from plm_lightning.run_directory import holds_run, same_run_config
from plm_lightning.utils.io import atomic_write, atomic_write_text, json_safe

METRICS = ("R@1", "R@2", "R@4", "R@8", "MAP@R", "NMI")


@dataclass(frozen=True)
class Rung:
    name: str
    overrides: tuple[str, ...] = ()
    note: str = ""

    @property
    def slug(self) -> str:
        return "".join(c if c.isalnum() else "-" for c in self.name.lower()).strip("-")


LADDER: tuple[Rung, ...] = (
    Rung("PLM", (), "the method as configured"),
    Rung("no proxies", ("method.proxies.count=0",), "the paper: N_rho = 0 loses ~5 R@1 on CUB"),
    Rung("binary similarity", ("method.plm.binary_threshold=0.5",), "s -> 1[s >= 0.5]; the paper: -7.5 on CUB"),
    Rung("no subset selection", ("method.plm.subset_selection=false",), "N_j = the M nearest; the paper: -3.3"),
    Rung("N_beta = 0", ("method.plm.n_beta=0",), "no decay along the piece; the paper: -2.9"),
    Rung("Gaussian kernel", ("method.similarity=gaussian",), "STML's kernel in PLM's regression loss"),
    Rung("binary k-NN", ("method.similarity=knn",), "1 for the k nearest batch neighbours, else 0"),
    Rung("k-means", ("method.similarity=kmeans",), "same-cluster pseudo-labels within the batch"),
    Rung("STML", ("method.name=stml",), "the strongest prior method with its own loss and two heads (docs/stml.md)"),
    Rung("supervised", ("method.name=supervised",), "labels of the training classes: an upper bound"),
)
# The evidence for our ("[ours]") training defaults: one knob changed at a time from the config (docs/method.md).
# Run with `--rungs knobs` into the ladder's run.dir to reuse its PLM runs.
KNOBS: tuple[Rung, ...] = (
    Rung("PLM", (), "the method as configured"),
    Rung("1 view", ("data.augmentation.views=1",), "one augmented view per image"),
    Rung("lr 1e-4", ("optim.lr=1e-4",), "the paper's GoogLeNet learning rate"),
    Rung(
        "greedy: current piece", ("method.plm.greedy_test=current",), "candidates tested against the piece without them"
    ),
    Rung("distance scale: batch", ("method.plm.distance_scale=batch",), "o and p relative to the batch's spread"),
    Rung("EMA 0.99", ("method.teacher.momentum=0.99",), "a faster teacher"),
    Rung("proxy lr 1e-2", ("optim.proxy_lr=1e-2",), "proxies 10x faster than the network"),
    Rung("proxy lr 1e-1", ("optim.proxy_lr=1e-1",), "proxies 100x faster"),
    Rung("L_proxy: nearest proxies", ("method.proxies.pairs=nearest",), "each point's q most similar proxies only"),
    Rung("lambda_proxy 1", ("method.loss.lambda_proxy=1.0",), "the proxy term as heavy as the point term (before)"),
    Rung("head lr 1e-2", ("optim.head_lr=1e-2",), "the embedding head 10x faster"),
)
RUNG_SETS = {"ladder": LADDER, "knobs": KNOBS}
REFERENCES = ("raw input", "random network", "pretrained only")
# The orderings the paper reports (a > b), checked on the ladder's final R@1.
PAPER_ORDER = (
    ("PLM", "pretrained only"),
    ("PLM", "no subset selection"),
    ("PLM", "no proxies"),
    ("PLM", "binary similarity"),
    ("PLM", "binary k-NN"),
    ("PLM", "Gaussian kernel"),
    ("Gaussian kernel", "k-means"),
    ("PLM", "STML"),  # the paper's headline: CUB R@1 61.7 vs 58.6 (STML re-run by the PLM paper, 512-d)
)


def pretrain_config_for(config_path: str) -> Optional[str]:
    """``<stem>_pretrain.yaml`` beside the config (or bundled), if it exists."""
    from plm_lightning.config.loading import ConfigError, resolve_config_path

    path = resolve_config_path(config_path)
    candidate = path.with_name(f"{path.stem}_pretrain{path.suffix}")
    if candidate.is_file():
        return str(candidate)
    try:
        return str(resolve_config_path(f"{path.stem}_pretrain.yaml"))
    except ConfigError:
        return None


def _finished(run_dir: Path, cfg: DictConfig) -> Optional[dict[str, Any]]:
    """The metrics of a finished run of exactly this config in ``run_dir``, else None."""
    metrics, saved = run_dir / "metrics.json", run_dir / "config.yaml"
    if not (metrics.is_file() and saved.is_file()) or not same_run_config(saved, cfg):
        return None
    summary = json.loads(metrics.read_text())
    history = summary.get("history") or []
    if not history or history[-1]["epoch"] != cfg.trainer.max_epochs - 1:
        return None
    return summary


def run_once(cfg: DictConfig, run_dir: Path, fit: Callable[[DictConfig], dict[str, Any]]) -> dict[str, Any]:
    """Train (or reuse) one run; returns its metrics summary with ``wall_s`` added. An unfinished run of the same
    config in ``run_dir`` is continued (resume=auto); a run of another config there is replaced."""
    cfg = override_config(cfg, values={"run.dir": str(run_dir)})
    done = _finished(run_dir, cfg)
    timing = run_dir / "wall_time.json"
    if done is not None and timing.is_file():
        return {**done, "wall_s": json.loads(timing.read_text())["wall_s"], "reused": True}
    if holds_run(run_dir):
        same = same_run_config(run_dir / "config.yaml", cfg)
        cfg = override_config(cfg, values={"resume": "auto"} if same else {"run.overwrite": True})
    started = time.perf_counter()
    summary = fit(cfg)
    wall = time.perf_counter() - started
    atomic_write_text(timing, json.dumps({"wall_s": wall}) + "\n")
    return {**summary, "wall_s": wall, "reused": False}


# --- references without training ----------------------------------------------------------------------------------
@torch.no_grad()
def reference_metrics(cfg: DictConfig, which: str) -> dict[str, float]:
    """Zero-shot metrics of the raw test inputs ("raw input") or of the network the config starts from, before any
    training ("random network" when ``model.weights`` is unset)."""
    from plm_lightning.analysis.features import build_module, raw_features
    from plm_lightning.models.embedding_pass import embed_loader
    from plm_lightning.retrieval import evaluate_embeddings

    module, datamodule = build_module(cfg)
    loader = datamodule.test_embedding_dataloader()
    if which == "raw input":
        emb, lab = raw_features(loader)
    else:
        _, emb, lab = embed_loader(module.student, loader, torch.device("cpu"))
    evaluation = cfg.eval
    return evaluate_embeddings(
        emb,
        lab,
        list(evaluation.ks),
        backend=evaluation.backend,
        normalize=evaluation.normalize,
        map_r=evaluation.map_r,
        compute_nmi=evaluation.nmi,
        kmeans=evaluation.kmeans,
        seed=cfg.run.seed,
    )


# --- aggregation --------------------------------------------------------------------------------------------------
def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return float("nan"), float("nan")
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarise(name: str, runs: Sequence[dict[str, Any]], source: str = "final", note: str = "") -> dict[str, Any]:
    """One ladder row: mean and std over seeds of each metric of ``source`` ("final" or "initial")."""
    row: dict[str, Any] = {"rung": name, "seeds": len(runs), "note": note}
    for metric in METRICS:
        row[metric], row[f"{metric}_std"] = _mean_std([(r.get(source) or {}).get(metric) for r in runs])
    if source == "final":
        row["best_R@1"], row["best_R@1_std"] = _mean_std([(r.get("best") or {}).get("R@1") for r in runs])
        row["best_epoch"] = [r.get("best_epoch") for r in runs]
        row["wall_s"], _ = _mean_std([r.get("wall_s") for r in runs])
    return row


def goal_checks(rows: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The paper's orderings and the benchmark's goals, each with its gap and whether the gap exceeds the larger
    of the two standard deviations."""
    checks = []
    for better, worse in PAPER_ORDER:
        if better in rows and worse in rows:
            a, b = rows[better], rows[worse]
            gap = a["R@1"] - b["R@1"]
            spread = max(a["R@1_std"], b["R@1_std"])
            checks.append({"check": f"{better} > {worse}", "gap": gap, "std": spread, "holds": gap > spread})
    if "PLM" in rows and "pretrained only" in rows:
        gap = rows["PLM"]["R@1"] - rows["pretrained only"]["R@1"]
        checks.append({"check": "PLM beats pretrained only by >= 10 R@1", "gap": gap, "std": None, "holds": gap >= 10})
    if "PLM" in rows:
        gap = rows["PLM"]["best_R@1"] - rows["PLM"]["R@1"]
        checks.append({"check": "PLM's final R@1 within 1 of its best", "gap": gap, "std": None, "holds": gap <= 1})
    return checks


def _fmt(row: dict[str, Any], metric: str) -> str:
    mean, std = row.get(metric), row.get(f"{metric}_std")
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "—"
    return f"{mean:.2f} ± {std:.2f}" if row["seeds"] > 1 else f"{mean:.2f}"


def markdown_table(rows: Sequence[dict[str, Any]], checks: Sequence[dict[str, Any]], header: str) -> str:
    lines = [
        header,
        "",
        "| rung | R@1 | R@2 | R@4 | R@8 | MAP@R | NMI | best R@1 (epochs) | seeds | s / run |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        best = (
            ""
            if r.get("best_R@1") is None or not r.get("best_epoch") or None in r["best_epoch"]
            else f"{_fmt(r, 'best_R@1')} ({', '.join(map(str, r['best_epoch']))})"
        )
        wall = "" if "wall_s" not in r or math.isnan(r["wall_s"]) else f"{r['wall_s']:.0f}"
        lines.append(
            f"| {r['rung']} | " + " | ".join(_fmt(r, m) for m in METRICS) + f" | {best} | {r['seeds']} | {wall} |"
        )
    if checks:
        lines += ["", "| check | gap (R@1 points) | larger std | holds |", "|---|---|---|---|"]
        for c in checks:
            std = "" if c["std"] is None else f"{c['std']:.2f}"
            lines.append(f"| {c['check']} | {c['gap']:+.2f} | {std} | {'yes' if c['holds'] else '**no**'} |")
    return "\n".join(lines) + "\n"


def _write_csv(rows: Sequence[dict[str, Any]], path: Path) -> None:
    fields = (
        ["rung", "seeds"]
        + [f"{m}{s}" for m in METRICS for s in ("", "_std")]
        + ["best_R@1", "best_R@1_std", "wall_s", "note"]
    )

    def write(tmp: str) -> None:
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)

    atomic_write(path, write)


def bar_plot(rows: Sequence[dict[str, Any]], path: Path, title: str) -> None:
    fig, ax = plt.subplots(figsize=(8, 0.42 * len(rows) + 1.2))
    names = [r["rung"] for r in rows][::-1]
    means = [r["R@1"] for r in rows][::-1]
    stds = [r["R@1_std"] for r in rows][::-1]
    colours = [
        "0.6" if r["rung"] in REFERENCES else ("tab:green" if r["rung"] == "supervised" else "tab:blue") for r in rows
    ][::-1]
    ax.barh(names, means, xerr=stds, color=colours, capsize=3)
    for y, (m, s) in enumerate(zip(means, stds)):
        if not math.isnan(m):
            ax.text(m + (s if not math.isnan(s) else 0) + 0.5, y, f"{m:.1f}", va="center", fontsize=8)
    ax.set_xlabel("zero-shot Recall@1 (%), final epoch, mean ± std over seeds")
    ax.set_title(title, fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    save_figure(fig, path)


def curves_plot(runs: dict[str, list[dict[str, Any]]], path: Path, title: str) -> None:
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for name, group in runs.items():
        epochs = sorted({h["epoch"] for r in group for h in r.get("history") or []})
        if not epochs:
            continue
        xs, ys = [], []
        if all(r.get("initial") for r in group):
            xs.append(-1)
            ys.append(statistics.fmean(r["initial"]["R@1"] for r in group))
        for e in epochs:
            values = [h["R@1"] for r in group for h in r["history"] if h["epoch"] == e]
            xs.append(e)
            ys.append(statistics.fmean(values))
        ax.plot(xs, ys, marker="o", markersize=3, label=name, linestyle="--" if name == "supervised" else "-")
    ax.set_xlabel("epoch (-1 = before training)")
    ax.set_ylabel("zero-shot Recall@1 (%), mean over seeds")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    save_figure(fig, path)


# --- the study ----------------------------------------------------------------------------------------------------
def ladder_study(
    cfg: DictConfig,
    out: Path,
    *,
    seeds: Sequence[int] = (0, 1, 2),
    rungs: Sequence[Rung] = LADDER,
    pretrain_cfg: Optional[DictConfig] = None,
    fit: Optional[Callable[[DictConfig], dict[str, Any]]] = None,
    log: Callable[[str], None] = print,
    name: str = "ladder",
) -> dict[str, Any]:
    """Run the ladder (see the module docstring) and write its table, CSV, JSON and plots into ``out`` as
    ``<name>.md``, ``<name>.csv``, ``<name>.json``, ``<name>.png`` and ``<name>_curves.png``."""
    if fit is None:
        from plm_lightning.experiment import fit as fit_run

        fit = fit_run
    out = Path(out)
    quiet = {"logger.wandb": False, "trainer.enable_progress_bar": False, "eval.plots": False}
    started = time.perf_counter()
    pretrain = None
    if cfg.model.weights is None and pretrain_cfg is not None:
        log(f"ladder: pretraining the backbone on the source task -> {out / 'pretrain'}")
        pretrain = run_once(override_config(pretrain_cfg, values=quiet), out / "pretrain", fit)
        weights = out / "pretrain" / "checkpoints" / "last.ckpt"
        cfg = override_config(cfg, values={"model.weights": str(weights)})
        log(f"ladder: pretraining {'reused' if pretrain['reused'] else 'done'} ({pretrain['wall_s']:.0f} s)")
    runs: dict[str, list[dict[str, Any]]] = {}
    total = len(rungs) * len(seeds)
    for i, (rung, seed) in enumerate(((r, s) for r in rungs for s in seeds), 1):
        run_cfg = override_config(cfg, rung.overrides, {**quiet, "run.seed": int(seed)}, source=f"rung {rung.name}")
        result = run_once(run_cfg, out / "runs" / f"{rung.slug}-s{seed}", fit)
        runs.setdefault(rung.name, []).append(result)
        final = result["final"]["R@1"]
        log(
            f"{name} [{i}/{total}] {rung.name}, seed {seed}: final R@1 {final:.2f} "
            f"(best {result['best']['R@1']:.2f} at epoch {result['best_epoch']}), {result['wall_s']:.0f} s"
            + (" (reused)" if result["reused"] else "")
        )

    rows: dict[str, dict[str, Any]] = {}
    rows["raw input"] = summarise("raw input", [{"final": reference_metrics(cfg, "raw input")}])
    random_cfg = override_config(cfg, values={"model.weights": None})
    rows["random network"] = summarise(
        "random network",
        [
            {"final": reference_metrics(override_config(random_cfg, values={"run.seed": int(s)}), "random network")}
            for s in seeds
        ],
    )
    # Every rung starts from the same pretrained backbone (and the same seeded head): the evaluation before training
    # of any rung's runs is the pretrained-only row; the PLM runs' when they ran, else the first rung's that did.
    started_from = [name for name in ("PLM", *runs) if name in runs and all(r.get("initial") for r in runs[name])]
    if started_from:
        first = started_from[0]
        rows["pretrained only"] = summarise(
            "pretrained only", runs[first], source="initial", note=f"the {first} runs' evaluation before training"
        )
    for rung in rungs:
        rows[rung.name] = summarise(rung.name, runs[rung.name], note=rung.note)
    checks = goal_checks(rows)
    wall = time.perf_counter() - started
    title = "Ablation ladder" if name == "ladder" else f"Rungs '{name}'"
    header = (
        f"# {title}: {cfg.data.name}, {len(seeds)} seeds ({', '.join(map(str, seeds))}), "
        f"{cfg.trainer.max_epochs} epochs, final epoch\n\nZero-shot retrieval on the test classes, mean ± std "
        f"over seeds. Wall time of this invocation: {wall / 60:.1f} min."
    )
    ordered = list(rows.values())
    atomic_write_text(out / f"{name}.md", markdown_table(ordered, checks, header))
    _write_csv(ordered, out / f"{name}.csv")
    result = {
        "config": OmegaConf.to_container(cfg, resolve=True),
        "seeds": list(seeds),
        "rows": ordered,
        "checks": checks,
        "wall_s": wall,
        "pretrain": None if pretrain is None else {"final": pretrain.get("final"), "wall_s": pretrain["wall_s"]},
        "runs": {
            name: [
                {k: r.get(k) for k in ("initial", "final", "best", "best_epoch", "history", "wall_s")} for r in group
            ]
            for name, group in runs.items()
        },
    }
    atomic_write_text(out / f"{name}.json", json.dumps(json_safe(result), indent=1) + "\n")
    title = f"{cfg.data.name}: {title.lower()} ({len(seeds)} seeds)"
    bar_plot(ordered, out / f"{name}.png", title)
    curves_plot(runs, out / f"{name}_curves.png", title)
    return result
