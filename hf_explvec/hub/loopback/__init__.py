"""A Hub-compatible server on loopback (what the offline demo and the tests push to and pull from)."""

from .env import hub_client_env
from .server import LocalHub

__all__ = ["LocalHub", "hub_client_env"]
