r"""Ablation rows of the offline demo (issue 11, item 7): levers tried on the explainability transfer, each measured as
the demo measures the vector, and reported whether it helped or not.

One run ([`run_ablations`]) trains ONE base (as [`~hf_explvec.demo.pipeline`] does), the reference source twins
(α = `config.alpha`, `config.train_size` images) and, per variant, what that variant changes:

- `alpha_0.5`, `alpha_0.95`: the self-explaining twin trained with another α (the Kernel SHAP labels and the
  prediction-only twin are the reference's: α does not change them);
- `layers_encoder`, `layers_last`, `layers_first`: only part of τ_S applied ([`partial_vector`]: the transformer
  layers; the last layer, post-layernorm and projection; the embeddings, pre-layernorm and first layer);
- `efficiency`: no training, a post-hoc correction of the transferred model's attributions
  ([`efficiency_correction`]): each image's attributions shifted so that they sum to f(x) − f(baseline), the
  efficiency property its Kernel SHAP reference has by construction;
- `patch_norm`: the patch attributions divided by the mean norm of each image's patch tokens instead of its [CLS]
  norm (`SelfExplainingCLIPVisionConfig.patch_normalisation = "patches"`, which decouples the attribution scale from
  [CLS]): the source twins are trained with it (the Kernel SHAP labels and the prediction-only twin are the
  reference's: it does not change the logits) and θ_T and θ̃ are evaluated with it. It has no parameter, so θ_T's
  own attributions change too (by a positive factor per image: its rankings do not), and, like `efficiency`, its
  λ2 = 0 figures differ from the baseline's;
- `data_x2`: the source twins trained on twice as many source images (same epochs, so twice the optimisation steps;
  the model's capacity is the base's, unchanged);
- `merge_sources`: the mean of τ_S and the vector of a second source domain (`digits_on_textures`), trained the same
  way from the same base (issue 11 item 1: merging vectors from several sources);
- `lam_per_half`: one λ2 per half of the tower ([`vector_halves`]), the pair chosen on validation over the square
  of the grid (the per-layer λ lever, at the granularity of halves: the demo's tower has two layers);
- `fastshap`: the self-explaining twin trained on the FastSHAP / ViT-Shapley least-squares objective over sampled
  coalitions ([`~hf_explvec.demo.fastshap`]) instead of Kernel SHAP labels (both twins retrained in that module's
  loop, so that they share their data order).

For each related target, θ_T is trained once and shared by every variant; each variant then gets the demo's λ2 sweep on
validation, the λ rule ([`~hf_explvec.evaluation.select_lambda`]) and the test figures at λ2 = 0 and at the chosen λ2.
Every figure is measured against the same baseline, the prediction-only θ_T (λ2 = 0, no correction, [CLS]
normalisation) on the test split, with the Kernel SHAP reference of the model measured. [`ablation_report`] writes
the table.

The seeds derive from `config.seed` ([`~hf_explvec.demo.config.derived_seed`]) as in the demo; the hub round trip of
the demo is left out (it is lossless and does not change a figure).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ..attribution._forward import VALUE_OPTIONS, score
from ..evaluation import (
    explanation_metrics,
    forward_attributions,
    per_image_correct,
)
from ..task_vector import TaskVector, transfer
from ..training import train, train_twins
from .config import DemoConfig, derived_seed
from .data import domain_role, load_domain, load_domains
from .domains import DOMAINS
from .fastshap import train_fastshap_twins
from .pretrain import build_clip, pretrain_clip, start_model
from .report import transfer_verdict

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_VARIANTS",
    "VARIANTS",
    "VECTOR_PARTS",
    "AblationVariant",
    "ablation_report",
    "efficiency_correction",
    "vector_halves",
    "partial_vector",
    "related_targets",
    "run_ablations",
    "score_gap",
    "vector_part_keys",
]


# ---------------------------------------------------------------------------------------------------------- variants
@dataclass(frozen=True)
class AblationVariant:
    r"""
    One ablation row.

    Args:
        name (`str`): the row's name (also its `--variants` name).
        description (`str`): what it changes, one line.
        alpha (`float`, *optional*): the self-explaining twin's α (retrains the twins); `None` keeps `config.alpha`.
        train_factor (`int`, defaults to 1): source training images, times `config.train_size` (retrains the
            source stage).
        part (`str`, *optional*): a key of `VECTOR_PARTS`: only that part of τ_S is applied.
        efficiency (`bool`, defaults to `False`): the post-hoc efficiency correction of the attributions.
        merge_with (`str`, *optional*): a second source domain: its twins are trained as the reference's (from the same
            base) and the mean of its vector and τ_S is applied ([`TaskVector.merge`], `"sum"`, weights 0.5).
        patch_normalisation (`str`, defaults to `"cls"`): the models' `config.patch_normalisation`; another value
            retrains the source twins with it and evaluates θ_T and θ̃ with it (it has no parameter).
    """

    name: str
    description: str
    alpha: float | None = None
    train_factor: int = 1
    part: str | None = None
    efficiency: bool = False
    merge_with: str | None = None
    patch_normalisation: str = "cls"
    fastshap: bool = False
    per_half_lam: bool = False

    @property
    def retrains(self) -> bool:
        """Whether the variant trains its own source twins (else it reuses the reference twins)."""
        return (self.alpha is not None or self.train_factor != 1 or self.merge_with is not None
                or self.patch_normalisation != "cls" or self.fastshap)  # fmt: skip

    @property
    def changes_target_attributions(self) -> bool:
        """Whether θ_T's own attributions (λ2 = 0) differ from the baseline's: its row's `relative_at_zero` is not
        zero."""
        return self.efficiency or self.patch_normalisation != "cls"


VECTOR_PARTS = {
    "encoder": "the transformer layers' weights (every encoder layer; no embeddings, layernorms outside the layers "
    "or projection)",
    "last": "the last transformer layer, the post-layernorm and the visual projection",
    "first": "the embeddings (patch, class, position), the pre-layernorm and the first transformer layer",
}
"""The parts of τ_S a partial vector can keep ([`vector_part_keys`])."""

VARIANTS = {
    variant.name: variant
    for variant in (
        AblationVariant("alpha_0.5", "self-explaining twin trained with α = 0.5 (more weight on the SHAP loss)", 0.5),
        AblationVariant(
            "alpha_0.95", "self-explaining twin trained with α = 0.95 (less weight on the SHAP loss)", 0.95
        ),
        AblationVariant("layers_encoder", f"only {VECTOR_PARTS['encoder']}", part="encoder"),
        AblationVariant("layers_last", f"only {VECTOR_PARTS['last']}", part="last"),
        AblationVariant("layers_first", f"only {VECTOR_PARTS['first']}", part="first"),
        AblationVariant(
            "efficiency",
            "post-hoc efficiency correction: each image's attributions shifted equally so that they sum to "
            "f(x) − f(baseline) (no training)",
            efficiency=True,
        ),
        AblationVariant(
            "patch_norm",
            "patch attributions divided by the mean norm of the image's patch tokens instead of its [CLS] norm "
            "(decouples their scale from [CLS]; no parameter): source twins trained with it, θ_T and θ̃ evaluated "
            "with it",
            patch_normalisation="patches",
        ),
        AblationVariant(
            "data_x2",
            "source twins trained on twice as many source images (same epochs, twice the steps; the model's "
            "capacity is the base's, unchanged)",
            train_factor=2,
        ),
        AblationVariant(
            "merge_sources",
            "the mean of τ_S and the vector of a second source, digits_on_textures (digits 0-4 on grey textures), "
            "trained the same way from the same base (task-arithmetic merge; λ2 scales it)",
            merge_with="digits_on_textures",
        ),
        AblationVariant(
            "fastshap",
            "self-explaining twin trained on the FastSHAP / ViT-Shapley least-squares objective over coalitions drawn "
            "from the Shapley kernel (16 per image and step, teacher θ_S) instead of Kernel SHAP labels; both twins "
            "in one plain loop with the same data order",
            fastshap=True,
        ),
        AblationVariant(
            "lam_per_half",
            "one λ2 per half of the tower (embeddings, pre-layernorm and the first half of the layers; the second "
            "half, post-layernorm and projection), the pair chosen on validation by the same rule over the grid's "
            "square",
            per_half_lam=True,
        ),
    )
}
"""The known ablation variants by name."""

DEFAULT_VARIANTS = tuple(VARIANTS)
"""Every known variant, in table order."""

REFERENCE = "reference"


def _check_variants(variants) -> tuple[AblationVariant, ...]:
    if isinstance(variants, str) or not isinstance(variants, (tuple, list)):
        raise TypeError(f"variants must be a tuple or list of variant names, got {type(variants).__name__}.")
    unknown = [name for name in variants if name not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown ablation variant(s) {unknown}; the known ones are {list(VARIANTS)}.")
    if len(set(variants)) != len(variants):
        raise ValueError(f"variants must not repeat a name, got {list(variants)}.")
    return tuple(VARIANTS[name] for name in variants)


# ---------------------------------------------------------------------------------------------------- partial vector
_LAYERS = "vision_model.encoder.layers."


def _layer_of(key: str) -> int | None:
    """The transformer layer index of a canonical key, `None` outside the encoder layers."""
    return int(key[len(_LAYERS) :].split(".")[0]) if key.startswith(_LAYERS) else None


def _encoder_layers(keys: list[str]) -> list[int]:
    """The sorted transformer layer indices among `keys`; a `ValueError` when there is none."""
    layers = sorted({_layer_of(key) for key in keys if key.startswith(_LAYERS)})
    if not layers:
        raise ValueError(f"no transformer layer key ({_LAYERS}<i>.*) among the {len(keys)} keys of the vector.")
    return layers


def _dense_state(vector: TaskVector) -> dict:
    return vector.to_dense().state_dict() if vector.storage_format != "dense" else vector.state_dict()


def _keeping(vector: TaskVector, state: dict, selected: set) -> TaskVector:
    """`vector` with the entries outside `selected` set to zero (every key kept, config copied)."""
    kept = {key: value if key in selected else torch.zeros_like(value) for key, value in state.items()}
    return TaskVector(kept, copy.deepcopy(vector.config))


def vector_part_keys(keys, part: str) -> list[str]:
    r"""
    The canonical keys of a task vector that belong to a part of the vision tower.

    Args:
        keys (iterable of `str`): canonical keys (`vision_model.*`, `visual_projection.weight`), e.g.
            `TaskVector.keys()`.
        part (`str`): a key of `VECTOR_PARTS` (`"encoder"`, `"last"`, `"first"`).

    Returns:
        `list[str]`: the selected keys, in the order given.

    Raises:
        `ValueError`: an unknown part, or a part that selects no key (no encoder layer found).
    """
    if part not in VECTOR_PARTS:
        raise ValueError(f"unknown vector part {part!r}; the known ones are {list(VECTOR_PARTS)}.")
    keys = list(keys)
    prefix, layers = _LAYERS, _encoder_layers(keys)
    if part == "encoder":
        prefixes = (prefix,)
    elif part == "last":
        prefixes = (f"{prefix}{layers[-1]}.", "vision_model.post_layernorm.", "visual_projection.")
    else:
        prefixes = ("vision_model.embeddings.", "vision_model.pre_layrnorm.", f"{prefix}{layers[0]}.")
    selected = [key for key in keys if key.startswith(prefixes)]
    if not selected:
        raise ValueError(f"vector part {part!r} selects none of the vector's keys.")
    return selected


def partial_vector(vector: TaskVector, part: str) -> TaskVector:
    r"""
    τ_S restricted to a part of the vision tower: the selected entries as they are, every other entry zero, so the
    vector keeps its full key set (and its config, base fingerprint included) and [`transfer`] applies it as any other
    vector; the parameters outside the part keep the target model's values.

    Args:
        vector ([`TaskVector`]): a dense vector.
        part (`str`): a key of `VECTOR_PARTS`.

    Returns:
        [`TaskVector`]

    Raises:
        `ValueError`: see [`vector_part_keys`].
    """
    state = _dense_state(vector)
    return _keeping(vector, state, set(vector_part_keys(state, part)))


def vector_halves(vector: TaskVector) -> tuple[TaskVector, TaskVector]:
    r"""
    τ_S split in two halves that sum to it: the embeddings, the pre-layernorm and the first ⌈L/2⌉ transformer layers;
    the other layers, the post-layernorm and the visual projection (each half keeps every key, zero elsewhere).

    Args:
        vector ([`TaskVector`]): a vector with `vision_model.encoder.layers.<i>.*` keys.

    Returns:
        `tuple[TaskVector, TaskVector]`
    """
    state = _dense_state(vector)
    layers = _encoder_layers(list(state))
    first_layers = set(layers[: (len(layers) + 1) // 2])
    first = {key for key in state if _layer_of(key) in first_layers
             or key.startswith(("vision_model.embeddings.", "vision_model.pre_layrnorm."))}  # fmt: skip
    return _keeping(vector, state, first), _keeping(vector, state, set(state) - first)


# ---------------------------------------------------------------------------------------------- efficiency correction
@torch.inference_mode()
def score_gap(model, pixel_values: torch.Tensor, labels: torch.Tensor, *, value: str = "logit",
              batch_size: int = 256) -> torch.Tensor:  # fmt: skip
    r"""
    f(x) − f(baseline) for the label class of each image: the explained score (`value`, as Kernel SHAP explains it) on
    the image minus on the baseline image, all-zero pixel values after CLIP normalisation (the mean pixel, the
    baseline of the demo's Kernel SHAP reference). The baseline costs one extra forward pass.

    Args:
        model ([`~hf_explvec.SelfExplainingCLIPVision`]): the model (put in eval mode).
        pixel_values (`torch.FloatTensor` of shape `(N, 3, H, W)`): the images as processed.
        labels (`torch.LongTensor` of shape `(N,)`): the explained class of each image.
        value (`str`, *optional*, defaults to `"logit"`): `"logit"`, `"log_prob"` or `"prob"`.
        batch_size (`int`, *optional*, defaults to 256): images per forward pass.

    Returns:
        `torch.FloatTensor` of shape `(N,)` on CPU.

    Raises:
        `ValueError`: an unknown `value`, or images and labels of different counts.
    """
    if value not in VALUE_OPTIONS:  # refused before any forward pass
        raise ValueError(f"value must be one of {VALUE_OPTIONS}, got {value!r}.")
    if len(pixel_values) != len(labels):
        raise ValueError(f"{len(pixel_values)} images but {len(labels)} labels.")
    model.eval()
    device = model.device
    baseline = score(model(torch.zeros_like(pixel_values[:1]).to(device)).logits.cpu(), value)[0]
    gaps = []
    for i in range(0, len(pixel_values), batch_size):
        scores = score(model(pixel_values[i : i + batch_size].to(device)).logits.cpu(), value)
        batch = labels[i : i + batch_size].long().cpu()
        gaps.append(scores.gather(1, batch[:, None])[:, 0] - baseline[batch])
    return torch.cat(gaps)


def efficiency_correction(attributions: torch.Tensor, gap: torch.Tensor) -> torch.Tensor:
    r"""
    Shift each image's patch attributions so that they sum to `gap` (f(x) − f(baseline), [`score_gap`]): the
    difference between `gap` and the attributions' sum is spread equally over the M patches. Rankings (hence IoU@K,
    Spearman, pointing, deletion and insertion) are unchanged; only the level of the values moves.

    Args:
        attributions (`torch.Tensor` of shape `(N, M)`): the attributions of the explained class.
        gap (`torch.Tensor` of shape `(N,)`): the sum each row must have.

    Returns:
        `torch.Tensor` of shape `(N, M)`, float32.

    Raises:
        `ValueError`: shapes that do not line up.
    """
    if attributions.dim() != 2 or gap.shape != attributions.shape[:1]:
        raise ValueError(f"attributions must be (N, M) and gap (N,), got {tuple(attributions.shape)} and "
                         f"{tuple(gap.shape)}.")  # fmt: skip
    attributions, gap = attributions.double(), gap.double().to(attributions.device)
    return (attributions + ((gap - attributions.sum(dim=1)) / attributions.shape[1])[:, None]).float()


# ------------------------------------------------------------------------------------------------------- the run
def _pipeline_helpers():
    """The demo pipeline's stage helpers (imported late: the pipeline imports the report and the plots)."""
    from . import pipeline

    return pipeline


