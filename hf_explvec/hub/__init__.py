"""Hub helpers: one card module for models, vectors and data sets (`cards`), and downloads and pushes whose errors
name the repo, the revision and the endpoint (`repo`)."""

from . import cards, repo
from .cards import *  # noqa: F403
from .repo import *  # noqa: F403

__all__ = cards.__all__ + repo.__all__
