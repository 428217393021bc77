"""Tests for the object generator's domains (hf_explvec.demo.domain_images) and its renderers (hf_explvec.demo.glyphs):
the pretraining mixture, the diverse source, the related (new object families) and unrelated (scene) targets."""

import dataclasses

import datasets
import numpy as np
import pytest

from hf_explvec.demo import domain_images, glyphs
from hf_explvec.demo.domains import (
    DIVERSE_TRANSFER,
    DOMAINS,
    OBJECT_CLASSES,
    SPLITS,
    DomainSpec,
    build_domain,
    digit_split_indices,
    generate_domain,
    object_family,
)

NEW = [name for name, spec in DOMAINS.items() if spec.uses_objects]
SCENES = ["photo_scenes", "texture_scenes"]
GLYPH_DOMAINS = ["letters_on_photos", "symbols_on_textures"]


def _families(spec: DomainSpec) -> set[str]:
    return {object_family(key) for key in spec.objects}


# ------------------------------------------------------------------------------------------------------------------
# Registry and roles
# ------------------------------------------------------------------------------------------------------------------


def test_new_domains_are_registered_with_the_object_generator():
    expected = {"pretraining", "diverse_source", "letters_on_photos", "symbols_on_textures", "outlines_on_plain"}
    assert set(NEW) == expected | set(SCENES)
    for name in NEW:
        spec = DOMAINS[name]
        assert not spec.digits and not spec.textures
        assert len(set(spec.class_names)) == spec.num_classes
        assert spec.num_classes == 5 or name in ("pretraining", "diverse_source")


def test_diverse_transfer_roles():
    roles = DIVERSE_TRANSFER
    names = [roles["base"], roles["source"], *roles["related"], *roles["near"], *roles["unrelated"]]
    assert set(names) <= set(DOMAINS) and len(names) == len(set(names))
    assert len(roles["related"]) >= 3 and len(roles["unrelated"]) >= 2
    source, base = DOMAINS[roles["source"]], DOMAINS[roles["base"]]
    assert 8 <= source.num_classes <= 10 and source.evidence_kind == "object"
    assert _families(source) == {"digit", "filled shape", "texture tile"}
    assert {"brick wall", "china", "plain"} <= set(source.backgrounds) and source.ink == "any"
    # Related targets: object evidence of families the source never shows, one family each, all different.
    related = [DOMAINS[name] for name in roles["related"]]
    assert all(spec.evidence_kind == "object" and len(_families(spec)) == 1 for spec in related)
    assert not set().union(*map(_families, related)) & _families(source)
    assert len(set().union(*map(_families, related))) == len(related)
    # The near target: other classes of a family the source shows.
    (near,) = (DOMAINS[name] for name in roles["near"])
    assert set(near.digits) and not set(near.class_names) & set(source.class_names)
    # Unrelated targets: the background is the evidence, an object of the source's classes a distractor.
    for name in roles["unrelated"]:
        spec = DOMAINS[name]
        assert spec.evidence_kind == "scene" and spec.scenes and not spec.objects and spec.distractor
        assert set(spec.distractors) <= set(source.objects)
    # The pretraining mixture has every object and every class of every role, so every prompt means something.
    assert set(base.objects) == set(OBJECT_CLASSES) and base.evidence_kind == "mixed"
    for name in names[1:]:
        assert set(DOMAINS[name].class_names) <= set(base.class_names), name
    assert DOMAINS["photo_scenes"].templates[0].format("cat") == "a photo of a cat."


def test_object_family_and_class_names():
    assert object_family("digit:3") == "digit" and object_family("letter:W") == "letter"
    assert object_family("symbol:@") == "symbol" and object_family("shape:circle") == "filled shape"
    assert object_family("shape:ring") == "outline shape" and object_family("tile:grass") == "texture tile"
    with pytest.raises(KeyError, match="unknown object 'shape:blob'"):
        object_family("shape:blob")
    assert OBJECT_CLASSES["symbol:&"] == "ampersand" and OBJECT_CLASSES["shape:star"] == "star outline"
    assert DOMAINS["letters_on_photos"].class_names == ("letter A", "letter H", "letter K", "letter R", "letter W")