def _source_twins(clip, tokenizer, source, config: DemoConfig, work: Path, labels: torch.Tensor | None = None,
                  patch_normalisation: str = "cls") -> dict:  # fmt: skip
    """The core of the demo's source stage ([`~hf_explvec.demo.pipeline._source_stage`] without the TVE baseline and
    the source-test figures): θ_S (α = 1), its Kernel SHAP labels (unless `labels` is given), the twins and τ_S, the
    models built with `patch_normalisation`."""
    pipeline = _pipeline_helpers()
    base = start_model(clip, tokenizer, source)
    base.config.patch_normalisation = patch_normalisation
    if labels is None:
        run = pipeline._training_config(config, work, "source_prediction_only", 1.0, len(source.train))
        prediction_only = train(copy.deepcopy(base), pipeline._training_set(source.train), run).model
        labels = pipeline.shap_labels(prediction_only, source.train, config, work, f"{source.name}-train")
    run = pipeline._training_config(config, work, "source_twins", config.alpha, len(source.train))
    twins = train_twins(base, pipeline._training_set(source.train, labels), run, source_dataset=source.name)
    return {"vector": twins.vector.to(device="cpu"), "labels": labels, "alpha": config.alpha,
            "train_size": len(source.train), "teacher": twins.prediction_only,
            "patch_normalisation": twins.self_explaining.config.patch_normalisation}  # fmt: skip


