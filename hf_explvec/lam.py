"""Choose λ, the weight of an explainability vector, on your own validation images.

[`choose_lam`] applies `λ·τ` to your explaining model for each λ of a grid, measures every λ-model on your images
(one forward pass, and Kernel SHAP of that same model as the reference explanation) and picks λ by the paper's rule:
the lowest E-RMSE among the λ whose accuracy stays within a tolerance of λ = 0 ([`select_lambda`]). Without labels,
agreement with the λ = 0 model's predictions stands in for accuracy, and each model's own predicted class is
explained, against a small Kernel SHAP budget.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import datasets
import torch

from ._validation import check_finite, check_int, check_lam_grid
from .attribution.kernel_shap import min_num_samples
from .attribution.patches import patch_kernel_shap
from .data.images import check_labels
from .evaluation.agreement import select_target
from .evaluation.protocol import eligible_lambdas, explanation_metrics, kernel_shap_values, select_lambda
from .explain import _class_names, _items, _model_device, explaining_outputs, pixel_batches
from .task_vector import TaskVector

__all__ = ["DEFAULT_LAMS", "LamChoice", "choose_lam"]

logger = logging.getLogger(__name__)

DEFAULT_LAMS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0)
"""The λ grid [`choose_lam`] sweeps by default (the demo's grid)."""

LABELED_KERNEL_SHAP_SAMPLES = 500
"""Kernel SHAP coalitions per image with labels by default (the demo's evaluation budget); at least 2·M."""

UNLABELED_KERNEL_SHAP_SAMPLES = 250
"""The small Kernel SHAP budget per image without labels by default; at least 2·M."""


@dataclass
class LamChoice:
    r"""
    What [`choose_lam`] measured and chose. `print(choice)` shows the table.

    Args:
        lam (`float`): The chosen λ.
        table (`list[dict]`): One row per λ, in increasing λ: `lam`; `accuracy` (with labels; `None` without);
            `agreement` (fraction of images whose prediction equals the λ = 0 model's); `e_rmse` (mean per-image RMSE
            between the model's one-pass attributions and its own Kernel SHAP values of the explained class: the
            label, or its own prediction without labels), `e_rmse_l2` (the same after L2-normalising both), `spearman`,
            `iou_at_k` (K = 2), `shap_rms` and `attribution_rms` (the scales of both); `eligible` (within the
            tolerance), `chosen`, and `seconds`.
        rule (`str`): The rule used, in words.
        labeled (`bool`): Whether labels were used (the paper's rule) or not (agreement with λ = 0).
        max_accuracy_drop (`float`): The tolerance.
        kernel_shap_samples (`int`): Kernel SHAP coalitions per image and λ.
        num_images (`int`): Validation images.
        forward_passes (`int`): Images passed through a model for predictions and attributions (one per image and
            λ).
        kernel_shap_evaluations (`int`): Model evaluations of coalitions by Kernel SHAP (`kernel_shap_samples` per
            image and λ): the bulk of the cost.
        seconds (`float`): Wall time of the whole sweep.
    """

    lam: float
    table: list[dict]
    rule: str
    labeled: bool
    max_accuracy_drop: float
    kernel_shap_samples: int
    num_images: int
    forward_passes: int
    kernel_shap_evaluations: int
    seconds: float

    @property
    def cost(self) -> dict:
        """`forward_passes`, `kernel_shap_evaluations` and `seconds` as a dict."""
        return {
            "forward_passes": self.forward_passes,
            "kernel_shap_evaluations": self.kernel_shap_evaluations,
            "seconds": self.seconds,
        }

    def __str__(self) -> str:
        columns = [("λ", "lam", "6g")] + ([("accuracy", "accuracy", "9.3f")] if self.labeled else [])
        columns += [("agreement", "agreement", "9.3f"), ("E-RMSE", "e_rmse", "9.4g"), ("Spearman", "spearman", "8.3f"),
                    ("IoU@2", "iou_at_k", "6.3f"), ("seconds", "seconds", "8.2f")]  # fmt: skip
        widths = [int(spec.split(".")[0].rstrip("gf")) for _, _, spec in columns]
        lines = [f"chosen λ = {self.lam:g} ({self.rule})"]
        lines.append(
            "  " + "  ".join(f"{title:>{width}}" for (title, _, _), width in zip(columns, widths, strict=True))
        )
        for row in self.table:
            mark = "*" if row["chosen"] else (" " if row["eligible"] else "x")
            lines.append(f"{mark} " + "  ".join(f"{row[key]:{spec}}" for _, key, spec in columns))
        lines.append(
            "* chosen, x outside the tolerance. cost: "
            f"{self.forward_passes:,} forward passes, {self.kernel_shap_evaluations:,} Kernel SHAP model evaluations "
            f"({self.kernel_shap_samples} per image and λ, {self.num_images} images), {self.seconds:.1f} s"
        )
        return "\n".join(lines)


@dataclass
class _Split:
    """The protocol's split: `pixel_values` and the explained class of each image as `labels`."""

    pixel_values: torch.Tensor
    labels: torch.Tensor
    evidence: None = None

    def __len__(self) -> int:
        return len(self.labels)


def _check_lams(lams) -> list[float]:
    return sorted(check_lam_grid(lams))


def _labels_of(dataset, label_column, labels, names: list[str], model_name: str) -> list[int] | None:
    """The class ids of the images, in the model's numbering, or `None` (no labels)."""
    source = f"config.id2label of {model_name}"
    if isinstance(dataset, datasets.Dataset):
        if labels is not None:
            raise ValueError("labels= is for a list of images; a data set's labels come from its label_column.")
        if label_column is None:
            return None
        if label_column not in dataset.column_names:
            if label_column == "label":  # the default: a data set without labels
                logger.info("the data set has no 'label' column: choosing λ without labels")
                return None
            raise ValueError(f"label_column {label_column!r} is not a column of the data set {dataset.column_names}.")
        ids = check_labels(dataset[label_column], None, column=label_column)
        feature = dataset.features[label_column]
        generic = names == [f"LABEL_{i}" for i in range(len(names))]
        if isinstance(feature, datasets.ClassLabel) and not generic and feature.names != names:
            if sorted(feature.names) != sorted(names):
                raise ValueError(
                    f"the data set's classes {feature.names} (column {label_column!r}) are not the model's {names}."
                )
            logger.info("the data set numbers the classes differently from the model: labels mapped by name")
            ids = [names.index(feature.names[i]) for i in ids]
        return check_labels(ids, len(names), column=label_column, source=source)
    if labels is None:
        return None
    if isinstance(labels, torch.Tensor):
        labels = labels.tolist()
    return check_labels(list(labels), len(names), column="labels", source=source)


def _kernel_shap(model, pixel_values, targets, num_samples, seed, batch_size, num_patches) -> torch.Tensor:
    """Kernel SHAP values `(N, M)` of the model's logit of `targets`, with the protocol's seeds (chunks of 16
    images, seed + first index): embedding-level masking where the model offers it, pixel painting otherwise (the
    same coalitions either way)."""
    split = _Split(pixel_values, targets)
    if hasattr(model, "logits_from_embeddings") and hasattr(model, "_check_inputs"):
        return kernel_shap_values(model, split, num_samples, seed, batch_size)[0]
    device, values = _model_device(model), []
    patch_size = pixel_values.shape[-1] // math.isqrt(num_patches)

    def forward(images):
        return model(pixel_values=images).logits

    for i in range(0, len(split), 16):
        chunk, chunk_targets = pixel_values[i : i + 16].to(device), targets[i : i + 16].to(device)
        values.append(patch_kernel_shap(forward, chunk, chunk_targets, patch_size=patch_size, num_samples=num_samples,
                                        batch_size=batch_size, seed=seed + i).cpu())  # fmt: skip
    return torch.cat(values)


def _measure(model, pixel_values, labels, num_classes, batch_size):
    """One forward pass: predictions `(N,)` and the attributions `(N, M)` of the label (or predicted) class."""
    device, predictions, explained = _model_device(model), [], []
    for i in range(0, len(pixel_values), batch_size):
        logits, attributions = explaining_outputs(model, pixel_values[i : i + batch_size].to(device), num_classes)
        predicted = logits.float().argmax(dim=-1).cpu()
        target = predicted if labels is None else labels[i : i + batch_size]
        predictions.append(predicted)
        explained.append(select_target(attributions.float().cpu(), target))
    return torch.cat(predictions), torch.cat(explained)


def choose_lam(
    model,
    vector: TaskVector,
    dataset,
    *,
    lams: Sequence[float] | None = None,
    label_column: str | None = "label",
    labels: Sequence[int] | None = None,
    image_column: str | None = None,
    max_accuracy_drop: float = 0.04,
    kernel_shap_samples: int | None = None,
    seed: int = 0,
    image_processor=None,
    batch_size: int = 32,
    kernel_shap_batch_size: int = 256,
    check_base: bool = True,
) -> LamChoice:
    r"""
    Sweep λ on your validation images and choose it by the paper's rule.

    For each λ in `lams`, the λ-model is `vector.apply_to(model, λ, inplace=False)` (λ = 0: `model` itself) and is
    measured on every image: one forward pass gives its prediction and its patch attributions, and Kernel SHAP of
    *that same model* (its logit, baseline 0, the same coalitions for every λ; embedding-level masking where the
    model offers it, as [`SelfExplainingCLIPVision`] does, pixel masking otherwise, as for
    [`ExplainingCLIPForImageClassification`]) gives the reference explanation.

    - With labels (the paper's rule): the explained class is the label; the chosen λ has the lowest E-RMSE among
      the λ whose accuracy is at least accuracy(λ = 0) − `max_accuracy_drop` ([`select_lambda`]; ties go to the
      smaller λ, and λ = 0 is always eligible, so a vector that does not help is not applied).
    - Without labels: each model explains its own predicted class against a small Kernel SHAP budget, and the
      agreement of its predictions with the λ = 0 model's stands in for accuracy (agreement(λ = 0) = 1, so the
      tolerance bounds how many predictions the vector may change).

    Cost: `len(lams)` forward passes and `len(lams) · kernel_shap_samples` Kernel SHAP model evaluations per image,
    plus one copy of the model at a time; the result states what was spent. The processed images are held in memory
    (0.6 MB per 224-pixel image).

    Args:
        model (`nn.Module`):
            An explaining model (see [`explain`]); left unchanged (weights and training mode).
        vector ([`TaskVector`]):
            The explainability vector.
        dataset:
            The validation images: a `datasets.Dataset` (image column found by its `datasets.Image` feature type, or
            `image_column`), or anything [`explain`] accepts (a list of PIL images, paths, tensors).
        lams (`Sequence[float]`, *optional*, defaults to `DEFAULT_LAMS` = (0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.75, 1)):
            The λ grid: finite, distinct, containing 0 and at least one other value.
        label_column (`str`, *optional*, defaults to `"label"`):
            The data set's column of class ids, in the model's numbering (a `ClassLabel` column whose names are the
            model's classes in another order is mapped by name). `None`, or a data set without a `"label"` column
            when the default is left, means no labels.
        labels (`Sequence[int]`, *optional*):
            The class ids of a list of images (not a `datasets.Dataset`); `None`: no labels.
        image_column (`str`, *optional*):
            The image column of a `datasets.Dataset`.
        max_accuracy_drop (`float`, *optional*, defaults to 0.04):
            The tolerance: a fraction of accuracy (with labels) or of agreement (without).
        kernel_shap_samples (`int`, *optional*):
            Kernel SHAP coalitions per image and λ; defaults to 500 with labels and to 250 without (raised to the
            minimum, 2·M for M patches).
        seed (`int`, *optional*, defaults to 0):
            The Kernel SHAP seed (images `i..i+15` use `seed + i`, for every λ).
        image_processor (*optional*):
            The image processor for raw images (default: see [`explain`]).
        batch_size (`int`, *optional*, defaults to 32):
            Images per forward pass.
        kernel_shap_batch_size (`int`, *optional*, defaults to 256):
            Coalitions per forward pass of Kernel SHAP.
        check_base (`bool`, *optional*, defaults to `True`):
            Refuse a model that does not descend from the vector's base, before anything runs (passed to
            [`TaskVector.apply_to`]); `False` sweeps anyway.

    Returns:
        [`LamChoice`]: the chosen `lam`, the `table`, the `rule` and the cost.

    Raises:
        `TypeError`: `model` is not an explaining model, `vector` is not a [`TaskVector`], bad argument types.
        `ValueError`: no images, `lams` without 0 or with non-finite values, labels out of the model's range, a
            tolerance below 0.
        [`~hf_explvec.arithmetic.IncompatibleKeysError`]: the vector does not fit the model (before anything runs).
        [`~hf_explvec.base_check.BaseModelMismatchError`] (a `ValueError`): `model` does not descend from the
            vector's base (with `check_base=True`; before anything runs).
    """
    start = time.perf_counter()
    names = _class_names(model)
    if not isinstance(vector, TaskVector):
        raise TypeError(f"vector must be a hf_explvec.TaskVector, got {type(vector).__name__}.")
    lams = _check_lams(DEFAULT_LAMS if lams is None else lams)
    max_accuracy_drop = check_finite("max_accuracy_drop", max_accuracy_drop)
    if max_accuracy_drop < 0:
        raise ValueError(f"max_accuracy_drop must be >= 0, got {max_accuracy_drop}.")
    batch_size = check_int("batch_size", batch_size, 1)
    kernel_shap_batch_size = check_int("kernel_shap_batch_size", kernel_shap_batch_size, 1)
    seed = check_int("seed", seed)
    applied = getattr(getattr(model, "config", None), "explainability", None)
    if applied:
        raise ValueError(
            f"this model already has the vector {applied.get('vector') or '(in memory)'} applied with "
            f"λ={applied.get('lam')}: the sweep would start from it. Call hf_explvec.remove_vector(model) first."
        )
    if kernel_shap_samples is not None:
        kernel_shap_samples = check_int("kernel_shap_samples", kernel_shap_samples, 1)
        vision = getattr(getattr(model, "config", None), "vision_config", None)
        if vision is not None:  # fail before any image is processed
            patches = (vision.image_size // vision.patch_size) ** 2
            if kernel_shap_samples < min_num_samples(patches):
                raise ValueError(
                    f"kernel_shap_samples={kernel_shap_samples} is below Kernel SHAP's minimum of "
                    f"{min_num_samples(patches)} for {patches} patches."
                )
    apply_kwargs = {"check_base": check_base}  # apply_to checks its type

    count, items = _items(dataset, image_column, batch_size)
    label_ids = _labels_of(dataset, label_column, labels, names, type(model).__name__)
    if label_ids is not None and len(label_ids) != count:
        raise ValueError(f"{len(label_ids)} labels for {count} images: give one label per image.")
    labeled = label_ids is not None
    targets = torch.tensor(label_ids, dtype=torch.long) if labeled else None

    # The first λ-model is built before any image is processed: a vector that does not fit fails here.
    first = next(lam for lam in lams if lam != 0.0)
    models = {first: vector.apply_to(model, first, inplace=False, **apply_kwargs)}
    was_training = model.training
    rows = []
    try:
        model.eval()
        with torch.no_grad():
            pixel_values = torch.cat([pixels for _, pixels, _, _ in pixel_batches(model, items, image_processor,
                                                                                  batch_size)])  # fmt: skip
        default = LABELED_KERNEL_SHAP_SAMPLES if labeled else UNLABELED_KERNEL_SHAP_SAMPLES
        samples = kernel_shap_samples
        reference_predictions = None
        for lam in lams:
            lam_start = time.perf_counter()
            current = model if lam == 0.0 else models.pop(lam, None)
            if current is None:
                current = vector.apply_to(model, lam, inplace=False, **apply_kwargs)
            current.eval()
            with torch.no_grad():
                predictions, explained = _measure(current, pixel_values, targets, len(names), batch_size)
            explained_class = targets if labeled else predictions
            num_patches = explained.shape[1]
            samples = samples or max(default, min_num_samples(num_patches))
            reference = _kernel_shap(current, pixel_values, explained_class, samples, seed, kernel_shap_batch_size,
                                     num_patches)  # fmt: skip
            if lam == 0.0:
                reference_predictions = predictions
            row = {"lam": lam, "accuracy": float((predictions == targets).double().mean()) if labeled else None}
            row["predictions"] = predictions
            split = _Split(pixel_values, explained_class)
            row.update(explanation_metrics(current, split, explained, reference, perturbation=False))
            row["seconds"] = time.perf_counter() - lam_start
            rows.append(row)
            del current
    finally:
        model.train(was_training)
    for row in rows:
        row["agreement"] = float((row.pop("predictions") == reference_predictions).double().mean())
    measure = "accuracy" if labeled else "agreement"
    sweep = [{"lam": row["lam"], "accuracy": row[measure], "e_rmse": row["e_rmse"]} for row in rows]
    chosen = select_lambda(sweep, max_accuracy_drop)
    eligible = set(eligible_lambdas(sweep, max_accuracy_drop))
    order = ["lam", "accuracy", "agreement", "e_rmse", "e_rmse_l2", "spearman", "iou_at_k", "shap_rms",
             "attribution_rms", "eligible", "chosen", "seconds"]  # fmt: skip
    table = []
    for row in rows:
        row.update(eligible=row["lam"] in eligible, chosen=row["lam"] == chosen)
        table.append({key: row[key] for key in order})
    if labeled:
        rule = (
            "labels: lowest E-RMSE against Kernel SHAP of the label class among λ with accuracy ≥ "
            f"accuracy(λ=0) − {max_accuracy_drop:g}"
        )
    else:
        rule = (
            f"no labels: lowest E-RMSE against a small Kernel SHAP budget ({samples}) of each model's predicted "
            f"class among λ whose predictions agree with λ=0's on ≥ {1 - max_accuracy_drop:g} of the images"
        )
    return LamChoice(
        lam=chosen,
        table=table,
        rule=rule,
        labeled=labeled,
        max_accuracy_drop=max_accuracy_drop,
        kernel_shap_samples=samples,
        num_images=count,
        forward_passes=count * len(lams),
        kernel_shap_evaluations=count * len(lams) * samples,
        seconds=time.perf_counter() - start,
    )
