"""Tests for hf_explvec.demo.domains: the embedded image domains of the offline demo."""

import hashlib
import socket

import datasets
import numpy as np
import pytest
from PIL import Image

from hf_explvec.demo import domain_images
from hf_explvec.demo.domains import (
    DEFAULT_TRANSFER,
    DOMAINS,
    SPLITS,
    DomainSpec,
    build_domain,
    build_domain_dict,
    digit_split_indices,
    generate_domain,
    get_domain,
    save_contact_sheet,
)

# The domains of the original generator (digits and texture tiles); tests/test_domain_families.py covers the
# object generator's domains.
ORIGINAL = [name for name, spec in DOMAINS.items() if not spec.uses_objects]

# ------------------------------------------------------------------------------------------------------------------
# Registry
# ------------------------------------------------------------------------------------------------------------------


def test_registry_roles_and_label_spaces():
    assert set(DEFAULT_TRANSFER.values()) <= set(DOMAINS)
    source, related, unrelated = (DOMAINS[DEFAULT_TRANSFER[role]] for role in ("source", "related", "unrelated"))
    assert source.num_classes == related.num_classes == unrelated.num_classes == 5
    assert source.evidence_kind == related.evidence_kind == "digit"
    assert unrelated.evidence_kind == "texture"
    # The unrelated domain is the reverse of the source: its evidence textures are the source's backgrounds.
    assert set(source.backgrounds) <= set(unrelated.textures)
    base = DOMAINS[DEFAULT_TRANSFER["base"]]
    assert base.num_classes == 15
    for spec in (source, related, unrelated):
        assert set(spec.class_names) <= set(base.class_names)
    for spec in DOMAINS.values():
        assert len(set(spec.class_names)) == spec.num_classes
        assert spec.templates and all(template.count("{}") == 1 for template in spec.templates)
    assert source.templates[0].format(source.class_names[0]) == "a photo of the digit zero."


def test_get_domain_unknown_name_lists_the_known_ones():
    with pytest.raises(KeyError) as error:
        get_domain("digits_on_marble")
    assert "digits_on_marble" in str(error.value)
    for name in DOMAINS:
        assert name in str(error.value)
    with pytest.raises(TypeError, match="str"):
        get_domain(3)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"class_names": ("a", "b")}, "one class name per digit"),
        ({"digits": (0, 11), "class_names": ("a", "b")}, "digits must be from"),
        ({"backgrounds": ("marble",)}, "backgrounds must be from"),
        ({"ink": "glitter"}, "ink must be from"),
        ({"evidence_kind": "vibes"}, "evidence_kind must be from"),
        ({"backgrounds": ()}, "need at least one background"),
        ({"digit_cells": 0}, "digit_cells must be >= 1"),
    ],
)
def test_domain_spec_rejects_bad_fields(changes, message):
    fields = {"name": "mine", "description": "d", "class_names": ("digit zero",), "templates": ("{}",)}
    fields.update({"evidence_kind": "digit", "digits": (0,), "backgrounds": ("grass",), **changes})
    with pytest.raises(ValueError, match=message):
        DomainSpec(**fields)


# ------------------------------------------------------------------------------------------------------------------
# Arrays: shapes, balance, determinism, evidence
# ------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ORIGINAL)
def test_arrays_shapes_balance_and_evidence_size(name):
    spec = DOMAINS[name]
    arrays = generate_domain(name, "train", 61)
    assert arrays.images.shape == (61, 32, 32, 3) and arrays.images.dtype == np.uint8
    assert arrays.labels.shape == (61,) and arrays.evidence.shape == arrays.distractor.shape == (61, 16)
    counts = np.bincount(arrays.labels, minlength=spec.num_classes)
    assert counts.max() - counts.min() <= 1
    is_digit = arrays.labels < len(spec.digits)
    assert np.all(arrays.evidence[is_digit].sum(1) == spec.digit_cells**2)
    assert np.all(arrays.evidence[~is_digit].sum(1) == spec.texture_cells**2)
    assert not np.any(arrays.evidence & arrays.distractor)
    assert np.all(arrays.distractor.sum(1) == (~is_digit if spec.distractor else 0))
    # Objects appear at many positions, not one.
    assert len({tuple(np.flatnonzero(mask)) for mask in arrays.evidence}) > 8
    # The digit drawn is of the label's class (digit classes) and the image's own split.
    _, targets = domain_images._digits()
    digit_classes = np.asarray(spec.digits)[arrays.labels[is_digit]] if spec.digits else np.empty(0)
    np.testing.assert_array_equal(targets[arrays.digit_indices[is_digit]], digit_classes)
    assert np.all((arrays.digit_indices >= 0) == (is_digit | arrays.distractor.any(1)))


# sha256 of (images, labels, evidence, digit_indices) of 12 validation images at seed 3, 32/8, as generator version
# 1 gives them: the original domains must stay bit-identical when other domains are added.
_PINNED = {
    "base": "9527ff447d054b76",
    "digits_on_textures": "5a331919b36e655c",
    "digits_on_photos": "f22aa67704b359f4",
    "texture_tiles": "6bde18503217d49a",
}


