"""Glyphs: an offline analogue of the deep-metric-learning protocol (``data.name=glyphs``; docs/benchmark.md).

The paper's protocol is: a backbone pretrained with labels on a large, coarse *source* task (ImageNet), then trained
without labels on the *train* classes of a fine-grained target dataset (CUB: bird species 1-100) and evaluated
zero-shot on its disjoint *test* classes (101-200). This module builds the same three-part setting from what
installs with the package, with no download: Unicode characters rendered from the TrueType fonts that ship inside
matplotlib (DejaVu Sans / Sans Mono / Serif and STIX General, each in regular, bold, italic and bold italic: 16
fonts). One class is one character; its images are that character in a random font, size, stroke weight, rotation,
shear, position and pixel noise.

- ``task: source`` (the "ImageNet"): 789 distinct characters without marks (Latin, Greek, Cyrillic, Armenian and
  Georgian letters, digits, arrows and mathematical symbols), for supervised pretraining of the backbone. Its test
  split holds held-out images of the same classes (a check of the pretraining, as ImageNet's validation set is).
- ``task: target`` (the "CUB"): 200 Latin letters with diacritics (a, á, à, â, ǎ, ạ, ẩ, ... of many base letters),
  split class-disjointly into 100 train and 100 test classes. Like bird species, the classes share a few body plans
  (the base letters, which the source task knows) and differ in small parts (the marks), while the nuisance (font,
  weight, pose) is large: a pretrained network groups them by base letter and must learn the marks.

Characters that look alike are removed before the lists are drawn, so that no class is a copy of another or of a
source class: each character's glyph in DejaVu Sans is cropped to its bounding box and scaled to a square; a
source character is kept only if the correlation of that shape (20 x 20) with every source character kept before it
is at most ``SOURCE_DEDUP``; a target character only if its shape (32 x 32, fine enough to see the marks) correlates
at most ``TARGET_DEDUP`` with every source and every earlier target character (this drops near-identical glyphs,
not fine-grained siblings). The lists are frozen below; ``derive_class_lists()`` recomputes them from the fonts and
a test checks that the two agree.

Every image is a pure function of (``seed``, task, class position, image number): adding classes or images never
changes the ones already there.
"""

from __future__ import annotations

import functools
import os
import unicodedata
from typing import Optional

import numpy as np
import torch

from plm_lightning.data.base import RetrievalDataset

FONT_FILES = (
    "DejaVuSans.ttf",
    "DejaVuSans-Bold.ttf",
    "DejaVuSans-Oblique.ttf",
    "DejaVuSans-BoldOblique.ttf",
    "DejaVuSansMono.ttf",
    "DejaVuSansMono-Bold.ttf",
    "DejaVuSansMono-Oblique.ttf",
    "DejaVuSansMono-BoldOblique.ttf",
    "DejaVuSerif.ttf",
    "DejaVuSerif-Bold.ttf",
    "DejaVuSerif-Italic.ttf",
    "DejaVuSerif-BoldItalic.ttf",
    "STIXGeneral.ttf",
    "STIXGeneralBol.ttf",
    "STIXGeneralItalic.ttf",
    "STIXGeneralBolIta.ttf",
)
MIN_FONTS = 8  # a class needs at least this many fonts: the within-class variation comes from them
SOURCE_DEDUP = 0.85
TARGET_DEDUP = 0.98
# Source families: the first word of the characters' Unicode names (scripts and symbol families). Characters with
# marks (diacritics, negation slashes) are never in the source.
SOURCE_SCRIPTS = (
    "LATIN",
    "GREEK",
    "CYRILLIC",
    "ARMENIAN",
    "GEORGIAN",
    "DIGIT",
    "WHITE",
    "BLACK",
    "LEFTWARDS",
    "RIGHTWARDS",
    "UPWARDS",
    "DOWNWARDS",
    "LEFT",
    "RIGHT",
    "SQUARE",
    "CIRCLED",
    "DOUBLE-STRUCK",
    "NOT",
    "N-ARY",
    "LESS-THAN",
    "GREATER-THAN",
    "ROMAN",
    "VULGAR",
    "NORTH",
    "SOUTH",
)
TARGET_CLASSES = 200  # drawn from the target candidates; half train, half test
_LIST_SEED = 20240318  # the draw and the split of the target classes (fixed: part of the benchmark's design)
IMAGE_SIZE = 32  # pixels; data.image_size resizes if a run asks for another size
_TASK_IDS = {"source": 1, "target": 2}

