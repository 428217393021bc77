"""Hub faults and bad input on the vector and model Hub paths (issue 9, groups 4 and 7).

Every case asserts the error type, a message naming the problem, and that nothing changed: the remote repo's commits
and files (sha256 of the server's whole repo store), the LFS store, the client cache, and the earlier revision, which
still loads bit for bit.
"""

import hashlib
import json
import time
from pathlib import Path

import datasets
import pytest
import torch
from huggingface_hub import HfApi, constants
from transformers import AutoModel

from hf_explvec import (
    HubConnectionError,
    SelfExplainingCLIPVision,
    TaskVector,
    TaskVectorConfig,
    load_split,
    push_shap_dataset,
)
from hf_explvec.testing import tiny_clip_model


# ----------------------------------------------------------------------------------------------------- helpers
def make_vector(seed=0):
    base, finetuned = tiny_clip_model(seed=seed), tiny_clip_model(seed=seed + 1)
    return TaskVector.from_models(base, finetuned, TaskVectorConfig(source_dataset="digits", recommended_lam=0.5))


def make_model(seed=0):
    generator = torch.Generator().manual_seed(seed)
    embeddings = torch.randn(2, 16, generator=generator)
    return SelfExplainingCLIPVision.from_clip(tiny_clip_model(seed=seed), ["cat", "dog"], class_embeddings=embeddings)


