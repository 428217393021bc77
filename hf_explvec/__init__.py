"""hf_explvec: explainability vectors for CLIP image classifiers (task arithmetic, arXiv 2507.04380).

Importing the package registers [`SelfExplainingCLIPVisionConfig`] / [`SelfExplainingCLIPVision`] and
[`ExplainingCLIPForImageClassificationConfig`] / [`ExplainingCLIPForImageClassification`] with transformers'
`AutoConfig`, `AutoModel` and `AutoModelForImageClassification`, and [`ImageExplanationPipeline`] as transformers'
`pipeline("image-explanation")`.
"""

from transformers import AutoConfig, AutoModel, AutoModelForImageClassification

from .arithmetic import IncompatibleKeysError
from .attribution import kernel_shap, patch_kernel_shap
from .attribution.vit import model_kernel_shap
from .base_check import BaseModelMismatchError
from .classifier import SUPPORTED_MODEL_CLASSES, ExplainingCLIPForImageClassification, explaining_model
from .configuration import ExplainingCLIPForImageClassificationConfig, SelfExplainingCLIPVisionConfig
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
from .explain import Explanation, explain, overlay, save_overlays
from .explained_model import (
    ImageExplanationPipeline,
    apply_vector,
    from_pretrained_with_vector,
    load_explaining_model,
    register_pipeline,
    remove_vector,
)
from .heads import DEFAULT_TEMPLATES, build_class_embeddings
from .hub import HubConnectionError
from .lam import LamChoice, choose_lam
from .modeling import MissingHeadError, SelfExplainingCLIPVision, SelfExplainingOutput, attribution_map
from .task_vector import TaskVector, TaskVectorConfig, transfer
from .training import DatasetFormatError, TrainingConfig, TrainResult, TwinsResult, train, train_twins

__version__ = "0.1.0.dev0"

AutoConfig.register(SelfExplainingCLIPVisionConfig.model_type, SelfExplainingCLIPVisionConfig, exist_ok=True)
AutoModel.register(SelfExplainingCLIPVisionConfig, SelfExplainingCLIPVision, exist_ok=True)
AutoModelForImageClassification.register(SelfExplainingCLIPVisionConfig, SelfExplainingCLIPVision, exist_ok=True)
register_pipeline()  # pipeline("image-explanation", model=...)
_CLASSIFIER_CONFIG = ExplainingCLIPForImageClassificationConfig
AutoConfig.register(_CLASSIFIER_CONFIG.model_type, _CLASSIFIER_CONFIG, exist_ok=True)
AutoModel.register(_CLASSIFIER_CONFIG, ExplainingCLIPForImageClassification, exist_ok=True)
AutoModelForImageClassification.register(_CLASSIFIER_CONFIG, ExplainingCLIPForImageClassification, exist_ok=True)

__all__ = [
    "Explanation",
    "LamChoice",
    "choose_lam",
    "explain",
    "overlay",
    "save_overlays",
    "BaseModelMismatchError",
    "remove_vector",
    "load_explaining_model",
    "from_pretrained_with_vector",
    "apply_vector",
    "ImageExplanationPipeline",
    "DEFAULT_TEMPLATES",
    "DEFAULT_TRANSFER",
    "DOMAINS",
    "DomainSpec",
    "DatasetFormatError",
    "ExplainingCLIPForImageClassification",
    "ExplainingCLIPForImageClassificationConfig",
    "FidelityResult",
    "HubConnectionError",
    "PerturbationCurve",
    "IncompatibleKeysError",
    "MissingHeadError",
    "SUPPORTED_MODEL_CLASSES",
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
    "explaining_model",
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
