"""Per-backbone preprocessing (docs/protocols.md) and the loaders of the DataModule.

Input spaces: imagenet_rgb (torchvision weights: ImageNet mean/std), caffe_bgr255 (BN-Inception: BGR, 0-255, minus
[104, 117, 128]), any (small nets: ImageNet mean/std for 3 channels, (x - 0.5) / 0.5 for gray). Train: random resized
crop (scale 0.16-1) + flip; eval: resize + centre crop."""

import itertools
import math
import pickle

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

from plm_lightning.config import load_config
from plm_lightning.data.datamodule import RetrievalDataModule
from plm_lightning.data.transforms import IMAGENET_MEAN, IMAGENET_STD, CaffeBGR255, build_transform


def natural(input_space, train=False, in_channels=3, image_size=8, resize=10):
    return build_transform(
        augmentation="natural",
        train=train,
        augment=True,
        image_size=image_size,
        resize=resize,
        in_channels=in_channels,
        out_channels=3,
        input_space=input_space,
    )


def solid(rgb, size=(12, 16)):
    return Image.fromarray(np.full((*size, 3), rgb, dtype=np.uint8))


def test_caffe_bgr255_maps_a_known_pixel():
    out = natural("caffe_bgr255")(solid((255, 128, 0)))
    # RGB (255, 128, 0) -> BGR (0, 128, 255) -> minus the BGR mean (104, 117, 128); no std division
    expected = torch.tensor([0.0 - 104, 128.0 - 117, 255.0 - 128])
    assert out.shape == (3, 8, 8) and out.dtype == torch.float32
    assert torch.allclose(out[:, 4, 4], expected, atol=1e-3)
    assert torch.allclose(out, expected.view(3, 1, 1).expand(3, 8, 8), atol=1e-3)


def test_caffe_bgr255_from_gray_images():
    gray = Image.fromarray(np.full((12, 12), 100, dtype=np.uint8))
    out = natural("caffe_bgr255", in_channels=1)(gray)
    assert torch.allclose(out[:, 0, 0], torch.tensor([100.0 - 104, 100.0 - 117, 100.0 - 128]), atol=1e-3)


