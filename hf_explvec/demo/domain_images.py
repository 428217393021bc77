"""Small image-classification domains built offline from real pixels shipped in PyPI packages.

The offline demo needs domains in which the class evidence sits in *known patches* at varying positions, so that
patch attributions can be checked against the truth. An object image is a background with one object pasted on a
cell-aligned square of the patch grid at a random position: the object decides the class, and the `evidence` column
marks the patches it covers. A scene image is a crop of one photo or texture filling the whole image, with one
distractor object on one cell: the background decides the class, and the evidence is every patch but the
distractor's.

Pixel sources (bundled with the packages; nothing is downloaded, no scikit-image image that needs `pooch` is used):

- scikit-learn `load_digits`: 1,797 handwritten 8×8 digits (objects and distractors);
- colour photos: scikit-learn's `china` and `flower`, scikit-image's `coffee`, `chelsea`, `astronaut`, `rocket`;
- textures: scikit-image's `brick`, `grass`, `gravel`, `hubble_deep_field` (star field) and `immunohistochemistry`
  (stained tissue), used in grey so that colour does not give a texture class away;
- letters (A H K R W) and symbols (@ # & % $): glyphs of the TrueType fonts matplotlib ships, and shapes drawn with
  `PIL.ImageDraw` (filled circle, square, triangle; star, cross, ring, heart, diamond outlines), rendered by
  [`~hf_explvec.demo.glyphs`].

Ink objects (digits, letters, symbols, shapes) are pasted as ink on a dark one-cell plate, visible on any background;
texture tiles are 2×2-cell crops. The registered domains ([`DOMAINS`]), five classes each unless said:

| name                  | class decided by                                        | background              | evidence |
|-----------------------|---------------------------------------------------------|-------------------------|----------|
| `base`                | digit 0-9 or texture tile (15 classes)                  | textures, photos, plain | mixed    |
| `digits_on_textures`  | digit 0-4, white ink                                    | grey brick/grass/gravel | digit    |
| `digits_on_photos`    | digit 5-9, coloured ink                                 | colour photos           | digit    |
| `texture_tiles`       | texture of a 2×2-cell tile (+ a non-evidence digit)     | plain colour            | texture  |
| `pretraining`         | any of the 33 objects, or a photo scene (38 classes)    | textures, photos, plain | mixed    |
| `diverse_source`      | digit 0-4, filled circle/square/triangle, star-field or | textures, photos, plain | object   |
|                       | stained-tissue tile (10 classes), white or coloured ink |                         |          |
| `letters_on_photos`   | letter A H K R W, coloured ink                          | colour photos           | object   |
| `symbols_on_textures` | symbol @ # & % $, white ink                             | grey brick/grass/gravel | object   |
| `outlines_on_plain`   | star, cross, ring, heart or diamond outline, any ink    | plain colour, photos    | object   |
| `photo_scenes`        | the photo the image is cut from: temple, flower, coffee | that photo (+ a         | scene    |
|                       | cup, cat, rocket                                        | distractor object)      |          |
| `texture_scenes`      | the grey texture filling the image (the five textures)  | that texture (+ a       | scene    |
|                       |                                                         | distractor object)      |          |

**Related and unrelated.** An explainability vector changes how the feature extractor lines up the patch tokens
that carry the class evidence with the class embedding, so it can only transfer where the same kind of feature
carries the evidence. `digits_on_textures` and `digits_on_photos` are related: in both the evidence is the stroke
shape of a handwritten digit on a one-cell plate, while the appearance changes (grey textures vs colour photos,
white vs coloured ink, other digits, other prompts). `texture_tiles` is unrelated to both, and built as the reverse
of `digits_on_textures`: the textures that are background there (to be ignored) are the evidence here, and a
handwritten digit, the evidence there, is a distractor here ([`DomainArrays`] gives its cells). An explanation
learnt on digits points at the wrong patch on `texture_tiles`, which the `evidence` mask measures.
[`DEFAULT_TRANSFER`] names these roles; `base` mixes both kinds and gives every model the shared pretrained starting
point that task arithmetic needs.

**The diverse study** ([`DIVERSE_TRANSFER`]) asks whether a vector learnt on many kinds of object transfers to
object families it has never seen. `diverse_source` mixes three families (handwritten digits 0-4, filled shapes,
texture tiles) on every background kind in white or coloured ink. Its related targets each show one family the
source never shows, with the same evidence (one pasted object on a plate): font letters on colour photos, font
symbols on grey textures, outline shapes on plain colour or photos ([`object_family`] names the families; outline
shapes are counted apart from the filled ones, though both are drawn shapes). `digits_on_photos` is a near target:
other classes (digits 5-9) of a family the source shows, by the original generator. The unrelated targets reverse
the roles: the class is the photo or the grey texture the whole image is cut from, and an object of the source's
ink classes (a digit 0-4 or a filled shape) on one cell is the distractor, so an explanation that points at objects
points at the one patch that is not evidence. `pretraining` has every object of every family on every background
kind and, as classes of their own, the five photo scenes without a distractor (a scene image has no plate, an
object image has one), so every class name of every domain of the study is a class it was trained on; the texture
scenes' class names are its texture-tile classes.

**Splits.** Train, validation and test never share source pixels, whatever the seed: the digits are split by index
(70/15/15 of each class, by a permutation fixed in this module; [`digit_split_indices`]), each photo or texture is
cut into three bands (60/20/20 of its longer side), a split cropping only from its own, and glyphs are split by font
file ([`~hf_explvec.demo.glyphs.FONT_SPLITS`]: 15 usable fonts train, 4 validation, 3 test). Drawn shapes have no pixel
source: their splits differ only in random draws. The seed changes only the composition (crops, positions, colours,
sizes, rotations, which digit or font of the split). Labels are balanced to within one image.

**Geometry.** Images are `image_size²` RGB on a `(image_size // patch_size)²` patch grid (row-major): 32/8 (4×4,
M = 16) for the tiny test models, 224/32 (7×7, M = 49) for the ViT-B/32 reference scale. Crops are cut at a fixed
size in source pixels (64-128 for backgrounds, 32-64 for tiles), so 224-pixel images are upsampled, not wider views;
glyphs and shapes are drawn at four times their side and shrunk.
"""

