"""plm-eval: zero-shot retrieval metrics (Recall@K, MAP@R, R-precision, NMI) of saved embeddings or a checkpoint.

  plm-eval EMBEDDINGS.npz [--k 1,2,4,8] [--query-gallery] [--output metrics.json] [--backend auto|faiss|torch]
           [--no-normalize] [--no-nmi]
  plm-eval --ckpt CKPT --config X [overrides...] [--split test|train] [--k ...] [--output ...]

EMBEDDINGS.npz holds `embeddings` (N x d) and `labels` (N), and for --query-gallery the boolean masks `is_query` and
`is_gallery` (N each, disjoint). It is read with numpy's allow_pickle=False: a file that needs unpickling is refused.
Without --query-gallery every row queries all other rows (the standard protocol; docs/protocols.md).
With --ckpt, the student network of the checkpoint embeds the split exactly as the training-time evaluation does
(same loader, batch size and precision), and K, the backend, normalisation, NMI and MAP@R default to the config's
`eval` group. The metrics (percentages) are printed as JSON; --output also writes them (atomically).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from plm_lightning.cli.common import config_or_none, fail
from plm_lightning.utils.io import atomic_write_text, json_safe

PROG = "plm-eval"
DEFAULT_KS = (1, 2, 4, 8)
BACKENDS = ("auto", "faiss", "torch")
SPLITS = ("test", "train")
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")
_NPY_MAGIC = b"\x93NUMPY"


class InputError(ValueError):
    """A problem with the user's input, reported as one line and exit code 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=__doc__.split("\n\n")[0],
        allow_abbrev=False,
        usage=(
            "%(prog)s EMBEDDINGS.npz [--k LIST] [--query-gallery] [--output JSON] [--backend B] "
            "[--no-normalize] [--no-nmi]\n"
            "       %(prog)s --ckpt CKPT --config X [overrides...] [--split test|train] [--k LIST] [--output JSON]"
        ),
        epilog="example: plm-eval --ckpt runs/d/checkpoints/last.ckpt --config runs/d/config.yaml --k 1,2,4,8",
    )
    parser.add_argument(
        "--k",
        default=None,
        metavar="LIST",
        help="comma-separated Recall@K list (default: 1,2,4,8, or the config's eval.ks with --ckpt)",
    )
    parser.add_argument(
        "--query-gallery",
        action="store_true",
        help="separate query and gallery sets from the file's is_query / is_gallery masks",
    )
    parser.add_argument("--output", default=None, metavar="JSON", help="also write the metrics to this JSON file")
    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        default=None,
        help="exact search backend (default: auto, or the config's eval.backend); identical results",
    )
    parser.add_argument(
        "--no-normalize",
        action="store_true",
        help="rank by Euclidean distance on the raw embeddings (default: L2-normalised = cosine)",
    )
    parser.add_argument("--no-nmi", action="store_true", help="skip the k-means NMI")
    parser.add_argument("--ckpt", default=None, help="a checkpoint written by plm-fit (needs --config)")
    parser.add_argument("--config", default=None, help="with --ckpt: a YAML file, or the name of a bundled config")
    parser.add_argument("--split", choices=SPLITS, default=None, help="with --ckpt: the split to embed (default test)")
    parser.add_argument(
        "--device", default=None, help="with --ckpt: torch device (default: cuda if available, else cpu)"
    )
    return parser


# --------------------------------------------------------------------------------------------------------------------
# Arguments


def parse_ks(text: Optional[str]) -> Optional[list[int]]:
    """'1,2,4,8' -> [1, 2, 4, 8] (sorted, unique); None stays None."""
    if text is None:
        return None
    parts = [p.strip() for p in text.split(",")]
    ks = []
    for part in parts:
        if not part.isdigit() or int(part) < 1:
            raise InputError(f"--k: expected a comma-separated list of positive integers such as 1,2,4,8, got {text!r}")
        ks.append(int(part))
    return sorted(set(ks))


