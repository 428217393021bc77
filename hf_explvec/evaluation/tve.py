"""A transferable-explainer baseline (TVE-style): an explainer head on the *frozen* base backbone, fitted once to the
source's Kernel SHAP labels and applied to any target model's images and classes with no target training.

The head is the self-explaining model's own attribution head with its projection re-fitted. For an image, let
`h_m` be the base's patch token `m` after `post_layernorm` (width `d`), `t_c` the unit text embedding of class `c`
(width `p`, from the class prompts), `s = exp(logit_scale)` and `z_0` the base's projected [CLS] token; then

    a[c, m] = s / (||z_0|| * M) * h_m^T A t_c,

with `A` a `d x p` matrix. `A = W^T` (the base's `visual_projection.weight` transposed) gives exactly the base model's
own attributions; [`TransferableExplainer.fit`] instead solves a ridge regression of the source labels (label class)
on these features, shrunk toward `W^T`:

    min_A  sum_i sum_m (a_i[y_i, m] - s_im)^2 + r * ||A - W^T||_F^2,    r = ridge * trace(F^T F) / (d p),

in float64: in closed form (the normal equations, accumulated per class) when `d p <= 4096` (the demo's small CLIP:
2048), else by conjugate gradients on the same equations without forming them (a ViT-B/32 has `d p = 393,216`).
Only the base backbone and the class
embeddings are needed at explanation time, so one head serves every target model of that base: it explains the
target from the base's features, not from the target's own, which is the baseline a task vector should beat.
"""

from __future__ import annotations

import math
import time

import torch

from ._checks import check_positive_int

__all__ = ["TransferableExplainer"]


def _check_model(model) -> None:
    for name in ("vision_model", "visual_projection", "class_embeddings", "logit_scale"):
        if not hasattr(model, name):
            raise TypeError(
                f"a TransferableExplainer needs a SelfExplainingCLIPVision (vision_model, visual_projection, "
                f"class_embeddings, logit_scale); {type(model).__name__} has no {name}."
            )


