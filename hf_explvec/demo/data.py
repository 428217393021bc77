"""The demo's data: image domains (offline, in memory or from the Hub) as processed splits.

A [`Domain`] holds a domain's class names, prompt templates, role and its [`DemoSplit`]s (train, validation, test),
each processed once by the CLIP image processor. [`load_domains`] loads the base, source and target domains of a
[`~hf_explvec.demo.DemoConfig`].
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..data.images import clip_image_processor
from .config import DemoConfig, derived_seed
from .domains import DIVERSE_TRANSFER, DOMAINS, build_domain_dict

__all__ = [
    "DemoSplit",
    "Domain",
    "Domains",
    "domain_role",
    "hub_splits",
    "load_domain",
    "load_domains",
    "process_split",
]


@dataclass
class DemoSplit:
    r"""One split, processed once: `pixel_values` `(N, 3, H, W)` (CLIP-normalised), `labels` `(N,)`, `evidence`
    `(N, M)` bool or `None`, `images` `(N, H, W, 3)` uint8 as the model sees them, and the `datasets.Dataset`
    (`image`, `label`) with its image processor for [`~hf_explvec.data.label_dataset`]."""

    pixel_values: torch.Tensor
    labels: torch.Tensor
    evidence: torch.Tensor | None
    images: np.ndarray
    dataset: object
    processor: object

    def __len__(self) -> int:
        return len(self.labels)


def first_images(split: DemoSplit, count: int) -> DemoSplit:
    """The first `count` images of `split` (pixels, labels, evidence, images; no data set or processor)."""
    evidence = None if split.evidence is None else split.evidence[:count]
    return DemoSplit(split.pixel_values[:count], split.labels[:count], evidence, split.images[:count], None, None)


@dataclass
class Domain:
    """A domain: class names, prompt templates, role (`base`, `source`, `related`, `near`, `unrelated`,
    `target`), splits."""

    name: str
    role: str
    class_names: tuple[str, ...]
    templates: tuple[str, ...]
    train: DemoSplit
    validation: DemoSplit | None
    test: DemoSplit | None
    origin: str

    def describe(self) -> dict:
        sizes = {s: len(getattr(self, s)) for s in ("train", "validation", "test") if getattr(self, s) is not None}
        return {"role": self.role, "origin": self.origin, "classes": list(self.class_names),
                "templates": list(self.templates), "sizes": sizes}  # fmt: skip


@dataclass
class Domains:
    """The domains of a run: `base` (`None` when the base stage is skipped), `source` and the `targets`."""

    base: Domain | None
    source: Domain
    targets: list[Domain]

    def all(self) -> list[Domain]:
        return [d for d in (self.base, self.source, *self.targets) if d is not None]

    def describe(self) -> dict:
        return {d.name: d.describe() for d in self.all()}


def process_split(dataset, processor, image_size: int, patch_size: int) -> DemoSplit:
    r"""
    Process a `datasets.Dataset` (`image`, `label`, optional `evidence`) once, in batches of 256 images.

    Args:
        dataset (`datasets.Dataset`): the split.
        processor (`CLIPImageProcessor`): resizes and normalises the images.
        image_size (`int`), patch_size (`int`): the geometry; an `evidence` column of another patch count is dropped.

    Returns:
        [`DemoSplit`]
    """
    pixels = []
    for i in range(0, len(dataset), 256):
        images = [image.convert("RGB") for image in dataset[i : i + 256]["image"]]
        pixels.append(processor(images=images, return_tensors="pt")["pixel_values"])
    pixel_values = torch.cat(pixels).float()
    mean = torch.tensor(processor.image_mean).view(1, 3, 1, 1)
    std = torch.tensor(processor.image_std).view(1, 3, 1, 1)
    images = ((pixel_values * std + mean).clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).numpy()
    evidence = None
    if "evidence" in dataset.column_names:
        evidence = torch.tensor(dataset["evidence"], dtype=torch.bool)
        if evidence.shape[1] != (image_size // patch_size) ** 2:
            evidence = None
    return DemoSplit(pixel_values, torch.tensor(dataset["label"]), evidence, images, dataset, processor)


def hub_splits(name: str, sizes: dict, config: DemoConfig):
    """A Hub data set (`"name"` or `"name:config"`) as train/validation/test `image`/`label` splits of the sizes
    asked: seeded subsets; a validation or test split the data set lacks is cut from its training split."""
    import datasets

    path, _, subset = name.partition(":")
    loaded = datasets.load_dataset(path, subset or None)
    if "train" not in loaded:
        raise ValueError(f"data set {name!r} has no train split; its splits are {list(loaded)}.")
    features = loaded["train"].features
    renames = {_column(name, features, config.image_column, datasets.Image, "image"): "image",
               _column(name, features, config.label_column, datasets.ClassLabel, "label"): "label"}  # fmt: skip
    loaded = {split: ds.select_columns(list(renames)).rename_columns({k: v for k, v in renames.items() if k != v})
              for split, ds in loaded.items()}  # fmt: skip
    train = loaded["train"].shuffle(seed=config.seed)
    for split in ("validation", "test"):
        if split in sizes and split not in loaded:
            cut = min(sizes[split], len(train) // 5)
            loaded[split], train = train.select(range(cut)), train.select(range(cut, len(train)))
    loaded["train"] = train
    return {split: loaded[split].shuffle(seed=config.seed).select(range(min(n, len(loaded[split]))))
            for split, n in sizes.items()}  # fmt: skip


def _column(name: str, features, column: str | None, kind: type, preferred: str) -> str:
    """The column of `kind` (`datasets.Image` or `datasets.ClassLabel`) to use: `column` when given, else
    `preferred` when it has that kind, else the first column of that kind."""
    if column is not None:
        if column not in features:
            raise ValueError(f"data set {name!r} has no column {column!r}; its columns are {list(features)}.")
        return column
    matching = [key for key, feature in features.items() if isinstance(feature, kind)]
    if not matching:
        raise ValueError(f"data set {name!r} has no {kind.__name__} column (columns {list(features)}); name one.")
    return preferred if preferred in matching else matching[0]


def load_domain(name: str, role: str, sizes: dict, config: DemoConfig, image_size: int, patch_size: int, data=None):
    """A [`Domain`]: from `data` (in memory), from [`~hf_explvec.demo.domains`] (offline) or from the Hub, by name."""
    if data is not None and name in data:
        splits, origin = {s: data[name][s] for s in sizes if s in data[name]}, "in memory"
    elif name in DOMAINS:
        geometry = {"image_size": image_size, "patch_size": patch_size}
        splits = build_domain_dict(name, sizes, **geometry, seed=derived_seed(config, "data"))
        origin = "hf_explvec.domains (offline)"
    else:
        splits, origin = hub_splits(name, sizes, config), "datasets.load_dataset"
    if "train" not in splits:
        raise ValueError(f"data set {name!r} has no train split; its splits are {list(splits)}.")
    first = next(iter(splits.values()))
    class_names = tuple(first.features["label"].names)
    templates = DOMAINS[name].templates if name in DOMAINS else ("a photo of a {}.",)
    processor = clip_image_processor(image_size)
    processed = {split: process_split(ds, processor, image_size, patch_size) for split, ds in splits.items()}
    return Domain(name, role, class_names, tuple(templates), processed["train"], processed.get("validation"),
                  processed.get("test"), origin)  # fmt: skip


def domain_role(target: str, source: str) -> str:
    r"""
    The role of a target for a source: for the diverse source, the role [`DIVERSE_TRANSFER`] gives it (`"related"`:
    an object family the source never shows; `"near"`: other classes of a family it shows; `"unrelated"`: the
    evidence is the scene); for other registered domains `"related"` when the evidence is of the same kind, else
    `"unrelated"`; `"target"` for data sets the library does not know.
    """
    if source == DIVERSE_TRANSFER["source"]:
        for role in ("related", "near", "unrelated"):
            if target in DIVERSE_TRANSFER[role]:
                return role
    if target in DOMAINS and source in DOMAINS:
        return "related" if DOMAINS[target].evidence_kind == DOMAINS[source].evidence_kind else "unrelated"
    return "target"


def load_domains(config: DemoConfig, image_size: int, patch_size: int, data=None) -> Domains:
    """The base (when the base stage runs), source and target domains of `config`, processed at `image_size`."""
    sizes = {"train": config.train_size, "validation": config.validation_size, "test": config.test_size}
    base = None
    if config.base is not None and config.pretrain_steps > 0:
        base = load_domain(config.base, "base", {"train": config.base_train_size}, config, image_size, patch_size, data)
    source = load_domain(config.source, "source", sizes, config, image_size, patch_size, data)
    targets = [
        load_domain(target, domain_role(target, config.source), sizes, config, image_size, patch_size, data)
        for target in config.targets
    ]
    return Domains(base, source, targets)
