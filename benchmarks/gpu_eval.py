"""The evaluation engine's torch path on a GPU, at the sizes of the test splits (CUB, Cars196, SOP).

Data: the random clustered, L2-normalised d = 512 embeddings of benchmarks/eval.py (same generator, same seeds).
Methods, each timed with torch.cuda.synchronize() around the call, after one untimed warm-up call at CUB size:

* ``ours-ranks-cuda``: ``evaluate_embeddings(x_cuda, labels, ks, engine="ranks", compute_nmi=False,
  memory_budget_mb=B)`` for B in --budgets (the default evaluation path of a GPU run: embeddings stay on the device).
* ``torch-bare-topk``: the reference point: chunked ``x @ x.T`` + ``topk(max(ks) + 1)`` on the GPU (just the
  search: no self-removal by index, no tie handling, no metrics).
* ``ours-ranks-cpu``: the same engine on the CPU (all of the machine's cores), to check the metrics across devices
  and to give the speed-up. The ranks are exact on both, so every R@K is identical; MAP@R / R-precision are means
  of per-query ratios whose float summation order differs between devices (differences around 1e-5 points).

Peak GPU memory = torch.cuda.max_memory_allocated() during the call minus what was allocated before it (the
embeddings themselves are in the baseline).

    python benchmarks/gpu_eval.py                      # needs CUDA; about a minute on an H100
    python benchmarks/gpu_eval.py --sizes cub --skip-cpu

Results: a table on stdout and JSON in benchmarks/results/eval-cuda.json (``--output`` to change).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))

from plm_lightning.retrieval import evaluate_embeddings  # noqa: E402

_spec = importlib.util.spec_from_file_location("eval_benchmark", ROOT / "benchmarks" / "eval.py")
_eval_benchmark = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_eval_benchmark)
SIZES, make_embeddings = _eval_benchmark.SIZES, _eval_benchmark.make_embeddings


def bare_topk(x: torch.Tensor, k: int, chunk: int = 4096) -> None:
    for start in range(0, x.shape[0], chunk):
        torch.topk(x[start : start + chunk] @ x.T, k, dim=1)


def timed(fn, cuda: bool) -> tuple[float, float | None, object]:
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    t0 = time.perf_counter()
    out = fn()
    if cuda:
        torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    peak = (torch.cuda.max_memory_allocated() - base) / 2**20 if cuda else None
    return wall, peak, out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="cub,cars,sop")
    p.add_argument("--budgets", default="512,4096", help="eval.memory_budget_mb values for the CUDA engine")
    p.add_argument("--skip-cpu", action="store_true", help="skip the CPU run (and the cross-device equality check)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--smoke-on-cpu", action="store_true", help="run the same code on the CPU (to test the script)")
    p.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "eval-cuda.json")
    args = p.parse_args(argv)
    if not torch.cuda.is_available() and not args.smoke_on_cpu:
        print("gpu_eval.py: error: CUDA is not available", file=sys.stderr)
        return 2
    cuda = not args.smoke_on_cpu
    dev = torch.device("cuda" if cuda else "cpu")
    name = torch.cuda.get_device_name() if cuda else "cpu (smoke run)"
    budgets = [float(b) for b in args.budgets.split(",")]
    # Warm-up: CUDA context, cuBLAS handles, kernels.
    x, labels = make_embeddings(*SIZES["cub"][:2], SIZES["cub"][3], seed=args.seed)
    evaluate_embeddings(x.to(dev), labels, SIZES["cub"][2], engine="ranks", compute_nmi=False)
    rows = []
    for size in args.sizes.split(","):
        n, classes, ks, noise = SIZES[size]
        x, labels = make_embeddings(n, classes, noise, seed=args.seed)
        xc = x.to(dev)
        ref = None
        for budget in budgets:
            wall, peak, metrics = timed(
                lambda: evaluate_embeddings(xc, labels, ks, engine="ranks", compute_nmi=False, memory_budget_mb=budget),
                cuda=cuda,
            )
            rows.append(
                dict(
                    size=size,
                    n=n,
                    method="ours-ranks-cuda",
                    budget_mb=budget,
                    wall_s=wall,
                    peak_gpu_mb=peak,
                    metrics=metrics,
                )
            )
            ref = ref or metrics
        wall, peak, _ = timed(lambda: bare_topk(xc, max(ks) + 1), cuda=cuda)
        rows.append(
            dict(size=size, n=n, method="torch-bare-topk", k=max(ks) + 1, wall_s=wall, peak_gpu_mb=peak, metrics={})
        )
        if not args.skip_cpu:
            wall, _, metrics = timed(
                lambda: evaluate_embeddings(x, labels, ks, engine="ranks", compute_nmi=False), cuda=False
            )
            rows.append(
                dict(
                    size=size,
                    n=n,
                    method="ours-ranks-cpu",
                    threads=torch.get_num_threads(),
                    wall_s=wall,
                    peak_gpu_mb=None,
                    metrics=metrics,
                    identical_to_cuda=metrics == ref,
                    max_abs_diff_to_cuda=max(abs(metrics[k] - ref[k]) for k in ref),
                )
            )
        bare = next(r["wall_s"] for r in rows if r["size"] == size and r["method"] == "torch-bare-topk")
        for r in rows:
            if r["size"] == size:
                r["ratio_to_bare_topk"] = r["wall_s"] / bare

    header = f"{'size':5} {'method':16} {'budget':>7} {'wall s':>8} {'/bare':>6} {'peak GPU MB':>11}  metrics"
    print(f"device: {name}, torch {torch.__version__}")
    print(header)
    print("-" * len(header))
    for r in rows:
        peak = f"{r['peak_gpu_mb']:11.0f}" if r["peak_gpu_mb"] is not None else f"{'-':>11}"
        budget = f"{r['budget_mb']:7.0f}" if "budget_mb" in r else f"{'-':>7}"
        metrics = " ".join(f"{k}={v:.2f}" for k, v in r["metrics"].items())
        same = (
            f" identical_to_cuda={r['identical_to_cuda']} (max diff {r['max_abs_diff_to_cuda']:.1e})"
            if "identical_to_cuda" in r
            else ""
        )
        print(
            f"{r['size']:5} {r['method']:16} {budget} {r['wall_s']:8.3f} {r['ratio_to_bare_topk']:6.2f} {peak}  "
            f"{metrics}{same}"
        )
    result = {
        "device": name,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "cpu_threads": torch.get_num_threads(),
        "rows": rows,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
