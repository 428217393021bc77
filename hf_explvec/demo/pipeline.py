"""The offline end-to-end demo (`hf-explvec demo`): explainability vectors on small CLIP models, from a base stage to a
report, on CPU in minutes.

The pipeline (arXiv 2507.04380 in miniature; every step uses the library's public functions):

1. **Base stage.** No pretrained CLIP can be downloaded here, so a small CLIP (both towers, built in code) is trained
   on the `base` domain with a zero-shot-style loss: cross-entropy of `logit_scale * <image, text(prompt of class)>`
   over the class prompts, both towers trained. This gives what task arithmetic needs, a shared pretrained start, and
   what CLIP gives the paper, a text tower whose class embeddings mean something for every domain's classes and
   prompt templates. With `--clip NAME` a pretrained CLIP is the base and this stage is skipped.
2. **Source.** From the base, the prediction-only source model θ_S (α = 1); Kernel SHAP labels of its training split
   (of θ_S, label class, [`~hf_explvec.data.label_dataset`] with [`model_kernel_shap`]); the twins (α = 1 and α)
   from the same start and data order ([`train_twins`]); τ_S = θ*_S − θ_S. The TVE baseline: a head on the frozen
   θ_base fitted to the same labels ([`~hf_explvec.evaluation.tve.TransferableExplainer`]).
3. **Hub.** τ_S is pushed to a [`LocalHub`] started here (loopback, temporary directory) and pulled back by name;
   the pulled vector is the one applied.
4. **Targets.** For each: the prediction-only θ_T from the base, the direct self-explaining θ*_T (needs Kernel SHAP
   labels of the target's training split), and the transfer θ̃ = θ_base + λ1 (θ_T − θ_base) + λ2 τ_S
   ([`transfer`]) over a λ2 grid. Before the sweep, the diagnostic probe
   ([`~hf_explvec.evaluation.probe_transfer`]) predicts the gain from a handful of validation images. λ2 is chosen
   on the validation split only ([`select_lambda`], with a confidence bound on the accuracy drop); the test split is
   measured afterwards, at λ2 = 0, the chosen λ2 and the λ2 the heatmaps show.
5. **Evaluation.** Every model is compared with Kernel SHAP values of *that* model
   ([`~hf_explvec.evaluation.protocol`]; the report's Definitions section says what each figure is), plus
   faithfulness metrics; the TVE baseline explains θ_T with no target training; and the equivalent Kernel SHAP budget
   of the one-pass explanations of the prediction-only, transferred (chosen λ2) and target-trained models
   ([`~hf_explvec.evaluation.budget`], on the first `budget_num_images` test images); then
   [`~hf_explvec.demo.report`] writes the report folder (`results.json` first).
6. **Linear-head target** (opt-in, `linear_head_target`): the related target as a transformers
   `CLIPForImageClassification` (linear probe, then fine-tuning) with τ_S applied over the same λ2 grid, after every
   other stage, so the other figures do not depend on it ([`~hf_explvec.demo.linear_head`]).

The settings are in [`~hf_explvec.demo.config`], the data in [`~hf_explvec.demo.data`], the base stage in
[`~hf_explvec.demo.pretrain`]; this module runs the stages.

Train, validation and test never share source pixels ([`~hf_explvec.demo.domains`]); all seeds derive from one seed.
"""

from __future__ import annotations