from __future__ import annotations

import functools
import importlib
import logging
import time
import zlib
from dataclasses import dataclass

import numpy as np
from PIL import Image

from .._validation import check_int
from . import glyphs

logger = logging.getLogger(__name__)

SPLITS: tuple[str, ...] = ("train", "validation", "test")
_DIGIT_FRACTIONS = (0.70, 0.15, 0.15)
_BAND_FRACTIONS = (0.60, 0.20, 0.20)
_SPLIT_SEED = 2507_04380  # fixed: which pixels belong to which split never depends on the caller's seed
GENERATOR_VERSION = 1  # part of every dataset fingerprint; bump when the images a seed gives change
_BACKGROUND_CROP = (64, 128)  # side of a background crop in source pixels (clipped to the split's band)
_TILE_CROP = (32, 64)  # side of a texture tile crop in source pixels
_PLATE = 0.35  # a digit's cells are darkened to this fraction of the background before the ink goes on
_DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
PLAIN = "plain"  # the background name of a plain colour (with a little noise), for object domains


# Pixel sources ------------------------------------------------------------------------------------------------------


# Source name → (package, image). Texture names are also the texture class names.
_TEXTURES = {
    "brick wall": ("skimage", "brick"),
    "grass": ("skimage", "grass"),
    "gravel": ("skimage", "gravel"),
    "star field": ("skimage", "hubble_deep_field"),
    "stained tissue": ("skimage", "immunohistochemistry"),
}
_PHOTOS = {
    "china": ("sklearn", 0),
    "flower": ("sklearn", 1),
    **{name: ("skimage", name) for name in ("coffee", "chelsea", "astronaut", "rocket")},
}
# What each photo shows: the class names of the photo scenes.
_PHOTO_WORDS = {
    "china": "temple",
    "flower": "flower",
    "coffee": "coffee cup",
    "chelsea": "cat",
    "astronaut": "astronaut",
    "rocket": "rocket",
}

OBJECT_CLASSES: dict[str, str] = {
    **{f"digit:{digit}": f"digit {word}" for digit, word in enumerate(_DIGIT_WORDS)},
    **{f"letter:{letter}": f"letter {letter}" for letter in glyphs.LETTERS},
    **{f"symbol:{char}": name for char, name in glyphs.SYMBOLS.items()},
    **{f"shape:{shape}": name for shape, name in {**glyphs.FILLED_SHAPES, **glyphs.OUTLINE_SHAPES}.items()},
    **{f"tile:{texture}": texture for texture in _TEXTURES},
}
"""Every object an object domain can show, as `family:item` key → class name. Families: `digit` (handwritten, from
`load_digits`), `letter` and `symbol` (font glyphs), `shape` (drawn), pasted as ink on a dark plate; and `tile` (a
texture crop)."""

SCENE_CLASSES: dict[str, str] = {**{texture: texture for texture in _TEXTURES}, **_PHOTO_WORDS}
"""Every background a scene domain can be classified by: source name → class name."""


def object_family(key: str) -> str:
    r"""
    The family of an object of [`OBJECT_CLASSES`]: `"digit"`, `"letter"`, `"symbol"`, `"filled shape"`,
    `"outline shape"` or `"texture tile"`. A related target shows a family its source never shows.

    Args:
        key (`str`): a key of [`OBJECT_CLASSES`], e.g. `"shape:star"`.

    Returns:
        `str`

    Raises:
        `KeyError`: an unknown key (the message lists the families' key prefixes).
    """
    if key not in OBJECT_CLASSES:
        raise KeyError(f"unknown object {key!r}; objects are digit:0-9, letter:X, symbol:X, shape:NAME, tile:NAME")
    family, item = key.split(":", 1)
    if family == "shape":
        return "filled shape" if item in glyphs.FILLED_SHAPES else "outline shape"
    return {"tile": "texture tile"}.get(family, family)


def _import(module: str):
    """Import the package that ships the pixels, with an install hint when it is missing."""
    try:
        return importlib.import_module(module)
    except ImportError as error:  # pragma: no cover - depends on the environment
        package = "scikit-learn" if module.startswith("sklearn") else "scikit-image"
        raise ImportError(
            f"hf_explvec.demo.domains takes its pixels from {package}: `pip install {package}`"
        ) from error


def _load(package: str, image) -> np.ndarray:
    if package == "sklearn":
        return _import("sklearn.datasets").load_sample_images().images[image]
    return getattr(_import("skimage.data"), image)()


