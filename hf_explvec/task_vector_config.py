"""TaskVectorConfig: the provenance of a task vector and the `config.json` contract of a saved vector.

`config.json` is written in one place ([`TaskVectorConfig.to_json_file`]) and parsed in one place
([`TaskVectorConfig.from_json_file`]), which checks `format_version`, the vector type and every field's type.
"""

import dataclasses
import json
import math
import numbers
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

VECTOR_TYPE = "clip_vision"
FORMAT_VERSION = 1
CONFIG_NAME = "config.json"
WEIGHTS_PATTERN = "task_vector{suffix}.safetensors"
WEIGHTS_NAME = "task_vector.safetensors"
WEIGHTS_INDEX_NAME = "task_vector.safetensors.index.json"


LAYOUT_KEYS = ("dtype", "num_parameters", "num_tensors", "fingerprint")
"""Keys of `config.json` that describe the weights (written by [`TaskVector`], checked on load)."""


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
    """

    base_model: str | None = None
    base_model_revision: str | None = None
    finetuned_model: str | None = None
    source_dataset: str | None = None
    alpha: float | None = None
    recommended_lam: float | None = None

    def __post_init__(self):
        self.validate()

    def validate(self, source: str = "TaskVectorConfig") -> None:
        """Check the types and ranges of the fields; `source` names where they came from in the error.

        Raises:
            `TypeError`: a string field that is not a string, a number field that is not a real number.
            `ValueError`: `alpha` outside [0, 1], a non-finite `alpha` or `recommended_lam`.
        """
        for name in ("base_model", "base_model_revision", "finetuned_model", "source_dataset"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise TypeError(f"{source}: {name} must be a string or None, got {type(value).__name__} {value!r}.")
        for name in ("alpha", "recommended_lam"):
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise TypeError(
                    f"{source}: {name} must be a real number or None, got {type(value).__name__} {value!r}."
                )
            if not math.isfinite(value):
                raise ValueError(f"{source}: {name} must be finite, got {value}.")
        if self.alpha is not None and not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"{source}: alpha must be in [0, 1], got {self.alpha}.")

    def to_dict(self) -> dict:
        """The provenance as written in `config.json`: `library_name`, `vector_type`, `format_version`, the
        fields."""
        return {
            "library_name": "hf_explvec",
            "vector_type": VECTOR_TYPE,
            "format_version": FORMAT_VERSION,
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
        """Write `config.json`: [`~TaskVectorConfig.to_dict`] plus the weights' `layout` ([`LAYOUT_KEYS`])."""
        content = {**self.to_dict(), **(layout or {})}
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
        for key in ("num_parameters", "num_tensors"):
            if key in layout and (isinstance(layout[key], bool) or not isinstance(layout[key], int)):
                raise TypeError(f"{path}: {key} must be an int, got {type(layout[key]).__name__} {layout[key]!r}.")
        for key in ("dtype", "fingerprint"):
            if key in layout and not isinstance(layout[key], str):
                raise TypeError(f"{path}: {key} must be a string, got {type(layout[key]).__name__} {layout[key]!r}.")
        return config, layout


def combined_provenance(a: TaskVectorConfig, b: TaskVectorConfig) -> TaskVectorConfig:
    r"""
    The provenance of `a + b` or `a - b`: the fields that describe where the vectors came from (models, data set,
    α) are kept where both agree and become unknown otherwise. `recommended_lam` always becomes unknown: a λ chosen
    for one vector is not the λ of a sum or a difference (`tau + tau` is 2τ, `tau - tau` is zero).

    The other operators follow the same rule: `k * tau`, `tau / k` and `-tau` keep the origin and clear
    `recommended_lam`; `to()` (a change of dtype or device) keeps everything.
    """
    return TaskVectorConfig(
        **{
            f.name: getattr(a, f.name) if getattr(a, f.name) == getattr(b, f.name) else None
            for f in dataclasses.fields(a)
            if f.name != "recommended_lam"
        }
    )


__all__ = [
    "CONFIG_NAME",
    "FORMAT_VERSION",
    "LAYOUT_KEYS",
    "VECTOR_TYPE",
    "WEIGHTS_INDEX_NAME",
    "WEIGHTS_NAME",
    "WEIGHTS_PATTERN",
    "TaskVectorConfig",
    "combined_provenance",
]
