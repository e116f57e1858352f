"""Atomic file writes: readers never see a half-written file (write to a temporary sibling, then rename)."""

from __future__ import annotations

import math
import os
import stat
import tempfile
from pathlib import Path
from typing import Any, Callable


class UnsafeOutputError(OSError):
    """An output path that must not be replaced: a device, a FIFO, a socket, a folder, or a symlink loop. One line."""


def output_target(path: str | os.PathLike) -> Path:
    """Where writing ``path`` lands: the path itself, or, for a symlink, the file it points to (followed to the
    end). UnsafeOutputError if that exists and is not a regular file: writing must never replace /dev/null, a FIFO
    or a folder with a regular file, or cut a symlink off its target."""
    path = Path(path)
    target = Path(os.path.realpath(path)) if path.is_symlink() else path
    try:
        mode = os.stat(target).st_mode
    except FileNotFoundError:
        if target.is_symlink():  # realpath stopped inside a loop
            raise UnsafeOutputError(f"refusing to write {path}: a symlink loop") from None
        return target  # absent: created
    except OSError as exc:  # ELOOP, EACCES on a parent, ...
        raise UnsafeOutputError(f"cannot write {path}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(mode):
        kind = (
            "a folder"
            if stat.S_ISDIR(mode)
            else "a FIFO"
            if stat.S_ISFIFO(mode)
            else "a socket"
            if stat.S_ISSOCK(mode)
            else "a device"
            if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
            else "not a file"
        )
        raise UnsafeOutputError(f"refusing to write {path}: it is {kind}, not a regular file")
    return target


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Call ``write(tmp_path)`` and move the result onto ``path`` in one rename (same folder, same filesystem).
    A symlink is written through (its target is replaced, atomically, and the link stays); anything at ``path``
    that is not a regular file is refused (output_target)."""
    path = output_target(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        # mkstemp creates the file 0600; give the result the mode a plain open() would (0666 minus the umask), so
        # run directories stay readable by a group on shared clusters.
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)  # the only portable way to read it: set and restore
    os.umask(mask)
    return mask


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def json_safe(obj: Any) -> Any:
    """JSON has no NaN or infinity: those floats become null (in nested dicts and lists too)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj
