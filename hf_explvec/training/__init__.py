"""Training: the α-weighted loss with Accelerate, checkpoints, and prediction-only / self-explaining twins."""

from .loop import *  # noqa: F403
from .loop import __all__
