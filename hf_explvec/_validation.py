"""Scalar argument checks shared across the package (package-private module, public names).

Each check raises a typed error whose message names the argument, the expected and the actual value, and
returns the value normalised to a plain Python type.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import numpy as np
import torch

__all__ = ["check_finite", "check_finite_tensor", "check_int", "check_lam_grid", "check_pixel_values",
           "check_probability"]  # fmt: skip


def check_int(name: str, value: object, minimum: int | None = None) -> int:
    """Return `value` as an `int`, refusing bools, floats and values below `minimum`.

    Args:
        name (`str`): the argument name used in error messages.
        value (`object`): the value to check; Python and NumPy integers are accepted (bools are not).
        minimum (`int`, *optional*): the smallest accepted value; `None` accepts any integer.

    Raises:
        `TypeError`: `value` is not an integer.
        `ValueError`: `value` is below `minimum`.
    """
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def check_finite(name: str, value: object) -> float:
    """Return `value` as a finite `float`, refusing bools, non-numbers, NaN and infinities.

    Raises:
        `TypeError`: `value` is not a real number.
        `ValueError`: `value` is NaN or infinite.
    """
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return value


def check_probability(name: str, value: object) -> float:
    """Return `value` as a `float` in `[0, 1]` (see [`check_finite`] for the type checks).

    Raises:
        `TypeError`: `value` is not a real number.
        `ValueError`: `value` is NaN, infinite or outside `[0, 1]`.
    """
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a finite number in [0, 1], got {type(value).__name__}: {value!r}")
    value = float(value)
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise ValueError(f"{name} must be a finite number in [0, 1], got {value!r}")
    return value


def check_pixel_values(pixel_values: object, name: str = "pixel_values") -> None:
    """Refuse anything but a floating-point tensor as model pixels: one policy for the model and every explainer.

    CLIP-style models expect images resized and normalised by their image processor (float, about zero mean).
    Raw images (PIL images, numpy arrays, integer tensors such as uint8 pixels in 0..255) are refused with a
    `TypeError` that says so, rather than being cast and silently giving meaningless scores.

    Raises:
        `TypeError`: `pixel_values` is not a `torch.Tensor`, or its dtype is not floating point.
    """
    hint = (
        "run the image processor first, e.g. "
        "`image_processor(images, return_tensors='pt')['pixel_values']` (resized, normalised float pixels)"
    )
    if not isinstance(pixel_values, torch.Tensor):
        raise TypeError(
            f"{name} must be a torch.Tensor of shape (batch_size, channels, height, width), got "
            f"{type(pixel_values).__module__}.{type(pixel_values).__name__}: {hint}"
        )
    if not pixel_values.is_floating_point():
        raise TypeError(f"{name} must be a floating point tensor, got dtype {pixel_values.dtype}: {hint}")


def check_finite_tensor(tensor: torch.Tensor, name: str, unit: str = "row") -> None:
    """Raise `ValueError` naming `tensor` and the first indices along dimension 0 that hold NaN or infinite values.

    Costs one `isfinite().all()` reduction (and, on a GPU, one device synchronisation) when every value is finite;
    the offending indices are looked up only on failure.

    Args:
        tensor (`torch.Tensor` of shape `(N, ...)`): the floating-point values to check.
        name (`str`): the tensor's name for the message.
        unit (`str`, *optional*, defaults to `"row"`): what an index along dimension 0 is (e.g. `"image index"`).
    """
    finite = torch.isfinite(tensor)
    if bool(finite.all()):
        return
    bad = (~finite.reshape(finite.shape[0], -1).all(dim=1)).nonzero().flatten().tolist()
    shown = ", ".join(str(i) for i in bad[:10]) + (f", ... ({len(bad)} in all)" if len(bad) > 10 else "")
    raise ValueError(f"{name} contains NaN or infinite values at {unit} {shown}")


def check_lam_grid(lams: object) -> list[float]:
    """Return a λ grid as floats, in the order given: a sequence of finite numbers that holds 0 (the model without
    the vector, which every λ is compared with), at least one other value, and no repeats.

    Raises:
        `TypeError`: `lams` is not a sequence (a string is refused), or holds a non-number (named by index).
        `ValueError`: a non-finite value, no 0, only 0, or a repeated value.
    """
    if isinstance(lams, (str, bytes)) or not isinstance(lams, (Sequence, np.ndarray, torch.Tensor)):
        raise TypeError(f"lams must be a sequence of numbers, got {type(lams).__name__}.")
    values = [check_finite(f"lams[{i}]", float(lam) if isinstance(lam, torch.Tensor) else lam)
              for i, lam in enumerate(lams)]  # fmt: skip
    if 0.0 not in values:
        raise ValueError(f"lams must contain 0 (the model without the vector, which each λ is compared with), got "
                         f"{values}.")  # fmt: skip
    if len(set(values)) != len(values):
        raise ValueError(f"lams must not repeat a value, got {values}.")
    if len(values) < 2:
        raise ValueError("lams holds only 0: give at least one λ to compare with it.")
    return values
