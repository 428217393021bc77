"""Test utilities users can reuse: tiny CLIP models built in code."""

from .tiny import TINY_VISION, tiny_clip_config, tiny_clip_model, tiny_clip_tokenizer

__all__ = ["TINY_VISION", "tiny_clip_config", "tiny_clip_model", "tiny_clip_tokenizer"]