@functools.cache
def _source(name: str) -> np.ndarray:
    """A source image as read-only float32 RGB `(H, W, 3)` in [0, 255]; textures are made grey."""
    if name in _TEXTURES:
        pixels = np.asarray(_load(*_TEXTURES[name]), dtype=np.float32)
        if pixels.ndim == 3:
            pixels = pixels[..., :3] @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
        pixels = np.repeat(pixels[..., None], 3, axis=-1)
    else:
        pixels = np.asarray(_load(*_PHOTOS[name]), dtype=np.float32)[..., :3]
    pixels.setflags(write=False)
    return pixels


def _band(pixels: np.ndarray, split: str) -> np.ndarray:
    """The split's band of a source image: 60/20/20 along its longer side (a view)."""
    axis = 0 if pixels.shape[0] >= pixels.shape[1] else 1
    edges = np.round(np.cumsum((0.0,) + _BAND_FRACTIONS) * pixels.shape[axis]).astype(int)
    start, stop = edges[SPLITS.index(split)], edges[SPLITS.index(split) + 1]
    return pixels[start:stop] if axis == 0 else pixels[:, start:stop]


@functools.cache
def _digits() -> tuple[np.ndarray, np.ndarray]:
    """All 1,797 digits as float32 ink coverage in [0, 1] `(N, 8, 8)`, and their classes `(N,)`."""
    bunch = _import("sklearn.datasets").load_digits()
    return (np.asarray(bunch.images, dtype=np.float32) / 16.0).clip(0.0, 1.0), bunch.target.astype(np.int64)


@functools.cache
def _digit_splits() -> tuple[np.ndarray, ...]:
    _, targets = _digits()
    rng = np.random.default_rng(_SPLIT_SEED)
    parts: list[list[np.ndarray]] = [[], [], []]
    for digit in range(10):
        members = rng.permutation(np.flatnonzero(targets == digit))
        edges = np.round(np.cumsum((0.0,) + _DIGIT_FRACTIONS) * len(members)).astype(int)
        for index in range(3):
            parts[index].append(members[edges[index] : edges[index + 1]])
    return tuple(np.sort(np.concatenate(part)) for part in parts)


def digit_split_indices(split: str) -> np.ndarray:
    r"""
    The indices into scikit-learn's `load_digits()` that a split draws from; the three splits partition all 1,797.

    Stratified by digit class (70% / 15% / 15% of each) with a permutation fixed in this module: the same for every
    seed and every domain.

    Args:
        split (`str`): `"train"`, `"validation"` or `"test"`.

    Returns:
        `np.ndarray`: sorted int64 indices, shape `(n_split,)` (a copy).
    """
    _check_split(split)
    return _digit_splits()[SPLITS.index(split)].copy()


# Domain specifications and argument checks --------------------------------------------------------------------------


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


