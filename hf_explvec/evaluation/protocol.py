"""Measure a self-explaining model on a split: accuracy, agreement with its own Kernel SHAP values, faithfulness.

This is the evaluation protocol of the demo (and of anything that wants the same figures: training, the CLI): every
model is compared with the Kernel SHAP values of *that same* model, for the label class of each image.

A *split* here is any object with

- `pixel_values` (`torch.Tensor` of shape `(N, 3, H, W)`): the model's inputs (e.g. CLIP-normalised);
- `labels` (`torch.Tensor` of shape `(N,)`): integer class ids, the explained class of each image;
- `evidence` (`torch.Tensor` of shape `(N, M)`, bool, *optional*): the patches that carry the class evidence,
  for the pointing metric (absent or `None`: no pointing),

and `len(split) == N`, such as [`hf_explvec.demo.DemoSplit`]. The model is a
[`~hf_explvec.SelfExplainingCLIPVision`] (its outputs have `logits` and `patch_attributions`).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from statistics import NormalDist
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..attribution.vit import model_kernel_shap
from ._checks import as_float_matrix, as_labels, as_tensor, check_positive_int
from .agreement import accuracy, e_rmse, iou_at_k, select_target, spearman
from .perturbation import deletion_auc, insertion_auc

logger = logging.getLogger(__name__)

__all__ = [
    "SELECTION_METRICS",
    "accuracy_drop_bound",
    "add_accuracy_drop_bounds",
    "eligible_lambdas",
    "evaluate_model",
    "explanation_metrics",
    "forward_attributions",
    "kernel_shap_values",
    "per_image_correct",
    "select_lambda",
]


SELECTION_METRICS = ("e_rmse", "e_rmse_l2")


def _check_confidence(confidence: Any, name: str = "confidence") -> float:
    """Returns `confidence` as a float in (0, 1); `TypeError` for non-numbers (bools included), `ValueError` outside."""
    if isinstance(confidence, (bool, np.bool_)) or not isinstance(confidence, (int, float, np.integer, np.floating)):
        raise TypeError(f"`{name}` must be a number in (0, 1), got {type(confidence).__name__}.")
    confidence = float(confidence)
    if not (0.0 < confidence < 1.0):  # NaN fails too
        raise ValueError(f"`{name}` must lie strictly between 0 and 1, got {confidence}.")
    return confidence


def _as_correctness(value: Any, name: str) -> np.ndarray:
    """Per-image correctness as a 1-D bool array: bools, or numbers that are all exactly 0 or 1."""
    array = as_tensor(value, name).cpu().numpy()
    if array.ndim != 1:
        raise ValueError(f"`{name}` must be one-dimensional (one 0/1 value per image), got shape {array.shape}.")
    if array.size == 0:
        raise ValueError(f"`{name}` is empty: the bound needs at least one image.")
    if array.dtype == bool:
        return array
    if array.dtype.kind not in "iuf":
        raise TypeError(f"`{name}` must hold 0/1 numbers or bools, got dtype {array.dtype}.")
    bad = ~((array == 0) | (array == 1))
    if bad.any():
        index = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"`{name}` must hold only 0 and 1 (per-image correctness), got {array[index]} at index {index}."
        )
    return array == 1


def per_image_correct(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    r"""
    Per-image correctness of the argmax prediction: the input of [`accuracy_drop_bound`] (e.g. from the `logits` that
    [`evaluate_model`] returns and the split's `labels`).

    Args:
        logits (`torch.Tensor` of shape `(N, C)`): the class scores.
        labels (`torch.Tensor` of shape `(N,)`): the integer class ids.

    Returns:
        `torch.BoolTensor` of shape `(N,)`: `True` where the prediction is the label.

    Raises:
        `ValueError`: not a `(N, C)` matrix, or labels of another length or out of range.
        `TypeError`: labels that are not integers.
    """
    logits = as_float_matrix(logits, "logits")
    labels = as_labels(labels, "labels", logits.shape[0], logits.shape[1])
    return logits.argmax(dim=1) == labels.to(logits.device)


def accuracy_drop_bound(correct_at_lam: Any, correct_at_zero: Any, confidence: float = 0.9) -> float:
    r"""
    A one-sided upper confidence bound on the accuracy drop `accuracy(λ = 0) − accuracy(λ)` from paired per-image
    correctness on the same images.

    The method is Tango's asymptotic score bound for a difference of paired proportions (Tango, *Statistics in
    Medicine* 17, 1998; recommended for small samples by Fagerland, Lydersen and Laake, *BMC Med. Res. Methodol.*
    13, 2013). With `n` images, `b` of them *lost* (right at λ = 0, wrong at λ) and `c` *gained* (wrong at λ = 0,
    right at λ), the drop is `Δ = π_b − π_c` and its estimate `(b − c) / n`. For a candidate `Δ` the score statistic
    is `Z(Δ) = (b − c − nΔ) / sqrt(n (2 q + Δ − Δ²))`, where `q` is the maximum-likelihood gain probability `π_c` under
    that `Δ` (the positive root of `2n q² + W q − cΔ(1 − Δ) = 0`, `W = −(b + c) + Δ(2n − b + c)`). The bound is the
    largest `Δ` with `Z(Δ) ≥ −z`, `z` the standard-normal quantile of `confidence`, found by bisection on
    `[(b − c) / n, 1]`. Why this one:

    - the variance is taken at the candidate `Δ`, not at the estimate, so the bound stays above the estimate when
      there are few or no discordant pairs: with none it is `z² / (n + z²)` (a Wald bound, `(b − c)/n + z·se`, gives
      0 there, which would call a 10-image validation set proof of no drop);
    - with no gained images (`c = 0`) it is exactly the Wilson score upper bound of `b / n`;
    - it is closed-form up to a bisection, so it is exactly reproducible (no resampling, no randomness).

    Args:
        correct_at_lam (`torch.Tensor`, `np.ndarray` or `list` of shape `(N,)`): 0/1 (or bool) correctness of each
            image at λ, e.g. [`per_image_correct`].
        correct_at_zero (same type and shape): the correctness of the same images, in the same order, at λ = 0.
        confidence (`float`, *optional*, defaults to 0.9): the one-sided confidence level, in (0, 1).

    Returns:
        `float`: the upper bound, in `[(b − c) / n, 1]` (negative when λ gains clearly more images than it loses).

    Raises:
        `TypeError`: a confidence or correctness values that are not numbers.
        `ValueError`: a confidence outside (0, 1), correctness that is not one-dimensional, empty, not 0/1, or of two
            different lengths.
    """
    confidence = _check_confidence(confidence)
    at_lam, at_zero = (
        _as_correctness(correct_at_lam, "correct_at_lam"),
        _as_correctness(correct_at_zero, "correct_at_zero"),
    )
    if at_lam.shape != at_zero.shape:
        raise ValueError(
            f"`correct_at_lam` and `correct_at_zero` must describe the same images, got {at_lam.size} and "
            f"{at_zero.size} values."
        )
    n, lost, gained = at_lam.size, int((at_zero & ~at_lam).sum()), int((~at_zero & at_lam).sum())
    return _tango_upper_bound(lost, gained, n, NormalDist().inv_cdf(confidence))


def _tango_upper_bound(lost: int, gained: int, n: int, z: float) -> float:
    """The largest Δ with Tango's score statistic `Z(Δ) >= -z` (see [`accuracy_drop_bound`])."""
    estimate = (lost - gained) / n
    if lost == n:  # every image lost: the drop is 1 and nothing is above it
        return 1.0

    def score(delta: float) -> float:
        w = -(lost + gained) + delta * (2 * n - lost + gained)
        q = (-w + math.sqrt(w * w + 8 * n * gained * delta * (1 - delta))) / (4 * n)
        variance = n * (2 * q + delta - delta * delta)
        if variance <= 0:
            return -math.inf if lost - gained - n * delta < 0 else math.inf
        return (lost - gained - n * delta) / math.sqrt(variance)

    if z <= 0:  # confidence <= 0.5: the bound is at or below the estimate; Z(estimate) = 0 >= -z only for z >= 0
        low, high = -1.0, estimate
    else:
        low, high = estimate, 1.0
    # Z decreases in Δ; keep Z(low) >= -z > Z(high) and halve until the interval is below float resolution
    for _ in range(200):
        middle = 0.5 * (low + high)
        if middle in (low, high):
            break
        if score(middle) >= -z:
            low = middle
        else:
            high = middle
    return low


