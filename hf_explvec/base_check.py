r"""Does a model descend from a task vector's base? A check that needs only a compact fingerprint of the base.

A task vector τ = θ* − θ is only meaningful on models that descend from its base θ (θ itself, or a fine-tune of
it). The vector records a **fingerprint** of θ's weights ([`base_fingerprint`], stored in its `config.json`), and
[`check_base`] compares a model's weights with it, without downloading θ.

**The fingerprint** (`method: "coordinate-sketch"`, `version: 1`). For every floating-point tensor of the canonical
CLIP vision state ([`~hf_explvec.arithmetic.vision_state`]) with at least 2 dimensions (patch and position
embeddings, attention and MLP matrices, the visual projection; 1-D biases and LayerNorm weights start from the same
constants in every pretraining and say little), it stores the tensor's shape and a sketch: the values at k fixed
pseudo-random coordinates, centred and scaled to unit RMS, as little-endian float16 encoded in base64 (one short
string per tensor, so `config.json` stays readable). The coordinates are the first k distinct values of
`int(sha256(f"{name}/{j}")) mod numel`, j = 0, 1, 2, …: a function of the canonical name and the size only (stable
across torch and numpy versions, the same on every device, independent of the state dict's order), gathered
directly from the tensor without a copy of it. k is chosen so that the whole fingerprint holds about
`TOTAL_COORDINATES` (4096) values: k = min(numel, max(`MIN_COORDINATES`, ⌈4096 / T⌉)) for T tensors.

**The distance.** For each tensor of the fingerprint that the model has with the same shape (tensors it lacks or
shapes that differ are skipped: layouts are [`~TaskVector.apply_to`]'s job), gather the model's values y at the same
coordinates and take the Pearson correlation ρ_t between y and the stored sketch s (ρ_t = 0 when y is constant). The
distance is one minus the coordinate-weighted mean correlation:

    distance = 1 − Σ_t k_t ρ_t / Σ_t k_t

It is 0 for the base itself (up to float16 rounding), about 1 for a model with independent weights (a different
pretraining from another initialisation: the coordinates of two independent models are uncorrelated, ρ ≈ 0 ± 1/√4096
= ± 0.016), and lies in between for a fine-tune θ + Δ, where ρ ≈ |θ| / √(|θ|² + |Δ|²) stays clearly positive unless
the fine-tune has moved every tensor by several times its own norm.

Why a correlation rather than a relative L2 distance ‖y − x‖ / ‖x‖: a correlation ignores scale and offset, so a
fine-tune with a large learning rate, whose update is as large as the weights themselves (relative L2 ≥ 1), is still
recognised, and a foreign model with smaller weights (say, more weight decay) does not look closer than a fine-tune;
its null distribution (≈ 1 ± 0.016) is known without calibration. The distance is a relative L2 distance after
standardising: for the sketches x̂, ŷ centred and scaled to unit norm, ‖ŷ − x̂‖² = 2(1 − ρ).

**Threshold.** [`check_base`] refuses when the distance exceeds [`DEFAULT_THRESHOLD`] = 0.9, i.e. when the
model's correlation with its base is below 0.1: 6.5 standard deviations above an unrelated model's, and well below
the most aggressive honest fine-tune measured. Measured on the tiny CLIP of `hf_explvec.testing.tiny_clip_model`
(weights of standard deviation about 0.1, so an AdamW step of 1e-2 is a tenth of a weight) with
`python scripts/calibrate_base_check.py --steps 500 --pretrain_steps 100` (relative L2 of the full weights for
comparison; "pre0" is seed 0 after 100 steps of the demo's base stage, lr 1e-3; fine-tunes are every weight of a
`CLIPForImageClassification` with AdamW, weight decay 0.01, batches of 32 on the demo's `digits_on_textures`):

| model, against the fingerprint of                                   | distance | relative L2 |
|---------------------------------------------------------------------|---------:|------------:|
| pre0 in bfloat16, against pre0                                      |    0.000 |       0.002 |
| pre0, against its initialisation (seed 0)                           |    0.032 |       0.108 |
| fine-tune of pre0, lr 1e-4 / 1e-3, 500 steps                        | 0.020 / 0.050 | 0.14 / 0.24 |
| fine-tune of pre0, lr 1e-2, 500 steps                               |    0.268 |       0.890 |
| fine-tune of pre0, lr 1e-2, shuffled labels, 500 steps              |    0.506 |       2.058 |
| fine-tune of pre0, lr 3e-2, 500 steps                               |    0.688 |       3.130 |
| fine-tune of the random seed-0 CLIP, lr 1e-2 / 3e-2, 500 steps      | 0.330 / 0.656 | 1.03 / 3.05 |
| `hf_explvec.train` (α 0.8) from pre0, lr 3e-3 / 1e-2, 500 steps     | 0.078 / 0.216 | 0.25 / 0.54 |
| seed 1 (random), against seed 0 / pre0                              | 0.989 / 0.989 | 1.415 / 1.410 |
| seed 1 after the same base stage ("pre1"), against pre0             |    0.983 |       1.414 |
| fine-tune of pre1 (lr 1e-3, 500 steps), against pre0                |    0.982 |       1.460 |

and, with `--sections null`, over the 132 ordered pairs of unrelated initialisations (seeds 0 to 11): distance mean
1.001, standard deviation 0.0153, min 0.950, max 1.050. The relative L2 column shows why the distance is not a
relative L2: the honest fine-tunes at large learning rates are further from their base in L2 (2 to 3.1) than the
foreign models are (1.41). A fine-tune is refused only once every tensor has moved by about ten times its own norm.
The verdict is only as sure as the number of tensors compared: with few tensors in common (a model that shares a
handful of the base's layers), an unrelated model's distance spreads by 1/√(compared coordinates).

**Size and cost** on the real ViT-B/32 vision architecture (transformers' `CLIPVisionConfig()` defaults, random
weights, 87.8M parameters in the canonical vision state): 75 tensors, 18.0 kB of JSON (21.5 kB with `indent=2`);
[`base_fingerprint`] and [`base_distance`] each take about 0.01 s on one idle CPU thread, under 0.1 s on a busy one
(measured with `python -m pytest -m slow -s tests/test_base_check.py`, which prints them). The tiny CLIP's
fingerprint is 12.4 kB (15 tensors of 274 coordinates).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import math
import numbers
from collections.abc import Mapping

import numpy as np
import torch

from .arithmetic import preview

logger = logging.getLogger(__name__)

METHOD = "coordinate-sketch"
VERSION = 1
TOTAL_COORDINATES = 4096
"""About how many coordinates a fingerprint holds in all (split evenly over the tensors)."""
MIN_COORDINATES = 32
"""The fewest coordinates per tensor (unless the tensor has fewer elements)."""
DEFAULT_THRESHOLD = 0.9
"""[`check_base`] refuses a model whose [`base_distance`] exceeds this (a correlation with the base below 0.1)."""

__all__ = [
    "DEFAULT_THRESHOLD",
    "BaseModelMismatchError",
    "base_distance",
    "base_fingerprint_or_none",
    "base_fingerprint",
    "check_base",
    "validate_base_fingerprint",
]


class BaseModelMismatchError(ValueError):
    r"""
    A model does not descend from a task vector's base model: its weights are as far from the base's fingerprint as
    an unrelated model's.

    Attributes:
        base_model (`str` or `None`): The vector's base model (`None` when the vector does not name it).
        distance (`float`): The model's [`base_distance`] to the fingerprint.
        threshold (`float`): The largest distance accepted.
    """

    def __init__(self, base_model: str | None, distance: float, threshold: float):
        self.base_model, self.distance, self.threshold = base_model, distance, threshold
        base = repr(base_model) if base_model else "unknown base"
        super().__init__(
            f"the model does not descend from the vector's base model {base}: its weights are at distance "
            f"{distance:.3f} from the base's fingerprint, above the threshold {threshold:.3f} (0 = the base itself, "
            "about 1 = an unrelated pretraining). A task vector only works on the model it was taken from or a "
            "fine-tune of it; pass check_base=False to apply it anyway."
        )

    def __reduce__(self):  # copies (and processes that pass errors on) rebuild it from its attributes
        return type(self), (self.base_model, self.distance, self.threshold)


def _coordinates(name: str, numel: int, count: int) -> np.ndarray:
    """The first `count` distinct values of `int(sha256(f"{name}/{j}")) mod numel`, j = 0, 1, ... (all of
    `range(numel)` when `count >= numel`)."""
    if count >= numel:
        return np.arange(numel, dtype=np.int64)
    chosen: dict[int, None] = {}
    j = 0
    while len(chosen) < count:
        digest = hashlib.sha256(f"{name}/{j}".encode()).digest()
        chosen.setdefault(int.from_bytes(digest[:8], "little") % numel, None)
        j += 1
    return np.fromiter(chosen, dtype=np.int64, count=count)


def _gather(name: str, tensor: torch.Tensor, count: int) -> np.ndarray:
    """`tensor`'s values at the sketch coordinates of `name`, as float64, without copying the tensor."""
    if tensor.is_meta:
        raise ValueError(f"{name} is on the meta device (no values): load the model's weights first.")
    flat = _coordinates(name, tensor.numel(), count)
    index = tuple(torch.from_numpy(i).to(tensor.device) for i in np.unravel_index(flat, tuple(tensor.shape)))
    return tensor.detach()[index].to(device="cpu", dtype=torch.float64).numpy()


