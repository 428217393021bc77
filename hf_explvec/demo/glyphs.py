"""Object renderers for the image domains: font glyphs (letters, symbols) and drawn shapes, as ink coverage maps.

Every renderer returns a float32 coverage map in [0, 1] of side `side` (the object's cells times the patch size),
like the handwritten digits of [`~hf_explvec.demo.domain_images`]; the domains paste it as ink on a dark plate.
Objects are drawn at four times their side and shrunk with antialiasing, so a one-cell object at patch size 8 is an
8×8 smoothed glyph, as the 8×8 scikit-learn digits are.

**Glyphs** are rendered with PIL `ImageFont.truetype` from the TrueType fonts that matplotlib ships
(`matplotlib/mpl-data/fonts/ttf`), with a random size, offset, rotation (±15°) and stroke weight per image. The
splits never share source pixels: each font file belongs to one split ([`FONT_SPLITS`], fixed in this module):

- train: DejaVu Sans, Sans Bold, Sans Oblique, Sans Mono, Sans Mono Bold, Sans Mono Oblique, Serif, Serif Bold,
  Serif Italic; STIX General, Bold, Italic; Computer Modern roman (cmr10), sans (cmss10), math italic (cmmi10);
  and two fonts that are always skipped (DejaVu Sans Display and Last Resort, listed to keep the check honest);
- validation: DejaVu Sans Bold Oblique, DejaVu Serif Bold Italic, cmtt10 (typewriter), cmti10 (text italic);
- test: DejaVu Sans Mono Bold Oblique, STIX General Bold Italic, cmb10 (bold).

A font is used for a character only if it has the glyph ([`has_glyph`]): the character is in the font's cmap, its
rendering is not empty and differs from that of a private-use code point (the missing-glyph box), and the font is
not a fallback font that maps every code point (Last Resort). The TeX fonts map some ASCII code points to other
glyphs (cmmi10's `@ # & % $` are Greek or math signs, cmti10's `$` is a pound sign); those are listed in this module
and skipped too. Every split has at least one font for every letter and symbol.

**Shapes** are drawn with `PIL.ImageDraw`: filled (circle, square, triangle) and outlines (star, cross, ring, heart,
diamond), with a random size, offset, rotation (±20°) and line width. They have no pixel source: the splits differ
only in their random draws.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

LETTERS: tuple[str, ...] = ("A", "H", "K", "R", "W")
"""The letter classes: capitals whose strokes are unlike the digits'."""

SYMBOLS: dict[str, str] = {
    "@": "at sign",
    "#": "hash sign",
    "&": "ampersand",
    "%": "percent sign",
    "$": "dollar sign",
}
"""The symbol classes: character → class name."""

FILLED_SHAPES: dict[str, str] = {"circle": "filled circle", "square": "filled square", "triangle": "filled triangle"}
"""Filled shapes: shape → class name."""

OUTLINE_SHAPES: dict[str, str] = {
    "star": "star outline",
    "cross": "cross outline",
    "ring": "ring",
    "heart": "heart outline",
    "diamond": "diamond outline",
}
"""Outline shapes: shape → class name."""

_SPLITS = ("train", "validation", "test")
FONT_SPLITS: dict[str, tuple[str, ...]] = {
    "train": (
        "DejaVuSans.ttf",
        "DejaVuSans-Bold.ttf",
        "DejaVuSans-Oblique.ttf",
        "DejaVuSansMono.ttf",
        "DejaVuSansMono-Bold.ttf",
        "DejaVuSansMono-Oblique.ttf",
        "DejaVuSerif.ttf",
        "DejaVuSerif-Bold.ttf",
        "DejaVuSerif-Italic.ttf",
        "STIXGeneral.ttf",
        "STIXGeneralBol.ttf",
        "STIXGeneralItalic.ttf",
        "cmr10.ttf",
        "cmss10.ttf",
        "cmmi10.ttf",
        "DejaVuSansDisplay.ttf",  # has none of the glyphs: always skipped
        "LastResortHE-Regular.ttf",  # a fallback font (a box for every code point): always skipped
    ),
    "validation": ("DejaVuSans-BoldOblique.ttf", "DejaVuSerif-BoldItalic.ttf", "cmtt10.ttf", "cmti10.ttf"),
    "test": ("DejaVuSansMono-BoldOblique.ttf", "STIXGeneralBolIta.ttf", "cmb10.ttf"),
}
"""The font files (in matplotlib's `mpl-data/fonts/ttf`) each split draws its glyphs from; disjoint, fixed."""