# Frozen by derive_class_lists() (tests/data/test_glyphs.py recomputes them from the fonts).
SOURCE_CHARS = (
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabdefghkmnpqrtyÆÐØÞßæðþđĦħĲŀŁŉŊŒœƀ"
    "ƁƄƆƇƈƊƋƎƏƐƑƒƔƕƖƛƜƝƢƣƤƦƧƩƪƫƱƲƳƴƶƷƸƺƻƼƾƿǁǂǄǅǆǇǊǌǤǥǱǲǶǷȜȡȢȣȤȥȴȵ"
    "ȸȹȺȻȼȽȾȿɀɁɂɃɆɇɈɉɊɌɍɐɑɒɕɖɗɘɚɜɝɞɠɤɥɧɨɪɬɭɮɯɰɱɲɳɷɸɹɺɻɼɽɾɿʀʁʂʃʆʇʉ"
    "ʌʍʎʐʑʓʔʕʚʛʜʝʞʣʤʥʦʧʨʩʪʫʬʭʮʯᴂᴌᴎᴑᴒᴓᴔᴙᴚᴝᴞᴟᵷᶅẚẝẞỺỻⱠⱣⱤⱧⱨⱩⱪⱫⱮⱱⱲⱳⱵⱷⱺ"
    "ⱾⱿꜢꜦꜨꜩꜲꜴꜶꜷꜸꜹꜼꜽꝀꝁꝆꝇꝊꝋꝎꞀꞂꞍꞎꞐꞑꞪꟻꟼꟽꟿﬀﬁﬃﬅﬆͲͳͶͼΓΔΞΠΦΨΩαβζθκμνξπςστ"
    "υφχψωϐϒϖϗϘϙϚϞϟϠϡϰϱ϶ϺϻϼЂЉЊЋЏДЖЛЦЩЪЫЬЮЯдлпфцщъыђњћѢѣѤѪѬѰѴҍҐґҒҔ"
    "ҖҘҙҚҞҠҤҦҪҬұҲҴҵҶҺӃӋӶԒԔꙐꙑꙔꙖꙗԲԳԴԵԶԷԸԹԺԻԽԾԿՀՁՃՄՅՆՇՉՊՋՌՎՏՐՒՔՖգեէը"
    "թժիխձճմնշչջռտփֆևႠႡႢႣႤႥႦႧႨႩႪႫႬႮႯႰႱႲႳႴႵႶႸႼႽႾႿჀჁჂჃჄჅაბგდეზთიკლმ"
    "ნოპჟრსტუფქღყჩცძჭჯჰჱჲჳჴჵჶჸჹჺⴀⴁⴂⴃⴄⴅⴆⴇⴈⴉⴋⴌⴎⴏⴐⴑⴒⴓⴕⴖⴗⴘⴙⴜⴝⴟⴡⴢⴣⴤⴥ45"
    "6789□▣▫▭▯▱△▵▷▻▽◁◃◅◇◈○◴◵☹☺☼♧■▪▬▮▰▲▶►▼◀◄◆●◢◣◤◥☀☻♠♣♥➡⧫←↜↞↢↤↩↹↼↽"
    "⇆⇇⇋⇐⇚⇤⇷⇺⬅⬐⬑→↝↠↣↦↪↴⇀⇁⇄⇉⇌⇒⇛⇥⇰⇸⇻⬎⬏↑↟↥↰↱↾↿⇅⇈⇑⇞⇪⇫⇮⟰⤊⬆↓↡↧↯↲↳↵⇂⇃⇊⇓⇟"
    "⇵⟱⤋⬇↔⇔⇼⊣⎛⎝⎡⎨▉◖∟⊢⎞⎠⎤⎦◗⟴√⊏⊐⊑⊒⊔⋤⋥⌑▤▥▦▧▨▩◧◨◩◪⬒⬓⬔⬕⊕⊗⊙⊚⊛①②③④⑤⑦⑧ℂℍℕ"
    "ℙℚℝℤℼℿⅅⅆⅇⅈⅉ∏∐⋂<≤≦≨≲≶⋚⋦>≥≧≩≳≷⋛⋧ⅢⅣⅥⅦⅧⅨⅪⅫↀↁↂↅ¼½¾⅑⅒⅔⅕⅗⅘⅚⅞↉↖↗↸⇖⇗⇱"
    "⬈⬉↘↙⇘⇙⇲⬊⬋"
)
TARGET_TRAIN_CHARS = (
    "ÍÏÑÕÜáåïñāăćċČďĒĖėĜĠĪįĴĺĽŅņŌŐőŕŖŘŠŤťŭųƯǎǒǜǧǪǰǵǺȁȂȃȍȞȧȫḆḐḙḚḰḲḳḴḷḹḻṈṋṏṑṓṖṚṝṤṫṭṯṶẉầẫẰẵẸỀỂỌỏốỒổỖỚỞỠỢợỬỮỷ"
)
TARGET_TEST_CHARS = (
    "ÀÂÉÊÌÔÙÛâéöĂĄĉčĎğģĩīĭİĶŇňōŏŚŜşţŨŪůŴŸžǐǖǙǞǟǨǭǹǻǽǾȄȉȎȐȕȚȦȬȱȲḈḉḜḡḤḦḧḩḪḫḯḶḺḿṂṄṊṗṞṡṦṧṨṩṱṲṻẊẐạẢẨằặỘỜờủứửữỳ"
)