def _standardised(values: np.ndarray) -> np.ndarray | None:
    """`values` centred and scaled to unit RMS; `None` when they are constant."""
    centred = values - values.mean()
    norm = float(np.sqrt(np.dot(centred, centred)))
    if not norm > 0:
        return None
    return centred * (math.sqrt(len(values)) / norm)


def _check_state(state) -> None:
    if not isinstance(state, Mapping):
        raise TypeError(f"state must be a mapping of names to tensors, got {type(state).__name__}.")
    bad = sorted(str(k) for k, v in state.items() if not torch.is_tensor(v))
    if bad:
        raise TypeError(f"state must map names to tensors; not tensors: {preview(bad)}.")


def base_fingerprint(state: Mapping[str, torch.Tensor]) -> dict:
    r"""
    A compact fingerprint of a base model's weights, for [`check_base`] (see the module docstring for the method).

    Args:
        state (`Mapping[str, torch.Tensor]`): The canonical CLIP vision state of the base model,
            `hf_explvec.arithmetic.vision_state(model.state_dict())`. Any device and floating dtype.

    Returns:
        `dict`: JSON-serialisable, `{"method": "coordinate-sketch", "version": 1, "tensors": {name: {"shape":
        [...], "sketch": base64 float16}}}`, names sorted. 18 kB as JSON for ViT-B/32.

    Raises:
        `TypeError`: `state` is not a mapping of tensors.
        `ValueError`: a sketched tensor holds NaN or infinity, or no tensor with at least 2 dimensions and
            non-constant values is found.

    Example:

    ```python
    >>> from hf_explvec.arithmetic import vision_state
    >>> from hf_explvec.base_check import base_fingerprint, base_distance
    >>> from hf_explvec.testing import tiny_clip_model
    >>> fingerprint = base_fingerprint(vision_state(tiny_clip_model(seed=0).state_dict()))
    >>> round(base_distance(fingerprint, vision_state(tiny_clip_model(seed=0).state_dict())), 3)  # the base
    0.0
    >>> round(base_distance(fingerprint, vision_state(tiny_clip_model(seed=1).state_dict())), 2)  # another init
    0.99

    ```
    """
    _check_state(state)
    names = sorted(k for k, v in state.items() if v.is_floating_point() and v.dim() >= 2 and v.numel() > 1)
    if not names:
        raise ValueError(
            f"no floating-point tensor with at least 2 dimensions to fingerprint among {preview(sorted(state))}."
        )
    count = max(MIN_COORDINATES, math.ceil(TOTAL_COORDINATES / len(names)))
    tensors = {}
    for name in names:
        values = _gather(name, state[name], count)
        if not np.isfinite(values).all():
            raise ValueError(f"the base model's {name} holds NaN or infinity: it cannot be fingerprinted.")
        sketch = _standardised(values)
        if sketch is None:  # constant at these coordinates: carries no information about descent
            continue
        encoded = base64.b64encode(sketch.astype("<f2").tobytes()).decode("ascii")
        tensors[name] = {"shape": [int(s) for s in state[name].shape], "sketch": encoded}
    if not tensors:
        raise ValueError("every tensor with at least 2 dimensions is constant: nothing to fingerprint.")
    return {"method": METHOD, "version": VERSION, "tensors": tensors}