def test_imagenet_rgb_maps_a_known_pixel():
    out = natural("imagenet_rgb")(solid((255, 128, 0)))
    rgb = torch.tensor([1.0, 128 / 255, 0.0])
    expected = (rgb - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    assert torch.allclose(out[:, 3, 5], expected, atol=1e-5)


def test_any_keeps_the_small_nets_normalisation():
    rgb = natural("any")(solid((255, 128, 0)))
    assert torch.allclose(rgb, natural("imagenet_rgb")(solid((255, 128, 0))))
    digits = build_transform(
        augmentation="digits", train=False, augment=True, image_size=8, resize=8, in_channels=1, out_channels=1
    )  # input_space defaults to "any"
    out = digits(np.full((8, 8), 255, dtype=np.uint8))
    assert out.shape == (1, 8, 8) and torch.allclose(out, torch.ones_like(out))  # (1 - 0.5) / 0.5


def test_train_and_eval_geometry():
    train = natural("caffe_bgr255", train=True, image_size=8)
    crops = [t for t in train.transforms if isinstance(t, v2.RandomResizedCrop)]
    assert len(crops) == 1 and crops[0].scale == (0.16, 1.0) and tuple(crops[0].size) == (8, 8)
    assert any(isinstance(t, v2.RandomHorizontalFlip) for t in train.transforms)
    assert isinstance(train.transforms[-1], CaffeBGR255)
    assert train(solid((10, 20, 30), size=(40, 30))).shape == (3, 8, 8)

    evaluate = natural("imagenet_rgb", image_size=8, resize=10)
    kinds = [type(t) for t in evaluate.transforms]
    assert v2.Resize in kinds and v2.CenterCrop in kinds and v2.RandomResizedCrop not in kinds
    image = solid((10, 20, 30), size=(40, 30))
    assert evaluate(image).shape == (3, 8, 8)
    assert torch.equal(evaluate(image), evaluate(image))  # deterministic


def test_unknown_input_space_is_rejected():
    with pytest.raises(ValueError, match="bgr"):
        natural("bgr")


def test_transforms_pickle_for_loader_workers():
    restored = pickle.loads(pickle.dumps(natural("caffe_bgr255", train=True)))
    assert isinstance(restored.transforms[-1], CaffeBGR255)


# --- the DataModule -------------------------------------------------------------------------------------------------
def datamodule(input_space="any", channels=1, **overrides):
    cfg = load_config("digits.yaml", [f"{k}={v}" for k, v in overrides.items()])
    return RetrievalDataModule(cfg.data, backbone_channels=channels, input_space=input_space, seed=0)


def test_datamodule_threads_the_input_space_into_every_split():
    dm = datamodule("caffe_bgr255", channels=3)
    dm.setup("fit")
    for dataset in (dm.train_set, dm.train_eval_set, dm.test_set):
        assert isinstance(dataset.transform.transforms[-1], CaffeBGR255)
    image, _, _ = dm.test_set[0]
    assert image.shape == (3, 16, 16) and image.min() >= -128 - 1e-3 and image.max() <= 255 - 104 + 1e-3


def test_loader_options():
    dm = datamodule(**{"data.loader.num_workers": 0})
    assert dm._loader_kwargs() == {"num_workers": 0, "persistent_workers": False, "pin_memory": False}
    dm = datamodule(**{"data.loader.num_workers": 2, "data.loader.prefetch_factor": 3})
    kwargs = dm._loader_kwargs()
    assert kwargs["prefetch_factor"] == 3 and kwargs["persistent_workers"] and kwargs["num_workers"] == 2
    assert kwargs["pin_memory"] == torch.cuda.is_available()


def test_eval_loader_with_workers_is_deterministic():
    serial = datamodule(**{"data.loader.num_workers": 0, "data.loader.eval_batch_size": 128})
    parallel = datamodule(**{"data.loader.num_workers": 2, "data.loader.eval_batch_size": 128})
    for dm in (serial, parallel):
        dm.setup("fit")
    batches = [list(dm.test_embedding_dataloader()) for dm in (serial, parallel)]
    assert len(batches[0]) == len(batches[1]) > 1
    for (x0, y0, i0), (x1, y1, i1) in zip(*batches):
        assert torch.equal(i0, i1) and torch.equal(y0, y1) and torch.equal(x0, x1)


def test_train_loader_with_workers_waits_for_the_neighbour_table():
    """Lightning calls iter() on the training loader before on_train_epoch_start sets the neighbour table and the
    epoch; worker processes must not draw from the batch sampler before the first batch is asked for."""
    orders = []
    for workers in (0, 2):
        dm = datamodule(**{"data.loader.num_workers": workers, "data.sampler.batch_size": 10})
        dm.setup("fit")
        loader = dm.train_dataloader()
        iterator = iter(loader)  # as Lightning's setup_data does: no table yet
        n = len(dm.train_set)
        dm.batch_sampler.set_neighbours(
            torch.stack(
                [torch.arange(n)] + [torch.randperm(n, generator=torch.Generator().manual_seed(j)) for j in range(4)],
                dim=1,
            )
        )
        dm.batch_sampler.set_epoch(1)
        orders.append([batch[2] for batch in itertools.islice(iterator, 3)])  # 3 batches keep it fast
        dm.batch_sampler.set_epoch(2)
        assert len(list(itertools.islice(loader, 2))) == 2  # a second epoch (persistent workers with 2)
    assert len(orders[0]) == 3 and all(torch.equal(a, b) for a, b in zip(*orders))  # same batches either way


# --- batch augmentation of upright images (digits, glyphs) ------------------------------------------------------------
def test_batch_affine_has_torchvisions_geometry():
    from torchvision.transforms.v2 import functional as TF

    from plm_lightning.data.transforms import affine_sampling_matrices

    image = torch.zeros(1, 1, 32, 32)
    image[0, 0, 8:24, 14:18] = 1
    image[0, 0, 8:11, 14:26] = 1  # an asymmetric shape: a wrong rotation sense would show
    for angle, scale, tx, ty in [
        (20.0, 1.0, 0, 0),
        (-7.0, 1.0, 0, 0),
        (0.0, 1.2, 0, 0),
        (0.0, 1.0, 3, -2),
        (15.0, 0.9, 2, 1),
    ]:
        want = TF.affine(
            image[0],
            angle=angle,
            translate=[tx, ty],
            scale=scale,
            shear=[0.0, 0.0],
            interpolation=v2.InterpolationMode.BILINEAR,
        )
        theta = affine_sampling_matrices(
            torch.tensor([math.radians(angle)]), torch.tensor([scale]), torch.tensor([[2 * tx / 32, 2 * ty / 32]])
        )
        grid = torch.nn.functional.affine_grid(theta, [1, 1, 32, 32], align_corners=False)
        got = torch.nn.functional.grid_sample(image, grid, mode="bilinear", align_corners=False)
        assert torch.allclose(got[0], want, atol=1e-5), (angle, scale, tx, ty)


def test_batch_affine_draws_per_image_pads_with_black_and_keeps_views_apart():
    from plm_lightning.data.transforms import BatchRandomAffine, MultiView, flatten_views

    dm = datamodule(**{"data.augmentation.views": 2})
    dm.setup("fit")
    augment = dm.batch_augmentation
    assert isinstance(augment, BatchRandomAffine) and augment.fill == (-1.0,)  # (0 - 0.5) / 0.5: black
    assert isinstance(dm.train_set.transform, MultiView)
    images = torch.stack([dm.train_set[i][0] for i in range(4)])  # 4 x 2 views x 1 x 16 x 16, views identical
    assert images.shape == (4, 2, 1, 16, 16) and torch.equal(images[:, 0], images[:, 1])
    torch.manual_seed(0)
    out = augment(images)
    assert out.shape == images.shape and not torch.equal(out[:, 0], out[:, 1])  # each view its own draw
    assert out.min() >= -1 - 1e-5  # padding is black, never darker
    flat = flatten_views(out)
    assert torch.equal(flat[:4], out[:, 0]) and torch.equal(flat[4:], out[:, 1])  # view-major
    torch.manual_seed(0)
    assert torch.equal(augment(images), out)  # the global generator: checkpointed, so resume is exact
    blank = torch.full((3, 1, 16, 16), -1.0)
    assert torch.allclose(augment(blank), blank)


def test_batch_augmentation_only_while_training():
    dm = datamodule()
    dm.setup("fit")

    class Trainer:
        training = False

    dm.trainer = Trainer()
    batch = [torch.zeros(2, 1, 16, 16) + 0.5, torch.tensor([0, 1]), torch.tensor([0, 1])]
    assert torch.equal(dm.on_after_batch_transfer(batch, 0)[0], batch[0])
    Trainer.training = True
    torch.manual_seed(1)
    assert not torch.equal(dm.on_after_batch_transfer(batch, 0)[0], batch[0])
    plain = datamodule(**{"data.augmentation.enabled": False})
    plain.setup("fit")
    assert plain.batch_augmentation is None


# --- the augmentation knobs (data.augmentation.crop_scale, hflip, color_jitter) -------------------------------------


def half_bright(size=32):
    """Left half white, right half black: a flip is visible in every output."""
    array = np.zeros((size, size, 3), dtype=np.uint8)
    array[:, : size // 2] = 255
    return Image.fromarray(array)


def augmented(**knobs):
    # crop_scale (1, 1): the crop is the whole (square) image, so only the flip and the jitter can change it
    return build_transform(
        augmentation="natural",
        train=True,
        augment=True,
        image_size=16,
        resize=16,
        in_channels=3,
        out_channels=3,
        input_space="any",
        **{"crop_scale": (1.0, 1.0), **knobs},
    )


def left_minus_right(image):
    return float(image[..., :8].mean() - image[..., 8:].mean())


def test_hflip_false_never_flips_an_asymmetric_image():
    torch.manual_seed(0)
    transform = augmented(hflip=False)
    assert not any(isinstance(t, v2.RandomHorizontalFlip) for t in transform.transforms)
    assert all(left_minus_right(transform(half_bright())) > 0 for _ in range(60))
    flipping = augmented(hflip=True)
    signs = {left_minus_right(flipping(half_bright())) > 0 for _ in range(60)}
    assert signs == {True, False}  # the default flips about half the draws (this check fails with p = 2^-59)


def test_color_jitter_changes_colours_only_when_asked():
    torch.manual_seed(0)
    grey = Image.fromarray(np.full((16, 16, 3), (90, 140, 200), dtype=np.uint8))
    plain = augmented(hflip=False)
    assert len({round(float(plain(grey).mean()), 6) for _ in range(10)}) == 1
    jitter = augmented(hflip=False, color_jitter=1.0)
    assert any(isinstance(t, v2.ColorJitter) for t in jitter.transforms)
    assert len({round(float(jitter(grey).mean()), 4) for _ in range(10)}) > 5


def test_crop_scale_reaches_the_random_resized_crop():
    crop = next(t for t in augmented(crop_scale=(0.5, 0.9)).transforms if isinstance(t, v2.RandomResizedCrop))
    assert crop.scale == (0.5, 0.9)


@pytest.mark.parametrize(
    "override, needle",
    [
        ("data.augmentation.hflip=true", "data.augmentation.hflip"),  # digits: upright images, no flip
        ("data.augmentation.color_jitter=0.5", "data.augmentation.color_jitter"),
        ("data.augmentation.crop_scale=[0.5,1.0]", "data.augmentation.crop_scale"),
    ],
)
def test_photograph_knobs_on_upright_images_are_refused(override, needle):
    from plm_lightning.config import ConfigError

    with pytest.raises(ConfigError, match=needle) as err:
        load_config("digits.yaml", [override])
    assert "apply to photographs" in str(err.value)


@pytest.mark.parametrize(
    "override",
    [
        "data.augmentation.crop_scale=[0.5,0.2]",
        "data.augmentation.crop_scale=[0,1]",
        "data.augmentation.crop_scale=[0.5]",
        "data.augmentation.color_jitter=6",
    ],
)
def test_bad_augmentation_values_name_the_key(override):
    from plm_lightning.config import ConfigError

    with pytest.raises(ConfigError, match=override.split("=")[0]):
        load_config("synthetic.yaml" if "jitter" in override else "digits.yaml", [override])


def test_the_family_default_flips_photographs_and_not_glyphs(tmp_path):
    from plm_lightning.data.datamodule import augmentation_knobs

    folder = load_config(None, ["data.name=folder", f"data.root={tmp_path}"], check_data=False).data
    assert augmentation_knobs(folder) == {"crop_scale": (0.16, 1.0), "hflip": True, "color_jitter": 0.0}
    assert augmentation_knobs(load_config("glyphs.yaml").data)["hflip"] is False
    off = load_config(
        None, ["data.name=folder", f"data.root={tmp_path}", "data.augmentation.hflip=false"], check_data=False
    )
    assert augmentation_knobs(off.data)["hflip"] is False


def test_a_folder_run_with_hflip_false_has_no_flip_in_its_training_transform(tmp_path):
    # The path a run takes: config -> DataModule -> per-image training transform.
    cfg = load_config(
        None, ["data.name=folder", f"data.root={tmp_path}", "data.augmentation.hflip=false"], check_data=False
    )
    module = RetrievalDataModule(cfg.data, backbone_channels=3, input_space="imagenet_rgb")
    train = module._transform(True)
    assert any(isinstance(t, v2.RandomResizedCrop) for t in train.transforms)
    assert not any(isinstance(t, v2.RandomHorizontalFlip) for t in train.transforms)
    default = RetrievalDataModule(
        load_config(None, ["data.name=folder", f"data.root={tmp_path}"], check_data=False).data,
        backbone_channels=3,
        input_space="imagenet_rgb",
    )
    assert any(isinstance(t, v2.RandomHorizontalFlip) for t in default._transform(True).transforms)


def _float_first(pipeline):
    """The same steps with the conversion to float moved to the front: the order photographs used before the
    geometry moved onto the uint8 image (the reference for the tolerance below)."""
    steps = [t for t in pipeline.transforms if not isinstance(t, v2.ToDtype)]
    return v2.Compose([steps[0], v2.ToDtype(torch.float32, scale=True), *steps[1:]])


@pytest.mark.parametrize("train", [False, True])
def test_geometry_on_uint8_matches_float_geometry_within_one_level(train):
    """Photographs are cropped, resized and flipped as uint8 (2x faster per loader worker at CUB size,
    benchmarks/loader.py); the pixels stay within one grey level of resizing the float image."""
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, size=(75, 100, 3), dtype=np.uint8))
    ours = natural("imagenet_rgb", train=train, image_size=32, resize=40)
    kinds = [type(t) for t in ours.transforms]
    assert kinds.index(v2.ToDtype) > kinds.index(v2.RandomResizedCrop if train else v2.CenterCrop)
    torch.manual_seed(3)
    a = ours(image)
    torch.manual_seed(3)  # the same crop and flip draws
    b = _float_first(ours)(image)
    levels = (a - b).abs() * torch.tensor(IMAGENET_STD)[:, None, None] * 255
    assert levels.max() <= 1.0 + 1e-4
    assert levels.mean() < 0.3


def test_in_memory_upright_images_are_transformed_once_with_the_same_items():
    """digits and glyphs transform every image once at setup (their per-image pipeline is deterministic; the
    augmentation is the batch's): the served items equal what the transform gives, views included."""
    dm = datamodule(**{"data.augmentation.views": 2})
    dm.setup("fit")
    for dataset in (dm.train_set, dm.train_eval_set, dm.test_set):
        assert dataset._transformed is not None and dataset._transformed.shape[0] == len(dataset)
        for i in (0, 7, len(dataset) - 1):
            image, label, index = dataset[i]
            assert torch.equal(image, dataset.transform(dataset.load(i)))
            assert (label, index) == (int(dataset.labels[i]), i)
    assert dm.train_set[0][0].shape[0] == 2  # B x V: the views are stacked before the batch augmentation
