"""Perturbation-based faithfulness metrics: deletion / insertion AUC and Fidelity± over sparsity.

All three metrics rank the patches of each image by its attribution for the explained (target) class,
mask patches in that order, and record the target-class probability of the masked images. Every masked
image of every image and every step is built and evaluated in chunks of `batch_size` images: there is no
Python loop per step or per image, only one per forward chunk.

Conventions shared by every function here:

- Patches are numbered row-major over the `(H // patch_size, W // patch_size)` grid, as a ViT flattens
  its patch tokens: patch `m` covers rows `(m // (W // p)) * p ...` and columns `(m % (W // p)) * p ...`.
- Masking a patch sets all of its pixels (all channels) to `baseline`: a float, or a tensor broadcastable to
  `pixel_values` (`(B, C, H, W)`), e.g. per-channel means `(1, C, 1, 1)` or a blurred copy of each image for
  the RISE-style insertion baseline.
- The patch order is decreasing attribution, ties broken by the lower patch index (a stable sort), so the
  metrics are deterministic.
- `forward_fn` takes `(N, C, H, W)` pixel values and returns logits `(N, num_classes)` (a tensor or an object
  with a `.logits` attribute, such as a `transformers` `ModelOutput`). It is called under `torch.no_grad()`;
  put the model in `eval()` mode yourself.

The masking itself is [`~hf_explvec.attribution.patches.mask_patches`] (the same code Kernel SHAP masks with), and the
input checks are those of `hf_explvec.evaluation._checks`, shared with the agreement metrics.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..attribution._forward import check_class_range, logits_of, score, select_targets
from ..attribution.patches import make_baseline, mask_patches
from ._checks import as_float_matrix, as_labels, as_tensor, check_positive_int, check_reduction, reduce

logger = logging.getLogger(__name__)

__all__ = [
    "FidelityResult",
    "PerturbationCurve",
    "apply_patch_mask",
    "deletion_auc",
    "fidelity_sparsity_auc",
    "insertion_auc",
    "perturbation_curve",
]


# ----------------------------------------------------------------------------------------------------------
# Patch masking and ranking
# ----------------------------------------------------------------------------------------------------------


def _patch_grid(pixel_values: torch.Tensor, patch_size: Any) -> tuple[int, int, int]:
    """Validates `(B, C, H, W)` pixels and the patch size; returns `(p, H // p, W // p)`."""
    patch_size = check_positive_int(patch_size, "patch_size")
    if pixel_values.ndim != 4:
        raise ValueError(
            f"`pixel_values` must have shape (batch_size, channels, height, width), got {tuple(pixel_values.shape)}."
        )
    height, width = pixel_values.shape[-2:]
    if height % patch_size or width % patch_size:
        raise ValueError(f"`patch_size` ({patch_size}) must divide the image height and width, got {height}x{width}.")
    return patch_size, height // patch_size, width // patch_size


def apply_patch_mask(
    pixel_values: torch.Tensor,
    keep: torch.Tensor,
    patch_size: int,
    baseline: float | str | torch.Tensor = 0.0,
) -> torch.Tensor:
    """Replaces the pixels of the patches not kept by `baseline`.

    Args:
        pixel_values (`torch.Tensor` of shape `(N, C, H, W)`):
            Images; `H` and `W` must be multiples of `patch_size`.
        keep (`torch.Tensor` of shape `(N, M)`, dtype bool):
            `True` keeps patch `m` of image `n`; `M = (H // patch_size) * (W // patch_size)`, row-major.
        patch_size (`int`):
            Side of a square patch in pixels.
        baseline (`float`, `str` or `torch.Tensor`, *optional*, defaults to 0.0):
            What masked patches show: a number, `"mean"`, `"blur"` or a tensor broadcastable to `(N, C, H, W)`
            (see [`~hf_explvec.attribution.make_baseline`]).

    Returns:
        `torch.Tensor` of shape `(N, C, H, W)`: a new tensor; the inputs are not modified.
    """
    if not isinstance(pixel_values, torch.Tensor):
        raise TypeError(f"`pixel_values` must be a torch.Tensor, got {type(pixel_values).__name__}.")
    patch_size, grid_h, grid_w = _patch_grid(pixel_values, patch_size)
    if not isinstance(keep, torch.Tensor) or keep.dtype != torch.bool:
        raise TypeError(f"`keep` must be a bool torch.Tensor, got {getattr(keep, 'dtype', type(keep).__name__)}.")
    expected = (pixel_values.shape[0], grid_h * grid_w)
    if tuple(keep.shape) != expected:
        raise ValueError(f"`keep` must have shape {expected}, got {tuple(keep.shape)}.")
    rows = torch.arange(keep.shape[0], device=pixel_values.device)
    return mask_patches(
        pixel_values.contiguous(),
        keep.to(pixel_values.device),
        rows,
        make_baseline(pixel_values, baseline, patch_size),
        patch_size,
    )


def _patch_ranks(attributions: torch.Tensor) -> torch.Tensor:
    """`(B, M)` position of each patch in decreasing-attribution order (0 = most important); stable ties."""
    order = torch.argsort(attributions, dim=-1, descending=True, stable=True)
    ranks = torch.empty_like(order)
    positions = torch.arange(order.shape[-1], device=order.device).expand_as(order)
    return ranks.scatter_(-1, order, positions)


def _grid_counts(num_patches: int, steps: int | None) -> torch.Tensor:
    """Patch counts `round(j * M / steps)` for `j = 0..steps` (every count `0..M` when `steps` is None)."""
    if steps is None:
        return torch.arange(num_patches + 1)
    steps = check_positive_int(steps, "steps")
    if steps > num_patches:
        raise ValueError(f"`steps` must be in [1, num_patches={num_patches}], got {steps}.")
    j = torch.arange(steps + 1)
    return (2 * j * num_patches + steps) // (2 * steps)  # round half up, exact integer arithmetic


def _prepare_inputs(
    pixel_values: Any, attributions: Any, target: Any, patch_size: Any, baseline: Any
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int, int, int, torch.Tensor]:
    """Validates the common inputs; returns pixels, ranks (B, M), target (B,), p, grid, baseline view."""
    if not isinstance(pixel_values, torch.Tensor):
        raise TypeError(f"`pixel_values` must be a torch.Tensor, got {type(pixel_values).__name__}.")
    if not pixel_values.is_floating_point():
        raise TypeError(f"`pixel_values` must be floating point, got dtype {pixel_values.dtype}.")
    patch_size, grid_h, grid_w = _patch_grid(pixel_values, patch_size)
    batch_size, num_patches = pixel_values.shape[0], grid_h * grid_w
    if batch_size == 0:
        raise ValueError("`pixel_values` must hold at least one image, got batch size 0.")
    target = as_labels(target, "target", batch_size)
    attributions = as_tensor(attributions, "attributions")
    if attributions.ndim == 3:  # (B, C, M): pick the explained class of each image
        if attributions.shape[0] != batch_size:
            raise ValueError(
                f"`attributions` must have batch size {batch_size}, got shape {tuple(attributions.shape)}."
            )
        if int(target.max()) >= attributions.shape[1]:
            raise ValueError(
                f"`target` must hold class ids in [0, {attributions.shape[1] - 1}] to index `attributions` of shape "
                f"{tuple(attributions.shape)}, got max {int(target.max())}."
            )
        attributions = attributions[
            torch.arange(batch_size, device=attributions.device), target.to(attributions.device)
        ]
    attributions = as_float_matrix(attributions, "attributions")
    if tuple(attributions.shape) != (batch_size, num_patches):
        raise ValueError(
            f"`attributions` must have shape ({batch_size}, {num_patches}) or ({batch_size}, num_classes, "
            f"{num_patches}) for {tuple(pixel_values.shape[-2:])} images with patch_size={patch_size}, "
            f"got {tuple(attributions.shape)}."
        )
    baseline = make_baseline(pixel_values, baseline, patch_size)
    return pixel_values.contiguous(), _patch_ranks(attributions), target, patch_size, grid_h, grid_w, baseline


@torch.no_grad()
def _masked_target_probs(
    forward_fn: Callable[[torch.Tensor], Any],
    pixel_values: torch.Tensor,
    keep: torch.Tensor,
    target: torch.Tensor,
    patch_size: int,
    grid_h: int,
    grid_w: int,
    baseline: float | torch.Tensor,
    batch_size: int,
    apply_softmax: bool,
) -> torch.Tensor:
    """Target-class scores of every masked image; `keep` is `(B, S, M)` bool, the result `(B, S)` float64."""
    if not callable(forward_fn):
        raise TypeError(f"`forward_fn` must be callable, got {type(forward_fn).__name__}.")
    num_images, num_masks, num_patches = keep.shape
    flat_keep = keep.reshape(num_images * num_masks, num_patches)
    total = flat_keep.shape[0]
    device = pixel_values.device
    scores = []
    for start in range(0, total, batch_size):
        rows = torch.arange(start, min(start + batch_size, total), device=device)
        image_idx = rows // num_masks
        masked = mask_patches(
            pixel_values, flat_keep[start : start + len(rows)].to(device), image_idx, baseline, patch_size
        )
        logits = logits_of(forward_fn(masked), len(rows), name="`forward_fn`")
        check_class_range(target, logits.shape[1], name="`target`")
        values = score(logits, "prob") if apply_softmax else logits
        scores.append(select_targets(values, target, image_idx).to("cpu", torch.float64))
    logger.debug("evaluated %d masked images in chunks of %d", total, batch_size)
    return torch.cat(scores).view(num_images, num_masks)


def _trapezoid(y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Trapezoid rule along the last dimension of `y` `(..., S)` over increasing `x` `(S,)`."""
    return torch.trapezoid(y, x.to(y.dtype), dim=-1)


