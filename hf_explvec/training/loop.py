"""Training a [`SelfExplainingCLIPVision`] with Accelerate on SHAP-labelled data, and training the twins whose
difference is the explainability vector.

The loss is the model's own: `alpha * CE + (1 - alpha) * MSE(attributions of the label class, shap_values)`, with
`alpha = 1` for a prediction-only model and `alpha = 0.8` for the paper's self-explaining models. The head (class
embeddings, logit scale) is made of buffers: the optimizer never sees it and it never changes.

The same script runs in one process, under `accelerate launch --multi_gpu --num_processes N` and on several nodes.
For several CPU processes set `ACCELERATE_USE_CPU=1` as well: `accelerate launch --cpu` alone starts one process
(Accelerate 1.15 runs several only through MPI there), and `train` warns when `WORLD_SIZE` says otherwise.
Training is deterministic given the seed: the data order of each epoch is a permutation drawn from `(seed, epoch)`
alone, so a run stopped after a checkpoint and resumed with `resume_from` ends with the same weights as a run that
never stopped (same number of processes, batch size and accumulation).

Checkpoints (`output_dir/checkpoints/step_00000100/`) are written by `accelerator.save_state`: the model weights in
safetensors; the optimizer, scheduler and random-number-generator states with `torch.save`, which is pickle-based
(Accelerate reads them back with the restricted unpickler, `weights_only=True`). The trainer's own
counters are in `trainer_state.json`. Resume only from checkpoints you wrote yourself.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator, PartialState
from accelerate.utils import set_seed
from torch import nn
from torch.utils.data import DataLoader, Sampler
from tqdm.auto import tqdm
from transformers import get_cosine_schedule_with_warmup

from ..modeling import SelfExplainingCLIPVision
from ..task_vector import TaskVector, TaskVectorConfig

logger = logging.getLogger(__name__)

PIXELS, LABELS, SHAP = "pixel_values", "labels", "shap_values"
CHECKPOINTS_DIR = "checkpoints"
TRAINER_STATE_NAME = "trainer_state.json"
TRAINING_CONFIG_NAME = "training_config.json"
HISTORY_NAME = "history.json"
MIXED_PRECISION = ("no", "bf16", "fp16")
# Settings a checkpoint must share with the run that resumes it, or the data order (and the result) would differ.
_RESUME_KEYS = (
    "num_examples",
    "num_processes",
    "per_device_batch_size",
    "gradient_accumulation_steps",
    "seed",
    "alpha",
)


class DatasetFormatError(ValueError):
    """A training or evaluation data set lacks a column or has values of the wrong shape or range."""


@dataclass
class TrainingConfig:
    r"""
    Settings of [`train`] and [`train_twins`].

    Args:
        output_dir (`str` or `os.PathLike`):
            Where the final model (`save_pretrained`), `training_config.json`, `history.json` and the checkpoints
            (`checkpoints/step_XXXXXXXX/`) are written.
        alpha (`float`, *optional*, defaults to 0.8):
            Cross-entropy weight of the loss, in [0, 1], written to `model.config.alpha`: 1.0 trains a
            prediction-only model (no `shap_values` needed), 0.8 a self-explaining one.
        learning_rate (`float`, *optional*, defaults to 1e-5): Peak learning rate of AdamW.
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
        if not (isinstance(self.alpha, (int, float)) and not isinstance(self.alpha, bool) and 0 <= self.alpha <= 1):
            raise ValueError(f"alpha must be a number in [0, 1] (the cross-entropy weight), got {self.alpha!r}.")
        self.alpha = float(self.alpha)
        for name in ("learning_rate", "weight_decay", "max_grad_norm"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}.")
        if self.learning_rate == 0:
            raise ValueError("learning_rate must be > 0, got 0.")
        for name, minimum, optional in (
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
        ):
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
                f"warmup_steps must be an int >= 0 (steps) or a float in [0, 1) (fraction of all steps), got {warmup!r}."
            )
        if self.mixed_precision not in MIXED_PRECISION:
            raise ValueError(f"mixed_precision must be one of {MIXED_PRECISION}, got {self.mixed_precision!r}.")

    def to_dict(self) -> dict:
        """The settings as JSON-ready values (paths as strings)."""
        return {k: (os.fspath(v) if isinstance(v, os.PathLike) else v) for k, v in dataclasses.asdict(self).items()}