def base_fingerprint_or_none(state, who: str) -> dict | None:
    """[`base_fingerprint`] of `state`, or `None` with a warning naming `who` when it cannot be taken (e.g. a base
    whose matrices are all constant: nothing to recognise it by), so that `apply_to` cannot check the base."""
    try:
        return base_fingerprint(state)
    except ValueError as error:
        logger.warning("%s: no base fingerprint recorded, apply_to cannot check the base: %s", who, error)
        return None


def validate_base_fingerprint(obj, source: str) -> dict:
    r"""
    Check a fingerprint read from a file (e.g. a vector's `config.json`) and return it with its sketches decoded
    checked, in the same JSON form.

    Args:
        obj: The parsed JSON value.
        source (`str`): Where it came from (e.g. the path of `config.json`), named in every error.

    Raises:
        `TypeError`: not an object, or a field of the wrong type (`method` not a string, `version` not an int,
            `tensors` not an object, a `shape` not a list of ints, a `sketch` not a string).
        `ValueError`: an unknown `method`, a `version` newer than this hf_explvec reads (or below 1), no tensors, a
            shape with fewer than 2 dimensions or a non-positive size, a sketch that is not base64 float16, is empty,
            longer than its tensor, or holds non-finite values.
    """
    where = f"{source}: base_fingerprint"
    if not isinstance(obj, Mapping):
        raise TypeError(f"{where} must be a JSON object, got {type(obj).__name__}.")
    method, version, tensors = obj.get("method"), obj.get("version"), obj.get("tensors")
    if not isinstance(method, str):
        raise TypeError(f"{where}.method must be a string, got {type(method).__name__} {method!r}.")
    if method != METHOD:
        raise ValueError(f"{where}.method is {method!r}; this hf_explvec knows {METHOD!r}.")
    if isinstance(version, bool) or not isinstance(version, int):
        raise TypeError(f"{where}.version must be an int, got {type(version).__name__} {version!r}.")
    if version < 1:
        raise ValueError(f"{where}.version must be >= 1, got {version}.")
    if version > VERSION:
        raise ValueError(
            f"{where}.version is {version}, newer than version {VERSION} that this hf_explvec reads: upgrade "
            "hf_explvec to check it."
        )
    if not isinstance(tensors, Mapping):
        raise TypeError(f"{where}.tensors must be a JSON object, got {type(tensors).__name__}.")
    if not tensors:
        raise ValueError(f"{where}.tensors is empty.")
    checked = {}
    for name, entry in sorted(tensors.items()):
        label = f"{where}.tensors[{name!r}]"
        if not isinstance(entry, Mapping):
            raise TypeError(f"{label} must be a JSON object, got {type(entry).__name__}.")
        shape, sketch = entry.get("shape"), entry.get("sketch")
        if not isinstance(shape, list) or any(isinstance(s, bool) or not isinstance(s, int) for s in shape):
            raise TypeError(f"{label}.shape must be a list of ints, got {shape!r}.")
        if len(shape) < 2 or any(s < 1 for s in shape):
            raise ValueError(f"{label}.shape must have at least 2 positive sizes, got {shape}.")
        if not isinstance(sketch, str):
            raise TypeError(f"{label}.sketch must be a base64 string, got {type(sketch).__name__}.")
        values = _decode(sketch, label)
        if not 2 <= len(values) <= math.prod(shape):
            raise ValueError(
                f"{label}.sketch holds {len(values)} values; expected 2 to {math.prod(shape)} (the tensor's size)."
            )
        if not np.ptp(values) > 0:  # a stored sketch is centred and scaled: a constant one carries no correlation
            raise ValueError(f"{label}.sketch holds {len(values)} equal values: not a sketch of a weight matrix.")
        checked[name] = {"shape": list(shape), "sketch": sketch}
    return {"method": method, "version": version, "tensors": checked}


