"""The offline image domains of the demo as `datasets` data sets ([`build_domain`], [`build_domain_dict`]).

The images are composed by [`~hf_explvec.demo.domain_images`] (whose docstring says what each domain is, how the
splits are kept apart and why the domains are related or not); the contact sheet is drawn by
[`~hf_explvec.demo.plots`]. This module re-exports their public names, so `hf_explvec.demo.domains` is the one
import for the domains.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Mapping

import numpy as np
from PIL import Image

from .domain_images import (
    DEFAULT_TRANSFER,
    DIVERSE_TRANSFER,
    DOMAINS,
    GENERATOR_VERSION,
    OBJECT_CLASSES,
    SCENE_CLASSES,
    SPLITS,
    DomainArrays,
    DomainSpec,
    digit_split_indices,
    generate_domain,
    get_domain,
    object_family,
)
from .plots import save_contact_sheet


def _png(image: np.ndarray) -> dict:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", compress_level=1)
    return {"bytes": buffer.getvalue(), "path": None}


def build_domain(name: str, split: str, num_examples: int, *, image_size: int = 32, patch_size: int = 8, seed: int = 0):
    r"""
    A domain split as a `datasets.Dataset` with features `image` (`datasets.Image`, RGB), `label`
    (`datasets.ClassLabel` named by the domain's class names) and `evidence` (`M` bools, row-major over the patch
    grid: the patches the class object covers).

    The fingerprint is derived from the provenance (domain, split, size, geometry, seed, generator version), so
    `datasets.map` caches are reused exactly when the same images would be built; the provenance is also in
    `dataset.info.description`.

    Args:
        name (`str`): a key of [`DOMAINS`].
        split (`str`): `"train"`, `"validation"` or `"test"`.
        num_examples (`int`): number of images.
        image_size (`int`, defaults to 32), patch_size (`int`, defaults to 8), seed (`int`, defaults to 0): as in
            [`generate_domain`].

    Returns:
        `datasets.Dataset`

    Example:

    ```python
    >>> from hf_explvec.demo.domains import build_domain
    >>> ds = build_domain("digits_on_textures", "train", 100)
    >>> ds.features["label"].names[:2], len(ds[0]["evidence"])
    (['digit zero', 'digit one'], 16)
    ```
    """
    import datasets

    arrays = generate_domain(name, split, num_examples, image_size=image_size, patch_size=patch_size, seed=seed)
    spec = get_domain(name)
    provenance = (
        f"hf_explvec.domains v{GENERATOR_VERSION} domain={name} split={split} num_examples={num_examples} "
        f"image_size={image_size} patch_size={patch_size} seed={seed}"
    )
    features = datasets.Features(
        {
            "image": datasets.Image(),
            "label": datasets.ClassLabel(names=list(spec.class_names)),
            "evidence": datasets.List(datasets.Value("bool")),
        }
    )
    built = datasets.Dataset.from_dict(
        {
            "image": [_png(image) for image in arrays.images],
            "label": arrays.labels.tolist(),
            "evidence": arrays.evidence.tolist(),
        },
        features=features,
        info=datasets.DatasetInfo(description=f"{spec.description} ({provenance})", features=features),
        split=datasets.NamedSplit(split),
    )
    fingerprint = hashlib.sha256(provenance.encode()).hexdigest()[:16]
    return datasets.Dataset(built.data, info=built.info, split=built.split, fingerprint=fingerprint)


def build_domain_dict(
    name: str, sizes: Mapping[str, int] | None = None, *, image_size: int = 32, patch_size: int = 8, seed: int = 0
):
    r"""
    A `datasets.DatasetDict` of a domain's splits, each built with [`build_domain`].

    Args:
        name (`str`): a key of [`DOMAINS`].
        sizes (`Mapping[str, int]`, *optional*): images per split, keys from `SPLITS` (any subset). Defaults to
            `{"train": 2000, "validation": 250, "test": 500}`.
        image_size (`int`, defaults to 32), patch_size (`int`, defaults to 8), seed (`int`, defaults to 0): as in
            [`generate_domain`].

    Returns:
        `datasets.DatasetDict`
    """
    import datasets

    get_domain(name)
    sizes = {"train": 2000, "validation": 250, "test": 500} if sizes is None else sizes
    if not isinstance(sizes, Mapping) or not sizes:
        raise TypeError(f"sizes must be a non-empty mapping of split name to int, got {sizes!r}")
    unknown = sorted(set(sizes) - set(SPLITS))
    if unknown:
        raise ValueError(f"sizes has unknown splits {unknown}; expected keys from {SPLITS}")
    kwargs = {"image_size": image_size, "patch_size": patch_size, "seed": seed}
    return datasets.DatasetDict(
        {split: build_domain(name, split, sizes[split], **kwargs) for split in SPLITS if split in sizes}
    )


__all__ = [
    "DEFAULT_TRANSFER",
    "DIVERSE_TRANSFER",
    "DOMAINS",
    "GENERATOR_VERSION",
    "OBJECT_CLASSES",
    "SCENE_CLASSES",
    "SPLITS",
    "DomainArrays",
    "DomainSpec",
    "build_domain",
    "build_domain_dict",
    "digit_split_indices",
    "generate_domain",
    "get_domain",
    "object_family",
    "save_contact_sheet",
]