def _check_ks_fit(ks: Sequence[int], available: int, what: str) -> None:
    if max(ks) > available:
        raise InputError(f"--k: K={max(ks)} exceeds the {available} {what} per query")


# --------------------------------------------------------------------------------------------------------------------
# Reading EMBEDDINGS.npz (plain arrays only; never unpickles)


def _kind_of(path: Path) -> str:
    with open(path, "rb") as f:
        head = f.read(6)
    if head.startswith(_ZIP_MAGIC):
        return "npz"
    if head.startswith(_NPY_MAGIC):
        return "npy"
    if head[:1] == b"\x80":  # pickle protocol 2 and later
        return "pickle"
    return "other"


def read_npz(path_text: str) -> dict[str, np.ndarray]:
    """All arrays of the archive, read with allow_pickle=False; InputError (one line) on any problem."""
    path = Path(path_text)
    if not path.exists():
        raise InputError(f"{path_text}: file not found")
    if path.is_dir():
        raise InputError(f"{path_text}: is a directory, not an .npz file")
    if path.stat().st_size == 0:
        raise InputError(f"{path_text}: file is empty")
    kind = _kind_of(path)
    if kind == "pickle":
        raise InputError(
            f"{path_text}: a Python pickle, which plm-eval never loads (unpickling can run code); "
            "save plain arrays with numpy.savez(path, embeddings=..., labels=...)"
        )
    if kind == "npy":
        raise InputError(
            f"{path_text}: a single .npy array; plm-eval needs an .npz archive with the arrays "
            "'embeddings' and 'labels' (numpy.savez)"
        )
    if kind != "npz":
        raise InputError(f"{path_text}: not an .npz archive (numpy.savez writes one)")
    try:
        archive = np.load(path, allow_pickle=False)
    except Exception as exc:  # BadZipFile, OSError, ...
        raise InputError(f"{path_text}: cannot read as an .npz archive: {_first_line(exc)}") from None
    arrays: dict[str, np.ndarray] = {}
    with archive:
        for name in archive.files:
            try:
                arrays[name] = archive[name]
            except ValueError as exc:
                if "allow_pickle" in str(exc) or "pickle" in str(exc).lower():
                    raise InputError(
                        f"{path_text}: array '{name}' holds Python objects and needs pickle to load, "
                        "which plm-eval refuses (unpickling can run code); store numbers or "
                        "strings"
                    ) from None
                raise InputError(f"{path_text}: cannot read array '{name}': {_first_line(exc)}") from None
            except Exception as exc:
                raise InputError(f"{path_text}: cannot read array '{name}': {_first_line(exc)}") from None
    return arrays


def _first_line(exc: BaseException) -> str:
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip()  # torch's messages carry terminal colour codes
    return text.splitlines()[0] if text else type(exc).__name__


def _required(arrays: dict[str, np.ndarray], name: str, path: str, why: str = "") -> np.ndarray:
    if name not in arrays:
        found = ", ".join(repr(n) for n in arrays) or "none"
        raise InputError(f"{path}: no array '{name}'{why} (arrays in the file: {found})")
    return arrays[name]


def check_embeddings(emb: np.ndarray, path: str) -> np.ndarray:
    if emb.ndim != 2:
        raise InputError(f"{path}: 'embeddings' must be 2-D (N x d), got shape {emb.shape}")
    if emb.shape[0] == 0:
        raise InputError(f"{path}: 'embeddings' has no rows")
    if emb.shape[1] == 0:
        raise InputError(f"{path}: 'embeddings' has no columns (dimension 0)")
    if not (np.issubdtype(emb.dtype, np.floating) or np.issubdtype(emb.dtype, np.integer)):
        raise InputError(f"{path}: 'embeddings' must hold real numbers, got dtype {emb.dtype}")
    bad = ~np.isfinite(emb).all(axis=1) if np.issubdtype(emb.dtype, np.floating) else np.zeros(len(emb), bool)
    if bad.any():
        rows = np.flatnonzero(bad)
        raise InputError(
            f"{path}: 'embeddings' has {rows.size} of {len(emb)} rows with NaN or inf (first: row {rows[0]})"
        )
    return emb


