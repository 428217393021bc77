"""The Quickstart job: the whole vector life cycle on tiny CLIP models built in code (offline, CPU, seconds).

1. A tiny random CLIP model and its zero-shot classifier (the prediction-only model θ).
2. A self-explaining twin θ*: the same model trained a few steps with the α-weighted loss against known patch
   attributions (the toy task's attributions are analytic: each class's evidence is the brightness of one patch
   column, so no Kernel SHAP is needed to know them).
3. τ = θ* − θ, saved to a folder, loaded back, and applied with λ to a fresh copy of θ.
4. Printed: what the vector holds and how the explanation error ([`~hf_explvec.evaluation.e_rmse`] against the known
   attributions, label class) and the predictions changed.

This is a smoke run of the mechanics, not the paper's experiment (that needs the training and demo pipeline).
"""

import copy
import logging
from pathlib import Path

import torch

from .demo.clip import tiny_clip_model, tiny_clip_tokenizer
from .evaluation import accuracy, e_rmse, select_target
from .modeling import SelfExplainingCLIPVision
from .task_vector import TaskVector, TaskVectorConfig

logger = logging.getLogger(__name__)

CLASS_NAMES = ["left", "middle-left", "middle-right", "right"]


def toy_batch(batch_size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Images (B, 3, 32, 32) whose class c is the brightest of the four 8-pixel-wide columns, with target
    attributions (B, 16): the brightness excess of each patch of the class column, zero elsewhere."""
    images = torch.rand(batch_size, 3, 32, 32, generator=generator) * 0.5
    labels = torch.randint(0, 4, (batch_size,), generator=generator)
    rows = torch.randint(0, 4, (batch_size,), generator=generator)
    boost = 1.0 + torch.rand(batch_size, generator=generator)
    targets = torch.zeros(batch_size, 4, 4)
    for i in range(batch_size):  # a few images: readability over vectorisation
        r, c = int(rows[i]), int(labels[i])
        images[i, :, 8 * r : 8 * r + 8, 8 * c : 8 * c + 8] += boost[i]
        targets[i, r, c] = boost[i]
    return images, labels, targets.flatten(1)


def run(output_dir: str | Path = "outputs/quickstart", steps: int = 60, lam: float = 0.8, seed: int = 0) -> dict:
    r"""
    Run the Quickstart job and return its figures; writes the vector to `output_dir/vector`.

    Args:
        output_dir (`str` or `os.PathLike`, *optional*, defaults to `"outputs/quickstart"`): where the vector goes.
        steps (`int`, *optional*, defaults to 60): training steps of the self-explaining twin.
        lam (`float`, *optional*, defaults to 0.8): λ, the scale the vector is applied with.
        seed (`int`, *optional*, defaults to 0): the seed of the model, the training data and the evaluation data.

    Returns:
        `dict`: `vector_tensors`, `vector_parameters`, `vector_norm`, `vector_folder`, and for `before`, `after` and
        `explainer`: `e_rmse_<name>` ([`~hf_explvec.evaluation.e_rmse`] of the label-class attributions against the
        known ones, 256 held-out images) and `accuracy_<name>`.
    """
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    clip = tiny_clip_model(seed=seed)
    base = SelfExplainingCLIPVision.from_clip(clip, CLASS_NAMES, tokenizer=tiny_clip_tokenizer())
    base.config.clip_name_or_path = "hf_explvec.testing.tiny_clip_model"

    explainer = copy.deepcopy(base)
    explainer.config.alpha = 0.8
    explainer.train()
    optimizer = torch.optim.AdamW(explainer.parameters(), lr=3e-3)
    for _ in range(steps):
        images, labels, targets = toy_batch(32, generator)
        loss = explainer(images, labels=labels, shap_values=targets).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    explainer.eval()

    vector = TaskVector.from_models(
        base,
        explainer,
        TaskVectorConfig(
            base_model=base.config.clip_name_or_path, source_dataset="toy-columns", alpha=0.8, recommended_lam=lam
        ),
    )
    folder = Path(output_dir) / "vector"
    vector.save_pretrained(folder)
    loaded = TaskVector.from_pretrained(folder)
    edited = loaded.apply_to(copy.deepcopy(base), lam=lam)

    images, labels, targets = toy_batch(256, torch.Generator().manual_seed(seed + 1))
    figures = {"vector_tensors": len(loaded), "vector_parameters": loaded.num_parameters, "vector_norm": loaded.norm()}
    with torch.no_grad():
        for name, model in (("before", base), ("after", edited), ("explainer", explainer)):
            outputs = model(images)
            figures[f"e_rmse_{name}"] = e_rmse(select_target(outputs.patch_attributions, labels), targets)
            figures[f"accuracy_{name}"] = accuracy(outputs.logits, labels)
    figures["vector_folder"] = str(folder)
    return figures


def format_report(figures: dict, lam: float) -> str:
    """The lines `hf-explvec quickstart` prints: the vector, then E-RMSE and accuracy before, after and of the twin."""
    return "\n".join(
        [
            f"explainability vector: {figures['vector_tensors']} tensors, {figures['vector_parameters']:,} parameters, "
            f"norm {figures['vector_norm']:.3f}, saved to {figures['vector_folder']} and loaded back",
            f"{'model':<34} {'E-RMSE':>16} {'accuracy':>9}",
            f"{'prediction-only (before)':<34} {figures['e_rmse_before']:>16.4f} {figures['accuracy_before']:>9.3f}",
            f"{f'+ {lam} x vector (after)':<34} {figures['e_rmse_after']:>16.4f} {figures['accuracy_after']:>9.3f}",
            f"{'self-explaining twin (reference)':<34} {figures['e_rmse_explainer']:>16.4f} "
            f"{figures['accuracy_explainer']:>9.3f}",
        ]
    )


__all__ = ["run", "format_report"]
