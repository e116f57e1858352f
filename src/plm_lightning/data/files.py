"""Datasets of image files listed by metadata: the listing of a split, its checks against the disk and the official
counts, and loading with an optional skip policy for unreadable files.

A benchmark subclass (cub.py, cars196.py, sop.py, inshop.py) states its facts as class attributes (metadata files,
official counts, download or manual steps, expected layout) and implements ``read_split``; everything else is here.
"""

from __future__ import annotations

import errno
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Optional

import torch

from plm_lightning.data.base import DatasetError, RetrievalDataset
from plm_lightning.data.images import UnreadableImageError, load_rgb_tensor
from plm_lightning.data.paths import resolve_root

log = logging.getLogger(__name__)

SHOW_MISSING = 5  # missing files named in an error message


@dataclass(frozen=True)
class SplitCounts:
    """The official size of a split (docs/protocols.md)."""

    images: int
    classes: int
    query: Optional[int] = None  # separate query / gallery sets (In-Shop's test split)
    gallery: Optional[int] = None


@dataclass
class SplitListing:
    """What the metadata lists for one split: paths relative to the root, one label each, and (In-Shop) which
    items are queries."""

    paths: list[str]
    labels: list[int]
    is_query: Optional[list[bool]] = None

    def counts(self) -> SplitCounts:
        if self.is_query is None:
            return SplitCounts(len(self.paths), len(set(self.labels)))
        queries = sum(self.is_query)
        return SplitCounts(len(self.paths), len(set(self.labels)), queries, len(self.paths) - queries)


@dataclass(frozen=True)
class Download:
    """An official archive with its md5, for ``plm-data prepare``."""

    url: str
    filename: str
    md5: str


def missing_files(root: Path, relpaths: list[str]) -> list[str]:
    """The listed paths that are not files under ``root`` (in listing order). One directory listing per folder
    instead of a stat per file: SOP lists 120,053 images in 12 folders."""
    contents: dict[str, Optional[set[str]]] = {}
    missing = []
    for rel in relpaths:
        folder, _, name = rel.rpartition("/")
        if folder not in contents:
            try:
                with os.scandir(root / folder) as it:
                    contents[folder] = {e.name for e in it if e.is_file()}
            except OSError:  # no such folder (or not a folder)
                contents[folder] = None
        names = contents[folder]
        if names is None or name not in names:
            missing.append(rel)
    return missing


def symlink_loop(root: Path, rel: str) -> Optional[Path]:
    """The first component of ``root / rel`` that is a symlink which never resolves (a loop), if any."""
    path = Path(root)
    for part in Path(rel).parts:
        path = path / part
        if path.is_symlink():
            try:
                os.stat(path)
            except OSError as exc:
                if exc.errno == errno.ELOOP:
                    return path
                return None
    return None


def _n(x: int) -> str:
    return f"{x:,}"