class TransferableExplainer:
    r"""
    A linear explainer head on a frozen base backbone (see the module docstring).

    Args:
        base ([`~hf_explvec.SelfExplainingCLIPVision`]): the base model whose vision tower gives the features; it is
            only read (eval mode, no gradients), never changed.
        weight (`torch.Tensor` of shape `(hidden_size, projection_dim)`, *optional*): the head's `A`; by default the
            base's own projection `visual_projection.weight.T` (the base model's attributions).

    Raises:
        `TypeError`: `base` is not a self-explaining CLIP model.
        `ValueError`: `weight` of another shape, or not finite.
    """

    def __init__(self, base, weight: torch.Tensor | None = None):
        _check_model(base)
        self.base = base
        default = base.visual_projection.weight.detach().t().double().cpu()
        if weight is None:
            weight = default
        if not isinstance(weight, torch.Tensor) or tuple(weight.shape) != tuple(default.shape):
            raise ValueError(f"weight must be a tensor of shape {tuple(default.shape)} (hidden, projection), got "
                             f"{getattr(weight, 'shape', type(weight).__name__)}.")  # fmt: skip
        if not torch.isfinite(weight).all():
            raise ValueError("weight holds NaN or infinite values.")
        self.weight = weight.detach().double().cpu().clone()

    @torch.inference_mode()
    def features(self, pixel_values: torch.Tensor, batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
        r"""
        The frozen base's patch tokens and per-image scales.

        Args:
            pixel_values (`torch.FloatTensor` of shape `(N, 3, H, W)`): images as the model takes them.
            batch_size (`int`, *optional*, defaults to 256): images per forward pass.

        Returns:
            `tuple`: `h` `(N, M, hidden_size)` (patch tokens after `post_layernorm`) and `k` `(N,)` (the factor
            `exp(logit_scale) / (||z_0|| M)`), float64 on CPU.
        """
        batch_size = check_positive_int(batch_size, "batch_size")
        self.base.eval()
        tokens, scales = [], []
        for i in range(0, len(pixel_values), batch_size):
            batch = pixel_values[i : i + batch_size].to(self.base.device)
            hidden = self.base.vision_model(pixel_values=batch, return_dict=True).last_hidden_state
            hidden = self.base.vision_model.post_layernorm(hidden)
            cls_norm = self.base.visual_projection(hidden[:, 0]).norm(dim=-1)
            num_patches = hidden.shape[1] - 1
            scales.append((self.base.logit_scale.exp() / (cls_norm * num_patches)).double().cpu())
            tokens.append(hidden[:, 1:].double().cpu())
        return torch.cat(tokens), torch.cat(scales)

    @classmethod
    def fit(
        cls,
        base,
        pixel_values: torch.Tensor,
        labels: torch.Tensor,
        shap_values: torch.Tensor,
        *,
        class_embeddings: torch.Tensor | None = None,
        ridge: float = 1e-3,
        batch_size: int = 256,
        solver: str = "auto",
        max_iterations: int = 500,
    ) -> TransferableExplainer:
        r"""
        Fit the head to Kernel SHAP labels (of the source's model, for the label class) by ridge regression toward
        the base's own projection (module docstring).

        Args:
            base ([`~hf_explvec.SelfExplainingCLIPVision`]): the frozen base (its features are used).
            pixel_values (`torch.FloatTensor` of shape `(N, 3, H, W)`): the source's training images.
            labels (`torch.LongTensor` of shape `(N,)`): their classes (the explained class of each label).
            shap_values (`torch.FloatTensor` of shape `(N, M)`): the Kernel SHAP labels.
            class_embeddings (`torch.Tensor` of shape `(C, projection_dim)`, *optional*): unit text embeddings of the
                source's classes; by default `base.class_embeddings`.
            ridge (`float`, *optional*, defaults to 1e-3): the shrinkage toward the base's projection, relative to
                the mean diagonal of the normal matrix.
            batch_size (`int`, *optional*, defaults to 256): images per forward pass.
            solver (`str`, *optional*, defaults to `"auto"`): `"exact"` (normal equations formed and solved, memory
                `(d p)^2`), `"cg"` (conjugate gradients, memory `N M d`), or `"auto"`: exact up to `d p = 4096`.
            max_iterations (`int`, *optional*, defaults to 500): the conjugate-gradient limit (relative residual
                1e-10 ends it earlier).

        Returns:
            [`TransferableExplainer`]

        Raises:
            `ValueError`: mismatched lengths or shapes, labels outside the classes, non-finite labels, a negative or
                non-finite `ridge`, or no image.
        """
        _check_model(base)
        if solver not in ("auto", "exact", "cg"):
            raise ValueError(f"solver must be 'auto', 'exact' or 'cg', got {solver!r}.")
        max_iterations = check_positive_int(max_iterations, "max_iterations")
        if isinstance(ridge, bool) or not isinstance(ridge, (int, float)) or not math.isfinite(ridge) or ridge < 0:
            raise ValueError(f"ridge must be a finite number >= 0, got {ridge!r}.")
        embeddings = base.class_embeddings if class_embeddings is None else class_embeddings
        embeddings = embeddings.detach().double().cpu()
        labels, shap_values = torch.as_tensor(labels).long().cpu(), torch.as_tensor(shap_values).double().cpu()
        if len(pixel_values) == 0:
            raise ValueError("no training images: the head needs at least one labelled image.")
        if not (len(pixel_values) == len(labels) == len(shap_values)):
            raise ValueError(f"pixel_values, labels and shap_values must have one row per image, got "
                             f"{len(pixel_values)}, {len(labels)} and {len(shap_values)}.")  # fmt: skip
        if labels.min() < 0 or labels.max() >= len(embeddings):
            raise ValueError(f"labels must lie in [0, {len(embeddings) - 1}] (the classes), got {labels.tolist()}.")
        if not torch.isfinite(shap_values).all():
            raise ValueError("shap_values holds NaN or infinite values.")
        explainer = cls(base)
        hidden, scales = explainer.features(pixel_values, batch_size)
        if tuple(shap_values.shape) != tuple(hidden.shape[:2]):
            raise ValueError(f"shap_values must have shape {tuple(hidden.shape[:2])} (images, patches), got "
                             f"{tuple(shap_values.shape)}.")  # fmt: skip
        d, p = explainer.weight.shape
        weighted = hidden * scales[:, None, None]  # (N, M, d): the feature of patch m is k h_m ⊗ t_y
        classes = embeddings[labels]  # (N, p)
        moment = torch.einsum("nmi,nm,np->ip", weighted, shap_values, classes)
        # mean diagonal of the normal matrix: mean over (i, l) of sum_n,m (k h_mi)^2 t_yl^2
        diagonal = torch.einsum("nmi,np->", weighted.pow(2), classes.pow(2)) / (d * p)
        strength = ridge * float(diagonal) or float(ridge)
        prior = explainer.weight
        if solver == "exact" or (solver == "auto" and d * p <= 4096):
            normal = torch.zeros(d * p, d * p, dtype=torch.float64)
            for c in labels.unique().tolist():
                rows = weighted[labels == c]
                normal += torch.kron(torch.einsum("nmi,nmj->ij", rows, rows), torch.outer(embeddings[c], embeddings[c]))
            system = normal + strength * torch.eye(d * p, dtype=torch.float64)
            target = (moment + strength * prior).reshape(-1, 1)
            explainer.weight = torch.linalg.lstsq(system, target).solution.reshape(d, p)
            return explainer

        def apply(a: torch.Tensor) -> torch.Tensor:  # (F^T F + r I) a, without forming F^T F
            predicted = torch.einsum("nmi,ni->nm", weighted, classes @ a.t())
            return torch.einsum("nmi,nm,np->ip", weighted, predicted, classes) + strength * a

        x = prior.clone()
        residual = moment + strength * prior - apply(x)
        direction, norm = residual.clone(), float(residual.pow(2).sum())
        stop = 1e-20 * float((moment + strength * prior).pow(2).sum())
        for _ in range(max_iterations):
            if norm <= stop:
                break
            product = apply(direction)
            step = norm / float((direction * product).sum())
            x, residual = x + step * direction, residual - step * product
            new_norm = float(residual.pow(2).sum())
            direction, norm = residual + (new_norm / norm) * direction, new_norm
        explainer.weight = x
        return explainer

    def attributions(
        self, pixel_values: torch.Tensor, class_embeddings: torch.Tensor, batch_size: int = 256
    ) -> torch.Tensor:
        r"""
        The head's attributions of every class for each image.

        Args:
            pixel_values (`torch.FloatTensor` of shape `(N, 3, H, W)`): the images (e.g. a target's test split).
            class_embeddings (`torch.Tensor` of shape `(C, projection_dim)`): unit text embeddings of the classes to
                explain, e.g. a target model's `class_embeddings`.
            batch_size (`int`, *optional*, defaults to 256): images per forward pass.

        Returns:
            `torch.FloatTensor` of shape `(N, C, M)` on CPU.
        """
        embeddings = class_embeddings.detach().double().cpu()
        if embeddings.ndim != 2 or embeddings.shape[1] != self.weight.shape[1]:
            raise ValueError(f"class_embeddings must have shape (C, {self.weight.shape[1]}), got "
                             f"{tuple(embeddings.shape)}.")  # fmt: skip
        hidden, scales = self.features(pixel_values, batch_size)
        values = torch.einsum("nmd,dp,cp->ncm", hidden, self.weight, embeddings) * scales[:, None, None]
        return values.float()

    def explain(self, split, class_embeddings: torch.Tensor, batch_size: int = 256) -> tuple[torch.Tensor, float]:
        r"""
        The attributions of each image's label class over a split, and the wall time per image.

        Args:
            split: `pixel_values` `(N, 3, H, W)` and `labels` `(N,)` (see [`~hf_explvec.evaluation.protocol`]).
            class_embeddings (`torch.Tensor` of shape `(C, projection_dim)`): the classes' unit text embeddings.
            batch_size (`int`, *optional*, defaults to 256): images per forward pass.

        Returns:
            `tuple[torch.FloatTensor, float]`: `(N, M)` attributions and seconds per image.
        """
        if len(split) == 0:
            raise ValueError("the split holds no images.")
        start = time.perf_counter()
        values = self.attributions(split.pixel_values, class_embeddings, batch_size)
        explained = values[torch.arange(len(split)), split.labels.long().cpu()]
        return explained, (time.perf_counter() - start) / len(split)
