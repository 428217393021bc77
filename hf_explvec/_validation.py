"""Scalar argument checks shared across the package (package-private module, public names).

Each check raises a typed error whose message names the argument, the expected and the actual value, and
returns the value normalised to a plain Python type.
"""

from __future__ import annotations

import math
import numbers

import numpy as np

__all__ = ["check_finite", "check_int", "check_probability"]


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