class ImageFileDataset(RetrievalDataset):
    """A split of image files under ``root``. Subclasses implement ``read_split`` (and a benchmark states its
    facts below); items are decoded to RGB by ``images.load_rgb_tensor``.

    Checks at construction, each a one-line DatasetError:

    * the metadata files must exist (``metadata_files``, relative to the root);
    * every file the metadata lists for the split must exist, always (the error says how many are missing and
      names the first few);
    * with ``check_counts`` (default) the split must have the official numbers of images and classes (and of
      queries and galleries); ``check_counts=False`` skips only this comparison, so a miniature or subset tree
      whose metadata lists fewer images works, but its listed files must still all be present.

    ``skip_unreadable``: False (default) lets an unreadable image raise UnreadableImageError naming its path.
    True logs a warning the first time each unreadable path is met, records it in ``skipped`` (path -> reason)
    and returns the next readable image of the same class instead (the next readable one of any class if the
    class has none), deterministically; label and index stay those of the requested item. ``skipped`` counts what
    this process decoded: DataLoader workers keep their own copy (their warnings reach the log all the same).
    """

    title: ClassVar[str] = ""  # human name, for messages
    metadata_files: ClassVar[tuple[str, ...]] = ()  # relative to the root; their presence says "this is the dataset"
    official: ClassVar[dict[str, SplitCounts]] = {}  # split -> official counts; empty = no count check
    downloads: ClassVar[tuple[Download, ...]] = ()  # official archives that plm-data prepare can fetch
    loose_files: ClassVar[dict[str, str]] = {}  # non-archive file name -> where it goes below the root (prepare)
    manual_steps: ClassVar[str] = ""  # how to get the files by hand
    layout: ClassVar[str] = ""  # the expected tree below the root

    @classmethod
    def from_config(cls, split, transform, data_cfg):
        return cls(
            split,
            transform=transform,
            root=resolve_root(cls.name, data_cfg.root),
            check_counts=bool(getattr(data_cfg, "check_counts", True)),
            skip_unreadable=bool(getattr(data_cfg, "skip_unreadable", False)),
        )

    def __init__(
        self, split: str, transform=None, root=None, *, check_counts: bool = True, skip_unreadable: bool = False
    ):
        super().__init__(split, transform)
        self.root = resolve_root(self.name, root)
        self.check_counts = check_counts
        self.skip_unreadable = skip_unreadable
        self.skipped: dict[str, str] = {}
        problems = self.check_metadata(self.root)
        if problems:
            raise DatasetError(problems[0])
        listing = self.read_split(self.root, split)
        problems = self.check_listing(self.root, split, listing, check_counts=check_counts)
        if problems:
            raise DatasetError("; ".join(problems))
        self.paths: list[str] = listing.paths
        self.labels = torch.tensor(listing.labels, dtype=torch.long)
        if listing.is_query is not None:
            self.query_mask = torch.tensor(listing.is_query, dtype=torch.bool)
        self._same_class: Optional[dict[int, list[int]]] = None

    # ----- reading and checking a tree (also used by plm-data without building a dataset) -----

    @classmethod
    def read_split(cls, root: Path, split: str) -> SplitListing:
        raise NotImplementedError

    @classmethod
    def prepare_hint(cls, root) -> str:
        return f"download and prepare the dataset with: plm-data prepare {cls.name} --root {root}"

    @classmethod
    def check_metadata(cls, root: Path) -> list[str]:
        """Problems that stop before reading the metadata: a missing root or metadata file."""
        root = Path(root)
        if not root.is_dir():
            return [f"data.root {root} does not exist; {cls.prepare_hint(root)}"]
        missing = [m for m in cls.metadata_files if not (root / m).is_file()]
        if missing:
            return [
                f"data.root {root} is not a {cls.title} folder ({', '.join(missing)} missing); {cls.prepare_hint(root)}"
            ]
        return []

    @classmethod
    def check_listing(cls, root: Path, split: str, listing: SplitListing, *, check_counts: bool = True) -> list[str]:
        """Problems of a split's listing: listed files missing on disk (always), counts that differ from the
        official ones (with check_counts)."""
        problems = []
        where = f"{cls.title} {split} split in {root}"
        if not listing.paths:
            problems.append(f"{where}: the metadata lists no images")
        missing = missing_files(Path(root), listing.paths)
        if missing:
            shown = ", ".join(missing[:SHOW_MISSING]) + (", ..." if len(missing) > SHOW_MISSING else "")
            loops = list(dict.fromkeys(p for p in (symlink_loop(Path(root), m) for m in missing[:1000]) if p))
            if loops:  # not missing: unreachable behind a symlink that points back at itself
                problems.append(
                    f"{where}: {_n(len(missing))} of {_n(len(listing.paths))} listed images cannot be "
                    f"reached: {loops[0]} is a symlink loop"
                    + (f" (and {len(loops) - 1} more)" if len(loops) > 1 else "")
                )
            else:
                problems.append(
                    f"{where}: {_n(len(missing))} of {_n(len(listing.paths))} listed images are "
                    f"missing ({shown}); {cls.prepare_hint(root)}"
                )
        expected = cls.official.get(split)
        if check_counts and expected is not None:
            found = listing.counts()
            names = {"images": "images", "classes": "classes", "query": "query images", "gallery": "gallery images"}
            diffs = [
                f"{_n(getattr(found, k))} {names[k]} (official: {_n(getattr(expected, k))})"
                for k in names
                if getattr(expected, k) is not None and getattr(found, k) != getattr(expected, k)
            ]
            if diffs:
                problems.append(
                    f"{where}: the metadata lists {', '.join(diffs)}; for a subset or miniature copy "
                    f"set data.check_counts=false (plm-data: --no-check-counts)"
                )
        return problems

    # ----- loading -----

    def load(self, index: int) -> torch.Tensor:
        """The image as a uint8 3 x H x W RGB tensor (images.load_rgb_tensor)."""
        path = self.root / self.paths[index]
        try:
            return load_rgb_tensor(path)
        except UnreadableImageError as exc:
            if not self.skip_unreadable:
                raise
            self._note_skip(exc)
        return self._substitute(index)

    def _note_skip(self, exc: UnreadableImageError) -> None:
        if exc.path not in self.skipped:
            self.skipped[exc.path] = exc.reason
            log.warning(
                "%s %s split: skipping unreadable image %s (%s); %d skipped so far (data.skip_unreadable=true)",
                self.title or self.name,
                self.split,
                exc.path,
                exc.reason,
                len(self.skipped),
            )

    def _substitute(self, index: int):
        if self._same_class is None:
            groups: dict[int, list[int]] = {}
            for i, label in enumerate(self.labels.tolist()):
                groups.setdefault(label, []).append(i)
            self._same_class = groups
        label = int(self.labels[index])
        group = self._same_class[label]
        at = group.index(index)
        n = len(self)
        # Next members of the same class (wrapping around), then every other item in index order from here.
        candidates = (
            group[at + 1 :]
            + group[:at]
            + [(index + k) % n for k in range(1, n) if int(self.labels[(index + k) % n]) != label]
        )
        for j in candidates:
            path = self.root / self.paths[j]
            if str(path) in self.skipped:
                continue
            try:
                return load_rgb_tensor(path)
            except UnreadableImageError as exc:
                self._note_skip(exc)
        raise DatasetError(f"{self.title or self.name} {self.split} split in {self.root}: no readable image at all")

    @property
    def num_skipped(self) -> int:
        return len(self.skipped)

    def find_unreadable(self, progress=None) -> dict[str, str]:
        """Decode every image of the split; the unreadable ones as path -> reason (for plm-data verify --decode)."""
        bad = {}
        for i, rel in enumerate(self.paths):
            try:
                load_rgb_tensor(self.root / rel)  # the decoder training uses
            except UnreadableImageError as exc:
                bad[exc.path] = exc.reason
            if progress is not None:
                progress(i + 1, len(self.paths))
        return bad


def read_table(path: Path, columns: int, *, header_lines: int = 0, maxsplit: int = -1) -> list[tuple[int, list[str]]]:
    """The whitespace-separated rows of a metadata text file as (line number, fields), skipping ``header_lines``
    and blank lines; DatasetError naming file and line for a row with fewer than ``columns`` fields."""
    rows = []
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise DatasetError(f"cannot read {path}: {exc.strerror or exc}") from None
    for number, line in enumerate(text.splitlines(), start=1):
        if number <= header_lines or not line.strip():
            continue
        fields = line.split(None, maxsplit) if maxsplit >= 0 else line.split()
        if len(fields) < columns:
            raise DatasetError(f"{path}:{number}: expected {columns} fields, got {line.strip()!r}")
        rows.append((number, fields))
    return rows


def to_int(value: str, path: Path, number: int, what: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise DatasetError(f"{path}:{number}: {what} {value!r} is not an integer") from None
