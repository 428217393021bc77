"""Input validation shared by the evaluation modules (package-private module, public names).

Every check raises `TypeError` (wrong kind of value) or `ValueError` (right kind, wrong shape or range) with a
message that names the argument, the expected and the actual value. The checks never modify their input: the
tensors they return are new views or copies (detached, moved to CPU float64 where stated).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..attribution._forward import check_targets

__all__ = [
    "as_float_matrix",
    "as_labels",
    "as_tensor",
    "check_positive_int",
    "check_reduction",
    "check_same_shape",
    "reduce",
]


def as_tensor(value: Any, name: str) -> torch.Tensor:
    """Turns a tensor, a numpy array or a (nested) sequence of numbers into a tensor.

    Args:
        value (`torch.Tensor`, `np.ndarray`, `list` or `tuple`): the input.
        name (`str`): the argument name used in error messages.

    Returns:
        `torch.Tensor`: the tensor detached (a tensor input), or a tensor sharing the numpy array's memory; Python
        floats become float64.

    Raises:
        `TypeError`: not one of the accepted types, or not numbers.
        `ValueError`: a ragged sequence.
    """
    if isinstance(value, torch.Tensor):
        return value.detach()
    if isinstance(value, np.ndarray):
        if value.dtype == object:
            raise TypeError(f"`{name}` must be a numeric array, got a numpy array of dtype object (ragged rows?).")
        return torch.from_numpy(value)
    if isinstance(value, (list, tuple)):
        try:  # through numpy so that Python floats become float64, not torch's default float32
            array = np.asarray(value)
        except ValueError:
            array = None
        if array is None or array.dtype == object:
            raise ValueError(f"`{name}` must be a rectangular sequence of numbers (every row the same length).")
        if array.dtype.kind not in "biuf":
            raise TypeError(f"`{name}` must hold numbers, got numpy dtype {array.dtype}.")
        return torch.from_numpy(array)
    raise TypeError(f"`{name}` must be a torch.Tensor, a numpy array or a list, got {type(value).__name__}.")


def as_float_matrix(value: Any, name: str) -> torch.Tensor:
    """Validates a finite `(B, M)` real matrix with `B, M >= 1`.

    Args:
        value (`torch.Tensor`, `np.ndarray` or `list` of shape `(B, M)`): the input.
        name (`str`): the argument name used in error messages.

    Returns:
        `torch.Tensor` of shape `(B, M)`: float64 on CPU.

    Raises:
        `TypeError`: bool or complex values, or an unsupported type.
        `ValueError`: not two-dimensional, empty, or NaN / infinite values.
    """
    tensor = as_tensor(value, name)
    if tensor.dtype == torch.bool or tensor.is_complex():
        raise TypeError(f"`{name}` must hold real numbers, got dtype {tensor.dtype}.")
    if tensor.ndim != 2:
        raise ValueError(f"`{name}` must have shape (batch_size, num_patches), got {tuple(tensor.shape)}.")
    if tensor.shape[0] == 0 or tensor.shape[1] == 0:
        raise ValueError(f"`{name}` must be non-empty, got shape {tuple(tensor.shape)}.")
    tensor = tensor.to(device="cpu", dtype=torch.float64)  # small; float64 is not available on every device
    if not torch.isfinite(tensor).all():
        rows = torch.nonzero(~torch.isfinite(tensor).all(dim=1)).flatten().tolist()
        raise ValueError(f"`{name}` contains NaN or infinite values (rows {rows[:10]}).")
    return tensor


def check_same_shape(a: torch.Tensor, b: torch.Tensor, name_a: str, name_b: str) -> None:
    """Raises `ValueError` naming both shapes when `a` and `b` differ in shape."""
    if a.shape != b.shape:
        raise ValueError(
            f"`{name_a}` and `{name_b}` must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}."
        )


def as_labels(value: Any, name: str, batch_size: int, num_classes: int | None = None) -> torch.Tensor:
    """Validates integer class ids of shape `(batch_size,)` (a Python int is broadcast).

    Args:
        value (`int`, `torch.Tensor`, `np.ndarray` or `list` of shape `(batch_size,)`): the class ids.
        name (`str`): the argument name used in error messages.
        batch_size (`int`): the expected length.
        num_classes (`int`, *optional*): when given, ids must lie in `[0, num_classes - 1]`.

    Returns:
        `torch.Tensor` of shape `(batch_size,)`: int64.

    Raises:
        `TypeError`: bools, floats or complex values.
        `ValueError`: a wrong shape or ids out of range.
    """
    if isinstance(value, (list, tuple)):
        value = as_tensor(value, name)
    return check_targets(value, batch_size, num_classes, name=f"`{name}`")


def check_reduction(reduction: Any) -> None:
    """Raises `ValueError` unless `reduction` is `"mean"` or `"none"`."""
    if not isinstance(reduction, str) or reduction not in ("mean", "none"):
        raise ValueError(f"`reduction` must be 'mean' or 'none', got {reduction!r}.")


def check_positive_int(value: Any, name: str) -> int:
    """Returns `value` as an `int >= 1`; `TypeError` for non-integers (bools included), `ValueError` below 1."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"`{name}` must be an int, got {type(value).__name__}.")
    if value < 1:
        raise ValueError(f"`{name}` must be >= 1, got {value}.")
    return int(value)


def reduce(values: torch.Tensor, reduction: str) -> float | torch.Tensor:
    """`values.mean()` as a Python float for `"mean"`, the tensor itself for `"none"`."""
    return float(values.mean()) if reduction == "mean" else values
