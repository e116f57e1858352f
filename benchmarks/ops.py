"""Operators launched by one PLM similarity + loss call (forward + backward), and its CPU time, against a baseline.

On a GPU every top-level operator is at least one kernel launch, and the PLM call is a chain of small ones: its
cost there is launch overhead, which the operator count measures without a GPU. The call is
``PLMLoss(PLMSimilarity())`` with the default knobs (N_alpha 4, N_beta 1, m 2, M 10, tau 0.5, q 5) on B normalised
teacher and student embeddings of dimension d and N_rho proxies; one forward + backward.

The baselines are the same measurement on the package as it was at each ``--baseline`` revision (by default the
last one before the first restructuring, 6c8199b, and the last one before the greedy selection was decided in
blocks and the similarity and loss were fused, 5893a68), extracted with ``git archive`` and run in a subprocess, so
all numbers come from the same run on the same machine. ``--baseline none`` skips them (or when git is unavailable).
"This checkout" is the call as a GPU runs it: the greedy selection in blocks of pieces.GREEDY_BLOCK_CUDA, the
count that stands for kernel launches (the budget applies to it). The row "CPU default" is the same call as it runs
on a CPU (pieces.GREEDY_BLOCK_CPU, one position at a time: more operators, less CPU time). ``--blocks 1,2,4,8`` also
measures other block sizes (operators against CPU time; the results do not depend on them).

    python benchmarks/ops.py
    python benchmarks/ops.py --batch-size 240 --dim 128 --repeats 50 --blocks 1,2,4,8

Prints the table and saves JSON to benchmarks/results/ops.json (``--output``).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# The revisions before the two launch-light restructurings of the greedy selection, pieces and loss.
BASELINES = "6c8199b,5893a68"
BUDGET = 150  # the target of the speed issue: top-level operators of one forward + backward


def _operators_module():
    """The operator counter of this checkout, loaded by file path so that the baseline subprocess (whose package
    predates it) counts the same way."""
    path = ROOT / "src" / "plm_lightning" / "utils" / "operators.py"
    spec = importlib.util.spec_from_file_location("_plm_operators", path)
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


def measure(batch_size: int, dim: int, num_proxies: int, repeats: int, block: int | None = None) -> dict:
    """Count and time one forward + backward of the PLM loss with the package importable as ``plm_lightning``."""
    import torch
    import torch.nn.functional as F

    import plm_lightning
    from plm_lightning.manifold import PLMLoss, PLMSimilarity, ProxyManifold

    operators = _operators_module()
    g = torch.Generator().manual_seed(0)
    x = F.normalize(torch.randn(batch_size, dim, generator=g), dim=1)
    z = F.normalize(torch.randn(batch_size, dim, generator=g), dim=1).requires_grad_(True)
    torch.manual_seed(0)
    proxies = ProxyManifold(num_proxies, dim, 2)
    loss_fn = PLMLoss(PLMSimilarity() if block is None else PLMSimilarity(greedy_block=block), proxy_neighbours=5)

    losses = []

    def step() -> None:
        z.grad = None
        proxies.zero_grad(set_to_none=True)
        out = loss_fn(z, x, proxies)["loss"]
        out.backward()
        losses[:] = [out]  # read back outside the counted call (reading a loss is not part of the step)

    for _ in range(3):
        step()
    loss = float(losses[-1].detach())
    names = operators.top_level_operators(step)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        times.append(1e3 * (time.perf_counter() - t0))
    return {
        "package": str(Path(plm_lightning.__file__).parent),
        "operators": len(names),
        "backward_nodes": sum(n.startswith("autograd::") for n in names),
        "histogram": operators.operator_histogram(names)[:12],
        "cpu_ms_median": statistics.median(times),
        "cpu_ms_min": min(times),
        "loss": loss,
    }


def baseline(rev: str, args: argparse.Namespace) -> dict | None:
    """The measurement on ``rev``'s package, in a subprocess; None (with a note) when git cannot provide it."""
    with tempfile.TemporaryDirectory(prefix="plm-ops-baseline-") as tmp:
        archive = Path(tmp) / "src.tar"
        try:
            with open(archive, "wb") as fh:
                subprocess.run(
                    ["git", "-C", str(ROOT), "archive", rev, "src/plm_lightning"],
                    stdout=fh,
                    stderr=subprocess.PIPE,
                    check=True,
                )
        except (OSError, subprocess.CalledProcessError) as err:
            detail = err.stderr.decode().strip() if isinstance(err, subprocess.CalledProcessError) else str(err)
            print(f"baseline {rev}: not measured ({detail or 'git archive failed'})", file=sys.stderr)
            return None
        with tarfile.open(archive) as tar:
            tar.extractall(tmp, filter="data")
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(tmp) / "src"), os.environ.get("PYTHONPATH", "")])}
        command = [sys.executable, __file__, "--measure-only", *_shape_args(args)]
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            print(f"baseline {rev}: the measurement failed:\n{done.stderr[-2000:]}", file=sys.stderr)
            return None
        result = json.loads(done.stdout.strip().splitlines()[-1])
        if not result["package"].startswith(tmp):
            raise RuntimeError(f"the baseline imported {result['package']}, not the extracted revision")
        result["package"] = f"git {rev}"
        return result


