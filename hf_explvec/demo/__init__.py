"""The offline end-to-end demo (`hf-explvec demo`): image domains, a base stage, twins, transfer, report."""

from .pipeline import *  # noqa: F403
from .pipeline import __all__
