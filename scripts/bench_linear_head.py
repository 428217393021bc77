"""Does the demo's explainability vector, trained with a text head, transfer to a linear-head classifier? (issue 10.8)

The demo's source vector τ_S is the difference of two `SelfExplainingCLIPVision` twins whose head is the class-prompt
text embeddings (attributions: that head applied to each patch token after `post_layernorm` and the projection).
Most fine-tuned CLIP classifiers on the Hub are instead transformers' `CLIPForImageClassification`: a linear head on
the mean of the patch tokens of the last hidden state (before `post_layernorm`), explained by
[`ExplainingCLIPForImageClassification`] as a_{c,i} = W_c·h_i / M.

This script builds the demo's base CLIP and τ_S with the demo's code (shared with `bench_compression.py`, and its
`--cache`), then the related target (`digits_on_photos`) as a `CLIPForImageClassification` whose vision tower is the
base's: a linear probe (tower frozen), then fine-tuning of everything, both with transformers' `Trainer` (AdamW, cosine
schedule, 10% warmup, weight decay 0.1, gradient clipping 1.0, the demo's epochs and batch size). It applies τ_S at
each λ2 of the demo's grid (θ_T + λ2·τ_S; the vector's visual projection has no counterpart and is skipped by
`apply_to`), and measures, as the demo does: accuracy, E-RMSE of the model's attributions against Kernel SHAP values
of that model's own logit of the label class (N = 500, baseline 0, the demo's seeds), IoU@2, Spearman, pointing,
deletion and insertion AUC. λ2 is chosen on validation by the demo's rule ([`select_lambda`]).

Kernel SHAP uses pixel masking ([`patch_kernel_shap`] with baseline 0): the explaining classifier has no
embedding-level path. For CLIP the two give the same values up to float rounding (the patch embedding is a
convolution with the patch as kernel and stride); the script checks this on the demo's text-head target model.

    python scripts/bench_linear_head.py --cache /tmp/demo-models   # reuses bench_compression's models if there
    python scripts/bench_linear_head.py --tiny                       # toy sizes, seconds; numbers mean nothing
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import CLIPConfig, CLIPForImageClassification, Trainer, TrainingArguments

from hf_explvec import ExplainingCLIPForImageClassification
from hf_explvec.attribution import patch_kernel_shap
from hf_explvec.demo.config import derived_seed
from hf_explvec.demo.pipeline import _training_set
from hf_explvec.evaluation import (
    accuracy,
    explanation_metrics,
    forward_attributions,
    kernel_shap_values,
    select_lambda,
)
from hf_explvec.task_vector import transfer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_compression import build_demo_models, demo_config  # noqa: E402  (the shared demo models)

PROBE_LEARNING_RATE = 1e-2


# ------------------------------------------------------------------------------------------------- the classifier
def _fit(model, split, config, output_dir: Path, learning_rate: float) -> None:
    """transformers' Trainer with the demo's fine-tuning settings (epochs, batch size, schedule, seed)."""
    steps = config.num_train_epochs * -(-len(split) // config.batch_size)
    args = TrainingArguments(
        output_dir=str(output_dir), num_train_epochs=config.num_train_epochs, learning_rate=learning_rate,
        per_device_train_batch_size=config.batch_size, lr_scheduler_type="cosine", warmup_steps=int(0.1 * steps),
        weight_decay=0.1, max_grad_norm=1.0, seed=derived_seed(config, "training"), report_to="none",
        save_strategy="no", logging_strategy="no", disable_tqdm=True, use_cpu=True, dataloader_num_workers=0,
    )  # fmt: skip
    Trainer(model=model, args=args, train_dataset=_training_set(split)).train()
    model.eval()


def linear_head_target(clip, target, config, work: Path, probe_learning_rate: float = PROBE_LEARNING_RATE):
    r"""
    The related target as a `CLIPForImageClassification` on the base's vision tower: a linear probe (tower frozen),
    then fine-tuning of the whole model at the demo's learning rate.

    Returns:
        `tuple`: (the probe, the fine-tuned classifier θ_T), both in eval mode.
    """
    labels = dict(enumerate(target.class_names))
    model_config = CLIPConfig(text_config=clip.config.text_config.to_dict(),
                              vision_config=clip.config.vision_config.to_dict(), id2label=labels,
                              label2id={name: i for i, name in labels.items()})  # fmt: skip
    torch.manual_seed(derived_seed(config, "model_init"))
    classifier = CLIPForImageClassification(model_config)
    classifier.vision_model.load_state_dict(clip.vision_model.state_dict())
    classifier.config._name_or_path = "hf_explvec.demo base stage"
    for parameter in classifier.vision_model.parameters():
        parameter.requires_grad_(False)
    _fit(classifier, target.train, config, work / "linear_probe", probe_learning_rate)
    for parameter in classifier.vision_model.parameters():
        parameter.requires_grad_(True)
    probe = ExplainingCLIPForImageClassification.from_classifier(classifier)  # a copy
    _fit(classifier, target.train, config, work / "fine_tuning", config.learning_rate)
    return probe, classifier


# ------------------------------------------------------------------------------------------------- evaluation
def kernel_shap_reference(model, split, config, seed_name: str) -> torch.Tensor:
    """Kernel SHAP of the label class's `config.shap_value` by pixel masking, chunked and seeded as the demo's
    [`kernel_shap_values`] (16 images per call, seed + first index)."""
    seed, values, vision = derived_seed(config, seed_name), [], model.config.vision_config
    for i in range(0, len(split), 16):
        values.append(patch_kernel_shap(model, split.pixel_values[i : i + 16], split.labels[i : i + 16],
                                        patch_size=vision.patch_size, num_samples=config.eval_num_samples,
                                        baseline=0.0, batch_size=config.shap_batch_size, seed=seed + i,
                                        value=config.shap_value).cpu())  # fmt: skip
    return torch.cat(values)


def evaluate(model, split, config, seed_name: str, perturbation: bool) -> dict:
    """Accuracy and the demo's explanation metrics of an explaining model on a split."""
    logits, explained, _ = forward_attributions(model, split)
    reference = kernel_shap_reference(model, split, config, seed_name)
    metrics = explanation_metrics(model, split, explained, reference, top_k=config.top_k, perturbation=perturbation)
    return {"accuracy": accuracy(logits, split.labels), **metrics}


