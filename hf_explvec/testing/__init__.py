"""Test utilities users can reuse: tiny CLIP models built in code, and a Hub-compatible server on loopback."""

from ..demo.clip import TINY_VISION, tiny_clip_config, tiny_clip_model, tiny_clip_tokenizer
from ..hub.loopback import LocalHub, hub_client_env

__all__ = ["TINY_VISION", "LocalHub", "hub_client_env", "tiny_clip_config", "tiny_clip_model", "tiny_clip_tokenizer"]
