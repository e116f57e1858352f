"""plm-search: the nearest indexed items of a query image, from an export folder written by plm-embed.

  plm-search --index OUT/ --image QUERY.jpg [-k 8] [--grid results.png] [--json]
  plm-search --index OUT/ --index-item N [-k 8] [--grid results.png] [--json]

--image embeds the file with the export's model and transform (the checkpoint named in OUT/meta.json, or --ckpt);
--index-item N queries with indexed item N (row N of embeddings.npy; itself excluded from the results), which also
works for datasets without files such as digits. Prints rank, similarity (cosine, for normalised embeddings) or
Euclidean distance, label and path of each result; --json prints the same as JSON; --grid draws the query and
its results (green / red border: same / different class, where both labels are known).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from plm_lightning.cli.common import fail
from plm_lightning.cli.embed import OneLineParser

PROG = "plm-search"


def build_parser() -> OneLineParser:
    parser = OneLineParser(
        prog=PROG,
        description=__doc__.split("\n\n")[0],
        allow_abbrev=False,
        usage="%(prog)s --index OUT (--image QUERY | --index-item N) [-k K] [--grid PNG] [--json]",
        epilog="example: plm-search --index runs/d/export --image query.jpg -k 8 --grid results.png",
    )
    parser.add_argument("--index", required=True, metavar="OUT", help="an export folder written by plm-embed")
    parser.add_argument("--image", default=None, metavar="QUERY", help="a query image file")
    parser.add_argument("--index-item", type=int, default=None, metavar="N", help="query with indexed item N")
    parser.add_argument("-k", type=int, default=8, help="number of results (default 8)")
    parser.add_argument("--grid", default=None, metavar="PNG", help="also draw the query and its results here")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--ckpt", default=None, help="the checkpoint to embed --image with (default: meta.json's)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    return parser


# --- images of queries and results, for --grid --------------------------------------------------------------------
class ItemImages:
    """Raw images of indexed items: image files are decoded, dataset ids (``digits:test:12``) are loaded from the
    dataset that meta.json describes (built once, without a transform)."""

    def __init__(self, meta: dict[str, Any]):
        self.meta = meta
        self.datasets: dict[tuple[str, str], Any] = {}

    def __call__(self, path: str) -> np.ndarray:
        from plm_lightning.figures.run_figures import raw_image

        if Path(path).is_file():
            from plm_lightning.data.images import load_rgb

            return raw_image(load_rgb(path).convert(self.meta.get("image_mode") or "RGB"))
        name, split, index = _dataset_id(path)
        return raw_image(self._dataset(name, split).load(index))

    def _dataset(self, name: str, split: str):
        if (name, split) not in self.datasets:
            from plm_lightning.config.loading import written_config
            from plm_lightning.data.registry import DATASETS

            data = (self.meta.get("source") or {}).get("data")
            if data is None or name not in DATASETS:
                raise ValueError(f"cannot show {name}:{split}:*: meta.json does not describe that dataset")
            cls = DATASETS[name]
            if cls.augmentation == "vector":
                raise ValueError(f"--grid needs images; {name} items are vectors")
            # An export written before the data keys moved describes its data in the old layout.
            cfg = written_config({"data": data}).data
            self.datasets[(name, split)] = cls.from_config(split, None, cfg)
        return self.datasets[(name, split)]


def _dataset_id(path: str) -> tuple[str, str, int]:
    parts = path.rsplit(":", 2)
    if len(parts) != 3 or not parts[2].isdigit():
        raise ValueError(f"indexed file not found: {path}")
    return parts[0], parts[1], int(parts[2])


def draw_grid(out: str, query_image: np.ndarray, query_label: int, export, scores, ids, metric: str) -> None:
    from plm_lightning.figures.run_figures import retrieval_grid, save_figure

    images = ItemImages(export.meta)
    results = [images(export.paths[i]) for i in ids]
    labels = [int(export.labels[i]) for i in ids]
    matches = [None if query_label < 0 or lab < 0 else lab == query_label for lab in labels]
    word = "sim" if metric == "inner_product" else "dist"
    captions = [
        f"{r + 1}: {word} {s:.3f}" + (f"\nlabel {lab}" if lab >= 0 else "")
        for r, (s, lab) in enumerate(zip(scores, labels))
    ]
    fig = retrieval_grid(
        [query_image],
        [results],
        matches=[matches],
        captions=[captions],
        query_captions=["query" + (f"\nlabel {query_label}" if query_label >= 0 else "")],
    )
    save_figure(fig, out)


# --- main ---------------------------------------------------------------------------------------------------------
def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if (args.image is None) == (args.index_item is None):
        return fail(PROG, "give either --image QUERY or --index-item N")
    if args.k < 1:
        return fail(PROG, f"-k must be positive, got {args.k}")
    if args.image is not None and not Path(args.image).is_file():
        return fail(PROG, f"--image: file not found: {args.image}")

    from plm_lightning.retrieval.index import ExportedIndex

    try:
        export = ExportedIndex.load(args.index)
        available = len(export) - (1 if args.index_item is not None else 0)
        if args.index_item is not None:
            if not 0 <= args.index_item < len(export):
                return fail(PROG, f"--index-item {args.index_item}: the index holds items 0..{len(export) - 1}")
            query = export.embeddings[args.index_item]
            query_path, query_label = export.paths[args.index_item], int(export.labels[args.index_item])
            exclude = [args.index_item]
        else:
            from plm_lightning.checkpoints import load_trained_model
            from plm_lightning.data.images import UnreadableImageError, load_rgb

            ckpt = args.ckpt or export.meta.get("checkpoint")
            if not ckpt or not Path(ckpt).is_file():
                return fail(PROG, f"the export's checkpoint is not there ({ckpt}); pass --ckpt CKPT")
            model = load_trained_model(ckpt, args.device)
            try:
                image = load_rgb(args.image)
            except UnreadableImageError as exc:
                return fail(PROG, f"--image: {exc}")
            query = model.embed_images([image])[0]
            if query.shape[0] != export.embeddings.shape[1]:
                return fail(
                    PROG,
                    f"the model gives {query.shape[0]}-d embeddings, the index holds "
                    f"{export.embeddings.shape[1]}-d ones (another checkpoint?)",
                )
            query_path = str(Path(args.image).resolve())
            # A query that is itself an indexed file has a known class.
            query_label = int(export.labels[export.paths.index(query_path)]) if query_path in export.paths else -1
            exclude = None
        k = min(args.k, available)
        if k < 1:
            return fail(PROG, "the index has no other items to return")
        if k < args.k:
            print(f"{PROG}: note: -k {args.k} exceeds the {available} items available; showing {k}", file=sys.stderr)
        scores, ids = export.search(query[None, :], k, exclude=exclude)
        scores, ids = scores[0], ids[0]
        if args.grid:
            query_image = (
                ItemImages(export.meta)(query_path)
                if args.index_item is not None
                else ItemImages(export.meta)(args.image)
            )
            draw_grid(args.grid, query_image, query_label, export, scores, ids, export.metric)
    except (ValueError, OSError, RuntimeError) as exc:
        return fail(PROG, " ".join(str(exc).split()) or type(exc).__name__)

    score_name = "similarity" if export.metric == "inner_product" else "distance"
    results = [
        {"rank": r + 1, "index": int(i), score_name: float(s), "label": int(export.labels[i]), "path": export.paths[i]}
        for r, (s, i) in enumerate(zip(scores, ids))
    ]
    if args.json:
        doc = {
            "query": {"path": query_path, "label": query_label, "index_item": args.index_item},
            "metric": export.metric,
            "results": results,
        }
        sys.stdout.write(json.dumps(doc, indent=2) + "\n")
    else:
        print(f"query: {query_path}" + (f"  (label {query_label})" if query_label >= 0 else ""))
        print(f"{'rank':>4}  {score_name:>10}  {'label':>5}  path")
        for row in results:
            print(f"{row['rank']:>4}  {row[score_name]:>10.4f}  {row['label']:>5}  {row['path']}")
        if args.grid:
            print(f"grid: {args.grid}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
