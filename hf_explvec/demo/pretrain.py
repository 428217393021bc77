"""The demo's base stage: the CLIP model (given, loaded by name, or small and built in code), its training on the
base domain with cross-entropy over class prompts, and the θ_base of each domain."""

from __future__ import annotations

import logging

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..evaluation import accuracy
from ..heads import pooled_features
from ..modeling import SelfExplainingCLIPVision
from .config import DemoConfig, derived_seed
from .data import DemoSplit, Domain

logger = logging.getLogger(__name__)

__all__ = ["build_clip", "check_clip_pair", "pretrain_clip", "start_model", "text_features"]


def build_clip(config: DemoConfig, clip=None, tokenizer=None):
    r"""
    The CLIP model and tokenizer of a run: given, loaded by name (`config.clip`), or the small one built in code.

    Args:
        config ([`DemoConfig`]): `clip` (a name or path), or the sizes of the small CLIP and the seed.
        clip ([`~transformers.CLIPModel`], *optional*): a model to use as it is.
        tokenizer (*optional*): its tokenizer; required with `clip`, refused without it.

    Returns:
        `tuple`: the `CLIPModel` and its tokenizer.

    Raises:
        `ValueError`: a model without its tokenizer or a tokenizer without its model.
    """
    check_clip_pair(clip, tokenizer)
    if clip is not None:
        return clip, tokenizer
    if config.clip is not None:
        from transformers import CLIPModel, CLIPTokenizer

        return CLIPModel.from_pretrained(config.clip).eval(), CLIPTokenizer.from_pretrained(config.clip)
    from .clip import tiny_clip_model, tiny_clip_tokenizer

    vision = {"image_size": config.image_size, "patch_size": config.patch_size, "hidden_size": config.hidden_size,
              "intermediate_size": config.intermediate_size, "num_hidden_layers": config.num_hidden_layers,
              "num_attention_heads": config.num_attention_heads}  # fmt: skip
    return tiny_clip_model(derived_seed(config, "model_init"), config.projection_dim, **vision), tiny_clip_tokenizer()


def check_clip_pair(clip, tokenizer) -> None:
    """Raises `ValueError` unless a CLIP model and its tokenizer are given together (or neither is)."""
    if clip is not None and tokenizer is None:
        raise ValueError("a CLIP model was given without its tokenizer; pass both `clip` and `tokenizer`.")
    if clip is None and tokenizer is not None:
        raise ValueError("a tokenizer was given without its CLIP model; pass both `clip` and `tokenizer`.")


def text_features(clip, inputs) -> torch.Tensor:
    """L2-normalised text features `(P, projection_dim)` of tokenised prompts (`input_ids`, `attention_mask`)."""
    features = clip.get_text_features(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
    return F.normalize(pooled_features(features), dim=-1)


def pretrain_clip(clip, tokenizer, split: DemoSplit, class_names, templates, config: DemoConfig) -> list[dict]:
    r"""
    The base stage: train both towers of `clip` in place with cross-entropy over the class prompts (one template per
    class drawn at random each step, so that every template of every class lands near the class's images).

    Args:
        clip ([`~transformers.CLIPModel`]): trained in place, left in eval mode.
        tokenizer: its tokenizer.
        split ([`DemoSplit`]): the base domain's training split.
        class_names (`list[str]`), templates (`list[str]`): the prompts are `template.format(name)`.
        config ([`DemoConfig`]): `pretrain_steps`, `pretrain_batch_size`, `pretrain_learning_rate`, the seed.

    Returns:
        `list[dict]`: the loss and batch accuracy every 50 steps and at the end.
    """
    steps = config.pretrain_steps
    generator = torch.Generator().manual_seed(derived_seed(config, "pretrain"))
    max_length = clip.config.text_config.max_position_embeddings
    device = clip.logit_scale.device
    prompts = [tokenizer([t.format(name) for name in class_names], padding=True, truncation=True,
                         max_length=max_length, return_tensors="pt").to(device) for t in templates]  # fmt: skip
    optimizer = torch.optim.AdamW(clip.parameters(), lr=config.pretrain_learning_rate, weight_decay=0.1)
    warmup = max(1, steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + np.cos(np.pi * s / steps))
    )
    rows = torch.arange(len(class_names), device=device)
    history, clip = [], clip.train()
    for step in tqdm(range(steps), desc="base stage", disable=not config.show_progress):
        index = torch.randint(0, len(split), (config.pretrain_batch_size,), generator=generator)
        pixel_values, labels = split.pixel_values[index].to(device), split.labels[index].to(device)
        choice = torch.randint(0, len(templates), (len(class_names),), generator=generator).to(device)
        text = torch.stack([text_features(clip, inputs) for inputs in prompts], dim=1)[rows, choice]
        image = clip.get_image_features(pixel_values=pixel_values)
        image = F.normalize(pooled_features(image), dim=-1)
        logits = clip.logit_scale.exp() * image @ text.t()
        loss = F.cross_entropy(logits, labels)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(clip.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        if (step + 1) % 50 == 0 or step + 1 == steps:
            history.append(
                {"step": step + 1, "loss": float(loss.detach()), "accuracy": accuracy(logits.detach(), labels)}
            )
    logger.info("base stage: %s", history[-1] if history else "skipped")
    clip.eval()
    return history


def start_model(clip, tokenizer, domain: Domain) -> SelfExplainingCLIPVision:
    """θ_base for a domain: the base CLIP's vision tower with the domain's class-prompt head."""
    model = SelfExplainingCLIPVision.from_clip(clip, list(domain.class_names), templates=list(domain.templates),
                                               tokenizer=tokenizer)  # fmt: skip
    model.config.clip_name_or_path = clip.config._name_or_path or "hf_explvec.demo base stage"
    return model