def related_targets(config: DemoConfig) -> tuple[str, ...]:
    r"""
    The targets of `config` whose role for `config.source` ([`domain_role`]) is `"related"`; when none is, the first
    target, with a warning (a run does not fail for want of a related target).

    Args:
        config ([`DemoConfig`]): `source` and `targets`.

    Returns:
        `tuple[str, ...]`: never empty.
    """
    related = tuple(name for name in config.targets if domain_role(name, config.source) == "related")
    if related:
        return related
    logger.warning("no target of %s is related to %s; the ablations run on the first target, %s.",
                   list(config.targets), config.source, config.targets[0])  # fmt: skip
    return config.targets[:1]


class _TargetRun:
    """One target's θ_base and θ_T, and the figures measured on it (cached by vector name, λ2, split and patch
    normalisation: λ2 = 0 is θ_T for every variant, and the efficiency variant explains the reference vector's
    models)."""

    def __init__(self, clip, tokenizer, target, config: DemoConfig, work: Path):
        pipeline = _pipeline_helpers()
        self.target, self.config = target, config
        self.base = start_model(clip, tokenizer, target)
        run = pipeline._training_config(config, work, f"{target.name}_prediction_only", 1.0, len(target.train))
        self.prediction_only = train(copy.deepcopy(self.base), pipeline._training_set(target.train), run).model
        self.cache = {}

    def model(self, vector: TaskVector, lam: float, patch_normalisation: str = "cls"):
        model = transfer(self.base, self.prediction_only, vector, lam=lam, lam_target=self.config.lam_target)
        model.config.patch_normalisation = patch_normalisation  # a copy of θ_T's config: θ_T itself is unchanged
        return model

    def measure(self, vector_name: str, vector: TaskVector, lam: float, split: str, efficiency: bool,
                patch_normalisation: str = "cls") -> dict:  # fmt: skip
        """The figures of θ̃(λ2) on a split (with the efficiency correction when asked, the models' attributions
        normalised by `patch_normalisation`): `metrics`, `logits` and the `patch_normalisation` the model used."""
        key = ("θ_T" if lam == 0.0 else vector_name, lam, split, patch_normalisation)
        data = getattr(self.target, split)
        if key not in self.cache:
            model = self.model(vector, lam, patch_normalisation)
            if lam == 0.0 and patch_normalisation != "cls":
                # θ_T's logits do not depend on the normalisation: its Kernel SHAP reference (same seed) is the cls
                # entry's, only its own attributions are measured again
                cls_entry = self.measure(vector_name, vector, lam, split, False)
                logits, attributions, seconds = forward_attributions(model, data)
                metrics = explanation_metrics(model, data, attributions, cls_entry["reference"],
                                              top_k=self.config.top_k)  # fmt: skip
                metrics = {**cls_entry["metrics"], "explain_seconds_per_image": seconds, **metrics}
                arrays = {"attributions": attributions, "reference": cls_entry["reference"], "logits": logits}
            else:
                metrics, arrays = _pipeline_helpers()._evaluate(model, data, self.config, f"{split}_shap", split)
            self.cache[key] = {"metrics": metrics, **arrays, "patch_normalisation": model.config.patch_normalisation}
        entry = self.cache[key]
        if not efficiency:
            return entry
        corrected_key = (*key, "efficiency")
        if corrected_key in self.cache:
            return self.cache[corrected_key]
        model = self.model(vector, lam, patch_normalisation)
        gap = score_gap(model, data.pixel_values, data.labels, value=self.config.shap_value,
                        batch_size=self.config.shap_batch_size)  # fmt: skip
        corrected = efficiency_correction(entry["attributions"], gap)
        metrics = explanation_metrics(model, data, corrected, entry["reference"], top_k=self.config.top_k)
        metrics = {**entry["metrics"], **metrics}  # accuracy and timings are the model's, unchanged
        self.cache[corrected_key] = {"metrics": metrics, "logits": entry["logits"],
                                     "patch_normalisation": entry["patch_normalisation"]}  # fmt: skip
        return self.cache[corrected_key]

    def sweep(self, vector_name: str, vector: TaskVector, efficiency: bool,
              patch_normalisation: str = "cls") -> tuple[list[dict], float]:  # fmt: skip
        """The validation sweep over `config.lambdas` and the λ2 the demo's rule chooses."""
        config, labels = self.config, self.target.validation.labels
        sweep, correct = [], {}
        for lam in config.lambdas:
            measured = self.measure(vector_name, vector, lam, "validation", efficiency, patch_normalisation)
            sweep.append({"lam": lam, **measured["metrics"]})
            correct[lam] = per_image_correct(measured["logits"], labels)
        return _pipeline_helpers().choose_on_validation(sweep, correct, config)


