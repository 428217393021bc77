"""Tests for hf_explvec.hub.loopback: the real huggingface_hub, datasets and transformers clients against it."""

import hashlib
import json
import os
import socket
import sys
import time
from pathlib import Path

import httpx2
import numpy as np
import pytest
from huggingface_hub import (
    CommitOperationAdd,
    HfApi,
    HfFileSystem,
    RepoCard,
    constants,
    get_session,
    hf_hub_download,
    hf_hub_url,
    snapshot_download,
)
from huggingface_hub.errors import (
    HfHubHTTPError,
    LocalEntryNotFoundError,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from hf_explvec.hub.loopback import FAKE_TOKEN, HubError, LocalHub, hub_client_env


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


# ------------------------------------------------------------------------------------------------------
# Repositories
# ------------------------------------------------------------------------------------------------------


def test_environment_points_clients_at_the_local_hub(local_hub):
    assert constants.ENDPOINT == local_hub.endpoint == os.environ["HF_ENDPOINT"]
    assert constants.HUGGINGFACE_CO_URL_TEMPLATE.startswith(local_hub.endpoint + "/")
    assert constants.HF_HUB_DISABLE_XET and not constants.HF_HUB_OFFLINE
    assert sys.modules["huggingface_hub.hf_api"].api.endpoint == local_hub.endpoint
    assert HfApi().whoami()["name"] == "local-user"
    assert os.environ["HF_TOKEN"] == FAKE_TOKEN and "127.0.0.1" in os.environ["NO_PROXY"]


def test_create_repo_exist_ok_info_and_delete(local_hub):
    api = HfApi()
    url = api.create_repo("org/model")
    assert url == f"{local_hub.endpoint}/org/model" and url.repo_id == "org/model"
    with pytest.raises(HfHubHTTPError) as err:
        api.create_repo("org/model")
    assert err.value.response.status_code == 409
    assert api.create_repo("org/model", exist_ok=True).repo_id == "org/model"
    assert api.create_repo("data", repo_type="dataset").repo_id == "local-user/data"  # the token's namespace

    info = api.model_info("org/model")
    assert info.id == "org/model" and len(info.sha) == 40
    assert [s.rfilename for s in info.siblings] == [".gitattributes"]
    assert api.dataset_info("local-user/data").siblings[0].rfilename == ".gitattributes"
    assert api.repo_exists("org/model") and not api.repo_exists("org/model", repo_type="dataset")

    api.delete_repo("org/model")
    assert not api.repo_exists("org/model")
    with pytest.raises(RepositoryNotFoundError):
        api.delete_repo("org/model")
    api.delete_repo("org/model", missing_ok=True)


# ------------------------------------------------------------------------------------------------------
# Uploads: regular files, LFS files, no-op commits, deletions, pull requests
# ------------------------------------------------------------------------------------------------------


def test_upload_regular_and_lfs_files(local_hub, tmp_path):
    api = HfApi()
    api.create_repo("org/up")
    folder = tmp_path / "folder"
    (folder / "sub").mkdir(parents=True)
    (folder / "notes.txt").write_text("small text\n")
    (folder / "sub" / "weights.safetensors").write_bytes(b"\x00\x01" * 100)  # LFS by .gitattributes
    (folder / "blob.dat").write_bytes(bytes(range(256)) * 4)  # binary-looking => LFS
    big = b"0123456789abcdef" * (10 * 1024 * 1024 // 16) + b"!"  # text above the 10 MiB threshold => LFS
    (folder / "big.txt").write_bytes(big)
    api.upload_folder(folder_path=folder, repo_id="org/up")

    siblings = {s.rfilename: s for s in api.model_info("org/up", files_metadata=True).siblings}
    assert siblings["notes.txt"].lfs is None and siblings["notes.txt"].size == 11
    for name in ("sub/weights.safetensors", "blob.dat", "big.txt"):
        assert siblings[name].lfs is not None, name
    assert siblings["big.txt"].lfs.size == len(big) and siblings["big.txt"].lfs.pointer_size > 100
    attributes = local_hub.read_file("org/up", ".gitattributes").decode()
    assert "big.txt filter=lfs" in attributes and "notes.txt" not in attributes  # tracked like the Hub does

    assert _read(hf_hub_download("org/up", "big.txt")) == big
    assert _read(hf_hub_download("org/up", "sub/weights.safetensors")) == b"\x00\x01" * 100
    assert local_hub.read_file("org/up", "notes.txt") == b"small text\n"

    odd = "dir with space/ünï#code?&x=1%20.txt"  # every character the URLs must quote
    api.upload_file(path_or_fileobj=b"odd", path_in_repo=odd, repo_id="org/up")
    assert _read(hf_hub_download("org/up", odd)) == b"odd"
    assert [e.path for e in api.list_repo_tree("org/up", "dir with space")] == [odd]

    # Unchanged files are skipped by the client thanks to the `oid` in the pre-upload answer: no new commit.
    n_commits = len(local_hub.commits("org/up"))
    api.upload_file(path_or_fileobj=big, path_in_repo="big.txt", repo_id="org/up")
    api.upload_file(path_or_fileobj=b"small text\n", path_in_repo="notes.txt", repo_id="org/up")
    assert len(local_hub.commits("org/up")) == n_commits


def test_delete_files_parent_commit_and_pull_request(local_hub):
    api = HfApi()
    api.create_repo("org/ops", repo_type="dataset")
    ops = [CommitOperationAdd(f"d/{i}.txt", f"{i}".encode()) for i in range(3)]
    first = api.create_commit("org/ops", ops, commit_message="three files", repo_type="dataset")
    api.delete_file("d/0.txt", "org/ops", repo_type="dataset")
    with pytest.raises(RemoteEntryNotFoundError):
        api.delete_file("d/0.txt", "org/ops", repo_type="dataset")
    api.delete_folder("d", "org/ops", repo_type="dataset")
    assert api.list_repo_files("org/ops", repo_type="dataset") == [".gitattributes"]
    with pytest.raises(HfHubHTTPError) as err:  # main moved on since `first`
        add = CommitOperationAdd("x.txt", b"x")
        api.create_commit("org/ops", [add], commit_message="late", repo_type="dataset", parent_commit=first.oid)
    assert err.value.response.status_code == 412

    pr = api.upload_file(
        path_or_fileobj=b"proposal", path_in_repo="pr.txt", repo_id="org/ops", repo_type="dataset", create_pr=True
    )
    assert pr.pr_revision == "refs/pr/1" and pr.pr_num == 1
    assert _read(hf_hub_download("org/ops", "pr.txt", repo_type="dataset", revision="refs/pr/1")) == b"proposal"
    assert not api.file_exists("org/ops", "pr.txt", repo_type="dataset")  # main is untouched
    refs = api.list_repo_refs("org/ops", repo_type="dataset", include_pull_requests=True)
    assert [r.ref for r in refs.pull_requests] == ["refs/pr/1"] and refs.pull_requests[0].target_commit == pr.oid


def test_readme_metadata_is_validated(local_hub):
    api = HfApi()
    api.create_repo("org/card")
    readme = "---\nlicense: apache-2.0\ntags:\n- vision\n---\n# Card\n"
    api.upload_file(path_or_fileobj=readme.encode(), path_in_repo="README.md", repo_id="org/card")
    info = api.model_info("org/card")
    assert info.card_data.license == "apache-2.0" and info.tags == ["vision"]
    RepoCard(readme).validate(repo_type="model")
    with pytest.raises(ValueError, match="Invalid metadata"):
        api.upload_file(path_or_fileobj=b"---\nkey: [unclosed\n---\n", path_in_repo="README.md", repo_id="org/card")


# ------------------------------------------------------------------------------------------------------
# Revisions: branches, tags, commit shas
# ------------------------------------------------------------------------------------------------------


def test_download_at_branch_tag_and_commit_sha(local_hub, tmp_path):
    api = HfApi()
    api.create_repo("org/rev")
    v1 = api.upload_file(path_or_fileobj=b"v1", path_in_repo="f.txt", repo_id="org/rev").oid
    api.create_tag("org/rev", tag="v1.0")
    with pytest.raises(HfHubHTTPError):
        api.create_tag("org/rev", tag="v1.0")
    api.create_tag("org/rev", tag="v1.0", exist_ok=True)
    api.create_branch("org/rev", branch="dev/feature")  # a branch name with a slash
    api.create_branch("org/rev", branch="dev/feature", exist_ok=True)
    v2 = api.upload_file(path_or_fileobj=b"v2", path_in_repo="f.txt", repo_id="org/rev").oid
    v3 = api.upload_file(path_or_fileobj=b"v3", path_in_repo="f.txt", repo_id="org/rev", revision="dev/feature").oid
    assert len({v1, v2, v3}) == 3

    expected = {v1: b"v1", v1[:7]: b"v1", "v1.0": b"v1", "main": b"v2", None: b"v2", "dev/feature": b"v3", v3: b"v3"}
    for revision, content in expected.items():
        assert _read(hf_hub_download("org/rev", "f.txt", revision=revision)) == content, revision
    assert _read(os.path.join(snapshot_download("org/rev", revision=v1), "f.txt")) == b"v1"
    assert _read(os.path.join(snapshot_download("org/rev", revision="dev/feature"), "f.txt")) == b"v3"
    local = snapshot_download("org/rev", revision="v1.0", local_dir=tmp_path / "local")
    assert _read(os.path.join(local, "f.txt")) == b"v1"

    refs = api.list_repo_refs("org/rev")
    assert {(b.name, b.target_commit) for b in refs.branches} == {("main", v2), ("dev/feature", v3)}
    assert [(t.name, t.target_commit) for t in refs.tags] == [("v1.0", v1)]
    assert [c.commit_id for c in api.list_repo_commits("org/rev")][:2] == [v2, v1]
    assert api.model_info("org/rev", revision="v1.0").sha == v1
    assert api.revision_exists("org/rev", "dev/feature") and not api.revision_exists("org/rev", "nope")

    api.delete_tag("org/rev", tag="v1.0")
    api.delete_branch("org/rev", branch="dev/feature")
    refs = api.list_repo_refs("org/rev")
    assert [b.name for b in refs.branches] == ["main"] and refs.tags == []
    assert _read(hf_hub_download("org/rev", "f.txt", revision=v3)) == b"v3"  # commits outlive their branch


def test_not_found_errors_are_typed(local_hub):
    api = HfApi()
    api.create_repo("org/exists")
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("org/missing", "f.txt")
    with pytest.raises(RepositoryNotFoundError):
        api.model_info("org/missing")
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download("org/exists", ".gitattributes", revision="no-such-branch")
    with pytest.raises(RevisionNotFoundError):
        api.list_repo_files("org/exists", revision="0" * 40)
    with pytest.raises(RemoteEntryNotFoundError):
        hf_hub_download("org/exists", "missing.txt")
    assert not api.file_exists("org/exists", "missing.txt") and api.file_exists("org/exists", ".gitattributes")
    with pytest.raises(RevisionNotFoundError):  # commits go to existing branches only
        api.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id="org/exists", revision="no-branch")


# ------------------------------------------------------------------------------------------------------
# Downloads: Range, HEAD metadata, tree listings, HfFileSystem
# ------------------------------------------------------------------------------------------------------


def test_range_requests_and_head_metadata(local_hub):
    api = HfApi()
    api.create_repo("org/range")
    data = bytes(range(256)) * 40
    sha = api.upload_file(path_or_fileobj=data, path_in_repo="x.bin", repo_id="org/range").oid
    url = hf_hub_url("org/range", "x.bin")
    session = get_session()

    head = session.head(url)
    assert head.status_code == 200 and head.headers["X-Repo-Commit"] == sha
    assert head.headers["X-Linked-Size"] == str(len(data)) and head.headers["Accept-Ranges"] == "bytes"
    sibling = api.model_info("org/range", files_metadata=True).siblings[1]
    assert head.headers["X-Linked-Etag"].strip('"') == sibling.lfs.sha256 == hashlib.sha256(data).hexdigest()
    for header, expected in [("bytes=10-19", data[10:20]), ("bytes=10000-", data[10000:]), ("bytes=-5", data[-5:])]:
        response = session.get(url, headers={"Range": header})
        assert response.status_code == 206 and response.content == expected, header
        assert response.headers["Content-Range"].endswith(f"/{len(data)}")
    assert session.get(url, headers={"Range": f"bytes={len(data)}-"}).status_code == 416

    with HfFileSystem().open("org/range/x.bin", "rb", block_size=64) as f:  # reads through ranged GETs
        f.seek(1000)
        assert f.read(100) == data[1000:1100]


def test_lfs_upload_accepts_chunked_bodies_and_checks_content(local_hub):
    HfApi().create_repo("org/lfs")
    data = b"chunked LFS content " * 1000
    oid = hashlib.sha256(data).hexdigest()
    batch = (
        get_session()
        .post(
            f"{local_hub.endpoint}/org/lfs.git/info/lfs/objects/batch",
            json={"operation": "upload", "transfers": ["basic"], "objects": [{"oid": oid, "size": len(data)}]},
        )
        .json()
    )
    upload = batch["objects"][0]["actions"]["upload"]["href"]
    bad = get_session().put(upload, content=iter([data[:-1], b"?"]))  # a generator is sent chunked
    assert bad.status_code == 400 and "does not match" in bad.json()["error"]
    assert get_session().put(upload, content=iter([data[:100], data[100:]])).status_code == 200
    verify = batch["objects"][0]["actions"]["verify"]["href"]
    assert get_session().post(verify, json={"oid": oid, "size": len(data)}).status_code == 200
    again = (
        get_session()
        .post(
            f"{local_hub.endpoint}/org/lfs.git/info/lfs/objects/batch",
            json={"operation": "upload", "objects": [{"oid": oid, "size": len(data)}, {"oid": "xyz", "size": 1}]},
        )
        .json()["objects"]
    )
    assert "actions" not in again[0] and again[1]["error"]["code"] == 422  # already stored; invalid oid


def test_tree_pagination_paths_info_and_hffs(tmp_path):
    with LocalHub(tmp_path / "hub", tree_page_size=2) as hub, hub_client_env(hub.endpoint, tmp_path / "home"):
        api = HfApi()
        api.create_repo("org/tree", repo_type="dataset")
        ops = [CommitOperationAdd(p, p.encode()) for p in ("a.txt", "data/x.txt", "data/y.txt", "data/z/w.txt")]
        api.create_commit("org/tree", ops, commit_message="files", repo_type="dataset")
        api.upload_file(path_or_fileobj=b"new", path_in_repo="data/y.txt", repo_id="org/tree", repo_type="dataset")

        tree = list(api.list_repo_tree("org/tree", repo_type="dataset", recursive=True))  # 4 pages of 2
        expected = [".gitattributes", "a.txt", "data", "data/x.txt", "data/y.txt", "data/z", "data/z/w.txt"]
        assert [e.path for e in tree] == expected
        top = list(api.list_repo_tree("org/tree", "data", repo_type="dataset"))
        expected = [("RepoFolder", "data/z"), ("RepoFile", "data/x.txt"), ("RepoFile", "data/y.txt")]
        assert [(type(e).__name__, e.path) for e in top] == expected
        expanded = {e.path: e for e in api.list_repo_tree("org/tree", "data", repo_type="dataset", expand=True)}
        assert expanded["data/y.txt"].last_commit.title == "Upload data/y.txt with huggingface_hub"
        assert expanded["data/x.txt"].last_commit.title == "files"
        infos = api.get_paths_info("org/tree", ["a.txt", "data", "nope"], repo_type="dataset")
        assert [(type(e).__name__, e.path) for e in infos] == [("RepoFile", "a.txt"), ("RepoFolder", "data")]

        fs = HfFileSystem()
        root = "datasets/org/tree/data"
        assert sorted(fs.glob(f"{root}/**/*.txt")) == [f"{root}/{p}" for p in ("x.txt", "y.txt", "z/w.txt")]
        assert fs.read_text(f"{root}/y.txt") == "new" and fs.info(root)["type"] == "directory"
        assert fs.modified("datasets/org/tree/a.txt").year >= 2024


# ------------------------------------------------------------------------------------------------------
# datasets and transformers round trips
# ------------------------------------------------------------------------------------------------------


def test_dataset_push_to_hub_then_load_dataset(local_hub):
    import datasets
    from PIL import Image

    assert datasets.config.HF_ENDPOINT == local_hub.endpoint and not datasets.config.USE_PARQUET_EXPORT
    features = datasets.Features(
        {
            "image": datasets.Image(),
            "label": datasets.ClassLabel(names=["cat", "dog"]),
            "vector": datasets.Sequence(datasets.Value("float32")),
        }
    )
    pixels = [np.arange(48, dtype=np.uint8).reshape(4, 4, 3) * i for i in range(1, 4)]
    rows = {"image": [Image.fromarray(p) for p in pixels], "label": [0, 1, 1], "vector": [[0.5, 1.5], [], [2.25]]}
    datasets.Dataset.from_dict(rows, features=features).push_to_hub("org/pets")

    loaded = datasets.load_dataset("org/pets")
    assert list(loaded) == ["train"]
    train = loaded["train"]
    assert train.features == features
    assert train["label"][:] == [0, 1, 1] and train["vector"][:] == [[0.5, 1.5], [], [2.25]]
    assert all(np.array_equal(np.asarray(img), p) for img, p in zip(train["image"], pixels, strict=True))
    files = HfApi().list_repo_files("org/pets", repo_type="dataset")
    assert "README.md" in files and any(f.startswith("data/train-") and f.endswith(".parquet") for f in files)


@pytest.mark.slow
def test_dataset_push_and_load_with_worker_processes(local_hub):
    """`push_to_hub(num_proc=...)` uploads from *spawned* processes: they find the Hub through the environment."""
    import datasets

    datasets.Dataset.from_dict({"n": list(range(100))}).push_to_hub("org/shards", num_shards=2, num_proc=2)
    files = HfApi().list_repo_files("org/shards", repo_type="dataset")
    assert [f for f in files if f.endswith(".parquet")] == [f"data/train-0000{i}-of-00002.parquet" for i in range(2)]
    loaded = datasets.load_dataset("org/shards", num_proc=2)["train"]
    assert sorted(loaded["n"][:]) == list(range(100))


def test_transformers_push_to_hub_then_from_pretrained(local_hub):
    import torch
    from transformers import AutoConfig, AutoModel, CLIPVisionConfig, CLIPVisionModel

    config = CLIPVisionConfig(
        image_size=32, patch_size=8, hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4
    )
    torch.manual_seed(0)
    model = CLIPVisionModel(config).eval()
    model.push_to_hub("org/tiny-clip")

    assert AutoConfig.from_pretrained("org/tiny-clip").intermediate_size == 37
    loaded = AutoModel.from_pretrained("org/tiny-clip").eval()
    assert type(loaded) is CLIPVisionModel
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(pixel_values=pixels).pooler_output, model(pixel_values=pixels).pooler_output)
    assert json.loads(local_hub.read_file("org/tiny-clip", "config.json"))["hidden_size"] == 32


