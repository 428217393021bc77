"""The class-embedding head: CLIP text embeddings of class prompts, as in CLIP zero-shot classification."""

from __future__ import annotations

from collections.abc import Sequence

import torch

DEFAULT_TEMPLATES: tuple[str, ...] = ("a photo of a {}.",)
"""Prompt templates used when none are given: CLIP's own zero-shot default."""


def pooled_features(output) -> torch.Tensor:
    r"""The feature tensor of a CLIP `get_text_features` / `get_image_features` call.

    Depending on the transformers version these return the projected features as a tensor, or a
    `ModelOutput` whose `pooler_output` holds them; this accepts both.

    Args:
        output (`torch.Tensor` or `ModelOutput` with `pooler_output`): what the feature call returned.

    Returns:
        `torch.Tensor` of shape `(batch_size, projection_dim)`: the features, unchanged (not normalised).
    """
    if isinstance(output, torch.Tensor):
        return output
    features = getattr(output, "pooler_output", None)
    if not isinstance(features, torch.Tensor):
        raise TypeError(f"expected a tensor or an output with a `pooler_output` tensor, got {type(output).__name__}")
    return features


@torch.no_grad()
def build_class_embeddings(
    clip_model,
    tokenizer,
    class_names: Sequence[str],
    templates: Sequence[str] = DEFAULT_TEMPLATES,
    batch_size: int = 256,
) -> torch.Tensor:
    r"""
    Zero-shot classifier weights from a CLIP text tower.

    For each class, every template is filled with the class name, embedded by `clip_model.get_text_features`,
    L2-normalised, averaged over the templates and L2-normalised again (prompt ensembling, as in CLIP).

    Args:
        clip_model ([`~transformers.CLIPModel`]):
            A CLIP model with a text tower and text projection.
        tokenizer ([`~transformers.CLIPTokenizer`]):
            The tokenizer of that CLIP model.
        class_names (`Sequence[str]`):
            The class names, in label order.
        templates (`Sequence[str]`, *optional*, defaults to `("a photo of a {}.",)`):
            Prompt templates, each with exactly one `{}` where the class name goes.
        batch_size (`int`, *optional*, defaults to 256):
            Number of prompts embedded per forward pass.

    Returns:
        `torch.FloatTensor` of shape `(num_classes, projection_dim)`: L2-normalised rows, float32, on the device of
        `clip_model`.
    """
    if isinstance(templates, str) or len(templates) == 0:
        raise ValueError(f"templates must be a non-empty sequence of strings, got {templates!r}.")
    bad = [t for t in templates if not isinstance(t, str) or t.count("{}") != 1]
    if bad:
        raise ValueError(f"every template needs exactly one '{{}}' placeholder; invalid: {bad!r}.")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
    prompts = [template.format(name) for name in class_names for template in templates]
    device = clip_model.text_projection.weight.device
    max_length = clip_model.config.text_config.max_position_embeddings
    chunks = []
    for start in range(0, len(prompts), batch_size):
        inputs = tokenizer(
            prompts[start : start + batch_size],
            padding=True,
            truncation=True,
            max_length=max_length,
            return_tensors="pt",
        ).to(device)
        features = clip_model.get_text_features(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
        chunks.append(torch.nn.functional.normalize(pooled_features(features).float(), dim=-1))
    per_prompt = torch.cat(chunks).view(len(class_names), len(templates), -1)
    return torch.nn.functional.normalize(per_prompt.mean(dim=1), dim=-1)


__all__ = ["DEFAULT_TEMPLATES", "build_class_embeddings", "pooled_features"]