def check_labels(labels: np.ndarray, n: int, path: str) -> np.ndarray:
    """Labels of any plain dtype (integers, strings, ...) -> int64 class codes."""
    if labels.ndim != 1:
        raise InputError(f"{path}: 'labels' must be 1-D (N), got shape {labels.shape}")
    if labels.shape[0] != n:
        raise InputError(f"{path}: 'embeddings' has {n} rows but 'labels' has {labels.shape[0]}")
    if labels.dtype.kind in "fc" and not np.isfinite(labels).all():
        raise InputError(f"{path}: 'labels' contains NaN or inf")
    _, codes = np.unique(labels, return_inverse=True)
    return codes.reshape(-1).astype(np.int64)


def check_mask(arrays: dict[str, np.ndarray], name: str, n: int, path: str) -> np.ndarray:
    mask = _required(arrays, name, path, " (needed by --query-gallery)")
    if mask.dtype != np.bool_:
        raise InputError(f"{path}: '{name}' must be a boolean array, got dtype {mask.dtype}")
    if mask.ndim != 1 or mask.shape[0] != n:
        raise InputError(f"{path}: '{name}' must have shape ({n},) like 'labels', got {mask.shape}")
    if not mask.any():
        raise InputError(f"{path}: '{name}' selects no rows")
    return mask


# --------------------------------------------------------------------------------------------------------------------
# Notes on stderr


def note(message: str) -> None:
    print(f"{PROG}: note: {message}", file=sys.stderr)


def singleton_note(labels: np.ndarray) -> Optional[str]:
    """Same-set protocol: a query that is the only item of its class has no correct answer."""
    _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    lone = int((counts[inverse.reshape(-1)] == 1).sum())
    if lone == 0:
        return None
    return (
        f"{lone} of {len(labels)} queries are the only item of their class (no correct answer): they count as "
        "misses for R@K and are excluded from MAP@R and R-precision"
    )


def no_match_note(query_labels: np.ndarray, gallery_labels: np.ndarray) -> Optional[str]:
    """Query/gallery protocol: a query whose class has no gallery item has no correct answer."""
    lone = int((~np.isin(query_labels, gallery_labels)).sum())
    if lone == 0:
        return None
    return (
        f"{lone} of {len(query_labels)} queries have no item of their class in the gallery (no correct answer): "
        "they count as misses for R@K and are excluded from MAP@R and R-precision"
    )


# --------------------------------------------------------------------------------------------------------------------
# The two modes


def evaluate_npz(
    path: str, ks: Optional[list[int]], *, query_gallery: bool, backend: str, normalize: bool, compute_nmi: bool
) -> dict[str, float]:
    arrays = read_npz(path)
    emb = check_embeddings(_required(arrays, "embeddings", path), path)
    n = emb.shape[0]
    labels = check_labels(_required(arrays, "labels", path), n, path)
    ks = list(ks or DEFAULT_KS)
    options = {"normalize": normalize, "backend": backend, "map_r": True, "compute_nmi": compute_nmi}
    if query_gallery:
        is_query = check_mask(arrays, "is_query", n, path)
        is_gallery = check_mask(arrays, "is_gallery", n, path)
        overlap = int((is_query & is_gallery).sum())
        if overlap:
            raise InputError(
                f"{path}: 'is_query' and 'is_gallery' overlap in {overlap} rows; a query would retrieve "
                "itself (use disjoint sets, or drop --query-gallery for the same-set protocol)"
            )
        _check_ks_fit(ks, int(is_gallery.sum()), "gallery items")
        message = no_match_note(labels[is_query], labels[is_gallery])
        import torch

        from plm_lightning.retrieval import evaluate_query_gallery

        metrics = evaluate_query_gallery(
            torch.from_numpy(np.ascontiguousarray(emb[is_query])),
            torch.from_numpy(labels[is_query]),
            torch.from_numpy(np.ascontiguousarray(emb[is_gallery])),
            torch.from_numpy(labels[is_gallery]),
            ks,
            **options,
        )
    else:
        if n < 2:
            raise InputError(f"{path}: retrieval needs at least 2 rows, got {n}")
        _check_ks_fit(ks, n - 1, "other items")
        message = singleton_note(labels)
        import torch

        from plm_lightning.retrieval import evaluate_embeddings

        metrics = evaluate_embeddings(
            torch.from_numpy(np.ascontiguousarray(emb)), torch.from_numpy(labels), ks, **options
        )
    if message:
        note(message)
    return metrics


