"""Evidence for the defaults of our ("[ours]") method knobs: one knob at a time around the bundled config.

Two kinds of measurement, both written to one JSON file (default benchmarks/results/defaults-<config>.json):

- quality: PLM similarity quality (purity@k, Pearson r against the true classes) on the nearest-neighbour batches
  of the training split, for piece and similarity knobs (m, M, tau, N_alpha, N_beta, symmetrization, subset
  selection). No training; features are the untrained network's ("initial") or the raw inputs ("raw").
- training: zero-shot R@1 / MAP@R of short plm-fit runs (the bundled config, several seeds) for the knobs that only
  training can judge (momentum, proxies and their learning rate / initialisation, loss weights, delta, student
  normalisation).

    python benchmarks/defaults.py --config digits.yaml [--seeds 0 1] [--skip-training] [--workers 2]
    python benchmarks/defaults.py --config glyphs.yaml --skip-training --seeds 0 1 2 \
        --set model.weights=runs/ladder/pretrain/checkpoints/last.ckpt   # quality on the benchmark
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

QUALITY_GRID = {
    "method.plm.piece_dim": [1, 2, 3, 4],
    "method.plm.max_candidates": [5, 10, 20],
    "method.plm.tau": [0.25, 0.5, 0.75, 1.0],
    "method.plm.n_alpha": [2.0, 3.0, 4.0, 6.0],
    "method.plm.n_beta": [0.0, 0.5, 1.0, 2.0],
    "method.plm.symmetrize": ["mean", "min", "max"],
    "method.plm.subset_selection": [True, False],
    "method.plm.greedy_test": ["refit", "current"],
    "method.plm.distance_scale": ["absolute", "batch"],
}

TRAINING_GRID = {
    "method.teacher.momentum": [0.99, 0.999],
    "method.proxies.count": [0, 50],
    "optim.proxy_lr": [0.001, 0.1],
    "method.proxies.init": ["data", "random"],
    "method.loss.lambda_proxy": [0.0, 1.0],
    "method.loss.lambda_nbhd": [0.0, 1.0],
    "method.loss.delta": [0.5, 1.0, 2.0],
    "method.loss.normalize_student": [True, False],
}


def quality_rows(config: str, features: str, seeds: list[int], overrides: list[str]) -> list[dict]:
    """Similarity quality per knob value, mean and std over seeds (each seed draws other nearest-neighbour batches;
    for "initial" features also another initial network where the backbone is not loaded from model.weights)."""
    from plm_lightning.analysis.studies import sensitivity_study
    from plm_lightning.config import load_config

    per_seed: dict[tuple, list[dict]] = {}
    for seed in seeds:
        cfg = load_config(config, [*overrides, f"run.seed={seed}"])
        with tempfile.TemporaryDirectory() as tmp:
            for r in sensitivity_study(cfg, Path(tmp), features=features, grid=QUALITY_GRID):
                per_seed.setdefault((r["knob"], str(r["value"])), []).append(r)
    rows = []
    for (knob, _), rs in per_seed.items():
        row = {"features": features, "knob": knob, "value": rs[0]["value"], "seeds": seeds}
        for key in ("purity", "pearson"):
            values = [r[key] for r in rs]
            row[key] = statistics.fmean(values)
            row[key + "_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
        rows.append(row)
    return rows


def fit_once(config: str, overrides: list[str], seed: int, root: Path) -> dict:
    run_dir = root / f"{'_'.join(o.replace('=', '-') for o in overrides) or 'default'}-s{seed}"
    env = dict(os.environ, WANDB_MODE="disabled", OMP_NUM_THREADS="1")
    cmd = [
        sys.executable,
        "-m",
        "plm_lightning.cli.fit",
        "--config",
        config,
        f"run.dir={run_dir}",
        f"run.seed={seed}",
        "trainer.enable_progress_bar=false",
        "logger.csv=false",
        *overrides,
    ]
    started = time.perf_counter()
    result = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{result.stderr[-2000:]}")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return {
        "overrides": overrides,
        "seed": seed,
        "seconds": time.perf_counter() - started,
        "initial_R@1": metrics["initial"]["R@1"],
        "final_R@1": metrics["final"]["R@1"],
        "final_MAP@R": metrics["final"]["MAP@R"],
        "best_R@1": metrics["best"]["R@1"],
    }


def training_rows(config: str, seeds: list[int], workers: int, base: list[str]) -> list[dict]:
    jobs = [([], s) for s in seeds]
    for key, values in TRAINING_GRID.items():
        for v in values:
            jobs += [([f"{key}={v}"], s) for s in seeds]
    with tempfile.TemporaryDirectory() as tmp, ThreadPoolExecutor(workers) as pool:
        results = list(pool.map(lambda job: fit_once(config, [*base, *job[0]], job[1], Path(tmp)), jobs))
    # mean over seeds per setting
    grouped: dict[str, list[dict]] = {}
    for r in results:
        setting = [o for o in r["overrides"] if o not in base]
        grouped.setdefault(" ".join(setting) or "(bundled config)", []).append(r)
    rows = []
    for setting, rs in grouped.items():
        row = {"setting": setting, "seeds": [r["seed"] for r in rs]}
        for key in ("final_R@1", "final_MAP@R", "best_R@1", "initial_R@1", "seconds"):
            values = [r[key] for r in rs]
            row[key] = statistics.fmean(values)
            row[key + "_std"] = statistics.pstdev(values) if len(values) > 1 else 0.0
        rows.append(row)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="digits.yaml")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--features", nargs="+", default=["initial", "raw"])
    parser.add_argument("--skip-training", action="store_true")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        dest="overrides",
        help="a config override for every measurement (repeatable), e.g. model.weights=PATH",
    )
    parser.add_argument("--output", default=None)
    args = parser.parse_args()
    name = Path(args.config).stem
    output = Path(args.output or Path(__file__).parent / "results" / f"defaults-{name}.json")
    started = time.perf_counter()
    table = {"config": args.config, "quality": [], "training": []}
    table["overrides"] = args.overrides
    for features in args.features:
        table["quality"] += quality_rows(args.config, features, args.seeds, args.overrides)
    for r in table["quality"]:
        print(
            f"quality {r['features']:8s} {r['knob']:26s} {str(r['value']):8s} purity {r['purity']:.4f} "
            f"± {r['purity_std']:.4f}  pearson {r['pearson']:.4f} ± {r['pearson_std']:.4f}"
        )
    if not args.skip_training:
        table["training"] = training_rows(args.config, args.seeds, args.workers, args.overrides)
        for r in table["training"]:
            print(
                f"training {r['setting']:32s} R@1 {r['final_R@1']:.2f}±{r['final_R@1_std']:.2f}  "
                f"MAP@R {r['final_MAP@R']:.2f}±{r['final_MAP@R_std']:.2f}  best R@1 {r['best_R@1']:.2f}  "
                f"({r['seconds']:.0f} s/run)"
            )
    table["seconds"] = time.perf_counter() - started
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_suffix(".tmp")
    tmp.write_text(json.dumps(table, indent=2) + "\n")
    os.replace(tmp, output)
    print(f"wrote {output} in {table['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