import copy
import functools
import logging
import math
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..attribution.kernel_shap import min_num_samples
from ..attribution.vit import model_kernel_shap
from ..evaluation import (
    accuracy,
    add_accuracy_drop_bounds,
    evaluate_model,
    explanation_metrics,
    forward_attributions,
    kernel_shap_values,
    per_image_correct,
    probe_transfer,
    select_lambda,
)
from ..evaluation.budget import default_budget_ladder, equivalent_kernel_shap_budget
from ..evaluation.tve import TransferableExplainer
from ..task_vector import TaskVector, transfer
from ..training import TrainingConfig, train, train_twins
from .config import SEED_OFFSETS, DemoConfig, derived_seed, safe_file_name
from .data import DemoSplit, Domain, first_images, load_domains
from .domains import DOMAINS
from .linear_head import linear_head_stage
from .pretrain import build_clip, check_clip_pair, pretrain_clip, start_model
from .report import illustrated_lambda, write_report

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------------------- training
def _training_config(config: DemoConfig, work: Path, name: str, alpha: float, num_examples: int) -> TrainingConfig:
    """One fine-tuning run: AdamW, cosine schedule with a warmup of 10% of the steps (rounded down: a run of under
    ten steps has none, so that a one-step run does take a step)."""
    steps = config.num_train_epochs * math.ceil(num_examples / config.batch_size)
    return TrainingConfig(
        work / safe_file_name(name), alpha=alpha, learning_rate=config.learning_rate,
        num_train_epochs=config.num_train_epochs, per_device_batch_size=config.batch_size,
        warmup_steps=int(0.1 * steps), seed=derived_seed(config, "training"), log_every=10_000,
        disable_tqdm=not config.show_progress,
    )  # fmt: skip


def _training_set(split: DemoSplit, shap_values: torch.Tensor | None = None):
    import datasets

    columns = {"pixel_values": split.pixel_values.numpy(), "labels": split.labels.tolist()}
    if shap_values is not None:
        columns["shap_values"] = shap_values.numpy()
    return datasets.Dataset.from_dict(columns)


def shap_labels(model, split: DemoSplit, config: DemoConfig, work: Path, name: str) -> torch.Tensor:
    r"""Kernel SHAP labels of `model` (label class) for a training split, through [`~hf_explvec.data.label_dataset`]
    with [`model_kernel_shap`] as the explainer (provenance and fingerprint recorded, shards under `work/`)."""
    from ..data import label_dataset

    labelled = label_dataset(
        split.dataset, model, split.processor, num_samples=config.label_num_samples,
        seed=derived_seed(config, "labels"), batch_size=config.shap_batch_size,
        explainer=functools.partial(model_kernel_shap, model), value=config.shap_value,
        output_dir=work / "shap_labels" / safe_file_name(name), resume=False,
        show_progress=config.show_progress, model_id=f"hf_explvec.demo/{name}",
        image_column="image", label_column="label",
    )  # fmt: skip
    if labelled["shap_target"] != split.labels.tolist():
        raise RuntimeError(f"label_dataset explained other classes than the labels for {name}.")
    return torch.tensor(np.asarray(labelled["shap_values"], dtype=np.float32))


def _cosine(a: TaskVector, b: TaskVector) -> float | None:
    """Cosine similarity of two task vectors; `None` when one of them is zero (a run that did not move)."""
    return a.cosine_similarity(b) if a.norm() > 0 and b.norm() > 0 else None


def _same_weights(a, b) -> bool:
    b_state = b.state_dict()
    return all(torch.equal(value, b_state[key]) for key, value in a.state_dict().items())


# --------------------------------------------------------------------------------------------------------- pipeline
class _Clock:
    """Wall time per stage (seconds, summed when a stage name repeats)."""

    def __init__(self):
        self.start, self.stages = time.perf_counter(), {}

    def lap(self, name: str, since: float) -> float:
        now = time.perf_counter()
        self.stages[name] = round(self.stages.get(name, 0.0) + now - since, 3)
        return now


def _evaluate(model, split, config: DemoConfig, seed_name: str, desc: str, perturbation: bool = True):
    return evaluate_model(model, split, num_samples=config.eval_num_samples, seed=derived_seed(config, seed_name),
                          batch_size=config.shap_batch_size, top_k=config.top_k, perturbation=perturbation,
                          value=config.shap_value, desc=desc if config.show_progress else None)  # fmt: skip