def select_lambda(
    sweep: list[dict],
    max_accuracy_drop: float = 0.04,
    *,
    metric: str = "e_rmse",
    confidence: float | None = None,
) -> float:
    r"""
    The validation rule that picks λ2: the lowest validation `metric` among the eligible λ2; ties go to the smaller
    λ2. λ2 = 0 is always eligible, so a vector that does not help is not applied. Eligible ([`eligible_lambdas`]):

    - `confidence=None` (the default, the demo's rule so far): validation accuracy within `max_accuracy_drop` of the
      prediction-only target's (the λ2 = 0 entry);
    - with a `confidence`: the entry's `accuracy_drop_bound` (the one-sided upper confidence bound on the accuracy
      drop of [`accuracy_drop_bound`], computed by the caller on the same validation images, e.g. with
      [`add_accuracy_drop_bounds`]) is at most `max_accuracy_drop`. This keeps a small validation set from passing a
      λ2 whose observed drop is within the tolerance only by chance.

    Args:
        sweep (`list[dict]`):
            One entry per λ2, with keys `lam`, `accuracy` (a fraction) and `metric`, measured on validation; with a
            `confidence`, also `accuracy_drop_bound` (every entry but λ2 = 0).
        max_accuracy_drop (`float`, *optional*, defaults to 0.04):
            The tolerance, a fraction (0.04 is 4 accuracy points).
        metric (`str`, *optional*, defaults to `"e_rmse"`):
            The validation figure minimised: `"e_rmse"` (raw E-RMSE) or `"e_rmse_l2"` (scale-free E-RMSE).
        confidence (`float`, *optional*):
            The one-sided confidence level of the bounds, in (0, 1). An entry that records its own
            `accuracy_drop_confidence` must record this one.

    Returns:
        `float`: the chosen λ2.

    Raises:
        `ValueError`: no λ2 = 0 entry, an entry without the needed keys, a negative or non-finite tolerance, an unknown
            `metric`, a `confidence` outside (0, 1), a non-finite bound or a bound computed at another confidence.
        `TypeError`: a `metric` that is not a string or a `confidence` that is not a number.
    """
    allowed = set(eligible_lambdas(sweep, max_accuracy_drop, metric=metric, confidence=confidence))
    eligible = [entry for entry in sweep if entry["lam"] in allowed]
    return min(eligible, key=lambda entry: (entry[metric], entry["lam"]))["lam"]


