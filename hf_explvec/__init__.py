"""hf_explvec: explainability vectors for CLIP image classifiers (task arithmetic, arXiv 2507.04380).

Importing the package registers [`SelfExplainingCLIPVisionConfig`] and [`SelfExplainingCLIPVision`] with
transformers' `AutoConfig`, `AutoModel` and `AutoModelForImageClassification`.
"""

from transformers import AutoConfig, AutoModel, AutoModelForImageClassification

from .arithmetic import IncompatibleKeysError
from .attribution import kernel_shap, patch_kernel_shap
from .attribution.vit import model_kernel_shap
from .configuration import SelfExplainingCLIPVisionConfig
from .data import label_dataset, load_split, push_shap_dataset, shap_provenance
from .demo.domains import DEFAULT_TRANSFER, DOMAINS, DomainSpec, build_domain, build_domain_dict, generate_domain
from .evaluation import (
    FidelityResult,
    PerturbationCurve,
    accuracy,
    deletion_auc,
    e_rmse,
    fidelity_sparsity_auc,
    insertion_auc,
    iou_at_k,
    load_metric,
    perturbation_curve,
    select_target,
    spearman,
)
from .heads import DEFAULT_TEMPLATES, build_class_embeddings
from .hub import HubConnectionError
from .modeling import SelfExplainingCLIPVision, SelfExplainingOutput, attribution_map
from .task_vector import TaskVector, TaskVectorConfig, transfer
from .training import DatasetFormatError, TrainingConfig, TrainResult, TwinsResult, train, train_twins

__version__ = "0.1.0.dev0"

AutoConfig.register(SelfExplainingCLIPVisionConfig.model_type, SelfExplainingCLIPVisionConfig, exist_ok=True)
AutoModel.register(SelfExplainingCLIPVisionConfig, SelfExplainingCLIPVision, exist_ok=True)
AutoModelForImageClassification.register(SelfExplainingCLIPVisionConfig, SelfExplainingCLIPVision, exist_ok=True)

__all__ = [
    "DEFAULT_TEMPLATES",
    "DEFAULT_TRANSFER",
    "DOMAINS",
    "DomainSpec",
    "DatasetFormatError",
    "FidelityResult",
    "HubConnectionError",
    "PerturbationCurve",
    "IncompatibleKeysError",
    "SelfExplainingCLIPVision",
    "SelfExplainingCLIPVisionConfig",
    "SelfExplainingOutput",
    "TaskVector",
    "TaskVectorConfig",
    "TrainResult",
    "TrainingConfig",
    "TwinsResult",
    "accuracy",
    "attribution_map",
    "build_class_embeddings",
    "build_domain",
    "build_domain_dict",
    "deletion_auc",
    "e_rmse",
    "fidelity_sparsity_auc",
    "generate_domain",
    "insertion_auc",
    "iou_at_k",
    "label_dataset",
    "kernel_shap",
    "load_metric",
    "load_split",
    "model_kernel_shap",
    "patch_kernel_shap",
    "perturbation_curve",
    "push_shap_dataset",
    "select_target",
    "shap_provenance",
    "spearman",
    "train",
    "train_twins",
    "transfer",
]