# ----------------------------------------------------------------------------------------------------------
# Deletion / insertion
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PerturbationCurve:
    """A deletion or insertion curve of a batch of images.

    Args:
        fractions (`torch.Tensor` of shape `(S,)`, float64):
            Fraction of patches removed (deletion) or inserted (insertion) at each step, from 0 to 1.
        probabilities (`torch.Tensor` of shape `(B, S)`, float64):
            Target-class probability (or raw score with `apply_softmax=False`) at each step.
        auc (`torch.Tensor` of shape `(B,)`, float64):
            Trapezoid-rule area under each image's curve over `fractions`.
    """

    fractions: torch.Tensor
    probabilities: torch.Tensor
    auc: torch.Tensor


def perturbation_curve(
    forward_fn: Callable[[torch.Tensor], Any],
    pixel_values: torch.Tensor,
    attributions: torch.Tensor,
    target: torch.Tensor | int,
    *,
    patch_size: int,
    mode: str = "deletion",
    baseline: float | str | torch.Tensor = 0.0,
    steps: int | None = None,
    batch_size: int = 64,
    apply_softmax: bool = True,
) -> PerturbationCurve:
    """Deletion or insertion curve (Petsiuk et al., 2018, RISE) over patches ranked by attribution.

    With the patches of image `i` sorted by decreasing attribution and `k_0 = 0 < k_1 < ... < k_S' = M` patch
    counts (`k_j = round(j * M / steps)`, or every count `0..M` when `steps` is None):

    - deletion: `y_ij = p(target_i | x_i with its top-k_j patches set to baseline)`, starting from the intact
      image and ending with an all-baseline image;
    - insertion: `y_ij = p(target_i | baseline with the top-k_j patches of x_i restored)`, the reverse path.

    The area is `AUC_i = trapezoid(y_i, k / M)` over the fraction of patches in [0, 1]. A faithful explanation
    gives a *low* deletion AUC and a *high* insertion AUC.

    Args:
        forward_fn (`Callable[[torch.Tensor], torch.Tensor]`):
            Maps `(N, C, H, W)` pixels to logits `(N, num_classes)` (or an object with `.logits`).
        pixel_values (`torch.Tensor` of shape `(B, C, H, W)`):
            The images; `H` and `W` must be multiples of `patch_size`.
        attributions (`torch.Tensor` of shape `(B, M)` or `(B, num_classes, M)`):
            Patch attributions for the target class, or for every class (the target row is then selected).
        target (`torch.Tensor` of shape `(B,)` or `int`):
            Explained class of each image.
        patch_size (`int`):
            Side of a square patch in pixels; `M = (H // patch_size) * (W // patch_size)`, row-major.
        mode (`str`, *optional*, defaults to `"deletion"`):
            `"deletion"` or `"insertion"`.
        baseline (`float`, `str` or `torch.Tensor`, *optional*, defaults to 0.0):
            What masked patches show: a number, `"mean"`, `"blur"` (the original RISE insertion starts from a
            blurred image) or a tensor broadcastable to `(B, C, H, W)` (see [`~hf_explvec.attribution.make_baseline`]).
        steps (`int`, *optional*):
            Number of steps `S' <= M`; several patches per step when `S' < M`. Default: one patch per step.
        batch_size (`int`, *optional*, defaults to 64):
            Masked images per `forward_fn` call; the result does not depend on it.
        apply_softmax (`bool`, *optional*, defaults to `True`):
            Softmax the logits; with `False` the target's raw output is used (e.g. a model returning probabilities).

    Returns:
        [`PerturbationCurve`] with `fractions` `(S'+1,)`, `probabilities` `(B, S'+1)` and `auc` `(B,)`.
    """
    if mode not in ("deletion", "insertion"):
        raise ValueError(f"`mode` must be 'deletion' or 'insertion', got {mode!r}.")
    batch_size = check_positive_int(batch_size, "batch_size")
    pixel_values, ranks, target, patch_size, grid_h, grid_w, baseline = _prepare_inputs(
        pixel_values, attributions, target, patch_size, baseline
    )
    num_patches = grid_h * grid_w
    counts = _grid_counts(num_patches, steps).to(ranks.device)
    if mode == "deletion":  # keep every patch whose rank is at least the number removed
        keep = ranks[:, None, :] >= counts[None, :, None]
    else:  # keep (insert) the patches ranked before the count
        keep = ranks[:, None, :] < counts[None, :, None]
    probs = _masked_target_probs(
        forward_fn, pixel_values, keep, target, patch_size, grid_h, grid_w, baseline, batch_size, apply_softmax
    )
    fractions = counts.to("cpu", torch.float64) / num_patches
    return PerturbationCurve(fractions=fractions, probabilities=probs, auc=_trapezoid(probs, fractions))