# TeX encodings put other glyphs at these ASCII code points (checked by eye on a rendering of every font).
_WRONG_GLYPHS = {"cmmi10.ttf": "@#&%$", "cmti10.ttf": "$"}
_MISSING = "\ue000"  # a private-use code point: what a font draws for it is its missing-glyph box (or nothing)
_MASTER_SIZE = 96  # font size of the cached master renderings
_STROKES = (1, 3, 5)  # stroke widths at the master size: thin fonts stay visible at 8 pixels
_OVERSAMPLE = 4  # objects are drawn at 4× their side, then shrunk


def font_dir() -> Path:
    """The folder of TrueType fonts that matplotlib ships (`mpl-data/fonts/ttf`)."""
    import matplotlib

    return Path(matplotlib.get_data_path()) / "fonts" / "ttf"


def _check_split(split: str) -> None:
    if split not in _SPLITS:
        raise ValueError(f"split must be one of {_SPLITS}, got {split!r}")


@functools.cache
def _font(font_file: str, size: int) -> ImageFont.FreeTypeFont:
    path = font_dir() / font_file
    if not path.is_file():
        raise FileNotFoundError(f"font {font_file!r} is not in matplotlib's font folder {font_dir()}")
    return ImageFont.truetype(str(path), size)


@functools.cache
def _cmap(font_file: str) -> frozenset[int]:
    from fontTools.ttLib import TTFont

    with TTFont(str(font_dir() / font_file), lazy=True) as font:
        return frozenset(font.getBestCmap() or ())


def _mask(font_file: str, char: str, stroke: int = 0) -> tuple[tuple[int, int], bytes]:
    mask = _font(font_file, _MASTER_SIZE).getmask(char, stroke_width=stroke)
    return mask.size, bytes(mask)


@functools.cache
def has_glyph(font_file: str, char: str) -> bool:
    r"""
    Whether a font of matplotlib's font folder draws `char` as its own glyph (see the module docstring).

    Args:
        font_file (`str`): a file name in [`font_dir`], e.g. `"DejaVuSans.ttf"`.
        char (`str`): one character.

    Returns:
        `bool`: `False` for a character missing from the cmap, an empty rendering, a rendering equal to the
        missing-glyph box, a fallback font, or a code point the TeX encodings give another glyph.

    Raises:
        `ValueError`: `char` is not one character.
        `FileNotFoundError`: the font file is not in matplotlib's font folder.
    """
    if not isinstance(char, str) or len(char) != 1:
        raise ValueError(f"char must be one character, got {char!r}")
    _font(font_file, _MASTER_SIZE)  # raises FileNotFoundError for an unknown file
    cmap = _cmap(font_file)
    if ord(char) not in cmap or ord(_MISSING) in cmap or char in _WRONG_GLYPHS.get(font_file, ""):
        return False
    size, pixels = _mask(font_file, char)
    return size[0] * size[1] > 0 and any(pixels) and (size, pixels) != _mask(font_file, _MISSING)


@functools.cache
def glyph_fonts(split: str, char: str) -> tuple[str, ...]:
    r"""
    The font files of `split` ([`FONT_SPLITS`]) that have a glyph for `char` ([`has_glyph`]).

    Args:
        split (`str`): `"train"`, `"validation"` or `"test"`.
        char (`str`): one character.

    Returns:
        `tuple[str, ...]`: in [`FONT_SPLITS`] order.

    Raises:
        `ValueError`: unknown split, or no font of the split has the glyph.
    """
    _check_split(split)
    fonts = tuple(font for font in FONT_SPLITS[split] if has_glyph(font, char))
    if not fonts:
        raise ValueError(f"no font of the {split} split has a glyph for {char!r}: {FONT_SPLITS[split]}")
    return fonts


