"""Cost of the PLM similarity + loss (docs/method.md, the studies: compute and memory as B, d and N_rho grow).

What is measured, for B in {60, 120, 240}, d in {128, 512}, N_rho in {0, 100, 400}, with the default knobs
(N_alpha 4, N_beta 1, m 2, k 5, M = 2k = 10, tau 0.5, q = 5) on random L2-normalised teacher embeddings x and
student embeddings z (requires_grad):

* vectorised: forward + backward of ``PLMLoss(PLMSimilarity(...), proxy_neighbours=5)(z, x, proxies)`` (pieces,
  pairwise and proxy similarity, the three loss terms, ``loss.backward()`` into z and the proxies). Wall clock
  (time.perf_counter, torch.cuda.synchronize around the call on CUDA), median of several repeats after warm-up.
* peak memory of that call: on CUDA torch.cuda.max_memory_allocated after reset_peak_memory_stats; on CPU the
  running sum of the profiler's allocation/free events (torch.profiler, profile_memory=True) in time order. Both
  are reported relative to what was allocated before the call (inputs and parameters excluded).
* loop: the float64 numpy loop reference (tests/manifold/reference.py: pieces, pairwise similarity, proxy
  similarity, the three loss terms; forward only). It is slow, so by default it runs only where it is cheap plus the
  headline config (B=120, d=512, N_rho=100); ``--full`` runs it everywhere. speedup = loop / vectorised fwd+bwd.
  The two loss values are compared as a sanity check (``loss_abs_diff``).
* GoogLeNet: one training step (forward + backward + AdamW step) of
  ``build_embedder("googlenet", embedding_dim=512, pretrained=False)`` on B random 3 x 227 x 227 images (a trivial
  mean-square loss on the embeddings, so the PLM cost is not in the denominator). PLM overhead = vectorised
  similarity+loss time (d=512, N_rho=100) / GoogLeNet step time. B=120 is always measured; the other batch sizes
  are measured only while the ``--googlenet-budget`` allows (and memory suffices), otherwise extrapolated linearly
  from the measured per-image time and flagged ``"measured": false``. ``--full`` measures them all.

Run (from the repository root, with the project's venv):

    python benchmarks/similarity.py                    # CPU or CUDA (auto), ~3-5 min on 2 CPU cores
    python benchmarks/similarity.py --device cuda --full --repeats 20
    python benchmarks/similarity.py --profile          # also a per-stage breakdown at B=240, d=512, N_rho=400
    python benchmarks/similarity.py --threads 0        # torch's default thread count (CPU default is 1 thread)

Results: a table on stdout and JSON in benchmarks/results/similarity-<device>.json (``--output`` to change).
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
for _p in (ROOT / "src", ROOT / "tests" / "manifold"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

import reference as ref  # noqa: E402  (tests/manifold/reference.py)

from plm_lightning.manifold import (  # noqa: E402
    PLMLoss,
    PLMSimilarity,
    ProxyManifold,
    neighbourhood_loss,
    point_loss,
    proxy_loss,
)

BATCH_SIZES = (60, 120, 240)
DIMS = (128, 512)
NUM_PROXIES = (0, 100, 400)
HEADLINE = (120, 512, 100)
PROFILE_CONFIG = (240, 512, 400)

# Default knobs (docs/method.md): N_alpha 4, N_beta 1, m 2, k 5 -> M = 2k = 10, tau 0.5, q = k = 5.
KNOBS = dict(n_alpha=4.0, n_beta=1.0, piece_dim=2, max_candidates=10, tau=0.5)
PROXY_NEIGHBOURS = 5

# The loop reference costs about B * (B + N_rho) * d Python-level multiply-adds; by default it runs where that is at
# most this (a few seconds each on a 2-core CPU) plus the headline config.
LOOP_DEFAULT_MAX_COST = 4.0e6
# Measured on CPU: a GoogLeNet training step at 227 px holds about 50 MB per image; used to skip batch sizes that
# would not fit in the available memory.
GOOGLENET_BYTES_PER_IMAGE = 60 * 2**20

# Default thread count on CPU. On a small shared CPU (2 cores here, other jobs running) OpenMP threads that spin-wait
# for descheduled peers make multi-threaded timings swing wildly: measured at load average ~6 on 2 cores, one PLM
# fwd+bwd at B=240, d=512, N_rho=400 took 73-180 ms with 1 thread and 520-9566 ms with 2; a GoogLeNet step ran at
# 5.8 img/s with 1 thread and 1.2 img/s with 2. One thread gives stable numbers, and both sides of the overhead ratio
# use the same count; on a dedicated machine pass --threads 0 (torch's default: all cores).
THREADS_NOTE = "CPU default 1 thread: multi-threaded OpenMP timings are unstable on a loaded shared CPU"

TARGET_SPEEDUP = 20.0
TARGET_OVERHEAD = 0.10


# ----------------------------------------------------------------------------------------------------------- helpers
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def mem_available_bytes() -> Optional[int]:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def loadavg() -> Optional[list[float]]:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def timed(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds of one call, synchronised on CUDA."""
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def repeat_timing(
    fn: Callable[[], object], device: torch.device, *, warmup: int, repeats: int, budget_s: float, min_repeats: int = 3
) -> list[float]:
    """Warm-up calls, then up to ``repeats`` timed calls; stops early (after at least ``min_repeats``) once the timed
    calls have used ``budget_s`` seconds."""
    for _ in range(warmup):
        timed(fn, device)
    times: list[float] = []
    for _ in range(repeats):
        times.append(timed(fn, device))
        if len(times) >= min(min_repeats, repeats) and sum(times) >= budget_s:
            break
    return times


