"""Training: the α-weighted loss with Accelerate, checkpoints, and prediction-only / self-explaining twins.

Modules, lowest first: `config` (settings, names, the data set error), `batches` (data checks, order, collation),
`checkpoint` (checkpoints and the output folder), `loop` (`train`), `twins` (`train_twins`)."""

from .batches import EpochShuffleSampler
from .config import DatasetFormatError, TrainingConfig
from .loop import TrainResult, train
from .twins import TwinsResult, train_twins

__all__ = [
    "DatasetFormatError",
    "EpochShuffleSampler",
    "TrainResult",
    "TrainingConfig",
    "TwinsResult",
    "train",
    "train_twins",
]