def _curve_auc(
    mode: str,
    forward_fn: Callable[[torch.Tensor], Any],
    pixel_values: torch.Tensor,
    attributions: torch.Tensor,
    target: torch.Tensor | int,
    patch_size: int,
    baseline: float | str | torch.Tensor,
    steps: int | None,
    batch_size: int,
    apply_softmax: bool,
    reduction: str,
) -> float | torch.Tensor:
    """The one implementation behind [`deletion_auc`] and [`insertion_auc`]: the area of a [`perturbation_curve`]."""
    check_reduction(reduction)
    curve = perturbation_curve(
        forward_fn, pixel_values, attributions, target, patch_size=patch_size, mode=mode,
        baseline=baseline, steps=steps, batch_size=batch_size, apply_softmax=apply_softmax,
    )  # fmt: skip
    return reduce(curve.auc, reduction)


def deletion_auc(
    forward_fn: Callable[[torch.Tensor], Any],
    pixel_values: torch.Tensor,
    attributions: torch.Tensor,
    target: torch.Tensor | int,
    *,
    patch_size: int,
    baseline: float | str | torch.Tensor = 0.0,
    steps: int | None = None,
    batch_size: int = 64,
    apply_softmax: bool = True,
    reduction: str = "mean",
) -> float | torch.Tensor:
    """Deletion AUC: area under the target probability as the most important patches are removed. Lower is better.

    See [`perturbation_curve`] for the exact definition and every argument except `reduction`.

    Args:
        reduction (`str`, *optional*, defaults to `"mean"`):
            `"mean"`: a Python float, the mean AUC over images; `"none"`: a `(B,)` float64 tensor.

    Returns:
        `float` or `torch.Tensor` of shape `(B,)`.
    """
    return _curve_auc("deletion", forward_fn, pixel_values, attributions, target, patch_size, baseline, steps,
                      batch_size, apply_softmax, reduction)  # fmt: skip


