"""Evaluation: agreement with Kernel SHAP, faithfulness to the model, the protocol that measures a model on a split,
and the `evaluate` metric modules.

- `agreement`: [`accuracy`], [`select_target`], [`e_rmse`], [`iou_at_k`], [`spearman`];
- `perturbation`: [`deletion_auc`], [`insertion_auc`], [`perturbation_curve`], [`fidelity_sparsity_auc`];
- `protocol`: [`evaluate_model`], [`explanation_metrics`], [`kernel_shap_values`], [`forward_attributions`],
  [`select_lambda`] (optionally with [`accuracy_drop_bound`]: [`add_accuracy_drop_bounds`], [`per_image_correct`]);
- `diagnostic`: [`probe_transfer`] (predicts from a few validation images whether a vector transfers),
  [`correlation_with_uncertainty`] (Pearson and Spearman with bootstrap intervals);
- `budget`: [`equivalent_kernel_shap_budget`] (the Kernel SHAP budget whose error equals a one-pass explanation's),
  [`default_budget_ladder`], [`interpolate_budget`];
- `tve`: [`TransferableExplainer`], a transferable-explainer baseline (a head refitted on the frozen base);
- `metrics`: [`load_metric`], [`metric_path`], [`metric_info`] and the module scripts.
"""

from .agreement import accuracy, e_rmse, iou_at_k, select_target, spearman
from .budget import default_budget_ladder, equivalent_kernel_shap_budget, interpolate_budget
from .diagnostic import correlation_with_uncertainty, probe_transfer
from .metrics import METRIC_NAMES, PAPER_CITATION, load_metric, metric_info, metric_path
from .perturbation import (
    FidelityResult,
    PerturbationCurve,
    apply_patch_mask,
    deletion_auc,
    fidelity_sparsity_auc,
    insertion_auc,
    perturbation_curve,
)
from .protocol import (
    accuracy_drop_bound,
    add_accuracy_drop_bounds,
    evaluate_model,
    explanation_metrics,
    forward_attributions,
    kernel_shap_values,
    per_image_correct,
    select_lambda,
)
from .tve import TransferableExplainer

__all__ = [
    "METRIC_NAMES",
    "PAPER_CITATION",
    "FidelityResult",
    "PerturbationCurve",
    "TransferableExplainer",
    "default_budget_ladder",
    "equivalent_kernel_shap_budget",
    "interpolate_budget",
    "accuracy",
    "accuracy_drop_bound",
    "add_accuracy_drop_bounds",
    "apply_patch_mask",
    "correlation_with_uncertainty",
    "deletion_auc",
    "e_rmse",
    "evaluate_model",
    "explanation_metrics",
    "fidelity_sparsity_auc",
    "forward_attributions",
    "insertion_auc",
    "iou_at_k",
    "kernel_shap_values",
    "load_metric",
    "metric_info",
    "metric_path",
    "per_image_correct",
    "perturbation_curve",
    "probe_transfer",
    "select_lambda",
    "select_target",
    "spearman",
]
