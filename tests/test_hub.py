"""Vectors and models through the real huggingface_hub / transformers clients, against the loopback LocalHub."""

import json
import socket

import pytest
import torch
from huggingface_hub import EvalResult, HfApi, ModelCard, hf_hub_download
from huggingface_hub.errors import LocalEntryNotFoundError
from transformers import AutoModel

from hf_explvec import HubConnectionError, SelfExplainingCLIPVision, TaskVector, TaskVectorConfig
from hf_explvec.testing import hub_client_env, tiny_clip_model


def make_vector(seed=0, **provenance):
    base, finetuned = tiny_clip_model(seed=seed), tiny_clip_model(seed=seed + 1)
    return TaskVector.from_models(base, finetuned, TaskVectorConfig(source_dataset="digits", **provenance))


def assert_same(a: TaskVector, b: TaskVector):
    assert a.keys() == b.keys()
    for key, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[key]), key


def remote_readme(repo_id, revision=None):
    return ModelCard.load(repo_id, revision=revision) if revision else ModelCard.load(repo_id)


def test_vector_push_and_load_by_name(local_hub):
    vector = make_vector(recommended_lam=0.8, alpha=0.8)
    commit = vector.push_to_hub("org/imagenet-x-explain", commit_message="first vector")
    loaded = TaskVector.from_pretrained("org/imagenet-x-explain")
    assert_same(vector, loaded)
    assert loaded.config == vector.config
    assert loaded.commit_hash == commit.oid and len(commit.oid) == 40
    files = set(HfApi().list_repo_files("org/imagenet-x-explain"))
    assert {"config.json", "task_vector.safetensors", "README.md"} <= files
    card = remote_readme("org/imagenet-x-explain")
    assert card.data.library_name == "hf_explvec"
    assert {"explainability", "task-arithmetic"} <= set(card.data.tags)
    assert card.data.datasets == ["digits"]
    assert "lam=0.8" in card.text and "related" in card.text


def test_pin_by_commit_sha_tag_and_branch(local_hub):
    first, second = make_vector(seed=0), make_vector(seed=10)
    commit_1 = first.push_to_hub("org/vec")
    HfApi().create_tag("org/vec", tag="v1", revision=commit_1.oid)
    commit_2 = second.push_to_hub("org/vec")
    assert commit_2.oid != commit_1.oid
    assert_same(TaskVector.from_pretrained("org/vec"), second)
    by_sha = TaskVector.from_pretrained("org/vec", revision=commit_1.oid)
    assert_same(by_sha, first) and by_sha.commit_hash == commit_1.oid
    by_tag = TaskVector.from_pretrained("org/vec", revision="v1")
    assert_same(by_tag, first) and by_tag.commit_hash == commit_1.oid
    branch_commit = second.push_to_hub("org/vec", revision="experiment")
    assert TaskVector.from_pretrained("org/vec", revision="experiment").commit_hash == branch_commit.oid


def test_large_sharded_vector_and_stale_shards(local_hub):
    # 3 tensors of 4 MB, 12 MB in all: above the 10 MB LFS threshold, and 3 shards of at most 5 MB
    big = TaskVector({f"vision_model.encoder.layers.{i}.mlp.fc1.weight": torch.randn(1000, 1000) for i in range(3)})
    big.push_to_hub("org/big", max_shard_size="5MB")
    files = HfApi().list_repo_files("org/big")
    assert sum(f.startswith("task_vector-") for f in files) == 3 and "task_vector.safetensors.index.json" in files
    info = HfApi().model_info("org/big", files_metadata=True)
    assert all(s.lfs is not None for s in info.siblings if s.rfilename.endswith(".safetensors"))
    assert_same(TaskVector.from_pretrained("org/big"), big)
    big.push_to_hub("org/big")  # now one file: the old shards and index go
    files = HfApi().list_repo_files("org/big")
    assert "task_vector.safetensors" in files and not any(f.startswith("task_vector-") for f in files)
    assert_same(TaskVector.from_pretrained("org/big"), big)


def test_push_keeps_a_readme_the_user_wrote_and_updates_its_metadata(local_hub):
    vector = make_vector(recommended_lam=0.5)
    vector.push_to_hub("org/vec")
    assert "lam=0.5" in remote_readme("org/vec").text
    vector.config.recommended_lam = 0.7  # our own unedited card is regenerated
    vector.push_to_hub("org/vec")
    assert "lam=0.7" in remote_readme("org/vec").text

    user_card = "---\nlicense: mit\ntags:\n- mine\n---\n# My vector\n\nHand-written notes.\n"
    HfApi().upload_file(path_or_fileobj=user_card.encode(), path_in_repo="README.md", repo_id="org/vec")
    vector.config.source_dataset = "faces"
    vector.push_to_hub("org/vec")
    card = remote_readme("org/vec")
    assert card.text.strip() == "# My vector\n\nHand-written notes."
    assert card.data.license == "mit" and card.data.library_name == "hf_explvec"
    assert "mine" in card.data.tags and "explainability" in card.data.tags
    assert card.data.datasets == ["faces"]