def test_original_domains_are_bit_identical_to_generator_version_1():
    assert sorted(ORIGINAL) == sorted(_PINNED)
    assert domain_images.GENERATOR_VERSION == 1
    for name, expected in _PINNED.items():
        a = generate_domain(name, "validation", 12, seed=3)
        content = a.images.tobytes() + a.labels.tobytes() + a.evidence.tobytes() + a.digit_indices.tobytes()
        assert hashlib.sha256(content).hexdigest()[:16] == expected, name


def test_original_domains_record_objects_and_backgrounds():
    arrays = generate_domain("texture_tiles", "train", 10)
    assert all(name.startswith("tile:") for name in arrays.object_names)
    assert all(name.startswith("digit:") for name in arrays.distractor_names)
    assert set(arrays.backgrounds) == {"plain"} and set(arrays.fonts) == {""}
    arrays = generate_domain("digits_on_photos", "train", 10)
    _, targets = domain_images._digits()
    assert [f"digit:{digit}" for digit in targets[arrays.digit_indices]] == arrays.object_names.tolist()
    assert set(arrays.backgrounds) <= set(DOMAINS["digits_on_photos"].backgrounds)


def test_generation_is_deterministic_and_seed_split_dependent():
    first = generate_domain("texture_tiles", "validation", 20, seed=3)
    again = generate_domain("texture_tiles", "validation", 20, seed=3)
    for field in ("images", "labels", "evidence", "distractor", "digit_indices"):
        np.testing.assert_array_equal(getattr(first, field), getattr(again, field))
    assert not np.array_equal(first.images, generate_domain("texture_tiles", "validation", 20, seed=4).images)
    assert not np.array_equal(first.images, generate_domain("texture_tiles", "test", 20, seed=3).images)


@pytest.mark.parametrize("name", ORIGINAL)
def test_evidence_marks_exactly_where_the_object_is(name):
    drawn = generate_domain(name, "test", 40, seed=1)
    bare = generate_domain(name, "test", 40, seed=1, draw_objects=False)
    np.testing.assert_array_equal(drawn.evidence, bare.evidence)
    changed = np.abs(drawn.images.astype(int) - bare.images.astype(int)).max(-1)  # (N, 32, 32)
    changed_cells = changed.reshape(40, 4, 8, 4, 8).max((2, 4)).reshape(40, 16) > 0
    # Every object cell changed, and nothing outside the object (and the distractor) did.
    np.testing.assert_array_equal(changed_cells & drawn.evidence, drawn.evidence)
    np.testing.assert_array_equal(changed_cells & ~(drawn.evidence | drawn.distractor), False)
    np.testing.assert_array_equal(changed_cells & drawn.distractor, drawn.distractor)


@pytest.mark.parametrize("name", ORIGINAL)
def test_object_cells_stand_out_from_the_background(name):
    # A digit plate (dark, with bright ink) or a texture tile (on a plain colour) has about twice the pixel spread
    # of the cells around it, on average: the evidence is visible, not just declared.
    arrays = generate_domain(name, "train", 200)
    cells = arrays.images.mean(-1).reshape(200, 4, 8, 4, 8).transpose(0, 1, 3, 2, 4).reshape(200, 16, 64)
    spread = cells.std(-1)
    assert spread[arrays.evidence].mean() > 1.8 * spread[~arrays.evidence & ~arrays.distractor].mean()


# ------------------------------------------------------------------------------------------------------------------
# Splits
# ------------------------------------------------------------------------------------------------------------------


def test_digit_splits_partition_all_digits_by_class():
    parts = [digit_split_indices(split) for split in SPLITS]
    joined = np.concatenate(parts)
    assert len(joined) == len(np.unique(joined)) == 1797
    _, targets = domain_images._digits()
    for part, fraction in zip(parts, (0.70, 0.15, 0.15), strict=True):
        assert set(np.unique(targets[part])) == set(range(10))
        assert abs(len(part) / 1797 - fraction) < 0.01
    parts[0][:] = -1  # a copy: the module's split is untouched
    assert digit_split_indices("train").min() >= 0


@pytest.mark.parametrize("name", ["base", "digits_on_photos", "texture_tiles"])
def test_splits_never_share_a_source_digit(name):
    used = {split: generate_domain(name, split, 150, seed=7).digit_indices for split in SPLITS}
    for split in SPLITS:
        drawn = used[split][used[split] >= 0]
        assert drawn.size and np.isin(drawn, digit_split_indices(split)).all()
    assert not set(used["train"]) - {-1} & set(used["test"])
    assert not set(used["train"]) - {-1} & set(used["validation"])


def test_source_bands_partition_each_image():
    for source in ("brick wall", "china", "coffee"):
        pixels = domain_images._source(source)
        bands = [domain_images._band(pixels, split) for split in SPLITS]
        axis = 0 if pixels.shape[0] >= pixels.shape[1] else 1
        np.testing.assert_array_equal(np.concatenate(bands, axis=axis), pixels)
        assert min(band.shape[axis] for band in bands) >= 64  # room for every crop size


