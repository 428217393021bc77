"""Hub plumbing shared by vectors, models and data sets: cards, pushes, and downloads with clear errors.

Cards are rendered from the Jinja templates in `hub_cards/` (shipped as `hf_explvec.hub_cards`) with
huggingface_hub's `ModelCard`/`DatasetCard`. A card we generate ends with a marker holding the SHA-256 of its body.
When pushing again, a remote README whose body still matches its marker is ours, unedited, and is regenerated; any
other README (one the user wrote or edited) keeps its body and only gets its metadata updated.
"""

import hashlib
import logging
import re
import tempfile
from collections.abc import Callable
from importlib.resources import files
from pathlib import Path

from huggingface_hub import (
    CardData,
    DatasetCard,
    HfApi,
    ModelCard,
    constants,
    hf_hub_download,
    snapshot_download,
)
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

logger = logging.getLogger(__name__)

LIBRARY_NAME = "hf_explvec"
BASE_TAGS = ["hf_explvec", "explainability", "task-arithmetic", "clip"]
_MARKER = re.compile(r"\n?<!-- hf_explvec card sha256=([0-9a-f]{64}) -->\s*$")


def template_path(name: str) -> Path:
    """Path of a card template shipped in `hf_explvec.hub_cards` (`task_vector`, `self_explaining_model`,
    `shap_dataset`)."""
    path = files("hf_explvec.hub_cards").joinpath(f"{name}.md")
    if not path.is_file():
        raise KeyError(f"no card template named {name!r} in hf_explvec.hub_cards.")
    return Path(str(path))


def _body_hash(body: str) -> str:
    return hashlib.sha256(body.strip().encode()).hexdigest()


def render_card(template: str, card_data: CardData, card_class=ModelCard, **context):
    """Render `template` with `card_data` as YAML metadata and `context` for the body, and mark it as ours."""
    card = card_class.from_template(card_data, template_path=str(template_path(template)), **context)
    body = card.text.strip()
    card.text = f"{body}\n\n<!-- hf_explvec card sha256={_body_hash(body)} -->\n"
    return card


def is_unedited_generated(card) -> bool:
    """Whether `card` is one we generated and nobody edited since (its body matches its marker)."""
    match = _MARKER.search(card.text)
    return bool(match) and _body_hash(card.text[: match.start()]) == match.group(1)


def merge_cards(new_card, remote_card):
    """The card to push when `remote_card` is already on the Hub: `new_card` if the remote one is our unedited
    card; otherwise the remote body with its metadata updated by `new_card`'s (tags are merged)."""
    if remote_card is None or is_unedited_generated(remote_card):
        return new_card
    metadata = remote_card.data.to_dict()
    new_metadata = new_card.data.to_dict()
    tags = list(dict.fromkeys((metadata.get("tags") or []) + (new_metadata.get("tags") or [])))
    metadata.update({k: v for k, v in new_metadata.items() if v is not None})
    metadata["tags"] = tags
    merged = type(remote_card)(remote_card.content)
    merged.data = type(remote_card.data)(**metadata)
    logger.info("kept the README already on the Hub (it was written or edited by hand); updated its metadata.")
    return merged


def describe_repo(repo_id: str, repo_type: str, revision: str | None) -> str:
    return f"{repo_type} repo {repo_id!r} at revision {revision or 'main'!r} on {constants.ENDPOINT}"


def raise_hub_error(error: Exception, repo_id: str, repo_type: str, revision: str | None, filename: str | None = None):
    """Raise a built-in error type that names the repo, revision and endpoint, chained to the client's error."""
    where = describe_repo(repo_id, repo_type, revision)
    if isinstance(error, RevisionNotFoundError):
        raise FileNotFoundError(f"revision not found: {where}.") from error
    if isinstance(error, RepositoryNotFoundError):
        raise FileNotFoundError(f"repository not found (or private without a valid token): {where}.") from error
    if isinstance(error, LocalEntryNotFoundError):
        raise ConnectionError(
            f"cannot reach {constants.ENDPOINT} to resolve {where}, and no cached copy was found: {error}"
        ) from error
    if isinstance(error, EntryNotFoundError):
        raise FileNotFoundError(f"file {filename!r} not found in {where}.") from error
    if isinstance(error, HfHubHTTPError):
        raise OSError(f"the Hub refused a request for {where}: {error}") from error
    raise error


def download_snapshot(
    repo_id: str,
    *,
    repo_type: str = "model",
    revision: str | None = None,
    allow_patterns: list[str] | None = None,
    **download_kwargs,
) -> Path:
    """`snapshot_download` with errors that name the repo, revision and endpoint. The folder's name is the commit
    sha the revision resolved to.

    Raises:
        `FileNotFoundError`: repository or revision not found. `ConnectionError`: the Hub cannot be reached and
        nothing is cached. `OSError`: any other refusal of the Hub.
    """
    try:
        return Path(
            snapshot_download(
                repo_id=repo_id,
                repo_type=repo_type,
                revision=revision,
                allow_patterns=allow_patterns,
                **download_kwargs,
            )
        )
    except Exception as error:  # mapped to typed errors below
        raise_hub_error(error, repo_id, repo_type, revision)


def load_remote_card(repo_id: str, *, repo_type: str = "model", revision: str | None = None, token=None):
    """The README card on the Hub at `revision`, or `None` if the repo or branch has none yet."""
    card_class = DatasetCard if repo_type == "dataset" else ModelCard
    try:
        path = hf_hub_download(repo_id, "README.md", repo_type=repo_type, revision=revision, token=token)
    except (EntryNotFoundError, RevisionNotFoundError):
        return None
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
    """Create the repo (and branch) if needed, `write` the files into a temporary folder, add the card (merged with
    the README already on the Hub), and upload everything in one commit.

    Returns:
        `huggingface_hub.CommitInfo` (its `oid` is the new commit sha).
    """
    api = HfApi(token=token)
    try:
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
    except HfHubHTTPError as error:
        raise_hub_error(error, repo_id, repo_type, revision)


__all__ = [
    "BASE_TAGS",
    "LIBRARY_NAME",
    "describe_repo",
    "download_snapshot",
    "is_unedited_generated",
    "load_remote_card",
    "merge_cards",
    "push_folder",
    "raise_hub_error",
    "render_card",
    "template_path",
]
