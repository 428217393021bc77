"""Forward -> score -> target: the one place where a classifier's output becomes the explained numbers.

Every masking scheme, every perturbation metric and the labelling job run a classifier on images and read one
class score per image. This package-private module (public names) does that once, after captum's
`_run_forward` / `_select_targets`:

- [`logits_of`]: the class-score tensor of whatever a forward call returned (a tensor, a `ModelOutput` with
  `logits`, or a tuple whose first element is the logits), checked to be `(rows, num_classes)`;
- [`score`]: logits -> the explained score (`"logit"`, `"log_prob"` or `"prob"`), in float32;
- [`check_targets`]: validates the explained class of each input (an int or a `(B,)` integer tensor);
- [`check_class_range`]: refuses class ids outside `[0, num_classes)` once the number of classes is known;
- [`select_targets`]: the score of each row's target class;
- [`check_finite_values`]: refuses NaN / infinite scores, naming the input they came from.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

__all__ = [
    "VALUE_OPTIONS",
    "check_class_range",
    "check_finite_values",
    "check_targets",
    "logits_of",
    "score",
    "select_targets",
]

VALUE_OPTIONS = ("logit", "log_prob", "prob")
"""The scores a class can be explained by: raw logit, log-softmax or softmax."""


def logits_of(output: Any, rows: int | None = None, *, name: str = "forward_fn") -> torch.Tensor:
    r"""The class scores in what a forward call returned.

    Args:
        output (`torch.Tensor`, `ModelOutput` with a `logits` tensor, or `tuple`): what the classifier returned;
            a tuple (transformers' `return_dict=False`) gives its first element.
        rows (`int`, *optional*): when given, the scores must have shape `(rows, num_classes)`.
        name (`str`, *optional*, defaults to `"forward_fn"`): what produced `output`, for error messages.

    Returns:
        `torch.Tensor` of shape `(rows, num_classes)`: the scores, not copied.

    Raises:
        `TypeError`: no tensor of scores in `output`.
        `ValueError`: the scores are not `(rows, num_classes)`.
    """
    if isinstance(output, torch.Tensor):
        logits = output
    elif isinstance(output, tuple) and output and isinstance(output[0], torch.Tensor):
        logits = output[0]
    else:
        logits = getattr(output, "logits", None)
    if not isinstance(logits, torch.Tensor):
        raise TypeError(
            f"{name} must return a logits tensor of shape (N, num_classes) or an object with a `.logits` tensor, "
            f"got {type(output).__name__}"
        )
    if rows is not None and (logits.dim() != 2 or logits.shape[0] != rows):
        raise ValueError(
            f"{name} must return logits of shape ({rows}, num_classes) for {rows} images, got {tuple(logits.shape)}"
        )
    return logits


def score(logits: torch.Tensor, value: str = "logit") -> torch.Tensor:
    r"""The explained score of every class, in float32.

    Args:
        logits (`torch.Tensor` of shape `(N, num_classes)`): class scores.
        value (`str`, *optional*, defaults to `"logit"`): `"logit"` (the raw score), `"log_prob"` (log-softmax)
            or `"prob"` (softmax), computed in float32.

    Returns:
        `torch.Tensor` of shape `(N, num_classes)`, float32 (float64 logits stay float64).
    """
    if value not in VALUE_OPTIONS:
        raise ValueError(f"value must be one of {VALUE_OPTIONS}, got {value!r}")
    scores = logits.float()
    if value == "log_prob":
        return scores.log_softmax(dim=-1)
    if value == "prob":
        return scores.softmax(dim=-1)
    return scores


def check_targets(
    target: Any,
    batch_size: int,
    num_classes: int | None = None,
    *,
    name: str = "target",
    device: torch.device | str | None = None,
) -> torch.Tensor:
    r"""Validates the explained class of each of `batch_size` inputs.

    Args:
        target (`int` or `torch.Tensor` of shape `()` or `(batch_size,)`, integer dtype): the class ids; an int
            (or a 0-d tensor) is used for every input. NumPy integers and integer arrays are accepted too.
        batch_size (`int`): the number of inputs.
        num_classes (`int`, *optional*): when known, ids must be below it (see [`check_class_range`]).
        name (`str`, *optional*, defaults to `"target"`): the argument name used in error messages.
        device (`torch.device` or `str`, *optional*): where to put the result (defaults to the input's device, or
            CPU for an int).

    Returns:
        `torch.LongTensor` of shape `(batch_size,)`: a new tensor (the input is never modified).

    Raises:
        `TypeError`: a bool, a float, a string, a floating / complex / bool tensor.
        `ValueError`: a wrong shape, negative ids, or ids `>= num_classes`.
    """
    if isinstance(target, (bool, np.bool_)):
        raise TypeError(f"{name} must be an int or a ({batch_size},) integer tensor of class ids, got bool")
    if isinstance(target, (int, np.integer)):
        tensor = torch.tensor(int(target))
    elif isinstance(target, np.ndarray):
        tensor = torch.from_numpy(np.array(target, copy=True)) if target.dtype != object else None
    elif isinstance(target, torch.Tensor):
        tensor = target.detach()
    else:
        tensor = None
    if tensor is None:
        raise TypeError(
            f"{name} must be an int or a ({batch_size},) integer tensor of class ids, got {type(target).__name__}"
        )
    if tensor.is_floating_point() or tensor.is_complex() or tensor.dtype == torch.bool:
        raise TypeError(f"{name} must hold integer class ids, got dtype {tensor.dtype} (an integer dtype is needed)")
    if tensor.dim() == 0:
        tensor = tensor.expand(batch_size)
    if tuple(tensor.shape) != (batch_size,):
        raise ValueError(f"{name} must be an int or have shape ({batch_size},), got {tuple(tensor.shape)}")
    tensor = tensor.to(device=tensor.device if device is None else device, dtype=torch.long).clone()
    if batch_size and int(tensor.min()) < 0:
        raise ValueError(f"{name} must hold class ids >= 0, got values in [{int(tensor.min())}, {int(tensor.max())}]")
    if num_classes is not None:
        check_class_range(tensor, num_classes, name=name)
    return tensor


def check_class_range(targets: torch.Tensor, num_classes: int, *, name: str = "target", source: str = "") -> None:
    r"""Raises `ValueError` unless every id in `targets` lies in `[0, num_classes)`.

    Args:
        targets (`torch.LongTensor` of shape `(B,)`): class ids, e.g. from [`check_targets`].
        num_classes (`int`): the number of classes of the classifier.
        name (`str`, *optional*, defaults to `"target"`): the argument name used in error messages.
        source (`str`, *optional*): where `num_classes` comes from (e.g. `"forward_fn"`), for the message.
    """
    if targets.numel() == 0:
        return
    low, high = int(targets.min()), int(targets.max())
    if low < 0 or high >= num_classes:
        bad = low if low < 0 else high
        origin = f" (num_classes={num_classes} from {source})" if source else ""
        raise ValueError(
            f"{name} must hold class ids in [0, {num_classes - 1}], got values in [{low}, {high}]: {name} must be in "
            f"[0, {num_classes}), ids in [0, {num_classes - 1}] for a model with {num_classes} classes{origin}, "
            f"got {bad}"
        )


def select_targets(scores: torch.Tensor, targets: torch.Tensor, index: torch.Tensor | None = None) -> torch.Tensor:
    r"""The score of each row's target class.

    Args:
        scores (`torch.Tensor` of shape `(N, num_classes)`): e.g. from [`score`].
        targets (`torch.LongTensor` of shape `(B,)`): the class of each input (already range-checked).
        index (`torch.LongTensor` of shape `(N,)`, *optional*): the input of each row; `None` when row `i` is
            input `i` (`N == B`).

    Returns:
        `torch.Tensor` of shape `(N,)`: `scores[i, targets[index[i]]]`.
    """
    targets = targets.to(scores.device)
    if index is not None:
        targets = targets.index_select(0, index.to(scores.device))
    return scores.gather(1, targets.unsqueeze(1)).squeeze(1)


def check_finite_values(
    values: torch.Tensor, index: torch.Tensor | None = None, *, name: str = "forward_fn", unit: str = "image index"
) -> None:
    r"""Raises `ValueError` if `values` holds NaN or infinite entries, naming the inputs they belong to.

    One `isfinite().all()` reduction when every value is finite; the offending inputs are only looked up on failure.

    Args:
        values (`torch.Tensor` of shape `(N,)` or `(N, K)`): scores of `N` rows.
        index (`torch.LongTensor` of shape `(N,)`, *optional*): the input (image) of each row; `None` when row `i` is
            input `i`.
        name (`str`, *optional*, defaults to `"forward_fn"`): what produced the values.
        unit (`str`, *optional*, defaults to `"image index"`): what an entry of `index` is, for the message.
    """
    finite = torch.isfinite(values)
    if bool(finite.all()):
        return
    bad_rows = ~finite.reshape(finite.shape[0], -1).all(dim=1)
    images = (index[bad_rows.to(index.device)] if index is not None else bad_rows.nonzero().flatten()).unique()
    kinds = [kind for kind, found in (("NaN", torch.isnan(values).any()), ("Inf", torch.isinf(values).any())) if found]
    raise ValueError(
        f"{name} returned non-finite values ({' and '.join(kinds)}) for {unit} {images.tolist()[:10]}: their Kernel "
        f"SHAP values would all be NaN; check the model and the inputs (pixels, baseline) of these inputs"
    )
