"""Predict whether an explainability vector transfers before the full λ2 sweep, and say how well a predictor did.

- [`probe_transfer`]: a cheap probe on a handful of *validation* images: θ̃ = θ_base + λ1 (θ_T − θ_base) + λ2 τ_S at
  λ2 = 0 and a few λ2 > 0, each model's own attributions against its own small-budget Kernel SHAP values, and the
  relative change of E-RMSE (L2), raw E-RMSE and accuracy at the largest λ2. A negative relative change of E-RMSE
  (L2) predicts that the vector helps on the target. It never needs test data.
- [`correlation_with_uncertainty`]: Pearson r and Spearman ρ between a prediction (e.g. the probe's relative change
  on several targets) and the outcome (e.g. the full sweep's), with percentile bootstrap intervals, so that a
  correlation measured on a few targets is read with its uncertainty.

A *split* is what [`~hf_explvec.evaluation.protocol`] reads: `pixel_values`, `labels`, optional `evidence`, and
`len(split)`.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np

from .._validation import check_lam_grid
from ..attribution._forward import VALUE_OPTIONS
from ..task_vector import transfer
from ._checks import check_positive_int
from .agreement import accuracy
from .protocol import _check_confidence, explanation_metrics, forward_attributions, kernel_shap_values

__all__ = ["correlation_with_uncertainty", "probe_transfer"]


class _FirstImages:
    """The first `count` images of a split: pixel values, labels and, when the split has them, evidence."""

    def __init__(self, split, count: int):
        self.pixel_values, self.labels = split.pixel_values[:count], split.labels[:count]
        evidence = getattr(split, "evidence", None)
        self.evidence = None if evidence is None else evidence[:count]

    def __len__(self) -> int:
        return len(self.labels)


def _relative_change(value: float, reference: float) -> float:
    """`(value − reference) / reference`; 0 when both are 0, ±inf when only the reference is."""
    if reference == 0:
        return 0.0 if value == 0 else math.copysign(math.inf, value)
    return (value - reference) / reference


def probe_transfer(
    base,
    target_model,
    vector,
    split,
    *,
    lams=(0.0, 0.3),
    num_images: int = 16,
    num_samples: int = 64,
    seed: int = 0,
    lam_target: float = 1.0,
    batch_size: int = 256,
    value: str = "logit",
) -> dict:
    r"""
    A cheap prediction of whether the explainability vector `vector` transfers to the target of `target_model`,
    measured on the first `num_images` images of `split` (a *validation* split: the probe is meant to run before the
    sweep, so it must not see test data).

    For each λ2 in `lams` the transferred model θ̃ = [`~hf_explvec.task_vector.transfer`]`(base, target_model,
    vector, lam=λ2, lam_target=lam_target)` is built, its own attributions (one forward pass) are compared with its
    own Kernel SHAP values at the small budget `num_samples` (the same seed for every λ2, as in [`evaluate_model`];
    no perturbation metrics), and its accuracy is measured. The prediction is the relative change at the largest λ2
    against λ2 = 0: a negative `relative_change_e_rmse_l2` predicts that the vector brings the target's explanations
    closer to Kernel SHAP.

    Args:
        base ([`~hf_explvec.SelfExplainingCLIPVision`]): θ_base, the shared pretrained model.
        target_model ([`~hf_explvec.SelfExplainingCLIPVision`]): θ_T, the prediction-only model of the target.
        vector ([`~hf_explvec.TaskVector`]): τ_S, the explainability vector of the source.
        split: the target's validation split (see the module docstring).
        lams (`tuple[float, ...]`, *optional*, defaults to `(0.0, 0.3)`): the λ2 probed; must contain 0.
        num_images (`int`, *optional*, defaults to 16): the first images of `split` used.
        num_samples (`int`, *optional*, defaults to 64): Kernel SHAP coalitions per image (at least `2 M`).
        seed (`int`, *optional*, defaults to 0): the Kernel SHAP seed (see [`kernel_shap_values`]).
        lam_target (`float`, *optional*, defaults to 1.0): λ1, the weight of θ_T − θ_base.
        batch_size (`int`, *optional*, defaults to 256): coalitions (and images) per forward pass.
        value (`str`, *optional*, defaults to `"logit"`): the score Kernel SHAP explains.

    Returns:
        `dict`: `entries` (one per λ2, in the order of `lams`: `lam`, `accuracy`, the figures of
        [`explanation_metrics`] without perturbation, `seconds`); `lam` (the largest λ2);
        `relative_change_e_rmse_l2` and `relative_change_e_rmse` (`(e(λ) − e(0)) / e(0)` at that λ2; 0 when both
        are 0, ±inf when only e(0) is); `accuracy_change` (accuracy(λ) − accuracy(0), a fraction); `num_images`,
        `num_samples`, `seed`, `lam_target`, `value`; and `seconds` (the probe's wall time, models built included).

    Raises:
        `ValueError`: `lams` without 0, with a repeated or non-finite value, with nothing but 0 or no λ2 > 0;
            `num_images` larger than the split; an unknown `value`; and those of `transfer` and Kernel SHAP (e.g. a
            budget under `2 M`).
        `TypeError`: non-integer counts or non-numeric `lams`.
    """
    start = time.perf_counter()
    lams = tuple(check_lam_grid(lams))
    if max(lams) <= 0:
        raise ValueError(f"`lams` needs a λ2 > 0: the probe predicts the change at the largest one, got {lams}.")
    num_images = check_positive_int(num_images, "num_images")
    num_samples = check_positive_int(num_samples, "num_samples")
    batch_size = check_positive_int(batch_size, "batch_size")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"`seed` must be an int, got {type(seed).__name__}.")
    if value not in VALUE_OPTIONS:
        raise ValueError(f"`value` must be one of {list(VALUE_OPTIONS)}, got {value!r}.")
    if num_images > len(split):
        raise ValueError(f"num_images={num_images} is more than the split's {len(split)} images.")
    images = _FirstImages(split, num_images)
    entries = []
    for lam in lams:
        lam_start = time.perf_counter()
        model = transfer(base, target_model, vector, lam=lam, lam_target=lam_target)
        logits, explained, _ = forward_attributions(model, images, batch_size)
        reference, _ = kernel_shap_values(model, images, num_samples, int(seed), batch_size, value=value)
        entry = {"lam": lam, "accuracy": accuracy(logits, images.labels)}
        entry.update(explanation_metrics(model, images, explained, reference, perturbation=False))
        entry["seconds"] = time.perf_counter() - lam_start
        entries.append(entry)
        del model
    zero = next(entry for entry in entries if entry["lam"] == 0.0)
    top = max(entries, key=lambda entry: entry["lam"])
    return {
        "entries": entries,
        "lam": top["lam"],
        "relative_change_e_rmse_l2": _relative_change(top["e_rmse_l2"], zero["e_rmse_l2"]),
        "relative_change_e_rmse": _relative_change(top["e_rmse"], zero["e_rmse"]),
        "accuracy_change": top["accuracy"] - zero["accuracy"],
        "num_images": num_images,
        "num_samples": num_samples,
        "seed": int(seed),
        "lam_target": lam_target,
        "value": value,
        "seconds": time.perf_counter() - start,
    }


def _as_finite_vector(values: Any, name: str) -> np.ndarray:
    if isinstance(values, (str, bytes)):
        raise TypeError(f"`{name}` must be a sequence of numbers, got {type(values).__name__}.")
    try:
        array = np.asarray(values.detach().cpu() if hasattr(values, "detach") else values)
    except (TypeError, ValueError) as error:
        raise TypeError(f"`{name}` must be a sequence of numbers: {error}") from None
    if array.dtype == bool or array.dtype.kind not in "iuf":
        raise TypeError(f"`{name}` must hold real numbers, got dtype {array.dtype}.")
    if array.ndim != 1:
        raise ValueError(f"`{name}` must be one-dimensional, got shape {array.shape}.")
    array = array.astype(np.float64)
    if not np.isfinite(array).all():
        index = int(np.flatnonzero(~np.isfinite(array))[0])
        raise ValueError(f"`{name}` holds NaN or infinite values (first at index {index}).")
    return array


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, tied values sharing the mean of their ranks (what Spearman's ρ correlates)."""
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    return (ends - (counts - 1) / 2.0)[inverse]


def _pearson_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pearson r of each row pair of two `(B, n)` arrays (rows must not be constant), clipped to [−1, 1]."""
    x = x - x.mean(axis=1, keepdims=True)
    y = y - y.mean(axis=1, keepdims=True)
    r = (x * y).sum(axis=1) / np.sqrt((x * x).sum(axis=1) * (y * y).sum(axis=1))
    return np.clip(r, -1.0, 1.0)


def correlation_with_uncertainty(
    x, y, *, num_resamples: int = 2000, confidence: float = 0.9, seed: int = 0
) -> dict[str, Any]:
    r"""
    Pearson r and Spearman ρ between paired observations, each with a percentile bootstrap interval.

    The bootstrap resamples the `n` pairs with replacement `num_resamples` times (a `numpy.random.Generator` seeded
    with `seed`, so the result is reproducible). A resample in which `x` or `y` is constant has no correlation; it is
    skipped and counted in `skipped`. The interval is the `(1 − confidence) / 2` and `(1 + confidence) / 2` quantiles
    of the remaining resamples (numpy's default linear interpolation). With few pairs the interval is wide, which is
    the point: a correlation over a handful of targets says little.

    Args:
        x (`list`, `np.ndarray` or `torch.Tensor` of shape `(n,)`): the first variable (e.g. a prediction).
        y (same type and shape): the second variable (e.g. the outcome), paired with `x` by position.
        num_resamples (`int`, *optional*, defaults to 2000): bootstrap resamples.
        confidence (`float`, *optional*, defaults to 0.9): the two-sided level of the intervals, in (0, 1).
        seed (`int`, *optional*, defaults to 0): the seed of the resampling.

    Returns:
        `dict`: `n`; `pearson` and `spearman`, each a dict with `estimate`, `low`, `high` (`low`/`high` are `None`
        when every resample was skipped); `confidence`, `num_resamples`, `skipped` (resamples with a constant side)
        and `seed`.

    Raises:
        `ValueError`: fewer than 3 pairs, lengths that differ, NaN or infinite values, a constant `x` or `y` (no
            correlation is defined), or a `confidence` outside (0, 1).
        `TypeError`: non-numeric values (bools included), or a non-integer `num_resamples` or `seed`.
    """
    x, y = _as_finite_vector(x, "x"), _as_finite_vector(y, "y")
    if x.shape != y.shape:
        raise ValueError(f"`x` and `y` must be paired, got {x.size} and {y.size} values.")
    if x.size < 3:
        raise ValueError(f"a correlation with an interval needs at least 3 pairs, got {x.size}.")
    for name, values in (("x", x), ("y", y)):
        if np.ptp(values) == 0:
            raise ValueError(f"`{name}` is constant ({values[0]}): no correlation is defined.")
    num_resamples = check_positive_int(num_resamples, "num_resamples")
    confidence = _check_confidence(confidence)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"`seed` must be an int, got {type(seed).__name__}.")

    n = x.size
    indices = np.random.default_rng(int(seed)).integers(0, n, size=(num_resamples, n))
    xs, ys = x[indices], y[indices]
    usable = (np.ptp(xs, axis=1) > 0) & (np.ptp(ys, axis=1) > 0)
    xs, ys = xs[usable], ys[usable]
    rank_x, rank_y = _average_ranks(x), _average_ranks(y)
    quantiles = [(1 - confidence) / 2, (1 + confidence) / 2]
    result: dict[str, Any] = {"n": int(n)}
    for name, (full_x, full_y, boot_x, boot_y) in {
        "pearson": (x, y, xs, ys),
        "spearman": (rank_x, rank_y, np.array([_average_ranks(row) for row in xs]).reshape(xs.shape),
                     np.array([_average_ranks(row) for row in ys]).reshape(ys.shape)),
    }.items():  # fmt: skip
        estimate = float(_pearson_rows(full_x[None], full_y[None])[0])
        if len(boot_x):
            low, high = (float(q) for q in np.quantile(_pearson_rows(boot_x, boot_y), quantiles))
        else:
            low = high = None
        result[name] = {"estimate": estimate, "low": low, "high": high}
    result.update(confidence=confidence, num_resamples=num_resamples, skipped=int((~usable).sum()), seed=int(seed))
    return result