@dataclass(frozen=True)
class DomainSpec:
    r"""
    What a domain's images look like and what decides their class.

    A domain is built by one of two generators. The original one (`base`, `digits_on_*`, `texture_tiles`) has
    `digits` then `textures` as classes: a digit image is a crop of one of `backgrounds` with the digit on a darkened
    `digit_cells × digit_cells` plate; a texture image is a plain colour with a `texture_cells × texture_cells` tile of
    the texture and, when `distractor`, a random digit of the split on a one-cell plate elsewhere (never evidence).
    The object generator (every other domain) has `objects` then `scenes` as classes: an object image is a crop of one
    of `backgrounds` (or a plain colour) with the object pasted on a cell-aligned square (ink objects on a dark
    `digit_cells` plate, texture tiles as `texture_cells` crops on a background other than their own texture); a
    scene image is a crop of the scene's source filling the whole image and, when `distractor`, one ink object of
    `distractors` on a one-cell plate: its evidence is every patch but the distractor's.

    Args:
        name (`str`): registry key.
        description (`str`): one line for cards and logs.
        class_names (`tuple[str, ...]`): one per class, in label order, to fill the `templates`
            (`"digit zero"` → `"a photo of the digit zero."`).
        templates (`tuple[str, ...]`): CLIP prompt templates with one `{}`, for `SelfExplainingCLIPVision.from_clip`.
        evidence_kind (`str`): `"digit"`, `"texture"`, `"mixed"` (the original generator), `"object"` (a pasted object
            decides the class) or `"scene"` (the background does); domains of the same kind are related.
        digits (`tuple[int, ...]`, defaults to `()`): digit classes (original generator).
        textures (`tuple[str, ...]`, defaults to `()`): texture classes (names of the texture sources; original).
        backgrounds (`tuple[str, ...]`, defaults to `()`): photo or texture sources behind the digits or objects, and
            for object domains also `"plain"` (a plain colour).
        ink (`str`, defaults to `"white"`): `"white"`, `"colour"` (a saturated random hue) or `"any"` (either).
        digit_cells (`int`, defaults to 1): side in grid cells of an ink object (digit, letter, symbol or shape).
        texture_cells (`int`, defaults to 2): side in grid cells of a texture tile.
        distractor (`bool`, defaults to `False`): add a non-evidence object to texture images (original generator,
            a digit) or to scene images (object generator, one of `distractors`).
        objects (`tuple[str, ...]`, defaults to `()`): object classes, keys of [`OBJECT_CLASSES`] (object generator).
        scenes (`tuple[str, ...]`, defaults to `()`): scene classes, keys of [`SCENE_CLASSES`] (object generator).
        distractors (`tuple[str, ...]`, defaults to `()`): the ink objects (keys of [`OBJECT_CLASSES`], no tiles) a
            scene's distractor is drawn from.

    Raises:
        `ValueError`: a field outside its allowed values, a class-name count that does not match the classes, digit
            or object classes without backgrounds, classes of both generators, or scenes with a distractor but no
            `distractors`.
    """

    name: str
    description: str
    class_names: tuple[str, ...]
    templates: tuple[str, ...]
    evidence_kind: str
    digits: tuple[int, ...] = ()
    textures: tuple[str, ...] = ()
    backgrounds: tuple[str, ...] = ()
    ink: str = "white"
    digit_cells: int = 1
    texture_cells: int = 2
    distractor: bool = False
    objects: tuple[str, ...] = ()
    scenes: tuple[str, ...] = ()
    distractors: tuple[str, ...] = ()

    def __post_init__(self):
        count = len(self.digits) + len(self.textures) + len(self.objects) + len(self.scenes)
        if not self.class_names or len(self.class_names) != count:
            raise ValueError(
                f"domain {self.name!r}: expected one class name per digit, texture, object and scene "
                f"({len(self.digits)} + {len(self.textures)} + {len(self.objects)} + {len(self.scenes)}), "
                f"got {len(self.class_names)}"
            )
        if (self.digits or self.textures) and (self.objects or self.scenes):
            raise ValueError(
                f"domain {self.name!r}: classes are either digits/textures or objects/scenes, not both "
                f"(digits={self.digits}, textures={self.textures}, objects={self.objects}, scenes={self.scenes})"
            )
        ink_objects = tuple(key for key in OBJECT_CLASSES if not key.startswith("tile:"))
        backgrounds = (*_TEXTURES, *_PHOTOS, *((PLAIN,) if self.uses_objects else ()))
        allowed = {
            "digits": (self.digits, range(10)),
            "textures": (self.textures, tuple(_TEXTURES)),
            "objects": (self.objects, tuple(OBJECT_CLASSES)),
            "scenes": (self.scenes, tuple(SCENE_CLASSES)),
            "distractors": (self.distractors, ink_objects),
            "backgrounds": (self.backgrounds, backgrounds),
            "ink": ((self.ink,), ("white", "colour", "any")),
            "evidence_kind": ((self.evidence_kind,), ("digit", "texture", "mixed", "object", "scene")),
        }
        for field, (values, options) in allowed.items():
            bad = [value for value in values if value not in options]
            if bad:
                raise ValueError(f"domain {self.name!r}: {field} must be from {list(options)}, got {bad}")
        if self.digits and not self.backgrounds:
            raise ValueError(f"domain {self.name!r}: digit classes need at least one background, got none")
        if self.objects and not self.backgrounds:
            raise ValueError(f"domain {self.name!r}: object classes need at least one background, got none")
        tiles = [key[len("tile:") :] for key in self.objects if key.startswith("tile:")]
        if any(set(self.backgrounds) <= {tile} for tile in tiles):
            raise ValueError(f"domain {self.name!r}: a texture tile needs a background other than its own texture")
        if self.scenes and self.distractor and not self.distractors:
            raise ValueError(f"domain {self.name!r}: scenes with a distractor need distractors, got none")
        check_int("digit_cells", self.digit_cells, 1)
        check_int("texture_cells", self.texture_cells, 1)

    @property
    def uses_objects(self) -> bool:
        """Whether the object generator builds this domain (its classes are `objects` and `scenes`)."""
        return bool(self.objects or self.scenes)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def min_grid(self) -> int:
        """The smallest grid side the objects fit in (a tile and its distractor never overlap)."""
        if self.uses_objects:
            sides = [1]
            sides += [self.texture_cells if key.startswith("tile:") else self.digit_cells for key in self.objects]
            sides += [2] if self.scenes and self.distractor else []  # a scene keeps at least one evidence patch
            return max(sides)
        digit = self.digit_cells if self.digits else 1
        return max(digit, (self.texture_cells + int(self.distractor)) if self.textures else 1)


_DIGIT_TEMPLATES = ("a photo of the {}.", "the handwritten {}.")
_OBJECT_TEMPLATES = ("a photo of {}.", "an image showing {}.")
_GREY_BACKGROUNDS = ("brick wall", "grass", "gravel")
_ALL_BACKGROUNDS = (*_GREY_BACKGROUNDS, *_PHOTOS, PLAIN)
_PHOTO_SCENES = ("china", "flower", "coffee", "chelsea", "rocket")
_DIVERSE_INK = ("digit:0", "digit:1", "digit:2", "digit:3", "digit:4", "shape:circle", "shape:square", "shape:triangle")
_DIVERSE_OBJECTS = (*_DIVERSE_INK, "tile:star field", "tile:stained tissue")


def _object_domain(
    name: str,
    description: str,
    objects: tuple[str, ...],
    *,
    scenes: tuple[str, ...] = (),
    evidence_kind: str = "object",
    templates: tuple[str, ...] = _OBJECT_TEMPLATES,
    **fields,
) -> DomainSpec:
    """A [`DomainSpec`] of the object generator, its class names read from the object and scene registries."""
    class_names = tuple(OBJECT_CLASSES[key] for key in objects) + tuple(SCENE_CLASSES[key] for key in scenes)
    return DomainSpec(
        name,
        description,
        class_names=class_names,
        templates=templates,
        evidence_kind=evidence_kind,
        objects=objects,
        scenes=scenes,
        **fields,
    )


