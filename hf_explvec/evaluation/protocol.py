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
from typing import Any

import torch
from tqdm.auto import tqdm

from ..attribution.vit import model_kernel_shap
from ._checks import check_positive_int
from .agreement import accuracy, e_rmse, iou_at_k, select_target, spearman
from .perturbation import deletion_auc, insertion_auc

logger = logging.getLogger(__name__)

__all__ = [
    "eligible_lambdas",
    "evaluate_model",
    "explanation_metrics",
    "forward_attributions",
    "kernel_shap_values",
    "select_lambda",
]


def select_lambda(sweep: list[dict], max_accuracy_drop: float = 0.04) -> float:
    r"""
    The validation rule that picks λ2: the lowest validation E-RMSE among the λ2 whose validation accuracy is within
    `max_accuracy_drop` of the prediction-only target's (the λ2 = 0 entry); ties go to the smaller λ2. λ2 = 0 is
    always eligible, so a vector that does not help is not applied.

    Args:
        sweep (`list[dict]`):
            One entry per λ2, with keys `lam`, `accuracy` (a fraction) and `e_rmse`, measured on validation.
        max_accuracy_drop (`float`, *optional*, defaults to 0.04):
            The tolerance, a fraction (0.04 is 4 accuracy points).

    Returns:
        `float`: the chosen λ2.

    Raises:
        `ValueError`: no λ2 = 0 entry, an entry without those keys, or a negative or non-finite tolerance.
    """
    if isinstance(max_accuracy_drop, bool) or not isinstance(max_accuracy_drop, (int, float)):
        raise ValueError(f"max_accuracy_drop must be a number >= 0, got {max_accuracy_drop!r}.")
    if not (math.isfinite(max_accuracy_drop) and max_accuracy_drop >= 0):
        raise ValueError(f"max_accuracy_drop must be >= 0, got {max_accuracy_drop}.")
    for entry in sweep:
        missing = {"lam", "accuracy", "e_rmse"} - set(entry)
        if missing:
            raise ValueError(f"every sweep entry needs lam, accuracy and e_rmse; {entry} lacks {sorted(missing)}.")
    baseline = [entry for entry in sweep if entry["lam"] == 0.0]
    if not baseline:
        lams = [entry["lam"] for entry in sweep]
        raise ValueError(f"the sweep needs a lam = 0 entry (the prediction-only target), got {lams}.")
    allowed = set(eligible_lambdas(sweep, max_accuracy_drop))
    eligible = [entry for entry in sweep if entry["lam"] in allowed]
    return min(eligible, key=lambda entry: (entry["e_rmse"], entry["lam"]))["lam"]


def eligible_lambdas(sweep: list[dict], max_accuracy_drop: float) -> list[float]:
    r"""The λ2 that [`select_lambda`] chooses among: accuracy within `max_accuracy_drop` of the λ2 = 0 entry (which
    `select_lambda` checks to exist), and λ2 = 0 itself."""
    baseline = next(entry for entry in sweep if entry["lam"] == 0.0)
    floor = baseline["accuracy"] - max_accuracy_drop - 1e-9  # 1e-9: a drop of exactly the tolerance is within it
    return [entry["lam"] for entry in sweep if entry["accuracy"] >= floor or entry["lam"] == 0.0]


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