def _relative(value: float, reference: float) -> float:
    return value / reference - 1.0 if reference else math.nan


def _row(name: str, run: _TargetRun, vector_name: str, vector: TaskVector, efficiency: bool,
         patch_normalisation: str = "cls") -> dict:  # fmt: skip
    sweep, chosen = run.sweep(vector_name, vector, efficiency, patch_normalisation)
    baseline = run.measure(REFERENCE, vector, 0.0, "test", False)["metrics"]
    zero = run.measure(vector_name, vector, 0.0, "test", efficiency, patch_normalisation)
    measured = run.measure(vector_name, vector, chosen, "test", efficiency, patch_normalisation)
    return _record(name, run, chosen, sweep, baseline, zero, measured)


def _record(name: str, run: _TargetRun, chosen_lam: float, sweep: list[dict], baseline: dict, zero: dict,
            measured: dict, **extra) -> dict:  # fmt: skip
    """One row: the test figures at λ2 = 0 (`zero`) and at the chosen λ2 (`measured`, entries of
    [`_TargetRun.measure`]) against the plain θ_T's (`baseline`), and the validation sweep."""
    at_zero, at_chosen = zero["metrics"], measured["metrics"]
    return {
        "variant": name,
        "target": run.target.name,
        "role": run.target.role,
        "chosen_lam": chosen_lam,
        **extra,
        "relative_e_rmse": _relative(at_chosen["e_rmse"], baseline["e_rmse"]),
        "relative_e_rmse_l2": _relative(at_chosen["e_rmse_l2"], baseline["e_rmse_l2"]),
        "accuracy_change_points": 100 * (at_chosen["accuracy"] - baseline["accuracy"]),
        "relative_at_zero": {key: _relative(at_zero[key], baseline[key]) for key in ("e_rmse", "e_rmse_l2")},
        **{measure: [at_zero.get(measure), at_chosen.get(measure)]
           for measure in ("pointing", "deletion_auc", "insertion_auc")},
        "verdict": transfer_verdict(at_chosen, baseline),
        "patch_normalisation": [zero["patch_normalisation"], measured["patch_normalisation"]],
        "test_at_zero": at_zero,
        "test_at_chosen": at_chosen,
        "validation": sweep,
    }  # fmt: skip


