"""Configurations of the explaining CLIP classifiers: [`SelfExplainingCLIPVisionConfig`] (text-embedding head) and
[`ExplainingCLIPForImageClassificationConfig`] (the linear head of transformers' `CLIPForImageClassification`), and
the provenance record `explainability` both carry."""

from __future__ import annotations

from collections.abc import Mapping

from huggingface_hub.dataclasses import strict
from transformers import CLIPVisionConfig, PreTrainedConfig

from ._validation import check_finite, check_probability

PATCH_NORMALISATIONS = ("cls", "patches")
"""The allowed values of `SelfExplainingCLIPVisionConfig.patch_normalisation`: what the patch attributions are divided
by, the image's [CLS] embedding norm (`"cls"`) or the mean norm of its patch embeddings (`"patches"`)."""

EXPLAINABILITY_KEYS = ("model", "model_revision", "vector", "vector_revision", "lam")
"""Keys of a config's `explainability` record: the model and the explainability vector applied to it (names or
paths and revisions, strings or `None`), and the vector's scaling λ (a finite float)."""


def validate_explainability(value) -> dict | None:
    r"""
    Check a config's `explainability` record and return it normalised (a new dict, keys in [`EXPLAINABILITY_KEYS`]
    order, `lam` as a `float`, string keys not given set to `None`).

    Args:
        value (`dict` or `None`):
            `{"model": str | None, "model_revision": str | None, "vector": str | None, "vector_revision": str | None,
            "lam": float}`: which model an explainability vector was applied to, which vector, and with which λ.

    Raises:
        `TypeError`: not a mapping, a name or revision that is not a string, a `lam` that is not a real number.
        `ValueError`: unknown keys, no `lam`, or a `lam` that is not finite.
    """
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise TypeError(
            f"explainability must be a dict with keys {list(EXPLAINABILITY_KEYS)} or None, got {type(value).__name__}."
        )
    unknown = sorted(str(key) for key in value if key not in EXPLAINABILITY_KEYS)
    if unknown:
        raise ValueError(f"explainability has unknown keys {unknown}; expected keys {list(EXPLAINABILITY_KEYS)}.")
    if "lam" not in value:
        raise ValueError("explainability must record lam, the scaling of the vector that was applied.")
    record = {}
    for key in EXPLAINABILITY_KEYS[:-1]:
        item = value.get(key)
        if item is not None and not isinstance(item, str):
            raise TypeError(f"explainability[{key!r}] must be a string or None, got {type(item).__name__}: {item!r}.")
        record[key] = item
    record["lam"] = check_finite("explainability['lam']", value["lam"])
    return record


class PatchGridMixin:
    """The patch grid of a config with a CLIP `vision_config` (both explaining models' configs)."""

    @property
    def grid_size(self) -> int:
        """Number of patches along each side of the image (`image_size // patch_size`)."""
        return self.vision_config.image_size // self.vision_config.patch_size

    @property
    def num_patches(self) -> int:
        """Number of patch tokens M = grid_size**2, the length of the attribution vector of each class."""
        return self.grid_size**2


