"""One training step of STML against one of PLM, in the same run, at the paper's batch (B = 120 images).

Both modules are built from the same paper config (``--config``, CUB GoogLeNet by default, with ``model.pretrained``
off: the weights do not change the cost) as ``plm-fit`` builds them. Measured on random images of the config's size:

- ``step``: the whole training step as the module computes it (student and teacher forward, similarity, loss,
  backward, EMA update), without data loading. STML embeds every image as two views (2B through the network);
  PLM here uses its own default of one view (``--plm-views`` to give it STML's two);
- ``method``: the method's own part only, on ready embeddings (PLM: pieces + similarity + loss with proxies; STML:
  contextualised similarity + both relaxed contrastive losses + self-distillation), forward + backward, with the
  number of top-level operators it dispatches (each at least one kernel launch on a GPU: benchmarks/ops.py).

    python benchmarks/methods.py                        # ~3 min on 2 CPU cores
    python benchmarks/methods.py --repeats 5 --image-size 160

Prints the table and saves JSON to benchmarks/results/methods.json (``--output``).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from plm_lightning.config import load_config
from plm_lightning.utils.io import atomic_write_text
from plm_lightning.utils.operators import top_level_operators

ROOT = Path(__file__).resolve().parents[1]


def build(config: str, method: str, views: int, batch_size: int):
    from plm_lightning.models.plm_module import PLMModule
    from plm_lightning.models.stml_module import STMLModule

    overrides = [
        f"method.name={method}",
        "model.pretrained=false",
        f"data.augmentation.views={views}",
        f"data.sampler.batch_size={batch_size}",
    ]
    cfg = load_config(config, overrides, check_data=False)
    container = OmegaConf.to_container(cfg, resolve=True)
    module = (STMLModule if method == "stml" else PLMModule)(container, in_channels=3)
    module.train()
    if module.__class__ is PLMModule and module.proxies is not None:  # as after the first epoch's initialisation
        g = torch.Generator().manual_seed(0)
        module.proxies.initialise_random_(g)
    return cfg, module


def _median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up: first-call allocations
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def step_fn(module, images: torch.Tensor, indices: torch.Tensor):
    """One step as training runs it: loss, backward, EMA (the optimiser's update is the same for both: left out)."""

    def run():
        module.zero_grad(set_to_none=True)
        if hasattr(module, "loss_terms"):  # STML
            out = module.loss_terms(images, indices)
        else:
            batch = images.flatten(0, 1) if images.dim() == 5 else images
            z = module.student(batch)
            with torch.no_grad():
                x = module.teacher(batch)
            out = module.criterion(z, x, module.proxies)
        out["loss"].backward()
        module.on_train_batch_end(None, None, 0)

    return run


def method_fn(module, n: int, dim: int, aux_dim: int):
    """The method's own computation on ready embeddings (n items): forward + backward."""
    g = torch.Generator().manual_seed(1)
    if hasattr(module, "loss_terms"):
        f = torch.randn(n, dim, generator=g).requires_grad_(True)
        aux = torch.randn(n, aux_dim, generator=g).requires_grad_(True)
        t = F.normalize(torch.randn(n, aux_dim, generator=g), dim=1)
        index = torch.arange(n // 2).repeat(2)
        same = index[:, None] == index[None, :]

        def run():
            f.grad = aux.grad = None
            module.criterion(f, aux, t, same)["loss"].backward()

        return run
    z = torch.randn(n, dim, generator=g).requires_grad_(True)
    x = F.normalize(torch.randn(n, dim, generator=g), dim=1)

    def run_plm():
        z.grad = None
        module.criterion(z, x, module.proxies)["loss"].backward()

    return run_plm


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="cub_googlenet.yaml")
    parser.add_argument("--batch-size", type=int, default=120, help="images per batch (B)")
    parser.add_argument("--image-size", type=int, default=None, help="default: the config's data.image_size")
    parser.add_argument("--plm-views", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "methods.json"))
    args = parser.parse_args(argv)

    rows = []
    for method, views in (("plm", args.plm_views), ("stml", 2)):
        cfg, module = build(args.config, method, views, args.batch_size)
        size = args.image_size or cfg.data.image_size
        g = torch.Generator().manual_seed(0)
        shape = (args.batch_size, views, 3, size, size) if views > 1 else (args.batch_size, 3, size, size)
        images = torch.randn(*shape, generator=g)
        indices = torch.arange(args.batch_size)
        n = args.batch_size * views
        aux_dim = cfg.method.stml.auxiliary_dim
        step = _median_seconds(step_fn(module, images, indices), args.repeats)
        own = method_fn(module, n, cfg.model.embedding_dim, aux_dim)
        own_s = _median_seconds(own, max(args.repeats, 10))
        operators = len(top_level_operators(own))
        rows.append(
            {
                "method": method,
                "views": views,
                "embeddings": n,
                "step_s": step,
                "method_ms": own_s * 1e3,
                "method_operators": operators,
            }
        )
        print(
            f"{method:5s} views {views}  {n:4d} embeddings  step {step:7.2f} s  method {own_s * 1e3:8.1f} ms"
            f"  {operators} operators",
            flush=True,
        )
    plm, stml = rows
    result = {
        "config": args.config,
        "batch_size": args.batch_size,
        "image_size": args.image_size or int(load_config(args.config, check_data=False).data.image_size),
        "backbone": str(load_config(args.config, check_data=False).model.backbone),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
        "rows": rows,
        "stml_over_plm_step": stml["step_s"] / plm["step_s"],
        "stml_over_plm_method": stml["method_ms"] / plm["method_ms"],
    }
    print(
        f"STML / PLM: whole step x{result['stml_over_plm_step']:.2f}, the method's own part "
        f"x{result['stml_over_plm_method']:.2f}"
    )
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps(result, indent=2) + "\n")
    print(f"saved {out}")
    return result


if __name__ == "__main__":
    main()
