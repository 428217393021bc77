"""Pure tensor functions over state dicts for task arithmetic: no models, no files, no Hub.

Names are canonicalised to the layout of transformers' `CLIPVisionModelWithProjection`: the vision tower under
`vision_model.` (`vision_model.embeddings.*`, `vision_model.pre_layrnorm.*`, `vision_model.encoder.*`,
`vision_model.post_layernorm.*`) and the projection as `visual_projection.weight`. The tower is found by its anchor
`embeddings.patch_embedding.weight`, whatever prefix it has (`""` in a `CLIPVisionModel`, `vision_model.` in a
`CLIPModel`, `model.vision_model.` in a wrapper), so the same vector applies to every CLIP model class.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping

import torch

VISION_PREFIX = "vision_model."
PROJECTION_KEY = "visual_projection.weight"
_ANCHOR = "embeddings.patch_embedding.weight"
_TOWER_ROOTS = ("embeddings.", "pre_layrnorm.", "encoder.", "post_layernorm.")


class IncompatibleKeysError(ValueError):
    """Two sets of tensors (a vector and a model, or two vectors) do not line up; the message lists the keys."""

    def __init__(self, message: str, missing=(), unexpected=(), mismatched=()):
        self.missing, self.unexpected, self.mismatched = list(missing), list(unexpected), list(mismatched)
        parts = [message]
        if self.missing:
            parts.append(f"missing ({len(self.missing)}): {preview(self.missing)}")
        if self.unexpected:
            parts.append(f"unexpected ({len(self.unexpected)}): {preview(self.unexpected)}")
        if self.mismatched:
            shown = [f"{k}: {tuple(a)} vs {tuple(b)}" for k, a, b in self.mismatched]
            parts.append(f"shape mismatch ({len(shown)}): {preview(shown)}")
        super().__init__("\n  ".join(parts))


def preview(items: list, limit: int = 20) -> str:
    """The first `limit` items, comma-separated, with a count of the rest (for error messages)."""
    text = ", ".join(map(str, items[:limit]))
    return text + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")


def canonical_vision_names(names: Iterable[str]) -> dict[str, str]:
    """
    Map the CLIP vision-tower and visual-projection entries among `names` to their canonical names.

    Args:
        names (`Iterable[str]`): Parameter or state-dict names of a model.

    Returns:
        `dict[str, str]`: canonical name -> original name. Empty when there is no CLIP vision tower. Text tower,
        classifier, head buffers and anything else outside the tower and projection are left out.

    Raises:
        `ValueError`: if several vision towers are found.
    """
    names = list(names)
    prefixes = sorted({name[: -len(_ANCHOR)] for name in names if name.endswith(_ANCHOR)})
    prefixes = [p for p in prefixes if p == "" or p.endswith(".")]
    if not prefixes:
        return {}
    if len(prefixes) > 1:
        raise ValueError(f"found {len(prefixes)} CLIP vision towers, at prefixes {prefixes}; expected one.")
    prefix = prefixes[0]
    mapping = {}
    for name in names:
        rest = name[len(prefix) :]
        if name.startswith(prefix) and rest.startswith(_TOWER_ROOTS):
            mapping[VISION_PREFIX + rest] = name
    parent = prefix[: -len(VISION_PREFIX)] if prefix.endswith(VISION_PREFIX) else prefix
    if parent + PROJECTION_KEY in names:
        mapping[PROJECTION_KEY] = parent + PROJECTION_KEY
    return mapping


def vision_state(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """
    The floating-point tensors of the CLIP vision tower and visual projection, under canonical names (no copies).
    Integer buffers such as `position_ids` are left out.

    Raises:
        `ValueError`: if `state_dict` holds no CLIP vision tower.
    """
    mapping = canonical_vision_names(state_dict.keys())
    if not mapping:
        raise ValueError(
            f"no CLIP vision tower found: no key ends with '{_ANCHOR}' among {preview(sorted(state_dict))}."
        )
    return {
        canonical: state_dict[name]
        for canonical, name in mapping.items()
        if torch.is_tensor(state_dict[name]) and state_dict[name].is_floating_point()
    }


def compare_shapes(
    expected: Mapping[str, torch.Size], actual: Mapping[str, torch.Size]
) -> tuple[list[str], list[str], list[tuple[str, torch.Size, torch.Size]]]:
    """Keys of `expected` missing from `actual`, keys of `actual` not in `expected`, and common keys whose shapes
    differ, as `(name, expected_shape, actual_shape)`; each sorted by name."""
    missing = sorted(set(expected) - set(actual))
    unexpected = sorted(set(actual) - set(expected))
    mismatched = [(k, expected[k], actual[k]) for k in sorted(set(expected) & set(actual)) if expected[k] != actual[k]]
    return missing, unexpected, mismatched


def check_same_layout(
    a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor], what: str = "the two state dicts"
) -> None:
    """Raise [`IncompatibleKeysError`] unless `a` and `b` have the same keys with the same shapes."""
    missing, unexpected, mismatched = compare_shapes(
        {k: v.shape for k, v in a.items()}, {k: v.shape for k, v in b.items()}
    )
    if missing or unexpected or mismatched:
        raise IncompatibleKeysError(
            f"{what} do not have the same tensors", missing=missing, unexpected=unexpected, mismatched=mismatched
        )


def subtract(finetuned: Mapping[str, torch.Tensor], base: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`finetuned - base` key by key, computed in float32 (the layouts must match)."""
    check_same_layout(base, finetuned, "the base and fine-tuned models")
    return {k: finetuned[k].detach().float() - base[k].detach().float() for k in base}