def _source_stage(clip, tokenizer, source: Domain, config: DemoConfig, work: Path, clock: _Clock) -> dict:
    """θ_S, its Kernel SHAP labels, the twins from θ_base and τ_S; the twins' figures on the source test split."""
    t = time.perf_counter()
    base = start_model(clip, tokenizer, source)
    run = _training_config(config, work, "source_prediction_only", 1.0, len(source.train))
    prediction_only = train(copy.deepcopy(base), _training_set(source.train), run).model
    t = clock.lap("source: prediction-only training", t)
    labels = shap_labels(prediction_only, source.train, config, work, f"{source.name}-train")
    t = clock.lap("source: Kernel SHAP labels", t)
    tve = TransferableExplainer.fit(copy.deepcopy(base), source.train.pixel_values, source.train.labels, labels,
                                    ridge=config.tve_ridge, batch_size=config.shap_batch_size)  # fmt: skip
    t = clock.lap("source: TVE baseline fit", t)
    run = _training_config(config, work, "source_twins", config.alpha, len(source.train))
    twins = train_twins(base, _training_set(source.train, labels), run, source_dataset=source.name)
    t = clock.lap("source: twins training", t)
    identical = _same_weights(twins.prediction_only, prediction_only)
    if not identical:
        logger.warning("the prediction-only twin differs from the model the labels were taken from.")
    metrics, arrays = {}, {}
    for name, model in (("prediction_only", twins.prediction_only), ("self_explaining", twins.self_explaining)):
        metrics[name], arrays[name] = _evaluate(model, source.test, config, "test_shap", f"source {name}",
                                                perturbation=False)  # fmt: skip
    metrics["tve_baseline"] = _tve_metrics(
        tve, twins.prediction_only, source.test, arrays["prediction_only"], metrics["prediction_only"]["accuracy"],
        config, perturbation=False,
    )  # fmt: skip
    clock.lap("source: evaluation", t)
    vector_pred = TaskVector.from_models(base, twins.prediction_only).to(device="cpu")
    return {"twins": twins, "vector_pred": vector_pred, "metrics": metrics, "tve": tve,
            "labels_rms": float(labels.pow(2).mean().sqrt()), "identical": identical}  # fmt: skip


def _hub_round_trip(vector: TaskVector, source: Domain, clock: _Clock) -> tuple[TaskVector, dict]:
    """Push τ_S to a LocalHub started here (loopback, temporary directory) and pull it back by name."""
    from ..hub.loopback import LocalHub, hub_client_env

    t = time.perf_counter()
    repo_id = f"demo/{source.name.replace('_', '-').replace(':', '-').replace('/', '-')}-explainability-vector"
    vector = vector.to(device="cpu")
    with LocalHub() as hub, hub_client_env(hub.endpoint):
        commit = vector.push_to_hub(repo_id, commit_message=f"explainability vector of {source.name} (hf-explvec demo)")
        pulled = TaskVector.from_pretrained(repo_id)
        endpoint = hub.endpoint
    if pulled.commit_hash != commit.oid:
        raise RuntimeError(f"pulled {repo_id} at commit {pulled.commit_hash}, but the push made {commit.oid}.")
    pushed = vector.state_dict()
    difference = max(float((value - pushed[key]).abs().max()) for key, value in pulled.state_dict().items())
    clock.lap("hub push and pull", t)
    return pulled, {"repo_id": repo_id, "commit_sha": commit.oid, "pulled_commit": pulled.commit_hash,
                    "endpoint": endpoint, "max_abs_difference": difference, "num_parameters": pulled.num_parameters,
                    "norm": pulled.norm()}  # fmt: skip


