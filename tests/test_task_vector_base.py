"""TaskVector's base check (issue 10 item 3) through the public API: from_models records the base's fingerprint (and
its name and revision when the base came from the Hub), apply_to and transfer refuse a model that does not descend
from the base before writing anything, check_base=False overrides, and the fingerprint survives save/load/push/pull,
compression, scaling and merges."""

import copy
import hashlib
import json

import pytest
import torch
from conftest import fine_tune
from huggingface_hub import ModelCard
from transformers import CLIPModel, CLIPVisionModelWithProjection

from hf_explvec import SelfExplainingCLIPVision, TaskVector, TaskVectorConfig
from hf_explvec.arithmetic import vision_state
from hf_explvec.base_check import BaseModelMismatchError, base_fingerprint
from hf_explvec.task_vector import transfer
from hf_explvec.testing import tiny_clip_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")
BASE = "org/base-clip"


@pytest.fixture(scope="module")
def base():
    return tiny_clip_model(seed=0)


@pytest.fixture(scope="module")
def vector(base):
    return TaskVector.from_models(base, fine_tune(base, 1), base_model=BASE, recommended_lam=0.5)


def explainer(clip, dtype=torch.float32):
    model = SelfExplainingCLIPVision.from_clip(copy.deepcopy(clip), ["a", "b"], class_embeddings=torch.randn(2, 16))
    return model.to(dtype)


