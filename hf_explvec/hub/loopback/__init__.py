"""A Hub-compatible server on loopback (what the offline demo and the tests push to and pull from).

Modules: `storage` (repos, revisions, commits and LFS objects on disk), `responses` (the JSON and headers the Hub
clients expect), `routes` (method + path pattern -> handler), `server` ([`LocalHub`]: the HTTP server, fault
injection) and `env` ([`hub_client_env`]).
"""

from .env import FAKE_TOKEN, hub_client_env
from .server import FAULT_KINDS, LocalHub
from .storage import HubError

__all__ = ["FAKE_TOKEN", "FAULT_KINDS", "HubError", "LocalHub", "hub_client_env"]