def cpu_peak_bytes(fn: Callable[[], object]) -> Optional[int]:
    """Peak of live CPU tensor memory allocated during ``fn`` (above what was live before it).

    torch.profiler(profile_memory=True) records one event per CPU allocation (+nbytes) and free (-nbytes) made while
    it is active; frees of memory allocated before profiling are not reported. The running sum of these events in
    time order is the live memory allocated by the call; its maximum is the peak.
    """
    try:
        from torch._C._profiler import _EventType
        from torch.profiler import ProfilerActivity, profile
    except ImportError:
        return None
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = []
    stack = list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        ev = stack.pop()
        if ev.tag == _EventType.Allocation and ev.extra_fields.device.type == "cpu":
            events.append((ev.start_time_ns, ev.extra_fields.alloc_size))
        stack.extend(ev.children)
    events.sort(key=lambda e: e[0])
    live = peak = 0
    for _, nbytes in events:
        live += nbytes
        peak = max(peak, live)
    return peak


def peak_bytes(fn: Callable[[], object], device: torch.device) -> Optional[int]:
    if device.type == "cuda":
        sync(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        sync(device)
        return torch.cuda.max_memory_allocated(device) - base
    return cpu_peak_bytes(fn)


def memory_method(device: torch.device) -> str:
    if device.type == "cuda":
        return (
            "torch.cuda.reset_peak_memory_stats before one fwd+bwd call, then torch.cuda.max_memory_allocated "
            "minus torch.cuda.memory_allocated before the call (caching-allocator bytes in tensors; inputs, "
            "parameters and anything live before the call excluded)"
        )
    return (
        "torch.profiler.profile(activities=[CPU], profile_memory=True) around one fwd+bwd call; the CPU "
        "allocation events (+bytes on allocation, -bytes on free, from the profiler's event tree) are summed in "
        "time order and the maximum of the running sum is the peak of live tensor memory allocated by the call "
        "(inputs, parameters and anything live before the call excluded; allocator caching and non-tensor "
        "memory not included)"
    )


# ------------------------------------------------------------------------------------------------------ PLM problem
class Problem:
    """Random inputs for one (B, d, N_rho) config on a device, and the fwd+bwd call under test."""

    def __init__(self, b: int, d: int, k: int, device: torch.device, seed: int):
        g = torch.Generator().manual_seed(seed)
        self.b, self.d, self.k, self.device = b, d, k, device
        self.x = F.normalize(torch.randn(b, d, generator=g), dim=1).to(device)
        self.z = F.normalize(torch.randn(b, d, generator=g), dim=1).to(device).requires_grad_(True)
        self.proxies: Optional[ProxyManifold] = None
        if k > 0:
            self.proxies = ProxyManifold(k, d, KNOBS["piece_dim"])
            with torch.no_grad():
                self.proxies.points.copy_(F.normalize(torch.randn(k, d, generator=g), dim=1))
                self.proxies.raw_bases.copy_(torch.randn(k, d, self.proxies.piece_dim, generator=g))
            self.proxies.to(device)
        self.loss_fn = PLMLoss(PLMSimilarity(**KNOBS), proxy_neighbours=PROXY_NEIGHBOURS)

    def zero_grad(self) -> None:
        self.z.grad = None
        if self.proxies is not None:
            self.proxies.zero_grad(set_to_none=True)

    def step(self) -> dict:
        self.zero_grad()
        out = self.loss_fn(self.z, self.x, self.proxies)
        out["loss"].backward()
        return out

    def loss_value(self) -> float:
        with torch.no_grad():
            return float(self.loss_fn(self.z, self.x, self.proxies)["loss"])

    def loop_reference(self) -> tuple[float, float]:
        """(seconds, total loss) of the numpy loop reference on the same inputs (forward only, float64)."""
        X = F.normalize(self.x.detach().float(), dim=1).double().cpu().numpy()
        Z = F.normalize(self.z.detach().float(), dim=1).double().cpu().numpy()
        m, M, tau = KNOBS["piece_dim"], KNOBS["max_candidates"], KNOBS["tau"]
        na, nb = KNOBS["n_alpha"], KNOBS["n_beta"]
        if self.proxies is not None:
            with torch.no_grad():
                R = self.proxies.points.detach().double().cpu().numpy()
                V = self.proxies.bases().detach().double().cpu().numpy()
        t0 = time.perf_counter()
        pieces = ref.fit_all_pieces(X, m, M, tau)
        S = ref.pairwise_similarity(X, pieces, na, nb)
        loss = ref.point_loss(Z, S)
        if self.proxies is not None:
            SP = ref.proxy_similarity(X, pieces, R, V, na, nb)
            loss += ref.proxy_loss(Z, R, SP) + ref.neighbourhood_loss(X, SP, R, V, PROXY_NEIGHBOURS)
        return time.perf_counter() - t0, float(loss)


def loop_selected(b: int, d: int, k: int, full: bool) -> bool:
    return full or (b, d, k) == HEADLINE or b * (b + k) * d <= LOOP_DEFAULT_MAX_COST


def bench_config(b: int, d: int, k: int, device: torch.device, args) -> dict:
    prob = Problem(b, d, k, device, seed=args.seed + 1000 * b + d + k)
    times = repeat_timing(prob.step, device, warmup=args.warmup, repeats=args.repeats, budget_s=args.config_budget)
    peak = peak_bytes(prob.step, device)
    row = {
        "B": b,
        "d": d,
        "N_rho": k,
        "vectorised_ms": 1e3 * statistics.median(times),
        "vectorised_min_ms": 1e3 * min(times),
        "vectorised_repeats": len(times),
        "peak_mem_mb": None if peak is None else peak / 2**20,
        "loop_ms": None,
        "speedup_vs_loop": None,
        "loss_abs_diff": None,
    }
    if loop_selected(b, d, k, args.full) and not args.no_loop:
        loop_s, loop_loss = prob.loop_reference()
        row["loop_ms"] = 1e3 * loop_s
        row["speedup_vs_loop"] = row["loop_ms"] / row["vectorised_ms"]
        row["loss_abs_diff"] = abs(loop_loss - prob.loss_value())
    del prob
    gc.collect()
    return row


# --------------------------------------------------------------------------------------------------------- GoogLeNet
def bench_googlenet(device: torch.device, args, log) -> dict[int, dict]:
    from plm_lightning.models.head import build_embedder

    torch.manual_seed(args.seed)
    model = build_embedder("googlenet", embedding_dim=512, pooling="avg+max", pretrained=False, in_channels=3).to(
        device
    )
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=1e-2)
    g = torch.Generator().manual_seed(args.seed)

    def make_step(b: int):
        images = torch.randn(b, 3, 227, 227, generator=g).to(device)

        def step():
            opt.zero_grad(set_to_none=True)
            emb = model(images)
            emb.float().pow(2).mean().backward()
            opt.step()

        return step

    # Warm-up on a small batch: one-time allocations, AdamW state, kernel selection.
    timed(make_step(4 if device.type == "cpu" else 32), device)
    results: dict[int, dict] = {}
    spent = 0.0
    order = [120] + [b for b in BATCH_SIZES if b != 120]
    for b in order:
        per_image = None  # ms per image at the nearest measured batch size
        measured = [r for r in results.values() if r["measured"]]
        if measured:
            near = min(measured, key=lambda r: abs(r["B"] - b))
            per_image = near["googlenet_step_ms"] / near["B"]
        projected_s = None if per_image is None else per_image * b * args.googlenet_repeats / 1e3
        reason = None
        if b != 120 and not args.full:
            if projected_s is not None and spent + projected_s > args.googlenet_budget:
                reason = (
                    f"projected {projected_s:.0f} s would exceed --googlenet-budget "
                    f"{args.googlenet_budget:.0f} s (spent {spent:.0f} s)"
                )
            avail = mem_available_bytes()
            if device.type == "cpu" and avail is not None and b * GOOGLENET_BYTES_PER_IMAGE > 0.8 * avail:
                reason = f"~{b * GOOGLENET_BYTES_PER_IMAGE / 2**30:.1f} GiB needed, {avail / 2**30:.1f} GiB available"
        if reason is not None:
            results[b] = {
                "B": b,
                "googlenet_step_ms": per_image * b,
                "measured": False,
                "repeats": 0,
                "note": f"extrapolated linearly from the per-image time at the nearest measured B ({reason})",
            }
            log(f"  googlenet B={b}: extrapolated ({reason})")
            continue
        try:
            step = make_step(b)
            if device.type == "cuda":
                # Untimed first step per shape: cuDNN autotuning and allocator growth would otherwise be timed
                # (it made the step look 4-5x slower than in benchmarks/train_step.py).
                timed(step, device)
            times = [timed(step, device) for _ in range(args.googlenet_repeats)]
        except (RuntimeError, MemoryError) as exc:  # CUDA OOM is a RuntimeError subclass
            if per_image is None:
                raise
            results[b] = {
                "B": b,
                "googlenet_step_ms": per_image * b,
                "measured": False,
                "repeats": 0,
                "note": f"extrapolated (step failed: {type(exc).__name__})",
            }
            log(f"  googlenet B={b}: failed ({type(exc).__name__}), extrapolated")
            continue
        finally:
            opt.zero_grad(set_to_none=True)
            step = None
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
        spent += sum(times)
        results[b] = {
            "B": b,
            "googlenet_step_ms": 1e3 * statistics.median(times),
            "measured": True,
            "repeats": len(times),
        }
        log(f"  googlenet B={b}: {1e3 * statistics.median(times):.0f} ms ({b / statistics.median(times):.1f} img/s)")
    model = opt = None  # frees them before the next benchmark (the closures above share these variables)
    gc.collect()
    return results


