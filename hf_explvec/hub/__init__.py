"""Hub helpers: cards rendered from templates, downloads and pushes with errors that name the repo."""

from .repo import *  # noqa: F403
from .repo import __all__