@dataclass
class TrainResult:
    r"""
    What [`train`] returns.

    Args:
        model ([`SelfExplainingCLIPVision`]): The trained model (the one passed in, unwrapped), in eval mode.
        history (`list[dict]`): One dict per log (`step`, `epoch`, `loss`, `ce_loss`, `attribution_loss` when
            `shap_values` are given, `lr`: the learning rate of that step) and per evaluation (`step`,
            `eval_loss`, `eval_ce_loss`, `eval_attribution_loss`, `eval_e_rmse`, `eval_accuracy`).
        global_step (`int`): Optimizer steps taken in all, counting those before a resume.
        output_dir (`pathlib.Path`): Where the model was saved.
    """

    model: SelfExplainingCLIPVision
    history: list[dict] = field(default_factory=list)
    global_step: int = 0
    output_dir: Path | None = None


class TwinsResult(NamedTuple):
    """What [`train_twins`] returns: the twins and τ = self_explaining − prediction_only."""

    prediction_only: SelfExplainingCLIPVision
    self_explaining: SelfExplainingCLIPVision
    vector: TaskVector


class EpochShuffleSampler(Sampler[int]):
    """A random permutation of `range(num_examples)` per epoch that depends on `(seed, epoch)` only: the same on
    every process and after a resume. Set the epoch with `set_epoch` before iterating."""

    def __init__(self, num_examples: int, seed: int):
        self.num_examples, self.seed, self.epoch = num_examples, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_examples

    def __iter__(self):
        seed = int(np.random.SeedSequence([self.seed, self.epoch]).generate_state(1)[0])
        yield from torch.randperm(self.num_examples, generator=torch.Generator().manual_seed(seed)).tolist()


# ----------------------------------------------------------------------------------------------------------- data
def _prepare_dataset(dataset, model_config, need_shap: bool, name: str):
    """Check a data set's columns and first example against the model; return it in torch format and whether it
    has `shap_values`. Raises [`DatasetFormatError`] naming the column, the expected and the actual value."""
    import datasets

    if isinstance(dataset, (datasets.IterableDataset, torch.utils.data.IterableDataset)):
        raise TypeError(f"{name} must be a map-style data set (len and indexing, for exact resume), not iterable.")
    if not (hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__")):
        raise TypeError(f"{name} must be a datasets.Dataset or a torch Dataset, got {type(dataset).__name__}.")
    if len(dataset) == 0:
        raise DatasetFormatError(f"{name} is empty.")
    vision, num_patches = model_config.vision_config, model_config.num_patches
    pixel_shape = (vision.num_channels, vision.image_size, vision.image_size)
    expected = (
        f"expected '{PIXELS}' (float, {pixel_shape}, as CLIPImageProcessor returns), '{LABELS}' (int in "
        f"[0, {model_config.num_labels})) and '{SHAP}' ({num_patches} floats: Kernel SHAP values per patch)"
    )
    required = [PIXELS, LABELS] + ([SHAP] if need_shap else [])
    if isinstance(dataset, datasets.Dataset):
        missing = [c for c in required if c not in dataset.column_names]
        if missing:
            raise DatasetFormatError(f"{name} is missing column(s) {missing} (has {dataset.column_names}); {expected}.")
        custom = dataset.format["type"] == "custom"  # set_transform / with_transform: keep the user's transform
        if not custom and isinstance(dataset.features[PIXELS], datasets.Image):
            raise DatasetFormatError(f"{name}: '{PIXELS}' holds images; process them with CLIPImageProcessor first.")
        if not custom:
            dataset = dataset.with_format(
                "torch", columns=[c for c in (PIXELS, LABELS, SHAP) if c in dataset.column_names]
            )
    first = dataset[0]
    if not isinstance(first, Mapping):
        raise DatasetFormatError(f"{name}[0] must be a mapping of column -> value, got {type(first).__name__}.")
    missing = [c for c in required if c not in first]
    if missing:
        raise DatasetFormatError(f"{name} examples lack key(s) {missing} (have {list(first)}); {expected}.")
    pixels = torch.as_tensor(first[PIXELS])
    if tuple(pixels.shape) != pixel_shape or not pixels.is_floating_point():
        raise DatasetFormatError(
            f"{name}[0]: '{PIXELS}' must be a float tensor of shape {pixel_shape}, "
            f"got {pixels.dtype} of shape {tuple(pixels.shape)}."
        )
    if SHAP in first and (length := torch.as_tensor(first[SHAP]).numel()) != num_patches:
        raise DatasetFormatError(
            f"{name}[0]: '{SHAP}' must hold {num_patches} values (one per patch of the {model_config.grid_size}x"
            f"{model_config.grid_size} grid), got {length}."
        )
    return dataset, SHAP in first


class _Collator:
    """Stack examples into a batch of tensors, checking labels and SHAP lengths (picklable for worker processes)."""

    def __init__(self, num_labels: int, num_patches: int, use_shap: bool):
        self.num_labels, self.num_patches, self.use_shap = num_labels, num_patches, use_shap

    def __call__(self, rows: list) -> dict[str, torch.Tensor]:
        labels = torch.as_tensor([int(row[LABELS]) for row in rows], dtype=torch.long)
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= self.num_labels):
            found = sorted(set(labels.tolist()))
            raise DatasetFormatError(f"'{LABELS}' must be in [0, {self.num_labels}), got {found}.")
        batch = {PIXELS: torch.stack([torch.as_tensor(r[PIXELS], dtype=torch.float32) for r in rows]), LABELS: labels}
        if self.use_shap:
            shap = [torch.as_tensor(row[SHAP], dtype=torch.float32).flatten() for row in rows]
            lengths = sorted({s.numel() for s in shap})
            if lengths != [self.num_patches]:
                raise DatasetFormatError(f"'{SHAP}' must hold {self.num_patches} values per example, found {lengths}.")
            batch[SHAP] = torch.stack(shap)
        return batch


