"""The glyphs benchmark's data: frozen class lists that the fonts reproduce, class-disjoint tasks and splits,
images that are pure functions of (seed, task, class, image number), and config errors as one line."""

import unicodedata

import numpy as np
import pytest
import torch
from torchvision.transforms import v2

from plm_lightning.config import ConfigError, load_config
from plm_lightning.data import glyphs
from plm_lightning.data.glyphs import GlyphsDataset, derive_class_lists, has_diacritic, render_split

SMALL = [
    "data.glyphs.classes=3",
    "data.glyphs.images_per_class=4",
    "data.glyphs.source_classes=5",
    "data.glyphs.source_images_per_class=3",
]


def test_frozen_lists_are_what_the_fonts_give():
    assert derive_class_lists() == (glyphs.SOURCE_CHARS, glyphs.TARGET_TRAIN_CHARS, glyphs.TARGET_TEST_CHARS)


def test_tasks_and_splits_are_disjoint_and_shaped_as_documented():
    source, train, test = set(glyphs.SOURCE_CHARS), set(glyphs.TARGET_TRAIN_CHARS), set(glyphs.TARGET_TEST_CHARS)
    assert len(source) == len(glyphs.SOURCE_CHARS) == 789
    assert len(train) == len(test) == 100
    assert not (source & train) and not (source & test) and not (train & test)
    # The target is fine-grained: Latin letters with marks; the source has no such letter.
    for char in train | test:
        assert unicodedata.name(char).startswith("LATIN") and has_diacritic(char)
    assert not any(unicodedata.name(c).startswith("LATIN") and has_diacritic(c) for c in source)
    # Train and test share base letters (like CUB's shared body plans), and every class has >= 8 fonts.
    bases = lambda chars: {unicodedata.normalize("NFD", c)[0].lower() for c in chars}  # noqa: E731
    assert len(bases(train) & bases(test)) >= 10
    assert all(len(glyphs.fonts_for(c)) >= glyphs.MIN_FONTS for c in source | train | test)


def test_images_are_pure_functions_of_seed_task_class_and_number():
    a, la = render_split(glyphs.TARGET_TRAIN_CHARS[:3], "target", 0, (0, 1, 2), 0)
    b, lb = render_split(glyphs.TARGET_TRAIN_CHARS[:2], "target", 0, (0, 1), 0)
    assert a.shape == (9, 1, 32, 32) and a.dtype == torch.uint8
    assert la.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    # Fewer classes or images leave the remaining images unchanged.
    assert torch.equal(a[[0, 1, 3, 4]], b)
    c, _ = render_split(glyphs.TARGET_TRAIN_CHARS[:3], "target", 0, (0, 1, 2), 1)
    assert not torch.equal(a, c)  # another rendering seed, other images
    # The images differ within a class (nuisance) and carry the glyph: bright strokes, which the noise alone
    # (std 12 around black) practically never gives (P(noise > 128) ~ 1e-26 per pixel).
    assert not torch.equal(a[0], a[1])
    assert all(int((img > 128).sum()) >= 20 for img in a)


def test_dataset_splits_and_labels():
    cfg = load_config("glyphs.yaml", SMALL)
    train = GlyphsDataset("train", config=cfg.data.glyphs)
    test = GlyphsDataset("test", config=cfg.data.glyphs)
    assert len(train) == len(test) == 12
    assert train.class_ids == [0, 1, 2]
    assert test.class_ids == [100, 101, 102]  # test labels follow the 100 train classes: never colliding
    assert train.chars == glyphs.TARGET_TRAIN_CHARS[:3] and test.chars == glyphs.TARGET_TEST_CHARS[:3]
    source_cfg = load_config("glyphs_pretrain.yaml", SMALL)
    src_train = GlyphsDataset("train", config=source_cfg.data.glyphs)
    src_test = GlyphsDataset("test", config=source_cfg.data.glyphs)
    assert len(src_train) == 15 and src_train.class_ids == [0, 1, 2, 3, 4]
    # The source test split: held-out images of the same classes.
    assert len(src_test) == 5 * glyphs.SOURCE_TEST_IMAGES and src_test.class_ids == src_train.class_ids
    assert not any(torch.equal(x, y) for x in src_test.images for y in src_train.images)


def test_training_transform_never_mirrors():
    """A mirrored glyph is another character: the glyphs' training augmentation has no flip."""
    from plm_lightning.data.datamodule import RetrievalDataModule
    from plm_lightning.data.transforms import MultiView

    cfg = load_config("glyphs.yaml", SMALL + ["data.sampler.batch_size=10"])
    dm = RetrievalDataModule(cfg.data, backbone_channels=1)
    dm.setup("fit")
    transform = dm.train_set.transform
    assert (
        isinstance(transform, MultiView) and transform.views == cfg.data.augmentation.views == 2
    )  # glyphs.yaml: two views
    assert not any(isinstance(t, v2.RandomHorizontalFlip) for t in transform.transform.transforms)
    x = dm.train_set[0][0]
    assert x.shape == (2, 1, 32, 32) and x.dtype == torch.float32


@pytest.mark.parametrize(
    "override, key",
    [
        ("data.glyphs.task=middle", "data.glyphs.task"),
        ("data.glyphs.classes=101", "data.glyphs.classes"),
        ("data.glyphs.images_per_class=1", "data.glyphs.images_per_class"),
        ("data.glyphs.source_classes=910", "data.glyphs.source_classes"),
    ],
)
def test_bad_values_name_their_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config("glyphs.yaml", [override])


def test_render_glyph_is_deterministic_given_the_generator():
    a = glyphs.render_glyph("ǎ", np.random.default_rng(5))
    b = glyphs.render_glyph("ǎ", np.random.default_rng(5))
    assert np.array_equal(a, b) and a.shape == (32, 32)
