"""TaskVectorConfig: the provenance of a task vector and the `config.json` contract of a saved vector.

`config.json` is written in one place ([`TaskVectorConfig.to_json_file`]) and parsed in one place
([`TaskVectorConfig.from_json_file`]), which checks `format_version`, the vector type and every field's type.

Format versions: a dense vector is written with `format_version` 1, so readers that predate compressed vectors keep
reading it; a compressed one (`format` `"sparse"`, `"low_rank"` or `"mixed"`, see [`hf_explvec.compression`]) with
`format_version` 2, which those readers refuse by name instead of misreading its index and factor tensors.
"""

import dataclasses
import json
import math
import numbers
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from .base_check import validate_base_fingerprint
from .compression import FORMATS

VECTOR_TYPE = "clip_vision"
FORMAT_VERSION = 2
"""The newest `format_version` this hf_explvec reads (and writes for compressed vectors)."""
DENSE_FORMAT_VERSION = 1
"""The `format_version` written for dense vectors (readable by every hf_explvec release)."""
CONFIG_NAME = "config.json"
WEIGHTS_PATTERN = "task_vector{suffix}.safetensors"
WEIGHTS_NAME = "task_vector.safetensors"
WEIGHTS_INDEX_NAME = "task_vector.safetensors.index.json"


LAYOUT_KEYS = ("dtype", "num_parameters", "num_tensors", "fingerprint", "format", "storage_bytes")
"""Keys of `config.json` that describe the weights (written by [`TaskVector`], checked on load). `format` is one of
[`~compression.FORMATS`] (absent in files of format_version 1: dense); `storage_bytes` is the size of the tensor data
written (the safetensors headers add a few kB)."""
SPARSIFY_METHODS = ("magnitude", "random_rescaled")
"""Methods of [`TaskVector.sparsify`] (recorded as `sparsify_method`)."""
MERGE_METHODS = ("sum", "ties", "dare_ties")
"""Methods of [`TaskVector.merge`] (recorded in `merge["method"]`)."""
MERGE_KEYS = ("method", "weights", "density", "sources")
_DERIVED = ("recommended_lam", "sparsify_method", "density", "rank", "merge")
"""Fields that describe the vector itself rather than where it came from: unknown after `+`, `-` and merges."""


def format_version_for(storage_format: str | None) -> int:
    """The `format_version` to write for a vector of `storage_format` (1 for dense or unknown, 2 for compressed)."""
    return DENSE_FORMAT_VERSION if storage_format in (None, "dense") else FORMAT_VERSION