@functools.cache
def _glyph_master(font_file: str, char: str, stroke: int) -> np.ndarray:
    """The glyph (filled, with a stroke of `stroke` pixels around it) at the master size, cropped to its ink."""
    font = _font(font_file, _MASTER_SIZE)
    canvas = Image.new("L", (3 * _MASTER_SIZE, 3 * _MASTER_SIZE), 0)
    centre = (1.5 * _MASTER_SIZE, 1.5 * _MASTER_SIZE)
    ImageDraw.Draw(canvas).text(centre, char, fill=255, font=font, anchor="mm", stroke_width=stroke, stroke_fill=255)
    coverage = np.asarray(canvas, dtype=np.float32) / 255.0
    rows, columns = np.flatnonzero(coverage.any(1)), np.flatnonzero(coverage.any(0))
    coverage = np.ascontiguousarray(coverage[rows[0] : rows[-1] + 1, columns[0] : columns[-1] + 1])
    coverage.setflags(write=False)
    return coverage


def _check_side(side) -> int:
    if isinstance(side, bool) or not isinstance(side, (int, np.integer)):
        raise TypeError(f"side must be an int, got {type(side).__name__}")
    if side < 1:
        raise ValueError(f"side must be >= 1, got {side}")
    return int(side)


def _finish(canvas: Image.Image, rng: np.random.Generator, side: int, max_angle: float) -> np.ndarray:
    """Rotate a float `F` canvas by a random angle, shrink it to `side` and clip it to [0, 1]."""
    angle = float(rng.uniform(-max_angle, max_angle))
    canvas = canvas.rotate(angle, resample=Image.Resampling.BILINEAR)
    canvas = canvas.resize((side, side), Image.Resampling.BILINEAR, reducing_gap=None)
    return np.asarray(canvas, dtype=np.float32).clip(0.0, 1.0)


def glyph_alpha(rng: np.random.Generator, char: str, font_file: str, side: int) -> np.ndarray:
    r"""
    A glyph as ink coverage: random height (70-85% of the side for its longer extent), offset (±5%), rotation
    (±15°) and stroke weight.

    Args:
        rng (`np.random.Generator`): the random draws (five per call, whatever the arguments).
        char (`str`): one character the font has ([`has_glyph`]).
        font_file (`str`): a file name in matplotlib's font folder.
        side (`int`): output side in pixels (>= 1).

    Returns:
        `np.ndarray`: float32 `(side, side)` in [0, 1].

    Raises:
        `ValueError`: the font lacks the glyph, or `side` < 1.
        `TypeError`: `side` is not an int.
    """
    side = _check_side(side)
    if not has_glyph(font_file, char):
        raise ValueError(f"font {font_file!r} has no glyph for {char!r}")
    stroke = _STROKES[int(rng.integers(len(_STROKES)))]
    extent = float(rng.uniform(0.7, 0.85))
    shift = rng.uniform(-0.05, 0.05, size=2)
    master = _glyph_master(font_file, char, stroke)
    big = _OVERSAMPLE * side
    scale = extent * big / max(master.shape)
    height, width = (max(1, round(length * scale)) for length in master.shape)
    glyph = Image.fromarray(master).resize((width, height), Image.Resampling.BILINEAR, reducing_gap=None)
    canvas = Image.new("F", (big, big), 0.0)
    left = round((big - width) / 2 + shift[0] * big)
    top = round((big - height) / 2 + shift[1] * big)
    canvas.paste(glyph, (left, top))
    return _finish(canvas, rng, side, 15.0)