# ------------------------------------------------------------------------------------------------------
# Failure modes and isolation
# ------------------------------------------------------------------------------------------------------


def test_refused_connection_gives_a_clear_client_error(tmp_path):
    with socket.socket() as sock:  # a free port that nothing listens on once the socket is closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with hub_client_env(f"http://127.0.0.1:{port}", tmp_path / "home"):
        with pytest.raises(httpx2.ConnectError, match="refused"):
            HfApi().model_info("org/model")
        # (hf_hub_download says the same after ~23 s of client-side retries with backoff: not tested here)
        with pytest.raises(LocalEntryNotFoundError, match="check your internet connection") as err:
            snapshot_download("org/model")
        assert isinstance(err.value.__cause__, httpx2.ConnectError)


def _sha256_files(root) -> dict[str, str]:
    """sha256 of every file under `root`, by relative path (the server's whole on-disk state)."""
    files = sorted(p for p in root.rglob("*") if p.is_file())
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


@pytest.fixture
def no_retry_wait(monkeypatch):
    """The client waits 1-8 s between its retries: skip the waits (the retries still happen)."""
    monkeypatch.setattr(time, "sleep", lambda seconds: None)


@pytest.fixture
def repo_v1(local_hub):
    """`org/faulty` with one LFS file (v1) committed; yields its content, the head sha and the on-disk state."""
    v1 = np.random.default_rng(0).bytes(300_000)
    HfApi().create_repo("org/faulty")
    HfApi().upload_file(path_or_fileobj=v1, path_in_repo="w.bin", repo_id="org/faulty")
    head = local_hub.commits("org/faulty")[0]["id"]
    return v1, head, _sha256_files(local_hub.root / "repos")


