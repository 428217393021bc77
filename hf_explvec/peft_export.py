"""Export a low-rank task vector as a PEFT LoRA adapter, loadable with plain `peft` (`PeftModel.from_pretrained`).

LoRA adds `scaling * lora_B @ lora_A` to the weight of a linear layer. A [`~compression.LowRankTensor`] of a CLIP
vision linear weight (`q_proj`, `k_proj`, `v_proj`, `out_proj`, `fc1`, `fc2` of the encoder layers, and the visual
projection) is exactly that, with `lora_alpha = r` so that `scaling = 1` and `lam` folded into `lora_B`.

What LoRA cannot express, and is therefore lost in the export (the keys are returned so the caller can say so):

- biases of the linear layers and the layer-norm weights and biases (1-D tensors: LoRA only adds a matrix product;
  peft's `bias="all"` and `modules_to_save` would store the *absolute* values of the fine-tuned model, not a delta,
  so the adapter would no longer be a vector that applies to other models);
- the class embedding, the position-embedding table and the patch-embedding convolution (dense in a low-rank
  vector, see [`~compression.is_low_rank_candidate`]);
- any linear weight left dense, and the rank truncation itself (the adapter reproduces the low-rank vector, not the
  full one).
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from safetensors.torch import save_file

from . import arithmetic as A
from ._validation import check_finite
from .compression import Entry, LowRankTensor

logger = logging.getLogger(__name__)

LORA_LINEAR_NAMES = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")
"""Last names of the CLIP vision encoder's linear layers that the export targets (besides the visual projection)."""
ADAPTER_CONFIG_NAME = "adapter_config.json"
ADAPTER_WEIGHTS_NAME = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."


def lora_module(key: str) -> str | None:
    """The canonical module name whose weight `key` is, if it is a linear layer the export covers, else `None`."""
    if key == A.PROJECTION_KEY:
        return key.removesuffix(".weight")
    parts = key.split(".")
    if key.startswith(A.VISION_PREFIX + "encoder.") and parts[-1] == "weight" and parts[-2] in LORA_LINEAR_NAMES:
        return key.removesuffix(".weight")
    return None


def _module_names(base_model) -> dict[str, str]:
    """canonical module name -> module name in `base_model` (identity for CLIPVisionModelWithProjection/CLIPModel)."""
    if base_model is None:
        return {}
    names = base_model.state_dict().keys() if isinstance(base_model, torch.nn.Module) else list(base_model)
    mapping = A.canonical_vision_names(names)
    if not mapping:
        raise ValueError(f"{type(base_model).__name__} has no CLIP vision tower: cannot map the adapter's module names")
    return {c.removesuffix(".weight"): n.removesuffix(".weight") for c, n in mapping.items() if c.endswith(".weight")}


def lora_state_dict(
    factors: Mapping[str, Entry], lam: float = 1.0, base_model: torch.nn.Module | Iterable[str] | None = None
) -> tuple[dict[str, torch.Tensor], dict[str, int], list[str]]:
    r"""
    The LoRA tensors of a low-rank vector, under peft's names for a base model.

    Args:
        factors (`dict[str, Entry]`): A vector from [`~compression.low_rank`] (canonical names).
        lam (`float`, *optional*, defaults to 1.0): The scaling λ, folded into `lora_B` (computed in float32).
        base_model (`nn.Module` or names, *optional*): The model the adapter is for, to map canonical names to its
            module names (e.g. a `SelfExplainingCLIPVision`, whose tower sits under `vision_model.vision_model.`).
            By default the canonical names are used, which are those of `CLIPVisionModelWithProjection` and
            `CLIPModel`.

    Returns:
        `tuple`: the adapter state dict (`"base_model.model.<module>.lora_A.weight"` of shape `(r, in)` and
        `".lora_B.weight"` of shape `(out, r)`), module name -> rank, and the sorted canonical keys not covered.

    Raises:
        `ValueError`: no entry is a covered low-rank linear weight, or a module is not in `base_model`.
    """
    lam = check_finite("lam", lam)
    names = _module_names(base_model)
    tensors, ranks, lost = {}, {}, []
    for key in sorted(factors):
        entry, module = factors[key], lora_module(key)
        if module is None or not isinstance(entry, LowRankTensor):
            lost.append(key)
            continue
        if names and module not in names:
            raise ValueError(f"{module} is not a module of {type(base_model).__name__}: the vector does not fit it")
        module = names.get(module, module)
        tensors[f"{PEFT_PREFIX}{module}.lora_A.weight"] = entry.a.contiguous()
        tensors[f"{PEFT_PREFIX}{module}.lora_B.weight"] = (entry.b.float() * lam).to(entry.dtype).contiguous()
        ranks[module] = entry.rank
    if not ranks:
        raise ValueError(
            "nothing to export: no entry is a LowRankTensor of a CLIP vision linear weight "
            f"({', '.join(LORA_LINEAR_NAMES)} or {A.PROJECTION_KEY}); run compression.low_rank first."
        )
    return tensors, ranks, lost