DOMAINS: dict[str, DomainSpec] = {
    spec.name: spec
    for spec in (
        DomainSpec(
            "base",
            "pretraining mixture: digits 0-9 on any background in any ink, and the five texture tiles",
            class_names=tuple(f"digit {word}" for word in _DIGIT_WORDS) + tuple(_TEXTURES),
            templates=("a photo of {}.",),
            evidence_kind="mixed",
            digits=tuple(range(10)),
            textures=tuple(_TEXTURES),
            backgrounds=("brick wall", "grass", "gravel", *_PHOTOS),
            ink="any",
        ),
        DomainSpec(
            "digits_on_textures",
            "digits 0-4 in white ink on a dark one-cell plate over grey brick, grass or gravel",
            class_names=tuple(f"digit {word}" for word in _DIGIT_WORDS[:5]),
            templates=_DIGIT_TEMPLATES,
            evidence_kind="digit",
            digits=(0, 1, 2, 3, 4),
            backgrounds=("brick wall", "grass", "gravel"),
        ),
        DomainSpec(
            "digits_on_photos",
            "digits 5-9 in coloured ink on a dark one-cell plate over colour photos",
            class_names=tuple(f"digit {word}" for word in _DIGIT_WORDS[5:]),
            templates=_DIGIT_TEMPLATES,
            evidence_kind="digit",
            digits=(5, 6, 7, 8, 9),
            backgrounds=tuple(_PHOTOS),
            ink="colour",
        ),
        DomainSpec(
            "texture_tiles",
            "the texture of a 2x2-cell tile on a plain background; a digit elsewhere is a distractor",
            class_names=tuple(_TEXTURES),
            templates=("a photo of {}.", "a patch of {} texture."),
            evidence_kind="texture",
            textures=tuple(_TEXTURES),
            distractor=True,
        ),
        _object_domain(
            "pretraining",
            "pretraining mixture: every object of every family on grey textures, colour photos or plain colour, "
            "and five photo scenes",
            tuple(OBJECT_CLASSES),
            scenes=_PHOTO_SCENES,
            evidence_kind="mixed",
            templates=("a photo of {}.",),
            backgrounds=_ALL_BACKGROUNDS,
            ink="any",
        ),
        _object_domain(
            "diverse_source",
            "digits 0-4, filled circle/square/triangle on a dark one-cell plate, or a star-field or stained-tissue "
            "tile, over grey textures, colour photos or plain colour",
            _DIVERSE_OBJECTS,
            backgrounds=_ALL_BACKGROUNDS,
            ink="any",
        ),
        _object_domain(
            "letters_on_photos",
            "letters A H K R W in coloured ink on a dark one-cell plate over colour photos",
            tuple(f"letter:{letter}" for letter in glyphs.LETTERS),
            backgrounds=tuple(_PHOTOS),
            ink="colour",
        ),
        _object_domain(
            "symbols_on_textures",
            "the symbols @ # & % $ in white ink on a dark one-cell plate over grey brick, grass or gravel",
            tuple(f"symbol:{char}" for char in glyphs.SYMBOLS),
            backgrounds=_GREY_BACKGROUNDS,
            ink="white",
        ),
        _object_domain(
            "outlines_on_plain",
            "star, cross, ring, heart and diamond outlines on a dark one-cell plate over plain colour or photos",
            tuple(f"shape:{shape}" for shape in glyphs.OUTLINE_SHAPES),
            backgrounds=(PLAIN, *_PHOTOS),
            ink="any",
        ),
        _object_domain(
            "photo_scenes",
            "which colour photo the whole image is cut from; a source object on one cell is a distractor",
            (),
            scenes=_PHOTO_SCENES,
            evidence_kind="scene",
            templates=("a photo of a {}.", "a close-up photo of a {}."),
            distractor=True,
            distractors=_DIVERSE_INK,
            ink="any",
        ),
        _object_domain(
            "texture_scenes",
            "which grey texture fills the whole image; a source object on one cell is a distractor",
            (),
            scenes=tuple(_TEXTURES),
            evidence_kind="scene",
            templates=("a photo of {}.", "a patch of {} texture."),
            distractor=True,
            distractors=_DIVERSE_INK,
            ink="any",
        ),
    )
}
"""The registered domains by name (the module docstring says what each is and why)."""

DEFAULT_TRANSFER: dict[str, str] = {
    "base": "base",
    "source": "digits_on_textures",
    "related": "digits_on_photos",
    "unrelated": "texture_tiles",
}
"""The demo's roles: pretrain on `base`, take the vector on `source`, apply it on `related` and `unrelated`."""

DIVERSE_TRANSFER: dict[str, str | tuple[str, ...]] = {
    "base": "pretraining",
    "source": "diverse_source",
    "related": ("letters_on_photos", "symbols_on_textures", "outlines_on_plain"),
    "near": ("digits_on_photos",),
    "unrelated": ("photo_scenes", "texture_scenes"),
}
"""The diverse transfer study: pretrain on `pretraining`, take the vector on the many-family `diverse_source`, apply
it on `related` targets (object families the source never shows), the `near` target (other classes of a family it
shows) and `unrelated` targets (the background is the evidence, an object of the source a distractor)."""


def get_domain(name: str) -> DomainSpec:
    """The [`DomainSpec`] registered as `name`; a `KeyError` lists the known names."""
    if not isinstance(name, str):
        raise TypeError(f"domain name must be a str, got {type(name).__name__}")
    if name not in DOMAINS:
        raise KeyError(f"unknown domain {name!r}; known domains: {', '.join(sorted(DOMAINS))}")
    return DOMAINS[name]


