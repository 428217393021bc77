"""Kernel SHAP of a [`SelfExplainingCLIPVision`] over its own patch grid, with masking inside the model.

The attribution core ([`hf_explvec.attribution`]) knows nothing of models: it asks a value function for the score
of each coalition of patches. This module gives it value functions that mask *inside* the ViT:

- `"embedding"` (default): absent patches get the patch embedding of the baseline image. CLIP's patch embedding is a
  convolution whose kernel and stride are the patch size, so a patch's embedding depends on that patch's pixels only:
  this is exactly painting the baseline into the absent patches, but the patch embedding runs once per image instead
  of once per coalition, and no masked image is ever built.
- `"token"`: absent patch tokens are dropped (an attention mask hides them from every layer). There is no baseline:
  the empty coalition is the [CLS] token alone. A documented alternative to baseline painting.
- `"pixel"`: paint the pixels and run the whole model (what [`patch_kernel_shap`] does with any forward function).

All three share the sampler and the constrained solver of [`kernel_shap`], so with the same seed they sample the same
coalitions, and `"embedding"` and `"pixel"` give the same values up to float rounding.
"""

import torch

from .._validation import check_finite_tensor
from ._forward import VALUE_OPTIONS, check_finite_values, check_targets, score, select_targets
from .kernel_shap import kernel_shap
from .patches import make_baseline, patch_kernel_shap

MASKING_OPTIONS = ("embedding", "token", "pixel")


class _EmbeddingGame:
    """Value function: the target score with absent patches masked at the patch-embedding level."""

    def __init__(self, model, pixel_values, baseline, targets, value: str, drop_tokens: bool):
        embeddings = model.vision_model.embeddings
        dtype = embeddings.patch_embedding.weight.dtype

        def patch_embeds(images):
            return embeddings.patch_embedding(images.to(dtype)).flatten(2).transpose(1, 2)  # (N, M, D)

        positions = embeddings.position_embedding.weight
        self.model, self.targets, self.value, self.drop_tokens = model, targets, value, drop_tokens
        self.present = patch_embeds(pixel_values) + positions[1:]
        self.absent = None if drop_tokens else patch_embeds(baseline.expand_as(pixel_values)) + positions[1:]
        self.cls = (embeddings.class_embedding + positions[0]).view(1, 1, -1)

    def __call__(self, coalitions: torch.Tensor, input_index: torch.Tensor) -> torch.Tensor:
        rows = coalitions.shape[0]
        present = self.present.index_select(0, input_index)
        mask = None
        if self.drop_tokens:
            tokens = present
            visible = torch.cat([coalitions.new_ones(rows, 1), coalitions], dim=1)
            mask = torch.zeros(visible.shape, dtype=present.dtype, device=present.device)
            mask.masked_fill_(~visible, torch.finfo(present.dtype).min)
            mask = mask.view(rows, 1, 1, -1)
        else:
            tokens = torch.where(coalitions.unsqueeze(-1), present, self.absent.index_select(0, input_index))
        embeddings = torch.cat([self.cls.expand(rows, 1, -1), tokens], dim=1)
        logits = self.model.logits_from_embeddings(embeddings, attention_mask=mask)
        values = select_targets(score(logits, self.value), self.targets, input_index)
        check_finite_values(values, input_index, name="the model")
        return values


@torch.inference_mode()
def model_kernel_shap(
    model,
    pixel_values: torch.Tensor,
    target: int | torch.Tensor,
    *,
    num_samples: int = 500,
    baseline: float | str | torch.Tensor = 0.0,
    batch_size: int = 64,
    seed: int | None = None,
    value: str = "logit",
    masking: str = "embedding",
) -> torch.Tensor:
    r"""
    Kernel SHAP values of a [`SelfExplainingCLIPVision`]'s patches (its own `patch_size` grid) for a class score:
    the labels its attribution loss is trained on.

    Args:
        model ([`SelfExplainingCLIPVision`]): The model to explain (put it in eval mode).
        pixel_values (`torch.FloatTensor` of shape `(batch_size, 3, image_size, image_size)`): The images as the
            image processor prepares them: floating point and finite (NaN / infinite pixels are refused, naming the
            image index, in every `masking` mode). Raw pixels (uint8 tensors, numpy arrays, PIL images) are refused
            with a `TypeError`, as by the model's `forward` and [`patch_kernel_shap`].
        target (`int` or `torch.LongTensor` of shape `(batch_size,)`): The explained class (per image).
        num_samples (`int`, *optional*, defaults to 500): Coalitions evaluated per image, including the full and
            the empty one; at least `2 * num_patches`; exact Shapley values from `2**num_patches` on.
        baseline (`float`, `str` or `torch.Tensor`, *optional*, defaults to 0.0): What absent patches show: a
            number, `"mean"`, `"blur"` or a tensor broadcastable to `pixel_values` (see `make_baseline`). Unused
            with `masking="token"`.
        batch_size (`int`, *optional*, defaults to 64): Coalitions per forward pass (several images share one).
        seed (`int`, *optional*): Seed of the coalition sampler; the same seed gives the same values whatever the
            `batch_size` and the `masking`.
        value (`str`, *optional*, defaults to `"logit"`): `"logit"`, `"log_prob"` or `"prob"`.
        masking (`str`, *optional*, defaults to `"embedding"`): `"embedding"`, `"token"` or `"pixel"` (see the module
            docstring).

    Returns:
        `torch.FloatTensor` of shape `(batch_size, num_patches)`, row-major over the patch grid; each row sums to
        `score(image) - score(baseline image)` (`score([CLS] alone)` with `masking="token"`).

    Raises:
        TypeError: `pixel_values` not a floating tensor, `target` not integer, `model` not a
            [`SelfExplainingCLIPVision`].
        ValueError: wrong shapes, non-finite pixels, `target` outside `[0, num_labels)`, unknown options, or the model
            giving NaN / infinite scores for any coalition (naming the image index; nothing is returned).
    """
    if masking not in MASKING_OPTIONS:
        raise ValueError(f"masking must be one of {MASKING_OPTIONS}, got {masking!r}.")
    if value not in VALUE_OPTIONS:
        raise ValueError(f"value must be one of {VALUE_OPTIONS}, got {value!r}.")
    if not hasattr(model, "logits_from_embeddings"):
        raise TypeError(
            f"model_kernel_shap explains a SelfExplainingCLIPVision, got {type(model).__name__}; "
            "for any other classifier use patch_kernel_shap(forward_fn, ...)."
        )
    model._check_inputs(pixel_values, None, None)  # the model's own input policy: floating tensors of its size
    check_finite_tensor(pixel_values, "pixel_values", unit="image index")
    vision = model.config.vision_config
    targets = check_targets(target, pixel_values.shape[0], model.config.num_labels, device=pixel_values.device)
    options = dict(num_samples=num_samples, batch_size=batch_size, seed=seed)
    if masking == "pixel":

        def forward(images):
            return model(pixel_values=images).logits

        return patch_kernel_shap(
            forward, pixel_values, targets, patch_size=vision.patch_size, baseline=baseline, value=value, **options
        )
    base = make_baseline(pixel_values, baseline, vision.patch_size)
    base = torch.as_tensor(base, dtype=pixel_values.dtype, device=pixel_values.device)
    base = base.view((1,) * (4 - base.dim()) + tuple(base.shape))
    game = _EmbeddingGame(model, pixel_values, base, targets, value, drop_tokens=masking == "token")
    return kernel_shap(game, model.num_patches, pixel_values.shape[0], device=pixel_values.device, **options)


__all__ = ["MASKING_OPTIONS", "model_kernel_shap"]