def _polygon(corners: int, radius: float, phase: float = -math.pi / 2, inner: float | None = None):
    """Vertices of a regular polygon (or a star when `inner` is given) around the origin."""
    points = []
    for index in range(corners * (2 if inner else 1)):
        angle = phase + index * math.pi * (1 if inner else 2) / corners
        length = inner * radius if inner and index % 2 else radius
        points.append((length * math.cos(angle), length * math.sin(angle)))
    return points


def _outline_points(shape: str, radius: float) -> list[tuple[float, float]]:
    if shape == "square":
        return _polygon(4, radius * math.sqrt(2) * 0.8, phase=math.pi / 4)
    if shape == "triangle":
        return [(x, y + radius * 0.15) for x, y in _polygon(3, radius * 1.1)]
    if shape == "star":
        return _polygon(5, radius, inner=0.45)
    if shape == "diamond":
        return [(0.0, -radius), (radius * 0.7, 0.0), (0.0, radius), (-radius * 0.7, 0.0)]
    if shape == "cross":
        arm = radius * 0.35
        quarter = [(arm, -radius), (arm, -arm), (radius, -arm)]
        points = []
        for turn in range(4):  # rotate the quarter outline by 90° four times
            cos, sin = math.cos(turn * math.pi / 2), math.sin(turn * math.pi / 2)
            points += [(x * cos - y * sin, x * sin + y * cos) for x, y in quarter]
        return points
    if shape == "heart":
        steps = np.linspace(0.0, 2.0 * math.pi, 48, endpoint=False)
        x = 16 * np.sin(steps) ** 3
        y = -(13 * np.cos(steps) - 5 * np.cos(2 * steps) - 2 * np.cos(3 * steps) - np.cos(4 * steps))
        return [(float(a) * radius / 16.5, float(b + 2.5) * radius / 16.5) for a, b in zip(x, y, strict=True)]
    raise ValueError(f"unknown shape {shape!r}")


def shape_alpha(rng: np.random.Generator, shape: str, side: int) -> np.ndarray:
    r"""
    A filled or outline shape as ink coverage: random size (radius 30-42% of the side), offset (±5%), rotation
    (±20°) and, for outlines, line width (9-16% of the side).

    Args:
        rng (`np.random.Generator`): the random draws (five per call, whatever the arguments).
        shape (`str`): a key of [`FILLED_SHAPES`] or [`OUTLINE_SHAPES`].
        side (`int`): output side in pixels (>= 1).

    Returns:
        `np.ndarray`: float32 `(side, side)` in [0, 1].

    Raises:
        `ValueError`: unknown shape, or `side` < 1.
        `TypeError`: `side` is not an int.
    """
    side = _check_side(side)
    if shape not in FILLED_SHAPES and shape not in OUTLINE_SHAPES:
        raise ValueError(f"shape must be one of {[*FILLED_SHAPES, *OUTLINE_SHAPES]}, got {shape!r}")
    big = _OVERSAMPLE * side
    radius = float(rng.uniform(0.30, 0.42)) * big
    centre = (0.5 + rng.uniform(-0.05, 0.05, size=2)) * big
    width = max(1, round(float(rng.uniform(0.09, 0.16)) * big))
    canvas = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(canvas)
    box = [centre[0] - radius, centre[1] - radius, centre[0] + radius, centre[1] + radius]
    if shape == "circle":
        draw.ellipse(box, fill=255)
    elif shape == "ring":
        draw.ellipse(box, outline=255, width=width)
    else:
        points = [(x + centre[0], y + centre[1]) for x, y in _outline_points(shape, radius)]
        if shape in FILLED_SHAPES:
            draw.polygon(points, fill=255)
        else:
            draw.line([*points, points[0], points[1]], fill=255, width=width, joint="curve")
    as_float = Image.fromarray(np.asarray(canvas, dtype=np.float32) / 255.0)
    return _finish(as_float, rng, side, 20.0)


__all__ = [
    "FILLED_SHAPES",
    "FONT_SPLITS",
    "LETTERS",
    "OUTLINE_SHAPES",
    "SYMBOLS",
    "font_dir",
    "glyph_alpha",
    "glyph_fonts",
    "has_glyph",
    "shape_alpha",
]