@strict
class SelfExplainingCLIPVisionConfig(PatchGridMixin, PreTrainedConfig):
    r"""
    Configuration of a [`SelfExplainingCLIPVision`]: a CLIP vision tower and visual projection (the feature
    extractor, trainable) with a fixed head of CLIP text embeddings, one row per class.

    Args:
        vision_config (`CLIPVisionConfig` or `dict`, *optional*):
            Configuration of the CLIP vision tower. Defaults to `CLIPVisionConfig()` (ViT-B/32 at 224).
        projection_dim (`int`, *optional*, defaults to 512):
            Width of the joint image-text embedding space (the output of `visual_projection`).
        class_names (`list[str]`, *optional*):
            Names of the classes, in label order. `id2label`/`label2id` are derived from them. When not given,
            they are read from `id2label` (two classes `LABEL_0`, `LABEL_1` by default).
        alpha (`float`, *optional*, defaults to 1.0):
            Weight of the cross-entropy term of the loss, in [0, 1]: `loss = alpha * CE + (1 - alpha) * MSE`, the MSE
            being between the patch attributions of the label class and the Kernel SHAP values. `alpha=1.0` trains
            a prediction-only model; the paper's self-explaining models use `alpha=0.8`. Checked on construction and
            on every assignment (`config.alpha = 1.5` raises `ValueError`, a non-number `TypeError`, and leaves the
            old value), and again by the model's `forward`.
        logit_scale_init_value (`float`, *optional*, defaults to 2.6592):
            Log of the logit scale. [`SelfExplainingCLIPVision.from_clip`] copies the CLIP model's learned value.
        clip_name_or_path (`str`, *optional*):
            Name or path of the CLIP model the feature extractor and head were taken from (provenance).
        explainability (`dict`, *optional*):
            Provenance of an explainability vector applied to the model: `{"model", "model_revision", "vector",
            "vector_revision", "lam"}` (see [`validate_explainability`]). Checked on construction and on assignment.
        patch_normalisation (`str`, *optional*, defaults to `"cls"`):
            What each image's patch attributions are divided by (besides the logit scale and the number of patches M).
            `"cls"`: the norm of the image's projected [CLS] embedding, ||z_0||, the norm its logits are divided by,
            so the attributions are on the scale of the logits. `"patches"`: the mean norm of the image's M projected
            patch embeddings, mean_j ||z_j||, which decouples the attribution scale from [CLS]: the attributions then
            depend only on the patch tokens and are invariant to their common scale, whatever the [CLS] norm. It has
            no parameter (the model's weights, hence its task vectors, and its logits are the same either way), so it
            can be switched on a trained model; only the attributions (and the attribution loss) change. Configs saved
            without it load as `"cls"`. Checked on construction and on assignment (`ValueError` for another value).
            See the module docstring of `hf_explvec.modeling`.

    Example:

    ```python
    >>> from transformers import CLIPVisionConfig
    >>> from hf_explvec import SelfExplainingCLIPVisionConfig

    >>> vision = CLIPVisionConfig(image_size=32, patch_size=8, hidden_size=32, intermediate_size=37,
    ...                           num_hidden_layers=2, num_attention_heads=4)
    >>> config = SelfExplainingCLIPVisionConfig(vision_config=vision, projection_dim=16, class_names=["cat", "dog"])
    >>> config.id2label
    {0: 'cat', 1: 'dog'}
    >>> config.num_patches
    16
    ```
    """

    model_type = "self_explaining_clip_vision"
    sub_configs_defaults = {"vision_config": CLIPVisionConfig}

    vision_config: dict | CLIPVisionConfig | None = None
    projection_dim: int = 512
    class_names: list[str] | None = None
    alpha: float | int = 1.0
    logit_scale_init_value: float | int = 2.6592
    clip_name_or_path: str | None = None
    explainability: dict | None = None
    patch_normalisation: str = "cls"

    def __post_init__(self, **kwargs):
        given_id2label = None if self.id2label is None else {int(k): v for k, v in self.id2label.items()}
        super().__post_init__(**kwargs)
        if self.class_names is None:
            self.class_names = [self.id2label[i] for i in sorted(self.id2label)]
        names = list(self.class_names)
        validate_class_names(names)
        expected_id2label = dict(enumerate(names))
        if given_id2label is not None and given_id2label != expected_id2label:
            raise ValueError(
                f"id2label {given_id2label} is inconsistent with class_names {names}; pass only class_names."
            )
        self.class_names = names
        self.id2label = expected_id2label
        self.label2id = {name: i for i, name in expected_id2label.items()}
        self.alpha = check_probability("alpha", self.alpha)
        if self.projection_dim <= 0:
            raise ValueError(f"projection_dim must be positive, got {self.projection_dim}.")
        check_patch_grid(self.vision_config)

    def __setattr__(self, name, value):
        # @strict only checks types (and not those of string annotations): check alpha's range on assignment, so
        # that `config.alpha = 1.5` is refused before it changes the loss. (@strict wraps this method.)
        if name == "alpha":
            value = check_probability("alpha", value)
        elif name == "explainability":
            value = validate_explainability(value)
        elif name == "patch_normalisation":
            value = validate_patch_normalisation(value)
        super().__setattr__(name, value)