def insertion_auc(
    forward_fn: Callable[[torch.Tensor], Any],
    pixel_values: torch.Tensor,
    attributions: torch.Tensor,
    target: torch.Tensor | int,
    *,
    patch_size: int,
    baseline: float | str | torch.Tensor = 0.0,
    steps: int | None = None,
    batch_size: int = 64,
    apply_softmax: bool = True,
    reduction: str = "mean",
) -> float | torch.Tensor:
    """Insertion AUC: area under the target probability as the most important patches are restored. Higher is better.

    See [`perturbation_curve`] for the exact definition and every argument except `reduction`.

    Args:
        reduction (`str`, *optional*, defaults to `"mean"`):
            `"mean"`: a Python float, the mean AUC over images; `"none"`: a `(B,)` float64 tensor.

    Returns:
        `float` or `torch.Tensor` of shape `(B,)`.
    """
    return _curve_auc("insertion", forward_fn, pixel_values, attributions, target, patch_size, baseline, steps,
                      batch_size, apply_softmax, reduction)  # fmt: skip


# ----------------------------------------------------------------------------------------------------------
# Fidelity+ / Fidelity- over sparsity
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FidelityResult:
    """Fidelity+ and Fidelity− curves over sparsity and their areas.

    Args:
        sparsity (`torch.Tensor` of shape `(S,)`, float64):
            Achieved sparsity `1 - k / M` of each level, increasing from 0 (all patches important) to 1.
        fidelity_plus (`torch.Tensor` of shape `(B, S)`, float64):
            `p(x) - p(x without its top-k patches)` per image and level (higher = more necessary).
        fidelity_minus (`torch.Tensor` of shape `(B, S)`, float64):
            `p(x) - p(only the top-k patches of x)` per image and level (lower = more sufficient).
        fidelity_plus_auc (`float`):
            Mean over images of the trapezoid area of `fidelity_plus` over `sparsity`.
        fidelity_minus_auc (`float`):
            Mean over images of the trapezoid area of `fidelity_minus` over `sparsity`.
    """

    sparsity: torch.Tensor
    fidelity_plus: torch.Tensor
    fidelity_minus: torch.Tensor
    fidelity_plus_auc: float
    fidelity_minus_auc: float


