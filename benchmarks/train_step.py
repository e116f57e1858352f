"""One PLM training step with a GoogLeNet embedder: throughput, peak memory and PLM's share, per precision.

What one step is (the same work as ``PLMModule.training_step`` + ``on_train_batch_end`` + the optimizer step under
Lightning; the data loader is excluded: the batch is already on the device):

    student forward (GoogLeNet + avg+max pooling + linear head)  -> z
    teacher forward under no_grad (the EMA copy)                  -> x
    PLMLoss(z, x, proxies)  (pieces, pairwise + proxy similarity, point/proxy/neighbourhood loss)
    backward, AdamW step, EMA update of the teacher

Precisions follow Lightning's plugins: ``32-true`` = float32 everywhere (TF32 off, PyTorch's default, which is what
Lightning leaves it at); ``32-true+tf32`` = the same with ``torch.set_float32_matmul_precision("high")``;
``bf16-mixed`` = the forward passes and the loss under ``torch.autocast(dtype=torch.bfloat16)``, backward outside it,
no grad scaler (the PLM loss casts itself to float32); ``16-mixed`` = autocast float16 with a GradScaler.

PLM share: the similarity + loss forward and backward are timed separately (CUDA events around the loss call and
around a second backward through the loss alone on detached leaves with the same shapes), divided by the step time.

Run (repository root, project venv):

    python benchmarks/train_step.py --device cuda            # B=120, 227 px, d=512, N_rho=100
    python benchmarks/train_step.py --device cpu --batch-size 8 --image-size 64 --steps 2   # smoke run

Results: a table on stdout and JSON in benchmarks/results/train-step-<device>.json (``--output`` to change).
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))

from plm_lightning.manifold import PLMLoss, PLMSimilarity, ProxyManifold  # noqa: E402
from plm_lightning.manifold.teacher import ema_update_  # noqa: E402
from plm_lightning.models.head import build_embedder  # noqa: E402

PRECISIONS = ("32-true", "32-true+tf32", "bf16-mixed", "16-mixed")


class Timer:
    """Wall time of a region: CUDA events on the GPU (no host sync inside the region), perf_counter on the CPU."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def __enter__(self):
        if self.cuda:
            self.start, self.end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            self.start.record()
        else:
            self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        if self.cuda:
            self.end.record()
        else:
            self.t1 = time.perf_counter()

    @property
    def ms(self) -> float:
        if self.cuda:
            self.end.synchronize()
            return self.start.elapsed_time(self.end)
        return 1e3 * (self.t1 - self.t0)


