"""Images per second one data-loader worker delivers on CUB-like JPEG files, with PIL and with torchvision's
``decode_jpeg``, for the training and the evaluation pipeline.

Generates ``--images`` JPEG files with CUB-200-2011's size distribution (about 500 x 375, the longer side 500, the
shorter 300-500; quality 90; smooth random content, so the files compress like photographs rather than noise), then
runs in this one process, as one worker would:

* ``train``: decode -> RGB -> RandomResizedCrop(227, scale 0.16-1) -> horizontal flip -> float -> ImageNet
  normalisation (the paper configs' pipeline, ``data.transforms.build_transform``);
* ``eval``: decode -> RGB -> Resize(256) -> CenterCrop(227) -> float -> normalisation;
* ``..., before``: the same with the conversion to float first (the order until the geometry moved onto the uint8
  image), for the ratio in the same run.

Decoders: ``pil`` is ``data.images.load_rgb`` (PIL, fully decoded, converted to RGB; the datasets' decoder until
this benchmark); ``decode_jpeg`` is ``data.images.load_rgb_tensor``, what the datasets use now: torchvision's
``decode_jpeg(..., mode=RGB)`` into a uint8 tensor for JPEG files. The same transforms follow either. Also
reported: the decode alone, and the largest pixel difference between the two
decoders (both are libjpeg-turbo builds; IDCT and upsampling choices may differ by a few levels).

With the measured per-worker rate it prints how many workers feed a GPU step that consumes ``--gpu-rate`` images/s
(1,765: GoogLeNet + PLM at B = 120 on an H100, docs/benchmarks.md).

    python benchmarks/loader.py
    python benchmarks/loader.py --images 400 --repeats 3

Saves JSON to benchmarks/results/loader.json (``--output``).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))

from plm_lightning.data.images import load_rgb, load_rgb_tensor  # noqa: E402
from plm_lightning.data.transforms import build_transform  # noqa: E402
from plm_lightning.utils.io import atomic_write_text  # noqa: E402


def write_cub_like_jpegs(folder: Path, count: int, seed: int = 0) -> list[Path]:
    """JPEGs sized like CUB's (longer side 500, shorter 300-500, either orientation), quality 90: low-frequency
    colour fields plus mild noise, which compress to CUB's typical 30-60 kB."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        short = int(rng.integers(300, 501))
        w, h = (500, short) if rng.random() < 0.7 else (short, 500)
        coarse = rng.integers(0, 256, size=(h // 25 + 2, w // 25 + 2, 3), dtype=np.uint8)
        field = np.asarray(Image.fromarray(coarse).resize((w, h), Image.BICUBIC), dtype=np.float32)
        pixels = np.clip(field + rng.normal(0, 8, size=field.shape), 0, 255).astype(np.uint8)
        path = folder / f"{i:05d}.jpg"
        Image.fromarray(pixels).save(path, quality=90)
        paths.append(path)
    return paths


def decode_pil(path: Path):
    return load_rgb(path)


def decode_torchvision(path: Path) -> torch.Tensor:
    return load_rgb_tensor(path)


DECODERS = {"pil": decode_pil, "decode_jpeg": decode_torchvision}


def float_first(pipeline):
    """The pipeline with the conversion to float first: the order before geometry moved onto the uint8 image."""
    from torchvision.transforms import v2

    steps = [s for s in pipeline.transforms if not isinstance(s, v2.ToDtype)]
    return v2.Compose([steps[0], v2.ToDtype(torch.float32, scale=True), *steps[1:]])


def rate(paths: list[Path], decode, transform, repeats: int) -> float:
    """Images per second (best of ``repeats`` passes over the files)."""
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        for path in paths:
            out = decode(path)
            if transform is not None:
                out = transform(out)
        best = min(best, time.perf_counter() - t0)
    return len(paths) / best


def largest_difference(paths: list[Path]) -> int:
    """The largest absolute difference, in 0-255 levels, between the two decoders' pixels."""
    worst = 0
    for path in paths:
        a = torch.from_numpy(np.asarray(decode_pil(path))).permute(2, 0, 1)
        b = decode_torchvision(path)
        worst = max(worst, int((a.int() - b.int()).abs().max()))
    return worst


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=200)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--gpu-rate", type=float, default=1765.0, help="images/s the training step consumes")
    p.add_argument("--threads", type=int, default=1, help="torch threads (a loader worker uses 1)")
    p.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "loader.json")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    common = dict(augmentation="natural", image_size=227, resize=256, in_channels=3, out_channels=3)
    train = build_transform(train=True, augment=True, input_space="imagenet_rgb", **common)
    evaluate = build_transform(train=False, augment=False, input_space="imagenet_rgb", **common)
    pipelines = {
        "decode only": None,
        "train, before": float_first(train),
        "train": train,
        "eval, before": float_first(evaluate),
        "eval": evaluate,
    }
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory(prefix="plm-loader-") as tmp:
        paths = write_cub_like_jpegs(Path(tmp), args.images)
        size_kb = sum(p.stat().st_size for p in paths) / len(paths) / 1024
        for decoder in DECODERS.values():  # warm up: libraries, page cache
            rate(paths[:10], decoder, pipelines["train"], 1)
        table = {
            (name, decoder): rate(paths, DECODERS[decoder], pipeline, args.repeats)
            for name, pipeline in pipelines.items()
            for decoder in DECODERS
        }
        diff = largest_difference(paths[:50])
    print(f"{args.images} CUB-like JPEGs (mean {size_kb:.0f} kB), one process ({args.threads} torch thread): images/s")
    print(f"{'pipeline':<14} {'pil':>8} {'decode_jpeg':>12} {'ratio':>6}   workers for {args.gpu_rate:.0f} img/s")
    rows = []
    for name in pipelines:
        pil, tv = table[(name, "pil")], table[(name, "decode_jpeg")]
        need = {d: math.ceil(args.gpu_rate / table[(name, d)]) for d in DECODERS}
        workers = f"pil {need['pil']}, decode_jpeg {need['decode_jpeg']}"
        print(f"{name:<14} {pil:>8.0f} {tv:>12.0f} {tv / pil:>6.2f}   {workers}")
        rows.append({"pipeline": name, "pil": pil, "decode_jpeg": tv, "workers_needed": need})
    print(f"largest pixel difference between the decoders: {diff} levels (of 255)")
    result = {
        "images": args.images,
        "mean_kb": size_kb,
        "threads": args.threads,
        "gpu_rate": args.gpu_rate,
        "rows": rows,
        "max_pixel_difference": diff,
    }
    atomic_write_text(args.output, json.dumps(result, indent=2) + "\n")
    print(f"saved {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