def sha256_files(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def assert_same_tensors(a: dict, b: dict):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def server_state(hub, repo_id):
    """Everything a failed push must leave as it was: commits, repo files and LFS objects, byte for byte."""
    repo_type = "dataset" if repo_id == "org/shap" else "model"
    return hub.commits(repo_id, repo_type), sha256_files(hub.root / "repos"), sha256_files(hub.root / "lfs")


def assert_nothing_partial(hub, repo_id, before, kind="lfs_upload"):
    commits, repos, lfs = server_state(hub, repo_id)
    assert (commits, repos) == before[:2]  # no new (partial) commit; refs, trees and files byte for byte
    if kind == "commit":  # the LFS objects were uploaded before the cut commit: stored, but referenced by nothing
        assert lfs.items() >= before[2].items()
    else:  # a cut LFS upload stores nothing
        assert lfs == before[2]
    assert list((hub.root / "tmp").iterdir()) == []  # no leftover of a cut upload


def assert_cache_clean():
    cache = Path(constants.HF_HUB_CACHE)
    leftovers = [p.name for p in cache.rglob("*") if p.name.endswith(".incomplete")]
    assert leftovers == []
    assert not list(cache.glob("models--*/snapshots/*/*.safetensors"))  # nothing a later offline load could use


@pytest.fixture
def no_retry_wait(monkeypatch):
    """huggingface_hub waits 1-8 s between its retries: skip the waits (the retries still happen)."""
    monkeypatch.setattr(time, "sleep", lambda seconds: None)


def message_names(error, *fragments):
    for fragment in fragments:
        assert fragment in str(error), (fragment, str(error))


# ------------------------------------------------------------------------------------------- group 4: pushes
PUSH_FAULTS = [
    pytest.param("lfs_upload", 6, 0, id="lfs-upload-cut-before-body"),
    pytest.param("lfs_upload", 6, None, id="lfs-upload-cut-mid-body"),
    pytest.param("commit", 1, None, id="commit-cut-mid-body"),
    pytest.param("commit", 1, 0, id="commit-cut-before-body"),
    pytest.param("refused", 0, None, id="server-stopped"),
]


def push_with_fault(hub, push, kind, times, after_bytes):
    if kind == "refused":
        hub.stop()
    else:
        hub.inject_fault(kind, times, after_bytes=after_bytes)
    try:
        with pytest.raises(HubConnectionError) as info:
            push()
    finally:
        if kind == "refused":
            hub.start()
        hub.clear_faults()
    return info.value


@pytest.mark.parametrize(("kind", "times", "after_bytes"), PUSH_FAULTS)
@pytest.mark.parametrize("revision", [None, "experiment"])
def test_vector_push_fault_raises_and_keeps_the_earlier_revision(
    local_hub, no_retry_wait, kind, times, after_bytes, revision
):
    first = make_vector(seed=0)
    first.push_to_hub("org/vec", revision=revision)
    before = server_state(local_hub, "org/vec")

    error = push_with_fault(
        local_hub, lambda: make_vector(seed=5).push_to_hub("org/vec", revision=revision), kind, times, after_bytes
    )
    message_names(error, "'org/vec'", f"'{revision or 'main'}'", local_hub.endpoint)
    assert isinstance(error, ConnectionError) and error.repo_id == "org/vec"
    assert error.revision == (revision or "main") and error.endpoint == local_hub.endpoint
    if kind == "refused":
        assert "cannot reach" in str(error)
    assert_nothing_partial(local_hub, "org/vec", before, kind)
    loaded = TaskVector.from_pretrained("org/vec", revision=revision, force_download=True)
    assert_same_tensors(loaded.state_dict(), first.state_dict())


@pytest.mark.parametrize(("kind", "times", "after_bytes"), PUSH_FAULTS)
def test_model_push_fault_raises_and_keeps_the_earlier_revision(local_hub, no_retry_wait, kind, times, after_bytes):
    first = make_model(seed=0)
    first.push_to_hub("org/model")
    before = server_state(local_hub, "org/model")

    error = push_with_fault(local_hub, lambda: make_model(seed=3).push_to_hub("org/model"), kind, times, after_bytes)
    message_names(error, "'org/model'", "'main'", local_hub.endpoint)
    assert_nothing_partial(local_hub, "org/model", before, kind)
    loaded = AutoModel.from_pretrained("org/model", force_download=True)
    assert_same_tensors(loaded.state_dict(), first.state_dict())


# ----------------------------------------------------------------------------------------- group 4: downloads
@pytest.mark.parametrize(
    ("kind", "after_bytes"),
    [
        pytest.param("download", 0, id="download-cut-before-body"),
        pytest.param("download", None, id="download-cut-mid-body"),
        pytest.param("refused", None, id="connection-refused"),
    ],
)
def test_vector_download_fault_raises_and_leaves_the_cache_clean(local_hub, no_retry_wait, kind, after_bytes):
    vector = make_vector()
    commit = vector.push_to_hub("org/vec")
    before = server_state(local_hub, "org/vec")
    if kind == "refused":
        local_hub.stop()
    else:  # more cuts than the client's resumes, for every file the snapshot fetches in parallel
        local_hub.inject_fault(kind, 40, after_bytes=after_bytes)
    try:
        with pytest.raises(HubConnectionError) as info:
            TaskVector.from_pretrained("org/vec")
    finally:
        if kind == "refused":
            local_hub.start()
        local_hub.clear_faults()
    message_names(info.value, "'org/vec'", "'main'", local_hub.endpoint)
    assert ("cannot reach" in str(info.value)) == (kind == "refused")
    assert_cache_clean()
    assert server_state(local_hub, "org/vec") == before
    loaded = TaskVector.from_pretrained("org/vec")
    assert loaded.commit_hash == commit.oid
    assert_same_tensors(loaded.state_dict(), vector.state_dict())


# ------------------------------------------------------------------------------- group 7: what a repo holds
def upload_vector_with(tmp_path, repo_id, edit):
    """Push a valid vector folder to `repo_id` after `edit(folder)` changed it; returns the folder."""
    folder = tmp_path / repo_id.replace("/", "--")
    make_vector().save_pretrained(folder)
    edit(folder)
    HfApi().create_repo(repo_id)
    HfApi().upload_folder(folder_path=folder, repo_id=repo_id)
    return folder


def write_config(**changes):
    def edit(folder):
        config = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**config, **changes}))

    return edit


def write_text(name, text):
    def edit(folder):
        (folder / name).write_text(text)

    return edit


@pytest.mark.parametrize(
    ("edit", "error", "match"),
    [
        pytest.param(write_text("config.json", "{not json"), ValueError, "not valid JSON", id="garbage-config"),
        pytest.param(write_text("config.json", ""), ValueError, "not valid JSON", id="empty-config"),
        pytest.param(write_text("config.json", "[1, 2]"), ValueError, "JSON object, got list", id="list-config"),
        pytest.param(write_config(alpha="banana"), TypeError, "alpha must be a real number", id="alpha-banana"),
        pytest.param(write_config(format_version=7), ValueError, "format_version 7, newer than", id="newer-format"),
        pytest.param(write_config(vector_type=None), ValueError, "type None", id="no-vector-type"),
    ],
)
def test_bad_remote_config_is_refused_naming_the_repo(local_hub, tmp_path, edit, error, match):
    upload_vector_with(tmp_path, "org/bad", edit)
    before = server_state(local_hub, "org/bad")
    with pytest.raises(error, match=match) as info:
        TaskVector.from_pretrained("org/bad")
    message_names(info.value, "'org/bad'", "config.json", local_hub.endpoint)
    assert server_state(local_hub, "org/bad") == before