def _assert_v1_intact(hub, v1, head, repo_state):
    assert hub.commits("org/faulty")[0]["id"] == head  # no new (partial) commit is visible
    assert _sha256_files(hub.root / "repos") == repo_state  # refs and commits unchanged, byte for byte
    assert list((hub.root / "tmp").iterdir()) == []  # no leftover of a cut upload
    assert hub.read_file("org/faulty", "w.bin") == v1
    assert _read(hf_hub_download("org/faulty", "w.bin", revision=head, force_download=True)) == v1


def test_cut_commit_is_not_applied(local_hub, repo_v1):
    local_hub.inject_fault("commit")
    with pytest.raises(httpx2.RemoteProtocolError, match="disconnected without sending a response"):
        HfApi().upload_file(path_or_fileobj=b"v2", path_in_repo="w.bin", repo_id="org/faulty")
    assert local_hub.pending_faults() == {}
    _assert_v1_intact(local_hub, *repo_v1)
    HfApi().upload_file(path_or_fileobj=b"v2", path_in_repo="w.bin", repo_id="org/faulty")  # works again
    assert local_hub.read_file("org/faulty", "w.bin") == b"v2"


@pytest.mark.parametrize("after_bytes", [0, None, 10**9], ids=["before-body", "mid-body", "after-body"])
def test_cut_lfs_upload_stores_nothing(local_hub, repo_v1, no_retry_wait, after_bytes):
    v2 = np.random.default_rng(1).bytes(200_000)
    local_hub.inject_fault("lfs_upload", times=6, after_bytes=after_bytes)  # the client tries 1 + 5 times
    with pytest.raises(RuntimeError, match="Error while uploading 'w.bin'") as err:
        HfApi().upload_file(path_or_fileobj=v2, path_in_repo="w.bin", repo_id="org/faulty")
    assert isinstance(err.value.__cause__, httpx2.RemoteProtocolError)
    assert local_hub.pending_faults() == {}
    assert not (local_hub.root / "lfs" / hashlib.sha256(v2).hexdigest()).exists()
    _assert_v1_intact(local_hub, *repo_v1)