def _per_half_row(name: str, run: _TargetRun, vector: TaskVector) -> dict:
    """The λ rule over pairs (λ_first, λ_second) of the grid, each half of τ_S scaled by its own λ2; the pair is
    chosen on validation (entries are indexed, index 0 being the pair (0, 0), θ_T itself); test at (0, 0) and the
    chosen pair."""
    config, labels = run.config, run.target.validation.labels
    first, second = vector_halves(vector)
    pairs = [(a, b) for a in config.lambdas for b in config.lambdas]
    pairs.remove((0.0, 0.0))
    pairs.insert(0, (0.0, 0.0))

    def measure(index: int, split: str) -> dict:
        if index == 0:
            return run.measure(REFERENCE, vector, 0.0, split, False)
        a, b = pairs[index]
        return run.measure(f"{name}:{a:g}:{b:g}", first * a + second * b, 1.0, split, False)

    sweep, correct = [], {}
    for index in range(len(pairs)):
        measured = measure(index, "validation")
        sweep.append({"lam": float(index), "lams": list(pairs[index]), **measured["metrics"]})
        correct[float(index)] = per_image_correct(measured["logits"], labels)
    sweep, chosen = _pipeline_helpers().choose_on_validation(sweep, correct, config)
    chosen = int(chosen)
    zero = measure(0, "test")
    a, b = pairs[chosen]
    return _record(name, run, 0.0 if chosen == 0 else 1.0, sweep, zero["metrics"], zero, measure(chosen, "test"),
                   chosen_lams=[a, b], chosen_label=f"({a:g}, {b:g})")  # fmt: skip