# ------------------------------------------------------------------------------------------- optimizer, resume
def _parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: weight decay on weight matrices only (not on biases, norm weights or 1-D parameters)."""
    norms = (nn.LayerNorm, nn.GroupNorm, nn.RMSNorm, nn.modules.batchnorm._BatchNorm)
    decay, no_decay, seen = [], [], set()
    for module in model.modules():
        for name, parameter in module.named_parameters(recurse=False):
            if not parameter.requires_grad or id(parameter) in seen:
                continue
            seen.add(id(parameter))
            exempt = name == "bias" or isinstance(module, norms) or parameter.ndim < 2
            (no_decay if exempt else decay).append(parameter)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [group for group in groups if group["params"]]


def _checkpoints(output_dir: Path) -> list[Path]:
    """Complete checkpoints (with `trainer_state.json`) under `output_dir/checkpoints`, oldest first."""
    root = output_dir / CHECKPOINTS_DIR
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.name.startswith("step_") and (p / TRAINER_STATE_NAME).is_file()]
    return sorted(found, key=lambda p: json.loads((p / TRAINER_STATE_NAME).read_text())["global_step"])


def _resolve_resume(config: TrainingConfig) -> tuple[Path | None, dict | None]:
    if config.resume_from is None:
        return None, None
    if config.resume_from == "latest":
        found = _checkpoints(Path(config.output_dir))
        if not found:
            logger.info("resume_from='latest': no checkpoint under %s; starting from scratch.", config.output_dir)
            return None, None
        path = found[-1]
    else:
        path = Path(config.resume_from)
        if not (path / TRAINER_STATE_NAME).is_file():
            raise FileNotFoundError(
                f"resume_from={os.fspath(path)!r} is not a checkpoint folder (no {TRAINER_STATE_NAME})."
            )
    return path, json.loads((path / TRAINER_STATE_NAME).read_text())


def _check_resumable(saved: dict, current: dict, path: Path) -> None:
    mismatched = {k: (saved.get(k), current[k]) for k in _RESUME_KEYS if saved.get(k) != current[k]}
    if mismatched:
        details = ", ".join(f"{k}: checkpoint {a!r} vs this run {b!r}" for k, (a, b) in mismatched.items())
        raise ValueError(f"cannot resume from {path}: the run differs in {details}; resume needs the same settings.")


def _save_checkpoint(accelerator: Accelerator, config: TrainingConfig, state: dict) -> Path:
    """`accelerator.save_state` (all processes), then `trainer_state.json` last, which marks the folder complete."""
    path = Path(config.output_dir) / CHECKPOINTS_DIR / f"step_{state['global_step']:08d}"
    accelerator.save_state(os.fspath(path))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (path / TRAINER_STATE_NAME).write_text(json.dumps(state, indent=2) + "\n")
        if config.save_total_limit is not None:
            for old in _checkpoints(Path(config.output_dir))[: -config.save_total_limit]:
                shutil.rmtree(old)
        logger.info("saved checkpoint %s", path)
    accelerator.wait_for_everyone()
    return path


# -------------------------------------------------------------------------------------------------- evaluation
@torch.no_grad()
def _evaluate(accelerator: Accelerator, model: nn.Module, loader: DataLoader, alpha: float) -> dict:
    """Mean cross-entropy, attribution MSE, E-RMSE and accuracy over the whole evaluation set (all processes)."""
    model.eval()
    parts = {"ce": [], "correct": [], "mse": []}
    for batch in loader:
        outputs = model(pixel_values=batch[PIXELS])
        logits, labels = outputs.logits.float(), batch[LABELS]
        values = {
            "ce": F.cross_entropy(logits, labels, reduction="none"),
            "correct": (logits.argmax(-1) == labels).float(),
        }
        if SHAP in batch:
            index = labels.view(-1, 1, 1).expand(-1, 1, outputs.patch_attributions.shape[-1])
            explained = outputs.patch_attributions.gather(1, index).squeeze(1).float()
            values["mse"] = (explained - batch[SHAP].float()).pow(2).mean(-1)
        for key, value in accelerator.gather_for_metrics(values).items():
            parts[key].append(value)
    model.train()
    ce, accuracy = torch.cat(parts["ce"]).mean().item(), torch.cat(parts["correct"]).mean().item()
    metrics = {"eval_loss": ce, "eval_ce_loss": ce, "eval_accuracy": accuracy}
    if parts["mse"]:
        mse = torch.cat(parts["mse"])
        metrics["eval_attribution_loss"] = mse.mean().item()
        metrics["eval_e_rmse"] = mse.sqrt().mean().item()
        metrics["eval_loss"] = alpha * ce + (1 - alpha) * metrics["eval_attribution_loss"]
    return metrics


# ------------------------------------------------------------------------------------------------------- train
class _LossMeter:
    """Sums of the loss parts over the micro-batches since the last log, reduced over all processes when read."""

    def __init__(self, device, use_shap: bool):
        self.sums = torch.zeros(4, dtype=torch.float64, device=device)  # loss, ce, attribution, micro-batches
        self.use_shap = use_shap

    def add(self, outputs) -> None:
        parts = (outputs.loss, outputs.ce_loss, outputs.attribution_loss)
        values = [p.detach().double() if p is not None else self.sums.new_zeros(()) for p in parts]
        self.sums += torch.stack([*values, self.sums.new_ones(())])

    def totals(self, accelerator: Accelerator) -> list[float]:
        """The sums over all processes (a collective: every process calls it at the same step)."""
        return accelerator.reduce(self.sums, reduction="sum").tolist()

    def pop(self, accelerator: Accelerator) -> dict[str, float]:
        loss, ce, attribution, count = self.totals(accelerator)
        self.sums.zero_()
        means = {"loss": loss / count, "ce_loss": ce / count}
        if self.use_shap:
            means["attribution_loss"] = attribution / count
        return means


def _make_accelerator(config: TrainingConfig) -> Accelerator:
    accelerator = Accelerator(
        mixed_precision=config.mixed_precision,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        log_with=config.report_to,
        project_dir=os.fspath(config.output_dir),
        step_scheduler_with_optimizer=False,  # the scheduler counts optimizer steps, whatever the process count
    )
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size > accelerator.num_processes:  # e.g. torchrun on CPU without ACCELERATE_USE_CPU=1
        logger.warning(
            "WORLD_SIZE is %d but Accelerate runs %d process: each process trains alone and writes the same files. "
            "On CPU, launch with ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes N.",
            world_size,
            accelerator.num_processes,
        )
    return accelerator


def _save_final(accelerator: Accelerator, model: nn.Module, config: TrainingConfig, history: list) -> nn.Module:
    """Unwrap the model and save it, its training config and history (main process); return it unwrapped."""
    accelerator.wait_for_everyone()
    state_dict = accelerator.get_state_dict(model)  # a collective under FSDP / DeepSpeed
    model = accelerator.unwrap_model(model, keep_fp32_wrapper=False)  # also drops the autocast wrapper
    if accelerator.is_main_process:
        output_dir = Path(config.output_dir)
        model.save_pretrained(output_dir, state_dict=state_dict)
        (output_dir / TRAINING_CONFIG_NAME).write_text(json.dumps(config.to_dict(), indent=2) + "\n")
        (output_dir / HISTORY_NAME).write_text(json.dumps(history, indent=2) + "\n")
        logger.info("saved the trained model to %s", output_dir)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return model.eval()


def train(model: SelfExplainingCLIPVision, train_dataset, config: TrainingConfig, eval_dataset=None) -> TrainResult:
    r"""
    Train `model` in place with the α-weighted loss (AdamW, cosine schedule with warmup, Accelerate).

    Run it as a plain script, or under `accelerate launch` for several processes, GPUs or nodes; every process
    calls `train` with the same arguments. The final model is saved with `save_pretrained` to `config.output_dir`
    (main process only), with `training_config.json` and `history.json`.

    Args:
        model ([`SelfExplainingCLIPVision`]):
            The model to train; its `config.alpha` is set to `config.alpha`. Its head buffers never change.
        train_dataset (`datasets.Dataset` or `torch.utils.data.Dataset`):
            Map-style data with the columns (or, for a torch Dataset, dict keys) `pixel_values`: float of shape
            `(num_channels, image_size, image_size)`; `labels`: int in `[0, num_classes)`; `shap_values`: float of
            shape `(num_patches,)`, the Kernel SHAP values of the label class per patch in row-major order (needed
            when `alpha < 1`; when present with `alpha = 1` the attribution loss is logged but not trained). A
            `datasets.Dataset` is read with `with_format("torch")` unless it has a transform of its own.
        config ([`TrainingConfig`]):
            The settings.
        eval_dataset (same kinds as `train_dataset`, *optional*):
            Evaluated every `config.eval_every` steps and after the last one.

    Returns:
        [`TrainResult`] with the trained model (eval mode) and the history of logged values.

    Raises:
        [`DatasetFormatError`] (a `ValueError`): a column is missing, or `pixel_values`/`shap_values` have the wrong
            shape, or a label is out of range (named, with the expected and actual values). All but the label check
            happen before the model is touched.
        `TypeError`: `model` is not a [`SelfExplainingCLIPVision`], `config` not a [`TrainingConfig`], or the data
            set is not map-style.
        `ValueError`/`FileNotFoundError`: `resume_from` is not a checkpoint, or one written with other settings.
    """
    if not isinstance(model, SelfExplainingCLIPVision):
        raise TypeError(f"train takes a SelfExplainingCLIPVision, got {type(model).__name__}.")
    if not isinstance(config, TrainingConfig):
        raise TypeError(f"config must be a TrainingConfig, got {type(config).__name__}.")
    train_data, train_shap = _prepare_dataset(train_dataset, model.config, config.alpha < 1, "train_dataset")
    if eval_dataset is not None:
        eval_data, eval_shap = _prepare_dataset(eval_dataset, model.config, False, "eval_dataset")
    resume_path, saved = _resolve_resume(config)

    accelerator = _make_accelerator(config)
    run = {
        "num_examples": len(train_data),
        "num_processes": accelerator.num_processes,
        "per_device_batch_size": config.per_device_batch_size,
        "gradient_accumulation_steps": config.gradient_accumulation_steps,
        "seed": config.seed,
        "alpha": config.alpha,
    }
    if resume_path is not None:
        _check_resumable(saved, run, resume_path)  # before the model is touched
    set_seed(config.seed)
    model.config.alpha = config.alpha
    if config.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    model.train()

    num_labels, num_patches = model.config.num_labels, model.config.num_patches
    sampler = EpochShuffleSampler(len(train_data), config.seed)
    loader_kwargs = {"batch_size": config.per_device_batch_size, "num_workers": config.num_workers}
    collate = _Collator(num_labels, num_patches, train_shap)
    train_loader = DataLoader(train_data, sampler=sampler, collate_fn=collate, **loader_kwargs)
    raw_optimizer = torch.optim.AdamW(_parameter_groups(model, config.weight_decay), lr=config.learning_rate)
    model, optimizer, train_loader = accelerator.prepare(model, raw_optimizer, train_loader)
    eval_loader = None
    if eval_dataset is not None:
        eval_collate = _Collator(num_labels, num_patches, eval_shap)
        eval_loader = accelerator.prepare(DataLoader(eval_data, collate_fn=eval_collate, **loader_kwargs))

    epoch_batches = len(train_loader)  # per process
    total_steps = config.max_steps or config.num_train_epochs * math.ceil(
        epoch_batches / config.gradient_accumulation_steps
    )
    warmup = (
        config.warmup_steps if isinstance(config.warmup_steps, int) else math.ceil(config.warmup_steps * total_steps)
    )
    scheduler = accelerator.prepare(
        get_cosine_schedule_with_warmup(raw_optimizer, min(warmup, total_steps), total_steps)
    )

    run["total_steps"] = total_steps
    state = {"global_step": 0, "epoch": 0, "batches_in_epoch": 0}
    history: list[dict] = []
    meter = _LossMeter(accelerator.device, collate.use_shap)
    if resume_path is not None:
        if saved.get("total_steps") != total_steps:
            logger.warning(
                "resuming with %d steps in all instead of %s: the schedule changes.",
                total_steps,
                saved.get("total_steps"),
            )
        accelerator.load_state(os.fspath(resume_path))
        state, history = {k: int(saved[k]) for k in state}, list(saved["history"])
        if accelerator.is_main_process:  # the sums since the last log, over all processes, at the checkpoint
            meter.sums += torch.tensor(saved["pending_sums"], dtype=meter.sums.dtype, device=meter.sums.device)
            logger.info("resumed from %s at step %d", resume_path, state["global_step"])
    if config.report_to:
        hparams = {k: v for k, v in config.to_dict().items() if isinstance(v, (int, float, str, bool))}
        accelerator.init_trackers(config.tracker_project_name, config=hparams)

    show = not config.disable_tqdm and accelerator.is_local_main_process
    progress = tqdm(total=total_steps, initial=state["global_step"], desc="training", disable=not show)
    while state["global_step"] < total_steps:
        train_loader.set_epoch(state["epoch"])  # the skipping loader below copies the epoch
        sampler.set_epoch(state["epoch"])
        loader = train_loader
        if state["batches_in_epoch"]:  # resuming in the middle of an epoch
            loader = accelerator.skip_first_batches(train_loader, state["batches_in_epoch"])
        for batch in loader:
            with accelerator.accumulate(model):
                outputs = model(**batch)
                accelerator.backward(outputs.loss)
                if accelerator.sync_gradients and config.max_grad_norm:
                    accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad()
            meter.add(outputs)
            state["batches_in_epoch"] += 1
            if state["batches_in_epoch"] == epoch_batches:
                state["epoch"], state["batches_in_epoch"] = state["epoch"] + 1, 0
            if not accelerator.sync_gradients:
                continue
            lr = scheduler.get_last_lr()[0]  # the rate this step used
            if not accelerator.optimizer_step_was_skipped:
                scheduler.step()
            state["global_step"] += 1
            step = state["global_step"]
            progress.update(1)
            if step % config.log_every == 0 or step == total_steps:
                epoch = state["epoch"] + state["batches_in_epoch"] / epoch_batches
                entry = {"step": step, "epoch": epoch, **meter.pop(accelerator), "lr": lr}
                history.append(entry)
                accelerator.log({k: v for k, v in entry.items() if k != "step"}, step=step)
                progress.set_postfix(loss=f"{entry['loss']:.4g}")
                if accelerator.is_main_process:
                    logger.info("step %d/%d: %s", step, total_steps, {k: v for k, v in entry.items() if k != "step"})
            if eval_loader is not None and (
                step == total_steps or (config.eval_every and step % config.eval_every == 0)
            ):
                metrics = _evaluate(accelerator, model, eval_loader, config.alpha)
                history.append({"step": step, **metrics})
                accelerator.log(metrics, step=step)
                if accelerator.is_main_process:
                    logger.info("step %d evaluation: %s", step, metrics)
            if config.checkpoint_every and step % config.checkpoint_every == 0:
                checkpoint = {**state, **run, "pending_sums": meter.totals(accelerator), "history": history}
                _save_checkpoint(accelerator, config, checkpoint)
            if step >= total_steps:
                break
    progress.close()
    model = _save_final(accelerator, model, config, history)
    return TrainResult(
        model=model, history=history, global_step=state["global_step"], output_dir=Path(config.output_dir)
    )


def _dataset_name(dataset) -> str | None:
    info = getattr(dataset, "info", None)
    return (getattr(info, "dataset_name", None) or getattr(info, "builder_name", None)) if info is not None else None


def train_twins(
    base_model: SelfExplainingCLIPVision,
    dataset,
    config: TrainingConfig,
    eval_dataset=None,
    source_dataset: str | None = None,
) -> TwinsResult:
    r"""
    Train the prediction-only (α = 1) and self-explaining (α = `config.alpha`) twins from the same starting weights,
    with the same seed and data order, and take the explainability vector τ = θ*_S − θ_S.

    The twins are trained on copies of `base_model` (left unchanged) and saved to `config.output_dir /
    "prediction_only"` and `config.output_dir / "self_explaining"`; the vector is saved to `config.output_dir /
    "explainability_vector"`.

    Args:
        base_model ([`SelfExplainingCLIPVision`]): The starting point θ_S of both twins.
        dataset: The SHAP-labelled training data (see [`train`] for the columns).
        config ([`TrainingConfig`]): Settings of both runs; `alpha` (< 1) is the self-explaining twin's.
            `resume_from` may only be `None` or `"latest"` (each twin resumes from its own checkpoints).
        eval_dataset (*optional*): Evaluated during both runs.
        source_dataset (`str`, *optional*): The data set's name for the vector's provenance; by default
            `dataset.info.dataset_name` or `dataset.info.builder_name` when the data set has them.

    Returns:
        [`TwinsResult`] `(prediction_only, self_explaining, vector)`; `vector.config` holds `alpha`,
        `source_dataset` and `base_model` (`base_model.config.clip_name_or_path`).
    """
    if not isinstance(base_model, SelfExplainingCLIPVision):
        raise TypeError(f"train_twins takes a SelfExplainingCLIPVision, got {type(base_model).__name__}.")
    if not isinstance(config, TrainingConfig):
        raise TypeError(f"config must be a TrainingConfig, got {type(config).__name__}.")
    if config.alpha >= 1:
        raise ValueError(f"train_twins needs config.alpha < 1 for the self-explaining twin, got {config.alpha}.")
    if config.resume_from not in (None, "latest"):
        raise ValueError(f"train_twins resumes with resume_from='latest' only, got {config.resume_from!r}.")
    output_dir = Path(config.output_dir)
    models = []
    for name, alpha in (("prediction_only", 1.0), ("self_explaining", config.alpha)):
        twin_config = dataclasses.replace(config, output_dir=output_dir / name, alpha=alpha)
        models.append(train(copy.deepcopy(base_model), dataset, twin_config, eval_dataset=eval_dataset).model)
    prediction_only, self_explaining = models
    provenance = TaskVectorConfig(
        base_model=base_model.config.clip_name_or_path,
        finetuned_model=os.fspath(output_dir / "self_explaining"),
        source_dataset=source_dataset or _dataset_name(dataset),
        alpha=config.alpha,
    )
    vector = TaskVector.from_models(prediction_only, self_explaining, provenance)
    if PartialState().is_main_process:
        vector.save_pretrained(output_dir / "explainability_vector")
    return TwinsResult(prediction_only, self_explaining, vector)


__all__ = [
    "DatasetFormatError",
    "EpochShuffleSampler",
    "TrainResult",
    "TrainingConfig",
    "TwinsResult",
    "train",
    "train_twins",
]
