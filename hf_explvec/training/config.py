"""The settings of a training run ([`TrainingConfig`]), the data set error ([`DatasetFormatError`]) and the names
of the columns and files that training reads and writes. The lowest module of `hf_explvec.training`: the others
import it, it imports none of them."""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass

__all__ = [
    "CHECKPOINTS_DIR",
    "HISTORY_NAME",
    "LABELS",
    "MIXED_PRECISION",
    "PIXELS",
    "RESUME_KEYS",
    "SHAP",
    "TRAINER_STATE_NAME",
    "TRAINING_CONFIG_NAME",
    "DatasetFormatError",
    "TrainingConfig",
]

PIXELS, LABELS, SHAP = "pixel_values", "labels", "shap_values"
CHECKPOINTS_DIR = "checkpoints"
TRAINER_STATE_NAME = "trainer_state.json"
TRAINING_CONFIG_NAME = "training_config.json"
HISTORY_NAME = "history.json"
MIXED_PRECISION = ("no", "bf16", "fp16")
# Settings a checkpoint must share with the run that resumes it, or the data order (and the result) would differ.
RESUME_KEYS = (
    "num_examples",
    "num_processes",
    "per_device_batch_size",
    "gradient_accumulation_steps",
    "seed",
    "alpha",
)

# (name, minimum, may be None) of the integer settings.
_INT_SETTINGS = (
    ("num_train_epochs", 1, False),
    ("per_device_batch_size", 1, False),
    ("gradient_accumulation_steps", 1, False),
    ("log_every", 1, False),
    ("seed", 0, False),
    ("num_workers", 0, False),
    ("max_steps", 1, True),
    ("checkpoint_every", 1, True),
    ("save_total_limit", 1, True),
    ("eval_every", 1, True),
)


class DatasetFormatError(ValueError):
    """A training or evaluation data set lacks a column or has values of the wrong shape, range or finiteness."""