_SPEC = {"name": "mine", "description": "d", "templates": ("{}",), "evidence_kind": "object"}


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"class_names": ("a", "b"), "digits": (0,), "objects": ("digit:1",), "backgrounds": ("grass",)}, "not both"),
        ({"class_names": ("a",), "objects": ("shape:blob",), "backgrounds": ("grass",)}, "objects must be from"),
        ({"class_names": ("a",), "scenes": ("marble",)}, "scenes must be from"),
        ({"class_names": ("a",), "objects": ("digit:1",)}, "object classes need at least one background"),
        ({"class_names": ("a",), "objects": ("digit:1",), "backgrounds": ("moon",)}, "backgrounds must be from"),
        ({"class_names": ("a",), "digits": (1,), "backgrounds": ("plain",)}, "backgrounds must be from"),
        ({"class_names": ("a",), "objects": ("tile:grass",), "backgrounds": ("grass",)}, "other than its own"),
        ({"class_names": ("a",), "scenes": ("china",), "distractor": True}, "need distractors"),
        ({"class_names": ("a",), "scenes": ("china",), "distractor": True, "distractors": ("tile:grass",)}, "from"),
        ({"class_names": ("a", "b"), "objects": ("digit:1",), "backgrounds": ("grass",)}, "one class name per"),
        ({"class_names": ("a",), "scenes": ("china",), "evidence_kind": "vibes"}, "evidence_kind must be from"),
    ],
)
def test_domain_spec_rejects_bad_object_fields(fields, message):
    with pytest.raises(ValueError, match=message):
        DomainSpec(**{**_SPEC, **fields})


