"""Time of NMI (its k-means) at Stanford Online Products' size: faiss on the CPU, torch on the CPU and on CUDA.

NMI clusters the test split into as many clusters as test classes: for SOP 60,502 embeddings of dimension 512 into
11,316 clusters, 25 Lloyd iterations. The embeddings are synthetic (unit vectors around one random centre per class,
with SOP's mean class size of about 5.3 images; ``--noise`` sets how far they spread), so the NMI values are only
a check that the backends agree, not a result about any model.

    python benchmarks/nmi.py                       # SOP size, faiss and torch on the CPU (+ torch on CUDA if any)
    python benchmarks/nmi.py --n 10000 --classes 2000 --seeds 0 1 2

Prints the table and saves JSON to benchmarks/results/nmi-<cpu|cuda>.json (``--output``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))

from plm_lightning.retrieval.metrics import nmi  # noqa: E402
from plm_lightning.utils.io import atomic_write_text  # noqa: E402


def sop_like(n: int, classes: int, dim: int, noise: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % classes  # every class present, sizes differing by at most one
    centres = torch.nn.functional.normalize(torch.randn(classes, dim, generator=g), dim=1)
    x = centres[labels] + noise * torch.randn(n, dim, generator=g) / dim**0.5
    return torch.nn.functional.normalize(x, dim=1), labels


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=60_502)
    p.add_argument("--classes", type=int, default=11_316)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--noise", type=float, default=1.0)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--skip", nargs="*", default=[], help="backends to skip: faiss-cpu torch-cpu torch-cuda")
    p.add_argument("--output", type=Path, default=None)
    args = p.parse_args(argv)

    x, y = sop_like(args.n, args.classes, args.dim, args.noise)
    runs = [("faiss-cpu", "faiss", torch.device("cpu")), ("torch-cpu", "torch", torch.device("cpu"))]
    if torch.cuda.is_available():
        runs.append(("torch-cuda", "torch", torch.device("cuda")))
    rows = []
    for name, backend, device in runs:
        if name in args.skip:
            continue
        xd = x.to(device)
        for seed in args.seeds:
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            value = nmi(xd, y, seed=seed, kmeans=backend)
            seconds = time.perf_counter() - t0
            rows.append({"backend": name, "seed": seed, "seconds": seconds, "nmi": value})
            print(f"{name:<11} seed {seed}: {seconds:8.1f} s  NMI {value:.2f}", flush=True)
    device_tag = "cuda" if torch.cuda.is_available() else "cpu"
    out = args.output or ROOT / "benchmarks" / "results" / f"nmi-{device_tag}.json"
    result = {
        "shape": {"n": args.n, "classes": args.classes, "dim": args.dim, "noise": args.noise},
        "threads": torch.get_num_threads(),
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "rows": rows,
    }
    atomic_write_text(out, json.dumps(result, indent=2) + "\n")
    print(f"saved {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