@pytest.mark.parametrize(
    "path",
    ["./no/such/vector", "../vectors/typo", "~/vectors/typo", "C:\\vectors\\typo", "no such vector"],
)
def test_mistyped_local_path_is_neither_folder_nor_repo_id(local_hub, tmp_path, path):
    with pytest.raises(FileNotFoundError, match="neither a local folder nor a valid repo id") as info:
        TaskVector.from_pretrained(path)
    message_names(info.value, repr(path))
    cache = Path(constants.HF_HUB_CACHE)
    assert not cache.exists() or not list(cache.glob("models--*"))  # the Hub was never asked
    assert not (tmp_path / "no").exists()


def test_a_file_given_as_vector_folder_is_refused(local_hub, tmp_path):
    make_vector().save_pretrained(tmp_path / "vec")
    path = tmp_path / "vec" / "config.json"
    before = sha256_files(tmp_path / "vec")
    with pytest.raises(FileNotFoundError, match="neither a local folder nor a valid repo id"):
        TaskVector.from_pretrained(path)
    assert sha256_files(tmp_path / "vec") == before


def test_push_to_an_invalid_repo_id_is_refused(local_hub):
    with pytest.raises(ValueError, match="not a valid repo id"):
        make_vector().push_to_hub("org/with space/and/slashes")


# ------------------------------------------------------------------------------- group 4: models and data sets
@pytest.mark.parametrize(
    ("kind", "after_bytes"),
    [pytest.param("download", None, id="download-cut"), pytest.param("refused", None, id="connection-refused")],
)
def test_model_download_fault_raises_and_leaves_the_cache_clean(local_hub, no_retry_wait, kind, after_bytes):
    model = make_model()
    model.push_to_hub("org/model")
    before = server_state(local_hub, "org/model")
    if kind == "refused":
        local_hub.stop()
    else:
        local_hub.inject_fault(kind, 40, after_bytes=after_bytes)
    try:
        with pytest.raises(HubConnectionError) as info:
            SelfExplainingCLIPVision.from_pretrained("org/model", force_download=True)
    finally:
        if kind == "refused":
            local_hub.start()
        local_hub.clear_faults()
    message_names(info.value, "'org/model'", "'main'", local_hub.endpoint)
    assert_cache_clean()
    assert server_state(local_hub, "org/model") == before
    assert_same_tensors(SelfExplainingCLIPVision.from_pretrained("org/model").state_dict(), model.state_dict())


def shap_dataset(seed):
    generator = torch.Generator().manual_seed(seed)
    data = {
        "label": [0, 1, 0, 1],
        "shap_values": torch.randn(4, 16, generator=generator).tolist(),
        "shap_target": [0, 1, 0, 1],
    }
    return datasets.Dataset.from_dict(data)


@pytest.mark.parametrize(("kind", "times", "after_bytes"), PUSH_FAULTS)
def test_dataset_push_fault_raises_and_keeps_the_earlier_revision(local_hub, no_retry_wait, kind, times, after_bytes):
    provenance = {"model": "tiny", "num_samples": 8}
    first = shap_dataset(0)
    push_shap_dataset(first, "org/shap", provenance=provenance)
    before = server_state(local_hub, "org/shap")
    error = push_with_fault(
        local_hub,
        lambda: push_shap_dataset(shap_dataset(1), "org/shap", provenance=provenance),
        kind,
        times,
        after_bytes,
    )
    message_names(error, "'org/shap'", "'main'", local_hub.endpoint)
    assert error.repo_type == "dataset"
    assert_nothing_partial(local_hub, "org/shap", before, kind)
    loaded = load_split("org/shap", "train", download_mode="force_redownload")
    assert loaded["shap_values"] == first["shap_values"]


@pytest.mark.parametrize(
    "kind", [pytest.param("download", id="download-cut"), pytest.param("refused", id="connection-refused")]
)
def test_dataset_download_fault_raises(local_hub, no_retry_wait, kind):
    push_shap_dataset(shap_dataset(0), "org/shap", provenance={"model": "tiny"})
    before = server_state(local_hub, "org/shap")
    if kind == "refused":
        local_hub.stop()
    else:
        local_hub.inject_fault(kind, 40, after_bytes=0)
    try:
        with pytest.raises(HubConnectionError) as info:
            load_split("org/shap", "train")
    finally:
        if kind == "refused":
            local_hub.start()
        local_hub.clear_faults()
    message_names(info.value, "'org/shap'", local_hub.endpoint)
    assert server_state(local_hub, "org/shap") == before
    assert [p for p in Path(constants.HF_HUB_CACHE).rglob("*.incomplete")] == []