def test_one_cut_lfs_upload_is_retried_by_the_client(local_hub, repo_v1, no_retry_wait):
    v2 = np.random.default_rng(1).bytes(200_000)
    local_hub.inject_fault("lfs_upload")
    HfApi().upload_file(path_or_fileobj=v2, path_in_repo="w.bin", repo_id="org/faulty")
    assert local_hub.pending_faults() == {} and local_hub.read_file("org/faulty", "w.bin") == v2
    assert len(local_hub.commits("org/faulty")) == 3 and list((local_hub.root / "tmp").iterdir()) == []


@pytest.mark.parametrize("after_bytes", [0, None], ids=["no-body", "half-body"])
def test_cut_download_raises_and_leaves_no_file(local_hub, repo_v1, no_retry_wait, after_bytes):
    local_hub.inject_fault("download", times=6, after_bytes=after_bytes)  # the client resumes 5 times
    with pytest.raises(httpx2.RemoteProtocolError, match="peer closed connection"):
        hf_hub_download("org/faulty", "w.bin")
    assert local_hub.pending_faults() == {}
    cached = Path(constants.HF_HUB_CACHE) / "models--org--faulty"
    assert list((cached / "blobs").iterdir()) == []  # no partial (`.incomplete`) blob left in the cache
    assert not list(cached.glob("snapshots/*/w.bin"))  # nothing a later (offline) load could pick up
    _assert_v1_intact(local_hub, *repo_v1)


