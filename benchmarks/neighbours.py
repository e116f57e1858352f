"""Cost of the per-epoch nearest-neighbour table as the training split grows, exact and approximate.

Every epoch (``data.sampler.refresh_every``) the teacher embeds the whole training split and the DataModule builds
each image's k - 1 nearest others (k = ``data.sampler.neighbours_per_seed``, 5). The exact table is O(N^2 d); the
approximate ones (``data.sampler.index``: faiss HNSW or IVF, ``retrieval/approximate.py``) are sub-quadratic. This
script times each, with its peak memory (the maximum resident set of a fresh process per measurement) and the
approximate tables' recall against the exact one, for N from 10^4 up to 10^6 on random clustered unit vectors
(d = 512, 50 images per class, as in a large retrieval training set). Exact tables above ``--exact-max`` are not
run (hours on a CPU): their time is extrapolated from the largest measured one by N^2 and marked so; recall is then
measured on a random subset of 2,000 rows against exact neighbours computed for those rows only.

The teacher's embedding pass is the other per-epoch cost: ``--teacher`` times GoogLeNet's forward (no weights
needed) on random 227-px images on this machine and scales it to each N.

    python benchmarks/neighbours.py                                  # 1e4, 3e4, 1e5, 3e5, 1e6
    python benchmarks/neighbours.py --sizes 10000 100000 --exact-max 100000 --teacher

Prints the table and saves JSON to benchmarks/results/neighbours-cpu.json (``--output``).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))

K = 5  # data.sampler.neighbours_per_seed
SAMPLE = 2000  # rows whose exact neighbours are computed when the full exact table is not


def measure_one(n: int, d: int, index: str) -> dict:
    """In this (fresh) process: build one table, return its time, peak memory and the table's recall."""
    from plm_lightning.analysis.studies import clustered_unit_vectors
    from plm_lightning.data.sampler import neighbour_table
    from plm_lightning.retrieval import knn_search
    from plm_lightning.retrieval.approximate import table_recall

    x = clustered_unit_vectors(n, d)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    table = neighbour_table(x, K, index=index)
    seconds = time.perf_counter() - t0
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # ru_maxrss is in kB on Linux
    recall = None
    if index != "exact":
        rows = torch.randperm(n, generator=torch.Generator().manual_seed(1))[: min(SAMPLE, n)]
        _, exact = knn_search(x[rows], x, K, backend="auto")
        exact = exact[:, 1:]  # each sampled row is its own nearest (distinct random points): drop it
        recall = table_recall(table[rows, 1:], exact)
    # input_mb: the process with its embeddings, before the build; peak_mb - input_mb is what the build added
    return {"n": n, "index": index, "seconds": seconds, "peak_mb": peak_mb, "input_mb": before / 1024, "recall": recall}


def in_subprocess(n: int, d: int, index: str) -> dict:
    done = subprocess.run(
        [sys.executable, __file__, "--measure", str(n), index, f"--dim={d}"],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"N={n} {index}: {done.stderr[-1500:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def teacher_images_per_second(batch: int = 32, repeats: int = 3) -> float:
    import torchvision

    net = torchvision.models.googlenet(weights=None, aux_logits=False, init_weights=False).eval()
    x = torch.randn(batch, 3, 227, 227)
    with torch.no_grad():
        net(x)
        t0 = time.perf_counter()
        for _ in range(repeats):
            net(x)
    return batch * repeats / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000, 30_000, 100_000, 300_000, 1_000_000])
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--indexes", nargs="+", default=["exact", "hnsw", "ivf"])
    p.add_argument("--exact-max", type=int, default=100_000, help="largest N whose exact table is built")
    p.add_argument("--teacher", action="store_true", help="also time GoogLeNet's forward pass here")
    p.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "neighbours-cpu.json")
    p.add_argument("--measure", nargs=2, metavar=("N", "INDEX"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.measure:
        print(json.dumps(measure_one(int(args.measure[0]), args.dim, args.measure[1])))
        return 0

    from plm_lightning.utils.io import atomic_write_text

    rows = []
    largest_exact = None
    for n in args.sizes:
        for index in args.indexes:
            if index == "exact" and n > args.exact_max:
                if largest_exact is not None:
                    m, s = largest_exact
                    rows.append({"n": n, "index": "exact", "seconds": s * (n / m) ** 2, "extrapolated": True})
                continue
            row = in_subprocess(n, args.dim, index)
            if index == "exact":
                largest_exact = (n, row["seconds"])
            rows.append(row)
            recall = "" if row.get("recall") is None else f", recall {row['recall']:.3f}"
            grown = row["peak_mb"] - row["input_mb"]
            print(f"N={n:>9,} {index:<6} {row['seconds']:9.1f} s, +{grown:6.0f} MB peak{recall}", flush=True)
    teacher = teacher_images_per_second() if args.teacher else None
    print(f"\nk = {K} neighbours per image, d = {args.dim}, {torch.get_num_threads()} CPU threads")
    header = f"{'N':>10} {'exact s':>10} {'hnsw s':>8} {'recall':>7} {'ivf s':>8} {'recall':>7}"
    print(header + ("  teacher pass" if teacher else ""))
    for n in args.sizes:
        got = {r["index"]: r for r in rows if r["n"] == n}

        def cell(name: str) -> str:
            r = got.get(name)
            if r is None:
                return f"{'-':>8}"
            return f"{r['seconds']:>7.0f}{'*' if r.get('extrapolated') else ' '}"

        def rec(name: str) -> str:
            r = got.get(name)
            return f"{r['recall']:>7.3f}" if r and r.get("recall") is not None else f"{'-':>7}"

        line = f"{n:>10,} {cell('exact'):>10} {cell('hnsw')} {rec('hnsw')} {cell('ivf')} {rec('ivf')}"
        if teacher:
            line += f"  {n / teacher / 60:9.0f} min"
        print(line)
    print("* extrapolated from the largest exact table measured (N^2)")
    if teacher:
        print(f"teacher: GoogLeNet forward, 227 px, {teacher:.1f} images/s on this CPU")
    result = {"k": K, "dim": args.dim, "threads": torch.get_num_threads(), "rows": rows}
    result["teacher_images_per_s"] = teacher
    atomic_write_text(args.output, json.dumps(result, indent=2) + "\n")
    print(f"saved {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