def font_dir() -> str:
    import matplotlib

    return os.path.join(os.path.dirname(matplotlib.__file__), "mpl-data", "fonts", "ttf")


@functools.cache
def _coverage() -> dict[str, frozenset[int]]:
    from fontTools.ttLib import TTFont

    return {f: frozenset(TTFont(os.path.join(font_dir(), f)).getBestCmap()) for f in FONT_FILES}


@functools.cache
def _font(name: str, size: int):
    from PIL import ImageFont

    return ImageFont.truetype(os.path.join(font_dir(), name), size)


def fonts_for(char: str) -> tuple[str, ...]:
    """The fonts (of FONT_FILES) that have a glyph for ``char``."""
    cov = _coverage()
    return tuple(f for f in FONT_FILES if ord(char) in cov[f])


# --- rendering ----------------------------------------------------------------------------------------------------
_CANVAS = 96  # glyphs are drawn and transformed here; the central _CROP x _CROP is then reduced to IMAGE_SIZE
_CROP = 72


def render_glyph(char: str, rng: np.random.Generator, size: int = IMAGE_SIZE) -> np.ndarray:
    """One image of ``char`` (uint8, size x size, white glyph on black) with random nuisance from ``rng``:
    font (uniform over the fonts that have the glyph), font size 40-51 px on the 96-px canvas (a capital with its
    mark fills about 60-85 % of the image), stroke width 0-1, rotation +-10 degrees, shear +-0.15, scale 0.85-1.1,
    shift +-3 px, and Gaussian pixel noise (std 12 on 0-255)."""
    from PIL import Image

    fonts = fonts_for(char)
    font = _font(fonts[int(rng.integers(len(fonts)))], int(rng.integers(40, 52)))
    stroke = int(rng.integers(0, 2))
    angle, shear, scale = rng.uniform(-10, 10), rng.uniform(-0.15, 0.15), rng.uniform(0.85, 1.1)
    tx, ty = rng.uniform(-3, 3, size=2)
    canvas = Image.new("L", (_CANVAS, _CANVAS), 0)
    _draw_centred(canvas, char, font, stroke)
    canvas = canvas.rotate(float(angle), resample=Image.BILINEAR, translate=(float(tx), float(ty)))
    # Inverse affine map (output -> input) of scaling by `scale` and shearing by `shear` about the centre.
    c, a, b = _CANVAS / 2, 1 / scale, float(shear)
    canvas = canvas.transform(
        (_CANVAS, _CANVAS), Image.AFFINE, (a, b, c - a * c - b * c, 0, a, c - a * c), resample=Image.BILINEAR
    )
    q = (_CANVAS - _CROP) // 2
    image = canvas.crop((q, q, _CANVAS - q, _CANVAS - q)).resize((size, size), Image.LANCZOS)
    pixels = np.asarray(image, dtype=np.float32) + rng.normal(0.0, 12.0, (size, size))
    return np.clip(np.rint(pixels), 0, 255).astype(np.uint8)


