r"""The FastSHAP / ViT-Shapley objective as an alternative to Kernel SHAP labels (an ablation lever of issue 11).

Instead of regressing the attributions on per-image Kernel SHAP values, the self-explaining twin is trained on the
least-squares objective those values solve, amortised over images (FastSHAP, Jethani et al. 2022; ViT-Shapley,
Covert et al. 2023): for each image x and coalitions S of patches drawn from the Shapley kernel's size distribution
(each paired with its complement, and the grand coalition added),

    L(x) = mean_S ( v_x(S) − v_x(∅) − Σ_{i ∈ S} a_i(x) )²

where `v_x(S)` is the label-class logit of the **teacher** (the prediction-only source model whose Kernel SHAP values
the reference's labels are) with the absent patches masked at the patch-embedding level (baseline: the all-zero image
after CLIP normalisation, as the Kernel SHAP references), and `a(x)` the student's patch attributions of the label
class. Fresh coalitions are drawn at every step, so no per-image Kernel SHAP is ever solved. The twins (α = 1 and
α) are trained here from the same start, with the same data order and schedule (AdamW, cosine with 10% warmup), so
their difference is the objective alone.
"""

from __future__ import annotations

import copy
import math

import torch
from transformers import get_cosine_schedule_with_warmup

from ..attribution.sampling import shapley_kernel_size_mass
from ..attribution.vit import _EmbeddingGame
from .config import DemoConfig, derived_seed

__all__ = ["coalition_loss", "sample_shapley_coalitions", "train_fastshap_twins"]


def sample_shapley_coalitions(num_images: int, num_players: int, num_coalitions: int,
                              generator: torch.Generator) -> torch.Tensor:  # fmt: skip
    r"""
    Coalitions per image: sizes from the Shapley kernel's size distribution, a uniform subset of each size, each
    followed by its complement, and the grand coalition last.

    Args:
        num_images (`int`), num_players (`int`, the patches M ≥ 2), num_coalitions (`int`, even, ≥ 2): the sampled
            coalitions per image (pairs), the grand coalition not counted.
        generator (`torch.Generator`): a CPU generator.

    Returns:
        `torch.BoolTensor` of shape `(num_images, num_coalitions + 1, num_players)`.

    Raises:
        `ValueError`: fewer than 2 players, or an odd or non-positive `num_coalitions`.
    """
    if num_coalitions < 2 or num_coalitions % 2:
        raise ValueError(f"num_coalitions must be an even number >= 2 (coalitions and complements), got "
                         f"{num_coalitions}.")  # fmt: skip
    pairs = num_coalitions // 2
    sizes = torch.multinomial(shapley_kernel_size_mass(num_players).float().expand(num_images, -1), pairs,
                              replacement=True, generator=generator) + 1  # (B, P)  # fmt: skip
    order = torch.rand(num_images, pairs, num_players, generator=generator).argsort(dim=-1)
    member = torch.arange(num_players) < sizes.unsqueeze(-1)  # the first k positions of a random order
    sampled = torch.zeros(num_images, pairs, num_players, dtype=torch.bool).scatter(-1, order, member)
    paired = torch.stack([sampled, ~sampled], dim=2).reshape(num_images, num_coalitions, num_players)
    return torch.cat([paired, torch.ones(num_images, 1, num_players, dtype=torch.bool)], dim=1)


def coalition_loss(attributions: torch.Tensor, coalitions: torch.Tensor, gains: torch.Tensor) -> torch.Tensor:
    r"""
    The least-squares objective: mean over images and coalitions of `(gain_S − Σ_{i ∈ S} a_i)²`.

    Args:
        attributions (`torch.Tensor` of shape `(B, M)`): the student's attributions of the explained class.
        coalitions (`torch.BoolTensor` of shape `(B, K, M)`).
        gains (`torch.Tensor` of shape `(B, K)`): `v(S) − v(∅)` of the teacher.

    Returns:
        `torch.Tensor`: a scalar.
    """
    predicted = torch.einsum("bkm,bm->bk", coalitions.to(attributions.dtype), attributions)
    return (gains.to(attributions.dtype) - predicted).pow(2).mean()


@torch.no_grad()
def _teacher_gains(teacher, pixel_values: torch.Tensor, labels: torch.Tensor, coalitions: torch.Tensor):
    """`v(S) − v(∅)` of the teacher's label-class logit for each image's coalitions (embedding-level masking)."""
    num_images, num_coalitions, num_players = coalitions.shape
    game = _EmbeddingGame(teacher, pixel_values, torch.zeros_like(pixel_values[:1]), labels, "logit", False)
    index = torch.arange(num_images).repeat_interleave(num_coalitions + 1)
    empty = torch.zeros(num_images, 1, num_players, dtype=torch.bool)
    values = game(torch.cat([coalitions, empty], dim=1).reshape(-1, num_players), index)
    values = values.view(num_images, num_coalitions + 1)
    return values[:, :-1] - values[:, -1:]


def train_fastshap_twins(start, teacher, pixel_values: torch.Tensor, labels: torch.Tensor, config: DemoConfig,
                         alpha: float, num_coalitions: int = 16):  # fmt: skip
    r"""
    The twins from `start`: prediction-only (cross-entropy) and self-explaining (`alpha`·CE + (1 − `alpha`)·the
    coalition objective against `teacher`), with the same data order, schedule and coalitions.

    Args:
        start ([`~hf_explvec.SelfExplainingCLIPVision`]): the common start (copied, not changed).
        teacher ([`~hf_explvec.SelfExplainingCLIPVision`]): the model whose masked logits define the game.
        pixel_values (`torch.Tensor` of shape `(N, 3, H, W)`), labels (`torch.LongTensor` of shape `(N,)`): the
            source's training split.
        config ([`DemoConfig`]): `learning_rate`, `num_train_epochs`, `batch_size`, the training seed.
        alpha (`float`): the cross-entropy weight of the self-explaining twin, in [0, 1).
        num_coalitions (`int`, *optional*, defaults to 16): sampled coalitions per image and step (even).

    Returns:
        `tuple`: the prediction-only and the self-explaining model (eval mode, on CPU).
    """
    if not 0.0 <= alpha < 1.0:
        raise ValueError(f"alpha must be in [0, 1) for the self-explaining twin, got {alpha}.")
    teacher = teacher.eval()
    twins = []
    for weight in (1.0, alpha):
        model = copy.deepcopy(start).train()
        generator = torch.Generator().manual_seed(derived_seed(config, "training"))
        steps = config.num_train_epochs * math.ceil(len(labels) / config.batch_size)
        optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate)
        schedule = get_cosine_schedule_with_warmup(optimizer, int(0.1 * steps), steps)
        for _ in range(config.num_train_epochs):
            for batch in torch.randperm(len(labels), generator=generator).split(config.batch_size):
                coalitions = sample_shapley_coalitions(len(batch), model.num_patches, num_coalitions, generator)
                outputs = model(pixel_values=pixel_values[batch])
                loss = weight * torch.nn.functional.cross_entropy(outputs.logits, labels[batch])
                if weight < 1.0:
                    explained = outputs.patch_attributions[torch.arange(len(batch)), labels[batch]]
                    gains = _teacher_gains(teacher, pixel_values[batch], labels[batch], coalitions)
                    loss = loss + (1.0 - weight) * coalition_loss(explained, coalitions, gains)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                schedule.step()
        twins.append(model.eval())
    return tuple(twins)
