"""Configuration of the self-explaining CLIP vision classifier."""

from __future__ import annotations

from huggingface_hub.dataclasses import strict
from transformers import CLIPVisionConfig, PreTrainedConfig

from ._validation import check_probability


@strict
class SelfExplainingCLIPVisionConfig(PreTrainedConfig):
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
        image_size, patch_size = self.vision_config.image_size, self.vision_config.patch_size
        if not isinstance(image_size, int) or not isinstance(patch_size, int) or image_size % patch_size:
            raise ValueError(
                f"vision_config.image_size ({image_size}) must be an int divisible by vision_config.patch_size "
                f"({patch_size}) so that patches form a square grid."
            )

    def __setattr__(self, name, value):
        # @strict only checks types (and not those of string annotations): check alpha's range on assignment, so
        # that `config.alpha = 1.5` is refused before it changes the loss. (@strict wraps this method.)
        if name == "alpha":
            value = check_probability("alpha", value)
        super().__setattr__(name, value)

    @property
    def grid_size(self) -> int:
        """Number of patches along each side of the image (`image_size // patch_size`)."""
        return self.vision_config.image_size // self.vision_config.patch_size

    @property
    def num_patches(self) -> int:
        """Number of patch tokens M = grid_size**2, the length of the attribution vector of each class."""
        return self.grid_size**2


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


__all__ = ["SelfExplainingCLIPVisionConfig"]
