"""plm-embed: embed a folder of images, or a dataset split, with a trained checkpoint and write a search index.

  plm-embed --ckpt CKPT --images DIR --output OUT/
  plm-embed --ckpt CKPT --config X [overrides...] [--split test|train] --output OUT/

OUT/ receives embeddings.npy (float32, L2-normalised when the run's eval.normalize is on), labels.npy (the class
index, or -1: with --images, a file's first-level folder is its class when DIR has class folders), paths.txt (one
file per line; ``digits:test:<i>`` for datasets without files), meta.json (checkpoint, backbone, dimension,
normalisation, transform, metric) and index.faiss (IndexFlatIP on normalised embeddings, else IndexFlatL2).
With --images, files that cannot be decoded are skipped and listed on stderr; macOS ``._*`` files are ignored.
Search the index with plm-search.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, NoReturn, Optional, Sequence

from plm_lightning.cli.common import config_or_none, fail

PROG = "plm-embed"
SPLITS = ("test", "train")
SHOW_BAD = 20  # unreadable files named on stderr


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr and exit code 2 (like every other error here)."""

    def error(self, message: str) -> NoReturn:
        fail(self.prog, message)
        sys.exit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog=PROG,
        description=__doc__.split("\n\n")[0],
        allow_abbrev=False,
        usage="%(prog)s --ckpt CKPT (--images DIR | --config X [overrides...] [--split test|train]) --output OUT",
        epilog="example: plm-embed --ckpt runs/d/checkpoints/last.ckpt --config digits.yaml --output runs/d/export",
    )
    parser.add_argument("--ckpt", required=True, help="a checkpoint written by plm-fit")
    parser.add_argument("--images", default=None, metavar="DIR", help="a folder of image files (any depth)")
    parser.add_argument("--config", default=None, help="embed a dataset split: a YAML file or a bundled config name")
    parser.add_argument("--split", choices=SPLITS, default=None, help="with --config: the split (default test)")
    parser.add_argument("--output", required=True, metavar="OUT", help="the export folder (created)")
    parser.add_argument("--batch-size", type=int, default=None, help="images per forward pass")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    return parser


def report_unreadable(bad: list[tuple[str, str]], ignored: list[Path]) -> None:
    if bad:
        print(f"{PROG}: warning: skipped {len(bad)} unreadable file{'s' if len(bad) != 1 else ''}:", file=sys.stderr)
        for path, reason in bad[:SHOW_BAD]:
            print(f"  {path}: {reason}", file=sys.stderr)
        if len(bad) > SHOW_BAD:
            print(f"  ... and {len(bad) - SHOW_BAD} more", file=sys.stderr)
    if ignored:
        print(
            f"{PROG}: note: ignored {len(ignored)} macOS metadata file{'s' if len(ignored) != 1 else ''} (._*)",
            file=sys.stderr,
        )


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if (args.images is None) == (args.config is None):
        return fail(PROG, "give either --images DIR or --config X (a dataset split)")
    if args.images is not None and (args.split is not None or rest):
        extra = "--split" if args.split is not None else " ".join(rest)
        return fail(PROG, f"{extra}: applies to --config only")
    if not Path(args.ckpt).is_file():
        return fail(PROG, f"--ckpt: file not found: {args.ckpt}")
    if args.images is not None and not Path(args.images).is_dir():
        return fail(PROG, f"--images: not a folder: {args.images}")
    if args.batch_size is not None and args.batch_size < 1:
        return fail(PROG, f"--batch-size must be positive, got {args.batch_size}")
    if Path(args.output).exists() and not Path(args.output).is_dir():
        return fail(PROG, f"--output: exists and is not a folder: {args.output}")
    data_cfg = None
    if args.config is not None:
        cfg = config_or_none(PROG, args.config, rest)
        if cfg is None:
            return 2
        data_cfg = cfg.data

    from omegaconf import OmegaConf

    from plm_lightning.checkpoints import load_trained_model
    from plm_lightning.models.inference import embed_folder
    from plm_lightning.retrieval.index import metric_for, write_export

    try:
        model = load_trained_model(args.ckpt, args.device)
        meta: dict[str, Any] = model.describe()
        meta["metric"] = metric_for(model.normalize)
        if args.images is not None:
            emb, labels, paths, listing, bad = embed_folder(model, args.images, batch_size=args.batch_size or 64)
            report_unreadable(bad, listing.ignored)
            if not paths:
                return fail(
                    PROG,
                    f"--images {args.images}: no readable image files "
                    f"({len(bad)} unreadable, {len(listing.ignored)} ._* ignored)",
                )
            meta["source"] = {
                "images": str(Path(args.images).resolve()),
                "classes": listing.classes,
                "unreadable": len(bad),
                "ignored": len(listing.ignored),
            }
        else:
            split = args.split or "test"
            emb, labels, paths = model.embed_split(data_cfg, split, batch_size=args.batch_size)
            meta["source"] = {
                "config": args.config,
                "split": split,
                "data": OmegaConf.to_container(data_cfg, resolve=True),
            }
        write_export(args.output, emb, labels, paths, meta)
    except (ValueError, OSError, RuntimeError) as exc:  # not a checkpoint, a dataset it cannot build, disk errors
        return fail(PROG, " ".join(str(exc).split()) or type(exc).__name__)
    print(f"{PROG}: {len(paths)} embeddings (dim {emb.shape[1]}, {meta['metric']}) -> {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
