"""The demo's linear-head target (`DemoConfig(linear_head_target=True)`, `hf-explvec demo --linear-head`): does the
source vector τ_S, trained with a text head, transfer to a transformers `CLIPForImageClassification`?

The demo's τ_S is the difference of two [`~hf_explvec.SelfExplainingCLIPVision`] twins whose head is the class-prompt
text embeddings. Most fine-tuned CLIP classifiers on the Hub are instead `CLIPForImageClassification`: a linear head
on the mean of the patch tokens of the last hidden state (before `post_layernorm`), explained by
[`~hf_explvec.ExplainingCLIPForImageClassification`] as a_{c,i} = W_c·h_i / M (the same logits).

[`linear_head_stage`] builds the related target as such a classifier on the demo base's vision tower: a linear probe
(tower frozen), then fine-tuning of everything, both with transformers' `Trainer` (AdamW, cosine schedule, 10%
warmup, weight decay 0.1, gradient clipping 1.0, the demo's epochs, batch size and seed). The probe is θ_base of the
transfer and the fine-tuned classifier θ_T: θ̃ = θ_base + λ1 (θ_T − θ_base) + λ2 τ_S ([`transfer`]; the base check
passes, the vision tower is the demo's base; τ_S's visual projection has no counterpart and is skipped). λ2 runs over
the demo's grid and is chosen on validation by the demo's rule ([`select_lambda`]); test gets the demo's figures.

Kernel SHAP uses pixel masking ([`patch_kernel_shap`], baseline 0, the logit of the label class by default): the
explaining classifier has no embedding-level path. For CLIP the two maskings give the same values up to float
rounding (the patch embedding is a convolution with the patch as kernel and stride); the stage checks this on the
target's θ_base with its text head (`masking_check` in the results).
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch

from ..attribution import patch_kernel_shap
from ..classifier import ExplainingCLIPForImageClassification
from ..evaluation import accuracy, explanation_metrics, forward_attributions, kernel_shap_values, select_lambda
from ..task_vector import TaskVector, transfer
from .config import DemoConfig, derived_seed
from .data import DemoSplit, Domain, first_images
from .pretrain import start_model

__all__ = ["PROBE_LEARNING_RATE", "build_linear_head_target", "linear_head_stage", "pixel_kernel_shap"]

#: Learning rate of the linear probe (the tower is frozen; a linear head on fixed features takes a larger step).
PROBE_LEARNING_RATE: float = 1e-2

#: Test images of the masking check (embedding-level against pixel-level Kernel SHAP).
MASKING_CHECK_IMAGES: int = 16


def _fit(model, split: DemoSplit, config: DemoConfig, output_dir: Path, learning_rate: float) -> None:
    """transformers' `Trainer` with the demo's fine-tuning settings (epochs, batch size, schedule, seed)."""
    import datasets
    from transformers import PrinterCallback, Trainer, TrainingArguments

    steps = config.num_train_epochs * math.ceil(len(split) / config.batch_size)
    args = TrainingArguments(
        output_dir=str(output_dir), num_train_epochs=config.num_train_epochs, learning_rate=learning_rate,
        per_device_train_batch_size=config.batch_size, lr_scheduler_type="cosine", warmup_steps=int(0.1 * steps),
        weight_decay=0.1, max_grad_norm=1.0, seed=derived_seed(config, "training"), report_to="none",
        save_strategy="no", logging_strategy="no", disable_tqdm=not config.show_progress,
        use_cpu=model.device.type == "cpu", dataloader_num_workers=0,
    )  # fmt: skip
    data = datasets.Dataset.from_dict({"pixel_values": split.pixel_values.numpy(), "labels": split.labels.tolist()})
    trainer = Trainer(model=model, args=args, train_dataset=data)
    if not config.show_progress:  # without tqdm, transformers prints the final training metrics
        trainer.remove_callback(PrinterCallback)
    trainer.train()
    model.eval()


def build_linear_head_target(clip, target: Domain, config: DemoConfig, work: str | Path,
                             probe_learning_rate: float = PROBE_LEARNING_RATE):  # fmt: skip
    r"""
    The target as a transformers `CLIPForImageClassification` on the vision tower of `clip`: a linear probe (tower
    frozen, `probe_learning_rate`), then fine-tuning of the whole model at `config.learning_rate`.

    Args:
        clip ([`~transformers.CLIPModel`]): the demo's base θ_base (left unchanged).
        target ([`~hf_explvec.demo.data.Domain`]): the target domain (its `train` split and `class_names`).
        config ([`DemoConfig`]): epochs, batch size, learning rate, seeds.
        work (`str` or `os.PathLike`): a folder for the `Trainer` runs.
        probe_learning_rate (`float`, *optional*, defaults to 1e-2): learning rate of the probe.

    Returns:
        `tuple`: the probe as an [`~hf_explvec.ExplainingCLIPForImageClassification`] (θ_base of the transfer) and
        the fine-tuned `CLIPForImageClassification` (θ_T), both in eval mode on `clip`'s device.
    """
    from transformers import CLIPConfig, CLIPForImageClassification

    work = Path(work)
    labels = dict(enumerate(target.class_names))
    model_config = CLIPConfig(text_config=clip.config.text_config.to_dict(),
                              vision_config=clip.config.vision_config.to_dict(), id2label=labels,
                              label2id={name: i for i, name in labels.items()})  # fmt: skip
    torch.manual_seed(derived_seed(config, "model_init"))
    classifier = CLIPForImageClassification(model_config)
    classifier.vision_model.load_state_dict(clip.vision_model.state_dict())
    classifier.config._name_or_path = "hf_explvec.demo base stage"
    classifier.to(clip.device)
    for parameter in classifier.vision_model.parameters():
        parameter.requires_grad_(False)
    _fit(classifier, target.train, config, work / "linear_probe", probe_learning_rate)
    for parameter in classifier.vision_model.parameters():
        parameter.requires_grad_(True)
    probe = ExplainingCLIPForImageClassification.from_classifier(classifier)  # a copy
    _fit(classifier, target.train, config, work / "fine_tuning", config.learning_rate)
    return probe, classifier


def pixel_kernel_shap(model, split: DemoSplit, config: DemoConfig, seed_name: str) -> torch.Tensor:
    r"""
    Kernel SHAP of the label class's `config.shap_value` by pixel masking (baseline 0), chunked and seeded as the
    demo's embedding-level [`~hf_explvec.evaluation.kernel_shap_values`] (16 images per call, seed + first index).

    Args:
        model: a model whose output has `logits` (e.g. an [`~hf_explvec.ExplainingCLIPForImageClassification`]).
        split ([`~hf_explvec.demo.data.DemoSplit`]): the images and labels.
        config ([`DemoConfig`]): `eval_num_samples`, `shap_batch_size`, `shap_value`, seeds.
        seed_name (`str`): a key of `SEED_OFFSETS` (`"validation_shap"`, `"test_shap"`).

    Returns:
        `torch.Tensor`: `(N, M)` float32 on CPU.
    """
    seed, values, patch_size = derived_seed(config, seed_name), [], model.config.vision_config.patch_size
    for i in range(0, len(split), 16):
        values.append(patch_kernel_shap(model, split.pixel_values[i : i + 16], split.labels[i : i + 16],
                                        patch_size=patch_size, num_samples=config.eval_num_samples, baseline=0.0,
                                        batch_size=config.shap_batch_size, seed=seed + i,
                                        value=config.shap_value).float().cpu())  # fmt: skip
    return torch.cat(values)


def _masking_check(model, split: DemoSplit, config: DemoConfig) -> dict:
    """Embedding-level (the demo's) against pixel-level (this stage's) Kernel SHAP on the first test images of a
    text-head model, same seeds: the largest difference and the RMS of the values."""
    first = first_images(split, min(MASKING_CHECK_IMAGES, len(split)))
    embedding, _ = kernel_shap_values(model, first, config.eval_num_samples, derived_seed(config, "test_shap"),
                                      config.shap_batch_size, value=config.shap_value)  # fmt: skip
    pixel = pixel_kernel_shap(model, first, config, "test_shap")
    return {"num_images": len(first), "max_abs_difference": float((embedding - pixel).abs().max()),
            "values_rms": float(embedding.pow(2).mean().sqrt())}  # fmt: skip


def _evaluate(model, split: DemoSplit, config: DemoConfig, seed_name: str) -> dict:
    """Accuracy, the one-pass time and the demo's explanation metrics against the model's own pixel Kernel SHAP."""
    logits, explained, seconds = forward_attributions(model, split, config.shap_batch_size)
    reference = pixel_kernel_shap(model, split, config, seed_name)
    metrics = explanation_metrics(model, split, explained, reference, top_k=config.top_k, perturbation=True)
    return {"accuracy": accuracy(logits, split.labels), "explain_seconds_per_image": seconds, **metrics}


def _logits(model, split: DemoSplit, batch_size: int) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([model(pixel_values=split.pixel_values[i : i + batch_size].to(model.device)).logits.cpu()
                          for i in range(0, len(split), batch_size)])  # fmt: skip


def linear_head_stage(clip, tokenizer, target: Domain, vector: TaskVector, config: DemoConfig, work: str | Path,
                      clock=None) -> dict:  # fmt: skip
    r"""
    The linear-head target: [`build_linear_head_target`], then the λ2 sweep of `vector` on it (validation and test),
    λ2 chosen on validation by the demo's rule, and the masking check.

    Args:
        clip ([`~transformers.CLIPModel`]), tokenizer: the demo's base θ_base and its tokenizer (left unchanged).
        target ([`~hf_explvec.demo.data.Domain`]): the target domain (the demo uses its related one).
        vector ([`TaskVector`]): the source vector τ_S (trained with the text head).
        config ([`DemoConfig`]): the demo settings (λ2 grid, λ1, the rule's tolerance, Kernel SHAP settings, seeds).
        work (`str` or `os.PathLike`): the folder where the fine-tuned classifier is saved (`classifier/`,
            safetensors; the Trainer runs go there too).
        clock (*optional*): the demo's stage clock (`lap(name, since)`).

    Returns:
        `dict`: `domain`, `role`, `class_names`, `model_class`, `probe_learning_rate`, `classifier_path`,
        `max_abs_logit_difference` (explaining classifier against `CLIPForImageClassification` at λ2 = 0, test
        split), `masking_check`, `probe` (per split, the linear probe's figures), `sweep` (per split, one entry per
        λ2 with `lam` and the figures), `chosen_lam`.
    """
    work, t = Path(work), time.perf_counter()
    probe, classifier = build_linear_head_target(clip, target, config, work)
    classifier.save_pretrained(work / "classifier")
    t = clock.lap(f"{target.name} (linear head): linear probe + fine-tuning", t) if clock else t

    explaining = ExplainingCLIPForImageClassification.from_classifier(classifier)
    difference = float((_logits(explaining, target.test, config.shap_batch_size)
                        - _logits(classifier, target.test, config.shap_batch_size)).abs().max())  # fmt: skip
    sweep, probe_metrics = {"validation": [], "test": []}, {}
    for split in ("validation", "test"):
        probe_metrics[split] = _evaluate(probe, getattr(target, split), config, f"{split}_shap")
    for lam in config.lambdas:
        model = ExplainingCLIPForImageClassification.from_classifier(
            transfer(probe, classifier, vector, lam=lam, lam_target=config.lam_target)
        )
        for split in ("validation", "test"):
            sweep[split].append({"lam": lam, **_evaluate(model, getattr(target, split), config, f"{split}_shap")})
    chosen = select_lambda(sweep["validation"], config.max_accuracy_drop)
    t = clock.lap(f"{target.name} (linear head): λ2 sweep (validation + test)", t) if clock else t
    check = _masking_check(start_model(clip, tokenizer, target), target.test, config)
    if clock:
        clock.lap(f"{target.name} (linear head): masking check", t)
    return {"domain": target.name, "role": target.role, "class_names": list(target.class_names),
            "model_class": type(classifier).__name__, "probe_learning_rate": PROBE_LEARNING_RATE,
            "classifier_path": str(work / "classifier"), "max_abs_logit_difference": difference,
            "masking_check": check, "probe": probe_metrics, "sweep": sweep, "chosen_lam": chosen}  # fmt: skip