def eligible_lambdas(
    sweep: list[dict], max_accuracy_drop: float, *, metric: str = "e_rmse", confidence: float | None = None
) -> list[float]:
    r"""
    The λ2 that [`select_lambda`] chooses among (same arguments and checks): λ2 = 0, and every λ2 whose accuracy is
    within `max_accuracy_drop` of the λ2 = 0 entry (`confidence=None`) or whose `accuracy_drop_bound` is at most
    `max_accuracy_drop` (with a `confidence`). A drop of exactly the tolerance is within it.

    Returns:
        `list[float]`: the eligible λ2, in the order of `sweep`.

    Raises:
        Those of [`select_lambda`].
    """
    if isinstance(max_accuracy_drop, bool) or not isinstance(max_accuracy_drop, (int, float)):
        raise ValueError(f"max_accuracy_drop must be a number >= 0, got {max_accuracy_drop!r}.")
    if not (math.isfinite(max_accuracy_drop) and max_accuracy_drop >= 0):
        raise ValueError(f"max_accuracy_drop must be >= 0, got {max_accuracy_drop}.")
    if not isinstance(metric, str):
        raise TypeError(f"metric must be a string, one of {list(SELECTION_METRICS)}, got {type(metric).__name__}.")
    if metric not in SELECTION_METRICS:
        raise ValueError(f"unknown metric {metric!r}; select_lambda minimises one of {list(SELECTION_METRICS)}.")
    if confidence is not None:
        confidence = _check_confidence(confidence)
    for entry in sweep:
        missing = {"lam", "accuracy", metric} - set(entry)
        if missing:
            raise ValueError(f"every sweep entry needs lam, accuracy and {metric}; {entry} lacks {sorted(missing)}.")
    baseline = [entry for entry in sweep if entry["lam"] == 0.0]
    if not baseline:
        lams = [entry["lam"] for entry in sweep]
        raise ValueError(f"the sweep needs a lam = 0 entry (the prediction-only target), got {lams}.")
    if confidence is None:
        floor = baseline[0]["accuracy"] - max_accuracy_drop - 1e-9  # 1e-9: a drop of exactly the tolerance is within
        return [entry["lam"] for entry in sweep if entry["accuracy"] >= floor or entry["lam"] == 0.0]
    for entry in sweep:
        if entry["lam"] == 0.0:
            continue
        if "accuracy_drop_bound" not in entry:
            raise ValueError(
                f"with a confidence every sweep entry but lam = 0 needs accuracy_drop_bound (see "
                f"add_accuracy_drop_bounds); the entry of lam = {entry['lam']} lacks it."
            )
        bound = entry["accuracy_drop_bound"]
        if isinstance(bound, bool) or not isinstance(bound, (int, float)) or not math.isfinite(bound):
            raise ValueError(f"accuracy_drop_bound of lam = {entry['lam']} must be a finite number, got {bound!r}.")
        recorded = entry.get("accuracy_drop_confidence", confidence)
        if recorded != confidence:
            raise ValueError(
                f"accuracy_drop_bound of lam = {entry['lam']} was computed at confidence {recorded}, but "
                f"select_lambda was given confidence {confidence}."
            )
    return [
        entry["lam"]
        for entry in sweep
        if entry["lam"] == 0.0 or entry["accuracy_drop_bound"] <= max_accuracy_drop + 1e-9
    ]