def run_ablations(config: DemoConfig, variants=DEFAULT_VARIANTS, *, targets=None) -> dict:
    r"""
    Run the ablation rows: one base stage, the reference source twins, each variant's source (or the reference's
    twins for the post-hoc variants), and per target θ_T once, then per variant the λ2 sweep on validation, the λ rule
    and the test figures at λ2 = 0 and at the chosen λ2.

    Args:
        config ([`DemoConfig`]): the demo settings (sizes, α, grid, seeds); its `output_dir` receives the work folder
            (models, Kernel SHAP label shards).
        variants (`tuple[str, ...]`, *optional*, defaults to `DEFAULT_VARIANTS`): names of `VARIANTS`.
        targets (`tuple[str, ...]`, *optional*): the target domains; by default every target of `config` whose role
            ([`domain_role`]) is `"related"` (the first target when none is).

    Returns:
        `dict` (JSON-ready): `config`, `variants` (name → description), `targets` (name → role and the baseline test
        figures), `sources` (per trained source: α, images, norm of τ_S, cosine with the reference τ_S), `rows` (one
        per variant and target, the reference first: `chosen_lam`, `relative_e_rmse`, `relative_e_rmse_l2`,
        `accuracy_change_points` (at the chosen λ2), `relative_at_zero` (the two relative E-RMSEs at λ2 = 0: zero but
        for the variants that change θ_T's attributions, `efficiency` and `patch_norm`), `pointing`, `deletion_auc`,
        `insertion_auc` (each `[at λ2 = 0, at the chosen λ2]`), `verdict`
        ([`~hf_explvec.demo.report.transfer_verdict`] against the prediction-only θ_T), `patch_normalisation` (that of
        the models measured, `[at λ2 = 0, at the chosen λ2]`), `test_at_zero`, `test_at_chosen`, `validation`),
        `timings_seconds`.

    Raises:
        `TypeError`: `config` is not a [`DemoConfig`], `variants` or `targets` not a tuple or list.
        `ValueError`: an unknown variant (the message lists the known ones), an empty or repeated target list.
    """
    if not isinstance(config, DemoConfig):
        raise TypeError(f"config must be a DemoConfig, got {type(config).__name__}.")
    chosen_variants = _check_variants(variants)
    if targets is None:
        targets = related_targets(config)
    elif isinstance(targets, str) or not isinstance(targets, (tuple, list)):
        raise TypeError(f"targets must be a tuple or list of domain names, got {type(targets).__name__}.")
    config = dataclasses.replace(config, targets=tuple(targets))  # checks: non-empty, no repeats
    threads = torch.get_num_threads()
    torch.set_num_threads(config.num_threads)
    restore = _pipeline_helpers()._quiet_library_progress_bars() if not config.show_progress else None
    try:
        return _run(config, chosen_variants)
    finally:
        torch.set_num_threads(threads)
        if restore is not None:
            restore()


def _run(config: DemoConfig, variants: tuple[AblationVariant, ...]) -> dict:
    start, timings = time.perf_counter(), {}

    def lap(name: str, since: float) -> float:
        now = time.perf_counter()
        timings[name] = round(timings.get(name, 0.0) + now - since, 3)
        return now

    work = Path(config.output_dir) / "work"
    work.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)
    t = time.perf_counter()
    clip, tokenizer = build_clip(config)
    clip.to(config.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    image_size, patch_size = clip.config.vision_config.image_size, clip.config.vision_config.patch_size
    domains = load_domains(config, image_size, patch_size)
    if domains.base is not None:  # as the demo: the templates of every registered domain and of those in use
        templates = sorted({template for d in [*DOMAINS.values(), *domains.all()] for template in d.templates})
        pretrain_clip(clip, tokenizer, domains.base.train, domains.base.class_names, templates, config)
    t = lap("base stage (data + pretraining)", t)

    reference = _source_twins(clip, tokenizer, domains.source, config, work / REFERENCE)
    t = lap(f"source: {REFERENCE}", t)
    vectors, sources = {REFERENCE: reference["vector"]}, {REFERENCE: reference}
    for variant in variants:
        if variant.retrains:
            settings = {"alpha": config.alpha if variant.alpha is None else variant.alpha,
                        "train_size": config.train_size * variant.train_factor}  # fmt: skip
            variant_config = dataclasses.replace(config, **settings)
            source, labels = domains.source, reference["labels"]
            if variant.fastshap:
                train_split = domains.source.train
                twins = train_fastshap_twins(start_model(clip, tokenizer, domains.source), reference["teacher"],
                                             train_split.pixel_values, train_split.labels, variant_config,
                                             variant_config.alpha)  # fmt: skip
                vectors[variant.name] = TaskVector.from_models(*twins).to(device="cpu")
                sources[variant.name] = {"vector": vectors[variant.name], "alpha": variant_config.alpha,
                                         "train_size": len(train_split), "patch_normalisation": "cls"}  # fmt: skip
                t = lap(f"source: {variant.name}", t)
                continue
            if variant.merge_with is not None:
                sizes = {"train": config.train_size}
                source = load_domain(variant.merge_with, "source", sizes, config, image_size, patch_size)
                labels = None
            elif variant.train_factor != 1:
                sizes = {"train": variant_config.train_size, "validation": config.validation_size,
                         "test": config.test_size}  # fmt: skip
                source = load_domain(config.source, "source", sizes, variant_config, image_size, patch_size)
                labels = None
            # labels: the reference's (α and the normalisation do not change θ_S's logits) unless the data changes
            sources[variant.name] = _source_twins(clip, tokenizer, source, variant_config, work / variant.name, labels,
                                                  variant.patch_normalisation)  # fmt: skip
            vectors[variant.name] = sources[variant.name]["vector"]
            if variant.merge_with is not None:
                vectors[variant.name] = TaskVector.merge([reference["vector"], vectors[variant.name]], [0.5, 0.5])
        elif variant.part is not None:
            vectors[variant.name] = partial_vector(reference["vector"], variant.part)
        else:
            vectors[variant.name] = reference["vector"]
        t = lap(f"source: {variant.name}", t)

    rows, targets = [], {}
    for target in domains.targets:
        run = _TargetRun(clip, tokenizer, target, config, work / "targets")
        t = lap(f"{target.name}: prediction-only training", t)
        rows.append(_row(REFERENCE, run, REFERENCE, vectors[REFERENCE], False))
        t = lap(f"{target.name}: {REFERENCE} (and λ2 = 0, shared)", t)
        for variant in variants:
            # the efficiency variant explains the reference vector's models: their Kernel SHAP references are cached
            vector_name = REFERENCE if variant.efficiency else variant.name
            if variant.per_half_lam:
                rows.append(_per_half_row(variant.name, run, vectors[variant.name]))
            else:
                rows.append(_row(variant.name, run, vector_name, vectors[variant.name], variant.efficiency,
                                 variant.patch_normalisation))  # fmt: skip
            t = lap(f"{target.name}: {variant.name}", t)
        targets[target.name] = {"role": target.role,
                                "baseline_test": run.measure(REFERENCE, vectors[REFERENCE], 0.0, "test", False)[
                                    "metrics"]}  # fmt: skip

    reference_vector = vectors[REFERENCE]
    return {
        "config": config.to_dict(),
        "seeds": {
            name: derived_seed(config, name) for name in ("data", "training", "labels", "validation_shap", "test_shap")
        },  # fmt: skip
        "reference": {
            "name": REFERENCE,
            "description": f"the demo's transfer: α = {config.alpha}, "
            f"{config.train_size} source images, the whole τ_S, no correction",
        },  # fmt: skip
        "variants": {variant.name: variant.description for variant in variants},
        "baseline": "the prediction-only θ_T (λ2 = 0, no correction) on the test split",
        "targets": targets,
        "sources": {
            name: {
                "alpha": source["alpha"],
                "train_size": source["train_size"],
                "patch_normalisation": source["patch_normalisation"],
                "vector_norm": source["vector"].norm(),
                "cosine_with_reference": _cosine(source["vector"], reference_vector),
            }
            for name, source in sources.items()
        },  # fmt: skip
        "partial_vectors": {
            variant.name: {
                "part": variant.part,
                "norm": vectors[variant.name].norm(),
                "keys": vector_part_keys(reference_vector.keys(), variant.part),
            }
            for variant in variants
            if variant.part is not None
        },  # fmt: skip
        "rows": rows,
        "timings_seconds": {**timings, "total": round(time.perf_counter() - start, 3)},
    }


def _cosine(a: TaskVector, b: TaskVector) -> float | None:
    return a.cosine_similarity(b) if a.norm() > 0 and b.norm() > 0 else None


# ------------------------------------------------------------------------------------------------------------ report
def _pct(value) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:+.1f}%"