def _shape_args(args: argparse.Namespace) -> list[str]:
    return [
        f"--batch-size={args.batch_size}",
        f"--dim={args.dim}",
        f"--num-proxies={args.num_proxies}",
        f"--repeats={args.repeats}",
        f"--threads={args.threads}",
    ]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch-size", type=int, default=120)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--num-proxies", type=int, default=100)
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's default)")
    p.add_argument("--baseline", default=BASELINES, help="git revisions to compare with (comma-separated), or 'none'")
    p.add_argument("--blocks", default="", help="greedy block sizes to measure this checkout with (comma-separated)")
    p.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "ops.json")
    p.add_argument("--measure-only", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    import torch

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if args.measure_only:  # the baseline subprocess: one JSON line on stdout
        print(json.dumps(measure(args.batch_size, args.dim, args.num_proxies, args.repeats)))
        return 0

    sys.path.insert(0, str(ROOT / "src"))
    from plm_lightning.manifold.pieces import GREEDY_BLOCK_CPU, GREEDY_BLOCK_CUDA
    from plm_lightning.utils.io import atomic_write_text

    current = measure(args.batch_size, args.dim, args.num_proxies, args.repeats, block=GREEDY_BLOCK_CUDA)
    cpu_default = measure(args.batch_size, args.dim, args.num_proxies, args.repeats, block=GREEDY_BLOCK_CPU)
    revisions = [] if args.baseline == "none" else [r for r in args.baseline.split(",") if r]
    bases = {rev: baseline(rev, args) for rev in revisions}
    blocks = {
        int(k): measure(args.batch_size, args.dim, args.num_proxies, args.repeats, block=int(k))
        for k in args.blocks.split(",")
        if k
    }
    shape = f"B = {args.batch_size}, d = {args.dim}, N_rho = {args.num_proxies}"
    print(f"PLM similarity + loss, one forward + backward ({shape}; CPU, {torch.get_num_threads()} thread(s))")
    print(f"this checkout: greedy block {GREEDY_BLOCK_CUDA} (as on CUDA); CPU default: block {GREEDY_BLOCK_CPU}")
    print(f"{'':<28} {'operators':>10} {'backward':>9} {'CPU ms':>8} {'ops ratio':>10} {'time ratio':>11}")
    rows = [(f"baseline {rev}", r) for rev, r in bases.items() if r] + [("this checkout", current)]
    rows += [("this checkout, CPU default", cpu_default)]
    rows += [(f"this checkout, block {k}", r) for k, r in blocks.items()]
    for name, r in rows:
        ratios = ""
        if r is not current:
            time_ratio = current["cpu_ms_median"] / r["cpu_ms_median"]
            ratios = f" {current['operators'] / r['operators']:>10.2f} {time_ratio:>11.2f}"
        print(f"{name:<28} {r['operators']:>10} {r['backward_nodes']:>9} {r['cpu_ms_median']:>8.2f}{ratios}")
        if abs(current["loss"] - r["loss"]) > 1e-5 * max(1.0, abs(r["loss"])):
            print(f"warning: the loss differs from {name}'s: {current['loss']} vs {r['loss']}")
    print("ratios: this checkout / the row")
    verdict = "within" if current["operators"] <= BUDGET else "over"
    print(f"operators: {current['operators']} ({verdict} the budget of {BUDGET})")
    print("most frequent: " + ", ".join(f"{n.replace('aten::', '')} {c}" for n, c in current["histogram"][:8]))
    result = {
        "shape": {"batch_size": args.batch_size, "dim": args.dim, "num_proxies": args.num_proxies},
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "budget": BUDGET,
        "greedy_block": {"cuda": GREEDY_BLOCK_CUDA, "cpu": GREEDY_BLOCK_CPU},
        "current": current,
        "cpu_default": cpu_default,
        "baselines": bases,
        "blocks": {str(k): r for k, r in blocks.items()},
    }
    atomic_write_text(args.output, json.dumps(result, indent=2) + "\n")
    print(f"saved {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
