"""Training a [`SelfExplainingCLIPVision`] with Accelerate on SHAP-labelled data.

The loss is the model's own: `alpha * CE + (1 - alpha) * MSE(attributions of the label class, shap_values)`, with
`alpha = 1` for a prediction-only model and `alpha = 0.8` for the paper's self-explaining models. The head (class
embeddings, logit scale) is made of buffers: the optimizer never sees it and it never changes.

The same script runs in one process, under `accelerate launch --multi_gpu --num_processes N` and on several nodes.
For several CPU processes set `ACCELERATE_USE_CPU=1` as well: `accelerate launch --cpu` alone starts one process
(Accelerate 1.15 runs several only through MPI there), and `train` refuses to start when `WORLD_SIZE` says otherwise.
Training is deterministic given the seed: the data order of each epoch is a permutation drawn from `(seed, epoch)`
alone, so a run stopped after a checkpoint and resumed with `resume_from` ends with the same weights as a run that
never stopped (same number of processes, batch size and accumulation). Checkpoints: see
`hf_explvec.training.checkpoint`.

Everything that can be checked is checked before the model is touched: the settings, every example of the data,
the resume checkpoint and the output folder. If training fails after that (a non-finite loss, an error in a data
transform, a full disk), the model passed in gets its starting weights back.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import get_cosine_schedule_with_warmup

from .._process import process_state
from ..evaluation import e_rmse, select_target
from ..modeling import SelfExplainingCLIPVision
from .batches import Collator, EpochShuffleSampler, check_examples, prepare_dataset
from .checkpoint import check_output_dir, check_resumable, resolve_resume, save_checkpoint
from .config import HISTORY_NAME, LABELS, PIXELS, SHAP, TRAINING_CONFIG_NAME, TrainingConfig

logger = logging.getLogger(__name__)

__all__ = ["TrainResult", "train"]


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


# ------------------------------------------------------------------------------------------------- optimizer
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


# -------------------------------------------------------------------------------------------------- evaluation
@torch.no_grad()
def _evaluate(accelerator: Accelerator, model: nn.Module, loader: DataLoader, alpha: float) -> dict:
    """Mean cross-entropy, attribution MSE, E-RMSE ([`hf_explvec.evaluation.e_rmse`]) and accuracy over the whole
    evaluation set (all processes)."""
    model.eval()
    parts = {"ce": [], "correct": [], "explained": [], "shap": []}
    for batch in loader:
        outputs = model(pixel_values=batch[PIXELS])
        logits, labels = outputs.logits.float(), batch[LABELS]
        values = {
            "ce": F.cross_entropy(logits, labels, reduction="none"),
            "correct": (logits.argmax(-1) == labels).float(),
        }
        if SHAP in batch:
            values["explained"] = select_target(outputs.patch_attributions, labels).float()
            values["shap"] = batch[SHAP].float()
        for key, value in accelerator.gather_for_metrics(values).items():
            parts[key].append(value)
    model.train()
    ce, accuracy = torch.cat(parts["ce"]).mean().item(), torch.cat(parts["correct"]).mean().item()
    metrics = {"eval_loss": ce, "eval_ce_loss": ce, "eval_accuracy": accuracy}
    if parts["explained"]:
        explained, shap = torch.cat(parts["explained"]), torch.cat(parts["shap"])
        metrics["eval_attribution_loss"] = (explained - shap).pow(2).mean(-1).mean().item()  # the loss's MSE term
        metrics["eval_e_rmse"] = e_rmse(explained, shap)
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


def _is_checkpointing(model: nn.Module) -> bool:
    """Whether activation (gradient) checkpointing is on (`is_activation_checkpointing` from transformers 5.x)."""
    for name in ("is_activation_checkpointing", "is_gradient_checkpointing"):
        if hasattr(type(model), name):
            return bool(getattr(model, name))
    return False


class _StartingPoint:
    """What `train` changes on the user's model, kept so that a failed run can put it back: a copy of the state
    dict on the CPU (host memory of the size of the model's parameters and buffers: about 350 MB for ViT-B/32 in
    float32), `config.alpha`, the training mode and gradient checkpointing."""

    def __init__(self, model: SelfExplainingCLIPVision):
        self.state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        self.alpha, self.training = model.config.alpha, model.training
        self.checkpointing = _is_checkpointing(model)

    def restore(self, model: SelfExplainingCLIPVision) -> None:
        with torch.no_grad():
            model.load_state_dict(self.state)  # copies into the existing tensors: same devices and dtypes
        model.zero_grad(set_to_none=True)
        model.config.alpha = self.alpha
        if _is_checkpointing(model) and not self.checkpointing:
            model.gradient_checkpointing_disable()
        model.train(self.training)


def _make_accelerator(config: TrainingConfig) -> Accelerator:
    return Accelerator(
        mixed_precision=config.mixed_precision,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        log_with=config.report_to,
        project_dir=os.fspath(config.output_dir),
        step_scheduler_with_optimizer=False,  # the scheduler counts optimizer steps, whatever the process count
    )


def _check_finite_loss(accelerator: Accelerator, non_finite: torch.Tensor, step: int, epoch: int) -> None:
    """Stop every process together, before the optimizer step, when any of them saw a non-finite loss."""
    if accelerator.reduce(non_finite, reduction="sum").item():
        raise FloatingPointError(
            f"the training loss became non-finite (NaN or Inf) in optimizer step {step} (epoch {epoch}); stopped "
            "before that step: the model passed to train() has its starting weights back and the step's weights were "
            "not saved. Check the data (pixel_values, shap_values) and lower learning_rate."
        )


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
    return model.eval()


def train(model: SelfExplainingCLIPVision, train_dataset, config: TrainingConfig, eval_dataset=None) -> TrainResult:
    r"""
    Train `model` in place with the α-weighted loss (AdamW, cosine schedule with warmup, Accelerate).

    Run it as a plain script, or under `accelerate launch` for several processes, GPUs or nodes; every process
    calls `train` with the same arguments. The final model is saved with `save_pretrained` to `config.output_dir`
    (main process only), with `training_config.json` and `history.json`.

    Before the model is touched, `train` checks the settings (again, in case a field changed after the config was
    built), the launcher (`WORLD_SIZE`), every example of both data sets (one read pass, see
    [`~hf_explvec.training.batches.check_examples`]), the resume checkpoint and that `output_dir` is a writable
    folder; a refusal changes nothing and writes nothing. If training then fails, the model gets its starting
    weights back (from a copy kept in host memory: one copy of the parameters and buffers) before the error
    propagates; checkpoints written before the failure stay.

    Args:
        model ([`SelfExplainingCLIPVision`]):
            The model to train; its `config.alpha` is set to `config.alpha`. Its head buffers never change.
        train_dataset (`datasets.Dataset` or `torch.utils.data.Dataset`):
            Map-style data with the columns (or, for a torch Dataset, dict keys) `pixel_values`: float of shape
            `(num_channels, image_size, image_size)`; `labels`: int in `[0, num_classes)`; `shap_values`: float of
            shape `(num_patches,)`, the Kernel SHAP values of the label class per patch in row-major order (needed
            when `alpha < 1`; when present with `alpha = 1` the attribution loss is logged but not trained). All
            finite. A `datasets.Dataset` is read with `with_format("torch")` unless it has a transform of its own.
        config ([`TrainingConfig`]):
            The settings.
        eval_dataset (same kinds as `train_dataset`, *optional*):
            Evaluated every `config.eval_every` steps and after the last one.

    Returns:
        [`TrainResult`] with the trained model (eval mode) and the history of logged values.

    Raises:
        [`DatasetFormatError`] (a `ValueError`): a column is missing, or an example's `pixel_values` /
            `shap_values` have the wrong shape or a NaN / Inf, or a label is not an int in range (named with the
            column, the row, the expected and the actual value).
        `TypeError`: `model` is not a [`SelfExplainingCLIPVision`], `config` not a [`TrainingConfig`], or the data
            set is not map-style.
        `ValueError`: a setting is out of range, `WORLD_SIZE` names more processes than Accelerate joined, or the
            checkpoint of `resume_from` was written with other settings or is damaged.
        `FileNotFoundError`: `resume_from` is not a checkpoint folder.
        `NotADirectoryError` / `PermissionError`: `output_dir` is a file, or is not writable.
        `FloatingPointError`: the loss became non-finite during training (the model is restored).
    """
    if not isinstance(model, SelfExplainingCLIPVision):
        raise TypeError(f"train takes a SelfExplainingCLIPVision, got {type(model).__name__}.")
    if not isinstance(config, TrainingConfig):
        raise TypeError(f"config must be a TrainingConfig, got {type(config).__name__}.")
    config.validate()
    processes = process_state()
    train_data, train_shap = prepare_dataset(train_dataset, model.config, config.alpha < 1, "train_dataset")
    eval_data = eval_shap = None
    if eval_dataset is not None:
        eval_data, eval_shap = prepare_dataset(eval_dataset, model.config, False, "eval_dataset")
    resume_path, saved = resolve_resume(config)
    run = {
        "num_examples": len(train_data),
        "num_processes": processes.num_processes,
        "per_device_batch_size": config.per_device_batch_size,
        "gradient_accumulation_steps": config.gradient_accumulation_steps,
        "seed": config.seed,
        "alpha": config.alpha,
    }
    if resume_path is not None:
        check_resumable(saved, run, resume_path)
    check_examples(train_data, model.config, train_shap, "train_dataset", config.num_workers)
    if eval_data is not None:
        check_examples(eval_data, model.config, eval_shap, "eval_dataset", config.num_workers)
    check_output_dir(config.output_dir)

    accelerator = _make_accelerator(config)
    start = _StartingPoint(model)
    try:
        data = (train_data, train_shap), (eval_data, eval_shap)
        return _train(accelerator, model, config, data, run, (resume_path, saved))
    except Exception:
        start.restore(accelerator.unwrap_model(model, keep_fp32_wrapper=False))
        accelerator.free_memory()
        raise
    finally:
        accelerator.end_training()


def _train(accelerator, model, config, data, run, resume) -> TrainResult:
    """The run proper, after every check: the data loaders, the optimisation loop and the final save."""
    ((train_data, train_shap), (eval_data, eval_shap)), (resume_path, saved) = data, resume
    set_seed(config.seed)
    model.config.alpha = config.alpha
    if config.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    model.train()

    num_labels, num_patches = model.config.num_labels, model.config.num_patches
    sampler = EpochShuffleSampler(len(train_data), config.seed)
    loader_kwargs = {"batch_size": config.per_device_batch_size, "num_workers": config.num_workers}
    collate = Collator(num_labels, num_patches, train_shap)
    train_loader = DataLoader(train_data, sampler=sampler, collate_fn=collate, **loader_kwargs)
    raw_optimizer = torch.optim.AdamW(_parameter_groups(model, config.weight_decay), lr=config.learning_rate)
    model, optimizer, train_loader = accelerator.prepare(model, raw_optimizer, train_loader)
    eval_loader = None
    if eval_data is not None:
        eval_collate = Collator(num_labels, num_patches, eval_shap)
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

    run = {**run, "total_steps": total_steps}
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
    non_finite = torch.zeros((), device=accelerator.device)  # micro-batches with a NaN/Inf loss since the last step
    while state["global_step"] < total_steps:
        train_loader.set_epoch(state["epoch"])  # the skipping loader below copies the epoch
        sampler.set_epoch(state["epoch"])
        loader = train_loader
        if state["batches_in_epoch"]:  # resuming in the middle of an epoch
            loader = accelerator.skip_first_batches(train_loader, state["batches_in_epoch"])
        for batch in loader:
            with accelerator.accumulate(model):
                outputs = model(**batch)
                non_finite += (~torch.isfinite(outputs.loss.detach())).float()
                accelerator.backward(outputs.loss)
                if accelerator.sync_gradients:
                    _check_finite_loss(accelerator, non_finite, state["global_step"] + 1, state["epoch"])
                    non_finite.zero_()
                    if config.max_grad_norm:
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
                save_checkpoint(accelerator, config, checkpoint)
            if step >= total_steps:
                break
    progress.close()
    model = _save_final(accelerator, model, config, history)
    return TrainResult(
        model=model, history=history, global_step=state["global_step"], output_dir=Path(config.output_dir)
    )