def _precision_plugin(precision: str, device_type: str):
    """The Lightning precision plugin a Trainer would use, so that embeddings match the training-time evaluation."""
    from lightning.pytorch.plugins.precision import DoublePrecision, HalfPrecision, MixedPrecision, Precision

    if precision in ("16-true", "bf16-true"):
        return HalfPrecision(precision)
    if precision == "64-true":
        return DoublePrecision()
    if precision in ("16-mixed", "bf16-mixed"):
        if precision == "16-mixed" and device_type == "cpu":
            precision = "bf16-mixed"  # as Lightning does on CPU
        return MixedPrecision(precision, "cpu" if device_type == "cpu" else "cuda")
    return Precision()


def _state_mismatch(expected: dict, found: dict) -> str:
    """'' when the checkpoint's tensors fit the module's, else a short description of the differences."""
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    shapes = [k for k in expected if k in found and tuple(getattr(found[k], "shape", ())) != tuple(expected[k].shape)]
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing tensors, e.g. '{missing[0]}'")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected tensors, e.g. '{unexpected[0]}'")
    if shapes:
        k = shapes[0]
        parts.append(
            f"{len(shapes)} shape mismatches, e.g. '{k}': {tuple(found[k].shape)} in the checkpoint, "
            f"{tuple(expected[k].shape)} in the model"
        )
    return "; ".join(parts)


def evaluate_checkpoint(
    cfg,
    cfg_name: str,
    ckpt: str,
    split: str,
    ks: Optional[list[int]],
    *,
    backend: Optional[str],
    no_normalize: bool,
    no_nmi: bool,
    device: Optional[str],
) -> dict[str, float]:
    import torch

    from plm_lightning.analysis.features import build_module
    from plm_lightning.models.embedding_pass import embed_loader
    from plm_lightning.utils.checkpoint_io import load_checkpoint_file, require_finite

    state: dict[str, Any] = load_checkpoint_file(ckpt)  # ValueError (one line) if it needs unpickling
    if not isinstance(state, dict) or "state_dict" not in state:
        raise InputError(f"--ckpt {ckpt}: no 'state_dict' in the file (not a plm-fit checkpoint)")
    from omegaconf import OmegaConf

    # The checkpoint replaces every weight: no pretrained download (and no network) needed to evaluate it.
    module, datamodule = build_module(OmegaConf.merge(cfg, {"model": {"pretrained": False}}))
    mismatch = _state_mismatch(module.state_dict(), state["state_dict"])
    if mismatch:
        raise InputError(
            f"--ckpt {ckpt}: does not fit the model built from --config {cfg_name} ({mismatch}); "
            "pass the run's config.yaml"
        )
    require_finite(state["state_dict"], f"--ckpt {ckpt}")
    module.load_state_dict(state["state_dict"])
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    plugin = _precision_plugin(str(cfg.trainer.precision), dev.type)
    module = plugin.convert_module(module).to(dev)
    loader = datamodule.test_embedding_dataloader() if split == "test" else datamodule.train_embedding_dataloader()
    # The student, as the training-time evaluation (callbacks/retrieval_evaluation.py) embeds it.
    idx, emb, lab = embed_loader(module.student, loader, dev, plugin.forward_context)
    order = torch.argsort(idx.cpu())  # row i = dataset item i, as the masks below index them
    # The metrics (exact ranks, NMI's k-means) on the device as in training (eval.on_device): faster on a GPU.
    emb = emb.to(dev if cfg.eval.on_device else torch.device("cpu"))
    emb, lab = emb[order.to(emb.device)], lab.cpu()[order]
    ks = list(ks or cfg.eval.ks)
    options = dict(
        normalize=bool(cfg.eval.normalize) and not no_normalize,
        backend=backend or cfg.eval.backend,
        map_r=bool(cfg.eval.map_r),
        compute_nmi=bool(cfg.eval.nmi) and not no_nmi,
        kmeans=str(cfg.eval.kmeans),
        seed=int(cfg.run.seed),
        memory_budget_mb=float(cfg.eval.memory_budget_mb),
    )
    query = getattr(datamodule.test_set, "query_mask", None) if split == "test" else None
    if query is not None:  # In-Shop: query images search the gallery, as in training-time evaluation
        query = torch.as_tensor(query, dtype=torch.bool)
        _check_ks_fit(ks, int((~query).sum()), "gallery items")
        message = no_match_note(lab[query].numpy(), lab[~query].numpy())
    else:
        _check_ks_fit(ks, emb.shape[0] - 1, f"other items of the {split} split")
        message = singleton_note(lab.numpy())
    from plm_lightning.retrieval import evaluate_split

    metrics = evaluate_split(emb, lab, ks, query_mask=query, **options).metrics
    if message:
        note(message)
    return metrics