def _target_stage(clip, tokenizer, target: Domain, source: dict, vector: TaskVector, config: DemoConfig, work: Path,
                  clock: _Clock) -> tuple[dict, dict]:  # fmt: skip
    """θ_T, θ*_T, the λ2 sweep on validation and test, the λ2 rule, Kernel SHAP as an explainer, heatmap arrays."""
    name, t = target.name, time.perf_counter()
    base = start_model(clip, tokenizer, target)
    run = _training_config(config, work, f"{name}_prediction_only", 1.0, len(target.train))
    prediction_only = train(copy.deepcopy(base), _training_set(target.train), run).model
    tau_target = TaskVector.from_models(base, prediction_only).to(device="cpu")
    t = clock.lap(f"{name}: prediction-only training", t)
    labels = shap_labels(prediction_only, target.train, config, work, f"{name}-train")
    run = _training_config(config, work, f"{name}_self_explaining", config.alpha, len(target.train))
    direct = train(copy.deepcopy(base), _training_set(target.train, labels), run).model
    t = clock.lap(f"{name}: self-explaining model trained on the target (labels + training)", t)

    probe = probe_transfer(
        base, prediction_only, vector, target.validation, lams=(0.0, config.probe_lam),
        num_images=min(config.probe_num_images, len(target.validation)),
        num_samples=config.probe_num_samples or 4 * base.num_patches,
        seed=derived_seed(config, "probe_shap"), lam_target=config.lam_target, batch_size=config.shap_batch_size,
        value=config.shap_value,
    )  # fmt: skip
    t = clock.lap(f"{name}: diagnostic probe", t)

    # λ2 is chosen on validation; test is then measured only where the report needs it (λ2 = 0, the chosen λ2 and
    # the λ2 the heatmaps show), so no test figure exists before the choice is made.
    sweep, arrays = {"validation": [], "test": []}, {}
    for lam in tqdm(config.lambdas, desc=f"{name}: λ2 sweep", disable=not config.show_progress):
        model = transfer(base, prediction_only, vector, lam=lam, lam_target=config.lam_target)
        metrics, arrays[lam, "validation"] = _evaluate(model, target.validation, config, "validation_shap",
                                                       "validation")  # fmt: skip
        sweep["validation"].append({"lam": lam, **metrics})
    correct = {lam: per_image_correct(arrays[lam, "validation"]["logits"], target.validation.labels)
               for lam in config.lambdas}  # fmt: skip
    sweep["validation"], chosen = choose_on_validation(sweep["validation"], correct, config)
    shown, _ = illustrated_lambda({"chosen_lam": chosen, "sweep": sweep}, config.max_accuracy_drop)
    for lam in sorted({0.0, chosen, shown}):
        model = transfer(base, prediction_only, vector, lam=lam, lam_target=config.lam_target)
        metrics, arrays[lam, "test"] = _evaluate(model, target.test, config, "test_shap", "test")
        sweep["test"].append({"lam": lam, **metrics})
    t = clock.lap(f"{name}: λ2 sweep (validation + test)", t)
    direct_metrics = {}
    for split in ("validation", "test"):
        direct_metrics[split], arrays["direct", split] = _evaluate(direct, getattr(target, split), config,
                                                                   f"{split}_shap", split)  # fmt: skip
    t = clock.lap(f"{name}: evaluation of the self-explaining model", t)
    tve = {}
    for split in ("validation", "test"):
        accuracy_lam0 = next(entry for entry in sweep[split] if entry["lam"] == 0.0)["accuracy"]
        tve[split] = _tve_metrics(source["tve"], prediction_only, getattr(target, split), arrays[0.0, split],
                                  accuracy_lam0, config)  # fmt: skip
    t = clock.lap(f"{name}: TVE baseline", t)

    reference, comparison = arrays[0.0, "test"], []
    for n in config.comparison_num_samples:
        desc = f"Kernel SHAP N={n}" if config.show_progress else None
        values, seconds = kernel_shap_values(prediction_only, target.test, n, derived_seed(config, "comparison_shap"),
                                             config.shap_batch_size, desc, value=config.shap_value)  # fmt: skip
        metrics = explanation_metrics(prediction_only, target.test, values, reference["reference"], top_k=config.top_k)
        base_accuracy = next(entry for entry in sweep["test"] if entry["lam"] == 0.0)["accuracy"]
        comparison.append(
            {"num_samples": n, "accuracy": base_accuracy, "explain_seconds_per_image": seconds, **metrics}
        )
    t = clock.lap(f"{name}: Kernel SHAP as the explainer", t)
    models = {"prediction_only": (prediction_only, 0.0)}
    if chosen != 0.0:
        models["transferred"] = (
            transfer(base, prediction_only, vector, lam=chosen, lam_target=config.lam_target),
            chosen,
        )
    models["direct"] = (direct, None)
    budget = _budget_stage(models, arrays, target.test, config, name)
    clock.lap(f"{name}: equivalent Kernel SHAP budget", t)

    count, evidence = min(config.num_heatmaps, len(target.test)), target.test.evidence
    result = {"domain": name, "role": target.role, "class_names": list(target.class_names),
              "cosine_tau_source_prediction_vs_tau_target": _cosine(source["vector_pred"], tau_target),
              "cosine_tau_source_explainability_vs_tau_target": _cosine(vector, tau_target),
              "norm_tau_target": tau_target.norm(), "labels_rms": float(labels.pow(2).mean().sqrt()),
              "probe": probe, "sweep": sweep, "chosen_lam": chosen, "direct": direct_metrics, "kernel_shap": comparison,
              "kernel_shap_budget": budget, "tve": tve}  # fmt: skip
    shown, is_chosen = illustrated_lambda(result, config.max_accuracy_drop)
    heatmaps = {"images": target.test.images[:count], "evidence": None if evidence is None else evidence[:count],
                "labels": target.test.labels[:count], "class_names": target.class_names, "lam": shown,
                "chosen": is_chosen, "kernel_shap": reference["reference"][:count],
                "prediction_only": reference["attributions"][:count],
                "with_vector": arrays[shown, "test"]["attributions"][:count],
                "direct": arrays["direct", "test"]["attributions"][:count]}  # fmt: skip
    return result, heatmaps