@dataclass
class TaskVectorConfig:
    r"""
    Provenance of a [`TaskVector`], saved as `config.json` beside its weights. This class owns the `config.json`
    contract: [`~TaskVectorConfig.to_dict`] / [`~TaskVectorConfig.to_json_file`] write it and
    [`~TaskVectorConfig.from_dict`] / [`~TaskVectorConfig.from_json_file`] parse and check it, including
    `format_version` (a file written by a newer hf_explvec is refused, naming both versions).

    Args:
        base_model (`str`, *optional*): Name or path of the model the vector was taken from (θ).
        base_model_revision (`str`, *optional*): Revision (commit sha, tag or branch) of `base_model`.
        finetuned_model (`str`, *optional*): Name or path of the model the vector leads to (θ*).
        source_dataset (`str`, *optional*): Data set the fine-tuning ran on.
        alpha (`float`, *optional*): Cross-entropy weight of the self-explaining run (0.8 in the paper), in [0, 1].
        recommended_lam (`float`, *optional*): The λ to use in `apply_to` (chosen on validation data), finite.
        sparsify_method (`str`, *optional*): `"magnitude"` or `"random_rescaled"` (DARE) if the vector was made by
            [`TaskVector.sparsify`].
        density (`float`, *optional*): The fraction of values [`TaskVector.sparsify`] kept, in (0, 1].
        rank (`int`, *optional*): The rank [`TaskVector.low_rank`] kept (>= 1).
        merge (`dict`, *optional*): How [`TaskVector.merge`] made the vector: `{"method": "sum" | "ties" |
            "dare_ties", "weights": [float, ...], "density": float or None, "sources": [str or None, ...]}`, one
            weight and one source (`"repo_id@commit"`, the fine-tuned model's name, or `None`) per merged vector.
        base_fingerprint (`dict`, *optional*): A compact fingerprint of the base model's weights
            ([`~base_check.base_fingerprint`], recorded by [`TaskVector.from_models`]): `apply_to` refuses a model
            that does not descend from the base. Shown as "recorded" in the repr and the card.
    """

    base_model: str | None = None
    base_model_revision: str | None = None
    finetuned_model: str | None = None
    source_dataset: str | None = None
    alpha: float | None = None
    recommended_lam: float | None = None
    sparsify_method: str | None = None
    density: float | None = None
    rank: int | None = None
    merge: dict | None = None
    base_fingerprint: dict | None = None

    def __post_init__(self):
        self.validate()

    def validate(self, source: str = "TaskVectorConfig") -> None:
        """Check the types and ranges of the fields; `source` names where they came from in the error.

        Raises:
            `TypeError`: a string field that is not a string, a number field that is not a real number.
            `ValueError`: `alpha` outside [0, 1], a non-finite `alpha` or `recommended_lam`, an unknown
            `sparsify_method`, a `density` outside (0, 1], a `rank` below 1, a malformed `merge` record or
            `base_fingerprint` ([`~base_check.validate_base_fingerprint`], which also raises `TypeError`).
        """
        for name in ("base_model", "base_model_revision", "finetuned_model", "source_dataset"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise TypeError(f"{source}: {name} must be a string or None, got {type(value).__name__} {value!r}.")
        for name in ("alpha", "recommended_lam", "density"):
            _check_real(getattr(self, name), name, source)
        if self.alpha is not None and not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"{source}: alpha must be in [0, 1], got {self.alpha}.")
        _check_density(self.density, "density", source)
        if self.sparsify_method is not None and self.sparsify_method not in SPARSIFY_METHODS:
            raise ValueError(
                f"{source}: sparsify_method must be one of {SPARSIFY_METHODS} or None, got {self.sparsify_method!r}."
            )
        if self.rank is not None:
            if isinstance(self.rank, bool) or not isinstance(self.rank, int):
                raise TypeError(f"{source}: rank must be an int or None, got {type(self.rank).__name__} {self.rank!r}.")
            if self.rank < 1:
                raise ValueError(f"{source}: rank must be >= 1, got {self.rank}.")
        if self.merge is not None:
            _check_merge(self.merge, source)
        if self.base_fingerprint is not None:
            self.base_fingerprint = validate_base_fingerprint(self.base_fingerprint, source)

    def __repr__(self) -> str:
        shown = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        if shown["base_fingerprint"] is not None:
            shown["base_fingerprint"] = "recorded"  # kilobytes of base64 sketches say nothing to a reader
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in shown.items())})"

    def to_dict(self, storage_format: str | None = None) -> dict:
        """The provenance as written in `config.json`: `library_name`, `vector_type`, `format_version` (1 for a
        dense vector, 2 for a compressed `storage_format`, see [`format_version_for`]), the fields."""
        return {
            "library_name": "hf_explvec",
            "vector_type": VECTOR_TYPE,
            "format_version": format_version_for(storage_format),
            **dataclasses.asdict(self),
        }

    @classmethod
    def from_dict(cls, raw: Mapping, source: str = "config") -> "TaskVectorConfig":
        r"""
        Parse and check the provenance of a `config.json` (other keys, such as the layout, are ignored).

        Args:
            raw (`Mapping`): The parsed JSON object.
            source (`str`, *optional*): Where it came from (a file path), named in errors.

        Raises:
            `ValueError`: not a JSON object, another `vector_type`, a `format_version` this version cannot read
                (newer, or not a positive int), or a field out of range. `TypeError`: a mistyped field.
        """
        if not isinstance(raw, Mapping):
            raise ValueError(f"{source} must hold a JSON object, got {type(raw).__name__}.")
        if raw.get("vector_type") != VECTOR_TYPE:
            raise ValueError(
                f"{source} describes a vector of type {raw.get('vector_type')!r}; expected {VECTOR_TYPE!r} "
                "(a CLIP vision task vector saved by hf_explvec)."
            )
        version = raw.get("format_version", FORMAT_VERSION)
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise ValueError(f"{source}: format_version must be a positive int, got {version!r}.")
        if version > FORMAT_VERSION:
            raise ValueError(
                f"{source} has format_version {version}, newer than format_version {FORMAT_VERSION} that this "
                "hf_explvec reads: upgrade hf_explvec to load it."
            )
        fields = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in raw.items() if k in fields}
        config = cls.__new__(cls)
        for f in dataclasses.fields(cls):
            setattr(config, f.name, values.get(f.name))
        config.validate(source)
        return config

    def to_json_file(self, path: str | os.PathLike, layout: Mapping | None = None) -> None:
        """Write `config.json`: [`~TaskVectorConfig.to_dict`] plus the weights' `layout` ([`LAYOUT_KEYS`]); the
        layout's `format` sets `format_version`."""
        layout = dict(layout or {})
        content = {**self.to_dict(layout.get("format")), **layout}
        Path(path).write_text(json.dumps(content, indent=2, sort_keys=True) + "\n", encoding="utf-8")

    @classmethod
    def from_json_file(cls, path: str | os.PathLike) -> tuple["TaskVectorConfig", dict]:
        r"""
        Read `config.json`.

        Returns:
            `tuple[TaskVectorConfig, dict]`: the provenance and the layout (the [`LAYOUT_KEYS`] present).

        Raises:
            `ValueError` (naming the file): not JSON, empty, not an object, or refused by
            [`~TaskVectorConfig.from_dict`]. `TypeError`: a mistyped field.
        """
        try:
            raw = json.loads(Path(path).read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ValueError(f"{path} is not valid JSON ({error}): not a saved TaskVector config.") from error
        config = cls.from_dict(raw, str(path))
        layout = {k: raw[k] for k in LAYOUT_KEYS if raw.get(k) is not None}
        for key in ("num_parameters", "num_tensors", "storage_bytes"):
            if key in layout and (isinstance(layout[key], bool) or not isinstance(layout[key], int)):
                raise TypeError(f"{path}: {key} must be an int, got {type(layout[key]).__name__} {layout[key]!r}.")
        for key in ("dtype", "fingerprint", "format"):
            if key in layout and not isinstance(layout[key], str):
                raise TypeError(f"{path}: {key} must be a string, got {type(layout[key]).__name__} {layout[key]!r}.")
        storage_format = layout.get("format", "dense")
        if storage_format not in FORMATS:
            raise ValueError(f"{path}: format must be one of {FORMATS}, got {storage_format!r}.")
        version = raw.get("format_version", DENSE_FORMAT_VERSION)
        if version < format_version_for(storage_format):
            raise ValueError(
                f"{path}: a {storage_format!r} vector needs format_version {format_version_for(storage_format)}, "
                f"got {version} (a file of format_version 1 holds dense weights only)."
            )
        return config, layout


def combined_provenance(*configs: TaskVectorConfig) -> TaskVectorConfig:
    r"""
    The provenance of `a + b`, `a - b` or a merge of several vectors: the fields that describe where the vectors
    came from (models, data set, α) are kept where all agree and become unknown otherwise. The fields that describe
    the vector itself become unknown: `recommended_lam` (a λ chosen for one vector is not the λ of a sum or a
    difference: `tau + tau` is 2τ, `tau - tau` is zero) and the compression and merge records (`sparsify_method`,
    `density`, `rank`, `merge`: the result is dense; [`TaskVector.merge`] writes its own `merge` record).

    The other operators follow the same rule: `k * tau`, `tau / k` and `-tau` keep the origin and the compression
    record and clear `recommended_lam`; `to()`, `to_dense()` (the same values in another dtype, device or storage)
    keep everything.

    Args:
        configs ([`TaskVectorConfig`]): One or more configs.
    """
    if not configs:
        raise ValueError("combined_provenance needs at least one config.")
    first = configs[0]
    agreed = {}
    for f in dataclasses.fields(first):
        value = getattr(first, f.name)
        if f.name not in _DERIVED and all(getattr(c, f.name) == value for c in configs[1:]):
            agreed[f.name] = value
    return TaskVectorConfig(**agreed)


def _check_real(value, name: str, source: str) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{source}: {name} must be a real number or None, got {type(value).__name__} {value!r}.")
    if not math.isfinite(value):
        raise ValueError(f"{source}: {name} must be finite, got {value}.")


def _check_density(value, name: str, source: str) -> None:
    _check_real(value, name, source)
    if value is not None and not 0.0 < value <= 1.0:
        raise ValueError(f"{source}: {name} must be in (0, 1], got {value}.")


def _check_merge(merge, source: str) -> None:
    """The `merge` record: a dict with exactly [`MERGE_KEYS`], one weight and one source per merged vector."""
    where = f"{source}: merge"
    if not isinstance(merge, Mapping):
        raise TypeError(f"{where} must be an object or None, got {type(merge).__name__} {merge!r}.")
    if set(merge) != set(MERGE_KEYS):
        raise ValueError(f"{where} must have the keys {sorted(MERGE_KEYS)}, got {sorted(map(str, merge))}.")
    if merge["method"] not in MERGE_METHODS:
        raise ValueError(f"{where}['method'] must be one of {MERGE_METHODS}, got {merge['method']!r}.")
    weights, sources = merge["weights"], merge["sources"]
    if not isinstance(weights, list) or not weights:
        raise TypeError(f"{where}['weights'] must be a non-empty list of numbers, got {weights!r}.")
    for i, w in enumerate(weights):
        _check_real(w, f"merge['weights'][{i}]", source)
    if not isinstance(sources, list) or len(sources) != len(weights):
        raise ValueError(f"{where}['sources'] must list one source per weight ({len(weights)}), got {sources!r}.")
    bad = [s for s in sources if s is not None and not isinstance(s, str)]
    if bad:
        raise TypeError(f"{where}['sources'] must hold strings or None, got {bad[0]!r}.")
    _check_density(merge["density"], "merge['density']", source)


__all__ = [
    "CONFIG_NAME",
    "DENSE_FORMAT_VERSION",
    "FORMAT_VERSION",
    "LAYOUT_KEYS",
    "MERGE_KEYS",
    "MERGE_METHODS",
    "SPARSIFY_METHODS",
    "VECTOR_TYPE",
    "WEIGHTS_INDEX_NAME",
    "WEIGHTS_NAME",
    "WEIGHTS_PATTERN",
    "TaskVectorConfig",
    "combined_provenance",
    "format_version_for",
]
