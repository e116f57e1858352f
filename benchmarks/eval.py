"""Cost of the retrieval evaluation (issue items 6-7): our evaluator vs pytorch-metric-learning vs bare faiss.

Data: random clustered embeddings, d = 512, L2-normalised, at the sizes of the three same-set test splits
(docs/protocols.md): CUB 5,924 items / 100 classes, Cars 8,131 / 98, SOP 60,502 / 11,316, every class with at
least 2 items (so no lone queries: every method divides by the same number of queries). Class centres are drawn
around 12 "super-class" directions; an item is its centre plus isotropic noise of random length (``noise`` times
U(0.5, 1.5)), so the metrics look like those of an unsupervised model (R@1 about 60 %).

Methods, each run once in a fresh subprocess:

* ``ours-ranks``: ``evaluate_embeddings(x, labels, ks, engine="ranks", compute_nmi=False)`` (the default
  engine): exact rank counting with symmetric GEMM tiles (retrieval/ranks.py).
* ``ours-search-faiss`` / ``ours-search-torch``: ``evaluate_embeddings(..., engine="search", backend=...)``: the
  exact top-k search (faiss or torch candidates, canonical re-ranking) of depth max(max(ks), max R). Not run for
  SOP by default (its exact re-ranking of about 60,502 x 1,130 candidates takes many minutes on this machine);
  ``--search-sop`` runs it.
* ``pml``: pytorch-metric-learning ``AccuracyCalculator(k="max_bin_count")``, same-set mode
  (``get_accuracy(x, labels)``: self removed by index), metrics precision_at_1 (= R@1),
  mean_average_precision_at_r, r_precision, plus a hit-rate R@K subclass metric for each K that fits in its k
  (k = largest class - 1: no R@100 / R@1000 for SOP). Its kNN is faiss (CPU) when faiss is installed.
* ``faiss-bare``: ``faiss.IndexFlatIP`` over the same (normalised) data, ``search(x, max(ks) + 1)``: just the
  search, no metrics, no tie handling (the reference point of the issue: "bare faiss top-1001" for SOP).

No method computes NMI (k-means is a separate, method-independent cost).

Measurements: wall clock (time.perf_counter) of the call; peak memory = ``resource.getrusage(RUSAGE_SELF)
.ru_maxrss`` after the call minus ru_maxrss after importing everything and loading the embeddings (the
embeddings themselves, about 124 MB for SOP, are in the baseline). Threads: torch.set_num_threads(T) and
faiss.omp_set_num_threads(T) with T = ``--threads`` (default 2, this machine's core count); the 1/5/15-minute
load averages before and after each run are recorded (other jobs share this machine).

Run (from the repository root, with the project's venv; pytorch-metric-learning must be installed):

    python benchmarks/eval.py                    # cub, cars, sop (about 4-6 min on 2 CPU cores)
    python benchmarks/eval.py --sizes cub,cars   # the small sizes only (about 1 min)
    python benchmarks/eval.py --sizes sop --search-sop   # + our search engine at SOP size (slow)

Results: a table on stdout and JSON in benchmarks/results/eval-cpu.json (``--output`` to change).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))

SIZES = {
    # name: (items, classes, ks, noise)
    "cub": (5924, 100, (1, 2, 4, 8), 4.0),
    "cars": (8131, 98, (1, 2, 4, 8), 4.0),
    "sop": (60502, 11316, (1, 10, 100, 1000), 2.5),
}
DIM = 512
METHODS = ("ours-ranks", "ours-search-faiss", "ours-search-torch", "pml", "faiss-bare")
MEMORY_METHOD = (
    "resource.getrusage(RUSAGE_SELF).ru_maxrss after the call minus ru_maxrss after imports and loading the "
    "embeddings, in a fresh subprocess per (size, method)"
)


# ----------------------------------------------------------------------------------------------------------------
# Data


def make_embeddings(n: int, num_classes: int, noise: float, seed: int = 0, dim: int = DIM):
    """Random clustered, L2-normalised float32 embeddings [n, dim] and int64 labels (every class >= 2 items)."""
    import torch
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(seed)
    sizes = torch.full((num_classes,), 2, dtype=torch.int64)
    sizes += torch.bincount(torch.randint(0, num_classes, (n - 2 * num_classes,), generator=g), minlength=num_classes)
    labels = torch.repeat_interleave(torch.arange(num_classes), sizes)
    labels = labels[torch.randperm(n, generator=g)]
    supers = F.normalize(torch.randn(12, dim, generator=g), dim=1)
    centres = F.normalize(
        0.5 * supers[torch.randint(0, 12, (num_classes,), generator=g)]
        + F.normalize(torch.randn(num_classes, dim, generator=g), dim=1),
        dim=1,
    )
    lengths = noise * torch.empty(n, 1).uniform_(0.5, 1.5, generator=g)
    x = centres[labels] + lengths * F.normalize(torch.randn(n, dim, generator=g), dim=1)
    return F.normalize(x, dim=1).contiguous(), labels


# ----------------------------------------------------------------------------------------------------------------
# Worker (one method, one size, in its own process)


def _maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def _pml_calculator(ks, k_available):
    from pytorch_metric_learning.utils.accuracy_calculator import (
        AccuracyCalculator,
        try_getting_not_lone_labels,
    )

    recall_ks = [k for k in ks if 1 < k <= k_available]

    def make(k):
        def calculate(self, knn_labels, query_labels, not_lone_query_mask, **kwargs):
            knn_labels, query_labels = try_getting_not_lone_labels(knn_labels, query_labels, not_lone_query_mask)
            hit = (knn_labels[:, :k] == query_labels.reshape(-1, 1)).any(dim=1)
            return hit.double().mean().item()

        return calculate

    attrs = {f"calculate_recall_at_{k}": make(k) for k in recall_ks}
    attrs["requires_knn"] = lambda self: AccuracyCalculator.requires_knn(self) + [f"recall_at_{k}" for k in recall_ks]
    cls = type("AccuracyCalculatorWithRecall", (AccuracyCalculator,), attrs)
    include = ("precision_at_1", "mean_average_precision_at_r", "r_precision") + tuple(
        f"recall_at_{k}" for k in recall_ks
    )
    return cls(include=include, k="max_bin_count", device=None), recall_ks


def worker(data_path: str, method: str, ks: list[int], threads: int) -> dict:
    import numpy as np
    import torch

    torch.set_num_threads(threads)
    try:
        import faiss

        faiss.omp_set_num_threads(threads)
    except ImportError:
        faiss = None
    from plm_lightning.retrieval import evaluate_embeddings

    if method == "pml":
        import pytorch_metric_learning  # noqa: F401 (import cost outside the measurement)

    data = np.load(data_path)
    x_np, labels_np = np.ascontiguousarray(data["x"]), np.ascontiguousarray(data["labels"])
    x, labels = torch.from_numpy(x_np), torch.from_numpy(labels_np)
    baseline = _maxrss_mb()
    load_before = os.getloadavg()
    result: dict = {}
    start = time.perf_counter()
    if method == "ours-ranks":
        metrics = evaluate_embeddings(x, labels, ks, engine="ranks", compute_nmi=False)
    elif method in ("ours-search-faiss", "ours-search-torch"):
        backend = method.rsplit("-", 1)[1]
        metrics = evaluate_embeddings(x, labels, ks, engine="search", backend=backend, compute_nmi=False)
    elif method == "pml":
        k_available = int(np.bincount(labels_np).max()) - 1
        calculator, recall_ks = _pml_calculator(ks, k_available)
        raw = calculator.get_accuracy(x, labels)
        metrics = {"R@1": 100.0 * raw["precision_at_1"]}
        metrics.update({f"R@{k}": 100.0 * raw[f"recall_at_{k}"] for k in recall_ks})
        metrics["MAP@R"] = 100.0 * raw["mean_average_precision_at_r"]
        metrics["R-precision"] = 100.0 * raw["r_precision"]
        result["pml_k"] = k_available
    elif method == "faiss-bare":
        index = faiss.IndexFlatIP(x_np.shape[1])
        index.add(x_np)
        _, neighbours = index.search(x_np, max(ks) + 1)
        metrics = {}
        result["search_k"] = max(ks) + 1
        del neighbours
    else:
        raise ValueError(method)
    wall = time.perf_counter() - start
    result.update(
        method=method,
        wall_s=wall,
        peak_extra_mb=_maxrss_mb() - baseline,
        baseline_maxrss_mb=baseline,
        embeddings_mb=x_np.nbytes / 2**20,
        load_avg_before=list(load_before),
        load_avg_after=list(os.getloadavg()),
        torch_threads=torch.get_num_threads(),
        metrics=metrics,
    )
    return result


# ----------------------------------------------------------------------------------------------------------------
# Driver


def run_method(data_path: Path, method: str, ks, threads: int, timeout: float) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        str(data_path),
        "--method",
        method,
        "--ks",
        ",".join(map(str, ks)),
        "--threads",
        str(threads),
    ]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"method": method, "error": f"timed out after {timeout:.0f} s"}
    if proc.returncode != 0:
        return {"method": method, "error": proc.stderr.strip().splitlines()[-1] if proc.stderr else "failed"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def versions() -> dict:
    import numpy
    import torch

    out = {"python": platform.python_version(), "torch": torch.__version__, "numpy": numpy.__version__}
    try:
        import faiss

        out["faiss"] = faiss.__version__
    except ImportError:
        out["faiss"] = None
    try:
        from importlib.metadata import version

        out["pytorch-metric-learning"] = version("pytorch-metric-learning")
    except Exception:  # noqa: BLE001
        out["pytorch-metric-learning"] = None
    return out


def format_table(rows: list[dict]) -> str:
    header = f"{'size':5} {'method':18} {'wall s':>8} {'/faiss':>7} {'extra MB':>9} {'load':>5}  metrics"
    lines = [header, "-" * len(header)]
    for r in rows:
        if "error" in r:
            lines.append(f"{r['size']:5} {r['method']:18} error: {r['error']}")
            continue
        ratio = f"{r['ratio_to_faiss_bare']:.2f}" if r.get("ratio_to_faiss_bare") is not None else "-"
        metrics = " ".join(f"{k}={v:.2f}" for k, v in r["metrics"].items())
        lines.append(
            f"{r['size']:5} {r['method']:18} {r['wall_s']:8.2f} {ratio:>7} {r['peak_extra_mb']:9.0f} "
            f"{r['load_avg_before'][0]:5.2f}  {metrics}"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="cub,cars,sop", help="comma-separated subset of cub,cars,sop")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset of " + ",".join(METHODS))
    parser.add_argument("--search-sop", action="store_true", help="also run our search engine at SOP size (slow)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--noise", type=float, default=None, help="override the per-size noise length")
    parser.add_argument("--timeout", type=float, default=1800.0, help="per-method timeout (s)")
    parser.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "eval-cpu.json"))
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--method", help=argparse.SUPPRESS)
    parser.add_argument("--ks", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        ks = [int(k) for k in args.ks.split(",")]
        print(json.dumps(worker(args.worker, args.method, ks, args.threads)))
        return 0

    import numpy as np

    sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    for s in sizes:
        if s not in SIZES:
            parser.error(f"unknown size {s!r}")
    for m in methods:
        if m not in METHODS:
            parser.error(f"unknown method {m!r}")

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in sizes:
            n, num_classes, ks, noise = SIZES[size]
            noise = args.noise if args.noise is not None else noise
            x, labels = make_embeddings(n, num_classes, noise, seed=args.seed)
            path = Path(tmp) / f"{size}.npz"
            np.savez(path, x=x.numpy(), labels=labels.numpy())
            del x, labels
            size_rows = []
            for method in methods:
                if size == "sop" and method.startswith("ours-search") and not args.search_sop:
                    continue
                print(f"[{size}] {method} ...", file=sys.stderr, flush=True)
                row = run_method(path, method, ks, args.threads, args.timeout)
                row.update(size=size, n=n, classes=num_classes, ks=list(ks), noise=noise)
                size_rows.append(row)
            bare = next((r for r in size_rows if r["method"] == "faiss-bare" and "error" not in r), None)
            ours = next((r for r in size_rows if r["method"] == "ours-ranks" and "error" not in r), None)
            for r in size_rows:
                if "error" in r:
                    continue
                r["ratio_to_faiss_bare"] = r["wall_s"] / bare["wall_s"] if bare else None
                if ours is not None and r is not ours and r["metrics"]:
                    r["max_abs_diff_vs_ours"] = max(
                        abs(v - ours["metrics"][k]) for k, v in r["metrics"].items() if k in ours["metrics"]
                    )
            rows.extend(size_rows)

    report = {
        "benchmark": (
            "retrieval evaluation: ours (rank engine / search engine) vs pytorch-metric-learning vs bare faiss"
        ),
        "device": "cpu",
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "processor": platform.processor()},
        "versions": versions(),
        "threads": args.threads,
        "dim": DIM,
        "seed": args.seed,
        "memory_method": MEMORY_METHOD,
        "timing_method": "time.perf_counter around the call, one run per (size, method) in a fresh subprocess",
        "nmi": "not computed by any method",
        "rows": rows,
    }
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=out.parent, prefix=".eval-", suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump(report, f, indent=2)
    os.replace(tmp_name, out)
    print(format_table(rows))
    print(f"\nthreads={args.threads}; peak memory: {MEMORY_METHOD}\nwritten to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