def masking_check(models: dict, config) -> float:
    """Largest difference between the demo's embedding-masked Kernel SHAP and this script's pixel-masked one, on the
    first 16 test images of the demo's text-head target θ_T (same seeds)."""
    split = models["target"].test
    first = type(split)(split.pixel_values[:16], split.labels[:16], None, split.images[:16], None, None)
    seed = derived_seed(config, "test_shap")
    model = models["prediction_only"]
    demo, _ = kernel_shap_values(model, first, config.eval_num_samples, seed, config.shap_batch_size,
                                 value=config.shap_value)  # fmt: skip
    pixel = kernel_shap_reference(model, first, config, "test_shap")
    return float((demo - pixel).abs().max()), float(demo.pow(2).mean().sqrt())


COLUMNS = (("acc", "accuracy"), ("E-RMSE", "e_rmse"), ("E-RMSE(L2)", "e_rmse_l2"), ("IoU@2", "iou_at_k"),
           ("Spear.", "spearman"), ("point.", "pointing"), ("del.AUC", "deletion_auc"),
           ("ins.AUC", "insertion_auc"), ("SHAP rms", "shap_rms"), ("attr rms", "attribution_rms"))  # fmt: skip


def print_table(named: list[tuple[str, dict]], zero: dict) -> None:
    """One line per model: accuracy, E-RMSE and their changes against `zero`, then the other metrics."""
    print(f"{'model':<24} {'acc':>6} {'ΔAcc':>6} {'E-RMSE':>7} {'ΔE-RMSE':>8} " + " ".join(f"{h:>10}" for h, _ in
          COLUMNS[2:]))  # fmt: skip
    for name, row in named:
        accuracy_change = 100 * (row["accuracy"] - zero["accuracy"])
        change = 100 * (row["e_rmse"] / zero["e_rmse"] - 1)
        rest = " ".join(f"{row.get(key, float('nan')):>10.3f}" for _, key in COLUMNS[2:])
        print(f"{name:<24} {100 * row['accuracy']:>5.1f}% {accuracy_change:>+6.1f} {row['e_rmse']:>7.3f} "
              f"{change:>+7.1f}% {rest}")  # fmt: skip


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="quick_config's toy sizes (a smoke run)")
    parser.add_argument("--output-dir", default=None, help="work folder; a temporary one by default")
    parser.add_argument("--cache", default=None, help="bench_compression's model cache (reused when it matches)")
    parser.add_argument("--probe-lr", type=float, default=PROBE_LEARNING_RATE, help="learning rate of the probe")
    args = parser.parse_args(argv)

    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        output_dir = Path(args.output_dir or scratch)
        config = demo_config(args.tiny, str(output_dir / "demo"))
        print(f"torch {torch.__version__}, {config.num_threads} thread(s), {platform.machine()}, "
              f"{os.cpu_count()} CPUs, Python {platform.python_version()}; "
              f"{'quick_config (toy sizes)' if args.tiny else 'DemoConfig defaults'}, target "
              f"{config.targets[0]}, sizes train/val/test {config.train_size}/{config.validation_size}/"
              f"{config.test_size}, Kernel SHAP N={config.eval_num_samples}")  # fmt: skip
        models = build_demo_models(config, cache=args.cache)
        torch.set_num_threads(config.num_threads)
        difference, scale = masking_check(models, config)
        print(f"Kernel SHAP, embedding vs pixel masking on the text-head θ_T (16 test images, same seeds): max |diff| "
              f"{difference:.2e} (RMS of the values {scale:.3f})")  # fmt: skip

        t = time.perf_counter()
        probe, classifier = linear_head_target(models["clip"], models["target"], config, output_dir / "linear_head",
                                               args.probe_lr)  # fmt: skip
        print(f"[{time.strftime('%H:%M:%S')}] linear probe + fine-tuning: {time.perf_counter() - t:.0f} s")
        vector, target = models["vector"], models["target"]
        rows = {"validation": [], "test": []}
        probe_row = {split: evaluate(probe, getattr(target, split), config, f"{split}_shap", True)
                     for split in ("validation", "test")}  # fmt: skip
        for lam in config.lambdas:
            explained = ExplainingCLIPForImageClassification.from_classifier(
                transfer(probe, classifier, vector, lam=lam, lam_target=config.lam_target)
            )
            for split in ("validation", "test"):
                rows[split].append({"lam": lam, **evaluate(explained, getattr(target, split), config, f"{split}_shap",
                                                           True)})  # fmt: skip
            print(f"[{time.strftime('%H:%M:%S')}] λ2 = {lam:g} done")
        chosen = select_lambda(rows["validation"], config.max_accuracy_drop)

        print(f"\nCLIPForImageClassification (linear probe, then fine-tuned) on {target.name}; τ_S from the text-head "
              f"source twins; λ2 chosen on validation: {chosen:g} (lowest E-RMSE within "
              f"{100 * config.max_accuracy_drop:g} points of λ2 = 0)")  # fmt: skip
        for split in ("validation", "test"):
            named = [("linear probe only", probe_row[split])]
            named += [(f"θ_T + {r['lam']:g}·τ_S" + (" (chosen)" if r["lam"] == chosen else ""), r) for r in rows[split]]
            print(f"{split} ({len(getattr(target, split))} images); ΔAcc in points and ΔE-RMSE vs θ_T (λ2 = 0)")
            print_table(named, rows[split][0])
        print(f"wall time: {time.perf_counter() - start:.0f} s")
    return {"chosen": chosen, "rows": rows, "probe": probe_row}


if __name__ == "__main__":
    sys.exit(main() and 0)
