"""SHAP-labelled splits by name and on the Hub: [`load_split`], [`push_shap_dataset`] with its card
([`shap_dataset_card`]), and the provenance a labelled split carries ([`shap_provenance`]).

The provenance [`~hf_explvec.data.label_dataset`] records travels in `info.description` (one line starting with
`hf_explvec SHAP provenance: `), which `save_to_disk`, `select`, `train_test_split`, ... keep. On the Hub it is the
`shap_provenance` key of the card's metadata, which [`load_split`] puts back into `info.description`.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import datasets
from huggingface_hub import DatasetCard, HfApi

from ..hub import dataset_card, describe_repo, load_remote_card, raise_hub_error

__all__ = [
    "SHAP_COLUMNS",
    "card_provenance",
    "load_split",
    "push_shap_dataset",
    "shap_dataset_card",
    "shap_provenance",
    "with_provenance",
]

logger = logging.getLogger(__name__)

SHAP_COLUMNS = ("shap_values", "shap_target")
PROVENANCE_LINE = "hf_explvec SHAP provenance: "


def with_provenance(description: str | None, provenance: dict) -> str:
    kept = [line for line in (description or "").splitlines() if not line.startswith(PROVENANCE_LINE)]
    kept.append(PROVENANCE_LINE + json.dumps(provenance, sort_keys=True))
    return "\n".join(kept).strip()


def shap_provenance(dataset) -> dict | None:
    """The provenance [`label_dataset`] recorded in `dataset.info.description` (kept by `save_to_disk`, `select`,
    `train_test_split`, ... and restored from the card by [`load_split`]), or `None`."""
    description = dataset.info.description or ""
    for line in reversed(description.splitlines()):
        if line.startswith(PROVENANCE_LINE):
            return json.loads(line[len(PROVENANCE_LINE) :])
    return None


# -- by name, and to the Hub ---------------------------------------------------------------------------------------
def card_provenance(name_or_path: str, revision: str | None, token) -> dict | None:
    """`shap_provenance` from the card's metadata: the README of a local folder or of a Hub data set repo."""
    try:
        readme = Path(name_or_path) / "README.md"
        if Path(name_or_path).is_dir():
            card = DatasetCard(readme.read_text(encoding="utf-8")) if readme.is_file() else None
        else:
            card = load_remote_card(name_or_path, repo_type="dataset", revision=revision, token=token)
    except (OSError, ValueError) as error:  # best effort: the data loaded, only its card is unreadable
        logger.debug("no card read for %s: %s", name_or_path, error)
        return None
    provenance = card.data.to_dict().get("shap_provenance") if card is not None else None
    return provenance if isinstance(provenance, dict) else None


def load_split(
    name_or_path: str | Path,
    split: str = "train",
    *,
    revision: str | None = None,
    streaming: bool = False,
    token: str | bool | None = None,
    **load_kwargs,
) -> datasets.Dataset | datasets.IterableDataset:
    r"""Load one split with `datasets.load_dataset`: a Hub repo id (the endpoint of `HF_ENDPOINT`, e.g. a
    [`~hf_explvec.testing.LocalHub`]), a local folder, or a packaged builder (`"imagefolder"`, `"parquet"`, ... with
    `data_files=`).

    When the card of a data set pushed by [`push_shap_dataset`] holds the SHAP provenance, it is put back into
    `info.description`, so [`shap_provenance`] works on the loaded split as on the one that was pushed.

    Args:
        name_or_path (`str` or `Path`): what `load_dataset` takes as `path`.
        split (`str`, *optional*, defaults to `"train"`): e.g. `"validation"`, `"train[:10%]"`.
        revision (`str`, *optional*): branch, tag or commit sha of a Hub repo.
        streaming (`bool`, *optional*, defaults to `False`): return an `IterableDataset`.
        token (`str` or `bool`, *optional*): Hub token.
        load_kwargs: more arguments for `datasets.load_dataset` (`name`, `data_files`, `num_proc`, ...).

    Returns:
        `datasets.Dataset` (or `datasets.IterableDataset` with `streaming=True`).

    Raises:
        `TypeError`: `name_or_path` is not a `str` or `Path`. `ValueError`: it is empty.
        `FileNotFoundError`: no such data set (naming the repo, the revision and the endpoint).
        `ValueError`: no such split (naming the splits there are).
    """
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise TypeError(f"name_or_path must be a str or Path, got {type(name_or_path).__name__}")
    if not str(name_or_path).strip():
        raise ValueError(f"name_or_path must name a data set (a repo id, folder or builder), got {name_or_path!r}")
    name = str(name_or_path)
    try:
        dataset = datasets.load_dataset(
            name, split=split, revision=revision, streaming=streaming, token=token, **load_kwargs
        )
    except datasets.exceptions.DatasetNotFoundError as error:
        raise FileNotFoundError(f"data set not found: {describe_repo(name, 'dataset', revision)}: {error}") from error
    except Exception as error:  # a failed connection becomes HubConnectionError naming the repo; others unchanged
        raise_hub_error(error, name, "dataset", revision)
    provenance = card_provenance(name, revision, token)
    if provenance is not None and shap_provenance(dataset) is None:
        dataset.info.description = with_provenance(dataset.info.description, provenance)
    return dataset