def _decode(sketch: str, label: str) -> np.ndarray:
    try:
        raw = base64.b64decode(sketch.encode("ascii"), validate=True)
    except (UnicodeEncodeError, binascii.Error) as error:
        raise ValueError(f"{label}.sketch is not valid base64 ({error}).") from error
    if len(raw) % 2:
        raise ValueError(f"{label}.sketch decodes to {len(raw)} bytes, not a whole number of float16 values.")
    values = np.frombuffer(raw, dtype="<f2").astype(np.float64)
    if not np.isfinite(values).all():
        raise ValueError(f"{label}.sketch holds NaN or infinity.")
    return values


def base_distance(fingerprint: Mapping, state: Mapping[str, torch.Tensor]) -> float:
    r"""
    How far a model's weights are from the base model of `fingerprint`: 0 for the base itself, about 1 for an
    unrelated model, in between for a fine-tune of the base (see the module docstring for the formula).

    Args:
        fingerprint (`dict`): From [`base_fingerprint`] (checked with [`validate_base_fingerprint`]).
        state (`Mapping[str, torch.Tensor]`): The model's canonical CLIP vision state,
            `hf_explvec.arithmetic.vision_state(model.state_dict())`, on any device, in any floating dtype.
            Fingerprinted tensors the model lacks, or has with another shape, are skipped.

    Returns:
        `float`: the distance, in [0, 2].

    Raises:
        `TypeError`, `ValueError`: a malformed fingerprint or state; `ValueError` also when the model shares no
            tensor (same name and shape) with the fingerprint, or a compared tensor holds NaN or infinity.
    """
    fingerprint = validate_base_fingerprint(fingerprint, "fingerprint")
    _check_state(state)
    total, weighted, skipped = 0, 0.0, []
    for name, entry in fingerprint["tensors"].items():
        tensor = state.get(name)
        if tensor is None or list(tensor.shape) != entry["shape"] or not tensor.is_floating_point():
            skipped.append(name)
            continue
        sketch = _decode(entry["sketch"], name)
        values = _gather(name, tensor, len(sketch))
        if not np.isfinite(values).all():
            raise ValueError(f"the model's {name} holds NaN or infinity: it cannot be compared with its base.")
        standardised = _standardised(values)
        rho = 0.0 if standardised is None else float(np.dot(standardised, sketch)) / float(np.linalg.norm(sketch))
        rho /= math.sqrt(len(sketch))
        total += len(sketch)
        weighted += len(sketch) * rho
    if not total:
        raise ValueError(
            f"the model shares no tensor (same name and shape) with the base model's fingerprint; fingerprinted: "
            f"{preview(sorted(fingerprint['tensors']), 5)}; the model has: {preview(sorted(state), 5)}."
        )
    return min(2.0, max(0.0, 1.0 - weighted / total))