def add_accuracy_drop_bounds(sweep: list[dict], correct: dict, confidence: float = 0.9) -> list[dict]:
    r"""
    The sweep with `accuracy_drop_bound` ([`accuracy_drop_bound`] of each λ2 against λ2 = 0) and
    `accuracy_drop_confidence` added to every entry, what [`select_lambda`] reads with a `confidence`.

    Args:
        sweep (`list[dict]`): one entry per λ2, with `lam`.
        correct (`dict`): λ2 → per-image 0/1 correctness on the validation images (the same images, same order for
            every λ2; e.g. [`per_image_correct`] of the `logits` that [`evaluate_model`] returns), λ2 = 0 included.
        confidence (`float`, *optional*, defaults to 0.9): the one-sided confidence level.

    Returns:
        `list[dict]`: new entries (copies; `sweep` is left unchanged). The λ2 = 0 entry gets its bound against
        itself (no discordant pairs: `z² / (n + z²)`), for the record; the rule never excludes λ2 = 0.

    Raises:
        `TypeError`: `correct` is not a mapping.
        `ValueError`: an entry without `lam`, a λ2 (or λ2 = 0) missing from `correct`, and those of
            [`accuracy_drop_bound`].
    """
    confidence = _check_confidence(confidence)
    if not isinstance(correct, Mapping):
        raise TypeError(f"correct must be a dict of λ2 to per-image 0/1 correctness, got {type(correct).__name__}.")
    if 0.0 not in correct:
        raise ValueError(f"correct needs the λ2 = 0 correctness, got the λ2 {sorted(correct)}.")
    out = []
    for entry in sweep:
        if "lam" not in entry:
            raise ValueError(f"every sweep entry needs lam; {entry} lacks it.")
        if entry["lam"] not in correct:
            raise ValueError(f"correct has no correctness for lam = {entry['lam']} (it has {sorted(correct)}).")
        bound = accuracy_drop_bound(correct[entry["lam"]], correct[0.0], confidence)
        out.append({**entry, "accuracy_drop_bound": bound, "accuracy_drop_confidence": confidence})
    return out