@strict
class ExplainingCLIPForImageClassificationConfig(PatchGridMixin, PreTrainedConfig):
    r"""
    Configuration of an [`ExplainingCLIPForImageClassification`]: transformers' `CLIPForImageClassification` (a CLIP
    vision tower and a linear classifier on the mean of its patch tokens) that also outputs patch attributions.

    Args:
        vision_config (`CLIPVisionConfig` or `dict`, *optional*):
            Configuration of the CLIP vision tower. Defaults to `CLIPVisionConfig()` (ViT-B/32 at 224).
        id2label (`dict[int, str]`, *optional*):
            Class names by index, as in any transformers classifier (two classes `LABEL_0`, `LABEL_1` by default);
            `num_labels` is its length and must be at least 1.
        classifier_name_or_path (`str`, *optional*):
            Name or path of the `CLIPForImageClassification` the weights were copied from (provenance).
        classifier_revision (`str`, *optional*):
            Its revision (commit sha) when it was loaded from the Hub.
        explainability (`dict`, *optional*):
            Provenance of an explainability vector applied to the model: `{"model", "model_revision", "vector",
            "vector_revision", "lam"}` (see [`validate_explainability`]). Checked on construction and on assignment.

    Example:

    ```python
    >>> from hf_explvec import ExplainingCLIPForImageClassificationConfig
    >>> from hf_explvec.testing import TINY_VISION

    >>> config = ExplainingCLIPForImageClassificationConfig(vision_config=TINY_VISION, id2label={0: "cat", 1: "dog"})
    >>> config.num_labels, config.num_patches
    (2, 16)
    ```
    """

    model_type = "explaining_clip_image_classifier"
    sub_configs_defaults = {"vision_config": CLIPVisionConfig}

    vision_config: dict | CLIPVisionConfig | None = None
    classifier_name_or_path: str | None = None
    classifier_revision: str | None = None
    explainability: dict | None = None

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if self.label2id is None:
            self.label2id = {name: i for i, name in self.id2label.items()}
        if self.num_labels < 1:
            raise ValueError(
                f"an ExplainingCLIPForImageClassification needs at least one class (a linear classifier), got "
                f"num_labels={self.num_labels}."
            )
        check_patch_grid(self.vision_config)

    def __setattr__(self, name, value):
        if name == "explainability":  # @strict wraps this method: types are checked as well
            value = validate_explainability(value)
        super().__setattr__(name, value)

    @property
    def class_names(self) -> list[str]:
        """The class names in label order (from `id2label`)."""
        return [self.id2label[i] for i in sorted(self.id2label)]


def check_patch_grid(vision_config) -> None:
    """Raise `ValueError` unless the image size is an int divisible by the patch size (a square grid of patches)."""
    image_size, patch_size = vision_config.image_size, vision_config.patch_size
    if not isinstance(image_size, int) or not isinstance(patch_size, int) or image_size % patch_size:
        raise ValueError(
            f"vision_config.image_size ({image_size}) must be an int divisible by vision_config.patch_size "
            f"({patch_size}) so that patches form a square grid."
        )


def validate_patch_normalisation(value) -> str:
    r"""
    Check a `patch_normalisation` value (see [`SelfExplainingCLIPVisionConfig`]) and return it.

    Args:
        value (`str`): `"cls"` or `"patches"`.

    Returns:
        `str`: `value`.

    Raises:
        `ValueError`: any other value (the message names the field and the allowed values).
    """
    if not isinstance(value, str) or value not in PATCH_NORMALISATIONS:
        raise ValueError(f"patch_normalisation must be one of {list(PATCH_NORMALISATIONS)}, got {value!r}.")
    return value


def validate_class_names(class_names) -> None:
    """Raise `ValueError`/`TypeError` unless `class_names` is a non-empty list of distinct non-empty strings."""
    if isinstance(class_names, str) or not hasattr(class_names, "__len__"):
        raise TypeError(f"class_names must be a list of strings, got {type(class_names).__name__}.")
    if len(class_names) == 0:
        raise ValueError("class_names is empty: a classifier needs at least one class.")
    bad = [name for name in class_names if not isinstance(name, str) or not name.strip()]
    if bad:
        raise ValueError(f"class_names must be non-empty strings; invalid entries: {bad!r}.")
    seen, duplicated = set(), []
    for name in class_names:
        if name in seen and name not in duplicated:
            duplicated.append(name)
        seen.add(name)
    if duplicated:
        raise ValueError(f"class_names must be distinct; duplicated: {duplicated!r}.")


__all__ = [
    "EXPLAINABILITY_KEYS",
    "PATCH_NORMALISATIONS",
    "ExplainingCLIPForImageClassificationConfig",
    "SelfExplainingCLIPVisionConfig",
    "validate_explainability",
    "validate_patch_normalisation",
]
