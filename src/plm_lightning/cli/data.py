"""plm-data prepare|verify|info NAME [--root DIR]: get, check and describe the benchmark datasets.

NAME: cub | cars196 | sop | inshop. --root defaults to $PLM_DATA/NAME (the folder data.root then needs no value).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Optional, Sequence

from plm_lightning.cli.common import fail
from plm_lightning.data.base import DatasetError
from plm_lightning.data.files import ImageFileDataset, SplitListing
from plm_lightning.data.paths import RootUnsetError, resolve_root
from plm_lightning.data.registry import BENCHMARKS, DATASETS

PROG = "plm-data"
SPLITS = ("train", "test")
ARCHIVE_SUFFIXES = (".tgz", ".tar.gz", ".tar", ".tar.bz2", ".tbz2", ".tar.xz", ".zip")
DOWNLOADS = ".downloads"  # below the root: fetched archives, until extraction succeeded
STAGING = ".plm-extract"  # below the root: extraction happens here, the tree moves into place only when it verifies


def download_url(url: str, folder: str, filename: str, md5: str) -> None:
    """torchvision's checksum-verified download (skips the transfer when a file with that md5 is already there).
    A module-level name so that tests can replace it: tests never touch the network."""
    from torchvision.datasets.utils import download_url as tv_download_url

    tv_download_url(url, folder, filename=filename, md5=md5)


class PrepareError(Exception):
    """prepare cannot go on; ``manual`` asks for the manual steps to be printed."""

    def __init__(self, message: str, manual: bool = False):
        super().__init__(message)
        self.manual = manual


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=__doc__.split("\n\n")[0],
        epilog="example: plm-data prepare cub --root ~/data/cub && plm-fit --config cub.yaml data.root=~/data/cub",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="{prepare,verify,info}")

    def add(name: str, help_: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_)
        p.add_argument("name", choices=BENCHMARKS, metavar="NAME", help=" | ".join(BENCHMARKS))
        p.add_argument("--root", help="the dataset folder (default: $PLM_DATA/NAME)")
        return p

    p = add(
        "prepare", "download (where an official checksummed download exists) or take local archives, extract, verify"
    )
    p.add_argument(
        "--from",
        dest="sources",
        action="append",
        default=[],
        metavar="FILE",
        help="a downloaded archive or metadata file to use instead of downloading (repeatable)",
    )
    p.add_argument("--no-check-counts", action="store_true", help="do not compare with the official counts")
    p.add_argument("--keep-archives", action="store_true", help=f"keep downloaded archives in ROOT/{DOWNLOADS}")
    p = add("verify", "check a dataset folder: metadata, every listed file, official counts")
    p.add_argument("--decode", action="store_true", help="also decode every image to find unreadable ones (slow)")
    p.add_argument("--no-check-counts", action="store_true", help="do not compare with the official counts")
    p = add("info", "class ids and images per class of a split, from the metadata")
    p.add_argument("--split", choices=SPLITS, help="one split (default: both)")
    p.add_argument("--json", action="store_true", help="print JSON")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    cls: type[ImageFileDataset] = DATASETS[args.name]
    try:
        root = resolve_root(args.name, args.root)
    except RootUnsetError:
        return fail(
            PROG,
            f"no --root given and $PLM_DATA is not set; pass --root DIR, or export PLM_DATA=DIR to "
            f"keep datasets in DIR/<name> (here PLM_DATA/{args.name})",
        )
    try:
        if args.command == "verify":
            return verify(cls, root, decode=args.decode, check_counts=not args.no_check_counts)
        if args.command == "info":
            return info(cls, root, [args.split] if args.split else list(SPLITS), as_json=args.json)
        return prepare(
            cls,
            root,
            [Path(s).expanduser() for s in args.sources],
            check_counts=not args.no_check_counts,
            keep_archives=args.keep_archives,
        )
    except PrepareError as exc:
        if exc.manual:
            print(manual_text(cls, root), file=sys.stderr)
        return fail(PROG, str(exc))
    except DatasetError as exc:
        return fail(PROG, str(exc).splitlines()[0])


# ----- verify and info -----


def _split_counts(listing: SplitListing) -> dict:
    counts = listing.counts()
    row = {"images": counts.images, "classes": counts.classes}
    if counts.query is not None:
        row.update(query=counts.query, gallery=counts.gallery)
    return row


def check_tree(
    cls: type[ImageFileDataset], root: Path, *, check_counts: bool = True, decode: bool = False
) -> tuple[dict[str, dict], list[str]]:
    """Per-split counts and every problem found (metadata, missing files, counts, with ``decode`` unreadable
    images). Problems in the metadata itself stop at the first one."""
    problems = cls.check_metadata(root)
    if problems:
        return {}, problems
    counts = {}
    for split in SPLITS:
        try:
            listing = cls.read_split(root, split)
        except DatasetError as exc:
            return counts, [str(exc)]
        counts[split] = _split_counts(listing)
        problems += cls.check_listing(root, split, listing, check_counts=check_counts)
    if decode and not problems:
        for split in SPLITS:
            dataset = cls(split, root=root, check_counts=False)
            for path, reason in dataset.find_unreadable().items():
                problems.append(f"cannot read image {path}: {reason}")
    return counts, problems


def _print_counts(cls, root: Path, counts: dict[str, dict]) -> None:
    print(f"{cls.title} in {root}")
    for split, row in counts.items():
        extra = f" (query {row['query']:,}, gallery {row['gallery']:,})" if "query" in row else ""
        print(f"  {split:5s} {row['images']:>7,} images  {row['classes']:>6,} classes{extra}")


def verify(cls, root: Path, *, decode: bool, check_counts: bool) -> int:
    counts, problems = check_tree(cls, root, check_counts=check_counts, decode=decode)
    if counts:
        _print_counts(cls, root, counts)
    if problems:
        print(f"{len(problems)} problem{'s' if len(problems) > 1 else ''}:", file=sys.stderr)
        for p in problems:
            print(f"  {p}", file=sys.stderr)
        return 1
    print("OK" + (" (every image decodes)" if decode else ""))
    return 0


def info(cls, root: Path, splits: list[str], *, as_json: bool) -> int:
    """From the metadata alone (image files are not looked at: ``verify`` does that)."""
    problems = cls.check_metadata(root)
    if problems:
        raise DatasetError(problems[0])
    result = {"dataset": cls.name, "root": str(root), "splits": {}}
    for split in splits:
        listing = cls.read_split(root, split)
        per_class = Counter(listing.labels)
        row = _split_counts(listing)
        row["class_ids"] = sorted(per_class)
        row["images_per_class"] = {str(c): per_class[c] for c in sorted(per_class)}
        official = cls.official.get(split)
        if official is not None:
            row["official"] = {k: v for k, v in vars(official).items() if v is not None}
        result["splits"][split] = row
    if as_json:
        print(json.dumps(result, indent=2))
        return 0
    _print_counts(cls, root, {s: r for s, r in result["splits"].items()})
    for split, row in result["splits"].items():
        sizes = list(row["images_per_class"].values())
        ids = row["class_ids"]
        print(f"  {split}: class ids {ids[0]}..{ids[-1]}, {min(sizes)}-{max(sizes)} images per class")
    return 0


# ----- prepare -----


def manual_text(cls, root: Path) -> str:
    return (
        f"{cls.title}: manual steps\n  {cls.manual_steps.replace('ROOT', str(root))}\n"
        f"expected layout:\n" + "\n".join("  " + line for line in cls.layout.splitlines())
    )


def _is_archive(path: Path) -> bool:
    return path.name.lower().endswith(ARCHIVE_SUFFIXES)


def _find_tree(cls, staging: Path, depth: int = 3) -> Optional[Path]:
    """The folder below ``staging`` (itself included) that holds all the metadata files."""
    frontier = [staging]
    for _ in range(depth + 1):
        for folder in frontier:
            if all((folder / m).is_file() for m in cls.metadata_files):
                return folder
        frontier = [d for f in frontier for d in sorted(f.iterdir()) if d.is_dir() and not d.name.startswith(".")]
    return None


def _move_into(tree: Path, root: Path, metadata: Sequence[str]) -> None:
    """Move the entries of ``tree`` into ``root``, replacing entries of the same name; the top-level entries that
    hold metadata files move last, so an interrupted move never leaves a tree that passes the metadata check."""
    firsts = {m.split("/")[0] for m in metadata}
    entries = sorted(tree.iterdir(), key=lambda p: (p.name in firsts, p.name))
    for entry in entries:
        target = root / entry.name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        elif target.exists() or target.is_symlink():
            target.unlink()
        entry.rename(target)


def _fetch(cls, root: Path) -> list[Path]:
    if not cls.downloads:
        raise PrepareError(
            f"{cls.title} has no reliable public download; get the files by hand (steps above) and "
            f"run: plm-data prepare {cls.name} --root {root} --from FILE ...",
            manual=True,
        )
    folder = root / DOWNLOADS
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for d in cls.downloads:
        print(f"downloading {d.url}", file=sys.stderr)
        try:
            download_url(d.url, str(folder), d.filename, d.md5)
        except RuntimeError as exc:  # torchvision: "File not found or corrupted." after an md5 mismatch
            raise PrepareError(
                f"{d.url}: the download failed its md5 check ({exc}); delete {folder / d.filename} "
                f"and try again, or use --from"
            ) from None
        except OSError as exc:  # URLError (no network, DNS), HTTP errors, disk errors
            reason = getattr(exc, "reason", None) or exc
            raise PrepareError(
                f"cannot download {d.url} ({reason}); on a machine without network access follow "
                f"the manual steps above and pass the files with --from",
                manual=True,
            ) from None
        files.append(folder / d.filename)
    return files


def prepare(cls, root: Path, sources: list[Path], *, check_counts: bool, keep_archives: bool) -> int:
    if not sources:
        counts, problems = check_tree(cls, root, check_counts=check_counts)
        if not problems:
            _print_counts(cls, root, counts)
            print(f"already prepared: {root}")
            return 0
    for s in sources:
        if not s.is_file():
            raise PrepareError(f"--from {s}: no such file")
    downloaded = not sources
    files = sources or _fetch(cls, root)
    root.mkdir(parents=True, exist_ok=True)
    from torchvision.datasets.utils import check_integrity, extract_archive

    known_md5 = {d.filename: d.md5 for d in cls.downloads}
    staging = Path(tempfile.mkdtemp(prefix=STAGING + "-", dir=root))
    try:
        for f in files:
            # Downloads were checked by download_url; a local copy under the official name is checked here.
            if not downloaded and f.name in known_md5 and not check_integrity(str(f), known_md5[f.name]):
                raise PrepareError(
                    f"{f}: md5 differs from the official {known_md5[f.name]} (damaged or another version)"
                )
            if _is_archive(f):
                print(f"extracting {f.name}", file=sys.stderr)
                try:
                    extract_archive(str(f), str(staging))
                except Exception as exc:  # tarfile.ReadError, zipfile.BadZipFile, EOFError, OSError
                    raise PrepareError(
                        f"cannot extract {f}: {str(exc).splitlines()[0] if str(exc) else exc!r}"
                    ) from None
            elif f.name in cls.loose_files:
                target = staging / cls.loose_files[f.name]
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(f, target)
            else:
                raise PrepareError(
                    f"--from {f}: neither an archive ({', '.join(ARCHIVE_SUFFIXES)}) nor one of "
                    f"{', '.join(cls.loose_files) or 'the expected files'}",
                    manual=True,
                )
        tree = _find_tree(cls, staging)
        if tree is None:
            raise PrepareError(f"the extracted files hold no {', '.join(cls.metadata_files)}", manual=True)
        _, problems = check_tree(cls, tree, check_counts=check_counts)
        if problems:
            raise PrepareError(f"the extracted {cls.title} tree is incomplete: {problems[0]}")
        _move_into(tree, root, cls.metadata_files)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    counts, problems = check_tree(cls, root, check_counts=check_counts)
    if problems:
        raise PrepareError(problems[0])
    if downloaded and not keep_archives:
        shutil.rmtree(root / DOWNLOADS, ignore_errors=True)
    _print_counts(cls, root, counts)
    print(f"prepared: {root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