def test_model_push_and_auto_model_from_name(local_hub):
    model = SelfExplainingCLIPVision.from_clip(tiny_clip_model(), ["cat", "dog"], class_embeddings=torch.randn(2, 16))
    results = [
        EvalResult(
            task_type="image-classification",
            dataset_type="digits",
            dataset_name="digits",
            metric_type="accuracy",
            metric_value=0.75,
        )
    ]
    model.push_to_hub("org/self-explaining", eval_results=results)
    loaded = AutoModel.from_pretrained("org/self-explaining")  # no trust_remote_code
    assert isinstance(loaded, SelfExplainingCLIPVision)
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(loaded(x).patch_attributions, model(x).patch_attributions)
    card = remote_readme("org/self-explaining")
    assert card.data.library_name == "hf_explvec" and card.data.pipeline_tag == "image-classification"
    assert card.data.eval_results[0].metric_value == 0.75
    assert 'AutoModel.from_pretrained("org/self-explaining")' in card.text


# ------------------------------------------------------------------------------------------------ bad input
def expect_error(error, *fragments, **kwargs):
    with pytest.raises(error) as info:
        TaskVector.from_pretrained(**kwargs)
    for fragment in fragments:
        assert fragment in str(info.value)
    return info.value


def test_repo_and_revision_not_found_name_repo_revision_and_endpoint(local_hub):
    expect_error(
        FileNotFoundError,
        "repository not found",
        "'org/missing'",
        local_hub.endpoint,
        pretrained_model_name_or_path="org/missing",
    )
    make_vector().push_to_hub("org/vec")
    expect_error(
        FileNotFoundError,
        "revision not found",
        "'org/vec'",
        "'nope'",
        local_hub.endpoint,
        pretrained_model_name_or_path="org/vec",
        revision="nope",
    )


def test_missing_weights_and_pickles_are_refused(local_hub):
    api = HfApi()
    api.create_repo("org/pickled")
    config = {"vector_type": "clip_vision", "library_name": "hf_explvec"}
    api.upload_file(path_or_fileobj=json.dumps(config).encode(), path_in_repo="config.json", repo_id="org/pickled")
    api.upload_file(path_or_fileobj=b"\x80\x04pickle", path_in_repo="pytorch_model.bin", repo_id="org/pickled")
    expect_error(
        FileNotFoundError,
        "no task_vector.safetensors",
        "'org/pickled'",
        local_hub.endpoint,
        pretrained_model_name_or_path="org/pickled",
    )
    with pytest.raises(LocalEntryNotFoundError):  # the pickle was never downloaded
        hf_hub_download("org/pickled", "pytorch_model.bin", local_files_only=True)


def test_corrupted_and_foreign_vectors_are_refused(local_hub, tmp_path):
    vector = make_vector()
    vector.save_pretrained(tmp_path)
    api = HfApi()
    api.create_repo("org/bad")
    api.upload_folder(folder_path=tmp_path, repo_id="org/bad")
    truncated = (tmp_path / "task_vector.safetensors").read_bytes()[:1000]
    api.upload_file(path_or_fileobj=truncated, path_in_repo="task_vector.safetensors", repo_id="org/bad")
    expect_error(ValueError, "corrupted or truncated", "'org/bad'", pretrained_model_name_or_path="org/bad")

    config = json.loads((tmp_path / "config.json").read_text())
    api.create_repo("org/llama")
    api.upload_folder(folder_path=tmp_path, repo_id="org/llama")
    api.upload_file(
        path_or_fileobj=json.dumps({**config, "vector_type": "llama"}).encode(),
        path_in_repo="config.json",
        repo_id="org/llama",
    )
    expect_error(ValueError, "'llama'", "'org/llama'", pretrained_model_name_or_path="org/llama")


def test_server_refusing_connections(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends: connections are refused
    endpoint = f"http://127.0.0.1:{port}"
    with hub_client_env(endpoint, tmp_path / "hf_home"):
        error = expect_error(HubConnectionError, endpoint, "'org/vec'", pretrained_model_name_or_path="org/vec")
    assert "cannot reach" in str(error) and isinstance(error, ConnectionError)
    assert (error.repo_id, error.revision, error.endpoint) == ("org/vec", "main", endpoint)


def test_model_with_only_pickled_weights_is_refused(local_hub, tmp_path):
    model = SelfExplainingCLIPVision.from_clip(tiny_clip_model(), ["cat", "dog"], class_embeddings=torch.randn(2, 16))
    model.config.save_pretrained(tmp_path)
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x04 a pickle that must never be loaded")
    HfApi().create_repo("org/pickled-model")
    HfApi().upload_folder(folder_path=tmp_path, repo_id="org/pickled-model")
    with pytest.raises(OSError, match="safetensors"):
        AutoModel.from_pretrained("org/pickled-model")
    with pytest.raises(LocalEntryNotFoundError):  # the pickle was never even downloaded
        hf_hub_download("org/pickled-model", "pytorch_model.bin", local_files_only=True)