# ------------------------------------------------------------------------------------------------------------------
# Arrays at both geometries: shapes, balance, evidence, records
# ------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("geometry", [(32, 8), (224, 32)])
@pytest.mark.parametrize("name", NEW)
def test_arrays_balance_evidence_and_records(name, geometry):
    image_size, patch_size = geometry
    spec = DOMAINS[name]
    count = 3 * spec.num_classes + 1 if image_size == 32 else spec.num_classes + 2
    arrays = generate_domain(name, "train", count, image_size=image_size, patch_size=patch_size)
    cells = (image_size // patch_size) ** 2
    assert arrays.images.shape == (count, image_size, image_size, 3) and arrays.images.dtype == np.uint8
    assert arrays.evidence.shape == arrays.distractor.shape == (count, cells)
    counts = np.bincount(arrays.labels, minlength=spec.num_classes)
    assert counts.max() - counts.min() <= 1
    assert not np.any(arrays.evidence & arrays.distractor)
    is_object = arrays.labels < len(spec.objects)
    keys = np.asarray(spec.objects)[arrays.labels[is_object]]
    np.testing.assert_array_equal(arrays.object_names[is_object], keys)
    is_tile = np.char.startswith(arrays.object_names, "tile:")
    assert np.all(arrays.evidence[is_object & is_tile].sum(1) == spec.texture_cells**2)
    assert np.all(arrays.evidence[is_object & ~is_tile].sum(1) == spec.digit_cells**2)
    assert not arrays.distractor[is_object].any()
    # A scene's evidence is every patch but its distractor's (one cell); the pretraining scenes have none.
    scene = ~is_object
    assert np.all(arrays.distractor[scene].sum(1) == int(spec.distractor))
    assert np.all(arrays.evidence[scene].sum(1) == cells - int(spec.distractor))
    assert np.all(arrays.object_names[scene] == "")
    if spec.scenes:
        np.testing.assert_array_equal(
            arrays.backgrounds[scene], np.asarray(spec.scenes)[arrays.labels[scene] - len(spec.objects)]
        )
    assert set(arrays.backgrounds[is_object]) <= set(spec.backgrounds)
    assert not np.any(is_tile & (arrays.backgrounds == np.char.replace(arrays.object_names, "tile:", "")))
    # digit_indices, fonts: set exactly for digits and for glyphs (objects or distractors).
    drawn = np.where(is_object, arrays.object_names, arrays.distractor_names)
    np.testing.assert_array_equal(arrays.digit_indices >= 0, np.char.startswith(drawn, "digit:"))
    is_glyph = np.char.startswith(drawn, "letter:") | np.char.startswith(drawn, "symbol:")
    np.testing.assert_array_equal(arrays.fonts != "", is_glyph)
    _, targets = domain_images._digits()
    digits = arrays.digit_indices >= 0
    assert [f"digit:{digit}" for digit in targets[arrays.digit_indices[digits]]] == drawn[digits].tolist()


def test_objects_appear_at_many_positions():
    arrays = generate_domain("diverse_source", "train", 60)
    assert len({tuple(np.flatnonzero(mask)) for mask in arrays.evidence}) > 8
    arrays = generate_domain("photo_scenes", "train", 60)
    assert len({tuple(np.flatnonzero(mask)) for mask in arrays.distractor}) > 8


@pytest.mark.parametrize("name", NEW)
def test_draw_objects_false_changes_only_the_object_cells(name):
    drawn = generate_domain(name, "test", 30, seed=1)
    bare = generate_domain(name, "test", 30, seed=1, draw_objects=False)
    for field in ("evidence", "distractor", "labels", "object_names", "distractor_names", "fonts", "backgrounds"):
        np.testing.assert_array_equal(getattr(drawn, field), getattr(bare, field))
    changed = np.abs(drawn.images.astype(int) - bare.images.astype(int)).max(-1)
    changed_cells = changed.reshape(30, 4, 8, 4, 8).max((2, 4)).reshape(30, 16) > 0
    is_object = drawn.labels < len(DOMAINS[name].objects)
    # The object (or the distractor) is the only thing drawn: every cell of it changed, nothing else did.
    objects = np.where(is_object[:, None], drawn.evidence, drawn.distractor)
    np.testing.assert_array_equal(changed_cells, objects)


@pytest.mark.parametrize("name", ["diverse_source", "letters_on_photos", "symbols_on_textures", "outlines_on_plain"])
def test_ink_objects_stand_out_from_the_background(name):
    arrays = generate_domain(name, "train", 150)
    ink = arrays.labels < len(DOMAINS[name].objects)
    ink &= ~np.char.startswith(arrays.object_names, "tile:")
    # The brightest channel: a coloured ink is bright in one channel, the plate is dark in all.
    cells = arrays.images.max(-1).reshape(150, 4, 8, 4, 8).transpose(0, 1, 3, 2, 4).reshape(150, 16, 64)
    spread = cells.std(-1)[ink]
    assert spread[arrays.evidence[ink]].mean() > 1.8 * spread[~arrays.evidence[ink]].mean()


# ------------------------------------------------------------------------------------------------------------------
# Determinism and splits
# ------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["diverse_source", "letters_on_photos", "photo_scenes"])
def test_generation_is_deterministic_and_seed_split_dependent(name):
    first = generate_domain(name, "validation", 20, seed=3)
    again = generate_domain(name, "validation", 20, seed=3)
    for field in dataclasses.fields(first):
        np.testing.assert_array_equal(getattr(first, field.name), getattr(again, field.name))
    assert not np.array_equal(first.images, generate_domain(name, "validation", 20, seed=4).images)
    assert not np.array_equal(first.images, generate_domain(name, "test", 20, seed=3).images)


def test_font_splits_are_disjoint_and_glyph_domains_use_only_their_split_fonts():
    files = [set(glyphs.FONT_SPLITS[split]) for split in SPLITS]
    assert not files[0] & files[1] and not files[0] & files[2] and not files[1] & files[2]
    used = {}
    for split in SPLITS:
        fonts = np.concatenate([generate_domain(name, split, 60, seed=2).fonts for name in GLYPH_DOMAINS])
        used[split] = set(fonts)
        assert "" not in used[split] and used[split] <= set(glyphs.FONT_SPLITS[split])
        assert len(used[split]) >= 3  # several fonts per split, not one
        for char in (*glyphs.LETTERS, *glyphs.SYMBOLS):
            assert glyphs.glyph_fonts(split, char)
    assert not used["train"] & used["test"] and not used["train"] & used["validation"]


@pytest.mark.parametrize("name", ["diverse_source", "texture_scenes"])
def test_splits_never_share_a_source_digit(name):
    used = {split: generate_domain(name, split, 120, seed=7).digit_indices for split in SPLITS}
    for split in SPLITS:
        drawn = used[split][used[split] >= 0]
        assert drawn.size and np.isin(drawn, digit_split_indices(split)).all()


def test_backgrounds_and_tiles_come_from_the_splits_own_band(monkeypatch):
    # Replace every source by a constant image per band (train 10, validation 100, test 200): a composed background
    # or tile can then only show its split's value.
    real = domain_images._source

    def banded(name):
        pixels = np.zeros_like(real(name))
        for value, split in zip((10.0, 100.0, 200.0), SPLITS, strict=True):
            domain_images._band(pixels, split)[...] = value
        return pixels

    monkeypatch.setattr(domain_images, "_source", banded)
    for split, value in zip(SPLITS, (10, 100, 200), strict=True):
        for name in (*SCENES, "diverse_source"):
            arrays = generate_domain(name, split, 30, seed=5, draw_objects=name != "diverse_source")
            if name in SCENES:
                assert np.all(arrays.images[~np.repeat(arrays.distractor, 64, 1).reshape(30, 4, 4, 8, 8)
                                            .transpose(0, 1, 3, 2, 4).reshape(30, 32, 32)] == value)  # fmt: skip
            else:  # tiles (evidence of tile images) and non-plain backgrounds (draw_objects=False)
                tiles = np.char.startswith(arrays.object_names, "tile:")
                pictures = arrays.backgrounds != "plain"
                assert np.all(arrays.images[pictures & ~tiles] == value)
                tile_cells = arrays.images[tiles].reshape(-1, 4, 8, 4, 8, 3).transpose(0, 1, 3, 2, 4, 5)
                evidence = arrays.evidence[tiles].reshape(-1, 4, 4)
                assert tiles.any() and np.all(np.round(tile_cells[evidence] / value, 1) >= 0.8)
                assert np.all(np.round(tile_cells[evidence] / value, 1) <= 1.2)


# ------------------------------------------------------------------------------------------------------------------
# Renderers: glyph fonts, shapes
# ------------------------------------------------------------------------------------------------------------------


def test_fonts_without_the_glyph_are_skipped():
    assert glyphs.has_glyph("DejaVuSans.ttf", "A") and glyphs.has_glyph("cmb10.ttf", "$")
    assert not glyphs.has_glyph("DejaVuSansDisplay.ttf", "A")  # not in its cmap
    assert not glyphs.has_glyph("LastResortHE-Regular.ttf", "A")  # a fallback font: a box for every code point
    assert not glyphs.has_glyph("cmti10.ttf", "$")  # a pound sign in the TeX text italic encoding
    assert not glyphs.has_glyph("DejaVuSans.ttf", "\ue000")  # the missing-glyph box itself
    assert "DejaVuSansDisplay.ttf" in glyphs.FONT_SPLITS["train"]
    assert "DejaVuSansDisplay.ttf" not in glyphs.glyph_fonts("train", "A")
    assert "cmti10.ttf" in glyphs.glyph_fonts("validation", "A")
    assert "cmti10.ttf" not in glyphs.glyph_fonts("validation", "$")
    with pytest.raises(ValueError, match="no font of the test split has a glyph"):
        glyphs.glyph_fonts("test", "\ue000")
    with pytest.raises(ValueError, match="has no glyph for 'A'"):
        glyphs.glyph_alpha(np.random.default_rng(0), "A", "LastResortHE-Regular.ttf", 8)


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda: glyphs.has_glyph("DejaVuSans.ttf", "AB"), ValueError, "one character"),
        (lambda: glyphs.has_glyph("Comic.ttf", "A"), FileNotFoundError, "not in matplotlib's font folder"),
        (lambda: glyphs.glyph_fonts("dev", "A"), ValueError, "split must be one of"),
        (lambda: glyphs.shape_alpha(np.random.default_rng(0), "blob", 8), ValueError, "shape must be one of"),
        (lambda: glyphs.shape_alpha(np.random.default_rng(0), "star", 0), ValueError, "side must be >= 1"),
        (lambda: glyphs.shape_alpha(np.random.default_rng(0), "star", True), TypeError, "side must be an int"),
        (lambda: generate_domain("photo_scenes", "train", 2, image_size=8), ValueError, "at least 2x2, got 1x1"),
        (lambda: generate_domain("diverse_source", "train", 2, image_size=8), ValueError, "at least 2x2"),
        (lambda: generate_domain("letters_on_photos", "dev", 2), ValueError, "split must be one of"),
        (lambda: generate_domain("letters_on_photos", "train", -1), ValueError, "num_examples must be >= 0"),
    ],
)
def test_bad_inputs_raise_typed_errors(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_renderers_give_coverage_maps_that_vary_per_draw():
    rng = np.random.default_rng(0)
    for side in (8, 32):
        maps = [glyphs.glyph_alpha(rng, "&", "DejaVuSerif.ttf", side) for _ in range(3)]
        maps += [glyphs.shape_alpha(rng, shape, side) for shape in (*glyphs.FILLED_SHAPES, *glyphs.OUTLINE_SHAPES)]
        for alpha in maps:
            assert alpha.shape == (side, side) and alpha.dtype == np.float32
            assert alpha.min() >= 0.0 and alpha.max() <= 1.0 and alpha.max() > (0.9 if side == 32 else 0.6)
            border = np.concatenate([alpha[0], alpha[-1], alpha[:, 0], alpha[:, -1]])
            assert border.mean() < alpha[side // 4 : -side // 4, side // 4 : -side // 4].mean()  # centred in its cell
        assert not np.array_equal(maps[0], maps[1])
    # Filled shapes cover more of their cell than outlines of the same size.
    filled = np.mean([glyphs.shape_alpha(rng, "circle", 32).mean() for _ in range(20)])
    ring = np.mean([glyphs.shape_alpha(rng, "ring", 32).mean() for _ in range(20)])
    assert filled > 1.3 * ring


def test_build_domain_of_a_new_domain():
    ds = build_domain("symbols_on_textures", "validation", 10, seed=1)
    assert isinstance(ds, datasets.Dataset) and ds.num_rows == 10
    assert ds.features["label"].names == ["at sign", "hash sign", "ampersand", "percent sign", "dollar sign"]
    assert np.all(np.asarray(ds["evidence"]).sum(1) == 1)
    scenes = build_domain("texture_scenes", "test", 5, image_size=224, patch_size=32)
    assert np.all(np.asarray(scenes["evidence"]).sum(1) == 48)