def _check_geometry(spec: DomainSpec, image_size, patch_size) -> int:
    image_size = check_int("image_size", image_size, 1)
    patch_size = check_int("patch_size", patch_size, 1)
    if image_size % patch_size:
        raise ValueError(
            f"image_size must be a multiple of patch_size, got image_size={image_size}, patch_size={patch_size}"
        )
    grid = image_size // patch_size
    if grid < spec.min_grid:
        raise ValueError(
            f"domain {spec.name!r} needs a patch grid of at least {spec.min_grid}x{spec.min_grid}, got "
            f"{grid}x{grid} (image_size={image_size}, patch_size={patch_size})"
        )
    return grid


# Composition --------------------------------------------------------------------------------------------------------


@dataclass
class DomainArrays:
    r"""
    A domain split as numpy arrays (what [`build_domain`] wraps into a `datasets.Dataset`). `M` is the number of
    patches, `(image_size // patch_size) ** 2`, in row-major order.

    Args:
        images (`np.ndarray` of shape `(N, image_size, image_size, 3)`, uint8): RGB images.
        labels (`np.ndarray` of shape `(N,)`, int64): class indices into `class_names`.
        evidence (`np.ndarray` of shape `(N, M)`, bool): the patches that decide the class: those the class object
            covers, or for a scene every patch but the distractor's.
        distractor (`np.ndarray` of shape `(N, M)`, bool): the patches of a non-evidence object (`texture_tiles`,
            scene domains).
        digit_indices (`np.ndarray` of shape `(N,)`, int64): the `load_digits()` index of the digit drawn (object or
            distractor), -1 where there is none.
        class_names (`tuple[str, ...]`): the domain's class names.
        object_names (`np.ndarray` of shape `(N,)`, str): the [`OBJECT_CLASSES`] key of the class object
            (`"digit:3"`, `"letter:A"`, `"tile:grass"`), `""` for a scene.
        distractor_names (`np.ndarray` of shape `(N,)`, str): the key of the distractor, `""` where there is none.
        fonts (`np.ndarray` of shape `(N,)`, str): the font file of a glyph (object or distractor), `""` otherwise.
        backgrounds (`np.ndarray` of shape `(N,)`, str): the source the background is cut from, `"plain"` for a
            plain colour.
    """

    images: np.ndarray
    labels: np.ndarray
    evidence: np.ndarray
    distractor: np.ndarray
    digit_indices: np.ndarray
    class_names: tuple[str, ...]
    object_names: np.ndarray
    distractor_names: np.ndarray
    fonts: np.ndarray
    backgrounds: np.ndarray


def _resize(pixels: np.ndarray, size: int) -> np.ndarray:
    """Resize float `(h, w)` or `(h, w, 3)` to `(size, size[, 3])` float32 (PIL bilinear, antialiased shrinking)."""
    if pixels.ndim == 3:
        return np.stack([_resize(pixels[..., channel], size) for channel in range(3)], axis=-1)
    image = Image.fromarray(np.ascontiguousarray(pixels, dtype=np.float32))
    return np.asarray(image.resize((size, size), Image.Resampling.BILINEAR))


@functools.cache
def _digit_alphas(size: int) -> np.ndarray:
    """Every digit's ink coverage resized to `(size, size)`: read-only `(1797, size, size)`, cached per size."""
    images, _ = _digits()
    alphas = (images if size == 8 else np.stack([_resize(image, size) for image in images])).clip(0.0, 1.0)
    alphas.setflags(write=False)
    return alphas


def _crop(rng: np.random.Generator, source: str, split: str, sides: tuple[int, int], size: int) -> np.ndarray:
    """A random square crop (side in `sides`, clipped to the band) of the split's band of a source, resized."""
    band = _band(_source(source), split)
    high = min(sides[1], *band.shape[:2])
    side = int(rng.integers(min(sides[0], high), high + 1))
    top = int(rng.integers(0, band.shape[0] - side + 1))
    left = int(rng.integers(0, band.shape[1] - side + 1))
    return _resize(band[top : top + side, left : left + side], size)


def _ink(rng: np.random.Generator, ink: str) -> np.ndarray:
    if ink == "any":
        ink = "white" if rng.random() < 0.5 else "colour"
    if ink == "white":
        return np.full(3, rng.uniform(215.0, 255.0), dtype=np.float32)
    # A saturated hue: one channel full, one low, one anywhere between.
    return rng.permutation(np.array([255.0, rng.uniform(0.0, 60.0), rng.uniform(0.0, 255.0)], dtype=np.float32))


def _place(rng: np.random.Generator, grid: int, cells: int, taken: np.ndarray) -> tuple[int, int]:
    """A random top-left cell for a `cells × cells` object clear of the `taken` `(grid, grid)` cells."""
    free = [
        (row, column)
        for row in range(grid - cells + 1)
        for column in range(grid - cells + 1)
        if not taken[row : row + cells, column : column + cells].any()
    ]
    return free[int(rng.integers(len(free)))]


def _paste_digit(canvas: np.ndarray, alpha: np.ndarray, top: int, left: int, ink: np.ndarray) -> None:
    """Darken the digit's square to a plate, then blend the ink in by the digit's coverage `alpha` (in place)."""
    region = canvas[top : top + alpha.shape[0], left : left + alpha.shape[1]]
    region *= _PLATE
    region += (ink - region) * alpha[..., None]