def _pair(pair) -> str:
    zero, chosen = pair
    if zero is None or chosen is None:
        return "–"
    return f"{zero:.3f} → {chosen:.3f}"


def _verdict_cell(verdict: dict) -> str:
    if verdict["works"]:
        return "yes"
    reasons = ([] if verdict["e_rmse_falls"] else ["E-RMSE not lower"]) + [f"{name} worse" for name in verdict["worse"]]
    return "no: " + ", ".join(reasons)


_HEADER = ["Variant", "Target", "λ2 (val)", "ΔAcc (pts)", "ΔE-RMSE", "ΔE-RMSE (L2)", "Pointing 0 → λ2",
           "Deletion AUC ↓ 0 → λ2", "Insertion AUC ↑ 0 → λ2", "Works?"]  # fmt: skip


def _mean(values) -> float:
    values = [value for value in values if value is not None and not math.isnan(value)]
    return sum(values) / len(values) if values else math.nan


_AT_ZERO = {
    "efficiency": ("The correction alone", "the efficiency correction of θ_T's attributions alone"),
    "patch_norm": ("The normalisation alone", "θ_T's attributions with the patch normalisation alone"),
}
"""How a variant that changes θ_T's attributions names its λ2 = 0 figures (in a sentence, and when no vector is
applied)."""


def _sentence(name: str, rows: list[dict], reference_rows: list[dict], efficiency: bool = False) -> str:
    """Helped or not, by the numbers: against the reference on the same targets (`efficiency`: the variant changes
    θ_T's own attributions, so its λ2 = 0 figures are reported too)."""
    works, count = sum(row["verdict"]["works"] for row in rows), len(rows)
    mean_l2, mean_ref = _mean([r["relative_e_rmse_l2"] for r in rows]), _mean([r["relative_e_rmse_l2"] for r in
                                                                               reference_rows])  # fmt: skip
    applied = sum(row["chosen_lam"] != 0.0 for row in rows)
    reference_works = sum(r["verdict"]["works"] for r in reference_rows)
    verdict = "helped" if works >= reference_works and mean_l2 < mean_ref else "did not help"
    text = (f"**{name}** {verdict}: works by the rule on {works} of {count} target(s) (reference: {reference_works}), "
            f"mean ΔE-RMSE (L2) {_pct(mean_l2)} against the reference's {_pct(mean_ref)}; λ2 > 0 chosen on {applied} "
            f"of {count}.")  # fmt: skip
    alone, figures = _AT_ZERO.get(name, ("The change alone", f"θ_T's attributions with the {name} change alone"))
    if efficiency:
        zero_raw = _mean([r["relative_at_zero"]["e_rmse"] for r in rows])
        zero_l2 = _mean([r["relative_at_zero"]["e_rmse_l2"] for r in rows])
        text += (f" {alone} (θ_T's attributions at λ2 = 0): mean ΔE-RMSE {_pct(zero_raw)}, ΔE-RMSE (L2) "
                 f"{_pct(zero_l2)}.")  # fmt: skip
    if applied == 0:
        text += (
            f" The λ rule applied no vector: the figures are {figures}."
            if efficiency
            else " The λ rule applied no vector: the figures are the prediction-only θ_T's."
        )
    return text


