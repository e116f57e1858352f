"""Where the time of one PLM similarity + loss call goes (B = 120, d = 512, N_rho = 100 by default).

Prints (1) the components timed on their own (fit_pieces, pairwise similarity, proxy similarity, the loss forward,
forward + backward, the proxies' orthonormal bases), (2) the primitives they are built from at the same shapes
(batched eigh of the M x M Gram matrices, QR of the d x m bases) on the device and on the CPU, and (3) the
torch.profiler table of one forward + backward, sorted by self device time and by self CPU time.

    python benchmarks/profile_similarity.py --device cuda
    python benchmarks/profile_similarity.py --device cpu --rows 15

JSON with the timings in benchmarks/results/profile-similarity-<device>.json (``--output`` to change).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))

from plm_lightning.manifold import PLMLoss, PLMSimilarity, ProxyManifold, fit_pieces  # noqa: E402
from plm_lightning.manifold.pieces import orthonormal_basis  # noqa: E402


def median_ms(fn, device: torch.device, repeats: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(1e3 * (time.perf_counter() - t0))
    return statistics.median(times)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=("cpu", "cuda", "auto"), default="auto")
    p.add_argument("--batch-size", type=int, default=120)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--num-proxies", type=int, default=100)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--rows", type=int, default=25, help="rows of each profiler table")
    p.add_argument("--output", type=Path, default=None)
    args = p.parse_args(argv)
    device = torch.device(
        "cuda"
        if args.device == "auto" and torch.cuda.is_available()
        else ("cpu" if args.device == "auto" else args.device)
    )
    g = torch.Generator().manual_seed(0)
    b, d = args.batch_size, args.dim
    x = F.normalize(torch.randn(b, d, generator=g), dim=1).to(device)
    z = F.normalize(torch.randn(b, d, generator=g), dim=1).to(device).requires_grad_(True)
    proxies = ProxyManifold(args.num_proxies, d, 2).to(device)
    sim = PLMSimilarity(n_alpha=4.0, n_beta=1.0, piece_dim=2, max_candidates=10, tau=0.5)
    loss_fn = PLMLoss(sim, proxy_neighbours=5)
    pieces = sim.fit(x)
    points, bases = proxies.points.detach(), proxies.bases().detach()

    def fwd_bwd():
        z.grad = None
        proxies.zero_grad(set_to_none=True)
        loss_fn(z, x, proxies)["loss"].backward()

    timings = {
        "fit_pieces": median_ms(lambda: fit_pieces(x, piece_dim=2, max_candidates=10, tau=0.5), device, args.repeats),
        "fit_pieces_no_selection": median_ms(
            lambda: fit_pieces(x, piece_dim=2, max_candidates=10, tau=0.5, subset_selection=False), device, args.repeats
        ),
        "pairwise": median_ms(lambda: sim.pairwise(x, pieces), device, args.repeats),
        "to_proxies": median_ms(lambda: sim.to_proxies(x, pieces, points, bases), device, args.repeats),
        "similarity_total": median_ms(lambda: sim(x, points, bases), device, args.repeats),
        "proxy_bases_fwd": median_ms(lambda: proxies.bases(), device, args.repeats),
        "loss_fwd": median_ms(lambda: loss_fn(z, x, proxies), device, args.repeats),
        "loss_fwd_bwd": median_ms(fwd_bwd, device, args.repeats),
    }
    gram = torch.randn(b, 10, 10, dtype=torch.float64, generator=g)
    gram = (gram @ gram.transpose(1, 2)).to(device)
    raw = torch.randn(b, d, 2, dtype=torch.float64, generator=g).to(device)
    timings.update(
        {
            "eigh_f64_BxMxM_device": median_ms(lambda: torch.linalg.eigh(gram), device, args.repeats),
            "eigh_f32_BxMxM_device": median_ms(lambda: torch.linalg.eigh(gram.float()), device, args.repeats),
            "eigh_f64_BxMxM_via_cpu": median_ms(
                lambda: [t.to(device) for t in torch.linalg.eigh(gram.cpu())], device, args.repeats
            ),
            "qr_f64_Bxdxm_device": median_ms(lambda: torch.linalg.qr(raw), device, args.repeats),
            "orthonormal_basis_f64_Bxdxm": median_ms(lambda: orthonormal_basis(raw), device, args.repeats),
        }
    )
    print(
        f"device {device} ({torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'}), B={b}, d={d}, "
        f"N_rho={args.num_proxies}, torch {torch.__version__}"
    )
    for k, v in timings.items():
        print(f"  {k:32} {v:9.3f} ms")

    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    fwd_bwd()
    with profile(activities=activities) as prof:
        for _ in range(3):
            fwd_bwd()
        if device.type == "cuda":
            torch.cuda.synchronize()
    averages = prof.key_averages()
    if device.type == "cuda":
        print(averages.table(sort_by="self_cuda_time_total", row_limit=args.rows))
    print(averages.table(sort_by="self_cpu_time_total", row_limit=args.rows))
    out = args.output or ROOT / "benchmarks" / "results" / f"profile-similarity-{device.type}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "device": str(device),
                "torch": torch.__version__,
                "config": vars(args) | {"output": str(out)},
                "timings_ms": timings,
            },
            indent=2,
        )
        + "\n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