def lora_config(ranks: Mapping[str, int], base_model_name_or_path: str | None = None) -> dict:
    """The `adapter_config.json` content: a peft `LoraConfig` with `r` the largest rank, `lora_alpha = r`, and
    `rank_pattern`/`alpha_pattern` (equal, so every scaling is 1) for the modules of smaller rank."""
    r = max(ranks.values())
    smaller = {re.escape(m): k for m, k in sorted(ranks.items()) if k != r}
    return {
        "peft_type": "LORA",
        "task_type": None,
        "base_model_name_or_path": base_model_name_or_path,
        "r": r,
        "lora_alpha": r,
        "rank_pattern": smaller,
        "alpha_pattern": dict(smaller),
        "target_modules": sorted(ranks),
        "lora_dropout": 0.0,
        "bias": "none",
        "fan_in_fan_out": False,
        "use_rslora": False,
        "use_dora": False,
        "init_lora_weights": True,
        "modules_to_save": None,
        "inference_mode": True,
    }


def export_peft_lora(
    factors: Mapping[str, Entry],
    base_model_name_or_path: str | None,
    output_dir: str | os.PathLike,
    lam: float = 1.0,
    base_model: torch.nn.Module | Iterable[str] | None = None,
) -> list[str]:
    r"""
    Write a PEFT LoRA adapter (`adapter_config.json`, `adapter_model.safetensors`) equivalent to applying the
    covered part of a low-rank vector with `lam`: `PeftModel.from_pretrained(base, output_dir)` then
    `merge_and_unload()` gives `base + lam * b @ a` on every covered linear weight, the base elsewhere.

    Args:
        factors (`dict[str, Entry]`): A vector from [`~compression.low_rank`] (canonical names).
        base_model_name_or_path (`str`, *optional*): Recorded in the config, as peft does.
        output_dir (`str` or `os.PathLike`): Created if missing; existing adapter files there are replaced.
        lam (`float`, *optional*, defaults to 1.0): The scaling λ of the vector.
        base_model (`nn.Module` or names, *optional*): See [`lora_state_dict`].

    Returns:
        `list[str]`: the canonical keys that LoRA does not carry (biases, layer norms, embeddings, dense entries):
        what is lost, to state beside the adapter.

    Raises:
        `ValueError`: see [`lora_state_dict`]. Nothing is written when it raises.
    """
    tensors, ranks, lost = lora_state_dict(factors, lam, base_model)
    config = lora_config(ranks, base_model_name_or_path)
    folder = Path(output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, folder / ADAPTER_WEIGHTS_NAME, metadata={"format": "pt"})
    (folder / ADAPTER_CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    logger.info("LoRA export covers %d linear layers; %d tensors not expressible as LoRA", len(ranks), len(lost))
    return lost


__all__ = [
    "ADAPTER_CONFIG_NAME",
    "ADAPTER_WEIGHTS_NAME",
    "LORA_LINEAR_NAMES",
    "export_peft_lora",
    "lora_config",
    "lora_module",
    "lora_state_dict",
]