def snapshot(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def assert_unchanged(module, before):
    after = module.state_dict()
    assert after.keys() == before.keys()
    for key, value in before.items():
        assert after[key].dtype == value.dtype and torch.equal(after[key], value), key


def sha256_files(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


# ----------------------------------------------------------------------------------------------- from_models
def test_from_models_records_the_fingerprint_of_the_base(base, vector):
    assert vector.config.base_fingerprint == base_fingerprint(vision_state(base.state_dict()))
    assert vector.config.base_model == BASE
    # the fingerprint belongs to the base, not to the fine-tuned model
    other = TaskVector.from_models(fine_tune(base, 1), base)
    assert other.config.base_fingerprint != vector.config.base_fingerprint
    # a fingerprint given by the caller (e.g. of the pretrained model both twins descend from) is kept
    given = TaskVector.from_models(
        fine_tune(base, 2), fine_tune(base, 3), base_fingerprint=vector.config.base_fingerprint
    )
    assert given.config.base_fingerprint == vector.config.base_fingerprint
    assert "base_fingerprint='recorded'" in repr(vector) and "sketch" not in repr(vector)


def test_from_models_records_the_name_and_revision_of_a_base_from_the_hub(local_hub, base):
    commit = base.push_to_hub("org/pretrained-clip").oid
    pulled = CLIPModel.from_pretrained("org/pretrained-clip")
    vector = TaskVector.from_models(pulled, fine_tune(pulled, 1))
    assert vector.config.base_model == "org/pretrained-clip"
    # transformers 5 no longer keeps the resolved commit on the config; where a config carries it (`_commit_hash`,
    # as transformers 4 set it), it is the revision of that name
    assert vector.config.base_model_revision == getattr(pulled.config, "_commit_hash", None)
    pulled.config._commit_hash = commit
    assert TaskVector.from_models(pulled, fine_tune(pulled, 1)).config.base_model_revision == commit
    named = TaskVector.from_models(pulled, fine_tune(pulled, 1), base_model="someone/else")
    assert named.config.base_model == "someone/else" and named.config.base_model_revision is None
    pinned = TaskVector.from_models(pulled, fine_tune(pulled, 1), base_model_revision="v1")
    assert pinned.config.base_model_revision == "v1"


# ----------------------------------------------------------------------------------------------- apply_to
@pytest.mark.parametrize("inplace", [True, False])
@pytest.mark.parametrize("form", ["dense", "sparse", "low_rank", "scaled", "merged"])
def test_a_model_of_another_base_is_refused_and_left_unchanged(base, vector, inplace, form):
    tau = {
        "dense": vector,
        "sparse": vector.sparsify(0.2),
        "low_rank": vector.low_rank(2),
        "scaled": -2 * vector,
        "merged": TaskVector.merge([vector, vector.sparsify(0.5)], method="ties"),
    }[form]
    foreign = explainer(tiny_clip_model(seed=7))  # same architecture, another pretraining
    before = snapshot(foreign)
    with pytest.raises(BaseModelMismatchError, match=f"base model '{BASE}'.*check_base=False") as info:
        tau.apply_to(foreign, lam=0.5, inplace=inplace)
    assert info.value.base_model == BASE and info.value.distance > info.value.threshold
    assert isinstance(info.value, ValueError)
    assert_unchanged(foreign, before)


def test_the_override_applies_the_vector_anyway(vector):
    foreign = explainer(tiny_clip_model(seed=7))
    before = vision_state(snapshot(foreign))
    vector.apply_to(foreign, lam=0.5, check_base=False)
    after = vision_state(foreign.state_dict())
    for key, delta in vector.state_dict().items():
        torch.testing.assert_close(after[key], before[key] + 0.5 * delta)


def reloaded_as_vision_model(base, folder):
    """The base saved as a CLIPModel and loaded as a CLIPVisionModelWithProjection (another class, same weights)."""
    base.save_pretrained(folder)
    return CLIPVisionModelWithProjection.from_pretrained(folder)


@pytest.mark.parametrize(
    "descendant",
    [
        pytest.param(lambda base, folder: explainer(base), id="the-base"),
        pytest.param(lambda base, folder: explainer(fine_tune(base, 5, scale=0.05)), id="fine-tune"),
        pytest.param(
            lambda base, folder: explainer(fine_tune(base, 6, scale=0.1)), id="update-as-large-as-the-weights"
        ),
        pytest.param(lambda base, folder: explainer(base, torch.bfloat16), id="bfloat16"),
        pytest.param(
            lambda base, folder: reloaded_as_vision_model(base, folder),
            id="other-class",
        ),
    ],
)
def test_descendants_of_the_base_are_accepted(base, vector, descendant, tmp_path):
    model = descendant(base, tmp_path)
    before = {k: v.float() for k, v in vision_state(snapshot(model)).items()}
    vector.apply_to(model, lam=0.5)
    after = vision_state(model.state_dict())
    key = "vision_model.encoder.layers.0.mlp.fc1.weight"
    tolerance = {"atol": 1e-2, "rtol": 1e-2} if after[key].dtype == torch.bfloat16 else {}
    torch.testing.assert_close(after[key].float(), before[key] + 0.5 * vector.state_dict()[key], **tolerance)


def test_a_vector_without_fingerprint_applies_to_any_model(vector):
    legacy = TaskVector(vector.state_dict(), TaskVectorConfig(base_model=BASE))
    foreign = explainer(tiny_clip_model(seed=7))
    legacy.apply_to(foreign, lam=0.5)  # nothing to check against: applied as before the base check existed


def test_check_base_must_be_a_bool(base, vector):
    model = explainer(base)
    before = snapshot(model)
    with pytest.raises(TypeError, match="check_base must be a bool, got str"):
        vector.apply_to(model, check_base="no")
    assert_unchanged(model, before)


@pytest.mark.parametrize("lam_target", [1.0, 0.5])
def test_transfer_refuses_a_target_of_another_base(base, vector, lam_target):
    target = explainer(fine_tune(tiny_clip_model(seed=7), 2))
    before = snapshot(target)
    with pytest.raises(BaseModelMismatchError, match=BASE):
        transfer(explainer(tiny_clip_model(seed=7)), target, vector, lam=0.5, lam_target=lam_target, inplace=True)
    assert_unchanged(target, before)
    result = transfer(explainer(base), explainer(fine_tune(base, 2)), vector, lam=0.5, lam_target=lam_target)
    assert isinstance(result, SelfExplainingCLIPVision)
    forced = transfer(
        explainer(tiny_clip_model(seed=7)), target, vector, lam=0.5, lam_target=lam_target, check_base=False
    )
    assert isinstance(forced, SelfExplainingCLIPVision)


# ------------------------------------------------------------------------------------------------ provenance
def test_the_fingerprint_follows_the_rules_of_provenance(base, vector):
    same_base = TaskVector.from_models(base, fine_tune(base, 3), base_model=BASE)
    other_base = TaskVector.from_models(tiny_clip_model(seed=7), tiny_clip_model(seed=8))
    fingerprint = vector.config.base_fingerprint
    assert (vector + same_base).config.base_fingerprint == fingerprint
    assert (vector - other_base).config.base_fingerprint is None  # the bases differ: no base is known
    assert TaskVector.merge([vector, same_base], method="ties").config.base_fingerprint == fingerprint
    assert TaskVector.merge([vector, other_base]).config.base_fingerprint is None
    for derived in (vector.sparsify(0.1), vector.low_rank(2), 3 * vector, vector.to(torch.bfloat16)):
        assert derived.config.base_fingerprint == fingerprint


# --------------------------------------------------------------------------------------- save / load / hub
def test_the_fingerprint_survives_save_and_load(base, vector, tmp_path):
    vector.sparsify(0.3).save_pretrained(tmp_path)
    raw = json.loads((tmp_path / "config.json").read_text())
    assert raw["base_fingerprint"] == vector.config.base_fingerprint
    card = (tmp_path / "README.md").read_text()
    assert (
        "| Base fingerprint | recorded" in card
        and raw["base_fingerprint"]["tensors"].popitem()[1]["sketch"] not in card
    )
    loaded = TaskVector.from_pretrained(tmp_path)
    assert loaded.config.base_fingerprint == vector.config.base_fingerprint
    loaded.apply_to(explainer(base), lam=0.5)
    with pytest.raises(BaseModelMismatchError, match=BASE):
        loaded.apply_to(explainer(tiny_clip_model(seed=7)))


def test_the_fingerprint_survives_push_and_pull(local_hub, base, vector):
    commit = vector.push_to_hub("org/explainability-vector").oid
    pulled = TaskVector.from_pretrained("org/explainability-vector", revision=commit)
    assert pulled.config == vector.config
    foreign = explainer(tiny_clip_model(seed=7))
    before = snapshot(foreign)
    with pytest.raises(BaseModelMismatchError, match=BASE):
        pulled.apply_to(foreign)
    assert_unchanged(foreign, before)
    pulled.apply_to(explainer(fine_tune(base, 4)), lam=pulled.config.recommended_lam)
    card = ModelCard.load("org/explainability-vector")
    assert card.data.base_model == BASE and card.data.base_model_relation == "adapter"
    assert "| Base fingerprint | recorded" in card.text


def test_a_vector_card_without_a_hub_base_has_no_base_model_metadata(tmp_path):
    vector = TaskVector.from_models(tiny_clip_model(seed=0), tiny_clip_model(seed=1))  # built in code: no name
    card = vector.generate_model_card()
    assert card.data.base_model is None and getattr(card.data, "base_model_relation", None) is None
    assert "| Base fingerprint | recorded" in card.text


def _edit_fingerprint(change):
    def edit(folder):
        raw = json.loads((folder / "config.json").read_text())
        change(raw["base_fingerprint"])
        (folder / "config.json").write_text(json.dumps(raw))

    return edit


def _first_tensor(fingerprint):
    return next(iter(fingerprint["tensors"].values()))


@pytest.mark.parametrize(
    ("edit", "error", "match"),
    [
        (_edit_fingerprint(lambda f: f.update(method="md5")), ValueError, "base_fingerprint.method is 'md5'"),
        (_edit_fingerprint(lambda f: f.update(version=99)), ValueError, "base_fingerprint.version is 99, newer"),
        (_edit_fingerprint(lambda f: f.update(tensors=[])), TypeError, "base_fingerprint.tensors must be a JSON obj"),
        (_edit_fingerprint(lambda f: _first_tensor(f).update(sketch="!!")), ValueError, "is not valid base64"),
        (_edit_fingerprint(lambda f: _first_tensor(f).update(shape=[3])), ValueError, "at least 2 positive sizes"),
    ],
)
def test_a_corrupted_fingerprint_is_refused_naming_the_file(vector, tmp_path, edit, error, match):
    vector.save_pretrained(tmp_path)
    edit(tmp_path)
    before = sha256_files(tmp_path)
    with pytest.raises(error, match=match) as info:
        TaskVector.from_pretrained(tmp_path)
    assert str(tmp_path / "config.json") in str(info.value)
    assert sha256_files(tmp_path) == before
