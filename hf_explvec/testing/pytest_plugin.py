"""Pytest fixtures for tests that talk to the Hub, served offline by a [`LocalHub`] on loopback.

Enable them in a `conftest.py`:

```py
pytest_plugins = ["hf_explvec.testing.pytest_plugin"]
```

then ask for `local_hub` in a test:

```py
def test_push(local_hub):
    model.push_to_hub("org/name")  # goes to local_hub.endpoint; the real Hub is never contacted
    assert "config.json" in local_hub.commits("org/name")[0]["files"]
```

To test how code copes with a server that goes away, cut requests with `local_hub.inject_fault("download" |
"lfs_upload" | "commit", times=...)` or stop the server with `local_hub.stop()` (see [`LocalHub`]).
"""

from collections.abc import Iterator
from pathlib import Path

import pytest

from ..hub.loopback import LocalHub, hub_client_env

__all__ = ["local_hub"]


@pytest.fixture
def local_hub(tmp_path: Path) -> Iterator[LocalHub]:
    """A fresh [`LocalHub`] for one test, with the Hub clients pointed at it.

    Each test gets its own server (repos under `tmp_path / "hub"`, so no namespacing is needed) and its own `HF_HOME`
    (`tmp_path / "hf_home"`: caches and a fake token), set up by [`hub_client_env`], which also restores the
    environment and the clients' module constants afterwards. Starting a server takes about a millisecond.
    """
    with LocalHub(tmp_path / "hub") as hub, hub_client_env(hub.endpoint, tmp_path / "hf_home"):
        yield hub