def run_precision(precision: str, args, device: torch.device) -> dict:
    torch.manual_seed(args.seed)
    torch.set_float32_matmul_precision("high" if precision == "32-true+tf32" else "highest")
    autocast_dtype = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(precision)
    amp = (lambda: torch.autocast(device.type, dtype=autocast_dtype)) if autocast_dtype else nullcontext
    scaler = torch.amp.GradScaler(device.type) if precision == "16-mixed" else None

    student = build_embedder(
        args.backbone, embedding_dim=args.embedding_dim, pretrained=False, pooling="avg+max", in_channels=3
    ).to(device)
    teacher = copy.deepcopy(student).requires_grad_(False).eval()
    proxies = ProxyManifold(args.num_proxies, args.embedding_dim, piece_dim=2).to(device) if args.num_proxies else None
    # The defaults (k = 5, M = 2k = 10), as benchmarks/similarity.py.
    criterion = PLMLoss(
        PLMSimilarity(n_alpha=4.0, n_beta=1.0, piece_dim=2, max_candidates=10, tau=0.5), proxy_neighbours=5
    )
    params = list(student.parameters()) + (list(proxies.parameters()) if proxies is not None else [])
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    images = torch.randn(args.batch_size, 3, args.image_size, args.image_size, device=device)

    def step(timed: bool) -> dict:
        times = {}
        total = Timer(device)
        with total:
            optimizer.zero_grad(set_to_none=True)
            with amp():
                z = student(images)
                with torch.no_grad():
                    x = teacher(images)
                loss_timer = Timer(device)
                with loss_timer:
                    loss = criterion(z, x, proxies)["loss"]
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
            else:
                loss.backward()
                optimizer.step()
            ema_update_(teacher, student, 0.999)
        times["step_ms"] = total.ms
        times["plm_forward_ms"] = loss_timer.ms
        if timed:
            # Backward of the loss alone: same shapes, detached leaves, so nothing flows into the network.
            z_leaf = z.detach().requires_grad_(True)
            bwd = Timer(device)
            with amp():
                loss2 = criterion(z_leaf, x, proxies)["loss"]
            with bwd:
                loss2.backward()
            times["plm_backward_ms"] = bwd.ms
            optimizer.zero_grad(set_to_none=True)
        return times

    for _ in range(args.warmup):
        step(timed=False)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    runs = [step(timed=True) for _ in range(args.steps)]
    peak_mb = (torch.cuda.max_memory_allocated() - base) / 2**20 if device.type == "cuda" else None
    step_ms = statistics.median(r["step_ms"] for r in runs)
    plm_ms = statistics.median(r["plm_forward_ms"] + r["plm_backward_ms"] for r in runs)
    return {
        "precision": precision,
        "step_ms": step_ms,
        "images_per_s": 1e3 * args.batch_size / step_ms,
        "plm_ms": plm_ms,
        "plm_share": plm_ms / step_ms,
        "peak_mem_above_weights_mb": peak_mb,
        "steps": args.steps,
        "all_step_ms": [r["step_ms"] for r in runs],
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=("cpu", "cuda", "auto"), default="auto")
    p.add_argument(
        "--precisions", default=",".join(PRECISIONS), help="comma-separated subset of " + ",".join(PRECISIONS)
    )
    p.add_argument("--backbone", default="googlenet")
    p.add_argument("--batch-size", type=int, default=120)
    p.add_argument("--image-size", type=int, default=227)
    p.add_argument("--embedding-dim", type=int, default=512)
    p.add_argument("--num-proxies", type=int, default=100)
    p.add_argument("--steps", type=int, default=20, help="timed steps (median reported)")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", type=Path, default=None)
    args = p.parse_args(argv)
    device = torch.device(
        "cuda"
        if args.device == "auto" and torch.cuda.is_available()
        else ("cpu" if args.device == "auto" else args.device)
    )
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its fastest kernels (Lightning's default)
    precisions = [q for q in args.precisions.split(",") if q]
    if device.type == "cpu":
        precisions = [q for q in precisions if q not in ("16-mixed", "32-true+tf32")]
    rows = [run_precision(q, args, device) for q in precisions]
    base = next((r for r in rows if r["precision"] == "32-true"), None)
    for r in rows:
        r["speedup_vs_32_true"] = base["step_ms"] / r["step_ms"] if base else None

    header = f"{'precision':14} {'step ms':>9} {'img/s':>8} {'PLM ms':>8} {'PLM %':>6} {'peak MB':>9} {'x 32-true':>9}"
    print(
        f"device: {torch.cuda.get_device_name() if device.type == 'cuda' else platform.processor() or 'cpu'}; "
        f"{args.backbone}, B={args.batch_size}, {args.image_size} px, d={args.embedding_dim}, "
        f"N_rho={args.num_proxies}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        peak = f"{r['peak_mem_above_weights_mb']:9.0f}" if r["peak_mem_above_weights_mb"] is not None else f"{'-':>9}"
        print(
            f"{r['precision']:14} {r['step_ms']:9.1f} {r['images_per_s']:8.1f} {r['plm_ms']:8.2f} "
            f"{100 * r['plm_share']:6.2f} {peak} {r['speedup_vs_32_true'] or float('nan'):9.2f}"
        )
    result = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "config": {k: v for k, v in vars(args).items() if k != "output"},
        "rows": rows,
    }
    out = args.output or ROOT / "benchmarks" / "results" / f"train-step-{device.type}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