def _background(rng: np.random.Generator, background: str, split: str, size: int) -> np.ndarray:
    """A background canvas: a plain colour with a little noise, or a crop of the split's band of a source."""
    if background == PLAIN:
        colour = rng.uniform(70.0, 190.0, size=3).astype(np.float32)
        return colour + rng.normal(0.0, 3.0, size=(size, size, 3)).astype(np.float32)
    return _crop(rng, background, split, _BACKGROUND_CROP, size)


def _ink_object(
    rng: np.random.Generator, key: str, split: str, side: int, by_digit: dict[int, np.ndarray]
) -> tuple[np.ndarray, int, str]:
    """An ink object's coverage `(side, side)`, its `load_digits()` index (-1 if not a digit) and font (or `""`)."""
    family, item = key.split(":", 1)
    if family == "digit":
        candidates = by_digit[int(item)]
        index = int(candidates[rng.integers(len(candidates))])
        return _digit_alphas(side)[index], index, ""
    if family in ("letter", "symbol"):
        fonts = glyphs.glyph_fonts(split, item)
        font = fonts[int(rng.integers(len(fonts)))]
        return glyphs.glyph_alpha(rng, item, font, side), -1, font
    return glyphs.shape_alpha(rng, item, side), -1, ""


def _empty_arrays(num_examples: int, grid: int, patch_size: int):
    """The arrays a composer fills: images, evidence and distractor grids, digit indices (-1: none) and the names."""
    image_size = grid * patch_size
    images = np.empty((num_examples, image_size, image_size, 3), dtype=np.uint8)
    evidence = np.zeros((num_examples, grid, grid), dtype=bool)
    distractor = np.zeros((num_examples, grid, grid), dtype=bool)
    digit_indices = np.full(num_examples, -1, dtype=np.int64)
    names = {key: [""] * num_examples for key in ("object_names", "distractor_names", "fonts", "backgrounds")}
    return images, evidence, distractor, digit_indices, names


def _compose_objects(
    spec: DomainSpec,
    split: str,
    labels: np.ndarray,
    rng: np.random.Generator,
    grid: int,
    patch_size: int,
    draw_objects: bool,
) -> DomainArrays:
    """The object generator: objects of any family on any background, and scenes with a distractor object."""
    num_examples, image_size = len(labels), grid * patch_size
    _, targets = _digits()
    pool = digit_split_indices(split)
    by_digit = {digit: pool[targets[pool] == digit] for digit in range(10)}

    images, evidence, distractor, digit_indices, names = _empty_arrays(num_examples, grid, patch_size)
    for i, label in enumerate(labels):
        if label < len(spec.objects):
            key = spec.objects[label]
            family, item = key.split(":", 1)
            # A texture tile never lies on its own texture (it would be invisible).
            choices = [name for name in spec.backgrounds if not (family == "tile" and name == item)]
            background = choices[int(rng.integers(len(choices)))]
            canvas = _background(rng, background, split, image_size)
            cells = spec.texture_cells if family == "tile" else spec.digit_cells
            row, column = _place(rng, grid, cells, evidence[i])
            evidence[i, row : row + cells, column : column + cells] = True
            top, left, side = row * patch_size, column * patch_size, cells * patch_size
            names["object_names"][i] = key
            if family == "tile":
                tile = _crop(rng, item, split, _TILE_CROP, side) * rng.uniform(0.85, 1.15)
                if draw_objects:
                    canvas[top : top + side, left : left + side] = tile
            else:
                alpha, digit_indices[i], names["fonts"][i] = _ink_object(rng, key, split, side, by_digit)
                ink = _ink(rng, spec.ink)
                if draw_objects:
                    _paste_digit(canvas, alpha, top, left, ink)
        else:
            background = spec.scenes[label - len(spec.objects)]
            canvas = _crop(rng, background, split, _BACKGROUND_CROP, image_size)
            evidence[i] = True
            if spec.distractor:
                key = spec.distractors[int(rng.integers(len(spec.distractors)))]
                row, column = _place(rng, grid, 1, distractor[i])
                distractor[i, row, column] = True
                evidence[i, row, column] = False
                names["distractor_names"][i] = key
                alpha, digit_indices[i], names["fonts"][i] = _ink_object(rng, key, split, patch_size, by_digit)
                ink = _ink(rng, spec.ink)
                if draw_objects:
                    _paste_digit(canvas, alpha, row * patch_size, column * patch_size, ink)
        names["backgrounds"][i] = background
        images[i] = np.clip(np.rint(canvas), 0, 255).astype(np.uint8)

    flat = (num_examples, grid * grid)
    return DomainArrays(
        images,
        labels,
        evidence.reshape(flat),
        distractor.reshape(flat),
        digit_indices,
        spec.class_names,
        **{key: np.asarray(values, dtype=str) for key, values in names.items()},
    )