def _draw_centred(canvas, char: str, font, stroke: int = 0) -> None:
    """Draw ``char`` in white with its bounding box centred on the canvas."""
    from PIL import ImageDraw

    draw = ImageDraw.Draw(canvas)
    left, top, right, bottom = draw.textbbox((0, 0), char, font=font, stroke_width=stroke)
    w, h = canvas.size
    draw.text(
        (w / 2 - (right - left) / 2 - left, h / 2 - (bottom - top) / 2 - top),
        char,
        fill=255,
        font=font,
        stroke_width=stroke,
        stroke_fill=255,
    )


def image_rng(seed: int, task: str, class_position: int, image_number: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), _TASK_IDS[task], int(class_position), int(image_number)])


@functools.lru_cache(maxsize=4)  # the train and test splits of one run, and the DDP/loader copies in a process
def render_split(
    chars: str, task: str, first_position: int, image_numbers: tuple[int, ...], seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(uint8 images N x 1 x S x S, labels N) for every char of ``chars`` and every image number; labels are the
    chars' positions in their task's list (first_position + i), so train and test labels never collide."""
    images, labels = [], []
    for i, char in enumerate(chars):
        for n in image_numbers:
            images.append(render_glyph(char, image_rng(seed, task, first_position + i, n)))
            labels.append(first_position + i)
    stacked = (
        torch.from_numpy(np.stack(images)).unsqueeze(1)
        if images
        else torch.empty(0, 1, IMAGE_SIZE, IMAGE_SIZE, dtype=torch.uint8)
    )
    return stacked, torch.tensor(labels, dtype=torch.long)


# --- the class lists ----------------------------------------------------------------------------------------------
def _shape_vector(char: str, resolution: int) -> Optional[np.ndarray]:
    """The glyph in DejaVu Sans cropped to its bounding box, padded to a square, resolution x resolution, zero-mean,
    unit norm (None for a glyph without ink)."""
    from PIL import Image

    canvas = Image.new("L", (128, 128), 0)
    _draw_centred(canvas, char, _font("DejaVuSans.ttf", 64))
    box = canvas.getbbox()
    if box is None:
        return None
    glyph = canvas.crop(box)
    w, h = glyph.size
    side = max(w, h)
    square = Image.new("L", (side, side), 0)
    square.paste(glyph, ((side - w) // 2, (side - h) // 2))
    v = np.asarray(square.resize((resolution, resolution), Image.BILINEAR), dtype=np.float64).ravel()
    v = v - v.mean()
    norm = np.linalg.norm(v)
    return v / norm if norm > 0 else None


def _ink(char: str) -> float:
    """Area of the glyph in DejaVu Sans at 40 px, reduced to 24 x 24 (in pixels of full intensity)."""
    from PIL import Image

    canvas = Image.new("L", (64, 64), 0)
    _draw_centred(canvas, char, _font("DejaVuSans.ttf", 40))
    return float(np.asarray(canvas.resize((24, 24), Image.BILINEAR), dtype=np.float64).sum() / 255)


def has_diacritic(char: str) -> bool:
    """A precomposed letter: a base letter plus combining marks (its canonical decomposition)."""
    return len(unicodedata.normalize("NFD", char)) > 1


def _candidates() -> dict[str, list[str]]:
    """Letters, numbers and symbols with a visible glyph in DejaVu Sans and in at least MIN_FONTS fonts, grouped by
    the first word of their Unicode name (the script or symbol family), in code-point order."""
    cov = _coverage()
    groups: dict[str, list[str]] = {}
    for cp in sorted(set().union(*cov.values())):
        char = chr(cp)
        if unicodedata.category(char)[0] not in "LNS" or cp not in cov["DejaVuSans.ttf"]:
            continue
        if sum(cp in c for c in cov.values()) < MIN_FONTS or _ink(char) < 15:
            continue
        groups.setdefault(unicodedata.name(char, "?").split()[0], []).append(char)
    return groups


def derive_class_lists() -> tuple[str, str, str]:
    """(source, target train, target test) characters, recomputed from the fonts as the module docstring says."""
    groups = _candidates()

    def distinct(chars: list[str], resolution: int, threshold: float, against: list[np.ndarray]) -> list[str]:
        kept = []
        for char in chars:
            v = _shape_vector(char, resolution)
            if v is None or (against and max(float(v @ u) for u in against) > threshold):
                continue
            against.append(v)
            kept.append(char)
        return kept

    # No character with a mark in the source, whatever its script: telling marks apart is the target's skill.
    source_pool = [c for script in SOURCE_SCRIPTS for c in groups.get(script, []) if not has_diacritic(c)]
    source = distinct(source_pool, 20, SOURCE_DEDUP, [])
    seen = [v for v in (_shape_vector(c, 32) for c in source) if v is not None]
    target = distinct([c for c in groups.get("LATIN", []) if has_diacritic(c)], 32, TARGET_DEDUP, seen)
    if len(target) < TARGET_CLASSES:
        raise RuntimeError(f"only {len(target)} distinct target characters in these fonts, {TARGET_CLASSES} needed")
    order = np.random.default_rng(_LIST_SEED).permutation(len(target))[:TARGET_CLASSES]
    half = TARGET_CLASSES // 2
    train = sorted(target[i] for i in order[:half])
    test = sorted(target[i] for i in order[half:])
    return "".join(source), "".join(train), "".join(test)


# --- the dataset --------------------------------------------------------------------------------------------------
SOURCE_TEST_IMAGES = 4  # held-out images per source class in the source task's test split
_HELD_OUT = 1_000_000  # image numbers of held-out source images start here (never overlap the training ones)


def split_spec(cfg, split: str) -> tuple[str, str, int, tuple[int, ...]]:
    """(chars, task, first label, image numbers) of one split under the ``data.glyphs`` config."""
    if cfg.task == "source":
        chars = SOURCE_CHARS[: cfg.source_classes]
        numbers = (
            range(cfg.source_images_per_class) if split == "train" else range(_HELD_OUT, _HELD_OUT + SOURCE_TEST_IMAGES)
        )
        return chars, "source", 0, tuple(numbers)
    if split == "train":
        return TARGET_TRAIN_CHARS[: cfg.classes], "target", 0, tuple(range(cfg.images_per_class))
    return TARGET_TEST_CHARS[: cfg.classes], "target", len(TARGET_TRAIN_CHARS), tuple(range(cfg.images_per_class))


def validate_glyphs_config(cfg) -> None:
    """Raise ValueError naming the ``data.glyphs.*`` key of the first bad value."""

    def bad(key, value, expectation):
        return ValueError(f"invalid value for config key 'data.glyphs.{key}': {value!r} ({expectation})")

    if cfg.task not in _TASK_IDS:
        raise bad("task", cfg.task, "must be one of source, target")
    limits = {"classes": len(TARGET_TRAIN_CHARS), "source_classes": len(SOURCE_CHARS)}
    for key in ("classes", "images_per_class", "source_classes", "source_images_per_class"):
        value = getattr(cfg, key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 2:
            raise bad(key, value, "must be an integer of at least 2 (retrieval needs two classes and a positive)")
        if key in limits and value > limits[key]:
            raise bad(key, value, f"at most {limits[key]}")


class GlyphsDataset(RetrievalDataset):
    """Items are (uint8 1 x 32 x 32 image, class label, index); see the module docstring."""

    name = "glyphs"
    needs_root = False
    channels = 1
    augmentation = "digits"  # small affine jitter, no flip (a mirrored glyph is another character)

    @classmethod
    def from_config(cls, split, transform, data_cfg) -> GlyphsDataset:
        return cls(split, transform=transform, config=data_cfg.glyphs)

    def __init__(self, split: str, transform=None, *, config):
        super().__init__(split, transform)
        validate_glyphs_config(config)
        chars, task, first, numbers = split_spec(config, split)
        self.chars = chars
        self.images, self.labels = render_split(chars, task, first, numbers, int(config.seed))

    def load(self, index: int) -> torch.Tensor:
        return self.images[index]
