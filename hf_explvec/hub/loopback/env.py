"""Point the Hub clients (huggingface_hub, transformers, datasets, evaluate) at another endpoint, e.g. a [`LocalHub`].

How [`hub_client_env`] points the clients at the server. The clients read most settings once, at import time, so
setting environment variables is not enough when they are already imported:

1. Environment variables (for modules imported later and for worker processes that `datasets` spawns):
   `HF_ENDPOINT`, `HF_HUB_DISABLE_XET=1` (uploads would otherwise go through Xet whenever `hf_xet` is importable),
   `HF_HUB_DISABLE_TELEMETRY=1`, `DISABLE_SAFETENSORS_CONVERSION=1` (no conversion bot answers here),
   `HF_UPDATE_DOWNLOAD_COUNTS=0` (else `datasets`/`evaluate` send a HEAD request to
   S3), `NO_PROXY`/`no_proxy` extended with 127.0.0.1 and localhost, a fake `HF_TOKEN`, and a fresh `HF_HOME`
   with `HF_HUB_CACHE`, `HF_ASSETS_CACHE`, `HF_XET_CACHE`, `HF_TOKEN_PATH`, `HF_DATASETS_CACHE` and
   `HF_MODULES_CACHE` under it. `HF_HUB_OFFLINE`, `TRANSFORMERS_OFFLINE`, `HF_DATASETS_OFFLINE`,
   `HF_EVALUATE_OFFLINE` and `HUGGINGFACE_CO_STAGING` are unset.
2. The modules that derive constants from the environment at import (`huggingface_hub.constants`: `ENDPOINT`,
   `HUGGINGFACE_CO_URL_TEMPLATE`, `HF_URL_HOSTS`, `HF_HUB_OFFLINE`, `HF_HUB_DISABLE_XET`, cache paths, ...;
   `datasets.config`: `HF_ENDPOINT`, `HUB_DATASETS_URL`, `HF_HUB_OFFLINE`, cache paths, ...; `evaluate.config`)
   are re-executed with `importlib.reload` when already imported, so each constant is derived by the library's
   own code. Their previous values are put back on exit.
3. Values copied out of those modules are patched: `huggingface_hub.hf_api.api.endpoint` (the module-level
   `HfApi` behind `huggingface_hub.model_info` & co), `huggingface_hub.utils._http._HUB_ORIGINS`, the `ENDPOINT`
   imported by `huggingface_hub.utils._git_credential` and `huggingface_hub.cli.auth`, and the shared `HfApi` that
   `transformers.utils.hub` caches (reset to `None`). `datasets.config.USE_PARQUET_EXPORT` is set to `False`:
   the dataset-viewer URL `datasets` derives from the endpoint (`http://datasets-server.127.0.0.1:...`) would
   leave loopback. A post-import hook applies these patches to modules first imported inside the context.
4. The shared `httpx` client of `huggingface_hub` is closed (it is rebuilt on next use, with the new `NO_PROXY`)
   and cached `HfFileSystem` instances are dropped, on entry and on exit.
"""

import contextlib
import importlib
import importlib.abc
import importlib.machinery
import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

__all__ = ["FAKE_TOKEN", "hub_client_env"]

FAKE_TOKEN = "hf_localhub_fake_token_for_tests"

# -- client environment ---------------------------------------------------------------------------------------------
_RELOADED = ("huggingface_hub.constants", "datasets.config", "evaluate.config")
_UNSET = (
    "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE", "HF_EVALUATE_OFFLINE", "HUGGINGFACE_CO_STAGING",
    "HUGGINGFACE_HUB_CACHE", "HUGGING_FACE_HUB_TOKEN",
)  # fmt: skip


def _client_environ(endpoint: str, home: Path, token: str) -> dict[str, str | None]:
    """Environment for the clients (`None`: unset)."""
    no_proxy = os.environ.get("NO_PROXY") or os.environ.get("no_proxy")
    no_proxy = ",".join(filter(None, [no_proxy, "127.0.0.1,localhost"]))
    paths = {"HF_HUB_CACHE": "hub", "HF_ASSETS_CACHE": "assets", "HF_XET_CACHE": "xet", "HF_TOKEN_PATH": "token"}
    paths.update(HF_DATASETS_CACHE="datasets", HF_MODULES_CACHE="modules")
    env: dict[str, str | None] = {**dict.fromkeys(_UNSET), **{key: str(home / sub) for key, sub in paths.items()}}
    env.update(HF_ENDPOINT=endpoint, HF_HUB_DISABLE_XET="1", HF_HUB_DISABLE_TELEMETRY="1")
    # No safetensors conversion bot runs here: without this, transformers asks for one when a repo has only
    # pickled weights instead of failing with its clear "no model.safetensors" error.
    env.update(HF_UPDATE_DOWNLOAD_COUNTS="0", DISABLE_SAFETENSORS_CONVERSION="1")
    env.update(NO_PROXY=no_proxy, no_proxy=no_proxy, HF_TOKEN=token, HF_HOME=str(home))
    return env