def generate_domain(
    name: str,
    split: str,
    num_examples: int,
    *,
    image_size: int = 32,
    patch_size: int = 8,
    seed: int = 0,
    draw_objects: bool = True,
) -> DomainArrays:
    r"""
    Compose `num_examples` images of a domain split as numpy arrays (no `datasets` involved).

    Args:
        name (`str`): a key of [`DOMAINS`].
        split (`str`): `"train"`, `"validation"` or `"test"`; splits never share source pixels.
        num_examples (`int`): number of images (>= 0); labels are balanced to within one image.
        image_size (`int`, defaults to 32): image side in pixels, a multiple of `patch_size`.
        patch_size (`int`, defaults to 8): the ViT patch side; objects are aligned to its grid.
        seed (`int`, defaults to 0): composition seed (>= 0); the same arguments give the same arrays.
        draw_objects (`bool`, defaults to `True`): `False` leaves objects and distractors out with every random draw
            unchanged, giving the backgrounds the images were composed on (for checks and baselines).

    Returns:
        [`DomainArrays`]

    Raises:
        `KeyError`: unknown domain (the message lists the known ones).
        `ValueError`: unknown split, negative size or seed, `image_size` not a multiple of `patch_size`, or a grid
            too small for the domain's objects.
        `TypeError`: a size or seed that is not an int.
    """
    spec = get_domain(name)
    _check_split(split)
    num_examples = check_int("num_examples", num_examples, 0)
    seed = check_int("seed", seed, 0)
    grid = _check_geometry(spec, image_size, patch_size)
    start = time.perf_counter()

    rng = np.random.default_rng([seed, zlib.crc32(spec.name.encode()), SPLITS.index(split)])
    labels = rng.permutation(np.arange(num_examples) % spec.num_classes).astype(np.int64)
    if spec.uses_objects:
        arrays = _compose_objects(spec, split, labels, rng, grid, patch_size, draw_objects)
    else:
        arrays = _compose_original(spec, split, labels, rng, grid, patch_size, draw_objects)
    logger.debug(
        "composed %d images of %s/%s (%d px, patch %d) in %.2fs",
        num_examples,
        name,
        split,
        image_size,
        patch_size,
        time.perf_counter() - start,
    )
    return arrays


def _compose_original(
    spec: DomainSpec,
    split: str,
    labels: np.ndarray,
    rng: np.random.Generator,
    grid: int,
    patch_size: int,
    draw_objects: bool,
) -> DomainArrays:
    """The original generator (digits and texture tiles): its random stream must not change (bit-identical images)."""
    num_examples, image_size = len(labels), grid * patch_size
    _, targets = _digits()
    pool = digit_split_indices(split)
    by_digit = {digit: pool[targets[pool] == digit] for digit in spec.digits}
    object_alphas = _digit_alphas(spec.digit_cells * patch_size)
    distractor_alphas = _digit_alphas(patch_size)

    images, evidence, distractor, digit_indices, names = _empty_arrays(num_examples, grid, patch_size)
    for i, label in enumerate(labels):
        if label < len(spec.digits):
            candidates = by_digit[spec.digits[label]]
            digit_indices[i] = candidates[rng.integers(len(candidates))]
            background = spec.backgrounds[int(rng.integers(len(spec.backgrounds)))]
            names["object_names"][i], names["backgrounds"][i] = f"digit:{spec.digits[label]}", background
            canvas = _crop(rng, background, split, _BACKGROUND_CROP, image_size)
            row, column = _place(rng, grid, spec.digit_cells, evidence[i])
            evidence[i, row : row + spec.digit_cells, column : column + spec.digit_cells] = True
            ink = _ink(rng, spec.ink)  # drawn even when the object is not, to keep the random stream the same
            if draw_objects:
                _paste_digit(canvas, object_alphas[digit_indices[i]], row * patch_size, column * patch_size, ink)
        else:
            colour = rng.uniform(70.0, 190.0, size=3).astype(np.float32)
            canvas = colour + rng.normal(0.0, 3.0, size=(image_size, image_size, 3)).astype(np.float32)
            side = spec.texture_cells * patch_size
            texture = spec.textures[label - len(spec.digits)]
            names["object_names"][i], names["backgrounds"][i] = f"tile:{texture}", PLAIN
            tile = _crop(rng, texture, split, _TILE_CROP, side) * rng.uniform(0.85, 1.15)
            row, column = _place(rng, grid, spec.texture_cells, evidence[i])
            evidence[i, row : row + spec.texture_cells, column : column + spec.texture_cells] = True
            if draw_objects:
                top, left = row * patch_size, column * patch_size
                canvas[top : top + side, left : left + side] = tile
            if spec.distractor:
                digit_indices[i] = pool[rng.integers(len(pool))]
                names["distractor_names"][i] = f"digit:{targets[digit_indices[i]]}"
                row, column = _place(rng, grid, 1, evidence[i])
                distractor[i, row, column] = True
                ink = _ink(rng, "white")
                if draw_objects:
                    alpha = distractor_alphas[digit_indices[i]]
                    _paste_digit(canvas, alpha, row * patch_size, column * patch_size, ink)
        images[i] = np.clip(np.rint(canvas), 0, 255).astype(np.uint8)

    flat = (num_examples, grid * grid)
    return DomainArrays(
        images,
        labels,
        evidence.reshape(flat),
        distractor.reshape(flat),
        digit_indices,
        spec.class_names,
        **{key: np.asarray(values, dtype=str) for key, values in names.items()},
    )


__all__ = [
    "DEFAULT_TRANSFER",
    "DIVERSE_TRANSFER",
    "DOMAINS",
    "GENERATOR_VERSION",
    "OBJECT_CLASSES",
    "PLAIN",
    "SCENE_CLASSES",
    "SPLITS",
    "DomainArrays",
    "DomainSpec",
    "digit_split_indices",
    "generate_domain",
    "get_domain",
    "object_family",
]