def _describe_columns(features: datasets.Features) -> str:
    lines = []
    for name, feature in features.items():
        if name == "shap_values":
            text = f"{feature.length} float32 Kernel SHAP values, one per patch, row-major over the patch grid"
        elif name == "shap_target":
            text = "the explained class (int)"
        elif isinstance(feature, datasets.ClassLabel):
            shown = ", ".join(feature.names[:10]) + (", ..." if feature.num_classes > 10 else "")
            text = f"class label, {feature.num_classes} classes ({shown})"
        else:
            text = type(feature).__name__ if not isinstance(feature, datasets.Value) else feature.dtype
        lines.append(f"- `{name}`: {text}")
    return "\n".join(lines)


def shap_dataset_card(dataset: datasets.Dataset, repo_id: str, provenance: dict, remote_card=None) -> DatasetCard:
    """hf_explvec's card for a SHAP-labelled data set (`hub_cards/shap_dataset.md`), on top of `remote_card`, the
    README `push_to_hub` just wrote: its metadata (`dataset_info`, `configs`, which `load_dataset` needs, and any
    other key) is kept and ours added (`library_name`, tags, `shap_provenance`); a body someone wrote is kept.
    Built by [`hf_explvec.hub.cards.dataset_card`]."""
    return dataset_card(repo_id, provenance, _describe_columns(dataset.features), remote_card)


def push_shap_dataset(
    dataset: datasets.Dataset,
    repo_id: str,
    *,
    split: str | None = None,
    provenance: dict | None = None,
    private: bool | None = None,
    token: str | None = None,
    revision: str | None = None,
    commit_message: str = "Upload SHAP-labelled data set with hf_explvec",
    **push_kwargs,
):
    r"""Push a SHAP-labelled data set with `Dataset.push_to_hub`, then write hf_explvec's card over the README it
    made ([`shap_dataset_card`]): `load_dataset(repo_id)` works as for any pushed data set, and the card adds
    `library_name`, tags and the provenance (model, revision or weights hash, N, seed, baseline, value, target,
    patch size, M). A README someone wrote keeps its text; only its metadata is updated.

    Args:
        dataset (`datasets.Dataset`): with `shap_values` and `shap_target` columns, e.g. from [`label_dataset`].
        repo_id (`str`): `"org/name"` (or `"name"` in the token's namespace).
        split (`str`, *optional*): the split name (defaults to the data set's split, or `"train"`).
        provenance (`dict`, *optional*): defaults to [`shap_provenance`]`(dataset)`.
        private, token, revision: as for `push_to_hub`.
        commit_message (`str`, *optional*): of the data commit.
        push_kwargs: more arguments for `Dataset.push_to_hub` (`max_shard_size`, `num_shards`, ...).

    Returns:
        `huggingface_hub.CommitInfo` of the card commit (the last one).

    Raises:
        `TypeError`: not a `datasets.Dataset`, a `repo_id` that is not a `str`, a `provenance` that is not a `dict`.
        `ValueError`: SHAP columns or provenance missing, an empty `repo_id`.
        `FileNotFoundError` / `OSError`: the Hub refused (naming repo, revision and endpoint).
    """
    if not isinstance(dataset, datasets.Dataset):
        raise TypeError(f"dataset must be a datasets.Dataset, got {type(dataset).__name__}")
    if not isinstance(repo_id, str):
        raise TypeError(f"repo_id must be a str like 'org/name', got {type(repo_id).__name__}")
    if not repo_id.strip():
        raise ValueError(f"repo_id must be a repo id like 'org/name', got {repo_id!r}")
    if provenance is not None and not isinstance(provenance, dict):
        raise TypeError(f"provenance must be a dict (see shap_provenance), got {type(provenance).__name__}")
    missing = [column for column in SHAP_COLUMNS if column not in dataset.column_names]
    if missing:
        raise ValueError(
            f"dataset lacks column(s) {missing} (label it with label_dataset); it has {dataset.column_names}"
        )
    provenance = provenance if provenance is not None else shap_provenance(dataset)
    if provenance is None:
        raise ValueError(
            "no SHAP provenance in dataset.info.description: label it with label_dataset, or pass provenance="
        )
    api = HfApi(token=token)
    try:
        repo_id = api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True).repo_id
        dataset.push_to_hub(
            repo_id, split=split, private=private, token=token, revision=revision, commit_message=commit_message,
            **push_kwargs,
        )  # fmt: skip
        remote = load_remote_card(repo_id, repo_type="dataset", revision=revision, token=token)
        card = shap_dataset_card(dataset, repo_id, provenance, remote)
        return api.upload_file(
            path_or_fileobj=str(card).encode("utf-8"),
            path_in_repo="README.md",
            repo_id=repo_id,
            repo_type="dataset",
            revision=revision,
            commit_message="hf_explvec card: SHAP provenance",
        )
    except Exception as error:  # Hub errors (refusals, failed connections) name the repo; others unchanged
        raise_hub_error(error, repo_id, "dataset", revision, action="push to")