# --------------------------------------------------------------------------------------------------------------------


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    try:
        ks = parse_ks(args.k)
        checkpoint_mode = args.ckpt is not None or args.config is not None
        if checkpoint_mode:
            if args.ckpt is None:
                raise InputError("--config needs --ckpt CKPT (the checkpoint to evaluate)")
            if args.config is None:
                raise InputError("--ckpt needs --config X (the run's config.yaml, or a bundled config name)")
            if args.query_gallery:
                raise InputError(
                    "--query-gallery applies to EMBEDDINGS.npz only (the datasets' test splits query themselves)"
                )
            npz = [r for r in rest if r.endswith(".npz")]
            if npz:
                raise InputError(f"give either EMBEDDINGS.npz ({npz[0]}) or --ckpt, not both")
            if not Path(args.ckpt).is_file():
                raise InputError(f"--ckpt: file not found: {args.ckpt}")
        else:
            if args.split is not None or args.device is not None:
                raise InputError("--split and --device apply to --ckpt mode only")
            if not rest:
                raise InputError("give EMBEDDINGS.npz, or --ckpt CKPT --config X")
            options = [r for r in rest if r.startswith("-")]
            if options:
                raise InputError(f"unrecognized arguments: {' '.join(options)}")
            if len(rest) > 1:
                raise InputError(f"one EMBEDDINGS.npz at a time, got {len(rest)}: {' '.join(rest)}")
    except InputError as exc:
        return fail(PROG, str(exc))

    if checkpoint_mode:
        cfg = config_or_none(PROG, args.config, rest)
        if cfg is None:
            return 2
        try:
            metrics = evaluate_checkpoint(
                cfg,
                args.config,
                args.ckpt,
                args.split or "test",
                ks,
                backend=args.backend,
                no_normalize=args.no_normalize,
                no_nmi=args.no_nmi,
                device=args.device,
            )
        except ValueError as exc:  # InputError, unreadable checkpoint, the core's argument checks
            return fail(PROG, _first_line(exc))
    else:
        try:
            metrics = evaluate_npz(
                rest[0],
                ks,
                query_gallery=args.query_gallery,
                backend=args.backend or "auto",
                normalize=not args.no_normalize,
                compute_nmi=not args.no_nmi,
            )
        except ValueError as exc:
            return fail(PROG, _first_line(exc))

    text = json.dumps(json_safe({k: float(v) for k, v in metrics.items()}), indent=2) + "\n"
    if args.output:
        try:
            atomic_write_text(args.output, text)
        except OSError as exc:
            return fail(PROG, f"--output {args.output}: {_first_line(exc)}")
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