def kernel_shap_values(
    model,
    split,
    num_samples: int,
    seed: int,
    batch_size: int = 256,
    desc: str | None = None,
    chunk: int = 16,
    value: str = "logit",
) -> tuple[torch.Tensor, float]:
    r"""
    Kernel SHAP values of `model` for the label class of every image of `split`: [`model_kernel_shap`] of `value`,
    embedding-level masking, baseline 0 (the mean pixel after CLIP normalisation), `chunk` images per call with the
    seed `seed + first index`, so the result does not depend on `batch_size`.

    Args:
        model ([`~hf_explvec.SelfExplainingCLIPVision`]): the explained model.
        split: see the module docstring (`pixel_values`, `labels`).
        num_samples (`int`): coalitions per image.
        seed (`int`): the seed of the first chunk.
        batch_size (`int`, *optional*, defaults to 256): coalitions per forward pass.
        desc (`str`, *optional*): a tqdm description; `None` shows no bar.
        chunk (`int`, *optional*, defaults to 16): images per [`model_kernel_shap`] call.
        value (`str`, *optional*, defaults to `"logit"`): the explained score, `"logit"`, `"log_prob"` or `"prob"`.

    Returns:
        `tuple[torch.FloatTensor, float]`: the values, shape `(N, M)` on CPU, and the wall time per image in seconds.
    """
    if len(split) == 0:
        raise ValueError("the split holds no images; Kernel SHAP needs at least one.")
    chunk = check_positive_int(chunk, "chunk")
    values, start, device = [], time.perf_counter(), model.device
    for i in tqdm(range(0, len(split), chunk), desc=desc, disable=desc is None, leave=False):
        pixel_values, labels = split.pixel_values[i : i + chunk].to(device), split.labels[i : i + chunk].to(device)
        values.append(model_kernel_shap(model, pixel_values, labels, num_samples=num_samples, batch_size=batch_size,
                                        seed=seed + i, value=value).cpu())  # fmt: skip
    return torch.cat(values), (time.perf_counter() - start) / len(split)


@torch.inference_mode()
def forward_attributions(model, split, batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor, float]:
    r"""
    One forward pass of `model` (put in eval mode) over `split` in batches.

    Args:
        model ([`~hf_explvec.SelfExplainingCLIPVision`]): the model.
        split: see the module docstring (`pixel_values`, `labels`).
        batch_size (`int`, *optional*, defaults to 256): images per forward pass.

    Returns:
        `tuple`: the logits `(N, C)` and the attributions of the label class `(N, M)`, both float32 on CPU, and the
        wall time per image in seconds.
    """
    if len(split) == 0:
        raise ValueError("the split holds no images.")
    batch_size = check_positive_int(batch_size, "batch_size")
    model.eval()
    start = time.perf_counter()
    logits, attributions = [], []
    for i in range(0, len(split), batch_size):
        outputs = model(split.pixel_values[i : i + batch_size].to(model.device))
        logits.append(outputs.logits.float().cpu())
        attributions.append(select_target(outputs.patch_attributions.float().cpu(), split.labels[i : i + batch_size]))
    return torch.cat(logits), torch.cat(attributions), (time.perf_counter() - start) / len(split)