def _set_environ(values: dict[str, str | None]) -> None:
    for key, value in values.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def _patches() -> dict[tuple[str, str], Callable[[], Any]]:
    """`(module, attribute path)` -> its value in the context, for values the environment alone does not set."""

    def constant(name: str) -> Callable[[], Any]:
        return lambda: getattr(sys.modules["huggingface_hub.constants"], name)

    def hub_origins() -> frozenset:
        c, http = sys.modules["huggingface_hub.constants"], sys.modules["huggingface_hub.utils._http"]
        endpoints = (c._HF_DEFAULT_ENDPOINT, c._HF_DEFAULT_STAGING_ENDPOINT, c.ENDPOINT, "https://hf.co")
        return frozenset(http._url_origin(endpoint) for endpoint in endpoints)

    return {
        ("huggingface_hub.hf_api", "api.endpoint"): constant("ENDPOINT"),
        ("huggingface_hub.utils._http", "_HUB_ORIGINS"): hub_origins,
        ("huggingface_hub.utils._git_credential", "ENDPOINT"): constant("ENDPOINT"),
        ("huggingface_hub.cli.auth", "ENDPOINT"): constant("ENDPOINT"),
        ("huggingface_hub.utils._cache_assets", "HF_ASSETS_CACHE"): constant("HF_ASSETS_CACHE"),
        ("transformers.utils.hub", "_hf_api"): lambda: None,
        ("datasets.config", "USE_PARQUET_EXPORT"): lambda: False,
    }


def _get(module: str, path: str) -> Any:
    obj = sys.modules[module]
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def _set(module: str, path: str, value: Any) -> None:
    *parents, last = path.split(".")
    setattr(_get(module, ".".join(parents)) if parents else sys.modules[module], last, value)


def _apply_patches(only: str | None = None) -> None:
    for (module, path), value in _patches().items():
        if module in sys.modules and only in (None, module):
            _set(module, path, value())


class _PatchOnImport(importlib.abc.MetaPathFinder):
    """Applies [`_apply_patches`] to a patched module imported for the first time inside the context."""

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if path is None or fullname not in {module for module, _ in _patches()}:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path, target)  # submodules: search parent's path
        if spec is None or spec.loader is None:
            return None
        exec_module = spec.loader.exec_module

        def exec_and_patch(module: Any) -> None:
            exec_module(module)
            _apply_patches(fullname)

        spec.loader.exec_module = exec_and_patch  # the loader instance belongs to this spec only
        return spec


def _reset_client_caches() -> None:
    if "huggingface_hub.utils._http" in sys.modules:
        sys.modules["huggingface_hub.utils._http"].close_session()
    if "huggingface_hub.hf_file_system" in sys.modules:
        sys.modules["huggingface_hub.hf_file_system"].HfFileSystem.clear_instance_cache()


@contextlib.contextmanager
def hub_client_env(
    endpoint: str, home_dir: str | os.PathLike | None = None, *, token: str = FAKE_TOKEN
) -> Iterator[dict[str, str | None]]:
    """Point `huggingface_hub`, `transformers`, `datasets` and `evaluate` at `endpoint` for the duration of the block.

    Sets the environment, re-derives the constants the clients read at import time and patches the values copied out
    of them (see the module docstring); everything is put back on exit. It changes `os.environ` and module globals of
    the whole process: do not nest it or use it from several threads at once.

    Args:
        endpoint (`str`): Base URL of the Hub to use, e.g. [`LocalHub.endpoint`].
        home_dir (`str` or `os.PathLike`, *optional*):
            Fresh `HF_HOME` for caches and tokens. Defaults to a temporary directory removed on exit.
        token (`str`, *optional*): Value of `HF_TOKEN`; the local Hub accepts any token.

    Yields:
        `dict[str, Optional[str]]`: The environment variables set (`None` for those unset).
    """
    tmp = tempfile.TemporaryDirectory(prefix="localhub-home-") if home_dir is None else None
    home = Path(tmp.name if tmp is not None else home_dir)
    home.mkdir(parents=True, exist_ok=True)
    env = _client_environ(endpoint.rstrip("/"), home, token)
    saved_env = {key: os.environ.get(key) for key in env}
    saved_modules = {name: dict(vars(sys.modules[name])) for name in _RELOADED if name in sys.modules}
    saved_attrs = {key: _get(*key) for key in _patches() if key[0] in sys.modules}
    hook = _PatchOnImport()
    try:
        _set_environ(env)
        for name in _RELOADED:  # re-derive the import-time constants with the library's own code
            if name in sys.modules:
                importlib.reload(sys.modules[name])
        _apply_patches()
        sys.meta_path.insert(0, hook)
        _reset_client_caches()
        yield env
    finally:
        with contextlib.suppress(ValueError):
            sys.meta_path.remove(hook)
        _set_environ(saved_env)
        for name in _RELOADED:
            if name in saved_modules:
                vars(sys.modules[name]).update(saved_modules[name])
            elif name in sys.modules:  # first imported inside the context: derive again from the restored env
                importlib.reload(sys.modules[name])
        for key, value in _patches().items():
            if key in saved_attrs:
                _set(*key, saved_attrs[key])
            elif key[0] in sys.modules and key[0] not in _RELOADED:
                _set(*key, value())
        _reset_client_caches()
        if tmp is not None:
            tmp.cleanup()
