"""The twins whose difference is the explainability vector: a prediction-only (α = 1) and a self-explaining
(α < 1) model trained from the same weights, seed and data order."""

from __future__ import annotations

import copy
import dataclasses
import logging
import os
from pathlib import Path
from typing import NamedTuple

from .._process import process_state
from ..arithmetic import vision_state
from ..base_check import base_fingerprint_or_none
from ..modeling import SelfExplainingCLIPVision
from ..task_vector import TaskVector, TaskVectorConfig
from .checkpoint import check_output_dir
from .config import TrainingConfig
from .loop import train

__all__ = ["TwinsResult", "train_twins"]

logger = logging.getLogger(__name__)


class TwinsResult(NamedTuple):
    """What [`train_twins`] returns: the twins and τ = self_explaining − prediction_only."""

    prediction_only: SelfExplainingCLIPVision
    self_explaining: SelfExplainingCLIPVision
    vector: TaskVector


def _dataset_name(dataset) -> str | None:
    info = getattr(dataset, "info", None)
    return (getattr(info, "dataset_name", None) or getattr(info, "builder_name", None)) if info is not None else None


def train_twins(
    base_model: SelfExplainingCLIPVision,
    dataset,
    config: TrainingConfig,
    eval_dataset=None,
    source_dataset: str | None = None,
    base_model_revision: str | None = None,
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
        base_model_revision (`str`, *optional*): The revision (commit sha) of the CLIP model `base_model` was built
            from, for the vector's provenance (transformers does not keep it on the model).

    Returns:
        [`TwinsResult`] `(prediction_only, self_explaining, vector)`; `vector.config` holds `alpha`,
        `source_dataset`, `base_model` (`base_model.config.clip_name_or_path`), `base_model_revision` and the
        `base_fingerprint` of `base_model`, the twins' starting point (not of the prediction-only twin), so that
        `vector.apply_to` accepts every fine-tune of that base ([`~hf_explvec.base_check.check_base`]).

    Raises:
        Those of [`train`], before the first twin trains for bad settings, data and output folders.
    """
    if not isinstance(base_model, SelfExplainingCLIPVision):
        raise TypeError(f"train_twins takes a SelfExplainingCLIPVision, got {type(base_model).__name__}.")
    if not isinstance(config, TrainingConfig):
        raise TypeError(f"config must be a TrainingConfig, got {type(config).__name__}.")
    config.validate()
    if config.alpha >= 1:
        raise ValueError(f"train_twins needs config.alpha < 1 for the self-explaining twin, got {config.alpha}.")
    if config.resume_from not in (None, "latest"):
        raise ValueError(f"train_twins resumes with resume_from='latest' only, got {config.resume_from!r}.")
    if base_model_revision is not None and not isinstance(base_model_revision, str):
        raise TypeError(f"base_model_revision must be a string or None, got {type(base_model_revision).__name__}.")
    output_dir = check_output_dir(config.output_dir)
    fingerprint = base_fingerprint_or_none(vision_state(base_model.state_dict()), "train_twins")
    models = []
    for name, alpha in (("prediction_only", 1.0), ("self_explaining", config.alpha)):
        twin_config = dataclasses.replace(config, output_dir=output_dir / name, alpha=alpha)
        models.append(train(copy.deepcopy(base_model), dataset, twin_config, eval_dataset=eval_dataset).model)
    prediction_only, self_explaining = models
    provenance = TaskVectorConfig(
        base_model=base_model.config.clip_name_or_path,
        base_model_revision=base_model_revision,
        base_fingerprint=fingerprint,
        finetuned_model=os.fspath(output_dir / "self_explaining"),
        source_dataset=source_dataset or _dataset_name(dataset),
        alpha=config.alpha,
    )
    vector = TaskVector.from_models(prediction_only, self_explaining, provenance)
    if process_state().is_main_process:
        vector.save_pretrained(Path(output_dir) / "explainability_vector")
    return TwinsResult(prediction_only, self_explaining, vector)