def check_base(
    fingerprint: Mapping, state: Mapping[str, torch.Tensor], base_model: str | None, threshold: float | None = None
) -> float:
    r"""
    Refuse a model that does not descend from the base model of `fingerprint`.

    Args:
        fingerprint (`dict`): The base model's [`base_fingerprint`].
        state (`Mapping[str, torch.Tensor]`): The model's canonical CLIP vision state.
        base_model (`str`, *optional*): The base model's name, for the error message.
        threshold (`float`, *optional*): The largest [`base_distance`] accepted, in (0, 2]; defaults to
            [`DEFAULT_THRESHOLD`].

    Returns:
        `float`: the distance (at most `threshold`).

    Raises:
        [`BaseModelMismatchError`]: the distance exceeds `threshold`; its message names `base_model`.
        `TypeError`, `ValueError`: see [`base_distance`]; a threshold that is not a number in (0, 2].
    """
    if threshold is None:
        threshold = DEFAULT_THRESHOLD
    if isinstance(threshold, bool) or not isinstance(threshold, numbers.Real):
        raise TypeError(f"threshold must be a real number, got {type(threshold).__name__} {threshold!r}.")
    if not 0.0 < threshold <= 2.0:
        raise ValueError(f"threshold must be in (0, 2], got {threshold}.")
    distance = base_distance(fingerprint, state)
    if distance > threshold:
        raise BaseModelMismatchError(base_model, distance, float(threshold))
    return distance
