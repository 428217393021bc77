"""Attribution core: Kernel SHAP over coalitions of players (pure tensor code).

Two entry points:

- [`patch_kernel_shap`]: image patches as players, absent patches painted with a baseline; takes any
  forward function `(N, C, H, W) -> (N, num_classes)`.
- [`kernel_shap`]: any coalition-value function `(coalitions (N, M) bool, input_index (N,)) -> (N,)`,
  the seam for embedding-level masking or token dropping in a ViT.

The sampler ([`plan_coalitions`], [`sample_coalitions`]) and the constrained solver
([`solve_kernel_shap`]) are public for callers that run their own evaluation loop.

`_forward` (package-private, public names) is the one "forward -> score -> target" helper: reading logits from a
model output, the explained score, target validation and selection, and the refusal of non-finite scores. The
evaluation metrics and the labelling job use it too.
"""

from .kernel_shap import ValueFunction, kernel_shap, min_num_samples
from .patches import (
    BASELINE_OPTIONS,
    VALUE_OPTIONS,
    gaussian_blur,
    make_baseline,
    mask_patches,
    patch_kernel_shap,
    to_patch_grid,
)
from .sampling import CoalitionPlan, make_generator, plan_coalitions, sample_coalitions, shapley_kernel_size_mass
from .solver import solve_kernel_shap
from .vit import MASKING_OPTIONS, model_kernel_shap

__all__ = [
    "BASELINE_OPTIONS",
    "MASKING_OPTIONS",
    "VALUE_OPTIONS",
    "CoalitionPlan",
    "ValueFunction",
    "gaussian_blur",
    "kernel_shap",
    "make_baseline",
    "make_generator",
    "mask_patches",
    "model_kernel_shap",
    "min_num_samples",
    "patch_kernel_shap",
    "plan_coalitions",
    "sample_coalitions",
    "shapley_kernel_size_mass",
    "solve_kernel_shap",
    "to_patch_grid",
]