def _sparsity_counts(num_patches: int, sparsity_levels: int | Sequence[float]) -> torch.Tensor:
    """Numbers of important patches `k`, decreasing, so that the achieved sparsity `1 - k / M` increases."""
    if isinstance(sparsity_levels, (int, np.integer)) and not isinstance(sparsity_levels, bool):
        if not 1 <= sparsity_levels <= num_patches:
            raise ValueError(
                f"`sparsity_levels` as an int must be in [1, num_patches={num_patches}], got {sparsity_levels}."
            )
        return _grid_counts(num_patches, int(sparsity_levels)).flip(0)
    levels = as_tensor(sparsity_levels, "sparsity_levels")
    if levels.ndim != 1 or levels.numel() < 2 or levels.dtype == torch.bool:
        raise ValueError(
            f"`sparsity_levels` must be an int or a 1-D sequence of at least 2 floats, got shape {tuple(levels.shape)}."
        )
    levels = levels.to(torch.float64)
    if not torch.isfinite(levels).all() or levels.min() < 0 or levels.max() > 1:
        raise ValueError(f"`sparsity_levels` must lie in [0, 1], got {levels.tolist()}.")
    counts = torch.floor((1.0 - levels) * num_patches + 0.5).to(torch.int64)  # round half up
    return torch.sort(counts, descending=True).values