def test_one_cut_download_is_resumed_by_the_client(local_hub, repo_v1, no_retry_wait):
    local_hub.inject_fault("download")
    assert _read(hf_hub_download("org/faulty", "w.bin")) == repo_v1[0]
    assert local_hub.pending_faults() == {}


def test_stopped_hub_refuses_connections_then_serves_the_same_endpoint(local_hub, repo_v1, no_retry_wait):
    endpoint = local_hub.endpoint
    local_hub.stop()
    with pytest.raises(httpx2.ConnectError, match="refused"):
        HfApi().upload_file(path_or_fileobj=b"v2", path_in_repo="w.bin", repo_id="org/faulty")
    local_hub.start()
    assert local_hub.endpoint == endpoint
    _assert_v1_intact(local_hub, *repo_v1)


def test_pending_and_cleared_faults(local_hub, repo_v1):
    local_hub.inject_fault("commit", times=2)
    local_hub.inject_fault("download", after_bytes=0)
    assert local_hub.pending_faults() == {"commit": 2, "download": 1}
    local_hub.clear_faults()
    assert local_hub.pending_faults() == {}
    HfApi().upload_file(path_or_fileobj=b"v2", path_in_repo="w.bin", repo_id="org/faulty")  # no fault fires
    assert local_hub.read_file("org/faulty", "w.bin") == b"v2"


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/api/nothing-here"),
        ("PUT", "/api/models/org/faulty"),  # a known path with a method it does not take
        ("GET", "/datasets/org/resolve/main/w.bin"),  # `datasets/` names the type: `org/resolve` is no repo path
        ("DELETE", "/_lfs/" + "0" * 64),
    ],
)
def test_unknown_routes_answer_404_naming_method_and_path(local_hub, repo_v1, method, path):
    response = get_session().request(method, local_hub.endpoint + path)
    assert response.status_code == 404
    assert response.json()["error"] == f"Local Hub has no route for {method} {path}"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"kind": "upload"}, "Unknown fault kind 'upload'"),
        ({"kind": "commit", "times": 0}, "times must be a positive int, got 0"),
        ({"kind": "commit", "after_bytes": -1}, "after_bytes must be a non-negative int or None, got -1"),
    ],
)
def test_inject_fault_rejects_bad_arguments(tmp_path, kwargs, match):
    hub = LocalHub(tmp_path / "hub")
    with pytest.raises(ValueError, match=match):
        hub.inject_fault(**kwargs)
    assert hub.pending_faults() == {}


