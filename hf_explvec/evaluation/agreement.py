"""Accuracy and agreement of explanations with Kernel SHAP (E-RMSE, IoU@K, Spearman).

Agreement with Kernel SHAP (the reference explanation of the paper, arXiv 2507.04380):

- [`e_rmse`]: root-mean-square error over the patches, per image, then the mean over images;
- [`iou_at_k`]: intersection over union of the top-K patch sets, mean over images;
- [`spearman`]: Spearman rank correlation over the patches (average ranks for ties), mean over images.

Faithfulness to the model (perturbation metrics) is in `hf_explvec.evaluation.perturbation`, the measurement of a
model on a split in `hf_explvec.evaluation.protocol`; all are re-exported by `hf_explvec.evaluation`.

All functions take batched tensors (`(B, M)`: `B` images, `M` patches; a numpy array or a rectangular list
works too), compute in float64 without per-image Python loops, and return a Python float (`reduction="mean"`)
or a `(B,)` float64 CPU tensor (`reduction="none"`). Bad input raises `TypeError` or `ValueError` naming the
expected and the actual value.

The `evaluate` modules that wrap these metrics are in `hf_explvec.evaluation.metrics` ([`load_metric`]).
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

import torch

from ._checks import (
    as_float_matrix,
    as_labels,
    as_tensor,
    check_positive_int,
    check_reduction,
    check_same_shape,
    reduce,
)

logger = logging.getLogger(__name__)

__all__ = ["accuracy", "e_rmse", "iou_at_k", "select_target", "spearman"]


def _pair(attributions: Any, shap_values: Any) -> tuple[torch.Tensor, torch.Tensor]:
    a = as_float_matrix(attributions, "attributions")
    s = as_float_matrix(shap_values, "shap_values")
    check_same_shape(a, s, "attributions", "shap_values")
    return a, s.to(a.device)


# ----------------------------------------------------------------------------------------------------------
# Accuracy and class selection
# ----------------------------------------------------------------------------------------------------------


def accuracy(logits_or_preds: Any, labels: Any) -> float:
    """Top-1 accuracy: the fraction of images whose predicted class equals the label.

    Args:
        logits_or_preds (`torch.Tensor` of shape `(B, C)` or `(B,)`):
            Logits or probabilities (the prediction is their argmax over the last dimension; ties go to the
            lowest class id), or integer predicted class ids.
        labels (`torch.Tensor` of shape `(B,)`):
            Integer class ids.

    Returns:
        `float` in [0, 1].
    """
    scores = as_tensor(logits_or_preds, "logits_or_preds")
    if scores.ndim == 2:
        if scores.shape[1] == 0:
            raise ValueError(f"`logits_or_preds` must have at least one class, got shape {tuple(scores.shape)}.")
        if scores.is_complex() or scores.dtype == torch.bool:
            raise TypeError(f"`logits_or_preds` as logits must be real numbers, got dtype {scores.dtype}.")
        if scores.is_floating_point() and not torch.isfinite(scores).all():
            rows = torch.nonzero(~torch.isfinite(scores).all(dim=1)).flatten().tolist()
            raise ValueError(f"`logits_or_preds` contains NaN or infinite values (rows {rows[:10]}).")
        preds = scores.argmax(dim=-1)
    elif scores.ndim == 1:
        if scores.is_floating_point() or scores.is_complex() or scores.dtype == torch.bool:
            raise TypeError(
                f"`logits_or_preds` of shape (B,) must hold integer class ids, got dtype {scores.dtype}; "
                "pass logits of shape (B, C) instead."
            )
        preds = scores
    else:
        raise ValueError(
            f"`logits_or_preds` must have shape (batch_size, num_classes) or (batch_size,), got {tuple(scores.shape)}."
        )
    if preds.shape[0] == 0:
        raise ValueError("`logits_or_preds` must hold at least one example, got batch size 0.")
    labels = as_labels(labels, "labels", preds.shape[0])
    return float((preds.to(labels.device).to(torch.int64) == labels).to(torch.float64).mean())


def select_target(attributions: torch.Tensor, target: torch.Tensor | int) -> torch.Tensor:
    """Picks each image's explained-class row of class-wise patch attributions.

    Args:
        attributions (`torch.Tensor` of shape `(B, C, M)`):
            Patch attributions for every class, as the self-explaining model outputs them.
        target (`torch.Tensor` of shape `(B,)` or `int`):
            Class to explain for each image (e.g. the label or the predicted class).

    Returns:
        `torch.Tensor` of shape `(B, M)`: `attributions[i, target[i]]`.
    """
    tensor = as_tensor(attributions, "attributions")
    if tensor.ndim != 3:
        raise ValueError(
            f"`attributions` must have shape (batch_size, num_classes, num_patches), got {tuple(tensor.shape)}."
        )
    target = as_labels(target, "target", tensor.shape[0], num_classes=tensor.shape[1]).to(tensor.device)
    return tensor[torch.arange(tensor.shape[0], device=tensor.device), target]


# ----------------------------------------------------------------------------------------------------------
# Agreement with Kernel SHAP
# ----------------------------------------------------------------------------------------------------------


def e_rmse(
    attributions: Any,
    shap_values: Any,
    *,
    normalize: str | None = None,
    reduction: str = "mean",
) -> float | torch.Tensor:
    """Explanation RMSE (E-RMSE) between the model's patch attributions and Kernel SHAP values.

    The paper reports E-RMSE as the root-mean-square error between the two explanations of an image. Here,
    for image `i` with `M` patches,

        E-RMSE_i = sqrt( (1 / M) * sum_m (a_im - s_im) ** 2 ),      E-RMSE = (1 / B) * sum_i E-RMSE_i,

    i.e. the RMSE over the patches of each image, then the arithmetic mean over images (not the RMSE over all
    `B * M` entries pooled, which is never smaller, by Jensen's inequality). Lower is better; 0 iff equal.

    Args:
        attributions (`torch.Tensor` of shape `(B, M)`):
            Model attributions for the explained class (see [`select_target`] for `(B, C, M)` outputs).
        shap_values (`torch.Tensor` of shape `(B, M)`):
            Kernel SHAP values for the same class and patches.
        normalize (`str`, *optional*):
            `None` (default): compare raw values. `"l2"`: first divide each image's vector (both of them) by its
            L2 norm over the patches (an all-zero vector stays zero), so that only the shape of the explanation
            counts; the per-image error then lies in [0, 2 / sqrt(M)].
        reduction (`str`, *optional*, defaults to `"mean"`):
            `"mean"`: a Python float; `"none"`: the per-image values, a `(B,)` float64 tensor.

    Returns:
        `float` or `torch.Tensor` of shape `(B,)`.
    """
    check_reduction(reduction)
    a, s = _pair(attributions, shap_values)
    if normalize == "l2":
        a = torch.nn.functional.normalize(a, p=2.0, dim=-1)
        s = torch.nn.functional.normalize(s, p=2.0, dim=-1)
    elif normalize is not None:
        raise ValueError(f"`normalize` must be None or 'l2', got {normalize!r}.")
    per_image = (a - s).square().mean(dim=-1).sqrt()
    return reduce(per_image, reduction)


def _top_k_mask(values: torch.Tensor, k: int) -> torch.Tensor:
    """`(B, M)` bool mask of the `k` largest values per row; ties go to the lower patch index."""
    top = torch.argsort(values, dim=-1, descending=True, stable=True)[:, :k]
    return torch.zeros_like(values, dtype=torch.bool).scatter_(-1, top, True)


def iou_at_k(
    attributions: Any,
    shap_values: Any,
    k: int,
    *,
    absolute: bool = False,
    reduction: str = "mean",
) -> float | torch.Tensor:
    """Intersection over union of the top-K patch sets of the attributions and of the Kernel SHAP values.

    With `A_i` and `S_i` the index sets of the `k` largest values of image `i` (ties broken by the lower patch
    index, so the sets always hold exactly `k` patches),

        IoU@k_i = |A_i ∩ S_i| / |A_i ∪ S_i| = |A_i ∩ S_i| / (2k - |A_i ∩ S_i|),   IoU@k = mean_i IoU@k_i.

    Higher is better; 1 iff the two top-K sets are equal.

    Args:
        attributions (`torch.Tensor` of shape `(B, M)`):
            Model attributions for the explained class.
        shap_values (`torch.Tensor` of shape `(B, M)`):
            Kernel SHAP values for the same class and patches.
        k (`int`):
            Size of the top sets, in `[1, M]`.
        absolute (`bool`, *optional*, defaults to `False`):
            Rank by absolute value (important for or against the class) instead of by signed value.
        reduction (`str`, *optional*, defaults to `"mean"`):
            `"mean"`: a Python float; `"none"`: a `(B,)` float64 tensor.

    Returns:
        `float` or `torch.Tensor` of shape `(B,)`.
    """
    check_reduction(reduction)
    a, s = _pair(attributions, shap_values)
    k = check_positive_int(k, "k")
    if k > a.shape[1]:
        raise ValueError(f"`k` must be in [1, num_patches={a.shape[1]}], got {k}.")
    if absolute:
        a, s = a.abs(), s.abs()
    inter = (_top_k_mask(a, k) & _top_k_mask(s, k)).sum(dim=-1).to(torch.float64)
    return reduce(inter / (2 * k - inter), reduction)


def _average_ranks(values: torch.Tensor) -> torch.Tensor:
    """1-based ranks along the last dim of `(B, M)` values, tied values sharing their average rank."""
    num_rows, num_cols = values.shape
    sorted_values, order = torch.sort(values, dim=-1, stable=True)
    starts = torch.ones_like(sorted_values, dtype=torch.bool)
    starts[:, 1:] = sorted_values[:, 1:] != sorted_values[:, :-1]
    group = starts.cumsum(dim=-1) - 1 + num_cols * torch.arange(num_rows, device=values.device)[:, None]
    positions = torch.arange(1, num_cols + 1, dtype=torch.float64, device=values.device).expand(num_rows, -1)
    flat_group = group.reshape(-1)
    sums = torch.zeros(num_rows * num_cols, dtype=torch.float64, device=values.device)
    counts = torch.zeros_like(sums)
    sums.index_add_(0, flat_group, positions.reshape(-1))
    counts.index_add_(0, flat_group, torch.ones_like(positions).reshape(-1))
    mean_rank_sorted = (sums / counts.clamp_min(1))[group]
    return torch.empty_like(mean_rank_sorted).scatter_(-1, order, mean_rank_sorted)


def spearman(attributions: Any, shap_values: Any, *, reduction: str = "mean") -> float | torch.Tensor:
    """Spearman rank correlation between the attributions and the Kernel SHAP values, per image.

    For image `i`, `rho_i` is the Pearson correlation of the ranks of `a_i` and `s_i` over the `M` patches,
    tied values receiving the average of the ranks they span (as `scipy.stats.spearmanr`):

        rho_i = sum_m (r_im - mean r_i)(q_im - mean q_i) / sqrt(sum_m (r_im - mean r_i)^2 * sum_m (q_im - mean q_i)^2)

    and the result is `mean_i rho_i`, in [-1, 1]; 1 = same order, -1 = reversed order. `rho_i` is undefined
    (NaN, with a `RuntimeWarning`) when one of the two vectors is constant, and then the mean is NaN too; use
    `reduction="none"` and `torch.nanmean` to skip such images.

    Args:
        attributions (`torch.Tensor` of shape `(B, M)`):
            Model attributions for the explained class.
        shap_values (`torch.Tensor` of shape `(B, M)`):
            Kernel SHAP values for the same class and patches.
        reduction (`str`, *optional*, defaults to `"mean"`):
            `"mean"`: a Python float; `"none"`: a `(B,)` float64 tensor.

    Returns:
        `float` or `torch.Tensor` of shape `(B,)`.
    """
    check_reduction(reduction)
    a, s = _pair(attributions, shap_values)
    ra = _average_ranks(a)
    rs = _average_ranks(s)
    ra = ra - ra.mean(dim=-1, keepdim=True)
    rs = rs - rs.mean(dim=-1, keepdim=True)
    denominator = (ra.square().sum(dim=-1) * rs.square().sum(dim=-1)).sqrt()
    undefined = denominator == 0
    rho = (ra * rs).sum(dim=-1) / denominator.masked_fill(undefined, 1.0)
    rho = rho.clamp(-1.0, 1.0).masked_fill(undefined, float("nan"))
    if undefined.any():
        warnings.warn(
            f"Spearman correlation is undefined for {int(undefined.sum())} of {len(rho)} images whose "
            "attributions or SHAP values are constant; their value is NaN.",
            RuntimeWarning,
            stacklevel=2,
        )
    return reduce(rho, reduction)