def choose_on_validation(sweep: list[dict], correct: dict, config: DemoConfig) -> tuple[list[dict], float]:
    r"""
    The demo's λ rule on a validation sweep: with `config.lambda_confidence`, each entry gets the upper confidence
    bound of its paired accuracy drop against λ2 = 0 ([`add_accuracy_drop_bounds`]); then [`select_lambda`] with the
    config's tolerance, metric and confidence.

    Args:
        sweep (`list[dict]`): one entry per λ2 (`lam` is the key of `correct`), with the validation figures.
        correct (`dict`): `lam` → per-image 0/1 correctness on the validation images ([`per_image_correct`]).
        config ([`DemoConfig`]): `max_accuracy_drop`, `lambda_metric`, `lambda_confidence`.

    Returns:
        `tuple[list[dict], float]`: the sweep (with the bounds when a confidence is set) and the chosen `lam`.
    """
    if config.lambda_confidence is not None:
        sweep = add_accuracy_drop_bounds(sweep, correct, config.lambda_confidence)
    chosen = select_lambda(sweep, config.max_accuracy_drop, metric=config.lambda_metric,
                           confidence=config.lambda_confidence)  # fmt: skip
    return sweep, chosen


def _tve_metrics(tve: TransferableExplainer, model, split: DemoSplit, arrays: dict, model_accuracy: float,
                 config: DemoConfig, perturbation: bool = True) -> dict:  # fmt: skip
    """The TVE baseline's explanations of `model` (its class embeddings; the features are the frozen base's) on a
    split, against `model`'s own Kernel SHAP reference (`arrays`, from [`_evaluate`]); the predictions, hence the
    accuracy, are `model`'s."""
    explained, seconds = tve.explain(split, model.class_embeddings, config.shap_batch_size)
    metrics = explanation_metrics(model, split, explained, arrays["reference"], top_k=config.top_k,
                                  perturbation=perturbation)  # fmt: skip
    return {"accuracy": model_accuracy, "explain_seconds_per_image": seconds, **metrics}