def test_environment_and_constants_are_restored(tmp_path):
    import datasets

    def state() -> tuple:
        config = datasets.config
        return constants.ENDPOINT, config.HF_ENDPOINT, config.USE_PARQUET_EXPORT, os.environ.get("HF_ENDPOINT")

    before = state()
    api = sys.modules["huggingface_hub.hf_api"].api
    endpoint_before = api.endpoint
    with LocalHub() as hub, hub_client_env(hub.endpoint, tmp_path / "home"):
        assert constants.ENDPOINT == datasets.config.HF_ENDPOINT == api.endpoint == hub.endpoint
        root = hub.root
    assert not root.exists()  # LocalHub() without a root works in a temporary directory, removed on close
    with pytest.raises(RuntimeError, match="no longer exists"):
        hub.start()
    assert state() == before and api.endpoint == endpoint_before


def test_module_first_imported_inside_the_context_is_patched_and_restored(tmp_path):
    name = "huggingface_hub.utils._git_credential"  # copies ENDPOINT at import time
    if name in sys.modules:
        pytest.skip(f"{name} is already imported")
    with LocalHub() as hub, hub_client_env(hub.endpoint, tmp_path / "home"):
        module = __import__(name, fromlist=["ENDPOINT"])
        assert module.ENDPOINT == hub.endpoint
        endpoint = hub.endpoint
    assert module.ENDPOINT == constants.ENDPOINT != endpoint


def test_local_hub_state_helpers_and_errors(tmp_path):
    hub = LocalHub(tmp_path / "hub")
    with pytest.raises(RuntimeError, match="not running"):
        _ = hub.endpoint
    with pytest.raises(ValueError, match="tree_page_size"):
        LocalHub(tree_page_size=0)
    hub.storage.create_repo("model", "org/direct")
    assert [c["title"] for c in hub.commits("org/direct")] == ["initial commit"]
    with pytest.raises(HubError) as err:
        hub.read_file("org/direct", "missing.txt")
    assert err.value.status == 404 and err.value.code == "EntryNotFound"
    with pytest.raises(HubError) as err:
        hub.storage.create_repo("model", "not a valid id")
    assert err.value.status == 400
