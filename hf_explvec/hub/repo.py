"""Hub plumbing shared by vectors, models and data sets: downloads and pushes whose errors name the repo.

Every Hub call of hf_explvec goes through [`hub_errors`], which turns the clients' errors into built-in types naming
the repo, the revision and the endpoint: `FileNotFoundError` (no such repo, revision or file, or a local path that is
neither a folder nor a valid repo id), [`HubConnectionError`] (a `ConnectionError`: the server is unreachable or went
away during a download, an LFS upload or a commit) and `OSError` (any other refusal of the Hub).

A push writes everything into a temporary folder and uploads it in one commit ([`push_folder`]): if the connection
fails before the commit lands, nothing becomes visible on the Hub and the earlier revision still loads as it was.
Downloads go through `snapshot_download`, which moves a file into the cache only once it is complete.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from huggingface_hub import DatasetCard, HfApi, ModelCard, constants, hf_hub_download, snapshot_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    HFValidationError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from .cards import merge_cards

logger = logging.getLogger(__name__)

# Exception classes of the HTTP clients under huggingface_hub / datasets that mean "the connection failed".
_TRANSPORT_ERRORS = (("httpx2", "TransportError"), ("httpx", "TransportError"), ("requests", "ConnectionError"))


class HubConnectionError(ConnectionError):
    r"""
    The Hub could not be reached, or the connection failed during a download, an LFS upload or a commit.

    Args:
        message (`str`): What failed.
        repo_id (`str`): The repository.
        repo_type (`str`): `"model"` or `"dataset"`.
        revision (`str`, *optional*): The branch, tag or commit (`main` when `None`).
        endpoint (`str`, *optional*): The Hub endpoint; `huggingface_hub.constants.ENDPOINT` by default.
    """

    def __init__(
        self, message: str, *, repo_id: str, repo_type: str, revision: str | None, endpoint: str | None = None
    ):
        super().__init__(message)
        self.repo_id, self.repo_type, self.revision = repo_id, repo_type, revision or "main"
        self.endpoint = endpoint or constants.ENDPOINT


def describe_repo(repo_id: str, repo_type: str, revision: str | None) -> str:
    """`"<type> repo '<id>' at revision '<rev>' on <endpoint>"`, for error messages."""
    return f"{repo_type} repo {repo_id!r} at revision {revision or 'main'!r} on {constants.ENDPOINT}"


def _transport_error_types() -> tuple[type[BaseException], ...]:
    types: list[type[BaseException]] = [ConnectionError, TimeoutError]
    for module_name, name in _TRANSPORT_ERRORS:
        with contextlib.suppress(ImportError, AttributeError):
            types.append(getattr(importlib.import_module(module_name), name))
    return tuple(types)


def is_connection_error(error: BaseException) -> bool:
    """Whether `error`, or an error it was raised from, is a failed connection (refused, reset, dropped, timed out)."""
    types = _transport_error_types()
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, types) and not isinstance(error, HubConnectionError):
            return True
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return False


def _refused(error: BaseException) -> bool:
    """Whether the connection was never made (refused, unreachable), as opposed to lost on the way."""
    for _ in range(32):  # the chain of causes, however it was built
        if error is None:
            return False
        if (
            isinstance(error, ConnectionRefusedError | LocalEntryNotFoundError)
            or type(error).__name__ == "ConnectError"
        ):
            return True
        if "connection refused" in str(error).lower() or "couldn't reach" in str(error).lower():  # datasets' wording
            return True
        error = error.__cause__ or error.__context__
    return False


def hub_error(
    error: BaseException,
    repo_id: str,
    repo_type: str = "model",
    revision: str | None = None,
    *,
    action: str = "download",
    filename: str | None = None,
) -> BaseException:
    r"""
    The built-in error to raise for a client error `error`, naming the repo, the revision and the endpoint; `error`
    itself when it is none of the Hub's errors.

    Args:
        error (`BaseException`): What huggingface_hub, transformers or datasets raised.
        repo_id (`str`), repo_type (`str`), revision (`str`, *optional*): The repo being read or written.
        action (`str`, *optional*, defaults to `"download"`): What was being done (`"download"`, `"push to"`), for
            the message.
        filename (`str`, *optional*): The file asked for, if one.

    Returns:
        [`HubConnectionError`], `FileNotFoundError` or `OSError` (chain it with `raise ... from error`).
    """
    where = describe_repo(repo_id, repo_type, revision)
    if isinstance(error, HubConnectionError):
        return error
    if isinstance(error, HFValidationError):
        if action != "download":
            return ValueError(f"{repo_id!r} is not a valid repo id ('org/name' or 'name'): {error}")
        return FileNotFoundError(
            f"{repo_id!r} is neither a local folder nor a valid repo id ('org/name'): no such folder, and {error}"
        )
    if isinstance(error, RevisionNotFoundError):
        return FileNotFoundError(f"revision not found: {where}.")
    if isinstance(error, RepositoryNotFoundError):
        return FileNotFoundError(f"repository not found (or private without a valid token): {where}.")
    if isinstance(error, LocalEntryNotFoundError) or is_connection_error(error):
        if isinstance(error, LocalEntryNotFoundError) or _refused(error):
            what = f"cannot reach {constants.ENDPOINT}"
            what += " and no cached copy was found" if isinstance(error, LocalEntryNotFoundError) else ""
        else:
            what = f"the connection to {constants.ENDPOINT} was lost"
        return HubConnectionError(
            f"cannot {action} {where}: {what} ({type(error).__name__}: {error})",
            repo_id=repo_id,
            repo_type=repo_type,
            revision=revision,
        )
    if isinstance(error, EntryNotFoundError):
        return FileNotFoundError(f"file {filename!r} not found in {where}.")
    if isinstance(error, HfHubHTTPError):
        return OSError(f"the Hub refused a request for {where}: {error}")
    return error


@contextlib.contextmanager
def hub_errors(
    repo_id: str, repo_type: str = "model", revision: str | None = None, *, action: str = "download"
) -> Iterator[None]:
    """Context manager: Hub client errors raised inside become [`hub_error`]'s typed errors (chained); any other
    error passes through unchanged.

    Example:
        ```py
        with hub_errors("org/model", action="download"):
            model = AutoModel.from_pretrained("org/model")
        ```
    """
    try:
        yield
    except Exception as error:  # mapped to typed errors below; others re-raised as they are
        mapped = hub_error(error, repo_id, repo_type, revision, action=action)
        if mapped is error:
            raise
        raise mapped from error


def raise_hub_error(
    error: Exception,
    repo_id: str,
    repo_type: str,
    revision: str | None,
    filename: str | None = None,
    *,
    action: str = "download",
):
    """Raise [`hub_error`]`(error, ...)` chained to `error`, or `error` itself when it is no Hub client error (for
    an `except` clause; [`hub_errors`] is the same as a context manager)."""
    mapped = hub_error(error, repo_id, repo_type, revision, action=action, filename=filename)
    if mapped is error:
        raise error
    raise mapped from error


def download_snapshot(
    repo_id: str,
    *,
    repo_type: str = "model",
    revision: str | None = None,
    allow_patterns: list[str] | None = None,
    **download_kwargs,
) -> Path:
    """`snapshot_download` with errors that name the repo, revision and endpoint. The folder's name is the commit
    sha the revision resolved to. Files enter the cache only once complete, so a failed download leaves no partial
    file there.

    Raises:
        `FileNotFoundError`: repository or revision not found, or `repo_id` is neither a folder nor a repo id.
        [`HubConnectionError`]: the Hub cannot be reached (and nothing is cached) or the connection failed.
        `OSError`: any other refusal of the Hub.
    """
    with hub_errors(repo_id, repo_type, revision):
        return Path(
            snapshot_download(
                repo_id=repo_id,
                repo_type=repo_type,
                revision=revision,
                allow_patterns=allow_patterns,
                **download_kwargs,
            )
        )


def load_remote_card(repo_id: str, *, repo_type: str = "model", revision: str | None = None, token=None):
    """The README card on the Hub at `revision`, or `None` if the repo or branch has none yet."""
    card_class = DatasetCard if repo_type == "dataset" else ModelCard
    try:
        with hub_errors(repo_id, repo_type, revision):
            path = hf_hub_download(repo_id, "README.md", repo_type=repo_type, revision=revision, token=token)
    except FileNotFoundError as error:
        if isinstance(error.__cause__, EntryNotFoundError | RevisionNotFoundError):
            return None
        raise
    return card_class(Path(path).read_text(encoding="utf-8"))


def push_folder(
    write: Callable[[Path], None],
    card_for: Callable[[], object],
    repo_id: str,
    *,
    repo_type: str = "model",
    revision: str | None = None,
    private: bool | None = None,
    token=None,
    commit_message: str = "Upload with hf_explvec",
    commit_description: str | None = None,
    create_pr: bool = False,
    delete_patterns: list[str] | None = None,
):
    r"""
    Create the repo (and branch) if needed, `write` the files into a temporary folder, add the card (merged with the
    README already on the Hub, see [`~hf_explvec.hub.cards.merge_cards`]), and upload everything in one commit.

    Args:
        write (`Callable[[Path], None]`): Writes the files into the folder it is given.
        card_for (`Callable[[], ModelCard]`): Builds the card.
        repo_id (`str`): The repository; created if missing.
        repo_type, revision, private, token, commit_message, commit_description, create_pr, delete_patterns: As in
            `HfApi.upload_folder`; a missing branch `revision` is created from `main`.

    Returns:
        `huggingface_hub.CommitInfo` (its `oid` is the new commit sha).

    Raises:
        [`HubConnectionError`]: the connection failed (no commit was made unless the server received it whole).
        `FileNotFoundError` / `OSError`: the Hub refused (naming the repo, the revision and the endpoint).
    """
    api = HfApi(token=token)
    with hub_errors(repo_id, repo_type, revision, action="push to"):
        repo_id = api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True).repo_id
        if revision not in (None, "main") and not create_pr:
            api.create_branch(repo_id, repo_type=repo_type, branch=revision, exist_ok=True)
        remote_card = load_remote_card(repo_id, repo_type=repo_type, revision=revision, token=token)
        with tempfile.TemporaryDirectory() as folder:
            write(Path(folder))
            merge_cards(card_for(), remote_card).save(Path(folder) / "README.md")
            return api.upload_folder(
                repo_id=repo_id,
                repo_type=repo_type,
                folder_path=folder,
                revision=revision,
                commit_message=commit_message,
                commit_description=commit_description,
                create_pr=create_pr,
                delete_patterns=delete_patterns,
            )


__all__ = [
    "HubConnectionError",
    "describe_repo",
    "download_snapshot",
    "hub_error",
    "hub_errors",
    "is_connection_error",
    "load_remote_card",
    "push_folder",
    "raise_hub_error",
]