def ablation_report(results: dict) -> str:
    r"""
    The ablations as markdown: what was run, one table (one row per variant and target, the reference first) and a
    sentence per variant saying whether it helped, by the numbers.

    A variant "helped" when it works by the rule (E-RMSE lower than the prediction-only θ_T's and no faithfulness
    measure worse, [`~hf_explvec.demo.report.transfer_verdict`]) on at least as many targets as the reference and
    its mean relative E-RMSE (L2) at the chosen λ2 is lower than the reference's; otherwise it "did not help".

    Args:
        results (`dict`): what [`run_ablations`] returns (or its `results.json`).

    Returns:
        `str`: markdown.
    """
    config = results["config"]
    lines = [
        "# Ablations of the explainability transfer",
        "",
        f"Source `{config['source']}`, base `{config['base']}`, targets "
        + ", ".join(f"`{name}` ({info['role']})" for name, info in results["targets"].items())
        + f"; {config['train_size']} / {config['validation_size']} / {config['test_size']} images per split, "
        f"Kernel SHAP N = {config['eval_num_samples']}, λ2 grid {list(config['lambdas'])}, seed {config['seed']}.",
        "",
        f"Every Δ is against {results['baseline']}; λ2 is chosen on validation by the demo's rule "
        f"(metric `{config['lambda_metric']}`, accuracy drop ≤ {100 * config['max_accuracy_drop']:.0f} points"
        + (f" at confidence {config['lambda_confidence']}" if config.get("lambda_confidence") is not None else "")
        + "). Pointing, deletion and insertion are shown at λ2 = 0 and at the chosen λ2 (a faithfulness figure "
        "depends only on the ranking of the patches, which neither the efficiency correction nor, at λ2 = 0, the patch "
        "normalisation changes).",
        "",
        f"- **{REFERENCE}**: {results['reference']['description']}.",
        *[f"- **{name}**: {description}." for name, description in results["variants"].items()],
        "",
        "| " + " | ".join(_HEADER) + " |",
        "|" + "---|" * len(_HEADER),
    ]
    for row in results["rows"]:
        verdict = _verdict_cell(row["verdict"])
        if row["chosen_lam"] == 0.0 and not (row["variant"] in VARIANTS and
                                             VARIANTS[row["variant"]].changes_target_attributions):  # fmt: skip
            verdict = "no: λ2 = 0 chosen (no vector applied)"
        chosen = row.get("chosen_label", f"{row['chosen_lam']:g}")
        cells = [row["variant"], row["target"], chosen, f"{row['accuracy_change_points']:+.1f}",
                 _pct(row["relative_e_rmse"]), _pct(row["relative_e_rmse_l2"]), _pair(row["pointing"]),
                 _pair(row["deletion_auc"]), _pair(row["insertion_auc"]), verdict]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    reference_rows = [row for row in results["rows"] if row["variant"] == REFERENCE]
    lines += ["", "## What helped and what did not", ""]
    works = sum(row["verdict"]["works"] for row in reference_rows)
    lines.append(f"The reference works by the rule on {works} of {len(reference_rows)} target(s), mean ΔE-RMSE (L2) "
                 f"{_pct(_mean([r['relative_e_rmse_l2'] for r in reference_rows]))}.")  # fmt: skip
    lines.append("")
    for name in results["variants"]:
        rows = [row for row in results["rows"] if row["variant"] == name]
        changes_target = name in VARIANTS and VARIANTS[name].changes_target_attributions
        lines += [f"- {_sentence(name, rows, reference_rows, changes_target)}"]
    if "efficiency" in results["variants"]:
        lines += ["", "`efficiency` does not use τ_S: it corrects any model's attributions after the fact, and its "
                  "Kernel SHAP reference sums to f(x) − f(baseline) by construction, so part of its E-RMSE gain is the "
                  "removal of a per-image offset the reference pins exactly; rankings (IoU@K, Spearman, pointing, "
                  "deletion, insertion) cannot change."]  # fmt: skip
    if "patch_norm" in results["variants"]:
        lines += ["", "`patch_norm` changes only what the patch attributions are divided by (the mean norm of the "
                  "image's patch tokens instead of its [CLS] norm; no parameter, the logits are unchanged): θ_T's own "
                  "attributions move by a positive factor per image, so its λ2 = 0 rankings (pointing, deletion, "
                  "insertion) are the baseline's and only its scale, hence its raw E-RMSE, changes (E-RMSE (L2) "
                  "divides each image's attributions by their norm, so at λ2 = 0 it is the baseline's); beyond λ2 = 0 "
                  "it measures τ_S learnt by twins trained with that normalisation."]  # fmt: skip
    if "data_x2" in results["variants"]:
        lines += ["", "`data_x2` changes only the data: the model's capacity is the base's (the same small CLIP), "
                  "so more images can help only as far as that capacity allows."]  # fmt: skip
    lines += ["", "Rule: a variant *helped* when it works on at least as many targets as the reference and its mean "
              "ΔE-RMSE (L2) is lower than the reference's.", ""]  # fmt: skip
    return "\n".join(lines)