def _budget_stage(models: dict, arrays: dict, split: DemoSplit, config: DemoConfig, name: str) -> dict:
    """The equivalent Kernel SHAP budget of each model's one-pass explanation on the first `budget_num_images` test
    images: the ladder (seed `comparison_shap`) against the model's own test reference (seed `test_shap`). The
    transferred model is the one at the λ2 chosen on validation; when that is 0 it is the prediction-only model, and
    `transferred` is left out (the report says so)."""
    vision = next(iter(models.values()))[0].config.vision_config
    num_patches = (vision.image_size // vision.patch_size) ** 2
    ladder = config.budget_ladder or default_budget_ladder(num_patches, config.eval_num_samples)
    results = {}
    count = min(config.budget_num_images, len(split))
    for key, (model, lam) in models.items():
        source = arrays["direct" if lam is None else lam, "test"]
        _, own, _ = forward_attributions(model, first_images(split, count), config.shap_batch_size)
        if not torch.allclose(own, source["attributions"][:count], rtol=1e-4, atol=1e-6):
            raise RuntimeError(f"{name}: the {key} model of the Kernel SHAP ladder is not the model evaluated above.")
        if config.show_progress:
            logger.info("%s: Kernel SHAP ladder %s for the %s model", name, list(ladder), key)
        results[key] = {"lam": lam, **equivalent_kernel_shap_budget(
            model, split, ladder, seed=derived_seed(config, "comparison_shap"), explained=source["attributions"],
            reference=source["reference"], num_images=config.budget_num_images, batch_size=config.shap_batch_size,
            value=config.shap_value)}  # fmt: skip
    return {"ladder": list(ladder), "num_images": count, "models": results}


def run(config: DemoConfig | None = None, *, clip=None, tokenizer=None, data: dict | None = None) -> dict:
    r"""
    Run the demo and write the report folder (`report.md`, `results.json`, heatmap PNGs, `lambda_sweep.png`; the
    models, the vector and the Kernel SHAP label shards under `work/`).

    Args:
        config ([`DemoConfig`], *optional*): the settings; the defaults are the offline demo.
        clip ([`~transformers.CLIPModel`], *optional*), tokenizer (*optional*): a CLIP model and its tokenizer to use
            instead of building or loading one; the base stage (when there is one) trains it in place.
        data (`dict[str, datasets.DatasetDict]`, *optional*): in-memory data sets by name (columns `image`, `label`
            as a `ClassLabel`, optionally `evidence`), used instead of the domains or Hub data sets of those names.

    Returns:
        `dict`: what `results.json` holds.

    Example (toy sizes, about 10 seconds):

    ```python
    >>> from hf_explvec.demo import quick_config, run
    >>> results = run(quick_config("reports/demo-quick", show_progress=False))
    >>> sorted(results["hub"])[:2], [t["role"] for t in results["targets"]]
    (['commit_sha', 'endpoint'], ['related', 'unrelated'])
    ```
    """
    config = DemoConfig() if config is None else config
    if not isinstance(config, DemoConfig):
        raise TypeError(f"config must be a DemoConfig, got {type(config).__name__}.")
    check_clip_pair(clip, tokenizer)
    if data is not None and not isinstance(data, Mapping):
        raise TypeError(f"data must be a dict of data set name to DatasetDict, got {type(data).__name__}.")
    threads = torch.get_num_threads()
    torch.set_num_threads(config.num_threads)
    bars = _quiet_library_progress_bars() if not config.show_progress else None
    try:
        return _run(config, clip, tokenizer, data)
    finally:
        torch.set_num_threads(threads)
        if bars is not None:
            bars()


def _quiet_library_progress_bars():
    """Hide the progress bars of transformers, huggingface_hub and datasets; return a function that restores them."""
    import datasets
    import huggingface_hub.utils as hub_utils
    from transformers.utils import logging as transformers_logging

    states = (transformers_logging.is_progress_bar_enabled(), not hub_utils.are_progress_bars_disabled(),
              datasets.is_progress_bar_enabled())  # fmt: skip
    transformers_logging.disable_progress_bar()
    hub_utils.disable_progress_bars()
    datasets.disable_progress_bars()

    def restore():
        for enabled, enable in zip(states, (transformers_logging.enable_progress_bar, hub_utils.enable_progress_bars,
                                            datasets.enable_progress_bars), strict=True):  # fmt: skip
            if enabled:
                enable()

    return restore


def _check_budgets(config: DemoConfig, num_patches: int) -> None:
    """Refuse a Kernel SHAP budget below 2 M, the smallest Kernel SHAP accepts for `num_patches` patches."""
    smallest = min_num_samples(num_patches)
    budgets = {"label_num_samples": [config.label_num_samples], "eval_num_samples": [config.eval_num_samples],
               "comparison_num_samples": list(config.comparison_num_samples),
               "budget_ladder": list(config.budget_ladder or ()),
               "probe_num_samples": [] if config.probe_num_samples is None else [config.probe_num_samples]}  # fmt: skip
    for name, values in budgets.items():
        if values and min(values) < smallest:
            shown = values[0] if len(values) == 1 else values
            raise ValueError(f"{name} = {shown} holds budgets below 2 M = {smallest}, the smallest Kernel SHAP accepts "
                             f"for this model's {num_patches} patches.")  # fmt: skip


def _run(config: DemoConfig, clip, tokenizer, data) -> dict:
    clock, output_dir = _Clock(), Path(config.output_dir)
    work = output_dir / "work"
    work.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)
    t = time.perf_counter()
    clip, tokenizer = build_clip(config, clip, tokenizer)
    clip.to(config.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    image_size, patch_size = clip.config.vision_config.image_size, clip.config.vision_config.patch_size
    _check_budgets(config, (image_size // patch_size) ** 2)  # refused before any training, not after the whole run
    domains = load_domains(config, image_size, patch_size, data)
    t = clock.lap("data", t)

    history = []
    if domains.base is not None:
        # The prompt templates of every registered domain (and of the domains in use): the base stage does not
        # depend on which targets are chosen, as CLIP's pretraining does not.
        templates = sorted({template for d in [*DOMAINS.values(), *domains.all()] for template in d.templates})
        history = pretrain_clip(clip, tokenizer, domains.base.train, domains.base.class_names, templates, config)
    zero_shot = {}
    for domain in [domains.source, *domains.targets]:
        logits, _, _ = forward_attributions(start_model(clip, tokenizer, domain), domain.validation)
        zero_shot[domain.name] = accuracy(logits, domain.validation.labels)
    clock.lap("base stage", t)

    source = _source_stage(clip, tokenizer, domains.source, config, work, clock)
    vector, hub = _hub_round_trip(source["twins"].vector, domains.source, clock)
    targets, heatmaps = [], {}
    for target in domains.targets:
        result, heatmaps[target.name] = _target_stage(clip, tokenizer, target, source, vector, config, work, clock)
        targets.append(result)
    linear_head = None
    if config.linear_head_target:  # after every other stage: the default figures do not depend on the flag
        related = next((target for target in domains.targets if target.role == "related"), domains.targets[0])
        linear_head = linear_head_stage(clip, tokenizer, related, vector, config, work / "linear_head", clock)

    twins = source["twins"]
    results = {
        "config": config.to_dict(),
        "default_config": _is_default(config),
        "seeds": {name: derived_seed(config, name) for name in SEED_OFFSETS},
        "model": {
            "clip": config.clip or "small CLIP built in code (hf_explvec.testing.tiny_clip_model)",
            "image_size": image_size,
            "patch_size": patch_size,
            "num_patches": (image_size // patch_size) ** 2,
            "vision_parameters": sum(p.numel() for p in clip.vision_model.parameters()),
        },
        "domains": domains.describe(),
        "base_stage": {"history": history, "zero_shot_validation_accuracy": zero_shot},
        "source": {
            "domain": domains.source.name,
            "labels_rms": source["labels_rms"],
            "test": source["metrics"],
            "twins_identical_to_labelled_model": source["identical"],
            "vector_norm": twins.vector.norm(),
            "vector_pred_norm": source["vector_pred"].norm(),
        },
        "hub": hub,
        "targets": targets,
        **({} if linear_head is None else {"linear_head": linear_head}),
        "timings_seconds": {**clock.stages, "total": round(time.perf_counter() - clock.start, 3)},
        "report": str(output_dir / "report.md"),
    }
    write_report(results, heatmaps, output_dir)
    return results


def _is_default(config: DemoConfig) -> bool:
    """Whether `config` is the default demo, up to where it writes, what it shows and how it was started, and
    whether it adds the linear-head target (which changes none of the other figures)."""
    ignored = {"output_dir", "show_progress", "command", "note", "linear_head_target"}
    default = DemoConfig().to_dict()
    return all(value == default[key] for key, value in config.to_dict().items() if key not in ignored)


__all__ = ["choose_on_validation", "run", "shap_labels"]