# ----------------------------------------------------------------------------------------------------------- profile
def profile_stages(device: torch.device, args) -> dict:
    """Per-stage fwd(+bwd) time of the vectorised implementation at B=240, d=512, N_rho=400, and the top torch ops
    (self time) grouped by input shape."""
    b, d, k = PROFILE_CONFIG
    prob = Problem(b, d, k, device, seed=args.seed)
    sim = prob.loss_fn.similarity
    x, z, proxies = prob.x, prob.z, prob.proxies
    zn = F.normalize(z, dim=1)
    with torch.no_grad():
        bases = proxies.bases()
        pieces = sim.fit(x)
        s = sim.pairwise(x, pieces)
        s_proxy = sim.to_proxies(x, pieces, proxies.points, bases)

    def bwd(fn):
        def run():
            prob.zero_grad()
            fn().backward()

        return run

    stages = {
        "fit_pieces (pieces.py fit_pieces)": lambda: sim.fit(x),
        "pairwise similarity (similarity.py PLMSimilarity.pairwise)": lambda: sim.pairwise(x, pieces),
        "proxy similarity (similarity.py PLMSimilarity.to_proxies)": lambda: sim.to_proxies(
            x, pieces, proxies.points, bases
        ),
        "point_loss fwd+bwd (loss.py point_loss)": bwd(lambda: point_loss(F.normalize(z, dim=1), s)),
        "proxy_loss fwd+bwd (loss.py proxy_loss)": bwd(
            lambda: proxy_loss(F.normalize(z, dim=1), proxies.points, s_proxy)
        ),
        "neighbourhood_loss fwd+bwd incl. QR (loss.py neighbourhood_loss)": bwd(
            lambda: neighbourhood_loss(x, s_proxy, proxies.points, proxies.bases(), PROXY_NEIGHBOURS)
        ),
        "whole PLMLoss fwd+bwd": prob.step,
    }
    del zn
    out = {"config": {"B": b, "d": d, "N_rho": k}, "stages_ms": {}}
    for name, fn in stages.items():
        times = repeat_timing(fn, device, warmup=1, repeats=3, budget_s=args.config_budget)
        out["stages_ms"][name] = 1e3 * statistics.median(times)

    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    # Grouped by input shapes: the shapes identify the statement (e.g. B x K x d is the broadcast difference of
    # cdist_safe in proxy_loss, B x P x d x m the einsums of piece_distances).
    with profile(activities=acts, record_shapes=True) as prof:
        prob.step()
        sync(device)
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    out["top_ops_by_shape"] = prof.key_averages(group_by_input_shape=True).table(
        sort_by=key, row_limit=15, max_name_column_width=30, max_shapes_column_width=60
    )
    return out