@dataclass
class TrainingConfig:
    r"""
    Settings of [`train`] and [`train_twins`].

    The values are checked when the config is built and again by [`train`] (so that a field changed afterwards is
    refused before the model is touched); see [`~TrainingConfig.validate`].

    Args:
        output_dir (`str` or `os.PathLike`):
            Where the final model (`save_pretrained`), `training_config.json`, `history.json` and the checkpoints
            (`checkpoints/step_XXXXXXXX/`) are written. A folder, existing or to be created.
        alpha (`float`, *optional*, defaults to 0.8):
            Cross-entropy weight of the loss, in [0, 1], written to `model.config.alpha`: 1.0 trains a
            prediction-only model (no `shap_values` needed), 0.8 a self-explaining one.
        learning_rate (`float`, *optional*, defaults to 1e-5): Peak learning rate of AdamW (> 0).
        weight_decay (`float`, *optional*, defaults to 0.1):
            AdamW's weight decay, on weight matrices only (not on biases, norm weights, CLIP's `class_embedding`).
        warmup_steps (`int` or `float`, *optional*, defaults to 0):
            Linear warmup of the cosine schedule, in optimizer steps (`int`) or as a fraction of all steps (`float`).
        num_train_epochs (`int`, *optional*, defaults to 3): Passes over the data, unless `max_steps` is given.
        max_steps (`int`, *optional*): Optimizer steps to take (the data are cycled as needed).
        per_device_batch_size (`int`, *optional*, defaults to 32):
            Examples per process and forward pass; the effective batch is this × processes × accumulation steps.
        gradient_accumulation_steps (`int`, *optional*, defaults to 1):
            Forward/backward passes per optimizer step (an epoch's last step may accumulate fewer: Accelerate's rule).
        max_grad_norm (`float`, *optional*, defaults to 1.0): Gradient clipping by global norm; `None` for none.
        mixed_precision (`str`, *optional*, defaults to `"no"`):
            `"no"`, `"bf16"` (CPU too) or `"fp16"` (GPU), for `Accelerator`; the weights stay float32.
        gradient_checkpointing (`bool`, *optional*, defaults to `False`): Recompute activations to save memory.
        seed (`int`, *optional*, defaults to 0):
            Seeds `random`, NumPy and torch (`accelerate.utils.set_seed`) and fixes the data order of each epoch.
        checkpoint_every (`int`, *optional*): Save a resumable checkpoint every this many optimizer steps.
        save_total_limit (`int`, *optional*): Keep only the newest this many checkpoints.
        resume_from (`str` or `os.PathLike`, *optional*):
            A checkpoint folder, or `"latest"`: the newest under `output_dir/checkpoints`, or a fresh start when
            there is none (so that a preempted job can be relaunched with the same command).
        log_every (`int`, *optional*, defaults to 10):
            Log the loss parts (means since the last log) and the learning rate every this many steps, and at the end.
        eval_every (`int`, *optional*): Evaluate every this many steps; `eval_dataset` is also evaluated at the end.
        num_workers (`int`, *optional*, defaults to 0): `DataLoader` worker processes.
        report_to (`str` or `list[str]`, *optional*):
            Accelerate trackers for `accelerator.log` (`"tensorboard"`, `"wandb"`, `"all"`, ...); none by default.
        tracker_project_name (`str`, *optional*, defaults to `"hf_explvec"`): The trackers' project name.
        disable_tqdm (`bool`, *optional*, defaults to `False`): Hide the progress bar (local main process only).

    Raises:
        `ValueError`: a value is out of its range (the message names the field, the expected and the actual value).
        `TypeError`: `output_dir` or `resume_from` is not a path.
    """

    output_dir: str | os.PathLike
    alpha: float = 0.8
    learning_rate: float = 1e-5
    weight_decay: float = 0.1
    warmup_steps: int | float = 0
    num_train_epochs: int = 3
    max_steps: int | None = None
    per_device_batch_size: int = 32
    gradient_accumulation_steps: int = 1
    max_grad_norm: float | None = 1.0
    mixed_precision: str = "no"
    gradient_checkpointing: bool = False
    seed: int = 0
    checkpoint_every: int | None = None
    save_total_limit: int | None = None
    resume_from: str | os.PathLike | None = None
    log_every: int = 10
    eval_every: int | None = None
    num_workers: int = 0
    report_to: str | list[str] | None = None
    tracker_project_name: str = "hf_explvec"
    disable_tqdm: bool = False

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        """Check every setting (and turn `alpha` into a float). [`train`] calls it again before touching the model,
        so that a field changed after construction is refused too.

        Raises:
            `ValueError` / `TypeError` naming the field, the expected and the actual value.
        """
        if not isinstance(self.output_dir, (str, os.PathLike)) or os.fspath(self.output_dir) == "":
            raise TypeError(f"output_dir must be a non-empty str or os.PathLike (a folder), got {self.output_dir!r}.")
        if self.resume_from is not None and not isinstance(self.resume_from, (str, os.PathLike)):
            raise TypeError(
                f"resume_from must be None, 'latest' or a checkpoint folder (str or os.PathLike), "
                f"got {type(self.resume_from).__name__}."
            )
        alpha = self.alpha
        if not (isinstance(alpha, (int, float)) and not isinstance(alpha, bool) and 0 <= alpha <= 1):
            raise ValueError(f"alpha must be a number in [0, 1] (the cross-entropy weight), got {alpha!r}.")
        self.alpha = float(alpha)
        for name in ("learning_rate", "weight_decay", "max_grad_norm"):
            value = getattr(self, name)
            if value is None and name == "max_grad_norm":
                continue
            if isinstance(value, bool) or not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}.")
        if self.learning_rate == 0:
            raise ValueError("learning_rate must be > 0, got 0.")
        for name, minimum, optional in _INT_SETTINGS:
            value = getattr(self, name)
            if value is None and optional:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"{name} must be an int >= {minimum}{' or None' if optional else ''}, got {value!r}.")
        warmup = self.warmup_steps
        if isinstance(warmup, bool) or not (
            (isinstance(warmup, int) and warmup >= 0) or (isinstance(warmup, float) and 0 <= warmup < 1)
        ):
            raise ValueError(
                "warmup_steps must be an int >= 0 (steps) or a float in [0, 1) (fraction of all steps), "
                f"got {warmup!r}."
            )
        if self.mixed_precision not in MIXED_PRECISION:
            raise ValueError(f"mixed_precision must be one of {MIXED_PRECISION}, got {self.mixed_precision!r}.")

    def to_dict(self) -> dict:
        """The settings as JSON-ready values (paths as strings)."""
        return {k: (os.fspath(v) if isinstance(v, os.PathLike) else v) for k, v in dataclasses.asdict(self).items()}
