"""Evaluation: agreement with Kernel SHAP, faithfulness to the model, and the `evaluate` metric modules."""

from .agreement import *  # noqa: F403
from .agreement import __all__ as _agreement_all
from .perturbation import *  # noqa: F403
from .perturbation import __all__ as _perturbation_all

__all__ = [*_agreement_all, *_perturbation_all]
