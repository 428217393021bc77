"""Tiny CLIP models and a character-level CLIP tokenizer, built in code (no download), for tests and demos."""

from __future__ import annotations

import torch
from transformers import CLIPConfig, CLIPModel, CLIPTextConfig, CLIPTokenizer, CLIPVisionConfig

TINY_VISION = dict(
    image_size=32, patch_size=8, hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4
)
"""The tiny vision tower used across the tests: 32x32 images, a 4x4 grid of 8x8 patches, width 32, 2 layers."""


def tiny_clip_tokenizer() -> CLIPTokenizer:
    """A real `CLIPTokenizer` (byte-level, with CLIP's `</w>` word ends) whose vocabulary is the 256 byte symbols,
    with and without `</w>`, plus `<|startoftext|>` (id 512) and `<|endoftext|>` (id 513): no merges, 514 ids."""
    from tokenizers.pre_tokenizers import ByteLevel

    alphabet = sorted(ByteLevel.alphabet())
    symbols = alphabet + [symbol + "</w>" for symbol in alphabet] + ["<|startoftext|>", "<|endoftext|>"]
    return CLIPTokenizer(vocab={symbol: i for i, symbol in enumerate(symbols)}, merges=[])


def tiny_clip_config(projection_dim: int = 16, **vision_overrides) -> CLIPConfig:
    """A `CLIPConfig` with the tiny vision tower (overridable) and a 2-layer text tower that fits
    [`tiny_clip_tokenizer`]."""
    text = CLIPTextConfig(
        vocab_size=514,
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        bos_token_id=512,
        eos_token_id=513,
        pad_token_id=513,
    )
    vision = CLIPVisionConfig(**{**TINY_VISION, "projection_dim": projection_dim, **vision_overrides})
    return CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=projection_dim)


def tiny_clip_model(seed: int = 0, projection_dim: int = 16, **vision_overrides) -> CLIPModel:
    """A `CLIPModel` of [`tiny_clip_config`] with random weights drawn under `seed`, in eval mode."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return CLIPModel(tiny_clip_config(projection_dim, **vision_overrides)).eval()


__all__ = ["TINY_VISION", "tiny_clip_config", "tiny_clip_model", "tiny_clip_tokenizer"]