def fidelity_sparsity_auc(
    forward_fn: Callable[[torch.Tensor], Any],
    pixel_values: torch.Tensor,
    attributions: torch.Tensor,
    target: torch.Tensor | int,
    *,
    patch_size: int,
    baseline: float | str | torch.Tensor = 0.0,
    sparsity_levels: int | Sequence[float] = 10,
    batch_size: int = 64,
    apply_softmax: bool = True,
) -> FidelityResult:
    """Fidelity+ (necessity) and Fidelity− (sufficiency) as functions of sparsity, and their areas.

    The probability form of Fidelity± (Amara et al., 2022, GraphFramEx; Yuan et al., 2022) over image patches.
    For image `x` with target `y`, `M` patches ranked by decreasing attribution and a sparsity level `s`, the
    top `k(s) = round((1 - s) * M)` patches are the *important* ones, and with `p(.) = softmax(f(.))_y`:

        Fid+(s) = p(x) - p(x with its top-k(s) patches set to baseline)
        Fid-(s) = p(x) - p(x with every patch except its top-k(s) set to baseline)

    Each curve is taken at the achieved sparsities `s_j = 1 - k_j / M` (increasing) and integrated with the
    trapezoid rule, `AUC± = mean_i trapezoid(Fid±_i(s_j), s_j)`; with a grid covering [0, 1] the area lies in
    [-1, 1]. Higher `fidelity_plus_auc` and lower `fidelity_minus_auc` are better. On the same grid,
    `Fid+ AUC = p(x) - deletion AUC` and `Fid- AUC = p(x) - insertion AUC` image by image.

    Args:
        forward_fn, pixel_values, attributions, target, patch_size, baseline, batch_size, apply_softmax:
            As in [`perturbation_curve`].
        sparsity_levels (`int` or `Sequence[float]`, *optional*, defaults to 10):
            An int `n` in `[1, M]` gives the grid `s = 0, 1/n, ..., 1`; a sequence gives explicit levels in
            [0, 1] (at least 2; the area only covers the span of the levels given).

    Returns:
        [`FidelityResult`] with the sparsity grid `(S,)`, the per-image curves `(B, S)` and both mean areas.
    """
    batch_size = check_positive_int(batch_size, "batch_size")
    pixel_values, ranks, target, patch_size, grid_h, grid_w, baseline = _prepare_inputs(
        pixel_values, attributions, target, patch_size, baseline
    )
    num_patches = grid_h * grid_w
    counts = _sparsity_counts(num_patches, sparsity_levels).to(ranks.device)
    num_levels = counts.shape[0]
    removed = ranks[:, None, :] >= counts[None, :, None]  # Fid+: top-k removed
    only_top = ranks[:, None, :] < counts[None, :, None]  # Fid-: only top-k kept
    intact = torch.ones_like(ranks, dtype=torch.bool)[:, None, :]
    keep = torch.cat([intact, removed, only_top], dim=1)  # (B, 1 + 2S, M): one pass over all masks
    probs = _masked_target_probs(
        forward_fn, pixel_values, keep, target, patch_size, grid_h, grid_w, baseline, batch_size, apply_softmax
    )
    full = probs[:, :1]
    fid_plus = full - probs[:, 1 : 1 + num_levels]
    fid_minus = full - probs[:, 1 + num_levels :]
    sparsity = 1.0 - counts.to("cpu", torch.float64) / num_patches
    return FidelityResult(
        sparsity=sparsity,
        fidelity_plus=fid_plus,
        fidelity_minus=fid_minus,
        fidelity_plus_auc=float(_trapezoid(fid_plus, sparsity).mean()),
        fidelity_minus_auc=float(_trapezoid(fid_minus, sparsity).mean()),
    )
