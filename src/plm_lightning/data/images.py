"""Robust image files: decoding any file PIL can read into an RGB image, a clear error naming the path of one it
cannot, and listing the image files of a folder tree (macOS ``._*`` and hidden entries ignored)."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFile

try:  # deprecated in torchvision 0.29 (superseded by TorchCodec): PIL decodes everything when it is gone
    from torchvision.io import ImageReadMode, decode_jpeg
except ImportError:  # pragma: no cover - depends on the installed torchvision
    decode_jpeg = None  # type: ignore[assignment]

JPEG_SUFFIXES = frozenset({".jpg", ".jpeg"})

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})

# A truncated JPEG must fail, not decode with a grey bottom half: PIL hides the damage when this global flag is on.
# If some other library has set it, loading refuses to run rather than silently unset it behind that library's back.
_TRUNCATION_HINT = (
    "PIL.ImageFile.LOAD_TRUNCATED_IMAGES is True in this process, so truncated images would go "
    "unnoticed; set it back to False"
)


class UnreadableImageError(OSError):
    """An image file that cannot be decoded (missing, truncated, not an image). The message names its path."""

    def __init__(self, path, reason: str = ""):
        self.path = str(path)
        self.reason = str(reason)
        super().__init__(f"cannot read image {self.path}: {self.reason}" if reason else self.path)

    def __reduce__(self):  # survives the trip from a DataLoader worker (pickled with both arguments)
        return type(self), (self.path, self.reason)


def is_hidden(name: str) -> bool:
    """Hidden files and folders, including the macOS resource forks ``._*`` that some archives carry."""
    return name.startswith(".")


def is_image_file(name: str) -> bool:
    return not is_hidden(name) and os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Image files below ``folder`` at any depth, sorted by relative path (case-insensitive suffixes; hidden
    folders, hidden files and ``._*`` skipped)."""
    folder = Path(folder)
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not is_hidden(d))  # prune in place: os.walk skips them
        found.extend(Path(dirpath) / f for f in filenames if is_image_file(f))
    return sorted(found, key=lambda p: p.relative_to(folder).as_posix())


def _to_rgb(img: Image.Image) -> Image.Image:
    mode = img.mode
    if mode == "RGB":
        return img
    if mode.startswith("I") or mode == "F":
        # 16/32-bit greyscale (e.g. 16-bit PNGs): convert("RGB") would clip everything above 255 to white.
        arr = np.asarray(img, dtype=np.float64)
        if arr.size and arr.max() > 255:
            arr = arr / 257.0
        img = Image.fromarray(np.clip(arr, 0, 255).round().astype(np.uint8), mode="L")
        mode = "L"
    if mode == "P":
        # A palette with a transparent entry goes through RGBA (PIL warns on a direct P -> RGB conversion).
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        mode = img.mode
    if mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        # Transparent pixels become white, not whatever colour happens to sit under alpha = 0.
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV


def load_rgb(path: str | os.PathLike) -> Image.Image:
    """Decode ``path`` fully into an RGB image; raise UnreadableImageError (naming the path) if that fails."""
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        raise RuntimeError(_TRUNCATION_HINT)
    try:
        with Image.open(path) as img:
            img.load()  # decode now, inside the try: Image.open alone reads only the header
            return _to_rgb(img)
    except UnreadableImageError:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        # PIL signals damage as OSError (truncated, unidentified), ValueError or SyntaxError (broken headers).
        reason = exc.strerror if isinstance(exc, FileNotFoundError) and exc.strerror else str(exc)
        raise UnreadableImageError(path, reason.splitlines()[0] if reason else type(exc).__name__) from exc


def load_rgb_tensor(path: str | os.PathLike) -> torch.Tensor:
    """Decode ``path`` into a uint8 3 x H x W RGB tensor, the datasets' image type; UnreadableImageError (naming the
    path) if that fails.

    JPEG files go through torchvision's ``decode_jpeg`` (the same libjpeg-turbo as PIL: identical pixels, and with
    the training transforms 1.3-1.7x more images per second per loader worker, benchmarks/loader.py); any other
    format, and a JPEG that ``decode_jpeg`` refuses (truncated, not really a JPEG), through :func:`load_rgb`, which
    decodes it or names the damage."""
    if decode_jpeg is not None and os.path.splitext(str(path))[1].lower() in JPEG_SUFFIXES:
        try:
            data = torch.frombuffer(bytearray(Path(path).read_bytes()), dtype=torch.uint8)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                return decode_jpeg(data, mode=ImageReadMode.RGB)
        except (OSError, RuntimeError, ValueError):
            pass  # PIL below: it reads what it can, and raises UnreadableImageError for what it cannot
    return torch.from_numpy(np.asarray(load_rgb(path))).permute(2, 0, 1)