# -------------------------------------------------------------------------------------------------------------- main
def fmt(v, spec: str, none: str = "-") -> str:
    return none if v is None else format(v, spec)


def write_json_atomic(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh, indent=2)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--device", choices=("cpu", "cuda", "auto"), default="auto")
    p.add_argument(
        "--full",
        action="store_true",
        help="run the loop reference on every config and measure GoogLeNet at every B (slow)",
    )
    p.add_argument("--repeats", type=int, default=5, help="timed repeats of the vectorised call (median reported)")
    p.add_argument("--warmup", type=int, default=1, help="untimed warm-up calls before the timed repeats")
    p.add_argument(
        "--config-budget",
        type=float,
        default=6.0,
        help="seconds of timed repeats per config after which repeating stops (at least 3 repeats)",
    )
    p.add_argument("--googlenet-repeats", type=int, default=1, help="timed GoogLeNet steps per batch size")
    p.add_argument(
        "--googlenet-budget",
        type=float,
        default=120.0,
        help="seconds of GoogLeNet steps; B=120 always runs, other B only while they fit "
        "(else extrapolated); ignored with --full",
    )
    p.add_argument("--no-googlenet", action="store_true", help="skip the GoogLeNet comparison")
    p.add_argument("--no-loop", action="store_true", help="skip the loop reference")
    p.add_argument(
        "--profile",
        action="store_true",
        help="also time each stage at B=240, d=512, N_rho=400 and list the top ops (by input shape)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads; default 1 on CPU (multi-threaded timings are unstable on a loaded shared "
        "CPU), torch's default on CUDA; 0 = torch's default (all cores)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--output", type=Path, default=None, help="JSON path (default benchmarks/results/similarity-<device>.json)"
    )
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cuda" and not torch.cuda.is_available():
        print("--device cuda: CUDA is not available", file=sys.stderr)
        return 2
    device = torch.device(args.device)
    if args.threads is None:
        args.threads = 1 if device.type == "cpu" else 0
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    output = args.output or ROOT / "benchmarks" / "results" / f"similarity-{device.type}.json"
    wall0 = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - wall0:6.1f}s] {msg}", flush=True)

    meta = {
        "benchmark": "plm similarity + loss (benchmarks/similarity.py)",
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "device": device.type,
        "device_name": device_name(device),
        "torch_version": torch.__version__,
        "num_threads": torch.get_num_threads(),
        "threads_note": THREADS_NOTE if device.type == "cpu" else None,
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average_start": loadavg(),
        "settings": {
            "knobs": {
                **KNOBS,
                "proxy_neighbours_q": PROXY_NEIGHBOURS,
                "delta": 1.0,
                "lambda_proxy": 1.0,
                "lambda_nbhd": 1.0,
            },
            "repeats": args.repeats,
            "warmup": args.warmup,
            "config_budget_s": args.config_budget,
            "googlenet_repeats": args.googlenet_repeats,
            "googlenet_budget_s": args.googlenet_budget,
            "full": args.full,
            "seed": args.seed,
            "loop_default_selection": f"B*(B+N_rho)*d <= {LOOP_DEFAULT_MAX_COST:g} or the headline config",
        },
        "timing_method": (
            "wall clock (time.perf_counter, torch.cuda.synchronize before and after on CUDA) of "
            "PLMLoss forward + loss.backward(); median of the timed repeats after warm-up. The loop "
            "reference is timed once, forward only (numpy float64)."
        ),
        "memory_method": memory_method(device),
    }
    log(
        f"device {device.type} ({meta['device_name']}), torch {torch.__version__}, {meta['num_threads']} threads, "
        f"load average {meta['load_average_start']}"
    )

    rows = []
    for b, d, k in itertools.product(BATCH_SIZES, DIMS, NUM_PROXIES):
        row = bench_config(b, d, k, device, args)
        rows.append(row)
        log(
            f"  B={b:3d} d={d:3d} N_rho={k:3d}: {row['vectorised_ms']:8.1f} ms, "
            f"peak {fmt(row['peak_mem_mb'], '.1f')} MB, loop {fmt(row['loop_ms'], '.0f')} ms"
        )

    googlenet: dict[int, dict] = {}
    if not args.no_googlenet:
        googlenet = bench_googlenet(device, args, log)
    by_cfg = {(r["B"], r["d"], r["N_rho"]): r for r in rows}
    gn_rows = []
    for b in BATCH_SIZES:
        if b not in googlenet:
            continue
        gr = dict(googlenet[b])
        plm_ms = by_cfg[(b, 512, 100)]["vectorised_ms"]
        gr["plm_ms_d512_nrho100"] = plm_ms
        gr["plm_overhead_fraction"] = plm_ms / gr["googlenet_step_ms"]
        gr["plm_overhead_fraction_by_config"] = {
            f"d={d},N_rho={k}": by_cfg[(b, d, k)]["vectorised_ms"] / gr["googlenet_step_ms"]
            for d, k in itertools.product(DIMS, NUM_PROXIES)
        }
        gn_rows.append(gr)
        for r in rows:
            if r["B"] == b:
                r["overhead_vs_googlenet_step"] = r["vectorised_ms"] / gr["googlenet_step_ms"]

    head = by_cfg[HEADLINE]
    gn120 = next((g for g in gn_rows if g["B"] == 120), None)
    headline = {
        "config": {"B": HEADLINE[0], "d": HEADLINE[1], "N_rho": HEADLINE[2]},
        "vectorised_ms": head["vectorised_ms"],
        "loop_ms": head["loop_ms"],
        "speedup_vs_loop": head["speedup_vs_loop"],
        "googlenet_step_ms": None if gn120 is None else gn120["googlenet_step_ms"],
        "plm_overhead_fraction": None if gn120 is None else gn120["plm_overhead_fraction"],
        "target_speedup_min": TARGET_SPEEDUP,
        "target_overhead_max": TARGET_OVERHEAD,
        "meets_speedup_target": None if head["speedup_vs_loop"] is None else head["speedup_vs_loop"] >= TARGET_SPEEDUP,
        "meets_overhead_target": None if gn120 is None else gn120["plm_overhead_fraction"] < TARGET_OVERHEAD,
    }

    profile = None
    if args.profile:
        log("profiling stages at B=240, d=512, N_rho=400")
        profile = profile_stages(device, args)

    result = {**meta, "rows": rows, "googlenet": gn_rows, "headline": headline}
    if profile is not None:
        result["profile"] = profile
    result["load_average_end"] = loadavg()
    result["wall_time_s"] = time.perf_counter() - wall0

    # ---- printed table
    print()
    print(
        f"PLM similarity + loss, fwd+bwd — {device.type} ({meta['device_name']}), torch {torch.__version__}, "
        f"{meta['num_threads']} threads"
    )
    hdr = (
        f"{'B':>4} {'d':>4} {'N_rho':>5} | {'vec ms':>9} {'min ms':>9} {'peak MB':>8} | {'loop ms':>9} {'speedup':>8}"
        f" {'|dloss|':>8} | {'% GoogLeNet':>11}"
    )
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        ov = r.get("overhead_vs_googlenet_step")
        print(
            f"{r['B']:>4} {r['d']:>4} {r['N_rho']:>5} | {r['vectorised_ms']:>9.1f} {r['vectorised_min_ms']:>9.1f} "
            f"{fmt(r['peak_mem_mb'], '8.1f'):>8} | {fmt(r['loop_ms'], '9.0f'):>9} "
            f"{fmt(r['speedup_vs_loop'], '7.1f') + ('x' if r['speedup_vs_loop'] else ''):>8} "
            f"{fmt(r['loss_abs_diff'], '8.1e'):>8} | {fmt(None if ov is None else 100 * ov, '10.2f'):>11}"
        )
    if gn_rows:
        print()
        print(
            f"{'B':>4} | {'GoogLeNet step ms':>17} {'img/s':>7} {'measured':>8} | {'PLM ms (d512,N100)':>18} "
            f"{'overhead':>8}"
        )
        for g in gn_rows:
            print(
                f"{g['B']:>4} | {g['googlenet_step_ms']:>17.0f} {1e3 * g['B'] / g['googlenet_step_ms']:>7.1f} "
                f"{'yes' if g['measured'] else 'extrap.':>8} | {g['plm_ms_d512_nrho100']:>18.1f} "
                f"{100 * g['plm_overhead_fraction']:>7.2f}%"
            )
    print()
    sp, ov = headline["speedup_vs_loop"], headline["plm_overhead_fraction"]
    print(
        f"headline (B=120, d=512, N_rho=100): speedup vs loop {fmt(sp, '.1f')}x (target >= {TARGET_SPEEDUP:g}x), "
        f"PLM overhead {fmt(None if ov is None else 100 * ov, '.2f')}% of a GoogLeNet step "
        f"(target < {100 * TARGET_OVERHEAD:g}%)"
    )
    if profile is not None:
        print()
        print(f"stage breakdown at B={PROFILE_CONFIG[0]}, d={PROFILE_CONFIG[1]}, N_rho={PROFILE_CONFIG[2]}:")
        for name, ms in profile["stages_ms"].items():
            print(f"  {ms:9.1f} ms  {name}")
        print(profile["top_ops_by_shape"])
    print(
        f"load average start {meta['load_average_start']}, end {result['load_average_end']}; "
        f"wall time {result['wall_time_s']:.0f} s"
    )

    write_json_atomic(Path(output), result)
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