def explanation_metrics(
    model, split, explained: torch.Tensor, reference: torch.Tensor, *, top_k: int = 2, perturbation: bool = True
) -> dict[str, float]:
    r"""
    Agreement of the explanations `explained` with the `reference` Kernel SHAP values, the scales of both, pointing
    at the evidence and, optionally, deletion and insertion AUC.

    Args:
        model ([`~hf_explvec.SelfExplainingCLIPVision`]): the model whose probabilities the perturbation metrics read.
        split: see the module docstring (`pixel_values`, `labels`, optional `evidence`).
        explained (`torch.Tensor` of shape `(N, M)`): the explanations for the label class.
        reference (`torch.Tensor` of shape `(N, M)`): Kernel SHAP values of the same model and class.
        top_k (`int`, *optional*, defaults to 2): K of IoU@K (capped at `M`).
        perturbation (`bool`, *optional*, defaults to `True`): add `deletion_auc` and `insertion_auc` of
            `explained` on `model` (label class, baseline 0).

    Returns:
        `dict[str, float]`: `e_rmse`, `e_rmse_l2`, `iou_at_k`, `spearman`, `shap_rms`, `attribution_rms`, and
        `pointing` (when the split has evidence), `deletion_auc`, `insertion_auc` (with `perturbation`).
    """
    metrics = {
        "e_rmse": e_rmse(explained, reference),
        "e_rmse_l2": e_rmse(explained, reference, normalize="l2"),
        "iou_at_k": iou_at_k(explained, reference, k=min(top_k, explained.shape[1])),
        "spearman": spearman(explained, reference),
        "shap_rms": float(reference.double().pow(2).mean().sqrt()),
        "attribution_rms": float(explained.double().pow(2).mean().sqrt()),
    }
    evidence = getattr(split, "evidence", None)
    if evidence is not None:  # the most attributed patch lies on the class object
        metrics["pointing"] = float(evidence.gather(1, explained.argmax(dim=1, keepdim=True)).float().mean())
    if perturbation:
        device = model.device
        inputs = (model, split.pixel_values.to(device), explained.to(device), split.labels.to(device))
        options = {"patch_size": model.config.vision_config.patch_size, "baseline": 0.0}
        with torch.inference_mode():
            metrics["deletion_auc"] = deletion_auc(*inputs, **options)
            metrics["insertion_auc"] = insertion_auc(*inputs, **options)
    return metrics


def evaluate_model(
    model,
    split,
    *,
    num_samples: int,
    seed: int,
    batch_size: int = 256,
    top_k: int = 2,
    perturbation: bool = True,
    value: str = "logit",
    desc: str | None = None,
) -> tuple[dict[str, float], dict[str, Any]]:
    r"""
    Accuracy and explanation metrics of a self-explaining model on a split: its own attributions (one forward pass)
    against its own Kernel SHAP values.

    Args:
        model ([`~hf_explvec.SelfExplainingCLIPVision`]): the model.
        split: see the module docstring.
        num_samples (`int`): Kernel SHAP coalitions per image for the reference values.
        seed (`int`): the Kernel SHAP seed (see [`kernel_shap_values`]).
        batch_size (`int`, *optional*, defaults to 256): coalitions per forward pass.
        top_k (`int`, *optional*, defaults to 2): K of IoU@K.
        perturbation (`bool`, *optional*, defaults to `True`): add deletion and insertion AUC.
        value (`str`, *optional*, defaults to `"logit"`): the score Kernel SHAP explains.
        desc (`str`, *optional*): a tqdm description for the Kernel SHAP bar; `None` shows none.

    Returns:
        `tuple[dict, dict]`: the metrics of [`explanation_metrics`] plus `accuracy`, `explain_seconds_per_image` and
        `reference_shap_seconds_per_image`; and the tensors `attributions` `(N, M)`, `reference` `(N, M)` and
        `logits` `(N, C)`.
    """
    logits, explained, seconds = forward_attributions(model, split)
    reference, shap_seconds = kernel_shap_values(model, split, num_samples, seed, batch_size, desc, value=value)
    metrics = {
        "accuracy": accuracy(logits, split.labels),
        "explain_seconds_per_image": seconds,
        "reference_shap_seconds_per_image": shap_seconds,
    }
    metrics.update(explanation_metrics(model, split, explained, reference, top_k=top_k, perturbation=perturbation))
    return metrics, {"attributions": explained, "reference": reference, "logits": logits}