def test_sources_load_without_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    domain_images._source.cache_clear()
    domain_images._digits.cache_clear()
    try:
        for source in (*domain_images._TEXTURES, *domain_images._PHOTOS):
            assert domain_images._source(source).ndim == 3
        assert domain_images._digits()[0].shape == (1797, 8, 8)
        for name in DOMAINS:
            generate_domain(name, "test", 16)
    finally:
        domain_images._source.cache_clear()
        domain_images._digits.cache_clear()


# ------------------------------------------------------------------------------------------------------------------
# datasets
# ------------------------------------------------------------------------------------------------------------------


def test_build_domain_features_and_contents():
    ds = build_domain("digits_on_photos", "train", 30, seed=2)
    assert isinstance(ds, datasets.Dataset) and ds.num_rows == 30 and str(ds.split) == "train"
    assert isinstance(ds.features["image"], datasets.Image)
    assert ds.features["label"].names == list(DOMAINS["digits_on_photos"].class_names)
    assert ds.features["evidence"].feature == datasets.Value("bool")
    arrays = generate_domain("digits_on_photos", "train", 30, seed=2)
    first = ds[0]
    assert isinstance(first["image"], Image.Image) and first["image"].mode == "RGB" and first["image"].size == (32, 32)
    np.testing.assert_array_equal(np.asarray(first["image"]), arrays.images[0])  # PNG is lossless
    assert ds["label"] == arrays.labels.tolist()
    assert ds["evidence"] == arrays.evidence.tolist()
    assert "seed=2" in ds.info.description


def test_fingerprint_follows_provenance():
    one = build_domain("texture_tiles", "test", 8, seed=0)
    assert one._fingerprint == build_domain("texture_tiles", "test", 8, seed=0)._fingerprint
    assert one._fingerprint != build_domain("texture_tiles", "test", 8, seed=1)._fingerprint
    assert one._fingerprint != build_domain("texture_tiles", "validation", 8, seed=0)._fingerprint


def test_reference_scale_224_with_patch_32():
    ds = build_domain("texture_tiles", "validation", 6, image_size=224, patch_size=32)
    assert ds[0]["image"].size == (224, 224)
    evidence = np.asarray(ds["evidence"])
    assert evidence.shape == (6, 49) and np.all(evidence.sum(1) == 4)
    arrays = generate_domain("digits_on_textures", "test", 6, image_size=224, patch_size=32)
    assert arrays.images.shape == (6, 224, 224, 3) and np.all(arrays.evidence.sum(1) == 1)


def test_build_domain_dict_splits():
    dd = build_domain_dict("digits_on_textures", {"train": 12, "test": 7}, seed=5)
    assert isinstance(dd, datasets.DatasetDict) and list(dd) == ["train", "test"]
    assert dd["train"].num_rows == 12 and dd["test"].num_rows == 7
    assert build_domain_dict("base", {"validation": 0})["validation"].num_rows == 0
    with pytest.raises(ValueError, match="unknown splits \\['dev'\\]"):
        build_domain_dict("base", {"dev": 3})
    with pytest.raises(TypeError, match="mapping"):
        build_domain_dict("base", [("train", 3)])


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"name": "nope"}, KeyError, "known domains: base, digits_on_photos"),
        ({"split": "dev"}, ValueError, "split must be one of"),
        ({"num_examples": -1}, ValueError, "num_examples must be >= 0, got -1"),
        ({"num_examples": 2.5}, TypeError, "num_examples must be an int, got float"),
        ({"seed": True}, TypeError, "seed must be an int, got bool"),
        ({"seed": -3}, ValueError, "seed must be >= 0"),
        ({"image_size": 30}, ValueError, "multiple of patch_size, got image_size=30, patch_size=8"),
        ({"patch_size": 0}, ValueError, "patch_size must be >= 1"),
        ({"image_size": 16}, ValueError, "at least 3x3, got 2x2"),
    ],
)
def test_bad_arguments_raise_typed_errors(kwargs, error, message):
    arguments = {"name": "texture_tiles", "split": "train", "num_examples": 4, **kwargs}
    with pytest.raises(error, match=message):
        generate_domain(arguments.pop("name"), arguments.pop("split"), arguments.pop("num_examples"), **arguments)
    with pytest.raises(error, match=message):
        build_domain(**{"name": "texture_tiles", "split": "train", "num_examples": 4, **kwargs})


def test_contact_sheet_writes_a_png(tmp_path):
    import matplotlib

    backend = matplotlib.get_backend()
    path = tmp_path / "sheet.png"
    save_contact_sheet(path, ["digits_on_textures", "texture_tiles"], per_domain=3)
    with Image.open(path) as sheet:
        assert sheet.format == "PNG" and sheet.size[0] > 100
    assert matplotlib.get_backend() == backend
    with pytest.raises(KeyError, match="known domains"):
        save_contact_sheet(path, ["nope"])
