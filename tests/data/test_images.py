"""Robust image loading: every PIL mode to RGB, unreadable files named, image listing without ._* and hidden."""

import pickle

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile
from trees import KINDS, truncate_image, write_image, write_resource_fork

from plm_lightning.data.images import UnreadableImageError, list_images, load_rgb, load_rgb_tensor


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_decodes_to_rgb(tmp_path, kind):
    img = load_rgb(write_image(tmp_path / f"x.{kind}", kind, size=20))
    assert img.mode == "RGB" and img.size == (20, 20)


@pytest.mark.parametrize(
    "mode, fmt",
    [("1", "PNG"), ("L", "PNG"), ("LA", "PNG"), ("I;16", "PNG"), ("P", "PNG"), ("I", "TIFF"), ("F", "TIFF")],
)
def test_other_modes(tmp_path, mode, fmt):
    path = tmp_path / f"x.{fmt.lower()}"
    Image.new(mode, (5, 4)).save(path, format=fmt)
    assert load_rgb(path).mode == "RGB"


def test_sixteen_bit_greyscale_is_scaled_not_clipped(tmp_path):
    path = tmp_path / "deep.png"
    Image.new("I;16", (4, 4), color=32768).save(path)
    r, g, b = load_rgb(path).getpixel((0, 0))
    assert r == g == b and 120 <= r <= 135  # mid-grey, not white


def test_transparent_pixels_become_white(tmp_path):
    path = tmp_path / "t.png"
    Image.new("RGBA", (3, 3), (0, 0, 0, 0)).save(path)
    assert load_rgb(path).getpixel((1, 1)) == (255, 255, 255)


def test_truncated_jpeg_names_the_path(tmp_path):
    path = truncate_image(write_image(tmp_path / "cut.jpg", "rgb", size=64))
    assert not ImageFile.LOAD_TRUNCATED_IMAGES
    with pytest.raises(UnreadableImageError, match=r"^cannot read image .*cut\.jpg: ") as info:
        load_rgb(path)
    assert info.value.path == str(path) and isinstance(info.value, OSError)
    again = pickle.loads(pickle.dumps(info.value))  # as it comes back from a DataLoader worker
    assert str(again) == str(info.value)


@pytest.mark.parametrize("content", [b"", b"not an image at all"])
def test_garbage_and_missing_files(tmp_path, content):
    path = tmp_path / "bad.jpg"
    path.write_bytes(content)
    with pytest.raises(UnreadableImageError, match="bad.jpg"):
        load_rgb(path)
    with pytest.raises(UnreadableImageError, match="nothere.jpg: No such file"):
        load_rgb(tmp_path / "nothere.jpg")
    with pytest.raises(UnreadableImageError, match=r"\._x\.jpg"):
        load_rgb(write_resource_fork(tmp_path / "._x.jpg"))


def test_load_truncated_images_flag_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(RuntimeError, match="LOAD_TRUNCATED_IMAGES"):
        load_rgb(write_image(tmp_path / "a.jpg"))


def test_list_images(tmp_path):
    for rel in ["b/1.JPG", "a/2.jpeg", "a/deep/er/3.Png", "4.webp", "5.TIFF", "6.bmp", "7.gif"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    for rel in ["a/._2.jpeg", ".hidden/8.jpg", "a/.9.jpg", "a/notes.txt", "a/x.jpg.part"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    found = [p.relative_to(tmp_path).as_posix() for p in list_images(tmp_path)]
    assert found == ["4.webp", "5.TIFF", "6.bmp", "7.gif", "a/2.jpeg", "a/deep/er/3.Png", "b/1.JPG"]


@pytest.mark.parametrize("kind", KINDS)
def test_the_datasets_tensor_decoder_gives_plis_pixels(tmp_path, kind):
    """Datasets decode JPEGs with torchvision's decode_jpeg (faster per loader worker): the same pixels as PIL's,
    within one grey level (identical with the libjpeg-turbo both ship here); other formats go through PIL."""
    path = write_image(tmp_path / f"x.{kind}", kind, size=40)
    ours = load_rgb_tensor(path)
    pil = torch.from_numpy(np.asarray(load_rgb(path))).permute(2, 0, 1)
    assert ours.dtype == torch.uint8 and ours.shape == (3, 40, 40)
    assert int((ours.int() - pil.int()).abs().max()) <= 1


def test_the_tensor_decoder_names_damaged_and_disguised_files(tmp_path):
    cut = truncate_image(write_image(tmp_path / "cut.jpg", "rgb", size=64))
    with pytest.raises(UnreadableImageError, match=r"^cannot read image .*cut\.jpg: "):
        load_rgb_tensor(cut)
    with pytest.raises(UnreadableImageError, match="nothere.jpg: No such file"):
        load_rgb_tensor(tmp_path / "nothere.jpg")
    png_named_jpg = tmp_path / "really_a_png.jpg"
    Image.new("RGB", (6, 5), (10, 200, 30)).save(png_named_jpg, format="PNG")
    assert load_rgb_tensor(png_named_jpg)[:, 0, 0].tolist() == [10, 200, 30]