def combine(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor], op=torch.add) -> dict[str, torch.Tensor]:
    """`op(a[k], b[k])` key by key, e.g. `torch.add` or `torch.sub` (the layouts must match)."""
    check_same_layout(a, b, "the two task vectors")
    return {k: op(a[k], b[k]) for k in a}


def scale(a: Mapping[str, torch.Tensor], factor: float) -> dict[str, torch.Tensor]:
    """`factor * a` key by key."""
    return {k: v * factor for k, v in a.items()}


def dot(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> float:
    """Inner product of two state dicts seen as one flat vector, accumulated in float64."""
    check_same_layout(a, b, "the two task vectors")
    return math.fsum(float(torch.dot(a[k].flatten().double(), b[k].flatten().double())) for k in a)


def global_norm(a: Mapping[str, torch.Tensor]) -> float:
    """L2 norm of a state dict seen as one flat vector, accumulated in float64."""
    return math.sqrt(math.fsum(float(torch.linalg.vector_norm(v.double())) ** 2 for v in a.values()))


def nonfinite_keys(a: Mapping[str, torch.Tensor]) -> list[str]:
    """Names of the tensors holding a NaN or an infinity, sorted."""
    return sorted(k for k, v in a.items() if not bool(torch.isfinite(v).all()))


def add_scaled_(target: torch.Tensor, delta: torch.Tensor, lam: float) -> None:
    """`target += lam * delta` in place, computed in float32 and written in `target`'s dtype and on its device."""
    if target.dtype == torch.float32:
        target.add_(delta.to(target.device, torch.float32), alpha=lam)
    else:
        work = target.to(torch.float32)
        work.add_(delta.to(target.device, torch.float32), alpha=lam)
        target.copy_(work)


def scaled_sum_is_finite(target: torch.Tensor, delta: torch.Tensor, lam: float) -> bool:
    r"""
    Whether [`add_scaled_`]`(target, delta, lam)` would leave every entry of `target` finite in its dtype, without
    writing anything. A cheap bound (max |target| + |lam| · max |delta|, in float64) decides almost always; only
    near the dtype's limit is the update computed into a temporary and checked exactly.

    Args:
        target (`torch.Tensor`): A floating-point tensor (any dtype, any device except meta).
        delta (`torch.Tensor`): Same shape, any floating dtype.
        lam (`float`): The scaling factor (finite).
    """
    limit = torch.finfo(target.dtype).max
    if abs(lam) > torch.finfo(torch.float32).max:  # the update is computed in float32
        return False
    if target.numel() == 0:
        return True
    bound = float(target.detach().abs().max()) + abs(lam) * float(delta.detach().abs().max())
    if bound < 0.5 * limit:  # NaN compares false and falls through to the exact check
        return True
    work = target.detach().to(torch.float32, copy=True)  # a copy also when target is already float32
    work.add_(delta.detach().to(target.device, torch.float32), alpha=lam)
    return bool(torch.isfinite(work.to(target.dtype)).all())


def layout_fingerprint(a: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 of the sorted `name:shape` lines: equal for vectors that can be added or applied to the same model."""
    lines = "\n".join(f"{k}:{','.join(map(str, v.shape))}" for k, v in sorted(a.items()))
    return hashlib.sha256(lines.encode()).hexdigest()


__all__ = [
    "PROJECTION_KEY",
    "VISION_PREFIX",
    "IncompatibleKeysError",
    "add_scaled_",
    "canonical_vision_names",
    "check_same_layout",
    "combine",
    "compare_shapes",
    "dot",
    "global_norm",
    "layout_fingerprint",
    "nonfinite_keys",
    "preview",
    "scale",
    "scaled_sum_is_finite",
    "subtract",
    "vision_state",
]
