"""The data stage: load splits by name, label them with Kernel SHAP patch values, push them with a card."""

from .label import *  # noqa: F403
from .label import __all__
